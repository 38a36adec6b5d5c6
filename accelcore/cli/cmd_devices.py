"""Device commands: the summary (``accelctl`` alone), ``list``, ``info``, ``attrs``,
``topology``."""

from __future__ import annotations

from typing import Any

import click

from .. import __version__
from . import render
from .model import to_json
from .options import (
    device_argument,
    emit,
    get_state,
    json_option,
    resolve,
    resolve_one,
)
from .output import Field, Output, Sample, output_options

__all__ = ["attrs_cmd", "info_cmd", "list_cmd", "summary_cmd", "topology_cmd"]


def _get(*path: str) -> Any:
    def get(row: dict[str, Any]) -> Any:
        value: Any = row
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    return get


LIST_FIELDS = [
    Field("name", None, "device name (accelN)", _get("name")),
    Field("minor", None, "minor number", _get("minor")),
    Field("uuid", None, "stable device identifier (sysfs unique_id)", _get("uuid")),
    Field("node", None, "device node", _get("node")),
    Field("driver", None, "driver name", _get("driver")),
    Field("pci.bus_id", None, "PCI address", _get("pci_address")),
    Field("pci.vendor", None, "PCI vendor id (decimal)", _get("vendor")),
    Field("pci.device", None, "PCI device id (decimal)", _get("device")),
    Field("status", None, "operational, in_reset, needs_reset...", _get("status")),
    Field("owner.pid", None, "pid of the compute owner", _get("owner_pid")),
    Field("open_count", None, "open files", _get("open_count")),
    Field("source", None, "sim, server or host", _get("source")),
]


@click.command("list")
@device_argument(required=False)
@click.option(
    "--host", is_flag=True, help="List the real host's devices (pyudev), not the simulator's."
)
@output_options(LIST_FIELDS)
@click.pass_context
def list_cmd(ctx: click.Context, device: tuple[str, ...], host: bool, out: Output) -> None:
    """List accel devices (all, or those DEVICE selects)."""
    state = get_state(ctx)
    source = state.host_source() if host else state.source()

    def sample() -> Sample:
        devices = [to_json(d) for d in resolve(ctx, device, source)]
        return Sample({"devices": devices}, devices, lambda: render.render_devices(devices))

    out.run(sample, source.tick)


def _info_row(info: dict[str, Any]) -> dict[str, Any]:
    engines = info["engines"]
    return {
        **info,
        "memory_total_bytes": sum(m["total_bytes"] for m in info["memory"]),
        "memory_used_bytes": sum(m["used_bytes"] for m in info["memory"]),
        "engines_busy": sum(1 for e in engines if e["busy"]),
    }


INFO_FIELDS = [
    Field("name", None, "device name (accelN)", _get("name")),
    Field("uuid", None, "stable device identifier (sysfs unique_id)", _get("uuid")),
    Field("driver", None, "driver name", _get("identity", "driver")),
    Field("driver_version", None, "driver version", _get("identity", "version")),
    Field("pci.bus_id", None, "bus address, or virtual", _get("identity", "bus_id")),
    Field("status", None, "operational, in_reset, needs_reset...", _get("status", "status")),
    Field("tainted", None, "an oops happened", _get("status", "tainted")),
    Field("reset_count", None, "resets so far", _get("status", "reset_count")),
    Field("ownership", None, "free, owned or pinned", _get("ownership", "state")),
    Field("owner.pid", None, "pid of the compute owner", _get("ownership", "owner_pid")),
    Field("clients", None, "open files of other processes", _get("status", "open_count")),
    Field("memory.total", "B", "device memory, all regions", _get("memory_total_bytes")),
    Field("memory.used", "B", "device memory in use, all regions", _get("memory_used_bytes")),
    Field("engines.busy", None, "engines busy now", _get("engines_busy")),
]


