"""The Spec: one frozen, validated description of a jail, shared by the CLI, the library and profiles.

Every option is declared once in OPTIONS under its long CLI name; the CLI builds its parser from
that table, library keyword arguments use the same names with underscores, and TOML profiles use
them as keys. `from_options` parses and validates, raising SpecError naming the option and value.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import resource
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from .errors import SpecError

NAMESPACES = ("user", "pid", "mount", "net", "ipc", "uts", "cgroup")
RLIMITS = {name[len("RLIMIT_"):]: getattr(resource, name)
           for name in dir(resource) if name.startswith("RLIMIT_") and name != "RLIMIT_OFILE"}
INFINITY = resource.RLIM_INFINITY
MAX_SIZE = 2**63 - 1  # the largest size or limit a kernel interface takes (an off_t, a long)
ID_RANGE = 65536
DEFAULT_ID_BASE = 1_600_000_000
# A root supervisor's jail helpers (the egress proxy, the --publish forwarder) run as
# HELPER_IDS + the jail's pid (below 2**22, the kernel's largest pid_max): an id of their jail's
# own, below every jail's ids (DEFAULT_ID_BASE and up)
HELPER_IDS = 1_500_000_000
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# The library also takes the Spec's own field names where they differ from the option's.
_ALIASES = {"caps": "cap", "pass-fds": "pass-fd"}


@dataclass(frozen=True)
class Mount:
    """A user mount: bind (rw), ro-bind, or tmpfs; dst is the absolute path inside the jail."""

    kind: str
    dst: str
    src: str | None = None
    size: int | None = None
    noexec: bool = False  # a bind no program is executed from (isolate's --dir ...:noexec)
    # a writable bind acts as its source's owner (idmapped, docs/design.md); False: as the jail's
    # own host ids, with their permissions there (isolate's --dir ...:rw, docs/judges.md)
    idmap: bool = True


@dataclass(frozen=True)
class Data:
    """bwrap's data flags: a symlink (src is its target), a directory, a copy of a host file
    (src), or a mode change, made in the jail's tree; dst is the absolute path inside."""

    kind: str
    dst: str
    src: str | None = None
    mode: int | None = None


@dataclass(frozen=True)
class Spec:
    """What to run and how to jail it. Build with Spec.from_options or Spec(...); both validate."""

    argv: tuple[str, ...]
    rootfs: str | None = None
    rw_root: bool = False
    overlay: bool = False
    overlay_dir: str | None = None
    allow_unsafe_root: bool = False
    mounts: tuple[Mount, ...] = ()
    data: tuple[Data, ...] = ()
    namespaces: frozenset[str] = frozenset(NAMESPACES)
    hostname: str = "isol8r"
    uid: int = 65534
    gid: int = 65534
    id_base: int = DEFAULT_ID_BASE
    unsafe_map_host_root: bool = False
    caps: tuple[str, ...] = ()
    seccomp: str = "default"
    seccomp_profile: str | None = None
    seccomp_allow: tuple[str, ...] = ()
    seccomp_deny: tuple[str, ...] = ()
    seccomp_log: bool = False
    env: tuple[tuple[str, str], ...] = ()
    keep_env: tuple[str, ...] = ()
    cwd: str = "/"
    pass_fds: tuple[int, ...] = ()
    init: bool = True
    rlimits: tuple[tuple[str, int, int], ...] = ()
    tmp_size: int | None = None  # None: mounts.tmp_size_default(memory)
    memory: int | None = None
    pids: int | None = None
    cpus: float | None = None
    time_limit: float | None = None
    cpu_limit: float | None = None
    kill_grace: float = 1.0
    output_limit: int | None = None
    cgroup_parent: str | None = None
    tty: bool = False
    net: str = "none"  # none, host, user, or netns (--netns: the namespace at `netns`)
    netns: str | None = None
    publish: tuple[str, ...] = ()  # --publish values, canonical (usernet.Publish's str)
    allow_domain: tuple[str, ...] = ()  # --allow-domain rules (egress_rules syntax)
    proc: str = "auto"  # --proc: auto, fresh, bind, none (walls.choose)
    require: tuple[str, ...] = ()  # --require: walls the run must have (walls.WALLS)
    bare: bool = False  # --bare: no namespaces, the unprivileged walls (walls.choose)
    allow_host_loopback: bool = False  # --net user: the host's 127.0.0.1 and metadata reachable

    def __post_init__(self) -> None:
        # --net host (or --netns) and a namespace set without "net" are one thing, spelled
        # either way: made to agree here, so both the field and the set can be read
        if self.net in ("host", "netns") and "net" in self.namespaces:
            object.__setattr__(self, "namespaces", frozenset(self.namespaces) - {"net"})
        elif self.net == "none" and "net" not in self.namespaces:
            object.__setattr__(self, "net", "host")
        _validate(self)

    # ---- construction ---------------------------------------------------------------------

    @classmethod
    def from_options(cls, argv: Iterable[str], options: Mapping[str, Any] | None = None) -> "Spec":
        """Parse options keyed by long option name ('ro-bind' or 'ro_bind') into a Spec."""
        # the appliers' one accumulator: Spec keywords, with namespaces, rlimits and mounts kept
        # in forms that are easy to add to, made final below
        kwargs: dict[str, Any] = {"argv": tuple(argv), "namespaces": set(NAMESPACES),
                                  "rlimits": {}, "mounts": []}
        for raw_key, value in (options or {}).items():
            key = raw_key.replace("_", "-")
            key = _ALIASES.get(key, key)
            if key == "init":  # the library's positive spelling of --no-init
                if not isinstance(value, bool):
                    raise SpecError("init", value, "expected true or false")
                kwargs["init"] = value
                continue
            opt = OPTIONS.get(key)
            if opt is None:
                raise SpecError("", raw_key, "unknown option")
            if value is None or (opt.kind == "flag" and value is False):
                continue
            if opt.kind == "list":
                values = list(value) if isinstance(value, (list, tuple)) else [value]
            else:
                values = [value]
            for v in values:
                opt.apply(key, v, kwargs)
        kwargs.pop("net given", None)
        kwargs["namespaces"] = frozenset(kwargs["namespaces"])
        kwargs["rlimits"] = tuple((k, s, h) for k, (s, h) in kwargs["rlimits"].items())
        kwargs["mounts"] = tuple(kwargs["mounts"])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["namespaces"] = sorted(self.namespaces)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def replace(self, **changes: Any) -> "Spec":
        return dataclasses.replace(self, **changes)

    @property
    def uid_map(self) -> tuple[tuple[int, int, int], ...]:
        """(inside, outside, count) lines for the user namespace, as written by a root parent."""
        if self.unsafe_map_host_root:
            return ((0, 0, ID_RANGE),)
        return ((0, self.id_base, ID_RANGE),)

    @property
    def default_filter(self) -> bool:
        """The default seccomp filter exactly: a deny-list that lets the request half run under
        it, so a jail loads it while it waits rather than after the caller asked."""
        return (self.seccomp == "default" and self.seccomp_profile is None
                and not self.seccomp_allow and not self.seccomp_deny and not self.seccomp_log)

    @property
    def wants_cgroup(self) -> bool:
        """A cgroup limit is asked for, or --share-pid: then no PID namespace's end takes the
        jail's leftovers (a setsid'd daemon) with it, and the cgroup is what ends them."""
        return not (self.memory is None and self.pids is None and self.cpus is None
                    and self.cpu_limit is None) or "pid" not in self.namespaces

    @property
    def drain_grace(self) -> float:
        """How long output is still read after the jail ended (a leftover may hold a pipe): the
        kill grace, and never under half a second, so --kill-grace 0 still drains what is there."""
        return max(self.kill_grace, 0.5)


