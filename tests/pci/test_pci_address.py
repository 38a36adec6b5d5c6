"""PciAddress: parse, format, validate."""

from __future__ import annotations

import errno

import pytest

from accelcore.errors import InvalidArgument
from accelcore.pci import PciAddress


def test_parse_full_form() -> None:
    assert PciAddress.parse("0001:02:1f.7") == PciAddress(1, 2, 0x1F, 7)


def test_parse_short_form_defaults_domain_zero() -> None:
    assert PciAddress.parse("03:00.1") == PciAddress(0, 3, 0, 1)


def test_str_is_canonical_lowercase() -> None:
    assert str(PciAddress.parse("0000:0A:1F.3")) == "0000:0a:1f.3"


def test_round_trip() -> None:
    addr = PciAddress(0xFFFF, 0xFF, 31, 7)
    assert PciAddress.parse(str(addr)) == addr


def test_orders_by_domain_bus_device_function() -> None:
    addrs = [PciAddress(0, 1, 0, 0), PciAddress(0, 0, 2, 1), PciAddress(0, 0, 2, 0)]
    assert sorted(addrs) == [PciAddress(0, 0, 2, 0), PciAddress(0, 0, 2, 1), PciAddress(0, 1, 0, 0)]


def test_is_hashable_value() -> None:
    assert {PciAddress(0, 0, 1, 0), PciAddress.parse("0000:00:01.0")} == {PciAddress(0, 0, 1, 0)}


def test_root_name() -> None:
    assert PciAddress.parse("0002:40:00.0").root_name == "pci0002:40"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0000:00:00",
        "0000:00:20.0",
        "0000:00:00.8",
        "10000:00:00.0",
        "0000:100:00.0",
        "zz:00.0",
        "0000:00:00.0 junk",
    ],
)
def test_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        PciAddress.parse(text)
    assert exc.value.errno == errno.EINVAL
    assert repr(text) in str(exc.value)


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ((0x10000, 0, 0, 0), "domain"),
        ((0, 256, 0, 0), "bus"),
        ((0, 0, 32, 0), "device"),
        ((0, 0, 0, 8), "function"),
        ((0, 0, -1, 0), "device"),
    ],
)
def test_constructor_rejects_out_of_range(fields: tuple[int, int, int, int], name: str) -> None:
    with pytest.raises(InvalidArgument, match=name):
        PciAddress(*fields)


def test_parse_rejects_non_string() -> None:
    with pytest.raises(InvalidArgument):
        PciAddress.parse(5)  # type: ignore[arg-type]
