"""python -m isol8r"""

from .cli import main

raise SystemExit(main())
