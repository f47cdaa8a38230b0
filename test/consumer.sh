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
# Needs cmake, pkg-config, g++, OpenSSL and doctest (`make deps`); no network, no root.
# Everything happens in one temporary directory, removed at exit. About 100 s of CPU (2 minutes
# on a busy 2-core machine), nearly all of it compiling: smtpd.cpp 9 times, the doctest suites
# once.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
src=$(pwd)
# Our own jobs; a parent make's jobserver flags must not reach the makes we run.
unset MAKEFLAGS MFLAGS MAKELEVEL
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

# file_list DIR - every file and directory under DIR, relative, sorted.
file_list() {
  (cd "$1" && find . -mindepth 1 | LC_ALL=C sort)
}

# same_lists NAME EXPECTED ACTUAL - ok when the two files (lists) are equal, else their diff.
same_lists() {
  if diff -u "$2" "$3" >"$work/$1.diff"; then
    ok "$1"
  else
    not_ok "$1" "the lists differ" "$work/$1.diff"
  fi
}

# check_consumer NAME TLS BINARY LOG - BINARY, a consumer built with TLS on or off, runs and
# says so, and links OpenSSL exactly when TLS is on.
check_consumer() {
  local name=$1 tls=$2 bin=$3 log=$4 out linked=off
  if [ ! -x "$bin" ]; then
    not_ok "$name" "no consumer was built" "$log"
    return
  fi
  out=$(timeout -k 5 30 "$bin" 2>&1 </dev/null)
  if [ "$out" != "consumer: ok, TLS $tls" ]; then
    not_ok "$name" "the consumer said: $out" "$log"
    return
  fi
  readelf -d "$bin" | grep -Eq 'NEEDED.*\[lib(ssl|crypto)\.' && linked=on
  if [ "$linked" != "$tls" ]; then
    not_ok "$name" "TLS $tls, but OpenSSL linked: $linked"
    return
  fi
  ok "$name"
}

# --- building two at a time ----------------------------------------------------------------------
# Most of the time goes into compiling smtpd.cpp, one compiler per build. So each way builds its
# TLS and no-TLS variants side by side with one job each (two compilers in all, as -j2), and
# then checks both, in order. A BUILDER is called as `BUILDER NAME on|off ARGS...`, works in
# $work/NAME and writes its output to $work/NAME.log.

# both BUILDER STEM ARGS... - builds STEM-tls-on and STEM-tls-off at once; their exit statuses
# go to status[STEM-tls-on] and status[STEM-tls-off].
declare -A status
both() {
  local builder=$1 stem=$2 on off
  shift 2
  "$builder" "$stem-tls-on" on "$@" &
  on=$!
  "$builder" "$stem-tls-off" off "$@" &
  off=$!
  wait "$on"
  status[$stem-tls-on]=$?
  wait "$off"
  status[$stem-tls-off]=$?
}

# check_both STEM BINARY - the consumer each build of STEM made, $work/STEM-tls-X/BINARY.
check_both() {
  local stem=$1 binary=$2 tls name
  for tls in on off; do
    name=$stem-tls-$tls
    if [ "${status[$name]}" -ne 0 ]; then
      not_ok "$name" "the build failed" "$work/$name.log"
    else
      check_consumer "$name" "$tls" "$work/$name/$binary" "$work/$name.log"
    fi
  done
}

# build_cmake NAME TLS CMAKE-ARGS... - test/consumer with CMake.
build_cmake() {
  local dir=$work/$1 tls=${2^^}
  shift 2
  run "$dir.log" cmake -S "$src/test/consumer" -B "$dir" -DSMTPD_TLS="$tls" "$@" &&
    run "$dir.log" cmake --build "$dir" -j 1
}

# build_find_package NAME TLS - test/consumer with find_package, from make install's prefix for
# the same TLS ($work/make-install-tls-TLS/prefix).
build_find_package() {
  build_cmake "$1" "$2" -DSMTPD_FROM=find_package \
    -DCMAKE_PREFIX_PATH="$work/make-install-tls-$2/prefix"
}

