// fuzz/protocol.cpp - fuzz target "protocol": a whole smtpd::Protocol session fed arbitrary
// bytes in arbitrary chunk splits, with the options picked from the first four input bytes.
// The session's user code is either the hooks and handlers of Options (hook mode) or a Session
// object made by Options::new_session (session mode, byte 3 bit 5); never both, as Server
// refuses that.
//
// Input layout (the seeds in fuzz/corpus/protocol/ start with these four bytes):
//
//   byte 0  bit 0     strict
//           bits 1-2  max_message_bytes: 0 = 16, 1 = 100, 2 = 1000, 3 = 25 MiB
//           bit 3     tls_cert_file = "dummy.pem": STARTTLS offered (the Protocol never loads it)
//           bit 4     tls_required
//           bit 5     AUTH configured: on_auth (only alice/wonderland) and auth_secret; in
//                     session mode the object's auth_mechanisms, check_password and secret
//                     (see below)
//           bit 6     auth_insecure
//           bit 7     auth_required
//   byte 1  bits 0-1  max_recipients: 0 = 1, 1 = 2, 2 = 5, 3 = 100
//           bits 2-3  hard_error_limit: 0 = 1, 1 = 3, 2 = 10, 3 = 20
//           bits 4-6  the message handler: 0 Handler accepts; 1 Handler throws Reply 550;
//                     2 Handler throws std::runtime_error (451); 3 MessageHandler returns
//                     nullopt; 4 MessageHandler returns Reply 250 "custom"; 5 MessageHandler
//                     returns Reply 452; 6 none set (accept and drop); 7 Handler accepts, and
//                     on_helo, on_mail, on_rcpt refuse names starting "bad" (on_helo and
//                     on_rcpt throw std::runtime_error for names starting "throw"). In session
//                     mode: the object's behaviour (see below)
//           bit 7     the client is 2001:db8::1 (else 192.0.2.1); and a session still open
//                     after the client's bytes ends with timeout() (else shutting_down()), or,
//                     when byte 3 bit 7 is set, with disconnected() (else the Protocol is
//                     destroyed)
//   byte 2  bits 0-1  chunking: 0 = one line per feed (split after each LF), 1 = chunks of N+1
//                     bytes (N = 0: one byte at a time), 2 = everything in one feed,
//                     3 = chunk lengths 1..64 from a xorshift generator seeded with N
//           bits 2-5  N
//           bits 6-7  on_connect: 0 or 1 = unset, 2 = refuses with 554 (then only QUIT),
//                     3 = refuses with a 4xx (421 and close); in session mode new_session
//                     refuses the same way (throws the Reply) instead of making the object
//   byte 3  bit 0     reject_unauthorized_pipelining off (default on: a burst before EHLO
//                     gets 554 and close)
//           bits 1-2  junk_command_limit: 0 = 1, 1 = 3, 2 = 10, 3 = 100
//           bits 3-4  soft_error_limit: 0 = 0, 1 = 1, 2 = 3, 3 = 10
//           bit 5     session mode: Options::new_session makes a FuzzSession, and no hook,
//                     handler, on_auth or auth_secret is set (this bit once chose the
//                     early-talker refusal, which now happens in the Connection)
//           bit 6     session mode (ignored in hook mode): data() returns a sink, so the
//                     message is streamed in pieces of stream_chunk_bytes (2^N for N < 8, else
//                     the default 64 KiB); clear: data() returns nullptr, message() gets it whole
//           bit 7     both modes: the client goes away; a session still open after its bytes
//                     ends with disconnected() or the Protocol's destruction (byte 1 bit 7)
//   bytes 4.. the client's bytes, fed to the Protocol
//
// Session mode: the FuzzSession behaves as the hooks do for the same bits.
//   byte 0 bit 5      auth_mechanisms() is {CRAM-MD5, X-UNKNOWN, PLAIN, LOGIN, PLAIN}, so EHLO
//                     must offer "CRAM-MD5 PLAIN LOGIN" (or "CRAM-MD5" where PLAIN and LOGIN are
//                     not allowed yet); check_password() and secret() know alice/wonderland.
//                     Clear: nothing is offered (the defaults).
//   byte 1 bits 4-6   the verdict of message() (or of the sink's finish()): 0 accept; 1 throw
//                     Reply 550; 2 throw std::runtime_error (451); 3 return Reply 421 (the
//                     session closes after the final dot); 4 return Reply 250 "custom";
//                     5 return Reply 452 (streaming: the sink's first write() throws Reply 452
//                     instead, and finish() is never called); 6 accept, and command() refuses
//                     VRFY (502), throws for HELP (451), closes on ETRN (421), and passes NOOP
//                     with a 2xx (it still runs); 7 accept, and hello(), mail(), rcpt() refuse
//                     names starting "bad" (hello() and rcpt() throw std::runtime_error for
//                     names starting "throw")
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
//     pending after a 220 that ended the output, and only when it was offered;
//   - disconnected() outputs nothing, closes, and hands no partial message over.
// In session mode, besides all of the above (message() and finish() are the handler calls):
//   - new_session is called once, before any output; the object is destroyed only after
//     close(), and by the time the Protocol is;
//   - close() is called exactly once, when the session closes (not later than the call that
//     closed it), and nothing happens after it: no method, no sink call, no reply. Its
//     SessionEnd fits: quit right after the 221 to QUIT; timeout or shutdown inside timeout()
//     or shutting_down(); refused after a closing 421 or 554 of the Protocol's own; client_gone
//     inside disconnected() or the Protocol's destructor;
//   - command() sees every command line (AUTH's initial response masked as "****"), one at a
//     time: the next only after the last one's reply; a line it refuses does not run (its
//     reply is the refusal); hello(), mail(), rcpt(), data() run only inside HELO/EHLO, MAIL,
//     RCPT, DATA, and auth_mechanisms() inside EHLO, MAIL or AUTH;
//   - reset() is called exactly once inside each RSET and HELO/EHLO answered 250, right after
//     each final-dot reply, and inside tls_started(), and never otherwise;
//   - mail() never comes inside a transaction (reset() ended the last one); rcpt(), data(),
//     message() and finish() see the sender mail() accepted and the recipients rcpt() accepted
//     so far, as does Protocol::envelope() between feeds;
//   - data() precedes each 354; message() is called only after a 354, never when data()
//     returned a sink; the final dot gets the verdict message() or finish() gave, or, when
//     neither was called, 552/554 (size, strict content) or the sink's write() refusal;
//   - a sink gets non-empty pieces, the first starting with our Received header, the others
//     at most stream_chunk_bytes; none after a refused write(); one sink at a time;
//   - check_password() is asked only for PLAIN or LOGIN, allowed (TLS or auth_insecure), with
//     a user name and password, and neither it nor secret() when nothing was offered; EHLO
//     offers exactly what auth_mechanisms() allows, each known mechanism once, in its order.

