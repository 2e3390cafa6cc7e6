"""The rules of the house, read from the source: no import cycle, layers that depend one way,
no `_private` name used outside its module.

Why a test: these rules decay one lazy import at a time (a function-level `from . import cli`
to save start-up time is invisible in a module's header), and a reviewer cannot see a cycle
across three files. The checks parse the code (ast), import nothing of isol8r and need no root.
Each failure names the module, the file and line of the import, and the rule it breaks.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PACKAGE = SRC / "isol8r"
TESTS = ROOT / "tests"

#: The layers, top first; a module may import its own layer and the layers below it. Entries
#: are module names or fnmatch patterns ("isol8r.daemon.*"). Every module of src/isol8r must
#: match exactly one entry: a new module is classified here when it is written.
LAYERS: dict[str, tuple[str, ...]] = {
    # what users call: the command line and the library API
    "front ends": ("isol8r", "isol8r.__main__", "isol8r.cli", "isol8r.connected", "isol8r.doctor",
                   "isol8r.isolate", "isol8r.checkenv", "isol8r.sandbox", "isol8r.sandboxcli",
                   "isol8r.mcpserver"),
    # long-lived processes: the fork server, its warm pool, the CLI server, the egress proxy
    "daemon": ("isol8r.daemon", "isol8r.daemon.*"),
    # one jail: its Spec (and profiles, which make Specs), the parent side (supervisor), the
    # child side (pipeline, and pid1, its init), and the messages between them (protocol.py;
    # wire.py carries them with descriptors)
    "jail": ("isol8r.spec", "isol8r.profiles", "isol8r.supervisor", "isol8r.pipeline",
             "isol8r.pid1", "isol8r.protocol", "isol8r.wire"),
    # one isolation concern each
    "concerns": ("isol8r.userns", "isol8r.mounts", "isol8r.caps", "isol8r.seccomp",
                 "isol8r.seccomp.*", "isol8r.rlimits", "isol8r.cgroups",
                 "isol8r.net", "isol8r.rootfs", "isol8r.terminal", "isol8r.elf",
                 "isol8r.paths", "isol8r.usernet", "isol8r.egress_rules", "isol8r.walls",
                 "isol8r.landlock"),
    # the words every layer speaks: the exception types, the Result, and how a helper process is
    # started (launch). Below the concerns, because concerns raise SpecError and Isol8rError
    # (cgroups, mounts, rootfs, seccomp): a failure must not need the jail layer to be told
    "base": ("isol8r.errors", "isol8r.result", "isol8r.launch"),
    # thin ctypes bindings and constants, no policy
    "sys": ("isol8r.sys", "isol8r.sys.*"),
}

#: Imports between two concerns that the code needs today, each with its reason. Any other
#: import between concerns fails: the pipeline and the supervisor compose the concerns.
CONCERN_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("mounts", "paths"): "mount destinations are resolved inside the new root without following "
                         "a link out of it: paths.py is that one resolver",
    ("elf", "paths"): "mkroot reads a sysroot's ELF interpreters and libraries through the same "
                      "resolver, so a link in the sysroot cannot point at the host",
    ("rootfs", "elf"): "mkroot (rootfs) copies a program with the libraries elf.py finds for it",
}

#: isol8r names that begin with "_" by a Python convention yet are public (namedtuple's API).
PUBLIC_UNDERSCORE = frozenset({"_replace", "_asdict", "_fields", "_make", "_field_defaults"})


@dataclass(frozen=True)
class Edge:
    """One import statement of one module of another."""

    src: str
    dst: str
    where: str  # file:line
    lazy: bool  # inside a function: runs at the first call, not at import

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst} ({self.where}{', function-level' if self.lazy else ''})"


def module_files() -> dict[str, Path]:
    """Every module of the package by its dotted name; a package by its own name."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = module_files()


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The module an ImportFrom reads from, made absolute."""
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def parents_of(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def is_lazy(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
    return False


def edges_of(name: str, path: Path) -> list[Edge]:
    """The isol8r modules this module imports, at module level and inside functions; a name
    imported from a package (`from . import x`) counts as the module x when x is a module."""
    tree = ast.parse(path.read_text(), str(path))
    parents = parents_of(tree)
    out = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node, name, path.name == "__init__.py")
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        for dst in targets:
            if (dst == "isol8r" or dst.startswith("isol8r.")) and dst != name:
                out.append(Edge(name, dst, f"{rel(path)}:{node.lineno}", is_lazy(node, parents)))
    return sorted(out, key=lambda e: int(e.where.rpartition(":")[2]))


def graph() -> dict[str, list[Edge]]:
    return {name: edges_of(name, path) for name, path in MODULES.items()}


def layer_of(module: str) -> str | None:
    found = [layer for layer, patterns in LAYERS.items()
             if any(fnmatchcase(module, p) for p in patterns)]
    assert len(found) <= 1, f"{module} matches more than one layer of LAYERS: {found}"
    return found[0] if found else None


def concern_of(module: str) -> str:
    """isol8r.seccomp.policy -> seccomp; isol8r.mounts -> mounts."""
    return module.split(".")[1]


# ---- (a) no import cycle -----------------------------------------------------------------------

def cycles(g: dict[str, list[Edge]]) -> list[list[Edge]]:
    """One shortest cycle through each strongly connected component of more than one module
    (Tarjan's algorithm, then a breadth-first search inside the component)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for e in g.get(v, []):
            if e.dst not in g:
                continue
            if e.dst not in index:
                visit(e.dst)
                low[v] = min(low[v], low[e.dst])
            elif e.dst in on:
                low[v] = min(low[v], index[e.dst])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(g):
        if v not in index:
            visit(v)
    out = []
    for comp in comps:
        start = min(comp)
        paths: dict[str, list[Edge]] = {start: []}
        frontier = [start]
        found: list[Edge] | None = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for e in g[v]:
                    if e.dst == start and found is None:
                        found = paths[v] + [e]
                    elif e.dst in comp and e.dst not in paths:
                        paths[e.dst] = paths[v] + [e]
                        nxt.append(e.dst)
            frontier = nxt
        assert found is not None
        out.append(found)
    return out


def test_no_import_cycle() -> None:
    g = graph()
    found = cycles(g)
    report = []
    for loop in found:
        members = strongly_connected(g, loop[0].src)
        inside = [e for m in sorted(members) for e in g[m] if e.dst in members]
        report.append("  " + " -> ".join([loop[0].src] + [e.dst for e in loop]) +
                      f"\n    all {len(members)} modules of this knot: {sorted(members)}; "
                      f"the {len(inside)} imports among them:\n" +
                      "\n".join(f"      {e}" for e in inside))
    assert not found, "import cycles (a shortest loop of each):\n" + "\n".join(report)


def strongly_connected(g: dict[str, list[Edge]], start: str) -> set[str]:
    """The modules that start imports and that import start, directly or not."""
    def reach(step: dict[str, set[str]]) -> set[str]:
        seen, todo = {start}, [start]
        while todo:
            for n in step.get(todo.pop(), ()):
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return seen
    forward = {m: {e.dst for e in es if e.dst in g} for m, es in g.items()}
    backward: dict[str, set[str]] = {}
    for m, dsts in forward.items():
        for d in dsts:
            backward.setdefault(d, set()).add(m)
    return reach(forward) & reach(backward)


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: a made-up graph with a loop of three."""
    e = [Edge("a", "b", "a:1", False), Edge("b", "c", "b:1", True), Edge("c", "a", "c:1", True),
         Edge("c", "d", "c:2", False)]
    g = {"a": [e[0]], "b": [e[1]], "c": [e[2], e[3]], "d": []}
    assert cycles(g) == [[e[0], e[1], e[2]]]
    assert cycles({"a": [e[0]], "b": [], "c": []}) == []


# ---- (b) layers --------------------------------------------------------------------------------

def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in MODULES if layer_of(m) is None)
    assert not missing, ("modules in no layer of LAYERS (tests/unit/test_house.py): "
                         f"{missing}; add each to the layer it belongs to")


def layer_violations(g: dict[str, list[Edge]]) -> list[str]:
    order = list(LAYERS)
    out = []
    for module, edges in sorted(g.items()):
        mine = layer_of(module)
        for e in edges:
            theirs = layer_of(e.dst) if e.dst in MODULES else None
            if mine is None or theirs is None:
                continue  # reported by test_every_module_has_a_layer (or not a module)
            if order.index(theirs) < order.index(mine):
                out.append(f"{e}: the {mine} layer imports the {theirs} layer above it")
            elif mine == theirs == "concerns":
                pair = (concern_of(module), concern_of(e.dst))
                if pair[0] != pair[1] and pair not in CONCERN_EXCEPTIONS:
                    out.append(f"{e}: concern {pair[0]} imports concern {pair[1]} (concerns do "
                               "not import each other; the pipeline and supervisor compose them, "
                               "or add the pair to CONCERN_EXCEPTIONS with its reason)")
    return out


def test_layers_depend_one_way() -> None:
    bad = layer_violations(graph())
    assert not bad, f"{len(bad)} imports against the layers " \
        f"({' > '.join(LAYERS)}):\n" + "\n".join(f"  {b}" for b in bad)


def test_the_layer_check_sees_each_kind_of_wrong_import() -> None:
    """The check above can fail: an import upwards, and one between two concerns."""
    up = Edge("isol8r.mounts", "isol8r.supervisor", "mounts.py:1", True)
    across = Edge("isol8r.caps", "isol8r.cgroups", "caps.py:1", False)
    allowed = Edge("isol8r.mounts", "isol8r.paths", "mounts.py:2", False)
    down = Edge("isol8r.cli", "isol8r.sys.linux", "cli.py:1", True)
    got = layer_violations({"isol8r.mounts": [up, allowed], "isol8r.caps": [across],
                            "isol8r.cli": [down]})
    assert [b.split(": ", 1)[0] for b in got] == [str(across), str(up)]


def test_the_modules_issue_14_adds_have_their_layer() -> None:
    """Where the modules being written go (ARCHITECTURE.md's shape)."""
    assert layer_of("isol8r.daemon.forkserver") == layer_of("isol8r.daemon.cliserver") == "daemon"
    assert layer_of("isol8r.protocol") == "jail"
    assert layer_of("isol8r.seccomp.policy") == "concerns"
    assert concern_of("isol8r.seccomp.policy") == concern_of("isol8r.seccomp.cache") == "seccomp"


def test_the_concern_exceptions_are_still_needed() -> None:
    """An exception the code no longer needs is a door left open: remove it from the table."""
    used = {(concern_of(m), concern_of(e.dst)) for m, es in graph().items() for e in es
            if layer_of(m) == "concerns" and e.dst in MODULES and layer_of(e.dst) == "concerns"}
    stale = sorted(set(CONCERN_EXCEPTIONS) - used)
    assert not stale, f"CONCERN_EXCEPTIONS lists imports no module makes any more: {stale}"


# ---- (c) no _private name across modules -------------------------------------------------------

def private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("_") and name not in PUBLIC_UNDERSCORE


def python_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py")) + sorted(TESTS.rglob("*.py"))


def own_module(path: Path) -> str | None:
    return next((m for m, p in MODULES.items() if p == path), None)


def reaching_in(path: Path) -> list[str]:
    """Each use, in this file, of a _private name of another isol8r module: `from m import _x`,
    `m._x` (m bound to an isol8r module, to a name imported from one or to an object one made),
    and getattr/setattr or monkeypatch.setattr(m, "_x", ...). Not `self._x`, and not a
    standard module's (os._exit): only isol8r's own modules are held to the rule."""
    me = own_module(path)
    tree = ast.parse(path.read_text(), str(path))
    bound: dict[str, str] = {}  # local name -> the isol8r module, or "module.Name"
    out: list[tuple[int, str]] = []

    def where(node: ast.AST) -> str:
        return f"{rel(path)}:{getattr(node, 'lineno', '?')}"

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "isol8r" or a.name.startswith("isol8r."):
                    if a.asname:
                        bound[a.asname] = a.name
                    else:
                        bound[a.name.split(".")[0]] = "isol8r"
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node, me or "", path.name == "__init__.py") if me or not node.level \
                else ""
            if not (base == "isol8r" or base.startswith("isol8r.")):
                continue
            for a in node.names:
                if private(a.name) and base != me:
                    out.append((node.lineno, f"{where(node)}: from {base} import {a.name}"))
                full = f"{base}.{a.name}"
                bound[a.asname or a.name] = full

    def owner(target: str) -> str:
        """The module a bound name lives in: a module itself, or the module of module.Name."""
        return target if target in MODULES else target.rpartition(".")[0]

    def resolve(expr: ast.expr) -> str | None:
        """What an expression names, if it comes from an isol8r module: the module itself
        (isol8r.server), or "module.Name" for a name of it or an object it made (what a call of
        it returned, an attribute of that, a local variable assigned one of those)."""
        if isinstance(expr, ast.Name):
            return bound.get(expr.id)
        if isinstance(expr, ast.Attribute):
            inner = resolve(expr.value)
            if inner is None:
                return None
            if inner in MODULES and f"{inner}.{expr.attr}" in MODULES:
                return f"{inner}.{expr.attr}"
            return f"{owner(inner)}.{expr.attr}"
        if isinstance(expr, ast.Call):
            func = resolve(expr.func)
            return None if func is None else f"{owner(func)}.<object>"
        return None

    for node in ast.walk(tree):  # client = isol8r.client(): client is an object of isol8r's
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name):
            made = resolve(node.value)
            if made is not None and made not in MODULES:
                bound.setdefault(node.targets[0].id, made)

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            target = resolve(node.value)
            if target is not None and owner(target) != me:
                out.append((node.lineno, f"{where(node)}: {ast.unparse(node)}"))
        elif isinstance(node, ast.Call) and len(node.args) >= 2 and \
                isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str) \
                and private(node.args[1].value):
            func = ast.unparse(node.func)
            if func in ("getattr", "setattr", "hasattr", "delattr") or func.endswith(".setattr") \
                    or func.endswith(".delattr"):
                target = resolve(node.args[0])
                if target is not None and owner(target) != me:
                    out.append((node.lineno, f"{where(node)}: {ast.unparse(node)[:100]}"))
        elif isinstance(node, ast.Call) and node.args and ast.unparse(node.func).endswith(
                ("monkeypatch.setattr", "monkeypatch.delattr")) and \
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            dotted = node.args[0].value  # monkeypatch.setattr("isol8r.server._x", ...)
            if dotted.startswith("isol8r.") and any(private(p) for p in dotted.split(".")):
                out.append((node.lineno, f"{where(node)}: {ast.unparse(node)[:100]}"))
    return [use for _, use in sorted(out)]


