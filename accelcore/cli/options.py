"""Plumbing every accelctl command shares: state, ``--json``, device selection, output.

* :class:`CliState` — the click context object; builds the source lazily, so
  ``version``, ``--help`` and completion stay cheap, and so tests can inject a
  prepared source (``CliRunner().invoke(main, args, obj=CliState(source=...))``).
  Which source: ``--host`` the real host; ``--embedded`` or ``--config`` the
  in-process machine; otherwise the devfs server of the runtime directory.
  When no server answers there, a read-only command answers from a throwaway
  in-process machine and says so in one line on stderr (naming the runtime
  directory); a command that changes or watches state (``reset``, attribute
  writes, ``monitor``, ``ps``, ``top``) refuses with exit code
  :attr:`~accelcore.cli.exitcodes.ExitCode.NO_SERVER` unless ``--embedded``
  is given: it never acts on a machine that vanishes when it exits.
* :func:`json_option` and :func:`device_argument` — the shared decorators.
* :func:`resolve` — a selector to devices, with accelctl's exit-code rules:
  a malformed selector is a usage error (exit 2), an unmatched one a runtime
  error (exit 1, ``Error: no accel device 'accel9'``).
* :func:`emit` — JSON on stdout, or the human renderer.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import click
from click.shell_completion import CompletionItem

from ..server.server import default_runtime_dir
from .exitcodes import AccelctlError, ExitCode, NoServerError
from .model import DeviceSummary
from .selectors import ENV_VAR, NoDeviceError, SelectorSyntaxError, select
from .server_source import ServerSource, running_server
from .sources import EmbeddedSource, HostSource, Source

__all__ = [
    "CliState",
    "complete_devices",
    "device_argument",
    "emit",
    "emit_line",
    "get_state",
    "json_option",
    "resolve",
    "resolve_one",
    "source_mode",
    "split_selectors",
]

F = TypeVar("F", bound=Callable[..., Any])


class CliState:
    """What the commands of one accelctl run share.

    Args:
        config: A TOML machine description for the embedded source (``--config``).
        source: A ready source (tests); otherwise one is built on first use.
        runtime_dir: Where to look for a devfs server (``None``: the server's default,
            which honours ``$ACCEL_RUNTIME_DIR``).
        mode: ``"auto"`` (a running server, else embedded), ``"embedded"`` or ``"host"``.
    """

    def __init__(
        self,
        config: Path | None = None,
        source: Source | None = None,
        runtime_dir: Path | None = None,
        mode: str = "auto",
    ) -> None:
        self.config = config
        self.runtime_dir = runtime_dir
        self.mode = mode
        self._source = source
        self._host: Source | None = None
        self._owned: list[Source] = []

    def source(self, *, changes: str | None = None, quiet: bool = False) -> Source:
        """The source the global options pick (see the module docstring).

        Args:
            changes: What the command changes or watches (``"reset"``...), when it
                does: without a server it then refuses rather than act on a
                throwaway machine.
            quiet: Do not note the throwaway machine on stderr (shell completion).

        Raises:
            NoServerError: ``changes`` is given, no server answers and neither
                ``--embedded`` nor ``--config`` was given.
        """
        if self._source is None:
            if self.mode == "host":
                return self.host_source()
            if self.mode == "auto" and self.config is None:
                rt = self.runtime_dir if self.runtime_dir is not None else default_runtime_dir()
                if running_server(rt):
                    self._source = ServerSource(rt)
                elif changes is not None:
                    raise NoServerError(
                        f"no devfs server at {rt}: {changes} needs one (start it with "
                        "'accelctl sim start', or give --embedded for a throwaway "
                        "in-process machine)"
                    )
                elif not quiet:
                    click.echo(
                        f"accelctl: no devfs server at {rt}: answering from a throwaway "
                        "embedded machine (--embedded to ask for it)",
                        err=True,
                    )
            if self._source is None:
                self._source = EmbeddedSource.from_config(self.config)
            self._owned.append(self._source)
        return self._source

    def host_source(self) -> Source:
        """The real host, read through pyudev."""
        if self._host is None:
            self._host = HostSource()
        return self._host

    def close(self) -> None:
        """Shut down the sources this state built (not injected ones)."""
        for src in self._owned:
            src.close()
        self._owned.clear()


def get_state(ctx: click.Context) -> CliState:
    """The run's :class:`CliState` (made from the root's params when missing, as
    during shell completion, where group callbacks do not run)."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState(
            config=root.params.get("config"),
            runtime_dir=root.params.get("runtime_dir"),
            mode=source_mode(bool(root.params.get("embedded")), bool(root.params.get("host"))),
        )
    return root.obj


