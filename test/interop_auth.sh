#!/bin/bash
# test/interop_auth.sh MAILSINK_PATH - real SMTP clients (Python smtplib, swaks, curl, and a raw
# Python socket) authenticating with AUTH (RFC 4954: PLAIN, LOGIN, CRAM-MD5) to mailsink, and a
# byte-for-byte check of every message they deliver.
#
# Two mailsinks run on free loopback ports:
#   tls       STARTTLS with a throwaway self-signed certificate, --auth alice:wonderland and
#             --auth-required: PLAIN and LOGIN only after STARTTLS, CRAM-MD5 also before it.
#   insecure  no TLS, --auth-file (alice, and bob whose password holds ':'), --auth-insecure and
#             --auth-required: every mechanism in clear, as on a developer's loopback.
# Every stored message must be one Received field followed by exactly the bytes the client sent,
# and that field must say " with ESMTPSA " (TLS and AUTH, RFC 3848) on the tls server and
# " with ESMTPA " on the insecure one. The negative checks: a wrong password (535 5.7.8), no
# AUTH at all (530 5.7.0), which mechanisms EHLO offers before and after STARTTLS, PLAIN in
# clear refused with 538, and three failures closing the session with 421 4.7.0.
#
# Each check prints "ok - NAME" or "FAIL - NAME: reason" (details follow on "#" lines); the last
# line is "interop-auth: N passed, N failed". Exit status 1 if any check failed, 2 on bad usage.
# A missing client is a failure, never a skip. See /work/shared/INTEROP.md for the clients.
set -u

if [ $# -lt 1 ] || [ -z "$1" ]; then
  echo "usage: $0 MAILSINK_PATH" >&2
  exit 2
fi
SINK=$1
# Everything runs inside a temp dir, so a relative path is made absolute now.
case $SINK in
  /*) ;;
  */*) SINK=$PWD/$SINK ;;
  *) SINK=$(command -v -- "$SINK" || echo "$PWD/$SINK") ;;
esac

