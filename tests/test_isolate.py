"""`isol8r isolate`: driven the way CMS's IsolateSandbox (cms/grading/Sandbox.py) drives isolate.

CmsLikeSandbox below builds the same command lines CMS does (its build_box_options(), in its
order: --cg --box-id --chdir --dir... --env... --stdin --cg-mem --stdout --processes --time
--wall-time --extra-time --meta --run -- CMD), with its home directory under a private (0700)
outer directory bound at /tmp, and reads the meta file and the exit status as CMS does. Boxes live
under a temporary root given by ISOL8R_ISOLATE_ROOT (isolate's box_root, docs/judges.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import ROOT, isol8r_cgroups

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolate's front end runs as root")

CXX = shutil.which("g++")
CC = shutil.which("gcc")
PY3 = "/usr/bin/python3"
BOX = 7


def isolate(*args: str, root: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), ISOL8R_ISOLATE_ROOT=root)
    return subprocess.run([sys.executable, "-m", "isol8r", "isolate", *args], env=env, text=True,
                          capture_output=True, timeout=timeout)


class CmsLikeSandbox:
    """The command lines of CMS's IsolateSandbox, and its reading of their results."""

    def __init__(self, box_id: int, root: str) -> None:
        self.box_id, self.root = box_id, root
        self.outer = tempfile.mkdtemp(prefix="cms-test-")  # 0700, as CMS's mkdtemp
        self.home = os.path.join(self.outer, "home")
        os.mkdir(self.home)
        os.chmod(self.home, 0o777)  # CMS's allow_writing_all()
        self.exec_num = -1
        self.meta: dict[str, list[str]] = {}
        self.dirs = [(self.home, "/tmp", "rw"), (None, "/dev/shm", "tmp")]
        if os.path.exists("/etc/alternatives"):
            self.dirs.append(("/etc/alternatives", "/etc/alternatives", None))
        self.cleanup()
        subprocess_ok = isolate(f"--box-id={box_id}", "--cg", "--init", root=root)
        assert subprocess_ok.returncode == 0, subprocess_ok.stderr
        self.box_path = subprocess_ok.stdout.strip()

    def cleanup(self) -> None:
        r = isolate(f"--box-id={self.box_id}", "--cg", "--cleanup", root=self.root)
        assert r.returncode == 0, r.stderr

    def write(self, name: str, data: str, executable: bool = False) -> None:
        p = os.path.join(self.home, name)
        with open(p, "w") as f:
            f.write(data)
        os.chmod(p, 0o755 if executable else 0o644)

    def read(self, name: str) -> str:
        with open(os.path.join(self.home, name)) as f:
            return f.read()

    def box_options(self, *, processes: int, memory: int | None, timeout: float | None,
                    stdin: str | None, stdout: str | None, stderr: str | None) -> list[str]:
        res = ["--cg", f"--box-id={self.box_id}", "--chdir=/tmp"]
        for src, dest, options in self.dirs:
            s = dest + ("=" + src if src is not None else "") + (":" + options if options else "")
            res.append(f"--dir={s}")
        res += ["--env=HOME=/tmp", "--env=PATH=/usr/local/bin:/usr/bin:/bin"]
        if stdin is not None:
            res.append(f"--stdin=/tmp/{stdin}")
        if memory is not None:
            res.append(f"--cg-mem={memory // 1024}")
        if stdout is not None:
            res.append(f"--stdout=/tmp/{stdout}")
        res.append(f"--processes={processes}")
        if stderr is not None:
            res.append(f"--stderr=/tmp/{stderr}")
        if timeout is not None:
            res += [f"--time={timeout:g}", f"--wall-time={2 * timeout + 1:g}",
                    f"--extra-time={0.5:g}"]
        self.exec_num += 1
        res += [f"--meta={self.outer}/run.meta.{self.exec_num}", "--run"]
        return res

    def execute(self, command: list[str], *, processes: int = 1, memory: int | None = None,
                timeout: float | None = None, stdin: str | None = None,
                stdout: str | None = "stdout.txt", stderr: str | None = "stderr.txt") -> int:
        args = self.box_options(processes=processes, memory=memory, timeout=timeout, stdin=stdin,
                                stdout=stdout, stderr=stderr)
        r = isolate(*args, "--", *command, root=self.root)
        assert r.returncode in (0, 1), f"sandbox error {r.returncode}: {r.stderr}"
        self.meta = {}
        with open(f"{self.outer}/run.meta.{self.exec_num}") as f:
            for line in f:
                key, value = line.strip().split(":", 1)
                self.meta.setdefault(key, []).append(value)
        return r.returncode

    def exit_status(self) -> str:
        """CMS's get_exit_status()."""
        status = self.meta.get("status", [])
        if "XX" in status:
            return "sandbox error"
        if "TO" in status:
            return "wall timeout" if "wall" in self.meta["message"][0] else "timeout"
        if "SG" in status:
            return "memory limit exceeded" if "cg-oom-killed" in self.meta else "signal"
        if "RE" in status:
            return "nonzero return"
        return "ok"

    def remove(self) -> None:
        self.cleanup()
        shutil.rmtree(self.outer)


