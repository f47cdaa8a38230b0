#!/bin/bash
# test/interop_tls.sh MAILSINK_PATH - drive real SMTP clients over TLS (Python smtplib, swaks,
# curl, openssl s_client) against mailsink, with STARTTLS (RFC 3207) and implicit TLS (RFC 8314),
# verifying a throwaway self-signed certificate, and check every stored message byte for byte.
#
# Three mailsinks run on free loopback ports: one offering STARTTLS, one with implicit TLS, and
# one with --tls-required. Each check prints "ok - NAME" or "FAIL - NAME: reason" (details follow
# on "#" lines); the last line is "interop-tls: N passed, N failed". Exit status 1 if any check
# failed, 2 on bad usage. A missing client is a failure, never a skip. See
# /work/shared/INTEROP.md for the clients and their pitfalls.
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

# --- reporting -------------------------------------------------------------------------------
PASS=0
FAILS=0
ok() { PASS=$((PASS + 1)); echo "ok - $1"; }
fail() { FAILS=$((FAILS + 1)); echo "FAIL - $1: $2"; }
# show FILE...: the last 20 lines of each non-empty file, as "#" lines under a FAIL.
show() { local f; for f in "$@"; do [ -s "$f" ] && tail -n 20 "$f" | sed 's/^/#   /'; done; return 0; }
# show_bytes FILE [BYTE]: a file's bytes with escapes visible, as "#" lines; with BYTE (1-based)
# only about 100 bytes around it.
show_bytes() {
  local skip=0 count=2048
  if [ -n "${2:-}" ]; then skip=$(( $2 > 48 ? $2 - 49 : 0 )); count=112; fi
  [ -e "$1" ] && od -An -c -j "$skip" -N "$count" "$1" | sed 's/^/#   /'
  return 0
}
# now_ms: milliseconds since the epoch.
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# --- temp dir and cleanup --------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/interop-tls.XXXXXX") ||
  { echo "interop-tls: mktemp failed" >&2; exit 1; }
# The servers, by role: STARTTLS, implicit TLS, TLS required. Each has a port, a pid and a
# Maildir; a pid is emptied once that server has been reaped.
ROLES=(starttls implicit required)
declare -A PORT_OF PID_OF MD_OF
for role in "${ROLES[@]}"; do PID_OF[$role]=; MD_OF[$role]=$WORK/md-$role; done
cleanup() {
  local role pid
  for role in "${ROLES[@]}"; do
    pid=${PID_OF[$role]}
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null
      sleep 0.5
      kill -KILL "$pid" 2>/dev/null
      wait "$pid" 2>/dev/null
    fi
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- clients (a missing one is reported by each check that needs it) -------------------------
PY=
if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; else PY=$(command -v python3 || true); fi
SWAKS=$(command -v swaks || true)
CURL=$(command -v curl || true)
OPENSSL=$(command -v openssl || true)
T=(timeout -k 5 30)
NO_PY="python3 not found (neither /usr/bin/python3 nor python3 on PATH)"
NO_SWAKS="swaks not found on PATH (apt-get install swaks libnet-ssleay-perl)"
NO_CURL="curl not found on PATH (apt-get install curl)"
NO_OPENSSL="openssl not found on PATH (apt-get install openssl)"

cd "$WORK" || exit 1

# --- three free loopback ports ---------------------------------------------------------------
# Bound all at once, so the three differ.
ports=
if [ -n "$PY" ]; then
  ports=$("$PY" -c 'import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' 2>/dev/null)
fi
if [ -z "$ports" ]; then
  # No python3: random high ports that refuse connections.
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 40000))
    case " $ports " in *" $p "*) continue ;; esac
    if ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2>/dev/null; then ports="$ports $p"; fi
    [ "$(wc -w <<< "$ports")" -eq 3 ] && break
  done
fi
read -r 'PORT_OF[starttls]' 'PORT_OF[implicit]' 'PORT_OF[required]' <<< "$ports"
if [ -z "${PORT_OF[required]}" ]; then echo "interop-tls: could not find 3 free ports" >&2; exit 1; fi

# --- the certificate: self-signed, no CA, SANs for localhost and 127.0.0.1 --------------------
if [ -z "$OPENSSL" ]; then
  fail "make-certificate" "$NO_OPENSSL; every TLS check needs a certificate"
elif "${T[@]}" "$OPENSSL" req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem \
       -days 2 -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
       > make-cert.log 2>&1 && [ -s cert.pem ] && [ -s key.pem ]; then
  ok "make-certificate"
