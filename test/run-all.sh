#!/usr/bin/env bash
# run-all.sh - runs every test suite, then prints one plain line alone: "N passed, N failed".
#
#   test/run-all.sh [BUILD]        BUILD defaults to build; `make test` builds what it needs
#
# The suites, in order, each with its output left on the terminal:
#   doctest  BUILD/tests                     counted by its "[doctest] test cases: ..." line
#   readme   test/readme_build.sh            the README's hello listing and g++ lines (no BUILD)
#   interop  test/interop*.sh BUILD/mailsink counted by their "NAME: N passed, N failed" lines
# N sums doctest test cases and interop checks. A suite that is missing, crashes, times out
# (SUITE_TIMEOUT seconds, default 1200), prints no summary, counts nothing at all, or exits
# non-zero with no failure counted adds one failure, so the last line never says "0 failed"
# when something went wrong. Exit status 0 only when nothing failed.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
build=${1:-build}
timeout_s=${SUITE_TIMEOUT:-1200}
total_passed=0
total_failed=0
problems=()
log=$(mktemp) || exit 2
trap 'rm -f "$log"' EXIT

# run_suite NAME PATTERN COMMAND... - runs COMMAND (no stdin, under a timeout) with its output
# shown and kept in $log, finds the last line of the log matching the sed PATTERN (which turns
# a summary line into "PASSED FAILED"), and adds the counts to the totals.
run_suite() {
  local name=$1 pattern=$2 status counts passed failed
  shift 2
  printf '\n=== %s: %s\n' "$name" "$*"
  timeout --foreground -k 10 "$timeout_s" "$@" </dev/null 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  # Colours (doctest's, when on a terminal) would hide the summary from the pattern.
  counts=$(sed -e 's/\x1b\[[0-9;]*m//g' -e 's/\r$//' "$log" | sed -n "$pattern" | tail -n 1)
  if [ -z "$counts" ]; then
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
      problems+=("$name: timed out after ${timeout_s}s, no summary")
    else
      problems+=("$name: printed no summary line (exit status $status)")
    fi
    total_failed=$((total_failed + 1))
    return
  fi
  read -r passed failed <<<"$counts"
  if [ $((passed + failed)) -eq 0 ]; then
    problems+=("$name: ran nothing (exit status $status)")
    failed=1
  elif [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
    problems+=("$name: exit status $status although its summary counts no failure")
    failed=1
  elif [ "$failed" -gt 0 ]; then
    problems+=("$name: $passed passed, $failed failed")
  fi
  total_passed=$((total_passed + passed))
  total_failed=$((total_failed + failed))
}

# missing NAME WHAT - a suite that cannot run counts as one failure.
missing() {
  printf '\n=== %s: missing %s\n' "$1" "$2"
  problems+=("$1: missing $2")
  total_failed=$((total_failed + 1))
}

# --- doctest: every test/*_test.cpp, linked into one binary ---
if [ -x "$build/tests" ]; then
  colour=()
  [ -t 1 ] && colour=(--force-colors=true)
  run_suite doctest \
    's/^\[doctest\] test cases: *[0-9]* *| *\([0-9]*\) passed *| *\([0-9]*\) failed.*/\1 \2/p' \
    "$build/tests" "${colour[@]}"
else
  missing doctest "$build/tests (build it with: make $build/tests)"
fi

# --- the fuzz corpus, replayed: every input fuzzing ever found stays a regression test ---
if [ -x "$build/fuzz-replay" ]; then
  run_suite fuzz-replay \
    's/^fuzz-replay: *\([0-9][0-9]*\) passed, *\([0-9][0-9]*\) failed[[:space:]]*$/\1 \2/p' \
    "$build/fuzz-replay" fuzz/corpus
else
  missing fuzz-replay "$build/fuzz-replay (build it with: make $build/fuzz-replay)"
fi

# --- the README's claims: hello.cpp is its listing, and builds with its g++ lines alone ---
run_suite readme-build \
  's/^readme-build: *\([0-9][0-9]*\) passed, *\([0-9][0-9]*\) failed[[:space:]]*$/\1 \2/p' \
  bash test/readme_build.sh

# --- interop: real SMTP clients against the mail catcher, one script per theme ---
# Each test/interop*.sh takes the mailsink path and ends with "NAME: N passed, N failed".
interop_scripts=(test/mailsink_cli.sh test/interop.sh test/interop_tls.sh test/interop_auth.sh test/interop_clients.sh
  test/interop_ext.sh test/interop_proxy.sh test/interop_dns.sh test/interop_client.sh
  test/interop_lmtp.sh test/interop_relay.sh)
if [ ! -x "$build/mailsink" ]; then
  missing interop "$build/mailsink (build it with: make $build/mailsink)"
else
  # An absolute path, since the scripts change directory.
  mailsink="$(cd "$build" && pwd)/mailsink"
  # The Maildir crash-consistency test: SIGKILL mid-delivery, nothing acknowledged is lost.
  run_suite crash-test \
    's/^[a-z-]*: *\([0-9][0-9]*\) passed, *\([0-9][0-9]*\) failed[[:space:]]*$/\1 \2/p' \
    python3 test/crash_test.py "$mailsink"
  for script in "${interop_scripts[@]}"; do
    name=$(basename "$script" .sh)
    if [ ! -f "$script" ]; then
      missing "$name" "$script"
      continue
    fi
    run_suite "$name" \
      's/^[a-z-]*: *\([0-9][0-9]*\) passed, *\([0-9][0-9]*\) failed[[:space:]]*$/\1 \2/p' \
      bash "$script" "$mailsink"
  done
fi
run_suite consumer 's/^consumer: *\([0-9][0-9]*\) passed, *\([0-9][0-9]*\) failed[[:space:]]*$/\1 \2/p' bash test/consumer.sh

echo
for p in "${problems[@]}"; do echo "run-all: $p"; done
echo "$total_passed passed, $total_failed failed"
[ "$total_failed" -eq 0 ]
