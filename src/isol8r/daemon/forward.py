"""`--publish` for a `--net none` jail: a forwarder from host ports to the jail's loopback.

A `--net none` jail's namespace has only `lo`, and no stack to carry a published port in (the
stack of `--net user` would also give the jail a way out). So the supervisor binds each host
port itself (in its own namespace, before the program starts) and starts this process with
the listening sockets and descriptors of the jail's namespaces. It joins the jail's network
namespace (its user namespace first, for an unprivileged caller): the listeners stay in the
host's (a socket keeps the namespace it was made in), and every socket it makes from then on is
the jail's, so a connection accepted on the host is relayed to 127.0.0.1:JAIL_PORT of the jail,
and nothing else is reachable from it. Then it is confined as the egress proxy is
(daemon/egress.py confine: no capabilities, no_new_privs, its seccomp filter) and relays until
SIGTERM. TCP only: a datagram has no connection to relay (use --net user for /udp).

Bounded like the proxy: at most MAX_CONNECTIONS at once (one more is closed at once), BUFFER
bytes held per direction per connection (reading pauses when it is full).
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import sys
import time
from typing import Any

MAX_CONNECTIONS = 256
BUFFER = 64 * 1024
UDP_IDLE = 60.0  # seconds a UDP source's association is kept without traffic


class _Pair:
    """One relayed connection: the host's side and the jail's."""

    def __init__(self, outside: socket.socket, inside: socket.socket) -> None:
        self.sides = {"o": outside, "i": inside}
        self.bufs = {"o": bytearray(), "i": bytearray()}  # bytes to write to that side
        self.eof = {"o": False, "i": False}  # that side sent its last byte
        self.shut = {"o": False, "i": False}  # that side was told so
        self.connected = False
        self.masks = {"o": 0, "i": 0}


class Forwarder:
    """Host listeners -> 127.0.0.1:port in the namespace this process is in."""

    def __init__(self, listeners: list[tuple[socket.socket, int]]) -> None:
        self.sel = selectors.DefaultSelector()
        self.pairs: set[_Pair] = set()
        self.stopping = False
        # UDP: (host socket, source address) -> [the jail-side socket, last use]
        self.udp: dict[tuple[socket.socket, Any], list[Any]] = {}
        for sock, port in listeners:
            sock.setblocking(False)
            kind = "udp" if sock.type == socket.SOCK_DGRAM else "listen"
            self.sel.register(sock, selectors.EVENT_READ, (kind, port))

    def serve(self) -> None:
        while not self.stopping:
            for key, mask in self.sel.select(1.0):
                kind, what = key.data
                if kind == "listen":
                    self._accept(key.fileobj, what)  # type: ignore[arg-type]
                elif kind == "udp":
                    self._datagram(key.fileobj, what)  # type: ignore[arg-type]
                elif kind == "udp-reply":
                    self._reply(*what)
                else:
                    self._event(what, kind, mask)
            self._expire_udp(time.monotonic())

    def _datagram(self, outside: socket.socket, port: int) -> None:
        """A datagram from a host-side source: on to the jail's port through its own socket."""
        for _ in range(64):
            try:
                data, source = outside.recvfrom(65536)
            except OSError:
                return
            entry = self.udp.get((outside, source))
            if entry is None:
                if len(self.udp) >= MAX_CONNECTIONS:
                    continue  # refused: a datagram may be lost
                inside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                inside.setblocking(False)
                try:
                    inside.connect(("127.0.0.1", port))
                except OSError:
                    inside.close()
                    continue
                entry = self.udp[(outside, source)] = [inside, 0.0]
                self.sel.register(inside, selectors.EVENT_READ,
                                  ("udp-reply", (outside, source)))
            entry[1] = time.monotonic()
            try:
                entry[0].send(data)
            except OSError:
                pass  # nothing listens there (ECONNREFUSED): as a lost datagram

    def _reply(self, outside: socket.socket, source: Any) -> None:
        """The jail answered a source: back to it from the published port."""
        entry = self.udp.get((outside, source))
        if entry is None:
            return
        for _ in range(64):
            try:
                data = entry[0].recv(65536)
            except OSError:
                return
            entry[1] = time.monotonic()
            try:
                outside.sendto(data, source)
            except OSError:
                pass

    def _expire_udp(self, now: float) -> None:
        for key, (inside, last) in list(self.udp.items()):
            if now - last > UDP_IDLE:
                self.sel.unregister(inside)
                inside.close()
                del self.udp[key]

    def _accept(self, listener: socket.socket, port: int) -> None:
        for _ in range(64):
            try:
                outside, _ = listener.accept()
            except OSError:
                return
            if len(self.pairs) >= MAX_CONNECTIONS:
                outside.close()
                continue
            outside.setblocking(False)
            inside = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            inside.setblocking(False)
            err = inside.connect_ex(("127.0.0.1", port))
            if err not in (0, errno.EINPROGRESS):
                outside.close()
                inside.close()
                continue
            pair = _Pair(outside, inside)
            self.pairs.add(pair)
            self._interest(pair)

    def _event(self, pair: _Pair, side: str, mask: int) -> None:
        other = "i" if side == "o" else "o"
        sock = pair.sides[side]
        try:
            if side == "i" and not pair.connected and mask & selectors.EVENT_WRITE:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self._close(pair)  # nothing listens on the jail's port: as a refusal
                    return
                pair.connected = True
            if mask & selectors.EVENT_WRITE and pair.bufs[side]:
                n = sock.send(pair.bufs[side])
                del pair.bufs[side][:n]
            if mask & selectors.EVENT_READ and pair.connected:
                data = sock.recv(BUFFER)
                if data:
                    pair.bufs[other] += data
                else:
                    pair.eof[side] = True
            for s, o in (("o", "i"), ("i", "o")):  # pass an end on once its bytes are out
                if pair.eof[s] and not pair.bufs[o] and not pair.shut[o]:
                    pair.shut[o] = True
                    pair.sides[o].shutdown(socket.SHUT_WR)
        except OSError:
            self._close(pair)
            return
        if pair.shut["o"] and pair.shut["i"]:
            self._close(pair)
            return
        self._interest(pair)

    def _interest(self, pair: _Pair) -> None:
        for side, other in (("o", "i"), ("i", "o")):
            m = 0
            if side == "i" and not pair.connected:
                m = selectors.EVENT_WRITE
            else:
                if not pair.eof[side] and len(pair.bufs[other]) < BUFFER and pair.connected:
                    m |= selectors.EVENT_READ  # (the host's side waits for the jail's)
                if pair.bufs[side]:
                    m |= selectors.EVENT_WRITE
            old = pair.masks[side]
            if m != old:
                sock = pair.sides[side]
                if old and m:
                    self.sel.modify(sock, m, (side, pair))
                elif m:
                    self.sel.register(sock, m, (side, pair))
                else:
                    self.sel.unregister(sock)
                pair.masks[side] = m

    def close(self) -> None:
        for pair in list(self.pairs):
            self._close(pair)
        self._expire_udp(float("inf"))

    def _close(self, pair: _Pair) -> None:
        if pair not in self.pairs:
            return
        self.pairs.discard(pair)
        for side, sock in pair.sides.items():
            if pair.masks[side]:
                self.sel.unregister(sock)
            sock.close()


