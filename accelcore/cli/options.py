"""Plumbing every accelctl command shares: state, ``--json``, device selection, output.

* :class:`CliState` — the click context object; builds the source lazily, so
  ``version``, ``--help`` and completion stay cheap, and so tests can inject a
  prepared source (``CliRunner().invoke(main, args, obj=CliState(source=...))``).
  Which source: ``--host`` the real host; ``--embedded`` or ``--config`` the
  in-process machine; otherwise the devfs server of the runtime directory when
  one answers there, else the in-process machine.
* :func:`json_option` and :func:`device_argument` — the shared decorators.
* :func:`resolve` — a selector to devices, with accelctl's exit-code rules:
  a malformed selector is a usage error (exit 2), an unmatched one a runtime
  error (exit 1, ``Error: no accel device 'accel9'``).
* :func:`emit` — JSON on stdout, or the human renderer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.shell_completion import CompletionItem

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

    def source(self) -> Source:
        """The source the global options pick (see the module docstring)."""
        if self._source is None:
            if self.mode == "host":
                return self.host_source()
            if self.mode == "auto" and self.config is None and running_server(self.runtime_dir):
                self._source = ServerSource(self.runtime_dir)
            else:
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
    try:
        devices = get_state(ctx).source().devices()
    except Exception:  # completion must never fail loudly
        return []
    items = [CompletionItem("all", help="every device")]
    for d in devices:
        label = f"{d.driver or '?'} {d.status}"
        items.append(CompletionItem(d.name, help=label))
        if d.pci_address:
            items.append(CompletionItem(d.pci_address, help=d.name))
        if d.node:
            items.append(CompletionItem(d.node, help=d.name))
    return [i for i in items if i.value.startswith(incomplete)]


def device_argument(*, required: bool) -> Callable[[F], F]:
    """The ``DEVICE`` selector argument (default: ``$ACCEL_DEVICE``, else ``all``
    when not required)."""
    extra: dict[str, Any] = {} if required else {"default": "all"}
    return click.argument(
        "device", required=required, envvar=ENV_VAR, shell_complete=complete_devices, **extra
    )


def resolve(ctx: click.Context, text: str, source: Source | None = None) -> list[DeviceSummary]:
    """The devices selector ``text`` picks on ``source`` (the embedded one by default).

    Raises:
        click.BadParameter: malformed selector (exit 2).
        click.ClickException: no device matches (exit 1).
    """
    src = source if source is not None else get_state(ctx).source()
    try:
        return select(src.devices(), text)
    except SelectorSyntaxError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param_hint="DEVICE") from None
    except NoDeviceError as exc:
        raise click.ClickException(str(exc)) from None


def resolve_one(ctx: click.Context, text: str) -> DeviceSummary:
    """Like :func:`resolve`, for commands that act on exactly one device.

    Raises:
        click.UsageError: the selector picks several devices (exit 2).
    """
    found = resolve(ctx, text)
    if len(found) != 1:
        names = ", ".join(d.name for d in found)
        raise click.UsageError(
            f"{ctx.info_name} needs one device; {text!r} selects {names}", ctx=ctx
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
