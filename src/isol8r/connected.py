"""Jails connected by pipes: an interactive problem's interactor and the contestant's program.

Each jail has its own Spec (its own limits) and its own Result; the run's verdict says which
side failed first (docs/interactive.md). The caller makes the pipes and hands each jail its
ends as it hands isol8r.run's stdin/stdout descriptors; every jail is leased from the fork
server and all are watched by one selector loop here (forkserver.Session each), so none needs a
thread. With a transcript the caller relays each pipe itself (a tee, bounded), which also
witnesses a reader that stopped reading (the write it refused).
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .errors import Isol8rError, SpecError
from .result import Result

if TYPE_CHECKING:
    from .daemon.forkserver import Client, Session
    from .spec import Spec
    from .supervisor import Stdio

ENDS = {"stdin": 0, "stdout": 1, "stderr": 2}
BROKEN_PIPE = "broken-pipe"  # the run's verdict when a reader stopped reading its writer
MAX_FD = 1023
RELAY_BUFFER = 1 << 20  # bytes a relay holds for a slow reader before it stops reading its writer


# ---- what the caller gives ----------------------------------------------------------------------


@dataclass(frozen=True)
class Party:
    """One jail of a connected run: its Spec, a name for messages, and what its descriptors that
    are on no pipe get (subprocess-style: None is stdin from /dev/null, stdout and stderr
    captured into its Result; a descriptor or a file object goes as it is)."""

    spec: Spec
    name: str = ""
    stdin: Any = None
    stdout: Any = None
    stderr: Any = None
    input: bytes | None = None


@dataclass(frozen=True)
class Pipe:
    """One pipe: what jail src writes on its descriptor src_fd, jail dst reads on dst_fd."""

    src: int
    src_fd: int
    dst: int
    dst_fd: int

    def label(self, names: Sequence[str]) -> str:
        return f"{names[self.src]}.{_end_name(self.src_fd)}>{names[self.dst]}.{_end_name(self.dst_fd)}"


def _end_name(fd: int) -> str:
    return {0: "stdin", 1: "stdout", 2: "stderr"}.get(fd, str(fd))


def party(j: Any, index: int) -> Party:
    """A Party from what run_connected takes: a Party, a Spec, an argv list, or a mapping of
    run options with "cmd" (and "name", "stdin", "stdout", "stderr", "input", "timeout")."""
    from . import spec_of
    from .spec import Spec
    if isinstance(j, Party):
        p = j
    elif isinstance(j, Spec):
        p = Party(spec_of(j, None, {}))
    elif isinstance(j, Mapping):
        opts = dict(j)
        cmd = opts.pop("cmd", None)
        if cmd is None:
            raise SpecError("jails", index, "a jail given as options needs \"cmd\": its argv")
        io = {k: opts.pop(k, None) for k in ("name", "stdin", "stdout", "stderr", "input")}
        timeout = opts.pop("timeout", None)
        if hasattr(opts.get("env"), "items"):  # as isol8r.run takes it: a mapping too
            opts["env"] = [f"{k}={v}" for k, v in opts["env"].items()]
        if isinstance(io["input"], str):
            io["input"] = io["input"].encode()
        p = Party(spec_of(cmd, timeout, opts), io["name"] or "", io["stdin"], io["stdout"],
                  io["stderr"], io["input"])
    elif isinstance(j, (str, bytes)):
        raise SpecError("jails", j, "give each jail as a list of arguments, a Spec or a Party")
    else:
        p = Party(spec_of(list(j), None, {}))
    if p.input is not None and p.stdin is not None:
        raise SpecError("jails", p.name or index, "stdin and input given both")
    if p.spec.tty:
        raise SpecError("--tty", p.name or index, "a connected jail has pipes, not a terminal")
    if not p.name:
        p = Party(p.spec, str(index), p.stdin, p.stdout, p.stderr, p.input)
    return p


def parse_pipes(pipes: Sequence[Any] | None, names: Sequence[str]) -> list[Pipe]:
    """The pipes as given: (src, end, dst, end) tuples or "src.end:dst.end" text, a side by
    index or name, an end stdin/stdout/stderr or a descriptor number. None with two jails: each
    one's stdout to the other's stdin. A descriptor on two pipes is refused."""
    if pipes is None:
        if len(names) != 2:
            raise SpecError("pipes", None, f"{len(names)} jails: say which pipes join them")
        pipes = [(0, "stdout", 1, "stdin"), (1, "stdout", 0, "stdin")]
    out: list[Pipe] = []
    used: dict[tuple[int, int], str] = {}
    for given in pipes:
        text = given if isinstance(given, str) else None
        parts = _pipe_text(given) if isinstance(given, str) else given
        shown = text or repr(given)
        try:
            src, src_end, dst, dst_end = parts
        except (TypeError, ValueError):
            raise SpecError("pipe", shown, "give (src, end, dst, end) or 'src.end:dst.end'") from None
        pipe = Pipe(_side(src, names, shown), _end(src_end, True, shown),
                    _side(dst, names, shown), _end(dst_end, False, shown))
        if pipe.src == pipe.dst:
            raise SpecError("pipe", shown, "a jail cannot be piped to itself")
        for key in ((pipe.src, pipe.src_fd), (pipe.dst, pipe.dst_fd)):
            if key in used:
                raise SpecError("pipe", shown, f"{names[key[0]]}.{_end_name(key[1])} is on "
                                f"another pipe already ({used[key]})")
            used[key] = shown
        out.append(pipe)
    if not out:
        raise SpecError("pipes", "[]", "no pipe joins the jails")
    return out


def _pipe_text(text: str) -> tuple[str, str, str, str]:
    if text.count(":") != 1:
        raise SpecError("pipe", text, "write it SRC.END:DST.END, e.g. 0.stdout:1.stdin")
    a, b = text.split(":")
    if "." not in a or "." not in b:
        raise SpecError("pipe", text, "write it SRC.END:DST.END, e.g. 0.stdout:1.stdin")
    (s, se), (d, de) = a.rsplit(".", 1), b.rsplit(".", 1)
    return s, se, d, de


def _side(value: Any, names: Sequence[str], shown: str) -> int:
    if isinstance(value, str) and value in names:
        return names.index(value)
    try:
        index = int(value)
    except (TypeError, ValueError):
        raise SpecError("pipe", shown, f"no jail named {value!r} (jails: "
                        f"{', '.join(names)})") from None
    if isinstance(value, bool) or not 0 <= index < len(names):
        raise SpecError("pipe", shown, f"no jail {value!r}: there are {len(names)}")
    return index


def _end(value: Any, writing: bool, shown: str) -> int:
    if isinstance(value, str) and value in ENDS:
        fd = ENDS[value]
    else:
        try:
            fd = int(value)
        except (TypeError, ValueError):
            raise SpecError("pipe", shown, f"{value!r}: an end is stdin, stdout, stderr or a "
                            "descriptor number") from None
        if isinstance(value, bool) or not 0 <= fd <= MAX_FD:
            raise SpecError("pipe", shown, f"{value!r}: not a descriptor number")
    if writing and fd == 0:
        raise SpecError("pipe", shown, "a pipe starts at what a jail writes: stdin is read")
    if not writing and fd in (1, 2):
        raise SpecError("pipe", shown, f"a pipe ends at what a jail reads: {_end_name(fd)} is written")
    return fd


# ---- the verdict ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """What the verdict rules know of one jail (times in seconds from the run's start)."""

    verdict: str
    signal: int | None = None
    ended_at: float | None = None
    failed_at: float | None = None  # when a limit was hit: before the jail ended, and the cause
    killed: bool = False  # ended by the run after another side failed: never the decider
    timed_out: bool = False  # ended by the run's own timeout
    outputs: tuple[int, ...] = ()  # the pipes it writes


@dataclass(frozen=True)
class Decision:
    verdict: str
    deciding: int | None
    reason: str


def decide(sides: Sequence[Side], pipes: Sequence[Pipe], broken: Sequence[float | None],
           names: Sequence[str] | None = None) -> Decision:
    """Which side failed first, and so the run's verdict (docs/interactive.md, "Verdict rules").

    A side ended by the run is never blamed. A failure of a writer after its reader stopped
    reading (a break the relay saw on one of its pipes, or death by SIGPIPE with one pipe out)
    is its reader's: verdict broken-pipe, at that moment. Any other failure is the side's own,
    at the moment its limit was hit or it ended. The earliest decides; none: ok. Sides that only
    the run's timeout ended decide only if there is one of them."""
    names = list(names) if names is not None else [str(i) for i in range(len(sides))]
    events: list[tuple[float, int, str, str]] = []
    timed: list[tuple[float, int, str, str]] = []
    for i, s in enumerate(sides):
        if s.killed or s.verdict == "ok":
            continue
        end = s.ended_at if s.ended_at is not None else float("inf")
        at = s.failed_at if s.failed_at is not None else end
        breaks = sorted((broken[p], p) for p in s.outputs
                        if broken[p] is not None and broken[p] <= end)  # type: ignore[operator]
        if breaks:
            t, p = breaks[0]
            r = pipes[p].dst
            events.append((t, r, BROKEN_PIPE, f"{names[r]} stopped reading {pipes[p].label(names)}"
                           f" at +{t:.3f} s; {names[i]} then ended {s.verdict}"))
        elif s.signal == signal.SIGPIPE and len(s.outputs) == 1:
            p = s.outputs[0]
            r = pipes[p].dst
            events.append((end, r, BROKEN_PIPE, f"{names[r]} stopped reading "
                           f"{pipes[p].label(names)}: {names[i]} died of SIGPIPE at +{end:.3f} s"))
        else:
            (timed if s.timed_out else events).append(
                (at, i, s.verdict, f"{names[i]} failed first: {s.verdict} at +{at:.3f} s"))
    if events:
        _, side, verdict, why = min(events, key=lambda e: (e[0], e[1]))
        return Decision(verdict, side, why)
    if len(timed) == 1:
        _, side, verdict, why = timed[0]
        return Decision(verdict, side, why + " (the run's timeout)")
    if timed:
        ended = ", ".join(names[e[1]] for e in timed)
        return Decision("time-limit", None, f"the run's timeout ended {ended}: none failed first")
    killed = [names[i] for i, s in enumerate(sides) if s.killed]
    return Decision("ok", None, "every jail ended ok" if not killed else
                    f"ok; the run ended {', '.join(killed)}")


# ---- the result -----------------------------------------------------------------------------------


@dataclass
class PipeRecord:
    """One pipe after the run: with a relay, the bytes that crossed it and when its reader
    refused a write (seconds from the start); None for both on a direct pipe."""

    src: int
    src_fd: int
    dst: int
    dst_fd: int
    label: str
    bytes: int | None = None
    broken_at: float | None = None


@dataclass
class Chunk:
    """What one read of a relayed pipe carried, at seconds from the run's start."""

    at: float
    pipe: int
    data: bytes


@dataclass
class ConnectedResult:
    """The run's verdict, the side that decided it, and every jail's own Result."""

    verdict: str
    deciding: int | None
    reason: str
    names: list[str]
    results: list[Result]
    killed: list[bool]
    pipes: list[PipeRecord]
    wall_time: float = 0.0
    transcript: list[Chunk] | None = None
    transcript_truncated: bool = False

    @property
    def deciding_name(self) -> str | None:
        return self.names[self.deciding] if self.deciding is not None else None

    @property
    def status(self) -> int:
        """The CLI's exit status: 0 when ok, else the deciding side's status (141, SIGPIPE's,
        for broken-pipe; 1 when its own status is 0 or no side decided)."""
        if self.verdict == "ok":
            return 0
        if self.verdict == BROKEN_PIPE:
            return 128 + signal.SIGPIPE
        if self.deciding is None:
            return 1
        return self.results[self.deciding].status or 1

    def describe(self) -> str:
        return f"{self.verdict}" + (f" ({self.deciding_name})" if self.deciding is not None
                                    else "") + f": {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"verdict": self.verdict, "deciding": self.deciding,
                             "deciding_name": self.deciding_name, "reason": self.reason,
                             "status": self.status, "wall_time": self.wall_time,
                             "jails": [{"name": n, "killed": k, "result": r.to_dict()}
                                       for n, k, r in zip(self.names, self.killed, self.results)],
                             "pipes": [asdict(p) for p in self.pipes]}
        if self.transcript is not None:
            d["transcript"] = [{"at": round(c.at, 6), "pipe": c.pipe,
                                "data": c.data.decode("utf-8", "replace")} for c in self.transcript]
            d["transcript_truncated"] = self.transcript_truncated
        return d

    def to_json(self) -> str:
        import json
        return json.dumps(self.to_dict(), indent=2)

    def __repr__(self) -> str:
        return (f"ConnectedResult(verdict={self.verdict!r}, deciding={self.deciding_name!r}, "
                f"results={self.results!r})")


