"""The walls' accounting, the /proc choice, Landlock's plan and --require, without root."""

from __future__ import annotations

from typing import Any

import pytest

from isol8r import landlock, mounts, walls
from isol8r.errors import SpecError
from isol8r.protocol import Leased, decode
from isol8r.spec import NAMESPACES, Spec
from isol8r.sys import linux

ALL = frozenset(NAMESPACES)


def account(spec: Spec, choice: walls.Choice, **kw: Any) -> tuple[dict[str, str], dict[str, str]]:
    args: dict[str, Any] = dict(seccomp=True, cgroup=None, landlock=None, uid_switch=True)
    args.update(kw)
    return walls.account(spec, choice, **args)


def test_every_wall_of_a_full_jail() -> None:
    held, missing = account(Spec(("/bin/true",)), walls.Choice(None, "fresh"))
    assert list(held) == [w for w in walls.WALLS if w not in ("landlock", "cgroup")]
    assert missing == {}


def test_a_bare_jail_names_why() -> None:
    why = "no user namespace can be made: user.max_user_namespaces is 0"
    plan = landlock.LandlockPlan(7, 1, 3, 3, (("/", 1), ("/tmp", 1)))
    held, missing = account(Spec(("/bin/true",)), walls.Choice(why, "host"), landlock=plan,
                            uid_switch=False)
    assert missing["userns"] == why
    assert {"pidns", "mountns", "netns", "uid"} <= set(missing)
    assert "proc" not in held and "proc" not in missing  # no mount namespace: nothing to miss
    assert "no TCP" in held["landlock"] and "/tmp" in held["landlock"]


def test_a_bare_jail_without_landlock_says_so() -> None:
    _, missing = account(Spec(("/bin/true",)), walls.Choice("--bare", "host"), uid_switch=False)
    assert "Landlock" in missing["landlock"]


def test_proc_bound_is_missing() -> None:
    choice = walls.Choice(None, "bind", "the outer one")
    held, missing = account(Spec(("/bin/true",)), choice)
    assert missing == {"proc": "the outer one"} and "proc" not in held


@pytest.mark.parametrize("value, ok", [("userns", True), ("userns, landlock", True),
                                       ("nope", False), ("", False), (3, False)])
def test_parse_require(value: Any, ok: bool) -> None:
    if ok:
        assert walls.parse_require("--require", value)
    else:
        with pytest.raises(SpecError):
            walls.parse_require("--require", value)


def test_require_is_an_option() -> None:
    s = Spec.from_options(["/bin/true"], {"require": ["userns,proc", "proc"], "proc": "bind"})
    assert s.require == ("userns", "proc") and s.proc == "bind"
    with pytest.raises(SpecError, match="maybe"):
        Spec.from_options(["/bin/true"], {"proc": "maybe"})


def test_unmet() -> None:
    assert walls.unmet(("userns",), {}, {"userns": "x"}) is None
    line = walls.unmet(("userns", "landlock"), {"userns": "EPERM"}, {})
    assert line == "userns: EPERM; landlock: not built for this run"


def test_choose_keeps_explicit_modes() -> None:
    assert walls.choose(ALL, "none", False).proc in ("none", "host")
    assert walls.choose(ALL, "fresh", True) == walls.Choice("--bare", "host")
    assert walls.choose(ALL - {"mount"}).proc == "host"


MASKED = """\
22 1 0:20 / / rw - tmpfs tmpfs rw
23 22 0:21 / /proc rw,nosuid - proc proc rw
24 23 0:21 /sys /proc/sys ro,nosuid - proc proc rw
25 23 0:5 /null /proc/kcore rw,nosuid - devtmpfs udev rw
"""
HOST = """\
22 1 0:20 / / rw - ext4 /dev/vda rw
23 22 0:21 / /proc rw,nosuid - proc proc rw
26 23 0:40 / /proc/sys/fs/binfmt_misc rw - binfmt_misc binfmt_misc rw
"""


