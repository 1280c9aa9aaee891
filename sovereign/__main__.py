"""``python -m sovereign`` is the ``sovereign`` command."""

import sys

from sovereign.cli import main

sys.exit(main())
