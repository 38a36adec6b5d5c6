"""Sphinx configuration of the accelcore subsystem guide.

The guide builds offline and warning-free under ``-W --keep-going -n``:

* intersphinx reads Python's inventory from ``docs/_intersphinx/python.inv``
  (copied from Debian's ``python3.11-doc``), never from the network;
* every cross-reference must resolve (``nitpicky``). accelcore's public names are
  re-exports (``accelcore.AccelDriver`` is defined in ``accelcore.driver``), so
  docstrings and type hints name the same object both ways; the
  ``missing-reference`` handler below maps any spelling of an object to the one
  place the API reference documents it, instead of silencing the warning.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
# Local extensions: tables generated from the code (docs/_ext/accel_tables.py).
sys.path.insert(0, str(HERE / "_ext"))

import accelcore  # noqa: E402

project = "accelcore"
author = "the accelcore authors"
copyright = "the accelcore authors, GPL-2.0-only"
release = accelcore.__version__
version = ".".join(release.split(".")[:2])

# sphinx_click must come first: with Sphinx 9 it breaks (sphinx-click issue #159)
# once another extension has imported ``sphinx.ext.autodoc.mock`` before it.
extensions = [
    "sphinx_click",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "accel_tables",
    "accel_sessions",
]

root_doc = "index"
exclude_patterns = ["_build", "_ext", "_intersphinx", "examples", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
html_static_path: list[str] = []
html_theme = "furo"
html_title = f"accelcore {release}"
pygments_style = "sphinx"
pygments_dark_style = "monokai"
highlight_language = "python3"

# -- autodoc / napoleon ------------------------------------------------------------
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}
autoclass_content = "class"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = True
napoleon_attr_annotations = True

# -- intersphinx: local inventories only -------------------------------------------
intersphinx_mapping = {
    "python": ("https://docs.python.org/3.11", str(HERE / "_intersphinx" / "python.inv")),
}
intersphinx_timeout = 1

# -- doctest ---------------------------------------------------------------------------
# The API reference's docstring examples run here too. No global setup: every
# example, in the guide and in docstrings, shows its own imports.
doctest_global_setup = ""
doctest_test_doctest_blocks = "default"

# -- nitpicky --------------------------------------------------------------------------
nitpicky = True
#: Names no inventory can resolve: cffi's types have no inventory in Debian
#: (python-cffi-doc ships none usable offline with Sphinx 9).
nitpick_ignore = [
    # The TypeVar of the ioctl/info_query decorators: an implementation detail.
    ("py:class", "accelcore.driver.F"),
    ("py:class", "accelcore.testing.conformance.registry.F"),
    # The server's per-call descriptor table, internal: the base of the documented
    # accelcore.native.remote.NativeFdTable.
    ("py:class", "accelcore.server.fdtable.ServerFdTable"),
    ("py:class", "accelcore.server.fdtable.CallFds"),
    # The TypeVar of IdTable's entries.
    ("py:class", "accelcore.resources.T"),
    ("py:obj", "accelcore.resources.T"),
]
nitpick_ignore_regex: list[tuple[str, str]] = []


# -- resolving re-exported names ---------------------------------------------------------
def _lookup(path: str) -> Any:
    """The Python object a dotted name denotes, or ``None``."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            try:
                obj = inspect.getattr_static(obj, name)
            except AttributeError:
                return None
        return obj
    return None


def _key(obj: Any) -> int | None:
    """An identity for objects that have one place (classes, functions, properties)."""
    if isinstance(obj, staticmethod | classmethod):
        obj = obj.__func__
    if (
        inspect.isclass(obj)
        or inspect.isroutine(obj)
        or inspect.ismodule(obj)
        or isinstance(obj, property)
    ):
        return id(obj)
    return None


_documented: dict[int, str] = {}


def _index(env: Any) -> dict[int, str]:
    objects = env.domains["py"].objects
    if len(_documented) != len(objects):
        _documented.clear()
        for fullname in objects:
            k = _key(_lookup(fullname))
            if k is not None:
                _documented.setdefault(k, fullname)
    return _documented


