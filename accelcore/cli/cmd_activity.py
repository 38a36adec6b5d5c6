"""Activity commands: ``ps``, ``top``, ``monitor``, ``dmabuf``."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from . import render
from .model import DeviceInfo, to_json
from .options import device_argument, emit, emit_line, get_state, json_option, resolve

__all__ = ["dmabuf_cmd", "monitor_cmd", "ps_cmd", "top_cmd"]


@click.command("ps")
@device_argument(required=False)
@json_option
@click.pass_context
def ps_cmd(ctx: click.Context, device: str, as_json: bool) -> None:
    """Processes holding accel devices, with each open file's fdinfo."""
    names = {d.name for d in resolve(ctx, device)}
    files = [to_json(f) for f in get_state(ctx).source().files() if f.device in names]
    emit({"files": files}, as_json, lambda: render.render_files(files))


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
    "-i",
    "--iterations",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after N refreshes (default: until interrupted).",
)
@json_option
@click.pass_context
def top_cmd(
    ctx: click.Context, device: str, interval: float, iterations: int | None, as_json: bool
) -> None:
    """Live per-device status, owner, clients, memory and engines (INFO, refreshed).

    With --json, one JSON document per refresh, one per line.
    """
    source = get_state(ctx).source()
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
                "devices": [_top_device(source.info(d.name)) for d in resolve(ctx, device)],
            }
            if as_json:
                emit_line(sample)
            else:
                render.render_top(sample, clear)
    except KeyboardInterrupt:
        pass


@click.command("monitor")
@click.option(
    "--trigger",
    is_flag=True,
    help="First synthesize a 'change' uevent per device (udevadm trigger).",
)
@click.option(
    "-i", "--iterations", type=click.IntRange(min=1), default=None, help="Stop after N events."
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
    """Print uevents as they happen (udevadm monitor); JSON: one event per line."""
    source = get_state(ctx).source()
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
