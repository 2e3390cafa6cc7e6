"""The set-id wall of writable binds (issue 13): what the jail writes through a writable bind is
owned, on the host, by the directory's owner (host root here), so a set-id bit or a file
capability there would be a host-root set-id file or a host-effective capability.

The probe tries every way to make one (probe.c `setid`); the verdict is the host's: the files
that landed in the directory are stat'ed and their xattrs read. Twins: --seccomp none (the mode
rules are off: host-root setuid files appear) and a Spec that keeps CAP_SETFCAP with the bind
(Spec validation bypassed: a file capability effective on the host appears).
"""

from __future__ import annotations

import os
import platform
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

import isol8r
from conftest import needs_root
from secprobe import ID_BASE, Tools, note_policy, parse, probe, tools  # noqa: F401  (fixture)

pytestmark = needs_root

SETID = stat.S_ISUID | stat.S_ISGID


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory of host root, untouched: the issue's `./work`, holding a setuid-root file
    (`existing`, 04755) that the probe writes to."""
    d = Path(tempfile.mkdtemp(prefix="isol8r-setid-"))
    d.chmod(0o755)
    (d / "existing").write_text("")
    os.chmod(d / "existing", 0o4755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def planted(d: Path) -> dict[str, list[str]]:
    """What the host sees in d: per entry, its owner and set-id bits and file capability."""
    out = {}
    for p in d.iterdir():
        st = p.lstat()
        found = [f"uid={st.st_uid}"]
        if st.st_mode & stat.S_ISUID:
            found.append("setuid")
        if st.st_mode & stat.S_ISGID and not stat.S_ISDIR(st.st_mode):
            found.append("setgid")
        try:
            os.getxattr(p, "security.capability", follow_symlinks=False)
            found.append("capability")
        except OSError:
            pass
        out[p.name] = found
    return out


def exposed(d: Path) -> dict[str, list[str]]:
    return {n: f for n, f in planted(d).items() if len(f) > 1}


@pytest.mark.parametrize("user", ["65534", "0"])
def test_no_setid_file_or_capability_reaches_the_host(tools: Tools, workdir: Path,
                                                      user: str) -> None:
    r = probe(tools, "setid", "/work", bind=[f"{workdir}:/work"], user=user,
              twin="jail-root" if user == "0" else None)
    assert r.ok("create_plain") and r.ok("create_capfile"), r  # the bind is writable
    calls = ["fchmod_suid", "fchmod_sgid", "chmod_suid", "fchmodat_sgid", "fchmodat2_suid",
             "openat_suid", "tmpfile_suid", "mknod_suid"]
    if platform.machine() == "x86_64":  # aarch64 has no creat or open
        calls += ["creat_suid", "open_suid"]
    for call in calls:
        assert r.errno(call) == "EPERM", (call, r)
    assert r.errno("openat2_suid") == "ENOSYS", r
    assert r.errno("fsetxattr_caps") == "EPERM", r  # no CAP_SETFCAP in the jail
    assert r.ok("write_existing"), r  # the jail may write it: the kernel drops the bit then
    assert exposed(workdir) == {}, planted(workdir)  # `existing` lost its setuid bit
    assert planted(workdir)["plain"] == ["uid=0"]  # the owner's, as the bind promises


def test_twin_without_seccomp_plants_host_root_setuid_files(tools: Tools, workdir: Path) -> None:
    """Twin: --seccomp none. The kernel lets the owner set the bits: host-root setuid files."""
    # off: the twin, the filter is the set-id wall under test
    r = probe(tools, "setid", "/work", bind=[f"{workdir}:/work"], seccomp="none")
    assert r.ok("chmod_suid") and r.ok("openat_suid"), r
    got = exposed(workdir)
    assert got.get("plain") == ["uid=0", "setuid"], got  # the last chmod (fchmodat2) left 04755
    assert got.get("openat") == ["uid=0", "setuid", "setgid"], got
    assert got.get("node") == ["uid=0", "setuid"], got


def test_setfcap_is_refused_with_a_writable_bind_or_root(workdir: Path) -> None:
    for opts in ({"bind": [f"{workdir}:/work"]}, {"rootfs": str(workdir), "rw_root": True}):
        with pytest.raises(isol8r.SpecError, match="CAP_SETFCAP"):
            isol8r.Spec.from_options(["/probe"], {**opts, "user": "0", "cap": ["setfcap"]})
    isol8r.Spec.from_options(["/probe"], {"ro_bind": [f"{workdir}:/work"], "cap": ["setfcap"]})


def test_twin_with_setfcap_plants_a_host_capability(tools: Tools, workdir: Path) -> None:
    """Twin: jail root keeping CAP_SETFCAP with the bind, which Spec validation refuses; the
    check is bypassed here to show what it prevents: a host-root file with cap_net_raw=ep.
    (Even CAP_FSETID would not keep `existing`'s bit on a write: only host root's does.)"""
    options = {"bind": [f"{workdir}:/work"], "ro_bind": [f"{tools.probe}:/probe"], "user": "0",
               "id_base": ID_BASE, "time_limit": 30}
    note_policy(options)
    spec = isol8r.Spec.from_options(["/probe", "--twin=jail-root", "setid", "/work"], options)
    object.__setattr__(spec, "caps", ("CAP_SETFCAP", "CAP_FSETID"))  # protection off
    r = parse(isol8r.run(spec, capture_output=True))
    assert r.ok("fsetxattr_caps") and r.ok("write_existing"), r
    assert exposed(workdir) == {"capfile": ["uid=0", "capability"]}, planted(workdir)


SETID_IN_TMP = """
import errno, os
for mode in (0o4755, 0o2755, 0o755):
    try:
        os.close(os.open(f"/tmp/f{mode:o}", os.O_CREAT | os.O_WRONLY, 0o644))
        os.chmod(f"/tmp/f{mode:o}", mode)
        print("ok")
    except OSError as e:
        print(errno.errorcode[e.errno])
"""


def test_an_allow_list_through_a_group_keeps_the_wall() -> None:
    """--seccomp-allow @system-service (which holds chmod) keeps the guard; naming chmod directly
    is the twin: it allows the call whole."""
    note_policy({"seccomp_allow": ["@system-service"]})
    r = isol8r.run(["python3", "-c", SETID_IN_TMP], capture_output=True,
                   seccomp_allow=["@system-service"])
    assert r.stdout.split() == [b"EPERM", b"EPERM", b"ok"], r
    note_policy({"seccomp_allow": ["@system-service,chmod"]})
    r = isol8r.run(["python3", "-c", SETID_IN_TMP], capture_output=True,
                   seccomp_allow=["@system-service,chmod"])
    assert r.stdout.split() == [b"ok", b"ok", b"ok"], r


@pytest.mark.parametrize("policy,gap", [
    ({}, False),
    ({"seccomp_deny": ["bpf"]}, False),
    ({"seccomp_allow": ["@system-service"]}, False),
    ({"seccomp": "none"}, True),
    ({"seccomp_allow": ["@system-service,chmod"]}, True),
    ({"seccomp_log": True}, True),
])
def test_a_policy_without_the_wall_is_reported(workdir: Path, policy: dict, gap: bool) -> None:
    """A wall that is off is said, never silently skipped: the Result's notes name the calls."""
    note_policy(policy)
    r = isol8r.run(["/bin/true"], bind=[f"{workdir}:/work"], **policy)
    said = [n for n in r.notes if "set-id" in n]
    assert bool(said) == gap, r.notes
    if gap:
        assert "chmod" in said[0], said
