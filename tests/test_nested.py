"""isol8r where other sandboxes fail: inside containers, inside other jails (issue 19).

Each environment is simulated with the real kernel: an outer isol8r jail stands in for a
container (Docker's default seccomp profile, or none; its /proc has masked submounts as
Docker's has), and the inner `isol8r run` is the code under test, run by the Debian python of
the default root with this checkout's src bound read-only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import DOCKER_PROFILE, needs_root, outside_tmp

ROOT = Path(__file__).resolve().parent.parent
PYTHON = "/usr/bin/python3"  # Debian's, in the default root (the venv's is not)

pytestmark = [needs_root,
              pytest.mark.skipif(not os.path.exists(PYTHON), reason=f"{PYTHON} is missing")]


def outer_run(outer: list[str], inner: list[str],
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
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


# ---- each environment: what ran, which walls held, the probes that apply ----------------------

# The program of every environment below: tries what a jailed program should not manage, and
# prints each attempt's outcome ("ok" or the errno's name) as JSON.
PROBE = r"""
import ctypes, errno, json, os, socket, sys
outside, ws = sys.argv[1], sys.argv[2]
out = {}
def t(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
def write(path):
    with open(path, "w") as f:
        f.write("x")
t("write_outside", lambda: write(outside + "/probe"))
t("write_ws", lambda: write(ws + "/probe"))
t("write_etc", lambda: write("/etc/probe"))
t("tcp_bind", lambda: socket.socket().bind(("127.0.0.1", 0)))
t("signal_parent", lambda: os.kill(os.getppid(), 0))
t("read_shadow", lambda: open("/etc/shadow").read())
t("sysctl", lambda: write("/proc/sys/kernel/hostname"))
libc = ctypes.CDLL(None, use_errno=True)
def unshare():
    if libc.unshare(0x10000000) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
t("unshare_user", unshare)
out["pid"] = os.getpid()
out["uid"] = os.getuid()
print(json.dumps(out))
"""


def probe_argv(outside: str, ws: str) -> list[str]:
    return ["--", "/usr/bin/python3", "-c", PROBE, outside, ws]


def probes_of(res: dict[str, Any]) -> dict[str, Any]:
    assert res["exit_code"] == 0, res
    return json.loads(res["stdout"])


def test_in_docker_profile_container() -> None:
    """Docker's default profile, no CAP_SYS_ADMIN: no namespace can be made (clone with
    namespace flags is refused), so the run is bare: Landlock, seccomp, no_new_privs, rlimits,
    a new session; and says so."""
    p = outer_run([*DOCKER, "--tmpfs", "/data", "--tmpfs", "/ws"],
                  ["run", "--json", "-", "--bind", "/ws", *probe_argv("/data", "/ws")])
    res = inner_result(p)
    walls, missing = res["walls"], res["missing_walls"]
    assert {"seccomp", "landlock", "nnp", "caps", "rlimits", "session"} <= set(walls), res
    assert "EPERM" in missing["userns"] and "seccomp" in missing["userns"]
    assert {"pidns", "mountns", "netns", "uid"} <= set(missing)
    probes = probes_of(res)
    assert probes["write_outside"] == "EACCES"  # Landlock: read-only but the workspace, /tmp
    assert probes["write_ws"] == "ok"
    assert probes["tcp_bind"] == "EACCES"  # Landlock ABI 4+: no TCP bind or connect
    assert probes["signal_parent"] == "EPERM"  # Landlock ABI 6+: signals scoped to the jail
    assert probes["unshare_user"] in ("EPERM", "ENOSYS")
    assert probes["uid"] == 1000  # the container's user: no id to switch to is reported above


# Docker's default capabilities, for a container's root
DOCKER_CAPS = [a for c in ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
                           "SETPCAP", "NET_BIND_SERVICE", "NET_RAW", "SYS_CHROOT", "MKNOD",
                           "AUDIT_WRITE", "SETFCAP") for a in ("--cap", "CAP_" + c)]
DOCKER_ROOT = ["--no-userns", "--user", "0", *DOCKER_CAPS, "--seccomp-profile", DOCKER_PROFILE]


def test_as_root_in_docker_container() -> None:
    """A container's root (the host's user namespace, Docker's capabilities, no CAP_SYS_ADMIN,
    Docker's profile): bare, but the program still runs as --user with no capability."""
    outer = [*DOCKER_ROOT, "--tmpfs", "/data", "--tmpfs", "/ws", "--chmod", "777:/data",
             "--chmod", "777:/ws"]
    p = outer_run(outer, ["run", "--json", "-", "--bind", "/ws", *probe_argv("/data", "/ws")])
    res = inner_result(p)
    assert {"uid", "caps", "nnp", "seccomp", "landlock"} <= set(res["walls"]), res
    assert "EPERM" in res["missing_walls"]["userns"]
    probes = probes_of(res)
    assert probes["uid"] == 65534
    assert probes["write_outside"] == "EACCES" and probes["write_ws"] == "ok"
    assert probes["tcp_bind"] == "EACCES" and probes["signal_parent"] == "EPERM"


