"""uAPI: C headers loaded with cffi, the ``_IOC`` codec, and the uAPI rules checker.

:data:`CORE` is the core header, ``accel.h``: the DRM core structs accel nodes
answer, the common INFO ioctl, dma-buf and udmabuf. Drivers load their own header
with ``load_uapi(path, include=[CORE])``.
"""

from __future__ import annotations

from pathlib import Path

from . import ioc
from .check import UapiViolation, check_struct, check_uapi
from .header import FieldLayout, IoctlDef, StructLayout, Uapi, load_uapi

__all__ = [
    "CORE",
    "CORE_HEADER",
    "FieldLayout",
    "IoctlDef",
    "StructLayout",
    "Uapi",
    "UapiViolation",
    "check_struct",
    "check_uapi",
    "ioc",
    "load_uapi",
]

#: Path of the core header, for C programs (``-I`` its folder).
CORE_HEADER = Path(__file__).with_name("accel.h")

#: The loaded core header.
CORE = load_uapi(CORE_HEADER)
