"""Unit tests of the mount plan (no root needed): the order of its operations (the root, then by
destination depth), the user's binds and tmpfs, /proc, /dev, /tmp with its size, bwrap's data
flags and writable roots."""

from __future__ import annotations

import os
from pathlib import Path

from isol8r import mounts, seccomp


def plan(rootfs: str | None, data: tuple = (), rw_root: bool = False,
         user_mounts: tuple = (("tmpfs", "/scratch", None, 1 << 20),), new_net: bool = True,
         new_pid: bool = True, overlay: bool = False, tmp_size: int = 1 << 20) -> mounts.MountPlan:
    return mounts.plan(rootfs=rootfs, rw_root=rw_root, overlay=overlay, overlay_dir=None,
                       user_mounts=user_mounts, uid=65534, gid=65534, hostname="t",
                       new_net=new_net, tmp_size=tmp_size, new_pid=new_pid, data=data)


def depth(op: mounts.Op) -> int:
    return op.dst.rstrip("/").count("/")


def where(p: mounts.MountPlan, kind: type, dst: str) -> int:
    """The index of the operation of this kind at dst (exactly one)."""
    found = [i for i, op in enumerate(p.ops) if type(op) is kind and op.dst == dst]
    assert len(found) == 1, (kind.__name__, dst, [op.describe() for op in p.ops])
    return found[0]


def test_data_on_a_read_only_rootfs_gets_a_layer_made_read_only_again(tmp_path: Path) -> None:
    p = plan(str(tmp_path), (("symlink", "/lib", "usr/lib", None), ("chmod", "/lib", None, 0o755)))
    assert isinstance(p.ops[0], mounts.Overlay)
    assert [type(op) for op in p.final] == [mounts.Chmod, mounts.ReadOnly, mounts.ReadOnly]
    assert p.final[-1].dst == "/"
    assert p.idmap_root == str(tmp_path)


def test_data_below_a_mount_leaves_the_root_alone(tmp_path: Path) -> None:
    p = plan(str(tmp_path), (("dir", "/scratch/a", None, 0o700), ("dir", "/tmp/b", None, None)))
    assert isinstance(p.ops[0], mounts.RootBind) and p.ops[0].readonly
    names = [op.describe() for op in p.ops]
    assert names.index("tmpfs /scratch") < names.index("dir /scratch/a (0700)")


def test_rw_root_is_idmapped_and_takes_data_in_place(tmp_path: Path) -> None:
    p = plan(str(tmp_path), (("dir", "/x", None, None),), rw_root=True)
    assert isinstance(p.ops[0], mounts.RootBind) and not p.ops[0].readonly
    assert p.idmap_root == str(tmp_path)


def test_file_is_read_when_planned(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"abc")
    src.chmod(0o700)
    op = [o for o in plan(None, (("file", "/etc/f", str(src), None),)).ops
          if isinstance(o, mounts.CopyFile)][0]
    assert (op.content, op.mode) == (b"abc", 0o755)


def test_default_policy_guards_every_mode_call() -> None:
    pol = seccomp.resolve_policy("default")
    guarded = {n for r in pol.rules if r.conditions for n in r.names}
    assert set(seccomp.MODE_CALLS) - set(pol.skipped) <= guarded
    assert any("openat2" in r.names and r.action == seccomp.ENOSYS for r in pol.rules)


def test_an_unreadable_file_source_is_bad_input(tmp_path: Path) -> None:
    import pytest
    from isol8r.errors import SpecError
    with pytest.raises(SpecError, match="--file"):
        plan(None, (("file", "/etc/f", str(tmp_path / "gone"), None),))


# ---- the order and the parts of a plan ---------------------------------------------------------


def test_the_root_comes_first_then_operations_by_destination_depth(tmp_path: Path) -> None:
    """Parents before children: a mount at /a/b must not be hidden by one at /a made after it.
    The sort is stable: at one depth, the plan's own order holds (below)."""
    p = plan(str(tmp_path), (("dir", "/scratch/a/b", None, None), ("dir", "/tmp/x", None, None)),
             user_mounts=(("tmpfs", "/scratch/a", None, None), ("ro-bind", "/opt/deep/er",
                                                                str(tmp_path), None),
                          ("tmpfs", "/scratch", None, 1 << 20)))
    assert isinstance(p.ops[0], mounts.RootBind) and p.ops[0].dst == "/"
    depths = [depth(op) for op in p.ops[1:]]
    assert depths == sorted(depths)
    assert where(p, mounts.Tmpfs, "/scratch") < where(p, mounts.Tmpfs, "/scratch/a") < \
        where(p, mounts.MakeDir, "/scratch/a/b")


def test_one_depth_keeps_the_plans_order(tmp_path: Path) -> None:
    """/proc, /sys, /dev, /tmp, then the user's mounts, then the data: a user's --tmpfs /tmp
    replaces the jail's /tmp, and a --dir lands in what the mounts made."""
    p = plan(str(tmp_path), (("dir", "/tmp", None, None),),
             user_mounts=(("tmpfs", "/tmp", None, 2 << 20),))
    at = [where(p, mounts.Special, "/proc"), where(p, mounts.Special, "/sys"),
          where(p, mounts.Tmpfs, "/dev")]
    tmps = [i for i, op in enumerate(p.ops) if isinstance(op, mounts.Tmpfs) and op.dst == "/tmp"]
    assert [p.ops[i].size for i in tmps] == [1 << 20, 2 << 20]  # the jail's, then the user's
    assert at == sorted(at) and at[-1] < tmps[0] < tmps[1] < where(p, mounts.MakeDir, "/tmp")


