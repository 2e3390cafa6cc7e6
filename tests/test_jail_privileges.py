"""Issue 2, privileges: all five capability sets empty, no_new_privs, locked securebits, setuid
files gain nothing, and --cap keeps exactly the capabilities named.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import isol8r
from conftest import cli, needs_root, py, sh

pytestmark = needs_root

CAP_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
CAP_NET_RAW = 13
LOCKED_SECUREBITS = 0xEF  # NOROOT(+LOCKED) NO_SETUID_FIXUP(+LOCKED) KEEP_CAPS_LOCKED NO_CAP_AMBIENT_RAISE(+LOCKED)

PRIVS_CODE = """
import ctypes, json, socket
libc = ctypes.CDLL(None, use_errno=True)
status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
    raw = 'opened'
except OSError as e:
    raw = e.errno
print(json.dumps({
    'caps': {k: int(status[k], 16) for k in %r},
    'nnp': int(status['NoNewPrivs']),
    'securebits': libc.prctl(27, 0, 0, 0, 0),  # PR_GET_SECUREBITS
    'raw_socket': raw,
}))
""" % (CAP_SETS,)


def privs(**options: Any) -> dict[str, Any]:
    r = py(PRIVS_CODE, **options)
    assert r.exit_code == 0, (r, r.stderr)
    return json.loads(r.stdout)


@pytest.mark.parametrize("user", [None, "0:0", "1000:1000"])
def test_no_capabilities_no_new_privs_locked_securebits(user: str | None) -> None:
    info = privs(user=user)
    assert info["caps"] == dict.fromkeys(CAP_SETS, 0), info["caps"]
    assert info["nnp"] == 1
    assert info["securebits"] == LOCKED_SECUREBITS, hex(info["securebits"])
    assert info["raw_socket"] == 1, "a raw socket opened without CAP_NET_RAW"  # EPERM


@pytest.mark.parametrize("option", ["caps", "cap"])
def test_cap_keeps_exactly_that_one(option: str) -> None:
    info = privs(**{option: ["CAP_NET_RAW"]})
    want = 1 << CAP_NET_RAW
    assert info["caps"] == dict.fromkeys(CAP_SETS, want), {k: hex(v) for k, v in info["caps"].items()}
    assert info["raw_socket"] == "opened"
    assert info["nnp"] == 1
    assert info["securebits"] == LOCKED_SECUREBITS


def test_cap_on_the_cli_survives_in_a_shell_child() -> None:
    # ambient: the capability survives the execve of a program started by the jailed shell
    p = cli("run", "--cap", "net_raw", "--", "/bin/sh", "-c",
            "grep -E '^Cap(Eff|Amb)' /proc/self/status")
    assert p.returncode == 0, p.stderr
    assert [line.split()[1] for line in p.stdout.splitlines()] == ["0000000000002000"] * 2


@pytest.mark.parametrize("option", ["caps", "cap"])
def test_unknown_capability_is_a_spec_error(option: str) -> None:
    with pytest.raises(isol8r.SpecError, match="CAP_BOGUS"):
        isol8r.run(["/bin/true"], **{option: ["CAP_BOGUS"]})


def test_unknown_capability_on_the_cli() -> None:
    p = cli("run", "--cap", "CAP_BOGUS", "--", "/bin/true")
    assert p.returncode == 125
    assert len(p.stderr.splitlines()) == 1 and "CAP_BOGUS" in p.stderr


# ---- setuid files -------------------------------------------------------------------------------


# Owned by host root (unmapped in the jail), and by the host id that is root inside the jail:
# the second is the one only nosuid and no_new_privs stop.
@pytest.mark.parametrize("owner", [0, 1_600_000_000])
@pytest.mark.parametrize("how", ["bind", "ro_bind"])
def test_setuid_binary_gains_nothing(open_dir: Path, owner: int, how: str) -> None:
    suid = open_dir / "suid"
    suid.mkdir()
    target = suid / "id"
    shutil.copy2("/usr/bin/id", target)
    os.chown(target, owner, owner)
    os.chmod(target, 0o4755 | 0o2000)
    assert os.stat(target).st_mode & 0o6000 == 0o6000
    r = sh("/suid/id -u; /suid/id -g; /suid/id -G", **{how: [f"{suid}:/suid"]})
    assert r.exit_code == 0, r.stderr
    assert r.stdout.split() == [b"65534", b"65534", b"65534"]
