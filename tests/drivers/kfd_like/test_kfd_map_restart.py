"""Seed 004: MAP/UNMAP on several GPUs, interrupted at every wait point and failing
at every GPU position, end in the state of an uninterrupted call."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from accelcore import Process
from drivers.kfd_like.thunk import GTT, Kfd, driver_of, make_machine

#: Distinct SDMA speeds, so every GPU's update is a separate wait point.
SPEEDS = (1_000, 2_000, 3_000)
VA = 0x40_0000_0000
SIZE = 8 * 4096


def setup(restart: bool = False) -> tuple[Kfd, Any]:
    m = make_machine(*SPEEDS)
    k = Kfd(m, Process(m.subsystem, restart=restart))
    k.acquire_all()
    alloc = k.alloc(k.gpu_ids[0], SIZE, VA, GTT)
    return k, alloc


def state(k: Kfd) -> dict[int, Any]:
    return driver_of(k.m).page_tables(k.p.pid)


def uninterrupted(unmap: bool = False) -> tuple[dict[int, Any], int]:
    k, alloc = setup()
    if unmap:
        k.map(k.map_args(alloc.handle, k.gpu_ids))
    k.p.task.inject_interrupts()
    args = k.map(k.map_args(alloc.handle, k.gpu_ids), unmap=unmap)
    assert args.n_success == len(SPEEDS)
    return state(k), k.p.task.wait_points_seen


def test_map_has_a_wait_point_per_gpu():
    tables, waits = uninterrupted()
    assert waits == len(SPEEDS)
    assert all(len(t) == 1 and t[0][0] == VA for t in tables.values())


@pytest.mark.parametrize("unmap", [False, True], ids=["map", "unmap"])
def test_eintr_at_every_wait_point_then_reissue_matches(unmap):
    expected, waits = uninterrupted(unmap)
    for point in range(waits):
        k, alloc = setup()
        if unmap:
            k.map(k.map_args(alloc.handle, k.gpu_ids))
        args = k.map_args(alloc.handle, k.gpu_ids, unmap=unmap)
        k.p.task.inject_interrupts(point)
        with pytest.raises(OSError) as exc:
            k.map(args, unmap=unmap)
        assert exc.value.errno == errno.EINTR
        assert args.n_success == len(SPEEDS)  # copied out on the error
        k.map(args, unmap=unmap)  # the same struct: only waits
        assert args.n_success == len(SPEEDS)
        assert state(k) == expected, f"interrupt at wait point {point}"


@pytest.mark.parametrize("unmap", [False, True], ids=["map", "unmap"])
def test_auto_restart_at_every_wait_point_matches(unmap):
    expected, waits = uninterrupted(unmap)
    for point in range(waits):
        k, alloc = setup(restart=True)
        if unmap:
            k.map(k.map_args(alloc.handle, k.gpu_ids))
        k.p.task.inject_interrupts(point)
        args = k.map(k.map_args(alloc.handle, k.gpu_ids), unmap=unmap)
        assert args.n_success == len(SPEEDS)
        assert state(k) == expected, f"interrupt at wait point {point}"


def test_restart_dispatches_no_new_page_table_updates():
    k, alloc = setup()
    args = k.map_args(alloc.handle, k.gpu_ids)
    k.p.task.inject_interrupts(0)
    with pytest.raises(OSError):
        k.map(args)
    k.m.clock.advance(10_000)  # the dispatched updates complete meanwhile
    before = [n.gpu.pt_updates for n in driver_of(k.m).gpus.values()]
    assert before == [1, 1, 1]
    k.map(args)
    assert [n.gpu.pt_updates for n in driver_of(k.m).gpus.values()] == before


@pytest.mark.parametrize("position", range(len(SPEEDS)))
def test_injected_failure_keeps_earlier_mappings(position):
    k, alloc = setup()
    ids = k.gpu_ids
    driver_of(k.m).gpus[ids[position]].gpu.inject_pt_failure()
    args = k.map_args(alloc.handle, ids)
    with pytest.raises(OSError) as exc:
        k.map(args)
    assert exc.value.errno == errno.ENOMEM
    assert args.n_success == position
    tables = state(k)
    assert [len(tables[g]) for g in ids] == [1] * position + [0] * (len(ids) - position)
    k.map(args)  # the retry continues from n_success
    assert state(k) == uninterrupted()[0]


@pytest.mark.parametrize("position", range(len(SPEEDS)))
def test_unknown_gpu_id_reports_n_success(position):
    k, alloc = setup()
    ids = list(k.gpu_ids)
    ids[position] = 0xBEEF
    args = k.map_args(alloc.handle, ids)
    with pytest.raises(OSError) as exc:
        k.map(args)
    assert exc.value.errno == errno.EINVAL
    assert args.n_success == position
    tables = state(k)
    assert sum(len(t) for t in tables.values()) == position


@pytest.mark.parametrize("position", range(len(SPEEDS)))
def test_unmap_failure_keeps_earlier_unmappings(position):
    k, alloc = setup()
    ids = k.gpu_ids
    k.map(k.map_args(alloc.handle, ids))
    driver_of(k.m).gpus[ids[position]].gpu.inject_pt_failure()
    args = k.map_args(alloc.handle, ids, unmap=True)
    with pytest.raises(OSError) as exc:
        k.map(args, unmap=True)
    assert exc.value.errno == errno.ENOMEM
    assert args.n_success == position
    tables = state(k)
    assert [len(tables[g]) for g in ids] == [0] * position + [1] * (len(ids) - position)
    k.map(args, unmap=True)
    assert all(len(t) == 0 for t in state(k).values())


def test_remapping_a_mapped_buffer_is_a_no_op():
    k, alloc = setup()
    k.map(k.map_args(alloc.handle, k.gpu_ids))
    before = state(k)
    k.p.task.inject_interrupts()
    k.map(k.map_args(alloc.handle, k.gpu_ids))
    assert k.p.task.wait_points_seen == 0
    assert state(k) == before
