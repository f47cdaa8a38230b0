// smtpd.cpp - the implementation of smtpd.hpp. Read it top to bottom to learn how an SMTP
// receiver works, from "what a line means" to "how threads run it":
//
//   1. Limits           the numbers the RFCs fix, each with its section
//   2. Text helpers     case-insensitive compare, UTF-8 check, sanitising, dates, ids, base64,
//                       MD5/HMAC-MD5 for CRAM-MD5
//   3. Parsing          paths and ESMTP parameters of MAIL and RCPT (RFC 5321 §4.1.2)
//   4. Replies          the reply catalogue, in ascending order of code, and reply formatting
//   5. Protocol         the socket-free session: command table, one cmd_<verb> per verb,
//                       STARTTLS and AUTH, the DATA scanner, the Received header
//   6. Transport        the plain socket and TLS (OpenSSL): reads and writes under a timeout
//   7. Connection       one thread per client: deadlines, feed bytes to the Protocol, write its
//                       replies, run the TLS handshake
//   8. Server           address parsing, listen, accept, limits, worker threads, graceful
//                       shutdown; then TestServer and the ListenAndServe one-liners
//   9. Client           SMTP and LMTP from the sending side: the reply parser, connect, TLS,
//                       EHLO, AUTH, MAIL/RCPT parameters, DATA/BDAT, pipelining, SendMail
//
// SMTPD_NO_TLS is consulted for the OpenSSL includes, `tls_compiled` (section 1) and the TLS
// transport (section 6) only, so the header's layout never changes.

#include "smtpd.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <deque>
#include <list>
#include <mutex>
#include <random>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <unordered_map>

#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <resolv.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef SMTPD_NO_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#endif

namespace smtpd {

namespace {

// =============================================================================================
// 1. Limits
// =============================================================================================

// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets, CRLF included.
constexpr std::size_t max_command_line = 512;
// RFC 4954 §4: AUTH command and response lines may be up to 12288 octets, CRLF included.
constexpr std::size_t max_auth_line = 12288;
// RFC 3461 §4: with DSN, NOTIFY and ORCPT may lengthen a RCPT line by 500 characters.
constexpr std::size_t dsn_line_allowance = 500;
// RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets, CRLF included (enforced in strict
// mode only: the message buffer is bounded by max_message_bytes whatever the line length).
constexpr std::size_t max_text_line = 1000;
// RFC 5321 §4.5.3.1.1 and §4.5.3.1.2: local part 64 octets, domain 255 octets.
constexpr std::size_t max_local_part = 64;
constexpr std::size_t max_domain = 255;
// RFC 5321 §4.5.3.1.3: a path, brackets included, is at most 256 octets.
constexpr std::size_t max_path = 256;
// RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets, CRLF included.
constexpr std::size_t max_reply_line = 512;
// Bytes read from a socket at a time; a pipelined burst normally fits in one read.
constexpr std::size_t read_buffer_bytes = 16 * 1024;
// A message buffer larger than this is released after the message instead of kept for reuse.
constexpr std::size_t keep_buffer_bytes = 1024 * 1024;

// Whether this build has TLS: compiled without -DSMTPD_NO_TLS.
#ifdef SMTPD_NO_TLS
constexpr bool tls_compiled = false;
#else
constexpr bool tls_compiled = true;
#endif

// =============================================================================================
// 2. Text helpers
// =============================================================================================

// ascii_lower - lower-case an ASCII letter, leave every other byte alone.
char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c;
}

// iequals - ASCII case-insensitive equality (SMTP verbs and keywords, RFC 5321 §2.4).
bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  return true;
}

// istarts_with - case-insensitive prefix test.
bool istarts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

// upper - an upper-cased ASCII copy (ESMTP keywords are stored upper-cased).
std::string upper(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'a' && c <= 'z') c = char(c - 'a' + 'A');
  return out;
}

bool is_alpha(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

bool is_digit(unsigned char c) {
  return c >= '0' && c <= '9';
}

bool is_let_dig(unsigned char c) {
  return is_alpha(c) || is_digit(c);
}

// skip_spaces - drop leading spaces (lenient mode tolerates runs of them).
std::string_view skip_spaces(std::string_view s) {
  while (!s.empty() && s.front() == ' ')
    s.remove_prefix(1);
  return s;
}

// trim_trailing_spaces - drop trailing spaces and tabs.
std::string_view trim_trailing_spaces(std::string_view s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

// utf8_sequence_length - the length of the well-formed UTF-8 sequence at s[0] (RFC 3629),
// or 0 if it is not one (overlongs, surrogates and values past U+10FFFF are rejected).
std::size_t utf8_sequence_length(std::string_view s) {
  auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  auto cont = [&](std::size_t i) { return i < s.size() && (byte(i) & 0xC0) == 0x80; };
  unsigned char b = byte(0);
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return cont(1) ? 2 : 0;
  if (b >= 0xE0 && b <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (b == 0xE0 && byte(1) < 0xA0) return 0; // overlong
    if (b == 0xED && byte(1) > 0x9F) return 0; // surrogate
    return 3;
  }
  if (b >= 0xF0 && b <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (b == 0xF0 && byte(1) < 0x90) return 0; // overlong
    if (b == 0xF4 && byte(1) > 0x8F) return 0; // past U+10FFFF
    return 4;
  }
  return 0;
}

// sanitize_for_header - make client-supplied text safe inside a header comment: printable
// ASCII only, no parentheses, backslashes or spaces, at most `limit` octets. This is what stops
// a HELO name carrying CR LF from forging a header line.
std::string sanitize_for_header(std::string_view s, std::size_t limit) {
  std::string out;
  for (unsigned char c : s.substr(0, limit)) {
    bool safe = c > 0x20 && c < 0x7F && c != '(' && c != ')' && c != '\\';
    out += safe ? char(c) : '_';
  }
  return out;
}

// hex - `value` as `digits` upper-case hex digits.
std::string hex(uint64_t value, int digits) {
  static const char alphabet[] = "0123456789ABCDEF";
  std::string out(std::size_t(digits), '0');
  for (int i = digits - 1; i >= 0; --i, value >>= 4)
    out[std::size_t(i)] = alphabet[value & 15];
  return out;
}

// random_seed - one value from std::random_device. Kept out of line: a random_device is about
// 5 KiB, and a caller that inlined it would reserve that on the stack at every call, touching
// two more stack pages in every connection thread (seen as +8 KiB RSS per idle connection).
[[gnu::noinline]] uint64_t random_seed() {
  return std::random_device{}();
}

// new_queue_id - a short id unique in this process and unlikely to repeat across restarts: the
// time in seconds, then a counter that starts at a random value. It names sessions (and so
// their messages).
std::string new_queue_id() {
  static std::atomic<uint64_t> counter{random_seed()};
  uint64_t n = counter.fetch_add(1, std::memory_order_relaxed);
  return hex(uint64_t(std::time(nullptr)), 8) + hex(n, 6);
}

// rfc5322_date - the current local time as an RFC 5322 §3.3 date-time, e.g.
// "Sun, 22 Nov 2026 11:00:00 +0000". Names are spelled out by hand: strftime's %a and %b
// follow the locale, and a header must be in English.
std::string rfc5322_date(std::time_t now) {
  static const char* const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char* const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  std::tm t = {};
  localtime_r(&now, &t);
  long offset_minutes = t.tm_gmtoff / 60;
  char sign = offset_minutes < 0 ? '-' : '+';
  offset_minutes = offset_minutes < 0 ? -offset_minutes : offset_minutes;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s, %d %s %d %02d:%02d:%02d %c%02ld%02ld", days[t.tm_wday],
                t.tm_mday, months[t.tm_mon], t.tm_year + 1900, t.tm_hour, t.tm_min, t.tm_sec, sign,
                offset_minutes / 60, offset_minutes % 60);
  return buf;
}

// base64_encode - RFC 4648 §4 base64 with padding (AUTH challenges, RFC 4954 §4).
std::string base64_encode(std::string_view bytes) {
  static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (std::size_t i = 0; i < bytes.size(); i += 3) {
    uint32_t group = uint32_t(static_cast<unsigned char>(bytes[i])) << 16;
    if (i + 1 < bytes.size()) group |= uint32_t(static_cast<unsigned char>(bytes[i + 1])) << 8;
    if (i + 2 < bytes.size()) group |= static_cast<unsigned char>(bytes[i + 2]);
    out += alphabet[(group >> 18) & 63];
    out += alphabet[(group >> 12) & 63];
    out += i + 1 < bytes.size() ? alphabet[(group >> 6) & 63] : '=';
    out += i + 2 < bytes.size() ? alphabet[group & 63] : '=';
  }
  return out;
}

// base64_value - the 6-bit value of a base64 character, or -1.
int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

// base64_decode - strict RFC 4648 §4 decoding: whole groups of four, padding only at the end.
// Anything else is refused, as RFC 4954 §4 asks (501 5.5.2).
std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  std::string out;
  for (std::size_t i = 0; i < text.size(); i += 4) {
    bool last = i + 4 == text.size();
    int pad = last ? (text[i + 3] == '=') + (text[i + 2] == '=' && text[i + 3] == '=') : 0;
    uint32_t group = 0;
    for (int j = 0; j < 4; ++j) {
      int v = j >= 4 - pad ? 0 : base64_value(text[i + std::size_t(j)]);
      if (v < 0) return std::nullopt;
      group = group << 6 | uint32_t(v);
    }
    out += char(group >> 16);
    if (pad < 2) out += char(group >> 8 & 0xFF);
    if (pad < 1) out += char(group & 0xFF);
  }
  return out;
}

// md5 - the RFC 1321 digest of `message` (16 raw bytes). Used only inside HMAC-MD5 for
// CRAM-MD5 (RFC 2195), which the protocol fixes; written out so a build without OpenSSL has it.
std::string md5(std::string_view message) {
  static const auto k = [] { // K[i] = floor(|sin(i + 1)| * 2^32), RFC 1321 §3.4
    std::array<uint32_t, 64> table{};
    for (int i = 0; i < 64; ++i)
      table[std::size_t(i)] = uint32_t(std::floor(std::fabs(std::sin(i + 1.0)) * 4294967296.0));
    return table;
  }();
  static const int shift[4][4] = {
      {7, 12, 17, 22}, {5, 9, 14, 20}, {4, 11, 16, 23}, {6, 10, 15, 21}};
  std::string padded(message);
  padded += char(0x80);
  while (padded.size() % 64 != 56)
    padded += '\0';
  uint64_t bits = uint64_t(message.size()) * 8;
  for (int i = 0; i < 8; ++i)
    padded += char(bits >> (8 * i));
  uint32_t h[4] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476};
  for (std::size_t block = 0; block < padded.size(); block += 64) {
    uint32_t w[16];
    for (std::size_t i = 0; i < 16; ++i) {
      w[i] = 0;
      for (std::size_t b = 0; b < 4; ++b)
        w[i] |= uint32_t(static_cast<unsigned char>(padded[block + 4 * i + b])) << (8 * b);
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
    for (int i = 0; i < 64; ++i) {
      int round = i / 16;
      uint32_t f = round == 0   ? (b & c) | (~b & d)
                   : round == 1 ? (d & b) | (~d & c)
                   : round == 2 ? b ^ c ^ d
                                : c ^ (b | ~d);
      int g = round == 0   ? i
              : round == 1 ? (5 * i + 1) % 16
              : round == 2 ? (3 * i + 5) % 16
                           : (7 * i) % 16;
      uint32_t x = a + f + k[std::size_t(i)] + w[g];
      int n = shift[round][i % 4];
      a = d;
      d = c;
      c = b;
      b = b + ((x << n) | (x >> (32 - n)));
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
  }
  std::string digest;
  for (uint32_t word : h)
    for (int i = 0; i < 4; ++i)
      digest += char(word >> (8 * i));
  return digest;
}

// hmac_md5_hex - HMAC-MD5 (RFC 2104) of `message` under `key`, as lower-case hex (RFC 2195).
std::string hmac_md5_hex(std::string_view key, std::string_view message) {
  std::string block = key.size() > 64 ? md5(key) : std::string(key);
  block.resize(64, '\0');
  std::string inner(64, '\0'), outer(64, '\0');
  for (std::size_t i = 0; i < 64; ++i) {
    inner[i] = char(block[i] ^ 0x36);
    outer[i] = char(block[i] ^ 0x5c);
  }
  std::string digest = md5(outer + md5(inner + std::string(message)));
  std::string out;
  for (unsigned char c : digest)
    out += "0123456789abcdef"[c >> 4], out += "0123456789abcdef"[c & 15];
  return out;
}

// constant_time_equals - compare secrets without an early exit, so the time taken tells an
// attacker nothing about how much of a guess was right.
bool constant_time_equals(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i)
    diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// advise_huge_pages - ask Linux to back a big buffer's untouched pages with 2 MiB pages: a
// 50 MiB message then costs 25 page faults instead of 12,800, and arrives about twice as
// fast. Only a hint (transparent huge pages in "madvise" mode honour it). Memory is still
// committed as content arrives, 2 MiB at a time: a client that declares a big SIZE= and sends
// little costs at most one huge page more than it sent.
void advise_huge_pages(std::string& buffer) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t huge = 2 * 1024 * 1024;
  if (buffer.capacity() < 2 * huge) return;
  auto begin = reinterpret_cast<uintptr_t>(buffer.data());
  uintptr_t first = (begin + huge - 1) & ~(huge - 1),
            last = (begin + buffer.capacity()) & ~(huge - 1);
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)buffer;
#endif
}

// system_hostname - this machine's name, for the greeting when Options::hostname is empty.
std::string system_hostname() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

// =============================================================================================
// 3. Parsing: paths and parameters (RFC 5321 §4.1.2)
//
// A small recursive-descent parser shaped like the ABNF, one function per rule. Each takes the
// text still to parse, consumes what its rule matches and returns false when it does not match.
// =============================================================================================

// Cursor - the text still to parse, and whether 8-bit UTF-8 (RFC 6531) is allowed in it.
struct Cursor {
  std::string_view rest;
  bool utf8 = false;

  bool at(char c) const { return !rest.empty() && rest.front() == c; }

  bool eat(char c) {
    if (!at(c)) return false;
    rest.remove_prefix(1);
    return true;
  }
};

// is_atext - RFC 5322 §3.2.3 atext: letters, digits and !#$%&'*+-/=?^_`{|}~
bool is_atext(unsigned char c) {
  // c != 0: strchr would find the string's own terminating NUL
  return is_let_dig(c) || (c != 0 && std::strchr("!#$%&'*+-/=?^_`{|}~", c) != nullptr);
}

// eat_utf8 - consume one UTF-8 non-ASCII character if allowed (RFC 6531 §3.3 UTF8-non-ascii).
bool eat_utf8(Cursor& in) {
  if (!in.utf8 || in.rest.empty() || static_cast<unsigned char>(in.rest[0]) < 0x80) return false;
  std::size_t n = utf8_sequence_length(in.rest);
  if (n == 0) return false;
  in.rest.remove_prefix(n);
  return true;
}

// parse_atom - Atom = 1*atext
bool parse_atom(Cursor& in) {
  std::size_t before = in.rest.size();
  while (!in.rest.empty()) {
    if (is_atext(static_cast<unsigned char>(in.rest[0])))
      in.rest.remove_prefix(1);
    else if (!eat_utf8(in))
      break;
  }
  return in.rest.size() < before;
}

// parse_dot_string - Dot-string = Atom *("." Atom)
bool parse_dot_string(Cursor& in) {
  if (!parse_atom(in)) return false;
  while (in.at('.')) {
    in.eat('.');
    if (!parse_atom(in)) return false;
  }
  return true;
}

// parse_quoted_string - Quoted-string = DQUOTE *(qtextSMTP / quoted-pairSMTP) DQUOTE
bool parse_quoted_string(Cursor& in) {
  if (!in.eat('"')) return false;
  while (!in.rest.empty()) {
    unsigned char c = static_cast<unsigned char>(in.rest[0]);
    if (c == '"') {
      in.rest.remove_prefix(1);
      return true;
    }
    if (c == '\\') { // quoted-pairSMTP = "\" followed by %d32-126
      if (in.rest.size() < 2 || in.rest[1] < 32 || in.rest[1] > 126) return false;
      in.rest.remove_prefix(2);
    } else if (c >= 32 && c <= 126) {
      in.rest.remove_prefix(1);
    } else if (!eat_utf8(in)) {
      return false;
    }
  }
  return false; // no closing quote
}

// parse_sub_domain - sub-domain = Let-dig [Ldh-str] (or a U-label under SMTPUTF8)
bool parse_sub_domain(Cursor& in) {
  std::size_t before = in.rest.size();
  bool last_hyphen = false;
  while (!in.rest.empty()) {
    unsigned char c = static_cast<unsigned char>(in.rest[0]);
    bool first = in.rest.size() == before;
    if (is_let_dig(c) || (c == '-' && !first)) {
      in.rest.remove_prefix(1);
      last_hyphen = c == '-';
    } else if (eat_utf8(in)) {
      last_hyphen = false;
    } else {
      break;
    }
  }
  return in.rest.size() < before && !last_hyphen;
}

// parse_domain - Domain = sub-domain *("." sub-domain)
bool parse_domain(Cursor& in) {
  std::string_view start = in.rest;
  if (!parse_sub_domain(in)) return false;
  while (in.at('.')) {
    in.eat('.');
    if (!parse_sub_domain(in)) return false;
  }
  return start.size() - in.rest.size() <= max_domain;
}

// is_ipv4_literal - IPv4-address-literal = Snum 3("." Snum), Snum = 1*3DIGIT in 0..255
// (RFC 5321 §4.1.3). Written out because inet_pton refuses leading zeros, which Snum allows.
bool is_ipv4_literal(std::string_view s) {
  for (int part = 0; part < 4; ++part) {
    if (part > 0) {
      if (s.empty() || s.front() != '.') return false;
      s.remove_prefix(1);
    }
    std::size_t digits = 0;
    int value = 0;
    while (digits < s.size() && digits < 4 && is_digit(static_cast<unsigned char>(s[digits])))
      value = value * 10 + (s[digits++] - '0');
    if (digits == 0 || digits > 3 || value > 255) return false;
    s.remove_prefix(digits);
  }
  return s.empty();
}

// parse_address_literal - "[" (IPv4 / "IPv6:" IPv6 / tag ":" dcontent) "]" (RFC 5321 §4.1.3)
bool parse_address_literal(Cursor& in) {
  if (!in.eat('[')) return false;
  std::size_t close = in.rest.find(']');
  if (close == std::string_view::npos) return false;
  std::string inside(in.rest.substr(0, close));
  in.rest.remove_prefix(close + 1);
  if (inside.find('\0') != std::string::npos) return false; // inet_pton would stop at it
  unsigned char addr[16];
  if (istarts_with(inside, "IPv6:")) return inet_pton(AF_INET6, inside.c_str() + 5, addr) == 1;
  if (is_ipv4_literal(inside)) return true;
  // General-address-literal = Standardized-tag ":" 1*dcontent; dcontent is %d33-90 / %d94-126
  std::size_t colon = inside.find(':');
  if (colon == 0 || colon == std::string::npos || colon + 1 == inside.size()) return false;
  Cursor tag{std::string_view(inside).substr(0, colon)};
  if (!parse_sub_domain(tag) || !tag.rest.empty()) return false;
  for (unsigned char c : inside.substr(colon + 1))
    if (c < 33 || c > 126 || c == '[' || c == '\\' || c == ']') return false;
  return true;
}

// eaten - the text consumed from `start` up to where `in` stands now.
std::string_view eaten(std::string_view start, const Cursor& in) {
  return start.substr(0, start.size() - in.rest.size());
}

// MailboxParts - where eat_mailbox found the parts: the local part, and after the "@" the
// domain or the address literal (brackets included).
struct MailboxParts {
  std::string_view local;
  std::string_view domain;
};

// eat_mailbox - Mailbox = Local-part "@" ( Domain / address-literal ), Local-part =
// Dot-string / Quoted-string; the local part at most 64 octets (RFC 5321 §4.5.3.1.1).
bool eat_mailbox(Cursor& in, MailboxParts& parts) {
  std::string_view start = in.rest;
  bool local_ok = in.at('"') ? parse_quoted_string(in) : parse_dot_string(in);
  parts.local = eaten(start, in);
  if (!local_ok || parts.local.size() > max_local_part) return false;
  if (!in.eat('@')) return false;
  start = in.rest;
  bool domain_ok = in.at('[') ? parse_address_literal(in) : parse_domain(in);
  parts.domain = eaten(start, in);
  return domain_ok;
}

// parse_source_route - A-d-l = At-domain *( "," At-domain ); At-domain = "@" Domain.
// RFC 5321 §4.1.1.3: source routes must be accepted and ignored.
bool parse_source_route(Cursor& in) {
  do {
    if (!in.eat('@') || !parse_domain(in)) return false;
  } while (in.eat(','));
  return in.eat(':');
}

// PathError - why a path was refused; each maps to its own reply.
enum class PathError { none, syntax, too_long, needs_smtputf8 };

// has_8bit - whether any byte is outside ASCII.
bool has_8bit(std::string_view s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
}

// parse_path - Path = "<" [ A-d-l ":" ] Mailbox ">" at the start of `in.rest` (RFC 5321 §4.1.2).
// Sets `mailbox` to the address without brackets or source route (also when the only fault is
// UTF-8 without `in.utf8`: the caller decides whether SMTPUTF8 makes it acceptable). `allow_null`
// admits "<>" (reverse-path); `allow_postmaster` admits "<Postmaster>" (RCPT, §4.1.1.3). In lenient
// mode the brackets may be missing, as in "MAIL FROM:a@b".
PathError parse_path(Cursor& in, bool allow_null, bool allow_postmaster, bool lenient,
                     std::string& mailbox) {
  std::string_view start = in.rest;
  bool bracketed = in.eat('<');
  if (!bracketed && !lenient) return PathError::syntax;
  if (bracketed && allow_null && in.eat('>')) {
    mailbox.clear();
    return PathError::none;
  }
  bool utf8_allowed = in.utf8;
  in.utf8 = true; // parse UTF-8 in any case so the reply can say "needs SMTPUTF8"
  bool routed = bracketed && in.at('@');
  if (routed && !parse_source_route(in)) return PathError::syntax;
  std::string_view box_start = in.rest;
  MailboxParts parts;
  bool ok = eat_mailbox(in, parts);
  in.utf8 = utf8_allowed;
  std::string_view box = box_start.substr(0, box_start.size() - in.rest.size());
  if (!ok && allow_postmaster && !routed) { // "<Postmaster>" takes no source route
    Cursor word{box_start};
    parse_atom(word);
    std::string_view atom = box_start.substr(0, box_start.size() - word.rest.size());
    if (iequals(atom, "postmaster")) {
      in.rest = word.rest;
      box = atom;
      ok = true;
    }
  }
  if (!ok) return PathError::syntax;
  if (bracketed && !in.eat('>')) return PathError::syntax;
  std::string_view path = start.substr(0, start.size() - in.rest.size());
  if (path.size() > max_path) return PathError::too_long;
  mailbox.assign(box);
  return !utf8_allowed && has_8bit(path) ? PathError::needs_smtputf8 : PathError::none;
}

// parse_params - esmtp-param *(SP esmtp-param) (RFC 5321 §4.1.2), keywords upper-cased.
// esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"); esmtp-value = 1*(%d33-60 / %d62-126),
// or UTF-8 under SMTPUTF8. Lenient mode tolerates several spaces between parameters.
bool parse_params(std::string_view text, bool utf8, bool lenient, Params& params) {
  params.clear();
  while (!text.empty()) {
    if (text.front() != ' ') return false;
    text = lenient ? skip_spaces(text) : text.substr(1);
    if (text.empty()) return lenient;
    std::size_t end = text.find(' ');
    std::string_view param = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view() : text.substr(end);
    std::size_t eq = param.find('=');
    std::string_view keyword = param.substr(0, eq);
    if (keyword.empty() || !is_let_dig(static_cast<unsigned char>(keyword[0]))) return false;
    for (unsigned char c : keyword)
      if (!is_let_dig(c) && c != '-') return false;
    std::string_view value;
    if (eq != std::string_view::npos) {
      value = param.substr(eq + 1);
      if (value.empty()) return false;
      for (std::size_t i = 0; i < value.size();) {
        unsigned char c = static_cast<unsigned char>(value[i]);
        if (c >= 33 && c <= 126 && c != '=')
          ++i;
        else if (utf8 && c >= 0x80 && utf8_sequence_length(value.substr(i)) > 0)
          i += utf8_sequence_length(value.substr(i));
        else
          return false;
      }
    }
    params.emplace_back(upper(keyword), std::string(value));
  }
  return true;
}

// parse_size - the decimal value of SIZE= (RFC 1870); values too large for 64 bits saturate.
bool parse_size(std::string_view digits, uint64_t& size) {
  if (digits.empty() || digits.size() > 20) return false;
  size = 0;
  for (char c : digits) {
    if (!is_digit(static_cast<unsigned char>(c))) return false;
    size = size > UINT64_MAX / 10 ? UINT64_MAX : size * 10 + uint64_t(c - '0');
  }
  return true;
}

// BdatArgument - BDAT's argument: chunk-size [SP "LAST"] (RFC 3030 §2).
struct BdatArgument {
  uint64_t size = 0;
  bool last = false;
  bool well_formed = false; // false: the size was read, but something else follows it
};

// parse_bdat - the argument of BDAT; nullopt when not even the size can be read (1*DIGIT; a
// size too large for 64 bits saturates: no client can send that much in any case).
std::optional<BdatArgument> parse_bdat(std::string_view argument) {
  BdatArgument bdat;
  std::size_t space = argument.find(' ');
  if (!parse_size(argument.substr(0, space), bdat.size)) return std::nullopt;
  bdat.last = space != std::string_view::npos;
  bdat.well_formed = !bdat.last || iequals(skip_spaces(argument.substr(space)), "LAST");
  return bdat;
}

// decode_xtext - RFC 3461 §4: xtext = *( xchar / hexchar ), where xchar is any of "!" to "~"
// but "+" and "=", and hexchar is "+" and two upper-case hex digits standing for one octet.
// DSN's ENVID and ORCPT and AUTH='s mailbox (RFC 4954 §5) travel in it. false when malformed.
bool decode_xtext(std::string_view text, std::string& decoded) {
  decoded.clear();
  auto hex_value = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c - 'A' + 10; };
  auto is_upper_hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); };
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '+') {
      if (i + 2 >= text.size() || !is_upper_hex(text[i + 1]) || !is_upper_hex(text[i + 2]))
        return false;
      decoded += char(hex_value(text[i + 1]) * 16 + hex_value(text[i + 2]));
      i += 2;
    } else if (c >= '!' && c <= '~' && c != '=') {
      decoded += c;
    } else {
      return false;
    }
  }
  return true;
}

// encode_xtext - the other way (RFC 3461 §4): what decode_xtext reads back as `text`; the
// client sends ENVID, ORCPT's address and AUTH='s mailbox in it.
std::string encode_xtext(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c >= '!' && c <= '~' && c != '+' && c != '=')
      out += c;
    else
      out += '+' + hex(static_cast<unsigned char>(c), 2);
  }
  return out;
}

// parse_notify - NOTIFY= (RFC 3461 §4.1): "NEVER", or a comma-separated list of SUCCESS,
// FAILURE and DELAY (case-insensitive, none twice), upper-cased into `notify`.
bool parse_notify(std::string_view value, std::vector<std::string>& notify) {
  notify.clear();
  while (true) {
    std::size_t comma = value.find(',');
    std::string word = upper(value.substr(0, comma));
    bool known = word == "NEVER" || word == "SUCCESS" || word == "FAILURE" || word == "DELAY";
    if (!known || std::find(notify.begin(), notify.end(), word) != notify.end()) return false;
    notify.push_back(std::move(word));
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  bool never = std::find(notify.begin(), notify.end(), "NEVER") != notify.end();
  return !never || notify.size() == 1; // NEVER stands alone
}

// parse_orcpt - ORCPT=addr-type;xtext (RFC 3461 §4.2): addr-type is an atom such as "rfc822",
// the address xtext-encoded; the whole at most 500 characters. The address must not be empty.
bool parse_orcpt(std::string_view value, std::string& type, std::string& address) {
  std::size_t semicolon = value.find(';');
  if (value.size() > 500 || semicolon == 0 || semicolon == std::string_view::npos) return false;
  type.assign(value.substr(0, semicolon));
  for (unsigned char c : type)
    if (!is_let_dig(c) && c != '-') return false;
  return decode_xtext(value.substr(semicolon + 1), address) && !address.empty();
}

// is_valid_helo_name - Domain or address-literal, as RFC 5321 §4.1.1.1 asks of HELO/EHLO.
bool is_valid_helo_name(std::string_view name) {
  Cursor in{name};
  bool ok = in.at('[') ? parse_address_literal(in) : parse_domain(in);
  return ok && in.rest.empty();
}

// ---- parse_mailbox: the same parser, for users ------------------------------------------------

// unquote_local_part - the content of a quoted local part with its quoted pairs resolved
// ("a\"b" gives a"b: RFC 5321 §4.1.2 quoted-pairSMTP); a dot-string is returned as it is.
std::string unquote_local_part(std::string_view local) {
  if (local.size() < 2 || local.front() != '"' || local.back() != '"') return std::string(local);
  local = local.substr(1, local.size() - 2);
  std::string out;
  for (std::size_t i = 0; i < local.size(); ++i) {
    if (local[i] == '\\' && i + 1 < local.size()) ++i;
    out += local[i];
  }
  return out;
}

} // namespace

// parse_mailbox - a bare mailbox, or one in angle brackets, through eat_mailbox. UTF-8 is
// parsed in any case and reported in `utf8`, as parse_path does before it asks for SMTPUTF8.
// The text as written must fit the path limit (RFC 5321 §4.5.3.1.3), as parse_path checks it:
// so every address a hook receives, bracketed or (lenient mode) not, parses here.
std::optional<Mailbox> parse_mailbox(std::string_view text) {
  if (text.size() > max_path) return std::nullopt;
  Cursor in{text, true};
  bool bracketed = in.eat('<');
  MailboxParts parts;
  if (!eat_mailbox(in, parts) || (bracketed && !in.eat('>')) || !in.rest.empty())
    return std::nullopt;
  Mailbox box;
  box.local.assign(parts.local);
  (parts.domain.front() == '[' ? box.address_literal : box.domain).assign(parts.domain);
  box.utf8 = has_8bit(parts.local) || has_8bit(parts.domain);
  return box;
}

// Mailbox::address - local "@" domain, or local "@" address literal.
std::string Mailbox::address() const {
  return local + "@" + (address_literal.empty() ? domain : address_literal);
}

// Mailbox::domain_lower - the domain, ASCII letters lower-cased.
std::string Mailbox::domain_lower() const {
  std::string out = domain;
  for (char& c : out)
    c = ascii_lower(c);
  return out;
}

// Mailbox::user - the unquoted local part up to its first '+'.
std::string Mailbox::user() const {
  std::string name = unquote_local_part(local);
  return name.substr(0, name.find('+'));
}

