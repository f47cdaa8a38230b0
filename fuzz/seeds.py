#!/usr/bin/env python3
"""fuzz/seeds.py - writes the hand-written seed corpus into fuzz/corpus/<target>/.

    python3 fuzz/seeds.py          (from the repository root; rewrites the seed-* files only)

Each seed starts with the option bytes its target's header comment documents (fuzz/protocol.cpp,
fuzz/parsers.cpp, fuzz/auth.cpp); the helpers below build them from names, so a seed reads as
"these options, this session". Files named crash-* are regression inputs found by fuzzing and
are never touched here.
"""
import base64
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
written = {}


def write(target, name, data):
    path = os.path.join(ROOT, target, "seed-" + name)
    assert path not in written, path
    written[path] = data
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def b(text):
    return text.encode("utf-8") if isinstance(text, str) else text


# ---- protocol: 4 option bytes, then the client's bytes -------------------------------------
SIZES = {16: 0, 100: 1, 1000: 2, "big": 3}
RCPTS = {1: 0, 2: 1, 5: 2, 100: 3}
ERRORS = {1: 0, 3: 1, 10: 2, 20: 3}
HANDLERS = {"accept": 0, "reply550": 1, "throw": 2, "message": 3, "custom250": 4,
            "reply452": 5, "none": 6, "hooks": 7}
# The same bits in session mode: the Session object's behaviour.
SESSION_MODES = {"accept": 0, "reply550": 1, "throw": 2, "close421": 3, "custom250": 4,
                 "reply452": 5, "filter": 6, "names": 7}
CHUNKS = {"line": 0, "fixed": 1, "all": 2, "random": 3}
CONNECT = {"none": 0, "refuse554": 2, "refuse4xx": 3}
JUNK = {1: 0, 3: 1, 10: 2, 100: 3}
SOFT = {0: 0, 1: 1, 3: 2, 10: 3}


def protocol(name, client, strict=False, size="big", tls=False, tls_required=False,
             auth=False, insecure=False, auth_required=False, rcpts=100, errors=20,
             handler="accept", v6=False, chunk="line", n=0, connect="none", pipelining_ok=False,
             junk=100, soft=10, session=False, stream=False, gone=False):
    """client: the client's bytes;
    session: a Session object instead of the hooks (handler then names one of SESSION_MODES);
    stream: session mode only, data() returns a sink (pieces of 2**n bytes for n < 8);
    gone: the client goes away at the end (v6: disconnected(), else the Protocol destroyed)."""
    assert session or not stream, "stream needs session"
    b0 = (strict and 1) | SIZES[size] << 1 | (tls and 8) | (tls_required and 16) \
        | (auth and 32) | (insecure and 64) | (auth_required and 128)
    h = SESSION_MODES[handler] if session else HANDLERS[handler]
    b1 = RCPTS[rcpts] | ERRORS[errors] << 2 | h << 4 | (v6 and 128)
    b2 = CHUNKS[chunk] | (n & 15) << 2 | CONNECT[connect] << 6
    b3 = (pipelining_ok and 1) | JUNK[junk] << 1 | SOFT[soft] << 3 | (session and 32) \
        | (stream and 64) | (gone and 128)
    write("protocol", name, bytes([b0, b1, b2, b3]) + b(client))


def lines(*ls):
    return "".join(l + "\r\n" for l in ls)


def transaction(sender="<alice@example.org>", rcpts=("<bob@example.net>",), body="Hi\r\n"):
    out = "MAIL FROM:" + sender + "\r\n"
    for r in rcpts:
        out += "RCPT TO:" + r + "\r\n"
    return out + "DATA\r\n" + body + ".\r\n"


BODY = "From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\nSubject: test\r\n\r\n" \
       "Hello Bob,\r\nthis is a short message.\r\n"

protocol("basic-ehlo", lines("EHLO client.example.org") + transaction(body=BODY) + lines("QUIT"))
protocol("basic-helo", lines("HELO client.example.org") + transaction(body=BODY) + lines("QUIT"))
protocol("basic-strict", lines("EHLO client.example.org") + transaction(body=BODY)
         + lines("QUIT"), strict=True)
protocol("two-messages", lines("EHLO c.example") + transaction(body=BODY)
         + transaction("<>", ("<postmaster>",), "Subject: bounce\r\n\r\nx\r\n") + lines("QUIT"))

# RFC 5321 Appendix D, rewritten with our own names and text.
protocol("rfc5321-d1-typical", lines(
    "EHLO relay.example.com",
    "MAIL FROM:<carol@relay.example.com>",
    "RCPT TO:<dave@mx.example.org>",
    "RCPT TO:<erin@mx.example.org>",
    "RCPT TO:<frank@mx.example.org>",
    "DATA",
    "Dear team,",
    "the meeting moved to Thursday.",
    ".",
    "QUIT"))
protocol("rfc5321-d2-aborted", lines(
    "EHLO relay.example.com",
    "MAIL FROM:<carol@relay.example.com>",
    "RCPT TO:<dave@mx.example.org>",
    "RCPT TO:<bad-nobody@mx.example.org>",
    "RSET",
    "QUIT"), handler="hooks")
protocol("rfc5321-d3-relayed", lines(
    "EHLO gateway.example.net",
    "MAIL FROM:<grace@origin.example.net>",
    "RCPT TO:<@hop1.example.com,@hop2.example.com:heidi@mx.example.org>",
    "DATA",
    "Received: from origin.example.net by gateway.example.net; Sun, 22 Nov 2026 10:00:00 +0000",
    "Subject: relayed",
    "",
    "Passed along.",
    ".",
    "QUIT"))
