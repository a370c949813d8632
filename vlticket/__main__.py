"""``python -m vlticket``: the same command line as ``vlticket``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
