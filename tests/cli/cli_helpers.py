"""Helpers for accelctl tests: JSON checks against the schemas, and the invoke type.

(A uniquely named module: ``conftest`` names clash across test folders.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import Result

from accelcore.cli.schema import SCHEMAS, validate

HERE = Path(__file__).parent

Invoke = Callable[..., Result]


def check_json(command: str, text: str) -> Any:
    """Parse ``text`` and assert it matches the schema of ``command``."""
    data = json.loads(text)
    errors = validate(data, SCHEMAS[command])
    assert not errors, errors
    return data


def check_json_lines(command: str, text: str) -> list[Any]:
    """Parse JSON lines (streaming commands), each checked against ``command``'s schema."""
    return [check_json(command, line) for line in text.splitlines() if line]
