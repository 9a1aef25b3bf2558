"""`python -m refvm` is the `refvm` command."""

import sys

from refvm.cli import main

sys.exit(main())
