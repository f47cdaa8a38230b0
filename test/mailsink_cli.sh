#!/bin/bash
# test/mailsink_cli.sh MAILSINK_PATH - every delivery mode and flag of mailsink, driven by
# Python smtplib on free loopback ports: the stdout summary (with and without --print-body),
# --mbox (byte for byte, mboxrd quoting, appending, the fcntl lock), --exec (environment,
# stdin, exit statuses, time limit, no shell injection, no descriptor leaks, no zombies),
# --json, --discard, --count (the last sender's QUIT gets 221, with smtplib and swaks),
# --exit-after, --accept-domain, --fail-rate/--fail-reply/--fail-stage/--seed, --fail-recipient
# in SMTP (the whole message refused), --verbose (AUTH masked), and the command-line errors
# (--socket-mode, --listen unix: with a relative path, a missing directory, a path too long, a
# regular file in the way). LMTP and Unix sockets with real clients: test/interop_lmtp.sh.
#
# Each check prints "ok - NAME" or "FAIL - NAME: reason" (details follow on "#" lines); the last
# line is "mailsink-cli: N passed, N failed". Exit status 1 if any check failed, 2 on bad usage.
# Every server and client runs under `timeout`.
set -u

# shellcheck source-path=SCRIPTDIR source=interop_lib.sh
. "$(dirname "$0")/interop_lib.sh"
begin_suite mailsink-cli "$@"
DETAIL_LINES=15
# The bounds on every client and short-lived mailsink (LIMIT), and on every server.
LIMIT=(timeout -k 5 60)
SERVER_LIMIT=(timeout -k 5 120)
# No servers yet: each check's own joins SERVERS when it starts, and leaves when it is reaped.
# shellcheck disable=SC2119
make_workdir
cd "$WORK" || exit 1

PY=$(find_python)
if [ -z "$PY" ]; then fail "python3" "python3 is needed as the SMTP client"; finish; exit; fi
if [ ! -x "$SINK" ]; then fail "mailsink" "$SINK is not an executable file"; finish; exit; fi

# --- helpers ---------------------------------------------------------------------------------

# start NAME ARG...: server NAME, mailsink --listen 127.0.0.1:PORT ARG... (no --maildir unless
# in ARG) on a free port, in the background under `timeout` (launch_server), and wait up to
# 10 s for its line "mailsink: listening on ...". Sets SERVER to NAME; PORT[NAME] is its port
# and PID[NAME] the pid of its `timeout` wrapper, which passes signals on. Returns 1 with the
# reason in WHY when it did not start.
start() {
  local name=$1
  shift
  SERVER=$name
  SERVERS+=("$name")
  pick_ports "$name"
  launch_server "$name" "$@"
  wait_listening "$name" $(( $(millis) + 10000 )) && return 0
  WHY="mailsink $* did not start: $(head -c 300 "$name.err")"
  return 1
}

# reap [NAME]: wait for server NAME (default: the one started last), which has exited or been
# signalled; sets STATUS to its exit status, and takes it out of SERVERS (what is left there
# at the end was never reaped: cleanup stops it, and finish shows its stderr on failures).
reap() {
  local name=${1:-$SERVER} server kept=()
  wait "${PID[$name]}"
  STATUS=$?
  PID[$name]=
  for server in "${SERVERS[@]}"; do [ "$server" = "$name" ] || kept+=("$server"); done
  SERVERS=("${kept[@]}")
}

# stop [NAME]: SIGTERM to server NAME (default: the one started last), then reap it.
stop() {
  kill -TERM "${PID[${1:-$SERVER}]}" 2>/dev/null
  reap "$@"
}

# wait_exit SECONDS: wait for the server started last to exit by itself; sets STATUS to its
# exit status, or to "running" (and stops it) when it is still running after SECONDS.
wait_exit() {
  local i
  for i in $(seq $(($1 * 20))); do
    if ! kill -0 "${PID[$SERVER]}" 2>/dev/null; then reap; return; fi
    sleep 0.05
  done
  stop
  STATUS=running
}

# client.py PORT [--from A] [--to A]... [--file F]... [--times N] [--login U:P --mech M]:
# one SMTP session sending each FILE (a small message if none) N times. Prints every reply as
# "MAIL|RCPT|DATA|END CODE TEXT" (END: the reply after the message). Exit 0 when every
# message got 250 at the end, 1 when one was refused, 2 when the session broke.
cat > client.py <<'EOF'
import argparse, smtplib, sys
p = argparse.ArgumentParser()
p.add_argument('port', type=int)
p.add_argument('--from', dest='sender', default='alice@example.test')
p.add_argument('--to', action='append')
p.add_argument('--file', action='append')
p.add_argument('--times', type=int, default=1)
p.add_argument('--login')
p.add_argument('--mech', default='PLAIN')
a = p.parse_args()
to = a.to or ['bob@example.test']
bodies = [open(f, 'rb').read() for f in a.file] if a.file else [
    b'From: Alice <alice@example.test>\r\nSubject: small\r\n\r\nHello.\r\n']
def show(what, code, text):
    print(what, code, text.decode('utf-8', 'replace') if isinstance(text, bytes) else text,
          flush=True)
status = 0
try:
    s = smtplib.SMTP('127.0.0.1', a.port, local_hostname='client.test', timeout=30)
    s.ehlo()
    if a.login:
        s.user, s.password = a.login.split(':', 1)
        mech = {'PLAIN': s.auth_plain, 'LOGIN': s.auth_login}[a.mech]
        code, text = s.auth(a.mech, mech, initial_response_ok=(a.mech == 'PLAIN'))
        show('AUTH', code, text)
    for _ in range(a.times):
        for body in bodies:
            code, text = s.docmd('MAIL', 'FROM:<%s>' % a.sender)
            show('MAIL', code, text)
            if code != 250:
                status = 1; s.rset(); continue
            accepted = 0
            for rcpt in to:
                code, text = s.docmd('RCPT', 'TO:<%s>' % rcpt)
                show('RCPT', code, text)
                accepted += code == 250
            if not accepted:
                status = 1; s.rset(); continue
            try:
                code, text = s.data(body)
                show('END', code, text)
            except smtplib.SMTPDataError as e:
                show('DATA', e.smtp_code, e.smtp_error); code = 0
            if code != 250:
                status = 1
    try:
        s.quit()
    except Exception:
        pass
except (OSError, smtplib.SMTPException) as e:
    print('BROKEN', repr(e), flush=True)
    sys.exit(2)
