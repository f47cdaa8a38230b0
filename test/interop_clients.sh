#!/bin/bash
# test/interop_clients.sh MAILSINK_PATH - real mail clients and a real MTA against mailsink:
# msmtp, Go's net/smtp, Node's nodemailer and a throwaway Postfix instance relaying to it, in
# clear, with STARTTLS (the certificate verified) and with AUTH PLAIN, and a byte-for-byte check
# of every message they deliver.
#
# Two mailsinks run on free loopback ports (port 0; the startup line tells which), each with a
# Maildir:
#   plain   no TLS, no AUTH.
#   secure  STARTTLS with a throwaway self-signed certificate (SANs DNS:localhost and
#           IP:127.0.0.1, so the clients verify it) and --auth alice:wonderland (AUTH PLAIN and
#           LOGIN after STARTTLS; AUTH optional).
# A stored message must be N Received fields followed by exactly the bytes sent (msg.eml below):
# N = 1 for a client talking to mailsink directly, 2 through Postfix (its own "Received: by"
# from the local submission, under mailsink's). mailsink's field must say " with ESMTP ",
# " with ESMTPS " or " with ESMTPSA " (RFC 3848) as the session was, "(using TLSv1." exactly
# when it was TLS, and mailsink's summary line must say "auth=alice" exactly when the client
# authenticated.
#
# The Postfix checks run a second Postfix instance with its own main.cf, master.cf, queue and
# log under the temp dir (no listening smtpd, no chroot), started with "postfix -c DIR", fed
# with "sendmail -C DIR -i", stopped with "postfix -c DIR stop". /etc/postfix is only read.
# It must run as root (postfix start and a MAIL_CONFIG submission need it).
#
# Each check prints "ok - NAME" or "FAIL - NAME: reason" (details follow on "#" lines); the last
# line is "interop-clients: N passed, N failed". Exit status 1 if any check failed, 2 on bad
# usage. A missing client is a failure naming its package, never a skip. Every client runs
# under timeout. The clients, how to drive them and their pitfalls: /work/shared/INTEROP.md.
#
# Needs (Debian): msmtp golang-go postfix (preseeded "No configuration") libsasl2-modules
# openssl; node >= 20 with npm (NodeSource), and the npm registry for nodemailer@10.6.0, which
# is installed into the temp dir on every run.
set -u

# The Go program and the Node script live next to this script.
HELPERS=$(cd "$(dirname "$0")" && pwd)/interop_clients
# shellcheck source-path=SCRIPTDIR source=interop_lib.sh
. "$(dirname "$0")/interop_lib.sh"
begin_suite interop-clients "$@"

# --- temp dir, servers, the Postfix instance, cleanup ----------------------------------------
make_workdir plain secure
# The Postfix instance: config in $PFX/etc, queue in $PFX/spool, log in $PFX/maillog. Its own
# temp dir, which the postfix user must be able to enter (master opens data/master.lock as
# postfix), unlike $WORK.
PFX=
PFX_STARTED=
POSTFIX=
# cleanup_hook: run first by the library's cleanup on exit; stops the instance, removes $PFX.
cleanup_hook() { pfx_cleanup; }
if ! PFX=$(mktemp -d "${TMPDIR:-/tmp}/interop-clients-postfix.XXXXXX") || ! chmod 755 "$PFX"; then
  echo "interop-clients: mktemp failed" >&2
  exit 1
fi

# --- clients: each check that needs a missing one fails, naming the package ------------------
OPENSSL=$(command -v openssl || true)
MSMTP=$(command -v msmtp || true)
GO=$(command -v go || true)
NODE=$(command -v node || true)
NPM=$(command -v npm || true)
NO_MSMTP="msmtp not found on PATH (apt-get install msmtp)"
NO_GO="go not found on PATH (apt-get install golang-go)"
NO_NODE="node not found on PATH (nodemailer 10.6.0 needs node >= 20: NodeSource's nodejs 20)"
NO_NPM="npm not found on PATH (it comes with NodeSource's nodejs 20; not Debian's npm package)"

# Postfix: every piece the instance needs, else the reason (the same for each Postfix check).
pfx_find
# The SASL client of the second Postfix check needs Cyrus SASL's PLAIN plugin.
PFX_NO_SASL=
if ! compgen -G '/usr/lib/*/sasl2/libplain.so*' > /dev/null &&
   ! compgen -G '/usr/lib/sasl2/libplain.so*' > /dev/null; then
  PFX_NO_SASL="Cyrus SASL's PLAIN plugin (libplain.so) is missing"
  PFX_NO_SASL+=" (apt-get install libsasl2-modules)"
fi