# build_make_install NAME TLS MAKE-ARGS... - make install with BUILD=$work/NAME/build, into
# PREFIX=$work/NAME/prefix unless MAKE-ARGS say otherwise. CXXFLAGS -O1 without -g: this tests
# the package, not the code, which the doctest suites test optimised.
build_make_install() {
  local dir=$work/$1 tls=1
  [ "$2" = off ] && tls=0
  shift 2
  run "$dir.log" make -C "$src" -j 1 --no-print-directory BUILD="$dir/build" \
    CXXFLAGS='-std=c++17 -O1' TLS="$tls" PREFIX="$dir/prefix" install "$@"
}

# build_readme NAME TLS - the README's g++ line for TLS on or off, in a folder holding only
# smtpd.hpp, smtpd.cpp and consumer.cpp as app.cpp. The lines are read from the README's
# "Use it in your program", so that it stays true.
build_readme() {
  local dir=$work/$1 tls=$2 line
  line=$(sed -n '/^## Use it in your program/,/^## /p' "$src/README.md" |
    grep '^g++ .* app\.cpp smtpd\.cpp ' | sed 's/ *#.*//' |
    if [ "$tls" = on ]; then grep -v -- -DSMTPD_NO_TLS; else grep -- -DSMTPD_NO_TLS; fi |
    head -n 1)
  if [ -z "$line" ]; then
    echo "no g++ line building app.cpp smtpd.cpp with TLS $tls in the README" >>"$dir.log"
    return 1
  fi
  mkdir -p "$dir"
  cp "$src/smtpd.hpp" "$src/smtpd.cpp" "$dir/"
  cp "$src/test/consumer/consumer.cpp" "$dir/app.cpp"
  (cd "$dir" && run "$dir.log" bash -c "$line")
}

echo "# smtpd $version, from $src; work in $work"

# --- 1. add_subdirectory, 2. FetchContent ---------------------------------------------------------
# subproject_only NAME DIR - a subproject builds the library only: no examples, no tests, and no
# install rules in the parent's install.
subproject_only() {
  local name=$1 dir=$2 log=$work/$1.log built
  built=$(find "$dir" -type f \( -name smtpd_tests -o -name mailsink -o -name hello \))
  if [ -n "$built" ]; then
    not_ok "$name" "examples or tests were built: $built"
  elif ! run "$log" cmake --install "$dir" --prefix "$work/$name.prefix"; then
    not_ok "$name" "cmake --install failed" "$log"
  elif [ -e "$work/$name.prefix" ]; then
    not_ok "$name" "the parent's install installs smtpd: $(file_list "$work/$name.prefix" | tr '\n' ' ')"
  else
    ok "$name"
  fi
}

both build_cmake add_subdirectory -DSMTPD_FROM=add_subdirectory -DSMTPD_SOURCE="$src"
check_both add_subdirectory consumer
subproject_only add_subdirectory-library-only "$work/add_subdirectory-tls-on"

# An archive of this tree (build outputs and .git left out), as a release archive would be.
tar -C "$src" --exclude=./build --exclude=./.git -czf "$work/smtpd-src.tar.gz" .
both build_cmake FetchContent -DSMTPD_FROM=FetchContent -DSMTPD_URL="file://$work/smtpd-src.tar.gz"
check_both FetchContent consumer
subproject_only FetchContent-library-only "$work/FetchContent-tls-on"

# --- make install into a prefix: what goes where ---------------------------------------------------
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
both build_make_install make-install
for tls in on off; do
  name=make-install-tls-$tls
  if [ "${status[$name]}" -ne 0 ]; then
    not_ok "$name" "make install failed" "$work/$name.log"
  else
    file_list "$work/$name/prefix" >"$work/$name.files"
    same_lists "$name-files" "$work/expected-install" "$work/$name.files"
  fi
done


# --- 3. find_package, 4. pkg-config (from the installs above) -------------------------------------
both build_find_package find_package
check_both find_package consumer
# The consumer's CMakeLists.txt says which smtpd it found: it must be the one just installed.
for tls in on off; do
  name=find_package-tls-$tls
  if grep -q "smtpd $version from $work/make-install-tls-$tls/prefix/lib/cmake/smtpd, TLS ${tls^^}" \
    "$work/$name.log"; then
    ok "$name-found-ours"
  else
    not_ok "$name-found-ours" "not the smtpd $version just installed" "$work/$name.log"
  fi
