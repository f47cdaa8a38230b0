// protocol_test.cpp - the command phase of smtpd::Protocol, driven directly with strings (no
// sockets), written like the scenarios of RFC 5321 Appendix D: the greeting and HELO/EHLO
// (§4.1.1.1), the order of commands (§4.1.4), every verb in every state, the basic MAIL/RCPT
// parameters (RFC 1869/1870), line limits (§4.5.3.1.4) and bare CR/LF (§2.3.8), the error
// limit, the user hooks and how their replies are checked, logging, the Received header
// (§4.4), timeouts and shutdown, idle(), and a full session replayed in every split.
// Enhanced status codes (RFC 2034) appear only once EHLO negotiated them: never in a HELO
// session or before EHLO, never on 220, 354 or the HELO/EHLO replies.
#include "../smtpd.hpp"
#include "protocol_helpers.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <regex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

using namespace std::string_literals;

namespace {

using test::client_info;
using test::mask_ids; // with the default mask: "queued as XXXX"
using test::printable;

// ---- fixed texts ---------------------------------------------------------------------------

const std::string greeting_line = "220 mx.test ESMTP smtpd";
const std::string ehlo_client = "EHLO client.test";
const std::string helo_client = "HELO client.test";

// The EHLO reply with the default options, one string per line.
const std::vector<std::string> ehlo_reply_lines = {
    "250-mx.test",    "250-SIZE 26214400",       "250-8BITMIME",
    "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-SMTPUTF8",
    "250-CHUNKING",   "250 LIMITS RCPTMAX=100",
};

// ---- the session under test --------------------------------------------------------------

smtpd::Options with_hostname(smtpd::Options o) {
  o.hostname = "mx.test";
  return o;
}

// Session - Options (hostname "mx.test") and the Protocol that uses them. The greeting is kept
// apart: send() returns only what its bytes produced.
struct Session {
  smtpd::Options options;
  smtpd::Protocol protocol;
  std::string greeting;

  explicit Session(smtpd::Options o = {}, smtpd::SessionInfo info = client_info())
      : options(with_hostname(std::move(o))), protocol(options, std::move(info)),
        greeting(protocol.take_output()) {}

  // send - feed `bytes` in one read; the replies they produced.
  std::string send(std::string_view bytes) {
    protocol.feed(bytes);
    return protocol.take_output();
  }

  // line - send one command line, CRLF added.
  std::string line(std::string_view command) { return send(std::string(command) + "\r\n"); }

  bool closed() const { return protocol.should_close(); }
};

// ---- reading what came back --------------------------------------------------------------

// crlf_lines - `lines`, each followed by CRLF: the exact bytes of those reply lines.
std::string crlf_lines(const std::vector<std::string>& lines) {
  std::string out;
  for (const std::string& l : lines)
    out += l + "\r\n";
  return out;
}

// joined - `lines` with CRLF between them (not after the last).
std::string joined(const std::vector<std::string>& lines) {
  std::string all = crlf_lines(lines);
  return all.substr(0, all.size() - 2);
}

// script - run a dialogue written as in RFC 5321 Appendix D. "C: " lines are sent, CRLF added;
// the "S: " lines after them must be exactly the replies those commands produced (several
// "C: " lines in a row are a pipelined group). "S: " lines before any "C: " are the greeting.
// A trailing group of "C: " lines without "S: " lines must produce no output at all.
void script(Session& s, std::initializer_list<std::string_view> dialogue) {
  std::string sent, got, expected;
  bool first = true;
  auto compare = [&] {
    INFO("after: ", printable(sent));
    CHECK(printable(mask_ids(got)) == printable(expected));
    sent.clear();
    got.clear();
    expected.clear();
  };
  for (std::string_view l : dialogue) {
    std::string_view text = l.substr(3);
    if (l.substr(0, 3) == "C: ") {
      if (!expected.empty()) compare();
      sent += std::string(text) + "\r\n";
      got += s.line(text);
    } else if (l.substr(0, 3) == "S: ") {
      if (first) {
        sent = "(connect)";
        got = s.greeting;
      }
      expected += std::string(text) + "\r\n";
    } else {
      FAIL("script line must start with \"C: \" or \"S: \": ", std::string(l));
    }
    first = false;
  }
  if (!expected.empty() || !got.empty()) compare();
}

void script(std::initializer_list<std::string_view> dialogue) {
  Session s;
  script(s, dialogue);
}

} // namespace

TEST_SUITE("protocol") {

  // =============================================================================================
  // The greeting and HELO/EHLO (RFC 5321 §4.2, §4.1.1.1)
  // =============================================================================================

  TEST_CASE("RFC 5321 §4.2: the greeting is \"220 domain ESMTP appname\", without enhanced code") {
    script({"S: 220 mx.test ESMTP smtpd"});
    smtpd::Options o;
    o.appname = "myapp";
    Session s(o);
    CHECK(s.greeting == "220 mx.test ESMTP myapp\r\n");
    CHECK_FALSE(s.closed());
  }

  TEST_CASE("RFC 5321 §4.1.1.1: EHLO lists our name and the extensions, without enhanced codes") {
    Session s;
    CHECK(printable(s.line(ehlo_client)) == printable(crlf_lines(ehlo_reply_lines)));
    CHECK(s.protocol.session().helo == "client.test");
    CHECK(s.protocol.session().esmtp);
  }

  TEST_CASE("RFC 1870: EHLO advertises SIZE as Options::max_message_bytes") {
    smtpd::Options o;
    o.max_message_bytes = 1000;
    Session s(o);
    std::vector<std::string> lines = ehlo_reply_lines;
    lines[1] = "250-SIZE 1000";
    CHECK(printable(s.line(ehlo_client)) == printable(crlf_lines(lines)));
  }

  TEST_CASE("RFC 5321 §4.1.1.1: HELO gets \"250 domain\" and no enhanced codes afterwards") {
    Session s;
    script(s, {"S: 220 mx.test ESMTP smtpd", "C: HELO client.test", "S: 250 mx.test",
               "C: MAIL FROM:<a@b.test>", "S: 250 Ok", "C: RCPT TO:<c@d.test>", "S: 250 Ok",
               "C: FOO", "S: 500 Command not recognized"});
    CHECK(s.protocol.session().helo == "client.test");
    CHECK_FALSE(s.protocol.session().esmtp);
  }

  TEST_CASE("RFC 5321 §4.1.1.1: HELO or EHLO without a domain gets 501") {
    script({"C: HELO", "S: 501 Syntax: HELO domain", "C: EHLO", "S: 501 Syntax: EHLO domain",
            "C: EHLO   ", "S: 501 Syntax: EHLO domain", "C: MAIL FROM:<a@b.test>",
            "S: 503 Send HELO/EHLO first"});
    // After EHLO the same refusal carries its enhanced code.
    script({"C: EHLO client.test", "S: 250-mx.test", "S: 250-SIZE 26214400", "S: 250-8BITMIME",
            "S: 250-PIPELINING", "S: 250-ENHANCEDSTATUSCODES", "S: 250-SMTPUTF8", "S: 250-CHUNKING",
            "S: 250 LIMITS RCPTMAX=100", "C: EHLO", "S: 501 5.5.4 Syntax: EHLO domain", "C: HELO",
            "S: 501 5.5.4 Syntax: HELO domain"});
  }

  TEST_CASE("RFC 5321 §4.1.1.1: strict mode refuses a HELO name that is no domain with 501") {
    smtpd::Options o;
    o.strict = true;
    for (const char* name : {"bad_name!", "-dash.test", "a..b", "[1.2.3]", "client test"}) {
      CAPTURE(name);
      Session s(o);
      CHECK(s.line("HELO "s + name) == "501 Invalid domain name\r\n");
      CHECK(s.line("EHLO "s + name) == "501 Invalid domain name\r\n");
      CHECK(s.line("MAIL FROM:<a@b.test>") == "503 Send HELO/EHLO first\r\n");
    }
    for (const char* name : {"client.test", "[192.0.2.1]", "[IPv6:2001:db8::1]", "localhost"}) {
      CAPTURE(name);
      Session s(o);
      CHECK(s.line("HELO "s + name) == "250 mx.test\r\n");
    }
  }

  TEST_CASE("RFC 5321 §4.1.4: a second EHLO resets the transaction") {
    Session s;
    s.line(ehlo_client);
    script(s, {"C: MAIL FROM:<a@b.test>", "S: 250 2.1.0 Ok", "C: RCPT TO:<c@d.test>",
               "S: 250 2.1.5 Ok"});
    CHECK(s.line(ehlo_client) == crlf_lines(ehlo_reply_lines));
    CHECK(s.protocol.envelope().from.empty());
    CHECK(s.protocol.envelope().to.empty());
    script(s, {"C: RCPT TO:<c@d.test>", "S: 503 5.5.1 Need MAIL command", "C: DATA",
               "S: 503 5.5.1 Need MAIL command", "C: MAIL FROM:<a@b.test>", "S: 250 2.1.0 Ok"});
  }

  TEST_CASE("RFC 2034: HELO after EHLO resets the transaction and turns enhanced codes off") {
    Session s;
    s.line(ehlo_client);
    script(s, {"C: MAIL FROM:<a@b.test>", "S: 250 2.1.0 Ok", "C: HELO client.test",
               "S: 250 mx.test", "C: RCPT TO:<c@d.test>", "S: 503 Need MAIL command"});
    CHECK_FALSE(s.protocol.session().esmtp);
  }

  // =============================================================================================
  // Every command in every state (RFC 5321 §4.1.1, §4.1.4, §3.3)
  // =============================================================================================

} // TEST_SUITE("protocol")