# Go: standard library only, nothing fetched, caches inside the temp dir.
GO_ENV=(env GOPROXY=off GOFLAGS=-mod=mod GOENV=off GO111MODULE=on
        GOCACHE="$WORK/go-cache" GOPATH="$WORK/go-path")
# npm: its cache inside the temp dir, no audit, fund or update notices.
NPM_ENV=(env npm_config_cache="$WORK/npm-cache" npm_config_audit=false npm_config_fund=false
         npm_config_update_notifier=false)

cd "$WORK" || exit 1

make_certificate "the secure server needs a certificate"
# The message, msg.eml: all the usual headers (so no client adds one), and a body line starting
# with '.', which tests dot-stuffing both ways.
write_probe_message

# --- nodemailer: installed into the temp dir from the npm registry ---------------------------
NODE_MODULES=$WORK/npm/node_modules
NODEMAILER_MISSING=
name=npm-install-nodemailer
node_major=
[ -n "$NODE" ] &&
  node_major=$("${LIMIT[@]}" "$NODE" -p 'process.versions.node.split(".")[0]' 2>/dev/null)
if [ -z "$NODE" ]; then
  NODEMAILER_MISSING=$NO_NODE
elif ! [[ $node_major =~ ^[0-9]+$ ]] || [ "$node_major" -lt 20 ]; then
  NODEMAILER_MISSING="node $("${LIMIT[@]}" "$NODE" --version 2>&1 | head -n 1) cannot run"
  NODEMAILER_MISSING+=" nodemailer 10.6.0, which needs node >= 20 (NodeSource's nodejs 20)"
elif [ -z "$NPM" ]; then
  NODEMAILER_MISSING=$NO_NPM
fi
if [ -n "$NODEMAILER_MISSING" ]; then
  fail "$name" "$NODEMAILER_MISSING"
else
  mkdir -p "$WORK/npm"
  if (cd "$WORK/npm" &&
      "${NPM_ENV[@]}" timeout -k 5 60 "$NPM" init -y &&
      "${NPM_ENV[@]}" timeout -k 5 120 "$NPM" install nodemailer@10.6.0) \
       > "$name.log" 2>&1 && [ -f "$NODE_MODULES/nodemailer/package.json" ]; then
    ok "$name"
  else
    NODEMAILER_MISSING="npm install nodemailer@10.6.0 failed (is the npm registry reachable?)"
    fail "$name" "$NODEMAILER_MISSING"
    details "$name.log"
  fi
fi

# --- starting the servers --------------------------------------------------------------------
# Port 0: start_server takes each server's port from its startup line.
start_server plain
start_server secure --tls-cert "$CERT" --tls-key "$KEY" --auth alice:wonderland
P1=${PORT[plain]}
P2=${PORT[secure]}

# --- checking deliveries ---------------------------------------------------------------------
# check_stored NAME FILE HOPS WITH: FILE must be HOPS Received fields, then exactly the
# bytes of msg.eml. The first field (mailsink's) must start "Received: from HELO " (localhost
# for a direct client, Postfix's myhostname through it), say " with WITH ", and say
# "(using TLSv1." when WITH ends in S or SA (TLS, RFC 3848) and mention no TLS otherwise.
# Through Postfix the second field must be Postfix's "Received: by pfx.localdomain (Postfix".
# On a mismatch prints the reason (first line) and details, and returns 1.
check_stored() {
  local name=$1 file=$2 hops=$3 with=$4 helo=localhost
  [ "$hops" = 2 ] && helo=pfx.localdomain
  strip_received "$name" "$file" "$hops" msg.eml || return 1
  received_starts "$name" "Received: from $helo " || return 1
  received_has "$name" " with $with " || return 1
  case $with in
    *SMTPS|*SMTPSA) received_has "$name" "(using TLSv1." || return 1 ;;
    *) received_lacks "$name" TLS "mentions TLS for a session in clear" || return 1 ;;
  esac
  if [ "$hops" = 2 ] &&
     ! tail -c +"$(( $(wc -c < "$name.received") + 1 ))" "$name.fields" |
       grep -q '^Received: by pfx\.localdomain (Postfix'; then
    echo "the second Received field is not Postfix's 'Received: by pfx.localdomain (Postfix'"
    dump "$file"; return 1
  fi
  return 0
}

# pfx_flush: ask the Postfix instance to retry its deferred mail now.
pfx_flush() { timeout -k 5 20 "$POSTQUEUE" -c "$PFX/etc" -f > /dev/null 2>&1; }

