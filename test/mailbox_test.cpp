// mailbox_test.cpp - the address helpers for hooks: smtpd::parse_mailbox and smtpd::Mailbox
// (RFC 5321 §4.1.2 mailboxes, §4.1.3 address literals, §4.5.3.1 size limits, RFC 6531 UTF-8
// addresses, "+tag" user names) as tables of input and expected parts, checked against the
// server's own MAIL/RCPT parser; and the named refusals of smtpd::Reply (RFC 3463 enhanced
// codes, RFC 7372 for FCrDNS): their values, and how they go out on the wire when a hook
// returns or throws one, through an smtpd::Protocol driven directly (no sockets).
#include "../smtpd.hpp"

#include <doctest/doctest.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

using namespace std::string_literals;

namespace {

// ---- parse_mailbox tables ------------------------------------------------------------------

// Parts - an input that must parse, and every part and helper result it must give.
struct Parts {
  std::string input;
  std::string local;
  std::string domain;
  std::string literal;
  bool utf8;
  std::string user;
  std::string domain_lower;
};

// check_parts - parse `row.input` and compare every field and helper.
void check_parts(const Parts& row) {
  CAPTURE(row.input);
  std::optional<smtpd::Mailbox> box = smtpd::parse_mailbox(row.input);
  REQUIRE(box.has_value());
  CHECK(box->local == row.local);
  CHECK(box->domain == row.domain);
  CHECK(box->address_literal == row.literal);
  CHECK(box->utf8 == row.utf8);
  CHECK(box->user() == row.user);
  CHECK(box->domain_lower() == row.domain_lower);
  CHECK(box->address() == row.local + "@" + (row.literal.empty() ? row.domain : row.literal));
}

// check_table - check_parts for every row.
void check_table(const std::vector<Parts>& rows) {
  for (const Parts& row : rows)
    check_parts(row);
}

// check_invalid - every input must give nullopt.
void check_invalid(const std::vector<std::string>& inputs) {
  for (const std::string& input : inputs) {
    CAPTURE(input);
    CHECK_FALSE(smtpd::parse_mailbox(input).has_value());
  }
}

// same_parts - two parsed mailboxes with equal fields.
bool same_parts(const smtpd::Mailbox& a, const smtpd::Mailbox& b) {
  return a.local == b.local && a.domain == b.domain && a.address_literal == b.address_literal &&
         a.utf8 == b.utf8;
}

// domain_of - a syntactically valid domain of exactly `n` octets (n % 64 != 0): labels of 63
// 'd's joined by dots.
std::string domain_of(std::size_t n) {
  std::string d;
  while (d.size() < n)
    d += d.size() % 64 == 63 ? '.' : 'd';
  return d;
}

const std::vector<Parts> dot_string_rows = {
    {"user@example.org", "user", "example.org", "", false, "user", "example.org"},
    {"a@b", "a", "b", "", false, "a", "b"},
    {"John.Smith@Example.ORG", "John.Smith", "Example.ORG", "", false, "John.Smith", "example.org"},
    {"x@sub-domain.EXAMPLE-1.test", "x", "sub-domain.EXAMPLE-1.test", "", false, "x",
     "sub-domain.example-1.test"},
    {"1@2.3", "1", "2.3", "", false, "1", "2.3"},
    {"!#$%&'*-/=?^_`{|}~@x.test", "!#$%&'*-/=?^_`{|}~", "x.test", "", false, "!#$%&'*-/=?^_`{|}~",
     "x.test"},
    {"<user@example.org>", "user", "example.org", "", false, "user", "example.org"},
};

const std::vector<Parts> quoted_rows = {
    {"\"john smith\"@example.org", "\"john smith\"", "example.org", "", false, "john smith",
     "example.org"},
    {R"("a\"b"@x.test)", R"("a\"b")", "x.test", "", false, R"(a"b)", "x.test"},
    {R"("a\\b"@x.test)", R"("a\\b")", "x.test", "", false, R"(a\b)", "x.test"},
    {R"("\a\b\c"@x.test)", R"("\a\b\c")", "x.test", "", false, "abc", "x.test"},
    {"\"a@b\"@x.test", "\"a@b\"", "x.test", "", false, "a@b", "x.test"},
    {"\"john..smith.\"@x.test", "\"john..smith.\"", "x.test", "", false, "john..smith.", "x.test"},
    {"\"\"@x.test", "\"\"", "x.test", "", false, "", "x.test"},
    {"\"a+b\"@x.test", "\"a+b\"", "x.test", "", false, "a", "x.test"},
    {"<\"x>\"@y.test>", "\"x>\"", "y.test", "", false, "x>", "y.test"},
};

const std::vector<Parts> literal_rows = {
    {"user@[192.0.2.1]", "user", "", "[192.0.2.1]", false, "user", ""},
    {"user@[001.002.003.255]", "user", "", "[001.002.003.255]", false, "user", ""},
    {"user@[IPv6:2001:db8::1]", "user", "", "[IPv6:2001:db8::1]", false, "user", ""},
    {"user@[ipv6:::1]", "user", "", "[ipv6:::1]", false, "user", ""},
    {"user@[IPv6:::ffff:192.0.2.1]", "user", "", "[IPv6:::ffff:192.0.2.1]", false, "user", ""},
    {"user@[x-tag:some@content]", "user", "", "[x-tag:some@content]", false, "user", ""},
    {"\"a b\"@[192.0.2.1]", "\"a b\"", "", "[192.0.2.1]", false, "a b", ""},
};

const std::vector<Parts> utf8_rows = {
    {"δοκιμή@παράδειγμα.δοκιμή", "δοκιμή", "παράδειγμα.δοκιμή", "", true, "δοκιμή",
     "παράδειγμα.δοκιμή"},
    {"用户@例子.广告", "用户", "例子.广告", "", true, "用户", "例子.广告"},
    {"jörg+tag@BÜCHER.Example", "jörg+tag", "BÜCHER.Example", "", true, "jörg", "bÜcher.example"},
    {"user@bücher.example", "user", "bücher.example", "", true, "user", "bücher.example"},
    {"\"ü x\"@x.test", "\"ü x\"", "x.test", "", true, "ü x", "x.test"},
    {"ü@[192.0.2.1]", "ü", "", "[192.0.2.1]", true, "ü", ""},
    {"😀@x.test", "😀", "x.test", "", true, "😀", "x.test"},
};

const std::vector<Parts> tag_rows = {
    {"jo@x.test", "jo", "x.test", "", false, "jo", "x.test"},
    {"jo+news@x.test", "jo+news", "x.test", "", false, "jo", "x.test"},
    {"jo+news+2024@x.test", "jo+news+2024", "x.test", "", false, "jo", "x.test"},
    {"a.b+c.d@x.test", "a.b+c.d", "x.test", "", false, "a.b", "x.test"},
    {"jo+@x.test", "jo+", "x.test", "", false, "jo", "x.test"},
    {"+news@x.test", "+news", "x.test", "", false, "", "x.test"},
    {"++@x.test", "++", "x.test", "", false, "", "x.test"},
    {"Jo+News@x.test", "Jo+News", "x.test", "", false, "Jo", "x.test"},
};

const std::vector<std::string> syntax_errors = {
    "",
    "user",
    "user@",
    "@example.org",
    "a@b@c.test",
    "a@b.example.",
    "a.@b.example",
    ".a@b.example",
    "a..b@c.example",
    "a@b..example",
    "a@.b.example",
    "a@-b.example",
    "a@b-.example",
    "a@b_c.example",
    "a b@c.example",
    " a@b.example",
    "a@b.example ",
    "a(comment)@b.example",
    "\"abc@x.test",
    "\"a\"b@x.test",
    R"("a\"@x.test)",
    "a\"b\"@x.test",
    "Postmaster",
    "postmaster@",
};

const std::vector<std::string> bad_literals = {
    "a@[192.0.2.256]", "a@[192.0.2]",    "a@[192.0.2.1.5]",      "a@[1234.0.0.1]",   "a@[192.0.2.1",
    "a@192.0.2.1]",    "a@[]",           "a@[IPv6:2001:db8::g]", "a@[IPv6:1.2.3.4]", "a@[IPv6:]",
    "a@[:x]",          "a@[tag:]",       "a@[-tag:x]",           "a@[tag:a b]",      "a@[tag:a\\b]",
    "a@[tag:a[b]",     "a@[192.0.2.1]x", "a@[192.0.2.1].test",   "a@x.[192.0.2.1]",
};

const std::vector<std::string> control_characters = {
    "a\tb@c.test",      "a\x01@c.test",  "\"a\x01\"@c.test", "\"a\x7f\"@c.test",
    "\"a\\\t\"@c.test", "a@b.test\r\n",  "a@b\r\n.test",     "a\x7f@b.test",
    "a\0b@c.test"s,     "a@b.test\0"s,   "a@[192.0.2.1\0]"s, "a@[IPv6:::1\0]"s,
    "\"a\0\"@b.test"s,  "a@[tag:a\x01]",
};

const std::vector<std::string> brackets_and_routes = {
    "<>",
    "<a@b.test",
    "a@b.test>",
    "<<a@b.test>>",
    "<a@b.test> ",
    " <a@b.test>",
    "<@relay.test:a@b.test>",
    "@relay.test:a@b.test",
    "<Postmaster>",
};

const std::vector<std::string> bad_utf8 = {
    "a\xff@b.test",        "\xc3@b.test",         "a@b\xc3.test",
    "\xc0\xaf@b.test",     "a@\xed\xa0\x80.test", "\xf4\x90\x80\x80@b.test",
    "\"\xe2\x82\"@b.test", "\x80@b.test",
};

// ---- a Protocol on the wire ------------------------------------------------------------------

// Wire - a Protocol (hostname "mx.test", client 192.0.2.1) and the Options it refers to.
struct Wire {
  smtpd::Options options;
  std::unique_ptr<smtpd::Protocol> protocol;
  std::string greeting;