namespace {

// The states a session can be in between commands, each reached by its setup lines.
struct State {
  const char* name;
  std::vector<std::string> setup;
};

const State greeted{"greeted", {}};
const State helo{"HELO", {helo_client}};
const State ehlo{"EHLO", {ehlo_client}};
const State mail{"MAIL", {ehlo_client, "MAIL FROM:<a@b.test>"}};
const State rcpt{"RCPT", {ehlo_client, "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>"}};
const State helo_mail{"HELO+MAIL", {helo_client, "MAIL FROM:<a@b.test>"}};

// Verb - one command sent in one state, and the exact reply (lines joined by CRLF).
struct Verb {
  const State& state;
  std::string command;
  std::string reply;
};

const std::string vrfy_text = "Cannot VRFY user, but will accept message and attempt delivery";
const std::string help_lines[] = {
    "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP", "See RFC 5321"};

const std::vector<Verb> verbs = {
    // Before HELO/EHLO: no enhanced codes; MAIL, RCPT and DATA need HELO first; RSET, NOOP,
    // VRFY, EXPN and HELP work at any time (§4.1.4).
    {greeted, "MAIL FROM:<a@b.test>", "503 Send HELO/EHLO first"},
    {greeted, "RCPT TO:<c@d.test>", "503 Send HELO/EHLO first"},
    {greeted, "DATA", "503 Send HELO/EHLO first"},
    {greeted, "RSET", "250 Ok"},
    {greeted, "NOOP", "250 Ok"},
    {greeted, "NOOP anything at all", "250 Ok"},
    {greeted, "VRFY postmaster", "252 " + vrfy_text},
    {greeted, "VRFY", "501 Syntax: VRFY address"},
    {greeted, "EXPN staff", "502 Command not implemented"},
    {greeted, "HELP", "214-" + help_lines[0] + "\r\n214 " + help_lines[1]},
    {greeted, "QUIT", "221 Bye"},
    {greeted, "DATA now", "501 Syntax: DATA"},
    {greeted, "FOO", "500 Command not recognized"},
    // HELO session: the same replies, still without enhanced codes.
    {helo, "RCPT TO:<c@d.test>", "503 Need MAIL command"},
    {helo, "DATA", "503 Need MAIL command"},
    {helo, "MAIL FROM:<a@b.test>", "250 Ok"},
    {helo_mail, "MAIL FROM:<a@b.test>", "503 Sender already specified"},
    {helo_mail, "DATA", "503 Need RCPT command"},
    {helo_mail, "RCPT TO:<c@d.test>", "250 Ok"},
    {helo, "QUIT", "221 Bye"},
    // EHLO session, no transaction.
    {ehlo, "MAIL FROM:<a@b.test>", "250 2.1.0 Ok"},
    {ehlo, "MAIL FROM:<>", "250 2.1.0 Ok"},
    {ehlo, "RCPT TO:<c@d.test>", "503 5.5.1 Need MAIL command"},
    {ehlo, "DATA", "503 5.5.1 Need MAIL command"},
    {ehlo, "BDAT 0 LAST", "503 5.5.1 Need MAIL command"}, // RFC 3030 §2, a chunk of no octets
    {ehlo, "RSET", "250 2.0.0 Ok"},
    {ehlo, "NOOP", "250 2.0.0 Ok"},
    {ehlo, "NOOP x y z", "250 2.0.0 Ok"},
    {ehlo, "VRFY <postmaster@mx.test>", "252 2.5.0 " + vrfy_text},
    {ehlo, "VRFY", "501 5.5.4 Syntax: VRFY address"},
    {ehlo, "EXPN staff", "502 5.5.1 Command not implemented"},
    {ehlo, "HELP", "214-2.0.0 " + help_lines[0] + "\r\n214 2.0.0 " + help_lines[1]},
    {ehlo, "HELP MAIL", "214-2.0.0 " + help_lines[0] + "\r\n214 2.0.0 " + help_lines[1]},
    {ehlo, "QUIT", "221 2.0.0 Bye"},
    // Known verbs not offered here: 502; unknown ones and the empty line: 500.
    {ehlo, "TURN", "502 5.5.1 Command not implemented"},
    {ehlo, "ETRN mx.test", "502 5.5.1 Command not implemented"},
    {ehlo, "STARTTLS", "502 5.5.1 Command not implemented"},
    {ehlo, "AUTH PLAIN", "502 5.5.1 Command not implemented"},
    {ehlo, "FOO bar", "500 5.5.2 Command not recognized"},
    {ehlo, "MAILFROM:<a@b.test>", "500 5.5.2 Command not recognized"},
    {ehlo, "", "500 5.5.2 Command not recognized"},
    // DATA, RSET and QUIT take no argument.
    {ehlo, "DATA x", "501 5.5.4 Syntax: DATA"},
    {ehlo, "RSET x", "501 5.5.4 Syntax: RSET"},
    {ehlo, "QUIT now", "501 5.5.4 Syntax: QUIT"},
    // MAIL given: nested MAIL 503, DATA needs a recipient first.
    {mail, "MAIL FROM:<a@b.test>", "503 5.5.1 Sender already specified"},
    {mail, "DATA", "503 5.5.1 Need RCPT command"},
    {mail, "RCPT TO:<c@d.test>", "250 2.1.5 Ok"},
    {mail, "RSET", "250 2.0.0 Ok"},
    {mail, "NOOP", "250 2.0.0 Ok"},
    {mail, "VRFY x", "252 2.5.0 " + vrfy_text},
    // A recipient accepted: more recipients, then DATA gets 354 (no enhanced code).
    {rcpt, "RCPT TO:<e@f.test>", "250 2.1.5 Ok"},
    {rcpt, "MAIL FROM:<a@b.test>", "503 5.5.1 Sender already specified"},
    {rcpt, "DATA", "354 End data with <CR><LF>.<CR><LF>"},
    {rcpt, "DATA x", "501 5.5.4 Syntax: DATA"},
    {rcpt, "QUIT", "221 2.0.0 Bye"},
    // Verbs are case-insensitive (§2.4).
    {greeted, "ehlo client.test", joined(ehlo_reply_lines)},
    {ehlo, "mail from:<a@b.test>", "250 2.1.0 Ok"},
    {ehlo, "Mail From:<a@b.test>", "250 2.1.0 Ok"},
    {mail, "rcpt TO:<c@d.test>", "250 2.1.5 Ok"},
    {rcpt, "dAtA", "354 End data with <CR><LF>.<CR><LF>"},
    {ehlo, "rset", "250 2.0.0 Ok"},
    {ehlo, "nOoP", "250 2.0.0 Ok"},
    {ehlo, "quit", "221 2.0.0 Bye"},
    {ehlo, "starttls", "502 5.5.1 Command not implemented"},
};

// enter - a session brought into `state`; its setup must not have been refused.
void enter(Session& s, const State& state) {
  for (const std::string& command : state.setup) {
    std::string reply = s.line(command);
    INFO("setup: ", command, " -> ", printable(reply));
    REQUIRE(reply.rfind("250", 0) == 0);
  }
}

} // namespace