def source_mode(embedded: bool, host: bool) -> str:
    """The :class:`CliState` mode of the ``--embedded``/``--host`` flags.

    Raises:
        click.UsageError: both were given.
    """
    if embedded and host:
        raise click.UsageError("--embedded and --host exclude each other")
    return "host" if host else "embedded" if embedded else "auto"


def json_option(f: F) -> F:
    """``--json``: print the command's model as JSON (see :mod:`accelcore.cli.schema`)."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print JSON (the stable interface; schema in accelcore.cli.schema).",
    )(f)


def complete_devices(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Shell completion of selectors: ``all``, device names, nodes and PCI addresses."""
    state = get_state(ctx)
    try:
        devices = state.source(quiet=True).devices()
    except Exception:  # completion must never fail loudly
        return []
    finally:
        state.close()  # no group callback closes it during completion
    items = [CompletionItem("all", help="every device")]
    for d in devices:
        label = f"{d.driver or '?'} {d.status}"
        items.append(CompletionItem(d.name, help=label))
        if d.pci_address:
            items.append(CompletionItem(d.pci_address, help=d.name))
        if d.node:
            items.append(CompletionItem(d.node, help=d.name))
    return [i for i in items if i.value.startswith(incomplete)]


def split_selectors(values: Sequence[str]) -> list[str]:
    """Selectors from repeated arguments and comma lists: ``("0,1", "accel3")`` is
    ``["0", "1", "accel3"]``; a ``pci:`` filter keeps its own commas."""
    out: list[str] = []
    for value in values:
        if value.startswith("pci:"):
            out.append(value)
        else:
            out += [v for v in (x.strip() for x in value.split(",")) if v]
    return out


def device_argument(*, required: bool) -> Callable[[F], F]:
    """``[DEVICE]...`` and ``-i/--id DEVICE[,DEVICE...]`` (repeatable): the devices a
    command acts on, passed to it as the tuple ``device`` of selectors (default:
    ``$ACCEL_DEVICE``, else ``all`` when not required)."""

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, device: tuple[str, ...], ids: tuple[str, ...], **kw: Any) -> Any:
            selectors = tuple(split_selectors([*device, *ids]))
            if not selectors:
                if required:
                    raise click.UsageError("name a DEVICE (or -i DEVICE)")
                selectors = ("all",)
            return f(*args, device=selectors, **kw)

        cmd = click.option(
            "-i",
            "--id",
            "ids",
            multiple=True,
            metavar="DEVICE[,DEVICE...]",
            help="Devices to act on (as DEVICE arguments; comma lists, repeatable).",
        )(wrapper)
        cmd = click.argument("device", nargs=-1, envvar=ENV_VAR, shell_complete=complete_devices)(
            cmd
        )
        return cast(F, cmd)

    return decorate


def resolve(
    ctx: click.Context, text: str | Sequence[str], source: Source | None = None
) -> list[DeviceSummary]:
    """The devices selectors ``text`` pick on ``source`` (the run's by default), in
    order, each once.

    Raises:
        click.BadParameter: malformed selector (exit 2).
        AccelctlError: a selector matches nothing (exit 6, not found).
    """
    src = source if source is not None else get_state(ctx).source()
    devices = src.devices()
    found: dict[str, DeviceSummary] = {}
    for one in [text] if isinstance(text, str) else text:
        try:
            for d in select(devices, one):
                found.setdefault(d.name, d)
        except SelectorSyntaxError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param_hint="DEVICE") from None
        except NoDeviceError as exc:
            raise AccelctlError(str(exc), ExitCode.NOT_FOUND) from None
    return list(found.values())


def resolve_one(ctx: click.Context, text: str | Sequence[str]) -> DeviceSummary:
    """Like :func:`resolve`, for commands that act on exactly one device.

    Raises:
        click.UsageError: the selectors pick several devices (exit 2).
    """
    found = resolve(ctx, text)
    if len(found) != 1:
        names = ", ".join(d.name for d in found)
        shown = text if isinstance(text, str) else ",".join(text)
        raise click.UsageError(
            f"{ctx.info_name} needs one device; {shown!r} selects {names}", ctx=ctx
        )
    return found[0]


def emit(data: dict[str, Any], as_json: bool, human: Callable[[], None]) -> None:
    """Print ``data`` as JSON, or call the human renderer."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=False))
    else:
        human()


def emit_line(data: dict[str, Any]) -> None:
    """Print one compact JSON document on its own line (streaming commands)."""
    click.echo(json.dumps(data, separators=(",", ":")))
    sys.stdout.flush()  # a reader of the stream sees each line as it comes
