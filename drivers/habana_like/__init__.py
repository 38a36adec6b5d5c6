"""habana_like: a habanalabs (Goya/Gaudi)-shaped reference driver for accelcore.

Importing the package registers the device model ``habana_like`` with the
simulated PCI bus (options ``dram_mb``, ``cs_timeout_ms``, ``serial``), so a
machine description ``{"model": "habana_like", "count": 2}`` works.
"""

from __future__ import annotations

from accelcore.pci import device_models, register_device_model

from .device import HabanaLikeDevice
from .driver import HabanaLikeDriver
from .uapi import HLK, HLK_HEADER

__all__ = ["HLK", "HLK_HEADER", "HabanaLikeDevice", "HabanaLikeDriver"]

if "habana_like" not in device_models():
    register_device_model("habana_like", HabanaLikeDevice)
