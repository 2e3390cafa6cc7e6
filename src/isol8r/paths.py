"""Paths inside a root, resolved the way the kernel resolves them after chroot.

One resolver for the two places that must never follow a link out of a tree: the jail's mount
destinations (mounts.py) and mkroot's reading of a sysroot (elf.py, rootfs.py).
"""

from __future__ import annotations

import errno
import os


def chase(sysroot: str, path: str, *, follow_last: bool = True, max_links: int = 40) -> str:
    """The host path of `path` as seen from inside `sysroot`: symlinks are read and resolved there.

    An absolute link target or a '..' above the top stays inside `sysroot`, the way the kernel
    resolves paths after chroot, so a hostile link cannot point this at a host file. The result
    may not exist; its missing tail is kept as given.
    """
    sysroot = os.path.abspath(sysroot)
    todo = [p for p in path.split("/") if p]
    done: list[str] = []
    links = 0
    while todo:
        name = todo.pop(0)
        if name == ".":
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        host = os.path.join(sysroot, *done, name)
        if (todo or follow_last) and os.path.islink(host):
            links += 1
            if links > max_links:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            target = os.readlink(host)
            if target.startswith("/"):
                done = []
            todo[:0] = [p for p in target.split("/") if p]
            continue
        done.append(name)
    return os.path.join(sysroot, *done)
