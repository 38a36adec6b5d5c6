"""``accelctl``, accelcore's command-line front end (click).

Layout: :mod:`~accelcore.cli.app` (the group and error policy), one module per
command family (``cmd_devices``, ``cmd_activity``, ``cmd_admin``), the data model
(:mod:`~accelcore.cli.model`, :mod:`~accelcore.cli.records`), where data comes
from (:mod:`~accelcore.cli.sources`), device selection
(:mod:`~accelcore.cli.selectors`), the JSON contract (:mod:`~accelcore.cli.schema`),
human rendering (:mod:`~accelcore.cli.render`) and the demo
(:mod:`~accelcore.cli.demo`).
"""

from __future__ import annotations

from .app import main

__all__ = ["main"]