def test_proc_masked_from_mountinfo() -> None:
    """A container's /proc (submounts masking parts of it, itself a proc mount of a part) is
    masked; a host's (binfmt_misc on its kernel-kept empty directory) is not."""
    assert walls.proc_masked(MASKED)
    assert not walls.proc_masked(HOST)
    assert not walls.proc_masked(HOST + MASKED.replace("/proc", "/other"))  # one visible


def test_landlock_rights_follow_the_abi() -> None:
    truncate = linux.LANDLOCK_FS["TRUNCATE"][0]
    assert not landlock.all_rights(1) & truncate and landlock.all_rights(3) & truncate
    assert landlock.all_rights(1) == (1 << 13) - 1


def test_landlock_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read-only from /, everything beneath /tmp and the workspace; TCP from ABI 4."""
    monkeypatch.setattr(landlock, "abi", lambda: 3)  # mocked: this kernel's ABI is newer
    p = landlock.plan(("/usr",), deny_tcp=True)
    assert p is not None
    rules = dict(p.rules)
    assert rules["/"] == landlock.rights(landlock.READ, 3)
    assert rules["/tmp"] == rules["/usr"] == p.fs == landlock.all_rights(3)
    assert p.net == 0 and p.scoped == 0
    monkeypatch.setattr(landlock, "abi", lambda: 6)
    p6 = landlock.plan((), deny_tcp=True)
    assert p6 is not None and p6.net == 3 and p6.scoped == 3
    monkeypatch.setattr(landlock, "abi", lambda: 0)
    assert landlock.plan((), deny_tcp=True) is None


def test_mount_plan_proc_modes() -> None:
    def procs(mode: str) -> list[Any]:
        p = mounts.plan(rootfs=None, rw_root=False, overlay=False, overlay_dir=None,
                        user_mounts=(), uid=0, gid=0, hostname="h", new_net=True,
                        tmp_size=1 << 20, proc=mode)
        return [op for op in p.ops if getattr(op, "dst", None) == "/proc"]
    fresh, bound, none = procs("fresh"), procs("bind"), procs("none")
    assert isinstance(fresh[0], mounts.Special)
    assert isinstance(bound[0], mounts.Bind) and bound[0].readonly
    assert none == []


def test_leased_carries_the_walls() -> None:
    msg = Leased(7, {}, {}, [], None, None, {"userns": "new namespace"}, {"proc": "masked"})
    back = decode(msg.encode())
    assert back == msg and back.walls == {"userns": "new namespace"}  # type: ignore[union-attr]


def test_subordinate_lines() -> None:
    """Rootless with /etc/subuid: the jail user onto the caller, the rest of 0..65535 onto the
    subordinate range, one id short of it (the caller's takes the jail user's place)."""
    from isol8r import userns
    assert userns.sub_lines(65534, 1000, 100000) == \
        b"65534 1000 1\n0 100000 65534\n65535 165534 1\n"
    assert userns.sub_lines(0, 1000, 100000) == b"0 1000 1\n1 100000 65535\n"
    assert userns.sub_lines(65535, 7, 5) == b"65535 7 1\n0 5 65535\n"


def test_choose_without_a_user_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocked: the environment's answers (this machine gives a user namespace to anyone).
    No user namespace: a user namespace's root makes the others without one; anyone else
    gets the bare jail; the host's root is never asked."""
    monkeypatch.setattr(walls, "host_root", lambda: False)
    monkeypatch.setattr(walls, "userns_refused", lambda: "refused")
    monkeypatch.setattr(walls, "masked_here", lambda: False)
    monkeypatch.setattr(walls, "admin_here", lambda: True)
    assert walls.choose(ALL) == walls.Choice(None, "fresh", no_user="refused")
    held, missing = account(Spec(("/bin/true",)), walls.choose(ALL), uid_switch=False)
    assert missing["userns"].startswith("refused") and "pidns" in held
    monkeypatch.setattr(walls, "admin_here", lambda: False)
    assert walls.choose(ALL) == walls.Choice("refused", "host")
    monkeypatch.setattr(walls, "host_root", lambda: True)
    assert walls.choose(ALL) == walls.Choice(None, "fresh")
