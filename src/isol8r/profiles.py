"""Jail profiles: TOML files whose keys are the CLI's long option names, so a user who knows the
CLI knows the file. Shipped profiles live in data/profiles; CLI flags override file values.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

from .errors import SpecError
from .spec import OPTIONS, Spec

SHIPPED = Path(__file__).resolve().parent / "data" / "profiles"


def names() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.toml"))


def locate(name_or_file: str) -> Path:
    """A path to a TOML file, or the name of a shipped profile."""
    p = Path(name_or_file)
    if p.is_file():
        return p
    shipped = SHIPPED / f"{name_or_file}.toml"
    if "/" not in name_or_file and shipped.is_file():
        return shipped
    raise SpecError("--profile", name_or_file,
                    f"no such file, nor a shipped profile ({', '.join(names())})")


def load(name_or_file: str) -> dict[str, Any]:
    """Read and validate a profile; errors name the file, the key and the value."""
    path = locate(name_or_file)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError("--profile", str(path), f"cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError("--profile", str(path), f"not valid TOML: {e}") from None
    for key, value in data.items():
        opt = OPTIONS.get(key)
        if opt is None:
            raise SpecError(f"{path}: key", key, "unknown option (keys are the long option names)")
        ok = (isinstance(value, bool) if opt.kind == "flag" else
              isinstance(value, (str, int, float)) and not isinstance(value, bool) or
              opt.kind == "list" and isinstance(value, list))
        if opt.kind == "list" and isinstance(value, list):
            ok = all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value)
        if not ok:
            want = {"flag": "true or false", "list": "a string or a list of strings"}.get(
                opt.kind, "a string or a number")
            raise SpecError(f"{path}: {key}", value, f"expected {want}")
    try:
        Spec.from_options(["/bin/true"], data)
    except SpecError as e:
        raise SpecError(f"{path}: {e.field.lstrip('-') or 'key'}", e.value, e.reason) from None
    return data


def describe(path: Path) -> str:
    """A profile's first comment line is its description."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def main(argv: list[str]) -> int:
    """`isol8r profiles`: the shipped profiles; `isol8r profiles NAME`: one of them."""
    if argv and argv[0] not in ("-h", "--help"):
        sys.stdout.write(locate(argv[0]).read_text())
        return 0
    if argv:
        print("usage: isol8r profiles [NAME]   (use one with: isol8r run --profile NAME -- ...)")
        return 0
    for name in names():
        print(f"{name:12} {describe(SHIPPED / f'{name}.toml')}")
    return 0
