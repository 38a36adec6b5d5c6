"""The KFD-like driver: ``/dev/kfd`` for all GPUs, an accel node per GPU.

Like amdkfd on amdgpu, compute goes through one node, ``/dev/kfd``, that serves
every GPU; each GPU also has an ordinary accel node (``/dev/accel/accelN``),
whose open file carries a GPU VM (its compute context; ownership is per process,
no single owner). ``ACQUIRE_VM`` hands that file to KFD, which then allocates,
maps and runs queues in that VM. Memory is mapped at the same virtual address on
every GPU; map and unmap act on several GPUs in one call (seed 004).
"""

from __future__ import annotations

import errno
import itertools
import zlib
from collections.abc import Sequence
from typing import Any

from accelcore import (
    PAGE_SIZE,
    AccelDevice,
    AccelFile,
    BadFd,
    Busy,
    DevNode,
    DriverFeature,
    EngineInfo,
    InvalidArgument,
    Mapping,
    MemoryRegionInfo,
    NoDevice,
    OwnershipPolicy,
    Subsystem,
    Task,
    ioctl,
)
from accelcore.pci import PciDeviceId, PciFunction
from accelcore.testing.conformance.steps import (
    Call,
    Close,
    Fails,
    Open,
    Setup,
    Unique,
    UserArray,
)
from accelcore.uapi import CORE

from .abi import KFD_UAPI, split_mmap_offset
from .base import kfd_only
from .chardev import KfdCall, KfdFile
from .event_ioctls import EventQueueIoctls
from .gpu import KfdGpu, PageTable
from .mem_ioctls import MemoryIoctls
from .memory import GPUVM_BASE, GPUVM_LIMIT
from .process import GpuNode, KfdProcess
from .queues import CommandProcessor
from .topology import KFD_CHAR_MAJOR, Topology

__all__ = ["KfdLikeDriver"]

U = KFD_UAPI
_pasids = itertools.count(1)


#: The key of :func:`_example_setup`'s answer that is the ``bo_setup``, not an example.
BO_SETUP = "bo"


