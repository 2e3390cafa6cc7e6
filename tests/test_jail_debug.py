"""Issue 2, debugging: -v logs every setup step with its duration on stderr; --dry-run prints
the Spec as JSON and runs nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import cli, needs_root

pytestmark = needs_root

STEP = re.compile(r"^isol8r: (?P<step>\S.*?): (?P<ms>\d+(?:\.\d+)?) ms\b")


def steps(stderr: str) -> dict[str, float]:
    out = {}
    for line in stderr.splitlines():
        m = STEP.match(line)
        if m:
            out[m.group("step")] = float(m.group("ms"))
    return out


def test_verbose_logs_each_step_with_a_duration() -> None:
    p = cli("run", "-v", "--", "/bin/sh", "-c", "echo program-output")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "program-output\n", "the log must not go to the program's stdout"
    logged = steps(p.stderr)
    for step in ("mounts", "sethostname", "loopback up", "rlimits", "drop capabilities"):
        assert any(s == step or s.startswith(step + " ") for s in logged), \
            f"step {step!r} not logged; got {sorted(logged)}"
    assert all(ms >= 0 for ms in logged.values())
    assert re.search(r"^isol8r: mounts: \d+(\.\d+)? ms", p.stderr, re.M)


def test_verbose_logs_the_mount_operations() -> None:
    p = cli("run", "-v", "--tmpfs", "/scratch:1M", "--", "/bin/true")
    assert p.returncode == 0, p.stderr
    assert re.search(r"^isol8r: +tmpfs /scratch: \d+(\.\d+)? ms", p.stderr, re.M), p.stderr
    assert re.search(r"^isol8r: +special /proc: \d+(\.\d+)? ms", p.stderr, re.M), p.stderr


def test_quiet_without_verbose() -> None:
    p = cli("run", "--", "/bin/true")
    assert p.returncode == 0 and p.stderr == ""


def test_verbose_setup_failure_still_ends_in_one_error_line() -> None:
    p = cli("run", "-v", "--cwd", "/nonexistent", "--", "/bin/true")
    assert p.returncode == 125
    errors = [line for line in p.stderr.splitlines() if not STEP.match(line)
              and "ok:" not in line]
    assert any("/nonexistent" in line and "ENOENT" in line for line in errors), p.stderr
    assert "Traceback" not in p.stderr


def test_dry_run_prints_the_spec_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    p = cli("run", "--dry-run", "--hostname", "dry", "--rlimit", "NOFILE=10:20",
            "--tmpfs", "/scratch:1M", "--", "/bin/sh", "-c", f"touch {marker}")
    assert p.returncode == 0, p.stderr
    spec = json.loads(p.stdout)
    assert spec["argv"] == ["/bin/sh", "-c", f"touch {marker}"]
    assert spec["hostname"] == "dry"
    assert [list(r) for r in spec["rlimits"]] == [["NOFILE", 10, 20]]
    assert any(m["dst"] == "/scratch" and m["kind"] == "tmpfs" for m in spec["mounts"])
    assert not marker.exists()


@pytest.mark.parametrize("args", [["--bogus"], ["--user", "70000"]])
def test_dry_run_still_validates(args: list[str]) -> None:
    p = cli("run", "--dry-run", *args, "--", "/bin/true")
    assert p.returncode == 125
    assert len(p.stderr.splitlines()) == 1 and p.stdout == ""


def test_json_result(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    p = cli("run", "--json", str(out), "--", "/bin/sh", "-c", "exit 3")
    assert p.returncode == 3
    result = json.loads(out.read_text())
    assert result["exit_code"] == 3 and result["status"] == 3 and result["verdict"] == "nonzero-exit"