def test_in_docker_profile_require_refuses() -> None:
    """--require userns there: 125 and one line, rather than a run with fewer walls."""
    p = outer_run(DOCKER, ["run", "--require", "userns,landlock", "--", "/bin/true"])
    assert p.returncode == 125, p
    assert "--require" in p.stderr and "userns" in p.stderr and "Traceback" not in p.stderr


def test_in_jail_without_seccomp_masked_proc() -> None:
    """No seccomp filter: every namespace can be made, but not a fresh /proc (the outer one is
    masked); the outer /proc is bound read-only and the Result says so."""
    p = outer_run(NO_SECCOMP, ["run", "--json", "-", *probe_argv("/nonexistent", "/tmp")])
    res = inner_result(p)
    walls, missing = res["walls"], res["missing_walls"]
    assert {"userns", "pidns", "mountns", "netns", "ipcns", "utsns", "uid", "seccomp"} <= set(walls)
    assert "masked" in missing["proc"] and "proc" not in walls
    probes = probes_of(res)
    assert probes["pid"] == 2  # its own PID namespace (init is 1)
    assert probes["uid"] == 65534
    assert probes["write_etc"] == "EROFS"
    assert probes["sysctl"] in ("EROFS", "EACCES")
    assert probes["read_shadow"] == "ENOENT"
    assert probes["write_ws"] == "ok"


def test_clone3_refused_namespaces_allowed() -> None:
    """A filter that refuses clone3 alone (as podman's and older Docker profiles do, with
    EPERM or ENOSYS): the jail is cloned with clone(2) into every namespace, with a pidfd
    (CLONE_PIDFD), which the time limit's kill goes through."""
    p = outer_run(["--user", "1000", "--seccomp", "none", "--seccomp-deny", "clone3"],
                  ["run", "--json", "-", "--time-limit", "0.5", "--kill-grace", "0", "--",
                   "/bin/sleep", "30"])
    res = inner_result(p)
    assert res["verdict"] == "time-limit", res
    assert {"userns", "pidns", "mountns", "netns"} <= set(res["walls"])


def test_in_jail_without_seccomp_proc_fresh_fails() -> None:
    """--proc fresh (or --require proc) there: all walls or fail, 125 with the step named."""
    p = outer_run(NO_SECCOMP, ["run", "--proc", "fresh", "--", "/bin/true"])
    assert p.returncode == 125 and "/proc" in p.stderr and "EPERM" in p.stderr, p
    p = outer_run(NO_SECCOMP, ["run", "--require", "proc", "--", "/bin/true"])
    assert p.returncode == 125 and "proc" in p.stderr and "masked" in p.stderr, p


@pytest.fixture
def dirs() -> Any:
    """Two directories the jail's ids can write by their mode (0777), outside /tmp (which a
    bare jail may write): one to stay read-only, one to be the workspace."""
    made = [outside_tmp(".nested-") for _ in range(2)]
    for d in made:
        os.chmod(d, 0o777)
    yield made
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def host_python(prefix: list[str], inner: list[str]) -> subprocess.CompletedProcess[str]:
    """python3 -m isol8r INNER from this checkout, after PREFIX (unshare, setpriv)."""
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "PYTHONPATH": str(ROOT / "src"),
           "ISOL8R_CLI_SERVER": "0", "HOME": "/tmp"}
    return subprocess.run([*prefix, PYTHON, "-m", "isol8r", *inner], capture_output=True,
                          text=True, env=env, cwd="/", timeout=60)


NO_USERNS = ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--mount-proc",
             "sh", "-c", 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"', "sh"]
NO_CAPS = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]


@pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux's unshare is missing")
def test_in_userns_with_max_user_namespaces_zero_as_its_root() -> None:
    """user.max_user_namespaces=0, set in a user namespace of the test's own (the host's is not
    touched), run by that namespace's root: no nested user namespace, but its CAP_SYS_ADMIN
    makes every other one, so the jail has them (and a fresh /proc); the program keeps the
    caller's uid (the only one mapped), with no capability at all."""
    p = host_python(NO_USERNS, ["run", "--json", "-", *probe_argv("/nonexistent", "/tmp")])
    res = inner_result(p)
    assert "max_user_namespaces is 0" in res["missing_walls"]["userns"], res
    assert {"pidns", "mountns", "netns", "ipcns", "utsns", "proc", "caps", "nnp",
            "seccomp"} <= set(res["walls"])
    assert "uid" in res["missing_walls"]
    probes = probes_of(res)
    assert probes["pid"] == 2 and probes["uid"] == 0
    assert probes["write_etc"] == "EROFS" and probes["read_shadow"] == "ENOENT"
    assert probes["sysctl"] in ("EROFS", "EACCES")


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("setpriv") is None,
                    reason="util-linux's unshare and setpriv are needed")
