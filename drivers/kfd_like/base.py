"""What every part of the KFD-like driver shares: the GPUs, processes and lookups.

:class:`KfdBase` holds the driver-wide ("module") state — the GPUs by
``gpu_id``, the KFD processes by pid — and the lookups the ioctl handlers in
:mod:`.mem_ioctls`, :mod:`.event_ioctls` and :mod:`.driver` share.
:func:`kfd_only` marks a handler as a ``/dev/kfd`` ioctl: on an accel node
(where the core's dispatcher would route the same number) it is ``ENOTTY``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from accelcore import AccelDriver, InvalidArgument, IoctlCallBase, NotTTY

from .chardev import KfdCall
from .process import GpuNode, KfdProcess, Pdd

if TYPE_CHECKING:
    from accelcore import Subsystem

__all__ = ["KfdBase", "kfd_only"]

D = TypeVar("D", bound="KfdBase")


def kfd_only(fn: Callable[[D, KfdCall], None]) -> Callable[[D, IoctlCallBase], None]:
    """Make a handler answer only on ``/dev/kfd`` (``ENOTTY`` on accel nodes)."""

    @functools.wraps(fn)
    def handler(self: D, call: IoctlCallBase) -> None:
        if not isinstance(call, KfdCall):
            raise NotTTY(
                f"{call.desc.name} is a /dev/kfd ioctl; accel nodes of "
                f"{self.name} answer only the core ioctls"
            )
        fn(self, call)

    return handler


class KfdBase(AccelDriver):
    """Driver-wide state and lookups (see the module docstring)."""

    def __init__(self) -> None:
        self._subsystem: Subsystem | None = None
        self.gpus: dict[int, GpuNode] = {}
        self.processes: dict[int, KfdProcess] = {}

    @property
    def subsystem(self) -> Subsystem:
        """The subsystem the driver is registered with."""
        if self._subsystem is None:
            raise InvalidArgument(f"driver {self.name} is not registered")
        return self._subsystem

    def node_of(self, gpu_id: int) -> GpuNode:
        """The GPU with KFD id ``gpu_id``.

        Raises:
            InvalidArgument: no such GPU (KFD answers ``EINVAL``).
        """
        node = self.gpus.get(gpu_id)
        if node is None:
            raise InvalidArgument(f"unknown gpu_id {gpu_id} (known: {sorted(self.gpus)})")
        return node

    def pdd_of(self, process: KfdProcess, gpu_id: int) -> Pdd:
        """The process's data on GPU ``gpu_id``, created on first use.

        Raises:
            InvalidArgument: no such GPU.
        """
        node = self.node_of(gpu_id)
        pdd = process.pdds.get(gpu_id)
        if pdd is None or pdd.node is not node:
            pdd = process.pdds[gpu_id] = Pdd(node)
        return pdd
