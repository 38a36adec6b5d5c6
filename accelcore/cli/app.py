"""The ``accelctl`` click group: global options, error policy, and the commands.

Exit codes: 0 success; 1 a runtime error, printed as one line
``Error: <message>`` on stderr (never a traceback); 2 a usage error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..errors import AccelError
from .cmd_activity import dmabuf_cmd, monitor_cmd, ps_cmd, top_cmd
from .cmd_admin import demo_cmd, reset_cmd, version_cmd
from .cmd_devices import attrs_cmd, info_cmd, list_cmd, topology_cmd
from .cmd_run import run_cmd
from .cmd_sim import sim_group
from .options import CliState, source_mode
from .selectors import NoDeviceError
from .sources import SourceError

__all__ = ["main"]


class AccelGroup(click.Group):
    """A group that turns accelcore's errors into one-line click errors (exit 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (SourceError, NoDeviceError) as exc:
            raise click.ClickException(str(exc)) from None
        except AccelError as exc:
            raise click.ClickException(exc.strerror or str(exc)) from None
        except OSError as exc:
            raise click.ClickException(exc.strerror or str(exc)) from None


@click.group(cls=AccelGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A TOML machine description for the simulator (default: the built-in machine).",
)
@click.option(
    "--runtime-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="ACCEL_RUNTIME_DIR",
    default=None,
    help="The devfs server's runtime directory [env: ACCEL_RUNTIME_DIR; default: the "
    "server's, $XDG_RUNTIME_DIR/accelcore].",
)
@click.option("--embedded", is_flag=True, help="Use an in-process machine even if a server runs.")
@click.option("--host", is_flag=True, help="Read the real host (pyudev), read-only.")
@click.version_option(__version__, "-V", "--version", prog_name="accelctl")
@click.pass_context
def main(
    ctx: click.Context, config: Path | None, runtime_dir: Path | None, embedded: bool, host: bool
) -> None:
    """accelctl: list, inspect, monitor and reset accel devices.

    Devices are those of the devfs server running in the runtime directory
    (accelctl sim start) when there is one, else of an embedded simulated
    machine (--embedded forces it, and so does --config); --host reads the real
    host. Every command takes --json; its schema is in accelcore.cli.schema.
    """
    state = ctx.ensure_object(CliState)
    if config is not None:
        state.config = config
    if runtime_dir is not None:
        state.runtime_dir = runtime_dir
    mode = source_mode(embedded, host)
    if mode != "auto":
        state.mode = mode
    ctx.call_on_close(state.close)


#: The selector grammar, shown under every command that takes DEVICE.
SELECTOR_HELP = (
    "DEVICE selects: accelN | N (minor) | /dev/accel/accelN | a PCI address "
    "(0000:00:10.0 or 00:10.0) | pci:vendor=0x..,device=0x..[,card=N][,slot=ADDR] | all."
)

for _cmd in (
    list_cmd,
    info_cmd,
    attrs_cmd,
    topology_cmd,
    ps_cmd,
    top_cmd,
    monitor_cmd,
    dmabuf_cmd,
    reset_cmd,
    version_cmd,
    demo_cmd,
    sim_group,
    run_cmd,
):
    _dev = next((p for p in _cmd.params if p.name == "device"), None)
    if _dev is not None:
        _cmd.epilog = SELECTOR_HELP + (
            " Default: $ACCEL_DEVICE." if _dev.envvar else " No default: name the device."
        )
    main.add_command(_cmd)
