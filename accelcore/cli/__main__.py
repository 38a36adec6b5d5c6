"""``python -m accelcore.cli``: the same as the ``accelctl`` console script."""

from __future__ import annotations

from .app import main

if __name__ == "__main__":
    main(prog_name="accelctl")
