"""Issue 15 item 3: `isol8r mcp` speaks the Model Context Protocol over stdio. Checked with the
official SDK's own stdio client against `python -m isol8r mcp` (real jails): the tools create a
sandbox, run commands in it (exit code, verdict, stdout, stderr), write, read and list its
files, and remove it; the profile and limits are the server's command line, and no tool lets
the model change them; a command never reads the protocol's stdin.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from mcp import ClientSession, StdioServerParameters  # the extra isol8r[mcp] (make install)
from mcp.client.stdio import stdio_client

from conftest import ROOT, alive, children, cli, needs_root

pytestmark = needs_root
TOOLS = {"create_sandbox", "run_command", "write_file", "read_file", "list_files",
         "remove_sandbox"}


def session(*server_args: str, check: Any) -> None:
    """Start `python -m isol8r mcp SERVER_ARGS` and run the coroutine check(session) on a
    client session of it; the server ends when the client closes its stdin."""
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "isol8r", "mcp", *server_args],
                                   env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))

    async def main() -> None:
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as s:
                await s.initialize()
                await asyncio.wait_for(check(s), 120)
    asyncio.run(main())


async def call(s: ClientSession, tool: str, **args: Any) -> dict[str, Any]:
    res = await s.call_tool(tool, args)
    assert not res.isError, (tool, res.content)
    assert res.structuredContent is not None
    return res.structuredContent


async def error(s: ClientSession, tool: str, **args: Any) -> str:
    res = await s.call_tool(tool, args)
    assert res.isError, (tool, res)
    return res.content[0].text  # type: ignore[union-attr]


def test_tools_create_run_files_remove() -> None:
    async def check(s: ClientSession) -> None:
        tools = {t.name: t for t in (await s.list_tools()).tools}
        assert set(tools) == TOOLS
        sid = (await call(s, "create_sandbox"))["sandbox_id"]
        r = await call(s, "run_command", sandbox_id=sid,
                       command="echo out; echo err >&2; id -u; exit 3")
        assert (r["exit_code"], r["verdict"], r["stdout"], r["stderr"]) == \
            (3, "nonzero-exit", "out\n65534\n", "err\n")
        r = await call(s, "run_command", sandbox_id=sid, command="tr a-z A-Z", stdin="shout")
        assert (r["exit_code"], r["verdict"], r["stdout"]) == (0, "ok", "SHOUT")
        # files persist between calls, and commands see them
        w = await call(s, "write_file", sandbox_id=sid, path="/tmp/prog.sh",
                       content="echo ünïcode $1\n")
        assert w["bytes"] == len("echo ünïcode $1\n".encode())
        r = await call(s, "run_command", sandbox_id=sid, command="sh /tmp/prog.sh x > /tmp/o")
        assert r["exit_code"] == 0, r
        assert (await call(s, "read_file", sandbox_id=sid, path="/tmp/o"))["content"] == \
            "ünïcode x\n"
        assert (await call(s, "list_files", sandbox_id=sid, path="/tmp"))["names"] == \
            ["o", "prog.sh"]
        assert "/tmp/missing" in await error(s, "read_file", sandbox_id=sid, path="/tmp/missing")
        # a second sandbox is another jail: it sees none of the first one's files
        other = (await call(s, "create_sandbox"))["sandbox_id"]
        assert other != sid
        assert (await call(s, "list_files", sandbox_id=other, path="/tmp"))["names"] == []
        await call(s, "remove_sandbox", sandbox_id=other)
        assert (await call(s, "remove_sandbox", sandbox_id=sid))["removed"] == sid
        assert "no sandbox" in await error(s, "run_command", sandbox_id=sid, command="true")
    session(check=check)


def test_limits_are_the_servers_not_the_models() -> None:
    async def check(s: ClientSession) -> None:
        tools = {t.name: t for t in (await s.list_tools()).tools}
        # nothing the model sends can name a limit or an isolation option
        assert set(tools["create_sandbox"].inputSchema.get("properties", {})) == set()
        assert set(tools["run_command"].inputSchema["properties"]) == \
            {"sandbox_id", "command", "stdin", "cwd"}
        sid = (await call(s, "create_sandbox"))["sandbox_id"]
        r = await call(s, "run_command", sandbox_id=sid, command="sleep 30")
        assert r["verdict"] == "time-limit", r
        r = await call(s, "run_command", sandbox_id=sid,
                       command="head -c 100000 /dev/zero | tr '\\0' x")
        assert r["verdict"] == "output-limit" and r["stdout_truncated"], r
        assert len(r["stdout"]) <= 1024
        # unknown arguments (a model asking for more) change nothing
        res = await s.call_tool("run_command", {"sandbox_id": sid, "command": "sleep 30",
                                                "time_limit": 100})
        assert res.isError or res.structuredContent["verdict"] == "time-limit"  # type: ignore
        r = await call(s, "run_command", sandbox_id=sid,
                       command="/usr/bin/python3 -c 'b = bytearray(200 << 20); print(len(b))'")
        assert r["verdict"] == "memory-limit", r
    session("--time-limit", "1", "--output-limit", "1K", "--memory", "64M", check=check)


def test_a_command_never_reads_the_protocols_stdin() -> None:
    """stdin is /dev/null without input: cat ends at once, and the session goes on."""
    async def check(s: ClientSession) -> None:
        sid = (await call(s, "create_sandbox"))["sandbox_id"]
        r = await call(s, "run_command", sandbox_id=sid, command="cat; echo done")
        assert (r["verdict"], r["stdout"]) == ("ok", "done\n"), r
        assert (await call(s, "list_files", sandbox_id=sid, path="/"))["names"]
    session(check=check)


def test_max_sandboxes() -> None:
    async def check(s: ClientSession) -> None:
        await call(s, "create_sandbox")
        assert "--max-sandboxes" in await error(s, "create_sandbox")
    session("--max-sandboxes", "1", check=check)


@pytest.mark.parametrize("args, word", [(["--memory", "lots"], "lots"),
                                        (["--max-sandboxes", "0"], "--max-sandboxes"),
                                        (["--idle-timeout", "-1"], "--idle-timeout")])
def test_bad_server_options_are_one_line(args: list[str], word: str) -> None:
    p = cli("mcp", *args, stdin=subprocess.DEVNULL)
    assert p.returncode == 125 and word in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert p.stdout == ""


def test_the_sandboxes_end_with_the_server() -> None:
    """The client closing the server ends every sandbox it held: no process of the server's
    tree (its fork server, the sandboxes' jails) is left."""
    tree: list[int] = []

    async def check(s: ClientSession) -> None:
        sid = (await call(s, "create_sandbox"))["sandbox_id"]
        await call(s, "run_command", sandbox_id=sid, command="true")
        servers = [p for p in children() if b"mcp" in open(f"/proc/{p}/cmdline", "rb").read()]
        assert len(servers) == 1
        todo = list(servers)
        while todo:  # the server, its fork server, and the sandbox's jail under it
            pid = todo.pop()
            tree.append(pid)
            todo += children(pid)
        assert len(tree) >= 3, tree
    session(check=check)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in tree if alive(p)]
