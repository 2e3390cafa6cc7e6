"""User-mode networking for a jail's network namespace (`--net user`): outbound TCP and UDP
through a packaged user-space stack, DNS through a forwarder address inside the jail, and
published ports, without a bridge, a veth or any change to the host's routes or firewall.

Two implementations, both Debian packages: slirp4netns and pasta (package `passt`, podman's
default since 5.0). Measured here (bench/net.py, a fake internet in namespaces, p50 of
15 rounds on a busy 2-core VM): slirp4netns is ready to connect in 12-18 ms and holds 3.8 MiB
resident, pasta needs 26-38 ms and 22 MiB (it pre-opens socket pools and large packet buffers);
pasta moves a 50 MiB transfer about twice as fast (415-590 MiB/s against 235-305). A jail runner
starts many short jails, so slirp4netns is the default and pasta the choice for bulk transfer.
slirp4netns also keeps less privilege when root runs it (`--enable-sandbox`: only
CAP_NET_BIND_SERVICE, in a mount namespace of its own, under seccomp), where pasta keeps
CAP_SYS_ADMIN. slirp4netns maps published ports through a JSON call on its API socket; pasta on
its command line.

The jail's namespace is handed to the program as an inherited descriptor (`/proc/self/fd/N`),
not as `/proc/PID/ns/net`: pasta drops capabilities before it opens the path, and a process with
fewer capabilities than the jail's init may not open that init's /proc entries.

What a jail reaches: whatever the host can connect to, except the host's loopback (pasta
`--no-map-gw`, slirp4netns `--disable-host-loopback`; both undone by `host_loopback`, the CLI's
`--allow-host-loopback`) and ports the host listens on (pasta's automatic forwarding from the
namespace, `-T`/`-U`, is off). The metadata address is refused by a route in the jail's own
namespace (net.prohibit_in, the supervisor's job); the host's LAN is the egress proxy's
(`--allow-domain`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Sequence

DNS_PASTA = "169.254.1.1"    # pasta's --dns-forward address, as podman uses
DNS_SLIRP = "10.0.2.3"       # slirp4netns' built-in forwarder
SLIRP_GUEST = "10.0.2.100"   # the jail's address under slirp4netns


class UsernetError(RuntimeError):
    """User-mode networking could not be set up; the message is one line."""


@dataclass(frozen=True)
class Publish:
    """One `--publish [HOST_ADDR:]HOST_PORT:JAIL_PORT[/udp]`."""

    host_port: int
    jail_port: int
    proto: str = "tcp"
    host_addr: str | None = None

    def __str__(self) -> str:
        addr = f"{self.host_addr}:" if self.host_addr else ""
        if self.host_addr and ":" in self.host_addr:
            addr = f"[{self.host_addr}]:"
        suffix = "/udp" if self.proto == "udp" else ""
        return f"{addr}{self.host_port}:{self.jail_port}{suffix}"


def _port(text: str, value: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsernetError(f"--publish {value!r}: bad port {text!r} (1-65535)")
    return int(text)


def parse_publish(value: str) -> Publish:
    """Parse one --publish value; a one-line UsernetError naming it when bad."""
    text, proto = value, "tcp"
    if "/" in text:
        text, proto = text.rsplit("/", 1)
        if proto not in ("tcp", "udp"):
            raise UsernetError(f"--publish {value!r}: protocol must be tcp or udp, not {proto!r}")
    addr: str | None = None
    if text.startswith("["):
        end = text.find("]:")
        if end < 0:
            raise UsernetError(f"--publish {value!r}: expected [ADDR]:HOST_PORT:JAIL_PORT")
        addr, text = text[1:end], text[end + 2:]
    parts = text.split(":")
    if addr is None and len(parts) == 3:
        addr, parts = parts[0], parts[1:]
    if len(parts) != 2:
        raise UsernetError(f"--publish {value!r}: expected [HOST_ADDR:]HOST_PORT:JAIL_PORT[/udp]")
    if addr is not None:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)
        except OSError:
            raise UsernetError(f"--publish {value!r}: bad host address {addr!r}") from None
    return Publish(_port(parts[0], value), _port(parts[1], value), proto, addr)


def check_ports_free(publish: Sequence[Publish]) -> None:
    """Fail with one line if a host port to publish is taken, before anything starts.

    Checked in the caller's network namespace, where the program will bind them; the program
    also fails (and `start` reports it) if a port is taken between this check and its bind.
    """
    for p in publish:
        addr = p.host_addr or "0.0.0.0"
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        kind = socket.SOCK_DGRAM if p.proto == "udp" else socket.SOCK_STREAM
        with socket.socket(family, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((addr, p.host_port))
            except OSError as e:
                why = "in use" if e.errno == 98 else (e.strerror or str(e))
                raise UsernetError(f"--publish {p}: host port {p.host_port} is {why}") from None


def resolv_conf(dns: str, search: Sequence[str] = ()) -> str:
    """The jail's /etc/resolv.conf: its only resolver is the forwarder inside the jail."""
    lines = [f"nameserver {dns}"]
    if search:
        lines.append("search " + " ".join(search))
    lines.append("options edns0")
    return "\n".join(lines) + "\n"


