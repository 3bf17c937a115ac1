#!/usr/bin/env bash
# The benchmark command (issues 8, 13, 16): every figure beside its peer, as a Markdown
# table.  Run as root on a Debian 12 machine:  bash bench/run.sh [--quick] [--only P2 ...]
# (bench/README.md: the rows and options; a full run's table goes to bench/results/).
# It installs what it needs (scripts/setup.sh, venv $ISERVICE_VENV or /opt/iservice),
# builds its own namespace lab and removes everything it created at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
VENV=${ISERVICE_VENV:-/opt/iservice}
PYTHONPATH=. exec "$VENV/bin/python" bench/run.py "$@"
