// parse_test.cpp - the MAIL/RCPT argument parsers of smtpd::Protocol as golden tables: each row
// is one command line, the reply code and enhanced code it must get, and what the on_mail /
// on_rcpt hook must have seen (address and parameters). Paths and mailboxes (RFC 5321 §4.1.2),
// address literals (§4.1.3), size limits (§4.5.3.1), UTF-8 addresses (RFC 6531), SIZE
// (RFC 1870), BODY (RFC 6152) and HELO/EHLO names in strict mode (§4.1.1.1). The parsers are
// internal, so every row goes through a fresh Protocol (no sockets).
#include "../smtpd.hpp"
#include "protocol_helpers.hpp"

#include <doctest/doctest.h>

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

// ---- the session under test --------------------------------------------------------------

// Seen - what one hook call received.
struct Seen {
  std::string address;
  smtpd::Params params;
};

// Outcome - the first reply to one command line, split up, and the hook calls it caused.
struct Outcome {
  int code = 0;
  std::string enhanced; // "" when the reply carried none
  std::string line;     // the whole first reply line, for messages
};

// ParseSession - a Protocol (hostname "mx.test") whose hooks record what they see. Options are
// kept alive here: the Protocol refers to them.
class ParseSession {
public:
  std::vector<Seen> mails;
  std::vector<Seen> rcpts;
  std::vector<std::string> helos;

  explicit ParseSession(bool strict = false, std::size_t max_message_bytes = 0)
      : options_(prepare(strict, max_message_bytes)),
        protocol_(options_, test::client_info("192.0.2.7", "", 2500)) {
    greeting_ = protocol_.take_output();
  }

  // command - send one line (CRLF added) and split its first reply.
  Outcome command(const std::string& line) {
    protocol_.feed(line + "\r\n");
    std::string out = protocol_.take_output();
    Outcome o;
    o.line = out.substr(0, out.find("\r\n"));
    // A multi-line reply carries the same code (and enhanced code) on every line.
    if (o.line.size() >= 3) o.code = std::stoi(o.line.substr(0, 3));
    if (o.line.size() > 4) {
      std::string word = o.line.substr(4, o.line.find(' ', 4) - 4);
      if (word.size() >= 5 && word[1] == '.' && word[0] == o.line[0]) o.enhanced = word;
    }
    return o;
  }

  // ehlo - open the session; must be accepted.
  void ehlo() { REQUIRE(command("EHLO client.test").code == 250); }

  const smtpd::Protocol& protocol() const { return protocol_; }

private:
  smtpd::Options prepare(bool strict, std::size_t max_message_bytes) {
    smtpd::Options o;
    o.hostname = "mx.test";
    o.strict = strict;
    if (max_message_bytes != 0) o.max_message_bytes = max_message_bytes;
    o.on_helo = [this](const smtpd::SessionInfo&, const std::string& name) {
      helos.push_back(name);
      return std::optional<smtpd::Reply>();
    };
    o.on_mail = [this](const smtpd::SessionInfo&, const std::string& from,
                       const smtpd::Params& params) {
      mails.push_back({from, params});
      return std::optional<smtpd::Reply>();
    };
    o.on_rcpt = [this](const smtpd::SessionInfo&, const std::string& to,
                       const smtpd::Params& params) {
      rcpts.push_back({to, params});
      return std::optional<smtpd::Reply>();
    };
    return o;
  }

  smtpd::Options options_;
  smtpd::Protocol protocol_;
  std::string greeting_;
};

// ---- golden rows -------------------------------------------------------------------------

enum Mode { lenient, strict };

// Row - one command line and what it must produce. `recorded` is the address the hook must see
// when the reply is 2xx; a refused row must not reach the hook at all.
struct Row {
  std::string line;
  int code;
  std::string enhanced;
  std::string recorded;
  Mode mode = lenient;
};

const char* mode_name(Mode m) {
  return m == strict ? "strict" : "lenient";
}

// check_mail_line - a fresh session (`mode`, `max_message_bytes`), EHLO, then the MAIL `line`:
// its reply must carry `code` and `enhanced`. After a 2xx reply the on_mail hook must have run
// once, and `check_accepted(session)` checks what it saw; after any other, not at all.
template <class CheckAccepted>
void check_mail_line(const std::string& line, Mode mode, std::size_t max_message_bytes, int code,
                     const std::string& enhanced, CheckAccepted check_accepted) {
  CAPTURE(line);
  INFO("mode: " << mode_name(mode));
  ParseSession s(mode == strict, max_message_bytes);
  s.ehlo();
  Outcome o = s.command(line);
  INFO("reply: ", o.line);
  CHECK(o.code == code);
  CHECK(o.enhanced == enhanced);
  if (code / 100 == 2) {
    CHECK(s.mails.size() == 1);
    if (s.mails.size() == 1) check_accepted(s);
  } else {
    CHECK(s.mails.empty());
  }
}

// check_mail_row - a fresh session, EHLO, then the row's MAIL line.
void check_mail_row(const Row& row) {
  check_mail_line(row.line, row.mode, 0, row.code, row.enhanced, [&](const ParseSession& s) {
    CHECK(s.mails[0].address == row.recorded);
    CHECK(s.protocol().envelope().from == row.recorded);
  });
}

