#!/bin/bash
# test/interop_relay.sh MAILSINK_PATH - mailsink --relay: each accepted message is passed on to
# an upstream server before the client hears its reply, and the reply is the upstream's verdict.
#
# First hops (mailsink --relay ..., each with a Maildir) and their upstreams:
#   a-smtp   SMTP, --relay to up-smtp (SMTP on 127.0.0.1, --fail-recipient fail@example.test
#            with "550 5.1.1 No such user here")
#   a-lmtp   LMTP, --relay unix:SOCK --relay-lmtp to up-lmtp (LMTP on a Unix socket,
#            --accept-domain example.test, --fail-recipient fail@example.test with "552 5.2.2
#            Mailbox full"): one verdict per recipient, from the RCPT or after the data
#   a-tls    SMTP, --relay-tls --relay-ca CERT --relay-auth-file to up-tls (STARTTLS and AUTH
#            required, a throwaway certificate)
#   a-noca   the same without --relay-ca: the certificate is not trusted, so 451 4.4.1
#   a-badauth  like a-tls with a wrong password: AUTH refused upstream, 451 4.4.0
#   a-421    --relay to up-421, which answers 421 after the data for closing@example.test:
#            451 4.4.2 to our client, whose session goes on
#   a-down   --relay to a port nothing listens on: 451 4.4.1
#   a-pfx    LMTP, --relay to a throwaway Postfix smtpd on 127.0.0.1 (which refuses
#            reject@example.test at RCPT and relays the rest to up-smtp)
#   a-kill   SMTP, --relay to up-smtp, SIGKILLed while a client sends: every message the client
#            got 250 for is upstream (and in a-kill's Maildir)
# Python's smtplib (test/interop_lmtp.py) is the client. A message stored upstream must be
# 2 Received fields (the first hop's, the upstream's; 3 through Postfix) then exactly msg.eml.
#
# Each check prints "ok - NAME" or "FAIL - NAME: reason" (details follow on "#" lines); the last
# line is "interop-relay: N passed, N failed". Exit status 1 if any check failed, 2 on bad usage.
# Needs (Debian): python3 openssl postfix (as root, for the Postfix checks).
set -u

HELPER=$(cd "$(dirname "$0")" && pwd)/interop_lmtp.py
# shellcheck source-path=SCRIPTDIR source=interop_lib.sh
. "$(dirname "$0")/interop_lib.sh"
begin_suite interop-relay "$@"

make_workdir up-smtp up-lmtp up-tls up-421 a-smtp a-lmtp a-tls a-noca a-badauth a-421 a-down \
  a-pfx a-kill
PFX=
PFX_STARTED=
POSTFIX=
cleanup_hook() { pfx_cleanup; }
if ! PFX=$(mktemp -d "${TMPDIR:-/tmp}/interop-relay-postfix.XXXXXX") || ! chmod 755 "$PFX"; then
  echo "interop-relay: mktemp failed" >&2
  exit 1
fi
cd "$WORK" || exit 1

find_clients
pfx_find
if [ -z "$PY" ]; then fail python3 "$NO_PY"; finish; exit; fi

write_probe_message
make_certificate "the STARTTLS upstream needs one"
echo 'alice:wonderland' > relay.auth
echo 'alice:not-the-password' > wrong.auth
FROM=alice@example.test
SOCK=$WORK/up-lmtp.sock

# --- upstreams, then the first hops ----------------------------------------------------------
pick_ports down pfx
start_server up-smtp --json --fail-recipient fail@example.test \
  --fail-reply "550 5.1.1 No such user here"
start_unix_server up-lmtp "$SOCK" --lmtp --json --accept-domain example.test \
  --fail-recipient fail@example.test --fail-reply "552 5.2.2 Mailbox full"
start_server up-tls --json --tls-cert "$CERT" --tls-key "$KEY" --tls-required \
  --auth-file relay.auth --auth-required
# An upstream that answers 421 (closing its connection) after the data for closing@.
start_server up-421 --fail-recipient closing@example.test --fail-reply "421 4.3.2 Shutting down"
start_server a-smtp --json --relay "127.0.0.1:${PORT[up-smtp]}"
start_server a-lmtp --lmtp --json --relay "unix:$SOCK" --relay-lmtp
start_server a-tls --json --relay "127.0.0.1:${PORT[up-tls]}" --relay-tls --relay-ca "$CERT" \
  --relay-auth-file relay.auth
