"""Escaping the root: `..`, leaked directory descriptors, /proc/PID/root and /proc/PID/cwd of host
processes, open_by_handle_at ("shocker"), symlinks in bind targets, chroot and pivot_root again.

Each attack runs as probe.c inside a default jail and must find nothing; its twin switches the
matching protection off and must find the host's secret (a world-readable file under /tmp, so
only the jail can be what stops it).
"""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

import pytest

import isol8r
from conftest import cli, needs_root
from isol8r import mounts
from secprobe import ID_BASE, JAIL_NOBODY, LONE_UID, Tools, World, libc, probe, tools, victim, \
    world  # noqa: F401  (fixtures)

pytestmark = needs_root


# ---- .. from the root ---------------------------------------------------------------------------

def test_dotdot_does_not_leave_the_root(tools: Tools, world: World) -> None:
    """chdir("..") from / stays at /; ../../..HOST, HOST and /proc/self/fd/N/../.. find nothing."""
    r = probe(tools, "dotdot", world.marker)
    assert r.info("root_is_own_parent") == "1" and r.info("climbed_to_root") == "1", r
    assert not r.leaks, r
    assert r.errno("dotdot_relative") == r.errno("dotdot_absolute") == "ENOENT", r


def test_dotdot_twin_without_a_mount_namespace_reads_the_secret(tools: Tools, world: World) -> None:
    """Twin: --share-mount keeps the host's file tree, and the same probe reads the secret."""
    r = probe(tools, "dotdot", world.marker, share_mount=True)
    assert r.ok("dotdot_absolute") and world.token in r.get("dotdot_absolute")[1], r


# ---- leaked directory descriptors ----------------------------------------------------------------

def test_no_descriptor_but_stdio_reaches_the_jail(tools: Tools, world: World) -> None:
    """Descriptors the caller has open (inheritable, even a directory) never reach the program."""
    fd = os.open(world.dir, os.O_PATH | os.O_DIRECTORY)  # inheritable on purpose
    os.set_inheritable(fd, True)
    try:
        r = probe(tools, "fds", "secret/marker")
    finally:
        os.close(fd)
    assert r.info("fds_extra") == "0" and r.info("fds_dirs") == "0" and not r.leaks, r


