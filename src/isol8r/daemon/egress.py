"""The egress proxy: a jail's only way out under `--allow-domain`, HTTP (CONNECT and absolute
URIs) and SOCKS5 (CONNECT) on the same listening socket, chosen by the first byte.

Why a proxy and not a packet filter: the allow-list is of names, and only a proxy sees the name
a program asked for (a filter sees addresses, many names share one). The proxy resolves the name
itself and refuses any address in a refused class (loopback, link-local with the 169.254.169.254
metadata service, private, CGNAT, unspecified, multicast, broadcast, reserved) or one of the
host's own, unless an address rule names it (see `isol8r.egress_rules` for the rule syntax), so
an allowed name that resolves to 127.0.0.1 gets nowhere. A request naming a bare address is
refused unless an address rule names it.

One thread runs the selector loop; only name resolution (blocking `getaddrinfo`) runs in a small
bounded pool of threads, so a slow resolver cannot stall the other connections. Everything is
bounded: connections (`Limits.max_connections`; one over is closed at once and recorded), request
header size, per-direction buffers, the time to send a request, to resolve and connect, and idle
time once relaying. Every refusal is recorded as a `Denial` (host, port, reason, time) in a
bounded list, and counted.

Plain-HTTP requests are forwarded one per connection (`Connection: close` is asked of the
server) and Proxy-* headers are dropped. What the proxy cannot see: the bytes inside a CONNECT
tunnel (a Host header or TLS SNI that differs from the CONNECT target goes to the target the
proxy checked, never anywhere else).
"""

from __future__ import annotations

import collections
import errno
import selectors
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import urlsplit

from isol8r import net
from isol8r.egress_rules import Address, Policy, address_of, normalize_host, split_host_port

Resolver = Callable[[str], Iterable[str]]


@dataclass(frozen=True)
class Limits:
    """The proxy's bounds; the defaults suit one jail."""

    max_connections: int = 256
    max_header: int = 16 * 1024      # request line + headers, or a SOCKS greeting + request
    buffer: int = 64 * 1024          # bytes held per direction before reading pauses
    request_timeout: float = 10.0    # from accept to a complete request
    connect_timeout: float = 10.0    # resolving and connecting
    idle_timeout: float = 300.0      # relaying with no byte either way
    max_denials: int = 256           # denials kept in the list (all are counted)
    resolver_threads: int = 4


@dataclass(frozen=True)
class Denial:
    """One refused request: what the jail asked for, why not, and when (Unix time)."""

    host: str
    port: int
    reason: str
    time: float


def system_resolver(host: str) -> list[str]:
    """Addresses for host by the host's own resolver (getaddrinfo: /etc/hosts, DNS, ...)."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def host_addresses() -> frozenset[Address]:
    """The addresses of this network namespace's interfaces (the proxy host's own): a jail
    must not reach the host's services through them. Read from /proc, no netlink needed."""
    out: set[Address] = set()
    try:
        with open("/proc/net/fib_trie") as f:
            last = None
            for line in f:
                s = line.strip()
                if s.startswith("|--"):
                    last = s[3:].strip()
                elif s == "/32 host LOCAL" and last:
                    addr = address_of(last)
                    if addr is not None:
                        out.add(addr)
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                h = line.split()[0]
                addr = address_of(":".join(h[i:i + 4] for i in range(0, 32, 4)))
                if addr is not None:
                    out.add(addr)
    except OSError:
        pass
    return frozenset(out)


def proxy_env(host: str, port: int) -> dict[str, str]:
    """The environment that sends pip, npm, curl and git through the proxy at host:port."""
    http = f"http://{host}:{port}"
    socks = f"socks5h://{host}:{port}"
    env = {"HTTP_PROXY": http, "HTTPS_PROXY": http, "ALL_PROXY": socks, "NO_PROXY": ""}
    env.update({k.lower(): v for k, v in env.items()})
    return env


