"""Human renderers: rich tables and trees over the same dicts ``--json`` prints.

Rendering from the JSON form keeps text and JSON from drifting apart. rich is
imported lazily so ``--json`` and shell completion do not pay for it. The text
layout is for people and may change; scripts use ``--json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = [
    "console",
    "render_attrs",
    "render_buffers",
    "render_devices",
    "render_files",
    "render_info",
    "render_top",
    "render_topology",
]


def console() -> Console:
    """A console on the current ``sys.stdout`` (so CliRunner captures it)."""
    import sys

    from rich.console import Console

    # Piped output is not cut to 80 columns: tables are as wide as they need.
    width = None if sys.stdout.isatty() else 200
    return Console(highlight=False, soft_wrap=True, width=width)


def _table(title: str | None, *columns: str) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for col in columns:
        table.add_column(col, no_wrap=True)
    return table


def _dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _hex4(value: int | None) -> str:
    return "-" if value is None else f"{value:04x}"


def _hexn(value: int | None, digits: int) -> str:
    return "-" if value is None else f"{value:0{digits}x}"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.3f} ms"


def render_devices(devices: list[dict[str, Any]]) -> None:
    """``accelctl list``."""
    out = console()
    if not devices:
        out.print("no accel devices")
        return
    table = _table(
        None, "DEVICE", "NODE", "DRIVER", "PCI", "ID", "STATUS", "OWNER", "OPEN", "SOURCE"
    )
    for d in devices:
        ident = f"{_hex4(d['vendor'])}:{_hex4(d['device'])}" if d["vendor"] is not None else "-"
        table.add_row(
            d["name"],
            _dash(d["node"]),
            _dash(d["driver"]),
            _dash(d["pci_address"]),
            ident,
            d["status"],
            _dash(d["owner_pid"]),
            _dash(d["open_count"]),
            d["source"],
        )
    out.print(table)


def render_info(info: dict[str, Any]) -> None:
    """``accelctl info`` for one device."""
    out = console()
    ident, status, own = info["identity"], info["status"], info["ownership"]
    out.print(f"[bold]{info['name']}[/bold]  {info['node']}  ({info['source']})")
    kv = _table(None, "FIELD", "VALUE")
    rows = [
        ("driver", f"{ident['driver']} {ident['version']}"),
        ("bus id", ident["bus_id"]),
        (
            "pci id",
            "-"
            if ident["bus_id"] == "virtual"
            else f"{ident['vendor']:04x}:{ident['device']:04x} "
            f"(subsys {ident['subsystem_vendor']:04x}:{ident['subsystem_device']:04x}, "
            f"class {ident['class_code']:06x})",
        ),
        ("features", ", ".join(ident["features"]) or "-"),
        ("status", status["status"] + (" (tainted)" if status["tainted"] else "")),
        ("resets / oopses", f"{status['reset_count']} / {status['oops_count']}"),
        ("open files", str(status["open_count"])),
        (
            "ownership",
            f"{own['state']} ({own['policy']})"
            + (
                f", pid {own['owner_pid']} client {own['owner_client_id']}"
                if own["owner_pid"] is not None
                else ""
            )
            + (
                f", {own['pin_count']} pin(s), {_bytes(own['pinned_bytes'])}"
                if own["pin_count"]
                else ""
            ),
        ),
    ]
    for k, v in rows:
        kv.add_row(k, v)
    out.print(kv)
    if info["clients"]:
        t = _table(
            "clients",
            "CLIENT",
            "PID",
            "UID",
            "COMM",
            "NAME",
            "ROLE",
            "HANDLES",
            "MEMORY",
            "ENGINE TIME",
        )
        for c in info["clients"]:
            role = "owner" if c["owner"] else "control" if c["control"] else "-"
            t.add_row(
                str(c["client_id"]),
                str(c["pid"]),
                str(c["uid"]),
                c["comm"],
                _dash(c["name"]),
                role,
                str(c["handles"]),
                _bytes(c["memory_bytes"]),
                _ms(c["engine_time_ns"]),
            )
        out.print(t)
    if info["memory"]:
        t = _table("memory", "REGION", "USED", "TOTAL")
        for m in info["memory"]:
            t.add_row(m["name"], _bytes(m["used_bytes"]), _bytes(m["total_bytes"]))
        out.print(t)
    if info["engines"]:
        t = _table("engines", "ENGINE", "CLASS", "BUSY", "BUSY TIME", "SUBMITTED", "COMPLETED")
        for e in info["engines"]:
            t.add_row(
                e["name"],
                str(e["engine_class"]),
                "yes" if e["busy"] else "no",
                _ms(e["busy_time_ns"]),
                str(e["submitted"]),
                str(e["completed"]),
            )
        out.print(t)


def render_attrs(levels: list[dict[str, Any]]) -> None:
    """``accelctl attrs``: the ``udevadm info --attribute-walk`` layout."""
    out = console()
    for i, lvl in enumerate(levels):
        s = "" if i == 0 else "S"
        what = "device" if i == 0 else "parent device"
        out.print(f"  looking at {what} '{lvl['devpath']}':", markup=False)
        out.print(f'    KERNEL{s}=="{lvl["kernel"]}"', markup=False)
        out.print(f'    SUBSYSTEM{s}=="{lvl["subsystem"] or ""}"', markup=False)
        out.print(f'    DRIVER{s}=="{lvl["driver"] or ""}"', markup=False)
        for a in lvl["attributes"]:
            value = "(not readable)" if a["value"] is None else a["value"].replace("\n", "\\n")
            out.print(f'    ATTR{s}{{{a["name"]}}}=="{value}"', markup=False)
        out.print("")


def render_files(files: list[dict[str, Any]]) -> None:
    """``accelctl ps``."""
    out = console()
    if not files:
        out.print("no processes hold accel devices")
        return
    t = _table(None, "DEVICE", "PID", "COMM", "UID", "CLIENT", "ROLE", "FDS", "MEMORY", "ENGINES")
    for f in files:
        role = "owner" if f["owner"] else "control" if f["control"] else "-"
        fds = ",".join(f"{h['pid']}:{h['fd']}" for h in f["holders"]) or "-"
        engines = " ".join(
            f"{k.removeprefix('drm-engine-')}={v}"
            for k, v in f["fdinfo"].items()
            if k.startswith("drm-engine-")
        )
        t.add_row(
            f["device"],
            str(f["pid"]),
            f["comm"],
            str(f["uid"]),
            str(f["client_id"]),
            role,
            fds,
            f["fdinfo"].get("drm-total-memory", "-"),
            engines or "-",
        )
    out.print(t)


def render_buffers(buffers: list[dict[str, Any]], total: int) -> None:
    """``accelctl dmabuf``: debugfs ``dma_buf/bufinfo`` style."""
    out = console()
    t = _table(
        "Dma-buf Objects:",
        "INO",
        "SIZE",
        "FLAGS",
        "COUNT",
        "EXP_NAME",
        "EXPORTER",
        "NAME",
        "ATTACHED",
        "PINS",
        "HOLDERS",
    )
    for b in buffers:
        holders = ",".join(f"{h['pid']}:{h['fd']}" for h in b["holders"]) or "-"
        t.add_row(
            str(b["ino"]),
            str(b["size"]),
            f"{b['flags']:08o}",
            str(b["count"]),
            b["exp_name"],
            b["exporter"],
            b["name"] + (" (revoked)" if b["revoked"] else ""),
            ",".join(b["attachments"]) or "-",
            ",".join(b["pins"]) or "-",
            holders,
        )
    out.print(t)
    out.print(f"Total {len(buffers)} objects, {total} bytes")


def render_topology(topo: dict[str, Any]) -> None:
    """``accelctl topology``: PCI tree with accel nodes, then virtual devices."""
    from rich.tree import Tree

    out = console()
    tree = Tree("machine", highlight=False)
    for root in topo["roots"]:
        branch = tree.add(root["name"])
        for fn in root["functions"]:
            label = (
                f"{fn['address']} [{_hex4(fn['vendor'])}:{_hex4(fn['device'])}] "
                f"class {_hexn(fn['class_code'], 6)} driver {_dash(fn['driver'])}"
            )
            node = branch.add(label)
            for name in fn["accel"]:
                node.add(name)
    if topo["virtual"]:
        branch = tree.add("virtual")
        for name in topo["virtual"]:
            branch.add(name)
    out.print(tree)


def render_top(sample: dict[str, Any], clear: bool) -> None:
    """One refresh of ``accelctl top``."""
    out = console()
    if clear:
        out.clear()
    t = _table(
        f"accelctl top — iteration {sample['iteration']}, device time "
        f"{sample['timestamp_ns'] / 1e9:.3f} s",
        "DEVICE",
        "STATUS",
        "OWNER",
        "CLIENTS",
        "MEMORY",
        "ENGINE",
        "BUSY",
        "SUBMITTED",
        "COMPLETED",
        "BUSY TIME",
    )
    for d in sample["devices"]:
        mem = f"{_bytes(d['memory_used_bytes'])}/{_bytes(d['memory_total_bytes'])}"
        engines = d["engines"] or [None]
        for i, e in enumerate(engines):
            head = (
                (d["name"], d["status"], _dash(d["owner_pid"]), str(d["clients"]), mem)
                if i == 0
                else ("", "", "", "", "")
            )
            tail = (
                ("-",) * 5
                if e is None
                else (
                    e["name"],
                    "yes" if e["busy"] else "no",
                    str(e["submitted"]),
                    str(e["completed"]),
                    _ms(e["busy_time_ns"]),
                )
            )
            t.add_row(*head, *tail)
    out.print(t)
