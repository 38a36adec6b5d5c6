"""accelctl's records beyond INFO: clients holding files, sysfs walks, buffers, topology.

Like :mod:`accelcore.cli.model` these are frozen values a source yields and a
renderer consumes; they carry no behaviour. The records of administrative
operations are the engine's (:mod:`accelcore.admin`), under the names accelctl
has always used: one definition for the server, the embedded machine and the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..admin import AttributeLevel as AttrLevel
from ..admin import AttributeValue as AttrValue
from ..admin import BufferRecord, FenceRecord, Holder
from ..admin import OpenFileRecord as FileRecord

__all__ = [
    "AttrLevel",
    "AttrValue",
    "BufferRecord",
    "FenceRecord",
    "FileRecord",
    "Holder",
    "PciFunctionRecord",
    "Topology",
    "TopologyRoot",
    "UeventRecord",
]


@dataclass(frozen=True, slots=True)
class PciFunctionRecord:
    """A PCI function in the topology, with the accel nodes bound below it."""

    address: str
    vendor: int | None
    device: int | None
    class_code: int | None
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
