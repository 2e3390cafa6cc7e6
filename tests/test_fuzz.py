"""Fuzzed inputs: the Spec, TOML profiles, the command line and seccomp JSON profiles.

Property, for every parser: any input gives either a valid result (a Spec that also serialises,
a profile's options, exit status 0 or 125, a Policy) or an isol8r error (isol8r.errors.Isol8rError
and its subclasses) -- never another exception, never a hang (each example has a few seconds),
never a change on the host (nothing here may run a jail; the mount table is compared, and the
seccomp filter cache is pointed at a scratch directory).

The exception is the last section: the real command line, through the CLI server and in its
own process, with plausible flags and hostile values; it runs jails of /bin/sh that exit with a
drawn status, and checks that the exit status is the program's, 125, 126 or 127, never an
"internal error" or a traceback, and the same both ways.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import itertools
import json
import os
import shutil
import signal
import string
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

import isol8r
from conftest import ROOT, mounts, needs_root
from isol8r import cli, profiles, seccomp
from isol8r.seccomp import cache
from isol8r.errors import Isol8rError
from isol8r.spec import OPTIONS, Spec

# hypothesis keeps its example database and caches in ./.hypothesis by default: nothing of the
# suite may stay outside tmp directories, so it gets a scratch home removed at exit
_HOME = tempfile.mkdtemp(prefix="isol8r-hypothesis-")
atexit.register(shutil.rmtree, _HOME, True)
set_hypothesis_home_dir(_HOME)

EXAMPLES = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HANG = 5.0  # seconds one example may take


class Hang(Exception):
    pass


@contextlib.contextmanager
def no_hang(seconds: float = HANG) -> Iterator[None]:
    def alarm(_sig: int, _frame: Any) -> None:
        raise Hang(f"an example took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def outcome(fn: Callable[[], Any]) -> Any:
    """fn's result, or the Isol8rError it raised; any other exception fails the test."""
    with no_hang():
        try:
            return fn()
        except Isol8rError as e:
            assert str(e), "an isol8r error must say what is wrong"
            return e


