"""Issue 13 item 11, bwrap's data flags: --symlink TARGET:DST, --dir DST[:MODE], --file SRC:DST
(a copy) and --chmod MODE:DST, from the CLI, the library and a TOML profile, checked from inside
a real jail; none of them writes to the host's tree unless it is bound writable."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import cli, needs_root, sh

pytestmark = needs_root


def tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.lstat().st_mode, p.lstat().st_size)
            for p in path.rglob("*")}


@pytest.fixture
def bare_root(open_dir: Path) -> Path:
    """A root with /usr/bin and /usr/lib but without the /bin and /lib links (a static busybox)."""
    root = open_dir / "root"
    for d in ("usr/bin", "usr/lib", "proc", "sys", "dev", "tmp"):
        (root / d).mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "usr/bin/busybox")
    (root / "usr/bin/sh").symlink_to("busybox")
    (root / "usr/lib/marker").write_text("lib\n")
    return root


def test_symlinks_on_a_rootfs_that_lacks_them(bare_root: Path) -> None:
    """bwrap's `--symlink usr/lib /lib`, written TARGET:DST; the root on disk is not touched."""
    before = tree(bare_root)
    p = cli("run", "--rootfs", str(bare_root), "--symlink", "usr/bin:/bin",
            "--symlink", "usr/lib:/lib", "--", "/bin/sh", "-c",
            "cat /lib/marker; busybox readlink /lib; echo x > /newfile || echo ro")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["lib", "usr/lib", "ro"]  # the root is read-only again
    assert tree(bare_root) == before


def test_dir_with_mode_and_parents() -> None:
    r = sh("stat -c '%a %U' /made /made/deep/er", dir=["/made:1777", "/made/deep/er"])
    assert r.stdout.split() == [b"1777", b"root", b"755", b"root"], r


def test_dir_never_changes_an_existing_directory(open_dir: Path) -> None:
    work = open_dir / "work"
    work.mkdir(mode=0o755)
    r = sh("stat -c %a /w", bind=[f"{work}:/w"], dir=["/w:0700"])
    assert r.stdout == b"755\n", r
    assert work.stat().st_mode & 0o777 == 0o755


def test_file_is_a_copy_the_jail_cannot_write_through(open_dir: Path) -> None:
    src = open_dir / "config"
    src.write_text("original\n")
    src.chmod(0o600)  # root's only: the supervisor reads it, the jail gets a readable copy
    r = sh("cat /w/config; echo changed > /w/config; cat /w/config",
           tmpfs=["/w"], file=[f"{src}:/w/config"], user="0")
    assert r.stdout == b"original\nchanged\n", r
    assert src.read_text() == "original\n"
    r = sh("cat /etc/config; stat -c %a /etc/config; echo x > /etc/config || echo refused",
           file=[f"{src}:/etc/config"])
    assert r.stdout == b"original\n644\nrefused\n", r


def test_chmod_runs_after_everything_else() -> None:
    r = sh("stat -c %a /d /d/sub", dir=["/d/sub"], chmod=["0711:/d", "0700:/d/sub"])
    assert r.stdout.split() == [b"711", b"700"], r


def test_profile_keys(open_dir: Path) -> None:
    src = open_dir / "f"
    src.write_text("from file\n")
    prof = open_dir / "p.toml"
    prof.write_text(f'symlink = ["/etc/hostname:/etc/name"]\ndir = ["/made:0700"]\n'
                    f'file = ["{src}:/etc/f"]\nchmod = ["0640:/etc/f"]\n')
    p = cli("run", "--profile", str(prof), "--user", "0", "--", "/bin/sh", "-c",
            "cat /etc/name /etc/f; stat -c %a /made /etc/f")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["isol8r", "from", "file", "700", "640"]


@pytest.mark.parametrize("args,bad", [
    (["--dir", "/x:9999"], "9999"),
    (["--dir", "relative"], "relative"),
    (["--chmod", "4755:/x"], "set-id"),
    (["--chmod", "/x"], "MODE:DST"),
    (["--symlink", "target"], "TARGET:DST"),
    (["--symlink", "t:rel"], "rel"),
    (["--file", "/nonexistent-isol8r:/x"], "/nonexistent-isol8r"),
    (["--dir", "/"], "root"),
])
def test_bad_values_are_named(args: list[str], bad: str) -> None:
    p = cli("run", *args, "--", "true")
    assert p.returncode == 125, p.stderr
    assert args[0].lstrip("-") in p.stderr and bad in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.splitlines()) == 1


def test_share_mount_refuses_them() -> None:
    p = cli("run", "--share-mount", "--dir", "/x", "--", "true")
    assert p.returncode == 125 and "--share-mount" in p.stderr, p.stderr
