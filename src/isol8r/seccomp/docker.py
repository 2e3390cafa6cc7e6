"""Docker/OCI seccomp profiles (JSON): read one into the model, as runc and Docker would apply it
to this host (its arch and kernel) and to a jail without capabilities.

Why a module of its own: the format has many fields, each checked here so that every error names
the file, the key and the bad value; nothing else in the package knows JSON.
"""

from __future__ import annotations

import errno as _errno
import json
import os
import re
from typing import Any

from ..errors import SpecError
from ..sys.linux import MACHINE
from .abi import LOCAL_ARCHES, NATIVE, is_syscall
from .policy import OPS, U64, Action, Condition, RuleTable

_PROFILE_KEYS = {"defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls",
                 "flags", "listenerPath", "listenerMetadata", "comment"}
_SYSCALL_KEYS = {"names", "name", "action", "errnoRet", "args", "includes", "excludes",
                 "comment"}
_ARG_KEYS = {"index", "value", "valueTwo", "op"}
_FILTER_KEYS = {"arches", "caps", "minKernel"}
_ARCHMAP_KEYS = {"architecture", "subArchitectures"}
_OCI_ACTIONS = {"SCMP_ACT_ALLOW": "allow", "SCMP_ACT_ERRNO": "errno",
                "SCMP_ACT_KILL": "kill-thread",
                "SCMP_ACT_KILL_THREAD": "kill-thread", "SCMP_ACT_KILL_PROCESS": "kill-process",
                "SCMP_ACT_TRAP": "trap", "SCMP_ACT_LOG": "log", "SCMP_ACT_TRACE": "trace"}
_OCI_OPS = {"SCMP_CMP_" + k.upper(): k for k in OPS}
_OCI_FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
              "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"}
#: Go's names for arches, as includes/excludes "arches" use them; native maps to ours.
_GO_ARCHES = {"386", "amd64", "arm", "arm64", "loong64", "mips", "mipsle", "mips64", "mips64le",
              "mips64n32", "mips64len32", "ppc", "ppc64", "ppc64le", "riscv64", "s390", "s390x",
              "x32", "x86", "parisc", "parisc64"}
#: The OCI spec's SCMP_ARCH_* names, lowercased; only this host's ABIs reach the filter.
_OCI_ARCHES = {"x86", "x86_64", "x32", "arm", "aarch64", "mips", "mips64", "mips64n32", "mipsel",
               "mipsel64", "mipsel64n32", "ppc", "ppc64", "ppc64le", "s390", "s390x", "parisc",
               "parisc64", "riscv64", "loongarch64", "m68k", "sh", "sheb"}
_GO_NATIVE = {"x86_64": "amd64", "aarch64": "arm64"}[MACHINE]


