#!/bin/bash
# test/interop.sh MAILSINK_PATH - drive real SMTP clients (Python smtplib, swaks, curl) against
# mailsink on a free loopback port and check every stored message byte for byte.
#
# Each check prints "ok - NAME" or "FAIL - NAME: reason" (details follow on "#" lines); the last
# line is "interop: N passed, N failed". Exit status 1 if any check failed, 2 on bad usage.
# A missing client is a failure, never a skip. See /work/shared/INTEROP.md for the clients.
set -u

if [ $# -lt 1 ] || [ -z "$1" ]; then
  echo "usage: $0 MAILSINK_PATH" >&2
  exit 2
fi
SINK=$1
# The checks run in a temp dir: make a relative path absolute first.
case $SINK in
  /*) ;;
  */*) SINK=$PWD/$SINK ;;
  *) SINK=$(command -v -- "$SINK" || echo "$PWD/$SINK") ;;
esac

PASS=0
FAILS=0
ok() { PASS=$((PASS + 1)); echo "ok - $1"; }
fail() { FAILS=$((FAILS + 1)); echo "FAIL - $1: $2"; }
# note FILE...: show a file's content (or its tail) as "#" lines under a FAIL.
note() { local f; for f in "$@"; do [ -s "$f" ] && tail -n 20 "$f" | sed 's/^/#   /'; done; return 0; }
# dump FILE [BYTE]: show a file's bytes (escapes visible) as "#" lines; with BYTE (1-based),
# only about 100 bytes around it.
dump() {
  local skip=0 count=2048
  if [ -n "${2:-}" ]; then skip=$(( $2 > 48 ? $2 - 49 : 0 )); count=112; fi
  [ -e "$1" ] && od -An -c -j "$skip" -N "$count" "$1" | sed 's/^/#   /'
  return 0
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/interop.XXXXXX") || { echo "interop: mktemp failed" >&2; exit 1; }
MD=$TMP/md
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null
    sleep 0.5
    kill -KILL "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Clients. A missing one is reported by the check that needs it.
PY=
if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; else PY=$(command -v python3 || true); fi
SWAKS=$(command -v swaks || true)
CURL=$(command -v curl || true)
T=(timeout -k 5 30)

# --- a free loopback port -------------------------------------------------------------------
PORT=
if [ -n "$PY" ]; then
  PORT=$("$PY" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' 2>/dev/null)
fi
if [ -z "$PORT" ]; then
  # No python3: try random high ports until one refuses connections.
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 40000))
    if ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2>/dev/null; then PORT=$p; break; fi
  done
fi
if [ -z "$PORT" ]; then echo "interop: could not find a free port" >&2; exit 1; fi

# --- test messages (CRLF line ends) ----------------------------------------------------------
cd "$TMP" || exit 1
# The INTEROP.md probe: all the usual headers, and a body line starting with '.'.
printf 'From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\nSubject: interop probe\r\nDate: Sun, 22 Nov 2026 11:00:00 +0000\r\nMessage-ID: <probe-1@example.test>\r\n\r\nHello from the probe.\r\n.leading dot line\r\nLast line.\r\n' > msg.eml
# swaks always ends DATA with "\r\n.\r\n", so it gets the probe without its final CRLF; what it
# puts on the wire (and the server must store) is then exactly msg-nofinal.eml + CRLF.
head -c -2 msg.eml > msg-nofinal.eml
{ cat msg-nofinal.eml; printf '\r\n'; } > msg-swaks-expected.eml
# Lines that are exactly "." and "..", and more dots, inside the body: dot-stuffing round trip.
printf 'From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\nSubject: dot lines\r\nDate: Sun, 22 Nov 2026 11:01:00 +0000\r\nMessage-ID: <probe-dots@example.test>\r\n\r\nbefore\r\n.\r\n..\r\n...\r\n. space after dot\r\n.\r\nafter\r\n.\r\n' > msg-dots.eml
# Two different messages for one connection.
printf 'From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\nSubject: first of two\r\nDate: Sun, 22 Nov 2026 11:02:00 +0000\r\nMessage-ID: <probe-two-1@example.test>\r\n\r\nFirst message.\r\n' > msg-two-1.eml
printf 'From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\nSubject: second of two\r\nDate: Sun, 22 Nov 2026 11:02:01 +0000\r\nMessage-ID: <probe-two-2@example.test>\r\n\r\nSecond message.\r\n.dot\r\n' > msg-two-2.eml

