"""isolate's command line over isol8r: `isol8r isolate --init | --run -- PROG | --cleanup`.

Judges written for IOI's isolate (CMS, Judge0, Piston) drive it through its command line and
read its meta file; this front end takes the same options and writes the same keys, so such a
judge can use isol8r by changing the program's name. It owns no isolation of its own: a box is a
directory (`<root>/<id>/box`, isolate's layout), and each --run is a fresh isol8r jail over it,
built from a Spec like any other run; compile once, run many falls out of that (the compiled
files stay in the box between runs). `Box` is the same model for a judge written in Python.

Where isol8r is stricter than isolate (its seccomp policy, device access, non-recursive binds)
the option is refused with a one-line error or documented in docs/judges.md, never ignored.
"""

from __future__ import annotations

import fcntl
import os
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

# isolate's defaults (its default.cf and isolate.c): the box root, the config file
DEFAULT_ROOT = "/var/local/lib/isolate"
DEFAULT_CONFIG = "/usr/local/etc/isolate"
ROOT_ENV = "ISOL8R_ISOLATE_ROOT"  # the box root, over the config file's box_root
CONFIG_ENV = "ISOL8R_ISOLATE_CONFIG"  # isolate's config file (box_root, num_boxes are read)
ISOLATE_VERSION = "2.6"  # the isolate release whose command line and meta file this follows
MAX_BOXES = 65000  # CMS numbers its boxes up to (1 + 63) * 1000 + 999
BOX_UID_BASE = 500  # box N runs as jail uid 500 + N (host uid: isol8r's id base + that)
DEFAULT_OPEN_FILES = 1024
# isolate's default directory rules; isol8r's own root gives each of them already (its /dev
# and /dev/shm and /tmp are the jail's own, fresh each run), so only /box is mounted here
DEFAULT_DIRS = {"box": ("./box", {"rw"}), "bin": ("/bin", set()), "dev": ("/dev", {"dev", "norec"}),
                "dev/shm": ("tmpfs", {"fs", "rw"}), "lib": ("/lib", set()),
                "lib64": ("/lib64", {"maybe"}), "proc": ("proc", {"fs"}),
                "tmp": (None, {"tmp", "rw"}), "usr": ("/usr", set())}
DIR_FLAGS = ("rw", "noexec", "fs", "maybe", "dev", "tmp", "norec")
# options isolate has that this front end refuses, with the reason (docs/judges.md)
UNSUPPORTED = {
    "quota": "disk quotas: give the box a size-capped filesystem instead (isol8r's /tmp is one)",
    "no-default-dirs": "isol8r's root always holds /usr, /bin, /lib*, its own /dev, /proc, /tmp",
    "tty-hack": "use `isol8r run --tty`",
    "special-files": "special files made in the box are always removed, as isolate does by default",
    "as-uid": "boxes belong to the caller", "as-gid": "boxes belong to the caller",
    "syscalls": "isol8r's seccomp policy is fixed (stricter than isolate's syscall_flags: "
                "keyctl, io_uring, AF_VSOCK and foreign-architecture calls are all denied)",
    "print-cg-root": "isol8r makes its cgroups in its own subtree, per run",
    "no-cg-timing": "isol8r times the whole jail, every process of it (isolate 1.x's "
                    "--cg-timing, which is accepted)",
    "check-config": "see `isol8r isolate --version`",
}
# long name -> (short letter, takes: 0 no value, 1 a value, 2 an optional value, "=..." only)
_OPTS: dict[str, tuple[str | None, int]] = {
    "box-id": ("b", 1), "chdir": ("c", 1), "cg": (None, 0), "cg-mem": (None, 1),
    "cleanup": (None, 0), "core": (None, 1), "dir": ("d", 1), "fsize": ("f", 1),
    "env": ("E", 1), "extra-time": ("x", 1), "full-env": ("e", 0), "inherit-fds": (None, 0),
    "init": (None, 0), "mem": ("m", 1), "meta": ("M", 1), "processes": ("p", 2),
    "run": (None, 0), "share-net": (None, 0), "silent": ("s", 0), "stack": ("k", 1),
    "open-files": ("n", 1), "stderr": ("r", 1), "stderr-to-stdout": (None, 0), "stdin": ("i", 1),
    "stdout": ("o", 1), "time": ("t", 1), "verbose": ("v", 0), "version": (None, 0),
    "wait": (None, 0), "wall-time": ("w", 1),
    "quota": ("q", 1), "no-default-dirs": ("D", 0), "tty-hack": (None, 0),
    "special-files": (None, 0), "as-uid": (None, 1), "as-gid": (None, 1), "syscalls": (None, 1),
    "print-cg-root": (None, 0), "check-config": (None, 0),
    "cg-timing": (None, 0), "no-cg-timing": (None, 0),  # isolate 1.x's, as Judge0 passes them
}
_SHORT = {short: name for name, (short, _) in _OPTS.items() if short}
COMMANDS = ("init", "run", "cleanup", "version")


