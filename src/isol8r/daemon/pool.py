"""Warm jails: set up ahead of need, by shape, so that a caller's jail needs only its Request.

Why: a jail's shape half (namespaces, root, identity, capabilities) is most of its setup time,
and it does not depend on what will run. The fork server keeps PREWARM jails of each recently
used shape waiting (watched: one that fails its setup or dies is dropped, not handed out).

The interface, go-judge's: take(spec) a waiting jail of spec's shape, fit(jail, spec) it to
the caller (its cgroup values, its checks; an unfit jail is discarded and None says so),
discard(jail) one that will not run. One-shot runs use it today; sessions that stay and
listening jails can share it.
"""

from __future__ import annotations

import os
import selectors
import time
from typing import Any

from .. import pipeline, supervisor
from ..errors import Isol8rError
from ..protocol import Timing
from ..spec import Shape, Spec

PREWARM = int(os.environ.get("ISOL8R_PREWARM", "2"))  # warm jails kept per shape (0: none)
_MAX_SHAPES = 4
_WARM_FOR = 60.0  # seconds an unused warm jail is kept

Key = Shape


def key(spec: Spec) -> Key:
    """Jails of one key are interchangeable: the Shape, which also says which kinds of cgroup
    limit (a jail is born in its group, so that its cgroup namespace is rooted there and no
    process of it can be outside; the values are the lease's)."""
    return pipeline.shape(spec)


def poolable(spec: Spec) -> bool:
    """Not --overlay-dir (two mounted overlays must not share an upper dir), not --rw-root (a
    waiting jail would create mount points in a tree its owner may be changing), not --file
    (its copy is read when the jail is made: a waiting jail's could be stale)."""
    return (spec.overlay_dir is None and not spec.rw_root
            and not any(d.kind == "file" for d in spec.data))


def sources(spec: Spec) -> dict[str, tuple[int, int, int, int] | None]:
    """The host paths a jail of this spec opens, by identity (device, inode) and owner: a warm
    jail is only handed out while each path still names what it opened, owned as it was (a
    writable bind is idmapped with its source's owner when the jail is made)."""
    paths = [spec.rootfs] if spec.rootfs else []
    paths += [m.src for m in spec.mounts if m.src]
    out: dict[str, tuple[int, int, int, int] | None] = {}
    for p in paths:
        try:
            st = os.stat(p)
            out[p] = (st.st_dev, st.st_ino, st.st_uid, st.st_gid)
        except OSError:
            out[p] = None
    return out


class _Waiting:
    """A warm jail while it waits: namespaces, root, identity and capabilities done, its
    Request not yet sent. Its channel and pidfd are watched in the server's selector."""

    def __init__(self, pool: Pool, key: Key, jail: supervisor.Jail,
                 sources: dict[str, tuple[int, int, int, int] | None]) -> None:
        self.pool, self.key, self.jail, self.born = pool, key, jail, time.monotonic()
        self.sources = sources  # the host paths it opened, and what they were then

    def handle(self, sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        if key.fileobj is self.jail.chan:
            try:
                rec = self.jail.chan.recv(65536)
            except OSError:
                rec = b""
            if rec[:1] == Timing.TAG:
                return
        self.pool.drop(self)  # a failed setup (its Failure record), an exit: never handed out


class Pool:
    """Warm jails by key (shape), at most `size` of each of the last _MAX_SHAPES keys."""

    def __init__(self, sel: selectors.BaseSelector, size: int) -> None:
        self.sel, self.size = sel, size
        self.warm: dict[Key, list[_Waiting]] = {}

    def take(self, spec: Spec) -> supervisor.Jail | None:
        """A waiting jail of spec's shape, no longer the pool's; None when there is none."""
        if self.size <= 0 or not poolable(spec):
            return None
        waiting = self.warm.get(key(spec))
        now = sources(spec) if waiting else {}
        while waiting:
            w = waiting.pop(0)
            self._unwatch(w)
            if w.sources == now:
                return w.jail
            self.discard(w.jail)  # a path now names another tree: never hand that out
        return None

    def fit(self, jail: supervisor.Jail, spec: Spec) -> supervisor.Fitted | None:
        """Fit a taken jail to its caller's spec (supervisor.fit: its cgroup values and checks);
        the Fitted to lease it with, or None when it cannot be (a memory limit below what it
        holds, say): it is discarded then, and the caller starts a jail afresh."""
        try:
            fitted = supervisor.fit(jail, spec)
        except BaseException:
            self.discard(jail)
            raise
        if fitted is None:
            self.discard(jail)
        return fitted

    def discard(self, jail: supervisor.Jail) -> None:
        """Kill, reap and clean up a jail of this pool's that will not run."""
        supervisor.discard(jail)

    def refill(self, spec: Spec) -> None:
        """Start warm jails for this shape until the pool holds its size; cheap for the server:
        it clones and says go, the jail sets itself up on another core."""
        if self.size <= 0 or not poolable(spec):
            return
        k = key(spec)
        waiting = self.warm.setdefault(k, [])
        self.warm[k] = self.warm.pop(k)  # most recently used last
        while len(self.warm) > _MAX_SHAPES:
            for w in self.warm.pop(next(iter(self.warm))):
                self.drop(w)
        while len(waiting) < self.size:
            opened = sources(spec)
            group: Any = None
            try:
                if k.cgroup is not None:
                    from .. import cgroups
                    group = cgroups.Cgroup.create(cgroups.Limits(spec.memory, spec.pids, spec.cpus),
                                                  parent=spec.cgroup_parent)
                jail = supervisor.spawn(spec, pipeline.prepare(k, False, supervisor.bpf_for(spec)),
                                        group)
            except Isol8rError:  # no group here (the lease falls back and says so), or no jail
                if group is not None:
                    group.remove()
                return
            w = _Waiting(self, k, jail, opened)
            waiting.append(w)
            self.sel.register(jail.chan, selectors.EVENT_READ, w)
            self.sel.register(jail.pidfd, selectors.EVENT_READ, w)

    def _unwatch(self, w: _Waiting) -> None:
        for f in (w.jail.chan, w.jail.pidfd):
            try:
                self.sel.unregister(f)
            except (KeyError, ValueError):
                pass

    def drop(self, w: _Waiting) -> None:
        """A waiting jail leaves the pool and ends."""
        self._unwatch(w)
        waiting = self.warm.get(w.key, [])
        if w in waiting:
            waiting.remove(w)
        self.discard(w.jail)

    def expire(self, now: float) -> float | None:
        """Drop jails unused for _WARM_FOR seconds; return when the next one expires."""
        nxt = None
        for waiting in list(self.warm.values()):
            for w in list(waiting):
                if now - w.born > _WARM_FOR:
                    self.drop(w)
                else:
                    nxt = min(nxt or 1e18, w.born + _WARM_FOR)
        return nxt

    def close(self) -> None:
        for waiting in list(self.warm.values()):
            for w in list(waiting):
                self.drop(w)