sys.exit(status)
EOF
client() { "${LIMIT[@]}" "$PY" client.py "$@"; }

# has NAME FILE PATTERN WHY: FAIL NAME with WHY (and the file) unless FILE has a line matching
# the grep -E PATTERN; returns 1 then.
has() {
  if grep -Eq -- "$3" "$2"; then return 0; fi
  fail "$1" "$4"; details "$2"; return 1
}

printf 'From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\nSubject: Hello summary\r\nMessage-ID: <sum-1@example.test>\r\n\r\nThe body line.\r\n' > summary.eml

# --- help and usage errors -------------------------------------------------------------------
name=help
"${LIMIT[@]}" "$SINK" --help > help.out 2>&1; rc=$?
missing=
for flag in --listen --hostname --maildir --mbox --exec --exec-timeout --discard --json \
    --print-body --quiet --verbose --count --exit-after --accept-domain --fail-rate \
    --fail-reply --fail-stage --seed --max-size --max-recipients --timeout --max-connections \
    --strict --tls-cert --tls-key --tls-key-password --tls-required --tls-implicit \
    --tls-client-ca --auth --auth-file --auth-required --auth-insecure --help --lmtp \
    --socket-mode --fail-recipient --relay --relay-tls --relay-ca --relay-auth-file \
    --relay-lmtp --relay-timeout; do
  grep -q -- "^  $flag\b" help.out || missing="$missing $flag"
done
if [ $rc -ne 0 ]; then fail $name "--help exited with status $rc"
elif [ -n "$missing" ]; then fail $name "--help does not document:$missing"
elif ! grep -q 'exit status' help.out; then fail $name "--help does not document exit statuses"
else ok $name; fi

# usage NAME ARG...: mailsink ARG... must exit 2 at once with a "mailsink: ...; see --help"
# message and never listen.
usage() {
  local name=$1
  shift
  sink_exits "$name" 2 '^mailsink: .*see --help' "no usage message" --listen 127.0.0.1:0 "$@"
}
usage two-modes-maildir-mbox --maildir md --mbox mb
usage two-modes-mbox-discard --mbox mb --discard
usage two-modes-maildir-exec --maildir md --exec /bin/true
usage json-and-discard --json --discard
usage bad-fail-rate --fail-rate 1.5
usage bad-fail-rate-text --fail-rate nan
usage bad-fail-reply-code --fail-rate 1 --fail-reply "250 2.0.0 fine"
usage bad-fail-reply-class --fail-rate 1 --fail-reply "451 5.3.0 mixed"
usage bad-fail-stage --fail-rate 1 --fail-stage quit
usage fail-reply-without-rate --fail-reply "451 4.3.0 x"
usage exec-timeout-without-exec --exec-timeout 5
usage bad-count --count 0
usage bad-accept-domain --accept-domain user@example.test
usage exec-without-program --exec
# The Unix-socket and LMTP flags (issue 14).
usage socket-mode-not-octal --listen "unix:$WORK/m.sock" --socket-mode 0999
usage socket-mode-text --listen "unix:$WORK/m.sock" --socket-mode rw-rw----
usage socket-mode-too-large --listen "unix:$WORK/m.sock" --socket-mode 01777
usage socket-mode-too-long --listen "unix:$WORK/m.sock" --socket-mode 000660
usage socket-mode-without-unix --socket-mode 0600
usage listen-unix-relative --listen unix:relative.sock
usage listen-unix-empty --listen unix:
usage fail-recipient-brackets --fail-recipient '<bob@example.test>'
usage lmtp-takes-no-value --lmtp=yes
# --relay (issue 16).
usage relay-bad-address --relay example.test
usage relay-bad-port --relay 127.0.0.1:99999
usage relay-unix-relative --relay unix:up.sock
usage relay-tls-without-relay --relay-tls
usage relay-lmtp-without-relay --relay-lmtp
usage relay-ca-without-relay-tls --relay 127.0.0.1:25 --relay-ca ca.pem

# runtime NAME ARG...: mailsink ARG... must exit 1 before listening, saying why.
runtime() {
  local name=$1
  shift
  sink_exits "$name" 1 '^mailsink: ..*' "no error message" "$@"
}
mkdir -p adir
runtime mbox-unwritable --listen 127.0.0.1:0 --mbox "$WORK/no/such/dir/mbox"
runtime mbox-is-directory --listen 127.0.0.1:0 --mbox "$WORK/adir"
runtime exec-not-found --listen 127.0.0.1:0 --exec mailsink-no-such-program-here
printf 'a:b\nc:d\n' > two-accounts
runtime relay-auth-file-two-accounts --listen 127.0.0.1:0 --relay 127.0.0.1:25 --relay-auth-file two-accounts
runtime relay-auth-file-missing --listen 127.0.0.1:0 --relay 127.0.0.1:25 --relay-auth-file "$WORK/no-such-file"
sink_exits listen-unix-missing-directory 1 "^mailsink: .*$WORK/no/such/dir/lmtp\.sock" \
  "the error does not name the socket path" --listen "unix:$WORK/no/such/dir/lmtp.sock"
# sun_path holds 108 bytes with its NUL (unix(7)): a longer path cannot be a socket.
runtime listen-unix-path-too-long --listen "unix:$WORK/$(printf 'x%.0s' $(seq 120)).sock"
# A regular file where the socket should go is not a stale socket: it is never removed.
: > not-a-socket
name=listen-unix-regular-file
sink_exits $name 1 "^mailsink: .*$WORK/not-a-socket" "the error does not name the file" \
  --listen "unix:$WORK/not-a-socket"
if [ ! -f not-a-socket ]; then fail $name-kept "the regular file was removed"; else ok $name-kept; fi
if start busy --discard; then
  runtime port-in-use --listen "127.0.0.1:${PORT[$SERVER]}" --discard
  stop > /dev/null
else fail port-in-use "could not start the first server"; fi

# --- stdout: the summary line, and --print-body ----------------------------------------------
name=stdout-summary
if start $name; then
  client "${PORT[$SERVER]}" --to bob@example.test --to carol@example.test --file summary.eml > $name.client
  rc=$?; stop > /dev/null
  re='^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} 127\.0\.0\.1:[0-9]+ <alice@example\.test> -> <bob@example\.test>, <carol@example\.test> [0-9]+ bytes, subject "Hello summary"$'
  if [ $rc -ne 0 ]; then fail $name "client exit status $rc"; details $name.client
  elif [ "$(wc -l < $name.out)" -ne 1 ]; then fail $name "stdout has not exactly one line"; details $name.out
  elif has $name $name.out "$re" "the summary line does not match $re" &&
       ! grep -q 'The body line' $name.out; then ok $name
  elif grep -q 'The body line' $name.out; then fail $name "the body is printed without --print-body"; fi
