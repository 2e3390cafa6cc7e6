"""`isol8r check-environment` on fake /proc and /sys trees.

The trees are FAKES written into a temporary directory (the real machine's settings cannot be
changed by a test): each test writes the files isolate-check-environment reads and passes the
directory as the root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from isol8r import checkenv

SWAP_HEADER = "Filename\tType\tSize\tUsed\tPriority\n"


def fake(root: Path, files: dict[str, str]) -> str:
    for rel, text in files.items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n")
    return str(root)


# a machine set up for judging, as isolate's manual recommends
GOOD = {
    "/proc/swaps": SWAP_HEADER,
    "/proc/sys/kernel/randomize_va_space": "0",
    "/proc/sys/kernel/core_pattern": "core",
    "/proc/sys/fs/protected_hardlinks": "1",
    "/sys/devices/system/cpu/smt/active": "0",
    "/sys/devices/system/cpu/smt/control": "off",
    "/sys/devices/system/cpu/cpufreq/policy0/scaling_governor": "performance",
    "/sys/devices/system/cpu/cpufreq/policy1/scaling_governor": "performance",
    "/sys/devices/system/cpu/cpufreq/boost": "0",
    "/sys/devices/system/cpu/intel_pstate/no_turbo": "1",
    "/sys/kernel/mm/transparent_hugepage/enabled": "always madvise [never]",
    "/sys/kernel/mm/transparent_hugepage/defrag": "always defer defer+madvise madvise [never]",
    "/sys/kernel/mm/transparent_hugepage/khugepaged/defrag": "0",
}


def states(root: str) -> dict[str, str]:
    return {c.name: c.state for c in checkenv.run_checks(root)}


def test_a_tuned_machine_passes(tmp_path: Path) -> None:
    root = fake(tmp_path, GOOD)
    got = states(root)
    assert set(got.values()) == {checkenv.PASS}, got
    assert checkenv.exit_status(checkenv.run_checks(root)) == 0


@pytest.mark.parametrize("path,value,check,action", [
    ("/proc/sys/kernel/randomize_va_space", "2", "kernel address space randomisation",
     "echo 0 > /proc/sys/kernel/randomize_va_space"),
    ("/sys/devices/system/cpu/cpufreq/policy1/scaling_governor", "powersave",
     "CPU frequency scaling",
     "echo performance > /sys/devices/system/cpu/cpufreq/policy1/scaling_governor"),
    ("/sys/devices/system/cpu/intel_pstate/no_turbo", "0", "Intel frequency boost",
     "echo 1 > /sys/devices/system/cpu/intel_pstate/no_turbo"),
    ("/sys/devices/system/cpu/cpufreq/boost", "1", "general frequency boost",
     "echo 0 > /sys/devices/system/cpu/cpufreq/boost"),
    ("/sys/devices/system/cpu/smt/active", "1", "simultaneous multithreading",
     "echo off > /sys/devices/system/cpu/smt/control"),
    ("/sys/kernel/mm/transparent_hugepage/enabled", "[always] madvise never",
     "transparent hugepage support", "echo never > /sys/kernel/mm/transparent_hugepage/enabled"),
    ("/sys/kernel/mm/transparent_hugepage/khugepaged/defrag", "1",
     "transparent hugepage support",
     "echo 0 > /sys/kernel/mm/transparent_hugepage/khugepaged/defrag"),
    ("/proc/swaps", SWAP_HEADER + "/swapfile file 1048572 0 -2", "swap", "swapoff -a"),
    ("/proc/sys/kernel/core_pattern", "|/usr/lib/systemd/systemd-coredump %P", "core file pattern",
     "echo core >/proc/sys/kernel/core_pattern"),
    ("/proc/sys/fs/protected_hardlinks", "0", "hard link protection",
     "echo 1 >/proc/sys/fs/protected_hardlinks"),
])
def test_each_setting_that_spoils_timing_fails(tmp_path: Path, path: str, value: str, check: str,
                                                action: str) -> None:
    root = fake(tmp_path, {**GOOD, path: value})
    checks = {c.name: c for c in checkenv.run_checks(root)}
    assert checks[check].state == checkenv.FAIL
    assert action in checks[check].actions
    assert [n for n, c in checks.items() if c.state != checkenv.PASS] == [check]
    assert checkenv.exit_status(list(checks.values())) == 1


def test_accounted_swap_and_mixed_cores_need_caution(tmp_path: Path) -> None:
    root = fake(tmp_path, {**GOOD, "/proc/swaps": SWAP_HEADER + "/dev/sda2 partition 8 0 -2",
                           "/sys/fs/cgroup/memory.swap.max": "max",
                           "/sys/devices/cpu_atom/type": "10", "/sys/devices/cpu_core/type": "4"})
    got = states(root)
    assert got["swap"] == checkenv.CAUTION
    assert got["asymmetric cores"] == checkenv.CAUTION
    assert checkenv.exit_status(checkenv.run_checks(root)) == 1


def test_missing_knobs_are_skipped_not_failed(tmp_path: Path) -> None:
    """A VM without cpufreq, intel_pstate or SMT files: SKIPPED, as isolate says it, status 0."""
    root = fake(tmp_path, {k: v for k, v in GOOD.items() if "/cpu/" not in k})
    got = states(root)
    for name in ("CPU frequency scaling", "Intel frequency boost", "general frequency boost",
                 "simultaneous multithreading"):
        assert got[name] == checkenv.SKIPPED
    assert checkenv.exit_status(checkenv.run_checks(root)) == 0


def test_main_prints_the_remedy_and_exits_like_isolate(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    root = fake(tmp_path, {**GOOD, "/proc/sys/kernel/randomize_va_space": "2"})
    assert checkenv.main(["--root", root]) == 1
    out, err = capsys.readouterr()
    assert out == "echo 0 > /proc/sys/kernel/randomize_va_space\n"
    assert "Checking for kernel address space randomisation ... FAIL" in err
    assert checkenv.main(["-q", f"--root={root}"]) == 1
    assert capsys.readouterr() == ("", "")
    assert checkenv.main(["--root", str(tmp_path / "missing")]) == 2
    assert checkenv.main(["--bogus"]) == 2
    good = fake(tmp_path / "good", GOOD)
    assert checkenv.main(["-q", "--root", good]) == 0
    assert os.path.isdir(good)
