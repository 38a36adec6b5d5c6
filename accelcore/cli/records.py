"""accelctl's records beyond INFO: clients holding files, sysfs walks, buffers, topology.

Like :mod:`accelcore.cli.model` these are frozen values a source yields and a
renderer consumes; they carry no behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "AttrLevel",
    "AttrValue",
    "BufferRecord",
    "FenceRecord",
    "FileRecord",
    "PciFunctionRecord",
    "Topology",
    "TopologyRoot",
    "UeventRecord",
]


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One open file on an accel node (a row of ``accelctl ps``), fdinfo included.

    ``pid``/``comm``/``uid`` are the opener's; ``holders`` lists every ``(pid, fd)``
    that refers to the file now (``dup``, ``fork`` and fd passing share it).
    """

    device: str
    pid: int
    comm: str
    uid: int
    client_id: int
    owner: bool
    control: bool
    holders: list[dict[str, int]]
    fdinfo: dict[str, str]


@dataclass(frozen=True, slots=True)
class AttrValue:
    """One sysfs attribute: its value (``None`` when unreadable) and mode."""

    name: str
    value: str | None
    mode: str
    writable: bool


@dataclass(frozen=True, slots=True)
class AttrLevel:
    """One device of an ``udevadm info -a``-style walk (the device, then its parents)."""

    devpath: str
    kernel: str
    subsystem: str | None
    driver: str | None
    attributes: list[AttrValue]


@dataclass(frozen=True, slots=True)
class FenceRecord:
    """A fence on a dma-buf's reservation object."""

    usage: str
    driver: str
    timeline: str
    seqno: int
    signalled: bool


@dataclass(frozen=True, slots=True)
class BufferRecord:
    """One live dma-buf, as debugfs ``dma_buf/bufinfo`` lists it, with its holders."""

    ino: int
    size: int
    flags: int
    count: int
    exp_name: str
    exporter: str
    name: str
    revoked: bool
    pins: list[str]
    attachments: list[str]
    fences: list[FenceRecord]
    holders: list[dict[str, int]]


@dataclass(frozen=True, slots=True)
class PciFunctionRecord:
    """A PCI function in the topology, with the accel nodes bound below it."""

    address: str
    vendor: str | None
    device: str | None
    class_code: str | None
    driver: str | None
    accel: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TopologyRoot:
    """A host bridge (``pci0000:00``) and its functions."""

    name: str
    functions: list[PciFunctionRecord]


@dataclass(frozen=True, slots=True)
class Topology:
    """The PCI tree with accel nodes, and accel devices that have no bus parent."""

    roots: list[TopologyRoot]
    virtual: list[str]


@dataclass(frozen=True, slots=True)
class UeventRecord:
    """One uevent, as ``udevadm monitor --property`` shows it."""

    action: str
    devpath: str
    subsystem: str
    seqnum: int
    env: dict[str, str]
