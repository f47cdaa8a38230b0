// fuzz/parsers.cpp - fuzz target "parsers": the path and parameter parsers of MAIL FROM and
// RCPT TO (RFC 5321 §4.1.2, RFC 6531), reached the way a client reaches them: one fuzzed
// command line through a Protocol after HELO/EHLO.
//
// Input layout (the seeds in fuzz/corpus/parsers/ start with this byte):
//
//   byte 0  bit 0  strict
//           bit 1  EHLO (else HELO: no ESMTP parameters allowed)
//           bit 2  fuzz RCPT (after "MAIL FROM:<>", with " SMTPUTF8" when bit 3 and EHLO);
//                  else fuzz MAIL
//           bit 3  see bit 2
//           bit 4  the target writes the keyword: "MAIL FROM:" + bytes or "RCPT TO:" + bytes;
//                  else "MAIL " + bytes or "RCPT " + bytes
//           bit 5  DSN and BINARYMIME on (RFC 3461 RET, ENVID, NOTIFY, ORCPT; RFC 3030 BODY)
//   bytes 1.. the rest of the command line, cut at the first CR or LF and to fit in 512 octets
//
// Invariants checked:
//   - the reply is one line; for MAIL its code is 250, 501, 552, 553 or 555, for RCPT 250, 501,
//     553 or 555;
//   - on_mail / on_rcpt is called exactly when the reply is 250, once, and the envelope then
//     holds the same address;
//   - such an address is "" (MAIL only), "Postmaster" in any case (RCPT only), or
//     local-part "@" domain, where the local part is a dot-string of atext and UTF-8, or a
//     quoted string of printable ASCII and UTF-8, at most 64 octets, and the domain is letters,
//     digits, '-', '.' and UTF-8 or an address literal "[...]" of printable ASCII; so no control
//     character, and no '<', '>' or space outside quotes and brackets; the whole at most 256
//     octets; 8-bit only as well-formed UTF-8 and only with SMTPUTF8;
//   - the address parses again: "RCPT TO:<address>" in a fresh strict session gives 250 and the
//     same address (when "<address>" fits in the 256-octet path limit);
//   - the parameters on_mail sees have upper-case keywords of letters, digits and '-', values of
//     %d33-126 but '=' (or UTF-8 with SMTPUTF8); on_rcpt sees none without DSN, and only NOTIFY
//     and ORCPT with it;
//   - with DSN, what the envelope holds agrees with an xtext decoder written here (RFC 3461
//     §4): ENVID decoded (at most 100 characters encoded), RET "FULL" or "HDRS", NOTIFY "NEVER"
//     alone or distinct words of SUCCESS, FAILURE, DELAY, ORCPT's type and decoded address;
//   - the public smtpd::parse_mailbox agrees with the server: an address a hook saw (but "" and
//     "Postmaster") parses, and its address() is that address, utf8 set exactly when it has
//     8-bit octets;
//   - smtpd::parse_mailbox of bytes 1.. as they are: when it gives a Mailbox, its parts have the
//     shape above (local part 1..64 octets, a domain or an address literal, not both), user()
//     holds no '+', domain_lower() no upper-case letter, and address() parses again to the
//     same parts, bare and in angle brackets, and is accepted by a fresh RCPT TO.
#include "fuzz/fuzz.hpp"
#include "smtpd.hpp"

#include <cctype>
#include <optional>

namespace {

struct Seen {
  int calls = 0;
  std::string address;
  smtpd::Params params;
};

// run - a session: `lines` sent one by one; returns the replies to the last one.
std::vector<fuzz::ReplyLine> run(smtpd::Protocol& p, const std::vector<std::string>& lines,
                                 std::string& out) {
  for (const std::string& line : lines) {
    p.take_output();
    p.feed(line);
  }
  out = p.take_output();
  return fuzz::parse_replies(out);
}

bool is_atext(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         std::string_view("!#$%&'*+-/=?^_`{|}~").find(char(c)) != std::string_view::npos;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i])))
      return false;
  return true;
}