# ---- the caller's relay (a tee) --------------------------------------------------------------------


class Transcript:
    """Chunks of every relayed pipe in the order they were read, up to limit bytes in all."""

    def __init__(self, limit: int, t0: Callable[[], float]) -> None:
        self.limit, self.t0 = limit, t0
        self.size = 0
        self.chunks: list[Chunk] = []
        self.truncated = False

    def add(self, pipe: int, data: bytes) -> None:
        room = self.limit - self.size
        if len(data) > room:
            self.truncated = True
            data = data[:max(room, 0)]
        if data:
            self.size += len(data)
            self.chunks.append(Chunk(time.monotonic() - self.t0(), pipe, data))


class Relay:
    """One pipe relayed by the caller: reads the writer's end, writes the reader's. A write the
    reader refuses (EPIPE: it closed its end) is recorded and the writer's end closed, so its
    next write fails as it would on a direct pipe."""

    def __init__(self, index: int, r_in: int, w_out: int, transcript: Transcript,
                 on_bytes: Callable[[int], None]) -> None:
        self.index, self.r_in, self.w_out = index, r_in, w_out
        self.transcript, self.on_bytes = transcript, on_bytes
        self.buf = bytearray()
        self.total = 0
        self.broken_at: float | None = None
        self.reading = self.writing = False
        self.sel: Any = None

    @property
    def done(self) -> bool:
        return self.r_in < 0

    def register(self, sel: Any) -> None:
        self.sel = sel
        os.set_blocking(self.r_in, False)
        os.set_blocking(self.w_out, False)
        self._read_on()

    def _read_on(self) -> None:
        if not self.reading and self.r_in >= 0:
            self.sel.register(self.r_in, selectors.EVENT_READ, (self, "in"))
            self.reading = True

    def _read_off(self) -> None:
        if self.reading:
            self.sel.unregister(self.r_in)
            self.reading = False

    def handle(self, sel: Any, key: Any) -> None:
        if key.data[1] == "out":
            self._flush()
            return
        try:
            data = os.read(self.r_in, 65536)
        except BlockingIOError:
            return
        if not data:
            self._read_off()
            os.close(self.r_in)
            self.r_in = -1
            if not self.buf:
                self._close_out()
            return
        self.total += len(data)
        self.transcript.add(self.index, data)
        self.on_bytes(len(data))
        self.buf += data
        self._flush()

    def _flush(self) -> None:
        while self.buf and self.w_out >= 0:
            try:
                n = os.write(self.w_out, self.buf)
            except BlockingIOError:
                break
            except BrokenPipeError:
                self.broken_at = time.monotonic()
                self.buf.clear()
                self._close_out()
                self._read_off()
                if self.r_in >= 0:
                    os.close(self.r_in)
                    self.r_in = -1
                return
            del self.buf[:n]
        if self.buf:
            if not self.writing:
                self.sel.register(self.w_out, selectors.EVENT_WRITE, (self, "out"))
                self.writing = True
            if len(self.buf) >= RELAY_BUFFER:
                self._read_off()
            return
        if self.writing:
            self.sel.unregister(self.w_out)
            self.writing = False
        if self.r_in < 0:
            self._close_out()
        else:
            self._read_on()

    def _close_out(self) -> None:
        if self.writing:
            self.sel.unregister(self.w_out)
            self.writing = False
        if self.w_out >= 0:
            os.close(self.w_out)
            self.w_out = -1

    def close(self) -> None:
        if self.sel is not None:
            self._read_off()
            self._close_out()
        for fd in (self.r_in, self.w_out):
            if fd >= 0:
                os.close(fd)
        self.r_in = self.w_out = -1