TEST_SUITE("protocol") {

  TEST_CASE("RFC 5321 §4.1.4: every command in every state gets its exact reply") {
    for (const Verb& v : verbs) {
      CAPTURE(v.state.name);
      CAPTURE(v.command);
      Session s;
      enter(s, v.state);
      CHECK(printable(s.line(v.command)) == printable(v.reply + "\r\n"));
    }
  }

  TEST_CASE("RFC 5321 §4.1.1.10: QUIT gets 221 and closes; later bytes are ignored") {
    Session s;
    enter(s, rcpt);
    CHECK(s.line("QUIT") == "221 2.0.0 Bye\r\n");
    CHECK(s.closed());
    CHECK(s.send("NOOP\r\nMAIL FROM:<a@b.test>\r\n") == "");
    CHECK_FALSE(s.protocol.has_output());
    CHECK(s.protocol.envelope().to.empty());
  }

  TEST_CASE("RFC 5321 §4.1.1.5: RSET gets 250 and resets the transaction, not the session") {
    Session s;
    enter(s, rcpt);
    script(s,
           {"C: RSET", "S: 250 2.0.0 Ok", "C: RCPT TO:<c@d.test>", "S: 503 5.5.1 Need MAIL command",
            "C: DATA", "S: 503 5.5.1 Need MAIL command", "C: MAIL FROM:<x@y.test>",
            "S: 250 2.1.0 Ok", "C: RCPT TO:<e@f.test>", "S: 250 2.1.5 Ok"});
    CHECK(s.protocol.session().helo == "client.test");
    CHECK(s.protocol.envelope().from == "x@y.test");
    CHECK(s.protocol.envelope().to == std::vector<std::string>{"e@f.test"});
  }

  TEST_CASE("RFC 5321 §3.3: DATA without an accepted recipient, after refusals, gets 554") {
    smtpd::Options o;
    o.on_rcpt = [](const smtpd::SessionInfo&, const std::string&,
                   const smtpd::Params&) -> std::optional<smtpd::Reply> {
      return smtpd::Reply{550, "5.1.1", "No such user"};
    };
    Session s(o);
    enter(s, mail);
    script(s, {"C: RCPT TO:<c@d.test>", "S: 550 5.1.1 No such user", "C: DATA",
               "S: 554 5.5.1 No valid recipients"});
  }

  // =============================================================================================
  // MAIL and RCPT parameters, the basics (RFC 1869 §4.2, RFC 1870; tables in parse_test.cpp)
  // =============================================================================================

  TEST_CASE("RFC 1870: SIZE is checked at MAIL; over the limit gets 552 5.3.4") {
    smtpd::Options o;
    o.max_message_bytes = 1000;

    struct Row {
      const char* mail;
      const char* reply;
    };

    const Row rows[] = {
        {"MAIL FROM:<a@b.test> SIZE=1001",
         "552 5.3.4 Message size exceeds fixed maximum message size"},
        {"MAIL FROM:<a@b.test> SIZE=99999999999999999999", // 20 digits, past 64 bits
         "552 5.3.4 Message size exceeds fixed maximum message size"},
        {"MAIL FROM:<a@b.test> SIZE=1000", "250 2.1.0 Ok"},
        {"MAIL FROM:<a@b.test> SIZE=0", "250 2.1.0 Ok"},
        {"MAIL FROM:<a@b.test> size=10", "250 2.1.0 Ok"},
        {"MAIL FROM:<a@b.test> Size=10 body=8bitmime", "250 2.1.0 Ok"},
        {"MAIL FROM:<a@b.test> SIZE=ten", "501 5.5.4 Bad SIZE parameter"},
        {"MAIL FROM:<a@b.test> SIZE=100000000000000000000", "501 5.5.4 Bad SIZE parameter"},
        {"MAIL FROM:<a@b.test> FOO=bar", "555 5.5.4 Unsupported MAIL/RCPT parameter"},
        {"MAIL FROM:<a@b.test> SIZE=10 FOO", "555 5.5.4 Unsupported MAIL/RCPT parameter"},
    };
    for (const Row& row : rows) {
      CAPTURE(row.mail);
      Session s(o);
      s.line(ehlo_client);
      CHECK(s.line(row.mail) == row.reply + "\r\n"s);
      // A refused MAIL opens no transaction.
      bool accepted = row.reply[0] == '2';
      CHECK(s.line("RCPT TO:<c@d.test>") ==
            (accepted ? "250 2.1.5 Ok\r\n" : "503 5.5.1 Need MAIL command\r\n"));
    }
  }

  TEST_CASE("RFC 1869 §4.2: a HELO session may use no MAIL parameter at all: 555") {
    for (const char* param : {"SIZE=10", "BODY=8BITMIME", "SMTPUTF8", "FOO=bar"}) {
      CAPTURE(param);
      Session s;
      s.line(helo_client);
      CHECK(s.line("MAIL FROM:<a@b.test> "s + param) == "555 Unsupported MAIL/RCPT parameter\r\n");
      CHECK(s.line("MAIL FROM:<a@b.test>") == "250 Ok\r\n");
    }
  }

  TEST_CASE("RFC 5321 §4.1.1.3: RCPT parameters are not supported: 555, nothing added") {
    Session s;
    enter(s, mail);
    script(s, {"C: RCPT TO:<c@d.test> NOTIFY=NEVER", "S: 555 5.5.4 Unsupported MAIL/RCPT parameter",
               "C: RCPT TO:<c@d.test> ORCPT=rfc822;c@d.test",
               "S: 555 5.5.4 Unsupported MAIL/RCPT parameter", "C: DATA",
               "S: 554 5.5.1 No valid recipients"});
    CHECK(s.protocol.envelope().to.empty());
  }

  // =============================================================================================
  // Limits: recipients, line length, bare CR and LF, the error limit (RFC 5321 §4.5.3, §2.3.8)
  // =============================================================================================

  TEST_CASE("RFC 5321 §4.5.3.1.10: past max_recipients RCPT gets 452 4.5.3") {
    smtpd::Options o;
    o.max_recipients = 3;
    Session s(o);
    enter(s, mail);
    script(s, {"C: RCPT TO:<r1@d.test>", "S: 250 2.1.5 Ok", "C: RCPT TO:<r2@d.test>",
               "S: 250 2.1.5 Ok", "C: RCPT TO:<r3@d.test>", "S: 250 2.1.5 Ok",
               "C: RCPT TO:<r4@d.test>", "S: 452 4.5.3 Too many recipients",
               "C: RCPT TO:<r5@d.test>", "S: 452 4.5.3 Too many recipients", "C: DATA",
               "S: 354 End data with <CR><LF>.<CR><LF>"});
    CHECK(s.protocol.envelope().to ==
          std::vector<std::string>{"r1@d.test", "r2@d.test", "r3@d.test"});
  }

  TEST_CASE("RFC 5321 §4.5.3.1.10: refused recipients do not count towards max_recipients") {
    smtpd::Options o;
    o.max_recipients = 2;
    o.on_rcpt = [](const smtpd::SessionInfo&, const std::string& to,
                   const smtpd::Params&) -> std::optional<smtpd::Reply> {
      if (to.rfind("bad", 0) == 0) return smtpd::Reply{550, "5.1.1", "No such user"};
      return std::nullopt;
    };
    Session s(o);
    enter(s, mail);
    script(s, {"C: RCPT TO:<bad1@d.test>", "S: 550 5.1.1 No such user", "C: RCPT TO:<bad2@d.test>",
               "S: 550 5.1.1 No such user", "C: RCPT TO:<r1@d.test>", "S: 250 2.1.5 Ok",
               "C: RCPT TO:<r2@d.test>", "S: 250 2.1.5 Ok", "C: RCPT TO:<r3@d.test>",
               "S: 452 4.5.3 Too many recipients"});
  }

} // TEST_SUITE("protocol")

namespace {

// padded_noop - a NOOP command line of exactly `octets` octets, CRLF included.
std::string padded_noop(std::size_t octets) {
  std::string line = "NOOP ";
  line += std::string(octets - line.size() - 2, 'x');
  return line + "\r\n";
}

// feed_pieces - `bytes` fed in reads of `piece` octets; all the replies.
std::string feed_pieces(Session& s, const std::string& bytes, std::size_t piece) {
  std::string out;
  for (std::size_t at = 0; at < bytes.size(); at += piece)
    out += s.send(bytes.substr(at, piece));
  return out;
}

const std::string too_long = "500 5.5.2 Line too long\r\n";
const std::string bare_lf =
    "500 5.5.2 Bare <LF> received; command lines must end with <CR><LF>\r\n";
const std::string bare_cr = "500 5.5.2 Bare <CR> received in command line\r\n";

} // namespace

