#!/usr/bin/env python3
"""stress.py - a bounded stress test of mailsink (and so of the smtpd library) on loopback.

    python3 test/stress.py --mailsink build/mailsink [--duration 20] [--clients 300] [--seed N]

`make stress` runs it. It starts mailsink with --maildir, STARTTLS (a throwaway certificate
made at run time), --timeout 5 and --max-size 300000, then runs --clients client threads for
--duration seconds. Each thread opens one connection after another, each playing one of:

  normal     1-3 messages, one command at a time (sometimes HELO, SIZE=, a binary body)
  pipelined  several messages, MAIL+RCPT+DATA in one write and the next envelope sent with the
             previous message's data (RFC 2920); or the whole session in one write ("blast")
  abort      a message cut mid-DATA: close or RST after a random part of it
  slowloris  one byte a second (in a command line or in message data), or silence, until the
             server cuts the connection; at most a sixth of the clients at once
  oversize   a message over --max-size, with or without SIZE=: expects 552, then a normal one
  garbage    random bytes and NULs, HTTP requests, over-long lines, junk commands, a message
             with NUL and 8-bit bytes
  tls        STARTTLS then: part of a ClientHello and close or stall, garbage instead of a
             handshake, a handshake cut half-way or right after it, or a full session with mail

Every message carries a unique X-Stress-Id header and a random body of 0-200 KiB. Then:
  * every message answered 250 is in DIR/new exactly once and byte-exact once the server's
    Received field is removed; no message without a 250 is stored; no other file is there;
  * no client that should succeed saw an error; every slow or silent connection (slowloris,
    stalled handshake) was cut by the server --timeout seconds after its command line, its
    message data or its silence began (per-line deadline, minimum data rate, timeout), not
    before, at most 3 s later;
  * once the clients are gone the server's open descriptors (/proc/PID/fd) are back to their
    value before the first client at once (--settle), its threads (/proc/PID/status) to at
    most that plus the parked workers (--idle-threads), and within --idle-wait seconds, when
    the parked workers have timed out, exactly to it, with RSS at most --rss-slack-mib above;
  * SIGTERM then stops mailsink with status 0.
Prints a summary and exits 0 when all holds, 1 on any violation, 2 on a setup error.
The working directory (maildir, certificate, server log) is removed unless --keep or a failure.
"""

import argparse
import base64
import collections
import hashlib
import os
import random
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smtp_test_util import strip_received  # noqa: E402

MAX_SIZE = 300000  # --max-size given to mailsink: above every normal message (<= ~205 KiB)
SERVER_TIMEOUT = 5  # --timeout given to mailsink, seconds
CLOSE_MARGIN = 6.0  # how long past SERVER_TIMEOUT a cut connection may stay open
IO_TIMEOUT = 30.0  # client socket timeout while the server is expected to answer
REPLY_RE = re.compile(rb"^[2-5][0-9][0-9]([ -]|$)")
ID_HEADER = b"X-Stress-Id: "


class SetupError(Exception):
    pass


class Unexpected(Exception):
    """The server did something a well-behaved client does not expect (counted as an error)."""


class Closed(Unexpected):
    """The server closed the connection while a reply was awaited."""


# ---------------------------------------------------------------------------------------------
# Bookkeeping shared by the client threads
# ---------------------------------------------------------------------------------------------


class Ledger:
    """Every message a client started, by id: its length, SHA-256 and what the server said.

    state: pending     built, the final "." never sent (must not be stored)
           aborted     cut mid-DATA on purpose (must not be stored)
           terminated  the final "." sent but no reply read (may be stored, once, byte-exact)
           acked       250 after the final "." (must be stored exactly once, byte-exact)
           refused     any other reply (must not be stored)
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.messages = {}

    def add(self, mid, content, kind):
        entry = {"len": len(content), "sha": hashlib.sha256(content).hexdigest(), "kind": kind,
                 "state": "pending", "reply": ""}
        with self.lock:
            self.messages[mid] = entry

    def set(self, mid, state, reply=""):
        with self.lock:
            self.messages[mid]["state"] = state
            self.messages[mid]["reply"] = reply


class Stats:
    """Counters by name, and the first few error texts by scenario."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.errors = collections.defaultdict(list)
        self.close_times = collections.defaultdict(list)  # kind -> seconds of silence before close
        self.maxima = {}

    def add(self, name, n=1):
        with self.lock:
            self.counts[name] += n

    def error(self, scenario, text):
        with self.lock:
            self.counts["errors"] += 1
            self.counts["errors." + scenario] += 1
            if len(self.errors[scenario]) < 5:
                self.errors[scenario].append(text)

    def longest(self, name, seconds):
        with self.lock:
            self.maxima[name] = max(self.maxima.get(name, 0.0), seconds)

    def closed_after(self, kind, seconds):
        with self.lock:
            self.close_times[kind].append(seconds)


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------


