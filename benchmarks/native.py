"""Native programs: an ioctl through the ``LD_PRELOAD`` library vs through accelcore's
Python client.

The same call (the core INFO, ``ACCEL_INFO_STATUS``, answer to a 32-byte user
buffer) is made in a loop by a C program run with the preload library (native
client mode: the server reads and writes the program's memory itself) and by a
child Python process with :func:`accelcore.server.connect`, against one server,
alternately, every process pinned to one CPU as in :mod:`benchmarks.crossprocess`.

umockdev's own ioctl emulation is not compared: its recorded-ioctl replay knows a
fixed list of ioctls (usbdevfs, evdev, hidraw...), not a DRM driver's, and a
scripted handler needs the UMockdev GObject-introspection typelib and PyGObject,
which the benchmark does not assume.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from accelcore.native.build import find_compiler, shim_library

from .crossprocess import _pinned, _served
from .harness import Figure, ratio_figure

__all__ = ["SUITES", "ioctl_native"]

_ROOT = Path(__file__).resolve().parent.parent

_C_PROGRAM = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include "accel.h"

static long long now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	int loops = atoi(argv[1]), batch = loops / 10, i, b;
	int fd = open("/dev/accel/accel0", O_RDWR | O_CLOEXEC);
	struct accel_info_status st;
	struct accel_info q = {.op = ACCEL_INFO_STATUS, .return_size = sizeof(st)};
	double samples[10];
	q.return_pointer = (__u64)(unsigned long)&st;
	if (fd < 0)
		return 2;
	for (i = 0; i < loops / 5; i++) /* warm up */
		if (ioctl(fd, ACCEL_IOCTL_INFO, &q))
			return 3;
	for (b = 0; b < 10; b++) {
		long long t0 = now();
		for (i = 0; i < batch; i++)
			ioctl(fd, ACCEL_IOCTL_INFO, &q);
		samples[b] = (double)(now() - t0) / batch;
	}
	qsort(samples, 10, sizeof(double), cmp);
	printf("{\"ns\": %f}\n", (samples[4] + samples[5]) / 2);
	return 0;
}
"""

_PY_CHILD = r"""
import json, os, sys, time, statistics
from accelcore.server import connect
from accelcore.uapi import CORE
os.sched_setaffinity(0, set(json.loads(sys.argv[3])))
loops = int(sys.argv[2])
proc = connect(sys.argv[1])
fd = proc.open("/dev/accel/accel0")
out, args = proc.alloc(64), proc.alloc(64)
info = CORE.new("struct accel_info", op=CORE.ACCEL_INFO_STATUS, return_pointer=out.addr,
                return_size=CORE.sizeof("struct accel_info_status"))
args.view[: CORE.sizeof("struct accel_info")] = CORE.to_bytes(info)
cmd = CORE.ACCEL_IOCTL_INFO
for _ in range(loops // 5):
    proc.ioctl(fd, cmd, args.addr)
samples = []
for _ in range(10):
    t0 = time.perf_counter_ns()
    for _ in range(loops // 10):
        proc.ioctl(fd, cmd, args.addr)
    samples.append((time.perf_counter_ns() - t0) / (loops // 10))
print(json.dumps({"ns": statistics.median(samples)}))
"""


def _ns(cmd: list[str], env: dict[str, str]) -> float:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    if res.returncode:
        raise RuntimeError(f"{cmd[0]} exited with {res.returncode}: {res.stderr.strip()}")
    return float(json.loads(res.stdout.strip().splitlines()[-1])["ns"])


def ioctl_native(quick: bool) -> list[Figure]:
    """INFO per call: a C program through the preload library vs the Python client
    (target: at most 1.2x). No figure without a C compiler."""
    cc = find_compiler()
    if cc is None:
        return []
    loops = 2_000 if quick else 20_000
    lib = shim_library()
    with tempfile.TemporaryDirectory(prefix="accel-bench-native-") as tmp:
        src = Path(tmp) / "info_loop.c"
        src.write_text(_C_PROGRAM)
        exe = Path(tmp) / "info_loop"
        subprocess.run(
            [*cc.split(), "-O2", "-o", str(exe), str(src), f"-I{_ROOT / 'accelcore' / 'uapi'}"],
            check=True,
            capture_output=True,
        )
        with _pinned(), _served() as srv:
            cpus = json.dumps(sorted(os.sched_getaffinity(0)))
            env = dict(os.environ, ACCEL_RUNTIME_DIR=str(srv.runtime_dir))
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
            native_env = dict(env, LD_PRELOAD=str(lib))
            native, python = [], []
            for _ in range(3):  # alternate, so drift hits both alike
                native.append(_ns([str(exe), str(loops)], native_env))
                python.append(
                    _ns(
                        [sys.executable, "-c", _PY_CHILD, str(srv.runtime_dir), str(loops), cpus],
                        env,
                    )
                )
    return [
        ratio_figure(
            "ioctl_native",
            statistics.median(native) / 1e3,
            statistics.median(python) / 1e3,
            "us/call",
            1.2,
            note="C program under accelctl run's preload library vs the Python client; "
            "INFO (ACCEL_INFO_STATUS); pinned to one CPU",
        )
    ]


SUITES = [ioctl_native]