namespace {

// =============================================================================================
// 4. Replies (RFC 5321 §4.2, enhanced status codes RFC 3463 / RFC 2034)
//
// Every reply the server gives is named here once, in ascending order of code, so the README's
// table and this list can be compared line by line. Replies are values, never format strings.
// =============================================================================================

namespace replies {

// help - the verbs this server knows (BDAT with CHUNKING, RFC 3030), under the session's own
// greeting verbs: LHLO in LMTP (RFC 2033 §4.1), HELO and EHLO in SMTP.
Reply help(bool lmtp) {
  std::string hello = lmtp ? "LHLO" : "HELO EHLO";
  return {214, "2.0.0",
          "Commands: " + hello + " MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\nSee RFC " +
              (lmtp ? "2033" : "5321")};
}

Reply ready_to_start_tls() {
  return {220, "2.0.0", "Ready to start TLS"};
}

Reply bye() {
  return {221, "2.0.0", "Bye"};
}

Reply auth_successful() {
  return {235, "2.7.0", "Authentication successful"};
}

Reply ok() {
  return {250, "2.0.0", "Ok"};
}

Reply sender_ok() {
  return {250, "2.1.0", "Ok"};
}

Reply recipient_ok() {
  return {250, "2.1.5", "Ok"};
}

Reply queued(const std::string& id) {
  return {250, "2.0.0", "Ok: queued as " + id};
}

Reply cannot_vrfy() {
  return {252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"};
}

Reply start_data() {
  return {354, "", "End data with <CR><LF>.<CR><LF>"};
}

Reply too_many_from_ip() {
  return {421, "4.7.0", "Too many connections from your address, try again later"};
}

Reply too_many_connections() {
  return {421, "4.3.2", "Too many connections, try again later"};
}

// connection_rate - Options::max_connection_rate (Postfix's smtpd_client_connection_rate_limit).
Reply connection_rate() {
  return {421, "4.7.0", "Too many connections from your address per minute, try again later"};
}

Reply shutting_down() {
  return {421, "4.3.2", "Service shutting down, try again later"};
}

Reply timeout() {
  return {421, "4.4.2", "Timeout exceeded, closing connection"};
}

Reply too_many_errors() {
  return {421, "4.7.0", "Too many errors, closing connection"};
}

Reply too_many_auth_failures() {
  return {421, "4.7.0", "Too many authentication failures, closing connection"};
}

Reply hook_failed_early() {
  return {421, "4.3.0", "Local error in processing, closing connection"};
}

// message_rate - Options::max_message_rate (Postfix's smtpd_client_message_rate_limit).
Reply message_rate() {
  return {450, "4.7.1", "Too much mail from your address, try again later"};
}

// recipient_rate - Options::max_recipient_rate (Postfix's smtpd_client_recipient_rate_limit).
Reply recipient_rate() {
  return {450, "4.7.1", "Too many recipients from your address, try again later"};
}

Reply local_error() {
  return {451, "4.3.0", "Local error in processing, try again later"};
}

Reply too_many_recipients() {
  return {452, "4.5.3", "Too many recipients"};
}

Reply auth_temporary_failure() {
  return {454, "4.7.0", "Temporary authentication failure"};
}

Reply unknown_command() {
  return {500, "5.5.2", "Command not recognized"};
}

Reply line_too_long() {
  return {500, "5.5.2", "Line too long"};
}

Reply use_lhlo() {
  return {500, "5.5.1", "This is an LMTP server: say LHLO (RFC 2033 §4.1)"};
}

Reply bare_lf() {
  return {500, "5.5.2", "Bare <LF> received; command lines must end with <CR><LF>"};
}

Reply bare_cr() {
  return {500, "5.5.2", "Bare <CR> received in command line"};
}

Reply auth_line_too_long() {
  return {500, "5.5.6", "Authentication exchange line is too long"};
}

Reply auth_cancelled() {
  return {501, "5.0.0", "Authentication cancelled"};
}

Reply cannot_decode() {
  return {501, "5.5.2", "Cannot decode response"};
}

Reply syntax(std::string usage) {
  return {501, "5.5.4", "Syntax: " + std::move(usage)};
}

Reply bad_sender() {
  return {501, "5.1.7", "Bad sender address syntax"};
}

Reply bad_recipient() {
  return {501, "5.1.3", "Bad recipient address syntax"};
}

Reply path_too_long() {
  return {501, "5.5.4", "Path too long"};
}

Reply bad_size() {
  return {501, "5.5.4", "Bad SIZE parameter"};
}

Reply bad_body() {
  return {501, "5.5.4", "BODY must be 7BIT or 8BITMIME"};
}

Reply bad_body_binary() {
  return {501, "5.5.4", "BODY must be 7BIT, 8BITMIME or BINARYMIME"};
}

// bad_param - a DSN (RFC 3461 §4), AUTH= (RFC 4954 §5) or other parameter whose value is
// malformed: "501 5.5.4 Bad RET parameter" and so on.
Reply bad_param(std::string_view keyword) {
  return {501, "5.5.4", "Bad " + std::string(keyword) + " parameter"};
}

Reply duplicate_param(std::string_view keyword) {
  return {501, "5.5.4", "Duplicate " + std::string(keyword) + " parameter"};
}

// bdat_unreadable - a BDAT line whose chunk size cannot be read: where the chunk ends, and so
// where the next command begins, is unknown, and reading the octets that follow as commands
// would let a chunk smuggle them (RFC 3030 §2). The only safe answer is to close.
Reply bdat_unreadable() {
  return {421, "4.5.4", "Syntax: BDAT chunk-size [LAST]; the chunk's end is unknown, closing"};
}

// chunk_received - the reply to a BDAT chunk that is not the last (RFC 3030 §2).
Reply chunk_received(uint64_t octets) {
  return {250, "2.0.0", std::to_string(octets) + " octets received"};
}

Reply data_after_bdat() {
  return {503, "5.5.1", "DATA and BDAT cannot be mixed in one transaction (RFC 3030 §2)"};
}

Reply binarymime_needs_bdat() {
  return {503, "5.5.1", "BODY=BINARYMIME requires BDAT, not DATA (RFC 3030 §3)"};
}

Reply rcpt_after_bdat() {
  return {503, "5.5.1", "RCPT after BDAT: the recipients are already closed (RFC 3030 §2)"};
}

Reply requiretls_needs_tls() {
  return {530, "5.7.10", "REQUIRETLS needs a TLS session (RFC 8689 §2)"};
}

// bad_xclient - an XCLIENT attribute that is unknown or malformed (XCLIENT_README).
Reply bad_xclient(std::string_view what) {
  return {501, "5.5.4", "Bad XCLIENT attribute: " + sanitize_for_header(what, 64)};
}

Reply not_implemented() {
  return {502, "5.5.1", "Command not implemented"};
}

Reply need_helo() {
  return {503, "5.5.1", "Send HELO/EHLO first"};
}

Reply nested_mail() {
  return {503, "5.5.1", "Sender already specified"};
}

Reply need_mail() {
  return {503, "5.5.1", "Need MAIL command"};
}

Reply already_authenticated() {
  return {503, "5.5.1", "Already authenticated"};
}

Reply tls_already_active() {
  return {503, "5.5.1", "TLS already active"};
}

Reply transaction_in_progress() {
  return {503, "5.5.1", "MAIL transaction in progress"};
}

Reply need_rcpt() {
  return {503, "5.5.1", "Need RCPT command"};
}

Reply refused_session() {
  return {503, "5.5.1", "Service refused, only QUIT allowed"};
}

Reply unknown_mechanism() {
  return {504, "5.5.4", "Unrecognized authentication type"};
}

Reply must_authenticate() {
  return {530, "5.7.0", "Authentication required"};
}

Reply must_starttls() {
  return {530, "5.7.0", "Must issue a STARTTLS command first"};
}

Reply invalid_credentials() {
  return {535, "5.7.8", "Authentication credentials invalid"};
}

Reply encryption_required() {
  return {538, "5.7.11", "Encryption required for requested authentication mechanism"};
}

// xclient_denied - XCLIENT from a client not in xclient_networks (XCLIENT_README).
Reply xclient_denied() {
  return {550, "5.7.0", "Insufficient authorization for XCLIENT"};
}

Reply message_too_big() {
  return {552, "5.3.4", "Message size exceeds fixed maximum message size"};
}

Reply needs_smtputf8() {
  return {553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter"};
}

Reply bare_cr_lf_in_data() {
  return {554, "5.6.0", "Message contains bare <CR> or <LF> (RFC 5321 §2.3.8)"};
}

Reply data_line_too_long() {
  return {554, "5.6.0", "Message line longer than 1000 octets"};
}

// no_valid_recipients - DATA after MAIL whose every RCPT was refused: RFC 5321 §3.3 allows 503
// or 554; 554 tells a pipelining client why (Postfix and the alienscience seed say the same).
// The public named refusal, so hooks and the server give the same reply.
Reply no_valid_recipients() {
  return Reply::no_valid_recipients();
}

Reply not_smtp() {
  return {554, "5.7.0", "This is an SMTP server, not a web server; closing"};
}

Reply early_talker() {
  return {554, "5.5.1", "Protocol error: input before the greeting; closing"};
}

Reply unauthorized_pipelining() {
  return {554, "5.5.1", "Protocol error: commands pipelined before EHLO; closing"};
}

Reply unknown_parameter() {
  return {555, "5.5.4", "Unsupported MAIL/RCPT parameter"};
}

} // namespace replies

// is_valid_enhanced_code - "class.subject.detail" (RFC 3463 §2) whose class matches `code`.
bool is_valid_enhanced_code(const std::string& enhanced, int code) {
  if (enhanced.size() < 5 || enhanced[0] != char('0' + code / 100) || enhanced[1] != '.')
    return false;
  std::size_t dot = enhanced.find('.', 2);
  if (dot == std::string::npos || dot == 2 || dot > 5 || dot + 1 == enhanced.size()) return false;
  std::size_t detail = enhanced.size() - dot - 1;
  if (detail > 3) return false;
  for (std::size_t i = 2; i < enhanced.size(); ++i)
    if (i != dot && !is_digit(static_cast<unsigned char>(enhanced[i]))) return false;
  return true;
}

// normalize_user_reply - check a Reply that came from a hook or handler: its code must be
// 2xx/4xx/5xx (anything else becomes 451 and is logged), its enhanced code must match, and its
// text must hold no control characters. Such text is only ever copied, never interpreted.
Reply normalize_user_reply(Reply r, const ErrorLog& log_error) {
  int klass = r.code / 100;
  if (r.code < 200 || r.code > 599 || klass == 3) {
    if (log_error) log_error("smtpd: hook returned invalid reply code " + std::to_string(r.code));
    return replies::local_error();
  }
  if (!is_valid_enhanced_code(r.enhanced, r.code)) r.enhanced = std::to_string(klass) + ".0.0";
  std::string text;
  for (char c : r.text) {
    unsigned char u = static_cast<unsigned char>(c);
    if (c == '\n')
      text += '\n';
    else if (u >= 0x20 && u != 0x7F)
      text += c;
  }
  while (!text.empty() && text.back() == '\n')
    text.pop_back();
  if (text.empty()) text = klass == 2 ? "Ok" : klass == 4 ? "Try again later" : "Rejected";
  r.text = std::move(text);
  return r;
}

// append_reply - format `r` onto `out` as RFC 5321 §4.2.1 reply lines: "250-..." for all lines
// but the last, "250 ..." for the last, each carrying the enhanced code when `enhanced` is on.
void append_reply(std::string& out, const Reply& r, bool enhanced) {
  std::string_view text = r.text;
  std::string prefix = std::to_string(r.code);
  bool with_code = enhanced && !r.enhanced.empty();
  for (;;) {
    std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    std::size_t room = max_reply_line - 2 - 4 - (with_code ? r.enhanced.size() + 1 : 0);
    out += prefix;
    out += nl == std::string_view::npos ? ' ' : '-';
    if (with_code) {
      out += r.enhanced;
      out += ' ';
    }
    out += line.substr(0, room);
    out += "\r\n";
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
}

} // namespace

// =============================================================================================
// 5. Protocol - one SMTP session, socket-free
//
// The bytes a client sends take one path through the Protocol, and it is cut into parts along
// that path, each with its own state and one reset:
//
//   bytes ─┬─► LineReader ─► a command line ─► the session: command table, stage guards, verbs
//          │                                      │            └─► Auth (its mechanism table)
//          └─► DotReader (in DATA) ─► content ─► MessageBuilder ─► the verdict
//
// Every call into user code (hooks, handlers, sinks, the Session object) goes through UserCode,
// the one exception boundary. Deadlines (Clocks) say when the client must have sent more.
//
// The session moves through stages (RFC 5321 §3.3): greeted → (HELO/EHLO) ready → (MAIL) mail
// → (RCPT...) mail with recipients → (DATA) data → (final dot) ready again. Command lines are
// looked up in a table whose flags hold the guards every verb shares; each verb then has its own
// cmd_<verb> function. Message content goes through an explicit scanner that finds the end of
// data (only CRLF.CRLF), removes dot-stuffing and enforces the size limit as it reads.
// =============================================================================================

namespace {

// Stage - where the session is.
enum class Stage {
  refused, // on_connect answered 5xx: only QUIT is accepted (RFC 5321 §3.1)
  greeted, // the 220 greeting is out; waiting for HELO/EHLO
  ready,   // after HELO/EHLO, no transaction open
  mail,    // MAIL accepted; RCPTs may follow, DATA once a recipient was accepted
  data,    // between 354 and the final dot
  chunk,   // reading the octets of a BDAT chunk (RFC 3030)
  bdat,    // between the chunks of a BDAT message: more BDAT, RSET, QUIT...
  closed,  // QUIT answered or 421 sent: nothing more is read
};

// in_networks - whether the numeric address `ip` lies in one of `cidrs` (section 8); an entry
// that does not parse matches nothing (Server refuses such Options before any session).
bool in_networks(const std::vector<std::string>& cidrs, const std::string& ip);

// tls_configured - whether Options ask for TLS at all (a context, or certificate files).
bool tls_configured(const Options& o) {
  return o.tls_context != nullptr || !o.tls_cert_file.empty();
}

// ---- 5.1 The command line reader ------------------------------------------------------------

// LineLimit - the longest command line allowed, CRLF included, judged from the line's start:
// AUTH lines and AUTH responses may be longer than other commands (RFC 4954 §4).
struct LineLimit {
  std::size_t command; // Options::max_command_line_bytes (RFC 5321 §4.5.3.1.4)
  bool auth_exchange;  // an AUTH dialogue is in progress: every line is a response

  std::size_t of(std::string_view start) const {
    return auth_exchange || istarts_with(start, "AUTH ") ? max_auth_line : command;
  }
};

// LineReader - cuts the client's bytes into command lines. A line ends only at CRLF (RFC 5321
// §2.3.8): a line ended by a bare LF is refused and the rest of it, up to the next CRLF, is
// discarded, as is the rest of a line that grew too long. A line may straddle reads: its start
// is kept, within the limit, so a client cannot make the buffer grow.
class LineReader {
public:
  enum class Got {
    line,     // a whole line, without its CRLF
    bare_lf,  // a line that ended with LF alone: refuse it
    bare_cr,  // a CRLF line with a CR inside it: refuse it
    too_long, // a line over its limit: refuse it
  };

  // read - take bytes from `in` up to and including the first LF (all of them when there is
  // none); returns how many. A line that ends calls on_line(Got, line) before read returns.
  template <class OnLine>
  std::size_t read(std::string_view in, const LineLimit& limit, OnLine&& on_line) {
    const char* lf = static_cast<const char*>(std::memchr(in.data(), '\n', in.size()));
    if (lf == nullptr) {
      keep_partial(in, limit, on_line);
      return in.size();
    }
    std::size_t used = std::size_t(lf - in.data()) + 1;
    bool crlf = used >= 2 ? in[used - 2] == '\r' : last_was_cr_;
    last_was_cr_ = false;
    std::string_view piece = in.substr(0, used - 1);
    if (discarding_) {
      discarding_ = !crlf; // a bare LF does not end the discarded line either
    } else if (partial_.empty()) {
      complete(piece, crlf, limit, on_line);
    } else {
      partial_.append(piece);
      complete(partial_, crlf, limit, on_line);
    }
    partial_.clear();
    return used;
  }

  // idle - no partial line is pending.
  bool idle() const { return partial_.empty() && !discarding_; }

  // pending_plain - a partial line is pending and it is not an AUTH line (for the tracer, which
  // masks what may hold a password: AUTH lines, and the rest of a line being discarded).
  bool pending_plain() const { return !partial_.empty() && !istarts_with(partial_, "AUTH"); }

  // lines_completed - CRLF-terminated lines read so far (a deadline per line restarts on each).
  std::size_t lines_completed() const { return lines_; }

  // reset - forget any partial line (after STARTTLS, RFC 3207 §4.2).
  void reset() {
    partial_.clear();
    discarding_ = false;
    last_was_cr_ = false;
  }

private:
  // keep_partial - hold the start of a line until its end arrives, within the limit.
  template <class OnLine>
  void keep_partial(std::string_view piece, const LineLimit& limit, OnLine& on_line) {
    if (piece.empty()) return;
    last_was_cr_ = piece.back() == '\r'; // a CRLF may straddle two reads
    if (discarding_) return;
    partial_.append(piece);
    if (partial_.size() > limit.of(partial_)) {
      partial_.clear();
      discarding_ = true;
      on_line(Got::too_long, std::string_view());
    }
  }

  // complete - a line ended (without its LF): say what it is.
  template <class OnLine>
  void complete(std::string_view line, bool crlf, const LineLimit& limit, OnLine& on_line) {
    if (!crlf) {
      discarding_ = true; // up to the next CRLF
      return on_line(Got::bare_lf, line);
    }
    line.remove_suffix(1); // the CR
    ++lines_;
    if (line.size() + 2 > limit.of(line)) return on_line(Got::too_long, line);
    if (line.find('\r') != std::string_view::npos) return on_line(Got::bare_cr, line);
    on_line(Got::line, line);
  }

  std::string partial_;      // the start of a line whose end has not arrived
  bool discarding_ = false;  // skipping the rest of a refused line, up to the next CRLF
  bool last_was_cr_ = false; // the last byte read was CR
  std::size_t lines_ = 0;
};

// ---- 5.2 The DATA reader --------------------------------------------------------------------

// DotReader - reads message content up to the end of data (RFC 5321 §4.1.1.4), removing
// dot-stuffing (§4.5.2). Only CR LF "." CR LF ends the data: a "." between bare LFs or bare CRs
// is content (the SMTP smuggling attacks of 2023). It notes bare CRs and LFs and lines over
// 1000 octets for strict mode, and resumes exactly where a read stopped.
class DotReader {
public:
  // read - take content from `in`, handing it on (dot-unstuffed) through append(p, n); returns
  // the bytes taken, which stop just after the final CRLF.CRLF when it is found (`done`).
  template <class Append> std::size_t read(std::string_view in, Append&& append, bool& done) {
    const char* p = in.data();
    const char* end = p + in.size();
    done = false;
    while (p < end) {
      switch (at_) {
      case At::line_start:
        at_ = *p == '.' ? At::dot : At::middle;
        if (at_ == At::dot) ++p;
        break;
      case At::dot: // the leading dot is removed, whatever follows
        at_ = *p == '\r' ? At::dot_cr : At::middle;
        if (at_ == At::dot_cr) ++p;
        break;
      case At::dot_cr:
        if (*p == '\n') {
          done = true;
          return std::size_t(p + 1 - in.data());
        }
        append("\r", 1); // ".\r" not followed by LF: that CR is content
        line_bytes_ = 1;
        last_was_cr_ = true;
        at_ = At::middle;
        break;
      case At::middle: p = scan_lines(p, end, append); break;
      }
    }
    return in.size();
  }

  bool bare_cr_or_lf() const { return bare_cr_or_lf_; } // a CR or LF not part of CRLF

  bool long_line() const { return long_line_; } // a line over 1000 octets

  // reset - ready for a new message, right after its 354.
  void reset() { *this = DotReader(); }

private:
  // At - where the reader is within a line of content.
  enum class At {
    line_start, // just after CRLF (or right after the 354)
    dot,        // a "." at the start of a line: dot-stuffing or the end of data
    dot_cr,     // ".\r" at the start of a line: the end of data if LF follows
    middle,     // inside a line
  };

  // scan_lines - hand on content up to the next line that starts with "." (the state machine's
  // business) or the end of the bytes at hand. memchr finds each LF; the whole run of lines is
  // appended at once.
  template <class Append> const char* scan_lines(const char* p, const char* end, Append& append) {
    const char* run = p; // content not yet appended
    for (;;) {
      const char* lf = static_cast<const char*>(std::memchr(p, '\n', std::size_t(end - p)));
      const char* stop = lf ? lf : end;
      bool ends_with_cr = note_crs(p, stop);
      line_bytes_ += std::size_t(stop - p);
      if (lf == nullptr) {
        last_was_cr_ = ends_with_cr;
        append(run, std::size_t(end - run));
        return end;
      }
      last_was_cr_ = false;
      p = lf + 1;
      if (!ends_with_cr) { // a bare LF is content, never a line end
        bare_cr_or_lf_ = true;
        ++line_bytes_;
        continue;
      }
      if (line_bytes_ + 1 > max_text_line) long_line_ = true; // CRLF: the line is complete
      line_bytes_ = 0;
      if (p == end || *p == '.') {
        append(run, std::size_t(p - run));
        at_ = At::line_start;
        return p;
      }
    }
  }

  // note_crs - note a bare CR (one not followed by LF) in the line piece [p, stop), where
  // `stop` is an LF or the end of the bytes at hand; true if the piece ends with a CR (which
  // may be the previous read's last byte). Only the first CR matters: if it is not the piece's
  // last byte, something other than LF follows it.
  bool note_crs(const char* p, const char* stop) {
    if (p == stop) return last_was_cr_;
    if (last_was_cr_) bare_cr_or_lf_ = true; // the last read ended with a CR, and no LF came
    const void* cr = std::memchr(p, '\r', std::size_t(stop - p));
    if (cr != nullptr && static_cast<const char*>(cr) + 1 < stop) bare_cr_or_lf_ = true;
    return stop[-1] == '\r';
  }

  At at_ = At::line_start;
  std::size_t line_bytes_ = 0; // octets of the current line so far
  bool last_was_cr_ = false;
  bool bare_cr_or_lf_ = false;
  bool long_line_ = false;
};

// ---- 5.2b The BDAT reader ---------------------------------------------------------------------

// ChunkReader - reads the octets of one BDAT chunk (RFC 3030 §2): exactly the number the BDAT
// command announced, whatever they are. No dot-stuffing, no end-of-data search, no line limit:
// the count alone says where the chunk ends, so "\r\n.\r\n" inside one is only content, and
// the next command begins right after the last octet.
class ChunkReader {
public:
  // begin - a chunk of `size` octets; `last` when the BDAT command said LAST.
  void begin(uint64_t size, bool last) {
    size_ = remaining_ = size;
    last_ = last;
  }

  // read - take up to the rest of the chunk from `in`, handing it on through append(p, n);
  // returns the octets taken.
  template <class Append> std::size_t read(std::string_view in, Append&& append) {
    std::size_t take = std::size_t(std::min<uint64_t>(remaining_, in.size()));
    if (take > 0) append(in.data(), take);
    remaining_ -= take;
    return take;
  }

  bool done() const { return remaining_ == 0; }

  bool last() const { return last_; }

  uint64_t size() const { return size_; }

private:
  uint64_t size_ = 0, remaining_ = 0;
  bool last_ = false;
};

// TextCheck - what strict mode refuses in message text that comes without dot-stuffing (BDAT
// chunks without BODY=BINARYMIME, which RFC 3030 §3 says are still lines of text): a CR or LF
// not part of CRLF (RFC 5321 §2.3.8), a line over 1000 octets. Resumes across chunks.
class TextCheck {
public:
  void scan(const char* p, std::size_t n) {
    for (const char* end = p + n; p < end; ++p) {
      if (last_was_cr_ != (*p == '\n')) bare_cr_or_lf_ = true; // CR then not LF, or LF alone
      last_was_cr_ = *p == '\r';
      if (*p != '\n' && ++line_bytes_ + 1 > max_text_line) long_line_ = true;
      if (*p == '\n') line_bytes_ = 0;
    }
  }

  // bare_cr_or_lf - found one, or the text ends with a CR.
  bool bare_cr_or_lf() const { return bare_cr_or_lf_ || last_was_cr_; }

  bool long_line() const { return long_line_; }

  void reset() { *this = TextCheck(); }

private:
  std::size_t line_bytes_ = 0; // octets of the current line so far, its CR included
  bool last_was_cr_ = false, bare_cr_or_lf_ = false, long_line_ = false;
};

} // namespace

// ---- 5.3 Calls into user code -----------------------------------------------------------------

// The Session interface's accepting defaults.
std::optional<Reply> Session::command(const SessionInfo&, std::string_view) {
  return std::nullopt;
}

std::optional<Reply> Session::hello(const SessionInfo&, const std::string&) {
  return std::nullopt;
}

std::optional<Reply> Session::mail(const SessionInfo&, const std::string&, const MailOptions&) {
  return std::nullopt;
}

std::optional<Reply> Session::rcpt(const SessionInfo&, const Envelope&, const std::string&,
                                   const RcptOptions&) {
  return std::nullopt;
}

std::unique_ptr<MessageSink> Session::data(const SessionInfo&, const Envelope&) {
  return nullptr;
}

std::optional<Reply> Session::message(const SessionInfo&, const Envelope&, const std::string&) {
  return std::nullopt;
}

RecipientReplies Session::message_per_recipient(const SessionInfo& session,
                                                const Envelope& envelope, const std::string& data) {
  return RecipientReplies(envelope.to.size(), message(session, envelope, data));
}

RecipientReplies MessageSink::finish_per_recipient(const Envelope& envelope) {
  return RecipientReplies(envelope.to.size(), finish());
}

void Session::reset(const SessionInfo&) {}

void Session::close(const SessionInfo&, SessionEnd) {}

std::vector<std::string> Session::auth_mechanisms(const SessionInfo&) {
  return {};
}

bool Session::check_password(const SessionInfo&, const std::string&, const std::string&,
                             const std::string&, const std::string&) {
  return false;
}

std::optional<std::string> Session::secret(const SessionInfo&, const std::string&) {
  return std::nullopt;
}

namespace {

// Mechanism - one SASL mechanism of AUTH (RFC 4954): the table below is the one list, used to
// advertise, to run an exchange and to validate Options.
struct Mechanism {
  std::string_view name;
  bool sends_password; // PLAIN, LOGIN: only under TLS unless auth_insecure (RFC 4954 §4: 538)
  bool uses_secret;    // CRAM-MD5 checks against the user's secret (auth_secret), not on_auth
  bool server_first;   // the server speaks first: an initial response is refused (RFC 2195)
};

constexpr Mechanism mechanism_table[] = {
    {"PLAIN", true, false, false},   // RFC 4616
    {"LOGIN", true, false, false},   // draft-murchison-sasl-login
    {"CRAM-MD5", false, true, true}, // RFC 2195
};

// find_mechanism - the table entry for `name` (any case), or null.
const Mechanism* find_mechanism(std::string_view name) {
  for (const Mechanism& m : mechanism_table)
    if (iequals(m.name, name)) return &m;
  return nullptr;
}

// HookSession - the Session that Options' function hooks and handlers make up: the hooks are
// one implementation of the Session interface, so every path through the Protocol is the same.
class HookSession final : public Session {
public:
  explicit HookSession(const Options& o) : o_(o) {}

  std::optional<Reply> hello(const SessionInfo& s, const std::string& name) override {
    return o_.on_helo ? o_.on_helo(s, name) : std::nullopt;
  }

  std::optional<Reply> mail(const SessionInfo& s, const std::string& from,
                            const MailOptions& m) override {
    return o_.on_mail ? o_.on_mail(s, from, m.params) : std::nullopt;
  }

  std::optional<Reply> rcpt(const SessionInfo& s, const Envelope&, const std::string& to,
                            const RcptOptions& r) override {
    return o_.on_rcpt ? o_.on_rcpt(s, to, r.params) : std::nullopt;
  }

  std::unique_ptr<MessageSink> data(const SessionInfo& s, const Envelope& e) override {
    if (!o_.stream_handler) return nullptr; // the message is buffered for message()
    std::unique_ptr<MessageSink> sink = o_.stream_handler(s, e);
    if (!sink) throw std::runtime_error("stream_handler returned no sink");
    return sink;
  }

  std::optional<Reply> message(const SessionInfo& s, const Envelope& e,
                               const std::string& data) override {
    if (o_.message_handler) return o_.message_handler(s, e, data);
    if (o_.handler) o_.handler(s.peer, e.from, e.to, data);
    return std::nullopt;
  }

  RecipientReplies message_per_recipient(const SessionInfo& s, const Envelope& e,
                                         const std::string& data) override {
    if (o_.per_recipient_handler) return o_.per_recipient_handler(s, e, data);
    return Session::message_per_recipient(s, e, data); // message() above, for all
  }

  // auth_mechanisms - those of auth_mechanisms (all, when empty) whose callback is set.
  std::vector<std::string> auth_mechanisms(const SessionInfo&) override {
    if (!o_.on_auth && !o_.auth_secret) return {}; // the common case: nothing to allocate
    std::vector<std::string> chosen;
    for (const Mechanism& m : mechanism_table)
      chosen.emplace_back(m.name);
    if (!o_.auth_mechanisms.empty()) chosen = o_.auth_mechanisms;
    std::vector<std::string> usable;
    for (const std::string& name : chosen) {
      const Mechanism* m = find_mechanism(name);
      if (m && (m->uses_secret ? bool(o_.auth_secret) : bool(o_.on_auth)))
        usable.emplace_back(m->name);
    }
    return usable;
  }

  bool check_password(const SessionInfo& s, const std::string& mechanism,
                      const std::string& username, const std::string& password,
                      const std::string& authzid) override {
    return o_.on_auth && o_.on_auth(s, mechanism, username, password, authzid);
  }

  std::optional<std::string> secret(const SessionInfo& s, const std::string& username) override {
    return o_.auth_secret ? o_.auth_secret(s, username) : std::nullopt;
  }

private:
  const Options& o_;
};

// UserCode - the only code that calls hooks, handlers, sinks and the Session object, each call
// through one exception boundary (consult): a thrown Reply is a reply, checked like a returned
// one; any other exception is logged and becomes a local error, and the session goes on.
class UserCode {
public:
  UserCode(const Options& o, const SessionInfo& s) : options_(o), session_(s) {}

  // start - make this session's Session object (the user's, or the hooks'); the reply says
  // whether to greet: `greeting` to accept, a 4xx or 5xx to refuse the client.
  Reply start(const Reply& greeting) {
    Reply r = consult(
        label("on_connect", "new_session"),
        [&]() -> std::optional<Reply> {
          if (options_.new_session) {
            object_ = options_.new_session(session_);
            if (!object_) throw std::runtime_error("new_session returned no Session");
            return std::nullopt;
          }
          object_ = std::make_unique<HookSession>(options_);
          return options_.on_connect ? options_.on_connect(session_) : std::nullopt;
        },
        greeting);
    if (!object_) object_ = std::make_unique<Session>(); // refused: only QUIT and close() remain
    return r;
  }

  // filter - the Session's verdict on a command line before it runs; nullopt lets it run.
  std::optional<Reply> filter(std::string_view line) {
    Reply r = consult(
        "Session::command", [&] { return object_->command(session_, line); }, replies::ok());
    if (r.positive()) return std::nullopt;
    return r;
  }

  Reply hello(const std::string& name, const Reply& ok) {
    return consult(
        label("on_helo", "Session::hello"), [&] { return object_->hello(session_, name); }, ok,
        replies::hook_failed_early());
  }

  Reply mail(const std::string& from, const MailOptions& m) {
    return consult(
        label("on_mail", "Session::mail"), [&] { return object_->mail(session_, from, m); },
        replies::sender_ok());
  }

  Reply rcpt(const Envelope& e, const std::string& to, const RcptOptions& r) {
    return consult(
        label("on_rcpt", "Session::rcpt"), [&] { return object_->rcpt(session_, e, to, r); },
        replies::recipient_ok());
  }

  // data - at DATA: 354 with `sink` set when the message is to be streamed (null: buffered),
  // or the refusal.
  Reply data(const Envelope& e, std::unique_ptr<MessageSink>& sink) {
    return consult(
        label("stream_handler", "Session::data"),
        [&]() -> std::optional<Reply> {
          sink = object_->data(session_, e);
          return std::nullopt;
        },
        replies::start_data());
  }

  // write - one piece to a sink: ok, or what it refused with.
  Reply write(MessageSink& sink, std::string_view piece) {
    return consult(
        "MessageSink::write",
        [&]() -> std::optional<Reply> {
          sink.write(piece);
          return std::nullopt;
        },
        replies::ok());
  }

  // finish - the sink's verdict per recipient (see each_recipient).
  std::vector<Reply> finish(MessageSink& sink, const Envelope& e, const Reply& queued) {
    return each_recipient(
        "MessageSink::finish", e, [&] { return sink.finish_per_recipient(e); }, queued);
  }

  // message - the handler's or Session's verdict per recipient (see each_recipient).
  std::vector<Reply> message(const Envelope& e, const std::string& data, const Reply& queued) {
    return each_recipient(
        label("handler", "Session::message"), e,
        [&] { return object_->message_per_recipient(session_, e, data); }, queued);
  }

  // mechanisms - the AUTH mechanisms the Session offers now (an exception: none, logged).
  std::vector<std::string> mechanisms() {
    try {
      return object_->auth_mechanisms(session_);
    } catch (...) {
      log(std::string(label("auth_mechanisms", "Session::auth_mechanisms")) + " threw");
      return {};
    }
  }

  // check_password - PLAIN or LOGIN: 235, 535, or the Reply the check threw.
  Reply check_password(const std::string& mechanism, const std::string& username,
                       const std::string& password, const std::string& authzid) {
    return consult(
        label("on_auth", "Session::check_password"),
        [&]() -> std::optional<Reply> {
          if (object_->check_password(session_, mechanism, username, password, authzid))
            return std::nullopt;
          return replies::invalid_credentials();
        },
        replies::auth_successful(), replies::auth_temporary_failure());
  }

  // check_cram_md5 - RFC 2195: hex(HMAC-MD5(secret, challenge)) compared in constant time.
  Reply check_cram_md5(const std::string& username, const std::string& digest,
                       const std::string& challenge) {
    return consult(
        label("auth_secret", "Session::secret"),
        [&]() -> std::optional<Reply> {
          std::optional<std::string> secret = object_->secret(session_, username);
          if (!username.empty() && secret &&
              constant_time_equals(hmac_md5_hex(*secret, challenge), digest))
            return std::nullopt;
          return replies::invalid_credentials();
        },
        replies::auth_successful(), replies::auth_temporary_failure());
  }

  void reset() {
    quietly("Session::reset", [&] { object_->reset(session_); });
  }

  // close - tell the Session why it ended, once.
  void close(SessionEnd why) {
    if (closed_ || !object_) return;
    closed_ = true;
    quietly("Session::close", [&] { object_->close(session_, why); });
  }

  // log - one line for log_error, naming the session.
  void log(const std::string& message) const {
    if (options_.log_error) options_.log_error("smtpd: session " + session_.id + ": " + message);
  }

private:
  // consult - run `call` at the exception boundary: the Reply it gave (checked), `fallback` when
  // it gave none, `on_exception` (logged) when it threw anything but a Reply.
  template <class Fn>
  Reply consult(const char* what, Fn&& call, const Reply& fallback,
                const Reply& on_exception = replies::local_error()) {
    try {
      std::optional<Reply> r = call();
      return r ? normalize_user_reply(std::move(*r), options_.log_error) : fallback;
    } catch (const Reply& r) {
      return normalize_user_reply(r, options_.log_error);
    } catch (const std::exception& e) {
      log(std::string(what) + " threw: " + e.what());
    } catch (...) { log(std::string(what) + " threw a non-standard exception"); }
    return on_exception;
  }

  // each_recipient - consult() for a verdict per recipient: one Reply for each of e.to, `queued`
  // where the verdict gave none. A thrown Reply answers every recipient; a list of the wrong
  // length is a bug in the user's code, logged, and every recipient gets 451 4.3.0.
  template <class Fn>
  std::vector<Reply> each_recipient(const char* what, const Envelope& e, Fn&& call,
                                    const Reply& queued) {
    RecipientReplies verdicts;
    bool returned = false;
    Reply whole = consult(
        what,
        [&]() -> std::optional<Reply> {
          verdicts = call();
          returned = true;
          return std::nullopt;
        },
        queued);
    if (!returned) return std::vector<Reply>(e.to.size(), whole); // it threw
    if (verdicts.size() != e.to.size()) {
      log(std::string(what) + " gave " + std::to_string(verdicts.size()) + " verdicts for " +
          std::to_string(e.to.size()) + " recipients");
      return std::vector<Reply>(e.to.size(), replies::local_error());
    }
    std::vector<Reply> replies;
    for (std::optional<Reply>& verdict : verdicts)
      replies.push_back(verdict ? normalize_user_reply(std::move(*verdict), options_.log_error)
                                : queued);
    return replies;
  }

  // quietly - run a call whose result is nothing; an exception is only logged.
  template <class Fn> void quietly(const char* what, Fn&& call) {
    consult(
        what,
        [&]() -> std::optional<Reply> {
          call();
          return std::nullopt;
        },
        replies::ok());
  }

  // label - the name of what is called, for logs: the hook's, or the Session method's.
  const char* label(const char* hook, const char* method) const {
    return options_.new_session ? method : hook;
  }

  const Options& options_;
  const SessionInfo& session_;
  std::unique_ptr<Session> object_;
  bool closed_ = false;
};

// ---- 5.4 AUTH (RFC 4954) ----------------------------------------------------------------------

// AuthStep - what one step of an AUTH exchange came to: a 334 challenge while it goes on, or
// its end (235 with the authenticated user, 535, 501, 454...).
struct AuthStep {
  Reply reply;
  std::string user; // on success: the identity that authenticated
};

// Auth - one AUTH exchange at a time: the mechanism chosen, its state between lines, and its
// steps. Lines during an exchange are responses, not commands (RFC 4954 §4).
class Auth {
public:
  explicit Auth(const Options& o, UserCode& user) : options_(o), user_(user) {}

  bool in_progress() const { return mechanism_ != nullptr; }

  void cancel() { mechanism_ = nullptr; }

  // offered - the mechanisms to advertise now, space-separated, in the Session's order.
  std::string offered(bool tls) {
    std::string list;
    for (const std::string& name : user_.mechanisms()) {
      const Mechanism* m = find_mechanism(name);
      if (m == nullptr || !secure_now(*m, tls) || has_word(list, m->name)) continue;
      list += list.empty() ? "" : " ";
      list += m->name;
    }
    return list;
  }

  // configured - the Session offers some mechanism, under TLS or not.
  bool configured() { return !user_.mechanisms().empty(); }

  // start - AUTH mechanism [initial-response] (RFC 4954 §4), once the session's guards passed.
  AuthStep start(std::string_view argument, bool tls, const std::string& hostname) {
    std::size_t space = argument.find(' ');
    std::string name = upper(argument.substr(0, space));
    if (name.empty()) return end(replies::syntax("AUTH mechanism [initial-response]"));
    const Mechanism* m = find_mechanism(name);
    std::vector<std::string> offered_now = user_.mechanisms();
    bool offered = m && std::any_of(offered_now.begin(), offered_now.end(),
                                    [&](const std::string& o) { return iequals(o, name); });
    if (!offered) return end(replies::unknown_mechanism());
    if (!secure_now(*m, tls)) return end(replies::encryption_required());
    mechanism_ = m;
    username_.reset();
    if (space == std::string_view::npos) return challenge(hostname);
    if (m->server_first) return end(replies::syntax("AUTH " + name));
    std::string_view initial = argument.substr(space + 1);
    return respond(initial == "=" ? std::string_view() : initial); // "=": empty (RFC 4954 §4)
  }

  // respond - one base64 line from the client during the exchange; "*" cancels it.
  AuthStep respond(std::string_view line) {
    if (line == "*") return end(replies::auth_cancelled());
    std::optional<std::string> decoded = base64_decode(line);
    if (!decoded) return end(replies::cannot_decode());
    if (mechanism_->name == "PLAIN") return plain(*decoded);
    if (mechanism_->name == "LOGIN") return login(*decoded);
    return cram_md5(*decoded);
  }

  // mask - a command line fit for logs and the Session's filter: AUTH's initial response holds
  // a password. Any line that starts like AUTH but is not "AUTH mechanism" is masked whole.
  static std::string mask(std::string_view line) {
    if (!istarts_with(line, "AUTH") || line.size() == 4) return std::string(line);
    std::size_t response = line[4] == ' ' ? line.find(' ', 5) : 4;
    if (response == std::string_view::npos) return std::string(line);
    return std::string(line.substr(0, response)) + " ****";
  }

private:
  // secure_now - PLAIN and LOGIN send the password itself: only under TLS, unless allowed.
  bool secure_now(const Mechanism& m, bool tls) const {
    return !m.sends_password || tls || options_.auth_insecure;
  }

  static bool has_word(const std::string& list, std::string_view word) {
    return (" " + list + " ").find(" " + std::string(word) + " ") != std::string::npos;
  }

  // challenge - the first 334 of a mechanism started without an initial response.
  AuthStep challenge(const std::string& hostname) {
    if (mechanism_->name == "LOGIN") return go_on(base64_encode("Username:"));
    if (mechanism_->name == "CRAM-MD5") {
      // RFC 2195: a fresh, unpredictable challenge per attempt, never reused.
      uint64_t random = (uint64_t(std::random_device{}()) << 32) | std::random_device{}();
      challenge_ = "<" + std::to_string(random) + "." + std::to_string(std::time(nullptr)) + "@" +
                   hostname + ">";
      return go_on(base64_encode(challenge_));
    }
    return go_on(""); // PLAIN: an empty challenge
  }

  // plain - RFC 4616: authzid NUL authcid NUL passwd.
  AuthStep plain(const std::string& message) {
    std::size_t first = message.find('\0');
    std::size_t second = first == std::string::npos ? first : message.find('\0', first + 1);
    if (second == std::string::npos || message.find('\0', second + 1) != std::string::npos)
      return end(replies::cannot_decode());
    std::string authzid = message.substr(0, first);
    std::string username = message.substr(first + 1, second - first - 1);
    return check_password(username, message.substr(second + 1), authzid);
  }

  // login - the LOGIN mechanism: user name, then password, each after a 334 prompt.
  AuthStep login(std::string value) {
    if (!username_) {
      username_ = std::move(value);
      return go_on(base64_encode("Password:"));
    }
    return check_password(*username_, value, "");
  }

  // check_password - an empty name or password is never valid (RFC 4616: 1*SAFE): an empty
  // auth_user means "not logged in".
  AuthStep check_password(const std::string& username, const std::string& password,
                          const std::string& authzid) {
    if (username.empty() || password.empty()) return end(replies::invalid_credentials());
    std::string mechanism(mechanism_->name);
    return end(user_.check_password(mechanism, username, password, authzid), username);
  }

  // cram_md5 - RFC 2195: "user hex(HMAC-MD5(secret, challenge))".
  AuthStep cram_md5(const std::string& answer) {
    std::size_t space = answer.rfind(' ');
    std::string username = answer.substr(0, space);
    std::string digest = space == std::string::npos ? "" : answer.substr(space + 1);
    return end(user_.check_cram_md5(username, digest, challenge_), username);
  }

  static AuthStep go_on(std::string text) { return {Reply{334, "", std::move(text)}, ""}; }

  AuthStep end(Reply r, std::string user = "") {
    mechanism_ = nullptr;
    bool ok = r.positive();
    return {std::move(r), ok ? std::move(user) : std::string()};
  }

  const Options& options_;
  UserCode& user_;
  const Mechanism* mechanism_ = nullptr; // the exchange in progress, or null
  std::optional<std::string> username_;  // LOGIN: the name given in the first step
  std::string challenge_;                // CRAM-MD5: the challenge sent
};

// ---- 5.5 The message being assembled ------------------------------------------------------

// MessageBuilder - one message from its 354 to its verdict: our Received header, then the
// content, kept whole for the handler or passed on in pieces to a sink; the size limit; and
// the verdict, which decides the reply to the final dot (RFC 5321 §4.1.1.4: 250 only if the
// message was accepted).
class MessageBuilder {
public:
  MessageBuilder(const Options& o, UserCode& user) : options_(o), user_(user) {}

  // begin - a new message, `header` first. With a sink, pieces of stream_chunk_bytes go to it;
  // without, the buffer reserves the size the client declared (RFC 1870, up to the limit):
  // untouched pages cost nothing on Linux's default overcommit, so trusting SIZE= costs a liar
  // nothing, and the content is appended with few reallocations.
  void begin(std::string queue_id, const std::string& header, uint64_t declared,
             std::unique_ptr<MessageSink> sink) {
    queue_id_ = std::move(queue_id);
    sink_ = std::move(sink);
    sink_refusal_.reset();
    content_bytes_ = 0;
    too_big_ = false;
    buffer_.assign(header);
    std::size_t most = sink_ ? options_.stream_chunk_bytes : options_.max_message_bytes;
    if (declared > 0) {
      buffer_.reserve(buffer_.size() +
                      std::min<uint64_t>({declared, options_.max_message_bytes, most}));
      advise_huge_pages(buffer_);
    }
  }

  // append - add content, or only count it once past max_message_bytes: the rest of the
  // message is read and dropped, never buffered (RFC 5321 §4.5.3.1.10 and 552).
  void append(const char* p, std::size_t n) {
    content_bytes_ += n;
    if (content_bytes_ > options_.max_message_bytes) too_big_ = true;
    if (too_big_) return;
    if (!sink_) return (void)buffer_.append(p, n);
    for (;;) { // pieces of exactly stream_chunk_bytes (the header's may be longer)
      if (buffer_.size() >= options_.stream_chunk_bytes) pass_to_sink(); // empties buffer_
      if (n == 0) return;
      std::size_t take = std::min(n, options_.stream_chunk_bytes - buffer_.size());
      buffer_.append(p, take);
      p += take;
      n -= take;
    }
  }

  bool too_big() const { return too_big_; }

  // failure - why the message cannot be accepted whatever comes next: past the size limit, or
  // refused by its sink; nullopt while it can.
  std::optional<Reply> failure() const {
    if (too_big_) return replies::message_too_big();
    return sink_refusal_;
  }

  std::size_t content_bytes() const { return content_bytes_; }

  // verdicts - after the final dot: the message handed over whole, or the sink's last piece
  // and its answer; one Reply per recipient of `envelope`, "250 ... queued as ID" where they
  // accept without a reply of their own.
  std::vector<Reply> verdicts(const Envelope& envelope) {
    Reply queued = replies::queued(queue_id_);
    if (!sink_) return user_.message(envelope, buffer_, queued);
    pass_to_sink();
    if (sink_refusal_) return std::vector<Reply>(envelope.to.size(), *sink_refusal_);
    std::vector<Reply> r = user_.finish(*sink_, envelope, queued);
    sink_.reset();
    return r;
  }

  // clear - drop the message; a sink not finished is abandoned (destroyed without finish()).
  void clear() {
    sink_.reset();
    if (buffer_.capacity() > keep_buffer_bytes) std::string().swap(buffer_);
    buffer_.clear();
  }

private:
  // pass_to_sink - hand the buffered piece over and empty the buffer (its capacity stays). After
  // a refused write() the rest is read and dropped, and the refusal is the verdict.
  void pass_to_sink() {
    if (!sink_refusal_ && !buffer_.empty()) {
      Reply r = user_.write(*sink_, buffer_);
      if (!r.positive()) sink_refusal_ = r;
    }
    buffer_.clear();
  }

  const Options& options_;
  UserCode& user_;
  std::string queue_id_;              // names the message in Received and in the 250 reply
  std::unique_ptr<MessageSink> sink_; // a streamed message's sink, or null: buffered
  std::optional<Reply> sink_refusal_; // what a write() refused with
  std::string buffer_;                // the whole message, or the piece not yet passed on
  std::size_t content_bytes_ = 0;
  bool too_big_ = false;
};

// fold - SMTP has one reply for the whole message (RFC 5321 §4.1.1.4), so verdicts per
// recipient become one. A refusal wins over delivery: 250 would claim that every recipient
// was served, and a retry that duplicates a copy is better than a silent loss (RFC 5321 §6.1).
// A 421 first (it closes the connection), then the first other 4xx (the client tries again
// later), then the first 5xx; all delivered: the first recipient's reply.
Reply fold(const std::vector<Reply>& verdicts) {
  auto rank = [](const Reply& r) {
    return r.code == 421 ? 3 : r.code >= 400 && r.code < 500 ? 2 : r.code >= 500 ? 1 : 0;
  };
  const Reply* chosen = nullptr;
  for (const Reply& r : verdicts)
    if (chosen == nullptr || rank(r) > rank(*chosen)) chosen = &r;
  return chosen ? *chosen : replies::local_error();
}

// with_protocol - the "with" keyword of Received (RFC 3848): SMTP after HELO; ESMTP, or LMTP in
// an LMTP session, with S for TLS and A for AUTH; UTF8SMTP or UTF8LMTP when the transaction used
// SMTPUTF8 (RFC 6531 §3.7.3).
std::string with_protocol(const SessionInfo& session, const Envelope& envelope, bool lmtp) {
  if (!session.esmtp) return "SMTP";
  std::string with = lmtp ? "LMTP" : "ESMTP";
  if (envelope.smtputf8) with = lmtp ? "UTF8LMTP" : "UTF8SMTP";
  if (session.tls) with += "S";
  if (!session.auth_user.empty()) with += "A";
  return with;
}

// client_comment - who the client is, for Received's "from" clause: "RDNS [IP]" (RFC 5321
// §4.4 TCP-info), or for a Unix-domain socket, which has no address, the process's credentials.
std::string client_comment(const Peer& peer) {
  if (peer.is_unix()) {
    std::string c = "via unix socket";
    if (peer.uid >= 0) c += ", uid " + std::to_string(peer.uid);
    if (peer.pid >= 0) c += " pid " + std::to_string(peer.pid);
    return c;
  }
  std::string c;
  if (!peer.hostname.empty()) c += sanitize_for_header(peer.hostname, max_domain) + " ";
  c += peer.ip.find(':') != std::string::npos ? "[IPv6:" : "[";
  return c + sanitize_for_header(peer.ip, 64) + "]";
}

// received_header - the trace header of RFC 5321 §4.4 (RFC 5322 §3.6.7):
//   Received: from HELO (RDNS [IP])
//           by HOSTNAME (APPNAME) with ESMTP id QUEUEID
//           for <rcpt>; DATE
// "for" names the recipient only when there is exactly one, so a Bcc is never revealed.
// Client text is sanitised, so a HELO name cannot break the line and forge a header.
std::string received_header(const SessionInfo& session, const Envelope& envelope,
                            const std::string& by, const std::string& queue_id, bool lmtp) {
  std::string h = "Received: from " + sanitize_for_header(session.helo, max_domain) + " (" +
                  client_comment(session.peer) + ")\r\n\tby " + by + " with " +
                  with_protocol(session, envelope, lmtp) + " id " + queue_id;
  if (session.tls)
    h += "\r\n\t(using " + sanitize_for_header(session.tls_version, 32) + " with cipher " +
         sanitize_for_header(session.tls_cipher, 64) + ")";
  if (envelope.to.size() == 1) h += "\r\n\tfor <" + envelope.to.front() + ">";
  return h + ";\r\n\t" + rfc5322_date(std::time(nullptr)) + "\r\n";
}

// ---- 5.6 MAIL and RCPT arguments --------------------------------------------------------------

// split_keyword - "FROM:" or "TO:" at the start of `argument`, case-insensitive; lenient mode
// allows spaces after the colon ("MAIL FROM: <a@b>"), strict mode does not.
bool split_keyword(std::string_view argument, std::string_view keyword, bool strict,
                   std::string_view& rest) {
  if (!istarts_with(argument, keyword)) return false;
  rest = argument.substr(keyword.size());
  if (!strict) rest = skip_spaces(rest);
  return true;
}

// utf8_values_allowed - parameter values may be UTF-8 only when SMTPUTF8 is among them
// (RFC 6531 §3.3).
bool utf8_values_allowed(const Params& params) {
  bool smtputf8 = std::any_of(params.begin(), params.end(),
                              [](const auto& p) { return p.first == "SMTPUTF8"; });
  return smtputf8 || std::none_of(params.begin(), params.end(),
                                  [](const auto& p) { return has_8bit(p.second); });
}

// ParamRules - what decides which MAIL and RCPT parameters are known in this session: a
// parameter belongs to an extension, and only the extensions advertised are known (RFC 1869
// §4.2: the others get 555).
struct ParamRules {
  const Options& options; // smtputf8, chunking, binarymime, dsn, requiretls, the user's keywords
  bool esmtp;             // parameters are defined by EHLO extensions: a HELO session has none
  bool auth;              // AUTH is offered, so AUTH= is known (RFC 4954 §5)
  bool authenticated;     // the session authenticated: AUTH= is trusted
  bool tls;               // the session runs over TLS (REQUIRETLS)
};

// is_listed - whether `keyword` (upper case) is one of the user's `keywords` (any case).
bool is_listed(const std::vector<std::string>& keywords, std::string_view keyword) {
  return std::any_of(keywords.begin(), keywords.end(),
                     [&](const std::string& k) { return iequals(k, keyword); });
}

// first_duplicate - a keyword given twice, or nullptr: each parameter may appear once (RFC 3461
// §4.3 and §4.4 say so of RET and ENVID; no extension defines a repeated one).
const std::string* first_duplicate(const Params& params) {
  for (std::size_t i = 0; i < params.size(); ++i)
    for (std::size_t j = 0; j < i; ++j)
      if (params[i].first == params[j].first) return &params[i].first;
  return nullptr;
}

// body_param - BODY=7BIT / 8BITMIME (RFC 6152) / BINARYMIME (RFC 3030 §3, when offered).
std::optional<Reply> body_param(const std::string& value, const Options& o, MailOptions& m) {
  bool binary_offered = o.binarymime && o.chunking;
  if (iequals(value, "8BITMIME"))
    m.body_8bit = true;
  else if (iequals(value, "BINARYMIME") && binary_offered)
    m.binarymime = true;
  else if (!iequals(value, "7BIT"))
    return binary_offered ? replies::bad_body_binary() : replies::bad_body();
  return std::nullopt;
}

// auth_param - AUTH=mailbox or AUTH=<> (RFC 4954 §5), xtext. The client's word is taken only
// from a client that authenticated; otherwise the value is "<>", as §5 asks of an untrusted one.
std::optional<Reply> auth_param(const std::string& value, const ParamRules& rules, MailOptions& m) {
  std::string mailbox; // an addr-spec without brackets (e+3Dmc2@example.com), or "<>"
  bool valid = decode_xtext(value, mailbox) &&
               (mailbox == "<>" || (mailbox.front() != '<' && parse_mailbox(mailbox)));
  if (!valid) return replies::bad_param("AUTH");
  m.auth = rules.authenticated ? mailbox : "<>";
  return std::nullopt;
}

// dsn_mail_param - RET=FULL|HDRS (RFC 3461 §4.3) and ENVID=xtext, at most 100 characters
// (§4.4).
std::optional<Reply> dsn_mail_param(const std::string& keyword, const std::string& value,
                                    MailOptions& m) {
  if (keyword == "RET") {
    m.ret = upper(value);
    if (m.ret != "FULL" && m.ret != "HDRS") return replies::bad_param("RET");
  } else if (value.size() > 100 || !decode_xtext(value, m.envid) || m.envid.empty()) {
    return replies::bad_param("ENVID");
  }
  return std::nullopt;
}

// mail_param - one MAIL parameter: SIZE (RFC 1870), BODY, SMTPUTF8 (RFC 6531), AUTH=, the DSN
// ones, REQUIRETLS (RFC 8689, inside TLS only), or one of the user's own.
std::optional<Reply> mail_param(const std::string& keyword, const std::string& value,
                                const ParamRules& rules, MailOptions& m) {
  const Options& o = rules.options;
  bool flag = value.empty(); // SMTPUTF8 and REQUIRETLS take no value
  if (keyword == "SIZE") {
    if (!parse_size(value, m.size)) return replies::bad_size();
    if (m.size > o.max_message_bytes) return replies::message_too_big();
  } else if (keyword == "BODY") {
    return body_param(value, o, m);
  } else if (keyword == "SMTPUTF8" && flag && o.smtputf8) {
    m.smtputf8 = true;
  } else if (keyword == "AUTH" && rules.auth) {
    return auth_param(value, rules, m);
  } else if ((keyword == "RET" || keyword == "ENVID") && o.dsn) {
    return dsn_mail_param(keyword, value, m);
  } else if (keyword == "REQUIRETLS" && flag && o.requiretls) {
    if (!rules.tls) return replies::requiretls_needs_tls();
    m.requiretls = true;
  } else if (!is_listed(o.mail_parameters, keyword)) {
    return replies::unknown_parameter();
  }
  return std::nullopt;
}

// mail_options - every MAIL parameter parsed into `m`, or the reply refusing the first bad one.
std::optional<Reply> mail_options(const Params& params, const ParamRules& rules, MailOptions& m) {
  if (!params.empty() && !rules.esmtp) return replies::unknown_parameter(); // RFC 1869 §4.2
  if (const std::string* twice = first_duplicate(params)) return replies::duplicate_param(*twice);
  for (const auto& [keyword, value] : params)
    if (std::optional<Reply> refused = mail_param(keyword, value, rules, m)) return refused;
  m.params = params;
  return std::nullopt;
}

// rcpt_options - every RCPT parameter parsed into `r`: NOTIFY and ORCPT (DSN, RFC 3461 §4.1,
// §4.2) or the user's own; or the reply refusing the first bad one.
std::optional<Reply> rcpt_options(const Params& params, const ParamRules& rules, RcptOptions& r) {
  if (!params.empty() && !rules.esmtp) return replies::unknown_parameter();
  if (const std::string* twice = first_duplicate(params)) return replies::duplicate_param(*twice);
  const Options& o = rules.options;
  for (const auto& [keyword, value] : params) {
    if (keyword == "NOTIFY" && o.dsn) {
      if (!parse_notify(value, r.notify)) return replies::bad_param("NOTIFY");
    } else if (keyword == "ORCPT" && o.dsn) {
      if (!parse_orcpt(value, r.orcpt_type, r.orcpt)) return replies::bad_param("ORCPT");
    } else if (!is_listed(o.rcpt_parameters, keyword)) {
      return replies::unknown_parameter();
    }
  }
  r.params = params;
  return std::nullopt;
}

// ---- 5.7 Deadlines ----------------------------------------------------------------------------

// Clocks - when the client must have sent more, which the Connection asks before each read. A
// command line must arrive whole within command_timeout (RFC 5321 §4.5.3.2.7), however slowly
// it trickles in; message content may pause data_timeout at most, and the whole of it may take
// data_timeout plus its size at min_data_rate (Postfix's smtpd_min_data_rate); no session
// outlives max_session_duration.
class Clocks {
public:
  using Clock = std::chrono::steady_clock;

  explicit Clocks(const Options& o) : options_(o) {
    Clock::time_point now = Clock::now();
    session_end_ = now + o.max_session_duration;
    line_deadline_ = now + o.command_timeout;
  }

  // read - `n` bytes arrived (`in_data`: as message content).
  void read(std::size_t n, bool in_data) {
    last_read_ = Clock::now();
    if (in_data) data_bytes_ += n;
  }

  // deadline - the deadline now; `lines` (lines completed) and `data` describe the session now:
  // a line completed restarts the command clock, as does the end of DATA.
  Clock::time_point deadline(std::size_t lines, bool data) {
    Clock::time_point now = Clock::now();
    if (lines != lines_seen_ || (in_data_ && !data)) {
      lines_seen_ = lines;
      line_deadline_ = now + options_.command_timeout;
    }
    if (data && !in_data_) {
      data_start_ = last_read_ = now;
      data_bytes_ = 0;
    }
    in_data_ = data;
    if (!data) return std::min(line_deadline_, session_end_);
    auto allowance = std::chrono::milliseconds(data_bytes_ * 1000 / options_.min_data_rate);
    return std::min({last_read_ + options_.data_timeout,
                     data_start_ + options_.data_timeout + allowance, session_end_});
  }

private:
  const Options& options_;
  Clock::time_point session_end_, line_deadline_, data_start_, last_read_;
  std::size_t lines_seen_ = 0;
  bool in_data_ = false;
  std::size_t data_bytes_ = 0;
};

} // namespace

// ---- 5.8 The tracer ------------------------------------------------------------------------

namespace {

// Trace - a session's Tracer (alienscience's SessionTracer), if new_tracer gave one: the bytes
// each way in the order of the dialogue, masking what may hold a password.
class Trace {
public:
  // start - ask new_tracer for this session's tracer (once the session has its id).
  void start(const Options& o, const SessionInfo& session, UserCode& user) {
    if (!o.new_tracer) return;
    try {
      tracer_ = o.new_tracer(session);
    } catch (...) { user.log("new_tracer threw; the session is not traced"); }
  }

  ~Trace() {
    if (tracer_) tracer_->close();
  }

  explicit operator bool() const { return tracer_ != nullptr; }

  // command - the bytes a command read is about to take (up to the first LF), before they run.
  // Masked: an AUTH response (`response`), an AUTH line's initial response, the rest of a
  // pending AUTH line or of a line being discarded.
  void command(std::string_view in, bool response, const LineReader& lines) {
    const char* lf = static_cast<const char*>(std::memchr(in.data(), '\n', in.size()));
    std::string_view piece = in.substr(0, lf ? std::size_t(lf - in.data()) + 1 : in.size());
    bool continuation = !lines.idle();
    if (response || (continuation && !lines.pending_plain()))
      masked(piece, "****");
    else if (!continuation)
      line(piece);
    else
      tracer_->client(piece);
  }

  // content - message content, traced as it is.
  void content(std::string_view bytes) { tracer_->client(bytes); }

  // chunk - the octets of a BDAT chunk, which the tracer may show as a size (they may be binary).
  void chunk(std::string_view bytes) {
    if (!bytes.empty()) tracer_->chunk(bytes);
  }

  // dropped - input never read as commands (after STARTTLS or the close), line by line: a
  // client may have pipelined AUTH behind STARTTLS.
  void dropped(std::string_view bytes) {
    while (!bytes.empty()) {
      std::size_t lf = bytes.find('\n');
      std::size_t take = lf == std::string_view::npos ? bytes.size() : lf + 1;
      line(bytes.substr(0, take));
      bytes.remove_prefix(take);
    }
  }

  void reply(std::string_view bytes) { tracer_->server(bytes); }

  // taken - the owner took a burst to write (a mark); after the last one the trace is closed.
  void taken(bool burst, bool over) {
    if (burst) tracer_->flush();
    if (!over) return;
    tracer_->close();
    tracer_.reset();
  }

private:
  // line - a whole line from its start: an AUTH line shows its mechanism only.
  void line(std::string_view piece) {
    if (!istarts_with(piece, "AUTH")) return tracer_->client(piece);
    masked(piece, Auth::mask(piece.substr(0, piece.find_last_not_of("\r\n") + 1)));
  }

  // masked - `shown` in place of a line's text, its line end (CRs and LF) kept as it was.
  void masked(std::string_view piece, const std::string& shown) {
    std::size_t text_end = piece.find_last_not_of("\r\n") + 1; // npos + 1 == 0: no text
    tracer_->client((text_end == 0 ? std::string() : shown) + std::string(piece.substr(text_end)));
  }

  std::unique_ptr<Tracer> tracer_;
};

} // namespace

// ---- 5.9 The session: stages, the command table, the verbs -----------------------------------

namespace {

// Command flags: the guards shared by several verbs, checked once before cmd_<verb> runs.
enum CommandFlag : unsigned {
  needs_helo = 1,  // 503 before HELO/EHLO (RFC 5321 §4.1.4)
  no_argument = 2, // 501 when an argument is given (DATA, RSET, QUIT)
  before_tls = 4,  // allowed before STARTTLS when tls_required (RFC 3207 §4)
  before_auth = 8, // allowed before AUTH when auth_required (RFC 4954 §6)
  junk = 16,       // counts toward junk_command_limit (Postfix smtpd_junk_command_limit)
};

} // namespace

// The DNS checks (section 6b): lookups through Options::dns_resolver, results into
// SessionInfo::dns, and the refusals they call for.
namespace {
bool dns_checks_on(const Options& o);
void dns_client_checks(const Options& o, SessionInfo& session);
void dns_helo_checks(const Options& o, SessionInfo& session, const std::string& helo);
void dns_mail_checks(const Options& o, SessionInfo& session, const std::string& from);
std::optional<Reply> dns_client_refusal(const Options& o, const DnsChecks& checks, bool at_rcpt);
std::optional<Reply> dns_helo_refusal(const Options& o, const DnsChecks& checks);
std::optional<Reply> dns_domain_refusal(const Options& o, const DnsChecks& checks);
} // namespace

// Protocol::State - the session: where it is (stage, envelope, counters), the parts the bytes
// go through, and one function per verb.
struct Protocol::State {
  const Options& options;
  SessionInfo session;
  Envelope envelope;
  std::string hostname; // our name, sanitised
  std::string appname;  // sanitised
  Stage stage = Stage::greeted;
  SessionEnd end = SessionEnd::client_gone; // why, once stage is closed
  std::string out;                          // replies not yet taken
  bool starttls_pending = false;            // STARTTLS accepted; the owner runs the handshake
  std::chrono::milliseconds reply_delay{0}; // see Protocol::take_reply_delay
  std::size_t rcpts_tried = 0;              // RCPT commands in this transaction
  std::size_t messages = 0;                 // messages begun in this session (queue ids)
  std::size_t errors = 0;                   // 5xx replies so far (Options::hard_error_limit)
  std::size_t junk_commands = 0;            // NOOP RSET VRFY HELP since the last message
  std::size_t auth_failures = 0;
  RateLimiter* rates;            // per-client message and recipient rates, or null: none
  bool xclient_allowed = false;  // the connecting client is in xclient_networks (a proxy)
  bool trusted = false;          // the client is in trusted_networks: no tls/auth_required
  bool login_by_xclient = false; // auth_user came from XCLIENT LOGIN, not from AUTH

  UserCode user;
  LineReader lines;
  DotReader dots;
  ChunkReader chunk;
  TextCheck text; // strict mode's checks on BDAT text (DotReader makes them for DATA)
  std::optional<Reply> chunk_refusal; // a refused BDAT: its reply, owed once the chunk is read
  Stage after_chunk = Stage::ready;   // where the session goes on after a refused chunk
  MessageBuilder message;
  Auth auth;
  Clocks clocks;
  Trace trace;

  State(const Options& o, SessionInfo s, RateLimiter* r)
      : options(o), session(std::move(s)), rates(r), user(o, session), message(o, user),
        auth(o, user), clocks(o) {
    if (session.id.empty()) session.id = new_queue_id();
    // XCLIENT is allowed by who connected (the proxy), for the whole connection; trust follows
    // the client the session is about, so XCLIENT recomputes it.
    xclient_allowed = in_networks(options.xclient_networks, session.peer.ip);
    trusted = in_networks(options.trusted_networks, session.peer.ip);
    if (session.peer.is_unix()) session.dns.exempt = dns_checks_on(options); // no IP to check
    trace.start(o, session, user);
  }

  ~State() { // the owner went away without a goodbye; no-op when the session ended already
    stage = Stage::closed;
    ended();
  }

  // ---- the command table -------------------------------------------------------------------

  struct Command {
    std::string_view verb;
    void (State::*run)(std::string_view argument);
    unsigned flags;
  };

  static const Command* find_command(std::string_view verb); // below: the table

  // ---- replies -----------------------------------------------------------------------------

  // reply - queue `r`; enhanced codes go out once EHLO negotiated them (RFC 2034 §3). A 421,
  // whoever chose it (a limit here, or a hook, handler or sink), means the server is closing the
  // channel (RFC 5321 §3.8): nothing more is read after it.
  void reply(const Reply& r) {
    if (r.code >= 500) count_error();
    std::size_t start = out.size();
    append_reply(out, r, session.esmtp);
    if (options.log_write) log_lines(options.log_write, std::string_view(out).substr(start));
    if (trace) trace.reply(std::string_view(out).substr(start));
    if (r.code == 421 && stage != Stage::closed) {
      stage = Stage::closed;
      end = SessionEnd::refused;
    }
  }

  // count_error - one more error: past soft_error_limit each one is answered slowly (a tarpit,
  // Postfix's smtpd_error_sleep_time); at hard_error_limit the session ends (after_command).
  void count_error() {
    if (++errors > options.soft_error_limit)
      reply_delay = std::max(reply_delay, options.error_delay);
  }

  // log_lines - pass each CRLF-terminated line of `text` to `log`.
  void log_lines(const LogHook& log, std::string_view text) {
    while (!text.empty()) {
      std::size_t end_of_line = text.find("\r\n");
      log(session.peer, text.substr(0, end_of_line));
      if (end_of_line == std::string_view::npos) break;
      text.remove_prefix(end_of_line + 2);
    }
  }

  // ---- session start and end -----------------------------------------------------------------

  // start - make the Session object, greet (RFC 5321 §4.2: "220 domain
  // text"), or refuse.
  void start() {
    hostname = sanitize_for_header(options.hostname.empty() ? system_hostname() : options.hostname,
                                   max_domain);
    appname = sanitize_for_header(options.appname.empty() ? "smtpd" : options.appname, 64);
    Reply greeting{220, "", hostname + (options.lmtp ? " LMTP " : " ESMTP ") + appname};
    dns_client_checks(options, session); // before on_connect, which sees the results
    Reply r = user.start(greeting);
    std::optional<Reply> refused = dns_client_refusal(options, session.dns, false);
    if (refused && r.positive()) r = *refused; // as if on_connect had said it
    if (r.positive()) {
      reply(greeting);
    } else if (r.code < 500) { // a temporary refusal closes: 421 (RFC 5321 §3.8)
      close_with({421, r.enhanced, r.text}, SessionEnd::refused);
    } else { // a permanent refusal: 554, then only QUIT (RFC 5321 §3.1)
      reply({554, r.enhanced, r.text});
      errors = 0;
      stage = Stage::refused;
    }
  }

  // close_with - queue a final reply and end the session.
  void close_with(const Reply& r, SessionEnd why) {
    if (stage == Stage::closed) return;
    end = why;
    stage = Stage::closed; // before the reply, so that its 421 keeps `why`
    reply(r);
    reset_transaction();
  }

  // ended - tell the Session object, once the session is over (the owner asks after each call).
  void ended() {
    if (stage == Stage::closed) user.close(end);
  }

  // reset_transaction - forget MAIL, RCPTs and any message (RFC 5321 §4.1.1.5, §4.1.4).
  void reset_transaction() {
    message.clear(); // a streamed message not finished is abandoned
    envelope = Envelope{};
    rcpts_tried = 0;
  }

  // ---- reading command lines -----------------------------------------------------------------

  // read_command - consume `in` up to and including the first LF; returns the bytes consumed.
  std::size_t read_command(std::string_view in) {
    LineLimit limit{command_line_limit(), auth.in_progress()};
    if (trace) trace.command(in, limit.auth_exchange, lines);
    return lines.read(in, limit, [this](LineReader::Got got, std::string_view line) {
      on_line(got, line);
      after_command();
    });
  }

  // command_line_limit - max_command_line_bytes, plus 500 when DSN is offered: RFC 3461 §4 lets
  // NOTIFY and ORCPT lengthen RCPT by 500 characters (and RET and ENVID MAIL by 100), as RFC
  // 5321 §4.5.3.1.4 allows extensions to.
  std::size_t command_line_limit() const {
    return options.max_command_line_bytes + (options.dsn ? dsn_line_allowance : 0);
  }

  // on_line - a line ended: refuse it, pass it to the AUTH exchange in progress, or execute it.
  // A refused line also ends that exchange.
  void on_line(LineReader::Got got, std::string_view line) {
    if (got == LineReader::Got::line && auth.in_progress()) {
      if (options.log_read) options.log_read(session.peer, "****"); // a password, maybe
      return auth_step(auth.respond(line));
    }
    if (got == LineReader::Got::line) return execute(line);
    Reply refused = got == LineReader::Got::bare_lf   ? replies::bare_lf()
                    : got == LineReader::Got::bare_cr ? replies::bare_cr()
                    : auth.in_progress()              ? replies::auth_line_too_long()
                                                      : replies::line_too_long();
    auth.cancel();
    reply(refused); // RFC 5321 §2.3.8, §4.5.3.1.4; RFC 4954 §4
  }

  // after_command - enforce the per-session error limit (Postfix's smtpd_hard_error_limit).
  void after_command() {
    if (errors >= options.hard_error_limit)
      close_with(replies::too_many_errors(), SessionEnd::refused);
  }

  // execute - the Session's filter first, then look the verb up in the command table, apply its
  // guards, run it. A refused BDAT still has its chunk to come: it is read and dropped before
  // the refusal is sent (RFC 3030 §2), so its octets never run as commands.
  void execute(std::string_view line) {
    std::size_t space = line.find(' ');
    std::string_view verb = line.substr(0, space);
    std::string_view argument = space == std::string_view::npos ? "" : line.substr(space + 1);
    if (!options.strict) argument = trim_trailing_spaces(skip_spaces(argument));
    const Command* command = find_command(verb);
    if (refused(line, command, argument)) return;
    if ((command->flags & junk) && ++junk_commands > options.junk_command_limit) count_error();
    (this->*command->run)(argument);
  }

  // refused - the Session's filter or a guard refuses the line: answer it (a BDAT once its chunk
  // is read) and say true. Out of line, so the Reply is off the stack while the verb runs.
  [[gnu::noinline]] bool refused(std::string_view line, const Command* command,
                                 std::string_view argument) {
    std::optional<Reply> refusal = filter(line);
    if (!refusal) refusal = guard(command, argument);
    if (!refusal) return false;
    if (command && command->run == &State::cmd_bdat && options.chunking)
      refuse_chunk(argument, *refusal);
    else
      reply(*refusal);
    return true;
  }

  // guard - the checks shared by several verbs (the command's flags), before it runs: the
  // refusal, or nullopt to run it.
  std::optional<Reply> guard(const Command* command, std::string_view argument) const {
    if (stage == Stage::refused && !(command && command->run == &State::cmd_quit))
      return replies::refused_session();
    if (command == nullptr) return replies::unknown_command();
    // Trusted networks are not held to either requirement (go-smtp's SecureNet, Postfix's
    // permit_mynetworks).
    if (options.tls_required && !session.tls && !trusted && !(command->flags & before_tls))
      return replies::must_starttls();
    if (options.auth_required && session.auth_user.empty() && !trusted &&
        !(command->flags & before_auth))
      return replies::must_authenticate();
    if ((command->flags & no_argument) && !argument.empty())
      return replies::syntax(std::string(command->verb));
    if ((command->flags & needs_helo) && stage == Stage::greeted) return replies::need_helo();
    return std::nullopt;
  }

  // filter - log the line (AUTH masked) and ask the Session's filter: its refusal, or nullopt.
  // Out of line, so its temporaries are off the stack by the time the verb runs.
  [[gnu::noinline]] std::optional<Reply> filter(std::string_view line) {
    std::string masked; // only an AUTH line is copied: no allocation per ordinary command
    std::string_view shown = line;
    if (istarts_with(line, "AUTH")) shown = masked = Auth::mask(line);
    if (options.log_read) options.log_read(session.peer, shown);
    return user.filter(shown);
  }

  // pipelining_forbidden - more commands arrived before the reply to the last one, though
  // PIPELINING was not advertised (no EHLO yet, or HELO): RFC 2920 §3.1 says the client must
  // wait. Spammers' bulk tools do this; real clients do not.
  bool pipelining_forbidden() const {
    bool commands = !in_content() && stage != Stage::closed && !starttls_pending;
    return options.reject_unauthorized_pipelining && commands && !session.esmtp;
  }

  // ---- HELO and EHLO -------------------------------------------------------------------------

  // LMTP has LHLO in place of HELO and EHLO, which it refuses (RFC 2033 §4.1); SMTP has no
  // LHLO.
  void cmd_helo(std::string_view argument) {
    if (options.lmtp) return reply(replies::use_lhlo());
    hello(argument, false);
  }

  void cmd_ehlo(std::string_view argument) {
    if (options.lmtp) return reply(replies::use_lhlo());
    hello(argument, true);
  }

  void cmd_lhlo(std::string_view argument) {
    if (!options.lmtp) return reply(replies::unknown_command());
    hello(argument, true);
  }

  // hello - HELO/EHLO/LHLO domain (RFC 5321 §4.1.1.1, RFC 2033 §4.1): opens the session and
  // resets any transaction. LHLO is EHLO by another name: the same reply and extensions.
  void hello(std::string_view name, bool extended) {
    const char* usage = options.lmtp ? "LHLO domain" : extended ? "EHLO domain" : "HELO domain";
    if (name.empty()) return reply(replies::syntax(usage));
    if (options.strict && !is_valid_helo_name(name))
      return reply({501, "5.5.4", "Invalid domain name"});
    std::string helo(name);
    dns_helo_checks(options, session, helo);
    if (std::optional<Reply> refused = dns_helo_refusal(options, session.dns))
      return reply(*refused);
    Reply r = user.hello(helo, Reply{250, "", hostname});
    if (r.code == 421) return close_with(r, SessionEnd::refused); // a hook failed: give up
    if (!r.positive()) return reply(r);
    reset_transaction();
    user.reset();
    session.helo = std::move(helo);
    session.esmtp = extended;
    stage = Stage::ready;
    reply(extended ? ehlo_reply() : Reply{250, "", hostname});
  }

  // ehlo_reply - the greeting line and the extensions that work (RFC 5321 §4.1.1.1).
  Reply ehlo_reply() {
    std::string text = hostname;
    text += "\nSIZE " + std::to_string(options.max_message_bytes); // RFC 1870
    text += "\n8BITMIME";                                          // RFC 6152
    text += "\nPIPELINING";                                        // RFC 2920
    text += "\nENHANCEDSTATUSCODES";                               // RFC 2034
    if (options.smtputf8) text += "\nSMTPUTF8";                    // RFC 6531
    if (options.chunking) text += "\nCHUNKING";                    // RFC 3030
    if (options.chunking && options.binarymime) text += "\nBINARYMIME";
    if (options.dsn) text += "\nDSN";                                     // RFC 3461
    if (options.requiretls && session.tls) text += "\nREQUIRETLS";        // RFC 8689 §2
    text += "\nLIMITS RCPTMAX=" + std::to_string(options.max_recipients); // RFC 9422
    if (tls_offered()) text += "\nSTARTTLS";                              // RFC 3207
    std::string mechanisms = auth.offered(session.tls);
    if (!mechanisms.empty()) text += "\nAUTH " + mechanisms; // RFC 4954
    if (xclient_allowed) text += "\nXCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT";
    for (const std::string& keyword : options.ehlo_keywords)
      text += "\n" + keyword;
    return {250, "", text};
  }

  // ---- the transaction: MAIL, RCPT, DATA --------------------------------------------------

  // cmd_mail - MAIL FROM:<reverse-path> [SP params] (RFC 5321 §4.1.1.2): opens a transaction.
  void cmd_mail(std::string_view argument) {
    if (stage != Stage::ready) return reply(replies::nested_mail());
    if (!rate_allows(RateLimiter::Kind::message)) return reply(replies::message_rate());
    std::string_view path_and_params;
    if (!split_keyword(argument, "FROM:", options.strict, path_and_params))
      return reply(replies::syntax("MAIL FROM:<address>"));
    std::string from;
    Cursor in{path_and_params};
    PathError error = parse_path(in, true, false, !options.strict, from);
    if (error == PathError::syntax) return reply(replies::bad_sender());
    if (error == PathError::too_long) return reply(replies::path_too_long());
    Params params;
    if (!parse_params(in.rest, true, !options.strict, params) || !utf8_values_allowed(params))
      return reply(replies::syntax("MAIL FROM:<address> [parameters]"));
    MailOptions m;
    if (std::optional<Reply> refused = mail_options(params, param_rules(!params.empty()), m))
      return reply(*refused);
    if (error == PathError::needs_smtputf8 && !m.smtputf8) return reply(replies::needs_smtputf8());
    dns_mail_checks(options, session, from);
    if (std::optional<Reply> refused = dns_domain_refusal(options, session.dns))
      return reply(*refused);
    Reply r = user.mail(from, m);
    if (!r.positive()) return reply(r);
    // mail_params, smtputf8 and body_8bit are the older, flat view of `mail`, kept for users.
    envelope =
        Envelope{std::move(from), {}, m.params, m.smtputf8, m.body_8bit, std::move(m), {}, false};
    rcpts_tried = 0;
    stage = Stage::mail;
    reply(r);
  }

  // param_rules - which parameters this session knows (`any`: there are some to check, so it is
  // worth asking whether AUTH is offered).
  ParamRules param_rules(bool any) {
    bool auth_known = any && auth.configured();
    return {options, session.esmtp, auth_known, !session.auth_user.empty(), session.tls};
  }

  // cmd_rcpt - RCPT TO:<forward-path> [SP params] (RFC 5321 §4.1.1.3): adds a recipient.
  void cmd_rcpt(std::string_view argument) {
    if (stage == Stage::bdat) return reply(replies::rcpt_after_bdat());
    if (stage != Stage::mail) return reply(replies::need_mail());
    if (!rate_allows(RateLimiter::Kind::recipient)) return reply(replies::recipient_rate());
    ++rcpts_tried;
    std::string_view path_and_params;
    if (!split_keyword(argument, "TO:", options.strict, path_and_params))
      return reply(replies::syntax("RCPT TO:<address>"));
    std::string to;
    Cursor in{path_and_params, false};
    PathError error = parse_path(in, false, true, !options.strict, to);
    if (error == PathError::syntax) return reply(replies::bad_recipient());
    if (error == PathError::too_long) return reply(replies::path_too_long());
    if (error == PathError::needs_smtputf8 && !envelope.smtputf8)
      return reply(replies::needs_smtputf8());
    RcptOptions r;
    if (!parse_params(in.rest, envelope.smtputf8, !options.strict, r.params))
      return reply(replies::syntax("RCPT TO:<address> [parameters]"));
    if (std::optional<Reply> refused = rcpt_options(r.params, param_rules(false), r))
      return reply(*refused);
    if (envelope.to.size() >= options.max_recipients) // RFC 5321 §4.5.3.1.10
      return reply(replies::too_many_recipients());
    if (std::optional<Reply> refused = dns_client_refusal(options, session.dns, true))
      return reply(*refused);
    Reply verdict = user.rcpt(envelope, to, r);
    if (verdict.positive()) {
      envelope.to.push_back(std::move(to));
      envelope.rcpt.push_back(std::move(r));
    }
    reply(verdict);
  }

  // cmd_data - DATA (RFC 5321 §4.1.1.4): 354, then message content until CRLF.CRLF. With no
  // recipient: 503 if none was tried, 554 if all were refused (RFC 5321 §3.3, as Postfix).
  void cmd_data(std::string_view) {
    if (stage == Stage::bdat) return reply(replies::data_after_bdat());
    if (std::optional<Reply> refused = content_refusal()) return reply(*refused);
    if (envelope.mail.binarymime) return reply(replies::binarymime_needs_bdat());
    std::unique_ptr<MessageSink> sink;
    Reply r = user.data(envelope, sink);
    if (r.code != 354) return reply(r);
    begin_message(std::move(sink));
    dots.reset();
    stage = Stage::data;
    reply(r);
  }

  // content_refusal - why the message content cannot begin now (DATA or the first BDAT): no
  // transaction, or no recipient: 503 if none was tried, 554 if all were refused.
  std::optional<Reply> content_refusal() const {
    if (stage != Stage::mail) return replies::need_mail();
    if (envelope.to.empty())
      return rcpts_tried > 0 ? replies::no_valid_recipients() : replies::need_rcpt();
    return std::nullopt;
  }

  // begin_message - a message begins, `sink` or buffered: its queue id is the session's id and
  // the message's number in the session; our Received header goes first.
  void begin_message(std::unique_ptr<MessageSink> sink) {
    ++messages;
    std::string id = session.id + hex(messages, messages < 256 ? 2 : 16);
    std::string by = hostname + " (" + appname + ")";
    message.begin(id, received_header(session, envelope, by, id, options.lmtp), envelope.mail.size,
                  std::move(sink));
  }

  // read_data - consume message content from `in`; returns the bytes consumed.
  std::size_t read_data(std::string_view in) {
    bool done = false;
    std::size_t used = dots.read(
        in, [this](const char* p, std::size_t n) { message.append(p, n); }, done);
    if (trace) trace.content(in.substr(0, used));
    if (done) finish_message();
    return used;
  }

  // finish_message - the final dot arrived: refuse, or hand the message over and say 250 only
  // if it was accepted (RFC 5321 §4.1.1.4, §6.1).
  void finish_message() {
    if (options.log_read)
      options.log_read(session.peer,
                       "<" + std::to_string(message.content_bytes()) + " octets of message data>");
    stage = Stage::ready;
    bool text_checked = options.strict && !envelope.mail.binarymime; // BINARYMIME is any octets
    bool bare = envelope.chunked ? text.bare_cr_or_lf() : dots.bare_cr_or_lf();
    bool long_line = envelope.chunked ? text.long_line() : dots.long_line();
    if (message.too_big())
      answer_message(replies::message_too_big());
    else if (text_checked && bare)
      answer_message(replies::bare_cr_lf_in_data());
    else if (text_checked && long_line)
      answer_message(replies::data_line_too_long());
    else
      deliver();
    reset_transaction();
    user.reset();
    after_command();
  }

  // deliver - the verdicts decide the replies; a message delivered to anyone resets the junk
  // count.
  void deliver() {
    std::vector<Reply> verdicts = message.verdicts(envelope);
    if (std::any_of(verdicts.begin(), verdicts.end(), [](const Reply& r) { return r.positive(); }))
      junk_commands = 0;
    answer_message(verdicts);
  }

  // answer_message - the replies to the end of the message. LMTP gives one per recipient
  // accepted at RCPT, in RCPT order (RFC 2033 §4.2), for a refusal of the whole message too,
  // and counts the group as one error at most: a message refused for a hundred recipients is
  // one mistake, not a hundred. SMTP folds them into one (see fold).
  void answer_message(const std::vector<Reply>& verdicts) {
    if (!options.lmtp) return reply(fold(verdicts));
    std::size_t errors_before = errors;
    for (const Reply& r : verdicts)
      reply(r);
    errors = std::min(errors, errors_before + 1);
  }

  void answer_message(const Reply& whole) {
    answer_message(std::vector<Reply>(envelope.to.size(), whole));
  }

  // in_transaction - MAIL was accepted and the transaction is open: recipients, or the chunks
  // of a BDAT message.
  bool in_transaction() const { return stage == Stage::mail || stage == Stage::bdat; }

  // in_content - the client is sending message content: after DATA's 354, or a BDAT chunk.
  bool in_content() const { return stage == Stage::data || stage == Stage::chunk; }

  // ---- BDAT (RFC 3030 CHUNKING) ----------------------------------------------------------------

  // cmd_bdat - BDAT chunk-size [LAST] (RFC 3030 §2): the next chunk-size octets are content. The
  // first chunk opens the message as DATA would (without a 354: the octets follow at once); each
  // chunk is answered once read, the one marked LAST with the verdict on the whole message.
  void cmd_bdat(std::string_view argument) {
    if (!options.chunking) return reply(replies::not_implemented());
    std::optional<BdatArgument> bdat = parse_bdat(argument);
    if (!bdat) return close_with(replies::bdat_unreadable(), SessionEnd::refused);
    if (!bdat->well_formed) return skip_chunk(*bdat, replies::syntax("BDAT chunk-size [LAST]"));
    if (stage != Stage::bdat) {
      if (std::optional<Reply> refused = content_refusal()) return skip_chunk(*bdat, *refused);
      envelope.chunked = true; // before data(): the session or stream_handler may ask
      std::unique_ptr<MessageSink> sink;
      Reply r = user.data(envelope, sink);
      if (r.code != 354) return skip_chunk(*bdat, r);
      begin_message(std::move(sink));
      text.reset();
    }
    chunk.begin(bdat->size, bdat->last);
    stage = Stage::chunk;
    if (chunk.done()) end_chunk(); // a chunk of 0 octets: nothing to wait for
  }

  // refuse_chunk - a BDAT refused before it ran (a guard or the Session's filter): read and drop
  // its chunk, then refuse; or close when its size cannot be read.
  void refuse_chunk(std::string_view argument, const Reply& refused) {
    std::optional<BdatArgument> bdat = parse_bdat(argument);
    if (!bdat) return close_with(replies::bdat_unreadable(), SessionEnd::refused);
    skip_chunk(*bdat, refused);
  }

  // skip_chunk - read the chunk and drop it, then answer `refused`. A refused chunk fails its
  // whole transaction (RFC 3030 §2: the client must send no more chunks of it), so chunks the
  // client pipelined behind it find no transaction and are dropped in turn. A 421 closes now.
  void skip_chunk(const BdatArgument& bdat, const Reply& refused) {
    if (refused.code == 421) return reply(refused);
    chunk_refusal = refused;
    chunk.begin(bdat.size, bdat.last);
    after_chunk = stage;
    stage = Stage::chunk;
    if (chunk.done()) end_chunk();
  }

  // read_chunk - consume chunk octets from `in`; returns the octets consumed.
  std::size_t read_chunk(std::string_view in) {
    bool check_text = options.strict && !envelope.mail.binarymime;
    std::size_t used = chunk.read(in, [&](const char* p, std::size_t n) {
      if (chunk_refusal) return;
      message.append(p, n);
      if (check_text) text.scan(p, n);
    });
    if (trace) trace.chunk(in.substr(0, used));
    if (chunk.done()) end_chunk();
    return used;
  }

  // end_chunk - the chunk's last octet arrived: answer it. Past the size limit, or refused by a
  // sink, the message is dropped with that reply (552 for the size, counted across chunks).
  // The LAST chunk ends the message however it went: finish_message answers it (in LMTP, per
  // recipient, as after DATA's dot: RFC 3030 §4, RFC 2033 §4.2).
  void end_chunk() {
    if (chunk_refusal) return end_refused_chunk();
    if (chunk.last()) return finish_message();
    if (std::optional<Reply> failed = message.failure()) {
      fail_transaction();
      reply(*failed);
    } else {
      stage = Stage::bdat;
      reply(replies::chunk_received(chunk.size()));
    }
    after_command();
  }

  // end_refused_chunk - a refused chunk is read: send the refusal it owed.
  void end_refused_chunk() {
    stage = after_chunk;
    if (in_transaction()) fail_transaction();
    reply(*std::exchange(chunk_refusal, std::nullopt));
    after_command();
  }

  // fail_transaction - a failed chunk ends its transaction.
  void fail_transaction() {
    reset_transaction();
    user.reset();
    stage = Stage::ready;
  }

  // ---- STARTTLS (RFC 3207) ---------------------------------------------------------------------

  // tls_offered - STARTTLS is configured, compiled in, and not in effect yet (RFC 3207 §4).
  bool tls_offered() const { return tls_compiled && tls_configured(options) && !session.tls; }

  // cmd_starttls - STARTTLS (RFC 3207 §4): say 220, then the owner runs the handshake. Whatever
  // the client pipelined behind it is discarded by feed(), never executed in the TLS session.
  void cmd_starttls(std::string_view) {
    if (session.tls) return reply(replies::tls_already_active());
    if (!tls_offered()) return reply(replies::not_implemented());
    if (stage == Stage::greeted) return reply(replies::need_helo()); // an EHLO extension
    if (in_transaction()) return reply(replies::transaction_in_progress());
    reply(replies::ready_to_start_tls());
    starttls_pending = true;
  }

  // tls_started - RFC 3207 §4.2: after the handshake the server forgets all it knew from the
  // client (HELO name, transaction, authentication) and waits for a new EHLO, with no greeting.
  void tls_started(std::string version, std::string cipher, std::string peer_subject) {
    session.tls = true;
    session.tls_version = std::move(version);
    session.tls_cipher = std::move(cipher);
    session.tls_peer_subject = std::move(peer_subject);
    session.helo.clear();
    session.esmtp = false;
    session.auth_user.clear();
    auth.cancel();
    reset_transaction();
    user.reset();
    lines.reset();
    stage = Stage::greeted;
    starttls_pending = false;
  }

  // ---- AUTH (RFC 4954) --------------------------------------------------------------------------

  // cmd_auth - AUTH mechanism [initial-response] (RFC 4954 §4).
  void cmd_auth(std::string_view argument) {
    if (!auth.configured()) return reply(replies::not_implemented());
    if (!session.auth_user.empty()) return reply(replies::already_authenticated());
    if (in_transaction()) return reply(replies::transaction_in_progress());
    auth_step(auth.start(argument, session.tls, hostname));
  }

  // auth_step - the reply to one step. Success authenticates the session (235); each failure
  // is counted and slowed down, and after auth_max_failures the connection is closed, so a
  // script cannot try thousands of passwords on one connection.
  void auth_step(const AuthStep& step) {
    if (step.reply.positive() && !auth.in_progress()) session.auth_user = step.user;
    if (step.reply.code == 535) {
      ++auth_failures;
      reply_delay = std::max(reply_delay, options.auth_failure_delay);
    }
    reply(step.reply);
    if (auth_failures >= options.auth_max_failures)
      close_with(replies::too_many_auth_failures(), SessionEnd::refused);
  }

  // ---- the other verbs -----------------------------------------------------------------------

  void cmd_rset(std::string_view) { // RFC 5321 §4.1.1.5
    reset_transaction();
    user.reset();
    if (in_transaction()) stage = Stage::ready;
    reply(replies::ok());
  }

  void cmd_noop(std::string_view) { reply(replies::ok()); } // RFC 5321 §4.1.1.9

  void cmd_quit(std::string_view) { close_with(replies::bye(), SessionEnd::quit); } // §4.1.1.10

  // cmd_vrfy - RFC 5321 §3.5.3: 252 says "not verified, but try", without revealing users.
  void cmd_vrfy(std::string_view argument) {
    reply(argument.empty() ? replies::syntax("VRFY address") : replies::cannot_vrfy());
  }

  void cmd_help(std::string_view) { reply(replies::help(options.lmtp)); } // RFC 5321 §4.1.1.8

  void cmd_not_implemented(std::string_view) { reply(replies::not_implemented()); }

  void cmd_http(std::string_view) { close_with(replies::not_smtp(), SessionEnd::refused); }

  // rate_allows - one more message or recipient from this client within its per-minute rate
  // (Postfix's anvil); the Server's RateLimiter counts across sessions, none: no limit.
  bool rate_allows(RateLimiter::Kind kind) { // a Unix client has no address to count under
    return rates == nullptr || session.peer.is_unix() || rates->allow(kind, session.peer.ip);
  }

  // ---- XCLIENT (Postfix's XCLIENT_README) ------------------------------------------------------

  // cmd_xclient - XCLIENT attribute=value...: a proxy in xclient_networks (nginx's mail proxy)
  // names the client it speaks for. Every attribute is checked before any is applied; then the
  // session starts over as that client, with a fresh 220 greeting, as Postfix does. Attributes
  // not given keep their values (a proxy may send several XCLIENT commands).
  void cmd_xclient(std::string_view argument) {
    if (!xclient_allowed) return reply(replies::xclient_denied());
    if (in_transaction()) return reply(replies::transaction_in_progress());
    if (argument.empty()) return reply(replies::syntax("XCLIENT attribute=value..."));
    SessionInfo next = session;
    XclientSeen seen;
    while (!argument.empty()) {
      std::size_t space = argument.find(' ');
      std::string_view item = argument.substr(0, space);
      argument = space == std::string_view::npos ? "" : skip_spaces(argument.substr(space));
      if (!apply_xclient(item, next, seen)) return reply(replies::bad_xclient(item));
    }
    if (next.peer.ip != session.peer.ip) { // the proxy's name and port are not the client's
      if (!seen.name) next.peer.hostname.clear();
      if (!seen.port) next.peer.port = 0;
    }
    bool login = seen.login || login_by_xclient, esmtp = seen.esmtp;
    auth.cancel();
    reset_transaction();
    user.reset();
    if (next.proxy.ip.empty()) next.proxy = session.peer;    // the first XCLIENT: who spoke
    if (!login_by_xclient && !login) next.auth_user.clear(); // the proxy's own AUTH is not theirs
    login_by_xclient = login;
    session = std::move(next);
    session.esmtp = false; // the greeting has no enhanced code, as at the start
    trusted = in_networks(options.trusted_networks, session.peer.ip);
    stage = Stage::greeted;
    reply(Reply{220, "", hostname + " ESMTP " + appname});
    session.esmtp = esmtp; // PROTO=ESMTP; the next HELO/EHLO says again
  }

  // XclientSeen - which attributes one XCLIENT command gave.
  struct XclientSeen {
    bool name = false;  // NAME was given
    bool port = false;  // PORT was given
    bool login = false; // LOGIN was given, and known
    bool esmtp = false; // PROTO=ESMTP
  };

  // apply_xclient - one "NAME=value" of XCLIENT onto `next`; false when the name is unknown or
  // the value malformed. Values are xtext (RFC 3461 §4); "[UNAVAILABLE]" and "[TEMPUNAVAIL]"
  // mean the proxy does not know it, which clears the attribute.
  static bool apply_xclient(std::string_view item, SessionInfo& next, XclientSeen& seen) {
    std::size_t equals = item.find('=');
    if (equals == std::string_view::npos) return false;
    std::string_view name = item.substr(0, equals);
    std::optional<std::string> value = decode_xtext(item.substr(equals + 1));
    if (!value || value->size() > max_domain) return false;
    bool unknown = iequals(*value, "[UNAVAILABLE]") || iequals(*value, "[TEMPUNAVAIL]");
    if (unknown) value->clear();
    if (iequals(name, "ADDR")) return xclient_address(*value, unknown, next.peer);
    if (iequals(name, "DESTADDR")) return xclient_address(*value, unknown, next.local);
    if (iequals(name, "PORT")) {
      seen.port = true;
      return xclient_port(*value, next.peer.port);
    }
    if (iequals(name, "DESTPORT")) return xclient_port(*value, next.local.port);
    if (iequals(name, "NAME")) {
      next.peer.hostname = *value;
      seen.name = true;
      return unknown || is_valid_helo_name(*value);
    }
    if (iequals(name, "HELO")) {
      next.helo = *value;
      return is_printable_word(*value);
    }
    if (iequals(name, "LOGIN")) {
      next.auth_user = *value;
      seen.login = !unknown;
      return is_printable_word(*value);
    }
    if (iequals(name, "PROTO")) {
      seen.esmtp = iequals(*value, "ESMTP");
      return unknown || seen.esmtp || iequals(*value, "SMTP");
    }
    return false;
  }

  // xclient_address - ADDR or DESTADDR: IPv4, or IPv6 with or without Postfix's "IPV6:"
  // prefix, stored in its numeric form; unknown: "unknown", as Postfix shows it.
  static bool xclient_address(const std::string& value, bool unknown, Peer& peer) {
    if (unknown) {
      peer.ip = "unknown";
      return true;
    }
    std::string ip = istarts_with(value, "IPV6:") ? value.substr(5) : value;
    unsigned char bytes[16];
    char text[INET6_ADDRSTRLEN] = {};
    int family = ip.find(':') != std::string::npos ? AF_INET6 : AF_INET;
    if (inet_pton(family, ip.c_str(), bytes) != 1 ||
        inet_ntop(family, bytes, text, sizeof text) == nullptr)
      return false;
    peer.ip = text;
    return true;
  }

  // xclient_port - PORT or DESTPORT: 0 to 65535 in decimal; "" (unknown) is 0.
  static bool xclient_port(const std::string& value, uint16_t& port) {
    if (value.size() > 5 ||
        !std::all_of(value.begin(), value.end(), [](char c) { return is_digit(c); }))
      return false;
    unsigned long n = value.empty() ? 0 : std::stoul(value);
    port = uint16_t(n);
    return n <= 65535;
  }

  // is_printable_word - printable ASCII without spaces (HELO and LOGIN values), or "".
  static bool is_printable_word(const std::string& value) {
    return std::all_of(value.begin(), value.end(), [](char c) { return c > 0x20 && c < 0x7F; });
  }

  // decode_xtext - RFC 3461 §4: printable ASCII but '+' and '=' as themselves, any octet as
  // "+" and two upper-case hex digits; nullopt when malformed.
  static std::optional<std::string> decode_xtext(std::string_view text) {
    std::string out;
    for (std::size_t i = 0; i < text.size(); ++i) {
      unsigned char c = static_cast<unsigned char>(text[i]);
      if (c == '+') {
        if (i + 2 >= text.size()) return std::nullopt;
        int high = hex_digit(text[i + 1]), low = hex_digit(text[i + 2]);
        if (high < 0 || low < 0) return std::nullopt;
        out += char(high * 16 + low);
        i += 2;
      } else if (c < 0x21 || c > 0x7E || c == '=') {
        return std::nullopt;
      } else {
        out += char(c);
      }
    }
    return out;
  }

  // hex_digit - the value of an upper-case hex digit (xtext's), or -1.
  static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
};

// find_command - the command table: each verb, its cmd_<verb> and its guards.
const Protocol::State::Command* Protocol::State::find_command(std::string_view verb) {
  static const Command table[] = {
      {"HELO", &State::cmd_helo, before_tls | before_auth},
      {"EHLO", &State::cmd_ehlo, before_tls | before_auth},
      {"LHLO", &State::cmd_lhlo, before_tls | before_auth},
      {"MAIL", &State::cmd_mail, needs_helo},
      {"RCPT", &State::cmd_rcpt, needs_helo},
      {"DATA", &State::cmd_data, needs_helo | no_argument},
      {"BDAT", &State::cmd_bdat, needs_helo},
      {"RSET", &State::cmd_rset, no_argument | before_tls | before_auth | junk},
      {"NOOP", &State::cmd_noop, before_tls | before_auth | junk},
      {"QUIT", &State::cmd_quit, no_argument | before_tls | before_auth},
      {"STARTTLS", &State::cmd_starttls, no_argument | before_tls | before_auth},
      {"AUTH", &State::cmd_auth, needs_helo | before_auth},
      // A proxy naming its client (XCLIENT_README); before STARTTLS and AUTH, as the proxy
      // speaks for a client that may do those itself afterwards.
      {"XCLIENT", &State::cmd_xclient, before_tls | before_auth},
      // A web browser or proxy that reached the SMTP port: no dialogue, close (Postfix's
      // smtpd_forbidden_commands).
      {"GET", &State::cmd_http, before_tls | before_auth},
      {"POST", &State::cmd_http, before_tls | before_auth},
      {"HEAD", &State::cmd_http, before_tls | before_auth},
      {"PUT", &State::cmd_http, before_tls | before_auth},
      {"CONNECT", &State::cmd_http, before_tls | before_auth},
      {"VRFY", &State::cmd_vrfy, junk},
      {"EXPN", &State::cmd_not_implemented, 0},
      {"HELP", &State::cmd_help, junk},
      // Known to RFC 5321 or common extensions, not offered here: 502 rather than 500.
      {"TURN", &State::cmd_not_implemented, 0},
      {"ETRN", &State::cmd_not_implemented, 0},
      {"ATRN", &State::cmd_not_implemented, 0},
      {"SEND", &State::cmd_not_implemented, 0},
      {"SOML", &State::cmd_not_implemented, 0},
      {"SAML", &State::cmd_not_implemented, 0},
  };
  for (const Command& c : table)
    if (iequals(c.verb, verb)) return &c;
  return nullptr;
}

// ---- Protocol's public face: thin calls into State ------------------------------------------

Protocol::Protocol(const Options& options, SessionInfo session, RateLimiter* rates)
    : s_(std::make_unique<State>(options, std::move(session), rates)) {
  s_->start();
  s_->ended();
}

Protocol::~Protocol() = default;

void Protocol::feed(std::string_view bytes) {
  s_->clocks.read(bytes.size(), s_->in_content());
  // After STARTTLS the rest of `bytes` is plaintext injected before the handshake: dropped.
  while (!bytes.empty() && s_->stage != Stage::closed && !s_->starttls_pending) {
    bool command = !s_->in_content();
    std::size_t used = command                     ? s_->read_command(bytes)
                       : s_->stage == Stage::chunk ? s_->read_chunk(bytes)
                                                   : s_->read_data(bytes);
    bytes.remove_prefix(used);
    if (command && !bytes.empty() && s_->pipelining_forbidden())
      s_->close_with(replies::unauthorized_pipelining(), SessionEnd::refused);
  }
  if (s_->trace && !bytes.empty()) s_->trace.dropped(bytes);
  s_->ended();
}

std::string Protocol::take_output() {
  std::string taken;
  take_output(taken);
  return taken;
}

void Protocol::take_output(std::string& into) {
  into.swap(s_->out);
  s_->out.clear();
  if (s_->trace) s_->trace.taken(!into.empty(), s_->stage == Stage::closed);
}

bool Protocol::has_output() const {
  return !s_->out.empty();
}

bool Protocol::should_close() const {
  return s_->stage == Stage::closed;
}

bool Protocol::in_data() const {
  return s_->in_content();
}

bool Protocol::idle() const {
  bool between =
      s_->stage == Stage::greeted || s_->stage == Stage::ready || s_->stage == Stage::refused;
  return between && s_->lines.idle() && !s_->auth.in_progress() && !s_->starttls_pending;
}

std::chrono::steady_clock::time_point Protocol::deadline() {
  return s_->clocks.deadline(s_->lines.lines_completed(), s_->in_content());
}

std::chrono::milliseconds Protocol::take_reply_delay() {
  return std::exchange(s_->reply_delay, std::chrono::milliseconds(0));
}

bool Protocol::starttls_requested() const {
  return s_->starttls_pending;
}

void Protocol::tls_started(std::string version, std::string cipher, std::string peer_subject) {
  s_->tls_started(std::move(version), std::move(cipher), std::move(peer_subject));
}

std::size_t Protocol::lines_completed() const {
  return s_->lines.lines_completed();
}

void Protocol::timeout() {
  s_->close_with(replies::timeout(), SessionEnd::timeout);
  s_->ended();
}

void Protocol::shutting_down() {
  s_->close_with(replies::shutting_down(), SessionEnd::shutdown);
  s_->ended();
}

void Protocol::disconnected() {
  if (s_->stage != Stage::closed) s_->end = SessionEnd::client_gone;
  s_->stage = Stage::closed; // a partial message is dropped: the handler never sees it
  s_->reset_transaction();
  s_->ended();
}

const SessionInfo& Protocol::session() const {
  return s_->session;
}

const Envelope& Protocol::envelope() const {
  return s_->envelope;
}

std::string Peer::to_string() const {
  if (is_unix()) {
    std::string text = "unix:" + unix_path;
    if (pid >= 0 || uid >= 0 || gid >= 0)
      text += "[pid=" + std::to_string(pid) + ",uid=" + std::to_string(uid) +
              ",gid=" + std::to_string(gid) + "]";
    return text;
  }
  bool v6 = ip.find(':') != std::string::npos;
  return (v6 ? "[" + ip + "]" : ip) + ":" + std::to_string(port);
}

// =============================================================================================
// 6. Transport - the plain socket, and TLS
//
// Sockets are non-blocking: a read is tried first and poll() is called only when it would block,
// so a busy connection costs one syscall per read. Every wait is bounded by a timeout, so a
// client that stops sending or stops reading costs only its own thread, and only for a while.
// A Transport is a plain socket at first; STARTTLS (or implicit TLS) replaces it with a TLS one
// over the same descriptor. The socket itself belongs to the Server's registry, which closes it.
// =============================================================================================

namespace {

// poll_ms - a duration as poll()'s int milliseconds, at least 0.
int poll_ms(std::chrono::milliseconds d) {
  auto ms = d.count();
  return ms < 0 ? 0 : ms > INT_MAX ? INT_MAX : int(ms);
}

// ReadResult - what a read (or a wait) produced.
enum class ReadResult { data, closed, timeout, woken, error };

// wait_for - wait until `fd` is ready for `events` (POLLIN or POLLOUT): `data` when it is,
// `timeout` after `timeout`, `woken` when `wake_fd` (the server's shutdown pipe, or -1 for none)
// became readable first.
ReadResult wait_for(int fd, short events, std::chrono::milliseconds timeout, int wake_fd) {
  for (;;) {
    pollfd fds[2] = {{fd, events, 0}, {wake_fd, POLLIN, 0}};
    int ready = ::poll(fds, wake_fd >= 0 ? 2 : 1, poll_ms(timeout));
    if (ready == 0) return ReadResult::timeout;
    if (ready < 0) {
      if (errno == EINTR) continue;
      return ReadResult::error;
    }
    if (fds[0].revents != 0) return ReadResult::data; // ready, or an error the next call reports
    return ReadResult::woken;
  }
}

// Transport - how the connection loop reads and writes, whatever carries the bytes.
class Transport {
public:
  virtual ~Transport() = default;

  // read_some - read what is there into `buf`, waiting up to `timeout`; a byte on `wake_fd`
  // ends the wait early with `woken`.
  virtual ReadResult read_some(char* buf, std::size_t cap, std::size_t& got,
                               std::chrono::milliseconds timeout, int wake_fd) = 0;

  // write_all - send every byte, waiting up to `timeout` whenever the client is not reading.
  virtual bool write_all(std::string_view bytes, std::chrono::milliseconds timeout) = 0;

  // close_gracefully - say goodbye at this layer before the socket closes (TLS close_notify).
  virtual void close_gracefully() {}

  // spin_before_sleep - see wait_readable; 0 turns spinning off.
  void spin_before_sleep(std::chrono::microseconds window) { spin_window_ = window; }

protected:
  // wait_readable - wait_for(fd, POLLIN, ...), but first spin for up to spin_window_: hand the
  // CPU to any other runnable thread, then look again. A sleep and a wake-up cost two context
  // switches, which on this design are the dearest part of a command (more than parsing it);
  // a local client typically answers within microseconds, and the spin catches that answer
  // awake. Adaptive: the thread spins only while this client's recent answers came within a
  // few windows, so a client across a network (milliseconds away) costs one window, once.
  // The spin does not watch the wake pipe or the timeout; both are far longer than a window.
  ReadResult wait_readable(int fd, std::chrono::milliseconds timeout, int wake_fd) {
    using Clock = std::chrono::steady_clock;
    auto start = Clock::now();
    if (spin_pays_ && spin_window_.count() > 0) {
      do {
        sched_yield();
        pollfd ready{fd, POLLIN, 0};
        if (::poll(&ready, 1, 0) > 0) return ReadResult::data;
      } while (Clock::now() - start < spin_window_);
    }
    ReadResult waited = wait_for(fd, POLLIN, timeout, wake_fd);
    spin_pays_ = waited == ReadResult::data && Clock::now() - start < spin_window_ * 4;
    return waited;
  }

private:
  std::chrono::microseconds spin_window_{0};
  bool spin_pays_ = true; // the last answer came soon enough to have been caught spinning
};

// PlainConn - a connected TCP socket.
class PlainConn final : public Transport {
public:
  explicit PlainConn(int fd) : fd_(fd) {}

  ReadResult read_some(char* buf, std::size_t cap, std::size_t& got,
                       std::chrono::milliseconds timeout, int wake_fd) override {
    for (;;) {
      ssize_t n = ::recv(fd_, buf, cap, 0);
      if (n > 0) {
        got = std::size_t(n);
        return ReadResult::data;
      }
      if (n == 0) return ReadResult::closed;
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return ReadResult::error;
      ReadResult waited = wait_readable(fd_, timeout, wake_fd);
      if (waited != ReadResult::data) return waited;
    }
  }

  bool write_all(std::string_view bytes, std::chrono::milliseconds timeout) override {
    while (!bytes.empty()) {
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n > 0) {
        bytes.remove_prefix(std::size_t(n));
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (wait_for(fd_, POLLOUT, timeout, -1) != ReadResult::data) return false; // not reading
      } else {
        return false;
      }
    }
    return true;
  }

private:
  int fd_;
};

// TlsDetails - what a finished handshake tells the session.
struct TlsDetails {
  std::string version;      // "TLSv1.3"
  std::string cipher;       // "TLS_AES_256_GCM_SHA384"
  std::string peer_subject; // the verified client certificate's subject, or ""
};

// TlsContext - a shared, reference-counted SSL_CTX: a connection keeps the one it started with
// even when reload_tls() installs a new one.
using TlsContext = std::shared_ptr<ssl_ctx_st>;

#ifndef SMTPD_NO_TLS

// openssl_errors - OpenSSL's error queue for this thread as text, emptied.
std::string openssl_errors() {
  std::string text;
  while (unsigned long code = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(code, buf, sizeof buf);
    text += text.empty() ? "" : "; ";
    text += buf;
  }
  return text.empty() ? "no details from OpenSSL" : text;
}

// tls_error - an exception naming what failed and why, for configuration errors.
std::runtime_error tls_error(const std::string& what) {
  return std::runtime_error("smtpd: " + what + ": " + openssl_errors());
}

// key_password - OpenSSL's passphrase callback: copy the configured password.
int key_password(char* buf, int size, int, void* userdata) {
  const std::string& password = *static_cast<const std::string*>(userdata);
  if (password.size() > std::size_t(size)) return -1;
  std::memcpy(buf, password.data(), password.size());
  return int(password.size());
}

// The ciphers offered (Options::tls_ciphers and tls_ciphersuites; their defaults are there).
// OpenSSL's own TLS 1.2 default also offers static-RSA key exchange (AES256-GCM-SHA384,
// AES128-SHA...), where whoever later obtains the server's key can decrypt every recorded
// session, and CBC ciphers with HMAC, whose MAC-then-encrypt construction keeps leaking
// through timing (Lucky Thirteen and its successors). The default list keeps what Mozilla's
// "intermediate" profile keeps for TLS 1.2 with an ECDHE key exchange: ephemeral elliptic-curve
// Diffie-Hellman (forward secrecy) with an AEAD cipher (AES-GCM or ChaCha20-Poly1305), for
// ECDSA and RSA certificates alike. Names, not keyword expressions like "ECDHE+AESGCM", so the
// set cannot grow when OpenSSL adds ciphers. The order follows OpenSSL's TLS 1.3 default
// (AES-256-GCM, ChaCha20, AES-128-GCM) so both versions prefer the same strength; the server's
// order wins (SSL_OP_CIPHER_SERVER_PREFERENCE), except that a client listing ChaCha20 first
// (one without AES instructions) gets it (SSL_OP_PRIORITIZE_CHACHA). TLS 1.3 has only
// forward-secret AEAD suites: OpenSSL's default stands.
//
// No DHE, though Mozilla's profile has DHE-RSA with AES-GCM and ChaCha20 over ffdhe2048. The
// clients it is there for have TLS 1.2 and AES-GCM but no ECDHE-RSA with GCM, chiefly Windows 7
// and Server 2008 R2 with an RSA certificate, out of support since 2020; and a finite-field
// exchange costs the server many times the CPU of X25519 per handshake, which any client can
// demand over and over (the "D(HE)at" attack, CVE-2002-20001). Who must serve such clients
// appends "DHE-RSA-AES128-GCM-SHA256" and the like to tls_ciphers: SSL_CTX_set_dh_auto below
// then picks a group as strong as the certificate's key. (The key-exchange groups are left as
// OpenSSL ships them; for TLS 1.3 they include the RFC 7919 ffdhe groups, which a client may
// ask for as well.)

// split_names - the non-empty ':'-separated names of `list`, without surrounding spaces.
std::vector<std::string> split_names(std::string_view list) {
  std::vector<std::string> names;
  for (;;) {
    std::size_t colon = list.find(':');
    std::string_view name = trim_trailing_spaces(skip_spaces(list.substr(0, colon)));
    if (!name.empty()) names.emplace_back(name);
    if (colon == std::string_view::npos) return names;
    list.remove_prefix(colon + 1);
  }
}

// set_tls_ciphers - put tls_ciphers and tls_ciphersuites on `c`; with no suites, TLS 1.2 at
// most. Throws std::invalid_argument for a tls_ciphers that selects no TLS 1.2 cipher
// (OpenSSL's rule), for a tls_ciphersuites name that is not a TLS 1.3 suite (OpenSSL skips
// those silently, so a typo could turn TLS 1.3 off), and for no suites at all when TLS 1.3 is
// the minimum.
void set_tls_ciphers(SSL_CTX* c, const Options& o) {
  ERR_clear_error();
  if (SSL_CTX_set_cipher_list(c, o.tls_ciphers.c_str()) != 1)
    throw std::invalid_argument("smtpd: tls_ciphers selects no TLS 1.2 cipher: \"" + o.tls_ciphers +
                                "\": " + openssl_errors());
  std::vector<std::string> names = split_names(o.tls_ciphersuites);
  if (names.empty() && o.tls_min_version == "TLSv1.3")
    throw std::invalid_argument("smtpd: tls_ciphersuites is empty but tls_min_version is TLSv1.3");
  if (SSL_CTX_set_ciphersuites(c, o.tls_ciphersuites.c_str()) != 1 && !names.empty())
    throw std::invalid_argument("smtpd: tls_ciphersuites has no TLS 1.3 suite: \"" +
                                o.tls_ciphersuites + "\": " + openssl_errors());
  // Without suites OpenSSL would still choose TLS 1.3 with a client that offers it, then find
  // no cipher and fail the handshake: TLS 1.2 must be the ceiling instead.
  if (names.empty()) SSL_CTX_set_max_proto_version(c, TLS1_2_VERSION);
  std::vector<std::string> known; // the TLS 1.3 suites now configured, by RFC 8446 name
  STACK_OF(SSL_CIPHER)* configured = SSL_CTX_get_ciphers(c);
  for (int i = 0; i < sk_SSL_CIPHER_num(configured); ++i) {
    const SSL_CIPHER* cipher = sk_SSL_CIPHER_value(configured, i);
    if (std::strcmp(SSL_CIPHER_get_version(cipher), "TLSv1.3") == 0)
      known.push_back(SSL_CIPHER_standard_name(cipher));
  }
  for (const std::string& name : names)
    if (std::find(known.begin(), known.end(), name) == known.end())
      throw std::invalid_argument("smtpd: tls_ciphersuites: " + name + " is not a TLS 1.3 suite");
}

// check_tls_ciphers - validate()'s test of lists that differ from the defaults: set them on a
// scratch context, so a bad list throws at construction even without a certificate.
void check_tls_ciphers(const Options& o) {
  ERR_clear_error();
  TlsContext scratch(SSL_CTX_new(TLS_server_method()), SSL_CTX_free);
  if (!scratch) throw tls_error("cannot create a TLS context");
  set_tls_ciphers(scratch.get(), o);
}

// make_tls_context - the SSL_CTX that Options describe: the user's own, or one built from the
// certificate and key files with TLS 1.2 as the floor, the ciphers above, no compression or
// renegotiation (known attacks: CRIME, renegotiation DoS), and client certificates verified
// when a CA file is set.
TlsContext make_tls_context(const Options& o) {
  if (o.tls_context != nullptr) {
    SSL_CTX_up_ref(o.tls_context);
    return TlsContext(o.tls_context, SSL_CTX_free);
  }
  ERR_clear_error();
  TlsContext ctx(SSL_CTX_new(TLS_server_method()), SSL_CTX_free);
  if (!ctx) throw tls_error("cannot create a TLS context");
  SSL_CTX* c = ctx.get();
  SSL_CTX_set_min_proto_version(c,
                                o.tls_min_version == "TLSv1.3" ? TLS1_3_VERSION : TLS1_2_VERSION);
  SSL_CTX_set_options(c, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                             SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_PRIORITIZE_CHACHA);
  set_tls_ciphers(c, o);
  SSL_CTX_set_dh_auto(c, 1); // used only if tls_ciphers was given DHE ciphers
  SSL_CTX_set_default_passwd_cb(c, key_password);
  SSL_CTX_set_default_passwd_cb_userdata(c, const_cast<std::string*>(&o.tls_key_password));
  bool loaded = SSL_CTX_use_certificate_chain_file(c, o.tls_cert_file.c_str()) == 1 &&
                SSL_CTX_use_PrivateKey_file(c, o.tls_key_file.c_str(), SSL_FILETYPE_PEM) == 1 &&
                SSL_CTX_check_private_key(c) == 1;
  SSL_CTX_set_default_passwd_cb_userdata(c, nullptr); // only needed while loading
  if (!loaded)
    throw tls_error("cannot load certificate " + o.tls_cert_file + " and key " + o.tls_key_file);
  if (!o.tls_client_ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(c, o.tls_client_ca_file.c_str(), nullptr) != 1)
      throw tls_error("cannot load client CA file " + o.tls_client_ca_file);
    if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(o.tls_client_ca_file.c_str()))
      SSL_CTX_set_client_CA_list(c, names);
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr); // a certificate that fails: refused
  }
  static const unsigned char session_context[] = "smtpd";
  SSL_CTX_set_session_id_context(c, session_context, sizeof session_context - 1);
  return ctx;
}