SOURCES = {
    "cpp": {
        "correct": "#include <iostream>\nint main(){long a; std::cin>>a; std::cout<<a*2<<'\\n';}",
        "wrong": "#include <iostream>\nint main(){long a; std::cin>>a; std::cout<<a*2+1<<'\\n';}",
        "crash": "#include <cstdio>\nint main(){volatile int *p = nullptr; *p = 1; "
                 "std::puts(\"no\");}",
        "slow": "int main(){volatile unsigned long x = 0; for(;;) x++;}",
        "memory": "#include <cstdlib>\n#include <cstring>\nint main(){for(int i=0;i<64;i++){"
                  "char *p=(char*)std::malloc(16<<20); if(!p) return 3; std::memset(p,1,16<<20);}"
                  " return 0;}",
    },
    "c": {
        "correct": "#include <stdio.h>\nint main(){long a; scanf(\"%ld\",&a); "
                   "printf(\"%ld\\n\",a*2); return 0;}",
        "wrong": "#include <stdio.h>\nint main(){long a; scanf(\"%ld\",&a); "
                 "printf(\"%ld\\n\",a*2+1); return 0;}",
        "crash": "int main(){volatile int *p = 0; *p = 1; return 0;}",
        "slow": "int main(){volatile unsigned long x = 0; for(;;) x++;}",
        "memory": "#include <stdlib.h>\n#include <string.h>\nint main(){for(int i=0;i<64;i++){"
                  "char *p=malloc(16<<20); if(!p) return 3; memset(p,1,16<<20);} return 0;}",
    },
    "py": {
        "correct": "print(int(input()) * 2)",
        "wrong": "print(int(input()) * 2 + 1)",
        "crash": "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)",
        "slow": "while True:\n    pass",
        "memory": "b = [bytearray(16 << 20) for _ in range(64)]\nprint(len(b))",
    },
}
# the compiled language: C++ when g++ is here, else C (gcc)
COMPILED = "cpp" if CXX else "c"


@pytest.fixture(scope="module")
def boxes() -> Iterator[str]:
    root = tempfile.mkdtemp(prefix="isol8r-isolate-")
    try:
        yield root
    finally:
        shutil.rmtree(root)


