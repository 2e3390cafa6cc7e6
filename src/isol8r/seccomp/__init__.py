"""The seccomp concern: policies as data, the default policy, named groups, Docker/OCI profiles,
their compilation to BPF, the one cache of compiled filters, and the kills read back.

A policy is a default action plus rules (syscall names, an action, optional argument conditions).
`resolve_policy` turns the Spec's options into one; `compile_policy` turns that into the BPF the
child loads as its last step before execve. docs/policy.md is the user's reference.

One concern per module, each depending only on those above it:
  abi       syscall names on this host's ABIs (libseccomp answers)
  policy    the model: Action, Condition, Rule, Policy, RuleTable
  groups    @groups, and the user's --seccomp-allow/--seccomp-deny lists
  guards    argument guards (clone flags, ioctl, personality, set-id modes)
  default   the default policy's deny table
  docker    Docker/OCI JSON profiles
  resolve   the Spec's options -> one Policy; the set-id wall's gaps
  compiler  Policy -> BPF through libseccomp
  cache     the one compiled-filter cache, in memory and on disk (imports only built-ins)
  command   `isol8r policy show|check`
  kills     the syscall a kill was for, from the kernel's audit records

Why this file holds no code: importing the package must stay as cheap as importing `cache`, so
a CLI run that finds its filter in the cache loads neither the compiler nor libseccomp. The names
below are the package's interface, each imported from its module on first use.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:  # the same names, for type checkers; at run time __getattr__ finds them
    from .abi import is_syscall, syscall_name
    from .cache import compile_policy, jail_filter
    from .command import check, show
    from .default import DEFAULT_DENY
    from .groups import GROUPS, group_members
    from .guards import (CLONE_NS_FLAGS, GUARDS, MODE_CALLS, O_CREAT, O_TMPFILE_BIT,
                         PERSONALITY_OK, S_ISGID, S_ISUID, TIOCLINUX, TIOCSTI)
    from .kills import Kill, blocked_syscall, find_kill, parse_kill, watch_kills
    from .policy import (ACTIONS, ALLOW, ENOSYS, EPERM, KILL_PROCESS, LOG, OPS, U64, Action,
                         Condition, Policy, Rule)
    from .resolve import NEWER_FORMS, resolve_policy, setid_gaps

_WHERE = {name: module for module, names in (
    ("abi", "is_syscall syscall_name"),
    ("cache", "compile_policy jail_filter"),
    ("command", "check show"),
    ("default", "DEFAULT_DENY"),
    ("groups", "GROUPS group_members"),
    ("guards", "CLONE_NS_FLAGS GUARDS MODE_CALLS O_CREAT O_TMPFILE_BIT PERSONALITY_OK S_ISGID "
               "S_ISUID TIOCLINUX TIOCSTI"),
    ("kills", "Kill blocked_syscall find_kill parse_kill watch_kills"),
    ("policy", "ACTIONS ALLOW ENOSYS EPERM KILL_PROCESS LOG OPS U64 Action Condition Policy Rule"),
    ("resolve", "NEWER_FORMS resolve_policy setid_gaps"),
) for name in names.split()}

__all__ = ["ACTIONS", "ALLOW", "Action", "CLONE_NS_FLAGS", "Condition", "DEFAULT_DENY", "ENOSYS",
           "EPERM", "GROUPS", "GUARDS", "KILL_PROCESS", "Kill", "LOG", "MODE_CALLS",
           "NEWER_FORMS", "OPS", "O_CREAT", "O_TMPFILE_BIT", "PERSONALITY_OK", "Policy", "Rule",
           "S_ISGID", "S_ISUID", "TIOCLINUX", "TIOCSTI", "U64", "blocked_syscall", "check",
           "compile_policy", "find_kill", "group_members", "is_syscall", "jail_filter",
           "parse_kill", "resolve_policy", "setid_gaps", "show", "syscall_name", "watch_kills"]


def __getattr__(name: str) -> object:
    """Import a name of the interface from its module the first time it is asked for."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(__import__(f"{__name__}.{module}", fromlist=[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