TEST_SUITE("protocol") {

  TEST_CASE("RFC 5321 §4.5.3.1.4: a command line of 512 octets with CRLF is accepted, 513 is not") {
    REQUIRE(padded_noop(512).size() == 512);
    for (std::size_t piece :
         {std::size_t(100000), std::size_t(1), std::size_t(7), std::size_t(511)}) {
      CAPTURE(piece);
      Session s;
      s.line(ehlo_client);
      CHECK(feed_pieces(s, padded_noop(512), piece) == "250 2.0.0 Ok\r\n");
      CHECK(feed_pieces(s, padded_noop(513), piece) == too_long);
      CHECK(feed_pieces(s, padded_noop(514), piece) == too_long);
      CHECK(feed_pieces(s, padded_noop(2000), piece) == too_long);
      CHECK(s.line("NOOP") == "250 2.0.0 Ok\r\n");
    }
  }

  TEST_CASE(
      "RFC 5321 §4.5.3.1.4: a 100 KB line without CRLF gets one 500, then the session works") {
    Session s;
    s.line(ehlo_client);
    std::string out = feed_pieces(s, std::string(100 * 1024, 'A'), 1024);
    CHECK(out == too_long);
    CHECK_FALSE(s.closed());
    CHECK_FALSE(s.protocol.idle());                 // still discarding up to the next CRLF
    CHECK(s.send("tail of the long line\r") == ""); // CRLF split between reads
    CHECK(s.send("\n") == "");
    CHECK(s.protocol.idle());
    script(s, {"C: MAIL FROM:<a@b.test>", "S: 250 2.1.0 Ok"});
  }

  TEST_CASE("RFC 5321 §2.3.8: a bare LF ends nothing: 500, and the rest up to CRLF is discarded") {
    Session s;
    s.line(ehlo_client);
    CHECK(s.send("MAIL FROM:<a@b.test>\nRCPT TO:<c@d.test>\r\n") == bare_lf);
    CHECK(s.protocol.envelope().from.empty());
    // Neither command ran: there is no transaction to add a recipient to.
    script(s, {"C: RCPT TO:<c@d.test>", "S: 503 5.5.1 Need MAIL command"});
    // Split anywhere, the same.
    std::string input = "MAIL FROM:<a@b.test>\nRCPT TO:<c@d.test>\r\nNOOP\r\n";
    for (std::size_t at = 0; at <= input.size(); ++at) {
      CAPTURE(at);
      Session t;
      t.line(ehlo_client);
      std::string out = t.send(input.substr(0, at));
      out += t.send(input.substr(at));
      CHECK(out == bare_lf + "250 2.0.0 Ok\r\n");
    }
  }

  TEST_CASE("RFC 5321 §2.3.8: a line of only LF, and LF after a split CR, are bare LFs too") {
    Session s;
    s.line(ehlo_client);
    CHECK(s.send("\n") == bare_lf);
    CHECK(s.send("NOOP\r\n") == ""); // the rest of the refused line
    CHECK(s.send("NOOP\r\n") == "250 2.0.0 Ok\r\n");
    CHECK(s.send("NOOP") == "");
    CHECK(s.send("\n") == bare_lf);
    CHECK(s.send("\r\n") == "");
    CHECK(s.send("NOOP\r") == "");
    CHECK(s.send("\n") == "250 2.0.0 Ok\r\n");
  }

  TEST_CASE("RFC 5321 §2.3.8: a bare CR inside a command line gets 500") {
    Session s;
    s.line(ehlo_client);
    CHECK(s.send("MAIL FROM:<a@b.test>\rRCPT TO:<c@d.test>\r\n") == bare_cr);
    CHECK(s.send("NOOP\r\r\n") == bare_cr);
    CHECK(s.send("\rNOOP\r\n") == bare_cr);
    CHECK(s.protocol.envelope().from.empty());
    CHECK(s.line("NOOP") == "250 2.0.0 Ok\r\n");
  }

  TEST_CASE("RFC 5321 §2.3.8: a bare CR is found wherever the reads are split") {
    const std::string input = "MAIL FROM:<a@b.test>\rX\r\nNOOP\r\n";
    for (std::size_t at = 0; at <= input.size(); ++at) {
      CAPTURE(at);
      Session s;
      s.line(ehlo_client);
      std::string out = s.send(input.substr(0, at));
      out += s.send(input.substr(at));
      CHECK(out == bare_cr + "250 2.0.0 Ok\r\n");
      CHECK(s.protocol.envelope().from.empty());
    }
  }

  TEST_CASE("Postfix hard_error_limit: after 3 errors 421 4.7.0 and close; later bytes ignored") {
    smtpd::Options o;
    o.hard_error_limit = 3;
    Session s(o);
    s.line(ehlo_client);
    script(s, {"C: FOO", "S: 500 5.5.2 Command not recognized", "C: NOOP",
               "S: 250 2.0.0 Ok", // successes do not reset the count
               "C: RCPT TO:<c@d.test>", "S: 503 5.5.1 Need MAIL command", "C: VRFY",
               "S: 501 5.5.4 Syntax: VRFY address",
               "S: 421 4.7.0 Too many errors, closing connection"});
    CHECK(s.closed());
    CHECK(s.send("NOOP\r\nQUIT\r\n") == "");
    CHECK_FALSE(s.protocol.has_output());
  }

  TEST_CASE("Postfix hard_error_limit: a pipelined burst stops at the limit, before EHLO too") {
    smtpd::Options o;
    o.hard_error_limit = 3;
    o.reject_unauthorized_pipelining = false; // this burst comes before EHLO on purpose
    Session s(o);
    CHECK(s.send("A\r\nB\r\n\nC\r\nNOOP\r\nD\r\n") ==
          "500 Command not recognized\r\n500 Command not recognized\r\n" + bare_lf.substr(0, 4) +
              bare_lf.substr(10) + "421 Too many errors, closing connection\r\n");
    CHECK(s.closed());
  }

  TEST_CASE("Postfix hard_error_limit: over-long lines count as errors") {
    smtpd::Options o;
    o.hard_error_limit = 2;
    Session s(o);
    s.line(ehlo_client);
    CHECK(feed_pieces(s, std::string(3000, 'x'), 1000) == too_long);
    CHECK(s.send("\r\n") == "");
    CHECK(feed_pieces(s, std::string(3000, 'x'), 1000) ==
          too_long + "421 4.7.0 Too many errors, closing connection\r\n");
    CHECK(s.closed());
  }

  // =============================================================================================
  // Hooks: on_connect, on_helo, on_mail, on_rcpt and how their replies are checked
  // =============================================================================================

} // TEST_SUITE("protocol")

namespace {

using Hook = std::optional<smtpd::Reply>;

// reply_from - a hook that answers `r`, by returning it or by throwing it.
template <class... Args> auto reply_from(smtpd::Reply r, bool thrown) {
  return [r, thrown](const Args&...) -> Hook {
    if (thrown) throw r;
    return r;
  };
}

// mail_hook_options - Options whose on_mail answers `r` (returned or thrown).
smtpd::Options mail_hook_options(const smtpd::Reply& r, bool thrown) {
  smtpd::Options o;
  o.on_mail = reply_from<smtpd::SessionInfo, std::string, smtpd::Params>(r, thrown);
  return o;
}

} // namespace

TEST_SUITE("protocol") {

  TEST_CASE("RFC 5321 §3.8: on_connect answering 4xx sends 421 with its text and closes") {
    for (bool thrown : {false, true}) {
      CAPTURE(thrown);
      smtpd::Options o;
      o.on_connect =
          reply_from<smtpd::SessionInfo>({450, "4.7.1", "Busy, come back later"}, thrown);
      Session s(o);
      CHECK(s.greeting == "421 Busy, come back later\r\n");
      CHECK(s.closed());
      CHECK(s.send("EHLO client.test\r\nQUIT\r\n") == "");
    }
  }

  TEST_CASE("RFC 5321 §3.1: on_connect answering 5xx greets with 554, then only QUIT works") {
    for (bool thrown : {false, true}) {
      CAPTURE(thrown);
      smtpd::Options o;
      o.on_connect = reply_from<smtpd::SessionInfo>({550, "5.7.1", "Go away"}, thrown);
      Session s(o);
      script(s,
             {"S: 554 Go away", "C: EHLO client.test", "S: 503 Service refused, only QUIT allowed",
              "C: MAIL FROM:<a@b.test>", "S: 503 Service refused, only QUIT allowed", "C: NOOP",
              "S: 503 Service refused, only QUIT allowed", "C: QUIT", "S: 221 Bye"});
      CHECK(s.closed());
      CHECK_FALSE(s.protocol.session().esmtp);
    }
  }

  TEST_CASE("RFC 5321 §3.1: a refused session still closes at the error limit") {
    smtpd::Options o;
    o.hard_error_limit = 2;
    o.on_connect = reply_from<smtpd::SessionInfo>({554, "5.7.1", "No"}, false);
    o.reject_unauthorized_pipelining = false; // a burst before EHLO on purpose
    Session s(o);
    CHECK(s.send("NOOP\r\nNOOP\r\nNOOP\r\n") ==
          "503 Service refused, only QUIT allowed\r\n503 Service refused, only QUIT allowed\r\n"
          "421 Too many errors, closing connection\r\n");
    CHECK(s.closed());
  }

  TEST_CASE("RFC 5321 §4.1.1.1: on_helo refusing leaves the session without HELO") {
    for (bool thrown : {false, true}) {
      CAPTURE(thrown);
      smtpd::Options o;
      o.on_helo = reply_from<smtpd::SessionInfo, std::string>({550, "5.7.1", "Not you"}, thrown);
      Session s(o);
      // EHLO was refused, so no enhanced codes were negotiated.
      script(s, {"C: EHLO client.test", "S: 550 Not you", "C: MAIL FROM:<a@b.test>",
                 "S: 503 Send HELO/EHLO first", "C: HELO client.test", "S: 550 Not you"});
      CHECK(s.protocol.session().helo.empty());
      CHECK_FALSE(s.protocol.session().esmtp);
    }
  }

  TEST_CASE("RFC 5321 §4.1.1.2: on_mail refusing opens no transaction") {
    for (bool thrown : {false, true}) {
      CAPTURE(thrown);
      Session s(mail_hook_options({550, "5.7.1", "Sender blocked"}, thrown));
      s.line(ehlo_client);
      script(s, {"C: MAIL FROM:<a@b.test>", "S: 550 5.7.1 Sender blocked", "C: RCPT TO:<c@d.test>",
                 "S: 503 5.5.1 Need MAIL command"});
      Session t(mail_hook_options({451, "4.7.1", "Greylisted"}, thrown));
      t.line(ehlo_client);
      script(t, {"C: MAIL FROM:<a@b.test>", "S: 451 4.7.1 Greylisted"});
    }
  }

  TEST_CASE("RFC 5321 §4.1.1.3: on_rcpt refusing adds no recipient") {
    for (bool thrown : {false, true}) {
      CAPTURE(thrown);
      smtpd::Options o;
      o.on_rcpt = reply_from<smtpd::SessionInfo, std::string, smtpd::Params>(
          {550, "5.1.1", "No such user here"}, thrown);
      Session s(o);
      enter(s, mail);
      script(s, {"C: RCPT TO:<c@d.test>", "S: 550 5.1.1 No such user here", "C: DATA",
                 "S: 554 5.5.1 No valid recipients"});
      CHECK(s.protocol.envelope().to.empty());
      CHECK(s.protocol.envelope().from == "a@b.test");
    }
  }

  TEST_CASE("RFC 5321 §4.2: a hook's 2xx reply accepts with its own text") {
    smtpd::Options o;
    o.on_mail = reply_from<smtpd::SessionInfo, std::string, smtpd::Params>(
        {250, "2.1.0", "Sender looks fine"}, false);
    o.on_rcpt = reply_from<smtpd::SessionInfo, std::string, smtpd::Params>(
        {251, "2.1.5", "User not local; will forward"}, false);
    Session s(o);
    s.line(ehlo_client);
    script(s, {"C: MAIL FROM:<a@b.test>", "S: 250 2.1.0 Sender looks fine", "C: RCPT TO:<c@d.test>",
               "S: 251 2.1.5 User not local; will forward", "C: DATA",
               "S: 354 End data with <CR><LF>.<CR><LF>"});
    CHECK(s.protocol.envelope().to == std::vector<std::string>{"c@d.test"});
  }

  TEST_CASE(
      "hooks: an exception that is not a Reply becomes 451 4.3.0, logged; the session goes on") {
    std::vector<std::string> errors;
    int calls = 0;
    smtpd::Options o;
    o.log_error = [&](std::string_view m) { errors.emplace_back(m); };
    o.on_mail = [&](const smtpd::SessionInfo&, const std::string&, const smtpd::Params&) -> Hook {
      if (++calls == 1) throw std::runtime_error("database down");
      if (calls == 2) throw 42;
      return std::nullopt;
    };
    Session s(o);
    s.line(ehlo_client);
    script(s, {"C: MAIL FROM:<a@b.test>", "S: 451 4.3.0 Local error in processing, try again later",
               "C: MAIL FROM:<a@b.test>", "S: 451 4.3.0 Local error in processing, try again later",
               "C: MAIL FROM:<a@b.test>", "S: 250 2.1.0 Ok"});
    CHECK_FALSE(s.closed());
    REQUIRE(errors.size() == 2);
    CHECK(errors[0].find("on_mail") != std::string::npos);
    CHECK(errors[0].find("database down") != std::string::npos);
    CHECK(errors[1].find("on_mail") != std::string::npos);
  }

  TEST_CASE("RFC 5321 §3.3: DATA after every RCPT was refused gets 554 5.5.1, not 503") {
    smtpd::Options o;
    o.on_rcpt = [](const smtpd::SessionInfo&, const std::string& to, const smtpd::Params&) -> Hook {
      if (to == "good@d.test") return std::nullopt;
      return smtpd::Reply{550, "5.1.1", "No such user here"};
    };
    Session s(o);
    enter(s, mail);
    // Pipelined (RFC 2920): the client learns from DATA's reply why there is no 354.
    CHECK(s.send("RCPT TO:<c@d.test>\r\nRCPT TO:<bad syntax>\r\nDATA\r\n") ==
          "550 5.1.1 No such user here\r\n501 5.1.3 Bad recipient address syntax\r\n"
          "554 5.5.1 No valid recipients\r\n");
    // The transaction stays open: a good recipient makes DATA work.
    script(s, {"C: RCPT TO:<good@d.test>", "S: 250 2.1.5 Ok", "C: DATA",
               "S: 354 End data with <CR><LF>.<CR><LF>"});
    // No MAIL, or MAIL but no RCPT tried at all: still 503 (a bad sequence of commands).
    Session t(o);
    t.line(ehlo_client);
    script(t, {"C: DATA", "S: 503 5.5.1 Need MAIL command", "C: MAIL FROM:<a@b.test>",
               "S: 250 2.1.0 Ok", "C: DATA", "S: 503 5.5.1 Need RCPT command",
               "C: RCPT TO:<c@d.test>", "S: 550 5.1.1 No such user here", "C: RSET",
               "S: 250 2.0.0 Ok", "C: MAIL FROM:<a@b.test>", "S: 250 2.1.0 Ok", "C: DATA",
               "S: 503 5.5.1 Need RCPT command"});
  }

  TEST_CASE("hooks: on_connect throwing std::runtime_error closes with 421, logged") {
    std::vector<std::string> errors;
    smtpd::Options o;
    o.log_error = [&](std::string_view m) { errors.emplace_back(m); };
    o.on_connect = [](const smtpd::SessionInfo&) -> Hook { throw std::runtime_error("boom"); };
    Session s(o);
    CHECK(s.greeting == "421 Local error in processing, try again later\r\n");
    CHECK(s.closed());
    CHECK(errors.size() == 1);
  }

} // TEST_SUITE("protocol")