// subject_of - a certificate's subject as an RFC 2253 string.
std::string subject_of(X509* certificate) {
  BIO* bio = BIO_new(BIO_s_mem());
  if (bio == nullptr) return "";
  X509_NAME_print_ex(bio, X509_get_subject_name(certificate), 0, XN_FLAG_RFC2253);
  char* text = nullptr;
  long length = BIO_get_mem_data(bio, &text);
  std::string subject(text, length > 0 ? std::size_t(length) : 0);
  BIO_free(bio);
  return subject;
}

// TlsConn - TLS over a connected socket (OpenSSL), after a finished handshake.
class TlsConn final : public Transport {
public:
  TlsConn(int fd, SSL* ssl) : fd_(fd), ssl_(ssl) {}

  ~TlsConn() override { SSL_free(ssl_); }

  TlsConn(const TlsConn&) = delete;
  TlsConn& operator=(const TlsConn&) = delete;

  ReadResult read_some(char* buf, std::size_t cap, std::size_t& got,
                       std::chrono::milliseconds timeout, int wake_fd) override {
    for (;;) {
      ERR_clear_error();
      int n = SSL_read(ssl_, buf, int(std::min<std::size_t>(cap, INT_MAX)));
      if (n > 0) {
        got = std::size_t(n);
        return ReadResult::data;
      }
      int error = SSL_get_error(ssl_, n);
      if (error == SSL_ERROR_ZERO_RETURN) return ReadResult::closed; // the client's close_notify
      ReadResult waited = error == SSL_ERROR_WANT_READ ? wait_readable(fd_, timeout, wake_fd)
                                                       : wait_after(error, timeout, wake_fd);
      if (waited != ReadResult::data) return waited;
    }
  }