# ---- the run ------------------------------------------------------------------------------------


def run_connected(jails: Sequence[Any], pipes: Sequence[Any] | None = None, *,
                  grace: float = 1.0, timeout: float | None = None,
                  transcript: int | None = None, forward_signals: bool = False) -> ConnectedResult:
    """Run jails joined by pipes, all at once, each with its own limits and Result.

    jails: Party, Spec, argv lists or option mappings ({"cmd": [...], "time_limit": 2, ...}).
    pipes: (src, end, dst, end) or "src.end:dst.end"; None with two jails joins each one's
    stdout to the other's stdin. grace: how long the others may run once a side ended
    abnormally (then SIGKILL: they are marked killed, never blamed). timeout: the whole run's
    wall clock (the sides still running then get time-limit). transcript: None for direct
    pipes; a byte count to relay every pipe through this process and keep that much of what
    crossed (0: relay and count only). Raises SpecError for bad input, SetupError when a jail
    could not be set up; nothing is left running either way."""
    from .daemon import forkserver
    parties = [party(j, i) for i, j in enumerate(jails)]
    if len(parties) < 2:
        raise SpecError("jails", len(parties), "connect two jails or more")
    names = [p.name for p in parties]
    if len(set(names)) != len(names):
        raise SpecError("jails", names, "two jails have the same name")
    edges = parse_pipes(pipes, names)
    for e in edges:
        for side, fd in ((e.src, e.src_fd), (e.dst, e.dst_fd)):
            p = parties[side]
            if fd in p.spec.pass_fds:
                raise SpecError("pipe", e.label(names), f"{p.name} passes descriptor {fd} already")
            if fd == 0 and p.input is not None:
                raise SpecError("pipe", e.label(names), f"{p.name} has input, and stdin on a pipe")
    if grace < 0:
        raise SpecError("grace", grace, "a time in seconds, 0 or more")
    if timeout is not None and not timeout > 0:
        raise SpecError("timeout", timeout, "a time in seconds, more than 0")
    if transcript is not None and transcript < 0:
        raise SpecError("transcript", transcript, "a size in bytes, 0 or more")
    return _Run(parties, edges, grace, timeout, transcript).go(forkserver.shared_client(),
                                                                forward_signals)


