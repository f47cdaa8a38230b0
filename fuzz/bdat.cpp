// fuzz/bdat.cpp - fuzz target "bdat": a session that speaks CHUNKING (RFC 3030), fed arbitrary
// bytes in arbitrary splits. The protocol target keeps CHUNKING off (its model counts messages
// by their 354); this one checks what BDAT adds: a chunk is exactly the octets its command
// announced, wherever the reads split, and nothing in it ever runs as a command.
//
// Input layout (the seeds in fuzz/corpus/bdat/ start with these two bytes):
//
//   byte 0  bit 0     strict
//           bits 1-2  max_message_bytes: 0 = 16, 1 = 100, 2 = 1000, 3 = 25 MiB
//           bit 3     binarymime
//           bit 4     dsn
//           bit 5     stream: the Session's data() returns a sink, which gets the message in
//                     pieces (else its message() gets it whole)
//           bit 6     the verdict refuses with 554 (else accepts)
//           bit 7     reject_unauthorized_pipelining (else off)
//   byte 1  bits 0-1  how the bytes are split (fuzz::Chunker: lines, N+1, whole, random)
//           bits 2-5  N
//           bits 6-7  stream_chunk_bytes: 1, 7, 64, 64 KiB
//   bytes 2.. the client's bytes
//
// The session is a Session object that refuses DATA (so every client byte is a command line or
// chunk octets) and recipients starting "bad". The model reads the session through a Tracer,
// which sees every command line, every chunk's octets (Tracer::chunk) and every reply, in
// dialogue order. Invariants, besides "no crash, no sanitizer report" and well-formed replies:
//   - the reply that ends a chunk comes after exactly as many octets as its BDAT line announced
//     (read independently here), unless the line was refused unread (500: too long, answered
//     before its LF, or bare CR/LF) or the session closed (421);
//   - "250 2.0.0 N octets received" ("250 N octets received" after HELO) says N, the size of
//     that chunk;
//   - a message handed over after BDAT ... LAST is the Received header and then exactly the
//     chunks of its transaction that were answered 250, joined, and the last one: the octets
//     delivered equal the sum of the accepted chunks;
//   - no message exceeds max_message_bytes; "queued as" replies equal the messages accepted.

#include "fuzz/fuzz.hpp"
#include "smtpd.hpp"

#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace {

// Model - what the tracer has seen, and the message the chunks so far make.
struct Model {
  bool in_bdat = false;
  std::optional<uint64_t> announced; // the size on the BDAT line being answered
  std::string pending;               // the octets of the chunk being read
  std::string accepted;              // the chunks of this transaction answered 250
  size_t delivered = 0, refused = 0, queued = 0;
  size_t max_bytes = 0;
};

// announced_size - the chunk size of a BDAT line, read here independently of the library: the
// digits after "BDAT "; nullopt when there are none or too many to be a size.
std::optional<uint64_t> announced_size(std::string_view line) {
  std::string_view rest = line.substr(5);
  uint64_t n = 0;
  size_t digits = 0;
  while (digits < rest.size() && rest[digits] >= '0' && rest[digits] <= '9') {
    if (n > (UINT64_MAX - 9) / 10) return std::nullopt;
    n = n * 10 + uint64_t(rest[digits++] - '0');
  }
  if (digits == 0) return std::nullopt;
  return n;
}

bool starts_with_ci(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    char c = s[i];
    if (c >= 'a' && c <= 'z') c = char(c - 'a' + 'A');
    if (c != prefix[i]) return false;
  }
  return true;
}

class ModelTracer : public smtpd::Tracer {
public:
  explicit ModelTracer(Model& m) : m_(m) {}

  // client - command lines (the session refuses DATA, so there is no other content here), in
  // pieces when a read split them: a line is judged once whole.
  void client(std::string_view bytes) override {
    line_.append(bytes.data(), bytes.size());
    if (line_.empty() || line_.back() != '\n') return;
    bool refused = std::exchange(partial_refused_, false); // too long: never ran
    mail_ = !refused && starts_with_ci(line_, "MAIL");
    if (!refused && starts_with_ci(line_, "BDAT ")) {
      m_.in_bdat = true;
      m_.announced = announced_size(line_);
      m_.pending.clear();
    }
    line_.clear();
  }

  void chunk(std::string_view bytes) override {
    FUZZ_CHECK(m_.in_bdat && !bytes.empty());
    m_.pending.append(bytes.data(), bytes.size());
  }

  // server - one reply. The one after a BDAT line ends its chunk, unless the line itself was
  // refused unread (500: too long, bare CR or LF) or the session closed (421).
  void server(std::string_view bytes) override {
    std::string_view text(bytes);
    int code = (bytes[0] - '0') * 100 + (bytes[1] - '0') * 10 + (bytes[2] - '0');
    if (!line_.empty()) partial_refused_ = true; // a reply before its LF: the line was refused
    if (text.find("queued as") != std::string_view::npos) ++m_.queued;
    if (mail_ && code == 250) m_.accepted.clear(); // a new transaction: MAIL was accepted
    mail_ = false;
    if (!m_.in_bdat) return;
    m_.in_bdat = false;
    if (code == 500 || code == 421) return;
    if (m_.announced) FUZZ_CHECK(m_.pending.size() == *m_.announced);
    if (text.find(" octets received") != std::string_view::npos) {
      std::string said = std::to_string(m_.pending.size()) + " octets received\r\n";
      bool esmtp = text.substr(0, 10) == "250 2.0.0 "; // no enhanced code in a HELO session
      FUZZ_CHECK(text.substr(esmtp ? 10 : 4) == said && text.substr(0, 4) == "250 ");
      m_.accepted += m_.pending;
    } else if (text.find("queued as") == std::string_view::npos) {
      m_.accepted.clear(); // a refused chunk fails its transaction
    }
  }

private:
  Model& m_;
  std::string line_;             // the command line being traced
  bool mail_ = false;            // the last whole line was a MAIL command, not yet answered
  bool partial_refused_ = false; // the line being traced was answered before its end
};

