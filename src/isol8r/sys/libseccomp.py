"""Thin ctypes binding to libseccomp.so.2: build a filter, export its BPF, resolve syscall names.

Nothing here decides a policy; `isol8r.seccomp` does. libseccomp is loaded on first use so that
importing isol8r works on a host without it; a missing library raises `LibseccompMissing`.
Every failing call raises `SyscallError` naming the libseccomp function.
"""

from __future__ import annotations

import ctypes
import os
from typing import Sequence

from .linux import MACHINE, SyscallError

# ---- actions (seccomp.h) ----------------------------------------------------------------------
ACT_KILL_PROCESS = 0x80000000
ACT_KILL_THREAD = 0x00000000
ACT_TRAP = 0x00030000
ACT_NOTIFY = 0x7FC00000
ACT_LOG = 0x7FFC0000
ACT_ALLOW = 0x7FFF0000


def ACT_ERRNO(err: int) -> int:  # noqa: N802 - mirrors the C macro
    return 0x00050000 | (err & 0xFFFF)


def ACT_TRACE(msg: int) -> int:  # noqa: N802
    return 0x7FF00000 | (msg & 0xFFFF)


# ---- architectures (AUDIT_ARCH_* values) ------------------------------------------------------
ARCH_NATIVE = 0
ARCH_X86 = 0x40000003
ARCH_X86_64 = 0xC000003E
ARCH_X32 = 0x4000003E
ARCH_ARM = 0x40000028
ARCH_AARCH64 = 0xC00000B7
#: The x32 ABI marks its syscall numbers with this bit, under the x86_64 audit arch.
X32_SYSCALL_BIT = 0x40000000

# ---- argument comparisons ---------------------------------------------------------------------
CMP_NE = 1
CMP_LT = 2
CMP_LE = 3
CMP_EQ = 4
CMP_GE = 5
CMP_GT = 6
CMP_MASKED_EQ = 7

# ---- filter attributes ------------------------------------------------------------------------
FLTATR_ACT_DEFAULT = 1
FLTATR_ACT_BADARCH = 2
FLTATR_CTL_NNP = 3
FLTATR_CTL_TSYNC = 4
FLTATR_CTL_LOG = 6
FLTATR_CTL_OPTIMIZE = 8

#: What seccomp_syscall_resolve_name returns for a name it does not know on any arch.
NR_SCMP_ERROR = -1

#: Syscalls newer than the libseccomp this was written against (2.5.4) knows, as the kernel numbers
#: them on the native arch. New syscalls since 5.1 share one number on every arch but alpha;
#: uretprobe is x86_64 only. A newer libseccomp resolves these itself and wins.
NEWER_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {"uretprobe": 335},
    "aarch64": {},
}
for _nr, _name in enumerate(
        ("statmount", "listmount", "lsm_get_self_attr", "lsm_set_self_attr", "lsm_list_modules",
         "mseal", "setxattrat", "getxattrat", "listxattrat", "removexattrat", "open_tree_attr",
         "file_getattr", "file_setattr", "listns"), start=457):
    for _table in NEWER_SYSCALLS.values():
        _table[_name] = _nr
NEWER_NATIVE: dict[str, int] = NEWER_SYSCALLS.get(MACHINE, {})
#: Real syscalls of arches isol8r does not run on that libseccomp 2.5.4 does not know either.
FOREIGN_SYSCALLS = frozenset({"riscv_hwprobe"})


class LibseccompMissing(OSError):
    """libseccomp.so.2 could not be loaded."""


class ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp."""

    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


_LIB: ctypes.CDLL | None = None
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.free.argtypes = [ctypes.c_void_p]
_LIBC.free.restype = None


def _lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        try:
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        except OSError as e:
            raise LibseccompMissing(2, f"libseccomp.so.2: {e}") from None
        ctx, u32 = ctypes.c_void_p, ctypes.c_uint32
        for name, res, args in (
                ("seccomp_init", ctx, [u32]),
                ("seccomp_release", None, [ctx]),
                ("seccomp_merge", ctypes.c_int, [ctx, ctx]),
                ("seccomp_arch_native", u32, []),
                ("seccomp_arch_resolve_name", u32, [ctypes.c_char_p]),
                ("seccomp_arch_add", ctypes.c_int, [ctx, u32]),
                ("seccomp_arch_remove", ctypes.c_int, [ctx, u32]),
                ("seccomp_attr_set", ctypes.c_int, [ctx, ctypes.c_int, u32]),
                ("seccomp_rule_add_array", ctypes.c_int,
                 [ctx, u32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ArgCmp)]),
                ("seccomp_export_bpf", ctypes.c_int, [ctx, ctypes.c_int]),
                ("seccomp_export_pfc", ctypes.c_int, [ctx, ctypes.c_int]),
                ("seccomp_syscall_resolve_name", ctypes.c_int, [ctypes.c_char_p]),
                ("seccomp_syscall_resolve_name_arch", ctypes.c_int, [u32, ctypes.c_char_p]),
                ("seccomp_syscall_resolve_num_arch", ctypes.c_void_p, [u32, ctypes.c_int])):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        _LIB = lib
    return _LIB


def _check(rc: int, name: str) -> int:
    if rc < 0:
        raise SyscallError(-rc, name)
    return rc


# ---- names and numbers ------------------------------------------------------------------------


def arch_native() -> int:
    return int(_lib().seccomp_arch_native())


def arch_resolve_name(name: str) -> int:
    """The arch token for a libseccomp arch name ("x86_64", "x86", "x32", ...), 0 if unknown."""
    return int(_lib().seccomp_arch_resolve_name(name.encode()))


def resolve_name(name: str, arch: int = ARCH_NATIVE) -> int:
    """libseccomp's number for a syscall name on arch.

    Negative: a pseudo-number (-10000 and below) for a name that exists only on other arches,
    which rule_add translates per arch; NR_SCMP_ERROR for a name libseccomp does not know at all.
    """
    lib = _lib()
    if arch == ARCH_NATIVE:
        return int(lib.seccomp_syscall_resolve_name(name.encode()))
    return int(lib.seccomp_syscall_resolve_name_arch(arch, name.encode()))


def resolve_num(nr: int, arch: int = ARCH_NATIVE) -> str | None:
    """The syscall name for a number on arch, or None."""
    ptr = _lib().seccomp_syscall_resolve_num_arch(arch, nr)
    if not ptr:
        return None
    try:
        return ctypes.string_at(ptr).decode()
    finally:
        _LIBC.free(ptr)


# ---- filters ----------------------------------------------------------------------------------


class Filter:
    """One libseccomp filter context; release it with close() or a with-block."""

    def __init__(self, default_action: int) -> None:
        self._ctx: int | None = _lib().seccomp_init(default_action)
        if not self._ctx:
            raise SyscallError(22, "seccomp_init")

    def __enter__(self) -> "Filter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._ctx:
            _lib().seccomp_release(self._ctx)
            self._ctx = None

    @property
    def ctx(self) -> int:
        if not self._ctx:
            raise ValueError("filter already released")
        return self._ctx

    def arch_add(self, arch: int) -> None:
        _check(_lib().seccomp_arch_add(self.ctx, arch), "seccomp_arch_add")

    def arch_remove(self, arch: int) -> None:
        _check(_lib().seccomp_arch_remove(self.ctx, arch), "seccomp_arch_remove")

    def attr_set(self, attr: int, value: int) -> None:
        _check(_lib().seccomp_attr_set(self.ctx, attr, value), "seccomp_attr_set")

    def rule_add(self, action: int, nr: int,
                 conds: Sequence[tuple[int, int, int, int]] = ()) -> int:
        """Add a rule; conds are (arg index, CMP_*, datum_a, datum_b). Returns 0 or -errno.

        The raw return is given back rather than raised because -EDOM ("not on this arch") is an
        expected answer for multi-arch filters; the caller decides.
        """
        arr = (ArgCmp * max(len(conds), 1))(*(ArgCmp(*c) for c in conds))
        return int(_lib().seccomp_rule_add_array(self.ctx, action, nr, len(conds), arr))

    def merge(self, other: "Filter") -> None:
        """Move other's arches and rules into this filter; other is consumed."""
        _check(_lib().seccomp_merge(self.ctx, other.ctx), "seccomp_merge")
        other._ctx = None

    def _export(self, fn: str) -> bytes:
        fd = os.memfd_create("isol8r-seccomp", os.MFD_CLOEXEC)
        try:
            _check(getattr(_lib(), fn)(self.ctx, fd), fn)
            size = os.lseek(fd, 0, os.SEEK_END)
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)

    def export_bpf(self) -> bytes:
        """The filter as the kernel takes it: an array of struct sock_filter."""
        return self._export("seccomp_export_bpf")

    def export_pfc(self) -> str:
        """libseccomp's human-readable pseudo-code of the filter."""
        return self._export("seccomp_export_pfc").decode()

