"""Memory ioctls: ALLOC/FREE, MAP/UNMAP on several GPUs (seed 004), dma-buf.

MAP_MEMORY_TO_GPU and UNMAP_MEMORY_FROM_GPU follow ``kfd_chardev.c``:

* ``n_devices == 0`` or ``n_success > n_devices`` → ``EINVAL``; the id array is
  read from user memory (``EFAULT`` if it is not all there);
* for ``i`` from ``n_success``: look the GPU up (``EINVAL``), dispatch the
  page-table update on its SDMA engine, then ``n_success = i + 1``. A GPU already
  mapped (unmapped) is a no-op, so a restart redoes nothing;
* then wait for the updates of the first ``n_success`` GPUs, one interruptible
  wait point per GPU whose update is still running;
* a failure part-way keeps the earlier mappings (nothing is rolled back) and
  returns the error with ``n_success`` copied out. Unlike the kernel, the
  updates of those ``n_success`` GPUs are waited for first, so what
  ``n_success`` reports is complete when the call returns, success or not.

Restart after an interrupt at any wait point: ``n_success`` already equals the
number of dispatched GPUs, so the restarted call dispatches nothing more and
only waits; the end state is that of an uninterrupted call.
"""

from __future__ import annotations

import array
from typing import TYPE_CHECKING

from accelcore import (
    CORE,
    NSEC_PER_SEC,
    AccelError,
    BufferObject,
    Busy,
    DeviceIOError,
    DmaBuf,
    Fence,
    GemDmaBufOps,
    InvalidArgument,
    NoMemory,
    TimedOut,
    import_dmabuf,
    ioctl,
    require_dmabuf,
)

from .abi import KFD_UAPI, get_gpu_id, mmap_offset
from .base import KfdBase, kfd_only
from .gpu import PageTable, Pte
from .memory import DOORBELL, USERPTR, check_alloc_flags, check_va, make_backing
from .process import GpuNode, KfdMem, KfdProcess, Pdd

if TYPE_CHECKING:
    from accelcore import AccelDevice

    from .chardev import KfdCall

__all__ = ["MemoryIoctls"]

U = KFD_UAPI
#: Longest a MAP/UNMAP waits for one GPU's page-table update.
SYNC_TIMEOUT_NS = 5 * NSEC_PER_SEC