else
  fail "make-certificate" "openssl req -x509 failed"
  show make-cert.log
fi
CERT=$WORK/cert.pem
KEY=$WORK/key.pem

# --- test messages (CRLF line ends) ----------------------------------------------------------
# The INTEROP.md probe: all the usual headers (so no client adds one) and a body line starting
# with '.', which tests dot-stuffing.
printf 'From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\nSubject: interop probe\r\nDate: Sun, 22 Nov 2026 11:00:00 +0000\r\nMessage-ID: <probe-1@example.test>\r\n\r\nHello from the probe.\r\n.leading dot line\r\nLast line.\r\n' > msg.eml
# swaks always ends DATA with "\r\n.\r\n", so it gets the probe without its final CRLF; what it
# puts on the wire (and the server must store) is then the probe itself.
head -c -2 msg.eml > msg-nofinal.eml
# openssl s_client sends what it is given: the probe dot-stuffed by hand (RFC 5321 §4.5.2).
sed 's/^\./../' msg.eml > msg-stuffed.eml

# Python client: smtplib-tls.py MODE PORT CAFILE FROM TO FILE - one message over TLS, the
# certificate verified against CAFILE, with 127.0.0.1 as the name to match (the IP SAN).
# MODE "starttls": smtplib.SMTP + starttls(); MODE "implicit": smtplib.SMTP_SSL.
cat > smtplib-tls.py <<'EOF'
import smtplib, ssl, sys
mode, port, cafile, sender, rcpt, path = sys.argv[1:7]
context = ssl.create_default_context(cafile=cafile)
with open(path, 'rb') as fh:
    message = fh.read()
if mode == 'starttls':
    client = smtplib.SMTP('127.0.0.1', int(port), local_hostname='localhost', timeout=20)
    client.starttls(context=context)  # says EHLO again by itself afterwards
else:
    client = smtplib.SMTP_SSL('127.0.0.1', int(port), local_hostname='localhost', timeout=20,
                              context=context)
with client:
    print('TLS:', client.sock.version(), client.sock.cipher()[0])
    refused = client.sendmail(sender, [rcpt], message)
    if refused:
        sys.exit('recipient refused: %r' % (refused,))
EOF

# --- starting the servers --------------------------------------------------------------------
# start_server ROLE FLAGS...: start mailsink for ROLE on its port with its Maildir and FLAGS;
# its stdout and stderr go to ROLE.out and ROLE.err. Reports "start-ROLE": ok once the startup
# line "mailsink: listening on 127.0.0.1:PORT" appears (it comes right after listen(), so the
# port accepts by then), FAIL when the server exits or 10 s pass first.
start_server() {
  local role=$1 port=${PORT_OF[$1]} pid deadline rc up=0
  shift
  local banner="mailsink: listening on 127.0.0.1:$port"
  if [ ! -x "$SINK" ]; then
    fail "start-$role" "$SINK is not an executable file"
    return 1
  fi
  "$SINK" --listen "127.0.0.1:$port" --maildir "${MD_OF[$role]}" "$@" > "$role.out" 2> "$role.err" &
  pid=$!
  PID_OF[$role]=$pid
  deadline=$(( $(now_ms) + 10000 ))
  while [ "$(now_ms)" -lt "$deadline" ]; do
    if grep -qxF "$banner" "$role.err"; then up=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if [ $up = 1 ]; then
    ok "start-$role"
    return 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid"; rc=$?
    PID_OF[$role]=
    fail "start-$role" "mailsink $* exited with status $rc before listening"
  else
    fail "start-$role" "no line '$banner' on stderr within 10 s"
  fi
  show "$role.err"
  return 1
}

TLS_FLAGS=(--tls-cert "$CERT" --tls-key "$KEY")
start_server starttls "${TLS_FLAGS[@]}"
start_server implicit "${TLS_FLAGS[@]}" --tls-implicit
start_server required "${TLS_FLAGS[@]}" --tls-required

# --- delivery checking -----------------------------------------------------------------------
# list_new ROLE: the sorted file names in that server's Maildir new/ (none if it is missing).
# (Maildir names have no newlines or odd characters, so ls is fine.)
# shellcheck disable=SC2012
list_new() { ls -1A "${MD_OF[$1]}/new" 2>/dev/null | LC_ALL=C sort; }

