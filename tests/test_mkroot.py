"""mkroot and check_root on the real filesystem: build roots, run their programs, plant defects.

Until the jail core runs --rootfs, "runs with nothing from the host" is checked with chroot(8)
as the jail user (65534): that is a test harness here, not the jail.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from isol8r import rootfs
from isol8r.elf import ElfInfo, LibraryResolver, NotElf, read_elf, read_ld_cache
from isol8r.errors import SpecError
from isol8r.rootfs import Finding, check_root, check_root_main, mkroot, mkroot_main

CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chroot and chown need root")
BUSYBOX = "/bin/busybox"


def run_in(root: Path | str, *argv: str, uid: int = 65534,
           proc: bool = False) -> subprocess.CompletedProcess[str]:
    """Run argv inside root with chroot(8) as uid:uid, with only PATH in the environment.

    proc=True mounts /proc inside first, in a private mount namespace that dies with the run
    (glibc reads /proc/self/exe to expand $ORIGIN in a program; a jail has /proc).
    """
    cmd = [CHROOT, f"--userspec={uid}:{uid}", str(root), *argv]
    if proc:
        cmd = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
               'mount -t proc proc "$0/proc" && exec "$@"', str(root), *cmd]
    return subprocess.run(cmd, env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


def manifest(root: Path) -> list[tuple[str, ...]]:
    """Every path with its type, mode, size (files), owner and link target."""
    out: list[tuple[str, ...]] = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out.append((os.path.relpath(p, root), oct(st.st_mode), str(st.st_uid), str(st.st_gid),
                        str(st.st_size) if stat.S_ISREG(st.st_mode) else "",
                        os.readlink(p) if stat.S_ISLNK(st.st_mode) else ""))
    return out


def errors(findings: list[Finding]) -> set[tuple[str, str]]:
    return {(f.kind, f.path) for f in findings if f.severity == "error"}


@pytest.fixture(scope="module")
def pyroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One root with the default programs (python3 included), shared by the module."""
    root = tmp_path_factory.mktemp("pyroot") / "root"
    mkroot(str(root))
    return root


@pytest.fixture
def small(tmp_path: Path) -> Path:
    root = tmp_path / "small"
    mkroot(str(root), ["sh", "ls", "cat"])
    return root


# ---------------------------------------------------------------------------------------------
# Programs run with nothing from the host


@needs_root
@pytest.mark.parametrize("argv, out, rc", [
    (["sh", "-c", "echo ok"], "ok\n", 0),
    (["ls", "/"], None, 0),
    (["cat", "/etc/hosts"], None, 0),
    (["echo", "hi"], "hi\n", 0),
    (["env"], "PATH=/usr/local/bin:/usr/bin:/bin\n", 0),
    (["id", "-un"], "nobody\n", 0),
    (["true"], "", 0),
    (["false"], "", 1),
    (["sleep", "0"], "", 0),
])
def test_default_programs_run_inside(pyroot: Path, argv: list[str], out: str | None,
                                     rc: int) -> None:
    p = run_in(pyroot, *argv)
    assert p.returncode == rc, p.stderr
    if out is not None:
        assert p.stdout == out


@needs_root
def test_python_runs_inside(pyroot: Path) -> None:
    p = run_in(pyroot, "python3", "-c", "import json; print(1)")
    assert (p.returncode, p.stdout) == (0, "1\n"), p.stderr
    p = run_in(pyroot, "python3", "-c", "import ssl, sqlite3, ctypes, decimal, hashlib, lzma, "
               "zlib, asyncio, sys; print(sys.prefix)")
    assert p.returncode == 0, p.stderr
    prefix = p.stdout.strip()
    # the root holds the base interpreter, also when the tests run in a venv
    assert prefix == run_host_python("import sys; print(sys.base_prefix)")


