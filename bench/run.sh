#!/usr/bin/env bash
# The benchmark command (issue 8): P1–P4 side by side with their peers, as a Markdown
# table.  Run as root on a Debian 12 machine:  bash bench/run.sh [--quick] [--only P2 ...]
# It installs what it needs (scripts/setup.sh, venv $ISERVICE_VENV or /opt/iservice),
# builds its own namespace lab and removes everything it created at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
VENV=${ISERVICE_VENV:-/opt/iservice}
PYTHONPATH=. exec "$VENV/bin/python" bench/run.py "$@"
