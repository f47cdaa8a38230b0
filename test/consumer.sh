#!/usr/bin/env bash
# test/consumer.sh - smtpd taken in by another program, each way the README's "Use it in your
# program" shows. test/consumer/ (consumer.cpp, which serves one message with smtpd::TestServer
# and checks it, and its CMakeLists.txt) is built and run, with TLS and without:
#   1. add_subdirectory              3. find_package after `make install PREFIX=...`
#   2. FetchContent (file:// URL)    4. pkg-config after the same install
#   5. the README's g++ line on the two copied files
# A build without TLS must link no OpenSSL, one with TLS must. Also checked: what make install
# puts where (and no .cpp), the .pc and version files, make uninstall leaving a prefix exactly
# as found, cmake --install putting the same files as make install, and the project's own CMake
# build passing its tests under ctest.
#
#   bash test/consumer.sh       prints "ok - NAME" or "not ok - NAME: why" (with the end of the
#                               log as "#" lines), then "consumer: N passed, N failed"
#
# Needs cmake, pkg-config, g++, OpenSSL and doctest (`make deps`), no network and no root.
# Everything happens in one temporary directory, removed at exit. About 3 minutes on 2 cores,
# most of it compiling: smtpd.cpp 9 times, the doctest suites once.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
src=$(pwd)
# Our own -j2; a parent make's jobserver flags must not reach the makes we run.
unset MAKEFLAGS MFLAGS MAKELEVEL
jobs=2
work=$(mktemp -d "${TMPDIR:-/tmp}/smtpd-consumer.XXXXXX") || exit 2
trap 'rm -rf "$work"' EXIT
version=$(sed -n 's/^#define SMTPD_VERSION "\(.*\)"$/\1/p' smtpd.hpp)
PASSED=0
FAILED=0

ok() {
  echo "ok - $1"
  PASSED=$((PASSED + 1))
}

# not_ok NAME REASON [LOG] - a failure, with the last lines of LOG.
not_ok() {
  echo "not ok - $1: $2"
  FAILED=$((FAILED + 1))
  if [ -n "${3-}" ] && [ -s "$3" ]; then
    tail -n 25 "$3" | sed 's/^/#   /'
  fi
}

# run LOG COMMAND... - COMMAND, with no stdin and its output appended to LOG, under a time limit.
run() {
  local log=$1
  shift
  printf '$ %s\n' "$*" >>"$log"
  timeout -k 10 900 "$@" </dev/null >>"$log" 2>&1
}

# tls_flag on|off FORM - how TLS on or off is said to CMake (cmake) or to make (make).
tls_flag() {
  case "$2:$1" in
    cmake:on) echo -DSMTPD_TLS=ON ;;
    cmake:off) echo -DSMTPD_TLS=OFF ;;
    make:on) echo TLS=1 ;;
    make:off) echo TLS=0 ;;
  esac
}

# check_consumer NAME TLS BINARY LOG - BINARY, a consumer built with TLS on or off, runs and
# says so, and links OpenSSL exactly when TLS is on.
check_consumer() {
  local name=$1 tls=$2 bin=$3 log=$4 out linked=off
  if [ ! -x "$bin" ]; then
    not_ok "$name" "no consumer was built" "$log"
    return 1
  fi
  out=$(timeout -k 5 30 "$bin" 2>&1 </dev/null)
  if [ "$out" != "consumer: ok, TLS $tls" ]; then
    not_ok "$name" "the consumer said: $out" "$log"
    return 1
  fi
  readelf -d "$bin" | grep -Eq 'NEEDED.*\[lib(ssl|crypto)\.' && linked=on
  if [ "$linked" != "$tls" ]; then
    not_ok "$name" "TLS $tls, but OpenSSL linked: $linked ($(readelf -d "$bin" | grep -c NEEDED) NEEDED entries)"
    return 1
  fi
  ok "$name"
}

# cmake_consumer NAME TLS CMAKE-ARGS... - configure, build and check test/consumer in $work/NAME.
cmake_consumer() {
  local name=$1 tls=$2 dir=$work/$1
  shift 2
  if ! run "$dir.log" cmake -S "$src/test/consumer" -B "$dir" "$(tls_flag "$tls" cmake)" "$@" ||
    ! run "$dir.log" cmake --build "$dir" -j "$jobs"; then
    not_ok "$name" "configure or build failed" "$dir.log"
    return 1
  fi
  check_consumer "$name" "$tls" "$dir/consumer" "$dir.log"
}