// check_delivery - a message handed over: after BDAT, the accepted chunks and the last one.
void check_delivery(Model& m, const smtpd::Envelope& e, const std::string& data) {
  FUZZ_CHECK(data.compare(0, 15, "Received: from ") == 0);
  size_t semi = data.find(";\r\n\t");
  FUZZ_CHECK(semi != std::string::npos);
  size_t end = data.find("\r\n", semi + 4);
  FUZZ_CHECK(end != std::string::npos);
  std::string_view content = std::string_view(data).substr(end + 2);
  FUZZ_CHECK(content.size() <= m.max_bytes);
  if (e.chunked) FUZZ_CHECK(content == m.accepted + m.pending);
  ++m.delivered;
}

class Sink : public smtpd::MessageSink {
public:
  Sink(Model& m, smtpd::Envelope e, bool refuse) : m_(m), e_(std::move(e)), refuse_(refuse) {}

  void write(std::string_view piece) override {
    FUZZ_CHECK(!piece.empty());
    data_.append(piece.data(), piece.size());
  }

  std::optional<smtpd::Reply> finish() override {
    check_delivery(m_, e_, data_);
    return verdict(m_, refuse_);
  }

  // verdict - accept, or refuse with 554 (counted).
  static std::optional<smtpd::Reply> verdict(Model& m, bool refuse) {
    if (!refuse) return std::nullopt;
    ++m.refused;
    return smtpd::Reply{554, "5.7.1", "No"};
  }

private:
  Model& m_;
  smtpd::Envelope e_;
  bool refuse_;
  std::string data_;
};

// BdatOnly - the session: DATA is refused (its content would be commands to the model), RCPT
// to "bad..." is refused, messages are streamed to a Sink or taken whole.
class BdatOnly : public smtpd::Session {
public:
  BdatOnly(Model& m, bool stream, bool refuse) : m_(m), stream_(stream), refuse_(refuse) {}

  std::optional<smtpd::Reply> rcpt(const smtpd::SessionInfo&, const smtpd::Envelope&,
                                   const std::string& to, const smtpd::RcptOptions&) override {
    if (to.compare(0, 3, "bad") == 0) return smtpd::Reply::no_such_user();
    return std::nullopt;
  }

  std::unique_ptr<smtpd::MessageSink> data(const smtpd::SessionInfo&,
                                           const smtpd::Envelope& e) override {
    if (!e.chunked) throw smtpd::Reply{554, "5.5.1", "DATA is off in this target"};
    if (!stream_) return nullptr;
    return std::make_unique<Sink>(m_, e, refuse_);
  }

  std::optional<smtpd::Reply> message(const smtpd::SessionInfo&, const smtpd::Envelope& e,
                                      const std::string& data) override {
    check_delivery(m_, e, data);
    return Sink::verdict(m_, refuse_);
  }

private:
  Model& m_;
  bool stream_, refuse_;
};

void set_options(smtpd::Options& o, Model& m, uint8_t b0, uint8_t b1) {
  static const size_t sizes[] = {16, 100, 1000, 25 * 1024 * 1024};
  static const size_t pieces[] = {1, 7, 64, 64 * 1024};
  o.hostname = "mx.example.org";
  o.strict = b0 & 1;
  o.max_message_bytes = m.max_bytes = sizes[(b0 >> 1) & 3];
  o.binarymime = b0 & 8;
  o.dsn = b0 & 16;
  o.stream_chunk_bytes = pieces[b1 >> 6];
  o.reject_unauthorized_pipelining = b0 & 128;
  bool stream = b0 & 32, refuse = b0 & 64;
  o.new_session = [&m, stream, refuse](const smtpd::SessionInfo&) {
    return std::make_unique<BdatOnly>(m, stream, refuse);
  };
  o.new_tracer = [&m](const smtpd::SessionInfo&) { return std::make_unique<ModelTracer>(m); };
}

} // namespace

int fuzz_bdat(const uint8_t* data, size_t size) {
  fuzz::Bytes in{data, size};
  uint8_t b0 = in.byte(), b1 = in.byte();
  Model m;
  smtpd::Options o;
  set_options(o, m, b0, b1);
  smtpd::SessionInfo info;
  info.peer.ip = "192.0.2.1";
  info.peer.port = 4242;
  {
    smtpd::Protocol p(o, info);
    fuzz::parse_replies(p.take_output());
    unsigned n = (b1 >> 2) & 15;
    fuzz::Chunker chunker = fuzz::Chunker::of(b1 & 3, n);
    std::string_view client = in.rest();
    while (!client.empty() && !p.should_close()) {
      p.feed(chunker.take(client));
      fuzz::parse_replies(p.take_output());
      FUZZ_CHECK(m.queued + m.refused == m.delivered);
    }
    if (!p.should_close()) p.disconnected(); // a partial message is dropped
    FUZZ_CHECK(m.queued + m.refused == m.delivered);
  }
  return 0;
}

SMTPD_FUZZ_ENTRY(fuzz_bdat)
