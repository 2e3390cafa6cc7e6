"""Jail profiles: TOML files whose keys are the CLI's long option names, so a user who knows the
CLI knows the file. Shipped profiles live in data/profiles; docs/profiles.md describes them.

Precedence: a profile gives the starting values, the command line (or the library's keywords)
overrides them. A value option given again replaces the file's value; a list option (--ro-bind,
--env, --seccomp-deny, ...) adds to the file's entries, as repeating the flag does (see merge()).
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any, Mapping

from .errors import SpecError
from .spec import OPTIONS, Spec

SHIPPED = Path(__file__).resolve().parent / "data" / "profiles"


def names() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.toml"))


def locate(name_or_file: str | os.PathLike[str]) -> Path:
    """The file of a shipped profile's name, or a path to a TOML file.

    A bare name (no '/', no .toml suffix) means the shipped profile even if a file of that name
    is in the current directory: `--profile judge` must not depend on where it is run; write
    ./judge for such a file."""
    text = os.fspath(name_or_file)
    bare = "/" not in text and not text.endswith(".toml")
    shipped = SHIPPED / f"{text}.toml"
    try:
        if bare and text and shipped.is_file():
            return shipped
        p = Path(text)
        if p.is_file():
            return p
    except (OSError, ValueError) as e:  # a name over NAME_MAX (ENAMETOOLONG), a NUL byte
        raise SpecError("--profile", text, getattr(e, "strerror", None) or str(e)) from None
    raise SpecError("--profile", text,
                    f"no such file, nor a shipped profile ({', '.join(names())})")


def load(name_or_file: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a profile; errors name the file, the key and the value.

    Returns the options keyed by long option name, ready for Spec.from_options (a relative
    seccomp-profile is made relative to the profile's directory)."""
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
            hint = key.replace("_", "-")
            why = (f"unknown option; did you mean {hint}?" if hint in OPTIONS else
                   "unknown option (keys are the long option names of isol8r run)")
            raise SpecError(f"{path}: key", key, why)
        if opt.kind == "flag":
            ok = isinstance(value, bool)
        elif opt.kind == "list" and isinstance(value, list):
            ok = all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value)
        else:
            ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        if not ok:
            want = {"flag": "true or false", "list": "a string or a list of strings"}.get(
                opt.kind, "a string or a number")
            raise SpecError(f"{path}: {key}", value, f"expected {want}")
    sp = data.get("seccomp-profile")
    if isinstance(sp, str) and sp and not os.path.isabs(sp):
        data["seccomp-profile"] = str(path.resolve().parent / sp)
    try:
        spec = Spec.from_options(["/bin/true"], data)
    except SpecError as e:
        raise SpecError(f"{path}: {e.field.lstrip('-') or 'key'}", e.value, e.reason) from None
    _check_seccomp(path, spec)
    return data


def _check_seccomp(path: Path, spec: Spec) -> None:
    """Compile the profile's own seccomp options now, so a bad syscall name or JSON profile is
    reported with the file's name. Through the filter cache: after the first time this costs a
    stat and a small read, and the run that follows finds its filter ready."""
    if not (spec.seccomp_profile or spec.seccomp_allow or spec.seccomp_deny):
        return
    from .seccomp import cache
    try:
        cache.jail_filter(spec.seccomp, spec.seccomp_profile, spec.seccomp_allow,
                          spec.seccomp_deny, spec.seccomp_log)
    except SpecError as e:
        if e.field.startswith("--"):
            raise SpecError(f"{path}: {e.field[2:]}", e.value, e.reason) from None
        raise SpecError(f"{path}: seccomp-profile {e.field}".rstrip(), e.value, e.reason) from None


def merge(profile: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A profile's options with the caller's on top (both keyed by option name, '-' or '_').

    A value or flag given by the caller replaces the profile's; a list option is appended to the
    profile's entries (--profile build --tmpfs /cache keeps the profile's /build tmpfs;
    --profile ctf-service --seccomp-deny socket keeps its @debug, @mount and @privileged).
    None means "not given" and changes nothing.
    """
    out = {k.replace("_", "-"): v for k, v in profile.items()}
    for raw_key, value in overrides.items():
        key = raw_key.replace("_", "-")
        if value is None:
            continue
        opt = OPTIONS.get(key)
        if opt is not None and opt.kind == "list" and key in out:
            out[key] = _as_list(out[key]) + _as_list(value)
        else:
            out[key] = value
    return out


def _as_list(value: Any) -> list[Any]:
    return [value] if isinstance(value, (str, int)) else list(value)


def describe(path: Path) -> str:
    """A profile's first comment line is its description."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def main(argv: list[str]) -> int:
    """`isol8r profiles`: the shipped profiles; `isol8r profiles NAME|FILE`: one of them."""
    if argv and argv[0] in ("-h", "--help"):
        print("usage: isol8r profiles [NAME|FILE]\n\n"
              "Lists the jail profiles shipped with isol8r, or prints one (a file too, after\n"
              "checking it). Use one with: isol8r run --profile NAME|FILE -- PROGRAM ...")
        return 0
    if argv:
        path = locate(argv[0])
        if path.parent != SHIPPED:
            load(path)
        sys.stdout.write(path.read_text())
        return 0
    for name in names():
        print(f"{name:12} {describe(SHIPPED / f'{name}.toml')}")
    return 0
