// fuzz/auth.cpp - fuzz target "auth": AUTH PLAIN, LOGIN and CRAM-MD5 exchanges (RFC 4954,
// RFC 4616, RFC 2195) with fuzzed base64 and raw bytes, through a Protocol. The only valid
// credentials are alice / wonderland (on_auth; auth_secret gives alice's secret for CRAM-MD5).
//
// Input layout (the seeds in fuzz/corpus/auth/ follow it):
//
//   byte 0  bit 0     strict
//           bits 1-2  auth_max_failures: 0 = 1, 1 = 2, 2 = 3, 3 = 5
//           bit 3     STARTTLS offered (tls_cert_file = "dummy.pem") and auth_insecure off, so
//                     PLAIN and LOGIN need STARTTLS first; else auth_insecure on, no TLS
//           bit 4     auth_required
//           bit 5     auth_mechanisms = {"login", "CRAM-MD5"} (PLAIN not offered)
//           bit 6     hard_error_limit 3 (else 100)
//           bit 7     on_auth throws std::runtime_error for user "bob" (454) and a Reply 535 for
//                     user "carol"
//   then steps until the input ends; the session starts with "EHLO client.example". A step is
//   an op byte, then the fields its op uses; a field is a length byte L and L bytes.
//     op & 15:  0 "AUTH PLAIN " enc(F)             1 "AUTH PLAIN", then enc(F)
//               2 "AUTH LOGIN", enc(F1), enc(F2)    3 "AUTH LOGIN " enc(F1), then enc(F2)
//               4 "AUTH CRAM-MD5", then enc(F)      5 the right PLAIN (authzid F if op bit 6;
//                                                     initial response if op bit 7)
//               6 the right LOGIN                   7 the raw line F + CRLF
//               8 the raw bytes F (no CRLF)         9 "*" (cancel)
//              10 "EHLO client.example"            11 "STARTTLS" (then tls_started(), as a
//                                                     server would after the handshake)
//              12 "MAIL FROM:<a@example.org>" if op bit 6, else "RSET"
//              13 "AUTH PLAIN =" or, op bit 6, "AUTH LOGIN ="
//              14 "AUTH PLAIN " + L * 64 'A's (L is one length byte: up to 16320, past 12288)
//              15 PLAIN with user alice and the wrong password F
//     enc = op >> 4 & 3: 0 base64, 1 base64 without '=' padding, 2 the raw field (CR and LF
//     removed), 3 base64 with a space in the middle.
//   Each line goes in its own feed. A step whose text contains "wonderland" in clear (a raw
//   field) is skipped: it would be logged, legitimately.
//
// Invariants checked:
//   - all output is well-formed replies; 334 texts are base64;
//   - a 235 only after on_auth returned true (or CRAM-MD5 was tried for alice): 235 count <=
//     such hook results; auth_user is "" or "alice", non-empty exactly when a 235 was sent
//     since the session (re)started;
//   - on_auth only for PLAIN/LOGIN, only when enabled, only under TLS unless auth_insecure,
//     never with an empty user name or password;
//   - when on_auth or auth_secret runs, the log line of the line that carried the credentials
//     is masked ("****" or "AUTH <mechanism> ****"); "wonderland" never appears in log_read;
//   - at most auth_max_failures 535s, the last one followed at once by 421 and close; a reply
//     delay is asked exactly when a 535 was sent; nothing is output after 221 or 421.
#include "fuzz/fuzz.hpp"
#include "smtpd.hpp"

#include <optional>
#include <stdexcept>

namespace {

struct Run {
  smtpd::Options o;
  const smtpd::Protocol* p = nullptr;
  size_t hook_true = 0;      // on_auth returned true, or auth_secret was asked about alice
  size_t successes = 0;      // 235 replies
  size_t failures = 0;       // 535 replies
  bool expect_421 = false;   // the last 535 used up auth_max_failures
  bool closed_reply = false; // 221 or 421 queued
  bool authed = false;       // a 235 since the session (re)started
  bool failed_now = false;   // a 535 since the last take_output()
  std::string last_log;      // the last log_read line
};

bool istarts_with(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i)
    if (std::toupper(static_cast<unsigned char>(s[i])) != prefix[i]) return false;
  return true;
}

