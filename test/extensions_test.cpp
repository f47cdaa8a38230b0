// extensions_test.cpp - the ESMTP extensions beyond the core, driven through smtpd::Protocol with
// no sockets: CHUNKING and BINARYMIME (RFC 3030), DSN (RFC 3461), REQUIRETLS (RFC 8689), LIMITS
// (RFC 9422), AUTH= on MAIL (RFC 4954 §5), and the user's own parameters and EHLO keywords.
// BDAT chunks are raw octets, so these dialogues are written as (bytes sent, replies expected)
// pairs rather than CRLF-terminated "C:" lines; one is also replayed split at every offset.
#include "../smtpd.hpp"
#include "protocol_helpers.hpp"

#include <doctest/doctest.h>

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

using namespace std::string_literals;

namespace {

using test::client_info;
using test::mask_ids;
using test::printable;
using test::tls_info;

// Delivered - one message a handler accepted: its envelope and its content without our
// Received header.
struct Delivered {
  smtpd::Envelope envelope;
  std::string content;
};

// strip_received - the message without the Received header we put on top (it ends at the first
// CRLF not followed by a tab).
std::string strip_received(const std::string& data) {
  std::size_t at = 0;
  while ((at = data.find("\r\n", at)) != std::string::npos && at + 2 < data.size() &&
         data[at + 2] == '\t')
    at += 2;
  return at == std::string::npos ? data : data.substr(at + 2);
}

// Session - a Protocol with hostname mx.test whose message_handler records every message; the
// greeting is taken at construction.
struct Session {
  std::vector<Delivered> delivered;
  std::vector<smtpd::MailOptions> mails; // what on_mail's Session object saw, in order
  smtpd::Options options;
  std::unique_ptr<smtpd::Protocol> protocol;

  explicit Session(smtpd::Options o = {}, smtpd::SessionInfo info = client_info()) {
    options = std::move(o);
    options.hostname = "mx.test";
    if (!options.stream_handler && !options.handler && !options.new_session)
      options.message_handler = [this](const smtpd::SessionInfo&, const smtpd::Envelope& e,
                                       const std::string& data) {
        delivered.push_back({e, strip_received(data)});
        return std::optional<smtpd::Reply>();
      };
    protocol = std::make_unique<smtpd::Protocol>(options, std::move(info));
    protocol->take_output();
  }

  std::string send(std::string_view bytes) {
    protocol->feed(bytes);
    return mask_ids(protocol->take_output());
  }

  std::string line(std::string_view command) { return send(std::string(command) + "\r\n"); }

  // last - the last line of the reply to `command` (the EHLO reply's last line, say).
  std::string last(std::string_view command) {
    std::string r = line(command);
    std::size_t start = r.rfind("\r\n", r.size() - 3);
    return r.substr(start == std::string::npos ? 0 : start + 2);
  }

  // transaction - EHLO, MAIL FROM:<a@b.test> `mail_params`, RCPT TO:<c@d.test>: all accepted.
  void transaction(const std::string& mail_params = "") {
    line("EHLO client.test");
    CHECK(line("MAIL FROM:<a@b.test>" + mail_params) == "250 2.1.0 Ok\r\n");
    CHECK(line("RCPT TO:<c@d.test>") == "250 2.1.5 Ok\r\n");
  }

  bool closed() const { return protocol->should_close(); }
};

// ehlo - the EHLO reply's lines after the first (our name), without "250-"/"250 ".
std::vector<std::string> ehlo(smtpd::Options o, smtpd::SessionInfo info = client_info()) {
  Session s(std::move(o), std::move(info));
  std::string r = s.line("EHLO client.test");
  std::vector<std::string> lines;
  for (std::size_t at = 0; at < r.size();) {
    std::size_t end = r.find("\r\n", at);
    lines.push_back(r.substr(at + 4, end - at - 4));
    at = end + 2;
  }
  lines.erase(lines.begin());
  return lines;
}

// bdat - a BDAT command and its chunk: the size counted from `chunk`.
std::string bdat(const std::string& chunk, bool last = false) {
  return "BDAT " + std::to_string(chunk.size()) + (last ? " LAST" : "") + "\r\n" + chunk;
}

bool has(const std::vector<std::string>& lines, const std::string& line) {
  for (const std::string& l : lines)
    if (l == line) return true;
  return false;
}

smtpd::Options with_dsn() {
  smtpd::Options o;
  o.dsn = true;
  return o;
}

const std::string ok_mail = "250 2.1.0 Ok\r\n";
const std::string ok_rcpt = "250 2.1.5 Ok\r\n";
const std::string queued = "250 2.0.0 Ok: queued as XXXX\r\n";
const std::string need_mail = "503 5.5.1 Need MAIL command\r\n";
const std::string unsupported = "555 5.5.4 Unsupported MAIL/RCPT parameter\r\n";

} // namespace