protocol("rfc5321-d4-verify", lines(
    "EHLO client.example.org",
    "VRFY ivan",
    "MAIL FROM:<judy@client.example.org>",
    "RCPT TO:<ivan@mx.example.org>",
    "DATA",
    "Verified first.",
    ".",
    "QUIT"))

# Pipelining (RFC 2920): after EHLO, a whole transaction in one burst; before EHLO, refused.
protocol("pipelined-burst", lines("EHLO c.example") + transaction(body=BODY)
         + transaction("<x@example.org>", ("<y@example.net>", "<z@example.net>"), "two\r\n")
         + lines("QUIT"), chunk="all")
protocol("pipelined-before-ehlo", lines("HELO c.example", "MAIL FROM:<a@example.org>",
                                        "RCPT TO:<b@example.net>"), chunk="all")
protocol("pipelined-before-ehlo-allowed", lines("HELO c.example") + transaction()
         + lines("QUIT"), chunk="all", pipelining_ok=True)
protocol("pipelined-random-chunks", lines("EHLO c.example") + transaction(body=BODY * 3)
         + lines("NOOP", "QUIT"), chunk="random", n=5)
protocol("byte-at-a-time", lines("EHLO c.example") + transaction(body=BODY) + lines("QUIT"),
         chunk="fixed", n=0)

# SMTP smuggling (2023): an end-of-data look-alike, then a forged transaction, then the real end.
SMUGGLE = ["\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r.\r\n", "\r\n.\r", "\n.\r", "\r.\n",
           "\r\n\x00.\r\n", "\n..\n", "\r\n.\r\r\n"]
for i, vector in enumerate(SMUGGLE):
    forged = "MAIL FROM:<admin@bank.example>\r\nRCPT TO:<victim@mx.example.org>\r\nDATA\r\n" \
             "Subject: forged\r\n\r\nsend money\r\n"
    body = "Subject: innocent\r\n\r\nhello" + vector + forged
    session = lines("EHLO attacker.example") + transaction(body=body) + lines("QUIT")
    for strict in (False, True):
        mode = "strict" if strict else "lenient"
        protocol("smuggle-%02d-%s" % (i, mode), session, strict=strict, chunk="all")
    protocol("smuggle-%02d-split" % i, session, chunk="fixed", n=3 + i % 8)

protocol("dot-stuffing", lines("EHLO c.example") + transaction(
    body="..leading dot\r\n...two\r\n.\r\r\n. \r\n.x\r\n") + lines("QUIT"))
protocol("dot-stuffing-strict", lines("EHLO c.example") + transaction(
    body="..leading dot\r\n.\r\r\n") + lines("QUIT"), strict=True)
protocol("empty-message", lines("EHLO c.example") + transaction(body="") + lines("QUIT"))
protocol("crlf-straddles-chunks", lines("EHLO c.example") + transaction(body="a\r\nb\r\n")
         + lines("QUIT"), chunk="fixed", n=1)
protocol("unterminated-data", lines("EHLO c.example", "MAIL FROM:<a@b.example>",
                                    "RCPT TO:<c@d.example>", "DATA", "no end"))

# STARTTLS (RFC 3207) and the command injection of CVE-2011-0411.
protocol("starttls", lines("EHLO c.example", "STARTTLS", "EHLO c.example") + transaction()
         + lines("QUIT"), tls=True)
protocol("starttls-injection", lines("EHLO c.example", "STARTTLS", "MAIL FROM:<inj@evil.example>",
                                     "RCPT TO:<v@mx.example.org>"), tls=True, chunk="all")
protocol("starttls-required", lines("EHLO c.example", "MAIL FROM:<a@b.example>", "STARTTLS",
                                    "EHLO c.example") + transaction() + lines("QUIT"),
         tls=True, tls_required=True)
protocol("starttls-twice", lines("EHLO c.example", "STARTTLS", "EHLO c.example", "STARTTLS",
                                 "QUIT"), tls=True)
protocol("starttls-in-transaction", lines("EHLO c.example", "MAIL FROM:<a@b.example>",
                                          "STARTTLS", "RSET", "STARTTLS", "EHLO c.example",
                                          "QUIT"), tls=True)
protocol("starttls-not-offered", lines("EHLO c.example", "STARTTLS", "QUIT"))

# AUTH inside a whole session.
def b64(s):
    return base64.b64encode(b(s)).decode()


protocol("auth-plain", lines("EHLO c.example", "AUTH PLAIN " + b64("\0alice\0wonderland"))
         + transaction() + lines("QUIT"), auth=True, insecure=True, auth_required=True)
protocol("auth-login", lines("EHLO c.example", "AUTH LOGIN", b64("alice"), b64("wonderland"))
         + transaction() + lines("QUIT"), auth=True, insecure=True)
protocol("auth-required-refused", lines("EHLO c.example", "MAIL FROM:<a@b.example>",
                                        "AUTH PLAIN " + b64("\0alice\0nope"),
                                        "AUTH PLAIN " + b64("\0alice\0nope2"),
                                        "AUTH PLAIN " + b64("\0alice\0nope3")),
         auth=True, insecure=True, auth_required=True)
protocol("auth-after-starttls", lines("EHLO c.example", "AUTH PLAIN " + b64("\0alice\0wonderland"),
                                      "STARTTLS", "EHLO c.example",
                                      "AUTH PLAIN " + b64("\0alice\0wonderland")) + transaction()
         + lines("QUIT"), auth=True, tls=True, tls_required=True, auth_required=True)
protocol("auth-cram", lines("EHLO c.example", "AUTH CRAM-MD5", b64("alice 00112233445566778899aabbccddeeff"),
                            "QUIT"), auth=True)
