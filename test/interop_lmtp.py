#!/usr/bin/env python3
# test/interop_lmtp.py - Python's smtplib.LMTP as a real LMTP client, for test/interop_lmtp.sh.
#
#   interop_lmtp.py steps    ADDR FILE FROM TO...   LHLO, MAIL, each RCPT, DATA, then one reply
#                                                   per accepted recipient (RFC 2033 §4.2)
#   interop_lmtp.py sendmail ADDR FILE FROM TO...   smtplib's one-call sendmail(), then the
#                                                   replies it left unread
#   interop_lmtp.py smtp     ADDR FILE FROM TO...   the same as steps in SMTP (smtplib.SMTP,
#                                                   EHLO): one reply after the data, "DATA *"
#   interop_lmtp.py loop     ADDR FILE FROM TO N    SMTP: up to N messages, one connection
#                                                   each, FILE with its Message-ID made
#                                                   <loop-K@example.test>; "ACK K" after each
#                                                   250, until the first failure
#   interop_lmtp.py json     OUT PATH EXPECTED      the --json line of OUT whose "path" is PATH
#                                                   has every key and value of the JSON object
#                                                   EXPECTED
#
# ADDR is "/path/to.sock" (smtplib.LMTP connects to a Unix socket when the host starts with '/')
# or "HOST:PORT". FILE is sent as it is (bytes: smtplib changes nothing in it).
#
# Output, one line each, for the shell script to compare:
#   PID N                   our process id (a Unix-socket server sees it through SO_PEERCRED)
#   RCPT TO CODE TEXT       the reply to RCPT TO:<TO>
#   DATA TO CODE TEXT       the reply after the data for the accepted recipient TO, in RCPT order
#   SENDMAIL REFUSED {...}  sendmail() returned: the recipients it says were refused
#   RAISED NAME CODE TEXT   sendmail() raised smtplib's exception NAME
#   PENDING CODE TEXT       a reply still unread after sendmail() (what smtplib did not read)
# Exit status 0 when the session ran to its end (refusals included), 2 when it broke.
#
# What this shows about smtplib (Python 3.11): LMTP only changes the greeting verb to LHLO and
# lets connect() take a socket path. data() and sendmail() come from SMTP and read ONE reply
# after the final dot, so with several recipients the other replies stay unread: sendmail()
# reports a refusal after the data only for the first accepted recipient (it raises
# SMTPDataError), never for the others, and the next command would read a stale reply. A
# program that needs every verdict calls data() and then getreply() once per further accepted
# recipient, as `steps` does.
import json
import os
import smtplib
import sys


def connect(addr, lmtp=True):
    if not lmtp:
        host, port = addr.rsplit(':', 1)
        return smtplib.SMTP(host, int(port), local_hostname='localhost', timeout=30)
    if addr.startswith('/'):
        return smtplib.LMTP(addr, local_hostname='localhost', timeout=30)
    host, port = addr.rsplit(':', 1)
    return smtplib.LMTP(host, int(port), local_hostname='localhost', timeout=30)


def show(what, code, text):
    if isinstance(text, bytes):
        text = text.decode('utf-8', 'replace')
    print(what, code, ' '.join(text.split('\n')), flush=True)


def steps(addr, message, sender, recipients, lmtp=True):
    s = connect(addr, lmtp)
    s.ehlo()  # LMTP.ehlo_msg is "lhlo"
    code, text = s.mail(sender)
    show('MAIL', code, text)
    accepted = []
    for to in recipients:
        code, text = s.rcpt(to)
        show('RCPT ' + to, code, text)
        if code == 250:
            accepted.append(to)
    if accepted and not lmtp:
        code, text = s.data(message)  # SMTP: the one reply for the message
        show('DATA *', code, text)
    elif accepted:
        code, text = s.data(message)  # the first accepted recipient's reply
        show('DATA ' + accepted[0], code, text)
        for to in accepted[1:]:
            code, text = s.getreply()
            show('DATA ' + to, code, text)
    s.quit()


def sendmail(addr, message, sender, recipients):
    s = connect(addr)
    try:
        refused = s.sendmail(sender, recipients, message)
        print('SENDMAIL REFUSED', json.dumps(refused_as_text(refused)), flush=True)
    except smtplib.SMTPResponseException as e:
        show('RAISED ' + type(e).__name__, e.smtp_code, e.smtp_error)
    # The replies sendmail() left unread: one per accepted recipient after the first. The
    # server has sent them already (it answers all at once), so they are read at once.
    for _ in recipients[1:]:
        s.sock.settimeout(5)
        try:
            code, text = s.getreply()
        except (OSError, smtplib.SMTPServerDisconnected):
            break
        show('PENDING', code, text)
    s.sock.settimeout(30)
    s.quit()


def loop(addr, message, sender, recipients):
    recipients, count = recipients[:-1], int(recipients[-1])
    for k in range(1, count + 1):
        numbered = message.replace(b'<probe-1@example.test>', b'<loop-%d@example.test>' % k)
        s = connect(addr, lmtp=False)
        s.sendmail(sender, recipients, numbered)  # raises unless 250
        print('ACK', k, flush=True)
        s.quit()


def refused_as_text(refused):
    return {to: [code, text.decode('utf-8', 'replace')] for to, (code, text) in refused.items()}


def check_json(out, path, expected):
    want = json.loads(expected)
    for line in open(out, encoding='utf-8'):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get('path') != path:
            continue
        wrong = {k: obj.get(k, '(missing)') for k, v in want.items() if obj.get(k, object()) != v}
        if wrong:
            sys.exit('the --json line has %s, not %s' % (json.dumps(wrong), expected))
        return
    sys.exit('no --json line has "path": "%s"' % path)


def main():
    mode = sys.argv[1]
    if mode == 'json':
        check_json(*sys.argv[2:5])
        return 0
    addr, file, sender, recipients = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
    message = open(file, 'rb').read()
    print('PID', os.getpid(), flush=True)
    try:
        if mode == 'steps':
            steps(addr, message, sender, recipients)
        elif mode == 'smtp':
            steps(addr, message, sender, recipients, lmtp=False)
        elif mode == 'loop':
            loop(addr, message, sender, recipients)
        else:
            sendmail(addr, message, sender, recipients)
    except (OSError, smtplib.SMTPException) as e:
        print('BROKEN', repr(e), flush=True)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
