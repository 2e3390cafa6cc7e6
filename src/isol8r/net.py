"""Network namespace: a new one holds only a loopback device, which starts down; bring it up.
Or, with --netns, the jail joins an existing one (enter_netns, leave_netns)."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from .sys import linux

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def loopback_up() -> None:
    """Child side: set IFF_UP on lo, as `ip link set lo up` would."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def enter_netns(path: str, dev: int, ino: int) -> int:
    """Parent side, --netns: move the calling thread into the network namespace at path (it
    must still be the one the Shape named, by device and inode) and return a descriptor of the
    one it left, for leave_netns. The jail is cloned from here: a child already in a user
    namespace of its own could not join a namespace the host's owns (setns needs CAP_SYS_ADMIN
    over the target's owner)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(target)
            if (st.st_dev, st.st_ino) != (dev, ino):
                raise linux.SyscallError(errno.ESTALE, "open", path)  # replaced since planned
            linux.setns(target, linux.CLONE_NEWNET)
        finally:
            os.close(target)
    except BaseException:
        os.close(own)
        raise
    return own


def leave_netns(own: int) -> None:
    """Back to the network namespace enter_netns left."""
    try:
        linux.setns(own, linux.CLONE_NEWNET)
    finally:
        os.close(own)


def listening(host: str, port: int) -> socket.socket:
    """A TCP socket listening on (host, port), IPv6 when host has a colon; port 0: the kernel
    picks one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def bound_udp(host: str, port: int) -> socket.socket:
    """A UDP socket bound to (host, port), IPv6 when host has a colon: --publish .../udp."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def listen_in(pid: int, host: str, port: int) -> socket.socket:
    """A TCP listener made in the network namespace of pid, from this thread (which goes back
    to its own namespace before this returns): --allow-domain's proxy serves the jail's own
    loopback from the host's namespace."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        linux.setns(target, linux.CLONE_NEWNET)
        try:
            return listening(host, port)
        finally:
            linux.setns(own, linux.CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(own)


# --net user: addresses the jail's own routing table refuses (a `prohibit` route: a connect
# fails at once with EACCES, no packet reaches the stack). The metadata service of the clouds
# (AWS, GCP, Azure, OpenStack: 169.254.169.254; AWS over IPv6: fd00:ec2::254) answers anyone
# who can reach it with the machine's credentials.
METADATA = ("169.254.169.254/32", "fd00:ec2::254/128")

_RTM_NEWROUTE, _NLMSG_ERROR = 24, 2
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
_RT_TABLE_MAIN, _RTPROT_STATIC, _RTN_PROHIBIT, _RTA_DST = 254, 4, 8, 1


def _prohibit_route(cidr: str, seq: int) -> bytes:
    """One RTM_NEWROUTE message: `ip route add prohibit CIDR`."""
    addr, bits = cidr.split("/")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    raw = socket.inet_pton(family, addr)
    rta = struct.pack("HH", 4 + len(raw), _RTA_DST) + raw
    rtm = struct.pack("BBBBBBBBI", family, int(bits), 0, 0, _RT_TABLE_MAIN, _RTPROT_STATIC,
                      0, _RTN_PROHIBIT, 0)
    body = rtm + rta
    flags = _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_EXCL
    return struct.pack("IHHII", 16 + len(body), _RTM_NEWROUTE, flags, seq, 0) + body


def prohibit(cidrs: tuple[str, ...]) -> None:
    """In the calling thread's network namespace: a `prohibit` route to each of cidrs (an IPv6
    one is skipped where the namespace has no IPv6). Raises OSError on a refusal."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0) as s:
        for seq, cidr in enumerate(cidrs, 1):
            if ":" in cidr and not os.path.exists("/proc/sys/net/ipv6"):
                continue
            s.send(_prohibit_route(cidr, seq))
            reply = s.recv(4096)
            kind = struct.unpack_from("IHHII", reply)[1]
            err = -struct.unpack_from("i", reply, 16)[0] if kind == _NLMSG_ERROR else 0
            if err and err not in (errno.EEXIST, errno.EAFNOSUPPORT):
                raise OSError(err, f"{os.strerror(err)}: route prohibit {cidr}")


def prohibit_in(pid: int, cidrs: tuple[str, ...] = METADATA) -> None:
    """prohibit(cidrs) in the network namespace of pid, from this thread (which goes back to
    its own namespace before this returns). Root; an unprivileged caller uses prohibit_joined."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        linux.setns(target, linux.CLONE_NEWNET)
        try:
            prohibit(cidrs)
        finally:
            linux.setns(own, linux.CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(own)


def prohibit_joined(user_fd: int, net_fd: int, cidrs: tuple[str, ...]) -> None:
    """For an unprivileged caller: prohibit(cidrs) in the network namespace net_fd, from a
    forked child (single-threaded, as joining a user namespace needs) that first joins the user
    namespace user_fd (the jail's, which the caller made and so has every capability in)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        child = os.fork()
        if child == 0:
            code = 0
            try:
                linux.setns(user_fd, linux.CLONE_NEWUSER)
                linux.setns(net_fd, linux.CLONE_NEWNET)
                prohibit(cidrs)
            except OSError as e:
                code = e.errno or errno.EIO
            os.write(w, code.to_bytes(2, "little"))
            os._exit(0)
        os.close(w)
        w = -1
        answer = os.read(r, 2)
        os.waitpid(child, 0)
        err = int.from_bytes(answer, "little") if len(answer) == 2 else errno.EIO
        if err:
            raise OSError(err, f"{os.strerror(err)}: route prohibit in the jail")
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def listen_joined(user_fd: int, net_fd: int, host: str, port: int) -> socket.socket:
    """For an unprivileged caller: listening(host, port) made in the network namespace net_fd,
    by a forked child that joins the user namespace user_fd first (as prohibit_joined) and
    sends the socket back (SCM_RIGHTS)."""
    parent, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        child = os.fork()
        if child == 0:
            try:
                linux.setns(user_fd, linux.CLONE_NEWUSER)
                linux.setns(net_fd, linux.CLONE_NEWNET)
                sock = listening(host, port)
                socket.send_fds(child_end, [b"0"], [sock.fileno()])
            except OSError as e:
                try:
                    child_end.send(str(e.errno or errno.EIO).encode())
                except OSError:
                    pass
            os._exit(0)
        child_end.close()
        parent.settimeout(10)
        try:
            msg, fds, _flags, _addr = socket.recv_fds(parent, 16, 1)
        finally:
            os.waitpid(child, 0)
        if msg != b"0" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            err = int(msg) if msg.isdigit() else errno.EIO
            raise OSError(err, f"{os.strerror(err)}: listen in the jail")
        return socket.socket(fileno=fds[0])
    finally:
        parent.close()
        child_end.close()
