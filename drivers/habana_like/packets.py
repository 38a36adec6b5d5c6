"""The packet format of habana_like command buffers: decode and encode.

Modelled on Goya/Gaudi (``goya_packets.h``): every packet starts with a 32-bit
payload word and a 32-bit ``ctl`` word whose bits 28..24 hold the opcode, so the
opcode is bits 60..56 of the first little-endian u64. Packets are fixed-size per
opcode (the table :data:`PACKET_SIZES`); the layouts are the ``hlk_packet_*``
structs of ``habana_like.h``. User space builds packets with the ``encode_*``
helpers (or by hand in C); the CS parser and the device model decode them with
:func:`iter_packets`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from .uapi import HLK

__all__ = [
    "PACKET_SIZES",
    "Packet",
    "encode_fence",
    "encode_kernel",
    "encode_lin_dma",
    "encode_msg_long",
    "encode_msg_prot",
    "encode_nop",
    "encode_stop",
    "encode_wreg32",
    "iter_packets",
]

#: Bytes of each packet, by opcode; an opcode missing here is invalid.
PACKET_SIZES: dict[int, int] = {
    HLK.HLK_PACKET_WREG_32: 8,
    HLK.HLK_PACKET_WREG_BULK: 8,
    HLK.HLK_PACKET_MSG_LONG: 16,
    HLK.HLK_PACKET_MSG_SHORT: 8,
    HLK.HLK_PACKET_CP_DMA: 16,
    HLK.HLK_PACKET_MSG_PROT: 16,
    HLK.HLK_PACKET_FENCE: 8,
    HLK.HLK_PACKET_LIN_DMA: 24,
    HLK.HLK_PACKET_NOP: 8,
    HLK.HLK_PACKET_STOP: 8,
    HLK.HLK_PACKET_KERNEL: 48,
}

_HDR = struct.Struct("<II")
_MSG = struct.Struct("<IIQ")
_DMA = struct.Struct("<IIQQ")
_KERNEL = struct.Struct("<IIIIIIQQQ")
_OPCODE_SHIFT = HLK.HLK_CTL_OPCODE_SHIFT
_OPCODE_MASK = HLK.HLK_CTL_OPCODE_MASK


@dataclass(frozen=True, slots=True)
class Packet:
    """One decoded packet.

    Attributes:
        offset: Where it starts in the command buffer.
        opcode: ``HLK_PACKET_*``.
        value: The first word (value, tsize, cfg or kernel id).
        ctl: The control word.
        words: The 64-bit fields after the header (addresses), in order.
        dims: ``(m, n, k, imm)`` for a KERNEL packet, else empty.
    """

    offset: int
    opcode: int
    value: int
    ctl: int
    words: tuple[int, ...] = ()
    dims: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        return PACKET_SIZES[self.opcode]


class PacketError(ValueError):
    """A command buffer that cannot be decoded (the parser turns it into EINVAL)."""


def _ctl(opcode: int, extra: int = 0) -> int:
    return ((opcode << _OPCODE_SHIFT) & _OPCODE_MASK) | (extra & ~_OPCODE_MASK & 0xFFFF_FFFF)


def iter_packets(cb: bytes | memoryview) -> Iterator[Packet]:
    """Decode every packet of ``cb``, in order.

    Raises:
        PacketError: an unknown opcode, a packet running past the end, or a
            buffer whose length is not a multiple of 8.
    """
    data = bytes(cb)
    if len(data) % 8:
        raise PacketError(f"command buffer size {len(data)} is not a multiple of 8")
    off = 0
    while off < len(data):
        value, ctl = _HDR.unpack_from(data, off)
        opcode = (ctl & _OPCODE_MASK) >> _OPCODE_SHIFT
        size = PACKET_SIZES.get(opcode)
        if size is None:
            raise PacketError(f"invalid packet id {opcode:#x} at offset {off:#x}")
        if off + size > len(data):
            raise PacketError(
                f"packet {opcode:#x} at offset {off:#x} is out of CB boundary ({len(data)} bytes)"
            )
        if size == 16:
            words: tuple[int, ...] = (_MSG.unpack_from(data, off)[2],)
            dims: tuple[int, ...] = ()
        elif size == 24:
            words = _DMA.unpack_from(data, off)[2:]
            dims = ()
        elif size == 48:
            k = _KERNEL.unpack_from(data, off)
            words, dims = k[6:], k[2:6]
        else:
            words, dims = (), ()
        yield Packet(off, opcode, value, ctl, tuple(words), tuple(dims))
        off += size


def encode(p: Packet) -> bytes:
    """The bytes of a (possibly patched) packet."""
    if p.opcode == HLK.HLK_PACKET_KERNEL:
        return _KERNEL.pack(p.value, p.ctl, *p.dims, *p.words)
    if PACKET_SIZES[p.opcode] == 24:
        return _DMA.pack(p.value, p.ctl, *p.words)
    if PACKET_SIZES[p.opcode] == 16:
        return _MSG.pack(p.value, p.ctl, *p.words)
    return _HDR.pack(p.value, p.ctl)


def encode_nop() -> bytes:
    """A NOP packet."""
    return _HDR.pack(0, _ctl(HLK.HLK_PACKET_NOP))


def encode_stop() -> bytes:
    """A STOP packet (kernel only: user CBs containing it are refused)."""
    return _HDR.pack(0, _ctl(HLK.HLK_PACKET_STOP))


def encode_wreg32(reg: int, value: int) -> bytes:
    """Write ``value`` to register offset ``reg`` (users: only the SOB window)."""
    return _HDR.pack(value & 0xFFFF_FFFF, _ctl(HLK.HLK_PACKET_WREG_32, reg & 0xFFFF))


def encode_msg_long(addr: int, value: int) -> bytes:
    """Write the 32-bit ``value`` to device VA ``addr``."""
    return _MSG.pack(value & 0xFFFF_FFFF, _ctl(HLK.HLK_PACKET_MSG_LONG), addr)


def encode_msg_prot(addr: int, value: int) -> bytes:
    """The kernel's completion packet (user CBs containing it are refused)."""
    return _MSG.pack(value & 0xFFFF_FFFF, _ctl(HLK.HLK_PACKET_MSG_PROT), addr)


