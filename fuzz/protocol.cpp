// fuzz/protocol.cpp - fuzz target "protocol": a whole smtpd::Protocol session fed arbitrary
// bytes in arbitrary chunk splits, with the options picked from the first three input bytes.
//
// Input layout (the seeds in fuzz/corpus/protocol/ start with these three bytes):
//
//   byte 0  bit 0     strict
//           bits 1-2  max_message_bytes: 0 = 16, 1 = 100, 2 = 1000, 3 = 25 MiB
//           bit 3     tls_cert_file = "dummy.pem": STARTTLS offered (the Protocol never loads it)
//           bit 4     tls_required
//           bit 5     AUTH configured: on_auth (only alice/wonderland) and auth_secret
//           bit 6     auth_insecure
//           bit 7     auth_required
//   byte 1  bits 0-1  max_recipients: 0 = 1, 1 = 2, 2 = 5, 3 = 100
//           bits 2-3  hard_error_limit: 0 = 1, 1 = 3, 2 = 10, 3 = 20
//           bits 4-6  the message handler: 0 Handler accepts; 1 Handler throws Reply 550;
//                     2 Handler throws std::runtime_error (451); 3 MessageHandler returns
//                     nullopt; 4 MessageHandler returns Reply 250 "custom"; 5 MessageHandler
//                     returns Reply 452; 6 none set (accept and drop); 7 Handler accepts, and
//                     on_helo, on_mail, on_rcpt refuse names starting "bad" (on_helo and
//                     on_rcpt throw std::runtime_error for names starting "throw")
//           bit 7     the client is 2001:db8::1 (else 192.0.2.1), and the session ends with
//                     timeout() (else shutting_down()) if still open
//   byte 2  bits 0-1  chunking: 0 = one line per feed (split after each LF), 1 = chunks of N+1
//                     bytes (N = 0: one byte at a time), 2 = everything in one feed,
//                     3 = chunk lengths 1..64 from a xorshift generator seeded with N
//           bits 2-5  N
//           bits 6-7  on_connect: 0 or 1 = unset, 2 = refuses with 554 (then only QUIT),
//                     3 = refuses with a 4xx (421 and close)
//   byte 3  bit 0     reject_unauthorized_pipelining off (default on: a burst before EHLO
//                     gets 554 and close)
//           bits 1-2  junk_command_limit: 0 = 1, 1 = 3, 2 = 10, 3 = 100
//           bits 3-4  soft_error_limit: 0 = 0, 1 = 1, 2 = 3, 3 = 10
//           bits 5-7  unused (0 in the seeds; bit 5 once chose the early-talker refusal, which
//                     now happens in the Connection, before any Protocol exists)
//   bytes 4.. the client's bytes, fed to the Protocol
//
// When starttls_requested() becomes true the rest of that chunk has been dropped (RFC 3207
// §4.2); the target calls tls_started("TLSv1.3", "TLS_AES_128_GCM_SHA256", "") and goes on.
//
// Invariants checked, besides "no crash, no sanitizer report":
//   - all output is well-formed replies (fuzz::parse_replies), and equals what log_write saw;
//   - the handler runs at most once per 354 queued, never before TLS when tls_required, never
//     unauthenticated when auth_required, with 1..max_recipients recipients and addresses
//     free of CR, LF and NUL;
//   - "250 ... queued as" replies == handler calls that accepted by default, at every moment;
//   - the handler's data is our Received header (no forged line: every CR LF inside it is
//     followed by a TAB) then at most max_message_bytes of content, empty or ending in CRLF;
//     in strict mode the content has no bare CR or LF and no line over 1000 octets;
//   - a 221 or 421 closes (should_close()); the session closes only with a 221, 421 or 554
//     (HTTP verb, unauthorized pipelining) that is the last reply, and nothing
//     is output afterwards, whatever is fed;
//   - idle() is never true in DATA, after close or with STARTTLS pending; the reply delay is
//     0, auth_failure_delay or error_delay; auth_user is "" or "alice"; STARTTLS is only
//     pending after a 220 that ended the output, and only when it was offered.

#include "fuzz/fuzz.hpp"
#include "smtpd.hpp"

#include <optional>
#include <stdexcept>

