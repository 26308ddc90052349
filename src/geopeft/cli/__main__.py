"""``python -m geopeft.cli``: the ``geopeft`` command (torchrun relaunches training this way)."""

import sys

from geopeft.cli import main

sys.exit(main())