# file_list DIR - every file and directory under DIR, relative, sorted.
file_list() {
  (cd "$1" && find . -mindepth 1 | LC_ALL=C sort)
}

# same_lists NAME EXPECTED ACTUAL - ok when the two lists (files) are equal, else the diff.
same_lists() {
  if diff -u "$2" "$3" >"$work/$1.diff"; then
    ok "$1"
  else
    not_ok "$1" "the file lists differ" "$work/$1.diff"
  fi
}

echo "# smtpd $version, from $src; work in $work"

# --- 1. add_subdirectory, 2. FetchContent ---------------------------------------------------------
# A subproject builds the library only: no examples, no tests, no install rules.
subproject_only() {
  local name=$1 dir=$2 log=$work/$1.log
  local built
  built=$(find "$dir" -type f \( -name smtpd_tests -o -name mailsink -o -name hello \))
  if [ -n "$built" ]; then
    not_ok "$name" "examples or tests were built: $built"
  elif ! run "$log" cmake --install "$dir" --prefix "$work/$name.prefix"; then
    not_ok "$name" "cmake --install failed" "$log"
  elif [ -e "$work/$name.prefix" ]; then
    not_ok "$name" "the parent's install would install smtpd: $(file_list "$work/$name.prefix" | tr '\n' ' ')"
  else
    ok "$name"
  fi
}

for tls in on off; do
  cmake_consumer "add_subdirectory-tls-$tls" "$tls" -DSMTPD_FROM=add_subdirectory -DSMTPD_SOURCE="$src"
done
subproject_only add_subdirectory-library-only "$work/add_subdirectory-tls-on"

# An archive of this tree (build outputs and .git left out), as a release tarball would be.
tar -C "$src" --exclude=./build --exclude=./.git -czf "$work/smtpd-src.tar.gz" .
for tls in on off; do
  cmake_consumer "FetchContent-tls-$tls" "$tls" -DSMTPD_FROM=FetchContent \
    -DSMTPD_URL="file://$work/smtpd-src.tar.gz"
done
subproject_only FetchContent-library-only "$work/FetchContent-tls-on"

# --- make install into a prefix: what goes where ---------------------------------------------------
# Its own BUILD directory (the project's build/ is left alone); -O1 without -g: the package, not
# the code, is under test here, and the optimised build is the doctest suites' business.
make_install() { # make_install TLS LOG make-variables...
  local tls=$1 log=$2
  shift 2
  run "$log" make -C "$src" -j "$jobs" --no-print-directory BUILD="$work/make-build-$tls" \
    CXXFLAGS='-std=c++17 -O1' "$(tls_flag "$tls" make)" install "$@"
}

cat >"$work/expected-install" <<'EOF'
./bin
./bin/mailsink
./include
./include/smtpd.hpp
./lib
./lib/cmake
./lib/cmake/smtpd
./lib/cmake/smtpd/make-install-created-dirs
./lib/cmake/smtpd/smtpdConfig.cmake
./lib/cmake/smtpd/smtpdConfigVersion.cmake
./lib/cmake/smtpd/smtpdTargets.cmake
./lib/libsmtpd.a
./lib/pkgconfig
./lib/pkgconfig/smtpd.pc
EOF

for tls in on off; do
  prefix=$work/prefix-tls-$tls
  if make_install "$tls" "$work/make-install-tls-$tls.log" PREFIX="$prefix"; then
    file_list "$prefix" >"$work/make-install-tls-$tls.files"
    same_lists "make-install-tls-$tls-files" "$work/expected-install" "$work/make-install-tls-$tls.files"
  else
    not_ok "make-install-tls-$tls" "make install failed" "$work/make-install-tls-$tls.log"
  fi
done

# --- 3. find_package, 4. pkg-config (from the installs above) -------------------------------------
for tls in on off; do
  prefix=$work/prefix-tls-$tls
  cmake_consumer "find_package-tls-$tls" "$tls" -DSMTPD_FROM=find_package -DCMAKE_PREFIX_PATH="$prefix"
  # The consumer's CMakeLists.txt says which smtpd it found.
  if grep -q "smtpd $version from $prefix/lib/cmake/smtpd, TLS ${tls^^}" "$work/find_package-tls-$tls.log"; then
    ok "find_package-tls-$tls-found-ours"
  else
    not_ok "find_package-tls-$tls-found-ours" "not the smtpd $version just installed" \
      "$work/find_package-tls-$tls.log"
  fi
done

