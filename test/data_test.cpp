// data_test.cpp - the DATA phase of smtpd::Protocol, driven directly (no sockets): the end of
// data (only CRLF.CRLF, RFC 5321 §4.1.1.4) and the SMTP smuggling variants, dot-unstuffing
// (§4.5.2), reads split at every offset, pipelining (RFC 2920), the size limit enforced while
// reading (RFC 1870, §4.5.3.1.10), long lines (§4.5.3.1.6), 8-bit content, timeouts and
// disconnects, handler failures and the Received header (§4.4).
#include "../smtpd.hpp"
#include "protocol_helpers.hpp"

#include <doctest/doctest.h>

#include <cctype>
#include <cstddef>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

using namespace std::string_literals;

// Reply lists print as their lines when a check fails.
namespace doctest {
template <> struct StringMaker<std::vector<std::string>> {
  static String convert(const std::vector<std::string>& lines) {
    std::string out = "{";
    for (const std::string& line : lines)
      out += "\n  \"" + line + "\"";
    return (out + "\n}").c_str();
  }
};
} // namespace doctest

namespace {

using test::client_info;
using test::printable;

// ---- the session under test --------------------------------------------------------------

// Delivered - one message as the Handler received it.
struct Delivered {
  std::string from;
  std::vector<std::string> to;
  std::string data; // our Received header, then the content
};

const std::string ehlo = "EHLO client.test\r\n";
// One transaction's commands up to DATA; the content and the final dot follow.
const std::string envelope_commands =
    "MAIL FROM:<alice@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n";
const std::string final_dot = ".\r\n";
const std::string quit = "QUIT\r\n";

// The replies of one accepted transaction (queue ids normalised by normalize_ids).
const std::vector<std::string> accepted_transaction = {"250 2.1.0 Ok", "250 2.1.5 Ok",
                                                       "354 End data with <CR><LF>.<CR><LF>",
                                                       "250 2.0.0 Ok: queued as <id>"};
const std::string bye = "221 2.0.0 Bye";

// Session - a Protocol with Options.hostname "mx.test" whose handler (unless the test sets its
// own) records every message in `delivered`. Built in place: the handler points back at it.
class Session {
public:
  std::vector<Delivered> delivered;
  std::string greeting;

  explicit Session(smtpd::Options options = {})
      : options_(prepare(std::move(options))), protocol_(options_, client_info()) {
    greeting = protocol_.take_output();
  }

  // send - feed `bytes` in one read; returns the replies they produced.
  std::string send(std::string_view bytes) {
    protocol_.feed(bytes);
    return protocol_.take_output();
  }

  // hello - EHLO, which must be accepted.
  void hello() { REQUIRE(send(ehlo).find("\r\n250 ") != std::string::npos); }

  smtpd::Protocol& protocol() { return protocol_; }

private:
  smtpd::Options prepare(smtpd::Options o) {
    o.hostname = "mx.test";
    if (!o.handler && !o.message_handler)
      o.handler = [this](const smtpd::Peer&, const std::string& from,
                         const std::vector<std::string>& to, const std::string& data) {
        delivered.push_back({from, to, data});
      };
    return o;
  }

  smtpd::Options options_;
  smtpd::Protocol protocol_;
};

// ---- reading what came back --------------------------------------------------------------

// normalize_ids - "queued as 65A1B2C3D4E5F6" becomes "queued as <id>": ids differ per message.
std::string normalize_ids(const std::string& replies) {
  return test::mask_ids(replies, "<id>");
}

// reply_lines - the CRLF-terminated reply lines, queue ids normalised. A missing final CRLF
// shows up as a last line marked "<no CRLF>".
std::vector<std::string> reply_lines(const std::string& replies) {
  std::string text = normalize_ids(replies);
  std::vector<std::string> lines;
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t end = text.find("\r\n", at);
    if (end == std::string::npos) {
      lines.push_back(text.substr(at) + "<no CRLF>");
      break;
    }
    lines.push_back(text.substr(at, end - at));
    at = end + 2;
  }
  return lines;
}

std::vector<std::string> concat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

std::size_t count_starting_with(const std::vector<std::string>& lines, std::string_view prefix) {
  std::size_t n = 0;
  for (const std::string& line : lines)
    if (line.compare(0, prefix.size(), prefix) == 0) ++n;
  return n;
}

// received_end - where our Received header ends in `data`: its last line is "\t" + date and
// follows the line that ends with ";" (client text in it is sanitised, so cannot hold CRLF).
std::size_t received_end(const std::string& data) {
  std::size_t semicolon = data.find(";\r\n\t");
  REQUIRE(semicolon != std::string::npos);
  std::size_t end = data.find("\r\n", semicolon + 4);
  REQUIRE(end != std::string::npos);
  return end + 2;
}

// content_of - the message as the client sent it (unstuffed), without our Received header.
std::string content_of(const std::string& data) {
  REQUIRE(data.rfind("Received: ", 0) == 0);
  return data.substr(received_end(data));
}

// ---- feeding in pieces -------------------------------------------------------------------

// Outcome - everything observable about a session: every reply byte (ids normalised) and the
// messages delivered.
struct Outcome {
  std::string replies;
  std::vector<std::string> froms;
  std::vector<std::vector<std::string>> recipients;
  std::vector<std::string> contents;