  bool write_all(std::string_view bytes, std::chrono::milliseconds timeout) override {
    while (!bytes.empty()) {
      ERR_clear_error();
      int n = SSL_write(ssl_, bytes.data(), int(std::min<std::size_t>(bytes.size(), INT_MAX)));
      if (n > 0) {
        bytes.remove_prefix(std::size_t(n));
      } else if (wait_after(SSL_get_error(ssl_, n), timeout, -1) != ReadResult::data) {
        return false;
      }
    }
    return true;
  }

  // close_gracefully - send our close_notify (RFC 8446 §6.1); we do not wait for the client's.
  void close_gracefully() override {
    ERR_clear_error();
    SSL_shutdown(ssl_);
  }

  // handshake - SSL_accept under a deadline: a client that sends garbage, stalls or vanishes
  // costs only this thread, and only until `timeout`.
  bool handshake(std::chrono::milliseconds timeout, TlsDetails& details, std::string& error) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      ERR_clear_error();
      int rc = SSL_accept(ssl_);
      if (rc == 1) break;
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      int code = SSL_get_error(ssl_, rc);
      if (code != SSL_ERROR_WANT_READ && code != SSL_ERROR_WANT_WRITE) {
        bool vanished =
            (code == SSL_ERROR_SYSCALL || code == SSL_ERROR_ZERO_RETURN) && ERR_peek_error() == 0;
        error = vanished ? "the client closed the connection during the TLS handshake"
                         : "TLS handshake failed: " + openssl_errors();
        return false;
      }
      if (left.count() <= 0 || wait_after(code, left, -1) != ReadResult::data) {
        error = "TLS handshake timed out";
        return false;
      }
    }
    details.version = SSL_get_version(ssl_);
    details.cipher = SSL_get_cipher_name(ssl_);
    if (X509* peer = SSL_get1_peer_certificate(ssl_)) {
      if (SSL_get_verify_result(ssl_) == X509_V_OK) details.peer_subject = subject_of(peer);
      X509_free(peer);
    }
    return true;
  }

