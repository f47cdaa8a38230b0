#!/bin/bash
# test/interop_dns.sh MAILSINK_PATH - the DNS checks (issue 17) against a real DNS server:
# dnsmasq, started here on a free loopback port with the records below, and mailsinks run with
# --limit-exempt none (loopback is exempt by default) so that clients connecting from distinct
# 127.x addresses (Python sockets bound with a source address) are checked.
#
# The DNS world (dnsmasq --local: names under these zones that are not listed get NXDOMAIN):
#   127.0.0.5   good.test, forwards and backwards (--host-record): FCrDNS passes
#   127.0.0.6   PTR liar.test, but liar.test is 127.0.0.99: FCrDNS fails
#   127.0.0.7   no PTR: FCrDNS fails; on no list
#   127.0.0.8   listed8.test both ways; on bl.test as 127.0.0.2 with a TXT reason
#   127.0.0.9   listed9.test both ways; on bl.test as 127.0.0.3 without a TXT record
#   127.0.0.10  its PTR lookup is forwarded to a server that answers SERVFAIL
#   ::1         on bl.test (IPv6 nibbles, RFC 5782 §2.4) with a TXT reason
#   spam.test   on the RHSBL rhs.test with a TXT reason
# Two more "DNS servers": one that answers every question with SERVFAIL, and one that reads
# nothing and never answers (the timeout path). Both are small Python UDP servers.
#
# Checks: each option's refusal with its reply and enhanced code (RFC 7372 §3.3 X.7.25 for
# FCrDNS, 5.7.1 for HELO and the lists, RFC 5782), the let-through and record-only modes with
# the --json "dns" field, the default exemption of loopback, the resolver's cache (dnsmasq's
# query log), SERVFAIL and timeouts, and that a connection whose lookups hang blocks neither
# the accept loop nor another client (an ordering check: the other client finishes a whole
# transaction while the first still has no greeting; no timed assertion).
#
# Each check prints "ok - NAME" or "FAIL - NAME: reason"; the last line is
# "interop-dns: N passed, N failed". Exit status 1 if any check failed, 2 on bad usage.
set -u

# shellcheck source-path=SCRIPTDIR source=interop_lib.sh
. "$(dirname "$0")/interop_lib.sh"
begin_suite interop-dns "$@"
make_workdir fcrdns atrcpt lists exempt record slow servfail
find_clients
DNSMASQ=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)
[ -x "$DNSMASQ" ] || DNSMASQ=

cd "$WORK" || exit 1

# --- the DNS servers ---------------------------------------------------------------------------
HELPER_PIDS=()
cleanup_hook() {
  local pid
  for pid in "${HELPER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${HELPER_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
}

# udp_server.py MODE PORTFILE: a UDP "DNS server" on a free loopback port, written to PORTFILE.
# MODE servfail answers every question with RCODE 2; MODE silent never answers.
cat > udp_server.py <<'EOF'
import socket, sys
mode, portfile = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
with open(portfile + ".tmp", "w") as f:
    f.write(str(s.getsockname()[1]))
import os
os.rename(portfile + ".tmp", portfile)
while True:
    if mode == "silent":
        s.recvfrom(4096)  # read and drop: the question is never answered
        with open(portfile + ".seen", "a") as f:
            f.write("question\n")
        continue
    data, peer = s.recvfrom(4096)
    if len(data) < 12:
        continue
    flags = (0x8000 | (data[2] << 8 & 0x7900) | 0x0080 | 2)  # QR, opcode+RD kept, RA, SERVFAIL
    s.sendto(data[:2] + bytes([flags >> 8, flags & 0xFF]) + data[4:6] + b"\0\0\0\0\0\0" +
             data[12:], peer)
EOF

# start_udp MODE: start udp_server.py; its port in UDP_PORT ("" if it did not start).
start_udp() {
  rm -f "$1.port"
  "$PY" udp_server.py "$1" "$1.port" > /dev/null 2> "$1.err" &
  HELPER_PIDS+=($!)
  for _ in $(seq 100); do
    [ -s "$1.port" ] && break
    sleep 0.05
  done
  UDP_PORT=$(cat "$1.port" 2>/dev/null)
}

SERVFAIL_PORT='' SILENT_PORT=''
if need start-udp-servers "$PY" "$NO_PY"; then
  start_udp servfail
  SERVFAIL_PORT=$UDP_PORT
  start_udp silent
  SILENT_PORT=$UDP_PORT
  if [ -n "$SERVFAIL_PORT" ] && [ -n "$SILENT_PORT" ]; then ok start-udp-servers
  else fail start-udp-servers "udp_server.py did not start"; details servfail.err silent.err; fi
fi

