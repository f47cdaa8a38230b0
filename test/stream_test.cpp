// stream_test.cpp - Options::stream_handler: a message handed over in pieces as it arrives, with
// memory bounded by stream_chunk_bytes, and the reply still waiting for the sink's verdict.
#include "../smtpd.hpp"
#include "protocol_helpers.hpp"

#include <doctest/doctest.h>

#include <stdexcept>

namespace {

// Record - what one sink saw; it outlives the sink (the Protocol destroys sinks).
struct Record {
  std::vector<std::string> pieces;
  bool finished = false;
  bool destroyed = false;

  std::string all() const {
    std::string s;
    for (const std::string& p : pieces)
      s += p;
    return s;
  }
};

// Sink - appends to a Record; finish() answers `verdict`, write() may be told to throw.
class Sink : public smtpd::MessageSink {
public:
  Sink(Record& record, std::optional<smtpd::Reply> verdict, bool throw_on_write)
      : record_(record), verdict_(std::move(verdict)), throw_on_write_(throw_on_write) {}

  ~Sink() override { record_.destroyed = true; }

  void write(std::string_view piece) override {
    if (throw_on_write_) throw std::runtime_error("disk full");
    record_.pieces.emplace_back(piece);
  }

  std::optional<smtpd::Reply> finish() override {
    record_.finished = true;
    return verdict_;
  }

private:
  Record& record_;
  std::optional<smtpd::Reply> verdict_;
  bool throw_on_write_;
};

// Streamed - a Protocol whose stream_handler makes a Sink per message, recording into records.
struct Streamed {
  std::vector<Record> records;
  std::optional<smtpd::Reply> verdict;
  bool throw_on_write = false;
  smtpd::Options options;
  std::unique_ptr<smtpd::Protocol> protocol;

  explicit Streamed(std::size_t chunk, std::size_t max_bytes = 25 * 1024 * 1024) {
    records.reserve(16); // Sinks keep references into it
    options.hostname = "mx.test";
    options.stream_chunk_bytes = chunk;
    options.max_message_bytes = max_bytes;
    options.stream_handler = [this](const smtpd::SessionInfo&, const smtpd::Envelope&) {
      records.emplace_back();
      return std::make_unique<Sink>(records.back(), verdict, throw_on_write);
    };
    protocol = std::make_unique<smtpd::Protocol>(options, test::client_info());
    protocol->take_output();
  }

  std::string send(std::string_view bytes) {
    protocol->feed(bytes);
    return protocol->take_output();
  }
};

const std::string start = "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n";

// body - `lines` numbered lines of text, CRLF-terminated.
std::string body(int lines) {
  std::string s;
  for (int i = 0; i < lines; ++i)
    s += "line " + std::to_string(i) + " of the message\r\n";
  return s;
}

} // namespace