protocol("auth-pipelined", lines("EHLO c.example", "AUTH PLAIN", b64("\0alice\0wonderland"))
         + transaction() + lines("QUIT"), auth=True, insecure=True, chunk="all")

# Limits and errors.
protocol("long-command-line", lines("EHLO c.example", "NOOP " + "x" * 600, "QUIT"))
protocol("long-auth-line", lines("EHLO c.example", "AUTH PLAIN " + "A" * 13000, "QUIT"),
         auth=True, insecure=True)
protocol("long-data-line-strict", lines("EHLO c.example") + transaction(body="y" * 1200 + "\r\n")
         + lines("QUIT"), strict=True)
protocol("message-too-big", lines("EHLO c.example") + transaction(body="z" * 40 + "\r\n")
         + lines("QUIT"), size=16)
protocol("size-declared-too-big", lines("EHLO c.example", "MAIL FROM:<a@b.example> SIZE=1001",
                                        "MAIL FROM:<a@b.example> SIZE=999", "QUIT"), size=1000)
protocol("bare-lf-command", "EHLO c.example\nMAIL FROM:<a@b.example>\r\nQUIT\r\n")
protocol("bare-cr-command", "EHLO c.ex\rample\r\nQUIT\r\n")
protocol("nul-in-address", lines("EHLO c.example") + transaction("<a\0b@example.org>",
                                                                 ("<c\0d@example.net>",))
         + lines("QUIT"))
protocol("http-get", lines("GET / HTTP/1.1", "Host: mx.example.org", ""), chunk="all")
protocol("http-connect", lines("CONNECT mx.example.org:25 HTTP/1.1", ""))
protocol("junk-commands", lines("EHLO c.example", "NOOP", "NOOP", "RSET", "VRFY x", "HELP",
                                "NOOP", "QUIT"), junk=1, soft=0)
protocol("error-limit", lines("EHLO c.example", "BOGUS", "BOGUS", "BOGUS", "QUIT"), errors=3)
protocol("error-limit-one", lines("FOO", "QUIT"), errors=1)
protocol("too-many-recipients", lines("EHLO c.example", "MAIL FROM:<a@b.example>",
                                      "RCPT TO:<r1@x.example>", "RCPT TO:<r2@x.example>",
                                      "DATA", "x", ".", "QUIT"), rcpts=1)
protocol("sequence-errors", lines("MAIL FROM:<a@b.example>", "EHLO c.example", "RCPT TO:<x@y.example>",
                                  "DATA", "MAIL FROM:<a@b.example>", "MAIL FROM:<a@b.example>",
                                  "DATA", "RSET x", "QUIT x", "QUIT"))
protocol("other-verbs", lines("EHLO c.example", "EXPN list", "HELP", "TURN", "ETRN x", "BDAT 10",
                              "VRFY", "SEND FROM:<a@b>", "ehlo lower.example", "QUIT"))
protocol("params", lines("EHLO c.example",
                         "MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME",
                         "RCPT TO:<c@d.example>", "DATA", "caf\u00e9", ".",
                         "MAIL FROM:<\u00fc@b.example> SMTPUTF8",
                         "RCPT TO:<\u00e9@d.example>", "DATA", "x", ".",
                         "MAIL FROM:<a@b.example> BODY=BINARYMIME", "QUIT"))
for mode, h in HANDLERS.items():
    protocol("handler-" + mode, lines("EHLO c.example", "HELO bad.example", "EHLO c.example",
                                      "MAIL FROM:<bad@b.example>", "MAIL FROM:<a@b.example>",
                                      "RCPT TO:<bad@x.example>", "RCPT TO:<throw@x.example>",
                                      "RCPT TO:<ok@x.example>", "DATA", "body", ".", "QUIT"),
             handler=mode)
protocol("helo-hook-throws", lines("EHLO throw.example", "QUIT"), handler="hooks")
protocol("connect-refused", lines("EHLO c.example", "QUIT"), connect="refuse554")
protocol("connect-tempfail", lines("EHLO c.example"), connect="refuse4xx")
protocol("timeout-mid-data", lines("EHLO c.example", "MAIL FROM:<a@b.example>",
                                   "RCPT TO:<c@d.example>", "DATA", "partial"), v6=True)
protocol("quit-then-more", lines("EHLO c.example", "QUIT", "NOOP") + transaction(), chunk="all")
protocol("gone-mid-data", lines("EHLO c.example", "MAIL FROM:<a@b.example>",
                                "RCPT TO:<c@d.example>", "DATA", "partial"), v6=True, gone=True)
protocol("gone-destroyed", lines("EHLO c.example", "MAIL FROM:<a@b.example>"), gone=True)

# Session mode: a Session object (Options::new_session) instead of the hooks, behaving as
# SESSION_MODES names (fuzz/protocol.cpp's header says how).
SESSION_STEPS = lines("EHLO c.example", "HELO bad.example", "EHLO c.example",
                      "MAIL FROM:<bad@b.example>", "MAIL FROM:<a@b.example>",
                      "RCPT TO:<bad@x.example>", "RCPT TO:<throw@x.example>",
                      "RCPT TO:<ok@x.example>", "RCPT TO:<ok2@x.example>", "DATA", "body", ".",
                      "VRFY a", "HELP", "NOOP", "RSET", "QUIT")
for mode in SESSION_MODES:
    protocol("session-" + mode, SESSION_STEPS, handler=mode, session=True)
for mode in ("accept", "reply550", "reply452", "close421"):
    protocol("session-stream-" + mode, SESSION_STEPS, handler=mode, session=True, stream=True,
             n=3)
