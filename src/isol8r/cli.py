"""The command line: argparse built from spec.OPTIONS -> Spec -> supervisor -> exit status.

Exit status: the program's own, 128+N when it was killed by signal N, 125 when isol8r could not
set the jail up (or the input was bad), 126 when the program cannot be executed, 127 when it
is not found.
"""

from __future__ import annotations

import os
import sys
import time
TYPE_CHECKING = False  # not `typing`: a run through the CLI server must not import it

if TYPE_CHECKING:
    from typing import Any, NoReturn, Sequence

    import argparse

    from .spec import Spec

# Imports are lazy: a run through the CLI server (daemon/cliserver.py) needs none of this module's
# machinery in the client, and every module imported at start costs every run.

SETUP_FAILED = 125
SERVER_HELP = """usage: isol8r server status|stop

The CLI server: the first `isol8r run` of root starts it, later runs are its thin clients, and it
leaves after 60 s without work (ISOL8R_SERVER_IDLE). ISOL8R_CLI_SERVER=0 runs the command in its
own process instead.

  status  say whether this installation's server is running
  stop    stop it (runs under way finish first)
"""
# Commands other than run, each served by a main(argv) -> int of the module that owns it (one
# line each: "name": "module:function", the module relative to this package). Imported when
# the command is used.
SUBCOMMANDS = {
    "mkroot": "rootfs:mkroot_main",
    "check-root": "rootfs:check_root_main",
    "policy": "cli:policy_main",
    "profiles": "profiles:main",
    "server": "daemon.cliserver:main",
    "listen": "daemon.listen:main",
    "run-connected": "connected:main",
    "doctor": "doctor:main",
    "isolate": "isolate:main",
    "check-environment": "checkenv:main",
    "sandbox": "sandboxcli:sandbox_main",
    "exec": "sandboxcli:exec_main",
    "cp": "sandboxcli:cp_main",
    "mcp": "mcpserver:main",
}
_PARSER: Any = None


def _parser_class() -> type:
    import argparse

    class _Parser(argparse.ArgumentParser):
        """Bad usage is bad input: one line naming the value, exit 125, no usage dump."""

        def error(self, message: str) -> NoReturn:
            say(message + _option_hint(message))
            raise SystemExit(SETUP_FAILED)
    return _Parser


def _option_hint(message: str) -> str:
    """'; did you mean --memory?' for an unknown option close to a real one of `isol8r run`."""
    import difflib

    from .spec import OPTIONS
    if "unrecognized arguments: " not in message:
        return ""
    words = message.split("unrecognized arguments: ", 1)[1].split()
    typed = next((w.split("=", 1)[0] for w in words if w.startswith("--")), None)
    known = ["--" + n for n in OPTIONS] + ["--verbose", "--dry-run", "--json", "--profile"]
    close = difflib.get_close_matches(typed, known, n=1, cutoff=0.75) if typed else []
    return f"; did you mean {close[0]}?" if close else ""


def _run_parser(sub: Any) -> argparse.ArgumentParser:
    import argparse

    from .spec import OPTIONS
    # no abbreviations: `--mem` would name --memory in its messages, and an option added later
    # could make a user's abbreviation ambiguous
    p = sub.add_parser("run", help="run a program in a jail", allow_abbrev=False,
                       usage="isol8r run [options] -- PROGRAM [ARGS...]")
    p.add_argument("-v", "--verbose", action="store_true", help="log each setup step and its time")
    p.add_argument("--dry-run", action="store_true", help="print the Spec as JSON and exit")
    p.add_argument("--json", metavar="FILE", help="write the Result as JSON to FILE ('-': stdout)")
    p.add_argument("--profile", metavar="FILE|NAME", help="a TOML jail profile; flags override it")
    for name, opt in OPTIONS.items():
        dest = "opt_" + name.replace("-", "_")
        names = ["-" + opt.short] if opt.short else []
        if opt.kind == "flag":
            p.add_argument(*names, "--" + name, dest=dest, action="store_true", default=None,
                           help=opt.help)
        elif opt.kind == "list":
            p.add_argument("--" + name, dest=dest, action="append", metavar=opt.metavar, help=opt.help)
        else:
            p.add_argument("--" + name, dest=dest, metavar=opt.metavar, help=opt.help)
    p.add_argument("command", nargs=argparse.REMAINDER, help="the program and its arguments")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The parser, built once per process (the CLI server builds it before forking workers)."""
    global _PARSER
    if _PARSER is not None:
        return _PARSER
    cls = _parser_class()
    parser = cls(prog="isol8r", description="Run an untrusted program in a Linux namespace jail.",
                 allow_abbrev=False)
    parser.add_argument("--version", action="store_true", help="print isol8r's version and exit")
    sub = parser.add_subparsers(dest="cmd", parser_class=cls)
    _run_parser(sub)
    sub.add_parser("mkroot", help="build a root filesystem (isol8r mkroot --help)", add_help=False)
    sub.add_parser("check-root", help="check a root filesystem", add_help=False)
    sub.add_parser("policy", help="show or check a seccomp policy", add_help=False)
    sub.add_parser("profiles", help="list the jail profiles shipped with isol8r", add_help=False)
    sub.add_parser("server", help="the CLI server: isol8r server status|stop", add_help=False)
    _PARSER = parser
    return parser


def spec_from_args(ns: argparse.Namespace) -> Spec:
    """The run subcommand's arguments (over a profile, if given) as a Spec."""
    from .spec import OPTIONS, Spec
    command = list(ns.command)
    if command and command[0] == "--":
        command = command[1:]
    options: dict[str, Any] = {}
    for name in OPTIONS:
        value = getattr(ns, "opt_" + name.replace("-", "_"))
        if value is not None:
            options[name] = value
    if ns.profile:
        from . import profiles
        options = profiles.merge(profiles.load(ns.profile), options)
    return Spec.from_options(command, options)


