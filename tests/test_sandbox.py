"""isol8r.Sandbox: one jail that stays, many commands, files in and out, checked from inside."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from conftest import isol8r_cgroups, needs_root

import isol8r
from isol8r.errors import SetupError, SpecError

pytestmark = needs_root


@pytest.fixture
def sb() -> Iterator[isol8r.Sandbox]:
    with isol8r.Sandbox() as box:
        yield box


def comms(sb: isol8r.Sandbox) -> list[str]:
    """The command names of every process a command of sb can see in its /proc."""
    r = sb.run(["/bin/sh", "-c", "cat /proc/[0-9]*/comm 2>/dev/null"], capture_output=True,
               text=True)
    return r.stdout.split()


def test_run_gives_a_result_like_isol8r_run(sb: isol8r.Sandbox) -> None:
    r = sb.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], capture_output=True)
    assert (r.exit_code, r.verdict, r.stdout, r.stderr) == (3, "nonzero-exit", b"out\n", b"err\n")
    assert r.wall_time is not None and r.memory_peak
    ok = sb.run(["/bin/echo", "hi"], capture_output=True, text=True)
    assert (ok.verdict, ok.stdout) == ("ok", "hi\n")
    fed = sb.run(["/bin/cat"], input=b"fed", capture_output=True)
    assert fed.stdout == b"fed"
    with pytest.raises(isol8r.JailFailed):
        sb.run(["/bin/false"], check=True)


def test_files_persist_between_commands(sb: isol8r.Sandbox) -> None:
    sb.run(["/bin/sh", "-c", "echo made > /tmp/by-a-command"])
    assert sb.read_file("/tmp/by-a-command") == b"made\n"
    sb.write_file("/tmp/by-the-owner", "written")
    assert sb.run(["/bin/cat", "/tmp/by-the-owner"], capture_output=True).stdout == b"written"
    assert {"by-a-command", "by-the-owner"} <= set(sb.listdir("/tmp"))
    # owned by the jail's user, who can change it
    assert sb.run(["/bin/sh", "-c", "echo more >> /tmp/by-the-owner"]).exit_code == 0


def test_upload_and_download(sb: isol8r.Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "prog.sh"
    src.write_text("#!/bin/sh\necho from-upload\n")
    src.chmod(0o755)
    sb.upload(src, "/tmp/prog.sh")
    assert sb.run(["/tmp/prog.sh"], capture_output=True).stdout == b"from-upload\n"
    sb.run(["/bin/sh", "-c", "seq 1 100000 > /tmp/big"])
    sb.download("/tmp/big", tmp_path / "big")
    assert (tmp_path / "big").read_bytes() == b"".join(b"%d\n" % i for i in range(1, 100001))
    with pytest.raises(FileNotFoundError):
        sb.read_file("/tmp/none")
    with pytest.raises(IsADirectoryError):
        sb.read_file("/tmp")


def test_a_planted_symlink_does_not_lead_out(sb: isol8r.Sandbox, tmp_path: Path) -> None:
    secret = Path("/tmp") / f"isol8r-secret-{uuid.uuid4().hex}"
    secret.write_text("host secret")
    try:
        target = tmp_path / "host-file"
        target.write_text("host data")
        target.chmod(0o666)
        sb.run(["/bin/sh", "-c", f"ln -s {secret} /tmp/to-secret; ln -s {target} /tmp/to-host;"
                " ln -s /proc/sys/kernel/core_pattern /tmp/to-sysctl;"
                " ln -s ../../../../../../.. /tmp/up"])
        with pytest.raises(FileNotFoundError):
            sb.read_file("/tmp/to-secret")  # the link resolves in the jail's root: no such file
        with pytest.raises(FileNotFoundError):
            sb.read_file(f"/tmp/up{secret}")
        with pytest.raises(OSError):
            sb.write_file("/tmp/to-host", "overwritten")
        assert target.read_text() == "host data"
        core = Path("/proc/sys/kernel/core_pattern").read_text()
        with pytest.raises(OSError):
            sb.write_file("/tmp/to-sysctl", "|/tmp/pwn")  # as the jail's user: refused
        assert Path("/proc/sys/kernel/core_pattern").read_text() == core
        with pytest.raises(PermissionError):
            sb.read_file("/proc/1/environ")  # the sandbox's init is jail root, not its user
    finally:
        secret.unlink()


def test_each_command_has_the_walls_of_a_fresh_jail(sb: isol8r.Sandbox) -> None:
    for _ in range(3):
        sb.run(["/bin/sh", "-c", "echo warm-up > /tmp/x"])
    status = sb.run(["/bin/cat", "/proc/self/status"], capture_output=True, text=True).stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split()[0] == "65534"
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"
    fresh = isol8r.run(["/bin/cat", "/proc/self/status"], capture_output=True, text=True).stdout
    fresh_fields = dict(line.split(":\t", 1) for line in fresh.splitlines() if ":\t" in line)
    for name in ("Uid", "Gid", "CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp"):
        assert fields[name] == fresh_fields[name], name


def test_a_background_process_dies_when_its_time_limit_fires(sb: isol8r.Sandbox) -> None:
    r = sb.run(["/bin/sh", "-c", "sleep 1000 & sleep 1000"], timeout=0.5)
    assert r.verdict == "time-limit"
    assert "sleep" not in comms(sb)


def test_leftovers_end_with_their_command(sb: isol8r.Sandbox) -> None:
    r = sb.run(["/bin/sh", "-c", "setsid sleep 1000 & echo started"], capture_output=True)
    assert r.stdout == b"started\n"
    assert "sleep" not in comms(sb)


def test_per_command_limits_and_verdicts(sb: isol8r.Sandbox) -> None:
    big = sb.run(["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
                 memory="32M", capture_output=True)
    assert big.verdict == "memory-limit"
    small = sb.run(["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=1M", "count=1"],
                   memory="32M", capture_output=True)
    assert small.verdict == "ok"
    spin = sb.run(["/bin/sh", "-c", "while :; do :; done"], cpu_limit=0.3)
    assert spin.verdict == "cpu-limit"
    out = sb.run(["/bin/sh", "-c", "yes | head -c 100000"], output_limit=1000,
                 capture_output=True)
    assert out.verdict == "output-limit" and len(out.stdout) <= 1000
    assert sb.run(["/bin/true"]).verdict == "ok"  # no limit left over from the others


def test_memory_peak_is_the_commands_own(sb: isol8r.Sandbox) -> None:
    peaks = []
    for _ in range(3):
        sb.run(["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=48M", "count=1"])
        peaks.append(sb.run(["/bin/true"]).memory_peak)
    assert all(p is not None and p < 8 << 20 for p in peaks), peaks
    r = sb.run(["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=48M", "count=1"])
    assert r.memory_peak is not None and r.memory_peak >= 48 << 20


def test_jail_options_cannot_change_per_command(sb: isol8r.Sandbox) -> None:
    with pytest.raises(SpecError, match="rootfs|sandbox"):
        sb.run(["/bin/true"], rootfs="/")
    with pytest.raises(SpecError):
        sb.run(["/bin/true"], user=0)
    with pytest.raises(SpecError, match="seccomp"):
        sb.run(["/bin/true"], seccomp="none")
    with isol8r.Sandbox(seccomp_deny=["uname"]) as custom:
        with pytest.raises(SpecError, match="seccomp"):
            custom.run(["/bin/true"], seccomp_deny=[])  # the sandbox's policy, not the command's
        denied = custom.run(["/bin/uname"], capture_output=True)
        fresh = isol8r.run(["/bin/uname"], seccomp_deny=["uname"], capture_output=True)
        assert denied.exit_code != 0 and denied.stdout == b""
        assert (denied.verdict, denied.exit_code) == (fresh.verdict, fresh.exit_code)
    assert sb.run(["/bin/sh", "-c", "echo $A; pwd"], env={"A": "x"}, cwd="/tmp",
                  capture_output=True).stdout == b"x\n/tmp\n"


def test_several_commands_at_once(sb: isol8r.Sandbox) -> None:
    results: list[isol8r.Result] = []

    def one(i: int) -> None:
        results.append(sb.run(["/bin/sh", "-c", f"sleep 0.3; echo {i}"], capture_output=True))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.stdout for r in results) == [b"0\n", b"1\n", b"2\n", b"3\n"]


def test_sandboxes_do_not_see_each_other() -> None:
    with isol8r.Sandbox() as a, isol8r.Sandbox() as b:
        a.write_file("/tmp/only-in-a", "a")
        done = threading.Event()
        runner = threading.Thread(target=lambda: (a.run(["/bin/sleep", "3"], timeout=5),
                                                  done.set()))
        runner.start()
        try:
            time.sleep(0.3)
            assert "only-in-a" not in b.listdir("/tmp")
            assert "sleep" not in comms(b)
            kill = b.run(["/bin/sh", "-c", "kill -9 -1; echo $?"], capture_output=True)
            assert kill.exit_code in (0, 137, -9) or kill.signal == 9
            assert not done.is_set()  # a's command was not killed by b's
        finally:
            runner.join()


def groups_of(*owners: int | None) -> set[str]:
    """The jail cgroups made by these processes (cgroups.Cgroup names them jail-PID-...)."""
    found: set[str] = set()
    for top in isol8r_cgroups():
        if os.path.basename(top) != "isol8r":
            continue
        for d, subdirs, _ in os.walk(top):
            found.update(os.path.join(d, s) for s in subdirs
                         if any(s.startswith(f"jail-{p}-") for p in owners if p))
    return found


def mine() -> set[str]:
    """The cgroups this process made: its sandboxes' command groups (the fork server's come
    and go with its warm jails; other checkouts' with their runs)."""
    return groups_of(os.getpid())


