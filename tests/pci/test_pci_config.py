"""Config space: field masks (RO/RW/W1C), BAR sizing, capability lists, access errors."""

from __future__ import annotations

import errno

import pytest

from accelcore.errors import InvalidArgument
from accelcore.pci import BarKind, BarSpec, ConfigField, ConfigSpace, PciBus, SimDevice
from accelcore.pci.config import STATUS, CapId, ExtCapId


def test_identity_fields(scratch) -> None:
    cs = scratch.config
    assert cs.read(0x00, 2) == 0x1DE5
    assert cs.read(0x02, 2) == 0x0001
    assert cs.read(0x08, 4) == 0x12000002  # class 0x120000, revision 2
    assert cs.read(0x2C, 4) == 0x0100_1DE5


def test_read_only_vendor_ignores_writes(scratch) -> None:
    scratch.config.write(0x00, 2, 0xBEEF)
    assert scratch.config.read(0x00, 2) == 0x1DE5


def test_command_keeps_only_writable_bits(bus: PciBus, scratch_cls) -> None:
    fn = bus.hot_add(scratch_cls())
    fn.config.write(0x04, 2, 0xFFFF)
    assert fn.config.read(0x04, 2) == 0x0547


def test_status_error_bit_is_write_one_to_clear(scratch) -> None:
    cs = scratch.config
    cs.update_bits("status", STATUS.SIG_SYSTEM_ERROR | STATUS.REC_MASTER_ABORT, True)
    cs.write(0x06, 2, STATUS.SIG_SYSTEM_ERROR)
    assert cs.read(0x06, 2) & STATUS.SIG_SYSTEM_ERROR == 0
    assert cs.read(0x06, 2) & STATUS.REC_MASTER_ABORT


def test_status_write_zero_keeps_error_bits(scratch) -> None:
    cs = scratch.config
    cs.update_bits("status", STATUS.SIG_SYSTEM_ERROR, True)
    cs.write(0x06, 2, 0)
    assert cs.read(0x06, 2) & STATUS.SIG_SYSTEM_ERROR


def test_status_read_only_bits_survive_all_ones(scratch) -> None:
    scratch.config.write(0x06, 2, 0xFFFF)
    assert scratch.config.read(0x06, 2) & STATUS.CAP_LIST


def test_byte_write_inside_wider_field(scratch) -> None:
    scratch.config.write(0x3C, 1, 0x2A)  # interrupt line is RW
    assert scratch.config.read(0x3C, 1) == 0x2A
    assert scratch.config.read(0x3D, 1) == 1  # interrupt pin unchanged


def _size_bar(cs: ConfigSpace, index: int) -> int:
    offset = 0x10 + 4 * index
    saved = cs.read(offset, 4)
    cs.write(offset, 4, 0xFFFF_FFFF)
    value = cs.read(offset, 4)
    cs.write(offset, 4, saved)
    return value


def test_bar_sizing_32bit(scratch) -> None:
    assert _size_bar(scratch.config, 0) == 0xFFFF_F000  # 4 KiB, non-prefetchable mem32


def test_bar_sizing_64bit_prefetchable(scratch) -> None:
    cs = scratch.config
    low = _size_bar(cs, 2)
    high = _size_bar(cs, 3)
    assert low & 0xF == 0xC  # 64-bit, prefetchable
    mask = (high << 32) | (low & ~0xF)
    assert (~mask & (2**64 - 1)) + 1 == 0x10000


def test_bar_sizing_io(bus: PciBus) -> None:
    class IoDev(SimDevice):
        bars = (BarSpec(1, 32, BarKind.IO),)

    fn = bus.hot_add(IoDev())
    assert _size_bar(fn.config, 1) == 0xFFFF_FFE1


def test_unimplemented_bar_reads_zero_after_all_ones(scratch) -> None:
    assert _size_bar(scratch.config, 5) == 0


def test_bar_keeps_assigned_address_after_sizing(scratch) -> None:
    address = scratch.bar(0).address
    _size_bar(scratch.config, 0)
    assert scratch.bar(0).address == address != 0


def test_capability_list_walk(scratch) -> None:
    cs = scratch.config
    ids = []
    pos = cs.read(0x34, 1)
    while pos:
        ids.append(cs.read(pos, 1))
        pos = cs.read(pos + 1, 1)
    assert ids == [CapId.PM, CapId.PCIE, CapId.MSIX]
    assert [cid for cid, _ in cs.capabilities()] == ids


def test_msix_capability_describes_table(scratch) -> None:
    pos = scratch.find_capability(CapId.MSIX)
    assert pos is not None
    assert scratch.config.read(pos + 2, 2) & 0x7FF == 3  # table size 4, N-1 encoded
    assert scratch.config.read(pos + 4, 4) & 0x7 == 1  # dedicated BAR1 holds the table


def test_extended_capability_aer(scratch) -> None:
    assert scratch.config.find_ext_capability(ExtCapId.AER) == 0x100
    header = scratch.config.read(0x100, 4)
    assert header & 0xFFFF == ExtCapId.AER and (header >> 16) & 0xF == 2


def test_conventional_pci_has_256_bytes_and_no_pcie_cap(bus: PciBus) -> None:
    class Legacy(SimDevice):
        pcie = False

    fn = bus.hot_add(Legacy())
    assert fn.config.size == 256
    assert fn.find_capability(CapId.PCIE) is None
    assert fn.config.ext_capabilities() == []


def test_no_aer_gives_empty_extended_space(bus: PciBus) -> None:
    class NoAer(SimDevice):
        aer = False

    fn = bus.hot_add(NoAer())
    assert fn.config.read(0x100, 4) == 0
    assert fn.config.ext_capabilities() == []


def test_reset_restores_defaults(scratch) -> None:
    scratch.config.write(0x0C, 1, 0x10)
    scratch.config.reset()
    assert scratch.config.read(0x0C, 1) == 0


def test_misaligned_access_rejected(scratch) -> None:
    with pytest.raises(InvalidArgument, match="0x2 is not aligned") as exc:
        scratch.config.read(0x02, 4)
    assert exc.value.errno == errno.EINVAL


def test_bad_access_size_rejected(scratch) -> None:
    with pytest.raises(InvalidArgument, match="size 3"):
        scratch.config.read(0x00, 3)


def test_offset_beyond_space_rejected(scratch) -> None:
    with pytest.raises(InvalidArgument, match="0x1000"):
        scratch.config.write(0x1000, 4, 0)


def test_extended_offset_on_conventional_space_rejected() -> None:
    with pytest.raises(InvalidArgument, match="0x100"):
        ConfigSpace(extended=False).read(0x100, 4)


def test_overlapping_field_definition_rejected() -> None:
    cs = ConfigSpace()
    with pytest.raises(InvalidArgument, match="overlaps 'command'"):
        cs.define(ConfigField("bogus", 0x04, 4))


def test_field_with_rw_and_w1c_bit_rejected() -> None:
    with pytest.raises(InvalidArgument, match="both RW and W1C"):
        ConfigField("x", 0x40, 1, rw=1, w1c=1)


def test_unknown_field_rejected() -> None:
    with pytest.raises(InvalidArgument, match="'nope'"):
        ConfigSpace().get("nope")
