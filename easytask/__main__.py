"""`python -m easytask`."""

import sys

from easytask.cli import main

sys.exit(main())
