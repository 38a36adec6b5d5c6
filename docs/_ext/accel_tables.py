"""Tables the guide generates from the code when it is built, so they cannot rot.

Directives:

``.. accel-ioctls:: module:NAME``
    The ioctls a uAPI header defines (not those of the headers it includes):
    name, number, ``nr``, direction, argument type and size, from
    :attr:`Uapi.ioctls <accelcore.Uapi>`. ``NAME`` is a loaded
    :class:`~accelcore.Uapi`, or an :class:`~accelcore.AccelDriver` subclass,
    whose header is used and whose handlers add the permission flags and the
    ``waits`` / ``multi_device`` declarations.

``.. accel-info-queries:: module:DriverClass``
    The driver's INFO queries (op, the header's constant, answer struct, size,
    whether it answers after unplug), from :meth:`AccelDriver.info_table`.

``.. accel-conformance-checks::``
    Every conformance check by area, from
    :func:`accelcore.testing.conformance.checks_table`.

``.. accel-cli-schemas::``
    The ``accelctl --json`` schemas (:data:`accelcore.cli.schema.SCHEMAS`):
    each command's top-level type and keys.

Cells are built as docutils nodes, never as reStructuredText, so text from the
code (``pad*/reserved*``) cannot be misread as markup.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TypeAlias

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

Cell: TypeAlias = str | nodes.Node | Sequence[nodes.Node]

_DIRECTIONS = {0: ("IO", "none"), 1: ("IOW", "in"), 2: ("IOR", "out"), 3: ("IOWR", "in, out")}


def _lit(text: str) -> nodes.literal:
    return nodes.literal(text, text)


def _cell(value: Cell) -> nodes.entry:
    entry = nodes.entry()
    para = nodes.paragraph()
    if isinstance(value, str):
        para += nodes.Text(value)
    elif isinstance(value, nodes.Node):
        para += value
    else:
        for node in value:
            para += node
    entry += para
    return entry


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[Cell]], widths: Sequence[int]
) -> nodes.table:
    table = nodes.table(classes=["longtable"])
    group = nodes.tgroup(cols=len(headers))
    table += group
    for width in widths:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    hrow = nodes.row()
    for text in headers:
        hrow += _cell(text)
    head += hrow
    group += head
    body = nodes.tbody()
    for cells in rows:
        row = nodes.row()
        for value in cells:
            row += _cell(value)
        body += row
    group += body
    return table


class _Generated(SphinxDirective):
    """Shared by the directives: import ``module:NAME`` and record what was read."""

    def load(self, spec: str) -> Any:
        module_name, _, attr = spec.partition(":")
        module = importlib.import_module(module_name)
        self.depend_on(module)
        obj: Any = module
        for part in filter(None, attr.split(".")):
            obj = getattr(obj, part)
        return obj

    def depend_on(self, obj: Any) -> None:
        """Rebuild the page when the source the table came from changes."""
        try:
            path = inspect.getsourcefile(obj)
        except TypeError:
            return
        if path:
            self.env.note_dependency(path)


def _own_ioctls(uapi: Any) -> list[Any]:
    """The ioctls ``uapi``'s header defines itself, by number."""
    inherited = {name for parent in uapi.include for name in parent.ioctls}
    return sorted(
        (d for name, d in uapi.ioctls.items() if name not in inherited), key=lambda d: d.nr
    )


def _flag_text(desc: Any) -> str:
    flags = [f.name for f in type(desc.flags) if f.value and f in desc.flags]
    if desc.waits:
        flags.append("waits")
    if desc.multi_device:
        flags.append("multi_device")
    return ", ".join(flags) if flags else "—"


