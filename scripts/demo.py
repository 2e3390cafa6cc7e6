"""`make demo`: what a jailed program sees, next to what the host sees."""

from __future__ import annotations

import json
import os
import socket
import sys

import isol8r

PROBE = r"""
import json, os, socket
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
mounts = [l.split()[4] for l in open("/proc/self/mountinfo")]
print(json.dumps({
    "pid": os.getpid(),
    "uid/gid": f"{os.getuid()}/{os.getgid()}",
    "uid_map": " ".join(open("/proc/self/uid_map").read().split()),
    "hostname": socket.gethostname(),
    "processes visible": sum(1 for p in os.listdir("/proc") if p.isdigit()),
    "network interfaces": ",".join(n for _, n in socket.if_nameindex()),
    "mounts": f"{len(mounts)}: " + " ".join(mounts[:14]) + (" ..." if len(mounts) > 14 else ""),
    "/ holds": " ".join(sorted(os.listdir("/"))),
    "CapEff / CapBnd": f"{status('CapEff')} / {status('CapBnd')}",
    "NoNewPrivs": status("NoNewPrivs"),
    "seccomp mode": status("Seccomp"),
}))
"""


def main() -> int:
    host = {}
    exec(compile(PROBE.replace("print(json.dumps(", "host.update(("), "probe", "exec"),
         {"host": host, **globals()})
    result = isol8r.run(["python3", "-c", PROBE], capture_output=True)
    if result.status != 0:
        sys.stderr.write(result.stderr.decode() if result.stderr else result.describe())
        return 1
    jail = json.loads(result.stdout)
    width = max(map(len, host))
    print(f"{'':{width}}  {'host':<40}  jail (isol8r run -- python3 ...)")
    for key in host:
        print(f"{key:{width}}  {str(host[key])[:40]:<40}  {jail[key]}")
    print(f"\nverdict: {result.describe()}, setup {result.setup_time * 1e3:.1f} ms, "
          f"run {result.wall_time * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
