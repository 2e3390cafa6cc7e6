"""python -m isol8r: the command; `--cli-server SOCKET FD` is the CLI server's process (cli.serve)."""

import sys

if sys.argv[1:2] == ["--cli-server"]:
    from .cli import serve
    serve(sys.argv[2], int(sys.argv[3]))
    raise SystemExit(0)

from .cli import entry

raise SystemExit(entry())
