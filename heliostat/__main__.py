"""``python -m heliostat``: the ``heliostat`` command, as the console script runs it."""

from __future__ import annotations

import sys

from heliostat.cli import main

if __name__ == "__main__":
    sys.exit(main())
