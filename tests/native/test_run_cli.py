"""``accelctl run``: starting its own server, the exit status, and the compiler."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from accelcore.native.build import CompilerMissing, shim_library
from accelcore.server.daemon import server_status


def test_run_starts_a_server_returns_the_status_and_stops_it(tmp_path: Path) -> None:
    rt = tmp_path / "rt"
    script = (
        'test -S "$ACCEL_RUNTIME_DIR/dev/accel/accel0" && '
        'case "$LD_PRELOAD" in *libaccelshim*) exit 7;; esac; exit 1'
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelcore.cli",
            "run",
            "--runtime-dir",
            str(rt),
            "--",
            "sh",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 7, res.stderr  # the program's own status
    assert server_status(rt) is None  # the server it started is gone


def test_signal_death_is_128_plus_n(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelcore.cli",
            "run",
            "--runtime-dir",
            str(tmp_path / "rt"),
            "--",
            "sh",
            "-c",
            "kill -TERM $$",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 128 + 15


def test_no_compiler_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing cached
    with pytest.raises(CompilerMissing, match=r"needs a C compiler.*install one") as info:
        shim_library()
    assert info.value.errno == 2
