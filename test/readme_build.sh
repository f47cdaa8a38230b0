#!/bin/bash
# test/readme_build.sh - the README's promise that the library is two files: example/hello.cpp,
# smtpd.hpp and smtpd.cpp, copied alone into an empty folder, build with each g++ line of the
# README's "Use it in your program" (app.cpp being hello.cpp), warning-free under
# -Wall -Wextra -Wpedantic -Werror; and README's "Hello, mail" listing is hello.cpp itself,
# byte for byte from its first line that is not a // comment (or blank) on.
#
#   test/readme_build.sh          (from anywhere; no build directory needed)
#
# Each check prints "ok - NAME" or "FAIL - NAME: reason" (details follow on "#" lines); the last
# line is "readme-build: N passed, N failed". Exit status 1 if any check failed.
set -u

# shellcheck source-path=SCRIPTDIR source=interop_lib.sh
. "$(dirname "$0")/interop_lib.sh"
SUITE=readme-build
TOP=$(cd "$(dirname "$0")/.." && pwd)
LIMIT=(timeout -k 5 300) # one compile of smtpd.cpp at -O2 on a busy machine
make_workdir
cd "$WORK" || exit 1

README=$TOP/README.md
HELLO=$TOP/example/hello.cpp

# section_block HEADING FENCE: the lines inside the first ```FENCE block after the line
# "## HEADING" of README.md.
section_block() {
  awk -v heading="## $1" -v fence="\`\`\`$2" '
    $0 == heading { section = 1; next }
    section && /^## / { exit }
    section && !inside && $0 == fence { inside = 1; next }
    inside && /^```/ { exit }
    inside { print }' "$README"
}

# --- the listing is the example --------------------------------------------------------------
name=readme-hello-listing
section_block "Hello, mail" cpp > listing.cpp
# hello.cpp without its leading comment: from the first line that is neither // nor blank.
awk 'shown || !/^(\/\/.*)?$/ { shown = 1; print }' "$HELLO" > hello-shown.cpp
if [ ! -s listing.cpp ]; then fail $name "README.md has no \`\`\`cpp block under '## Hello, mail'"
elif ! cmp -s listing.cpp hello-shown.cpp; then
  fail $name "README's hello listing and example/hello.cpp differ"
  diff -u listing.cpp hello-shown.cpp | sed 's/^/#   /'
else ok $name; fi

# --- each README command builds the example, alone in a folder -------------------------------
# The commands, with their trailing "# comment" removed: g++ lines only, as the README gives them.
section_block "Use it in your program" sh | sed -n 's/[[:space:]]*#.*$//; /^g++ /p' > commands
if [ "$(wc -l < commands)" -lt 1 ]; then
  fail readme-build-commands "README.md has no g++ line under '## Use it in your program'"
fi
n=0
while read -r command; do
  n=$((n + 1))
  name=readme-build-$n
  case $command in *-DSMTPD_NO_TLS*) name=$name-notls ;; esac
  # app.cpp and app are the README's names for the user's program: here, hello.
  read -r -a parts <<< "$command"
  words=()
  for word in "${parts[@]}"; do
    case $word in
      app.cpp) words+=(hello.cpp) ;;
      app) words+=(hello) ;;
      *) words+=("$word") ;;
    esac
  done
  if [[ " $command " != *" app.cpp "* ]]; then
    fail $name "the README line does not build app.cpp: $command"; continue
  fi
  dir=$WORK/$name
  mkdir "$dir" && cp "$HELLO" "$TOP/smtpd.hpp" "$TOP/smtpd.cpp" "$dir"/
  echo "# $name: ${words[*]} -Wall -Wextra -Wpedantic -Werror"
  (cd "$dir" && "${LIMIT[@]}" "${words[@]}" -Wall -Wextra -Wpedantic -Werror) > $name.log 2>&1
  rc=$?
  if [ $rc -ne 0 ]; then fail $name "exit status $rc"; details $name.log
  elif [ -s $name.log ]; then fail $name "the compiler said something"; details $name.log
  elif [ ! -x "$dir/hello" ]; then fail $name "no program 'hello' was built"
  else ok $name; fi
done < commands

finish