USAGE = """usage: isol8r isolate [options] --init | --run -- PROG [ARGS...] | --cleanup | --version

IOI isolate's command line over isol8r (docs/judges.md): a box is <root>/<id>/box, /box in each
jail; --run runs one program there in a fresh jail and writes isolate's meta file.

  -b, --box-id=ID        the box (default 0)      --cg, --cg-mem=KB     cgroup memory limit
  -M, --meta=FILE        isolate's meta file      -m, --mem=KB          address space limit
  -t, --time=S           CPU time limit           -x, --extra-time=S    grace before the kill
  -w, --wall-time=S      wall-clock limit         -p, --processes[=N]   processes (default 1)
  -n, --open-files=N     (default 1024)           -f, --fsize=KB        largest file written
  -k, --stack=KB         stack limit              --core=KB             core files (default 0)
  -d, --dir=IN[=OUT][:rw:noexec:maybe:tmp:fs]     a directory in the jail (isolate's rules)
  -E, --env=VAR[=VAL]    -e, --full-env           -c, --chdir=DIR       working directory
  -i, --stdin=FILE       -o, --stdout=FILE        -r, --stderr=FILE     --stderr-to-stdout
  --share-net            --inherit-fds            -s, --silent          -v, --verbose
  --wait                 wait for a busy box

Box root: $ISOL8R_ISOLATE_ROOT, else box_root in isolate's config file ($ISOL8R_ISOLATE_CONFIG
or /usr/local/etc/isolate), else /var/local/lib/isolate. Exit status: 0 the program succeeded,
1 it failed (RE, SG, TO), 2 the sandbox failed or the command line was bad.
"""


class UsageError(Exception):
    """A bad command line: isolate prints it and exits 2."""


class BoxError(Exception):
    """A failure of the sandbox itself (isolate's die()): status XX, exit 2."""


@dataclass
class Rule:
    """One --dir rule: the path inside (relative to the box's root, as isolate keeps it), the
    outside path (None: the rule removes one), and its flags."""

    inside: str
    outside: str | None
    flags: set[str]
    default: bool = False


@dataclass
class Options:
    """An isolate command line, parsed; sizes in KiB and times in seconds, as isolate takes them."""

    command: str | None = None
    argv: list[str] = field(default_factory=list)
    box_id: int = 0
    cg: bool = False
    cg_mem: int | None = None
    chdir: str | None = None
    core: int = 0
    rules: list[Rule] = field(default_factory=list)
    full_env: bool = False
    env: list[str] = field(default_factory=list)
    extra_time: float = 0.0
    fsize: int | None = None
    inherit_fds: bool = False
    mem: int | None = None
    meta: str | None = None
    processes: int | None = 1  # None: any number (--processes without a value)
    share_net: bool = False
    silent: bool = False
    stack: int | None = None
    open_files: int = DEFAULT_OPEN_FILES
    stdin: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    stderr_to_stdout: bool = False
    time: float | None = None
    wall_time: float | None = None
    verbose: int = 0
    wait: bool = False


def _uint(name: str, value: str) -> int:
    if not value.isdigit() or int(value) > 2**31 - 1:
        raise UsageError(f"Invalid numeric parameter: --{name}={value}")
    return int(value)


