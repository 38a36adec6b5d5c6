"""System-call semantics of accel files in process: read() of events as drm_read."""

from __future__ import annotations

import errno

import pytest

from accelcore.vfs import POLLIN

from .conftest import Rig


def _header(event_type: int, length: int) -> bytes:
    return event_type.to_bytes(4, "little") + length.to_bytes(4, "little")


def test_read_with_a_buffer_too_small_returns_nothing_and_keeps_the_event(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    rig.dev.files[0].send_event(7, b"x" * 24)  # 32 bytes
    assert p.read(fd, 31) == b""
    assert p.read(fd, 31, nonblock=True) == b""  # not EAGAIN: an event is queued
    assert p.poll(fd) & POLLIN
    assert p.read(fd, 32) == _header(7, 32) + b"x" * 24


def test_read_copies_only_whole_events(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    file = rig.dev.files[0]
    file.send_event(1)
    file.send_event(2)
    file.send_event(3, b"y" * 8)
    assert p.read(fd, 20) == _header(1, 8) + _header(2, 8)  # the third (16) does not fit
    assert rig.dev.files[0].pending_events == 1
    assert p.read(fd, 4096) == _header(3, 16) + b"y" * 8


def test_read_of_an_empty_queue_without_blocking_is_eagain(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    with pytest.raises(OSError) as e:
        p.read(fd, 0, nonblock=True)
    assert e.value.errno == errno.EAGAIN
