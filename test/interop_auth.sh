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

# shellcheck source-path=SCRIPTDIR source=interop_lib.sh
. "$(dirname "$0")/interop_lib.sh"
begin_suite interop-auth "$@"
make_workdir tls insecure

# --- clients: each check that needs a missing one fails, naming the package ------------------
find_clients
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

pick_ports tls insecure
PA=${PORT[tls]}
PB=${PORT[insecure]}
make_certificate "the tls server needs a certificate"

# --- the users file of the insecure server: comments, a blank line, a CRLF line ---------------
{
  printf '# interop_auth.sh users: USER:PASSWORD, split at the first colon\n'
  printf '\n'
  printf 'alice:wonderland\n'
  printf '# bob has colons in his password\n'
  printf 'bob:secret:with:colons\r\n'
} > users.txt
chmod 600 users.txt

# --- the message (msg.eml, and msg-nofinal.eml for swaks) -----------------------------------
write_probe_message

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
start_server tls --tls-cert "$CERT" --tls-key "$KEY" --auth alice:wonderland --auth-required
start_server insecure --auth-file "$WORK/users.txt" --auth-insecure --auth-required

# --- checking deliveries ---------------------------------------------------------------------
# check_stored NAME FILE WITH TLS: FILE must be one Received field, then the bytes of msg.eml.
# The field must start "Received: from localhost ", say " with WITH " and, when TLS is "tls",
# "(using TLSv1."; when TLS is "clear" it must not mention TLS. On a mismatch prints the reason
# (first line) and details, and returns 1.
check_stored() {
  local name=$1 with=$3 tls=$4
  strip_received "$name" "$2" 1 msg.eml || return 1
  received_starts "$name" "Received: from localhost " || return 1
  received_has "$name" " with $with " || return 1
  case $tls in
    tls) received_has "$name" "(using TLSv1." ;;
    clear) received_lacks "$name" "(using " "mentions TLS on a session in clear" ;;
  esac
}

