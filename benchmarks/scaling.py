"""Costs that must not grow with other users: INFO CLIENTS asked for one entry
with 1,000 open files on the device vs with one (issue 21, item 4)."""

from __future__ import annotations

from collections.abc import Callable

from accelcore import CORE, Process, Subsystem, VirtualClock
from accelcore.testing import VAccelDriver

from .harness import Figure, compare, ratio_figure

__all__ = ["info_clients_one_entry"]

#: Open files on the crowded device.
FILES = 1000


def _device(files: int) -> tuple[Process, Callable[[], object]]:
    """A vaccel device with ``files`` open files; returns an INFO CLIENTS caller
    whose buffer takes exactly one entry."""
    sub = Subsystem(VirtualClock())
    drv = VAccelDriver()
    sub.register_driver(drv)
    sub.create_device(drv)
    proc = Process(sub)
    fds = [proc.open("/dev/accel/accel0") for _ in range(files)]
    size = CORE.sizeof("struct accel_info_client")
    out = proc.alloc(size)
    args = proc.alloc(64)
    info = CORE.new(
        "struct accel_info", op=CORE.ACCEL_INFO_CLIENTS, return_pointer=out.addr, return_size=size
    )
    proc.task.mm.copy_to_user(args.addr, CORE.to_bytes(info))
    task, file, cmd = proc.task, proc.task.files.get(fds[0]), CORE.ACCEL_IOCTL_INFO
    return proc, lambda: file.ioctl(task, cmd, args.addr)


def info_clients_one_entry(quick: bool) -> list[Figure]:
    """INFO CLIENTS for one entry: 1,000 files on the device vs 1 (target <= 2x)."""
    loops = 5_000 if quick else 20_000
    crowded, ask_crowded = _device(FILES)
    lone, ask_lone = _device(1)
    value, base = compare(ask_crowded, ask_lone, loops)
    crowded.exit()
    lone.exit()
    return [
        ratio_figure(
            "info_clients_1_of_1000",
            value,
            base,
            "ns/call",
            2.0,
            note=f"baseline: the same call with 1 open file; {FILES} files, 1 entry asked",
        )
    ]


SUITES: list[Callable[[bool], list[Figure]]] = [info_clients_one_entry]
