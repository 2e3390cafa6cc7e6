"""Issue 18 item 1, interactive problems: two jails joined by pipes (isol8r.run_connected and
`isol8r run-connected`), each with its own limits and Result, and a verdict naming the side
that failed first. A guessing game: the interactor (Python, in the default root) thinks of a
number, the solution guesses, the interactor answers higher/lower/correct and rejects after
too many guesses or on a malformed line."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest

import isol8r
from conftest import alive, children, cli, needs_root

pytestmark = needs_root

PY = "/usr/bin/python3"

# The interactor: SIGPIPE as a C program has it (death by SIGPIPE when the solution stopped
# reading) unless KEEP_PIPE is set, when Python's BrokenPipeError ends it with exit 1.
INTERACTOR = r"""
import os, signal, sys
if not os.environ.get("KEEP_PIPE"):
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
secret, tries, limit = 3141, 0, 20
print(10000, flush=True)
for line in sys.stdin:
    tries += 1
    try:
        guess = int(line)
    except ValueError:
        print("rejected: not a number", file=sys.stderr); sys.exit(1)
    if guess == secret:
        print("correct", flush=True)
        print(f"accepted: {tries} guesses", file=sys.stderr); sys.exit(0)
    if tries >= limit:
        print("rejected: too many guesses", file=sys.stderr); sys.exit(1)
    print("higher" if guess < secret else "lower", flush=True)
print("rejected: unexpected end of input", file=sys.stderr); sys.exit(1)
"""

RIGHT = r"""
lo, hi = 1, int(input())
while True:
    mid = (lo + hi) // 2
    print(mid, flush=True)
    answer = input()
    if answer == "correct":
        break
    lo, hi = (mid + 1, hi) if answer == "higher" else (lo, mid - 1)
"""

# guesses in order from 1: the interactor rejects it at its 20th guess; it ends quietly on EOF
WRONG = r"""
import sys
int(input())
guess = 1
while True:
    print(guess, flush=True)
    line = sys.stdin.readline()
    if not line or line.strip() == "correct":
        break
    guess += 1
"""

SLOW = r"""
import time
int(input())
time.sleep(60)
"""

# reads the size, closes its stdin, guesses, and goes on running without reading the answer
STOPS_READING = r"""
import os, time
int(input())
os.close(0)
print(5000, flush=True)
time.sleep(60)
"""


def game(solution: str, interactor: dict[str, Any] | None = None,
         **kw: Any) -> isol8r.ConnectedResult:
    return isol8r.run_connected(
        [{"cmd": [PY, "-c", INTERACTOR], "name": "interactor", "time_limit": 20,
          **(interactor or {})},
         {"cmd": [PY, "-c", solution], "name": "solution", "time_limit": 2}], **kw)


def test_right_solution_is_accepted() -> None:
    r = game(RIGHT)
    assert (r.verdict, r.deciding, r.status) == ("ok", None, 0), r.reason
    inter, sol = r.results
    assert inter.verdict == sol.verdict == "ok"
    assert inter.stderr.startswith(b"accepted: ")
    assert r.killed == [False, False]
    assert r.names == ["interactor", "solution"]
    assert [p.label for p in r.pipes] == ["interactor.stdout>solution.stdin",
                                          "solution.stdout>interactor.stdin"]


def test_wrong_solution_is_rejected_by_the_interactor() -> None:
    r = game(WRONG)
    assert (r.verdict, r.deciding_name) == ("nonzero-exit", "interactor"), r.reason
    inter, sol = r.results
    assert inter.exit_code == 1 and b"too many guesses" in inter.stderr
    assert sol.verdict == "ok"  # it read the end of its input and stopped
    assert r.status == 1


def test_slow_solution_exceeds_its_time_and_decides() -> None:
    """The solution's own limit (2 s) ends it; the interactor then reads the end of its input
    and rejects: the solution failed first."""
    r = game(SLOW)
    assert (r.verdict, r.deciding_name) == ("time-limit", "solution"), r.reason
    inter, sol = r.results
    assert sol.verdict == "time-limit"
    assert inter.exit_code == 1 and b"unexpected end of input" in inter.stderr
    assert not any(r.killed)


def test_interactor_accepts_then_solution_exceeds_its_time() -> None:
    """Accepted by the interactor, yet the solution runs on past its limit: the solution's."""
    lingers = RIGHT + "\nimport time\ntime.sleep(60)\n"
    r = game(lingers)
    assert (r.verdict, r.deciding_name) == ("time-limit", "solution"), r.reason
    assert r.results[0].verdict == "ok" and r.results[1].verdict == "time-limit"


def test_solution_that_stops_reading_breaks_the_interactors_pipe() -> None:
    """The interactor's answer meets a closed pipe: it dies of SIGPIPE; the solution, still
    running, is killed by the run after the grace and is the side that failed."""
    r = game(STOPS_READING, grace=0.5)
    assert (r.verdict, r.deciding_name) == ("broken-pipe", "solution"), r.reason
    inter, sol = r.results
    assert inter.signal == signal.SIGPIPE
    assert r.killed == [False, True] and sol.signal == signal.SIGKILL
    assert sol.wall_time < 30  # the grace ended it, not its own time limit
    assert r.status == 128 + signal.SIGPIPE


