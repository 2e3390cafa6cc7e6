"""Issue 5 in a real jail: seccomp policies as a jailed program meets them.

Every action kind of a Docker-format profile, @groups in allow- and deny-lists from the CLI,
argument conditions, Docker's own default profile, the default policy's denials, audit mode,
the `policy` command, and the name of the syscall that got a program killed. Where a test shows
a filter at work, a twin run without it (or with another policy) shows the same call doing
something else, so the test can fail.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import isol8r
from conftest import DOCKER_PROFILE, cli, jail, needs_root
from isol8r import seccomp
from isol8r.sys import linux

DOCKER = DOCKER_PROFILE
HELPERS = Path(__file__).resolve().parent / "seccomp_helpers"

pytestmark = [needs_root,
              pytest.mark.skipif(linux.MACHINE != "x86_64", reason="syscall numbers are x86_64's")]

# x86_64 syscall numbers
NR = {"ptrace": 101, "getppid": 110, "getpgrp": 111, "getpriority": 140,
      "sched_getscheduler": 145, "personality": 135, "mount": 165, "keyctl": 250,
      "unshare": 272, "kcmp": 312, "process_madvise": 440, "getpid": 39}
PTRACE_ATTACH, NO_SUCH_PID = 16, 999999
ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC = 0x0040000, 0x0400000

# Makes raw system calls given as [label, name, args...] and prints {label: result or -errno}.
# With "trap" in argv[2], a SIGSYS handler is installed first and reported.
PROBE = r"""
import ctypes, json, signal, sys
NR = json.loads(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
trapped = []
if len(sys.argv) > 3:
    signal.signal(signal.SIGSYS, lambda *a: trapped.append(1))
out = {}
for label, name, *args in json.loads(sys.argv[1]):
    r = libc.syscall(ctypes.c_long(NR[name]), *(ctypes.c_ulong(a & (2**64 - 1)) for a in args))
    out[label] = -ctypes.get_errno() if r == -1 else r
out["trapped"] = bool(trapped)
print(json.dumps(out), flush=True)
"""


def probe(calls: list[list[Any]], trap: bool = False, **options: Any) -> isol8r.Result:
    extra = ["trap"] if trap else []
    return jail("/usr/bin/python3", "-c", PROBE, json.dumps(calls), json.dumps(NR), *extra,
                **options)


def answers(calls: list[list[Any]], **options: Any) -> dict[str, Any]:
    r = probe(calls, **options)
    assert r.verdict == "ok", (r, r.stderr)
    return json.loads(r.stdout)


def write_profile(tmp_path: Path, syscalls: list[dict[str, Any]], default: str = "SCMP_ACT_ALLOW",
                  **extra: Any) -> str:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"defaultAction": default, "syscalls": syscalls, **extra}))
    return str(path)


# ---- a Docker-format profile: every action kind ------------------------------------------------


@pytest.fixture
def actions_profile(tmp_path: Path) -> str:
    return write_profile(tmp_path, [
        {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EXDEV},
        {"names": ["sched_getscheduler"], "action": "SCMP_ACT_TRACE", "errnoRet": 7},
        {"names": ["getpgrp"], "action": "SCMP_ACT_LOG"},
        {"names": ["getpriority"], "action": "SCMP_ACT_TRAP"},
        {"names": ["kcmp"], "action": "SCMP_ACT_KILL_THREAD"},
        {"names": ["ptrace"], "action": "SCMP_ACT_KILL_PROCESS"},
        {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EXDEV,
         "args": [{"index": 0, "value": ADDR_NO_RANDOMIZE, "op": "SCMP_CMP_EQ"}]},
        {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EXDEV,
         "args": [{"index": 0, "value": READ_IMPLIES_EXEC, "valueTwo": READ_IMPLIES_EXEC,
                   "op": "SCMP_CMP_MASKED_EQ"}]},
    ])


def test_errno_trace_log_and_allow_actions(actions_profile: str) -> None:
    calls: list[list[Any]] = [["errno", "getppid"], ["trace", "sched_getscheduler", 0],
                              ["log", "getpgrp"], ["allowed", "getpid"]]
    got = answers(calls, seccomp_profile=actions_profile)
    assert got["errno"] == -errno.EXDEV          # errnoRet is the errno
    assert got["trace"] == -errno.ENOSYS         # no tracer: the kernel fails it with ENOSYS
    assert got["log"] > 0 and got["allowed"] > 0  # logged calls run; the default allows
    plain = answers(calls, seccomp="none")  # off: the twin, so the answers above are the profile's
    assert plain["errno"] > 0 and plain["trace"] == 0  # the twin: without the profile they run


def test_trap_action_sends_a_catchable_sigsys(actions_profile: str) -> None:
    got = json.loads(probe([["trap", "getpriority", 0, 0]], trap=True,
                           seccomp_profile=actions_profile).stdout)
    assert got["trapped"] is True
    assert json.loads(probe([["trap", "getpriority", 0, 0]], trap=True).stdout)["trapped"] is False


def test_uncaught_trap_is_verdict_seccomp(actions_profile: str) -> None:
    r = probe([["trap", "getpriority", 0, 0]], seccomp_profile=actions_profile)
    assert (r.verdict, r.signal) == ("seccomp", signal.SIGSYS)


@pytest.mark.parametrize("name,args", [("kcmp", [0, 0, 0, 0, 0]),
                                       ("ptrace", [PTRACE_ATTACH, NO_SUCH_PID])])
def test_kill_actions_give_verdict_seccomp(actions_profile: str, name: str,
                                           args: list[int]) -> None:
    r = probe([["x", name, *args]], seccomp_profile=actions_profile)
    assert (r.verdict, r.signal, r.stdout) == ("seccomp", signal.SIGSYS, b"")
    twin = probe([["x", name, *args]], seccomp="none")  # off: the twin, the call itself survives
    assert twin.verdict == "ok"


def test_argument_conditions_in_a_profile(actions_profile: str) -> None:
    calls = [["linux32", "personality", 0x8], ["linux", "personality", 0],
             ["no_aslr", "personality", ADDR_NO_RANDOMIZE],
             ["rie", "personality", READ_IMPLIES_EXEC | 0x8]]  # masked: any value with the bit
    got = answers(calls, seccomp_profile=actions_profile)
    assert got["linux32"] >= 0 and got["linux"] >= 0
    assert got["no_aslr"] == got["rie"] == -errno.EXDEV
    plain = answers(calls, seccomp="none")  # off: the twin, the conditions are the profile's
    assert plain["no_aslr"] >= 0 and plain["rie"] >= 0


# ---- the blocked syscall of a killed program ---------------------------------------------------


def test_result_names_the_blocked_syscall(actions_profile: str) -> None:
    seccomp.watch_kills()  # so printk's rate limit (other tests' kills) cannot thin the records
    r = probe([["x", "ptrace", PTRACE_ATTACH, NO_SUCH_PID]], seccomp_profile=actions_profile)
    assert r.verdict == "seccomp"
    assert r.syscall == "ptrace"
    assert json.loads(r.to_json())["syscall"] == "ptrace"
    ok = probe([["x", "getpid"]], seccomp_profile=actions_profile)
    assert ok.verdict == "ok" and ok.syscall is None


def _unique_id_base() -> int:
    """Host ids no other jail of this machine uses now, so the kernel log's uid is ours."""
    return 1_000_000_000 + (os.getpid() % 4096) * 65536


def test_blocked_syscall_from_the_kernel_log(actions_profile: str) -> None:
    """seccomp.blocked_syscall itself, without the supervisor's wiring: the jail is told apart
    from every other by its host uids."""
    assert seccomp.watch_kills()
    base = _unique_id_base()
    since = time.monotonic()
    r = probe([["x", "ptrace", PTRACE_ATTACH, NO_SUCH_PID]], seccomp_profile=actions_profile,
              id_base=base)
    assert r.verdict == "seccomp"
    uids = range(base, base + 65536)
    assert seccomp.blocked_syscall(None, since, uids=uids, comm="python3") == "ptrace"
    # the record is a kill of this jail's uid; another jail's uids, or a later window, find none
    assert seccomp.blocked_syscall(None, since, uids=range(base + 65536, base + 131072),
                                   wait=0) is None
    assert seccomp.blocked_syscall(None, time.monotonic() + 1, uids=uids, wait=0) is None


def test_blocked_syscall_of_another_abi(tmp_path: Path) -> None:
    """A call through int $0x80 is killed as a foreign ABI; it is named with its ABI."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    exe = tmp_path / "int80"
    p = subprocess.run([gcc, "-m32", "-static", "-nostdlib", "-o", str(exe),
                        str(HELPERS / "int80.S")], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"gcc -m32 cannot build a static i386 program: {p.stderr.strip()[:200]}")
    assert seccomp.watch_kills()
    base = _unique_id_base()
    since = time.monotonic()
    r = jail("/int80", "20", ro_bind=[f"{exe}:/int80"], id_base=base)  # i386 getpid
    assert (r.verdict, r.signal) == ("seccomp", signal.SIGSYS)
    assert seccomp.blocked_syscall(None, since, uids=range(base, base + 65536)) == "x86:getpid"


RECORD = (b'5,6189,2423083693,-;audit: type=1326 audit(1795549541.428:68): auid=4294967295 '
          b'uid=1600065534 gid=1600065534 ses=4294967295 pid=13279 comm=%s exe="/ptr" sig=%d '
          b'arch=%s syscall=%d compat=0 ip=0x438c9a code=%s\n')


def test_parse_kill_records() -> None:
    k = seccomp.parse_kill(RECORD % (b'"ptr"', 31, b"c000003e", 101, b"0x80000000"))
    assert k is not None and (k.pid, k.uid, k.comm, k.exe, k.syscall) == \
        (13279, 1600065534, "ptr", "/ptr", "ptrace")
    assert k.wall == pytest.approx(1795549541.428)
    # a comm with a space is logged in hex; an i386 call is named with its ABI
    k = seccomp.parse_kill(RECORD % (b"6120622063", 31, b"40000003", 20, b"0x80000000"))
    assert k is not None and (k.comm, k.syscall) == ("a b c", "x86:getpid")
    k = seccomp.parse_kill(RECORD % (b'"x"', 31, b"c000003e", 39 | 0x40000000, b"0x00000000"))
    assert k is not None and k.syscall == "x32:getpid"
    # log and errno records are not kills
    assert seccomp.parse_kill(RECORD % (b'"p"', 0, b"c000003e", 101, b"0x7ffc0000")) is None
    assert seccomp.parse_kill(b"6,1,2,-;audit: type=1300 audit(1.2:3): arch=c000003e") is None
    assert seccomp.parse_kill(b"garbage") is None


def test_find_kill_prefers_the_jails_own_process() -> None:
    def kill(pid: int, uid: int, wall: float, comm: str = "p") -> seccomp.Kill:
        return seccomp.Kill(wall, pid, pid, uid, comm, "/p", 0xC000003E, 101, 0x80000000)

    kills = [kill(90, 5, 100.0), kill(130, 5, 100.1), kill(120, 5, 100.2), kill(121, 9, 100.2),
             kill(125, 5, 99.0)]
    assert seccomp.find_kill(kills, 110, 99.5, 101.0, range(0, 8)).pid == 120
    assert seccomp.find_kill(kills, 110, 99.5, 101.0, range(9, 10)).pid == 121
    assert seccomp.find_kill(kills, 110, 100.15, 101.0, range(0, 8)).pid == 120
    assert seccomp.find_kill(kills, 125, 98.0, 101.0, range(0, 8)).pid == 125
    assert seccomp.find_kill(kills, 131, 99.5, 101.0, range(0, 8)).pid == 90  # pids wrap
    assert seccomp.find_kill(kills, 110, 101.5, 102.0) is None


# ---- groups and the default policy from the CLI ------------------------------------------------


def cli_probe(calls: list[list[Any]], *flags: str) -> dict[str, Any]:
    p = cli("run", *flags, "--", "/usr/bin/python3", "-c", PROBE, json.dumps(calls),
            json.dumps(NR))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_deny_group_from_the_cli() -> None:
    calls = [["ptrace", "ptrace", PTRACE_ATTACH, NO_SUCH_PID], ["madvise", "process_madvise",
                                                                2**32 - 1, 0, 0, 0, 0]]
    # off: the deny group alone on no base, then the twin with no filter at all
    denied = cli_probe(calls, "--seccomp", "none", "--seccomp-deny", "@debug")
    assert denied == {"ptrace": -errno.EPERM, "madvise": -errno.EPERM, "trapped": False}
    plain = cli_probe(calls, "--seccomp", "none")
    assert plain["ptrace"] == -errno.ESRCH and plain["madvise"] == -errno.EBADF
    # on top of the default policy, which leaves process_madvise alone
    assert cli_probe(calls, "--seccomp-deny", "@debug")["madvise"] == -errno.EPERM
    assert cli_probe(calls)["madvise"] == -errno.EBADF


def test_allow_group_from_the_cli_still_runs_python() -> None:
    p = cli("run", "--seccomp-allow", "@system-service", "--", "/usr/bin/python3", "-c",
            "import json, sqlite3, subprocess; print(subprocess.run(['/bin/sh', '-c', 'echo 1'],"
            " capture_output=True, text=True).stdout.strip())")
    assert (p.returncode, p.stdout) == (0, "1\n"), p.stderr
    # and what the group leaves out is refused: mount is not in @system-service
    got = cli_probe([["mount", "mount", 0, 0, 0, 0, 0], ["keyctl", "keyctl", 0, 2**64 - 3, 0]],
                    "--seccomp-allow", "@system-service,@default")
    assert got["mount"] == -errno.EPERM
    assert got["keyctl"] == -errno.EPERM  # in @system-service, but the default policy's guard holds


def test_allow_list_guards_personality() -> None:
    calls = [["query", "personality", 0xFFFFFFFF], ["no_aslr", "personality", ADDR_NO_RANDOMIZE]]
    got = answers(calls, seccomp_allow=["@system-service"])
    assert got["query"] >= 0 and got["no_aslr"] == -errno.EPERM
    # off: an allow list on no base has no personality guard (the twin)
    assert answers(calls, seccomp_allow=["@system-service"], seccomp="none")["no_aslr"] >= 0


def test_default_policy_argument_conditions() -> None:
    calls = [["query", "personality", 0xFFFFFFFF], ["linux", "personality", 0],
             ["no_aslr", "personality", ADDR_NO_RANDOMIZE]]
    got = answers(calls)
    assert got["query"] >= 0 and got["linux"] >= 0 and got["no_aslr"] == -errno.EPERM
    assert answers(calls, seccomp="none")["no_aslr"] >= 0  # off: the twin


DENIED_BY_DEFAULT = [["ptrace", "ptrace", PTRACE_ATTACH, NO_SUCH_PID],   # unfiltered: ESRCH
                     ["mount", "mount", 0, 0, 0, 0, 0],                  # unfiltered: EFAULT
                     ["keyctl", "keyctl", 0, 2**64 - 3, 0]]              # KEYCTL_GET_KEYRING_ID


def test_default_policy_denies_ptrace_mount_keyctl() -> None:
    got = answers(DENIED_BY_DEFAULT)
    assert (got["ptrace"], got["mount"], got["keyctl"]) == (-errno.EPERM,) * 3
    plain = answers(DENIED_BY_DEFAULT, seccomp="none")  # off: the twin, EPERM is the filter's
    assert -errno.EPERM not in (plain["ptrace"], plain["mount"], plain["keyctl"]), plain


def test_seccomp_log_lets_a_denied_call_through() -> None:
    calls = [["unshare", "unshare", 0]]  # unshare(0) changes nothing
    assert answers(calls)["unshare"] == -errno.EPERM
    assert answers(calls, seccomp_log=True)["unshare"] == 0
    p = cli("run", "--seccomp-log", "--", "/usr/bin/python3", "-c", PROBE, json.dumps(calls),
            json.dumps(NR))
    assert json.loads(p.stdout)["unshare"] == 0, p.stderr


def test_newer_forms_follow_a_refused_or_guarded_call(tmp_path: Path) -> None:
    """clone3 and openat2 read their arguments from memory: a policy that refuses or guards clone
    or openat and allows the rest gives them ENOSYS (libc falls back), unless it names them."""
    def rules(policy: seccomp.Policy) -> dict[str, str]:
        return {n: str(r.action) for r in policy.rules for n in r.names}

    got = rules(seccomp.resolve_policy("none", deny=("openat", "clone")))
    assert got["openat2"] == got["clone3"] == "errno(ENOSYS)"
    assert rules(seccomp.resolve_policy("none", deny=("openat", "openat2")))["openat2"] == \
        "errno(EPERM)"
    assert "openat2" not in rules(seccomp.resolve_policy("none", deny=("read",)))
    guarded = write_profile(tmp_path, [{"names": ["clone"], "action": "SCMP_ACT_ERRNO", "args": [
        {"index": 0, "value": 0x10000000, "valueTwo": 0x10000000, "op": "SCMP_CMP_MASKED_EQ"}]}])
    assert rules(seccomp.resolve_policy(profile=guarded))["clone3"] == "errno(ENOSYS)"
    # in a jail: with clone denied, neither fork nor a thread (clone3, then clone) gets through
    code = ("import os, threading\n"
            "try:\n    os.fork() or os._exit(0)\nexcept PermissionError:\n    print('no fork')\n"
            "try:\n    threading.Thread(target=int).start()\nexcept RuntimeError:\n"
            "    print('no thread')\n")
    # off: the deny list alone on no base, and its twin below with no filter at all
    r = jail("/usr/bin/python3", "-c", code, seccomp="none", seccomp_deny=["clone"])
    assert (r.verdict, r.stdout) == ("ok", b"no fork\nno thread\n"), r.stderr
    assert jail("/usr/bin/python3", "-c", code, seccomp="none").stdout == b""


# ---- Docker's default profile ------------------------------------------------------------------


def test_docker_default_profile_runs_a_shell_and_python() -> None:
    r = jail("/bin/sh", "-c", "true", seccomp_profile=DOCKER)
    assert r.verdict == "ok", r.stderr
    r = jail("/usr/bin/python3", "-c", "print(1)", seccomp_profile=DOCKER)
    assert (r.verdict, r.stdout) == ("ok", b"1\n"), r.stderr


def test_docker_default_profile_from_the_cli(tmp_path: Path) -> None:
    """The issue's "done when": isol8r run --seccomp-profile docker-default.json -- python3 ..."""
    shutil.copy(DOCKER, tmp_path / "docker-default.json")
    assert cli("run", "--", "/bin/true").returncode == 0  # a CLI server started elsewhere
    p = cli("run", "--seccomp-profile", "docker-default.json", "--", "python3", "-c", "print(1)",
            cwd=tmp_path)
    assert (p.returncode, p.stdout) == (0, "1\n"), p.stderr


def test_docker_default_profile_refuses_what_it_lists() -> None:
    got = answers([["mount", "mount", 0, 0, 0, 0, 0], ["keyctl", "keyctl", 0, 2**64 - 3, 0]],
                  seccomp_profile=DOCKER)
    assert got["mount"] == got["keyctl"] == -errno.EPERM


# ---- the policy command ------------------------------------------------------------------------


def test_policy_show_default() -> None:
    p = cli("policy", "show", "default")
    assert p.returncode == 0, p.stderr
    assert "default action: allow" in p.stdout
    assert any(line.split()[:2] == ["errno(EPERM)", "ptrace"] or
               ("errno(EPERM)" in line and " ptrace" in line) for line in p.stdout.splitlines())


def test_policy_show_group() -> None:
    p = cli("policy", "show", "@debug")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("@debug: ")
    assert "ptrace" in p.stdout.split() and "process_vm_readv" in p.stdout.split()
    bad = cli("policy", "show", "@nope")
    assert bad.returncode == 125 and "@nope" in bad.stderr


def test_policy_check(tmp_path: Path) -> None:
    good = write_profile(tmp_path, [{"names": ["ptrace"], "action": "SCMP_ACT_KILL_PROCESS"}])
    p = cli("policy", "check", good)
    assert (p.returncode, p.stdout) == (0, f"{good}: ok\n"), p.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["ptrace"], "action": "SCMP_ACT_BLOCK"}]}))
    p = cli("policy", "check", str(bad))
    assert p.returncode == 125
    assert str(bad) in p.stderr and "syscalls[1].action SCMP_ACT_BLOCK" in p.stderr
    p = cli("policy", "check", str(tmp_path / "missing.json"))
    assert p.returncode == 125 and "missing.json" in p.stderr