# --- reporting -------------------------------------------------------------------------------
PASSED=0
FAILED=0
ok() { PASSED=$((PASSED + 1)); echo "ok - $1"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL - $1: $2"; }
# details FILE...: the last 25 lines of each non-empty FILE, as "#" lines under a FAIL.
details() {
  local file
  for file in "$@"; do [ -s "$file" ] && tail -n 25 "$file" | sed 's/^/#   /'; done
  return 0
}
# dump FILE: a file's first 2 KiB with CR, LF and the like shown as escapes, as "#" lines.
dump() { [ -e "$1" ] && od -An -c -N 2048 "$1" | sed 's/^/#   /'; return 0; }
# millis: milliseconds since the epoch.
millis() { echo $(( $(date +%s%N) / 1000000 )); }

# --- temp dir, servers and cleanup -----------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/interop-auth.XXXXXX") ||
  { echo "interop-auth: mktemp failed" >&2; exit 1; }
SERVERS=(tls insecure)
declare -A PORT PID MAILDIR
for server in "${SERVERS[@]}"; do PID[$server]=; MAILDIR[$server]=$WORK/maildir-$server; done
cleanup() {
  local server pid
  for server in "${SERVERS[@]}"; do
    pid=${PID[$server]}
    [ -n "$pid" ] || continue
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null
      sleep 0.5
      kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- clients: each check that needs a missing one fails, naming the package ------------------
PY=
if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; else PY=$(command -v python3 || true); fi
SWAKS=$(command -v swaks || true)
CURL=$(command -v curl || true)
OPENSSL=$(command -v openssl || true)
LIMIT=(timeout -k 5 30)
NO_PY="python3 not found (apt-get install python3)"
NO_SWAKS="swaks not found on PATH (apt-get install swaks libnet-ssleay-perl)"
NO_CURL="curl not found on PATH (apt-get install curl)"
NO_OPENSSL="openssl not found on PATH (apt-get install openssl)"
# swaks computes CRAM-MD5 with Digest::MD5 (Debian: libperl5.36, which perl depends on); its
# --support output says whether it can.
SWAKS_CRAM=
if [ -n "$SWAKS" ] &&
   "${LIMIT[@]}" "$SWAKS" --support 2>&1 | grep -q 'AUTH CRAM-MD5 supported'; then
  SWAKS_CRAM=yes
fi
NO_SWAKS_CRAM="swaks --support does not list AUTH CRAM-MD5: Perl's Digest::MD5 is missing"
NO_SWAKS_CRAM+=" (apt-get install perl libperl5.36)"
# need_swaks_cram NAME MECHANISM: false, after failing NAME, when MECHANISM is CRAM-MD5 and swaks
# cannot do it.
need_swaks_cram() {
  if [ "$2" = CRAM-MD5 ] && [ -z "$SWAKS_CRAM" ]; then
    fail "$1" "$NO_SWAKS_CRAM"
    return 1
  fi
  return 0
}

cd "$WORK" || exit 1

# --- two free loopback ports, bound at the same time so that they differ ---------------------
ports=
if [ -n "$PY" ]; then
  ports=$("$PY" -c 'import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' 2>/dev/null)
fi
if [ -z "$ports" ]; then
  # Without python3: random high ports on which nothing answers.
  for _ in $(seq 100); do
    candidate=$((20000 + RANDOM % 40000))
    case " $ports " in *" $candidate "*) continue ;; esac
    timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$candidate" 2>/dev/null ||
      ports="$ports $candidate"
    [ "$(wc -w <<< "$ports")" -eq 2 ] && break
  done
fi
read -r 'PORT[tls]' 'PORT[insecure]' <<< "$ports"
if [ -z "${PORT[insecure]}" ]; then echo "interop-auth: could not find 2 free ports" >&2; exit 1; fi
PA=${PORT[tls]}
PB=${PORT[insecure]}

# --- the certificate: self-signed, with SANs for localhost and 127.0.0.1 so clients verify it --
if [ -z "$OPENSSL" ]; then
  fail "make-certificate" "$NO_OPENSSL; the tls server needs a certificate"
elif "${LIMIT[@]}" "$OPENSSL" req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem \
       -days 2 -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
       > make-certificate.log 2>&1 && [ -s cert.pem ] && [ -s key.pem ]; then
  ok "make-certificate"
else
  fail "make-certificate" "openssl req -x509 failed"
  details make-certificate.log
fi
CERT=$WORK/cert.pem
KEY=$WORK/key.pem

# --- the users file of the insecure server: comments, a blank line, a CRLF line ---------------
{
  printf '# interop_auth.sh users: USER:PASSWORD, split at the first colon\n'
  printf '\n'
  printf 'alice:wonderland\n'
  printf '# bob has colons in his password\n'
  printf 'bob:secret:with:colons\r\n'
} > users.txt
chmod 600 users.txt

# --- the message: CRLF line ends, all the usual headers, a body line starting with '.' ---------
printf '%s\r\n' 'From: Alice <alice@example.test>' 'To: Bob <bob@example.test>' \
  'Subject: interop probe' 'Date: Sun, 22 Nov 2026 11:00:00 +0000' \
  'Message-ID: <probe-1@example.test>' '' 'Hello from the probe.' '.leading dot line' \
  'Last line.' > msg.eml
# swaks ends DATA with "\r\n.\r\n" itself: given the message without its last CRLF, it sends
# exactly msg.eml (INTEROP.md, "the extra blank line").
head -c -2 msg.eml > msg-nofinal.eml

# --- Python helpers --------------------------------------------------------------------------
# smtplib-auth.py MODE PORT CAFILE USER PASSWORD MECHANISM FROM TO FILE - log in with exactly
# MECHANISM, then send FILE. MODE "starttls" verifies the certificate against CAFILE first;
# MODE "plain" stays in clear. login() picks from the mechanisms EHLO offered, so the offer is
# narrowed to MECHANISM after checking that the server made it.
cat > smtplib-auth.py <<'EOF'
import smtplib, ssl, sys
mode, port, cafile, user, password, mechanism, sender, rcpt, path = sys.argv[1:10]
with open(path, 'rb') as fh:
    message = fh.read()
with smtplib.SMTP('127.0.0.1', int(port), local_hostname='localhost', timeout=20) as client:
    client.set_debuglevel(1)
    if mode == 'starttls':
        client.starttls(context=ssl.create_default_context(cafile=cafile))
        print('TLS:', client.sock.version())
    client.ehlo_or_helo_if_needed()
    offered = client.esmtp_features.get('auth', '').split()
    print('AUTH offered:', ' '.join(offered))
    if mechanism not in offered:
        sys.exit('%s is not among the offered mechanisms %r' % (mechanism, offered))
    client.esmtp_features['auth'] = mechanism
    code, text = client.login(user, password)
    print('login:', code, text.decode('ascii', 'replace'))
    if code != 235:
        sys.exit('login answered %d, not 235' % code)
    refused = client.sendmail(sender, [rcpt], message)
    if refused:
        sys.exit('recipient refused: %r' % (refused,))
EOF

# ehlo-auth.py PORT CAFILE USER PASSWORD - what EHLO offers, as "before=..." (and, when CAFILE
# is not "-", "plain-before-tls=CODE TEXT" for AUTH PLAIN with good credentials in clear, then
# STARTTLS and "after=..."). A value is the text of the AUTH lines of the EHLO reply, joined
# with "|", or "(none)".
cat > ehlo-auth.py <<'EOF'
import base64, smtplib, ssl, sys
port, cafile, user, password = sys.argv[1:5]
def auth_lines(client):
    lines = client.ehlo_resp.decode('ascii', 'replace').splitlines()
    found = [l for l in lines if l.upper() == 'AUTH' or l.upper().startswith(('AUTH ', 'AUTH='))]
    return '|'.join(found) if found else '(none)'
with smtplib.SMTP('127.0.0.1', int(port), local_hostname='localhost', timeout=20) as client:
    client.set_debuglevel(1)
    client.ehlo()
    print('before=' + auth_lines(client), flush=True)
    if cafile != '-':
        plain = base64.b64encode(('\0%s\0%s' % (user, password)).encode()).decode()
        code, text = client.docmd('AUTH', 'PLAIN ' + plain)
        print('plain-before-tls=%d %s' % (code, text.decode('ascii', 'replace')), flush=True)
        client.starttls(context=ssl.create_default_context(cafile=cafile))
        client.ehlo()
        print('after=' + auth_lines(client), flush=True)
EOF

# auth-flood.py PORT USER - a raw session in clear: EHLO, then AUTH PLAIN with a wrong password
# three times. Each must be answered 535 5.7.8, no sooner than half a second (the failure
# delay); then, with nothing more sent, the server must say 421 4.7.0 and close. Prints the
# dialogue; exits non-zero with the reason otherwise.
cat > auth-flood.py <<'EOF'
import base64, socket, sys, time
port, user = int(sys.argv[1]), sys.argv[2]
sock = socket.create_connection(('127.0.0.1', port), timeout=20)
incoming = sock.makefile('rb')
def reply():
    lines = []
    while True:
        raw = incoming.readline()
        if not raw:
            return lines
        line = raw.decode('ascii', 'replace').rstrip('\r\n')
        print('S: ' + line, flush=True)
        lines.append(line)
        if len(line) < 4 or line[3] != '-':
            return lines
def send(line):
    print('C: ' + line, flush=True)
    sock.sendall(line.encode('ascii') + b'\r\n')
def last(lines):
    return lines[-1] if lines else '(connection closed)'
greeting = reply()
if not last(greeting).startswith('220 '):
    sys.exit('greeting: ' + last(greeting))
send('EHLO localhost')
if not last(reply()).startswith('250 '):
    sys.exit('EHLO was not accepted')
wrong = base64.b64encode(('\0%s\0not-the-password' % user).encode()).decode()
for attempt in (1, 2, 3):
    started = time.monotonic()
    send('AUTH PLAIN ' + wrong)
    answer = last(reply())
    took = time.monotonic() - started
    print('# attempt %d answered after %.2f s' % (attempt, took), flush=True)
    if not answer.startswith('535 5.7.8 '):
        sys.exit('attempt %d: reply %r, not 535 5.7.8' % (attempt, answer))
    if took < 0.5:
        sys.exit('attempt %d: 535 came after %.2f s, without the failure delay' % (attempt, took))
fourth = last(reply())
if not fourth.startswith('421 4.7.0 '):
    sys.exit('the 4th reply is %r, not 421 4.7.0' % fourth)
try:
    rest = incoming.read()
except socket.timeout:
    sys.exit('the connection is still open 20 s after the 421')
if rest:
    sys.exit('more bytes after the 421: %r' % rest[:200])
print('# closed by the server after the 421')
EOF

# --- starting the servers --------------------------------------------------------------------
# start_server SERVER FLAGS...: run mailsink on SERVER's port and Maildir with FLAGS, stdout in
# SERVER.out, stderr in SERVER.err. "start-SERVER" passes once stderr has the startup line
# "mailsink: listening on 127.0.0.1:PORT" (printed after listen(), so the port accepts) and
# fails if the server exits or 10 s pass first.
start_server() {
  local server=$1 pid deadline rc listening=0
  shift
  local line="mailsink: listening on 127.0.0.1:${PORT[$server]}"
  if [ ! -x "$SINK" ]; then
    fail "start-$server" "$SINK is not an executable file"
    return 1
  fi
  "$SINK" --listen "127.0.0.1:${PORT[$server]}" --maildir "${MAILDIR[$server]}" "$@" \
    > "$server.out" 2> "$server.err" &
  pid=$!
  PID[$server]=$pid
  deadline=$(( $(millis) + 10000 ))
  while [ "$(millis)" -lt "$deadline" ]; do
    if grep -qxF "$line" "$server.err"; then listening=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if [ $listening = 1 ]; then
    ok "start-$server"
    return 0
  fi
  if kill -0 "$pid" 2>/dev/null; then
    fail "start-$server" "no line '$line' on stderr within 10 s"
  else
    wait "$pid"; rc=$?
    PID[$server]=
    fail "start-$server" "mailsink exited with status $rc before listening"
  fi
  details "$server.err"
  return 1
}

start_server tls --tls-cert "$CERT" --tls-key "$KEY" --auth alice:wonderland --auth-required
start_server insecure --auth-file "$WORK/users.txt" --auth-insecure --auth-required

# --- checking deliveries ---------------------------------------------------------------------
# new_files SERVER: the sorted names in SERVER's Maildir new/ (Maildir names are plain, so ls is
# safe here).
# shellcheck disable=SC2012
new_files() { ls -1A "${MAILDIR[$1]}/new" 2>/dev/null | LC_ALL=C sort; }

# check_stored NAME FILE EXPECTED WITH TLS: FILE must be one Received field, then the bytes of
# EXPECTED. The field must start "Received: from localhost ", say " with WITH " and, when TLS
# is "tls", "(using TLSv1."; when TLS is "clear" it must not mention TLS. On a mismatch prints
# the reason (first line) and details, and returns 1.
check_stored() {
  local name=$1 file=$2 expected=$3 with=$4 tls=$5 length field
  # The field: the first line and each following line that starts with a space or a tab. awk
  # (C locale, so length() counts bytes, each line keeping its CR) prints its length in bytes.
  length=$(LC_ALL=C awk '
    NR == 1 && !/^Received:/ { print "missing"; done = 1; exit }
    NR == 1 { total = length($0) + 1; next }
    /^[ \t]/ { total += length($0) + 1; next }
    { print total; done = 1; exit }
    END { if (!done && NR > 0) print "only" }' "$file")
  case $length in
    "") echo "the stored file is empty"; return 1 ;;
    missing) echo "the stored file does not begin with a Received field"; dump "$file"; return 1 ;;
    only) echo "the stored file is a Received field and nothing else"; dump "$file"; return 1 ;;
  esac
  head -c "$length" "$file" > "$name.received"
  tail -c +"$((length + 1))" "$file" > "$name.body"
  if ! cmp "$name.body" "$expected" > "$name.cmp" 2>&1; then
    echo "after the Received field the stored message differs from the one sent:" \
         "$(head -n 1 "$name.cmp");" \
         "$(wc -c < "$name.body") bytes stored, $(wc -c < "$expected") sent"
    echo "# stored:"; dump "$file"
    return 1
  fi
  if LC_ALL=C grep -qv $'\r$' "$name.received"; then
    echo "a line of the Received field does not end in CRLF"; dump "$name.received"; return 1
  fi
  # The field unfolded: CRs dropped, each line break before a space or a tab removed.
  field=$(LC_ALL=C tr -d '\r' < "$name.received" |
          LC_ALL=C sed -e ':a' -e 'N' -e '$!ba' -e 's/\n\([ \t]\)/\1/g')
  if [[ $field != "Received: from localhost "* ]]; then
    echo "the Received field does not begin 'Received: from localhost '"
    dump "$name.received"; return 1
  fi
  if [[ $field != *" with $with "* ]]; then
    echo "the Received field does not say ' with $with '"; dump "$name.received"; return 1
  fi
  if [ "$tls" = tls ] && [[ $field != *"(using TLSv1."* ]]; then
    echo "the Received field does not say '(using TLSv1.'"; dump "$name.received"; return 1
  fi
  if [ "$tls" = clear ] && [[ $field == *"(using "* ]]; then
    echo "the Received field mentions TLS on a session in clear"; dump "$name.received"; return 1
  fi
  return 0
}

