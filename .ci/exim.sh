#!/usr/bin/env bash
# .ci/exim.sh DIR - Exim, the real BDAT sender of test/interop_ext.sh, unpacked into DIR (the
# Makefile's deps target passes $(BUILD)/exim): DIR/usr/sbin/exim4, run there with a config file
# of the test's own (-C). Debian's exim4-daemon-light conflicts with the postfix package that
# the other interop tests need, so it is never installed: `apt-get download` fetches the .deb
# from the configured Debian archive and `dpkg-deb -x` unpacks it. Its shared libraries come
# from DEB_PACKAGES in the Makefile. The binary looks up its compiled-in user Debian-exim at
# start, before reading any config, so that system user is created as exim4-base's postinst
# would (useradd --system, no home, no login shell).
#
# Fast when done already. As root it downloads and unpacks; otherwise it prints what is
# missing and exits 0 without blocking the build: the Exim checks then fail, naming this script.
set -u
dir=${1:?usage: .ci/exim.sh DIR}
package=exim4-daemon-light
binary=$dir/usr/sbin/exim4
have_user() { getent passwd Debian-exim > /dev/null && getent group Debian-exim > /dev/null; }
[ -x "$binary" ] && have_user && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "exim: $binary or the Debian-exim user is missing; run 'make deps' as root" \
       "(test/interop_ext.sh's Exim checks fail until then)" >&2
  exit 0
fi
if ! have_user; then
  getent group Debian-exim > /dev/null || groupadd --system Debian-exim || exit 1
  useradd --system --gid Debian-exim --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin Debian-exim || exit 1
fi
[ -x "$binary" ] && exit 0
download=$(mktemp -d "${TMPDIR:-/tmp}/exim-deb.XXXXXX") || exit 1
trap 'rm -rf "$download"' EXIT
chmod 755 "$download" # apt-get download writes as the _apt user where it can
echo "exim: downloading $package into $download, unpacking it into $dir"
if ! (cd "$download" && apt-get download "$package" > apt.log 2>&1); then
  # No package lists yet (a fresh system): fetch them once, then try again.
  apt-get update > /dev/null && (cd "$download" && apt-get download "$package") || exit 1
fi
mkdir -p "$dir" && dpkg-deb -x "$download"/"$package"_*.deb "$dir" || exit 1
[ -x "$binary" ] || { echo "exim: $binary is not in $package" >&2; exit 1; }
