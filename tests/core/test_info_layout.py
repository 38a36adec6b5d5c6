"""INFO answers are packed with layouts derived from the header: every field
lands where a C compiler puts it, strings keep their NUL, and a packer that
names the fields wrongly fails at import, not in an answer."""

from __future__ import annotations

import pytest

from accelcore import CORE
from accelcore.info import _packer


@pytest.mark.parametrize(
    "ctype",
    [
        "struct accel_info_device",
        "struct accel_info_status",
        "struct accel_info_ownership",
        "struct accel_info_client",
        "struct accel_info_memory_region",
        "struct accel_info_engine",
    ],
)
def test_packed_answer_reads_back_field_by_field_through_the_header(ctype: str) -> None:
    """Distinct values in every field, packed, then read with the header's cffi
    type: each field has its own value and every pad byte is zero."""
    fields = [f for f in CORE.layout(ctype).fields if f.name != "pad"]
    packer = _packer(ctype, *(f.name for f in fields))
    values: list[object] = []
    for k, f in enumerate(fields, 1):
        if f.ctype.startswith("char["):
            values.append(f"{f.name}-{k}".encode())
        else:
            values.append(k * 0x01010101 % (1 << (8 * f.size)))
    data = packer.pack(*values)
    assert len(data) == CORE.sizeof(ctype)
    back = CORE.from_bytes(ctype, data)
    for f, want in zip(fields, values, strict=True):
        got = getattr(back, f.name)
        if f.ctype.startswith("char["):
            got = CORE.ffi.string(got)
        assert got == want, f.name
    covered = bytearray(len(data))
    for f in fields:
        covered[f.offset : f.offset + f.size] = b"\x01" * f.size
    assert all(b == 0 for b, c in zip(data, covered, strict=True) if not c)


def test_a_string_longer_than_its_field_is_cut_before_the_nul() -> None:
    packer = _packer("struct accel_info_memory_region", "name", "total_bytes", "used_bytes")
    data = packer.pack(b"x" * 40, 1, 2)
    name = CORE.from_bytes("struct accel_info_memory_region", data).name
    assert CORE.ffi.string(name) == b"x" * 15
    assert data[15] == 0


def test_a_packer_naming_the_fields_wrongly_is_refused() -> None:
    with pytest.raises(TypeError, match="reset_count"):
        _packer("struct accel_info_status", "status", "flags", "oops_count", "reset_count")
    with pytest.raises(TypeError, match="open_count"):
        _packer("struct accel_info_status", "status", "flags", "reset_count", "oops_count")
