#!/usr/bin/env bash
# The quick-start demo: installs what it needs, then brings a real tunnel up
# through iservice on a local lab (network namespaces), and tears it down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${ISERVICE_VENV:-/opt/iservice}
exec "$VENV/bin/python" scripts/demo.py "$@"