namespace {

const smtpd::Reply going_down{421, "4.3.2", "Going down for maintenance"};

// ClosingSink - a MessageSink whose write() or finish() answers 421.
class ClosingSink : public smtpd::MessageSink {
public:
  explicit ClosingSink(bool in_write) : in_write_(in_write) {}

  void write(std::string_view) override {
    if (in_write_) throw going_down;
  }

  std::optional<smtpd::Reply> finish() override { return going_down; }

private:
  bool in_write_;
};

// Stage421 - where user code answers 421, and the client input that reaches that point.
struct Stage421 {
  const char* name;
  std::function<void(smtpd::Options&)> set_up;
  std::string input;
};

const std::string plain_alice_pw = "AGFsaWNlAHB3"; // base64 of "\0alice\0pw" (RFC 4616)
const std::string transaction = "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n";
const std::string message = transaction + "DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n";

std::vector<Stage421> stages_421() {
  using smtpd::Envelope;
  using smtpd::Params;
  using smtpd::SessionInfo;
  auto thrown = [](auto&&...) -> Hook { throw going_down; };
  auto returned = [](auto&&...) -> Hook { return going_down; };
  return {
      {"on_helo returns", [=](smtpd::Options& o) { o.on_helo = returned; }, "EHLO c.test\r\n"},
      {"on_mail throws", [=](smtpd::Options& o) { o.on_mail = thrown; }, transaction},
      {"on_rcpt returns", [=](smtpd::Options& o) { o.on_rcpt = returned; }, transaction},
      {"stream_handler throws at DATA",
       [](smtpd::Options& o) {
         o.stream_handler = [](const SessionInfo&,
                               const Envelope&) -> std::unique_ptr<smtpd::MessageSink> {
           throw going_down;
         };
       },
       transaction + "DATA\r\n"},
      {"handler throws after the dot",
       [](smtpd::Options& o) {
         o.handler = [](const smtpd::Peer&, const std::string&, const std::vector<std::string>&,
                        const std::string&) { throw going_down; };
       },
       message},
      {"message_handler returns after the dot",
       [=](smtpd::Options& o) { o.message_handler = returned; }, message},
      {"sink write throws",
       [](smtpd::Options& o) {
         o.stream_handler = [](const SessionInfo&, const Envelope&) {
           return std::make_unique<ClosingSink>(true);
         };
       },
       message},
      {"sink finish returns",
       [](smtpd::Options& o) {
         o.stream_handler = [](const SessionInfo&, const Envelope&) {
           return std::make_unique<ClosingSink>(false);
         };
       },
       message},
      {"on_auth throws during AUTH",
       [](smtpd::Options& o) {
         o.auth_insecure = true;
         o.on_auth = [](const SessionInfo&, const std::string&, const std::string&,
                        const std::string&, const std::string&) -> bool { throw going_down; };
       },
       "EHLO c.test\r\nAUTH PLAIN " + plain_alice_pw + "\r\n"},
      {"auth_secret throws during AUTH",
       [](smtpd::Options& o) {
         o.auth_secret = [](const SessionInfo&, const std::string&) -> std::optional<std::string> {
           throw going_down;
         };
       },
       "EHLO c.test\r\nAUTH CRAM-MD5\r\nYWxpY2UgMDA=\r\n"},
  };
}

} // namespace

TEST_SUITE("protocol") {

  TEST_CASE("RFC 5321 §3.8: a 421 from user code at any stage is sent, then the channel closes") {
    for (const Stage421& stage : stages_421()) {
      CAPTURE(stage.name);
      smtpd::Options o;
      stage.set_up(o);
      Session s(o);
      std::string replies = s.send(stage.input);
      // The last reply is the 421 (with its enhanced code once EHLO negotiated them).
      std::size_t last =
          replies.rfind("\r\n", replies.size() - std::min<std::size_t>(replies.size(), 3));
      std::string last_line = replies.substr(last == std::string::npos ? 0 : last + 2);
      CHECK((last_line == "421 4.3.2 Going down for maintenance\r\n" ||
             last_line == "421 Going down for maintenance\r\n"));
      CHECK(s.closed());
      CHECK(s.send("NOOP\r\n") == ""); // nothing more is read
    }
  }

  TEST_CASE("RFC 5321 §3.8: other 4xx replies from user code leave the session open") {
    smtpd::Options o;
    o.on_rcpt = reply_from<smtpd::SessionInfo, std::string, smtpd::Params>(
        {450, "4.2.0", "Greylisted, try again later"}, true);
    Session s(o);
    CHECK(s.send(transaction) == crlf_lines(ehlo_reply_lines) +
                                     "250 2.1.0 Ok\r\n450 4.2.0 Greylisted, try again later\r\n");
    CHECK_FALSE(s.closed());
    CHECK(s.line("NOOP") == "250 2.0.0 Ok\r\n");
  }

} // TEST_SUITE("protocol")

