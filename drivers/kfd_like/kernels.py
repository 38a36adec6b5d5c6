"""The GPU's kernels: what a dispatch packet can run, as a table.

Each kernel reads and writes GPU virtual addresses through the queue's VM
(``mem(va, length, write)`` translates or raises
:class:`~drivers.kfd_like.gpu.GpuVmFault`) and computes with numpy. ``traffic``
gives the bytes it moves, from which the command processor derives its run time.
A kernel that streams through memory (``memset``) works in chunks of
:data:`~accelcore.memory.FILL_CHUNK` bytes and calls ``resched()`` between them:
the command processor lets other threads into the engine there, and raises to
stop the kernel if its queue was removed meanwhile. Each chunk translates its
addresses again, so nothing translated before the gap is used after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from accelcore import FILL_CHUNK

from .abi import KFD_UAPI

__all__ = ["KERNELS", "Kernel", "MemFn", "ReschedFn", "run_time_ns"]

#: Translate ``(va, length, write)`` to the bytes behind it.
MemFn = Callable[[int, int, bool], memoryview]
#: Between two chunks of a long kernel: let others in; raises to stop the kernel.
ReschedFn = Callable[[], None]

#: Fixed cost of a dispatch, and bytes moved per nanosecond.
LAUNCH_NS = 2_000
BYTES_PER_NS = 64

_F32 = 4


@dataclass(frozen=True, slots=True)
class Kernel:
    """One kernel: its name, its body and the bytes it moves for given arguments."""

    name: str
    run: Callable[[MemFn, Sequence[int], ReschedFn], None]
    traffic: Callable[[Sequence[int]], int]


def _dims(args: Sequence[int]) -> tuple[int, int, int]:
    return args[3] & 0xFFFF_FFFF, args[3] >> 32, args[4] & 0xFFFF_FFFF


def _memset(mem: MemFn, args: Sequence[int], resched: ReschedFn) -> None:
    dst, count, value = args[0], args[1] & 0xFFFF_FFFF, args[2] & 0xFFFF_FFFF
    size = count * 4
    for start in range(0, size, FILL_CHUNK):
        if start:
            resched()
        n = min(FILL_CHUNK, size - start)
        np.frombuffer(mem(dst + start, n, True), np.uint32)[:] = value


def _vector_add(mem: MemFn, args: Sequence[int], resched: ReschedFn) -> None:
    n = args[3] & 0xFFFF_FFFF
    a = np.frombuffer(mem(args[0], n * _F32, False), np.float32)
    b = np.frombuffer(mem(args[1], n * _F32, False), np.float32)
    c = np.frombuffer(mem(args[2], n * _F32, True), np.float32)
    np.add(a, b, out=c)


def _gemm(mem: MemFn, args: Sequence[int], resched: ReschedFn) -> None:
    m, n, k = _dims(args)
    a = np.frombuffer(mem(args[0], m * k * _F32, False), np.float32).reshape(m, k)
    b = np.frombuffer(mem(args[1], k * n * _F32, False), np.float32).reshape(k, n)
    c = np.frombuffer(mem(args[2], m * n * _F32, True), np.float32).reshape(m, n)
    np.matmul(a, b, out=c)


def _gemm_traffic(args: Sequence[int]) -> int:
    m, n, k = _dims(args)
    return (m * k + k * n + m * n) * _F32


#: Kernels by ``KFD_LIKE_KERNEL_*`` number.
KERNELS: dict[int, Kernel] = {
    KFD_UAPI.KFD_LIKE_KERNEL_MEMSET: Kernel("memset", _memset, lambda a: (a[1] & 0xFFFF_FFFF) * 4),
    KFD_UAPI.KFD_LIKE_KERNEL_VECTOR_ADD: Kernel(
        "vector_add", _vector_add, lambda a: (a[3] & 0xFFFF_FFFF) * 3 * _F32
    ),
    KFD_UAPI.KFD_LIKE_KERNEL_GEMM: Kernel("gemm", _gemm, _gemm_traffic),
}


def run_time_ns(kernel: Kernel, args: Sequence[int]) -> int:
    """Device time a dispatch of ``kernel`` with ``args`` takes."""
    return LAUNCH_NS + kernel.traffic(args) // BYTES_PER_NS
