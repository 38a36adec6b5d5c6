"""kfd_like: an amdkfd-shaped reference driver (issue 6, seed 004).

* :class:`KfdLikeDriver` — ``/dev/kfd`` for every GPU plus an accel node per GPU;
* :class:`KfdGpu` — the simulated GPU (PCI 1002:74a1), registered as device
  model ``kfd_like`` (options: ``vram_mb``, ``pt_update_ns``, ``poll_ns``);
* :data:`KFD_UAPI` — the loaded ``uapi/kfd_like.h``.
"""

from __future__ import annotations

from accelcore.pci import device_models, register_device_model

from .abi import KFD_UAPI, get_gpu_id, get_idr, make_handle, mmap_offset, split_mmap_offset
from .chardev import KfdCall, KfdFile
from .driver import KfdLikeDriver
from .gpu import GpuVmFault, KfdGpu, PageTable
from .kernels import KERNELS

__all__ = [
    "KERNELS",
    "KFD_UAPI",
    "GpuVmFault",
    "KfdCall",
    "KfdFile",
    "KfdGpu",
    "KfdLikeDriver",
    "PageTable",
    "get_gpu_id",
    "get_idr",
    "make_handle",
    "mmap_offset",
    "split_mmap_offset",
]

if "kfd_like" not in device_models():
    register_device_model("kfd_like", KfdGpu)