namespace {

// Checked - a Reply a hook gave and the exact lines that go out for it after EHLO.
struct Checked {
  smtpd::Reply given;
  std::string sent;
};

const std::string local_error = "451 4.3.0 Local error in processing, try again later";

const std::vector<Checked> checked_replies = {
    // RFC 5321 §4.2: only 2yz, 4yz and 5yz may refuse or accept; 3yz, 1yz and nonsense are ours
    // to replace with 451.
    {{600, "5.0.0", "No"}, local_error},
    {{354, "", "Go ahead"}, local_error},
    {{100, "1.0.0", "Hm"}, local_error},
    {{199, "", "Hm"}, local_error},
    {{0, "", ""}, local_error},
    {{-550, "5.7.1", "No"}, local_error},
    {{1000, "5.7.1", "No"}, local_error},
    // RFC 5321 §4.2.1: several lines, "550-" for all but the last.
    {{550, "5.7.1", "a\nb"}, "550-5.7.1 a\r\n550 5.7.1 b"},
    {{550, "5.7.1", "one\ntwo\nthree"}, "550-5.7.1 one\r\n550-5.7.1 two\r\n550 5.7.1 three"},
    {{550, "5.7.1", "trailing newlines\n\n"}, "550 5.7.1 trailing newlines"},
    // RFC 3463 / RFC 2034: an enhanced code that is malformed or of another class: X.0.0.
    {{550, "9.9.9", "No"}, "550 5.0.0 No"},
    {{550, "", "No"}, "550 5.0.0 No"},
    {{550, "4.7.1", "No"}, "550 5.0.0 No"},
    {{450, "5.7.1", "Later"}, "450 4.0.0 Later"},
    {{550, "5.7", "No"}, "550 5.0.0 No"},
    {{550, "5.7.1 extra", "No"}, "550 5.0.0 No"},
    {{550, "5.1000.1", "No"}, "550 5.0.0 No"},
    {{550, "5.7.1\r\n", "No"}, "550 5.0.0 No"},
    {{550, "5.999.999", "No"}, "550 5.999.999 No"},
    // Control characters are removed (CR, tab, DEL, NUL...); only "\n" separates lines.
    {{550, "5.7.1",
      "a\x01"
      "b\tc\x7f"
      "d\r"},
     "550 5.7.1 abcd"},
    {{550, "5.7.1", "evil\r\n250 2.0.0 Ok"}, "550-5.7.1 evil\r\n550 5.7.1 250 2.0.0 Ok"},
    {{550, "5.7.1", std::string("nul\0byte", 8)}, "550 5.7.1 nulbyte"},
    // Text left empty gets a default for its class.
    {{550, "5.7.1", ""}, "550 5.7.1 Rejected"},
    {{550, "5.7.1", "\x01\n"}, "550 5.7.1 Rejected"},
    {{450, "4.7.1", ""}, "450 4.7.1 Try again later"},
    {{250, "2.1.0", ""}, "250 2.1.0 Ok"},
    // Text is copied, never a format string.
    {{550, "5.7.1", "%s%n%x {}"}, "550 5.7.1 %s%n%x {}"},
};

} // namespace

TEST_SUITE("protocol") {

  TEST_CASE("RFC 5321 §4.2 / RFC 3463: a hook's reply is checked before it goes out") {
    for (const Checked& c : checked_replies) {
      for (bool thrown : {false, true}) {
        CAPTURE(c.given.code);
        CAPTURE(printable(c.given.enhanced));
        CAPTURE(printable(c.given.text));
        CAPTURE(thrown);
        std::vector<std::string> errors;
        smtpd::Options o = mail_hook_options(c.given, thrown);
        o.log_error = [&](std::string_view m) { errors.emplace_back(m); };
        Session s(o);
        s.line(ehlo_client);
        CHECK(printable(s.line("MAIL FROM:<a@b.test>")) == printable(c.sent + "\r\n"));
        // An invalid code is the program's mistake: it is logged.
        CHECK(errors.size() == (c.sent == local_error ? 1u : 0u));
        CHECK_FALSE(s.closed());
      }
    }
  }

  TEST_CASE("RFC 5321 §4.5.3.1.5: a long hook text is cut to a 512-octet reply line") {
    Session s(mail_hook_options({550, "5.7.1", std::string(2000, 'x')}, false));
    s.line(ehlo_client);
    std::string out = s.line("MAIL FROM:<a@b.test>");
    CHECK(out.size() == 512);
    CHECK(out.rfind("550 5.7.1 xxx", 0) == 0);
    CHECK(out.substr(out.size() - 3) == "x\r\n");
    CHECK(out.find('\r') == 510);
  }

  TEST_CASE("hooks: they see the SessionInfo as the client made it so far") {
    std::vector<std::string> seen;
    smtpd::Options o;
    o.on_connect = [&](const smtpd::SessionInfo& si) -> Hook {
      seen.push_back("connect " + si.peer.ip + " " + std::to_string(si.peer.port) + " [" + si.helo +
                     "] " + std::to_string(si.esmtp));
      return std::nullopt;
    };
    o.on_helo = [&](const smtpd::SessionInfo& si, const std::string& name) -> Hook {
      seen.push_back("helo " + name + " [" + si.helo + "] " + std::to_string(si.esmtp));
      return std::nullopt;
    };
    o.on_mail = [&](const smtpd::SessionInfo& si, const std::string& from,
                    const smtpd::Params&) -> Hook {
      seen.push_back("mail " + from + " [" + si.helo + "] " + std::to_string(si.esmtp) + " " +
                     si.peer.ip);
      return std::nullopt;
    };
    o.on_rcpt = [&](const smtpd::SessionInfo& si, const std::string& to,
                    const smtpd::Params& params) -> Hook {
      seen.push_back("rcpt " + to + " [" + si.helo + "] " + std::to_string(params.size()));
      return std::nullopt;
    };
    o.reject_unauthorized_pipelining = false; // the HELO part is pipelined on purpose
    Session s(o);
    s.send("EHLO first.test\r\nHELO second.test\r\nMAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\n"
           "EHLO third.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n");
    CHECK(seen == std::vector<std::string>{
                      "connect 192.0.2.1 4321 [] 0",
                      "helo first.test [] 0",
                      "helo second.test [first.test] 1",
                      "mail  [second.test] 0 192.0.2.1",
                      "rcpt Postmaster [second.test] 0",
                      "helo third.test [second.test] 0",
                      "mail a@b.test [third.test] 1 192.0.2.1",
                      "rcpt c@d.test [third.test] 0",
                  });
  }

  TEST_CASE("RFC 1869: on_mail sees the parameters in order, keywords upper-cased") {
    smtpd::Params got;
    std::string from;
    smtpd::Options o;
    o.on_mail = [&](const smtpd::SessionInfo&, const std::string& f,
                    const smtpd::Params& params) -> Hook {
      from = f;
      got = params;
      return std::nullopt;
    };
    Session s(o);
    s.line(ehlo_client);
    CHECK(s.line("MAIL FROM:<a@b.test> size=10 Body=8BITMIME smtputf8") == "250 2.1.0 Ok\r\n");
    CHECK(from == "a@b.test");
    CHECK(got == smtpd::Params{{"SIZE", "10"}, {"BODY", "8BITMIME"}, {"SMTPUTF8", ""}});
    CHECK(s.protocol.envelope().mail_params == got);
    CHECK(s.protocol.envelope().smtputf8);
    CHECK(s.protocol.envelope().body_8bit);
  }

  TEST_CASE("hooks: a refused hook is not consulted for commands refused before it") {
    int mails = 0, rcpts = 0;
    smtpd::Options o;
    o.on_mail = [&](const smtpd::SessionInfo&, const std::string&, const smtpd::Params&) -> Hook {
      ++mails;
      return std::nullopt;
    };
    o.on_rcpt = [&](const smtpd::SessionInfo&, const std::string&, const smtpd::Params&) -> Hook {
      ++rcpts;
      return std::nullopt;
    };
    o.max_recipients = 1;
    o.reject_unauthorized_pipelining = false; // MAIL before EHLO in the same burst on purpose
    Session s(o);
    s.send("MAIL FROM:<a@b.test>\r\nEHLO client.test\r\nRCPT TO:<c@d.test>\r\n"
           "MAIL FROM:<a@b.test> FOO=1\r\nMAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\n"
           "RCPT TO:<c@d.test> X=1\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<e@f.test>\r\n");
    CHECK(mails == 1);
    CHECK(rcpts == 1);
  }

  // =============================================================================================
  // Logging: log_read and log_write get every line, without CRLF
  // =============================================================================================

  TEST_CASE("log hooks: log_read gets each command, log_write each reply line, without CRLF") {
    std::vector<std::string> read, written;
    smtpd::Options o;
    o.log_read = [&](const smtpd::Peer& peer, std::string_view l) {
      CHECK(peer.ip == "192.0.2.1");
      read.emplace_back(l);
    };
    o.log_write = [&](const smtpd::Peer& peer, std::string_view l) {
      CHECK(peer.port == 4321);
      written.emplace_back(l);
    };
    Session s(o);
    s.send("EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nhelp\r\nFOO\r\nQUIT\r\n");
    CHECK(read == std::vector<std::string>{"EHLO client.test", "MAIL FROM:<a@b.test>", "help",
                                           "FOO", "QUIT"});
    std::vector<std::string> expected = {greeting_line};
    expected.insert(expected.end(), ehlo_reply_lines.begin(), ehlo_reply_lines.end());
    for (const char* l :
         {"250 2.1.0 Ok",
          "214-2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
          "214 2.0.0 See RFC 5321", "500 5.5.2 Command not recognized", "221 2.0.0 Bye"})
      expected.emplace_back(l);
    CHECK(written == expected);
  }

  TEST_CASE("log hooks: closing replies are logged too") {
    std::vector<std::string> written;
    smtpd::Options o;
    o.hard_error_limit = 1;
    o.log_write = [&](const smtpd::Peer&, std::string_view l) { written.emplace_back(l); };
    Session s(o);
    s.line("FOO");
    CHECK(written == std::vector<std::string>{greeting_line, "500 Command not recognized",
                                              "421 Too many errors, closing connection"});
  }

  // =============================================================================================
  // The Received header (RFC 5321 §4.4), as a handler sees it
  // =============================================================================================

  TEST_CASE("take_output(into): the queued replies replace what `into` held; the queue empties") {
    Session s;
    std::string into = "stale bytes";
    s.protocol.feed("NOOP\r\n"); // one at a time: before EHLO a burst would be refused
    s.protocol.take_output(into);
    CHECK(into == "250 Ok\r\n");
    CHECK_FALSE(s.protocol.has_output());
    s.protocol.take_output(into);
    CHECK(into.empty());
  }

  TEST_CASE("RFC 2920 §3.1: commands pipelined before PIPELINING was advertised: 554, close") {
    Session before_ehlo;
    CHECK(before_ehlo.send("HELO client.test\r\nMAIL FROM:<a@b.test>\r\n") ==
          "250 mx.test\r\n554 Protocol error: commands pipelined before EHLO; closing\r\n");
    CHECK(before_ehlo.closed());
    Session after_ehlo; // EHLO advertised PIPELINING: a burst after it is fine
    CHECK(after_ehlo.send("EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nNOOP\r\n")
              .find("250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n") != std::string::npos);
    CHECK_FALSE(after_ehlo.closed());
    smtpd::Options lenient;
    lenient.reject_unauthorized_pipelining = false;
    Session allowed(lenient);
    CHECK(allowed.send("HELO client.test\r\nNOOP\r\n") == "250 mx.test\r\n250 Ok\r\n");
  }

  TEST_CASE(
      "Postfix smtpd_forbidden_commands: an HTTP request gets 554 and the connection closes") {
    for (const char* request : {"GET / HTTP/1.1", "POST /x HTTP/1.0", "CONNECT a:25 HTTP/1.1"}) {
      CAPTURE(request);
      Session s;
      CHECK(s.line(request) == "554 This is an SMTP server, not a web server; closing\r\n");
      CHECK(s.closed());
    }
  }

  TEST_CASE("Postfix smtpd_junk_command_limit: junk past the limit counts as errors") {
    smtpd::Options o;
    o.junk_command_limit = 2;
    o.hard_error_limit = 2;
    Session s(o);
    s.line(ehlo_client);
    CHECK(s.line("NOOP") == "250 2.0.0 Ok\r\n");
    CHECK(s.line("RSET") == "250 2.0.0 Ok\r\n");
    CHECK(s.line("NOOP") == "250 2.0.0 Ok\r\n"); // the third: one error
    CHECK_FALSE(s.closed());
    CHECK(s.line("HELP").find("421 4.7.0 Too many errors") != std::string::npos);
    CHECK(s.closed());
  }

  TEST_CASE("Postfix smtpd_soft_error_limit: past it every error reply is delayed") {
    smtpd::Options o;
    o.soft_error_limit = 2;
    o.error_delay = std::chrono::milliseconds(250);
    Session s(o);
    s.line(ehlo_client);
    for (int i = 0; i < 2; ++i) {
      s.line("BOGUS");
      CHECK(s.protocol.take_reply_delay().count() == 0);
    }
    s.line("BOGUS");
    CHECK(s.protocol.take_reply_delay().count() == 250);
    CHECK(s.line("NOOP") == "250 2.0.0 Ok\r\n");
    CHECK(s.protocol.take_reply_delay().count() == 0); // successes are not delayed
  }

  TEST_CASE("issue 7: an on_helo hook that throws ends the session with 421") {
    smtpd::Options o;
    o.on_helo = [](const smtpd::SessionInfo&, const std::string&) -> Hook {
      throw std::runtime_error("database down");
    };
    Session s(o);
    CHECK(s.line(ehlo_client) == "421 Local error in processing, closing connection\r\n");
    CHECK(s.closed());
  }

} // TEST_SUITE("protocol")