# deliver NAME SERVER USER WITH TLS CLIENT...: run CLIENT (bounded by timeout) with its output in
# NAME.log. It must succeed and add exactly one file to SERVER's Maildir, which must pass
# check_stored against msg.eml, and the summary line mailsink printed for that file must say
# " auth=USER ".
deliver() {
  local name=$1 server=$2 user=$3 with=$4 tls=$5 rc count stored why
  shift 5
  if [ -z "${PID[$server]}" ]; then
    fail "$name" "the $server server is not running"
    return 1
  fi
  new_files "$server" > "$name.before"
  "$@" > "$name.log" 2>&1; rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    fail "$name" "the client did not finish within 30 s"; details "$name.log"; return 1
  elif [ $rc -ne 0 ]; then
    fail "$name" "the client exited with status $rc"; details "$name.log"; return 1
  fi
  new_files "$server" | LC_ALL=C comm -13 "$name.before" - > "$name.new"
  count=$(wc -l < "$name.new")
  if [ "$count" -ne 1 ]; then
    fail "$name" "$count new files in the $server server's Maildir, not 1"
    details "$name.log"; return 1
  fi
  stored=${MAILDIR[$server]}/new/$(cat "$name.new")
  if ! why=$(check_stored "$name" "$stored" msg.eml "$with" "$tls"); then
    fail "$name" "$(head -n 1 <<< "$why")"
    tail -n +2 <<< "$why"
    details "$name.log"
    return 1
  fi
  if ! grep -F -- " $stored" "$server.out" | grep -qF " auth=$user <"; then
    fail "$name" "mailsink's summary line for the message does not say 'auth=$user'"
    grep -F -- " $stored" "$server.out" | sed 's/^/#   /'
    return 1
  fi
  ok "$name"
}

