"""The seccomp concern against the real kernel: every filter is loaded in a forked child.

Each child sets no_new_privs, loads the BPF with isol8r.sys.linux.SeccompProgram, makes a call and
reports over a pipe; the parent checks the answer or the signal. Wherever a test shows a protection
working, a control shows the same call doing something else without the filter, so the test can
fail. A small BPF interpreter (below) also checks rules for values too many to try in children.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import DOCKER_PROFILE, needs_root
from isol8r import seccomp
from isol8r.errors import SpecError
from isol8r.sys import libseccomp as scmp
from isol8r.sys import linux

ROOT = Path(__file__).resolve().parent.parent
DOCKER = DOCKER_PROFILE
HELPERS = Path(__file__).resolve().parent / "seccomp_helpers"
pytestmark = pytest.mark.skipif(linux.MACHINE != "x86_64", reason="the ABI tests are x86_64's")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# x86_64 syscall numbers used below
NR_GETPPID, NR_PTRACE, NR_PERSONALITY, NR_IOCTL, NR_UNSHARE, NR_CLONE3 = 110, 101, 135, 16, 272, 435
NR_GETPID, NR_REBOOT, NR_SYSLOG, NR_MSEAL = 39, 169, 103, 462
X32 = scmp.X32_SYSCALL_BIT
I386_GETPID, I386_UNSHARE, I386_REBOOT = 20, 310, 88
CLONE_NEWUSER = 0x10000000


def raw(nr: int, *args: int) -> int:
    """syscall(2): the result, or -errno."""
    ret = _libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a & (2**64 - 1)) for a in args))
    return -ctypes.get_errno() if ret == -1 else ret


def in_child(bpf: bytes | None, fn: Callable[[], Any], trap: bool = False) -> tuple[str, Any]:
    """Run fn in a forked child under bpf: ("ok", fn's result), ("trapped", None) when a SIGSYS
    handler ran, or ("signal", signal number) when the kernel killed the child."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            os.close(r)
            trapped = []
            if trap:
                signal.signal(signal.SIGSYS, lambda *_: trapped.append(1))
            linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
            if bpf is not None:
                linux.SeccompProgram(bpf).load()
            result = fn()
            msg = {"trapped": True} if trapped else {"result": result}
            os.write(w, json.dumps(msg).encode())
        except BaseException as e:  # noqa: BLE001 - report anything to the parent
            os.write(w, json.dumps({"error": repr(e)}).encode())
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "signal", os.WTERMSIG(status)
    msg = json.loads(data)
    assert "error" not in msg, msg["error"]
    return ("trapped", None) if msg.get("trapped") else ("ok", msg["result"])


def exec_child(bpf: bytes | None, argv: list[str]) -> tuple[str, int]:
    """Load bpf in a forked child, then execve argv: ("exit", code) or ("signal", number)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
            if bpf is not None:
                linux.SeccompProgram(bpf).load()
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "signal", os.WTERMSIG(status)
    return "exit", os.WEXITSTATUS(status)


def profile(tmp_path: Path, data: Any, name: str = "p.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def one_rule(tmp_path: Path, action: str, names: list[str] | None = None, **extra: Any) -> str:
    rule = {"names": names or ["getppid"], "action": action, **extra}
    return profile(tmp_path, {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]})


# ---- a classic BPF interpreter for seccomp programs ------------------------------------------


def bpf_run(bpf: bytes, nr: int, arch: int = scmp.ARCH_X86_64, args: tuple[int, ...] = ()) -> int:
    """What the kernel would return for one call: the filter's 32-bit SECCOMP_RET value."""
    a6 = list(args) + [0] * (6 - len(args))
    data = struct.pack("<iIQ6Q", nr, arch, 0, *a6)
    insns = [struct.unpack_from("<HBBI", bpf, i) for i in range(0, len(bpf), 8)]
    acc = x = 0
    mem = [0] * 16
    pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 0x07
        if code == 0x20:                       # ld [k]
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x60:                     # ld M[k]
            acc = mem[k]
        elif code == 0x61:                     # ldx M[k]
            x = mem[k]
        elif code == 0x02:                     # st M[k]
            mem[k] = acc
        elif code == 0x03:                     # stx M[k]
            mem[k] = x
        elif code == 0x54:                     # and #k
            acc &= k
        elif code == 0x07:                     # tax
            x = acc
        elif code == 0x87:                     # txa
            acc = x
        elif cls == 0x05:                      # jumps
            op, src = code & 0xF0, (x if code & 0x08 else k)
            if op == 0x00:
                pc += k
                continue
            taken = {0x10: acc == src, 0x20: acc > src, 0x30: acc >= src,
                     0x40: bool(acc & src)}[op]
            pc += jt if taken else jf
        elif code == 0x06:                     # ret #k
            return k
        elif code == 0x16:                     # ret a
            return acc
        else:
            raise AssertionError(f"unexpected BPF opcode {code:#x}")


RET_ALLOW, RET_KILL_PROCESS = 0x7FFF0000, 0x80000000
RET_EPERM = 0x00050000 | errno.EPERM

# ---- the 32-bit helper ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int80(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/seccomp_helpers/int80.S built as a static i386 program."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed, so the i386 helper cannot be built")
    out = tmp_path_factory.mktemp("int80") / "int80"
    proc = subprocess.run([gcc, "-m32", "-static", "-nostdlib", "-o", str(out),
                           str(HELPERS / "int80.S")], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"gcc -m32 cannot build a static i386 program: {proc.stderr.strip()[:200]}")
    return str(out)


# ---- the default policy -----------------------------------------------------------------------


@needs_root  # the controls use privileged calls
def test_default_policy_denies_the_host_attack_surface() -> None:
    bpf = seccomp.compile_policy()
    assert bpf is not None
    calls = {"ptrace": lambda: raw(NR_PTRACE, 0, 0, 0, 0),  # PTRACE_TRACEME
             "unshare": lambda: raw(NR_UNSHARE, 0),
             "clone3": lambda: raw(NR_CLONE3, 0, 0),
             "syslog": lambda: raw(NR_SYSLOG, 10, 0, 0),  # SYSLOG_ACTION_SIZE_BUFFER
             "mseal": lambda: raw(NR_MSEAL, 0, 0, 0),
             "getppid": lambda: raw(NR_GETPPID)}
    got = {name: in_child(bpf, fn) for name, fn in calls.items()}
    assert got["ptrace"] == ("ok", -errno.EPERM)
    assert got["unshare"] == ("ok", -errno.EPERM)
    assert got["clone3"] == ("ok", -errno.ENOSYS)
    assert got["syslog"] == ("ok", -errno.EPERM)
    assert got["getppid"] == ("ok", os.getpid())
    assert got["mseal"][0] == "ok" and got["mseal"][1] != -errno.EPERM  # not denied by default
    # control: without the filter, root gets real answers
    assert in_child(None, calls["unshare"]) == ("ok", 0)
    assert in_child(None, calls["syslog"])[1] > 0
    assert in_child(None, calls["clone3"])[1] == -errno.EINVAL


def test_fork_and_threads_still_work_under_the_default_policy() -> None:
    def spawn() -> list[int]:
        import threading
        t = threading.Thread(target=lambda: None)
        t.start()
        t.join()
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])]
    assert in_child(seccomp.compile_policy(), spawn) == ("ok", [7])


