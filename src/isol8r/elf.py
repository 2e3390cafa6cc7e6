"""A small ELF reader and the dynamic loader's search rules: mkroot copies what ld.so would load.

Only what building a root needs: the class/endianness/machine (to skip libraries of another
architecture, as ld.so does), PT_INTERP, and the dynamic section's DT_NEEDED, DT_RPATH,
DT_RUNPATH, DT_SONAME and DF_1_NODEFLIB. Reads with pread, so a 100 MB library costs a few reads.

`LibraryResolver` follows glibc's order for one DT_NEEDED name: a name with a slash is a path;
else DT_RPATH of the object and of its loaders (only when the object has no DT_RUNPATH), then
the object's own DT_RUNPATH, then /etc/ld.so.cache, then the ld.so.conf directories (a
fallback for a stale or missing cache: ld.so itself does not read them), then the default
directories. $ORIGIN, $LIB and $PLATFORM are expanded. LD_LIBRARY_PATH and the glibc-hwcaps
subdirectories are deliberately ignored: a jail starts with neither, and ld.so falls back to
the baseline library the cache and default directories name.
All paths are looked up under `sysroot` without following a symlink out of it, so the same
code answers both "what does this host program need" and "is that present inside a tree".
"""

from __future__ import annotations

import glob
import os
import platform
import struct
from dataclasses import dataclass, field

from .paths import chase  # noqa: F401  (elf.chase stays part of this module's interface)

__all__ = ["ElfInfo", "NotElf", "read_elf", "is_elf", "LibraryResolver", "chase"]

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH = 0, 1, 5, 10, 14, 15
DT_RUNPATH, DT_FLAGS_1 = 29, 0x6FFFFFFB
DF_1_NODEFLIB = 0x800
ET_EXEC, ET_DYN = 2, 3

_MACHINE_NAMES = {3: "i386", 62: "x86_64", 183: "aarch64", 40: "arm", 243: "riscv", 8: "mips",
                  21: "ppc64", 22: "s390"}


class NotElf(ValueError):
    """Not an ELF object, or too damaged to read: a script, data, a truncated file."""


@dataclass(frozen=True)
class ElfInfo:
    """The parts of one ELF object that decide what the loader will map next."""

    elf_class: int  # 32 or 64
    little_endian: bool
    machine: int  # e_machine
    elf_type: int  # ET_EXEC, ET_DYN, ...
    interp: str | None = None
    needed: tuple[str, ...] = ()
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()
    soname: str | None = None
    nodeflib: bool = False

    def compatible(self, other: ElfInfo) -> bool:
        """Could the loader map `other` into a process built from this object (same ABI)?"""
        return (self.elf_class, self.little_endian, self.machine) == (
            other.elf_class, other.little_endian, other.machine)


