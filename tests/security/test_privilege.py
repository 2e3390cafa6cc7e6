"""Regaining privilege: a new user namespace, setuid files, file capabilities, unshare and setns,
prctl tricks (PR_SET_MM, dumpable, securebits, ambient capabilities, no_new_privs) and
personality(READ_IMPLIES_EXEC)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import needs_root, py
from secprobe import LONE_UID, Tools, World, probe, tools, world  # noqa: F401  (fixtures)

pytestmark = needs_root

CAP_DAC_OVERRIDE, CAP_SYS_ADMIN, CAP_SYS_RESOURCE = 1, 21, 24


def ids(text: str) -> dict[str, str]:
    """The witness's `ok ids uid=R/E/S gid=R/E/S capeff=HEX capprm=HEX nnp=N` line."""
    line = next(l for l in text.splitlines() if l.startswith("ok ids "))
    return dict(kv.split("=") for kv in line.split()[2:])


def host_run(path: Path, uid: int = LONE_UID) -> dict[str, str]:
    """Run the witness on the host as an ordinary user, outside any jail (a twin's control)."""
    p = subprocess.run([str(path)], user=uid, group=uid, extra_groups=[], capture_output=True,
                       text=True, cwd="/")
    assert p.returncode == 0, p.stderr
    return ids(p.stdout)


def bounding_has(cap: int) -> bool:
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith("CapBnd:"))
    return bool(int(line.split()[1], 16) >> cap & 1)


# ---- a new user namespace, unshare, setns -------------------------------------------------------

def test_no_new_namespace_of_any_kind_and_no_setns(tools: Tools) -> None:
    """unshare/clone(CLONE_NEWUSER) would give back a full capability set (in a new namespace);
    every namespace flag, clone3 and setns are refused."""
    r = probe(tools, "userns")
    for ns in ("user", "mount", "net", "pid", "ipc", "uts", "cgroup", "time"):
        assert r.errno(f"unshare_{ns}") == "EPERM", (ns, r)
    assert r.errno("clone_newuser") == "EPERM" and r.errno("clone3_newuser") == "ENOSYS", r
    assert r.errno("setns_net") == "EPERM" and r.denied("setns_init_mnt"), r
    assert r.info("capeff") == "0", r


def test_userns_twin_without_seccomp_gets_every_capability_back(tools: Tools) -> None:
    """Twin: --seccomp none. Now unshare(CLONE_NEWUSER), clone and clone3 succeed and the new
    namespace holds all capabilities (over nothing of the host's, but a large kernel surface)."""
    # off: the twin, only the filter refuses a nested user namespace
    r = probe(tools, "userns", seccomp="none")
    assert r.ok("unshare_user") and r.ok("clone_newuser") and r.ok("clone3_newuser"), r
    assert int(r.info("userns_capeff"), 16) != 0 and r.ok("userns_then_mountns"), r


# ---- setuid and file capabilities ---------------------------------------------------------------

@pytest.fixture
def suid_witness(tools: Tools, world: World) -> Path:
    """A copy of the witness owned by host root with the setuid and setgid bits."""
    path = world.dir / "suid-witness"
    shutil.copy(tools.witness, path)
    os.chown(path, 0, 0)
    path.chmod(0o6755)
    return path


def test_a_setuid_root_file_grants_nothing(suid_witness: Path) -> None:
    r = py("import os; os.execv('/w', ['/w'])", ro_bind=[f"{suid_witness}:/w"])
    got = ids(r.stdout.decode())
    assert got["uid"] == "65534/65534/65534" and got["capeff"] == "0" and got["nnp"] == "1", got
    # also when the file's owner IS the jail's root (--unsafe-map-host-root maps host 0 to 0):
    # the bind is nosuid and no_new_privs is set, so the bit still does nothing
    r = py("import os; os.execv('/w', ['/w'])", ro_bind=[f"{suid_witness}:/w"],
           unsafe_map_host_root=True)
    assert ids(r.stdout.decode())["uid"] == "65534/65534/65534", r


def test_setuid_twin_the_same_file_on_the_host_makes_root(suid_witness: Path) -> None:
    """Twin: no option turns nosuid or no_new_privs off (binds are always nosuid, no_new_privs is
    always set), so the twin runs the very same file on the host as an ordinary user: euid 0."""
    got = host_run(suid_witness)
    assert got["uid"] == f"{LONE_UID}/0/0", got


def test_the_hosts_own_setuid_programs_are_inert_inside() -> None:
    """/usr (with su, passwd, mount...) is bound nosuid."""
    r = py("import os; print(bool(os.statvfs('/usr/bin').f_flag & os.ST_NOSUID))")
    assert r.stdout.strip() == b"True", r