protocol("session-stream-big", lines("EHLO c.example") + transaction(body=BODY * 40)
         + transaction(body="x" * 90 + "\r\n") + lines("QUIT"), session=True, stream=True,
         size=1000, n=8)
protocol("session-filter-etrn", lines("EHLO c.example", "MAIL FROM:<a@b.example>", "ETRN x",
                                      "QUIT"), handler="filter", session=True)
protocol("session-hello-throws", lines("EHLO throw.example", "QUIT"), handler="names",
         session=True)
protocol("session-auth", lines("EHLO c.example", "AUTH PLAIN " + b64("\0alice\0nope"),
                               "AUTH LOGIN", b64("alice"), b64("wonderland"))
         + transaction() + lines("QUIT"), session=True, auth=True, insecure=True,
         auth_required=True)
protocol("session-auth-cram", lines("EHLO c.example", "AUTH PLAIN " + b64("\0alice\0wonderland"),
                                    "AUTH CRAM-MD5", b64("alice 00112233445566778899aabbccddeeff"),
                                    "MAIL FROM:<a@b.example> AUTH=<>", "QUIT"),
         session=True, auth=True)
protocol("session-starttls", lines("EHLO c.example", "MAIL FROM:<a@b.example>", "STARTTLS",
                                   "RSET", "STARTTLS", "EHLO c.example",
                                   "AUTH PLAIN " + b64("\0alice\0wonderland")) + transaction()
         + lines("QUIT"), session=True, tls=True, tls_required=True, auth=True)
protocol("session-connect-refused", lines("EHLO c.example", "QUIT"), session=True,
         connect="refuse554")
protocol("session-connect-tempfail", lines("EHLO c.example"), session=True, connect="refuse4xx")
protocol("session-http", lines("GET / HTTP/1.1", "Host: mx.example.org", ""), session=True)
protocol("session-pipelined-before-ehlo", lines("HELO c.example", "MAIL FROM:<a@b.example>"),
         session=True, chunk="all")
protocol("session-error-limit", lines("EHLO c.example", "BOGUS", "BOGUS", "BOGUS", "QUIT"),
         session=True, errors=3)
protocol("session-strict-refused", lines("EHLO c.example") + transaction(body="a\nb\r\n")
         + transaction(body="z" * 40 + "\r\n") + lines("QUIT"), session=True, strict=True,
         size=16)
protocol("session-timeout-mid-data", lines("EHLO c.example", "MAIL FROM:<a@b.example>",
                                           "RCPT TO:<c@d.example>", "DATA", "partial"),
         session=True, v6=True)
protocol("session-shutdown", lines("EHLO c.example", "MAIL FROM:<a@b.example>"), session=True)
protocol("session-gone-mid-data", lines("EHLO c.example", "MAIL FROM:<a@b.example>",
                                        "RCPT TO:<c@d.example>", "DATA", "partial"),
         session=True, stream=True, n=2, v6=True, gone=True)
protocol("session-gone-destroyed", lines("EHLO c.example", "MAIL FROM:<a@b.example>",
                                         "RCPT TO:<c@d.example>", "DATA", "partial"),
         session=True, stream=True, n=2, gone=True)

# ---- parsers: 1 flag byte, then the rest of the MAIL or RCPT line -----------------------------
STRICT, EHLO, RCPT, UTF8, KEYWORD, DSN = 1, 2, 4, 8, 16, 32


def parsers(name, arg, flags=EHLO | KEYWORD):
    write("parsers", name, bytes([flags]) + b(arg))


ADDRESSES = {
    "plain": "<user@example.org>",
    "null": "<>",
    "postmaster": "<Postmaster>",
    "postmaster-domain": "<postmaster@example.org>",
    "quoted": '<"john smith"@example.org>',
    "quoted-escape": '<"a\\"b\\\\c"@example.org>',
    "route": "<@a.example,@b.example:user@c.example>",
    "ipv4": "<user@[192.0.2.1]>",
    "ipv4-leading-zero": "<user@[192.000.002.001]>",
    "ipv6": "<user@[IPv6:2001:db8::1]>",
    "general-literal": "<user@[x-tag:a<b>c]>",
    "unbracketed": "user@example.org",
    "space-before": " <user@example.org>",
    "dots": "<a.b.c@d.e.f>",
    "double-dot": "<a..b@example.org>",
    "leading-dot": "<.a@example.org>",
    "hyphen-domain": "<a@-b.example>",
    "hyphen-end": "<a@b-.example>",
    "local-64": "<" + "l" * 64 + "@example.org>",
    "local-65": "<" + "l" * 65 + "@example.org>",
    "path-256": "<" + "p" * 60 + "@" + ".".join(["d" * 62] * 3) + ">",
    "domain-long": "<a@" + ".".join(["d" * 63] * 4) + ">",
    "unclosed": "<user@example.org",
    "unopened": "user@example.org>",
    "trailing": "<user@example.org>junk",
    "nul": "<a\0b@example.org>",
    "utf8": "<\u00fc\u00f1\u00ee@\u00e9x\u00e4mple.org>",
    "utf8-overlong": b"<\xc0\xafa@example.org>",
    "utf8-surrogate": b"<\xed\xa0\x80@example.org>",
    "utf8-truncated": b"<\xe2\x82@example.org>",
    "emoji": "<\U0001F4E7@example.org>",
}
for name, addr in ADDRESSES.items():
    raw = b(addr)
    parsers("mail-" + name, raw)
    parsers("mail-strict-" + name, raw, EHLO | KEYWORD | STRICT)
    parsers("rcpt-" + name, raw, EHLO | KEYWORD | RCPT)
    parsers("rcpt-utf8-" + name, raw, EHLO | KEYWORD | RCPT | UTF8)

