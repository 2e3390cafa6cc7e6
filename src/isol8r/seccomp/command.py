"""The two verbs of `isol8r policy`: show a policy, a group or a profile; check a profile.

Why a module of its own: these are a front end's texts over the rest of the package; the jail
itself never needs them.
"""

from __future__ import annotations

import os

from ..errors import SpecError
from .abi import NATIVE, split_present
from .compiler import build
from .groups import GROUPS, group_members
from .policy import Policy
from .resolve import resolve_policy


def show(name_or_file: str) -> str:
    """Text for `isol8r policy show NAME|FILE`: default, none, a @group, or a profile file."""
    if name_or_file in ("default", "none"):
        return resolve_policy(name_or_file).describe()
    if name_or_file.startswith("@"):
        if name_or_file not in GROUPS:
            raise SpecError("policy", name_or_file, "unknown group; known: " + " ".join(GROUPS))
        help_text, members = GROUPS[name_or_file]
        names = group_members(name_or_file)
        present, absent = split_present(names, (NATIVE,))
        out = [f"{name_or_file}: {help_text}"]
        nested = [m for m in members if m.startswith("@")]
        if nested:
            out.append(f"includes: {' '.join(nested)}")
        out.append(f"syscalls ({len(present)}): {' '.join(sorted(present))}")
        if absent:
            out.append(f"not on {NATIVE} (skipped): {' '.join(sorted(absent))}")
        return "\n".join(out)
    if not os.path.exists(name_or_file):
        raise SpecError("policy", name_or_file,
                        "not default, none, a @group, or an existing profile file")
    return resolve_policy(profile=name_or_file).describe()


def check(path: str) -> Policy:
    """Load and compile a profile, raising SpecError for anything wrong with it (libseccomp
    rejects some rules a profile can write, so reading the JSON is not enough)."""
    policy = resolve_policy("default", path)
    build(policy)
    return policy