private:
  // wait_after - after an SSL call returned `error`: wait for what OpenSSL wants (`data` when
  // ready), or report the end of the connection.
  ReadResult wait_after(int error, std::chrono::milliseconds timeout, int wake_fd) {
    if (error == SSL_ERROR_WANT_READ) return wait_for(fd_, POLLIN, timeout, wake_fd);
    if (error == SSL_ERROR_WANT_WRITE) return wait_for(fd_, POLLOUT, timeout, wake_fd);
    if (error == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) return ReadResult::closed;
    return ReadResult::error;
  }

  int fd_;
  SSL* ssl_;
};

// start_tls - run the server side of a TLS handshake on `fd`; nullptr (and `error`) on failure.
std::unique_ptr<Transport> start_tls(int fd, const TlsContext& context,
                                     std::chrono::milliseconds timeout, TlsDetails& details,
                                     std::string& error) {
  SSL* ssl = context ? SSL_new(context.get()) : nullptr;
  if (ssl == nullptr || SSL_set_fd(ssl, fd) != 1) {
    SSL_free(ssl);
    error = "cannot start TLS: " + openssl_errors();
    return nullptr;
  }
  auto conn = std::make_unique<TlsConn>(fd, ssl);
  if (!conn->handshake(timeout, details, error)) return nullptr;
  return conn;
}

#else // SMTPD_NO_TLS: the same names, refusing.

// check_tls_ciphers - nothing to check: validate() refuses lists other than the defaults.
void check_tls_ciphers(const Options&) {}

TlsContext make_tls_context(const Options&) {
  throw std::invalid_argument("smtpd: built with SMTPD_NO_TLS: TLS options cannot be used");
}

std::unique_ptr<Transport> start_tls(int, const TlsContext&, std::chrono::milliseconds, TlsDetails&,
                                     std::string& error) {
  error = "built with SMTPD_NO_TLS";
  return nullptr;
}

#endif // SMTPD_NO_TLS

} // namespace

// =============================================================================================
// 6b. DNS - the lookups behind the DNS checks, and the checks themselves
//
// The checks (README "DNS checks") ask questions of a DnsResolver, never of the network
// directly, so the Protocol stays socket-free: tests and the fuzzer hand it a table. A Server
// uses LibcResolver, which asks the C library (res_nquery, RFC 1035 over UDP, TCP when the
// answer is truncated) on one thread per question, so the questions of a round run in parallel
// and the connection gives them up after dns_timeout. The answers are parsed here, not by
// libresolv's ns_parserr: parse_answer reads untrusted bytes from the network, so it is short,
// bounded and fuzzed (fuzz/dns.cpp).
//
//   connect ─► PTR of the IP, and A + TXT of the IP under each DNSBL zone   (one round)
//           ─► A/AAAA of each PTR name: does one lead back to the IP? (FCrDNS, a second round)
//   HELO    ─► A/AAAA of the name (helo_check), A + TXT of it under each RHSBL zone
//   MAIL    ─► A + TXT of the sender's domain under each RHSBL zone
// =============================================================================================

namespace dns {

namespace {

// Reader - a cursor over a DNS message; every read checks the bounds.
struct Reader {
  std::string_view msg;
  std::size_t pos = 0;

  bool has(std::size_t n) const { return pos <= msg.size() && msg.size() - pos >= n; }

  uint8_t byte(std::size_t at) const { return static_cast<uint8_t>(msg[at]); }

  uint16_t u16(std::size_t at) const { return uint16_t(byte(at) << 8 | byte(at + 1)); }

  uint32_t u32(std::size_t at) const { return uint32_t(u16(at)) << 16 | u16(at + 2); }
};

constexpr std::size_t max_name = 255; // RFC 1035 §3.1: a name's wire form, at most
constexpr std::size_t max_label = 63; // RFC 1035 §3.1
constexpr int max_pointers = 64;      // more jumps than any sane message needs

// read_name - the (possibly compressed, RFC 1035 §4.1.4) name at r.pos, as dotted text
// (labels as they are, no trailing dot); r.pos moves past the name's bytes in place. Every
// pointer must point before the previous one's target, so the jumps cannot loop.
bool read_name(Reader& r, std::string& out) {
  out.clear();
  std::size_t at = r.pos, wire = 1, limit = r.pos;
  bool jumped = false;
  for (int jumps = 0;;) {
    if (at >= r.msg.size()) return false;
    uint8_t len = r.byte(at);
    if ((len & 0xC0) == 0xC0) { // a pointer: 14 bits of offset
      if (at + 1 >= r.msg.size() || ++jumps > max_pointers) return false;
      std::size_t target = std::size_t(len & 0x3F) << 8 | r.byte(at + 1);
      if (target >= limit) return false; // forward, or back into a loop
      if (!jumped) r.pos = at + 2;
      jumped = true;
      limit = at = target;
      continue;
    }
    if ((len & 0xC0) != 0) return false; // 01 and 10: reserved label types (RFC 6891 §5)
    if (len == 0) break;
    wire += len + 1u;
    if (len > max_label || wire > max_name || at + 1 + len > r.msg.size()) return false;
    if (!out.empty()) out += '.';
    out.append(r.msg.substr(at + 1, len));
    at += 1 + len;
  }
  if (!jumped) r.pos = at + 1;
  return true;
}

// host_name - a PTR target usable as a host name: letters, digits, '-', '_' in dotted labels
// (RFC 1123 §2.1; '_' is seen in the wild), lower-cased. "" when it is anything else.
std::string host_name(const std::string& name) {
  std::string out;
  for (char c : name) {
    bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
    if (!ok || static_cast<unsigned char>(c) >= 0x80) return "";
    out += ascii_lower(c);
  }
  // A label may hold a '.' on the wire ("\3g_." is one label): the text must still be a name.
  if (out.empty() || out.front() == '.' || out.back() == '.' || out.find("..") != std::string::npos)
    return "";
  return out;
}

// txt_text - the character-strings of one TXT record joined (RFC 1035 §3.3.14), with every
// byte that is not printable ASCII made a space: it goes into a reply line. False when the
// lengths do not fill the record exactly.
bool txt_text(std::string_view rdata, std::string& out) {
  out.clear();
  std::size_t i = 0;
  while (i < rdata.size()) {
    std::size_t len = static_cast<uint8_t>(rdata[i]);
    if (len > rdata.size() - i - 1) return false;
    for (char c : rdata.substr(i + 1, len))
      out += c >= 0x20 && c < 0x7F ? c : ' ';
    i += 1 + len;
  }
  return true;
}

// record_text - the rdata of one record of the type asked for, as text; false when malformed.
// A PTR's name may point anywhere earlier in the message, so it is read from the whole message.
bool record_text(const Reader& r, std::size_t rdata, std::size_t length, DnsType type,
                 std::string& out) {
  char text[INET6_ADDRSTRLEN] = {};
  const char* bytes = r.msg.data() + rdata;
  switch (type) {
  case DnsType::a:
    if (length != 4 || !inet_ntop(AF_INET, bytes, text, sizeof text)) return false;
    out = text;
    return true;
  case DnsType::aaaa:
    if (length != 16 || !inet_ntop(AF_INET6, bytes, text, sizeof text)) return false;
    out = text;
    return true;
  case DnsType::ptr: {
    Reader name{r.msg, rdata};
    std::string raw;
    if (!read_name(name, raw) || name.pos != rdata + length) return false;
    out = host_name(raw); // a name unfit for a host is no answer
    return true;
  }
  case DnsType::txt: return txt_text(r.msg.substr(rdata, length), out);
  }
  return false;
}

} // namespace

DnsAnswer parse_answer(std::string_view message, DnsType type) {
  DnsAnswer answer; // temp_error until proven otherwise
  Reader r{message};
  if (!r.has(12)) return answer;
  uint16_t flags = r.u16(2), questions = r.u16(4), answers = r.u16(6);
  if (!(flags & 0x8000) || (flags & 0x0200)) return answer; // not a response, or truncated
  unsigned rcode = flags & 0x000F;
  if (rcode == 3) { // NXDOMAIN (RFC 1035 §4.1.1): the name does not exist
    answer.status = DnsAnswer::Status::not_found;
    return answer;
  }
  if (rcode != 0) return answer; // SERVFAIL, REFUSED...: no answer to trust
  r.pos = 12;
  std::string name;
  for (unsigned i = 0; i < questions; ++i) { // skip the question: name, type, class
    if (!read_name(r, name) || !r.has(4)) return answer;
    r.pos += 4;
  }
  std::vector<std::string> records;
  uint32_t ttl = UINT32_MAX;
  for (unsigned i = 0; i < answers; ++i) { // RFC 1035 §4.1.3: name type class ttl rdlength rdata
    if (!read_name(r, name) || !r.has(10)) return answer;
    uint16_t rr_type = r.u16(r.pos), rr_class = r.u16(r.pos + 2), length = r.u16(r.pos + 8);
    uint32_t rr_ttl = r.u32(r.pos + 4);
    r.pos += 10;
    if (!r.has(length)) return answer;
    std::string text;
    if (rr_type == uint16_t(type) && rr_class == 1) { // class IN; CNAMEs on the way are skipped
      if (!record_text(r, r.pos, length, type, text)) return answer;
      if (!text.empty() || type == DnsType::txt) records.push_back(std::move(text));
      ttl = std::min(ttl, rr_ttl);
    }
    r.pos += length;
  }
  answer.status = records.empty() ? DnsAnswer::Status::not_found : DnsAnswer::Status::found;
  answer.records = std::move(records);
  answer.ttl = answer.records.empty() ? 0 : ttl;
  return answer;
}

std::string reverse_name(const std::string& ip, const std::string& zone) {
  unsigned char bytes[16];
  std::string name;
  if (inet_pton(AF_INET, ip.c_str(), bytes) == 1) { // 192.0.2.1 → 1.2.0.192
    for (int i = 3; i >= 0; --i)
      name += std::to_string(bytes[i]) + ".";
  } else if (inet_pton(AF_INET6, ip.c_str(), bytes) == 1) { // one label per nibble, reversed
    const char* digits = "0123456789abcdef";
    for (int i = 15; i >= 0; --i) {
      name += digits[bytes[i] & 0x0F];
      name += '.';
      name += digits[bytes[i] >> 4];
      name += '.';
    }
  } else {
    return "";
  }
  return name + zone;
}

// ---- the cache ---------------------------------------------------------------------------------

struct Cache::State {
  struct Entry {
    DnsAnswer answer;
    Clock::time_point expires;
    std::list<std::string>::iterator age; // its place in `order`
  };

  std::size_t max_entries;
  std::chrono::seconds max_ttl;
  mutable std::mutex mu;
  std::unordered_map<std::string, Entry> entries;
  std::list<std::string> order; // keys, oldest first

  void erase(std::unordered_map<std::string, Entry>::iterator it) {
    order.erase(it->second.age);
    entries.erase(it);
  }
};

namespace {
// cache_key - the type and the name, lower-cased (DNS names compare without case, RFC 4343).
std::string cache_key(const DnsQuery& q) {
  std::string key = std::to_string(unsigned(q.type)) + " ";
  for (char c : q.name)
    key += ascii_lower(c);
  return key;
}
} // namespace

Cache::Cache(std::size_t max_entries, std::chrono::seconds max_ttl)
    : s_(std::make_unique<State>()) {
  s_->max_entries = max_entries;
  s_->max_ttl = max_ttl;
}

Cache::~Cache() = default;

std::optional<DnsAnswer> Cache::get(const DnsQuery& q, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(s_->mu);
  auto it = s_->entries.find(cache_key(q));
  if (it == s_->entries.end()) return std::nullopt;
  if (it->second.expires <= now) {
    s_->erase(it);
    return std::nullopt;
  }
  return it->second.answer;
}

void Cache::put(const DnsQuery& q, const DnsAnswer& a, Clock::time_point now) {
  if (a.status == DnsAnswer::Status::temp_error || s_->max_entries == 0) return;
  std::chrono::seconds ttl = s_->max_ttl;
  if (a.status == DnsAnswer::Status::found) ttl = std::min(ttl, std::chrono::seconds(a.ttl));
  if (ttl.count() <= 0) return;
  std::string key = cache_key(q);
  std::lock_guard<std::mutex> lock(s_->mu);
  auto old = s_->entries.find(key);
  if (old != s_->entries.end()) s_->erase(old);
  while (s_->entries.size() >= s_->max_entries) // the bound: the oldest goes
    s_->erase(s_->entries.find(s_->order.front()));
  s_->order.push_back(key);
  s_->entries.emplace(std::move(key), State::Entry{a, now + ttl, std::prev(s_->order.end())});
}

std::size_t Cache::size() const {
  std::lock_guard<std::mutex> lock(s_->mu);
  return s_->entries.size();
}

} // namespace dns

namespace {

// ---- the C library's resolver ------------------------------------------------------------------

// parse_dns_server - "IP" or "IP:PORT" (IPv4: res_state's nsaddr_list holds sockaddr_in).
sockaddr_in parse_dns_server(const std::string& text) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(53);
  std::size_t colon = text.find(':');
  std::string host = text.substr(0, colon);
  bool ok = inet_pton(AF_INET, host.c_str(), &a.sin_addr) == 1;
  if (ok && colon != std::string::npos) {
    std::string port = text.substr(colon + 1);
    ok = !port.empty() && port.size() <= 5 &&
         std::all_of(port.begin(), port.end(), [](char c) { return is_digit(c); }) &&
         std::stoi(port) > 0 && std::stoi(port) <= 65535;
    if (ok) a.sin_port = htons(uint16_t(std::stoi(port)));
  }
  if (!ok) throw std::invalid_argument("smtpd: bad dns_servers entry \"" + text + "\" (IP[:PORT])");
  return a;
}

// resolver_setup - held around res_ninit and res_nclose. They attach to and detach from
// glibc's one shared copy of resolv.conf, which glibc guards with an internal lock that
// ThreadSanitizer cannot see: our own lock puts those moments in an order it can see (the
// `tsan` suite flagged them), at the cost of microseconds. The questions themselves
// (res_nquery) still run in parallel.
std::mutex resolver_setup;

// ask - one question through res_nquery, on the calling thread. The resolver's own timeout is
// in whole seconds (resolv.conf(5) "timeout"); the caller gives up sooner when told to.
DnsAnswer ask(const DnsQuery& q, const std::vector<sockaddr_in>& servers,
              std::chrono::milliseconds timeout) {
  DnsAnswer answer;
  struct __res_state state;
  std::memset(&state, 0, sizeof state);
  {
    std::lock_guard<std::mutex> lock(resolver_setup);
    if (res_ninit(&state) != 0) return answer;
  }
  state.retrans = int(std::max<long long>(1, (timeout.count() + 999) / 1000));
  state.retry = 1;
  if (!servers.empty()) {
    state.nscount = int(std::min<std::size_t>(servers.size(), MAXNS));
    for (int i = 0; i < state.nscount; ++i)
      state.nsaddr_list[i] = servers[std::size_t(i)];
  }
  std::vector<unsigned char> buf(65536);
  int n = res_nquery(&state, q.name.c_str(), 1 /* class IN */, int(q.type), buf.data(),
                     int(buf.size()));
  int error = state.res_h_errno;
  {
    std::lock_guard<std::mutex> lock(resolver_setup);
    res_nclose(&state);
  }
  if (n < 0) { // NXDOMAIN and NODATA come back as errors too
    if (error == HOST_NOT_FOUND || error == NO_DATA) answer.status = DnsAnswer::Status::not_found;
    return answer;
  }
  std::size_t length = std::min(std::size_t(n), buf.size());
  return dns::parse_answer({reinterpret_cast<const char*>(buf.data()), length}, q.type);
}

// max_lookup_threads - questions in flight at once, per resolver. When the DNS hangs, each
// thread lives for the resolver's own timeout; past this many, a question is a temp_error at
// once instead of one more thread.
constexpr int max_lookup_threads = 256;

// LibcResolver - asks each question of a round on a detached thread of its own and waits at
// most `timeout` for all of them: a question still out then is a temp_error for this round,
// and its thread finishes on its own later (its answer still reaches the cache).
class LibcResolver : public DnsResolver {
public:
  LibcResolver(std::vector<sockaddr_in> servers, std::chrono::milliseconds timeout,
               std::shared_ptr<dns::Cache> cache)
      : servers_(std::move(servers)), timeout_(timeout), cache_(std::move(cache)) {}

  std::vector<DnsAnswer> resolve(const std::vector<DnsQuery>& queries) override {
    auto round = std::make_shared<Round>();
    round->answers.resize(queries.size());
    round->done.assign(queries.size(), false);
    auto now = dns::Cache::Clock::now();
    for (std::size_t i = 0; i < queries.size(); ++i) {
      if (std::optional<DnsAnswer> cached = cache_->get(queries[i], now)) {
        round->answers[i] = std::move(*cached);
        round->done[i] = true;
      } else {
        start(round, i, queries[i]);
      }
    }
    std::unique_lock<std::mutex> lock(round->mu);
    round->finished.wait_for(lock, timeout_, [&] {
      return std::all_of(round->done.begin(), round->done.end(), [](bool d) { return d; });
    });
    return round->answers; // those not done are still temp_error
  }

private:
  struct Round {
    std::mutex mu;
    std::condition_variable finished;
    std::vector<DnsAnswer> answers;
    std::vector<bool> done;
  };

  // start - ask one question on its own thread; a thread that cannot start is a temp_error.
  void start(const std::shared_ptr<Round>& round, std::size_t i, const DnsQuery& q) {
    if (in_flight_->fetch_add(1) < max_lookup_threads) {
      try {
        std::thread([round, i, q, servers = servers_, timeout = timeout_, cache = cache_,
                     in_flight = in_flight_] {
          DnsAnswer answer = ask(q, servers, timeout);
          cache->put(q, answer, dns::Cache::Clock::now());
          in_flight->fetch_sub(1);
          std::lock_guard<std::mutex> lock(round->mu);
          round->answers[i] = std::move(answer);
          round->done[i] = true;
          round->finished.notify_all();
        }).detach();
        return;
      } catch (const std::system_error&) {}
    }
    in_flight_->fetch_sub(1); // no thread: this question stays a temp_error
    std::lock_guard<std::mutex> lock(round->mu);
    round->done[i] = true;
  }

  std::vector<sockaddr_in> servers_;
  std::chrono::milliseconds timeout_;
  std::shared_ptr<dns::Cache> cache_;
  std::shared_ptr<std::atomic<int>> in_flight_ = std::make_shared<std::atomic<int>>(0);
};

// ---- the checks --------------------------------------------------------------------------------

using Status = DnsAnswer::Status;

// dns_checks_on - whether any check is configured.
bool dns_checks_on(const Options& o) {
  return o.require_fcrdns || o.helo_check || !o.dnsbl_zones.empty() || !o.rhsbl_zones.empty();
}

// resolve_round - the resolver's answers, one per question whatever it returned.
std::vector<DnsAnswer> resolve_round(const Options& o, const std::vector<DnsQuery>& queries) {
  std::vector<DnsAnswer> answers;
  if (!queries.empty()) answers = o.dns_resolver->resolve(queries);
  answers.resize(queries.size()); // a resolver that answered too few: temp_error for the rest
  return answers;
}

// same_address - whether two numeric addresses are the same (2001:DB8::1 is 2001:db8:0::1).
bool same_address(const std::string& a, const std::string& b) {
  unsigned char x[16], y[16];
  int family = a.find(':') != std::string::npos ? AF_INET6 : AF_INET;
  return inet_pton(family, a.c_str(), x) == 1 && inet_pton(family, b.c_str(), y) == 1 &&
         std::memcmp(x, y, family == AF_INET6 ? 16 : 4) == 0;
}

// same_name - DNS names compare without case and without a trailing dot (RFC 4343).
bool same_name(std::string_view a, std::string_view b) {
  if (!a.empty() && a.back() == '.') a.remove_suffix(1);
  if (!b.empty() && b.back() == '.') b.remove_suffix(1);
  return iequals(a, b);
}

// forward_type - A for an IPv4 client, AAAA for IPv6.
DnsType forward_type(const std::string& ip) {
  return ip.find(':') != std::string::npos ? DnsType::aaaa : DnsType::a;
}

// add_list_queries - A and TXT of `name` under each zone (RFC 5782 §2.1, §2.2).
void add_list_queries(std::vector<DnsQuery>& queries, const std::string& name,
                      const std::vector<std::string>& zones) {
  for (const std::string& zone : zones) {
    queries.push_back({name + "." + zone, DnsType::a});
    queries.push_back({name + "." + zone, DnsType::txt});
  }
}

// add_listings - the listings in the answers from `first` on (A then TXT per zone): an A record
// in 127.0.0.0/8 is a listing (RFC 5782 §2.1); its TXT record is the reason (§2.2).
void add_listings(DnsChecks& checks, const std::vector<DnsAnswer>& answers, std::size_t first,
                  const std::vector<std::string>& zones, const std::string& source,
                  const std::string& listed) {
  for (std::size_t z = 0; z < zones.size(); ++z) {
    const DnsAnswer& a = answers[first + 2 * z];
    const DnsAnswer& txt = answers[first + 2 * z + 1];
    if (a.status != Status::found) continue;
    for (const std::string& address : a.records) {
      if (address.rfind("127.", 0) != 0) continue;
      std::string reason = txt.status == Status::found ? txt.records.front() : "";
      checks.listings.push_back({zones[z], source, listed, address, reason.substr(0, 200)});
      break;
    }
  }
}

// confirm_names - FCrDNS's second half: does a PTR name resolve back to `ip`? At most 10
// names are tried (as RFC 7208 §4.6.4 bounds SPF's ptr lookups).
void confirm_names(const Options& o, DnsChecks& checks, const std::string& ip,
                   const DnsAnswer& ptr) {
  if (ptr.status != Status::found) {
    checks.fcrdns = ptr.status == Status::not_found ? DnsStatus::fail : DnsStatus::temp_error;
    return;
  }
  std::vector<DnsQuery> forward;
  for (std::size_t i = 0; i < ptr.records.size() && i < 10; ++i)
    forward.push_back({ptr.records[i], forward_type(ip)});
  std::vector<DnsAnswer> answers = resolve_round(o, forward);
  checks.fcrdns = DnsStatus::fail;
  for (std::size_t i = 0; i < forward.size(); ++i) {
    for (const std::string& address : answers[i].records) {
      if (answers[i].status == Status::found && same_address(address, ip)) {
        checks.fcrdns = DnsStatus::pass;
        checks.fcrdns_name = forward[i].name;
        return;
      }
    }
    if (answers[i].status == Status::temp_error) checks.fcrdns = DnsStatus::temp_error;
  }
}

// with_zone - "zone" or "zone (reason)": the blocklist's words for the reply.
std::string with_zone(const DnsListing& l) {
  return l.reason.empty() ? l.zone : l.zone + " (" + l.reason + ")";
}

// domain_of - the domain of a reverse-path, lower-cased; "" for <> or an address literal.
std::string domain_of(const std::string& path) {
  std::size_t at = path.rfind('@');
  if (at == std::string::npos || at + 1 >= path.size() || path[at + 1] == '[') return "";
  std::string domain;
  for (char c : path.substr(at + 1))
    domain += ascii_lower(c);
  if (domain.back() == '.') domain.pop_back();
  return domain;
}

// literal_address - the address in an address literal "[192.0.2.1]" or "[IPv6:2001:db8::1]"
// (RFC 5321 §4.1.3), or "" when `name` is none.
std::string literal_address(std::string_view name) {
  if (name.size() < 3 || name.front() != '[' || name.back() != ']') return "";
  name = name.substr(1, name.size() - 2);
  if (istarts_with(name, "IPv6:")) name.remove_prefix(5);
  return std::string(name);
}

} // namespace

std::shared_ptr<DnsResolver> make_dns_resolver(const Options& options) {
  std::vector<sockaddr_in> servers;
  for (const std::string& s : options.dns_servers)
    servers.push_back(parse_dns_server(s));
  auto cache = std::make_shared<dns::Cache>(options.dns_cache_entries, options.dns_cache_ttl);
  return std::make_shared<LibcResolver>(std::move(servers), options.dns_timeout, cache);
}

namespace {

// dns_client_checks - at connect: FCrDNS and the DNSBLs, the lookups in parallel.
void dns_client_checks(const Options& o, SessionInfo& session) {
  if (!dns_checks_on(o) || session.dns.exempt || !o.dns_resolver) return;
  const std::string& ip = session.peer.ip;
  bool v6 = ip.find(':') != std::string::npos;
  std::string ptr_name = dns::reverse_name(ip, v6 ? "ip6.arpa" : "in-addr.arpa");
  if (ptr_name.empty()) return;                     // no numeric address: nothing to look up
  std::string reversed = dns::reverse_name(ip, ""); // "1.2.0.192." with no zone yet
  reversed.pop_back();
  std::vector<DnsQuery> queries{{ptr_name, DnsType::ptr}};
  add_list_queries(queries, reversed, o.dnsbl_zones);
  std::vector<DnsAnswer> answers = resolve_round(o, queries);
  add_listings(session.dns, answers, 1, o.dnsbl_zones, "ip", ip);
  confirm_names(o, session.dns, ip, answers[0]);
  if (o.reverse_dns) session.peer.hostname = session.dns.fcrdns_name;
}

// dns_helo_checks - at HELO/EHLO: does the name belong to the client, and is it on an RHSBL?
void dns_helo_checks(const Options& o, SessionInfo& session, const std::string& helo) {
  DnsChecks& checks = session.dns;
  if (!dns_checks_on(o) || checks.exempt || !o.dns_resolver) return;
  checks.listings.erase(std::remove_if(checks.listings.begin(), checks.listings.end(),
                                       [](const DnsListing& l) { return l.source == "helo"; }),
                        checks.listings.end());
  checks.helo = DnsStatus::not_checked;
  std::string literal = literal_address(helo);
  std::vector<DnsQuery> queries;
  bool ask_name = false;
  if (o.helo_check && !literal.empty()) {
    checks.helo = same_address(literal, session.peer.ip) ? DnsStatus::pass : DnsStatus::fail;
  } else if (o.helo_check && checks.fcrdns == DnsStatus::pass &&
             same_name(helo, checks.fcrdns_name)) {
    checks.helo = DnsStatus::pass;
  } else if (o.helo_check && !is_valid_helo_name(domain_of("@" + helo))) {
    checks.helo = DnsStatus::fail; // not a domain (RFC 5321 §4.1.1.1): nothing to look up
  } else if (o.helo_check) {
    queries.push_back({domain_of("@" + helo), forward_type(session.peer.ip)});
    ask_name = true;
  }
  std::string name = literal.empty() ? domain_of("@" + helo) : "";
  if (!is_valid_helo_name(name)) name.clear(); // only a domain is looked up on an RHSBL
  if (!name.empty()) add_list_queries(queries, name, o.rhsbl_zones);
  std::vector<DnsAnswer> answers = resolve_round(o, queries);
  if (ask_name) {
    const DnsAnswer& a = answers[0];
    checks.helo = a.status == Status::temp_error ? DnsStatus::temp_error : DnsStatus::fail;
    for (const std::string& address : a.records)
      if (a.status == Status::found && same_address(address, session.peer.ip))
        checks.helo = DnsStatus::pass;
  }
  if (!name.empty()) add_listings(checks, answers, ask_name ? 1 : 0, o.rhsbl_zones, "helo", name);
}

// dns_mail_checks - at MAIL: is the sender's domain on an RHSBL?
void dns_mail_checks(const Options& o, SessionInfo& session, const std::string& from) {
  DnsChecks& checks = session.dns;
  if (o.rhsbl_zones.empty() || checks.exempt || !o.dns_resolver) return;
  checks.listings.erase(std::remove_if(checks.listings.begin(), checks.listings.end(),
                                       [](const DnsListing& l) { return l.source == "mail"; }),
                        checks.listings.end());
  std::string domain = domain_of(from);
  if (domain.empty()) return; // <> or an address literal: no domain to ask about
  std::vector<DnsQuery> queries;
  add_list_queries(queries, domain, o.rhsbl_zones);
  add_listings(checks, resolve_round(o, queries), 0, o.rhsbl_zones, "mail", domain);
}

// dns_client_refusal - the FCrDNS or DNSBL refusal due at this point (the greeting, or RCPT
// when dns_refuse_at_rcpt), or nullopt.
std::optional<Reply> dns_client_refusal(const Options& o, const DnsChecks& checks, bool at_rcpt) {
  if (checks.exempt || o.dns_refuse_at_rcpt != at_rcpt) return std::nullopt;
  if (o.require_fcrdns && checks.fcrdns == DnsStatus::fail) return Reply::fcrdns_failure();
  if (o.require_fcrdns && checks.fcrdns == DnsStatus::temp_error && o.dns_temp_error_refuses)
    return Reply{450, "4.7.25", "FCrDNS failure: temporary DNS error"}; // RFC 7372 §3.3
  if (!o.dnsbl_refuse) return std::nullopt;
  for (const DnsListing& l : checks.listings)
    if (l.source == "ip") return Reply::ip_on_blocklist(with_zone(l));
  return std::nullopt;
}

// dns_helo_refusal - the HELO check's verdict, or nullopt.
std::optional<Reply> dns_helo_refusal(const Options& o, const DnsChecks& checks) {
  if (!o.helo_check || checks.exempt) return std::nullopt;
  if (checks.helo == DnsStatus::fail) return Reply::bad_helo();
  if (checks.helo == DnsStatus::temp_error && o.dns_temp_error_refuses)
    return Reply{450, "4.7.1", "Bad HELO: temporary DNS error"};
  return std::nullopt;
}

// dns_domain_refusal - at MAIL: the HELO name or the sender's domain on an RHSBL, or nullopt.
std::optional<Reply> dns_domain_refusal(const Options& o, const DnsChecks& checks) {
  if (!o.rhsbl_refuse || checks.exempt) return std::nullopt;
  for (const DnsListing& l : checks.listings)
    if (l.source != "ip") return Reply::domain_on_blocklist(with_zone(l));
  return std::nullopt;
}

} // namespace

namespace {

// =============================================================================================
// 7. Connection - one thread per client
//
// The loop: write whatever replies are queued (one write per burst of pipelined commands), run
// the TLS handshake when the Protocol accepted STARTTLS, stop if it asked to close, otherwise
// read and feed. This is the exception boundary of a connection: hooks' exceptions are already
// caught in the Protocol, and anything else ends only this connection.
// =============================================================================================

Peer peer_of(const sockaddr_storage& address, socklen_t length);

// ServerControl - what a connection needs from its server.
struct ServerControl {
  const Options& options;
  std::atomic<bool>& stopping; // a graceful shutdown began
  int wake_fd;                 // readable once stopping
  TlsContext tls;              // the TLS context at the time the client connected, or null
  std::function<void(const std::string&)> log_error;
  RateLimiter* rates;      // the server's per-client rates, shared by its sessions
  bool dns_exempt = false; // the client is in limit_exempt_networks: no DNS checks
};

// Connection - one client's session on its thread: the transport, the Protocol, the clocks.
class Connection {
public:
  // `proxy` is the proxy's end when a PROXY header named `peer` (else empty).
  Connection(ServerControl server, int fd, const Peer& peer, const Peer& local, const Peer& proxy)
      : server_(std::move(server)), options_(server_.options), fd_(fd), peer_(peer), local_(local),
        proxy_(proxy), conn_(std::make_unique<PlainConn>(fd)) {
    conn_->spin_before_sleep(options_.read_spin);
  }

  // run - serve the client until either side ends the session.
  void run() {
    std::unique_ptr<Protocol> session = start();
    if (!session) return;
    Protocol& protocol = *session;
    std::unique_ptr<char[]> buf(new char[read_buffer_bytes]);
    for (;;) {
      if (!flush(protocol)) return;
      if (protocol.starttls_requested()) { // RFC 3207 §4: the handshake right after our 220
        TlsDetails tls;
        if (!upgrade(tls)) return;
        protocol.tls_started(tls.version, tls.cipher, tls.peer_subject);
        continue;
      }
      if (protocol.should_close()) break;
      if (server_.stopping.load(std::memory_order_relaxed)) {
        saw_stopping_ = true; // from now on the wake pipe stays readable: stop polling it
        if (protocol.idle()) {
          protocol.shutting_down();
          continue;
        }
      }
      if (!read_and_feed(protocol, buf.get())) return;
    }
    conn_->close_gracefully();
  }

private:
  using Clock = std::chrono::steady_clock;

