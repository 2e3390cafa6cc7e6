"""Resolving: the Spec's seccomp options (base policy, profile, allow- and deny-lists, log) into
one Policy, and what that policy leaves open of the set-id wall.

Why a module of its own: the precedence of the options is the one place where the default policy,
the guards, the groups and a profile meet; the compiler only sees its result.
"""

from __future__ import annotations

from ..errors import SpecError
from .abi import NATIVE, on_arch, split_present
from .default import DEFAULT_ACTION_OF, DEFAULT_DENY
from .docker import read_profile
from .groups import expand_names
from .guards import ARG_GROUPS, GUARDS, MODE_CALLS, split_arg_groups
from .policy import ALLOW, ENOSYS, EPERM, KILL_PROCESS, LOG, Policy, RuleTable

#: execve must stay allowed: the filter is loaded before isol8r's own execve of the program.
_EXEC = ("execve", "execveat")
#: What an allow-list always allows: the exec above, and exiting (a program that cannot exit
#: spins and then crashes in libc's _exit).
_ALWAYS = (*_EXEC, "exit", "exit_group")
#: Calls with a newer form whose arguments sit in a struct in memory, which seccomp cannot read:
#: a policy that refuses or guards the old call and lets everything else run would let the newer
#: form through. resolve_policy gives the newer one ENOSYS then (unless the policy names it), so
#: programs fall back to the old call and meet its rule.
NEWER_FORMS = {"clone": "clone3", "openat": "openat2"}


def resolve_policy(seccomp: str = "default", profile: str | None = None,
                   allow: tuple[str, ...] = (), deny: tuple[str, ...] = (),
                   log: bool = False) -> Policy:
    """The rules the jail will get for these Spec options; raises SpecError on bad input.

    Precedence: the base (a profile, an allow-list, or the default policy), then the deny-list
    on top; --seccomp-log finally turns every action but allow into log.
    """
    if seccomp not in ("default", "none"):
        raise SpecError("--seccomp", seccomp, "expected default or none")
    if profile and allow:
        raise SpecError("--seccomp-allow", ",".join(allow),
                        "cannot be combined with --seccomp-profile (the profile is the allow-list)")
    allowed = expand_names("--seccomp-allow", allow)
    arg_denied, plain_deny = split_arg_groups(deny)
    denied = expand_names("--seccomp-deny", plain_deny)
    for name in _EXEC:
        if denied.get(name):
            raise SpecError("--seccomp-deny", name,
                            "cannot be denied: the filter is loaded before the jail's own execve")
        denied.pop(name, None)
    table = RuleTable()
    arches: tuple[str, ...] = (NATIVE,)
    seen: list[str] = []
    if profile:
        default, arches, table, seen = read_profile(profile)
        source = f"profile {profile}"
    elif allow:
        default, source = EPERM, "allow-list " + ",".join(allow)
        guarded = seccomp == "default"
        if guarded:
            source += " with the default policy's guards"
        for name, direct in {**dict.fromkeys(_ALWAYS, True), **allowed}.items():
            seen.append(name)
            if guarded and not direct and name in DEFAULT_ACTION_OF:
                action, why = DEFAULT_ACTION_OF[name]
                if action != EPERM:
                    table.put(name, action, note=why)
            elif guarded and not direct and name in GUARDS:
                for conds in GUARDS[name].allow:
                    table.put(name, ALLOW, conds, GUARDS[name].allow_note)
            else:
                table.put(name, ALLOW)
        if "clone3" not in table.by_name:
            table.put("clone3", ENOSYS, note="so libc falls back to clone")
            seen.append("clone3")
    elif seccomp == "default":
        default, source = ALLOW, "default"
        for names, action, why in DEFAULT_DENY:
            for name in names:
                seen.append(name)
                table.put(name, action, note=why)
        for name, guard in GUARDS.items():
            seen.append(name)
            for conds in guard.deny:
                table.put(name, EPERM, conds, guard.deny_note)
    else:
        default, source = ALLOW, "none"
    for name in denied:
        seen.append(name)
        table.put(name, EPERM, note="--seccomp-deny")
    for group in arg_denied:  # by argument: guards.ARG_GROUPS
        why, calls = ARG_GROUPS[group]
        for name, conds in calls:
            seen.append(name)
            table.put(name, EPERM, conds, f"--seccomp-deny {group}: {why}")
    if deny:
        source += " + deny " + ",".join(deny)
    if default in (ALLOW, LOG):
        for old, newer in NEWER_FORMS.items():
            entries = table.by_name.get(old, [])
            if newer not in table.by_name and any(a != ALLOW for a, _, _ in entries):
                table.put(newer, ENOSYS, note=f"the newer form of {old}, which is refused or "
                          f"guarded: ENOSYS, so libc falls back to {old}")
                seen.append(newer)
    _, absent = split_present(dict.fromkeys(seen), arches)
    for name in absent:
        table.by_name.pop(name, None)
    if log:
        default = LOG if default != ALLOW else ALLOW
        for entries in table.by_name.values():
            entries[:] = [(LOG if a != ALLOW else a, c, n) for a, c, n in entries]
        source += " (log only)"
    enabled = bool(profile or allow or deny or seccomp == "default")
    return Policy(source, default, table.rules(), arches, KILL_PROCESS, tuple(absent), enabled)


def setid_gaps(policy: Policy) -> tuple[str, ...]:
    """The mode calls (MODE_CALLS) this policy lets through with a set-id mode: the gaps in the
    set-id wall of writable binds, which the caller is told of (docs/security.md)."""
    present = [n for n in MODE_CALLS if on_arch(n, NATIVE)]
    if not policy.enabled:
        return tuple(present)
    passes = (ALLOW, LOG)
    gaps = []
    for name in present:
        rules = [r for r in policy.rules if name in r.names]
        whole = [r for r in rules if not r.conditions]
        if whole:
            ok = whole[0].action not in passes
        elif policy.default in passes:
            ok = set(GUARDS[name].deny) <= {r.conditions for r in rules if r.action not in passes}
        else:
            ok = all(r.conditions in GUARDS[name].allow for r in rules if r.action in passes)
        if not ok:
            gaps.append(name)
    return tuple(gaps)