#include "fuzz/fuzz.hpp"
#include "smtpd.hpp"

#include <memory>
#include <optional>
#include <stdexcept>

namespace {

// Ending - which of the target's ending calls is running, so that close() can be checked.
enum class Ending { none, timeout, shutdown, disconnect, destroy };

// Track - the session mode's model: what the Session object has seen and what must come next.
struct Track {
  bool on = false;     // session mode
  bool stream = false; // data() returns a sink
  bool auth = false;   // auth_mechanisms() offers mechanisms
  int mode = 0;        // byte 1 bits 4-6
  size_t chunk = 0;    // Options::stream_chunk_bytes
  int created = 0;     // new_session calls that made an object
  std::string id;      // the session id new_session saw
  bool closed = false;
  bool destroyed = false;

  // The command being run, from command() to its reply.
  bool command_open = false;
  std::string verb;           // upper-cased
  int command_resets = 0;     // reset() calls inside it
  std::optional<int> refused; // the code command() refused it with
  bool ehlo_auth_line = false;
  std::string last_verb; // the command the last reply answered ("" for none)
  int last_code = 0;     // the code of the last reply

  // The transaction, as mail() and rcpt() accepted it.
  bool in_transaction = false;
  std::string from;
  std::vector<std::string> to;

  // The message, from the 354 to the reply to the final dot.
  size_t data_calls = 0;
  bool in_data = false;
  bool reset_due = false;     // the final-dot reply was queued: reset() comes next
  std::optional<int> verdict; // the code message() or finish() chose
  bool write_refused = false; // the sink's write() refused
  bool sink_alive = false;
  int tls_resets = 0; // reset() calls inside tls_started()
  bool in_tls_started = false;
};

struct Run {
  smtpd::Options o;
  const smtpd::Protocol* p = nullptr;
  size_t opened = 0;         // 354 replies queued
  size_t delivered = 0;      // handler calls
  size_t accepted = 0;       // handler calls that accepted with the default reply
  size_t queued = 0;         // "250 ... queued as" replies queued
  size_t lines = 0;          // reply lines queued in the whole session
  bool closed_reply = false; // a 221 or 421 was queued
  bool was_closed = false;   // should_close() at the end of the previous feed
  bool no_handler = false;   // no handler set: every message is accepted (and dropped) unseen
  std::string logged;        // what log_write saw since the last take_output(), with CRLFs
  Ending calling = Ending::none;
  Track t;
};

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

std::string upper(std::string_view s) {
  std::string u(s);
  for (char& c : u)
    if (c >= 'a' && c <= 'z') c = char(c - 'a' + 'A');
  return u;
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

// ---- session mode -----------------------------------------------------------------------------

bool bad(const std::string& s) {
  return s.compare(0, 3, "bad") == 0;
}

bool throws(const std::string& s) {
  return s.compare(0, 5, "throw") == 0;
}

// verdict - what message() or the sink's finish() answers in this mode; the code the final dot
// must then get is recorded, and a default acceptance counted.
std::optional<smtpd::Reply> verdict(Run& r) {
  Track& t = r.t;
  FUZZ_CHECK(t.in_data && !t.verdict); // once per message, after its 354
  switch (t.mode) {
  case 1: t.verdict = 550; throw smtpd::Reply(550, "5.7.1", "Refused by content filter");
  case 2: t.verdict = 451; throw std::runtime_error("message failure");
  case 3: t.verdict = 421; return smtpd::Reply(421, "4.3.0", "Closing after this message");
  case 4: t.verdict = 250; return smtpd::Reply(250, "2.0.0", "custom");
  case 5: t.verdict = 452; return smtpd::Reply(452, "4.3.1", "Insufficient storage");
  default:
    t.verdict = 250;
    ++r.accepted;
    return std::nullopt;
  }
}

// check_envelope - what the object is shown is the transaction it accepted.
void check_envelope(const Track& t, const smtpd::Envelope& e) {
  FUZZ_CHECK(t.in_transaction);
  FUZZ_CHECK(e.from == t.from && e.to == t.to);
}

// FuzzSink - a streamed message: collects the pieces, checks them, gives the mode's verdict.
class FuzzSink : public smtpd::MessageSink {
public:
  FuzzSink(Run& r, smtpd::Envelope e) : r_(r), envelope_(std::move(e)) {
    FUZZ_CHECK(!r_.t.sink_alive); // the last message's sink is gone
    r_.t.sink_alive = true;
  }

  ~FuzzSink() override { r_.t.sink_alive = false; }

  void write(std::string_view piece) override {
    Track& t = r_.t;
    FUZZ_CHECK(!t.closed && t.in_data && !finished_ && !t.write_refused);
    FUZZ_CHECK(!piece.empty());
    if (data_.empty())
      FUZZ_CHECK(starts_with(piece, "Received: from "));
    else
      FUZZ_CHECK(piece.size() <= t.chunk);
    data_.append(piece.data(), piece.size());
    if (t.mode == 5) {
      t.write_refused = true;
      throw smtpd::Reply(452, "4.3.1", "Insufficient storage");
    }
  }

  std::optional<smtpd::Reply> finish() override {
    Track& t = r_.t;
    FUZZ_CHECK(!t.closed && !finished_ && !t.write_refused);
    finished_ = true;
    check_envelope(t, envelope_);
    check_message(r_, r_.p->session(), envelope_.from, envelope_.to, data_);
    return verdict(r_);
  }

private:
  Run& r_;
  smtpd::Envelope envelope_;
  std::string data_;
  bool finished_ = false;
};

// FuzzSession - the Session of session mode: behaves as the option bits say, and checks that
// the Protocol calls it as smtpd.hpp promises, against the model in Run::t.
class FuzzSession : public smtpd::Session {
public:
  explicit FuzzSession(Run& r) : r_(r), t_(r.t) {}

  ~FuzzSession() override {
    FUZZ_CHECK(t_.closed && !t_.destroyed);
    t_.destroyed = true;
  }

  std::optional<smtpd::Reply> command(const smtpd::SessionInfo& s, std::string_view line) override {
    enter(s);
    FUZZ_CHECK(!t_.command_open && !t_.in_data);
    FUZZ_CHECK(line.find_first_of("\r\n") == std::string_view::npos);
    // AUTH's initial response, a password maybe, is never shown: only "AUTH mechanism ****".
    if (line.size() > 4 && upper(line.substr(0, 4)) == "AUTH") {
      size_t response = line[4] == ' ' ? line.find(' ', 5) : 4;
      if (response != std::string_view::npos) FUZZ_CHECK(line.substr(response) == " ****");
    }
    t_.command_open = true;
    t_.verb = upper(line.substr(0, line.find(' ')));
    t_.command_resets = 0;
    t_.refused.reset();
    t_.ehlo_auth_line = false;
    if (t_.mode != 6) return std::nullopt;
    if (t_.verb == "VRFY") {
      t_.refused = 502;
      return smtpd::Reply(502, "5.5.1", "VRFY is off here");
    }
    if (t_.verb == "HELP") {
      t_.refused = 451;
      throw std::runtime_error("command filter failure");
    }
    if (t_.verb == "ETRN") {
      t_.refused = 421;
      return smtpd::Reply(421, "4.3.2", "No ETRN here, closing");
    }
    if (t_.verb == "NOOP") return smtpd::Reply(250, "2.0.0", "Filter lets it through");
    return std::nullopt;
  }

  std::optional<smtpd::Reply> hello(const smtpd::SessionInfo& s, const std::string& name) override {
    enter(s);
    FUZZ_CHECK(inside("HELO") || inside("EHLO"));
    FUZZ_CHECK(!name.empty());
    if (t_.mode == 7 && throws(name)) throw std::runtime_error("hello failure");
    if (t_.mode == 7 && bad(name)) return smtpd::Reply(550, "5.7.1", "Go away\nReally");
    return std::nullopt;
  }

  std::optional<smtpd::Reply> mail(const smtpd::SessionInfo& s, const std::string& from,
                                   const smtpd::MailOptions&) override {
    enter(s);
    FUZZ_CHECK(inside("MAIL"));
    FUZZ_CHECK(!t_.in_transaction); // reset() ended the last one
    FUZZ_CHECK(!s.helo.empty());
    if (r_.o.tls_required) FUZZ_CHECK(s.tls);
    if (r_.o.auth_required) FUZZ_CHECK(!s.auth_user.empty());
    check_address(from);
    if (t_.mode == 7 && bad(from)) return smtpd::Reply(550, "5.1.8", "Bad sender");
    t_.in_transaction = true;
    t_.from = from;
    t_.to.clear();
    return std::nullopt;
  }

  std::optional<smtpd::Reply> rcpt(const smtpd::SessionInfo& s, const smtpd::Envelope& e,
                                   const std::string& to, const smtpd::RcptOptions&) override {
    enter(s);
    FUZZ_CHECK(inside("RCPT"));
    check_envelope(t_, e);
    FUZZ_CHECK(e.to.size() < r_.o.max_recipients);
    check_address(to);
    if (t_.mode == 7 && throws(to)) throw std::runtime_error("rcpt failure");
    if (t_.mode == 7 && bad(to)) return smtpd::Reply(450, "4.2.0", "Mailbox busy");
    t_.to.push_back(to);
    return std::nullopt;
  }

  std::unique_ptr<smtpd::MessageSink> data(const smtpd::SessionInfo& s,
                                           const smtpd::Envelope& e) override {
    enter(s);
    FUZZ_CHECK(inside("DATA"));
    check_envelope(t_, e);
    FUZZ_CHECK(!e.to.empty());
    ++t_.data_calls;
    if (!t_.stream) return nullptr;
    return std::make_unique<FuzzSink>(r_, e);
  }

  std::optional<smtpd::Reply> message(const smtpd::SessionInfo& s, const smtpd::Envelope& e,
                                      const std::string& data) override {
    enter(s);
    FUZZ_CHECK(!t_.stream); // a streamed message goes to the sink only
    FUZZ_CHECK(!t_.command_open);
    check_envelope(t_, e);
    check_message(r_, s, e.from, e.to, data);
    return verdict(r_);
  }

  void reset(const smtpd::SessionInfo& s) override {
    FUZZ_CHECK(!t_.closed && s.id == t_.id);
    if (t_.reset_due) {
      t_.reset_due = false;
    } else if (t_.in_tls_started) {
      ++t_.tls_resets;
    } else {
      bool resetting = inside("RSET") || inside("HELO") || inside("EHLO");
      FUZZ_CHECK(resetting && t_.command_resets == 0);
      ++t_.command_resets;
    }
    t_.in_transaction = false;
    t_.from.clear();
    t_.to.clear();
  }

  void close(const smtpd::SessionInfo& s, smtpd::SessionEnd why) override {
    enter(s);
    t_.closed = true;
    FUZZ_CHECK(!t_.command_open);
    Ending calling = r_.calling;
    switch (why) {
    case smtpd::SessionEnd::quit:
      FUZZ_CHECK(calling == Ending::none && t_.last_code == 221 && t_.last_verb == "QUIT");
      break;
    case smtpd::SessionEnd::timeout:
      FUZZ_CHECK(calling == Ending::timeout && t_.last_code == 421);
      break;
    case smtpd::SessionEnd::shutdown:
      FUZZ_CHECK(calling == Ending::shutdown && t_.last_code == 421);
      break;
    case smtpd::SessionEnd::refused:
      FUZZ_CHECK(calling == Ending::none && (t_.last_code == 421 || t_.last_code == 554));
      break;
    case smtpd::SessionEnd::client_gone:
      FUZZ_CHECK(calling == Ending::disconnect || calling == Ending::destroy);
      break;
    }
  }

  std::vector<std::string> auth_mechanisms(const smtpd::SessionInfo& s) override {
    enter(s);
    FUZZ_CHECK(inside("EHLO") || inside("MAIL") || inside("AUTH"));
    if (!t_.auth) return {};
    // An unknown name and a repeat, which EHLO must leave out.
    return {"CRAM-MD5", "X-UNKNOWN", "PLAIN", "LOGIN", "PLAIN"};
  }

  bool check_password(const smtpd::SessionInfo& s, const std::string& mechanism,
                      const std::string& username, const std::string& password,
                      const std::string&) override {
    enter(s);
    FUZZ_CHECK(t_.auth);
    FUZZ_CHECK(!t_.command_open || t_.verb == "AUTH"); // an initial response, or a later line
    FUZZ_CHECK(mechanism == "PLAIN" || mechanism == "LOGIN");
    FUZZ_CHECK(s.tls || r_.o.auth_insecure);
    FUZZ_CHECK(!username.empty() && !password.empty());
    FUZZ_CHECK(s.auth_user.empty());
    return username == "alice" && password == "wonderland";
  }

  std::optional<std::string> secret(const smtpd::SessionInfo& s,
                                    const std::string& username) override {
    enter(s);
    FUZZ_CHECK(t_.auth);
    FUZZ_CHECK(!t_.command_open || t_.verb == "AUTH");
    FUZZ_CHECK(s.auth_user.empty());
    if (username == "alice") return std::string("wonderland");
    return std::nullopt;
  }

private:
  // enter - what holds at every call but reset(): the session is open, the same one, and
  // reset() was not due instead.
  void enter(const smtpd::SessionInfo& s) const {
    FUZZ_CHECK(!t_.closed && !t_.reset_due);
    FUZZ_CHECK(s.id == t_.id);
  }

  bool inside(std::string_view verb) const { return t_.command_open && t_.verb == verb; }

  Run& r_;
  Track& t_;
};

// new_session - Options::new_session in session mode: refuses as on_connect would, or makes
// the object, once, before anything was said.
std::unique_ptr<smtpd::Session> new_session(Run& r, int connect_mode, const smtpd::SessionInfo& s) {
  FUZZ_CHECK(r.t.created == 0 && r.lines == 0 && r.logged.empty());
  FUZZ_CHECK(!s.id.empty() && s.helo.empty() && !s.tls && s.auth_user.empty());
  if (connect_mode == 2) throw smtpd::Reply(554, "5.7.1", "No service for you");
  if (connect_mode == 3) throw smtpd::Reply(450, "4.7.1", "Try later");
  ++r.t.created;
  r.t.id = s.id;
  return std::make_unique<FuzzSession>(r);
}

// on_session_reply - the last line of a reply, in session mode with an object: what it answers
// (the command run, or the final dot) and what must have happened before it.
void on_session_reply(Run& r, int code) {
  Track& t = r.t;
  FUZZ_CHECK(!t.closed);    // close() is last
  FUZZ_CHECK(!t.reset_due); // reset() came right after the final-dot reply
  t.last_verb.clear();
  if (t.command_open) {
    t.command_open = false;
    t.last_verb = t.verb;
    if (t.refused) FUZZ_CHECK(code == *t.refused); // refused by command(): not run
    bool resets = code == 250 && (t.verb == "RSET" || t.verb == "HELO" || t.verb == "EHLO");
    FUZZ_CHECK(t.command_resets == (resets ? 1 : 0));
    if (t.verb == "EHLO" && code == 250) FUZZ_CHECK(t.ehlo_auth_line == t.auth);
    if (code == 354) {
      FUZZ_CHECK(t.verb == "DATA");
      t.in_data = true;
      t.verdict.reset();
      t.write_refused = false;
    }
  } else if (t.in_data && r.calling == Ending::none) { // the reply to the final dot
    t.in_data = false;
    t.reset_due = true;
    if (t.verdict)
      FUZZ_CHECK(code == *t.verdict);
    else // refused before it reached message() or finish()
      FUZZ_CHECK(code == 552 || code == 554 || (t.write_refused && code == 452));
  }
  FUZZ_CHECK(t.data_calls == r.opened); // data() was asked before each 354
  t.last_code = code;
}

// check_ehlo_auth - an EHLO reply line offering AUTH, in session mode: exactly the known
// mechanisms auth_mechanisms() named, once each, in its order, PLAIN and LOGIN only when allowed.
void check_ehlo_auth(Run& r, std::string_view text) {
  Track& t = r.t;
  if (!t.command_open || t.verb != "EHLO" || !starts_with(text, "AUTH ")) return;
  FUZZ_CHECK(t.auth && !t.ehlo_auth_line);
  t.ehlo_auth_line = true;
  bool secure = r.p->session().tls || r.o.auth_insecure;
  FUZZ_CHECK(text == (secure ? "AUTH CRAM-MD5 PLAIN LOGIN" : "AUTH CRAM-MD5"));
}

// ---- both modes -------------------------------------------------------------------------------

// on_log_write - every reply line as it is queued: count what the invariants need, in order.
void on_log_write(Run& r, std::string_view line) {
  FUZZ_CHECK(!r.closed_reply); // nothing after 221 or 421
  ++r.lines;
  r.logged.append(line.data(), line.size());
  r.logged += "\r\n";
  if (starts_with(line, "354 ")) ++r.opened;
  if (starts_with(line, "250") && line.find("queued as") != std::string_view::npos) {
    ++r.queued;
    if (r.no_handler) ++r.accepted, ++r.delivered;
    FUZZ_CHECK(r.queued <= r.accepted && r.delivered <= r.opened);
  }
  if (starts_with(line, "221 ") || starts_with(line, "421 ")) r.closed_reply = true;
  if (r.t.created && line.size() >= 4) { // parse_replies checks the syntax after the feed
    if (starts_with(line, "250")) check_ehlo_auth(r, line.substr(4));
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (line[3] == ' ') on_session_reply(r, code);
  }
}

// check_session - between feeds, in session mode with an object: nothing is pending, and the
// object's view of the session is the Protocol's.
void check_session(Run& r, smtpd::Protocol& p) {
  Track& t = r.t;
  FUZZ_CHECK(!t.command_open && !t.reset_due);
  FUZZ_CHECK(t.closed == p.should_close()); // told when it closed, not later
  if (p.should_close()) return;
  FUZZ_CHECK(t.in_data == p.in_data());
  const smtpd::Envelope& e = p.envelope();
  if (t.in_transaction)
    FUZZ_CHECK(e.from == t.from && e.to == t.to);
  else
    FUZZ_CHECK(e.from.empty() && e.to.empty());
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
  if (r.t.created) check_session(r, p);
  if (p.starttls_requested()) {
    FUZZ_CHECK(!r.o.tls_cert_file.empty());
    FUZZ_CHECK(!lines.empty() && lines.back().code == 220); // the rest was dropped
    FUZZ_CHECK(!p.session().tls && !p.should_close());
    r.t.in_tls_started = true;
    r.t.tls_resets = 0;
    p.tls_started("TLSv1.3", "TLS_AES_128_GCM_SHA256", "");
    r.t.in_tls_started = false;
    FUZZ_CHECK(r.t.tls_resets == r.t.created); // the object's transaction is reset too
    FUZZ_CHECK(p.session().tls && !p.starttls_requested() && !p.has_output());
    FUZZ_CHECK(p.session().helo.empty() && p.session().auth_user.empty());
    FUZZ_CHECK(p.envelope().to.empty() && p.envelope().from.empty());
    if (r.t.created) check_session(r, p);
  }
  return lines;
}

// set_hooks - hook mode: the hooks and handlers the option bits choose.
void set_hooks(Run& r, uint8_t b0, uint8_t b1, int connect_mode) {
  smtpd::Options& o = r.o;
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
    o.on_helo = [](const smtpd::SessionInfo&,
                   const std::string& name) -> std::optional<smtpd::Reply> {
      if (throws(name)) throw std::runtime_error("helo hook failure");
      if (bad(name)) return smtpd::Reply(550, "5.7.1", "Go away\nReally");
      return std::nullopt;
    };
    o.on_mail = [](const smtpd::SessionInfo&, const std::string& from,
                   const smtpd::Params&) -> std::optional<smtpd::Reply> {
      if (bad(from)) return smtpd::Reply(550, "5.1.8", "Bad sender");
      return std::nullopt;
    };
    o.on_rcpt = [](const smtpd::SessionInfo&, const std::string& to,
                   const smtpd::Params&) -> std::optional<smtpd::Reply> {
      if (throws(to)) throw std::runtime_error("rcpt hook failure");
      if (bad(to)) return smtpd::Reply(450, "4.2.0", "Mailbox busy");
      return std::nullopt;
    };
  }
  if (connect_mode >= 2)
    o.on_connect = [connect_mode](const smtpd::SessionInfo&) -> std::optional<smtpd::Reply> {
      if (connect_mode == 2) return smtpd::Reply(554, "5.7.1", "No service for you");
      return smtpd::Reply(450, "4.7.1", "Try later");
    };
}

} // namespace