@pytest.fixture(scope="module", autouse=True)
def host_untouched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The filter cache goes to a scratch directory, and the mount table stays as it was."""
    store = tmp_path_factory.mktemp("filter-cache")
    store.chmod(0o700)
    real = cache.cache_dir
    cache.cache_dir = lambda: str(store)  # type: ignore[assignment]
    before = mounts()
    try:
        yield
    finally:
        cache.cache_dir = real  # type: ignore[assignment]
    assert mounts() == before


# ---- strategies ---------------------------------------------------------------------------------

NAMES = sorted(OPTIONS)
PATHS = st.sampled_from(["/", "/tmp", "/nonexistent", "relative", "/a/../b", "/dev/null", "//x",
                         "/tmp:/x", "/tmp:/", "/tmp:relative", "/etc/hostname:/h", ":", "",
                         "/proc/self/root", "/tmp/\0x", "/usr:/usr:/usr"])
SIZES = st.sampled_from(["64M", "1.5G", "inf", "unlimited", "-1", "1e3", "0x10", "64 MiB", "0",
                         "1K", "9" * 30, "nan", "CPU=1", "NOFILE=10:5", "AS=1M:2M", "STACK=inf",
                         "FOO=1", "NPROC=-1", "CORE=", "=1"])
WORDS = st.sampled_from(["default", "none", "@default", "@mount", "@nope", "read,write",
                         "CAP_NET_RAW", "net_raw", "CAP_NOPE", "0", "65534", "65535:0", "65536",
                         "0:65536", "x:y", "A=B", "1A=B", "PATH", "bad name", "true", "false"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                    PATHS, SIZES, WORDS)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4),
                   st.dictionaries(st.text(max_size=5), SCALARS, max_size=2),
                   st.tuples(SCALARS, SCALARS), st.binary(max_size=8))
KEYS = st.one_of(st.sampled_from(NAMES), st.sampled_from([n.replace("-", "_") for n in NAMES]),
                 st.sampled_from(["init", "profile", "argv", "namespaces", "uid"]),
                 st.text(max_size=10))
ARGV = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(["/bin/true", "", "\0", "x\0y"]),
                          st.integers(), st.none()), max_size=3)


# ---- Spec.from_options --------------------------------------------------------------------------

@EXAMPLES
@given(ARGV, st.dictionaries(KEYS, VALUES, max_size=6))
def test_spec_from_options_gives_a_spec_or_a_spec_error(argv: list[Any],
                                                        options: dict[str, Any]) -> None:
    got = outcome(lambda: Spec.from_options(argv, options))
    if isinstance(got, Spec):
        json.loads(got.to_json())  # what --dry-run prints
        assert got.argv and all(isinstance(a, str) and "\0" not in a for a in got.argv)
    else:
        assert isinstance(got, isol8r.SpecError), repr(got)


@EXAMPLES
@given(st.dictionaries(st.sampled_from(NAMES), st.one_of(PATHS, SIZES, WORDS,
                                                         st.lists(st.one_of(PATHS, WORDS),
                                                                  max_size=3)), max_size=5))
def test_spec_from_plausible_options(options: dict[str, Any]) -> None:
    """Values that look right more often, so validation past the first check is reached."""
    got = outcome(lambda: Spec.from_options(["/bin/true"], options))
    assert isinstance(got, (Spec, isol8r.SpecError)), repr(got)


@EXAMPLES
@given(st.sampled_from(NAMES + [n.replace("-", "_") for n in NAMES] + ["init"]), VALUES)
@example("bind", 1.5)  # found by this file: TypeError from list(value) in Spec.from_options
@example("hostname", [])  # found by this file: TypeError from the hostname regex
@example("hostname", b"")
def test_each_option_alone_with_any_value(key: str, value: Any) -> None:
    """One option at a time, so no other option's error hides this one's handling."""
    got = outcome(lambda: Spec.from_options(["/bin/true"], {key: value}))
    assert isinstance(got, (Spec, isol8r.SpecError)), repr(got)
    if isinstance(got, Spec):
        json.loads(got.to_json())


# ---- TOML profiles ------------------------------------------------------------------------------

def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        text = repr(v)
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(text, text)
    if isinstance(v, str):
        return json.dumps(v)  # TOML basic strings take JSON's escapes
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))


TOML_SCALARS = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1),
                         st.floats(allow_nan=True, allow_infinity=True),
                         st.text(max_size=15), PATHS, SIZES, WORDS)
TOML_VALUES = st.one_of(TOML_SCALARS, st.lists(TOML_SCALARS, max_size=3),
                        st.dictionaries(st.text(string.ascii_letters, max_size=4), TOML_SCALARS,
                                        max_size=2))
_serial = itertools.count()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def write(scratch: Path, text: str, suffix: str) -> str:
    path = scratch / f"{next(_serial)}{suffix}"  # a new file each time: caches key by inode
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return str(path)


@EXAMPLES
@given(st.dictionaries(st.one_of(st.sampled_from(NAMES), st.text(max_size=8)), TOML_VALUES,
                       max_size=5))
@example({"bind": 0.0})  # found by this file: profiles.load accepts it, Spec.from_options fails
def test_profile_load_gives_options_or_a_spec_error(scratch: Path,
                                                    table: dict[str, Any]) -> None:
    text = "# fuzzed\n" + "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in table.items())
    path = write(scratch, text, ".toml")
    got = outcome(lambda: profiles.load(path))
    if isinstance(got, dict):
        outcome(lambda: Spec.from_options(["/bin/true"], got))  # what a run does with them
    else:
        assert isinstance(got, isol8r.SpecError) and path in str(got), repr(got)


@EXAMPLES
@given(st.one_of(st.text(max_size=200),
                 st.text(alphabet="[]=\"'#.,{}\n abc-_0123456789tfrue", max_size=120)))
def test_profile_load_of_any_text(scratch: Path, text: str) -> None:
    path = write(scratch, text, ".toml")
    got = outcome(lambda: profiles.load(path))
    assert isinstance(got, (dict, isol8r.SpecError)), repr(got)


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(st.text(max_size=30))
def test_profile_names_that_are_no_file(name: str) -> None:
    got = outcome(lambda: profiles.load(name))
    assert isinstance(got, (dict, isol8r.SpecError)), repr(got)


# ---- the command line ---------------------------------------------------------------------------

TOKENS = st.one_of(st.sampled_from(["--" + n for n in NAMES] + ["-v", "--json", "--profile",
                                                                "--", "-h", "--nope", "-x"]),
                   PATHS, SIZES, WORDS, st.text(max_size=10),
                   st.sampled_from(["judge", "build", "python", "default", "ctf-service"]))


def run_cli(args: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(args)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 125
    return code, err.getvalue()


@EXAMPLES
@given(st.lists(TOKENS, max_size=8))
def test_cli_dry_run_exits_0_or_125_without_a_traceback(tokens: list[str]) -> None:
    """--dry-run comes first, so nothing after it can make a jail run."""
    with no_hang():
        code, err = run_cli(["run", "--dry-run", *tokens])
    assert code in (0, 125), (code, err)
    assert "Traceback" not in err, err
    if code == 125:
        assert err.startswith("isol8r: ") and err.count("\n") == 1, err


# ---- seccomp JSON profiles ----------------------------------------------------------------------

SYSCALLS = st.one_of(st.sampled_from(["read", "write", "openat", "clone", "clone3", "ptrace",
                                      "socketcall", "ipc", "mmap2", "nosuchcall", "", "@default",
                                      "exit_group", "execve", "openat2", "io_uring_setup"]),
                     st.text(string.ascii_lowercase + "_0123456789", max_size=12))
ACTIONS = st.sampled_from(["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                           "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
                           "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_NOTIFY", "SCMP_ACT_BLOCK",
                           "allow", ""])
OPS = st.sampled_from(["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
                       "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NOPE", "=="])
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**65, 2**65),
                         st.floats(allow_nan=False), st.text(max_size=8))
NUMBERS = st.one_of(st.integers(-5, 2**64 + 5), st.sampled_from([0, 1, 5, 6, 2**64 - 1, 2**64]),
                    JSON_SCALARS)
ARG = st.fixed_dictionaries({"index": NUMBERS, "value": NUMBERS, "op": OPS},
                            optional={"valueTwo": NUMBERS, "extra": JSON_SCALARS})
RULE = st.fixed_dictionaries(
    {"names": st.one_of(st.lists(SYSCALLS, max_size=3), JSON_SCALARS), "action": ACTIONS},
    optional={"errnoRet": NUMBERS, "args": st.one_of(st.lists(ARG, max_size=3), JSON_SCALARS),
              "name": SYSCALLS, "comment": JSON_SCALARS,
              "includes": st.dictionaries(st.sampled_from(["arches", "caps", "minKernel", "x"]),
                                          st.one_of(st.lists(st.text(max_size=6), max_size=2),
                                                    st.sampled_from(["4.8", "99.0", "x"]))),
              "excludes": st.dictionaries(st.sampled_from(["arches", "caps", "minKernel"]),
                                          st.one_of(st.lists(st.sampled_from(
                                              ["amd64", "arm64", "x86", "CAP_SYS_ADMIN"]),
                                              max_size=2), st.sampled_from(["4.8", "5.x"])))})
ARCHES = st.lists(st.sampled_from(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32",
                                   "SCMP_ARCH_AARCH64", "SCMP_ARCH_NOPE", "x86_64"]), max_size=3)
PROFILE = st.fixed_dictionaries(
    {"defaultAction": ACTIONS},
    optional={"defaultErrnoRet": NUMBERS, "architectures": st.one_of(ARCHES, JSON_SCALARS),
              "archMap": st.lists(st.fixed_dictionaries({"architecture": st.sampled_from(
                  ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64", "SCMP_ARCH_NOPE"])},
                  optional={"subArchitectures": ARCHES}), max_size=2),
              "syscalls": st.one_of(st.lists(RULE, max_size=5), JSON_SCALARS),
              "flags": st.one_of(st.lists(st.sampled_from(["SECCOMP_FILTER_FLAG_LOG",
                                                           "SECCOMP_FILTER_FLAG_TSYNC", "NOPE"]),
                                          max_size=2), JSON_SCALARS),
              "listenerPath": st.sampled_from(["", "/run/agent.sock"]),
              "unknownField": JSON_SCALARS})


@EXAMPLES
@given(st.one_of(PROFILE, JSON_SCALARS, st.lists(JSON_SCALARS, max_size=3)))
def test_seccomp_check_gives_a_policy_or_a_spec_error(scratch: Path, data: Any) -> None:
    path = write(scratch, json.dumps(data), ".json")
    got = outcome(lambda: seccomp.check(path))
    if isinstance(got, seccomp.Policy):
        assert got.describe()
    else:
        assert isinstance(got, isol8r.SpecError), repr(got)


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(st.text(max_size=200))
def test_seccomp_check_of_any_text(scratch: Path, text: str) -> None:
    path = write(scratch, text, ".json")
    got = outcome(lambda: seccomp.check(path))
    assert isinstance(got, (seccomp.Policy, isol8r.SpecError)), repr(got)


# ---- the real command line, served and in-process -----------------------------------------------
# Issue 12 item 5: a 500-vector fuzz of `isol8r run` found tracebacks (in-process) and "internal
# error" (served). ISOL8R_FUZZ_EXAMPLES=500 runs that many; the suite runs fewer (each example
# starts two commands and a jail or two).

CLI_EXAMPLES = settings(max_examples=int(os.environ.get("ISOL8R_FUZZ_EXAMPLES", "40")),
                        deadline=None, database=None, derandomize=True,
                        suppress_health_check=[HealthCheck.too_slow,
                                               HealthCheck.data_too_large])
# --cgroup-parent is left out: a fuzzed one would make cgroups outside isol8r's subtree
# (tests/test_cgroups.py tests it); -v prints more than one line by design.
FUZZ_OPTIONS = sorted(n for n in OPTIONS if n != "cgroup-parent")
NOT_UTF8 = ["\udcff", "\udcff\udcfe", "read,\udcc3", "/tmp/\udcff", "A=\udcff", "\udce9t\udce9"]
HUGE = ["9" * 20, "99999999999999999999G", "9" * 400, "9" * 400 + ".5", "1e400", str(2**63),
        str(2**64), "-" + "9" * 20, "NOFILE=" + "9" * 20, "FSIZE=99999999999999999999G:inf"]
LONG = ["x" * 300, "/" + "x" * 300, "/tmp/" + "y" * 256, "a" * 5000, "/" + "d/" * 3000]
PLAUSIBLE = ["64M", "1", "0", "4", "5", "0.01", "inf", "default", "none", "@debug", "ptrace",
             "/tmp", "/tmp:/x", ".", "./x:/x", "/etc/hostname:/h", "/x:1M", "1000:1000",
             "A=B", "PATH", "CAP_NET_RAW", "judge", "python", "-", "r.json", "", "nan", "-1"]
HOSTILE = st.one_of(st.sampled_from(NOT_UTF8 + HUGE + LONG + PLAUSIBLE),
                    st.binary(max_size=12).map(os.fsdecode),
                    st.text(max_size=12)).filter(lambda v: "\0" not in v)  # argv cannot hold NUL
FLAG = st.one_of(
    st.sampled_from(FUZZ_OPTIONS).flatmap(
        lambda n: st.just(["--" + n]) if OPTIONS[n].kind == "flag" else
        HOSTILE.map(lambda v, n=n: ["--" + n, v])),
    st.tuples(st.sampled_from(["--json", "--profile"]), HOSTILE).map(list),
    st.sampled_from([["--dry-run"], ["--json", "-"], ["--nope"], ["--json"]]))
# 125, 126 and 127 are isol8r's: a program's own status is drawn from the others
STATUS = st.integers(0, 124) | st.integers(128, 255)


def cli_run(args: list[str], cwd: Path, served: bool) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    if not served:
        env["ISOL8R_CLI_SERVER"] = "0"
    return subprocess.run([sys.executable, "-m", "isol8r", *map(os.fsencode, args)], cwd=cwd,
                          env=env, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fuzzed commands' directory: what a relative --json or --bind makes lands here."""
    d = tmp_path_factory.mktemp("cli")
    (d / "x").mkdir()
    return d