  // start - implicit TLS or the early-talker check, then the Protocol (null: the client is
  // gone or refused). Out of line so that the SessionInfo it fills takes no room on the stack
  // while the session runs: every connection thread's stack pages count (the bench's RSS per
  // idle connection).
  [[gnu::noinline]] std::unique_ptr<Protocol> start() {
    TlsDetails tls;
    if (options_.tls_implicit && !upgrade(tls)) return nullptr; // RFC 8314 §3.3: TLS first
    if (options_.reject_early_talkers && !options_.tls_implicit && talked_first()) {
      refuse_early_talker();
      return nullptr;
    }
    // session_info()'s result is the constructor's argument itself: one SessionInfo here.
    return std::unique_ptr<Protocol>(new Protocol(options_, session_info(tls), server_.rates));
  }

  // session_info - what the session knows of the client before the greeting; `tls` holds the
  // details of implicit TLS (empty otherwise).
  SessionInfo session_info(const TlsDetails& tls) const {
    SessionInfo info;
    info.peer = peer_;
    info.local = local_;
    info.proxy = proxy_;
    info.dns.exempt = server_.dns_exempt;
    info.tls = options_.tls_implicit;
    info.tls_version = tls.version;
    info.tls_cipher = tls.cipher;
    info.tls_peer_subject = tls.peer_subject;
    return info;
  }

  // upgrade - replace the plain transport with TLS over the same socket.
  bool upgrade(TlsDetails& tls) {
    std::string error;
    conn_ = start_tls(fd_, server_.tls, options_.command_timeout, tls, error);
    if (!conn_) {
      server_.log_error("smtpd: " + peer_.to_string() + ": " + error);
      return false;
    }
    conn_->spin_before_sleep(options_.read_spin);
    return true;
  }

  // talked_first - whether the client sent anything before our greeting (after waiting
  // greeting_delay for it, if set): bulk-mail tools do, real clients wait (RFC 5321 §3.1).
  bool talked_first() {
    if (options_.greeting_delay.count() > 0 &&
        wait_for(fd_, POLLIN, options_.greeting_delay, server_.wake_fd) != ReadResult::data)
      return false;
    char byte;
    return ::recv(fd_, &byte, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
  }

  // refuse_early_talker - 554 instead of a greeting, then close; no session is started.
  void refuse_early_talker() {
    std::string line;
    append_reply(line, replies::early_talker(), false);
    conn_->write_all(line, options_.command_timeout);
    server_.log_error("smtpd: refused " + peer_.to_string() + ": it talked before the greeting");
  }

  // flush - send the queued replies in one write, after the delay the Protocol asks for (a
  // failed AUTH or an error past the soft limit: a tarpit that shutdown cuts short).
  bool flush(Protocol& protocol) {
    auto delay = protocol.take_reply_delay();
    if (delay.count() > 0) wait_for(server_.wake_fd, POLLIN, delay, -1);
    if (!protocol.has_output()) return true;
    protocol.take_output(replies_); // no allocation per burst: the buffers trade places
    return conn_->write_all(replies_, options_.command_timeout);
  }

  // read_and_feed - one read under the Protocol's deadline, fed to it; false when the client
  // went away.
  bool read_and_feed(Protocol& protocol, char* buf) {
    auto timeout =
        std::chrono::duration_cast<std::chrono::milliseconds>(protocol.deadline() - Clock::now());
    if (timeout.count() <= 0) {
      protocol.timeout();
      return true;
    }
    std::size_t got = 0;
    switch (conn_->read_some(buf, read_buffer_bytes, got, timeout,
                             saw_stopping_ ? -1 : server_.wake_fd)) {
    case ReadResult::data: protocol.feed(std::string_view(buf, got)); return true;
    case ReadResult::timeout: protocol.timeout(); return true;
    case ReadResult::woken: return true;
    case ReadResult::closed:
    case ReadResult::error: break;
    }
    protocol.disconnected();
    return false;
  }

  const ServerControl server_;
  const Options& options_;
  int fd_;
  Peer peer_, local_, proxy_;
  std::unique_ptr<Transport> conn_;
  std::string replies_; // the burst of replies being written
  bool saw_stopping_ = false;
};

// reverse_lookup - the client's host name if its PTR record resolves back to its address
// (forward-confirmed, so a forged PTR is not shown), or "". The lookup runs on its own detached
// thread so that `timeout` bounds the wait; a stuck resolver finishes on its own later.
std::string reverse_lookup(const Peer& peer, std::chrono::milliseconds timeout) {
  struct Result {
    std::mutex mu;
    std::condition_variable done;
    bool finished = false;
    std::string name;
  };

  auto result = std::make_shared<Result>();
  std::thread([result, ip = peer.ip] {
    char host[NI_MAXHOST] = {};
    std::string confirmed;
    sockaddr_storage address{};
    socklen_t length = 0;
    auto* v4 = reinterpret_cast<sockaddr_in*>(&address);
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&address);
    if (inet_pton(AF_INET, ip.c_str(), &v4->sin_addr) == 1) {
      v4->sin_family = AF_INET;
      length = sizeof *v4;
    } else if (inet_pton(AF_INET6, ip.c_str(), &v6->sin6_addr) == 1) {
      v6->sin6_family = AF_INET6;
      length = sizeof *v6;
    }
    if (length > 0 && getnameinfo(reinterpret_cast<const sockaddr*>(&address), length, host,
                                  sizeof host, nullptr, 0, NI_NAMEREQD) == 0) {
      addrinfo hints{}, *list = nullptr;
      hints.ai_socktype = SOCK_STREAM;
      if (getaddrinfo(host, nullptr, &hints, &list) == 0) {
        for (addrinfo* a = list; a != nullptr && confirmed.empty(); a = a->ai_next) {
          char numeric[NI_MAXHOST] = {};
          if (getnameinfo(a->ai_addr, a->ai_addrlen, numeric, sizeof numeric, nullptr, 0,
                          NI_NUMERICHOST) == 0 &&
              ip == numeric)
            confirmed = host;
        }
        freeaddrinfo(list);
      }
    }
    std::lock_guard<std::mutex> lock(result->mu);
    result->name = confirmed;
    result->finished = true;
    result->done.notify_all();
  }).detach();
  std::unique_lock<std::mutex> lock(result->mu);
  result->done.wait_for(lock, timeout, [&] { return result->finished; });
  return result->finished ? result->name : std::string();
}

// unix_peer - a Unix-domain socket address: its path (a client's own end is usually unnamed:
// "", and the Server names it after the listener). An abstract address (a leading NUL, Linux)
// is shown with '@' in its place.
Peer unix_peer(const sockaddr_storage& address, socklen_t length) {
  const auto& un = reinterpret_cast<const sockaddr_un&>(address);
  std::size_t offset = offsetof(sockaddr_un, sun_path);
  std::size_t size = length > offset ? std::size_t(length) - offset : 0;
  std::string path(un.sun_path, std::min(size, sizeof un.sun_path));
  if (!path.empty() && path[0] == '\0') path[0] = '@';
  path = path.substr(0, path.find('\0')); // a path's terminating NUL, when counted
  Peer peer;
  peer.unix_path = path;
  return peer;
}

// add_peer_credentials - the pid, uid and gid of the process at the other end of a Unix-domain
// socket (SO_PEERCRED, unix(7)), as the kernel recorded them when it connected.
void add_peer_credentials(int fd, Peer& peer) {
#ifdef SO_PEERCRED
  ucred credentials{};
  socklen_t length = sizeof credentials;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0) {
    peer.pid = int(credentials.pid);
    peer.uid = int(credentials.uid);
    peer.gid = int(credentials.gid);
  }
#endif
}

// peer_of - the numeric address and port of a socket address; IPv4-mapped IPv6 addresses
// (from a dual-stack listener) are shown as plain IPv4.
Peer peer_of(const sockaddr_storage& address, socklen_t length) {
  char host[NI_MAXHOST] = {}, port[NI_MAXSERV] = {};
  Peer peer;
  if (address.ss_family == AF_UNIX) return unix_peer(address, length);
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&address), length, host, sizeof host, port,
                  sizeof port, NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return peer;
  peer.ip = host;
  if (peer.ip.rfind("::ffff:", 0) == 0 && peer.ip.find('.') != std::string::npos)
    peer.ip.erase(0, 7);
  peer.port = uint16_t(std::atoi(port));
  return peer;
}

// local_address - our end of a connected socket, as its client reached it.
Peer local_address(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof address;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return Peer();
  return peer_of(address, length);
}

// =============================================================================================
// 8. Server - listen, accept, one thread per connection, limits, graceful shutdown
// =============================================================================================

// split_host_port - "host:port", "[v6]:port" or ":port" (RFC 3986 style brackets for IPv6).
void split_host_port(const std::string& addr, std::string& host, std::string& port) {
  auto bad = [&] {
    return std::invalid_argument("smtpd: bad address \"" + addr +
                                 "\" (want host:port, [v6]:port or :port)");
  };
  if (!addr.empty() && addr.front() == '[') {
    std::size_t close = addr.find(']');
    if (close == std::string::npos || close + 1 >= addr.size() || addr[close + 1] != ':')
      throw bad();
    host = addr.substr(1, close - 1);
    port = addr.substr(close + 2);
  } else {
    std::size_t colon = addr.rfind(':');
    if (colon == std::string::npos || addr.find(':') != colon) throw bad();
    host = addr.substr(0, colon);
    port = addr.substr(colon + 1);
  }
  bool numeric = !port.empty() && port.size() <= 5 &&
                 std::all_of(port.begin(), port.end(), [](char c) { return is_digit(c); });
  if (!numeric || std::stoul(port) > 65535) throw bad();
}

// ---- Unix-domain sockets (unix(7)) -------------------------------------------------------------

// unix_socket_path - the PATH of a "unix:PATH" address; "" for a TCP address.
std::string unix_socket_path(const std::string& addr) {
  return addr.rfind("unix:", 0) == 0 ? addr.substr(5) : std::string();
}

// unix_address - PATH as a socket address; throws std::invalid_argument when it is empty or
// does not fit (sun_path: 108 octets with the NUL on Linux).
sockaddr_un unix_address(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path || path.find('\0') != std::string::npos)
    throw std::invalid_argument("smtpd: bad Unix socket path \"" + path + "\"");
  std::memcpy(a.sun_path, path.data(), path.size());
  return a;
}

// someone_listens - whether a server accepts connections on the socket at `path` now. A socket
// file whose server died refuses them (ECONNREFUSED); anything else counts as alive, so that a
// busy server's socket (its backlog full: EAGAIN) is never taken for a stale one.
bool someone_listens(const sockaddr_un& a) {
  int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe < 0) return true;
  int rc = ::connect(probe, reinterpret_cast<const sockaddr*>(&a), sizeof a);
  int error = errno;
  ::close(probe);
  return rc == 0 || error != ECONNREFUSED;
}

// remove_stale_socket - bind() found `path` taken: remove it only when it is a socket file and
// nothing listens on it (a server killed without cleaning up). Throws when it is live, or not
// a socket: another server's socket or a user's file is never removed.
void remove_stale_socket(const std::string& path, const sockaddr_un& a) {
  struct stat st {};

  if (::lstat(path.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode))
    throw std::system_error(EEXIST, std::generic_category(),
                            "smtpd: cannot listen on unix:" + path + ": not a socket file");
  if (someone_listens(a))
    throw std::system_error(EADDRINUSE, std::generic_category(),
                            "smtpd: cannot listen on unix:" + path + ": a server is listening");
  if (::unlink(path.c_str()) != 0 && errno != ENOENT)
    throw std::system_error(errno, std::generic_category(),
                            "smtpd: cannot remove the stale socket unix:" + path);
}

// open_unix_listener - a listening Unix-domain socket at `path` with file mode `mode`. The mode
// is set between bind() and listen(): until listen() every connect() is refused, so no client
// gets in while the file still has the mode the umask gave it.
int open_unix_listener(const std::string& path, unsigned mode) {
  sockaddr_un a = unix_address(path);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "smtpd: socket");
  auto fail = [&](const std::string& what) {
    int error = errno;
    ::close(fd);
    return std::system_error(error, std::generic_category(),
                             "smtpd: cannot listen on unix:" + path + ": " + what);
  };
  int rc = ::bind(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a);
  if (rc != 0 && errno == EADDRINUSE) {
    try {
      remove_stale_socket(path, a);
    } catch (...) {
      ::close(fd);
      throw;
    }
    rc = ::bind(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a);
  }
  if (rc != 0) throw fail("bind");
  if (::chmod(path.c_str(), mode_t(mode)) != 0) throw fail("chmod");
  if (::listen(fd, SOMAXCONN) != 0) throw fail("listen");
  return fd;
}

// SocketFile - the file a Unix listener made, to remove when the server stops listening: only
// if it is still the one we made (same device and inode), never a successor's.
struct SocketFile {
  std::string path; // "" for a TCP listener
  dev_t device = 0;
  ino_t inode = 0;

  static SocketFile made_at(const std::string& path) {
    SocketFile f;

    struct stat st {};

    if (path.empty() || ::lstat(path.c_str(), &st) != 0) return f;
    return {path, st.st_dev, st.st_ino};
  }

  void remove() {
    struct stat st {};

    if (!path.empty() && ::lstat(path.c_str(), &st) == 0 && st.st_dev == device &&
        st.st_ino == inode)
      ::unlink(path.c_str());
    path.clear();
  }
};

// open_listener - a bound, listening, close-on-exec socket for `addr`: "unix:PATH", or TCP. An
// empty host means all addresses: IPv6 with IPv4 mapped in when the system has IPv6, else IPv4.
int open_listener(const std::string& addr, unsigned unix_mode) {
  if (!unix_socket_path(addr).empty()) return open_unix_listener(unix_socket_path(addr), unix_mode);
  std::string host, port;
  split_host_port(addr, host, port);
  addrinfo hints{}, *list = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  hints.ai_family = host.empty() ? AF_INET6 : AF_UNSPEC;
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &list);
  if (rc != 0 && host.empty()) {
    hints.ai_family = AF_INET;
    rc = getaddrinfo(nullptr, port.c_str(), &hints, &list);
  }
  if (rc != 0)
    throw std::invalid_argument("smtpd: cannot resolve \"" + addr + "\": " + gai_strerror(rc));
  int last_errno = 0;
  for (addrinfo* a = list; a != nullptr; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last_errno = errno;
      continue;
    }
    int on = 1, off = 0;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (a->ai_family == AF_INET6 && host.empty())
      ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, SOMAXCONN) == 0) {
      freeaddrinfo(list);
      return fd;
    }
    last_errno = errno;
    ::close(fd);
  }
  freeaddrinfo(list);
  throw std::system_error(last_errno, std::generic_category(), "smtpd: cannot listen on " + addr);
}

// validate_auth - every chosen mechanism is in the mechanism table (section 5) and has its
// callback; auth_required needs a way to authenticate.
void validate_auth(const Options& o) {
  for (const std::string& name : o.auth_mechanisms) {
    const Mechanism* m = find_mechanism(name);
    if (m == nullptr || !(m->uses_secret ? bool(o.auth_secret) : bool(o.on_auth)))
      throw std::invalid_argument("smtpd: auth mechanism " + name +
                                  " is unknown or lacks its callback (on_auth / auth_secret)");
  }
  if (o.auth_required && !o.on_auth && !o.auth_secret && !o.new_session)
    throw std::invalid_argument("smtpd: auth_required needs on_auth, auth_secret or new_session");
  if (o.auth_max_failures == 0) throw std::invalid_argument("smtpd: limits must be positive");
}

// validate_session - new_session replaces the hooks and handlers: setting both would leave two
// places deciding, so it is refused.
void validate_session(const Options& o) {
  bool hooks = o.on_connect || o.on_helo || o.on_mail || o.on_rcpt || o.handler ||
               o.message_handler || o.stream_handler || o.per_recipient_handler || o.on_auth ||
               o.auth_secret || !o.auth_mechanisms.empty();
  if (o.new_session && hooks)
    throw std::invalid_argument("smtpd: new_session replaces on_connect, on_helo, on_mail, "
                                "on_rcpt, the handlers, on_auth, auth_secret and "
                                "auth_mechanisms: set one kind");
}

// is_esmtp_keyword - esmtp-keyword (RFC 5321 §4.1.2): a letter or digit, then letters, digits
// and hyphens.
bool is_esmtp_keyword(std::string_view k) {
  auto let_dig_hyphen = [](unsigned char c) { return is_let_dig(c) || c == '-'; };
  return !k.empty() && is_let_dig(static_cast<unsigned char>(k[0])) &&
         std::all_of(k.begin(), k.end(), let_dig_hyphen);
}

// is_ehlo_line - ehlo-keyword *( SP ehlo-param ), each ehlo-param 1*(%d33-126) (RFC 5321
// §4.1.1.1): nothing that could end the reply line or fake another.
bool is_ehlo_line(std::string_view line) {
  std::size_t space = line.find(' ');
  if (!is_esmtp_keyword(line.substr(0, space))) return false;
  while (space != std::string_view::npos) {
    line.remove_prefix(space + 1);
    space = line.find(' ');
    std::string_view param = line.substr(0, space);
    if (param.empty() ||
        !std::all_of(param.begin(), param.end(), [](char c) { return c >= '!' && c <= '~'; }))
      return false;
  }
  return true;
}

// The parameters the library parses and the extensions it advertises: a user's keyword may not
// shadow one of them (it would pass unparsed, or show twice in EHLO).
const char* const parsed_parameters[] = {"SIZE",  "BODY",       "SMTPUTF8", "AUTH", "RET",
                                         "ENVID", "REQUIRETLS", "NOTIFY",   "ORCPT"};
const char* const advertised_extensions[] = {
    "SIZE",       "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES",
    "SMTPUTF8",   "CHUNKING", "BINARYMIME", "DSN",
    "REQUIRETLS", "LIMITS",   "STARTTLS",   "AUTH"};

// is_ours - whether `keyword` (any case) is in `list`.
template <std::size_t N> bool is_ours(const char* const (&list)[N], std::string_view keyword) {
  return std::any_of(list, list + N, [&](const char* k) { return iequals(k, keyword); });
}

// validate_extensions - BINARYMIME travels only in BDAT (RFC 3030 §3); the user's parameter
// keywords must be keywords, and their EHLO lines ehlo-lines (RFC 5321 §4.1.1.1): a keyword,
// then printable parameters, so none can end the reply or add a line to it.
void validate_extensions(const Options& o) {
  if (o.binarymime && !o.chunking)
    throw std::invalid_argument("smtpd: binarymime needs chunking (RFC 3030 §3)");
  for (const auto* list : {&o.mail_parameters, &o.rcpt_parameters})
    for (const std::string& k : *list)
      if (!is_esmtp_keyword(k) || is_ours(parsed_parameters, k))
        throw std::invalid_argument("smtpd: not an ESMTP parameter keyword of your own: " + k);
  for (const std::string& line : o.ehlo_keywords)
    if (!is_ehlo_line(line) || is_ours(advertised_extensions, line.substr(0, line.find(' '))))
      throw std::invalid_argument("smtpd: not an EHLO keyword line of your own: " + line);
}

// validate - refuse options that would disable a protection by accident (a zero timeout or
// limit is a mistake, not a wish for "none").
void validate(const Options& o) {
  using namespace std::chrono_literals;
  if (o.command_timeout <= 0ms || o.data_timeout <= 0ms)
    throw std::invalid_argument("smtpd: timeouts must be positive");
  if (o.max_message_bytes == 0 || o.max_recipients == 0 || o.max_connections == 0 ||
      o.hard_error_limit == 0 || o.min_data_rate == 0 || o.max_connections_per_ip == 0 ||
      o.max_session_duration <= 0ms)
    throw std::invalid_argument("smtpd: limits must be positive");
  if (int(bool(o.message_handler)) + int(bool(o.handler)) + int(bool(o.stream_handler)) +
          int(bool(o.per_recipient_handler)) >
      1)
    throw std::invalid_argument("smtpd: set one of handler, message_handler, stream_handler, "
                                "per_recipient_handler");
  if (o.max_command_line_bytes < max_command_line) // RFC 5321 §4.5.3.1.4
    throw std::invalid_argument("smtpd: max_command_line_bytes must be at least 512");
  if (o.proxy_timeout <= 0ms || o.rate_table_size == 0)
    throw std::invalid_argument("smtpd: proxy_timeout and rate_table_size must be positive");
  if (o.read_spin.count() < 0 || o.read_spin > std::chrono::milliseconds(10))
    throw std::invalid_argument("smtpd: read_spin must be between 0 and 10 ms");
  if (o.unix_socket_mode > 07777)
    throw std::invalid_argument("smtpd: unix_socket_mode is a file mode, at most 07777");
  if (o.stream_chunk_bytes == 0) // a sink may come from stream_handler or Session::data()
    throw std::invalid_argument("smtpd: stream_chunk_bytes must be positive");
  bool files = !o.tls_cert_file.empty() || !o.tls_key_file.empty();
  bool tls = files || o.tls_context != nullptr;
  const Options defaults;
  bool ciphers =
      o.tls_ciphers != defaults.tls_ciphers || o.tls_ciphersuites != defaults.tls_ciphersuites;
  if (!tls_compiled &&
      (tls || o.tls_required || o.tls_implicit || !o.tls_client_ca_file.empty() || ciphers))
    throw std::invalid_argument("smtpd: built with SMTPD_NO_TLS: TLS options cannot be used");
  if (files && (o.tls_cert_file.empty() || o.tls_key_file.empty()))
    throw std::invalid_argument("smtpd: tls_cert_file and tls_key_file go together");
  if (!tls && (o.tls_required || o.tls_implicit || !o.tls_client_ca_file.empty()))
    throw std::invalid_argument(
        "smtpd: TLS options need tls_cert_file/tls_key_file or tls_context");
  if (o.tls_min_version != "TLSv1.2" && o.tls_min_version != "TLSv1.3")
    throw std::invalid_argument("smtpd: tls_min_version must be TLSv1.2 or TLSv1.3");
  if (ciphers) check_tls_ciphers(o); // the defaults are known to be good
  validate_auth(o);
  validate_session(o);
  validate_extensions(o);
}

// Network - an address range from limit_exempt_networks, e.g. 127.0.0.0/8 or ::1/128.
struct Network {
  int family = AF_INET;
  unsigned char bytes[16] = {};
  int prefix_bits = 0;
};

// parse_network - "address/prefix" (or a bare address: one host).
Network parse_network(const std::string& cidr) {
  Network n;
  std::size_t slash = cidr.find('/');
  std::string address = cidr.substr(0, slash);
  n.family = address.find(':') != std::string::npos ? AF_INET6 : AF_INET;
  int max_bits = n.family == AF_INET6 ? 128 : 32;
  bool ok = inet_pton(n.family, address.c_str(), n.bytes) == 1;
  n.prefix_bits = max_bits;
  if (ok && slash != std::string::npos) {
    std::string bits = cidr.substr(slash + 1);
    ok = !bits.empty() && bits.size() <= 3 &&
         std::all_of(bits.begin(), bits.end(), [](char c) { return is_digit(c); }) &&
         std::stoi(bits) <= max_bits;
    if (ok) n.prefix_bits = std::stoi(bits);
  }
  if (!ok) throw std::invalid_argument("smtpd: bad network \"" + cidr + "\" (want addr/bits)");
  return n;
}

// in_network - whether the numeric address `ip` lies in `n`.
bool in_network(const Network& n, const std::string& ip) {
  unsigned char bytes[16];
  if (inet_pton(n.family, ip.c_str(), bytes) != 1) return false;
  int whole = n.prefix_bits / 8, rest = n.prefix_bits % 8;
  if (std::memcmp(bytes, n.bytes, std::size_t(whole)) != 0) return false;
  unsigned char mask = static_cast<unsigned char>(0xFF << (8 - rest));
  return rest == 0 || ((bytes[whole] ^ n.bytes[whole]) & mask) == 0;
}

// in_networks - see its declaration in section 5.
bool in_networks(const std::vector<std::string>& cidrs, const std::string& ip) {
  for (const std::string& cidr : cidrs) {
    try {
      if (in_network(parse_network(cidr), ip)) return true;
    } catch (const std::invalid_argument&) { // Server refused it already; a bare Protocol skips
    }
  }
  return false;
}

// parse_networks - each of `cidrs`, parsed (throws std::invalid_argument for a bad one).
std::vector<Network> parse_networks(const std::vector<std::string>& cidrs) {
  std::vector<Network> parsed;
  for (const std::string& cidr : cidrs)
    parsed.push_back(parse_network(cidr));
  return parsed;
}

// in_any - whether `ip` lies in one of `networks`.
bool in_any(const std::vector<Network>& networks, const std::string& ip) {
  return std::any_of(networks.begin(), networks.end(),
                     [&](const Network& n) { return in_network(n, ip); });
}

// ---- 8.1 The PROXY protocol header (HAProxy's proxy-protocol.txt) ---------------------------
//
// A proxy in proxy_networks starts each connection with a header naming the real client, in one
// of two forms: version 1, one line of text (§2.1), and version 2, binary (§2.2). The parser is
// a pure function over the bytes so far (the fuzzer drives it); read_proxy_header feeds it from
// the socket without ever consuming a byte beyond the header.

// The 12-octet signature that starts every v2 header (§2.2): it cannot start an SMTP command.
constexpr char proxy_v2_signature[12] = {'\r', '\n', '\r', '\n', '\0', '\r',
                                         '\n', 'Q',  'U',  'I',  'T',  '\n'};

// bad_proxy_header - an invalid result that says why.
ProxyHeader bad_proxy_header(int version, const char* why) {
  ProxyHeader h;
  h.status = ProxyHeader::Status::invalid;
  h.version = version;
  h.error = why;
  return h;
}

// starts_like - whether `bytes` and `prefix` agree on their common length.
bool starts_like(std::string_view bytes, std::string_view prefix) {
  std::size_t n = std::min(bytes.size(), prefix.size());
  return bytes.substr(0, n) == prefix.substr(0, n);
}

// proxy_port - a v1 port: decimal 0..65535 without leading zeros (§2.1).
bool proxy_port(std::string_view text, uint16_t& port) {
  if (text.empty() || text.size() > 5 || (text.size() > 1 && text[0] == '0')) return false;
  unsigned long n = 0;
  for (char c : text) {
    if (!is_digit(static_cast<unsigned char>(c))) return false;
    n = n * 10 + unsigned(c - '0');
  }
  port = uint16_t(n);
  return n <= 65535;
}

// proxy_address - a v1 address of `family` in its numeric form; false when it is not one.
bool proxy_address(int family, std::string_view text, std::string& ip) {
  unsigned char bytes[16];
  char shown[INET6_ADDRSTRLEN] = {};
  if (text.empty() || text.size() >= sizeof shown) return false;
  std::string copy(text);
  if (inet_pton(family, copy.c_str(), bytes) != 1) return false;
  if (inet_ntop(family, bytes, shown, sizeof shown) == nullptr) return false;
  ip = shown;
  return true;
}

// parse_proxy_v1 - "PROXY TCP4|TCP6 src dst sport dport\r\n", fields separated by exactly one
// space, at most 107 octets; or "PROXY UNKNOWN" and anything up to the CRLF, which keeps the
// connection's own addresses (§2.1).
ProxyHeader parse_proxy_v1(std::string_view bytes) {
  ProxyHeader h;
  h.version = 1;
  std::size_t lf = bytes.substr(0, max_proxy_v1_bytes).find('\n');
  if (lf == std::string_view::npos)
    return bytes.size() >= max_proxy_v1_bytes ? bad_proxy_header(1, "v1 header over 107 octets")
                                              : h; // need_more: all of it is header so far
  if (lf == 0 || bytes[lf - 1] != '\r') return bad_proxy_header(1, "v1 header not ended by CRLF");
  std::string_view line = bytes.substr(0, lf - 1);
  std::string_view fields[6];
  std::size_t count = 0;
  while (count < 6) {
    std::size_t space = line.find(' ');
    fields[count++] = line.substr(0, space);
    if (space == std::string_view::npos) {
      line = {};
      break;
    }
    line.remove_prefix(space + 1);
  }
  if (fields[0] != "PROXY") return bad_proxy_header(1, "v1 header without PROXY");
  h.length = lf + 1;
  if (count >= 2 && fields[1] == "UNKNOWN") { // the rest is ignored (§2.1)
    h.status = ProxyHeader::Status::complete;
    h.local = true;
    return h;
  }
  if (count != 6 || !line.empty()) return bad_proxy_header(1, "v1 header with wrong fields");
  int family = fields[1] == "TCP4" ? AF_INET : fields[1] == "TCP6" ? AF_INET6 : 0;
  if (family == 0) return bad_proxy_header(1, "v1 protocol neither TCP4, TCP6 nor UNKNOWN");
  if (!proxy_address(family, fields[2], h.source.ip) ||
      !proxy_address(family, fields[3], h.destination.ip))
    return bad_proxy_header(1, "v1 address not of its protocol");
  if (!proxy_port(fields[4], h.source.port) || !proxy_port(fields[5], h.destination.port))
    return bad_proxy_header(1, "v1 port not 0..65535");
  h.status = ProxyHeader::Status::complete;
  return h;
}

// v2_port - a big-endian 16-bit port at `p`.
uint16_t v2_port(const unsigned char* p) {
  return uint16_t((p[0] << 8) | p[1]);
}

// v2_peer - an address of `family` (AF_INET: 4 octets, AF_INET6: 16) at `p`, with a port.
Peer v2_peer(int family, const unsigned char* p, const unsigned char* port) {
  char shown[INET6_ADDRSTRLEN] = {};
  Peer peer;
  if (inet_ntop(family, p, shown, sizeof shown) != nullptr) peer.ip = shown;
  peer.port = v2_port(port);
  return peer;
}

// v2_tlvs_fit - whether the TLVs after the addresses (type, 16-bit length, value) each end
// within the header (§2.2.7); their contents are not needed and are skipped.
bool v2_tlvs_fit(std::string_view tlvs) {
  while (!tlvs.empty()) {
    if (tlvs.size() < 3) return false;
    std::size_t length = v2_port(reinterpret_cast<const unsigned char*>(tlvs.data()) + 1);
    if (tlvs.size() - 3 < length) return false;
    tlvs.remove_prefix(3 + length);
  }
  return true;
}

// parse_proxy_v2 - the signature, version 2 and a command (LOCAL 0, PROXY 1), the family and
// transport byte, a 16-bit length, then that many octets: the addresses and TLVs (§2.2).
ProxyHeader parse_proxy_v2(std::string_view bytes) {
  ProxyHeader h;
  h.version = 2;
  const auto* u = reinterpret_cast<const unsigned char*>(bytes.data());
  if (bytes.size() > 12 && (u[12] >> 4) != 2) return bad_proxy_header(2, "v2 version not 2");
  if (bytes.size() > 12 && (u[12] & 0x0F) > 1) return bad_proxy_header(2, "v2 command unknown");
  if (bytes.size() < 16) return h; // need_more
  std::size_t total = 16 + v2_port(u + 14);
  if (total > max_proxy_v2_bytes) return bad_proxy_header(2, "v2 header over the size cap");
  if (bytes.size() < total) return h; // need_more
  h.length = total;
  h.status = ProxyHeader::Status::complete;
  // LOCAL: the proxy's own connection (a health check); the block is ignored, family included.
  h.local = (u[12] & 0x0F) == 0;
  if (h.local) return h;
  std::string_view block = bytes.substr(16, total - 16);
  unsigned char family = u[13];
  // §2.2: 0x00 UNSPEC, 0x11 TCP over IPv4, 0x21 TCP over IPv6, 0x31 UNIX stream; datagrams are
  // not SMTP, and receivers must drop connections with any other value.
  std::size_t addresses = family == 0x11 ? 12 : family == 0x21 ? 36 : family == 0x31 ? 216 : 0;
  if (family != 0x00 && addresses == 0) return bad_proxy_header(2, "v2 family not TCP or UNIX");
  if (block.size() < addresses) return bad_proxy_header(2, "v2 addresses overrun the header");
  if (!v2_tlvs_fit(block.substr(addresses))) return bad_proxy_header(2, "v2 TLV overruns");
  // UNSPEC and UNIX: addresses that name no TCP client; the connection's own stand.
  h.local = family == 0x00 || family == 0x31;
  if (h.local) return h;
  const auto* a = u + 16;
  if (family == 0x11) {
    h.source = v2_peer(AF_INET, a, a + 8);
    h.destination = v2_peer(AF_INET, a + 4, a + 10);
  } else {
    h.source = v2_peer(AF_INET6, a, a + 32);
    h.destination = v2_peer(AF_INET6, a + 16, a + 34);
  }
  return h;
}

} // namespace

ProxyHeader parse_proxy_header(std::string_view bytes) {
  if (bytes.empty()) return ProxyHeader{};
  if (starts_like(bytes, std::string_view(proxy_v2_signature, sizeof proxy_v2_signature)))
    return parse_proxy_v2(bytes);
  if (starts_like(bytes, "PROXY ")) return parse_proxy_v1(bytes);
  return bad_proxy_header(0, "not a PROXY protocol header");
}

namespace {

// read_proxy_header - the PROXY header at the start of `fd` (non-blocking), within `timeout`,
// and not one byte more: each round peeks at what has arrived, and consumes either all of it
// (the parser says every byte so far is header) or exactly the rest of the header. So a TLS
// ClientHello or commands sent right after it stay in the socket for the session. False, with
// `why`, when the header is missing, malformed, over-long or late, or the server is stopping.
bool read_proxy_header(int fd, std::chrono::milliseconds timeout, int wake_fd, ProxyHeader& header,
                       std::string& why) {
  auto until = std::chrono::steady_clock::now() + timeout;
  std::string got;
  // On the heap: a connection thread's stack pages stay committed for the whole session.
  std::unique_ptr<char[]> buffer(new char[max_proxy_v2_bytes]);
  char* buf = buffer.get();
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        until - std::chrono::steady_clock::now());
    ReadResult ready = left.count() > 0 ? wait_for(fd, POLLIN, left, wake_fd) : ReadResult::timeout;
    if (ready != ReadResult::data) {
      why = ready == ReadResult::timeout ? "timed out" : "server stopping";
      return false;
    }
    ssize_t n = ::recv(fd, buf, max_proxy_v2_bytes - got.size(), MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
    if (n <= 0) {
      why = n == 0 ? "closed" : std::strerror(errno);
      return false;
    }
    header = parse_proxy_header(got + std::string(buf, std::size_t(n)));
    if (header.status == ProxyHeader::Status::invalid) {
      why = header.error;
      return false;
    }
    bool complete = header.status == ProxyHeader::Status::complete;
    std::size_t take = complete ? header.length - got.size() : std::size_t(n);
    if (::recv(fd, buf, take, 0) != ssize_t(take)) { // peeked already: it is there
      why = "read failed";
      return false;
    }
    got.append(buf, take);
    if (complete) return true;
  }
}

} // namespace

// ---- 8.2 Per-client rates (Postfix's anvil) ---------------------------------------------------
//
// Each client address has a counter per kind (connections, messages, recipients) over a sliding
// minute, estimated from two fixed minutes: the count of the current one, plus the previous
// one's weighted by how much of it the sliding minute still covers. That takes two numbers per
// counter instead of a timestamp per event. The addresses live in a table bounded by
// rate_table_size, ordered by last use: an address unused for two minutes has nothing left to
// count and is dropped, and when the table is full the least recently seen one makes room.

struct RateLimiter::Impl {
  using Clock = std::chrono::steady_clock;
  static constexpr Clock::duration minute = std::chrono::minutes(1);

  struct Counter {
    Clock::time_point start;  // the current fixed minute began
    std::size_t current = 0;  // events in it
    std::size_t previous = 0; // events in the minute before it
  };

  struct Entry {
    std::string ip;
    Clock::time_point last; // the last event counted or refused
    Counter counters[3];    // by Kind
  };

  std::size_t limits[3];
  std::size_t capacity;
  std::vector<Network> exempt;
  mutable std::mutex mu;
  std::list<Entry> entries; // most recently seen first
  std::unordered_map<std::string, std::list<Entry>::iterator> index;

  explicit Impl(const Options& o)
      : limits{o.max_connection_rate, o.max_message_rate, o.max_recipient_rate},
        capacity(std::max<std::size_t>(o.rate_table_size, 1)),
        exempt(parse_networks(o.limit_exempt_networks)) {}

  // expire - drop the addresses unused for two minutes: every counter of theirs is zero now.
  void expire(Clock::time_point now) {
    while (!entries.empty() && now - entries.back().last >= 2 * minute) {
      index.erase(entries.back().ip);
      entries.pop_back();
    }
  }

  // entry - the address's entry, made most recent; a new one evicts the least recent when full.
  Entry& entry(const std::string& ip, Clock::time_point now) {
    auto found = index.find(ip);
    if (found != index.end()) {
      entries.splice(entries.begin(), entries, found->second);
    } else {
      if (index.size() >= capacity) {
        index.erase(entries.back().ip);
        entries.pop_back();
      }
      entries.push_front(Entry{ip, now, {}});
      for (Counter& c : entries.front().counters)
        c.start = now;
      index[ip] = entries.begin();
    }
    entries.front().last = std::max(entries.front().last, now);
    return entries.front();
  }