@needs_root  # the controls use privileged calls
def test_clone_with_namespace_flags_is_denied() -> None:
    bpf = seccomp.compile_policy()
    # clone(CLONE_NEWUSER | SIGCHLD): the child would return 0 and exit at once
    def clone_newuser() -> int:
        ret = raw(56, CLONE_NEWUSER | signal.SIGCHLD, 0, 0, 0, 0)
        if ret == 0:
            os._exit(0)
        if ret > 0:
            os.waitpid(ret, 0)
        return ret
    assert in_child(bpf, clone_newuser) == ("ok", -errno.EPERM)
    status, pid = in_child(None, clone_newuser)  # control: root may
    assert status == "ok" and pid > 0
    for flag in seccomp.CLONE_NS_FLAGS.values():
        assert bpf_run(bpf, 56, args=(flag | signal.SIGCHLD,)) == RET_EPERM
    assert bpf_run(bpf, 56, args=(0x3D0F00 | signal.SIGCHLD,)) == RET_ALLOW  # pthread flags


def test_personality_allows_only_the_harmless_values() -> None:
    bpf = seccomp.compile_policy()
    for value in seccomp.PERSONALITY_OK:
        status, ret = in_child(bpf, partial(raw, NR_PERSONALITY, value))
        assert status == "ok" and ret >= 0, hex(value)
    for value in (0x0040000, 0x0400000, 0x1, 0x20009, 0xFFFFFFFE, 0x1_0000_0008):
        assert in_child(bpf, partial(raw, NR_PERSONALITY, value)) == ("ok", -errno.EPERM)
    assert in_child(None, lambda: raw(NR_PERSONALITY, 0x0040000))[1] >= 0  # control
    # every value near the allowed ones, and a spread of others, through the interpreter
    probe = {v + d for v in seccomp.PERSONALITY_OK for d in range(-3, 4)} | \
        {1 << b for b in range(64)} | {(1 << 64) - 1, 0x80000000, 0x7FFFFFFF}
    for v in probe:
        v &= (1 << 64) - 1
        want = RET_ALLOW if v in seccomp.PERSONALITY_OK else RET_EPERM
        assert bpf_run(bpf, NR_PERSONALITY, args=(v,)) == want, hex(v)


