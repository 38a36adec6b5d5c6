"""sysfs: every attribute of the accel node and its parents reads; junk writes never oops."""

from __future__ import annotations

import traceback

from accelcore.sysfs import SysfsNode
from accelcore.testing.conformance import check
from accelcore.testing.conformance.rig import Rig
from accelcore.testing.conformance.session import Conformance

#: Values no attribute should accept as meaningful (none parses as a number).
JUNK = ("junk", "", "\x00\xff\xfe", "yes please", "0x", "-" * 4097, "1 2 3")


def _nodes(rig: Rig) -> list[SysfsNode]:
    out: list[SysfsNode] = []
    dev = rig.devices[0]
    for start in (dev.sysfs, dev.control_sysfs):
        if start is not None:
            out += [n for n in start.ancestry() if n not in out]
    return out


@check("sysfs", "every readable attribute of the accel node and its parents reads without error")
def test_read_all_attributes(accel_conformance: Conformance) -> None:
    rig = accel_conformance.rig()
    wrong = []
    count = 0
    for node in _nodes(rig):
        for name, attr in sorted(node.attributes.items()):
            if not attr.readable:
                continue
            count += 1
            try:
                text = node.read(name)
            except Exception as exc:
                tb = "".join(traceback.format_exception(exc))
                wrong.append(f"reading {node.devpath}/{name} raised {exc!r}\n{tb}")
                continue
            if not text.endswith("\n"):
                wrong.append(f"{node.devpath}/{name} reads {text!r}, without a trailing newline")
    assert not wrong, f"driver {rig.name}:\n" + "\n".join(wrong)
    accel_conformance.report(f"sysfs: read {count} attributes")


@check("sysfs", "writing junk to every writable attribute gets an errno or is accepted, no oops")
def test_write_junk_no_oops(accel_conformance: Conformance) -> None:
    rig = accel_conformance.rig()
    wrong = []
    for node in _nodes(rig):
        for name, attr in sorted(node.attributes.items()):
            if not attr.writable:
                continue
            for junk in JUNK:
                try:
                    node.write(name, junk)
                except OSError as exc:
                    if not exc.errno:
                        wrong.append(f"writing {junk[:16]!r} to {node.devpath}/{name}: {exc!r}")
                except Exception as exc:
                    tb = "".join(traceback.format_exception(exc))
                    wrong.append(
                        f"writing {junk[:16]!r} to {node.devpath}/{name} oopsed: {exc!r}\n{tb}"
                    )
    assert not wrong, f"driver {rig.name}:\n" + "\n".join(wrong)
