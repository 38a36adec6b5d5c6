"""Native programs: an ioctl through the ``LD_PRELOAD`` library vs through accelcore's
Python client.

The same call (the core INFO, ``ACCEL_INFO_STATUS``, answer to a 32-byte user
buffer) is made in a loop by a C program run with the preload library (native
client mode: the server reads and writes the program's memory itself) and by a
child Python process with :func:`accelcore.server.connect`, against one server,
alternately, every process pinned to one CPU as in :mod:`benchmarks.crossprocess`.

The same binary, in the same run, also runs under umockdev's own ioctl emulation
(figure ``ioctl_umockdev``): a UMockdev testbed with ``/dev/accel/accel0`` and an
``UMockdev.IoctlBase`` subclass whose ``do_handle_ioctl`` answers INFO STATUS the
way umockdev's API does it (``resolve`` the argument, ``resolve`` its return
pointer, ``update``, ``complete``, which copies the dirty data back), the program
run with umockdev's preload library (as ``umockdev-wrapper`` does;
``umockdev-run`` has no option for a scripted handler). The handler answers a
constant status (no model behind it), so umockdev's figure is a lower bound on its
cost. It needs the UMockdev typelib (``gir1.2-umockdev-1.0``) and PyGObject
(``python3-gi``), which Debian ships for its ``/usr/bin/python3``: the handler runs
with whichever of this interpreter and that one imports them; without them the
figure says "not measured" and why.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from accelcore.native.build import find_compiler, shim_library
from accelcore.uapi import CORE

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


_UMOCKDEV_HANDLER = r"""
import json, os, struct, subprocess, sys
import gi
gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev

INFO_CMD, STATUS_OP = int(sys.argv[1]), int(sys.argv[2])
os.sched_setaffinity(0, set(json.loads(sys.argv[3])))
ANSWER = struct.pack("=IIQQQ", 0, 0, 0, 0, 1)  # accel_info_status: operational, 1 file

class Info(UMockdev.IoctlBase):
    def do_handle_ioctl(self, client):
        if client.get_request() != INFO_CMD:
            client.complete(-1, 25)  # ENOTTY
            return True
        try:
            info = client.get_arg().resolve(0, 32)  # struct accel_info
            ret_ptr, ret_size, op, index, flags = struct.unpack_from("=QIIII", info.retrieve())
            if op != STATUS_OP or flags:
                client.complete(-1, 22)  # EINVAL
                return True
            n = min(ret_size, len(ANSWER))
            if n:
                info.resolve(0, n).update(0, ANSWER[:n])  # return_pointer, copied out
            info.update(24, struct.pack("=I", len(ANSWER)))  # actual_size
        except Exception:
            client.complete(-1, 14)  # EFAULT
            return True
        client.complete(0, 0)
        return True

tb = UMockdev.Testbed.new()
tb.add_from_string("P: /devices/virtual/accel/accel0\nN: accel/accel0\n"
                   "E: SUBSYSTEM=accel\nE: DEVNAME=/dev/accel/accel0\n")
