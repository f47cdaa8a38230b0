// fuzz/lmtp.cpp - fuzz target "lmtp": verdicts per recipient (RecipientReplies), in LMTP
// (RFC 2033 §4.2: one reply per accepted recipient after DATA's dot or BDAT LAST) and in SMTP
// (folded into one reply), fed arbitrary bytes in arbitrary splits. The verdict on each
// recipient is read off its address, so the model below knows, independently of the library,
// which replies every message must produce.
//
// Input layout (the seeds in fuzz/corpus/lmtp/ start with these two bytes):
//
//   byte 0  bit 0     lmtp (else SMTP, which folds the verdicts)
//           bits 1-2  max_message_bytes: 0 = 16, 1 = 100, 2 = 1000, 3 = 25 MiB
//           bit 3     strict
//           bit 4     stream: the Session's data() returns a sink, whose finish_per_recipient()
//                     gives the verdicts (else its message_per_recipient() does)
//           bit 5     reject_unauthorized_pipelining (else off)
//           bits 6-7  how the bytes are split (fuzz::Chunker: lines, N+1, whole, random)
//   byte 1  bits 0-3  N
//           bits 4-5  max_recipients: 1, 2, 5, 100
//           bits 6-7  hard_error_limit: 1, 3, 10, 20
//   bytes 2.. the client's bytes
//
// The verdict on a recipient, by the first letter of its address: 'f' 452 "fuzz full", 'n' 550
// "fuzz unknown", 'g' 421 "fuzz going", 'c' 250 "fuzz custom"; anything else delivers (nullopt,
// the server's "queued as"). And for the whole message, if any recipient starts with: 'w' a
// list one short (a bug: 451 for all), 't' a thrown Reply 554 "fuzz thrown", 'x' a thrown
// std::runtime_error (451). Invariants, besides "no crash, no sanitizer report" and well-formed
// replies: after every read, the replies with each of those texts, the "queued as" replies and
// the 451s equal what the model expects from the verdicts given so far (LMTP: each verdict
// once; SMTP: the folded one once per message); the session object sees at least one
// recipient, and a message that begins with our Received header.

#include "fuzz/fuzz.hpp"
#include "smtpd.hpp"

#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

// Expected - how many replies of each kind the verdicts so far call for, by their text.
struct Expected {
  std::map<std::string, size_t> by_text; // "fuzz full", "queued as", "Local error"...
};

// verdict_of - a recipient's verdict, by the first letter of its address.
std::optional<smtpd::Reply> verdict_of(const std::string& to) {
  switch (to.empty() ? ' ' : to[0]) {
  case 'f': return smtpd::Reply{452, "4.2.2", "fuzz full"};
  case 'n': return smtpd::Reply{550, "5.1.1", "fuzz unknown"};
  case 'g': return smtpd::Reply{421, "4.3.2", "fuzz going"};
  case 'c': return smtpd::Reply{250, "2.0.0", "fuzz custom"};
  default: return std::nullopt;
  }
}

bool any_starts(const std::vector<std::string>& to, char c) {
  for (const std::string& t : to)
    if (!t.empty() && t[0] == c) return true;
  return false;
}

// text_of - the text a reply is counted under: "queued as" for the server's default.
std::string text_of(const std::optional<smtpd::Reply>& r) {
  return r ? r->text : "queued as";
}

// rank - the fold's order, written here again: 421, then other 4xx, then 5xx, then delivery.
int rank(const std::optional<smtpd::Reply>& r) {
  if (!r) return 0;
  return r->code == 421 ? 3 : r->code / 100 == 4 ? 2 : r->code / 100 == 5 ? 1 : 0;
}

// Model - the verdicts, and what they must produce.
struct Model {
  bool lmtp = false;
  Expected expected;
  size_t messages = 0;

  // verdicts - answer a message to `to`, and expect its replies.
  smtpd::RecipientReplies verdicts(const std::vector<std::string>& to) {
    FUZZ_CHECK(!to.empty());
    ++messages;
    size_t replies = lmtp ? to.size() : 1;
    if (any_starts(to, 't')) {
      expected.by_text["fuzz thrown"] += replies;
      throw smtpd::Reply{554, "5.6.0", "fuzz thrown"};
    }
    if (any_starts(to, 'x')) {
      expected.by_text["Local error"] += replies;
      throw std::runtime_error("fuzz exception");
    }
    smtpd::RecipientReplies r;
    for (const std::string& t : to)
      r.push_back(verdict_of(t));
    if (any_starts(to, 'w')) {
      expected.by_text["Local error"] += replies;
      r.pop_back();
      return r;
    }
    if (lmtp) {
      for (const auto& v : r)
        ++expected.by_text[text_of(v)];
    } else {
      const std::optional<smtpd::Reply>* chosen = &r[0];
      for (const auto& v : r)
        if (rank(v) > rank(*chosen)) chosen = &v;
      ++expected.by_text[text_of(*chosen)];
    }
    return r;
  }
};

