"""`isol8r listen`: a fresh jail for every TCP connection, its socket as stdin and stdout.

Why this shape: one single-threaded asyncio loop accepts, admits and watches every connection;
each jail is leased from the listener's own fork server (forkserver.run_async), so warm jails of
the spec's shape serve a burst of connections and no jail costs a thread. The socket itself is
the program's stdin and stdout (as nsjail -Ml does): no byte is copied through the listener.
The listener keeps a copy of each socket, watched in one epoll set for hang-up or reset only
(never read), so a client that is gone ends its jail at once; bytes in and out come from the
kernel's TCP_INFO counters. Everything a client can make the listener hold is bounded:
connections (--max-conns, each a fixed handful of descriptors), the per-source tables, the
proof-of-work line (peeked, at most pow.MAX_LINE bytes) and every jail's time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import ipaddress
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import supervisor
from ..errors import Isol8rError, SpecError
from ..spec import OPTIONS, Spec
from . import forkserver, pow

SETUP_FAILED = 125
DEFAULT_TIME_LIMIT = 300.0  # a client that never reads must not hold its jail forever
DEFAULT_MAX_CONNS = 64
FDS_PER_CONN = 8  # socket, lease socket, channel, pidfd, and the loop's own: with margin
SOURCES_KEPT = 4096  # per-source rate and count entries (oldest forgotten first)
# struct tcp_info: tcpi_bytes_received at 128 (Linux 4.1), tcpi_bytes_sent and
# tcpi_bytes_retrans at 200 (4.19): payload counters, kept by the kernel for the socket
_TCP_RECEIVED = struct.Struct("=128xQ")
_TCP_SENT = struct.Struct("=200xQQ")
USAGE = "isol8r listen [--addr ADDR] --port PORT [options] -- PROGRAM [ARGS...]"


class UsageError(Exception):
    """Bad usage: one line, exit 125."""


def _parser() -> argparse.ArgumentParser:
    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> Any:
            raise UsageError(message)

    p = Parser(prog="isol8r listen", usage=USAGE, allow_abbrev=False,
               description="Serve each TCP connection with a fresh jail (its stdin and stdout).")
    a = p.add_argument
    a("--addr", help="address to listen on (default: :: and so IPv4 too; 0.0.0.0 without IPv6)")
    a("--port", help="TCP port (0: one the kernel picks, printed in the log's first line)")
    a("--inetd", action="store_true", help="serve the one connection already on stdin/stdout")
    a("--max-conns", default=str(DEFAULT_MAX_CONNS), help="connections served at once")
    a("--max-conns-per-ip", default="0", help="connections at once from one address (0: no cap)")
    a("--rate", default="0", help="new connections per second from one address (0: no cap)")
    a("--pow", default="0", metavar="DIFFICULTY", help="kCTF proof of work before the jail")
    a("--log", metavar="FILE", help="log file (default: stderr); SIGHUP reopens it")
    a("--log-format", default="text", choices=["text", "json"], help="one line per event")
    a("--stderr", choices=["log", "conn", "null"],
      help="the program's stderr: the log (default with text logs), the connection, or nothing "
           "(default with JSON logs)")
    a("--end-on-eof", action="store_true",
      help="a client that shuts down or closes its side ends its jail at once (default: that is "
           "the end of the program's input, and the program may still answer)")
    a("--drain", default="10", metavar="SECONDS", help="on SIGTERM, running jails' grace")
    a("--prewarm", default="8", help="jails set up ahead, waiting for connections (a burst of "
      "this many is served at once; ~3 MiB each)")
    a("--backlog", default="128", help="the listening socket's accept queue")
    a("--profile", metavar="FILE|NAME", help="a TOML jail profile; flags override it")
    for name, opt in OPTIONS.items():
        dest = "opt_" + name.replace("-", "_")
        names = ["-" + opt.short] if opt.short else []
        if opt.kind == "flag":
            a(*names, "--" + name, dest=dest, action="store_true", default=None, help=opt.help)
        elif opt.kind == "list":
            a("--" + name, dest=dest, action="append", metavar=opt.metavar, help=opt.help)
        else:
            a("--" + name, dest=dest, metavar=opt.metavar, help=opt.help)
    a("command", nargs=argparse.REMAINDER, help="the program and its arguments")
    return p


@dataclass
class Config:
    """What the listener does, validated: every number named when it is bad."""

    spec: Spec
    addr: str | None
    port: int | None
    inetd: bool
    max_conns: int
    max_per_ip: int
    rate: float
    pow: int
    log: str | None
    log_format: str
    stderr: str
    end_on_eof: bool
    drain: float
    prewarm: int
    backlog: int


def _number(name: str, text: str, kind: Callable[[str], Any], low: float,
            high: float = float("inf")) -> Any:
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or value != value or not low <= value <= high:
        raise SpecError("--" + name, text, f"give a number from {low:g} to {high:g}")
    return value


def parse(argv: list[str]) -> Config:
    """argv -> Config; UsageError or SpecError name the bad value."""
    ns = _parser().parse_args(argv)
    command = list(ns.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError("no program given: " + USAGE)
    options: dict[str, Any] = {}
    for name in OPTIONS:
        value = getattr(ns, "opt_" + name.replace("-", "_"))
        if value is not None:
            options[name] = value
    if ns.profile:
        from .. import profiles
        options = profiles.merge(profiles.load(ns.profile), options)
    if "time-limit" not in options and "time_limit" not in options:
        options["time-limit"] = DEFAULT_TIME_LIMIT
    if options.get("tty"):
        raise SpecError("--tty", True, "a connection is not a terminal")
    spec = Spec.from_options(command, options)
    activated = _activated_fds()
    port = None
    if ns.port is not None:
        port = _number("port", ns.port, int, 0, 65535)
    elif not ns.inetd and not activated:
        raise UsageError("--port is needed (or --inetd, or a socket from systemd): " + USAGE)
    return Config(spec=spec, addr=ns.addr, port=port, inetd=ns.inetd,
                  max_conns=_number("max-conns", ns.max_conns, int, 1, 100000),
                  max_per_ip=_number("max-conns-per-ip", ns.max_conns_per_ip, int, 0, 100000),
                  rate=_number("rate", ns.rate, float, 0, 1e6),
                  pow=_number("pow", ns.pow, int, 0, 10**7),
                  log=ns.log, log_format=ns.log_format,
                  stderr=ns.stderr or ("null" if ns.log_format == "json" else "log"),
                  end_on_eof=ns.end_on_eof,
                  drain=_number("drain", ns.drain, float, 0, 86400),
                  prewarm=_number("prewarm", ns.prewarm, int, 0, 64),
                  backlog=_number("backlog", ns.backlog, int, 1, 65535))


def _activated_fds() -> list[int]:
    """systemd's socket activation: LISTEN_FDS sockets from fd 3, when LISTEN_PID is us."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        n = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    return list(range(3, 3 + max(0, n)))


