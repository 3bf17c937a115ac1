#!/usr/bin/env bash
# Install what iservice needs on a Debian 12 machine (run as root):
# Debian packages, and a venv OUTSIDE /root so that the hook and test clients can
# be executed by unprivileged users (SPEC §9). Idempotent and quick when done before.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${ISERVICE_VENV:-/opt/iservice}
# gcc + libc6-dev: pip builds the openvpn plugin (setup.py; openvpn-plugin.h comes with
# openvpn); without them the install still works and the service uses the script hook.
# gnome-keyring: the real Secret Service for the saved-credentials test (on a private
# session bus); systemd: systemd-socket-activate for the socket-activation test.
PKGS=(openvpn iproute2 iputils-ping nftables openssl python3-venv procps util-linux
      dbus-daemon gcc libc6-dev gnome-keyring systemd)
# the Debian package's build (scripts/build-deb.sh, docs/install.md), and zsh to check
# the generated zsh completion
PKGS+=(debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
       dpkg-dev fakeroot lintian zsh)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 \
    "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating the venv $VENV (Debian's /usr/bin/python3)"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
# Not editable: the checkout may live under /root, which other users cannot read.
"$VENV/bin/pip" install -q --upgrade --force-reinstall --no-deps . >/dev/null
"$VENV/bin/pip" install -q ".[dev]" >/dev/null
# atheris (fuzz/run.py) ships wheels for Debian's Python 3.11; if it cannot be installed
# the short fuzz pass of the test run uses hypothesis instead.
"$VENV/bin/pip" install -q ".[fuzz]" >/dev/null 2>&1 ||
  echo "setup: atheris could not be installed; fuzzing falls back to hypothesis"
chmod -R go+rX "$VENV"
# pip shows setup.py's warnings only with -v: say it here when a C part is missing
"$VENV/bin/python" -c 'from iservice.plugin import plugin_path, runas_path, spawn_library_path
for what, found in (("the openvpn plugin", plugin_path()), ("iservice-runas", runas_path()),
                    ("iservice_spawn.so", spawn_library_path())):
    if found is None:
        print(f"setup: WARNING: {what} was not built (gcc, libc6-dev, openvpn-plugin.h?);"
              " the service falls back to the script hook / setpriv / the cgroup join")' >&2
echo "setup: iservice $("$VENV/bin/iservice" --version | cut -d' ' -f2) in $VENV"