start_server a-noca --json --relay "127.0.0.1:${PORT[up-tls]}" --relay-tls \
  --relay-auth-file relay.auth
start_server a-badauth --json --relay "127.0.0.1:${PORT[up-tls]}" --relay-tls \
  --relay-ca "$CERT" --relay-auth-file wrong.auth
start_server a-421 --relay "127.0.0.1:${PORT[up-421]}"
start_server a-down --json --relay "127.0.0.1:${PORT[down]}"
start_server a-pfx --lmtp --json --relay "127.0.0.1:${PORT[pfx]}"

# --- helpers ---------------------------------------------------------------------------------
# send NAME SERVER MODE ADDR TO...: interop_lmtp.py MODE (smtp or steps) to ADDR; snapshots of
# SERVER's and every upstream's Maildir are taken first (NAME.before, NAME-UPSTREAM.before).
send() {
  local name=$1 server=$2 mode=$3 addr=$4 up
  shift 4
  for up in up-smtp up-lmtp up-tls up-421; do maildir_list "$up" > "$name-$up.before"; done
  run_client "$name" "$server" "${LIMIT[@]}" "$PY" "$HELPER" "$mode" "$addr" msg.eml "$FROM" "$@"
}

# upstream_stored NAME UPSTREAM HOPS: exactly one new file in UPSTREAM's Maildir since send,
# HOPS Received fields then exactly msg.eml; sets STORED to it.
upstream_stored() {
  expect_new "$1-$2" "$2" 1 || { fail "$1" "the upstream $2 did not store exactly one message"; return 1; }
  STORED=$(stored_path "$1-$2" "$2")
  verify "$1" strip_received "$1" "$STORED" "$3" msg.eml
}

# nothing_upstream NAME: no upstream stored anything since send.
nothing_upstream() {
  local up
  for up in up-smtp up-lmtp up-tls up-421; do
    list_new "$1-$up" "$up"
    if [ -s "$1-$up.new" ]; then fail "$1" "the upstream $up stored a message"; return 1; fi
  done
}

# json_ok NAME SERVER EXPECTED: SERVER's --json line for $STORED has EXPECTED's keys and values.
json_ok() {
  "${LIMIT[@]}" "$PY" "$HELPER" json "$WORK/$2.out" "$STORED" "$3" > "$1.json" 2>&1 && return 0
  fail "$1" "$(tail -n 1 "$1.json")"
  details "$WORK/$2.out"
  return 1
}

# --- SMTP to SMTP ----------------------------------------------------------------------------
name=relay-smtp-chain
if send $name a-smtp smtp "127.0.0.1:${PORT[a-smtp]}" bob@example.test &&
   replies_are $name $name.log "RCPT bob@example.test 250 | DATA * 250" &&
   upstream_stored $name up-smtp 2 && json_ok $name up-smtp '{"delivered_to": ["bob@example.test"]}'
then
  # The first hop stored its own copy (after the upstream's 250): one Received field.
  expect_new $name a-smtp 1 && STORED=$(stored_path $name a-smtp) &&
    verify $name strip_received $name-first "$STORED" 1 msg.eml && ok $name
fi

# The upstream refuses the message (its --fail-recipient, folded in SMTP): the client hears the
# upstream's reply, and the first hop keeps nothing.
name=relay-smtp-refusal-passed-back
if send $name a-smtp smtp "127.0.0.1:${PORT[a-smtp]}" bob@example.test fail@example.test; then
  if ! grep -qx 'DATA \* 550 5.1.1 No such user here' $name.log; then
    fail $name "the client did not get the upstream's '550 5.1.1 No such user here'"
    details $name.log
  elif expect_new $name a-smtp 0 && nothing_upstream $name; then ok $name; fi
fi

# --- LMTP to LMTP over a Unix socket: a verdict per recipient ---------------------------------
# bob and carol delivered; fail refused by the upstream after the data (552); x@other.test
# refused by the upstream at RCPT (--accept-domain): each gets the upstream's reply after our
# data, in RCPT order.
name=relay-lmtp-per-recipient
if send $name a-lmtp steps "127.0.0.1:${PORT[a-lmtp]}" bob@example.test fail@example.test \
     x@other.test carol@example.test &&
   replies_are $name $name.log "RCPT bob@example.test 250 | RCPT fail@example.test 250 |\
 RCPT x@other.test 250 | RCPT carol@example.test 250 | DATA bob@example.test 250 |\
 DATA fail@example.test 552 | DATA x@other.test 550 | DATA carol@example.test 250"; then
  if ! grep -q '^DATA x@other.test 550 5.1.1 Recipient address rejected: domain not accepted' \
       $name.log; then
    fail $name "x@other.test did not get the upstream's RCPT refusal"; details $name.log
  elif upstream_stored $name up-lmtp 2 &&
       json_ok $name up-lmtp '{"to": ["bob@example.test", "fail@example.test", "carol@example.test"],
 "delivered_to": ["bob@example.test", "carol@example.test"]}' &&
       expect_new $name a-lmtp 1 && STORED=$(stored_path $name a-lmtp) &&
       json_ok $name a-lmtp '{"delivered_to": ["bob@example.test", "carol@example.test"]}'; then
    ok $name
  fi