  bool operator==(const Outcome& o) const {
    return replies == o.replies && froms == o.froms && recipients == o.recipients &&
           contents == o.contents;
  }
};

// run_pieces - a new session fed `pieces`, one read each.
Outcome run_pieces(const smtpd::Options& options, const std::vector<std::string>& pieces) {
  Session s(options);
  std::string replies = s.greeting;
  for (const std::string& piece : pieces)
    replies += s.send(piece);
  Outcome outcome{normalize_ids(replies), {}, {}, {}};
  for (const Delivered& d : s.delivered) {
    outcome.froms.push_back(d.from);
    outcome.recipients.push_back(d.to);
    outcome.contents.push_back(content_of(d.data));
  }
  return outcome;
}

std::vector<std::string> split_at(const std::string& s, std::size_t at) {
  return {s.substr(0, at), s.substr(at)};
}

std::vector<std::string> byte_by_byte(const std::string& s) {
  std::vector<std::string> bytes;
  for (char c : s)
    bytes.emplace_back(1, c);
  return bytes;
}

// check_every_split - the outcome of `input` fed whole equals the outcome of it fed in two
// reads split at every offset, and fed byte by byte. Returns the whole-feed outcome.
Outcome check_every_split(const smtpd::Options& options, const std::string& input) {
  Outcome whole = run_pieces(options, {input});
  for (std::size_t at = 0; at <= input.size(); ++at) {
    CAPTURE(at);
    INFO("first read: ", printable(input.substr(0, at)));
    CHECK(run_pieces(options, split_at(input, at)) == whole);
  }
  CHECK(run_pieces(options, byte_by_byte(input)) == whole);
  return whole;
}

// ---- message content helpers ---------------------------------------------------------------

// lines_of - `count` lines of `width` copies of `fill`, each ending in CRLF.
std::string lines_of(std::size_t count, std::size_t width, char fill = 'a') {
  std::string out;
  for (std::size_t i = 0; i < count; ++i)
    out += std::string(width, fill) + "\r\n";
  return out;
}

// deliver_one - EHLO, one transaction carrying `wire` (content as sent, before the final dot),
// QUIT; returns the reply lines after EHLO.
std::vector<std::string> deliver_one(Session& s, const std::string& wire) {
  s.hello();
  return reply_lines(s.send(envelope_commands + wire + final_dot + quit));
}

smtpd::Options strict_options() {
  smtpd::Options o;
  o.strict = true;
  return o;
}

} // namespace