def test_no_descriptor_of_the_cli_supervisor_reaches_the_jail(tools: Tools, world: World) -> None:
    """runc's "leaky vessels": the CLI's inherited descriptors (a host directory here) stay out."""
    fd = os.open(world.dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        p = cli("run", "--ro-bind", f"{tools.probe}:/probe", "--", "/probe", "fds",
                "secret/marker", pass_fds=(fd,))
    finally:
        os.close(fd)
    assert p.returncode == 0, p.stderr
    assert "leak" not in p.stdout and "info fds_extra 0" in p.stdout, p.stdout


def test_pass_fd_twin_a_passed_directory_is_a_door_out(tools: Tools, world: World) -> None:
    """Twin: --pass-fd of a host directory is the caller's explicit choice, and it is a hole
    through the root: openat(fd, "secret/marker") reads the host file. (Documented caveat.)"""
    fd = os.open(world.dir, os.O_PATH | os.O_DIRECTORY)
    try:
        r = probe(tools, "fds", "secret/marker", pass_fd=[fd])
    finally:
        os.close(fd)
    assert r.ok(f"fd_door_{fd}") and world.token in r.get(f"fd_door_{fd}")[1], r


# ---- /proc/PID/root and /proc/PID/cwd ------------------------------------------------------------

def test_proc_root_and_cwd_of_host_processes_are_out_of_reach(tools: Tools, world: World,
                                                              victim) -> None:  # noqa: F811
    """A host process of the jail user's own host uid, with its cwd in the secret directory:
    neither its /proc/PID/root nor its cwd, nor /proc/1/root, nor any /proc/*/root reach it."""
    v = victim(JAIL_NOBODY)
    r = probe(tools, "procroot", world.marker, "marker", v.pid, 1)
    assert not r.leaks, r
    assert r.errno("procroot") is not None and int(r.info("procroot_tried")) >= 4, r


def test_proc_root_twin_shared_pid_namespace_without_userns_reads_the_secret(
        tools: Tools, world: World, victim) -> None:  # noqa: F811
    """Twin: --share-pid --no-userns --user LONE_UID, next to a host process of that uid: its
    /proc/PID/root and /proc/PID/cwd lead onto the host's tree. (--share-pid alone is not enough:
    the user namespace still refuses the ptrace-mode access /proc/PID/root needs.)"""
    v = victim(LONE_UID)
    r = probe(tools, "procroot", world.marker, "marker", v.pid, share_pid=True, no_userns=True,
              user=str(LONE_UID), twin="no-userns")
    assert any(world.token in leak for leak in r.leaks), r
    shared_only = probe(tools, "procroot", world.marker, "marker", victim(JAIL_NOBODY).pid,
                        share_pid=True)
    assert not shared_only.leaks and shared_only.errno("procroot_root_given0") == "EACCES", \
        shared_only


# ---- open_by_handle_at ("shocker") --------------------------------------------------------------

def handle_of(path: Path) -> tuple[int, str]:
    """name_to_handle_at on the host: (handle_type, hex bytes) of a file."""
    buf = ctypes.create_string_buffer(8 + 128)
    ctypes.c_uint32.from_buffer(buf, 0).value = 128
    mount_id = ctypes.c_int()
    if libc.name_to_handle_at(-100, str(path).encode(), buf, ctypes.byref(mount_id), 0) != 0:
        pytest.skip(f"name_to_handle_at on the host: errno {ctypes.get_errno()}")
    n = ctypes.c_uint32.from_buffer(buf, 0).value
    return ctypes.c_int32.from_buffer(buf, 4).value, buf.raw[8:8 + n].hex()


@pytest.fixture
def shocker(world: World) -> tuple[list[str], int, str]:
    """A bind of an empty host directory at /data, and a handle of the secret, which lies OUTSIDE
    that directory on the same filesystem."""
    pub = world.dir / "pub"
    pub.mkdir(mode=0o755)
    htype, hexdata = handle_of(world.marker)
    return [f"{pub}:/data"], htype, hexdata


def test_open_by_handle_at_cannot_reach_outside_a_bind(tools: Tools, shocker) -> None:
    binds, htype, hexdata = shocker
    r = probe(tools, "handle", "/data", htype, hexdata, ro_bind=binds)
    assert r.errno("name_to_handle_at") == "EPERM" and r.errno("open_by_handle_at") == "EPERM", r
    # even without seccomp, and as jail root with CAP_DAC_READ_SEARCH in its user namespace, the
    # kernel refuses: that capability counts only in the initial user namespace
    r = probe(tools, "handle", "/data", htype, hexdata, ro_bind=binds, seccomp="none", user="0",
              caps=["CAP_DAC_READ_SEARCH", "CAP_SYS_ADMIN"], twin="jail-root")
    assert r.ok("name_to_handle_at") and not r.leaks, r


def test_open_by_handle_at_twin_host_root_reads_the_secret(tools: Tools, world: World,
                                                           shocker) -> None:
    """Twin: host root with CAP_DAC_READ_SEARCH (--no-userns --user 0 --cap ..., no seccomp)
    opens the secret through the /data bind by its handle: the shocker escape is real, and only
    the user namespace and seccomp stand in its way."""
    binds, htype, hexdata = shocker
    # off: the twin, host root past the filter shows the escape is real
    r = probe(tools, "handle", "/data", htype, hexdata, ro_bind=binds, seccomp="none",
              no_userns=True, user="0", caps=["CAP_DAC_READ_SEARCH"], twin="host-root")
    assert r.ok("open_by_handle_at") and world.token in r.get("open_by_handle_at")[1], r


# ---- symlinks in bind targets --------------------------------------------------------------------

LINKS = {
    "abs_staging": "/oldroot{outside}",      # where the host tree sits while the root is built
    "rel_staging": "../oldroot{outside}",    # the same, relative to /newroot
    "abs_host": "{outside}",                 # the host path itself
    "rel_up": "../../../../../../../..{outside}",
}


@pytest.fixture
def evil_root(tools: Tools, world: World) -> Path:
    """A prepared root (writable by the jail's root) whose entries are symlinks pointing out."""
    root = world.dir / "root"
    for d in ("proc", "dev", "sys", "tmp", "etc"):
        (root / d).mkdir(parents=True)
    shutil.copy(tools.probe, root / "probe")
    outside = world.dir / "outside"
    outside.mkdir(mode=0o777)
    for name, target in LINKS.items():
        (root / name).symlink_to(target.format(outside=outside))
    payload = world.dir / "payload"
    payload.mkdir(mode=0o755)
    (payload / "payload-file").write_text("payload\n")
    for p in [root, *root.rglob("*")]:
        os.chown(p, ID_BASE, ID_BASE, follow_symlinks=False)
    return root


@pytest.mark.parametrize("link", sorted(LINKS))
def test_a_symlinked_bind_target_cannot_mount_outside_the_root(tools: Tools, world: World,
                                                               evil_root: Path, link: str) -> None:
    """--bind SRC:/LINK/sub where /LINK in the prepared root is a symlink out of it: the mount
    lands inside the root (or the jail refuses to start), never on the host's directory."""
    outside = world.dir / "outside"
    try:
        # fork_server=False: the fork server would set a warm jail of this very shape up again
        # right after the run (docs/security.md, finding 5), racing with the fixture's cleanup
        # of the writable root and re-creating mount points in it
        r = isol8r.run(["/probe", "exists", f"/{link}/sub/payload-file"], capture_output=True,
                       rootfs=str(evil_root), rw_root=True, id_base=ID_BASE,
                       ro_bind=[f"{world.dir / 'payload'}:/{link}/sub"], time_limit=20,
                       fork_server=False)
    except isol8r.SetupError as e:
        r = None
        assert "mount" in str(e), e
    assert list(outside.iterdir()) == [], "the bind target was created on the host"
    if r is not None:
        assert r.exit_code == 0, r
        out = r.stdout.decode()
        assert "ok exists_0" in out, out  # the payload is visible where the jail looks for it
        from isol8r.mounts import PROC_READ_ONLY
        standard = {"/", "/proc", "/sys", "/dev", "/tmp", "/dev/pts", "/dev/shm", "/dev/mqueue",
                    *PROC_READ_ONLY}
        points = [line.split(" ", 2)[2] for line in out.splitlines()
                  if line.startswith("info mountpoint ")]
        ours = [p for p in points if p not in standard and not p.startswith("/dev/")]
        # the bind shows in the jail's own mountinfo, which lists only mounts under the jail's
        # root: the mount point is inside it (a jail path that may spell a host path, because
        # chase() reads an absolute symlink relative to the jail's root)
        assert len(ours) == 1, points


@pytest.mark.parametrize("link", ["abs_host", "rel_up"])
def test_symlinked_bind_target_twin_naive_resolution_lands_outside(evil_root: Path,
                                                                   world: World, link: str) -> None:
    """Twin: no option turns isol8r's in-root resolution (mounts.chase) off, so this twin shows
    the trap is real: resolving the same target the naive way (the kernel's, or realpath) lands on
    the host directory; chase() keeps it under the root."""
    naive = os.path.realpath(evil_root / link / "sub")
    assert naive.startswith(str(world.dir / "outside")), naive
    assert mounts.chase(str(evil_root), f"/{link}/sub").startswith(str(evil_root) + "/")


# ---- chroot, pivot_root, umount, mount -----------------------------------------------------------

def test_chroot_pivot_root_and_mounts_are_denied(tools: Tools, world: World) -> None:
    r = probe(tools, "chroot", world.marker)
    for call in ("chroot", "pivot_root", "umount_root", "umount_proc", "mount_tmpfs",
                 "mount_remount_rw", "fsopen", "open_tree"):
        assert r.errno(call) == "EPERM", (call, r)
    assert not r.leaks, r


def test_chroot_twin_with_capabilities_and_no_seccomp_still_stays_in_the_jail(
        tools: Tools, world: World) -> None:
    """Twin: jail root with CAP_SYS_CHROOT and CAP_SYS_ADMIN and no seccomp: chroot, pivot_root
    and the new mount API now work (the twin detects that), yet the classic chroot-climb escape
    only reaches the jail's own root: pivot_root plus the detached old root leave nothing above."""
    # off: the twin, chroot and the mount API get past the filter; the pivot must still hold
    r = probe(tools, "chroot", world.marker, seccomp="none", user="0",
              caps=["CAP_SYS_CHROOT", "CAP_SYS_ADMIN"], twin="jail-root")
    assert r.ok("chroot") and r.ok("chroot_escape_chroot") and r.ok("fsopen"), r
    assert r.errno("chroot_escape") == "ENOENT" and not r.leaks, r