int fuzz_protocol(const uint8_t* data, size_t size) {
  fuzz::Bytes in{data, size};
  uint8_t b0 = in.byte(), b1 = in.byte(), b2 = in.byte(), b3 = in.byte();

  Run r;
  smtpd::Options& o = r.o;
  o.hostname = "mx.example.org";
  // BDAT has its own target (fuzz/bdat.cpp): this model counts messages by their 354.
  o.chunking = false;
  o.appname = "fuzz";
  o.strict = b0 & 1;
  static const size_t max_bytes[] = {16, 100, 1000, 25u << 20};
  o.max_message_bytes = max_bytes[b0 >> 1 & 3];
  if (b0 & 8) o.tls_cert_file = "dummy.pem";
  o.tls_required = b0 & 16;
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

  int connect_mode = b2 >> 6;
  unsigned n = b2 >> 2 & 15;
  Track& t = r.t;
  t.on = b3 & 32;
  if (t.on) { // the object decides everything the hooks would: no hook is set (Server's rule)
    t.stream = b3 & 64;
    t.auth = b0 & 32;
    t.mode = b1 >> 4 & 7;
    if (t.stream && n < 8) o.stream_chunk_bytes = size_t(1) << n;
    t.chunk = o.stream_chunk_bytes;
    o.new_session = [&r, connect_mode](const smtpd::SessionInfo& s) {
      return new_session(r, connect_mode, s);
    };
  } else {
    set_hooks(r, b0, b1, connect_mode);
  }
  o.log_write = [&r](const smtpd::Peer&, std::string_view line) { on_log_write(r, line); };
  if (b1 & 128) o.log_read = [](const smtpd::Peer&, std::string_view) {};

  smtpd::SessionInfo info;
  info.peer.ip = (b1 & 128) ? "2001:db8::1" : "192.0.2.1";
  info.peer.port = 4242;
  std::optional<smtpd::Protocol> protocol;
  protocol.emplace(o, info);
  smtpd::Protocol& p = *protocol;
  r.p = &p;
  if (t.on) FUZZ_CHECK(t.created == (connect_mode >= 2 ? 0 : 1));

  std::vector<fuzz::ReplyLine> greeting = after_feed(r, p);
  FUZZ_CHECK(greeting.size() == 1);
  int expected = connect_mode == 2 ? 554 : connect_mode == 3 ? 421 : 220;
  FUZZ_CHECK(greeting[0].code == expected);

  fuzz::Chunker chunker = fuzz::Chunker::of(b2 & 3, n);
  std::string_view client = in.rest();
  while (!client.empty()) {
    p.feed(chunker.take(client));
    after_feed(r, p);
  }

  // The session still open: the server ends it, or the client goes away.
  bool gone = b3 & 128;
  bool destroy = false;
  if (!p.should_close() && !gone) {
    r.calling = (b1 & 128) ? Ending::timeout : Ending::shutdown;
    if (b1 & 128)
      p.timeout();
    else
      p.shutting_down();
    r.calling = Ending::none;
    std::vector<fuzz::ReplyLine> last = after_feed(r, p);
    FUZZ_CHECK(last.size() == 1 && last[0].code == 421);
  } else if (!p.should_close() && (b1 & 128)) {
    size_t delivered = r.delivered;
    r.calling = Ending::disconnect;
    p.disconnected();
    r.calling = Ending::none;
    FUZZ_CHECK(p.should_close() && !p.in_data() && !p.idle() && !p.has_output());
    FUZZ_CHECK(r.delivered == delivered); // a partial message is dropped, never handed over
    FUZZ_CHECK(p.envelope().to.empty() && p.envelope().from.empty());
    r.was_closed = true;
    if (t.created) check_session(r, p);
  } else if (!p.should_close()) {
    destroy = true; // the Protocol goes away with the session open
  }
  if (!destroy) {
    p.feed("NOOP\r\nQUIT\r\n");
    after_feed(r, p);
    FUZZ_CHECK(p.should_close());
  }

  size_t delivered = r.delivered;
  r.calling = Ending::destroy;
  r.p = nullptr;
  protocol.reset();
  r.calling = Ending::none;
  FUZZ_CHECK(r.delivered == delivered);
  if (t.created) FUZZ_CHECK(t.closed && t.destroyed && !t.sink_alive);
  return 0;
}

SMTPD_FUZZ_ENTRY(fuzz_protocol)