@pytest.fixture(scope="module")
def cms(boxes: str) -> Iterator[dict[str, CmsLikeSandbox]]:
    """One CMS-like sandbox per language, its submissions compiled once (CMS compiles with
    --processes=1000, as its set_multiprocess(True))."""
    made: dict[str, CmsLikeSandbox] = {}
    try:
        for i, lang in enumerate((COMPILED, "py")):
            sb = made[lang] = CmsLikeSandbox(BOX + i, boxes)
            for case, src in SOURCES[lang].items():
                if lang == "py":
                    sb.write(f"{case}.py", src + "\n")
                    continue
                ext, compiler = ((".cpp", "/usr/bin/g++") if lang == "cpp"
                                 else (".c", "/usr/bin/gcc"))
                sb.write(case + ext, src + "\n")
                rc = sb.execute([compiler, "-O2", "-o", case, case + ext], processes=1000,
                                memory=512 << 20, timeout=20, stdout=None, stderr="compile.txt")
                assert rc == 0 and sb.exit_status() == "ok", (sb.meta, sb.read("compile.txt"))
        yield made
    finally:
        for sb in made.values():
            sb.remove()


def command(lang: str, case: str) -> list[str]:
    return [PY3, "-S", f"{case}.py"] if lang == "py" else [f"./{case}"]


@pytest.mark.parametrize("lang", [COMPILED, "py"])
def test_correct_and_wrong_answers_run_ok_and_the_output_is_in_the_box(
        cms: dict[str, CmsLikeSandbox], lang: str) -> None:
    sb = cms[lang]
    sb.write("input.txt", "21\n")
    for case, want in (("correct", "42\n"), ("wrong", "43\n")):
        assert sb.execute(command(lang, case), memory=256 << 20, timeout=2,
                          stdin="input.txt") == 0
        assert sb.exit_status() == "ok", sb.meta
        assert sb.read("stdout.txt") == want
        assert sb.meta["exitcode"] == ["0"]
        for key in ("time", "time-wall", "max-rss", "cg-mem"):
            assert key in sb.meta, key
        assert float(sb.meta["time"][0]) < 2 and int(sb.meta["cg-mem"][0]) > 0
        assert "status" not in sb.meta and "killed" not in sb.meta


@pytest.mark.parametrize("lang", [COMPILED, "py"])
def test_a_crash_is_sg_with_the_signal(cms: dict[str, CmsLikeSandbox], lang: str) -> None:
    sb = cms[lang]
    assert sb.execute(command(lang, "crash"), memory=256 << 20, timeout=2) == 1
    assert sb.exit_status() == "signal"
    assert sb.meta["status"] == ["SG"] and sb.meta["exitsig"] == ["11"]
    assert sb.meta["message"] == ["Caught fatal signal 11"]
    assert "exitcode" not in sb.meta


@pytest.mark.parametrize("lang", [COMPILED, "py"])
def test_a_slow_program_is_to_and_killed(cms: dict[str, CmsLikeSandbox], lang: str) -> None:
    sb = cms[lang]
    assert sb.execute(command(lang, "slow"), memory=256 << 20, timeout=0.5) == 1
    assert sb.exit_status() == "timeout"
    assert sb.meta["status"] == ["TO"] and sb.meta["killed"] == ["1"]
    assert sb.meta["message"] == ["Time limit exceeded"]
    assert float(sb.meta["time"][0]) >= 0.5


@pytest.mark.parametrize("lang", [COMPILED, "py"])
def test_a_memory_hog_is_oom_killed(cms: dict[str, CmsLikeSandbox], lang: str) -> None:
    sb = cms[lang]
    assert sb.execute(command(lang, "memory"), memory=64 << 20, timeout=5) == 1
    assert sb.exit_status() == "memory limit exceeded", sb.meta
    assert sb.meta["status"] == ["SG"] and sb.meta["exitsig"] == ["9"]
    assert sb.meta["cg-oom-killed"] == ["1"]
    assert int(sb.meta["cg-mem"][0]) <= 64 * 1024 + 64


def test_a_sleeping_program_is_a_wall_clock_timeout(cms: dict[str, CmsLikeSandbox]) -> None:
    sb = cms["py"]
    sb.write("sleep.py", "import time\ntime.sleep(30)\n")
    t0 = time.monotonic()
    assert sb.execute([PY3, "-S", "sleep.py"], timeout=0.2) == 1  # --wall-time=1.4
    assert time.monotonic() - t0 < 15
    assert sb.exit_status() == "wall timeout"
    assert sb.meta["message"] == ["Time limit exceeded (wall clock)"]


