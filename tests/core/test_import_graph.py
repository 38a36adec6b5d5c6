"""The engine's imports point one way (issue 17, item 7).

The engine is every module of :mod:`accelcore` outside the transports and tools
(``server``, ``cli``, ``demo``, ``native``, ``testing``). Its *module-level*
import graph (imports run when a module loads; ``if TYPE_CHECKING:`` blocks are
for the type checker only and do not count) must be acyclic: object types below,
dispatch and ownership above, the subsystem on top (docs/architecture.rst,
"Layers"). A lower layer that must call up does so through a Protocol or a hook,
or, where neither fits, with an import inside a function; each such import must
carry a comment saying why it calls up.
"""

from __future__ import annotations

import ast
import functools
import pathlib

import accelcore

PKG = pathlib.Path(accelcore.__file__).parent
NOT_ENGINE = {"server", "cli", "demo", "native", "testing"}


def _module_name(path: pathlib.Path) -> str:
    parts = ["accelcore", *path.relative_to(PKG).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def engine_modules() -> dict[str, pathlib.Path]:
    mods = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).parts
        if len(rel) > 1 and rel[0] in NOT_ENGINE:
            continue
        mods[_module_name(path)] = path
    return mods


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom, known: set[str]) -> list[str]:
    """The absolute module names an ``ImportFrom`` needs: ``from .p import x``
    needs submodule ``p.x`` if there is one, else ``p`` itself."""
    if node.level:
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, *([node.module] if node.module else [])])
    else:
        target = node.module or ""
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.append(node)
            elif isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    return out


def _targets(module: str, path: pathlib.Path, node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        names = _resolve(module, path.name == "__init__.py", node, set(engine_modules()))
    return {n for n in names if n.startswith("accelcore")}


def import_graph() -> dict[str, set[str]]:
    """Module-level edges between engine modules (the facade, ``accelcore``
    itself, is left out: it imports everything and nothing imports it)."""
    mods = engine_modules()
    graph: dict[str, set[str]] = {m: set() for m in mods if m != "accelcore"}
    for m, path in mods.items():
        if m == "accelcore":
            continue
        for node in _module_level_imports(ast.parse(path.read_text())):
            for t in _targets(m, path, node):
                if t in graph and t != m:
                    graph[m].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return [*stack[stack.index(w) :], w]
            if w not in state and (cycle := visit(w)):
                return cycle
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (cycle := visit(v)):
            return cycle
    return None


def test_find_cycle_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_the_engine() -> None:
    graph = import_graph()
    # a few edges the layering is built on, so an empty graph cannot pass
    assert "accelcore.driver" in graph["accelcore.subsystem"]
    assert "accelcore.fence" in graph["accelcore.sched"]
    assert "accelcore.uapi.ioc" in graph["accelcore.driver"]


def test_engine_module_level_imports_are_acyclic() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, (
        "engine modules import each other in a circle at module level: "
        + " -> ".join(cycle or [])
        + ". Move the lower module's need behind a Protocol or hook, or (last resort) "
        "into a function with a comment saying why it calls up."
    )


def _function_level_imports() -> list[tuple[str, int, str]]:
    """``(module, line, source line)`` of every engine import of accelcore
    inside a function body."""
    out = []
    for m, path in engine_modules().items():
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and _targets(m, path, node):
                    out.append((m, node.lineno, path))
    return [(m, ln, str(p)) for m, ln, p in sorted(set(out))]


def _has_reason(lines: list[str], lineno: int) -> bool:
    """A comment on the import's line, or in the comment/import block just above."""
    if "#" in lines[lineno - 1]:
        return True
    i = lineno - 2
    while i >= 0:
        s = lines[i].strip()
        if s.startswith("#"):
            return True
        if not (s.startswith(("from ", "import ")) or s == ""):
            return False
        i -= 1
    return False


def test_function_level_imports_say_why() -> None:
    missing = []
    for m, lineno, path in _function_level_imports():
        lines = pathlib.Path(path).read_text().splitlines()
        if not _has_reason(lines, lineno):
            missing.append(f"{m}:{lineno}: {lines[lineno - 1].strip()}")
    assert not missing, (
        "imports inside functions hide a cycle; hoist each to module level, or, if it "
        "must call up, say why in a comment above it:\n" + "\n".join(missing)
    )


def test_has_reason_reads_comments() -> None:
    src = ["def f():", "    # calls up", "    from .a import b", "    from .c import d", "    x()"]
    assert _has_reason(src, 3) and _has_reason(src, 4)
    assert not _has_reason(["def f():", "    from .a import b"], 2)
