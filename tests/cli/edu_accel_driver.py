"""A vaccel variant that binds to the simulated edu PCI device, for PCI-parented tests.

Importable as ``edu_accel_driver:EduAccelDriver`` when this folder is on
``sys.path`` (the subprocess tests put it there for ``--config``).
"""

from __future__ import annotations

from accelcore.pci import PciDeviceId
from accelcore.testing import VAccelDriver


class EduAccelDriver(VAccelDriver):
    """vaccel's uAPI and engine on an edu PCI function (1234:11e8)."""

    name = "edu_accel"
    desc = "vaccel on edu"
    pci_ids = (PciDeviceId(0x1234, 0x11E8),)
