"""Fuzzing: hypothesis payloads for every declared ioctl of the driver.

Each ioctl is fuzzed by its own process whose file already holds live objects
(a buffer, an imported dma-buf, the state every example leaves: jobs, command
buffers) and the ioctl's example prepared with its setup, so error paths that
touch real handles and sequence numbers run. Payloads are random bytes of the
struct's size, the prepared example with a few bytes changed, and sizes around
the struct's (the size field of the number is changed to match). Every call
must succeed or fail with an errno; no oops; a failed call leaves the whole
snapshot (:meth:`Rig.snapshot`) unchanged; and after the last file closes
nothing is left (the session's leak check).
Examples are derandomized, so a CI run is reproducible.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelcore.driver import OwnershipPolicy
from accelcore.testing.conformance import check
from accelcore.testing.conformance.rig import diff_snapshots
from accelcore.testing.conformance.session import Conformance, format_oopses
from accelcore.uapi import ioc
from accelcore.userspace import Process

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


@dataclass
class Held:
    """A process whose file holds live objects, with one ioctl's prepared example."""

    proc: Process
    fd: int
    example: bytes


@check(
    "fuzz",
    "random payloads of every ioctl, from a file holding live objects: an errno, no oops, "
    "no leak, and a failed call changes nothing",
    catches="an oops on junk; an error path that leaks a reference or a handle of a live object",
)
def test_fuzz_payloads(accel_conformance: Conformance) -> None:
    rig = accel_conformance.example_rig(peer=True)
    table = sorted(rig.devices[0].ioctls.values(), key=lambda d: d.name)
    if not table:
        pytest.skip(f"driver {rig.name} declares no ioctls")
    counts: dict[str, int] = {}
    held: dict[str, Held] = {}
    holding: list[str] = []
    # The fuzzing file holds buffers, jobs and an imported dma-buf; then each
    # ioctl's example is prepared there (real handles and sequence numbers). Under
    # a per-process policy each ioctl gets its own process (its setup may make a
    # process-wide object twice); under a single owner, one process does it all.
    per_ioctl = rig.policy == OwnershipPolicy.PER_PROCESS
    proc = rig.process()
    fd = rig.open(proc)
    holding = rig.hold_state(proc, fd)
    for desc in table:
        if per_ioctl and held:
            proc = rig.process()
            fd = rig.open(proc)
            holding = rig.hold_state(proc, fd)
        if desc.name in rig.examples():
            prep = rig.prepare(proc, desc.name, fd)
            held[desc.name] = Held(proc, prep.fd, prep.payload)
        else:
            held[desc.name] = Held(proc, fd, rig.example_payload(desc.name))
    rig.settle()

    def payloads(desc: Any) -> st.SearchStrategy[tuple[Any, int, bytes]]:
        size = (desc.cmd >> 16) & ioc.IOC_SIZEMASK
        example = held[desc.name].example
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
        run(case)

    def run(case: tuple[Any, int, bytes]) -> None:
        desc, cmd, data = case
        h = held[desc.name]
        before_oops = len(rig.subsystem.oopses)
        before = rig.snapshot()
        buf = bytearray(data)
        what = f"{desc.name} (cmd {cmd:#010x}) with payload {data.hex() or '<none>'}"
        try:
            h.proc.ioctl(h.fd, cmd, buf if buf else 0)
        except OSError as exc:
            assert exc.errno, f"{what} raised an OSError without errno: {exc!r}"
            rig.settle()
            effects = diff_snapshots(before, rig.snapshot())
            # A multi-device call may fail after some devices, saying so in its args.
            progress = desc.multi_device and bytes(buf) != data
            assert not effects or progress, (
                f"{what} failed with {errno.errorcode.get(exc.errno, exc.errno)} but changed "
                f"the state (a failed ioctl must have no visible effect): " + "; ".join(effects)
            )
        finally:
            rig.settle()
        counts[desc.name] = counts.get(desc.name, 0) + 1
        oopses = rig.subsystem.oopses[before_oops:]
        assert not oopses, f"{what}: " + format_oopses(oopses)

    # Fixed seeds first, whatever hypothesis draws: all zeros and all ones.
    for desc in table:
        size = (desc.cmd >> 16) & ioc.IOC_SIZEMASK
        for byte in (0x00, 0xFF):
            run((desc, desc.cmd, bytes([byte]) * size))
    one()
    accel_conformance.report(
        f"fuzz: {sum(counts.values())} calls over {len(counts)}/{len(table)} ioctls, each "
        f"file holding {len(holding)} live object(s)"
    )
