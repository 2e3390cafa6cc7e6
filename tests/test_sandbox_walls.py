"""The security suite's probes, run through sb.run in a sandbox that has already run commands:
every probe is contained as in a fresh jail, each twin (a sandbox with that protection off)
detects its exposure; one sandbox cannot reach another's processes, files or sockets."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import alive, needs_root

sys.path.insert(0, str(Path(__file__).resolve().parent / "security"))

import isol8r  # noqa: E402
from secprobe import ID_BASE, JAIL_NOBODY, Report, Tools, World, parse, tools, victim, \
    world  # noqa: E402,F401  (fixtures)

pytestmark = needs_root

KERNEL_CALLS = ["reboot_bad_magic", "settimeofday_invalid", "clock_settime_invalid",
                "adjtimex_read", "swapon_bad_flags", "swapoff", "keyctl_get_keyring",
                "bpf_oversized", "perf_event_open_bad_flags", "userfaultfd", "io_uring_setup",
                "syslog_size", "iopl", "ioperm", "acct_off", "vhangup"]


def box(tools: Tools, **options: Any) -> isol8r.Sandbox:
    """A sandbox with the probe at /probe, that has run a few commands already (one of them
    leaving files and a background process behind, as a previous attacker would)."""
    if options.get("share_mount"):
        options.setdefault("ro_bind", [])
    else:
        options["ro_bind"] = [*options.get("ro_bind", []), f"{tools.probe}:/probe"]
    options.setdefault("id_base", ID_BASE)
    sb = isol8r.Sandbox(**options)
    sb.run(["/bin/sh", "-c", "echo x > /tmp/previous; ln -s / /tmp/rootlink; sleep 100 &"])
    sb.run(["/bin/true"], memory="64M")
    sb.write_file("/tmp/from-owner", "y")
    return sb


def run_probe(sb: isol8r.Sandbox, tools: Tools, sub: str, *args: Any, twin: str | None = None,
              exe: str = "/probe", **per_run: Any) -> Report:
    argv = [exe, *([f"--twin={twin}"] if twin else []), sub, *map(str, args)]
    per_run.setdefault("timeout", 30)
    return parse(sb.run(argv, capture_output=True, **per_run))


@pytest.fixture(scope="module")
def sb(tools: Tools) -> Iterator[isol8r.Sandbox]:
    with box(tools) as s:
        yield s


def test_escape_probes_are_contained(sb: isol8r.Sandbox, tools: Tools, world: World) -> None:
    r = run_probe(sb, tools, "dotdot", world.marker)
    assert r.info("root_is_own_parent") == "1" and not r.leaks, r
    assert r.errno("dotdot_relative") == r.errno("dotdot_absolute") == "ENOENT", r
    r = run_probe(sb, tools, "fds", "secret/marker")
    assert r.info("fds_extra") == "0" and r.info("fds_dirs") == "0" and not r.leaks, r
    r = run_probe(sb, tools, "chroot", world.marker)
    for call in ("chroot", "pivot_root", "umount_root", "umount_proc", "mount_tmpfs",
                 "mount_remount_rw", "fsopen", "open_tree"):
        assert r.errno(call) == "EPERM", (call, r)
    assert not r.leaks, r


def test_escape_twins_in_a_sandbox_detect_their_exposure(tools: Tools, world: World) -> None:
    with box(tools, share_mount=True) as twin:
        r = run_probe(twin, tools, "dotdot", world.marker, exe=str(tools.probe))
        assert r.ok("dotdot_absolute") and world.token in r.get("dotdot_absolute")[1], r
    with box(tools, seccomp="none", user="0", caps=["CAP_SYS_CHROOT", "CAP_SYS_ADMIN"]) as twin:
        r = run_probe(twin, tools, "chroot", world.marker, twin="jail-root")
        assert r.ok("chroot") and r.ok("fsopen"), r
        assert r.errno("chroot_escape") == "ENOENT" and not r.leaks, r


def test_host_probes_are_contained(sb: isol8r.Sandbox, tools: Tools, victim: Any) -> None:
    v = victim(JAIL_NOBODY)  # the sandbox user's own host uid: only the namespaces stop it
    r = run_probe(sb, tools, "signal", v.pid, "term")
    assert r.errno("kill_0") == "ESRCH" and r.errno("kill_term") == "ESRCH", r
    assert r.denied("ptrace_seize") and r.denied("pidfd_open"), r
    run_probe(sb, tools, "killall")
    assert alive(v.pid)
    r = run_probe(sb, tools, "procroot", "/tmp/none", "marker", v.pid, 1)
    assert not r.leaks, r
    r = run_probe(sb, tools, "sysctl", "/proc/sys/vm/swappiness", "/proc/sys/kernel/core_pattern")
    assert r.errno("sysctl_0") == "EACCES" and r.errno("sysctl_1") == "EACCES", r
    r = run_probe(sb, tools, "mknod")
    assert r.errno("mknod_block") == "EPERM" and r.errno("mknod_char") == "EPERM", r
    r = run_probe(sb, tools, "devices")
    assert [name for kind, name, _ in r.lines if kind == "ok"] == [], r
    r = run_probe(sb, tools, "kernel")
    for call in KERNEL_CALLS:
        assert r.errno(call) == "EPERM", (call, r)
    r = run_probe(sb, tools, "modules")
    for call in ("delete_module_absent", "finit_module_badfd", "init_module_empty"):
        assert r.errno(call) == "EPERM", (call, r)


def test_devices_twin_in_a_sandbox_sees_the_hosts(tools: Tools) -> None:
    with box(tools, share_mount=True) as twin:
        r = run_probe(twin, tools, "devices", exe=str(tools.probe))
        assert r.info("dev_kmsg_exists") == "1" and r.errno("dev_kmsg") != "ENOENT", r


def test_a_sandbox_cannot_reach_another_sandboxs_processes(tools: Tools) -> None:
    with box(tools) as a, box(tools) as b:
        started = threading.Event()
        out: list[isol8r.Result] = []

        def long() -> None:
            started.set()
            out.append(a.run(["/bin/sleep", "3"], timeout=10))
        t = threading.Thread(target=long)
        t.start()
        try:
            started.wait()
            time.sleep(0.5)
            sleepers = [p for p in _host_pids_in(a.pid) if _comm(p) == "sleep"]
            assert sleepers, "a's command is not running"
            for pid in sleepers:
                r = run_probe(b, tools, "signal", pid, "term")
                assert r.errno("kill_term") == "ESRCH" and r.denied("pidfd_open"), r
            run_probe(b, tools, "killall")
        finally:
            t.join()
        assert out[0].verdict == "ok" and out[0].exit_code == 0  # never signaled by b


def test_a_sandbox_cannot_reach_another_sandboxs_sockets(tools: Tools) -> None:
    name = f"isol8r-sb-{uuid.uuid4().hex[:8]}"
    server = ("import socket,time; s=socket.socket(socket.AF_UNIX); "
              f"s.bind('\\0{name}'); s.listen(); time.sleep(3)")
    client = ("import socket; s=socket.socket(socket.AF_UNIX)\n"
              f"try: s.connect('\\0{name}'); print('connected')\n"
              "except OSError as e: print(e.errno)")
    with isol8r.Sandbox() as a, isol8r.Sandbox() as b:
        t = threading.Thread(target=lambda: a.run(["/usr/bin/python3", "-c", server]))
        t.start()
        try:
            time.sleep(1.0)
            other = b.run(["/usr/bin/python3", "-c", client], capture_output=True, text=True)
            same = a.run(["/usr/bin/python3", "-c", client], capture_output=True, text=True)
        finally:
            t.join()
    assert same.stdout.strip() == "connected", same  # the twin: inside one sandbox it connects
    assert other.stdout.strip() == "111", other  # ECONNREFUSED: b has a network of its own


def _host_pids_in(init: int) -> list[int]:
    """Host pids of the processes below a sandbox's init (its descendants)."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [init]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
