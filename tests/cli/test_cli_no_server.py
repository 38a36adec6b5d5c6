"""accelctl never answers about a machine that isn't there (issue 22 §2): without a
server, read-only commands say on stderr that a throwaway machine answers, and
commands that change or watch state refuse with exit 9 unless --embedded."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import HERE
from click.testing import CliRunner, Result

from accelcore.cli import main
from accelcore.cli.exitcodes import ExitCode


@pytest.fixture
def empty_rt() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="actl-none-"))
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


@pytest.fixture
def stale_rt(empty_rt: Path) -> Path:
    """A runtime directory with a ``control`` socket nobody listens on (a crashed server)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(str(empty_rt / "control"))
    sock.close()
    return empty_rt


def run(rt: Path, *args: str) -> Result:
    env = {"ACCEL_RUNTIME_DIR": str(rt), "ACCEL_DEVICE": None}
    return CliRunner().invoke(main, list(args), env=env, prog_name="accelctl")


@pytest.mark.parametrize("args", [("list",), ("info", "accel0"), ("topology",), ()])
def test_a_read_only_command_says_on_stderr_which_machine_answers(
    empty_rt: Path, args: tuple[str, ...]
) -> None:
    res = run(empty_rt, *args)
    assert res.exit_code == 0, res.output
    (note,) = res.stderr.splitlines()
    assert note == (
        f"accelctl: no devfs server at {empty_rt}: answering from a throwaway embedded "
        "machine (--embedded to ask for it)"
    )
    assert "accel0" in res.stdout


def test_embedded_asked_for_gives_no_note(empty_rt: Path) -> None:
    res = run(empty_rt, "--embedded", "list")
    assert (res.exit_code, res.stderr) == (0, "")


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (("ps",), "ps"),
        (("top", "-n", "1", "-w", "0"), "top"),
        (("monitor", "-t", "0"), "monitor"),
        (("reset", "accel0", "-y"), "reset"),
        (("attrs", "accel0", "-a", "unique_id", "-w", "x"), "writing attributes"),
        (("attrs", "accel0", "unique_id", "x"), "writing attributes"),
    ],
)
def test_a_command_that_changes_or_watches_state_refuses_with_exit_9(
    stale_rt: Path, args: tuple[str, ...], what: str
) -> None:
    res = run(stale_rt, *args)
    assert res.exit_code == ExitCode.NO_SERVER == 9
    assert res.stdout == ""
    assert res.stderr == (
        f"Error: no devfs server at {stale_rt}: {what} needs one (start it with "
        "'accelctl sim start', or give --embedded for a throwaway in-process machine)\n"
    )


def test_reset_with_embedded_acts_on_the_embedded_machine(empty_rt: Path) -> None:
    res = run(empty_rt, "--embedded", "reset", "accel0", "-y", "--json")
    assert (res.exit_code, res.stderr) == (0, "")


def test_ps_with_embedded_lists_the_embedded_machine(empty_rt: Path) -> None:
    res = run(empty_rt, "--embedded", "ps")
    assert (res.exit_code, res.stdout) == (0, "no processes hold accel devices\n")


def test_a_closed_pipe_ends_quietly_with_0(empty_rt: Path) -> None:
    # An endless loop, so the reader's exit surely meets a write: EPIPE, not luck.
    script = (
        f"{sys.executable} -m accelcore.cli --embedded list -l 0.01 --json | head -n 1; "
        'echo "rc=${PIPESTATUS[0]}" >&2'
    )
    env = {**os.environ, "ACCEL_RUNTIME_DIR": str(empty_rt), "PYTHONPATH": str(HERE)}
    env.pop("ACCEL_DEVICE", None)
    res = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert res.stdout.startswith('{"devices":')
    assert res.stderr == "rc=0\n"


def test_sim_start_in_an_impossible_runtime_dir_names_the_path(tmp_path: Path) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("")
    rt = afile / "rt"
    res = CliRunner().invoke(main, ["sim", "start", "--runtime-dir", str(rt)])
    assert (res.exit_code, res.stdout) == (1, "")
    assert res.stderr == f"Error: runtime directory {rt}: Not a directory\n"