def test_no_private_name_across_modules() -> None:
    bad = [use for path in python_files() for use in reaching_in(path)]
    assert not bad, (f"{len(bad)} uses of another module's _private name (give it a public "
                     "name, or move the code that needs it):\n" + "\n".join(f"  {b}" for b in bad))


def test_the_private_check_sees_each_form(tmp_path: Path) -> None:
    """The check above can fail: each form it looks for, in a made-up test file."""
    f = tmp_path / "test_x.py"
    f.write_text("\n".join([
        "import isol8r",
        "import os",
        "from isol8r import supervisor as sup",
        "from isol8r.spec import _key",
        "from isol8r.cgroups import Cgroup",
        "def t(monkeypatch, self):",
        "    isol8r._client()",
        "    sup._discard",
        "    isol8r.supervisor._bpf",
        "    Cgroup._procs",
        "    monkeypatch.setattr(sup, '_bpf', 1)",
        "    self._x, sup.__name__, Cgroup.limits._replace, os._exit",  # none of these
        "    c = Cgroup.create()",
        "    c._dirs",
    ]) + "\n")
    got = [use.split(": ", 1)[1] for use in reaching_in(f)]
    assert got == ["from isol8r.spec import _key", "isol8r._client", "sup._discard",
                   "isol8r.supervisor._bpf", "Cgroup._procs", "monkeypatch.setattr(sup, '_bpf', 1)",
                   "c._dirs"]