# SOCKS5 reply codes (RFC 1928)
_SOCKS_OK, _SOCKS_FAIL, _SOCKS_DENIED, _SOCKS_UNREACH, _SOCKS_REFUSED = 0, 1, 2, 4, 5
_SOCKS_BAD_CMD, _SOCKS_BAD_ATYP = 7, 8
_HOP_HEADERS = {b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive"}


class _Conn:
    """One client connection and, once admitted, its upstream socket."""

    def __init__(self, client: socket.socket, now: float) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.kind = ""                  # "http" or "socks"
        self.state = "head"             # head -> resolving -> connecting -> relay | closing
        self.inbuf = bytearray()        # request bytes not yet parsed
        self.to_up = bytearray()
        self.to_client = bytearray()
        self.client_eof = self.up_eof = False
        self.up_shut = self.client_shut = False
        self.deadline = now
        self.host, self.port = "", 0
        self.addrs: list[Address] = []
        self.ok_reply = b""
        self.closed = False
        self.greeted = False            # SOCKS: the method reply was sent
        self.masks: dict[int, int] = {}


class EgressProxy:
    """The proxy for one allow-list. `listen`/`adopt` sockets, then `serve()` until `stop()`."""

    def __init__(self, policy: Policy, *, resolver: Resolver | None = None,
                 limits: Limits = Limits()) -> None:
        self.policy = policy
        self.limits = limits
        self.resolver: Resolver = resolver or system_resolver
        self.denials: collections.deque[Denial] = collections.deque(maxlen=limits.max_denials)
        self.denied_count = 0
        self.accepted = 0
        self._sel = selectors.DefaultSelector()
        self._listeners: list[socket.socket] = []
        self._conns: set[_Conn] = set()
        self._pool = ThreadPoolExecutor(max_workers=limits.resolver_threads,
                                        thread_name_prefix="egress-resolve")
        self._done: collections.deque[tuple[_Conn, Future[Iterable[str]]]] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False

    # -- set-up and teardown ------------------------------------------------------------------

    def listen(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Open a listening socket; returns its address (port 0: one the kernel picks)."""
        sock = net.listening(host, port)
        self.adopt(sock)
        name = sock.getsockname()
        return name[0], name[1]

    def adopt(self, sock: socket.socket) -> None:
        """Serve an already listening socket, e.g. one made inside a jail's network namespace."""
        sock.setblocking(False)
        self._listeners.append(sock)
        self._sel.register(sock, selectors.EVENT_READ, sock)

    @property
    def active(self) -> int:
        """Client connections open now."""
        return len(self._conns)

    def stop(self) -> None:
        """Ask `serve()` to return; safe from another thread."""
        self._stopping = True
        self._wake()

    def close(self) -> None:
        """Close every socket and the resolver pool; the proxy cannot serve again."""
        for conn in list(self._conns):
            self._close(conn)
        for sock in self._listeners:
            self._sel.unregister(sock)
            sock.close()
        self._listeners.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._sel.unregister(self._wake_r)
        self._wake_r.close()
        self._wake_w.close()
        self._sel.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # -- the loop -----------------------------------------------------------------------------

    def serve(self) -> None:
        """Run the loop until `stop()`."""
        while not self._stopping:
            self.step(1.0)
        self._stopping = False

    def step(self, timeout: float) -> None:
        """One round of the loop: wait up to timeout, handle what is ready, expire the late."""
        now = time.monotonic()
        soonest = min((c.deadline for c in self._conns), default=now + timeout)
        for key, mask in self._sel.select(max(0.0, min(timeout, soonest - now))):
            if key.data is None:
                try:
                    self._wake_r.recv(4096)
                except OSError:
                    pass
            elif isinstance(key.data, socket.socket):
                self._accept(key.data)
            else:
                conn, side = key.data
                if not conn.closed:
                    self._event(conn, side, mask)
        while self._done:
            conn, fut = self._done.popleft()
            if not conn.closed and conn.state == "resolving":
                self._resolved(conn, fut)
        now = time.monotonic()
        for conn in [c for c in self._conns if c.deadline <= now]:
            self._expire(conn)

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(64):
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.accepted += 1
            if len(self._conns) >= self.limits.max_connections:
                sock.close()
                self._deny("", 0, "connection limit")
                continue
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic() + self.limits.request_timeout)
            self._conns.add(conn)
            self._interest(conn)

    # -- events -------------------------------------------------------------------------------

    def _event(self, conn: _Conn, side: str, mask: int) -> None:
        try:
            if side == "c":
                if mask & selectors.EVENT_WRITE:
                    self._flush(conn, conn.client, conn.to_client)
                if mask & selectors.EVENT_READ and not conn.closed:
                    self._read_client(conn)
            else:
                if conn.state == "connecting" and mask & selectors.EVENT_WRITE:
                    self._connected(conn)
                else:
                    if mask & selectors.EVENT_WRITE:
                        assert conn.upstream is not None
                        self._flush(conn, conn.upstream, conn.to_up)
                    if mask & selectors.EVENT_READ and not conn.closed:
                        self._read_upstream(conn)
        except OSError:
            self._close(conn)
            return
        if not conn.closed:
            self._progress(conn)

    def _flush(self, conn: _Conn, sock: socket.socket, buf: bytearray) -> None:
        if buf:
            n = sock.send(buf)
            del buf[:n]
            self._touch(conn)

    def _read_client(self, conn: _Conn) -> None:
        data = conn.client.recv(self.limits.buffer)
        if conn.state == "relay":
            if data:
                conn.to_up += data
                self._touch(conn)
            else:
                conn.client_eof = True
            return
        if not data:  # gone before a complete request
            self._close(conn)
            return
        if conn.state != "head":  # bytes sent while resolving or connecting: keep, bounded
            conn.to_up += data
            if len(conn.to_up) > self.limits.buffer:
                self._close(conn)
            return
        conn.inbuf += data
        if not conn.kind:
            first = conn.inbuf[0]
            conn.kind = "socks" if first == 5 else "http"
        if conn.kind == "socks":
            self._socks(conn)
        else:
            self._http(conn)

    def _read_upstream(self, conn: _Conn) -> None:
        assert conn.upstream is not None
        data = conn.upstream.recv(self.limits.buffer)
        if data:
            conn.to_client += data
            self._touch(conn)
        else:
            conn.up_eof = True

    def _touch(self, conn: _Conn) -> None:
        if conn.state == "relay":
            conn.deadline = time.monotonic() + self.limits.idle_timeout

    def _progress(self, conn: _Conn) -> None:
        """After an event: half-close what is done, close what is finished, set interest."""
        if conn.state == "closing":
            if not conn.to_client:
                self._close(conn)
                return
        elif conn.state == "relay":
            assert conn.upstream is not None
            if conn.client_eof and not conn.to_up and not conn.up_shut:
                conn.up_shut = True
                conn.upstream.shutdown(socket.SHUT_WR)
            if conn.up_eof and not conn.to_client and not conn.client_shut:
                conn.client_shut = True
                conn.client.shutdown(socket.SHUT_WR)
            if conn.up_shut and conn.client_shut:
                self._close(conn)
                return
        self._interest(conn)

    def _interest(self, conn: _Conn) -> None:
        R, W = selectors.EVENT_READ, selectors.EVENT_WRITE
        full = self.limits.buffer
        c = 0
        if conn.state == "head" and len(conn.inbuf) <= self.limits.max_header:
            c |= R
        elif conn.state in ("resolving", "connecting"):
            c |= R if len(conn.to_up) <= full else 0
        elif conn.state == "relay" and not conn.client_eof and len(conn.to_up) < full:
            c |= R
        if conn.to_client:
            c |= W
        self._set(conn, conn.client, c, "c")
        if conn.upstream is not None:
            u = 0
            if conn.state == "connecting" or conn.to_up:
                u |= W
            if conn.state == "relay" and not conn.up_eof and len(conn.to_client) < full:
                u |= R
            self._set(conn, conn.upstream, u, "u")

    def _set(self, conn: _Conn, sock: socket.socket, mask: int, side: str) -> None:
        fd = sock.fileno()
        old = conn.masks.get(fd, 0)
        if mask == old:
            return
        if old and mask:
            self._sel.modify(sock, mask, (conn, side))
        elif mask:
            self._sel.register(sock, mask, (conn, side))
        else:
            self._sel.unregister(sock)
        conn.masks[fd] = mask

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        for sock in (conn.client, conn.upstream):
            if sock is None:
                continue
            if conn.masks.get(sock.fileno()):
                self._sel.unregister(sock)
            sock.close()

    def _expire(self, conn: _Conn) -> None:
        if conn.state == "head":
            self._fail(conn, 408, _SOCKS_FAIL, "request timeout")
        elif conn.state in ("resolving", "connecting"):
            self._fail(conn, 504, _SOCKS_UNREACH, "connect timeout")
        else:
            self._close(conn)

    # -- replies ------------------------------------------------------------------------------

    def _deny(self, host: str, port: int, reason: str) -> None:
        self.denied_count += 1
        self.denials.append(Denial(host, port, reason, time.time()))

    def _drop_upstream(self, conn: _Conn) -> None:
        """Close a connection's upstream side, if it has one (a failed or abandoned attempt)."""
        if conn.upstream is not None:
            if conn.masks.get(conn.upstream.fileno()):
                self._sel.unregister(conn.upstream)
            conn.masks.pop(conn.upstream.fileno(), None)
            conn.upstream.close()
            conn.upstream = None

    def _fail(self, conn: _Conn, status: int, socks_code: int, reason: str) -> None:
        """Answer with an error and close once it is sent (never leaves the client waiting)."""
        self._drop_upstream(conn)
        conn.to_up.clear()
        if conn.kind == "socks":
            conn.to_client[:] = bytes([5, socks_code, 0, 1, 0, 0, 0, 0, 0, 0])
        else:
            body = f"isol8r egress: {reason}\n".encode()
            conn.to_client[:] = (
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n").encode() + body
        conn.state = "closing"
        conn.deadline = time.monotonic() + 5.0
        self._interest(conn)

    def _refuse(self, conn: _Conn, reason: str) -> None:
        self._deny(conn.host, conn.port, reason)
        self._fail(conn, 403, _SOCKS_DENIED, f"{conn.host}:{conn.port} denied: {reason}")

    # -- HTTP ---------------------------------------------------------------------------------

    def _http(self, conn: _Conn) -> None:
        end = conn.inbuf.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.inbuf) > self.limits.max_header:
                self._fail(conn, 431, 0, "request header too large")
            return
        if end + 4 > self.limits.max_header:
            self._fail(conn, 431, 0, "request header too large")
            return
        head = bytes(conn.inbuf[:end])
        rest = bytes(conn.inbuf[end + 4:])
        conn.inbuf.clear()
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[0].isalpha():
            self._fail(conn, 400, 0, "malformed request line")
            return
        method, target, version = parts
        try:
            target_text = target.decode("ascii")
        except UnicodeDecodeError:
            self._fail(conn, 400, 0, "malformed request target")
            return
        if method == b"CONNECT":
            try:
                host, port = split_host_port(target_text)
            except ValueError:
                port = None
            if port is None or not host:
                self._fail(conn, 400, 0, "CONNECT needs host:port")
                return
            conn.ok_reply = b"HTTP/1.1 200 Connection established\r\n\r\n"
            conn.to_up += rest
            self._admit(conn, host, port)
            return
        try:
            url = urlsplit(target_text)
            port = url.port or 80
        except ValueError:
            self._fail(conn, 400, 0, "malformed request target")
            return
        if url.scheme.lower() != "http" or not url.hostname or "@" in url.netloc:
            self._fail(conn, 400, 0, "a proxy request needs an absolute http:// URI "
                       "(use CONNECT for https)")
            return
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        out = [method + b" " + path.encode("ascii") + b" " + version]
        has_host = False
        for line in lines[1:]:
            name = line.split(b":", 1)[0].strip().lower()
            if b":" not in line or name in _HOP_HEADERS:
                continue
            has_host |= name == b"host"
            out.append(line)
        if not has_host:
            out.append(b"Host: " + url.netloc.encode("ascii"))
        out.append(b"Connection: close")
        conn.to_up += b"\r\n".join(out) + b"\r\n\r\n" + rest
        conn.ok_reply = b""
        self._admit(conn, url.hostname, port)

    # -- SOCKS5 -------------------------------------------------------------------------------

    def _socks(self, conn: _Conn) -> None:
        buf = conn.inbuf
        if len(buf) > 512:  # a greeting and a request fit in 2 + 255 + 262 bytes
            self._fail(conn, 0, _SOCKS_FAIL, "SOCKS request too large")
            return
        if len(buf) < 2 or len(buf) < 2 + buf[1]:
            return
        methods = bytes(buf[2:2 + buf[1]])
        req = buf[2 + buf[1]:]
        if not conn.greeted:
            if 0 not in methods:
                conn.to_client += b"\x05\xff"
                conn.state = "closing"
                conn.deadline = time.monotonic() + 5.0
                return
            conn.to_client += b"\x05\x00"
            conn.greeted = True
        if len(req) < 5:
            return
        if req[0] != 5:
            self._fail(conn, 0, _SOCKS_FAIL, "bad SOCKS request")
            return
        cmd, atyp = req[1], req[3]
        if atyp == 1:
            need, host = 4 + 4 + 2, None
        elif atyp == 4:
            need, host = 4 + 16 + 2, None
        elif atyp == 3:
            need, host = 4 + 1 + req[4] + 2, None
        else:
            self._fail(conn, 0, _SOCKS_BAD_ATYP, "SOCKS address type not supported")
            return
        if len(req) < need:
            return
        if cmd != 1:
            self._fail(conn, 0, _SOCKS_BAD_CMD, "only SOCKS CONNECT is supported")
            return
        raw = bytes(req[4:need - 2])
        port = int.from_bytes(req[need - 2:need], "big")
        if atyp == 1:
            host = socket.inet_ntop(socket.AF_INET, raw)
        elif atyp == 4:
            host = socket.inet_ntop(socket.AF_INET6, raw)
        else:
            host = raw[1:].decode("latin-1")
        conn.to_up += req[need:]
        conn.inbuf.clear()
        conn.ok_reply = bytes([5, _SOCKS_OK, 0, 1, 0, 0, 0, 0, 0, 0])
        self._admit(conn, host, port)

    # -- admission, resolution, connection ----------------------------------------------------

    def _admit(self, conn: _Conn, host: str, port: int) -> None:
        conn.host, conn.port = host, port
        reason = self.policy.admits_request(host, port)
        if reason is None and port == 0:
            reason = "port 0"
        if reason is not None:
            self._refuse(conn, reason)
            return
        norm = normalize_host(host)
        assert norm is not None
        conn.state = "resolving"
        conn.deadline = time.monotonic() + self.limits.connect_timeout
        literal = address_of(norm)
        if literal is not None:
            fut: Future[Iterable[str]] = Future()
            fut.set_result([norm])
            self._resolved(conn, fut)
            return
        fut = self._pool.submit(self.resolver, norm)
        fut.add_done_callback(lambda f, c=conn: (self._done.append((c, f)), self._wake()))
        self._interest(conn)

    def _resolved(self, conn: _Conn, fut: Future[Iterable[str]]) -> None:
        try:
            found = [a for a in (address_of(str(x)) for x in fut.result()) if a is not None]
        except Exception:  # the resolver's failure is the request's, never the proxy's
            found = []
        if not found:
            self._deny(conn.host, conn.port, "name does not resolve")
            self._fail(conn, 502, _SOCKS_UNREACH, f"{conn.host}: name does not resolve")
            return
        allowed, first_refusal = [], None
        for addr in found:
            why = self.policy.address_refusal(addr, conn.port)
            if why is None:
                allowed.append(addr)
            elif first_refusal is None:
                first_refusal = why
        if not allowed:
            self._refuse(conn, first_refusal or "refused")
            return
        conn.addrs = allowed
        conn.state = "connecting"
        self._try_next(conn)

    def _try_next(self, conn: _Conn) -> None:
        self._drop_upstream(conn)
        if not conn.addrs:
            self._fail(conn, 502, _SOCKS_REFUSED, f"{conn.host}:{conn.port}: connection failed")
            return
        addr = conn.addrs.pop(0)
        family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        conn.upstream = sock
        err = sock.connect_ex((str(addr), conn.port))
        if err not in (0, errno.EINPROGRESS):
            self._try_next(conn)
            return
        self._interest(conn)

    def _connected(self, conn: _Conn) -> None:
        assert conn.upstream is not None
        if conn.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._try_next(conn)
            return
        conn.state = "relay"
        conn.to_client += conn.ok_reply
        self._touch(conn)


_REASONS = {400: "Bad Request", 403: "Forbidden", 408: "Request Timeout",
            431: "Request Header Fields Too Large", 502: "Bad Gateway", 504: "Gateway Timeout"}


def serve_in_thread(proxy: EgressProxy) -> threading.Thread:
    """Run proxy.serve() in a daemon thread (tests, and a library caller's own process)."""
    t = threading.Thread(target=proxy.serve, name="isol8r-egress", daemon=True)
    t.start()
    return t


# A root supervisor's jail helpers (this proxy, the --publish forwarder) run under an id of
# their jail's own (`--uid`: supervisor.helper_uid, from spec.HELPER_IDS), shared with no other
# process of the host, no jail and no other jail's helper; non-dumpable and the filter
# (RELAY_NEVER) add to that. NOBODY is what one started without an id runs as.
NOBODY = 65534

# What a relay never needs: a deny-list, so the interpreter and the resolver (NSS modules,
# sockets, files) run unchanged, and everything that changes the process, the system or another
# process fails with EPERM.
RELAY_NEVER = (
    "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsmount",
    "fsconfig", "fspick", "mount_setattr", "unshare", "setns", "bpf", "perf_event_open",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "keyctl", "add_key",
    "request_key", "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl",
    "open_by_handle_at", "name_to_handle_at", "fanotify_init", "mknod", "mknodat",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
    "setfsuid", "setfsgid", "capset", "personality", "kill", "tkill", "pidfd_send_signal",
    "pidfd_open", "pidfd_getfd", "settimeofday", "clock_settime", "adjtimex", "sethostname",
    "setdomainname", "vhangup", "iopl", "ioperm", "lookup_dcookie", "nfsservctl",
)
_AF_PACKET = 17
_SECCOMP_FILTER_FLAG_TSYNC = 1


def relay_filter(pid: int) -> bytes:
    """The proxy's seccomp filter (BPF): RELAY_NEVER, packet sockets, and tgkill of any
    process but this one, fail with EPERM; a call of another ABI kills it."""
    from isol8r.seccomp import ALLOW, EPERM, Condition, Policy, Rule
    from isol8r.seccomp.abi import NATIVE, split_present
    from isol8r.seccomp.compiler import build
    names, _absent = split_present(dict.fromkeys(RELAY_NEVER), (NATIVE,))
    rules = (Rule(tuple(names), EPERM, note="a relay never needs these"),
             Rule(("socket",), EPERM, (Condition(0, "eq", _AF_PACKET),), "packet sockets"),
             Rule(("tgkill",), EPERM, (Condition(0, "ne", pid),), "signals to others"))
    return build(Policy("isol8r egress proxy", ALLOW, rules, (NATIVE,)))


def confine(uid: int | None, max_fds: int) -> None:
    """Take from this process every privilege a relay does not need, once its listening
    socket is open and before it serves: the bounding set emptied and the uid (and gid, with
    no supplementary groups) changed from root, which clears the other capability sets; no
    ambient ones, no_new_privs, non-dumpable; at most max_fds descriptors (RLIMIT_NOFILE);
    the relay_filter loaded on every thread. Raises OSError if any step fails: a proxy that
    could not be confined does not serve. uid None: keep the ids (a process in a jail's user
    namespace, where they are the caller's own), drop the capabilities all the same."""
    import os
    import resource
    from isol8r.sys import linux
    bpf = linux.SeccompProgram(relay_filter(os.getpid()))  # libseccomp loaded while it can be
    if uid is not None and os.geteuid() == 0:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
        for cap in range(last + 1):
            linux.prctl(linux.PR_CAPBSET_DROP, cap)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL)
    linux.capset(0, 0, 0)
    linux.prctl(linux.PR_SET_DUMPABLE, 0)
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max_fds, max_fds))
    bpf.load(_SECCOMP_FILTER_FLAG_TSYNC)