PARAMS = {
    "size": "<a@b.example> SIZE=1000",
    "size-huge": "<a@b.example> SIZE=999999999999999999999999",
    "size-bad": "<a@b.example> SIZE=12x",
    "body-8bit": "<a@b.example> BODY=8BITMIME",
    "body-7bit": "<a@b.example> BODY=7bit",
    "body-binary": "<a@b.example> BODY=BINARYMIME",
    "smtputf8": "<\u00e9@b.example> SMTPUTF8",
    "smtputf8-value": "<a@b.example> SMTPUTF8=yes",
    "auth": "<a@b.example> AUTH=<>",
    "unknown": "<a@b.example> FOO=bar",
    "two-spaces": "<a@b.example>  SIZE=10",
    "trailing-space": "<a@b.example> SIZE=10 ",
    "empty-value": "<a@b.example> SIZE=",
    "equals-in-value": "<a@b.example> X-Y=a=b",
    "keyword-hyphen": "<a@b.example> -X=1",
    "utf8-value": "<a@b.example> X=\u00e9 SMTPUTF8",
    "many": "<a@b.example> SIZE=10 BODY=8BITMIME SMTPUTF8",
}
for name, arg in PARAMS.items():
    parsers("mail-param-" + name, arg.encode())
    parsers("mail-param-strict-" + name, arg.encode(), EHLO | KEYWORD | STRICT)
    parsers("rcpt-param-" + name, arg.encode(), EHLO | KEYWORD | RCPT | UTF8)
parsers("helo-params", b"<a@b.example> SIZE=10", KEYWORD)
parsers("no-keyword", b"FROM:<a@b.example>", EHLO)
parsers("no-keyword-lower", b"from:<a@b.example>", EHLO)
parsers("no-keyword-space", b"FROM: <a@b.example>", EHLO)
parsers("no-keyword-strict-space", b"FROM: <a@b.example>", EHLO | STRICT)
parsers("rcpt-no-keyword", b"TO:<a@b.example>", EHLO | RCPT)

DSN_MAIL = {
    "ret-envid": "<a@b.example> RET=HDRS ENVID=QQ+2B1+3Dx",
    "ret-lower": "<a@b.example> RET=full",
    "ret-bad": "<a@b.example> RET=ALL",
    "envid-bad-hex": "<a@b.example> ENVID=a+2b",
    "envid-short-hex": "<a@b.example> ENVID=a+4",
    "envid-long": "<a@b.example> ENVID=" + "x" * 101,
    "duplicate": "<a@b.example> RET=FULL RET=HDRS",
    "binarymime": "<a@b.example> BODY=BINARYMIME",
    "auth-xtext": "<a@b.example> AUTH=e+3Dmc2@example.com",
}
for name, arg in DSN_MAIL.items():
    parsers("dsn-mail-" + name, arg.encode(), EHLO | KEYWORD | DSN)
DSN_RCPT = {
    "notify": "<c@d.example> NOTIFY=SUCCESS,FAILURE,DELAY",
    "never": "<c@d.example> NOTIFY=NEVER",
    "never-and": "<c@d.example> NOTIFY=NEVER,SUCCESS",
    "notify-twice": "<c@d.example> NOTIFY=DELAY,DELAY",
    "orcpt": "<c@d.example> ORCPT=rfc822;c+2Btag@d.example",
    "orcpt-utf8": "<c@d.example> ORCPT=utf-8;c\\x{E9}@d.example",
    "orcpt-no-type": "<c@d.example> ORCPT=;c@d.example",
    "orcpt-empty": "<c@d.example> ORCPT=rfc822;",
    "both": "<c@d.example> NOTIFY=FAILURE ORCPT=rfc822;c@d.example",
}
for name, arg in DSN_RCPT.items():
    parsers("dsn-rcpt-" + name, arg.encode(), EHLO | KEYWORD | RCPT | DSN)

# ---- bdat: 2 option bytes, then the client's bytes ------------------------------------------
def bdat_seed(name, client, b0=0, b1=2):
    write("bdat", name, bytes([b0, b1]) + b(client))


def chunk(data, last=False):
    data = b(data)
    return b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data


BDAT_START = b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
bdat_seed("one-chunk", BDAT_START + chunk("Subject: x\r\n\r\nhi\r\n", True) + b"QUIT\r\n", 6)
bdat_seed("chunks", BDAT_START + chunk("abc") + chunk("") + chunk("def", True), 6)
bdat_seed("binary", b"EHLO c.example\r\nMAIL FROM:<a@b.example> BODY=BINARYMIME\r\n"
          b"RCPT TO:<c@d.example>\r\n" + chunk(b"\0\r\r\n.\r\n\n\xff", True), 8 | 6)
bdat_seed("smuggle", BDAT_START + chunk("x\r\n.\r\nMAIL FROM:<e@v.example>\r\n", True), 6)
bdat_seed("too-big", BDAT_START + chunk("0123456789") + chunk("0123456789", True), 0)
bdat_seed("no-mail", b"EHLO c.example\r\n" + chunk("QUIT\r\n") + b"NOOP\r\n", 6)
bdat_seed("bad-rcpt", b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bad@d.example>\r\n"
          + chunk("abc") + chunk("d", True), 6)