def test_one_process_unless_more_are_allowed(cms: dict[str, CmsLikeSandbox]) -> None:
    sb = cms["py"]
    sb.write("fork.py", "import os\npid = os.fork()\nif pid == 0: os._exit(0)\n"
             "os.waitpid(pid, 0)\nprint('forked')\n")
    assert sb.execute([PY3, "-S", "fork.py"], timeout=2) == 1
    assert sb.exit_status() == "nonzero return"
    assert "Resource temporarily unavailable" in sb.read("stderr.txt")
    assert sb.execute([PY3, "-S", "fork.py"], timeout=2, processes=10) == 0
    assert sb.read("stdout.txt") == "forked\n"


def test_init_prints_the_box_and_cleanup_leaves_nothing(boxes: str) -> None:
    cgroups = set(isol8r_cgroups())
    r = isolate("--cg", "-b", "40", "--init", root=boxes)
    assert r.returncode == 0 and r.stdout == f"{boxes}/40\n"
    box = Path(boxes, "40", "box")
    assert box.is_dir() and (box.stat().st_mode & 0o777) == 0o700
    (box / "hello.sh").write_text("echo hello > out.txt\n")
    r = isolate("--cg", "-b40", "-M", f"{boxes}/meta", "-s", "--run", "--", "/bin/sh", "hello.sh",
                root=boxes)
    assert r.returncode == 0 and r.stderr == "", r.stderr  # --silent: no status line
    assert (box / "out.txt").read_text() == "hello\n"
    assert (box / "out.txt").stat().st_uid == os.getuid()  # given back to the caller
    # --init again resets the box
    assert isolate("--cg", "-b", "40", "--init", root=boxes).returncode == 0
    assert not (box / "out.txt").exists()
    r = isolate("--cg", "-b", "40", "--cleanup", root=boxes)
    assert r.returncode == 0
    assert not Path(boxes, "40").exists()
    assert isolate("--cg", "-b", "40", "--cleanup", root=boxes).returncode == 0  # idempotent
    assert set(isol8r_cgroups()) <= cgroups


def test_run_without_init_is_a_sandbox_error(boxes: str) -> None:
    meta = f"{boxes}/xx.meta"
    r = isolate("-b", "41", f"--meta={meta}", "--run", "--", "/bin/true", root=boxes)
    assert r.returncode == 2
    assert "Box not found, did you run `isolate --init'?" in r.stderr
    assert Path(meta).read_text().startswith("status:XX\nmessage:Box not found")


@pytest.mark.parametrize("args,says", [
    (["--bogus", "--init"], "unrecognized option '--bogus'"),
    (["--cg-mem=100", "--run", "--", "/bin/true"], "require --cg"),
    (["--init", "--cleanup"], "Only one command is allowed"),
    (["--box-id=x", "--init"], "Invalid numeric parameter"),
    (["--run"], "requires a command"),
    (["--dir=/a:bogus", "--init"], "Unknown option 'bogus'"),
    (["--dir=/a=rel", "--init"], "Right-hand side must start with '/' or './'"),
    (["--quota=10,10", "--init"], "--quota is not supported"),
    (["--tty-hack", "--run", "--", "/bin/true"], "--tty-hack is not supported"),
    (["--no-cg-timing", "--run", "--", "/bin/true"], "--no-cg-timing is not supported"),
    ([], "Please specify an isolate command"),
])
def test_bad_command_lines_exit_2_naming_the_word(boxes: str, args: list[str], says: str) -> None:
    r = isolate(*args, root=boxes)
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_version(boxes: str) -> None:
    r = isolate("--version", root=boxes)
    assert r.returncode == 0 and r.stdout.startswith("The process isolator ")
    assert boxes in r.stdout
    r = isolate("--help", root=boxes)
    assert r.returncode == 2 and r.stdout.startswith("usage: isol8r isolate")  # as isolate's


