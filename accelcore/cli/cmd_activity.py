"""Activity commands: ``ps``, ``top``, ``monitor``, ``dmabuf``."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from . import render
from .model import DeviceInfo, fdinfo_engine_time_ns, fdinfo_memory, to_json
from .options import device_argument, emit, emit_line, get_state, json_option, resolve
from .output import Field, Output, Sample, output_options
from .records import FileRecord

__all__ = ["dmabuf_cmd", "monitor_cmd", "ps_cmd", "top_cmd"]


def _file_row(f: FileRecord) -> dict[str, Any]:
    """``ps``'s JSON of one open file: the record, and its memory by fdinfo region
    (every ``drm-<kind>-<region>`` key) and engine time summed."""
    row: dict[str, Any] = to_json(f)
    regions = fdinfo_memory(f.fdinfo)
    row["memory"] = regions
    row["memory_total_bytes"] = sum(r.get("total", 0) for r in regions.values())
    row["memory_resident_bytes"] = sum(r.get("resident", 0) for r in regions.values())
    row["engine_time_ns"] = fdinfo_engine_time_ns(f.fdinfo)
    return row


PS_FIELDS = [
    Field("device", None, "device name (accelN)", lambda r: r["device"]),
    Field("pid", None, "pid of the process that opened the file", lambda r: r["pid"]),
    Field("comm", None, "its command name", lambda r: r["comm"]),
    Field("uid", None, "its uid", lambda r: r["uid"]),
    Field("client_id", None, "drm-client-id", lambda r: r["client_id"]),
    Field("owner", None, "whether it owns the compute context", lambda r: r["owner"]),
    Field(
        "memory.total", "B", "sum of every drm-total-<region>", lambda r: r["memory_total_bytes"]
    ),
    Field(
        "memory.resident",
        "B",
        "sum of every drm-resident-<region>",
        lambda r: r["memory_resident_bytes"],
    ),
    Field("engine_time", "ns", "sum of every drm-engine-<engine>", lambda r: r["engine_time_ns"]),
]


@click.command("ps")
@device_argument(required=False)
@output_options(PS_FIELDS)
@click.pass_context
def ps_cmd(ctx: click.Context, device: tuple[str, ...], out: Output) -> None:
    """Processes holding accel devices, with each open file's fdinfo.

    Memory is every drm-total-<region> and drm-resident-<region> fdinfo key
    (regions are the driver's: vram, dram...), summed and by region. Without a
    server, run with --embedded: the processes of a throwaway machine are none.
    """
    source = get_state(ctx).source(changes="ps")

    def sample() -> Sample:
        names = {d.name for d in resolve(ctx, device, source)}
        files = [_file_row(f) for f in source.files() if f.device in names]
        return Sample({"files": files}, files, lambda: render.render_files(files))

    out.run(sample, source.tick)


@click.command("dmabuf")
@json_option
@click.pass_context
def dmabuf_cmd(ctx: click.Context, as_json: bool) -> None:
    """Live dma-bufs (debugfs dma_buf/bufinfo), with the processes holding them."""
    buffers = [to_json(b) for b in get_state(ctx).source().dmabufs()]
    total = sum(b["size"] for b in buffers)
    emit(
        {"buffers": buffers, "total_size": total},
        as_json,
        lambda: render.render_buffers(buffers, total),
    )


def _top_device(info: DeviceInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "status": info.status.status,
        "owner_pid": info.ownership.owner_pid,
        "clients": len(info.clients),
        "memory_used_bytes": sum(m.used_bytes for m in info.memory),
        "memory_total_bytes": sum(m.total_bytes for m in info.memory),
        "memory": [to_json(m) for m in info.memory],
        "engines": [to_json(e) for e in info.engines],
    }


@click.command("top")
@device_argument(required=False)
@click.option(
    "-w",
    "--interval",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes (device time advances as much on a virtual clock).",
)
@click.option(
    "-n",
    "--iterations",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after N refreshes (default: until interrupted).",
)
@json_option
@click.pass_context
def top_cmd(
    ctx: click.Context,
    device: tuple[str, ...],
    interval: float,
    iterations: int | None,
    as_json: bool,
) -> None:
    """Live per-device status, owner, clients, memory and engines (INFO, refreshed).

    With --json, one JSON document per refresh, one per line.
    """
    source = get_state(ctx).source(changes="top")
    clear = not as_json and sys.stdout.isatty()
    n = 0
    try:
        while iterations is None or n < iterations:
            if n:
                time.sleep(interval)
                source.tick(int(interval * 1e9))
            n += 1
            sample = {
                "iteration": n,
                "timestamp_ns": source.now_ns(),
                "devices": [_top_device(source.info(d.name)) for d in resolve(ctx, device, source)],
            }
            if as_json:
                emit_line(sample)
            else:
                render.render_top(sample, clear)
                sys.stdout.flush()
    except KeyboardInterrupt:
        pass


@click.command("monitor")
@click.option(
    "--trigger",
    is_flag=True,
    help="First synthesize a 'change' uevent per device (udevadm trigger).",
)
@click.option(
    "-n", "--iterations", type=click.IntRange(min=1), default=None, help="Stop after N events."
)
@click.option(
    "-t",
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop after this many seconds (0: only what is already queued).",
)
@click.option("-p", "--property", "show_env", is_flag=True, help="Show every property.")
@click.option("-s", "--subsystem", default=None, help="Only events of this subsystem.")
@json_option
@click.pass_context
def monitor_cmd(
    ctx: click.Context,
    trigger: bool,
    iterations: int | None,
    timeout: float | None,
    show_env: bool,
    subsystem: str | None,
    as_json: bool,
) -> None:
    """Print uevents as they happen (udevadm monitor); JSON: one event per line.

    Exits 9 (no server) with a message when the server goes away.
    """
    source = get_state(ctx).source(changes="monitor")
    stream = source.events()
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = 0
    try:
        if trigger:
            source.trigger()
        while iterations is None or seen < iterations:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ev = stream.get(left)
            if ev is None:
                break
            if subsystem is not None and ev.subsystem != subsystem:
                continue
            seen += 1
            if as_json:
                emit_line(to_json(ev))
                continue
            click.echo(f"KERNEL[{ev.seqnum}] {ev.action:<8} {ev.devpath} ({ev.subsystem})")
            if show_env:
                for key, val in ev.env.items():
                    click.echo(f"{key}={val}")
                click.echo()
    except KeyboardInterrupt:
        pass
    finally:
        stream.close()
