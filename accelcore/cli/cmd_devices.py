"""Device commands: ``list``, ``info``, ``attrs``, ``topology``."""

from __future__ import annotations

import click

from . import render
from .model import to_json
from .options import device_argument, emit, get_state, json_option, resolve, resolve_one

__all__ = ["attrs_cmd", "info_cmd", "list_cmd", "topology_cmd"]


@click.command("list")
@device_argument(required=False)
@click.option(
    "--host", is_flag=True, help="List the real host's devices (pyudev), not the simulator's."
)
@json_option
@click.pass_context
def list_cmd(ctx: click.Context, device: str, host: bool, as_json: bool) -> None:
    """List accel devices (all, or those DEVICE selects)."""
    state = get_state(ctx)
    source = state.host_source() if host else state.source()
    devices = [to_json(d) for d in resolve(ctx, device, source)]
    emit({"devices": devices}, as_json, lambda: render.render_devices(devices))


@click.command("info")
@device_argument(required=True)
@json_option
@click.pass_context
def info_cmd(ctx: click.Context, device: str, as_json: bool) -> None:
    """Identity, status, owner, clients, memory and engines, through the INFO ioctl."""
    source = get_state(ctx).source()
    infos = [to_json(source.info(d.name)) for d in resolve(ctx, device)]

    def human() -> None:
        for i, info in enumerate(infos):
            if i:
                click.echo()
            render.render_info(info)

    emit({"devices": infos}, as_json, human)


@click.command("attrs")
@device_argument(required=True)
@click.argument("name", required=False)
@click.argument("value", required=False)
@json_option
@click.pass_context
def attrs_cmd(
    ctx: click.Context, device: str, name: str | None, value: str | None, as_json: bool
) -> None:
    """sysfs attributes: the walk from DEVICE up to its PCI parent (udevadm info -a).

    With NAME, only that attribute; with NAME VALUE, store VALUE into it (on the
    device, or on the nearest parent that has it).
    """
    source = get_state(ctx).source()
    dev = resolve_one(ctx, device)
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
            raise click.ClickException(f"no attribute {name!r} on {dev.name} or its parents")
    emit({"device": dev.name, "levels": levels}, as_json, lambda: render.render_attrs(levels))


@click.command("topology")
@json_option
@click.pass_context
def topology_cmd(ctx: click.Context, as_json: bool) -> None:
    """The PCI tree with the accel nodes bound below each function."""
    topo = to_json(get_state(ctx).source().topology())
    emit(topo, as_json, lambda: render.render_topology(topo))
