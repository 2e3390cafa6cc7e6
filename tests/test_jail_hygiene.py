"""Issue 2, hygiene: no descriptor of the caller but 0, 1, 2 (and --pass-fd) reaches the program,
the environment is fresh (--env, --keep-env), the program leads its own session, --cwd.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import cli, jail, needs_root, py, sh

pytestmark = needs_root

STRAY_FD = 77
FDS_CODE = """
import json, os
fds = sorted(int(fd) for fd in os.listdir('/proc/self/fd'))
data = None
if FD in fds:
    data = os.pread(FD, 64, 0).decode()
print(json.dumps({'fds': fds, 'data': data}))
""".replace("FD", str(STRAY_FD))


@pytest.fixture
def stray_fd(tmp_path: Path) -> Iterator[int]:
    """An inheritable descriptor (no O_CLOEXEC) at STRAY_FD, as a careless caller leaves one."""
    f = tmp_path / "leak"
    f.write_text("leaked contents")
    fd = os.open(f, os.O_RDONLY)
    try:
        os.dup2(fd, STRAY_FD, inheritable=True)
        assert os.get_inheritable(STRAY_FD)
        yield STRAY_FD
    finally:
        os.close(fd)
        os.close(STRAY_FD)


def test_only_stdio_reaches_the_program(stray_fd: int) -> None:
    r = py(FDS_CODE)
    assert r.exit_code == 0, r.stderr
    fds = json.loads(r.stdout)["fds"]
    assert stray_fd not in fds
    # 0, 1, 2 and the descriptor os.listdir itself holds open
    assert fds[:3] == [0, 1, 2] and len(fds) <= 4, fds


def test_only_stdio_reaches_the_program_cli(stray_fd: int) -> None:
    p = cli("run", "--", "/usr/bin/python3", "-c", FDS_CODE, pass_fds=(stray_fd,))
    assert p.returncode == 0, p.stderr
    fds = json.loads(p.stdout)["fds"]
    assert stray_fd not in fds and fds[:3] == [0, 1, 2] and len(fds) <= 4, fds


def test_pass_fds_keeps_it(stray_fd: int) -> None:
    r = py(FDS_CODE, pass_fds=[stray_fd])
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert stray_fd in info["fds"]
    assert info["data"] == "leaked contents"


def test_pass_fd_on_the_cli_keeps_it(stray_fd: int) -> None:
    p = cli("run", "--pass-fd", str(stray_fd), "--", "/usr/bin/python3", "-c",
            FDS_CODE, pass_fds=(stray_fd,))
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert stray_fd in info["fds"] and info["data"] == "leaked contents"


# ---- environment --------------------------------------------------------------------------------

ALLOWED_NAMES = {"PATH", "HOME", "TERM", "LANG", "LC_ALL", "USER", "LOGNAME", "SHELL", "PWD", "SHLVL"}


def env_inside(**options: Any) -> dict[str, str]:
    """The environment execve gave the program (env(1): python would add LC_CTYPE itself)."""
    r = jail("/usr/bin/env", "-0", **options)
    assert r.exit_code == 0, r.stderr
    return dict(item.split("=", 1) for item in r.stdout.decode().split("\0") if item)


def test_environment_is_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOL8R_SECRET", "hunter2")
    env = env_inside()
    assert "ISOL8R_SECRET" not in env
    assert "hunter2" not in json.dumps(env)
    assert set(env) <= ALLOWED_NAMES, sorted(set(env) - ALLOWED_NAMES)
    assert "PATH" in env


def test_environment_is_cleared_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOL8R_SECRET", "hunter2")
    p = cli("run", "--", "/usr/bin/env")
    assert p.returncode == 0, p.stderr
    names = {line.split("=", 1)[0] for line in p.stdout.splitlines()}
    assert "ISOL8R_SECRET" not in names and names <= ALLOWED_NAMES, names


def test_env_sets_variables() -> None:
    env = env_inside(env=["A=B", "EMPTY=", "WITH_EQ=x=y"])
    assert (env["A"], env["EMPTY"], env["WITH_EQ"]) == ("B", "", "x=y")


def test_keep_env_passes_only_the_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOL8R_KEEP_ME", "kept value")
    monkeypatch.setenv("ISOL8R_SECRET", "hunter2")
    env = env_inside(keep_env=["ISOL8R_KEEP_ME", "ISOL8R_NOT_SET_ANYWHERE"])
    assert env["ISOL8R_KEEP_ME"] == "kept value"
    assert "ISOL8R_SECRET" not in env and "ISOL8R_NOT_SET_ANYWHERE" not in env


def test_env_and_keep_env_on_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOL8R_KEEP_ME", "kept")
    p = cli("run", "--env", "A=B", "--keep-env", "ISOL8R_KEEP_ME", "--",
            "/bin/sh", "-c", 'echo "$A $ISOL8R_KEEP_ME"')
    assert p.stdout == "B kept\n", p.stderr


# ---- session, cwd -------------------------------------------------------------------------------


SESSION_CODE = ("import json, os; print(json.dumps({'sid': os.getsid(0), 'pgid': os.getpgid(0), "
                "'pid': os.getpid()}))")


@pytest.mark.parametrize("opts", [{}, {"no_init": True}])
def test_program_is_a_session_leader(opts: dict[str, Any]) -> None:
    r = py(SESSION_CODE, **opts)
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["sid"] == info["pid"] == info["pgid"], info


def test_program_has_no_controlling_terminal() -> None:
    code = "import os\ntry:\n    os.open('/dev/tty', os.O_RDWR)\n    print('tty')\nexcept OSError as e:\n    print(e.errno)"
    assert py(code).stdout == b"6\n"  # ENXIO


def test_cwd_default_and_option() -> None:
    assert sh("pwd").stdout == b"/\n"
    assert sh("pwd", cwd="/tmp").stdout == b"/tmp\n"
    p = cli("run", "--cwd", "/usr/bin", "--", "/bin/sh", "-c", "pwd")
    assert p.stdout == "/usr/bin\n", p.stderr


def test_fresh_signal_mask() -> None:
    code = ("import json, signal; print(json.dumps(sorted(int(s) for s in "
            "signal.pthread_sigmask(signal.SIG_BLOCK, []))))")
    assert py(code).stdout == b"[]\n", "the program starts with signals blocked"
