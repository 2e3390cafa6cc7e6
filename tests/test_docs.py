"""Issue 13 item 10, docs that run: every example in README.md and docs/*.md runs as written.

The examples are found, not listed: in the fenced code blocks of README.md and docs/*.md, each
shell line (a block marked sh, shell, bash, console or unmarked) that starts with `isol8r ` (in
a block with `$ ` prompts, only prompted lines: the rest is output), and each python block whole. A new page or example is picked up
without a change here. Each runs in a scratch directory of its own (which the jail's ids can
traverse), with `isol8r` on PATH, and must exit 0 without a traceback or "internal error".

What an example may take for granted is prepared in that directory: FIXTURES. An example that
needs what this machine cannot give is in SKIP, each with its reason; an example that shows a
failure on purpose is in EXPECT with its exit status. Keys are (page, the example's first line).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from conftest import ROOT, needs_root

pytestmark = needs_root

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"", "sh", "shell", "bash", "console"}

SKIP: dict[tuple[str, str], str] = {
    ("docs/rootfs.md", "isol8r mkroot DIR [--with PROG]... [--busybox] [--user NAME:UID:GID]"):
        "a synopsis: DIR, PROG and the brackets are placeholders",
    ("docs/rootfs.md", "isol8r mkroot --check DIR          # same as: isol8r check-root DIR"):
        "a synopsis: DIR is a placeholder",
    ("docs/rootfs.md", "isol8r check-root [--quick] DIR"): "a synopsis: DIR is a placeholder",
    ("docs/profiles.md", "isol8r run --profile grader.toml -- /tests/run.sh"):
        "needs the grader of the page's TOML example: /srv/tests/run.sh and grader.json",
    ("README.md", "isol8r run -t -- bash                               # an interactive shell on "
     "a terminal of its own"):
        "interactive: it waits for a person at a terminal; tests/test_tty.py drives it in a pty",
}
EXPECT: dict[tuple[str, str], int] = {}

# What the examples may take for granted in their directory: name -> (text, mode)
SOL = "#!/bin/sh\nread a b\necho $((a + b))\n"  # a judge's compiled solution, as docs call it
FIXTURES: dict[str, tuple[str, int]] = {"sol": (SOL, 0o755)}


@dataclass(frozen=True)
class Example:
    page: str  # relative to the repository
    line: int  # where the example starts
    kind: str  # "sh" or "python"
    text: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.page, self.text.splitlines()[0])


_FENCE = re.compile(r"^\s*```\s*([\w+-]*)")


def examples(page: Path, name: str | None = None) -> Iterator[Example]:
    """The examples of one page, from its fenced code blocks."""
    name = name or str(page.relative_to(ROOT))
    lang, body, start = None, [], 0
    for n, line in enumerate(page.read_text().splitlines(), 1):
        m = _FENCE.match(line)
        if m and lang is None:
            lang, body, start = m.group(1).lower(), [], n + 1
            continue
        if m:  # the block ends
            if lang in ("python", "py", "python3"):
                yield Example(name, start, "python", "\n".join(body) + "\n")
            elif lang in SHELL:
                yield from _shell_lines(name, start, body)
            lang = None
            continue
        if lang is not None:
            body.append(line)


def _shell_lines(page: str, start: int, body: list[str]) -> Iterator[Example]:
    """Commands of a shell block; in a block with `$ ` prompts, only the prompted lines (the
    others are output, such as `isol8r 0.1.0`)."""
    prompted = any(line.lstrip().startswith("$ ") for line in body)
    i = 0
    while i < len(body):
        first = i
        text = body[i].strip()
        if prompted and not text.startswith("$ "):
            i += 1
            continue
        text = text.removeprefix("$ ")
        while text.endswith("\\") and i + 1 < len(body):  # a command continued on the next line
            i += 1
            text = text[:-1] + " " + body[i].strip()
        if text.startswith("isol8r "):
            yield Example(page, start + first, "sh", text)
        i += 1


ALL = [e for page in PAGES for e in examples(page)]


@pytest.fixture(scope="module")
def bin_dir() -> Iterator[Path]:
    """A directory with `isol8r` in it: this checkout's command, as `make link` installs it."""
    d = Path(tempfile.mkdtemp(prefix="isol8r-docs-bin-"))
    shim = d / "isol8r"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m isol8r \"$@\"\n")
    shim.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="isol8r-docs-"))
    d.chmod(0o755)  # the jail's ids must traverse it, for ./x binds
    for name, (text, mode) in FIXTURES.items():
        (d / name).write_text(text)
        (d / name).chmod(mode)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def test_examples_are_found() -> None:
    """The extraction works: the README's first example and its python blocks are among them,
    and every SKIP and EXPECT entry still names an example (a stale entry fails here)."""
    keys = {e.key for e in ALL}
    assert ("README.md", "isol8r run -- python3 -c 'print(1)'                 # no prepared root: "
            "the host's /usr, /bin, /lib*") in keys
    assert sum(e.kind == "python" and e.page == "README.md" for e in ALL) >= 2
    stale = [k for k in (*SKIP, *EXPECT) if k not in keys]
    assert not stale, f"skip or expect entries that name no example: {stale}"


@pytest.mark.parametrize("example", ALL, ids=[f"{e.page}:{e.line}" for e in ALL])
def test_example_runs_as_written(example: Example, workdir: Path, bin_dir: Path) -> None:
    if example.key in SKIP:
        pytest.skip(SKIP[example.key])
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               PYTHONPATH=str(ROOT / "src"))
    if example.kind == "python":
        argv = [sys.executable, "-c", example.text]
    else:
        argv = ["/bin/sh", "-c", example.text]
    p = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    want = EXPECT.get(example.key, 0)
    where = f"{example.page}:{example.line}: {example.text.splitlines()[0]}"
    assert p.returncode == want, f"{where}\nexit {p.returncode}\n{p.stdout}\n{p.stderr}"
    for bad in ("Traceback", "internal error"):
        assert bad not in p.stderr, f"{where}\n{p.stderr}"


def test_extraction_of_a_page(tmp_path: Path) -> None:
    """What counts as an example: shell lines starting with isol8r (continued lines joined;
    with prompts, only prompted lines), python blocks whole; other languages never."""
    page = tmp_path / "probe.md"
    text = ("```sh\nisol8r run -- /bin/true   # a comment\nmake x\nisol8r run \\\n  -- /bin/echo\n```\n"
            "```console\n$ isol8r --version\nisol8r 0.1.0\n```\n"
            "```python\nimport isol8r\nprint(1)\n```\n```text\nisol8r run -- nothing\n```\n")
    page.write_text(text)
    got = [(e.line, e.kind, e.text) for e in examples(page, "probe.md")]
    assert got == [(2, "sh", "isol8r run -- /bin/true   # a comment"),
                   (4, "sh", "isol8r run  -- /bin/echo"),
                   (8, "sh", "isol8r --version"),
                   (12, "python", "import isol8r\nprint(1)\n")]
