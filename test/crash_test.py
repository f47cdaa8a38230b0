#!/usr/bin/env python3
"""crash_test.py - crash consistency of `mailsink --maildir`: SIGKILL it while clients send.

    python3 test/crash_test.py [--reps 8] [--seed N] [--clients 4] MAILSINK_PATH

One Maildir for the whole run. Each repetition starts mailsink on it (so it also restarts over
what the previous kill left), lets --clients connections send messages in a loop (each with a
unique X-Stress-Id header and a random body, some large so that kills land mid-DATA and
mid-write), waits until the server has acknowledged a first message, then sends SIGKILL after a
random delay drawn from --seed (printed, with each delay, so a run can be repeated). Then one
check per repetition, over every message of the run so far:
  * every message answered 250 is in DIR/new exactly once and byte-exact (after the server's
    Received field);
  * every file in DIR/new is a complete, byte-exact message whose final "." was sent (one
    stored by the kill between rename and 250 is allowed), none partial, none twice;
  * the server was still running when killed (it did not crash by itself).
Files left in DIR/tmp are allowed (maildir(5): readers ignore tmp/) and only counted. A SIGKILL
cannot show a missing fsync (the page cache survives); it shows that nothing half-written
reaches new/ and that a 250 is only sent for a stored message.

Each check prints "ok - ..." or "FAIL - ..."; the last line is "crash-test: N passed, N failed".
Exit status 0 when all passed, 1 otherwise, 2 on bad usage. About 10-20 s.
"""

import argparse
import base64
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smtp_test_util import strip_received  # noqa: E402

ID_HEADER = b"X-Stress-Id: "
REPLY_RE = re.compile(rb"^[2-5][0-9][0-9]([ -]|$)")


class Closed(Exception):
    pass


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buf = b""

    def reply(self):
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise Closed()
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            if not REPLY_RE.match(line):
                raise Closed("malformed reply %r" % line[:60])
            if line[3:4] != b"-":
                return int(line[:3])

    def command(self, line, want):
        self.sock.sendall(line)
        code = self.reply()
        if code != want:
            raise Closed("%r answered %d" % (line, code))


