"""Issue 2, the library: isol8r.run(cmd, **options) with subprocess.run habits (capture_output,
input, text, stdout/stderr to files, timeout, check) returning a Result; a Spec runs as is.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import isol8r
from isol8r.daemon import forkserver
from conftest import needs_root

pytestmark = needs_root

SH = "/bin/sh"


def run(*cmd: str, **kw: Any) -> isol8r.Result:
    return isol8r.run(list(cmd), **kw)


def test_capture_output() -> None:
    r = run(SH, "-c", "echo out; echo err >&2; exit 4", capture_output=True)
    assert isinstance(r, isol8r.Result)
    assert (r.stdout, r.stderr) == (b"out\n", b"err\n")
    assert (r.exit_code, r.signal, r.returncode, r.verdict) == (4, None, 4, "nonzero-exit")
    assert r.argv == (SH, "-c", "echo out; echo err >&2; exit 4")
    assert r.wall_time > 0


def test_without_capture_output_goes_to_the_callers_fds(capfd: pytest.CaptureFixture[str]) -> None:
    r = run(SH, "-c", "echo to-stdout; echo to-stderr >&2")
    assert r.stdout is None and r.stderr is None
    out, err = capfd.readouterr()
    assert "to-stdout" in out and "to-stderr" in err


def test_input_bytes() -> None:
    r = run("/bin/cat", input=b"\x00bytes\xff", capture_output=True)
    assert r.stdout == b"\x00bytes\xff"


def test_input_str_and_text() -> None:
    r = run("/bin/cat", input="héllo wörld", capture_output=True, text=True)
    assert r.stdout == "héllo wörld" and r.stderr == ""


def test_text_decodes_stderr_too() -> None:
    r = run(SH, "-c", "printf 'é' >&2", capture_output=True, text=True)
    assert r.stderr == "é"


def test_large_input_and_output() -> None:
    data = bytes(range(256)) * 8192  # 2 MiB: more than any pipe buffer
    r = run("/bin/cat", input=data, capture_output=True)
    assert r.exit_code == 0 and r.stdout == data


def test_stdout_and_stderr_to_file_objects(tmp_path: Path) -> None:
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        r = run(SH, "-c", "echo to-file; echo to-err >&2", stdout=out, stderr=err)
    assert r.exit_code == 0 and r.stdout is None
    assert (tmp_path / "out").read_bytes() == b"to-file\n"
    assert (tmp_path / "err").read_bytes() == b"to-err\n"


def test_stdin_from_a_file_object(tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"from a file\n")
    with open(tmp_path / "in", "rb") as f:
        r = run("/bin/cat", stdin=f, capture_output=True)
    assert r.stdout == b"from a file\n"


def test_pipe_and_devnull_constants() -> None:
    r = run(SH, "-c", "cat; echo out; echo err >&2", stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert r.stdout == b"out\n" and r.stderr is None


def test_timeout_ends_the_jail_promptly() -> None:
    t0 = time.monotonic()
    r = run("/bin/sleep", "10", timeout=0.3, capture_output=True)
    elapsed = time.monotonic() - t0
    assert r.verdict == "time-limit"
    assert r.exit_code != 0 or r.signal is not None
    assert 0.25 < elapsed < 3, f"returned after {elapsed:.2f}s"


def test_timeout_with_a_program_that_ignores_sigterm() -> None:
    t0 = time.monotonic()
    r = run(SH, "-c", "trap '' TERM; while :; do :; done", timeout=0.3, kill_grace=0.2)
    assert r.verdict == "time-limit" and r.signal == 9
    assert time.monotonic() - t0 < 3


def test_timeout_not_reached() -> None:
    r = run(SH, "-c", "echo quick", timeout=5, capture_output=True)
    assert (r.verdict, r.exit_code, r.stdout) == ("ok", 0, b"quick\n")


def test_check_raises_jail_failed() -> None:
    with pytest.raises(isol8r.JailFailed) as info:
        run(SH, "-c", "echo partial; exit 1", check=True, capture_output=True)
    assert info.value.result.exit_code == 1
    assert info.value.result.stdout == b"partial\n"
    assert isinstance(info.value, isol8r.Isol8rError)


def test_check_passes_on_success() -> None:
    assert run("/bin/true", check=True).exit_code == 0


def test_check_with_timeout_raises() -> None:
    with pytest.raises(isol8r.JailFailed) as info:
        run("/bin/sleep", "10", timeout=0.3, check=True)
    assert info.value.result.verdict == "time-limit"


def test_check_on_a_signal() -> None:
    with pytest.raises(isol8r.JailFailed) as info:
        run(SH, "-c", "kill -KILL $$", check=True)
    assert info.value.result.returncode == -9


def test_a_spec_object_runs_as_is() -> None:
    spec = isol8r.Spec.from_options([SH, "-c", "echo from-spec; hostname"],
                                    {"hostname": "specbox"})
    for _ in range(2):  # the same Spec twice: it is data, not a one-shot
        r = isol8r.run(spec, capture_output=True)
        assert r.stdout == b"from-spec\nspecbox\n" and r.exit_code == 0


def test_a_spec_with_timeout() -> None:
    spec = isol8r.Spec.from_options(["/bin/sleep", "10"], {})
    r = isol8r.run(spec, timeout=0.3)
    assert r.verdict == "time-limit"


def test_a_spec_cannot_take_options() -> None:
    spec = isol8r.Spec.from_options(["/bin/true"], {})
    with pytest.raises(isol8r.SpecError):
        isol8r.run(spec, hostname="other")


def test_a_string_command_is_refused() -> None:
    with pytest.raises(isol8r.SpecError, match="echo hi"):
        isol8r.run("echo hi")  # type: ignore[arg-type]


def test_options_take_cli_names_with_dashes_or_underscores() -> None:
    r = isol8r.run([SH, "-c", "ulimit -n"], capture_output=True, **{"rlimit": ["NOFILE=99"]})
    assert r.stdout == b"99\n"
    spec = isol8r.Spec.from_options(["/bin/true"], {"tmp-size": "1M", "tmp_size": "2M"})
    assert spec.tmp_size == 2 << 20


def test_result_to_json_round_trips() -> None:
    import json
    r = run(SH, "-c", "echo x", capture_output=True)
    d = json.loads(r.to_json())
    assert d["exit_code"] == 0 and d["stdout"] == "x\n" and d["status"] == 0


def test_the_fork_server_image_carries_no_asyncio() -> None:
    """Every jail starts as a copy of the fork server: what it imports, each jail's clone and
    exit pay for. asyncio (with ssl, logging, inspect) is for run_async's caller, not the
    server. Seen through the extension modules mapped into the server; a Python built with them
    static shows none, and the test says so."""
    import glob
    import sysconfig
    dynload = sysconfig.get_config_var("DESTSHARED") or ""
    if not glob.glob(f"{dynload}/_asyncio*.so"):
        pytest.skip("this Python has _asyncio built in: nothing to see in the server's maps")
    assert run("/bin/true").exit_code == 0
    pid = forkserver.shared_client().pid()
    with open(f"/proc/{pid}/maps") as f:
        maps = f.read()
    assert "_socket" in maps  # the check sees extension modules at all
    assert "_asyncio" not in maps and "_ssl" not in maps


# ---- issue 13 item 6: argv and environment up to the kernel's own limit --------------------

MiB_ARGV = ["a" * 65535] * 16  # 1 MiB of argv in 16 strings (one string may be 128 KiB at most)
MiB_ENV = {f"BIG{i}": "e" * 65530 for i in range(16)}  # 1 MiB of environment


@pytest.mark.parametrize("fork_server", [True, False])
def test_a_mebibyte_of_argv_and_one_of_environment_reach_the_program(fork_server: bool) -> None:
    """Both used to fail: the Request (and the fork server's lease request) is one datagram,
    whose size the socket buffer caps at ~208 KiB (EMSGSIZE)."""
    r = run(SH, "-c", 'echo $# ${#1} ${#16}', "sh", *MiB_ARGV, capture_output=True,
            fork_server=fork_server)
    assert (r.stdout, r.verdict) == (b"16 65535 65535\n", "ok")
    r = run(SH, "-c", 'echo ${#BIG0} ${#BIG15}', env=MiB_ENV, capture_output=True,
            fork_server=fork_server)
    assert (r.stdout, r.verdict) == (b"65530 65530\n", "ok")


@pytest.mark.parametrize("fork_server", [True, False])
def test_past_the_kernels_limit_one_line_names_argv_or_the_environment(fork_server: bool) -> None:
    with pytest.raises(isol8r.ExecError) as e:
        run("/bin/true", *(["a" * 65535] * 40), fork_server=fork_server)  # 2.5 MiB > 8 MiB / 4
    assert "E2BIG" in str(e.value) and "argv is 2621" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(isol8r.ExecError) as e:
        run("/bin/true", env={"HUGE": "e" * 200_000}, fork_server=fork_server)
    assert "E2BIG" in str(e.value) and "the environment: variable HUGE" in str(e.value)


def test_a_mebibyte_of_argv_and_of_environment_through_the_cli_and_its_server() -> None:
    from conftest import cli
    env_opts = [f"--env={k}={v}" for k, v in MiB_ENV.items()]
    p = cli("run", "--seccomp=none", *env_opts, "--", SH, "-c", 'echo ${#BIG0} ${#BIG15}')
    assert (p.stdout, p.returncode) == ("65530 65530\n", 0), p.stderr
    p = cli("run", "--seccomp=none", "--", SH, "-c", 'echo $# ${#16}', "sh", *MiB_ARGV)
    assert (p.stdout, p.returncode) == ("16 65535\n", 0), p.stderr
    p = cli("run", "--rlimit=STACK=512K", "--", "/bin/true", *MiB_ARGV)  # past: 128 KiB here
    assert p.returncode == 126 and p.stderr.count("\n") == 1 and "E2BIG" in p.stderr \
        and "argv is" in p.stderr, p.stderr


# ---- issue 13 item 5: every subprocess habit --------------------------------------------------


def test_stderr_to_stdout_as_subprocess_does() -> None:
    """Raised OverflowError: STDOUT (-2) was taken for a descriptor."""
    r = run(SH, "-c", "echo out; echo err >&2", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert r.stdout == b"out\nerr\n" and r.stderr is None
    r = run(SH, "-c", "echo a; echo b >&2", stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            fork_server=False)
    assert r.exit_code == 0 and r.stdout is None


def test_stdio_files_descriptors_pipe_and_devnull(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_bytes(b"from a file\n")
    with open(src, "rb") as fin, open(tmp_path / "out", "wb") as fout:
        r = run("/bin/cat", stdin=fin, stdout=fout.fileno(), stderr=subprocess.DEVNULL)
    assert r.exit_code == 0 and (tmp_path / "out").read_bytes() == b"from a file\n"
    r = run("/bin/cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # no input: EOF at once
    assert (r.stdout, r.exit_code) == (b"", 0)
    r = run("/bin/cat", stdin=subprocess.DEVNULL, capture_output=True)
    assert r.stdout == b""


def test_text_encoding_errors_universal_newlines() -> None:
    r = run(SH, "-c", "printf 'a\\r\\nb\\rc\\n'", stdout=subprocess.PIPE, text=True)
    assert r.stdout == "a\nb\nc\n"
    r = run("/bin/cat", input="é", encoding="latin-1", capture_output=True)
    assert r.stdout == "é"
    r = run(SH, "-c", "printf '\\377x'", capture_output=True, encoding="utf-8",
            errors="backslashreplace")
    assert r.stdout == "\\xffx"
    r = run("/bin/cat", input="x", universal_newlines=True, capture_output=True)
    assert r.stdout == "x"
    with pytest.raises(UnicodeDecodeError):
        run(SH, "-c", "printf '\\377'", capture_output=True, text=True, errors="strict")


def test_env_as_a_mapping() -> None:
    r = run(SH, "-c", 'echo "$A $B"', env={"A": "1", "B": "two words"}, capture_output=True)
    assert r.stdout == b"1 two words\n"


@pytest.mark.parametrize("kw", [
    {"input": b"x", "stdin": subprocess.DEVNULL},
    {"capture_output": True, "stdout": subprocess.PIPE},
    {"capture_output": True, "stderr": subprocess.STDOUT},
    {"text": True, "universal_newlines": False},
    {"stdout": subprocess.STDOUT},
    {"stdin": subprocess.STDOUT},
    {"stdout": -7},
    {"stdout": "out.txt"},
])
def test_conflicting_or_bad_stdio_arguments_raise_value_error(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        run("/bin/true", **kw)


def test_repr_shows_a_bounded_preview() -> None:
    """Printed all 64 MiB before."""
    r = run(SH, "-c", "head -c 67108864 /dev/zero", capture_output=True)
    assert len(r.stdout) == 64 << 20
    text = repr(r)
    assert len(text) < 500 and "67108864 bytes" in text


def _traced_peak(fn: Any) -> int:
    import tracemalloc
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_captured_output_is_held_once() -> None:
    """Issue 12 item 7: the chunks and their join at the end made the caller hold 64 MiB of
    output twice (peak ~128 MiB of Python allocations); a BytesIO hands its buffer over."""
    size = 64 << 20
    peak = _traced_peak(lambda: run(SH, "-c", f"head -c {size} /dev/zero", capture_output=True))
    assert size <= peak < size * 1.4, peak


def test_a_gigabyte_of_output_under_an_output_limit_keeps_the_caller_bounded() -> None:
    peak = _traced_peak(lambda: run(SH, "-c", "head -c 1073741824 /dev/zero; echo done >&2",
                                    capture_output=True, output_limit="1M"))
    assert peak < 8 << 20, peak
