import sys

from composefs.cli import main

sys.exit(main())