def test_close_leaves_nothing() -> None:
    groups = mine()
    sb = isol8r.Sandbox()
    sb.run(["/bin/true"], memory="64M")
    sb.run(["/bin/true"])
    assert mine() - groups  # the commands' groups (kept for the next commands)
    pid = sb.pid
    assert os.path.exists(f"/proc/{pid}")
    sb.close()
    sb.close()  # idempotent
    assert not os.path.exists(f"/proc/{pid}")
    assert not mine() - groups
    with pytest.raises(SetupError):
        sb.run(["/bin/true"])


def test_idle_timeout_ends_the_sandbox() -> None:
    sb = isol8r.Sandbox(idle_timeout=0.3)
    try:
        assert sb.run(["/bin/true"]).verdict == "ok"
        deadline = time.monotonic() + 10
        while not sb.closed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sb.closed
        with pytest.raises(SetupError):
            sb.run(["/bin/true"])
    finally:
        sb.close()


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(SpecError):
        isol8r.Sandbox(idle_timeout=0)
    with pytest.raises(SpecError):
        isol8r.Sandbox(share_pid=True)
    with pytest.raises(SpecError):
        isol8r.Sandbox(no_such_option=1)


def test_async_sandbox() -> None:
    async def main() -> list[bytes]:
        async with isol8r.AsyncSandbox() as sb:
            await sb.write_file("/tmp/a", b"async")
            rs = await asyncio.gather(*(sb.run(["/bin/cat", "/tmp/a"], capture_output=True)
                                        for _ in range(3)))
            assert await sb.read_file("/tmp/a") == b"async"
            p = await sb.spawn(["/bin/echo", "spawned"])
            assert p.stdout.read() == b"spawned\n"
            assert (await asyncio.to_thread(p.wait)).verdict == "ok"
            p.close()
            return [r.stdout for r in rs]
    assert asyncio.run(main()) == [b"async"] * 3


