"""Human renderers: rich tables and trees over the same dicts ``--json`` prints.

Rendering from the JSON form keeps text and JSON from drifting apart. rich is
imported lazily so ``--json`` and shell completion do not pay for it. The text
layout is for people and may change; scripts use ``--json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "console",
    "printable",
    "render_attrs",
    "render_buffers",
    "render_devices",
    "render_files",
    "render_info",
    "render_summary",
    "render_top",
    "render_topology",
]


def console() -> Console:
    """A console on the current ``sys.stdout`` (so CliRunner captures it), as wide
    as ``$COLUMNS`` says, else the terminal; piped output is not cut to 80 columns."""
    import os
    import sys

    from rich.console import Console

    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        width: int | None = int(columns)
    else:
        width = None if sys.stdout.isatty() else 200
    return Console(highlight=False, soft_wrap=True, width=width)


#: Spaces between two columns (rich's default padding of 1 on each side).
_GAP = 2


class _Grid:
    """A table that fits its console: when too wide it drops columns (``drop``
    order first, then from the right, never a ``keep`` column), then wraps what
    is left; it never cuts a cell to an ellipsis, so a PID is always whole."""

    def __init__(
        self,
        title: str | None,
        *columns: str,
        keep: tuple[str, ...] = (),
        drop: tuple[str, ...] = (),
    ) -> None:
        self.title = title
        self.columns = list(columns)
        self.keep = set(keep) | {columns[0]}
        self.drop = drop
        self.rows: list[tuple[str, ...]] = []

    def add_row(self, *cells: str) -> None:
        self.rows.append(tuple(printable(c) for c in cells))

    def print(self, out: Console) -> None:
        from rich.table import Table
        from rich.text import Text

        need = [max([len(c), *(len(r[i]) for r in self.rows)]) for i, c in enumerate(self.columns)]
        shown = list(range(len(self.columns)))
        order = [self.columns.index(c) for c in self.drop if c in self.columns]
        order += [i for i in reversed(shown) if i not in order]
        dropped: list[str] = []

        def width() -> int:
            return sum(need[i] for i in shown) + _GAP * (len(shown) - 1)

        for i in order:
            if width() <= out.width:
                break
            if self.columns[i] not in self.keep:
                shown.remove(i)
                dropped.append(self.columns[i])
        table = Table(title=self.title, title_justify="left", box=None, pad_edge=False)
        for i in shown:
            if self.columns[i] in self.keep:
                table.add_column(self.columns[i], no_wrap=True, min_width=need[i])
            else:
                table.add_column(self.columns[i], overflow="fold")
        for r in self.rows:
            table.add_row(*(Text(r[i]) for i in shown))  # Text: no markup in names
        out.print(table)
        if dropped:
            out.print(
                f"({out.width} columns: left out {', '.join(dropped)}; --json shows all)",
                markup=False,
                soft_wrap=False,
            )


def printable(value: str) -> str:
    """``value`` with every non-printable character escaped (``"\\x1b"``, ``"\\n"``),
    as ``/proc/PID/status`` escapes a task's name: a name a client chose (its
    ``comm``, a file's ``client_name``) cannot move the cursor, recolour the terminal
    or forge table rows. Every table cell goes through it."""
    if value.isprintable():
        return value
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in value
    )


def _table(
    title: str | None, *columns: str, keep: tuple[str, ...] = (), drop: tuple[str, ...] = ()
) -> _Grid:
    return _Grid(title, *columns, keep=keep, drop=drop)


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
        None,
        "DEVICE",
        "NODE",
        "DRIVER",
        "PCI",
        "ID",
        "STATUS",
        "OWNER",
        "OPEN",
        "SOURCE",
        "UUID",
        keep=("DEVICE", "OWNER"),
        drop=("UUID", "SOURCE", "NODE", "ID", "OPEN"),
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
            _dash(d.get("uuid")),
        )
    table.print(out)


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
        ("uuid", _dash(info.get("uuid"))),
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
    kv.print(out)
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
            keep=("CLIENT", "PID"),
            drop=("NAME", "ENGINE TIME", "HANDLES", "UID"),
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
        t.print(out)
    if info["memory"]:
        t = _table("memory", "REGION", "USED", "TOTAL")
        for m in info["memory"]:
            t.add_row(m["name"], _bytes(m["used_bytes"]), _bytes(m["total_bytes"]))
        t.print(out)
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
        t.print(out)


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
    t = _table(
        None,
        "DEVICE",
        "PID",
        "COMM",
        "UID",
        "CLIENT",
        "ROLE",
        "FDS",
        "MEMORY",
        "RESIDENT",
        "ENGINES",
        keep=("DEVICE", "PID"),
        drop=("FDS", "ENGINES", "CLIENT", "UID", "RESIDENT", "ROLE"),
    )
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
            _regions(f["memory"], "total"),
            _regions(f["memory"], "resident"),
            engines or "-",
        )
    t.print(out)


def _regions(memory: dict[str, dict[str, int]], kind: str) -> str:
    """``1.0 MiB`` for one region, ``dram 1.0 MiB, sram 4.0 KiB`` for several."""
    have = {r: v[kind] for r, v in memory.items() if kind in v}
    if not have:
        return "-"
    if len(have) == 1:
        return _bytes(next(iter(have.values())))
    return ", ".join(f"{r} {_bytes(n)}" for r, n in sorted(have.items()))


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
    t.print(out)
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
        f"accelctl top - iteration {sample['iteration']}, device time "
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
        keep=("DEVICE", "OWNER"),
        drop=("BUSY TIME", "SUBMITTED", "COMPLETED", "CLIENTS"),
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
    t.print(out)


def render_summary(data: dict[str, Any]) -> None:
    """``accelctl`` with no command: one line per device, as ``nvidia-smi`` prints."""
    out = console()
    devices = data["devices"]
    out.print(
        f"accelctl {data['accelctl']}  source: {data['source']}  devices: {len(devices)}",
        markup=False,
    )
    if not devices:
        out.print("no accel devices")
        return
    t = _table(
        None,
        "DEVICE",
        "DRIVER",
        "BUS ID",
        "STATUS",
        "OWNER",
        "CLIENTS",
        "MEMORY",
        "BUSY",
        "UUID",
        keep=("DEVICE",),
        drop=("UUID", "BUS ID", "CLIENTS", "BUSY"),
    )
    for d in devices:
        t.add_row(
            d["name"],
            d["identity"]["driver"],
            d["identity"]["bus_id"],
            d["status"]["status"],
            _dash(d["ownership"]["owner_pid"]),
            str(d["status"]["open_count"]),
            f"{_bytes(d['memory_used_bytes'])} / {_bytes(d['memory_total_bytes'])}"
            if d["memory"]
            else "-",
            f"{d['engines_busy']}/{len(d['engines'])}" if d["engines"] else "-",
            _dash(d.get("uuid")),
        )
    t.print(out)
