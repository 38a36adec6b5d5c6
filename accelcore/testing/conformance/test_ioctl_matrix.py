"""The ioctl negative matrix: one error path per case, from an otherwise valid example.

Every case starts from the driver's declared example of an ioctl, changes one
thing, and expects one errno (``Documentation/process/botching-up-ioctls.rst``:
"only test for one single error path in each subtest by submitting otherwise
perfectly valid data"). Each case runs on a fresh file.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pytest

from accelcore.driver import DRM_COMMAND_BASE, DRM_COMMAND_END
from accelcore.testing.conformance import check
from accelcore.testing.conformance.payloads import Field, flag_fields, pad_fields, poke
from accelcore.testing.conformance.rig import (
    Rig,
    diff_snapshots,
    failing_examples,
    legacy_ignored_fields,
)
from accelcore.testing.conformance.session import Conformance
from accelcore.testing.conformance.steps import Value
from accelcore.uapi import ioc

#: An address no process maps (below the first page).
BAD_POINTER = 0x10


def _examples(conf: Conformance, rig: Rig) -> dict[str, dict[str, int]]:
    ex = {n: dict(v) for n, v in rig.examples().items()}
    if not ex:
        pytest.skip(f"driver {conf.name} declares no examples for its ioctls")
    return ex


#: How a case changes a prepared example: (cmd, payload) -> (cmd, payload or argp).
Mutation = Callable[[int, bytes], tuple[int, bytes | bytearray | int]]


@dataclass
class Case:
    """One negative (or positive) case: what it is, the ioctl, and its change."""

    what: str
    name: str | None
    cmd: int
    mutate: Mutation | None = None
    #: Fields set on the prepared example (values may name setup results).
    overlay: Mapping[str, Value] | None = None


def _call(rig: Rig, case: Case) -> tuple[int, str, list[str]]:
    """Run one case in a fresh process (after the example's setup, if any).

    Returns (errno, message, effects): (0, "", []) on success; on failure the
    named state changes the failed call made (failure atomicity), and what its
    process left behind once it exited.
    """
    rig.observe()
    rig.settle()
    base = rig.subsystem.accounting()
    proc = rig.process()
    cmd, payload = case.cmd, b""
    effects: list[str] = []
    try:
        if case.name is None:
            fd = rig.open(proc)
        else:
            prep = rig.prepare(proc, case.name, overlay=case.overlay)
            fd, payload = prep.fd, prep.payload
        arg: bytes | bytearray | int = payload
        if case.mutate is not None:
            cmd, arg = case.mutate(cmd, payload)
        rig.settle()
        before = rig.snapshot()
        try:
            if isinstance(arg, int):
                proc.ioctl(fd, cmd, arg)
            else:
                proc.ioctl(fd, cmd, bytearray(arg) if arg else 0)
        except OSError as exc:
            rig.settle()
            effects = diff_snapshots(before, rig.snapshot())
            got, msg = exc.errno or 0, str(exc.strerror)
        else:
            got, msg = 0, ""
    finally:
        proc.exit()
    return got, msg, effects + _left_behind(rig, base)


def _left_behind(rig: Rig, base: Mapping[str, int]) -> list[str]:
    """What changed in the accounting since ``base``, once the calls' process exited."""
    rig.settle()
    after = rig.subsystem.accounting()
    return [
        f"{k}: {base[k]} -> {after.get(k)} after its process exited"
        for k in base
        if k not in {"shared_memory", "oopses"} and after.get(k) != base[k]
    ]


def _name(e: int) -> str:
    return errno.errorcode.get(e, str(e)) if e else "success"


def _expect(rig: Rig, cases: Sequence[Case], want: int) -> list[str]:
    wrong = []
    for case in cases:
        got, msg, effects = _call(rig, case)
        if got != want:
            detail = f" ({msg})" if msg else ""
            wrong.append(f"{case.what}: got {_name(got)}{detail}, expected {_name(want)}")
        if got and effects:
            wrong.append(
                f"{case.what}: failed with {_name(got)} but changed the state (a failed "
                f"ioctl must have no visible effect): " + "; ".join(effects)
            )
        elif effects:
            wrong.append(f"{case.what}: left resources behind: " + "; ".join(effects))
    return wrong


def _fail(rig: Rig, wrong: list[str]) -> None:
    assert not wrong, f"driver {rig.name}:\n  " + "\n  ".join(wrong)


def _rig(conf: Conformance) -> Rig:
    """A machine with as many devices as the driver's examples need."""
    return conf.example_rig()


@check("ioctl-matrix", "every declared example succeeds on a fresh file")
def test_examples_are_valid(accel_conformance: Conformance) -> None:
    rig = _rig(accel_conformance)
    examples = _examples(accel_conformance, rig)
    cases = [
        Case(f"{n} with its example {ex}", n, rig.ioctl_def(n).cmd) for n, ex in examples.items()
    ]
    _fail(rig, _expect(rig, cases, 0))


@check(
    "ioctl-matrix",
    "every declared example succeeds inside proc.batch(), between two failing calls, "
    "each with its own result, and leaves nothing behind",
)
def test_examples_batched(accel_conformance: Conformance) -> None:
    rig = _rig(accel_conformance)
    examples = _examples(accel_conformance, rig)
    used = set(rig.devices[0].ioctls)
    free = [nr for nr in range(DRM_COMMAND_BASE, DRM_COMMAND_END) if nr not in used]
    if not free:
        pytest.skip(f"driver {rig.name} uses every driver ioctl number: none is unknown")
    bad = ioc.IO(ord("d"), free[-1])  # ENOTTY
    wrong = []
    for name in examples:
        rig.settle()
        base = rig.subsystem.accounting()
        proc = rig.process()
        try:
            prep = rig.prepare(proc, name)
            with proc.batch() as b:
                first = b.ioctl(prep.fd, bad, 0)
                call = b.ioctl(
                    prep.fd, rig.ioctl_def(name).cmd, bytearray(prep.payload) if prep.payload else 0
                )
                last = b.ioctl(prep.fd, bad, 0)
            outcomes = [(c.error.errno or 0) if c.error else 0 for c in (first, call, last)]
            if outcomes != [errno.ENOTTY, 0, errno.ENOTTY]:
                why = f" ({call.error.strerror})" if call.error else ""
                wrong.append(
                    f"{name} in a batch: got {[_name(e) for e in outcomes]}{why}, expected "
                    "[ENOTTY, success, ENOTTY]"
                )
        finally:
            proc.exit()
        left = _left_behind(rig, base)
        if left:
            wrong.append(f"{name} in a batch left resources behind: " + "; ".join(left))
    _fail(rig, wrong)


@check("ioctl-matrix", "unknown numbers in the driver range (0x40..0x9f) get ENOTTY")
def test_unknown_numbers_enotty(accel_conformance: Conformance) -> None:
    rig = accel_conformance.rig()
    used = set(rig.devices[0].ioctls)
    cases = [
        Case(f"unknown nr {nr:#x}", None, ioc.IOWR(ord("d"), nr, 8), lambda c, p: (c, bytes(8)))
        for nr in range(DRM_COMMAND_BASE, DRM_COMMAND_END)
        if nr not in used
    ]
    _fail(rig, _expect(rig, cases, errno.ENOTTY))


def _each_example(
    conf: Conformance, make: Callable[[Rig, str], list[tuple[str, Mutation]]]
) -> tuple[Rig, list[Case]]:
    rig = _rig(conf)
    cases: list[Case] = []
    for name in _examples(conf, rig):
        cmd = rig.ioctl_def(name).cmd
        cases += [Case(what, name, cmd, mutate) for what, mutate in make(rig, name)]
    return rig, cases


def _takes_arg(rig: Rig, name: str) -> bool:
    return rig.ioctl_def(name).arg_type is not None


@check("ioctl-matrix", "an example's number with another ioctl type than 'd' gets ENOTTY")
def test_wrong_type_enotty(accel_conformance: Conformance) -> None:
    rig, cases = _each_example(
        accel_conformance,
        lambda rig, n: [(f"{n} with type 'e'", lambda c, p: ((c & ~0xFF00) | (ord("e") << 8), p))],
    )
    _fail(rig, _expect(rig, cases, errno.ENOTTY))


@check("ioctl-matrix", "an argument pointer into unmapped memory gets EFAULT")
def test_bad_pointer_efault(accel_conformance: Conformance) -> None:
    rig, cases = _each_example(
        accel_conformance,
        lambda rig, n: (
            [(f"{n} with argp {BAD_POINTER:#x}", lambda c, p: (c, BAD_POINTER))]
            if _takes_arg(rig, n)
            else []
        ),
    )
    if not cases:
        pytest.skip(f"driver {rig.name}: no example ioctl takes an argument")
    _fail(rig, _expect(rig, cases, errno.EFAULT))


def _field_cases(
    conf: Conformance, pick: Callable[[Rig, str], list[Field]], byte: int, what: str, kind: str
) -> None:
    ignored: list[str] = []

    def make(rig: Rig, n: str) -> list[tuple[str, Mutation]]:
        def one(f: Field) -> Mutation:
            return lambda c, p: (c, poke(p, f, byte))

        if not ioc.decode(rig.ioctl_def(n).cmd).dir & ioc.IOC_WRITE:
            return []  # the kernel never reads the struct of an _IOR ioctl
        legacy = set(legacy_ignored_fields(conf.driver).get(n, ()))
        fields = pick(rig, n)
        ignored.extend(f"{n}.{f.name}" for f in fields if f.name in legacy)
        return [(f"{n} with {f.name}={what}", one(f)) for f in fields if f.name not in legacy]

    rig, cases = _each_example(conf, make)
    if ignored:
        conf.report(f"{kind} fields declared legacy-ignored (not checked): {', '.join(ignored)}")
    if not cases:
        also = " it checks (the others are declared legacy-ignored)" if ignored else ""
        pytest.skip(f"driver {rig.name}: no example ioctl struct has a {kind} field{also}")
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
    def halve(c: int, p: bytes) -> tuple[int, bytes]:
        half = len(p) // 2
        return (c & ~(ioc.IOC_SIZEMASK << 16)) | (half << 16), p[:half]

    rig, cases = _each_example(
        accel_conformance,
        lambda rig, n: (
            [(f"{n} with a half-size struct", halve)]
            if rig.uapi.sizeof(rig.ioctl_def(n).arg_type or "char") >= 2
            else []
        ),
    )
    if not cases:
        pytest.skip(f"driver {rig.name}: no example ioctl takes an argument")
    wrong = []
    for case in cases:
        got, msg, effects = _call(rig, case)
        if rig.subsystem.oopses:
            wrong.append(f"{case.what} oopsed: {rig.subsystem.oopses[-1]}")
            break
        if got == errno.EIO:
            wrong.append(f"{case.what}: EIO ({msg})")
        if got and effects:
            wrong.append(
                f"{case.what}: failed with {_name(got)} but changed the state: "
                + "; ".join(effects)
            )
    _fail(rig, wrong)


@check(
    "ioctl-matrix",
    "every call the driver declares to fail (failing_examples) gets its errno and changes nothing",
    catches="a failed call with a visible effect on live objects (a reference or handle "
    "taken before validating)",
)
def test_declared_failures(accel_conformance: Conformance) -> None:
    conf = accel_conformance
    table = failing_examples(conf.driver)
    if not table:
        pytest.skip(
            f"driver {conf.name} declares no failing_examples (calls that must fail, "
            f"as Fails(fields, errno), per ioctl)"
        )
    rig = _rig(conf)
    wrong = []
    count = 0
    for name, fails in sorted(table.items()):
        cmd = rig.ioctl_def(name).cmd
        for f in fails:
            why = f" ({f.why})" if f.why else ""
            case = Case(f"{name} with {dict(f.fields)}{why}", name, cmd, overlay=f.fields)
            wrong += _expect(rig, [case], f.errno)
            count += 1
    conf.report(f"declared failures: {count} call(s) over {len(table)} ioctl(s)")
    _fail(rig, wrong)
