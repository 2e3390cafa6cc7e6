"""Compiling: a Policy to the BPF program the kernel loads, through libseccomp.

Why a module of its own: this is the only part that needs libseccomp.so loaded; the CLI reads a
filter compiled before from the cache (cache.py) without importing it.
"""

from __future__ import annotations

import errno as _errno
import os

from ..errors import SpecError
from ..sys import libseccomp as scmp
from .abi import NATIVE
from .policy import OPS, Policy, Rule


def build(policy: Policy) -> bytes:
    """BPF for a policy. Rules for the native arch and for the other ABIs are built in two
    libseccomp filters and merged, so syscalls newer than libseccomp can still be added natively."""
    native = scmp.arch_native()
    others = [scmp.arch_resolve_name(a) for a in policy.arches if a != NATIVE]
    default = policy.default.token()
    main = scmp.Filter(default)
    extra = scmp.Filter(default) if others else None
    try:
        for f in (main, extra):
            if f is not None:
                f.attr_set(scmp.FLTATR_ACT_BADARCH, policy.bad_arch.token())
        if extra is not None:
            for tok in others:
                extra.arch_add(tok)
            extra.arch_remove(native)
        for rule in policy.rules:
            if rule.action == policy.default:
                continue  # libseccomp refuses rules that repeat the default; they change nothing
            conds = [(c.index, OPS[c.op], c.value, c.value_two) for c in rule.conditions]
            for name in rule.names:
                nr = scmp.resolve_name(name)
                if nr == scmp.NR_SCMP_ERROR:
                    nr = scmp.NEWER_NATIVE.get(name, scmp.NR_SCMP_ERROR)
                    if nr >= 0:
                        _add(main, policy, rule, name, nr, conds)
                    continue
                if nr >= 0:
                    _add(main, policy, rule, name, nr, conds)
                if extra is not None:
                    _add(extra, policy, rule, name, nr, conds, absent_ok=True)
        if extra is not None:
            main.merge(extra)
            extra = None
        return main.export_bpf()
    finally:
        main.close()
        if extra is not None:
            extra.close()


def _add(f: scmp.Filter, policy: Policy, rule: Rule, name: str, nr: int,
         conds: list[tuple[int, int, int, int]], absent_ok: bool = False) -> None:
    rc = f.rule_add(rule.action.token(), nr, conds)
    if rc == -_errno.EDOM and absent_ok:
        return  # this syscall does not exist on that arch
    if rc < 0:
        why = os.strerror(-rc)
        if rc == -_errno.EINVAL and conds:
            why += " (libseccomp allows one comparison per argument in a rule)"
        raise SpecError(policy.source, name, f"libseccomp rejected the rule "
                        f"{rule.action} {' and '.join(str(c) for c in rule.conditions)}: {why}")

