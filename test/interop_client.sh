#!/usr/bin/env bash
# interop_client.sh - smtpd::Client (issue 16) against real servers, through build/client_driver
# (test/client_driver.cpp, built beside mailsink):
#
#   test/interop_client.sh MAILSINK_PATH
#
# - A throwaway Postfix instance (Debian's postfix, config and queue in a temp dir, "postfix
#   -c DIR") whose smtpd listens on a free loopback port and relays everything to a mailsink
#   (--json --verbose --dsn) that stores what arrives: plain (SendMail and the step-by-step
#   Client), LF-only content made CRLF, STARTTLS verified against the test certificate (and a
#   wrong name refused), a pipelined group with one recipient refused by
#   smtpd_recipient_restrictions (550 5.1.1), SendMail refusing on it, DSN parameters (which
#   Postfix passes on: the relay's transcript shows them), SMTPUTF8, BDAT (Postfix's disconnect
#   log line counts the verbs), BINARYMIME refused before sending (Postfix lacks it), and a
#   second listener without PIPELINING, where the client must go lock-step (Postfix logs
#   "improper command pipelining" otherwise). Content is compared byte for byte after the two
#   Received fields (Postfix's, mailsink's). Needs root (postfix start).
# - aiosmtpd (Debian python3-aiosmtpd, test/interop_client_aio.py): AUTH PLAIN and LOGIN, a
#   wrong password, CRAM-MD5 (not offered there: refused before sending), and LMTP with a reply
#   per recipient (one 452 among them), byte for byte.
#
# Each check prints "ok - NAME" or "FAIL - NAME: reason"; the last line is
# "interop-client: N passed, N failed". Exit status 1 if any check failed, 2 on bad usage.
set -u

AIO_HELPER=$(cd "$(dirname "$0")" && pwd)/interop_client_aio.py
# shellcheck source-path=SCRIPTDIR source=interop_lib.sh
. "$(dirname "$0")/interop_lib.sh"
begin_suite interop-client "$@"
DRIVER=$(dirname "$SINK")/client_driver

make_workdir relay
PFX=
PFX_STARTED=
AIO_PIDS=()
# cleanup_hook: the Postfix instance (by its config directory, never by name), then the
# aiosmtpd servers this script started (by pid).
cleanup_hook() {
  local pid
  pfx_cleanup
  for pid in "${AIO_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
}
if ! PFX=$(mktemp -d "${TMPDIR:-/tmp}/interop-client-postfix.XXXXXX") || ! chmod 755 "$PFX"; then
  echo "interop-client: mktemp failed" >&2
  exit 1
fi

find_clients
pfx_find

cd "$WORK" || exit 1
make_certificate "Postfix's STARTTLS needs one"
write_probe_message
printf 'Subject: lf only\n\n.one dot\n..two dots\n.\nbare\rCR\nno final newline' > lf.eml
printf '%s\r\n' 'Subject: lf only' '' '.one dot' '..two dots' '.' 'bare' 'CR' \
  'no final newline' > lf-expected.eml
start_server relay --json --verbose --dsn
pick_ports pfx lockstep aio lmtp

# drive NAME ARGS... - the driver under $LIMIT, the probe message on stdin unless ARGS give
# another with "< FILE" done by the caller; output in NAME.log. Returns the driver's status.
drive() {
  local name=$1
  shift
  "${LIMIT[@]}" "$DRIVER" "$@" > "$name.log" 2>&1
}

# has NAME PATTERN WHY - NAME.log has a line matching the grep -E PATTERN.
has() {
  grep -Eq -- "$2" "$1.log" && return 0
  echo "$3"
  return 1
}

# wait_relayed NAME COUNT - COUNT new files in the relay's Maildir since NAME.before, within
# 30 s (Postfix's queue is flushed every 2 s meanwhile).
wait_relayed() {
  local name=$1 count=$2 deadline flush
  deadline=$(( $(millis) + 30000 ))
  flush=$(( $(millis) + 2000 ))
  while :; do
    list_new "$name" relay
    [ "$(wc -l < "$name.new")" -ge "$count" ] && return 0
    [ "$(millis)" -lt "$deadline" ] || break
    if [ "$(millis)" -ge "$flush" ]; then
      timeout -k 5 20 "$POSTQUEUE" -c "$PFX/etc" -f > /dev/null 2>&1
      flush=$(( $(millis) + 2000 ))
    fi
    sleep 0.1
  done
  echo "$(wc -l < "$name.new") of $count message(s) reached the relay mailsink within 30 s"
  timeout -k 5 20 "$POSTQUEUE" -c "$PFX/etc" -p 2>&1 | sed 's/^/#   /'
  return 1
}

