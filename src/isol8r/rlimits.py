"""Resource limits: safe defaults that do not break JIT runtimes, plus whatever the user asks."""

from __future__ import annotations

import resource

# No core files (they can hold secrets and fill disks); a bounded number of open files and of
# processes per jail user. No address-space limit by default: JITs reserve huge ranges, and
# memory is better capped by a cgroup.
DEFAULTS: dict[str, tuple[int, int]] = {
    "CORE": (0, 0),
    "NOFILE": (1024, 4096),
    "NPROC": (1024, 1024),
}


def plan(user: tuple[tuple[str, int, int], ...],
         derived: dict[str, tuple[int, int]] | None = None) -> tuple[tuple[int, int, int], ...]:
    """Parent side: (resource, soft, hard) triples: defaults, then limits derived from other
    options (FSIZE from --output-limit; AS, NPROC, CPU where no cgroup can hold --memory,
    --pids, --cpu-limit), then the user's own --rlimit values, which win.
    """
    merged = dict(DEFAULTS)
    merged.update(derived or {})
    for name, soft, hard in user:
        merged[name] = (soft, hard)
    out = []
    for name, (soft, hard) in merged.items():
        res = getattr(resource, "RLIMIT_" + name)
        cur_hard = resource.getrlimit(res)[1]
        if cur_hard != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > cur_hard):
            hard = cur_hard  # only root of the host may raise a hard limit; cap, don't fail
            soft = min(soft, hard) if soft != resource.RLIM_INFINITY else hard
        out.append((res, soft, hard))
    return tuple(out)


def apply(limits: tuple[tuple[int, int, int], ...]) -> None:
    """Child side: set each limit."""
    for res, soft, hard in limits:
        resource.setrlimit(res, (soft, hard))