namespace {

// Received - one message's Received header and the queue id of its 250 reply.
struct Received {
  std::string header; // from "Received: " up to and including the CRLF after the date
  std::string queue_id;
};

// receive - one session: `hello` and `mail`, one recipient, a one-line message. Returns the
// Received header the handler saw, and the id from "250 2.0.0 Ok: queued as ID".
Received receive(smtpd::Options o, smtpd::SessionInfo info, const std::string& hello,
                 const std::string& mail, const std::string& rcpts = "RCPT TO:<c@d.test>\r\n") {
  const std::string content = "Subject: hi\r\n\r\nbody\r\n";
  std::vector<std::string> datas;
  o.handler = [&](const smtpd::Peer&, const std::string&, const std::vector<std::string>&,
                  const std::string& data) { datas.push_back(data); };
  o.reject_unauthorized_pipelining = false; // HELO sessions come in one feed too
  Session s(std::move(o), std::move(info));
  std::string out = s.send(hello + "\r\n" + mail + "\r\n" + rcpts + "DATA\r\n" + content + ".\r\n");
  const std::string marker = "250 2.0.0 Ok: queued as ";
  std::size_t at = out.find(marker);
  if (at == std::string::npos) at = out.find("250 Ok: queued as ");
  INFO("replies: ", printable(out));
  REQUIRE(at != std::string::npos);
  std::size_t id_start = out.find("as ", at) + 3;
  REQUIRE(datas.size() == 1);
  const std::string& data = datas[0];
  REQUIRE(data.size() > content.size());
  CHECK(data.substr(data.size() - content.size()) == content);
  return {data.substr(0, data.size() - content.size()),
          out.substr(id_start, out.find("\r\n", id_start) - id_start)};
}

// The end of the header after "id ": the queue id, "for <rcpt>" when there is one recipient,
// then ";" and an RFC 5322 §3.3 date such as "Sun, 22 Nov 2026 11:00:00 +0000".
const std::regex received_tail("([0-9A-F]{16})(\r\n\tfor <[^<>\r\n]*>)?;\r\n\t"
                               "(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [1-9][0-9]? "
                               "(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
                               "([01][0-9]|2[0-3]):[0-5][0-9]:[0-6][0-9] [+-][0-9]{4}\r\n");

// check_received - `r.header` is `top`, then the tail above with r's queue id and `for_rcpt`.
void check_received(const Received& r, const std::string& top, const std::string& for_rcpt) {
  INFO("header: ", printable(r.header));
  REQUIRE(r.header.size() > top.size());
  CHECK(printable(r.header.substr(0, top.size())) == printable(top));
  std::string tail = r.header.substr(top.size());
  std::smatch m;
  REQUIRE(std::regex_match(tail, m, received_tail));
  CHECK(m[1].str() == r.queue_id);
  CHECK(m[2].str() == for_rcpt);
  // Only our own line breaks: every CR is followed by LF and TAB (or ends the header).
  for (std::size_t i = 0; i < r.header.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(r.header[i]);
    if (c == '\r') {
      CHECK(r.header.compare(i, 2, "\r\n") == 0);
      CHECK((i + 2 == r.header.size() || r.header[i + 2] == '\t'));
    } else if (c != '\n' && c != '\t') {
      CHECK((c >= 0x20 && c < 0x7F));
    }
  }
}

// ReceivedRow - one way of reaching a message and the header start it must get.
struct ReceivedRow {
  const char* what;
  std::string ip, rdns, appname, hello, mail;
  std::string top; // the header up to and including "id "
};

const std::string by_esmtp = "\r\n\tby mx.test (smtpd) with ESMTP id ";

const std::vector<ReceivedRow> received_rows = {
    {"EHLO", "192.0.2.1", "", "", "EHLO client.test", "MAIL FROM:<a@b.test>",
     "Received: from client.test ([192.0.2.1])" + by_esmtp},
    {"HELO: with SMTP", "192.0.2.1", "", "", "HELO client.test", "MAIL FROM:<a@b.test>",
     "Received: from client.test ([192.0.2.1])\r\n\tby mx.test (smtpd) with SMTP id "},
    {"RFC 6531 §3.7.3: SMTPUTF8: with UTF8SMTP", "192.0.2.1", "", "", "EHLO client.test",
     "MAIL FROM:<a@b.test> SMTPUTF8",
     "Received: from client.test ([192.0.2.1])\r\n\tby mx.test (smtpd) with UTF8SMTP id "},
    {"IPv6 peer: address literal with IPv6: tag (RFC 5321 §4.1.3)", "2001:db8::1", "", "",
     "EHLO client.test", "MAIL FROM:<a@b.test>",
     "Received: from client.test ([IPv6:2001:db8::1])" + by_esmtp},
    {"reverse DNS name shown before the address", "192.0.2.1", "host.example", "",
     "EHLO client.test", "MAIL FROM:<a@b.test>",
     "Received: from client.test (host.example [192.0.2.1])" + by_esmtp},
    {"appname shown after our name", "192.0.2.1", "", "myapp", "EHLO client.test",
     "MAIL FROM:<a@b.test>",
     "Received: from client.test ([192.0.2.1])\r\n\tby mx.test (myapp) with ESMTP id "},
    {"address-literal HELO name", "192.0.2.1", "", "", "EHLO [192.0.2.1]", "MAIL FROM:<a@b.test>",
     "Received: from [192.0.2.1] ([192.0.2.1])" + by_esmtp},
    // Client-supplied text cannot close the comment, add controls or break the line.
    {"HELO name with parentheses and a control character", "192.0.2.1", "", "", "HELO evil)\x01(x",
     "MAIL FROM:<a@b.test>",
     "Received: from evil___x ([192.0.2.1])\r\n\tby mx.test (smtpd) with SMTP id "},
    {"HELO name with backslash and DEL", "192.0.2.1", "", "",
     "EHLO a\\b\x7f"
     "c",
     "MAIL FROM:<a@b.test>", "Received: from a_b_c ([192.0.2.1])" + by_esmtp},
    {"reverse DNS name with parentheses and CR LF", "192.0.2.1", "a(b)\r\nX-Forged: 1", "",
     "EHLO client.test", "MAIL FROM:<a@b.test>",
     "Received: from client.test (a_b___X-Forged:_1 [192.0.2.1])" + by_esmtp},
};

} // namespace

