"""mkroot: build a small root filesystem from host programs, and check a root before a jail uses it.

A root is built by mirroring host paths: every program, script interpreter, shared library
(the closure ld.so would load, see `isol8r.elf`) and Python standard library lands at the same
absolute path inside, and every symlink met on the way (/bin -> usr/bin, /lib64/ld-linux... ->
/lib/...) is recreated, so the loader, $ORIGIN, RUNPATH and Python's prefix search give the same
answers inside as on the host. Files are owned by root with modes 0755 or 0644: no setuid or
setgid bit, and nothing private to the host user.

Writes never follow a symlink: every path is walked from an fd of the root with O_NOFOLLOW,
files are written to a fresh temporary name and renamed into place (so a planted symlink or hard
link is replaced, never written through), and an entry of the wrong type is removed first.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from .elf import LibraryResolver, NotElf, chase, default_dirs
from .errors import SpecError

__all__ = ["DEFAULT_PROGRAMS", "DEFAULT_USER", "MARKER", "Finding", "mkroot", "check_root",
           "mkroot_main", "check_root_main"]

DEFAULT_PROGRAMS: tuple[str, ...] = ("sh", "ls", "cat", "echo", "env", "id", "true", "false",
                                     "sleep", "python3")
DEFAULT_USER: tuple[str, int, int] = ("nobody", 65534, 65534)
MARKER = ".isol8r-root"
_MARKER_HEAD = "isol8r mkroot 1\n"

# Where a jail's PATH looks (pipeline.DEFAULT_PATH): a program found elsewhere gets a /usr/bin link.
_PATH_DIRS = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin")
_SYSTEM_DIRS = frozenset({"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32",
                          "/lib64", "/libx32", "/media", "/mnt", "/opt", "/proc", "/root", "/run",
                          "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var"})
_NEVER_INSIDE = ("/proc/", "/sys/", "/dev/", "/boot/", "/etc/")
# The merged-/usr links of the host are mirrored; where the host has a directory we make one.
_TOP_LINKS = ("bin", "sbin", "lib", "lib64")
_SKELETON: tuple[tuple[str, int], ...] = (
    ("usr", 0o755), ("usr/bin", 0o755), ("usr/sbin", 0o755), ("usr/lib", 0o755),
    ("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("tmp", 0o1777), ("etc", 0o755),
    ("home", 0o755), ("home/user", 0o755), ("root", 0o700))
_MODES = {name: mode for name, mode in _SKELETON}
# A jail mounts over these, hiding what a root holds there: host files below them move to /opt/host.
_HIDDEN = ("tmp", "dev", "proc", "sys")
_RELOCATED = ("opt", "host")

# Python standard library parts a jail does not need: copying them costs time and space.
_PY_SKIP_TOP = {"site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo",
                "ensurepip", "lib2to3", "__phello__"}
_PY_SKIP_ANY = {"test", "tests", "idle_test"}
_PY_SKIP_EXT = re.compile(r"(_test|_tkinter|_ctypes_test|xxlimited|_xxtestfuzz)")

_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
_NSSWITCH = ("passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n"
             "protocols: files\nservices: files\nethers: files\nrpc: files\n")


@dataclass(frozen=True)
class Finding:
    """One thing a jail would miss or should not get from a root; errors make a root unusable."""

    severity: str  # "error" | "warning"
    kind: str
    path: str  # inside the root
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.kind}: {self.path}: {self.message}"


# ---------------------------------------------------------------------------------------------
# Planning: what to copy, decided on the host before the destination is touched


@dataclass
class Plan:
    files: list[str] = field(default_factory=list)  # host paths, mirrored with their symlinks
    elf_roots: list[tuple[str, str]] = field(default_factory=list)  # (host path, asked as)
    pythons: list[tuple[str, str]] = field(default_factory=list)  # (host path, asked as)
    compilers: list[tuple[str, str]] = field(default_factory=list)  # gcc-like drivers
    trees: list[tuple[str, str]] = field(default_factory=list)  # (stdlib dir or zip, cache tag)
    optional: list[str] = field(default_factory=list)  # ELF objects whose missing libs only warn
    links: dict[str, str] = field(default_factory=dict)  # inside path -> symlink target
    busybox: str | None = None
    applets: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, path: str) -> None:
        if path not in self.files:
            self.files.append(path)


def _which(name: str) -> str:
    """The host path a shell would run for `name`: a path as given, else the first hit on PATH."""
    if not name or "\0" in name:
        raise SpecError("--with", name, "empty or invalid program name")
    if "/" in name:
        path = os.path.abspath(name)
        if not os.path.exists(path):
            raise SpecError("--with", name, "no such file")
        if not os.path.isfile(path):
            raise SpecError("--with", name, "not a regular file")
        return path
    for d in os.environ.get("PATH", os.defpath).split(":"):
        cand = os.path.join(d, name)
        if d.startswith("/") and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise SpecError("--with", name, "not found on PATH")


def _head(path: str) -> bytes:
    """The first 4 KiB: the ELF magic, a #! line, or all of a pyenv shim."""
    try:
        with open(path, "rb") as f:
            return f.read(4096)
    except OSError as e:
        raise SpecError("--with", path, e.strerror or str(e)) from None


