"""The Result of a run and its verdict: why it ended, how long it took, what it used."""

from __future__ import annotations

import json
import signal as _signal
from dataclasses import asdict, dataclass, field
from typing import Any

VERDICTS = ("ok", "nonzero-exit", "signaled", "time-limit", "cpu-limit", "memory-limit",
            "output-limit", "seccomp", "setup-error")


@dataclass
class Result:
    """What happened to one jailed program. exit_code and signal are exclusive."""

    argv: tuple[str, ...]
    verdict: str
    exit_code: int | None = None
    signal: int | None = None
    wall_time: float = 0.0
    setup_time: float = 0.0
    cpu_user: float | None = None
    cpu_system: float | None = None
    memory_peak: int | None = None
    processes: int | None = None
    stdout: bytes | None = None
    stderr: bytes | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    error: str | None = None
    syscall: str | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # --allow-domain: what the egress proxy refused, each {host, port, reason, time}
    net_denied: list[dict[str, Any]] | None = None
    # the walls this run had (name -> what) and those it could not have (name -> why):
    # docs/environments.md; --require makes a missing one a setup error instead
    walls: dict[str, str] = field(default_factory=dict)
    missing_walls: dict[str, str] = field(default_factory=dict)

    @property
    def returncode(self) -> int:
        """subprocess's convention: the exit code, or minus the signal number."""
        if self.signal is not None:
            return -self.signal
        return self.exit_code if self.exit_code is not None else 125

    @property
    def status(self) -> int:
        """The shell's convention, which the CLI exits with: the code, or 128 + the signal."""
        if self.signal is not None:
            return 128 + self.signal
        return self.exit_code if self.exit_code is not None else 125

    def describe(self) -> str:
        if self.signal is not None:
            try:
                name = _signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            how = f"killed by {name}"
        elif self.exit_code is not None:
            how = f"exit code {self.exit_code}"
        else:
            how = self.error or "did not start"
        return f"{self.verdict}: {how}" + (f", syscall: {self.syscall}" if self.syscall else "")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("stdout", "stderr"):
            if d[k] is not None:
                d[k] = d[k].decode("utf-8", "replace")
        d["status"] = self.status
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={_preview(getattr(self, k))}" for k in ("stdout", "stderr")
                        if getattr(self, k) is not None)
        return (f"Result(verdict={self.verdict!r}, exit_code={self.exit_code!r}, "
                f"signal={self.signal!r}, wall_time={self.wall_time:.4f}{extra})")


PREVIEW = 80  # bytes or characters of captured output repr() shows


def _preview(value: bytes | str) -> str:
    """A bounded repr: a Result holding 64 MiB of output must not print 64 MiB."""
    if len(value) <= PREVIEW:
        return repr(value)
    unit = "bytes" if isinstance(value, bytes) else "chars"
    return f"{value[:PREVIEW]!r}...<{len(value)} {unit}>"
