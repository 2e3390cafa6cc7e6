"""Cgroups: the jail's memory, pids and CPU limits and the counters its verdict is built from.

Only a group of processes can be capped and accounted as a whole, so each jail gets its own cgroup:
one v2 group on unified hosts, or one group per v1 hierarchy on hybrid hosts (memory, pids, cpu,
cpuacct, freezer), found at run time from /proc/self/mountinfo and /proc/self/cgroup.

The machine's cgroups are not ours. We create groups only in an `isol8r/` directory beneath the
cgroup this process runs in (or beneath the user's cgroup_parent), write control files only of
groups we created, use on v2 only controllers already delegated to that cgroup, and remove all we
create.
Where no group can be made, create() raises CgroupUnavailable with a one-line reason, so the caller
can report "fell back to rlimits" instead of silently running without limits.
"""

from __future__ import annotations

import atexit
import errno
import itertools
import os
import re
import signal
import time
from dataclasses import dataclass

from .errors import Isol8rError

PERIOD_US = 100_000  # CFS period for the cpus limit: 100 ms
_V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
_ACCOUNTING = frozenset({"memory", "pids"})  # used for peaks when present, even without a limit
_STALE_NAME = re.compile(r"jail-(\d+)-\d+-[0-9a-f]+\Z")
_STALE_AGE = 60.0  # seconds: younger groups may belong to a supervisor in another pid namespace
_counter = itertools.count()


class CgroupUnavailable(Isol8rError):
    """No cgroup could be made for this jail; `reason` is one line the result can show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """What the jail's cgroup caps: bytes of memory (swap included), processes, CPU cores."""

    memory: int | None = None
    pids: int | None = None
    cpus: float | None = None

    def __post_init__(self) -> None:
        for field, value in (("memory", self.memory), ("pids", self.pids), ("cpus", self.cpus)):
            if value is not None and not value > 0:
                raise ValueError(f"cgroup limit {field} must be positive, not {value!r}")


@dataclass(frozen=True)
class Usage:
    """The jail's counters for the verdict; None where this kernel or layout lacks the counter."""

    cpu_user: float | None
    cpu_system: float | None
    memory_peak: int | None
    oom_killed: bool
    pids_peak: int | None


# ---- layout -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy as this process sees it."""

    mountpoint: str
    root: str  # the mount's root inside the hierarchy (mountinfo field 4)
    current: str  # this process's cgroup in it (/proc/self/cgroup)
    readonly: bool

    def fs_path(self, cgroup: str) -> str | None:
        """The directory of a cgroup path, or None when this mount does not show it."""
        root = self.root.rstrip("/")
        if cgroup != root and not cgroup.startswith(root + "/"):
            return None
        rel = cgroup[len(root):].strip("/")
        return os.path.join(self.mountpoint, rel) if rel else self.mountpoint