_PYENV_SHIM = re.compile(rb'exec "([^"]*/pyenv)" exec')


def _pyenv_which(shim: str, text: bytes) -> str | None:
    """The real program behind a pyenv shim, asked from pyenv itself (honours .python-version)."""
    m = _PYENV_SHIM.search(text)
    if not m:
        return None
    pyenv = os.fsdecode(m.group(1))
    try:
        out = subprocess.run([pyenv, "which", os.path.basename(shim)], capture_output=True,
                             text=True, timeout=30, check=False)
    except OSError as e:
        raise SpecError("--with", shim, f"pyenv shim, and running pyenv failed: {e}") from None
    if out.returncode != 0 or not out.stdout.strip():
        reason = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise SpecError("--with", shim, f"pyenv shim, and `pyenv which` failed: {reason}")
    return out.stdout.strip()


def _shebang(text: bytes) -> tuple[str, list[str]]:
    line = text[2:].split(b"\n", 1)[0].decode("utf-8", "surrogateescape").strip()
    interp, _, arg = line.partition(" ")
    return interp, arg.split()


def _resolve(name: str, plan: Plan, depth: int = 0) -> str:
    """Add one program (and the interpreters it names) to the plan; return the path to link to."""
    if depth > 8:
        raise SpecError("--with", name, "too many levels of #! interpreters or shims")
    found = _which(name)
    real = os.path.realpath(found)
    head = _head(real)
    if head.startswith(b"\x7fELF"):
        plan.add(found)
        plan.elf_roots.append((found, name))
        if re.fullmatch(r"python\d*(\.\d+)*", os.path.basename(real)):
            plan.pythons.append((found, name))
        if _COMPILER.fullmatch(os.path.basename(real)) and (found, name) not in plan.compilers:
            plan.compilers.append((found, name))
        return found
    if not head.startswith(b"#!"):
        raise SpecError("--with", name, "not an ELF program or a #! script")
    if (target := _pyenv_which(real, head)) is not None:
        return _resolve(target, plan, depth + 1)
    interp, args = _shebang(head)
    if not interp.startswith("/"):
        raise SpecError("--with", name, f"#! interpreter {interp!r} is not an absolute path")
    plan.add(found)
    _resolve(interp, plan, depth + 1)
    if os.path.basename(interp) == "env":  # "#!/usr/bin/env [-S] prog": bring prog, on PATH
        prog = next((a for a in args if not a.startswith("-") and "=" not in a), None)
        if prog:
            _link_on_path(prog, _resolve(prog, plan, depth + 1), plan)
    return found


def _link_on_path(name: str, target: str, plan: Plan) -> None:
    """Make a program asked for by name runnable by that name with the jail's PATH.

    A program asked for by path keeps that path, unless it had to move (see _inside); then its
    base name gets the link instead.
    """
    inside = _inside_path(target)
    if "/" in name:
        if inside == target:
            return
        name = os.path.basename(name)
    if os.path.dirname(inside) in _PATH_DIRS and os.path.basename(inside) == name:
        return
    plan.links.setdefault(f"/usr/bin/{name}", inside)


def _python_paths(python: str, asked: str) -> tuple[list[str], str]:
    """The interpreter's own sys.path without site (-I -S): its stdlib, zip and lib-dynload."""
    code = "import sys, json; print(json.dumps([sys.path, sys.implementation.cache_tag]))"
    try:
        out = subprocess.run([python, "-I", "-S", "-c", code], capture_output=True, text=True,
                             timeout=60, check=True, env={"PATH": os.defpath})
        paths, tag = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        raise SpecError("--with", asked, f"cannot ask this Python for its standard library: {e}"
                        ) from None
    return [p for p in paths if isinstance(p, str) and p.startswith("/") and os.path.exists(p)
            and "-packages" not in p], str(tag or "")


def plan_of(programs: Sequence[str], busybox: bool) -> Plan:
    """What mkroot copies for these programs (files, links, ELF roots), before it copies any."""
    plan = Plan()
    if busybox:
        path = "/bin/busybox" if os.path.isfile("/bin/busybox") else shutil.which("busybox")
        if not path:
            raise SpecError("--busybox", True, "no busybox on this host (apt-get install "
                            "busybox-static)")
        if not _head(path).startswith(b"\x7fELF"):
            raise SpecError("--busybox", path, "not an ELF program")
        plan.busybox = path
        plan.add(path)
        plan.elf_roots.append((path, "busybox"))
        plan.applets = _applets(path)
    for name in programs:
        _link_on_path(name, _resolve(name, plan), plan)
    for python, asked in plan.pythons:
        paths, tag = _python_paths(python, asked)
        if not paths:
            raise SpecError("--with", asked, "this Python reports no standard library directory")
        for p in paths:
            if (p, tag) not in plan.trees:
                plan.trees.append((p, tag))
        dynload = [p for p in paths if os.path.basename(p) == "lib-dynload"]
        for d in dynload:
            plan.optional += [os.path.join(d, f) for f in sorted(os.listdir(d))
                              if f.endswith(".so") and not _PY_SKIP_EXT.match(f)]
    for driver, asked in list(plan.compilers):
        _add_compiler(driver, asked, plan)
    _add_libraries(plan)
    return plan


