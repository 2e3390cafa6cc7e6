"""`isol8r sandbox create|ls|rm`, `isol8r exec` and `isol8r cp`: sandboxes from the shell.

The sandboxes are held by the sandbox daemon (daemon/sandboxd.py), which the first `create`
starts; these commands are its clients. A run option of `create` is read here, in the caller's
directory and environment (relative paths made absolute, --profile merged, --keep-env
resolved), so that the daemon makes the sandbox the caller described. Exit statuses are
`isol8r run`'s: the command's own for exec, 125 for bad input or a failed setup.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from . import cli
from .daemon import sandboxd
from .errors import Isol8rError, SpecError
from .protocol import SandboxCopy, SandboxCreate, SandboxExec, SandboxList, SandboxRemove

SETUP_FAILED = 125
# the options a command of a sandbox may set for itself (the rest are the sandbox's)
EXEC_OPTIONS = ("env", "keep-env", "cwd", "memory", "pids", "cpus", "cpu-limit", "time-limit",
                "output-limit", "rlimit", "nofile", "nproc", "kill-grace")
# options naming a host path, made absolute in the caller's directory ("SRC:DST": SRC only)
_PATHS = ("rootfs", "overlay-dir", "seccomp-profile", "netns")
_PAIRS = ("bind", "ro-bind", "file")
DAEMON = ["-m", "isol8r.sandboxcli"]  # how the daemon is started: serve() below

SANDBOX_HELP = """usage: isol8r sandbox create [--name N] [--idle-timeout S] [run options]
       isol8r sandbox ls [--json]
       isol8r sandbox rm ID|NAME... | --all

