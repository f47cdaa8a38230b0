#!/usr/bin/env python3
"""test/interop_client_aio.py - aiosmtpd (Debian python3-aiosmtpd) as the server that
test/interop_client.sh points smtpd::Client at.

    interop_client_aio.py smtp PORT OUTDIR     SMTP with AUTH PLAIN and LOGIN (alice/wonderland,
                                               offered without TLS: loopback only)
    interop_client_aio.py lmtp PORT OUTDIR     LMTP (aiosmtpd.lmtp.LMTP): after the data, one
                                               reply per recipient: 452 for full@..., else 250

Each message is written to OUTDIR/N.eml (the content as received, dot-unstuffed, CRLF) with
OUTDIR/N.env beside it: "from", "to" (space-separated), "auth" (the login, or "-") and "lhlo"
lines. Prints "ready" once listening, then serves until killed.
"""
import os
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import AuthResult, LoginPassword


class Store:
    def __init__(self, outdir, lmtp):
        self.outdir = outdir
        self.lmtp = lmtp
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        base = os.path.join(self.outdir, str(self.count))
        with open(base + ".eml", "wb") as f:
            f.write(envelope.original_content)
        login = session.auth_data.decode() if isinstance(session.auth_data, bytes) else "-"
        with open(base + ".env", "w") as f:
            f.write("from %s\nto %s\nauth %s\nlhlo %s\n" % (
                envelope.mail_from, " ".join(envelope.rcpt_tos), login, session.host_name))
        if not self.lmtp:
            return "250 2.0.0 Stored"
        # RFC 2033 §4.2: a reply for each recipient accepted, in order (aiosmtpd sends the
        # status as given, so the lines are joined here).
        return "\r\n".join("452 4.2.2 Mailbox full" if to.startswith("full@")
                           else "250 2.0.0 Delivered to " + to for to in envelope.rcpt_tos)


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"alice" and \
        auth_data.password == b"wonderland"
    if not ok:  # handled=False: aiosmtpd then answers 535 itself
        return AuthResult(success=False, handled=False)
    return AuthResult(success=True, auth_data=b"alice:" + mechanism.encode())


class LmtpController(Controller):
    def factory(self):
        return LMTP(self.handler, **self.SMTP_kwargs)


def main():
    mode, port, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    store = Store(outdir, mode == "lmtp")
    if mode == "lmtp":
        controller = LmtpController(store, hostname="127.0.0.1", port=port)
    else:
        controller = Controller(store, hostname="127.0.0.1", port=port,
                                authenticator=authenticator, auth_require_tls=False)
    controller.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(1)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
