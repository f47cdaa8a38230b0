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

# shellcheck source-path=SCRIPTDIR source=interop_lib.sh
. "$(dirname "$0")/interop_lib.sh"
begin_suite interop-tls "$@"
DETAIL_LINES=20
# The servers, by role: STARTTLS, implicit TLS, TLS required.
make_workdir starttls implicit required

# --- clients (a missing one is reported by each check that needs it) -------------------------
find_clients

cd "$WORK" || exit 1
pick_ports starttls implicit required
make_certificate "every TLS check needs a certificate"

# --- test messages (CRLF line ends) ----------------------------------------------------------
# The INTEROP.md probe (all the usual headers, so no client adds one, and a body line starting
# with '.', which tests dot-stuffing) as msg.eml, and as msg-nofinal.eml for swaks.
write_probe_message
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
TLS_FLAGS=(--tls-cert "$CERT" --tls-key "$KEY")
start_server starttls "${TLS_FLAGS[@]}"
start_server implicit "${TLS_FLAGS[@]}" --tls-implicit
start_server required "${TLS_FLAGS[@]}" --tls-required

# --- delivery checking -----------------------------------------------------------------------
# verify_stored NAME STORED EXPECTED: STORED must be exactly one Received field followed by the
# bytes of EXPECTED, and that field must say the session was TLS: " with ESMTPS " (RFC 3848)
# and "(using TLSv1.". Prints the reason (first line) and details, and returns 1 on a mismatch.
verify_stored() {
  local name=$1
  strip_received "$name" "$2" 1 "$3" &&
    received_starts "$name" "Received: from localhost " &&  # the EHLO after TLS
    received_has "$name" " with ESMTPS " &&
    received_has "$name" "(using TLSv1."
}

# expect_delivery NAME ROLE EXPECTED CMD...: run CMD (already bounded by timeout); it must
# succeed and leave exactly one new file in ROLE's Maildir, which must pass verify_stored.
expect_delivery() {
  local name=$1 role=$2 expected=$3
  shift 3
  server_running "$name" "$role" && run_client "$name" "$role" "$@" &&
    expect_new "$name" "$role" 1 &&
    verify "$name" verify_stored "$name" "$(stored_path "$name" "$role")" "$expected" &&
    ok "$name"
}

# --- the checks ------------------------------------------------------------------------------
FROM=alice@example.test
RCPT=bob@example.test
P1=${PORT[starttls]}
P2=${PORT[implicit]}
P3=${PORT[required]}
SWAKS_ARGS=(--helo localhost --from "$FROM" --to "$RCPT" --data @msg-nofinal.eml)
CURL_ARGS=(-sS --mail-from "$FROM" --mail-rcpt "$RCPT" --cacert "$CERT" -T msg.eml)

# (1) Python smtplib, STARTTLS, verifying the IP SAN.
need "python-smtplib-starttls" "$PY" "$NO_PY" &&
  expect_delivery "python-smtplib-starttls" starttls msg.eml \
    "${LIMIT[@]}" "$PY" smtplib-tls.py starttls "$P1" "$CERT" "$FROM" "$RCPT" msg.eml

# (2) Python smtplib.SMTP_SSL, implicit TLS.
need "python-smtplib-implicit" "$PY" "$NO_PY" &&
  expect_delivery "python-smtplib-implicit" implicit msg.eml \
    "${LIMIT[@]}" "$PY" smtplib-tls.py implicit "$P2" "$CERT" "$FROM" "$RCPT" msg.eml

# (3) swaks, STARTTLS required and verified (swaks exits 29 if verification fails).
need "swaks-starttls" "$SWAKS" "$NO_SWAKS" &&
  expect_delivery "swaks-starttls" starttls msg.eml "${LIMIT[@]}" "$SWAKS" \
    --server "127.0.0.1:$P1" --tls --tls-verify --tls-ca-path "$CERT" "${SWAKS_ARGS[@]}"