// check_mailbox - the shape of an accepted address, checked independently of the library.
void check_mailbox(const std::string& a, bool smtputf8) {
  FUZZ_CHECK(a.size() <= 256);
  for (unsigned char c : a)
    FUZZ_CHECK(c >= 0x20 && c != 0x7F);
  bool has_8bit = false;
  for (unsigned char c : a)
    has_8bit |= c >= 0x80;
  if (has_8bit) FUZZ_CHECK(smtputf8 && fuzz::is_utf8(a));
  if (iequals(a, "postmaster")) return;
  size_t at;
  if (!a.empty() && a[0] == '"') { // quoted string: up to the unescaped closing quote
    size_t i = 1;
    while (i < a.size() && a[i] != '"')
      i += a[i] == '\\' ? 2 : 1;
    FUZZ_CHECK(i < a.size());
    at = i + 1;
  } else {
    at = a.find('@');
    FUZZ_CHECK(at != std::string::npos && at > 0);
    for (size_t i = 0; i < at; ++i) {
      unsigned char c = static_cast<unsigned char>(a[i]);
      FUZZ_CHECK(is_atext(c) || c == '.' || c >= 0x80);
    }
    FUZZ_CHECK(a[0] != '.' && a[at - 1] != '.' && a.substr(0, at).find("..") == std::string::npos);
  }
  FUZZ_CHECK(at <= 64);
  FUZZ_CHECK(at < a.size() && a[at] == '@');
  std::string_view domain = std::string_view(a).substr(at + 1);
  FUZZ_CHECK(!domain.empty());
  if (domain[0] == '[') {
    FUZZ_CHECK(domain.back() == ']' && domain.find(']') == domain.size() - 1);
    for (unsigned char c : domain)
      FUZZ_CHECK(c > 0x20 && c < 0x7F);
  } else {
    FUZZ_CHECK(domain.size() <= 255);
    for (unsigned char c : domain)
      FUZZ_CHECK(is_atext(c) ? (std::isalnum(c) || c == '-') : (c == '.' || c >= 0x80));
    size_t label = 0; // each label non-empty, neither starting nor ending with '-'
    for (size_t i = 0; i <= domain.size(); ++i) {
      if (i < domain.size() && domain[i] != '.') continue;
      FUZZ_CHECK(i > label && domain[label] != '-' && domain[i - 1] != '-');
      label = i + 1;
    }
  }
}

void check_params(const smtpd::Params& params, bool utf8_ok) {
  for (const auto& [keyword, value] : params) {
    FUZZ_CHECK(!keyword.empty() && std::isalnum(static_cast<unsigned char>(keyword[0])));
    for (unsigned char c : keyword)
      FUZZ_CHECK((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-');
    for (unsigned char c : value)
      FUZZ_CHECK((c >= 33 && c <= 126 && c != '=') || (c >= 0x80 && utf8_ok));
    FUZZ_CHECK(fuzz::is_utf8(value));
  }
}

// xtext - RFC 3461 §4 decoding, written here independently: "+" and two upper-case hex digits
// is one octet; any other octet of "!".."~" but "+" and "=" stands for itself.
std::optional<std::string> xtext(std::string_view in) {
  std::string out;
  auto hex = [](char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 55 : -1;
  };
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '+') {
      if (i + 2 >= in.size() || hex(in[i + 1]) < 0 || hex(in[i + 2]) < 0) return std::nullopt;
      out += char(hex(in[i + 1]) * 16 + hex(in[i + 2]));
      i += 2;
    } else if (in[i] < '!' || in[i] > '~' || in[i] == '=') {
      return std::nullopt;
    } else {
      out += in[i];
    }
  }
  return out;
}

// param - the value of `keyword` in `params`, or nullopt.
std::optional<std::string> param(const smtpd::Params& params, std::string_view keyword) {
  for (const auto& [k, v] : params)
    if (k == keyword) return v;
  return std::nullopt;
}

// check_dsn_mail - the DSN values of an accepted MAIL, against the raw parameters.
void check_dsn_mail(const smtpd::MailOptions& m, const smtpd::Params& params) {
  std::optional<std::string> envid = param(params, "ENVID");
  FUZZ_CHECK(envid.has_value() != m.envid.empty());
  if (envid) FUZZ_CHECK(envid->size() <= 100 && xtext(*envid) == m.envid);
  FUZZ_CHECK(m.ret.empty() || m.ret == "FULL" || m.ret == "HDRS");
  FUZZ_CHECK(param(params, "RET").has_value() != m.ret.empty());
}

