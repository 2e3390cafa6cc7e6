"""Unit tests: no root, no namespace, no jail; they read code and data, and run in seconds.

`make unit` (or `pytest tests/unit`) runs them alone, as any user. Two guards keep them so:

- tests/conftest.py's session fixture `host_left_as_it_was` starts the library's fork server and
  checks the host's mounts and cgroups at the end, which needs root. The fixture of the same name
  below overrides it for the tests of this directory (pytest picks the closest definition), so a
  session of unit tests alone never starts it; in a whole-suite run the top-level one still runs
  for every other test. The per-test check for leaked child processes applies here too.
- `no_namespace_made` fails a test after which this process is in a namespace other than the one
  it started in: a unit test that unshares something belongs with the jail tests.
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest

NAMESPACES = sorted(os.listdir("/proc/self/ns"))


def namespaces() -> dict[str, str]:
    out = {}
    for name in NAMESPACES:
        try:
            out[name] = os.readlink(f"/proc/self/ns/{name}")
        except OSError:  # e.g. a kernel without that kind
            pass
    return out


@pytest.fixture(scope="session", autouse=True)
def host_left_as_it_was() -> Iterator[None]:
    """Overrides tests/conftest.py's session check: unit tests touch nothing of the host's."""
    yield


@pytest.fixture(autouse=True)
def no_namespace_made() -> Iterator[None]:
    before = namespaces()
    yield
    assert namespaces() == before, "a unit test changed this process's namespaces"