TEST_SUITE("data") {

  // ---- dot-unstuffing (RFC 5321 §4.5.2) ----------------------------------------------------

  TEST_CASE("RFC 5321 §4.5.2: a leading dot is removed, other dots are kept") {
    struct Row {
      const char* rule;
      std::string wire;    // content as sent, before ".\r\n"
      std::string content; // content as delivered
    };

    const Row rows[] = {
        {"a stuffed dot before text", "..x\r\n", ".x\r\n"},
        {"a stuffed line of one dot", "..\r\n", ".\r\n"},
        {"three dots become two", "...\r\n", "..\r\n"},
        {"an unstuffed leading dot is removed too", ".x\r\n", "x\r\n"},
        {"dots mid-line are kept", "a.b..c...\r\n", "a.b..c...\r\n"},
        {"a dot after a space is kept", " .x\r\n", " .x\r\n"},
        {"only the first dot of a line is removed", "..a.\r\n...b\r\n", ".a.\r\n..b\r\n"},
        {"a stuffed line inside a message", "one\r\n..two\r\nthree\r\n",
         "one\r\n.two\r\nthree\r\n"},
        {"a stuffed first line", "..first\r\nsecond\r\n", ".first\r\nsecond\r\n"},
        {"a stuffed last line", "first\r\n..\r\n", "first\r\n.\r\n"},
        {"an empty message (the final dot at once)", "", ""},
        {"an empty line is content", "\r\n", "\r\n"},
        {"the final CRLF belongs to the content", "abc\r\n", "abc\r\n"},
    };
    for (const Row& row : rows) {
      CAPTURE(std::string(row.rule));
      INFO("wire: ", printable(row.wire));
      Session s;
      std::vector<std::string> replies = deliver_one(s, row.wire);
      CHECK(replies == concat(accepted_transaction, {bye}));
      REQUIRE(s.delivered.size() == 1);
      CHECK(printable(content_of(s.delivered[0].data)) == printable(row.content));
    }
  }

  // ---- the end of data and SMTP smuggling (RFC 5321 §4.1.1.4, CVE-2023-51764 class) ---------

  namespace {

  // Smuggle - an almost-final-dot that a lax server would take as the end of data.
  struct Smuggle {
    std::string variant; // what follows "body" on the wire
    std::string kept;    // what the content holds in its place (a dot after CRLF is unstuffed)
    bool bare;           // holds a bare CR or LF: refused in strict mode
  };

  const Smuggle smuggles[] = {
      {"\n.\n", "\n.\n", true},
      {"\n.\r\n", "\n.\r\n", true},
      {"\r\n.\n", "\r\n\n", true},
      {"\r.\r", "\r.\r", true},
      {"\r\n.\r", "\r\n\r", true},
      {"\r.\r\n", "\r.\r\n", true},
      {"\n.\r", "\n.\r", true},
      {"\r\n.\r\r\n", "\r\n\r\r\n", true},
      {"\r\n\0.\r\n"s, "\r\n\0.\r\n"s, false},
  };

  const std::string smuggled_payload =
      "MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\n\r\nsmuggled\r\n";

  // smuggling_input - a whole session: EHLO, the transaction whose content hides `variant` and a
  // second transaction, the real end of data, QUIT.
  std::string smuggling_input(const Smuggle& m) {
    return ehlo + envelope_commands + "Subject: a\r\n\r\nbody" + m.variant + smuggled_payload +
           "\r\n.\r\n" + quit;
  }

  std::string smuggling_content(const Smuggle& m) {
    return "Subject: a\r\n\r\nbody" + m.kept + smuggled_payload + "\r\n";
  }

  // after_ehlo - the reply lines of an Outcome without the greeting and the EHLO reply.
  std::vector<std::string> after_ehlo(const Outcome& outcome) {
    std::vector<std::string> lines = reply_lines(outcome.replies);
    std::size_t first = 0;
    while (first < lines.size() && lines[first].rfind("250 ", 0) != 0)
      ++first; // EHLO's last
    return std::vector<std::string>(lines.begin() + std::ptrdiff_t(first + 1), lines.end());
  }

  } // namespace

  TEST_CASE("RFC 5321 §4.1.1.4: only CRLF.CRLF ends the data; smuggled commands stay content") {
    for (const Smuggle& m : smuggles) {
      INFO("variant: ", printable(m.variant));
      std::string input = smuggling_input(m);
      for (const auto& pieces : {std::vector<std::string>{input}, byte_by_byte(input)}) {
        CAPTURE(pieces.size());
        Outcome outcome = run_pieces({}, pieces);
        std::vector<std::string> replies = after_ehlo(outcome);
        CHECK(replies == concat(accepted_transaction, {bye}));
        CHECK(count_starting_with(replies, "250 2.0.0 Ok: queued") == 1);
        CHECK(count_starting_with(replies, "354 ") == 1);
        REQUIRE(outcome.contents.size() == 1); // exactly one message
        CHECK(outcome.froms[0] == "alice@a.test");
        CHECK(outcome.recipients[0] == std::vector<std::string>{"bob@b.test"});
        CHECK(outcome.contents[0].find("MAIL FROM:<evil@x.test>") != std::string::npos);
        CHECK(outcome.contents[0].find("RCPT TO:<victim@y.test>") != std::string::npos);
        // Lenient mode keeps the bare bytes as content, byte for byte.
        CHECK(printable(outcome.contents[0]) == printable(smuggling_content(m)));
      }
    }
  }

  TEST_CASE("RFC 5321 §2.3.8: strict mode refuses bare CR or LF in data with 554 5.6.0") {
    for (const Smuggle& m : smuggles) {
      INFO("variant: ", printable(m.variant));
      std::string input = smuggling_input(m);
      for (const auto& pieces : {std::vector<std::string>{input}, byte_by_byte(input)}) {
        CAPTURE(pieces.size());
        Outcome outcome = run_pieces(strict_options(), pieces);
        std::vector<std::string> replies = after_ehlo(outcome);
        CHECK(count_starting_with(replies, "354 ") == 1);
        if (m.bare) {
          CHECK(outcome.contents.empty()); // the handler was never called
          REQUIRE(replies.size() == 5);
          CHECK(replies[3].rfind("554 5.6.0 ", 0) == 0);
          CHECK(count_starting_with(replies, "250 2.0.0 Ok: queued") == 0);
          CHECK(replies.back() == bye);
        } else { // "\r\n\0.\r\n" has no bare CR or LF: one message, as in lenient mode
          CHECK(replies == concat(accepted_transaction, {bye}));
          REQUIRE(outcome.contents.size() == 1);
          CHECK(outcome.recipients[0] == std::vector<std::string>{"bob@b.test"});
          CHECK(printable(outcome.contents[0]) == printable(smuggling_content(m)));
        }
      }
    }
  }

  TEST_CASE("RFC 5321 §2.3.8: after a strict-mode refusal a new transaction is accepted") {
    Session s(strict_options());
    s.hello();
    std::vector<std::string> first =
        reply_lines(s.send(envelope_commands + "bare\nLF\r\n" + final_dot));
    REQUIRE(first.size() == 4);
    CHECK(first[3] == "554 5.6.0 Message contains bare <CR> or <LF> (RFC 5321 §2.3.8)");
    CHECK(reply_lines(s.send(envelope_commands + "clean\r\n" + final_dot)) == accepted_transaction);
    REQUIRE(s.delivered.size() == 1);
    CHECK(content_of(s.delivered[0].data) == "clean\r\n");
  }

  // ---- reads split anywhere ----------------------------------------------------------------

  TEST_CASE("RFC 5321 §4.1.1.4: the end of data is found wherever the reads are split") {
    // Stuffed dots, a dot-only line, a bare LF, a bare CR, a CRLF.CRLF look-alike mid-line.
    const std::string content_wire = "Subject: split\r\n\r\n..one\r\n..\r\n...\r\nmid.dle\r\n"
                                     "bare\nLF\r\nbare\rCR\r\nx.\r\n.y\r\n";
    const std::string content = "Subject: split\r\n\r\n.one\r\n.\r\n..\r\nmid.dle\r\n"
                                "bare\nLF\r\nbare\rCR\r\nx.\r\ny\r\n";
    const std::string input = ehlo + envelope_commands + content_wire + final_dot + quit;
    Outcome whole = check_every_split({}, input);
    REQUIRE(whole.contents.size() == 1);
    CHECK(printable(whole.contents[0]) == printable(content));
    CHECK(after_ehlo(whole) == concat(accepted_transaction, {bye}));
  }

  // reference_unstuff - an independent, byte-at-a-time model of the data phase for content that
  // has no CRLF.CRLF: the content after removing each line's leading dot (RFC 5321 §4.5.2, a
  // line starting after CRLF only), and whether a bare CR or LF occurs (RFC 5321 §2.3.8).
  std::string reference_unstuff(const std::string& wire, bool& bare) {
    std::string out;
    bare = false;
    bool line_start = true;
    for (std::size_t i = 0; i < wire.size(); ++i) {
      char c = wire[i];
      bool crlf = c == '\r' && i + 1 < wire.size() && wire[i + 1] == '\n';
      if (c == '\r' && !crlf) bare = true;
      if (c == '\n' && (i == 0 || wire[i - 1] != '\r')) bare = true;
      if (!(line_start && c == '.')) out += c;
      line_start = c == '\n' && i > 0 && wire[i - 1] == '\r';
    }
    return out;
  }

  TEST_CASE("RFC 5321 §4.5.2, §2.3.8: random content matches a byte-at-a-time model, split "
            "anywhere") {
    // Content made of the bytes that matter (dots, CRs, LFs) and one that does not, in random
    // reads: the delivered content and the strict verdict are the model's.
    uint32_t seed = 12345;
    auto next = [&seed] { return seed = seed * 1664525u + 1013904223u; };
    const char alphabet[] = {'a', '.', '\r', '\n', 'a', 'a'};
    for (int round = 0; round < 400; ++round) {
      std::string wire;
      std::size_t length = next() % 200;
      for (std::size_t i = 0; i < length; ++i)
        wire += alphabet[(next() >> 8) % sizeof alphabet];
      wire += "\r\n"; // the content ends its last line, so the final dot comes next
      if (wire.find("\r\n.\r\n") != std::string::npos || wire.rfind(".\r\n", 0) == 0)
        continue; // ends the data early: the model is only about content
      bool bare = false;
      std::string expected = reference_unstuff(wire, bare);
      CAPTURE(printable(wire));
      std::string input = ehlo + envelope_commands + wire + final_dot + quit;
      std::vector<std::string> reads;
      for (std::size_t at = 0; at < input.size();) {
        std::size_t n = 1 + (next() >> 8) % 40;
        reads.push_back(input.substr(at, n));
        at += n;
      }
      Outcome lenient = run_pieces({}, reads);
      REQUIRE(lenient.contents.size() == 1);
      CHECK(printable(lenient.contents[0]) == printable(expected));
      Outcome strict = run_pieces(strict_options(), reads);
      CHECK(strict.contents.size() == (bare ? 0u : 1u));
    }
  }

  TEST_CASE("RFC 5321 §2.3.8: a CRLF split between reads is not a bare CR (strict mode)") {
    const std::string input =
        ehlo + envelope_commands + "Subject: s\r\n\r\n..a\r\nb\r\n\r\n" + final_dot + quit;
    Outcome whole = check_every_split(strict_options(), input);
    CHECK(after_ehlo(whole) == concat(accepted_transaction, {bye}));
    REQUIRE(whole.contents.size() == 1);
    CHECK(whole.contents[0] == "Subject: s\r\n\r\n.a\r\nb\r\n\r\n");
  }

  TEST_CASE("RFC 5321 §2.3.8: a bare CR is found wherever the reads are split (strict mode)") {
    for (const std::string& bare : {"a\rb\r\n"s, "a\r\r\n"s, "\r.\r\n"s, "..\rx\r\n"s}) {
      INFO("content: ", printable(bare));
      const std::string input = ehlo + envelope_commands + bare + final_dot + quit;
      Outcome whole = check_every_split(strict_options(), input);
      CHECK(whole.contents.empty());
      std::vector<std::string> replies = after_ehlo(whole);
      REQUIRE(replies.size() == 5);
      CHECK(replies[3].rfind("554 5.6.0 ", 0) == 0);
    }
  }

  TEST_CASE("RFC 5321 §4.1.1.4: reads split as CR | LF inside content and as CR | LF.CRLF") {
    struct Row {
      const char* where;
      std::vector<std::string> pieces; // after EHLO and the envelope commands
      std::string content;
    };

    const Row rows[] = {
        {"CR | LF inside content",
         {"line one\r", "\nline two\r\n.\r\n"},
         "line one\r\nline two\r\n"},
        {"CR | LF.CRLF", {"last line\r", "\n.\r\n"}, "last line\r\n"},
        {"CRLF | .CRLF", {"last line\r\n", ".\r\n"}, "last line\r\n"},
        {"CRLF. | CRLF", {"last line\r\n.", "\r\n"}, "last line\r\n"},
        {"CRLF.CR | LF", {"last line\r\n.\r", "\n"}, "last line\r\n"},
        {"CR | LF | . | CR | LF", {"x\r", "\n", ".", "\r", "\n"}, "x\r\n"},
        {"stuffed dot alone", {"a\r\n.", ".b\r\n.\r\n"}, "a\r\n.b\r\n"},
    };
    for (const Row& row : rows) {
      CAPTURE(std::string(row.where));
      for (bool strict : {false, true}) {
        CAPTURE(strict);
        smtpd::Options options;
        options.strict = strict;
        std::vector<std::string> pieces = {ehlo + envelope_commands};
        pieces.insert(pieces.end(), row.pieces.begin(), row.pieces.end());
        pieces.push_back(quit);
        Outcome outcome = run_pieces(options, pieces);
        CHECK(after_ehlo(outcome) == concat(accepted_transaction, {bye}));
        REQUIRE(outcome.contents.size() == 1);
        CHECK(printable(outcome.contents[0]) == printable(row.content));
      }
    }
  }

  TEST_CASE("RFC 5321 §4.1.1.4: the client is in the data phase from the 354 to the final dot") {
    Session s;
    s.hello();
    s.send("MAIL FROM:<alice@a.test>\r\nRCPT TO:<bob@b.test>\r\n");
    CHECK_FALSE(s.protocol().in_data());
    s.send("DATA\r\n");
    CHECK(s.protocol().in_data());
    s.send("text\r\n.");
    CHECK(s.protocol().in_data());
    CHECK(reply_lines(s.send("\r\n")) == std::vector<std::string>{accepted_transaction.back()});
    CHECK_FALSE(s.protocol().in_data());
    CHECK(s.delivered.size() == 1);
  }

  // ---- pipelining (RFC 2920) ---------------------------------------------------------------

  TEST_CASE("RFC 2920: the end of a message and the next transaction in one read") {
    Session s;
    s.hello();
    std::string burst = envelope_commands + "first\r\n" + final_dot +
                        "MAIL FROM:<carol@c.test>\r\nRCPT TO:<dave@d.test>\r\n"
                        "RCPT TO:<erin@e.test>\r\nDATA\r\nsecond\r\n" +
                        final_dot + quit;
    const std::vector<std::string> expected =
        concat(accepted_transaction,
               {"250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 Ok: queued as <id>", bye});
    CHECK(reply_lines(s.send(burst)) == expected);
    REQUIRE(s.delivered.size() == 2);
    CHECK(s.delivered[0].from == "alice@a.test");
    CHECK(s.delivered[0].to == std::vector<std::string>{"bob@b.test"});
    CHECK(content_of(s.delivered[0].data) == "first\r\n");
    CHECK(s.delivered[1].from == "carol@c.test");
    CHECK(s.delivered[1].to == std::vector<std::string>{"dave@d.test", "erin@e.test"});
    CHECK(content_of(s.delivered[1].data) == "second\r\n");
    CHECK(s.protocol().should_close());
  }

  TEST_CASE("RFC 2920: DATA and the content in the same read") {
    Session s;
    s.hello();
    CHECK(reply_lines(s.send("MAIL FROM:<alice@a.test>\r\nRCPT TO:<bob@b.test>\r\n")) ==
          std::vector<std::string>{"250 2.1.0 Ok", "250 2.1.5 Ok"});
    CHECK(reply_lines(s.send("DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")) ==
          std::vector<std::string>{"354 End data with <CR><LF>.<CR><LF>",
                                   "250 2.0.0 Ok: queued as <id>"});
    REQUIRE(s.delivered.size() == 1);
    CHECK(content_of(s.delivered[0].data) == "Subject: x\r\n\r\nhi\r\n");
  }

  TEST_CASE("RFC 2920: pipelined transactions give the same result split at every offset") {
    const std::string input = ehlo + envelope_commands + "one\r\n..\r\n" + final_dot +
                              envelope_commands + "two\r\n" + final_dot + quit;
    Outcome whole = check_every_split({}, input);
    CHECK(whole.contents == std::vector<std::string>{"one\r\n.\r\n", "two\r\n"});
    CHECK(after_ehlo(whole) == concat(concat(accepted_transaction, accepted_transaction), {bye}));
  }

  // ---- the size limit (RFC 1870, RFC 5321 §4.5.3.1.10) -------------------------------------

  namespace {

  smtpd::Options limited(std::size_t max_bytes, bool strict = false) {
    smtpd::Options o;
    o.max_message_bytes = max_bytes;
    o.strict = strict;
    return o;
  }

  const std::string too_big = "552 5.3.4 Message size exceeds fixed maximum message size";

  } // namespace

  TEST_CASE("RFC 1870: a message of exactly the limit is accepted; content only is counted") {
    // 10 lines of 98 octets + CRLF: 1000 octets of content. The Received header is not counted.
    Session s(limited(1000));
    std::vector<std::string> replies = deliver_one(s, lines_of(10, 98));
    CHECK(replies == concat(accepted_transaction, {bye}));
    REQUIRE(s.delivered.size() == 1);
    CHECK(content_of(s.delivered[0].data).size() == 1000);
    CHECK(s.delivered[0].data.size() > 1000);
  }

  TEST_CASE("RFC 1870: the limit counts content after unstuffing (stuffing dots are free)") {
    // On the wire each line starts with "..": 1010 octets; unstuffed the content is 1000.
    std::string wire;
    for (int i = 0; i < 10; ++i)
      wire += ".." + std::string(97, 'a') + "\r\n";
    Session s(limited(1000));
    CHECK(deliver_one(s, wire) == concat(accepted_transaction, {bye}));
    REQUIRE(s.delivered.size() == 1);
    CHECK(content_of(s.delivered[0].data).size() == 1000);
  }

  TEST_CASE("RFC 5321 §4.5.3.1.10: one octet over the limit gets 552 5.3.4, no delivery") {
    for (bool strict : {false, true}) {
      CAPTURE(strict);
      Session s(limited(1000, strict));
      std::vector<std::string> replies = deliver_one(s, "b" + lines_of(10, 98));
      CHECK(replies == std::vector<std::string>{"250 2.1.0 Ok", "250 2.1.5 Ok",
                                                "354 End data with <CR><LF>.<CR><LF>", too_big,
                                                bye});
      CHECK(s.delivered.empty());
    }
  }

  TEST_CASE("RFC 5321 §4.5.3.1.10: content past the limit is drained, never run as commands") {
    // After the limit the content holds command lines; they must stay content until CRLF.CRLF.
    const std::string commands_in_content = "RSET\r\nMAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\nDATA\r\n"
                                            "NOOP\r\nQUIT\r\n";
    const std::string oversized = lines_of(12, 98) + commands_in_content + lines_of(3, 10);
    const std::vector<std::string> expected = {
        "250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>", too_big,
        // the next transaction works
        "250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>",
        "250 2.0.0 Ok: queued as <id>", bye};
    const std::string after = envelope_commands + "next\r\n" + final_dot + quit;

    SUBCASE("in one read") {
      Session s(limited(1000));
      s.hello();
      CHECK(reply_lines(s.send(envelope_commands + oversized + final_dot + after)) == expected);
      REQUIRE(s.delivered.size() == 1);
      CHECK(content_of(s.delivered[0].data) == "next\r\n");
    }
    SUBCASE("in reads of 7 octets, replies taken after each") {
      Session s(limited(1000));
      s.hello();
      std::string input = envelope_commands + oversized + final_dot + after;
      std::string replies;
      for (std::size_t at = 0; at < input.size(); at += 7)
        replies += s.send(input.substr(at, 7));
      CHECK(reply_lines(replies) == expected);
      REQUIRE(s.delivered.size() == 1);
      CHECK(content_of(s.delivered[0].data) == "next\r\n");
    }
  }

  TEST_CASE("RFC 5321 §4.5.3.1.10: a message far over the limit is read to the end, then 552") {
    // 4 MiB of content against a 1000-octet limit, in 64 KiB reads: only 552 comes back, once.
    Session s(limited(1000));
    s.hello();
    std::string replies = s.send(envelope_commands);
    const std::string chunk = lines_of(64 * 1024 / 64, 62, 'z');
    for (int i = 0; i < 64; ++i)
      replies += s.send(chunk);
    CHECK(s.protocol().in_data());
    replies += s.send(final_dot + "NOOP\r\n");
    CHECK(reply_lines(replies) == std::vector<std::string>{"250 2.1.0 Ok", "250 2.1.5 Ok",
                                                           "354 End data with <CR><LF>.<CR><LF>",
                                                           too_big, "250 2.0.0 Ok"});
    CHECK(s.delivered.empty());
    CHECK_FALSE(s.protocol().should_close());
  }

  TEST_CASE("RFC 1870: log_read gets one line counting the content octets") {
    std::vector<std::string> logged;
    smtpd::Options options;
    options.log_read = [&](const smtpd::Peer&, std::string_view line) {
      logged.emplace_back(line);
    };
    Session s(options);
    s.hello();
    s.send(envelope_commands + "..ab\r\n" + lines_of(2, 8) + final_dot);
    REQUIRE(s.delivered.size() == 1);
    CHECK(logged == std::vector<std::string>{"EHLO client.test", "MAIL FROM:<alice@a.test>",
                                             "RCPT TO:<bob@b.test>", "DATA",
                                             "<25 octets of message data>"});
  }

  // ---- long lines (RFC 5321 §4.5.3.1.6) ----------------------------------------------------

  TEST_CASE("RFC 5321 §4.5.3.1.6: a 5000-octet line is accepted in lenient mode") {
    Session s;
    const std::string line = std::string(5000, 'L') + "\r\n";
    CHECK(deliver_one(s, "short\r\n" + line) == concat(accepted_transaction, {bye}));
    REQUIRE(s.delivered.size() == 1);
    CHECK(content_of(s.delivered[0].data) == "short\r\n" + line);
  }

  TEST_CASE("RFC 5321 §4.5.3.1.6: strict mode allows 1000 octets per line, CRLF included") {
    struct Row {
      const char* rule;
      std::string wire;
      bool accepted;
    };

    const Row rows[] = {
        {"998 + CRLF is accepted", std::string(998, 'a') + "\r\n", true},
        {"999 + CRLF is refused", std::string(999, 'a') + "\r\n", false},
        {"5000 + CRLF is refused", std::string(5000, 'a') + "\r\n", false},
        {"a stuffing dot is not counted", "." + std::string(998, '.') + "\r\n", true},
        {"the long line may come after short ones", "a\r\n" + std::string(999, 'a') + "\r\nb\r\n",
         false},
    };
    for (const Row& row : rows) {
      CAPTURE(std::string(row.rule));
      for (std::size_t read_size : {std::size_t(0), std::size_t(13)}) { // 0: one read
        CAPTURE(read_size);
        Session s(strict_options());
        s.hello();
        std::string input = envelope_commands + row.wire + final_dot + quit;
        std::string replies;
        if (read_size == 0)
          replies = s.send(input);
        else
          for (std::size_t at = 0; at < input.size(); at += read_size)
            replies += s.send(input.substr(at, read_size));
        if (row.accepted) {
          CHECK(reply_lines(replies) == concat(accepted_transaction, {bye}));
          REQUIRE(s.delivered.size() == 1);
          CHECK(content_of(s.delivered[0].data).size() == 1000);
        } else {
          CHECK(reply_lines(replies) ==
                std::vector<std::string>{"250 2.1.0 Ok", "250 2.1.5 Ok",
                                         "354 End data with <CR><LF>.<CR><LF>",
                                         "554 5.6.0 Message line longer than 1000 octets", bye});
          CHECK(s.delivered.empty());
        }
      }
    }
  }

  // ---- 8-bit and NUL content ---------------------------------------------------------------

  TEST_CASE("RFC 6152: 8-bit and NUL octets are kept byte for byte") {
    std::string every_octet; // all 256 values but CR and LF, then CRLF
    for (int c = 0; c < 256; ++c)
      if (c != '\r' && c != '\n') every_octet += char(c);
    const std::string wire = every_octet + "\r\n" + "\0\0\0\r\n"s + "\xff\xfe.\x80\r\n" +
                             "..\0\r\n"s + "caf\xc3\xa9 \xe2\x82\xac\r\n";
    const std::string content = every_octet + "\r\n" + "\0\0\0\r\n"s + "\xff\xfe.\x80\r\n" +
                                ".\0\r\n"s + "caf\xc3\xa9 \xe2\x82\xac\r\n";
    Session s;
    s.hello();
    std::vector<std::string> replies = reply_lines(
        s.send("MAIL FROM:<alice@a.test> BODY=8BITMIME\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n" + wire +
               final_dot));
    CHECK(replies == accepted_transaction);
    REQUIRE(s.delivered.size() == 1);
    CHECK(printable(content_of(s.delivered[0].data)) == printable(content));
    CHECK(content_of(s.delivered[0].data) == content);
  }

  // ---- the session ending mid-message ------------------------------------------------------

  TEST_CASE("RFC 5321 §4.1.1.4: a client that disconnects mid-content delivers nothing") {
    for (const std::string& partial :
         {"Subject: x\r\n\r\nhalf a mess"s, "line\r\n"s, "line\r\n."s, "line\r\n.\r"s, ""s}) {
      INFO("content so far: ", printable(partial));
      Session s;
      s.hello();
      s.send(envelope_commands + partial);
      REQUIRE(s.protocol().in_data());
      s.protocol().disconnected();
      CHECK(s.protocol().should_close());
      CHECK(s.send("\n.\r\n" + final_dot + quit).empty()); // after the close, bytes are ignored
      CHECK(s.delivered.empty());
    }
  }

  TEST_CASE("RFC 5321 §4.5.3.2.7: a timeout mid-DATA gets 421 4.4.2, nothing is delivered") {
    Session s;
    s.hello();
    s.send(envelope_commands + "Subject: x\r\n\r\nhalf");
    REQUIRE(s.protocol().in_data());
    s.protocol().timeout();
    CHECK(reply_lines(s.protocol().take_output()) ==
          std::vector<std::string>{"421 4.4.2 Timeout exceeded, closing connection"});
    CHECK(s.protocol().should_close());
    CHECK(s.send("\r\n.\r\n").empty());
    CHECK(s.delivered.empty());
  }

  // ---- handler answers (RFC 5321 §4.1.1.4, §6.1) -------------------------------------------

  TEST_CASE("RFC 5321 §6.1: a failing handler gets its reply, and the session goes on") {
    struct Row {
      const char* failure;
      std::function<void()> fail;
      std::string reply;
    };

    const Row rows[] = {
        {"std::runtime_error", [] { throw std::runtime_error("disk full"); },
         "451 4.3.0 Local error in processing, try again later"},
        {"smtpd::Reply",
         [] {
           throw smtpd::Reply{550, "5.7.1", "no"};
         },
         "550 5.7.1 no"},
    };
    for (const Row& row : rows) {
      CAPTURE(std::string(row.failure));
      int calls = 0;
      std::vector<std::string> accepted;
      smtpd::Options options;
      options.handler = [&](const smtpd::Peer&, const std::string&, const std::vector<std::string>&,
                            const std::string& data) {
        if (++calls == 1) row.fail();
        accepted.push_back(content_of(data));
      };
      Session s(options);
      s.hello();
      CHECK(reply_lines(s.send(envelope_commands + "first\r\n" + final_dot)) ==
            std::vector<std::string>{"250 2.1.0 Ok", "250 2.1.5 Ok",
                                     "354 End data with <CR><LF>.<CR><LF>", row.reply});
      CHECK(reply_lines(s.send(envelope_commands + "second\r\n" + final_dot + quit)) ==
            concat(accepted_transaction, {bye}));
      CHECK(calls == 2);
      CHECK(accepted == std::vector<std::string>{"second\r\n"});
    }
  }

  TEST_CASE("RFC 5321 §6.1: a message handler's 5xx reply refuses the message") {
    smtpd::Options options;
    options.message_handler = [](const smtpd::SessionInfo&, const smtpd::Envelope&,
                                 const std::string&) -> std::optional<smtpd::Reply> {
      return smtpd::Reply{550, "5.7.1", "no"};
    };
    Session s(options);
    s.hello();
    std::vector<std::string> replies =
        reply_lines(s.send(envelope_commands + "x\r\n" + final_dot + "MAIL FROM:<a@a.test>\r\n"));
    CHECK(replies == std::vector<std::string>{"250 2.1.0 Ok", "250 2.1.5 Ok",
                                              "354 End data with <CR><LF>.<CR><LF>", "550 5.7.1 no",
                                              "250 2.1.0 Ok"});
  }

  // ---- the Received header (RFC 5321 §4.4) -------------------------------------------------

  namespace {

  // queue_ids - the ids of the "250 2.0.0 Ok: queued as ID" replies, in order.
  std::vector<std::string> queue_ids(const std::string& replies) {
    std::vector<std::string> ids;
    const std::string marker = "250 2.0.0 Ok: queued as ";
    for (std::size_t at = replies.find(marker); at != std::string::npos;
         at = replies.find(marker, at + 1)) {
      std::size_t start = at + marker.size();
      ids.push_back(replies.substr(start, replies.find("\r\n", start) - start));
    }
    return ids;
  }

  // check_received - `data` is exactly our Received header, then `content`: the header names the
  // HELO name, the client's address, us, the queue id from the 250 reply, the single recipient
  // (when there is one) and a date, on tab-continued lines.
  void check_received(const std::string& data, const std::string& id, const std::string& for_line,
                      const std::string& content) {
    const std::string top = "Received: from client.test ([192.0.2.1])\r\n"
                            "\tby mx.test (smtpd) with ESMTP id " +
                            id + for_line;
    REQUIRE(data.size() > top.size());
    CHECK(data.substr(0, top.size()) == top);
    REQUIRE(data.compare(top.size(), 4, ";\r\n\t") == 0);
    std::size_t date_start = top.size() + 4;
    std::size_t date_end = data.find("\r\n", date_start);
    REQUIRE(date_end != std::string::npos);
    std::string date = data.substr(date_start, date_end - date_start);
    CAPTURE(date);
    CHECK(date.size() >= 29); // "Sun, 22 Nov 2026 11:00:00 +0000" (the day may be one digit)
    CHECK(date.find(',') == 3);
    CHECK(data.substr(date_end + 2) == content);
  }

  } // namespace

  TEST_CASE("RFC 5321 §4.4: every message gets our Received header on top, then the content") {
    Session s;
    s.hello();
    std::string replies = s.send(envelope_commands + "Subject: one\r\n\r\nfirst\r\n" + final_dot +
                                 "MAIL FROM:<alice@a.test>\r\nRCPT TO:<bob@b.test>\r\n"
                                 "RCPT TO:<carol@c.test>\r\nDATA\r\n\r\nsecond\r\n" +
                                 final_dot + quit);
    std::vector<std::string> ids = queue_ids(replies);
    REQUIRE(ids.size() == 2);
    CHECK(ids[0] != ids[1]);
    REQUIRE(s.delivered.size() == 2);
    // One recipient: named in "for"; two: not named, so a Bcc is never revealed.
    check_received(s.delivered[0].data, ids[0], "\r\n\tfor <bob@b.test>",
                   "Subject: one\r\n\r\nfirst\r\n");
    check_received(s.delivered[1].data, ids[1], "", "\r\nsecond\r\n");
  }

  TEST_CASE("RFC 5321 §4.4: the empty message is the Received header alone") {
    Session s;
    s.hello();
    std::string replies = s.send(envelope_commands + final_dot);
    std::vector<std::string> ids = queue_ids(replies);
    REQUIRE(ids.size() == 1);
    REQUIRE(s.delivered.size() == 1);
    check_received(s.delivered[0].data, ids[0], "\r\n\tfor <bob@b.test>", "");
    CHECK(s.delivered[0].data.size() == received_end(s.delivered[0].data));
  }

  TEST_CASE("RFC 5321 §4.4: a MessageHandler gets the same data and the envelope") {
    std::vector<std::string> datas;
    std::vector<smtpd::Envelope> envelopes;
    smtpd::Options options;
    options.message_handler = [&](const smtpd::SessionInfo& session,
                                  const smtpd::Envelope& envelope,
                                  const std::string& data) -> std::optional<smtpd::Reply> {
      CHECK(session.helo == "client.test");
      datas.push_back(data);
      envelopes.push_back(envelope);
      return std::nullopt;
    };
    Session s(options);
    s.hello();
    std::string replies = s.send(envelope_commands + "..dot\r\nbody\r\n" + final_dot);
    std::vector<std::string> ids = queue_ids(replies);
    REQUIRE(ids.size() == 1);
    REQUIRE(datas.size() == 1);
    check_received(datas[0], ids[0], "\r\n\tfor <bob@b.test>", ".dot\r\nbody\r\n");
    CHECK(envelopes[0].from == "alice@a.test");
    CHECK(envelopes[0].to == std::vector<std::string>{"bob@b.test"});
  }

} // TEST_SUITE("data")
