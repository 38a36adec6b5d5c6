"""The simulated hardware: a PCI function with one engine and one MSI-X vector."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from accelcore.pci import BarSpec, ResetKind, SimDevice


class TinyNpuDevice(SimDevice):
    """An NPU on the simulated PCI bus (Intel's Meteor Lake NPU ids, as ivpu).

    Args:
        engines: Engines it reports (a model option: ``options = {engines = 2}``).
    """

    model = "tinynpu"
    vendor_id, device_id, class_code = 0x8086, 0x7D1D, 0x120000  # processing accelerator
    bars = (BarSpec(0, 1 << 16),)
    msix_vectors = 1

    def __init__(self, engines: int = 1) -> None:
        super().__init__()
        self.engines = engines
        #: Tags of finished work, drained by the driver's interrupt handler.
        self.completed: deque[int] = deque()

    def execute(self, tag: int, duration_ns: int, work: Callable[[], None]) -> None:
        """Run ``work`` on the engine; ``duration_ns`` later it is done: the
        tag is queued and the interrupt raised (unless the device hangs)."""

        def done() -> None:
            work()
            self.completed.append(tag)
            self.raise_irq(0)

        self.schedule(self.dma_delay(duration_ns), done)

    def reset(self, kind: ResetKind) -> None:
        self.completed.clear()  # scheduled work was cancelled by the bus
