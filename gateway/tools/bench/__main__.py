"""`python -m gateway.tools.bench`: the same as `invoice-gateway bench`."""

from __future__ import annotations

import sys

from gateway.tools.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
