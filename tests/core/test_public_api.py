"""The public/private line (issue 17, item 6).

The public API is the facade :mod:`accelcore` plus the public subpackages and
driver-facing modules in :data:`PUBLIC_MODULES`, each exactly its ``__all__``.
Everything else (``accelcore.gem``, ``accelcore.dispatch``, …) is the engine's
inside: a name there may move between modules or change at any time.

* ``public_api.txt`` (next to this file) is the checked-in snapshot of every
  public module's ``__all__``; a change to a public ``__all__`` fails
  :func:`test_public_api_matches_snapshot` until the snapshot is updated on
  purpose, by running ``python tests/core/test_public_api.py`` and committing the
  file with the change.
* The reference drivers and the out-of-tree example import only public names
  (:func:`test_drivers_import_only_public_names`), so "drivers use only the
  public API" is checked, not hoped.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SNAPSHOT = pathlib.Path(__file__).with_name("public_api.txt")

#: The modules whose ``__all__`` is the public API.
PUBLIC_MODULES = (
    "accelcore",
    "accelcore.pci",
    "accelcore.server",
    "accelcore.testing",
    "accelcore.testing.conformance",
    # the driver-facing vocabulary of example setups ("drivers may import it")
    "accelcore.testing.conformance.steps",
    "accelcore.uapi",
)

#: Code that must stay on the public side of the line.
DRIVER_TREES = ("drivers/habana_like", "drivers/kfd_like", "docs/examples/tinynpu")

UPDATE = "python tests/core/test_public_api.py"


def current_api() -> dict[str, list[str]]:
    """Every public module's ``__all__``, sorted."""
    return {m: sorted(importlib.import_module(m).__all__) for m in PUBLIC_MODULES}


def render(api: dict[str, list[str]]) -> str:
    lines = [
        "# The public API of accelcore: each public module's __all__.",
        f"# Checked by tests/core/test_public_api.py; regenerate on purpose with: {UPDATE}",
    ]
    for module, names in api.items():
        lines += ["", f"[{module}]", *names]
    return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, list[str]]:
    api: dict[str, list[str]] = {}
    section: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = api.setdefault(line[1:-1], [])
        else:
            assert section is not None, f"{SNAPSHOT.name}: name {line!r} before any [module]"
            section.append(line)
    return api


def test_public_api_matches_snapshot() -> None:
    want = parse(SNAPSHOT.read_text())
    got = current_api()
    diff = []
    for module in sorted(set(want) | set(got)):
        added = sorted(set(got.get(module, [])) - set(want.get(module, [])))
        removed = sorted(set(want.get(module, [])) - set(got.get(module, [])))
        diff += [f"  {module}: added {n}" for n in added]
        diff += [f"  {module}: removed {n}" for n in removed]
    assert not diff, (
        "the public API changed:\n"
        + "\n".join(diff)
        + f"\nIf this is on purpose, run `{UPDATE}` and commit {SNAPSHOT.name} with the change "
        "(and say so in the guide)."
    )


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_name_exists_and_is_public(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    private = [n for n in mod.__all__ if n.startswith("_") and n != "__version__"]
    assert not missing, f"{module}.__all__ names missing attributes: {missing}"
    assert not private, f"{module}.__all__ exports private names: {private}"


def _imports(path: pathlib.Path) -> list[tuple[int, str, str | None]]:
    """``(line, module, name)`` for every accelcore import in ``path`` (at any
    depth, ``TYPE_CHECKING`` blocks included); ``name`` is ``None`` for ``import m``."""
    out: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(node.lineno, node.module, a.name) for a in node.names]
    return [i for i in out if i[1] == "accelcore" or i[1].startswith("accelcore.")]


def private_imports(tree: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """Every import in ``tree`` that crosses the public/private line."""
    exported = {m: set(importlib.import_module(m).__all__) for m in PUBLIC_MODULES}
    bad = []
    for path in sorted(tree.rglob("*.py")):
        for line, module, name in _imports(path):
            where = f"{path.relative_to(root)}:{line}"
            if module not in exported:
                bad.append(f"{where}: imports from private module {module}")
            elif name is not None and name != "*" and name not in exported[module]:
                bad.append(f"{where}: {module}.{name} is not in {module}.__all__")
    return bad


@pytest.mark.parametrize("tree", DRIVER_TREES)
def test_drivers_import_only_public_names(tree: str) -> None:
    path = ROOT / tree
    assert list(path.rglob("*.py")), f"{tree} has no Python files"
    bad = private_imports(path)
    assert not bad, (
        f"{tree} reaches past the public API; import these from accelcore (export "
        "the name there if a third-party driver needs it too):\n" + "\n".join(bad)
    )


def test_private_imports_are_caught(tmp_path: pathlib.Path) -> None:
    (tmp_path / "d.py").write_text(
        "from accelcore import AccelDriver\n"
        "from accelcore.gem import import_dmabuf\n"
        "from accelcore.uapi import NOT_A_NAME\n"
        "def f():\n    import accelcore.dispatch\n"
    )
    assert private_imports(tmp_path, tmp_path) == [
        "d.py:2: imports from private module accelcore.gem",
        "d.py:3: accelcore.uapi.NOT_A_NAME is not in accelcore.uapi.__all__",
        "d.py:5: imports from private module accelcore.dispatch",
    ]


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    SNAPSHOT.write_text(render(current_api()))
    print(f"wrote {SNAPSHOT}")
