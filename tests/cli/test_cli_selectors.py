"""The device-selection grammar shared by every accelctl command."""

from __future__ import annotations

import pytest

from accelcore.cli.model import DeviceSummary
from accelcore.cli.selectors import (
    NoDeviceError,
    Selector,
    SelectorSyntaxError,
    parse_selector,
    select,
)


def _dev(
    minor: int, address: str | None, vendor: int | None = None, device: int | None = None
) -> DeviceSummary:
    return DeviceSummary(
        f"accel{minor}",
        minor,
        f"/dev/accel/accel{minor}",
        "drv",
        address,
        vendor,
        device,
        "operational",
        None,
        0,
        "sim",
    )


DEVICES = [
    _dev(0, "0000:00:10.0", 0x1DA3, 0x0001),
    _dev(1, "0000:00:11.0", 0x1DA3, 0x0001),
    _dev(2, "0000:00:12.0", 0x1002, 0x7408),
    _dev(3, None),
]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("all", ["accel0", "accel1", "accel2", "accel3"]),
        ("accel2", ["accel2"]),
        ("3", ["accel3"]),
        ("/dev/accel/accel1", ["accel1"]),
        ("accel:/dev/accel/accel1", ["accel1"]),
        ("sys:/sys/class/accel/accel0", ["accel0"]),
        ("/sys/class/accel/accel2/", ["accel2"]),
        ("0000:00:11.0", ["accel1"]),
        ("00:11.0", ["accel1"]),
        ("0000:00:1.0", []),
        ("pci:vendor=0x1da3", ["accel0", "accel1"]),
        ("pci:vendor=1DA3,device=0001", ["accel0", "accel1"]),
        ("pci:vendor=0x1da3,card=1", ["accel1"]),
        ("pci:device=0x7408", ["accel2"]),
        ("pci:slot=00:12.0", ["accel2"]),
    ],
)
def test_selector_picks(text: str, names: list[str]) -> None:
    if not names:
        with pytest.raises(NoDeviceError):
            select(DEVICES, text)
        return
    assert [d.name for d in select(DEVICES, text)] == names


@pytest.mark.parametrize(
    "text",
    [
        "",
        "pci:",
        "pci:colour=red",
        "pci:vendor",
        "pci:vendor=zz",
        "pci:vendor=0x10000",
        "pci:card=x",
        "pci:slot=nowhere",
        "accel:accel0",
        "@!",
        "-1",
    ],
)
def test_malformed_selector_is_a_syntax_error(text: str) -> None:
    with pytest.raises(SelectorSyntaxError):
        parse_selector(text)


def test_no_match_message_names_the_selector() -> None:
    with pytest.raises(NoDeviceError, match=r"^no accel device 'accel9'$"):
        select(DEVICES, "accel9")


def test_all_on_no_devices_is_empty_not_an_error() -> None:
    assert select([], "all") == []


def test_pci_card_past_the_matches_is_no_device() -> None:
    with pytest.raises(NoDeviceError):
        select(DEVICES, "pci:vendor=0x1da3,card=2")


def test_parse_keeps_the_text_and_normalizes_address() -> None:
    assert parse_selector("00:1F.3") == Selector("00:1F.3", pci_address="0000:00:1f.3")


def test_unknown_name_still_parses_for_host_nodes() -> None:
    assert parse_selector("renderD128") == Selector("renderD128", name="renderD128")