def main(argv: list[str]) -> int:
    """`python -m isol8r.daemon.forward [--uid UID] NETNS_FD USERNS_FD|-1 LISTEN_FD:JAIL_PORT...`
    (UID: the jail's helper id, egress.helper_id; default nobody)."""
    from isol8r.daemon.egress import NOBODY, confine
    from isol8r.sys import linux
    uid = NOBODY
    if argv[:1] == ["--uid"]:
        uid, argv = int(argv[1]), argv[2:]
    net_fd, user_fd = int(argv[0]), int(argv[1])
    listeners = []
    for spec in argv[2:]:
        fd, port = spec.split(":")
        listeners.append((socket.socket(fileno=int(fd)), int(port.split("/")[0])))
    if user_fd >= 0:  # an unprivileged caller: the jail's user namespace first
        linux.setns(user_fd, linux.CLONE_NEWUSER)
        os.close(user_fd)
    linux.setns(net_fd, linux.CLONE_NEWNET)
    os.close(net_fd)
    fwd = Forwarder(listeners)
    signal.signal(signal.SIGTERM, _stop)  # at once, also out of a select
    signal.pthread_sigmask(signal.SIG_SETMASK, ())  # a supervisor may have blocked SIGTERM
    try:
        confine(uid if user_fd < 0 else None, 2 * MAX_CONNECTIONS + 64)
    except Exception as e:  # fail closed, one line
        sys.stderr.write(f"isol8r: --publish: the forwarder could not be confined ({e}); "
                         "nothing is forwarded\n")
        return 1
    try:
        fwd.serve()
    except _Stopped:
        pass
    finally:
        fwd.close()
    return 0


class _Stopped(Exception):
    """SIGTERM: the jail ended."""


def _stop(_sig: int, _frame: object) -> None:
    raise _Stopped


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
