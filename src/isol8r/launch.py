"""The environment of a helper process started as `python -m isol8r...` (the CLI server, the
sandbox daemon, a fork server, a jail's egress proxy and port forwarder).

Why one place: each must import this same package, whatever the caller's PYTHONPATH says and
whether or not the package is installed, so this package's parent directory goes first.
Built-in imports only: the CLI's thin client calls it when it starts its server.
"""

from __future__ import annotations

import os

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def package_env() -> dict[str, str]:
    """This process's environment, with this package's parent first on PYTHONPATH."""
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = PACKAGE_PARENT + (os.pathsep + old if old else "")
    return env