# refused NAME SERVER PATTERN CLIENT...: CLIENT must fail (non-zero exit, within the timeout),
# its transcript must have a line matching the grep -E PATTERN, and SERVER's Maildir must get no
# new file.
refused() {
  local name=$1 server=$2 pattern=$3 rc
  shift 3
  if [ -z "${PID[$server]}" ]; then
    fail "$name" "the $server server is not running"
    return 1
  fi
  new_files "$server" > "$name.before"
  "$@" > "$name.log" 2>&1; rc=$?
  new_files "$server" | LC_ALL=C comm -13 "$name.before" - > "$name.new"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    fail "$name" "the client did not finish within 30 s"; details "$name.log"
  elif [ $rc -eq 0 ]; then
    fail "$name" "the client succeeded (exit 0); the server should have refused it"
    details "$name.log"
  elif ! grep -Eq -- "$pattern" "$name.log"; then
    fail "$name" "the client failed (exit $rc), but its transcript has no line matching /$pattern/"
    details "$name.log"
  elif [ -s "$name.new" ]; then
    fail "$name" "the client was refused, yet $(wc -l < "$name.new") file(s) were stored"
    details "$name.log"
  else
    ok "$name"
  fi
}

FROM=alice@example.test
RCPT=bob@example.test
# The clients' fixed arguments.
SMTPLIB_TLS=("${LIMIT[@]}" "$PY" smtplib-auth.py starttls "$PA" "$CERT")
SMTPLIB_CLEAR=("${LIMIT[@]}" "$PY" smtplib-auth.py plain "$PB" -)
SWAKS_A=("${LIMIT[@]}" "$SWAKS" --server "127.0.0.1:$PA" --tls --tls-verify --tls-ca-path "$CERT"
         --helo localhost --from "$FROM" --to "$RCPT" --data @msg-nofinal.eml)
