"""isol8r: run an untrusted program in Linux namespaces it cannot see out of, touch or starve.

    >>> import isol8r
    >>> r = isol8r.run(["/bin/echo", "hi"], capture_output=True)
    >>> r.stdout
    b'hi\\n'
"""

from __future__ import annotations

from typing import Any, Sequence

from .errors import ExecError, Isol8rError, JailFailed, SetupError, SpecError
from .result import Result
from .spec import Spec

__all__ = ["run", "Spec", "Result", "Isol8rError", "SpecError", "SetupError", "ExecError",
           "JailFailed"]
__version__ = "0.1.0"


def run(cmd: Sequence[str] | Spec, *, capture_output: bool = False, input: bytes | str | None = None,
        stdin: Any = None, stdout: Any = None, stderr: Any = None, timeout: float | None = None,
        check: bool = False, text: bool = False, forward_signals: bool = False,
        **options: Any) -> Result:
    """Run cmd in a jail, with subprocess.run habits; options are the CLI's long names
    with underscores (rootfs=, ro_bind=[...], share_net=True, memory="64M", ...).

    timeout is the jail's wall-clock limit: the Result's verdict says "time-limit" rather than
    an exception being raised, unless check=True. Raises SpecError for bad input and SetupError
    when the jail could not be set up; the host is left as it was in both cases.
    """
    from . import supervisor

    if isinstance(cmd, Spec):
        if options:
            raise SpecError("", sorted(options), "options cannot be combined with a Spec")
        spec = cmd
    else:
        if isinstance(cmd, (str, bytes)):
            raise SpecError("command", cmd, "give a list of arguments, not a string")
        if timeout is not None:
            options["time_limit"] = timeout
        profile = options.pop("profile", None)
        if profile is not None:
            from . import profiles
            options = {**profiles.load(profile), **{k.replace("_", "-"): v for k, v in options.items()}}
        spec = Spec.from_options(cmd, options)
    if timeout is not None and isinstance(cmd, Spec):
        spec = spec.replace(time_limit=float(timeout))
    data = input.encode() if isinstance(input, str) else input
    result = supervisor.run(spec, stdin=stdin, stdout=stdout, stderr=stderr, input=data,
                            capture_output=capture_output, forward_signals=forward_signals)
    if text:
        for name in ("stdout", "stderr"):
            value = getattr(result, name)
            if value is not None:
                setattr(result, name, value.decode("utf-8", "replace"))
    if check and result.status != 0:
        raise JailFailed(result)
    return result
