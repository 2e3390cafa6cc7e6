"""pipeline.prepare(): the Plan a Shape makes (no root needed, nothing is created).

The clone flags are checked against the kernel's numbers as <linux/sched.h> spells them, not
against isol8r's own constants, so a wrong constant shows here.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

from isol8r import caps, pipeline, spec
from isol8r.spec import NAMESPACES, Shape, Spec

# <linux/sched.h>
KERNEL_FLAGS = {"user": 0x10000000, "pid": 0x20000000, "mount": 0x00020000,
                "net": 0x40000000, "ipc": 0x08000000, "uts": 0x04000000}


def shape(**changes: Any) -> Shape:
    """The default Spec's Shape, with changes made to the Shape itself (no validation: a Shape
    without a user namespace needs no root to be planned)."""
    return dataclasses.replace(spec.shape(Spec(("/bin/true",))), **changes)


NS_SETS = [frozenset(NAMESPACES)] + [frozenset(NAMESPACES) - {n} for n in NAMESPACES] + \
    [frozenset({"user"}), frozenset({"user", "mount"}), frozenset()]


@pytest.mark.parametrize("ns", NS_SETS, ids=lambda ns: "+".join(sorted(ns)) or "none")
def test_clone_flags_follow_the_namespaces(ns: frozenset[str]) -> None:
    p = pipeline.prepare(shape(namespaces=ns))
    want = 0
    for name in ns - {"cgroup"}:
        want |= KERNEL_FLAGS[name]
    assert p.clone_flags == want
    # the cgroup namespace is unshared by the child, once it is in its group: not a clone flag
    assert p.unshare_cgroup == ("cgroup" in ns)
    assert p.loopback == ("net" in ns)
    assert p.hostname == ("isol8r" if "uts" in ns else None)
    assert (p.mounts is not None) == ("mount" in ns)
    assert (p.ids is not None) == ("user" in ns)


def test_hostname_is_the_shapes() -> None:
    assert pipeline.prepare(shape(hostname="box")).hostname == "box"


@pytest.mark.parametrize("euid", [0, 1000])
def test_id_plan(monkeypatch: pytest.MonkeyPatch, euid: int) -> None:
    """Root maps the jail's whole range; anyone else maps the jail's user onto themself and must
    deny setgroups. Mocked: the euid, so both branches are planned whoever runs the test (the
    plan only reads it; nothing is written)."""
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    monkeypatch.setattr(os, "getegid", lambda: euid)
    p = pipeline.prepare(shape(uid=1000, gid=1001, id_map=((0, 1_700_000_000, 65536),)))
    assert p.ids is not None and (p.uid, p.gid) == (1000, 1001)
    if euid == 0:
        assert p.ids.uid_lines == p.ids.gid_lines == b"0 1700000000 65536\n"
        assert (p.ids.deny_setgroups, p.ids.can_become_root, p.ids.uid_base) == \
            (False, True, 1_700_000_000)
        assert p.keep_groups is False
    else:
        assert (p.ids.uid_lines, p.ids.gid_lines) == (b"1000 1000 1\n", b"1001 1000 1\n")
        assert (p.ids.deny_setgroups, p.ids.can_become_root, p.ids.uid_base) == \
            (True, False, None)
        assert p.keep_groups is True  # it cannot setgroups: it keeps the (unmapped) ones


def test_no_user_namespace_keeps_no_groups() -> None:
    p = pipeline.prepare(shape(namespaces=frozenset(NAMESPACES) - {"user"}))
    assert p.ids is None and p.keep_groups is False


def test_caps_plan() -> None:
    p = pipeline.prepare(shape())
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    assert p.caps == caps.CapPlan((), 0, last)
    kept = pipeline.prepare(shape(caps=(5, 13))).caps
    assert kept == caps.CapPlan((5, 13), 1 << 5 | 1 << 13, last)


def test_init_and_verbose() -> None:
    assert pipeline.prepare(shape()).init is True
    assert pipeline.prepare(shape(init=False)).init is False
    assert pipeline.prepare(shape(), verbose=True).verbose is True
    assert pipeline.prepare(shape()).verbose is False


def test_the_default_filter_is_preloaded_only_when_the_shape_says_so() -> None:
    assert pipeline.prepare(shape(default_filter=True), bpf=b"prog").bpf == b"prog"
    assert pipeline.prepare(shape(default_filter=False), bpf=b"prog").bpf is None
    assert pipeline.prepare(shape(default_filter=True)).bpf is None


def test_the_tmp_size_and_mounts_reach_the_mount_plan() -> None:
    p = pipeline.prepare(shape(tmp_size=3 << 20, mounts=(spec.Mount("tmpfs", "/s", size=1 << 20),)))
    assert p.mounts is not None
    sizes = {op.dst: op.size for op in p.mounts.ops if hasattr(op, "size")}
    assert sizes["/tmp"] == 3 << 20 and sizes["/s"] == 1 << 20


def test_parent_pidfd_is_this_process() -> None:
    """The child polls it to notice the cloning process is gone: it must be this process's."""
    fd = pipeline.prepare(shape()).parent_pidfd
    with open(f"/proc/self/fdinfo/{fd}") as f:
        assert f"Pid:\t{os.getpid()}" in f.read()