# deliver NAME SERVER HOPS WITH USER CLIENT...: run CLIENT (already under timeout) with msg.eml
# on stdin, its output in NAME.log; it must succeed and exactly one new file must appear in
# SERVER's Maildir, passing check_stored NAME FILE HOPS WITH. HOPS 1: the file must be there
# when the client is done; HOPS 2 (Postfix): it may take up to 30 s, with the queue flushed
# every 5 s. mailsink's summary line for the file must say "auth=USER" (USER "-": no "auth=").
deliver() {
  local name=$1 server=$2 hops=$3 with=$4 user=$5 count stored deadline flush
  shift 5
  server_running "$name" "$server" && run_client "$name" "$server" "$@" < msg.eml || return 1
  deadline=$(( $(millis) + (hops == 2 ? 30000 : 0) ))
  flush=$(( $(millis) + 5000 ))
  while :; do
    list_new "$name" "$server"
    [ -s "$name.new" ] && break
    [ "$(millis)" -lt "$deadline" ] || break
    if [ "$(millis)" -ge "$flush" ]; then pfx_flush; flush=$(( $(millis) + 5000 )); fi
    sleep 0.1
  done
  count=$(wc -l < "$name.new")
  if [ "$hops" = 2 ] && [ "$count" -ne 1 ]; then
    fail "$name" \
      "$count new files in the $server server's Maildir 30 s after the submission, not 1"
    details "$name.log"
    echo "# the Postfix queue:"
    timeout -k 5 20 "$POSTQUEUE" -c "$PFX/etc" -p 2>&1 | sed 's/^/#   /'
    echo "# the Postfix log:"
    details "$PFX/maillog"
    return 1
  fi
  expect_new "$name" "$server" 1 || return 1
  stored=$(stored_path "$name" "$server")
  verify "$name" check_stored "$name" "$stored" "$hops" "$with" &&
    check_summary "$name" "$server" "$stored" "$user" && ok "$name"
}

FROM=alice@example.test
RCPT=bob@example.test

# --- msmtp -----------------------------------------------------------------------------------
# --file=/dev/null: no msmtprc is read. --domain: the EHLO name. --debug: the transcript in the
# log, for a FAIL.
MSMTP_ARGS=("${LIMIT[@]}" "$MSMTP" --file=/dev/null --debug --timeout=20 --host=127.0.0.1
            --domain=localhost --from="$FROM")
# (1) in clear to the plain server.
name=msmtp-plain
if [ -z "$MSMTP" ]; then fail "$name" "$NO_MSMTP"; else
  deliver "$name" plain 1 ESMTP - "${MSMTP_ARGS[@]}" --port="$P1" --tls=off --auth=off "$RCPT"
fi
# (2) STARTTLS, the certificate verified against the throwaway one only, no AUTH.
name=msmtp-starttls
if [ -z "$MSMTP" ]; then fail "$name" "$NO_MSMTP"; else
  deliver "$name" secure 1 ESMTPS - "${MSMTP_ARGS[@]}" --port="$P2" --tls=on \
    --tls-starttls=on --tls-trust-file="$CERT" --auth=off "$RCPT"
fi
# (3) STARTTLS verified, then AUTH PLAIN.
name=msmtp-starttls-auth-plain
if [ -z "$MSMTP" ]; then fail "$name" "$NO_MSMTP"; else
  deliver "$name" secure 1 ESMTPSA alice "${MSMTP_ARGS[@]}" --port="$P2" --tls=on \
    --tls-starttls=on --tls-trust-file="$CERT" --auth=plain --user=alice \
    --passwordeval='echo wonderland' "$RCPT"
fi

# --- Go net/smtp (test/interop_clients/gosmtp.go, run with go run) ----------------------------
# smtp.Client.Mail adds the SMTPUTF8 parameter whenever the server offers SMTPUTF8 (as mailsink
# does), even for an ASCII message, so mailsink's Received field says UTF8SMTP / UTF8SMTPSA, the
# RFC 6531 (section 3.7.3) counterparts of ESMTP / ESMTPSA.
GOSMTP=(timeout -k 5 90 "${GO_ENV[@]}" "$GO" run "$HELPERS/gosmtp.go")
# (4) smtp.Client in clear to the plain server.
name=go-net-smtp-plain
if [ -z "$GO" ]; then fail "$name" "$NO_GO"; else
  deliver "$name" plain 1 UTF8SMTP - "${GOSMTP[@]}" plain "127.0.0.1:$P1" - - - \
    "$FROM" "$RCPT" msg.eml
fi
# (5) explicit StartTLS (the certificate as the only root, ServerName 127.0.0.1), then
# PlainAuth with host 127.0.0.1, the dialled host.
name=go-net-smtp-starttls-auth-plain
if [ -z "$GO" ]; then fail "$name" "$NO_GO"; else
  deliver "$name" secure 1 UTF8SMTPSA alice "${GOSMTP[@]}" starttls "127.0.0.1:$P2" "$CERT" \
    alice wonderland "$FROM" "$RCPT" msg.eml