else fail $name "$WHY"; fi

name=stdout-print-body
if start $name --print-body; then
  client "${PORT[$SERVER]}" --file summary.eml > $name.client; rc=$?; stop > /dev/null
  if [ $rc -ne 0 ]; then fail $name "client exit status $rc"; details $name.client
  elif ! head -n 1 $name.out | grep -q 'subject "Hello summary"'; then fail $name "no summary line first"; details $name.out
  elif ! grep -q $'^The body line.\r$' $name.out || ! grep -q '^Message-ID: <sum-1@example.test>' $name.out; then
    fail $name "the message is not printed"; details $name.out
  else ok $name; fi
else fail $name "$WHY"; fi

# --- mbox ------------------------------------------------------------------------------------
printf 'From: Alice <alice@example.test>\r\nSubject: mbox one\r\n\r\nFrom the start\r\n>From quoted once\r\n>>From twice\r\nFromage is not quoted\r\n From indented is not\r\nlast line\r\n' > mbox1.eml
printf 'Subject: mbox two\r\n\r\n>>>From deep\r\nbye\r\n' > mbox2.eml
# What mboxrd must hold after the From_ line and our Received field.
printf 'From: Alice <alice@example.test>\nSubject: mbox one\n\n>From the start\n>>From quoted once\n>>>From twice\nFromage is not quoted\n From indented is not\nlast line\n' > mbox1.expected
printf 'Subject: mbox two\n\n>>>>From deep\nbye\n' > mbox2.expected
cat > check_mbox.py <<'EOF'
# check_mbox.py MBOX SENDER:EXPECTED...: MBOX must be exactly one entry per argument, in order:
# "From SENDER <asctime>\n", a Received field, the EXPECTED file's bytes, and a blank line.
import re, sys
data = open(sys.argv[1], 'rb').read()
pattern = b''
for arg in sys.argv[2:]:
    sender, expected = arg.split(':', 1)
    pattern += (b'From ' + re.escape(sender.encode()) +
                rb' [A-Z][a-z]{2} [A-Z][a-z]{2} [ 1-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-6][0-9] [0-9]{4}\n'
                rb'Received: [^\n]*\n(?:[ \t][^\n]*\n)*' + re.escape(open(expected, 'rb').read()) + b'\n')
if not re.fullmatch(pattern, data):
    sys.exit('the mbox does not match; it holds:\n' + data.decode('utf-8', 'replace')[:3000])
EOF
name=mbox-content
if start $name --mbox "$WORK/one.mbox"; then
  client "${PORT[$SERVER]}" --file mbox1.eml > $name.client; rc1=$?
  client "${PORT[$SERVER]}" --from '' --file mbox2.eml >> $name.client; rc2=$?
  stop > /dev/null
  if [ $rc1 -ne 0 ] || [ $rc2 -ne 0 ]; then fail $name "client exit status $rc1, $rc2"; details $name.client
  elif ! "$PY" check_mbox.py one.mbox alice@example.test:mbox1.expected MAILER-DAEMON:mbox2.expected > $name.check 2>&1; then
    fail $name "mboxrd content is wrong"; details $name.check
  elif ! grep -q " subject \"mbox one\" $WORK/one.mbox\$" $name.out; then
    fail $name "the summary line does not end with the mbox path"; details $name.out
  else ok $name; fi
else fail $name "$WHY"; fi

# A second mailsink appends to the same file, after what is there.
name=mbox-append
if start $name --mbox "$WORK/one.mbox"; then
  client "${PORT[$SERVER]}" --file mbox2.eml > $name.client; rc=$?; stop > /dev/null
  if [ $rc -ne 0 ]; then fail $name "client exit status $rc"; details $name.client
  elif ! "$PY" check_mbox.py one.mbox alice@example.test:mbox1.expected MAILER-DAEMON:mbox2.expected alice@example.test:mbox2.expected > $name.check 2>&1; then
    fail $name "the third message was not appended intact"; details $name.check
  else ok $name; fi
else fail $name "$WHY"; fi

# Another program holds an fcntl lock on the mbox: the delivery must wait for it.
name=mbox-lock-waits
cat > hold_lock.py <<'EOF'
# hold_lock.py MBOX CLIENT_ARGS...: lock MBOX, start the client, check it has not finished and
# the file is unchanged 1.5 s later, unlock, and check the client then succeeds.
import fcntl, os, subprocess, sys, time
mbox = sys.argv[1]
f = open(mbox, 'a')
fcntl.lockf(f, fcntl.LOCK_EX)
size = os.path.getsize(mbox)
p = subprocess.Popen([sys.executable] + sys.argv[2:], stdout=subprocess.DEVNULL)
time.sleep(1.5)
if p.poll() is not None:
    sys.exit('the client finished (status %r) while the mbox was locked' % p.returncode)
if os.path.getsize(mbox) != size:
    sys.exit('the mbox grew while it was locked')
fcntl.lockf(f, fcntl.LOCK_UN)
if p.wait(timeout=20) != 0:
    sys.exit('the client failed after the lock was released')
if os.path.getsize(mbox) <= size:
    sys.exit('the mbox did not grow after the lock was released')
EOF
if start $name --mbox "$WORK/locked.mbox"; then
  if "${LIMIT[@]}" "$PY" hold_lock.py locked.mbox client.py "${PORT[$SERVER]}" --file mbox1.eml > $name.check 2>&1 &&
     "$PY" check_mbox.py locked.mbox alice@example.test:mbox1.expected >> $name.check 2>&1; then
    ok $name
  else fail $name "$(tail -n 1 $name.check)"; details $name.check; fi
  stop > /dev/null
else fail $name "$WHY"; fi

# Two senders at once into one mailsink, and two mailsinks at once into one file: every
# message whole (large ones, so that an unlocked append could interleave).
name=mbox-concurrent
"$PY" - <<'EOF'
for letter in 'AB':
    with open('big%s.eml' % letter, 'wb') as f:
        f.write(b'Subject: big ' + letter.encode() + b'\r\n\r\n')
        f.write((letter * 998 + '\r\n').encode() * 3000)
    with open('big%s.expected' % letter, 'wb') as f:
        f.write(b'Subject: big ' + letter.encode() + b'\n\n')
        f.write((letter * 998 + '\n').encode() * 3000)