# ---- the log ----------------------------------------------------------------------------------

class Log:
    """One line per event, text or JSON, to stderr or a file that SIGHUP reopens (logrotate)."""

    def __init__(self, path: str | None, fmt: str) -> None:
        self.path, self.fmt = path, fmt
        self.fd = 2
        if path is not None:
            self.fd = self._open(path)

    @staticmethod
    def _open(path: str) -> int:
        try:
            return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as e:
            raise SpecError("--log", path, e.strerror or str(e)) from None

    def reopen(self) -> None:
        if self.path is None:
            return
        try:
            fd = self._open(self.path)
        except SpecError as e:
            self.write("log", error=str(e))
            return
        old, self.fd = self.fd, fd
        os.close(old)

    def write(self, event: str, **fields: Any) -> None:
        now = time.time()
        if self.fmt == "json":
            line = json.dumps({"time": round(now, 6), "event": event, **fields},
                              separators=(",", ":"))
        else:
            stamp = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
                     + f".{int(now % 1 * 1000):03d}Z")
            parts = [stamp, event]
            for k, v in fields.items():
                if v is None:
                    continue
                text = f"{v:.3f}" if isinstance(v, float) else str(v)
                if not text or any(c.isspace() or c in '"=' for c in text):
                    text = json.dumps(text)
                parts.append(f"{k}={text}")
            line = " ".join(parts)
        data = (line + "\n").encode("utf-8", "replace")
        try:
            while data:  # a log that blocks (a full pipe) delays the loop: lines are small
                data = data[os.write(self.fd, data):]
        except OSError:
            pass

    def close(self) -> None:
        if self.fd != 2:
            os.close(self.fd)
            self.fd = 2


