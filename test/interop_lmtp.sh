#!/bin/bash
# test/interop_lmtp.sh MAILSINK_PATH - mailsink as an LMTP server (RFC 2033) and on Unix-domain
# sockets, with real clients: Postfix's own lmtp delivery agent (a throwaway instance, over a
# Unix socket and over TCP), Python's smtplib.LMTP (TCP and Unix socket) and swaks
# (--protocol LMTP, --socket). Every delivered message is checked byte for byte.
#
# The servers (mailsink --lmtp --json, each with a Maildir):
#   ltcp    on 127.0.0.1 (a free port): --fail-recipient fail@example.test and fail@inet.test,
#           with --fail-reply "452 4.2.2 Mailbox full" (Postfix must defer that recipient)
#   lunix   on unix:$SOCKDIR/lmtp.sock, --socket-mode 0666 (Postfix's lmtp runs as the postfix
#           user): --fail-recipient fail@example.test and fail@unix.test with --fail-reply
#           "550 5.1.1 No such user here" (Postfix must bounce that recipient)
# plus short-lived ones for the socket file's life: its mode, removal on SIGTERM, a stale file
# (left by a SIGKILLed mailsink) replaced, a live one never stolen, SMTP over a Unix socket.
#
# In LMTP each accepted recipient gets its own reply after the final dot, in RCPT order
# (RFC 2033 §4.2): a message to bob, fail and carol is stored once, for bob and carol, and
# mailsink's --json line says so in "delivered_to". A stored message must be 1 Received field
# (2 through Postfix: its own from the local submission, under mailsink's) then exactly the
# bytes sent (msg.eml).
#
# Postfix: a second instance with its own main.cf, master.cf, queue and log under a temp dir
# (pfx_setup), transport_maps sending unix.test to lmtp:unix:SOCKET and inet.test to
# lmtp:inet:127.0.0.1:PORT, fed with "sendmail -C DIR -i", its verdicts read from its maillog
# (status=sent, bounced, deferred) and its queue (postqueue -p). It must run as root.
#
# Each check prints "ok - NAME" or "FAIL - NAME: reason" (details follow on "#" lines); the last
# line is "interop-lmtp: N passed, N failed". Exit status 1 if any check failed, 2 on bad usage.
# A missing client is a failure naming its package, never a skip. Every client runs under
# timeout. Needs (Debian): python3 swaks postfix (preseeded "No configuration").
set -u

HELPER=$(cd "$(dirname "$0")" && pwd)/interop_lmtp.py
# shellcheck source-path=SCRIPTDIR source=interop_lib.sh
. "$(dirname "$0")/interop_lib.sh"
begin_suite interop-lmtp "$@"

make_workdir ltcp lunix stale restarted live smtpunix
# The sockets live in their own directory, which the postfix user can enter ($WORK cannot be).
SOCKDIR=
PFX=
PFX_STARTED=
POSTFIX=
cleanup_hook() {
  pfx_cleanup
  [ -z "$SOCKDIR" ] || rm -rf "$SOCKDIR"
}
if ! SOCKDIR=$(mktemp -d "${TMPDIR:-/tmp}/interop-lmtp-sock.XXXXXX") || ! chmod 755 "$SOCKDIR" ||
   ! PFX=$(mktemp -d "${TMPDIR:-/tmp}/interop-lmtp-postfix.XXXXXX") || ! chmod 755 "$PFX"; then
  echo "interop-lmtp: mktemp failed" >&2
  exit 1
fi
cd "$WORK" || exit 1

find_clients
pfx_find

write_probe_message
SOCK=$SOCKDIR/lmtp.sock
FROM=alice@example.test

# --- the two LMTP servers --------------------------------------------------------------------
start_server ltcp --lmtp --json --fail-recipient fail@example.test \
  --fail-recipient fail@inet.test --fail-reply "452 4.2.2 Mailbox full"
LUNIX_STARTED=
start_unix_server lunix "$SOCK" --lmtp --json --socket-mode 0666 \
  --fail-recipient fail@example.test --fail-recipient fail@unix.test \
  --fail-reply "550 5.1.1 No such user here" && LUNIX_STARTED=yes

# check_socket_mode NAME SOCKET MODE: SOCKET is a socket file with mode MODE (stat's %a).
check_socket_mode() {
  local mode
  if [ ! -S "$2" ]; then fail "$1" "$2 is not a socket file"; return; fi
  mode=$(stat -c %a "$2")
  if [ "$mode" = "$3" ]; then ok "$1"; else fail "$1" "the socket's mode is $mode, not $3"; fi
}
check_socket_mode socket-mode-0666 "$SOCK" 666

