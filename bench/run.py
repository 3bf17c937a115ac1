#!/usr/bin/env python3
"""iservice benchmarks (issues 8, 13, 16): every figure beside its peer, in one run.

Run as root after ``scripts/setup.sh``:  ``bash bench/run.sh [--quick] [--only P1,P2]``
(``bench/cli.py`` has the options, ``bench/README.md`` what each row measures).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the checkout, not bench/ itself, so that ``bench`` is the package and ``tests`` importable
sys.path[0] = str(REPO)

from bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
