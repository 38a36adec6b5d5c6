"""The JSON schemas and the tiny validator that checks accelctl's output against them."""

from __future__ import annotations

from typing import Any

import pytest

from accelcore.cli.schema import SCHEMAS, validate

OBJ: dict[str, Any] = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 0},
        "s": {"type": ["string", "null"]},
        "e": {"enum": ["a", "b"]},
        "xs": {"type": "array", "items": {"type": "boolean"}},
    },
    "required": ["n"],
    "additionalProperties": False,
}


def test_valid_instance_has_no_errors() -> None:
    assert validate({"n": 1, "s": None, "e": "a", "xs": [True]}, OBJ) == []


@pytest.mark.parametrize(
    ("instance", "error"),
    [
        ({}, "$: missing 'n'"),
        ({"n": -1}, "$.n: -1 is below 0"),
        ({"n": True}, "$.n: True is not of type integer"),
        ({"n": 1, "s": 3}, "$.s: 3 is not of type string or null"),
        ({"n": 1, "e": "c"}, "$.e: 'c' is not one of ['a', 'b']"),
        ({"n": 1, "xs": [1]}, "$.xs[0]: 1 is not of type boolean"),
        ({"n": 1, "zz": 0}, "$: unexpected key 'zz'"),
        ([], "$: [] is not of type object"),
    ],
)
def test_validator_reports_the_problem(instance: Any, error: str) -> None:
    assert validate(instance, OBJ) == [error]


def test_every_command_has_a_schema() -> None:
    assert set(SCHEMAS) == {
        "summary",
        "list",
        "info",
        "attrs",
        "attrs-store",
        "ps",
        "top",
        "monitor",
        "reset",
        "dmabuf",
        "topology",
        "version",
        "demo",
        "sim-start",
        "sim-stop",
        "sim-status",
    }


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schemas_are_valid_json_schema(name: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(SCHEMAS[name])
