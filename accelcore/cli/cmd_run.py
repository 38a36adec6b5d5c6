"""``accelctl run [--udev] -- PROG ARGS...``: an unmodified native program on the
simulated devices.

The program runs with accelcore's ``LD_PRELOAD`` library (built at first use,
:mod:`accelcore.native.build`), so its ``open`` of ``/dev/accel/accelN``,
``/dev/udmabuf`` or ``/dev/kfd`` reaches the devfs server, and its ``ioctl``,
``mmap``, ``read`` and ``poll`` on them are served there in native client mode.
The server at the runtime directory is joined, or started for the run and stopped
after it. ``--udev`` also runs the program under ``umockdev-run`` with the
machine's sysfs export, so libudev enumerates the same devices.
The exit status is the program's (128 + N when signal N killed it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import click

from ..errors import AccelError
from ..native.build import shim_library
from ..server.daemon import load_config, load_machine, server_status, spawn_server, stop_server
from ..server.server import default_runtime_dir
from ..sysfs_export import umockdev_description
from .options import get_state

__all__ = ["run_cmd"]

#: Seconds to wait for a server this command starts.
START_TIMEOUT = 30.0
#: Puts the preload library first in ``LD_PRELOAD`` inside ``umockdev-run`` (which
#: prepends its own), so device opens reach the server rather than umockdev's files.
_REORDER = 'LD_PRELOAD="$0${LD_PRELOAD:+:$LD_PRELOAD}"; export LD_PRELOAD; exec "$@"'


def _umockdev_file(description: dict[str, object] | None, tmp: Path) -> Path:
    machine = load_machine(load_config(description))
    try:
        text = umockdev_description(machine.sysfs)
    finally:
        machine.shutdown()
    path = tmp / "machine.umockdev"
    path.write_text(text)
    return path


@click.command(
    "run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.option(
    "--udev",
    is_flag=True,
    help="Also run under umockdev-run with the machine's sysfs, so libudev sees its devices.",
)
@click.option(
    "--runtime-dir",
    "runtime_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The server's runtime directory [default: accelctl's --runtime-dir, "
    "$ACCEL_RUNTIME_DIR, else the server's default].",
)
@click.argument("program", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run_cmd(
    ctx: click.Context, udev: bool, runtime_dir: Path | None, program: tuple[str, ...]
) -> None:
    """Run PROGRAM (dynamically linked, unmodified) on the simulated devices.

    Joins the server at the runtime directory, or starts one (from accelctl's
    --config, else the built-in machine) for the run. Exits with PROGRAM's status.
    """
    state = get_state(ctx)
    rt = runtime_dir or state.runtime_dir or default_runtime_dir()
    try:
        lib = shim_library()
    except AccelError as exc:
        raise click.ClickException(str(exc.strerror or exc)) from None
    if udev and shutil.which("umockdev-run") is None:
        raise click.ClickException("--udev needs umockdev-run (apt-get install umockdev)")
    status = server_status(rt)
    started = False
    if status is None:
        try:
            spawn_server(state.config, rt, timeout=START_TIMEOUT)
        except AccelError as exc:
            first = (exc.strerror or str(exc)).splitlines()[0]
            raise click.ClickException(f"{first} (log: {rt / 'server.log'})") from None
        started = True
        status = server_status(rt)
    env = dict(os.environ)
    env["ACCEL_RUNTIME_DIR"] = str(rt)
    argv = list(program)
    try:
        with tempfile.TemporaryDirectory(prefix="accel-run-") as tmp:
            if udev:
                description = status.get("machine") if status else None
                testbed = _umockdev_file(description, Path(tmp))
                argv = [
                    "umockdev-run",
                    "--device",
                    str(testbed),
                    "--",
                    "sh",
                    "-c",
                    _REORDER,
                    str(lib),
                    *argv,
                ]
            else:
                env["LD_PRELOAD"] = ":".join(p for p in (str(lib), env.get("LD_PRELOAD")) if p)
            try:
                code = subprocess.call(argv, env=env)
            except OSError as exc:
                raise click.ClickException(f"cannot run {program[0]}: {exc.strerror}") from None
    finally:
        if started:
            stop_server(rt)
    ctx.exit(128 - code if code < 0 else code)
