"""`isol8r check-environment`: what on this machine makes a program's timing unreproducible.

The same checks as isolate's isolate-check-environment (ASLR, the CPU frequency governor, turbo
and boost, SMT, transparent huge pages, swap, piped core dumps, hard link protection, mixed P- and
E-cores), read from /proc and /sys under a root directory so the checks can be tested on a fake
tree. It only reports: the remedy of each failed check is printed as a command for an
administrator to run, never run by isol8r (isolate's --execute is not offered).

Exit status as isolate's: 0 when every check passed or was skipped, 1 when one failed or needs
caution, 2 for a bad command line.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Sequence

PASS, FAIL, CAUTION, SKIPPED = "PASS", "FAIL", "CAUTION", "SKIPPED (not detected)"
USAGE = """usage: isol8r check-environment [-q|--quiet] [--root DIR]

Reports what makes timing unreproducible (as isolate-check-environment does): ASLR, the CPU
frequency governor, turbo/boost, SMT, transparent huge pages, swap, piped core dumps, hard link
protection, asymmetric cores. A failed check prints the command that fixes it. Exit status 0 when
all passed, 1 when one failed or needs caution.

  -q, --quiet   print nothing; the exit status says it
  --root DIR    read /proc and /sys under DIR instead of / (a copy, or a test's fake tree)
"""


@dataclass
class Check:
    """One check's outcome: its state, the warnings, and the commands that would fix it."""

    name: str
    state: str = PASS
    warnings: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)

    def fail(self, warning: str, action: str | None = None, state: str = FAIL) -> None:
        if self.state in (PASS, SKIPPED):
            self.state = state
        self.warnings.append(warning)
        if action:
            self.actions.append(action)


class Env:
    """The files the checks read, under a root (a fake tree in the unit tests)."""

    def __init__(self, root: str = "/") -> None:
        self.root = root

    def path(self, p: str) -> str:
        return os.path.join(self.root, p.lstrip("/"))

    def read(self, p: str) -> str | None:
        try:
            with open(self.path(p), encoding="utf-8", errors="replace") as f:
                return f.read().strip()
        except OSError:
            return None

    def exists(self, p: str) -> bool:
        return os.path.exists(self.path(p))


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def swap(env: Env) -> Check:
    c = Check("swap")
    swaps = env.read("/proc/swaps")
    if swaps is None:
        c.state = SKIPPED
        return c
    if any(line.strip() for line in swaps.splitlines()[1:]):
        if not env.exists("/sys/fs/cgroup/memory.swap.max") and \
                not env.exists("/sys/fs/cgroup/memory.swap.current"):
            c.fail("swap is enabled, but swap accounting is not: memory limits cannot hold",
                   "swapoff -a")
        else:
            c.fail("swap is enabled, and although accounted for, may still give run-time "
                   "variability under memory pressure.", state=CAUTION)
    return c


def smt(env: Env) -> Check:
    c = Check("simultaneous multithreading")
    active = _int(env.read("/sys/devices/system/cpu/smt/active"))
    if active is None:
        c.state = SKIPPED
    elif active != 0:
        if env.read("/sys/devices/system/cpu/smt/control") != "notimplemented":
            c.fail("simultaneous multithreading is enabled.",
                   "echo off > /sys/devices/system/cpu/smt/control")
        else:
            c.fail("SMT is enabled, but runtime SMT toggling is not supported. Add 'nosmt=1' to "
                   "the kernel command line.")
    return c


def cpufreq(env: Env) -> Check:
    c = Check("CPU frequency scaling")
    top = env.path("/sys/devices/system/cpu/cpufreq")
    found = []
    for dirpath, _dirs, files in sorted(os.walk(top)):
        if "scaling_governor" in files:
            found.append(os.path.join(dirpath, "scaling_governor"))
    if not found:
        c.state = SKIPPED
    for path in found:
        shown = "/" + os.path.relpath(path, env.root) if env.root != "/" else path
        policy = env.read(shown)
        if policy is not None and policy != "performance":
            c.fail(f"cpufreq governor set to '{policy}', but 'performance' would be better",
                   f"echo performance > {shown}")
    return c


