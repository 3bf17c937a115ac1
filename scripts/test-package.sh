#!/usr/bin/env bash
# The Debian package, end to end (run by scripts/test.sh; root; docs/install.md "Tests"):
# build it, record the machine, install the .deb with apt-get, run tests/package and a
# subset of the integration tests against the installed package, purge it with services
# left running and killed (tests/package/test_purge.py, last), and check that nothing
# it added is left.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ISERVICE_VENV:-/opt/iservice}
# The integration tests run again against /usr/bin/iservice: the service's life with
# the plugin and iservice-runas (test_service.py) and the client people use in a real
# terminal (test_client.py). The rest exercise the same installed code paths through
# the venv already; running everything twice would double the suite's time.
SUBSET=(tests/integration/test_service.py tests/integration/test_client.py)

if dpkg-query -W -f='${Status}' iservice 2>/dev/null | grep -q "install ok installed"; then
  echo "test-package: iservice is installed already; purge it first (apt-get purge iservice)" >&2
  exit 1
fi
work=$(mktemp -d)
export DEBIAN_FRONTEND=noninteractive
cleanup() {
  # whatever failed, the machine is left without the package
  if dpkg-query -W -f='${Status}' iservice 2>/dev/null | grep -q "ok installed\|config-files"
  then dpkg --purge iservice >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { awk "BEGIN { printf \"%.1f\", $2 - $1 }"; }

t0=$(now)
deb=$(bash scripts/build-deb.sh "$work/dist")
t1=$(now)
PYTHONPATH=. /usr/bin/python3 -m tests.package.leftovers snapshot "$work/before.json"
apt-get install -y -q -o DPkg::Lock::Timeout=300 "$deb" >"$work/install.log" 2>&1 || {
  cat "$work/install.log" >&2; exit 1; }
t2=$(now)
echo "test-package: built $(basename "$deb") ($(( $(stat -c %s "$deb") / 1024 )) KiB) in" \
     "$(secs "$t0" "$t1") s, installed in $(secs "$t1" "$t2") s"

ISERVICE_INSTALLED=1 ISERVICE_SNAPSHOT="$work/before.json" PYTHONPATH=. \
  ISERVICE_PKG_REPORT="$work/report.txt" \
  "$VENV/bin/python" -m pytest -p no:cacheprovider tests/package/test_installed.py \
  "${SUBSET[@]}" tests/package/test_purge.py "$@"
[ -f "$work/report.txt" ] && sed 's/^/test-package: /' "$work/report.txt"
echo "test-package: build, install, tests and purge took $(secs "$t0" "$(now)") s"