SWAKS_B=("${LIMIT[@]}" "$SWAKS" --server "127.0.0.1:$PB"
         --helo localhost --from "$FROM" --to "$RCPT" --data @msg-nofinal.eml)
CURL_A=("${LIMIT[@]}" "$CURL" -sS -v --mail-from "$FROM" --mail-rcpt "$RCPT" -T msg.eml
        --ssl-reqd --cacert "$CERT" --url "smtp://127.0.0.1:$PA/localhost")
CURL_B=("${LIMIT[@]}" "$CURL" -sS -v --mail-from "$FROM" --mail-rcpt "$RCPT" -T msg.eml
        --url "smtp://127.0.0.1:$PB/localhost")

# --- the tls server: deliveries after STARTTLS and AUTH ---------------------------------------
# (1) Python smtplib, STARTTLS verified, then login() with each mechanism in turn.
for mechanism in PLAIN LOGIN CRAM-MD5; do
  name="smtplib-starttls-auth-$mechanism"
  if [ -z "$PY" ]; then fail "$name" "$NO_PY"; continue; fi
  deliver "$name" tls alice ESMTPSA tls \
    "${SMTPLIB_TLS[@]}" alice wonderland "$mechanism" "$FROM" "$RCPT" msg.eml
done

# (2) swaks, STARTTLS verified, then --auth with each mechanism.
for mechanism in PLAIN LOGIN CRAM-MD5; do
  name="swaks-starttls-auth-$mechanism"
  if [ -z "$SWAKS" ]; then fail "$name" "$NO_SWAKS"; continue; fi
  need_swaks_cram "$name" "$mechanism" || continue
  deliver "$name" tls alice ESMTPSA tls \
    "${SWAKS_A[@]}" --auth "$mechanism" --auth-user alice --auth-password wonderland