def make_message(rng, mid):
    """CRLF lines: the id header, a subject, a blank line, a random base64 body (some lines
    starting with "." for dot-stuffing). Mostly small, a quarter large, a few over a MiB."""
    r = rng.random()
    size = rng.randint(0, 16384) if r < 0.7 else rng.randint(16384, 262144) if r < 0.95 \
        else rng.randint(262144, 2 * 1024 * 1024)
    head = ID_HEADER + mid.encode() + b"\r\nSubject: crash test\r\n\r\n"
    body = base64.b64encode(rng.randbytes(size * 3 // 4 + 1))[:size]
    lines = [body[i:i + 76] for i in range(0, len(body), 76)]
    for i in range(0, len(lines), 17):
        lines[i] = b"." + lines[i]
    return head + b"".join(line + b"\r\n" for line in lines)


class Ledger:
    """id -> [sha256, length, state]; state: sending (final "." not sent), terminated (sent,
    no reply), acked (250), refused (another reply)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.messages = {}

    def add(self, mid, content):
        with self.lock:
            self.messages[mid] = [hashlib.sha256(content).hexdigest(), len(content), "sending"]

    def set(self, mid, state):
        with self.lock:
            self.messages[mid][2] = state


def client(port, rep, index, seed, ledger, acked_event, counts):
    rng = random.Random(seed * 7919 + rep * 101 + index)
    seq = 0
    try:
        c = Conn(port)
        if c.reply() != 220:
            return
        c.command(b"EHLO crash.test\r\n", 250)
        while True:
            seq += 1
            mid = "%d-%d-%d-%08x" % (rep, index, seq, rng.getrandbits(32))
            content = make_message(rng, mid)
            ledger.add(mid, content)
            if rng.random() < 0.5:
                c.command(b"MAIL FROM:<crash@client.test>\r\n", 250)
                c.command(b"RCPT TO:<sink@server.test>\r\n", 250)
                c.command(b"DATA\r\n", 354)
            else:  # pipelined (RFC 2920)
                c.sock.sendall(b"MAIL FROM:<crash@client.test>\r\nRCPT TO:<sink@server.test>\r\n"
                               b"DATA\r\n")
                if [c.reply(), c.reply(), c.reply()] != [250, 250, 354]:
                    raise Closed("pipelined envelope refused")
            data = re.sub(rb"(?m)^\.", b"..", content)
            step = rng.choice([4096, 65536, len(data) + 1])
            for i in range(0, len(data), step):
                c.sock.sendall(data[i:i + step])
            ledger.set(mid, "terminated")  # before any byte of the final ".\r\n"
            c.sock.sendall(b".\r\n")
            code = c.reply()
            ledger.set(mid, "acked" if code == 250 else "refused")
            if code == 250:
                counts[index] += 1
                acked_event.set()
    except (Closed, OSError):
        pass  # the kill


def reader(maildir, ledger, stop, seen, problems):
    """A mail reader polling DIR/new while the server runs: maildir(5) promises it never sees
    a file there before the file is complete."""
    new_dir = os.path.join(maildir, "new")
    while not stop.is_set():
        for name in os.listdir(new_dir):
            if name in seen:
                continue
            seen.add(name)
            try:
                with open(os.path.join(new_dir, name), "rb") as f:
                    data = f.read()
            except OSError:
                continue
            content = strip_received(data)
            mid = None
            if content is not None and content.startswith(ID_HEADER) and b"\r\n" in content:
                mid = content[len(ID_HEADER):content.find(b"\r\n")].decode("latin-1")
            entry = ledger.messages.get(mid)
            if entry is None or hashlib.sha256(content).hexdigest() != entry[0]:
                problems.append("a reader saw new/%s incomplete (%d bytes%s)"
                                % (name, len(data), ", sent %d" % entry[1] if entry else ""))
        time.sleep(0.001)


def check(maildir, ledger):
    """Problems with the Maildir against the ledger, and a few counts."""
    problems = []
    seen = {}
    new_dir = os.path.join(maildir, "new")
    for name in sorted(os.listdir(new_dir)):
        with open(os.path.join(new_dir, name), "rb") as f:
            data = f.read()
        content = strip_received(data)
        if content is None or not content.startswith(ID_HEADER):
            problems.append("new/%s: not a message of ours (%d bytes, starts %r)"
                            % (name, len(data), data[:40]))
            continue
        mid = content[len(ID_HEADER):content.find(b"\r\n")].decode("latin-1")
        entry = ledger.messages.get(mid)
        if entry is None:
            problems.append("new/%s: unknown id %s" % (name, mid))
        elif mid in seen:
            problems.append("new/%s: message %s stored twice (also %s)" % (name, mid, seen[mid]))
        elif entry[2] not in ("acked", "terminated"):
            problems.append("new/%s: message %s stored although its state is %s"
                            % (name, mid, entry[2]))
        elif hashlib.sha256(content).hexdigest() != entry[0]:
            problems.append("new/%s: message %s partial or corrupt: %d bytes, sent %d"
                            % (name, mid, len(content), entry[1]))
        seen.setdefault(mid, name)
    acked = [mid for mid, e in ledger.messages.items() if e[2] == "acked"]
    lost = [mid for mid in acked if mid not in seen]
    for mid in lost[:10]:
        problems.append("acknowledged message %s (%d bytes) missing from new/"
                        % (mid, ledger.messages[mid][1]))
    if len(lost) > 10:
        problems.append("... %d acknowledged messages missing in all" % len(lost))
    unacked_stored = sum(1 for mid in seen if ledger.messages.get(mid, [0, 0, ""])[2]
                         == "terminated")
    tmp_files = len(os.listdir(os.path.join(maildir, "tmp")))
    return problems, len(acked), len(seen), unacked_stored, tmp_files


def start_server(mailsink, maildir, log_path):
    log = open(log_path, "wb")
    proc = subprocess.Popen([mailsink, "--listen", "127.0.0.1:0", "--maildir", maildir,
                             "--timeout", "20"], stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        with open(log_path, "rb") as f:
            m = re.search(rb"listening on 127\.0\.0\.1:(\d+)", f.read())
        if m:
            return proc, int(m.group(1))
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    return None, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mailsink")
    ap.add_argument("--reps", type=int, default=8, help="repetitions, one kill each (default 8)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent connections (default 4)")
    ap.add_argument("--seed", type=int, default=None, help="default: random, printed")
    ap.add_argument("--max-delay", type=float, default=1.5,
                    help="the kill comes 0..this many seconds after the first 250 (default 1.5)")
    ap.add_argument("--keep", action="store_true", help="keep the Maildir and the server log")
    args = ap.parse_args()
    mailsink = os.path.abspath(args.mailsink)
    if not os.access(mailsink, os.X_OK):
        print("crash-test: %s is not an executable" % args.mailsink, file=sys.stderr)
        print("crash-test: 0 passed, 1 failed")
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    workdir = tempfile.mkdtemp(prefix="crash-test.")
    maildir = os.path.join(workdir, "md")
    print("# crash-test: seed %d (repeat with --seed %d), %d repetitions, %d clients, in %s"
          % (seed, seed, args.reps, args.clients, workdir), flush=True)
    ledger = Ledger()
    read_names = set()  # files in new/ the reader has checked already
    reported = set()  # problems already counted by an earlier repetition
    passed = failed = 0
    started = time.monotonic()
    for rep in range(1, args.reps + 1):
        delay = rng.uniform(0, args.max_delay)
        log_path = os.path.join(workdir, "mailsink.%d.err" % rep)
        proc, port = start_server(mailsink, maildir, log_path)
        if proc is None:
            failed += 1
            with open(log_path, "rb") as f:
                tail = f.read()[-300:].decode(errors="replace")
            print("FAIL - repetition %d: mailsink did not start: %s" % (rep, tail.strip()))
            continue
        acked_event = threading.Event()
        counts = [0] * args.clients
        threads = [threading.Thread(target=client, daemon=True,
                                    args=(port, rep, i, seed, ledger, acked_event, counts))
                   for i in range(args.clients)]
        stop_reading, read_problems = threading.Event(), []
        read_thread = threading.Thread(target=reader, daemon=True,
                                       args=(maildir, ledger, stop_reading, read_names,
                                             read_problems))
        read_thread.start()
        for t in threads:
            t.start()
        first = acked_event.wait(20)
        time.sleep(delay)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stop_reading.set()
        read_thread.join()
        for t in threads:
            t.join(25)
        problems, acked, stored, unacked_stored, tmp_files = check(maildir, ledger)
        # A bad file stays in new/: count it against the repetition that made it, only.
        problems = [p for p in problems + read_problems if p not in reported]
        reported.update(problems)
        if not first:
            problems.append("no message acknowledged within 20 s")
        if not alive:
            problems.append("mailsink had exited (status %s) before the kill" % proc.returncode)
        if any(t.is_alive() for t in threads):
            problems.append("a client still hangs 25 s after the kill")
        what = ("repetition %d: killed %.3f s after the first 250, %d acked this time; in all "
                "%d acked, %d in new/ (%d of them unacknowledged), %d left in tmp/"
                % (rep, delay, sum(counts), acked, stored, unacked_stored, tmp_files))
        if problems:
            failed += 1
            print("FAIL - " + what)
            for p in problems[:20]:
                print("#   " + p)
        else:
            passed += 1
            print("ok - " + what, flush=True)
    elapsed = time.monotonic() - started
    print("# crash-test: %.1f s, seed %d" % (elapsed, seed))
    if failed or args.keep:
        print("# crash-test: kept " + workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print("crash-test: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