def test_tiocsti_is_denied_even_with_high_bits_set() -> None:
    bpf = seccomp.compile_policy()
    r, w = os.pipe()
    try:
        for cmd in (0x5412, 0x541C, 0xFFFFFFFF_00005412, 0xDEAD0000_0000541C):
            assert in_child(bpf, partial(raw, NR_IOCTL, r, cmd, 0)) == ("ok", -errno.EPERM)
        # other ioctls pass through to the kernel, which says a pipe is no tty
        assert in_child(bpf, lambda: raw(NR_IOCTL, r, 0x5413, 0)) == ("ok", -errno.ENOTTY)
        # control: without the filter TIOCSTI reaches the kernel too
        assert in_child(None, lambda: raw(NR_IOCTL, r, 0x5412, 0)) == ("ok", -errno.ENOTTY)
    finally:
        os.close(r)
        os.close(w)


# ---- other ABIs -------------------------------------------------------------------------------


def test_i386_syscalls_are_killed(int80: str) -> None:
    bpf = seccomp.compile_policy()
    assert exec_child(bpf, [int80, str(I386_GETPID)]) == ("signal", signal.SIGSYS)
    assert exec_child(None, [int80, str(I386_GETPID)]) == ("exit", 0)  # control
    assert exec_child(None, [int80, "9999"]) == ("exit", errno.ENOSYS)  # the helper reports


def test_x32_syscalls_are_killed() -> None:
    bpf = seccomp.compile_policy()
    assert in_child(bpf, lambda: raw(X32 | NR_GETPID)) == ("signal", signal.SIGSYS)
    # control: without a filter the call comes back (ENOSYS on kernels without x32)
    status, ret = in_child(None, lambda: raw(X32 | NR_GETPID))
    assert status == "ok" and ret != -errno.EPERM


def test_the_bpf_checks_the_x32_bit_before_any_rule() -> None:
    """libseccomp's x86_64 section must send every nr with the x32 bit to the bad-arch action."""
    # seccomp="none" + deny: a filter of deny rules alone must carry the x32 guard too
    for bpf in (seccomp.compile_policy(), seccomp.compile_policy(allow=("@system-service",)),
                seccomp.compile_policy(seccomp="none", deny=("ptrace",))):
        insns = [struct.unpack_from("<HBBI", bpf, i) for i in range(0, len(bpf), 8)]
        assert any(c == 0x35 and k == X32 for c, _, _, k in insns)  # jge #0x40000000
        for nr in (0, NR_GETPID, NR_GETPPID, NR_PTRACE, 512, 547, 0x3FFFFFFE):
            assert bpf_run(bpf, X32 | nr) == RET_KILL_PROCESS, nr
        assert bpf_run(bpf, NR_GETPID, arch=scmp.ARCH_X86) == RET_KILL_PROCESS
        assert bpf_run(bpf, NR_GETPID) == RET_ALLOW


def test_a_profile_listing_only_the_native_arch_kills_other_abis(tmp_path: Path,
                                                                 int80: str) -> None:
    path = profile(tmp_path, {"defaultAction": "SCMP_ACT_ALLOW",
                              "architectures": ["SCMP_ARCH_X86_64"]})
    bpf = seccomp.compile_policy(profile=path)
    assert exec_child(bpf, [int80, str(I386_GETPID)]) == ("signal", signal.SIGSYS)
    assert in_child(bpf, lambda: raw(X32 | NR_GETPID)) == ("signal", signal.SIGSYS)
    assert in_child(bpf, lambda: raw(NR_GETPPID)) == ("ok", os.getpid())