@pytest.fixture
def box(boxes: str) -> Iterator[tuple[str, Path]]:
    assert isolate("-b", "42", "--init", root=boxes).returncode == 0
    try:
        yield boxes, Path(boxes, "42", "box")
    finally:
        assert isolate("-b", "42", "--cleanup", root=boxes).returncode == 0


def test_dir_rules_rw_ro_maybe_tmp_noexec(box: tuple[str, Path], open_dir: Path) -> None:
    root, b = box
    (open_dir / "ro").mkdir()
    (open_dir / "rw").mkdir()
    (open_dir / "rw").chmod(0o777)
    shutil.copy("/bin/true", open_dir / "ro" / "true")
    script = ("echo x > /rw/w && ! (echo y > /ro/w) 2>/dev/null && /ro/true && "
              "echo t > /scratch/t && ! [ -e /nothere ] && ! /nx/true 2>/dev/null && echo done")
    (b / "s.sh").write_text(script + "\n")
    r = isolate("-b", "42", f"--dir=/ro={open_dir}/ro", f"--dir=/rw={open_dir}/rw:rw",
                f"--dir=/nx={open_dir}/ro:noexec", f"--dir=/nothere={open_dir}/missing:maybe",
                "--dir=/scratch:tmp", "--processes=10", "--stdout=out", "-M", f"{root}/m",
                "--run", "--", "/bin/sh", "s.sh", root=root)
    assert r.returncode == 0, (r.stderr, Path(root, "m").read_text())
    assert (b / "out").read_text() == "done\n"
    assert (open_dir / "rw" / "w").read_text() == "x\n"
    r = isolate("-b", "42", f"--dir=/nx={open_dir}/ro:noexec", "--run", "--", "/nx/true",
                root=root)
    assert r.returncode == 1 and "Exited with error status 126" in r.stderr


def test_a_writable_dir_gives_the_box_user_its_own_rights_only(box: tuple[str, Path],
                                                               open_dir: Path) -> None:
    """As under isolate, `:rw` lets the box's uid write where the directory's permissions let it
    (CMS's allow_writing_none() makes its home 0755 for this): never as the owner, root."""
    root, b = box
    (open_dir / "closed").mkdir(mode=0o755)
    (open_dir / "closed" / "f").write_text("root's\n")
    (open_dir / "open").mkdir()
    (open_dir / "open").chmod(0o777)
    script = ("! (echo x > /closed/f) 2>/dev/null && ! touch /closed/new 2>/dev/null && "
              "echo y > /open/new && echo done")
    r = isolate("-b", "42", f"--dir=/closed={open_dir}/closed:rw",
                f"--dir=/open={open_dir}/open:rw", "-p5", "--stdout=out", "--run", "--", "/bin/sh", "-c", script, root=root)
    assert r.returncode == 0, r.stderr
    assert (b / "out").read_text() == "done\n"
    assert (open_dir / "closed" / "f").read_text() == "root's\n"
    assert (open_dir / "open" / "new").stat().st_uid != 0  # the box user's, as under isolate