fi

# --- STARTTLS and AUTH upstream --------------------------------------------------------------
name=relay-tls-auth
if send $name a-tls smtp "127.0.0.1:${PORT[a-tls]}" bob@example.test &&
   replies_are $name $name.log "RCPT bob@example.test 250 | DATA * 250" &&
   upstream_stored $name up-tls 2 &&
   verify $name received_has $name " with ESMTPSA " &&
   json_ok $name up-tls '{"auth_user": "alice", "delivered_to": ["bob@example.test"]}'; then
  ok $name
fi
# Without --relay-ca the throwaway certificate is not trusted: the relay fails, 451 4.4.1.
name=relay-tls-unverified-451
if send $name a-noca smtp "127.0.0.1:${PORT[a-noca]}" bob@example.test; then
  if ! grep -q '^DATA \* 451 4.4.1 ' $name.log; then
    fail $name "the client did not get 451 4.4.1"; details $name.log
  elif expect_new $name a-noca 0 && nothing_upstream $name; then ok $name; fi
fi

# AUTH refused upstream (a wrong password): 451 4.4.0, nothing stored anywhere.
name=relay-auth-refused-451
if send $name a-badauth smtp "127.0.0.1:${PORT[a-badauth]}" bob@example.test; then
  if ! grep -q '^DATA \* 451 4.4.0 Upstream refused AUTH' $name.log; then
    fail $name "the client did not get '451 4.4.0 Upstream refused AUTH...'"; details $name.log
  elif expect_new $name a-badauth 0 && nothing_upstream $name; then ok $name; fi
fi

# --- an upstream's 421 -----------------------------------------------------------------------
# It closes the upstream's connection, not ours: the client gets 451 4.4.2 and its session goes
# on (the next message, to bob alone, is relayed and accepted).
name=relay-upstream-421
if send $name a-421 smtp "127.0.0.1:${PORT[a-421]}" closing@example.test; then
  if ! grep -q '^DATA \* 451 4.4.2 Upstream closed: ' $name.log; then
    fail $name "the client did not get '451 4.4.2 Upstream closed: ...'"; details $name.log
  elif expect_new $name a-421 0 && nothing_upstream $name &&
       send $name-after a-421 smtp "127.0.0.1:${PORT[a-421]}" bob@example.test &&
       replies_are $name $name-after.log "RCPT bob@example.test 250 | DATA * 250" &&
       upstream_stored $name up-421 2; then
    ok $name
  fi
fi

# --- the upstream down -----------------------------------------------------------------------
name=relay-upstream-down-451
if send $name a-down smtp "127.0.0.1:${PORT[a-down]}" bob@example.test; then
  if ! grep -q '^DATA \* 451 4.4.1 ' $name.log; then
    fail $name "the client did not get 451 4.4.1"; details $name.log
  elif ! grep -q "relay to 127.0.0.1:${PORT[down]}" "$WORK/a-down.err"; then
    fail $name "mailsink logged nothing about the failed relay"; details "$WORK/a-down.err"
  elif expect_new $name a-down 0; then ok $name; fi
fi

# --- a throwaway Postfix smtpd as the upstream -----------------------------------------------
PFX_CHECKS=(postfix-setup postfix-start relay-postfix-smtpd postfix-stop)
if [ -n "$PFX_MISSING" ]; then
  for name in "${PFX_CHECKS[@]}"; do fail "$name" "$PFX_MISSING"; done
