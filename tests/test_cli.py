"""Issue 13 items 3 and 9, the command line: one JSON document on stdout with `--json -`, a
result for every run that did not start, an unwritable --json FILE refused first; --version,
mistyped commands, `server --help`, options an unprivileged caller cannot use, messages that
name the option as typed, relative host paths. Each CLI check runs through the CLI server and
in-process (ISOL8R_CLI_SERVER=0): the two must behave the same.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT, cli, needs_root

pytestmark = needs_root
MODES = [pytest.param({}, id="served"), pytest.param({"ISOL8R_CLI_SERVER": "0"}, id="in-process")]


# ---- a clean result channel ---------------------------------------------------------------------

@pytest.mark.parametrize("env", MODES)
def test_json_stdout_is_one_document_with_the_output_in_it(env: dict[str, str]) -> None:
    p = cli("run", "--json", "-", "--", "/bin/sh", "-c", "echo hi; echo oops >&2; exit 3",
            env_extra=env)
    assert p.returncode == 3, p.stderr
    d = json.loads(p.stdout)  # before: "hi\n{...": not JSON
    assert (d["stdout"], d["stderr"], d["exit_code"], d["verdict"]) == ("hi\n", "oops\n", 3,
                                                                       "nonzero-exit")
    assert p.stderr == ""


@pytest.mark.parametrize("env", MODES)
def test_json_stdout_output_is_capped_by_output_limit(env: dict[str, str]) -> None:
    p = cli("run", "--json", "-", "--output-limit", "1K", "--", "/bin/sh", "-c",
            "head -c 100000 /dev/zero | tr '\\0' x", env_extra=env)
    d = json.loads(p.stdout)
    assert d["stdout_truncated"] and len(d["stdout"]) <= 1024 and d["verdict"] == "output-limit", d


SETUP_FAILS = [
    pytest.param(["--", "/nonexistent"], 127, "execve", "ENOENT", id="not-found"),
    pytest.param(["--", "/etc/hostname"], 126, "execve", "EACCES", id="not-executable"),
    pytest.param(["--cwd", "/nonexistent", "--", "/bin/true"], 125, "chdir /nonexistent", "ENOENT",
                 id="setup-step"),
    pytest.param(["--tmpfs", "scratch", "--", "/bin/true"], 125, "options", None, id="bad-input"),
]


@pytest.mark.parametrize("env", MODES)
@pytest.mark.parametrize("args, status, step, errno", SETUP_FAILS)
def test_a_run_that_did_not_start_still_writes_its_result(args: list[str], status: int, step: str,
                                                          errno: str | None, env: dict[str, str],
                                                          tmp_path: Path) -> None:
    for target in ("-", str(tmp_path / "r.json")):
        p = cli("run", "--json", target, *args, env_extra=env)
        assert p.returncode == status, p.stderr
        d = json.loads(p.stdout if target == "-" else Path(target).read_text())
        assert (d["verdict"], d["status"], d["step"], d["errno"]) == ("setup-error", status,
                                                                      step, errno), d
        assert d["error"] and d["error"] in p.stderr


@pytest.mark.parametrize("env", MODES)
def test_an_unwritable_json_file_is_refused_before_the_program_runs(env: dict[str, str],
                                                                    tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for target in (tmp_path, tmp_path / "missing" / "r.json"):
        p = cli("run", "--json", str(target), "--", "/bin/sh", "-c", f"echo > {marker}; exit 7",
                env_extra=env)
        assert p.returncode == 125 and not marker.exists(), p  # before: it ran, then 125
        assert p.stderr.startswith(f"isol8r: --json {target}: ") and p.stderr.count("\n") == 1


# ---- the command line ---------------------------------------------------------------------------

def test_version() -> None:
    with open(ROOT / "pyproject.toml", "rb") as f:
        want = tomllib.load(f)["project"]["version"]
    p = cli("--version")
    assert (p.returncode, p.stdout) == (0, f"isol8r {want}\n"), p


@pytest.mark.parametrize("env", MODES)
@pytest.mark.parametrize("word, hint", [("runn", "did you mean 'run'?"),
                                        ("mkrot", "did you mean 'mkroot'?"),
                                        ("frob", "commands: run, mkroot"),
                                        ("true", "isol8r run -- true")])
def test_a_mistyped_command_is_an_error_not_a_jailed_program(word: str, hint: str,
                                                             env: dict[str, str]) -> None:
    # before: `isol8r true` ran /bin/true in a jail (0), `isol8r runn` looked for a program (127)
    p = cli(word, "x", env_extra=env)
    assert p.returncode == 125 and p.stdout == "", p
    assert p.stderr.count("\n") == 1 and f"unknown command '{word}'" in p.stderr, p.stderr
    assert hint in p.stderr, p.stderr


@pytest.mark.parametrize("env", MODES)
@pytest.mark.parametrize("args", [["--", "/bin/echo", "x"], ["--share-net", "/bin/echo", "x"],
                                  ["/bin/echo", "x"], ["run", "/bin/echo", "x"]])
def test_the_short_forms_of_run_still_run(args: list[str], env: dict[str, str]) -> None:
    p = cli(*args, env_extra=env)
    assert (p.returncode, p.stdout) == (0, "x\n"), p


def test_server_help() -> None:
    p = cli("server", "--help")
    assert p.returncode == 0 and p.stdout.startswith("usage: isol8r server status|stop"), p


@pytest.mark.parametrize("env", MODES)
@pytest.mark.parametrize("args, line", [
    (["--overlay"], "isol8r: --overlay: needs --rootfs\n"),  # before: "--overlay True: ..."
    (["--tmpfs", "scratch"], "isol8r: --tmpfs scratch: must be an absolute path\n"),  # "tmpfs"
])
def test_messages_name_the_option_as_typed(args: list[str], line: str,
                                           env: dict[str, str]) -> None:
    p = cli("run", *args, "--", "/bin/true", env_extra=env)
    assert (p.returncode, p.stderr) == (125, line)


@pytest.mark.parametrize("env", MODES)
def test_relative_host_paths_resolve_against_the_callers_directory(env: dict[str, str],
                                                                   open_dir: Path) -> None:
    (open_dir / "x").mkdir()
    (open_dir / "x" / "f").write_text("here\n")
    (open_dir / "x").chmod(0o755)
    p = cli("run", "--ro-bind", "./x:/x", "--", "/bin/cat", "/x/f", cwd=open_dir, env_extra=env)
    assert (p.returncode, p.stdout) == (0, "here\n"), p  # before: "must be an absolute path"
    p = cli("run", "--dry-run", "--ro-bind", "x", "--", "/bin/true", cwd=open_dir, env_extra=env)
    mount = json.loads(p.stdout)["mounts"][0]
    assert mount["src"] == mount["dst"] == str(open_dir / "x"), mount


UNPRIVILEGED = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.skipif(not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"),
                    reason="needs setpriv and a system python3 to run as nobody")
@pytest.mark.parametrize("args, named", [(["--id-base", "5000000"], "--id-base 5000000"),
                                         (["--unsafe-map-host-root"], "--unsafe-map-host-root")])
def test_root_only_options_are_refused_for_an_unprivileged_caller(args: list[str], named: str,
                                                                  open_dir: Path) -> None:
    """Run as nobody (setpriv): the system python3, the sources readable by all. Before, the
    option was dropped and the jail ran with the caller's id mapped."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")}
    run = [*UNPRIVILEGED, "/usr/bin/python3", "-m", "isol8r", "run"]
    p = subprocess.run([*run, *args, "--", "/usr/bin/id", "-u"], capture_output=True, text=True,
                       env=env, cwd=open_dir, timeout=30)
    assert p.returncode == 125 and p.stdout == "", p
    assert p.stderr.startswith(f"isol8r: {named}: needs isol8r to run as root"), p.stderr
    p = subprocess.run([*run, "--", "/usr/bin/id", "-u"], capture_output=True, text=True,
                       env=env, cwd=open_dir, timeout=30)
    assert (p.returncode, p.stdout) == (0, "65534\n"), p  # the twin: without them it runs
    option = named.split()[0].lstrip("-").replace("-", "_")
    value = "5000000" if len(args) > 1 else "True"
    code = (f"import isol8r\ntry: isol8r.run(['/bin/true'], {option}={value})\n"
            "except isol8r.SpecError as e: print(e)")
    p = subprocess.run([*UNPRIVILEGED, "/usr/bin/python3", "-c", code], capture_output=True,
                       text=True, env=env, cwd=open_dir, timeout=30)
    assert p.stdout.startswith(f"{named}: needs isol8r to run as root"), p  # the library too


