"""User namespace: the id maps (parent side) and the identity switches (child side).

By default jail ids 0..65535 map to a block of unprivileged host ids, so no id inside is host
root even when isol8r runs as root. Without root, only the caller's own id can be mapped (the
kernel's rule), and setgroups must then be denied before the gid map is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass



@dataclass(frozen=True)
class IdPlan:
    """What the parent writes and what the child becomes; computed before clone."""

    uid_lines: bytes
    gid_lines: bytes
    deny_setgroups: bool
    can_become_root: bool
    uid_base: int | None  # the host id of the jail's root, when it has one


def plan(uid: int, gid: int, id_map: tuple[tuple[int, int, int], ...]) -> IdPlan:
    """The maps to write: the whole range as root, else the jail user onto the caller's ids."""
    if os.geteuid() == 0:
        lines = "".join(f"{i} {o} {n}\n" for i, o, n in id_map).encode()
        return IdPlan(lines, lines, False, True, id_map[0][1])
    return IdPlan(f"{uid} {os.geteuid()} 1\n".encode(), f"{gid} {os.getegid()} 1\n".encode(),
                  True, False, None)


def write_maps(pid: int, p: IdPlan) -> None:
    """Parent side: give the child its id maps (must happen before it does anything with ids)."""
    base = f"/proc/{pid}/"
    if p.deny_setgroups:
        _write(base + "setgroups", b"deny")
    _write(base + "uid_map", p.uid_lines)
    _write(base + "gid_map", p.gid_lines)


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def become_root(p: IdPlan) -> None:
    """Child side, first thing after the maps: root of the jail with no supplementary groups.

    Clearing the groups matters: the process inherited the host caller's groups (root's gid 0),
    whose access would otherwise survive every later id change.
    """
    if p.can_become_root:
        os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)


def switch_to(uid: int, gid: int, keep_groups: bool) -> None:
    """Child side: become the jail user. Caps survive thanks to SECBIT_NO_SETUID_FIXUP (caps.py)."""
    if not keep_groups:
        os.setgroups([gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)