  explicit Wire(smtpd::Options o) : options(std::move(o)) {
    options.hostname = "mx.test";
    smtpd::SessionInfo info;
    info.peer.ip = "192.0.2.1";
    info.peer.port = 4321;
    protocol = std::make_unique<smtpd::Protocol>(options, info);
    greeting = protocol->take_output();
  }

  // say - send one command line (CRLF added); the reply bytes it produced.
  std::string say(std::string_view line) {
    protocol->feed(std::string(line) + "\r\n");
    return protocol->take_output();
  }

  // last_line - the last reply line `say(line)` produced, without CRLF.
  std::string last_line(std::string_view line) {
    std::string out = say(line);
    if (out.size() >= 2) out.resize(out.size() - 2);
    return out.substr(out.rfind("\r\n") == std::string::npos ? 0 : out.rfind("\r\n") + 2);
  }
};

// server_accepts - whether a fresh strict session with SMTPUTF8 accepts "RCPT TO:<text>"; the
// address its on_rcpt hook saw goes to `seen`.
bool server_accepts(const std::string& text, std::string& seen) {
  smtpd::Options o;
  o.strict = true;
  o.on_rcpt = [&seen](const smtpd::SessionInfo&, const std::string& to, const smtpd::Params&) {
    seen = to;
    return std::optional<smtpd::Reply>();
  };
  Wire w(o);
  w.say("EHLO client.test");
  w.say("MAIL FROM:<> SMTPUTF8");
  return w.say("RCPT TO:<" + text + ">").compare(0, 4, "250 ") == 0;
}

// hook_options - Options whose `hook_name` hook returns `r`; the others are unset.
smtpd::Options hook_options(const std::string& hook_name, const smtpd::Reply& r) {
  smtpd::Options o;
  auto give = [r](auto&&...) { return std::optional<smtpd::Reply>(r); };
  if (hook_name == "on_connect") o.on_connect = give;
  if (hook_name == "on_helo") o.on_helo = give;
  if (hook_name == "on_mail") o.on_mail = give;
  if (hook_name == "on_rcpt") o.on_rcpt = give;
  return o;
}

// Refusal - a named refusal and exactly what it must hold.
struct Refusal {
  const char* name;
  smtpd::Reply reply;
  int code;
  std::string enhanced;
  std::string text;
};

} // namespace

