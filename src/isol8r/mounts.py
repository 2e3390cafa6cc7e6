"""Mount namespace: build the jail's root and pivot into it.

The plan is a list of small mount operations, each with execute() and describe(), built in the
parent and run in the child. The child first pivots into a scratch tmpfs, so the host's tree sits
at /oldroot (where bind sources are read) and the new root is assembled at /newroot; a second
pivot_root makes /newroot the root and the old one is detached with MNT_DETACH.
Destinations are resolved inside the new root without following symlinks out of it (chase()),
which closes the symlink-in-bind-target class of escapes.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Any, Callable

from .errors import SpecError
from .paths import chase
from .sys import linux

OLD = "/oldroot"
NEW = "/newroot"
SCRATCH = "/tmp"  # any host directory will do: the scratch tmpfs hides it only in the jail's view
HOST_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
PROC_READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus")
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
             ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))
_NOSUID_NODEV = linux.MS_NOSUID | linux.MS_NODEV


def _mkdirs(path: str, mode: int = 0o755) -> None:
    """mkdir -p for a path already chased inside the new root."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent != path:
        _mkdirs(parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    except OSError as e:
        raise linux.SyscallError(e.errno, "mkdir", path) from None


def _mountpoint(dst: str, is_dir: bool) -> str:
    """Chase dst inside NEW and make sure a directory (or empty file) is there to mount on."""
    path = chase(NEW, dst)
    try:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode) != is_dir:
            kind = "a directory" if is_dir else "a file"
            raise linux.SyscallError(errno.ENOTDIR if is_dir else errno.EISDIR, f"mount point must be {kind}", dst)
        return path
    except FileNotFoundError:
        pass
    _mkdirs(os.path.dirname(path))
    try:
        if is_dir:
            os.mkdir(path, 0o755)
        else:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644))
    except OSError as e:
        raise linux.SyscallError(e.errno, "create mount point", dst) from None
    return path


class Op:
    """One step of the mount plan."""

    dst: str

    def execute(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{type(self).__name__.lower()} {self.dst}"


@dataclass
class Bind(Op):
    """A recursive bind of a host path, then nosuid,nodev[,ro] on every submount.

    A user's bind (by_supervisor) arrives as a detached tree the supervisor opened as the caller
    (open_tree), so a source under a directory the jail's ids cannot cross still binds; the
    others are read from /oldroot.
    """

    src: str
    dst: str
    readonly: bool = True
    devices: bool = False
    noexec: bool = False
    by_supervisor: bool = False
    idmap: bool = True  # a writable one, as its source's owner (host_trees)
    tree_fd: int = -1

    def attrs(self) -> int:
        return (linux.MOUNT_ATTR_NOSUID | (0 if self.devices else linux.MOUNT_ATTR_NODEV)
                | (linux.MOUNT_ATTR_RDONLY if self.readonly else 0)
                | (linux.MOUNT_ATTR_NOEXEC if self.noexec else 0))

    def execute(self) -> None:
        if self.tree_fd >= 0:
            target = _mountpoint(self.dst, stat.S_ISDIR(os.fstat(self.tree_fd).st_mode))
            linux.move_mount(self.tree_fd, target)
            os.close(self.tree_fd)
        else:
            src = OLD + self.src
            target = _mountpoint(self.dst, os.path.isdir(src))
            linux.mount(src, target, None, linux.MS_BIND | linux.MS_REC)
        linux.mount_setattr(target, self.attrs())

    def describe(self) -> str:
        return f"{'ro-bind' if self.readonly else 'bind'} {self.src} -> {self.dst}"


@dataclass
class Tmpfs(Op):
    dst: str
    size: int
    mode: int = 0o755
    owner: tuple[int, int] | None = None
    flags: int = _NOSUID_NODEV

    def execute(self) -> None:
        target = _mountpoint(self.dst, True) if self.dst != "/" else NEW
        data = f"size={self.size},mode={self.mode:o}"
        if self.owner:
            data += f",uid={self.owner[0]},gid={self.owner[1]}"
        linux.mount("tmpfs", target, "tmpfs", self.flags, data)


@dataclass
class Special(Op):
    """proc, sysfs, devpts, mqueue: a kernel filesystem of the jail's own namespaces."""

    fstype: str
    dst: str
    flags: int
    data: str | None = None
    optional: bool = False

    def execute(self) -> None:
        target = _mountpoint(self.dst, True)
        try:
            linux.mount(self.fstype, target, self.fstype, self.flags, self.data)
        except OSError:
            if not self.optional:
                raise


@dataclass
class Symlink(Op):
    target: str
    dst: str

    def execute(self) -> None:
        parent = chase(NEW, os.path.dirname(self.dst))
        os.symlink(self.target, parent + "/" + os.path.basename(self.dst))


@dataclass
class File(Op):
    """A generated file (the default root's /etc)."""

    dst: str
    content: bytes
    mode: int = 0o644

    def execute(self) -> None:
        path = chase(NEW, self.dst)
        _mkdirs(os.path.dirname(path))
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     self.mode)
        try:
            os.write(fd, self.content)
        finally:
            os.close(fd)