def run_host_python(code: str) -> str:
    return subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_python_stdlib_is_trimmed(pyroot: Path) -> None:
    stdlib = run_host_python("import sysconfig; print(sysconfig.get_paths()['stdlib'])")
    inside = pyroot / stdlib.lstrip("/")
    assert (inside / "json" / "__init__.py").is_file()
    assert (inside / "lib-dynload").is_dir()
    for gone in ("site-packages", "test", "idlelib", "tkinter", "ensurepip"):
        assert not (inside / gone).exists(), gone
    tag = run_host_python("import sys; print(sys.implementation.cache_tag)")
    pycs = list(inside.rglob("*.pyc"))
    assert pycs and all(p.name.endswith(f".{tag}.pyc") and p.parent.name == "__pycache__"
                        for p in pycs)


def test_pyenv_shim_resolves_to_the_real_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    pyenv = shutil.which("pyenv")
    if not pyenv:
        pytest.skip("no pyenv")
    top = subprocess.run([pyenv, "root"], capture_output=True, text=True).stdout.strip()
    shim = os.path.join(top, "shims", "python3")
    if not os.path.isfile(shim):
        pytest.skip("no pyenv python3 shim")
    real = subprocess.run([pyenv, "which", "python3"], capture_output=True, text=True,
                          check=True).stdout.strip()
    monkeypatch.setenv("PATH", f"{os.path.dirname(shim)}:/usr/bin:/bin")  # as a login shell has
    plan = rootfs.plan_of(["python3"], busybox=False)
    assert shim not in plan.files  # the bash shim is not copied ...
    assert real in plan.files and plan.links["/usr/bin/python3"] == real  # ... what it runs is
    assert not any(f.endswith("/bash") for f in plan.files)


# ---------------------------------------------------------------------------------------------
# The tree


def test_tree_layout(pyroot: Path) -> None:
    for d in ("bin", "lib", "lib64", "usr", "proc", "sys", "dev", "tmp", "etc", "home/user",
              "root"):
        assert (pyroot / d).is_dir(), d
    for d in ("proc", "sys", "dev", "tmp"):
        assert os.listdir(pyroot / d) == [], d
    mode = lambda p: stat.S_IMODE(os.lstat(pyroot / p).st_mode)  # noqa: E731
    assert mode("tmp") == 0o1777
    assert mode("root") in (0o700, 0o711)
    assert mode("etc") == 0o755
    if os.geteuid() == 0:
        assert (os.stat(pyroot / "home/user").st_uid, os.stat(pyroot / "home/user").st_gid) == \
            (65534, 65534)
        assert {os.lstat(pyroot / p).st_uid for p in ("etc/passwd", "usr/bin", "tmp")} == {0}
    assert (pyroot / "etc/passwd").read_text() == (
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home/user:/bin/sh\n")
    assert (pyroot / "etc/group").read_text() == "root:x:0:\nnogroup:x:65534:\n"
    assert "localhost" in (pyroot / "etc/hosts").read_text()
    assert "passwd: files" in (pyroot / "etc/nsswitch.conf").read_text()
    assert "state: complete" in (pyroot / rootfs.MARKER).read_text()


def test_clean_root_has_no_findings(pyroot: Path) -> None:
    assert check_root(str(pyroot)) == []
    assert check_root(str(pyroot), quick=True) == []
    assert check_root_main([str(pyroot)]) == 0
    assert mkroot_main(["--check", str(pyroot)]) == 0


@needs_root
def test_custom_user(tmp_path: Path) -> None:
    root = tmp_path / "r"
    assert mkroot_main([str(root), "--with", "id", "--user", "alice:1234:2345"]) == 0
    assert (root / "etc/passwd").read_text().splitlines()[1] == \
        "alice:x:1234:2345:alice:/home/user:/bin/sh"
    assert (root / "etc/group").read_text() == "root:x:0:\nalice:x:2345:\n"
    assert os.stat(root / "home/user").st_uid == 1234
    p = run_in(root, "id", "-un", uid=1234)
    assert p.stdout == "alice\n", p.stderr


# ---------------------------------------------------------------------------------------------
# Other program sets: scripts, $ORIGIN, busybox


@needs_root
@pytest.mark.parametrize("programs, argv, out", [
    (["sh"], ["sh", "-c", "echo $((6*7))"], "42\n"),
    (["ls", "id"], ["ls", "/etc/passwd"], "/etc/passwd\n"),
    (["env", "cat"], ["cat", "/etc/group"], "root:x:0:\nnogroup:x:65534:\n"),
])
def test_program_sets(tmp_path: Path, programs: list[str], argv: list[str], out: str) -> None:
    root = tmp_path / "r"
    mkroot(str(root), programs)
    p = run_in(root, *argv)
    assert (p.returncode, p.stdout) == (0, out), p.stderr
    names = {os.path.basename(p) for p in os.listdir(root / "usr/bin")}
    assert set(programs) <= names


@needs_root
def test_script_brings_its_interpreter(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "hello"
    script.write_text("#!/usr/bin/env sh\necho hello from $0\n")
    script.chmod(0o755)
    root = tmp_path / "r"
    mkroot(str(root), [str(script)])
    assert (root / "usr/bin/env").exists() and (root / "usr/bin/sh").exists()
    p = run_in(root, "hello")  # moved out of /tmp (a jail mounts over it), linked on PATH
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("hello from")


@needs_root
@pytest.mark.skipif(not shutil.which("cc"), reason="no C compiler to build an $ORIGIN program")
@pytest.mark.parametrize("dtags", ["--enable-new-dtags", "--disable-new-dtags"])  # RUNPATH, RPATH
def test_origin_runpath(tmp_path: Path, dtags: str) -> None:
    app = tmp_path / "app"
    (app / "lib").mkdir(parents=True)
    (app / "bin").mkdir()
    (tmp_path / "f.c").write_text("int f(void) { return 42; }\n")
    (tmp_path / "m.c").write_text('#include <stdio.h>\nint f(void);\n'
                                  'int main(void) { printf("%d\\n", f()); return 0; }\n')
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(app / "lib/libf.so"),
                    str(tmp_path / "f.c")], check=True)
    subprocess.run(["cc", "-o", str(app / "bin/m"), str(tmp_path / "m.c"), "-L", str(app / "lib"),
                    "-lf", f"-Wl,{dtags},-rpath,$ORIGIN/../lib"], check=True)
    info = read_elf(str(app / "bin/m"))
    assert (info.runpath if dtags == "--enable-new-dtags" else info.rpath) == ("$ORIGIN/../lib",)
    root = tmp_path / "r"
    mkroot(str(root), [str(app / "bin/m")])
    p = run_in(root, "m", proc=True)
    assert (p.returncode, p.stdout) == (0, "42\n"), p.stderr
    assert errors(check_root(str(root))) == {("no-shell", "/bin/sh")}  # libf.so found inside


