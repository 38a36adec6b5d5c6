"""Bus: enumeration, lookup, hotplug, removal, rescan and driver binding."""

from __future__ import annotations

import errno

import pytest

from accelcore.errors import AlreadyExists, Busy, InvalidArgument, NoDevice, NoEntry
from accelcore.memory import LIVE
from accelcore.pci import (
    PCI_ANY_ID,
    BarSpec,
    MmioFaultReason,
    PciAddress,
    PciBus,
    PciDeviceId,
    SimDevice,
)


# -- enumeration and lookup ---------------------------------------------------------------
def test_hot_add_assigns_first_free_slot(bus: PciBus, scratch_cls) -> None:
    bus.hot_add(scratch_cls(), "0000:00:01.0")
    fn = bus.hot_add(scratch_cls())
    assert fn.address == PciAddress(0, 0, 2, 0)


def test_functions_listed_in_address_order(bus: PciBus, scratch_cls) -> None:
    bus.hot_add(scratch_cls(), "0000:00:09.0")
    bus.hot_add(scratch_cls(), "0000:00:04.0")
    assert [str(f.address) for f in bus.functions()] == ["0000:00:04.0", "0000:00:09.0"]


def test_find_by_string(bus: PciBus, scratch) -> None:
    assert bus.find("0000:00:03.0") is scratch


def test_find_missing_is_enodev(bus: PciBus) -> None:
    with pytest.raises(NoDevice, match=r"0000:00:07\.0") as exc:
        bus.find("0000:00:07.0")
    assert exc.value.errno == errno.ENODEV


def test_find_malformed_is_einval(bus: PciBus) -> None:
    with pytest.raises(InvalidArgument, match="'nonsense'"):
        bus.find("nonsense")


def test_hot_add_occupied_address_is_eexist(bus: PciBus, scratch, scratch_cls) -> None:
    with pytest.raises(AlreadyExists, match=r"0000:00:03\.0"):
        bus.hot_add(scratch_cls(), "0000:00:03.0")


def test_hot_add_same_model_twice_is_busy(bus: PciBus, scratch) -> None:
    with pytest.raises(Busy):
        bus.hot_add(scratch.device_model)


def test_hot_add_emits_add_uevent(bus: PciBus, uevents, scratch_cls) -> None:
    bus.hot_add(scratch_cls(), "0000:00:05.0")
    assert [(e.action, e.devpath) for e in uevents] == [("add", "/devices/pci0000:00/0000:00:05.0")]


# -- binding ------------------------------------------------------------------------------
def test_register_driver_binds_matching_functions(bus: PciBus, scratch, driver_cls) -> None:
    drv = driver_cls()
    bus.register_driver(drv)
    assert scratch.driver is drv
    assert drv.calls == [("probe", "0000:00:03.0")]
    assert scratch.sysfs.driver == "rec"


def test_hot_added_function_binds_registered_driver(bus: PciBus, driver_cls, scratch_cls) -> None:
    drv = driver_cls()
    bus.register_driver(drv)
    fn = bus.hot_add(scratch_cls())
    assert fn.driver is drv


def test_non_matching_driver_does_not_bind(bus: PciBus, scratch, driver_cls) -> None:
    bus.register_driver(driver_cls(id_table=[PciDeviceId(0x1DE5, 0x0002)]))
    assert scratch.driver is None


def test_class_match_binds(bus: PciBus, scratch, driver_cls) -> None:
    bus.register_driver(driver_cls(id_table=[PciDeviceId.for_class(0x120000, 0xFF0000)]))
    assert scratch.driver is not None


def test_bind_uevent_carries_driver(bus: PciBus, scratch, uevents, driver_cls) -> None:
    bus.register_driver(driver_cls())
    assert uevents[-1].action == "bind"
    assert uevents[-1].env["DRIVER"] == "rec"


def test_failing_probe_leaves_function_unbound(bus: PciBus, scratch, driver_cls) -> None:
    def grab(fn) -> None:
        fn.set_master()
        fn.alloc_irq_vectors(1, 1)
        fn.dma_map(bytearray(8))

    drv = driver_cls(refuse=NoDevice("no firmware"), on_probe=grab)
    bus.register_driver(drv)
    assert scratch.driver is None
    assert scratch.sysfs.driver is None
    assert scratch.irq_vectors == 0 and scratch.dma.mappings() == []


def test_duplicate_driver_name_is_eexist(bus: PciBus, driver_cls) -> None:
    bus.register_driver(driver_cls())
    with pytest.raises(AlreadyExists, match="'rec'"):
        bus.register_driver(driver_cls())


