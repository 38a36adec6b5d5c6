"""DMA through the function's address space: mapping, and every enforced check."""

from __future__ import annotations

import errno

import pytest

from accelcore.errors import BadAddress, InvalidArgument, NoDevice, NoEntry, NoSpace
from accelcore.memory import SharedMemory
from accelcore.pci import DmaDirection, DmaError, DmaFaultReason


@pytest.fixture
def fn(scratch):
    scratch.set_master()
    return scratch


def test_device_reads_mapped_buffer(fn) -> None:
    buf = bytearray(b"hello world")
    iova = fn.dma_map(buf)
    assert fn.device_model.dma_read(iova + 6, 5) == b"world"


def test_device_writes_mapped_buffer(fn) -> None:
    buf = bytearray(8)
    iova = fn.dma_map(buf)
    fn.device_model.dma_write(iova + 2, b"\x01\x02")
    assert buf == bytearray(b"\x00\x00\x01\x02\x00\x00\x00\x00")


def test_shared_memory_slice_mapping(fn) -> None:
    with SharedMemory(8192, "dma-test") as shm:
        iova = fn.dma_map(shm, offset=4096, length=16)
        fn.device_model.dma_write(iova, b"X" * 16)
        assert shm.read(4096, 16) == b"X" * 16
        fn.dma_unmap(iova)


def test_iovas_are_distinct_and_nonzero(fn) -> None:
    a = fn.dma_map(bytearray(10))
    b = fn.dma_map(bytearray(10))
    assert a and b and a != b


def _fault(fn, action) -> DmaError:
    with pytest.raises(DmaError) as exc:
        action()
    assert exc.value.errno == errno.EFAULT
    assert isinstance(exc.value, BadAddress)
    assert fn.dma_faults[-1] == exc.value.fault
    return exc.value


def test_no_bus_master_faults(fn) -> None:
    buf = bytearray(16)
    iova = fn.dma_map(buf)
    fn.clear_master()
    err = _fault(fn, lambda: fn.device_model.dma_write(iova, b"\xff"))
    assert err.fault.reason is DmaFaultReason.NO_BUS_MASTER
    assert buf == bytearray(16)


def test_above_mask_faults(fn) -> None:
    err = _fault(fn, lambda: fn.device_model.dma_read(1 << 32, 4))
    assert err.fault.reason is DmaFaultReason.ABOVE_MASK
    assert (err.fault.address, err.fault.size, err.fault.write) == (1 << 32, 4, False)


def test_unmapped_address_faults(fn) -> None:
    err = _fault(fn, lambda: fn.device_model.dma_read(0x1000, 4))
    assert err.fault.reason is DmaFaultReason.UNMAPPED


def test_overrun_into_guard_page_faults(fn) -> None:
    buf = bytearray(16)
    neighbour = bytearray(16)
    iova = fn.dma_map(buf)
    fn.dma_map(neighbour)
    err = _fault(fn, lambda: fn.device_model.dma_write(iova + 8, b"\xff" * 16))
    assert err.fault.reason is DmaFaultReason.UNMAPPED
    assert buf == bytearray(16) and neighbour == bytearray(16)


def test_unmapped_after_unmap_faults(fn) -> None:
    iova = fn.dma_map(bytearray(16))
    fn.dma_unmap(iova)
    err = _fault(fn, lambda: fn.device_model.dma_read(iova, 1))
    assert err.fault.reason is DmaFaultReason.UNMAPPED


def test_device_write_to_to_device_mapping_faults(fn) -> None:
    iova = fn.dma_map(b"read only", direction=DmaDirection.TO_DEVICE)
    assert fn.device_model.dma_read(iova, 4) == b"read"
    err = _fault(fn, lambda: fn.device_model.dma_write(iova, b"x"))
    assert err.fault.reason is DmaFaultReason.DIRECTION


def test_device_read_of_from_device_mapping_faults(fn) -> None:
    iova = fn.dma_map(bytearray(4), direction=DmaDirection.FROM_DEVICE)
    err = _fault(fn, lambda: fn.device_model.dma_read(iova, 4))
    assert err.fault.reason is DmaFaultReason.DIRECTION


def test_mask_lowered_keeps_iovas_below_it(fn) -> None:
    fn.set_dma_mask(28)
    iova = fn.dma_map(bytearray(4096))
    assert iova + 4096 <= 1 << 28


def test_read_only_buffer_for_device_writes_rejected(fn) -> None:
    with pytest.raises(InvalidArgument, match="read-only"):
        fn.dma_map(b"abc")


def test_empty_range_rejected(fn) -> None:
    with pytest.raises(InvalidArgument, match="length 0"):
        fn.dma_map(bytearray(4), offset=4)


def test_mask_too_small_for_iova_space_is_nospace(fn) -> None:
    fn.set_dma_mask(16)
    with pytest.raises(NoSpace, match="below DMA mask 0xffff"):
        fn.dma_map(bytearray(16))


@pytest.mark.parametrize("bits", [0, 11, 65])
def test_bad_dma_mask_rejected(fn, bits: int) -> None:
    with pytest.raises(InvalidArgument, match=f"{bits} bits"):
        fn.set_dma_mask(bits)


def test_mask_below_existing_mapping_rejected(fn) -> None:
    fn.dma_map(bytearray(16))
    with pytest.raises(InvalidArgument, match="below mapped IOVA"):
        fn.set_dma_mask(16)


def test_unmap_unknown_iova_is_noent(fn) -> None:
    with pytest.raises(NoEntry, match="0x1234"):
        fn.dma_unmap(0x1234)


def test_dma_after_removal_faults(fn, bus) -> None:
    iova = fn.dma_map(bytearray(16))
    dev = fn.device_model
    dma = fn.dma
    bus.remove(fn, surprise=True)
    with pytest.raises(DmaError) as exc:
        dma.read(iova, 4)
    assert exc.value.fault.reason is DmaFaultReason.REMOVED
    assert not dev.present


def test_dma_map_after_removal_is_enodev(fn, bus) -> None:
    bus.remove(fn)
    with pytest.raises(NoDevice):
        fn.dma_map(bytearray(4))
