"""protocol.py without root: every message round-trips; every truncation of every encoded message,
and garbage, raise ProtocolError at once (never a hang, never a bare marshal error); a message
over wire.INLINE crosses a real socketpair in its memfd."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from isol8r import protocol, wire  # noqa: E402
from isol8r.errors import ExecError, Isol8rError, ProtocolError, SetupError, SpecError  # noqa: E402
from isol8r.protocol import (  # noqa: E402
    Armed, Command, Exec, Exit, Failure, Forked, Go, Hold, Lease, Leased, Local, Open, Opened,
    Reaped, Request, Run, Signal, Stale, Started, Status, Stop, Terminal, Timing)
from isol8r.protocol import (  # noqa: E402
    SandboxCopy, SandboxCreate, SandboxDone, SandboxExec, SandboxList, SandboxRemove)
from isol8r.spec import Spec  # noqa: E402

SPEC = Spec.from_options(["/bin/echo", "hi"], {"bind": ["/usr:/mnt"], "memory": "64M",
                                               "env": ["A=1"], "dir": ["/work:0700"]})

MESSAGES = [
    Failure("mount /proc", 1, "detail with a path /x"),
    Failure("execve", 2, "/bin/nope"),
    Failure("--rootfs", 0, "unsafe root", "spec", "/srv/root"),
    Failure("--overlay", 0, "needs --rootfs", "spec", None),
    Failure("", 0, "the CLI server's worker died during the run (signal 9)", "error"),
    Go(False, False), Go(True, False), Go(False, True), Go(True, True),
    Request([b"/bin/sh", b"-c", b"x\n\0y"], [(b"PATH", b"/bin"), (b"K", b"\xff")], [b"/bin"],
            "/tmp", ((7, 64, 64),), b"\0" * 16, 0, [0, 1, 2], False),
    Request([b"/x"], [], [], "/", (), None, 2, [], True),
    Timing("mounts", 1234, 5678), Timing("  bind /usr -> /mnt", 0, 1),
    Exec(123456789),
    Status(0, 0.25, 0.125, 4096, 99, True), Status(9, 0.0, 0.0, 0, 0, False),
    Terminal(),
    Lease(SPEC, False), Lease(Spec.from_options(["/bin/true"]), True),
    Leased(42, {"FSIZE": (1, 1)}, {"memory": 64, "rlimits": {"NOFILE": [64, 64]}, "cgroup": "v2"},
           ["a note"], (2, {"memory": "/sys/fs/cgroup/x"}), None),
    Reaped(0, 0.5, 0.25, 1024, (0.1, 0.2, 4096, False, 3)), Reaped(256, 0.0, 0.0, 0, None),
    Run([b"run", b"--", b"/bin/true"], [(b"HOME", b"/root")], [0, 1, 2], None),
    Run([b"run", b"--", b"\xff"], [], [], 1234),
    Stop(), Signal(2), Started(77), Stale(), Local(), Exit(0), Exit(137), Armed(),
    Hold(SPEC, False), Command(0, False), Command(3, True), Forked(),
    Open(b"/tmp/a\xff", os.O_WRONLY | os.O_CREAT, 0o644), Opened(),
    SandboxCreate("", None, {}), SandboxCreate("build", 30.0, {"memory": "64M", "share_net": True,
                                                                "bind": ["/a:/b"], "pids": 10}),
    SandboxExec("3f2a9c01d4e5", [b"/bin/sh", b"-c", b"\xff"], {"tty": True, "env": ["A=1"]}, False),
    SandboxExec("build", [b"/bin/true"], {}, True),
    SandboxCopy("build", b"/tmp/x\xff", True, 0o755), SandboxCopy("x", b"rel", False, 0o644),
    SandboxList(), SandboxRemove(""), SandboxRemove("build"),
    SandboxDone(0, "3f2a9c01d4e5"), SandboxDone(137, '{"verdict": "signaled"}'),
]


def test_every_message_class_is_covered() -> None:
    classes = {type(m) for m in MESSAGES}
    assert classes == set(protocol.CLASSES)
    assert len({c.TAG for c in protocol.CLASSES}) == len(protocol.CLASSES)  # one tag each


@pytest.mark.parametrize("msg", MESSAGES, ids=repr)
def test_round_trip(msg: object) -> None:
    data = msg.encode()  # type: ignore[attr-defined]
    back = protocol.decode(data)
    assert type(back) is type(msg)
    assert back == msg
    assert type(msg).decode(data) == msg  # the class's own decode


def test_lease_round_trips_the_spec() -> None:
    back = Lease.decode(Lease(SPEC, True).encode())
    assert back.spec == SPEC and back.verbose is True
    assert hash(back.spec) == hash(SPEC)  # a pool key


def test_jail_records_hold_no_newline() -> None:
    """init's pipe is line-based: a record with a newline would be cut in two."""
    for msg in (Failure("chdir /a\nb", 2, "x\ny"), Timing("a\nb", 1, 2), Exec(1),
                Status(0, 0.0, 0.0, 0, 0, False), Failure("s", 1, "d", "spec", "v\nw")):
        assert b"\n" not in msg.encode()


