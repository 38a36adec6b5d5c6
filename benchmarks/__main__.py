"""``python -m benchmarks [--quick] [--json]``."""

from __future__ import annotations

import argparse
import json
import sys

from . import crossprocess, gemm, inprocess, load, native, scaling
from .harness import Figure

SUITES = [
    inprocess.ioctl_inprocess,
    *crossprocess.SUITES,
    *native.SUITES,
    inprocess.dmabuf_read_bw,
    *load.SUITES,
    *scaling.SUITES,
    *gemm.SUITES,
    inprocess.memory,
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer loops (CI)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    figures: list[Figure] = []
    for suite in SUITES:
        figures.extend(suite(args.quick))
    if args.json:
        json.dump({"figures": [f.as_dict() for f in figures]}, sys.stdout, indent=2)
        print()
    else:
        for f in figures:
            mark = "met" if f.met else "MISSED"
            print(
                f"{f.name:24} {f.value:>12} {f.unit:8} baseline {f.baseline:>10}  "
                f"ratio {f.ratio:>8}  target {f.target:28} {mark}  {f.note}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