# relayed NAME COUNT EXPECTED - the driver succeeded (checked by the caller), COUNT messages
# reached the relay, the first holding exactly EXPECTED after Postfix's and mailsink's Received.
relayed() {
  local name=$1 count=$2 expected=$3
  verify "$name" wait_relayed "$name" "$count" &&
    verify "$name" strip_received "$name" "$(stored_path "$name" relay)" 2 "$expected"
}

# pfx_log_has NAME PATTERN WHY - the instance's maillog has a line matching PATTERN.
pfx_log_has() {
  grep -Eq -- "$2" "$PFX/maillog" && return 0
  echo "$3"
  grep -E 'smtpd\[' "$PFX/maillog" | tail -n 5 | sed 's/^/#   /'
  return 1
}

# postfix_check NAME PORT INPUT ARGS... - snapshot the relay's Maildir, then run the driver
# against Postfix's smtpd on PORT with INPUT on stdin; its exit status in NAME.status.
postfix_check() {
  local name=$1 port=$2 input=$3 check
  shift 3
  maildir_list relay > "$name.before"
  drive "$name" "127.0.0.1:$port" "$@" < "$input"
  echo "$?" > "$name.status"
}

# --- the Postfix instance: smtpd on loopback, relaying to the relay mailsink --------------------
PFX_CHECKS=(postfix-plain-sendmail postfix-lf-normalised postfix-starttls-verified
  postfix-starttls-wrong-name postfix-pipelined-one-refused postfix-sendmail-refused-rcpt
  postfix-dsn-parameters postfix-smtputf8 postfix-bdat postfix-binarymime-not-offered
  postfix-lockstep-without-pipelining)
# pfx_listen - the instance's own smtpd on 127.0.0.1:PORT[pfx], and one without PIPELINING on
# 127.0.0.1:PORT[lockstep]; a 550 for refused@example.test; the test certificate for STARTTLS.
pfx_listen() {
  cp "$CERT" "$KEY" "$PFX/" && chmod 644 "$PFX/cert.pem" && chmod 600 "$PFX/key.pem" &&
    "$POSTCONF" -c "$PFX/etc" -e "mynetworks = 127.0.0.0/8" \
      "smtpd_recipient_restrictions = check_recipient_access inline:{ { refused@example.test = 550 5.1.1 Refused by the interop test } }, permit_mynetworks, reject" \
      "smtpd_tls_cert_file = $PFX/cert.pem" "smtpd_tls_key_file = $PFX/key.pem" \
      "smtpd_tls_security_level = may" "smtputf8_enable = yes" \
      "local_header_rewrite_clients =" &&
    "$POSTCONF" -c "$PFX/etc" -M \
      "127.0.0.1:${PORT[pfx]}/inet=127.0.0.1:${PORT[pfx]} inet n - n - - smtpd" &&
    "$POSTCONF" -c "$PFX/etc" -M \
      "127.0.0.1:${PORT[lockstep]}/inet=127.0.0.1:${PORT[lockstep]} inet n - n - - smtpd -o smtpd_discard_ehlo_keywords=pipelining"
}

R=(alice@example.test bob@example.test)
if [ -n "$PFX_MISSING" ]; then
  for name in "${PFX_CHECKS[@]}"; do fail "$name" "$PFX_MISSING"; done
elif ! pfx_setup "${PORT[relay]}" interop-client > postfix-setup.log 2>&1 ||
     ! pfx_listen >> postfix-setup.log 2>&1; then
  for name in "${PFX_CHECKS[@]}"; do fail "$name" "setting up the Postfix instance failed"; done
  details postfix-setup.log
elif ! pfx_launch postfix-start.log "${PORT[pfx]}"; then
  for name in "${PFX_CHECKS[@]}"; do fail "$name" "the Postfix instance did not start"; done
  details postfix-start.log "$PFX/maillog"