def entry() -> int:
    """The `isol8r` command (bin/isol8r, python -m isol8r): a run (and `isol8r isolate`, a run
    of a judge's) goes to the CLI server when there is one to use (daemon/cliserver.py),
    everything else to main() in this process."""
    try:
        args = _normalized(sys.argv[1:])
    except UsageError:
        return main()  # it says why
    if args[:1] in (["run"], ["isolate"]) and not {"-h", "--help"} & set(
            args[:args.index("--") if "--" in args else None]):
        from .daemon import cliserver
        code = cliserver.call(args)
        if code is not None:
            os._exit(code)  # nothing of this process needs tearing down: ~2.5 ms saved
    return main(args)


def serve(sock_path: str, ready_fd: int) -> None:
    """The CLI server's process (`python -m isol8r --cli-server SOCKET FD`, which
    cliserver.call starts): its workers run main() as served runs. The entry point lives here,
    in the front end, so that the daemon layer does not import the command line."""
    from .daemon import cliserver
    build_parser()  # built once here, reused by every worker
    cliserver.serve(sock_path, ready_fd, lambda argv: main(argv, served=True))


def _normalized(args: list[str]) -> list[str]:
    """`isol8r -- prog`, `isol8r --share-net prog` and `isol8r ./prog` read as `isol8r run ...`.

    The rule: a first word that is an option, `--`, or a path (it holds a '/') starts a run; any
    other first word must be a command, so a mistyped one (`isol8r runn`) is an error with a
    suggestion rather than a program started in a jail."""
    if not args:
        return ["run"]
    first = args[0]
    if first in SUBCOMMANDS or first in ("run", "-h", "--help", "--version"):
        return args
    if first.startswith("-") or "/" in first:
        return ["run", *args]
    raise UsageError(_unknown_command(first))


class UsageError(Exception):
    """A command line that names no command isol8r has (exit 125, one line)."""


