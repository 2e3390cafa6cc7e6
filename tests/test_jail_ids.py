"""Issue 2, id maps: no id inside is host root unless asked loudly, the program runs as
65534:65534 (or --user), holds no supplementary group of the caller and cannot call setgroups.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from conftest import cli, needs_root, py

pytestmark = needs_root

IDS_CODE = """
import json, os
def lines(path):
    with open(path) as f:
        return [[int(x) for x in line.split()] for line in f if line.strip()]
status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())
print(json.dumps({
    'uid_map': lines('/proc/self/uid_map'), 'gid_map': lines('/proc/self/gid_map'),
    'resuid': os.getresuid(), 'resgid': os.getresgid(), 'getgroups': os.getgroups(),
    'Groups': [int(g) for g in status['Groups'].split()],
}))
"""


def ids(**options: Any) -> dict[str, Any]:
    r = py(IDS_CODE, **options)
    assert r.exit_code == 0, (r, r.stderr)
    return json.loads(r.stdout)


def _maps_host(lines: list[list[int]], host_id: int) -> bool:
    return any(outside <= host_id < outside + count for _, outside, count in lines)


@pytest.mark.parametrize("user", [None, "0:0", "1000:1000"])
def test_no_id_inside_maps_to_host_root(user: str | None) -> None:
    info = ids(user=user)
    assert info["uid_map"] and info["gid_map"]
    assert not _maps_host(info["uid_map"], 0), f"uid_map maps host root: {info['uid_map']}"
    assert not _maps_host(info["gid_map"], 0), f"gid_map maps host root: {info['gid_map']}"


def test_program_runs_as_nobody_by_default() -> None:
    info = ids()
    assert info["resuid"] == [65534] * 3
    assert info["resgid"] == [65534] * 3


@pytest.mark.parametrize("user, uid, gid", [("1000:1000", 1000, 1000), ("1000", 1000, 1000),
                                            ("123:456", 123, 456), ("0", 0, 0)])
def test_user_option(user: str, uid: int, gid: int) -> None:
    info = ids(user=user)
    assert info["resuid"] == [uid] * 3
    assert info["resgid"] == [gid] * 3


def test_user_flag_on_the_cli() -> None:
    p = cli("run", "--user", "1000:2000", "--", "/bin/sh", "-c", "id -u; id -g")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["1000", "2000"]


def test_unsafe_map_host_root_maps_zero_to_zero() -> None:
    info = ids(unsafe_map_host_root=True)
    assert info["uid_map"][0][:2] == [0, 0]
    assert info["gid_map"][0][:2] == [0, 0]
    assert info["resuid"] == [65534] * 3, "the loud option must not change who the program runs as"


@pytest.mark.parametrize("user, gid", [(None, 65534), ("1000:1000", 1000), ("0:0", 0)])
def test_no_supplementary_groups(user: str | None, gid: int) -> None:
    # The caller (root) holds group 0 and maybe others; had they leaked they would show here,
    # as themselves or as the overflow gid 65534, which is why 1000:1000 is the telling case.
    info = ids(user=user)
    assert set(info["Groups"]) <= {gid}, f"supplementary groups inside: {info['Groups']}"
    assert set(info["getgroups"]) <= {gid}


SETGROUPS_CODE = """
import json, os
out = {}
for groups in ([], [0], [65534]):
    try:
        os.setgroups(groups)
        out[str(groups)] = 'allowed'
    except OSError as e:
        out[str(groups)] = e.errno
print(json.dumps(out))
"""


@pytest.mark.parametrize("user", [None, "0:0"])
def test_program_cannot_call_setgroups(user: str | None) -> None:
    r = py(SETGROUPS_CODE, user=user)
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out.values()) == {1}, f"setgroups results (1 is EPERM): {out}"


def test_program_cannot_become_another_user() -> None:
    code = ("import os\ntry:\n    os.setresuid(0, 0, 0)\n    print('became root')\n"
            "except PermissionError:\n    print('EPERM')")
    assert py(code).stdout == b"EPERM\n"


def test_id_maps_do_not_touch_the_caller() -> None:
    before = (os.getresuid(), os.getresgid(), os.getgroups())
    ids(user="1000:1000")
    assert (os.getresuid(), os.getresgid(), os.getgroups()) == before
