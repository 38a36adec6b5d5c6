"""The sources behind accelctl: embedded machine, TOML config, and the host via pyudev."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from accelcore.cli.sources import EmbeddedSource, HostSource, SourceError, default_machine
from accelcore.errors import NoEntry


def test_default_machine_has_two_vaccel_devices_without_reference_drivers() -> None:
    machine = default_machine()
    names = [(d.name, d.driver.name) for d in machine.subsystem.registered_devices()]
    assert names in (
        [("accel0", "vaccel"), ("accel1", "vaccel")],
        [
            (f"accel{i}", n)
            for i, n in enumerate(["habana_like", "habana_like", "kfd_like", "kfd_like"])
        ],
    )


def test_from_config_builds_machine_from_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text(
        '[machine]\ndrivers = ["edu_accel_driver:EduAccelDriver"]\n'
        '[[pci]]\nmodel = "edu"\ncount = 3\n'
    )
    src = EmbeddedSource.from_config(cfg)
    assert [(d.driver, d.pci_address is not None) for d in src.devices()] == [
        ("edu_accel", True)
    ] * 3
    src.close()


def test_from_config_missing_file_is_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        EmbeddedSource.from_config(tmp_path / "none.toml")


def test_from_config_bad_description_is_source_error(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[cpu]\ncount = 1\n")
    with pytest.raises(SourceError, match=r"unknown sections \['cpu'\]"):
        EmbeddedSource.from_config(cfg)


def test_embedded_store_unknown_attribute_is_enoent(sim: EmbeddedSource) -> None:
    with pytest.raises(NoEntry, match="no attribute 'x' on accel0"):
        sim.store_attr("accel0", "x", "1")


# -- host ---------------------------------------------------------------------------
class FakeAttrs:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.available_attributes = list(values)

    def get(self, name: str) -> bytes | None:
        v = self.values.get(name)
        return None if v is None else v.encode()


@dataclass(eq=False)
class FakeDevice:
    sys_name: str
    subsystem: str
    attrs: dict[str, str] = field(default_factory=dict)
    device_node: str | None = None
    device_number: int = 0
    driver: str | None = None
    parent: FakeDevice | None = None

    @property
    def attributes(self) -> FakeAttrs:
        return FakeAttrs(self.attrs)

    @property
    def device_path(self) -> str:
        return f"/devices/{self.sys_name}"

    def find_parent(self, subsystem: str) -> FakeDevice | None:
        node = self.parent
        while node is not None and node.subsystem != subsystem:
            node = node.parent
        return node


class FakeContext:
    def __init__(self, devices: list[FakeDevice]) -> None:
        self.devices = devices

    def list_devices(self, subsystem: str, sys_name: str | None = None) -> list[Any]:
        return [
            d
            for d in self.devices
            if d.subsystem == subsystem and (sys_name is None or d.sys_name == sys_name)
        ]


def _host() -> HostSource:
    npu = FakeDevice(
        "0000:3b:00.0",
        "pci",
        {"vendor": "0x8086", "device": "0x643e", "class": "0x120000"},
        driver="intel_vpu",
    )
    lone = FakeDevice(
        "0000:5e:00.0",
        "pci",
        {"vendor": "0x1da3", "device": "0x1020", "class": "0x120000"},
        driver=None,
    )
    nic = FakeDevice("0000:00:03.0", "pci", {"class": "0x020000"})
    accel = FakeDevice(
        "accel0", "accel", device_node="/dev/accel/accel0", device_number=(261 << 8) | 0, parent=npu
    )
    return HostSource(FakeContext([accel, npu, lone, nic]))


def test_host_lists_accel_nodes_and_bare_processing_accelerators() -> None:
    rows = [
        (d.name, d.node, d.minor, d.driver, d.pci_address, d.vendor, d.status, d.source)
        for d in _host().devices()
    ]
    assert rows == [
        ("accel0", "/dev/accel/accel0", 0, "intel_vpu", "0000:3b:00.0", 0x8086, "unknown", "host"),
        ("0000:5e:00.0", None, None, None, "0000:5e:00.0", 0x1DA3, "unknown", "host"),
    ]


def test_host_attrs_walk_up_to_pci_parent() -> None:
    levels = _host().attrs("accel0")
    assert [lvl.kernel for lvl in levels] == ["accel0", "0000:3b:00.0"]
    assert {a.name: a.value for a in levels[1].attributes}["vendor"] == "0x8086"


def test_host_refuses_what_it_cannot_read() -> None:
    with pytest.raises(SourceError, match=r"^reset is not available from the host"):
        _host().reset("accel0", "x")


def test_real_host_lists_without_failing() -> None:
    pytest.importorskip("pyudev")
    devices = HostSource().devices()
    assert all(d.source == "host" for d in devices)