def vfs_cap_v2(*caps: int) -> bytes:
    """security.capability, revision 2, effective: the given caps permitted and effective."""
    low = sum(1 << c for c in caps if c < 32)
    high = sum(1 << (c - 32) for c in caps if c >= 32)
    return struct.pack("<5I", 0x02000000 | 1, low, 0, high, 0)


@pytest.fixture
def fcap_witness(tools: Tools, world: World) -> Path:
    """A copy of the witness carrying file capabilities CAP_DAC_OVERRIDE and CAP_SYS_ADMIN."""
    path = world.dir / "fcap-witness"
    shutil.copy(tools.witness, path)
    path.chmod(0o755)
    if shutil.which("setcap"):
        subprocess.run(["setcap", "cap_dac_override,cap_sys_admin+ep", str(path)], check=True)
    else:
        os.setxattr(path, "security.capability", vfs_cap_v2(CAP_DAC_OVERRIDE, CAP_SYS_ADMIN))
    return path


def test_file_capabilities_grant_nothing(fcap_witness: Path) -> None:
    r = py("import os; os.execv('/w', ['/w'])", ro_bind=[f"{fcap_witness}:/w"])
    got = ids(r.stdout.decode())
    assert got["capeff"] == "0" and got["capprm"] == "0", got
    r = py("import os; os.execv('/w', ['/w'])", ro_bind=[f"{fcap_witness}:/w"],
           unsafe_map_host_root=True, user="0")
    assert ids(r.stdout.decode())["capeff"] == "0", r


def test_file_capabilities_twin_on_the_host_they_are_granted(fcap_witness: Path) -> None:
    """Twin: as for setuid, no option turns nosuid or no_new_privs off; on the host an ordinary
    user running the same file gets both capabilities."""
    got = host_run(fcap_witness)
    want = (1 << CAP_DAC_OVERRIDE) | (1 << CAP_SYS_ADMIN)
    assert int(got["capeff"], 16) == want, got


# ---- prctl ---------------------------------------------------------------------------------------

def test_prctl_tricks_are_refused(tools: Tools) -> None:
    """PR_SET_MM needs CAP_SYS_RESOURCE of the initial namespace; dumpable takes only 0 and 1;
    the securebits are locked; no ambient capability can be raised; no_new_privs cannot be
    cleared; the jail's init is not dumpable, so its memory and environment stay closed."""
    r = probe(tools, "prctl")
    assert r.errno("pr_set_mm") == "EPERM", r
    assert r.errno("pr_set_dumpable_2") == "EINVAL", r
    assert r.errno("pr_set_securebits_0") == "EPERM", r
    assert r.errno("pr_cap_ambient_raise") == "EPERM", r
    assert r.errno("pr_set_no_new_privs_0") == "EINVAL" and r.info("no_new_privs") == "1", r
    assert r.errno("init_environ") == "EACCES" and r.errno("init_mem") == "EACCES", r
    # jail root with every capability of its namespace gets no further with these
    r = probe(tools, "prctl", user="0", caps=["CAP_SYS_RESOURCE", "CAP_SETPCAP", "CAP_SYS_ADMIN"],
              twin="jail-root")
    assert r.errno("pr_set_mm") == "EPERM" and r.errno("pr_set_securebits_0") == "EPERM", r


@pytest.mark.skipif(not bounding_has(CAP_SYS_RESOURCE),
                    reason="this machine's bounding set has no CAP_SYS_RESOURCE to grant the twin")
def test_prctl_twin_host_root_with_cap_sys_resource_sets_mm(tools: Tools) -> None:
    """Twin: host root with CAP_SYS_RESOURCE sets its own arg_start again (harmless).
    The securebits lock and no_new_privs have no option to turn them off."""
    # off: the twin, host root past the filter
    r = probe(tools, "prctl", seccomp="none", no_userns=True, user="0",
              caps=["CAP_SYS_RESOURCE"], twin="host-root")
    assert r.ok("pr_set_mm"), r


# ---- personality ---------------------------------------------------------------------------------

def test_personality_read_implies_exec_and_no_aslr_are_denied(tools: Tools) -> None:
    r = probe(tools, "personality")
    assert r.errno("personality_read_implies_exec") == "EPERM", r
    assert r.errno("personality_addr_no_randomize") == "EPERM", r
    assert not r.leaks, r


def test_personality_twin_without_seccomp_maps_readable_memory_executable(tools: Tools) -> None:
    # off: the twin, only the filter refuses these personality flags
    r = probe(tools, "personality", seccomp="none")
    assert r.ok("personality_read_implies_exec"), r
    assert r.get("read_only_mapping_is_executable") == ("leak", "1"), r
    assert r.ok("personality_addr_no_randomize"), r
