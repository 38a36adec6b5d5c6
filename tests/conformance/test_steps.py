"""Stateful examples: setup steps, references into their results, named snapshots."""

from __future__ import annotations

import errno

import pytest

from accelcore.testing.conformance.rig import SetupError, build_rig, diff_snapshots
from accelcore.testing.conformance.steps import Call, Setup, Unique
from accelcore.testing.vaccel import VAccelDriver


class _Bad(VAccelDriver):
    name = "steps_bad"
    examples = {**VAccelDriver.examples, "DRM_IOCTL_VACCEL_WAIT": {"timeout_ns": -1}}
    example_setup = {
        **VAccelDriver.example_setup,
        "DRM_IOCTL_VACCEL_NOP": Setup(args={"value": "nowhere.seqno"}),
        "DRM_IOCTL_VACCEL_SUBMIT": Setup(
            steps=(Call("job", "DRM_IOCTL_VACCEL_SUBMIT", {"handle": 77}),),
        ),
    }


def test_prepare_feeds_step_results_into_the_example() -> None:
    rig = build_rig(VAccelDriver)
    proc = rig.process()
    prep = rig.prepare(proc, "DRM_IOCTL_VACCEL_WAIT")
    wait = rig.uapi.from_bytes("struct vaccel_wait", prep.payload)
    assert wait.seqno == prep.results["job"].seqno != 0
    assert wait.timeout_ns == -1
    proc.ioctl(prep.fd, rig.ioctl_def("DRM_IOCTL_VACCEL_WAIT").cmd, bytearray(prep.payload))
    rig.stop()


def test_a_reference_to_no_step_names_the_label() -> None:
    rig = build_rig(_Bad)
    with pytest.raises(SetupError, match="no setup step is labelled 'nowhere'"):
        rig.prepare(rig.process(), "DRM_IOCTL_VACCEL_NOP")
    rig.stop()


def test_a_failing_step_names_the_step_and_its_errno() -> None:
    rig = build_rig(_Bad)
    with pytest.raises(
        SetupError, match=r"setup step 0 of DRM_IOCTL_VACCEL_SUBMIT.*handle 77"
    ) as e:
        rig.prepare(rig.process(), "DRM_IOCTL_VACCEL_SUBMIT")
    assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == errno.ENOENT
    rig.stop()


def test_unique_values_differ_per_use() -> None:
    rig = build_rig(VAccelDriver)
    proc = rig.process()
    got = []
    for _ in range(3):
        results: dict[str, object] = {}
        rig._step(proc, Unique("va", 0x1000, 0x100), results)
        got.append(results["va"])
    assert got == [{"value": 0x1000}, {"value": 0x1100}, {"value": 0x1200}]
    rig.stop()


def test_snapshot_names_what_a_job_changed() -> None:
    rig = build_rig(VAccelDriver)
    proc = rig.process()
    before = rig.snapshot()
    rig.run_example(proc, rig.open(proc), "DRM_IOCTL_VACCEL_SUBMIT")
    rig.settle()
    changes = diff_snapshots(before, rig.snapshot())
    text = "\n".join(changes)
    for name in (
        "accounting.handles: 0 -> 1",
        "device0.info.engines[fill].submitted: 0 -> 1",
        "device0.info.info_counters.completed: 0 -> 1",
        "jobs_submitted: '0' -> '1'",
    ):
        assert name in text, f"{name!r} not in the named changes:\n{text}"
    rig.stop()