EOF
if start $name-1 --mbox "$WORK/shared.mbox" && P1=${PORT[$SERVER]} &&
   start $name-2 --mbox "$WORK/shared.mbox"; then
  client "$P1" --file bigA.eml > $name.c1 & c1=$!
  client "$P1" --file bigB.eml > $name.c2 & c2=$!
  client "${PORT[$SERVER]}" --file bigA.eml > $name.c3 & c3=$!
  client "${PORT[$SERVER]}" --file bigB.eml > $name.c4 & c4=$!
  rcs=; for c in $c1 $c2 $c3 $c4; do wait $c; rcs="$rcs$?"; done
  stop > /dev/null; stop $name-1 > /dev/null
  "$PY" - > $name.check 2>&1 <<'EOF'
import re, sys
data = open('shared.mbox', 'rb').read()
entries = re.split(rb'(?:^|\n\n)(?=From alice@example\.test )', data)
entries = [e for e in entries if e]
bodies = sorted(re.sub(rb'^From [^\n]*\nReceived: [^\n]*\n(?:[ \t][^\n]*\n)*', b'', e) for e in entries)
want = sorted([open('bigA.expected', 'rb').read()] * 2 + [open('bigB.expected', 'rb').read()] * 2)
if len(entries) != 4:
    sys.exit('%d entries in the mbox, not 4' % len(entries))
if [b.rstrip(b'\n') for b in bodies] != [w.rstrip(b'\n') for w in want]:
    sys.exit('a message is not intact')
if not data.endswith(b'\n\n'):
    sys.exit('the mbox does not end with a blank line')
EOF
  if [ "$rcs" != 0000 ]; then fail $name "client exit statuses $rcs"; details $name.c1 $name.c2 $name.c3 $name.c4
  elif [ -s $name.check ]; then fail $name "$(tail -n 1 $name.check)"
  else ok $name; fi
else fail $name "$WHY"; fi

# --- exec ------------------------------------------------------------------------------------
mkdir -p rec
cat > record.sh <<'EOF'
#!/bin/sh
# record.sh DIR ARG...: the message and the SMTPD_* variables, each in its own file in DIR.
d=$1
cat > "$d/stdin"
printf '%s' "$SMTPD_FROM" > "$d/from"
printf '%s' "$SMTPD_TO" > "$d/to"
printf '%s' "$SMTPD_PEER" > "$d/peer"
printf '%s' "$SMTPD_HELO" > "$d/helo"
printf '%s' "$SMTPD_TLS" > "$d/tls"
printf '%s' "${SMTPD_AUTH_USER-unset}" > "$d/auth"
shift
printf '[%s]\n' "$@" > "$d/args"
echo "record.sh says hello on stdout"
exit 0
EOF
printf '#!/bin/sh\ncat > /dev/null\necho "queue is full" >&2\nexit 75\n' > tempfail.sh
printf '#!/bin/sh\ncat > /dev/null\necho "no such user" >&2\necho "a second line" >&2\nexit 3\n' > nouser.sh
printf '#!/bin/sh\nprintf "\\033[31mred\\001\\n" >&2\nexit 9\n' > ugly.sh
printf '#!/bin/sh\nexit 0\n' > nostdin.sh
printf '#!/bin/sh\nsleep 30 &\necho $! > "$1"\nsleep 30\n' > slow.sh
cat > fds.py <<'EOF'
#!/usr/bin/env python3
# fds.py FILE: write the descriptors we inherited besides 0, 1 and 2 to FILE (one a line).
import os, sys
extra = []
for fd in os.listdir('/proc/self/fd'):
    try:
        target = os.readlink('/proc/self/fd/' + fd)
    except OSError:
        continue  # the directory listing's own descriptor, closed already
    if fd not in ('0', '1', '2') and not target.startswith('/proc/'):
        extra.append(fd + ' -> ' + target)
sys.stdin.read()
open(sys.argv[1], 'w').write(''.join(e + '\n' for e in extra))
EOF
chmod +x record.sh tempfail.sh nouser.sh ugly.sh nostdin.sh slow.sh fds.py

name=exec-env-stdin
if start $name --exec "$WORK/record.sh" "$WORK/rec" "two words" '$(echo no)'; then
  client "${PORT[$SERVER]}" --to bob@example.test --to carol@example.test --file summary.eml > $name.client; rc=$?
  stop > /dev/null
  problem=
  [ $rc -ne 0 ] && problem="client exit status $rc"
  [ -z "$problem" ] && ! tail -c "$(wc -c < summary.eml)" rec/stdin | cmp -s - summary.eml && problem="stdin is not the message"
  [ -z "$problem" ] && ! head -n 1 rec/stdin | grep -q '^Received: ' && problem="stdin does not start with the Received field"
  [ -z "$problem" ] && [ "$(cat rec/from)" != alice@example.test ] && problem="SMTPD_FROM is '$(cat rec/from)'"
  [ -z "$problem" ] && [ "$(cat rec/to)" != $'bob@example.test\ncarol@example.test' ] && problem="SMTPD_TO is '$(cat rec/to)'"
  [ -z "$problem" ] && ! grep -Eqx '127\.0\.0\.1:[0-9]+' rec/peer && problem="SMTPD_PEER is '$(cat rec/peer)'"
  [ -z "$problem" ] && [ "$(cat rec/helo)" != client.test ] && problem="SMTPD_HELO is '$(cat rec/helo)'"
  [ -z "$problem" ] && [ "$(cat rec/tls)" != 0 ] && problem="SMTPD_TLS is '$(cat rec/tls)'"
  [ -z "$problem" ] && [ "$(cat rec/auth)" != "" ] && problem="SMTPD_AUTH_USER is '$(cat rec/auth)'"
  [ -z "$problem" ] && [ "$(cat rec/args)" != $'[two words]\n[$(echo no)]' ] && problem="arguments are $(cat rec/args)"
  [ -z "$problem" ] && ! grep -q 'record.sh says hello' $name.err && problem="the program's stdout did not reach mailsink's stderr"
  [ -z "$problem" ] && grep -q 'record.sh says hello' $name.out && problem="the program's stdout went to mailsink's stdout"
  if [ -n "$problem" ]; then fail $name "$problem"; details $name.client $name.err; else ok $name; fi