def serve_jail(fd: int, patterns: list[str], uid: int = NOBODY) -> int:
    """`--jail FD [--uid UID] PATTERN...`: a jail's proxy (--allow-domain), started by its
    supervisor.

    FD listens on the jail's own loopback (the supervisor made it inside the jail's network
    namespace); this process stays in the host's, where it resolves and connects, confined
    (`confine`: uid and gid UID, default nobody) once it has started. It serves until
    SIGTERM, then writes its denials to stdout as one JSON document (the supervisor puts them
    in the Result's net_denied) and exits.
    """
    import importlib
    importlib.import_module("encodings.idna")  # getaddrinfo's codec, while it still can be
    import json
    import signal
    import sys
    limits = Limits()
    proxy = EgressProxy(Policy.parse(patterns, host_addresses()), limits=limits)
    proxy.adopt(socket.socket(fileno=fd))
    signal.signal(signal.SIGTERM, lambda _s, _f: proxy.stop())
    signal.pthread_sigmask(signal.SIG_SETMASK, ())  # a supervisor may have blocked SIGTERM
    # two sockets a connection, the listener, the wake pair, the selector, stdio, the resolver's
    try:
        confine(uid, 2 * limits.max_connections + 64)
    except Exception as e:  # fail closed: the jail has no way out, and one line says why
        sys.stderr.write(f"isol8r: --allow-domain: the egress proxy could not be confined "
                         f"({e}); the jail has no network\n")
        return 1
    try:
        proxy.serve()
    finally:
        proxy.close()
        denied = [{"host": d.host, "port": d.port, "reason": d.reason, "time": d.time}
                  for d in proxy.denials]
        sys.stdout.write(json.dumps({"denied": denied, "count": proxy.denied_count}))
        sys.stdout.flush()
    return 0


