"""``uv run python -m geopeft.settings [--defaults | --write]`` (see :mod:`geopeft.settings.schema`)."""

from geopeft.settings.schema import main

raise SystemExit(main())
