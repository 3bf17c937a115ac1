#!/usr/bin/env bash
# Build the Debian package (docs/install.md): bash scripts/build-deb.sh [OUTDIR]
#
# Installs the build dependencies (scripts/setup.sh does too), builds from a copy of
# this tree with dpkg-buildpackage (debhelper + pybuild; the products never land in the
# checkout), runs lintian, and leaves iservice_<version>_<arch>.deb and lintian.txt in
# OUTDIR (default: dist/).  Prints the .deb's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-dist}")

BUILD_DEPS=(debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
            libc6-dev gcc openvpn dpkg-dev fakeroot lintian)
missing=()
for p in "${BUILD_DEPS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "build-deb: installing the build dependencies: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 \
    "${missing[@]}" >/dev/null
fi

version=$(dpkg-parsechangelog -S Version)
code_version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' src/iservice/__init__.py)
if [ "$version" != "$code_version" ]; then
  echo "build-deb: debian/changelog says $version, src/iservice/__init__.py $code_version;" \
       "add a changelog entry (dch -v $code_version)" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src="$work/iservice-$version"
mkdir -p "$src"
# the files git knows (committed or not, ignored ones left out), else the whole tree
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard |
    (while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done) |
    tar --null -T - -cf - | tar -xf - -C "$src"
else
  tar --exclude=./.git --exclude=./dist -cf - . | tar -xf - -C "$src"
fi

start=$(date +%s.%N)
# Debian's own tools and Python only (a python3 earlier on PATH, e.g. pyenv's, is not
# the one the package is for)
(cd "$src" && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -us -uc \
  -j"$(nproc)") >"$work/build.log" 2>&1 || {
  tail -n 60 "$work/build.log" >&2
  echo "build-deb: dpkg-buildpackage failed (the last lines are above)" >&2
  exit 1
}
built=$(date +%s.%N)
deb=$(ls "$work"/iservice_"$version"_*.deb)
mkdir -p "$out"
cp "$deb" "$out/"
# lintian: every tag is fixed or explained in debian/iservice.lintian-overrides
# (docs/install.md, "lintian"); an unexplained warning or error fails the build
lintian_status=0
lintian --info --display-info --pedantic --fail-on error,warning \
  "$work"/iservice_"$version"_*.changes >"$out/lintian.txt" 2>&1 || lintian_status=$?
cat "$out/lintian.txt" >&2
printf 'build-deb: built in %s s, %s KiB; lintian %s\n' \
  "$(awk "BEGIN { printf \"%.1f\", $built - $start }")" "$(( $(stat -c %s "$deb") / 1024 ))" \
  "$( ((lintian_status)) && echo "FAILED (see above)" || echo "clean")" >&2
((lintian_status == 0)) || exit 1
echo "$out/${deb##*/}"
