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


def test_ci_runs_the_extracted_commands_not_copies() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_commands.sh" in ci
    for cmd in readme_commands():
        assert cmd not in ci, f"{cmd!r} is copied into .ci/run instead of extracted"
