"""The one cache of compiled filters: in this process's memory, and on disk for the next process,
so a CLI run neither imports the policy compiler nor loads libseccomp when the same policy was
compiled before.

Why a module of its own: a hit must cost one stat per input file and one small read, nothing
more, so this module imports only built-in modules and reaches the compiler only on a miss.
The disk store is trusted only in a directory owned by the effective user and closed to everyone
else (a writable filter cache would let anyone weaken a jail); anything else is a miss, and
nothing is written there.
"""

from __future__ import annotations

import os
import stat

try:  # the builtin module: hashlib would load OpenSSL, a few ms at every CLI start
    from _sha256 import sha256
except ImportError:  # pragma: no cover
    from hashlib import sha256

#: The Spec's five seccomp options, normalized: (seccomp, profile, allow, deny, log).
Options = tuple[str, str | None, tuple[str, ...], tuple[str, ...], bool]

_HERE = os.path.dirname(os.path.abspath(__file__))
#: The code a filter is made by: this package's modules that shape it, and the libseccomp
#: binding (tests/unit checks that every other module of the package is named here or not needed).
COMPILER_FILES = tuple(os.path.join(_HERE, f"{m}.py") for m in (
    "abi", "policy", "groups", "guards", "default", "docker", "resolve", "compiler")) + (
    os.path.join(os.path.dirname(_HERE), "sys", "libseccomp.py"),)
#: Compiled filters by options (and a profile file's identity); None means "no filter".
_memory: dict[object, bytes | None] = {}


def options(seccomp: str = "default", profile: str | None = None, allow: tuple[str, ...] = (),
            deny: tuple[str, ...] = (), log: bool = False) -> Options:
    """The options as the cache keys them: lists become tuples, log a bool."""
    return (seccomp, profile or None, tuple(allow), tuple(deny), bool(log))


def cache_dir() -> str:
    """Where compiled filters are stored: /run/isol8r/bpf for root, else the user's runtime
    directory (or /tmp/isol8r-UID)."""
    if os.geteuid() == 0:
        return "/run/isol8r/bpf"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/isol8r-{os.geteuid()}"
    return os.path.join(base, "isol8r-bpf")


def trusted(path: str) -> bool:
    """A real directory (not a symlink) owned by the effective user, closed to group and others."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def _identity(path: str) -> tuple[object, ...]:
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def cache_key(seccomp: str = "default", profile: str | None = None, allow: tuple[str, ...] = (),
              deny: tuple[str, ...] = (), log: bool = False) -> str:
    """The file name a filter is stored under: a hash of what the filter depends on, which is
    the options, the profile file, the compiler's own code (COMPILER_FILES), and the kernel
    (profiles can depend on its version)."""
    args = options(seccomp, profile, allow, deny, log)
    parts: list[object] = [args, os.uname().release]
    if args[1]:
        parts.append(_identity(args[1]))
    parts += [_identity(path) for path in COMPILER_FILES]
    return sha256(repr(parts).encode()).hexdigest()


def _memory_key(args: Options) -> object | None:
    """The options; with a profile, also its identity and mtime, so an edited profile is another
    filter. None when the profile cannot be stat'ed: resolving it will say why, nothing to keep."""
    if not args[1]:
        return args
    ident = _identity(args[1])
    return None if ident[1] is None else (args, ident)


def compile_policy(seccomp: str = "default", profile: str | None = None,
                   allow: tuple[str, ...] = (), deny: tuple[str, ...] = (),
                   log: bool = False) -> bytes | None:
    """BPF for the kernel (None when seccomp == 'none' and nothing else asked), compiled once per
    process for the same options and profile file; raises SpecError on bad input."""
    args = options(seccomp, profile, allow, deny, log)
    mkey = _memory_key(args)
    if mkey is not None and mkey in _memory:
        return _memory[mkey]
    from .compiler import build  # loads libseccomp: only on a miss
    from .resolve import resolve_policy
    policy = resolve_policy(*args)
    bpf = build(policy) if policy.enabled else None
    if mkey is not None:
        _memory[mkey] = bpf
    return bpf


def jail_filter(seccomp: str, profile: str | None, allow: tuple[str, ...],
                deny: tuple[str, ...], log: bool) -> bytes | None:
    """compile_policy through the disk store as well: what a jail loads. A process that finds the
    filter there never imports the compiler; one that compiles it stores it for the next."""
    args = options(seccomp, profile, allow, deny, log)
    mkey = _memory_key(args)
    if mkey is not None and mkey in _memory:
        return _memory[mkey]
    d = cache_dir()
    path = os.path.join(d, cache_key(*args))
    if trusted(d):
        try:
            with open(path, "rb") as f:
                data = f.read()
            if data[:1] == b"B":
                bpf = data[1:]
                if mkey is not None:
                    _memory[mkey] = bpf
                return bpf
        except OSError:
            pass
    bpf = compile_policy(*args)
    if bpf is not None:
        _store(d, path, bpf)
    return bpf


def _store(d: str, path: str, bpf: bytes) -> None:
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        if not trusted(d):
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