bdat_seed("mixed", BDAT_START + chunk("ab") + b"DATA\r\n" + chunk("c", True), 6)
bdat_seed("rset", BDAT_START + chunk("ab") + b"RSET\r\n" + BDAT_START[16:] + chunk("z", True), 6)
bdat_seed("stream", BDAT_START + chunk("x" * 200) + chunk("y" * 50, True), 32 | 6, 1 | (1 << 6))
bdat_seed("refused", BDAT_START + chunk("abc", True), 64 | 6)
bdat_seed("unreadable", BDAT_START + b"BDAT x\r\nabc", 6)
bdat_seed("syntax", BDAT_START + b"BDAT 3 LAST NOW\r\nabc" + chunk("d", True), 6)
bdat_seed("random-split", BDAT_START + chunk("abc" * 30) + chunk("d" * 70, True), 6, 3 | (5 << 2))
bdat_seed("byte-by-byte", BDAT_START + chunk("a\r\nb") + chunk("c", True), 6, 1)
bdat_seed("partial", BDAT_START + b"BDAT 100 LAST\r\nonly a part", 6)

# ---- auth: 1 flag byte, then steps (op byte, fields of a length byte and bytes) ---------------
def field(data):
    data = b(data)
    assert len(data) < 256
    return bytes([len(data)]) + data


def auth(name, flags, *steps):
    write("auth", name, bytes([flags]) + b"".join(steps))


MAXF = {1: 0, 2: 1, 3: 2, 5: 3}
TLS, AUTH_REQUIRED, NO_PLAIN, ERRORS3, THROWING = 8, 16, 32, 64, 128
B64, NOPAD, RAW, SPACE = 0, 16, 32, 48


def op(code, how=B64, bits=0):
    return bytes([code | how | bits])


def f(n=3):
    return MAXF[n] << 1


auth("plain-initial", f(), op(5, bits=128))
auth("plain-two-step", f(), op(5))
auth("plain-authzid", f(), op(5, bits=64 | 128) + field("admin"))
auth("login", f(), op(6))
auth("login-initial", f(), op(3) + field("alice") + field("nope"), op(6))
auth("wrong-three-times", f(), op(15) + field("a"), op(15) + field("b"), op(15) + field("c"),
     op(5, bits=128))
auth("wrong-once-limit-one", f(1), op(15) + field("x"), op(10))
auth("wrong-then-right", f(5), op(15) + field("guess"), op(6), op(6))
auth("cancel", f(), op(1, RAW) + field("*"), op(2, RAW) + field("*") + field("*"), op(9))
auth("bad-base64", f(), op(0, RAW) + field("!!!!"), op(0, NOPAD) + field("\0alice\0wonder"),
     op(0, SPACE) + field("\0alice\0wonderland-no"))
auth("no-nul", f(), op(0) + field("alicewonderland"), op(0) + field("\0\0\0"))
auth("empty-fields", f(), op(0) + field("\0\0"), op(0) + field("\0alice\0"),
     op(2) + field("") + field(""), op(13), op(13, bits=64))
auth("cram", f(), op(4) + field("alice 00112233445566778899aabbccddeeff"),
     op(4) + field("bob 00112233445566778899aabbccddeeff"), op(4, RAW) + field("*"))
auth("cram-initial", f(), op(7) + field("AUTH CRAM-MD5 " + b64("alice x")))
auth("starttls-then-plain", f() | TLS, op(5, bits=128), op(11), op(10), op(5, bits=128))
auth("starttls-no-ehlo", f() | TLS, op(11), op(5))
auth("required", f() | AUTH_REQUIRED, op(12, bits=64), op(12), op(6), op(12, bits=64))
auth("mechanisms-restricted", f() | NO_PLAIN, op(5, bits=128), op(6), op(4) + field("alice x"))
auth("throwing-hooks", f() | THROWING, op(0) + field("\0bob\0pw"), op(0) + field("\0carol\0pw"),
     op(5, bits=128))
auth("long-line", f(), op(14) + bytes([200]), op(14) + bytes([190]), op(6))
auth("long-response", f(), op(1, RAW) + field("A" * 255), op(8) + field("A" * 200), op(9))
auth("raw-lines", f(), op(7) + field("AUTH"), op(7) + field("AUTH  PLAIN " + b64("\0alice\0x")),
     op(7) + field("auth plain"), op(7) + field(b64("\0alice\0y")), op(7) + field("NOOP"))
auth("http", f(), op(7) + field("GET / HTTP/1.0"))
auth("bare-lf", f(), op(8) + field("AUTH PLAIN\n"), op(8) + field(b64("\0alice\0z") + "\r\n"))
auth("already-authenticated", f(), op(6), op(6), op(5, bits=128))
auth("during-transaction", f(), op(12, bits=64), op(6), op(12), op(6))
auth("error-limit", f(5) | ERRORS3, op(7) + field("BAD"), op(15) + field("a"),
     op(15) + field("b"))
auth("strict", f() | 1, op(7) + field("AUTH PLAIN  " + b64("\0alice\0x")), op(5, bits=128))


# ---- proxy: byte 0 the mode; PROXY headers (mode 0) or XCLIENT sessions (mode 1) -------------
V2_SIG = b"\r\n\r\n\0\r\nQUIT\n"


def v2(version_command, family, block):
    return V2_SIG + bytes([version_command, family, len(block) >> 8, len(block) & 255]) + block


def tlv(kind, value):
    return bytes([kind, len(value) >> 8, len(value) & 255]) + value


TCP4 = bytes([203, 0, 113, 9, 192, 0, 2, 1, 0x11, 0xD7, 0, 25])
TCP6 = bytes([0x20, 1, 0xd, 0xb8] + [0] * 11 + [9] + [0x20, 1, 0xd, 0xb8] + [0] * 11 + [1]
             + [0x11, 0xD8, 2, 0x4B])


