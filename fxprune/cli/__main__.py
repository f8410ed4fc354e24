"""``python -m fxprune.cli``."""

import sys

from . import main

sys.exit(main())
