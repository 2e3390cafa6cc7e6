"""Issue 4: limits that hold and a verdict that tells why each run ended (real cgroups, v1 here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, cli, isol8r_cgroups, jail, needs_root, py, sh

pytestmark = needs_root
MiB = 1 << 20


def host_still_fine() -> None:
    """The host can still fork and allocate after a bomb went off in a jail."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    block = bytearray(256 * MiB)
    block[::4096] = b"x" * len(block[::4096])
    del block


def test_ok_run_reports_every_field() -> None:
    r = py("print(sum(range(10**5)))", memory="256M", pids=32)
    assert r.verdict == "ok" and r.exit_code == 0 and r.signal is None
    assert r.wall_time > 0 and r.setup_time > 0
    assert r.cpu_user is not None and r.cpu_system is not None
    assert r.memory_peak and 1 * MiB < r.memory_peak < 256 * MiB
    assert r.limits["memory"] == 256 * MiB and r.limits["cgroup"] in ("v1", "v2")


def test_the_jails_cgroup_is_gone_after_the_run() -> None:
    """Cloned from this process, so its group is named after this pid (the fork server's warm
    jails wait in groups of their own, removed when they expire or the server ends: the
    session's end checks those, test_stress checks that runs through the server leave none)."""
    r = sh("true", memory="256M", pids=32, fork_server=False)
    assert r.limits["cgroup"] in ("v1", "v2")
    mine = [os.path.join(d, g) for d in isol8r_cgroups() if os.path.isdir(d)
            for g in os.listdir(d) if g.startswith(f"jail-{os.getpid()}-")]
    assert not mine, mine


def test_nonzero_exit_and_signaled() -> None:
    assert sh("exit 7").verdict == "nonzero-exit"
    r = sh("kill -SEGV $$")
    assert (r.verdict, r.signal, r.status) == ("signaled", 11, 139)


def test_time_limit_is_sub_second() -> None:
    r = jail("sleep", "10", time_limit=0.25, kill_grace=0.2)
    assert r.verdict == "time-limit"
    assert 0.24 <= r.wall_time < 0.9, r.wall_time


def test_time_limit_escalates_to_sigkill() -> None:
    r = sh("trap '' TERM; while :; do :; done", time_limit=0.2, kill_grace=0.2)
    assert r.verdict == "time-limit" and r.signal == 9
    assert 0.39 <= r.wall_time < 1.5


def test_cpu_limit_counts_the_whole_jail() -> None:
    # two busy processes: the jail's CPU time grows twice as fast as the wall clock
    r = sh("(while :; do :; done) & while :; do :; done", cpu_limit=0.4, kill_grace=0.1)
    assert r.verdict == "cpu-limit"
    assert (r.cpu_user or 0) + (r.cpu_system or 0) >= 0.38
    assert r.wall_time < 2.0


def test_sleeping_is_not_cpu() -> None:
    r = jail("sleep", "0.3", cpu_limit=0.2)
    assert r.verdict == "ok"


def test_memory_limit_verdict_and_peak() -> None:
    r = py("x = bytearray(1 << 30)", memory="64M")
    assert r.verdict == "memory-limit" and r.signal == 9
    assert 48 * MiB <= (r.memory_peak or 0) <= 72 * MiB, r.memory_peak
    host_still_fine()


def test_memory_limit_cli_json() -> None:
    p = cli("run", "--memory", "64M", "--json", "-", "--", "python3", "-c", "x=bytearray(1<<30)")
    assert p.returncode == 137, p.stderr
    d = json.loads(p.stdout)
    assert d["verdict"] == "memory-limit" and abs(d["memory_peak"] - 64 * MiB) <= 8 * MiB


def test_fork_bomb_is_contained() -> None:
    code = ("import os\nn = 0\nwhile True:\n    try:\n        pid = os.fork()\n"
            "    except OSError:\n        break\n    if pid == 0:\n        import time; time.sleep(5)\n"
            "        os._exit(0)\n    n += 1\nprint(n)")
    r = py(code, pids=20, time_limit=10)
    assert r.exit_code == 0, r
    assert int(r.stdout) < 20, "more processes than --pids allows"
    assert r.processes is None or r.processes <= 20
    host_still_fine()


def test_output_flood_is_capped() -> None:
    r = sh("yes", output_limit=1000)
    assert r.verdict == "output-limit" and r.stdout_truncated
    assert len(r.stdout) == 1000
    r = sh("head -c 100000 /dev/zero > /tmp/big", output_limit="10K")
    assert r.verdict == "output-limit", r


def test_output_under_the_cap_is_ok() -> None:
    r = sh("echo fine", output_limit=1000)
    assert r.verdict == "ok" and r.stdout == b"fine\n" and not r.stdout_truncated


def test_full_tmp_leaves_host_alone() -> None:
    r = sh("dd if=/dev/zero of=/tmp/fill bs=1M count=200 2>&1; echo rc=$?", tmp_size="16M")
    assert b"No space left" in r.stdout
    host_still_fine()


def test_bad_cgroup_parent_is_an_error() -> None:
    with pytest.raises(isol8r_errors().SetupError, match="/no/such/parent"):
        jail("true", memory="64M", cgroup_parent="/no/such/parent")


