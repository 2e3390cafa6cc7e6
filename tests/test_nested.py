"""isol8r where other sandboxes fail: inside containers, inside other jails (issue 19).

Each environment is simulated with the real kernel: an outer isol8r jail stands in for a
container (Docker's default seccomp profile, or none; its /proc has masked submounts as
Docker's has), and the inner `isol8r run` is the code under test, run by the Debian python of
the default root with this checkout's src bound read-only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import needs_root

ROOT = Path(__file__).resolve().parent.parent
DOCKER_PROFILE = "/work/shared/profiles/docker-default.json"
if not os.path.exists(DOCKER_PROFILE):
    DOCKER_PROFILE = str(ROOT.parent.parent / "shared" / "profiles" / "docker-default.json")
PYTHON = "/usr/bin/python3"  # Debian's, in the default root (the venv's is not)

pytestmark = [needs_root,
              pytest.mark.skipif(not os.path.exists(PYTHON), reason=f"{PYTHON} is missing")]


def outer_run(outer: list[str], inner: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`isol8r run OUTER -- python3 -m isol8r INNER` from the host: the outer jail is the
    container, the inner command is what a user would type inside it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), ISOL8R_CLI_SERVER="0")
    argv = [sys.executable, "-m", "isol8r", "run", "--ro-bind", f"{ROOT / 'src'}:/opt/isol8r",
            "--env", "PYTHONPATH=/opt/isol8r", "--env", "ISOL8R_CLI_SERVER=0", *outer, "--",
            PYTHON, "-m", "isol8r", *inner]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)


def inner_result(p: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The inner run's Result (`--json -` on its stdout)."""
    assert p.stdout.strip(), f"no Result: rc {p.returncode}, stderr {p.stderr!r}"
    try:
        return json.loads(p.stdout)
    except ValueError:
        raise AssertionError(f"not a Result: {p.stdout!r} (stderr {p.stderr!r})") from None


DOCKER = ["--user", "1000", "--seccomp-profile", DOCKER_PROFILE]
NO_SECCOMP = ["--user", "1000", "--seccomp", "none"]


def test_docker_profile_runs() -> None:
    """Docker's profile answers clone3 with ENOSYS (so that programs fall back to clone) and
    refuses namespace flags to a container without CAP_SYS_ADMIN: it used to end there with
    `clone3: ENOSYS`."""
    p = outer_run(DOCKER, ["run", "--json", "-", "--", "/bin/echo", "hi"])
    assert "ENOSYS" not in p.stderr, p.stderr
    res = inner_result(p)
    assert p.returncode == 0, (res, p.stderr)
    assert res["stdout"] == "hi\n"


def test_masked_proc_runs() -> None:
    """Without seccomp a new user namespace can be made, but the outer /proc has masked
    submounts, so the kernel refuses a fresh proc: it used to end at `mount /proc: EPERM`."""
    p = outer_run(NO_SECCOMP, ["run", "--json", "-", "--", "/bin/echo", "hi"])
    res = inner_result(p)
    assert p.returncode == 0, (res, p.stderr)
    assert res["stdout"] == "hi\n"