@dataclass
class _State:
    """What the run's loop learns of one side, for the grace, the timeout and the verdict."""

    ended_at: float | None = None
    failed_at: float | None = None
    ok: bool = True
    kill_sent: bool = False
    timed_out: bool = False
    relayed: int = 0  # bytes this side wrote into relayed pipes (its --output-limit)


class _Run:
    """One connected run: the pipes, a Session per jail, the relays, one loop over them all."""

    def __init__(self, parties: list[Party], edges: list[Pipe], grace: float,
                 timeout: float | None, transcript: int | None) -> None:
        self.parties, self.edges, self.grace, self.timeout = parties, edges, grace, timeout
        self.relaying = transcript is not None
        self.t0 = time.monotonic()
        self.transcript = Transcript(transcript or 0, lambda: self.t0)
        self.relays: list[Relay] = []
        self.sessions: list[Session] = []
        self.states = [_State() for _ in parties]
        self.kill_at: float | None = None
        self.deadline: float | None = None
        self.drain_until: float | None = None

    # -- descriptors

    def _plumb(self) -> list[dict[int, int]]:
        """Every pipe, made here: each jail's ends by its descriptor number; a relay keeps the
        middle ends when relaying."""
        ends: list[dict[int, int]] = [{} for _ in self.parties]
        try:
            for k, e in enumerate(self.edges):
                r, w = os.pipe2(os.O_CLOEXEC)
                ends[e.dst][e.dst_fd] = r
                if not self.relaying:
                    ends[e.src][e.src_fd] = w
                    continue
                try:
                    r_in, w_in = os.pipe2(os.O_CLOEXEC)
                except OSError:
                    os.close(w)
                    raise
                ends[e.src][e.src_fd] = w_in
                self.relays.append(Relay(k, r_in, w, self.transcript,
                                         lambda n, side=e.src: self._relayed(side, n)))
        except OSError:
            for d in ends:
                for fd in d.values():
                    os.close(fd)
            for relay in self.relays:
                relay.close()
            raise
        return ends

    def _stdio(self, p: Party, ends: dict[int, int]) -> Stdio:
        """open_stdio's descriptors for what is on no pipe; the pipe ends at their numbers
        (closed here once the jail has them). A piped stdout is never relayed by open_stdio
        for --output-limit (its blocking copy would stall this loop): the limit then counts the
        captured streams, and the relayed pipes (_relayed)."""
        import subprocess

        from . import supervisor
        spec = p.spec
        opened = spec.replace(output_limit=None) if spec.output_limit is not None and \
            (1 in ends or 2 in ends) else spec
        stdin = ends.get(0, p.stdin if p.stdin is not None or p.input is not None
                         else subprocess.DEVNULL)
        if p.input is not None and 0 not in ends:
            stdin = None
        stdout = ends.get(1, p.stdout if p.stdout is not None else subprocess.PIPE)
        stderr = ends.get(2, p.stderr if p.stderr is not None else subprocess.PIPE)
        stdio = supervisor.open_stdio(opened, stdin, stdout, stderr, p.input, False, lambda _v: None)
        stdio.io.output_limit = spec.output_limit
        stdio.child.extend((fd, t) for t, fd in ends.items() if t > 2)
        stdio.close_after_start.extend(ends.values())
        return stdio

    def _relayed(self, side: int, n: int) -> None:
        st = self.states[side]
        st.relayed += n
        limit = self.parties[side].spec.output_limit
        if limit is not None and st.relayed > limit and st.ended_at is None:
            self.sessions[side].watch.limit_hit("output-limit")  # type: ignore[union-attr]

    # -- the run

    def go(self, client: Client, forward_signals: bool) -> ConnectedResult:
        from . import supervisor
        from .daemon import forkserver
        ends = self._plumb()
        stdios: list[Stdio] = []
        answers: list[tuple[bytes, list[int]]] = []
        begun = 0
        try:
            for i, p in enumerate(self.parties):
                stdios.append(self._stdio(p, ends[i]))
                ends[i] = {}  # the stdio closes them now
            for p, stdio in zip(self.parties, stdios):
                sock, answer = client.answered_lease(p.spec, False)
                self.sessions.append(forkserver.Session(sock, p.spec, stdio, None))
                answers.append(answer)
            with supervisor.Forwarder(forward_signals) as fwd:
                for session, answer in zip(self.sessions, answers):
                    begun += 1
                    session.begin(*answer)
                self.t0 = time.monotonic()
                if self.timeout is not None:
                    self.deadline = self.t0 + self.timeout
                sel = selectors.DefaultSelector()
                try:
                    for session in self.sessions:
                        session.register(sel)
                    for relay in self.relays:
                        relay.register(sel)
                    fwd.attach(self._forward)
                    supervisor.drive(sel, self._tick, self._finished)
                    self._observe(time.monotonic())
                finally:
                    for relay in self.relays:
                        relay.close()
                    sel.close()
        finally:
            for d in ends:
                for fd in d.values():
                    os.close(fd)
            for answer in answers[begun:]:
                for fd in answer[1]:
                    os.close(fd)
            for n, stdio in enumerate(stdios[begun:], begun):
                for fd in stdio.close_after_start:  # begin() closes them for the others
                    os.close(fd)
                stdio.close_after_start = []
                if n >= len(self.sessions):  # a session closes its own
                    stdio.io.close()
            for session in self.sessions:
                session.close()
            for relay in self.relays:
                relay.close()
        if any(s.late for s in self.sessions):
            raise client.replace("no reap report")
        return self._result()

    def _forward(self, sig: int) -> None:
        for session in self.sessions:
            if session.watch is not None:
                session.watch.jail.forward(sig)

    def _observe(self, now: float) -> None:
        """Note each side's failure (a limit hit) and end as soon as they are known; an abnormal
        end starts the others' grace."""
        for i, session in enumerate(self.sessions):
            w, st = session.watch, self.states[i]
            if w is None:
                continue
            if st.failed_at is None and w.verdict is not None:
                st.failed_at = now
            if st.ended_at is not None:
                continue
            status = w.program[0] if w.program is not None else \
                w.reaped_report[0] if w.reaped_report is not None else None
            if status is None and w.error is None:
                continue
            st.ended_at = w.exited_at if w.program is not None and w.exited_at else now
            st.ok = w.error is None and w.verdict is None and status is not None \
                and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            if not st.ok and not st.kill_sent:
                at = st.ended_at + self.grace
                self.kill_at = at if self.kill_at is None else min(self.kill_at, at)

    def _tick(self, now: float) -> float | None:
        self._observe(now)
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            for session, st in zip(self.sessions, self.states):
                if st.ended_at is None and not st.kill_sent and session.watch is not None:
                    st.kill_sent = True
                    session.watch.jail.signal(signal.SIGKILL)
        if self.deadline is not None and now >= self.deadline:
            self.deadline = None
            for session, st in zip(self.sessions, self.states):
                if st.ended_at is None and session.watch is not None:
                    st.timed_out = True
                    session.watch.limit_hit("time-limit")
            self._observe(now)
        ticks = [s.next_tick(now) for s in self.sessions]
        self._observe(now)  # a limit those ticks hit: noted now, before its jail has ended
        marks = [t for t in (self.kill_at, self.deadline, *ticks) if t is not None]
        if self.drain_until is not None:
            marks.append(self.drain_until)
        return min(marks) if marks else None

    def _finished(self) -> bool:
        if not all([s.finished() for s in self.sessions]):
            return False
        if all(r.done for r in self.relays):
            return True
        now = time.monotonic()
        if self.drain_until is None:  # a leftover holding a relayed pipe: drain it a while
            self.drain_until = now + max(p.spec.drain_grace for p in self.parties)
        return now >= self.drain_until

    def _result(self) -> ConnectedResult:
        results: list[Result] = []
        error: Isol8rError | None = None
        for session in self.sessions:
            try:
                results.append(session.result())
            except Isol8rError as e:  # a jail that could not start: the run fails as a whole
                error = error or e
        if error is not None:
            raise error
        names = [p.name for p in self.parties]
        killed = [st.kill_sent and r.signal == signal.SIGKILL
                  for st, r in zip(self.states, results)]
        broken = [r.broken_at - self.t0 if r.broken_at is not None else None
                  for r in self.relays] if self.relaying else [None] * len(self.edges)
        sides = [Side(r.verdict, r.signal, _rel(st.ended_at, self.t0), _rel(st.failed_at, self.t0),
                      k, st.timed_out, tuple(n for n, e in enumerate(self.edges) if e.src == i))
                 for i, (r, st, k) in enumerate(zip(results, self.states, killed))]
        d = decide(sides, self.edges, broken, names)
        records = [PipeRecord(e.src, e.src_fd, e.dst, e.dst_fd, e.label(names),
                              self.relays[n].total if self.relaying else None, broken[n])
                   for n, e in enumerate(self.edges)]
        ends = [st.ended_at for st in self.states if st.ended_at is not None]
        return ConnectedResult(
            d.verdict, d.deciding, d.reason, names, results, killed, records,
            wall_time=(max(ends) if ends else time.monotonic()) - self.t0,
            transcript=self.transcript.chunks if self.relaying else None,
            transcript_truncated=self.transcript.truncated)