done

# check_versions NAME PREFIX - find_package(smtpd VERSION) takes the same major version and,
# while it is 0, the same minor version, at least the one asked for; ranges as given.
IFS=. read -r major minor patch <<<"$version"
next_minor=$major.$((minor + 1))
next_minor_found=1
[ "$major" -eq 0 ] && next_minor_found=0
wants="$major.$minor;$version,EXACT;$major.$minor.$((patch + 1));$next_minor;$((major + 1)).0"
wants+=";$major.$minor...$((major + 1)).0;$next_minor...$((major + 2)).0"
cat >"$work/versions.expected" <<EOF
-- want $major.$minor: 1
-- want $version;EXACT: 1
-- want $major.$minor.$((patch + 1)): 0
-- want $next_minor: $next_minor_found
-- want $((major + 1)).0: 0
-- want $major.$minor...$((major + 1)).0: 1
-- want $next_minor...$((major + 2)).0: 0
EOF
mkdir -p "$work/versions"
cat >"$work/versions/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.16)
project(versions LANGUAGES CXX)
foreach(want IN LISTS WANTS) # "X.Y,EXACT" stands for X.Y EXACT
  string(REPLACE "," ";" want "${want}")
  find_package(smtpd ${want} CONFIG QUIET)
  message(STATUS "want ${want}: ${smtpd_FOUND}")
endforeach()
EOF
check_versions() {
  local log=$work/$1.log
  if run "$log" cmake -S "$work/versions" -B "$work/$1" -DCMAKE_PREFIX_PATH="$2" "-DWANTS=$wants"; then
    grep '^-- want ' "$log" >"$work/$1.found"
    same_lists "$1" "$work/versions.expected" "$work/$1.found"
  else
    not_ok "$1" "cmake failed" "$log"
  fi
}
check_versions find_package-versions "$work/make-install-tls-on/prefix"

# pkg_consumer NAME TLS PREFIX - plain `pkg-config --cflags --libs smtpd`, as a Makefile would
# use it (the library being static, OpenSSL must come without --static), and the version.
pkg_consumer() {
  local name=$1 tls=$2 dir=$work/$1 log=$work/$1.log flags words
  mkdir -p "$dir"
  export PKG_CONFIG_PATH=$3/lib/pkgconfig
  if ! flags=$(pkg-config --cflags --libs smtpd 2>>"$log"); then
    not_ok "$name" "pkg-config failed" "$log"
  elif [ "$(pkg-config --modversion smtpd)" != "$version" ]; then
    not_ok "$name" "pkg-config --modversion says $(pkg-config --modversion smtpd), not $version"
  elif [ "$tls" = off ] && [[ " $flags " != *" -DSMTPD_NO_TLS "* || "$flags" == *ssl* ]]; then
    not_ok "$name" "TLS off, but the flags are: $flags"
  elif [ "$tls" = on ] && [[ "$flags" != *-lssl* || "$flags" == *SMTPD_NO_TLS* ]]; then
    not_ok "$name" "TLS on, but the flags are: $flags"
  elif ! read -ra words <<<"$flags" ||
    ! (cd "$dir" && run "$log" g++ -std=c++17 -O2 "$src/test/consumer/consumer.cpp" "${words[@]}" -o consumer); then
    not_ok "$name" "g++ failed with: $flags" "$log"
  else
    check_consumer "$name" "$tls" "$dir/consumer" "$log"
  fi
  unset PKG_CONFIG_PATH
}
for tls in on off; do
  pkg_consumer "pkg-config-tls-$tls" "$tls" "$work/make-install-tls-$tls/prefix"
done

# --- 5. the README's g++ line, on the two files copied beside the program --------------------------
both build_readme readme-g++
check_both readme-g++ app

