"""`python -m karma` runs the same entry point as the `karma-trio` script."""

import sys

from karma.cli import main

sys.exit(main())
