"""Seccomp bypasses: the same call through another ABI (i386 `int $0x80`, the x32 bit), and the
newer form of a call that a filter only knows by its old name (clone3 for clone, openat2 for
openat).

The ABI probes are made by a 64-bit static program executing `int $0x80` itself (the kernel runs
it through the i386 table, with the i386 audit arch) and `syscall` with bit 30 set (x32).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from conftest import needs_root
from secprobe import Tools, probe, tools  # noqa: F401  (fixture)

pytestmark = needs_root

I386_GETPID, I386_UNSHARE = 20, 310
X86_64_GETPID = 39
CLONE_NEWUSER = 0x10000000


# ---- other ABIs ----------------------------------------------------------------------------------

ALLOW = ["@default", "@basic-io", "@file-system", "@process"]


@pytest.mark.parametrize("options", [{}, {"seccomp_log": True}, {"seccomp_allow": ALLOW},
                                     {"seccomp": "none", "seccomp_deny": ["ptrace"]}],
                         ids=["default", "log", "allow-list", "deny-list"])
def test_i386_abi_calls_kill_the_process(tools: Tools, options: dict) -> None:
    """Every filter isol8r builds kills a call through int $0x80, even a harmless getpid, even in
    audit (log) mode: an i386 syscall number means something else natively."""
    for nr, arg in ((I386_GETPID, 0), (I386_UNSHARE, CLONE_NEWUSER)):
        r = probe(tools, "int80", nr, arg, **options)
        assert r.result.signal == signal.SIGSYS and r.result.verdict == "seccomp", (nr, r)
        assert r.get("int80") is None, r


def test_i386_abi_twin_without_seccomp_unshares_through_int80(tools: Tools) -> None:
    """Twin: --seccomp none: unshare(CLONE_NEWUSER) through the i386 table succeeds."""
    # off: the twin, the bypass works without the filter
    r = probe(tools, "int80", I386_UNSHARE, CLONE_NEWUSER, seccomp="none")
    assert r.result.exit_code == 0 and r.ok("int80"), r


def test_x32_abi_calls_kill_the_process(tools: Tools) -> None:
    r = probe(tools, "x32", X86_64_GETPID)
    assert r.result.signal == signal.SIGSYS and r.result.verdict == "seccomp", r


def test_x32_twin_without_seccomp_reaches_the_kernel(tools: Tools) -> None:
    """Twin: --seccomp none: the kernel itself answers (ENOSYS where x32 is not built in)."""
    # off: the twin, the kernel answers without the filter
    r = probe(tools, "x32", X86_64_GETPID, seccomp="none")
    assert r.result.exit_code == 0 and r.get("x32") is not None, r


# ---- clone3 and openat2 -------------------------------------------------------------------------

def test_default_policy_closes_clone3_around_the_clone_guard(tools: Tools) -> None:
    """The default policy denies clone with namespace flags; clone3 (whose flags sit in memory
    seccomp cannot read) answers ENOSYS, so it cannot carry CLONE_NEWUSER past the guard."""
    r = probe(tools, "newer", "/etc/hostname")
    assert r.ok("clone_plain") and r.errno("clone_newuser") == "EPERM", r
    assert r.errno("clone3_newuser") == "ENOSYS" and r.errno("clone3_plain") == "ENOSYS", r


def test_clone3_twin_without_seccomp_creates_a_user_namespace(tools: Tools) -> None:
    # off: the twin, clone3 creates a user namespace without the filter
    r = probe(tools, "newer", "/etc/hostname", seccomp="none")
    assert r.ok("clone3_newuser") and r.ok("clone_newuser"), r


def test_allow_list_without_clone3_makes_it_enosys(tools: Tools) -> None:
    r = probe(tools, "newer", "/etc/hostname",
              seccomp_allow=["@default", "@basic-io", "@file-system", "@process", "@signal"])
    assert r.errno("clone_newuser") == "EPERM" and r.errno("clone3_newuser") == "ENOSYS", r


def test_deny_list_naming_clone_also_stops_clone3(tools: Tools) -> None:
    """--seccomp none --seccomp-deny clone: a program must not create processes through clone3.

    Found by this suite: only `clone` got a rule, and clone3(CLONE_NEWUSER) created a process in
    a new user namespace. seccomp.NEWER_FORMS now gives clone3 ENOSYS whenever clone is refused
    or guarded and clone3 is not named. See docs/security.md."""
    # off: the deny list alone on no base is the option under test
    r = probe(tools, "newer", "/etc/hostname", seccomp="none", seccomp_deny=["clone"])
    assert r.errno("clone_plain") == "EPERM", r
    assert r.denied("clone3_plain") and r.denied("clone3_newuser"), r


def test_deny_list_naming_openat_also_stops_openat2(tools: Tools) -> None:
    """--seccomp-deny openat: openat2 (Linux 5.6) must not open what openat may not.

    Found by this suite: openat2 was left allowed (now ENOSYS, by seccomp.NEWER_FORMS). `open`
    itself is a separate, older call any policy author knows: denying openat does not deny it."""
    r = probe(tools, "newer", "/etc/hostname", seccomp_deny=["openat"])
    assert r.errno("openat") == "EPERM", r
    assert r.denied("openat2"), r


def test_profile_guarding_clone_flags_also_guards_clone3(tools: Tools, tmp_path: Path) -> None:
    """A Docker-style profile (default allow) that refuses clone with CLONE_NEWUSER and says
    nothing of clone3 -- written before clone3 existed: clone3 must not bypass it.

    Found by this suite: clone3(CLONE_NEWUSER) got through (moby's own default profile has a
    clone3 rule; older or hand-written ones do not). Now ENOSYS, by seccomp.NEWER_FORMS."""
    path = tmp_path / "old.json"
    path.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["clone"], "action": "SCMP_ACT_ERRNO",
                      "args": [{"index": 0, "value": CLONE_NEWUSER, "valueTwo": CLONE_NEWUSER,
                                "op": "SCMP_CMP_MASKED_EQ"}]}]}))
    path.chmod(0o644)
    r = probe(tools, "newer", "/etc/hostname", seccomp_profile=str(path))
    assert r.errno("clone_newuser") == "EPERM", r
    assert r.denied("clone3_newuser"), r