@dataclass(frozen=True)
class Shape:
    """The part of a jail made before it knows what it will run: the only input of
    pipeline.prepare() and the fork server's key for warm jails. Built from a Spec by shape()
    alone, with derived values resolved (tmp_size, id_map, caps as numbers), so two Specs that
    would build the same jail have equal Shapes, and a field not here cannot reach a warm jail."""

    namespaces: frozenset[str]
    rootfs: str | None
    rw_root: bool
    overlay: bool
    overlay_dir: str | None
    mounts: tuple[Mount, ...]
    data: tuple[Data, ...]
    hostname: str
    uid: int
    gid: int
    id_map: tuple[tuple[int, int, int], ...]  # Spec.uid_map: --id-base, --unsafe-map-host-root
    caps: tuple[int, ...]  # capability numbers, sorted, once each
    init: bool
    tmp_size: int  # --tmp-size, else the default that follows RAM and --memory
    default_filter: bool  # the default seccomp filter, loaded while the jail waits
    # The jail is born in a cgroup of its own (Spec.wants_cgroup): which limits that group has
    # (the values are the lease's) and where it is made; None when it has no group.
    cgroup: frozenset[str] | None
    cgroup_parent: str | None  # None unless cgroup is set
    # --net user: the jail's generated /etc/resolv.conf (its resolver is the stack's forwarder,
    # which is started for the jail when it is leased: a warm jail waits without it)
    resolv_conf: str | None
    # --netns: (path, device, inode) of the namespace the jail joins; by identity, so a warm
    # jail is never handed out once the name names another namespace
    netns: tuple[str, int, int] | None
    # what this environment allows (walls.choose): the jail's /proc (fresh, bind, none, host)
    # and, where no user namespace can be made, why (the jail is then bare: Landlock instead)
    proc: str = "fresh"
    bare: str | None = None