# --- checking deliveries ---------------------------------------------------------------------
# stored_ok NAME SERVER HOPS: exactly one new file in SERVER's Maildir since NAME.before, and it
# is HOPS Received fields then exactly msg.eml; sets STORED to its path.
stored_ok() {
  expect_new "$1" "$2" 1 || return 1
  STORED=$(stored_path "$1" "$2")
  verify "$1" strip_received "$1" "$STORED" "$3" msg.eml
}

# json_ok NAME SERVER EXPECTED: SERVER's --json line for $STORED has the keys and values of
# the JSON object EXPECTED.
json_ok() {
  "${LIMIT[@]}" "$PY" "$HELPER" json "$WORK/$2.out" "$STORED" "$3" > "$1.json" 2>&1 && return 0
  fail "$1" "$(tail -n 1 "$1.json")"
  details "$WORK/$2.out"
  return 1
}

# --- Python smtplib.LMTP ---------------------------------------------------------------------
# python_steps NAME SERVER ADDR: LHLO, MAIL, RCPT bob, fail, carol, DATA and three replies.
# fail@example.test is accepted at RCPT and refused after the data; bob and carol get 250, and
# the message is stored once, for them.
python_steps() {
  local name=$1 server=$2 addr=$3 code=$4 extra=$5
  need "$name" "$PY" "$NO_PY" && server_running "$name" "$server" || return 1
  run_client "$name" "$server" "${LIMIT[@]}" "$PY" "$HELPER" steps "$addr" msg.eml "$FROM" \
    bob@example.test fail@example.test carol@example.test || return 1
  replies_are "$name" "$name.log" "RCPT bob@example.test 250 | RCPT fail@example.test 250 |\
 RCPT carol@example.test 250 | DATA bob@example.test 250 | DATA fail@example.test $code |\
 DATA carol@example.test 250" || return 1
  stored_ok "$name" "$server" 1 || return 1
  verify "$name" received_has "$name" " with LMTP " || return 1
  json_ok "$name" "$server" "{\"to\": [\"bob@example.test\", \"fail@example.test\",\
 \"carol@example.test\"], \"delivered_to\": [\"bob@example.test\", \"carol@example.test\"]$extra}" &&
    ok "$name"
}
python_steps python-lmtp-tcp ltcp "127.0.0.1:${PORT[ltcp]}" 452 \
  ', "unix_path": null, "pid": null, "uid": null, "gid": null'
# Over the Unix socket the peer is the socket, and SO_PEERCRED names the Python process.
name=python-lmtp-unix
python_steps $name lunix "$SOCK" 550 \
  ", \"unix_path\": \"$SOCK\", \"uid\": $(id -u), \"gid\": $(id -g)" &&
  pid=$(sed -n 's/^PID //p' $name.log) &&
  json_ok $name-peer-pid lunix "{\"pid\": $pid}" && ok $name-peer-pid

# smtplib's sendmail() reads one reply after the dot (see interop_lmtp.py): the refusal of the
# second recipient is not reported, and is still waiting to be read when sendmail() returns.
name=python-lmtp-sendmail-reads-one-reply
if need $name "$PY" "$NO_PY" && server_running $name ltcp &&
   run_client $name ltcp "${LIMIT[@]}" "$PY" "$HELPER" sendmail "127.0.0.1:${PORT[ltcp]}" \
     msg.eml "$FROM" bob@example.test fail@example.test; then
  if ! grep -qx 'SENDMAIL REFUSED {}' $name.log; then
    fail $name "sendmail() did not return {} (smtplib reads the first recipient's 250 only)"
    details $name.log
  elif ! grep -qx 'PENDING 452 4.2.2 Mailbox full' $name.log; then
    fail $name "the second recipient's '452 4.2.2 Mailbox full' was not left unread"
    details $name.log
  elif stored_ok $name ltcp 1; then ok $name; fi
fi
# With the refused recipient first, sendmail() raises SMTPDataError with its reply, though the
# message was delivered to the second recipient, whose 250 smtplib leaves unread.
name=python-lmtp-sendmail-first-refused
if need $name "$PY" "$NO_PY" && server_running $name lunix &&
   run_client $name lunix "${LIMIT[@]}" "$PY" "$HELPER" sendmail "$SOCK" msg.eml "$FROM" \
     fail@example.test bob@example.test; then
  if ! grep -qx 'RAISED SMTPDataError 550 5.1.1 No such user here' $name.log; then
    fail $name "sendmail() did not raise SMTPDataError 550 5.1.1"; details $name.log
  elif ! grep -q '^PENDING 250 ' $name.log; then
    fail $name "the second recipient's 250 was not left unread"; details $name.log
  elif stored_ok $name lunix 1 &&
       json_ok $name lunix '{"delivered_to": ["bob@example.test"]}'; then ok $name; fi