TEST_SUITE("mailbox") {
  // ---- parse_mailbox: valid addresses --------------------------------------------------------

  TEST_CASE("RFC 5321 §4.1.2: a dot-string local part and a domain split at the @") {
    check_table(dot_string_rows);
  }

  TEST_CASE("RFC 5321 §4.1.2: a quoted local part is kept as written; user() unquotes it") {
    check_table(quoted_rows);
  }

  TEST_CASE("RFC 5321 §4.1.3: address literals (IPv4, IPv6, general) keep their brackets") {
    check_table(literal_rows);
  }

  TEST_CASE("RFC 6531 §3.3: UTF-8 local parts and domains parse and set utf8") {
    check_table(utf8_rows);
  }

  TEST_CASE("user(): the local part before the first '+' (none, one, several, leading '+')") {
    check_table(tag_rows);
  }

  TEST_CASE("domain_lower() lower-cases ASCII letters only; the domain keeps its case") {
    std::optional<smtpd::Mailbox> box = smtpd::parse_mailbox("Me@MX.Example.ORG");
    REQUIRE(box);
    CHECK(box->domain == "MX.Example.ORG");
    CHECK(box->domain_lower() == "mx.example.org");
    CHECK(box->local == "Me");
    box = smtpd::parse_mailbox("me@ÄÖÜ.TEST");
    REQUIRE(box);
    CHECK(box->domain_lower() == "ÄÖÜ.test");
  }

  TEST_CASE("RFC 5321 §4.5.3.1: local part 64 octets, domain 255, the whole text 256") {
    std::string local64(64, 'l');
    check_parts({local64 + "@x.test", local64, "x.test", "", false, local64, "x.test"});
    check_parts({"\"" + std::string(62, ' ') + "\"@x.test", "\"" + std::string(62, ' ') + "\"",
                 "x.test", "", false, std::string(62, ' '), "x.test"});
    std::string at_limit = local64 + "@" + domain_of(191);
    REQUIRE(at_limit.size() == 256);
    CHECK(smtpd::parse_mailbox(at_limit));
    CHECK(smtpd::parse_mailbox("<" + local64 + "@" + domain_of(189) + ">"));
    check_invalid({
        std::string(65, 'l') + "@x.test",          // local part over 64
        "\"" + std::string(63, ' ') + "\"@x.test", // quotes count
        "a@" + domain_of(255), // a domain of 255 octets is already past the 256 of the text
        std::string(63, 'l') + "@" + domain_of(193),          // 257 octets
        "<" + local64 + "@" + domain_of(190) + ">",           // 257 with the brackets
        std::string(64, 'l') + "@" + domain_of(200) + ".test" // far over
    });
  }

  // ---- parse_mailbox: invalid input ----------------------------------------------------------

  TEST_CASE("RFC 5321 §4.1.2: malformed mailboxes give nullopt") {
    check_invalid(syntax_errors);
  }

  TEST_CASE("RFC 5321 §4.1.3: malformed address literals give nullopt") {
    check_invalid(bad_literals);
  }

  TEST_CASE("RFC 5321 §4.1.2: control characters anywhere give nullopt (NUL included)") {
    check_invalid(control_characters);
  }

  TEST_CASE("RFC 5321 §4.1.1.3: <> and source routes are no mailboxes; brackets must pair") {
    check_invalid(brackets_and_routes);
  }

  TEST_CASE("RFC 3629 / RFC 6531 §3.3: ill-formed UTF-8 gives nullopt") {
    check_invalid(bad_utf8);
  }

  // ---- parse_mailbox: the same parser as the server -----------------------------------------

  TEST_CASE("address() parses again to the same parts, bare and in brackets") {
    for (const std::vector<Parts>* table :
         {&dot_string_rows, &quoted_rows, &literal_rows, &utf8_rows, &tag_rows}) {
      for (const Parts& row : *table) {
        CAPTURE(row.input);
        std::optional<smtpd::Mailbox> box = smtpd::parse_mailbox(row.input);
        REQUIRE(box);
        std::optional<smtpd::Mailbox> again = smtpd::parse_mailbox(box->address());
        std::optional<smtpd::Mailbox> bracketed = smtpd::parse_mailbox("<" + box->address() + ">");
        REQUIRE(again);
        REQUIRE(bracketed);
        CHECK(same_parts(*box, *again));
        CHECK(same_parts(*box, *bracketed));
      }
    }
  }

  TEST_CASE("RFC 5321 §4.1.2: parse_mailbox accepts exactly what RCPT TO:<...> accepts") {
    std::vector<std::string> inputs = {"Postmaster@x.test", "a@b.test"};
    for (const std::vector<Parts>* table :
         {&dot_string_rows, &quoted_rows, &literal_rows, &utf8_rows, &tag_rows})
      for (const Parts& row : *table)
        if (row.input[0] != '<') inputs.push_back(row.input);
    for (const std::vector<std::string>* table :
         {&syntax_errors, &bad_literals, &control_characters, &bad_utf8})
      inputs.insert(inputs.end(), table->begin(), table->end());
    int accepted = 0, refused = 0;
    for (const std::string& input : inputs) {
      // CR/LF/NUL would end or corrupt the command line; "Postmaster" alone is a special RCPT.
      if (input.find_first_of("\r\n"s + '\0') != std::string::npos || input == "Postmaster")
        continue;
      CAPTURE(input);
      std::string seen;
      std::optional<smtpd::Mailbox> box = smtpd::parse_mailbox(input);
      CHECK(server_accepts(input, seen) == box.has_value());
      if (box) CHECK(seen == box->address());
      ++(box ? accepted : refused);
    }
    CHECK(accepted > 30);
    CHECK(refused > 50);
  }

  TEST_CASE("every address a hook receives parses, but <> and Postmaster (RFC 5321 §4.1.1.3)") {
    std::vector<std::string> froms, tos;
    smtpd::Options o;
    o.on_mail = [&froms](const smtpd::SessionInfo&, const std::string& from, const smtpd::Params&) {
      froms.push_back(from);
      return std::optional<smtpd::Reply>();
    };
    o.on_rcpt = [&tos](const smtpd::SessionInfo&, const std::string& to, const smtpd::Params&) {
      tos.push_back(to);
      return std::optional<smtpd::Reply>();
    };
    Wire w(o);
    w.say("EHLO client.test");
    std::string lenient_256 = std::string(64, 'l') + "@" + domain_of(191);
    CHECK(w.say("MAIL FROM:" + lenient_256).compare(0, 4, "250 ") == 0); // lenient: no <>
    CHECK(w.say("RCPT TO:<@relay.test:Jo+x@B.test>").compare(0, 4, "250 ") == 0);
    CHECK(w.say("RCPT TO:<Postmaster>").compare(0, 4, "250 ") == 0);
    w.say("RSET");
    CHECK(w.say("MAIL FROM:<> SMTPUTF8").compare(0, 4, "250 ") == 0);
    CHECK(w.say("RCPT TO:<jörg@bücher.test>").compare(0, 4, "250 ") == 0);
    REQUIRE(froms == std::vector<std::string>{lenient_256, ""});
    REQUIRE(tos == std::vector<std::string>{"Jo+x@B.test", "Postmaster", "jörg@bücher.test"});
    CHECK(smtpd::parse_mailbox(froms[0]));
    CHECK_FALSE(smtpd::parse_mailbox(froms[1]));
    std::optional<smtpd::Mailbox> routed = smtpd::parse_mailbox(tos[0]);
    REQUIRE(routed);
    CHECK(routed->user() == "Jo");
    CHECK(routed->domain_lower() == "b.test");
    CHECK_FALSE(smtpd::parse_mailbox(tos[1]));
    std::optional<smtpd::Mailbox> utf8 = smtpd::parse_mailbox(tos[2]);
    REQUIRE(utf8);
    CHECK(utf8->utf8);
  }

  TEST_CASE("a Mailbox built by hand: address() joins, user() takes what it is given") {
    smtpd::Mailbox box;
    box.local = "\"x+y\"";
    box.domain = "Example.TEST";
    CHECK(box.address() == "\"x+y\"@Example.TEST");
    CHECK(box.user() == "x");
    CHECK(box.domain_lower() == "example.test");
    box.local = "\"unclosed";
    CHECK(box.user() == "\"unclosed");
  }

  // ---- named refusals ------------------------------------------------------------------------

  TEST_CASE("RFC 3463 / RFC 7372: each named refusal's code, enhanced code and text") {
    const std::vector<Refusal> refusals = {
        {"no_such_user", smtpd::Reply::no_such_user(), 550, "5.1.1", "No such user"},
        {"bad_helo", smtpd::Reply::bad_helo(), 550, "5.7.1", "Bad HELO"},
        {"fcrdns_failure", smtpd::Reply::fcrdns_failure(), 550, "5.7.25", "FCrDNS failure"},
        {"ip_on_blocklist", smtpd::Reply::ip_on_blocklist(), 554, "5.7.1",
         "IP address is on a blocklist"},
        {"ip_on_blocklist(zone)", smtpd::Reply::ip_on_blocklist("zen.example"), 554, "5.7.1",
         "IP address is on a blocklist: zen.example"},
        {"domain_on_blocklist", smtpd::Reply::domain_on_blocklist(), 554, "5.7.1",
         "Domain is on a blocklist"},
        {"domain_on_blocklist(zone)", smtpd::Reply::domain_on_blocklist("dbl.example"), 554,
         "5.7.1", "Domain is on a blocklist: dbl.example"},
        {"no_valid_recipients", smtpd::Reply::no_valid_recipients(), 554, "5.5.1",
         "No valid recipients"},
    };
    for (const Refusal& r : refusals) {
      CAPTURE(r.name);
      CHECK(r.reply.code == r.code);
      CHECK(r.reply.enhanced == r.enhanced);
      CHECK(r.reply.text == r.text);
      CHECK_FALSE(r.reply.positive());
    }
  }

  TEST_CASE("a blocklist zone with CR, LF or other controls stays on one line") {
    smtpd::Reply r = smtpd::Reply::ip_on_blocklist("zen.example\r\n250 ok\x01\x7f");
    CHECK(r.text == "IP address is on a blocklist: zen.example  250 ok  ");
    CHECK(smtpd::Reply::domain_on_blocklist("a\nb").text == "Domain is on a blocklist: a b");
    CHECK(smtpd::Reply::ip_on_blocklist("").text == "IP address is on a blocklist");
  }

  TEST_CASE("RFC 2034: on the wire after EHLO each refusal carries its enhanced code") {
    const std::vector<std::pair<const char*, smtpd::Reply>> at_mail = {
        {"550 5.1.1 No such user", smtpd::Reply::no_such_user()},
        {"550 5.7.1 Bad HELO", smtpd::Reply::bad_helo()},
        {"550 5.7.25 FCrDNS failure", smtpd::Reply::fcrdns_failure()},
        {"554 5.7.1 IP address is on a blocklist: zen.example",
         smtpd::Reply::ip_on_blocklist("zen.example")},
        {"554 5.7.1 Domain is on a blocklist: dbl.example",
         smtpd::Reply::domain_on_blocklist("dbl.example")},
        {"554 5.5.1 No valid recipients", smtpd::Reply::no_valid_recipients()},
    };
    for (const std::pair<const char*, smtpd::Reply>& row : at_mail) {
      const char* wire = row.first;
      const smtpd::Reply& reply = row.second;
      CAPTURE(wire);
      Wire w(hook_options("on_mail", reply));
      w.say("EHLO client.test");
      CHECK(w.say("MAIL FROM:<a@b.test>") == std::string(wire) + "\r\n");
      Wire helo(hook_options("on_rcpt", reply));
      helo.say("HELO client.test");
      helo.say("MAIL FROM:<a@b.test>");
      std::string plain = std::to_string(reply.code) + " " + reply.text + "\r\n";
      CHECK(helo.say("RCPT TO:<c@d.test>") == plain); // RFC 2034: no codes after HELO
    }
  }

  TEST_CASE("RFC 5321 §4.1.1.1: on_helo returning bad_helo refuses; ESMTP comes only later") {
    smtpd::Options o;
    o.on_helo = [](const smtpd::SessionInfo&, const std::string& name) {
      return name == "bad.test" ? std::optional<smtpd::Reply>(smtpd::Reply::bad_helo())
                                : std::nullopt;
    };
    Wire w(o);
    CHECK(w.say("EHLO bad.test") == "550 Bad HELO\r\n");
    CHECK(w.say("MAIL FROM:<a@b.test>") == "503 Send HELO/EHLO first\r\n");
    CHECK(w.last_line("EHLO good.test") == "250 LIMITS RCPTMAX=100");
    CHECK(w.say("EHLO bad.test") == "550 5.7.1 Bad HELO\r\n");
    CHECK_FALSE(w.protocol->should_close());
  }

  TEST_CASE("RFC 5321 §3.1: a named refusal from on_connect is the 554 greeting") {
    Wire fcrdns(hook_options("on_connect", smtpd::Reply::fcrdns_failure()));
    CHECK(fcrdns.greeting == "554 FCrDNS failure\r\n");
    CHECK(fcrdns.say("EHLO client.test") == "503 Service refused, only QUIT allowed\r\n");
    Wire listed(hook_options("on_connect", smtpd::Reply::ip_on_blocklist("zen.example")));
    CHECK(listed.greeting == "554 IP address is on a blocklist: zen.example\r\n");
    CHECK(listed.say("QUIT") == "221 Bye\r\n");
    CHECK(listed.protocol->should_close());
  }

  TEST_CASE("a thrown named refusal is sent like a returned one, one line whatever the zone") {
    smtpd::Options o;
    o.on_rcpt = [](const smtpd::SessionInfo&, const std::string& to,
                   const smtpd::Params&) -> std::optional<smtpd::Reply> {
      throw smtpd::Reply::domain_on_blocklist("dbl.example\r\nX-Injected: " + to);
    };
    Wire w(o);
    w.say("EHLO client.test");
    w.say("MAIL FROM:<a@b.test>");
    CHECK(w.say("RCPT TO:<c@d.test>") ==
          "554 5.7.1 Domain is on a blocklist: dbl.example  X-Injected: c@d.test\r\n");
  }

  TEST_CASE("RFC 5321 §3.3: DATA after every RCPT got no_such_user is no_valid_recipients") {
    smtpd::Options o;
    o.on_rcpt = [](const smtpd::SessionInfo&, const std::string& to, const smtpd::Params&) {
      std::optional<smtpd::Mailbox> box = smtpd::parse_mailbox(to);
      return box && box->user() == "known"
                 ? std::nullopt
                 : std::optional<smtpd::Reply>(smtpd::Reply::no_such_user());
    };
    Wire w(o);
    w.say("EHLO client.test");
    w.say("MAIL FROM:<a@b.test>");
    CHECK(w.say("RCPT TO:<nobody+tag@d.test>") == "550 5.1.1 No such user\r\n");
    CHECK(w.say("RCPT TO:<\"no one\"@d.test>") == "550 5.1.1 No such user\r\n");
    smtpd::Reply expected = smtpd::Reply::no_valid_recipients();
    CHECK(w.say("DATA") ==
          std::to_string(expected.code) + " " + expected.enhanced + " " + expected.text + "\r\n");
    CHECK(w.say("RSET") == "250 2.0.0 Ok\r\n");
    w.say("MAIL FROM:<a@b.test>");
    CHECK(w.say("RCPT TO:<known+tag@d.test>") == "250 2.1.5 Ok\r\n");
    CHECK(w.say("DATA").compare(0, 4, "354 ") == 0);
  }
}