def test_unregister_driver_unbinds(bus: PciBus, scratch, uevents, driver_cls) -> None:
    drv = driver_cls()
    bus.register_driver(drv)
    bus.unregister_driver(drv)
    assert scratch.driver is None
    assert drv.calls[-1] == ("remove", "0000:00:03.0")
    assert uevents[-1].action == "unbind" and "DRIVER" not in uevents[-1].env


def test_unregister_unknown_driver_is_noent(bus: PciBus, driver_cls) -> None:
    with pytest.raises(NoEntry):
        bus.unregister_driver(driver_cls())


def test_unbind_releases_driver_resources(bus: PciBus, scratch, driver_cls) -> None:
    def grab(fn) -> None:
        fn.set_master()
        fn.alloc_irq_vectors(1, 4)
        fn.request_irq(0, print)
        fn.dma_map(bytearray(8))

    bus.register_driver(driver_cls(on_probe=grab))
    bus.unbind(scratch)
    assert scratch.irq_vectors == 0 and scratch.irq.handlers == {}
    assert scratch.dma.mappings() == [] and not scratch.is_enabled


def test_unbind_unbound_is_enodev(bus: PciBus, scratch) -> None:
    with pytest.raises(NoDevice, match="not bound"):
        bus.unbind(scratch)


def test_explicit_bind_of_non_matching_driver_is_enodev(bus: PciBus, scratch, driver_cls) -> None:
    bus.register_driver(driver_cls(name="other", id_table=[PciDeviceId(1, 1)]))
    with pytest.raises(NoDevice, match="'other' does not match"):
        bus.bind(scratch, "other")


def test_explicit_bind_unknown_driver_is_noent(bus: PciBus, scratch) -> None:
    with pytest.raises(NoEntry, match="'ghost'"):
        bus.bind(scratch, "ghost")


def test_explicit_bind_when_bound_is_busy(bus: PciBus, scratch, driver_cls) -> None:
    bus.register_driver(driver_cls())
    bus.register_driver(driver_cls(name="any", id_table=[PciDeviceId(PCI_ANY_ID, PCI_ANY_ID)]))
    with pytest.raises(Busy, match="already bound to 'rec'"):
        bus.bind(scratch, "any")


def test_explicit_bind_propagates_probe_error(bus: PciBus, scratch, driver_cls) -> None:
    drv = driver_cls()
    bus.register_driver(drv)
    bus.unbind(scratch)
    drv.refuse = Busy("engine stuck")
    with pytest.raises(Busy, match="engine stuck"):
        bus.bind(scratch, "rec")
    assert scratch.driver is None


def test_driver_override_blocks_other_drivers(bus: PciBus, scratch, driver_cls) -> None:
    bus.set_driver_override(scratch, "vfio-pci")
    bus.register_driver(driver_cls())
    assert scratch.driver is None


def test_driver_override_binds_named_driver_without_id_match(
    bus: PciBus, scratch, driver_cls
) -> None:
    bus.set_driver_override(scratch, "vfio-pci")
    drv = driver_cls(name="vfio-pci", id_table=[])
    bus.register_driver(drv)
    assert scratch.driver is drv


def test_driver_override_cleared_by_empty_string(bus: PciBus, scratch, driver_cls) -> None:
    bus.set_driver_override(scratch, "vfio-pci")
    bus.set_driver_override(scratch, "")
    bus.register_driver(driver_cls())
    assert scratch.driver is not None


def test_driver_override_with_space_rejected(bus: PciBus, scratch) -> None:
    with pytest.raises(InvalidArgument, match="driver_override"):
        bus.set_driver_override(scratch, "two words")


# -- removal and rescan ----------------------------------------------------------------------
def test_orderly_remove_calls_driver_with_device_present(bus: PciBus, scratch, driver_cls) -> None:
    seen: list[int] = []
    drv = driver_cls(on_remove=lambda fn: seen.append(fn.iomap(0).read32(0x10)))
    bus.register_driver(drv)
    scratch.iomap(0).write32(0x10, 7)
    bus.remove(scratch)
    assert seen == [7]
    assert drv.calls[-1] == ("remove", "0000:00:03.0")
    assert not scratch.present


def test_orderly_remove_drops_sysfs_node(bus: PciBus, scratch, tree, uevents) -> None:
    node = scratch.sysfs
    bus.remove(scratch)
    assert node not in tree
    assert uevents[-1].action == "remove"
    with pytest.raises(NoDevice):
        bus.find("0000:00:03.0")


