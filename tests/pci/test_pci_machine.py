"""Machine descriptions (PciBus.populate) and the device-model registry."""

from __future__ import annotations

import tomllib

import pytest

from accelcore.clock import VirtualClock
from accelcore.errors import AlreadyExists, InvalidArgument
from accelcore.pci import EduDevice, PciBus, SimDevice, machine, register_device_model
from accelcore.pci.machine import device_models


@pytest.fixture(autouse=True)
def _private_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(machine, "_MODELS", dict(machine._MODELS))


def test_populate_list(bus: PciBus) -> None:
    fns = bus.populate(
        [
            {"model": "edu", "address": "0000:00:10.0", "options": {"dma_mask": 32}},
            {"model": "edu", "count": 2},
        ]
    )
    assert [str(f.address) for f in fns] == ["0000:00:10.0", "0000:00:01.0", "0000:00:02.0"]
    assert fns[0].device_model.dma_mask == (1 << 32) - 1


def test_populate_from_toml(bus: PciBus) -> None:
    doc = tomllib.loads(
        """
        [[pci]]
        model = "edu"
        count = 2

        [[pci]]
        model = "edu"
        address = "0000:00:01.0"
        options = { msix = false }
        """
    )
    fns = bus.populate(doc)
    assert [str(f.address) for f in fns] == ["0000:00:02.0", "0000:00:03.0", "0000:00:01.0"]
    assert fns[2].device_model.msix_vectors == 0


def test_auto_addresses_skip_occupied_slots(bus: PciBus) -> None:
    bus.hot_add("edu", "0000:00:01.0")
    (fn,) = bus.populate([{"model": "edu"}])
    assert str(fn.address) == "0000:00:02.0"


def test_hot_add_by_name_with_options(bus: PciBus) -> None:
    fn = bus.hot_add("edu", options={"fact_ns": 5})
    assert isinstance(fn.device_model, EduDevice) and fn.device_model.fact_ns == 5


def test_edu_is_registered_by_default() -> None:
    assert device_models()["edu"] is EduDevice


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ([{"model": "nope"}], "entry 0.*unknown device model 'nope'"),
        ([{"model": "edu", "address": "00:zz.0"}], "entry 0.*'address'.*'00:zz.0'"),
        (
            [{"model": "edu", "address": "0000:00:04.0"}, {"model": "edu", "address": "00:04.0"}],
            "entry 1.*0000:00:04.0 is already in use",
        ),
        ([{"model": "edu", "options": {"speed": 3}}], "entry 0.*unknown option 'speed'"),
        ([{"model": "edu", "options": {"dma_mask": "28"}}], "option 'dma_mask'='28'"),
        ([{"model": "edu", "options": {"msix": 1}}], "option 'msix'=1"),
        ([{"model": "edu", "options": {"dma_mask": 0}}], "entry 0.*dma_mask 0"),
        ([{"model": "edu", "colour": "red"}], "entry 0: unknown key 'colour'"),
        ([{"address": "0000:00:04.0"}], "entry 0: key 'model'"),
        ([{"model": "edu", "count": 0}], "key 'count'"),
        ([{"model": "edu", "count": True}], "key 'count'"),
        ([{"model": "edu", "count": 2, "address": "0000:00:04.0"}], "'address' cannot be used"),
        ([{"model": "edu", "options": ["x"]}], "key 'options' must be a table"),
        (["edu"], "entry 0: 'edu' is not a table"),
        ({"devices": []}, "no 'pci' list"),
        ("edu", "not a list"),
    ],
)
def test_malformed_description_rejected(bus: PciBus, description, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        bus.populate(description)
    assert bus.functions() == []


def test_duplicate_of_existing_address_rejected(bus: PciBus) -> None:
    bus.hot_add("edu", "0000:00:04.0")
    with pytest.raises(InvalidArgument, match=r"0000:00:04\.0 is already in use"):
        bus.populate([{"model": "edu", "address": "0000:00:04.0"}])


def test_later_bad_entry_adds_nothing(bus: PciBus) -> None:
    with pytest.raises(InvalidArgument, match="entry 1"):
        bus.populate([{"model": "edu"}, {"model": "bogus"}])
    assert bus.functions() == []


def test_hot_add_unknown_model_rejected(bus: PciBus) -> None:
    with pytest.raises(InvalidArgument, match="unknown device model 'ghost'"):
        bus.hot_add("ghost")


def test_options_with_model_instance_rejected(bus: PciBus) -> None:
    with pytest.raises(InvalidArgument, match="options"):
        bus.hot_add(EduDevice(), options={"fact_ns": 1})


class Widget(SimDevice):
    model = "widget"
    vendor_id = 0xABCD

    def __init__(self, lanes: int = 1, label: str | None = None) -> None:
        super().__init__()
        self.lanes = lanes
        self.label = label


def test_register_custom_model() -> None:
    register_device_model("widget", Widget)
    bus = PciBus(VirtualClock())
    (fn,) = bus.populate([{"model": "widget", "options": {"lanes": 4, "label": None}}])
    assert fn.vendor == 0xABCD and fn.device_model.lanes == 4


def test_register_duplicate_model_rejected() -> None:
    with pytest.raises(AlreadyExists, match="'edu'"):
        register_device_model("edu", EduDevice)


def test_factory_returning_non_device_rejected(bus: PciBus) -> None:
    register_device_model("broken", object)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="returned object"):
        bus.hot_add("broken")
