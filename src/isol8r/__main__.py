"""python -m isol8r"""

from .cli import entry

raise SystemExit(entry())
