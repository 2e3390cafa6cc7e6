"""Issue 2, the default seccomp filter, seen from inside the jail: the process is filtered
(Seccomp: 2), the dangerous calls fail with EPERM, ordinary programs still work, and
seccomp="none" turns it off (the twin showing each check can fail).
"""

from __future__ import annotations

import errno
import json
import platform
from typing import Any

import pytest

from conftest import cli, needs_root, py, sh

pytestmark = needs_root

# (name, x86_64 number, aarch64 number, arguments): arguments chosen so that without a filter
# the call fails some other way or succeeds harmlessly, never with EPERM where avoidable.
CALLS = [
    ("ptrace", 101, 117, (16, 999999, 0, 0)),            # PTRACE_ATTACH to no such pid: ESRCH
    ("mount", 165, 40, (0, 0, 0, 0, 0)),                 # NULL target: EFAULT
    ("unshare", 272, 97, (0x10000000,)),                 # CLONE_NEWUSER: allowed unfiltered
    ("keyctl", 250, 219, (0, -3, 0)),                    # KEYCTL_GET_KEYRING_ID session
    ("bpf", 321, 280, (9999, 0, 0)),                     # unknown command: EINVAL
    ("perf_event_open", 298, 241, (0, 0, -1, -1, 0)),    # NULL attr: EFAULT
    ("userfaultfd", 323, 282, (1,)),                     # UFFD_USER_MODE_ONLY
    ("io_uring_setup", 425, 425, (0, 0)),                # NULL params: EFAULT
    ("open_by_handle_at", 304, 265, (-1, 0, 0)),         # NULL handle: EFAULT
    ("reboot", 169, 142, (0, 0, 0, 0)),
    ("kexec_load", 246, 104, (0, 0, 0, 0)),
    ("init_module", 175, 105, (0, 0, 0)),
    ("settimeofday", 164, 170, (0, 0)),
]
# Without a filter these fail with EPERM anyway (a capability check comes first in the kernel)
# or with ENOSYS on a kernel built without them: only the filtered run can tell for them.
EPERM_ANYWAY = {"reboot", "kexec_load", "init_module", "settimeofday"}
TIOCSTI = 0x5412

ARCH = platform.machine()
ARCH_COLUMN = {"x86_64": 0, "aarch64": 1}

PROBE_CODE = """
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {}
for name, nr, args in CALLS:
    ctypes.set_errno(0)
    ret = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    out[name] = ctypes.get_errno() if ret == -1 else 'ok'
c = ctypes.c_char(b'x')
ctypes.set_errno(0)
ret = libc.ioctl(0, TIOCSTI_NR, ctypes.byref(c))
out['TIOCSTI'] = ctypes.get_errno() if ret == -1 else 'ok'
status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())
out['Seccomp'] = int(status['Seccomp'])
print(json.dumps(out))
"""


def probe(**options: Any) -> dict[str, Any]:
    if ARCH not in ARCH_COLUMN:
        pytest.skip(f"no syscall numbers for {ARCH}")
    calls = [(name, (x86, arm)[ARCH_COLUMN[ARCH]], args) for name, x86, arm, args in CALLS]
    code = PROBE_CODE.replace("CALLS", repr(calls)).replace("TIOCSTI_NR", str(TIOCSTI))
    r = py(code, input=b"", **options)  # stdin a pipe: TIOCSTI gets ENOTTY unless filtered
    assert r.exit_code == 0, (r, r.stderr)
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def filtered() -> dict[str, Any]:
    return probe()


@pytest.fixture(scope="module")
def unfiltered() -> dict[str, Any]:
    return probe(seccomp="none")  # off: the twin that shows each check can fail


def test_default_filter_is_on(filtered: dict[str, Any]) -> None:
    assert filtered["Seccomp"] == 2


def test_seccomp_none_turns_it_off(unfiltered: dict[str, Any]) -> None:
    assert unfiltered["Seccomp"] == 0


@pytest.mark.parametrize("name", [c[0] for c in CALLS] + ["TIOCSTI"])
def test_dangerous_call_is_eperm(name: str, filtered: dict[str, Any]) -> None:
    assert filtered[name] == errno.EPERM, f"{name}: {filtered[name]}"


@pytest.mark.parametrize("name", [c[0] for c in CALLS if c[0] not in EPERM_ANYWAY] + ["TIOCSTI"])
def test_unfiltered_twin_is_not_eperm(name: str, unfiltered: dict[str, Any]) -> None:
    # shows that the EPERM above comes from the filter, not from the kernel's own checks
    assert unfiltered[name] != errno.EPERM, f"{name}: {unfiltered[name]}"


def test_cli_default_and_none() -> None:
    p = cli("run", "--", "/bin/grep", "^Seccomp:", "/proc/self/status")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["Seccomp:", "2"]
    # off: the CLI's `--seccomp none` option itself
    p = cli("run", "--seccomp", "none", "--", "/bin/grep", "^Seccomp:", "/proc/self/status")
    assert p.stdout.split() == ["Seccomp:", "0"]


def test_ordinary_programs_still_work_under_the_filter() -> None:
    r = sh("ls / >/dev/null && echo hi | cat && python3 -c 'import os, socket, subprocess, "
           "threading, tempfile; s = socket.socket(); s.bind((\"127.0.0.1\", 0)); "
           "t = threading.Thread(target=print, args=(\"thread\",)); t.start(); t.join(); "
           "print(subprocess.run([\"id\", \"-u\"], capture_output=True, text=True).stdout.strip()); "
           "tempfile.TemporaryFile().write(b\"x\")'")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == b"hi\nthread\n65534\n"


def test_nested_user_namespace_cannot_undo_the_lock() -> None:
    # unfiltered, unshare(CLONE_NEWUSER) would hand the program a full capability set and
    # securebits 0 in a namespace of its own; the filter must refuse it
    code = ("import ctypes, json; libc = ctypes.CDLL(None, use_errno=True); "
            "r = libc.unshare(0x10000000); "
            "print(json.dumps([r, ctypes.get_errno(), libc.prctl(27, 0, 0, 0, 0)]))")
    r = py(code)
    assert json.loads(r.stdout) == [-1, errno.EPERM, 0xEF]