namespace {

struct Run {
  smtpd::Options o;
  const smtpd::Protocol* p = nullptr;
  size_t opened = 0;         // 354 replies queued
  size_t delivered = 0;      // handler calls
  size_t accepted = 0;       // handler calls that accepted with the default reply
  size_t queued = 0;         // "250 ... queued as" replies queued
  bool closed_reply = false; // a 221 or 421 was queued
  bool was_closed = false;   // should_close() at the end of the previous feed
  bool no_handler = false;   // no handler set: every message is accepted (and dropped) unseen
  std::string logged;        // what log_write saw since the last take_output(), with CRLFs
};

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

void check_address(const std::string& a) {
  FUZZ_CHECK(a.find_first_of(std::string("\r\n\0", 3)) == std::string::npos);
}

// check_message - the invariants of one handler call.
void check_message(Run& r, const smtpd::SessionInfo& s, const std::string& from,
                   const std::vector<std::string>& to, const std::string& data) {
  FUZZ_CHECK(r.delivered < r.opened); // at most one message per 354
  ++r.delivered;
  FUZZ_CHECK(!to.empty() && to.size() <= r.o.max_recipients);
  check_address(from);
  for (const std::string& a : to)
    check_address(a);
  if (r.o.tls_required) FUZZ_CHECK(s.tls);
  if (r.o.auth_required) FUZZ_CHECK(!s.auth_user.empty());
  FUZZ_CHECK(s.auth_user.empty() || s.auth_user == "alice");

  // Our Received header: its last line is "\t<date>" after ";\r\n". Client text inside it is
  // sanitised, so every CR LF in it is followed by a TAB (a continuation), up to its end.
  FUZZ_CHECK(starts_with(data, "Received: from "));
  size_t semi = data.find(";\r\n\t");
  FUZZ_CHECK(semi != std::string::npos);
  size_t end = data.find("\r\n", semi + 4);
  FUZZ_CHECK(end != std::string::npos);
  end += 2;
  for (size_t i = 0; i < end; ++i) {
    if (data[i] == '\r') FUZZ_CHECK(data[i + 1] == '\n' && (i + 2 == end || data[i + 2] == '\t'));
    if (data[i] == '\n') FUZZ_CHECK(i > 0 && data[i - 1] == '\r');
  }
  std::string_view content = std::string_view(data).substr(end);
  FUZZ_CHECK(content.size() <= r.o.max_message_bytes);
  FUZZ_CHECK(content.empty() ||
             (content.size() >= 2 && content.substr(content.size() - 2) == "\r\n"));
  if (r.o.strict) { // no bare CR or LF, no line over 1000 octets with its CRLF
    size_t line_start = 0;
    for (size_t i = 0; i < content.size(); ++i) {
      if (content[i] == '\r') FUZZ_CHECK(i + 1 < content.size() && content[i + 1] == '\n');
      if (content[i] == '\n') {
        FUZZ_CHECK(i > 0 && content[i - 1] == '\r');
        FUZZ_CHECK(i + 1 - line_start <= 1000);
        line_start = i + 1;
      }
    }
  }
}

// on_log_write - every reply line as it is queued: count what the invariants need, in order.
void on_log_write(Run& r, std::string_view line) {
  FUZZ_CHECK(!r.closed_reply); // nothing after 221 or 421
  r.logged.append(line.data(), line.size());
  r.logged += "\r\n";
  if (starts_with(line, "354 ")) ++r.opened;
  if (starts_with(line, "250") && line.find("queued as") != std::string_view::npos) {
    ++r.queued;
    if (r.no_handler) ++r.accepted, ++r.delivered;
    FUZZ_CHECK(r.queued <= r.accepted && r.delivered <= r.opened);
  }
  if (starts_with(line, "221 ") || starts_with(line, "421 ")) r.closed_reply = true;
}

// after_feed - take the output and check everything that must hold between feeds.
std::vector<fuzz::ReplyLine> after_feed(Run& r, smtpd::Protocol& p) {
  std::string out = p.take_output();
  FUZZ_CHECK(!p.has_output());
  std::vector<fuzz::ReplyLine> lines = fuzz::parse_replies(out);
  FUZZ_CHECK(out == r.logged);
  r.logged.clear();
  if (r.was_closed) FUZZ_CHECK(out.empty());
  if (r.closed_reply) FUZZ_CHECK(p.should_close());
  if (!r.was_closed && p.should_close()) {
    FUZZ_CHECK(!lines.empty());
    int code = lines.back().code;
    FUZZ_CHECK(code == 221 || code == 421 || code == 554);
  }
  r.was_closed = p.should_close();
  FUZZ_CHECK(r.queued == r.accepted);
  FUZZ_CHECK(r.delivered <= r.opened);
  if (p.idle()) FUZZ_CHECK(!p.in_data() && !p.should_close() && !p.starttls_requested());
  std::chrono::milliseconds delay = p.take_reply_delay();
  FUZZ_CHECK(delay.count() == 0 || delay == r.o.auth_failure_delay || delay == r.o.error_delay);
  FUZZ_CHECK(p.envelope().to.size() <= r.o.max_recipients);
  const std::string& user = p.session().auth_user;
  FUZZ_CHECK(user.empty() || user == "alice");
  if (p.starttls_requested()) {
    FUZZ_CHECK(!r.o.tls_cert_file.empty());
    FUZZ_CHECK(!lines.empty() && lines.back().code == 220); // the rest was dropped
    FUZZ_CHECK(!p.session().tls && !p.should_close());
    p.tls_started("TLSv1.3", "TLS_AES_128_GCM_SHA256", "");
    FUZZ_CHECK(p.session().tls && !p.starttls_requested() && !p.has_output());
    FUZZ_CHECK(p.session().helo.empty() && p.session().auth_user.empty());
    FUZZ_CHECK(p.envelope().to.empty() && p.envelope().from.empty());
  }
  return lines;
}

// Chunker - the lengths the client's bytes are fed in.
struct Chunker {
  int mode;
  unsigned n;
  uint32_t state;