done

# (3) curl, STARTTLS required and verified, --user: the mechanism curl chooses, then each one
# forced with --login-options.
if [ -z "$CURL" ]; then
  fail "curl-starttls-auth" "$NO_CURL"
else
  deliver "curl-starttls-auth" tls alice ESMTPSA tls "${CURL_A[@]}" --user alice:wonderland
fi
for mechanism in PLAIN LOGIN CRAM-MD5; do
  name="curl-starttls-auth-$mechanism"
  if [ -z "$CURL" ]; then fail "$name" "$NO_CURL"; continue; fi
  deliver "$name" tls alice ESMTPSA tls \
    "${CURL_A[@]}" --user alice:wonderland --login-options "AUTH=$mechanism"
done

# (4) CRAM-MD5 never shows the password, so the tls server offers it before STARTTLS too:
# swaks in clear with CRAM-MD5 delivers, and the Received field says ESMTPA (no S).
name=swaks-clear-auth-CRAM-MD5-to-tls-server
if [ -z "$SWAKS" ]; then
  fail "$name" "$NO_SWAKS"
elif [ -z "$SWAKS_CRAM" ]; then
  fail "$name" "$NO_SWAKS_CRAM"
else
  deliver "$name" tls alice ESMTPA clear "${LIMIT[@]}" "$SWAKS" --server "127.0.0.1:$PA" \
    --helo localhost --from "$FROM" --to "$RCPT" --data @msg-nofinal.eml \
    --auth CRAM-MD5 --auth-user alice --auth-password wonderland
fi

# --- the insecure server: AUTH in clear, users from --auth-file ------------------------------
# (5) smtplib PLAIN in clear, alice.
name=smtplib-clear-auth-PLAIN
if [ -z "$PY" ]; then
  fail "$name" "$NO_PY"
else
  deliver "$name" insecure alice ESMTPA clear \
    "${SMTPLIB_CLEAR[@]}" alice wonderland PLAIN "$FROM" "$RCPT" msg.eml
fi

# (6) swaks PLAIN in clear, alice.
name=swaks-clear-auth-PLAIN
if [ -z "$SWAKS" ]; then
  fail "$name" "$NO_SWAKS"
else
  deliver "$name" insecure alice ESMTPA clear \
    "${SWAKS_B[@]}" --auth PLAIN --auth-user alice --auth-password wonderland
fi

# (7) bob, whose password "secret:with:colons" holds colons (the file line is split at the
# first one), with each client: smtplib PLAIN, swaks LOGIN and CRAM-MD5, curl (which splits
# --user at the first colon too) with LOGIN.
name=smtplib-clear-auth-PLAIN-bob-colon-password
if [ -z "$PY" ]; then
  fail "$name" "$NO_PY"
else
  deliver "$name" insecure bob ESMTPA clear \
    "${SMTPLIB_CLEAR[@]}" bob secret:with:colons PLAIN "$FROM" "$RCPT" msg.eml
