"""Fuzzing the CS parser: no command buffer reaches memory outside its own context.

Random packets (valid and invalid opcodes, random control bits, addresses aimed
at the context's own mappings and just past them, at other devices' memory, at
engine-physical addresses and at random) are submitted on random queues. Each is
refused with EINVAL/EFAULT or runs; either way the canaries — DRAM the context
does not own, host memory it did not map, the other device's DRAM — never
change, and the core records no oops.
"""

from __future__ import annotations

import errno
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelcore import Process, VirtualClock
from accelcore.machine import Machine
from drivers.habana_like import HLK, HabanaLikeDriver
from drivers.habana_like.device import DRAM_PHYS_BASE
from drivers.habana_like.packets import PACKET_SIZES
from drivers.habana_like.userlib import HlkClient

OWN = 1 << 16
CANARY = 0xC5
OPCODES = [*PACKET_SIZES, 0x00, 0x06, 0x0C, 0x1F]


def _setup():
    m = Machine(VirtualClock())
    m.bus.populate([{"model": "habana_like", "count": 2, "options": {"dram_mb": 1}}])
    m.add_driver(HabanaLikeDriver())
    victim = Process(m.subsystem)
    vc = HlkClient(victim, victim.open("/dev/accel/accel1"))
    vva = vc.map_device(vc.mem_alloc(OWN))
    proc = Process(m.subsystem)
    hl = HlkClient(proc, proc.open("/dev/accel/accel0"))
    dva = hl.map_device(hl.mem_alloc(OWN))
    host = proc.alloc(2 * 4096)
    hva = hl.map_host(host.addr, 4096)
    spare = proc.alloc(4096)
    # Every allocation but the owner's own is a canary (unallocated DRAM has no
    # pages an engine could reach: an access there is an engine error).
    for dev in m.subsystem.registered_devices():
        for block in dev.private.model.dram.blocks():
            block.memory.fill(0, block.size, CANARY)
    dev0 = m.subsystem.device(0)
    dev0.private.model.dram.fill(0, OWN, 0)  # the owner's block is the first allocation
    host.view[4096:] = bytes([CANARY]) * 4096
    spare.view[:] = bytes([CANARY]) * 4096
    return m, hl, (dva, hva, vva), host, spare


def _addresses(own):
    dva, hva, vva = own
    near = st.sampled_from([dva, hva]).flatmap(
        lambda base: st.integers(-64, OWN + 64).map(lambda d: max(0, base + d))
    )
    return st.one_of(
        near,
        st.just(vva),
        st.integers(0, (1 << 20) - 1).map(lambda x: DRAM_PHYS_BASE + x),
        st.integers(0, (1 << 64) - 1),
        st.sampled_from([0, (1 << 64) - 8, HLK.HLK_DRAM_VA_BASE - 4096]),
    )


def _packet(draw, addr):
    op = draw(st.sampled_from(OPCODES))
    value = draw(st.one_of(st.integers(0, 4096), st.integers(0, (1 << 32) - 1)))
    ctl = (draw(st.integers(0, (1 << 32) - 1)) & ~HLK.HLK_CTL_OPCODE_MASK) | (op << 24)
    if op == HLK.HLK_PACKET_WREG_32 and draw(st.booleans()):
        ctl = (ctl & ~0xFFFF) | (HLK.HLK_SOB_BASE + 4 * draw(st.integers(0, 70)))
    size = PACKET_SIZES.get(op, 8)
    if size == 48:
        dims = [draw(st.one_of(st.integers(1, 8), st.integers(0, 1 << 32 - 1))) for _ in range(3)]
        return struct.pack(
            "<IIIIIIQQQ", draw(st.integers(0, 4)), ctl, *dims, 0, draw(addr), draw(addr), draw(addr)
        )
    words = [draw(addr) for _ in range((size - 8) // 8)]
    return struct.pack("<II", value, ctl) + b"".join(struct.pack("<Q", w) for w in words)


@st.composite
def _cb(draw, own):
    addr = _addresses(own)
    packets = [_packet(draw, addr) for _ in range(draw(st.integers(1, 5)))]
    return b"".join(packets), draw(st.integers(0, HLK.HLK_QUEUE_ID_SIZE))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_command_buffer_escapes_its_context(data):
    m, hl, own, host, spare = _setup()
    cb, queue = data.draw(_cb(own))
    try:
        seq = hl.submit([(hl.cb_with(cb), queue)])
    except OSError as exc:
        assert exc.errno in (errno.EINVAL, errno.EFAULT), exc
    else:
        try:
            hl.wait(seq, timeout_us=3_000_000)
        except OSError as exc:
            assert exc.errno in (errno.EIO, errno.ETIMEDOUT), exc
        m.clock.run_until_idle()
    for dev in m.subsystem.registered_devices():
        for block in dev.private.model.dram.blocks():
            if dev.minor == 0 and block.addr == 0:
                continue  # the owner's own allocation
            assert block.memory.read(0, block.size) == bytes([CANARY]) * block.size
        assert dev.oopses == []
    assert bytes(host.view[4096:]) == bytes([CANARY]) * 4096
    assert bytes(spare.view) == bytes([CANARY]) * 4096
    assert m.subsystem.oopses == []