# A C/C++ compiler driver (gcc, cc, g++, x86_64-linux-gnu-gcc-12, clang): it runs helpers and
# reads headers, start files and libraries that no ELF closure names.
_COMPILER = re.compile(r"([\w.-]+-)?(gcc|g\+\+|cc|c\+\+|clang(\+\+)?)(-[\d.]+)?")
_HELPERS = ("cc1", "cc1plus", "as", "ld", "collect2", "lto-wrapper")
_PROBE_HEADERS = ("assert.h ctype.h dirent.h errno.h fcntl.h float.h inttypes.h limits.h "
                  "locale.h math.h poll.h pthread.h setjmp.h signal.h stdarg.h stdbool.h stddef.h "
                  "stdint.h stdio.h stdlib.h string.h time.h unistd.h sys/types.h sys/stat.h "
                  "sys/wait.h sys/mman.h sys/socket.h sys/time.h netinet/in.h arpa/inet.h").split()


def _add_compiler(driver: str, asked: str, plan: Plan) -> None:
    """The driver's helper programs (what `-print-prog-name` names, with their libraries) and
    the files a C program's compile and link read: the driver is asked, by compiling and linking
    a probe that includes the standard C headers (-M lists the headers, whose directories'
    *.h files all go in; ld --trace the start files, libc.so's script and libgcc), so the root
    gets what this compiler really uses."""
    def ask(*args: str, cwd: str | None = None) -> str:
        try:
            out = subprocess.run([driver, *args], capture_output=True, text=True, timeout=120,
                                 check=False, cwd=cwd, env={"PATH": os.defpath, "LC_ALL": "C"})
        except (OSError, subprocess.SubprocessError) as e:
            raise SpecError("--with", asked, f"cannot ask the compiler: {e}") from None
        if out.returncode != 0:
            reason = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise SpecError("--with", asked, f"the compiler fails on a probe program: {reason}")
        return out.stdout + out.stderr
    for helper in _HELPERS:
        if helper == "cc1plus" and "++" not in os.path.basename(os.path.realpath(driver)):
            continue
        path = ask(f"-print-prog-name={helper}").strip()
        if path.startswith("/") and os.path.isfile(path):
            _resolve(path, plan, 1)
        elif path == helper and shutil.which(helper, path=os.defpath):
            _resolve(shutil.which(helper, path=os.defpath) or helper, plan, 1)
    with tempfile.TemporaryDirectory(prefix="isol8r-mkroot-") as tmp:
        with open(os.path.join(tmp, "probe.c"), "w") as f:
            f.write("".join(f"#include <{h}>\n" for h in _PROBE_HEADERS)
                    + "int main(void) { return 0; }\n")
        deps = ask("-M", "-O2", "-D_GNU_SOURCE", "probe.c", cwd=tmp)
        trace = ask("-v", "probe.c", "-o", "probe", "-lm", "-pthread", "-Wl,--trace", cwd=tmp)
    # every header of a directory the probe's headers come from: bits/stdio.h at -O2, the
    # <sys/...> and <linux/...> a real program includes beyond the probe's
    header_dirs = sorted({os.path.dirname(w) for w in deps.split() if w.endswith(".h")
                          and w.startswith("/") and not w.startswith(tmp)})
    words = [os.path.join(d, f) for d in header_dirs for f in sorted(os.listdir(d))
             if f.endswith(".h")] + trace.split()
    for w in words:
        w = w.strip("()'\"")
        if w.startswith("-plugin="):
            w = w[len("-plugin="):]
        if w.startswith("/") and not w.startswith(("/tmp/", "/proc/", "/dev/")) \
                and os.path.isfile(w) and not w.startswith(tmp):
            plan.add(os.path.normpath(w))
            if w.endswith(".so") or ".so." in w:
                plan.optional.append(os.path.normpath(w))


def _applets(busybox: str) -> list[str]:
    """busybox --list-full names each applet with its directory ("bin/sh", "usr/bin/awk")."""
    try:
        out = subprocess.run([busybox, "--list-full"], capture_output=True, text=True,
                             timeout=30, check=True, env={"PATH": os.defpath}).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise SpecError("--busybox", busybox, f"cannot list its applets: {e}") from None
    return sorted({"/" + a.strip().lstrip("/") for a in out.splitlines()
                   if re.fullmatch(r"(usr/)?s?bin/[^/\s]+", a.strip().lstrip("/"))})