def _seconds(name: str, value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise UsageError(f"Invalid time: --{name}={value}") from None
    if not 0 <= x < 1e9:
        raise UsageError(f"Invalid time: --{name}={value}")
    return x


def sanitize_inside(path: str) -> str | None:
    """A rule's inside path as isolate keeps it: leading slashes gone, no '..'."""
    path = path.lstrip("/")
    if not path or ".." in path.split("/"):
        return None
    return path.rstrip("/")


def parse_dir(arg: str) -> Rule:
    """isolate's --dir syntax: IN=OUT[:OPTS], DIR[:OPTS], IN= (remove), IN:tmp, IN=FS:fs."""
    head, *opts = arg.split(":")
    flags = set()
    for opt in opts:
        if opt not in DIR_FLAGS:
            raise UsageError(f"Invalid directory rule '{arg}': Unknown option '{opt}'")
        flags.add(opt)
    inside, eq, out = head.partition("=")
    clean = sanitize_inside(inside)
    if clean is None:
        raise UsageError(f"Invalid directory rule '{arg}': Invalid path")
    if "fs" in flags and "tmp" in flags:
        raise UsageError(f"Invalid directory rule '{arg}': Flags 'fs' and 'tmp' are mutually "
                         "exclusive")
    if "fs" in flags:
        if not eq:
            raise UsageError(f"Invalid directory rule '{arg}': Missing filesystem name")
        if out not in ("proc", "sysfs", "tmpfs", "devpts"):
            raise UsageError(f"Invalid directory rule '{arg}': This filesystem is not supported")
        return Rule(clean, out, flags)
    if "tmp" in flags:
        if eq:
            raise UsageError(f"Invalid directory rule '{arg}': Temporary directory mounts do not "
                             "have a right-hand side")
        return Rule(clean, None, flags | {"rw"})
    if eq:
        if not out:
            return Rule(clean, None, {"remove"})
        if not (out.startswith("/") or out.startswith("./")):
            raise UsageError(f"Invalid directory rule '{arg}': Right-hand side must start with "
                             "'/' or './'")
        return Rule(clean, out, flags)
    return Rule(clean, "/" + clean, flags)


def add_rule(rules: list[Rule], rule: Rule) -> None:
    """A rule for an inside path that has one already replaces it in its place, as in isolate."""
    for i, old in enumerate(rules):
        if old.inside == rule.inside:
            rules[i] = rule
            return
    rules.append(rule)


def default_rules() -> list[Rule]:
    return [Rule(k, out, set(flags), default=True) for k, (out, flags) in DEFAULT_DIRS.items()]


def parse(argv: Sequence[str]) -> Options:
    """isolate's command line (getopt_long: --name=value, --name value, -bN, -b N; options end
    at '--' or at the first word that is not one); UsageError naming the bad word."""
    o = Options(rules=default_rules())
    args = list(argv)
    i = 0
    while i < len(args):
        word = args[i]
        i += 1
        if word == "--":
            break
        if not word.startswith("-") or word == "-":
            i -= 1
            break
        value: str | None
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            if not eq:
                value = None
            if name not in _OPTS:
                raise UsageError(f"unrecognized option '--{name}'")
            takes = _OPTS[name][1]
            if takes == 1 and value is None:
                if i >= len(args):
                    raise UsageError(f"option '--{name}' requires an argument")
                value = args[i]
                i += 1
            elif takes == 0 and value is not None:
                raise UsageError(f"option '--{name}' doesn't allow an argument")
            _apply(o, name, value)
            continue
        j = 1  # a cluster of short options: -sv, -b1, -b 1, -p, -p10
        while j < len(word):
            letter = word[j]
            if letter not in _SHORT:
                raise UsageError(f"invalid option -- '{letter}'")
            name = _SHORT[letter]
            takes = _OPTS[name][1]
            rest = word[j + 1:]
            if takes == 0:
                _apply(o, name, None)
                j += 1
                continue
            if takes == 2:
                _apply(o, name, rest or None)
            elif rest:
                _apply(o, name, rest)
            elif i < len(args):
                _apply(o, name, args[i])
                i += 1
            else:
                raise UsageError(f"option requires an argument -- '{letter}'")
            break
    o.argv = args[i:]
    if o.command is None:
        raise UsageError("Please specify an isolate command (e.g. --init, --run).")
    if o.cg_mem is not None and not o.cg:
        raise UsageError("Options related to control groups require --cg to be set.")
    if o.command == "run" and not o.argv:
        raise UsageError("--run mode requires a command to run")
    if o.command in ("init", "cleanup") and o.argv:
        raise UsageError(f"--{o.command} mode takes no parameters")
    return o


def _apply(o: Options, name: str, value: str | None) -> None:
    if name in UNSUPPORTED:
        raise UsageError(f"--{name} is not supported by isol8r's isolate front end: "
                         f"{UNSUPPORTED[name]}")
    if name in COMMANDS:
        if o.command not in (None, name):
            raise UsageError("Only one command is allowed.")
        o.command = name
        return
    v = value or ""
    if name == "box-id":
        o.box_id = _uint(name, v)
    elif name == "cg":
        o.cg = True
    elif name == "cg-mem":
        o.cg_mem = _uint(name, v)
    elif name == "chdir":
        o.chdir = v
    elif name == "core":
        o.core = _uint(name, v)
    elif name == "dir":
        rule = parse_dir(v)
        add_rule(o.rules, rule)
    elif name == "env":
        if not v or v.startswith("="):
            raise UsageError(f"Invalid environment specified: {v}")
        o.env.append(v)
    elif name == "full-env":
        o.full_env = True
    elif name == "extra-time":
        o.extra_time = _seconds(name, v)
    elif name == "fsize":
        o.fsize = _uint(name, v)
    elif name == "inherit-fds":
        o.inherit_fds = True
    elif name == "mem":
        o.mem = _uint(name, v)
    elif name == "meta":
        o.meta = v
    elif name == "processes":
        o.processes = _uint(name, value) if value is not None else None
        if o.processes == 0:
            o.processes = None
    elif name == "share-net":
        o.share_net = True
    elif name == "silent":
        o.silent = True
    elif name == "stack":
        o.stack = _uint(name, v)
    elif name == "open-files":
        o.open_files = _uint(name, v)
    elif name == "stdin":
        o.stdin = v
    elif name == "stdout":
        o.stdout = v
    elif name == "stderr":
        o.stderr, o.stderr_to_stdout = v, False
    elif name == "stderr-to-stdout":
        o.stderr, o.stderr_to_stdout = None, True
    elif name == "time":
        o.time = _seconds(name, v) or None
    elif name == "wall-time":
        o.wall_time = _seconds(name, v) or None
    elif name == "verbose":
        o.verbose += 1
    elif name == "wait":
        o.wait = True
    elif name == "cg-timing":
        pass  # what isol8r does anyway: the CPU time of the whole jail


# ---- the box ----------------------------------------------------------------------------------


def box_root() -> str:
    """Where boxes live: $ISOL8R_ISOLATE_ROOT, else box_root in isolate's config file
    ($ISOL8R_ISOLATE_CONFIG or /usr/local/etc/isolate), else isolate's default."""
    root = os.environ.get(ROOT_ENV)
    if root:
        return os.path.abspath(root)
    config = os.environ.get(CONFIG_ENV, DEFAULT_CONFIG)
    try:
        with open(config, encoding="utf-8") as f:
            for line in f:
                key, eq, value = line.partition("=")
                if eq and key.strip() == "box_root" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return DEFAULT_ROOT


@dataclass
class Meta:
    """What isolate writes to its meta file, in its order; `text()` is the file."""

    lines: list[tuple[str, str]] = field(default_factory=list)
    exit_status: int = 0  # isolate's own: 0 ok, 1 the program failed, 2 the sandbox failed

    def add(self, key: str, value: Any) -> None:
        self.lines.append((key, str(value)))

    def get(self, key: str) -> str | None:
        return next((v for k, v in self.lines if k == key), None)

    def text(self) -> str:
        return "".join(f"{k}:{v}\n" for k, v in self.lines)

    @property
    def status(self) -> str:
        """RE, SG, TO or XX, or OK when isolate writes no status."""
        return self.get("status") or "OK"

    @property
    def message(self) -> str | None:
        return self.get("message")


class Box:
    """One isolate box: <root>/<id>/box is /box in each jail run over it. For a judge in Python:
    Box(3).init(); copy the program in; box.run(["./prog"], time=1, stdin="in.txt", ...) for each
    test, each a fresh jail with its own limits and Meta; box.cleanup()."""

    def __init__(self, box_id: int = 0, root: str | None = None, cg: bool = False) -> None:
        if not 0 <= box_id < MAX_BOXES:
            raise BoxError(f"Sandbox ID out of range (allowed: 0-{MAX_BOXES - 1})")
        self.box_id, self.cg = box_id, cg
        self.root = root or box_root()
        self.path = os.path.join(self.root, str(box_id))
        self.box = os.path.join(self.path, "box")
        self.uid = BOX_UID_BASE + box_id
        from .spec import DEFAULT_ID_BASE
        self.host_uid = DEFAULT_ID_BASE + self.uid  # the jail's uid as the host sees it
        self.verbose = 0

    def _msg(self, text: str) -> None:
        if self.verbose:
            sys.stderr.write(text + "\n")

    def _lock(self, wait: bool) -> int:
        """isolate's per-box lock: one instance manages a box at a time."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise BoxError("This box is currently in use by another process") from None
        return fd

    def init(self, wait: bool = False) -> str:
        """Make (or reset) the box and return its directory, which isolate prints."""
        os.makedirs(self.root, 0o755, exist_ok=True)
        try:
            os.mkdir(self.path, 0o755)
        except FileExistsError:
            pass
        fd = self._lock(wait)
        try:
            self._msg("Preparing sandbox")
            _rmtree(self.box)
            os.mkdir(self.box, 0o700)
            os.chown(self.box, os.getuid(), os.getgid())
        finally:
            os.close(fd)
        return self.path

    def cleanup(self, wait: bool = False) -> None:
        """Remove the box; nothing to do when there is none."""
        if not os.path.isdir(self.path):
            self._msg("Nothing to do -- box did not exist")
            return
        fd = self._lock(wait)
        try:
            self._msg("Deleting sandbox")
            _rmtree(self.path)
        finally:
            os.close(fd)

    def run(self, argv: Sequence[str], opts: Options | None = None, *, fork_server: bool = True,
            **changes: Any) -> Meta:
        """One --run: a fresh jail over the box with opts' limits (keyword arguments change
        Options fields: time=1, stdin="in.txt", ...). The Meta holds what isolate's meta file
        would; BoxError when the box is missing or busy."""
        import dataclasses
        o = dataclasses.replace(opts) if opts is not None else Options(rules=default_rules())
        for k, v in changes.items():
            if not hasattr(o, k):
                raise TypeError(f"unknown isolate option {k!r}")
            setattr(o, k, v)
        if not os.path.isdir(self.box):
            raise BoxError(f"Box not found, did you run `isolate{' --cg' if self.cg else ''} "
                           "--init'?")
        lock = self._lock(o.wait)
        try:
            _chowntree(self.box, self.host_uid, self.host_uid)
            try:
                return self._run(list(argv), o, fork_server)
            finally:
                _chowntree(self.box, os.getuid(), os.getgid())
        finally:
            os.close(lock)

    # -- the run ---------------------------------------------------------------------------

    def _mounts(self, o: Options) -> tuple[list[Any], list[tuple[str, str, bool]]]:
        """isol8r Mounts for the rules, and (inside, host, writable) of the bound directories."""
        from .spec import Mount
        mounts, bound = [], []
        for r in o.rules:
            dst = "/" + r.inside
            if "remove" in r.flags:
                if r.inside != "box" and r.inside in DEFAULT_DIRS:
                    raise BoxError(f"--dir={r.inside}=: isol8r's root always has /{r.inside}")
                continue
            if r.default and r.inside != "box" or _is_default_form(r):
                continue  # isol8r's own root has it
            if r.inside == "etc" and r.outside == "/etc" and "rw" not in r.flags:
                continue  # Judge0's and Piston's -d /etc:noexec: isol8r's /etc, the public part

            if "dev" in r.flags:
                raise BoxError(f"--dir {dst}:dev: device access is refused; a jail has only "
                               "isol8r's own /dev (null, zero, full, random, urandom, tty)")
            if "norec" in r.flags:
                raise BoxError(f"--dir {dst}:norec: isol8r binds directories recursively only")
            if "tmp" in r.flags or ("fs" in r.flags and r.outside == "tmpfs"):
                if r.inside in ("tmp", "dev/shm"):
                    continue  # isol8r's /tmp and /dev/shm are the jail's own, fresh each run
                mounts.append(Mount("tmpfs", dst, size=64 << 20))
                continue
            if "fs" in r.flags:
                if r.outside == "proc" and r.inside == "proc":
                    continue
                raise BoxError(f"--dir {dst}={r.outside}:fs: only tmpfs can be mounted (isol8r "
                               "gives the jail its own /proc, /sys and /dev/pts)")
            assert r.outside is not None
            src = os.path.normpath(os.path.join(self.path, r.outside) if r.outside.startswith("./")
                                   else r.outside)
            if not os.path.isdir(src) and not os.path.exists(src):
                if "maybe" in r.flags:
                    continue
                raise BoxError(f"Cannot bind {r.outside} on {r.inside}: No such file or directory")
            kind = "bind" if "rw" in r.flags else "ro-bind"
            # not idmapped: the box's user writes where its own ids may, as under isolate (an
            # idmapped bind would let it write as the directory's owner, root)
            mounts.append(Mount(kind, dst, src, noexec="noexec" in r.flags, idmap=False))
            bound.append((dst, src, kind == "bind"))
        return mounts, bound

    def _env(self, o: Options) -> list[str]:
        env: dict[str, str] = dict(os.environ) if o.full_env else {}
        env["LIBC_FATAL_STDERR_"] = "1"
        for rule in o.env:
            name, eq, value = rule.partition("=")
            if not eq:
                if name in os.environ:
                    env[name] = os.environ[name]
                else:
                    env.pop(name, None)
            elif value:
                env[name] = value
            else:
                env.pop(name, None)
        return [f"{k}={v}" for k, v in env.items() if "\0" not in v and k.isidentifier()]

    def _open(self, inside: str, flags: int, bound: list[tuple[str, str, bool]], base: str) -> int:
        """A redirection's file, opened as the jail's user would open it: resolved inside the
        bound directory it lies in (a symlink there cannot point out of it), the last component
        not followed, the access checked against the jail's host uid."""
        from .paths import chase
        path = os.path.normpath(os.path.join(base, inside))
        if path == "/dev/null":
            return os.open(os.devnull, flags | os.O_CLOEXEC)
        best = max(((d, s, rw) for d, s, rw in bound
                    if path == d or path.startswith(d.rstrip("/") + "/")),
                   key=lambda p: len(p[0]), default=None)
        if best is None:
            raise BoxError(f"open(\"{inside}\"): the file must lie in a directory bound with "
                           "--dir (or /box, or /dev/null)")
        dst, src, _rw = best
        host = chase(src, os.path.relpath(path, dst), follow_last=False)
        try:
            parent = os.open(os.path.dirname(host), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise BoxError(f"open(\"{inside}\"): {e.strerror}") from None
        uid = gid = self.host_uid
        groups = os.getgroups()
        try:
            os.setgroups([])
            os.setegid(gid)
            os.seteuid(uid)
            try:
                return os.open(os.path.basename(host), flags | os.O_NOFOLLOW | os.O_CLOEXEC,
                               0o666, dir_fd=parent)
            finally:
                os.seteuid(0)
                os.setegid(0)
                os.setgroups(groups)
        except OSError as e:
            raise BoxError(f"open(\"{inside}\"): {e.strerror}") from None
        finally:
            os.close(parent)

    def _run(self, argv: list[str], o: Options, fork_server: bool) -> Meta:
        import isol8r
        from .errors import ExecError, Isol8rError, SetupError, SpecError
        from .spec import Spec
        mounts, bound = self._mounts(o)
        cwd = os.path.normpath(os.path.join("/box", o.chdir)) if o.chdir else "/box"
        if o.chdir and o.chdir.startswith("/"):
            cwd = os.path.normpath(o.chdir)
        rl = [f"STACK={o.stack * 1024 if o.stack else 'inf'}", "MEMLOCK=0", f"CORE={o.core * 1024}"]
        if o.mem:
            rl.append(f"AS={o.mem * 1024}")
        if o.fsize:
            rl.append(f"FSIZE={o.fsize * 1024}")
        if o.open_files:
            rl.append(f"NOFILE={o.open_files}")
        if o.processes:
            rl.append(f"NPROC={o.processes}")
        cpu = max(o.time, o.extra_time) if o.time else None
        prog = argv[0] if "/" in argv[0] else "./" + argv[0]  # execve(): no PATH search
        options: dict[str, Any] = {
            "user": f"{self.uid}:{self.uid}", "cwd": cwd, "env": self._env(o), "rlimit": rl,
            "kill_grace": 0, "share_net": o.share_net or None,
            "memory": o.cg_mem * 1024 if o.cg_mem else None,
            "cpu_limit": cpu, "time_limit": o.wall_time,
            # isolate's syscall_flags 2 and 4 (keyctl and io_uring, its 1 and 8, are denied by
            # isol8r's default policy): no channel between boxes through a shared inode's locks
            # or a vsock
            "seccomp_deny": ["@file-locks,@vsock"],
        }
        fds: list[int] = []
        meta = Meta()
        try:
            spec = Spec.from_options([prog, *argv[1:]], options)
            spec = spec.replace(mounts=tuple(mounts),
                                pass_fds=_inherited_fds() if o.inherit_fds else ())
            stdin = stdout = stderr = None  # a relative path is from /box: isolate opens
            # the redirections before its --chdir
            if o.stdin is not None:
                stdin = self._open(o.stdin, os.O_RDONLY, bound, "/box")
                fds.append(stdin)
            if o.stdout is not None:
                stdout = self._open(o.stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, bound, "/box")
                fds.append(stdout)
            if o.stderr is not None:
                stderr = self._open(o.stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, bound, "/box")
                fds.append(stderr)
            elif o.stderr_to_stdout:
                stderr = stdout if stdout is not None else 1
            self._msg(f"Running {argv} in {self.path} as uid {self.uid}")
            res = isol8r.run(spec, stdin=stdin, stdout=stdout, stderr=stderr,
                             fork_server=fork_server)
        except ExecError as e:  # isolate: execve() fails inside, the box exits 127
            sys.stderr.write(f"execve(\"{argv[0]}\"): {os.strerror(e.errno)}\n")
            _stats(meta, 0.0, 0.0, 0, o.cg, None, False)
            meta.add("exitcode", e.exit_code)
            return _fail(meta, "RE", f"Exited with error status {e.exit_code}", o)
        except BoxError:
            raise
        except (SpecError, SetupError, Isol8rError, OSError) as e:
            raise BoxError(str(e)) from None
        finally:
            for fd in fds:
                os.close(fd)
        cpu_used = (res.cpu_user or 0.0) + (res.cpu_system or 0.0)
        peak = (res.memory_peak or 0) // 1024
        killed = res.verdict in ("time-limit", "cpu-limit")
        if killed:
            meta.add("killed", 1)
        _stats(meta, cpu_used, res.wall_time, peak, o.cg, peak or None,
               res.verdict == "memory-limit")
        # isolate's order once the program has ended: the CPU limit, then the wall clock
        if res.verdict == "cpu-limit" or (o.time and cpu_used > o.time):
            return _fail(meta, "TO", "Time limit exceeded", o)
        if res.verdict == "time-limit" or (o.wall_time and res.wall_time > o.wall_time):
            return _fail(meta, "TO", "Time limit exceeded (wall clock)", o)
        if res.signal is not None:
            meta.add("exitsig", res.signal)
            why = f"Caught fatal signal {res.signal}"
            if res.verdict == "seccomp":  # isol8r's policy is stricter than isolate's
                why += f" (system call {res.syscall or '?'} denied by isol8r's seccomp policy)"
            return _fail(meta, "SG", why, o)
        meta.add("exitcode", res.exit_code)
        if res.exit_code:
            return _fail(meta, "RE", f"Exited with error status {res.exit_code}", o)
        if not o.silent:
            sys.stderr.write(f"OK ({_ms(cpu_used)} sec real, {_ms(res.wall_time)} sec wall)\n")
        return meta


def _is_default_form(r: Rule) -> bool:
    """A user rule that says what isolate's default rule for the same path says."""
    d = DEFAULT_DIRS.get(r.inside)
    return d is not None and r.inside != "box" and r.outside == d[0] and \
        r.flags - {"maybe"} == d[1] - {"maybe"}


def _ms(seconds: float) -> str:
    ms = int(seconds * 1000 + 0.5)
    return f"{ms // 1000}.{ms % 1000:03d}"


def _stats(meta: Meta, cpu: float, wall: float, rss_kib: int, cg: bool, cg_kib: int | None,
           oom: bool) -> None:
    """isolate's final_stats(): time, time-wall, max-rss, and with --cg cg-mem, cg-oom-killed.
    csw-voluntary and csw-forced are not written: isol8r's Result does not carry them (isolate
    documents that not every key is always present)."""
    meta.add("time", _ms(cpu))
    meta.add("time-wall", _ms(wall))
    meta.add("max-rss", rss_kib)
    if cg and cg_kib:
        meta.add("cg-mem", cg_kib)
    if cg and oom:
        meta.add("cg-oom-killed", 1)


def _fail(meta: Meta, status: str, message: str, o: Options) -> Meta:
    meta.add("status", status)
    meta.add("message", message)
    meta.exit_status = 1
    if not o.silent:
        sys.stderr.write(message + "\n")
    return meta


def _inherited_fds() -> tuple[int, ...]:
    """--inherit-fds: every descriptor above 2 this process has, passed into the jail."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.fstat(fd)
            except OSError:
                continue
            fds.append(fd)
    return tuple(sorted(fds))


def _rmtree(path: str) -> None:
    """Remove a tree without following a link in it (the jail made some of its files)."""
    import shutil
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _chowntree(top: str, uid: int, gid: int) -> None:
    """isolate's chowntree(): the box's files to the box's user for a run and back to the
    caller after it; anything but regular files and directories (a symlink, a FIFO) is removed,
    so nothing the program leaves can redirect a later run's files."""
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                os.lchown(p, uid, gid)
            else:
                os.unlink(p)
                if name in dirnames:
                    dirnames.remove(name)
    os.lchown(top, uid, gid)


def _version() -> str:
    from . import __version__
    return (f"The process isolator {ISOLATE_VERSION} (isol8r {__version__}'s isolate front end)\n"
            f"Box root: {box_root()}\n")


def main(argv: Sequence[str]) -> int:
    """`isol8r isolate ...` and the `isolate` command: isolate's exit status (0 the program
    succeeded, 1 it failed, 2 the sandbox itself failed or the command line was bad)."""
    if list(argv[:1]) in (["-h"], ["--help"]):
        sys.stdout.write(USAGE)
        return 2  # as isolate's usage()
    try:
        o = parse(argv)
    except UsageError as e:
        sys.stderr.write(f"{e}\nTry 'isolate --help' for more information.\n")
        return 2
    if o.command == "version":
        sys.stdout.write(_version())
        return 0
    meta_file = None
    try:
        if os.geteuid() != 0:
            raise BoxError("Must be started as root")
        if o.meta is not None:
            meta_file = open(o.meta, "w", encoding="utf-8")
        box = Box(o.box_id, cg=o.cg)
        box.verbose = o.verbose
        if o.command == "init":
            print(box.init(o.wait), flush=True)
            return 0
        if o.command == "cleanup":
            box.cleanup(o.wait)
            return 0
        t0 = time.monotonic()
        # served by the CLI server (cli.entry): its warm jails; else a clone from here, which
        # costs less than starting a fork server for one run
        from .daemon import forkserver
        meta = box.run(o.argv, o, fork_server=forkserver.attached())
        if o.verbose:
            sys.stderr.write(f"[isol8r: {time.monotonic() - t0:.3f} s in all]\n")
    except BoxError as e:
        text = str(e)
        if meta_file is not None:
            meta_file.write(f"status:XX\nmessage:{text}\n")
            meta_file.close()
        sys.stderr.write(text + "\n")
        return 2
    except OSError as e:
        sys.stderr.write(f"{e}\n")
        return 2
    if meta_file is not None:
        meta_file.write(meta.text())
        meta_file.close()
    return meta.exit_status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
