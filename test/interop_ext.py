#!/usr/bin/env python3
"""test/interop_ext.py MODE ARG... - the Python side of test/interop_ext.sh: the ESMTP
extensions of issue 13 spoken by Python's smtplib and by hand over a raw socket.

Each mode does one session against mailsink on 127.0.0.1 and checks every reply it expects;
it exits 0 when all were as expected, else prints the first mismatch and exits 1.

  ehlo PORT                       print the EHLO keywords, one a line
  ehlo-starttls PORT CAFILE       "clear KEYWORD" lines, STARTTLS (verified), "tls KEYWORD"
  commands PORT CODE:COMMAND...   EHLO, then each COMMAND must get reply CODE (RSET, QUIT last)
  smtplib PORT FILE [--from A] [--mail-option P]... [--rcpt A [--rcpt-option P]...]...
          [--login USER:PASS] [--starttls CAFILE] [--mail-refused CODE]
                                  smtplib: sendmail(from, tos, FILE, mail_options,
                                  rcpt_options) when every --rcpt has the same --rcpt-options
                                  after it, else mail(from, options), rcpt(to, options) for
                                  each, data(FILE); with --mail-refused MAIL must get reply
                                  CODE and nothing is sent
  binary PORT OUT                 BODY=BINARYMIME, three BDAT chunks with every octet value
  pipelined PORT OUT              MAIL, RCPT and two BDAT chunks in one write (RFC 3030 §4.2)
  bdat-zero PORT OUT              BODY=8BITMIME, BDAT N, then BDAT 0 LAST (RFC 3030 §2)
  smuggle PORT OUT                one BDAT LAST chunk holding CRLF.CRLF and MAIL/RCPT/DATA
  vanish PORT                     BDAT 1000 with 10 octets of it, then the connection closed
  oversize PORT MAX OUT           chunks past --max-size MAX: 552, then a small message in the
                                  same session is accepted
  mix PORT                        BDAT, then DATA in the same transaction: 503 (RFC 3030 §2)
  binarymime-data PORT            BODY=BINARYMIME, then DATA: 503 (RFC 3030 §3)
  json FILE PATH KEY=JSON...      the --json line in FILE whose "path" is PATH must have each
                                  KEY (dots for members and array indexes) equal to JSON
The BDAT modes write the message they sent to OUT, for a byte-for-byte comparison.
"""
import json
import smtplib
import socket
import ssl
import sys
import time

FROM = 'alice@example.test'
TO = 'bob@example.test'


def die(why):
    print(why)
    sys.exit(1)


class Raw:
    """An SMTP session over a plain socket: replies read and checked one by one."""

    def __init__(self, port):
        self.sock = socket.create_connection(('127.0.0.1', int(port)), timeout=20)
        self.buf = b''
        self.expect(220, 'the greeting')

    def line(self):
        while b'\n' not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                die('the server closed the connection (unread: %r)' % self.buf)
            self.buf += data
        line, self.buf = self.buf.split(b'\n', 1)
        return line.rstrip(b'\r').decode('utf-8', 'replace')

    def reply(self):
        lines = []
        while True:
            lines.append(self.line())
            if len(lines[-1]) < 4 or lines[-1][3] != '-':
                break
        code = lines[-1][:3]
        return (int(code) if code.isdigit() else 0), lines

    def expect(self, code, what):
        got, lines = self.reply()
        if got != code:
            die('%s: expected %d, got %s' % (what, code, ' | '.join(lines)))
        return lines

    def send(self, data):
        self.sock.sendall(data)

    def command(self, line, code, what=None):
        self.send(line.encode() + b'\r\n')
        return self.expect(code, what or line)

    def ehlo(self):
        lines = self.command('EHLO localhost', 250)
        return [line[4:] for line in lines[1:]]

    def quit(self):
        self.command('QUIT', 221)
        self.sock.close()


def envelope(raw, mail_params=''):
    raw.command('MAIL FROM:<%s>%s' % (FROM, mail_params), 250)
    raw.command('RCPT TO:<%s>' % TO, 250)


def write(path, data):
    with open(path, 'wb') as fh:
        fh.write(data)


def header(subject):
    return ('From: Alice <%s>\r\nTo: Bob <%s>\r\nSubject: %s\r\n'
            'Date: Thu, 03 Dec 2026 04:00:00 +0000\r\nMessage-ID: <%s@example.test>\r\n\r\n'
            % (FROM, TO, subject, subject.replace(' ', '-'))).encode()


def mode_ehlo(port):
    raw = Raw(port)
    print('\n'.join(raw.ehlo()))
    raw.quit()


