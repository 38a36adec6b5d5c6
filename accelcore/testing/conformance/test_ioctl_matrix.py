"""The ioctl negative matrix: one error path per case, from an otherwise valid example.

Every case starts from the driver's declared example of an ioctl, changes one
thing, and expects one errno (``Documentation/process/botching-up-ioctls.rst``:
"only test for one single error path in each subtest by submitting otherwise
perfectly valid data"). Each case runs on a fresh file.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence

import pytest

from accelcore.driver import DRM_COMMAND_BASE, DRM_COMMAND_END
from accelcore.testing.conformance import check
from accelcore.testing.conformance.payloads import Field, flag_fields, pad_fields, poke
from accelcore.testing.conformance.rig import Rig
from accelcore.testing.conformance.session import Conformance
from accelcore.uapi import ioc

#: An address no process maps (below the first page).
BAD_POINTER = 0x10


def _examples(conf: Conformance, rig: Rig) -> dict[str, dict[str, int]]:
    ex = {n: dict(v) for n, v in rig.examples().items()}
    if not ex:
        pytest.skip(f"driver {conf.name} declares no examples for its ioctls")
    return ex


def _call(rig: Rig, cmd: int, payload: bytes | bytearray | int) -> tuple[int, str]:
    """Run one ioctl on a fresh file; (errno, message), (0, "") on success."""
    proc = rig.process()
    fd = rig.open(proc)
    try:
        if isinstance(payload, int):
            proc.ioctl(fd, cmd, payload)
        else:
            proc.ioctl(fd, cmd, bytearray(payload) if payload else 0)
    except OSError as exc:
        return exc.errno or 0, str(exc.strerror)
    finally:
        proc.exit()
    return 0, ""


def _name(e: int) -> str:
    return errno.errorcode.get(e, str(e)) if e else "success"


def _expect(
    rig: Rig, cases: Sequence[tuple[str, int, bytes | bytearray | int]], want: int
) -> list[str]:
    wrong = []
    for what, cmd, payload in cases:
        got, msg = _call(rig, cmd, payload)
        if got != want:
            detail = f" ({msg})" if msg else ""
            wrong.append(f"{what}: got {_name(got)}{detail}, expected {_name(want)}")
    return wrong


def _fail(rig: Rig, wrong: list[str]) -> None:
    assert not wrong, f"driver {rig.name}:\n  " + "\n  ".join(wrong)


@check("ioctl-matrix", "every declared example succeeds on a fresh file")
def test_examples_are_valid(accel_conformance: Conformance) -> None:
    rig = accel_conformance.rig()
    examples = _examples(accel_conformance, rig)
    cases = [
        (f"{n} with its example {ex}", rig.ioctl_def(n).cmd, rig.example_payload(n))
        for n, ex in examples.items()
    ]
    _fail(rig, _expect(rig, cases, 0))


@check("ioctl-matrix", "unknown numbers in the driver range (0x40..0x9f) get ENOTTY")
def test_unknown_numbers_enotty(accel_conformance: Conformance) -> None:
    rig = accel_conformance.rig()
    used = set(rig.devices[0].ioctls)
    cases = [
        (f"unknown nr {nr:#x}", ioc.IOWR(ord("d"), nr, 8), bytes(8))
        for nr in range(DRM_COMMAND_BASE, DRM_COMMAND_END)
        if nr not in used
    ]
    _fail(rig, _expect(rig, cases, errno.ENOTTY))


def _each_example(
    conf: Conformance, make: Callable[[Rig, str, int, bytes], list[tuple[str, int, object]]]
) -> tuple[Rig, list[tuple[str, int, bytes | bytearray | int]]]:
    rig = conf.rig()
    cases: list[tuple[str, int, bytes | bytearray | int]] = []
    for name in _examples(conf, rig):
        cmd = rig.ioctl_def(name).cmd
        cases += make(rig, name, cmd, rig.example_payload(name))  # type: ignore[arg-type]
    return rig, cases


@check("ioctl-matrix", "an example's number with another ioctl type than 'd' gets ENOTTY")
def test_wrong_type_enotty(accel_conformance: Conformance) -> None:
    rig, cases = _each_example(
        accel_conformance,
        lambda rig, n, cmd, p: [(f"{n} with type 'e'", (cmd & ~0xFF00) | (ord("e") << 8), p)],
    )
    _fail(rig, _expect(rig, cases, errno.ENOTTY))


@check("ioctl-matrix", "an argument pointer into unmapped memory gets EFAULT")
def test_bad_pointer_efault(accel_conformance: Conformance) -> None:
    rig, cases = _each_example(
        accel_conformance,
        lambda rig, n, cmd, p: [(f"{n} with argp {BAD_POINTER:#x}", cmd, BAD_POINTER)] if p else [],
    )
    if not cases:
        pytest.skip(f"driver {rig.name}: no example ioctl takes an argument")
    _fail(rig, _expect(rig, cases, errno.EFAULT))


def _field_cases(
    conf: Conformance, pick: Callable[[Rig, str], list[Field]], byte: int, what: str, kind: str
) -> None:
    def make(rig: Rig, n: str, cmd: int, p: bytes) -> list[tuple[str, int, object]]:
        return [(f"{n} with {f.name}={what}", cmd, poke(p, f, byte)) for f in pick(rig, n)]

    rig, cases = _each_example(conf, make)
    if not cases:
        pytest.skip(f"driver {rig.name}: no example ioctl struct has a {kind} field")
    _fail(rig, _expect(rig, cases, errno.EINVAL))


def _arg(rig: Rig, n: str) -> str:
    t = rig.ioctl_def(n).arg_type
    assert t is not None
    return t


@check("ioctl-matrix", "a non-zero pad*/reserved* field in an example gets EINVAL")
def test_nonzero_pad_einval(accel_conformance: Conformance) -> None:
    _field_cases(
        accel_conformance,
        lambda rig, n: pad_fields(rig.uapi, _arg(rig, n)),
        1,
        "1",
        "pad*/reserved*",
    )


@check("ioctl-matrix", "an all-ones flags field in an example gets EINVAL")
def test_all_ones_flags_einval(accel_conformance: Conformance) -> None:
    _field_cases(
        accel_conformance, lambda rig, n: flag_fields(rig.uapi, _arg(rig, n)), 0xFF, "~0", "flags"
    )


@check("ioctl-matrix", "a short struct (half the size) gets an errno or success, never an oops")
def test_short_struct_no_oops(accel_conformance: Conformance) -> None:
    rig, cases = _each_example(
        accel_conformance,
        lambda rig, n, cmd, p: [(n, cmd, p)] if len(p) >= 2 else [],
    )
    if not cases:
        pytest.skip(f"driver {rig.name}: no example ioctl takes an argument")
    wrong = []
    for name, cmd, payload in cases:
        assert isinstance(payload, bytes)
        half = len(payload) // 2
        short = (cmd & ~(ioc.IOC_SIZEMASK << 16)) | (half << 16)
        got, msg = _call(rig, short, payload[:half])
        if rig.subsystem.oopses:
            wrong.append(f"{name} with a {half}-byte struct oopsed: {rig.subsystem.oopses[-1]}")
            break
        if got == errno.EIO:
            wrong.append(f"{name} with a {half}-byte struct: EIO ({msg})")
    _fail(rig, wrong)
