"""`isol8r doctor`: what this environment allows, and which of isol8r's features follow.

Why a command: "it does not work in my container" is the most common complaint about every
namespace sandbox, and the answer is always one of a dozen kernel settings. Each line here
is asked of the kernel itself (a probe clone, a Landlock ABI query, a mountinfo read), never
guessed from a distribution's defaults, so the report is right inside Docker, podman,
Kubernetes, another jail or a plain host. docs/environments.md says what to change.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

from . import cgroups, landlock, usernet, walls
from .sys import linux


def facts() -> dict[str, Any]:
    """What the kernel allows this process, each probed."""
    f: dict[str, Any] = {
        "kernel": os.uname().release,
        "arch": os.uname().machine,
        "euid": os.geteuid(),
        "host user namespace": walls.initial_userns(),
        "root of the host": walls.host_root(),
    }
    refused = walls.userns_refused()
    f["user namespaces"] = "yes" if refused is None else refused
    f["user.max_user_namespaces"] = walls.read_int("/proc/sys/user/max_user_namespaces")
    for name, path in (("kernel.unprivileged_userns_clone",
                        "/proc/sys/kernel/unprivileged_userns_clone"),
                       ("kernel.apparmor_restrict_unprivileged_userns",
                        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns")):
        value = walls.read_int(path)
        if value is not None:
            f[name] = value
    f["fresh /proc"] = "no: the outer /proc has masked submounts" if walls.proc_masked() \
        else "yes"
    f["clone3"] = "refused (clone(2) is used instead)" if walls.clone3_refused() else "yes"
    f["cgroup"] = _cgroup()
    f["landlock ABI"] = landlock.abi()
    f["seccomp"] = _seccomp()
    f["no_new_privs already set"] = bool(linux.prctl(linux.PR_GET_NO_NEW_PRIVS))
    f["user-mode network"] = usernet.available() or "none (install passt or slirp4netns)"
    f["/dev/net/tun"] = os.path.exists("/dev/net/tun")
    f["idmapped mounts"] = _idmap()
    f["subordinate ids"] = _subids()
    return f


def _cgroup() -> dict[str, Any]:
    try:
        layout = cgroups.detect()
    except OSError as e:
        return {"version": None, "why": str(e)}
    out: dict[str, Any] = {"version": 2 if layout.v2 is not None and not layout.v1 else
                           "1 (hybrid: v2 mounted too)" if layout.v2 is not None else
                           1 if layout.v1 else None}
    if layout.v2 is not None:
        path = layout.v2.fs_path(layout.v2.current)
        try:
            with open(os.path.join(path or "", "cgroup.controllers")) as fh:
                out["v2 controllers here"] = fh.read().split()
        except OSError:
            out["v2 controllers here"] = []
        out["v2 writable"] = bool(path) and os.access(path or "", os.W_OK)
    if layout.v1:
        out["v1 controllers"] = sorted(layout.v1)
    why = cgroups.available(limits=cgroups.Limits(memory=64 << 20, pids=64))
    out["jail groups"] = "yes" if why is None else why
    return out


def _seccomp() -> str:
    mode = ""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Seccomp:"):
                    mode = line.split()[1]
    except OSError:
        pass
    return {"0": "yes (no filter on this process)", "2": "yes (this process is already "
            "filtered: a jail's filter stacks on it)", "1": "strict mode: no jail can run"}.get(
        mode, "unknown")


def _idmap() -> str:
    """open_tree and an idmapped copy of /tmp: what --rootfs without chown needs (root)."""
    try:
        fd = linux.open_tree("/tmp", recursive=False)
    except OSError as e:
        return f"no: open_tree: {os.strerror(e.errno or 0)} (needs CAP_SYS_ADMIN)"
    try:
        if not walls.host_root():
            return "open_tree works; idmapping needs root of the host"
        from . import userns
        linux.idmap_tree(fd, userns.owner_ns(0, 0, 65534, 65534))
        return "yes"
    except OSError as e:
        return f"no: {e}"
    finally:
        os.close(fd)


def _subids() -> str:
    import pwd
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = str(os.geteuid())
    tools = [t for t in ("newuidmap", "newgidmap") if shutil.which(t)]
    granted = []
    for path in ("/etc/subuid", "/etc/subgid"):
        try:
            with open(path) as fh:
                if any(line.split(":")[0] in (name, str(os.geteuid())) for line in fh):
                    granted.append(path)
        except OSError:
            pass
    return (f"{', '.join(tools) or 'no newuidmap/newgidmap'}; "
            f"{' and '.join(granted) or 'no /etc/subuid or /etc/subgid entry'} for {name}")


def features(f: dict[str, Any]) -> list[tuple[str, str]]:
    """Which isol8r features follow from the facts: (feature, what it does here)."""
    out = []
    if f["root of the host"]:
        out.append(("jail", "every wall; no fallback is ever taken (all walls or fail)"))
    elif f["user namespaces"] == "yes":
        out.append(("jail", "user, PID, mount, network, IPC, UTS and cgroup namespaces"))
    else:
        abi = f["landlock ABI"]
        out.append(("jail", "bare: " + f["user namespaces"] + "; the run gets Landlock " +
                    (f"(ABI {abi}: filesystem" + (", TCP" if abi >= 4 else "") +
                     (", signal scoping" if abi >= 6 else "") + ")" if abi else "(absent!)") +
                    ", seccomp, no_new_privs, rlimits, a new session"))
    bare = not f["root of the host"] and f["user namespaces"] != "yes"
    out.append(("/proc", "the caller's own (no mount namespace)" if bare else
                "a fresh one" if f["fresh /proc"] == "yes" else
                "the outer one bound read-only, reported (--proc fresh fails; "
                "--proc none for no /proc)"))
    cg = f["cgroup"]
    out.append(("--memory/--pids/--cpus/--cpu-limit", f"cgroup v{cg['version']}" if
                cg.get("jail groups") == "yes" else
                f"rlimits instead ({cg.get('jail groups') or cg.get('why')})"))
    net = f["user-mode network"]
    out.append(("--net user", f"{net[0]}" if isinstance(net, list) and f["/dev/net/tun"]
                else "unavailable: " + ("no /dev/net/tun" if isinstance(net, list) else net)))
    out.append(("--seccomp / --seccomp-profile", "yes" if f["seccomp"].startswith("yes")
                else "no"))
    out.append(("--rootfs owned by any uid (idmapped)", "yes" if f["idmapped mounts"] == "yes"
                else "no: a prepared root is used as its owner's"))
    return out


def main(argv: list[str]) -> int:
    """isol8r doctor [--json]"""
    if argv and argv[0] in ("-h", "--help"):
        print("usage: isol8r doctor [--json]\n\nWhat this environment allows (user namespaces, "
              "cgroups, Landlock, seccomp, user-mode networks, clone3, idmapped mounts) and "
              "which isol8r features follow (docs/environments.md).")
        return 0
    if argv and argv != ["--json"]:
        print(f"isol8r: doctor: unknown argument {argv[0]!r} (isol8r doctor [--json])",
              file=sys.stderr)
        return 125
    f = facts()
    feats = features(f)
    if argv == ["--json"]:
        print(json.dumps({"environment": f, "features": dict(feats)}, indent=2))
        return 0
    print("environment:")
    for k, v in f.items():
        if isinstance(v, dict):
            v = "; ".join(f"{a}: {' '.join(b) if isinstance(b, list) else b}"
                          for a, b in v.items())
        elif isinstance(v, list):
            v = ", ".join(v)
        print(f"  {k}: {v}")
    print("isol8r here:")
    for name, what in feats:
        print(f"  {name}: {what}")
    return 0