TEST_SUITE("extensions") {

  // =============================================================================================
  // EHLO (RFC 5321 §4.1.1.1): what is advertised
  // =============================================================================================

  TEST_CASE("RFC 3030, RFC 9422: CHUNKING and LIMITS RCPTMAX are advertised by default") {
    std::vector<std::string> lines = ehlo({});
    CHECK(has(lines, "CHUNKING"));
    CHECK(has(lines, "LIMITS RCPTMAX=100"));
    CHECK_FALSE(has(lines, "BINARYMIME")); // opt-in
    CHECK_FALSE(has(lines, "DSN"));        // opt-in
    CHECK_FALSE(has(lines, "REQUIRETLS")); // opt-in, and only inside TLS
    smtpd::Options o;
    o.max_recipients = 250;
    CHECK(has(ehlo(o), "LIMITS RCPTMAX=250"));
  }

  TEST_CASE("RFC 3030 §3, RFC 3461 §4, RFC 8689 §2: the opt-in extensions when turned on") {
    smtpd::Options o;
    o.binarymime = true;
    o.dsn = true;
    o.requiretls = true;
    std::vector<std::string> plain = ehlo(o);
    CHECK(has(plain, "BINARYMIME"));
    CHECK(has(plain, "DSN"));
    CHECK_FALSE(has(plain, "REQUIRETLS")); // not outside TLS
    CHECK(has(ehlo(o, tls_info()), "REQUIRETLS"));
  }

  TEST_CASE("the user's EHLO keywords are added; chunking off: no CHUNKING and BDAT gets 502") {
    smtpd::Options o;
    o.ehlo_keywords = {"XOORG", "XFOO bar baz"};
    std::vector<std::string> lines = ehlo(o);
    CHECK(lines.at(lines.size() - 2) == "XOORG");
    CHECK(lines.back() == "XFOO bar baz");

    smtpd::Options off;
    off.chunking = false;
    CHECK_FALSE(has(ehlo(off), "CHUNKING"));
    Session s(off);
    s.transaction();
    CHECK(s.line("BDAT 0 LAST") == "502 5.5.1 Command not implemented\r\n");
  }

  TEST_CASE("invalid extension options make Server throw") {
    auto throws = [](smtpd::Options o) {
      o.addr = "127.0.0.1:0";
      CHECK_THROWS_AS(smtpd::Server{o}, std::invalid_argument);
    };
    smtpd::Options o;
    o.binarymime = true;
    o.chunking = false; // BINARYMIME travels only in BDAT (RFC 3030 §3)
    throws(o);
    for (const char* bad : {"", "-X", "X Y", "X=1", "X\xC3\xA9"}) {
      CAPTURE(bad);
      smtpd::Options m;
      m.mail_parameters = {bad};
      throws(m);
      smtpd::Options r;
      r.rcpt_parameters = {bad};
      throws(r);
    }
    for (const char* ours : {"RET", "notify", "SIZE", "AUTH"}) { // would pass unparsed
      CAPTURE(ours);
      smtpd::Options m;
      m.mail_parameters = {ours};
      throws(m);
    }
    for (const char* bad :
         {"", " X", "X\r\n250 FAKE", "X\tY", "-X", "CHUNKING", "dsn x", "X  Y", "X Y ", "X \x7F"}) {
      CAPTURE(printable(bad));
      smtpd::Options e;
      e.ehlo_keywords = {bad};
      throws(e);
    }
  }

  // =============================================================================================
  // BDAT (RFC 3030 §2)
  // =============================================================================================

  TEST_CASE("RFC 3030 §2: one chunk with LAST is a whole message, 250 with the queue id") {
    Session s;
    s.transaction();
    CHECK(s.send(bdat("Subject: x\r\n\r\nhello\r\n", true)) == queued);
    REQUIRE(s.delivered.size() == 1);
    CHECK(s.delivered[0].content == "Subject: x\r\n\r\nhello\r\n");
    CHECK(s.delivered[0].envelope.chunked);
    CHECK(s.delivered[0].envelope.to == std::vector<std::string>{"c@d.test"});
    CHECK(s.line("NOOP") == "250 2.0.0 Ok\r\n"); // the session goes on
  }

  TEST_CASE("RFC 3030 §2: each chunk is answered; the message is the chunks joined") {
    Session s;
    s.transaction();
    CHECK(s.send("BDAT 5\r\nhello") == "250 2.0.0 5 octets received\r\n");
    CHECK(s.send("BDAT 0\r\n") == "250 2.0.0 0 octets received\r\n");
    CHECK(s.send("BDAT 7 LAST\r\n world\n") == queued);
    REQUIRE(s.delivered.size() == 1);
    CHECK(s.delivered[0].content == "hello world\n");
  }

  TEST_CASE("RFC 3030 §2: BDAT 0 LAST is valid: an empty message, or the end of one") {
    Session s;
    s.transaction();
    CHECK(s.line("BDAT 0 LAST") == queued);
    REQUIRE(s.delivered.size() == 1);
    CHECK(s.delivered[0].content.empty());
    s.transaction();
    CHECK(s.send("BDAT 3\r\nabc") == "250 2.0.0 3 octets received\r\n");
    CHECK(s.line("bdat 0 last") == queued); // verbs and LAST in any case
    REQUIRE(s.delivered.size() == 2);
    CHECK(s.delivered[1].content == "abc");
  }

  TEST_CASE("RFC 3030 §2: a chunk is only octets: no dot-stuffing, no end of data, no smuggling") {
    Session s;
    s.transaction();
    const std::string content = "a\r\n.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<v@x.test>\r\n"
                                "DATA\r\n..b\r\n.\r\n";
    CHECK(s.send("BDAT " + std::to_string(content.size()) + " LAST\r\n" + content) == queued);
    REQUIRE(s.delivered.size() == 1);
    CHECK(s.delivered[0].content == content); // byte for byte, the dots included
    CHECK(s.delivered[0].envelope.from == "a@b.test");
  }

  TEST_CASE("RFC 3030 §3: BINARYMIME content is any octets, NUL and bare CR and LF included") {
    smtpd::Options o;
    o.binarymime = true;
    Session s(o);
    s.transaction(" BODY=BINARYMIME");
    const std::string binary = "\x00\x01\r\r\n\n\xFF.\r\n.\r\n\x00"s;
    CHECK(s.send("BDAT " + std::to_string(binary.size()) + " LAST\r\n" + binary) == queued);
    REQUIRE(s.delivered.size() == 1);
    CHECK(printable(s.delivered[0].content) == printable(binary));
    CHECK(s.delivered[0].envelope.mail.binarymime);
  }

  TEST_CASE("RFC 3030 §3: DATA after BODY=BINARYMIME gets 503; BINARYMIME must be offered") {
    smtpd::Options o;
    o.binarymime = true;
    Session s(o);
    s.transaction(" BODY=BINARYMIME");
    CHECK(s.line("DATA") == "503 5.5.1 BODY=BINARYMIME requires BDAT, not DATA (RFC 3030 §3)\r\n");
    CHECK(s.line("BDAT 0 LAST") == queued); // the transaction is still usable with BDAT

    Session off; // BINARYMIME not offered: BODY must be 7BIT or 8BITMIME
    off.line("EHLO client.test");
    CHECK(off.line("MAIL FROM:<a@b.test> BODY=BINARYMIME") ==
          "501 5.5.4 BODY must be 7BIT or 8BITMIME\r\n");
    Session bad(o);
    bad.line("EHLO client.test");
    CHECK(bad.line("MAIL FROM:<a@b.test> BODY=9BIT") ==
          "501 5.5.4 BODY must be 7BIT, 8BITMIME or BINARYMIME\r\n");
  }

  TEST_CASE("RFC 3030 §2: DATA and BDAT are not mixed; RCPT after BDAT gets 503") {
    Session s;
    s.transaction();
    CHECK(s.send("BDAT 2\r\nab") == "250 2.0.0 2 octets received\r\n");
    CHECK(s.line("DATA") ==
          "503 5.5.1 DATA and BDAT cannot be mixed in one transaction (RFC 3030 §2)\r\n");
    CHECK(s.line("RCPT TO:<e@f.test>") ==
          "503 5.5.1 RCPT after BDAT: the recipients are already closed (RFC 3030 §2)\r\n");
    CHECK(s.line("MAIL FROM:<x@y.test>") == "503 5.5.1 Sender already specified\r\n");
    CHECK(s.send("BDAT 2 LAST\r\ncd") == queued); // the message is still whole
    REQUIRE(s.delivered.size() == 1);
    CHECK(s.delivered[0].content == "abcd");
    CHECK(s.delivered[0].envelope.to.size() == 1);
  }

  TEST_CASE("RFC 3030 §2: RSET, EHLO or QUIT between chunks drop the partial message") {
    for (const char* ending : {"RSET", "EHLO again.test", "HELO again.test", "QUIT"}) {
      CAPTURE(ending);
      Session s;
      s.transaction();
      CHECK(s.send("BDAT 3\r\nabc") == "250 2.0.0 3 octets received\r\n");
      s.line(ending);
      CHECK(s.delivered.empty());
      if (s.closed()) continue;
      CHECK(s.line("BDAT 0 LAST").substr(0, 4) == "503 "); // no transaction any more
      s.transaction();
      CHECK(s.send("BDAT 1 LAST\r\nz") == queued);
      REQUIRE(s.delivered.size() == 1);
      CHECK(s.delivered[0].content == "z"); // nothing of the dropped message
    }
  }

  TEST_CASE("RFC 3030 §2: a refused BDAT is read and dropped first, so its octets never run") {
    Session s;
    s.line("EHLO client.test");
    // No MAIL: the chunk holds what would be commands; they must not run.
    CHECK(s.send("BDAT 12\r\nQUIT\r\nNOOP\r\n") == need_mail);
    CHECK_FALSE(s.closed());
    // Before EHLO, the same.
    Session early;
    CHECK(early.send("BDAT 6 LAST\r\nQUIT\r\n") == "503 Send HELO/EHLO first\r\n");
    CHECK_FALSE(early.closed());
    // Every recipient refused: 554, and the chunks pipelined behind it find no transaction.
    smtpd::Options o;
    o.on_rcpt = [](const smtpd::SessionInfo&, const std::string&, const smtpd::Params&) {
      return std::optional<smtpd::Reply>(smtpd::Reply::no_such_user());
    };
    Session refused(o);
    refused.line("EHLO client.test");
    CHECK(refused.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nBDAT 3\r\nabcBDAT 4 LAST\r\n"
                       "RSET") ==
          ok_mail + "550 5.1.1 No such user\r\n" + "554 5.5.1 No valid recipients\r\n" + need_mail);
    CHECK(refused.line("") == "500 5.5.2 Command not recognized\r\n"); // "RSET" was content
    CHECK(refused.delivered.empty());
  }

  TEST_CASE("RFC 3030 §2: a BDAT whose size cannot be read closes; other syntax errors get 501") {
    for (const char* bad :
         {"BDAT", "BDAT x", "BDAT -1", "BDAT LAST", "BDAT 1x LAST", "BDAT 123456789012345678901"}) {
      CAPTURE(bad);
      Session s;
      s.transaction();
      CHECK(s.line(bad) ==
            "421 4.5.4 Syntax: BDAT chunk-size [LAST]; the chunk's end is unknown, closing\r\n");
      CHECK(s.closed());
    }
    Session s;
    s.transaction();
    CHECK(s.send("BDAT 4 LAST NOW\r\nRSET") == "501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n");
    CHECK(s.line("RCPT TO:<e@f.test>") == need_mail); // the refused chunk failed the transaction
    CHECK(s.delivered.empty());
  }

  TEST_CASE("RFC 3030 §3, RFC 5321 §2.3.8: strict mode checks BDAT text, not BINARYMIME") {
    smtpd::Options o;
    o.strict = true;
    o.binarymime = true;
    const std::string bare = "554 5.6.0 Message contains bare <CR> or <LF> (RFC 5321 §2.3.8)\r\n";
    for (const char* text : {"a\nb\r\n", "a\rb\r\n", "ends with CR\r"}) {
      CAPTURE(printable(text));
      Session s(o);
      s.transaction();
      CHECK(s.send(bdat(text, true)) == bare);
      Session binary(o);
      binary.transaction(" BODY=BINARYMIME");
      CHECK(binary.send(bdat(text, true)) == queued);
    }
    Session s(o); // a CRLF split between two chunks is a CRLF
    s.transaction();
    CHECK(s.send(bdat("line\r")) == "250 2.0.0 5 octets received\r\n");
    CHECK(s.send(bdat("\nnext\r\n", true)) == queued);
    REQUIRE(s.delivered.size() == 1);
    s.transaction();
    CHECK(s.send(bdat(std::string(999, 'x') + "\r\n", true)) ==
          "554 5.6.0 Message line longer than 1000 octets\r\n");
    s.transaction();
    CHECK(s.send(bdat(std::string(998, 'x') + "\r\n", true)) == queued);
  }

  TEST_CASE("RFC 3030 §2, RFC 1870: the size limit counts across chunks; past it 552, then over") {
    smtpd::Options o;
    o.max_message_bytes = 10;
    Session s(o);
    s.transaction();
    CHECK(s.send("BDAT 6\r\n123456") == "250 2.0.0 6 octets received\r\n");
    CHECK(s.send("BDAT 6\r\n789012") ==
          "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
    CHECK(s.send("BDAT 2 LAST\r\nab") == need_mail); // pipelined behind it: dropped too
    CHECK(s.delivered.empty());
    s.transaction(); // the session is fine
    CHECK(s.send("BDAT 10 LAST\r\n1234567890") == queued);
    REQUIRE(s.delivered.size() == 1);
  }

  TEST_CASE("a streaming sink gets BDAT content in pieces, and finish() after LAST") {
    struct Sink : smtpd::MessageSink {
      std::string* got;
      bool* finished;

      void write(std::string_view piece) override { *got += piece; }

      std::optional<smtpd::Reply> finish() override {
        *finished = true;
        return std::nullopt;
      }
    };

    std::string got;
    bool finished = false;
    smtpd::Options o;
    o.stream_chunk_bytes = 4;
    o.stream_handler = [&](const smtpd::SessionInfo&, const smtpd::Envelope& e) {
      CHECK(e.chunked);
      auto sink = std::make_unique<Sink>();
      sink->got = &got;
      sink->finished = &finished;
      return sink;
    };
    Session s(o);
    s.transaction();
    CHECK(s.send("BDAT 9\r\n123456789") == "250 2.0.0 9 octets received\r\n");
    CHECK_FALSE(finished);
    CHECK(s.send("BDAT 3 LAST\r\nabc") == queued);
    CHECK(finished);
    CHECK(strip_received(got) == "123456789abc");
  }

  TEST_CASE("a sink's refusal of a piece ends the BDAT message with that reply") {
    struct Refusing : smtpd::MessageSink {
      void write(std::string_view) override { throw smtpd::Reply{452, "4.3.1", "Disk full"}; }

      std::optional<smtpd::Reply> finish() override { return std::nullopt; }
    };

    smtpd::Options o;
    o.stream_chunk_bytes = 4;
    o.stream_handler = [](const smtpd::SessionInfo&, const smtpd::Envelope&) {
      return std::make_unique<Refusing>();
    };
    Session s(o);
    s.transaction();
    CHECK(s.send("BDAT 9\r\n123456789") == "452 4.3.1 Disk full\r\n");
    CHECK(s.line("BDAT 0 LAST") == need_mail);
  }

  TEST_CASE("the client going away in the middle of a chunk loses only its partial message") {
    smtpd::Options o;
    Session s(o);
    s.transaction();
    CHECK(s.send("BDAT 100 LAST\r\nonly part") == "");
    CHECK(s.protocol->in_data()); // the data timeout applies while a chunk is read
    s.protocol->disconnected();
    CHECK(s.delivered.empty());
    CHECK(s.closed());
  }

  TEST_CASE("a Session's filter refusing BDAT: its chunk is dropped, then the refusal") {
    struct NoBdat : smtpd::Session {
      std::optional<smtpd::Reply> command(const smtpd::SessionInfo&,
                                          std::string_view line) override {
        if (line.substr(0, 4) == "BDAT") return smtpd::Reply{502, "5.5.1", "No BDAT here"};
        return std::nullopt;
      }
    };

    smtpd::Options o;
    o.new_session = [](const smtpd::SessionInfo&) { return std::make_unique<NoBdat>(); };
    Session s(o);
    s.transaction();
    CHECK(s.send("BDAT 6\r\nQUIT\r\n") == "502 5.5.1 No BDAT here\r\n");
    CHECK_FALSE(s.closed());
  }

  TEST_CASE("the tracer gets BDAT octets through chunk(), in order with the commands") {
    struct Rec : smtpd::Tracer {
      std::string* log;

      void client(std::string_view b) override { *log += "C[" + std::string(b) + "]"; }

      void server(std::string_view) override {}

      void chunk(std::string_view b) override { *log += "K[" + std::string(b) + "]"; }
    };

    std::string log;
    smtpd::Options o;
    o.new_tracer = [&](const smtpd::SessionInfo&) {
      auto r = std::make_unique<Rec>();
      r->log = &log;
      return r;
    };
    Session s(o);
    s.transaction();
    log.clear();
    s.send("BDAT 3\r\nabcBDAT 1 LAST\r\nd");
    CHECK(printable(log) == printable("C[BDAT 3\r\n]K[abc]C[BDAT 1 LAST\r\n]K[d]"));
  }

  TEST_CASE("RFC 3030 §4.2: a pipelined BDAT session gives the same replies however it is split") {
    smtpd::Options o;
    o.binarymime = true;
    const std::string binary = "\r\n.\r\n\x00"s;
    const std::string input = "EHLO client.test\r\n"
                              "MAIL FROM:<a@b.test> BODY=BINARYMIME\r\n"
                              "RCPT TO:<c@d.test>\r\n"
                              "RCPT TO:<e@f.test>\r\n"
                              "BDAT 6\r\n" +
                              binary +
                              "BDAT 3 LAST\r\nxyz"
                              "MAIL FROM:<g@h.test>\r\n"
                              "RCPT TO:<i@j.test>\r\n"
                              "BDAT 0 LAST\r\n"
                              "QUIT\r\n";
    auto run = [&](const std::vector<std::string>& pieces) {
      Session s(o);
      std::string out;
      for (const std::string& piece : pieces)
        out += s.send(piece);
      CHECK(s.closed());
      std::vector<std::string> contents;
      for (const Delivered& d : s.delivered)
        contents.push_back(d.content);
      return std::make_pair(out, contents);
    };
    auto whole = run({input});
    std::string r = whole.first;
    CHECK(r.substr(r.find("250 LIMITS")) == "250 LIMITS RCPTMAX=100\r\n" + ok_mail + ok_rcpt +
                                                ok_rcpt + "250 2.0.0 6 octets received\r\n" +
                                                queued + ok_mail + ok_rcpt + queued +
                                                "221 2.0.0 Bye\r\n");
    CHECK(whole.second == std::vector<std::string>{binary + "xyz", ""});
    for (std::size_t at = 0; at <= input.size(); ++at) {
      CAPTURE(at);
      auto split = run({input.substr(0, at), input.substr(at)});
      CHECK(split.first == whole.first);
      CHECK(split.second == whole.second);
    }
    std::vector<std::string> bytes;
    for (char c : input)
      bytes.emplace_back(1, c);
    auto one_by_one = run(bytes);
    CHECK(one_by_one.first == whole.first);
    CHECK(one_by_one.second == whole.second);
  }

  // =============================================================================================
  // DSN (RFC 3461)
  // =============================================================================================

  TEST_CASE("RFC 3461 §4: RET, ENVID, NOTIFY and ORCPT reach the envelope, decoded") {
    Session s(with_dsn());
    s.line("EHLO client.test");
    CHECK(s.line("MAIL FROM:<a@b.test> RET=hdrs ENVID=QQ+2B1+3Dx") == ok_mail);
    CHECK(s.line("RCPT TO:<c@d.test> NOTIFY=success,Failure ORCPT=rfc822;c+2Btag@d.test") ==
          ok_rcpt);
    CHECK(s.line("RCPT TO:<e@f.test> NOTIFY=NEVER") == ok_rcpt);
    CHECK(s.line("RCPT TO:<g@h.test>") == ok_rcpt);
    CHECK(s.send("BDAT 0 LAST\r\n") == queued);
    REQUIRE(s.delivered.size() == 1);
    const smtpd::Envelope& e = s.delivered[0].envelope;
    CHECK(e.mail.ret == "HDRS");
    CHECK(e.mail.envid == "QQ+1=x");
    REQUIRE(e.rcpt.size() == 3);
    CHECK(e.rcpt[0].notify == std::vector<std::string>{"SUCCESS", "FAILURE"});
    CHECK(e.rcpt[0].orcpt_type == "rfc822");
    CHECK(e.rcpt[0].orcpt == "c+tag@d.test");
    CHECK(e.rcpt[1].notify == std::vector<std::string>{"NEVER"});
    CHECK(e.rcpt[2].notify.empty());
    CHECK(e.rcpt[2].orcpt.empty());
    // The raw parameters stay in params, as given.
    CHECK(e.mail.params == smtpd::Params{{"RET", "hdrs"}, {"ENVID", "QQ+2B1+3Dx"}});
    CHECK(e.rcpt[1].params == smtpd::Params{{"NOTIFY", "NEVER"}});
  }

  TEST_CASE("RFC 3461 §4: every malformed DSN value gets 501 5.5.4 naming the parameter") {
    struct Row {
      std::string command, reply;
    };

    const std::string bad = "501 5.5.4 Bad ";
    const std::vector<Row> rows = {
        {"MAIL FROM:<a@b.test> RET=ALL", bad + "RET parameter"},
        {"MAIL FROM:<a@b.test> RET", bad + "RET parameter"},
        {"MAIL FROM:<a@b.test> ENVID", bad + "ENVID parameter"},
        {"MAIL FROM:<a@b.test> ENVID=a+2b", bad + "ENVID parameter"}, // hex must be upper case
        {"MAIL FROM:<a@b.test> ENVID=a+4", bad + "ENVID parameter"},
        {"MAIL FROM:<a@b.test> ENVID=a+", bad + "ENVID parameter"},
        {"MAIL FROM:<a@b.test> ENVID=" + std::string(101, 'x'), bad + "ENVID parameter"},
        {"MAIL FROM:<a@b.test> RET=FULL RET=HDRS", "501 5.5.4 Duplicate RET parameter"},
        {"RCPT TO:<c@d.test> NOTIFY=NEVER,SUCCESS", bad + "NOTIFY parameter"},
        {"RCPT TO:<c@d.test> NOTIFY=SUCCESS,SUCCESS", bad + "NOTIFY parameter"},
        {"RCPT TO:<c@d.test> NOTIFY=SUCCESS,", bad + "NOTIFY parameter"},
        {"RCPT TO:<c@d.test> NOTIFY=ALWAYS", bad + "NOTIFY parameter"},
        {"RCPT TO:<c@d.test> NOTIFY", bad + "NOTIFY parameter"},
        {"RCPT TO:<c@d.test> ORCPT=rfc822", bad + "ORCPT parameter"},
        {"RCPT TO:<c@d.test> ORCPT=;c@d.test", bad + "ORCPT parameter"},
        {"RCPT TO:<c@d.test> ORCPT=rfc822;", bad + "ORCPT parameter"},
        {"RCPT TO:<c@d.test> ORCPT=rfc_822;c@d.test", bad + "ORCPT parameter"},
        {"RCPT TO:<c@d.test> ORCPT=rfc822;c+zz@d.test", bad + "ORCPT parameter"},
        {"RCPT TO:<c@d.test> ORCPT=rfc822;" + std::string(500, 'x'), bad + "ORCPT parameter"},
        {"RCPT TO:<c@d.test> NOTIFY=NEVER NOTIFY=NEVER", "501 5.5.4 Duplicate NOTIFY parameter"},
    };
    smtpd::Options o = with_dsn();
    o.max_command_line_bytes = 1000; // room for the over-long values
    for (const Row& row : rows) {
      CAPTURE(row.command);
      Session s(o);
      s.line("EHLO client.test");
      if (row.command.rfind("RCPT", 0) == 0) CHECK(s.line("MAIL FROM:<a@b.test>") == ok_mail);
      CHECK(s.line(row.command) == row.reply + "\r\n");
    }
  }

  TEST_CASE("RFC 3461 §4: with DSN a RCPT line may be 500 characters longer") {
    const std::string box = std::string(64, 'l') + "@" + std::string(59, 'd') + "." +
                            std::string(59, 'd') + "." + std::string(59, 'd') + ".test";
    const std::string rcpt =
        "RCPT TO:<" + box + "> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;" + box;
    REQUIRE(rcpt.size() + 2 > 512);
    Session dsn(with_dsn());
    dsn.line("EHLO client.test");
    CHECK(dsn.line("MAIL FROM:<a@b.test>") == ok_mail);
    CHECK(dsn.line(rcpt) == ok_rcpt);
    CHECK(dsn.line("NOOP " + std::string(1012 - 6, 'x')) ==
          "500 5.5.2 Line too long\r\n"); // 1013 octets: 512 + 500, no more
    Session plain;
    plain.line("EHLO client.test");
    CHECK(plain.line("MAIL FROM:<a@b.test>") == ok_mail);
    CHECK(plain.line("RCPT TO:<" + box + "> X=" + std::string(300, 'x')) ==
          "500 5.5.2 Line too long\r\n");
  }

  TEST_CASE("RFC 1869 §4.2: with DSN off its parameters are unknown: 555") {
    Session s;
    s.line("EHLO client.test");
    for (const char* p : {" RET=FULL", " ENVID=x"})
      CHECK(s.line("MAIL FROM:<a@b.test>"s + p) == unsupported);
    CHECK(s.line("MAIL FROM:<a@b.test>") == ok_mail);
    for (const char* p : {" NOTIFY=NEVER", " ORCPT=rfc822;c@d.test"})
      CHECK(s.line("RCPT TO:<c@d.test>"s + p) == unsupported);
    Session helo(with_dsn()); // and in a HELO session no parameter is known at all
    helo.line("HELO client.test");
    CHECK(helo.line("MAIL FROM:<a@b.test> RET=FULL") == "555 Unsupported MAIL/RCPT parameter\r\n");
  }

  // =============================================================================================
  // REQUIRETLS (RFC 8689), AUTH= (RFC 4954 §5), the user's parameters
  // =============================================================================================

  TEST_CASE("RFC 8689: REQUIRETLS is recorded inside TLS, refused outside it, unknown when off") {
    smtpd::Options o;
    o.requiretls = true;
    Session tls(o, tls_info());
    tls.transaction(" REQUIRETLS");
    CHECK(tls.line("BDAT 0 LAST") == queued);
    REQUIRE(tls.delivered.size() == 1);
    CHECK(tls.delivered[0].envelope.mail.requiretls);

    Session plain(o);
    plain.line("EHLO client.test");
    CHECK(plain.line("MAIL FROM:<a@b.test> REQUIRETLS") ==
          "530 5.7.10 REQUIRETLS needs a TLS session (RFC 8689 §2)\r\n");
    CHECK(plain.line("MAIL FROM:<a@b.test> REQUIRETLS=yes") == unsupported); // takes no value

    Session off({}, tls_info());
    off.line("EHLO client.test");
    CHECK(off.line("MAIL FROM:<a@b.test> REQUIRETLS") == unsupported);
  }

  TEST_CASE("RFC 4954 §5: AUTH= is decoded, trusted after AUTH only, else recorded as <>") {
    smtpd::Options o;
    o.auth_insecure = true;
    o.on_auth = [](const smtpd::SessionInfo&, const std::string&, const std::string& user,
                   const std::string& password,
                   const std::string&) { return user == "alice" && password == "pw"; };
    Session anonymous(o);
    anonymous.transaction(" AUTH=e+3Dmc2@example.com");
    CHECK(anonymous.line("BDAT 0 LAST") == queued);
    REQUIRE(anonymous.delivered.size() == 1);
    CHECK(anonymous.delivered[0].envelope.mail.auth == "<>");

    Session signed_in(o);
    signed_in.line("EHLO client.test");
    CHECK(signed_in.line("AUTH PLAIN AGFsaWNlAHB3") == "235 2.7.0 Authentication successful\r\n");
    CHECK(signed_in.line("MAIL FROM:<a@b.test> AUTH=e+3Dmc2@example.com") == ok_mail);
    CHECK(signed_in.line("RCPT TO:<c@d.test>") == ok_rcpt);
    CHECK(signed_in.line("BDAT 0 LAST") == queued);
    REQUIRE(signed_in.delivered.size() == 1);
    CHECK(signed_in.delivered[0].envelope.mail.auth == "e=mc2@example.com");

    for (const char* bad : {"AUTH=<a@b.test>", "AUTH=a+3d@b", "AUTH=nobody", "AUTH=<", "AUTH"}) {
      CAPTURE(bad);
      Session s(o);
      s.line("EHLO client.test");
      CHECK(s.line("MAIL FROM:<a@b.test> "s + bad) == "501 5.5.4 Bad AUTH parameter\r\n");
    }
  }

  TEST_CASE("the user's MAIL and RCPT keywords are accepted and passed on; others still 555") {
    smtpd::Options o;
    o.mail_parameters = {"XOORG"};
    o.rcpt_parameters = {"x-prio"};
    smtpd::Params mail_seen, rcpt_seen;
    o.on_mail = [&](const smtpd::SessionInfo&, const std::string&, const smtpd::Params& p) {
      mail_seen = p;
      return std::optional<smtpd::Reply>();
    };
    o.on_rcpt = [&](const smtpd::SessionInfo&, const std::string&, const smtpd::Params& p) {
      rcpt_seen = p;
      return std::optional<smtpd::Reply>();
    };
    Session s(o);
    s.line("EHLO client.test");
    CHECK(s.line("MAIL FROM:<a@b.test> XOORG=example.org") == ok_mail);
    CHECK(mail_seen == smtpd::Params{{"XOORG", "example.org"}});
    CHECK(s.line("RCPT TO:<c@d.test> X-PRIO=1") == ok_rcpt);
    CHECK(rcpt_seen == smtpd::Params{{"X-PRIO", "1"}});
    CHECK(s.line("RCPT TO:<e@f.test> XOORG=x") == unsupported); // a MAIL keyword only
    CHECK(s.line("RSET") == "250 2.0.0 Ok\r\n");
    CHECK(s.line("MAIL FROM:<a@b.test> XOTHER=1") == unsupported);
  }

} // TEST_SUITE("extensions")
