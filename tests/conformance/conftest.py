"""Tests of the conformance suite itself: run it with pytester on broken drivers.

``pytest_plugins = ["pytester"]`` is refused in a conftest below the rootdir
when the whole tree runs (pytest: "pytest_plugins in non-top-level conftest
files"), so the plugin is registered here when this directory is collected.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("pytester"):
        config.pluginmanager.import_plugin("pytester")