def mode_ehlo_starttls(port, cafile):
    raw = Raw(port)
    for keyword in raw.ehlo():
        print('clear', keyword)
    raw.command('STARTTLS', 220)
    context = ssl.create_default_context(cafile=cafile)
    raw.sock = context.wrap_socket(raw.sock, server_hostname='localhost')
    for keyword in raw.ehlo():
        print('tls', keyword)
    raw.quit()


def mode_commands(port, *steps):
    raw = Raw(port)
    raw.ehlo()
    for step in steps:
        code, command = step.split(':', 1)
        lines = raw.command(command, int(code))
        print('%s -> %s' % (command, lines[-1]))
    raw.command('RSET', 250)
    raw.quit()


def mode_smtplib(port, path, *args):
    sender, mail_options, rcpts, login, cafile, mail_refused = FROM, [], [], None, None, None
    args = list(args)
    while args:
        flag = args.pop(0)
        if flag == '--from':
            sender = args.pop(0)
        elif flag == '--mail-option':
            mail_options.append(args.pop(0))
        elif flag == '--rcpt':
            rcpts.append((args.pop(0), []))
        elif flag == '--rcpt-option':
            rcpts[-1][1].append(args.pop(0))
        elif flag == '--login':
            login = args.pop(0).split(':', 1)
        elif flag == '--starttls':
            cafile = args.pop(0)
        elif flag == '--mail-refused':
            mail_refused = int(args.pop(0))
        else:
            die('unknown argument ' + flag)
    with open(path, 'rb') as fh:
        message = fh.read()
    with smtplib.SMTP('127.0.0.1', int(port), local_hostname='localhost', timeout=20) as client:
        client.ehlo()
        if cafile:
            client.starttls(context=ssl.create_default_context(cafile=cafile))
            client.ehlo()
        if login:
            client.login(*login)
        if not mail_refused and all(options == rcpts[0][1] for _, options in rcpts):
            # The same options for every recipient: smtplib's own sendmail(), which adds SIZE=.
            refused = client.sendmail(sender, [rcpt for rcpt, _ in rcpts], message,
                                      mail_options=mail_options, rcpt_options=rcpts[0][1])
            print('sendmail', mail_options, rcpts, '->', refused)
            if refused:
                die('recipients refused: %r' % (refused,))
            return
        code, text = client.mail(sender, mail_options)
        print('MAIL', mail_options, '->', code, text.decode())
        if mail_refused:
            if code != mail_refused:
                die('MAIL %s: expected %d, got %d %s' % (mail_options, mail_refused, code, text))
            client.rset()
            return
        if code != 250:
            die('MAIL %s: expected 250, got %d %s' % (mail_options, code, text))
        for rcpt, options in rcpts:
            code, text = client.rcpt(rcpt, options)
            print('RCPT', rcpt, options, '->', code, text.decode())
            if code != 250:
                die('RCPT %s %s: expected 250, got %d %s' % (rcpt, options, code, text))
        code, text = client.data(message)
        print('DATA ->', code, text.decode())
        if code != 250:
            die('DATA: expected 250, got %d %s' % (code, text))


def send_chunks(raw, chunks):
    for i, chunk in enumerate(chunks):
        last = ' LAST' if i == len(chunks) - 1 else ''
        raw.send(b'BDAT %d%s\r\n' % (len(chunk), last.encode()) + chunk)
        raw.expect(250, 'BDAT %d%s (chunk %d)' % (len(chunk), last, i + 1))


def mode_binary(port, out):
    # Every octet value, NUL, bare CR and bare LF, a lone CRLF.CRLF and an over-long line:
    # BINARYMIME content is taken as it is (RFC 3030 §3).
    body = (header('binary') + bytes(range(256)) + b'\x00\x00NUL\rbare CR\nbare LF\r\n.\r\n'
            + b'x' * 3000 + b'\r\n\xff\xfe end without CRLF\x00')
    write(out, body)
    raw = Raw(port)
    raw.ehlo()
    envelope(raw, ' BODY=BINARYMIME')
    send_chunks(raw, [body[:100], body[100:2000], body[2000:]])
    raw.quit()


def mode_pipelined(port, out):
    body = header('pipelined') + b'Sent in one write with the commands.\r\n'
    write(out, body)
    raw = Raw(port)
    raw.ehlo()
    raw.send(b'MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nBDAT 50\r\n%sBDAT %d LAST\r\n%s'
             % (FROM.encode(), TO.encode(), body[:50], len(body) - 50, body[50:]))
    for what in ('MAIL', 'RCPT', 'BDAT 50', 'BDAT LAST'):
        raw.expect(250, what + ' (pipelined)')
    raw.quit()