def test_judge0_and_piston_command_lines(box: tuple[str, Path]) -> None:
    """Judge0 (isolate 1.x's --cg-timing, -p attached, -E NAME, -d /etc:noexec, -i /dev/null)
    and Piston (-c /box/submission, --dir=/etc:noexec, --extra-time=0) as they spell them."""
    root, b = box
    (b / "run").write_text("echo $HOME $LANG; cat /etc/hostname >/dev/null && echo etc\n")
    env = dict(os.environ, LANG="C.UTF-8", PYTHONPATH=str(ROOT / "src"), ISOL8R_ISOLATE_ROOT=root)
    judge0 = ["--cg", "-s", "-b", "42", "-M", f"{root}/m0", "--stderr-to-stdout", "-i",
              "/dev/null", "-t", "5", "-x", "1", "-w", "10", "-k", "64000", "-p60", "--cg-timing",
              "--cg-mem=128000", "-f", "1024", "-E", "HOME=/tmp", "-E", "PATH=/usr/bin:/bin",
              "-E", "LANG", "-E", "JUDGE0_HOMEPAGE", "-d", "/etc:noexec", "--run", "--",
              "/bin/bash", "run"]
    r = subprocess.run([sys.executable, "-m", "isol8r", "isolate", *judge0], env=env, text=True,
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "/tmp C.UTF-8\netc\n"
    (b / "submission").mkdir()
    (b / "submission" / "run").write_text("pwd\n")
    piston = ["--run", "-b42", f"--meta={root}/m1", "--cg", "-s", "-c", "/box/submission", "-E",
              "HOME=/tmp", "-E", "PISTON_LANGUAGE=bash", "--dir=/etc:noexec", "--processes=64",
              "--open-files=2048", "--fsize=10000", "--wall-time=3", "--time=3",
              "--extra-time=0", "--cg-mem=128000", "--", "/bin/bash", "run"]
    r = subprocess.run([sys.executable, "-m", "isol8r", "isolate", *piston], env=env, text=True,
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "/box/submission\n"
    assert "exitcode:0\n" in Path(root, "m1").read_text()


@pytest.mark.parametrize("rule,says", [
    ("--dir=/d=/dev:dev", "device access is refused"),
    ("--dir=/u=/usr:norec", "recursively only"),
    ("--dir=/s=sysfs:fs", "only tmpfs can be mounted"),
    ("--dir=/usr=", "always has /usr"),
    ("--dir=/gone=/no/such/dir", "No such file or directory"),
])
def test_dir_rules_isol8r_refuses(box: tuple[str, Path], rule: str, says: str) -> None:
    root, _ = box
    r = isolate("-b", "42", rule, "-M", f"{root}/m", "--run", "--", "/bin/true", root=root)
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert Path(root, "m").read_text().startswith("status:XX\n")


def test_redirections_stay_in_the_box(box: tuple[str, Path]) -> None:
    """A symlink the program leaves in the box is removed after the run (isolate's special
    files rule), and a redirection never follows one out of its directory."""
    root, b = box
    r = isolate("-b", "42", "--run", "--", "/bin/ln", "-s", "/etc/shadow", "in", root=root)
    assert r.returncode == 0, r.stderr
    assert not os.path.lexists(b / "in")
    os.symlink("/etc/shadow", b / "in2")  # one made behind isolate's back
    r = isolate("-b", "42", "--stdin=in2", "--run", "--", "/bin/cat", root=root)
    assert r.returncode == 2 and "open(\"in2\")" in r.stderr
    r = isolate("-b", "42", "--stdin=/etc/passwd", "--run", "--", "/bin/cat", root=root)
    assert r.returncode == 2 and "bound with --dir" in r.stderr


def test_env_rules(box: tuple[str, Path]) -> None:
    root, b = box
    env = dict(os.environ, ISOL8R_TEST_VAR="outside")
    args = ["-b", "42", "--env=ISOL8R_TEST_VAR", "--env=A=1", "--env=B=2", "--env=B=",
            "--stdout=env.txt", "--run", "--", "/usr/bin/env"]
    r = subprocess.run([sys.executable, "-m", "isol8r", "isolate", *args], text=True,
                       capture_output=True, env=dict(env, PYTHONPATH=str(ROOT / "src"),
                                                     ISOL8R_ISOLATE_ROOT=root))
    assert r.returncode == 0, r.stderr
    lines = (b / "env.txt").read_text().splitlines()
    assert "ISOL8R_TEST_VAR=outside" in lines and "A=1" in lines
    assert "LIBC_FATAL_STDERR_=1" in lines
    assert not any(line.startswith("B=") for line in lines)


def test_relative_redirections_are_from_the_box_whatever_the_chdir(box: tuple[str, Path]) -> None:
    """isolate opens --stdin/--stdout/--stderr before its --chdir: a relative one is in /box."""
    root, b = box
    (b / "sub").mkdir()
    (b / "in").write_text("from the box\n")
    r = isolate("-b", "42", "--chdir=sub", "--stdin=in", "--stdout=out", "-p5", "--run", "--",
                "/bin/sh", "-c", "cat; pwd", root=root)
    assert r.returncode == 0, r.stderr
    assert (b / "out").read_text() == "from the box\n/box/sub\n"


def test_a_program_that_cannot_start_is_re_127(box: tuple[str, Path]) -> None:
    root, _ = box
    r = isolate("-b", "42", "-M", f"{root}/m", "--run", "--", "/no/such/program", root=root)
    assert r.returncode == 1
    meta = Path(root, "m").read_text()
    assert "exitcode:127\n" in meta and "status:RE\n" in meta


# ---- judge hygiene (issue 18, item 4) -----------------------------------------------------


def test_dev_shm_is_each_box_s_own(boxes: str) -> None:
    """Two boxes at once: what one puts in /dev/shm, the other does not see (isolate 2.6's
    fix; isol8r mounts a fresh tmpfs at /dev/shm in every jail)."""
    for n in ("43", "44"):
        assert isolate("-b", n, "--init", root=boxes).returncode == 0
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), ISOL8R_ISOLATE_ROOT=boxes)
        writer = subprocess.Popen(
            [sys.executable, "-m", "isol8r", "isolate", "-b", "43", "--processes=5", "--run",
             "--", "/bin/sh", "-c", "echo secret > /dev/shm/x; sleep 3"], env=env)
        try:
            time.sleep(1.5)
            probe = ("ls -A /dev/shm; grep ' /dev/shm ' /proc/self/mountinfo | "
                     "cut -d' ' -f9")
            r = isolate("-b", "44", "--processes=5", "--stdout=o", "--run", "--", "/bin/sh", "-c",
                        probe, root=boxes)
            assert r.returncode == 0, r.stderr
            assert Path(boxes, "44", "box", "o").read_text() == "tmpfs\n"
        finally:
            assert writer.wait(timeout=30) == 0
        assert not os.path.exists("/dev/shm/x")
    finally:
        for n in ("43", "44"):
            isolate("-b", n, "--cleanup", root=boxes)


