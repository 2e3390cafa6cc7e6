"""Exhaustion: fork bomb, memory bomb, filling /tmp and a writable bind, descriptors, recursion.

Each bomb runs against the limit meant to stop it; the host and the supervisor (the library's
fork server) survive, the next jail runs, and the Result says why the run ended. Each twin runs
the same bomb, bounded by the probe itself, without that limit and goes further: the limit is
what stopped it.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Iterator

import pytest

import isol8r
from isol8r.daemon import forkserver
from conftest import needs_root
from secprobe import Tools, World, probe, tools, world  # noqa: F401  (fixtures)

pytestmark = needs_root


@pytest.fixture(autouse=True)
def supervisor_survives() -> Iterator[None]:
    """The fork server that ran the bomb is the same process afterwards, and still works."""
    client = forkserver.shared_client()
    client.connect()
    pid = client.pid()
    yield
    assert client.pid() == pid, "the fork server died"
    assert isol8r.run(["/bin/true"]).exit_code == 0


def test_fork_bomb_is_held_by_pids_and_ended_by_the_time_limit(tools: Tools) -> None:
    r = probe(tools, "forkbomb", 1000, 60, pids=32, time_limit=1.5)
    assert r.errno("fork") == "EAGAIN" and int(r.info("forked")) < 32, r
    assert r.result.verdict == "time-limit", r
    if r.result.processes is not None:
        assert r.result.processes <= 32, r


def test_fork_bomb_twin_without_pids_goes_further(tools: Tools) -> None:
    r = probe(tools, "forkbomb", 200, 0)
    assert r.ok("fork") and r.info("forked") == "200", r


def test_memory_bomb_is_killed_by_the_memory_limit(tools: Tools) -> None:
    r = probe(tools, "membomb", 1024, memory="64M", time_limit=20)
    assert r.result.verdict == "memory-limit" and r.result.signal == signal.SIGKILL, r
    assert r.get("allocated") is None, r


def test_memory_bomb_twin_without_a_limit_allocates_more(tools: Tools) -> None:
    r = probe(tools, "membomb", 128)
    assert r.result.verdict == "ok" and r.get("allocated") == ("ok", "128"), r


def test_filling_tmp_stops_at_its_size(tools: Tools) -> None:
    r = probe(tools, "diskfill", "/tmp", 64, 1, tmp_size="8M")
    assert r.errno("write") == "ENOSPC" and int(r.info("written_mb")) <= 8, r


def test_filling_tmp_twin_with_a_larger_tmp_writes_more(tools: Tools) -> None:
    r = probe(tools, "diskfill", "/tmp", 16, 1, tmp_size="32M")
    assert r.get("write") == ("ok", "16"), r


@pytest.fixture
def fill_dir(world: World) -> Path:
    d = world.dir / "fill"
    d.mkdir()
    d.chmod(0o777)
    return d


def test_filling_a_writable_bind_is_stopped_by_the_output_limit(tools: Tools,
                                                                fill_dir: Path) -> None:
    """--output-limit is RLIMIT_FSIZE: one file cannot pass it (SIGXFSZ, verdict output-limit)."""
    r = probe(tools, "diskfill", "/fill", 64, 1, bind=[f"{fill_dir}:/fill"], output_limit="4M")
    assert r.result.verdict == "output-limit" and r.result.signal == signal.SIGXFSZ, r
    assert (fill_dir / "fill-0").stat().st_size <= 4 << 20


def test_filling_a_writable_bind_twin_without_a_limit_writes_more(tools: Tools,
                                                                  fill_dir: Path) -> None:
    r = probe(tools, "diskfill", "/fill", 8, 1, bind=[f"{fill_dir}:/fill"])
    assert r.get("write") == ("ok", "8"), r
    assert (fill_dir / "fill-0").stat().st_size == 8 << 20


def test_a_writable_bind_has_no_total_cap_documented_limitation(tools: Tools,
                                                                fill_dir: Path) -> None:
    """What --output-limit does NOT do: cap the total. 16 files of 1 MiB under a 4 MiB limit all
    land on the host's disk. isol8r has no disk quota: bind a size-capped filesystem (a tmpfs or
    a loop device) for a writable directory of untrusted code. (docs/security.md)"""
    r = probe(tools, "diskfill", "/fill", 16, 16, bind=[f"{fill_dir}:/fill"], output_limit="4M")
    assert r.get("write") == ("ok", "16"), r
    assert sum(p.stat().st_size for p in fill_dir.iterdir()) == 16 << 20


def test_descriptor_exhaustion_stops_at_nofile(tools: Tools) -> None:
    r = probe(tools, "fdbomb")
    assert r.errno("open") == "EMFILE" and int(r.info("opened")) <= 1024, r


def test_descriptor_exhaustion_twin_with_a_higher_nofile_opens_more(tools: Tools) -> None:
    r = probe(tools, "fdbomb", nofile=4096)
    assert r.errno("open") == "EMFILE" and int(r.info("opened")) > 1024, r


def depth(r) -> int:
    return max([int(d) for k, n, d in r.lines if k == "info" and n == "depth"] or [0])


def test_deep_recursion_ends_with_sigsegv_at_the_stack_limit(tools: Tools) -> None:
    r = probe(tools, "recurse", rlimit=["STACK=8M"])
    assert r.result.signal == signal.SIGSEGV and r.result.verdict == "signaled", r
    assert depth(r) < 2048, r


def test_deep_recursion_twin_with_a_larger_stack_goes_deeper(tools: Tools) -> None:
    r = probe(tools, "recurse", rlimit=["STACK=64M"])
    assert r.result.signal == signal.SIGSEGV and depth(r) >= 8192, r