def mode_bdat_zero(port, out):
    body = header('zero') + b'Ends with BDAT 0 LAST. 8 bits: \xc3\xa9t\xc3\xa9\r\n'
    write(out, body)
    raw = Raw(port)
    raw.ehlo()
    envelope(raw, ' BODY=8BITMIME')
    raw.send(b'BDAT %d\r\n' % len(body) + body)
    raw.expect(250, 'BDAT %d' % len(body))
    raw.command('BDAT 0 LAST', 250)
    raw.quit()


def mode_smuggle(port, out):
    body = (header('smuggle') + b'before\r\n.\r\nMAIL FROM:<evil@example.test>\r\n'
            b'RCPT TO:<victim@example.test>\r\nDATA\r\nsmuggled\r\n.\r\nQUIT\r\n')
    write(out, body)
    raw = Raw(port)
    raw.ehlo()
    envelope(raw)
    raw.send(b'BDAT %d LAST\r\n' % len(body) + body)
    raw.expect(250, 'BDAT LAST')
    # The very next reply must be QUIT's: a command hidden in the chunk would answer first.
    raw.quit()


def mode_vanish(port):
    raw = Raw(port)
    raw.ehlo()
    envelope(raw)
    raw.send(b'BDAT 1000\r\nvanishing!')
    time.sleep(0.5)  # the server reads the 10 octets, then the end of the connection
    raw.sock.close()


def mode_oversize(port, most, out):
    raw = Raw(port)
    raw.ehlo()
    envelope(raw)
    half = int(most) // 2 + 10
    raw.send(b'BDAT %d\r\n' % half + b'a' * half)
    raw.expect(250, 'BDAT %d (under the limit)' % half)
    raw.send(b'BDAT %d LAST\r\n' % half + b'b' * half)
    raw.expect(552, 'BDAT %d LAST (past the limit across the chunks)' % half)
    body = header('after oversize') + b'Small.\r\n'
    write(out, body)
    envelope(raw)
    raw.send(b'BDAT %d LAST\r\n' % len(body) + body)
    raw.expect(250, 'BDAT LAST (a small message after the 552)')
    raw.quit()


def mode_mix(port):
    raw = Raw(port)
    raw.ehlo()
    envelope(raw)
    raw.send(b'BDAT 4\r\nabcd')
    raw.expect(250, 'BDAT 4')
    raw.command('DATA', 503, 'DATA after BDAT in one transaction')
    raw.command('RSET', 250)
    raw.quit()


def mode_binarymime_data(port):
    raw = Raw(port)
    raw.ehlo()
    envelope(raw, ' BODY=BINARYMIME')
    raw.command('DATA', 503, 'DATA after BODY=BINARYMIME')
    raw.command('RSET', 250)
    raw.quit()


def member(value, key):
    for part in key.split('.'):
        if isinstance(value, list):
            value = value[int(part)]
        elif isinstance(value, dict):
            if part not in value:
                raise KeyError(part)
            value = value[part]
        else:
            raise KeyError(part)
    return value


def mode_json(path, stored, *checks):
    found = None
    for _ in range(50):  # the line is printed before the 250; a moment for the pipe anyway
        with open(path, encoding='utf-8') as fh:
            for line in fh:
                if line.startswith('{') and json.loads(line).get('path') == stored:
                    found = json.loads(line)
        if found is not None:
            break
        time.sleep(0.1)
    if found is None:
        die('no --json line has "path": %s' % json.dumps(stored))
    for check in checks:
        key, expected = check.split('=', 1)
        try:
            actual = member(found, key)
        except (KeyError, IndexError, ValueError):
            die('the --json line has no %s: %s' % (key, json.dumps(found)))
        if actual != json.loads(expected):
            die('--json %s is %s, not %s; the line: %s'
                % (key, json.dumps(actual), expected, json.dumps(found)))


MODES = {'ehlo': mode_ehlo, 'ehlo-starttls': mode_ehlo_starttls, 'commands': mode_commands,
         'smtplib': mode_smtplib, 'binary': mode_binary, 'pipelined': mode_pipelined,
         'bdat-zero': mode_bdat_zero, 'smuggle': mode_smuggle, 'vanish': mode_vanish,
         'oversize': mode_oversize, 'mix': mode_mix,
         'binarymime-data': mode_binarymime_data, 'json': mode_json}

if __name__ == '__main__':
    if len(sys.argv) < 2 or sys.argv[1] not in MODES:
        die(__doc__)
    try:
        MODES[sys.argv[1]](*sys.argv[2:])
    except (OSError, smtplib.SMTPException) as e:
        die('%s: %s' % (type(e).__name__, e))
