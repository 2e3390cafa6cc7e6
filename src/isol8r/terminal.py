"""The caller's side of a jail's terminal (--tty): raw mode, the relay, the window size, restore.

The jail opens a pseudo-terminal of its own /dev/pts and hands the master over (pipeline.py);
the caller's terminal never enters the jail. Relay copies bytes between the caller's descriptors
and that master in the supervisor's event loop, with the caller's terminal in raw mode so that
Ctrl-C, Ctrl-Z and the rest reach the jail's line discipline as bytes (the jail's shell does its
own job control), and copies the window size on SIGWINCH. The caller's settings are put back when
the jail's terminal closes, and in every finally after it.

save() and restore() import only built-in modules: the CLI server's client calls them at each run.
"""

from __future__ import annotations

import os
import termios

import _signal
TYPE_CHECKING = False  # not `typing`: the CLI server's client imports this module
if TYPE_CHECKING:
    from typing import Any, Callable

_CHUNK = 65536
CALLER = 0  # the process whose terminal this is, when not this one's (a CLI server's client)


def save(fd: int) -> list[Any] | None:
    """The terminal settings of fd, or None when it is not a terminal."""
    try:
        return termios.tcgetattr(fd)
    except (termios.error, OSError, ValueError):
        return None


def restore(fd: int, saved: list[Any] | None) -> None:
    """Put fd's terminal settings back as save() found them, if anything changed them. SIGTTOU
    is blocked meanwhile: a job in the background still puts its terminal back, not stopped."""
    if saved is None or save(fd) in (None, saved):
        return
    old = _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGTTOU})
    try:
        _set(fd, termios.TCSADRAIN, saved)
    except (termios.error, OSError):
        pass
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, old)


def make_raw(fd: int, saved: list[Any]) -> None:
    """cfmakeraw(): bytes pass unchanged, no echo, no signals from keys (the jail's terminal
    makes them), one byte at a time."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = saved
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR
               | termios.IGNCR | termios.ICRNL | termios.IXON)
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    cc = list(cc)
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    _set(fd, termios.TCSAFLUSH, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


def _set(fd: int, when: int, attrs: list[Any]) -> None:
    """tcsetattr, again when a signal interrupts its wait for the output to drain."""
    import errno
    while True:
        try:
            termios.tcsetattr(fd, when, attrs)
            return
        except termios.error as e:
            if e.args[0] != errno.EINTR:
                raise


def background(pid: int, fd: int) -> int:
    """pid's process group when terminal fd is pid's controlling terminal and another group is
    in its foreground (pid is a background job); else 0."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        pgrp, tty_nr, tpgid = int(fields[2]), int(fields[4]), int(fields[5])
        if tty_nr == 0 or tty_nr != os.fstat(fd).st_rdev:
            return 0
    except (OSError, IndexError, ValueError):
        return 0
    return pgrp if tpgid not in (-1, pgrp) else 0


def copy_size(src: int, dst: int) -> None:
    """The window size of terminal src onto terminal dst (the kernel sends the jail SIGWINCH)."""
    import fcntl
    try:
        size = fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dst, termios.TIOCSWINSZ, size)
    except OSError:
        pass