def test_spawn_streams_wait_and_signals(sb: isol8r.Sandbox) -> None:
    with sb.spawn(["/bin/cat"]) as p:
        p.stdin.write(b"streamed\n")
        p.stdin.close()
        assert p.stdout.read() == b"streamed\n"
        assert p.wait().verdict == "ok"
    with sb.spawn(["/bin/sh", "-c", "echo ready; exec sleep 1000"]) as p:
        assert p.stdout.readline() == b"ready\n"
        assert p.poll() is None
        with pytest.raises(TimeoutError):
            p.wait(0.1)
        p.send_signal(signal.SIGTERM)
        r = p.wait(10)
        assert (r.signal, r.verdict) == (signal.SIGTERM, "signaled")
    with sb.spawn(["/bin/sleep", "1000"], timeout=0.3) as p:
        assert p.wait(10).verdict == "time-limit"
    assert "sleep" not in comms(sb)


def test_spawn_with_a_terminal_of_the_jails_own(sb: isol8r.Sandbox) -> None:
    with sb.spawn(["/bin/sh", "-c", "read x; tty; stty size; echo got $x"], pty=True) as p:
        p.resize(33, 101)
        p.stdin.write(b"typed\n")
        out = p.stdout.read()
        assert p.wait(10).verdict == "ok"
    lines = out.replace(b"\r", b"").split(b"\n")
    assert b"/dev/pts/0" in lines and b"33 101" in lines and b"got typed" in lines, out
    with sb.spawn(["/bin/true"]) as plain:
        with pytest.raises(ValueError):
            plain.resize(10, 10)


