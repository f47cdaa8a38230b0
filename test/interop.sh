#!/bin/bash
# test/interop.sh MAILSINK_PATH - drive real SMTP clients (Python smtplib, swaks, curl) against
# mailsink on a free loopback port and check every stored message byte for byte.
#
# Each check prints "ok - NAME" or "FAIL - NAME: reason" (details follow on "#" lines); the last
# line is "interop: N passed, N failed". Exit status 1 if any check failed, 2 on bad usage.
# A missing client is a failure, never a skip. See /work/shared/INTEROP.md for the clients.
set -u

# shellcheck source-path=SCRIPTDIR source=interop_lib.sh
. "$(dirname "$0")/interop_lib.sh"
begin_suite interop "$@"
DETAIL_LINES=20
make_workdir plain

# Clients. A missing one is reported by the check that needs it.
PY=$(find_python)
SWAKS=$(command -v swaks || true)
CURL=$(command -v curl || true)
pick_ports plain
P=${PORT[plain]}

# --- test messages (CRLF line ends) ----------------------------------------------------------
cd "$WORK" || exit 1
# The INTEROP.md probe: all the usual headers, and a body line starting with '.'; swaks gets
# msg-nofinal.eml, and what it puts on the wire (and the server must store) is then exactly
# msg-nofinal.eml + CRLF.
write_probe_message
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
  launch_server plain
  up=0
  deadline=$(( $(millis) + 10000 ))
  while [ "$(millis)" -lt "$deadline" ]; do
    if ! kill -0 "${PID[plain]}" 2>/dev/null; then break; fi
    if timeout 0.5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$P" 2>/dev/null; then up=1; break; fi
    sleep 0.1
  done
  if [ $up = 1 ]; then
    ok "server-start"
  elif ! kill -0 "${PID[plain]}" 2>/dev/null; then
    wait "${PID[plain]}"; rc=$?
    fail "server-start" "server exited with status $rc before accepting connections"
    details plain.err
    PID[plain]=
  else
    fail "server-start" "127.0.0.1:$P did not accept connections within 10 s"
    details plain.err
  fi
  # The banner goes to stderr right after listen(), so it may come just after the port
  # accepts: wait for it until the same deadline.
  if wait_listening plain "$deadline"; then
    ok "listening-banner"
  else
    fail "listening-banner" "stderr has no line 'mailsink: listening on 127.0.0.1:$P'"
    details plain.err
  fi
fi

# --- delivery checking -----------------------------------------------------------------------
# check_stored NAME STORED EXPECTED FOR_MODE: STORED must be exactly one Received field (from our
# server) followed by the bytes of EXPECTED. FOR_MODE "one" = the field must name
# "for <bob@example.test>", "none" = it must not contain "for <" at all.
# Prints the reason and returns 1 on a mismatch.
check_stored() {
  local name=$1 stored=$2 expected=$3 formode=$4 unfolded
  strip_received "$name" "$stored" 1 "$expected" || return 1
  unfolded=$(received_trace "$name")
  if ! LC_ALL=C grep -q '^Received: from localhost\([ ]\|$\)' "$name.received"; then
    echo "mailsink's Received field does not start with 'Received: from localhost'"
    dump "$name.received"; return 1
  fi
  if ! [[ $unfolded =~ [[:space:]]by[[:space:]] ]]; then
    echo "mailsink's Received field has no 'by '"; dump "$name.received"; return 1
  fi
  received_has "$name" " with ESMTP" || return 1
  # "; date" at the end; RFC 5322 allows folding white space between ';' and the date.
  if ! LC_ALL=C grep -Eq ';[[:space:]]+[A-Z][a-z]{2}, [0-9]{1,2} [A-Z][a-z]{2} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} [+-][0-9]{4}( \([A-Za-z0-9+-]+\))?[[:space:]]*$' <<< "$unfolded"; then
    echo "mailsink's Received field does not end with '; <RFC 5322 date>'"
    dump "$name.received"; return 1
  fi
  case $formode in
    one) received_has "$name" "for <bob@example.test>" || return 1 ;;
    none) received_lacks "$name" "for <" \
            "of a several-recipient message contains 'for <'" || return 1 ;;
  esac
  return 0
}

