"""Every message isol8r sends over a socket: one small class each, one encode and one decode.

Three sockets carry them (docs/design.md, "Wire protocols"):
  the handshake   supervisor <-> jail: Go, Request; Failure, Timing, Exec, Status, Terminal
  the fork server caller <-> server: Lease; Leased, Failure, Reaped
  the CLI server  client <-> server <-> worker: Run, Stop, Signal; Started, Stale, Local,
                  Failure, Exit; Armed (worker -> server)
  a sandbox       owner -> server: Hold; owner -> its init: Command; per command: Forked
                  (init -> owner), then Request or Open; Opened and the handshake's records
  sandbox daemon  client -> daemon: SandboxCreate, SandboxExec (then Signal while it runs),
                  SandboxCopy, SandboxList, SandboxRemove; daemon -> client: SandboxDone or
                  Failure

A message is one tag byte and a body. The jail's records (Failure, Timing, Exec, Status) have
text bodies with NUL-separated fields and no newline: the program's process sends its records
to init through a pipe, one per line, and init relays them. Every other body is marshal data
of the message's fields: marshal, not pickle, because a root daemon must not run code chosen
by whoever can write to its socket (pickle.loads can; marshal.loads builds plain values only).
wire.py is the transport under this: one datagram per message, a big one in a memfd, and
descriptors as SCM_RIGHTS.

decode() of anything malformed or truncated raises ProtocolError, never a struct, marshal or
pickle exception and never a hang (a datagram is complete or absent).

Built-in modules only, and no dataclasses, enum or typing at run time: the CLI's thin client
(cliserver.call) imports this at every start, and the jail's child (between clone and exec)
uses it without importing anything new (the supervisor imported it before the clone).
"""

from __future__ import annotations

import _signal
import marshal

TYPE_CHECKING = False  # not `typing`: the thin client must not import it
if TYPE_CHECKING:
    from typing import Any

    from .errors import Isol8rError, ProtocolError
    from .spec import Spec

# the signals a caller passes on to its jail: the CLI's client relays them to its run, the
# supervisor forwards them to the jail's init, init to the program (pid1.FORWARDED adds three)
FORWARDED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGUSR1,
             _signal.SIGUSR2, _signal.SIGWINCH, _signal.SIGCONT, _signal.SIGTSTP)

def __getattr__(name: str) -> Any:
    """protocol.ProtocolError is errors.ProtocolError, imported when first needed: an `except
    protocol.ProtocolError` evaluates it only when an exception is on its way (errors.py is
    not on the thin client's path otherwise)."""
    if name == "ProtocolError":
        from .errors import ProtocolError
        return ProtocolError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _bad(what: str, why: str) -> ProtocolError:
    from .errors import ProtocolError
    return ProtocolError(what, why)


EXEC_STEPS = ("execve", "find program")  # a failure of these is the program's (126/127)


class Msg:
    """A message: TAG, then its fields (__slots__) as marshal data (Msg.body/of_body)."""

    __slots__ = ()
    TAG = b""
    TYPES: tuple[Any, ...] = ()  # each field's type(s), checked by decode

    def fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def body(self) -> bytes:
        return marshal.dumps(self.fields())

    def encode(self) -> bytes:
        return self.TAG + self.body()

    @classmethod
    def of_body(cls, body: Any) -> "Msg":
        try:
            values = marshal.loads(body)
        except (EOFError, ValueError, TypeError) as e:
            raise _bad(cls.__name__, f"bad marshal data ({e})") from None
        if type(values) is not tuple or len(values) != len(cls.__slots__):
            raise _bad(cls.__name__, f"{len(cls.__slots__)} fields expected")
        for name, value, kind in zip(cls.__slots__, values, cls.TYPES):
            if not isinstance(value, kind):
                raise _bad(cls.__name__, f"field {name} is a {type(value).__name__}")
        return cls(*values)

    @classmethod
    def decode(cls, data: bytes) -> "Msg":
        """One message of this class; ProtocolError for anything else."""
        msg = decode(data)
        if not isinstance(msg, cls):
            raise _bad(cls.__name__, f"got {type(msg).__name__}")
        return msg

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.fields() == self.fields()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self.fields()!r}"

    __hash__ = None  # type: ignore[assignment]


