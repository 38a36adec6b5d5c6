"""Every ``>>>`` example in the core's docstrings runs, so the docs cannot rot."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "accelcore.uapi.ioc",
    "accelcore.uapi.header",
    "accelcore.uapi.check",
    "accelcore.minors",
    "accelcore.memory",
    "accelcore.userspace",
    "accelcore.testing",
    "accelcore.testing.factory",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