def _add_libraries(plan: Plan) -> None:
    """The closure of every ELF object, plus libgcc_s, which glibc dlopens for thread unwinding."""
    host = LibraryResolver()
    roots = [(p, a, True) for p, a in plan.elf_roots] + [(p, p, False) for p in plan.optional]
    for path, asked, required in roots:
        try:
            found, missing = host.closure(path)
        except NotElf:
            continue
        for name, by in missing:
            if required:
                raise SpecError("--with", asked, f"needs {name} (for {by}), which is not found "
                                "on this host")
            plan.warnings.append(f"{by}: needs {name}, not found on this host; copied anyway")
        info = host.elf(path)
        for f in found:
            plan.add(f.path)
            if f.how in ("cache", "conf") and info is not None:
                defaults = default_dirs(info.elf_class, info.machine)
                if os.path.dirname(f.path) not in defaults:  # no ld.so.cache inside: link it
                    plan.links.setdefault(os.path.join(defaults[0], os.path.basename(f.path)),
                                          _inside_path(f.path))
        if info is not None and any(f.path.endswith("/libc.so.6") for f in found):
            gcc = host.find("libgcc_s.so.1", os.path.realpath(path), info, [])
            if gcc is not None:
                plan.add(gcc.path)


# ---------------------------------------------------------------------------------------------
# Writing: a root opened as an fd, never following a symlink


class _Tree:
    """Writes inside one root through directory fds: O_NOFOLLOW everywhere, rename into place."""

    def __init__(self, fd: int, user: tuple[str, int, int], root_mode: int) -> None:
        self.fd = fd
        self.as_root = os.geteuid() == 0
        self.modes = dict(_MODES, root=root_mode)
        self.owners = {"home/user": (user[1], user[2])}
        self._dirs: dict[tuple[str, ...], int] = {}

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def fix(self, fd: int, rel: str, mode: int | None = None) -> None:
        """Set the mode (the skeleton's for `rel`, else 0755) and, as root, the owner of an fd."""
        os.fchmod(fd, mode if mode is not None else self.modes.get(rel, 0o755))
        if self.as_root:
            os.fchown(fd, *self.owners.get(rel, (0, 0)))

    def dir(self, parts: Sequence[str]) -> int:
        """An fd of the directory at `parts`, made (or remade if not a directory) as needed."""
        key = tuple(parts)
        if not key:
            return self.fd
        if key in self._dirs:
            return self._dirs[key]
        parent = self.dir(key[:-1])
        name = key[-1]
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=parent)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise
            if e.errno != errno.ENOENT:
                self.remove(parent, name)
            os.mkdir(name, 0o700, dir_fd=parent)
            fd = os.open(name, flags, dir_fd=parent)
        self.fix(fd, "/".join(key))
        if len(self._dirs) > 256:
            self.close()
        self._dirs[key] = fd
        return fd

    @staticmethod
    def remove(parent: int, name: str) -> None:
        """Remove one entry of a directory, a whole subtree if need be, without following links."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)

    def _place(self, parent: int, tmp: str, name: str) -> None:
        """Rename tmp over name; an old directory there goes first (and out of the fd cache)."""
        try:
            os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except OSError as e:
            if e.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
            self.remove(parent, name)
            os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
            for key in [k for k in self._dirs if name in k]:  # coarse, and rare: drop it all
                os.close(self._dirs.pop(key))

    def _new(self, parent: int, name: str) -> tuple[str, int]:
        tmp = f".isol8r-tmp.{os.getpid()}.{name}"[:255]
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return tmp, os.open(tmp, flags, 0o600, dir_fd=parent)
        except FileExistsError:
            self.remove(parent, tmp)
            return tmp, os.open(tmp, flags, 0o600, dir_fd=parent)

    def write(self, parts: Sequence[str], data: bytes, mode: int = 0o644) -> None:
        """Replace the file at `parts` with `data` (root-owned, `mode`)."""
        def fill(fd: int) -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            self.fix(fd, "", mode)
        self._create(parts, fill)

    def copy(self, parts: Sequence[str], src: str, st: os.stat_result) -> None:
        """Copy host file `src` to `parts`: 0755 if it was executable else 0644, times kept."""
        def fill(fd: int) -> None:
            sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                _copy_fd(sfd, fd, os.fstat(sfd).st_size)
            finally:
                os.close(sfd)
            self.fix(fd, "", 0o755 if st.st_mode & 0o111 else 0o644)
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        self._create(parts, fill)

    def _create(self, parts: Sequence[str], fill: Callable[[int], None]) -> None:
        """A new file at `parts`: made under a temporary name, filled, then put in place; a
        failure removes it."""
        parent = self.dir(parts[:-1])
        tmp, fd = self._new(parent, parts[-1])
        try:
            fill(fd)
        except BaseException:
            os.close(fd)
            self.remove(parent, tmp)
            raise
        os.close(fd)
        self._place(parent, tmp, parts[-1])

    def symlink(self, parts: Sequence[str], target: str) -> None:
        """Make `parts` a symlink to `target`, unless it already is exactly that."""
        parent = self.dir(parts[:-1])
        try:
            if os.readlink(parts[-1], dir_fd=parent) == target:
                return
        except OSError:
            pass
        tmp = f".isol8r-tmp.{os.getpid()}.{parts[-1]}"[:255]
        self.remove(parent, tmp)
        os.symlink(target, tmp, dir_fd=parent)
        self._place(parent, tmp, parts[-1])

    def chased(self, root: str, path: str) -> list[str]:
        """The parts of an inside path with its directory's symlinks resolved inside the root."""
        parent = chase(root, os.path.dirname(path))
        rel = os.path.relpath(parent, root)
        return ([] if rel == "." else rel.split("/")) + [os.path.basename(path)]


