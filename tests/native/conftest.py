"""Fixtures for native programs under ``accelctl run``: a compiler, a served
machine (two habana_like and two kfd_like GPUs, real time) on a private runtime
directory, and a helper that compiles a C program and runs it through the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from accelcore.machine import Machine
from accelcore.native.build import find_compiler, shim_library
from accelcore.server import Server
from accelcore.server.daemon import load_machine

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = Path(__file__).with_name("programs")
INCLUDES = [
    ROOT / "accelcore" / "native" / "include",
    ROOT / "accelcore" / "uapi",
    ROOT / "drivers" / "habana_like" / "uapi",
    ROOT / "drivers" / "kfd_like" / "uapi",
]
NATIVE_MACHINE = {
    "machine": {"clock": "real", "drivers": ["habana_like", "kfd_like"]},
    "pci": [{"model": "habana_like", "count": 2}, {"model": "kfd_like", "count": 2}],
}

CC = find_compiler()
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc, gcc, clang) on PATH")


def has_header(name: str) -> bool:
    """Whether the compiler finds ``<name>`` (an optional -dev package)."""
    if CC is None:
        return False
    res = subprocess.run(
        [*CC.split(), "-E", "-x", "c", "-", "-I/usr/include/libdrm"],
        input=f"#include <{name}>\n",
        capture_output=True,
        text=True,
        check=False,
    )
    return res.returncode == 0


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def lines(self) -> dict[str, str]:
        """``key=value`` lines of the program's output."""
        out = {}
        for line in self.stdout.splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                out[k.strip()] = v.strip()
        return out


@pytest.fixture(scope="session")
def shim() -> Path:
    return shim_library()


@pytest.fixture
def rt() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="accel-native-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def machine() -> Iterator[Machine]:
    m = load_machine(NATIVE_MACHINE)
    yield m
    m.shutdown()


@pytest.fixture
def server(machine: Machine, rt: Path, shim: Path) -> Iterator[Server]:
    srv = Server(machine, rt, description=NATIVE_MACHINE)
    srv.start()
    yield srv
    srv.stop()


def compile_c(source: str, out: Path, *, libs: tuple[str, ...] = ()) -> Path:
    """Compile ``programs/<source>`` to ``out`` with the uAPI headers on the path."""
    assert CC is not None
    cmd = [
        *CC.split(),
        "-O1",
        "-Wall",
        "-Werror",
        "-pthread",
        "-o",
        str(out),
        str(PROGRAMS / source),
    ]
    cmd += [f"-I{d}" for d in INCLUDES]
    if "drm" in libs:
        cmd += ["-I/usr/include/libdrm", "-ldrm"]
    if "udev" in libs:
        cmd += ["-ludev"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"
    return out


@pytest.fixture
def run_native(server: Server, tmp_path: Path) -> Callable[..., Run]:
    """Compile a program and run it with ``accelctl run`` against the server."""

    def run(source: str, *args: str, libs: tuple[str, ...] = (), udev: bool = False) -> Run:
        exe = compile_c(source, tmp_path / Path(source).stem, libs=libs)
        cmd = [
            sys.executable,
            "-m",
            "accelcore.cli",
            "run",
            "--runtime-dir",
            str(server.runtime_dir),
        ]
        if udev:
            cmd.append("--udev")
        res = subprocess.run(
            [*cmd, "--", str(exe), *args], capture_output=True, text=True, timeout=60, check=False
        )
        return Run(res.returncode, res.stdout, res.stderr)

    return run


def settled(machine: Machine, baseline: dict[str, int], timeout: float = 10.0) -> dict[str, int]:
    """The machine's accounting once it is back to ``baseline``, or after ``timeout``
    (the server learns that a program's descriptors closed asynchronously)."""
    deadline = time.monotonic() + timeout
    acct = machine.subsystem.accounting()
    while acct != baseline and time.monotonic() < deadline:
        time.sleep(0.02)
        acct = machine.subsystem.accounting()
    return acct