@dataclass
class MakeLink(Op):
    """--symlink: a symlink in the jail's tree, its parents made as needed; one already there
    with the same target is fine (as in bwrap)."""

    target: str
    dst: str

    def execute(self) -> None:
        parent = chase(NEW, os.path.dirname(self.dst))
        _mkdirs(parent)
        path = parent + "/" + os.path.basename(self.dst)
        try:
            os.symlink(self.target, path)
        except FileExistsError:
            if not os.path.islink(path) or os.readlink(path) != self.target:
                raise linux.SyscallError(errno.EEXIST, "symlink", self.dst) from None

    def describe(self) -> str:
        return f"symlink {self.dst} -> {self.target}"


@dataclass
class MakeDir(Op):
    """--dir: a directory and its parents; the mode is set only on a directory made here, so an
    existing one (a bind of a host directory) is never changed."""

    dst: str
    mode: int = 0o755

    def execute(self) -> None:
        path = chase(NEW, self.dst)
        if os.path.isdir(path):
            return
        _mkdirs(os.path.dirname(path))
        try:
            os.mkdir(path, self.mode)
            os.chmod(path, self.mode)  # past the umask
        except OSError as e:
            raise linux.SyscallError(e.errno or errno.EIO, "mkdir", self.dst) from None

    def describe(self) -> str:
        return f"dir {self.dst} ({self.mode:04o})"


@dataclass
class CopyFile(Op):
    """--file: a copy of a host file, read by the supervisor when it planned the jail (so a file
    only the caller can read still copies); the jail writing it never reaches the source."""

    src: str
    dst: str
    content: bytes
    mode: int

    def execute(self) -> None:
        path = chase(NEW, self.dst)
        _mkdirs(os.path.dirname(path))
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     self.mode)
        try:
            os.fchmod(fd, self.mode)
            view = memoryview(self.content)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def describe(self) -> str:
        return f"file {self.src} -> {self.dst}"


@dataclass
class Chmod(Op):
    """--chmod: run after every other op, so it applies to what they made."""

    dst: str
    mode: int

    def execute(self) -> None:
        os.chmod(chase(NEW, self.dst), self.mode)

    def describe(self) -> str:
        return f"chmod {self.mode:04o} {self.dst}"


def data_ops(data: tuple[tuple[str, str, str | None, int | None], ...]) -> list[Op]:
    """Parent side: bwrap's data flags (kind, dst, src, mode) as ops; --file's source is read
    here, and its copy is 0644 (0755 if the source is executable; --chmod changes it)."""
    ops: list[Op] = []
    for kind, dst, src, mode in data:
        if kind == "symlink":
            assert src is not None
            ops.append(MakeLink(src, dst))
        elif kind == "dir":
            ops.append(MakeDir(dst, 0o755 if mode is None else mode))
        elif kind == "file":
            assert src is not None
            try:
                with open(src, "rb") as f:
                    content = f.read()
                    bits = 0o755 if os.fstat(f.fileno()).st_mode & 0o111 else 0o644
            except OSError as e:
                raise SpecError("--file", src, f"cannot read: {e.strerror}") from None
            ops.append(CopyFile(src, dst, content, bits))
        elif kind == "chmod":
            ops.append(Chmod(dst, 0o755 if mode is None else mode))
    return ops


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


@dataclass
class ProcReadOnly(Op):
    """Bind a path of the jail's /proc onto itself, read-only (skipped where it does not exist)."""

    dst: str

    def execute(self) -> None:
        path = NEW + self.dst
        if not os.path.exists(path):
            return
        linux.mount(path, path, None, linux.MS_BIND | linux.MS_REC)
        linux.mount_setattr(path, linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID
                            | linux.MOUNT_ATTR_NODEV | linux.MOUNT_ATTR_NOEXEC)