// check_rcpt_row - a fresh session, EHLO, `mail` (must be accepted), then the row's RCPT line.
void check_rcpt_row(const Row& row, const std::string& mail = "MAIL FROM:<s@sender.test>") {
  CAPTURE(row.line);
  CAPTURE(mail);
  INFO("mode: " << mode_name(row.mode));
  ParseSession s(row.mode == strict);
  s.ehlo();
  REQUIRE(s.command(mail).code == 250);
  Outcome o = s.command(row.line);
  INFO("reply: ", o.line);
  CHECK(o.code == row.code);
  CHECK(o.enhanced == row.enhanced);
  if (row.code / 100 == 2) {
    CHECK(s.rcpts.size() == 1);
    if (s.rcpts.size() == 1) {
      CHECK(s.rcpts[0].address == row.recorded);
      CHECK(s.protocol().envelope().to == std::vector<std::string>{row.recorded});
    }
  } else {
    CHECK(s.rcpts.empty());
    CHECK(s.protocol().envelope().to.empty());
  }
}

// PathRow - a path valid or invalid the same way after MAIL FROM: and RCPT TO:. An accepted
// path must reach the hook as `recorded`; a refused one gets 501 with the enhanced code of a
// bad sender (5.1.7) or a bad recipient (5.1.3).
struct PathRow {
  std::string path;
  bool valid;
  std::string recorded;
};

void check_path_rows(const std::vector<PathRow>& rows) {
  for (const PathRow& m : rows) {
    check_mail_row(
        {"MAIL FROM:" + m.path, m.valid ? 250 : 501, m.valid ? "2.1.0" : "5.1.7", m.recorded});
    check_rcpt_row(
        {"RCPT TO:" + m.path, m.valid ? 250 : 501, m.valid ? "2.1.5" : "5.1.3", m.recorded});
  }
}

// ParamRow - the text after "MAIL FROM:<a@b.test>", the reply it must get, and the Params the
// hook must see when it is accepted.
struct ParamRow {
  std::string params;
  int code;
  std::string enhanced;
  smtpd::Params recorded;
  Mode mode = lenient;
};

void check_param_row(const ParamRow& row, std::size_t max_message_bytes = 0) {
  check_mail_line("MAIL FROM:<a@b.test>" + row.params, row.mode, max_message_bytes, row.code,
                  row.enhanced, [&](const ParseSession& s) {
                    CHECK(s.mails[0].address == "a@b.test");
                    CHECK(s.mails[0].params == row.recorded);
                    CHECK(s.protocol().envelope().mail_params == row.recorded);
                  });
}

// HeloRow - an HELO/EHLO line, its reply code, and the name on_helo must see when accepted.
// Before EHLO succeeds no enhanced codes are negotiated (RFC 2034 §3), so none are checked.
struct HeloRow {
  std::string line;
  int code;
  std::string recorded;
};

void check_helo_row(const HeloRow& row, Mode mode) {
  CAPTURE(row.line);
  INFO("mode: " << mode_name(mode));
  ParseSession s(mode == strict);
  Outcome o = s.command(row.line);
  INFO("reply: ", o.line);
  CHECK(o.code == row.code);
  CHECK(o.enhanced == "");
  if (row.code / 100 == 2) {
    CHECK(s.helos == std::vector<std::string>{row.recorded});
    CHECK(s.protocol().session().helo == row.recorded);
  } else {
    CHECK(s.helos.empty());
    CHECK(s.protocol().session().helo.empty());
  }
}

// label - `n` octets of letters, a valid sub-domain when n <= 63.
std::string label(std::size_t n, char c = 'd') {
  return std::string(n, c);
}

// domain_of - a valid domain of exactly `n` octets: labels of at most 63 octets, dot-separated.
std::string domain_of(std::size_t n) {
  std::string d;
  std::size_t left = n;
  for (; left > 64; left -= 64)
    d += label(63) + ".";
  if (left == 64) { // a 64-octet tail would be one label too long: split it 62 + "." + 1
    d += label(62) + ".";
    left = 1;
  }
  return d + label(left);
}

} // namespace