tb.attach_ioctl("/dev/accel/accel0", Info())
# The testbed sets UMOCKDEV_DIR with g_setenv, which os.environ does not see.
pre = ":".join(filter(None, ["libumockdev-preload.so.0", os.environ.get("LD_PRELOAD")]))
env = dict(os.environ, UMOCKDEV_DIR=tb.get_root_dir(), LD_PRELOAD=pre)
res = subprocess.run(sys.argv[4:], env=env, capture_output=True, text=True, check=False)
sys.stdout.write(res.stdout)
sys.stderr.write(res.stderr)
sys.exit(res.returncode)
"""

_GI_CHECK = "import gi; gi.require_version('UMockdev', '1.0'); from gi.repository import UMockdev"


def _gi_python() -> tuple[str | None, str]:
    """An interpreter that imports PyGObject and the UMockdev typelib, or why none."""
    candidates = dict.fromkeys([sys.executable, "/usr/bin/python3"])
    why = ""
    for py in candidates:
        if not os.path.exists(py):
            continue
        res = subprocess.run([py, "-c", _GI_CHECK], capture_output=True, text=True, check=False)
        if res.returncode == 0:
            return py, ""
        why = (res.stderr.strip().splitlines() or ["?"])[-1]
    return None, f"needs python3-gi and gir1.2-umockdev-1.0 ({why})"


def _not_measured(name: str, target: str, unit: str, reason: str) -> Figure:
    return Figure(name, 0.0, 0.0, unit, 0.0, target, False, f"not measured: {reason}")


def _ns(cmd: list[str], env: dict[str, str]) -> float:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    if res.returncode:
        raise RuntimeError(f"{cmd[0]} exited with {res.returncode}: {res.stderr.strip()}")
    return float(json.loads(res.stdout.strip().splitlines()[-1])["ns"])


def ioctl_native(quick: bool) -> list[Figure]:
    """INFO per call: a C program through the preload library vs the Python client
    (target: at most 1.2x), and the same binary through the preload library vs
    under umockdev's ioctl emulation (calls per second, target: at least 4x).
    No figure without a C compiler; ``ioctl_umockdev`` is "not measured" without
    umockdev's preload library, typelib and PyGObject."""
    cc = find_compiler()
    if cc is None:
        return []
    loops = 2_000 if quick else 20_000
    lib = shim_library()
    gi_python, why = _gi_python()
    if gi_python is not None and shutil.which("umockdev-run") is None:
        gi_python, why = None, "needs umockdev (its preload library)"
    with tempfile.TemporaryDirectory(prefix="accel-bench-native-") as tmp:
        src = Path(tmp) / "info_loop.c"
        src.write_text(_C_PROGRAM)
        exe = Path(tmp) / "info_loop"
        subprocess.run(
            [*cc.split(), "-O2", "-o", str(exe), str(src), f"-I{_ROOT / 'accelcore' / 'uapi'}"],
            check=True,
            capture_output=True,
        )
        handler = Path(tmp) / "umockdev_handler.py"
        handler.write_text(_UMOCKDEV_HANDLER)
        with _pinned(), _served() as srv:
            cpus = json.dumps(sorted(os.sched_getaffinity(0)))
            env = dict(os.environ, ACCEL_RUNTIME_DIR=str(srv.runtime_dir))
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
            native_env = dict(env, LD_PRELOAD=str(lib))
            umock_cmd = [
                str(gi_python),
                str(handler),
                str(CORE.ACCEL_IOCTL_INFO),
                str(CORE.ACCEL_INFO_STATUS),
                cpus,
                str(exe),
                str(loops),
            ]
            umock_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
            native, python, umock = [], [], []
            for _ in range(3):  # alternate, so drift hits all alike
                native.append(_ns([str(exe), str(loops)], native_env))
                python.append(
                    _ns(
                        [sys.executable, "-c", _PY_CHILD, str(srv.runtime_dir), str(loops), cpus],
                        env,
                    )
                )
                if gi_python is not None:
                    try:
                        umock.append(_ns(umock_cmd, umock_env))
                    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                        gi_python, why = None, f"umockdev run failed: {exc}"
    figures = [
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
    if gi_python is None:
        figures.append(_not_measured("ioctl_umockdev", ">= 4.0x", "calls/s", why))
    else:
        figures.append(
            ratio_figure(
                "ioctl_umockdev",
                1e9 / statistics.median(native),
                1e9 / statistics.median(umock),
                "calls/s",
                4.0,
                higher_is_better=True,
                note="same C binary: preload library + server vs umockdev IoctlBase handler "
                f"({gi_python}); INFO (ACCEL_INFO_STATUS) with return pointer copied out; "
                "umockdev's handler answers a constant (no model); pinned to one CPU",
            )
        )
    return figures


SUITES = [ioctl_native]