# (4) swaks --tlsc, implicit TLS, verified.
need "swaks-implicit" "$SWAKS" "$NO_SWAKS" &&
  expect_delivery "swaks-implicit" implicit msg.eml "${LIMIT[@]}" "$SWAKS" \
    --server "127.0.0.1:$P2" --tlsc --tls-verify --tls-ca-path "$CERT" "${SWAKS_ARGS[@]}"

# (5) curl, STARTTLS required (--ssl-reqd) and verified; the URL path is the EHLO name.
need "curl-starttls" "$CURL" "$NO_CURL" &&
  expect_delivery "curl-starttls" starttls msg.eml "${LIMIT[@]}" "$CURL" "${CURL_ARGS[@]}" \
    --ssl-reqd --url "smtp://127.0.0.1:$P1/localhost"

# (6) curl, smtps:// (implicit TLS), verified.
need "curl-implicit" "$CURL" "$NO_CURL" &&
  expect_delivery "curl-implicit" implicit msg.eml "${LIMIT[@]}" "$CURL" "${CURL_ARGS[@]}" \
    --url "smtps://127.0.0.1:$P2/localhost"

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
need "openssl-s_client-starttls" "$OPENSSL" "$NO_OPENSSL" &&
  expect_delivery "openssl-s_client-starttls" starttls msg.eml "${LIMIT[@]}" "$OPENSSL" s_client \
    -starttls smtp -connect "127.0.0.1:$P1" -CAfile "$CERT" -verify_return_error \
    -verify_ip 127.0.0.1 -ign_eof -nocommands < <(s_client_session)

# (7b) openssl s_client on the implicit-TLS port: the same session, TLS from the first byte.
need "openssl-s_client-implicit" "$OPENSSL" "$NO_OPENSSL" &&
  expect_delivery "openssl-s_client-implicit" implicit msg.eml "${LIMIT[@]}" "$OPENSSL" s_client \
    -connect "127.0.0.1:$P2" -CAfile "$CERT" -verify_return_error \
    -verify_ip 127.0.0.1 -ign_eof -nocommands < <(s_client_session)

# (8) The --tls-required server: plain swaks must be refused with 530 and store nothing.
# swaks prints each server line as "<- " ("<~ " under TLS, "<** " or "<~* " for an error).
name=swaks-plain-to-tls-required
need "$name" "$SWAKS" "$NO_SWAKS" &&
  refused "$name" required '^ *<[-~*]+ 530[ -]' \
    "${LIMIT[@]}" "$SWAKS" --server "127.0.0.1:$P3" "${SWAKS_ARGS[@]}"

# (9) The --tls-required server: swaks with STARTTLS delivers.
need "swaks-starttls-to-tls-required" "$SWAKS" "$NO_SWAKS" &&
  expect_delivery "swaks-starttls-to-tls-required" required msg.eml "${LIMIT[@]}" "$SWAKS" \
    --server "127.0.0.1:$P3" --tls --tls-verify --tls-ca-path "$CERT" "${SWAKS_ARGS[@]}"

# --- mailsink's own TLS setup errors ---------------------------------------------------------
# (10) A TLS flag without --tls-cert and --tls-key: usage error, exit 2, naming the flag.
sink_exits tls-flag-without-cert-exit-2 2 '--tls-implicit' \
  "the usage error does not name --tls-implicit" --listen 127.0.0.1:0 --tls-implicit

# (11) A file that is not a certificate: a clear error and exit 1, before accepting clients.
echo "not a certificate" > bad-cert.pem
sink_exits bad-certificate-exit-1 1 '^mailsink: ..*' "mailsink exited 1 without an error message" \
  --listen 127.0.0.1:0 --tls-cert bad-cert.pem --tls-key "$KEY"

# --- graceful shutdown -----------------------------------------------------------------------
for role in "${SERVERS[@]}"; do stop_server "$role"; done

finish