def test_tmp_has_the_planned_size_and_is_world_writable(tmp_path: Path) -> None:
    p = plan(str(tmp_path), tmp_size=5 << 20)
    tmp = p.ops[where(p, mounts.Tmpfs, "/tmp")]
    assert (tmp.size, tmp.mode) == (5 << 20, 0o1777)


def test_user_binds_and_tmpfs(tmp_path: Path) -> None:
    p = plan(str(tmp_path), user_mounts=(("bind", "/w", "/srv/w", None),
                                         ("ro-bind", "/r", "/srv/r", None),
                                         ("tmpfs", "/t", None, None)))
    w, r = p.ops[where(p, mounts.Bind, "/w")], p.ops[where(p, mounts.Bind, "/r")]
    assert (w.src, w.readonly, r.src, r.readonly) == ("/srv/w", False, "/srv/r", True)
    assert not w.devices and not r.devices
    # open_tree needs CAP_SYS_ADMIN: only a root supervisor opens the user's binds itself
    assert w.by_supervisor == r.by_supervisor == (os.geteuid() == 0)
    t = p.ops[where(p, mounts.Tmpfs, "/t")]
    assert (t.size, t.owner) == (64 << 20, (65534, 65534))  # the jail user's, 64M by default


def test_proc_is_new_with_a_pid_namespace_else_bound_noexec(tmp_path: Path) -> None:
    p = plan(str(tmp_path))
    proc = p.ops[where(p, mounts.Special, "/proc")]
    assert proc.flags & mounts.linux.MS_NOEXEC and proc.flags & mounts.linux.MS_NOSUID
    knobs = [op.dst for op in p.ops if isinstance(op, mounts.ProcReadOnly)]
    assert "/proc/sys" in knobs and all(where(p, mounts.Special, "/proc") < p.ops.index(op)
                                        for op in p.ops if isinstance(op, mounts.ProcReadOnly))
    shared = plan(str(tmp_path), new_pid=False)
    b = shared.ops[where(shared, mounts.Bind, "/proc")]
    assert (b.src, b.readonly, b.noexec) == ("/proc", False, True)
    assert not any(isinstance(op, mounts.Special) and op.dst == "/proc" for op in shared.ops)


def test_sys_only_with_a_network_namespace(tmp_path: Path) -> None:
    sysfs = plan(str(tmp_path)).ops[where(plan(str(tmp_path)), mounts.Special, "/sys")]
    assert sysfs.flags & mounts.linux.MS_RDONLY
    assert not any(op.dst == "/sys" for op in plan(str(tmp_path), new_net=False).ops)


def test_dev_is_a_small_tmpfs_with_the_safe_nodes_and_made_read_only(tmp_path: Path) -> None:
    p = plan(str(tmp_path))
    dev = where(p, mounts.Tmpfs, "/dev")
    assert p.ops[dev].size == 1 << 20
    nodes = [op for op in p.ops if isinstance(op, mounts.Bind) and op.dst.startswith("/dev/")]
    assert {op.dst for op in nodes} == {"/dev/" + n for n in mounts.DEV_NODES}
    assert all(op.devices and not op.readonly and p.ops.index(op) > dev for op in nodes)
    pts = p.ops[where(p, mounts.Special, "/dev/pts")]
    assert "newinstance" in pts.data
    assert where(p, mounts.Tmpfs, "/dev/shm") > dev
    assert [op.dst for op in p.final if isinstance(op, mounts.ReadOnly)] == ["/dev"]


def test_default_root_is_a_read_only_tmpfs_of_host_dirs() -> None:
    p = plan(None)
    root = p.ops[0]
    assert isinstance(root, mounts.Tmpfs) and root.dst == "/"
    assert all(op.readonly for op in p.ops if isinstance(op, mounts.Bind)
               and op.dst in mounts.HOST_DIRS)
    assert {"/etc/passwd", "/etc/hostname"} <= {op.dst for op in p.ops
                                                 if isinstance(op, mounts.File)}
    assert [op.dst for op in p.final if isinstance(op, mounts.ReadOnly)] == ["/", "/dev"]
    assert p.idmap_root is None and p.root_src is None


def test_chmods_come_last_before_the_root_is_made_read_only() -> None:
    p = plan(None, (("chmod", "/tmp", None, 0o700), ("dir", "/d", None, 0o750)))
    assert [type(op) for op in p.final] == [mounts.Chmod, mounts.ReadOnly, mounts.ReadOnly]
    assert not any(isinstance(op, mounts.Chmod) for op in p.ops)
    assert p.ops[where(p, mounts.MakeDir, "/d")].mode == 0o750


def test_overlay_root(tmp_path: Path) -> None:
    p = plan(str(tmp_path), overlay=True)
    assert isinstance(p.ops[0], mounts.Overlay) and p.ops[0].lower == str(tmp_path)
    assert not any(isinstance(op, mounts.ReadOnly) and op.dst == "/" for op in p.final)
