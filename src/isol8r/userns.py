"""User namespace: the id maps (parent side) and the identity switches (child side).

By default jail ids 0..65535 map to a block of unprivileged host ids, so no id inside is host
root even when isol8r runs as root. Without root, only the caller's own id can be mapped (the
kernel's rule), and setgroups must then be denied before the gid map is written; unless
/etc/subuid and /etc/subgid grant the caller ranges and newuidmap/newgidmap (setuid helpers,
Debian's uidmap) are installed: then the jail user is the caller and every other jail id
0..65535 maps into the caller's subordinate ranges, as rootless podman does, so the jail has
a root and other users of its own, none of them the caller.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass

from .sys import linux



@dataclass(frozen=True)
class IdPlan:
    """What the parent writes and what the child becomes; computed before clone."""

    uid_lines: bytes
    gid_lines: bytes
    deny_setgroups: bool
    can_become_root: bool
    uid_base: int | None  # the host id of the jail's root, when it has one
    helper: bool = False  # written by newuidmap/newgidmap (subordinate ids), not by this process


def plan(uid: int, gid: int, id_map: tuple[tuple[int, int, int], ...]) -> IdPlan:
    """The maps to write: the whole range as root, else the jail user onto the caller's ids."""
    if os.geteuid() == 0:
        lines = "".join(f"{i} {o} {n}\n" for i, o, n in id_map).encode()
        return IdPlan(lines, lines, False, True, id_map[0][1])
    sub = subordinate_ranges()
    if sub is not None:
        return IdPlan(sub_lines(uid, os.geteuid(), sub[0]), sub_lines(gid, os.getegid(), sub[1]),
                      False, True, None, helper=True)
    return IdPlan(f"{uid} {os.geteuid()} 1\n".encode(), f"{gid} {os.getegid()} 1\n".encode(),
                  True, False, None)


ID_RANGE = 65536  # jail ids 0..65535, as spec.ID_RANGE (a concern does not import the jail layer)


def sub_lines(jail_id: int, own: int, start: int) -> bytes:
    """The jail's id onto the caller's own, every other jail id below ID_RANGE onto the
    caller's subordinate range from start (each line: inside outside count)."""
    lines = [f"{jail_id} {own} 1"]
    if jail_id > 0:
        lines.append(f"0 {start} {jail_id}")
    if jail_id < ID_RANGE - 1:
        lines.append(f"{jail_id + 1} {start + jail_id} {ID_RANGE - 1 - jail_id}")
    return ("\n".join(lines) + "\n").encode()


def subordinate_ranges() -> tuple[int, int] | None:
    """(uid start, gid start) of the caller's first subordinate ranges of at least
    ID_RANGE - 1 ids in /etc/subuid and /etc/subgid, when newuidmap and newgidmap are
    installed; None otherwise (then only the caller's own id is mapped)."""
    if not (shutil.which("newuidmap") and shutil.which("newgidmap")):
        return None
    import pwd
    try:
        names = {pwd.getpwuid(os.geteuid()).pw_name, str(os.geteuid())}
    except KeyError:
        names = {str(os.geteuid())}
    starts = []
    for path in ("/etc/subuid", "/etc/subgid"):
        start = None
        try:
            with open(path) as f:
                for line in f:
                    parts = line.strip().split(":")
                    if len(parts) == 3 and parts[0] in names and parts[1].isdigit() \
                            and parts[2].isdigit() and int(parts[2]) >= ID_RANGE - 1:
                        start = int(parts[1])
                        break
        except OSError:
            return None
        if start is None:
            return None
        starts.append(start)
    return starts[0], starts[1]


def write_maps(pid: int, p: IdPlan) -> None:
    """Parent side: give the child its id maps (must happen before it does anything with ids)."""
    if p.helper:
        for tool, lines in (("newuidmap", p.uid_lines), ("newgidmap", p.gid_lines)):
            args = [tool, str(pid), *lines.decode().split()]
            done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if done.returncode != 0:
                msg = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                raise PermissionError(1, f"{tool}: {msg}", f"/proc/{pid}/uid_map")
        return
    base = f"/proc/{pid}/"
    if p.deny_setgroups:
        _write(base + "setgroups", b"deny")
    _write(base + "uid_map", p.uid_lines)
    _write(base + "gid_map", p.gid_lines)


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def become_root(p: IdPlan) -> None:
    """Child side, first thing after the maps: root of the jail with no supplementary groups.

    Clearing the groups matters: the process inherited the host caller's groups (root's gid 0),
    whose access would otherwise survive every later id change.
    """
    if p.can_become_root:
        os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)


def switch_to(uid: int, gid: int, keep_groups: bool) -> None:
    """Child side: become the jail user. Caps survive thanks to SECBIT_NO_SETUID_FIXUP (caps.py)."""
    if not keep_groups:
        os.setgroups([gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)



# ---- user namespaces made only to carry an idmapped mount's map -------------------------------

_OWNER_NS: dict[tuple[int, int, int, int], tuple[int, int, int]] = {}  # key -> (fd, dev, ino)
_OWNER_NS_MAX = 16


def owner_ns(disk_uid: int, disk_gid: int, host_uid: int, host_gid: int) -> int:
    """Parent side: an fd of a user namespace mapping on-disk disk_uid:disk_gid onto the host ids
    host_uid:host_gid (the jail user's) and nothing else, for MOUNT_ATTR_IDMAP: the kernel takes a
    mount's idmap from a user namespace. Making one costs a clone (~1.2 ms), so they are kept per
    mapping for the life of this process (the fork server's or CLI server's); the caller must
    not close the fd."""
    key = (disk_uid, disk_gid, host_uid, host_gid)
    hit = _OWNER_NS.get(key)
    if hit is not None:
        if _still_ours(*hit):
            return hit[0]
        del _OWNER_NS[key]  # the number was reused (a CLI worker's dup2): not ours to close
    if len(_OWNER_NS) >= _OWNER_NS_MAX:
        oldest = _OWNER_NS.pop(next(iter(_OWNER_NS)))
        if _still_ours(*oldest):
            os.close(oldest[0])
    fd = _new_ns(f"{disk_uid} {host_uid} 1\n".encode(), f"{disk_gid} {host_gid} 1\n".encode())
    st = os.fstat(fd)
    _OWNER_NS[key] = (fd, st.st_dev, st.st_ino)
    return fd


def _still_ours(fd: int, dev: int, ino: int) -> bool:
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _new_ns(uid_lines: bytes, gid_lines: bytes) -> int:
    """A user namespace with these maps: a child clones into it, blocks until its maps are
    written and the namespace is held by an fd here, then exits (all signals blocked: the
    copy of this process must run none of its handlers)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        pid, pidfd = linux.clone3(linux.CLONE_NEWUSER)
        if pid == 0:
            try:
                os.close(w)  # so the parent's close is this read's EOF
                linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
                os.read(r, 1)
            finally:
                os._exit(0)
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    os.close(r)
    try:
        write_maps(pid, IdPlan(uid_lines, gid_lines, False, False, None))
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(w)
        os.close(pidfd)
        os.waitpid(pid, 0)


def mapped(uid: int, gid: int) -> bool:
    """Parent side: this process's user namespace maps uid and gid (a jail with no user
    namespace of its own can only switch to ids its caller's namespace has)."""
    def has(path: str, i: int) -> bool:
        try:
            with open(path) as f:
                rows = [tuple(map(int, line.split())) for line in f if line.strip()]
        except (OSError, ValueError):
            return False
        return any(inside <= i < inside + n for inside, _, n in rows)
    return has("/proc/self/uid_map", uid) and has("/proc/self/gid_map", gid)
