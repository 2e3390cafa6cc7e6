"""The exception types: one per failure class, so callers can tell bad input from a failed jail."""

from __future__ import annotations

import errno as _errno
import os
TYPE_CHECKING = False  # not `typing`: the CLI's thin client imports this (through protocol.py)
if TYPE_CHECKING:
    from typing import Any

    from .result import Result


class Isol8rError(Exception):
    """Base of every error isol8r raises on purpose; anything else is a bug."""

    exit_code = 125


class SpecError(Isol8rError, ValueError):
    """Bad input: names the option and the value so the user can fix the call."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field, self.value, self.reason = field, value, reason
        shown = value if isinstance(value, str) else repr(value)
        if value is True and field:  # a flag: "--overlay: needs --rootfs", not "--overlay True"
            super().__init__(f"{field}: {reason}")
        else:
            super().__init__(f"{field} {shown}: {reason}" if field else f"{shown}: {reason}")


class SetupError(Isol8rError):
    """A step of the jail's setup failed: reads as "mount /proc: EPERM (...)"."""

    def __init__(self, step: str, err: int, detail: str = "") -> None:
        self.step, self.errno, self.detail = step, err, detail
        name = _errno.errorcode.get(err, str(err)) if err else ""
        text = f"{step}: {name} ({os.strerror(err)})" if err else step
        super().__init__(f"{text}{': ' + detail if detail else ''}")


def exec_status(err: int) -> int:
    """The shell's status for a program that could not be started: 127 when it was not found,
    126 when it was found but could not be executed. The one place that maps an execve errno."""
    return 127 if err in (_errno.ENOENT, _errno.ENOTDIR) else 126


class ExecError(SetupError):
    """The program itself could not be started: 127 when not found, 126 when not executable."""

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return exec_status(self.errno)


class ProtocolError(Isol8rError):
    """A message on one of isol8r's sockets was malformed or truncated (protocol.py): a bug, or
    a peer that is not isol8r; never a hang, never a bare marshal or struct exception."""

    def __init__(self, what: str, why: str) -> None:
        self.what, self.why = what, why
        super().__init__(f"malformed {what} message: {why}")


class JailFailed(Isol8rError):
    """Raised by run(check=True) when the program did not end with status 0."""

    def __init__(self, result: "Result") -> None:
        self.result = result
        super().__init__(f"jailed program {result.argv[0] if result.argv else ''!s} ended: "
                         f"{result.describe()}")
