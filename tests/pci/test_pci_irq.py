"""MSI-X delivery, masking and pending bits; INTx level and its disable bit."""

from __future__ import annotations

import pytest

from accelcore.errors import Busy, InvalidArgument, NoEntry, NoSpace
from accelcore.pci import IrqMode, IrqType, PciBus, SimDevice
from accelcore.pci.caps import MSIX
from accelcore.pci.config import COMMAND, STATUS, CapId


@pytest.fixture
def msix(scratch):
    """The scratch function with 4 MSI-X vectors, handlers recording into ``fn.got``."""
    got: list[int] = []
    assert scratch.alloc_irq_vectors(1, 4) == 4
    for v in range(4):
        scratch.request_irq(v, got.append)
    scratch.got = got
    return scratch


def _control(fn) -> int:
    return fn.find_capability(CapId.MSIX) + 2


def test_alloc_prefers_msix(scratch) -> None:
    assert scratch.alloc_irq_vectors(1, 2) == 2
    assert scratch.irq_mode is IrqMode.MSIX
    assert scratch.config.read(_control(scratch), 2) & MSIX.ENABLE


def test_msix_message_runs_handler(msix) -> None:
    msix.device_model.raise_irq(2)
    assert msix.got == [2]
    assert msix.irq.delivered[2] == 1


def test_masked_vector_sets_pending_then_delivers_on_unmask(msix) -> None:
    msix.mask_irq(1)
    msix.device_model.raise_irq(1)
    assert msix.got == []
    assert msix.irq_pending(1)
    msix.unmask_irq(1)
    assert msix.got == [1]
    assert not msix.irq_pending(1)


def test_pending_bit_visible_in_pba(msix) -> None:
    msix.mask_irq(3)
    msix.device_model.raise_irq(3)
    pba = msix.config.read(msix.find_capability(CapId.MSIX) + 8, 4)
    bar, offset = pba & 0x7, pba & ~0x7
    assert msix.iomap(bar).read64(offset) == 1 << 3


def test_mask_through_table_mmio(msix) -> None:
    table = msix.config.read(msix.find_capability(CapId.MSIX) + 4, 4)
    bar = msix.iomap(table & 0x7)
    entry = (table & ~0x7) + 16 * 0
    bar.write32(entry + 12, 1)  # vector control: mask
    msix.device_model.raise_irq(0)
    assert msix.got == [] and msix.irq_pending(0)
    bar.write32(entry + 12, 0)
    assert msix.got == [0]


def test_table_entry_programmed_by_request_irq(msix) -> None:
    table = msix.config.read(msix.find_capability(CapId.MSIX) + 4, 4)
    bar = msix.iomap(table & 0x7)
    entry = (table & ~0x7) + 16 * 2
    assert bar.read64(entry) == 0xFEE0_0000
    assert bar.read32(entry + 8) == 2
    assert bar.read32(entry + 12) == 0


def test_function_mask_holds_all_vectors(msix) -> None:
    ctl = _control(msix)
    msix.config.write(ctl, 2, MSIX.ENABLE | MSIX.FUNCTION_MASK)
    msix.device_model.raise_irq(0)
    msix.device_model.raise_irq(3)
    assert msix.got == []
    msix.config.write(ctl, 2, MSIX.ENABLE)
    assert msix.got == [0, 3]


def test_message_without_handler_counts_unhandled(scratch) -> None:
    scratch.alloc_irq_vectors(1, 4)
    scratch.irq.set_entry_mask(0, False)
    scratch.device_model.raise_irq(0)
    assert scratch.irq.unhandled == 1


def test_free_irq_masks_vector(msix) -> None:
    msix.free_irq(1)
    msix.device_model.raise_irq(1)
    assert msix.got == [] and msix.irq_pending(1)


def test_device_raising_unknown_vector_is_an_error(msix) -> None:
    with pytest.raises(InvalidArgument, match="vector 9"):
        msix.device_model.raise_irq(9)


def test_request_unallocated_vector_rejected(scratch) -> None:
    scratch.alloc_irq_vectors(1, 2)
    with pytest.raises(InvalidArgument, match="vector 2 is not allocated"):
        scratch.request_irq(2, print)


def test_request_irq_twice_is_busy(msix) -> None:
    with pytest.raises(Busy, match="vector 0"):
        msix.request_irq(0, print)


def test_alloc_twice_is_busy(msix) -> None:
    with pytest.raises(Busy):
        msix.alloc_irq_vectors(1, 1)


def test_alloc_bad_range_rejected(scratch) -> None:
    with pytest.raises(InvalidArgument, match=r"3\.\.2"):
        scratch.alloc_irq_vectors(3, 2)


def test_alloc_more_than_available_is_nospace(scratch) -> None:
    with pytest.raises(NoSpace, match="8 IRQ vectors"):
        scratch.alloc_irq_vectors(8, 8)


def test_free_irq_without_handler_is_noent(scratch) -> None:
    scratch.alloc_irq_vectors(1, 1)
    with pytest.raises(NoEntry, match="vector 0"):
        scratch.free_irq(0)


def test_free_irq_vectors_disables_msix(msix) -> None:
    msix.free_irq_vectors()
    assert msix.irq_mode is IrqMode.NONE
    assert not msix.config.read(_control(msix), 2) & MSIX.ENABLE


# -- INTx --------------------------------------------------------------------------
@pytest.fixture
def intx(scratch):
    got: list[int] = []
    assert scratch.alloc_irq_vectors(1, 1, IrqType.INTX) == 1
    scratch.request_irq(0, got.append)
    scratch.got = got
    return scratch


def test_intx_mode_when_requested(intx) -> None:
    assert intx.irq_mode is IrqMode.INTX
    assert intx.irq.mode is IrqMode.INTX


def test_intx_level_delivers_once_per_assertion(intx) -> None:
    dev = intx.device_model
    dev.raise_irq()
    dev.raise_irq()  # still asserted: no new edge
    assert intx.got == [0]
    dev.lower_irq()
    dev.raise_irq()
    assert intx.got == [0, 0]


def test_intx_status_bit_follows_line(intx) -> None:
    intx.device_model.raise_irq()
    assert intx.config.read(0x06, 2) & STATUS.INTERRUPT
    intx.device_model.lower_irq()
    assert not intx.config.read(0x06, 2) & STATUS.INTERRUPT


def test_intx_disable_bit_holds_then_delivers_on_clear(intx) -> None:
    cmd = intx.config.read(0x04, 2)
    intx.config.write(0x04, 2, cmd | COMMAND.INTX_DISABLE)
    intx.device_model.raise_irq()
    assert intx.got == []
    intx.config.write(0x04, 2, cmd)
    assert intx.got == [0]


def test_intx_fallback_without_msix(bus: PciBus) -> None:
    fn = bus.hot_add(SimDevice())
    assert fn.alloc_irq_vectors(1, 4) == 1
    assert fn.irq_mode is IrqMode.INTX


def test_no_pin_and_no_msix_is_nospace(bus: PciBus) -> None:
    class Mute(SimDevice):
        interrupt_pin = 0

    fn = bus.hot_add(Mute())
    with pytest.raises(NoSpace):
        fn.alloc_irq_vectors(1, 1)


def test_intx_without_handler_counts_unhandled(scratch) -> None:
    scratch.device_model.raise_irq()
    assert scratch.irq.unhandled == 1


def test_interrupt_without_pin_or_msix_is_lost(bus: PciBus) -> None:
    class Mute(SimDevice):
        interrupt_pin = 0

    fn = bus.hot_add(Mute())
    fn.device_model.raise_irq()
    assert fn.irq.lost == 1