// check_dsn_rcpt - the DSN values of an accepted RCPT, against the raw parameters.
void check_dsn_rcpt(const smtpd::RcptOptions& r) {
  for (const auto& kv : r.params)
    FUZZ_CHECK(kv.first == "NOTIFY" || kv.first == "ORCPT");
  const std::vector<std::string>& n = r.notify;
  FUZZ_CHECK(param(r.params, "NOTIFY").has_value() != n.empty());
  for (size_t i = 0; i < n.size(); ++i) {
    FUZZ_CHECK(n[i] == "SUCCESS" || n[i] == "FAILURE" || n[i] == "DELAY" ||
               (n[i] == "NEVER" && n.size() == 1));
    for (size_t j = 0; j < i; ++j)
      FUZZ_CHECK(n[i] != n[j]);
  }
  std::optional<std::string> orcpt = param(r.params, "ORCPT");
  FUZZ_CHECK(orcpt.has_value() != r.orcpt.empty());
  if (!orcpt) return;
  size_t semi = orcpt->find(';');
  FUZZ_CHECK(semi != std::string::npos && orcpt->substr(0, semi) == r.orcpt_type);
  FUZZ_CHECK(xtext(orcpt->substr(semi + 1)) == r.orcpt);
}

// reparse - a fresh strict session must accept "<address>" as a recipient, unchanged.
void reparse(const std::string& address) {
  if (address.empty() || address.size() + 2 > 256) return;
  Seen seen;
  smtpd::Options o;
  o.hostname = "mx.example.org";
  o.strict = true;
  o.on_rcpt = [&seen](const smtpd::SessionInfo&, const std::string& to,
                      const smtpd::Params&) -> std::optional<smtpd::Reply> {
    ++seen.calls;
    seen.address = to;
    return std::nullopt;
  };
  smtpd::Protocol p(o, smtpd::SessionInfo{});
  std::string out;
  std::vector<fuzz::ReplyLine> lines = run(
      p, {"EHLO client.example\r\n", "MAIL FROM:<> SMTPUTF8\r\n", "RCPT TO:<" + address + ">\r\n"},
      out);
  FUZZ_CHECK(lines.size() == 1 && lines[0].code == 250);
  FUZZ_CHECK(seen.calls == 1 && seen.address == address);
}

// same_parts - two Mailboxes with equal fields.
bool same_parts(const smtpd::Mailbox& a, const smtpd::Mailbox& b) {
  return a.local == b.local && a.domain == b.domain && a.address_literal == b.address_literal &&
         a.utf8 == b.utf8;
}

// has_8bit - whether any octet is outside ASCII.
bool has_8bit(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x80) return true;
  return false;
}

// check_parsed_mailbox - the invariants of a Mailbox that smtpd::parse_mailbox returned.
void check_parsed_mailbox(const smtpd::Mailbox& box) {
  FUZZ_CHECK(!box.local.empty() && box.local.size() <= 64);
  FUZZ_CHECK(box.domain.empty() != box.address_literal.empty());
  if (!box.address_literal.empty())
    FUZZ_CHECK(box.address_literal.front() == '[' && box.address_literal.back() == ']');
  std::string address = box.address();
  FUZZ_CHECK(address == box.local + "@" + box.domain + box.address_literal);
  FUZZ_CHECK(box.utf8 == has_8bit(address));
  check_mailbox(address, true);
  FUZZ_CHECK(box.user().find('+') == std::string::npos && box.user().size() <= box.local.size());
  std::string lower = box.domain_lower();
  FUZZ_CHECK(lower.size() == box.domain.size() && iequals(lower, box.domain));
  for (unsigned char c : lower)
    FUZZ_CHECK(c < 'A' || c > 'Z');
  std::optional<smtpd::Mailbox> again = smtpd::parse_mailbox(address);
  FUZZ_CHECK(again && same_parts(*again, box));
  if (address.size() + 2 <= 256) {
    std::optional<smtpd::Mailbox> bracketed = smtpd::parse_mailbox("<" + address + ">");
    FUZZ_CHECK(bracketed && same_parts(*bracketed, box));
  }
  reparse(address);
}