def _objects_named(node: Any) -> list[Any]:
    """Objects a reference may mean: by its scope first, then (for the bare names
    that string annotations leave) by any accelcore module that has the name."""
    target: str = node["reftarget"]
    names = [target]
    mod, cls = node.get("py:module"), node.get("py:class")
    if mod and cls:
        names.append(f"{mod}.{cls}.{target}")
    if mod:
        names.append(f"{mod}.{target}")
    found = [obj for obj in (_lookup(n) for n in names) if obj is not None]
    if "." not in target:
        for modname, module in sorted(sys.modules.items()):
            if modname.split(".")[0] in ("accelcore", "drivers") and module is not None:
                obj = module.__dict__.get(target)
                if obj is not None:
                    found.append(obj)
    return found


def _resolve_alias(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve another spelling of a documented object to where it is documented
    (``accelcore.driver.AccelDriver``, or a bare ``Path`` from a string annotation)."""
    if node.get("refdomain") != "py":
        return None
    from sphinx.ext import intersphinx

    index = _index(env)
    domain = env.domains["py"]
    for obj in _objects_named(node):
        k = _key(obj)
        if k is None:
            continue
        if k in index:
            hit = domain.resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], index[k], node, contnode
            )
            if hit is not None:
                return hit
        qualname = getattr(obj, "__qualname__", None)
        module = getattr(obj, "__module__", None)
        if qualname and module and module.split(".")[0] not in ("accelcore", "drivers"):
            alias = node.deepcopy()
            alias["reftarget"] = f"{module}.{qualname}"
            hit = intersphinx.missing_reference(app, env, alias, contnode)
            if hit is not None:
                return hit
    return None


# -- docstring shapes napoleon does not know ---------------------------------------------
_SECTIONS = {
    "args",
    "arguments",
    "parameters",
    "params",
    "keyword args",
    "keyword arguments",
    "other parameters",
    "returns",
    "return",
    "yields",
    "yield",
    "raises",
    "raise",
    "exceptions",
    "except",
    "attributes",
    "methods",
    "example",
    "examples",
    "note",
    "notes",
    "see also",
    "warning",
    "warnings",
    "todo",
    "references",
    "warns",
    "warn",
    "attention",
    "caution",
    "danger",
    "error",
    "hint",
    "important",
    "tip",
}
_ENTRY = re.compile(r"^(\w+(?:, \w+)*): \S")
_PROSE_TYPE = re.compile(r"^([A-Z][\w'-]*(?: [\w'-]+)+): (.*)$")


def _definition_blocks(lines: list[str]) -> None:
    """Turn ``Some heading:`` + indented ``name: text`` lines into a field list.

    Google style only knows its fixed section names; a docstring with another
    heading (``Attributes (declare on the subclass):``) would otherwise become a
    broken definition list.
    """
    i = 0
    while i < len(lines) - 1:
        head, nxt = lines[i], lines[i + 1]
        title = head.strip().rstrip(":").lower()
        indent = len(nxt) - len(nxt.lstrip())
        if (
            head
            and not head[0].isspace()
            and head.rstrip().endswith(":")
            and not head.rstrip().endswith("::")
            and title not in _SECTIONS
            and indent
            and _ENTRY.match(nxt.strip())
        ):
            block_end = i + 1
            while block_end < len(lines) and lines[block_end].startswith(" " * indent):
                block_end += 1
            out = [f"**{head.strip()[:-1]}**", ""]
            for line in lines[i + 1 : block_end]:
                body = line[indent:]
                m = _ENTRY.match(body)
                if m and not body.startswith(" "):
                    names = m.group(1)
                    out.append(f":{names}:{body[len(names) + 1 :]}")
                else:
                    out.append("    " + body.strip())
            out.append("")
            lines[i:block_end] = out
            i += len(out)
            continue
        i += 1


def _fix_docstring(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    if what in ("attribute", "property", "data") and lines:
        m = _PROSE_TYPE.match(lines[0])
        if m:  # "Needs the compute context: …" is prose, not "type: description"
            lines[0] = f"{m.group(1)} \N{EM DASH} {m.group(2)}"
    _definition_blocks(lines)


def setup(app: Any) -> dict[str, Any]:
    app.connect("missing-reference", _resolve_alias, priority=900)
    app.connect("autodoc-process-docstring", _fix_docstring, priority=100)
    return {"parallel_read_safe": True}
