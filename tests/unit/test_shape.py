"""The Shape (no root needed): the part of a Spec a warm jail is made of, and the pool's key.

Every option of spec.OPTIONS is classified here by the Shape fields it feeds (none: a per-run
option). A new option fails test_every_option_is_classified until it is, so a field read by
pipeline.prepare() cannot be missing from the key that hands out warm jails.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

import pytest

from isol8r import pipeline, spec
from isol8r.spec import OPTIONS, Shape, Spec

FIELDS = {f.name for f in dataclasses.fields(Shape)}

# The Shape fields each option can feed; an empty set: a per-run option (pipeline.Request,
# the supervisor's limits), whose values never change the key.
FEEDS: dict[str, set[str]] = {
    "rootfs": {"rootfs"}, "rw-root": {"rw_root"}, "overlay": {"overlay"},
    "overlay-dir": {"overlay_dir"}, "allow-unsafe-root": set(),
    "bind": {"mounts"}, "ro-bind": {"mounts"}, "tmpfs": {"mounts"},
    "symlink": {"data"}, "dir": {"data"}, "file": {"data"}, "chmod": {"data"},
    "hostname": {"hostname"},
    "share-net": {"namespaces"}, "net": {"namespaces", "resolv_conf"},
    "netns": {"namespaces", "netns"}, "publish": set(), "allow-domain": set(),
    "allow-host-loopback": set(),
    "share-pid": {"namespaces", "cgroup", "proc"},
    "share-ipc": {"namespaces"}, "share-uts": {"namespaces"}, "share-cgroup": {"namespaces"},
    "share-mount": {"namespaces", "proc"}, "no-userns": {"namespaces"},
    "user": {"uid", "gid"}, "id-base": {"id_map"}, "unsafe-map-host-root": {"id_map"},
    "cap": {"caps"}, "no-init": {"init"}, "tmp-size": {"tmp_size"},
    "seccomp": {"default_filter"}, "seccomp-profile": {"default_filter"},
    "seccomp-allow": {"default_filter"}, "seccomp-deny": {"default_filter"},
    "seccomp-log": {"default_filter"},
    "memory": {"tmp_size", "cgroup"}, "pids": {"cgroup"}, "cpus": {"cgroup"},
    "cpu-limit": {"cgroup"}, "cgroup-parent": {"cgroup_parent"},
    "env": set(), "keep-env": set(), "cwd": set(), "pass-fd": set(), "tty": set(),
    "rlimit": set(), "nproc": set(), "nofile": set(), "time-limit": set(),
    "kill-grace": set(), "output-limit": set(),
    "proc": {"proc"}, "require": set(), "bare": {"bare", "proc"},
}


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    base = tmp_path_factory.mktemp("shape")
    for d in ("a", "b", "up1", "up2"):
        (base / d).mkdir()
    (base / "f").write_bytes(b"x")
    with open(base / "f") as fd_file:
        yield {"a": str(base / "a"), "b": str(base / "b"), "up1": str(base / "up1"),
               "up2": str(base / "up2"), "f": str(base / "f"), "fd": str(fd_file.fileno())}


def build(options: dict[str, Any], argv: tuple[str, ...] = ("/bin/true",)) -> Spec:
    """A Spec from options. Mocked: the euid, as root, during validation only, because
    --id-base, --unsafe-map-host-root and --no-userns are refused to anyone else; the Shape of
    such a Spec is computed without privilege."""
    mp = pytest.MonkeyPatch()
    mp.setattr(os, "geteuid", lambda: 0)
    try:
        return Spec.from_options(argv, options)
    finally:
        mp.undo()


# (id, base options, changed options, the Shape fields that must differ); "{a}"-style values
# are filled from the paths fixture.
CASES: list[tuple[str, dict[str, Any], dict[str, Any], set[str]]] = [
    ("rootfs", {}, {"rootfs": "{a}"}, {"rootfs"}),
    ("rootfs-other", {"rootfs": "{a}"}, {"rootfs": "{b}"}, {"rootfs"}),
    ("rw-root", {"rootfs": "{a}"}, {"rootfs": "{a}", "rw-root": True}, {"rw_root"}),
    ("overlay", {"rootfs": "{a}"}, {"rootfs": "{a}", "overlay": True}, {"overlay"}),
    ("overlay-dir", {"rootfs": "{a}", "overlay": True},
     {"rootfs": "{a}", "overlay": True, "overlay-dir": "{up1}"}, {"overlay_dir"}),
    ("overlay-dir-other", {"rootfs": "{a}", "overlay": True, "overlay-dir": "{up1}"},
     {"rootfs": "{a}", "overlay": True, "overlay-dir": "{up2}"}, {"overlay_dir"}),
    ("allow-unsafe-root", {"rootfs": "{a}"}, {"rootfs": "{a}", "allow-unsafe-root": True},
     set()),
    ("bind", {}, {"bind": "{a}:/x"}, {"mounts"}),
    ("bind-dst", {"bind": "{a}:/x"}, {"bind": "{a}:/y"}, {"mounts"}),
    ("bind-src", {"bind": "{a}:/x"}, {"bind": "{b}:/x"}, {"mounts"}),
    ("ro-bind", {"bind": "{a}:/x"}, {"ro-bind": "{a}:/x"}, {"mounts"}),
    ("tmpfs", {}, {"tmpfs": "/scratch"}, {"mounts"}),
    ("tmpfs-size", {"tmpfs": "/s:1M"}, {"tmpfs": "/s:2M"}, {"mounts"}),
    ("symlink", {}, {"symlink": "usr/lib:/lib2"}, {"data"}),
    ("symlink-target", {"symlink": "a:/l"}, {"symlink": "b:/l"}, {"data"}),
    ("dir", {}, {"dir": "/d"}, {"data"}),
    ("dir-mode", {"dir": "/d"}, {"dir": "/d:0700"}, {"data"}),
    ("file", {}, {"file": "{f}:/etc/f"}, {"data"}),
    ("chmod", {}, {"chmod": "0700:/tmp"}, {"data"}),
    ("hostname", {}, {"hostname": "other"}, {"hostname"}),
    ("share-net", {}, {"share-net": True}, {"namespaces"}),
    ("net-host", {}, {"net": "host"}, {"namespaces"}),
    ("net-host-is-share-net", {"share-net": True}, {"net": "host"}, set()),
    ("net-none", {}, {"net": "none"}, set()),
    ("net-user", {}, {"net": "user"}, {"resolv_conf"}),
    # --netns: a path to a network namespace file that needs no root to exist
    ("netns", {}, {"netns": "/proc/self/ns/net"}, {"namespaces", "netns"}),
    # --publish: the ports are the stack's, which is started when the jail is leased
    ("publish", {"net": "user"}, {"net": "user", "publish": "18080:80"}, set()),
    ("publish-other", {"net": "user", "publish": "18080:80"},
     {"net": "user", "publish": ["127.0.0.1:18081:80/udp", "18082:81"]}, set()),
    # --publish with --net none: the forwarder is started when the jail is leased
    ("publish-none", {}, {"publish": "18080:80"}, set()),
    # --allow-host-loopback: the stack's options and the jail's routes, set when it is leased
    ("allow-host-loopback", {"net": "user"}, {"net": "user", "allow-host-loopback": True}, set()),
    # --allow-domain: the proxy's socket is made in the jail's namespace when it is leased
    ("allow-domain", {}, {"allow-domain": ["pypi.org", "*.example.org:443"]}, set()),
    ("share-pid", {}, {"share-pid": True}, {"namespaces", "cgroup", "proc"}),
    ("share-ipc", {}, {"share-ipc": True}, {"namespaces"}),
    ("share-uts", {}, {"share-uts": True}, {"namespaces"}),
    ("share-cgroup", {}, {"share-cgroup": True}, {"namespaces"}),
    ("share-mount", {}, {"share-mount": True}, {"namespaces", "proc"}),
    ("no-userns", {}, {"no-userns": True}, {"namespaces"}),
    ("user", {}, {"user": "1000"}, {"uid", "gid"}),
    ("user-gid", {"user": "1000:1000"}, {"user": "1000:1001"}, {"gid"}),
    ("id-base", {}, {"id-base": 1_700_000_000}, {"id_map"}),
    ("unsafe-map-host-root", {}, {"unsafe-map-host-root": True}, {"id_map"}),
    ("cap", {}, {"cap": "CAP_NET_RAW"}, {"caps"}),
    ("cap-spelling", {"cap": ["net_raw", "CAP_KILL"]}, {"cap": ["CAP_KILL", "NET_RAW", "kill"]},
     set()),
    ("no-init", {}, {"no-init": True}, {"init"}),
    ("tmp-size", {}, {"tmp-size": "1M"}, {"tmp_size"}),
    ("seccomp", {}, {"seccomp": "none"}, {"default_filter"}),
    ("seccomp-profile", {}, {"seccomp-profile": "/p.json"}, {"default_filter"}),
    ("seccomp-profile-other", {"seccomp-profile": "/p.json"}, {"seccomp-profile": "/q.json"},
     set()),
    ("seccomp-allow", {}, {"seccomp-allow": "@default"}, {"default_filter"}),
    ("seccomp-allow-other", {"seccomp-allow": "read"}, {"seccomp-allow": "write"}, set()),
    ("seccomp-deny", {}, {"seccomp-deny": "ptrace"}, {"default_filter"}),
    ("seccomp-deny-other", {"seccomp-deny": "ptrace"}, {"seccomp-deny": "mount"}, set()),
    ("seccomp-log", {}, {"seccomp-log": True}, {"default_filter"}),
    ("seccomp-log-off", {"seccomp": "none"}, {"seccomp": "none", "seccomp-log": True}, set()),
    # /tmp follows --memory unless --tmp-size is given (16M is under any machine's default)
    ("memory", {}, {"memory": "16M"}, {"tmp_size", "cgroup"}),
    ("memory-value", {"memory": "16M", "tmp-size": "1M"}, {"memory": "32M", "tmp-size": "1M"},
     set()),
    ("memory-kind", {"pids": 10, "tmp-size": "1M"},
     {"pids": 10, "memory": "32M", "tmp-size": "1M"}, {"cgroup"}),
    ("pids", {}, {"pids": 10}, {"cgroup"}),
    ("pids-value", {"pids": 10}, {"pids": 20}, set()),
    ("cpus", {}, {"cpus": 1}, {"cgroup"}),
    ("cpus-value", {"cpus": 1}, {"cpus": 0.5}, set()),
    ("cpu-limit", {}, {"cpu-limit": 1}, {"cgroup"}),
    ("cpu-limit-value", {"cpu-limit": 1}, {"cpu-limit": 2}, set()),
    ("cgroup-parent-unlimited", {}, {"cgroup-parent": "/a"}, set()),
    ("cgroup-parent", {"pids": 10, "cgroup-parent": "/a"}, {"pids": 10, "cgroup-parent": "/b"},
     {"cgroup_parent"}),
    ("env", {"env": "A=1"}, {"env": "A=2"}, set()),
    ("keep-env", {}, {"keep-env": "HOME"}, set()),
    ("cwd", {}, {"cwd": "/tmp"}, set()),
    ("pass-fd", {}, {"pass-fd": "{fd}"}, set()),
    ("tty", {}, {"tty": True}, set()),
    ("rlimit", {"rlimit": "CORE=0"}, {"rlimit": "CORE=1M"}, set()),
    ("nproc", {"nproc": 10}, {"nproc": 20}, set()),
    ("nofile", {"nofile": 64}, {"nofile": 128}, set()),
    ("time-limit", {"time-limit": 1}, {"time-limit": 2}, set()),
    ("kill-grace", {}, {"kill-grace": 0}, set()),
    ("output-limit", {"output-limit": "1M"}, {"output-limit": "2M"}, set()),
    ("proc", {}, {"proc": "none"}, {"proc"}),
    ("require", {}, {"require": "seccomp"}, set()),
    ("bare", {}, {"bare": True}, {"bare", "proc"}),
]


def fill(options: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
    def one(v: Any) -> Any:
        if isinstance(v, list):
            return [one(x) for x in v]
        return v.format(**paths) if isinstance(v, str) else v
    return {k: one(v) for k, v in options.items()}


def differing(a: Shape, b: Shape) -> set[str]:
    return {f for f in FIELDS if getattr(a, f) != getattr(b, f)}


def changed_options(base: dict[str, Any], changed: dict[str, Any]) -> set[str]:
    return {k for k in base.keys() | changed.keys() if base.get(k) != changed.get(k)}


def test_every_option_is_classified() -> None:
    """A new option must say which Shape fields it feeds (an empty set: per-run), or the key
    could miss it."""
    assert set(FEEDS) == set(OPTIONS)
    assert set().union(*FEEDS.values()) == FIELDS


def test_every_option_and_field_has_a_case() -> None:
    tried = set().union(*(changed_options(b, c) for _, b, c, _ in CASES))
    assert tried >= set(OPTIONS)
    assert set().union(*(fields for *_, fields in CASES)) == FIELDS


@pytest.mark.parametrize("base, changed, fields", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_shape_option_changes_its_fields_and_only_those(
        paths: dict[str, str], base: dict[str, Any], changed: dict[str, Any],
        fields: set[str]) -> None:
    """Shape fields: the key differs; per-run options (fields empty): the key is equal."""
    a, b = build(fill(base, paths)), build(fill(changed, paths))
    sa, sb = spec.shape(a), spec.shape(b)
    assert differing(sa, sb) == fields
    assert fields <= set().union(*(FEEDS[o] for o in changed_options(base, changed)))
    assert (sa == sb) == (not fields)
    if not fields:
        assert hash(sa) == hash(sb)


@pytest.mark.parametrize("name", sorted(o for o, f in FEEDS.items() if not f))
def test_a_per_run_option_never_changes_the_key(paths: dict[str, str], name: str) -> None:
    """Every option outside the Shape, given on its own, keeps the key of a Spec without it."""
    cases = [c for c in CASES if changed_options(c[1], c[2]) == {name}]
    assert cases, f"no case tries {name} alone"
    for _, base, changed, fields in cases:
        assert fields == set()
        assert pipeline.shape(build(fill(base, paths))) == \
            pipeline.shape(build(fill(changed, paths)))


def test_argv_is_per_run() -> None:
    assert spec.shape(build({}, ("/bin/true",))) == spec.shape(build({}, ("/bin/sh", "-c", "x")))


def test_the_pool_key_is_the_shape() -> None:
    """pipeline.shape(), what the fork server keys its warm jails by, is spec.shape()."""
    s = build({"memory": "16M", "bind": "/tmp:/x"})
    k = pipeline.shape(s)
    assert isinstance(k, Shape) and k == spec.shape(s) and hash(k) == hash(spec.shape(s))
    assert {k: 1}[spec.shape(s)] == 1
    from isol8r.daemon import pool
    assert pool.key(s) == k  # the warm pool's own key function, not a copy of it


def test_shape_is_frozen() -> None:
    k = spec.shape(build({}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.uid = 0  # type: ignore[misc]


def test_derived_values_are_resolved() -> None:
    """tmp_size, id_map and caps are resolved, so equal jails get equal keys however spelled."""
    k = spec.shape(build({"cap": ["net_raw", "CAP_KILL", "kill"], "tmp-size": "2M"}))
    assert k.caps == (spec.capability_number("CAP_KILL"), spec.capability_number("CAP_NET_RAW"))
    assert k.tmp_size == 2 << 20
    assert k.id_map == ((0, spec.DEFAULT_ID_BASE, spec.ID_RANGE),)
    assert k.cgroup is None and k.cgroup_parent is None
    limited = spec.shape(build({"cpu-limit": 1, "cgroup-parent": "/p"}))
    assert limited.cgroup == frozenset() and limited.cgroup_parent == "/p"


# ---- prepare() reads the Shape and nothing else -----------------------------------------------


class Recording:
    """A Shape that notes which fields are read."""

    def __init__(self, shape: Shape) -> None:
        self.shape, self.read = shape, set()

    def __getattr__(self, name: str) -> Any:
        self.read.add(name)
        return getattr(self.shape, name)


def without_descriptors(plan: pipeline.Plan) -> pipeline.Plan:
    """The Plan but what prepare() reads from this process (its pidfd, opened once per process
    and kept: not to be closed here, and its handled signals)."""
    return dataclasses.replace(plan, parent_pidfd=-1, signals=())


def test_prepare_reads_only_shape_fields(paths: dict[str, str]) -> None:
    """All of them but the cgroup's, which say what group the jail is born in (the spawner's)."""
    rec = Recording(spec.shape(build(fill({"bind": "{a}:/x", "dir": "/d"}, paths))))
    without_descriptors(pipeline.prepare(rec))  # type: ignore[arg-type]
    assert rec.read == FIELDS - {"cgroup", "cgroup_parent"}


@pytest.mark.parametrize("base, changed", [c[1:3] for c in CASES if not c[3]],
                         ids=[c[0] for c in CASES if not c[3]])
def test_equal_shapes_give_equal_plans(paths: dict[str, str], base: dict[str, Any],
                                       changed: dict[str, Any]) -> None:
    """The Shape is the complete input: Specs of one Shape give the same Plan (but for the
    descriptors and signal list each prepare() reads from this process)."""
    a, b = spec.shape(build(fill(base, paths))), spec.shape(build(fill(changed, paths)))
    assert a == b
    assert without_descriptors(pipeline.prepare(a, bpf=b"f")) == \
        without_descriptors(pipeline.prepare(b, bpf=b"f"))


def test_prepare_takes_a_shape_not_a_spec() -> None:
    """A Spec has no id_map (nor a resolved tmp_size): handing one to prepare() fails at once."""
    with pytest.raises(AttributeError):
        pipeline.prepare(build({}))  # type: ignore[arg-type]