@dataclass
class ReadOnly(Op):
    """Make one mount read-only without touching the mounts beneath it."""

    dst: str

    def execute(self) -> None:
        linux.mount_setattr(chase(NEW, self.dst) if self.dst != "/" else NEW,
                            linux.MOUNT_ATTR_RDONLY, recursive=False)


@dataclass
class RootBind(Op):
    """A prepared root: bind it, recursively read-only unless asked otherwise, nosuid,nodev.

    The root arrives from the supervisor as an idmapped tree (tree_fd) when it can make one: the
    tree's on-disk ids 0..65535 then read as the same ids inside, so a root built by mkroot for
    uid 65534 is the jail user's. A writable root is idmapped too: what jail root writes there is
    owned by host root on disk, which the set-id wall (seccomp, docs/security.md) makes safe.
    """

    src: str
    readonly: bool
    dst: str = "/"
    tree_fd: int = -1

    def execute(self) -> None:
        attrs = linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV
        if self.tree_fd >= 0:
            linux.move_mount(self.tree_fd, NEW)
            os.close(self.tree_fd)
        else:
            linux.mount(OLD + self.src, NEW, None, linux.MS_BIND | linux.MS_REC)
        linux.mount_setattr(NEW, attrs | (linux.MOUNT_ATTR_RDONLY if self.readonly else 0))

    def describe(self) -> str:
        return f"root {self.src}{' (read-only)' if self.readonly else ''}"


@dataclass
class Overlay(Op):
    """A writable root over a prepared one: writes land in upper (a tmpfs, or a kept directory)."""

    lower: str
    keep_dir: str | None
    dst: str = "/"
    tree_fd: int = -1

    def execute(self) -> None:
        lower = OLD + self.lower
        if self.tree_fd >= 0:  # the idmapped prepared root, as in RootBind
            lower = "/lower"
            os.mkdir(lower, 0o755)
            linux.move_mount(self.tree_fd, lower)
            os.close(self.tree_fd)
        if self.keep_dir is None:
            os.mkdir("/overlay", 0o700)
            linux.mount("tmpfs", "/overlay", "tmpfs", _NOSUID_NODEV, "mode=700")
            base = "/overlay"
        else:
            base = OLD + self.keep_dir
        for d in ("upper", "work"):
            try:
                os.mkdir(f"{base}/{d}", 0o755)
            except FileExistsError:
                pass
        linux.mount("overlay", NEW, "overlay", _NOSUID_NODEV,
                    f"lowerdir={lower},upperdir={base}/upper,workdir={base}/work,"
                    "userxattr")

    def describe(self) -> str:
        return f"overlay {self.lower} (writes to {self.keep_dir or 'tmpfs'})"


@dataclass(frozen=True)
class MountPlan:
    """The ordered operations; root first, then by destination depth so parents come first."""

    ops: tuple[Op, ...]
    final: tuple[Op, ...]
    idmap_root: str | None = None  # a prepared root the supervisor should idmap
    root_src: str | None = None  # a prepared root the supervisor opens for the child


def etc_files(uid: int, gid: int, hostname: str, share_net: bool) -> list[File]:
    """The minimal /etc of the default root: root and the jail user, loopback names, files-only NSS."""
    name = "nobody" if uid == 65534 else "user"
    group = "nogroup" if gid == 65534 else "user"
    passwd = "root:x:0:0:root:/root:/bin/sh\n"
    groups = "root:x:0:\n"
    if uid != 0:
        passwd += f"{name}:x:{uid}:{gid}:{name}:/tmp:/bin/sh\n"
    if gid != 0:
        groups += f"{group}:x:{gid}:\n"
    files = [
        File("/etc/passwd", passwd.encode()),
        File("/etc/group", groups.encode()),
        File("/etc/hosts", f"127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{hostname}\n".encode()),
        File("/etc/nsswitch.conf", b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
             b"networks: files\nprotocols: files\nservices: files\nethers: files\nrpc: files\n"),
        File("/etc/hostname", f"{hostname}\n".encode()),
    ]
    if share_net:
        try:
            with open("/etc/resolv.conf", "rb") as f:
                files.append(File("/etc/resolv.conf", f.read()))
        except OSError:
            pass
    return files


# Host /etc files that hold public data every Debian machine has (netbase, mime-support, tzdata,
# base-files ...): copied into the default root's /etc as they are. docs/rootfs.md has the table.
ETC_COPIED = ("services", "protocols", "networks", "rpc", "ethertypes", "shells", "mime.types",
              "locale.alias", "gai.conf", "host.conf", "inputrc", "timezone", "debian_version",
              "ssl/openssl.cnf", "python3/debian_config", "python3.11/sitecustomize.py")
