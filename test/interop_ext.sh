#!/bin/bash
# test/interop_ext.sh MAILSINK_PATH - the ESMTP extensions of issue 13 with real clients:
# CHUNKING/BDAT and BINARYMIME (RFC 3030), DSN (RFC 3461), REQUIRETLS (RFC 8689), AUTH= on
# MAIL (RFC 4954 §5), and parameters and EHLO keywords of the user's own, through mailsink's
# flags (--binarymime, --dsn, --requiretls, --mail-parameter, --rcpt-parameter,
# --ehlo-keyword), its --json fields and its --verbose transcript of BDAT.
#
# The clients:
#   - Python smtplib (test/interop_ext.py) with mail_options and rcpt_options: DSN with xtext
#     escapes, REQUIRETLS over STARTTLS (a throwaway certificate, verified) and in clear, AUTH=
#     with and without AUTH;
#   - raw sockets (test/interop_ext.py): BDAT with binary content (NUL, bare CR, bare LF),
#     pipelined chunks, BDAT 0 LAST, a chunk holding CRLF.CRLF and commands, DATA mixed with
#     BDAT, DATA after BODY=BINARYMIME;
#   - a throwaway Postfix instance (as in interop_clients.sh: its own config, queue and log in a
#     temp dir, "postfix -c DIR", "sendmail -C DIR") relaying to mailsink: sendmail -N -R -V,
#     whose NOTIFY, RET, ENVID and ORCPT must reach --json exactly;
#   - Exim (Debian's exim4-daemon-light, unpacked by .ci/exim.sh into BUILD/exim by
#     `make deps`, never installed), with hosts_try_chunking: a real BDAT sender, in clear and
#     over STARTTLS (the certificate verified), whose message must arrive byte for byte.
# Five mailsinks run on free loopback ports, each with a Maildir and --json:
#   ext    --dsn --binarymime --max-size 20000 --mail-parameter XOORG --rcpt-parameter XRCPT
#          --ehlo-keyword "XFOO bar baz" --auth alice:wonderland --auth-insecure --verbose
#   plain  the defaults: CHUNKING on, no BINARYMIME, no DSN
#   tls    STARTTLS with a throwaway certificate and --requiretls
#   relay  --dsn --verbose: Postfix and Exim deliver here
#   limits --max-recipients 7
# A stored message must be N Received fields followed by exactly the bytes sent.
#
# Each check prints "ok - NAME" or "FAIL - NAME: reason" (details follow on "#" lines); the last
# line is "interop-ext: N passed, N failed". Exit status 1 if any check failed, 2 on bad usage.
# A missing client is a failure naming its package or script, never a skip. The Postfix and
# Exim checks need root.
set -u

HELPER=$(cd "$(dirname "$0")" && pwd)/interop_ext.py
# shellcheck source-path=SCRIPTDIR source=interop_lib.sh
. "$(dirname "$0")/interop_lib.sh"
begin_suite interop-ext "$@"
# Exim is unpacked next to mailsink's build: BUILD/exim (make deps).
EXIM_DIR=$(dirname "$SINK")/exim
EXIM=$EXIM_DIR/usr/sbin/exim4

make_workdir ext plain tls relay limits
# The Postfix instance's own temp dir, which the postfix user must be able to enter; Exim's
# spool and log, which its Debian-exim user must be able to write.
PFX=
PFX_STARTED=
EXIM_WORK=
cleanup_hook() {
  pfx_cleanup
  [ -z "$EXIM_WORK" ] || rm -rf "$EXIM_WORK"
}
if ! PFX=$(mktemp -d "${TMPDIR:-/tmp}/interop-ext-postfix.XXXXXX") || ! chmod 755 "$PFX" ||
   ! EXIM_WORK=$(mktemp -d "${TMPDIR:-/tmp}/interop-ext-exim.XXXXXX") ||
   ! chmod 755 "$EXIM_WORK"; then
  echo "interop-ext: mktemp failed" >&2
  exit 1
fi

find_clients
pfx_find

cd "$WORK" || exit 1
make_certificate "the tls server needs a certificate"
write_probe_message