@needs_root  # the controls use privileged calls
def test_docker_profile_applies_its_rules_to_the_abis_it_lists(int80: str) -> None:
    bpf = seccomp.compile_policy(profile=DOCKER)
    assert exec_child(bpf, [int80, str(I386_GETPID)]) == ("exit", 0)
    assert exec_child(bpf, [int80, str(I386_UNSHARE), str(CLONE_NEWUSER)]) == \
        ("exit", errno.EPERM)
    assert exec_child(None, [int80, str(I386_UNSHARE), str(CLONE_NEWUSER)]) == ("exit", 0)
    # x32: getpid is allowed by the profile (the kernel then says ENOSYS: no x32 support),
    # reboot falls to the profile's default EPERM before reaching the kernel
    assert in_child(bpf, lambda: raw(X32 | NR_GETPID))[0] == "ok"
    assert in_child(bpf, lambda: raw(X32 | NR_REBOOT)) == ("ok", -errno.EPERM)


# ---- actions ----------------------------------------------------------------------------------


def test_errno_action_returns_the_given_errno(tmp_path: Path) -> None:
    bpf = seccomp.compile_policy(profile=one_rule(tmp_path, "SCMP_ACT_ERRNO", errnoRet=77))
    assert in_child(bpf, lambda: raw(NR_GETPPID)) == ("ok", -77)


@pytest.mark.parametrize("action", ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD",
                                    "SCMP_ACT_KILL"])
def test_kill_actions_end_the_child_with_sigsys(tmp_path: Path, action: str) -> None:
    bpf = seccomp.compile_policy(profile=one_rule(tmp_path, action))
    assert in_child(bpf, lambda: raw(NR_GETPPID), trap=True) == ("signal", signal.SIGSYS)


def test_trap_action_delivers_a_catchable_sigsys(tmp_path: Path) -> None:
    bpf = seccomp.compile_policy(profile=one_rule(tmp_path, "SCMP_ACT_TRAP"))
    assert in_child(bpf, lambda: raw(NR_GETPPID), trap=True) == ("trapped", None)
    assert in_child(bpf, lambda: raw(NR_GETPPID)) == ("signal", signal.SIGSYS)


def test_log_and_allow_actions_let_the_call_run(tmp_path: Path) -> None:
    for action in ("SCMP_ACT_LOG", "SCMP_ACT_ALLOW"):
        bpf = seccomp.compile_policy(profile=one_rule(tmp_path, action))
        assert in_child(bpf, lambda: raw(NR_GETPPID)) == ("ok", os.getpid())


def test_trace_action_without_a_tracer_fails_with_enosys(tmp_path: Path) -> None:
    bpf = seccomp.compile_policy(profile=one_rule(tmp_path, "SCMP_ACT_TRACE", errnoRet=5))
    assert in_child(bpf, lambda: raw(NR_GETPPID)) == ("ok", -errno.ENOSYS)


def test_profile_argument_conditions(tmp_path: Path) -> None:
    path = one_rule(tmp_path, "SCMP_ACT_ERRNO", ["personality"], errnoRet=33,
                    args=[{"index": 0, "value": 0xFF, "valueTwo": 0x08,
                           "op": "SCMP_CMP_MASKED_EQ"}])
    bpf = seccomp.compile_policy(profile=path)
    assert in_child(bpf, lambda: raw(NR_PERSONALITY, 0x108)) == ("ok", -33)
    assert in_child(bpf, lambda: raw(NR_PERSONALITY, 0xFFFFFFFF))[1] >= 0


def test_log_mode_turns_denials_into_log() -> None:
    bpf = seccomp.compile_policy(log=True)
    assert in_child(bpf, lambda: raw(NR_UNSHARE, 0)) == ("ok", 0)
    assert bpf_run(bpf, NR_PTRACE) == 0x7FFC0000
    assert bpf_run(bpf, NR_GETPID, arch=scmp.ARCH_X86) == RET_KILL_PROCESS  # ABIs still killed
    policy = seccomp.resolve_policy(log=True)
    assert {r.action for r in policy.rules} == {seccomp.LOG}


# ---- groups, allow-lists and deny-lists -------------------------------------------------------