# Host /etc symlinks kept when they point into the read-only host directories.
ETC_LINKS = ("localtime", "os-release")
# Host /etc directories bound read-only when every entry is a symlink into the host directories
# (or a regular file among ETC_DIR_FILES): Debian's alternatives and the public CA certificates.
ETC_DIRS = ("alternatives", "ssl/certs")
ETC_DIR_FILES = frozenset({"README", "java"})  # alternatives' README, ssl/certs' java keystore


def _in_host_dirs(path: str) -> bool:
    path = os.path.normpath(path)
    return any(path == d or path.startswith(d + "/") for d in HOST_DIRS)


def _public_dir(d: str) -> bool:
    """Every entry of d is a link into HOST_DIRS or into d itself, a certificate (*.pem, *.crt:
    public by nature; keys live in ssl/private) or a known name."""
    try:
        entries = list(os.scandir(d))
    except OSError:
        return False
    for e in entries:
        if e.is_symlink():
            target = os.path.normpath(os.path.join(d, os.readlink(e.path)))
            if not (_in_host_dirs(target) or os.path.dirname(target) == d):
                return False
        elif not (e.name in ETC_DIR_FILES or e.name.endswith((".pem", ".crt"))):
            return False
    return True


_dir_cache: dict[tuple[str, int], bool] = {}


def etc_public() -> list[Op]:
    """What common programs read from /etc beyond etc_files(): public data files copied,
    symlinks into /usr kept, /etc/alternatives and /etc/ssl/certs bound read-only when they hold
    nothing but links into /usr (checked per jail; the scan is cached by the directory's mtime).
    Never the host's private files (shadow, ssh, sudoers, machine-id, ssl/private)."""
    ops: list[Op] = []
    for name in ETC_COPIED:
        try:
            with open("/etc/" + name, "rb") as f:
                ops.append(File("/etc/" + name, f.read()))
        except OSError:
            pass
    for name in ETC_LINKS:
        try:
            target = os.readlink("/etc/" + name)
        except OSError:
            continue
        if _in_host_dirs(os.path.join("/etc", target)):
            ops.append(Symlink(target, "/etc/" + name))
    for name in ETC_DIRS:
        d = "/etc/" + name
        try:
            key = (d, os.stat(d).st_mtime_ns)
        except OSError:
            continue
        if key not in _dir_cache:
            _dir_cache[key] = _public_dir(d)
        if _dir_cache[key]:
            ops.append(Bind(d, d, readonly=True))
    return ops


