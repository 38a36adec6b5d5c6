"""The MEMORY ioctl (``HL_IOCTL_MEMORY``) and the dma-buf exporter of device memory.

Ops: ``ALLOC`` device memory (a handle; zeroed, rounded up to pages; ``ENOMEM``
when the DRAM is exhausted), ``FREE`` it (``EINVAL`` while mapped), ``MAP`` it at a
device VA, or with ``HLK_MEM_USERPTR`` pin host user memory and map it,
``UNMAP`` (``EINVAL`` while exported, ``EBUSY`` while a job uses it), and
``EXPORT_DMABUF_FD``: a dma-buf over ``[offset, offset+size)`` of a device-memory
mapping — ``addr`` the mapping's start VA, all three page-aligned, size at least
a page (``EINVAL`` otherwise), as habanalabs' ``export_dmabuf_from_addr``.

The exporter is static and pinned for life (no revoke, no move_notify): the
dma-buf holds the DRAM block, so the memory outlives its context, a reset and its
owner; while it lives, the device's ownership stays pinned (seed 001). It has no
CPU mmap (peer-to-peer only, as habanalabs); importers map it through the core's
``PRIME_FD_TO_HANDLE`` on their own device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from accelcore import (
    CORE,
    PAGE_SIZE,
    AccelError,
    DmaBuf,
    DmaBufOps,
    InvalidArgument,
    IoctlCall,
    IoctlFlags,
    NotSupported,
    ioctl,
    page_align,
)

from .device import DRAM_PHYS_BASE
from .memory import DramBlock, MapKind, VaMapping
from .uapi import HLK

if TYPE_CHECKING:
    from .context import Context, DeviceState

__all__ = ["HlkDmaBufOps", "MemoryMixin"]

_EXPORT_FLAGS = CORE.DRM_CLOEXEC | CORE.DRM_RDWR
_MAP_FLAGS = HLK.HLK_MEM_USERPTR | HLK.HLK_MEM_FORCE_HINT


class HlkDmaBufOps(DmaBufOps):
    """Exporter ops of habana_like device memory: static, not revocable, no mmap."""

    revocable = False

    def __init__(self, name: str, on_release: Callable[[], None]) -> None:
        self.name = name
        self._on_release = on_release

    def release(self, dmabuf: DmaBuf) -> None:
        self._on_release()

    def mmap(self, dmabuf: DmaBuf, offset: int, length: int) -> memoryview:
        raise NotSupported(
            f"dma-buf {dmabuf.inode} of {self.name} is peer-to-peer only; it has no CPU mapping"
        )


def _state(call: IoctlCall) -> DeviceState:
    st: DeviceState = call.device.private
    return st


class MemoryMixin:
    """The MEMORY ioctl of :class:`~drivers.habana_like.driver.HabanaLikeDriver`."""

    @ioctl("DRM_IOCTL_HLK_MEMORY", IoctlFlags.OWNER)
    def memory(self, call: IoctlCall) -> None:
        """Dispatch a MEMORY op (``HLK_MEM_OP_*``)."""
        inp = call.args.input
        op, flags, pad = int(inp.op), int(inp.flags), int(inp.pad)
        if pad:
            raise InvalidArgument(f"hlk_mem_in.pad is {pad:#x}, must be 0")
        ops: dict[int, Callable[[IoctlCall, Any, int], None]] = {
            HLK.HLK_MEM_OP_ALLOC: self._alloc,
            HLK.HLK_MEM_OP_FREE: self._free,
            HLK.HLK_MEM_OP_MAP: self._map,
            HLK.HLK_MEM_OP_UNMAP: self._unmap,
            HLK.HLK_MEM_OP_EXPORT_DMABUF_FD: self._export,
        }
        handler = ops.get(op)
        if handler is None:
            raise InvalidArgument(f"unknown MEMORY op {op}")
        # Read every input before the handler writes the (overlapping) output.
        # (``args`` is the first member of hlk_mem_in, at offset 0 of the kernel copy.)
        values = HLK.from_bytes(
            "union hlk_mem_op_args", bytes(call.buf[: HLK.sizeof("union hlk_mem_op_args")])
        )
        out = call.args.output
        out.handle, out.device_virt_addr, out.fd, out.pad = 0, 0, -1, 0
        handler(call, values, flags)

    def _alloc(self, call: IoctlCall, u: Any, flags: int) -> None:
        size, page = int(u.alloc.mem_size), int(u.alloc.page_size)
        st = _state(call)
        if flags:
            raise InvalidArgument(f"ALLOC flags {flags:#x} must be 0")
        if size == 0:
            raise InvalidArgument("ALLOC of 0 bytes")
        if u.alloc.reserved:
            raise InvalidArgument(f"ALLOC reserved is {int(u.alloc.reserved):#x}, must be 0")
        if page not in (0, st.allocator.page):
            raise InvalidArgument(
                f"page size {page:#x} is not supported (only {st.allocator.page:#x})"
            )
        ctx: Context = call.file.context
        handle = ctx.allocs.next_id()
        # A new memfd: zeroed, so an earlier tenant's data never leaks.
        block = DramBlock(handle, st.allocator.alloc(size, f"hlk-dram-{handle}"))
        ctx.allocs.alloc(block)
        call.args.output.handle = block.handle

    def _free(self, call: IoctlCall, u: Any, flags: int) -> None:
        ctx: Context = call.file.context
        handle = int(u.free.handle)
        block = ctx.allocs.load(handle)
        if block is None:
            raise InvalidArgument(f"no device memory with handle {handle} in this context")
        if block.mapped:
            raise InvalidArgument(f"handle {handle} is mapped, cannot free")
        ctx.allocs.erase(handle)
        block.put()

    def _map(self, call: IoctlCall, u: Any, flags: int) -> None:
        if flags & ~_MAP_FLAGS:
            raise InvalidArgument(f"MAP flags {flags:#x} has unknown bits")
        force = bool(flags & HLK.HLK_MEM_FORCE_HINT)
        ctx: Context = call.file.context
        if flags & HLK.HLK_MEM_USERPTR:
            m = self._map_host(
                call,
                ctx,
                int(u.map_host.host_virt_addr),
                int(u.map_host.mem_size),
                int(u.map_host.hint_addr),
                force,
            )
        else:
            handle = int(u.map_device.handle)
            block = ctx.allocs.load(handle)
            if block is None:
                raise InvalidArgument(f"no device memory with handle {handle} in this context")
            va = ctx.space.reserve(
                block.size, MapKind.DRAM, int(u.map_device.hint_addr), force=force
            )
            block.get()
            block.mapped += 1

            def release(block: DramBlock = block) -> None:
                block.mapped -= 1
                block.put()

            m = VaMapping(
                va, block.size, MapKind.DRAM, DRAM_PHYS_BASE + block.offset, block, release
            )
        ctx.space.insert(m)
        call.args.output.device_virt_addr = m.va

    def _map_host(
        self, call: IoctlCall, ctx: Context, addr: int, size: int, hint: int, force: bool
    ) -> VaMapping:
        if size == 0:
            raise InvalidArgument("host mapping of 0 bytes")
        if addr + size > 1 << 64:
            raise InvalidArgument(f"host range {addr:#x} + {size:#x} overflows")
        st = _state(call)
        view = call.user_view(addr, size, write=True)  # pin_user_pages: EFAULT if unmapped
        try:
            va = ctx.space.reserve(page_align(size), MapKind.HOST, hint, force=force)
            iova = st.fn.dma_map(view)
        except AccelError:
            view.release()
            raise

        def release() -> None:
            st.fn.dma_unmap(iova)
            view.release()

        return VaMapping(va, size, MapKind.HOST, iova, None, release)

    def _unmap(self, call: IoctlCall, u: Any, flags: int) -> None:
        ctx: Context = call.file.context
        ctx.space.remove_any(ctx.space.remove(int(u.unmap.device_virt_addr)))

    def _export(self, call: IoctlCall, u: Any, flags: int) -> None:
        e = u.export_dmabuf_fd
        addr, size, offset = int(e.addr), int(e.mem_size), int(e.offset)
        if flags & ~_EXPORT_FLAGS:
            raise InvalidArgument(f"export flags {flags:#o} has unknown bits")
        if addr % PAGE_SIZE or size % PAGE_SIZE or offset % PAGE_SIZE or size < PAGE_SIZE:
            raise InvalidArgument(
                f"export of {addr:#x} size {size:#x} offset {offset:#x}: "
                f"all must be {PAGE_SIZE:#x}-aligned and size >= a page"
            )
        ctx: Context = call.file.context
        try:
            m = ctx.space.find(addr)
        except InvalidArgument:
            raise InvalidArgument(f"map address {addr:#x} not found") from None
        if m.kind is not MapKind.DRAM or m.block is None:
            raise InvalidArgument(f"{addr:#x} maps host memory; only device memory is exported")
        if offset + size > m.size:
            raise InvalidArgument(
                f"export range {offset:#x}+{size:#x} exceeds the mapping of {m.size:#x} bytes"
            )
        st = _state(call)
        block = m.block.get()
        m.exported += 1
        st.exported += 1
        dev = call.device.get()  # the exported memory is the device's: it lives on

        def released() -> None:
            m.exported -= 1
            st.exported -= 1
            block.put()
            dev.put()

        try:
            dmabuf = DmaBuf(
                HlkDmaBufOps(call.device.driver.name, released),
                block.mem.memory,
                offset,
                size,
                exporter=call.device.name,
                registry=call.device.subsystem.dmabufs,
                priv=block,
                flags=flags,
                resv=block.resv,
            )
        except AccelError:
            released()
            raise
        call.device.ownership.exported(call.file, dmabuf)
        try:
            call.args.output.fd = call.install_fd(dmabuf, cloexec=bool(flags & CORE.DRM_CLOEXEC))
        except AccelError:
            dmabuf.put()
            raise