else fail $name "$WHY"; fi

# exec_reply NAME EXPECTED PROGRAM [ARG...]: one message to mailsink --exec PROGRAM; the reply
# after the message must be the line EXPECTED ("END 451 4.3.0 ..." style, a grep -E pattern).
exec_reply() {
  local name=$1 expected=$2
  shift 2
  if start "$name" --exec-timeout 2 --exec "$@"; then
    client "${PORT[$SERVER]}" --file summary.eml > "$name.client"
    if grep -Eqx -- "$expected" "$name.client"; then ok "$name"
    else fail "$name" "no reply matching '$expected'"; details "$name.client" "$name.err"; fi
    stop > /dev/null
  else fail "$name" "$WHY"; fi
}
exec_reply exec-exit-75 'END 451 4\.3\.0 queue is full' "$WORK/tempfail.sh"
exec_reply exec-exit-3 'END 550 5\.0\.0 no such user' "$WORK/nouser.sh"
exec_reply exec-stderr-sanitised 'END 550 5\.0\.0 \?\[31mred\?' "$WORK/ugly.sh"
exec_reply exec-no-stdin-read 'END 250 .*' "$WORK/nostdin.sh" # EPIPE is no failure...
name=exec-no-stdin-read-big # ...not even with a message much larger than a pipe's buffer
"$PY" -c "open('huge.eml','wb').write(b'Subject: huge\r\n\r\n' + b'x' * 998 * 2000 + b'\r\n')"
if start $name --exec "$WORK/nostdin.sh"; then
  client "${PORT[$SERVER]}" --file huge.eml --times 2 > $name.client; rc=$?
  if [ $rc -eq 0 ] && kill -0 "${PID[$SERVER]}" 2>/dev/null; then ok $name
  else fail $name "client exit status $rc"; details $name.client $name.err; fi
  stop > /dev/null
else fail $name "$WHY"; fi

name=exec-timeout
if start $name --exec-timeout 1 --exec "$WORK/slow.sh" "$WORK/slow.pid"; then
  began=$(date +%s)
  client "${PORT[$SERVER]}" --file summary.eml > $name.client
  took=$(( $(date +%s) - began ))
  sleep 0.2
  if ! grep -Eqx 'END 451 4\.3\.0 .*' $name.client; then fail $name "no 451 4.3.0 after the time limit"; details $name.client
  elif [ $took -gt 10 ]; then fail $name "the reply took ${took}s with --exec-timeout 1"
  elif [ ! -s slow.pid ]; then fail $name "slow.sh did not record its background child"
  elif [ -e /proc/"$(cat slow.pid)" ] && ! grep -q '^[0-9]* ([^)]*) Z' /proc/"$(cat slow.pid)"/stat; then
    fail $name "the program's background child survived (process group not killed)"
  else ok $name; fi
  stop > /dev/null
else fail $name "$WHY"; fi

# Shell syntax in the addresses never runs: the program gets it as a plain value.
name=exec-no-injection
if start $name --exec "$WORK/record.sh" "$WORK/rec"; then
  evil_from='"$(touch pwned-from)"@x.test' # the program runs in $WORK, like mailsink
  evil_to='"`touch pwned-to`;touch pwned-to2"@x.test'
  client "${PORT[$SERVER]}" --from "$evil_from" --to "$evil_to" --file summary.eml > $name.client; rc=$?
  stop > /dev/null
  if [ $rc -ne 0 ]; then fail $name "client exit status $rc"; details $name.client
  elif ls "$WORK"/pwned* > /dev/null 2>&1; then fail $name "a command in an address was run"
  elif [ "$(cat rec/from)" != "$evil_from" ] || [ "$(cat rec/to)" != "$evil_to" ]; then
    fail $name "the addresses did not arrive verbatim: '$(cat rec/from)' '$(cat rec/to)'"
  else ok $name; fi
else fail $name "$WHY"; fi

# No descriptor of mailsink (listener, client sockets, other pipes) reaches the program, and
# every child is reaped.
name=exec-no-fd-leak
if start $name --exec "$WORK/fds.py" "$WORK/fds.txt"; then
  client "${PORT[$SERVER]}" --file summary.eml > $name.client; rc=$?
  if [ $rc -ne 0 ]; then fail $name "client exit status $rc"; details $name.client $name.err
  elif [ ! -e fds.txt ]; then fail $name "fds.py did not run"
  elif [ -s fds.txt ]; then fail $name "the program inherited descriptors: $(tr '\n' ' ' < fds.txt)"
  else ok $name; fi
  name=exec-no-zombies
  client "${PORT[$SERVER]}" --file summary.eml --times 3 > $name.client
  sleep 0.3
  ms=$(ps -o pid= --ppid "${PID[$SERVER]}" | tr -d ' ')
  kids=$(ps -o pid=,stat=,comm= --ppid "${ms:-0}")
  if [ -z "$ms" ]; then fail $name "cannot find the mailsink process"
  elif [ -n "$kids" ]; then fail $name "mailsink still has children: $kids"
  else ok $name; fi
  stop > /dev/null
else fail $name "$WHY"; fail exec-no-zombies "$WHY"; fi

# --- json ------------------------------------------------------------------------------------
printf 'From: Alice <alice@example.test>\r\nSubject: caf\xc3\xa9 \x01 bad \xff\xfe "q" \\\r\n  folded\r\nMessage-ID:\r\n <json-1@example.test>\r\n\r\nbody\r\n' > json.eml
cat > check_json.py <<'EOF'
# check_json.py OUT [PATH_PREFIX]: OUT must be JSON lines with the expected fields.
import json, re, sys
lines = open(sys.argv[1], 'rb').read().decode('utf-8').splitlines()
if len(lines) != 2:
    sys.exit('%d lines on stdout, not 2' % len(lines))
first, second = (json.loads(l) for l in lines)
want = {'time', 'peer', 'helo', 'tls', 'auth_user', 'from', 'to', 'size', 'subject',
        'message_id', 'path', 'body', 'chunked', 'requiretls', 'ret', 'envid', 'auth',
        'mail_params', 'rcpt_options', 'delivered_to', 'unix_path', 'pid', 'uid', 'gid'}
no_options = {'notify': None, 'orcpt': None, 'params': {}}
if set(first) != want:
    sys.exit('fields %s, not %s' % (sorted(first), sorted(want)))