def tmp_size_default(memory: int | None) -> int:
    """The default /tmp cap: a quarter of the host's RAM, and no more than the jail's memory
    limit where one is set (the tmpfs's pages count toward the jail's memory cgroup anyway, and
    without a cgroup RLIMIT_AS does not see them). A cap, not a reservation."""
    page = os.sysconf("SC_PAGE_SIZE")
    size = max(page * os.sysconf("SC_PHYS_PAGES") // 4 // page * page, 64 << 20)
    return min(size, memory) if memory else size


def plan(*, rootfs: str | None, rw_root: bool, overlay: bool, overlay_dir: str | None,
         user_mounts: tuple[tuple[Any, ...], ...],
         uid: int, gid: int, hostname: str, new_net: bool, tmp_size: int,
         new_pid: bool = True,
         data: tuple[tuple[str, str, str | None, int | None], ...] = (),
         resolv_conf: str | None = None, proc: str = "fresh") -> MountPlan:
    """Parent side: everything the child will mount, in order. user_mounts: (kind, dst, src, size);
    data: bwrap's data flags (kind, dst, src, mode), made after the mounts of their depth;
    resolv_conf: the jail's own /etc/resolv.conf (--net user), written like a data flag;
    proc: fresh (the jail PID namespace's own), bind (the outer /proc read-only, where a
    container's masked /proc forbids a fresh one), none (walls.choose)."""
    ops: list[Op] = []
    final: list[Op] = []
    if rootfs is not None and overlay:
        ops.append(Overlay(rootfs, overlay_dir))
    elif rootfs is not None:
        ops.append(RootBind(rootfs, readonly=not rw_root))
    else:
        ops.append(Tmpfs("/", 16 << 20, 0o755))
        for d in HOST_DIRS:
            if os.path.islink(d):
                ops.append(Symlink(os.readlink(d), d))
            elif os.path.isdir(d):
                ops.append(Bind(d, d, readonly=True))
        ops.extend(etc_files(uid, gid, hostname, not new_net))
        ops.extend(etc_public())
        if os.path.exists("/etc/ld.so.cache"):
            ops.append(Bind("/etc/ld.so.cache", "/etc/ld.so.cache", readonly=True))
        if not rw_root:
            final.append(ReadOnly("/"))
    no_exec = _NOSUID_NODEV | linux.MS_NOEXEC
    if proc == "none":
        pass
    elif proc == "bind":  # recursive: the outer /proc's masks come along (and are locked)
        ops.append(Bind("/proc", "/proc", readonly=True, noexec=True))
    elif new_pid:
        ops.append(Special("proc", "/proc", no_exec))
    else:  # a proc of the host's PID namespace can only be bound, not mounted anew
        ops.append(Bind("/proc", "/proc", readonly=False, noexec=True))
    # The kernel's knobs stay read-only even for an id that could write them (--no-userns,
    # --unsafe-map-host-root): /proc/sys/kernel/core_pattern alone is host root.
    ops.extend(ProcReadOnly(p) for p in PROC_READ_ONLY)
    if new_net:
        ops.append(Special("sysfs", "/sys", no_exec | linux.MS_RDONLY))
    ops.append(Tmpfs("/dev", 1 << 20, 0o755, flags=linux.MS_NOSUID | linux.MS_NOEXEC))
    ops.extend(Bind("/dev/" + n, "/dev/" + n, readonly=False, devices=True) for n in DEV_NODES)
    ops.extend(Symlink(t, "/dev/" + n) for n, t in DEV_LINKS)
    ops.append(Special("devpts", "/dev/pts", linux.MS_NOSUID | linux.MS_NOEXEC,
                       "newinstance,ptmxmode=0666,mode=620"))
    ops.append(Tmpfs("/dev/shm", 64 << 20, 0o1777, flags=no_exec))
    ops.append(Special("mqueue", "/dev/mqueue", no_exec, optional=True))
    final.append(ReadOnly("/dev"))
    ops.append(Tmpfs("/tmp", tmp_size, 0o1777))
    for kind, dst, src, size, *flags in user_mounts:  # flags: spec.Mount's noexec, idmap
        if kind == "tmpfs":
            ops.append(Tmpfs(dst, size or (64 << 20), 0o755, owner=(uid, gid)))
        else:
            assert src is not None
            # open_tree needs CAP_SYS_ADMIN: without root the child binds from /oldroot
            ops.append(Bind(src, dst, readonly=(kind == "ro-bind"),
                            noexec=bool(flags and flags[0]), by_supervisor=os.geteuid() == 0,
                            idmap=len(flags) < 2 or bool(flags[1])))
    made = data_ops(data)
    if resolv_conf is not None:
        made.insert(0, File("/etc/resolv.conf", resolv_conf.encode()))
    chmods = [op for op in made if isinstance(op, Chmod)]
    ops.extend(op for op in made if not isinstance(op, Chmod))
    final[:0] = chmods
    mounted = [op.dst for op in ops[1:] if isinstance(op, (Tmpfs, Bind, Special))]
    if rootfs is not None and not rw_root and not overlay and \
            any(not any(_under(op.dst, m) for m in mounted) for op in made):
        # the read-only root has no room for them: a throw-away layer over it, read-only again
        # once they are made
        ops[0] = Overlay(rootfs, None)
        final.append(ReadOnly("/"))
    root, rest = ops[0], ops[1:]
    rest.sort(key=lambda op: op.dst.rstrip("/").count("/"))
    idmap = rootfs
    return MountPlan((root, *rest), tuple(final), idmap, rootfs)


def prepare_overlay_dir(path: str, owner: int | None) -> None:
    """Supervisor side: --overlay-dir's upper and work directories, owned by the jail's root
    (a host id of the jail's range), so the jail can write them and no write is host root's."""
    parent = os.path.abspath(path)
    while owner is not None and parent != "/":
        if not os.stat(parent).st_mode & 0o001:
            raise PermissionError(errno.EACCES, f"{parent} is not searchable by the jail's ids "
                                  "(it needs o+x): choose a directory the jail can reach", path)
        parent = os.path.dirname(parent)
    for d in ("upper", "work"):
        full = os.path.join(path, d)
        try:
            os.mkdir(full, 0o755)
        except FileExistsError:
            pass
        if owner is not None:
            os.chown(full, owner, owner, follow_symlinks=False)


def host_trees(p: MountPlan, owner_ns: Callable[[int, int], int] | None = None,
               notes: list[str] | None = None) -> list[int]:
    """Supervisor side: detached trees of the user's bind sources, opened with the caller's
    access and already nosuid,nodev[,ro]; sent to the child in plan order.

    A writable bind is idmapped when owner_ns is given: owner_ns(uid, gid) is a user namespace
    mapping the source's owner onto the jail user's host ids, so the jail user may write where
    the owner may and what it writes is the owner's (docs/design.md). On a filesystem that cannot
    idmap, the plain tree serves (writable only where the jail's own host ids may write) and a
    note says so.
    """
    fds: list[int] = []
    try:
        for op in p.ops:
            if isinstance(op, Bind) and op.by_supervisor:
                fd = linux.open_tree(op.src)
                fds.append(fd)
                if not op.readonly and op.idmap and owner_ns is not None:
                    st = os.fstat(fd)
                    try:
                        linux.idmap_tree(fd, owner_ns(st.st_uid, st.st_gid), op.attrs())
                        continue
                    except OSError as e:
                        if notes is not None:
                            notes.append(f"--bind {op.src}: not idmapped ({e.strerror}): the jail "
                                         "writes there only where its own host ids may")
                linux.set_tree_attrs(fd, op.attrs())
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def root_tree(p: MountPlan, userns_fd: int, host_range: range | None = None) -> int:
    """Supervisor side: a detached copy of the prepared root, opened with the caller's access (so
    a root below a directory the jail's ids cannot cross still works); read-only and idmapped
    where the plan allows and the filesystem can, else a plain tree; -1 without a prepared root.
    A --rw-root is idmapped too (writable): its on-disk ids 0..65535 are the jail's own, so the
    jail user writes what it owns in the tree and jail root writes everywhere; unless its top
    directory belongs to the jail's host ids (host_range): a tree chowned for the jail already."""
    if p.root_src is None:
        return -1
    fd = linux.open_tree(p.root_src)
    root = p.ops[0]
    writable = isinstance(root, RootBind) and not root.readonly
    if writable and host_range is not None and os.fstat(fd).st_uid in host_range:
        linux.set_tree_attrs(fd, linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV)
        return fd
    if p.idmap_root is not None and userns_fd >= 0:
        try:
            linux.idmap_tree(fd, userns_fd, (0 if writable else linux.MOUNT_ATTR_RDONLY)
                             | linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV)
        except OSError:
            pass  # e.g. a filesystem without idmapped-mount support: the plain tree serves
    return fd


def enter(p: MountPlan, log: "StepLog | None" = None, root_fd: int = -1,
          bind_fds: list[int] = []) -> None:
    """Child side: stop propagation, stage, assemble /newroot, pivot into it, detach the old root.

    root_fd is the idmapped prepared root, bind_fds the user's binds (host_trees()), if sent.
    """
    root = p.ops[0]
    if root_fd >= 0 and isinstance(root, (RootBind, Overlay)):
        root.tree_fd = root_fd
    fds = iter(bind_fds)
    for op in p.ops:
        if isinstance(op, Bind) and op.by_supervisor:
            op.tree_fd = next(fds, -1)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_SLAVE)
    linux.mount("tmpfs", SCRATCH, "tmpfs", _NOSUID_NODEV, "size=1m,mode=700")
    os.chdir(SCRATCH)
    os.mkdir("newroot", 0o755)
    os.mkdir("oldroot", 0o700)
    linux.pivot_root(".", "oldroot")
    os.chdir("/")
    for op in p.ops:
        _run(op, log)
    for op in p.final:
        _run(op, log)
    os.chdir(NEW)
    linux.pivot_root(".", ".")
    linux.umount2(".", linux.MNT_DETACH)
    os.chdir("/")


class StepLog:
    """Receives (description, error) per mount op; the pipeline turns it into step records."""

    def op(self, description: str) -> None:  # pragma: no cover - interface
        pass


def _run(op: Op, log: StepLog | None) -> None:
    try:
        op.execute()
    except OSError as e:
        detail = e.filename if isinstance(e.filename, str) else op.dst
        call = getattr(e, "syscall", "")
        what = f"{op.describe()} ({call})" if call and call not in op.describe() else op.describe()
        raise linux.SyscallError(e.errno or errno.EIO, what, detail) from None
    if log is not None:
        log.op(op.describe())