def decode(data: bytes) -> Msg | Failure:
    """Any message, by its tag; ProtocolError when data is none of them or is malformed."""
    if not data:
        raise _bad("message", "empty")
    cls = _BY_TAG.get(data[0])
    if cls is None:
        raise _bad("message", f"unknown tag {data[:1]!r}")
    return cls.of_body(memoryview(data)[1:])


def expect(data: bytes, *classes: type) -> Any:
    """A message that must be one of classes (what this end of a socket can be sent)."""
    msg = decode(data)
    if not isinstance(msg, classes):
        raise _bad("message", f"{type(msg).__name__} where "
                            f"{' or '.join(c.__name__ for c in classes)} was expected")
    return msg


def _text(body: Any, count: int, name: str) -> list[bytes]:
    """A record's count NUL-separated fields (the last may hold NULs)."""
    parts = bytes(body).split(b"\0", count - 1)
    if len(parts) != count:
        raise _bad(name, f"{count} fields expected, got {len(parts)}")
    return parts


def _int(text: bytes, name: str) -> int:
    if not text or not text.lstrip(b"-").isdigit():
        raise _bad(name, f"not a number: {text[:40]!r}")
    return int(text)


def _float(text: bytes, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _bad(name, f"not a number: {text[:40]!r}") from None


def _line(text: str) -> bytes:
    """A field of a jail's record: no newline (init's pipe is line-based), no NUL (the
    separator); non-UTF-8 bytes of a path (surrogates) kept."""
    return text.replace("\n", "\\n").replace("\0", "\\0").encode("utf-8", "surrogateescape")


# ---- one failure, everywhere ------------------------------------------------------------------


class Failure(Exception):
    """One failure, in every place it travels: raised by a step of the jail's setup, sent as its
    record, kept by the supervisor, sent back by the fork server, shown by the CLI's client.

    kind: "setup" or "exec" (a step failed: SetupError/ExecError), "spec" (bad input: SpecError,
    step is the option and value the value), "error" (any other Isol8rError: detail is its text).
    """

    __slots__ = ("step", "err", "detail", "kind", "value")
    TAG = b"E"

    def __init__(self, step: str, err: int, detail: str = "", kind: str = "",
                 value: str | None = None) -> None:
        super().__init__(step, err, detail)
        self.step, self.err, self.detail, self.value = step, err, detail, value
        self.kind = kind or ("exec" if step in EXEC_STEPS else "setup")

    def fields(self) -> tuple[Any, ...]:
        return (self.step, self.err, self.detail, self.kind, self.value)

    def encode(self) -> bytes:
        """E step NUL errno NUL detail: the form a jail's child writes (no allocation beyond the
        record); a spec or plain error adds NUL kind [NUL value]."""
        # "chdir /\udcff": a non-UTF-8 path is kept; a newline in the detail reads as a space
        rec = b"E%s\0%d\0%s" % (_line(self.step), self.err, _line(self.detail.replace("\n", " ")))
        if self.kind in ("setup", "exec"):
            return rec
        return rec + b"\0" + self.kind.encode() + (
            b"" if self.value is None else b"\0" + _line(self.value))

    @classmethod
    def of_body(cls, body: Any) -> "Failure":
        parts = bytes(body).split(b"\0", 4)
        if len(parts) < 3:
            raise _bad("Failure", f"3 fields expected, got {len(parts)}")
        kind = parts[3].decode("utf-8", "surrogateescape") if len(parts) > 3 else ""
        if kind not in ("", "spec", "error"):
            raise _bad("Failure", f"unknown kind {kind[:20]!r}")
        return cls(parts[0].decode("utf-8", "surrogateescape"), _int(parts[1], "Failure"),
                   parts[2].decode("utf-8", "surrogateescape"), kind,
                   parts[4].decode("utf-8", "surrogateescape") if len(parts) > 4 else None)

    @classmethod
    def decode(cls, data: bytes) -> "Failure":
        msg = decode(data)
        if not isinstance(msg, Failure):
            raise _bad("Failure", f"got {type(msg).__name__}")
        return msg

    @classmethod
    def plain(cls, text: str) -> "Failure":
        """A failure that is only its text (kind error): the CLI server's own."""
        return cls("", 0, text, "error")

    @classmethod
    def of(cls, e: BaseException) -> "Failure":
        """An Isol8rError (or a bug: kind error, its type named) as a Failure to send."""
        from .errors import SetupError, SpecError
        if isinstance(e, Failure):
            return e
        if isinstance(e, SetupError):
            return cls(e.step, e.errno, e.detail, "exec" if type(e).__name__ == "ExecError"
                       else "setup")
        if isinstance(e, SpecError):
            value = None if e.value is True else e.value if isinstance(e.value, str) \
                else repr(e.value)  # the text SpecError shows for it
            return cls(e.field, 0, e.reason, "spec", value)
        from .errors import Isol8rError
        text = str(e) if isinstance(e, Isol8rError) else f"{type(e).__name__}: {e}"
        return cls.plain(text)

    def error(self) -> "Isol8rError":
        """The typed exception this failure is."""
        from .errors import ExecError, Isol8rError, SetupError, SpecError
        if self.kind == "spec":
            return SpecError(self.step, True if self.value is None else self.value, self.detail)
        if self.kind == "error":
            return Isol8rError(self.detail)
        return (ExecError if self.kind == "exec" else SetupError)(self.step, self.err, self.detail)

    def __str__(self) -> str:
        if self.kind == "error":
            return self.detail
        return str(self.error())

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.fields() == self.fields()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"Failure{self.fields()!r}"

    __hash__ = None  # type: ignore[assignment]


# ---- the handshake: supervisor <-> jail -------------------------------------------------------


class Go(Msg):
    """Supervisor -> jail, once its id maps and cgroup are in place. Descriptors: the prepared
    root's tree (root), the binds' trees, the program group's cgroup.procs (procs), in order."""

    __slots__ = ("root", "procs")
    TAG = b"G"

    def __init__(self, root: bool, procs: bool) -> None:
        self.root, self.procs = root, procs

    def encode(self) -> bytes:
        return b"G" + (b"R" if self.root else b"") + (b"P" if self.procs else b"")

    @classmethod
    def of_body(cls, body: Any) -> "Go":
        flags = bytes(body)
        if flags not in (b"", b"R", b"P", b"RP"):
            raise _bad("Go", f"bad flags {flags[:8]!r}")
        return cls(b"R" in flags, b"P" in flags)


class Request(Msg):
    """Supervisor -> jail: what to run and the per-run settings. Descriptors: the jail's, to
    be placed at targets."""

    __slots__ = ("argv", "env", "search_path", "cwd", "rlimits", "bpf", "seccomp_flags",
                 "targets", "tty")
    TAG = b"Q"
    TYPES = (list, list, list, str, tuple, (bytes, type(None)), int, list, bool)

    def __init__(self, argv: list[bytes], env: list[tuple[bytes, bytes]], search_path: list[bytes],
                 cwd: str, rlimits: tuple[tuple[int, int, int], ...], bpf: bytes | None,
                 seccomp_flags: int, targets: list[int], tty: bool = False) -> None:
        self.argv, self.env, self.search_path, self.cwd = argv, env, search_path, cwd
        self.rlimits, self.bpf, self.seccomp_flags = rlimits, bpf, seccomp_flags
        self.targets = targets  # the jail's numbers for the descriptors sent with the request
        self.tty = tty  # 0, 1 and 2 are a terminal the jail opens; its master goes to the caller

    @classmethod
    def of_body(cls, body: Any) -> "Request":
        req: Request = super().of_body(body)  # type: ignore[assignment]
        if not req.argv or not all(type(a) is bytes for a in req.argv) or \
                not all(type(kv) is tuple and len(kv) == 2 for kv in req.env) or \
                not all(type(t) is int for t in req.targets):
            raise _bad("Request", "bad argv, env or targets")
        return req


class Timing(Msg):
    """Jail -> supervisor, with -v: a step took `took` ns and ended at `at` (CLOCK_MONOTONIC)."""

    __slots__ = ("step", "took", "at")
    TAG = b"T"

    def __init__(self, step: str, took: int, at: int) -> None:
        self.step, self.took, self.at = step, took, at

    def encode(self) -> bytes:
        return b"T%s\0%d\0%d" % (_line(self.step), self.took, self.at)

    @classmethod
    def of_body(cls, body: Any) -> "Timing":
        step, took, at = _text(body, 3, "Timing")
        return cls(step.decode("utf-8", "surrogateescape"), _int(took, "Timing"), _int(at, "Timing"))


class Exec(Msg):
    """Init -> supervisor: the program reached execve, at `at` ns (CLOCK_MONOTONIC, one clock
    for every process). With --no-init, EOF on the channel says it instead."""

    __slots__ = ("at",)
    TAG = b"X"

    def __init__(self, at: int) -> None:
        self.at = at

    def encode(self) -> bytes:
        return b"X%d" % self.at

    @classmethod
    def of_body(cls, body: Any) -> "Exec":
        return cls(_int(bytes(body), "Exec"))


class Status(Msg):
    """Init -> supervisor: the program ended with wait status `status`; its CPU times (s) and
    peak RSS (KiB), when (ns), and whether init emptied the PID namespace first."""

    __slots__ = ("status", "utime", "stime", "maxrss", "ended", "emptied")
    TAG = b"S"

    def __init__(self, status: int, utime: float, stime: float, maxrss: int, ended: int,
                 emptied: bool) -> None:
        self.status, self.utime, self.stime, self.maxrss = status, utime, stime, maxrss
        self.ended, self.emptied = ended, emptied

    def encode(self) -> bytes:
        return b"S%d\0%.6f\0%.6f\0%d\0%d\0%d" % (self.status, self.utime, self.stime, self.maxrss,
                                                 self.ended, self.emptied)

    @classmethod
    def of_body(cls, body: Any) -> "Status":
        st, ut, syst, rss, ended, emptied = _text(body, 6, "Status")
        if emptied not in (b"0", b"1"):
            raise _bad("Status", f"emptied is {emptied[:8]!r}")
        return cls(_int(st, "Status"), _float(ut, "Status"), _float(syst, "Status"),
                   _int(rss, "Status"), _int(ended, "Status"), emptied == b"1")


class Terminal(Msg):
    """Jail -> supervisor, with --tty: the master of the jail's terminal, as SCM_RIGHTS."""

    __slots__ = ()
    TAG = b"P"

    def encode(self) -> bytes:
        return b"P"

    @classmethod
    def of_body(cls, body: Any) -> "Terminal":
        if len(body):
            raise _bad("Terminal", "has no body")
        return cls()


# ---- a sandbox (a jail that stays): its owner <-> its init, and one command's channel ----------


class Command(Msg):
    """Owner -> a sandbox's init, on the sandbox's handshake channel: start one command. Its
    init forks a command init (PID 1 of a PID namespace of its own) that forks the program's
    process, which then waits for a Request (or an Open) on the command's channel, exactly as a
    fresh jail's does. Descriptors: the command's channel, then `groups` cgroup.procs files the
    command init enters (the command's limits), then the program's memory group's when
    `program` is set."""

    __slots__ = ("groups", "program")
    TAG = b"N"
    TYPES = (int, bool)

    def __init__(self, groups: int, program: bool) -> None:
        self.groups, self.program = groups, program


class Forked(Msg):
    """A sandbox's init -> owner, on the command's channel: the command init was forked.
    Descriptor: its pidfd (signals, exit), which the owner watches as a fresh jail's."""

    __slots__ = ()
    TAG = b"F"

    def encode(self) -> bytes:
        return b"F"

    @classmethod
    def of_body(cls, body: Any) -> "Forked":
        if len(body):
            raise _bad("Forked", "has no body")
        return cls()


class Open(Msg):
    """Owner -> a command's program process, in place of a Request: open path (relative to the
    sandbox's working directory) with flags and mode, as the jail's user, inside the jail's
    root, and send the descriptor back (Opened). The path is resolved by the kernel inside the
    jail, so a symlink the jail planted cannot lead out of it."""

    __slots__ = ("path", "flags", "mode")
    TAG = b"U"
    TYPES = (bytes, int, int)

    def __init__(self, path: bytes, flags: int, mode: int) -> None:
        self.path, self.flags, self.mode = path, flags, mode


class Opened(Msg):
    """A command's program process -> owner: the descriptor Open asked for, as SCM_RIGHTS."""

    __slots__ = ()
    TAG = b"V"

    def encode(self) -> bytes:
        return b"V"

    @classmethod
    def of_body(cls, body: Any) -> "Opened":
        if len(body):
            raise _bad("Opened", "has no body")
        return cls()


# ---- the fork server: caller <-> server -------------------------------------------------------


class Lease(Msg):
    """Caller -> server, on its control socket: a jail of spec's shape. Descriptor: the per-run
    socket the answer (Leased or Failure) and, once the jail has ended, Reaped come on; the
    caller closes it when it is done (the server then kills the jail, if it still runs)."""

    __slots__ = ("spec", "verbose")
    TAG = b"L"

    def __init__(self, spec: Spec, verbose: bool) -> None:
        self.spec, self.verbose = spec, verbose

    def body(self) -> bytes:
        import dataclasses
        fields = {f.name: getattr(self.spec, f.name) for f in dataclasses.fields(self.spec)}
        fields["mounts"] = tuple(dataclasses.astuple(m) for m in self.spec.mounts)
        fields["data"] = tuple(dataclasses.astuple(d) for d in self.spec.data)
        return marshal.dumps((fields, self.verbose))

    @classmethod
    def of_body(cls, body: Any) -> "Lease":
        """The Spec as the caller validated it (its --pass-fd numbers are the caller's, so it
        is not validated again here): only its fields' names are checked."""
        import dataclasses

        from .spec import Data, Mount, Spec
        try:
            fields, verbose = marshal.loads(body)
            names = {f.name for f in dataclasses.fields(Spec)}
            if type(fields) is not dict or set(fields) != names or type(verbose) is not bool:
                raise ValueError("not a Spec's fields")
            fields["mounts"] = tuple(Mount(*m) for m in fields["mounts"])
            fields["data"] = tuple(Data(*d) for d in fields["data"])
        except (EOFError, ValueError, TypeError) as e:
            raise _bad("Lease", str(e)) from None
        spec = object.__new__(Spec)
        for name, value in fields.items():
            object.__setattr__(spec, name, value)
        return cls(spec, verbose)


class Hold(Lease):
    """Caller -> server: like Lease, but a sandbox's jail (pipeline.Plan.hold): its init stays
    and forks one command per Command message; never taken from or added to the warm pool."""

    __slots__ = ()
    TAG = b"B"


class Leased(Msg):
    """Server -> caller: the jail, set up and waiting for its Request. Descriptors: its
    handshake channel and pidfd. derived: the rlimits standing in for limits no cgroup holds;
    cgroup and program_group: Cgroup.view()s for the caller to read."""

    __slots__ = ("pid", "derived", "limits", "notes", "cgroup", "program_group", "walls",
                 "missing")
    TAG = b"J"
    TYPES = (int, dict, dict, list, (tuple, type(None)), (tuple, type(None)), dict, dict)

    def __init__(self, pid: int, derived: dict[str, tuple[int, int]], limits: dict[str, Any],
                 notes: list[str], cgroup: tuple[int, dict[str, str]] | None,
                 program_group: tuple[int, dict[str, str]] | None,
                 walls: dict[str, str] | None = None, missing: dict[str, str] | None = None
                 ) -> None:
        self.pid, self.derived, self.limits, self.notes = pid, derived, limits, notes
        self.cgroup, self.program_group = cgroup, program_group
        self.walls, self.missing = walls or {}, missing or {}  # walls.account's two dicts


class Reaped(Msg):
    """Server -> caller: the jail's init was reaped: its wait status, rusage, and the cgroup's
    counters (cgroups.Usage's fields) when it had one."""

    __slots__ = ("status", "utime", "stime", "maxrss", "usage")
    TAG = b"D"
    TYPES = (int, float, float, int, (tuple, type(None)))

    def __init__(self, status: int, utime: float, stime: float, maxrss: int,
                 usage: tuple[Any, ...] | None) -> None:
        self.status, self.utime, self.stime, self.maxrss = status, utime, stime, maxrss
        self.usage = usage


# ---- the CLI server: client <-> server <-> worker ----------------------------------------------


class Run(Msg):
    """Client -> server: `isol8r run` with these arguments and environment. Descriptors: the
    working directory, then the inheritable descriptors to place at targets. The server passes
    it on to a worker with client set to the client's pid."""

    __slots__ = ("argv", "env", "targets", "client")
    TAG = b"R"
    TYPES = (list, list, list, (int, type(None)))

    def __init__(self, argv: list[bytes], env: list[tuple[bytes, bytes]], targets: list[int],
                 client: int | None = None) -> None:
        self.argv, self.env, self.targets, self.client = argv, env, targets, client

    @classmethod
    def of_body(cls, body: Any) -> "Run":
        run: Run = super().of_body(body)  # type: ignore[assignment]
        if not all(type(a) is bytes for a in run.argv) or \
                not all(type(t) is int and t >= 0 for t in run.targets) or \
                not all(type(kv) is tuple and len(kv) == 2 and type(kv[0]) is bytes
                        and type(kv[1]) is bytes for kv in run.env):
            raise _bad("Run", "bad argv, env or targets")
        return run


class Stop(Msg):
    """Client -> server: end once the runs under way are done (the connection closes then)."""

    __slots__ = ()
    TAG = b"H"


class Signal(Msg):
    """Client -> server: pass signal sig (one of FORWARDED) on to the run."""

    __slots__ = ("sig",)
    TAG = b"K"
    TYPES = (int,)

    def __init__(self, sig: int) -> None:
        self.sig = sig

    @classmethod
    def of_body(cls, body: Any) -> "Signal":
        msg: Signal = super().of_body(body)  # type: ignore[assignment]
        if msg.sig not in FORWARDED:
            raise _bad("Signal", f"signal {msg.sig} is not one to forward")
        return msg


class Started(Msg):
    """Server -> client: a worker (pid) took the run; Exit or Failure follows."""

    __slots__ = ("pid",)
    TAG = b"A"
    TYPES = (int,)

    def __init__(self, pid: int) -> None:
        self.pid = pid


class Stale(Msg):
    """Server -> client: this server runs older code; it has retired: connect again."""

    __slots__ = ()
    TAG = b"W"


class Local(Msg):
    """Server -> client: run the command in your own process (other namespaces, or
    descriptors a worker keeps for itself)."""

    __slots__ = ()
    TAG = b"O"


class Exit(Msg):
    """Server -> client, and worker -> server: the run's exit status."""

    __slots__ = ("code",)
    TAG = b"C"
    TYPES = (int,)

    def __init__(self, code: int) -> None:
        self.code = code


class Armed(Msg):
    """Worker -> server: the run's signals can be relayed now (pending ones are sent then)."""

    __slots__ = ()
    TAG = b"Y"


# ---- the sandbox daemon (daemon/sandboxd.py): client -> daemon, and its one answer -----------


def _options_ok(options: Any) -> bool:
    """Run options by name: str keys; values a str, bool, int, float, None or a list of str."""
    return all(type(k) is str and (v is None or type(v) in (str, bool, int, float)
                                   or (type(v) is list and all(type(x) is str for x in v)))
               for k, v in options.items())


class SandboxCreate(Msg):
    """Client -> sandbox daemon: make a sandbox of these run options (the CLI's long names with
    underscores), named name ("" for none), ended after idle_timeout seconds without a command
    (None: never). Answer: SandboxDone(0, id) or Failure."""

    __slots__ = ("name", "idle_timeout", "options")
    TAG = b"c"
    TYPES = (str, (float, type(None)), dict)

    def __init__(self, name: str, idle_timeout: float | None, options: dict[str, Any]) -> None:
        self.name, self.idle_timeout, self.options = name, idle_timeout, options

    @classmethod
    def of_body(cls, body: Any) -> "SandboxCreate":
        msg: SandboxCreate = super().of_body(body)  # type: ignore[assignment]
        if not _options_ok(msg.options):
            raise _bad("SandboxCreate", "bad options")
        return msg


class SandboxExec(Msg):
    """Client -> sandbox daemon: run argv in sandbox (id or name) with this command's options
    (limits, env, cwd, tty); capture: its output goes into the result, not to the descriptors.
    Descriptors: the client's stdin, stdout and stderr. Answer: SandboxDone(status, the Result
    as JSON) or Failure."""

    __slots__ = ("sandbox", "argv", "options", "capture")
    TAG = b"x"
    TYPES = (str, list, dict, bool)

    def __init__(self, sandbox: str, argv: list[bytes], options: dict[str, Any],
                 capture: bool) -> None:
        self.sandbox, self.argv, self.options, self.capture = sandbox, argv, options, capture

    @classmethod
    def of_body(cls, body: Any) -> "SandboxExec":
        msg: SandboxExec = super().of_body(body)  # type: ignore[assignment]
        if not all(type(a) is bytes for a in msg.argv) or not _options_ok(msg.options):
            raise _bad("SandboxExec", "bad argv or options")
        return msg


class SandboxCopy(Msg):
    """Client -> sandbox daemon: copy between the host file the client opened (the descriptor:
    its own rights, not the daemon's) and path in sandbox: into it when upload, out of it
    otherwise; mode: the new file's permission bits. Answer: SandboxDone(0, "") or Failure."""

    __slots__ = ("sandbox", "path", "upload", "mode")
    TAG = b"p"
    TYPES = (str, bytes, bool, int)

    def __init__(self, sandbox: str, path: bytes, upload: bool, mode: int) -> None:
        self.sandbox, self.path, self.upload, self.mode = sandbox, path, upload, mode


class SandboxList(Msg):
    """Client -> sandbox daemon: the caller's own sandboxes. Answer: SandboxDone(0, JSON)."""

    __slots__ = ()
    TAG = b"l"


class SandboxRemove(Msg):
    """Client -> sandbox daemon: end sandbox (id or name), or every one of the caller's when
    sandbox is "". Answer: SandboxDone(count, "") or Failure."""

    __slots__ = ("sandbox",)
    TAG = b"r"
    TYPES = (str,)

    def __init__(self, sandbox: str) -> None:
        self.sandbox = sandbox


class SandboxDone(Msg):
    """Sandbox daemon -> client: the request's outcome (an exit status or a count) and its text
    (an id, a Result as JSON, a listing as JSON)."""

    __slots__ = ("status", "text")
    TAG = b"k"
    TYPES = (int, str)

    def __init__(self, status: int, text: str) -> None:
        self.status, self.text = status, text


CLASSES = (Failure, Go, Request, Timing, Exec, Status, Terminal, Lease, Leased, Reaped, Run, Stop,
           Signal, Started, Stale, Local, Exit, Armed, Hold, Command, Forked, Open, Opened)  # every message, by socket (module doc)
CLASSES += (SandboxCreate, SandboxExec, SandboxCopy, SandboxList, SandboxRemove, SandboxDone)
_BY_TAG: dict[int, Any] = {cls.TAG[0]: cls for cls in CLASSES}
