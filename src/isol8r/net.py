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