  // admit - one event on `c` if the sliding minute's estimate stays within `limit`.
  static bool admit(Counter& c, std::size_t limit, Clock::time_point now) {
    if (now - c.start >= 2 * minute) {
      c = Counter{now, 0, 0};
    } else if (now - c.start >= minute) {
      c.previous = c.current;
      c.current = 0;
      c.start += minute;
    }
    Clock::duration into = std::max(now - c.start, Clock::duration(0));
    double elapsed = std::chrono::duration<double>(into) / std::chrono::duration<double>(minute);
    double estimate = double(c.previous) * (1.0 - std::min(elapsed, 1.0)) + double(c.current);
    if (estimate + 1.0 > double(limit)) return false;
    ++c.current;
    return true;
  }
};

RateLimiter::RateLimiter(const Options& options) : impl_(std::make_unique<Impl>(options)) {}

RateLimiter::~RateLimiter() = default;

bool RateLimiter::allow(Kind kind, const std::string& ip,
                        std::chrono::steady_clock::time_point now) {
  std::size_t limit = impl_->limits[int(kind)];
  if (limit == 0 || in_any(impl_->exempt, ip)) return true;
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->expire(now);
  return Impl::admit(impl_->entry(ip, now).counters[int(kind)], limit, now);
}

std::size_t RateLimiter::tracked() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->index.size();
}

namespace {} // namespace

// Server::Impl - the listener, the connection registry and the worker threads. Each connection
// runs on a worker thread of its own; when it ends, the worker parks for a while (at most
// max_idle_threads of them) so that the next connection needs no thread creation. Connection
// threads hold the Impl by shared_ptr: one stuck in user code past a shutdown deadline is
// detached and keeps it alive until it returns.
struct Server::Impl : std::enable_shared_from_this<Server::Impl> {
  Options options;
  std::vector<Network> exempt;        // limit_exempt_networks, parsed
  std::vector<Network> proxies;       // proxy_networks, parsed
  std::unique_ptr<RateLimiter> rates; // per-client rates, shared by every session
  std::atomic<bool> closing{false};   // no longer accepting: drain(), shutdown() or close() began
  std::atomic<bool> stopping{false};  // shutdown() or close() began: idle sessions get 421
  int wake[2] = {-1, -1};             // written once when stopping; connections poll wake[0]
  int accept_wake[2] = {-1, -1};      // written once when closing; the accept loop polls it

  mutable std::mutex mu;
  mutable std::condition_variable changed; // serving, clients or threads changed
  std::condition_variable work;            // a connection is pending, or stopping
  int listen_fd = -1;
  SocketFile socket_file; // a Unix listener's file, removed when it stops listening
  bool serving = false;
  TlsContext tls_context; // for new connections; replaced by reload_tls()

  // Client - a connection being served.
  struct Client {
    int fd;
    Peer peer;
    Peer local;            // our end, as the client reached it
    pthread_t thread{};    // the worker serving it, once it started
    bool detached = false; // left behind by a shutdown (stuck in user code)
  };

  std::list<Client> clients;                           // live connections
  std::unordered_map<std::string, std::size_t> per_ip; // live connections by address
  std::deque<std::list<Client>::iterator> pending;     // accepted, for a parked worker
  std::size_t parked = 0;          // workers waiting for a connection, not yet reserved
  std::size_t threads = 0;         // worker threads alive (not detached)
  std::vector<pthread_t> finished; // workers that ended, to be joined

  explicit Impl(Options o) : options(std::move(o)) {
    if (options.addr.empty()) options.addr = ":25"; // as mhale/smtpd: every address, port 25
    validate(options);
    exempt = parse_networks(options.limit_exempt_networks);
    proxies = parse_networks(options.proxy_networks);
    parse_networks(options.xclient_networks); // checked here; the Protocol reads them
    parse_networks(options.trusted_networks);
    rates = std::make_unique<RateLimiter>(options);
    if (tls_configured(options)) tls_context = make_tls_context(options);
    if (options.hostname.empty()) options.hostname = system_hostname();
    if (dns_checks_on(options) && !options.dns_resolver)
      options.dns_resolver = make_dns_resolver(options);
    if (::pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0 ||
        ::pipe2(accept_wake, O_CLOEXEC | O_NONBLOCK) != 0) {
      int error = errno;
      close_pipes(); // no destructor runs for a constructor that throws
      throw std::system_error(error, std::generic_category(), "smtpd: pipe");
    }
  }

  ~Impl() {
    if (listen_fd >= 0) ::close(listen_fd);
    close_pipes();
  }

  void close_pipes() {
    for (int fd : {wake[0], wake[1], accept_wake[0], accept_wake[1]})
      if (fd >= 0) ::close(fd);
  }

  void log_error(const std::string& message) const {
    if (options.log_error) options.log_error(message);
  }

  // accept_loop - accept until closing. It has a wake pipe of its own: the connections' one
  // would tell them to stop too, and drain() leaves them alone.
  void accept_loop(int fd) {
    for (;;) {
      pollfd fds[2] = {{fd, POLLIN, 0}, {accept_wake[0], POLLIN, 0}};
      // The timeout lets workers that ended while no client came be joined (their stacks freed).
      if (::poll(fds, 2, 10000) < 0 && errno != EINTR) {
        log_error(std::string("smtpd: poll: ") + std::strerror(errno));
        return;
      }
      if (closing.load()) return;
      if (fds[0].revents & (POLLERR | POLLNVAL)) {
        log_error("smtpd: the listening socket failed; no longer accepting");
        return;
      }
      join_finished();
      if (fds[0].revents & POLLIN) accept_one(fd);
    }
  }

  // accept_one - take one connection; refuse it with 421 over a limit, else hand it to a parked
  // worker or a new thread.
  void accept_one(int fd) {
    sockaddr_storage address{};
    socklen_t length = sizeof address;
    int client =
        ::accept4(fd, reinterpret_cast<sockaddr*>(&address), &length, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (client < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        log_error(std::string("smtpd: accept: ") + std::strerror(errno));
        std::this_thread::sleep_for(std::chrono::milliseconds(50)); // let descriptors free up
      }
      return;
    }
    int on = 1;
    ::setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on); // we batch replies ourselves
    Peer peer = peer_of(address, length);
    Peer local = local_address(client); // here, not on the connection's small stack
    if (address.ss_family == AF_UNIX) name_unix_client(client, peer, local);
    std::unique_lock<std::mutex> lock(mu);
    if (clients.size() >= options.max_connections)
      return refuse(lock, client, peer, replies::too_many_connections(), "too many connections");
    // A proxy carries many clients: each is counted once its PROXY header names it. A Unix
    // client has no address to count under.
    bool exempted = peer.is_unix() || in_any(exempt, peer.ip) || in_any(proxies, peer.ip);
    std::size_t& from_ip = per_ip[peer.ip];
    if (!exempted && from_ip >= options.max_connections_per_ip)
      return refuse(lock, client, peer, replies::too_many_from_ip(), "too many from its address");
    ++from_ip;
    auto it = clients.insert(clients.end(), Client{client, peer, local});
    if (parked > 0) { // a parked worker takes it: no thread to create
      --parked;
      pending.push_back(it);
      work.notify_one();
      return;
    }
    if (start_worker(it)) return;
    forget(it);
    refuse(lock, client, peer, replies::too_many_connections(), "no thread");
  }

  // name_unix_client - a Unix client's own end is unnamed: it is named after the listener's
  // path, with the credentials of its process.
  static void name_unix_client(int fd, Peer& peer, Peer& local) {
    if (local.unix_path.empty()) local.unix_path = "(unnamed)";
    peer.unix_path = local.unix_path;
    add_peer_credentials(fd, peer);
  }

  // refuse - say why in one line and close: over a limit, never a silent drop (421).
  void refuse(std::unique_lock<std::mutex>& lock, int client, const Peer& peer, const Reply& why,
              const char* reason) {
    lock.unlock();
    std::string line;
    append_reply(line, why, false);
    (void)::send(client, line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    ::close(client);
    log_error("smtpd: refused " + peer.to_string() + ": " + reason);
  }

  // Start - what a new worker thread is given.
  struct Start {
    std::shared_ptr<Impl> impl;
    std::list<Client>::iterator client;
  };

  // start_worker - a thread with the configured stack size for `client` (lock held).
  bool start_worker(std::list<Client>::iterator client) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    std::size_t stack = std::max<std::size_t>(options.thread_stack_bytes, PTHREAD_STACK_MIN);
    pthread_attr_setstacksize(&attr, stack);
    auto start = std::make_unique<Start>(Start{shared_from_this(), client});
    pthread_t thread;
    int rc = pthread_create(&thread, &attr, &Impl::worker_main, start.get());
    pthread_attr_destroy(&attr);
    if (rc != 0) {
      log_error(std::string("smtpd: cannot start thread: ") + std::strerror(rc));
      return false;
    }
    start.release();
    ++threads;
    return true;
  }

  // use_batch_scheduling - run this thread as SCHED_BATCH (Linux): when a client's bytes wake
  // it, it does not preempt whatever runs on that core but waits for the next scheduling turn.
  // Under load that lets the running threads (and a local client) finish their work, and the
  // woken ones then run back to back: fewer context switches per message, for a delay of at
  // most a scheduling slice, which SMTP never notices. Where it is not available (or refused),
  // the thread stays as it is.
  static void use_batch_scheduling() {
#ifdef SCHED_BATCH
    sched_param normal{};
    pthread_setschedparam(pthread_self(), SCHED_BATCH, &normal);
#endif
  }

  // worker_main - serve connections one after another: the one it was started for, then those
  // handed to it while parked.
  static void* worker_main(void* arg) {
    std::unique_ptr<Start> start(static_cast<Start*>(arg));
    std::shared_ptr<Impl> impl = std::move(start->impl);
    // OpenSSL writes with write(), which raises SIGPIPE on a closed connection: keep that
    // signal pending on this thread instead of letting it kill the process.
    sigset_t pipe_signal;
    sigemptyset(&pipe_signal);
    sigaddset(&pipe_signal, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_signal, nullptr);
    if (impl->options.batch_scheduling) use_batch_scheduling();
    std::optional<std::list<Client>::iterator> client = start->client;
    while (client) {
      impl->serve_client(*client);
      client = impl->end_client(*client);
    }
    return nullptr;
  }

  // serve_client - one connection, at the exception boundary: anything thrown ends only it.
  void serve_client(std::list<Client>::iterator client) {
    try {
      if (std::unique_ptr<Connection> connection = prepare(client)) connection->run();
    } catch (const std::exception& e) { // e.g. std::bad_alloc
      log_error(std::string("smtpd: connection ended: ") + e.what());
    }
  }

  // prepare - first who the client really is (a proxy's header), then everything that uses it;
  // the Connection, or null when the client was refused. Out of line and the Connection on the
  // heap, so that none of it takes room on the stack while the session runs: every connection
  // thread's stack page counts (the bench's RSS per idle connection).
  [[gnu::noinline]] std::unique_ptr<Connection> prepare(std::list<Client>::iterator client) {
    Peer peer, local, proxy;
    TlsContext tls;
    {
      std::lock_guard<std::mutex> lock(mu);
      client->thread = pthread_self();
      peer = client->peer;
      local = client->local;
      tls = tls_context;
    }
    if (in_any(proxies, peer.ip) && !take_proxy_header(client, peer, local, proxy)) return nullptr;
    if (!peer.is_unix() && !rates->allow(RateLimiter::Kind::connection, peer.ip)) {
      refuse_late(client->fd, peer, replies::connection_rate(), "connection rate");
      return nullptr;
    }
    // The DNS checks skip limit_exempt_networks and trusted_networks (issue 17), and Unix
    // clients, which have no address to look up.
    bool dns_exempt =
        peer.is_unix() || in_any(exempt, peer.ip) || in_networks(options.trusted_networks, peer.ip);
    bool fcrdns_done = dns_checks_on(options) && !dns_exempt; // the checks name the client
    if (options.reverse_dns && !fcrdns_done && !peer.is_unix())
      peer.hostname = reverse_lookup(peer, options.reverse_dns_timeout);
    ServerControl control{options,
                          stopping,
                          wake[0],
                          std::move(tls),
                          [this](const std::string& m) { log_error(m); },
                          rates.get()};
    control.dns_exempt = dns_exempt && dns_checks_on(options);
    return std::make_unique<Connection>(std::move(control), client->fd, peer, local, proxy);
  }

  // take_proxy_header - a client from proxy_networks must begin with a PROXY header (HAProxy's
  // proxy-protocol.txt); the peer and our end become those it names (not for v1 UNKNOWN or v2
  // LOCAL), and the per-IP count moves to the real client. False: close at once. A missing or
  // bad header gets no reply (the peer does not speak SMTP yet); over the per-IP limit, 421.
  bool take_proxy_header(std::list<Client>::iterator client, Peer& peer, Peer& local, Peer& proxy) {
    ProxyHeader header;
    std::string why;
    if (!read_proxy_header(client->fd, options.proxy_timeout, wake[0], header, why)) {
      log_error("smtpd: closed " + peer.to_string() + ": no valid PROXY header: " + why);
      return false;
    }
    if (header.local) return true;
    proxy = peer;
    peer = header.source;
    local = header.destination;
    if (reattribute(client, peer)) return true;
    refuse_late(client->fd, peer, replies::too_many_from_ip(), "too many from its address");
    return false;
  }

  // reattribute - count the connection under `real` instead of the proxy's address; false when
  // that takes `real` over max_connections_per_ip (it stays counted until the connection ends).
  bool reattribute(std::list<Client>::iterator client, const Peer& real) {
    std::lock_guard<std::mutex> lock(mu);
    auto count = per_ip.find(client->peer.ip);
    if (count != per_ip.end() && --count->second == 0) per_ip.erase(count);
    client->peer = real;
    std::size_t& from_ip = ++per_ip[real.ip];
    return from_ip <= options.max_connections_per_ip || in_any(exempt, real.ip);
  }

  // refuse_late - as refuse(), on the connection's thread once the real client is known; the
  // socket is closed by end_client.
  void refuse_late(int fd, const Peer& peer, const Reply& why, const char* reason) {
    std::string line;
    append_reply(line, why, false);
    (void)::send(fd, line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    log_error("smtpd: refused " + peer.to_string() + ": " + reason);
  }

  // end_client - close the connection (under the lock, so cut_all() never shuts down a
  // descriptor number already reused), then park until another connection comes, or end the
  // thread: when no longer accepting, when the pool is full, or after a while without work.
  std::optional<std::list<Client>::iterator> end_client(std::list<Client>::iterator client) {
    std::unique_lock<std::mutex> lock(mu);
    bool detached = client->detached;
    ::close(client->fd);
    forget(client);
    changed.notify_all();
    if (detached) return std::nullopt; // shutdown gave up on this thread: just end
    if (!closing && parked < options.max_idle_threads) {
      ++parked;
      bool got = work.wait_for(lock, std::chrono::seconds(30),
                               [&] { return !pending.empty() || closing; });
      if (got && !pending.empty()) { // accept_one reserved us by decrementing `parked`
        auto next = pending.front();
        pending.pop_front();
        return next;
      }
      --parked;
    }
    --threads;
    finished.push_back(pthread_self());
    changed.notify_all();
    return std::nullopt;
  }

  // forget - drop a connection from the registry and its address's count (lock held).
  void forget(std::list<Client>::iterator client) {
    auto count = per_ip.find(client->peer.ip);
    if (count != per_ip.end() && --count->second == 0) per_ip.erase(count);
    clients.erase(client);
  }

  // join_finished - join the workers that have ended.
  void join_finished() {
    std::vector<pthread_t> done;
    {
      std::lock_guard<std::mutex> lock(mu);
      done.swap(finished);
    }
    for (pthread_t t : done)
      pthread_join(t, nullptr);
  }

  // cut_all - end every connection now: their reads fail and their threads finish.
  void cut_all() {
    std::lock_guard<std::mutex> lock(mu);
    for (Client& c : clients)
      ::shutdown(c.fd, SHUT_RDWR);
  }

  // stop_accepting - for good (lock held): the accept loop returns, then the listener is
  // closed, so that new clients are refused by the kernel. Open sessions are not disturbed.
  // Every caller waits for the accept loop, so none returns while it may still accept.
  void stop_accepting(std::unique_lock<std::mutex>& lock) {
    if (!closing.exchange(true)) (void)::write(accept_wake[1], "x", 1);
    work.notify_all(); // no connection will come for the parked workers: they end
    changed.wait(lock, [&] { return !serving; });
    if (listen_fd >= 0) {
      ::close(listen_fd);
      listen_fd = -1;
    }
    socket_file.remove();
  }

  // drain - stop accepting, then wait until every session has ended by itself, `timeout`
  // passes or a shutdown begins; true when no session is left.
  bool drain(std::chrono::milliseconds timeout) {
    auto until = std::chrono::steady_clock::now() + timeout;
    std::unique_lock<std::mutex> lock(mu);
    stop_accepting(lock);
    changed.wait_until(lock, until, [&] { return clients.empty() || stopping; });
    bool none_left = clients.empty();
    lock.unlock();
    join_finished(); // the accept loop, which used to, is gone
    return none_left;
  }

  // stop - the shared part of shutdown() and close(): stop accepting, tell the sessions (idle
  // ones say 421 at once), wait for them to end until `deadline`, cut the rest, give them a
  // moment, and detach any thread still stuck in user code (a handler that never returns) so
  // that shutdown always returns.
  void stop(std::chrono::milliseconds deadline) {
    auto until = std::chrono::steady_clock::now() + deadline;
    std::unique_lock<std::mutex> lock(mu);
    stop_accepting(lock);
    if (!stopping.exchange(true)) (void)::write(wake[1], "x", 1);
    changed.notify_all(); // a drain() waiting on another thread returns
    changed.wait_until(lock, until, [&] { return clients.empty(); });
    lock.unlock();
    cut_all();
    lock.lock();
    auto grace = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    changed.wait_until(lock, grace, [&] { return clients.empty(); });
    detach_stuck(lock);
    changed.wait(lock, [&] { return threads == 0; });
    lock.unlock();
    join_finished();
  }

  // detach_stuck - connections still running after the grace period are in user code that
  // does not return: leave their threads to finish on their own (lock held).
  void detach_stuck(std::unique_lock<std::mutex>&) {
    for (Client& c : clients) {
      // A connection still waiting for a parked worker has no thread of its own: that worker
      // is counted in `threads` and will serve it (421 at once) and end normally.
      if (c.detached || c.thread == pthread_t{}) continue;
      c.detached = true;
      pthread_detach(c.thread);
      --threads;
      log_error("smtpd: shutdown left a connection from " + c.peer.to_string() +
                " whose handler has not returned; its thread ends when the handler does");
    }
  }
};

Server::Server(Options options) : impl_(std::make_shared<Impl>(std::move(options))) {}

Server::~Server() {
  close();
}

void Server::listen() {
  int fd = open_listener(impl_->options.addr, impl_->options.unix_socket_mode);
  SocketFile file = SocketFile::made_at(unix_socket_path(impl_->options.addr));
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (impl_->listen_fd >= 0) ::close(impl_->listen_fd);
  impl_->listen_fd = fd;
  impl_->socket_file = file;
}

void Server::serve() {
  int fd;
  {
    std::unique_lock<std::mutex> lock(impl_->mu);
    if (impl_->closing) return; // drained or shut down before it began
    if (impl_->listen_fd < 0) throw std::logic_error("smtpd: serve() before listen()");
    if (impl_->serving) throw std::logic_error("smtpd: serve() is already running");
    fd = impl_->listen_fd;
    impl_->serving = true;
    impl_->changed.notify_all();
  }
  int flags = ::fcntl(fd, F_GETFL);
  ::fcntl(fd, F_SETFL, flags | O_NONBLOCK); // poll said ready, but the client may be gone
  impl_->accept_loop(fd);
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->serving = false;
  impl_->changed.notify_all();
}

void Server::serve(int listening_fd) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->listen_fd >= 0) ::close(impl_->listen_fd);
    impl_->listen_fd = listening_fd;
  }
  ::fcntl(listening_fd, F_SETFD, FD_CLOEXEC);
  serve();
}

void Server::listen_and_serve() {
  listen();
  serve();
}

std::string Server::address() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (impl_->listen_fd < 0) return "";
  Peer bound = local_address(impl_->listen_fd);
  return bound.ip.empty() && !bound.is_unix() ? "" : bound.to_string();
}

uint16_t Server::port() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->listen_fd < 0 ? 0 : local_address(impl_->listen_fd).port;
}

bool Server::wait_ready(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(impl_->mu);
  return impl_->changed.wait_for(lock, timeout, [&] { return impl_->serving; });
}

bool Server::drain(std::chrono::milliseconds timeout) {
  return impl_->drain(timeout);
}

void Server::shutdown(std::chrono::milliseconds deadline) {
  impl_->stop(deadline);
}

void Server::close() {
  impl_->stop(std::chrono::milliseconds(0));
}

void Server::reload_tls() {
  if (impl_->options.tls_context != nullptr)
    throw std::logic_error("smtpd: reload_tls() reloads files; a tls_context is yours to change");
  if (!tls_configured(impl_->options)) throw std::logic_error("smtpd: TLS is not configured");
  TlsContext fresh = make_tls_context(impl_->options); // throws, keeping the old one
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->tls_context = std::move(fresh);
}

std::size_t Server::connections() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->clients.size();
}

const Options& Server::options() const {
  return impl_->options;
}

// ---- TestServer -------------------------------------------------------------------------------
//
// TestServer puts a handler of its own in front of the one the user set (a StreamHandler before
// a StreamHandler, a PerRecipientHandler otherwise). It asks the user's handler first and hands
// its verdicts back to the Server unchanged, so the client hears what it would hear without
// TestServer; it keeps the message only if a verdict delivers it to some recipient.

namespace {

// accepted - whether a handler's verdict accepts the message: nullopt, or a 2xx reply. Any other
// code refuses (the Protocol turns 3xx and out-of-range codes into 451, see
// normalize_user_reply), so positive() would be wrong here.
bool accepted(const std::optional<Reply>& verdict) {
  return !verdict || (verdict->code >= 200 && verdict->code <= 299);
}

// Inbox - the accepted messages. The installed handlers share it with the TestServer rather than
// point into it: a handler stuck past Server::shutdown() is left running on a detached thread
// and may record after the TestServer is gone.
struct Inbox {
  std::mutex mu;
  std::condition_variable arrived;
  std::vector<TestServer::Message> messages;

  // keep - the message, if `verdicts` deliver it to a recipient (a list of the wrong length
  // delivers nothing: the Protocol answers 451), with those recipients in delivered_to.
  void keep(const RecipientReplies& verdicts, TestServer::Message message) {
    const std::vector<std::string>& to = message.envelope.to;
    if (verdicts.size() != to.size()) return;
    for (std::size_t i = 0; i < to.size(); ++i)
      if (accepted(verdicts[i])) message.delivered_to.push_back(to[i]);
    if (message.delivered_to.empty()) return;
    std::lock_guard<std::mutex> lock(mu);
    messages.push_back(std::move(message));
    arrived.notify_all();
  }
};

// RecordingSink - the user's MessageSink, looked through: each piece is passed on, then copied.
// The copy is kept when the user's verdict delivers it. Destroyed without a verdict (the message
// was abandoned, or a write() failed) it keeps nothing.
class RecordingSink : public MessageSink {
public:
  RecordingSink(std::unique_ptr<MessageSink> user, std::shared_ptr<Inbox> inbox,
                TestServer::Message message)
      : user_(std::move(user)), inbox_(std::move(inbox)), message_(std::move(message)) {}

  void write(std::string_view piece) override {
    user_->write(piece);
    message_.data.append(piece);
  }

  // The Protocol asks finish_per_recipient(); finish() only passes on.
  std::optional<Reply> finish() override { return user_->finish(); }

  RecipientReplies finish_per_recipient(const Envelope& e) override {
    RecipientReplies verdicts = user_->finish_per_recipient(e);
    inbox_->keep(verdicts, std::move(message_));
    return verdicts;
  }

private:
  std::unique_ptr<MessageSink> user_;
  std::shared_ptr<Inbox> inbox_;
  TestServer::Message message_; // session, envelope, and the data so far
};

// recording - a PerRecipientHandler that asks `user` (none: deliver to all) and keeps what it
// delivers.
PerRecipientHandler recording(PerRecipientHandler user, std::shared_ptr<Inbox> inbox) {
  return [user = std::move(user),
          inbox = std::move(inbox)](const SessionInfo& session, const Envelope& envelope,
                                    const std::string& data) -> RecipientReplies {
    RecipientReplies verdicts =
        user ? user(session, envelope, data) : RecipientReplies(envelope.to.size());
    inbox->keep(verdicts, TestServer::Message{session, envelope, data, {}});
    return verdicts;
  };
}

// recording - a StreamHandler whose sinks are the user's, wrapped in a RecordingSink. A Reply the
// user's handler throws refuses DATA as usual; a missing sink is left for the Server to refuse.
StreamHandler recording(StreamHandler user, std::shared_ptr<Inbox> inbox) {
  return [user = std::move(user), inbox = std::move(inbox)](
             const SessionInfo& session, const Envelope& envelope) -> std::unique_ptr<MessageSink> {
    std::unique_ptr<MessageSink> sink = user(session, envelope);
    if (!sink) return nullptr;
    return std::make_unique<RecordingSink>(std::move(sink), inbox,
                                           TestServer::Message{session, envelope, "", {}});
  };
}

// RecordingSession - the user's Session, looked through: every call is passed on, and the
// messages it accepts are kept, whole (message()) or streamed (a RecordingSink around the sink
// its data() returns). A method added to Session must be passed on here too: the testserver
// suite checks that each one arrives.
class RecordingSession final : public Session {
public:
  RecordingSession(std::unique_ptr<Session> user, std::shared_ptr<Inbox> inbox)
      : user_(std::move(user)), inbox_(std::move(inbox)) {}

  std::optional<Reply> command(const SessionInfo& s, std::string_view line) override {
    return user_->command(s, line);
  }

  std::optional<Reply> hello(const SessionInfo& s, const std::string& name) override {
    return user_->hello(s, name);
  }

  std::optional<Reply> mail(const SessionInfo& s, const std::string& from,
                            const MailOptions& m) override {
    return user_->mail(s, from, m);
  }

  std::optional<Reply> rcpt(const SessionInfo& s, const Envelope& e, const std::string& to,
                            const RcptOptions& r) override {
    return user_->rcpt(s, e, to, r);
  }

  std::unique_ptr<MessageSink> data(const SessionInfo& s, const Envelope& e) override {
    std::unique_ptr<MessageSink> sink = user_->data(s, e);
    if (!sink) return nullptr; // buffered: message() keeps it
    return std::make_unique<RecordingSink>(std::move(sink), inbox_,
                                           TestServer::Message{s, e, "", {}});
  }

  // The Protocol asks message_per_recipient(); message() only passes on.
  std::optional<Reply> message(const SessionInfo& s, const Envelope& e,
                               const std::string& data) override {
    return user_->message(s, e, data);
  }

  RecipientReplies message_per_recipient(const SessionInfo& s, const Envelope& e,
                                         const std::string& data) override {
    RecipientReplies verdicts = user_->message_per_recipient(s, e, data);
    inbox_->keep(verdicts, TestServer::Message{s, e, data, {}});
    return verdicts;
  }

  void reset(const SessionInfo& s) override { user_->reset(s); }

  void close(const SessionInfo& s, SessionEnd why) override { user_->close(s, why); }

  std::vector<std::string> auth_mechanisms(const SessionInfo& s) override {
    return user_->auth_mechanisms(s);
  }

  bool check_password(const SessionInfo& s, const std::string& mechanism,
                      const std::string& username, const std::string& password,
                      const std::string& authzid) override {
    return user_->check_password(s, mechanism, username, password, authzid);
  }

  std::optional<std::string> secret(const SessionInfo& s, const std::string& username) override {
    return user_->secret(s, username);
  }

private:
  std::unique_ptr<Session> user_;
  std::shared_ptr<Inbox> inbox_;
};

// recording - a SessionFactory whose objects are the user's, wrapped in a RecordingSession.
SessionFactory recording(SessionFactory user, std::shared_ptr<Inbox> inbox) {
  return [user = std::move(user),
          inbox = std::move(inbox)](const SessionInfo& s) -> std::unique_ptr<Session> {
    std::unique_ptr<Session> session = user(s);
    if (!session) return nullptr; // the Protocol refuses it, and says why
    return std::make_unique<RecordingSession>(std::move(session), inbox);
  };
}

// per_recipient - a Handler or MessageHandler in PerRecipientHandler's shape, its one verdict
// for every recipient (a thrown Reply passes through), because keeping a message needs the
// session and envelope a Handler cannot see, and the verdicts a PerRecipientHandler gives.
PerRecipientHandler per_recipient(MessageHandler handler) {
  if (!handler) return nullptr;
  return [handler = std::move(handler)](const SessionInfo& session, const Envelope& envelope,
                                        const std::string& data) -> RecipientReplies {
    return RecipientReplies(envelope.to.size(), handler(session, envelope, data));
  };
}

PerRecipientHandler per_recipient(Handler handler) {
  if (!handler) return nullptr;
  return [handler = std::move(handler)](const SessionInfo& session, const Envelope& envelope,
                                        const std::string& data) -> RecipientReplies {
    handler(session.peer, envelope.from, envelope.to, data);
    return RecipientReplies(envelope.to.size());
  };
}

// install_recording - put `inbox` behind the user's Session objects, or whichever handler the
// user set, or behind none. Options with two kinds are left as they are, so that the Server
// refuses them with its own message.
void install_recording(Options& o, const std::shared_ptr<Inbox>& inbox) {
  if (o.new_session) {
    o.new_session = recording(std::move(o.new_session), inbox);
    return;
  }
  if (int(bool(o.handler)) + int(bool(o.message_handler)) + int(bool(o.stream_handler)) +
          int(bool(o.per_recipient_handler)) >
      1)
    return;
  if (o.stream_handler) {
    o.stream_handler = recording(std::move(o.stream_handler), inbox);
    return;
  }
  if (o.message_handler) o.per_recipient_handler = per_recipient(std::move(o.message_handler));
  if (o.handler) o.per_recipient_handler = per_recipient(std::move(o.handler));
  o.handler = nullptr;
  o.message_handler = nullptr;
  o.per_recipient_handler = recording(std::move(o.per_recipient_handler), inbox);
}

} // namespace

struct TestServer::State {
  std::shared_ptr<Inbox> inbox = std::make_shared<Inbox>();
  std::unique_ptr<Server> server;
  std::thread thread;
  std::string address; // kept, as Server::address() and port() are "" and 0 after close()
  uint16_t port = 0;
};

TestServer::TestServer(Options options) : s_(std::make_unique<State>()) {
  if (options.addr == Options().addr) options.addr = "127.0.0.1:0";
  install_recording(options, s_->inbox);
  s_->server = std::make_unique<Server>(std::move(options));
  s_->server->listen();
  s_->address = s_->server->address();
  s_->port = s_->server->port();
  Server* server = s_->server.get(); // outlives the thread: stop() joins it first
  s_->thread = std::thread([server] { server->serve(); });
  if (!s_->server->wait_ready(std::chrono::seconds(5))) {
    stop();
    throw std::runtime_error("smtpd: TestServer was not ready within 5 s");
  }
}

TestServer::~TestServer() {
  stop();
}

uint16_t TestServer::port() const {
  return s_->port;
}

std::string TestServer::address() const {
  return s_->address;
}

std::vector<TestServer::Message> TestServer::messages() const {
  std::lock_guard<std::mutex> lock(s_->inbox->mu);
  return s_->inbox->messages;
}

bool TestServer::wait_for(std::size_t count, std::chrono::milliseconds timeout) const {
  Inbox& inbox = *s_->inbox;
  std::unique_lock<std::mutex> lock(inbox.mu);
  return inbox.arrived.wait_for(lock, timeout, [&] { return inbox.messages.size() >= count; });
}

void TestServer::clear() {
  std::lock_guard<std::mutex> lock(s_->inbox->mu);
  s_->inbox->messages.clear();
}

void TestServer::stop() {
  s_->server->close(); // close() is final and may be repeated; serve() returns
  if (s_->thread.joinable()) s_->thread.join();
}

Server& TestServer::server() {
  return *s_->server;
}

// ---- the one-liners ----------------------------------------------------------------------------

void ListenAndServe(const std::string& addr, Handler handler, const std::string& appname,
                    const std::string& hostname) {
  ListenAndServeTLS(addr, "", "", std::move(handler), appname, hostname); // no files: no TLS
}

void ListenAndServeTLS(const std::string& addr, const std::string& cert_file,
                       const std::string& key_file, Handler handler, const std::string& appname,
                       const std::string& hostname) {
  Options options;
  options.addr = addr;
  options.handler = std::move(handler);
  if (!appname.empty()) options.appname = appname;
  options.hostname = hostname;
  options.tls_cert_file = cert_file;
  options.tls_key_file = key_file;
  Server server(std::move(options));
  server.listen_and_serve();
}

// =============================================================================================
// 9. Client - SMTP and LMTP from the other side (go-smtp's Client and SendMail)
//
// A blocking client over one connection, made of the server's own parts: the transports of
// section 6 (PlainConn, TlsConn), base64 and HMAC-MD5 for AUTH (section 2), the address parser
// (section 3) and xtext. A reply is read by ReplyParser, a pure, resumable scanner bounded in
// line length and line count, under one deadline per reply, so a server that drips bytes or
// never ends its reply costs a timeout, never a hang or unbounded memory. Message content has
// every line end made CRLF before it is sent, so the client never sends a bare CR or LF and
// cannot carry a smuggled message (RFC 5321 §2.3.8). Requests the server did not advertise are
// refused here, before anything is sent. SMTPD_NO_TLS is consulted here too, for the client's
// TLS context and handshake.
// =============================================================================================

ClientError::ClientError(std::string command, Reply reply)
    : std::runtime_error([&] {
        std::string what = command + ": " + std::to_string(reply.code);
        if (!reply.enhanced.empty()) what += " " + reply.enhanced;
        std::string text = reply.text;
        std::replace(text.begin(), text.end(), '\n', ' ');
        return text.empty() ? what : what + " " + text;
      }()),
      command_(std::move(command)), reply_(std::move(reply)) {}

ClientIOError::ClientIOError(const std::string& what, bool timed_out)
    : std::runtime_error(what), timed_out_(timed_out) {}

// accepted - in SMTP one data reply answers for every recipient; in LMTP there is one per
// recipient accepted at RCPT, in order (RFC 2033 §4.2). A refused DATA is a single reply too.
bool SendResult::accepted(std::size_t i) const {
  auto taken = [](const Reply& r) { return r.code / 100 == 2; };
  if (i >= rcpt.size() || !taken(rcpt[i]) || data.empty()) return false;
  if (data.size() == 1) return taken(data[0]);
  std::size_t before = std::size_t(std::count_if(rcpt.begin(), rcpt.begin() + long(i), taken));
  return before < data.size() && taken(data[before]);
}

// ---- the reply parser (RFC 5321 §4.2) --------------------------------------------------------

namespace {

// reply_line_code - the code of a reply line "DDD", "DDD text" or "DDD-text" (RFC 5321 §4.2.1:
// reply-code [ SP textstring ] CRLF), 2xx to 5xx; -1 for anything else.
int reply_line_code(std::string_view line) {
  if (line.size() < 3 || (line.size() > 3 && line[3] != ' ' && line[3] != '-')) return -1;
  for (char c : line.substr(0, 3))
    if (!is_digit(static_cast<unsigned char>(c))) return -1;
  int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
  return code >= 200 && code <= 599 ? code : -1;
}

// split_enhanced - take an RFC 3463 enhanced code of the reply's class off the front of `text`
// (RFC 2034 §4 puts it first on every line); "" when the text does not start with one.
std::string split_enhanced(std::string_view& text, int code) {
  std::size_t space = text.find(' ');
  std::string first(text.substr(0, space));
  if (!is_valid_enhanced_code(first, code)) return "";
  text.remove_prefix(space == std::string_view::npos ? text.size() : space + 1);
  return first;
}

} // namespace

ReplyParse ReplyParser::parse(std::string_view bytes) {
  ReplyParse out;
  auto invalid = [&](std::string why) {
    out.status = ReplyParse::Status::invalid;
    out.error = std::move(why);
    return out;
  };
  for (;;) {
    std::string_view rest = bytes.substr(std::min(scanned_, bytes.size()));
    // Search no further than a line may reach, so a never-ending line costs a bounded scan.
    std::size_t lf = rest.substr(0, max_client_reply_line_bytes).find('\n');
    if (lf == std::string_view::npos) {
      if (rest.size() >= max_client_reply_line_bytes)
        return invalid("a reply line longer than " + std::to_string(max_client_reply_line_bytes) +
                       " octets");
      return out; // need_more
    }
    std::string_view line = rest.substr(0, lf);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    int code = reply_line_code(line);
    if (code < 0) return invalid("not a reply line: \"" + sanitize_for_header(line, 80) + "\"");
    if (lines_ > 0 && code != reply_.code)
      return invalid("the lines of one reply carry different codes (" +
                     std::to_string(reply_.code) + ", " + std::to_string(code) + ")");
    bool last = line.size() == 3 || line[3] == ' ';
    std::string_view text = line.size() > 4 ? line.substr(4) : std::string_view();
    std::string enhanced = split_enhanced(text, code);
    if (reply_.enhanced.empty()) reply_.enhanced = enhanced;
    reply_.code = code;
    if (lines_ > 0) reply_.text += '\n';
    reply_.text.append(text);
    scanned_ += lf + 1;
    ++lines_;
    if (last) {
      out.status = ReplyParse::Status::complete;
      out.reply = reply_;
      out.length = scanned_;
      return out;
    }
    if (lines_ >= max_client_reply_lines)
      return invalid("a reply of more than " + std::to_string(max_client_reply_lines) + " lines");
  }
}