# find_package(smtpd VERSION): the same major and, while it is 0, the same minor version.
IFS=. read -r major minor patch <<<"$version"
mkdir -p "$work/versions"
cat >"$work/versions/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.16)
project(versions LANGUAGES CXX)
foreach(want IN LISTS WANTS)
  string(REPLACE "," ";" want "${want}")
  find_package(smtpd ${want} CONFIG QUIET)
  message(STATUS "want ${want}: ${smtpd_FOUND}")
endforeach()
EOF
# "want [X;EXACT]: 1" means found.
next_minor=$major.$((minor + 1))
cat >"$work/versions.expected" <<EOF
-- want $major.$minor: 1
-- want $version;EXACT: 1
-- want $major.$minor.$((patch + 1)): 0
-- want $next_minor: 0
-- want $((major + 1)).0: 0
-- want $major.$minor...$((major + 1)).0: 1
-- want $next_minor...$((major + 2)).0: 0
EOF
check_versions() { # check_versions NAME PREFIX
  local log=$work/$1.log
  if ! run "$log" cmake -S "$work/versions" -B "$work/$1" -DCMAKE_PREFIX_PATH="$2" \
    "-DWANTS=$major.$minor;$version,EXACT;$major.$minor.$((patch + 1));$next_minor;$((major + 1)).0;$major.$minor...$((major + 1)).0;$next_minor...$((major + 2)).0"; then
    not_ok "$1" "cmake failed" "$log"
    return
  fi
  grep '^-- want ' "$log" >"$work/$1.found"
  same_lists "$1" "$work/versions.expected" "$work/$1.found"
}
check_versions find_package-versions "$work/prefix-tls-on"

# pkg-config: plain --cflags --libs, as a Makefile would use it (the library is static, so
# OpenSSL must come without --static).
pkg_consumer() { # pkg_consumer NAME TLS PREFIX
  local name=$1 tls=$2 dir=$work/$1 log=$work/$1.log flags pcdir
  pcdir=$(dirname "$(find "$3" -name smtpd.pc | head -n 1)")
  mkdir -p "$dir"
  export PKG_CONFIG_PATH=$pcdir
  if ! flags=$(pkg-config --cflags --libs smtpd 2>>"$log"); then
    not_ok "$name" "pkg-config failed" "$log"
  elif [ "$(pkg-config --modversion smtpd)" != "$version" ]; then
    not_ok "$name" "pkg-config --modversion says $(pkg-config --modversion smtpd), not $version"
  elif [ "$tls" = off ] && [[ " $flags " != *" -DSMTPD_NO_TLS "* || "$flags" == *ssl* ]]; then
    not_ok "$name" "TLS off, but the flags are: $flags"
  elif [ "$tls" = on ] && [[ "$flags" != *-lssl* || "$flags" == *SMTPD_NO_TLS* ]]; then
    not_ok "$name" "TLS on, but the flags are: $flags"
  elif ! (cd "$dir" && run "$log" g++ -std=c++17 -O2 "$src/test/consumer/consumer.cpp" $flags -o consumer); then
    not_ok "$name" "g++ failed with: $flags" "$log"
  else
    check_consumer "$name" "$tls" "$dir/consumer" "$log"
  fi
  unset PKG_CONFIG_PATH
}
for tls in on off; do
  pkg_consumer "pkg-config-tls-$tls" "$tls" "$work/prefix-tls-$tls"
done

# --- 5. the README's g++ line, on the two files copied beside the program --------------------------
# The lines are read from the README's "Use it in your program" section, so it stays true.
readme_lines=$(sed -n '/^## Use it in your program/,/^## /p' README.md | grep '^g++ ' | sed 's/ *#.*//')
for tls in on off; do
  name=readme-g++-tls-$tls dir=$work/readme-g++-tls-$tls
  if [ "$tls" = on ]; then
    line=$(grep -v -- '-DSMTPD_NO_TLS' <<<"$readme_lines" | head -n 1)
  else
    line=$(grep -- '-DSMTPD_NO_TLS' <<<"$readme_lines" | head -n 1)
  fi
  if [ -z "$line" ] || [[ "$line" != *" app.cpp smtpd.cpp "* ]]; then
    not_ok "$name" "no g++ line building app.cpp with TLS $tls in the README's \"Use it in your program\""
    continue
  fi
  mkdir -p "$dir"
  cp smtpd.hpp smtpd.cpp "$dir/"
  cp test/consumer/consumer.cpp "$dir/app.cpp"
  if (cd "$dir" && run "$dir.log" bash -c "$line"); then
    check_consumer "$name" "$tls" "$dir/app" "$dir.log"
  else
    not_ok "$name" "failed: $line" "$dir.log"
  fi