# Python client: smtplib-send.py PORT FROM TO[,TO...] FILE [FILE...] - one connection, one sendmail()
# per FILE, each with the file's bytes as they are.
cat > smtplib-send.py <<'EOF'
import smtplib, sys
port, sender, rcpts, files = int(sys.argv[1]), sys.argv[2], sys.argv[3].split(','), sys.argv[4:]
with smtplib.SMTP('127.0.0.1', port, local_hostname='localhost', timeout=20) as s:
    for f in files:
        with open(f, 'rb') as fh:
            refused = s.sendmail(sender, rcpts, fh.read())
        if refused:
            sys.exit('recipients refused: %r' % (refused,))
EOF

# --- start the server ------------------------------------------------------------------------
if [ ! -x "$SINK" ]; then
  fail "server-start" "$SINK is not an executable file"
else
  "$SINK" --listen "127.0.0.1:$PORT" --maildir "$MD" > server.out 2> server.err &
  SERVER_PID=$!
  up=0
  deadline=$(( $(date +%s%N) / 1000000 + 10000 ))  # 10 s from now, in ms
  while [ "$(( $(date +%s%N) / 1000000 ))" -lt "$deadline" ]; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
    if timeout 0.5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT" 2>/dev/null; then up=1; break; fi
    sleep 0.1
  done
  if [ $up = 1 ]; then
    ok "server-start"
  elif ! kill -0 "$SERVER_PID" 2>/dev/null; then
    wait "$SERVER_PID"; rc=$?
    fail "server-start" "server exited with status $rc before accepting connections"
    note server.err
    SERVER_PID=
  else
    fail "server-start" "127.0.0.1:$PORT did not accept connections within 10 s"
    note server.err
  fi
  # The banner goes to stderr right after listen(), so it may come just after the port
  # accepts: wait for it until the same deadline.
  banner="mailsink: listening on 127.0.0.1:$PORT"
  while [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null &&
        ! grep -qxF "$banner" server.err &&
        [ "$(( $(date +%s%N) / 1000000 ))" -lt "$deadline" ]; do
    sleep 0.05
  done
  if grep -qxF "$banner" server.err; then
    ok "listening-banner"
  else
    fail "listening-banner" "stderr has no line 'mailsink: listening on 127.0.0.1:$PORT'"
    note server.err
  fi
fi

# --- delivery checking -----------------------------------------------------------------------
# snapshot: the sorted names in md/new (empty if md/new does not exist yet).
# (Maildir file names have no newlines or odd characters, so ls is fine.)
# shellcheck disable=SC2012
snapshot() { ls -1A "$MD/new" 2>/dev/null | LC_ALL=C sort; }

# new_files BEFORE_FILE: names in md/new that are not in BEFORE_FILE, one per line.
new_files() { snapshot | LC_ALL=C comm -13 "$1" -; }

# check_stored NAME STORED EXPECTED FOR_MODE: STORED must be exactly one Received field (from our
# server) followed by the bytes of EXPECTED. FOR_MODE "one" = the field must name
# "for <bob@example.test>", "none" = it must not contain "for <" at all.
# Prints the reason and returns 1 on a mismatch.
check_stored() {
  local name=$1 stored=$2 expected=$3 formode=$4 hlen field unfolded at
  # Byte length of the first field: its first line plus every following line that starts with
  # a space or a tab (awk in the C locale: length() counts bytes, lines keep their CR).
  hlen=$(LC_ALL=C awk '
    NR == 1 { if ($0 !~ /^Received:/) { print -1; done = 1; exit } n = length($0) + 1; next }
    /^[ \t]/ { n += length($0) + 1; next }
    { print n; done = 1; exit }
    END { if (!done && NR > 0 && n) print -2 }' "$stored")
  case $hlen in
    "") echo "stored file is empty"; return 1 ;;
    -1) echo "stored file does not start with a 'Received:' field"; dump "$stored"; return 1 ;;
    -2) echo "stored file holds nothing but a Received field"; dump "$stored"; return 1 ;;
  esac
  field=$TMP/$name.received
  head -c "$hlen" "$stored" > "$field"
  tail -c +"$((hlen + 1))" "$stored" > "$TMP/$name.body"
  if ! cmp "$TMP/$name.body" "$expected" > "$TMP/$name.cmp" 2>&1; then
    echo "stored message (after Received) differs from what the client sent:" \
         "$(sed "s|$TMP/||g" "$TMP/$name.cmp" | head -n 1);" \
         "sizes $(wc -c < "$TMP/$name.body") stored vs $(wc -c < "$expected") sent"
    # Show the bytes around the first difference in both.
    at=$(grep -o 'byte [0-9]*' "$TMP/$name.cmp" | head -n 1 | tr -dc 0-9)
    at=${at:-1}
    echo "# sent, from byte $(( at > 48 ? at - 48 : 1 )):"; dump "$expected" "$at"
    echo "# stored (after the Received field), from byte $(( at > 48 ? at - 48 : 1 )):"
    dump "$TMP/$name.body" "$at"
    echo "# stored Received field:"; dump "$field"
    return 1
  fi
  # Every line of the field must end in CRLF.
  if LC_ALL=C grep -qv $'\r$' "$field"; then
    echo "Received field has a line without CR before LF"; dump "$field"; return 1
  fi
  unfolded=$(LC_ALL=C tr -d '\r' < "$field" | LC_ALL=C sed -e ':a' -e 'N' -e '$!ba' -e 's/\n\([ \t]\)/\1/g')
  if ! LC_ALL=C grep -q '^Received: from localhost\([ ]\|$\)' "$field"; then
    echo "Received field does not start with 'Received: from localhost'"; dump "$field"; return 1
  fi
  if ! [[ $unfolded =~ [[:space:]]by[[:space:]] ]]; then
    echo "Received field has no 'by '"; dump "$field"; return 1
  fi
  if [[ $unfolded != *" with ESMTP"* ]]; then
    echo "Received field has no ' with ESMTP'"; dump "$field"; return 1
  fi
  # "; date" at the end; RFC 5322 allows folding white space between ';' and the date.
  if ! LC_ALL=C grep -Eq ';[[:space:]]+[A-Z][a-z]{2}, [0-9]{1,2} [A-Z][a-z]{2} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} [+-][0-9]{4}( \([A-Za-z0-9+-]+\))?[[:space:]]*$' <<< "$unfolded"; then
    echo "Received field does not end with '; <RFC 5322 date>'"; dump "$field"; return 1
  fi
  case $formode in
    one)
      if [[ $unfolded != *"for <bob@example.test>"* ]]; then
        echo "Received field of a one-recipient message lacks 'for <bob@example.test>'"
        dump "$field"; return 1
      fi ;;
    none)
      if [[ $unfolded == *"for <"* ]]; then
        echo "Received field of a several-recipient message contains 'for <'"
        dump "$field"; return 1
      fi ;;
  esac
  return 0
}

