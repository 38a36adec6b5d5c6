"""tinynpu: an out-of-tree accel driver for accelcore (the guide's example).

Importing the package registers the PCI device model ``tinynpu``, so machine
descriptions can name it; the driver is found by name through the
``accelcore.drivers`` entry point in ``pyproject.toml``.
"""

from __future__ import annotations

from accelcore.pci import device_models, register_device_model

from .device import TinyNpuDevice
from .driver import TINYNPU_UAPI, TinyNpuDriver

__all__ = ["TINYNPU_UAPI", "TinyNpuDevice", "TinyNpuDriver"]

if "tinynpu" not in device_models():
    register_device_model("tinynpu", TinyNpuDevice)