def test_keyrings_are_denied(box: tuple[str, Path]) -> None:
    """keyctl (the keyring is not namespaced: isolate's syscall flag 1) fails in a box."""
    root, b = box
    (b / "k.py").write_text(
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "r = libc.syscall(250, 0, 0, 0, 0, 0)\n"  # keyctl(KEYCTL_GET_KEYRING_ID, ...), x86_64
        "print(r, os.strerror(ctypes.get_errno()))\n")
    r = isolate("-b", "42", "--stdout=o", "--run", "--", PY3, "-S", "k.py", root=root)
    assert r.returncode == 0, r.stderr
    assert (b / "o").read_text() == "-1 Operation not permitted\n"


# ---- compile once, run many: the box model from Python (issue 18, item 3) ---------------------


def test_compile_once_run_many_through_the_library(boxes: str) -> None:
    """Box: compiled once, then run against 30 tests, each a fresh jail with its own limits and
    Meta; the binary stays. Many runs in a row through the fork server, whose warm jails are
    made while the box waits between runs, owned by the caller (an idmapped bind of the box
    made those fail now and then: its idmap follows the owner the box had when the warm jail
    was made, and the box is the box user's only during a run)."""
    from isol8r.isolate import Box
    b = Box(45, root=boxes)
    b.init()
    try:
        Path(b.box, "sol.c").write_text(SOURCES["c"]["correct"] + "\n")
        m = b.run(["/usr/bin/gcc", "-O2", "-o", "sol", "sol.c"], processes=100, time=20,
                  env=["PATH=/usr/bin:/bin"], silent=True)
        assert m.status == "OK", m.text()
        for i in range(30):
            Path(b.box, "in").write_text(f"{i}\n")
            m = b.run(["./sol"], time=1.0, wall_time=2.0, stdin="in", stdout="out", silent=True)
            assert m.status == "OK" and m.exit_status == 0, (i, m.text())
            assert Path(b.box, "out").read_text() == f"{2 * i}\n"
        m = b.run(["./sol"], time=0.5, stdin="/dev/null", stdout="out", silent=True)
        assert m.status == "OK"
        assert Path(b.box, "sol").stat().st_uid == os.getuid()
    finally:
        b.cleanup()
    assert not os.path.exists(b.path)