else
  P=${PORT[pfx]}

  # SendMail, the one call: 250 from Postfix, and the message byte for byte at the relay.
  name=postfix-plain-sendmail
  postfix_check "$name" "$P" msg.eml "${R[@]}" --sendmail
  verify "$name" has "$name" '^final: 250 2\.0\.0 Ok: queued' "SendMail did not end in 250" &&
    relayed "$name" 1 msg.eml && ok "$name"

  # LF-only content with dot lines and a bare CR: CRLF on the wire, dot-stuffed, unstuffed by
  # Postfix, exactly the CRLF form at the relay (RFC 5321 §2.3.8, §4.5.2).
  name=postfix-lf-normalised
  postfix_check "$name" "$P" lf.eml "${R[@]}"
  verify "$name" has "$name" '^data 0: 250 ' "the step-by-step send did not get 250" &&
    relayed "$name" 1 lf-expected.eml && ok "$name"

  # STARTTLS verified against the test certificate: SNI and the DNS SAN "localhost" (RFC 3207,
  # RFC 6125).
  name=postfix-starttls-verified
  postfix_check "$name" "$P" msg.eml "${R[@]}" --starttls --ca "$CERT" --name localhost
  verify "$name" has "$name" '^tls: 1$' "the client did not end up in TLS" &&
    verify "$name" has "$name" '^data 0: 250 ' "the message was not accepted" &&
    relayed "$name" 1 msg.eml &&
    verify "$name" pfx_log_has "$name" 'disconnect from .* starttls=1 ' \
      "Postfix's disconnect line does not count a STARTTLS" && ok "$name"

  name=postfix-starttls-wrong-name
  postfix_check "$name" "$P" msg.eml "${R[@]}" --starttls --ca "$CERT" --name wrong.example
  verify "$name" has "$name" '^io-error: TLS handshake .*certificate verification failed' \
    "a certificate for another name was not refused" && ok "$name"

  # A pipelined group (RFC 2920): MAIL, three RCPTs (the second refused: 550 5.1.1 from
  # smtpd_recipient_restrictions) and DATA; the replies in order, two recipients delivered.
  name=postfix-pipelined-one-refused
  postfix_check "$name" "$P" msg.eml alice@example.test bob@example.test refused@example.test \
    carol@example.test
  verify "$name" has "$name" '^ehlo: PIPELINING' "Postfix did not offer PIPELINING" &&
    verify "$name" has "$name" '^rcpt 0: 250 .*\(delivered\)' "rcpt 0 was not delivered" &&
    verify "$name" has "$name" '^rcpt 1: 550 5\.1\.1 .*Refused by the interop test$' \
      "rcpt 1 was not refused with Postfix's 550" &&
    verify "$name" has "$name" '^rcpt 2: 250 .*\(delivered\)' "rcpt 2 was not delivered" &&
    relayed "$name" 1 msg.eml &&
    verify "$name" pfx_log_has "$name" 'disconnect from .* rcpt=2/3 data=1 ' \
      "Postfix's disconnect line does not say rcpt=2/3 data=1" && ok "$name"

  name=postfix-sendmail-refused-rcpt
  postfix_check "$name" "$P" msg.eml alice@example.test bob@example.test refused@example.test \
    --sendmail
  if [ "$(cat "$name.status")" != 1 ]; then
    fail "$name" "the driver exited with $(cat "$name.status"), not 1 (a ClientError)"
    details "$name.log"
  elif verify "$name" has "$name" '^refused: RCPT: 550 5\.1\.1 ' "no RCPT refusal was thrown"; then
    sleep 1
    timeout -k 5 20 "$POSTQUEUE" -c "$PFX/etc" -f > /dev/null 2>&1
    sleep 1
    list_new "$name" relay
    if [ -s "$name.new" ]; then
      fail "$name" "a message reached the relay though SendMail refused to send it"
    elif verify "$name" pfx_log_has "$name" 'disconnect from .* rcpt=1/2 rset=1 quit=1' \
           "Postfix's disconnect line does not show the data withheld (rcpt=1/2 rset=1 quit=1)"; then
      ok "$name"
    fi
  fi

  # DSN (RFC 3461): RET, ENVID (xtext), NOTIFY and ORCPT, passed on by Postfix to the relay,
  # whose transcript shows them on the wire.
  name=postfix-dsn-parameters
  postfix_check "$name" "$P" msg.eml "${R[@]}" --ret hdrs --envid 'client+env=1' \
    --notify success,failure --orcpt original@example.test
  if verify "$name" has "$name" '^data 0: 250 ' "the message was not accepted" &&
     relayed "$name" 1 msg.eml; then
    if ! grep -Eq ' C: MAIL FROM:<alice@example.test> .*RET=HDRS' "$WORK/relay.err" ||
       ! grep -Eq ' C: MAIL FROM:<alice@example.test> .*ENVID=client\+2Benv\+3D1' "$WORK/relay.err" ||
       ! grep -Eq ' C: RCPT TO:<bob@example.test> .*NOTIFY=SUCCESS,FAILURE' "$WORK/relay.err" ||
       ! grep -Eq ' C: RCPT TO:<bob@example.test> .*ORCPT=rfc822;original@example.test' \
         "$WORK/relay.err"; then
      fail "$name" "the relay did not get RET=HDRS, ENVID=client+2Benv+3D1, NOTIFY=SUCCESS,FAILURE and ORCPT=rfc822;original@example.test from Postfix"
      grep -E ' C: (MAIL|RCPT) ' "$WORK/relay.err" | tail -n 6 | sed 's/^/#   /'
    else
      ok "$name"
    fi
  fi

  # SMTPUTF8 (RFC 6531): a UTF-8 recipient, passed on by Postfix with SMTPUTF8.
  name=postfix-smtputf8
  postfix_check "$name" "$P" msg.eml alice@example.test 'jöran@example.test' --smtputf8
  if verify "$name" has "$name" '^data 0: 250 ' "the message was not accepted" &&
     relayed "$name" 1 msg.eml; then
    if grep -Eq ' C: MAIL FROM:<alice@example.test> .*SMTPUTF8' "$WORK/relay.err" &&
       grep -q ' C: RCPT TO:<jöran@example.test>' "$WORK/relay.err"; then
      ok "$name"
    else
      fail "$name" "Postfix did not pass the UTF-8 recipient on with SMTPUTF8"
    fi
  fi

  # BDAT (RFC 3030) to Postfix's smtpd (CHUNKING): counted in its disconnect line.
  name=postfix-bdat
  postfix_check "$name" "$P" lf.eml "${R[@]}" --chunking --sendmail
  verify "$name" has "$name" '^final: 250 ' "SendMail with BDAT did not end in 250" &&
    relayed "$name" 1 lf-expected.eml &&
    verify "$name" pfx_log_has "$name" 'disconnect from .* bdat=1 ' \
      "Postfix's disconnect line does not count a BDAT" && ok "$name"

  # BINARYMIME is not offered by Postfix: refused by the client before MAIL is sent.
  name=postfix-binarymime-not-offered
  postfix_check "$name" "$P" msg.eml "${R[@]}" --binarymime
  verify "$name" has "$name" '^mail: 554 5\.6\.3 BODY=BINARYMIME: BINARYMIME is not offered \(not sent\)' \
    "the client did not refuse BINARYMIME locally" && ok "$name"

  # Without PIPELINING (smtpd_discard_ehlo_keywords) the client goes lock-step: Postfix would
  # log "improper command pipelining" for a command sent before the previous reply.
  name=postfix-lockstep-without-pipelining
  postfix_check "$name" "${PORT[lockstep]}" msg.eml alice@example.test bob@example.test \
    carol@example.test
  if verify "$name" has "$name" '^ehlo: SIZE' "the EHLO reply was not read" &&
     verify "$name" has "$name" '^data 0: 250 ' "the message was not accepted" &&
     relayed "$name" 1 msg.eml; then
    if grep -Eq '^ehlo: PIPELINING' "$name.log"; then
      fail "$name" "PIPELINING was offered on the lock-step listener"
    elif grep -q 'improper command pipelining' "$PFX/maillog"; then
      fail "$name" "Postfix logged improper command pipelining"
      grep 'improper command pipelining' "$PFX/maillog" | tail -n 3 | sed 's/^/#   /'
    else
      ok "$name"
    fi
  fi