fi
# Every recipient refused after the data: nothing is stored.
name=python-lmtp-all-refused
if need $name "$PY" "$NO_PY" && server_running $name ltcp &&
   run_client $name ltcp "${LIMIT[@]}" "$PY" "$HELPER" steps "127.0.0.1:${PORT[ltcp]}" msg.eml \
     "$FROM" fail@example.test FAIL@inet.test &&
   replies_are $name $name.log "RCPT fail@example.test 250 | RCPT FAIL@inet.test 250 |\
 DATA fail@example.test 452 | DATA FAIL@inet.test 452"; then
  expect_new $name ltcp 0 && ok $name
fi

# --- swaks -----------------------------------------------------------------------------------
# swaks_lmtp NAME SERVER CODE TRANSPORT...: swaks --protocol LMTP to bob and fail; after the
# data it must show bob's 250 and fail's CODE, marked as an error ("<**"), and one file must be
# stored. swaks exits 0 all the same: it counts a message delivered to anyone as a success.
swaks_lmtp() {
  local name=$1 server=$2 code=$3 want_exit=0 rc
  shift 3
  need "$name" "$SWAKS" "$NO_SWAKS" && server_running "$name" "$server" || return 1
  maildir_list "$server" > "$name.before"
  "${LIMIT[@]}" "$SWAKS" --protocol LMTP "$@" --helo localhost --from "$FROM" \
    --to bob@example.test,fail@example.test --data @msg-nofinal.eml > "$name.log" 2>&1
  rc=$?
  if [ $rc -ne "$want_exit" ]; then
    fail "$name" "swaks exited with status $rc, not $want_exit"; details "$name.log"
  elif ! grep -q '^ *-> LHLO localhost' "$name.log"; then
    fail "$name" "swaks did not say LHLO"; details "$name.log"
  elif ! grep -A2 '^ *-> \.$' "$name.log" | grep -q '^<-  250 '; then
    fail "$name" "swaks shows no 250 after the data"; details "$name.log"
  elif ! grep -A2 '^ *-> \.$' "$name.log" | grep -q "^<\*\* $code "; then
    fail "$name" "swaks shows no $code refusal after the data"; details "$name.log"
  elif stored_ok "$name" "$server" 1 &&
       json_ok "$name" "$server" '{"delivered_to": ["bob@example.test"]}'; then
    ok "$name"
  fi
}
swaks_lmtp swaks-lmtp-tcp ltcp 452 --server "127.0.0.1:${PORT[ltcp]}"
swaks_lmtp swaks-lmtp-socket lunix 550 --socket "$SOCK"

# --- Postfix's lmtp delivery agent -----------------------------------------------------------
# pfx_status TO: the status= word of the maillog's last delivery line for TO.
pfx_status() {
  grep -F " to=<$1>," "$PFX/maillog" | tail -n 1 | sed -n 's/.* status=\([a-z]*\) .*/\1/p'
}

# postfix_lmtp NAME SERVER DOMAIN OK_STATUS FAIL_STATUS REPLY: Postfix gets one message for
# ok@DOMAIN and fail@DOMAIN, which its transport sends to SERVER over LMTP in one transaction.
# Its log must say status=sent for ok and FAIL_STATUS (bounced or deferred) for fail, with the
# REPLY mailsink gave after the data; the copy for ok must be byte-exact (2 Received fields),
# stored once, with --json's delivered_to ["ok@DOMAIN"].
postfix_lmtp() {
  local name=$1 server=$2 domain=$3 fail_status=$4 reply=$5 deadline flush ok_st fail_st
  server_running "$name" "$server" || return 1
  run_client "$name" "$server" "${LIMIT[@]}" "$SENDMAIL" -C "$PFX/etc" -i -f "$FROM" -- \
    "ok@$domain" "fail@$domain" < msg.eml || return 1
  deadline=$(( $(millis) + 30000 ))
  flush=$(( $(millis) + 5000 ))
  while :; do
    ok_st=$(pfx_status "ok@$domain")
    fail_st=$(pfx_status "fail@$domain")
    [ -n "$ok_st" ] && [ -n "$fail_st" ] && break
    [ "$(millis)" -lt "$deadline" ] || break
    if [ "$(millis)" -ge "$flush" ]; then
      timeout -k 5 20 "$POSTQUEUE" -c "$PFX/etc" -f > /dev/null 2>&1
      flush=$(( $(millis) + 5000 ))
    fi
    sleep 0.1
  done
  if [ "$ok_st" != sent ] || [ "$fail_st" != "$fail_status" ]; then
    fail "$name" "Postfix's log says ok@$domain: '${ok_st:-nothing}', fail@$domain:\
 '${fail_st:-nothing}' (want sent and $fail_status) within 30 s"
    details "$PFX/maillog"
    return 1
  fi
  if ! grep -F " to=<fail@$domain>," "$PFX/maillog" | tail -n 1 | grep -qF "$reply"; then
    fail "$name" "Postfix's log line for fail@$domain does not quote '$reply'"
    details "$PFX/maillog"
    return 1
  fi
  if ! grep -F " to=<ok@$domain>," "$PFX/maillog" | tail -n 1 | grep -q '/lmtp\['; then
    fail "$name" "ok@$domain was not delivered by Postfix's lmtp agent"
    details "$PFX/maillog"
    return 1
  fi
  stored_ok "$name" "$server" 2 || return 1
  # (Postfix sends the RCPTs in its own order: "to" is not compared.)
  json_ok "$name" "$server" "{\"delivered_to\": [\"ok@$domain\"], \"helo\": \"pfx.localdomain\"}" ||
    return 1
  ok "$name"
}