@needs_root
def test_busybox_base(tmp_path: Path) -> None:
    if not os.path.isfile(BUSYBOX):
        pytest.skip("no /bin/busybox (apt-get install busybox-static)")
    root = tmp_path / "r"
    assert mkroot_main([str(root), "--busybox"]) == 0
    assert os.readlink(os.path.join(root, "usr/bin/awk") if os.path.islink(root / "bin")
                       else root / "bin/awk") == BUSYBOX
    p = run_in(root, "sh", "-c", "echo hi | awk '{print $1 \"!\"}'; ls /etc")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("hi!\n") and "passwd" in p.stdout
    assert not errors(check_root(str(root)))


@needs_root
def test_busybox_with_python(tmp_path: Path) -> None:
    if not os.path.isfile(BUSYBOX):
        pytest.skip("no /bin/busybox (apt-get install busybox-static)")
    root = tmp_path / "r"
    mkroot(str(root), ["python3"], busybox=True)
    p = run_in(root, "sh", "-c", "python3 -c 'print(6*7)'")
    assert (p.returncode, p.stdout) == (0, "42\n"), p.stderr


@needs_root
@pytest.mark.skipif(not os.path.isfile("/usr/bin/python3")
                    or os.path.realpath("/usr/bin/python3") == os.path.realpath(sys.executable),
                    reason="no separate system python3")
def test_system_python_by_path(tmp_path: Path) -> None:
    root = tmp_path / "r"
    mkroot(str(root), ["/usr/bin/python3"])
    p = run_in(root, "/usr/bin/python3", "-c", "import json, sys; print(sys.prefix)")
    assert (p.returncode, p.stdout) == (0, "/usr\n"), p.stderr