@needs_root
@CLI_EXAMPLES
@given(flags=st.lists(FLAG, max_size=4), status=STATUS)
@example(flags=[["--json", "/tmp"]], status=3)
@example(flags=[["--profile", "x" * 300]], status=3)
@example(flags=[["--seccomp-deny", "\udcff\udcfe"]], status=3)
@example(flags=[["--seccomp-allow", "\udcff"]], status=3)
@example(flags=[["--output-limit", "99999999999999999999G"]], status=3)
@example(flags=[["--nofile", "5"]], status=3)
@example(flags=[["--cwd", "/\udcff"]], status=3)
def test_cli_served_and_in_process_exit_with_the_programs_status_or_125(
        cli_dir: Path, flags: list[list[str]], status: int) -> None:
    args = ["run", *[a for f in flags for a in f], "--", "/bin/sh", "-c", f"exit {status}"]
    results = [cli_run(args, cli_dir, served) for served in (True, False)]
    for p in results:
        err = p.stderr.decode("utf-8", "backslashreplace")
        assert "internal error" not in err and "Traceback" not in err, (args, err)
        code = p.returncode
        assert code in (status, 0, 125, 126, 127) or 128 < code < 160, (args, code, err)
        if code == 125:
            assert err.startswith("isol8r: ") and err.count("\n") == 1, (args, err)
    served, local = results
    if 125 in (served.returncode, local.returncode):  # bad input: refused the same way
        assert (served.returncode, served.stderr) == (local.returncode, local.stderr), args
