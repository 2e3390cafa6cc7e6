"""isol8r: run an untrusted program in Linux namespaces it cannot see out of, touch or starve.

    >>> import isol8r
    >>> r = isol8r.run(["/bin/echo", "hi"], capture_output=True)
    >>> r.stdout
    b'hi\\n'
"""

from __future__ import annotations

import os
TYPE_CHECKING = False  # not `typing`: a run through the CLI server must not import it

if TYPE_CHECKING:
    from typing import Any, Mapping, Sequence

    from .errors import ExecError, Isol8rError, JailFailed, SetupError, SpecError
    from .result import Result
    from .spec import Spec

__all__ = ["run", "run_async", "Spec", "Result", "Isol8rError", "SpecError", "SetupError", "ExecError",
           "JailFailed", "run_connected", "Party", "ConnectedResult"]
__version__ = "0.1.0"
_LAZY = {"Spec": "spec", "Result": "result", "Isol8rError": "errors", "SpecError": "errors",
         "SetupError": "errors", "ExecError": "errors", "JailFailed": "errors",
         "run_connected": "connected", "Party": "connected", "ConnectedResult": "connected"}


def __getattr__(name: str) -> Any:
    """The public classes, imported on first use: `isol8r run` through the CLI server imports
    this package but needs none of them (see cli.py)."""
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run(cmd: Sequence[str] | Spec, *, capture_output: bool = False, input: bytes | str | None = None,
        stdin: Any = None, stdout: Any = None, stderr: Any = None, timeout: float | None = None,
        check: bool = False, text: bool | None = None, encoding: str | None = None,
        errors: str | None = None, universal_newlines: bool | None = None,
        env: Mapping[str, str] | Sequence[str] | None = None, forward_signals: bool = False,
        fork_server: bool = True, **options: Any) -> Result:
    """Run cmd in a jail, with subprocess.run habits; options are the CLI's long names
    with underscores (rootfs=, ro_bind=[...], share_net=True, memory="64M", ...).

    stdin, stdout and stderr take what subprocess.run takes (PIPE, DEVNULL, STDOUT for stderr, a
    file object or a descriptor); text, encoding, errors and universal_newlines decode the output
    as there; env is a mapping (or "NAME=VALUE" strings) added to the jail's fresh environment.
    Conflicting arguments raise ValueError, as subprocess.run does.

    timeout is the jail's wall-clock limit: the Result's verdict says "time-limit" rather than
    an exception being raised, unless check=True. Raises SpecError for bad input and SetupError
    when the jail could not be set up; the host is left as it was in both cases.
    Jails are cloned by a small fork server started on first use (fork_server=False clones
    from this process: only safe while it has a single thread).
    """
    from . import supervisor
    from .daemon import forkserver

    data, decode = _habits(capture_output, input, stdin, stdout, stderr, text, encoding, errors,
                           universal_newlines, env, options)
    spec = spec_of(cmd, timeout, options)
    if fork_server:
        stdio = supervisor.open_stdio(spec, stdin, stdout, stderr, data, capture_output,
                                      lambda _v: None)
        result = forkserver.shared_client().run(spec, stdio, forward_signals=forward_signals)
    else:
        result = supervisor.run(spec, stdin=stdin, stdout=stdout, stderr=stderr, input=data,
                                capture_output=capture_output, forward_signals=forward_signals)
    return _finish(result, decode, check)


async def run_async(cmd: Sequence[str] | Spec, *, capture_output: bool = False,
                    input: bytes | str | None = None, stdin: Any = None, stdout: Any = None,
                    stderr: Any = None, timeout: float | None = None, check: bool = False,
                    text: bool | None = None, encoding: str | None = None,
                    errors: str | None = None, universal_newlines: bool | None = None,
                    env: Mapping[str, str] | Sequence[str] | None = None,
                    **options: Any) -> Result:
    """run() for asyncio: the jail is cloned and watched by the fork server; this coroutine
    only waits on descriptors, so many jails need no thread each."""
    from . import supervisor
    from .daemon import forkserver

    data, decode = _habits(capture_output, input, stdin, stdout, stderr, text, encoding, errors,
                           universal_newlines, env, options)
    spec = spec_of(cmd, timeout, options)
    stdio = supervisor.open_stdio(spec, stdin, stdout, stderr, data, capture_output, lambda _v: None)
    result = await forkserver.run_async(forkserver.shared_client(), spec, stdio)
    return _finish(result, decode, check)


def _habits(capture_output: bool, input: bytes | str | None, stdin: Any, stdout: Any,
            stderr: Any, text: bool | None, encoding: str | None, errors: str | None,
            universal_newlines: bool | None, env: Any,
            options: dict[str, Any]) -> tuple[bytes | None, tuple[str, str] | None]:
    """subprocess.run's argument rules: the input as bytes, and (encoding, errors) when the
    output is to be decoded. env lands in options. Raises ValueError where subprocess does."""
    if input is not None and stdin is not None:
        raise ValueError("stdin and input arguments may not both be used.")
    if capture_output and (stdout is not None or stderr is not None):
        raise ValueError("stdout and stderr arguments may not be used with capture_output.")
    if text is not None and universal_newlines is not None and bool(text) != bool(universal_newlines):
        raise ValueError("Cannot disambiguate when both text and universal_newlines are supplied "
                         "but different. Pass one or the other.")
    from .supervisor import check_stdio
    check_stdio(stdin, stdout, stderr)
    decode = None
    if text or universal_newlines or encoding is not None or errors is not None:
        # utf-8 rather than the caller's locale (the jail's is not the caller's), and errors
        # "replace": an untrusted program's bad bytes must not turn its Result into an exception
        decode = (encoding or "utf-8", errors or "replace")
    if env is not None:
        if "env" in options:
            raise ValueError("env given twice")
        if hasattr(env, "items"):
            options["env"] = [f"{k}={v}" for k, v in env.items()]
        elif isinstance(env, (str, bytes)):
            raise ValueError("env: give a mapping of names to values")
        else:
            options["env"] = list(env)
    if isinstance(input, str):
        input = input.encode(*(decode or ("utf-8", "strict")))
    elif input is not None and not isinstance(input, bytes):
        input = bytes(memoryview(input))  # subprocess takes any bytes-like object
    return input, decode


def _finish(result: Result, decode: tuple[str, str] | None, check: bool) -> Result:
    from .errors import JailFailed
    if decode is not None:  # as subprocess's text mode: decoded, universal newlines
        for name in ("stdout", "stderr"):
            value = getattr(result, name)
            if value is not None:
                setattr(result, name, value.decode(*decode).replace("\r\n", "\n")
                        .replace("\r", "\n"))
    if check and result.status != 0:
        raise JailFailed(result)
    return result


def spec_of(cmd: Sequence[str] | Spec, timeout: float | None, options: dict[str, Any]) -> Spec:
    """The Spec of a call, with --keep-env resolved here: the fork server has its own environment."""
    from .errors import SpecError
    from .spec import Spec
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
            options = profiles.merge(profiles.load(profile),
                                     {k.replace("_", "-"): v for k, v in options.items()})
        spec = Spec.from_options(cmd, options)
    if timeout is not None and isinstance(cmd, Spec):
        spec = spec.replace(time_limit=float(timeout))
    if spec.keep_env:
        kept = tuple((k, os.environ[k]) for k in spec.keep_env if k in os.environ)
        spec = spec.replace(env=kept + spec.env, keep_env=())
    return spec
