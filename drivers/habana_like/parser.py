"""The CS parser: user command buffers in, kernel-owned patched buffers out.

As habanalabs' ``goya_parse_cb_mmu``: the user's CB (which user space can still
write through its mapping) is first **copied**; only the copy is validated and
patched, and only the patched buffer ever reaches an engine, so there is no
window between check and use. Per packet:

==============  ===========================================================
WREG32          only into the sync-object window (else ``EINVAL``)
MSG_LONG        address must be a writable mapping of this context
FENCE, NOP      copied as they are
LIN_DMA         DMA queues only; ``tsize == 0`` or a wrapping range ``EINVAL``;
                source and destination must lie inside one mapping of this
                context of the kind the direction names (else ``EFAULT``)
KERNEL          compute queue only; known kernel, dims 1..HLK_KERNEL_MAX_DIM,
                4-byte aligned device-memory operands inside this context's
                mappings (``EFAULT``), unused operands 0
WREG_BULK, MSG_SHORT, CP_DMA, MSG_PROT, STOP
                refused with ``EINVAL`` ("user not allowed to use ...")
==============  ===========================================================

Every address is rewritten from a device VA to an engine-physical address, so an
engine never sees a user address. (habanalabs answers some of these with
``EPERM``; the habana_like uAPI uses ``EINVAL`` for every forbidden packet.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from accelcore import InvalidArgument

from .kernels import KERNELS, operand_bytes
from .memory import MapKind, VaMapping, VaSpace
from .packets import Packet, PacketError, encode, iter_packets
from .uapi import HLK

__all__ = ["ParsedJob", "parse_cb"]

_FORBIDDEN = {
    HLK.HLK_PACKET_WREG_BULK: "WREG_BULK",
    HLK.HLK_PACKET_MSG_SHORT: "MSG_SHORT",
    HLK.HLK_PACKET_CP_DMA: "CP_DMA",
    HLK.HLK_PACKET_MSG_PROT: "MSG_PROT",
    HLK.HLK_PACKET_STOP: "STOP",
}
_DMA_QUEUES = (HLK.HLK_QUEUE_ID_DMA_0, HLK.HLK_QUEUE_ID_DMA_1)
_DRAM = (MapKind.DRAM,)
_HOST = (MapKind.HOST,)
_ANY = (MapKind.DRAM, MapKind.HOST)
#: (source kinds, destination kinds) per LIN_DMA direction.
_DIRECTIONS = {
    HLK.HLK_DMA_HOST_TO_DRAM: (_HOST, _DRAM),
    HLK.HLK_DMA_DRAM_TO_HOST: (_DRAM, _HOST),
    HLK.HLK_DMA_DRAM_TO_DRAM: (_DRAM, _DRAM),
}
_SOB_END = HLK.HLK_SOB_BASE + 4 * HLK.HLK_SOB_COUNT


@dataclass(frozen=True, slots=True)
class ParsedJob:
    """A validated job: the patched CB (without completion packets) and the
    mappings it uses (held busy until the job is done)."""

    queue: int
    patched: bytes
    mappings: tuple[VaMapping, ...]


def parse_cb(space: VaSpace, queue: int, user_cb: bytes) -> ParsedJob:
    """Validate a copy of a user CB for ``queue`` and patch its addresses.

    Args:
        space: The submitting context's VA space.
        queue: ``HLK_QUEUE_ID_*`` (already range-checked).
        user_cb: The bytes copied from the user's CB.

    Returns:
        The patched job.

    Raises:
        InvalidArgument: undecodable buffer, forbidden packet or register, packet
            on the wrong queue, size 0, wrapping range, bad kernel parameters.
        BadAddress: an address outside the context's mappings.
    """
    try:
        packets = list(iter_packets(user_cb))
    except PacketError as exc:
        raise InvalidArgument(f"command buffer for queue {queue}: {exc}") from None
    out: list[bytes] = []
    used: dict[int, VaMapping] = {}
    for p in packets:
        patched = _patch(space, queue, p, used)
        out.append(encode(patched))
    return ParsedJob(queue, b"".join(out), tuple(used.values()))


def _translate(
    space: VaSpace, va: int, size: int, kinds: tuple[MapKind, ...], used: dict[int, VaMapping]
) -> int:
    phys, mapping = space.translate(va, size, kinds)
    used[id(mapping)] = mapping
    return phys


def _patch(space: VaSpace, queue: int, p: Packet, used: dict[int, VaMapping]) -> Packet:
    op = p.opcode
    where = f"packet {op:#x} at CB offset {p.offset:#x}"
    if op in _FORBIDDEN:
        raise InvalidArgument(f"user not allowed to use {_FORBIDDEN[op]} ({where})")
    if op == HLK.HLK_PACKET_WREG_32:
        reg = p.ctl & HLK.HLK_WREG32_REG_MASK
        if not HLK.HLK_SOB_BASE <= reg < _SOB_END or reg % 4:
            raise InvalidArgument(
                f"WREG32 packet with illegal address {reg:#x} ({where}); "
                f"only the SOB window {HLK.HLK_SOB_BASE:#x}.."
                f"{_SOB_END - 1:#x} is writable"
            )
        return p
    if op in (HLK.HLK_PACKET_NOP, HLK.HLK_PACKET_FENCE):
        return p
    if op == HLK.HLK_PACKET_MSG_LONG:
        return replace(p, words=(_translate(space, p.words[0], 4, _ANY, used),))
    if op == HLK.HLK_PACKET_LIN_DMA:
        return _patch_dma(space, queue, p, used, where)
    if op == HLK.HLK_PACKET_KERNEL:
        return _patch_kernel(space, queue, p, used, where)
    raise InvalidArgument(f"invalid packet id {op:#x} ({where})")  # pragma: no cover


def _patch_dma(
    space: VaSpace, queue: int, p: Packet, used: dict[int, VaMapping], where: str
) -> Packet:
    if queue not in _DMA_QUEUES:
        raise InvalidArgument(f"LIN_DMA on queue {queue}, which is no DMA queue ({where})")
    size = p.value
    if size == 0:
        raise InvalidArgument(f"got DMA with size 0, might reset the device ({where})")
    direction = (p.ctl & HLK.HLK_LIN_DMA_DIR_MASK) >> HLK.HLK_LIN_DMA_DIR_SHIFT
    kinds = _DIRECTIONS.get(direction)
    if kinds is None:
        raise InvalidArgument(f"LIN_DMA direction {direction} is not supported ({where})")
    src, dst = p.words
    dst_phys = _translate(space, dst, size, kinds[1], used)
    if p.ctl & HLK.HLK_LIN_DMA_CTL_MEMSET:
        return replace(p, words=(src & 0xFF, dst_phys))  # src is the fill byte
    return replace(p, words=(_translate(space, src, size, kinds[0], used), dst_phys))


def _patch_kernel(
    space: VaSpace, queue: int, p: Packet, used: dict[int, VaMapping], where: str
) -> Packet:
    if queue != HLK.HLK_QUEUE_ID_COMPUTE_0:
        raise InvalidArgument(f"KERNEL on queue {queue}, which is no compute queue ({where})")
    if p.value not in KERNELS:
        raise InvalidArgument(f"unknown kernel {p.value} ({where})")
    m, n, k, _imm = p.dims
    for name, dim in (("m", m), ("n", n), ("k", k)):
        if not 1 <= dim <= HLK.HLK_KERNEL_MAX_DIM:
            raise InvalidArgument(
                f"kernel dimension {name}={dim} is outside 1..{HLK.HLK_KERNEL_MAX_DIM} ({where})"
            )
    words = []
    for name, addr, nbytes in zip("abc", p.words, operand_bytes(p.value, m, n, k), strict=True):
        if nbytes == 0:
            if addr:
                raise InvalidArgument(
                    f"operand {name} of kernel {KERNELS[p.value].name} is unused and must be 0"
                )
            words.append(0)
            continue
        if addr % 4:
            raise InvalidArgument(f"operand {name} at {addr:#x} is not 4-byte aligned ({where})")
        words.append(_translate(space, addr, nbytes, _DRAM, used))
    return replace(p, words=tuple(words))