V6_NAME=1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0
pick_ports dns
DNS_PORT=${PORT[dns]}
DNS=127.0.0.1:$DNS_PORT
# shellcheck disable=SC2054 # the commas are dnsmasq's, inside single arguments
dns_args=(--no-daemon --conf-file=/dev/null --no-resolv --no-hosts --port="$DNS_PORT"
  --listen-address=127.0.0.1 --bind-interfaces --local-ttl=60 --log-queries --log-facility=-
  --local=/test/ --local=/in-addr.arpa/ --local=/ip6.arpa/
  --host-record=good.test,127.0.0.5
  --ptr-record=6.0.0.127.in-addr.arpa,liar.test --host-record=liar.test,127.0.0.99
  --host-record=listed8.test,127.0.0.8 --host-record=listed9.test,127.0.0.9
  --host-record=8.0.0.127.bl.test,127.0.0.2
  --txt-record=8.0.0.127.bl.test,"Listed for testing: see https://bl.test/127.0.0.8"
  --host-record=9.0.0.127.bl.test,127.0.0.3
  --host-record="$V6_NAME.bl.test,127.0.0.2"
  --txt-record="$V6_NAME.bl.test,IPv6 loopback listed"
  --host-record=spam.test.rhs.test,127.0.0.2 --txt-record=spam.test.rhs.test,"Spam domain"
  --address=/ok.test/127.0.0.7)
[ -n "$SERVFAIL_PORT" ] && dns_args+=(--server="/10.0.0.127.in-addr.arpa/127.0.0.1#$SERVFAIL_PORT")
DNSMASQ_PID=
if need start-dnsmasq "$DNSMASQ" "dnsmasq not found (apt-get install dnsmasq, or make deps)"; then
  "$DNSMASQ" "${dns_args[@]}" > dnsmasq.log 2>&1 &
  DNSMASQ_PID=$!
  HELPER_PIDS+=("$DNSMASQ_PID")
  for _ in $(seq 100); do
    grep -q 'started, version' dnsmasq.log && break
    sleep 0.05
  done
  if grep -q 'started, version' dnsmasq.log && kill -0 "$DNSMASQ_PID" 2>/dev/null; then
    ok start-dnsmasq
  else
    fail start-dnsmasq "dnsmasq did not start"; details dnsmasq.log
  fi
fi

# --- the client ----------------------------------------------------------------------------------
# smtp.py SOURCE HOST PORT LINE...: connect from SOURCE, print each reply (its last line, so
# "CODE text"), send each LINE after the reply before it; "DATA" is followed by a short message.
# Stops when the server closes the connection.
cat > smtp.py <<'EOF'
import socket, sys
src, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family)
s.settimeout(25)
s.bind((src, 0))
s.connect((host, port))
f = s.makefile("rb")

def reply():
    while True:
        line = f.readline()
        if not line:
            print("(closed)")
            return None
        line = line.decode("utf-8", "replace").rstrip("\r\n")
        if len(line) < 4 or line[3] != "-":
            print(line)
            return line

r = reply()
for cmd in sys.argv[4:]:
    if r is None:
        break
    s.sendall(cmd.encode() + b"\r\n")
    r = reply()
    if cmd == "DATA" and r and r.startswith("354"):
        s.sendall(b"Subject: dns interop\r\n\r\nHello.\r\n.\r\n")
        r = reply()
EOF

# session NAME SERVER SOURCE LINE...: the transcript of one session in NAME.log.
session() {
  local name=$1 server=$2 source=$3 host=127.0.0.1
  shift 3
  [ "$server" = lists6 ] && host=::1
  "${LIMIT[@]}" "$PY" smtp.py "$source" "$host" "${PORT[$server]}" "$@" > "$name.log" 2>&1
}

# expect NAME SERVER SOURCE PATTERN LINE...: check NAME: the session's transcript has a line
# matching the grep -E PATTERN.
expect() {
  local name=$1 server=$2 source=$3 pattern=$4
  shift 4
  need "$name" "$PY" "$NO_PY" || return
  session "$name" "$server" "$source" "$@"
  if grep -qE -- "$pattern" "$name.log"; then ok "$name"
  else fail "$name" "no line matching /$pattern/"; details "$name.log"; fi
}

T=("EHLO good.test")
MAIL=("MAIL FROM:<a@ok.test>" "RCPT TO:<b@example.test>" DATA QUIT)