TEST_SUITE("stream") {

  TEST_CASE("stream_handler: the pieces are our Received header and the content, in order") {
    Streamed s(1000);
    s.send(start);
    std::string content = body(2000); // ~50 KB
    std::string out;
    for (std::size_t at = 0; at < content.size(); at += 1500) // like socket reads
      out += s.send(std::string_view(content).substr(at, 1500));
    CHECK(s.records.size() == 1);
    CHECK(s.records[0].pieces.size() > 10); // handed over while it arrived, not at the end
    CHECK_FALSE(s.records[0].finished);
    out += s.send(".\r\n");
    CHECK(out.find("250 2.0.0 Ok: queued as ") != std::string::npos);
    const Record& r = s.records[0];
    CHECK(r.finished);
    CHECK(r.destroyed);
    std::string all = r.all();
    CHECK(all.rfind("Received: from c.test ([192.0.2.1])", 0) == 0);
    CHECK(all.size() > content.size());
    CHECK(all.substr(all.size() - content.size()) == content);
    for (std::size_t i = 0; i < r.pieces.size(); ++i) {
      CHECK(r.pieces[i].size() <= 1000); // never more than stream_chunk_bytes
      if (i + 1 < r.pieces.size()) CHECK(r.pieces[i].size() == 1000); // and full until the last
    }
  }

  TEST_CASE("stream_handler: dot-stuffing is undone before the sink sees the content") {
    Streamed s(64);
    s.send(start + "..leading dot\r\n.\r\n");
    REQUIRE(s.records.size() == 1);
    std::string all = s.records[0].all();
    CHECK(all.substr(all.size() - 14) == ".leading dot\r\n");
  }

  TEST_CASE(
      "stream_handler: finish() decides the reply (RFC 5321 §4.1.1.4: 250 only if accepted)") {
    Streamed s(1000);
    s.verdict = smtpd::Reply{550, "5.7.1", "Rejected by content filter"};
    CHECK(s.send(start + "spam\r\n.\r\n").find("550 5.7.1 Rejected by content filter\r\n") !=
          std::string::npos);
    CHECK(s.records.at(0).finished);
  }

  TEST_CASE("stream_handler: an oversized message is abandoned (no finish) and refused with 552") {
    Streamed s(100, 1000);
    std::string out = s.send(start + body(200) + ".\r\nNOOP\r\n");
    CHECK(out.find("552 5.3.4") != std::string::npos);
    CHECK(out.find("250 2.0.0 Ok\r\n") != std::string::npos); // the NOOP: the session goes on
    CHECK_FALSE(s.records.at(0).finished);
    CHECK(s.records.at(0).destroyed);
    std::size_t seen = s.records[0].all().size();
    CHECK(seen < 1000 + 1200); // it stopped receiving pieces at the limit
  }

  TEST_CASE("stream_handler: a write() that throws gives 451 after the final dot; nothing leaks") {
    Streamed s(50);
    s.throw_on_write = true;
    std::string out = s.send(start + body(20) + ".\r\nMAIL FROM:<x@y.test>\r\n");
    CHECK(out.find("451 4.3.0") != std::string::npos);
    CHECK(out.find("250 2.1.0 Ok") != std::string::npos); // the next MAIL works
    CHECK_FALSE(s.records.at(0).finished);
    CHECK(s.records.at(0).destroyed);
  }

  TEST_CASE("stream_handler: throwing a Reply refuses DATA itself, and the transaction stays") {
    smtpd::Options o;
    o.hostname = "mx.test";
    o.stream_handler = [](const smtpd::SessionInfo&,
                          const smtpd::Envelope&) -> std::unique_ptr<smtpd::MessageSink> {
      throw smtpd::Reply{452, "4.3.1", "Insufficient system storage"};
    };
    smtpd::Protocol p(o, test::client_info());
    p.feed(start);
    std::string out = p.take_output();
    CHECK(out.find("452 4.3.1 Insufficient system storage\r\n") != std::string::npos);
    CHECK(out.find("354") == std::string::npos);
    CHECK_FALSE(p.in_data());
    p.feed("RSET\r\n");
    CHECK(p.take_output().find("250 2.0.0 Ok") != std::string::npos);
  }

  TEST_CASE("stream_handler: a client that vanishes mid-message abandons the sink") {
    Streamed s(100);
    s.send(start + body(30));
    s.protocol->disconnected();
    CHECK_FALSE(s.records.at(0).finished);
    CHECK(s.records.at(0).destroyed);
  }

  TEST_CASE("stream_handler goes alone: with handler or message_handler the Server refuses") {
    smtpd::Options o;
    o.stream_handler = [](const smtpd::SessionInfo&, const smtpd::Envelope&) {
      return std::unique_ptr<smtpd::MessageSink>();
    };
    o.handler = [](const smtpd::Peer&, const std::string&, const std::vector<std::string>&,
                   const std::string&) {};
    CHECK_THROWS_AS(smtpd::Server{o}, std::invalid_argument);
  }

} // TEST_SUITE("stream")