fi
for mechanism in LOGIN CRAM-MD5; do
  name="swaks-clear-auth-$mechanism-bob-colon-password"
  if [ -z "$SWAKS" ]; then fail "$name" "$NO_SWAKS"; continue; fi
  need_swaks_cram "$name" "$mechanism" || continue
  deliver "$name" insecure bob ESMTPA clear \
    "${SWAKS_B[@]}" --auth "$mechanism" --auth-user bob --auth-password secret:with:colons
done
name=curl-clear-auth-LOGIN-bob-colon-password
if [ -z "$CURL" ]; then
  fail "$name" "$NO_CURL"
else
  deliver "$name" insecure bob ESMTPA clear \
    "${CURL_B[@]}" --user bob:secret:with:colons --login-options AUTH=LOGIN
fi

# --- refusals --------------------------------------------------------------------------------
# swaks prints each server line as "<- " ("<~ " under TLS, "<** " or "<~* " for an error).
# (8) A wrong password: 535 5.7.8 and nothing stored (on each server).
name=swaks-starttls-wrong-password-535
if [ -z "$SWAKS" ]; then
  fail "$name" "$NO_SWAKS"
else
  refused "$name" tls '^ *<[-~*]+ 535 5\.7\.8 ' \
    "${SWAKS_A[@]}" --auth PLAIN --auth-user alice --auth-password wrong
fi
name=swaks-clear-wrong-password-535
if [ -z "$SWAKS" ]; then
  fail "$name" "$NO_SWAKS"
else
  refused "$name" insecure '^ *<[-~*]+ 535 5\.7\.8 ' \
    "${SWAKS_B[@]}" --auth LOGIN --auth-user bob --auth-password secret
fi

# (9) No AUTH on an --auth-required server: MAIL gets 530 5.7.0 and nothing is stored.
name=swaks-starttls-no-auth-530
if [ -z "$SWAKS" ]; then
  fail "$name" "$NO_SWAKS"
else
  refused "$name" tls '^ *<[-~*]+ 530 5\.7\.0 Authentication required' "${SWAKS_A[@]}"
fi

# (10) What EHLO offers. The tls server (no --auth-insecure): before STARTTLS only CRAM-MD5,
# AUTH PLAIN in clear is refused with 538 5.7.11 even with the right password, and after
# STARTTLS all three. The insecure server: all three in clear.
name=ehlo-auth-tls-server
if [ -z "$PY" ]; then
  fail "$name-before-starttls" "$NO_PY"
  fail "$name-plain-in-clear-538" "$NO_PY"
  fail "$name-after-starttls" "$NO_PY"
elif [ -z "${PID[tls]}" ]; then
  fail "$name" "the tls server is not running"
else
  "${LIMIT[@]}" "$PY" ehlo-auth.py "$PA" "$CERT" alice wonderland > "$name.log" 2>&1
  before=$(sed -n 's/^before=//p' "$name.log")
  plain=$(sed -n 's/^plain-before-tls=//p' "$name.log")
  after=$(sed -n 's/^after=//p' "$name.log")
  if [ "$before" = "AUTH CRAM-MD5" ]; then
    ok "$name-before-starttls"
  else
    fail "$name-before-starttls" \
      "EHLO in clear offers '${before:-(no answer)}', not 'AUTH CRAM-MD5'"
    details "$name.log"
  fi
  if [[ $plain == "538 5.7.11 "* ]]; then
    ok "$name-plain-in-clear-538"
  else
    fail "$name-plain-in-clear-538" \
      "AUTH PLAIN in clear was answered '${plain:-(nothing)}', not 538 5.7.11"
    details "$name.log"
  fi
  if [ "$after" = "AUTH PLAIN LOGIN CRAM-MD5" ]; then
    ok "$name-after-starttls"
  else
    fail "$name-after-starttls" \
      "EHLO after STARTTLS offers '${after:-(no answer)}', not 'AUTH PLAIN LOGIN CRAM-MD5'"
    details "$name.log"
  fi
fi
name=ehlo-auth-insecure-server
if [ -z "$PY" ]; then
  fail "$name" "$NO_PY"
elif [ -z "${PID[insecure]}" ]; then
  fail "$name" "the insecure server is not running"
