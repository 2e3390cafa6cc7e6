"""The probe's guard: the attacker program refuses to run anywhere but inside a jail.

Every case here runs the harmless `exists` subcommand: if the guard ever let a wrong run through,
the probe would print "info probe exists" (and do nothing else).
"""

from __future__ import annotations

import ctypes
import subprocess
from typing import Any

import pytest

import isol8r
from conftest import needs_root
from secprobe import ID_BASE, LONE_UID, Tools, tools  # noqa: F401  (fixture)

pytestmark = needs_root


def set_no_new_privs() -> None:
    ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)


def on_host(tools: Tools, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tools.probe), *args], capture_output=True, text=True, **kw)


def refused(out: str, why: str) -> bool:
    return f"guard refused: {why}" in out and "info probe" not in out


def test_on_the_host_as_root(tools: Tools) -> None:
    p = on_host(tools, "exists", "/")
    assert p.returncode == 3 and refused(p.stdout, "no_new_privs is not set"), p


def test_on_the_host_as_root_with_no_new_privs(tools: Tools) -> None:
    p = on_host(tools, "exists", "/", preexec_fn=set_no_new_privs)
    assert p.returncode == 3 and refused(p.stdout, "real host root"), p
    p = on_host(tools, "--twin=no-userns,jail-root,identity-map", "exists", "/",
                preexec_fn=set_no_new_privs)
    assert p.returncode == 3 and refused(p.stdout, "real host root"), p


def test_on_the_host_as_an_ordinary_user(tools: Tools) -> None:
    p = on_host(tools, "exists", "/", user=LONE_UID, group=LONE_UID, extra_groups=[],
                preexec_fn=set_no_new_privs)
    assert p.returncode == 3 and refused(p.stdout, "not in a user namespace"), p


@pytest.mark.parametrize("options, why", [
    ({"user": "0"}, "uid 0 in the jail"),
    ({"unsafe_map_host_root": True}, "identity uid_map"),
    ({"unsafe_map_host_root": True, "user": "0", "twin": "identity-map"}, "uid 0 in the jail"),
    ({"no_userns": True, "user": str(LONE_UID)}, "not in a user namespace"),
    ({"no_userns": True, "user": "0"}, "real host root"),
    ({"no_userns": True, "user": "0", "twin": "no-userns,jail-root"}, "real host root"),
    ({"no_userns": True, "user": "0", "twin": "host-root"}, "real host root for a subcommand"),
    ({"twin": "everything"}, "unknown --twin override"),
], ids=["jail-root", "identity-map", "identity-map-root", "no-userns", "host-root",
        "host-root-wrong-override", "host-root-wrong-subcommand", "unknown-override"])
def test_in_a_jail_without_the_matching_override(tools: Tools, options: dict, why: str) -> None:
    options = dict(options)
    twin = options.pop("twin", None)
    argv = ["/probe", *([f"--twin={twin}"] if twin else []), "exists", "/"]
    if not options.get("unsafe_map_host_root") and not options.get("no_userns"):
        options["id_base"] = ID_BASE
    r = isol8r.run(argv, capture_output=True, ro_bind=[f"{tools.probe}:/probe"], **options)
    assert r.exit_code == 3 and refused(r.stdout.decode(), why), r


def test_host_root_twin_needs_exactly_its_one_capability(tools: Tools) -> None:
    """sethostname is a host-root subcommand with CAP_SYS_ADMIN; given a second capability, or
    another one, the guard refuses before anything runs (the host's name is never touched)."""
    for caps in (["CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE"], ["CAP_DAC_OVERRIDE"], []):
        # off: a host-root twin runs without the filter; the probe's guard is what is tested
        r = isol8r.run(["/probe", "--twin=host-root", "sethostname", "guard-failed"],
                       capture_output=True, ro_bind=[f"{tools.probe}:/probe"], no_userns=True,
                       user="0", caps=caps, share_uts=True, seccomp="none")
        assert r.exit_code == 3 and refused(r.stdout.decode(), "host root with other"), (caps, r)
