"""Python enums that mirror the header's ``ACCEL_*`` constants agree with it.

accelcore/uapi/accel.h is the source of truth; the enums are a Python view of
its constant families. Each family is either mirrored by an enum here (same
names, same values, nothing missing on either side) or read from
:data:`accelcore.CORE` where it is used, and a new family has to say which.
"""

from __future__ import annotations

import enum

import pytest

from accelcore import CORE, DeviceStatus, DriverFeature, OwnershipPolicy, OwnerState

#: ``(enum, header prefix, header names the enum leaves out)``
MIRRORS: list[tuple[type[enum.Enum], str, set[str]]] = [
    # the taint bit is a flag beside the status, not a status
    (DeviceStatus, "ACCEL_STATUS_", {"ACCEL_STATUS_FLAG_TAINTED"}),
    (OwnerState, "ACCEL_OWNER_", set()),
    (OwnershipPolicy, "ACCEL_POLICY_", set()),
    (DriverFeature, "ACCEL_FEATURE_", set()),
]

#: Families used as ``CORE.<NAME>`` where needed, with no enum.
READ_FROM_CORE = {"ACCEL_CLIENT_", "ACCEL_INFO_", "ACCEL_IOCTL_", "ACCEL_MAJOR", "ACCEL_MAX_"}
#: Header housekeeping, not a uAPI value.
NOT_UAPI = {"ACCEL_DRM_CORE_FROM_DRM_H"}


def header_family(prefix: str) -> dict[str, int]:
    return {k: v for k, v in CORE.constants.items() if k.startswith(prefix)}


@pytest.mark.parametrize(
    ("cls", "prefix", "left_out"), MIRRORS, ids=lambda x: getattr(x, "__name__", None)
)
def test_enum_mirrors_header(cls: type[enum.Enum], prefix: str, left_out: set[str]) -> None:
    header = {k: v for k, v in header_family(prefix).items() if k not in left_out}
    mirror = {prefix + m.name: int(m.value) for m in cls if m.name != "NONE"}
    assert header, f"the header has no {prefix}* constants"
    assert mirror == header, (
        f"{cls.__name__} disagrees with accel.h's {prefix}*: "
        f"only in the enum {sorted(mirror.items() - header.items())}, "
        f"only in the header {sorted(header.items() - mirror.items())}"
    )


def test_every_accel_constant_family_is_accounted_for() -> None:
    prefixes = [p for _, p, _ in MIRRORS] + sorted(READ_FROM_CORE)
    unaccounted = [
        k
        for k in CORE.constants
        if k.startswith("ACCEL_") and k not in NOT_UAPI and not k.startswith(tuple(prefixes))
    ]
    assert not unaccounted, (
        f"new ACCEL_* constants {unaccounted}: mirror them with an enum in MIRRORS, "
        "or add the family to READ_FROM_CORE"
    )