def test_sandbox_defaults_are_per_command() -> None:
    with isol8r.Sandbox(timeout=0.3, memory="32M", env={"A": "1"}) as sb:
        assert sb.run(["/bin/sleep", "5"]).verdict == "time-limit"
        assert sb.run(["/bin/sleep", "0.5"], timeout=5).verdict == "ok"
        big = sb.run(["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=48M", "count=1"],
                     capture_output=True)
        assert big.verdict == "memory-limit"
        assert sb.run(["/bin/sh", "-c", "echo $A"], capture_output=True).stdout == b"1\n"


def test_warm_sandbox_jails_and_warm_jails_are_kept_apart() -> None:
    """A sandbox's jail (whose init waits for Commands) and a fresh run's jail (whose program
    waits for a Request) have one Shape here: the fork server's pool keeps them apart."""
    for _ in range(3):
        isol8r.Sandbox().close()  # its end tops up the pool's sandbox jails of this shape
        assert isol8r.run(["/bin/echo", "fresh"], capture_output=True, timeout=10).stdout \
            == b"fresh\n"
    with isol8r.Sandbox() as sb:
        assert sb.run(["/bin/echo", "kept"], capture_output=True, timeout=10).stdout == b"kept\n"


def test_a_sandbox_dies_with_its_owner(tmp_path: Path) -> None:
    """The owner killed by SIGKILL: the sandbox's processes end (the fork server kills its
    jails), and the command groups the owner made are removed (the server sweeps them)."""
    import subprocess
    import sys
    code = ("import isol8r, sys, time\n"
            "sb = isol8r.Sandbox()\n"
            "sb.run(['/bin/true'], memory='64M')\n"
            "p = sb.spawn(['/bin/sleep', '1000'], memory='64M')\n"
            "print(sb.pid, flush=True)\n"
            "time.sleep(1000)\n")
    env = dict(os.environ, PYTHONPATH=str(Path(isol8r.__file__).resolve().parents[1]))
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    try:
        assert owner.stdout is not None
        init = int(owner.stdout.readline())
        assert os.path.exists(f"/proc/{init}")
        assert groups_of(owner.pid)
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
            os.path.exists(f"/proc/{init}")
            or groups_of(owner.pid)):
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{init}")
    assert not groups_of(owner.pid)