PFX_CHECKS=(postfix-setup postfix-start postfix-lmtp-unix postfix-lmtp-unix-peer
            postfix-lmtp-inet postfix-lmtp-inet-deferred-in-queue postfix-stop)
if [ -n "$PFX_MISSING" ]; then
  for name in "${PFX_CHECKS[@]}"; do fail "$name" "$PFX_MISSING"; done
else
  # A free port with nothing on it for the relayhost: bounces to alice@example.test wait there.
  pick_ports nowhere
  if pfx_setup "${PORT[nowhere]}" interop-lmtp > postfix-setup.log 2>&1 &&
     "$POSTCONF" -c "$PFX/etc" -e \
       "transport_maps = inline:{ unix.test=lmtp:unix:$SOCK, inet.test=lmtp:inet:127.0.0.1:${PORT[ltcp]} }" \
       >> postfix-setup.log 2>&1; then
    ok postfix-setup
    if pfx_start_check postfix-start; then
      # Over the Unix socket: fail@unix.test gets 550 after the data, so Postfix bounces it.
      # The peer is Postfix's lmtp process: SO_PEERCRED gives the postfix user's uid.
      name=postfix-lmtp-unix-peer
      if postfix_lmtp postfix-lmtp-unix lunix unix.test bounced "550 5.1.1 No such user here"; then
        json_ok $name lunix "{\"unix_path\": \"$SOCK\", \"uid\": $(id -u postfix)}" &&
          ok $name
      else fail $name "Postfix delivered nothing to check"; fi
      # Over TCP: fail@inet.test gets 452 after the data, so Postfix defers it...
      postfix_lmtp postfix-lmtp-inet ltcp inet.test deferred "452 4.2.2 Mailbox full"
      # ... and keeps it in its queue, the delivered recipient gone from the entry.
      name=postfix-lmtp-inet-deferred-in-queue
      timeout -k 5 20 "$POSTQUEUE" -c "$PFX/etc" -p > $name.log 2>&1
      if ! grep -q 'fail@inet\.test' $name.log; then
        fail $name "postqueue -p does not list fail@inet.test"; details $name.log
      elif grep -q 'ok@inet\.test' $name.log; then
        fail $name "postqueue -p still lists the delivered ok@inet.test"; details $name.log
      else ok $name; fi
      pfx_stop_check postfix-stop
    else
      for name in "${PFX_CHECKS[@]:2}"; do fail "$name" "the Postfix instance did not start"; done
    fi
  else
    fail postfix-setup "setting up the instance's config in $PFX failed"
    details postfix-setup.log
    for name in "${PFX_CHECKS[@]:1}"; do fail "$name" "the instance could not be set up"; done
  fi
fi