# verify_stored NAME STORED EXPECTED: STORED must be exactly one Received field followed by the
# bytes of EXPECTED, and that field must say the session was TLS: " with ESMTPS " (RFC 3848)
# and "(using TLSv1.". Prints the reason (first line) and details, and returns 1 on a mismatch.
verify_stored() {
  local name=$1 stored=$2 expected=$3 size at trace
  # The field is the first line plus every following line that starts with a space or a tab;
  # awk prints its size in bytes (C locale: length() counts bytes; each line keeps its CR).
  size=$(LC_ALL=C awk '
    NR == 1 { if ($0 !~ /^Received:/) { print "none"; found = 1; exit } n = length($0) + 1; next }
    /^[ \t]/ { n += length($0) + 1; next }
    { print n; found = 1; exit }
    END { if (!found && NR > 0) print "all" }' "$stored")
  case $size in
    "") echo "the stored file is empty"; return 1 ;;
    none) echo "the stored file does not start with a 'Received:' field"
          show_bytes "$stored"; return 1 ;;
    all) echo "the stored file holds nothing but a Received field"
         show_bytes "$stored"; return 1 ;;
  esac
  head -c "$size" "$stored" > "$name.received"
  tail -c +"$((size + 1))" "$stored" > "$name.body"
  if ! cmp "$name.body" "$expected" > "$name.cmp" 2>&1; then
    echo "the stored message (after Received) differs from what the client sent:" \
         "$(head -n 1 "$name.cmp");" \
         "sizes $(wc -c < "$name.body") stored vs $(wc -c < "$expected") sent"
    at=$(grep -o 'byte [0-9]*' "$name.cmp" | head -n 1 | tr -dc 0-9)
    at=${at:-1}
    echo "# sent, around byte $at:"; show_bytes "$expected" "$at"
    echo "# stored (after the Received field), around byte $at:"; show_bytes "$name.body" "$at"
    echo "# the stored Received field:"; show_bytes "$name.received"
    return 1
  fi
  if LC_ALL=C grep -qv $'\r$' "$name.received"; then
    echo "the Received field has a line without CR before LF"
    show_bytes "$name.received"; return 1
  fi
  # Unfolded: CRs gone, each line break before a space or tab removed.
  trace=$(LC_ALL=C tr -d '\r' < "$name.received" |
          LC_ALL=C sed -e ':a' -e 'N' -e '$!ba' -e 's/\n\([ \t]\)/\1/g')
  if [[ $trace != "Received: from localhost "* ]]; then
    echo "the Received field does not start with 'Received: from localhost ' (the EHLO after TLS)"
    show_bytes "$name.received"; return 1
  fi
  if [[ $trace != *" with ESMTPS "* ]]; then
    echo "the Received field has no ' with ESMTPS '"; show_bytes "$name.received"; return 1
  fi
  if [[ $trace != *"(using TLSv1."* ]]; then
    echo "the Received field has no '(using TLSv1.'"; show_bytes "$name.received"; return 1
  fi
  return 0
}

# run_client NAME ROLE CMD...: run the client CMD (already bounded by timeout) with its output
# in NAME.log; it must succeed and leave exactly one new file in ROLE's Maildir, whose path it
# puts in NAME.stored. Reports the FAIL and returns 1 otherwise.
run_client() {
  local name=$1 role=$2 rc n
  shift 2
  list_new "$role" > "$name.before"
  "$@" > "$name.log" 2>&1; rc=$?
  if [ $rc -ne 0 ]; then
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
      fail "$name" "the client timed out after 30 s"
    else
      fail "$name" "the client exited with status $rc"
    fi
    show "$name.log"
    return 1
  fi
  list_new "$role" | LC_ALL=C comm -13 "$name.before" - > "$name.new"
  n=$(wc -l < "$name.new")
  if [ "$n" -ne 1 ]; then
    fail "$name" "expected exactly 1 new file in the $role server's Maildir new/, found $n"
    show "$name.log"
    return 1
  fi
  echo "${MD_OF[$role]}/new/$(cat "$name.new")" > "$name.stored"
  return 0
}

# expect_delivery NAME ROLE EXPECTED CMD...: run_client, then verify_stored against EXPECTED.
expect_delivery() {
  local name=$1 role=$2 expected=$3 why
  shift 3
  if [ -z "${PID_OF[$role]}" ]; then
    fail "$name" "the $role server is not running"
    return 1
  fi
  run_client "$name" "$role" "$@" || return 1
  if why=$(verify_stored "$name" "$(cat "$name.stored")" "$expected"); then
    ok "$name"
  else
    fail "$name" "$(head -n 1 <<< "$why")"
    tail -n +2 <<< "$why"
    show "$name.log"
    return 1
  fi
}