def test_in_userns_with_max_user_namespaces_zero_without_caps(dirs: list[str]) -> None:
    """The same namespace, run without capabilities: no namespace at all can be made, so the
    run is bare (Landlock, seccomp, no_new_privs, rlimits, session), and names the sysctl."""
    outside, ws = dirs
    p = host_python([*NO_USERNS, *NO_CAPS],
                    ["run", "--json", "-", "--bind", ws, *probe_argv(outside, ws)])
    res = inner_result(p)
    assert "max_user_namespaces is 0" in res["missing_walls"]["userns"], res
    assert {"landlock", "seccomp", "nnp", "caps", "session"} <= set(res["walls"])
    assert {"pidns", "mountns", "netns"} <= set(res["missing_walls"])
    probes = probes_of(res)
    assert probes["write_outside"] == "EACCES"
    assert probes["write_ws"] == "ok"
    assert probes["tcp_bind"] == "EACCES"
    assert probes["signal_parent"] == "EPERM"
    assert not os.path.exists(os.path.join(outside, "probe"))


SETPRIV = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="util-linux's setpriv is missing")
def test_as_unprivileged_user_on_host(dirs: list[str]) -> None:
    """uid 65534 on the host: an unprivileged user namespace, every namespace and a fresh
    /proc; only the caller's own id is mapped."""
    outside, ws = dirs
    p = host_python(SETPRIV, ["run", "--json", "-", *probe_argv(outside, "/tmp")])
    res = inner_result(p)
    assert {"userns", "pidns", "mountns", "netns", "proc", "uid", "seccomp"} <= set(res["walls"])
    assert "userns" not in res["missing_walls"] and "proc" not in res["missing_walls"]
    probes = probes_of(res)
    assert probes["pid"] == 2 and probes["write_outside"] == "ENOENT"  # not in its root
    assert probes["write_etc"] == "EROFS" and probes["read_shadow"] == "ENOENT"


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="util-linux's setpriv is missing")
def test_as_unprivileged_user_on_host_bare(dirs: list[str]) -> None:
    """--bare as uid 65534: the walls of a process that cannot make a namespace, on the host."""
    outside, ws = dirs
    p = host_python(SETPRIV, ["run", "--bare", "--json", "-", "--bind", ws,
                              *probe_argv(outside, ws)])
    res = inner_result(p)
    assert res["missing_walls"]["userns"] == "--bare"
    probes = probes_of(res)
    assert probes["write_outside"] == "EACCES" and probes["write_ws"] == "ok"
    assert probes["tcp_bind"] == "EACCES" and probes["signal_parent"] == "EPERM"
    assert probes["uid"] == 65534


def test_in_podman() -> None:
    """podman run of a root built by isol8r mkroot: only where Debian's podman is installed."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed here (the environment is documented in "
                    "docs/environments.md from its default profile)")
    pytest.skip("podman is installed, but this test does not drive it yet")


# ---- rootless: subordinate ids ----------------------------------------------------------------

SUBIDS = """
set -e
mount --bind "$1" /etc/subuid
mount --bind "$1" /etc/subgid
shift
exec "$@"
"""


@pytest.mark.skipif(not all(shutil.which(t) for t in ("newuidmap", "newgidmap", "unshare",
                                                      "setpriv")),
                    reason="needs newuidmap/newgidmap (Debian's uidmap), unshare and setpriv")
def test_rootless_with_subordinate_ids(tmp_path: Path, dirs: list[str]) -> None:
    """An unprivileged caller granted subordinate ids (here in a mount namespace of the test's
    own, whose /etc/subuid and /etc/subgid are a file of the test: the host's are untouched)
    gets a jail of 65536 ids: the jail user is the caller (what it writes in a --bind is the
    caller's), the others, root included, are subordinate ids, none of them the caller."""
    ws = dirs[1]
    grant = tmp_path / "subids"
    grant.write_text("nobody:3000000000:65536\n")
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", SUBIDS, "sh",
              str(grant), *SETPRIV]
    script = "cat /proc/self/uid_map; id -u; echo x > \"$1\"/f"
    p = host_python(prefix, ["run", "--json", "-", "--user", "1000", "--bind", ws, "--",
                             "/bin/sh", "-c", script, "sh", ws])
    res = inner_result(p)
    assert res["exit_code"] == 0, (res, p.stderr)
    rows = [line.split() for line in res["stdout"].splitlines()[:3]]
    assert rows == [["1000", "65534", "1"], ["0", "3000000000", "1000"],
                    ["1001", "3000001000", "64535"]]
    assert res["stdout"].splitlines()[3] == "1000"
    assert os.stat(os.path.join(ws, "f")).st_uid == 65534  # the caller's
    assert "subordinate" in res["walls"]["userns"]
