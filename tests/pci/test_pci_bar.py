"""BAR declarations, MMIO regions and access checks."""

from __future__ import annotations

import errno
import itertools

import pytest

from accelcore.errors import InvalidArgument
from accelcore.pci import BarKind, BarSpec, MmioFaultReason, MmioRegion, PciBus, SimDevice
from accelcore.pci.config import COMMAND


def _region(offset: int = 0, size: int = 0x10, **kw: object) -> MmioRegion:
    return MmioRegion(offset, size, lambda o, s: 0, lambda o, s, v: None, **kw)  # type: ignore[arg-type]


# -- declarations -------------------------------------------------------------------
def test_bar_size_must_be_power_of_two() -> None:
    with pytest.raises(InvalidArgument, match="0x3000 is not a power of two"):
        BarSpec(0, 0x3000)


def test_io_bar_larger_than_256_rejected() -> None:
    with pytest.raises(InvalidArgument, match="512"):
        BarSpec(0, 512, BarKind.IO)


def test_io_bar_cannot_be_prefetchable() -> None:
    with pytest.raises(InvalidArgument, match="prefetchable"):
        BarSpec(0, 16, BarKind.IO, prefetchable=True)


def test_64bit_bar5_rejected() -> None:
    with pytest.raises(InvalidArgument, match="BAR5"):
        BarSpec(5, 0x1000, BarKind.MEM64)


def test_bar_index_out_of_range_rejected() -> None:
    with pytest.raises(InvalidArgument, match="index 6"):
        BarSpec(6, 0x1000)


def test_overlapping_bars_rejected_at_hot_add(bus: PciBus) -> None:
    class Overlap(SimDevice):
        bars = (BarSpec(0, 0x1000, BarKind.MEM64), BarSpec(1, 0x1000))

    with pytest.raises(InvalidArgument, match="BAR1 overlaps BAR0"):
        bus.hot_add(Overlap())
    assert bus.functions() == []


def test_region_overlap_rejected(scratch) -> None:
    with pytest.raises(InvalidArgument, match="overlaps 'regs'"):
        scratch.bar(0).add_region(_region(0x80, name="late"))


def test_region_outside_bar_rejected(scratch) -> None:
    with pytest.raises(InvalidArgument, match="leaves BAR0"):
        scratch.bar(0).add_region(_region(0xFF8, 0x10))


def test_unimplemented_bar_rejected(scratch) -> None:
    with pytest.raises(InvalidArgument, match="BAR4 is not implemented"):
        scratch.iomap(4)


def test_bar_addresses_do_not_overlap(bus: PciBus, scratch_cls) -> None:
    fns = [bus.hot_add(scratch_cls()) for _ in range(3)]
    spans = sorted((bar.address, bar.address + bar.size) for fn in fns for bar in fn.bars.values())
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    assert all(start % (end - start) == 0 for start, end in spans)


# -- accesses ---------------------------------------------------------------------------
def test_register_read_write(scratch) -> None:
    bar = scratch.iomap(0)
    bar.write32(0x10, 0xCAFE)
    assert bar.read32(0x10) == 0xCAFE
    assert scratch.mmio_faults == []


def test_disallowed_size_faults_and_reads_all_ones(scratch) -> None:
    assert scratch.iomap(0).read16(0x10) == 0xFFFF
    (fault,) = scratch.mmio_faults
    assert (fault.bar, fault.offset, fault.size, fault.reason) == (0, 0x10, 2, MmioFaultReason.SIZE)


def test_disallowed_write_is_dropped(scratch) -> None:
    scratch.iomap(0).write64(0x10, 0x1234)
    assert scratch.device_model.regs == {}
    assert scratch.mmio_faults[0].write


def test_misaligned_access_faults(scratch) -> None:
    assert scratch.iomap(0).read32(0x12) == 0xFFFF_FFFF
    assert scratch.mmio_faults[0].reason is MmioFaultReason.ALIGNMENT


def test_access_beyond_bar_faults(scratch) -> None:
    assert scratch.iomap(0).read32(0x1000) == 0xFFFF_FFFF
    assert scratch.mmio_faults[0].reason is MmioFaultReason.OUT_OF_RANGE


def test_access_with_memory_decode_off_faults(scratch) -> None:
    scratch.config.write(0x04, 2, 0)
    assert scratch.iomap(0).read32(0) == 0xFFFF_FFFF
    assert scratch.mmio_faults[0].reason is MmioFaultReason.DECODE_DISABLED


def test_cpu_access_size_3_is_an_error(scratch) -> None:
    with pytest.raises(InvalidArgument, match="size 3") as exc:
        scratch.iomap(0).read(0, 3)
    assert exc.value.errno == errno.EINVAL


def test_fault_records_device_time(scratch, clock) -> None:
    clock.advance(1234)
    scratch.iomap(0).read8(0)
    assert scratch.mmio_faults[0].time == 1234


def test_ram_bar_is_shared_memory(scratch) -> None:
    bar = scratch.iomap(2)
    bar.write64(0x100, 0x0102030405060708)
    assert bar.memory is not None
    assert bar.memory.read(0x100, 8) == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    bar.memory.write(0x200, b"\xaa\xbb")
    assert bar.read16(0x200) == 0xBBAA


def test_ram_outside_regions_in_register_bar(scratch) -> None:
    bar = scratch.iomap(0)
    bar.write8(0x800, 0x5A)  # no region: the BAR's backing memory answers
    assert bar.read8(0x800) == 0x5A


def test_io_bar_needs_io_decode(bus: PciBus) -> None:
    class IoDev(SimDevice):
        bars = (BarSpec(0, 16, BarKind.IO),)

        def realize(self, fn):  # type: ignore[no-untyped-def]
            fn.bar(0).add_region(MmioRegion(0, 16, lambda o, s: 0x42, lambda o, s, v: None))

    fn = bus.hot_add(IoDev())
    assert fn.iomap(0).read8(0) == 0xFF
    fn.enable_device()
    assert fn.config.read(0x04, 2) & COMMAND.IO
    assert fn.iomap(0).read8(0) == 0x42


def test_io_bar_offset_without_region_faults(bus: PciBus) -> None:
    class IoDev(SimDevice):
        bars = (BarSpec(0, 16, BarKind.IO),)

    fn = bus.hot_add(IoDev())
    fn.enable_device()
    assert fn.iomap(0).read8(0) == 0xFF
    assert fn.mmio_faults[0].reason is MmioFaultReason.UNASSIGNED


def test_region_accepts_rule_rejects(scratch) -> None:
    scratch.bar(0).add_region(_region(0x200, 0x10, accepts=lambda off, size, write: not write))
    scratch.iomap(0).write8(0x200, 1)
    assert scratch.mmio_faults[0].reason is MmioFaultReason.REJECTED


def test_region_with_bad_access_sizes_rejected() -> None:
    with pytest.raises(InvalidArgument, match="access sizes"):
        _region(max_size=3)