def test_make_link_puts_isol8r_on_path(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    p = subprocess.run(["make", "-s", "link", f"PREFIX={tmp_path}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    p = subprocess.run(["isol8r", "--version"], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, PATH=f"{tmp_path}/bin:/usr/bin:/bin"))
    assert p.returncode == 0 and p.stdout.startswith("isol8r "), p


def test_dry_run_writes_no_json_file(tmp_path: Path) -> None:
    p = cli("run", "--dry-run", "--json", str(tmp_path / "r.json"), "--", "/bin/true")
    assert p.returncode == 0 and json.loads(p.stdout)["argv"] == ["/bin/true"]
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("env", MODES)
@pytest.mark.parametrize("typed, line", [
    ("--mem", "isol8r: unrecognized arguments: --mem; did you mean --memory?\n"),
    ("--memroy=64M", "isol8r: unrecognized arguments: --memroy=64M; did you mean --memory?\n"),
    ("--frobnicate", "isol8r: unrecognized arguments: --frobnicate\n"),
])
def test_options_are_not_abbreviated_and_a_close_one_is_suggested(typed: str, line: str,
                                                                 env: dict[str, str]) -> None:
    # before: `--mem 64M` was read as --memory, and messages named --memory
    p = cli("run", typed, "--", "/bin/true", env_extra=env)
    assert (p.returncode, p.stdout, p.stderr) == (125, "", line)
