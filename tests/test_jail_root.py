"""Issue 2, the root: the default root (host /usr, /bin, ... read-only, a generated /etc, nothing
else of the host), --rootfs with pivot_root, /proc, /sys, /dev, /tmp, the user's mounts and
mount propagation, each checked from inside a real jail.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import needs_root, py, sh

pytestmark = needs_root

DEV_NODES = {"null", "zero", "full", "random", "urandom", "tty"}
DEV_EXPECTED = DEV_NODES | {"pts", "shm", "fd", "stdin", "stdout", "stderr", "ptmx"}
BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "find", "test", "touch", "id", "stat", "readlink")


def make_busybox_root(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    for applet in BUSYBOX_APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for d in ("proc", "sys", "dev", "tmp"):
        (root / d).mkdir()
    return root


@pytest.fixture
def busybox_root(open_dir: Path) -> Path:
    """A tiny root: a static busybox with applet links, and empty proc, sys, dev, tmp."""
    return make_busybox_root(open_dir / "rootfs")


def parse_mountinfo(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        f = line.split()
        sep = f.index("-")
        out.append({"root": f[3], "mp": f[4], "opts": set(f[5].split(",")), "optional": f[6:sep],
                    "fstype": f[sep + 1], "super": set(f[sep + 3].split(","))})
    return out


def mountinfo(**options: Any) -> dict[str, dict[str, Any]]:
    """The jail's mount table by mount point (the last, i.e. top, mount of each)."""
    r = sh("cat /proc/self/mountinfo", **options)
    assert r.exit_code == 0, r.stderr
    return {m["mp"]: m for m in parse_mountinfo(r.stdout.decode())}


def inside(code: str, **options: Any) -> Any:
    r = py(code, **options)
    assert r.exit_code == 0, (r, r.stderr)
    return json.loads(r.stdout.decode().splitlines()[-1])


WRITE_CODE = """
import json, sys
out = {}
for path in PATHS:
    try:
        with open(path, 'w') as f:
            f.write('x')
        out[path] = 'written'
    except OSError as e:
        out[path] = e.errno
print(json.dumps(out))
"""


def try_write(paths: list[str], **options: Any) -> dict[str, Any]:
    return inside(WRITE_CODE.replace("PATHS", repr(paths)), **options)


# ---- the default root ---------------------------------------------------------------------------


def test_default_root_host_dirs_are_read_only() -> None:
    info = inside("import json, os\nprint(json.dumps({d: os.statvfs(d).f_flag & os.ST_RDONLY "
                  "for d in ('/usr', '/bin', '/lib', '/usr/bin', '/etc', '/')}))")
    assert all(info.values()), f"writable: {[d for d, ro in info.items() if not ro]}"
    mi = mountinfo()
    assert "ro" in mi["/usr"]["opts"]


def test_default_root_is_read_only_unless_rw_root() -> None:
    # as jail root, the owner of the default root's tmpfs, so only the read-only mount can refuse
    assert try_write(["/newfile", "/etc/newfile"], user="0:0") == {"/newfile": errno.EROFS,
                                                                   "/etc/newfile": errno.EROFS}
    assert try_write(["/newfile"], user="0:0", rw_root=True) == {"/newfile": "written"}


def test_default_root_holds_nothing_else_of_the_host() -> None:
    top = set(inside("import json, os; print(json.dumps(os.listdir('/')))"))
    for absent in ("home", "root", "var", "run", "boot", "srv", "opt", "mnt", "media"):
        assert absent not in top, f"/{absent} of the host is inside the jail"
    assert top <= {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "proc",
                   "sys", "tmp"}, top


def test_etc_is_generated() -> None:
    host_users = {line.split(":")[0] for line in Path("/etc/passwd").read_text().splitlines() if line}
    assert host_users - {"root", "nobody"}, "the host has no users to leak; the test proves nothing"
    r = sh("cat /etc/passwd; echo ==; cat /etc/group; echo ==; ls /etc")
    passwd, group, listing = r.stdout.decode().split("==\n")
    users = {line.split(":")[0] for line in passwd.splitlines()}
    assert users <= {"root", "nobody"}, f"host users inside: {users - {'root', 'nobody'}}"
    assert {line.split(":")[0] for line in group.splitlines()} <= {"root", "nogroup"}
    for secret in ("shadow", "gshadow", "sudoers", "ssh", "machine-id"):
        assert secret not in listing.split()