# --- make uninstall: the prefix exactly as found ----------------------------------------------------
# Into an empty DESTDIR (all that install created goes again), and into one laid out like Debian's
# /usr/local with things of its own (which all stay, empty directories too). Two installs in a
# row count as one. The objects of the TLS build above are reused.
uninstall_leaves() { # uninstall_leaves NAME DESTDIR
  local name=$1 dest=$2 log=$work/$1.log args
  args=(DESTDIR="$dest" PREFIX=/usr/local BUILD="$work/make-install-tls-on/build")
  file_list "$dest" >"$work/$name.before"
  if ! build_make_install "$name" on "${args[@]}" || ! build_make_install "$name" on "${args[@]}"; then
    not_ok "$name" "make install failed" "$log"
  elif [ -n "$(find "$dest" -name '*.cpp')" ] || [ ! -f "$dest/usr/local/lib/libsmtpd.a" ]; then
    not_ok "$name" "install put: $(file_list "$dest" | tr '\n' ' ')"
  elif ! grep -qx 'prefix=/usr/local' "$dest/usr/local/lib/pkgconfig/smtpd.pc"; then
    not_ok "$name" "smtpd.pc should say prefix=/usr/local: DESTDIR is only a staging area"
  elif ! run "$log" make -C "$src" --no-print-directory "${args[@]}" uninstall; then
    not_ok "$name" "make uninstall failed" "$log"
  else
    file_list "$dest" >"$work/$name.after"
    same_lists "$name" "$work/$name.before" "$work/$name.after"
  fi
}
mkdir -p "$work/destdir-empty"
uninstall_leaves make-uninstall-empty-destdir "$work/destdir-empty"
used=$work/destdir-used/usr/local
mkdir -p "$used"/{bin,etc,include,sbin,share,src,lib/pkgconfig,lib/cmake/other}
echo 'Name: other' >"$used/lib/pkgconfig/other.pc"
echo '# other' >"$used/lib/cmake/other/otherConfig.cmake"
echo 'other' >"$used/include/other.h"
uninstall_leaves make-uninstall-used-destdir "$work/destdir-used"

# --- the project's own CMake build: its tests under ctest, then cmake --install ------------------
# No CMAKE_BUILD_TYPE, so no optimisation: the quickest compile of the doctest suites.
project=$work/project
if ! run "$project.log" cmake -S "$src" -B "$project" -DCMAKE_INSTALL_PREFIX="$work/cmake-prefix" ||
  ! run "$project.log" cmake --build "$project" -j 2; then
  not_ok cmake-project-build "configure or build failed" "$project.log"
else
  ok cmake-project-build
  if ! run "$project.log" ctest --test-dir "$project" -j 2 --timeout 300 --output-on-failure; then
    not_ok ctest "a test failed" "$project.log"
  elif ! grep -q '^100% tests passed, 0 tests failed out of [1-9]' "$project.log"; then
    not_ok ctest 'no "100% tests passed" line' "$project.log"
  else
    ok "ctest ($(grep -o 'tests failed out of [0-9]*' "$project.log" | tail -n 1 | cut -d' ' -f5) suites)"
  fi
  # The same files as make install, but for CMake's own export (smtpdTargets.cmake and one file
  # per build configuration) and no make-install record.
  if run "$project.log" cmake --install "$project"; then
    file_list "$work/cmake-prefix" | grep -v '/smtpdTargets-[a-z]*\.cmake$' >"$work/cmake-install.files"
    grep -v '/make-install-created-dirs$' "$work/expected-install" >"$work/cmake-install.expected"
    same_lists cmake-install-files "$work/cmake-install.expected" "$work/cmake-install.files"
    name=find_package-cmake-install-tls-on
    build_cmake "$name" on -DSMTPD_FROM=find_package -DCMAKE_PREFIX_PATH="$work/cmake-prefix"
    check_consumer "$name" on "$work/$name/consumer" "$work/$name.log"
    check_versions find_package-cmake-install-versions "$work/cmake-prefix"
    # CMake's smtpd.pc finds its prefix from its own place, so the tree may move.
    mv "$work/cmake-prefix" "$work/cmake-prefix-moved"
    pkg_consumer pkg-config-cmake-install-moved-tls-on on "$work/cmake-prefix-moved"
  else
    not_ok cmake-install "cmake --install failed" "$project.log"
  fi
fi

echo "consumer: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
