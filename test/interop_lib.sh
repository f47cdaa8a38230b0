# shellcheck shell=bash
# test/interop_lib.sh - the helpers shared by the interop scripts (interop.sh, interop_tls.sh,
# interop_auth.sh, interop_clients.sh, interop_ext.sh, interop_proxy.sh, interop_dns.sh,
# interop_lmtp.sh, interop_relay.sh, interop_client.sh, and mailsink_cli.sh). Sourced, not
# executed:
#   . "$(dirname "$0")/interop_lib.sh"
#
# Reporting (a check prints "ok - NAME" or "FAIL - NAME: reason", details on "#" lines)
#   ok NAME                      count a pass and print "ok - NAME"
#   fail NAME REASON             count a failure and print "FAIL - NAME: REASON"
#   details FILE...              the last $DETAIL_LINES lines of each non-empty FILE, as "#" lines
#   dump FILE [BYTE]             a file's bytes with escapes visible (od -c), as "#" lines: the
#                                first 2 KiB, or with BYTE (1-based) about 100 bytes around it
#   millis                       milliseconds since the epoch
#   finish                       on failures each server's stderr; then the last line
#                                "SUITE: N passed, N failed"; returns 1 if any check failed
# Setup
#   begin_suite SUITE ARGS...    usage check (exit 2) and SINK, the absolute mailsink path
#   make_workdir SERVER...       the temp dir $WORK, one Maildir per SERVER, cleanup on exit
#                                (which calls cleanup_hook first if the script defines one)
#   cleanup                      stop the servers still running (TERM, then KILL), remove $WORK
#   find_python                  the path of python3 (/usr/bin/python3 preferred), or nothing
#   find_clients                 PY (find_python), SWAKS, CURL, OPENSSL: each client's path, or
#                                nothing; NO_PY, NO_SWAKS, NO_CURL, NO_OPENSSL: the reason for
#                                a check that needs the missing one (naming the package)
#   need NAME PATH WHY           false, after failing NAME with WHY, when PATH (a client's) is
#                                empty
#   pick_ports SERVER...         a different free loopback port for each SERVER, in PORT[SERVER]
#   make_certificate WHY         check "make-certificate": a self-signed cert.pem and key.pem
#                                (SANs localhost, 127.0.0.1) in $WORK, as $CERT and $KEY; WHY
#                                (who needs one) ends the reason when openssl ($OPENSSL) is missing
#   write_probe_message          msg.eml (the INTEROP.md probe, CRLF) and msg-nofinal.eml (it
#                                without the final CRLF, for swaks)
# Servers (by name, in SERVERS; PORT, PID and MAILDIR hold each one's port, pid and Maildir)
#   launch_server SERVER FLAGS...   run mailsink on PORT[SERVER] (0 if empty) with its Maildir
#                                (none if MAILDIR[SERVER] is unset or empty) and FLAGS in the
#                                background, under $SERVER_LIMIT, stdout in SERVER.out, stderr
#                                in SERVER.err
#   wait_listening SERVER DEADLINE  true once SERVER.err has "mailsink: listening on
#                                127.0.0.1:PORT" (PORT[SERVER], or any port, which is then
#                                stored there), false if the server exits or DEADLINE (ms) passes
#   start_server SERVER FLAGS...    check "start-SERVER": launch_server, then wait_listening 10 s
#   wait_listening_on SERVER ADDRESS DEADLINE  true once SERVER.err has exactly the line
#                                "mailsink: listening on ADDRESS", false if the server exits or
#                                DEADLINE (ms) passes
#   start_unix_server SERVER SOCKET FLAGS...  check "start-SERVER": launch_server listening on
#                                unix:SOCKET instead (its --listen comes last, and the last one
#                                counts), then wait_listening_on 10 s
#   sink_exits NAME STATUS PATTERN WHY ARG...  check NAME: mailsink ARG... (under $LIMIT, output
#                                in NAME.log) exits with STATUS without listening, and its
#                                output has a line matching the grep -E PATTERN (WHY: the
#                                reason when it has none)
#   server_running NAME SERVER   false, after failing NAME, when SERVER is not running
#   stop_server SERVER [CHECK]   check CHECK (default "sigterm-SERVER-exit-0"): after SIGTERM
#                                the server exits with status 0 within 10 s
# Deliveries
#   maildir_list SERVER          the sorted file names in SERVER's Maildir new/
#   run_client NAME SERVER CMD...   snapshot SERVER's new/ into NAME.before, run CMD (already
#                                under timeout) with its output in NAME.log; fails NAME unless
#                                CMD succeeds
#   list_new NAME SERVER         the names added to SERVER's new/ since NAME.before, in NAME.new
#   expect_new NAME SERVER COUNT    list_new; fails NAME unless exactly COUNT files were added
#   stored_path NAME SERVER      the path of the (first) file in NAME.new
#   refused NAME SERVER PATTERN CMD...  check NAME: CMD fails, its transcript has a line
#                                matching the grep -E PATTERN, and SERVER stores nothing
#   verify NAME CHECK...         run CHECK (a function printing the reason, returning 1 on a
#                                mismatch); false, after failing NAME with that reason, if it fails
#   check_summary NAME SERVER FILE USER  mailsink's summary line for FILE says " auth=USER <"
#                                (USER "-": no " auth=" at all); fails NAME otherwise
# Stored messages (for CHECK functions: print the reason, then details; return 1)
#   strip_received NAME FILE HOPS EXPECTED  FILE must be HOPS Received fields, each line ending
#                                in CRLF, then exactly the bytes of EXPECTED. Writes NAME.fields
#                                (the HOPS fields), NAME.received (the first, mailsink's),
#                                NAME.trace (it unfolded, without CRs) and NAME.body
#   received_trace NAME          the unfolded field, NAME.trace
#   received_starts NAME PREFIX  the unfolded field starts with PREFIX
#   received_has NAME TEXT       the unfolded field contains TEXT
#   received_lacks NAME TEXT WHY    the unfolded field does not contain TEXT (WHY: the reason)
# A throwaway Postfix instance (interop_clients.sh, interop_ext.sh, interop_lmtp.sh,
# interop_relay.sh: config in $PFX/etc, queue in $PFX/spool, log in $PFX/maillog; $POSTFIX and
# $POSTCONF its commands)
#   find_sbin NAME               NAME on PATH, else in /usr/sbin (not on every PATH), else nothing
#   pfx_running                  true while the instance's master runs ("postfix status" exits 0)
#   pfx_wait_stopped SECONDS     true once the instance has stopped, false if it still runs then
#   pfx_setup RELAY_PORT NAME    $PFX/etc/main.cf from nothing (relayhost 127.0.0.1:RELAY_PORT,
#                                syslog_name postfix-NAME), and a copy of Debian's master.cf with
#                                the listening smtpd commented out and chroot off (Debian's
#                                chroots most services)
#   pfx_start_check NAME [PORT]  check NAME: "postfix check" and "postfix start" (PFX_STARTED=yes
#                                from the start on), then within 10 s "postfix status" says it
#                                runs (and with PORT, a smtpd accepts on 127.0.0.1:PORT)
#   pfx_stop_check NAME          check NAME: "postfix stop", and within 15 s the instance is gone
#                                (PFX_STARTED emptied)
#   pfx_cleanup                  for a cleanup_hook: stop the instance if PFX_STARTED (abort it
#                                if it lingers), then remove $PFX
#
# Variables: SUITE, SINK, WORK, SERVERS, PORT, PID, MAILDIR, CERT, KEY, PASSED, FAILED;
# a script may set LIMIT (timeout -k 5 30, the bound on every client), SERVER_LIMIT (empty, the
# command a server runs under) and DETAIL_LINES (25).