class _Profile:
    """Reads one profile file into a RuleTable, naming the file and key in every error."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise SpecError("--seccomp-profile", path, "no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SpecError("--seccomp-profile", path, f"cannot read: {e}") from None
        try:
            self.data = json.loads(text)
        except json.JSONDecodeError as e:
            where = f"line {e.lineno} column {e.colno}"
            raise SpecError("--seccomp-profile", path,
                            f"not valid JSON: {e.msg} at {where}") from None
        if not isinstance(self.data, dict):
            raise SpecError("--seccomp-profile", path, "a profile is a JSON object")

    def err(self, key: str, value: Any, reason: str) -> SpecError:
        return SpecError(f"{self.path} {key}".rstrip(), value, reason)

    def keys(self, obj: Any, known: set[str], where: str) -> dict[str, Any]:
        if obj is None:  # Go writes an empty field as null
            return {}
        if not isinstance(obj, dict):
            raise self.err(where, json.dumps(obj), "expected a JSON object")
        for k in obj:
            if k not in known:
                raise self.err(where, k, "unknown field; known: " + ", ".join(sorted(known)))
        return obj

    def strings(self, obj: Any, where: str) -> list[str]:
        if obj is None:
            return []
        if not isinstance(obj, list) or not all(isinstance(s, str) for s in obj):
            raise self.err(where, json.dumps(obj), "expected a list of strings")
        return obj

    def integer(self, obj: Any, where: str, top: int) -> int:
        if isinstance(obj, bool) or not isinstance(obj, int) or not 0 <= obj <= top:
            raise self.err(where, json.dumps(obj), f"expected an integer from 0 to {top}")
        return obj

    def action(self, name: Any, errno_ret: Any, key: str, errno_key: str) -> Action:
        if name == "SCMP_ACT_NOTIFY":
            raise self.err(key, name, "not supported (it needs a seccomp agent)")
        if name not in _OCI_ACTIONS:
            raise self.err(key, name, "unknown action; known: " + ", ".join(_OCI_ACTIONS))
        kind = _OCI_ACTIONS[name]
        if errno_ret is not None and kind not in ("errno", "trace"):
            raise self.err(errno_key, errno_ret,
                           "only SCMP_ACT_ERRNO and SCMP_ACT_TRACE take an errno")
        if errno_ret is not None:
            return Action(kind, self.integer(errno_ret, errno_key, 4095))
        return Action(kind, _errno.EPERM if kind == "errno" else 0)

    def arches(self) -> tuple[str, ...]:
        d = self.data
        if d.get("architectures") and d.get("archMap"):
            raise self.err("archMap", "architectures", "use either archMap or architectures")
        wanted = [self.scmp_arch(a, "architectures")
                  for a in self.strings(d.get("architectures"), "architectures")]
        arch_map = d.get("archMap") or []
        if not isinstance(arch_map, list):
            raise self.err("archMap", json.dumps(arch_map), "expected a list")
        for i, entry in enumerate(arch_map):
            where = f"archMap[{i}]"
            e = self.keys(entry, _ARCHMAP_KEYS, where)
            main = self.scmp_arch(e.get("architecture"), where + ".architecture")
            subs = [self.scmp_arch(a, where + ".subArchitectures")
                    for a in self.strings(e.get("subArchitectures"), where + ".subArchitectures")]
            if main == NATIVE:
                wanted = [main, *subs]
        out = [NATIVE]
        out += [a for a in dict.fromkeys(wanted) if a in LOCAL_ARCHES and a != NATIVE]
        return tuple(out)

    def scmp_arch(self, value: Any, where: str) -> str:
        name = value[len("SCMP_ARCH_"):].lower() if isinstance(value, str) \
            and value.startswith("SCMP_ARCH_") else ""
        if name not in _OCI_ARCHES:
            raise self.err(where, value, "unknown architecture; known: SCMP_ARCH_"
                           + ", SCMP_ARCH_".join(a.upper() for a in sorted(_OCI_ARCHES)))
        return name

    def applies(self, call: dict[str, Any], where: str) -> bool:
        """Docker's includes/excludes: this host's arch and kernel, and a jail with no caps."""
        for key in ("includes", "excludes"):
            f = self.keys(call.get(key, {}), _FILTER_KEYS, f"{where}.{key}")
            arches = self.strings(f.get("arches", []), f"{where}.{key}.arches")
            for a in arches:
                if a not in _GO_ARCHES:
                    raise self.err(f"{where}.{key}.arches", a,
                                   "unknown arch; known: " + " ".join(sorted(_GO_ARCHES)))
            caps = self.strings(f.get("caps", []), f"{where}.{key}.caps")
            kernel = None
            if "minKernel" in f:
                m = re.fullmatch(r"(\d+)\.(\d+)", str(f["minKernel"]))
                if not isinstance(f["minKernel"], str) or not m:
                    raise self.err(f"{where}.{key}.minKernel", f["minKernel"],
                                   "expected a version like \"4.8\"")
                kernel = _KERNEL >= (int(m[1]), int(m[2]))
            if key == "includes" and (arches and _GO_NATIVE not in arches or caps
                                      or kernel is False):
                return False
            if key == "excludes" and (_GO_NATIVE in arches or kernel is True):
                return False
        return True

    def conditions(self, args: Any, where: str) -> list[tuple[Condition, ...]]:
        """The rule's condition sets. As in runc, when one argument is compared twice, every
        comparison becomes a rule of its own (OR); otherwise they form one rule (AND)."""
        if not isinstance(args, list):
            raise self.err(where, json.dumps(args), "expected a list")
        conds = []
        for i, arg in enumerate(args):
            w = f"{where}[{i}]"
            a = self.keys(arg, _ARG_KEYS, w)
            for k in ("index", "value", "op"):
                if k not in a:
                    raise self.err(w, k, "missing field")
            if a["op"] not in _OCI_OPS:
                raise self.err(w + ".op", a["op"], "unknown op; known: " + ", ".join(_OCI_OPS))
            conds.append(Condition(self.integer(a["index"], w + ".index", 5), _OCI_OPS[a["op"]],
                                   self.integer(a["value"], w + ".value", U64),
                                   self.integer(a.get("valueTwo", 0), w + ".valueTwo", U64)))
        if len({c.index for c in conds}) < len(conds):
            return [(c,) for c in conds]  # libseccomp compares an argument once per rule
        return [tuple(conds)]

    def load(self) -> tuple[Action, tuple[str, ...], RuleTable, list[str]]:
        d = self.keys(self.data, _PROFILE_KEYS, "")
        if "defaultAction" not in d:
            raise self.err("", "defaultAction", "missing field")
        default = self.action(d["defaultAction"], d.get("defaultErrnoRet"), "defaultAction",
                              "defaultErrnoRet")
        for flag in self.strings(d.get("flags", []), "flags"):
            if flag not in _OCI_FLAGS:
                raise self.err("flags", flag, "unknown flag; known: " + ", ".join(_OCI_FLAGS))
        if d.get("listenerPath"):
            raise self.err("listenerPath", d["listenerPath"], "seccomp agents are not supported")
        arches = self.arches()
        table, names_seen = RuleTable(), []
        calls = d.get("syscalls") or []
        if not isinstance(calls, list):
            raise self.err("syscalls", json.dumps(calls), "expected a list")
        for i, call in enumerate(calls):
            where = f"syscalls[{i}]"
            c = self.keys(call, _SYSCALL_KEYS, where)
            if "names" in c and "name" in c:
                raise self.err(where, "name", "use either names or name, not both")
            names = self.strings(c["names"], where + ".names") if "names" in c else \
                self.strings([c["name"]], where + ".name") if "name" in c else []
            if not names:
                raise self.err(where, "names", "missing or empty")
            for n in names:
                if not is_syscall(n):
                    raise self.err(where + (".names" if "names" in c else ".name"), n,
                                   "unknown syscall")
            if "action" not in c:
                raise self.err(where, "action", "missing field")
            action = self.action(c["action"], c.get("errnoRet"), where + ".action",
                                 where + ".errnoRet")
            condsets = self.conditions(c.get("args") or [], where + ".args")
            if not self.applies(c, where):
                continue
            for n in names:
                names_seen.append(n)
                for conds in condsets:
                    table.put(n, action, conds)
        return default, arches, table, names_seen


def read_profile(path: str) -> tuple[Action, tuple[str, ...], RuleTable, list[str]]:
    """A profile's default action, arches, rules, and every syscall name it gave a rule to (in
    order, for the skipped-on-this-host list); raises SpecError naming the file and key."""
    return _Profile(path).load()


def _kernel_version() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(m[1]), int(m[2])) if m else (0, 0)


_KERNEL = _kernel_version()