// check_masked - the log line of the line that carried credentials hides them.
void check_masked(const std::string& log, const std::string& mechanism) {
  if (log == "****") return;
  FUZZ_CHECK(istarts_with(log, "AUTH") && log.size() >= 9);
  FUZZ_CHECK(log.compare(log.size() - 5, 5, " ****") == 0);
  std::string middle = log.substr(4, log.size() - 9);
  if (!middle.empty() && middle[0] == ' ') middle.erase(0, 1);
  FUZZ_CHECK(middle.empty() ||
             (middle.size() == mechanism.size() && istarts_with(middle, mechanism)));
}

void on_log_write(Run& r, std::string_view line) {
  FUZZ_CHECK(!r.closed_reply);
  if (r.expect_421) FUZZ_CHECK(line.substr(0, 4) == "421 ");
  std::string_view code = line.substr(0, 4);
  if (code == "235 ") {
    ++r.successes;
    FUZZ_CHECK(r.successes <= r.hook_true);
    r.authed = true;
  }
  if (code == "535 ") {
    ++r.failures;
    r.failed_now = true;
    FUZZ_CHECK(r.failures <= r.o.auth_max_failures);
    r.expect_421 = r.failures == r.o.auth_max_failures;
  }
  if (code == "334 ") {
    std::string_view text = line.substr(4);
    FUZZ_CHECK(text.size() % 4 == 0);
    for (char c : text)
      FUZZ_CHECK(std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '/' || c == '=');
  }
  if (code == "221 " || code == "421 ") r.closed_reply = true;
}

void after_feed(Run& r, smtpd::Protocol& p, bool was_closed) {
  std::string out = p.take_output();
  std::vector<fuzz::ReplyLine> lines = fuzz::parse_replies(out);
  if (was_closed) FUZZ_CHECK(out.empty());
  if (r.closed_reply) FUZZ_CHECK(p.should_close());
  if (!was_closed && p.should_close()) { // 221, 421, or 554 (an HTTP verb, say)
    FUZZ_CHECK(!lines.empty());
    int code = lines.back().code;
    FUZZ_CHECK(code == 221 || code == 421 || code == 554);
  }
  FUZZ_CHECK(r.failures < r.o.auth_max_failures || p.should_close());
  std::chrono::milliseconds delay = p.take_reply_delay();
  FUZZ_CHECK(r.failed_now ? delay == r.o.auth_failure_delay : delay.count() == 0);
  r.failed_now = false;
  const std::string& user = p.session().auth_user;
  FUZZ_CHECK(user.empty() || user == "alice");
  FUZZ_CHECK(user.empty() != r.authed);
  if (p.starttls_requested()) {
    FUZZ_CHECK(!r.o.tls_cert_file.empty());
    p.tls_started("TLSv1.3", "TLS_AES_128_GCM_SHA256", "");
    r.authed = false;
    FUZZ_CHECK(p.session().tls && p.session().auth_user.empty());
  }
}

// field - a length byte and that many bytes.
std::string field(fuzz::Bytes& in) {
  return std::string(in.take(in.byte()));
}

std::string strip_crlf(std::string s) {
  std::string out;
  for (char c : s)
    if (c != '\r' && c != '\n') out += c;
  return out;
}

std::string encode(const std::string& raw, int how) {
  std::string b = fuzz::base64(raw);
  switch (how) {
  case 0: return b;
  case 1:
    while (!b.empty() && b.back() == '=')
      b.pop_back();
    return b;
  case 2: return strip_crlf(raw);
  default: return b.insert(b.size() / 2, " ");
  }
}

} // namespace

