"""Argument guards: calls the default policy allows only with harmless arguments (clone without
namespace flags, ioctl without TIOCSTI/TIOCLINUX, personality's safe values, no set-id modes).

Why a module of its own: a guard has two forms (deny conditions under an allowing default, allow
conditions under a denying one, as in an allow-list with the default policy's guards), and the
bit arithmetic that builds them is worth reading on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .policy import Condition

CLONE_NS_FLAGS = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000,
                  "CLONE_NEWUTS": 0x04000000, "CLONE_NEWIPC": 0x08000000,
                  "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
                  "CLONE_NEWNET": 0x40000000}
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
#: Docker's harmless personality values: PER_LINUX, PER_LINUX32, UNAME26 with each, and the query.
PERSONALITY_OK = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
_LOW32 = 0xFFFFFFFF


def _cubes_outside(values: Iterable[int], bits: int) -> list[tuple[int, int]]:
    """(mask, result) pairs such that `x & mask == result` for some pair exactly when the low
    `bits` bits of x are not one of values; libseccomp can compare one argument only once per
    rule, so "not in a set" becomes this union of masked comparisons."""
    out: list[tuple[int, int]] = []

    def walk(mask: int, prefix: int, bit: int, members: list[int]) -> None:
        if bit < 0:
            return
        b = 1 << bit
        for side in (0, b):
            sub = [v for v in members if v & b == side]
            if sub:
                walk(mask | b, prefix | side, bit - 1, sub)
            else:
                out.append((mask | b, prefix | side))

    walk(0, 0, bits - 1, sorted(set(values)))
    return out


@dataclass(frozen=True)
class Guard:
    """Conditions that deny a call (under an allowing default) or allow it (under a denying one)."""

    deny_note: str
    deny: tuple[tuple[Condition, ...], ...]
    allow_note: str
    allow: tuple[tuple[Condition, ...], ...]


def _masked(index: int, mask: int, result: int) -> tuple[Condition, ...]:
    return (Condition(index, "masked_eq", mask, result),)


_ALL_NS = sum(CLONE_NS_FLAGS.values())
S_ISUID, S_ISGID = 0o4000, 0o2000
O_CREAT, O_TMPFILE_BIT = 0o100, 0o20000000  # the same on x86_64 and aarch64
#: The calls that set a file's mode, and (mode argument, flags argument or None: always sets it).
#: Through a writable bind a file the jail makes belongs to a host id (docs/design.md), so a
#: set-id bit there would be a set-id file of that host id: the default policy refuses the bits
#: (EPERM) wherever the call names them. openat2, whose mode sits in a struct, gets ENOSYS.
MODE_CALLS: dict[str, tuple[int, int | None]] = {
    "chmod": (1, None), "fchmod": (1, None), "fchmodat": (2, None), "fchmodat2": (2, None),
    "creat": (1, None), "open": (2, 1), "openat": (3, 2), "mkdir": (1, None),
    "mkdirat": (2, None), "mknod": (1, None), "mknodat": (2, None)}


def _setid_guard(mode: int, flags: int | None) -> Guard:
    """Deny a set-id bit in argument `mode`; with `flags`, only when the call creates a file."""
    bits = [Condition(mode, "masked_eq", b, b) for b in (S_ISUID, S_ISGID)]
    no_bits = _masked(mode, S_ISUID | S_ISGID, 0)
    if flags is None:
        return Guard(f"when arg{mode} (the mode) has S_ISUID or S_ISGID",
                      tuple((c,) for c in bits),
                      f"unless arg{mode} (the mode) has S_ISUID or S_ISGID", (no_bits,))
    return Guard(f"when arg{mode} (the mode) has S_ISUID or S_ISGID and arg{flags} has "
                  "O_CREAT or O_TMPFILE",
                  tuple((Condition(flags, "masked_eq", f, f), c)
                        for f in (O_CREAT, O_TMPFILE_BIT) for c in bits),
                  f"unless arg{mode} has S_ISUID or S_ISGID and arg{flags} creates",
                  (no_bits, _masked(flags, O_CREAT | O_TMPFILE_BIT, 0)))


GUARDS: dict[str, Guard] = {
    "clone": Guard(
        "when arg0 has a CLONE_NEW* flag",
        tuple(_masked(0, f, f) for f in CLONE_NS_FLAGS.values()),
        "when arg0 has no CLONE_NEW* flag",
        (_masked(0, _ALL_NS, 0),)),
    "ioctl": Guard(
        "when arg1 (low 32 bits) is TIOCSTI or TIOCLINUX",
        (_masked(1, _LOW32, TIOCSTI), _masked(1, _LOW32, TIOCLINUX)),
        "unless arg1 (low 32 bits) is TIOCSTI or TIOCLINUX",
        tuple(_masked(1, m, r) for m, r in _cubes_outside((TIOCSTI, TIOCLINUX), 32))),
    "personality": Guard(
        "unless arg0 is " + ", ".join(f"{v:#x}" for v in PERSONALITY_OK),
        (((Condition(0, "gt", _LOW32),),)
         + tuple(_masked(0, m, r) for m, r in _cubes_outside(PERSONALITY_OK, 32))),
        "when arg0 is " + ", ".join(f"{v:#x}" for v in PERSONALITY_OK),
        tuple((Condition(0, "eq", v),) for v in PERSONALITY_OK)),
    **{name: _setid_guard(*where) for name, where in MODE_CALLS.items()},
}


#: Deny-list groups that refuse calls by their arguments (not in groups.GROUPS, whose members
#: are whole calls): isolate's syscall_flags 4 and 2, for judges that run untrusted programs side
#: by side. A file lock lives on the inode, and the inodes of /usr are every jail's: a lock one
#: jail takes is seen by another (a channel between them, across mount namespaces); AF_VSOCK is
#: not namespaced. `--seccomp-deny @file-locks,@vsock`; the isolate front end always adds them.
#: Under an allow-list that allows fcntl outright, the conditional rules give way to it.
F_SETLK, F_SETLKW, F_OFD_SETLK, F_OFD_SETLKW, F_SETLEASE, F_NOTIFY = 6, 7, 37, 38, 1024, 1026
AF_VSOCK = 40
ARG_GROUPS: dict[str, tuple[str, tuple[tuple[str, tuple[Condition, ...]], ...]]] = {
    "@file-locks": ("file locks and leases: seen across jails on a shared inode", (
        ("flock", ()),
        *((call, (Condition(1, "masked_eq", _LOW32, cmd),))
          for call in ("fcntl", "fcntl64")
          for cmd in (F_SETLK, F_SETLKW, F_OFD_SETLK, F_OFD_SETLKW, F_SETLEASE, F_NOTIFY)))),
    "@vsock": ("AF_VSOCK sockets: not namespaced", (
        ("socket", (Condition(0, "masked_eq", _LOW32, AF_VSOCK),)),)),
}


def split_arg_groups(entries: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the ARG_GROUPS named in comma-separated entries, the entries without them)."""
    groups: list[str] = []
    rest: list[str] = []
    for entry in entries:
        items = [s.strip() for s in str(entry).split(",")]
        groups += [i for i in items if i in ARG_GROUPS and i not in groups]
        kept = [i for i in items if i and i not in ARG_GROUPS]
        if kept:
            rest.append(",".join(kept))
    return tuple(groups), tuple(rest)