# --- the checks ------------------------------------------------------------------------------
FROM=alice@example.test
RCPT=bob@example.test
P1=${PORT_OF[starttls]}
P2=${PORT_OF[implicit]}
P3=${PORT_OF[required]}
SWAKS_ARGS=(--helo localhost --from "$FROM" --to "$RCPT" --data @msg-nofinal.eml)
CURL_ARGS=(-sS --mail-from "$FROM" --mail-rcpt "$RCPT" --cacert "$CERT" -T msg.eml)

# (1) Python smtplib, STARTTLS, verifying the IP SAN.
if [ -z "$PY" ]; then
  fail "python-smtplib-starttls" "$NO_PY"
else
  expect_delivery "python-smtplib-starttls" starttls msg.eml \
    "${T[@]}" "$PY" smtplib-tls.py starttls "$P1" "$CERT" "$FROM" "$RCPT" msg.eml
fi

# (2) Python smtplib.SMTP_SSL, implicit TLS.
if [ -z "$PY" ]; then
  fail "python-smtplib-implicit" "$NO_PY"
else
  expect_delivery "python-smtplib-implicit" implicit msg.eml \
    "${T[@]}" "$PY" smtplib-tls.py implicit "$P2" "$CERT" "$FROM" "$RCPT" msg.eml
fi

# (3) swaks, STARTTLS required and verified (swaks exits 29 if verification fails).
if [ -z "$SWAKS" ]; then
  fail "swaks-starttls" "$NO_SWAKS"
else
  expect_delivery "swaks-starttls" starttls msg.eml "${T[@]}" "$SWAKS" \
    --server "127.0.0.1:$P1" --tls --tls-verify --tls-ca-path "$CERT" "${SWAKS_ARGS[@]}"
fi

# (4) swaks --tlsc, implicit TLS, verified.
if [ -z "$SWAKS" ]; then
  fail "swaks-implicit" "$NO_SWAKS"
else
  expect_delivery "swaks-implicit" implicit msg.eml "${T[@]}" "$SWAKS" \
    --server "127.0.0.1:$P2" --tlsc --tls-verify --tls-ca-path "$CERT" "${SWAKS_ARGS[@]}"
fi

# (5) curl, STARTTLS required (--ssl-reqd) and verified; the URL path is the EHLO name.
if [ -z "$CURL" ]; then
  fail "curl-starttls" "$NO_CURL"
else
  expect_delivery "curl-starttls" starttls msg.eml "${T[@]}" "$CURL" "${CURL_ARGS[@]}" \
    --ssl-reqd --url "smtp://127.0.0.1:$P1/localhost"
fi

# (6) curl, smtps:// (implicit TLS), verified.
if [ -z "$CURL" ]; then
  fail "curl-implicit" "$NO_CURL"
else
  expect_delivery "curl-implicit" implicit msg.eml "${T[@]}" "$CURL" "${CURL_ARGS[@]}" \
    --url "smtps://127.0.0.1:$P2/localhost"
fi

# (7) openssl s_client -starttls smtp with a scripted session, verifying the certificate and
# its IP SAN. s_client says its own EHLO before STARTTLS; ours comes after it. -ign_eof keeps it
# reading after our input ends, until the server closes after QUIT, and (like -nocommands) stops
# it from taking the "RCPT" and "QUIT" lines for its R and Q commands. The pauses let each reply
# come before the next command.
# s_client_session: the client's side of the session, on stdout.
s_client_session() {
  local line
  sleep 1
  for line in "EHLO localhost" "MAIL FROM:<$FROM>" "RCPT TO:<$RCPT>" "DATA"; do
    printf '%s\r\n' "$line"
    sleep 0.3
  done
  cat msg-stuffed.eml
  printf '.\r\n'
  sleep 0.5
  printf 'QUIT\r\n'
  sleep 0.5
}
if [ -z "$OPENSSL" ]; then
  fail "openssl-s_client-starttls" "$NO_OPENSSL"
else
  expect_delivery "openssl-s_client-starttls" starttls msg.eml "${T[@]}" "$OPENSSL" s_client \
    -starttls smtp -connect "127.0.0.1:$P1" -CAfile "$CERT" -verify_return_error \
    -verify_ip 127.0.0.1 -ign_eof -nocommands < <(s_client_session)
fi

# (8) The --tls-required server: plain swaks must be refused with 530 and store nothing.
name=swaks-plain-to-tls-required
if [ -z "$SWAKS" ]; then
  fail "$name" "$NO_SWAKS"
elif [ -z "${PID_OF[required]}" ]; then
  fail "$name" "the required server is not running"