class MemoryIoctls(KfdBase):
    """The memory-management ioctls of ``/dev/kfd``."""

    # -- allocation --------------------------------------------------------------
    @ioctl("DRM_IOCTL_KFD_ALLOC_MEMORY_OF_GPU")
    @kfd_only
    def alloc_memory_of_gpu(self, call: KfdCall) -> None:
        a = call.args
        mem_type = check_alloc_flags(a.flags)
        check_va(a.va_addr, a.size)
        pdd = self.pdd_of(call.process, a.gpu_id)
        pdd.require_vm()
        self._check_free_va(call.process, a.va_addr, a.size)
        user_view = None
        if mem_type == USERPTR:
            if a.mmap_offset % 4096:
                raise InvalidArgument(f"USERPTR address {a.mmap_offset:#x} is not page-aligned")
            user_view = call.user_view(a.mmap_offset, a.size, write=True)
        handle = pdd.new_handle()
        mem = make_backing(
            pdd, handle, mem_type, int(a.va_addr), int(a.size), int(a.flags), user_view
        )
        pdd.mems[handle & 0xFFFF_FFFF] = mem
        a.handle = handle
        if mem.bo is not None:
            a.mmap_offset = pdd.node.dev.mmap_offset(mem.bo)
        elif mem_type == DOORBELL:
            a.mmap_offset = mmap_offset(U.KFD_MMAP_TYPE_DOORBELL, pdd.node.gpu_id)

    @ioctl("DRM_IOCTL_KFD_FREE_MEMORY_OF_GPU")
    @kfd_only
    def free_memory_of_gpu(self, call: KfdCall) -> None:
        handle = int(call.args.handle)
        mem = call.process.lookup_mem(handle)
        if mem is None:
            raise InvalidArgument(f"no memory with handle {handle:#x}")
        if mem.mapped:
            raise Busy(f"memory {handle:#x} is still mapped on gpus {sorted(mem.mapped)}")
        self.free_mem(call.process, mem)

    def free_mem(self, process: KfdProcess, mem: KfdMem) -> None:
        """Forget ``mem``'s handle, drop what is left of its mappings, free it."""
        pdd = process.pdds[get_gpu_id(mem.handle)]
        del pdd.mems[mem.handle & 0xFFFF_FFFF]
        for other in process.pdds.values():
            if other.vm is not None:
                other.vm.unmap(mem.va, mem)  # updates still queued become no-ops
        mem.mapped.clear()
        mem.release()

    def _check_free_va(self, process: KfdProcess, va: int, size: int) -> None:
        for m in process.all_mems():
            if va < m.va + m.size and m.va < va + size:
                raise InvalidArgument(
                    f"VA range [{va:#x}, {va + size:#x}) overlaps "
                    f"allocation {m.handle:#x} at {m.va:#x}"
                )

    # -- mapping on several GPUs (seed 004) --------------------------------------------
    #: The conformance suite's partial-failure hook: the device position at which
    #: the next MAP/UNMAP fails (``None``: no failure planned).
    _fail_at: int | None = None

    def inject_failure(self, dev: AccelDevice, position: int) -> None:
        """Make the next MAP or UNMAP fail with ``ENOMEM`` when it reaches the device
        at ``position`` of its ``device_ids_array`` (the conformance suite's
        ``inject_failure`` hook; inert unless called)."""
        del dev  # one driver-wide plan: /dev/kfd calls span every GPU
        self._fail_at = position

    def _injected_failure(self, position: int) -> None:
        if self._fail_at == position:
            self._fail_at = None
            raise NoMemory(f"injected failure at device position {position}")

    @ioctl("DRM_IOCTL_KFD_MAP_MEMORY_TO_GPU", waits=True, multi_device=True)
    @kfd_only
    def map_memory_to_gpu(self, call: KfdCall) -> None:
        self._map_or_unmap(call, mapping=True)

    @ioctl("DRM_IOCTL_KFD_UNMAP_MEMORY_FROM_GPU", waits=True, multi_device=True)
    @kfd_only
    def unmap_memory_from_gpu(self, call: KfdCall) -> None:
        self._map_or_unmap(call, mapping=False)

    def _map_or_unmap(self, call: KfdCall, *, mapping: bool) -> None:
        a = call.args
        if a.n_devices == 0:
            raise InvalidArgument("n_devices is 0")
        if a.n_success > a.n_devices:
            raise InvalidArgument(f"n_success {a.n_success} > n_devices {a.n_devices}")
        raw = call.copy_from_user(a.device_ids_array_ptr, 4 * a.n_devices)
        ids = array.array("I", raw).tolist()
        process = call.process
        mem = self._mem_for_map(process, int(a.handle))
        if not mapping and a.n_success == 0 and not mem.mapped:
            raise InvalidArgument(f"memory {mem.handle:#x} is not mapped on any GPU")
        failure: AccelError | None = None
        try:
            for i in range(a.n_success, a.n_devices):
                self._injected_failure(i)
                pdd = self.pdd_of(process, ids[i])
                vm = pdd.require_vm()
                if mapping:
                    self._map_on(mem, pdd, vm)
                else:
                    self._unmap_on(mem, pdd.node, vm)
                a.n_success = i + 1
        except AccelError as exc:
            failure = exc
        self._sync(call, mem.mapped if mapping else mem.unmapping, ids[: a.n_success])
        if failure is not None:
            raise failure

    def _mem_for_map(self, process: KfdProcess, handle: int) -> KfdMem:
        self.node_of(get_gpu_id(handle))  # EINVAL for a handle of no GPU
        mem = process.lookup_mem(handle)
        if mem is None:
            # kfd_chardev.c answers a stale handle with ENOMEM here (not EINVAL).
            raise NoMemory(f"no memory with handle {handle:#x} (freed?)")
        return mem

    def _map_on(self, mem: KfdMem, pdd: Pdd, vm: PageTable) -> None:
        gpu_id = pdd.node.gpu_id
        if gpu_id in mem.mapped:
            return
        pte = Pte(mem.va, mem.size, mem, mem.writable)

        def update() -> None:
            if not vm.dead and mem.mapped.get(gpu_id) is fence:
                vm.map(pte)

        fence = pdd.node.gpu.submit_pt_update(update)
        mem.mapped[gpu_id] = fence
        mem.unmapping.pop(gpu_id, None)

    def _unmap_on(self, mem: KfdMem, node: GpuNode, vm: PageTable) -> None:
        if node.gpu_id not in mem.mapped:
            return
        fence = node.gpu.submit_pt_update(lambda: vm.unmap(mem.va, mem))
        del mem.mapped[node.gpu_id]
        mem.unmapping[node.gpu_id] = fence

    def _sync(self, call: KfdCall, fences: dict[int, Fence], ids: list[int]) -> None:
        """Wait for the updates of ``ids``: one interruptible wait point per GPU."""
        for gpu_id in dict.fromkeys(ids):
            fence = fences.get(gpu_id)
            if fence is None:
                continue
            if not call.wait_fences([fence], SYNC_TIMEOUT_NS):
                raise TimedOut(f"page-table update on gpu {gpu_id} did not complete")
            if fence.error:
                raise DeviceIOError(f"page-table update on gpu {gpu_id} failed: {fence.error}")

    # -- dma-buf -------------------------------------------------------------------------
    @ioctl("DRM_IOCTL_KFD_EXPORT_DMABUF")
    @kfd_only
    def export_dmabuf(self, call: KfdCall) -> None:
        a = call.args
        valid = CORE.DRM_CLOEXEC | CORE.DRM_RDWR
        if a.flags & ~valid:
            raise InvalidArgument(f"export flags {a.flags:#o} have unknown bits")
        mem = call.process.lookup_mem(int(a.handle))
        if mem is None:
            raise InvalidArgument(f"no memory with handle {int(a.handle):#x}")
        bo = mem.bo
        if bo is None:
            raise InvalidArgument(f"{mem.kind.upper()} memory {mem.handle:#x} cannot be exported")
        if bo.import_attach is not None:
            dmabuf = bo.import_attach.dmabuf
            dmabuf.get()
        elif bo.dma_buf is not None and not bo.dma_buf.released:
            dmabuf = bo.dma_buf
            dmabuf.get()
        else:
            accel_file = call.process.pdds[mem.node.gpu_id].accel_file
            assert accel_file is not None
            dmabuf = self.prime_export(accel_file, bo, int(a.flags))
            bo.dma_buf = dmabuf
        try:
            a.dmabuf_fd = call.install_fd(dmabuf, cloexec=bool(a.flags & CORE.DRM_CLOEXEC))
        except AccelError:
            dmabuf.put()
            raise

    @ioctl("DRM_IOCTL_KFD_IMPORT_DMABUF")
    @kfd_only
    def import_dmabuf(self, call: KfdCall) -> None:
        a = call.args
        pdd = self.pdd_of(call.process, a.gpu_id)
        pdd.require_vm()
        dmabuf = require_dmabuf(call.get_file(a.dmabuf_fd), a.dmabuf_fd)
        check_va(a.va_addr, dmabuf.size)
        self._check_free_va(call.process, a.va_addr, dmabuf.size)
        bo = self._import_bo(pdd.node, dmabuf)
        handle = pdd.new_handle()
        flags = (
            (
                U.KFD_IOC_ALLOC_MEM_FLAGS_VRAM
                if bo.region == "vram"
                else U.KFD_IOC_ALLOC_MEM_FLAGS_GTT
            )
            | U.KFD_IOC_ALLOC_MEM_FLAGS_WRITABLE
            | U.KFD_IOC_ALLOC_MEM_FLAGS_EXECUTABLE
        )
        pdd.mems[handle & 0xFFFF_FFFF] = KfdMem(
            handle, pdd.node, int(a.va_addr), bo.size, flags, "import", bo.view, bo=bo
        )
        a.handle = handle

    def _import_bo(self, node: GpuNode, dmabuf: DmaBuf) -> BufferObject:
        own = dmabuf.priv
        if (
            isinstance(dmabuf.ops, GemDmaBufOps)
            and isinstance(own, BufferObject)
            and own.device.driver is self
        ):
            return own.get()  # one of ours: share the buffer object, as amdgpu does
        return import_dmabuf(node.dev, dmabuf, f"kfd-import:{dmabuf.exporter}")