int fuzz_auth(const uint8_t* data, size_t size) {
  fuzz::Bytes in{data, size};
  uint8_t flags = in.byte();

  Run r;
  smtpd::Options& o = r.o;
  o.hostname = "mx.example.org";
  o.strict = flags & 1;
  static const size_t max_failures[] = {1, 2, 3, 5};
  o.auth_max_failures = max_failures[flags >> 1 & 3];
  if (flags & 8)
    o.tls_cert_file = "dummy.pem";
  else
    o.auth_insecure = true;
  o.auth_required = flags & 16;
  if (flags & 32) o.auth_mechanisms = {"login", "CRAM-MD5"};
  o.hard_error_limit = (flags & 64) ? 3 : 100;
  o.soft_error_limit = 1000; // no error tarpit: a reply delay then means a 535
  bool throwing = flags & 128;
  o.on_auth = [&r, throwing](const smtpd::SessionInfo& s, const std::string& mechanism,
                             const std::string& user, const std::string& password,
                             const std::string&) {
    FUZZ_CHECK(mechanism == "PLAIN" || mechanism == "LOGIN");
    if (!r.o.auth_mechanisms.empty()) FUZZ_CHECK(mechanism == "LOGIN");
    FUZZ_CHECK(s.tls || r.o.auth_insecure);
    FUZZ_CHECK(!user.empty() && !password.empty());
    FUZZ_CHECK(s.auth_user.empty());
    check_masked(r.last_log, mechanism);
    if (throwing && user == "bob") throw std::runtime_error("directory unavailable");
    if (throwing && user == "carol") throw smtpd::Reply(535, "5.7.8", "No carols");
    bool ok = user == "alice" && password == "wonderland";
    r.hook_true += ok;
    return ok;
  };
  o.auth_secret = [&r](const smtpd::SessionInfo& s,
                       const std::string& user) -> std::optional<std::string> {
    FUZZ_CHECK(s.auth_user.empty());
    check_masked(r.last_log, "CRAM-MD5");
    if (user != "alice") return std::nullopt;
    ++r.hook_true; // the fuzzer cannot answer the random challenge, but it may not be refused
    return std::string("wonderland");
  };
  o.log_read = [&r](const smtpd::Peer&, std::string_view line) {
    FUZZ_CHECK(line.find("wonderland") == std::string_view::npos);
    r.last_log = std::string(line);
  };
  o.log_write = [&r](const smtpd::Peer&, std::string_view line) { on_log_write(r, line); };

  smtpd::Protocol p(o, smtpd::SessionInfo{});
  r.p = &p;
  after_feed(r, p, false);
  p.feed("EHLO client.example\r\n");
  after_feed(r, p, false);

  while (!in.empty()) {
    uint8_t op = in.byte();
    int how = op >> 4 & 3;
    std::vector<std::string> lines;
    std::string raw;
    bool has_raw = false;
    switch (op & 15) {
    case 0: lines = {"AUTH PLAIN " + encode(field(in), how)}; break;
    case 1: lines = {"AUTH PLAIN", encode(field(in), how)}; break;
    case 2: {
      std::string user = field(in), password = field(in);
      lines = {"AUTH LOGIN", encode(user, how), encode(password, how)};
      break;
    }
    case 3: {
      std::string user = field(in), password = field(in);
      lines = {"AUTH LOGIN " + encode(user, how), encode(password, how)};
      break;
    }
    case 4: lines = {"AUTH CRAM-MD5", encode(field(in), how)}; break;
    case 5: {
      std::string authzid = (op & 64) ? strip_crlf(field(in)) : "";
      std::string response = fuzz::base64(authzid + std::string("\0alice\0wonderland", 17));
      if (op & 128)
        lines = {"AUTH PLAIN " + response};
      else
        lines = {"AUTH PLAIN", response};
      break;
    }
    case 6: lines = {"AUTH LOGIN", fuzz::base64("alice"), fuzz::base64("wonderland")}; break;
    case 7: lines = {field(in)}; break;
    case 8:
      raw = field(in);
      has_raw = true;
      break;
    case 9: lines = {"*"}; break;
    case 10: lines = {"EHLO client.example"}; break;
    case 11: lines = {"STARTTLS"}; break;
    case 12: lines = {(op & 64) ? "MAIL FROM:<a@example.org>" : "RSET"}; break;
    case 13: lines = {(op & 64) ? "AUTH LOGIN =" : "AUTH PLAIN ="}; break;
    case 14: lines = {"AUTH PLAIN " + std::string(size_t(in.byte()) * 64, 'A')}; break;
    default: {
      std::string password = field(in);
      lines = {"AUTH PLAIN " + encode(std::string("\0alice\0", 7) + password, how)};
      break;
    }
    }
    for (std::string& line : lines) // one feed per line: the client waits for each 334
      line += "\r\n";
    if (has_raw) lines = {raw};
    bool secret = false;
    for (const std::string& line : lines)
      secret |= line.find("wonderland") != std::string::npos;
    if (secret) continue;
    for (const std::string& line : lines) {
      bool was_closed = p.should_close();
      p.feed(line);
      after_feed(r, p, was_closed);
    }
  }
  return 0;
}

SMTPD_FUZZ_ENTRY(fuzz_auth)
