"""The driver's uAPI as Python: the loaded header and the encodings it defines.

KFD packs information into 64-bit values; these helpers are the one place that
knows the layouts (``kfd_priv.h``): memory handles (gpu_id in the high 32 bits,
the per-GPU idr in the low 32) and ``/dev/kfd`` mmap offsets (type in bits
63:62, gpu_id in 61:46, offset in 45:0).
"""

from __future__ import annotations

from pathlib import Path

from accelcore import CORE, load_uapi

__all__ = [
    "KFD_UAPI",
    "get_gpu_id",
    "get_idr",
    "make_handle",
    "mmap_offset",
    "split_mmap_offset",
]

#: The loaded ``uapi/kfd_like.h``.
KFD_UAPI = load_uapi(Path(__file__).with_name("uapi") / "kfd_like.h", include=[CORE])

_OFFSET_MASK = (1 << KFD_UAPI.KFD_MMAP_GPU_ID_SHIFT) - 1


def make_handle(gpu_id: int, idr: int) -> int:
    """``MAKE_HANDLE(gpu_id, idr)``."""
    return (gpu_id << 32) | idr


def get_gpu_id(handle: int) -> int:
    """``GET_GPU_ID(handle)``."""
    return handle >> 32


def get_idr(handle: int) -> int:
    """``GET_IDR_HANDLE(handle)``."""
    return handle & 0xFFFF_FFFF


def mmap_offset(kind: int, gpu_id: int, offset: int = 0) -> int:
    """A ``/dev/kfd`` mmap offset of type ``kind`` for ``gpu_id``."""
    return (
        (kind << KFD_UAPI.KFD_MMAP_TYPE_SHIFT)
        | (gpu_id << KFD_UAPI.KFD_MMAP_GPU_ID_SHIFT)
        | (offset & _OFFSET_MASK)
    )


def split_mmap_offset(value: int) -> tuple[int, int, int]:
    """``(type, gpu_id, offset)`` of a ``/dev/kfd`` mmap offset."""
    return (
        value >> KFD_UAPI.KFD_MMAP_TYPE_SHIFT,
        (value >> KFD_UAPI.KFD_MMAP_GPU_ID_SHIFT) & 0xFFFF,
        value & _OFFSET_MASK,
    )