def _pread(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise NotElf("truncated")
    return data


def read_elf(path: str) -> ElfInfo:
    """Read one ELF object's header, program headers and dynamic section; NotElf if not ELF."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _read_fd(fd)
    finally:
        os.close(fd)


def is_elf(path: str) -> bool:
    """True when the file starts with the ELF magic (no further checks)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _read_fd(fd: int) -> ElfInfo:
    ident = os.pread(fd, 16, 0)
    if len(ident) < 16 or ident[:4] != b"\x7fELF":
        raise NotElf("no ELF magic")
    if ident[4] not in (1, 2) or ident[5] not in (1, 2):
        raise NotElf("unknown ELF class or data encoding")
    is64, le = ident[4] == 2, ident[5] == 1
    e = "<" if le else ">"
    if is64:
        etype, machine, _, _, phoff, _, _, _, phentsize, phnum = struct.unpack(
            e + "HHIQQQIHHH", _pread(fd, 42, 16))
        ph_fmt, ph_order = e + "IIQQQQQQ", (0, 2, 3, 5)  # type, offset, vaddr, filesz
        dyn_fmt = e + "qQ"
    else:
        etype, machine, _, _, phoff, _, _, _, phentsize, phnum = struct.unpack(
            e + "HHIIIIIHHH", _pread(fd, 30, 16))
        ph_fmt, ph_order = e + "IIIIIIII", (0, 1, 2, 4)
        dyn_fmt = e + "iI"
    ph_size = struct.calcsize(ph_fmt)
    if phnum and phentsize < ph_size:
        raise NotElf("bad program header size")
    table = _pread(fd, phentsize * phnum, phoff) if phnum else b""
    loads: list[tuple[int, int, int]] = []  # (vaddr, filesz, offset)
    interp: str | None = None
    dynamic: tuple[int, int] | None = None
    for i in range(phnum):
        fields = struct.unpack_from(ph_fmt, table, i * phentsize)
        ptype, off, vaddr, filesz = (fields[k] for k in ph_order)
        if ptype == PT_LOAD:
            loads.append((vaddr, filesz, off))
        elif ptype == PT_INTERP:
            interp = _pread(fd, filesz, off).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif ptype == PT_DYNAMIC:
            dynamic = (off, filesz)
    info = ElfInfo(64 if is64 else 32, le, machine, etype, interp)
    if dynamic is None:
        return info
    return _read_dynamic(fd, info, dynamic, dyn_fmt, loads)


def _read_dynamic(fd: int, info: ElfInfo, dynamic: tuple[int, int], fmt: str,
                  loads: list[tuple[int, int, int]]) -> ElfInfo:
    """Walk the dynamic section; string values are offsets into DT_STRTAB (a virtual address)."""
    raw = _pread(fd, dynamic[1], dynamic[0])
    step = struct.calcsize(fmt)
    tags: list[tuple[int, int]] = []
    for off in range(0, len(raw) - step + 1, step):
        tag, val = struct.unpack_from(fmt, raw, off)
        if tag == DT_NULL:
            break
        tags.append((tag, val))
    single = dict(tags)
    if DT_STRTAB not in single:
        return info
    strtab = _vaddr_to_offset(single[DT_STRTAB], loads)
    strsz = single.get(DT_STRSZ, 0)
    if strtab is None or not strsz:
        raise NotElf("DT_STRTAB outside any loaded segment")
    strings = _pread(fd, strsz, strtab)

    def text(offset: int) -> str:
        end = strings.find(b"\0", offset)
        return strings[offset:end if end >= 0 else None].decode("utf-8", "surrogateescape")

    def paths(tag: int) -> tuple[str, ...]:
        return tuple(p for t, v in tags if t == tag for p in text(v).split(":") if p)

    return ElfInfo(info.elf_class, info.little_endian, info.machine, info.elf_type, info.interp,
                   tuple(text(v) for t, v in tags if t == DT_NEEDED), paths(DT_RPATH),
                   paths(DT_RUNPATH), text(single[DT_SONAME]) if DT_SONAME in single else None,
                   bool(single.get(DT_FLAGS_1, 0) & DF_1_NODEFLIB))


def _vaddr_to_offset(addr: int, loads: list[tuple[int, int, int]]) -> int | None:
    for vaddr, filesz, off in loads:
        if vaddr <= addr < vaddr + filesz:
            return addr - vaddr + off
    return None


# ---------------------------------------------------------------------------------------------
# Paths under a sysroot


def _in_root(sysroot: str, host_path: str) -> str:
    """The inside path of a host path that chase() returned."""
    if sysroot == "/":
        return host_path
    rel = os.path.relpath(host_path, sysroot)
    return "/" if rel == "." else "/" + rel


# ---------------------------------------------------------------------------------------------
# ld.so.cache and ld.so.conf

_CACHE_MAGIC = b"glibc-ld.so.cache1.1"
# (class, machine) -> the ldconfig flags of its entries in the cache (FLAG_ELF_LIBC6 | arch)
_CACHE_ARCH_FLAGS = {
    (64, 62): 0x0303, (32, 62): 0x0803, (32, 3): 0x0003, (64, 183): 0x0A03,
    (64, 243): 0x1003, (64, 21): 0x0503, (64, 22): 0x0403, (32, 40): 0x0903,
}


def read_ld_cache(path: str) -> dict[str, list[tuple[int, str]]]:
    """Parse a glibc ld.so.cache (new format, maybe after an old one): name -> [(flags, path)]."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return {}
    start = data.find(_CACHE_MAGIC)
    if start < 0:
        return {}
    try:
        (nlibs,) = struct.unpack_from("=I", data, start + 20)  # written by this host's ldconfig
        out: dict[str, list[tuple[int, str]]] = {}
        for i in range(nlibs):
            flags, key, value = struct.unpack_from("=iII", data, start + 48 + 24 * i)
            name, lib = _cstr(data, start + key), _cstr(data, start + value)
            out.setdefault(name, []).append((flags, lib))
        return out
    except (struct.error, IndexError, UnicodeError):
        return {}


def _cstr(data: bytes, off: int) -> str:
    end = data.index(b"\0", off)
    return data[off:end].decode("utf-8", "surrogateescape")


def read_ld_conf(path: str, sysroot: str = "/", _depth: int = 0) -> list[str]:
    """Directories named by an ld.so.conf, following its `include` globs (relative to sysroot)."""
    dirs: list[str] = []
    try:
        with open(chase(sysroot, path)) as f:
            lines = f.read().splitlines()
    except OSError:
        return dirs
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("hwcap "):
            continue
        if line.startswith("include ") and _depth < 8:
            for pattern in line.split()[1:]:
                if not pattern.startswith("/"):
                    pattern = os.path.join(os.path.dirname(path), pattern)
                host_pattern = os.path.join(chase(sysroot, os.path.dirname(pattern)),
                                            os.path.basename(pattern))
                for conf in sorted(glob.glob(host_pattern)):
                    dirs += read_ld_conf(_in_root(os.path.abspath(sysroot), conf), sysroot,
                                         _depth + 1)
            continue
        for d in line.replace(",", " ").replace("\t", " ").split():
            if d.startswith("/") and d not in dirs:
                dirs.append(d.rstrip("/") or "/")
    return dirs


_TRIPLETS = {(64, 62): "x86_64-linux-gnu", (32, 3): "i386-linux-gnu",
             (64, 183): "aarch64-linux-gnu", (32, 40): "arm-linux-gnueabihf",
             (64, 243): "riscv64-linux-gnu", (64, 21): "powerpc64le-linux-gnu",
             (64, 22): "s390x-linux-gnu", (32, 62): "x86_64-linux-gnux32"}


def default_dirs(elf_class: int, machine: int) -> list[str]:
    """glibc's built-in search directories (Debian's multiarch ones first, then lib64 or lib)."""
    triplet = _TRIPLETS.get((elf_class, machine))
    dirs = [f"/lib/{triplet}", f"/usr/lib/{triplet}"] if triplet else []
    if elf_class == 64 and machine in (62, 21, 22, 243):
        dirs += ["/lib64", "/usr/lib64"]
    if (elf_class, machine) == (32, 62):
        dirs += ["/libx32", "/usr/libx32"]
    return dirs + ["/lib", "/usr/lib"]


# ---------------------------------------------------------------------------------------------
# The resolver


@dataclass
class Found:
    """One library as the loader would find it: its inside path and the ELF data behind it."""

    path: str  # inside the sysroot, as the loader names it (symlinks not resolved)
    info: ElfInfo
    how: str  # "path", "rpath", "runpath", "cache", "conf", "default"


@dataclass
class LibraryResolver:
    """Which file would ld.so map for a DT_NEEDED name, looking inside `sysroot` (default: host)."""

    sysroot: str = "/"
    _cache: dict[str, list[tuple[int, str]]] | None = field(default=None, repr=False)
    _conf: list[str] | None = field(default=None, repr=False)
    _elf: dict[str, ElfInfo | None] = field(default_factory=dict, repr=False)

    def host_path(self, path: str) -> str:
        """Where an inside path really is, symlinks resolved inside the sysroot."""
        return chase(self.sysroot, path)

    def elf(self, path: str) -> ElfInfo | None:
        """ELF data of an inside path; None when absent or not ELF. Cached per path."""
        if path not in self._elf:
            try:
                host = self.host_path(path)
                self._elf[path] = read_elf(host) if os.path.isfile(host) else None
            except (OSError, NotElf):
                self._elf[path] = None
        return self._elf[path]

    @property
    def cache(self) -> dict[str, list[tuple[int, str]]]:
        if self._cache is None:
            self._cache = read_ld_cache(self.host_path("/etc/ld.so.cache"))
        return self._cache

    @property
    def conf_dirs(self) -> list[str]:
        if self._conf is None:
            self._conf = read_ld_conf("/etc/ld.so.conf", self.sysroot)
        return self._conf

    def expand(self, entry: str, origin: str, info: ElfInfo) -> str:
        """Expand the dynamic string tokens of one RPATH/RUNPATH entry (or a DT_NEEDED path)."""
        lib = "lib64" if info.elf_class == 64 and info.machine in (62, 21, 22) else "lib"
        plat = platform.machine() if info.machine == 62 else _MACHINE_NAMES.get(info.machine, "")
        for token, value in (("ORIGIN", origin), ("LIB", lib), ("PLATFORM", plat)):
            entry = entry.replace("${" + token + "}", value).replace("$" + token, value)
        return entry

    def _try(self, path: str, want: ElfInfo) -> ElfInfo | None:
        found = self.elf(path)
        return found if found is not None and want.compatible(found) else None

    def find(self, name: str, obj_path: str, obj: ElfInfo,
             loaders: list[tuple[str, ElfInfo]]) -> Found | None:
        """Find DT_NEEDED `name` of the object at `obj_path`; `loaders` are the objects above it."""
        origin = os.path.dirname(obj_path)
        if "/" in name:
            path = self.expand(name, origin, obj)
            got = self._try(path, obj)
            return Found(path, got, "path") if got else None
        search: list[tuple[str, str]] = []
        if not obj.runpath:
            for p, i in [(obj_path, obj)] + loaders[::-1]:
                search += [(self.expand(d, os.path.dirname(p), i), "rpath") for d in i.rpath]
        search += [(self.expand(d, origin, obj), "runpath") for d in obj.runpath]
        for d, how in search:  # a relative entry would be relative to the cwd: skipped
            cand = os.path.join(d, name)
            if d.startswith("/") and (got := self._try(cand, obj)):
                return Found(cand, got, how)
        if obj.nodeflib:
            return None
        flags = _CACHE_ARCH_FLAGS.get((obj.elf_class, obj.machine))
        for f, path in self.cache.get(name, []):
            if (flags is None or f == flags) and (got := self._try(path, obj)):
                return Found(path, got, "cache")
        defaults = default_dirs(obj.elf_class, obj.machine)
        for d, how in [(d, "conf") for d in self.conf_dirs if d not in defaults] + [
                (d, "default") for d in defaults]:
            path = os.path.join(d, name)
            if got := self._try(path, obj):
                return Found(path, got, how)
        return None

    def closure(self, path: str) -> tuple[list[Found], list[tuple[str, str]]]:
        """Everything the loader maps for the object at `path`, breadth first as ld.so does.

        Returns the objects found (the PT_INTERP loader first) and the (name, needed by) pairs
        that are missing. $ORIGIN of the object itself is taken from its real path, as the
        kernel and ld.so do for a program; libraries keep the path they were found under.
        Raises NotElf when `path` is not an ELF object.
        """
        info = self.elf(path)
        if info is None:
            raise NotElf(f"{path}: not an ELF object")
        start = _in_root(os.path.abspath(self.sysroot), self.host_path(path))
        found: list[Found] = []
        missing: list[tuple[str, str]] = []
        if info.interp:
            loader = self.elf(info.interp)
            if loader is not None and info.compatible(loader):
                found.append(Found(info.interp, loader, "interp"))
            else:
                missing.append((info.interp, path))
        seen: set[str] = set()
        queue: list[tuple[str, ElfInfo, list[tuple[str, ElfInfo]]]] = [(start, info, [])]
        while queue:
            obj_path, obj, chain = queue.pop(0)
            for name in obj.needed:
                if name in seen:
                    continue
                seen.add(name)
                got = self.find(name, obj_path, obj, chain)
                if got is None:
                    missing.append((name, obj_path))
                    continue
                found.append(got)
                queue.append((got.path, got.info, chain + [(obj_path, obj)]))
        return found, missing