  size_t next(std::string_view rest) {
    switch (mode) {
    case 0: {
      size_t lf = rest.find('\n');
      return lf == std::string_view::npos ? rest.size() : lf + 1;
    }
    case 1: return n + 1;
    case 2: return rest.size();
    default:
      state ^= state << 13;
      state ^= state >> 17;
      state ^= state << 5;
      return 1 + state % 64;
    }
  }
};

} // namespace

int fuzz_protocol(const uint8_t* data, size_t size) {
  fuzz::Bytes in{data, size};
  uint8_t b0 = in.byte(), b1 = in.byte(), b2 = in.byte(), b3 = in.byte();

  Run r;
  smtpd::Options& o = r.o;
  o.hostname = "mx.example.org";
  o.appname = "fuzz";
  o.strict = b0 & 1;
  static const size_t max_bytes[] = {16, 100, 1000, 25u << 20};
  o.max_message_bytes = max_bytes[b0 >> 1 & 3];
  if (b0 & 8) o.tls_cert_file = "dummy.pem";
  o.tls_required = b0 & 16;
  if (b0 & 32) {
    o.on_auth = [](const smtpd::SessionInfo&, const std::string&, const std::string& user,
                   const std::string& password,
                   const std::string&) { return user == "alice" && password == "wonderland"; };
    o.auth_secret = [](const smtpd::SessionInfo&,
                       const std::string& user) -> std::optional<std::string> {
      if (user == "alice") return std::string("wonderland");
      return std::nullopt;
    };
  }
  o.auth_insecure = b0 & 64;
  o.auth_required = b0 & 128;
  static const size_t recipients[] = {1, 2, 5, 100};
  o.max_recipients = recipients[b1 & 3];
  static const size_t error_limits[] = {1, 3, 10, 20};
  o.hard_error_limit = error_limits[b1 >> 2 & 3];
  o.reject_unauthorized_pipelining = !(b3 & 1);
  static const size_t junk_limits[] = {1, 3, 10, 100};
  o.junk_command_limit = junk_limits[b3 >> 1 & 3];
  static const size_t soft_limits[] = {0, 1, 3, 10};
  o.soft_error_limit = soft_limits[b3 >> 3 & 3];
  o.error_delay = std::chrono::milliseconds(333);
  o.auth_failure_delay = std::chrono::milliseconds(1000);

  int handler_mode = b1 >> 4 & 7;
  auto plain_handler = [&r](const smtpd::Peer&, const std::string& from,
                            const std::vector<std::string>& to, const std::string& message) {
    check_message(r, r.p->session(), from, to, message);
    ++r.accepted;
  };
  switch (handler_mode) {
  case 0:
  case 7: o.handler = plain_handler; break;
  case 1:
  case 2:
    o.handler = [&r, handler_mode](const smtpd::Peer&, const std::string& from,
                                   const std::vector<std::string>& to, const std::string& message) {
      check_message(r, r.p->session(), from, to, message);
      if (handler_mode == 1) throw smtpd::Reply(550, "5.7.1", "Refused by content filter");
      throw std::runtime_error("handler failure");
    };
    break;
  case 3:
  case 4:
  case 5:
    o.message_handler = [&r,
                         handler_mode](const smtpd::SessionInfo& s, const smtpd::Envelope& e,
                                       const std::string& message) -> std::optional<smtpd::Reply> {
      check_message(r, s, e.from, e.to, message);
      if (handler_mode == 4) return smtpd::Reply(250, "2.0.0", "custom");
      if (handler_mode == 5) return smtpd::Reply(452, "4.3.1", "Insufficient storage");
      ++r.accepted;
      return std::nullopt;
    };
    break;
  default: r.no_handler = true; break; // 6: messages are accepted and dropped
  }
  if (handler_mode == 7) {
    auto bad = [](const std::string& s) { return s.compare(0, 3, "bad") == 0; };
    o.on_helo = [bad](const smtpd::SessionInfo&,
                      const std::string& name) -> std::optional<smtpd::Reply> {
      if (name.compare(0, 5, "throw") == 0) throw std::runtime_error("helo hook failure");
      if (bad(name)) return smtpd::Reply(550, "5.7.1", "Go away\nReally");
      return std::nullopt;
    };
    o.on_mail = [bad](const smtpd::SessionInfo&, const std::string& from,
                      const smtpd::Params&) -> std::optional<smtpd::Reply> {
      if (bad(from)) return smtpd::Reply(550, "5.1.8", "Bad sender");
      return std::nullopt;
    };
    o.on_rcpt = [bad](const smtpd::SessionInfo&, const std::string& to,
                      const smtpd::Params&) -> std::optional<smtpd::Reply> {
      if (to.compare(0, 5, "throw") == 0) throw std::runtime_error("rcpt hook failure");
      if (bad(to)) return smtpd::Reply(450, "4.2.0", "Mailbox busy");
      return std::nullopt;
    };
  }
  int connect_mode = b2 >> 6;
  if (connect_mode >= 2)
    o.on_connect = [connect_mode](const smtpd::SessionInfo&) -> std::optional<smtpd::Reply> {
      if (connect_mode == 2) return smtpd::Reply(554, "5.7.1", "No service for you");
      return smtpd::Reply(450, "4.7.1", "Try later");
    };
  o.log_write = [&r](const smtpd::Peer&, std::string_view line) { on_log_write(r, line); };
  if (b1 & 128) o.log_read = [](const smtpd::Peer&, std::string_view) {};

  smtpd::SessionInfo info;
  info.peer.ip = (b1 & 128) ? "2001:db8::1" : "192.0.2.1";
  info.peer.port = 4242;
  smtpd::Protocol p(o, info);
  r.p = &p;

  std::vector<fuzz::ReplyLine> greeting = after_feed(r, p);
  FUZZ_CHECK(greeting.size() == 1);
  int expected = connect_mode == 2 ? 554 : connect_mode == 3 ? 421 : 220;
  FUZZ_CHECK(greeting[0].code == expected);

  Chunker chunker{b2 & 3, unsigned(b2 >> 2 & 15), 0x9E3779B9u ^ unsigned(b2 >> 2 & 15)};
  std::string_view client = in.rest();
  while (!client.empty()) {
    size_t n = chunker.next(client);
    if (n > client.size()) n = client.size();
    p.feed(client.substr(0, n));
    client.remove_prefix(n);
    after_feed(r, p);
  }

  if (!p.should_close()) {
    if (b1 & 128)
      p.timeout();
    else
      p.shutting_down();
    std::vector<fuzz::ReplyLine> last = after_feed(r, p);
    FUZZ_CHECK(last.size() == 1 && last[0].code == 421);
  }
  p.feed("NOOP\r\nQUIT\r\n");
  after_feed(r, p);
  FUZZ_CHECK(p.should_close());
  return 0;
}

SMTPD_FUZZ_ENTRY(fuzz_protocol)
