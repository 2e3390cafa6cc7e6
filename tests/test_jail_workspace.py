"""Issue 13, writable workspaces: a writable bind is writable by the jail user without preparing
the directory, and what the jail writes comes back owned by the directory's owner (an idmapped
mount, docs/design.md); `--rw-root` on a mkroot root is writable where the jail user owns it.
Each is checked from inside a real jail and on the host's disk afterwards.
(The set-id and file-capability wall of those binds is in tests/security/test_setid_wall.py.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import cli, jail, needs_root, sh
from isol8r import rootfs

pytestmark = needs_root

#: a host uid and gid with no account: "the user who ran sudo"
OWNER = 4321


def owners(d: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.lstat().st_uid, p.lstat().st_gid) for p in d.iterdir()}


@pytest.mark.parametrize("owner", [0, OWNER])
def test_writable_bind_needs_no_preparation(open_dir: Path, owner: int) -> None:
    """The issue's example: a 0755 directory of root (or of the sudo user), untouched, is
    writable by the jail user, and its files come back owned by the directory's owner."""
    work = open_dir / "work"
    work.mkdir()
    (work / "build.sh").write_text("echo built > out.txt && mkdir sub && echo x > sub/f && id -u\n")
    os.chown(work, owner, owner)
    os.chown(work / "build.sh", owner, owner)
    r = sh("sh ./build.sh", bind=[f"{work}:/work"], cwd="/work")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == b"65534\n"
    assert (work / "out.txt").read_text() == "built\n"
    assert owners(work) == {"build.sh": (owner, owner), "out.txt": (owner, owner),
                            "sub": (owner, owner)}
    assert owners(work / "sub") == {"f": (owner, owner)}


def test_inside_the_owner_reads_as_the_jail_user(open_dir: Path) -> None:
    work = open_dir / "work"
    work.mkdir()
    os.chown(work, OWNER, OWNER)
    r = sh("stat -c '%u:%g' /work", bind=[f"{work}:/work"], user="1000:1001")
    assert r.stdout == b"1000:1001\n", r.stderr


def test_only_the_owner_is_mapped(open_dir: Path) -> None:
    """A file of another host id in the bind stays that id's: the jail cannot write it (it is
    not the owner) and it does not read as the jail user's."""
    work = open_dir / "work"
    work.mkdir()
    os.chown(work, OWNER, OWNER)
    other = work / "other"
    other.write_text("host\n")
    other.chmod(0o644)  # root's
    r = sh("stat -c %u /work/other; echo x >> /work/other || echo refused",
           bind=[f"{work}:/work"])
    assert r.stdout.split() == [b"65534", b"refused"], r  # 65534: the kernel's overflow id
    assert other.read_text() == "host\n"


def test_jail_root_writes_as_the_owner(open_dir: Path) -> None:
    work = open_dir / "work"
    work.mkdir()
    os.chown(work, OWNER, OWNER)
    r = sh("echo x > /work/f && id -u", bind=[f"{work}:/work"], user="0")
    assert r.exit_code == 0, r.stderr
    assert owners(work) == {"f": (OWNER, OWNER)}


def test_a_writable_file_bind(open_dir: Path) -> None:
    f = open_dir / "log"
    f.write_text("")
    f.chmod(0o644)
    r = sh("echo line >> /log", bind=[f"{f}:/log"])
    assert r.exit_code == 0, r.stderr
    assert f.read_text() == "line\n"


def test_ro_bind_is_not_made_writable(open_dir: Path) -> None:
    work = open_dir / "work"
    work.mkdir()
    r = sh("echo x > /work/f || echo refused", ro_bind=[f"{work}:/work"])
    assert r.stdout.endswith(b"refused\n") and not (work / "f").exists()


def test_relative_bind_source_is_the_callers(open_dir: Path) -> None:
    """`isol8r run --bind ./work:/work --cwd /work -- ./build.sh`, as the issue writes it."""
    work = open_dir / "work"
    work.mkdir()
    script = work / "build.sh"
    script.write_text("#!/bin/sh\necho built > out.txt\n")
    script.chmod(0o755)
    p = cli("run", "--bind", "./work:/work", "--cwd", "/work", "--", "./build.sh", cwd=open_dir)
    assert p.returncode == 0, p.stderr
    assert (work / "out.txt").read_text() == "built\n"
    assert owners(work)["out.txt"] == (0, 0)


def test_setfcap_with_a_writable_bind_is_refused(open_dir: Path) -> None:
    p = cli("run", "--user", "0", "--cap", "CAP_SETFCAP", "--bind", f"{open_dir}:/w", "--", "true")
    assert p.returncode == 125 and "--cap" in p.stderr and "CAP_SETFCAP" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


# ---- --rw-root on a mkroot root ------------------------------------------------------------------