# --- the socket file's life ------------------------------------------------------------------
# SMTP (not LMTP) over a Unix socket, with swaks and --socket-mode 0600.
SMTPSOCK=$SOCKDIR/smtp.sock
if start_unix_server smtpunix "$SMTPSOCK" --socket-mode 0600 --verbose; then
  check_socket_mode socket-mode-0600 "$SMTPSOCK" 600
  name=swaks-smtp-socket
  if need $name "$SWAKS" "$NO_SWAKS" &&
     run_client $name smtpunix "${LIMIT[@]}" "$SWAKS" --socket "$SMTPSOCK" --helo localhost \
       --from "$FROM" --to bob@example.test --data @msg-nofinal.eml &&
     stored_ok $name smtpunix 1 && verify $name received_has $name " with ESMTP "; then
    ok $name
  fi
  # The summary line names the socket and the client's credentials.
  name="summary-unix-peer"
  if grep -Eq " unix:$SMTPSOCK\[pid=[0-9]+,uid=$(id -u),gid=$(id -g)\] <$FROM> -> <bob@example.test> " \
       "$WORK/smtpunix.out"; then ok $name
  else fail $name "no summary line with 'unix:${SMTPSOCK}[pid=N,uid=$(id -u),gid=$(id -g)]'"
    details "$WORK/smtpunix.out"; fi
  # So does each --verbose transcript line.
  name="verbose-unix-peer"
  if grep -Eq "^mailsink: unix:${SMTPSOCK}\[pid=[0-9]+,uid=$(id -u),gid=$(id -g)\] C: EHLO localhost\$" \
       "$WORK/smtpunix.err"; then ok $name
  else fail $name "no --verbose line 'mailsink: unix:${SMTPSOCK}[pid=N,...] C: EHLO localhost'"
    details "$WORK/smtpunix.err"; fi
  stop_server smtpunix
  if [ -e "$SMTPSOCK" ]; then fail socket-removed-on-sigterm "$SMTPSOCK is still there"
  else ok socket-removed-on-sigterm; fi
else
  for name in socket-mode-0600 swaks-smtp-socket summary-unix-peer verbose-unix-peer \
      sigterm-smtpunix-exit-0 \
      socket-removed-on-sigterm; do fail $name "the server did not start"; done
fi

# A mailsink killed with SIGKILL leaves its socket file; the next one on that path replaces it.
STALE=$SOCKDIR/stale.sock
name=stale-socket-left-by-sigkill
if start_unix_server stale "$STALE" --lmtp; then
  kill -KILL "${PID[stale]}"; wait "${PID[stale]}" 2>/dev/null; PID[stale]=
  if [ -S "$STALE" ]; then ok $name; else fail $name "no socket file left after SIGKILL"; fi
  name=stale-socket-replaced
  if start_unix_server restarted "$STALE" --lmtp &&
     run_client $name restarted "${LIMIT[@]}" "$PY" "$HELPER" steps "$STALE" msg.eml "$FROM" \
       bob@example.test && stored_ok $name restarted 1; then ok $name; fi
else
  fail $name "the server did not start"
fi

# A second mailsink on the path of a live one fails, and the first still serves on its socket.
name=live-socket-not-stolen
if [ -n "${PID[restarted]}" ]; then
  inode=$(stat -c %i "$STALE")
  launch_server live --listen "unix:$STALE" --lmtp
  deadline=$(( $(millis) + 10000 ))
  while kill -0 "${PID[live]}" 2>/dev/null && [ "$(millis)" -lt "$deadline" ]; do sleep 0.05; done
  if kill -0 "${PID[live]}" 2>/dev/null; then
    fail $name "the second mailsink is still running 10 s later"; details "$WORK/live.err"
  else
    wait "${PID[live]}"; rc=$?; PID[live]=
    if [ $rc -ne 1 ]; then fail $name "the second mailsink exited with status $rc, not 1"
      details "$WORK/live.err"
    elif grep -q 'listening on' "$WORK/live.err"; then
      fail $name "the second mailsink said it was listening"; details "$WORK/live.err"
    elif ! grep -qF "$STALE" "$WORK/live.err"; then
      fail $name "the second mailsink's error does not name $STALE"; details "$WORK/live.err"
    elif [ "$(stat -c %i "$STALE" 2>/dev/null)" != "$inode" ]; then
      fail $name "the socket file was replaced"
    elif run_client $name restarted "${LIMIT[@]}" "$PY" "$HELPER" steps "$STALE" msg.eml \
           "$FROM" bob@example.test && stored_ok $name restarted 1; then
      ok $name
      echo "#   the second mailsink said: $(head -n 1 "$WORK/live.err")"
    fi
  fi
else
  fail $name "no mailsink was serving on $STALE"
fi
[ -z "${PID[restarted]}" ] || stop_server restarted

# --- graceful shutdown: the socket file is removed -------------------------------------------
stop_server ltcp
stop_server lunix
if [ -z "$LUNIX_STARTED" ]; then fail lunix-socket-removed "the lunix server never started"
elif [ -e "$SOCK" ]; then fail lunix-socket-removed "$SOCK is still there after SIGTERM"
else ok lunix-socket-removed; fi

finish