def available() -> list[str]:
    """The user-mode stacks installed here, preferred first (see the module's docstring)."""
    return [name for name in ("slirp4netns", "pasta") if shutil.which(name)]


@dataclass
class UserNet:
    """A running user-mode stack for one jail. `stop()` ends it (by the pid this module
    started) and so frees its published host ports."""

    backend: str
    pid: int
    dns: str
    publish: tuple[Publish, ...]
    proc: subprocess.Popen[bytes] = field(repr=False)
    startup: float = 0.0           # seconds from spawn to ready
    _tmp: str | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "UserNet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ns_path(ns: int | str, kind: str) -> str:
    return f"/proc/{ns}/ns/{kind}" if isinstance(ns, int) else ns


def _last_line(data: bytes) -> str:
    lines = [ln for ln in data.decode(errors="replace").splitlines()
             if ln.strip() and not ln.startswith("Failed to send")]  # pasta's syslog noise
    return lines[-1].strip() if lines else "no message"


def start(netns: int | str, *, backend: str | None = None, publish: Sequence[Publish] = (),
          userns: int | str | None = None, ipv6: bool = False, mtu: int = 65520,
          prefix: Sequence[str] = (), timeout: float = 5.0,
          host_loopback: bool = False) -> UserNet:
    """Start a user-mode stack for the network namespace of pid `netns` (or a path to it).

    backend: "slirp4netns" or "pasta" (default: the first installed, slirp4netns preferred).
    userns: the namespace owning netns, which an unprivileged caller's stack must join.
    prefix: a command to run the stack under (tests: `ip netns exec HOST`); the host port check
    then is the program's own, as this process is in another namespace.
    host_loopback: map the stack's gateway address to the host's loopback (--allow-host-loopback;
    off: slirp4netns --disable-host-loopback, pasta --no-map-gw).
    Returns once the jail's interface is configured; raises UsernetError (one line) otherwise.
    """
    backend = backend or (available() or ["slirp4netns"])[0]
    if backend not in ("pasta", "slirp4netns"):
        raise UsernetError(f"unknown user-mode network backend {backend!r}")
    if not shutil.which(backend):
        raise UsernetError(f"{backend} is not installed (Debian package "
                           f"{'passt' if backend == 'pasta' else 'slirp4netns'})")
    if os.geteuid() != 0 and not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        try:
            mode = f"mode {os.stat('/dev/net/tun').st_mode & 0o7777:04o}"
        except OSError as e:
            mode = e.strerror or "missing"
        raise UsernetError(f"{backend} needs /dev/net/tun, which this user cannot open ({mode}; "
                           "most distributions make it 0666)")
    publish = tuple(publish)
    if not prefix:
        check_ports_free(publish)
    ns_fd = os.open(_ns_path(netns, "net"), os.O_RDONLY | os.O_CLOEXEC)
    fds = [ns_fd]
    user_fd = -1
    if userns is not None and os.geteuid() != 0:
        user_fd = os.open(_ns_path(userns, "user"), os.O_RDONLY | os.O_CLOEXEC)
        fds.append(user_fd)
    tmp = tempfile.mkdtemp(prefix="isol8r-usernet-")
    try:
        if backend == "pasta":
            return _start_pasta(ns_fd, user_fd, publish, ipv6, mtu, prefix, timeout, tmp, fds,
                                host_loopback)
        return _start_slirp(ns_fd, user_fd, publish, ipv6, mtu, prefix, timeout, tmp, fds,
                            host_loopback)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for fd in fds:
            os.close(fd)


def _spawn(argv: list[str], fds: list[int]) -> subprocess.Popen[bytes]:
    # A caller that blocks signals while it starts a jail (the CLI's signal forwarder) would
    # hand the stack a blocked SIGTERM, and stop() would wait for nothing: unblock them there.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, pass_fds=fds, start_new_session=True,
                            preexec_fn=_unblock_signals if blocked else None)