# ---------------------------------------------------------------------------------------------
# No setuid or setgid bit survives


@needs_root
def test_setuid_bits_do_not_survive(tmp_path: Path) -> None:
    src = tmp_path / "planted"
    src.mkdir()
    for name, bits in (("suid", 0o4755), ("sgid", 0o2755), ("both", 0o6750)):
        shutil.copy("/usr/bin/true", src / name)
        os.chmod(src / name, bits)
        assert os.stat(src / name).st_mode & (stat.S_ISUID | stat.S_ISGID)
    root = tmp_path / "r"
    mkroot(str(root), [str(src / n) for n in ("suid", "sgid", "both")])
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            st = os.lstat(os.path.join(dirpath, n))
            assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), os.path.join(dirpath, n)
    assert check_root(str(root), quick=True) == []
    assert not any(f.kind == "setuid" for f in check_root(str(root)))
    assert run_in(root, "suid").returncode == 0


# ---------------------------------------------------------------------------------------------
# check_root finds each planted defect


def _lib(root: Path, prefix: str) -> Path:
    return next(p for p in root.rglob(prefix + "*") if p.is_file() and not p.is_symlink())


@pytest.mark.parametrize("defect, kind, path", [
    ("no-shell", "no-shell", "/bin/sh"),
    ("missing-lib", "missing-lib", "/usr/bin/ls"),
    ("tmp-755", "tmp-mode", "/tmp"),
    ("setuid", "setuid", "/usr/bin/planted"),
    ("world-writable", "world-writable", "/srv"),
    ("device", "device", "/dev/null"),
    ("incomplete", "incomplete", "/" + rootfs.MARKER),
])
def test_check_finds_planted_defect(small: Path, defect: str, kind: str, path: str) -> None:
    assert not errors(check_root(str(small)))
    if defect == "no-shell":
        for p in (small / "usr/bin/sh", small / "usr/bin/dash"):
            p.unlink()
    elif defect == "missing-lib":
        _lib(small, "libselinux.so").unlink()
    elif defect == "tmp-755":
        os.chmod(small / "tmp", 0o755)
    elif defect == "setuid":
        shutil.copy(small / "usr/bin/cat", small / "usr/bin/planted")
        os.chmod(small / "usr/bin/planted", 0o4755)
    elif defect == "world-writable":
        (small / "srv").mkdir()
        os.chmod(small / "srv", 0o777)
    elif defect == "device":
        if os.geteuid() != 0:
            pytest.skip("mknod needs root")
        os.mknod(small / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    elif defect == "incomplete":
        (small / rootfs.MARKER).write_text("isol8r mkroot 1\nstate: building\n")
    found = check_root(str(small))
    if defect == "missing-lib" and not any(f.path == "/usr/bin/ls" for f in found):
        pytest.fail(f"no missing-lib for ls in {found}")
    assert (kind, path) in errors(found), found
    assert check_root_main([str(small)]) == 1
    quick = errors(check_root(str(small), quick=True))
    assert ((kind, path) in quick) == (kind in ("setuid", "device"))


def test_fifo_and_sticky_dirs_are_fine(small: Path) -> None:
    os.mkfifo(small / "tmp/fifo")
    (small / "var/tmp").mkdir(parents=True)
    os.chmod(small / "var/tmp", 0o1777)
    found = check_root(str(small))
    assert not errors(found)
    assert {f.kind for f in found} <= {"world-writable"}  # the sticky one, as a warning
    assert check_root_main([str(small)]) == 0


def test_quick_check_skips_other_filesystems(small: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mount needs root")
    os.chmod(small / "tmp", 0o755)  # a full check finds this; the quick one must not care
    mnt = small / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
    try:
        os.mknod(mnt / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        assert check_root(str(small), quick=True) == []
        assert any(f.kind == "not-scanned" and f.path == "/mnt" for f in check_root(str(small)))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# ---------------------------------------------------------------------------------------------
# Refusals and safety


@pytest.mark.parametrize("dest", ["/", "/usr", "/etc", "/usr/lib", "/var/lib", "/proc/self"])
def test_refuses_host_system_dirs(dest: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SpecError, match="host system directory"):
        mkroot(dest, ["true"])
    assert mkroot_main([dest, "--with", "true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and dest in err and "Traceback" not in err


def test_refuses_non_empty_foreign_dir(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SpecError, match="not an isol8r root"):
        mkroot(str(tmp_path), ["true"])
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_refuses_a_symlink_to_a_system_dir(tmp_path: Path) -> None:
    (tmp_path / "sneaky").symlink_to("/etc")
    with pytest.raises(SpecError, match="host system directory"):
        mkroot(str(tmp_path / "sneaky"), ["true"])


@pytest.mark.parametrize("argv, needle", [
    (["{d}", "--with", "no-such-program-xyz"], "--with no-such-program-xyz: not found on PATH"),
    (["{d}", "--with", "/etc/hostname"], "not an ELF program or a #! script"),
    (["{d}", "--user", "bob"], "--user bob: expected NAME:UID:GID"),
    (["{d}", "--user", "root:5:5"], "root is 0:0"),
    (["{d}", "--check", "--with", "ls"], "--check takes only DIR"),
    (["{d}", "--bogus"], "unrecognized arguments"),
])
def test_bad_usage_is_one_line_and_exit_2(tmp_path: Path, argv: list[str], needle: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "r"
    assert mkroot_main([a.format(d=d) for a in argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not d.exists()  # nothing was touched


def test_check_root_bad_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_root_main([str(tmp_path / "nope")]) == 2
    assert "nope: no such directory" in capsys.readouterr().err
    assert check_root_main([]) == 2
    with pytest.raises(SpecError):
        check_root(str(tmp_path / "nope"))


def test_planted_symlinks_do_not_write_outside(small: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.chmod(outside, 0o700)
    (outside / "victim").write_text("host data\n")
    before = manifest(outside)
    # a directory the tree writes into, a file it replaces, a hard link, the 1777 /tmp
    shutil.rmtree(small / "etc")
    (small / "etc").symlink_to(outside)
    (small / "usr/bin/cat").unlink()
    (small / "usr/bin/cat").symlink_to(outside / "victim")
    (small / "usr/bin/ls").unlink()
    os.link(outside / "victim", small / "usr/bin/ls")
    (small / "tmp").rmdir()
    (small / "tmp").symlink_to(outside)
    (small / "home/user").rmdir()
    (small / "home/user").symlink_to(outside)
    mkroot(str(small), ["sh", "ls", "cat"])
    assert manifest(outside) == before
    assert (outside / "victim").read_text() == "host data\n"
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o700
    assert os.stat(outside).st_uid == os.geteuid()
    for d in ("etc", "tmp", "home/user"):
        assert (small / d).is_dir() and not (small / d).is_symlink()
    assert not (small / "usr/bin/cat").is_symlink()
    assert os.stat(small / "usr/bin/ls").st_nlink == 1
    assert not errors(check_root(str(small)))


def test_hostile_links_do_not_fool_the_check(small: Path) -> None:
    (small / "usr/bin/sh").unlink()
    (small / "usr/bin/sh").symlink_to("/../../../../usr/bin/nothing-here")
    assert ("no-shell", "/bin/sh") in errors(check_root(str(small)))
    (small / "usr/bin/sh").unlink()
    (small / "usr/bin/sh").symlink_to("sh")  # a loop
    assert ("no-shell", "/bin/sh") in errors(check_root(str(small)))


# ---------------------------------------------------------------------------------------------
# Idempotence and failure


def test_idempotent(small: Path) -> None:
    first = manifest(small)
    mkroot(str(small), ["sh", "ls", "cat"])
    assert manifest(small) == first
    assert not any(".isol8r-tmp" in p[0] for p in first)


def test_idempotent_python(pyroot: Path, tmp_path: Path) -> None:
    first = manifest(pyroot)
    mkroot(str(pyroot))
    assert manifest(pyroot) == first


def test_missing_library_fails_before_writing(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LibraryResolver, "find", lambda *a, **k: None)
    with pytest.raises(SpecError, match="needs libc.so.6"):
        mkroot(str(tmp_path / "r"), ["true"])
    assert not (tmp_path / "r").exists()


def test_failure_half_way(tmp_path: Path, small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rootfs, "copy_stdlib", boom)
    fresh = tmp_path / "fresh"
    with pytest.raises(OSError):
        mkroot(str(fresh), ["python3"])
    assert not fresh.exists()  # started from nothing: removed
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OSError):
        mkroot(str(empty), ["python3"])
    assert empty.is_dir() and os.listdir(empty) == []
    with pytest.raises(OSError):
        mkroot(str(small), ["python3"])  # a previous root: kept, clearly marked
    assert ("incomplete", "/" + rootfs.MARKER) in errors(check_root(str(small)))
    monkeypatch.undo()
    mkroot(str(small), ["sh", "ls", "cat"])
    assert not errors(check_root(str(small)))


# ---------------------------------------------------------------------------------------------
# The ELF reader and the loader's rules


def test_read_elf() -> None:
    real = os.path.realpath(sys.executable)
    info = read_elf(real)
    assert info.elf_class in (32, 64) and info.interp and info.needed
    with pytest.raises(NotElf):
        read_elf(__file__)
    if os.path.isfile(BUSYBOX):
        bb = read_elf(BUSYBOX)
        assert bb.interp is None and bb.needed == () and bb.compatible(info)


def test_ld_cache_matches_ldconfig() -> None:
    if not os.path.isfile("/etc/ld.so.cache") or not shutil.which("ldconfig"):
        pytest.skip("no ld.so.cache")
    cache = read_ld_cache("/etc/ld.so.cache")
    lines = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    listed = {ln.split(" => ")[1] for ln in lines if " => " in ln}
    assert {path for entries in cache.values() for _f, path in entries} == listed


def test_origin_and_rpath_rules(tmp_path: Path) -> None:
    """$ORIGIN is the object's directory; DT_RPATH is ignored when DT_RUNPATH is present."""
    lib = os.path.realpath(sys.executable)  # any ELF object of the right machine will do
    info = read_elf(lib)
    for d in ("opt/app/lib", "opt/app/rlib", "opt/app/bin"):
        (tmp_path / d).mkdir(parents=True)
    shutil.copy(lib, tmp_path / "opt/app/lib/libx.so.1")
    shutil.copy(lib, tmp_path / "opt/app/rlib/libx.so.1")
    r = LibraryResolver(str(tmp_path))
    base = ElfInfo(info.elf_class, info.little_endian, info.machine, 3)
    run = ElfInfo(**{**base.__dict__, "runpath": ("$ORIGIN/../lib",), "rpath": ("/opt/app/rlib",)})
    got = r.find("libx.so.1", "/opt/app/bin/prog", run, [])
    assert got is not None and (got.path, got.how) == ("/opt/app/bin/../lib/libx.so.1", "runpath")
    rp = ElfInfo(**{**base.__dict__, "rpath": ("/opt/app/rlib",)})
    got = r.find("libx.so.1", "/opt/app/bin/prog", rp, [])
    assert got is not None and (got.path, got.how) == ("/opt/app/rlib/libx.so.1", "rpath")
    # a library's loader's RPATH applies too, but not when the library has a RUNPATH
    plain = ElfInfo(**{**base.__dict__, "runpath": ("/nowhere",)})
    assert r.find("libx.so.1", "/opt/app/lib/libx.so.1", plain, [("/opt/app/bin/prog", rp)]) \
        is None
    got = r.find("libx.so.1", "/x/liby.so", base, [("/opt/app/bin/prog", rp)])
    assert got is not None and got.how == "rpath"
    # an absolute symlink inside the sysroot stays inside it
    (tmp_path / "opt/app/lib/libz.so.1").symlink_to("/opt/app/rlib/libx.so.1")
    got = r.find("libz.so.1", "/opt/app/bin/prog", run, [])
    assert got is not None and got.path == "/opt/app/bin/../lib/libz.so.1"