def _copy_fd(src: int, dst: int, size: int) -> None:
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, size - done)
            if n == 0:
                break
            done += n
        return
    except OSError as e:
        if done or e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while chunk := os.read(src, 1 << 20):
        os.write(dst, chunk)


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def _inside(parts: list[str]) -> list[str]:
    """Where a host path lands: the same path, or below /opt/host if a jail mounts over it."""
    return [*_RELOCATED, *parts] if parts and parts[0] in _HIDDEN else parts


def _inside_path(path: str) -> str:
    return "/" + "/".join(_inside(_parts(path)))


def _mirror(tree: _Tree, path: str, copied: set[str]) -> None:
    """Copy host `path` to the same path inside, recreating each symlink met on the way."""
    todo = _parts(path)
    cur: list[str] = []
    links = 0
    while todo:
        name = todo.pop(0)
        if name == ".":
            continue
        if name == "..":
            cur = cur[:-1]
            continue
        host = "/" + "/".join(cur + [name])
        st = os.lstat(host)
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 40:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            target = os.readlink(host)
            if host not in copied:
                where, aim = _inside(cur + [name]), target
                if where != cur + [name]:  # moved: aim at where the target lands, absolutely
                    aim = _inside_path(os.path.normpath(os.path.join(os.path.dirname(host),
                                                                     target)))
                tree.symlink(where, aim)
                copied.add(host)
            if target.startswith("/"):
                cur = []
            todo[:0] = _parts(target)
            continue
        if todo:
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), host)
            cur.append(name)
            continue
        if host in copied:
            return
        copied.add(host)
        if stat.S_ISREG(st.st_mode):
            tree.copy(_inside(cur + [name]), host, st)
        elif stat.S_ISDIR(st.st_mode):
            tree.dir(_inside(cur + [name]))
        else:
            raise SpecError("--with", path, "not a regular file, directory or symlink")


def copy_stdlib(tree: _Tree, top: str, tag: str, copied: set[str]) -> None:
    """Copy a Python standard library dir (or zip) minus site-packages, tests and foreign .pyc."""
    _mirror(tree, top, copied)
    real = os.path.realpath(top)
    if not os.path.isdir(real):
        return
    stack = [real]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            rel_top = d == real
            if e.path in copied:
                continue
            if e.is_dir(follow_symlinks=False):
                if e.name in _PY_SKIP_ANY or (rel_top and (e.name in _PY_SKIP_TOP
                                                           or e.name.startswith("config-"))):
                    continue
                stack.append(e.path)
                continue
            own_pyc = os.path.basename(d) == "__pycache__" and e.name.endswith(f".{tag}.pyc")
            if e.name.endswith((".pyc", ".pyo")) and not (tag and own_pyc):
                continue
            if e.name.endswith(".exe") or (e.name.endswith(".so") and _PY_SKIP_EXT.match(e.name)):
                continue
            st = e.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                tree.symlink(_inside(_parts(e.path)), os.readlink(e.path))
            elif stat.S_ISREG(st.st_mode):
                tree.copy(_inside(_parts(e.path)), e.path, st)
            copied.add(e.path)


# ---------------------------------------------------------------------------------------------
# mkroot


def _check_user(user: tuple[str, int, int]) -> tuple[str, int, int]:
    try:
        name, uid, gid = user
    except (TypeError, ValueError):
        raise SpecError("--user", user, "expected NAME:UID:GID") from None
    shown = f"{name}:{uid}:{gid}"
    if not isinstance(name, str) or not re.fullmatch(r"[a-z_][a-z0-9_.-]{0,31}", name):
        raise SpecError("--user", shown, "NAME must be a lower-case user name")
    for v in (uid, gid):
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**32 - 1:
            raise SpecError("--user", shown, "UID and GID must be numbers from 0 to 4294967294")
    if (name == "root") != (uid == 0) or (uid == 0 and gid != 0):
        raise SpecError("--user", shown, "root is 0:0 and 0:0 is root")
    return name, uid, gid


def _refuse_system(dest: str, real: str) -> None:
    parent = os.path.dirname(real)
    if real in _SYSTEM_DIRS or parent in ("/usr", "/var") or real.startswith(_NEVER_INSIDE):
        raise SpecError("DIR", dest, f"{real} is a host system directory; refusing to build there")


