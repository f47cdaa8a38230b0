#!/bin/bash
# test/interop_tls.sh MAILSINK_PATH - drive real SMTP clients over TLS (Python smtplib, swaks,
# curl, openssl s_client) against mailsink, with STARTTLS (RFC 3207) and implicit TLS (RFC 8314),
# verifying a throwaway self-signed certificate, and check every stored message byte for byte.
#
# Four mailsinks run on free loopback ports: one offering STARTTLS, one with implicit TLS, one
# with --tls-required, and one whose --tls-ciphers also allows a legacy cipher; openssl s_client
# limited to one cipher shows which ones the server agrees to. Each check prints "ok - NAME" or "FAIL - NAME: reason" (details follow
# on "#" lines); the last line is "interop-tls: N passed, N failed". Exit status 1 if any check
# failed, 2 on bad usage. A missing client is a failure, never a skip. See
# /work/shared/INTEROP.md for the clients and their pitfalls.
set -u

# shellcheck source-path=SCRIPTDIR source=interop_lib.sh
. "$(dirname "$0")/interop_lib.sh"
begin_suite interop-tls "$@"
DETAIL_LINES=20
# The servers, by role: STARTTLS, implicit TLS, TLS required, a widened cipher list.
make_workdir starttls implicit required legacy

# --- clients (a missing one is reported by each check that needs it) -------------------------
find_clients

cd "$WORK" || exit 1
pick_ports starttls implicit required legacy
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
# The default list plus AES128-SHA (static RSA key exchange, CBC) for a client that has no better.
start_server legacy "${TLS_FLAGS[@]}" --tls-ciphers "ECDHE-RSA-AES128-GCM-SHA256:AES128-SHA"

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

# --- which ciphers the server agrees to --------------------------------------------------------
# openssl s_client -starttls smtp with one protocol version and (for TLS 1.2) one cipher, and no
# input: it runs the handshake, prints "New, VERSION, Cipher is NAME" ("New, (NONE), Cipher is
# (NONE)" when it failed) and quits; exit status 0 only after a handshake. VERSION is the
# cipher's own oldest protocol ("SSLv3" for AES128-SHA), so under TLS 1.2 the session block's
# "    Protocol  : TLSv1.2" tells the protocol (under TLS 1.3 that block is not printed).
# s_client_handshake NAME ROLE ARGS...: that run against ROLE's server, its output in NAME.log.
s_client_handshake() {
  local name=$1 role=$2
  shift 2
  "${LIMIT[@]}" "$OPENSSL" s_client -starttls smtp -connect "127.0.0.1:${PORT[$role]}" "$@" \
    < /dev/null > "$name.log" 2>&1
}

# handshake_works NAME ROLE PROTOCOL CIPHER ARGS...: check NAME: the handshake succeeds with
# PROTOCOL and a cipher whose name starts with CIPHER.
handshake_works() {
  local name=$1 role=$2 protocol=$3 cipher=$4
  shift 4
  need "$name" "$OPENSSL" "$NO_OPENSSL" && server_running "$name" "$role" || return
  if ! s_client_handshake "$name" "$role" "$@"; then
    fail "$name" "the handshake failed (openssl s_client $*)"
    details "$name.log"
  elif ! grep -qE "^ *Protocol *: $protocol\$|^New, $protocol, " "$name.log" ||
    ! grep -qE "^New, [^,]*, Cipher is $cipher" "$name.log"; then
    fail "$name" "expected $protocol with $cipher"
    details "$name.log"
  else
    ok "$name"
  fi
}

# handshake_refused NAME ROLE ARGS...: check NAME: the server refuses the handshake (s_client
# fails without a cipher), and goes on serving.
handshake_refused() {
  local name=$1 role=$2
  shift 2
  need "$name" "$OPENSSL" "$NO_OPENSSL" && server_running "$name" "$role" || return
  if s_client_handshake "$name" "$role" "$@" || ! grep -qF "Cipher is (NONE)" "$name.log"; then
    fail "$name" "the server accepted openssl s_client $*"
    details "$name.log"
  elif ! kill -0 "${PID[$role]}" 2>/dev/null; then
    fail "$name" "the server exited after refusing the handshake"
  else
    ok "$name"
  fi
}

