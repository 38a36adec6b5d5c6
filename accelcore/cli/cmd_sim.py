"""``accelctl sim start|stop|status``: a simulated machine served in the background.

``sim start`` runs the devfs server (``python -m accelcore.server``) detached and
returns once it serves; while it runs, the other commands read it by default.
The runtime directory is ``--runtime-dir``, else ``$ACCEL_RUNTIME_DIR``, else the
server's default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import click

from ..errors import AccelError
from ..server.daemon import control_request, server_status, spawn_server, stop_server
from ..server.limits import ServerLimits
from ..server.server import default_runtime_dir
from .exitcodes import AccelctlError, ExitCode, NoServerError, exit_code_of
from .options import emit, get_state, json_option

__all__ = ["sim_group"]

#: Seconds ``sim start`` waits for the server to serve (imports and machine build).
START_TIMEOUT = 30.0


def _runtime_dir(ctx: click.Context, given: Path | None) -> Path:
    if given is not None:
        return given
    state_dir = get_state(ctx).runtime_dir
    return state_dir if state_dir is not None else default_runtime_dir()


def _devices(rt: Path) -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = control_request("devices", rt)
    return [
        {
            "name": d["name"],
            "driver": d["driver"],
            "bus_id": d["bus_id"],
            "node": d["node"],
            "status": d["status"],
            "socket": d["socket"],
        }
        for d in devices
    ]


def _render_devices(devices: list[dict[str, Any]]) -> None:
    for d in devices:
        click.echo(f"  {d['name']:<8} {d['driver']:<12} {d['bus_id']:<13} {d['node']}")


runtime_dir_option = click.option(
    "--runtime-dir",
    "runtime_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the server's sockets go [default: accelctl's --runtime-dir, "
    "$ACCEL_RUNTIME_DIR, else the server's default].",
)


#: What each cap's option says in ``sim start --help`` (the errno when it is hit).
_CAP_HELP = {
    "sessions_per_client": "Control connections per client process (EMFILE past it)",
    "sessions_per_uid": "Control connections per uid (EMFILE)",
    "files_per_client": "Open files the server holds for one client process (EMFILE)",
    "files_per_uid": "Open files the server holds for one uid (EMFILE)",
    "arenas_per_client": "User-memory arenas per client process (ENOMEM)",
    "address_space_per_client": "Bytes of client memory the server maps per process (ENOMEM)",
    "address_space_per_uid": "Bytes of client memory the server maps per uid (ENOMEM)",
    "mappings_per_client": "Live mmaps per client process (ENOMEM)",
    "buffers_per_client": "Buffers one client process's calls allocated (ENOMEM)",
    "buffers_per_uid": "Buffers the calls of one uid allocated (ENOMEM)",
    "buffer_bytes_per_client": "Bytes of buffers per client process (ENOMEM)",
    "buffer_bytes_per_uid": "Bytes of buffers per uid (ENOMEM)",
    "uevent_queue": "Uevents queued for a monitor that does not read, then an "
    "overflow marker (ENOBUFS)",
    "hello_timeout": "Seconds a new connection may take to send its first record",
}


def limit_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One ``--max-…`` option per :class:`~accelcore.server.limits.ServerLimits` cap."""
    for f in reversed(fields(ServerLimits)):
        fn = click.option(
            ServerLimits.option_name(f.name),
            f"limit_{f.name}",
            type=click.FloatRange(min=0.1) if f.type == "float" else click.IntRange(min=1),
            default=None,
            help=f"{_CAP_HELP[f.name]} [default: {f.default}].",
        )(fn)
    return fn


@click.group("sim")
def sim_group() -> None:
    """Run a simulated machine in the background (the devfs server)."""


@sim_group.command("start")
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Machine description (TOML/JSON) [default: accelctl's --config, else the "
    "built-in machine].",
)
@runtime_dir_option
@limit_options
@json_option
@click.pass_context
def sim_start_cmd(
    ctx: click.Context,
    /,
    config: Path | None,
    runtime_dir: Path | None,
    as_json: bool,
    **caps: Any,
) -> None:
    """Start the server and wait until it serves; print its directory and devices.

    The --max-… options cap what one client process, or one uid, may make the
    server hold (see the guide's "limits and privileges" table).
    """
    rt = _runtime_dir(ctx, runtime_dir)
    limits = ServerLimits(
        **{
            name[len("limit_") :]: value
            for name, value in caps.items()
            if name.startswith("limit_") and value is not None
        }
    )
    cfg = config if config is not None else get_state(ctx).config
    running = server_status(rt)
    if running is not None:
        raise click.ClickException(
            f"a devfs server already runs at {rt} (pid {running['pid']}); "
            "stop it with 'accelctl sim stop'"
        )
    try:
        pid = spawn_server(cfg, rt, timeout=START_TIMEOUT, limits=limits)
    except AccelError as exc:
        # The message may carry the log's tail; the error stays one line.
        first = (exc.strerror or str(exc)).splitlines()[0]
        raise AccelctlError(f"{first} (log: {rt / 'server.log'})", exit_code_of(exc)) from None
    except OSError as exc:  # the directory itself: name it, whatever the OS names
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(rt) else ""
        raise AccelctlError(
            f"runtime directory {rt}{where}: {exc.strerror or exc}", exit_code_of(exc)
        ) from None
    devices = _devices(rt)
    data = {"pid": pid, "runtime_dir": str(rt), "devices": devices}

    def human() -> None:
        click.echo(f"devfs server pid {pid} serving {len(devices)} device(s) in {rt}")
        _render_devices(devices)
        click.echo(f"(other shells: export ACCEL_RUNTIME_DIR={rt})")

    emit(data, as_json, human)


@sim_group.command("stop")
@runtime_dir_option
@json_option
@click.pass_context
def sim_stop_cmd(ctx: click.Context, runtime_dir: Path | None, as_json: bool) -> None:
    """Stop the server (its clients' files are released); exit 9 if none runs."""
    rt = _runtime_dir(ctx, runtime_dir)
    status = server_status(rt)
    if status is None or not stop_server(rt):
        raise NoServerError(f"no devfs server at {rt}")
    data = {"pid": int(status["pid"]), "runtime_dir": str(rt), "stopped": True}
    emit(data, as_json, lambda: click.echo(f"stopped devfs server pid {data['pid']} at {rt}"))


@sim_group.command("status")
@runtime_dir_option
@json_option
@click.pass_context
def sim_status_cmd(ctx: click.Context, runtime_dir: Path | None, as_json: bool) -> None:
    """Whether a server runs, with its machine and devices; exit 9 if none runs."""
    rt = _runtime_dir(ctx, runtime_dir)
    status = server_status(rt)
    data: dict[str, Any] = {"running": status is not None, "runtime_dir": str(rt)}
    if status is not None:
        data.update(
            {
                "pid": status["pid"],
                "version": status["version"],
                "protocol": status["protocol"],
                "clock": status["clock"],
                "sessions": status["sessions"],
                "open_files": status["open_files"],
                "machine": status["machine"],
                "accounting": status["accounting"],
                "devices": _devices(rt),
            }
        )

    def human() -> None:
        if status is None:
            click.echo(f"no devfs server at {rt}")
            return
        click.echo(
            f"devfs server pid {data['pid']} at {rt}: accelcore {data['version']}, "
            f"{data['clock']}, {data['sessions']} session(s), {data['open_files']} open file(s)"
        )
        _render_devices(data["devices"])

    emit(data, as_json, human)
    if status is None:
        ctx.exit(ExitCode.NO_SERVER)
