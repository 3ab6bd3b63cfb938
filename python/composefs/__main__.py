"""``python -m composefs``: the ``composefs`` command."""

import sys

from composefs.cli import main

sys.exit(main())