A sandbox stays: one jail, many commands (isol8r exec), files in and out (isol8r cp). It is held
by a daemon started on demand, and lasts until removed or idle past --idle-timeout seconds.
Only the uid that created a sandbox may use or remove it.
"""


class _Parser(__import__("argparse").ArgumentParser):
    """Bad usage is bad input: one line naming it, exit 125 (as `isol8r run`'s parser)."""

    def error(self, message: str) -> Any:
        cli.say(message)
        raise SystemExit(SETUP_FAILED)


def _write(stream: Any, text: str) -> None:
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        pass


def _put(sink: Any, text: str) -> None:
    """A result as JSON, to stdout or to the file --json named."""
    if sink is sys.stdout:
        _write(sys.stdout, text + "\n")
        return
    with sink:
        sink.write(text + "\n")


def _add_options(p: Any, names: Any) -> None:
    from .spec import OPTIONS
    for name in names:
        opt = OPTIONS[name]
        dest = "opt_" + name.replace("-", "_")
        if opt.kind == "flag":
            p.add_argument("--" + name, dest=dest, action="store_true", default=None,
                           help=opt.help)
        elif opt.kind == "list":
            p.add_argument("--" + name, dest=dest, action="append", metavar=opt.metavar,
                           help=opt.help)
        else:
            p.add_argument("--" + name, dest=dest, metavar=opt.metavar, help=opt.help)


def _options(ns: Any, names: Any) -> dict[str, Any]:
    """The options given, by their CLI names."""
    out = {}
    for name in names:
        value = getattr(ns, "opt_" + name.replace("-", "_"), None)
        if value is not None:
            out[name] = value
    return out


def _absolute(options: dict[str, Any]) -> dict[str, Any]:
    """Host paths as the caller meant them (the daemon's directory is not the caller's), and
    --keep-env's values from the caller's environment."""
    out = dict(options)
    for name in _PATHS:
        if isinstance(out.get(name), str) and out[name]:
            out[name] = os.path.abspath(out[name])
    for name in _PAIRS:
        if name in out:
            out[name] = [os.path.abspath(v.split(":", 1)[0]) + v[len(v.split(":", 1)[0]):]
                         for v in out[name]]
    keep = out.pop("keep-env", None)
    if keep:
        kept = [f"{k}={os.environ[k]}" for k in keep if k in os.environ]
        out["env"] = kept + list(out.get("env") or [])
    return out


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    """CLI names to the library's (underscores), checked here (one line naming the bad value
    before the daemon is asked)."""
    from .spec import Spec
    if options.get("pass-fd"):
        raise SpecError("--pass-fd", options["pass-fd"][0], "a sandbox cannot hold the "
                        "caller's descriptors")
    Spec.from_options(["/bin/true"], dict(options))
    return {k.replace("-", "_"): v for k, v in options.items()}


def _fail(e: Exception) -> int:
    e = cli.as_typed(e)
    cli.say(str(e))
    return int(getattr(e, "exit_code", SETUP_FAILED))


# ---- isol8r sandbox ---------------------------------------------------------------------------


def sandbox_main(argv: list[str]) -> int:
    """isol8r sandbox create|ls|rm."""
    if not argv or argv[0] in ("-h", "--help"):
        _write(sys.stdout if argv else sys.stderr, SANDBOX_HELP)
        return 0 if argv else SETUP_FAILED
    action, rest = argv[0], argv[1:]
    try:
        if action == "create":
            return _create(rest)
        if action in ("ls", "list"):
            return _ls(rest)
        if action in ("rm", "remove"):
            return _rm(rest)
    except Isol8rError as e:
        return _fail(e)
    cli.say(f"sandbox {action!r}: unknown action; isol8r sandbox create|ls|rm")
    return SETUP_FAILED


def _create(argv: list[str]) -> int:
    from .spec import OPTIONS
    p = _Parser(prog="isol8r sandbox create", allow_abbrev=False)
    p.add_argument("--name", default="", help="a name to use in place of the id")
    p.add_argument("--idle-timeout", metavar="SECONDS", help="remove it after this long unused")
    p.add_argument("--profile", metavar="FILE|NAME", help="a TOML jail profile; flags override it")
    _add_options(p, [n for n in OPTIONS if n != "pass-fd"])
    ns = p.parse_args(argv)
    idle = None
    if ns.idle_timeout is not None:
        try:
            idle = float(ns.idle_timeout)
        except ValueError:
            idle = -1.0
        if not idle > 0 or idle != idle or idle == float("inf"):
            raise SpecError("--idle-timeout", ns.idle_timeout, "give a positive number of seconds")
    options = _options(ns, OPTIONS)
    if ns.profile:
        from . import profiles
        options = profiles.merge(profiles.load(ns.profile), options)
    options = _plain(_absolute(options))
    done = sandboxd.request(SandboxCreate(ns.name, idle, options), start=DAEMON)
    _write(sys.stdout, done.text + "\n")
    return 0


def _ls(argv: list[str]) -> int:
    p = _Parser(prog="isol8r sandbox ls")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    ns = p.parse_args(argv)
    try:
        rows = json.loads(sandboxd.request(SandboxList()).text)
    except Isol8rError:
        rows = [] if not os.path.exists(sandboxd.path()) else None
        if rows is None:
            raise
    if ns.json:
        _write(sys.stdout, json.dumps(rows, indent=2) + "\n")
        return 0
    import time
    lines = [f"{'ID':<14}{'NAME':<20}{'AGE':>8}  IDLE-TIMEOUT"]
    for r in rows:
        age = f"{time.time() - r['created']:.0f}s"
        idle = "-" if r["idle_timeout"] is None else f"{r['idle_timeout']:g}s"
        lines.append(f"{r['id']:<14}{r['name'] or '-':<20}{age:>8}  {idle}")
    _write(sys.stdout, "\n".join(lines) + "\n")
    return 0


def _rm(argv: list[str]) -> int:
    p = _Parser(prog="isol8r sandbox rm")
    p.add_argument("--all", action="store_true", help="remove every sandbox of yours")
    p.add_argument("ids", nargs="*", metavar="ID|NAME")
    ns = p.parse_args(argv)
    if ns.all == bool(ns.ids):
        raise SpecError("sandbox rm", " ".join(ns.ids) or "(nothing)",
                        "give sandbox ids or names, or --all")
    if ns.all:
        try:
            sandboxd.request(SandboxRemove(""))
        except Isol8rError:
            if os.path.exists(sandboxd.path()):
                raise
        return 0
    code = 0
    for key in ns.ids:
        try:
            sandboxd.request(SandboxRemove(key))
        except Isol8rError as e:
            code = _fail(e)
    return code


# ---- isol8r exec ------------------------------------------------------------------------------


def exec_main(argv: list[str]) -> int:
    """isol8r exec [-t] [--json FILE|-] [command options] ID -- PROGRAM [ARGS...]."""
    import argparse
    p = _Parser(prog="isol8r exec", allow_abbrev=False,
                            usage="isol8r exec [-t] [--json FILE|-] [options] ID -- PROGRAM "
                                  "[ARGS...]")
    p.add_argument("-t", "--tty", dest="opt_tty", action="store_true", default=None,
                   help="a terminal of the jail's own for the command")
    p.add_argument("--json", metavar="FILE", help="write the Result as JSON to FILE ('-': stdout)")
    _add_options(p, EXEC_OPTIONS)
    p.add_argument("sandbox", metavar="ID|NAME")
    p.add_argument("command", nargs=argparse.REMAINDER)
    ns = p.parse_args(argv)
    command = list(ns.command)
    if command[:1] == ["--"]:
        command = command[1:]
    try:
        sink = cli.open_json(ns.json)
    except Isol8rError as e:
        return _fail(e)
    try:
        if not command:
            raise SpecError("command", "", "give the program to run: isol8r exec ID -- PROGRAM")
        options = _absolute(_options(ns, (*EXEC_OPTIONS, "tty")))
        options = {k.replace("-", "_"): v for k, v in options.items()}
        capture = ns.json == "-"
        if ns.opt_tty and _background():
            raise SpecError("-t", True, "isol8r exec -t is a background job here: run it in "
                            "the foreground (the daemon would take your shell's terminal)")
        from . import terminal
        saved = terminal.save(0) if ns.opt_tty else None
        try:
            done = sandboxd.request(SandboxExec(ns.sandbox, [os.fsencode(a) for a in command],
                                                options, capture), [0, 1, 2], relay=True)
        finally:
            terminal.restore(0, saved)
    except Isol8rError as e:
        code = _fail(e)
        if sink is not None:
            _put(sink, cli.failed_result(command, cli.as_typed(e), code))
        return code
    if sink is not None:
        _put(sink, json.dumps(json.loads(done.text), indent=2))
    return done.status


def _background() -> bool:
    """This process is a background job of the terminal on its stdin. The daemon relays the
    terminal, and unlike the CLI server's worker it cannot stop this job and take the terminal
    when `fg` continues it: so -t is refused in the background rather than raw mode set under
    the shell's feet."""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) != os.getpgrp()
    except OSError:
        return False