def test_rescan_finds_orderly_removed_card_and_rebinds(bus: PciBus, scratch, driver_cls) -> None:
    drv = driver_cls()
    bus.register_driver(drv)
    bus.remove(scratch)
    (again,) = bus.rescan()
    assert again.address == scratch.address and again is not scratch
    assert again.driver is drv and again.present


def test_rescan_with_nothing_new_is_empty(bus: PciBus, scratch) -> None:
    assert bus.rescan() == []


def test_eject_takes_card_away(bus: PciBus, scratch) -> None:
    bus.remove(scratch, eject=True)
    assert bus.rescan() == []


def test_surprise_remove_driver_sees_all_ones(bus: PciBus, scratch, driver_cls) -> None:
    seen: list[int] = []
    bus.register_driver(driver_cls(on_remove=lambda fn: seen.append(fn.iomap(0).read32(0))))
    bus.remove(scratch, surprise=True)
    assert seen == [0xFFFF_FFFF]
    assert scratch.mmio_faults[-1].reason is MmioFaultReason.REMOVED


def test_surprise_removed_card_is_not_rescanned(bus: PciBus, scratch) -> None:
    bus.remove(scratch, surprise=True)
    assert bus.rescan() == []


def test_config_reads_all_ones_after_removal(bus: PciBus, scratch) -> None:
    bus.remove(scratch, surprise=True)
    assert scratch.config_read(0x00, 4) == 0xFFFF_FFFF


def test_driver_calls_after_removal_are_enodev(bus: PciBus, scratch) -> None:
    bus.remove(scratch)
    with pytest.raises(NoDevice, match="removed"):
        scratch.enable_device()


def test_remove_twice_is_enodev(bus: PciBus, scratch) -> None:
    bus.remove(scratch)
    with pytest.raises(NoDevice):
        bus.remove(scratch)


def test_removal_frees_bus_addresses(bus: PciBus, scratch, scratch_cls) -> None:
    address = scratch.bar(0).address
    bus.remove(scratch, eject=True)
    assert bus.hot_add(scratch_cls()).bar(0).address == address


def test_device_timers_cancelled_on_removal(bus: PciBus, scratch, clock) -> None:
    fired: list[int] = []
    scratch.device_model.schedule(100, lambda: fired.append(1))
    bus.remove(scratch)
    clock.advance(1000)
    assert fired == []


def test_register_bar_costs_no_memory_until_ram_is_touched(bus: PciBus, scratch_cls) -> None:
    before = LIVE.regions
    bus.hot_add(scratch_cls())
    assert LIVE.regions == before


def test_removal_releases_bar_memory(bus: PciBus, scratch_cls) -> None:
    before = LIVE.regions
    fn = bus.hot_add(scratch_cls())
    fn.enable_device()
    fn.iomap(2).write32(0, 1)
    assert LIVE.regions == before + 1
    bus.remove(fn)
    assert LIVE.regions == before


def test_failed_layout_leaks_no_memory(bus: PciBus) -> None:
    class BadMsix(SimDevice):
        bars = (BarSpec(0, 0x1000),)
        msix_vectors = 2
        msix_bar = 0
        msix_table_offset = 0x0
        msix_pba_offset = 0x10  # inside the table

    before = LIVE.regions
    with pytest.raises(InvalidArgument, match="overlaps 'msix-table'"):
        bus.hot_add(BadMsix())
    assert LIVE.regions == before


def test_driver_remove_raising_still_removes_function(bus: PciBus, scratch, driver_cls) -> None:
    def boom(fn) -> None:
        raise NoDevice("remove failed")

    bus.register_driver(driver_cls(on_remove=boom))
    with pytest.raises(NoDevice, match="remove failed"):
        bus.remove(scratch)
    assert bus.functions() == [] and scratch.driver is None


def test_close_removes_everything(bus: PciBus, scratch, driver_cls) -> None:
    drv = driver_cls()
    bus.register_driver(drv)
    bus.close()
    assert bus.functions() == [] and bus.rescan() == []
    assert drv.calls[-1] == ("remove", "0000:00:03.0")


def test_model_with_out_of_range_vendor_rejected(bus: PciBus) -> None:
    class Wide(SimDevice):
        vendor_id = 0x12345

    with pytest.raises(InvalidArgument, match="vendor_id 74565"):
        bus.hot_add(Wide())
    assert bus.functions() == []