def intel_boost(env: Env) -> Check:
    c = Check("Intel frequency boost")
    val = _int(env.read("/sys/devices/system/cpu/intel_pstate/no_turbo"))
    if val is None:
        c.state = SKIPPED
    elif val != 1:
        c.fail("frequency boosting is enabled.",
               "echo 1 > /sys/devices/system/cpu/intel_pstate/no_turbo")
    return c


def general_boost(env: Env) -> Check:
    c = Check("general frequency boost")
    val = _int(env.read("/sys/devices/system/cpu/cpufreq/boost"))
    if val is None:
        c.state = SKIPPED
    elif val != 0:
        c.fail("frequency boosting is enabled.", "echo 0 > /sys/devices/system/cpu/cpufreq/boost")
    return c


def aslr(env: Env) -> Check:
    c = Check("kernel address space randomisation")
    val = _int(env.read("/proc/sys/kernel/randomize_va_space"))
    if val is None:
        c.state = SKIPPED
    elif val != 0:
        c.fail("address space randomisation is enabled.",
               "echo 0 > /proc/sys/kernel/randomize_va_space")
    return c


def thp(env: Env) -> Check:
    c = Check("transparent hugepage support")
    base = "/sys/kernel/mm/transparent_hugepage"
    for name, what in (("enabled", "transparent hugepages are enabled."),
                       ("defrag", "transparent hugepage defrag is enabled.")):
        val = env.read(f"{base}/{name}")
        if val is not None and "[never]" not in val:
            c.fail(what, f"echo never > {base}/{name}")
    val = _int(env.read(f"{base}/khugepaged/defrag"))
    if val is not None and val != 0:
        c.fail("khugepaged defrag is enabled.", f"echo 0 > {base}/khugepaged/defrag")
    return c


def core_pattern(env: Env) -> Check:
    c = Check("core file pattern")
    val = env.read("/proc/sys/kernel/core_pattern")
    if val is None:
        c.state = SKIPPED
    elif val.startswith("|"):
        c.fail("core files are piped to a program.", "echo core >/proc/sys/kernel/core_pattern")
    return c


def hardlinks(env: Env) -> Check:
    c = Check("hard link protection")
    val = _int(env.read("/proc/sys/fs/protected_hardlinks"))
    if val is None:
        c.state = SKIPPED
    elif val == 0:
        c.fail("hardlink protection is disabled.", "echo 1 >/proc/sys/fs/protected_hardlinks")
    return c


def asymmetric_cores(env: Env) -> Check:
    c = Check("asymmetric cores")
    if env.exists("/sys/devices/cpu_atom") and env.exists("/sys/devices/cpu_core"):
        c.fail("the CPU has a combination of P-cores and E-cores, core pinning should be used.",
               state=CAUTION)
    return c


CHECKS = (swap, smt, cpufreq, intel_boost, general_boost, aslr, thp, core_pattern, hardlinks,
          asymmetric_cores)


def run_checks(root: str = "/") -> list[Check]:
    env = Env(root)
    return [check(env) for check in CHECKS]


def exit_status(checks: Sequence[Check]) -> int:
    """isolate's: 1 when any check failed or needs caution, else 0."""
    return 1 if any(c.state in (FAIL, CAUTION) for c in checks) else 0


def main(argv: Sequence[str]) -> int:
    quiet, root = False, "/"
    args = list(argv)
    while args:
        a = args.pop(0)
        if a in ("-q", "--quiet"):
            quiet = True
        elif a == "--root" and args:
            root = args.pop(0)
        elif a.startswith("--root="):
            root = a.split("=", 1)[1]
        elif a in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        else:
            sys.stderr.write(f"isol8r check-environment: unknown argument {a!r} (try --help)\n")
            return 2
    if not os.path.isdir(root):
        sys.stderr.write(f"isol8r check-environment: --root {root}: not a directory\n")
        return 2
    checks = run_checks(root)
    if not quiet:
        for c in checks:
            sys.stderr.write(f"Checking for {c.name} ... {c.state}\n")
            for w in c.warnings:
                sys.stderr.write(f"WARNING: {w}\n")
            for a in c.actions:
                sys.stdout.write(a + "\n")
        sys.stdout.flush()
    return exit_status(checks)