ReplyParse parse_reply(std::string_view bytes) {
  return ReplyParser().parse(bytes);
}

// ---- message content ---------------------------------------------------------------------------

namespace {

// crlf_content - `message` with every line end CRLF: CRLF stays, a bare CR and a bare LF each
// become CRLF, and a last line without one gets it (RFC 5321 §2.3.8: bare CR and LF must not be
// sent; a smuggled "\n.\n" can then only be content). With `dot_stuff`, a line starting with
// "." gets another (RFC 5321 §4.5.2) and the end-of-data line ".\r\n" follows.
std::string crlf_content(std::string_view message, bool dot_stuff) {
  std::string out;
  out.reserve(message.size() + message.size() / 32 + 8);
  bool line_start = true;
  for (std::size_t i = 0; i < message.size(); ++i) {
    char c = message[i];
    if (c == '\r' || c == '\n') {
      out += "\r\n";
      if (c == '\r' && i + 1 < message.size() && message[i + 1] == '\n') ++i;
      line_start = true;
      continue;
    }
    if (line_start && dot_stuff && c == '.') out += '.';
    out += c;
    line_start = false;
  }
  if (!line_start) out += "\r\n";
  if (dot_stuff) out += ".\r\n";
  return out;
}

// has_line_break - a CR, LF or NUL in text that goes into a command line, where it would end
// the command early and start another (command injection).
bool has_line_break(std::string_view text) {
  return text.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos;
}

// checked_path - the address as it goes between the brackets of MAIL FROM or RCPT TO: "" (the
// null reverse-path) for a sender, "Postmaster" for a recipient (RFC 5321 §4.1.1.3), else a
// mailbox the server's own parser accepts. Anything else can never be sent: invalid_argument.
std::string checked_path(std::string_view address, bool sender) {
  if (address.size() >= 2 && address.front() == '<' && address.back() == '>')
    address = address.substr(1, address.size() - 2);
  bool special = sender ? address.empty() : iequals(address, "postmaster");
  if (!has_line_break(address) && (special || parse_mailbox(address))) return std::string(address);
  throw std::invalid_argument("smtpd: Client: not a valid " +
                              std::string(sender ? "sender" : "recipient") + " address: \"" +
                              sanitize_for_header(address, 100) + "\"");
}

// not_offered - the local refusal of a request the server did not advertise: nothing is sent.
ClientError not_offered(const std::string& command, int code, const std::string& enhanced,
                        const std::string& what) {
  return ClientError(command, Reply(code, enhanced, what + " (not sent)"));
}

// SigpipeGuard - OpenSSL writes with write(), which raises SIGPIPE when the server has gone:
// while one lives, SIGPIPE is blocked on this thread, and one it raised is taken back, so the
// failure comes back as an error instead of killing the program (plain sockets use
// MSG_NOSIGNAL instead).
class SigpipeGuard {
public:
  explicit SigpipeGuard(bool active) : active_(active) {
    if (!active_) return;
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
    was_pending_ = pending();
  }

  ~SigpipeGuard() {
    if (!active_) return;
    if (!was_pending_ && pending()) {
      timespec zero{};
      sigtimedwait(&pipe_, nullptr, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }

  SigpipeGuard(const SigpipeGuard&) = delete;
  SigpipeGuard& operator=(const SigpipeGuard&) = delete;

private:
  static bool pending() {
    sigset_t set;
    sigemptyset(&set);
    return sigpending(&set) == 0 && sigismember(&set, SIGPIPE) == 1;
  }

  bool active_;
  bool was_pending_ = false;
  sigset_t pipe_{}, old_{};
};

// connect_unix - a Unix-domain stream socket connected to `path`, non-blocking.
int connect_unix(const std::string& path) {
  sockaddr_un address{};
  if (path.empty() || path.size() >= sizeof address.sun_path)
    throw std::invalid_argument("smtpd: Client: bad Unix socket path \"" + path + "\"");
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) throw ClientIOError("cannot create a socket: " + std::string(std::strerror(errno)));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    int error = errno;
    ::close(fd);
    throw ClientIOError("cannot connect to unix:" + path + ": " + std::strerror(error));
  }
  return fd;
}

// connect_one - a non-blocking TCP connect to one resolved address within `timeout`: the
// socket, or -1 with `error` (and `timed_out`) set.
int connect_one(const addrinfo& a, std::chrono::milliseconds timeout, std::string& error,
                bool& timed_out) {
  int fd = ::socket(a.ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, a.ai_protocol);
  if (fd < 0) {
    error = std::strerror(errno);
    return -1;
  }
  int rc = ::connect(fd, a.ai_addr, a.ai_addrlen);
  if (rc != 0 && errno == EINPROGRESS) {
    ReadResult ready = wait_for(fd, POLLOUT, timeout, -1);
    int so_error = 0;
    socklen_t length = sizeof so_error;
    if (ready == ReadResult::timeout) {
      timed_out = true;
      so_error = ETIMEDOUT;
    } else if (ready != ReadResult::data ||
               ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &length) != 0) {
      so_error = so_error != 0 ? so_error : EIO;
    }
    rc = so_error == 0 ? 0 : -1;
    errno = so_error;
  }
  if (rc != 0) {
    error = std::strerror(errno);
    ::close(fd);
    return -1;
  }
  int on = 1; // we write whole commands and bursts: Nagle's delay would only add latency
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  return fd;
}

// connect_tcp - resolve host:port and connect to each address in turn (RFC 5321 §5.1: try
// the addresses of a host one after another), each within `timeout`.
int connect_tcp(const std::string& host, const std::string& port,
                std::chrono::milliseconds timeout) {
  addrinfo hints{}, *list = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &list);
  if (rc != 0) throw ClientIOError("cannot resolve \"" + host + "\": " + gai_strerror(rc));
  std::string error = "no address";
  bool timed_out = false, all_timed_out = true;
  int fd = -1;
  for (addrinfo* a = list; a != nullptr && fd < 0; a = a->ai_next) {
    timed_out = false;
    fd = connect_one(*a, timeout, error, timed_out);
    all_timed_out = all_timed_out && timed_out;
  }
  freeaddrinfo(list);
  if (fd < 0)
    throw ClientIOError("cannot connect to " + host + " port " + port + ": " + error,
                        all_timed_out);
  return fd;
}

#ifndef SMTPD_NO_TLS

// is_ip_literal - a numeric IPv4 or IPv6 address (TLS then checks an IP SAN and sends no SNI).
bool is_ip_literal(const std::string& host) {
  unsigned char bytes[16];
  return inet_pton(AF_INET, host.c_str(), bytes) == 1 ||
         inet_pton(AF_INET6, host.c_str(), bytes) == 1;
}

// make_client_tls_context - a client SSL_CTX: TLS 1.2 at least (tls_min_version), no
// compression or renegotiation, and with tls_verify the server's chain checked against
// tls_ca_file or the system's store.
TlsContext make_client_tls_context(const ClientOptions& o) {
  ERR_clear_error();
  TlsContext ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
  if (!ctx) throw ClientIOError("cannot create a TLS context: " + openssl_errors());
  SSL_CTX* c = ctx.get();
  SSL_CTX_set_min_proto_version(c,
                                o.tls_min_version == "TLSv1.3" ? TLS1_3_VERSION : TLS1_2_VERSION);
  SSL_CTX_set_options(c, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  if (o.tls_verify) {
    bool loaded = o.tls_ca_file.empty()
                      ? SSL_CTX_set_default_verify_paths(c) == 1
                      : SSL_CTX_load_verify_locations(c, o.tls_ca_file.c_str(), nullptr) == 1;
    if (!loaded)
      throw ClientIOError("cannot load the CAs " +
                          (o.tls_ca_file.empty() ? "of the system" : o.tls_ca_file) + ": " +
                          openssl_errors());
  }
  return ctx;
}

// handshake_failure - why SSL_connect failed, in words: the certificate check first.
std::string handshake_failure(SSL* ssl, bool verify) {
  long verified = SSL_get_verify_result(ssl);
  if (verify && verified != X509_V_OK)
    return std::string("certificate verification failed: ") +
           X509_verify_cert_error_string(verified);
  if (ERR_peek_error() == 0) return "the server closed the connection";
  return openssl_errors();
}

// client_handshake - the client side of a TLS handshake on `fd` within `timeout`: SNI with
// `name` (not for an IP literal, RFC 6066 §3), and with `verify` the chain and the name
// checked (RFC 6125: a DNS name against the DNS SANs, an IP literal against the IP SANs).
std::unique_ptr<Transport> client_handshake(int fd, const TlsContext& context,
                                            const std::string& name, bool verify,
                                            std::chrono::milliseconds timeout) {
  ERR_clear_error();
  SSL* ssl = SSL_new(context.get());
  if (ssl == nullptr) throw ClientIOError("cannot start TLS: " + openssl_errors());
  auto conn = std::make_unique<TlsConn>(fd, ssl); // frees ssl on every path out
  bool ip = is_ip_literal(name);
  if (SSL_set_fd(ssl, fd) != 1 ||
      (!ip && !name.empty() && SSL_set_tlsext_host_name(ssl, name.c_str()) != 1))
    throw ClientIOError("cannot start TLS: " + openssl_errors());
  if (verify) {
    if (name.empty())
      throw std::invalid_argument("smtpd: Client: verifying TLS needs a server name: set "
                                  "tls_server_name (or turn tls_verify off)");
    bool named = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name.c_str()) == 1
                    : SSL_set1_host(ssl, name.c_str()) == 1;
    if (!named) throw ClientIOError("cannot check the TLS name \"" + name + "\"");
    SSL_set_verify(ssl, SSL_VERIFY_PEER, nullptr);
  }
  SigpipeGuard guard(true);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    ERR_clear_error();
    int rc = SSL_connect(ssl);
    if (rc == 1) return conn;
    int code = SSL_get_error(ssl, rc);
    if (code != SSL_ERROR_WANT_READ && code != SSL_ERROR_WANT_WRITE)
      throw ClientIOError("TLS handshake with " + (name.empty() ? "the server" : name) +
                          " failed: " + handshake_failure(ssl, verify));
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    short events = code == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
    if (left.count() <= 0 || wait_for(fd, events, left, -1) != ReadResult::data)
      throw ClientIOError("TLS handshake timed out", true);
  }
}

#else // SMTPD_NO_TLS: TLS asked of the client fails at run time, as the server's options do.

TlsContext make_client_tls_context(const ClientOptions&) {
  throw ClientIOError("smtpd: built with SMTPD_NO_TLS: the client cannot use TLS");
}

std::unique_ptr<Transport> client_handshake(int, const TlsContext&, const std::string&, bool,
                                            std::chrono::milliseconds) {
  throw ClientIOError("smtpd: built with SMTPD_NO_TLS: the client cannot use TLS");
}

#endif // SMTPD_NO_TLS

// check_client_options - what can never work is refused at construction: a timeout of zero or
// less, no chunk size, an unknown minimum TLS version.
void check_client_options(const ClientOptions& o) {
  for (auto t : {o.connect_timeout, o.greeting_timeout, o.command_timeout, o.mail_timeout,
                 o.rcpt_timeout, o.data_timeout, o.block_timeout, o.final_timeout})
    if (t.count() <= 0) throw std::invalid_argument("smtpd: Client: timeouts must be positive");
  if (o.bdat_chunk_bytes == 0)
    throw std::invalid_argument("smtpd: Client: bdat_chunk_bytes must be positive");
  if (o.tls_min_version != "TLSv1.2" && o.tls_min_version != "TLSv1.3")
    throw std::invalid_argument("smtpd: Client: tls_min_version must be TLSv1.2 or TLSv1.3");
  if (has_line_break(o.helo_name) || o.helo_name.find(' ') != std::string::npos)
    throw std::invalid_argument("smtpd: Client: helo_name must be one word");
}

// DataReplies - what the data phase produced: the replies, and whether the DATA or BDAT
// command itself was refused (one reply then, not one per recipient).
struct DataReplies {
  std::vector<Reply> replies;
  bool command_refused = false;
};

} // namespace

// ---- the connection ---------------------------------------------------------------------------

struct Client::Impl {
  using ms = std::chrono::milliseconds;

  ClientOptions options;
  std::string host; // from addr: the TLS name unless tls_server_name says otherwise
  int fd = -1;
  std::unique_ptr<Transport> conn;
  TlsContext tls_context;
  bool tls = false;
  std::string received; // bytes read and not yet taken by a reply
  ReplyParser parser;
  Reply greeting;
  std::map<std::string, std::string> extensions; // EHLO keyword (upper case) -> parameters
  std::size_t accepted = 0; // recipients accepted since MAIL: LMTP's replies after the data
  bool binarymime = false;  // the transaction's MAIL said BODY=BINARYMIME
  std::string data_verb = "DATA";

  ~Impl() { close(); }

  // close - end the connection (a TLS close_notify first); no QUIT.
  void close() {
    if (conn && tls) {
      SigpipeGuard guard(true);
      conn->close_gracefully();
    }
    conn.reset();
    if (fd >= 0) ::close(fd);
    fd = -1;
  }

  // connect - "unix:/path", or host:port / [v6]:port through split_host_port (section 8).
  void connect(const std::string& addr) {
    if (addr.rfind("unix:", 0) == 0) {
      fd = connect_unix(addr.substr(5));
    } else {
      std::string port;
      split_host_port(addr, host, port);
      fd = connect_tcp(host, port, options.connect_timeout);
    }
    conn = std::make_unique<PlainConn>(fd);
  }

  // start_tls - the handshake over the connected socket; the plain transport is dropped.
  void start_tls() {
    if (!tls_context) tls_context = make_client_tls_context(options);
    std::string name = options.tls_server_name.empty() ? host : options.tls_server_name;
    conn = client_handshake(fd, tls_context, name, options.tls_verify, options.command_timeout);
    tls = true;
  }

  // fail - the connection is of no more use: close it and throw.
  [[noreturn]] void fail(const std::string& what, bool timed_out = false) {
    close();
    throw ClientIOError(what, timed_out);
  }

  // write - send every byte; each wait for the server to take more is bounded by `timeout`.
  void write(std::string_view bytes, ms timeout, const std::string& what) {
    if (!conn) throw ClientIOError(what + ": the connection is closed");
    bool sent;
    {
      SigpipeGuard guard(tls);
      sent = conn->write_all(bytes, timeout);
    }
    if (!sent) fail(what + ": cannot send: the server closed the connection or stopped reading");
  }

  // read_reply - one whole reply within `timeout` from now: one deadline for the reply, not
  // for each read, so a server that drips a byte at a time still times out.
  Reply read_reply(const std::string& what, ms timeout) {
    if (!conn) throw ClientIOError(what + ": the connection is closed");
    auto deadline = std::chrono::steady_clock::now() + timeout;
    parser.reset();
    for (;;) {
      ReplyParse parsed = parser.parse(received);
      if (parsed.status == ReplyParse::Status::complete) {
        received.erase(0, parsed.length);
        return parsed.reply;
      }
      if (parsed.status == ReplyParse::Status::invalid)
        fail(what + ": malformed reply: " + parsed.error);
      auto left = std::chrono::duration_cast<ms>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0)
        fail(what + ": no complete reply within " + std::to_string(timeout.count()) + " ms", true);
      char buf[16384];
      std::size_t got = 0;
      ReadResult result;
      {
        SigpipeGuard guard(tls);
        result = conn->read_some(buf, sizeof buf, got, left, -1);
      }
      if (result == ReadResult::data) {
        received.append(buf, got);
      } else if (result == ReadResult::closed) {
        fail(what + ": the server closed the connection");
      } else if (result != ReadResult::timeout) {
        fail(what + ": the connection failed: " + std::string(std::strerror(errno)));
      }
    }
  }

  // transact - one command line and its reply.
  Reply transact(const std::string& what, const std::string& line, ms timeout) {
    write(line + "\r\n", timeout, what);
    return read_reply(what, timeout);
  }

  // check - a refusal becomes a ClientError; after a 421 the server closes the channel (RFC
  // 5321 §3.8), so do we.
  const Reply& check(const std::string& what, const Reply& reply) {
    if (reply.code == 421) close();
    if (reply.code >= 400) throw ClientError(what, reply);
    return reply;
  }

  bool has(std::string_view keyword) const { return extensions.count(upper(keyword)) > 0; }

  // parse_extensions - the EHLO/LHLO reply's lines after the first, each a keyword and its
  // parameters (RFC 5321 §4.1.1.1: ehlo-line = ehlo-keyword *( SP ehlo-param )).
  void parse_extensions(const Reply& reply) {
    extensions.clear();
    std::string_view text = reply.text;
    std::size_t nl = text.find('\n');
    while (nl != std::string_view::npos) {
      text.remove_prefix(nl + 1);
      nl = text.find('\n');
      std::string_view line = trim_trailing_spaces(text.substr(0, nl));
      std::size_t space = line.find(' ');
      std::string keyword = upper(line.substr(0, space));
      std::string_view params = space == std::string_view::npos ? "" : line.substr(space + 1);
      if (!keyword.empty()) extensions.emplace(keyword, std::string(skip_spaces(params)));
    }
  }

  // size_limit - SIZE's parameter (RFC 1870 §4): the largest message, 0 when not given.
  uint64_t size_limit() const {
    auto found = extensions.find("SIZE");
    uint64_t limit = 0;
    if (found == extensions.end() || !parse_size(found->second, limit)) return 0;
    return limit;
  }

  // mail_line - MAIL FROM with the parameters asked for, each only when its extension was
  // advertised; otherwise a local ClientError before anything is sent.
  std::string mail_line(const std::string& from, const MailOptions& o) {
    std::string line = "MAIL FROM:<" + checked_path(from, true) + ">";
    auto need = [&](const char* keyword, int code, const char* enhanced, const std::string& what) {
      if (!has(keyword)) throw not_offered("MAIL", code, enhanced, what);
    };
    if (o.size > 0 && has("SIZE")) { // RFC 1870 §6: a size over the limit is not sent at all
      uint64_t limit = size_limit();
      if (limit > 0 && o.size > limit)
        throw not_offered("MAIL", 552, "5.3.4",
                          "message size " + std::to_string(o.size) +
                              " exceeds the server's limit of " + std::to_string(limit));
      line += " SIZE=" + std::to_string(o.size);
    }
    if (o.body_8bit && o.binarymime)
      throw std::invalid_argument("smtpd: Client: BODY is 8BITMIME or BINARYMIME, not both");
    if (o.binarymime) { // RFC 3030 §3: BINARYMIME needs CHUNKING too
      need("BINARYMIME", 554, "5.6.3", "BODY=BINARYMIME: BINARYMIME is not offered");
      need("CHUNKING", 554, "5.6.3", "BODY=BINARYMIME: CHUNKING is not offered");
      line += " BODY=BINARYMIME";
    } else if (o.body_8bit) { // RFC 6152 §3
      need("8BITMIME", 554, "5.6.3", "BODY=8BITMIME: 8BITMIME is not offered");
      line += " BODY=8BITMIME";
    }
    if (o.smtputf8) { // RFC 6531 §3.4
      need("SMTPUTF8", 553, "5.6.7", "SMTPUTF8 is not offered");
      line += " SMTPUTF8";
    }
    if (!o.ret.empty()) { // RFC 3461 §4.3
      std::string ret = upper(o.ret);
      if (ret != "FULL" && ret != "HDRS")
        throw std::invalid_argument("smtpd: Client: RET must be FULL or HDRS");
      need("DSN", 555, "5.5.4", "RET: DSN is not offered");
      line += " RET=" + ret;
    }
    if (!o.envid.empty()) { // RFC 3461 §4.4: xtext, at most 100 characters
      std::string envid = encode_xtext(o.envid);
      if (envid.size() > 100)
        throw std::invalid_argument("smtpd: Client: ENVID is longer than 100 characters");
      need("DSN", 555, "5.5.4", "ENVID: DSN is not offered");
      line += " ENVID=" + envid;
    }
    if (o.requiretls) { // RFC 8689 §4.1: only over TLS, to a server that offers it
      if (!tls || !has("REQUIRETLS"))
        throw not_offered("MAIL", 550, "5.7.30", "REQUIRETLS is not offered over this session");
      line += " REQUIRETLS";
    }
    if (!o.auth.empty()) { // RFC 4954 §5
      need("AUTH", 555, "5.5.4", "AUTH=: AUTH is not offered");
      line += " AUTH=" + (o.auth == "<>" ? o.auth : encode_xtext(o.auth));
    }
    return line;
  }

  // rcpt_line - RCPT TO with NOTIFY and ORCPT (RFC 3461 §4.1, §4.2) when DSN was advertised.
  std::string rcpt_line(const std::string& to, const RcptOptions& o) {
    std::string line = "RCPT TO:<" + checked_path(to, false) + ">";
    bool dsn_asked = !o.notify.empty() || !o.orcpt.empty();
    if (dsn_asked && !has("DSN")) throw not_offered("RCPT", 555, "5.5.4", "DSN is not offered");
    if (!o.notify.empty()) {
      std::string words;
      for (const std::string& word : o.notify)
        words += (words.empty() ? "" : ",") + upper(word);
      std::vector<std::string> parsed;
      if (!parse_notify(words, parsed))
        throw std::invalid_argument("smtpd: Client: NOTIFY must be NEVER, or some of SUCCESS, "
                                    "FAILURE, DELAY");
      line += " NOTIFY=" + words;
    }
    if (!o.orcpt.empty()) {
      std::string value =
          (o.orcpt_type.empty() ? "rfc822" : o.orcpt_type) + ";" + encode_xtext(o.orcpt);
      std::string type, address;
      if (!parse_orcpt(value, type, address))
        throw std::invalid_argument("smtpd: Client: bad ORCPT (type or length)");
      line += " ORCPT=" + value;
    }
    return line;
  }

  bool use_bdat() const { return binarymime || (options.prefer_chunking && has("CHUNKING")); }

  // read_replies - `count` replies, each within `timeout`.
  std::vector<Reply> read_replies(const std::string& what, std::size_t count, ms timeout) {
    std::vector<Reply> replies;
    for (std::size_t i = 0; i < count; ++i)
      replies.push_back(read_reply(what, timeout));
    return replies;
  }

  // final_replies - after the end of the data: one reply in SMTP, one per accepted recipient
  // in LMTP (RFC 2033 §4.2).
  std::vector<Reply> final_replies() {
    std::size_t count = options.lmtp ? std::max<std::size_t>(accepted, 1) : 1;
    std::vector<Reply> replies = read_replies(data_verb, count, options.final_timeout);
    accepted = 0;
    return replies;
  }

  // send_dot_content - the message dot-stuffed, CRLF throughout, then ".\r\n" (after a 354).
  void send_dot_content(std::string_view message) {
    write(crlf_content(message, true), options.block_timeout, "DATA");
  }

  // bdat - the message in chunks of bdat_chunk_bytes, the last one "BDAT n LAST" (RFC 3030
  // §2), each waiting for its 250; BINARYMIME content goes as it is, other content with CRLF
  // line ends. A refused chunk fails the transaction: its reply is the only one.
  DataReplies bdat(std::string_view message) {
    data_verb = "BDAT";
    std::string converted;
    if (!binarymime) message = converted = crlf_content(message, false);
    std::size_t pos = 0;
    for (;;) {
      std::size_t n = std::min(options.bdat_chunk_bytes, message.size() - pos);
      bool last = pos + n == message.size();
      write("BDAT " + std::to_string(n) + (last ? " LAST" : "") + "\r\n", options.block_timeout,
            "BDAT");
      write(message.substr(pos, n), options.block_timeout, "BDAT");
      pos += n;
      if (last) break;
      Reply r = read_reply("BDAT", options.data_timeout);
      if (r.code / 100 != 2) return {{r}, true};
    }
    std::vector<Reply> replies = final_replies();
    bool refused = !options.lmtp && replies[0].code / 100 != 2;
    return {replies, refused};
  }

  // transfer - the data phase by DATA (RFC 5321 §4.1.1.4) or BDAT, with its replies.
  DataReplies transfer(std::string_view message) {
    if (use_bdat()) return bdat(message);
    data_verb = "DATA";
    Reply go = transact("DATA", "DATA", options.data_timeout);
    if (go.code != 354) return {{go}, true};
    send_dot_content(message);
    return {final_replies(), false};
  }

  // reset_quietly - RSET after a transaction that went nowhere, whatever the server answers.
  void reset_quietly() {
    transact("RSET", "RSET", options.command_timeout);
    accepted = 0;
  }

  // send - the whole transaction. With PIPELINING (RFC 2920 §3.1) MAIL, every RCPT and, for
  // DATA, the DATA command go in one write and the replies are read in order; the content only
  // after the 354. `all_or_nothing` (SendMail): the data only when every recipient was taken,
  // so DATA waits for the RCPT replies.
  SendResult send(const std::string& from, const std::vector<std::string>& to,
                  std::string_view message, const MailOptions& mail,
                  const std::vector<RcptOptions>& rcpt, bool all_or_nothing) {
    if (rcpt.size() > to.size())
      throw std::invalid_argument("smtpd: Client: more RcptOptions than recipients");
    SendResult result;
    std::vector<std::string> lines;
    try { // every local check first: nothing is sent when one fails
      lines.push_back(mail_line(from, mail));
      for (std::size_t i = 0; i < to.size(); ++i)
        lines.push_back(rcpt_line(to[i], i < rcpt.size() ? rcpt[i] : RcptOptions()));
    } catch (const ClientError& refused) {
      result.mail = refused.reply();
      return result;
    }
    binarymime = mail.binarymime;
    accepted = 0;
    bool pipelined = has("PIPELINING");
    bool data_in_burst = pipelined && !use_bdat() && !all_or_nothing && !to.empty();
    if (pipelined) {
      std::string burst;
      for (const std::string& line : lines)
        burst += line + "\r\n";
      if (data_in_burst) burst += "DATA\r\n";
      write(burst, options.mail_timeout, "MAIL");
    }
    auto next = [&](std::size_t i, const std::string& what, ms timeout) {
      if (!pipelined) write(lines[i] + "\r\n", timeout, what);
      return read_reply(what, timeout);
    };
    result.mail = next(0, "MAIL", options.mail_timeout);
    bool mail_taken = result.mail.code / 100 == 2;
    if (result.mail.code == 421) return closed(result);
    if (!mail_taken && !pipelined) return result;
    for (std::size_t i = 0; i < to.size(); ++i) {
      Reply r = next(i + 1, "RCPT", options.rcpt_timeout);
      if (mail_taken) result.rcpt.push_back(r);
      if (r.code == 421) return closed(result); // the rest never comes
      accepted += mail_taken && r.code / 100 == 2;
    }
    bool go = accepted > 0 && (!all_or_nothing || accepted == to.size());
    if (data_in_burst) return pipelined_data(result, message, mail_taken && go);
    if (!mail_taken) return result;
    if (!go) {
      reset_quietly();
      return result;
    }
    DataReplies data = transfer(message);
    result.data = data.replies;
    if (data.command_refused) end_transaction(result.data[0]);
    return result;
  }

  // end_transaction - after a refused DATA or BDAT the transaction may still be open at the
  // server: RSET it (RFC 3030 §2 asks so after a failed chunk), unless the 421 closed it all.
  void end_transaction(const Reply& refusal) {
    if (refusal.code == 421)
      close();
    else
      reset_quietly();
  }

  // pipelined_data - the reply to the DATA sent in the burst. Without a recipient a 354 is
  // answered with the end of data alone (RFC 2920 §3.1), and that reply is not the message's.
  SendResult& pipelined_data(SendResult& result, std::string_view message, bool go) {
    data_verb = "DATA";
    Reply reply = read_reply("DATA", options.data_timeout);
    if (reply.code == 421) {
      if (go) result.data = {reply};
      return closed(result);
    }
    if (!go) {
      if (reply.code == 354) {
        write(".\r\n", options.block_timeout, "DATA");
        read_reply("DATA", options.final_timeout);
      }
      if (result.mail.code / 100 == 2) reset_quietly();
      return result;
    }
    if (reply.code != 354) {
      result.data = {reply};
      end_transaction(reply);
      return result;
    }
    send_dot_content(message);
    result.data = final_replies();
    return result;
  }

  // closed - a 421 ends the session (RFC 5321 §3.8): no more replies will come.
  SendResult& closed(SendResult& result) {
    close();
    return result;
  }
};

// ---- the public calls --------------------------------------------------------------------------

Client::Client(const std::string& addr, ClientOptions options) : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  check_client_options(options);
  s.options = std::move(options);
  s.connect(addr);
  if (s.options.implicit_tls) s.start_tls(); // RFC 8314 §3.3: the greeting comes inside TLS
  s.greeting = s.read_reply("greeting", s.options.greeting_timeout);
  if (s.greeting.code != 220) {
    // RFC 5321 §3.1: after a 554 greeting the client should QUIT. No reply is awaited.
    if (s.greeting.code != 421) {
      try {
        s.write("QUIT\r\n", s.options.command_timeout, "QUIT");
      } catch (const ClientIOError&) {}
    }
    s.close();
    throw ClientError("greeting", s.greeting);
  }
}

Client::~Client() = default;

const Reply& Client::greeting() const {
  return impl_->greeting;
}

Reply Client::hello() {
  Impl& s = *impl_;
  std::string name = s.options.helo_name.empty() ? system_hostname() : s.options.helo_name;
  s.extensions.clear();
  if (s.options.lmtp) { // RFC 2033 §4.1: LHLO, never EHLO or HELO
    Reply reply = s.check("LHLO", s.transact("LHLO", "LHLO " + name, s.options.command_timeout));
    s.parse_extensions(reply);
    return reply;
  }
  Reply reply = s.transact("EHLO", "EHLO " + name, s.options.command_timeout);
  if (reply.code >= 500) // RFC 5321 §3.2: a server that does not know EHLO gets HELO
    return s.check("HELO", s.transact("HELO", "HELO " + name, s.options.command_timeout));
  s.check("EHLO", reply);
  s.parse_extensions(reply);
  return reply;
}

Reply Client::starttls() {
  Impl& s = *impl_;
  if (s.tls) throw not_offered("STARTTLS", 503, "5.5.1", "TLS is already active");
  if (!s.has("STARTTLS"))
    throw not_offered("STARTTLS", 530, "5.7.10", "STARTTLS is not offered by the server");
  s.check("STARTTLS", s.transact("STARTTLS", "STARTTLS", s.options.command_timeout));
  // RFC 3207 §4.2: nothing the server said before the handshake counts (a man in the middle
  // could have added it), and everything learnt from it is forgotten: EHLO again.
  s.received.clear();
  s.start_tls();
  return hello();
}

Reply Client::auth(const std::string& username, const std::string& password,
                   const std::string& mechanism) {
  Impl& s = *impl_;
  std::optional<std::string> offered = extension("AUTH");
  if (!offered) throw not_offered("AUTH", 503, "5.5.1", "AUTH is not offered by the server");
  std::string words = " " + upper(*offered) + " ";
  auto is_offered = [&](const std::string& m) { return words.find(" " + m + " ") != words.npos; };
  std::string chosen = upper(mechanism);
  for (const char* best : {"CRAM-MD5", "PLAIN", "LOGIN"}) // the password stays off the wire
    if (chosen.empty() && is_offered(best)) chosen = best;
  bool known = chosen == "CRAM-MD5" || chosen == "PLAIN" || chosen == "LOGIN";
  if (!known || !is_offered(chosen))
    throw not_offered("AUTH", 504, "5.5.4",
                      "AUTH " + (chosen.empty() ? std::string("(none we know)") : chosen) +
                          " is not offered by the server");
  auto timeout = s.options.command_timeout;
  // respond - answer a 334 challenge (RFC 4954 §4); any other reply ends the exchange.
  auto respond = [&](const Reply& challenge, const std::string& response) {
    if (challenge.code != 334) return challenge;
    return s.transact("AUTH", base64_encode(response), timeout);
  };
  Reply reply;
  if (chosen == "PLAIN") { // RFC 4616 §2: authzid NUL authcid NUL passwd, as initial response
    if (username.find('\0') != std::string::npos || password.find('\0') != std::string::npos)
      throw std::invalid_argument("smtpd: Client: AUTH PLAIN cannot carry a NUL");
    std::string message = std::string(1, '\0') + username + '\0' + password;
    reply = s.transact("AUTH", "AUTH PLAIN " + base64_encode(message), timeout);
  } else if (chosen == "LOGIN") { // the user name, then the password, each asked for
    reply = s.transact("AUTH", "AUTH LOGIN", timeout);
    reply = respond(reply, username);
    reply = respond(reply, password);
  } else { // RFC 2195 §2: user SP hex(HMAC-MD5(password, challenge))
    reply = s.transact("AUTH", "AUTH CRAM-MD5", timeout);
    if (reply.code == 334) {
      std::optional<std::string> challenge = base64_decode(reply.text);
      if (!challenge) {
        s.transact("AUTH", "*", timeout); // RFC 4954 §4: "*" cancels the exchange
        throw ClientIOError("AUTH: the CRAM-MD5 challenge is not base64");
      }
      reply = respond(reply, username + " " + hmac_md5_hex(password, *challenge));
    }
  }
  if (reply.code == 334) {
    s.transact("AUTH", "*", timeout);
    throw ClientIOError("AUTH: the server asked for more than " + chosen + " has to say");
  }
  return s.check("AUTH", reply);
}

bool Client::tls() const {
  return impl_->tls;
}

bool Client::has_extension(std::string_view keyword) const {
  return impl_->has(keyword);
}

std::optional<std::string> Client::extension(std::string_view keyword) const {
  auto found = impl_->extensions.find(upper(keyword));
  if (found == impl_->extensions.end()) return std::nullopt;
  return found->second;
}

Reply Client::mail(const std::string& from, const MailOptions& options) {
  Impl& s = *impl_;
  std::string line = s.mail_line(from, options);
  s.accepted = 0;
  s.binarymime = options.binarymime;
  return s.check("MAIL", s.transact("MAIL", line, s.options.mail_timeout));
}

Reply Client::rcpt(const std::string& to, const RcptOptions& options) {
  Impl& s = *impl_;
  Reply reply = s.transact("RCPT", s.rcpt_line(to, options), s.options.rcpt_timeout);
  s.accepted += reply.code / 100 == 2;
  return s.check("RCPT", reply);
}

Reply Client::data(std::string_view message) {
  Impl& s = *impl_;
  if (s.options.lmtp)
    throw std::logic_error("smtpd: Client::data in LMTP mode: use lmtp_data (a reply each)");
  DataReplies result = s.transfer(message);
  return s.check(s.data_verb, result.replies.at(0));
}

std::vector<Reply> Client::lmtp_data(std::string_view message) {
  Impl& s = *impl_;
  if (!s.options.lmtp) throw std::logic_error("smtpd: Client::lmtp_data needs ClientOptions::lmtp");
  DataReplies result = s.transfer(message);
  if (result.command_refused) s.check(s.data_verb, result.replies.at(0));
  return result.replies;
}

SendResult Client::send(const std::string& from, const std::vector<std::string>& to,
                        std::string_view message, const MailOptions& mail,
                        const std::vector<RcptOptions>& rcpt) {
  return impl_->send(from, to, message, mail, rcpt, false);
}

Reply Client::verify(const std::string& address) {
  Impl& s = *impl_;
  if (has_line_break(address))
    throw std::invalid_argument("smtpd: Client: VRFY argument with a line break");
  return s.check("VRFY", s.transact("VRFY", "VRFY " + address, s.options.command_timeout));
}

Reply Client::noop() {
  return impl_->check("NOOP", impl_->transact("NOOP", "NOOP", impl_->options.command_timeout));
}

Reply Client::reset() {
  Impl& s = *impl_;
  s.accepted = 0;
  return s.check("RSET", s.transact("RSET", "RSET", s.options.command_timeout));
}

Reply Client::quit() {
  Impl& s = *impl_;
  Reply reply = s.transact("QUIT", "QUIT", s.options.command_timeout);
  s.close();
  return s.check("QUIT", reply);
}

SendResult Client::send_all_or_nothing(const std::string& from, const std::vector<std::string>& to,
                                       std::string_view message, const MailOptions& mail) {
  return impl_->send(from, to, message, mail, {}, true);
}

// SendMail - the one call: each step's refusal is thrown, and the QUIT that ends a session is
// sent whatever happened (quietly: after a delivered message its failure changes nothing).
Reply SendMail(const std::string& addr, const std::string& from, const std::vector<std::string>& to,
               std::string_view message, const ClientOptions& options) {
  Client client(addr, options);
  auto quit_quietly = [&] {
    try {
      client.quit();
    } catch (const std::exception&) {}
  };
  SendResult result;
  try {
    client.hello();
    bool offered = client.has_extension("STARTTLS");
    if (options.require_tls || (options.starttls && offered)) client.starttls();
    if (!options.username.empty())
      client.auth(options.username, options.password, options.auth_mechanism);
    MailOptions mail = options.mail;
    if (mail.size == 0)
      mail.size = mail.binarymime ? message.size() : crlf_content(message, false).size();
    result = client.send_all_or_nothing(from, to, message, mail);
  } catch (const ClientError&) {
    quit_quietly();
    throw;
  }
  auto refused = [&](const char* what, const Reply& reply) {
    if (reply.code / 100 == 2) return;
    quit_quietly();
    throw ClientError(what, reply);
  };
  refused("MAIL", result.mail);
  for (const Reply& reply : result.rcpt)
    refused("RCPT", reply);
  if (result.data.empty()) throw ClientIOError("the data was not sent");
  for (const Reply& reply : result.data)
    refused(client.impl_->data_verb.c_str(), reply);
  quit_quietly();
  return result.data.back();
}

} // namespace smtpd
