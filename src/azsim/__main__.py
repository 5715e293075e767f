"""``python -m azsim``: the same as the ``azsim`` command."""

import sys

from azsim.cli import main

sys.exit(main())
