#!/usr/bin/env bash
# The test command: installs what it needs (scripts/setup.sh), checks style and
# types, then runs the whole suite (unit, integration and security tests; the
# integration tests need root, network namespaces and the real openvpn), and without
# arguments the Debian package's build, install, tests and purge (test-package.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${ISERVICE_VENV:-/opt/iservice}
echo "== ruff"; "$VENV/bin/ruff" check src tests bench scripts
echo "== mypy"; "$VENV/bin/mypy"
echo "== pytest"
# PYTHONPATH=. makes tests/lab/ importable; iservice itself is the installed copy.
PYTHONPATH=. "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
# The whole run (no arguments, as CI) also builds the Debian package, installs it, tests
# it and purges it (docs/install.md, "Tests").
if (($# == 0)); then
  echo "== the Debian package"
  if ((EUID != 0)); then
    echo "test: the package's tests need root (apt-get, namespaces); not run" >&2
    exit 1
  fi
  bash scripts/test-package.sh
fi