elif pfx_setup "${PORT[up-smtp]}" interop-relay > postfix-setup.log 2>&1 &&
     "$POSTCONF" -c "$PFX/etc" -M \
       "127.0.0.1:${PORT[pfx]}/inet=127.0.0.1:${PORT[pfx]} inet n - n - - smtpd" \
       >> postfix-setup.log 2>&1 &&
     "$POSTCONF" -c "$PFX/etc" -e "mynetworks = 127.0.0.0/8" \
       "smtpd_relay_restrictions = permit_mynetworks, reject" \
       "smtpd_recipient_restrictions = check_recipient_access inline:{ { reject@example.test = 550 5.1.1 No such user here } }, permit_mynetworks, reject" \
       >> postfix-setup.log 2>&1; then
  ok postfix-setup
  if pfx_start_check postfix-start "${PORT[pfx]}"; then
    # bob through Postfix to up-smtp (3 Received fields: a-pfx's, Postfix's, up-smtp's);
    # reject@example.test refused by Postfix at RCPT, which a-pfx passes back after the data.
    name=relay-postfix-smtpd
    if send $name a-pfx steps "127.0.0.1:${PORT[a-pfx]}" bob@example.test reject@example.test &&
       replies_are $name $name.log "RCPT bob@example.test 250 | RCPT reject@example.test 250 |\
 DATA bob@example.test 250 | DATA reject@example.test 550"; then
      if ! grep -q '^DATA reject@example.test 550 5.1.1 .*No such user here' $name.log; then
        fail $name "reject@example.test did not get Postfix's 550 5.1.1 refusal"
        details $name.log
      else
        # Postfix relays it on at once; wait for it (bounded), flushing its queue now and then.
        deadline=$(( $(millis) + 30000 ))
        while list_new $name-up-smtp up-smtp; [ ! -s $name-up-smtp.new ] &&
              [ "$(millis)" -lt "$deadline" ]; do
          sleep 0.2
        done
        upstream_stored $name up-smtp 3 &&
          json_ok $name up-smtp '{"to": ["bob@example.test"], "helo": "pfx.localdomain"}' &&
          ok $name
      fi
    fi
    pfx_stop_check postfix-stop
  else
    fail relay-postfix-smtpd "the Postfix instance did not start"
    fail postfix-stop "the Postfix instance did not start"
  fi
else
  fail postfix-setup "setting up the instance's config in $PFX failed"
  details postfix-setup.log
  for name in "${PFX_CHECKS[@]:1}"; do fail "$name" "the instance could not be set up"; done
fi

# --- SIGKILL of the first hop: nothing acknowledged is lost ----------------------------------
# A client sends numbered messages one after another through a-kill; after its fifth 250,
# a-kill gets SIGKILL. Every message the client got 250 for must be upstream (and in a-kill's
# own Maildir, stored before the 250 too).
name=relay-sigkill-nothing-lost
maildir_list up-smtp > $name-up.before
if start_server a-kill --relay "127.0.0.1:${PORT[up-smtp]}"; then
  "${LIMIT[@]}" "$PY" "$HELPER" loop "127.0.0.1:${PORT[a-kill]}" msg.eml "$FROM" \
    bob@example.test 200 > $name.log 2>&1 &
  client=$!
  deadline=$(( $(millis) + 30000 ))
  while [ "$(grep -c '^ACK ' $name.log)" -lt 5 ] && kill -0 $client 2>/dev/null &&
        [ "$(millis)" -lt "$deadline" ]; do
    sleep 0.02
  done
  kill -KILL "${PID[a-kill]}"; wait "${PID[a-kill]}" 2>/dev/null; PID[a-kill]=
  wait $client
  acked=$(sed -n 's/^ACK //p' $name.log)
  missing=
  for k in $acked; do
    grep -lqF "Message-ID: <loop-$k@example.test>" "${MAILDIR[up-smtp]}"/new/* 2>/dev/null ||
      missing="$missing up-smtp:$k"
    grep -lqF "Message-ID: <loop-$k@example.test>" "${MAILDIR[a-kill]}"/new/* 2>/dev/null ||
      missing="$missing a-kill:$k"
  done
  if [ "$(wc -w <<< "$acked")" -lt 5 ]; then
    fail $name "the client got fewer than 5 acknowledgements"; details $name.log
  elif [ -n "$missing" ]; then
    fail $name "acknowledged but missing:$missing"; details $name.log
  else
    ok $name
    echo "#   $(wc -w <<< "$acked") messages acknowledged before the SIGKILL, all upstream"
  fi
fi

# --- graceful shutdown -----------------------------------------------------------------------
for server in a-smtp a-lmtp a-tls a-noca a-badauth a-421 a-down a-pfx up-smtp up-lmtp up-tls \
    up-421; do
  stop_server "$server"
done

finish
