"""The policy model: actions, argument conditions, rules, and the resolved Policy.

Why a module of its own: a policy is plain data that every other part builds (the default policy,
the user's lists, a Docker profile) or consumes (the compiler, `policy show`); the model knows
nothing of where a policy came from.
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass
from typing import Any

from ..sys import libseccomp as scmp
from .abi import LOCAL_ARCHES

ACTIONS = ("allow", "errno", "kill-process", "kill-thread", "trap", "log", "trace")


@dataclass(frozen=True)
class Action:
    """What the kernel does with a matching call; value is the errno (errno) or message (trace)."""

    kind: str
    value: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ACTIONS or not 0 <= self.value <= 0xFFFF:
            raise ValueError(f"bad seccomp action {self.kind}({self.value})")

    def token(self) -> int:
        """libseccomp's SCMP_ACT_* value."""
        return {"allow": scmp.ACT_ALLOW, "kill-process": scmp.ACT_KILL_PROCESS,
                "kill-thread": scmp.ACT_KILL_THREAD, "trap": scmp.ACT_TRAP, "log": scmp.ACT_LOG,
                "errno": scmp.ACT_ERRNO(self.value), "trace": scmp.ACT_TRACE(self.value)}[self.kind]

    def __str__(self) -> str:
        if self.kind == "errno":
            return f"errno({_errno.errorcode.get(self.value, self.value)})"
        return f"trace({self.value})" if self.kind == "trace" else self.kind


ALLOW = Action("allow")
EPERM = Action("errno", _errno.EPERM)
ENOSYS = Action("errno", _errno.ENOSYS)
KILL_PROCESS = Action("kill-process")
LOG = Action("log")

OPS = {"ne": scmp.CMP_NE, "lt": scmp.CMP_LT, "le": scmp.CMP_LE, "eq": scmp.CMP_EQ,
       "ge": scmp.CMP_GE, "gt": scmp.CMP_GT, "masked_eq": scmp.CMP_MASKED_EQ}
_OP_TEXT = {"ne": "!=", "lt": "<", "le": "<=", "eq": "==", "ge": ">=", "gt": ">"}
U64 = (1 << 64) - 1


@dataclass(frozen=True)
class Condition:
    """A test on one 64-bit argument; for masked_eq, value is the mask and value_two the result."""

    index: int
    op: str
    value: int
    value_two: int = 0

    def __str__(self) -> str:
        if self.op == "masked_eq":
            return f"arg{self.index} & {self.value:#x} == {self.value_two:#x}"
        return f"arg{self.index} {_OP_TEXT[self.op]} {self.value:#x}"


@dataclass(frozen=True)
class Rule:
    """One action for some syscalls; all conditions must hold (AND). note says why, for show."""

    names: tuple[str, ...]
    action: Action
    conditions: tuple[Condition, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Policy:
    """A resolved filter: what `policy show` prints and what compile_policy turns into BPF."""

    source: str
    default: Action
    rules: tuple[Rule, ...]
    arches: tuple[str, ...]
    bad_arch: Action = KILL_PROCESS
    skipped: tuple[str, ...] = ()
    enabled: bool = True

    def describe(self) -> str:
        """Readable text of the policy, one line per rule (a run of generated rules is one line)."""
        if not self.enabled:
            return f"policy: {self.source}\nno seccomp filter"
        others = [a for a in LOCAL_ARCHES if a not in self.arches]
        out = [f"policy: {self.source}", f"default action: {self.default}",
               f"arches: {', '.join(self.arches)}"]
        if others:
            out.append(f"syscalls from other ABIs ({', '.join(others)}): {self.bad_arch}")
        out.append(f"rules ({len(self.rules)}):")
        rules, i = self.rules, 0
        while i < len(rules):
            r, j = rules[i], i + 1
            if r.note and r.conditions:
                while j < len(rules) and (rules[j].names, rules[j].action, rules[j].note) \
                        == (r.names, r.action, r.note):
                    j += 1
            head = f"  {str(r.action):<14} {' '.join(r.names)}"
            if not r.conditions:
                out.append(head + (f"    # {r.note}" if r.note else ""))
            elif r.note:
                n = j - i
                out.append(f"{head} {r.note}" + (f"  ({n} BPF rules)" if n > 1 else ""))
            else:
                out.append(f"{head} if {' and '.join(str(c) for c in r.conditions)}")
            i = j
        if self.skipped:
            out.append(f"not syscalls on {', '.join(self.arches)} (skipped): "
                       f"{' '.join(self.skipped)}")
        return "\n".join(out)


class RuleTable:
    """Rules per syscall in the order they were given, merged the way libseccomp would.

    A rule without conditions replaces whatever the syscall had; a conditional rule joins earlier
    conditional ones, and is dropped after an unconditional one (which already decides every call).
    """

    def __init__(self) -> None:
        self.by_name: dict[str, list[tuple[Action, tuple[Condition, ...], str]]] = {}

    def put(self, name: str, action: Action, conds: tuple[Condition, ...] = (),
            note: str = "") -> None:
        entries = self.by_name.setdefault(name, [])
        if not conds:
            entries[:] = [(action, (), note)]
        elif not entries or entries[0][1]:
            entries.append((action, conds, note))

    def rules(self) -> tuple[Rule, ...]:
        """Rules with syscalls of identical treatment grouped, in first-seen order."""
        groups: dict[tuple[Any, ...], list[str]] = {}
        for name, entries in self.by_name.items():
            groups.setdefault(tuple(entries), []).append(name)
        return tuple(Rule(tuple(names), a, c, note)
                     for entries, names in groups.items() for a, c, note in entries)