# ---- admission --------------------------------------------------------------------------------

class Admission:
    """--max-conns, --max-conns-per-ip and --rate (a token bucket per source, burst = rate or 1).
    The per-source tables hold at most SOURCES_KEPT entries: a flood of addresses costs a bounded
    table and forgets the oldest sources' rate, never memory."""

    def __init__(self, max_conns: int, max_per_ip: int, rate: float) -> None:
        self.max_conns, self.max_per_ip, self.rate = max_conns, max_per_ip, rate
        self.total = 0
        self.per_ip: dict[str, int] = {}
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def admit(self, ip: str, now: float) -> str | None:
        """None when the connection is admitted (and counted); else why it is refused."""
        if self.total >= self.max_conns:
            return "max-conns"
        if self.max_per_ip and self.per_ip.get(ip, 0) >= self.max_per_ip:
            return "max-conns-per-ip"
        if self.rate:
            burst = max(1.0, self.rate)
            tokens, last = self.buckets.pop(ip, (burst, now))
            tokens = min(burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._keep(ip, (tokens, now))
                return "rate"
            self._keep(ip, (tokens - 1.0, now))
        self.total += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        return None

    def _keep(self, ip: str, bucket: tuple[float, float]) -> None:
        self.buckets[ip] = bucket
        while len(self.buckets) > SOURCES_KEPT:
            self.buckets.popitem(last=False)

    def release(self, ip: str) -> None:
        self.total -= 1
        n = self.per_ip.get(ip, 1) - 1
        if n > 0:
            self.per_ip[ip] = n
        else:
            self.per_ip.pop(ip, None)


def _source(addr: Any) -> tuple[str, int | None]:
    """A peer's address and port; an IPv4-mapped IPv6 address as the IPv4 one it is."""
    if isinstance(addr, tuple) and addr:
        host = str(addr[0])
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                host = str(ip.ipv4_mapped)
        except ValueError:
            pass
        return host, int(addr[1]) if len(addr) > 1 else None
    return (str(addr) if addr else "-"), None


def tcp_bytes(sock: socket.socket) -> tuple[int | None, int | None]:
    """(bytes received from the client, bytes sent to it) from the kernel's TCP_INFO: nothing
    passes through the listener to count. The client's FIN takes a sequence number the
    received count includes: taken off when the client has shut down its side."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except OSError:
        return None, None
    got = sent = None
    if len(info) >= _TCP_RECEIVED.size:
        (got,) = _TCP_RECEIVED.unpack_from(info)
        p = select.poll()
        p.register(sock, select.POLLRDHUP)
        events = p.poll(0)
        if got and events and not events[0][1] & select.POLLERR:  # a reset takes none
            got -= 1
    if len(info) >= _TCP_SENT.size:
        total, again = _TCP_SENT.unpack_from(info)
        sent = total - again
    return got, sent


# ---- the listener -----------------------------------------------------------------------------

@dataclass
class Conn:
    """One connection: its socket (the listener's copy), its source and, once running, its jail."""

    id: int
    sock: socket.socket
    ip: str
    port: int | None
    admitted: bool = True
    jail: supervisor.Jail | None = None
    ended_by: str | None = None  # "disconnected", "drained": why the listener killed the jail
    started_at: float = field(default_factory=time.monotonic)

    def kill(self, why: str) -> None:
        if self.ended_by is None:
            self.ended_by = why
        if self.jail is not None:
            self.jail.signal(signal.SIGKILL)


class Listener:
    """The accept loop, the connections' tasks and the hang-up watch, on one asyncio loop."""

    def __init__(self, cfg: Config, log: Log, socks: list[socket.socket]) -> None:
        self.cfg, self.log, self.socks = cfg, log, socks
        # its own fork server (and pool: the default size; none for --inetd's one connection)
        self.client = forkserver.Client(prewarm=0 if cfg.inetd else None)
        self.admission = Admission(cfg.max_conns, cfg.max_per_ip, cfg.rate)
        self.conns: dict[int, Conn] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.hup = select.epoll()
        self.by_fd: dict[int, Conn] = {}
        self.next_id = 0
        self.closing = False
        self.null_fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        self.stopped: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready: deque[socket.socket] = deque()  # leases asked for ahead (_refill)
        self.last_result: Any = None  # the last connection's Result (--inetd's exit status)

    # -- accepting --

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopped = asyncio.Event()
        self.loop.add_reader(self.hup.fileno(), self._hangups)
        for s in self.socks:
            s.setblocking(False)
            self.loop.add_reader(s.fileno(), self._accept, s)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stop)
        self.loop.add_signal_handler(signal.SIGHUP, self.log.reopen)
        self.client.connect()  # the fork server now, not at the first client
        self._refill()

    def _refill(self) -> None:
        """Lease jails ahead (each set up and waiting for its Request, in the listener's hands):
        a connection then costs no round trip to the fork server, only the jail's request half.
        Called at start and when a connection ends (not when one starts: the clone would take
        the core the starting jail needs)."""
        while len(self.ready) < self.cfg.prewarm and not self.closing:
            try:
                self.ready.append(self.client.lease(self.cfg.spec, False))
            except Isol8rError as e:
                self.log.write("lease", error=str(e))
                return

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(64):  # a bounded batch: the loop's other work is not starved
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # the host is short (the listener's own budget is kept by --max-conns):
                    # a pause, not a loop spinning on a socket that stays readable
                    self.log.write("accept", error=os.strerror(e.errno))
                    assert self.loop is not None
                    self.loop.remove_reader(lsock.fileno())
                    self.loop.call_later(0.1, self._resume, lsock)
                    return
                continue  # ECONNABORTED and the like: that client is gone
            self.serve(sock, addr)

    def _resume(self, lsock: socket.socket) -> None:
        if not self.closing and self.loop is not None:
            self.loop.add_reader(lsock.fileno(), self._accept, lsock)

    def serve(self, sock: socket.socket, addr: Any) -> None:
        """Admit (or refuse) one accepted connection and start its task."""
        ip, port = _source(addr)
        self.next_id += 1
        why = "stopping" if self.closing else self.admission.admit(ip, time.monotonic())
        if why is not None:
            self.log.write("refused", conn=self.next_id, peer=ip, port=port, reason=why)
            _refuse(sock, why)
            return
        conn = Conn(self.next_id, sock, ip, port)
        self.conns[conn.id] = conn
        task = asyncio.ensure_future(self._run(conn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, c: Conn) -> None:
        """One connection: the proof of work, then its jail, then its log line; always closed."""
        result = None
        error = None
        err_copy = -1
        try:
            fd = c.sock.fileno()
            self.by_fd[fd] = c
            self.hup.register(fd, select.EPOLLHUP | select.EPOLLERR
                              | (select.EPOLLRDHUP if self.cfg.end_on_eof else 0))
            if self.cfg.pow and not await self._proof(c):
                c.ended_by = c.ended_by or "pow-failed"
                return
            if self.closing:  # a proof solved while stopping: no new jail
                c.ended_by = c.ended_by or "stopping"
            if c.ended_by is not None:
                return
            c.sock.setblocking(True)  # O_NONBLOCK is shared with the program's descriptors
            # a copy of the log's descriptor: a SIGHUP during the lease closes the log's, and
            # its number could name another client's socket by the time the jail gets it
            err = os.dup({"log": self.log.fd, "conn": fd, "null": self.null_fd}[self.cfg.stderr])
            err_copy = err
            stdio = supervisor.Stdio([(fd, 0), (fd, 1), (err, 2)], [],
                                     supervisor.IOWatch(None, lambda _v: None))

            def started(jail: supervisor.Jail) -> None:
                c.jail = jail
                self.log.write("start", conn=c.id, peer=c.ip, port=c.port, jail=jail.pid)
                if c.ended_by is not None:  # hung up while its jail was being leased
                    c.kill(c.ended_by)
            ahead = self.ready.popleft() if self.ready else None
            try:
                result = await forkserver.run_async(self.client, self.cfg.spec, stdio, started,
                                                    ahead)
            except Isol8rError:
                if ahead is None or c.jail is not None or c.ended_by is not None:
                    raise
                # a jail leased ahead that died while it waited: once more, leased now
                result = await forkserver.run_async(self.client, self.cfg.spec, stdio, started)
        except Isol8rError as e:
            error = str(e)
        except OSError as e:
            error = f"{e.strerror or e}"
        finally:
            c.jail = None
            if err_copy >= 0:
                os.close(err_copy)
            self._end(c, result, error)

    async def _proof(self, c: Conn) -> bool:
        """kCTF's proof of work (pow.py): the challenge, then one line, peeked so that input
        sent after it stays in the socket for the program. Bounded by the time limit."""
        assert self.loop is not None
        chal = pow.challenge(self.cfg.pow)
        c.sock.setblocking(False)
        deadline = time.monotonic() + (self.cfg.spec.time_limit or DEFAULT_TIME_LIMIT)
        if not await self._send_all(c, pow.banner(chal), deadline):
            return False
        while True:
            try:
                peek = c.sock.recv(pow.MAX_LINE, socket.MSG_PEEK)
            except BlockingIOError:
                if not await self._wait(c, deadline, readable=True):
                    return False
                continue
            except OSError:
                return False
            if not peek:
                return False
            end = peek.find(b"\n")
            if end < 0:
                if len(peek) >= pow.MAX_LINE:
                    return False
                if not await self._wait(c, deadline, readable=True, more_than=len(peek)):
                    return False
                continue
            line = c.sock.recv(end + 1)
            text = line.decode("ascii", "replace").strip()
            if not text:
                continue  # kCTF asks again on an empty line
            ok = pow.verify(chal, text)
            await self._send_all(c, pow.CORRECT if ok else pow.FAILED, deadline)
            return ok

    async def _wait(self, c: Conn, deadline: float, readable: bool, more_than: int = 0) -> bool:
        """Until the socket is readable (with more than `more_than` bytes) or writable."""
        assert self.loop is not None
        fut = self.loop.create_future()
        fd = c.sock.fileno()
        add, remove = ((self.loop.add_reader, self.loop.remove_reader) if readable
                       else (self.loop.add_writer, self.loop.remove_writer))

        def ready() -> None:
            if readable and more_than:
                try:
                    if len(c.sock.recv(more_than + 1, socket.MSG_PEEK)) <= more_than:
                        return  # nothing new yet (data read again: level-triggered)
                except BlockingIOError:
                    return
                except OSError:
                    pass
            if not fut.done():
                fut.set_result(True)
        add(fd, ready)
        try:
            await asyncio.wait_for(fut, max(0.0, deadline - time.monotonic()))
            return c.ended_by is None
        except asyncio.TimeoutError:
            c.ended_by = "time-limit"
            return False
        finally:
            remove(fd)

    async def _send_all(self, c: Conn, data: bytes, deadline: float) -> bool:
        view = memoryview(data)
        while view:
            try:
                view = view[c.sock.send(view, socket.MSG_NOSIGNAL):]
            except BlockingIOError:
                if not await self._wait(c, deadline, readable=False):
                    return False
            except OSError:
                return False
        return True

    def _hangups(self) -> None:
        """Clients that hung up or reset: their jails end now (a FIN alone is the program's
        end of input: it may still answer a client that only shut down its sending side;
        with --end-on-eof a FIN ends the jail too)."""
        for fd, _ in self.hup.poll(0):
            c = self.by_fd.get(fd)
            try:
                self.hup.unregister(fd)
            except OSError:
                pass
            if c is not None:
                c.kill("disconnected")

    def _end(self, c: Conn, result: Any, error: str | None) -> None:
        fd = c.sock.fileno()
        if self.by_fd.get(fd) is c:
            del self.by_fd[fd]
            try:
                self.hup.unregister(fd)
            except OSError:
                pass
        self.last_result = result
        got, sent = tcp_bytes(c.sock)
        fields: dict[str, Any] = {"conn": c.id, "peer": c.ip, "port": c.port}
        if result is not None:
            verdict = c.ended_by if c.ended_by in ("disconnected", "drained") else result.verdict
            cpu = None
            if result.cpu_user is not None:
                cpu = result.cpu_user + (result.cpu_system or 0.0)
            fields.update(verdict=verdict, status=result.exit_code, signal=result.signal,
                          wall=round(result.wall_time, 6),
                          cpu=None if cpu is None else round(cpu, 6), memory=result.memory_peak)
        else:
            fields.update(verdict=c.ended_by or "error",
                          wall=round(time.monotonic() - c.started_at, 6))
        fields.update(bytes_in=got, bytes_out=sent, error=error)
        self.log.write("end", **fields)
        try:
            c.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        c.sock.close()
        self.conns.pop(c.id, None)
        if c.admitted:
            self.admission.release(c.ip)
        self._refill()

    # -- stopping --

    def stop(self) -> None:
        """SIGTERM: accept no more; running jails get --drain seconds, then are killed."""
        if self.closing:
            return
        self.closing = True
        assert self.loop is not None
        for s in self.socks:
            self.loop.remove_reader(s.fileno())
            s.close()
        while self.ready:
            self.ready.popleft().close()  # the server ends those jails
        self.log.write("stopping", running=len(self.conns), drain=self.cfg.drain)
        if self.stopped is not None:
            self.stopped.set()

    async def drain(self) -> None:
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=self.cfg.drain)
        for c in list(self.conns.values()):
            c.kill("drained")
        while self.tasks:  # killed jails end within the fork server's bounded waits
            await asyncio.wait(set(self.tasks), timeout=forkserver.WAIT_MARGIN + 5)
            for t in list(self.tasks):
                t.cancel()

    def close(self) -> None:
        while self.ready:
            self.ready.popleft().close()
        if self.loop is not None:
            self.loop.remove_reader(self.hup.fileno())
        self.hup.close()
        self.client.close()
        os.close(self.null_fd)


def _refuse(sock: socket.socket, why: str) -> None:
    """One line, then the connection is closed; never blocks (a full buffer loses the line)."""
    text = {"max-conns": "too many connections, try again later",
            "max-conns-per-ip": "too many connections from your address",
            "rate": "too many new connections from your address, slow down",
            "stopping": "the service is stopping"}.get(why, why)
    try:
        sock.send(f"isol8r: refused: {text}\n".encode(), socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


def bind(addr: str | None, port: int, backlog: int) -> socket.socket:
    """A listening socket with SO_REUSEADDR (a restart binds at once, TIME_WAIT or not); with no
    address, [::] also taking IPv4 (0.0.0.0 where there is no IPv6)."""
    if addr is None:
        try:
            return _bind(socket.AF_INET6, "::", port, backlog, dual=True)
        except OSError:
            return _bind(socket.AF_INET, "0.0.0.0", port, backlog)
    host = addr[1:-1] if addr.startswith("[") and addr.endswith("]") else addr
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host.split("%", 1)[0]).version == 6 \
            else socket.AF_INET
    except ValueError:
        raise SpecError("--addr", addr, "give an IPv4 or IPv6 address") from None
    return _bind(family, host, port, backlog)


def _bind(family: int, host: str, port: int, backlog: int, dual: bool = False) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
        s.bind((host, port))
        s.listen(backlog)
    except BaseException:
        s.close()
        raise
    return s


def _fd_budget(max_conns: int) -> None:
    """Room for every admitted connection's descriptors: the soft RLIMIT_NOFILE raised to the
    hard one, and --max-conns refused when even that is too small (never an EMFILE mid-run)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_conns * FDS_PER_CONN + 64
    if soft < need <= hard or (soft < need and hard == resource.RLIM_INFINITY):
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    elif soft < need:
        raise SpecError("--max-conns", str(max_conns),
                        f"needs {need} descriptors, RLIMIT_NOFILE allows {hard}")


async def _serve_forever(cfg: Config, log: Log, socks: list[socket.socket]) -> int:
    lst = Listener(cfg, log, socks)
    try:
        lst.start()
        for s in socks:
            host, port = _source(s.getsockname())
            log.write("listening", addr=host, port=port, pid=os.getpid())
        assert lst.stopped is not None
        await lst.stopped.wait()
        await lst.drain()
    finally:
        lst.close()
    log.write("stopped")
    return 0


async def _serve_inetd(cfg: Config, log: Log) -> int:
    """--inetd: stdin is the connection (inetd, systemd Accept=yes); one jail, its status."""
    try:
        sock = socket.socket(fileno=os.dup(0))
    except OSError:
        raise SpecError("--inetd", True, "stdin is not a socket") from None
    try:
        peer = sock.getpeername()
    except OSError:
        peer = None
    lst = Listener(dataclasses.replace(cfg, prewarm=0), log, [])  # nothing ahead: one client
    try:
        lst.start()
        lst.serve(sock, peer)
        while lst.tasks and not lst.closing:
            await asyncio.wait(set(lst.tasks), return_when=asyncio.FIRST_COMPLETED,
                               timeout=0.5)
        await lst.drain()
    finally:
        lst.close()
    result = lst.last_result
    if result is None:
        return SETUP_FAILED
    if result.exit_code is not None:
        return int(result.exit_code)
    return 128 + int(result.signal or 9)


def main(argv: list[str]) -> int:
    """`isol8r listen ...`: exit 0 after a SIGTERM's drain, 125 for bad input or a port that
    cannot be had; with --inetd, the program's status as `isol8r run` gives it."""
    if argv[:1] in (["-h"], ["--help"]):
        _parser().print_help()
        return 0
    try:
        cfg = parse(list(argv))
        log = Log(cfg.log, cfg.log_format)
    except (UsageError, Isol8rError) as e:
        _say(str(e))
        return SETUP_FAILED
    try:
        if cfg.inetd:
            _fd_budget(1)
            return asyncio.run(_serve_inetd(cfg, log))
        _fd_budget(cfg.max_conns)
        activated = _activated_fds()
        if activated:
            for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                os.environ.pop(k, None)
            try:
                socks = [socket.socket(fileno=fd) for fd in activated]
            except OSError as e:
                raise SpecError("LISTEN_FDS", str(len(activated)),
                                f"fd 3 onwards must be sockets ({e.strerror})") from None
            for s in socks:
                os.set_inheritable(s.fileno(), False)
        else:
            assert cfg.port is not None
            try:
                socks = [bind(cfg.addr, cfg.port, cfg.backlog)]
            except OSError as e:
                raise SpecError("--port", str(cfg.port),
                                f"cannot listen on it ({e.strerror or e})") from None
        return asyncio.run(_serve_forever(cfg, log, socks))
    except Isol8rError as e:
        _say(str(e))
        return SETUP_FAILED
    finally:
        log.close()


def _say(message: str) -> None:
    sys.stderr.write(f"isol8r: {message}\n")
    sys.stderr.flush()