def _unblock_signals() -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _fail(proc: subprocess.Popen[bytes], backend: str, what: str,
          publish: tuple[Publish, ...] = ()) -> UsernetError:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.stderr is not None
    msg = _last_line(proc.stderr.read())
    proc.stderr.close()
    for p in publish:  # pasta names the port spec it could not bind
        if f"{p.host_port}:{p.jail_port}'" in msg:
            return UsernetError(f"--publish {p}: host port {p.host_port} could not be bound "
                                f"({backend}: {msg})")
    return UsernetError(f"{backend} {what}: {msg}")


def _start_pasta(ns_fd: int, user_fd: int, publish: tuple[Publish, ...], ipv6: bool, mtu: int,
                 prefix: Sequence[str], timeout: float, tmp: str, fds: list[int],
                 host_loopback: bool) -> UserNet:
    pidfile = os.path.join(tmp, "pasta.pid")
    argv = [*prefix, "pasta", "--foreground", "--quiet", "--config-net",
            "--netns", f"/proc/self/fd/{ns_fd}",
            *([] if host_loopback else ["--no-map-gw"]),  # the gateway: the host's loopback?
            "-T", "none", "-U", "none",  # no jail-to-host port forwarding
            "--dns-forward", DNS_PASTA, "--mtu", str(mtu), "-P", pidfile]
    if user_fd >= 0:
        argv += ["--userns", f"/proc/self/fd/{user_fd}"]
    if os.geteuid() == 0:
        argv += ["--runas", "0"]    # as nobody it could not join a namespace root owns
    if not ipv6:
        argv.append("--ipv4-only")
    tcp = [p for p in publish if p.proto == "tcp"]
    udp = [p for p in publish if p.proto == "udp"]
    for opt, ports in (("-t", tcp), ("-u", udp)):
        if not ports:
            argv += [opt, "none"]
        for p in ports:
            addr = f"{p.host_addr}/" if p.host_addr else ""
            argv += [opt, f"{addr}{p.host_port}:{p.jail_port}"]
    t0 = time.monotonic()
    proc = _spawn(argv, fds)
    while not os.path.exists(pidfile):
        if proc.poll() is not None:
            raise _fail(proc, "pasta", "failed", publish)
        if time.monotonic() - t0 > timeout:
            raise _fail(proc, "pasta", f"not ready in {timeout:g}s")
        time.sleep(0.002)
    return UserNet("pasta", proc.pid, DNS_PASTA, publish, proc, time.monotonic() - t0, tmp)


def _start_slirp(ns_fd: int, user_fd: int, publish: tuple[Publish, ...], ipv6: bool, mtu: int,
                 prefix: Sequence[str], timeout: float, tmp: str, fds: list[int],
                 host_loopback: bool) -> UserNet:
    api = os.path.join(tmp, "api.sock")
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    try:
        argv = [*prefix, "slirp4netns", "--configure", f"--mtu={mtu}",
                *([] if host_loopback else ["--disable-host-loopback"]),
                # the sandbox (a mount namespace of its own, pivoted into an empty root) needs
                # root: an unprivileged caller's slirp4netns cannot make one outside a user
                # namespace ("setegid(0)"); it keeps its seccomp filter
                *(["--enable-sandbox"] if os.geteuid() == 0 else []), "--enable-seccomp",
                f"--ready-fd={ready_w}", f"--api-socket={api}", "--netns-type=path"]
        if user_fd >= 0:
            argv.append(f"--userns-path=/proc/self/fd/{user_fd}")
        if ipv6:
            argv.append("--enable-ipv6")
        argv += [f"/proc/self/fd/{ns_fd}", "tap0"]
        t0 = time.monotonic()
        proc = _spawn(argv, [*fds, ready_w])
        os.close(ready_w)
        ready_w = -1
        import select
        ready, _, _ = select.select([ready_r], [], [], timeout)
        if not ready or os.read(ready_r, 1) != b"1":
            raise _fail(proc, "slirp4netns", "failed" if proc.poll() is not None
                        else f"not ready in {timeout:g}s")
        startup = time.monotonic() - t0
    finally:
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)
    net = UserNet("slirp4netns", proc.pid, DNS_SLIRP, publish, proc, startup, tmp)
    try:
        for p in publish:
            _slirp_call(api, {"execute": "add_hostfwd", "arguments": {
                "proto": p.proto, "host_addr": p.host_addr or "0.0.0.0",
                "host_port": p.host_port, "guest_port": p.jail_port}}, p)
    except BaseException:
        net.stop()
        raise
    return net


def _slirp_call(api: str, request: dict[str, object], p: Publish) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(api)
        s.sendall(json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    reply = json.loads(answer or b"{}")
    if "error" in reply:
        raise UsernetError(f"--publish {p}: host port {p.host_port} could not be bound "
                           f"(slirp4netns: {reply['error'].get('desc', 'error')})")
