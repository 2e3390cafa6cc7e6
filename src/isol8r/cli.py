"""The command line: argparse built from spec.OPTIONS -> Spec -> supervisor -> exit status.

Exit status: the program's own, 128+N when it was killed by signal N, 125 when isol8r could not
set the jail up (or the input was bad), 126 when the program cannot be executed, 127 when it
is not found.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, NoReturn, Sequence

from .errors import Isol8rError, SpecError
from .spec import OPTIONS, Spec

SETUP_FAILED = 125


class _Parser(argparse.ArgumentParser):
    """Bad usage is bad input: one line naming the value, exit 125, no usage dump."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"isol8r: {message}\n")
        raise SystemExit(SETUP_FAILED)


def _run_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="run a program in a jail",
                       usage="isol8r run [options] -- PROGRAM [ARGS...]")
    p.add_argument("-v", "--verbose", action="store_true", help="log each setup step and its time")
    p.add_argument("--dry-run", action="store_true", help="print the Spec as JSON and exit")
    p.add_argument("--json", metavar="FILE", help="write the Result as JSON to FILE ('-': stdout)")
    p.add_argument("--profile", metavar="FILE|NAME", help="a TOML jail profile; flags override it")
    for name, opt in OPTIONS.items():
        dest = "opt_" + name.replace("-", "_")
        if opt.kind == "flag":
            p.add_argument("--" + name, dest=dest, action="store_true", default=None, help=opt.help)
        elif opt.kind == "list":
            p.add_argument("--" + name, dest=dest, action="append", metavar=opt.metavar, help=opt.help)
        else:
            p.add_argument("--" + name, dest=dest, metavar=opt.metavar, help=opt.help)
    p.add_argument("command", nargs=argparse.REMAINDER, help="the program and its arguments")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="isol8r", description="Run an untrusted program in a Linux namespace jail.")
    sub = parser.add_subparsers(dest="cmd", parser_class=_Parser)
    _run_parser(sub)
    sub.add_parser("mkroot", help="build a root filesystem (isol8r mkroot --help)", add_help=False)
    sub.add_parser("check-root", help="check a root filesystem", add_help=False)
    sub.add_parser("policy", help="show or check a seccomp policy", add_help=False)
    sub.add_parser("profiles", help="list the jail profiles shipped with isol8r", add_help=False)
    return parser


def spec_from_args(ns: argparse.Namespace) -> Spec:
    """The run subcommand's arguments (over a profile, if given) as a Spec."""
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


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("mkroot", "check-root", "policy", "profiles"):
        return _delegate(args[0], args[1:])
    parser = build_parser()
    if not args or args[0] not in ("run", "-h", "--help"):
        # `isol8r -- prog` and `isol8r --share-net prog` read as `isol8r run ...`
        args = ["run", *args]
    ns = parser.parse_args(args)
    try:
        spec = spec_from_args(ns)
        if ns.dry_run:
            _write(sys.stdout, spec.to_json() + "\n")
            return 0
        from . import supervisor
        log = (lambda m: sys.stderr.write(f"isol8r: {m}\n")) if ns.verbose else None
        t0 = time.monotonic()
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
    """Subcommands that live with their concern: mkroot and check-root, policy, profiles."""
    try:
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
    p = _Parser(prog="isol8r policy")
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