def _rel(t: float | None, t0: float) -> float | None:
    return None if t is None else t - t0


# ---- the command line --------------------------------------------------------------------------

USAGE = """isol8r run-connected --jail '[NAME=]OPTIONS -- PROGRAM ARGS' --jail ... [--pipe SRC.END:DST.END]...
       [--grace SECONDS] [--timeout SECONDS] [--transcript SIZE] [--json FILE|-]"""


def main(argv: list[str]) -> int:
    """`isol8r run-connected`: jails joined by pipes (docs/interactive.md). Each --jail is an
    `isol8r run` command line in one argument; without --pipe, two jails are joined stdout to
    stdin both ways. Exit status: 0 when the verdict is ok, else the deciding side's (141 for
    broken-pipe), 125 for bad input or a jail that could not be set up."""
    from . import cli
    # the command line's parser class: bad usage is one line and exit 125, as for `isol8r run`
    p = type(cli.build_parser())(prog="isol8r run-connected", usage=USAGE, allow_abbrev=False,
                                 description="Run jails joined by pipes, each with its own "
                                 "limits and result; the verdict names the side that failed "
                                 "first (docs/interactive.md).")
    p.add_argument("--jail", action="append", default=[], metavar="'[NAME=]OPTIONS -- PROGRAM'",
                   help="one jail: `isol8r run`'s options and command, quoted as one argument")
    p.add_argument("--pipe", action="append", metavar="SRC.END:DST.END",
                   help="a pipe from a jail's stdout, stderr or descriptor N to another's stdin "
                        "or descriptor N; jails by index or name (default with two jails: "
                        "0.stdout:1.stdin and 1.stdout:0.stdin)")
    p.add_argument("--grace", default="1", metavar="SECONDS",
                   help="how long the others may run once a side ended abnormally (1)")
    p.add_argument("--timeout", metavar="SECONDS", help="the whole run's wall-clock limit")
    p.add_argument("--transcript", metavar="SIZE",
                   help="relay the pipes through isol8r and keep SIZE bytes of what crossed")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON to FILE ('-': stdout)")
    ns = p.parse_args(argv)
    try:
        parties = [_cli_party(text, n) for n, text in enumerate(ns.jail)]
        grace = _seconds("--grace", ns.grace)
        timeout = _seconds("--timeout", ns.timeout) if ns.timeout is not None else None
        transcript = None
        if ns.transcript is not None:
            from .spec import parse_size
            transcript = parse_size("--transcript", ns.transcript)
        sink = cli.open_json(ns.json)
        capture = ns.json == "-"
        parties = [Party(q.spec, q.name, stdout=None if capture else 1,
                         stderr=None if capture else 2) for q in parties]
        result = run_connected(parties, ns.pipe, grace=grace, timeout=timeout,
                               transcript=transcript, forward_signals=True)
    except Isol8rError as e:
        e = cli.as_typed(e)
        cli.say(str(e))
        return getattr(e, "exit_code", cli.SETUP_FAILED)
    finally:
        # this process's fork server, stopped and waited for: the warm jails it made for the
        # next run (and their cgroups) go now, not after this command has returned
        from .daemon import forkserver
        forkserver.shared_client().close()
    import sys
    for name, killed, r in zip(result.names, result.killed, result.results):
        sys.stderr.write(f"isol8r: {name}: {r.describe()}, {r.wall_time:.3f} s" +
                         (" (ended by the run)" if killed else "") + "\n")
    if result.transcript is not None:
        labels = [x.label for x in result.pipes]
        for c in result.transcript:
            sys.stderr.write(f"isol8r:   +{c.at:.3f} {labels[c.pipe]} {c.data!r}\n")
        if result.transcript_truncated:
            sys.stderr.write("isol8r:   (transcript truncated)\n")
    sys.stderr.write(f"isol8r: verdict {result.describe()}\n")
    if sink is sys.stdout:
        sys.stdout.write(result.to_json() + "\n")
        sys.stdout.flush()
    elif sink is not None:
        with sink:
            sink.write(result.to_json() + "\n")
    return result.status


def _cli_party(text: str, index: int) -> Party:
    """One --jail: `NAME=` (optional), then an `isol8r run` command line."""
    import re
    import shlex

    from . import cli
    name = ""
    m = re.match(r"([A-Za-z_][\w-]*)=", text)
    if m:
        name, text = m.group(1), text[m.end():]
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise SpecError("--jail", text, f"cannot split it: {e}") from None
    ns = cli.build_parser().parse_args(["run", *words])
    for flag, value in (("--json", ns.json), ("--dry-run", ns.dry_run), ("--verbose", ns.verbose)):
        if value:
            raise SpecError("--jail", text, f"{flag} is run-connected's, not a jail's")
    from . import spec_of
    return party(Party(spec_of(cli.spec_from_args(ns), None, {}), name), index)


def _seconds(flag: str, value: str) -> float:
    try:
        s = float(value)
    except ValueError:
        raise SpecError(flag, value, "a number of seconds") from None
    if not s >= 0 or s == float("inf"):
        raise SpecError(flag, value, "a number of seconds, 0 or more")
    return s