def test_every_group_resolves_and_its_absent_names_are_documented() -> None:
    doc = (ROOT / "docs" / "policy.md").read_text()
    for group in seccomp.GROUPS:
        names = seccomp.group_members(group)
        present = [n for n in names if scmp.resolve_name(n) >= 0 or n in scmp.NEWER_NATIVE]
        assert present, f"{group} has no syscall on x86_64"
        for n in names:
            assert seccomp.is_syscall(n), f"{group}: {n} is no syscall libseccomp knows"
            if n not in present:
                assert re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", doc), \
                    f"{group}: {n} is skipped on x86_64 but docs/policy.md does not say so"
        assert f"`{group}`" in doc, f"{group} is not in docs/policy.md"
        text = seccomp.show(group)
        assert present[0] in text


def test_deny_list_adds_eperm_rules_on_top_of_the_base() -> None:
    bpf = seccomp.compile_policy(deny=("@debug,@mount", "getppid"))
    assert in_child(bpf, lambda: raw(NR_GETPPID)) == ("ok", -errno.EPERM)
    assert in_child(bpf, lambda: raw(NR_UNSHARE, 0)) == ("ok", -errno.EPERM)  # base still there
    bpf = seccomp.compile_policy(seccomp="none", deny=("getppid",))  # off: the deny list alone
    assert in_child(bpf, lambda: raw(NR_GETPPID)) == ("ok", -errno.EPERM)
    assert in_child(bpf, lambda: raw(NR_UNSHARE, 0)) == ("ok", 0)  # no base


def test_allow_list_denies_everything_else() -> None:
    bpf = seccomp.compile_policy(allow=("@default,@basic-io",))
    assert in_child(bpf, lambda: raw(NR_GETPPID)) == ("ok", os.getpid())
    assert in_child(bpf, lambda: raw(99, 0)) == ("ok", -errno.EPERM)  # sysinfo
    assert in_child(bpf, lambda: raw(NR_CLONE3, 0, 0)) == ("ok", -errno.ENOSYS)


def test_allow_list_keeps_the_default_guards_unless_named_directly() -> None:
    bpf = seccomp.compile_policy(allow=("@system-service",))
    assert in_child(bpf, lambda: raw(NR_UNSHARE, 0)) == ("ok", -errno.EPERM)
    assert in_child(bpf, lambda: raw(NR_CLONE3, 0, 0)) == ("ok", -errno.ENOSYS)
    assert in_child(bpf, lambda: raw(NR_PERSONALITY, 0x0040000)) == ("ok", -errno.EPERM)
    r, w = os.pipe()
    try:
        assert in_child(bpf, lambda: raw(NR_IOCTL, r, 0xFFFFFFFF_00005412, 0)) == \
            ("ok", -errno.EPERM)
        assert in_child(bpf, lambda: raw(NR_IOCTL, r, 0x5413, 0)) == ("ok", -errno.ENOTTY)
    finally:
        os.close(r)
        os.close(w)
    for cmd in (0, 0x5411, 0x5413, 0x541B, 0x541D, 0x80045430, 0xFFFFFFFF_80045430):
        assert bpf_run(bpf, NR_IOCTL, args=(0, cmd)) == RET_ALLOW, hex(cmd)
    named = seccomp.compile_policy(allow=("@system-service,unshare",))
    assert in_child(named, lambda: raw(NR_UNSHARE, 0)) == ("ok", 0)
    # off: the allow list on no base, so unshare is not caught by the default policy's guard
    unguarded = seccomp.compile_policy(seccomp="none", allow=("@system-service",))
    assert in_child(unguarded, lambda: raw(NR_UNSHARE, 0)) == ("ok", 0)


@pytest.mark.parametrize("options", [{}, {"allow": ("@system-service",)}, {"profile": DOCKER},
                                     {"deny": ("@debug,@mount",)}, {"log": True}])
def test_shell_and_python_run_under_the_policy(options: dict[str, Any]) -> None:
    bpf = seccomp.compile_policy(**options)
    assert exec_child(bpf, ["/bin/sh", "-c", "true"]) == ("exit", 0)
    assert exec_child(bpf, [sys.executable, "-c", "import os, threading, subprocess; "
                            "subprocess.run(['true'], check=True)"]) == ("exit", 0)
    assert exec_child(bpf, ["/bin/sh", "-c", "exit 3"]) == ("exit", 3)


