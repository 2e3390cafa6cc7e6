"""Stress: 1,000 jails in a row and 50 at once (threads and asyncio), then nothing may be left:
no mount, cgroup or network namespace on the host, no descriptor or thread in this process (the
caller of the library) or in its fork server (the supervisor of its jails), no zombie under
either."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest

import isol8r
from isol8r.daemon import forkserver
from conftest import children, isol8r_cgroups, mounts, needs_root, netns

pytestmark = needs_root

SEQUENTIAL = 1000
AT_ONCE = 50


def fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


def server_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def jail_groups() -> int:
    """Groups in isol8r's cgroup dirs, every hierarchy: the warm jails' are new ones each time."""
    n = 0
    for d in isol8r_cgroups():
        try:
            n += sum(e.is_dir() for e in os.scandir(d))
        except FileNotFoundError:  # removed with its last group since find listed it
            pass
    return n


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def zombies_under(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == pid:
                out.append(int(entry))
    return out


@pytest.fixture
def host_unchanged() -> Iterator[None]:
    client = forkserver.shared_client()
    client.connect()
    # warm: the fork server and its pools (of each shape used here; those with a cgroup limit
    # wait in groups of their own) exist before the count
    for options in ({}, {"pids": 16}, {"memory": "64M"}):
        isol8r.run(["/bin/true"], **options)
    server = client.pid()
    # with the pools full: they are topped up after each run ends
    deadline, before_server = time.monotonic() + 3, -1
    while server_fds(server) != before_server and time.monotonic() < deadline:
        before_server = server_fds(server)
        time.sleep(0.2)
    before = (fds(), mounts(), jail_groups(), netns(), threads())
    yield
    assert client.pid() == server, "the fork server was replaced"

    def settled() -> bool:
        return (fds(), threads()) == (before[0], before[4]) and server_fds(server) <= before_server \
            and jail_groups() <= before[2] \
            and not zombies_under(server) and not zombies_under(os.getpid())

    deadline = time.monotonic() + 5
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fds() == before[0], "descriptors leaked in the caller"
    assert threads() == before[4], "threads left running in the caller"
    # at most as many as before: the pool may not have refilled its warm jail yet
    assert server_fds(server) <= before_server, "descriptors leaked in the fork server"
    assert mounts() == before[1], "mounts left on the host"
    assert jail_groups() <= before[2], "cgroups left behind"
    assert netns() == before[3], "network namespaces left behind"
    assert zombies_under(server) == [] and zombies_under(os.getpid()) == [], "zombies left"
    assert children() == [server], children()


def test_a_thousand_jails_in_a_row(host_unchanged: None) -> None:
    """Every 50th with a cgroup limit, so cgroups are made and removed too."""
    t0 = time.monotonic()
    for i in range(SEQUENTIAL):
        options = {"pids": 16} if i % 50 == 0 else {}
        r = isol8r.run(["/bin/true"], **options)
        assert r.exit_code == 0 and r.verdict == "ok", (i, r)
    assert time.monotonic() - t0 < 45, "far slower than ~10 ms a jail"


def test_fifty_jails_at_once_from_threads(host_unchanged: None) -> None:
    def one(i: int) -> isol8r.Result:
        return isol8r.run(["/bin/sh", "-c", "echo $$; cat /proc/self/uid_map"],
                          capture_output=True, **({"memory": "64M"} if i % 10 == 0 else {}))

    with ThreadPoolExecutor(AT_ONCE) as pool:
        results = list(pool.map(one, range(AT_ONCE)))
    assert all(r.exit_code == 0 for r in results), [r for r in results if r.exit_code != 0]
    # each in its own PID namespace: the shell is pid 2 under isol8r's init in every one
    assert {r.stdout.split()[0] for r in results} == {b"2"}


def test_fifty_jails_at_once_from_asyncio(host_unchanged: None) -> None:
    async def main() -> list[isol8r.Result]:
        return await asyncio.gather(*[
            isol8r.run_async(["/bin/sh", "-c", "echo $$"], capture_output=True,
                             **({"pids": 8} if i % 10 == 0 else {}))
            for i in range(AT_ONCE)])

    results = asyncio.run(main())
    assert [r.exit_code for r in results] == [0] * AT_ONCE
    assert {r.stdout for r in results} == {b"2\n"}


def test_fifty_jails_at_once_that_are_killed(host_unchanged: None) -> None:
    """Time limits hit together: 50 sleepers killed at 0.3 s, each reported as such."""
    with ThreadPoolExecutor(AT_ONCE) as pool:
        results = list(pool.map(lambda i: isol8r.run(["/bin/sleep", "30"], time_limit=0.3,
                                                     kill_grace=0.2), range(AT_ONCE)))
    assert {r.verdict for r in results} == {"time-limit"}, results