TEST_SUITE("parse") {

  TEST_CASE("RFC 5321 §4.1.2: a mailbox is Local-part \"@\" Domain, in MAIL and RCPT alike") {
    check_path_rows({
        {"<a@b.test>", true, "a@b.test"},
        {"<A.B.C@Sub.Example.COM>", true, "A.B.C@Sub.Example.COM"},           // case kept as given
        {"<!#$%&'*+-/=?^_`{|}~@x.test>", true, "!#$%&'*+-/=?^_`{|}~@x.test"}, // every atext
        {"<a@x-y.test>", true, "a@x-y.test"},
        {"<a@1.2.test>", true, "a@1.2.test"},
        {"<a@localhost>", true, "a@localhost"},
        {"<ab.test>", false, ""},     // no "@"
        {"<@b.test>", false, ""},     // empty local part
        {"<a@>", false, ""},          // empty domain
        {"<a@b.test.>", false, ""},   // trailing dot
        {"<a@b..test>", false, ""},   // empty label
        {"<a@.b.test>", false, ""},   // leading dot in the domain
        {"<a..b@x.test>", false, ""}, // Dot-string = Atom *("." Atom)
        {"<.a@x.test>", false, ""},
        {"<a.@x.test>", false, ""},
        {"<a@-b.test>", false, ""}, // sub-domain = Let-dig [Ldh-str]
        {"<a@b-.test>", false, ""}, // Ldh-str ends with Let-dig
        {"<a@b_c.test>", false, ""},
        {"<a b@x.test>", false, ""},
        {"<a@b@x.test>", false, ""},
        {"<a(b)@x.test>", false, ""},
        {"<a,b@x.test>", false, ""},
        {"<a@b.test", false, ""}, // no closing bracket
        {"<<a@b.test>>", false, ""},
        {"", false, ""},
        {"<", false, ""},
    });
  }

  TEST_CASE("RFC 5321 §4.1.2: the null reverse-path <> is MAIL's only; <Postmaster> is RCPT's") {
    check_mail_row({"MAIL FROM:<>", 250, "2.1.0", ""});
    check_mail_row({"MAIL FROM:<>", 250, "2.1.0", "", strict});
    check_mail_row({"MAIL FROM:<postmaster>", 501, "5.1.7", ""}); // only RCPT may omit the domain
    check_mail_row({"MAIL FROM:<Postmaster>", 501, "5.1.7", ""});
    check_mail_row({"MAIL FROM:< >", 501, "5.1.7", ""});
    check_rcpt_row({"RCPT TO:<>", 501, "5.1.3", ""});
    check_rcpt_row({"RCPT TO:<postmaster>", 250, "2.1.5", "postmaster"});
    check_rcpt_row({"RCPT TO:<Postmaster>", 250, "2.1.5", "Postmaster"});
    check_rcpt_row({"RCPT TO:<POSTMASTER>", 250, "2.1.5", "POSTMASTER"});
    check_rcpt_row({"RCPT TO:<PostMaster>", 250, "2.1.5", "PostMaster", strict});
    check_rcpt_row({"RCPT TO:<postmaster@x.test>", 250, "2.1.5", "postmaster@x.test"});
    check_rcpt_row({"RCPT TO:<postmasterx>", 501, "5.1.3", ""});
    check_rcpt_row({"RCPT TO:<postmaster.x>", 501, "5.1.3", ""});
    check_rcpt_row({"RCPT TO:<post master>", 501, "5.1.3", ""});
    check_rcpt_row({"RCPT TO:<postmaster> NOTIFY=NEVER", 555, "5.5.4", ""});
  }

  TEST_CASE("RFC 5321 §4.1.2: Quoted-string local parts") {
    check_path_rows({
        {"<\"john smith\"@example.com>", true, "\"john smith\"@example.com"},
        {"<\"a\\\"b\"@x.test>", true, "\"a\\\"b\"@x.test"}, // quoted-pairSMTP \"
        {"<\"a\\\\b\"@x.test>", true, "\"a\\\\b\"@x.test"}, // quoted-pairSMTP \\ .
        {"<\"a@b\"@x.test>", true, "\"a@b\"@x.test"},       // "@" is qtextSMTP
        {"<\"<>\"@x.test>", true, "\"<>\"@x.test"},
        {"<\"\"@x.test>", true, "\"\"@x.test"}, // *QcontentSMTP may be empty
        {"<\"unterminated@x.test>", false, ""},
        {"<\"a\\\"@x.test>", false, ""},     // the backslash quotes the would-be closing quote
        {"<\"a\"b@x.test>", false, ""},      // text after the closing quote
        {"<\"a\".\"b\"@x.test>", false, ""}, // Dot-string / Quoted-string, never mixed
        {"<a.\"b\"@x.test>", false, ""},
        {"<\"tab\there\"@x.test>", false, ""}, // qtextSMTP = %d32-33 / %d35-91 / %d93-126
    });
  }

  TEST_CASE("RFC 5321 §4.1.3: address literals") {
    check_path_rows({
        {"<a@[192.0.2.1]>", true, "a@[192.0.2.1]"},
        {"<a@[0.0.0.0]>", true, "a@[0.0.0.0]"},
        {"<a@[255.255.255.255]>", true, "a@[255.255.255.255]"},
        {"<a@[IPv6:2001:db8::1]>", true, "a@[IPv6:2001:db8::1]"},
        {"<a@[ipv6:2001:db8::1]>", true, "a@[ipv6:2001:db8::1]"}, // ABNF strings ignore case
        {"<a@[IPv6:::1]>", true, "a@[IPv6:::1]"},
        {"<a@[IPv6:2001:db8:0:0:0:0:0:1]>", true, "a@[IPv6:2001:db8:0:0:0:0:0:1]"},
        {"<a@[IPv6:::ffff:192.0.2.1]>", true, "a@[IPv6:::ffff:192.0.2.1]"}, // IPv6v4-comp
        {"<a@[tag:stuff]>", true, "a@[tag:stuff]"}, // General-address-literal
        {"<a@[x-1:a!b~c]>", true, "a@[x-1:a!b~c]"},
        {"<a@[300.1.1.1]>", false, ""}, // Snum is 0 through 255
        {"<a@[1.2.3]>", false, ""},
        {"<a@[1.2.3.4.5]>", false, ""},
        {"<a@[1.2.3.]>", false, ""},
        {"<a@[IPv6:zz]>", false, ""},
        {"<a@[IPv6:1.2.3.4]>", false, ""},
        {"<a@[IPv6:1:2:3:4:5:6:7:8:9]>", false, ""},
        {"<a@[IPv6:2001:db8::1%eth0]>", false, ""},
        // Untagged IPv6 still matches the ABNF, as a General-address-literal with tag "2001".
        {"<a@[2001:db8::1]>", true, "a@[2001:db8::1]"},
        {"<a@[]>", false, ""},
        {"<a@[192.0.2.1>", false, ""},
        {"<a@192.0.2.1]>", false, ""},
        {"<a@[tag:]>", false, ""},   // 1*dcontent
        {"<a@[:stuff]>", false, ""}, // Standardized-tag = Ldh-str
        {"<a@[-tag:x]>", false, ""},
        {"<a@[tag-:x]>", false, ""},
        {"<a@[tag:a b]>", false, ""}, // dcontent = %d33-90 / %d94-126
        {"<a@[tag:a\\b]>", false, ""},
        {"<a@[tag:a[b]>", false, ""},
        {"<a@[192.0.2.1].test>", false, ""},
    });
  }

  TEST_CASE("RFC 5321 §4.1.3: Snum = 1*3DIGIT, so an IPv4 literal may have leading zeros") {
    check_path_rows({
        {"<a@[192.000.002.001]>", true, "a@[192.000.002.001]"},
        {"<a@[010.0.0.1]>", true, "a@[010.0.0.1]"},
        {"<a@[1.2.3.0001]>", false, ""}, // four digits is not an Snum
    });
  }

  TEST_CASE("RFC 5321 §4.1.1.3 / §4.1.2: source routes (A-d-l) are accepted and ignored") {
    check_path_rows({
        {"<@a.test,@b.test:user@c.test>", true, "user@c.test"},
        {"<@a.test:user@c.test>", true, "user@c.test"},
        {"<@a.test,@b.test,@c.test:\"q s\"@[192.0.2.1]>", true, "\"q s\"@[192.0.2.1]"},
        {"<@:user@c.test>", false, ""},
        {"<@a.test,user@c.test>", false, ""}, // At-domain needs its "@"
        {"<@a.test:>", false, ""},
        {"<@a.test,:user@c.test>", false, ""},
        {"<@a.test,@:user@c.test>", false, ""},
        {"<@a..test:user@c.test>", false, ""},
        {"<@a.test;user@c.test>", false, ""},
        {"<@[192.0.2.1]:user@c.test>", false, ""}, // At-domain = "@" Domain, no literal
    });
  }

  TEST_CASE("RFC 5321 §4.1.1.3: \"<Postmaster>\" is a form of its own and takes no source route") {
    // Rcpt = "RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" / Forward-path ): strict
    // mode must refuse a route in front of the bare name (lenient mode may let it through).
    check_rcpt_row({"RCPT TO:<@a.test:postmaster>", 501, "5.1.3", "", strict});
    check_rcpt_row(
        {"RCPT TO:<@a.test:postmaster@x.test>", 250, "2.1.5", "postmaster@x.test", strict});
  }

  TEST_CASE("RFC 5321 §4.5.3.1.1: a local part is at most 64 octets") {
    check_path_rows({
        {"<" + label(64, 'l') + "@x.test>", true, label(64, 'l') + "@x.test"},
        {"<" + label(65, 'l') + "@x.test>", false, ""},
        {"<\"" + label(62, 'q') + "\"@x.test>", true, "\"" + label(62, 'q') + "\"@x.test"},
        {"<\"" + label(63, 'q') + "\"@x.test>", false, ""}, // the quotes count
        {"<a." + label(62, 'l') + "@x.test>", true, "a." + label(62, 'l') + "@x.test"},
    });
  }

  TEST_CASE("RFC 5321 §4.5.3.1.2: a domain is at most 255 octets") {
    REQUIRE(domain_of(255).size() == 255);
    REQUIRE(domain_of(256).size() == 256);
    REQUIRE(domain_of(128).size() == 128);
    // A 256-octet domain is refused as bad syntax, before the path length is looked at.
    check_path_rows({{"<a@" + domain_of(256) + ">", false, ""},
                     {"<@" + domain_of(256) + ":a@x.test>", false, ""}});
    check_path_rows({{"<a@" + label(63) + ">", true, "a@" + label(63)}});
  }

  TEST_CASE("RFC 5321 §4.5.3.1.3: a path is at most 256 octets; longer is 501 Path too long") {
    // "<" + local + "@" + domain + ">": 64 + 1 + 189 + 2 = 256 octets.
    const std::string local = label(64, 'l');
    const std::string at_256 = local + "@" + domain_of(189);
    const std::string at_257 = local + "@" + domain_of(190);
    REQUIRE(at_256.size() + 2 == 256);
    check_mail_row({"MAIL FROM:<" + at_256 + ">", 250, "2.1.0", at_256});
    check_rcpt_row({"RCPT TO:<" + at_256 + ">", 250, "2.1.5", at_256});
    // §4.5.3.1.10 names "501 Path too long" as the reply; RFC 3463 X.5.4 "invalid command
    // arguments" is the enhanced code the server gives for it in MAIL and RCPT alike.
    check_mail_row({"MAIL FROM:<" + at_257 + ">", 501, "5.5.4", ""});
    check_rcpt_row({"RCPT TO:<" + at_257 + ">", 501, "5.5.4", ""});
    // A 255-octet domain is fine on its own, but no path can hold it with the brackets.
    check_mail_row({"MAIL FROM:<a@" + domain_of(255) + ">", 501, "5.5.4", ""});
    // The source route counts: a Path is "<", [ A-d-l ":" ], the mailbox, then ">".
    const std::string route = "@" + domain_of(250) + ":"; // 1 + 250 + 1 + 8 + 2 = 262 octets
    check_mail_row({"MAIL FROM:<" + route + "a@b.test>", 501, "5.5.4", ""});
    check_mail_row({"MAIL FROM:<@" + domain_of(100) + ":a@b.test>", 250, "2.1.0", "a@b.test"});
  }

  TEST_CASE("RFC 5321 §4.1.1.2 / §4.1.1.3: the FROM: and TO: keywords (501 5.5.4)") {
    const std::vector<Row> rows = {
        {"MAIL FROM<a@b.test>", 501, "5.5.4", ""}, // no colon
        {"MAIL TO:<a@b.test>", 501, "5.5.4", ""},
        {"MAIL <a@b.test>", 501, "5.5.4", ""},
        {"MAIL", 501, "5.5.4", ""},
        {"MAIL FROM :<a@b.test>", 501, "5.5.4", ""},
        {"MAIL FROM", 501, "5.5.4", ""},
        {"mail from:<a@b.test>", 250, "2.1.0", "a@b.test"}, // verbs and keywords ignore case
        {"MAIL From:<a@b.test>", 250, "2.1.0", "a@b.test", strict},
    };
    for (const Row& row : rows)
      check_mail_row(row);
    const std::vector<Row> rcpt_rows = {
        {"RCPT FROM:<a@b.test>", 501, "5.5.4", ""},
        {"RCPT TO<a@b.test>", 501, "5.5.4", ""},
        {"RCPT TO <a@b.test>", 501, "5.5.4", ""},
        {"RCPT", 501, "5.5.4", ""},
        {"rcpt to:<a@b.test>", 250, "2.1.5", "a@b.test"},
        {"RCPT To:<a@b.test>", 250, "2.1.5", "a@b.test", strict},
    };
    for (const Row& row : rcpt_rows)
      check_rcpt_row(row);
  }

  TEST_CASE("RFC 5321 §4.1.2: lenient mode accepts common deviations, strict mode refuses them") {
    const std::vector<Row> rows = {
        // Missing brackets: Path = "<" ... ">".
        {"MAIL FROM:a@b.test", 250, "2.1.0", "a@b.test"},
        {"MAIL FROM:a@b.test", 501, "5.1.7", "", strict},
        {"MAIL FROM:a@b.test SIZE=10", 250, "2.1.0", "a@b.test"},
        // A space after the colon: "MAIL FROM:" Reverse-path, nothing between.
        {"MAIL FROM: <a@b.test>", 250, "2.1.0", "a@b.test"},
        {"MAIL FROM:  <a@b.test>", 250, "2.1.0", "a@b.test"},
        {"MAIL FROM: <a@b.test>", 501, "5.1.7", "", strict},
        // Trailing white space: the line ends after the path or the last parameter.
        {"MAIL FROM:<a@b.test> ", 250, "2.1.0", "a@b.test"},
        {"MAIL FROM:<a@b.test>   ", 250, "2.1.0", "a@b.test"},
        {"MAIL FROM:<a@b.test>\t", 250, "2.1.0", "a@b.test"},
        {"MAIL FROM:<a@b.test> ", 501, "5.5.4", "", strict},
        {"MAIL FROM:<a@b.test>   ", 501, "5.5.4", "", strict},
        {"MAIL FROM:<a@b.test>\t", 501, "5.5.4", "", strict},
        {"MAIL FROM:<> ", 501, "5.5.4", "", strict},
        // Nothing may follow the path but SP and parameters, in either mode.
        {"MAIL FROM:<a@b.test>x", 501, "5.5.4", ""},
        {"MAIL FROM:<a@b.test>>", 501, "5.5.4", ""},
        {"MAIL FROM:<a@b.test>SIZE=10", 501, "5.5.4", ""},
        {"MAIL FROM:<a@b.test>SIZE=10", 501, "5.5.4", "", strict},
    };
    for (const Row& row : rows)
      check_mail_row(row);
    const std::vector<Row> rcpt_rows = {
        {"RCPT TO:a@b.test", 250, "2.1.5", "a@b.test"},
        {"RCPT TO:a@b.test", 501, "5.1.3", "", strict},
        {"RCPT TO:postmaster", 250, "2.1.5", "postmaster"},
        {"RCPT TO:postmaster", 501, "5.1.3", "", strict},
        {"RCPT TO: <a@b.test>", 250, "2.1.5", "a@b.test"},
        {"RCPT TO: <a@b.test>", 501, "5.1.3", "", strict},
        {"RCPT TO:<a@b.test>  ", 250, "2.1.5", "a@b.test"},
        {"RCPT TO:<a@b.test> ", 501, "5.5.4", "", strict},
    };
    for (const Row& row : rcpt_rows)
      check_rcpt_row(row);
  }

  TEST_CASE("RFC 6531 §3.3: UTF-8 addresses need the SMTPUTF8 parameter (553 5.6.7 without)") {
    const std::string jose = "j\xC3\xB6s\xC3\xA9@ex\xC3\xA4mple.test"; // jösé@exämple.test
    const std::string uni = "\xC3\xBCn\xC3\xAF@x.test";                // ünï@x.test
    const std::vector<Row> rows = {
        {"MAIL FROM:<" + jose + ">", 553, "5.6.7", ""},
        {"MAIL FROM:<" + jose + "> SMTPUTF8", 250, "2.1.0", jose}, // recorded byte for byte
        {"MAIL FROM:<" + jose + "> smtputf8", 250, "2.1.0", jose},
        {"MAIL FROM:<" + jose + "> SMTPUTF8", 250, "2.1.0", jose, strict},
        {"MAIL FROM:<" + jose + "> BODY=8BITMIME SMTPUTF8", 250, "2.1.0", jose},
        {"MAIL FROM:<a@ex\xC3\xA4mple.test>", 553, "5.6.7", ""},  // U-label only
        {"MAIL FROM:<\"j\xC3\xB6 s\"@x.test>", 553, "5.6.7", ""}, // qtextSMTP =/ UTF8
        {"MAIL FROM:<\"j\xC3\xB6 s\"@x.test> SMTPUTF8", 250, "2.1.0", "\"j\xC3\xB6 s\"@x.test"},
        {"MAIL FROM:<\xE2\x82\xAC\xF0\x9F\x93\xA7@x.test> SMTPUTF8", 250, "2.1.0",
         "\xE2\x82\xAC\xF0\x9F\x93\xA7@x.test"},                     // 3- and 4-octet sequences
        {"MAIL FROM:<" + jose + "> SMTPUTF8=yes", 555, "5.5.4", ""}, // SMTPUTF8 takes no value
    };
    for (const Row& row : rows)
      check_mail_row(row);
    const std::string utf8_mail = "MAIL FROM:<" + jose + "> SMTPUTF8";
    check_rcpt_row({"RCPT TO:<" + uni + ">", 250, "2.1.5", uni}, utf8_mail);
    check_rcpt_row({"RCPT TO:<" + jose + ">", 250, "2.1.5", jose}, utf8_mail);
    check_rcpt_row({"RCPT TO:<" + uni + ">", 250, "2.1.5", uni, strict}, utf8_mail);
    check_rcpt_row({"RCPT TO:<a@b.test>", 250, "2.1.5", "a@b.test"}, utf8_mail);
    check_rcpt_row({"RCPT TO:<" + uni + ">", 553, "5.6.7", ""}); // the transaction is ASCII
    check_rcpt_row({"RCPT TO:<" + uni + ">", 553, "5.6.7", ""},
                   "MAIL FROM:<a@b.test> BODY=8BITMIME");
  }

  TEST_CASE("RFC 6531 §3.3 / RFC 3629: malformed UTF-8 is bad syntax (501), SMTPUTF8 or not") {
    const std::vector<std::string> bad = {
        "a\xC3\x28@x.test",         // a lead byte without its continuation
        "\xC0\xAF@x.test",          // overlong "/"
        "a\xE0\x80\xAF@x.test",     // overlong, three octets
        "a\x80@x.test",             // a lone continuation byte
        "a\xE2\x82@x.test",         // truncated sequence
        "a\xED\xA0\x80@x.test",     // UTF-16 surrogate
        "a\xF4\x90\x80\x80@x.test", // past U+10FFFF
        "a\xFF@x.test",
        "a@x\x80.test", // in the domain
        "a@x\xC3\x28.test",
        "\"a\xC3\x28\"@x.test", // in a quoted string
    };
    const std::string utf8_mail = "MAIL FROM:<s@sender.test> SMTPUTF8";
    for (const std::string& box : bad) {
      check_mail_row({"MAIL FROM:<" + box + "> SMTPUTF8", 501, "5.1.7", ""});
      check_mail_row({"MAIL FROM:<" + box + ">", 501, "5.1.7", ""});
      check_rcpt_row({"RCPT TO:<" + box + ">", 501, "5.1.3", ""}, utf8_mail);
      check_rcpt_row({"RCPT TO:<" + box + ">", 501, "5.1.3", ""});
    }
  }

  TEST_CASE("RFC 6531 §3.3: the extended rules hold everywhere: source routes, esmtp-value") {
    // "sub-domain =/ U-label" extends every Domain, At-domain included: the route is valid under
    // SMTPUTF8 and is ignored as usual.
    const std::string route = "<@r\xC3\xA9lay.test:a@x.test>"; // <@rélay.test:a@x.test>
    check_mail_row({"MAIL FROM:" + route + " SMTPUTF8", 250, "2.1.0", "a@x.test"});
    check_rcpt_row({"RCPT TO:" + route, 250, "2.1.5", "a@x.test"},
                   "MAIL FROM:<s@sender.test> SMTPUTF8");
    // "esmtp-value =/ UTF8-non-ascii": with SMTPUTF8 an unknown parameter with a UTF-8 value is
    // well-formed, so it is unknown (555), not bad syntax (501) - in MAIL as in RCPT.
    check_mail_row({"MAIL FROM:<a@b.test> SMTPUTF8 X-NOTE=\xC3\xA4", 555, "5.5.4", ""});
    check_rcpt_row({"RCPT TO:<a@b.test> X-NOTE=\xC3\xA4", 555, "5.5.4", ""},
                   "MAIL FROM:<s@sender.test> SMTPUTF8");
  }

  TEST_CASE("RFC 5321 §4.1.2 esmtp-param: keywords upper-cased, values kept, order kept") {
    using P = smtpd::Params;
    const std::vector<ParamRow> rows = {
        {"", 250, "2.1.0", P{}},
        {" SIZE=0", 250, "2.1.0", P{{"SIZE", "0"}}},
        {" SIZE=1000", 250, "2.1.0", P{{"SIZE", "1000"}}},
        {" size=1000", 250, "2.1.0", P{{"SIZE", "1000"}}},
        {" Size=1000", 250, "2.1.0", P{{"SIZE", "1000"}}, strict},
        {" BODY=8BITMIME", 250, "2.1.0", P{{"BODY", "8BITMIME"}}},
        {" BODY=7bit", 250, "2.1.0", P{{"BODY", "7bit"}}},
        {" body=8bitmime", 250, "2.1.0", P{{"BODY", "8bitmime"}}},
        {" SMTPUTF8", 250, "2.1.0", P{{"SMTPUTF8", ""}}},
        {" size=10 body=8BITMIME smtputf8", 250, "2.1.0",
         P{{"SIZE", "10"}, {"BODY", "8BITMIME"}, {"SMTPUTF8", ""}}},
        {" SMTPUTF8 BODY=7BIT SIZE=5", 250, "2.1.0",
         P{{"SMTPUTF8", ""}, {"BODY", "7BIT"}, {"SIZE", "5"}}, strict},
        // Lenient mode tolerates several spaces between parameters; strict mode wants one SP.
        {" SIZE=10  BODY=8BITMIME", 250, "2.1.0", P{{"SIZE", "10"}, {"BODY", "8BITMIME"}}},
        {" SIZE=10  BODY=8BITMIME", 501, "5.5.4", P{}, strict},
        {"  SIZE=10", 250, "2.1.0", P{{"SIZE", "10"}}},
        {"  SIZE=10", 501, "5.5.4", P{}, strict},
        // Unknown or misused keywords: 555 (RFC 5321 §4.1.1.11).
        {" FOO=bar", 555, "5.5.4", P{}},
        {" FOO", 555, "5.5.4", P{}},
        {" X-FOO=bar", 555, "5.5.4", P{}},
        {" SMTPUTF8=yes", 555, "5.5.4", P{}},
        {" SIZE=10 NOTIFY=NEVER", 555, "5.5.4", P{}},
        // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"); esmtp-value = 1*(%d33-60 /
        // %d62-126): anything else is a syntax error (501 5.5.4).
        {" A_B=1", 501, "5.5.4", P{}},
        {" -AB=1", 501, "5.5.4", P{}},
        {" =1", 501, "5.5.4", P{}},
        {" A.B=1", 501, "5.5.4", P{}},
        {" FOO=", 501, "5.5.4", P{}},
        {" FOO=a=b", 501, "5.5.4", P{}},
        {" FOO=a\tb", 501, "5.5.4", P{}},
        {" FOO=a\x7F", 501, "5.5.4", P{}},
        {" FOO=\xC3\xA4", 501, "5.5.4", P{}}, // 8-bit value in an ASCII MAIL
    };
    for (const ParamRow& row : rows)
      check_param_row(row);
  }

  TEST_CASE("RFC 1870: SIZE=size-value, 1*20DIGIT, at most the advertised maximum") {
    using P = smtpd::Params;
    const std::vector<ParamRow> rows = {
        {" SIZE=", 501, "5.5.4", P{}},
        {" SIZE", 501, "5.5.4", P{}},
        {" SIZE=abc", 501, "5.5.4", P{}},
        {" SIZE=-1", 501, "5.5.4", P{}},
        {" SIZE=+1", 501, "5.5.4", P{}},
        {" SIZE=1.5", 501, "5.5.4", P{}},
        {" SIZE=1e3", 501, "5.5.4", P{}},
        {" SIZE=0x10", 501, "5.5.4", P{}},
        {" SIZE=26214400", 250, "2.1.0", P{{"SIZE", "26214400"}}}, // the default maximum
        {" SIZE=26214401", 552, "5.3.4", P{}},
        {" SIZE=00000000000000001000", 250, "2.1.0", P{{"SIZE", "00000000000000001000"}}},
        // 20 digits is still a size-value; past 2^64 it is simply far too big.
        {" SIZE=18446744073709551615", 552, "5.3.4", P{}},
        {" SIZE=99999999999999999999", 552, "5.3.4", P{}},
        // 23 digits is not a size-value at all (size-value ::= 1*20DIGIT): syntax, not size.
        {" SIZE=99999999999999999999999", 501, "5.5.4", P{}},
    };
    for (const ParamRow& row : rows)
      check_param_row(row);
    // With a 1000-octet maximum: 1000 is fine, 1001 is over it (RFC 1870 §6: 552).
    check_param_row({" SIZE=1000", 250, "2.1.0", P{{"SIZE", "1000"}}}, 1000);
    check_param_row({" SIZE=1001", 552, "5.3.4", P{}}, 1000);
    check_param_row({" SIZE=1001", 552, "5.3.4", P{}, strict}, 1000);
  }

  TEST_CASE("RFC 6152: BODY=7BIT or BODY=8BITMIME; other bodies are refused") {
    using P = smtpd::Params;
    const std::vector<ParamRow> rows = {
        {" BODY=BINARYMIME", 501, "5.5.4", P{}}, // RFC 3030, not advertised
        {" BODY=8BIT", 501, "5.5.4", P{}},
        {" BODY=", 501, "5.5.4", P{}},
        {" BODY", 501, "5.5.4", P{}},
    };
    for (const ParamRow& row : rows)
      check_param_row(row);
    ParseSession s;
    s.ehlo();
    CHECK(s.command("MAIL FROM:<a@b.test> BODY=8BITMIME").code == 250);
    CHECK(s.protocol().envelope().body_8bit);
    CHECK_FALSE(s.protocol().envelope().smtputf8);
    CHECK(s.command("RSET").code == 250);
    CHECK(s.command("MAIL FROM:<a@b.test> BODY=7BIT SMTPUTF8").code == 250);
    CHECK_FALSE(s.protocol().envelope().body_8bit);
    CHECK(s.protocol().envelope().smtputf8);
  }

  TEST_CASE("RFC 5321 §4.1.1.11: RCPT takes no parameters here (555 5.5.4)") {
    const std::vector<Row> rows = {
        {"RCPT TO:<a@b.test> NOTIFY=NEVER", 555, "5.5.4", ""}, // RFC 3461, not offered
        {"RCPT TO:<a@b.test> ORCPT=rfc822;a@b.test", 555, "5.5.4", ""},
        {"RCPT TO:<a@b.test> SIZE=10", 555, "5.5.4", ""}, // a MAIL parameter
        {"RCPT TO:<a@b.test> FOO", 555, "5.5.4", ""},
        {"RCPT TO:<a@b.test> A_B=1", 501, "5.5.4", ""}, // not an esmtp-param
        {"RCPT TO:<a@b.test> FOO=", 501, "5.5.4", ""},
        {"RCPT TO:<a@b.test>FOO=1", 501, "5.5.4", ""},
        {"RCPT TO:<a@b.test>  NOTIFY=NEVER", 555, "5.5.4", ""},
        {"RCPT TO:<a@b.test>  NOTIFY=NEVER", 501, "5.5.4", "", strict},
    };
    for (const Row& row : rows)
      check_rcpt_row(row);
  }

  TEST_CASE("RFC 5321 §4.1.1.11: after HELO no extension was offered, so no MAIL parameter") {
    // No EHLO, so no enhanced status codes either (RFC 2034 §3).
    for (const std::string params : {" SIZE=10", " BODY=8BITMIME", " SMTPUTF8"}) {
      CAPTURE(params);
      ParseSession s;
      REQUIRE(s.command("HELO client.test").code == 250);
      Outcome o = s.command("MAIL FROM:<a@b.test>" + params);
      INFO("reply: ", o.line);
      CHECK(o.code == 555);
      CHECK(o.enhanced == "");
      CHECK(s.mails.empty());
    }
    ParseSession s;
    REQUIRE(s.command("HELO client.test").code == 250);
    Outcome o = s.command("MAIL FROM:<a@b.test>");
    CHECK(o.line == "250 Ok");
    CHECK(s.mails.size() == 1);
  }

  TEST_CASE("RFC 5321 §4.1.1.1: HELO/EHLO names - Domain or address-literal in strict mode") {
    const std::vector<HeloRow> rows = {
        {"EHLO mx.example.com", 250, "mx.example.com"},
        {"EHLO localhost", 250, "localhost"},
        {"EHLO [192.0.2.1]", 250, "[192.0.2.1]"},
        {"EHLO [IPv6:::1]", 250, "[IPv6:::1]"},
        {"EHLO [IPv6:2001:db8::25]", 250, "[IPv6:2001:db8::25]"},
        {"HELO mx.example.com", 250, "mx.example.com"},
        {"EHLO MX.Example.COM", 250, "MX.Example.COM"},
    };
    for (const HeloRow& row : rows) {
      check_helo_row(row, strict);
      check_helo_row(row, lenient);
    }
    // Refused in strict mode, accepted as given in lenient mode.
    const std::vector<std::string> not_domains = {
        "EHLO not a domain", "EHLO -bad.test",  "EHLO bad-.test",        "EHLO under_score.test",
        "EHLO a..b.test",    "EHLO mx.test.",   "EHLO [300.1.1.1]",      "EHLO [IPv6:zz]",
        "EHLO [192.0.2.1",   "EHLO 192.0.2.1]", "HELO under_score.test", "EHLO " + domain_of(256),
    };
    for (const std::string& line : not_domains) {
      check_helo_row({line, 501, ""}, strict);
      check_helo_row({line, 250, line.substr(5)}, lenient);
    }
    // No name at all is a syntax error in both modes.
    check_helo_row({"EHLO", 501, ""}, strict);
    check_helo_row({"EHLO", 501, ""}, lenient);
    check_helo_row({"HELO", 501, ""}, lenient);
  }

} // TEST_SUITE