else
  "${LIMIT[@]}" "$PY" ehlo-auth.py "$PB" - bob unused > "$name.log" 2>&1
  before=$(sed -n 's/^before=//p' "$name.log")
  if [ "$before" = "AUTH PLAIN LOGIN CRAM-MD5" ]; then
    ok "$name"
  else
    fail "$name" "EHLO in clear offers '${before:-(no answer)}', not 'AUTH PLAIN LOGIN CRAM-MD5'"
    details "$name.log"
  fi
fi

# (11) Three wrong passwords in one session: 535 three times, then 421 4.7.0 and the close.
name=three-failures-421-and-close
if [ -z "$PY" ]; then
  fail "$name" "$NO_PY"
elif [ -z "${PID[insecure]}" ]; then
  fail "$name" "the insecure server is not running"
else
  "${LIMIT[@]}" "$PY" auth-flood.py "$PB" alice > "$name.log" 2>&1; rc=$?
  if [ $rc -eq 0 ]; then
    ok "$name"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    fail "$name" "the script did not finish within 30 s"; details "$name.log"
  else
    fail "$name" "$(tail -n 1 "$name.log")"; details "$name.log"
  fi
fi

# --- mailsink's own AUTH flag errors ---------------------------------------------------------
# (12) --auth-required without a user: usage error, status 2, naming the flag.
name=auth-required-without-user-exit-2
if [ ! -x "$SINK" ]; then
  fail "$name" "$SINK is not an executable file"
else
  "${LIMIT[@]}" "$SINK" --listen 127.0.0.1:0 --auth-required > "$name.log" 2>&1; rc=$?
  if [ $rc -ne 2 ]; then
    fail "$name" "mailsink --auth-required (no user) exited with status $rc, not 2"
    details "$name.log"
  elif ! grep -q -- '--auth-required' "$name.log"; then
    fail "$name" "the usage error does not name --auth-required"; details "$name.log"
  else
    ok "$name"
  fi
fi

# (13) A malformed --auth-file line: status 1 before listening, naming the file and the line.
name=auth-file-bad-line-exit-1
if [ ! -x "$SINK" ]; then
  fail "$name" "$SINK is not an executable file"
else
  printf '# users\nalice:wonderland\n\nno-colon-here\n' > bad-users.txt
  "${LIMIT[@]}" "$SINK" --listen 127.0.0.1:0 --auth-file bad-users.txt > "$name.log" 2>&1; rc=$?
  if [ $rc -ne 1 ]; then
    fail "$name" "mailsink with a malformed --auth-file exited with status $rc, not 1"
    details "$name.log"
  elif grep -q 'listening on' "$name.log"; then
    fail "$name" "mailsink listened before it rejected the file"; details "$name.log"
  elif ! grep -q 'bad-users\.txt.*line 4' "$name.log"; then
    fail "$name" "the error does not name bad-users.txt and line 4"; details "$name.log"
  else
    ok "$name"
  fi
fi

# --- graceful shutdown -----------------------------------------------------------------------
# stop_server SERVER: after SIGTERM it must exit with status 0 within 10 s.
stop_server() {
  local server=$1 pid=${PID[$1]} rc exited=0
  local name="sigterm-$server-exit-0"
  if [ -z "$pid" ]; then
    fail "$name" "the $server server is not running"
    return
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid"; rc=$?
    PID[$server]=
    fail "$name" "the server had exited (status $rc) before SIGTERM"
    details "$server.err"
    return
  fi
  kill -TERM "$pid"
  for _ in $(seq 100); do
    if ! kill -0 "$pid" 2>/dev/null; then exited=1; break; fi
    sleep 0.1
  done
  if [ $exited = 0 ]; then
    fail "$name" "the server is still running 10 s after SIGTERM"
    details "$server.err"
    return
  fi
  wait "$pid"; rc=$?
  PID[$server]=
  if [ $rc -eq 0 ]; then
    ok "$name"
  else
    fail "$name" "the server exited with status $rc after SIGTERM"
    details "$server.err"
  fi
}
for server in "${SERVERS[@]}"; do stop_server "$server"; done

if [ "$FAILED" -gt 0 ]; then
  for server in "${SERVERS[@]}"; do
    if [ -s "$server.err" ]; then
      echo "# $server server stderr (last 25 lines):"
      details "$server.err"
    fi
  done
fi
echo "interop-auth: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
