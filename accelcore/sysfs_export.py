"""The sysfs tree as files: materialized under a root, or as a umockdev description.

The engine's :class:`~accelcore.sysfs.SysfsTree` is pure data; this module is its
I/O edge. :func:`materialize` writes it as a directory tree (``devices/…`` with
one file per readable attribute, ``class/<name>/<dev>`` and
``bus/<bus>/devices/<dev>`` symlinks, ``uevent`` files) for tools that read a
sysfs-like root. :func:`umockdev_description` renders it in
umockdev's text format, so that under ``umockdev-run --device FILE`` real libudev
consumers — pyudev, and ``accelctl list --host`` — see the simulated devices.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import AccelError
from .sysfs import SysfsNode, SysfsTree

__all__ = ["materialize", "umockdev_description"]


def _readable(node: SysfsNode) -> dict[str, str]:
    out = {}
    for name, attr in sorted(node.attributes.items()):
        if attr.readable:
            try:
                out[name] = node.read(name).rstrip("\n")
            except AccelError:
                continue  # an attribute that cannot be read now is left out
    return out


def materialize(tree: SysfsTree, root: Path | str) -> Path:
    """Write ``tree`` under ``root`` (which is created); returns ``root``.

    Each node becomes ``root/devices/…`` with a ``uevent`` file and one file per
    readable attribute; class and bus views are relative symlinks, as in ``/sys``.
    """
    base = Path(root)
    for node in tree.nodes():
        d = base / node.devpath.lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        env = node.uevent_env()
        env.pop("DEVPATH", None)
        (d / "uevent").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        for name, value in _readable(node).items():
            f = d / name
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(value + "\n")
        if node.subsystem:
            view = (
                base / "class" / node.subsystem
                if node.kind == "class"
                else base / "bus" / node.subsystem / "devices"
            )
            view.mkdir(parents=True, exist_ok=True)
            link = view / node.name
            if not link.is_symlink():
                link.symlink_to(os.path.relpath(d, view))
        if node.parent is not None and node.kind == "class":
            device = d / "device"
            parent_dir = base / node.parent.devpath.lstrip("/")
            if not device.is_symlink():
                device.symlink_to(os.path.relpath(parent_dir, d))
    return base


def umockdev_description(tree: SysfsTree, subsystems: tuple[str, ...] = ("accel", "pci")) -> str:
    """The nodes of ``subsystems`` in umockdev's format (``P:``, ``N:``, ``E:``, ``A:``).

    Only plain attributes are included (not those in group subdirectories),
    children before parents as ``umockdev-record`` writes them.
    """
    paragraphs = []
    for node in reversed(tree.nodes()):
        if node.subsystem not in subsystems:
            continue
        lines = [f"P: {node.devpath}"]
        if node.devname:
            lines.append(f"N: {node.devname}")
        env = node.uevent_env()
        env.pop("DEVPATH", None)
        lines += [f"E: {k}={v}" for k, v in env.items()]
        if node.driver and node.kind == "bus":
            lines.append(f"L: driver=../../../bus/{node.subsystem}/drivers/{node.driver}")
        for name, value in _readable(node).items():
            if "/" not in name and "\n" not in value:
                lines.append(f"A: {name}={value}")
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs) + "\n"
