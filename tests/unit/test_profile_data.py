"""Profiles as data (issue 5, item 7): each shipped one loads into a valid Spec and says what it is
for, and merging adds lists and replaces values. Root-free; tests/test_profiles.py has the CLI's
reading of profiles, their errors and each shipped profile running in a real jail.
"""

from __future__ import annotations

import pytest

from isol8r import profiles
from isol8r.spec import Spec

SHIPPED = ["build", "ctf-service", "default", "judge", "python"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads(name: str) -> None:
    data = profiles.load(name)
    assert data
    Spec.from_options(["/bin/true"], data)
    assert profiles.describe(profiles.locate(name))  # every one says what it is for


def test_merge_lists_add_values_replace() -> None:
    base = {"hostname": "a", "tmpfs": ["/build:2G"], "seccomp-deny": ["@debug"], "env": "A=1"}
    got = profiles.merge(base, {"hostname": "b", "tmpfs": ["/cache"], "seccomp_deny": "socket",
                                "env": None, "pids": 3})
    assert got == {"hostname": "b", "tmpfs": ["/build:2G", "/cache"],
                   "seccomp-deny": ["@debug", "socket"], "env": "A=1", "pids": 3}
    assert base["tmpfs"] == ["/build:2G"]  # the profile's own data is left alone