else
  list_new required > "$name.before"
  "${T[@]}" "$SWAKS" --server "127.0.0.1:$P3" "${SWAKS_ARGS[@]}" > "$name.log" 2>&1; rc=$?
  list_new required | LC_ALL=C comm -13 "$name.before" - > "$name.new"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    fail "$name" "the client timed out after 30 s"; show "$name.log"
  elif [ $rc -eq 0 ]; then
    fail "$name" "swaks without TLS succeeded (exit 0); the server must refuse mail with 530"
    show "$name.log"
  elif ! grep -Eq '^ *<[-~*]+ 530[ -]' "$name.log"; then
    fail "$name" "swaks failed (exit $rc) but no 530 reply is in its transcript"
    show "$name.log"
  elif [ -s "$name.new" ]; then
    fail "$name" "refused with 530, yet $(wc -l < "$name.new") file(s) were stored"
    show "$name.log"
  else
    ok "$name"
  fi
fi

# (9) The --tls-required server: swaks with STARTTLS delivers.
if [ -z "$SWAKS" ]; then
  fail "swaks-starttls-to-tls-required" "$NO_SWAKS"
else
  expect_delivery "swaks-starttls-to-tls-required" required msg.eml "${T[@]}" "$SWAKS" \
    --server "127.0.0.1:$P3" --tls --tls-verify --tls-ca-path "$CERT" "${SWAKS_ARGS[@]}"
fi

# --- mailsink's own TLS setup errors ---------------------------------------------------------
# (10) A TLS flag without --tls-cert and --tls-key: usage error, exit 2, naming the flag.
name=tls-flag-without-cert-exit-2
if [ ! -x "$SINK" ]; then
  fail "$name" "$SINK is not an executable file"
else
  "${T[@]}" "$SINK" --listen 127.0.0.1:0 --tls-implicit > "$name.log" 2>&1; rc=$?
  if [ $rc -ne 2 ]; then
    fail "$name" "mailsink --tls-implicit (no certificate) exited with status $rc, not 2"
    show "$name.log"
  elif ! grep -q -- '--tls-implicit' "$name.log"; then
    fail "$name" "the usage error does not name --tls-implicit"
    show "$name.log"
  else
    ok "$name"
  fi
fi

# (11) A file that is not a certificate: a clear error and exit 1, before accepting clients.
name=bad-certificate-exit-1
if [ ! -x "$SINK" ]; then
  fail "$name" "$SINK is not an executable file"
else
  echo "not a certificate" > bad-cert.pem
  timeout -k 2 10 "$SINK" --listen 127.0.0.1:0 --tls-cert bad-cert.pem --tls-key "$KEY" \
    > "$name.log" 2>&1; rc=$?
  if [ $rc -ne 1 ]; then
    fail "$name" "mailsink with a bad certificate exited with status $rc, not 1"
    show "$name.log"
  elif grep -q 'listening on' "$name.log"; then
    fail "$name" "mailsink listened before it rejected the certificate"
    show "$name.log"
  elif ! grep -q '^mailsink: ..*' "$name.log"; then
    fail "$name" "mailsink exited 1 without an error message"
  else
    ok "$name"
  fi
fi

# --- graceful shutdown -----------------------------------------------------------------------
# stop_server ROLE: SIGTERM, then it must exit with status 0 within 10 s ("sigterm-ROLE").
stop_server() {
  local role=$1 pid=${PID_OF[$1]} rc gone=0
  local name="sigterm-$role-exit-0"
  if [ -z "$pid" ]; then
    fail "$name" "the $role server is not running"
    return
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid"; rc=$?
    PID_OF[$role]=
    fail "$name" "the server had already exited (status $rc) before SIGTERM"
    show "$role.err"
    return
  fi
  kill -TERM "$pid"
  for _ in $(seq 100); do
    if ! kill -0 "$pid" 2>/dev/null; then gone=1; break; fi
    sleep 0.1
  done
  if [ $gone = 0 ]; then
    fail "$name" "the server is still running 10 s after SIGTERM"
    show "$role.err"
    return
  fi
  wait "$pid"; rc=$?
  PID_OF[$role]=
  if [ $rc -eq 0 ]; then
    ok "$name"
  else
    fail "$name" "the server exited with status $rc after SIGTERM"
    show "$role.err"
  fi
}
for role in "${ROLES[@]}"; do stop_server "$role"; done

if [ "$FAILS" -gt 0 ]; then
  for role in "${ROLES[@]}"; do
    if [ -s "$role.err" ]; then
      echo "# $role server stderr (last 20 lines):"
      show "$role.err"
    fi
  done
fi
echo "interop-tls: $PASS passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
