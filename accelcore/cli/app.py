"""The ``accelctl`` click group: global options, error policy, and the commands.

Exit codes: :class:`~accelcore.cli.exitcodes.ExitCode` (0 success, 2 invalid
argument, 4 no permission, 6 not found, 9 no server, 10 busy or in reset...);
a failure is one line ``Error: <message>`` on stderr, never a traceback. Output
to a closed pipe (``accelctl list | head -1``) ends quietly with 0; on a
stdout that cannot encode Unicode, what it cannot encode degrades to ``?``.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..server.daemon import ServerUnavailable
from .cmd_activity import dmabuf_cmd, monitor_cmd, ps_cmd, top_cmd
from .cmd_admin import demo_cmd, reset_cmd, version_cmd
from .cmd_devices import attrs_cmd, info_cmd, list_cmd, summary_cmd, topology_cmd
from .cmd_run import run_cmd
from .cmd_sim import sim_group
from .exitcodes import AccelctlError, ExitCode, NoServerError, exit_code_of
from .options import CliState, source_mode
from .selectors import NoDeviceError
from .sources import SourceError

__all__ = ["main"]


class AccelGroup(click.Group):
    """A group that turns accelcore's errors into one-line click errors with their
    :class:`ExitCode`, and a closed output pipe into a quiet exit 0."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return result
        except BrokenPipeError as exc:
            if not _stdout_broken():  # a socket's pipe (the server went away), not ours
                raise AccelctlError(_one_line(exc), ExitCode.NO_SERVER) from None
            _silence_stdout()
            raise click.exceptions.Exit(0) from None
        except SourceError as exc:
            raise AccelctlError(str(exc), exc.code) from None
        except NoDeviceError as exc:
            raise AccelctlError(str(exc), ExitCode.NOT_FOUND) from None
        except ServerUnavailable as exc:
            raise NoServerError(exc.strerror or str(exc)) from None
        except OSError as exc:  # AccelError and the builtin ones alike: by errno
            raise AccelctlError(_one_line(exc), exit_code_of(exc)) from None


def _one_line(exc: OSError) -> str:
    msg = exc.strerror or str(exc)
    if exc.filename is not None and str(exc.filename) not in msg:
        msg = f"{exc.filename}: {msg}"
    return msg


def _stdout_broken() -> bool:
    """Whether stdout is a pipe whose reader has gone (``POLLERR`` on its end)."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):
        return False  # not a real descriptor (CliRunner): it cannot break
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush cannot fail."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):
        return  # not a real descriptor (CliRunner): nothing is flushed at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _degrade_streams() -> None:
    """On a stdout/stderr that cannot encode Unicode, replace what it cannot encode."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        reconfigure = getattr(stream, "reconfigure", None)
        if not encoding.startswith("utf") and reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="replace")


@click.group(
    cls=AccelGroup,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
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

    Without a command, a summary of the devices. Devices are those of the devfs
    server running in the runtime directory (accelctl sim start). Without one,
    read-only commands answer from a throwaway embedded machine (and say so on
    stderr) and commands that change or watch state refuse (exit 9) unless
    --embedded (or --config) asks for the embedded machine; --host reads the
    real host. Every command takes --json; its schema is in accelcore.cli.schema.

    Exit codes: 0 ok, 1 other error, 2 invalid argument, 3 not supported,
    4 no permission, 6 not found, 9 no server, 10 busy or in reset, 15 device gone.
    """
    _degrade_streams()
    state = ctx.ensure_object(CliState)
    if config is not None:
        state.config = config
    if runtime_dir is not None:
        state.runtime_dir = runtime_dir
    mode = source_mode(embedded, host)
    if mode != "auto":
        state.mode = mode
    ctx.call_on_close(state.close)
    if ctx.invoked_subcommand is None:
        ctx.invoke(summary_cmd)


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
    summary_cmd,
):
    _dev = next((p for p in _cmd.params if p.name == "device"), None)
    if _dev is not None:
        _cmd.epilog = SELECTOR_HELP + (
            " Default: $ACCEL_DEVICE." if _dev.envvar else " No default: name the device."
        )
    main.add_command(_cmd)
