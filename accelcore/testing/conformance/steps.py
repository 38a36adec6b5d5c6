"""Stateful examples: setup steps whose results feed an example's arguments.

An ioctl that waits for a job, or acts on a buffer, has no valid argument on a
fresh file: it needs a handle, a sequence number or a VM first. A driver
declares, per ioctl, a :class:`Setup` in its ``example_setup`` class attribute:
steps run in order in the test's process (like IGT fixtures), each result is
named by the step's ``label``, and the example's fields in :attr:`Setup.args`
take values from those results::

    example_setup = {
        "DRM_IOCTL_VACCEL_WAIT": Setup(
            steps=(
                Call("bo", "DRM_IOCTL_VACCEL_CREATE_BO", {"size": 4096}),
                Call("job", "DRM_IOCTL_VACCEL_SUBMIT", {"handle": "bo.handle"}),
            ),
            args={"seqno": "job.seqno"},
        ),
    }

A value is an ``int`` or a *reference* ``"label.path"``: ``path`` is a dotted
field path into the step's result, where a number indexes an array
(``"ap.process_apertures.0.gpu_id"``). :class:`Open` results have ``fd``,
:class:`UserArray` results ``addr`` and ``count``, :class:`Unique` results
``value``. The label ``accel`` is the test's own file on device 0's compute
node, opened before the steps.

A driver that makes buffer objects only through steps (no single ioctl on the
accel node does it) declares ``bo_setup``: a :class:`Setup` whose ``args`` has
``"handle"``, the handle on the test's accel file.

This module imports nothing from pytest, so drivers may import it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

__all__ = [
    "Call",
    "Close",
    "Fails",
    "Open",
    "Setup",
    "Step",
    "Unique",
    "UserArray",
    "Value",
    "Write",
]

#: A field value: a number, or ``"label.path"`` naming a step result's field.
Value: TypeAlias = int | str


@dataclass(frozen=True, slots=True)
class Open:
    """Open a node: ``path`` (``"/dev/kfd"``), or device ``device``'s compute node.

    Result: ``label.fd``.
    """

    label: str
    path: str | None = None
    device: int = 0


@dataclass(frozen=True, slots=True)
class Call:
    """Make ioctl ``ioctl`` (a name in the driver's header) on file ``file`` (a
    label of an :class:`Open`, or ``accel``) with ``fields``; it must succeed.

    Result: the copied-out argument struct (``label.handle``, ``label.output.seq``).
    """

    label: str
    ioctl: str
    fields: Mapping[str, Value] = field(default_factory=dict)
    file: str = "accel"


@dataclass(frozen=True, slots=True)
class UserArray:
    """An array in the process's memory: ``items`` of C type ``ctype``.

    ``ctype`` is a scalar (``"__u32"``), whose items are values, or a struct of
    the driver's header, whose items are ``{field: value}``. Result:
    ``label.addr`` (the user pointer) and ``label.count``.
    """

    label: str
    ctype: str
    items: Sequence[Value | Mapping[str, Value]]


@dataclass(frozen=True, slots=True)
class Write:
    """Write ``data`` into file ``file``'s memory at mmap offset ``offset``
    (mmap, write, munmap): a command buffer's packets, a buffer's contents."""

    file: str
    offset: Value
    data: bytes


@dataclass(frozen=True, slots=True)
class Unique:
    """A number no earlier use of this step on the machine got: ``base``, then
    ``base + stride``… (GPU virtual addresses of successive allocations).

    Result: ``label.value``.
    """

    label: str
    base: int
    stride: int


@dataclass(frozen=True, slots=True)
class Close:
    """Close the process's file descriptor ``fd`` (a dma-buf fd a step got)."""

    fd: Value


@dataclass(frozen=True, slots=True)
class Fails:
    """A declared failing call: the prepared example with ``fields`` changed
    (values may name setup results) must fail with ``errno`` and change nothing.

    Declared per ioctl in the driver's ``failing_examples``.
    """

    fields: Mapping[str, Value]
    errno: int
    why: str = ""


#: One setup step.
Step: TypeAlias = Open | Call | UserArray | Write | Unique | Close


@dataclass(frozen=True, slots=True)
class Setup:
    """How to make an ioctl's example valid: steps, then argument fields from them.

    Attributes:
        steps: Run in order in the test's process; each must succeed.
        args: Example fields whose values come from the steps (a reference) or
            override the ``examples`` entry.
        file: The file the example runs on: ``accel`` or an :class:`Open` label.
        devices: Devices the machine needs (a multi-device example needs two).
    """

    steps: tuple[Step, ...] = ()
    args: Mapping[str, Value] = field(default_factory=dict)
    file: str = "accel"
    devices: int = 1