def _unknown_command(word: str) -> str:
    import difflib
    commands = ("run", *SUBCOMMANDS)
    close = difflib.get_close_matches(word, commands, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else f"commands: {', '.join(commands)}; "
    return (f"unknown command {_shown(word)!r}: {hint}"
            f"to run a program of that name: isol8r run -- {_shown(word)}")


def _shown(text: str) -> str:
    """Text as the user typed it, on one line: bytes that were not UTF-8 shown as \\xNN (not as
    surrogates), control characters such as a newline as \\n or \\x1b."""
    text = os.fsencode(text).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def say(message: str) -> None:
    """isol8r's own error: one line on stderr, whatever the values it quotes hold."""
    sys.stderr.write(f"isol8r: {_shown(message)}\n")
    sys.stderr.flush()


def version() -> str:
    """The installed distribution's version (pyproject.toml), else the source tree's."""
    try:
        from importlib.metadata import version as dist_version
        return dist_version("isol8r")
    except Exception:  # not installed (PYTHONPATH=src): the package still answers
        return "unknown"


def main(argv: Sequence[str] | None = None, served: bool = False) -> int:
    """The command, in this process. served: this is a CLI server's worker, which runs the jail
    through the server that forked it rather than cloning it here."""
    try:
        args = _normalized(list(sys.argv[1:] if argv is None else argv))
    except UsageError as e:
        say(str(e))
        return SETUP_FAILED
    if args[0] == "--version":
        _write(sys.stdout, f"isol8r {version()}\n")
        return 0
    if args[0] in SUBCOMMANDS:
        return _delegate(args[0], args[1:])
    if served or not os.isatty(0):  # a served run's client puts its terminal back itself
        return _run(build_parser().parse_args(args), served)
    from . import terminal
    saved = terminal.save(0)
    try:  # the caller's terminal as it was, whatever the jail (or --tty's raw mode) did to it
        return _run(build_parser().parse_args(args), served)
    finally:
        terminal.restore(0, saved)


def _run(ns: argparse.Namespace, served: bool) -> int:
    """One run. With --json, every outcome writes a result, a refused or failed setup included;
    with `--json -` the program's stdout and stderr are captured into it, so stdout holds one
    JSON document and nothing else."""
    from .errors import Isol8rError
    try:
        sink = None if ns.dry_run else open_json(ns.json)
    except Isol8rError as e:
        say(str(as_typed(e)))
        return SETUP_FAILED
    try:
        spec = spec_from_args(ns)
        if ns.dry_run:
            _write(sys.stdout, spec.to_json() + "\n")
            return 0
        log = (lambda m: sys.stderr.write(f"isol8r: {m}\n")) if ns.verbose else None
        t0 = time.monotonic()
        capture = ns.json == "-"
        from . import supervisor
        if served:
            from .daemon import forkserver
            stdio = supervisor.open_stdio(spec, None, None, None, None, capture, lambda _v: None)
            result = forkserver.shared_client().run(spec, stdio, verbose=ns.verbose, log=log,
                                          forward_signals=True)
        else:
            result = supervisor.run(spec, forward_signals=True, verbose=ns.verbose, log=log,
                                    capture_output=capture)
        if ns.verbose:
            for note in result.notes:
                sys.stderr.write(f"isol8r: {note}\n")
            if result.walls:
                sys.stderr.write(f"isol8r: walls: {', '.join(result.walls)}\n")
            for wall, why in result.missing_walls.items():
                sys.stderr.write(f"isol8r: no {wall}: {why}\n")
            for d in result.net_denied or ():
                sys.stderr.write(f"isol8r: net denied: {d['host']}:{d['port']} ({d['reason']})\n")
            sys.stderr.write(f"isol8r: {result.describe()}; setup {result.setup_time * 1e3:.2f} ms, "
                             f"total {(time.monotonic() - t0) * 1e3:.2f} ms\n")
    except Isol8rError as e:
        e = as_typed(e)
        say(str(e))
        code = getattr(e, "exit_code", SETUP_FAILED)
        if sink is not None:
            _put_json(sink, failed_result(_command(ns), e, code))
        return code
    if sink is not None:
        _put_json(sink, result.to_json())
    return result.status


def open_json(target: str | None) -> Any:
    """--json FILE opened before the run: a FILE that cannot be written is refused before the
    program runs, not after it (when its status would be lost). '-' is stdout."""
    from .errors import SpecError
    if target is None or target == "-":
        return sys.stdout if target else None
    try:
        return open(target, "w", encoding="utf-8", errors="surrogateescape")
    except OSError as e:
        raise SpecError("--json", target, f"cannot write: {e.strerror}") from None


def _put_json(sink: Any, text: str) -> None:
    if sink is sys.stdout:
        _write(sys.stdout, text + "\n")
        return
    with sink:
        sink.write(text + "\n")


def failed_result(argv: list[str], e: Exception, code: int) -> str:
    """The JSON result of a run that did not start: verdict setup-error, the step (`options` for
    bad input) and the errno, and status the CLI's exit status (125, 126 or 127)."""
    import errno as errno_names
    import json

    from .errors import SetupError, SpecError
    from .result import Result
    d = Result(argv=tuple(argv), verdict="setup-error", error=_shown(str(e))).to_dict()
    d["status"] = code
    if isinstance(e, SetupError):
        d["step"] = e.step
        d["errno"] = errno_names.errorcode.get(e.errno, e.errno) if e.errno else None
    else:
        d["step"] = "options" if isinstance(e, SpecError) else None
        d["errno"] = None
    if isinstance(e, SpecError):
        d["option"] = e.field or None
    return json.dumps(d, indent=2)


def _command(ns: argparse.Namespace) -> list[str]:
    command = list(ns.command)
    return command[1:] if command[:1] == ["--"] else command


def as_typed(e: Any) -> Any:
    """A SpecError as the command line's user typed it: `--bind` rather than `bind`, and bytes
    that were not UTF-8 as \\xNN."""
    from .errors import SpecError
    from .spec import OPTIONS
    if not isinstance(e, SpecError):
        return e
    field = "--" + e.field if e.field in OPTIONS else e.field
    value = _shown(e.value) if isinstance(e.value, str) else e.value
    if (field, value) == (e.field, e.value):
        return e
    return SpecError(field, value, e.reason)


def _write(stream: Any, text: str) -> None:
    """Write and flush; a reader that went away (`| head`) is not an error of ours."""
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


def _delegate(cmd: str, argv: list[str]) -> int:
    """A command of SUBCOMMANDS, run by the module that owns it; a SpecError is one line."""
    import importlib

    from .errors import SpecError
    if cmd == "server" and argv in (["-h"], ["--help"]):
        _write(sys.stdout, SERVER_HELP)
        return 0
    module, function = SUBCOMMANDS[cmd].split(":")
    try:
        return int(getattr(importlib.import_module(f".{module}", __package__), function)(argv))
    except SpecError as e:
        say(str(e))
        return SETUP_FAILED


def policy_main(argv: list[str]) -> int:
    """isol8r policy show|check NAME|FILE."""
    p = _parser_class()(prog="isol8r policy")
    p.add_argument("action", choices=("show", "check"))
    p.add_argument("target", metavar="NAME|FILE")
    ns = p.parse_args(argv)
    from . import seccomp
    if ns.action == "show":
        print(seccomp.show(ns.target))
    else:
        seccomp.check(ns.target)
        print(f"{ns.target}: ok")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
