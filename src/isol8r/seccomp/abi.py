"""Syscall names on this host's ABIs: which names exist, on which arch, and a number's name.

Why a module of its own: every other part (the model's text, the user's lists, profiles, the
compiler, the kill log) asks these questions, and only libseccomp can answer them; keeping the
answers here keeps the rest free of arch details.
"""

from __future__ import annotations

from typing import Iterable

from ..sys import libseccomp as scmp
from ..sys.linux import MACHINE

#: libseccomp names the two arches isol8r supports as uname does.
NATIVE = MACHINE
#: The ABIs this kernel may run besides the native one; their calls carry another audit arch.
LOCAL_ARCHES: tuple[str, ...] = {"x86_64": ("x86_64", "x86", "x32"),
                                 "aarch64": ("aarch64", "arm")}[MACHINE]


def is_syscall(name: str) -> bool:
    """A name libseccomp knows on some arch, or a syscall newer than libseccomp."""
    return (scmp.resolve_name(name) != scmp.NR_SCMP_ERROR or name in scmp.FOREIGN_SYSCALLS
            or any(name in t for t in scmp.NEWER_SYSCALLS.values()))


def on_arch(name: str, arch: str) -> bool:
    """Whether a filter for arch can match this name; on x86 and arm libseccomp also turns
    socket and SysV IPC calls into their socketcall/ipc multiplexer forms (-100 to -299)."""
    if arch == NATIVE:
        return scmp.resolve_name(name) >= 0 or name in scmp.NEWER_NATIVE
    nr = scmp.resolve_name(name, scmp.arch_resolve_name(arch))
    return nr >= 0 or -300 < nr <= -100


def split_present(names: Iterable[str],
                  arches: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(names some of these arches have, names none has): a rule for the latter is skipped."""
    present: list[str] = []
    absent: list[str] = []
    for n in names:
        (present if any(on_arch(n, a) for a in arches) else absent).append(n)
    return present, absent


def syscall_name(nr: int) -> str | None:
    """The native syscall name for a number (an x32 number reads as "x32:name"), or None."""
    if nr < 0:
        return None
    if nr & scmp.X32_SYSCALL_BIT:
        name = scmp.resolve_num(nr, scmp.ARCH_X32) if NATIVE == "x86_64" else None
        return f"x32:{name}" if name else None
    name = scmp.resolve_num(nr)
    if name is None:
        name = next((n for n, v in scmp.NEWER_NATIVE.items() if v == nr), None)
    return name