fi

# --- aiosmtpd: AUTH PLAIN and LOGIN, and LMTP -----------------------------------------------------
# aio_start NAME MODE PORT DIR - the helper serving MODE on PORT, storing into DIR; true once
# it printed "ready" (within 15 s).
aio_start() {
  local name=$1 mode=$2 port=$3 dir=$4
  mkdir -p "$dir"
  "$PY" "$AIO_HELPER" "$mode" "$port" "$dir" > "$name.out" 2> "$name.err" &
  AIO_PIDS+=($!)
  for _ in $(seq 150); do
    grep -q '^ready$' "$name.out" && return 0
    kill -0 "${AIO_PIDS[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  details "$name.err"
  return 1
}

# aio_stored NAME DIR N EXPECTED KEY VALUE... - DIR/N.eml is exactly EXPECTED and DIR/N.env
# has each "KEY VALUE" line.
aio_stored() {
  local name=$1 dir=$2 n=$3 expected=$4
  shift 4
  if ! cmp -s "$dir/$n.eml" "$expected"; then
    echo "aiosmtpd stored other bytes than were sent ($dir/$n.eml)"
    dump "$dir/$n.eml"
    return 1
  fi
  while [ $# -ge 2 ]; do
    grep -qx -- "$1 $2" "$dir/$n.env" || { echo "aiosmtpd's envelope lacks '$1 $2'"; \
      sed 's/^/#   /' "$dir/$n.env"; return 1; }
    shift 2
  done
}

AIO_CHECKS=(aiosmtpd-auth-plain aiosmtpd-auth-login aiosmtpd-auth-wrong-password
  aiosmtpd-cram-md5-not-offered aiosmtpd-lmtp-per-recipient aiosmtpd-lmtp-sendmail)
if [ -z "$PY" ] || ! "$PY" -c 'import aiosmtpd' 2>/dev/null; then
  for name in "${AIO_CHECKS[@]}"; do
    fail "$name" "aiosmtpd not found for ${PY:-python3} (apt-get install python3-aiosmtpd)"
  done
elif ! aio_start aio-smtp smtp "${PORT[aio]}" "$WORK/aio-smtp" ||
     ! aio_start aio-lmtp lmtp "${PORT[lmtp]}" "$WORK/aio-lmtp"; then
  for name in "${AIO_CHECKS[@]}"; do fail "$name" "the aiosmtpd helper did not start"; done
else
  A=127.0.0.1:${PORT[aio]}
  n=0
  for mech in PLAIN LOGIN; do
    name=aiosmtpd-auth-$(tr 'A-Z' 'a-z' <<< "$mech")
    drive "$name" "$A" "${R[@]}" --user alice --pass wonderland --mech "$mech" < lf.eml
    n=$((n + 1))
    verify "$name" has "$name" '^auth: 235 ' "AUTH $mech did not succeed" &&
      verify "$name" has "$name" '^data 0: 250 ' "the message was not accepted" &&
      verify "$name" aio_stored "$name" "$WORK/aio-smtp" "$n" lf-expected.eml \
        auth "alice:$mech" to bob@example.test && ok "$name"
  done

  name=aiosmtpd-auth-wrong-password
  drive "$name" "$A" "${R[@]}" --user alice --pass wrong --mech PLAIN < msg.eml
  verify "$name" has "$name" '^refused: AUTH: 535 ' "a wrong password was not refused with 535" &&
    ok "$name"

  name=aiosmtpd-cram-md5-not-offered
  drive "$name" "$A" "${R[@]}" --user alice --pass wonderland --mech CRAM-MD5 < msg.eml
  verify "$name" has "$name" '^refused: AUTH: 504 5\.5\.4 AUTH CRAM-MD5 is not offered' \
    "CRAM-MD5 (not offered by aiosmtpd) was not refused by the client" && ok "$name"

  # LMTP (RFC 2033 §4.2): LHLO, then one reply per accepted recipient after the data.
  L=127.0.0.1:${PORT[lmtp]}
  name=aiosmtpd-lmtp-per-recipient
  drive "$name" "$L" alice@example.test a@example.test full@example.test b@example.test --lmtp \
    < msg.eml
  verify "$name" has "$name" '^data 0: 250 2\.0\.0 Delivered to a@example.test$' \
      "the first recipient's reply is wrong" &&
    verify "$name" has "$name" '^data 1: 452 4\.2\.2 Mailbox full$' \
      "the second recipient's reply is not the 452" &&
    verify "$name" has "$name" '^data 2: 250 2\.0\.0 Delivered to b@example.test$' \
      "the third recipient's reply is wrong" &&
    verify "$name" has "$name" '^rcpt 1: 250 .*[^)]$' "rcpt 1 counted as delivered" &&
    verify "$name" aio_stored "$name" "$WORK/aio-lmtp" 1 msg.eml \
      lhlo client.interop.test to "a@example.test full@example.test b@example.test" &&
    ok "$name"

  name=aiosmtpd-lmtp-sendmail
  drive "$name" "$L" alice@example.test a@example.test b@example.test --lmtp --sendmail < lf.eml
  verify "$name" has "$name" '^final: 250 2\.0\.0 Delivered to b@example.test$' \
      "SendMail over LMTP did not return the last recipient's 250" &&
    verify "$name" aio_stored "$name" "$WORK/aio-lmtp" 2 lf-expected.eml && ok "$name"
fi

stop_server relay
finish