class Relay:
    """Copies between the caller's descriptors and the jail's terminal master.

    in_fd (-1: none) is read when ready and never made non-blocking: its open file may be the
    caller's shell's too. input is written ahead of it (the library's input=); when the input
    ends, the terminal's end-of-file character follows. Output goes to out_fd (-1: discarded)
    or, with capture, into the Result's stdout; limit caps it like --output-limit.
    """

    def __init__(self, in_fd: int, out_fd: int, input: bytes | None = None, capture: bool = False,
                 limit: int | None = None,
                 on_limit: Callable[[str], None] = lambda _v: None) -> None:
        self.in_fd, self.out_fd, self.capture = in_fd, out_fd, capture
        self.limit, self.on_limit = limit, on_limit
        self.pending = bytearray(input or b"")
        self.in_eof = in_fd < 0
        self.eof_sent = in_fd < 0 and input is None  # no input at all: nothing to end
        self.master = self.writer = -1
        self.sel: Any = None
        self.reading = self.writing = False
        self.saved: list[Any] | None = None
        self.raw_fd = -1
        self.size_fd = next((fd for fd in (in_fd, out_fd) if fd >= 0 and os.isatty(fd)), -1)
        self.old_winch: Any = None
        self.old_cont: Any = None
        self.taken = False  # the caller's input is being read (and its terminal is raw)
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False
        # --no-init: the program's pid, and what ends the jail for a key's signal it would lose
        self.pid1: tuple[int, Callable[[int], bool]] | None = None

    @property
    def done(self) -> bool:
        """The jail's terminal is closed (or was never handed over)."""
        return self.master < 0

    def attach(self, sel: Any, master: int) -> None:
        """The jail's master arrived: raw mode, window size, start relaying."""
        import selectors
        import signal
        import threading
        self.sel, self.master = sel, master
        os.set_blocking(master, False)
        self.writer = os.dup(master)  # its own number: selectors watch one event kind per fd
        main = threading.current_thread() is threading.main_thread()
        if self.size_fd >= 0:
            copy_size(self.size_fd, master)
            if main:
                self.old_winch = signal.signal(signal.SIGWINCH,
                                               lambda _s, _f: copy_size(self.size_fd, self.master))
        if main and self.in_fd >= 0 and os.isatty(self.in_fd):
            old = signal.getsignal(signal.SIGCONT)

            def on_cont(sig: int, frame: Any) -> None:
                if callable(old):
                    old(sig, frame)  # the Forwarder's: the jail is continued too
                self._take_input()
            self.old_cont = signal.signal(signal.SIGCONT, on_cont)
        sel.register(master, selectors.EVENT_READ, (self, "out"))
        self._take_input()
        self._want_write()

    def _take_input(self) -> None:
        """Raw mode and reading the caller's input, once the caller is in the foreground of its
        terminal: a job in the background is stopped (SIGTTIN), as the kernel stops one that
        reads its terminal, and takes it when `fg` continues it (SIGCONT). A CLI server's
        worker is not in the terminal's session, so the kernel would not stop it."""
        import selectors
        if self.in_fd < 0 or self.taken or self.master < 0:
            return
        if os.isatty(self.in_fd):
            pgrp = background(CALLER or os.getpid(), self.in_fd)
            if pgrp:
                try:
                    os.killpg(pgrp, _signal.SIGTTIN)
                except OSError:
                    pass
                return
            self.saved = save(self.in_fd)
            if self.saved is not None:
                self.raw_fd = self.in_fd
                try:
                    make_raw(self.in_fd, self.saved)
                except termios.error:
                    pass  # it stays as it was: the relay works, only the keys stay the caller's
        self.taken = True
        try:
            self.sel.register(self.in_fd, selectors.EVENT_READ, (self, "in"))
            self.reading = True
        except PermissionError:  # a regular file: epoll cannot watch it, and it is always ready
            self._read_input()

    def handle(self, sel: Any, key: Any) -> None:
        if self.master < 0:
            return  # finished by an earlier event of the same batch
        kind = key.data[1]
        if kind == "out":
            self._read_output()
        elif kind == "in":
            self._read_input()
        else:
            self._write_input()

    def _read_output(self) -> None:
        try:
            data = os.read(self.master, _CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: every slave descriptor is closed, the jail's terminal is gone
            data = b""
        if not data:
            self.finish()
            return
        if self.limit is not None:
            room = self.limit - self.size
            if len(data) > room:
                data = data[:max(room, 0)]
                self.truncated = True
                self.on_limit("output-limit")
        self.size += len(data)
        if self.capture:
            self.chunks.append(data)
        elif self.out_fd >= 0:
            _write_all(self.out_fd, data)

    def _read_input(self) -> None:
        """One read of the caller's input (the whole of a regular file, in chunks, as it goes)."""
        while True:
            try:
                data = os.read(self.in_fd, _CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.in_eof = True
                if self.reading:
                    self.sel.unregister(self.in_fd)
                    self.reading = False
            elif self.pid1 is not None:
                self._signal_keys(data)
            self.pending += data
            self._want_write()
            if self.reading or self.in_eof or len(self.pending) >= _CHUNK:
                return

    def _signal_keys(self, data: bytes) -> None:
        """Ctrl-C or Ctrl-\\ typed while the program itself, PID 1 of its namespace, is the
        terminal's foreground: the kernel drops the signal unless PID 1 handles it, so the
        jail is ended as the signal would have ended the program (Jail.stand_in)."""
        import fcntl
        import struct
        assert self.pid1 is not None
        try:
            lflag, cc = (termios.tcgetattr(self.master)[i] for i in (3, 6))
            if not lflag & termios.ISIG:
                return
            for key, sig in ((cc[termios.VINTR], _signal.SIGINT),
                             (cc[termios.VQUIT], _signal.SIGQUIT)):
                if key != b"\0" and key in data:
                    pgrp = fcntl.ioctl(self.master, termios.TIOCGPGRP, b"\0" * 4)
                    if struct.unpack("i", pgrp)[0] == self.pid1[0]:
                        self.pid1[1](sig)
                    return
        except (termios.error, OSError):
            pass

    def _want_write(self) -> None:
        import selectors
        if self.in_eof and not self.pending and not self.eof_sent and self.master >= 0:
            self.eof_sent = True
            try:  # the terminal's end-of-file character: `cat` in the jail sees its input end
                self.pending += termios.tcgetattr(self.master)[6][termios.VEOF]
            except termios.error:
                pass
        if self.pending and not self.writing and self.writer >= 0:
            self.sel.register(self.writer, selectors.EVENT_WRITE, (self, "write"))
            self.writing = True

    def _write_input(self) -> None:
        try:
            n = os.write(self.writer, self.pending[:4096])
        except BlockingIOError:
            return
        except OSError:
            n = len(self.pending)  # the jail's terminal is gone: its input goes nowhere
        del self.pending[:n]
        if not self.pending:
            self.sel.unregister(self.writer)
            self.writing = False
            if self.taken and not self.in_eof and not self.reading:
                self._read_input()  # the next chunk of a regular file
            self._want_write()

    def finish(self) -> None:
        """The jail's terminal closed: stop relaying, put the caller's terminal back."""
        if self.sel is not None:
            for fd, on in ((self.master, True), (self.writer, self.writing),
                           (self.in_fd, self.reading)):
                if on and fd >= 0:
                    try:
                        self.sel.unregister(fd)
                    except (KeyError, ValueError):
                        pass
            self.reading = self.writing = False
        self.close()

    def close(self) -> None:
        """Idempotent: the caller's terminal as it was, the master closed, SIGWINCH as it was."""
        if self.raw_fd >= 0:
            restore(self.raw_fd, self.saved)
            self.raw_fd = -1
        if self.old_winch is not None or self.old_cont is not None:
            import signal
            for sig, old in ((signal.SIGWINCH, self.old_winch), (signal.SIGCONT, self.old_cont)):
                if old is not None:
                    signal.signal(sig, old)
            self.old_winch = self.old_cont = None
        for fd in (self.master, self.writer):
            if fd >= 0:
                os.close(fd)
        self.master = self.writer = -1

    def fill(self, res: Any) -> None:
        if self.capture:
            res.stdout = b"".join(self.chunks)
            res.stdout_truncated = self.truncated


def _write_all(fd: int, data: bytes) -> None:
    import select
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])
        except OSError:
            return
