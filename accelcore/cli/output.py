"""Output modes smi users expect, shared by ``list``, ``info`` and ``ps``.

* ``--json``: the command's JSON document (schema in :mod:`accelcore.cli.schema`).
* ``--csv`` / ``--query FIELD,...``: one CSV line per row (a device, a client),
  ``--noheader`` and ``--nounits`` as in ``nvidia-smi --format=csv,noheader,nounits``;
  ``--help-query`` lists the fields.
* ``-f/--file PATH``: write the output there instead of stdout.
* ``-l/--loop SECONDS``: repeat every SECONDS until interrupted (``-n`` times at
  most); JSON then prints one compact document per line, CSV its header once.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar, cast

import click

__all__ = ["Field", "Output", "Sample", "output_options"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Field:
    """A ``--query`` field: its name, its unit (``None``: none), what it means, and
    how a row's JSON gives its value."""

    name: str
    unit: str | None
    help: str
    get: Callable[[dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class Sample:
    """One refresh of a command: its JSON document, its CSV rows, its human renderer."""

    data: dict[str, Any]
    rows: list[dict[str, Any]]
    human: Callable[[], None]


def _cell(value: Any, unit: str | None, units: bool) -> str:
    if value is None:
        return "[N/A]"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value} {unit}" if unit and units else str(value)


@dataclass
class Output:
    """The output options of one command run (see the module docstring)."""

    fields: dict[str, Field]
    as_json: bool = False
    as_csv: bool = False
    noheader: bool = False
    nounits: bool = False
    query: tuple[str, ...] = ()
    file: Path | None = None
    loop: float | None = None
    count: int | None = None

    def selected(self) -> list[Field]:
        """The ``--query`` fields (all of them by default).

        Raises:
            click.BadParameter: an unknown field (exit 2), named with the known ones.
        """
        if not self.query:
            return list(self.fields.values())
        out = []
        for name in self.query:
            if name not in self.fields:
                raise click.BadParameter(
                    f"unknown field {name!r}; --help-query lists: {', '.join(self.fields)}",
                    param_hint="--query",
                )
            out.append(self.fields[name])
        return out

    def run(self, produce: Callable[[], Sample], tick: Callable[[int], None]) -> None:
        """Print ``produce()`` once, or every ``--loop`` seconds (``tick`` lets that
        much device time pass on a virtual clock)."""
        fields = self.selected() if (self.as_csv or self.query) and not self.as_json else []
        with self._stream():
            n = 0
            header = not self.noheader
            try:
                while True:
                    sample = produce()
                    n += 1
                    if fields:
                        self._csv(sample.rows, fields, header)
                        header = False
                    elif self.as_json:
                        if self.loop is None:
                            click.echo(json.dumps(sample.data, indent=2))
                        else:
                            click.echo(json.dumps(sample.data, separators=(",", ":")))
                    else:
                        if n > 1:
                            click.echo()
                        sample.human()
                    if self.loop is None or (self.count is not None and n >= self.count):
                        break
                    sys.stdout.flush()
                    time.sleep(self.loop)
                    tick(int(self.loop * 1e9))
            except KeyboardInterrupt:
                pass

    def _csv(self, rows: list[dict[str, Any]], fields: list[Field], header: bool) -> None:
        units = not self.nounits
        w = csv.writer(sys.stdout, lineterminator="\n")
        if header:
            w.writerow([f"{f.name} [{f.unit}]" if f.unit and units else f.name for f in fields])
        for row in rows:
            w.writerow([_cell(f.get(row), f.unit, units) for f in fields])

    @contextlib.contextmanager
    def _stream(self) -> Iterator[None]:
        if self.file is None:
            yield
            return
        try:
            handle: TextIO = self.file.open("w", encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(
                f"{self.file}: {exc.strerror or exc}", param_hint="--file"
            ) from None
        saved = sys.stdout
        sys.stdout = handle
        try:
            yield
        finally:
            sys.stdout = saved
            handle.close()


def output_options(fields: list[Field], *, loop: bool = True) -> Callable[[F], F]:
    """Add ``--json``, ``--csv``, ``--noheader``, ``--nounits``, ``--query``,
    ``--help-query``, ``--file`` and (with ``loop``) ``-l``/``-n`` to a command,
    which receives them as one :class:`Output` named ``out``."""
    by_name = {f.name: f for f in fields}

    def show_fields(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if not value or ctx.resilient_parsing:
            return
        width = max(len(f.name) for f in fields)
        for f in fields:
            unit = f" [{f.unit}]" if f.unit else ""
            click.echo(f"{f.name:<{width}}  {f.help}{unit}")
        ctx.exit(0)

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kw: Any) -> Any:
            query = tuple(
                q.strip() for part in kw.pop("query") or () for q in part.split(",") if q.strip()
            )
            out = Output(
                by_name,
                as_json=kw.pop("as_json"),
                as_csv=kw.pop("as_csv"),
                noheader=kw.pop("noheader"),
                nounits=kw.pop("nounits"),
                query=query,
                file=kw.pop("file"),
                loop=kw.pop("loop", None),
                count=kw.pop("count", None),
            )
            if out.as_json and (out.as_csv or out.query):
                raise click.UsageError("--json excludes --csv and --query")
            return f(*args, out=out, **kw)

        opts = [
            click.option(
                "--json",
                "as_json",
                is_flag=True,
                help="Print JSON (the stable interface; schema in accelcore.cli.schema).",
            ),
            click.option("--csv", "as_csv", is_flag=True, help="Print CSV, one line per row."),
            click.option("--noheader", is_flag=True, help="CSV without its header line."),
            click.option("--nounits", is_flag=True, help="CSV values without units."),
            click.option(
                "-q",
                "--query",
                multiple=True,
                metavar="FIELD[,FIELD...]",
                help="CSV of these fields only (implies --csv; see --help-query).",
            ),
            click.option(
                "--help-query",
                is_flag=True,
                expose_value=False,
                is_eager=True,
                callback=show_fields,
                help="List the fields --query takes, and exit.",
            ),
            click.option(
                "-f",
                "--file",
                type=click.Path(dir_okay=False, path_type=Path),
                default=None,
                help="Write the output to this file instead of stdout.",
            ),
        ]
        if loop:
            opts += [
                click.option(
                    "-l",
                    "--loop",
                    type=click.FloatRange(min=0, min_open=True),
                    default=None,
                    metavar="SECONDS",
                    help="Repeat every SECONDS until interrupted.",
                ),
                click.option(
                    "-n",
                    "--count",
                    type=click.IntRange(min=1),
                    default=None,
                    help="With --loop: stop after N repetitions.",
                ),
            ]
        cmd: Any = wrapper
        for opt in reversed(opts):
            cmd = opt(cmd)
        return cast(F, cmd)

    return decorate
