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

# Imports are lazy: a run through the CLI server (cliserver.py) needs none of this module's
# machinery in the client, and every module imported at start costs every run.

SETUP_FAILED = 125
_SUBCOMMANDS = ("mkroot", "check-root", "policy", "profiles", "server")
_PARSER: Any = None


def _parser_class() -> type:
    import argparse

    class _Parser(argparse.ArgumentParser):
        """Bad usage is bad input: one line naming the value, exit 125, no usage dump."""

        def error(self, message: str) -> NoReturn:
            sys.stderr.write(f"isol8r: {message}\n")
            raise SystemExit(SETUP_FAILED)
    return _Parser


def _run_parser(sub: Any) -> argparse.ArgumentParser:
    import argparse

    from .spec import OPTIONS
    p = sub.add_parser("run", help="run a program in a jail",
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
    parser = cls(prog="isol8r", description="Run an untrusted program in a Linux namespace jail.")
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
    """The `isol8r` command (bin/isol8r, python -m isol8r): a run goes to the CLI server when
    there is one to use (cliserver.py), everything else to main() in this process."""
    args = _normalized(sys.argv[1:])
    if args[:1] == ["run"] and not {"-h", "--help"} & set(args[:args.index("--") if "--" in args
                                                            else None]):
        from . import cliserver
        code = cliserver.call(args)
        if code is not None:
            os._exit(code)  # nothing of this process needs tearing down: ~2.5 ms saved
    return main(args)


def _normalized(args: list[str]) -> list[str]:
    """`isol8r -- prog` and `isol8r --share-net prog` read as `isol8r run ...`."""
    if args and args[0] in _SUBCOMMANDS:
        return args
    if not args or args[0] not in ("run", "-h", "--help"):
        return ["run", *args]
    return args


def main(argv: Sequence[str] | None = None, served: bool = False) -> int:
    """The command, in this process. served: this is a CLI server's worker, which runs the jail
    through the server that forked it rather than cloning it here."""
    args = _normalized(list(sys.argv[1:] if argv is None else argv))
    if args[0] in _SUBCOMMANDS:
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
    from .errors import Isol8rError
    try:
        spec = spec_from_args(ns)
        if ns.dry_run:
            _write(sys.stdout, spec.to_json() + "\n")
            return 0
        log = (lambda m: sys.stderr.write(f"isol8r: {m}\n")) if ns.verbose else None
        t0 = time.monotonic()
        from . import supervisor
        if served:
            import isol8r
            stdio = supervisor.open_stdio(spec, None, None, None, None, False, lambda _v: None)
            result = isol8r._client().run(spec, stdio, verbose=ns.verbose, log=log,
                                          forward_signals=True)
        else:
            result = supervisor.run(spec, forward_signals=True, verbose=ns.verbose, log=log)
        if ns.verbose:
            sys.stderr.write(f"isol8r: {result.describe()}; setup {result.setup_time * 1e3:.2f} ms, "
                             f"total {(time.monotonic() - t0) * 1e3:.2f} ms\n")
    except Isol8rError as e:
        sys.stderr.write(f"isol8r: {e}\n")
        return getattr(e, "exit_code", SETUP_FAILED)
    if ns.json:
        text = result.to_json() + "\n"
        if ns.json == "-":
            _write(sys.stdout, text)
        else:
            with open(ns.json, "w") as f:
                f.write(text)
    return result.status


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
    """Subcommands that live with their concern: mkroot and check-root, policy, profiles, the
    CLI server."""
    from .errors import SpecError
    try:
        if cmd == "server":
            from . import cliserver
            return cliserver.main(argv)
        if cmd == "mkroot":
            from . import rootfs
            return rootfs.mkroot_main(argv)
        if cmd == "check-root":
            from . import rootfs
            return rootfs.check_root_main(argv)
        if cmd == "policy":
            return _policy(argv)
        from . import profiles
        return profiles.main(argv)
    except SpecError as e:
        sys.stderr.write(f"isol8r: {e}\n")
        return SETUP_FAILED


def _policy(argv: list[str]) -> int:
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
