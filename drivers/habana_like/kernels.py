"""Compute kernels of the simulated engine: real float32 math with numpy.

The compute engine runs a KERNEL packet by viewing its operands, which the CS
parser has already checked and translated to device memory, as float32 arrays
(row-major) and computing in place. A kernel never allocates device memory and
never touches anything but its operands.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .uapi import HLK

__all__ = ["KERNELS", "KernelSpec", "as_f32", "operand_bytes"]

_F32 = 4


@dataclass(frozen=True, slots=True)
class KernelSpec:
    """What a kernel reads and writes, as element counts of its operands.

    Attributes:
        name: For logs and errors.
        sizes: ``(m, n, k) -> (elements of a, of b, of c)``; 0 = operand unused.
        run: ``run(m, n, k, imm, a, b, c)`` on float32 views (empty when unused).
        flops: ``(m, n, k) -> floating-point operations`` (device time model).
    """

    name: str
    sizes: Callable[[int, int, int], tuple[int, int, int]]
    run: Callable[[int, int, int, int, np.ndarray, np.ndarray, np.ndarray], None]
    flops: Callable[[int, int, int], int]


def _memset(m: int, n: int, k: int, imm: int, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    c[:] = struct.unpack("<f", struct.pack("<I", imm))[0]


def _vadd(m: int, n: int, k: int, imm: int, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    np.add(a, b, out=c)


def _gemm(m: int, n: int, k: int, imm: int, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    # matmul copies overlapping operands first, so aliasing cannot corrupt memory
    # outside ``c``; the result is then merely undefined, as on hardware.
    c.reshape(m, n)[:] = np.matmul(a.reshape(m, k), b.reshape(k, n))


#: The kernels by ``HLK_KERNEL_*`` id.
KERNELS: dict[int, KernelSpec] = {
    HLK.HLK_KERNEL_MEMSET_F32: KernelSpec(
        "memset_f32", lambda m, n, k: (0, 0, m * n), _memset, lambda m, n, k: m * n
    ),
    HLK.HLK_KERNEL_VADD_F32: KernelSpec(
        "vadd_f32", lambda m, n, k: (n, n, n), _vadd, lambda m, n, k: n
    ),
    HLK.HLK_KERNEL_GEMM_F32: KernelSpec(
        "gemm_f32", lambda m, n, k: (m * k, k * n, m * n), _gemm, lambda m, n, k: 2 * m * n * k
    ),
}


def operand_bytes(kernel: int, m: int, n: int, k: int) -> tuple[int, int, int]:
    """Bytes of operands a, b and c of ``kernel`` with dimensions ``m, n, k``."""
    a, b, c = KERNELS[kernel].sizes(m, n, k)
    return a * _F32, b * _F32, c * _F32


def as_f32(view: memoryview | None) -> np.ndarray:
    """A float32 array over device memory (empty for an unused operand)."""
    if view is None:
        return np.empty(0, dtype=np.float32)
    return np.frombuffer(view, dtype=np.float32)