done

# --- make uninstall: the prefix exactly as found ----------------------------------------------------
# Twice: into an empty DESTDIR (everything install created goes again), and into one laid out like
# Debian's /usr/local with things of its own (which all stay, the empty directories too). Two
# installs in a row count as one. The TLS build from above is reused.
uninstall_leaves() { # uninstall_leaves NAME DESTDIR
  local name=$1 dest=$2 log=$work/$1.log
  file_list "$dest" >"$work/$name.before"
  if ! make_install on "$log" DESTDIR="$dest" PREFIX=/usr/local ||
    ! make_install on "$log" DESTDIR="$dest" PREFIX=/usr/local; then
    not_ok "$name" "make install failed" "$log"
  elif [ "$(find "$dest" -name '*.cpp' | wc -l)" -ne 0 ] || [ ! -f "$dest/usr/local/lib/libsmtpd.a" ]; then
    not_ok "$name" "install put: $(file_list "$dest" | tr '\n' ' ')"
  elif ! grep -qx 'prefix=/usr/local' "$dest/usr/local/lib/pkgconfig/smtpd.pc"; then
    not_ok "$name" "smtpd.pc should say prefix=/usr/local, DESTDIR being only a staging area"
  elif ! run "$log" make -C "$src" --no-print-directory DESTDIR="$dest" PREFIX=/usr/local uninstall; then
    not_ok "$name" "make uninstall failed" "$log"
  else
    file_list "$dest" >"$work/$name.after"
    same_lists "$name" "$work/$name.before" "$work/$name.after"
  fi
}
mkdir -p "$work/destdir-empty"
uninstall_leaves make-uninstall-empty-destdir "$work/destdir-empty"
mkdir -p "$work/destdir-used/usr/local/"{bin,etc,include,sbin,share,src,lib/pkgconfig,lib/cmake/other}
echo 'Name: other' >"$work/destdir-used/usr/local/lib/pkgconfig/other.pc"
echo '# other' >"$work/destdir-used/usr/local/lib/cmake/other/otherConfig.cmake"
echo 'other' >"$work/destdir-used/usr/local/include/other.h"
uninstall_leaves make-uninstall-used-destdir "$work/destdir-used"

# --- the project's own CMake build: tests under ctest, then cmake --install ---------------------
# No CMAKE_BUILD_TYPE, so no optimisation: the quickest compile of the doctest suites.
project=$work/project
if ! run "$project.log" cmake -S "$src" -B "$project" -DCMAKE_INSTALL_PREFIX="$work/cmake-prefix" ||
  ! run "$project.log" cmake --build "$project" -j "$jobs"; then
  not_ok cmake-project-build "configure or build failed" "$project.log"
else
  ok cmake-project-build
  if run "$project.log" ctest --test-dir "$project" -j "$jobs" --timeout 300 --output-on-failure; then
    if grep -q '^100% tests passed, 0 tests failed out of [1-9]' "$project.log"; then
      ok "ctest ($(grep -o 'out of [0-9]*' "$project.log" | tail -n 1 | cut -d' ' -f3) suites)"
    else
      not_ok ctest "no \"100% tests passed\" line" "$project.log"
    fi
  else
    not_ok ctest "a test failed" "$project.log"
  fi
  # The same files as make install, but CMake's export (smtpdTargets.cmake and one file per
  # build configuration) and no make-install record.
  if run "$project.log" cmake --install "$project"; then
    file_list "$work/cmake-prefix" | grep -v '/smtpdTargets-[a-z]*\.cmake$' >"$work/cmake-install.files"
    grep -v '/make-install-created-dirs$' "$work/expected-install" >"$work/cmake-install.expected"
    same_lists cmake-install-files "$work/cmake-install.expected" "$work/cmake-install.files"
    cmake_consumer find_package-cmake-install-tls-on on -DSMTPD_FROM=find_package \
      -DCMAKE_PREFIX_PATH="$work/cmake-prefix"
    check_versions find_package-cmake-install-versions "$work/cmake-prefix"
    # CMake's smtpd.pc finds its prefix from its own place, so a moved tree works too.
    mv "$work/cmake-prefix" "$work/cmake-prefix-moved"
    pkg_consumer pkg-config-cmake-install-moved-tls-on on "$work/cmake-prefix-moved"
  else
    not_ok cmake-install "cmake --install failed" "$project.log"
  fi
fi

echo "consumer: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
