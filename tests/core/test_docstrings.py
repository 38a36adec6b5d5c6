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


def test_help_of_accel_driver_lists_every_attribute_a_driver_may_set() -> None:
    """``help(AccelDriver)`` documents each class attribute (declarations
    included): a new one cannot be added without saying what it does."""
    import pydoc
    import re

    from accelcore import AccelDriver

    settable = {
        n
        for n, v in vars(AccelDriver).items()
        if not n.startswith("_") and not callable(v) and not isinstance(v, property)
    }
    text = pydoc.render_doc(AccelDriver, renderer=pydoc.plaintext)
    documented = set(re.findall(r"^ {8}(\w+): ", AccelDriver.__doc__ or "", re.M))
    assert settable == documented
    assert all(name in text for name in settable)
