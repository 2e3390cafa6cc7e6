"""Issue 18 item 1, without root: the verdict rules of connected jails (which side failed
first), the pipe syntax, and the caller's relay (a real pipe pair, no jail)."""

from __future__ import annotations

import os
import selectors
import signal
import time

import pytest

from isol8r.connected import (BROKEN_PIPE, ConnectedResult, Pipe, PipeRecord, Relay, Side,
                              Transcript, decide, parse_pipes)
from isol8r.errors import SpecError
from isol8r.result import Result

NAMES = ["interactor", "solution"]
DUPLEX = [Pipe(0, 1, 1, 0), Pipe(1, 1, 0, 0)]  # interactor.stdout>solution.stdin, and back
OUT = {0: (0,), 1: (1,)}  # the pipes each side writes
NO_BREAK = [None, None]


def side(i: int, verdict: str, ended: float | None, **kw: object) -> Side:
    return Side(verdict, ended_at=ended, outputs=OUT[i], **kw)  # type: ignore[arg-type]


def test_both_ok() -> None:
    d = decide([side(0, "ok", 1.0), side(1, "ok", 1.1)], DUPLEX, NO_BREAK, NAMES)
    assert (d.verdict, d.deciding) == ("ok", None)


def test_interactor_accepted_then_solution_exceeded_its_time() -> None:
    d = decide([side(0, "ok", 0.2), side(1, "time-limit", 2.1, failed_at=2.0)], DUPLEX,
               NO_BREAK, NAMES)
    assert (d.verdict, d.deciding) == ("time-limit", 1)
    assert "solution failed first" in d.reason


def test_interactor_rejected() -> None:
    d = decide([side(0, "nonzero-exit", 0.5), side(1, "ok", 0.6)], DUPLEX, NO_BREAK, NAMES)
    assert (d.verdict, d.deciding) == ("nonzero-exit", 0)


def test_the_limit_moment_counts_not_the_end() -> None:
    """The solution hit its time limit at 2.0 and died (after SIGTERM's grace) at 2.9; the
    interactor, reading the end of its input, rejected at 2.5: the limit came first."""
    d = decide([side(0, "nonzero-exit", 2.5), side(1, "time-limit", 2.9, failed_at=2.0)],
               DUPLEX, NO_BREAK, NAMES)
    assert (d.verdict, d.deciding) == ("time-limit", 1)


def test_earliest_failure_decides() -> None:
    d = decide([side(0, "nonzero-exit", 0.31), side(1, "signaled", 0.30, signal=11)], DUPLEX,
               NO_BREAK, NAMES)
    assert (d.verdict, d.deciding) == ("signaled", 1)


def test_sigpipe_is_the_readers_broken_pipe() -> None:
    """The solution closed its stdin and runs on; the interactor dies of SIGPIPE; the run kills
    the solution after the grace: the solution stopped reading first."""
    d = decide([side(0, "signaled", 0.4, signal=signal.SIGPIPE),
                side(1, "signaled", 1.4, signal=signal.SIGKILL, killed=True)], DUPLEX, NO_BREAK,
               NAMES)
    assert (d.verdict, d.deciding) == (BROKEN_PIPE, 1)
    assert "solution stopped reading interactor.stdout>solution.stdin" in d.reason


def test_sigpipe_after_the_readers_own_failure_is_that_failure() -> None:
    d = decide([side(0, "signaled", 2.2, signal=signal.SIGPIPE),
                side(1, "time-limit", 2.1, failed_at=2.0)], DUPLEX, NO_BREAK, NAMES)
    assert (d.verdict, d.deciding) == ("time-limit", 1)


def test_sigpipe_with_two_pipes_out_cannot_name_a_reader() -> None:
    pipes = [Pipe(0, 1, 1, 0), Pipe(0, 3, 2, 0)]
    sides = [Side("signaled", signal.SIGPIPE, 0.3, outputs=(0, 1)), Side("ok", None, 0.1),
             Side("ok", None, 0.2)]
    d = decide(sides, pipes, [None, None])
    assert (d.verdict, d.deciding) == ("signaled", 0)


def test_relay_break_then_writer_failure_is_the_readers() -> None:
    """A Python interactor turns EPIPE into exit 1: the relay saw the break at 0.3, so the
    exit 1 at 0.35 is the solution's broken pipe, not a rejection."""
    d = decide([side(0, "nonzero-exit", 0.35), side(1, "time-limit", 2.0, failed_at=2.0)],
               DUPLEX, [0.3, None], NAMES)
    assert (d.verdict, d.deciding) == (BROKEN_PIPE, 1)


def test_relay_break_after_the_writer_ended_is_not_its_cause() -> None:
    d = decide([side(0, "nonzero-exit", 0.2), side(1, "ok", 0.3)], DUPLEX, [0.25, None], NAMES)
    assert (d.verdict, d.deciding) == ("nonzero-exit", 0)


def test_relay_break_without_a_failure_is_ok() -> None:
    """The interactor handled the refused write and accepted: it has the last word."""
    d = decide([side(0, "ok", 0.5), side(1, "ok", 0.2)], DUPLEX, [0.3, None], NAMES)
    assert d.verdict == "ok"


def test_killed_sides_are_never_blamed() -> None:
    d = decide([side(0, "signaled", 1.5, signal=9, killed=True), side(1, "ok", 0.5)], DUPLEX,
               NO_BREAK, NAMES)
    assert (d.verdict, d.deciding) == ("ok", None)
    assert "the run ended interactor" in d.reason


def test_run_timeout_with_one_side_left_decides_it() -> None:
    d = decide([side(0, "ok", 0.5), side(1, "time-limit", 5.0, failed_at=5.0, timed_out=True)],
               DUPLEX, NO_BREAK, NAMES)
    assert (d.verdict, d.deciding) == ("time-limit", 1)
    assert "the run's timeout" in d.reason