@pytest.fixture(scope="module")
def mkroot_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("rwroot") / "r"
    rootfs.mkroot(str(r), ["sh", "echo", "id"])
    return r


WRITE = "for f in /home/user/f /etc/f /f; do (echo x > $f) 2>/dev/null && echo w || echo r; done"


def test_rw_root_is_the_jail_users_where_it_owns_it(mkroot_root: Path) -> None:
    try:
        r = sh(WRITE, rootfs=str(mkroot_root), rw_root=True)
        assert r.stdout.split() == [b"w", b"r", b"r"], r
        st = (mkroot_root / "home/user/f").lstat()
        assert (st.st_uid, st.st_gid) == (65534, 65534)  # the on-disk ids mkroot gave the user
    finally:
        (mkroot_root / "home/user/f").unlink(missing_ok=True)


def test_rw_root_as_jail_root_is_writable_everywhere(mkroot_root: Path) -> None:
    """Everywhere root owns: jail root holds no capability, so the user's /home/user stays the
    user's unless --cap CAP_DAC_OVERRIDE is given."""
    try:
        r = sh(WRITE, rootfs=str(mkroot_root), rw_root=True, user="0")
        assert r.stdout.split() == [b"r", b"w", b"w"], r
        assert (mkroot_root / "etc/f").lstat().st_uid == 0
        r = sh(WRITE, rootfs=str(mkroot_root), rw_root=True, user="0", cap=["CAP_DAC_OVERRIDE"])
        assert r.stdout.split() == [b"w", b"w", b"w"], r
    finally:
        for f in ("home/user/f", "etc/f", "f"):
            (mkroot_root / f).unlink(missing_ok=True)


def test_read_only_root_stays_read_only(mkroot_root: Path) -> None:
    r = sh(WRITE, rootfs=str(mkroot_root), user="0")
    assert r.stdout.split() == [b"r", b"r", b"r"], r


def test_rw_root_chowned_for_the_jail_is_not_idmapped(open_dir: Path) -> None:
    """The old way to prepare a writable root (chown it to the jail user's host id) still works:
    such a tree is the jail's already and is bound as it is."""
    root = open_dir / "root"
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "usr/bin/busybox")
    (root / "usr/bin/sh").symlink_to("busybox")
    host_nobody = 1_600_000_000 + 65534
    os.chown(root, host_nobody, host_nobody)
    r = jail("/usr/bin/busybox", "sh", "-c", "busybox touch /made && echo w", rootfs=str(root),
             rw_root=True)
    assert r.stdout == b"w\n", r
    assert (root / "made").lstat().st_uid == host_nobody


def test_a_file_system_that_cannot_idmap_says_so(open_dir: Path) -> None:
    """ramfs has no idmapped mounts: the plain bind serves, as before, and a note says why the
    jail user cannot write a directory of root there."""
    mnt = open_dir / "ramfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "-o", "mode=0755", "isol8r-test", str(mnt)], check=True)
    try:
        r = sh("echo x > /w/f || echo refused", bind=[f"{mnt}:/w"])
        assert r.stdout.endswith(b"refused\n"), r
        assert any("not idmapped" in n and str(mnt) in n for n in r.notes), r.notes
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_owner_namespaces_are_kept_per_mapping() -> None:
    """A user namespace costs a clone: one per mapping is kept (at most 16), and reused."""
    from isol8r import userns
    first = userns.owner_ns(OWNER, OWNER, 1_600_065_534, 1_600_065_534)
    assert userns.owner_ns(OWNER, OWNER, 1_600_065_534, 1_600_065_534) == first
    assert os.readlink(f"/proc/self/fd/{first}").startswith("user:[")
    for i in range(20):
        userns.owner_ns(OWNER + 1 + i, OWNER, 1_600_065_534, 1_600_065_534)
    held = [f for f in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{f}")
            and os.readlink(f"/proc/self/fd/{f}").startswith("user:[")]
    assert len(held) <= 16


@needs_root
def test_a_warm_jail_follows_a_workspace_that_changed_owner(open_dir: Path) -> None:
    """A writable bind is idmapped with its source's owner when the jail is made; warm jails are
    made ahead, so the pool must not hand out one made while the directory had another owner
    (it did: the jail user wrote as the old owner, and got EACCES)."""
    work = open_dir / "w"
    work.mkdir(mode=0o755)
    os.chown(work, 1000, 1000)
    for i in range(3):  # the first may be a fresh jail; the next ones are warm, of this owner
        r = sh(f"touch /work/a{i}", bind=[f"{work}:/work"])
        assert r.exit_code == 0, r.stderr
    os.chown(work, 2000, 2000)
    for i in range(3):
        r = sh(f"touch /work/b{i}", bind=[f"{work}:/work"])
        assert r.exit_code == 0, r.stderr
        assert os.stat(work / f"b{i}").st_uid == 2000
