"""Messages of any size over SOCK_SEQPACKET: a big one travels in a memfd passed with it.

A datagram of a SOCK_SEQPACKET socket must fit its send buffer (net.core.wmem_default, ~208
KiB), so a request carrying 1 MiB of argv or environment fails with EMSGSIZE. Rather than
raising every buffer (wmem_max caps it) or turning each channel into a stream, a message above
INLINE bytes is written to a sealed memfd that goes as the last SCM_RIGHTS descriptor, and the
datagram holds only MARK and its length. Small messages, the common case, are sent exactly as
before: one sendmsg, no extra system call.

Built-in modules only: the CLI's thin client (cliserver.call) imports this.
"""

from __future__ import annotations

import _socket
import os
import sys

INLINE = 64 << 10  # bytes sent in the datagram itself
MAX = 64 << 20  # the largest message a receiver takes: argv and environment are 6 MiB at most
MARK = b"\0\xffisol8r-memfd\0"  # marshal and pickle data never start with a NUL
_SOL_SOCKET, _SCM_RIGHTS = 1, 1
SCM_MAX_FD = 253  # the most descriptors one message can carry
_SEALS = 0x0001 | 0x0002 | 0x0004 | 0x0008  # F_SEAL_SEAL, SHRINK, GROW, WRITE
_F_ADD_SEALS = 1033


def rights(fds: list[int] | tuple[int, ...]) -> list[tuple[int, int, bytes]]:
    """The ancillary data that passes fds (SCM_RIGHTS), none for none."""
    if not fds:
        return []
    return [(_SOL_SOCKET, _SCM_RIGHTS, b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds))]


def send(sock: object, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send one message with fds; one above INLINE bytes goes in a memfd."""
    if len(data) <= INLINE:
        sock.sendmsg([data], rights(fds))  # type: ignore[attr-defined]
        return
    fd = os.memfd_create("isol8r-message", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        import fcntl
        fcntl.fcntl(fd, _F_ADD_SEALS, _SEALS)  # the receiver reads what was sent, no more
        sock.sendmsg([MARK + len(data).to_bytes(8, "little")],  # type: ignore[attr-defined]
                     rights([*fds, fd]))
    finally:
        os.close(fd)


def ancillary_space(max_fds: int) -> int:
    """recvmsg's ancdata size for max_fds descriptors plus a message's memfd."""
    return _socket.CMSG_SPACE(4 * (max_fds + 1))


def fds_of(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors an SCM_RIGHTS message carried."""
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            fds.extend(int.from_bytes(payload[i:i + 4], sys.byteorder)
                       for i in range(0, len(payload) - len(payload) % 4, 4))
    return fds


def unpack(data: bytes, fds: list[int]) -> tuple[bytes, list[int]]:
    """A received datagram and its descriptors -> the message (read from its memfd when it came
    in one) and the descriptors sent with it. Raises OSError(EMSGSIZE) for a bad or huge memfd."""
    if not data.startswith(MARK):
        return data, fds
    if not fds:
        raise OSError(90, "a big message came without its memfd")  # EMSGSIZE
    fd, fds = fds[-1], fds[:-1]
    try:
        size = int.from_bytes(data[len(MARK):], "little")
        st = os.fstat(fd)
        if not (st.st_mode & 0o170000 == 0o100000 and st.st_size == size <= MAX):
            raise OSError(90, f"a big message's memfd is not the {size} bytes announced")
        chunks, at = [], 0
        while at < size:
            chunk = os.pread(fd, size - at, at)
            if not chunk:
                raise OSError(90, "a big message's memfd is short")
            chunks.append(chunk)
            at += len(chunk)
        return b"".join(chunks), fds
    except BaseException:
        for other in fds:
            os.close(other)
        raise
    finally:
        os.close(fd)


def recv(sock: object, size: int, max_fds: int) -> tuple[bytes, list[int]]:
    """One message (size: the largest datagram expected) and the descriptors sent with it."""
    data, anc, _, _ = sock.recvmsg(size, ancillary_space(max_fds))  # type: ignore[attr-defined]
    return unpack(data, fds_of(anc))
