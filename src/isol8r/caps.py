"""Capabilities: empty all five sets (or keep the named few through the ambient set),
lock the securebits and set no_new_privs, so neither root inside nor a setuid file gains anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from .sys import linux

_LOCKED_BITS = (linux.SECBIT_NOROOT | linux.SECBIT_NOROOT_LOCKED
                | linux.SECBIT_NO_SETUID_FIXUP | linux.SECBIT_NO_SETUID_FIXUP_LOCKED
                | linux.SECBIT_KEEP_CAPS_LOCKED
                | linux.SECBIT_NO_CAP_AMBIENT_RAISE | linux.SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED)
CAP_SETPCAP = 8
CAP_KILL = 5


@dataclass(frozen=True)
class CapPlan:
    """The capabilities to keep, as numbers and a mask, and the highest one the kernel knows."""

    keep: tuple[int, ...]
    mask: int
    last_cap: int


def plan(keep: tuple[int, ...]) -> CapPlan:
    """Parent side: read cap_last_cap now, so the child reads no file."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except OSError:
        last = 40
    mask = 0
    for c in keep:
        mask |= 1 << c
    return CapPlan(tuple(sorted(set(keep))), mask, last)


def prepare_uid_switch() -> None:
    """Child side, before the uid switch: keep the capability sets across setresuid. Already
    so (a bare jail inside another jail, whose securebits are locked): nothing to do."""
    if linux.prctl(linux.PR_GET_SECUREBITS) & linux.SECBIT_NO_SETUID_FIXUP:
        return
    linux.prctl(linux.PR_SET_SECUREBITS, linux.SECBIT_NO_SETUID_FIXUP)


def drop(p: CapPlan) -> None:
    """Child side, after the uid switch: bounding, ambient, inheritable, permitted, effective.

    The order matters: the bounding set and the securebits need CAP_SETPCAP, which goes last.
    """
    for cap in range(p.last_cap + 1):
        if not p.mask & (1 << cap):
            linux.prctl(linux.PR_CAPBSET_DROP, cap)
    linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL)
    setpcap = 1 << CAP_SETPCAP
    linux.capset(p.mask | setpcap, p.mask | setpcap, p.mask)
    for cap in p.keep:
        linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_RAISE, cap)
    linux.prctl(linux.PR_SET_SECUREBITS, _LOCKED_BITS)
    linux.capset(p.mask, p.mask, p.mask)
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)


def drop_for_init() -> None:
    """Child side, for the jail's init: nothing but CAP_KILL (to signal the program), no way back.

    The bounding set only limits what an execve can grant, and init never execs: permitted
    reduced to CAP_KILL cannot grow again, so the 41 bounding-set calls are not needed here.
    """
    kill = 1 << CAP_KILL
    linux.capset(kill, kill, 0)
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    linux.prctl(linux.PR_SET_DUMPABLE, 0)


def can_switch_uid() -> bool:
    """Parent side, for a jail without a user namespace: this process may change its ids and
    lock its capabilities (CAP_SETUID, CAP_SETGID, CAP_SETPCAP: a container's root), so the
    jail's program still runs as --user with nothing kept."""
    need = (1 << 6) | (1 << 7) | (1 << CAP_SETPCAP)
    try:
        return linux.capget()[0] & need == need
    except OSError:
        return False


def can_lock() -> bool:
    """Child side: this process may drop the bounding set and lock the securebits
    (CAP_SETPCAP), so drop() applies even where the uid switch does not."""
    return bool(linux.capget()[0] >> CAP_SETPCAP & 1)


def drop_unprivileged() -> None:
    """Child side, without a user namespace or the privilege to change ids: empty the sets
    this process may still empty (ambient, inheritable, permitted, effective) and set
    no_new_privs, under which an execve never gains a capability (not even by a set-id file or
    a root's exec: the new sets cannot exceed the old permitted, which is empty)."""
    linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL)
    linux.capset(0, 0, 0)
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
