"""ALLOC_MEMORY_OF_GPU's rules and backings, as tables.

Exactly one memory type; each attribute flag names the types it makes sense
with; anything else is ``EINVAL`` with a message naming the flags. The backing
of each type:

* ``VRAM`` — a range of the GPU's VRAM (BAR0) as a buffer object, CPU-mappable
  through the acquired accel file at ``mmap_offset``;
* ``GTT`` — system memory (a memfd) as a buffer object, mappable the same way;
* ``USERPTR`` — the process's own memory at ``mmap_offset`` (pinned);
* ``DOORBELL`` — the process's doorbell page of the GPU (one page exactly).
"""

from __future__ import annotations

from accelcore import PAGE_SIZE, BufferObject, InvalidArgument, NoMemory

from .abi import KFD_UAPI
from .process import KfdMem, Pdd

__all__ = ["GPUVM_BASE", "GPUVM_LIMIT", "MEM_TYPES", "check_alloc_flags", "make_backing"]

U = KFD_UAPI
VRAM = U.KFD_IOC_ALLOC_MEM_FLAGS_VRAM
GTT = U.KFD_IOC_ALLOC_MEM_FLAGS_GTT
USERPTR = U.KFD_IOC_ALLOC_MEM_FLAGS_USERPTR
DOORBELL = U.KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL
MMIO_REMAP = U.KFD_IOC_ALLOC_MEM_FLAGS_MMIO_REMAP

#: Memory types by flag; MMIO_REMAP is valid uAPI but this GPU has no remap page.
MEM_TYPES: dict[int, str] = {
    VRAM: "vram",
    GTT: "gtt",
    USERPTR: "userptr",
    DOORBELL: "doorbell",
    MMIO_REMAP: "mmio_remap",
}

_MEMORY = VRAM | GTT | USERPTR
#: Attribute flag → the memory types it may be combined with.
ATTRIBUTES: dict[int, tuple[str, int]] = {
    U.KFD_IOC_ALLOC_MEM_FLAGS_WRITABLE: ("WRITABLE", _MEMORY | DOORBELL | MMIO_REMAP),
    U.KFD_IOC_ALLOC_MEM_FLAGS_EXECUTABLE: ("EXECUTABLE", _MEMORY),
    U.KFD_IOC_ALLOC_MEM_FLAGS_PUBLIC: ("PUBLIC", VRAM),
    U.KFD_IOC_ALLOC_MEM_FLAGS_NO_SUBSTITUTE: ("NO_SUBSTITUTE", VRAM),
    U.KFD_IOC_ALLOC_MEM_FLAGS_AQL_QUEUE_MEM: ("AQL_QUEUE_MEM", _MEMORY),
    U.KFD_IOC_ALLOC_MEM_FLAGS_COHERENT: ("COHERENT", _MEMORY),
    U.KFD_IOC_ALLOC_MEM_FLAGS_UNCACHED: ("UNCACHED", _MEMORY),
    U.KFD_IOC_ALLOC_MEM_FLAGS_EXT_COHERENT: ("EXT_COHERENT", _MEMORY),
    U.KFD_IOC_ALLOC_MEM_FLAGS_CONTIGUOUS_BEST_EFFORT: ("CONTIGUOUS_BEST_EFFORT", VRAM),
}
_KNOWN = sum(MEM_TYPES) | sum(ATTRIBUTES)

#: The GPU VM aperture every process gets on every GPU.
GPUVM_BASE = 0x1_0000
GPUVM_LIMIT = (1 << 47) - 1


