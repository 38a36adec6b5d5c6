"""KFD's per-process state: processes, per-GPU process data, memory, events, queues.

A :class:`KfdProcess` is one user process's KFD context (``struct kfd_process``);
every ``/dev/kfd`` file a process opens shares it, and it goes away with the last.
Per GPU it has a :class:`Pdd` (``kfd_process_device``): the accel file whose VM it
acquired, its doorbell page, and its memory handles. Nothing here is owned by
one device: there is no single owner, contexts are per process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from accelcore import AccelDevice, AccelFile, BufferObject, Fence, NoDevice

from .abi import make_handle
from .gpu import KfdGpu, PageTable
from .queues import CommandProcessor, HwQueue

if TYPE_CHECKING:
    from .gpu import GpuVmFault

__all__ = ["GpuNode", "KfdEvent", "KfdMem", "KfdProcess", "KfdQueue", "Pdd"]


@dataclass(eq=False)
class GpuNode:
    """The driver's view of one GPU: its accel device, model, KFD id and CP."""

    dev: AccelDevice
    gpu: KfdGpu
    gpu_id: int
    cp: CommandProcessor
    name: str = "gfx90a"


@dataclass(eq=False)
class KfdMem:
    """One allocation (``struct kgd_mem``): a handle, a VA and its backing.

    ``mapped`` holds, per GPU it is mapped on, the fence of the page-table update
    that maps it; ``unmapping`` the fences of updates that unmap it.
    """

    handle: int
    node: GpuNode
    va: int
    size: int
    flags: int
    kind: str
    view_fn: Callable[[], memoryview]
    bo: BufferObject | None = None
    release_fn: Callable[[], None] | None = None
    mapped: dict[int, Fence] = field(default_factory=dict)
    unmapping: dict[int, Fence] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.handle:#x}"

    @property
    def writable(self) -> bool:
        from .abi import KFD_UAPI

        return bool(self.flags & KFD_UAPI.KFD_IOC_ALLOC_MEM_FLAGS_WRITABLE)

    def view(self) -> memoryview:
        return self.view_fn()

    def release(self) -> None:
        """Free the backing (the handle is already gone)."""
        if self.release_fn is not None:
            self.release_fn()
            self.release_fn = None
        if self.bo is not None:
            bo, self.bo = self.bo, None
            bo.put()


@dataclass(eq=False)
class Pdd:
    """A process's data on one GPU (``kfd_process_device``)."""

    node: GpuNode
    accel_file: AccelFile | None = None
    vm: PageTable | None = None
    doorbell_index: int | None = None
    mems: dict[int, KfdMem] = field(default_factory=dict)
    next_idr: int = 0

    def require_vm(self) -> PageTable:
        """The acquired VM.

        Raises:
            NoDevice: no VM was acquired on this GPU, or it was lost (reset, unplug).
        """
        vm = self.vm
        if vm is None or self.accel_file is None:
            raise NoDevice(
                f"process has not acquired a VM on gpu {self.node.gpu_id} (ACQUIRE_VM first)"
            )
        context: object = self.accel_file.context
        if vm.dead or context is not vm:
            raise NoDevice(f"the VM of gpu {self.node.gpu_id} was lost (reset or unplug)")
        return vm

    def new_handle(self) -> int:
        idr = self.next_idr
        self.next_idr += 1
        return make_handle(self.node.gpu_id, idr)


@dataclass(eq=False)
class KfdEvent:
    """A KFD event: set by ``SET_EVENT`` or by the GPU, consumed by waiters."""

    event_id: int
    event_type: int
    auto_reset: bool
    signaled: bool = False
    age: int = 1
    fault: GpuVmFault | None = None
    fault_gpu: int = 0


@dataclass(eq=False)
class KfdQueue:
    """A user-mode queue of a process."""

    queue_id: int
    node: GpuNode
    hw: HwQueue


@dataclass(eq=False)
class KfdProcess:
    """One process's KFD context (``struct kfd_process``)."""

    pid: int
    pdds: dict[int, Pdd] = field(default_factory=dict)
    events: dict[int, KfdEvent] = field(default_factory=dict)
    queues: dict[int, KfdQueue] = field(default_factory=dict)
    refs: int = 1
    next_signal_event: int = 1
    next_other_event: int = 0x8000_0000

    def lookup_mem(self, handle: int) -> KfdMem | None:
        from .abi import get_gpu_id, get_idr

        pdd = self.pdds.get(get_gpu_id(handle))
        return None if pdd is None else pdd.mems.get(get_idr(handle))

    def all_mems(self) -> list[KfdMem]:
        return [m for pdd in self.pdds.values() for m in pdd.mems.values()]