# run_client NAME COUNT CMD...: run the client CMD (bounded by timeout) with its output in
# $TMP/NAME.log, then require exactly COUNT new files in md/new, listed in $TMP/NAME.new.
# Returns 1 after reporting the FAIL when the client failed or the count is wrong.
run_client() {
  local name=$1 count=$2 rc n files=files
  shift 2
  [ "$count" -eq 1 ] && files=file
  snapshot > "$TMP/$name.before"
  "$@" > "$TMP/$name.log" 2>&1; rc=$?
  if [ $rc -ne 0 ]; then
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
      fail "$name" "client timed out after 30 s"
    else
      fail "$name" "client exited with status $rc"
    fi
    note "$TMP/$name.log"
    return 1
  fi
  new_files "$TMP/$name.before" > "$TMP/$name.new"
  n=$(wc -l < "$TMP/$name.new")
  if [ "$n" -ne "$count" ]; then
    fail "$name" "expected exactly $count new $files in md/new, found $n"
    note "$TMP/$name.log"
    return 1
  fi
  return 0
}

# deliver NAME EXPECTED FOR_MODE CMD...: run the client CMD (bounded by timeout), then require
# exactly one new file in md/new and check it against EXPECTED.
deliver() {
  local name=$1 expected=$2 formode=$3 f why
  shift 3
  run_client "$name" 1 "$@" || return
  f=$MD/new/$(cat "$TMP/$name.new")
  if why=$(check_stored "$name" "$f" "$expected" "$formode"); then
    ok "$name"
  else
    fail "$name" "$(head -n 1 <<< "$why")"
    tail -n +2 <<< "$why"
  fi
}

# --- the checks ------------------------------------------------------------------------------
FROM=alice@example.test
RCPT=bob@example.test

# (1) Python smtplib, sendmail() with bytes.
if [ -z "$PY" ]; then
  fail "python-smtplib-plain" "python3 not found (neither /usr/bin/python3 nor python3 on PATH)"
