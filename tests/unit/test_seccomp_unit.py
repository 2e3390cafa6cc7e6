"""The seccomp package without root: Docker profiles read into policies, groups expanded, the
compiled-filter cache's key and its disk store. No namespace, no filter loaded, no jail; only
libseccomp (to resolve names and compile) and files under pytest's tmp_path."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from isol8r import seccomp
from isol8r.errors import SpecError
from isol8r.seccomp import abi, cache, docker, groups

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
# Docker's default profile: ../shared beside this checkout, else the machine's /work/shared
DOCKER = next((p for p in (ROOT.parent / "shared" / "profiles" / "docker-default.json",
                           Path("/work/shared/profiles/docker-default.json")) if p.is_file()),
              ROOT.parent / "shared" / "profiles" / "docker-default.json")
needs_docker = pytest.mark.skipif(not DOCKER.is_file(), reason=f"{DOCKER} is absent")


def profile_file(tmp_path: Path, name: str = "p.json", errno_ret: int = 1) -> str:
    """A one-rule profile (getppid -> errno(errno_ret)), a new file (inode) per name."""
    path = tmp_path / name
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno_ret}]}))
    return str(path)


# ---- Docker profiles --------------------------------------------------------------------------


@needs_docker
def test_docker_default_profile_reads_as_docker_applies_it() -> None:
    default, arches, table, seen = docker.read_profile(str(DOCKER))
    assert default == seccomp.Action("errno", errno.EPERM)
    assert arches[0] == abi.NATIVE and set(arches) <= set(abi.LOCAL_ARCHES)
    assert {"read", "write", "clone", "personality", "socket", "execve"} <= set(table.by_name)
    # the rules for CAP_SYS_ADMIN / CAP_BPF are not for a jail without capabilities
    assert "bpf" not in table.by_name and "mount" not in table.by_name
    # personality is allowed only for Docker's harmless values: conditions, one per value
    assert all(conds for _, conds, _ in table.by_name["personality"])
    assert {c[0].value for _, c, _ in table.by_name["personality"]} <= set(seccomp.PERSONALITY_OK)
    assert len(seen) >= len(table.by_name)


@needs_docker
def test_docker_default_profile_resolves_and_shows() -> None:
    policy = seccomp.resolve_policy(profile=str(DOCKER))
    assert policy.enabled and policy.source == f"profile {DOCKER}"
    assert policy.default == seccomp.EPERM
    names = {n for r in policy.rules for n in r.names}
    assert {"read", "clone", "personality", "socket"} <= names
    assert "riscv_hwprobe" in policy.skipped  # a syscall, but not on this host's ABIs
    assert not names & set(policy.skipped)
    text = seccomp.show(str(DOCKER))
    assert "SCMP" not in text and "default action: errno(EPERM)" in text


@pytest.mark.parametrize("change, key, value", [
    ({"defaultAction": "SCMP_ACT_NOPE"}, "defaultAction", "SCMP_ACT_NOPE"),
    ({"syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_BOGUS"}]}, "syscalls[0].action",
     "SCMP_ACT_BOGUS"),
    ({"syscalls": [{"names": ["no_such_call"], "action": "SCMP_ACT_ALLOW"}]},
     "syscalls[0].names", "no_such_call"),
    ({"architectures": ["SCMP_ARCH_Z80"]}, "architectures", "SCMP_ARCH_Z80"),
    ({"syscalls": [{"names": ["ioctl"], "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]},
     "syscalls[0].args[0].index", "9"),
])
def test_profile_errors_name_the_file_the_key_and_the_value(
        tmp_path: Path, change: dict[str, object], key: str, value: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", **change}))
    with pytest.raises(SpecError) as e:
        docker.read_profile(str(path))
    assert e.value.field == f"{path} {key}" and value in str(e.value)


# ---- groups -----------------------------------------------------------------------------------


def test_groups_expand_nested_groups_once_in_first_seen_order() -> None:
    service = seccomp.group_members("@system-service")
    assert len(service) == len(set(service))
    for nested in ("@default", "@network-io", "@file-system", "@timer"):
        assert set(seccomp.group_members(nested)) <= set(service)
    privileged = seccomp.group_members("@privileged")
    assert set(seccomp.group_members("@chown")) <= set(privileged)
    assert privileged[:len(seccomp.group_members("@chown"))] == seccomp.group_members("@chown")
    assert not any(n.startswith("@") for g in seccomp.GROUPS for n in seccomp.group_members(g))
    assert seccomp.group_members("@swap") == ("swapoff", "swapon")


def test_every_group_member_is_a_syscall() -> None:
    for group in seccomp.GROUPS:
        for n in seccomp.group_members(group):
            assert seccomp.is_syscall(n), f"{group}: {n}"
    assert not seccomp.is_syscall("no_such_call")


def test_user_lists_expand_groups_and_say_what_was_named_directly() -> None:
    got = groups.expand_names("--seccomp-allow", ["@swap, getpid", " ,read", "swapon"])
    assert got == {"swapoff": False, "swapon": True, "getpid": True, "read": True}
    assert groups.expand_names("--seccomp-deny", []) == {}
    with pytest.raises(SpecError) as e:
        groups.expand_names("--seccomp-deny", ["getpid,@nope"])
    assert (e.value.field, e.value.value) == ("--seccomp-deny", "@nope")
    with pytest.raises(SpecError) as e:
        groups.expand_names("--seccomp-allow", ["no_such_call"])
    assert (e.value.field, e.value.value, e.value.reason) == \
        ("--seccomp-allow", "no_such_call", "unknown syscall")


# ---- the cache key ----------------------------------------------------------------------------


def test_cache_key_changes_with_every_policy_input_and_nothing_else(tmp_path: Path) -> None:
    prof = profile_file(tmp_path)
    base = ("default", None, ("@system-service",), ("socket",), False)
    variants = [
        ("none", None, ("@system-service",), ("socket",), False),
        ("default", prof, ("@system-service",), ("socket",), False),
        ("default", None, ("@default",), ("socket",), False),
        ("default", None, (), ("socket",), False),
        ("default", None, ("@system-service",), ("connect",), False),
        ("default", None, ("@system-service",), (), False),
        ("default", None, ("@system-service",), ("socket",), True),
    ]
    keys = [cache.cache_key(*base)] + [cache.cache_key(*v) for v in variants]
    assert len(set(keys)) == len(keys)
    # the same options, however spelled, and unrelated files: the same key
    assert cache.cache_key(*base) == keys[0]
    assert cache.cache_key("default", None, ["@system-service"], ["socket"], 0) == keys[0]
    assert cache.cache_key("default", "", ("@system-service",), ("socket",), False) == keys[0]
    (tmp_path / "unrelated").write_text("x")
    assert cache.cache_key(*variants[1]) == keys[2]


def test_cache_key_follows_the_profile_file_and_the_compiler_code(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prof = profile_file(tmp_path)
    before = cache.cache_key("default", prof)
    assert cache.cache_key("default", prof) == before
    os.utime(prof, ns=(1, 1))  # an edit, even one that keeps the size
    edited = cache.cache_key("default", prof)
    assert edited != before
    os.replace(profile_file(tmp_path, "q.json"), prof)  # another file at the same path
    assert cache.cache_key("default", prof) not in (before, edited)
    code = tmp_path / "compiler.py"
    code.write_text("# v1")
    monkeypatch.setattr(cache, "COMPILER_FILES", (*cache.COMPILER_FILES, str(code)))
    first = cache.cache_key()
    os.utime(code, ns=(2, 2))
    assert cache.cache_key() != first


def test_the_key_names_every_module_that_shapes_a_filter() -> None:
    package = Path(cache.__file__).parent
    keyed = {Path(p) for p in cache.COMPILER_FILES}
    assert all(p.is_file() for p in keyed)
    assert SRC / "isol8r" / "sys" / "libseccomp.py" in keyed
    not_shaping = {"__init__.py", "cache.py", "command.py", "kills.py"}
    assert {p.name for p in keyed if p.parent == package} == \
        {p.name for p in package.glob("*.py")} - not_shaping


# ---- the cache: memory and disk ---------------------------------------------------------------


def test_memory_cache_returns_the_same_object_until_the_profile_changes(tmp_path: Path) -> None:
    prof = profile_file(tmp_path, errno_ret=1)
    first = seccomp.compile_policy(profile=prof)
    assert seccomp.compile_policy(profile=prof) is first
    assert cache.jail_filter("default", prof, (), (), False) is first
    profile_file(tmp_path, errno_ret=5)
    os.utime(prof, ns=(1, 1))
    again = seccomp.compile_policy(profile=prof)
    assert again != first
    assert seccomp.compile_policy(seccomp="none") is None


@pytest.mark.parametrize("mode", [0o755, 0o770, 0o701])
def test_disk_store_is_refused_in_a_directory_others_can_reach(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int) -> None:
    store = tmp_path / "store"
    store.mkdir()
    store.chmod(mode)
    monkeypatch.setattr(cache, "cache_dir", lambda: str(store))
    prof = profile_file(tmp_path)
    planted = store / cache.cache_key("default", prof)
    planted.write_bytes(b"Bplanted")
    got = cache.jail_filter("default", prof, (), (), False)
    assert got != b"planted" and got == seccomp.compile_policy(profile=prof)
    assert os.listdir(store) == [planted.name]  # nothing read, nothing written
    assert not cache.trusted(str(store))


def test_disk_store_in_a_private_directory_is_read_and_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    monkeypatch.setattr(cache, "cache_dir", lambda: str(store))
    prof = profile_file(tmp_path, "a.json")
    got = cache.jail_filter("default", prof, (), (), False)
    key = cache.cache_key("default", prof)
    assert os.listdir(store) == [key]
    assert (store / key).read_bytes() == b"B" + got
    other = profile_file(tmp_path, "b.json")  # the control of the test above: a file there is read
    (store / cache.cache_key("default", other)).write_bytes(b"Bplanted")
    assert cache.jail_filter("default", other, (), (), False) == b"planted"


def test_trusted_only_a_real_private_directory_of_this_user(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert cache.trusted(str(private))
    link = tmp_path / "link"
    link.symlink_to(private)
    assert not cache.trusted(str(link))
    assert not cache.trusted(str(tmp_path / "absent"))
    (tmp_path / "file").write_text("")
    (tmp_path / "file").chmod(0o600)
    assert not cache.trusted(str(tmp_path / "file"))
    if os.geteuid() == 0:  # as root, also a directory of another owner
        os.chown(private, 65534, 65534)
        assert not cache.trusted(str(private))


def test_a_cache_hit_imports_neither_the_compiler_nor_libseccomp(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    args = ("default", None, (), ("getppid",), False)
    bpf = seccomp.compile_policy(*args)
    assert bpf is not None
    (store / cache.cache_key(*args)).write_bytes(b"B" + bpf)
    code = (f"import sys\nfrom isol8r.seccomp import cache\nlight = sorted(sys.modules)\n"
            f"cache.cache_dir = lambda: {str(store)!r}\n"
            f"got = cache.jail_filter(*{args!r})\n"
            f"print(repr((light, sorted(sys.modules), got)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)}).stdout
    light, after, got = eval(out)  # noqa: S307 - our own child's repr
    assert got == bpf
    heavy = {"ctypes", "typing", "dataclasses", "json", "isol8r.sys.libseccomp",
             "isol8r.seccomp.compiler", "isol8r.seccomp.policy"}
    assert not heavy & set(light), "importing the cache must stay light"
    assert not heavy & set(after), "a cache hit must not load the compiler"


def test_the_package_interface_resolves_every_name() -> None:
    for name in vars(seccomp)["__all__"]:  # the interface __init__ declares
        assert getattr(seccomp, name) is not None, name
    with pytest.raises(AttributeError, match="nope"):
        seccomp.nope  # noqa: B018