# The helper under $LIMIT, as a command for run_client.
PYC=("${LIMIT[@]}" "$PY" "$HELPER")

# --- starting the servers --------------------------------------------------------------------
EXT_MAX_SIZE=20000
start_server ext --json --verbose --dsn --binarymime --max-size "$EXT_MAX_SIZE" \
  --mail-parameter XOORG --rcpt-parameter XRCPT --ehlo-keyword "XFOO bar baz" \
  --auth alice:wonderland --auth-insecure
start_server plain --json
start_server tls --json --tls-cert "$CERT" --tls-key "$KEY" --requiretls
start_server relay --json --verbose --dsn
start_server limits --json --max-recipients 7

# --- helpers ---------------------------------------------------------------------------------
# json_is NAME SERVER FILE KEY=JSON...: the --json line of SERVER for the stored FILE has each
# KEY equal to JSON (interop_ext.py json).
json_is() {
  local name=$1 server=$2 file=$3
  shift 3
  "${PYC[@]}" json "$WORK/$server.out" "$file" "$@"
}

# delivered NAME SERVER HOPS EXPECTED KEY=JSON... - after run_client NAME SERVER: exactly one
# new file, HOPS Received fields then exactly the bytes of EXPECTED, and the --json checks.
delivered() {
  local name=$1 server=$2 hops=$3 expected=$4 stored
  shift 4
  expect_new "$name" "$server" 1 || return 1
  stored=$(stored_path "$name" "$server")
  verify "$name" strip_received "$name" "$stored" "$hops" "$expected" &&
    verify "$name" json_is "$name" "$server" "$stored" "$@" && ok "$name"
}