checks = [
    (re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ', first['time']), 'time'),
    (re.fullmatch(r'127\.0\.0\.1:\d+', first['peer']), 'peer'),
    (first['helo'] == 'client.test', 'helo'),
    (first['tls'] is None and first['auth_user'] is None, 'tls/auth_user'),
    (first['from'] == 'alice@example.test', 'from'),
    (first['to'] == ['bob@example.test', 'carol@example.test'], 'to'),
    (first['delivered_to'] == first['to'], 'delivered_to'),
    # A TCP client: no Unix socket, no credentials.
    ([first[k] for k in ('unix_path', 'pid', 'uid', 'gid')] == [None] * 4, 'unix_path/pid/uid/gid'),
    (isinstance(first['size'], int) and first['size'] > 100, 'size'),
    (first['subject'] == 'caf\u00e9 \u0001 bad \ufffd\ufffd "q" \\  folded', 'subject'),
    (first['message_id'] == '<json-1@example.test>', 'message_id'),
    # The extensions' fields (test/interop_ext.sh checks them set): a plain DATA message.
    (first['body'] == '7BIT' and first['chunked'] is False and first['requiretls'] is False,
     'body/chunked/requiretls'),
    (first['ret'] is None and first['envid'] is None and first['auth'] is None, 'ret/envid/auth'),
    (first['mail_params'] == {} and first['rcpt_options'] == [no_options, no_options],
     'mail_params/rcpt_options'),
    (second['subject'] == 'Hello summary' and second['message_id'] == '<sum-1@example.test>',
     'second message'),
]
for good, what in checks:
    if not good:
        sys.exit('wrong %s: %r' % (what, first))
prefix = sys.argv[2] if len(sys.argv) > 2 else None
for obj in (first, second):
    if prefix is None and obj['path'] is not None:
        sys.exit('path is %r without storing' % obj['path'])
    if prefix is not None and not (obj['path'] or '').startswith(prefix):
        sys.exit('path %r does not start with %s' % (obj['path'], prefix))
if prefix is not None and prefix.endswith('/new/'):
    if open(first['path'], 'rb').read()[-60:] != open('json.eml', 'rb').read()[-60:]:
        sys.exit('the file at path is not the message')
EOF
# json_check NAME PATH_PREFIX FLAG...: json.eml and summary.eml, to bob and carol, through
# mailsink --json FLAG...; its stdout must pass check_json.py (PATH_PREFIX "": no path stored).
json_check() {
  local name=$1 prefix=$2 rc
  shift 2
  if start "$name" --json "$@"; then
    client "${PORT[$SERVER]}" --to bob@example.test --to carol@example.test --file json.eml \
      --file summary.eml > "$name.client"; rc=$?
    stop > /dev/null
    if [ $rc -ne 0 ]; then fail "$name" "client exit status $rc"; details "$name.client"
    elif ! "$PY" check_json.py "$name.out" ${prefix:+"$prefix"} > "$name.check" 2>&1; then
      fail "$name" "$(tail -n 1 "$name.check")"; details "$name.out"
    else ok "$name"; fi
  else fail "$name" "$WHY"; fi
}
json_check json ""
json_check json-maildir "$WORK/jmd/new/" --maildir "$WORK/jmd"
json_check json-mbox "$WORK/json.mbox" --mbox "$WORK/json.mbox"

# --- discard ---------------------------------------------------------------------------------
name=discard
if start $name --discard; then
  client "${PORT[$SERVER]}" --file summary.eml --times 3 > $name.client; rc=$?
  stop > /dev/null
  if [ $rc -ne 0 ]; then fail $name "client exit status $rc"; details $name.client
  elif [ "$(grep -c '^END 250' $name.client)" -ne 3 ]; then fail $name "not three 250 replies"; details $name.client
  elif [ -s $name.out ]; then fail $name "--discard printed something on stdout"; details $name.out
  else ok $name; fi
else fail $name "$WHY"; fi

# --- count and exit-after --------------------------------------------------------------------
name=count
if start $name --count 2 --json; then
  client "${PORT[$SERVER]}" --file summary.eml --times 2 > $name.client; rc=$?
  wait_exit 15; status=$STATUS
  if [ $rc -ne 0 ]; then fail $name "client exit status $rc (both messages should get 250)"; details $name.client
  elif [ "$status" != 0 ]; then fail $name "mailsink --count 2 exit status: $status, not 0"; details $name.err
  elif [ "$(wc -l < $name.out)" -ne 2 ]; then fail $name "not two JSON lines"; details $name.out
  else ok $name; fi
else fail $name "$WHY"; fi

name=count-one-per-client # two clients, --count 1: exactly one message accepted
if start $name --count 1; then
  client "${PORT[$SERVER]}" --file summary.eml > $name.c1
  client "${PORT[$SERVER]}" --file summary.eml > $name.c2
  wait_exit 15; status=$STATUS
  if [ "$status" != 0 ]; then fail $name "exit status: $status, not 0"; details $name.err
  elif [ "$(cat $name.c1 $name.c2 | grep -c '^END 250')" -ne 1 ]; then fail $name "not exactly one message accepted"; details $name.c1 $name.c2
  elif [ "$(wc -l < $name.out)" -ne 1 ]; then fail $name "not one summary line"; details $name.out
  else ok $name; fi
else fail $name "$WHY"; fi

# After the Nth message of --count N, mailsink takes no new client but lets the open sessions
# end by themselves for a moment: the last sender's QUIT gets 221, not the shutdown's 421,
# which smtplib's context manager raises and swaks reports as an error (issue 11).
cat > count_client.py <<'EOF'
# count_client.py MODE PORT: one client of a mailsink --count 1; prints one "WHAT CODE TEXT"
# line per reply that matters. An exception (a refused message, a 421 to QUIT in the context
# manager, a dropped connection) ends it with a traceback and a non-zero status.
#   with     send in `with smtplib.SMTP(...) as c:`, as a user's script does; QUIT's reply
#   others   a session opened before the message: it goes on (NOOP), QUITs after the last
#            sender, and a new connection in between is refused (NEW refused)
#   idle     send, then stay silent: the server ends the session itself (the reply it sends)
import smtplib, socket, sys, time
mode, port = sys.argv[1], int(sys.argv[2])
message = b'Subject: the last one\r\n\r\nThe body line.\r\n'
def show(what, code, text):
    print(what, code, text.decode('utf-8', 'replace'), flush=True)
class Client(smtplib.SMTP):
    def __init__(self, name):
        super().__init__('127.0.0.1', port, local_hostname=name, timeout=30)
    def docmd(self, cmd, args=''):  # what the context manager sends QUIT with
        code, text = super().docmd(cmd, args)
        if cmd.upper() == 'QUIT':
            show('QUIT', code, text)
        return code, text
def refused():  # the stop is asynchronous to our 250: try for a while
    for _ in range(50):
        try:
            socket.create_connection(('127.0.0.1', port), timeout=5).close()
        except ConnectionRefusedError:
            return 'refused'
        time.sleep(0.02)
    return 'accepted'
if mode == 'with':
    with Client('client.test') as c:
        c.sendmail('alice@example.test', ['bob@example.test'], message)
        # A script does a little more before it leaves the block; without it the QUIT could
        # outrun mailsink's (asynchronous) stop, and the check would not see the 421 it had.
        time.sleep(0.3)
elif mode == 'others':
    other = Client('other.test')
    other.ehlo()
    last = Client('client.test')
    last.sendmail('alice@example.test', ['bob@example.test'], message)
    last.docmd('QUIT')
    show('NOOP', *other.noop())
    print('NEW', refused(), flush=True)
    other.docmd('QUIT')
elif mode == 'idle':
    c = Client('client.test')
    c.sendmail('alice@example.test', ['bob@example.test'], message)
    show('THEN', *c.getreply())
EOF
# count_run NAME MODE: mailsink --count 1 --json, count_client.py MODE against it (output in
# NAME.client), then wait for mailsink to exit; RC is the client's status, STATUS mailsink's.
count_run() {
  if ! start "$1" --count 1 --json; then fail "$1" "$WHY"; return 1; fi
  "${LIMIT[@]}" "$PY" count_client.py "$2" "${PORT[$SERVER]}" > "$1.client" 2>&1; RC=$?
  wait_exit 15
}
# count_done NAME: mailsink exited 0 with the one JSON line; fails NAME otherwise.
count_done() {
  if [ "$STATUS" != 0 ]; then fail "$1" "mailsink exit status: $STATUS, not 0"; details "$1.err"
  elif [ "$(wc -l < "$1.out")" -ne 1 ]; then fail "$1" "not one JSON line"; details "$1.out"
  else return 0; fi
  return 1
}

name=count-last-quit-smtplib
if count_run $name with; then
  if [ $RC -ne 0 ]; then fail $name "the sending script failed (exit status $RC)"; details $name.client
  elif ! grep -q '^QUIT 221 ' $name.client; then fail $name "QUIT did not get 221"; details $name.client
  elif count_done $name; then ok $name; fi
fi

name=count-others-end-by-themselves
if count_run $name others; then
  got=$(grep -E '^(QUIT|NOOP|NEW) ' $name.client | cut -d' ' -f1,2 | tr '\n' ' ')
  want='QUIT 221 NOOP 250 NEW refused QUIT 221 '
  if [ $RC -ne 0 ] || [ "$got" != "$want" ]; then
    fail $name "replies: $got(exit status $RC), not $want"; details $name.client
  elif count_done $name; then ok $name; fi
fi

name=count-idle-session-421 # a session still open after the grace is ended by the shutdown
if count_run $name idle; then
  if [ $RC -ne 0 ] || ! grep -q '^THEN 421 4\.3\.2 ' $name.client; then
    fail $name "no 421 4.3.2 to the silent session (exit status $RC)"; details $name.client
  elif count_done $name; then ok $name; fi
fi

name=count-last-quit-swaks
find_clients
write_probe_message
if need $name "$SWAKS" "$NO_SWAKS" && start $name --count 1 --json; then
  "${LIMIT[@]}" "$SWAKS" --server "127.0.0.1:${PORT[$SERVER]}" --helo client.test \
    --from alice@example.test --to bob@example.test --data @msg-nofinal.eml > $name.client 2>&1
  rc=$?
  wait_exit 15
  if [ $rc -ne 0 ]; then fail $name "swaks exit status $rc"; details $name.client
  elif grep -q '^<\*\*' $name.client; then fail $name "swaks marks a reply as an error"; details $name.client
  elif ! grep -q '^<-  221 ' $name.client; then fail $name "QUIT did not get 221"; details $name.client
  elif count_done $name; then ok $name; fi
elif [ -n "$SWAKS" ]; then fail $name "$WHY"; fi

name=exit-after-with-count
began=$(date +%s)
if start $name --exit-after 1 --count 5; then
  client "${PORT[$SERVER]}" --file summary.eml > $name.client
  wait_exit 15; status=$STATUS
  took=$(( $(date +%s) - began ))
  if [ "$status" != 1 ]; then fail $name "exit status: $status, not 1"; details $name.err
  elif [ $took -gt 8 ]; then fail $name "took ${took}s"
  elif ! grep -q '1 of --count 5' $name.err; then fail $name "no message saying how many arrived"; details $name.err
  else ok $name; fi
else fail $name "$WHY"; fi

name=exit-after-without-count
if start $name --exit-after 1; then
  wait_exit 15; status=$STATUS
  if [ "$status" != 0 ]; then fail $name "exit status: $status, not 0"; details $name.err; else ok $name; fi
else fail $name "$WHY"; fi

name=sigterm-exit-0
if start $name --count 3; then
  stop; status=$STATUS
  if [ "$status" != 0 ]; then fail $name "exit status after SIGTERM: $status, not 0"; else ok $name; fi
else fail $name "$WHY"; fi

# --- accept-domain ---------------------------------------------------------------------------
name=accept-domain
if start $name --accept-domain Example.TEST --accept-domain second.test; then
  client "${PORT[$SERVER]}" --to bob@example.test --to BOB@EXAMPLE.test --to x@second.test \
    --to x@other.test --to x@sub.example.test --to '"a@example.test"@evil.test' \
    --to postmaster --to Postmaster --file summary.eml > $name.client; rc=$?
  stop > /dev/null
  got=$(grep '^RCPT' $name.client | cut -c1-8 | tr '\n' ' ')
  want='RCPT 250 RCPT 250 RCPT 250 RCPT 550 RCPT 550 RCPT 550 RCPT 250 RCPT 250 '
  if [ "$got" != "$want" ]; then fail $name "RCPT replies: $got, not $want"; details $name.client
  elif ! grep -qx 'RCPT 550 5.1.1 Recipient address rejected: domain not accepted' $name.client; then
    fail $name "the refusal is not '550 5.1.1 Recipient address rejected: domain not accepted'"; details $name.client
  elif ! grep -q '^END 250' $name.client; then fail $name "the message was not accepted"
  else ok $name; fi
else fail $name "$WHY"; fi

# --- fault injection -------------------------------------------------------------------------
# fault NAME STAGE EXPECTED_LINE: with --fail-rate 1 at STAGE, the client sees EXPECTED_LINE
# and no message is accepted.
fault() {
  local name=$1 stage=$2 expected=$3
  if start "$name" --fail-rate 1 --fail-stage "$stage" --fail-reply "452 4.3.1 Slow down please"; then
    client "${PORT[$SERVER]}" --file summary.eml --times 2 > "$name.client"
    stop > /dev/null
    if [ "$(grep -cxF -- "$expected" "$name.client")" -ne 2 ]; then fail "$name" "no '$expected' twice"; details "$name.client"
    elif grep -q '^END 250' "$name.client" || [ -s "$name.out" ]; then fail "$name" "a message was accepted"
    else ok "$name"; fi
  else fail "$name" "$WHY"; fi
}
fault fail-stage-mail mail 'MAIL 452 4.3.1 Slow down please'
fault fail-stage-rcpt rcpt 'RCPT 452 4.3.1 Slow down please'
fault fail-stage-data data 'END 452 4.3.1 Slow down please'

name=fail-default-reply # default stage data, default reply
if start $name --fail-rate 1; then
  client "${PORT[$SERVER]}" --file summary.eml > $name.client
  stop > /dev/null
  if grep -qx 'END 451 4.3.0 Try again later' $name.client; then ok $name
  else fail $name "no 'END 451 4.3.0 Try again later'"; details $name.client; fi
else fail $name "$WHY"; fi

name=fail-rate-0
if start $name --fail-rate 0 --fail-stage rcpt --seed 1; then
  client "${PORT[$SERVER]}" --file summary.eml --times 20 > $name.client; rc=$?
  stop > /dev/null
  if [ $rc -eq 0 ] && [ "$(grep -c '^END 250' $name.client)" -eq 20 ]; then ok $name
  else fail $name "not all 20 messages accepted"; details $name.client; fi
else fail $name "$WHY"; fi

name=fail-rate-seed # the same seed refuses the same messages; both outcomes happen
: > $name-1.seq; : > $name-2.seq
for run in 1 2; do
  if start $name-$run --fail-rate 0.5 --seed 42; then
    client "${PORT[$SERVER]}" --file summary.eml --times 30 > $name-$run.client
    stop > /dev/null
    grep '^END' $name-$run.client | cut -c1-7 > $name-$run.seq
  else echo "# $WHY"; fi
done
if [ -s $name-1.seq ] && cmp -s $name-1.seq $name-2.seq &&
   grep -q 'END 250' $name-1.seq && grep -q 'END 451' $name-1.seq; then ok $name
else fail $name "the sequences differ or are all one outcome: $(tr '\n' ' ' < $name-1.seq) / $(tr '\n' ' ' < $name-2.seq)"; fi

# --- fail-recipient in SMTP: one reply for the message, so a refused recipient refuses it all --
name=fail-recipient-smtp
if start $name --json --fail-recipient Carol@Example.test --fail-reply "550 5.1.1 No such user"; then
  client "${PORT[$SERVER]}" --to bob@example.test --to carol@example.test --file summary.eml > $name.c1
  client "${PORT[$SERVER]}" --to bob@example.test --file summary.eml > $name.c2
  stop > /dev/null
  if ! grep -qx 'END 550 5.1.1 No such user' $name.c1; then
    fail $name "the message to bob and carol did not get '550 5.1.1 No such user'"; details $name.c1
  elif ! grep -q '^END 250' $name.c2; then fail $name "the message to bob alone was refused"; details $name.c2
  elif [ "$(wc -l < $name.out)" -ne 1 ]; then fail $name "not exactly one JSON line (for bob's)"; details $name.out
  elif ! grep -q '"to":\["bob@example.test"\],.*"delivered_to":\["bob@example.test"\]' $name.out; then
    fail $name "the JSON line lacks delivered_to [bob]"; details $name.out
  else ok $name; fi
else fail $name "$WHY"; fi

# --- verbose ---------------------------------------------------------------------------------
name=verbose
if start $name --verbose --auth-insecure --auth 'u:Sup3r-s3cret!'; then
  client "${PORT[$SERVER]}" --login 'u:Sup3r-s3cret!' --mech PLAIN --file summary.eml > $name.c1; rc1=$?
  client "${PORT[$SERVER]}" --login 'u:Sup3r-s3cret!' --mech LOGIN --file summary.eml > $name.c2; rc2=$?
  stop > /dev/null
  secrets=$("$PY" -c 'import base64
pw = b"Sup3r-s3cret!"
for s in (pw, b"\0u\0" + pw, b"u\0u\0" + pw):
    print(base64.b64encode(s).decode())
print(pw.decode())')
  leaked=
  while read -r s; do grep -qF -- "$s" $name.err && leaked="$leaked $s"; done <<< "$secrets"
  if [ $rc1 -ne 0 ] || [ $rc2 -ne 0 ]; then fail $name "client exit statuses $rc1 $rc2"; details $name.c1 $name.c2 $name.err
  elif [ -n "$leaked" ]; then fail $name "the transcript shows a secret:$leaked"
  elif ! grep -Eiq '^mailsink: 127\.0\.0\.1:[0-9]+ C: EHLO client\.test$' $name.err; then fail $name "no 'C: EHLO' line"; details $name.err
  elif ! grep -Eq '^mailsink: 127\.0\.0\.1:[0-9]+ S: 220 ' $name.err; then fail $name "no 'S: 220' greeting line"; details $name.err
  elif ! grep -Eq ' C: AUTH PLAIN' $name.err || ! grep -Eq ' C: AUTH LOGIN' $name.err; then fail $name "no masked AUTH lines"; details $name.err
  elif ! grep -Eq ' C: MAIL FROM:<alice@example\.test>' $name.err || ! grep -Eq ' S: 250 ' $name.err; then fail $name "no MAIL line"; details $name.err
  elif ! grep -q ' auth=u <alice@example.test>' $name.out; then fail $name "the summary line lacks auth=u"; details $name.out
  else ok $name; fi
else fail $name "$WHY"; fi

name=no-verbose-no-transcript
if grep -q ' C: ' stdout-summary.err; then fail $name "a transcript without --verbose"; details stdout-summary.err; else ok $name; fi

finish