def shape(spec: Spec) -> Shape:
    """The Shape of a Spec: the one place that says which Spec fields make a jail's shape."""
    from .mounts import tmp_size_default  # lazily: spec is imported where mounts is not needed
    from .walls import choose
    limited = spec.wants_cgroup
    choice = choose(spec.namespaces, spec.proc, spec.bare)
    return Shape(
        namespaces=spec.namespaces - {"user"} if choice.no_user else spec.namespaces,
        rootfs=spec.rootfs,
        rw_root=spec.rw_root,
        overlay=spec.overlay,
        overlay_dir=spec.overlay_dir,
        mounts=spec.mounts,
        data=spec.data,
        hostname=spec.hostname,
        uid=spec.uid,
        gid=spec.gid,
        id_map=spec.uid_map,
        caps=tuple(sorted({capability_number(c) for c in spec.caps})),
        init=spec.init,
        tmp_size=spec.tmp_size if spec.tmp_size is not None else tmp_size_default(spec.memory),
        default_filter=spec.default_filter,
        cgroup=frozenset(k for k in ("memory", "pids", "cpus") if getattr(spec, k) is not None)
        if limited else None,
        cgroup_parent=spec.cgroup_parent if limited else None,
        resolv_conf=_resolv_conf() if spec.net == "user" else None,
        netns=(spec.netns, *_netns_identity("--netns", spec.netns))
        if spec.netns is not None else None,
        proc=choice.proc,
        bare=choice.bare,
    )


def _resolv_conf() -> str:
    """--net user's /etc/resolv.conf: the forwarder of the stack usernet.start() picks."""
    from . import usernet
    backend = (usernet.available() or ["slirp4netns"])[0]
    return usernet.resolv_conf(usernet.DNS_PASTA if backend == "pasta" else usernet.DNS_SLIRP)


_NS_GET_NSTYPE = 0xB703  # ioctl: the CLONE_NEW* type of a namespace file
_CLONE_NEWNET = 0x40000000


def _netns_identity(key: str, path: str, shown: str | None = None) -> tuple[int, int]:
    """(device, inode) of a network namespace file; SpecError naming it when it is not one."""
    import fcntl
    shown = shown or path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SpecError(key, shown, f"no network namespace there ({path}: {e.strerror})") \
            from None
    try:
        try:
            kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
        except OSError:
            kind = -1
        if kind != _CLONE_NEWNET:
            raise SpecError(key, shown, "not a network namespace (a name in /run/netns, or a "
                            "path such as /proc/PID/ns/net)")
        st = os.fstat(fd)
        return st.st_dev, st.st_ino
    finally:
        os.close(fd)


# ---- option table -----------------------------------------------------------------------------


def parse_size(key: str, value: Any) -> int:
    """'64M', '1.5G', 1024 -> bytes; 'inf'/'unlimited' -> RLIM_INFINITY."""
    if isinstance(value, bool):
        raise SpecError(key, value, "expected a size such as 64M")
    if isinstance(value, int):
        if value < 0:
            raise SpecError(key, value, "must not be negative")
        if value > MAX_SIZE and value != INFINITY:
            raise SpecError(key, value, "too large (at most 8E; 'inf' for no limit)")
        return value
    text = str(value).strip()
    if text.lower() in ("inf", "infinity", "unlimited"):
        return INFINITY
    m = _SIZE.match(text)
    if not m:
        raise SpecError(key, value, "expected a size such as 4096, 64M or 1G")
    n = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if n > MAX_SIZE:  # also inf, from a number of 400 digits; the kernel takes 63 bits
        raise SpecError(key, value, "too large (at most 8E; 'inf' for no limit)")
    return int(n)


def _parse_int(key: str, value: Any, lo: int = 0, hi: int = 2**63 - 1) -> int:
    try:
        n = int(value, 0) if isinstance(value, str) else int(value)
        if isinstance(value, bool) or isinstance(value, float) and value != n:
            raise ValueError
    except (TypeError, ValueError):
        raise SpecError(key, value, "expected a whole number") from None
    if not lo <= n <= hi:
        raise SpecError(key, value, f"out of range ({lo}..{hi})")
    return n


def _parse_seconds(key: str, value: Any) -> float:
    try:
        x = float(value)
        if isinstance(value, bool):
            raise ValueError
    except (TypeError, ValueError):
        raise SpecError(key, value, "expected a number of seconds") from None
    if not 0 < x < 1e9 or x != x:
        raise SpecError(key, value, "must be a positive number of seconds")
    return x


def parse_grace(key: str, value: Any) -> float:
    """Seconds, where 0 is allowed: no SIGTERM, SIGKILL at once."""
    try:
        if not isinstance(value, bool) and float(value) == 0:
            return 0.0
    except (TypeError, ValueError):
        pass
    return _parse_seconds(key, value)


