#!/usr/bin/env bash
# The test command: installs what it needs (scripts/setup.sh), checks style and
# types, then runs the whole suite (unit, integration and security tests; the
# integration tests need root, network namespaces and the real openvpn).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${ISERVICE_VENV:-/opt/iservice}
echo "== ruff"; "$VENV/bin/ruff" check src tests bench scripts
echo "== mypy"; "$VENV/bin/mypy"
echo "== pytest"
# PYTHONPATH=. makes tests/lab/ importable; iservice itself is the installed copy.
PYTHONPATH=. exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
