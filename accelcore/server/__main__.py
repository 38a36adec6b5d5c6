"""``python -m accelcore.server``: run the devfs server in the foreground."""

from __future__ import annotations

import sys

from .daemon import main

if __name__ == "__main__":
    sys.exit(main())
