"""cgroups.py on fake trees in tmp_path: the v2 limit and counter files, co-mounted v1, and the
parsing of mountinfo and /proc/self/cgroup. No kernel cgroup is made, so these need no root.

Moved from tests/test_cgroups.py (which keeps the tests on this host's real hierarchy).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from isol8r import cgroups
from isol8r.cgroups import Cgroup, CgroupUnavailable, Limits

MiB = 1 << 20
FULL = Limits(memory=64 * MiB, pids=8, cpus=0.5)


def fake_v2(tmp_path: Path, current: str = "/user.slice/app.scope") -> tuple[Path, cgroups.Layout]:
    """A unified hierarchy as the kernel shows it: the root and a delegated /delegated offer
    cpu memory pids; our own group (with processes in it) delegates nothing."""
    root = tmp_path / "cgroup"
    mine = [(root / current.strip("/"), "")] if current != "/" else []
    for d, sub in [(root, "cpu memory pids"), (root / "delegated", "cpu memory pids"), *mine]:
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.controllers").write_text("cpu io memory pids\n")
        (d / "cgroup.subtree_control").write_text(sub + "\n")
        (d / "cgroup.procs").write_text("")
    mountinfo = (f"25 1 0:22 / / rw - ext4 /dev/vda1 rw\n"
                 f"31 25 0:28 / {root} rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 "
                 f"rw,nsdelegate,memory_recursiveprot\n")
    return root, cgroups.detect(mountinfo, f"0::{current}\n")


def fake_rmdir_ready(*dirs: str) -> None:
    """kernfs drops a group's files with its rmdir; a plain directory needs them deleted first."""
    for d in dirs:
        for p in Path(d).iterdir():
            if p.is_file():
                p.unlink()


def test_fake_v2_limits_stats_and_cleanup(tmp_path):
    root, layout = fake_v2(tmp_path)
    cg = Cgroup.create(Limits(memory=256 * MiB, pids=64, cpus=1.5), parent="/delegated",
                       layout=layout)
    d = Path(cg.path())
    top = d.parent
    assert cg.version == 2 and top == root / "delegated" / "isol8r"
    assert d.name.startswith(f"jail-{os.getpid()}-")
    assert (top / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (d / "memory.max").read_text() == str(256 * MiB)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "pids.max").read_text() == "64"
    assert (d / "cpu.max").read_text() == "150000 100000"
    assert os.path.samestat(os.fstat(cg.clone_fd()), os.stat(d))
    assert cg.clone_fd() == cg.clone_fd()

    cg.attach(4242)
    assert (d / "cgroup.procs").read_text() == "4242"
    (d / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n"
                                "nr_periods 10\nnr_throttled 3\nthrottled_usec 120000\n")
    (d / "memory.peak").write_text("268419072\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 41\noom 1\noom_kill 1\n"
                                     "oom_group_kill 0\n")
    (d / "pids.peak").write_text("7\n")
    assert cg.cpu_time() == 2.5
    assert cg.usage() == cgroups.Usage(2.0, 0.5, 268419072, True, 7)
    cg.kill()
    assert (d / "cgroup.kill").read_text() == "1"

    (d / "cgroup.procs").write_text("")
    fake_rmdir_ready(str(d), str(top))
    cg.remove()
    assert not top.exists() and (root / "delegated").is_dir()
    cg.remove()


def test_fake_v2_undelegated_controllers_fall_back_with_a_reason(tmp_path):
    root, layout = fake_v2(tmp_path)
    reason = cgroups.available(limits=Limits(memory=64 * MiB, pids=5), layout=layout)
    assert reason == ("cgroup v2 controller memory pids not delegated to /user.slice/app.scope "
                      "(absent from its cgroup.subtree_control)")
    with pytest.raises(CgroupUnavailable, match="not delegated"):
        Cgroup.create(Limits(memory=64 * MiB), layout=layout)
    assert not (root / "user.slice" / "app.scope" / "isol8r").exists()

    cg = Cgroup.create(Limits(), layout=layout)  # accounting only (cpu.stat) needs no controller
    d = Path(cg.path())
    assert d.parent == root / "user.slice" / "app.scope" / "isol8r"
    assert not (d.parent / "cgroup.subtree_control").exists()  # nothing to enable
    assert sorted(p.name for p in d.iterdir()) == []
    (d / "cpu.stat").write_text("usage_usec 10\nuser_usec 7\nsystem_usec 3\n")
    assert cg.usage() == cgroups.Usage(7e-6, 3e-6, None, False, None)
    fake_rmdir_ready(str(d))
    cg.remove()
    assert not d.parent.exists()