class IoctlsDirective(_Generated):
    """``.. accel-ioctls:: module:NAME`` (see the module docstring)."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        from accelcore import AccelDriver, Uapi

        target = self.load(self.arguments[0])
        handlers: dict[str, Any] | None = None
        if isinstance(target, type) and issubclass(target, AccelDriver):
            self.depend_on(target)
            driver = target()
            uapi = driver.uapi
            handlers = {d.name: d for d in driver.ioctl_table().values()}
        else:
            uapi = target
        if not isinstance(uapi, Uapi):
            raise self.error(f"{self.arguments[0]} is neither a Uapi nor an AccelDriver subclass")
        self.env.note_dependency(str(uapi.path))
        headers = ["ioctl", "number", "nr", "direction", "argument", "size"]
        widths = [34, 12, 6, 12, 36, 6]
        if handlers is not None:
            headers.append("handler flags")
            widths.append(22)
        rows = []
        for d in _own_ioctls(uapi):
            macro, meaning = _DIRECTIONS[d.dir]
            row: list[Cell] = [
                _lit(d.name),
                _lit(f"{d.cmd:#010x}"),
                _lit(f"{d.nr:#04x}"),
                [_lit(macro), nodes.Text(f" ({meaning})")],
                _lit(d.arg_type) if d.arg_type else "—",
                str(d.size),
            ]
            if handlers is not None:
                desc = handlers.get(d.name)
                row.append(_flag_text(desc) if desc is not None else "no handler")
            rows.append(row)
        if not rows:
            return [nodes.paragraph(text=f"{uapi.path.name} defines no ioctls of its own.")]
        return [_table(headers, rows, widths)]


def _constant_for(uapi: Any, op: int) -> str | None:
    """The header's own ``*_INFO_*`` constant whose value is ``op``."""
    inherited = {name for parent in uapi.include for name in parent.constants}
    for name, value in uapi.constants.items():
        if value == op and "_INFO_" in name and name not in inherited:
            return str(name)
    return None


class InfoQueriesDirective(_Generated):
    """``.. accel-info-queries:: module:DriverClass`` (see the module docstring)."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        from accelcore import AccelDriver

        cls = self.load(self.arguments[0])
        if not (isinstance(cls, type) and issubclass(cls, AccelDriver)):
            raise self.error(f"{self.arguments[0]} is not an AccelDriver subclass")
        self.depend_on(cls)
        driver = cls()
        uapi = driver.uapi
        table = driver.info_table()
        if not table:
            return [
                nodes.paragraph(
                    "",
                    "",
                    nodes.Text(
                        f"{cls.name} adds no driver INFO queries; its accel nodes "
                        "answer only the core queries of "
                    ),
                    _lit("ACCEL_IOCTL_INFO"),
                    nodes.Text("."),
                )
            ]
        rows = []
        for op, q in sorted(table.items()):
            name = _constant_for(uapi, op) if uapi is not None else None
            size = str(uapi.sizeof(q.answer_type)) if q.answer_type and uapi else "variable"
            rows.append(
                [
                    _lit(f"{op:#x}"),
                    _lit(name) if name else _lit(q.name),
                    _lit(q.answer_type) if q.answer_type else "raw bytes",
                    size,
                    "yes" if q.unplugged_ok else "no",
                ]
            )
        return [
            _table(["op", "constant", "answer", "size", "after unplug"], rows, [8, 30, 34, 8, 10])
        ]


class ConformanceChecksDirective(_Generated):
    """``.. accel-conformance-checks::`` (see the module docstring)."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from accelcore.testing import conformance

        rows = conformance.checks_table()
        for mod in {c.module for c in conformance.CHECKS.values()}:
            self.depend_on(sys.modules[mod])
        cells = [
            [area, _lit(name), what, conformance.CHECKS[name].catches] for name, area, what in rows
        ]
        return [
            _table(
                ["area", "check", "what it checks", "the driver bug it catches"],
                cells,
                [10, 28, 36, 26],
            )
        ]


def _shape(schema: dict[str, Any]) -> tuple[str, list[str]]:
    """A schema's top-level type and its keys (an array's item keys)."""
    kind = schema.get("type", "enum" if "enum" in schema else "any")
    props = schema.get("properties")
    if kind == "array":
        props = schema.get("items", {}).get("properties")
        kind = "array of objects" if props else "array"
    return (kind if isinstance(kind, str) else " or ".join(kind)), sorted(props or {})


class CliSchemasDirective(_Generated):
    """``.. accel-cli-schemas::`` (see the module docstring)."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        schema_mod = self.load("accelcore.cli.schema")
        rows = []
        for key, schema in schema_mod.SCHEMAS.items():
            kind, keys = _shape(schema)
            key_cells: list[nodes.Node] = []
            for i, k in enumerate(keys):
                if i:
                    key_cells.append(nodes.Text(", "))
                key_cells.append(_lit(k))
            rows.append([_lit(key), kind, key_cells or "—"])
        return [_table(["schema", "top level", "keys"], rows, [14, 16, 70])]


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("accel-ioctls", IoctlsDirective)
    app.add_directive("accel-info-queries", InfoQueriesDirective)
    app.add_directive("accel-conformance-checks", ConformanceChecksDirective)
    app.add_directive("accel-cli-schemas", CliSchemasDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
