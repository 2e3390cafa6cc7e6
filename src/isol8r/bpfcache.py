"""Compiled seccomp filters, cached per process and on disk, so a CLI run neither imports the
policy compiler nor loads libseccomp when the same policy was compiled before.

Why a module of its own: seccomp.py (the policy model, groups, profile loader) is large and
loads libseccomp; a cache hit must cost one stat and one small read, nothing more.
The cache is trusted only in a directory owned by the effective user and closed to everyone
else (a writable filter cache would let anyone weaken a jail); anything else is a miss.
"""

from __future__ import annotations

import os
import stat

try:  # the builtin module: hashlib would load OpenSSL, a few ms at every CLI start
    from _sha256 import sha256
except ImportError:  # pragma: no cover
    from hashlib import sha256

_MEMORY: dict[tuple[object, ...], bytes | None] = {}
_HERE = os.path.dirname(os.path.abspath(__file__))


def _dir() -> str:
    if os.geteuid() == 0:
        return "/run/isol8r/bpf"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/isol8r-{os.geteuid()}"
    return os.path.join(base, "isol8r-bpf")


def _trusted(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def _key(args: tuple[object, ...], profile: str | None) -> str:
    """What a filter depends on: the arguments, the profile file, the compiler's own code,
    libseccomp and the kernel (profiles can depend on its version)."""
    parts: list[object] = [args, os.uname().release]
    for path in (profile, os.path.join(_HERE, "seccomp.py"),
                 os.path.join(_HERE, "sys", "libseccomp.py")):
        if path:
            try:
                st = os.stat(path)
                parts.append((path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                parts.append((path, None))
    return sha256(repr(parts).encode()).hexdigest()


def compile_policy(seccomp: str, profile: str | None, allow: tuple[str, ...],
                   deny: tuple[str, ...], log: bool) -> bytes | None:
    """seccomp.compile_policy, through the caches."""
    args = (seccomp, profile, allow, deny, log)
    if args in _MEMORY and profile is None:
        return _MEMORY[args]
    key = _key(args, profile)
    d = _dir()
    path = os.path.join(d, key)
    if _trusted(d):
        try:
            with open(path, "rb") as f:
                data = f.read()
            if data[:1] == b"B":
                _MEMORY[args] = data[1:]
                return data[1:]
        except OSError:
            pass
    from . import seccomp as compiler
    bpf = compiler.compile_policy(seccomp, profile, allow, deny, log)
    _MEMORY[args] = bpf
    if bpf is not None:
        _store(d, path, bpf)
    return bpf


def _store(d: str, path: str, bpf: bytes) -> None:
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        if not _trusted(d):
            return
        tmp = f"{path}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"B" + bpf)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        _prune(d)
    except OSError:
        pass


def _prune(d: str, keep: int = 64) -> None:
    """Keep the most recently written filters; every other profile path adds an entry."""
    entries = sorted(os.scandir(d), key=lambda e: e.stat().st_mtime_ns, reverse=True)
    for e in entries[keep:]:
        try:
            os.unlink(e.path)
        except OSError:
            pass
