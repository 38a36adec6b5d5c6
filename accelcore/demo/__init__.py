"""The end-to-end demo: a story told on a simulated machine, with checks.

* ``accelcore.demo.quick`` — the step runner (``World``, ``Step``, reports) and
  the short in-process demo on two virtual vaccel devices (virtual time).
* ``accelcore.demo.story`` — the full demo: a devfs server on the default
  machine, workload processes, a monitor, a reset, the dma-buf hand-off.
* ``accelcore.demo.workload`` — the workload program the story runs as
  separate processes (``python -m accelcore.demo.workload``).

The demo is a front end like ``accelctl``: ``accelctl demo`` only starts it and
prints its progress. It reads devices through accelctl's sources (the story shows
the tools at work), so it imports ``accelcore.cli``'s data modules; the CLI
imports the demo only when its ``demo`` command runs (the demo pulls in numpy
and both reference drivers, which no other command needs).
"""

from __future__ import annotations

from .quick import Check, DemoReport, Progress, Step, StepReport, StepResult, World, run_demo

__all__ = [
    "Check",
    "DemoReport",
    "Progress",
    "Step",
    "StepReport",
    "StepResult",
    "World",
    "run_demo",
]