# deliver_py NAME SERVER HOPS EXPECTED MODE-ARGS -- KEY=JSON...: the helper, then delivered.
deliver_py() {
  local name=$1 server=$2 hops=$3 expected=$4 args=()
  shift 4
  while [ $# -gt 0 ] && [ "$1" != -- ]; do args+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  need "$name" "$PY" "$NO_PY" && server_running "$name" "$server" &&
    run_client "$name" "$server" "${PYC[@]}" "${args[@]}" &&
    delivered "$name" "$server" "$hops" "$expected" "$@"
}

# refused_py NAME SERVER ARGS...: the helper's session (which checks each refusal itself)
# succeeds, and SERVER stores nothing.
refused_py() {
  local name=$1 server=$2
  shift 2
  need "$name" "$PY" "$NO_PY" && server_running "$name" "$server" &&
    run_client "$name" "$server" "${PYC[@]}" "$@" && expect_new "$name" "$server" 0 && ok "$name"
}

# log_has NAME FILE PATTERN WHY: FILE has a line matching the grep -E PATTERN, else fail NAME.
log_has() {
  grep -Eq -- "$3" "$2" && return 0
  echo "$4"
  details "$2"
  return 1
}

# ehlo_has NAME FILE KEYWORD... / ehlo_lacks: the EHLO keyword list in FILE has (lacks) each.
ehlo_has() {
  local file=$1 keyword
  shift
  for keyword in "$@"; do
    grep -qx -- "$keyword" "$file" || { echo "the EHLO reply lacks '$keyword'"; details "$file"
                                        return 1; }
  done
}
ehlo_lacks() {
  local file=$1 keyword
  shift
  for keyword in "$@"; do
    ! grep -qx -- "$keyword" "$file" || { echo "the EHLO reply offers '$keyword'"
                                          details "$file"; return 1; }
  done
}

# --- mailsink's command line -----------------------------------------------------------------
sink_exits cli-requiretls-needs-tls 2 'requiretls needs --tls-cert and --tls-key' \
  "no message that --requiretls needs --tls-cert and --tls-key" --requiretls
sink_exits cli-mail-parameter-keyword 2 'mail-parameter needs a parameter keyword' \
  "no message about the bad keyword" --mail-parameter 'X_BAD'
sink_exits cli-rcpt-parameter-twice 2 "rcpt-parameter gives 'XRCPT' a second time" \
  "no message about the repeated keyword" --rcpt-parameter XRCPT --rcpt-parameter xrcpt
sink_exits cli-mail-parameter-own 2 'mail-parameter cannot take RET: it belongs to an extension' \
  "no message that RET belongs to DSN" --mail-parameter ret
sink_exits cli-rcpt-parameter-own 2 'rcpt-parameter cannot take NOTIFY: it belongs to an ext' \
  "no message that NOTIFY belongs to DSN" --rcpt-parameter NOTIFY
sink_exits cli-ehlo-keyword-own 2 'ehlo-keyword cannot add CHUNKING: mailsink decides' \
  "no message that CHUNKING is mailsink's own" --ehlo-keyword 'chunking 1'
sink_exits cli-ehlo-keyword-syntax 2 'ehlo-keyword needs one space between parameters' \
  "no message about the double space" --ehlo-keyword 'XFOO  bar'
sink_exits cli-ehlo-keyword-keyword 2 'ehlo-keyword needs an EHLO keyword' \
  "no message about the bad keyword" --ehlo-keyword '-XFOO'
name=cli-help-extensions
if "${LIMIT[@]}" "$SINK" --help > "$name.log" 2>&1 &&
   verify "$name" log_has "$name" "$name.log" '^  --ehlo-keyword LINE' \
     "--help lacks --ehlo-keyword" &&
   verify "$name" log_has "$name" "$name.log" '^  --binarymime ' "--help lacks --binarymime"; then
  ok "$name"
elif [ ! -s "$name.log" ]; then fail "$name" "mailsink --help failed"; fi

# --- EHLO: what each server offers -----------------------------------------------------------
# RFC 3030 §2 (CHUNKING, on by default), §3 (BINARYMIME, opt-in); RFC 3461 §4 (DSN, opt-in);
# --ehlo-keyword lines as given; RFC 8689 §2 (REQUIRETLS only inside TLS).
name=ehlo-ext-rfc3030-rfc3461-s4
if need "$name" "$PY" "$NO_PY" && run_client "$name" ext "${PYC[@]}" ehlo "${PORT[ext]}" &&
   verify "$name" ehlo_has "$name.log" CHUNKING BINARYMIME DSN "XFOO bar baz"; then ok "$name"; fi
name=ehlo-defaults-rfc3030-s2
if need "$name" "$PY" "$NO_PY" && run_client "$name" plain "${PYC[@]}" ehlo "${PORT[plain]}" &&
   verify "$name" ehlo_has "$name.log" CHUNKING &&
   verify "$name" ehlo_lacks "$name.log" BINARYMIME DSN REQUIRETLS XFOO; then ok "$name"; fi
# RFC 9422 (LIMITS): RCPTMAX tells --max-recipients, the default 100 or the one given.
name=ehlo-limits-rcptmax-rfc9422
if need "$name" "$PY" "$NO_PY" && run_client "$name" limits "${PYC[@]}" ehlo "${PORT[limits]}" &&
   verify "$name" ehlo_has "$name.log" "LIMITS RCPTMAX=7" &&
   verify "$name" ehlo_has ehlo-defaults-rfc3030-s2.log "LIMITS RCPTMAX=100"; then ok "$name"; fi
name=ehlo-requiretls-rfc8689-s2
if need "$name" "$PY" "$NO_PY" &&
   run_client "$name" tls "${PYC[@]}" ehlo-starttls "${PORT[tls]}" "$CERT" &&
   verify "$name" ehlo_has "$name.log" "tls REQUIRETLS" "clear STARTTLS" &&
   verify "$name" ehlo_lacks "$name.log" "clear REQUIRETLS"; then ok "$name"; fi

# --- DSN with smtplib (RFC 3461) -------------------------------------------------------------
# §4.3 RET and §4.4 ENVID on MAIL, §4.1 NOTIFY and §4.2 ORCPT on RCPT; ENVID and ORCPT's address
# are xtext (§4): "+2B" is '+', "+3D" is '='.
deliver_py dsn-smtplib-rfc3461-s4 ext 1 msg.eml smtplib "${PORT[ext]}" msg.eml \
  --mail-option RET=HDRS --mail-option ENVID=env+2Bid+3D1 \
  --rcpt bob@example.test --rcpt-option NOTIFY=SUCCESS,FAILURE \
  --rcpt-option "ORCPT=rfc822;bob+2Bdsn@example.test" \
  --rcpt carol@example.test --rcpt-option NOTIFY=NEVER -- \
  'ret="HDRS"' 'envid="env+id=1"' 'to=["bob@example.test","carol@example.test"]' \
  'rcpt_options.0.notify=["SUCCESS","FAILURE"]' \
  'rcpt_options.0.orcpt="rfc822;bob+dsn@example.test"' \
  'rcpt_options.1.notify=["NEVER"]' 'rcpt_options.1.orcpt=null' 'body="7BIT"' \
  'chunked=false'
# A long address with NOTIFY and ORCPT: the RCPT line (553 octets here) passes RFC 5321's 512,
# which extensions may raise (§4.5.3.1.4); DSN raises it by 500 for RCPT (RFC 3461 §4, as is
# MAIL's by 100 for RET and ENVID), and Postfix relaying such an address sends such a line.
LONG_ADDR=$(printf 'l%.0s' {1..64})@$(printf 'd%.0s' {1..59}).$(printf 'd%.0s' {1..59})
LONG_ADDR+=.$(printf 'd%.0s' {1..59}).test
deliver_py dsn-long-rcpt-line-rfc3461-s4 ext 1 msg.eml smtplib "${PORT[ext]}" msg.eml \
  --rcpt "$LONG_ADDR" --rcpt-option NOTIFY=SUCCESS,FAILURE,DELAY \
  --rcpt-option "ORCPT=rfc822;$LONG_ADDR" -- "to=[\"$LONG_ADDR\"]" \
  "rcpt_options.0.orcpt=\"rfc822;$LONG_ADDR\""
# No DSN parameters given: the fields are null.
deliver_py dsn-absent-json-null ext 1 msg.eml smtplib "${PORT[ext]}" msg.eml \
  --rcpt bob@example.test -- 'ret=null' 'envid=null' 'rcpt_options.0.notify=null' \
  'rcpt_options.0.orcpt=null' 'requiretls=false' 'auth=null'
# §4.1: NEVER with anything else, an unknown NOTIFY word; §4.3: RET neither FULL nor HDRS; §4.2:
# ORCPT without ';'; §4.4: an ENVID with a bad xtext escape: 501 each.
refused_py dsn-syntax-501-rcpt-rfc3461-s4.1-s4.2 ext commands "${PORT[ext]}" \
  "250:MAIL FROM:<alice@example.test>" \
  "501:RCPT TO:<bob@example.test> NOTIFY=NEVER,SUCCESS" \
  "501:RCPT TO:<bob@example.test> NOTIFY=SOMETIMES" \
  "501:RCPT TO:<bob@example.test> ORCPT=rfc822"
refused_py dsn-syntax-501-mail-rfc3461-s4.3-s4.4 ext commands "${PORT[ext]}" \
  "501:MAIL FROM:<alice@example.test> RET=SOME" \
  "501:MAIL FROM:<alice@example.test> ENVID=a+ZZb"
# DSN off (the default): the parameters are refused as unknown, 555 (RFC 5321 §4.1.1.11).
refused_py dsn-off-555 plain commands "${PORT[plain]}" \
  "555:MAIL FROM:<alice@example.test> RET=HDRS" \
  "250:MAIL FROM:<alice@example.test>" \
  "555:RCPT TO:<bob@example.test> NOTIFY=SUCCESS"

# --- parameters of the user's own -----------------------------------------------------------
deliver_py user-parameters-json ext 1 msg.eml smtplib "${PORT[ext]}" msg.eml \
  --mail-option XOORG=org.example --rcpt bob@example.test --rcpt-option XRCPT -- \
  'mail_params.XOORG="org.example"' 'rcpt_options.0.params.XRCPT=""'
refused_py user-parameters-unknown-555 ext commands "${PORT[ext]}" \
  "555:MAIL FROM:<alice@example.test> XOTHER=1" \
  "250:MAIL FROM:<alice@example.test> XOORG=1" \
  "555:RCPT TO:<bob@example.test> XOORG=1"

# --- AUTH= on MAIL (RFC 4954 §5) ------------------------------------------------------------
# Trusted only after AUTH; otherwise recorded as "<>". The value is xtext: "+2B" is '+'.
deliver_py auth-param-untrusted-rfc4954-s5 ext 1 msg.eml smtplib "${PORT[ext]}" msg.eml \
  --mail-option AUTH=carol+2Bx@example.test --rcpt bob@example.test -- \
  'auth="<>"' 'auth_user=null'
deliver_py auth-param-trusted-rfc4954-s5 ext 1 msg.eml smtplib "${PORT[ext]}" msg.eml \
  --login alice:wonderland --mail-option AUTH=carol+2Bx@example.test --rcpt bob@example.test -- \
  'auth="carol+x@example.test"' 'auth_user="alice"'

# --- REQUIRETLS (RFC 8689) ------------------------------------------------------------------
# §2: the MAIL parameter over TLS is recorded; in clear it is refused with 530 (5.7.10,
# encryption needed), and nothing is stored.
deliver_py requiretls-starttls-rfc8689-s2 tls 1 msg.eml smtplib "${PORT[tls]}" msg.eml \
  --starttls "$CERT" --mail-option REQUIRETLS --rcpt bob@example.test -- 'requiretls=true'
refused_py requiretls-clear-refused-rfc8689-s2 tls smtplib "${PORT[tls]}" msg.eml \
  --mail-option REQUIRETLS --rcpt bob@example.test --mail-refused 530

# --- BDAT over a raw socket (RFC 3030) ------------------------------------------------------
# §3: BINARYMIME content (NUL, bare CR, bare LF, no final CRLF) arrives byte for byte.
deliver_py bdat-binarymime-byte-exact-rfc3030-s3 ext 1 binary.eml binary "${PORT[ext]}" \
  binary.eml -- 'body="BINARYMIME"' 'chunked=true'
# §4.2: MAIL, RCPT and both chunks in one write.
deliver_py bdat-pipelined-rfc3030-s4.2 ext 1 pipelined.eml pipelined "${PORT[ext]}" \
  pipelined.eml -- 'chunked=true' 'body="7BIT"'
# §2: a last chunk of size 0.
deliver_py bdat-zero-last-rfc3030-s2 ext 1 zero.eml bdat-zero "${PORT[ext]}" zero.eml -- \
  'chunked=true' 'body="8BITMIME"'
# §2: a chunk is counted octets, never searched for the end of data: the commands in it stay
# content, and only one message is stored (the helper checks QUIT's 221 comes next).
deliver_py bdat-no-smuggling-rfc3030-s2 ext 1 smuggle.eml smuggle "${PORT[ext]}" smuggle.eml \
  -- 'to=["bob@example.test"]' 'from="alice@example.test"'
# The default server (CHUNKING, no BINARYMIME) takes BDAT too.
deliver_py bdat-default-server-rfc3030-s2 plain 1 zero.eml bdat-zero "${PORT[plain]}" zero.eml \
  -- 'chunked=true'
# A client gone in the middle of a chunk loses its partial message and nothing else: nothing is
# stored, and the next session delivers (the partial octets are never shown, at most counted).
refused_py bdat-vanish-mid-chunk-rfc3030-s2 ext vanish "${PORT[ext]}"
deliver_py bdat-after-vanish-rfc3030-s2 ext 1 pipelined.eml pipelined "${PORT[ext]}" \
  pipelined.eml -- 'chunked=true'
# The size limit counts across chunks (RFC 3030 §2 with RFC 1870): 552 for the chunk past it,
# and the session goes on: only the small message after it is stored.
deliver_py bdat-size-limit-552-rfc3030-s2 ext 1 small.eml oversize "${PORT[ext]}" \
  "$EXT_MAX_SIZE" small.eml -- 'chunked=true'
# §2: DATA and BDAT may not be mixed in one transaction; §3: BINARYMIME needs BDAT.
refused_py bdat-then-data-503-rfc3030-s2 ext mix "${PORT[ext]}"
refused_py binarymime-data-503-rfc3030-s3 ext binarymime-data "${PORT[ext]}"
# --verbose shows each chunk as "C: <N octets>" after its BDAT line, never its bytes; the chunk
# of the client that vanished as "C: <10 of 1000 octets>".
name=bdat-verbose-octets
ERR=$WORK/ext.err
CHUNK_TEXT='bare LF\|Sent in one write\|MAIL FROM:<evil\|vanishing'
if verify "$name" log_has "$name" "$ERR" ' C: BDAT 100$' "no 'C: BDAT 100' line" &&
   verify "$name" log_has "$name" "$ERR" ' C: <100 octets>$' "no 'C: <100 octets>' line" &&
   verify "$name" log_has "$name" "$ERR" ' C: <0 octets>$' "no 'C: <0 octets>' line" &&
   verify "$name" log_has "$name" "$ERR" ' C: <10 of 1000 octets>$' \
     "no 'C: <10 of 1000 octets>' line for the client gone mid-chunk"; then
  if grep -q "$CHUNK_TEXT" "$ERR"; then
    fail "$name" "the transcript shows a chunk's bytes"
    grep -n "$CHUNK_TEXT" "$ERR" | head -n 5 | sed 's/^/#   /'
  elif grep ' C: <.*octets>' "$ERR" | grep -qv ' C: <\([0-9]*\|10 of 1000\) octets>$'; then
    fail "$name" "a size line other than '<N octets>' and the vanished client's"
    grep ' C: <.*octets>' "$ERR" | head -n 10 | sed 's/^/#   /'
  else
    ok "$name"
  fi
fi

# --- DSN through a throwaway Postfix instance (RFC 3461) ------------------------------------
# As in interop_clients.sh: main.cf from nothing, Debian's master.cf without the listening smtpd
# and without chroot, queue and log under $PFX; relayhost is the relay server. Postfix passes
# the submission's -N, -R and -V on as NOTIFY, RET and ENVID (xtext), and adds
# ORCPT=rfc822;RECIPIENT, since the relay offers DSN.
# wait_new NAME SERVER SECONDS: until a file appears in SERVER's Maildir (flushing the Postfix
# queue every 5 s), at most SECONDS.
wait_new() {
  local deadline=$(( $(millis) + $3 * 1000 )) flush=$(( $(millis) + 5000 ))
  while :; do
    list_new "$1" "$2"
    [ -s "$1.new" ] && return 0
    [ "$(millis)" -lt "$deadline" ] || return 1
    if [ -n "$PFX_STARTED" ] && [ "$(millis)" -ge "$flush" ]; then
      timeout -k 5 20 "$POSTQUEUE" -c "$PFX/etc" -f > /dev/null 2>&1
      flush=$(( $(millis) + 5000 ))
    fi
    sleep 0.1
  done
}
ENVID='interop-ext+env=1'
name=postfix-dsn-rfc3461-s4
if [ -n "$PFX_MISSING" ]; then
  fail "$name" "$PFX_MISSING"
elif ! pfx_setup "${PORT[relay]}" interop-ext > postfix-setup.log 2>&1; then
  fail "$name" "setting up the Postfix instance in $PFX failed"; details postfix-setup.log
elif ! pfx_launch postfix-start.log; then
  fail "$name" "postfix -c $PFX/etc check/start failed"; details postfix-start.log "$PFX/maillog"
elif server_running "$name" relay &&
     run_client "$name" relay "${LIMIT[@]}" "$SENDMAIL" -C "$PFX/etc" -i -f alice@example.test \
       -N success,delay,failure -R hdrs -V "$ENVID" -- bob@example.test < msg.eml; then
  if ! wait_new "$name" relay 30; then
    fail "$name" "nothing reached the relay server 30 s after the submission"
    timeout -k 5 20 "$POSTQUEUE" -c "$PFX/etc" -p 2>&1 | sed 's/^/#   /'
    details "$PFX/maillog"
  else
    # On the wire (the relay's transcript): Postfix writes NOTIFY's words in its own order,
    # whatever the order given to -N, and ENVID as xtext. --json must hold exactly those.
    if verify "$name" log_has "$name" "$WORK/relay.err" \
         ' C: MAIL FROM:<alice@example.test> .*RET=HDRS' "Postfix's MAIL has no RET=HDRS" &&
       verify "$name" log_has "$name" "$WORK/relay.err" \
         ' C: MAIL FROM:<alice@example.test> .*ENVID=interop-ext\+2Benv\+3D1' \
         "Postfix's MAIL has no ENVID=interop-ext+2Benv+3D1" &&
       verify "$name" log_has "$name" "$WORK/relay.err" \
         ' C: RCPT TO:<bob@example.test> .*NOTIFY=SUCCESS,FAILURE,DELAY' \
         "Postfix's RCPT has no NOTIFY=SUCCESS,FAILURE,DELAY" &&
       verify "$name" log_has "$name" "$WORK/relay.err" \
         ' C: RCPT TO:<bob@example.test> .*ORCPT=rfc822;bob@example.test' \
         "Postfix's RCPT has no ORCPT=rfc822;bob@example.test"; then
      delivered "$name" relay 2 msg.eml 'ret="HDRS"' "envid=\"$ENVID\"" \
        'rcpt_options.0.notify=["SUCCESS","FAILURE","DELAY"]' \
        'rcpt_options.0.orcpt="rfc822;bob@example.test"' 'to=["bob@example.test"]'
    fi
  fi
fi
if [ -n "$PFX_STARTED" ]; then
  timeout -k 5 20 "$POSTFIX" -c "$PFX/etc" stop > /dev/null 2>&1 && pfx_wait_stopped 15 &&
    PFX_STARTED=
fi

# --- Exim: a real BDAT sender (RFC 3030) ---------------------------------------------------
# Debian's exim4-daemon-light binary, unpacked by .ci/exim.sh (make deps), never installed.
# Its own config: a manualroute router sending everything to the relay server through an smtp
# transport with hosts_try_chunking (the domain tls.example.test to the tls server, STARTTLS
# required), spool and log under $EXIM_WORK, delivered in the foreground (-odf). Exim adds its
# own Received field (2 in all) and nothing else, since the message has From, To, Date and
# Message-ID and root is a trusted user.
exim_config() {
  mkdir -p "$EXIM_WORK/spool" "$EXIM_WORK/log" &&
    chown Debian-exim:Debian-exim "$EXIM_WORK/spool" "$EXIM_WORK/log" || return 1
  # The transport runs as Debian-exim, which cannot enter $WORK: the certificate goes here.
  cp "$CERT" "$EXIM_WORK/ca.pem" && chmod 644 "$EXIM_WORK/ca.pem" || return 1
  cat > "$EXIM_WORK/exim.conf" <<CONF || return 1
exim_path = $EXIM
spool_directory = $EXIM_WORK/spool
log_file_path = $EXIM_WORK/log/%slog
primary_hostname = exim.localdomain
qualify_domain = example.test
keep_environment =
begin routers
to_tls:
  driver = manualroute
  domains = tls.example.test
  transport = to_tls
  route_list = * 127.0.0.1 byname
  self = send
to_relay:
  driver = manualroute
  transport = to_relay
  route_list = * 127.0.0.1 byname
  self = send
begin transports
to_relay:
  driver = smtp
  port = ${PORT[relay]}
  hosts_try_chunking = *
  hosts_avoid_tls = *
  allow_localhost
to_tls:
  driver = smtp
  port = ${PORT[tls]}
  hosts_try_chunking = *
  hosts_require_tls = *
  tls_verify_certificates = $EXIM_WORK/ca.pem
  tls_verify_hosts = *
  tls_verify_cert_hostnames = *
  allow_localhost
begin retry
* * F,1m,10s
CONF
}
EXIM_CHECKS=(exim-bdat-byte-exact-rfc3030-s2 exim-bdat-transcript exim-starttls-bdat-rfc3030-s2)
EXIM_MISSING=
if [ ! -x "$EXIM" ]; then
  EXIM_MISSING="no Exim binary at $EXIM: run 'make deps' as root (.ci/exim.sh unpacks Debian's"
  EXIM_MISSING+=" exim4-daemon-light there)"
elif ! getent passwd Debian-exim > /dev/null; then
  EXIM_MISSING="the Debian-exim user is missing: run 'make deps' as root (.ci/exim.sh)"
elif [ "$(id -u)" != 0 ]; then
  EXIM_MISSING="the Exim checks must run as root (Exim's spool belongs to Debian-exim)"
elif ! exim_config > exim-config.log 2>&1; then
  EXIM_MISSING="writing Exim's config and spool under $EXIM_WORK failed"
fi
name=${EXIM_CHECKS[0]}
if [ -n "$EXIM_MISSING" ]; then
  for name in "${EXIM_CHECKS[@]}"; do fail "$name" "$EXIM_MISSING"; done
else
  "$EXIM" -C "$EXIM_WORK/exim.conf" -bV 2>&1 | head -n 1 | sed 's/^/# /'
  if server_running "$name" relay &&
     run_client "$name" relay "${LIMIT[@]}" "$EXIM" -C "$EXIM_WORK/exim.conf" -odf -i \
       -f alice@example.test bob@example.test < msg.eml; then
    if ! wait_new "$name" relay 10; then
      fail "$name" "Exim delivered nothing to the relay server"
      details "$EXIM_WORK"/log/*
    else
      delivered "$name" relay 2 msg.eml 'chunked=true' 'body="7BIT"' 'to=["bob@example.test"]'
    fi
  fi
  # The relay's transcript shows Exim's BDAT LAST (the whole message in one chunk here) and
  # its size line, and Exim's log says it used CHUNKING ("K" in its delivery line).
  name=${EXIM_CHECKS[1]}
  if verify "$name" log_has "$name" "$WORK/relay.err" ' C: BDAT [0-9]+ LAST$' \
       "the relay's transcript has no 'C: BDAT N LAST' line" &&
     verify "$name" log_has "$name" "$WORK/relay.err" ' C: <[0-9]+ octets>$' \
       "the relay's transcript has no 'C: <N octets>' line" &&
     verify "$name" log_has "$name" "$EXIM_WORK/log/mainlog" '=> bob@example.test .* K ' \
       "Exim's log does not say it used CHUNKING (K)"; then
    ok "$name"
  fi
  # BDAT inside TLS: Exim's to_tls transport (STARTTLS required, the throwaway certificate
  # verified) to the tls server, for the domain tls.example.test.
  name=${EXIM_CHECKS[2]}
  if server_running "$name" tls &&
     run_client "$name" tls "${LIMIT[@]}" "$EXIM" -C "$EXIM_WORK/exim.conf" -odf -i \
       -f alice@example.test bob@tls.example.test < msg.eml; then
    if ! wait_new "$name" tls 10; then
      fail "$name" "Exim delivered nothing to the tls server"
      details "$EXIM_WORK"/log/*
    elif expect_new "$name" tls 1; then
      stored=$(stored_path "$name" tls)
      verify "$name" strip_received "$name" "$stored" 2 msg.eml &&
        verify "$name" received_has "$name" " with ESMTPS " &&
        verify "$name" json_is "$name" tls "$stored" 'chunked=true' \
          'to=["bob@tls.example.test"]' &&
        verify "$name" log_has "$name" "$EXIM_WORK/log/mainlog" \
          '=> bob@tls.example.test .* X=TLS.* K ' \
          "Exim's log does not say it used TLS (X=) and CHUNKING (K)" && ok "$name"
    fi
  fi
fi

# --- graceful shutdown -----------------------------------------------------------------------
for server in "${SERVERS[@]}"; do stop_server "$server"; done

finish
