"""`isol8r listen`: real TCP clients on 127.0.0.1 and ::1 against a real listener.

Every listener binds port 0 (the kernel picks a free one, read from its log's first line), so
tests of parallel checkouts never collide; each is stopped (SIGTERM, then SIGKILL) and checked
to leave no process. The proof-of-work solver here is written from kCTF's description, not
taken from isol8r, so that a mistake shared by both cannot pass.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from conftest import alive, needs_root

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
LISTEN = [sys.executable, "-m", "isol8r", "listen"]


class Listener:
    """A listener process on a kernel-picked port, its JSON log, and its clean stop."""

    def __init__(self, tmp: Path, args: list[str], addr: str = "127.0.0.1", port: int = 0,
                 name: str = "listen.log", fmt: str = "json", prefix: list[str] | None = None,
                 **popen: Any) -> None:
        self.log = tmp / name
        self.addr = addr
        cmd = [*LISTEN, "--log", str(self.log), "--log-format", fmt]
        if addr:
            cmd += ["--addr", addr, "--port", str(port)]
        self.proc = subprocess.Popen([*(prefix or []), *cmd, *args], env=popen.pop("env", ENV),
                                     **popen)
        first = self.wait_for(lambda e: e["event"] == "listening", 30)
        self.port = int(first["port"])

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        try:
            lines = self.log.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = [json.loads(line) if line.startswith("{") else _text_event(line) for line in lines
               if line.startswith("{") or re.match(r"\d{4}-\d\d-\d\dT\S+Z \w+", line)]
        return [e for e in out if kind is None or e["event"] == kind]

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 30,
                 count: int = 1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [e for e in self.events() if pred(e)]
            if len(got) >= count:
                return got[count - 1]
            if self.proc.poll() is not None and self.proc.returncode != 0:
                raise AssertionError(f"listener exited {self.proc.returncode}")
            time.sleep(0.02)
        raise AssertionError(f"no such log line in {timeout} s: {self.events()}")

    def connect(self, source: str | None = None) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.addr else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        if source:
            s.bind((source, 0))
        s.settimeout(30)
        s.connect((self.addr, self.port))
        return s

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def _text_event(line: str) -> dict[str, Any]:
    """A text log line as the JSON one would be: time, event, then key=value (quoted: JSON)."""
    stamp, event, rest = (line.split(" ", 2) + [""])[:3]
    out: dict[str, Any] = {"time": stamp, "event": event}
    for m in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', rest):
        value = m.group(2)
        out[m.group(1)] = json.loads(value) if value[0] == '"' or value.lstrip("-").isdigit() \
            else value
    return out


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Callable[..., Listener]]:
    made: list[Listener] = []

    def start(*args: str, **kw: Any) -> Listener:
        made.append(Listener(tmp_path, list(args), name=f"listen-{len(made)}.log", **kw))
        return made[-1]
    yield start
    for lst in made:
        if lst.proc.poll() is None:
            lst.stop()
        jails = [e["jail"] for e in lst.events("start")]
        assert not [p for p in jails if alive(p)], "a jail outlived its listener"


def read_all(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            d = s.recv(65536)
        except ConnectionResetError:
            break
        if not d:
            break
        out += d
    return out


def read_until(s: socket.socket, marker: bytes) -> bytes:
    out = b""
    while marker not in out:
        d = s.recv(65536)
        if not d:
            raise AssertionError(f"EOF before {marker!r}: {out!r}")
        out += d
    return out


# ---- root-free: the proof of work and admission, checked against the spec ------------------

P = 2**1279 - 1


def my_encode(n: int) -> str:
    raw = n.to_bytes((n.bit_length() // 24) * 3 + 3, "big")
    return base64.b64encode(raw).decode()


def my_solve(challenge: str) -> str:
    """kCTF's solver, from its description: d times (square root mod p, then flip bit 0)."""
    version, d, x = challenge.split(".")
    assert version == "s"
    difficulty = int.from_bytes(base64.b64decode(d), "big")
    y = int.from_bytes(base64.b64decode(x), "big")
    for _ in range(difficulty):
        y = pow(y, (P + 1) // 4, P) ^ 1
    return "s." + my_encode(y)


def test_pow_round_trip_against_an_independent_solver() -> None:
    from isol8r.daemon import pow
    chal = pow.challenge(7)
    assert re.fullmatch(r"s\.[A-Za-z0-9+/=]+\.[A-Za-z0-9+/=]+", chal)
    assert pow.decode(chal)[0] == 7
    good = my_solve(chal)
    assert pow.verify(chal, good)
    assert pow.verify(chal, good + "\r\n")
    y = pow.decode(good)[0]
    assert not pow.verify(chal, "s." + my_encode(y ^ 2))
    for bad in ("", "s.", "x." + good[2:], "s.!!!!", good + ".AAAA", "s." + my_encode(P + 1)):
        assert not pow.verify(chal, bad)
    assert pow.encode([1337]) == "s.AAU5"  # kCTF's own encoding of its example difficulty


def test_pow_accepts_a_solution_that_kctf_documents() -> None:
    """The example of the kctf-pow Rust crate's docs (a challenge and its solution)."""
    from isol8r.daemon import pow
    chal = "s.AAU5.AACV7mM375HM8wElUbxsknqD"
    assert pow.verify(chal, my_solve(chal))
    assert pow.verify(chal, "s.LR15WHZE5YO/8EEY9BF7pdvxiJxwkDi7mdS52bg7eVUdHbAwBVxfahl/qxceccZ"
                              "V2PHkj4wQTQ9Ng837/KD9IWQL4v2GmRyjc5O9MxiAXBtxn7FYjjA2as/17lF2lEtQ"
                              "tABbSEUgxam+sIsdfDJMAUzn4fYsS7vOarXh7iY6ZYknrwt1S8EHyQeYkoTUzkpUIV"
                              "AuSvl8jExcPzvmuaoM6A==")
    assert not pow.verify("s.AAU5.AACV7mM375HM8wElUbxsknqE", my_solve(chal))


def test_admission_counts_rates_and_forgets_sources_within_a_bound() -> None:
    from isol8r.daemon import listen
    a = listen.Admission(max_conns=3, max_per_ip=2, rate=0)
    assert a.admit("1.1.1.1", 0) is None and a.admit("1.1.1.1", 0) is None
    assert a.admit("1.1.1.1", 0) == "max-conns-per-ip"
    assert a.admit("2.2.2.2", 0) is None
    assert a.admit("3.3.3.3", 0) == "max-conns"
    a.release("1.1.1.1")
    assert a.admit("3.3.3.3", 0) is None
    r = listen.Admission(max_conns=10**6, max_per_ip=0, rate=2)
    assert [r.admit("9.9.9.9", 0.0) for _ in range(3)] == [None, None, "rate"]
    assert r.admit("9.9.9.9", 0.5) is None  # one token back after half a second at 2/s
    for i in range(listen.SOURCES_KEPT * 2):
        r.admit(f"10.0.{i // 256}.{i % 256}", 1.0)
    assert len(r.buckets) <= listen.SOURCES_KEPT


@pytest.mark.parametrize("args,named", [
    (["--port", "http", "--", "true"], "--port http"),
    (["--port", "70000", "--", "true"], "--port 70000"),
    (["--port", "0", "--max-conns", "0", "--", "true"], "--max-conns 0"),
    (["--port", "0", "--addr", "localhost", "--", "true"], "--addr localhost"),
    (["--port", "0"], "no program"),
    (["--", "true"], "--port is needed"),
    (["--port", "0", "--memory", "lots", "--", "true"], "lots"),
])
def test_bad_input_is_one_line_and_125(args: list[str], named: str) -> None:
    r = subprocess.run([*LISTEN, *args], env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 125, r.stderr
    assert r.stderr.count("\n") == 1 and named in r.stderr, r.stderr


# ---- real listeners ---------------------------------------------------------------------------

IDENTITY = ("read a; echo $a > /tmp/mine; read b; "
            "echo $a$b $(readlink /proc/self/ns/pid) $(readlink /proc/self/ns/uts) "
            "$(ls /tmp | wc -l) $$; read c")


@needs_root
@pytest.mark.parametrize("addr,n", [("127.0.0.1", 16), ("::1", 4)])
def test_each_connection_gets_its_own_jail(listener: Callable[..., Listener], addr: str,
                                           n: int) -> None:
    """Interleaved input over many connections at once: each answer is its own input, from a
    jail with its own pid and UTS namespaces and a /tmp holding only its own file."""
    lst = listener("--", "/bin/sh", "-c", IDENTITY, addr=addr)
    socks = [lst.connect() for _ in range(n)]
    for i, s in enumerate(socks):
        s.sendall(f"a{i}\n".encode())
    for i, s in reversed(list(enumerate(socks))):
        s.sendall(f"b{i}\n".encode())
    # every jail holds on until all have answered: namespaces alive at once (a freed one's
    # inode number can be reused)
    answers = [read_until(s, b"\n").decode().split() for s in socks]
    for s in socks:
        s.sendall(b"c\n")
        assert read_all(s) == b""
    assert [a[0] for a in answers] == [f"a{i}b{i}" for i in range(n)]
    assert len({a[1] for a in answers}) == n, "a pid namespace was shared"
    assert len({a[2] for a in answers}) == n, "a UTS namespace was shared"
    assert {a[3] for a in answers} == {"1"}, "/tmp was shared"
    assert all(int(a[4]) < 10 for a in answers), "not a pid namespace of its own"
    lst.wait_for(lambda e: e["event"] == "end", count=n)
    ends = lst.events("end")
    assert {e["verdict"] for e in ends} == {"ok"}
    index = {s.getsockname()[1]: i for i, s in enumerate(socks)}
    assert all(e["bytes_in"] == len(f"a{index[e['port']]}\nb{index[e['port']]}\nc\n")
               for e in ends)
    assert all(e["bytes_out"] > 20 and e["wall"] > 0 and e["cpu"] is not None for e in ends)
    starts = lst.events("start")
    assert len({e["jail"] for e in starts}) == n
    assert all(e["peer"] == addr and e["port"] for e in starts)
    for s in socks:
        s.close()
    assert lst.stop() == 0


@needs_root
def test_limits_and_verdicts_are_per_connection(listener: Callable[..., Listener]) -> None:
    lst = listener("--time-limit", "2", "--memory", "32M", "--", "/bin/sh", "-c",
                   "read what; case $what in sleep) sleep 60;; mem) head -c 200M /dev/zero | tail;;"
                   " fail) exit 3;; *) echo fine;; esac")
    socks = {w: lst.connect() for w in ("sleep", "mem", "fail", "ok")}
    ports = {w: s.getsockname()[1] for w, s in socks.items()}
    for w, s in socks.items():
        s.sendall(w.encode() + b"\n")
    assert read_all(socks["ok"]) == b"fine\n"
    for s in socks.values():
        read_all(s)
        s.close()
    lst.wait_for(lambda e: e["event"] == "end", count=4)
    by_port = {e["port"]: e for e in lst.events("end")}
    verdicts = {w: by_port[port]["verdict"] for w, port in ports.items()}
    assert verdicts == {"sleep": "time-limit", "mem": "memory-limit", "fail": "nonzero-exit",
                        "ok": "ok"}
    assert lst.stop() == 0


@needs_root
def test_admission_refuses_with_one_line(listener: Callable[..., Listener]) -> None:
    lst = listener("--max-conns", "2", "--max-conns-per-ip", "1", "--", "/bin/sh", "-c",
                   "echo in; sleep 30")
    first = lst.connect()
    assert read_until(first, b"in\n") == b"in\n"
    again = lst.connect()  # same address: over --max-conns-per-ip
    assert read_all(again) == b"isol8r: refused: too many connections from your address\n"
    other = lst.connect(source="127.0.0.2")
    assert read_until(other, b"in\n") == b"in\n"
    third = lst.connect(source="127.0.0.3")  # over --max-conns
    assert read_all(third) == b"isol8r: refused: too many connections, try again later\n"
    reasons = sorted(e["reason"] for e in lst.events("refused"))
    assert reasons == ["max-conns", "max-conns-per-ip"]
    for s in (first, again, other, third):
        s.close()
    assert lst.stop() == 0


@needs_root
def test_rate_per_source(listener: Callable[..., Listener]) -> None:
    lst = listener("--rate", "1", "--", "/bin/echo", "hello")
    got = []
    for _ in range(3):
        s = lst.connect()
        got.append(read_all(s))
        s.close()
    assert got[0] == b"hello\n"
    assert b"isol8r: refused: too many new connections from your address, slow down\n" in got[1:]
    s = lst.connect(source="127.0.0.2")  # another source has its own budget
    assert read_all(s) == b"hello\n"
    s.close()
    assert lst.stop() == 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _descendants(pid: int) -> int:
    """Processes under pid (the fork server, warm jails, running jails and what they run)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    found, todo = 0, [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += len(kids)
        todo += kids
    return found


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


@needs_root
def test_a_flood_of_clients_cannot_exhaust_the_listener(listener: Callable[..., Listener]) -> None:
    """300 connections at once, silent, talking and pushing megabytes at a program that never
    reads, and a proof-of-work line that never ends: the listener's descriptors and memory stay
    bounded by --max-conns, it refuses the rest, and it serves again once they are gone."""
    lst = listener("--max-conns", "4", "--pow", "1", "--time-limit", "20", "--", "/bin/sh", "-c",
                   "echo served; sleep 30")
    base_fds, base_rss = _fds(lst.proc.pid), _rss_kib(lst.proc.pid)
    socks = []
    junk = b"x" * 65536
    for i in range(300):
        try:
            s = lst.connect()
        except OSError:
            continue
        s.setblocking(False)
        if i % 3 == 1:
            try:
                for _ in range(16):
                    s.send(junk)  # a line with no end, megabytes of it
            except OSError:  # full (BlockingIOError), or refused and closed already
                pass
        socks.append(s)
    time.sleep(1)
    assert _fds(lst.proc.pid) <= base_fds + 4 * 8
    assert _rss_kib(lst.proc.pid) < base_rss + 16 * 1024
    assert _descendants(lst.proc.pid) <= 64  # 4 jails at most, and the warm ones
    refused = [e for e in lst.events("refused") if e["reason"] == "max-conns"]
    assert len(refused) >= 290
    for s in socks:
        s.close()
    lst.wait_for(lambda e: e["event"] == "end", count=len(socks) - len(refused), timeout=30)
    s = lst.connect()
    banner = read_until(s, b"Solution? ").decode()
    chal = re.search(r"solve (s\.\S+)", banner).group(1)  # type: ignore[union-attr]
    s.sendall(my_solve(chal).encode() + b"\n")
    assert read_until(s, b"served\n") == b"Correct\nserved\n"
    s.close()
    assert _fds(lst.proc.pid) <= base_fds + 4 * 8
    assert lst.stop() == 0


@needs_root
def test_a_client_that_disconnects_ends_its_jail(listener: Callable[..., Listener]) -> None:
    """Two ways of leaving: a close while the program writes (its next write meets a reset; the
    program ignores SIGPIPE, so only the listener ends it), and a reset while it is silent."""
    lst = listener("--time-limit", "60", "--", "/bin/sh", "-c",
                   "trap '' PIPE; read mode; echo ready; "
                   "if [ $mode = loud ]; then while :; do sleep 0.1; echo tick || :; done; "
                   "else sleep 60; fi")
    loud = lst.connect()
    loud.sendall(b"loud\n")
    read_until(loud, b"ready\n")
    quiet = lst.connect()
    quiet.sendall(b"quiet\n")
    read_until(quiet, b"ready\n")
    t0 = time.monotonic()
    loud.close()
    quiet.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    quiet.close()  # a reset
    lst.wait_for(lambda e: e["event"] == "end", count=2, timeout=30)
    assert time.monotonic() - t0 < 30
    ends = lst.events("end")
    assert [e["verdict"] for e in ends] == ["disconnected", "disconnected"]
    assert not [e["jail"] for e in lst.events("start") if alive(e["jail"])]
    assert lst.stop() == 0


@needs_root
def test_a_client_that_never_reads_is_ended_by_the_time_limit(
        listener: Callable[..., Listener]) -> None:
    lst = listener("--time-limit", "2", "--", "/usr/bin/yes")
    stuck = lst.connect()  # never reads: yes blocks on a full socket
    lst.wait_for(lambda e: e["event"] == "start")
    other = lst.connect()  # the listener is not blocked by it
    assert other.recv(2) == b"y\n"
    other.close()
    end = lst.wait_for(lambda e: e["event"] == "end" and e["conn"] == 1, timeout=30)
    assert end["verdict"] == "time-limit"
    assert end["bytes_out"] > 0
    stuck.close()
    assert lst.stop() == 0


@needs_root
def test_sigterm_drains_then_kills_and_leaves_nothing(listener: Callable[..., Listener]) -> None:
    lst = listener("--drain", "3", "--", "/bin/sh", "-c",
                   "read t; echo up; sleep $t; echo done")
    short, long = lst.connect(), lst.connect()
    short.sendall(b"1\n")
    long.sendall(b"60\n")
    read_until(short, b"up\n")
    read_until(long, b"up\n")
    lst.proc.send_signal(signal.SIGTERM)
    lst.wait_for(lambda e: e["event"] == "stopping")
    with pytest.raises(ConnectionRefusedError):
        lst.connect()
    assert read_all(short) == b"done\n"  # it finished within the drain
    assert read_all(long) == b""  # killed at its end
    assert lst.proc.wait(timeout=30) == 0
    ends = {e["conn"]: e["verdict"] for e in lst.events("end")}
    assert ends == {1: "ok", 2: "drained"}
    assert lst.events()[-1]["event"] == "stopped"
    assert not [e["jail"] for e in lst.events("start") if alive(e["jail"])]
    short.close()
    long.close()


@needs_root
def test_a_restart_binds_the_same_port_at_once(listener: Callable[..., Listener]) -> None:
    first = listener("--", "/bin/echo", "one")
    s = first.connect()
    assert read_all(s) == b"one\n"  # the server closed first: its side is in TIME_WAIT
    s.close()
    assert first.stop() == 0
    second = listener("--", "/bin/echo", "two", port=first.port)
    assert second.port == first.port
    s = second.connect()
    assert read_all(s) == b"two\n"
    s.close()
    assert second.stop() == 0


@needs_root
def test_text_log_and_sighup_reopens_it(listener: Callable[..., Listener], tmp_path: Path) -> None:
    lst = listener("--", "/bin/echo", "hi", fmt="text")
    text = lst.log.read_text()
    assert re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z listening addr=127\.0\.0\.1 port=\d+", text), text
    rotated = tmp_path / "rotated.log"
    lst.log.rename(rotated)
    lst.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not lst.log.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    s = lst.connect()
    assert read_all(s) == b"hi\n"
    s.close()
    deadline = time.monotonic() + 10
    while " end " not in lst.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    line = [x for x in lst.log.read_text().splitlines() if " end " in x][0]
    assert re.search(r" end conn=1 peer=127\.0\.0\.1 port=\d+ verdict=ok status=0 .*wall=", line)
    assert "bytes_out=3" in line
    assert " end " not in rotated.read_text()
    lst.proc.send_signal(signal.SIGTERM)
    assert lst.proc.wait(timeout=30) == 0


@needs_root
def test_inetd_serves_the_connection_on_stdin(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        client = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
    proc = subprocess.Popen([*LISTEN, "--inetd", "--log", str(tmp_path / "log"), "--",
                             "/bin/sh", "-c", "read x; echo got $x; exit 7"],
                            stdin=conn, stdout=conn, env=ENV)
    conn.close()
    client.sendall(b"abc\n")
    assert read_all(client) == b"got abc\n"
    client.close()
    assert proc.wait(timeout=30) == 7
    assert "verdict=nonzero-exit" in (tmp_path / "log").read_text()


@needs_root
def test_systemd_socket_activation(listener: Callable[..., Listener]) -> None:
    """A socket made by the 'service manager' (this test) as fd 3, LISTEN_FDS=1, LISTEN_PID."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    fd = srv.fileno()

    def as_fd3() -> None:
        os.dup2(fd, 3)
    lst = listener("--", "/bin/echo", "activated", addr="", pass_fds=[fd, 3], preexec_fn=as_fd3,
                   prefix=["/bin/sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"', "sh"])
    srv.close()
    assert lst.port == port
    lst.addr = "127.0.0.1"
    s = lst.connect()
    assert read_all(s) == b"activated\n"
    s.close()
    assert lst.stop() == 0


@needs_root
def test_proof_of_work_before_the_jail(listener: Callable[..., Listener]) -> None:
    lst = listener("--pow", "3", "--", "/bin/sh", "-c", "read x; echo got $x")
    s = lst.connect()
    banner = read_until(s, b"Solution? ").decode()
    assert banner.startswith("== proof-of-work: enabled ==\nplease solve a pow first\n")
    chal = re.search(r"solve (s\.\S+)\n", banner).group(1)  # type: ignore[union-attr]
    s.sendall(my_solve(chal).encode() + b"\nabc\n")  # the program's input in the same packet
    assert read_all(s) == b"Correct\ngot abc\n"
    s.close()
    bad = lst.connect()
    read_until(bad, b"Solution? ")
    bad.sendall(b"s.AAAA\n")
    assert read_all(bad) == b"Proof-of-work fail\n"
    bad.close()
    lst.wait_for(lambda e: e["event"] == "end", count=2)
    assert [e["verdict"] for e in lst.events("end")] == ["ok", "pow-failed"]
    assert len(lst.events("start")) == 1  # no jail for a failed proof
    assert lst.stop() == 0


@needs_root
def test_stderr_goes_to_the_log_or_the_connection(listener: Callable[..., Listener]) -> None:
    prog = ["/bin/sh", "-c", "echo out; echo err >&2"]
    text = listener("--", *prog, fmt="text")
    s = text.connect()
    assert read_all(s) == b"out\n"
    s.close()
    text.wait_for(lambda e: e["event"] == "end")
    assert "err\n" in text.log.read_text()
    conn = listener("--stderr", "conn", "--", *prog)
    s = conn.connect()
    assert read_all(s) == b"out\nerr\n"
    s.close()
    assert text.stop() == 0 and conn.stop() == 0


@needs_root
def test_without_addr_it_listens_on_ipv4_and_ipv6(listener: Callable[..., Listener]) -> None:
    lst = listener("--port", "0", "--", "/bin/echo", "both", addr="")
    assert lst.events("listening")[0]["addr"] == "::"
    for addr in ("127.0.0.1", "::1"):
        lst.addr = addr
        s = lst.connect()
        assert read_all(s) == b"both\n"
        s.close()
    assert [e["peer"] for e in lst.events("start")] == ["127.0.0.1", "::1"]
    assert lst.stop() == 0


@needs_root
def test_a_profile_and_run_options_apply_to_every_connection(
        listener: Callable[..., Listener], tmp_path: Path) -> None:
    """The shipped ctf-service profile (hostname, limits, seccomp), a flag over it, a bind."""
    (tmp_path / "chal").mkdir()
    (tmp_path / "chal" / "flag.txt").write_text("flag{jailed}\n")
    (tmp_path / "chal").chmod(0o755)
    (tmp_path / "chal" / "flag.txt").chmod(0o644)
    lst = listener("--profile", "ctf-service", "--ro-bind", f"{tmp_path / 'chal'}:/chal",
                   "--", "/bin/sh", "-c",
                   "hostname; cat /chal/flag.txt; ulimit -n; touch /chal/x 2>/dev/null || echo ro")
    for _ in range(2):
        s = lst.connect()
        assert read_all(s) == b"ctf\nflag{jailed}\n64\nro\n"
        s.close()
    assert lst.stop() == 0


@needs_root
def test_end_on_eof_ends_a_silent_jail_when_its_client_closes(
        listener: Callable[..., Listener]) -> None:
    """A plain close (a FIN, no reset) while the program neither reads nor writes: only
    --end-on-eof can tell; without it the time limit would (the program may answer still)."""
    lst = listener("--end-on-eof", "--time-limit", "60", "--", "/bin/sh", "-c",
                   "echo ready; exec sleep 60")
    s = lst.connect()
    read_until(s, b"ready\n")
    s.close()
    end = lst.wait_for(lambda e: e["event"] == "end", timeout=30)
    assert end["verdict"] == "disconnected" and end["wall"] < 30
    assert lst.stop() == 0