# --- FCrDNS and the HELO check, refused in the greeting -----------------------------------------
start_server fcrdns --dns-server "$DNS" --limit-exempt none --require-fcrdns --helo-check --json
expect fcrdns-pass-delivered fcrdns 127.0.0.5 '^250 2\.0\.0 ' "${T[@]}" "${MAIL[@]}"
expect fcrdns-pass-json fcrdns 127.0.0.5 '^221' "${T[@]}" QUIT
verify_json() {
  grep -q '"dns":{"exempt":false,"fcrdns":"pass","fcrdns_name":"good.test","helo":"pass"' \
    fcrdns.out || { echo "no dns field with fcrdns and helo pass"; details fcrdns.out; return 1; }
}
verify fcrdns-json-fields verify_json && ok fcrdns-json-fields
# RFC 5321 §3.1: a permanent refusal in the greeting is a 554; no enhanced code before EHLO.
expect fcrdns-ptr-not-confirmed fcrdns 127.0.0.6 '^554 FCrDNS failure$' "${T[@]}"
expect fcrdns-no-ptr fcrdns 127.0.0.7 '^554 FCrDNS failure$' "${T[@]}"
expect fcrdns-refused-then-503 fcrdns 127.0.0.7 '^503 ' "${T[@]}"
expect fcrdns-servfail-421 fcrdns 127.0.0.10 '^421 FCrDNS failure: temporary DNS error$'
expect helo-check-wrong-name fcrdns 127.0.0.5 '^550 Bad HELO$' "EHLO liar.test"
expect helo-check-after-ehlo fcrdns 127.0.0.5 '^550 5\.7\.1 Bad HELO$' "${T[@]}" "EHLO liar.test"
expect helo-check-literal fcrdns 127.0.0.5 '^250 ' "HELO [127.0.0.5]"
expect helo-check-wrong-literal fcrdns 127.0.0.5 '^550 Bad HELO$' "HELO [127.0.0.6]"
expect helo-check-case-trailing-dot fcrdns 127.0.0.5 '^250 ' "EHLO GOOD.test."

# The cache: every session from 127.0.0.5 above needed its PTR; dnsmasq was asked once.
if [ -n "$DNSMASQ_PID" ]; then
  n=$(grep -c 'query\[PTR\] 5\.0\.0\.127\.in-addr\.arpa' dnsmasq.log)
  if [ "$n" -eq 1 ]; then ok cache-one-ptr-query
  else fail cache-one-ptr-query "dnsmasq saw $n PTR queries for 127.0.0.5, not 1"; fi
fi

# --- refusals at RCPT (the enhanced codes show after EHLO) ----------------------------------
start_server atrcpt --dns-server "$DNS" --limit-exempt none --require-fcrdns --dnsbl bl.test \
  --dns-at-rcpt
expect rcpt-fcrdns-550 atrcpt 127.0.0.6 '^550 5\.7\.25 FCrDNS failure$' "${T[@]}" "${MAIL[@]}"
expect rcpt-fcrdns-tempfail-450 atrcpt 127.0.0.10 \
  '^450 4\.7\.25 FCrDNS failure: temporary DNS error$' "${T[@]}" "${MAIL[@]}"
expect rcpt-dnsbl-554 atrcpt 127.0.0.8 \
  '^554 5\.7\.1 IP address is on a blocklist: bl\.test \(Listed for testing: see https://bl\.test/127\.0\.0\.8\)$' \
  "${T[@]}" "${MAIL[@]}"
expect rcpt-greeted-first atrcpt 127.0.0.8 '^220 ' QUIT

# --- DNSBL and RHSBL, refused in the greeting and at MAIL --------------------------------
start_server lists --dns-server "$DNS" --limit-exempt none --dnsbl bl.test --rhsbl rhs.test
expect dnsbl-with-reason lists 127.0.0.8 \
  '^554 IP address is on a blocklist: bl\.test \(Listed for testing: see https://bl\.test/127\.0\.0\.8\)$'
expect dnsbl-without-reason lists 127.0.0.9 '^554 IP address is on a blocklist: bl\.test$'
expect dnsbl-unlisted-delivered lists 127.0.0.7 '^250 2\.0\.0 ' "${T[@]}" "${MAIL[@]}"
expect rhsbl-mail-from lists 127.0.0.7 \
  '^554 5\.7\.1 Domain is on a blocklist: rhs\.test \(Spam domain\)$' "${T[@]}" \
  "MAIL FROM:<x@Spam.Test>"
expect rhsbl-helo-name lists 127.0.0.7 \
  '^554 5\.7\.1 Domain is on a blocklist: rhs\.test \(Spam domain\)$' "EHLO spam.test" \
  "MAIL FROM:<a@ok.test>"

# IPv6: the same list on ::1, looked up by nibbles.
PORT[lists6]=
if need dnsbl-ipv6 "$PY" "$NO_PY"; then
  "$SINK" --listen "[::1]:0" --dns-server "$DNS" --limit-exempt none --dnsbl bl.test \
    > lists6.out 2> lists6.err &
  LISTS6_PID=$!
  HELPER_PIDS+=("$LISTS6_PID")
  for _ in $(seq 200); do
    PORT[lists6]=$(sed -n 's/^mailsink: listening on \[::1\]:\([0-9]*\)$/\1/p' lists6.err 2>/dev/null)
    [ -n "${PORT[lists6]}" ] && break
    sleep 0.05
  done
  if [ -z "${PORT[lists6]}" ]; then fail dnsbl-ipv6 "mailsink did not listen on ::1"; details lists6.err
  else
    expect dnsbl-ipv6 lists6 ::1 '^554 IP address is on a blocklist: bl\.test \(IPv6 loopback listed\)$'
  fi