def make_message(rng, mid, kind, max_body=200 * 1024, binary=False):
    """A message with CRLF line ends: the id header, a subject, a blank line and a random body of
    0..max_body bytes (base64 lines, some starting with "." to exercise dot-stuffing). With
    `binary` the body holds every byte value except CR and LF, NUL included."""
    head = ID_HEADER + mid.encode() + b"\r\nSubject: stress " + kind.encode() + b"\r\n\r\n"
    size = rng.randint(0, max_body)
    if size == 0:
        return head
    if binary:
        raw = bytearray(rng.randbytes(size))
        for i, b in enumerate(raw):
            if b in (10, 13):
                raw[i] = 0
        lines = [bytes(raw[i:i + 998]) for i in range(0, len(raw), 998)]
    else:
        lines = base64.b64encode(rng.randbytes(size * 3 // 4 + 1))[:size]
        lines = [lines[i:i + 76] for i in range(0, len(lines), 76)]
        for i in range(0, len(lines), rng.randint(5, 60)):
            lines[i] = b"." + lines[i]
    return head + b"\r\n".join(lines) + b"\r\n"


def stuff(content):
    """The DATA form of `content` (which ends with CRLF): dot-stuffed, terminator not included."""
    return re.sub(rb"(?m)^\.", b"..", content)


# ---------------------------------------------------------------------------------------------
# A small SMTP client over a socket
# ---------------------------------------------------------------------------------------------


class Conn:
    def __init__(self, addr, timeout=IO_TIMEOUT):
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def reply(self):
        """One reply: (code, [lines]). Raises Unexpected on EOF or a malformed line."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise Closed("server closed the connection (after %r)" % lines)
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            if not REPLY_RE.match(line):
                raise Unexpected("malformed reply line %r" % line[:80])
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), lines

    def expect(self, code):
        got, lines = self.reply()
        if got != code:
            raise Unexpected("expected %d, got %r" % (code, b" / ".join(lines)[:200]))
        return lines

    def starttls(self, ctx):
        self.send(b"STARTTLS\r\n")
        self.expect(220)
        if self.buf:
            raise Unexpected("bytes after the STARTTLS 220: %r" % self.buf[:40])
        self.sock = ctx.wrap_socket(self.sock)

    def wait_close(self, limit, since=None):
        """Read until the server closes; returns (seconds since `since`, default now, bytes
        read) or raises Unexpected if it is still open `limit` seconds after `since`."""
        start = time.monotonic() if since is None else since
        data = b""
        while True:
            left = limit - (time.monotonic() - start)
            if left <= 0:
                raise Unexpected("server kept the connection open for %.1f s" % limit)
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, ssl.SSLError, OSError):
                chunk = b""
            if not chunk:
                return time.monotonic() - start, data
            data += chunk

    def close(self, reset=False):
        try:
            if reset:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass


def check_reply_lines(data):
    """Every complete line in `data` (server output read to EOF) is a well-formed reply."""
    for line in data.split(b"\r\n")[:-1]:
        if not REPLY_RE.match(line):
            raise Unexpected("malformed reply line %r" % line[:80])


def client_hello(ctx):
    """The bytes of a TLS ClientHello as `ctx` would send it."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


# ---------------------------------------------------------------------------------------------
# The scenarios: each runs one connection. Unexpected server behaviour raises Unexpected.
# ---------------------------------------------------------------------------------------------

ENVELOPE = b"MAIL FROM:<stress@client.test>\r\nRCPT TO:<sink@server.test>\r\nDATA\r\n"


class Client:
    def __init__(self, run, index):
        self.run = run
        self.index = index
        self.rng = random.Random((run.seed * 1009 + run.round) * 1000003 + index)
        self.seq = 0

    def new_message(self, kind, **kw):
        self.seq += 1
        mid = "%d-%d-%d-%08x" % (self.run.round, self.index, self.seq, self.rng.getrandbits(32))
        content = make_message(self.rng, mid, kind, **kw)
        self.run.ledger.add(mid, content, kind)
        return mid, content

    def connect(self):
        self.run.stats.add("connections")
        c = Conn(self.run.addr)
        c.expect(220)
        return c

    def ehlo(self, c, helo=False):
        c.send(b"HELO client.test\r\n" if helo else b"EHLO client.test\r\n")
        c.expect(250)

    def transaction(self, c, mid, content, size_param=False):
        """MAIL, RCPT, DATA one at a time, then the message; returns the final code."""
        ledger = self.run.ledger
        mail = b"MAIL FROM:<stress@client.test>"
        if size_param:
            mail += b" SIZE=%d" % len(content)
        c.send(mail + b"\r\n")
        code, lines = c.reply()
        if code != 250:
            ledger.set(mid, "refused", lines[0].decode("latin-1"))
            return code
        c.send(b"RCPT TO:<sink@server.test>\r\n")
        c.expect(250)
        c.send(b"DATA\r\n")
        c.expect(354)
        ledger.set(mid, "terminated")
        c.send(stuff(content) + b".\r\n")
        code, lines = c.reply()
        ledger.set(mid, "acked" if code == 250 else "refused", lines[0].decode("latin-1"))
        return code

    # --- normal ------------------------------------------------------------------------------
    def normal(self):
        rng = self.rng
        msgs = [self.new_message("normal", binary=rng.random() < 0.1)
                for _ in range(rng.randint(1, 3))]
        c = self.connect()
        try:
            helo = rng.random() < 0.15
            self.ehlo(c, helo)
            for mid, content in msgs:
                code = self.transaction(c, mid, content, size_param=not helo and rng.random() < 0.5)
                if code != 250:
                    raise Unexpected("message %s refused with %d" % (mid, code))
                self.run.stats.add("normal.messages")
            c.send(b"QUIT\r\n")
            c.expect(221)
        finally:
            c.close()

    # --- pipelined -----------------------------------------------------------------------------
    def pipelined(self):
        rng = self.rng
        ledger = self.run.ledger
        msgs = [self.new_message("pipelined", max_body=rng.choice([2048, 64 * 1024, 200 * 1024]))
                for _ in range(rng.randint(2, 6))]
        c = self.connect()
        try:
            self.ehlo(c)
            if rng.random() < 0.3:
                self.blast(c, msgs)
                return
            extra = rng.random() < 0.3  # an RSET and a NOOP before each envelope
            prefix = b"RSET\r\nNOOP\r\n" if extra else b""
            c.send(prefix + ENVELOPE)
            for i, (mid, content) in enumerate(msgs):
                for _ in range(2 if extra else 0):
                    c.expect(250)
                c.expect(250)
                c.expect(250)
                c.expect(354)
                last = i + 1 == len(msgs)
                ledger.set(mid, "terminated")
                c.send(stuff(content) + b".\r\n" + (b"QUIT\r\n" if last else prefix + ENVELOPE))
                code, lines = c.reply()
                ledger.set(mid, "acked" if code == 250 else "refused", lines[0].decode("latin-1"))
                if code != 250:
                    raise Unexpected("pipelined message refused: %r" % lines)
                self.run.stats.add("pipelined.messages")
            c.expect(221)
        finally:
            c.close()

    def blast(self, c, msgs):
        """The whole rest of the session in one write, message data before the 354 arrives."""
        ledger = self.run.ledger
        out = []
        for mid, content in msgs:
            ledger.set(mid, "terminated")
            out.append(ENVELOPE + stuff(content) + b".\r\n")
        c.send(b"".join(out) + b"QUIT\r\n")
        self.run.stats.add("pipelined.blast")
        for mid, content in msgs:
            codes = []
            for _ in range(4):
                code, lines = c.reply()
                codes.append(code)
                if codes != [250, 250, 354, 250][:len(codes)]:
                    break
            if codes != [250, 250, 354, 250]:
                # The replies no longer line up with the messages: the rest stays "terminated".
                raise Unexpected("blast: replies %r for one message (%r)" % (codes, lines))
            ledger.set(mid, "acked", lines[0].decode("latin-1"))
            self.run.stats.add("pipelined.messages")
        c.expect(221)

    # --- abort ---------------------------------------------------------------------------------
    def abort(self):
        rng = self.rng
        ledger = self.run.ledger
        before = self.new_message("normal") if rng.random() < 0.3 else None
        mid, content = self.new_message("abort")
        data = stuff(content) + b".\r\n"
        # Any proper prefix: from nothing to everything but the final LF.
        cut = rng.randint(0, len(data) - 1)
        c = self.connect()
        reset = rng.random() < 0.5
        try:
            self.ehlo(c)
            if before:
                if self.transaction(c, *before) != 250:
                    raise Unexpected("message before the abort refused")
            c.send(ENVELOPE)
            c.expect(250)
            c.expect(250)
            c.expect(354)
            c.send(data[:cut])
            ledger.set(mid, "aborted")
            self.run.stats.add("abort.reset" if reset else "abort.close")
        finally:
            c.close(reset=reset)

    # --- slowloris -------------------------------------------------------------------------------
    def slowloris(self):
        """One byte a second (in a command line, or in message data), or nothing at all. The
        server must cut the connection --timeout seconds after the line, the message data or
        the silence began (its per-line deadline, its minimum data rate, its timeout), give
        or take the margins: not before, not much later."""
        rng = self.rng
        mode = rng.choice(["commands", "data", "silent"])
        phase = time.monotonic()  # a lower bound of when the server's clock started
        c = self.connect()
        c.sock.settimeout(IO_TIMEOUT)
        try:
            if mode == "commands":
                trickle = b"EHLO slowloris.client.test\r\n" + ENVELOPE
            elif mode == "data":
                mid, content = self.new_message("slowloris")
                self.ehlo(c)
                phase = time.monotonic()
                c.send(ENVELOPE)
                c.expect(250)
                c.expect(250)
                c.expect(354)
                self.run.ledger.set(mid, "aborted")  # never terminated
                trickle = stuff(content)
            else:
                trickle = b""
            end = min(time.monotonic() + rng.uniform(2, 15), self.run.deadline)
            sent, cut, data = 0, False, b""
            while sent < len(trickle) and time.monotonic() < end and not cut:
                try:
                    c.send(trickle[sent:sent + 1])
                    sent += 1
                    ready, _, _ = select.select([c.sock], [], [], 1.0)
                    chunk = c.sock.recv(65536) if ready else None
                except OSError:
                    chunk = b""
                if chunk is not None:
                    data += chunk
                    cut = not chunk
            if cut:
                self.run.stats.add("slowloris.%s.cut-while-trickling" % mode)
            else:
                self.run.stats.add("slowloris.%s.cut-after-silence" % mode)
                data += c.wait_close(SERVER_TIMEOUT + CLOSE_MARGIN, since=phase)[1]
            self.run.stats.closed_after("slowloris-" + mode, time.monotonic() - phase)
            if sent:
                self.run.stats.longest("slowloris trickle served", time.monotonic() - phase)
            check_reply_lines(data)
            if b"421" not in data:
                self.run.stats.add("slowloris.no-421")
        finally:
            c.close()

    # --- oversize ------------------------------------------------------------------------------
    def oversize(self):
        rng = self.rng
        ledger = self.run.ledger
        self.seq += 1
        mid = "%d-%d-%d-%08x" % (self.run.round, self.index, self.seq, rng.getrandbits(32))
        content = make_message(rng, mid, "oversize", max_body=0)  # the header; a body follows
        body = base64.b64encode(rng.randbytes(MAX_SIZE))
        extra = rng.randint(1024, 200 * 1024)
        body = body[:MAX_SIZE + extra - len(content)]
        content += b"\r\n".join(body[i:i + 76] for i in range(0, len(body), 76)) + b"\r\n"
        ledger.add(mid, content, "oversize")
        after = self.new_message("normal", max_body=16 * 1024)
        declared = rng.random() < 0.4
        c = self.connect()
        try:
            self.ehlo(c)
            if declared:
                c.send(b"MAIL FROM:<big@client.test> SIZE=%d\r\n" % len(content))
                code, lines = c.reply()
                ledger.set(mid, "refused" if code != 250 else "pending", lines[0].decode("latin-1"))
                if code != 552:
                    raise Unexpected("MAIL with SIZE=%d over the limit: %r" % (len(content), lines))
                self.run.stats.add("oversize.552-at-mail")
            else:
                code = self.transaction(c, mid, content)
                if code != 552:
                    raise Unexpected("message of %d bytes over the limit got %d" % (len(content), code))
                self.run.stats.add("oversize.552-after-data")
            if self.transaction(c, *after) != 250:
                raise Unexpected("message after the 552 refused")
            c.send(b"QUIT\r\n")
            c.expect(221)
        finally:
            c.close()

    # --- garbage -------------------------------------------------------------------------------
    def garbage(self):
        rng = self.rng
        mode = rng.choice(["bytes", "http", "junk-commands", "long-line", "then-mail",
                           "binary-mail"])
        self.run.stats.add("garbage." + mode)
        c = self.connect()
        try:
            if mode == "bytes":
                c.send(rng.randbytes(rng.randint(1, 4000)) + b"\r\nQUIT\r\n")
                _, data = c.wait_close(SERVER_TIMEOUT + CLOSE_MARGIN)
                check_reply_lines(c.buf + data)
            elif mode == "http":
                c.send(rng.choice([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                                   b"POST /x HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
                                   b"CONNECT mail.test:25 HTTP/1.1\r\n\r\n"]))
                _, data = c.wait_close(SERVER_TIMEOUT + CLOSE_MARGIN)
                check_reply_lines(c.buf + data)
            elif mode == "junk-commands":
                self.ehlo(c)
                # Past the soft error limit each reply is delayed (the tarpit); the hard limit
                # ends the session: only when there is time left before the deadline.
                many = self.run.deadline - time.monotonic() > 15
                for _ in range(25 if many else 8):
                    junk = bytes(rng.choice(b"\x00\x01\x7f\x80\xff ABCxyz:<>@") for _ in
                                 range(rng.randint(1, 60)))
                    try:
                        c.send(junk + b"\r\n")
                        code, _ = c.reply()
                    except (Closed, OSError):
                        break  # the error limit closed the session
                    if code == 421:
                        break
                c.close()
            elif mode == "long-line":
                self.ehlo(c)
                c.send(b"NOOP " + b"x" * rng.randint(1000, 100000) + b"\r\nQUIT\r\n")
                _, data = c.wait_close(SERVER_TIMEOUT + CLOSE_MARGIN)
                check_reply_lines(c.buf + data)
            elif mode == "then-mail":
                self.ehlo(c)
                for _ in range(3):
                    c.send(b"\x00\xff" + rng.randbytes(10).replace(b"\n", b"") + b"\r\n")
                    code, _ = c.reply()
                    if code < 500:
                        raise Unexpected("junk command answered %d" % code)
                mid, content = self.new_message("garbage")
                if self.transaction(c, mid, content) != 250:
                    raise Unexpected("message after junk commands refused")
                c.send(b"QUIT\r\n")
                c.expect(221)
            else:
                self.ehlo(c)
                mid, content = self.new_message("binary", binary=True)
                if self.transaction(c, mid, content) != 250:
                    raise Unexpected("message with NUL and 8-bit bytes refused")
                c.send(b"QUIT\r\n")
                c.expect(221)
        finally:
            c.close()

    # --- tls -------------------------------------------------------------------------------------
    def tls(self):
        rng = self.rng
        ctx = self.run.tls_ctx
        mode = rng.choice(["hello-part-close", "hello-part-stall", "garbage-handshake",
                           "handshake-cut", "after-handshake-reset", "mail", "mail"])
        self.run.stats.add("tls." + mode)
        c = self.connect()
        try:
            self.ehlo(c)
            if mode == "mail":
                c.starttls(ctx)
                self.ehlo(c)
                for _ in range(rng.randint(1, 2)):
                    mid, content = self.new_message("tls")
                    if self.transaction(c, mid, content) != 250:
                        raise Unexpected("message over TLS refused")
                    self.run.stats.add("tls.messages")
                c.send(b"QUIT\r\n")
                c.expect(221)
                return
            if mode == "after-handshake-reset":
                c.starttls(ctx)
                c.close(reset=True)
                return
            asked = time.monotonic()
            c.send(b"STARTTLS\r\n")
            c.expect(220)
            hello = client_hello(ctx)
            if mode == "hello-part-close":
                c.send(hello[:rng.randint(1, len(hello) - 1)])
                c.close(reset=rng.random() < 0.5)
            elif mode == "hello-part-stall":
                c.send(hello[:rng.randint(1, len(hello) - 1)])
                waited, _ = c.wait_close(SERVER_TIMEOUT + CLOSE_MARGIN, since=asked)
                self.run.stats.closed_after("tls-stall", waited)
            elif mode == "garbage-handshake":
                c.send(rng.choice([b"EHLO client.test\r\n", rng.randbytes(rng.randint(1, 3000))]))
                c.wait_close(SERVER_TIMEOUT + CLOSE_MARGIN)
            else:  # handshake-cut: the whole ClientHello, read the server's first flight, leave
                c.send(hello)
                c.sock.settimeout(IO_TIMEOUT)
                if not c.sock.recv(rng.randint(1, 200)):
                    raise Unexpected("server closed instead of answering the ClientHello")
                c.close(reset=rng.random() < 0.5)
        finally:
            c.close()


SCENARIOS = [("normal", 30), ("pipelined", 15), ("abort", 12), ("slowloris", 8),
             ("oversize", 6), ("garbage", 14), ("tls", 15)]


# ---------------------------------------------------------------------------------------------
# The server and its resources
# ---------------------------------------------------------------------------------------------


def proc_usage(pid):
    """(threads, open fds, RSS in KiB) of process `pid`."""
    threads = rss = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return threads, len(os.listdir("/proc/%d/fd" % pid)), rss


def make_cert(workdir):
    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    cmd = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
           "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost"]
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise SetupError("openssl req failed: " + r.stderr.decode(errors="replace"))
    return cert, key


class Server:
    def __init__(self, mailsink, workdir, maildir, max_connections):
        cert, key = make_cert(workdir)
        self.log_path = os.path.join(workdir, "mailsink.err")
        self.log = open(self.log_path, "wb")
        cmd = [mailsink, "--listen", "127.0.0.1:0", "--maildir", maildir, "--tls-cert", cert,
               "--tls-key", key, "--timeout", str(SERVER_TIMEOUT), "--max-size", str(MAX_SIZE),
               "--max-connections", str(max_connections)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = re.search(rb"listening on 127\.0\.0\.1:(\d+)", self.read_log())
            if m:
                self.addr = ("127.0.0.1", int(m.group(1)))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise SetupError("mailsink did not start: " + self.read_log().decode(errors="replace"))

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read()

    def stop(self):
        """SIGTERM; returns the exit status (None if it had to be killed after 15 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class Run:
    def __init__(self, args):
        self.args = args
        self.seed = args.seed
        self.ledger = Ledger()
        self.stats = Stats()
        self.deadline = 0.0
        self.round = 0
        self.addr = None
        self.slow_slots = threading.BoundedSemaphore(max(1, args.clients // 6))
        self.tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.tls_ctx.check_hostname = False
        self.tls_ctx.verify_mode = ssl.CERT_NONE

    def worker(self, index):
        client = Client(self, index)
        names = [n for n, _ in SCENARIOS]
        weights = [w for _, w in SCENARIOS]
        while time.monotonic() < self.deadline:
            name = client.rng.choices(names, weights)[0]
            if name == "slowloris" and not self.slow_slots.acquire(blocking=False):
                name = "normal"
            try:
                self.stats.add("scenario." + name)
                getattr(client, name)()
            except (Unexpected, OSError, ssl.SSLError) as e:
                self.stats.error(name, "%s: %s" % (type(e).__name__, e))
            except Exception as e:  # a bug in this script: show it, count it
                self.stats.error(name, "client bug %s: %s" % (type(e).__name__, e))
            finally:
                if name == "slowloris":
                    self.slow_slots.release()


def check_maildir(maildir, ledger, problems):
    """Compare DIR/new with the ledger; returns counts for the summary."""
    found = collections.defaultdict(list)  # id -> [(file, sha, len)]
    new_dir = os.path.join(maildir, "new")
    for name in sorted(os.listdir(new_dir)):
        with open(os.path.join(new_dir, name), "rb") as f:
            data = f.read()
        content = strip_received(data)
        if content is None or not content.startswith(ID_HEADER):
            problems.append("new/%s: no Received field then X-Stress-Id (%r...)" % (name, data[:60]))
            continue
        mid = content[len(ID_HEADER):content.find(b"\r\n")].decode("latin-1")
        found[mid].append((name, hashlib.sha256(content).hexdigest(), len(content)))
    counts = collections.Counter()
    for mid, entry in ledger.messages.items():
        files = found.pop(mid, [])
        state = entry["state"]
        counts[state] += 1
        counts["stored"] += len(files)
        what = "%s message %s (%s, %d bytes)" % (state, mid, entry["kind"], entry["len"])
        if state == "acked" and not files:
            problems.append("LOST: %s: not in new/ (reply %s)" % (what, entry["reply"]))
        elif state in ("pending", "aborted", "refused") and files:
            problems.append("STORED WITHOUT 250: %s in %s (reply %r)"
                            % (what, files[0][0], entry["reply"]))
        if len(files) > 1:
            problems.append("DUPLICATE: %s stored %d times: %s"
                            % (what, len(files), ", ".join(f[0] for f in files)))
        for name, sha, length in files:
            if sha != entry["sha"]:
                problems.append("CORRUPT: %s: new/%s has %d bytes after the Received field"
                                % (what, name, length))
    for mid, files in found.items():
        problems.append("UNKNOWN: new/%s holds id %s, which no client sent" % (files[0][0], mid))
    tmp_left = os.listdir(os.path.join(maildir, "tmp"))
    if tmp_left:
        problems.append("%d files left in tmp/ (e.g. %s)" % (len(tmp_left), tmp_left[0]))
    return counts


def load_round(run, args, pid):
    """Start --clients workers until --duration passes; wait for them. Returns the seconds."""
    start = time.monotonic()
    run.deadline = start + args.duration
    workers = [threading.Thread(target=run.worker, args=(i,), daemon=True)
               for i in range(args.clients)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(max(0.1, run.deadline + SERVER_TIMEOUT + CLOSE_MARGIN + IO_TIMEOUT
                   - time.monotonic()))
    stuck = sum(t.is_alive() for t in workers)
    return time.monotonic() - start, stuck


def settle(pid, base, idle_threads, limit, args, rss=True):
    """Poll until the fds equal the baseline, the threads are at most the baseline plus
    `idle_threads` (workers parked for reuse) and, with `rss`, RSS is within the slack, or
    `limit` seconds pass. Returns (usage, restored, seconds waited)."""
    start = time.monotonic()
    while True:
        now = proc_usage(pid)
        restored = (base[0] <= now[0] <= base[0] + idle_threads and now[1] == base[1]
                    and (not rss or now[2] <= base[2] + args.rss_slack_mib * 1024))
        if restored or time.monotonic() - start > limit:
            return now, restored, time.monotonic() - start
        time.sleep(0.25)


def rss_breakdown(pid):
    """Where the RSS is, from /proc/PID/smaps: "[heap]", anonymous mappings grouped by their
    size (thread stacks are all alike; malloc arenas are up to 64 MiB), and files."""
    groups = collections.Counter()
    counts = collections.Counter()
    name = None
    try:
        with open("/proc/%d/smaps" % pid) as f:
            for line in f:
                fields = line.split()
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    lo, hi = (int(x, 16) for x in fields[0].split("-"))
                    path = fields[5] if len(fields) > 5 else ""
                    name = (path if path.startswith("[") else "files" if path
                            else "anon %d KiB" % ((hi - lo) // 1024))
                elif fields and fields[0] == "Rss:" and name:
                    groups[name] += int(fields[1])
                    counts[name] += 1
    except OSError as e:
        return str(e)
    top = sorted(groups.items(), key=lambda kv: -kv[1])[:6]
    return ", ".join("%s x%d: %d KiB" % (k, counts[k], v) for k, v in top)


def open_fds(pid):
    fd_dir = "/proc/%d/fd" % pid
    try:
        return ", ".join(sorted(os.readlink(os.path.join(fd_dir, n)) for n in os.listdir(fd_dir)))
    except OSError as e:
        return str(e)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mailsink", default="build/mailsink")
    ap.add_argument("--duration", type=float, default=20.0,
                    help="seconds during which clients start new connections (default 20)")
    ap.add_argument("--clients", type=int, default=300, help="client threads (default 300)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="load rounds against the same server, each followed by the baseline "
                         "check (default 1); RSS growing round after round means a leak")
    ap.add_argument("--seed", type=int, default=None, help="default: random, printed")
    # After 300 clients on 2 cores mailsink stays 15-20 MiB above its first RSS for good: free
    # memory that glibc's per-thread arenas keep (8 arenas per core at most), and the stacks
    # of ended workers, joined only at the next accept. It plateaus (see --rounds).
    ap.add_argument("--rss-slack-mib", type=float, default=32.0,
                    help="RSS allowed above the baseline after the clients left (default 32)")
    ap.add_argument("--settle", type=float, default=10.0,
                    help="seconds to wait for threads/fds/RSS to return to the baseline")
    ap.add_argument("--idle-threads", type=int, default=32,
                    help="worker threads the server may keep parked once the clients left "
                         "(smtpd's max_idle_threads, default 32)")
    ap.add_argument("--idle-wait", type=float, default=40.0,
                    help="seconds after the clients left by which the parked workers must have "
                         "ended, threads back to the baseline exactly (default 40; 0: skip)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    args = ap.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    if not os.access(args.mailsink, os.X_OK):
        print("stress: %s is not an executable (make it with: make %s)"
              % (args.mailsink, args.mailsink), file=sys.stderr)
        return 2
    threading.stack_size(512 * 1024)
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="stress.")
    maildir = os.path.join(workdir, "md")
    print("stress: seed %d, %d clients for %.0f s x %d, working in %s"
          % (args.seed, args.clients, args.duration, args.rounds, workdir), flush=True)
    run = Run(args)
    try:
        server = Server(os.path.abspath(args.mailsink), workdir, maildir, args.clients * 4 + 100)
    except SetupError as e:
        print("stress: setup error: %s" % e, file=sys.stderr)
        return 2
    run.addr = server.addr
    pid = server.proc.pid
    problems = []
    rounds = []  # (load seconds, usage after, restored, settle seconds)
    counts, final, final_ok, final_time = None, None, False, 0.0
    peak = []
    try:
        time.sleep(0.3)
        base = proc_usage(pid)
        peak[:] = base
        print("stress: mailsink pid %d on port %d; baseline threads %d, fds %d, RSS %d KiB"
              % (pid, server.addr[1], *base), flush=True)
        sampling = threading.Event()

        def sampler():
            while not sampling.is_set():
                try:
                    now = proc_usage(pid)
                except (OSError, ValueError):
                    return
                for i in range(3):
                    peak[i] = max(peak[i], now[i])
                sampling.wait(0.2)

        sampler_thread = threading.Thread(target=sampler, daemon=True)
        sampler_thread.start()
        for r in range(args.rounds):
            run.round = r + 1
            load_time, stuck = load_round(run, args, pid)
            clients_left = time.monotonic()
            if stuck:
                problems.append("round %d: %d client threads still running long after the "
                                "deadline" % (r + 1, stuck))
            # Parked workers keep their stacks and malloc arenas: RSS is checked once they end.
            after, restored, settle_time = settle(pid, base, args.idle_threads, args.settle, args,
                                                  rss=False)
            rounds.append((load_time, after, restored, settle_time))
            print("stress: round %d: %.1f s of load; %.1f s later threads %d (%d parked), fds %d,"
                  " RSS %d KiB: %s" % (r + 1, load_time, settle_time, after[0], after[0] - base[0],
                                       after[1], after[2], "ok" if restored else "NOT restored"),
                  flush=True)
            if not restored:
                problems.append("round %d: %.0f s after the clients left: threads %d (baseline %d"
                                " + at most %d parked), fds %d (baseline %d)"
                                % (r + 1, args.settle, after[0], base[0], args.idle_threads,
                                   after[1], base[1]))
                problems.append("open fds: " + open_fds(pid))
        # The maildir is final (no client left): check it while the parked workers time out.
        counts = check_maildir(maildir, run.ledger, problems)
        final, final_ok, _ = settle(pid, base, 0,
                                    max(0.0, clients_left + args.idle_wait - time.monotonic()), args)
        final_time = time.monotonic() - clients_left
        final_ok = final_ok or args.idle_wait <= 0  # skipped
        if args.idle_wait > 0:
            print("stress: %.1f s after the clients left: threads %d, fds %d, RSS %d KiB: %s"
                  % (final_time, *final, "baseline restored" if final_ok else "NOT restored"),
                  flush=True)
            print("stress: RSS by mapping: " + rss_breakdown(pid), flush=True)
            if not final_ok:
                problems.append("%.0f s after the clients left (parked workers end after 30 s "
                                "idle): threads %d (baseline %d), fds %d (baseline %d), RSS %d KiB"
                                " (baseline %d + %d)"
                                % (final_time, final[0], base[0], final[1], base[1], final[2],
                                   base[2], args.rss_slack_mib * 1024))
        sampling.set()
        sampler_thread.join()
    finally:
        status = server.stop()
        server.kill()
    if status != 0:
        problems.append("mailsink exit status after SIGTERM: %s" % status)
    if counts is None:
        counts = check_maildir(maildir, run.ledger, problems)
    st = run.stats.counts
    for scenario, texts in sorted(run.stats.errors.items()):
        for text in texts:
            problems.append("client error in %s: %s" % (scenario, text))
    for kind, times in sorted(run.stats.close_times.items()):
        late = [t for t in times if t > SERVER_TIMEOUT + 3]
        early = [t for t in times if t < SERVER_TIMEOUT - 0.5]
        if late or early:
            problems.append("%s: %d closed early, %d late (of %d, --timeout %d)"
                            % (kind, len(early), len(late), len(times), SERVER_TIMEOUT))
    log = server.read_log().decode(errors="replace").splitlines()

    total = time.monotonic() - started
    load_total = sum(r[0] for r in rounds)
    sent = sum(counts[s] for s in ("acked", "refused", "terminated", "aborted", "pending"))
    print("stress: %d connections in %.1f s of load (%.1f s in all), peak %d at once"
          % (st["connections"], load_total, total, peak[0] - base[0]))
    print("stress: scenarios: " + ", ".join("%s %d" % (k[9:], v) for k, v in sorted(st.items())
                                            if k.startswith("scenario.")))
    print("stress: details: " + ", ".join("%s %d" % (k, v) for k, v in sorted(st.items())
                                          if not k.startswith(("scenario.", "errors"))
                                          and k != "connections"))
    for kind, times in sorted(run.stats.close_times.items()):
        print("stress: %s: closed by the server %.1f-%.1f s after the phase began (%d)"
              % (kind, min(times), max(times), len(times)))
    for name, seconds in sorted(run.stats.maxima.items()):
        print("stress: %s: at most %.1f s at 1 byte/s" % (name, seconds))
    print("stress: messages: %d started, %d acknowledged (250), %d refused, %d aborted mid-DATA, "
          "%d never terminated, %d unanswered; %d files stored"
          % (sent, counts["acked"], counts["refused"], counts["aborted"], counts["pending"],
             counts["terminated"], counts["stored"]))
    print("stress: losses %d, duplicates %d, corrupt %d, stored without 250 %d"
          % (sum(p.startswith("LOST") for p in problems),
             sum(p.startswith("DUPLICATE") for p in problems),
             sum(p.startswith("CORRUPT") for p in problems),
             sum(p.startswith("STORED WITHOUT") for p in problems)))
    if rounds and final:
        after, restored, settle_time = rounds[-1][1:]
        print("stress: baseline -> peak -> %.1f s after the clients left -> %.1f s after: "
              "threads %d -> %d -> %d -> %d, fds %d -> %d -> %d -> %d, RSS %d -> %d -> %d -> %d "
              "KiB: %s" % (settle_time, final_time, base[0], peak[0], after[0], final[0],
                           base[1], peak[1], after[1], final[1], base[2], peak[2], after[2],
                           final[2], "baseline restored" if restored and final_ok
                           else "NOT restored"))
    print("stress: client errors %d; mailsink stderr: %d lines" % (st["errors"], len(log)))
    for line in log[1:4]:
        print("stress:   | " + line)
    for p in problems[:40]:
        print("stress: FAIL " + p)
    if len(problems) > 40:
        print("stress: ... and %d more problems" % (len(problems) - 40))
    if problems or args.keep:
        print("stress: working directory kept: " + workdir)
    else:
        # Unlinking thousands of fsync'ed files takes seconds: let rm do it in the background.
        subprocess.Popen(["rm", "-rf", "--", workdir], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    print("stress: %s (seed %d)" % ("FAILED" if problems else "passed", args.seed))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