# ---- --rootfs -----------------------------------------------------------------------------------


def _expected_mount_root(path: Path) -> str:
    """The mountinfo 'root' field a bind of path shows: its path inside its own filesystem."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        mounts = parse_mountinfo(f.read())
    best = max((m for m in mounts if real == m["mp"] or real.startswith(m["mp"].rstrip("/") + "/")),
               key=lambda m: len(m["mp"]))
    rel = os.path.relpath(real, best["mp"])
    return os.path.normpath(os.path.join(best["root"], rel))


def test_rootfs_pivots_into_the_given_directory(busybox_root: Path) -> None:
    r = sh("ls /; echo ==; cat /proc/self/mountinfo", rootfs=str(busybox_root))
    assert r.exit_code == 0, r.stderr
    listing, table = r.stdout.decode().split("==\n")
    assert set(listing.split()) == {"bin", "dev", "proc", "sys", "tmp"}
    assert "oldroot" not in table and "newroot" not in table
    root = [m for m in parse_mountinfo(table) if m["mp"] == "/"]
    assert len(root) == 1, table
    assert root[0]["root"] == _expected_mount_root(busybox_root)


def test_rootfs_cannot_reach_outside(busybox_root: Path, open_dir: Path) -> None:
    name = f"secret-{uuid.uuid4().hex}"
    outside = open_dir / "outside"
    outside.mkdir()
    (outside / name).write_text("host secret\n")
    (outside / name).chmod(0o644)
    script = (f"find / -path /proc -prune -o -path /sys -prune -o -name {name} -print; "
              f"test -e {outside / name} && echo reachable; cat /proc/self/mountinfo")
    r = sh(script, rootfs=str(busybox_root))
    assert name not in r.stdout.decode()
    assert "reachable" not in r.stdout.decode()


def test_rootfs_is_read_only_unless_rw_root(busybox_root: Path) -> None:
    busybox_root.chmod(0o1777)  # writable by the jail user: only the mount can refuse
    r = sh("touch /newfile && echo written", rootfs=str(busybox_root))
    assert b"written" not in r.stdout and b"Read-only" in r.stderr, r
    assert not (busybox_root / "newfile").exists()
    r = sh("touch /newfile && echo written", rootfs=str(busybox_root), rw_root=True)
    assert r.stdout == b"written\n", r.stderr
    assert (busybox_root / "newfile").exists()


@pytest.mark.parametrize("rw_root", [False, True], ids=["ro", "rw"])
def test_rootfs_under_a_private_host_dir(tmp_path: Path, rw_root: bool) -> None:
    """A root directory root can read (pytest's tmp_path, under a 0700 root-owned directory)
    must work, read-only and read-write alike: isol8r runs as root."""
    root = make_busybox_root(tmp_path / "rootfs")
    r = sh("echo inside", rootfs=str(root), rw_root=rw_root)
    assert r.stdout == b"inside\n", r


def test_rootfs_gets_proc_dev_tmp(busybox_root: Path) -> None:
    mi = mountinfo(rootfs=str(busybox_root))
    assert mi["/proc"]["fstype"] == "proc"
    assert mi["/tmp"]["fstype"] == "tmpfs"
    assert "/dev/pts" in mi and "/dev/null" in mi


# ---- /proc, /sys --------------------------------------------------------------------------------


@pytest.mark.parametrize("opts", [{}, {"share_net": True}, {"share_pid": True}])
def test_proc_is_nosuid_nodev_noexec(opts: dict[str, Any]) -> None:
    proc = mountinfo(**opts)["/proc"]
    assert proc["fstype"] == "proc"
    assert {"nosuid", "nodev", "noexec"} <= proc["opts"], proc["opts"]


def test_sys_is_read_only() -> None:
    mi = mountinfo()
    assert mi["/sys"]["fstype"] == "sysfs"
    assert "ro" in mi["/sys"]["opts"]
    r = sh("echo x > /sys/kernel/uevent_helper && echo written", user="0:0")
    assert b"written" not in r.stdout


def test_sys_is_absent_with_share_net() -> None:
    # /sys/class/net would show the host's interfaces; the jail gets no /sys at all then
    assert "/sys" not in mountinfo(share_net=True)
    assert sh("test -e /sys && echo present", share_net=True).stdout == b""


# ---- /dev ---------------------------------------------------------------------------------------

DEV_CODE = """
import json, os, stat
entries = {}
for name in os.listdir('/dev'):
    st = os.lstat('/dev/' + name)
    kind = ('chr' if stat.S_ISCHR(st.st_mode) else 'blk' if stat.S_ISBLK(st.st_mode) else
            'link' if stat.S_ISLNK(st.st_mode) else 'dir' if stat.S_ISDIR(st.st_mode) else 'other')
    entries[name] = [kind, os.readlink('/dev/' + name) if kind == 'link' else None]
with open('/dev/null', 'r+b', buffering=0) as f:
    null_write = f.write(b'discarded')
    null_read = f.read(10)
with open('/dev/zero', 'rb') as f:
    zero = f.read(4)
try:
    with open('/dev/full', 'wb', buffering=0) as f:
        f.write(b'x')
    full = 'written'
except OSError as e:
    full = e.errno
with open('/dev/urandom', 'rb') as f:
    rnd = len(f.read(16))
print(json.dumps({'entries': entries, 'null_write': null_write, 'null_read': null_read.decode(),
                  'zero': zero.hex(), 'full': full, 'urandom': rnd}))
"""


def test_dev_holds_exactly_the_safe_nodes() -> None:
    info = inside(DEV_CODE)
    names = set(info["entries"])
    assert names in (DEV_EXPECTED, DEV_EXPECTED | {"mqueue"}), sorted(names ^ DEV_EXPECTED)
    devices = {n for n, (kind, _) in info["entries"].items() if kind in ("chr", "blk")}
    assert devices == DEV_NODES
    links = {n: t for n, (kind, t) in info["entries"].items() if kind == "link"}
    assert links == {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
                     "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}


def test_dev_nodes_work() -> None:
    info = inside(DEV_CODE)
    assert info["null_write"] == 9 and info["null_read"] == ""
    assert info["zero"] == "00000000"
    assert info["full"] == errno.ENOSPC
    assert info["urandom"] == 16


def test_dev_is_read_only_and_no_device_can_be_made() -> None:
    r = sh("touch /dev/newfile && echo written; mknod /dev/sda b 8 0 && echo made", user="0:0")
    assert b"written" not in r.stdout and b"made" not in r.stdout


PTS_CODE = """
import json, os
master, slave = os.openpty()
print(json.dumps({'dev': os.stat('/dev/pts').st_dev, 'tty': os.ttyname(slave),
                  'listing': sorted(os.listdir('/dev/pts'))}))
"""


def test_dev_pts_is_a_new_instance() -> None:
    info = inside(PTS_CODE)
    assert info["dev"] != os.stat("/dev/pts").st_dev, "the host's /dev/pts is mounted in the jail"
    assert info["tty"] == "/dev/pts/0", "a new devpts instance numbers its terminals from 0"
    assert set(info["listing"]) == {"0", "ptmx"}


# ---- /tmp ---------------------------------------------------------------------------------------

TMP_CODE = """
import json, os
st = os.stat('/tmp')
vfs = os.statvfs('/tmp')
with open('/tmp/probe', 'w') as f:
    f.write('x')
print(json.dumps({'mode': st.st_mode & 0o7777, 'size': vfs.f_blocks * vfs.f_frsize}))
"""


def test_tmp_is_a_private_tmpfs_1777_with_a_cap() -> None:
    info = inside(TMP_CODE)
    assert info["mode"] == 0o1777
    page = os.sysconf("SC_PAGE_SIZE")
    # a real build fits (the old 64 MiB did not), yet one jail cannot take the host's RAM
    assert info["size"] == max(os.sysconf("SC_PHYS_PAGES") // 4 * page, 64 << 20)
    assert mountinfo()["/tmp"]["fstype"] == "tmpfs"
    assert not os.path.exists("/tmp/probe"), "the jail wrote to the host's /tmp"


def test_tmp_default_is_capped_by_the_memory_limit() -> None:
    assert inside(TMP_CODE, memory="96M")["size"] == 96 << 20


def test_tmp_holds_more_than_the_old_64_mib() -> None:
    code = ("f = open('/tmp/big', 'wb')\nfor _ in range(100):\n    f.write(b'x' * (1 << 20))\n"
            "f.close()\nprint('fit')")
    r = py(code)
    assert r.stdout == b"fit\n", r.stderr


def test_tmp_size_option() -> None:
    assert inside(TMP_CODE, tmp_size="8M")["size"] == 8 << 20


def test_tmp_size_cap_is_enforced() -> None:
    code = ("import errno\ntry:\n    open('/tmp/big', 'wb').write(b'x' * (2 << 20))\n    print('fit')\n"
            "except OSError as e:\n    print(errno.errorcode[e.errno])")
    assert py(code, tmp_size="1M").stdout == b"ENOSPC\n"


# ---- user mounts --------------------------------------------------------------------------------


def test_bind_is_writable_nosuid_nodev(open_dir: Path) -> None:
    src = open_dir / "src"
    src.mkdir()
    src.chmod(0o777)
    (src / "hello").write_text("from the host\n")
    r = sh("cat /data/hello && echo from-jail > /data/new", bind=[f"{src}:/data"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == b"from the host\n"
    assert (src / "new").read_text() == "from-jail\n"
    data = mountinfo(bind=[f"{src}:/data"])["/data"]
    assert {"nosuid", "nodev"} <= data["opts"] and "ro" not in data["opts"]


def test_bind_without_dst_uses_the_same_path(open_dir: Path) -> None:
    (open_dir / "f").write_text("same\n")
    r = sh(f"cat {open_dir}/f", ro_bind=[str(open_dir)])
    assert r.stdout == b"same\n", r.stderr


@pytest.fixture
def src_with_submount(open_dir: Path) -> Iterator[Path]:
    """open_dir/src with a world-writable tmpfs mounted on src/sub, in the host's namespace."""
    src = open_dir / "src"
    sub = src / "sub"
    sub.mkdir(parents=True)
    src.chmod(0o777)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0777", "isol8r-test", str(sub)],
                   check=True)
    try:
        yield src
    finally:
        subprocess.run(["umount", str(sub)], check=True)