def _file_path(key: str, value: Any) -> str:
    """A file named relative to the caller's directory, made absolute here: the file is read
    later by another process (the fork server compiles the filter), whose directory is not the
    caller's."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise SpecError(key, value, "expected a file's path")
    return os.path.abspath(value)


def _abs_path(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(key, value, "expected a path")
    if "\0" in value:
        raise SpecError(key, value, "a path cannot hold a NUL byte")
    if not value.startswith("/"):
        raise SpecError(key, value, "must be an absolute path")
    if ".." in value.split("/"):
        raise SpecError(key, value, "must not contain '..'")
    norm = os.path.normpath(value)
    return norm[1:] if norm.startswith("//") else norm


def host_path(key: str, value: Any) -> str:
    """A path on the host (a bind's source, a root): a relative one is resolved against the
    caller's directory, as bwrap and docker do, so `--ro-bind ./x:/x` works as written."""
    if isinstance(value, str) and value and not value.startswith("/") and "\0" not in value:
        try:
            value = os.path.join(os.getcwd(), value)
        except OSError as e:
            raise SpecError(key, value, f"relative, and the current directory is gone ({e.strerror})") from None
    return _abs_path(key, value)


def _split_pair(key: str, value: Any) -> tuple[str, str | None]:
    if not isinstance(value, str) or not value:
        raise SpecError(key, value, "expected SRC[:DST]")
    src, sep, dst = value.partition(":")
    return src, (dst if sep else None)


# How an option's value lands in a Spec: apply(option name, value, keywords) adds it to the
# keywords the Spec is built from (Spec.from_options: namespaces a set, rlimits a dict by name,
# mounts a list; the rest as the Spec's own fields), raising SpecError for a bad value.
Applier = Callable[[str, Any, dict[str, Any]], None]


@dataclass(frozen=True)
class Option:
    """One option: its CLI shape (flag, value or list), the help text and how it lands in a Spec."""

    kind: str
    help: str
    apply: Applier
    metavar: str | None = None
    short: str | None = None  # a one-letter CLI alias, e.g. "t" for -t


def _set(attr: str, parse: Callable[[str, Any], Any] = lambda k, v: v) -> Applier:
    def apply(key: str, v: Any, kw: dict[str, Any]) -> None:
        kw[attr] = parse(key, v)
    return apply


def _flag(attr: str, value: bool = True) -> Applier:
    def apply(key: str, v: Any, kw: dict[str, Any]) -> None:
        if v is not True:
            raise SpecError(key, v, "is a flag: true or absent")
        kw[attr] = value
    return apply


def _append(attr: str, parse: Callable[[str, Any], Any]) -> Applier:
    def apply(key: str, v: Any, kw: dict[str, Any]) -> None:
        kw[attr] = tuple(kw.get(attr, ())) + (parse(key, v),)
    return apply


def _share(name: str) -> Applier:
    def apply(key: str, v: Any, kw: dict[str, Any]) -> None:
        if v is not True:
            raise SpecError(key, v, "is a flag: true or absent")
        kw["namespaces"].discard(name)
    return apply


NET_MODES = ("none", "host", "user")


_NET_ORDER = ("net", "share-net", "netns")


def _set_net(key: str, mode: str, kw: dict[str, Any], shown: Any) -> None:
    """--net, --share-net and --netns say one thing: two that differ are refused, named the
    same way whatever order they came in."""
    first = kw.setdefault("net given", (key, shown))
    if kw.get("net", mode) != mode:
        a, b = sorted((first, (key, shown)), key=lambda g: _NET_ORDER.index(g[0]))
        spelled = "--share-net" if a[0] == "share-net" else f"--{a[0]} {a[1]}"
        raise SpecError(b[0], b[1], f"conflicts with {spelled}")
    kw["net"] = mode


def _net(key: str, v: Any, kw: dict[str, Any]) -> None:
    if v not in NET_MODES:
        raise SpecError(key, v, f"expected one of {', '.join(NET_MODES)}")
    _set_net(key, v, kw, v)


def _share_net(key: str, v: Any, kw: dict[str, Any]) -> None:
    if v is not True:
        raise SpecError(key, v, "is a flag: true or absent")
    _set_net(key, "host", kw, True)


def _netns(key: str, v: Any, kw: dict[str, Any]) -> None:
    """A name in /run/netns (as `ip netns` makes them) or a path to a namespace file."""
    if not isinstance(v, str) or not v or "\0" in v:
        raise SpecError(key, v, "expected a name in /run/netns or a path")
    if "/" in v:
        path = host_path(key, v)
    elif v in (".", ".."):
        raise SpecError(key, v, "not a namespace name")
    else:
        path = "/run/netns/" + v
    _netns_identity(key, path, v)
    _set_net(key, "netns", kw, v)
    kw["netns"] = path


def _publish(key: str, v: Any, kw: dict[str, Any]) -> None:
    from . import usernet
    if not isinstance(v, str):
        raise SpecError(key, v, "expected [HOST_ADDR:]HOST_PORT:JAIL_PORT[/udp]")
    try:
        p = usernet.parse_publish(v)
    except usernet.UsernetError as e:
        raise SpecError(key, v, str(e).split(": ", 1)[-1]) from None
    kw["publish"] = tuple(kw.get("publish", ())) + (str(p),)


def _allow_domain(key: str, v: Any, kw: dict[str, Any]) -> None:
    from . import egress_rules
    try:
        egress_rules.parse_rule(v)
    except egress_rules.RuleError as e:
        raise SpecError(key, v, str(e).split(": ", 1)[-1]) from None
    kw["allow_domain"] = tuple(kw.get("allow_domain", ())) + (v,)


def _bind(kind: str) -> Applier:
    def apply(key: str, v: Any, kw: dict[str, Any]) -> None:
        src, dst = _split_pair(key, v)
        src_abs = host_path(key, src)
        kw["mounts"].append(Mount(kind, _abs_path(key, dst if dst is not None else src_abs), src_abs))
    return apply


def _tmpfs(key: str, v: Any, kw: dict[str, Any]) -> None:
    dst, size = _split_pair(key, v)
    kw["mounts"].append(Mount("tmpfs", _abs_path(key, dst),
                        size=parse_size(key, size) if size else 64 << 20))


def _parse_rlimit_value(key: str, text: str, whole: Any) -> int:
    try:
        return parse_size(key, text)
    except SpecError:
        raise SpecError(key, whole, "expected NAME=SOFT[:HARD] with numbers, sizes or 'inf'") from None


def _rlimit(key: str, v: Any, kw: dict[str, Any]) -> None:
    if not isinstance(v, str) or "=" not in v:
        raise SpecError(key, v, "expected NAME=SOFT[:HARD]")
    name, _, vals = v.partition("=")
    name = name.strip().upper().removeprefix("RLIMIT_")
    if name not in RLIMITS:
        raise SpecError(key, v, f"unknown resource {name!r} (one of {', '.join(sorted(RLIMITS))})")
    soft_s, _, hard_s = vals.partition(":")
    soft = _parse_rlimit_value(key, soft_s, v)
    hard = _parse_rlimit_value(key, hard_s, v) if hard_s else soft
    if soft > hard:
        raise SpecError(key, v, "the soft limit exceeds the hard limit")
    kw["rlimits"][name] = (soft, hard)


def _rlimit_short(name: str, parse: Callable[[str, Any], int]) -> Applier:
    def apply(key: str, v: Any, kw: dict[str, Any]) -> None:
        n = parse(key, v)
        kw["rlimits"][name] = (n, n)
    return apply


def _user(key: str, v: Any) -> tuple[int, int]:
    text = str(v)
    uid_s, _, gid_s = text.partition(":")
    uid = _parse_int(key, uid_s, 0, ID_RANGE - 1)
    gid = _parse_int(key, gid_s, 0, ID_RANGE - 1) if gid_s else uid
    return uid, gid


def _user_apply(key: str, v: Any, kw: dict[str, Any]) -> None:
    kw["uid"], kw["gid"] = _user(key, v)


def _env(key: str, v: Any) -> tuple[str, str]:
    if not isinstance(v, str) or "=" not in v:
        raise SpecError(key, v, "expected NAME=VALUE")
    k, _, val = v.partition("=")
    if not _ENV_NAME.match(k) or "\0" in val:
        raise SpecError(key, v, "not a valid environment entry")
    return k, val


def _env_name(key: str, v: Any) -> str:
    if not isinstance(v, str) or not _ENV_NAME.match(v):
        raise SpecError(key, v, "not a valid environment variable name")
    return v


def _syscalls(key: str, v: Any) -> str:
    """System call names and @groups are ASCII: other text (non-UTF-8 bytes of a command line
    included) is refused here, before libseccomp is asked to encode it."""
    text = str(v)
    if not text.isascii() or not text.isprintable():
        raise SpecError(key, v, "unknown syscall (names are ASCII letters, digits and '_')")
    return text


def _memory(key: str, v: Any, kw: dict[str, Any]) -> None:
    kw["memory"] = parse_size(key, v)
    if kw["memory"] < 1 << 20:
        raise SpecError(key, v, "below 1M no program can start")


def _mode(key: str, text: str, whole: Any) -> int:
    """An octal mode; set-id bits are refused (the set-id wall, docs/security.md)."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise SpecError(key, whole, "expected an octal mode such as 0755") from None
    if not 0 <= mode <= 0o7777:
        raise SpecError(key, whole, "a mode is 0 to 7777 (octal)")
    if mode & 0o6000:
        raise SpecError(key, whole, "set-id bits are not allowed")
    return mode


def _data(kind: str) -> Applier:
    """--symlink TARGET:DST, --dir DST[:MODE], --file SRC:DST, --chmod MODE:DST."""
    def apply(key: str, v: Any, kw: dict[str, Any]) -> None:
        if not isinstance(v, str) or not v or "\0" in v:
            raise SpecError(key, v, f"expected {OPTIONS[key].metavar}")
        if kind == "dir":
            dst, sep, mode = v.partition(":")
            op = Data("dir", _abs_path(key, dst), mode=_mode(key, mode, v) if sep else 0o755)
        else:
            first, sep, dst = v.rpartition(":")
            if not sep or not first:
                raise SpecError(key, v, f"expected {OPTIONS[key].metavar}")
            if kind == "chmod":
                op = Data("chmod", _abs_path(key, dst), mode=_mode(key, first, v))
            elif kind == "file":
                src = os.path.abspath(first)  # ./f: the caller's working directory's
                if not os.path.isfile(src):
                    raise SpecError(key, first, "no such regular file")
                op = Data("file", _abs_path(key, dst), _abs_path(key, src))
            else:
                op = Data("symlink", _abs_path(key, dst), first)
        if op.dst == "/":
            raise SpecError(key, v, "cannot replace the jail's root")
        kw["data"] = tuple(kw.get("data", ())) + (op,)
    return apply


def _proc(key: str, v: Any, kw: dict[str, Any]) -> None:
    from .walls import PROC_MODES
    if v not in PROC_MODES:
        raise SpecError(key, v, f"expected one of {', '.join(PROC_MODES)}")
    kw["proc"] = v


def _require(key: str, v: Any, kw: dict[str, Any]) -> None:
    from .walls import parse_require
    kw["require"] = tuple(dict.fromkeys((*kw.get("require", ()), *parse_require(key, v))))


OPTIONS: dict[str, Option] = {
    "rootfs": Option("value", "root filesystem to pivot into (default: the host's /usr, /bin, "
                     "/lib* read-only on a tmpfs)", _set("rootfs", host_path), "DIR"),
    "rw-root": Option("flag", "mount the root read-write", _flag("rw_root")),
    "overlay": Option("flag", "writable root whose writes land in a tmpfs and vanish",
                      _flag("overlay")),
    "overlay-dir": Option("value", "with --overlay: keep the writes in this directory",
                          _set("overlay_dir", host_path), "DIR"),
    "allow-unsafe-root": Option("flag", "run a --rootfs even if it holds setuid files or device "
                                "nodes", _flag("allow_unsafe_root")),
    "bind": Option("list", "bind-mount SRC read-write at DST (nosuid,nodev)", _bind("bind"),
                   "SRC[:DST]"),
    "ro-bind": Option("list", "bind-mount SRC read-only (recursively) at DST", _bind("ro-bind"),
                      "SRC[:DST]"),
    "tmpfs": Option("list", "mount a fresh tmpfs at DST (default size 64M)", _tmpfs, "DST[:SIZE]"),
    # bwrap's data flags, made in the jail's tree (docs/design.md)
    "symlink": Option("list", "make a symlink at DST pointing to TARGET", _data("symlink"),
                      "TARGET:DST"),
    "dir": Option("list", "make a directory at DST (default mode 0755)", _data("dir"),
                  "DST[:MODE]"),
    "file": Option("list", "copy the host file SRC to DST (a copy: writes never reach SRC)",
                   _data("file"), "SRC:DST"),
    "chmod": Option("list", "set DST's mode once everything is made (no set-id bits)",
                    _data("chmod"), "MODE:DST"),
    "hostname": Option("value", "the jail's hostname (default isol8r)", _set("hostname"), "NAME"),
    "net": Option("value", "the network: none (loopback only, the default), host (the host's "
                  "network, as --share-net), user (outbound TCP and UDP through a user-mode "
                  "stack, DNS, --publish; docs/network.md)", _net, "MODE"),
    "share-net": Option("flag", "keep the host's network namespace (the same as --net host)",
                        _share_net),
    "netns": Option("value", "join this network namespace (a name in /run/netns or a path) "
                    "instead of a new one", _netns, "NAME|PATH"),
    "publish": Option("list", "forward a host port to a port in the jail (--net user or "
                      "--net none)",
                      _publish, "[HOST_ADDR:]HOST_PORT:JAIL_PORT[/udp]"),
    "allow-domain": Option("list", "the jail's only way out: an egress proxy (HTTP, SOCKS5) that "
                           "admits these names (*.example.org, pypi.org:443, an address); "
                           "HTTP_PROXY, HTTPS_PROXY and ALL_PROXY are set", _allow_domain,
                           "PATTERN[:PORT]"),
    "allow-host-loopback": Option("flag", "UNSAFE with --net user: let the jail reach the "
                                  "host's own loopback services (as the gateway address) and "
                                  "the cloud metadata address 169.254.169.254",
                                  _flag("allow_host_loopback")),
    "share-pid": Option("flag", "keep the host's PID namespace", _share("pid")),
    "share-ipc": Option("flag", "keep the host's IPC namespace", _share("ipc")),
    "share-uts": Option("flag", "keep the host's UTS namespace (hostname)", _share("uts")),
    "share-cgroup": Option("flag", "keep the host's cgroup namespace", _share("cgroup")),
    "share-mount": Option("flag", "keep the host's mount namespace: no root, no mounts",
                          _share("mount")),
    "no-userns": Option("flag", "no user namespace: needs root, the program runs as host --user",
                        _share("user")),
    "user": Option("value", "uid[:gid] the program runs as inside (default 65534:65534)",
                   _user_apply, "UID[:GID]"),
    "id-base": Option("value", f"host uid/gid that jail id 0 maps to; jail ids 0..{ID_RANGE - 1} map "
                      f"to the {ID_RANGE} host ids from here (default {DEFAULT_ID_BASE})",
                      _set("id_base", lambda k, v: _parse_int(k, v, 1, 2**32 - 1 - ID_RANGE)), "ID"),
    "unsafe-map-host-root": Option("flag", "DANGEROUS: map jail ids onto host ids from 0, so jail "
                                   "root is host root", _flag("unsafe_map_host_root")),
    "cap": Option("list", "keep this capability (through the ambient set)", _append("caps", lambda k, v: str(v)),
                  "CAP_NAME"),
    "seccomp": Option("value", "seccomp filter: default or none", _set("seccomp"), "MODE"),
    "seccomp-profile": Option("value", "load a Docker/OCI seccomp JSON profile",
                              _set("seccomp_profile", _file_path), "FILE"),
    "seccomp-allow": Option("list", "allow-list: only these syscalls or @groups (comma-separated)",
                            _append("seccomp_allow", _syscalls), "SYSCALLS"),
    "seccomp-deny": Option("list", "deny these syscalls or @groups too (comma-separated)",
                           _append("seccomp_deny", _syscalls), "SYSCALLS"),
    "seccomp-log": Option("flag", "log would-be denials instead of denying (audit mode)",
                          _flag("seccomp_log")),
    "env": Option("list", "set an environment variable inside", _append("env", _env), "NAME=VALUE"),
    "keep-env": Option("list", "pass this variable from the caller's environment",
                       _append("keep_env", _env_name), "NAME"),
    "cwd": Option("value", "working directory inside (default /)", _set("cwd", _abs_path), "DIR"),
    "pass-fd": Option("list", "keep this file descriptor open in the jail",
                      _append("pass_fds", lambda k, v: _parse_int(k, v, 3, 1 << 20)), "FD"),
    "tty": Option("flag", "give the program a terminal of the jail's own /dev/pts (job control, "
                  "window size), relayed to the caller's", _flag("tty"), short="t"),
    "no-init": Option("flag", "run the program as PID 1 directly, without isol8r's init",
                      _flag("init", False)),
    "rlimit": Option("list", "set a resource limit (AS, CORE, CPU, DATA, FSIZE, MEMLOCK, NOFILE, "
                     "NPROC, STACK, ...)", _rlimit, "NAME=SOFT[:HARD]"),
    "memory": Option("value", "memory limit in bytes (cgroup; RLIMIT_AS where no cgroup)",
                     _memory, "SIZE"),
    "nproc": Option("value", "RLIMIT_NPROC", _rlimit_short("NPROC", lambda k, v: _parse_int(k, v, 1)),
                    "N"),
    "nofile": Option("value", "RLIMIT_NOFILE", _rlimit_short("NOFILE", lambda k, v: _parse_int(k, v, 4)),
                     "N"),
    "tmp-size": Option("value", "size cap of the jail's /tmp (default: a quarter of RAM, at most --memory)",
                       _set("tmp_size", parse_size), "SIZE"),
    "pids": Option("value", "most processes at once (cgroup pids)",
                   _set("pids", lambda k, v: _parse_int(k, v, 1, 1 << 22)), "N"),
    "cpus": Option("value", "CPU bandwidth in cores (cgroup cpu quota)",
                   _set("cpus", _parse_seconds), "FLOAT"),
    "time-limit": Option("value", "wall-clock limit in seconds", _set("time_limit", _parse_seconds),
                         "SECONDS"),
    "cpu-limit": Option("value", "CPU-time limit of the whole jail in seconds",
                        _set("cpu_limit", _parse_seconds), "SECONDS"),
    "kill-grace": Option("value", "seconds between SIGTERM and SIGKILL at a limit (default 1; "
                         "0: SIGKILL at once)", _set("kill_grace", parse_grace), "SECONDS"),
    "output-limit": Option("value", "cap on captured output and written files, in bytes",
                           _set("output_limit", parse_size), "SIZE"),
    "proc": Option("value", "the jail's /proc: auto (a fresh one; where a container's masked "
                   "/proc forbids that, the outer one read-only, reported), fresh (or fail), "
                   "bind, none", _proc, "MODE"),
    "require": Option("list", "fail (125) rather than run without these walls (comma-separated: "
                      "userns, pidns, mountns, netns, proc, seccomp, landlock, cgroup, ...; "
                      "docs/environments.md)", _require, "WALL,..."),
    "bare": Option("flag", "no namespaces: the walls any process can build for itself "
                   "(Landlock, seccomp, no_new_privs, rlimits, a new session), what isol8r "
                   "falls back to where no user namespace can be made", _flag("bare")),
    "cgroup-parent": Option("value", "create the jail's cgroup beneath this cgroup",
                            _set("cgroup_parent", _abs_path), "PATH"),
}

CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)


def capability_number(name: str) -> int:
    """CAP_NET_RAW / net_raw / NET_RAW -> 13; SpecError for an unknown name."""
    norm = name.strip().upper()
    if not norm.startswith("CAP_"):
        norm = "CAP_" + norm
    try:
        return CAPABILITIES.index(norm)
    except ValueError:
        raise SpecError("--cap", name, "unknown capability") from None


# ---- validation -------------------------------------------------------------------------------


def _validate(s: Spec) -> None:
    if not s.argv or not all(isinstance(a, str) for a in s.argv):
        raise SpecError("command", list(s.argv), "give the program to run and its arguments")
    if any("\0" in a for a in s.argv):
        raise SpecError("command", list(s.argv), "an argument cannot hold a NUL byte")
    if not s.namespaces <= set(NAMESPACES):
        raise SpecError("namespaces", sorted(s.namespaces), f"known ones: {', '.join(NAMESPACES)}")
    if not isinstance(s.hostname, str) or not _HOSTNAME.match(s.hostname):
        raise SpecError("--hostname", s.hostname, "letters, digits, '.' and '-', at most 64")
    for name, value in (("--user", s.uid), ("--user", s.gid)):
        if not 0 <= value < ID_RANGE:
            raise SpecError(name, value, f"out of range (0..{ID_RANGE - 1})")
    for cap in s.caps:
        capability_number(cap)
    if s.rw_root or any(m.kind == "bind" for m in s.mounts):
        # the set-id wall (docs/security.md): CAP_SETFCAP writes file capabilities
        for cap in s.caps:
            if CAPABILITIES[capability_number(cap)] == "CAP_SETFCAP":
                raise SpecError("--cap", "CAP_SETFCAP", "cannot be kept with a writable --bind "
                                "or --rw-root: the jail could plant a file capability on the "
                                "host (docs/security.md)")
    if s.proc not in ("auto", "fresh", "bind", "none"):
        raise SpecError("--proc", s.proc, "expected one of auto, fresh, bind, none")
    if s.seccomp not in ("default", "none"):
        raise SpecError("--seccomp", s.seccomp, "expected default or none")
    has_mount = "mount" in s.namespaces
    if s.rootfs is not None:
        if not os.path.exists(s.rootfs):
            raise SpecError("--rootfs", s.rootfs, "no such directory")
        if not os.path.isdir(s.rootfs):
            raise SpecError("--rootfs", s.rootfs, "not a directory")
        if os.path.realpath(s.rootfs) == "/":
            raise SpecError("--rootfs", s.rootfs, "the host's own root cannot be a jail root")
    if s.overlay_dir is not None and not s.overlay:
        raise SpecError("--overlay-dir", s.overlay_dir, "needs --overlay")
    if s.overlay_dir is not None and not os.path.isdir(s.overlay_dir):
        raise SpecError("--overlay-dir", s.overlay_dir, "no such directory")
    if s.overlay and s.rootfs is None:
        raise SpecError("--overlay", True, "needs --rootfs")
    if not has_mount and (s.rootfs or s.mounts or s.overlay or s.data):
        raise SpecError("--share-mount", True, "cannot be combined with --rootfs or mounts")
    for m in s.mounts:
        opt = "--" + m.kind
        if m.dst == "/":
            raise SpecError(opt, m.dst, "cannot mount over the jail's root")
        if m.src is not None and not os.path.exists(m.src):
            raise SpecError(opt, m.src, "no such file or directory")
    _validate_net(s, has_mount)
    if "user" not in s.namespaces and os.geteuid() != 0:
        raise SpecError("--no-userns", True, "needs isol8r to run as root")
    if s.unsafe_map_host_root and "user" not in s.namespaces:
        raise SpecError("--unsafe-map-host-root", True, "needs a user namespace")
    _check_privilege(s)
    for fd in s.pass_fds:
        try:
            os.fstat(fd)
        except OSError:
            raise SpecError("--pass-fd", fd, "not an open file descriptor") from None
    if s.tmp_size is not None and s.tmp_size <= 0:
        raise SpecError("--tmp-size", s.tmp_size, "must be positive")
    for name, soft, hard in s.rlimits:
        if name not in RLIMITS or soft > hard:
            raise SpecError("--rlimit", f"{name}={soft}:{hard}", "bad resource limit")


def _validate_net(s: Spec, has_mount: bool) -> None:
    if s.net not in (*NET_MODES, "netns"):
        raise SpecError("--net", s.net, f"expected one of {', '.join(NET_MODES)}")
    if (s.net in ("host", "netns")) == ("net" in s.namespaces):
        raise SpecError("--net", s.net, "does not match the namespaces (a new network namespace "
                        "for none and user, none for host and --netns)")
    if (s.net == "netns") != (s.netns is not None):
        raise SpecError("--netns", s.netns or "", "give --netns NAME|PATH for a joined namespace")
    if s.publish and s.net not in ("user", "none"):
        raise SpecError("--publish", s.publish[0], "needs --net user or --net none")
    if s.allow_host_loopback and s.net != "user":
        raise SpecError("--allow-host-loopback", True, "needs --net user")
    if s.allow_domain and s.net != "none":
        raise SpecError("--allow-domain", s.allow_domain[0], "needs --net none (the default): "
                        "the proxy is the jail's only way out")
    if s.net == "user" and not has_mount:
        raise SpecError("--net", "user", "needs the mount namespace, for the jail's "
                        "/etc/resolv.conf (not --share-mount)")


def _check_privilege(s: Spec) -> None:
    """Options only root can make take effect are refused for anyone else, never dropped: an
    unprivileged user namespace maps only the caller's own id."""
    if os.geteuid() == 0 or "user" not in s.namespaces:
        return
    why = "needs isol8r to run as root (unprivileged, only your own id is mapped)"
    if s.unsafe_map_host_root:
        raise SpecError("--unsafe-map-host-root", True, why)
    if s.id_base != DEFAULT_ID_BASE:
        raise SpecError("--id-base", s.id_base, why)