@dataclass(frozen=True)
class Layout:
    """Where the hierarchies are. Tests build one over a fake tree: detect(mountinfo, cgroup)."""

    v1: dict[str, Hierarchy]  # controller -> its v1 hierarchy (co-mounted ones share one)
    v2: Hierarchy | None


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def detect(mountinfo: str | None = None, proc_cgroup: str | None = None) -> Layout:
    """The layout from the texts of /proc/self/mountinfo and /proc/self/cgroup (default: ours)."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    if proc_cgroup is None:
        with open("/proc/self/cgroup") as f:
            proc_cgroup = f.read()
    current: dict[str, str] = {}  # controller -> path; "" -> the v2 path
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for ctl in parts[1].split(",") if parts[1] else [""]:
                current.setdefault(ctl, parts[2])
    v1: dict[str, Hierarchy] = {}
    v2: Hierarchy | None = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        fstype = fields[sep + 1]
        superopts = fields[sep + 3].split(",") if len(fields) > sep + 3 else []
        readonly = "ro" in fields[5].split(",") or "ro" in superopts
        mnt, root = _unescape(fields[4]), _unescape(fields[3])
        if fstype == "cgroup2" and v2 is None and "" in current:
            v2 = Hierarchy(mnt, root, current[""], readonly)
        elif fstype == "cgroup":
            for ctl in _V1_CONTROLLERS:
                if ctl in superopts and ctl in current and ctl not in v1:
                    v1[ctl] = Hierarchy(mnt, root, current[ctl], readonly)
    return Layout(v1, v2)


# ---- plan: which directories to create groups in ------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    version: int
    bases: dict[str, str]  # controller -> the existing group to make isol8r/<name> in ("" on v2)
    enable: tuple[str, ...]  # v2: controllers to enable in isol8r/cgroup.subtree_control


def _base(h: Hierarchy, parent: str | None, what: str) -> str:
    cgroup = parent if parent is not None else h.current
    path = h.fs_path(cgroup)
    if path is None:
        raise CgroupUnavailable(f"cgroup {cgroup} is outside the {what} mount at {h.mountpoint}")
    if not os.path.isdir(path):
        raise CgroupUnavailable(f"cgroup parent {cgroup} does not exist in the {what} hierarchy")
    if h.readonly:
        raise CgroupUnavailable(f"the {what} cgroup filesystem at {h.mountpoint} is read-only")
    return path


def _plan(limits: Limits, parent: str | None, layout: Layout) -> _Plan:
    required = {c for c, v in (("memory", limits.memory), ("pids", limits.pids),
                               ("cpu", limits.cpus)) if v is not None}
    if any(c in layout.v1 for c in ("memory", "pids", "cpu", "cpuacct")):
        required.add("cpuacct")  # CPU time is always wanted
        bases: dict[str, str] = {}
        for ctl in _V1_CONTROLLERS:
            if ctl not in required and ctl not in _ACCOUNTING | {"freezer"}:
                continue
            try:
                if ctl not in layout.v1:
                    raise CgroupUnavailable(f"no cgroup v1 hierarchy has the {ctl} controller")
                bases[ctl] = _base(layout.v1[ctl], parent, f"{ctl} (v1)")
            except CgroupUnavailable:
                if ctl in required:
                    raise
        return _Plan(1, bases, ())
    if layout.v2 is None:
        raise CgroupUnavailable("no cgroup filesystem is mounted")
    base = _base(layout.v2, parent, "v2")
    try:
        delegated = set(_read(os.path.join(base, "cgroup.subtree_control")).split())
    except OSError as e:
        raise _fail("read", e) from e
    missing = required - delegated
    if missing:
        where = parent if parent is not None else layout.v2.current
        raise CgroupUnavailable(f"cgroup v2 controller {' '.join(sorted(missing))} not delegated "
                                f"to {where} (absent from its cgroup.subtree_control)")
    return _Plan(2, {"": base}, tuple(sorted(required | (_ACCOUNTING & delegated))))


def available(parent: str | None = None, *, limits: Limits | None = None,
              layout: Layout | None = None) -> str | None:
    """None when create() should work here, else the reason it would not (for docs/diagnostics)."""
    try:
        plan = _plan(limits or Limits(), parent, layout or detect())
    except CgroupUnavailable as e:
        return e.reason
    except OSError as e:
        return f"cannot read the cgroup layout: {e}"
    for base in plan.bases.values():
        if not os.access(base, os.W_OK):
            return f"cgroup {base} is not writable"
    return None


# ---- file helpers -------------------------------------------------------------------------------


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _read_opt(path: str) -> str | None:
    try:
        return _read(path)
    except FileNotFoundError:
        return None


def _int_opt(path: str) -> int | None:
    text = _read_opt(path)
    return int(text) if text and text.strip().isdigit() else None


def _kv(text: str | None) -> dict[str, int]:
    """Parse "key value" lines (cpu.stat, memory.events, memory.oom_control, cpuacct.stat)."""
    out = {}
    for line in (text or "").splitlines():
        k, _, v = line.partition(" ")
        if v.strip().lstrip("-").isdigit():
            out[k] = int(v)
    return out


def _write(path: str, text: str) -> None:
    # O_CREAT|O_TRUNC is what the shell's `>` does: harmless on cgroupfs, and it lets a test's
    # fake tree record what was written.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode())
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None
    finally:
        os.close(fd)


def _fail(what: str, e: OSError) -> CgroupUnavailable:
    name = errno.errorcode.get(e.errno or 0, str(e.errno))
    return CgroupUnavailable(f"{what} {e.filename}: {name} ({e.strerror})")


def alive(pid: int) -> bool:
    """The pid names a process (one of another user's too): a stale group's owner is gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _sweep(top: str) -> None:
    """Remove empty groups left by an isol8r that died before its cleanup ran (its pid is gone)."""
    try:
        names = os.listdir(top)
    except OSError:
        return
    for name in names:
        m = _STALE_NAME.match(name)
        if not m or alive(int(m[1])):
            continue
        path = os.path.join(top, name)
        try:
            if time.time() - os.stat(path).st_mtime > _STALE_AGE:
                _rmtree(path)  # EBUSY while processes are still in it: those we leave alone
        except OSError:
            pass


def _rmtree(path: str) -> None:
    """rmdir a group and the groups nested in it (a jail's program group), deepest first."""
    for d, _, _ in os.walk(path, topdown=False):
        os.rmdir(d)


def _procs_below(path: str) -> set[int]:
    """Every pid in a group and in the groups nested in it (a jail's, or one the jail made)."""
    pids: set[int] = set()
    for d, _, _ in os.walk(path):
        text = _read_opt(os.path.join(d, "cgroup.procs")) or ""
        pids.update(int(p) for p in text.split())
    return pids


def sweep_owner(pid: int) -> list[str]:
    """Remove now the groups named for pid under this process's isol8r/ dirs, killing what is
    still in them: pid is an isol8r server known to be dead (its record says so:
    daemon/forkserver.py), so nothing will remove them otherwise; without that proof _sweep
    waits _STALE_AGE."""
    try:
        layout = detect()
    except OSError:
        return []
    tops = set()
    for h in [*layout.v1.values(), *([layout.v2] if layout.v2 is not None else [])]:
        base = h.fs_path(h.current)
        if base is not None:
            tops.add(os.path.join(base, "isol8r"))
    removed = []
    for top in sorted(tops):
        try:
            names = os.listdir(top)
        except OSError:
            continue
        for name in names:
            m = _STALE_NAME.match(name)
            if not m or int(m[1]) != pid:
                continue
            path = os.path.join(top, name)
            deadline = time.monotonic() + 1.0
            while True:
                try:
                    for p in _procs_below(path):
                        try:
                            os.kill(p, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    _rmtree(path)
                    removed.append(path)
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
        try:
            os.rmdir(top)
        except OSError:
            pass
    return removed


def _make(base: str, name: str, enable: tuple[str, ...]) -> str:
    """mkdir base/isol8r/name; retried when a concurrent jail removes isol8r/ under our feet."""
    top = os.path.join(base, "isol8r")
    path = os.path.join(top, name)
    for attempt in range(20):
        try:
            os.mkdir(top)
        except FileExistsError:
            pass
        except OSError as e:
            raise _fail("mkdir", e) from e
        if attempt == 0:
            _sweep(top)
        try:
            if enable:
                _write(os.path.join(top, "cgroup.subtree_control"),
                       " ".join("+" + c for c in enable))
            os.mkdir(path)
            return path
        except FileNotFoundError:
            continue
        except OSError as e:
            raise _fail("mkdir" if e.filename == path else "write to", e) from e
    raise CgroupUnavailable(f"mkdir {path}: {top} kept disappearing")


def _new_name() -> str:
    return f"jail-{os.getpid()}-{next(_counter)}-{os.urandom(3).hex()}"


# ---- the jail's cgroup --------------------------------------------------------------------------


class Cgroup:
    """One jail's cgroup: a group in each v1 hierarchy used, or one v2 group."""

    def __init__(self, version: int) -> None:
        self.version = version
        self._dirs: dict[str, str] = {}  # controller -> the jail's group dir ("" -> the v2 group)
        self._fd = -1
        self._owner = os.getpid()
        self._nested = False  # a group inside another's directory (program_group): leave its parent
        self.limits = Limits()  # what the control files hold now

    @classmethod
    def create(cls, limits: Limits, *, parent: str | None = None, name: str | None = None,
               layout: Layout | None = None) -> Cgroup:
        """Make the jail's group(s) under isol8r/ and set the limits, or raise CgroupUnavailable.

        parent is a cgroup path from the hierarchy root ("/mygroup"), default the one we run in.
        layout is for tests (a fake tree); callers leave it None.
        """
        name = name if name is not None else _new_name()
        if not name or "/" in name or name in (".", "..") or "\0" in name:
            raise ValueError(f"cgroup name {name!r} is not a single path component")
        if parent is not None and (not parent.startswith("/") or ".." in parent.split("/")):
            raise ValueError(f"cgroup_parent {parent!r} must be an absolute path without '..'")
        try:
            plan = _plan(limits, parent, layout or detect())
        except OSError as e:
            raise CgroupUnavailable(f"cannot read the cgroup layout: {e}") from e
        group = cls(plan.version)
        _live.add(group)
        try:
            made: dict[str, str] = {}  # base -> our group there (co-mounted controllers share it)
            for ctl, base in plan.bases.items():
                if base not in made:
                    made[base] = _make(base, name, plan.enable)
                group._dirs[ctl] = made[base]
            group.set_limits(limits)
        except BaseException:
            try:
                group.remove()
            except OSError:
                pass  # the reason to report is the first failure
            raise
        return group

    @classmethod
    def program_group(cls, jail: "Cgroup | None", *, parent: str | None = None,
                      layout: Layout | None = None) -> "Cgroup":
        """A v1 memory group the program alone is moved into just before its exec, so that its
        memory.max_usage_in_bytes is the program's own peak: not the jail's init, not the copy
        of isol8r's image the program's process was before exec (which wait4's ru_maxrss
        counts). A child of the jail's memory group, whose limit then holds it too; else a group
        of its own. v2 would need the jail's init in a sibling leaf: CgroupUnavailable there."""
        if jail is not None and jail.version == 1 and "memory" in jail._dirs:
            path = os.path.join(jail._dirs["memory"], "program")
            try:
                os.mkdir(path)
            except OSError as e:
                raise _fail("mkdir", e) from e
            group = cls(1)
            group._dirs, group._nested = {"peak": path}, True
            _live.add(group)
            return group
        try:
            layout = layout or detect()
        except OSError as e:
            raise CgroupUnavailable(f"cannot read the cgroup layout: {e}") from e
        if "memory" not in layout.v1:
            raise CgroupUnavailable("no cgroup v1 memory hierarchy (on v2 the program's own peak "
                                    "is not separated from the jail's)")
        group = cls(1)
        _live.add(group)
        try:
            # the jail's own memory group (its init goes in: attach_jail), the program's within:
            # the jail's cgroup namespace is rooted at the former, as with a limited jail's
            top = _make(_base(layout.v1["memory"], parent, "memory (v1)"), _new_name(), ())
            group._dirs = {"memory": top}
            os.mkdir(os.path.join(top, "program"))
        except OSError as e:
            group.remove()
            raise _fail("mkdir", e) from e
        group._dirs["peak"] = os.path.join(top, "program")
        return group

    def attach_jail(self, pid: int) -> None:
        """A standalone program group: the jail's first process goes into the group around
        it (not into the program's, which its exec'd program enters itself)."""
        if "memory" in self._dirs and self.version == 1:
            _write(os.path.join(self._dirs["memory"], "cgroup.procs"), str(pid))

    def procs_file(self) -> str:
        """The program group's cgroup.procs, which the program's process enters by."""
        return os.path.join(self._dirs["peak"], "cgroup.procs")

    def memory_peak(self) -> int | None:
        """The program group's high-water mark of charged memory, in bytes."""
        d = self._dirs.get("peak")
        return None if d is None else _int_opt(os.path.join(d, "memory.max_usage_in_bytes"))

    def reset_peak(self) -> None:
        """Start the program group's high-water mark again (v1: write 0), so an empty group
        can count the next program of a sandbox, instead of a new one made for it."""
        d = self._dirs.get("peak")
        if d is not None:
            _write(os.path.join(d, "memory.max_usage_in_bytes"), "0")

    def reset_counters(self) -> bool:
        """Start an empty group's CPU time and memory high-water marks again (v1: write 0), so
        a sandbox's next command can have it rather than a new one. False where that cannot
        be done (v2): make a new group then. pids.peak cannot be reset: a caller that reuses
        a group does not report it."""
        if self.version != 1:
            return False
        for ctl, file in (("memory", "memory.max_usage_in_bytes"), ("peak", "memory.max_usage_in_bytes"),
                          ("cpuacct", "cpuacct.usage")):
            d = self._dirs.get(ctl)
            if d is not None:
                _write(os.path.join(d, file), "0")
        return True

    def path(self, controller: str = "") -> str | None:
        """The directory holding this controller's files (v2: the one group), None if not used."""
        return self._dirs.get("" if self.version == 2 else controller)

    @property
    def paths(self) -> tuple[str, ...]:
        """Every directory this group is made of, one per hierarchy."""
        return tuple(dict.fromkeys(self._dirs.values()))

    def _put(self, controller: str, file: str, value: object, optional: bool = False) -> None:
        path = os.path.join(self._dirs["" if self.version == 2 else controller], file)
        try:
            _write(path, str(value))
        except OSError as e:
            # a missing kernfs file reads EACCES on open(O_CREAT): e.g. no swap accounting
            if not (optional and e.errno in (errno.ENOENT, errno.EACCES)):
                raise _fail(f"write {value} to", e) from e

    def set_limits(self, limits: Limits) -> None:
        """Write the limits that differ from what the group holds (a pre-warmed jail's group is
        re-used for the next caller's values): nothing for the same values again. A limit once
        set stays set: a group is only re-used for limits of the same kinds (daemon/pool.py)."""
        old = self.limits
        for kind in ("memory", "pids", "cpus"):
            if getattr(old, kind) is not None and getattr(limits, kind) is None:
                raise ValueError(f"cgroup limit {kind} cannot be lifted from a group")
        quota = None if limits.cpus is None else max(1000, round(limits.cpus * PERIOD_US))
        v1 = self.version == 1
        if limits.memory is not None and limits.memory != old.memory:
            # v1 wants memory+swap >= memory at every step: raise memsw first, lower it last
            mem = [("memory", "memory.limit_in_bytes", False),
                   ("memory", "memory.memsw.limit_in_bytes", True)] if v1 else \
                  [("", "memory.max", False)]
            if v1 and old.memory is not None and limits.memory > old.memory:
                mem.reverse()
            for ctl, file, optional in mem:
                self._put(ctl, file, limits.memory, optional)
            if not v1:  # swap 0 keeps memory+swap under the limit, as memsw does on v1
                self._put("", "memory.swap.max", 0, optional=True)
        if limits.pids is not None and limits.pids != old.pids:
            self._put("pids" if v1 else "", "pids.max", limits.pids)
        if quota is not None and limits.cpus != old.cpus:
            if v1:
                self._put("cpu", "cpu.cfs_period_us", PERIOD_US)
                self._put("cpu", "cpu.cfs_quota_us", quota)
            else:
                self._put("", "cpu.max", f"{quota} {PERIOD_US}")
        self.limits = limits

    def clone_fd(self) -> int:
        """v2: a directory fd of the group for clone3(CLONE_INTO_CGROUP); v1: -1.

        The fd belongs to this object (close-on-exec, closed by remove()); do not close it.
        """
        if self.version != 2 or not self._dirs:
            return -1
        if self._fd < 0:
            self._fd = os.open(self._dirs[""], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._fd

    def attach(self, pid: int) -> None:
        """Move a process (and its later children) into every group of the jail."""
        for path in self.paths:
            _write(os.path.join(path, "cgroup.procs"), str(pid))

    def view(self) -> tuple[int, dict[str, str]]:
        """Where the group's counters are, for another process to read (the fork server's caller)."""
        return self.version, dict(self._dirs)

    @classmethod
    def reader(cls, view: tuple[int, dict[str, str]]) -> "Cgroup":
        """A handle on a group another process owns, for cpu_time() and usage() only."""
        g = cls(view[0])
        g._dirs = dict(view[1])
        return g

    def cpu_time(self) -> float:
        """User+system CPU seconds of the whole jail so far; one small read, fit for polling."""
        if self.version == 2:
            return _kv(_read(os.path.join(self._dirs[""], "cpu.stat")))["usage_usec"] / 1e6
        return int(_read(os.path.join(self._dirs["cpuacct"], "cpuacct.usage"))) / 1e9

    def usage(self) -> Usage:
        """The counters for the verdict; call before remove()."""
        if self.version == 2:
            d = self._dirs[""]
            cpu = _kv(_read(os.path.join(d, "cpu.stat")))  # microseconds
            events = _kv(_read_opt(os.path.join(d, "memory.events")))
            return Usage(cpu["user_usec"] / 1e6, cpu["system_usec"] / 1e6,
                         _int_opt(os.path.join(d, "memory.peak")), events.get("oom_kill", 0) > 0,
                         _int_opt(os.path.join(d, "pids.peak")))
        user, system = self._cpu_v1()
        peak, oom = None, False
        if "memory" in self._dirs:
            d = self._dirs["memory"]
            peak = _int_opt(os.path.join(d, "memory.max_usage_in_bytes"))
            # v1 counts an OOM kill in the victim's own group: the program's (program_group)
            for sub, _, _ in os.walk(d):
                ctl = _kv(_read_opt(os.path.join(sub, "memory.oom_control")))
                oom = oom or ctl.get("oom_kill", 0) > 0 or ctl.get("under_oom", 0) == 1
        pids = self._dirs.get("pids")
        return Usage(user, system, peak, oom,
                     _int_opt(os.path.join(pids, "pids.peak")) if pids else None)

    def _cpu_v1(self) -> tuple[float | None, float | None]:
        d = self._dirs.get("cpuacct")
        if d is None:
            return None, None
        user = _read_opt(os.path.join(d, "cpuacct.usage_user"))
        system = _read_opt(os.path.join(d, "cpuacct.usage_sys"))
        if user is not None and system is not None:  # nanoseconds
            return int(user) / 1e9, int(system) / 1e9
        st = _kv(_read(os.path.join(d, "cpuacct.stat")))  # USER_HZ ticks
        hz = os.sysconf("SC_CLK_TCK")
        return st["user"] / hz, st["system"] / hz

    def procs(self) -> set[int]:
        """Every process in the jail's groups and in any group the jail made beneath them."""
        return set().union(*(_procs_below(path) for path in self.paths))

    def _freeze(self, frozen: bool) -> bool:
        """v1: freeze or thaw through the freezer group, so nothing forks or exits while we kill."""
        d = self._dirs.get("freezer") if self.version == 1 else None
        if d is None:
            return False
        state = "FROZEN" if frozen else "THAWED"
        _write(os.path.join(d, "freezer.state"), state)
        deadline = time.monotonic() + 1.0
        while frozen and _read(os.path.join(d, "freezer.state")).strip() != state:
            if time.monotonic() > deadline:
                break  # a task stuck in the kernel; kill what we can anyway
            time.sleep(0.005)
        return True

    def kill(self) -> None:
        """SIGKILL every process in the jail: cgroup.kill on v2, else freeze, kill each, thaw."""
        if self.version == 2 and self._dirs:
            try:
                _write(os.path.join(self._dirs[""], "cgroup.kill"), "1")
                return
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.EACCES):  # no cgroup.kill before 5.14
                    raise
        frozen = self._freeze(True)
        try:
            for _ in range(100):
                pids = self.procs()
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                if not pids or frozen:  # frozen: nothing could fork meanwhile, one pass is all
                    return
                time.sleep(0.01)
        finally:
            if frozen:
                self._freeze(False)

    def remove(self) -> None:
        """Kill leftovers, rmdir our groups, then the isol8r/ dirs left empty. Idempotent.

        Raises OSError when a group stays busy for 5 s (e.g. an unreaped zombie on v1).
        """
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        deadline = time.monotonic() + 5.0
        for path in self.paths:
            while True:
                try:
                    if self.procs():
                        self.kill()
                    _rmtree(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            if self._nested:
                continue
            try:
                os.rmdir(os.path.dirname(path))  # isol8r/, unless another jail still uses it
            except OSError as e:
                if e.errno not in (errno.EBUSY, errno.ENOTEMPTY, errno.ENOENT, errno.EEXIST):
                    raise
        self._dirs = {}
        _live.discard(self)


_live: set[Cgroup] = set()


@atexit.register
def _remove_at_exit() -> None:
    """Best effort for a supervisor that forgot remove(); never in a forked child."""
    for group in list(_live):
        if group._owner == os.getpid():
            try:
                group.remove()
            except OSError:
                pass
