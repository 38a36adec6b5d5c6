"""The README keeps exactly two set-up commands, and CI runs those very lines."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    out = subprocess.run(
        ["bash", str(ROOT / ".ci" / "readme_commands.sh")],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.splitlines()


def test_readme_has_the_demo_and_the_test_command() -> None:
    commands = readme_commands()
    assert len(commands) == 2, commands
    assert commands[0].endswith("accelctl demo")
    assert commands[1].endswith("pytest")


def test_ci_runs_the_readme_commands_verbatim() -> None:
    """Each README set-up command is a line of .ci/run, character for character: CI
    runs what a new user runs (and a README edit that CI does not follow fails here)."""
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    for cmd in readme_commands():
        assert cmd in lines, f"{cmd!r} is not a line of .ci/run"