def test_run_timeout_of_a_deadlock_names_no_side() -> None:
    d = decide([side(0, "time-limit", 5.0, failed_at=5.0, timed_out=True),
                side(1, "time-limit", 5.0, failed_at=5.0, timed_out=True)], DUPLEX, NO_BREAK,
               NAMES)
    assert (d.verdict, d.deciding) == ("time-limit", None)


def test_own_failure_beats_a_run_timeout() -> None:
    d = decide([side(0, "time-limit", 5.0, failed_at=5.0, timed_out=True),
                side(1, "signaled", 0.5, signal=11)], DUPLEX, NO_BREAK, NAMES)
    assert (d.verdict, d.deciding) == ("signaled", 1)


def test_status_follows_the_decider() -> None:
    ok, tle = Result(("a",), "ok", exit_code=0), Result(("b",), "time-limit", signal=9)
    rec = [PipeRecord(0, 1, 1, 0, "0.stdout>1.stdin")]
    r = ConnectedResult("time-limit", 1, "", ["0", "1"], [ok, tle], [False, False], rec)
    assert r.status == 137 and r.deciding_name == "1"
    assert r.to_dict()["jails"][1]["result"]["verdict"] == "time-limit"
    assert ConnectedResult(BROKEN_PIPE, 1, "", ["0", "1"], [ok, ok], [False, False], rec).status \
        == 141
    assert ConnectedResult("ok", None, "", ["0", "1"], [ok, ok], [False, False], rec).status == 0


# ---- pipes as given

def test_default_pipes_join_two_jails_both_ways() -> None:
    assert parse_pipes(None, NAMES) == DUPLEX


def test_pipes_by_name_text_and_descriptor() -> None:
    got = parse_pipes(["interactor.stdout:solution.stdin", (1, "stderr", "interactor", 3),
                       "solution.4:interactor.5"], NAMES)
    assert got == [Pipe(0, 1, 1, 0), Pipe(1, 2, 0, 3), Pipe(1, 4, 0, 5)]
    assert got[1].label(NAMES) == "solution.stderr>interactor.3"


@pytest.mark.parametrize("pipes, message", [
    (None, "say which pipes"),
    ([], "no pipe"),
    (["a.stdout:b.stdin"], "no jail named 'a'"),
    (["0.stdin:1.stdin"], "stdin is read"),
    (["0.stdout:1.stderr"], "stderr is written"),
    (["0.stdout:1.-1"], "not a descriptor"),
    (["0.stdout:1.stdin", "2.stdout:1.stdin"], "another pipe"),
    ([(0, "stdout", 1)], "give (src, end, dst, end)"),
    (["0.stdout"], "SRC.END:DST.END"),
    ([(True, "stdout", 1, "stdin")], "no jail"),
])
def test_bad_pipes(pipes: list[object] | None, message: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_pipes(pipes, ["0", "1", "2"])
    assert message in str(e.value)


# ---- the relay, on real pipes

def _relay(limit: int) -> tuple[Relay, int, int, Transcript]:
    """writer -> [w_in | r_in] -> Relay -> [w_out | r_out] -> reader."""
    r_in, w_in = os.pipe2(os.O_CLOEXEC)
    r_out, w_out = os.pipe2(os.O_CLOEXEC)
    t0 = time.monotonic()
    transcript = Transcript(limit, lambda: t0)
    return Relay(0, r_in, w_out, transcript, lambda n: None), w_in, r_out, transcript


def _pump(sel: selectors.BaseSelector, until: object, rounds: int = 50) -> None:
    for _ in range(rounds):
        if until():  # type: ignore[operator]
            return
        for key, _ in sel.select(0.2):
            key.data[0].handle(sel, key)


def test_relay_copies_keeps_a_bounded_transcript_and_passes_eof() -> None:
    relay, w_in, r_out, transcript = _relay(limit=5)
    with selectors.DefaultSelector() as sel:
        relay.register(sel)
        os.write(w_in, b"hello world\n")
        os.close(w_in)
        _pump(sel, lambda: relay.done and relay.w_out < 0)
    try:
        assert os.read(r_out, 100) == b"hello world\n"
        assert os.read(r_out, 100) == b""  # the writer's end reached the reader
    finally:
        os.close(r_out)
        relay.close()
    assert relay.total == 12 and relay.broken_at is None
    assert [c.data for c in transcript.chunks] == [b"hello"] and transcript.truncated


def test_relay_witnesses_a_reader_that_closed_and_breaks_the_writers_pipe() -> None:
    relay, w_in, r_out, _ = _relay(limit=100)
    os.close(r_out)  # the reader stopped reading
    with selectors.DefaultSelector() as sel:
        relay.register(sel)
        os.write(w_in, b"42\n")
        _pump(sel, lambda: relay.broken_at is not None)
    try:
        assert relay.broken_at is not None and relay.done
        with pytest.raises(BrokenPipeError):  # the writer's next write fails, as on a direct pipe
            os.write(w_in, b"more\n")
    finally:
        os.close(w_in)
        relay.close()


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_bad_descriptor_argument_leaves_no_pipe_open() -> None:
    """A jail's stderr that is no descriptor fails after the pipes were made (the second jail's
    stdio), before any jail is leased: every pipe end is closed, none twice."""
    from isol8r import run_connected
    before = _open_fds()
    with pytest.raises(ValueError, match="stderr=True"):
        run_connected([["/bin/true"], {"cmd": ["/bin/true"], "stdout": 1, "stderr": True}],
                      pipes=["0.stdout:1.stdin"], transcript=10)
    assert _open_fds() == before