TEST_SUITE("protocol") {

  TEST_CASE("RFC 5321 §4.4: the Received header names the client, us, the protocol and a date") {
    for (const ReceivedRow& row : received_rows) {
      CAPTURE(row.what);
      smtpd::Options o;
      if (!row.appname.empty()) o.appname = row.appname;
      Received r = receive(o, client_info(row.ip, row.rdns), row.hello, row.mail);
      check_received(r, row.top, "\r\n\tfor <c@d.test>");
    }
  }

  TEST_CASE("RFC 5321 §4.4: a Received header with several recipients names none of them") {
    Received r = receive({}, client_info(), "EHLO client.test", "MAIL FROM:<a@b.test>",
                         "RCPT TO:<c@d.test>\r\nRCPT TO:<e@f.test>\r\n");
    check_received(r, "Received: from client.test ([192.0.2.1])" + by_esmtp, "");
  }

  TEST_CASE("RFC 5321 §4.4: the sanitised HELO name leaves only our own parentheses") {
    Received r = receive({}, client_info(), "HELO evil)\x01(x", "MAIL FROM:<a@b.test>");
    std::size_t open = 0, close = 0;
    for (char c : r.header) {
      open += c == '(';
      close += c == ')';
    }
    CHECK(open == 2); // "([192.0.2.1])" and "(smtpd)"
    CHECK(close == 2);
    CHECK(r.header.find('\x01') == std::string::npos);
  }

  // =============================================================================================
  // Timeout, shutdown and idle() (RFC 5321 §4.5.3.2, §3.8)
  // =============================================================================================

} // TEST_SUITE("protocol")

namespace {

enum class Ending { timeout, shutdown };

struct EndingRow {
  const State& state;
  Ending ending;
  std::string reply;
};

const std::vector<EndingRow> ending_rows = {
    {greeted, Ending::timeout, "421 Timeout exceeded, closing connection"},
    {helo, Ending::timeout, "421 Timeout exceeded, closing connection"},
    {ehlo, Ending::timeout, "421 4.4.2 Timeout exceeded, closing connection"},
    {rcpt, Ending::timeout, "421 4.4.2 Timeout exceeded, closing connection"},
    {greeted, Ending::shutdown, "421 Service shutting down, try again later"},
    {helo_mail, Ending::shutdown, "421 Service shutting down, try again later"},
    {ehlo, Ending::shutdown, "421 4.3.2 Service shutting down, try again later"},
    {rcpt, Ending::shutdown, "421 4.3.2 Service shutting down, try again later"},
};

} // namespace

TEST_SUITE("protocol") {

  TEST_CASE("RFC 5321 §4.5.3.2: timeout() sends 421 4.4.2, shutting_down() 421 4.3.2; both close") {
    for (const EndingRow& row : ending_rows) {
      CAPTURE(row.state.name);
      CAPTURE(row.ending == Ending::timeout ? "timeout" : "shutdown");
      Session s;
      enter(s, row.state);
      if (row.ending == Ending::timeout)
        s.protocol.timeout();
      else
        s.protocol.shutting_down();
      CHECK(s.protocol.take_output() == row.reply + "\r\n");
      CHECK(s.closed());
      CHECK(s.protocol.envelope().to.empty());
      // Once closed, nothing more is said or read.
      s.protocol.timeout();
      s.protocol.shutting_down();
      CHECK(s.send("QUIT\r\n") == "");
    }
  }

  TEST_CASE("RFC 5321 §4.5.3.2: a partial command line is dropped when the session times out") {
    Session s;
    s.line(ehlo_client);
    CHECK(s.send("MAIL FROM:<a@b") == "");
    s.protocol.timeout();
    CHECK(s.protocol.take_output() == "421 4.4.2 Timeout exceeded, closing connection\r\n");
    CHECK(s.send(".test>\r\n") == "");
    CHECK(s.protocol.envelope().from.empty());
  }

  TEST_CASE("graceful shutdown: idle() between transactions only, never with a partial line") {
    Session s;
    CHECK(s.protocol.idle()); // after the greeting
    s.line(ehlo_client);
    CHECK(s.protocol.idle());
    s.send("NOO");
    CHECK_FALSE(s.protocol.idle()); // a partial command line is buffered
    s.send("P\r");
    CHECK_FALSE(s.protocol.idle());
    CHECK(s.send("\n") == "250 2.0.0 Ok\r\n");
    CHECK(s.protocol.idle());
    s.line("MAIL FROM:<a@b.test>");
    CHECK_FALSE(s.protocol.idle()); // a transaction is open
    s.line("RCPT TO:<c@d.test>");
    CHECK_FALSE(s.protocol.idle());
    CHECK(s.line("DATA") == "354 End data with <CR><LF>.<CR><LF>\r\n");
    CHECK_FALSE(s.protocol.idle()); // in DATA
    CHECK(s.protocol.in_data());
    s.send("Subject: x\r\n\r\nbody\r\n");
    CHECK_FALSE(s.protocol.idle());
    CHECK(mask_ids(s.send(".\r\n")) == "250 2.0.0 Ok: queued as XXXX\r\n");
    CHECK(s.protocol.idle()); // between transactions again
    CHECK_FALSE(s.protocol.in_data());
    s.line("MAIL FROM:<a@b.test>");
    CHECK_FALSE(s.protocol.idle());
    s.line("RSET");
    CHECK(s.protocol.idle()); // RSET closed the transaction
    s.send("\n");             // bare LF: the rest of the line is being discarded
    CHECK_FALSE(s.protocol.idle());
    s.send("\r\n");
    CHECK(s.protocol.idle());
  }

  // =============================================================================================
  // Replay: one whole session, fed whole, byte by byte and split in two at every offset
  // =============================================================================================

  TEST_CASE("RFC 2920: a full session gives the same replies however the reads are split") {
    const std::string input = "EHLO client.test\r\n"
                              "MAIL FROM:<alice@a.test> SIZE=40\r\n"
                              "RCPT TO:<bob@b.test>\r\n"
                              "RCPT TO:<carol@c.test>\r\n"
                              "DATA\r\n"
                              "Subject: replay\r\n"
                              "\r\n"
                              "..a stuffed line\r\n"
                              ".\r\n"
                              "RSET\r\n"
                              "NOOP\r\n"
                              "QUIT\r\n";
    const std::string expected = crlf_lines(ehlo_reply_lines) +
                                 "250 2.1.0 Ok\r\n"
                                 "250 2.1.5 Ok\r\n"
                                 "250 2.1.5 Ok\r\n"
                                 "354 End data with <CR><LF>.<CR><LF>\r\n"
                                 "250 2.0.0 Ok: queued as XXXX\r\n"
                                 "250 2.0.0 Ok\r\n"
                                 "250 2.0.0 Ok\r\n"
                                 "221 2.0.0 Bye\r\n";
    // run - a session fed `pieces`; its replies (ids masked) and the messages delivered.
    auto run = [](const std::vector<std::string>& pieces) {
      std::vector<std::string> datas;
      smtpd::Options o;
      o.handler = [&](const smtpd::Peer&, const std::string&, const std::vector<std::string>&,
                      const std::string& data) {
        datas.push_back(data.substr(data.find(";\r\n\t") + 4)); // past the id in Received
      };
      Session s(o);
      std::string out;
      for (const std::string& piece : pieces)
        out += s.send(piece);
      CHECK(s.closed());
      return std::make_pair(mask_ids(out), datas);
    };
    auto whole = run({input});
    CHECK(printable(whole.first) == printable(expected));
    REQUIRE(whole.second.size() == 1);
    CHECK(whole.second[0].find("\r\nSubject: replay\r\n\r\n.a stuffed line\r\n") !=
          std::string::npos);

    std::vector<std::string> bytes;
    for (char c : input)
      bytes.emplace_back(1, c);
    auto byte_by_byte = run(bytes);
    CHECK(printable(byte_by_byte.first) == printable(expected));
    CHECK(byte_by_byte.second.size() == 1);

    for (std::size_t at = 0; at <= input.size(); ++at) {
      CAPTURE(at);
      auto split = run({input.substr(0, at), input.substr(at)});
      CHECK(printable(split.first) == printable(expected));
      REQUIRE(split.second.size() == 1);
      // The date line may differ by a second; the content after it may not.
      const std::string& a = whole.second[0];
      const std::string& b = split.second[0];
      CHECK(a.substr(a.find("\r\n")) == b.substr(b.find("\r\n")));
    }
  }

} // TEST_SUITE("protocol")