# (12) Static RSA key exchange (no forward secrecy), with CBC or with AES-GCM: refused.
handshake_refused tls12-static-rsa-cbc-refused starttls -tls1_2 -cipher AES128-SHA
handshake_refused tls12-static-rsa-gcm-refused starttls -tls1_2 -cipher AES256-GCM-SHA384
# (13) CBC even with ECDHE (Lucky Thirteen): refused.
handshake_refused tls12-ecdhe-cbc-refused starttls -tls1_2 -cipher ECDHE-RSA-AES128-SHA
# (14) ECDHE with AES-GCM or ChaCha20-Poly1305, and TLS 1.3: served; implicit TLS alike.
handshake_works tls12-ecdhe-aes128-gcm starttls TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256 \
  -tls1_2 -cipher ECDHE-RSA-AES128-GCM-SHA256
handshake_works tls12-ecdhe-chacha20 starttls TLSv1.2 ECDHE-RSA-CHACHA20-POLY1305 \
  -tls1_2 -cipher ECDHE-RSA-CHACHA20-POLY1305
handshake_works tls13 starttls TLSv1.3 TLS_ -tls1_3
name=tls12-implicit-static-rsa-refused
need "$name" "$OPENSSL" "$NO_OPENSSL" && server_running "$name" implicit &&
  if "${LIMIT[@]}" "$OPENSSL" s_client -connect "127.0.0.1:$P2" -tls1_2 -cipher AES128-SHA \
       < /dev/null > "$name.log" 2>&1 || ! grep -qF "Cipher is (NONE)" "$name.log"; then
    fail "$name" "the implicit-TLS server accepted AES128-SHA"
    details "$name.log"
  else
    ok "$name"
  fi
# (15) --tls-ciphers: the list given is the list used. AES128-SHA works where it was added, a
# client that also offers the modern cipher still gets it (server preference), and what the
# list leaves out (ChaCha20 here) is refused.
handshake_works tls-ciphers-flag-allows-aes128-sha legacy TLSv1.2 AES128-SHA \
  -tls1_2 -cipher AES128-SHA
handshake_works tls-ciphers-flag-keeps-preference legacy TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256 \
  -tls1_2 -cipher AES128-SHA:ECDHE-RSA-AES128-GCM-SHA256
handshake_refused tls-ciphers-flag-leaves-out legacy -tls1_2 -cipher ECDHE-RSA-CHACHA20-POLY1305

# --- mailsink's own TLS setup errors ---------------------------------------------------------
# (10) A TLS flag without --tls-cert and --tls-key: usage error, exit 2, naming the flag.
sink_exits tls-flag-without-cert-exit-2 2 '--tls-implicit' \
  "the usage error does not name --tls-implicit" --listen 127.0.0.1:0 --tls-implicit

# (11) A file that is not a certificate: a clear error and exit 1, before accepting clients.
echo "not a certificate" > bad-cert.pem
sink_exits bad-certificate-exit-1 1 '^mailsink: ..*' "mailsink exited 1 without an error message" \
  --listen 127.0.0.1:0 --tls-cert bad-cert.pem --tls-key "$KEY"

# (16) --tls-ciphers and --tls-ciphersuites without --tls-cert: usage error, exit 2.
sink_exits tls-ciphers-without-cert-exit-2 2 '--tls-ciphers' \
  "the usage error does not name --tls-ciphers" --listen 127.0.0.1:0 --tls-ciphers AES128-SHA
sink_exits tls-ciphersuites-without-cert-exit-2 2 '--tls-ciphersuites' \
  "the usage error does not name --tls-ciphersuites" --listen 127.0.0.1:0 \
  --tls-ciphersuites TLS_AES_128_GCM_SHA256

# (17) A cipher list or suite OpenSSL does not know: a clear error and exit 1.
sink_exits bad-tls-ciphers-exit-1 1 '^mailsink: .*tls_ciphers' \
  "mailsink did not name tls_ciphers" --listen 127.0.0.1:0 "${TLS_FLAGS[@]}" \
  --tls-ciphers NO-SUCH-CIPHER
sink_exits bad-tls-ciphersuites-exit-1 1 '^mailsink: .*tls_ciphersuites' \
  "mailsink did not name tls_ciphersuites" --listen 127.0.0.1:0 "${TLS_FLAGS[@]}" \
  --tls-ciphersuites TLS_AES_128_GCM_SHA256:TLS_NO_SUCH_SUITE

# --- graceful shutdown -----------------------------------------------------------------------
for role in "${SERVERS[@]}"; do stop_server "$role"; done

finish