// check_hook_address - an address a hook saw parses with smtpd::parse_mailbox, unchanged.
void check_hook_address(const std::string& address) {
  if (address.empty() || iequals(address, "postmaster")) return;
  std::optional<smtpd::Mailbox> box = smtpd::parse_mailbox(address);
  FUZZ_CHECK(box && box->address() == address && box->utf8 == has_8bit(address));
}

} // namespace

int fuzz_parsers(const uint8_t* data, size_t size) {
  fuzz::Bytes in{data, size};
  uint8_t flags = in.byte();
  bool strict = flags & 1, ehlo = flags & 2, rcpt = flags & 4, utf8_mail = (flags & 8) && ehlo;
  bool keyword = flags & 16, dsn = flags & 32;

  std::string_view arg = in.rest();
  arg = arg.substr(0, arg.find_first_of("\r\n"));
  if (std::optional<smtpd::Mailbox> box = smtpd::parse_mailbox(arg)) check_parsed_mailbox(*box);
  std::string line = rcpt ? (keyword ? "RCPT TO:" : "RCPT ") : (keyword ? "MAIL FROM:" : "MAIL ");
  line += std::string(arg.substr(0, 510 - line.size()));

  Seen mail, rcpt_seen;
  smtpd::Options o;
  o.hostname = "mx.example.org";
  o.strict = strict;
  o.max_message_bytes = 1000000;
  o.dsn = o.binarymime = dsn;
  o.on_mail = [&mail](const smtpd::SessionInfo&, const std::string& from,
                      const smtpd::Params& params) -> std::optional<smtpd::Reply> {
    ++mail.calls;
    mail.address = from;
    mail.params = params;
    return std::nullopt;
  };
  o.on_rcpt = [&rcpt_seen](const smtpd::SessionInfo&, const std::string& to,
                           const smtpd::Params& params) -> std::optional<smtpd::Reply> {
    ++rcpt_seen.calls;
    rcpt_seen.address = to;
    rcpt_seen.params = params;
    return std::nullopt;
  };
  smtpd::Protocol p(o, smtpd::SessionInfo{});
  std::vector<std::string> lines = {ehlo ? "EHLO client.example\r\n" : "HELO client.example\r\n"};
  if (rcpt) lines.push_back(utf8_mail ? "MAIL FROM:<> SMTPUTF8\r\n" : "MAIL FROM:<>\r\n");
  lines.push_back(line + "\r\n");
  std::string out;
  std::vector<fuzz::ReplyLine> replies = run(p, lines, out);
  FUZZ_CHECK(replies.size() == 1);
  int code = replies[0].code;
  if (!rcpt) {
    FUZZ_CHECK(code == 250 || code == 501 || code == 552 || code == 553 || code == 555);
    FUZZ_CHECK(mail.calls == (code == 250 ? 1 : 0));
    if (code != 250) return 0;
    bool smtputf8 = false;
    for (const auto& kv : mail.params)
      smtputf8 |= kv.first == "SMTPUTF8";
    FUZZ_CHECK(p.envelope().from == mail.address && p.envelope().smtputf8 == smtputf8);
    FUZZ_CHECK(!iequals(mail.address, "postmaster"));
    if (!ehlo) FUZZ_CHECK(mail.params.empty());
    if (!mail.address.empty()) check_mailbox(mail.address, smtputf8);
    check_params(mail.params, smtputf8);
    if (dsn) check_dsn_mail(p.envelope().mail, mail.params);
    check_hook_address(mail.address);
    reparse(mail.address);
  } else {
    FUZZ_CHECK(mail.calls == 1);
    FUZZ_CHECK(code == 250 || code == 501 || code == 553 || code == 555);
    FUZZ_CHECK(rcpt_seen.calls == (code == 250 ? 1 : 0));
    if (code != 250) return 0;
    FUZZ_CHECK(p.envelope().to.size() == 1 && p.envelope().to[0] == rcpt_seen.address);
    FUZZ_CHECK(!rcpt_seen.address.empty());
    if (!dsn) FUZZ_CHECK(rcpt_seen.params.empty());
    if (dsn) check_dsn_rcpt(p.envelope().rcpt.at(0));
    check_mailbox(rcpt_seen.address, utf8_mail);
    check_hook_address(rcpt_seen.address);
    reparse(rcpt_seen.address);
  }
  return 0;
}

SMTPD_FUZZ_ENTRY(fuzz_parsers)