def _open_dest(dest: str) -> tuple[int, bool, bool]:
    """Open DIR, refusing host system dirs and foreign content. Returns (fd, created, was_empty)."""
    if not dest:
        raise SpecError("DIR", dest, "empty path")
    path = os.path.abspath(dest)
    _refuse_system(dest, os.path.realpath(path))
    created = False
    if not os.path.lexists(path):
        try:
            os.makedirs(path, 0o755)
        except OSError as e:
            raise SpecError("DIR", dest, f"cannot create it: {e.strerror}") from None
        created = True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise SpecError("DIR", dest, e.strerror or str(e)) from None
    try:
        _refuse_system(dest, os.readlink(f"/proc/self/fd/{fd}"))  # what we really opened
        st, top = os.fstat(fd), os.stat("/")
        if (st.st_dev, st.st_ino) == (top.st_dev, top.st_ino):
            raise SpecError("DIR", dest, "is the host's root directory")
        names = os.listdir(fd)
        if names and _marker_state(fd) is None:
            raise SpecError("DIR", dest, f"not empty and not an isol8r root (no /{MARKER}); "
                            "refusing to write into it")
    except BaseException:
        os.close(fd)
        raise
    return fd, created, not names


def _marker_state(fd: int) -> str | None:
    """The state line of a root's marker file ("complete", "building"), None if no marker."""
    try:
        mfd = os.open(MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(mfd).st_mode):
            return None
        text = os.read(mfd, 4096).decode("utf-8", "replace")
    finally:
        os.close(mfd)
    if not text.startswith(_MARKER_HEAD):
        return None
    m = re.search(r"^state: (\S+)", text, re.M)
    return m.group(1) if m else "unknown"


def _marker(state: str) -> bytes:
    return f"{_MARKER_HEAD}state: {state}\n".encode()


def mkroot(dest: str, programs: Sequence[str] = DEFAULT_PROGRAMS, *, busybox: bool = False,
           user: tuple[str, int, int] = DEFAULT_USER,
           report: Callable[[str], None] | None = None) -> None:
    """Build (or refresh) a root at `dest` holding `programs` and all they load; see module doc.

    Everything is resolved on the host first, so a missing program or library fails before
    `dest` is touched. Running it again with the same arguments gives the same tree. If it fails
    half-way, a root it started from nothing is removed; a previous root is left marked
    "state: building" in /.isol8r-root, which check_root reports. `report` gets warnings.
    """
    name, uid, gid = _check_user(user)
    plan = plan_of(list(programs), busybox)
    under_root = any(p == "/root" or p.startswith("/root/")
                     for p in plan.files + [t for t, _ in plan.trees] + list(plan.links.values()))
    fd, created, was_empty = _open_dest(dest)
    root = os.readlink(f"/proc/self/fd/{fd}")
    # /root is 0700, but search-only when a program lives below it (pyenv's python in /root/.pyenv)
    tree = _Tree(fd, (name, uid, gid), 0o711 if under_root else 0o700)
    try:
        tree.write([MARKER], _marker("building"))
        _build(tree, root, plan, (name, uid, gid))
        tree.write([MARKER], _marker("complete"))
        tree.fix(fd, "", 0o755)
    except BaseException:
        tree.close()
        try:
            if created or was_empty:  # nothing of the user's was there: leave nothing behind
                for entry in os.listdir(fd):
                    _Tree.remove(fd, entry)
                if created:
                    os.rmdir(os.path.abspath(dest))
        except OSError:
            pass  # still marked "state: building"
        finally:
            os.close(fd)
        raise
    tree.close()
    os.close(fd)
    for w in plan.warnings:
        if report:
            report(w)


def _build(tree: _Tree, root: str, plan: Plan, user: tuple[str, int, int]) -> None:
    for name in _TOP_LINKS:
        host = "/" + name
        target = os.readlink(host) if os.path.islink(host) else ""
        if target and not target.startswith("/") and ".." not in target:
            tree.symlink([name], target)
            tree.dir(_parts(target))
        else:
            tree.dir([name])
    for path, _mode in _SKELETON:
        tree.dir(_parts(path))
    copied: set[str] = set()
    if plan.busybox:
        _mirror(tree, plan.busybox, copied)
        itself = _parts(os.path.realpath(plan.busybox))
        for applet in plan.applets:
            parts = tree.chased(root, applet)
            if parts != itself:
                tree.symlink(parts, plan.busybox)
    for path in plan.files:
        _mirror(tree, path, copied)
    for top, tag in plan.trees:
        copy_stdlib(tree, top, tag, copied)
    for link, target in sorted(plan.links.items()):
        tree.symlink(tree.chased(root, link), target)
    name, uid, gid = user
    passwd = "root:x:0:0:root:/root:/bin/sh\n"
    group = "root:x:0:\n"
    if uid != 0:
        passwd += f"{name}:x:{uid}:{gid}:{name}:/home/user:/bin/sh\n"
    if gid != 0:
        group += f"{'nogroup' if gid == 65534 else name}:x:{gid}:\n"
    for fname, text in (("passwd", passwd), ("group", group), ("hosts", _HOSTS),
                        ("nsswitch.conf", _NSSWITCH)):
        tree.write(["etc", fname], text.encode())