def header(name, data):
    write("proxy", name, bytes([0]) + b(data))


def xclient(name, client, auth_required=False, tls_required=False, trusted_203=False,
            listed=True):
    flags = (auth_required and 1) | (tls_required and 2) | (trusted_203 and 4) | (listed and 8)
    write("proxy", name, bytes([1, flags]) + b(client))


header("v1-tcp4", "PROXY TCP4 198.51.100.7 192.0.2.25 40000 25\r\nEHLO x\r\n")
header("v1-tcp6", "PROXY TCP6 2001:db8::7 2001:db8::25 40001 2525\r\n")
header("v1-unknown", "PROXY UNKNOWN\r\n")
header("v1-unknown-long", "PROXY UNKNOWN " + "f" * 91 + "\r\n")
header("v1-bare-lf", "PROXY TCP4 198.51.100.7 192.0.2.25 40000 25\n")
header("v1-partial", "PROXY TCP4 198.51.100.7 192.")
header("v1-bad-port", "PROXY TCP4 198.51.100.7 192.0.2.25 040000 65536\r\n")
header("not-a-header", "EHLO client.test\r\n")
header("v2-tcp4-tlvs", v2(0x21, 0x11, TCP4 + tlv(1, b"h2") + tlv(4, b"\0\0\0")) + b"\x16\x03\x01")
header("v2-tcp6", v2(0x21, 0x21, TCP6))
header("v2-local", v2(0x20, 0x00, b""))
header("v2-unix", v2(0x21, 0x31, b"p" * 216))
header("v2-tlv-overrun", v2(0x21, 0x11, TCP4 + b"\x01\x00\xff"))
header("v2-huge-length", V2_SIG + b"\x21\x11\xff\xff")
header("v2-udp", v2(0x21, 0x12, TCP4))
header("v2-partial", v2(0x21, 0x11, TCP4)[:20])
xclient("nginx", lines("EHLO proxy.test", "XCLIENT ADDR=127.0.0.2 LOGIN=alice NAME=[UNAVAILABLE]",
                       "EHLO client.test") + transaction())
xclient("all-attributes", lines("XCLIENT NAME=mail.example.org ADDR=IPV6:2001:db8::9 PORT=4567 "
                                "PROTO=ESMTP HELO=h+2Bx LOGIN=a+3Db DESTADDR=192.0.2.25 "
                                "DESTPORT=25", "HELO client.test") + transaction())
xclient("unlisted", lines("EHLO proxy.test", "XCLIENT ADDR=203.0.113.9", "EHLO x")
        + transaction(), listed=False)
xclient("malformed", lines("EHLO p", "XCLIENT", "XCLIENT FOO=1", "XCLIENT ADDR=1.2.3.999",
                           "XCLIENT PORT=99999", "XCLIENT NAME=a+", "XCLIENT HELO=a+0d",
                           "MAIL FROM:<a@b>", "XCLIENT ADDR=1.2.3.4"))
xclient("trusted-required", lines("EHLO p", "MAIL FROM:<a@b>", "XCLIENT ADDR=203.0.113.5",
                                  "EHLO c") + transaction(), auth_required=True,
        tls_required=True, trusted_203=True)
xclient("unavailable", lines("XCLIENT ADDR=[TEMPUNAVAIL] NAME=[UNAVAILABLE] PORT=[UNAVAILABLE] "
                             "LOGIN=[TEMPUNAVAIL] PROTO=[UNAVAILABLE]", "EHLO c") + transaction(),
        auth_required=True)


# ---- dns: 1 flag byte (the client, bits 0-1; at RCPT, 4; temp errors let through, 8), then
# one DNS response message (RFC 1035 §4.1) ------------------------------------------------------
def u16(v):
    return bytes([v >> 8 & 0xFF, v & 0xFF])


def u32(v):
    return u16(v >> 16) + u16(v & 0xFFFF)


def wire(name):
    return b"".join(bytes([len(l)]) + l.encode() for l in name.split(".") if l) + b"\0"


def dns_msg(flags, qname, qtype, answers, rcode=0):
    head = u16(0x1234) + u16(0x8180 | rcode | flags) + u16(1) + u16(len(answers)) + u16(0) + u16(0)
    return head + wire(qname) + u16(qtype) + u16(1) + b"".join(answers)


def rr(owner, rtype, rdata, ttl=300):
    return owner + u16(rtype) + u16(1) + u32(ttl) + u16(len(rdata)) + rdata


Q = b"\xc0\x0c"  # a pointer to the question's name


def dns(name, data, flags=0):
    write("dns", name, bytes([flags]) + data)


dns("a-listed", dns_msg(0, "66.2.0.192.bl.example", 1, [rr(Q, 1, bytes([127, 0, 0, 2]))]), 1)
dns("a-not-127", dns_msg(0, "1.2.0.192.bl.example", 1, [rr(Q, 1, bytes([10, 0, 0, 1]))]))
dns("aaaa", dns_msg(0, "v6.example", 28, [rr(Q, 28, bytes([0x20, 1, 0xd, 0xb8] + [0] * 11 + [1]))]),
    2)
dns("ptr", dns_msg(0, "1.2.0.192.in-addr.arpa", 12, [rr(Q, 12, wire("mail.example.org"))]))
dns("ptr-compressed", dns_msg(0, "1.2.0.192.in-addr.arpa", 12,
                              [rr(Q, 12, wire("mail.example.org")),
                               rr(Q, 12, b"\x04next\xc0\x34")]))