def test_ro_bind_is_read_only_recursively(src_with_submount: Path) -> None:
    out = try_write(["/data/top", "/data/sub/deep"], ro_bind=[f"{src_with_submount}:/data"])
    assert out == {"/data/top": errno.EROFS, "/data/sub/deep": errno.EROFS}, out
    mi = mountinfo(ro_bind=[f"{src_with_submount}:/data"])
    for mp in ("/data", "/data/sub"):
        assert {"ro", "nosuid", "nodev"} <= mi[mp]["opts"], (mp, mi[mp]["opts"])


def test_bind_twin_of_the_recursive_test_is_writable(src_with_submount: Path) -> None:
    # the twin that shows the recursive test above can fail: the same tree, bound read-write
    out = try_write(["/data/top", "/data/sub/deep"], bind=[f"{src_with_submount}:/data"])
    assert out == {"/data/top": "written", "/data/sub/deep": "written"}, out


def test_tmpfs_option() -> None:
    code = """
import json, os
vfs = os.statvfs('/scratch')
open('/scratch/small', 'wb').write(b'x' * 1000)
try:
    open('/scratch/big', 'wb').write(b'x' * (2 << 20))
    big = 'fit'
except OSError as e:
    big = e.errno
print(json.dumps({'size': vfs.f_blocks * vfs.f_frsize, 'big': big}))
"""
    info = inside(code, tmpfs=["/scratch:1M"])
    assert info == {"size": 1 << 20, "big": errno.ENOSPC}
    assert mountinfo(tmpfs=["/scratch:1M"])["/scratch"]["fstype"] == "tmpfs"


def test_bind_source_under_a_private_host_dir(tmp_path: Path) -> None:
    """A directory root can read (pytest's tmp_path, under a 0700 root-owned directory) must be
    bindable: the user asked for it and isol8r runs as root."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("private\n")
    (src / "f").chmod(0o644)
    r = sh("cat /data/f", ro_bind=[f"{src}:/data"])
    assert r.stdout == b"private\n"


# ---- propagation --------------------------------------------------------------------------------


def test_no_mount_is_shared_with_the_host(open_dir: Path) -> None:
    r = sh("cat /proc/self/mountinfo", bind=[f"{open_dir}:/data"], tmpfs=["/scratch"])
    for m in parse_mountinfo(r.stdout.decode()):
        assert not any(tag.startswith("shared:") for tag in m["optional"]), (m["mp"], m["optional"])


def test_host_mount_table_unchanged_by_a_jail_with_mounts(open_dir: Path) -> None:
    with open("/proc/self/mountinfo") as f:
        before = f.read()
    r = sh("true", bind=[f"{open_dir}:/data"], tmpfs=["/scratch"])
    assert r.exit_code == 0
    with open("/proc/self/mountinfo") as f:
        assert f.read() == before
