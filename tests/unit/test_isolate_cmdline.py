"""isolate's command line as the front end parses it, and the @file-locks/@vsock deny groups;
no root, no jail."""

from __future__ import annotations

import pytest

from isol8r import isolate
from isol8r.seccomp.guards import AF_VSOCK, F_OFD_SETLK, F_SETLK
from isol8r.seccomp.policy import EPERM
from isol8r.seccomp.resolve import resolve_policy


def test_cms_command_line() -> None:
    """The shape of CMS's build_box_options() (cms/grading/Sandbox.py)."""
    o = isolate.parse(["--cg", "--box-id=1003", "--chdir=/tmp", "--dir=/tmp=/var/cms/home:rw",
                       "--dir=/dev/shm:tmp", "--dir=/etc/alternatives:maybe", "--env=HOME=/tmp",
                       "--stdin=/tmp/input.txt", "--stack=262144", "--cg-mem=262144",
                       "--stdout=/tmp/output.txt", "--processes=1", "--time=1", "--verbose",
                       "--wall-time=3", "--extra-time=0.5", "--meta=/tmp/run.meta.0", "--run",
                       "--", "/usr/bin/python3", "sol.py"])
    assert (o.command, o.box_id, o.cg, o.cg_mem, o.processes) == ("run", 1003, True, 262144, 1)
    assert (o.time, o.wall_time, o.extra_time, o.stack, o.verbose) == (1.0, 3.0, 0.5, 262144, 1)
    assert o.argv == ["/usr/bin/python3", "sol.py"]
    rules = {r.inside: r for r in o.rules}
    assert rules["tmp"].outside == "/var/cms/home" and rules["tmp"].flags == {"rw"}
    assert rules["dev/shm"].flags == {"tmp", "rw"} and rules["dev/shm"].outside is None
    assert rules["etc/alternatives"].outside == "/etc/alternatives"
    # a rule for an inside path replaces the default one in its place
    assert [r.inside for r in o.rules][:9] == list(isolate.DEFAULT_DIRS)


def test_short_options_and_getopt_forms() -> None:
    """Judge0 and Piston spell options short and long, attached and detached."""
    o = isolate.parse(["-b", "5", "-M", "m", "-t", "2", "-x1", "-w", "5", "-k64", "-p", "-s",
                       "-E", "PATH=/bin", "-e", "-f", "1024", "-n", "64", "-i", "in", "-o", "out",
                       "-r", "err", "--run", "prog", "arg"])
    assert (o.box_id, o.meta, o.time, o.extra_time, o.wall_time, o.stack) == (5, "m", 2, 1, 5, 64)
    assert o.processes is None and o.silent and o.full_env and o.env == ["PATH=/bin"]
    assert (o.fsize, o.open_files, o.stdin, o.stdout, o.stderr) == (1024, 64, "in", "out", "err")
    assert o.argv == ["prog", "arg"]
    assert isolate.parse(["-p10", "--run", "--", "x"]).processes == 10
    assert isolate.parse(["--processes", "--run", "--", "x"]).processes is None
    o = isolate.parse(["--stderr=e", "--stderr-to-stdout", "--init"])
    assert o.stderr is None and o.stderr_to_stdout


@pytest.mark.parametrize("arg,inside,outside,flags", [
    ("/box", "box", "/box", set()),
    ("in=/out:rw:noexec", "in", "/out", {"rw", "noexec"}),
    ("a/b=./rel", "a/b", "./rel", set()),
    ("x=", "x", None, {"remove"}),
    ("scratch:tmp", "scratch", None, {"tmp", "rw"}),
    ("/dev/shm=tmpfs:fs:rw", "dev/shm", "tmpfs", {"fs", "rw"}),
])
def test_dir_rules(arg: str, inside: str, outside: str | None, flags: set[str]) -> None:
    r = isolate.parse_dir(arg)
    assert (r.inside, r.outside, r.flags) == (inside, outside, flags)


@pytest.mark.parametrize("arg", ["../x", "/", "x=y", "a:fs", "a=ext4:fs", "a=/b:tmp",
                                 "a:tmp:fs", "a:sideways"])
def test_bad_dir_rules(arg: str) -> None:
    with pytest.raises(isolate.UsageError, match="Invalid directory rule"):
        isolate.parse_dir(arg)


def test_meta_text_is_isolates_format() -> None:
    m = isolate.Meta()
    for k, v in (("time", "0.012"), ("time-wall", "0.020"), ("exitsig", 11), ("status", "SG")):
        m.add(k, v)
    assert m.text() == "time:0.012\ntime-wall:0.020\nexitsig:11\nstatus:SG\n"
    assert m.status == "SG" and isolate.Meta().status == "OK"


def test_file_locks_and_vsock_deny_groups() -> None:
    """--seccomp-deny @file-locks,@vsock: flock outright, fcntl's lock and lease commands and
    socket(AF_VSOCK) by argument; the other fcntl commands and sockets stay allowed."""
    plain = resolve_policy()
    policy = resolve_policy(deny=("@file-locks,@vsock,reboot",))
    added = set(policy.rules) - set(plain.rules)
    by_call: dict[str, list[tuple[int, int]]] = {}
    for rule in added:
        assert rule.action == EPERM
        for name in rule.names:
            by_call.setdefault(name, []).extend((c.index, c.value_two) for c in rule.conditions)
    assert by_call["flock"] == []
    assert (1, F_SETLK) in by_call["fcntl"] and (1, F_OFD_SETLK) in by_call["fcntl"]
    assert (1, 1) not in by_call["fcntl"]  # F_GETFD
    assert by_call["socket"] == [(0, AF_VSOCK)]
    assert "reboot" in {n for r in policy.rules for n in r.names}


def test_a_mounts_noexec_and_idmap_reach_its_bind() -> None:
    """spec.Mount's noexec and idmap (the front end's --dir binds: `:noexec`, and writable with
    the box user's own rights, not idmapped to the owner) reach mounts.plan's Bind; a Mount
    without them binds as before."""
    from isol8r import mounts
    from isol8r.spec import Mount

    def bind(m: Mount) -> mounts.Bind:
        p = mounts.plan(rootfs=None, rw_root=False, overlay=False, overlay_dir=None,
                        user_mounts=((m.kind, m.dst, m.src, m.size, m.noexec, m.idmap),), uid=1,
                        gid=1, hostname="h", new_net=True, tmp_size=1 << 20)
        return next(op for op in p.ops if isinstance(op, mounts.Bind) and op.dst == "/x")

    b = bind(Mount("bind", "/x", "/usr", noexec=True, idmap=False))
    assert b.noexec and not b.idmap and not b.readonly
    b = bind(Mount("bind", "/x", "/usr"))
    assert not b.noexec and b.idmap
    p = mounts.plan(rootfs=None, rw_root=False, overlay=False, overlay_dir=None,
                    user_mounts=(("ro-bind", "/x", "/usr", None),), uid=1, gid=1, hostname="h",
                    new_net=True, tmp_size=1 << 20)
    old = next(op for op in p.ops if isinstance(op, mounts.Bind) and op.dst == "/x")
    assert old.readonly and old.idmap and not old.noexec