def _example_setup() -> dict[str, Setup]:
    """The conformance suite's stateful examples: /dev/kfd, a VM, memory, events."""
    kfd = Open("kfd", "/dev/kfd")
    ap = Call("ap", "DRM_IOCTL_KFD_GET_PROCESS_APERTURES", file="kfd")
    gpu0, gpu1 = "ap.process_apertures.0.gpu_id", "ap.process_apertures.1.gpu_id"
    vm = (
        kfd,
        ap,
        Call("vm", "DRM_IOCTL_KFD_ACQUIRE_VM", {"drm_fd": "accel.fd", "gpu_id": gpu0}, "kfd"),
    )
    alloc = Call(
        "mem",
        "DRM_IOCTL_KFD_ALLOC_MEMORY_OF_GPU",
        {
            "va_addr": GPUVM_BASE,
            "size": 1 << 16,
            "gpu_id": gpu0,
            "flags": U.KFD_IOC_ALLOC_MEM_FLAGS_VRAM | U.KFD_IOC_ALLOC_MEM_FLAGS_WRITABLE,
        },
        "kfd",
    )
    two = (
        *vm,
        Open("accel1", device=1),
        Call("vm1", "DRM_IOCTL_KFD_ACQUIRE_VM", {"drm_fd": "accel1.fd", "gpu_id": gpu1}, "kfd"),
        alloc,
        UserArray("ids", "__u32", [gpu0, gpu1]),
    )
    map_args = {"handle": "mem.handle", "device_ids_array_ptr": "ids.addr"}
    event = Call(
        "ev",
        "DRM_IOCTL_KFD_CREATE_EVENT",
        {"event_type": U.KFD_IOC_EVENT_SIGNAL, "auto_reset": 1},
        "kfd",
    )
    on_event = Setup(steps=(kfd, event), args={"event_id": "ev.event_id"}, file="kfd")
    return {
        BO_SETUP: Setup(
            steps=(
                *vm,
                Unique("va", GPUVM_BASE + (1 << 30), 1 << 20),
                Call(
                    "bomem",
                    "DRM_IOCTL_KFD_ALLOC_MEMORY_OF_GPU",
                    {
                        "va_addr": "va.value",
                        "size": 1 << 16,
                        "gpu_id": gpu0,
                        "flags": U.KFD_IOC_ALLOC_MEM_FLAGS_VRAM
                        | U.KFD_IOC_ALLOC_MEM_FLAGS_WRITABLE,
                    },
                    "kfd",
                ),
                Call(
                    "exp",
                    "DRM_IOCTL_KFD_EXPORT_DMABUF",
                    {"handle": "bomem.handle", "flags": CORE.DRM_CLOEXEC | CORE.DRM_RDWR},
                    "kfd",
                ),
                Call("imp", "DRM_IOCTL_PRIME_FD_TO_HANDLE", {"fd": "exp.dmabuf_fd"}),
                Close("exp.dmabuf_fd"),
                # The GEM handle alone keeps the buffer (and its VRAM) alive.
                Call("free", "DRM_IOCTL_KFD_FREE_MEMORY_OF_GPU", {"handle": "bomem.handle"}, "kfd"),
                Close("kfd.fd"),  # /dev/kfd's reference on the accel file goes too
            ),
            args={"handle": "imp.handle"},
        ),
        "DRM_IOCTL_KFD_GET_VERSION": Setup(steps=(kfd,), file="kfd"),
        "DRM_IOCTL_KFD_GET_PROCESS_APERTURES": Setup(steps=(kfd,), file="kfd"),
        "DRM_IOCTL_KFD_CREATE_EVENT": Setup(steps=(kfd,), file="kfd"),
        "DRM_IOCTL_KFD_ACQUIRE_VM": Setup(
            steps=(kfd, ap), args={"drm_fd": "accel.fd", "gpu_id": gpu0}, file="kfd"
        ),
        "DRM_IOCTL_KFD_ALLOC_MEMORY_OF_GPU": Setup(steps=vm, args={"gpu_id": gpu0}, file="kfd"),
        "DRM_IOCTL_KFD_FREE_MEMORY_OF_GPU": Setup(
            steps=(*vm, alloc), args={"handle": "mem.handle"}, file="kfd"
        ),
        "DRM_IOCTL_KFD_MAP_MEMORY_TO_GPU": Setup(steps=two, args=map_args, file="kfd", devices=2),
        "DRM_IOCTL_KFD_UNMAP_MEMORY_FROM_GPU": Setup(
            steps=(
                *two,
                Call(
                    "map",
                    "DRM_IOCTL_KFD_MAP_MEMORY_TO_GPU",
                    {**map_args, "n_devices": 2},
                    "kfd",
                ),
            ),
            args=map_args,
            file="kfd",
            devices=2,
        ),
        "DRM_IOCTL_KFD_SET_EVENT": on_event,
        "DRM_IOCTL_KFD_RESET_EVENT": on_event,
        "DRM_IOCTL_KFD_DESTROY_EVENT": on_event,
        "DRM_IOCTL_KFD_WAIT_EVENTS": Setup(
            steps=(
                kfd,
                event,
                UserArray("events", "struct kfd_event_data", [{"event_id": "ev.event_id"}]),
            ),
            args={"events_ptr": "events.addr"},
            file="kfd",
        ),
    }