// Sink - collects a streamed message; its verdicts are the model's.
class Sink : public smtpd::MessageSink {
public:
  explicit Sink(Model& m) : m_(m) {}
  void write(std::string_view piece) override { data_.append(piece); }
  std::optional<smtpd::Reply> finish() override {
    FUZZ_CHECK(false); // the Protocol asks finish_per_recipient()
    return std::nullopt;
  }
  smtpd::RecipientReplies finish_per_recipient(const smtpd::Envelope& e) override {
    FUZZ_CHECK(data_.rfind("Received: ", 0) == 0);
    return m_.verdicts(e.to);
  }

private:
  Model& m_;
  std::string data_;
};

// FuzzSession - streams or buffers, as byte 0 bit 4 says.
class FuzzSession : public smtpd::Session {
public:
  FuzzSession(Model& m, bool stream) : m_(m), stream_(stream) {}
  std::unique_ptr<smtpd::MessageSink> data(const smtpd::SessionInfo&,
                                           const smtpd::Envelope&) override {
    if (!stream_) return nullptr;
    return std::make_unique<Sink>(m_);
  }
  smtpd::RecipientReplies message_per_recipient(const smtpd::SessionInfo&,
                                                const smtpd::Envelope& e,
                                                const std::string& data) override {
    FUZZ_CHECK(data.rfind("Received: ", 0) == 0);
    return m_.verdicts(e.to);
  }

private:
  Model& m_;
  bool stream_;
};

// Seen - the replies counted by text so far.
struct Seen {
  std::map<std::string, size_t> by_text;

  void count(std::string_view out) {
    for (const fuzz::ReplyLine& l : fuzz::parse_replies(out)) {
      if (!l.last) continue;
      for (const char* text : {"fuzz full", "fuzz unknown", "fuzz going", "fuzz custom",
                               "fuzz thrown", "queued as", "Local error"})
        if (l.text.find(text) != std::string_view::npos) ++by_text[text];
    }
  }
};

void check(const Model& m, const Seen& seen) {
  for (const char* text : {"fuzz full", "fuzz unknown", "fuzz going", "fuzz custom",
                           "fuzz thrown", "queued as", "Local error"}) {
    auto e = m.expected.by_text.find(text);
    auto s = seen.by_text.find(text);
    FUZZ_CHECK((e == m.expected.by_text.end() ? 0 : e->second) ==
               (s == seen.by_text.end() ? 0 : s->second));
  }
}

} // namespace

int fuzz_lmtp(const uint8_t* data, size_t size) {
  fuzz::Bytes in{data, size};
  uint8_t b0 = in.byte(), b1 = in.byte();
  static const size_t max_bytes[] = {16, 100, 1000, 25 * 1024 * 1024};
  static const size_t recipients[] = {1, 2, 5, 100};
  static const size_t error_limits[] = {1, 3, 10, 20};
  Model m;
  m.lmtp = b0 & 1;
  smtpd::Options o;
  o.hostname = "mx.test";
  o.lmtp = m.lmtp;
  o.max_message_bytes = max_bytes[(b0 >> 1) & 3];
  o.strict = b0 & 8;
  o.reject_unauthorized_pipelining = b0 & 32;
  o.max_recipients = recipients[(b1 >> 4) & 3];
  o.hard_error_limit = error_limits[(b1 >> 6) & 3];
  o.stream_chunk_bytes = 7;
  bool stream = b0 & 16;
  o.new_session = [&](const smtpd::SessionInfo&) {
    return std::make_unique<FuzzSession>(m, stream);
  };
  smtpd::SessionInfo info;
  info.peer.ip = "192.0.2.1";
  info.peer.port = 4242;
  Seen seen;
  {
    smtpd::Protocol p(o, info);
    seen.count(p.take_output());
    unsigned n = b1 & 15;
    fuzz::Chunker chunker{(b0 >> 6) & 3, n, 0x9E3779B9u ^ n};
    std::string_view client = in.rest();
    while (!client.empty() && !p.should_close()) {
      size_t len = chunker.next(client);
      if (len > client.size()) len = client.size();
      p.feed(client.substr(0, len));
      client.remove_prefix(len);
      seen.count(p.take_output());
      check(m, seen);
    }
    if (!p.should_close()) p.disconnected();
    seen.count(p.take_output());
    check(m, seen);
  }
  return 0;
}

SMTPD_FUZZ_ENTRY(fuzz_lmtp)