def main(argv: list[str]) -> int:
    """`python -m isol8r.daemon.egress HOST:PORT PATTERN...`: a proxy by hand (PORT 0: any)."""
    import sys
    if argv[:1] == ["--jail"] and len(argv) >= 2:
        if argv[2:3] == ["--uid"] and len(argv) >= 4:
            return serve_jail(int(argv[1]), argv[4:], int(argv[3]))
        return serve_jail(int(argv[1]), argv[2:])
    if len(argv) < 1:
        print("usage: python -m isol8r.daemon.egress HOST:PORT PATTERN[:PORT]...", file=sys.stderr)
        return 2
    host, _, port = argv[0].rpartition(":")
    try:
        policy = Policy.parse(argv[1:], host_addresses())
        if not port.isdigit() or int(port) > 65535:
            raise ValueError(f"bad listening address {argv[0]!r}: expected HOST:PORT")
        proxy = EgressProxy(policy)
        bound = proxy.listen(host.strip("[]") or "127.0.0.1", int(port))
    except (ValueError, OSError) as e:
        print(f"isol8r egress: {e}", file=sys.stderr)
        return 2
    print("listening on %s:%d" % bound, file=sys.stderr, flush=True)
    try:
        proxy.serve()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.close()
    return 0


if __name__ == "__main__":  # pragma: no cover - a manual tool
    import sys
    sys.exit(main(sys.argv[1:]))
