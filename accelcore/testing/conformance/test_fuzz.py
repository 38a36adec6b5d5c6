"""Fuzzing: hypothesis payloads for every declared ioctl of the driver.

Payloads are random bytes of the struct's size, the declared example with a few
bytes changed, and sizes around the struct's (the size field of the number is
changed to match). Every call must succeed or fail with an errno; no oops; and
after the last file closes nothing is left (the session's leak check).
Examples are derandomized, so a CI run is reproducible.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelcore.testing.conformance import check
from accelcore.testing.conformance.session import Conformance, format_oopses
from accelcore.uapi import ioc

#: Hypothesis examples per ioctl, and at most in all (CI runs three drivers).
PER_IOCTL = 40
MAX_EXAMPLES = 400


def _mutate(example: bytes) -> st.SearchStrategy[bytes]:
    if not example:
        return st.just(b"")
    n = len(example)
    edits = st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 255)), max_size=4)

    def apply(ed: list[tuple[int, int]]) -> bytes:
        out = bytearray(example)
        for i, v in ed:
            out[i] = v
        return bytes(out)

    return edits.map(apply)


@check("fuzz", "random payloads and sizes of every ioctl: success or an errno, no oops, no leak")
def test_fuzz_payloads(accel_conformance: Conformance) -> None:
    rig = accel_conformance.rig()
    table = sorted(rig.devices[0].ioctls.values(), key=lambda d: d.name)
    if not table:
        pytest.skip(f"driver {rig.name} declares no ioctls")
    proc = rig.process()
    counts: dict[str, int] = {}

    def payloads(desc: Any) -> st.SearchStrategy[tuple[Any, int, bytes]]:
        size = (desc.cmd >> 16) & ioc.IOC_SIZEMASK
        example = rig.example_payload(desc.name)
        sizes = st.sampled_from(sorted({size, size // 2, max(size - 1, 0), size + 1, size + 8}))
        body = st.one_of(st.just(example), _mutate(example), st.binary(min_size=0, max_size=size))

        def build(sz: int, data: bytes) -> tuple[Any, int, bytes]:
            data = (data + bytes(sz))[:sz]
            cmd = (desc.cmd & ~(ioc.IOC_SIZEMASK << 16)) | (sz << 16)
            return desc, cmd, data

        return st.builds(build, sizes, body)

    cases = st.one_of(*[payloads(d) for d in table])

    @settings(
        max_examples=min(MAX_EXAMPLES, PER_IOCTL * len(table)),
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def one(case: tuple[Any, int, bytes]) -> None:
        desc, cmd, data = case
        before = len(rig.subsystem.oopses)
        fd = rig.open(proc)
        try:
            proc.ioctl(fd, cmd, bytearray(data) if data else 0)
        except OSError as exc:
            assert exc.errno, f"{desc.name} raised an OSError without errno: {exc!r}"
        finally:
            proc.close(fd)
        counts[desc.name] = counts.get(desc.name, 0) + 1
        oopses = rig.subsystem.oopses[before:]
        assert not oopses, (
            f"{desc.name} (cmd {cmd:#010x}) with payload {data.hex() or '<none>'}: "
            + format_oopses(oopses)
        )

    one()
    accel_conformance.report(
        f"fuzz: {sum(counts.values())} calls over {len(counts)}/{len(table)} ioctls"
    )
