"""Issue 2, resource limits: --rlimit for every resource the kernel has, the short forms, the
defaults, and the errors for a bad name or soft > hard; read back from inside the jail.
"""

from __future__ import annotations

import json
import resource
from typing import Any

import pytest

import isol8r
from conftest import cli, needs_root, py
from isol8r.spec import RLIMITS

pytestmark = needs_root

INF = resource.RLIM_INFINITY
M, G = 1 << 20, 1 << 30
# For a resource whose hard limit is unlimited on the host: a finite pair python starts under.
FINITE = {"AS": (16 * G, 32 * G), "CORE": (1 * M, 2 * M), "CPU": (1000, 2000), "DATA": (16 * G, 32 * G),
          "FSIZE": (1 * G, 2 * G), "LOCKS": (1000, 2000), "MEMLOCK": (4 * M, 8 * M),
          "MSGQUEUE": (100_000, 200_000), "NICE": (0, 0), "NOFILE": (100, 200), "NPROC": (500, 600),
          "RSS": (1 * G, 2 * G), "RTPRIO": (0, 0), "RTTIME": (1_000_000, 2_000_000),
          "SIGPENDING": (1000, 2000), "STACK": (8 * M, 16 * M)}


def wanted(name: str) -> tuple[int, int]:
    """A (soft, hard) the kernel accepts: below the caller's hard limit, which cannot be raised."""
    hard = resource.getrlimit(RLIMITS[name])[1]
    soft_f, hard_f = FINITE.get(name, (1000, 2000))
    if hard == INF or hard >= hard_f:
        return soft_f, hard_f
    return hard // 2, hard  # the host's own hard limit is lower than our pick: stay under it


LIMITS_CODE = """
import json, resource
print(json.dumps({name[7:]: resource.getrlimit(getattr(resource, name))
                  for name in dir(resource) if name.startswith('RLIMIT_')}))
"""


def limits_inside(**options: Any) -> dict[str, list[int]]:
    r = py(LIMITS_CODE, **options)
    assert r.exit_code == 0, (r, r.stderr)
    return json.loads(r.stdout)


def test_rlimit_nofile_seen_inside() -> None:
    assert limits_inside(rlimit=["NOFILE=100:200"])["NOFILE"] == [100, 200]


@pytest.mark.parametrize("name", sorted(RLIMITS))
def test_every_rlimit_is_set(name: str) -> None:
    soft, hard = wanted(name)
    assert limits_inside(rlimit=[f"{name}={soft}:{hard}"])[name] == [soft, hard]


def test_several_rlimits_and_names_in_any_case() -> None:
    got = limits_inside(rlimit=["nofile=64:128", "RLIMIT_FSIZE=1M:2M", "Cpu=100"])
    assert got["NOFILE"] == [64, 128]
    assert got["FSIZE"] == [1 * M, 2 * M]
    assert got["CPU"] == [100, 100], "a single value sets soft and hard"


def test_rlimit_on_the_cli() -> None:
    p = cli("run", "--rlimit", "NOFILE=100:200", "--rlimit", "FSIZE=1M", "--",
            "/bin/sh", "-c", "ulimit -Sn; ulimit -Hn; ulimit -f")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["100", "200", "2048"]  # ulimit -f counts 512-byte blocks


def test_short_forms() -> None:
    got = limits_inside(nproc=50, nofile=64)
    assert got["NPROC"] == [50, 50]
    assert got["NOFILE"] == [64, 64]
    p = cli("run", "--nofile", "64", "--nproc", "50", "--", "/bin/sh", "-c",
            "ulimit -n; ulimit -p")
    assert p.stdout.split() == ["64", "50"], p.stderr


def test_memory_is_held_by_rlimit_as_or_a_cgroup() -> None:
    r = py(LIMITS_CODE, memory="256M")
    assert r.exit_code == 0, r.stderr
    by_rlimit = json.loads(r.stdout)["AS"] == [256 * M, 256 * M]
    by_cgroup = r.limits.get("cgroup") is not None and r.limits.get("memory") == 256 * M
    assert by_rlimit or by_cgroup, f"--memory held by nothing: limits={r.limits} notes={r.notes}"


def test_memory_limit_stops_a_big_allocation() -> None:
    code = "b = b'x' * (300 << 20)\nprint('allocated', len(b))"
    r = py(code, memory="64M")
    assert b"allocated" not in r.stdout
    assert r.returncode != 0


def test_nofile_is_enforced() -> None:
    code = ("import os\nfds = []\ntry:\n    while True:\n        fds.append(os.open('/dev/null', os.O_RDONLY))\n"
            "except OSError as e:\n    print(e.errno, max(fds))")
    r = py(code, nofile=32)
    err, highest = r.stdout.split()
    assert int(err) == 24 and int(highest) == 31  # EMFILE at the 32nd descriptor


def test_defaults() -> None:
    got = limits_inside()
    assert got["CORE"] == [0, 0]
    assert got["NOFILE"] == [1024, 4096]
    assert got["NPROC"] == [1024, 1024]


def test_user_rlimit_overrides_a_default() -> None:
    assert limits_inside(rlimit=["CORE=1M:2M"])["CORE"] == [1 * M, 2 * M]


@pytest.mark.parametrize("value, named", [
    ("BOGUS=1", "BOGUS"),
    ("NOFILE=200:100", "NOFILE=200:100"),
    ("NOFILE=abc", "NOFILE=abc"),
    ("NOFILE", "NOFILE"),
])
def test_bad_rlimit_is_a_spec_error(value: str, named: str) -> None:
    with pytest.raises(isol8r.SpecError, match=named):
        isol8r.run(["/bin/true"], rlimit=[value])
    p = cli("run", "--rlimit", value, "--", "/bin/true")
    assert p.returncode == 125
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in p.stderr


def test_pooled_jails_are_born_in_their_group_with_each_callers_values() -> None:
    """The fork server keeps warm jails and tops its pool up after each run, so a caller often
    takes one still setting itself up. Each must be in its own group from birth (its cgroup
    namespace is rooted there, every line of /proc/self/cgroup reads "/"; a jail moved after the
    fact showed isol8r/jail-..., or was missed and ran unlimited) and hold this caller's values."""
    for i in range(8):
        memory = (48, 200)[i % 2] * M  # the warm group is re-used: its limit goes up and down
        code = ("import sys\nprint(open('/proc/self/cgroup').read(), flush=True)\n"
                "b = bytearray(100 << 20)\nb[::4096] = b'x' * len(b[::4096])\n"
                "print('allocated', flush=True)\nwhile True: pass")
        r = py(code, memory=memory, cpu_limit=0.5, time_limit=8)
        lines = r.stdout.decode().split("\n\n")[0].split()
        # the program itself sits in memory:/program, a child of the jail's group that counts
        # its own memory peak from its exec on (cgroups.Cgroup.program_group)
        assert lines and all(line.endswith(":/") or line.endswith(":memory:/program")
                             for line in lines), (i, lines)
        assert r.limits["memory"] == memory
        if memory < 100 * M:
            assert r.verdict == "memory-limit", (i, r.verdict, r.stdout, r.stderr)
        else:
            assert (r.verdict, b"allocated" in r.stdout) == ("cpu-limit", True), (i, r.stderr)