# deliver NAME SERVER USER WITH TLS CLIENT...: run CLIENT (bounded by timeout) with its output in
# NAME.log. It must succeed and add exactly one file to SERVER's Maildir, which must pass
# check_stored, and the summary line mailsink printed for that file must say " auth=USER ".
deliver() {
  local name=$1 server=$2 user=$3 with=$4 tls=$5 stored
  shift 5
  server_running "$name" "$server" && run_client "$name" "$server" "$@" &&
    expect_new "$name" "$server" 1 || return 1
  stored=$(stored_path "$name" "$server")
  verify "$name" check_stored "$name" "$stored" "$with" "$tls" &&
    check_summary "$name" "$server" "$stored" "$user" && ok "$name"
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
  need "$name" "$PY" "$NO_PY" || continue
  deliver "$name" tls alice ESMTPSA tls \
    "${SMTPLIB_TLS[@]}" alice wonderland "$mechanism" "$FROM" "$RCPT" msg.eml
done

# (2) swaks, STARTTLS verified, then --auth with each mechanism.
for mechanism in PLAIN LOGIN CRAM-MD5; do
  name="swaks-starttls-auth-$mechanism"
  need "$name" "$SWAKS" "$NO_SWAKS" || continue
  need_swaks_cram "$name" "$mechanism" || continue
  deliver "$name" tls alice ESMTPSA tls \
    "${SWAKS_A[@]}" --auth "$mechanism" --auth-user alice --auth-password wonderland
done

# (3) curl, STARTTLS required and verified, --user: the mechanism curl chooses, then each one
# forced with --login-options.
need "curl-starttls-auth" "$CURL" "$NO_CURL" &&
  deliver "curl-starttls-auth" tls alice ESMTPSA tls "${CURL_A[@]}" --user alice:wonderland
for mechanism in PLAIN LOGIN CRAM-MD5; do
  name="curl-starttls-auth-$mechanism"
  need "$name" "$CURL" "$NO_CURL" || continue
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
need "$name" "$PY" "$NO_PY" &&
  deliver "$name" insecure alice ESMTPA clear \
    "${SMTPLIB_CLEAR[@]}" alice wonderland PLAIN "$FROM" "$RCPT" msg.eml

# (6) swaks PLAIN in clear, alice.
name=swaks-clear-auth-PLAIN
need "$name" "$SWAKS" "$NO_SWAKS" &&
  deliver "$name" insecure alice ESMTPA clear \
    "${SWAKS_B[@]}" --auth PLAIN --auth-user alice --auth-password wonderland

# (7) bob, whose password "secret:with:colons" holds colons (the file line is split at the
# first one), with each client: smtplib PLAIN, swaks LOGIN and CRAM-MD5, curl (which splits
# --user at the first colon too) with LOGIN.
name=smtplib-clear-auth-PLAIN-bob-colon-password
need "$name" "$PY" "$NO_PY" &&
  deliver "$name" insecure bob ESMTPA clear \
    "${SMTPLIB_CLEAR[@]}" bob secret:with:colons PLAIN "$FROM" "$RCPT" msg.eml
for mechanism in LOGIN CRAM-MD5; do
  name="swaks-clear-auth-$mechanism-bob-colon-password"
  need "$name" "$SWAKS" "$NO_SWAKS" || continue
  need_swaks_cram "$name" "$mechanism" || continue
  deliver "$name" insecure bob ESMTPA clear \
    "${SWAKS_B[@]}" --auth "$mechanism" --auth-user bob --auth-password secret:with:colons
done
name=curl-clear-auth-LOGIN-bob-colon-password
need "$name" "$CURL" "$NO_CURL" &&
  deliver "$name" insecure bob ESMTPA clear \
    "${CURL_B[@]}" --user bob:secret:with:colons --login-options AUTH=LOGIN

# --- refusals --------------------------------------------------------------------------------
# swaks prints each server line as "<- " ("<~ " under TLS, "<** " or "<~* " for an error).
# (8) A wrong password: 535 5.7.8 and nothing stored (on each server).
name=swaks-starttls-wrong-password-535
need "$name" "$SWAKS" "$NO_SWAKS" &&
  refused "$name" tls '^ *<[-~*]+ 535 5\.7\.8 ' \
    "${SWAKS_A[@]}" --auth PLAIN --auth-user alice --auth-password wrong
name=swaks-clear-wrong-password-535
need "$name" "$SWAKS" "$NO_SWAKS" &&
  refused "$name" insecure '^ *<[-~*]+ 535 5\.7\.8 ' \
    "${SWAKS_B[@]}" --auth LOGIN --auth-user bob --auth-password secret

# (9) No AUTH on an --auth-required server: MAIL gets 530 5.7.0 and nothing is stored.
name=swaks-starttls-no-auth-530
need "$name" "$SWAKS" "$NO_SWAKS" &&
  refused "$name" tls '^ *<[-~*]+ 530 5\.7\.0 Authentication required' "${SWAKS_A[@]}"

# (10) What EHLO offers. The tls server (no --auth-insecure): before STARTTLS only CRAM-MD5,
# AUTH PLAIN in clear is refused with 538 5.7.11 even with the right password, and after
# STARTTLS all three. The insecure server: all three in clear.
# ehlo_says NAME LOG KEY WANT WHAT: check NAME: the value of LOG's line "KEY=..." (ehlo-auth.py)
# is WANT, or starts with it when WANT ends in a space; else WHAT is what the value says.
ehlo_says() {
  local name=$1 log=$2 want=$4 what=$5 got
  got=$(sed -n "s/^$3=//p" "$log")
  if [ "$got" = "$want" ] || { [[ $want == *" " ]] && [[ $got == "$want"* ]]; }; then
    ok "$name"
  else
    fail "$name" "$what '${got:-(no answer)}', not '$want'"
    details "$log"
  fi
}
name=ehlo-auth-tls-server
if [ -z "$PY" ]; then
  fail "$name-before-starttls" "$NO_PY"
  fail "$name-plain-in-clear-538" "$NO_PY"
  fail "$name-after-starttls" "$NO_PY"
elif [ -z "${PID[tls]}" ]; then
  fail "$name" "the tls server is not running"
else
  "${LIMIT[@]}" "$PY" ehlo-auth.py "$PA" "$CERT" alice wonderland > "$name.log" 2>&1
  ehlo_says "$name-before-starttls" "$name.log" before "AUTH CRAM-MD5" "EHLO in clear offers"
  ehlo_says "$name-plain-in-clear-538" "$name.log" plain-before-tls "538 5.7.11 " \
    "AUTH PLAIN in clear was answered"
  ehlo_says "$name-after-starttls" "$name.log" after "AUTH PLAIN LOGIN CRAM-MD5" \
    "EHLO after STARTTLS offers"
fi
name=ehlo-auth-insecure-server
if [ -z "$PY" ]; then
  fail "$name" "$NO_PY"
elif [ -z "${PID[insecure]}" ]; then
  fail "$name" "the insecure server is not running"
else
  "${LIMIT[@]}" "$PY" ehlo-auth.py "$PB" - bob unused > "$name.log" 2>&1
  ehlo_says "$name" "$name.log" before "AUTH PLAIN LOGIN CRAM-MD5" "EHLO in clear offers"
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
sink_exits auth-required-without-user-exit-2 2 '--auth-required' \
  "the usage error does not name --auth-required" --listen 127.0.0.1:0 --auth-required

# (13) A malformed --auth-file line: status 1 before listening, naming the file and the line.
printf '# users\nalice:wonderland\n\nno-colon-here\n' > bad-users.txt
sink_exits auth-file-bad-line-exit-1 1 'bad-users\.txt.*line 4' \
  "the error does not name bad-users.txt and line 4" --listen 127.0.0.1:0 --auth-file bad-users.txt

# --- graceful shutdown -----------------------------------------------------------------------
for server in "${SERVERS[@]}"; do stop_server "$server"; done

finish