def test_relay_witnesses_a_reader_that_stopped_reading() -> None:
    """Relayed through the caller, a refused write is seen even when the interactor turns
    EPIPE into a plain exit 1: still the solution's broken pipe, and the transcript shows the
    dialogue up to it."""
    r = game(STOPS_READING, interactor={"env": {"KEEP_PIPE": "1"}}, transcript=4096)
    assert (r.verdict, r.deciding_name) == ("broken-pipe", "solution"), r.reason
    to_sol, to_inter = r.pipes
    assert to_sol.broken_at is not None and to_inter.broken_at is None
    said = [(c.pipe, c.data) for c in r.transcript or []]
    assert b"".join(d for p, d in said if p == 0).startswith(b"10000\n")
    assert b"".join(d for p, d in said if p == 1) == b"5000\n"


def test_transcript_is_bounded() -> None:
    r = game(RIGHT, transcript=8)
    assert r.verdict == "ok"
    assert sum(len(c.data) for c in r.transcript or []) == 8 and r.transcript_truncated
    assert all(p.bytes and p.bytes > 0 for p in r.pipes)  # counted beyond the cap


def test_other_side_is_killed_after_the_grace_when_one_fails() -> None:
    """A solution that crashes at once, and an interactor that never reads (it would wait
    forever, with no limit of its own): killed after the grace, not blamed."""
    r = isol8r.run_connected(
        [{"cmd": ["/bin/sleep", "600"], "name": "interactor"},
         {"cmd": ["/bin/sh", "-c", "kill -SEGV $$"], "name": "solution"}], grace=0.3)
    assert (r.verdict, r.deciding_name) == ("signaled", "solution"), r.reason
    assert r.results[1].signal == signal.SIGSEGV
    assert r.killed == [True, False] and r.results[0].signal == signal.SIGKILL


def test_run_timeout_ends_a_deadlock() -> None:
    """Both sides wait to read: the run's timeout ends both, and no side failed first."""
    r = isol8r.run_connected([["/bin/cat"], ["/bin/cat"]], timeout=0.5)
    assert (r.verdict, r.deciding) == ("time-limit", None), r.reason
    assert [x.verdict for x in r.results] == ["time-limit", "time-limit"]


def test_three_jails_in_a_chain_with_a_descriptor_number() -> None:
    """A producer copies its input to its descriptor 3, a filter reads it on stdin, a consumer
    reads the filter's stdout on descriptor 4."""
    r = isol8r.run_connected(
        [{"cmd": ["/bin/sh", "-c", "cat >&3"], "input": "hello\n"}, ["/usr/bin/tr", "a-z", "A-Z"],
         {"cmd": ["/bin/sh", "-c", "cat <&4"], "name": "sink"}],
        pipes=["0.3:1.stdin", (1, "stdout", "sink", 4)])
    assert r.verdict == "ok", r.reason
    assert r.results[2].stdout == b"HELLO\n"


@pytest.mark.parametrize("pipes, bad", [
    (["0.stdin:1.stdin"], "stdin is read"),
    (["0.stdout:1.stdout"], "stdout is written"),
    (["0.stdout:7.stdin"], "no jail"),
    (["0.stdout:1.stdin", "0.stdout:1.5"], "another pipe"),
    (["0.stdout:0.stdin"], "itself"),
    (["nonsense"], "SRC.END:DST.END"),
])
def test_bad_pipes_are_one_line_errors(pipes: list[str], bad: str) -> None:
    with pytest.raises(isol8r.SpecError, match=bad):
        isol8r.run_connected([["/bin/true"], ["/bin/true"]], pipes=pipes)


def test_a_jail_that_cannot_start_leaves_nothing() -> None:
    before = set(children())
    with pytest.raises(isol8r.ExecError):
        isol8r.run_connected([["/bin/cat"], ["/nonexistent/program"]], grace=0.2)
    assert not [p for p in set(children()) - before if alive(p)]


def test_cli_json_and_exit_status() -> None:
    p = cli("run-connected", "--json", "-", "--grace", "0.5",
            "--jail", f"interactor=--time-limit 20 -- {PY} -c '{INTERACTOR}'",
            "--jail", f"solution=--time-limit 2 -- {PY} -c '{SLOW}'", timeout=60)
    assert p.returncode == 128 + signal.SIGKILL or p.returncode == 128 + signal.SIGTERM, p.stderr
    d = json.loads(p.stdout)
    assert (d["verdict"], d["deciding_name"]) == ("time-limit", "solution")
    assert [j["name"] for j in d["jails"]] == ["interactor", "solution"]
    assert d["jails"][0]["result"]["stderr"].startswith("rejected")


def test_cli_transcript_and_pipes_by_name() -> None:
    t0 = time.monotonic()
    p = cli("run-connected", "--transcript", "1K",
            "--jail", f"interactor=-- {PY} -c '{INTERACTOR}'",
            "--jail", f"solution=-- {PY} -c '{RIGHT}'",
            "--pipe", "interactor.stdout:solution.stdin",
            "--pipe", "solution.stdout:interactor.stdin", timeout=60)
    assert p.returncode == 0, p.stderr
    assert "isol8r: verdict ok" in p.stderr
    assert "solution.stdout>interactor.stdin" in p.stderr and "'5000\\n'" in p.stderr
    assert time.monotonic() - t0 < 60


def test_cli_bad_input_is_one_line() -> None:
    p = cli("run-connected", "--jail", "-- /bin/true", "--jail", "-- /bin/true",
            "--pipe", "0.stdout:9.stdin")
    assert p.returncode == 125
    assert p.stderr.count("\n") == 1 and "9.stdin" in p.stderr and "Traceback" not in p.stderr
