"""The habana_like uAPI header, loaded (``HLK``) and its path (for C programs)."""

from __future__ import annotations

from pathlib import Path

from accelcore import CORE, load_uapi

__all__ = ["HLK", "HLK_HEADER"]

#: Path of ``habana_like.h`` (``-I`` its folder, with accelcore's uapi folder).
HLK_HEADER = Path(__file__).with_name("habana_like.h")

#: The loaded header: structs, constants and ioctl numbers.
HLK = load_uapi(HLK_HEADER, include=[CORE])