def test_fake_v2_root_group_and_readonly(tmp_path):
    root, layout = fake_v2(tmp_path, current="/")
    assert cgroups.available(limits=FULL, layout=layout) is None
    ro = cgroups.detect(f"31 25 0:28 / {root} ro,relatime - cgroup2 cgroup2 rw\n", "0::/\n")
    assert "read-only" in (cgroups.available(layout=ro) or "")
    with pytest.raises(CgroupUnavailable, match="read-only"):
        Cgroup.create(Limits(), layout=ro)
    none = cgroups.detect("25 1 0:22 / / rw - ext4 /dev/vda1 rw\n", "0::/\n")
    assert cgroups.available(layout=none) == "no cgroup filesystem is mounted"


def test_fake_v1_comounted_cpu_cpuacct(tmp_path):
    """v1 with cpu,cpuacct co-mounted (the common distro layout): one group serves both."""
    mi, cg_lines = [], []
    for i, (name, ctls) in enumerate((("memory", "memory"), ("cpu,cpuacct", "cpu,cpuacct"),
                                      ("pids", "pids"))):
        (tmp_path / name).mkdir()
        mi.append(f"{40 + i} 31 0:{40 + i} / {tmp_path / name} rw - cgroup cgroup rw,{ctls}")
        cg_lines.append(f"{i + 1}:{ctls}:/")
    layout = cgroups.detect("\n".join(mi), "\n".join(cg_lines))
    assert layout.v1["cpu"] == layout.v1["cpuacct"]
    assert "freezer" not in layout.v1
    cg = Cgroup.create(Limits(memory=128 * MiB, cpus=2), layout=layout, name="t")
    assert cg.version == 1 and cg.path("cpu") == cg.path("cpuacct")
    assert len(cg.paths) == 3 and cg.path("freezer") is None
    m, c = Path(cg.path("memory")), Path(cg.path("cpu"))
    assert (m / "memory.limit_in_bytes").read_text() == str(128 * MiB)
    assert (m / "memory.memsw.limit_in_bytes").read_text() == str(128 * MiB)
    assert (c / "cpu.cfs_quota_us").read_text() == "200000"
    assert (c / "cpu.cfs_period_us").read_text() == "100000"
    (c / "cpuacct.usage").write_text("1500000000\n")
    (c / "cpuacct.stat").write_text("user 120\nsystem 30\n")  # no usage_user: USER_HZ ticks
    (m / "memory.max_usage_in_bytes").write_text("1000\n")
    (m / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    hz = os.sysconf("SC_CLK_TCK")
    assert cg.cpu_time() == 1.5
    assert cg.usage() == cgroups.Usage(120 / hz, 30 / hz, 1000, True, None)
    fake_rmdir_ready(*cg.paths, *(os.path.dirname(p) for p in cg.paths))
    cg.remove()
    assert sorted(os.listdir(tmp_path)) == ["cpu,cpuacct", "memory", "pids"]
    assert all(os.listdir(tmp_path / n) == [] for n in os.listdir(tmp_path))


def test_fake_v1_missing_controller_reason(tmp_path):
    (tmp_path / "memory").mkdir()
    layout = cgroups.detect(f"35 31 0:32 / {tmp_path / 'memory'} rw - cgroup cgroup rw,memory\n",
                            "4:memory:/\n")
    assert cgroups.available(limits=Limits(pids=3), layout=layout) == \
        "no cgroup v1 hierarchy has the pids controller"
    assert cgroups.available(layout=layout) == "no cgroup v1 hierarchy has the cpuacct controller"


def test_detect_parses_mount_roots_and_escapes():
    mountinfo = ("31 25 0:28 /docker/abc /sys/fs/my\\040cg rw,relatime - cgroup2 cgroup2 rw\n"
                 "32 25 0:29 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n")
    layout = cgroups.detect(mountinfo, "1:name=systemd:/\n0::/docker/abc/sub\n")
    assert layout.v1 == {}
    h = layout.v2
    assert h is not None and h.mountpoint == "/sys/fs/my cg" and h.current == "/docker/abc/sub"
    assert h.fs_path("/docker/abc/sub") == "/sys/fs/my cg/sub"
    assert h.fs_path("/docker/abc") == "/sys/fs/my cg"
    assert h.fs_path("/docker/abcd") is None and h.fs_path("/") is None
    assert "outside the v2 mount" in (cgroups.available("/other", layout=layout) or "")


def test_limits_are_validated():
    with pytest.raises(ValueError):
        Limits(memory=0)
    with pytest.raises(ValueError):
        Limits(cpus=-1.0)
