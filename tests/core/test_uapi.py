"""The uAPI layer: _IOC codec, header loading, the rules checker, and gcc agreement."""

from __future__ import annotations

import errno
import shutil
import subprocess
from pathlib import Path

import pytest

from accelcore import InvalidArgument, load_uapi
from accelcore.testing.vaccel import VACCEL_UAPI
from accelcore.uapi import CORE, CORE_HEADER, check_struct, check_uapi, ioc


def test_ioc_encodes_like_the_kernel() -> None:
    assert ioc.IOWR(ord("d"), 0x00, 64) == 0xC0406400
    assert ioc.IOW(ord("d"), 0x09, 8) == 0x40086409
    assert ioc.IO(ord("d"), 0x1E) == 0x641E


def test_ioc_decode_roundtrip() -> None:
    n = ioc.decode(0xC00C642D)
    assert (n.dir, n.type, n.nr, n.size) == (3, ord("d"), 0x2D, 12)
    assert n.cmd == 0xC00C642D


def test_ioc_rejects_oversized_struct() -> None:
    with pytest.raises(InvalidArgument, match="size 0x4000"):
        ioc.IOR(ord("d"), 1, 1 << 14)


def test_core_numbers_match_the_reference_table() -> None:
    assert CORE.DRM_IOCTL_VERSION == 0xC0406400
    assert CORE.DRM_IOCTL_GEM_CLOSE == 0x40086409
    assert CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD == 0xC00C642D
    assert CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE == 0xC00C642E
    assert CORE.DRM_IOCTL_SET_MASTER == 0x0000641E
    assert CORE.DRM_IOCTL_SET_CLIENT_NAME == 0xC01064D1


def test_driver_header_sees_core_constants() -> None:
    assert VACCEL_UAPI.DRM_COMMAND_BASE == 0x40
    assert VACCEL_UAPI.ioctls["DRM_IOCTL_VACCEL_NOP"].nr == 0x41


def test_new_and_bytes_roundtrip() -> None:
    v = CORE.new("struct drm_prime_handle", handle=7, fd=-1)
    raw = CORE.to_bytes(v)
    back = CORE.from_bytes("struct drm_prime_handle", raw)
    assert (back.handle, back.fd, len(raw)) == (7, -1, 12)


def test_view_refuses_short_buffer() -> None:
    with pytest.raises(InvalidArgument, match="smaller than struct accel_info"):
        CORE.view("struct accel_info", bytearray(8))


def _header(body: str) -> str:
    return f"/* cffi:begin */\n{body}\n/* cffi:end */\n"


@pytest.mark.parametrize(
    ("body", "rule", "field"),
    [
        ("struct s { __u32 a; int b; };", "fixed-width", "b"),
        ("struct s { __u32 a; __u64 b; };", "explicit padding", "b"),
        ("struct s { __u64 a; __u32 b; };", "64-bit multiple", None),
        ("struct s { __u32 a; char *p; };", "fixed-width", "p"),
        ("enum e { X }; struct s { enum e a; __u32 b; };", "fixed-width", "a"),
    ],
)
def test_checker_names_struct_and_field(body: str, rule: str, field: str | None) -> None:
    u = load_uapi("bad.h", include=[CORE], text=_header(body))
    problems = check_struct(u, "struct s")
    assert any(rule in p.rule and p.field == field for p in problems), problems


def test_checker_accepts_clean_struct() -> None:
    u = load_uapi(
        "ok.h",
        include=[CORE],
        text=_header("struct s { __u64 a; __u32 b; __u32 pad; __u8 c[8]; };"),
    )
    assert check_uapi(u) == []


def test_unknown_ioctl_type_in_header_is_refused() -> None:
    text = (
        _header("struct s { __u64 a; };")
        + "#define DRM_IOCTL_X DRM_IOWR(DRM_COMMAND_BASE, struct missing)\n"
    )
    with pytest.raises(InvalidArgument, match="unknown type 'struct missing'"):
        load_uapi("x.h", include=[CORE], text=text)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler on this machine")
def test_numbers_and_sizes_agree_with_gcc(tmp_path: Path) -> None:
    names = [
        "DRM_IOCTL_VERSION",
        "DRM_IOCTL_GEM_CLOSE",
        "DRM_IOCTL_PRIME_HANDLE_TO_FD",
        "ACCEL_IOCTL_INFO",
        "DMA_BUF_IOCTL_SYNC",
        "UDMABUF_CREATE",
        "DRM_IOCTL_VACCEL_CREATE_BO",
        "DRM_IOCTL_VACCEL_WAIT",
    ]
    structs = ["struct accel_info", "struct accel_info_client", "struct vaccel_submit"]
    src = ["#include <stdio.h>", "#include <stddef.h>", '#include "vaccel.h"', "int main(void) {"]
    src += [f'printf("%lu\\n", (unsigned long){n});' for n in names]
    src += [f'printf("%zu\\n", sizeof({s}));' for s in structs]
    src += ['printf("%zu\\n", offsetof(struct accel_info_client, memory_bytes));', "return 0; }"]
    (tmp_path / "probe.c").write_text("\n".join(src))
    vaccel_dir = Path(VACCEL_UAPI.path).parent
    subprocess.run(
        [
            "gcc",
            "-I",
            str(CORE_HEADER.parent),
            "-I",
            str(vaccel_dir),
            "-o",
            str(tmp_path / "probe"),
            str(tmp_path / "probe.c"),
        ],
        check=True,
    )
    out = subprocess.run(
        [str(tmp_path / "probe")], check=True, capture_output=True, text=True
    ).stdout.split()
    expected = (
        [VACCEL_UAPI.constants[n] for n in names]
        + [VACCEL_UAPI.sizeof(s) for s in structs]
        + [VACCEL_UAPI.ffi.offsetof("struct accel_info_client", "memory_bytes")]
    )
    assert [int(x) for x in out] == expected


# -- Uapi.new: bad arguments name the struct and the field (issue 22 §3) ----------------
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hadle": 1}, "struct drm_gem_close has no field 'hadle' (its fields: handle, pad)"),
        ({"handle": "x"}, "struct drm_gem_close.handle = 'x'"),
        ({"handle": -1}, "struct drm_gem_close.handle = -1"),
        ({"pad": 1 << 40}, "struct drm_gem_close.pad = 1099511627776"),
    ],
)
def test_new_with_a_bad_field_is_einval_naming_struct_and_field(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgument) as exc:
        CORE.new("struct drm_gem_close", **fields)
    assert exc.value.errno == errno.EINVAL
    assert message in str(exc.value)


def test_new_of_a_type_the_header_lacks_is_einval() -> None:
    with pytest.raises(InvalidArgument, match=r"'struct no_such' is not a struct of accel\.h"):
        CORE.new("struct no_such")
