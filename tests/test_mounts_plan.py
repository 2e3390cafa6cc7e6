"""Unit tests of the mount plan for bwrap's data flags and writable roots (no root needed)."""

from __future__ import annotations

from pathlib import Path

from isol8r import mounts, seccomp


def plan(rootfs: str | None, data: tuple = (), rw_root: bool = False) -> mounts.MountPlan:
    return mounts.plan(rootfs=rootfs, rw_root=rw_root, overlay=False, overlay_dir=None,
                       user_mounts=(("tmpfs", "/scratch", None, 1 << 20),), uid=65534,
                       gid=65534, hostname="t", new_net=True, tmp_size=1 << 20, data=data)


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