fi

# --- nodemailer (test/interop_clients/nodemailer-send.js); it closes without QUIT -------------
NODEMAILER=("${LIMIT[@]}" "$NODE" "$HELPERS/nodemailer-send.js" "$NODE_MODULES")
# (6) in clear (ignoreTLS) to the plain server.
name=nodemailer-plain
if [ -n "$NODEMAILER_MISSING" ]; then fail "$name" "$NODEMAILER_MISSING"; else
  deliver "$name" plain 1 ESMTP - "${NODEMAILER[@]}" plain "$P1" - - - "$FROM" "$RCPT" msg.eml
fi
# (7) STARTTLS required, verified with tls.ca, then AUTH PLAIN.
name=nodemailer-starttls-auth-plain
if [ -n "$NODEMAILER_MISSING" ]; then fail "$name" "$NODEMAILER_MISSING"; else
  deliver "$name" secure 1 ESMTPSA alice "${NODEMAILER[@]}" starttls "$P2" "$CERT" \
    alice wonderland "$FROM" "$RCPT" msg.eml
fi

# --- Postfix: a throwaway instance relaying to mailsink --------------------------------------
# pfx_to_secure: relay to the secure server instead: TLS required (encrypt: the certificate is
# not checked; Postfix would not match the IP SAN of [127.0.0.1]), then SASL PLAIN with
# alice's password from an inline map.
pfx_to_secure() {
  "$POSTCONF" -c "$PFX/etc" -e "relayhost = [127.0.0.1]:$P2" \
    "smtp_tls_security_level = encrypt" "smtp_tls_loglevel = 1" \
    "smtp_sasl_auth_enable = yes" \
    "smtp_sasl_password_maps = inline:{ [127.0.0.1]:$P2=alice:wonderland }" \
    "smtp_sasl_security_options = noanonymous" \
    "smtp_sasl_tls_security_options = noanonymous" \
    "smtp_sasl_mechanism_filter = plain"
}
# The submission: Postfix's sendmail with the instance's config (as root, so postdrop honours
# it), -i so that a line holding only "." does not end the message.
PFX_SUBMIT=("${LIMIT[@]}" "$SENDMAIL" -C "$PFX/etc" -i -f "$FROM" -- "$RCPT")

PFX_CHECKS=(postfix-setup postfix-start-relay-plain postfix-relay-plain postfix-stop-relay-plain
            postfix-start-relay-starttls-auth postfix-relay-starttls-auth-plain
            postfix-stop-relay-starttls-auth)
if [ -n "$PFX_MISSING" ]; then
  for name in "${PFX_CHECKS[@]}"; do fail "$name" "$PFX_MISSING"; done
elif ! pfx_setup "$P1" interop-clients > postfix-setup.log 2>&1; then
  fail postfix-setup "setting up the instance's config in $PFX failed"
  details postfix-setup.log
  for name in "${PFX_CHECKS[@]:1}"; do fail "$name" "the instance could not be set up"; done
else
  ok postfix-setup
  # (8) Through Postfix in clear to the plain server: 2 Received fields.
  if pfx_start_check postfix-start-relay-plain; then
    deliver postfix-relay-plain plain 2 ESMTP - "${PFX_SUBMIT[@]}"
    pfx_stop_check postfix-stop-relay-plain
  else
    fail postfix-relay-plain "the Postfix instance did not start"
    fail postfix-stop-relay-plain "the Postfix instance did not start"
  fi
  # (9) The same instance, stopped and reconfigured: STARTTLS and AUTH PLAIN to the secure
  # server.
  if [ -n "$PFX_STARTED" ]; then
    for name in "${PFX_CHECKS[@]:4}"; do
      fail "$name" "the first run of the instance did not stop"
    done
  elif ! pfx_to_secure > postfix-to-secure.log 2>&1; then
    for name in "${PFX_CHECKS[@]:4}"; do
      fail "$name" "postconf for the TLS and SASL relay failed"
    done
    details postfix-to-secure.log
  elif pfx_start_check postfix-start-relay-starttls-auth; then
    if [ -n "$PFX_NO_SASL" ]; then
      fail postfix-relay-starttls-auth-plain "$PFX_NO_SASL"
    else
      deliver postfix-relay-starttls-auth-plain secure 2 ESMTPSA alice "${PFX_SUBMIT[@]}"
    fi
    pfx_stop_check postfix-stop-relay-starttls-auth
  else
    fail postfix-relay-starttls-auth-plain "the Postfix instance did not start"
    fail postfix-stop-relay-starttls-auth "the Postfix instance did not start"
  fi
fi

# --- graceful shutdown -----------------------------------------------------------------------
for server in "${SERVERS[@]}"; do stop_server "$server"; done

finish
