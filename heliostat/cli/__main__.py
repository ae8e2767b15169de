"""``python -m heliostat.cli``: the ``heliostat`` command."""

from __future__ import annotations

import sys

from heliostat.cli import main

sys.exit(main())