class KfdLikeDriver(MemoryIoctls, EventQueueIoctls):
    """amdkfd-shaped driver for :class:`~drivers.kfd_like.gpu.KfdGpu` devices."""

    name = "kfd_like"
    desc = "KFD-like compute driver (one /dev/kfd for all GPUs)"
    version = (U.KFD_IOCTL_MAJOR_VERSION, U.KFD_IOCTL_MINOR_VERSION, 0)
    uapi = KFD_UAPI
    pci_ids = (PciDeviceId(KfdGpu.vendor_id, KfdGpu.device_id),)
    ownership = OwnershipPolicy.PER_PROCESS
    features = DriverFeature.GEM | DriverFeature.PRIME
    # The conformance suite builds machines of this model. The KFD ioctls live on
    # /dev/kfd: each example runs there, after the steps of ``example_setup``.
    device_model = "kfd_like"
    examples = {
        "DRM_IOCTL_KFD_GET_VERSION": {},
        "DRM_IOCTL_KFD_GET_PROCESS_APERTURES": {},
        "DRM_IOCTL_KFD_ACQUIRE_VM": {},
        "DRM_IOCTL_KFD_ALLOC_MEMORY_OF_GPU": {
            "va_addr": GPUVM_BASE,
            "size": 1 << 16,
            "flags": U.KFD_IOC_ALLOC_MEM_FLAGS_VRAM | U.KFD_IOC_ALLOC_MEM_FLAGS_WRITABLE,
        },
        "DRM_IOCTL_KFD_FREE_MEMORY_OF_GPU": {},
        "DRM_IOCTL_KFD_MAP_MEMORY_TO_GPU": {"n_devices": 2},
        "DRM_IOCTL_KFD_UNMAP_MEMORY_FROM_GPU": {"n_devices": 2},
        "DRM_IOCTL_KFD_CREATE_EVENT": {"event_type": U.KFD_IOC_EVENT_SIGNAL, "auto_reset": 1},
        "DRM_IOCTL_KFD_SET_EVENT": {},
        "DRM_IOCTL_KFD_RESET_EVENT": {},
        "DRM_IOCTL_KFD_DESTROY_EVENT": {},
        "DRM_IOCTL_KFD_WAIT_EVENTS": {"num_events": 1, "timeout": 10},
    }
    example_setup = {k: v for k, v in _example_setup().items() if k != BO_SETUP}
    #: A GEM handle on the accel file: VRAM from /dev/kfd, exported, imported,
    #: the KFD allocation freed (the handle is then its only owner).
    bo_setup = _example_setup()[BO_SETUP]
    #: Calls that must fail (after each example's setup) and change nothing.
    failing_examples = {
        "DRM_IOCTL_KFD_ACQUIRE_VM": (Fails({"gpu_id": 0}, errno.EINVAL, "no such GPU"),),
        "DRM_IOCTL_KFD_ALLOC_MEMORY_OF_GPU": (Fails({"size": 0}, errno.EINVAL, "empty"),),
        "DRM_IOCTL_KFD_FREE_MEMORY_OF_GPU": (
            Fails({"handle": 0x7777}, errno.EINVAL, "no such memory"),
        ),
        "DRM_IOCTL_KFD_MAP_MEMORY_TO_GPU": (Fails({"n_devices": 0}, errno.EINVAL, "no GPUs"),),
        "DRM_IOCTL_KFD_WAIT_EVENTS": (Fails({"num_events": 0}, errno.EINVAL, "no events"),),
    }
    #: amdkfd never checked these pads (a uAPI older than the rules); the
    #: negative matrix leaves them out and says so.
    legacy_ignored_fields = {
        "DRM_IOCTL_KFD_DESTROY_EVENT": ("pad",),
        "DRM_IOCTL_KFD_SET_EVENT": ("pad",),
        "DRM_IOCTL_KFD_RESET_EVENT": ("pad",),
    }

    def __init__(self) -> None:
        super().__init__()
        self.kfd_ioctls: dict[int, Any] = {}
        self.topology: Topology | None = None
        self._locked = 0

    # -- module init / exit -------------------------------------------------------------
    def registered(self, subsystem: Subsystem) -> None:
        self._subsystem = subsystem
        self.kfd_ioctls = self.ioctl_table()
        self.topology = Topology(subsystem.sysfs, lambda: list(self.gpus.values()))
        subsystem.add_node(
            DevNode("/dev/kfd", 0o666, 0, 0, self._open_kfd, (KFD_CHAR_MAJOR, 0), "misc")
        )

    def in_use(self) -> list[str]:
        """Processes with ``/dev/kfd`` open hold the module (as ``kfd_open`` does)."""
        if not self.processes:
            return []
        return [f"/dev/kfd open by pid(s) {sorted(self.processes)}"]

    def unregistered(self, subsystem: Subsystem) -> None:
        subsystem.remove_node("/dev/kfd")
        if self.topology is not None:
            self.topology.remove()
            self.topology = None

    # -- GPUs -----------------------------------------------------------------------------
    def probe(self, dev: AccelDevice) -> None:
        fn = dev.parent
        if not isinstance(fn, PciFunction) or not isinstance(fn.device_model, KfdGpu):
            raise NoDevice(f"{dev.name}: parent is not a kfd_like GPU")
        gpu = fn.device_model
        fn.enable_device()
        fn.set_master()
        gpu_id = zlib.crc32(dev.bus_id.encode()) & 0xFFFF
        while gpu_id == 0 or gpu_id in self.gpus:
            gpu_id = (gpu_id + 1) & 0xFFFF
        node = GpuNode(
            dev,
            gpu,
            gpu_id,
            CommandProcessor(
                gpu, self.gpu_interrupt, lambda q, f, m: self.gpu_fault(node, q, f, m)
            ),
        )
        dev.private = node
        self.gpus[gpu_id] = node
        dev.add_action(lambda: self._forget_gpu(node), "kfd_forget_gpu")
        if self.topology is not None:
            self.topology.changed()

    def remove(self, dev: AccelDevice) -> None:
        self._forget_gpu(dev.private)

    def _forget_gpu(self, node: GpuNode) -> None:
        node.cp.clear()
        if self.gpus.get(node.gpu_id) is node:
            del self.gpus[node.gpu_id]
            if self.topology is not None:
                self.topology.changed()

    def reset(self, dev: AccelDevice, reason: str) -> None:
        node: GpuNode = dev.private
        node.cp.clear()

    # -- core INFO hooks -----------------------------------------------------------------
    def memory_regions(self, dev: AccelDevice) -> Sequence[MemoryRegionInfo]:
        """VRAM: its size and what buffer allocations use (``drm-total-vram``)."""
        gpu = dev.private.gpu
        return [MemoryRegionInfo("vram", gpu.vram_size, gpu.vram.used)]

    def engines(self, dev: AccelDevice) -> Sequence[EngineInfo]:
        """The command processor running user queues (class 1, compute) and SDMA
        running page-table updates (class 0, copy), as amdgpu's gfx/compute and sdma."""
        node: GpuNode = dev.private
        cp, gpu = node.cp, node.gpu
        return [
            EngineInfo(
                "compute",
                1,
                any(q.busy for q in cp.queues),
                cp.busy_ns,
                cp.dispatched,
                cp.completed,
            ),
            EngineInfo(
                "sdma",
                0,
                gpu.sdma_busy,
                gpu.pt_updates * gpu.pt_update_ns,
                gpu.pt_submitted,
                gpu.pt_updates,
            ),
        ]

    def context_create(self, file: AccelFile) -> Any:
        node: GpuNode = file.device.private
        return node.gpu.create_vm(next(_pasids))

    def context_destroy(self, file: AccelFile, context: Any) -> None:
        node: GpuNode = file.device.private
        vm: PageTable = context
        node.gpu.destroy_vm(vm)
        for p in self.processes.values():
            pdd = p.pdds.get(node.gpu_id)
            if pdd is None or pdd.vm is not vm:
                continue
            for mem in p.all_mems():
                mem.mapped.pop(node.gpu_id, None)
                mem.unmapping.pop(node.gpu_id, None)
            for q in p.queues.values():
                if q.hw.vm is vm:
                    node.cp.remove(q.hw)

    def mmap(self, file: AccelFile, offset: int, length: int, writable: bool) -> Mapping | None:
        """CPU mapping of VRAM/GTT allocations through the acquired accel file."""
        bo = file.device.mmap_offsets.get(offset)
        if bo is None:
            return None
        for p in self.processes.values():
            pdd = p.pdds.get(file.device.private.gpu_id)
            if (
                pdd is not None
                and pdd.accel_file is file
                and any(m.bo is bo for m in pdd.mems.values())
            ):
                return bo.mmap(file, offset, length, writable)
        return None

    # -- /dev/kfd -------------------------------------------------------------------------
    # -- /dev/kfd lock (kfd_locked: suspend, GPU reset) -------------------------------
    def lock(self) -> None:
        """Lock KFD (``kgd2kfd_suspend`` / a GPU reset in progress): new opens of
        ``/dev/kfd`` wait, interruptibly, until :meth:`unlock`. Nests."""
        self._locked += 1

    def unlock(self) -> None:
        """Undo one :meth:`lock`; at the last, waiting opens go on.

        Raises:
            InvalidArgument: KFD is not locked.
        """
        if not self._locked:
            raise InvalidArgument("kfd_like is not locked")
        self._locked -= 1
        self.subsystem.clock.notify()

    @property
    def locked(self) -> bool:
        return self._locked > 0

    def _open_kfd(self, task: Task, flags: int) -> KfdFile:
        # Upstream kfd_open fails with EAGAIN while KFD is locked; this model
        # sleeps instead, interruptibly (EINTR, or a restart with SA_RESTART), so
        # that user space's retry on EINTR (libhsakmt's open loop) is testable.
        # Nothing is created before the wait: a restarted open starts afresh.
        self.subsystem.interruptible_wait(
            task, lambda: not self._locked, what="open of /dev/kfd (KFD locked)"
        )
        process = self.processes.get(task.pid)
        if process is None:
            process = self.processes[task.pid] = KfdProcess(task.pid)
        else:
            process.refs += 1
        return KfdFile(self, process, task, flags)

    def kfd_release(self, file: KfdFile) -> None:
        """The last reference of a ``/dev/kfd`` file went; the process's last tears down."""
        p = file.process
        p.refs -= 1
        if p.refs:
            return
        for q in p.queues.values():
            q.node.cp.remove(q.hw)
        p.queues.clear()
        for mem in p.all_mems():
            self.free_mem(p, mem)
        p.events.clear()
        for pdd in p.pdds.values():
            if pdd.doorbell_index is not None:
                pdd.node.gpu.free_doorbell_page(pdd.doorbell_index)
                pdd.doorbell_index = None
            if pdd.accel_file is not None:
                f, pdd.accel_file, pdd.vm = pdd.accel_file, None, None
                f.put()
        p.pdds.clear()
        if self.processes.get(p.pid) is p:
            del self.processes[p.pid]

    def kfd_mmap(self, file: KfdFile, offset: int, length: int, writable: bool) -> Mapping:
        """``mmap`` of ``/dev/kfd``: the process's doorbell page of a GPU.

        Raises:
            InvalidArgument: not a doorbell offset, no doorbell page, or too long.
        """
        kind, gpu_id, off = split_mmap_offset(offset)
        pdd = file.process.pdds.get(gpu_id)
        if kind != U.KFD_MMAP_TYPE_DOORBELL or pdd is None or pdd.doorbell_index is None:
            raise InvalidArgument(
                f"/dev/kfd mmap offset {offset:#x} is no doorbell page of this process"
            )
        if off or not 0 < length <= PAGE_SIZE:
            raise InvalidArgument(
                f"doorbell mmap must be one page at offset 0, not {length:#x} at {off:#x}"
            )
        block = pdd.node.gpu.doorbell_block(pdd.doorbell_index)
        return Mapping(
            file, block.view(0, length), offset, writable, holds=block, object_view=block.view()
        )

    # -- process-wide ioctls --------------------------------------------------------------
    @ioctl("DRM_IOCTL_KFD_GET_VERSION")
    @kfd_only
    def get_version(self, call: KfdCall) -> None:
        call.args.major_version = U.KFD_IOCTL_MAJOR_VERSION
        call.args.minor_version = U.KFD_IOCTL_MINOR_VERSION

    @ioctl("DRM_IOCTL_KFD_ACQUIRE_VM")
    @kfd_only
    def acquire_vm(self, call: KfdCall) -> None:
        a = call.args
        try:
            file = call.get_file(a.drm_fd)
        except BadFd:
            raise InvalidArgument(f"drm_fd {a.drm_fd} is not open") from None
        node = self.node_of(a.gpu_id)
        if not isinstance(file, AccelFile) or file.device is not node.dev:
            raise InvalidArgument(
                f"drm_fd {a.drm_fd} is not a file of gpu {a.gpu_id}'s "
                f"accel node {node.dev.node_path}"
            )
        pdd = self.pdd_of(call.process, a.gpu_id)
        if pdd.accel_file is not None:
            if pdd.accel_file is file:
                return
            raise Busy(f"process already acquired a VM on gpu {a.gpu_id} from another file")
        with node.dev.enter():
            node.dev.ownership.require(file)
        doorbell = node.gpu.alloc_doorbell_page()
        file.get()
        pdd.accel_file, pdd.vm, pdd.doorbell_index = file, file.context, doorbell

    def _apertures(self, call: KfdCall) -> list[Any]:
        out = []
        for i, node in enumerate(self.gpus.values()):
            ap = U.new("struct kfd_process_device_apertures")
            ap.lds_base = (1 << 48) + (i << 40)
            ap.lds_limit = ap.lds_base + 0xFFFF_FFFF
            ap.scratch_base = (2 << 48) + (i << 40)
            ap.scratch_limit = ap.scratch_base + 0xFFFF_FFFF
            ap.gpuvm_base, ap.gpuvm_limit, ap.gpu_id = GPUVM_BASE, GPUVM_LIMIT, node.gpu_id
            out.append(ap)
        return out

    @ioctl("DRM_IOCTL_KFD_GET_PROCESS_APERTURES")
    @kfd_only
    def get_process_apertures(self, call: KfdCall) -> None:
        aps = self._apertures(call)[:7]
        for i, ap in enumerate(aps):
            call.args.process_apertures[i] = ap[0]
        call.args.num_of_nodes = len(aps)

    @ioctl("DRM_IOCTL_KFD_GET_PROCESS_APERTURES_NEW")
    @kfd_only
    def get_process_apertures_new(self, call: KfdCall) -> None:
        a = call.args
        aps = self._apertures(call)
        if a.num_of_nodes == 0:
            a.num_of_nodes = len(aps)
            return
        aps = aps[: a.num_of_nodes]
        call.copy_to_user(
            a.kfd_process_device_apertures_ptr, b"".join(U.to_bytes(ap) for ap in aps)
        )
        a.num_of_nodes = len(aps)

    # -- introspection (tests, tools) -----------------------------------------------------
    def page_tables(self, pid: int) -> dict[int, tuple[tuple[int, int, str, bool], ...]]:
        """Process ``pid``'s page table on every GPU where it has a VM, by gpu_id."""
        p = self.processes.get(pid)
        if p is None:
            return {}
        return {gid: pdd.vm.snapshot() for gid, pdd in sorted(p.pdds.items()) if pdd.vm is not None}

    def accounting(self) -> dict[str, int]:
        """Counts of KFD objects, for leak checks next to ``Subsystem.accounting``."""
        procs = list(self.processes.values())
        gpus = list(self.gpus.values())
        return {
            "kfd_processes": len(procs),
            "kfd_mems": sum(len(p.all_mems()) for p in procs),
            "kfd_queues": sum(len(p.queues) for p in procs),
            "kfd_events": sum(len(p.events) for p in procs),
            "hw_queues": sum(len(n.cp.queues) for n in gpus),
            "gpu_vms": sum(len(n.gpu.page_tables) for n in gpus),
            "pt_entries": sum(len(pt) for n in gpus for pt in n.gpu.page_tables.values()),
            "vram_used": sum(n.gpu.vram.used for n in gpus),
            "gtt_used": sum(n.gpu.gtt_used for n in gpus),
        }