# ---- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("data, needle", [
    ({"defaultAction": "SCMP_ACT_FOO"}, "SCMP_ACT_FOO"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "bogus": 1}, "bogus"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "extra": 1}]}, "extra"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{"names": ["getpidd"], "action": "SCMP_ACT_ERRNO"}]}, "getpidd"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_BLOCK"}]}, "SCMP_ACT_BLOCK"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_NOTIFY"}]}, "SCMP_ACT_NOTIFY"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"],
      "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_LIKE"}]}]},
     "SCMP_CMP_LIKE"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"],
      "action": "SCMP_ACT_ERRNO", "args": [{"index": 7, "value": 1, "op": "SCMP_CMP_EQ"}]}]},
     "7"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}, "SCMP_ARCH_Z80"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"],
      "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "new"}}]}, "new"),
    ({"syscalls": []}, "defaultAction"),
    ("{not json", "not valid JSON"),
    ("[]", "JSON object"),
])
def test_bad_profiles_raise_spec_errors_naming_the_value(tmp_path: Path, data: Any,
                                                         needle: str) -> None:
    path = profile(tmp_path, data)
    for call in (lambda: seccomp.compile_policy(profile=path), lambda: seccomp.check(path),
                 lambda: seccomp.show(path)):
        with pytest.raises(SpecError) as e:
            call()
        assert needle in str(e.value) and path in str(e.value), str(e.value)


def test_missing_profile_is_a_spec_error(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.json")
    with pytest.raises(SpecError, match=re.escape(path) + ".*no such file"):
        seccomp.compile_policy(profile=path)
    with pytest.raises(SpecError, match="absent.json"):
        seccomp.check(path)


@pytest.mark.parametrize("kwargs, needle", [
    ({"deny": ("ptrace,getpidd",)}, "--seccomp-deny getpidd: unknown syscall"),
    ({"allow": ("@nonsense",)}, "--seccomp-allow @nonsense: unknown group"),
    ({"seccomp": "strict"}, "--seccomp strict"),
    ({"profile": DOCKER, "allow": ("read",)}, "--seccomp-allow"),
    ({"deny": ("execve",)}, "--seccomp-deny execve"),
])
def test_bad_options_raise_spec_errors(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(SpecError) as e:
        seccomp.compile_policy(**kwargs)
    assert needle in str(e.value)


# ---- the rest of the interface ----------------------------------------------------------------


def test_docker_default_loads_and_checks() -> None:
    policy = seccomp.check(DOCKER)
    assert policy.default == seccomp.Action("errno", errno.EPERM)
    assert policy.arches == ("x86_64", "x86", "x32")
    names = {n for r in policy.rules for n in r.names}
    assert {"read", "clone", "personality", "socket"} <= names
    assert "bpf" not in names  # only with CAP_SYS_ADMIN / CAP_BPF, which the jail lacks
    assert "riscv_hwprobe" in policy.skipped


def test_none_compiles_to_nothing() -> None:  # the `none` option itself
    assert seccomp.compile_policy(seccomp="none") is None
    assert seccomp.compile_policy(seccomp="none", log=True) is None
    assert "no seccomp filter" in seccomp.show("none")


def test_cache_returns_the_same_bytes_object(tmp_path: Path) -> None:
    first = seccomp.compile_policy(deny=("getppid",))
    t = time.perf_counter()
    again = seccomp.compile_policy(deny=("getppid",))
    assert time.perf_counter() - t < 0.001
    assert again is first
    path = one_rule(tmp_path, "SCMP_ACT_ERRNO")
    a = seccomp.compile_policy(profile=path)
    assert seccomp.compile_policy(profile=path) is a
    Path(path).write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5}]}))
    os.utime(path, ns=(1, 1))
    b = seccomp.compile_policy(profile=path)
    assert b is not a and b != a


def test_show_and_syscall_name() -> None:
    text = seccomp.show("default")
    for needle in ("default action: allow", "mount", "personality", "clone3", "kill-process"):
        assert needle in text
    assert "ptrace" in seccomp.show("@debug")
    assert "SCMP" not in seccomp.show(DOCKER)
    with pytest.raises(SpecError, match="@nope"):
        seccomp.show("@nope")
    with pytest.raises(SpecError, match="nonexistent"):
        seccomp.show("nonexistent")
    assert seccomp.syscall_name(NR_GETPID) == "getpid"
    assert seccomp.syscall_name(NR_PTRACE) == "ptrace"
    assert seccomp.syscall_name(NR_MSEAL) == "mseal"
    assert seccomp.syscall_name(X32 | NR_GETPID) == "x32:getpid"
    assert seccomp.syscall_name(99999) is None