# ---- isol8r cp --------------------------------------------------------------------------------


def _remote(arg: str) -> tuple[str, str] | None:
    """ID:PATH as (ID, PATH); None for a host path (no colon, or a '/' before the first one)."""
    head, sep, tail = arg.partition(":")
    if not sep or not head or "/" in head:
        return None
    return head, tail


def cp_main(argv: list[str]) -> int:
    """isol8r cp SRC ID:DST | isol8r cp ID:SRC DST."""
    p = _Parser(prog="isol8r cp", usage="isol8r cp SRC ID:DST | isol8r cp ID:SRC DST")
    p.add_argument("src")
    p.add_argument("dst")
    ns = p.parse_args(argv)
    src, dst = _remote(ns.src), _remote(ns.dst)
    try:
        if (src is None) == (dst is None):
            raise SpecError("cp", f"{ns.src} {ns.dst}", "one of SRC and DST must be ID:PATH")
        if dst is not None:
            return _upload(ns.src, *dst)
        assert src is not None
        return _download(*src, ns.dst)
    except Isol8rError as e:
        return _fail(e)


def _upload(host: str, sid: str, path: str) -> int:
    import stat
    try:
        fd = os.open(host, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SpecError("cp", host, e.strerror or str(e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpecError("cp", host, "not a regular file")
        if not path or path.endswith("/"):
            path += os.path.basename(host)
        sandboxd.request(SandboxCopy(sid, os.fsencode(path), True, stat.S_IMODE(st.st_mode)),
                         [fd])
    finally:
        os.close(fd)
    return 0


def _download(sid: str, path: str, host: str) -> int:
    if os.path.isdir(host):
        host = os.path.join(host, os.path.basename(path.rstrip("/")))
    existed = os.path.lexists(host)
    try:
        fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise SpecError("cp", host, e.strerror or str(e)) from None
    try:
        done = sandboxd.request(SandboxCopy(sid, os.fsencode(path), False, 0), [fd])
        os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR))
        if not existed:
            os.fchmod(fd, done.status & 0o777 & ~_umask())
    except BaseException:
        if not existed:
            os.unlink(host)
        raise
    finally:
        os.close(fd)
    return 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- the daemon's process -------------------------------------------------------------------


def serve(sock_path: str, ready_fd: int) -> None:
    """The sandbox daemon's process (`python -m isol8r.sandboxcli SOCKET FD`): the front end
    hands the daemon layer the function that makes a sandbox."""
    from .sandbox import Sandbox

    def make(options: dict[str, Any], idle: float | None) -> Any:
        return Sandbox(idle_timeout=idle, **options)
    sandboxd.serve(sock_path, ready_fd, make)


if __name__ == "__main__":  # pragma: no cover
    serve(sys.argv[1], int(sys.argv[2]))
