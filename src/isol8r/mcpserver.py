"""`isol8r mcp [run options]`: isol8r as a code-execution tool for any MCP client.

A Model Context Protocol server over stdio, made with the official `mcp` SDK (the optional
extra `isol8r[mcp]`). Its tools create a sandbox, run a command in it, read, write and list its
files, and remove it. The jail's shape and limits are this server's own command line, read
once at start: a model chooses commands and files, never the walls around them. Defaults that
keep an unattended model's run bounded apply unless the command line sets them: a 60 s time
limit and 1 MiB of output per command, at most 8 sandboxes at once.

The sandboxes are the library's (isol8r.Sandbox) and belong to this process: they end with it
(the client closing the server ends them all) or at remove_sandbox. The server's stdin and
stdout are the protocol's; a command never sees them (its stdin is /dev/null or the input
given, its output is captured).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from typing import Any

from . import cli
from .errors import Isol8rError, SpecError

SETUP_FAILED = 125
DEFAULTS = {"time-limit": "60", "output-limit": "1M"}  # unless the command line sets them
MAX_READ = 1 << 20  # read_file returns at most this many bytes (the rest is said to be cut)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        cli.say(message)
        raise SystemExit(SETUP_FAILED)


def parse(argv: list[str]) -> tuple[dict[str, Any], float | None, int]:
    """The server's command line: the sandboxes' run options (as the library takes them), their
    idle timeout, and how many may exist at once. Checked here, before any client talks."""
    from .spec import OPTIONS, Spec
    p = _Parser(prog="isol8r mcp", allow_abbrev=False,
                description="An MCP server (stdio) whose tools run commands in isol8r sandboxes "
                            "made with these run options.")
    p.add_argument("--profile", metavar="FILE|NAME", help="a TOML jail profile; flags override it")
    p.add_argument("--idle-timeout", metavar="SECONDS", type=float,
                   help="remove a sandbox after this long unused")
    p.add_argument("--max-sandboxes", metavar="N", type=int, default=8,
                   help="sandboxes that may exist at once (default 8)")
    for name, opt in OPTIONS.items():
        if name in ("pass-fd", "tty"):
            continue
        dest = "opt_" + name.replace("-", "_")
        if opt.kind == "flag":
            p.add_argument("--" + name, dest=dest, action="store_true", default=None,
                           help=opt.help)
        else:
            p.add_argument("--" + name, dest=dest, metavar=opt.metavar, help=opt.help,
                           action="append" if opt.kind == "list" else "store")
    ns = p.parse_args(argv)
    options: dict[str, Any] = dict(DEFAULTS)
    for name in OPTIONS:
        value = getattr(ns, "opt_" + name.replace("-", "_"), None)
        if value is not None:
            options[name] = value
    if ns.profile:
        from . import profiles
        options = profiles.merge(profiles.load(ns.profile), options)
    if ns.idle_timeout is not None and not ns.idle_timeout > 0:
        raise SpecError("--idle-timeout", ns.idle_timeout, "give a positive number of seconds")
    if ns.max_sandboxes < 1:
        raise SpecError("--max-sandboxes", ns.max_sandboxes, "give at least 1")
    Spec.from_options(["/bin/true"], dict(options))  # bad input: one line now, not per tool call
    return {k.replace("-", "_"): v for k, v in options.items()}, ns.idle_timeout, ns.max_sandboxes


class Sandboxes:
    """The server's sandboxes by id, each made with the server's options."""

    def __init__(self, options: dict[str, Any], idle: float | None, limit: int) -> None:
        self.options, self.idle, self.limit = options, idle, limit
        self.held: dict[str, Any] = {}
        self.lock = asyncio.Lock()

    def get(self, sandbox_id: str) -> Any:
        sb = self.held.get(sandbox_id)
        if sb is None or sb.closed:
            self.held.pop(sandbox_id, None)
            raise ValueError(f"no sandbox {sandbox_id!r}: create one with create_sandbox")
        return sb

    async def create(self) -> str:
        import secrets

        from .sandbox import Sandbox
        async with self.lock:
            for sid in [s for s, sb in self.held.items() if sb.closed]:
                del self.held[sid]
            if len(self.held) >= self.limit:
                raise ValueError(f"{self.limit} sandboxes exist already (the server's "
                                 "--max-sandboxes): remove one first")
            sb = await asyncio.to_thread(lambda: Sandbox(idle_timeout=self.idle, **self.options))
            sid = secrets.token_hex(6)
            self.held[sid] = sb
            return sid

    async def remove(self, sandbox_id: str) -> None:
        sb = self.get(sandbox_id)
        del self.held[sandbox_id]
        await asyncio.to_thread(sb.close)

    def close(self) -> None:
        held, self.held = list(self.held.values()), {}
        for sb in held:
            sb.close()


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", "replace")


def build(sandboxes: Sandboxes) -> Any:
    """The FastMCP server and its tools."""
    from mcp.server.fastmcp import FastMCP

    server = FastMCP("isol8r", instructions=(
        "Run commands in isolated Linux sandboxes (isol8r jails). create_sandbox first; files "
        "and processes persist in a sandbox between run_command calls until remove_sandbox. "
        "The sandbox has no network unless the server was started with one."), log_level="ERROR")

    async def _call(fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except Isol8rError as e:
            raise ValueError(str(e)) from None
        except OSError as e:
            raise ValueError(f"{e.filename or ''}: {e.strerror or e}".lstrip(": ")) from None

    @server.tool()
    async def create_sandbox() -> dict[str, Any]:
        """Create a sandbox: a Linux jail whose files and state persist between commands. Its
        isolation, resources and time limits are fixed by the server. Returns its sandbox_id."""
        try:
            sid = await sandboxes.create()
        except Isol8rError as e:
            raise ValueError(str(e)) from None
        return {"sandbox_id": sid}

    @server.tool()
    async def run_command(sandbox_id: str, command: str, stdin: str | None = None,
                          cwd: str | None = None) -> dict[str, Any]:
        """Run a shell command (/bin/sh -c) in the sandbox. Returns exit_code, verdict (ok,
        nonzero-exit, time-limit, memory-limit, signaled, ...), stdout and stderr."""
        sb = sandboxes.get(sandbox_id)
        kw: dict[str, Any] = {"capture_output": True}
        if stdin is None:
            kw["stdin"] = subprocess.DEVNULL  # never the protocol's own stdin
        else:
            kw["input"] = stdin.encode()
        if cwd is not None:
            kw["cwd"] = cwd
        r = await _call(lambda: sb.run(["/bin/sh", "-c", command], **kw))
        return {"exit_code": r.exit_code, "verdict": r.verdict, "stdout": _text(r.stdout),
                "stderr": _text(r.stderr), "stdout_truncated": bool(r.stdout_truncated),
                "stderr_truncated": bool(r.stderr_truncated),
                "wall_time": round(r.wall_time, 4)}

    @server.tool()
    async def write_file(sandbox_id: str, path: str, content: str) -> dict[str, Any]:
        """Write text content (UTF-8) to path in the sandbox, creating or replacing the file."""
        sb = sandboxes.get(sandbox_id)
        data = content.encode()
        await _call(sb.write_file, path, data)
        return {"path": path, "bytes": len(data)}

    @server.tool()
    async def read_file(sandbox_id: str, path: str) -> dict[str, Any]:
        """Read a file of the sandbox as text (UTF-8; at most 1 MiB, truncated says if cut)."""
        sb = sandboxes.get(sandbox_id)
        data = await _call(sb.read_file, path)
        return {"path": path, "content": _text(data[:MAX_READ]), "truncated": len(data) > MAX_READ}

    @server.tool()
    async def list_files(sandbox_id: str, path: str = ".") -> dict[str, Any]:
        """List the names in a directory of the sandbox (default: its working directory)."""
        sb = sandboxes.get(sandbox_id)
        return {"path": path, "names": await _call(sb.listdir, path)}

    @server.tool()
    async def remove_sandbox(sandbox_id: str) -> dict[str, Any]:
        """Remove the sandbox: every process in it is killed and its files are gone."""
        await sandboxes.remove(sandbox_id)
        return {"removed": sandbox_id}

    return server


def main(argv: list[str]) -> int:
    """isol8r mcp [run options]."""
    try:
        options, idle, limit = parse(argv)
    except Isol8rError as e:
        cli.say(str(cli.as_typed(e)))
        return SETUP_FAILED
    try:
        import mcp.server.fastmcp  # noqa: F401
    except ImportError:
        cli.say("isol8r mcp needs the mcp package: pip install 'isol8r[mcp]'")
        return SETUP_FAILED
    sandboxes = Sandboxes(options, idle, limit)
    try:
        build(sandboxes).run("stdio")
    except KeyboardInterrupt:
        pass
    finally:
        sandboxes.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
