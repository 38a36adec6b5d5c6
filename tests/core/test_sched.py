"""The job scheduler (drm_sched): order, dependencies, credits, fences, timeouts,
recovery and teardown, in virtual time; and vaccel's use of it."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import pytest

from accelcore import Fence, FenceContext, VirtualClock
from accelcore.errors import NoEntry, error_for_errno
from accelcore.sched import SchedEntity, SchedJob, SchedStat, Scheduler, SchedulerOps
from accelcore.testing.vaccel import VACCEL_UAPI as V

from .conftest import Rig


@dataclass
class Ops(SchedulerOps):
    """A hardware queue whose jobs take ``job.priv`` ns; records every callback."""

    clock: VirtualClock
    log: list[str] = field(default_factory=list)
    hw: FenceContext | None = None
    stat: SchedStat | None = None
    fail_with: int = 0

    def run_job(self, job: SchedJob) -> Fence | None:
        self.log.append(f"run {job.priv}")
        if self.fail_with:
            raise _err(self.fail_with)
        if self.hw is None:
            self.hw = FenceContext(self.clock, "test", "hw")
        fence = self.hw.create()
        job.timer = self.clock.call_later(int(job.priv), fence.signal)  # type: ignore[attr-defined]
        return fence

    def cancel_job(self, job: SchedJob) -> None:
        self.log.append(f"cancel {job.priv}")
        job.timer.cancel()  # type: ignore[attr-defined]

    def free_job(self, job: SchedJob) -> None:
        self.log.append(f"free {job.priv}")

    def timedout_job(self, job: SchedJob) -> SchedStat:
        self.log.append(f"timeout {job.priv}")
        if self.stat is not None:
            return self.stat
        return super().timedout_job(job)


def _err(code: int) -> OSError:
    return error_for_errno(code, "refused")


def _sched(**kw: object) -> tuple[VirtualClock, Ops, Scheduler]:
    clock = VirtualClock()
    ops = Ops(clock)
    return clock, ops, Scheduler(clock, ops, "q", **kw)  # type: ignore[arg-type]


def _job(entity: SchedEntity, ns: int, **kw: object) -> SchedJob:
    return SchedJob(entity, priv=ns, **kw)  # type: ignore[arg-type]


def test_jobs_of_an_entity_run_in_order_and_signal_both_fences() -> None:
    clock, ops, sched = _sched()
    e = SchedEntity(sched, "ctx")
    a, b = _job(e, 100), _job(e, 200)
    e.push_job(a)
    e.push_job(b)
    assert a.scheduled.signalled and not b.scheduled.signalled
    clock.advance(100)
    assert a.finished.signalled and b.scheduled.signalled and not b.finished.signalled
    clock.advance(200)
    assert b.finished.signalled and b.finished.error == 0
    assert ops.log == ["run 100", "free 100", "run 200", "free 200"]


def test_finished_fence_exists_before_the_job_runs() -> None:
    clock, _, sched = _sched()
    e = SchedEntity(sched, "ctx")
    gate = FenceContext(clock, "t", "gate").create()
    job = _job(e, 10)
    job.add_dependency(gate)
    fence = e.push_job(job)
    assert fence is job.finished and not job.scheduled.signalled
    gate.signal()
    assert job.scheduled.signalled


def test_dependency_on_a_foreign_fence_delays_the_job() -> None:
    clock, ops, sched = _sched()
    e = SchedEntity(sched, "ctx")
    other = FenceContext(clock, "t", "other")
    dep = other.create()
    clock.call_later(500, dep.signal)
    job = _job(e, 10)
    job.add_dependency(dep)
    e.push_job(job)
    assert ops.log == []
    clock.advance(500)
    assert ops.log == ["run 10"]
    clock.advance(10)
    assert job.finished.timestamp == 510


def test_dependency_keeps_only_the_latest_fence_of_a_timeline() -> None:
    clock, _, sched = _sched()
    e = SchedEntity(sched, "ctx")
    tl = FenceContext(clock, "t", "tl")
    f1, f2 = tl.create(), tl.create()
    job = _job(e, 1)
    job.add_dependencies([f2, f1])
    assert job.dependencies == [f2]


def test_credit_limit_holds_back_other_entities_fifo() -> None:
    clock, ops, sched = _sched(credit_limit=1)
    e1, e2 = SchedEntity(sched, "a"), SchedEntity(sched, "b")
    e2.push_job(_job(e2, 100))
    e1.push_job(_job(e1, 50))
    e2.push_job(_job(e2, 70))
    clock.run_until_idle()
    assert [x for x in ops.log if x.startswith("run")] == ["run 100", "run 50", "run 70"]


def test_hardware_fence_error_completes_the_job_with_it() -> None:
    clock, ops, sched = _sched()
    e = SchedEntity(sched, "ctx")
    job = _job(e, 10)
    e.push_job(job)
    assert ops.hw is not None
    hw = job.parent
    assert hw is not None
    hw.set_error(-errno.EFAULT)
    clock.advance(10)
    assert job.finished.error == -errno.EFAULT


def test_run_job_refusing_fails_the_job_with_its_errno() -> None:
    _, ops, sched = _sched()
    ops.fail_with = errno.ENOSPC
    e = SchedEntity(sched, "ctx")
    job = _job(e, 10)
    e.push_job(job)
    assert job.finished.signalled and job.finished.error == -errno.ENOSPC
    assert ops.log == ["run 10", "free 10"]


def test_timeout_calls_timedout_job_and_default_recovery_cancels() -> None:
    clock, ops, sched = _sched(timeout_ns=1000)
    e = SchedEntity(sched, "ctx")
    job = _job(e, 5000)
    e.push_job(job)
    clock.advance(1000)
    assert ops.log == ["run 5000", "timeout 5000", "cancel 5000", "free 5000"]
    assert job.finished.error == -errno.ETIMEDOUT
    assert e.guilty and sched.timeouts == 1


def test_job_timeout_overrides_the_schedulers() -> None:
    clock, ops, sched = _sched(timeout_ns=1000)
    e = SchedEntity(sched, "ctx")
    job = _job(e, 5000, timeout_ns=0)  # none for this job
    e.push_job(job)
    clock.advance(5000)
    assert job.finished.error == 0 and "timeout 5000" not in ops.log


def test_no_hang_keeps_the_job_and_rearms_the_timeout() -> None:
    clock, ops, sched = _sched(timeout_ns=1000)
    ops.stat = SchedStat.NO_HANG
    e = SchedEntity(sched, "ctx")
    job = _job(e, 2500)
    e.push_job(job)
    clock.advance(2500)
    assert ops.log == ["run 2500", "timeout 2500", "timeout 2500", "free 2500"]
    assert job.finished.error == 0 and not e.guilty


def test_entity_fini_cancels_running_and_queued_jobs_with_the_error() -> None:
    clock, ops, sched = _sched()
    e = SchedEntity(sched, "ctx")
    running, queued = _job(e, 100), _job(e, 100)
    e.push_job(running)
    e.push_job(queued)
    e.fini(-errno.ECANCELED)
    assert running.finished.error == queued.finished.error == -errno.ECANCELED
    assert ops.log == ["run 100", "cancel 100", "free 100", "free 100"]
    assert clock.pending() == 0 and sched.pending == [] and sched.entities == []


def test_push_to_a_torn_down_entity_is_enoent() -> None:
    _, _, sched = _sched()
    e = SchedEntity(sched, "ctx")
    job = _job(e, 1)
    e.fini()
    with pytest.raises(NoEntry):
        e.push_job(job)
    with pytest.raises(NoEntry):
        _job(e, 1)


def test_job_with_zero_credits_is_einval() -> None:
    _, _, sched = _sched()
    with pytest.raises(OSError) as exc:
        SchedJob(SchedEntity(sched, "ctx"), credits=0)
    assert exc.value.errno == errno.EINVAL


def test_stop_resubmit_start_replays_innocent_jobs_and_cancels_the_guilty() -> None:
    clock, ops, sched = _sched(credit_limit=2)
    good, bad = SchedEntity(sched, "good"), SchedEntity(sched, "bad")
    g, b = _job(good, 300), _job(bad, 300)
    good.push_job(g)
    bad.push_job(b)
    bad.guilty = True
    sched.stop()
    later = _job(good, 10)
    good.push_job(later)
    assert "run 10" not in ops.log  # paused
    for job in (g, b):
        ops.cancel_job(job)  # the reset lost the hardware's work
    sched.resubmit()
    sched.start()
    assert b.finished.error == -errno.ECANCELED
    clock.run_until_idle()
    assert g.finished.error == 0 and later.finished.error == 0
    assert ops.log.count("run 300") == 3  # both ran, then only the innocent one again


def test_fini_of_the_scheduler_tears_every_entity_down() -> None:
    _, _, sched = _sched()
    e = SchedEntity(sched, "ctx")
    job = _job(e, 100)
    e.push_job(job)
    sched.fini(-errno.ENODEV)
    assert job.finished.error == -errno.ENODEV and not sched.ready


# -- vaccel on the scheduler ---------------------------------------------------


def test_vaccel_hung_job_times_out_and_resets_the_device(rig: Rig) -> None:
    drv = rig.driver
    drv.job_timeout_ns = 1_000_000
    dev = rig.sub.create_device(drv)
    try:
        proc = rig.process()
        fd = proc.open(dev.node_path)
        h, _ = rig.create_bo(proc, fd)
        hung = V.new("struct vaccel_submit", handle=h, fill=1, delay_ns=10**9)
        proc.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, hung)
        fence = dev.files[0].context.jobs[hung.seqno]
        rig.clock.advance(1_000_000)
        assert fence.error == -errno.ETIMEDOUT
        assert dev.reset_count == 1
        proc.exit()
    finally:
        rig.sub.remove_device(dev)


def test_vaccel_close_cancels_the_contexts_queued_jobs(rig: Rig) -> None:
    proc = rig.process()
    fd = proc.open(rig.dev.node_path)
    h, _ = rig.create_bo(proc, fd)
    seqs = []
    for _ in range(3):
        s = V.new("struct vaccel_submit", handle=h, fill=1, delay_ns=10_000)
        proc.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, s)
        seqs.append(s.seqno)
    ctx = rig.dev.files[0].context
    fences = [ctx.jobs[s] for s in seqs]
    sched = rig.dev.private.sched
    assert len(sched.pending) == 1 and sched.queued == 2
    proc.close(fd)
    assert [f.error for f in fences] == [-errno.ECANCELED] * 3
    assert sched.pending == [] and sched.queued == 0 and rig.clock.pending() == 0