dns("txt", dns_msg(0, "66.2.0.192.bl.example", 16, [rr(Q, 16, b"\x06Listed\x09 for spam")]), 5)
dns("cname-then-a", dns_msg(0, "x.example", 1, [rr(Q, 5, wire("y.example")),
                                                rr(wire("y.example"), 1, bytes([192, 0, 2, 1]))]))
dns("nxdomain", dns_msg(0, "x.example", 1, [], rcode=3), 3)
dns("servfail", dns_msg(0, "x.example", 1, [], rcode=2), 8)
dns("truncated", dns_msg(0x0200, "x.example", 1, []))
dns("nodata", dns_msg(0, "x.example", 1, []))
dns("loop-self", dns_msg(0, "x.example", 1, [rr(b"\xc0\x1b", 1, bytes([1, 2, 3, 4]))]))
dns("loop-label", dns_msg(0, "x.example", 1, [rr(b"\x01x\xc0\x1b", 1, bytes([1, 2, 3, 4]))]))
dns("forward-pointer", dns_msg(0, "x.example", 1, [rr(b"\xc0\xff", 1, bytes([1, 2, 3, 4]))]))
dns("rdlength-over", dns_msg(0, "x.example", 1, [Q + u16(1) + u16(1) + u32(1) + u16(300) + b"ab"]))
dns("label-64", dns_msg(0, "x.example", 1, [rr(b"\x40" + b"a" * 64 + b"\0", 1, b"1234")]))
dns("txt-bad-length", dns_msg(0, "x.example", 16, [rr(Q, 16, b"\x09short")]))
dns("header-only", u16(0x1234) + u16(0x8180))

# ---- lmtp: 2 option bytes, then the client's bytes ------------------------------------------
LMTP, SMTP = 1, 0


def lmtp_seed(name, client, b0=LMTP, b1=3 << 4):
    write("lmtp", name, bytes([b0 | (2 << 6), b1]) + b(client))  # bits 6-7: one feed


LMTP_TX = "LHLO c.example\r\nMAIL FROM:<a@b.example>\r\n"
lmtp_seed("mixed-verdicts", LMTP_TX + "RCPT TO:<ok@d.example>\r\nRCPT TO:<full@d.example>\r\n"
          "RCPT TO:<no@d.example>\r\nRCPT TO:<custom@d.example>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n")
lmtp_seed("bdat", LMTP_TX + "RCPT TO:<ok@d.example>\r\nRCPT TO:<full@d.example>\r\n"
          "BDAT 3\r\nabcBDAT 4 LAST\r\nd\r\n\r\nNOOP\r\n")
lmtp_seed("going", LMTP_TX + "RCPT TO:<going@d.example>\r\nRCPT TO:<ok@d.example>\r\n"
          "DATA\r\nhi\r\n.\r\nNOOP\r\n")
lmtp_seed("wrong-length", LMTP_TX + "RCPT TO:<w@d.example>\r\nRCPT TO:<ok@d.example>\r\n"
          "DATA\r\nhi\r\n.\r\n")
lmtp_seed("thrown", LMTP_TX + "RCPT TO:<t@d.example>\r\nRCPT TO:<x@d.example>\r\nDATA\r\nhi\r\n.\r\n")
lmtp_seed("exception", LMTP_TX + "RCPT TO:<x@d.example>\r\nDATA\r\nhi\r\n.\r\n", LMTP | 16)
lmtp_seed("too-big", LMTP_TX + "RCPT TO:<ok@d.example>\r\nRCPT TO:<full@d.example>\r\n"
          "DATA\r\n" + "x" * 40 + "\r\n.\r\n", LMTP | (0 << 1))
lmtp_seed("smtp-fold", "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<ok@d.example>\r\n"
          "RCPT TO:<no@d.example>\r\nRCPT TO:<full@d.example>\r\nDATA\r\nhi\r\n.\r\n", SMTP | 6)
lmtp_seed("helo-refused", "HELO c.example\r\nEHLO c.example\r\nLHLO c.example\r\nQUIT\r\n")
lmtp_seed("stream", LMTP_TX + "RCPT TO:<ok@d.example>\r\nRCPT TO:<no@d.example>\r\n"
          "DATA\r\n" + "y" * 50 + "\r\n.\r\n", LMTP | 16 | 6)


# ---- reply: 1 byte (how the bytes are fed: bits 0-1 the Chunker mode, bits 2-7 n), then what
# a server sent the client -------------------------------------------------------------------
def reply(name, data, mode=0):
    write("reply", name, bytes([mode]) + b(data))


reply("greeting", "220 mx.example.org ESMTP ready\r\n")
reply("ehlo", "250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n"
      "250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250-AUTH PLAIN LOGIN CRAM-MD5\r\n250 CHUNKING\r\n",
      3)
reply("pipelined-burst", "250 2.1.0 Ok\r\n550 5.1.1 No such user\r\n250 2.1.5 Ok\r\n354 Go\r\n",
      1 | 4 << 2)
reply("enhanced-multiline", "550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n", 2)
reply("code-only", "250\r\n221 \r\n", 1)
reply("bare-lf", "220 lenient\n250-a\n250 b\n")
reply("mixed-codes", "250-one\r\n251 two\r\n")
reply("garbage", "HTTP/1.1 400 Bad Request\r\n\r\n")
reply("long-line", "250 " + "x" * 5000 + "\r\n", 2)
reply("endless", "250-more\r\n" * 1100, 2)
reply("lmtp-per-recipient", "250 2.0.0 a ok\r\n452 4.2.2 b full\r\n250 2.0.0 c ok\r\n", 3 | 9 << 2)

print("seeds.py: wrote %d seeds under %s" % (len(written), ROOT), file=sys.stderr)
