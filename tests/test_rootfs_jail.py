"""Issue 3 in a real jail: mkroot trees run with nothing from the host, unsafe roots are refused,
and an overlay's writes never reach the prepared tree."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

import isol8r
from conftest import cli, jail, needs_root, sh
from isol8r import rootfs

pytestmark = needs_root


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("root") / "r"
    rootfs.mkroot(str(r))
    return r


def tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.lstat().st_mode, p.lstat().st_size)
            for p in path.rglob("*")}


def test_the_issue_example(root: Path) -> None:
    p = cli("run", "--rootfs", str(root), "--", "/bin/sh", "-c",
            'ls / && python3 -c "import json; print(1)"')
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[-1] == "1" and "usr" in p.stdout.split()


def test_every_default_program_runs_inside(root: Path) -> None:
    for prog in ("ls /", "cat /etc/passwd", "echo x", "env", "id", "true", "sleep 0",
                 "python3 -c pass"):
        r = sh(prog, rootfs=str(root))
        assert r.exit_code == 0, (prog, r.stderr)
    assert sh("false", rootfs=str(root)).exit_code == 1


def test_nothing_from_the_host_is_visible(root: Path) -> None:
    r = sh("ls /usr/bin; echo --; cat /etc/passwd; ls /home", rootfs=str(root))
    programs, rest = r.stdout.decode().split("--\n")
    assert len(programs.split()) < 40, "more programs than the root was built with"
    assert "user" in rest and "daemon" not in rest


def test_ids_of_the_tree_read_the_same_inside(root: Path) -> None:
    r = sh("ls -lnd / /home/user", rootfs=str(root))
    owners = [line.split()[2:4] for line in r.stdout.decode().splitlines()]
    assert owners == [["0", "0"], ["65534", "65534"]], r


def test_a_program_set_of_its_own(tmp_path: Path) -> None:
    r = tmp_path / "small"
    rootfs.mkroot(str(r), ["sh", "ls", "cat"])
    assert sh("ls /bin/ && cat /etc/group", rootfs=str(r)).exit_code == 0
    with pytest.raises(isol8r.ExecError) as e:
        jail("python3", "-c", "pass", rootfs=str(r))
    assert e.value.exit_code == 127


@pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="busybox-static not installed")
def test_busybox_root(tmp_path: Path) -> None:
    r = tmp_path / "bb"
    rootfs.mkroot(str(r), [], busybox=True)
    out = sh("ls /bin | wc -l; id -u", rootfs=str(r))
    n, uid = out.stdout.split()
    assert int(n) > 50 and uid == b"65534", out


def test_unsafe_root_is_refused_unless_allowed(root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(root, bad, symlinks=True)
    shutil.copy("/bin/true", bad / "usr/bin/suid")
    os.chmod(bad / "usr/bin/suid", 0o4755)
    with pytest.raises(isol8r.SpecError, match="setuid"):
        sh("true", rootfs=str(bad))
    p = cli("run", "--rootfs", str(bad), "--", "/bin/true")
    assert p.returncode == 125 and "allow-unsafe-root" in p.stderr
    assert sh("true", rootfs=str(bad), allow_unsafe_root=True).exit_code == 0


def test_root_is_read_only_and_overlay_writes_vanish(root: Path) -> None:
    before = tree(root)
    r = sh("echo x > /home/user/f", rootfs=str(root))
    assert r.exit_code != 0 and b"Read-only" in r.stderr
    r = sh("echo x > /home/user/f && cat /home/user/f && mkdir /home/user/d", rootfs=str(root),
           overlay=True)
    assert r.stdout == b"x\n", r
    assert tree(root) == before, "an overlay write reached the prepared tree"
    assert sh("test -e /home/user/f", rootfs=str(root), overlay=True).exit_code == 1


def test_overlay_dir_keeps_the_writes(root: Path, tmp_path: Path) -> None:
    # pytest's tmp_path lies under a 0700 directory the jail's ids cannot cross: refused clearly
    with pytest.raises(isol8r.SpecError, match="not searchable"):
        sh("true", rootfs=str(root), overlay=True, overlay_dir=str(tmp_path))
    keep = Path(tempfile.mkdtemp(prefix="isol8r-test-", dir="/tmp"))
    with pytest.raises(isol8r.SpecError, match="not searchable"):  # mkdtemp makes it 0700
        sh("true", rootfs=str(root), overlay=True, overlay_dir=str(keep))
    keep.chmod(0o755)
    try:
        _overlay_dir_keeps(root, keep)
    finally:
        shutil.rmtree(keep)


def _overlay_dir_keeps(root: Path, keep: Path) -> None:
    before = tree(root)
    assert sh("echo kept > /home/user/k", rootfs=str(root), overlay=True,
              overlay_dir=str(keep)).exit_code == 0
    assert (keep / "upper/home/user/k").read_text() == "kept\n"
    assert (keep / "upper/home/user/k").stat().st_uid >= 65536, "a write landed as a low host id"
    assert sh("cat /home/user/k", rootfs=str(root), overlay=True,
              overlay_dir=str(keep)).stdout == b"kept\n"
    assert tree(root) == before


def test_check_root_cli(root: Path) -> None:
    assert cli("check-root", str(root)).returncode == 0
    assert cli("mkroot", "--check", str(root)).returncode == 0


C_PROGRAM = r"""
#include <math.h>
#include <pthread.h>
#include <stdio.h>
static void *run(void *arg) { return arg; }
int main(void) {
    pthread_t t;
    void *out;
    pthread_create(&t, NULL, run, "thread");
    pthread_join(t, &out);
    printf("%s %.0f\n", (char *)out, sqrt(1764.0));
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_mkroot_with_gcc_and_bash_compiles_and_runs_c(open_dir: Path) -> None:
    """Issue 13 item 8: --with adds to the defaults (sh stays), gcc brings cc1, as, ld and
    collect2 with their libraries, headers and start files; "root ready" only after check-root."""
    r = open_dir / "root"
    p = cli("mkroot", str(r), "--with", "gcc", "--with", "bash", timeout=300)
    assert p.returncode == 0 and p.stdout.strip().endswith("root ready"), p.stderr
    assert cli("check-root", str(r)).returncode == 0
    src = open_dir / "src"
    src.mkdir()
    src.chmod(0o777)
    (src / "hello.c").write_text(C_PROGRAM)
    res = sh("cd /home/user && gcc -O2 -o /tmp/hello hello.c -lm -pthread && /tmp/hello && "
             "bash -c 'echo $BASH_VERSION' && ls -l /bin/sh >/dev/null && echo sh-ok",
             rootfs=str(r), bind=[f"{src}:/home/user"], time_limit=120)
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.decode().splitlines()
    assert lines[0] == "thread 42" and lines[-1] == "sh-ok", lines


def test_mkroot_says_root_ready_only_when_check_root_passes(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A build whose result check-root rejects (here: a program whose library vanished from the
    tree before the check) exits 1 with the findings, never "root ready"."""
    from isol8r.rootfs import mkroot_main
    real = rootfs.mkroot

    def broken(dest: str, *a: object, **kw: object) -> None:
        real(dest, *a, **kw)  # type: ignore[arg-type]
        os.unlink(os.path.join(dest, "bin", "sh"))

    monkeypatch.setattr(rootfs, "mkroot", broken)
    assert mkroot_main([str(tmp_path / "r"), "--with", "true"]) == 1