else
  deliver "python-smtplib-plain" msg.eml one "${T[@]}" "$PY" smtplib-send.py "$PORT" "$FROM" "$RCPT" msg.eml
fi

# (2) swaks, plain; it gets the probe without its final CRLF (see above).
if [ -z "$SWAKS" ]; then
  fail "swaks-plain" "swaks not found on PATH (apt-get install swaks)"
else
  deliver "swaks-plain" msg-swaks-expected.eml one "${T[@]}" "$SWAKS" --server "127.0.0.1:$PORT" \
    --helo localhost --from "$FROM" --to "$RCPT" --data @msg-nofinal.eml
fi

# (3) curl, plain; the URL path gives the EHLO name.
if [ -z "$CURL" ]; then
  fail "curl-plain" "curl not found on PATH"
else
  deliver "curl-plain" msg.eml one "${T[@]}" "$CURL" -sS --mail-from "$FROM" --mail-rcpt "$RCPT" \
    --url "smtp://127.0.0.1:$PORT/localhost" -T msg.eml
fi

# (4) smtplib, a body with lines ".", "..", "..." (smtplib stuffs them, the server must unstuff).
if [ -z "$PY" ]; then
  fail "python-smtplib-dot-lines" "python3 not found (neither /usr/bin/python3 nor python3 on PATH)"
else
  deliver "python-smtplib-dot-lines" msg-dots.eml one "${T[@]}" "$PY" smtplib-send.py "$PORT" "$FROM" "$RCPT" msg-dots.eml
fi

# (5) smtplib, two messages on one connection: exactly two new files, one per message.
name=python-smtplib-two-messages
if [ -z "$PY" ]; then
  fail "$name" "python3 not found (neither /usr/bin/python3 nor python3 on PATH)"
elif run_client "$name" 2 "${T[@]}" "$PY" smtplib-send.py "$PORT" "$FROM" "$RCPT" msg-two-1.eml msg-two-2.eml; then
  # Each message must match exactly one of the two files (they differ in Subject etc.).
  bad=
  for m in 1 2; do
    matched=0
    while IFS= read -r f; do
      if check_stored "$name-$m" "$MD/new/$f" "msg-two-$m.eml" one > "$TMP/$name-$m.why"; then
        matched=$((matched + 1))
      fi
    done < "$TMP/$name.new"
    if [ $matched -ne 1 ]; then bad="message $m matched $matched of the 2 stored files"; break; fi
  done
  if [ -z "$bad" ]; then
    ok "$name"
  else
    fail "$name" "$bad"
    # Show why each file failed against this message.
    while IFS= read -r f; do
      echo "# $f vs msg-two-$m.eml:"
      check_stored "$name-x" "$MD/new/$f" "msg-two-$m.eml" one | sed 's/^/#   /'
    done < "$TMP/$name.new"
  fi
fi

# (6) swaks, three recipients: the Received field must not name any of them.
if [ -z "$SWAKS" ]; then
  fail "swaks-three-recipients" "swaks not found on PATH (apt-get install swaks)"
else
  deliver "swaks-three-recipients" msg-swaks-expected.eml none "${T[@]}" "$SWAKS" --server "127.0.0.1:$PORT" \
    --helo localhost --from "$FROM" --to a@x.test,b@x.test,c@x.test --data @msg-nofinal.eml
fi

# --- graceful shutdown -----------------------------------------------------------------------
if [ -z "$SERVER_PID" ]; then
  fail "sigterm-exit-0" "server is not running"
elif ! kill -0 "$SERVER_PID" 2>/dev/null; then
  wait "$SERVER_PID"; rc=$?
  fail "sigterm-exit-0" "server had already exited (status $rc) before SIGTERM"
  note server.err
  SERVER_PID=
else
  kill -TERM "$SERVER_PID"
  gone=0
  for _ in $(seq 100); do  # 10 s at most
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then gone=1; break; fi
    sleep 0.1
  done
  if [ $gone = 1 ]; then
    wait "$SERVER_PID"; rc=$?
    SERVER_PID=
    if [ $rc -eq 0 ]; then
      ok "sigterm-exit-0"
    else
      fail "sigterm-exit-0" "server exited with status $rc after SIGTERM"
      note server.err
    fi
  else
    fail "sigterm-exit-0" "server still running 10 s after SIGTERM"
    note server.err
  fi
fi

if [ "$FAILS" -gt 0 ] && [ -s "$TMP/server.err" ]; then
  echo "# server stderr (last 20 lines):"
  note "$TMP/server.err"
fi
echo "interop: $PASS passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