@click.command("info")
@device_argument(required=True)
@output_options(INFO_FIELDS)
@click.pass_context
def info_cmd(ctx: click.Context, device: tuple[str, ...], out: Output) -> None:
    """Identity, status, owner, clients, memory and engines, through the INFO ioctl."""
    source = get_state(ctx).source()

    def sample() -> Sample:
        infos = [to_json(source.info(d.name)) for d in resolve(ctx, device)]

        def human() -> None:
            for i, info in enumerate(infos):
                if i:
                    click.echo()
                render.render_info(info)

        return Sample({"devices": infos}, [_info_row(i) for i in infos], human)

    out.run(sample, source.tick)


@click.command("summary", hidden=True)
@json_option
@click.pass_context
def summary_cmd(ctx: click.Context, as_json: bool = False) -> None:
    """A summary of every device (what ``accelctl`` alone prints, as nvidia-smi does)."""
    source = get_state(ctx).source()
    infos = [to_json(source.info(d.name)) for d in source.devices()]
    data = {
        "accelctl": __version__,
        "source": source.kind,
        "devices": [_info_row(i) for i in infos],
    }
    emit(data, as_json, lambda: render.render_summary(data))


@click.command("attrs")
@device_argument(required=True)
@click.option("-a", "--attribute", "name", default=None, help="Only this attribute.")
@click.option(
    "-w",
    "--write",
    "value",
    default=None,
    help="Store this value into --attribute (needs a server, or --embedded).",
)
@json_option
@click.pass_context
def attrs_cmd(
    ctx: click.Context,
    device: tuple[str, ...],
    name: str | None,
    value: str | None,
    as_json: bool,
) -> None:
    """sysfs attributes: the walk from DEVICE up to its PCI parent (udevadm info -a).

    With -a NAME, only that attribute; with -a NAME -w VALUE, store VALUE into
    it (on the device, or on the nearest parent that has it). The older form
    'attrs DEVICE NAME [VALUE]' still works.
    """
    # ``attrs accel0 NAME VALUE``: the positional form predates -a/-w.
    sel = list(device)
    if name is None and len(sel) >= 2 and not _looks_like_selector(sel[1]):
        name = sel[1]
        if len(sel) >= 3 and value is None:
            value = sel[2]
        sel = sel[:1]
    if value is not None and name is None:
        raise click.UsageError("--write needs --attribute NAME")
    source = get_state(ctx).source(changes="writing attributes" if value is not None else None)
    dev = resolve_one(ctx, tuple(sel))
    if name is not None and value is not None:
        devpath = source.store_attr(dev.name, name, value)
        data = {"device": dev.name, "devpath": devpath, "attribute": name, "value": value}
        emit(data, as_json, lambda: click.echo(f"{devpath}/{name} <- {value!r}"))
        return
    levels = [to_json(lvl) for lvl in source.attrs(dev.name)]
    if name is not None:
        for lvl in levels:
            lvl["attributes"] = [a for a in lvl["attributes"] if a["name"] == name]
        levels = [lvl for lvl in levels if lvl["attributes"]]
        if not levels:
            from .exitcodes import AccelctlError, ExitCode

            raise AccelctlError(
                f"no attribute {name!r} on {dev.name} or its parents", ExitCode.NOT_FOUND
            )
    emit({"device": dev.name, "levels": levels}, as_json, lambda: render.render_attrs(levels))


def _looks_like_selector(text: str) -> bool:
    from .selectors import SelectorSyntaxError, parse_selector

    if text == "all" or text.startswith(("accel", "/dev/", "sys:", "pci:")):
        return True
    try:
        parse_selector(text)
    except SelectorSyntaxError:
        return False
    return text.isdigit() or ":" in text


@click.command("topology")
@json_option
@click.pass_context
def topology_cmd(ctx: click.Context, as_json: bool) -> None:
    """The PCI tree with the accel nodes bound below each function."""
    topo = to_json(get_state(ctx).source().topology())
    emit(topo, as_json, lambda: render.render_topology(topo))