LOCKER = ("import fcntl, time\nf = open('/usr/bin/python3', 'rb')\n"
          "try:\n    fcntl.lockf(f, fcntl.LOCK_SH | fcntl.LOCK_NB)\n"
          "    print('locked', flush=True)\n"
          "except OSError as e:\n    print(e.strerror, flush=True)\ntime.sleep(2.5)\n")
# F_GETLK for a write lock on the same inode: F_UNLCK (2) back when no one holds a lock on it
WATCHER = ("import fcntl, struct\nf = open('/usr/bin/python3', 'rb')\n"
           "r = fcntl.fcntl(f, fcntl.F_GETLK, struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, 0, 0, 0))\n"
           "print('free' if struct.unpack('hhqqi4x', r)[0] == fcntl.F_UNLCK else 'seen')\n")


def test_a_file_lock_taken_in_one_box_is_not_seen_in_another(boxes: str) -> None:
    """isolate's syscall flag 4: the inodes of /usr are every box's, and a lock lives on the
    inode. The front end denies taking one (--seccomp-deny @file-locks), so none is seen."""
    for n in ("46", "47"):
        assert isolate("-b", n, "--init", root=boxes).returncode == 0
    try:
        Path(boxes, "46", "box", "lock.py").write_text(LOCKER)
        Path(boxes, "47", "box", "watch.py").write_text(WATCHER)
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), ISOL8R_ISOLATE_ROOT=boxes)
        locker = subprocess.Popen([sys.executable, "-m", "isol8r", "isolate", "-b", "46",
                                   "--stdout=o", "--run", "--", PY3, "-S", "lock.py"], env=env)
        try:
            time.sleep(1.5)
            r = isolate("-b", "47", "--stdout=o", "--run", "--", PY3, "-S", "watch.py",
                        root=boxes)
            assert r.returncode == 0, r.stderr
        finally:
            assert locker.wait(timeout=30) == 0
        assert Path(boxes, "46", "box", "o").read_text() == "Operation not permitted\n"
        assert Path(boxes, "47", "box", "o").read_text() == "free\n"
    finally:
        for n in ("46", "47"):
            isolate("-b", n, "--cleanup", root=boxes)


def test_a_file_lock_is_seen_across_jails_without_the_deny_twin() -> None:
    """The protection-off twin: two plain jails at once; the lock one takes, the other sees."""
    import threading

    import isol8r
    out: list[isol8r.Result] = []
    t = threading.Thread(target=lambda: out.append(
        isol8r.run([PY3, "-S", "-c", LOCKER], capture_output=True)))
    t.start()
    try:
        time.sleep(1.5)
        r = isol8r.run([PY3, "-S", "-c", WATCHER], capture_output=True)
    finally:
        t.join(30)
    assert out[0].stdout == b"locked\n"
    assert r.stdout == b"seen\n"


def test_vsock_sockets_are_denied(box: tuple[str, Path]) -> None:
    root, b = box
    (b / "v.py").write_text("import socket\ntry:\n    socket.socket(40, socket.SOCK_STREAM)\n"
                            "    print('made')\nexcept OSError as e:\n    print(e.strerror)\n")
    r = isolate("-b", "42", "--stdout=o", "--run", "--", PY3, "-S", "v.py", root=root)
    assert r.returncode == 0, r.stderr
    assert (b / "o").read_text() == "Operation not permitted\n"