def encode_fence(sob: int, target: int, dec: int = 1) -> bytes:
    """Wait until sync object ``sob`` (0..3) reaches ``target``, then subtract ``dec``."""
    cfg = (dec & 0xF) | ((target & 0xFF) << 16) | ((sob & 0x3) << 30)
    return _HDR.pack(cfg, _ctl(HLK.HLK_PACKET_FENCE))


def encode_lin_dma(src: int, dst: int, size: int, direction: int, *, memset: bool = False) -> bytes:
    """Copy ``size`` bytes from ``src`` to ``dst`` (device VAs); with ``memset`` the
    low byte of ``src`` is the fill value."""
    ctl = (direction << HLK.HLK_LIN_DMA_DIR_SHIFT) & HLK.HLK_LIN_DMA_DIR_MASK
    if memset:
        ctl |= HLK.HLK_LIN_DMA_CTL_MEMSET
    return _DMA.pack(size & 0xFFFF_FFFF, _ctl(HLK.HLK_PACKET_LIN_DMA, ctl), src, dst)


def encode_kernel(
    kernel: int,
    *,
    m: int = 1,
    n: int = 1,
    k: int = 1,
    imm: int = 0,
    a: int = 0,
    b: int = 0,
    c: int = 0,
) -> bytes:
    """Run ``kernel`` (``HLK_KERNEL_*``) on float32 operands at device VAs."""
    return _KERNEL.pack(kernel, _ctl(HLK.HLK_PACKET_KERNEL), m, n, k, imm, a, b, c)