# ---------------------------------------------------------------------------------------------
# Checking a root


def _mount_points(root: str) -> set[str]:
    """Mount points strictly below `root`, from /proc/self/mountinfo (octal escapes decoded)."""
    out: set[str] = set()
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4:
            mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if mp.startswith(root.rstrip("/") + "/"):
                out.add(mp)
    return out


def _scan(root: str) -> Iterator[tuple[str, os.stat_result | None]]:
    """(inside path, lstat) of everything below root; None for a mount point (not entered)."""
    top = os.stat(root)
    mounts = _mount_points(root)
    cut = len(root.rstrip("/"))
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                inside = e.path[cut:]
                if stat.S_ISDIR(st.st_mode):
                    if st.st_dev != top.st_dev or e.path in mounts:
                        yield inside, None
                        continue
                    stack.append(e.path)
                yield inside, st


def check_root(root: str, *, quick: bool = False) -> list[Finding]:
    """What a jail would miss in `root`, or should not get from it; errors make it unusable.

    quick=True (what `run --rootfs` uses) only looks for setuid/setgid files and device nodes.
    Both modes walk the tree once with os.scandir and lstat, never follow a symlink, and do not
    descend into mount points or other filesystems below `root` (a full check says which it
    skipped). The full check also wants a runnable /bin/sh, every executable ELF file's
    loader and libraries present inside (resolved inside the root as ld.so would), /tmp as
    1777, no world-writable directory but sticky ones, and a completed mkroot if it has a marker.
    """
    if not os.path.isdir(root):
        raise SpecError("DIR", root, "no such directory" if not os.path.exists(root)
                        else "not a directory")
    root = os.path.realpath(root)
    found: list[Finding] = []
    programs: list[str] = []
    for path, st in itertools.chain([("/", os.lstat(root))], _scan(root)):
        if st is None:
            if not quick:
                found.append(Finding("warning", "not-scanned", path,
                                     "a mount point or another filesystem; not checked"))
            continue
        mode = st.st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = "character" if stat.S_ISCHR(mode) else "block"
            found.append(Finding("error", "device", path,
                                 f"{kind} device node {os.major(st.st_rdev)}:"
                                 f"{os.minor(st.st_rdev)}"))
        elif stat.S_ISREG(mode):
            if mode & (stat.S_ISUID | stat.S_ISGID):
                bits = " and ".join(b for b, m in (("setuid", stat.S_ISUID),
                                                   ("setgid", stat.S_ISGID)) if mode & m)
                found.append(Finding("error", "setuid", path,
                                     f"{bits} file (mode {stat.S_IMODE(mode):04o}, owner "
                                     f"{st.st_uid})"))
            if not quick and mode & 0o111:
                programs.append(path)
        elif stat.S_ISDIR(mode) and not quick:
            if mode & stat.S_IWOTH and path != "/tmp":
                sticky = bool(mode & stat.S_ISVTX)
                found.append(Finding("warning" if sticky else "error", "world-writable", path,
                                     f"world-writable directory (mode {stat.S_IMODE(mode):04o})"))
            if mode & stat.S_ISGID:
                found.append(Finding("warning", "setgid-dir", path, "setgid directory"))
    if quick:
        return found
    return found + _usable(root, programs)


def _usable(root: str, programs: list[str]) -> list[Finding]:
    """The full check's part: marker, /tmp, mount points, a shell, and what programs load."""
    out: list[Finding] = []
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        state = _marker_state(fd)
    finally:
        os.close(fd)
    if state not in (None, "complete"):
        out.append(Finding("error", "incomplete", "/" + MARKER,
                           f"mkroot did not finish (state: {state}); run it again"))
    try:
        st = os.lstat(chase(root, "/tmp", follow_last=False))
        if not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o1777:
            out.append(Finding("error", "tmp-mode", "/tmp",
                               f"mode {stat.S_IMODE(st.st_mode):04o}, want a 1777 directory"))
    except OSError:
        out.append(Finding("error", "tmp-mode", "/tmp", "missing; want a 1777 directory"))
    for d in ("/proc", "/dev", "/etc/passwd"):
        if not os.path.lexists(chase(root, d, follow_last=False)):
            out.append(Finding("warning", "missing", d, "missing"))
    resolver = LibraryResolver(root)
    broken: dict[str, str] = {}
    for path in programs:
        info = resolver.elf(path)
        if info is None:
            continue
        try:
            _found, missing = resolver.closure(path)
        except (NotElf, OSError):
            continue
        if missing:
            names = ", ".join(sorted({n for n, _ in missing}))
            broken[path] = names
            program = info.interp is not None
            out.append(Finding("error" if program else "warning", "missing-lib", path,
                               f"needs {names}, not found inside the root"))
    try:
        sh = chase(root, "/bin/sh")
    except OSError:
        sh = ""
    inside_sh = "/" + os.path.relpath(sh, root) if sh else ""
    if not (sh and os.path.isfile(sh) and os.access(sh, os.X_OK)):
        out.append(Finding("error", "no-shell", "/bin/sh", "no executable /bin/sh"))
    elif inside_sh in broken:
        out.append(Finding("error", "no-shell", "/bin/sh",
                           f"{inside_sh} cannot start: needs {broken[inside_sh]}"))
    return out