PASSED=0
FAILED=0
DETAIL_LINES=25
LIMIT=(timeout -k 5 30)
SERVER_LIMIT=()
SERVERS=()
declare -A PORT=() PID=() MAILDIR=()

# --- reporting -------------------------------------------------------------------------------
ok() { PASSED=$((PASSED + 1)); echo "ok - $1"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL - $1: $2"; }
details() {
  local file
  for file in "$@"; do [ -s "$file" ] && tail -n "$DETAIL_LINES" "$file" | sed 's/^/#   /'; done
  return 0
}
dump() {
  local skip=0 count=2048
  if [ -n "${2:-}" ]; then skip=$(( $2 > 48 ? $2 - 49 : 0 )); count=112; fi
  [ -e "$1" ] && od -An -c -j "$skip" -N "$count" "$1" | sed 's/^/#   /'
  return 0
}
millis() { echo $(( $(date +%s%N) / 1000000 )); }
finish() {
  local server
  if [ "$FAILED" -gt 0 ]; then
    for server in "${SERVERS[@]}"; do
      if [ -s "$WORK/$server.err" ]; then
        echo "# $server server stderr (last $DETAIL_LINES lines):"
        details "$WORK/$server.err"
      fi
    done
  fi
  echo "$SUITE: $PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

# --- setup -----------------------------------------------------------------------------------
begin_suite() {
  SUITE=$1
  shift
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
}

make_workdir() {
  local server
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/$SUITE.XXXXXX") || { echo "$SUITE: mktemp failed" >&2; exit 1; }
  SERVERS=("$@")
  for server in "${SERVERS[@]}"; do
    PORT[$server]=
    PID[$server]=
    MAILDIR[$server]=$WORK/maildir-$server
  done
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

cleanup() {
  local server pid
  if declare -F cleanup_hook > /dev/null; then cleanup_hook; fi
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

find_python() {
  if [ -x /usr/bin/python3 ]; then echo /usr/bin/python3; else command -v python3 || true; fi
}

# (All for the sourcing script.)
# shellcheck disable=SC2034
find_clients() {
  PY=$(find_python)
  SWAKS=$(command -v swaks || true)
  CURL=$(command -v curl || true)
  OPENSSL=$(command -v openssl || true)
  NO_PY="python3 not found (neither /usr/bin/python3 nor python3 on PATH; apt-get install python3)"
  NO_SWAKS="swaks not found on PATH (apt-get install swaks libnet-ssleay-perl)"
  NO_CURL="curl not found on PATH (apt-get install curl)"
  NO_OPENSSL="openssl not found on PATH (apt-get install openssl)"
}

need() {
  [ -n "$2" ] && return 0
  fail "$1" "$3"
  return 1
}

pick_ports() {
  local n=$# ports="" candidate py list i=0 server
  py=$(find_python)
  # Bound all at once, so that they differ.
  if [ -n "$py" ]; then
    ports=$("$py" -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$n" 2>/dev/null)
  fi
  if [ -z "$ports" ]; then
    # Without python3: random high ports on which nothing answers.
    for _ in $(seq 100); do
      candidate=$((20000 + RANDOM % 40000))
      case " $ports " in *" $candidate "*) continue ;; esac
      timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$candidate" 2>/dev/null ||
        ports="$ports $candidate"
      [ "$(wc -w <<< "$ports")" -eq "$n" ] && break
    done
  fi
  read -r -a list <<< "$ports"
  if [ "${#list[@]}" -ne "$n" ]; then
    echo "$SUITE: could not find $n free port(s)" >&2
    exit 1
  fi
  for server in "$@"; do PORT[$server]=${list[i++]}; done
}

make_certificate() {
  if [ -z "$OPENSSL" ]; then
    fail "make-certificate" "openssl not found on PATH (apt-get install openssl); $1"
  elif "${LIMIT[@]}" "$OPENSSL" req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem \
         -days 2 -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
         > make-certificate.log 2>&1 && [ -s cert.pem ] && [ -s key.pem ]; then
    ok "make-certificate"
  else
    fail "make-certificate" "openssl req -x509 failed"
    details make-certificate.log
  fi
  # Absolute: msmtp wants an absolute --tls-trust-file. (Both are for the sourcing script.)
  # shellcheck disable=SC2034
  CERT=$WORK/cert.pem KEY=$WORK/key.pem
}

write_probe_message() {
  printf '%s\r\n' 'From: Alice <alice@example.test>' 'To: Bob <bob@example.test>' \
    'Subject: interop probe' 'Date: Sun, 22 Nov 2026 11:00:00 +0000' \
    'Message-ID: <probe-1@example.test>' '' 'Hello from the probe.' '.leading dot line' \
    'Last line.' > msg.eml
  # swaks ends DATA with "\r\n.\r\n" itself: given the message without its last CRLF, it sends
  # exactly msg.eml (INTEROP.md, "the extra blank line").
  head -c -2 msg.eml > msg-nofinal.eml
}

# --- servers ---------------------------------------------------------------------------------
launch_server() {
  local server=$1 maildir=()
  shift
  [ -n "${MAILDIR[$server]:-}" ] && maildir=(--maildir "${MAILDIR[$server]}")
  "${SERVER_LIMIT[@]}" "$SINK" --listen "127.0.0.1:${PORT[$server]:-0}" "${maildir[@]}" "$@" \
    > "$WORK/$server.out" 2> "$WORK/$server.err" &
  PID[$server]=$!
}

wait_listening() {
  local server=$1 deadline=$2 pid=${PID[$1]} port=${PORT[$1]} found
  [ -n "$port" ] || port='[1-9][0-9]*'
  local script="s/^mailsink: listening on 127\\.0\\.0\\.1:\\($port\\)\$/\\1/p"
  while :; do
    found=$(sed -n "$script" "$WORK/$server.err" | head -n 1)
    [ -n "$found" ] && break
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then break; fi
    [ "$(millis)" -lt "$deadline" ] || break
    sleep 0.05
  done
  # Once more: the line may have come just before the server exited or the deadline passed.
  [ -n "$found" ] || found=$(sed -n "$script" "$WORK/$server.err" | head -n 1)
  [ -n "$found" ] || return 1
  PORT[$server]=$found
}

start_server() {
  local server=$1 rc
  shift
  if [ ! -x "$SINK" ]; then
    fail "start-$server" "$SINK is not an executable file"
    return 1
  fi
  launch_server "$server" "$@"
  if wait_listening "$server" $(( $(millis) + 10000 )); then
    ok "start-$server"
    return 0
  fi
  if kill -0 "${PID[$server]}" 2>/dev/null; then
    fail "start-$server" \
      "no line 'mailsink: listening on 127.0.0.1:${PORT[$server]:-PORT}' on stderr within 10 s"
  else
    wait "${PID[$server]}"; rc=$?
    PID[$server]=
    fail "start-$server" "mailsink${*:+ $*} exited with status $rc before listening"
  fi
  details "$WORK/$server.err"
  return 1
}

wait_listening_on() {
  local server=$1 address=$2 deadline=$3 pid=${PID[$1]}
  while ! grep -qxF "mailsink: listening on $address" "$WORK/$server.err"; do
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
      grep -qxF "mailsink: listening on $address" "$WORK/$server.err"; return
    fi
    [ "$(millis)" -lt "$deadline" ] || return 1
    sleep 0.05
  done
}

start_unix_server() {
  local server=$1 socket=$2 rc
  shift 2
  if [ ! -x "$SINK" ]; then
    fail "start-$server" "$SINK is not an executable file"
    return 1
  fi
  launch_server "$server" --listen "unix:$socket" "$@"
  if wait_listening_on "$server" "unix:$socket" $(( $(millis) + 10000 )); then
    ok "start-$server"
    return 0
  fi
  if kill -0 "${PID[$server]}" 2>/dev/null; then
    fail "start-$server" "no line 'mailsink: listening on unix:$socket' on stderr within 10 s"
  else
    wait "${PID[$server]}"; rc=$?
    PID[$server]=
    fail "start-$server" "mailsink${*:+ $*} on unix:$socket exited with status $rc before listening"
  fi
  details "$WORK/$server.err"
  return 1
}

sink_exits() {
  local name=$1 status=$2 pattern=$3 why=$4 rc
  shift 4
  if [ ! -x "$SINK" ]; then
    fail "$name" "$SINK is not an executable file"
    return
  fi
  "${LIMIT[@]}" "$SINK" "$@" > "$name.log" 2>&1; rc=$?
  if [ $rc -ne "$status" ]; then
    fail "$name" "mailsink $* exited with status $rc, not $status"
  elif grep -q 'listening on' "$name.log"; then
    fail "$name" "mailsink listened before it exited with status $status"
  elif ! grep -Eq -- "$pattern" "$name.log"; then
    fail "$name" "$why"
  else
    ok "$name"
    return
  fi
  details "$name.log"
}

server_running() {
  if [ -z "${PID[$2]}" ]; then
    fail "$1" "the $2 server is not running"
    return 1
  fi
}

stop_server() {
  local server=$1 name=${2:-sigterm-$1-exit-0} pid=${PID[$1]} rc exited=0
  if [ -z "$pid" ]; then
    fail "$name" "the $server server is not running"
    return
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid"; rc=$?
    PID[$server]=
    fail "$name" "the server had already exited (status $rc) before SIGTERM"
    details "$WORK/$server.err"
    return
  fi
  kill -TERM "$pid"
  for _ in $(seq 100); do
    if ! kill -0 "$pid" 2>/dev/null; then exited=1; break; fi
    sleep 0.1
  done
  if [ $exited = 0 ]; then
    fail "$name" "the server is still running 10 s after SIGTERM"
    details "$WORK/$server.err"
    return
  fi
  wait "$pid"; rc=$?
  PID[$server]=
  if [ $rc -eq 0 ]; then
    ok "$name"
  else
    fail "$name" "the server exited with status $rc after SIGTERM"
    details "$WORK/$server.err"
  fi
}

# --- deliveries ------------------------------------------------------------------------------
# (Maildir names have no newlines or odd characters, so ls is fine.)
# shellcheck disable=SC2012
maildir_list() { ls -1A "${MAILDIR[$1]}/new" 2>/dev/null | LC_ALL=C sort; }

run_client() {
  local name=$1 server=$2 rc
  shift 2
  maildir_list "$server" > "$name.before"
  "$@" > "$name.log" 2>&1; rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    fail "$name" "the client did not finish within ${LIMIT[-1]} s"; details "$name.log"; return 1
  elif [ $rc -ne 0 ]; then
    fail "$name" "the client exited with status $rc"; details "$name.log"; return 1
  fi
}

list_new() { maildir_list "$2" | LC_ALL=C comm -13 "$1.before" - > "$1.new"; }

expect_new() {
  local name=$1 server=$2 count=$3 n files="files"
  [ "$count" -eq 1 ] && files="file"
  list_new "$name" "$server"
  n=$(wc -l < "$name.new")
  if [ "$n" -ne "$count" ]; then
    fail "$name" "expected exactly $count new $files in the $server server's Maildir, found $n"
    details "$name.log"
    return 1
  fi
}

stored_path() { echo "${MAILDIR[$2]}/new/$(head -n 1 "$1.new")"; }

refused() {
  local name=$1 server=$2 pattern=$3 rc
  shift 3
  server_running "$name" "$server" || return 1
  maildir_list "$server" > "$name.before"
  "$@" > "$name.log" 2>&1; rc=$?
  list_new "$name" "$server"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    fail "$name" "the client did not finish within ${LIMIT[-1]} s"; details "$name.log"
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

verify() {
  local name=$1 why
  shift
  why=$("$@") && return 0
  fail "$name" "$(head -n 1 <<< "$why")"
  tail -n +2 <<< "$why"
  details "$name.log"
  return 1
}

check_summary() {
  local name=$1 server=$2 file=$3 user=$4 summary
  summary=$(grep -F -- " $file" "$WORK/$server.out")
  if [ "$user" != - ] && [[ $summary != *" auth=$user <"* ]]; then
    fail "$name" "mailsink's summary line for the message does not say 'auth=$user'"
  elif [ "$user" = - ] && [[ $summary == *" auth="* ]]; then
    fail "$name" "mailsink's summary line says 'auth=' though the client did not authenticate"
  else
    return 0
  fi
  echo "#   ${summary:-(no summary line names the file)}"
  return 1
}

# --- stored messages -------------------------------------------------------------------------
strip_received() {
  local name=$1 file=$2 hops=$3 expected=$4 ends first last at
  # awk (C locale: length() counts bytes, each line keeping its CR) prints the byte offsets at
  # which each of the first HOPS fields ends; a field is a line starting "Received:" and every
  # following line that starts with a space or a tab.
  ends=$(LC_ALL=C awk -v hops="$hops" '
    NR == 1 || !/^[ \t]/ {
      if (NR > 1) { list = list " " total; if (++fields == hops) { print list; done = 1; exit } }
      if (!/^Received:/) { print "only " fields + 0; done = 1; exit }
    }
    { total += length($0) + 1 }
    END { if (!done && NR > 0) print "all" }' "$file")
  case $ends in
    "") echo "the stored file is empty"; return 1 ;;
    "only 0") echo "the stored file does not start with a 'Received:' field"
              dump "$file"; return 1 ;;
    only*) echo "the stored file starts with ${ends#only } Received field(s), not $hops"
           dump "$file"; return 1 ;;
    all) echo "the stored file holds nothing but Received fields"; dump "$file"; return 1 ;;
  esac
  read -r first _ <<< "$ends"
  last=${ends##* }
  head -c "$first" "$file" > "$name.received"
  head -c "$last" "$file" > "$name.fields"
  tail -c +"$((last + 1))" "$file" > "$name.body"
  if ! cmp "$name.body" "$expected" > "$name.cmp" 2>&1; then
    echo "the stored message (after $hops Received field(s)) differs from what was sent:" \
         "$(head -n 1 "$name.cmp"); sizes $(wc -c < "$name.body") stored vs" \
         "$(wc -c < "$expected") sent"
    # The bytes around the first difference in both.
    at=$(grep -o 'byte [0-9]*' "$name.cmp" | head -n 1 | tr -dc 0-9)
    at=${at:-1}
    echo "# sent, around byte $at:"; dump "$expected" "$at"
    echo "# stored (after the Received fields), around byte $at:"; dump "$name.body" "$at"
    echo "# the stored Received field(s):"; dump "$name.fields"
    return 1
  fi
  if LC_ALL=C grep -qv $'\r$' "$name.fields"; then
    echo "a Received field has a line without CR before LF"; dump "$name.fields"; return 1
  fi
  # mailsink's field unfolded: CRs gone, each line break before a space or a tab removed.
  LC_ALL=C tr -d '\r' < "$name.received" |
    LC_ALL=C sed -e ':a' -e 'N' -e '$!ba' -e 's/\n\([ \t]\)/\1/g' > "$name.trace"
}

received_trace() { cat "$1.trace"; }

received_starts() {
  [[ $(< "$1.trace") == "$2"* ]] && return 0
  echo "mailsink's Received field does not start with '$2'"; dump "$1.received"; return 1
}

received_has() {
  [[ $(< "$1.trace") == *"$2"* ]] && return 0
  echo "mailsink's Received field does not say '$2'"; dump "$1.received"; return 1
}

received_lacks() {
  [[ $(< "$1.trace") != *"$2"* ]] && return 0
  echo "mailsink's Received field $3"; dump "$1.received"; return 1
}

# replies_are NAME FILE WANT: the lines of FILE starting with RCPT or DATA (a client helper's
# transcript, e.g. interop_lmtp.py's), cut to "WHAT CODE" and joined with " | ", are WANT.
replies_are() {
  local got
  got=$(grep -E '^(RCPT|DATA) ' "$2" | cut -d' ' -f1-3 | paste -sd'|' | sed 's/|/ | /g')
  [ "$got" = "$3" ] && return 0
  fail "$1" "replies: '$got', not '$3'"
  details "$2"
  return 1
}

# --- a throwaway Postfix instance --------------------------------------------------------------
find_sbin() {
  command -v "$1" 2>/dev/null && return 0
  [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"
  return 0
}

pfx_running() { timeout -k 5 20 "$POSTFIX" -c "$PFX/etc" status > /dev/null 2>&1; }

pfx_wait_stopped() {
  local deadline=$(( $(millis) + $1 * 1000 ))
  while pfx_running; do
    [ "$(millis)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
  return 0
}

pfx_setup() {
  local relay_port=$1 name=$2
  mkdir -p "$PFX/etc" "$PFX/spool" "$PFX/data" || return 1
  chown postfix "$PFX/data" || return 1   # else a warning at every start
  : > "$PFX/etc/main.cf"
  cp /etc/postfix/master.cf "$PFX/etc/master.cf" || return 1
  "$POSTCONF" -c "$PFX/etc" -e "compatibility_level = 3.6" \
    "queue_directory = $PFX/spool" "data_directory = $PFX/data" \
    "mail_owner = postfix" "setgid_group = postdrop" \
    "myhostname = pfx.localdomain" "mydomain = localdomain" "myorigin = \$myhostname" \
    "mydestination =" "local_recipient_maps =" "alias_maps =" "alias_database =" \
    "inet_interfaces = loopback-only" "inet_protocols = ipv4" \
    "relayhost = [127.0.0.1]:$relay_port" "smtp_tls_security_level = none" \
    "maillog_file = $PFX/maillog" "maillog_file_prefixes = $PFX" \
    "syslog_name = postfix-$name" \
    "minimal_backoff_time = 5s" "maximal_backoff_time = 10s" "queue_run_delay = 5s" || return 1
  "$POSTCONF" -c "$PFX/etc" -M# smtp/inet || return 1
  "$POSTCONF" -c "$PFX/etc" -F '*/*/chroot = n' || return 1
}

# pfx_find - the Postfix programs (POSTFIX, POSTCONF, POSTQUEUE, SENDMAIL), and in PFX_MISSING
# why the Postfix checks cannot run here, or "" when they can.
pfx_find() {
  POSTFIX=$(find_sbin postfix)
  POSTCONF=$(find_sbin postconf)
  POSTQUEUE=$(find_sbin postqueue)
  SENDMAIL=$(find_sbin sendmail)
  PFX_MISSING=
  if [ -z "$POSTFIX" ] || [ -z "$POSTCONF" ] || [ -z "$POSTQUEUE" ] || [ -z "$SENDMAIL" ] ||
     [ ! -f /etc/postfix/master.cf ]; then
    PFX_MISSING="Postfix is not installed (no postfix, postconf, postqueue, sendmail or"
    PFX_MISSING+=" /etc/postfix/master.cf): echo 'postfix postfix/main_mailer_type select No"
    PFX_MISSING+=" configuration' | debconf-set-selections; apt-get install postfix"
  elif ! getent passwd postfix > /dev/null || ! getent group postdrop > /dev/null; then
    PFX_MISSING="the postfix user or the postdrop group is missing (reinstall the postfix package)"
  elif [ "$(id -u)" != 0 ]; then
    PFX_MISSING="the Postfix checks must run as root (postfix start and a sendmail -C submission"
    PFX_MISSING+=" need it)"
  fi
}

# pfx_launch LOG [PORT] - "postfix check" and "postfix start" for the instance (their output in
# LOG), then wait until "postfix status" says it runs and, with PORT, 127.0.0.1:PORT accepts
# (master starts a listener's smtpd a moment later); at most 10 s. Status 0 when it runs.
pfx_launch() {
  local log=$1 port=${2:-} deadline
  "${LIMIT[@]}" "$POSTFIX" -c "$PFX/etc" check > "$log" 2>&1 || return 1
  PFX_STARTED=yes
  if ! "${LIMIT[@]}" "$POSTFIX" -c "$PFX/etc" start >> "$log" 2>&1; then
    pfx_running || PFX_STARTED=
    return 1
  fi
  deadline=$(( $(millis) + 10000 ))
  until pfx_running &&
        { [ -z "$port" ] || timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; }; do
    if [ "$(millis)" -ge "$deadline" ]; then
      echo "Postfix does not run${port:+ or listen on $port} 10 s after postfix start" >> "$log"
      return 1
    fi
    sleep 0.1
  done
}

# pfx_start_check NAME [PORT] - pfx_launch as the check NAME. Postfix reports a bad
# configuration to syslog or a tty only, so on a failure the check is rerun under script(1).
pfx_start_check() {
  local name=$1 port=${2:-}
  if pfx_launch "$name.log" "$port"; then
    ok "$name"
    return 0
  fi
  fail "$name" "postfix -c $PFX/etc check/start failed, or it did not come up"
  details "$name.log"
  if command -v script > /dev/null; then
    "${LIMIT[@]}" script -qec "$(printf '%q ' "$POSTFIX" -c "$PFX/etc" check)" /dev/null 2>&1 |
      tail -n 25 | sed 's/^/#   /'
  fi
  details "$PFX/maillog"
  return 1
}

# pfx_stop_check NAME - "postfix stop" as the check NAME: the instance gone within 15 s.
pfx_stop_check() {
  if "${LIMIT[@]}" "$POSTFIX" -c "$PFX/etc" stop > "$1.log" 2>&1 && pfx_wait_stopped 15; then
    PFX_STARTED=
    ok "$1"
  else
    fail "$1" "the Postfix instance did not stop within 15 s"
    details "$1.log" "$PFX/maillog"
  fi
}

# pfx_cleanup - for a suite's cleanup_hook: stop the instance if it runs, remove $PFX.
pfx_cleanup() {
  if [ -n "${PFX_STARTED:-}" ]; then
    # Never by name: this instance only, through its own config directory.
    timeout -k 5 20 "$POSTFIX" -c "$PFX/etc" stop > /dev/null 2>&1
    if ! pfx_wait_stopped 15; then
      timeout -k 5 20 "$POSTFIX" -c "$PFX/etc" abort > /dev/null 2>&1
      pfx_wait_stopped 5
    fi
  fi
  [ -z "${PFX:-}" ] || rm -rf "$PFX"
}
