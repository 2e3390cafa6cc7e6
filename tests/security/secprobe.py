"""Shared helpers of the security suite: build the probes, run one in a jail, read its report.

Not a conftest: tests/conftest.py is imported as `conftest` by every test module, and a second
conftest.py here would shadow it in sys.modules. Test modules import from here by name
(`from secprobe import ...`): pytest puts this directory on sys.path for them.

probe.c is the attacker (one subcommand per attack, with a guard that refuses to run outside a
jail); witness.c only prints its ids and capabilities. Both are built once per test process with
`gcc -static -O1` into a scratch directory under /tmp that the jail's unprivileged ids can
traverse (pytest's tmp_path lies under a 0700 root-owned directory the jail cannot enter), and
removed when the process exits.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

import isol8r

HERE = Path(__file__).resolve().parent
#: jail ids of these tests map onto host ids from here: no other suite's jails use this range,
#: so a probe that kills "everything of my uid" in a twin can only meet our own victims
ID_BASE = 1_650_000_000
JAIL_NOBODY = ID_BASE + 65534  # the host uid of the jail's default user 65534
#: a host uid with no account, for twins run without a user namespace (--user takes 0..65535)
LONE_UID = 64123


@dataclass(frozen=True)
class Tools:
    dir: Path
    probe: Path
    witness: Path


GCC_MISSING = "gcc is not installed: the static probe programs cannot be built (apt install gcc)"


@functools.cache
def _build() -> Tools | str:
    """The built programs, or why not: GCC_MISSING (a skip), anything else (a failure)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return GCC_MISSING
    d = Path(tempfile.mkdtemp(prefix="isol8r-security-"))
    atexit.register(shutil.rmtree, d, True)
    d.chmod(0o755)
    for name in ("probe", "witness"):
        p = subprocess.run([gcc, "-static", "-O1", "-o", str(d / name), str(HERE / f"{name}.c")],
                           capture_output=True, text=True)
        if p.returncode != 0:
            return f"gcc -static cannot build {name}.c (is libc6-dev installed?): {p.stderr[-300:]}"
    return Tools(d, d / "probe", d / "witness")


@pytest.fixture(scope="session")
def tools() -> Tools:
    """The probe and the witness, built with gcc -static; skips only if gcc is missing."""
    t = _build()
    if t == GCC_MISSING:
        pytest.skip(t)
    if isinstance(t, str):
        pytest.fail(t)
    return t


# ---- the probe's report -----------------------------------------------------------------------

@dataclass(repr=False)
class Report:
    """What a probe printed: `kind name detail` lines, and the Result of its jail."""

    result: isol8r.Result
    lines: list[tuple[str, str, str]] = field(default_factory=list)

    def get(self, name: str) -> tuple[str, str] | None:
        for kind, n, detail in self.lines:
            if n == name and kind in ("ok", "err", "leak"):
                return kind, detail
        return None

    def errno(self, name: str) -> str | None:
        """The errno name a call failed with, or None if it succeeded or never ran."""
        got = self.get(name)
        return got[1] if got and got[0] == "err" else None

    def ok(self, name: str) -> bool:
        got = self.get(name)
        return got is not None and got[0] in ("ok", "leak")

    def denied(self, name: str) -> bool:
        return self.errno(name) is not None

    def info(self, name: str) -> str | None:
        for kind, n, detail in self.lines:
            if kind == "info" and n == name:
                return detail
        return None

    @property
    def leaks(self) -> list[str]:
        return [f"{n} {d}".strip() for k, n, d in self.lines if k == "leak"]

    def __repr__(self) -> str:
        out = (self.result.stdout or b"").decode(errors="replace")
        err = (self.result.stderr or b"").decode(errors="replace")
        return f"\n{self.result!r}\n{out}{err}"


def parse(result: isol8r.Result) -> Report:
    rep = Report(result)
    for line in (result.stdout or b"").decode(errors="replace").splitlines():
        parts = line.split(" ", 2)
        if len(parts) >= 2 and parts[0] in ("ok", "err", "leak", "info"):
            rep.lines.append((parts[0], parts[1], parts[2] if len(parts) > 2 else ""))
        elif line.startswith("guard refused"):
            raise AssertionError(f"the probe's guard refused to run: {line}\n{result!r}")
    return rep


# ---- the compiled-filter cache ----------------------------------------------------------------
#
# isol8r caches every compiled seccomp filter on disk (seccomp.cache: /run/isol8r/bpf as root), one
# file per policy and profile file, never evicted. The suite must leave no file behind, so the
# policies it compiles are recorded and the entries it created are removed when it ends.

_SECCOMP_KEYS = ("seccomp", "seccomp_profile", "seccomp_allow", "seccomp_deny", "seccomp_log")
_DEFAULT_POLICY = ("default", None, (), (), False)
_NAMES: set[str] = set()  # cache file names, computed when the policy was used


def _cache_dir() -> Path | None:
    try:
        from isol8r.seccomp import cache
    except ImportError:
        return None
    return Path(cache.cache_dir())