# deliver NAME EXPECTED FOR_MODE CMD...: run the client CMD (bounded by timeout), then require
# exactly one new file in the Maildir and check it against EXPECTED.
deliver() {
  local name=$1 expected=$2 formode=$3
  shift 3
  run_client "$name" plain "$@" && expect_new "$name" plain 1 &&
    verify "$name" check_stored "$name" "$(stored_path "$name" plain)" "$expected" "$formode" &&
    ok "$name"
}

# --- the checks ------------------------------------------------------------------------------
FROM=alice@example.test
RCPT=bob@example.test

# (1) Python smtplib, sendmail() with bytes.
if [ -z "$PY" ]; then
  fail "python-smtplib-plain" "python3 not found (neither /usr/bin/python3 nor python3 on PATH)"
else
  deliver "python-smtplib-plain" msg.eml one "${LIMIT[@]}" "$PY" smtplib-send.py "$P" "$FROM" "$RCPT" msg.eml
fi

# (2) swaks, plain; it gets the probe without its final CRLF (see above).
if [ -z "$SWAKS" ]; then
  fail "swaks-plain" "swaks not found on PATH (apt-get install swaks)"
else
  deliver "swaks-plain" msg-swaks-expected.eml one "${LIMIT[@]}" "$SWAKS" --server "127.0.0.1:$P" \
    --helo localhost --from "$FROM" --to "$RCPT" --data @msg-nofinal.eml
fi

# (3) curl, plain; the URL path gives the EHLO name.
if [ -z "$CURL" ]; then
  fail "curl-plain" "curl not found on PATH"
else
  deliver "curl-plain" msg.eml one "${LIMIT[@]}" "$CURL" -sS --mail-from "$FROM" \
    --mail-rcpt "$RCPT" \
    --url "smtp://127.0.0.1:$P/localhost" -T msg.eml
fi

# (4) smtplib, a body with lines ".", "..", "..." (smtplib stuffs them, the server must unstuff).
if [ -z "$PY" ]; then
  fail "python-smtplib-dot-lines" "python3 not found (neither /usr/bin/python3 nor python3 on PATH)"
else
  deliver "python-smtplib-dot-lines" msg-dots.eml one "${LIMIT[@]}" "$PY" smtplib-send.py "$P" "$FROM" "$RCPT" msg-dots.eml
fi

# (5) smtplib, two messages on one connection: exactly two new files, one per message.
name=python-smtplib-two-messages
if [ -z "$PY" ]; then
  fail "$name" "python3 not found (neither /usr/bin/python3 nor python3 on PATH)"
elif run_client "$name" plain "${LIMIT[@]}" "$PY" smtplib-send.py "$P" "$FROM" "$RCPT" \
       msg-two-1.eml msg-two-2.eml && expect_new "$name" plain 2; then
  # Each message must match exactly one of the two files (they differ in Subject etc.).
  bad=
  for m in 1 2; do
    matched=0
    while IFS= read -r f; do
      if check_stored "$name-$m" "${MAILDIR[plain]}/new/$f" "msg-two-$m.eml" one \
           > "$name-$m.why"; then
        matched=$((matched + 1))
      fi
    done < "$name.new"
    if [ $matched -ne 1 ]; then bad="message $m matched $matched of the 2 stored files"; break; fi
  done
  if [ -z "$bad" ]; then
    ok "$name"
  else
    fail "$name" "$bad"
    # Show why each file failed against this message.
    while IFS= read -r f; do
      echo "# $f vs msg-two-$m.eml:"
      check_stored "$name-x" "${MAILDIR[plain]}/new/$f" "msg-two-$m.eml" one | sed 's/^/#   /'
    done < "$name.new"
  fi
fi

# (6) swaks, three recipients: the Received field must not name any of them.
if [ -z "$SWAKS" ]; then
  fail "swaks-three-recipients" "swaks not found on PATH (apt-get install swaks)"
else
  deliver "swaks-three-recipients" msg-swaks-expected.eml none "${LIMIT[@]}" "$SWAKS" --server "127.0.0.1:$P" \
    --helo localhost --from "$FROM" --to a@x.test,b@x.test,c@x.test --data @msg-nofinal.eml
fi

# --- graceful shutdown -----------------------------------------------------------------------
stop_server plain sigterm-exit-0

finish