# ---------------------------------------------------------------------------------------------
# Command line


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message}")


def _parse(p: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    try:
        return p.parse_args(argv)
    except SystemExit as e:  # --help
        raise _Exit(int(e.code or 0)) from None


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _parse_user(text: str) -> tuple[str, int, int]:
    bits = text.split(":")
    if len(bits) != 3 or not bits[1].isdigit() or not bits[2].isdigit():
        raise SpecError("--user", text, "expected NAME:UID:GID, e.g. nobody:65534:65534")
    return _check_user((bits[0], int(bits[1]), int(bits[2])))


def _print_findings(root: str, findings: list[Finding]) -> int:
    for f in findings:
        print(f)
    errors = sum(f.severity == "error" for f in findings)
    warnings = len(findings) - errors
    print(f"{root}: {'unusable or unsafe' if errors else 'ok'} "
          f"({errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)})")
    return 1 if errors else 0


def mkroot_main(argv: list[str]) -> int:
    """`isol8r mkroot DIR [--with PROG]... [--busybox] [--user N:U:G] | --check DIR`."""
    p = _Parser(prog="isol8r mkroot", description="Build a root filesystem from host programs "
                "and the libraries they load. Exit 0 ok, 1 failed or problems found, 2 bad usage.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--with", dest="programs", action="append", metavar="PROG",
                   help="a program on PATH or a path, added to the defaults (repeatable; "
                   f"defaults: {' '.join(DEFAULT_PROGRAMS)}; with --busybox: none)")
    p.add_argument("--busybox", action="store_true",
                   help="put the host's static /bin/busybox and its applet links in first")
    p.add_argument("--user", metavar="NAME:UID:GID", help="the jail user in /etc/passwd "
                   "(default nobody:65534:65534)")
    p.add_argument("--check", action="store_true", help="check DIR instead of building it")
    return _guarded("isol8r mkroot", lambda: _mkroot_cli(p, argv))


def _mkroot_cli(p: argparse.ArgumentParser, argv: list[str]) -> int:
    ns = _parse(p, argv)
    if ns.check:
        if ns.programs or ns.busybox or ns.user:
            raise _UsageError("isol8r mkroot: --check takes only DIR")
        return _print_findings(ns.dir, check_root(ns.dir))
    user = _parse_user(ns.user) if ns.user else DEFAULT_USER
    # --with adds to the defaults (none with --busybox: busybox brings sh and the rest)
    programs = [*(() if ns.busybox else DEFAULT_PROGRAMS), *(ns.programs or ())]

    def warn(text: str) -> None:
        sys.stderr.write(f"isol8r mkroot: warning: {text}\n")

    try:
        mkroot(ns.dir, programs, busybox=ns.busybox, user=user, report=warn)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        sys.stderr.write(f"isol8r mkroot: {ns.dir}: {where}{e.strerror or e}\n")
        return 1
    findings = check_root(ns.dir)  # "root ready" only for a root a jail can use
    if any(f.severity == "error" for f in findings):
        for f in findings:
            sys.stderr.write(f"isol8r mkroot: {f}\n")
        sys.stderr.write(f"isol8r mkroot: {ns.dir}: built, but check-root fails\n")
        return 1
    print(f"{ns.dir}: root ready")
    return 0


def _guarded(prog: str, body: Callable[[], int]) -> int:
    """Run a subcommand: its exit code, or 2 for bad usage (one line, never a traceback)."""
    try:
        return body()
    except _Exit as e:
        return e.code
    except _UsageError as e:
        sys.stderr.write(f"{e}\n")
        return 2
    except SpecError as e:
        sys.stderr.write(f"{prog}: {e}\n")
        return 2


def check_root_main(argv: list[str]) -> int:
    """`isol8r check-root DIR`: print the findings; 1 when the root is unsafe or unusable."""
    p = _Parser(prog="isol8r check-root", description="Check a root filesystem before a jail "
                "uses it. Exit 0 ok, 1 problems found, 2 bad usage.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--quick", action="store_true",
                   help="only setuid/setgid files and device nodes (what run --rootfs checks)")

    def body() -> int:
        ns = _parse(p, argv)
        return _print_findings(ns.dir, check_root(ns.dir, quick=ns.quick))

    return _guarded("isol8r check-root", body)