def _cache_listing() -> set[str]:
    d = _cache_dir()
    try:
        return set(os.listdir(d)) if d is not None else set()
    except OSError:
        return set()


_CACHE_BEFORE = _cache_listing()


def note_policy(options: dict[str, Any]) -> None:
    """Record the seccomp policy of these run options, to clean its cache entry up at exit."""
    sec = {k: options[k] for k in _SECCOMP_KEYS if k in options}
    try:
        spec = isol8r.Spec.from_options(["/x"], sec)
    except isol8r.SpecError:
        return
    args = (spec.seccomp, spec.seccomp_profile, spec.seccomp_allow, spec.seccomp_deny,
            spec.seccomp_log)
    if args != _DEFAULT_POLICY and _cache_dir() is not None:
        from isol8r.seccomp import cache
        _NAMES.add(cache.cache_key(*args))  # a profile's key holds its inode and mtime


@atexit.register
def _forget_cached_filters() -> None:
    d = _cache_dir()
    if d is None:
        return
    from isol8r.seccomp import cache
    for name in _NAMES | {cache.cache_key(*_DEFAULT_POLICY)}:
        if name not in _CACHE_BEFORE:
            try:
                (d / name).unlink()
            except OSError:
                pass


def probe(tools: Tools, sub: str, *args: Any, twin: str | None = None, **options: Any) -> Report:
    """Run `probe SUB ARGS` in a jail with these isol8r options and read its report.

    The probe is bound read-only at /probe; with share_mount (no mounts possible) it runs from
    its host path. twin names the guard overrides a twin needs (see probe.c).
    """
    if options.get("share_mount"):
        exe = str(tools.probe)
    else:
        exe = "/probe"
        options["ro_bind"] = [*options.get("ro_bind", []), f"{tools.probe}:/probe"]
    options.setdefault("time_limit", 30)
    if not options.get("unsafe_map_host_root") and not options.get("no_userns"):
        options.setdefault("id_base", ID_BASE)
    argv = [exe, *([f"--twin={twin}"] if twin else []), sub, *map(str, args)]
    note_policy(options)
    return parse(isol8r.run(argv, capture_output=True, **options))


# ---- host-side fixtures -----------------------------------------------------------------------

@dataclass
class World:
    """A host directory the jail's ids could read if they ever reached it, holding a secret."""

    dir: Path
    secret_dir: Path
    marker: Path
    token: str


@pytest.fixture
def world() -> Iterator[World]:
    """A world-readable secret on the host (under /tmp, not bound into any jail by default).

    Readable by everybody on purpose: if a probe cannot read it, only the jail stopped it.
    """
    d = Path(tempfile.mkdtemp(prefix="isol8r-world-"))
    try:
        d.chmod(0o755)
        secret = d / "secret"
        secret.mkdir(mode=0o755)
        token = "secret-" + uuid.uuid4().hex[:12]  # short: probes print 24 bytes at most
        marker = secret / "marker"
        marker.write_text(token + "\n")
        marker.chmod(0o644)
        yield World(d, secret, marker, token)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def victim(world: World) -> Iterator[Any]:
    """Start host processes to attack: victim(uid) -> Popen of `sleep 60` running as uid, in the
    world's secret directory; all are killed and reaped afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(uid: int) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(["sleep", "60"], user=uid, group=uid, extra_groups=[],
                             cwd=world.secret_dir, stdin=subprocess.DEVNULL)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def alive(p: subprocess.Popen[bytes]) -> bool:
    return p.poll() is None


def processes_named(name: str) -> list[int]:
    """Live host pids whose comm is name (prctl PR_SET_NAME in the probe); zombies do not count
    (a killed process reparented to the host's init waits there to be reaped)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    comm, rest = f.read().rsplit(")", 1)
            except OSError:
                continue
            if comm.split("(", 1)[1] == name and rest.split()[0] != "Z":
                out.append(int(entry))
    return out


def kill_named(name: str) -> None:
    for pid in processes_named(name):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_until(cond: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


def unique(prefix: str) -> str:
    """A name of at most 15 characters (a comm), unique per call."""
    return (prefix + uuid.uuid4().hex)[:15]


libc = ctypes.CDLL(None, use_errno=True)

#: The probe guard in Python, for attacks written as `python3 -c` (the default root has the
#: host's /usr/bin/python3): the same refusal rules as probe.c's guard(), no override.
PY_GUARD = """
import ctypes, os, sys
def _refuse(why):
    print("guard refused:", why); sys.exit(3)
if ctypes.CDLL(None).prctl(39, 0, 0, 0, 0) != 1:
    _refuse("no_new_privs is not set")
_m = open("/proc/self/uid_map").read().split()
if _m[:3] == ["0", "0", "4294967295"]:
    _refuse("not in a user namespace")
if any(a == b for a, b in zip(_m[0::3], _m[1::3])):
    _refuse("identity uid_map")
if 0 in os.getresuid():
    _refuse("uid 0 in the jail")
"""