def isol8r_errors():  # noqa: ANN201 - the module, imported late like the tests' jail()
    import isol8r.errors
    return isol8r.errors


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_no_cgroup_falls_back_to_rlimits_and_says_so() -> None:
    # cgroupfs made read-only for this one command only, in a mount namespace of its own
    script = ("for m in $(awk '$9 ~ /^cgroup/ {print $5}' /proc/self/mountinfo); do "
              "mount -o remount,bind,ro $m; done; "
              f"exec {sys.executable} -m isol8r run --memory 64M --json - -- "
              "python3 -c 'x = bytearray(1 << 30)'")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, env=env, timeout=60)
    d = json.loads(p.stdout[p.stdout.index("{"):])
    assert any("fell back to rlimits" in n for n in d["notes"]), d["notes"]
    assert d["limits"]["rlimits"]["AS"] == [64 * MiB, 64 * MiB]
    assert d["verdict"] == "nonzero-exit" and "MemoryError" in d["stderr"]  # --json -: captured


# ---- issue 12 item 7: no silent trade-offs ------------------------------------------------


def _processes_with(token: str) -> list[int]:
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        found.append(int(p))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("fork_server", [True, False])
def test_share_pid_a_setsid_daemon_ends_with_the_run(fork_server: bool) -> None:
    """With --share-pid there is no PID namespace whose end takes the jail's processes with it:
    a double-forked, setsid'd daemon outlived the run on the host (PPid 1, the jail's uid). The
    jail now always gets a cgroup with --share-pid, and its removal kills what is left."""
    token = f"3141.{os.getpid()}{int(fork_server)}"
    r = sh(f"setsid sh -c 'sleep {token} &' </dev/null >/dev/null 2>&1; echo started",
           share_pid=True, capture_output=True, fork_server=fork_server)
    try:
        assert r.stdout == b"started\n" and r.limits["cgroup"] in ("v1", "v2")
        assert _processes_with(token) == []
    finally:
        for pid in _processes_with(token):
            os.kill(pid, 9)


def test_share_pid_without_a_cgroup_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host with no usable cgroup cannot be made here without unmounting the host's: the
    group's creation is faked to fail (in-process, so the fake applies), the rest is real."""
    from isol8r import cgroups

    def unavailable(*_a: object, **_k: object) -> None:
        raise cgroups.CgroupUnavailable("faked: no cgroup filesystem is mounted")
    monkeypatch.setattr(cgroups.Cgroup, "create", unavailable)
    monkeypatch.setattr(cgroups.Cgroup, "program_group", unavailable)
    r = sh("true", share_pid=True, fork_server=False)
    assert r.verdict == "ok" and r.limits["cgroup"] is None
    assert any("--share-pid and no cgroup" in n and "not ended with the run" in n
               for n in r.notes), r.notes
    assert any(n.startswith("memory_peak is wait4's ru_maxrss") for n in r.notes), r.notes


def test_kill_grace_zero_kills_at_once_without_sigterm() -> None:
    """--kill-grace 0 was refused ("must be a positive number"); it means SIGKILL at once: the
    program's TERM trap never runs."""
    r = sh("trap 'echo got-term' TERM; while :; do :; done", time_limit=0.2, kill_grace=0,
           capture_output=True)
    assert (r.verdict, r.signal, r.stdout) == ("time-limit", 9, b"")
    p = cli("run", "--kill-grace", "0", "--time-limit", "0.2", "--", "/bin/sh", "-c",
            "while :; do :; done")
    assert p.returncode == 137, p.stderr
    p = cli("run", "--kill-grace", "-1", "--", "/bin/true")
    assert p.returncode == 125 and "kill-grace" in p.stderr and p.stderr.count("\n") == 1


# ---- issue 13 item 4: the program's own memory peak -------------------------------------------

DD_100M = ("/bin/dd", "if=/dev/zero", "bs=100M", "count=1", "of=/dev/null", "status=none")


def _time_v_max_rss(*cmd: str) -> int:
    """/usr/bin/time -v's "Maximum resident set size", in bytes: the reference."""
    if not os.path.exists("/usr/bin/time"):
        pytest.skip("no /usr/bin/time here to compare with")
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    line = next(x for x in p.stderr.splitlines() if "Maximum resident set size" in x)
    return int(line.split(":")[1]) * 1024


@pytest.mark.parametrize("kw", [{}, {"memory": "512M"}, {"fork_server": False},
                                {"fork_server": False, "memory": "512M"}, {"share_pid": True}],
                         ids=["server", "server-memory", "in-process", "in-process-memory",
                              "share-pid"])
def test_memory_peak_is_the_programs_own(kw: dict[str, object]) -> None:
    """Without --memory it was wait4's ru_maxrss: ~15 MiB for /bin/true, the copy of isol8r the
    program's process was before its exec; with --memory the jail's group, init and setup
    included (2.3-2.7 MiB). Now the program's group counts it from its exec on."""
    assert _time_v_max_rss("/bin/true") < 2 * MiB
    r = jail("/bin/true", **kw)
    assert r.memory_peak is not None and 0 < r.memory_peak < 2 * MiB, r.memory_peak
    reference = _time_v_max_rss(*DD_100M)
    r = jail(*DD_100M, **kw)
    assert r.verdict == "ok"
    assert 100 * MiB <= r.memory_peak < 110 * MiB, r.memory_peak
    assert abs(r.memory_peak - reference) < 8 * MiB, (r.memory_peak, reference)
    assert not any("memory_peak" in n for n in r.notes), r.notes