def check_alloc_flags(flags: int) -> int:
    """Validate ``flags``; returns the memory-type flag.

    Raises:
        InvalidArgument: unknown bits, not exactly one memory type, an attribute
            that makes no sense with the type, or MMIO_REMAP (not on this GPU).
    """
    if flags & ~_KNOWN & 0xFFFF_FFFF:
        raise InvalidArgument(
            f"alloc flags {flags:#x} have unknown bits {flags & ~_KNOWN & 0xFFFF_FFFF:#x}"
        )
    types = [t for t in MEM_TYPES if flags & t]
    if len(types) != 1:
        raise InvalidArgument(
            f"alloc flags {flags:#x} name {len(types)} memory types "
            f"({[MEM_TYPES[t] for t in types]}); exactly one is needed"
        )
    mem_type = types[0]
    for bit, (name, allowed) in ATTRIBUTES.items():
        if flags & bit and not allowed & mem_type:
            raise InvalidArgument(
                f"alloc flag {name} makes no sense with "
                f"{MEM_TYPES[mem_type].upper()} memory (flags {flags:#x})"
            )
    if mem_type == MMIO_REMAP:
        raise InvalidArgument("MMIO_REMAP: this GPU has no MMIO remap page")
    return mem_type


def check_va(va: int, size: int) -> None:
    """The VA range must be page-aligned, non-empty and inside the GPUVM aperture.

    Raises:
        InvalidArgument: names the bad value.
    """
    if size == 0:
        raise InvalidArgument("allocation size is 0")
    if va % PAGE_SIZE or size % PAGE_SIZE:
        raise InvalidArgument(f"VA {va:#x} and size {size:#x} must be page-aligned")
    if va < GPUVM_BASE or va + size - 1 > GPUVM_LIMIT:
        raise InvalidArgument(
            f"VA range [{va:#x}, {va + size:#x}) is outside the GPUVM "
            f"aperture [{GPUVM_BASE:#x}, {GPUVM_LIMIT:#x}]"
        )


def make_backing(
    pdd: Pdd,
    handle: int,
    mem_type: int,
    va: int,
    size: int,
    flags: int,
    user_view: memoryview | None,
) -> KfdMem:
    """Allocate the backing of a new allocation.

    Args:
        pdd: The process's data on the allocating GPU.
        handle: The new handle.
        mem_type: From :func:`check_alloc_flags`.
        va, size, flags: As the caller gave them (checked).
        user_view: The pinned user memory, for USERPTR.

    Raises:
        NoMemory: VRAM is exhausted, or GTT past the GPU's system-memory limit.
        InvalidArgument: a DOORBELL allocation that is not one page.
    """
    node = pdd.node
    kind = MEM_TYPES[mem_type]
    if mem_type == VRAM:
        # A block of its own (a new memfd: zeroed, and no other allocation's
        # bytes are reachable through it); the buffer object holds it, and
        # CPU mappings hold the buffer object, so FREE_MEMORY_OF_GPU under a
        # live mapping returns the VRAM only at the last munmap.
        block = node.gpu.vram.alloc(size, f"kfd-vram-{handle:#x}")
        try:
            bo = BufferObject(
                node.dev, size, region="vram", name=f"kfd-vram-{handle:#x}", block=block
            )
        except BaseException:
            block.put()
            raise
        return KfdMem(handle, node, va, size, flags, kind, bo.view, bo=bo)
    if mem_type == GTT:
        gpu = node.gpu
        if size > gpu.gtt_limit - gpu.gtt_used:
            # amdgpu_amdkfd_reserve_mem_limit: system memory the GPU may use is capped.
            raise NoMemory(
                f"GTT allocation of {size:#x} bytes exceeds the limit "
                f"({gpu.gtt_used:#x} of {gpu.gtt_limit:#x} bytes in use)"
            )

        def unreserve(bo: BufferObject) -> None:
            gpu.gtt_used -= bo.size

        bo = BufferObject(
            node.dev, size, region="gtt", name=f"kfd-gtt-{handle:#x}", on_free=unreserve
        )
        gpu.gtt_used += bo.size
        return KfdMem(handle, node, va, size, flags, kind, bo.view, bo=bo)
    if mem_type == USERPTR:
        assert user_view is not None
        view = user_view
        return KfdMem(handle, node, va, size, flags, kind, lambda: view)
    if size != PAGE_SIZE:
        raise InvalidArgument(
            f"DOORBELL allocation size {size:#x} must be the process "
            f"doorbell slice ({PAGE_SIZE:#x})"
        )
    index = pdd.doorbell_index
    assert index is not None
    page = node.gpu.doorbell_page(index)
    return KfdMem(handle, node, va, size, flags, kind, lambda: page)