fi

# --- the default: loopback is exempt, nothing is looked up ----------------------------------
start_server exempt --dns-server "$DNS" --require-fcrdns --dnsbl bl.test --rhsbl rhs.test \
  --helo-check
expect exempt-loopback-delivered exempt 127.0.0.8 '^250 2\.0\.0 ' "EHLO spam.test" \
  "MAIL FROM:<x@spam.test>" "RCPT TO:<b@example.test>" DATA QUIT

# --- record only, and temporary failures let through: results in --json ----------------------
start_server record --dns-server "$DNS" --limit-exempt none --require-fcrdns --dnsbl bl.test \
  --rhsbl rhs.test --dns-record-only --dns-tempfail-pass --json
expect record-listed-delivered record 127.0.0.8 '^250 2\.0\.0 ' "EHLO listed8.test" \
  "MAIL FROM:<x@spam.test>" "RCPT TO:<b@example.test>" DATA QUIT
expect tempfail-pass-delivered record 127.0.0.10 '^250 2\.0\.0 ' "${T[@]}" "${MAIL[@]}"
verify_record_json() {
  "$PY" - record.out <<'EOF' || return 1
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
if len(lines) != 2:
    sys.exit("%d JSON lines, not 2" % len(lines))
d = lines[0]["dns"]
want = [{"zone": "bl.test", "source": "ip", "listed": "127.0.0.8", "address": "127.0.0.2",
         "reason": "Listed for testing: see https://bl.test/127.0.0.8"},
        {"zone": "rhs.test", "source": "mail", "listed": "spam.test", "address": "127.0.0.2",
         "reason": "Spam domain"}]
if d["fcrdns"] != "pass" or d["fcrdns_name"] != "listed8.test" or d["listings"] != want:
    sys.exit("first message: %r" % d)
if lines[1]["dns"]["fcrdns"] != "temp_error":
    sys.exit("second message: %r" % lines[1]["dns"])
EOF
}
verify record-json-listings verify_record_json && ok record-json-listings

# --- SERVFAIL straight from the server mailsink asks ---------------------------------------
if [ -n "$SERVFAIL_PORT" ]; then
  start_server servfail --dns-server "127.0.0.1:$SERVFAIL_PORT" --limit-exempt none \
    --require-fcrdns --dns-at-rcpt
  expect servfail-450 servfail 127.0.0.5 '^450 4\.7\.25 FCrDNS failure: temporary DNS error$' \
    "${T[@]}" "${MAIL[@]}"
fi

# --- a DNS server that never answers: the timeout, and nobody else waits -------------------
if [ -n "$SILENT_PORT" ] && need slow-dns-others-served "$PY" "$NO_PY"; then
  # 127.0.0.2 is exempt (no lookups); every other client's lookups hang until --dns-timeout.
  start_server slow --dns-server "127.0.0.1:$SILENT_PORT" --dns-timeout 6000 --require-fcrdns \
    --limit-exempt 127.0.0.2/32
  # The first client connects and waits for its greeting in the background.
  "${LIMIT[@]}" "$PY" smtp.py 127.0.0.5 127.0.0.1 "${PORT[slow]}" QUIT > slow-first.log 2>&1 &
  first=$!
  for _ in $(seq 200); do # until its PTR question reached the silent server: it hangs now
    [ -s silent.port.seen ] && break
    sleep 0.05
  done
  # Meanwhile a second client is accepted, greeted and served a whole transaction...
  session slow-second slow 127.0.0.2 "${T[@]}" "${MAIL[@]}"
  # ...before the first has heard anything at all.
  if grep -q '^250 2\.0\.0 ' slow-second.log && [ ! -s slow-first.log ]; then
    ok slow-dns-others-served
  else
    fail slow-dns-others-served "the second client was not served while the first waited"
    details slow-second.log slow-first.log
  fi
  wait "$first"
  if grep -q '^421 FCrDNS failure: temporary DNS error$' slow-first.log; then
    ok slow-dns-timeout-421
  else
    fail slow-dns-timeout-421 "the first client did not get the temporary-failure 421"
    details slow-first.log
  fi
fi

# --- bad flags ---------------------------------------------------------------------------------
sink_exits bad-dns-server 1 'dns_servers' "no error naming dns_servers" --listen 127.0.0.1:0 \
  --dns-server not-an-ip --require-fcrdns

for server in "${SERVERS[@]}"; do
  [ -n "${PID[$server]}" ] && stop_server "$server"
done

finish