def test_failure_is_one_type_everywhere() -> None:
    """The child's raise, its record, the fork server's error reply and the typed exception."""
    f = Failure("mount /proc", 1, "x")
    assert isinstance(f, Exception)
    e = Failure.decode(f.encode()).error()
    assert type(e) is SetupError and (e.step, e.errno, e.detail) == ("mount /proc", 1, "x")
    e = Failure.decode(Failure("find program", 2, "nope").encode()).error()
    assert type(e) is ExecError and e.exit_code == 127
    for err in (SetupError("cgroup", 22, "no"), ExecError("execve", 13, "/x"),
                SpecError("--rootfs", "/srv", "unsafe root"), SpecError("--overlay", True, "needs x"),
                SpecError("", ["a", "b"], "options cannot be combined"), Isol8rError("plain")):
        back = Failure.decode(Failure.of(err).encode()).error()
        assert type(back) is type(err) and str(back) == str(err), (err, back)
    odd = Failure.decode(Failure.of(SpecError("--seccomp-profile", "\udcff", "no such file")).encode())
    assert str(odd.error()) == "--seccomp-profile \udcff: no such file"  # a non-UTF-8 value kept
    bug = Failure.of(KeyError("k"))
    assert bug.kind == "error" and "KeyError" in str(bug)
    assert Failure.plain("text") == Failure("", 0, "text", "error") and str(Failure.plain("t")) == "t"


def _bad_inputs() -> list[bytes]:
    out = []
    for msg in MESSAGES:
        data = msg.encode()  # type: ignore[attr-defined]
        out += [data[:n] for n in range(len(data))]
    return out


def test_every_truncation_and_garbage_raises_protocol_error() -> None:
    """Each prefix of each message either decodes to a well-formed message or raises
    ProtocolError; a text record's prefix may be a shorter valid record (Exec(12) of
    Exec(123)), a marshal body's never is. All of it quickly."""
    garbage = [b"", b"\0", b"\xff" * 10, b"Z", b"Qgarbage", b"R" + b"\x00" * 40, b"L" + bytes(range(64)),
               b"E", b"Eonly-a-step", b"Estep\0notanumber\0d", b"Es\x001\x00d\x00weird",
               b"S1\x002", b"S1\x00x\x000\x000\x000\x001", b"S0\x000.0\x000.0\x000\x000\x002",
               b"Xabc", b"Tstep\x001", b"GQ", b"Pextra", b"Khello",
               b"K" + __import__("marshal").dumps((9,)),  # SIGKILL is not a signal to forward
               b"R" + __import__("marshal").dumps(([b"a"], [], [-1], None)),
               b"Q" + __import__("marshal").dumps(([], [], [], "/", (), None, 0, [], False)),
               b"L" + __import__("marshal").dumps(({"argv": ()}, False)),
               b"C" + __import__("marshal").dumps(("zero",)),
               b"A" + __import__("marshal").dumps((1, 2))]
    t0 = time.monotonic()
    raised = 0
    for data in _bad_inputs() + garbage:
        try:
            msg = protocol.decode(data)
        except ProtocolError:
            raised += 1
            continue
        # the only prefixes that may decode: text records cut inside their last number, or
        # Go's flags
        assert data[:1] in (b"X", b"T", b"S", b"E", b"G"), (data, msg)
        assert type(msg).decode(msg.encode()) == msg  # type: ignore[union-attr]
    assert raised > 1000
    assert time.monotonic() - t0 < 5


def test_expect_refuses_the_wrong_message() -> None:
    with pytest.raises(ProtocolError, match="Exit or Failure"):
        protocol.expect(Started(1).encode(), Exit, Failure)
    with pytest.raises(ProtocolError):
        Exit.decode(Armed().encode())
    assert protocol.ProtocolError is ProtocolError


def test_big_message_crosses_a_socketpair_in_a_memfd() -> None:
    big = Request([b"/bin/echo", b"x" * (3 * wire.INLINE)], [(b"A", b"b" * wire.INLINE)], [b"/"],
                  "/", (), None, 0, [0], False)
    data = big.encode()
    assert len(data) > wire.INLINE
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    r, w = os.pipe()
    try:
        wire.send(a, data, [r])
        got, fds = wire.recv(b, 4096, 4)
        assert protocol.decode(got) == big
        assert len(fds) == 1
        os.write(w, b"!")
        assert os.read(fds[0], 1) == b"!"  # the descriptor sent with it, not the memfd
        os.close(fds[0])
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def test_thin_client_imports_only_built_ins() -> None:
    """protocol (and wire) are on the CLI's thin client path: none of the modules whose import
    costs milliseconds at every start."""
    import subprocess
    code = ("import sys; before = set(sys.modules); import isol8r.daemon.cliserver; "
            "print(sorted(set(sys.modules) - before))")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         env=env, check=True)
    loaded = set(eval(out.stdout))
    assert "isol8r.protocol" in loaded
    heavy = {"typing", "dataclasses", "enum", "socket", "subprocess", "pickle", "selectors", "re",
             "struct", "isol8r.errors", "isol8r.spec", "isol8r.supervisor"}
    assert not loaded & heavy, sorted(loaded & heavy)


def test_sandbox_daemon_messages_refuse_odd_fields() -> None:
    """The sandbox daemon runs as root and reads any local user's messages: options that are
    not plain values, and argv that is not bytes, are refused at decode."""
    import marshal
    for data in (b"c" + marshal.dumps(("", None, {1: "x"})),
                 b"c" + marshal.dumps(("", None, {"bind": [1]})),
                 b"c" + marshal.dumps(("", None, {"x": {"nested": 1}})),
                 b"c" + marshal.dumps(("", 5, {})),
                 b"x" + marshal.dumps(("id", ["str"], {}, False)),
                 b"p" + marshal.dumps(("id", "str", True, 0)),
                 b"r" + marshal.dumps((None,))):
        with pytest.raises(ProtocolError):
            protocol.decode(data)
