// fuzz/dns.cpp - fuzz target "dns": the DNS answer parser (smtpd::dns::parse_answer, RFC 1035
// §4.1 with name compression §4.1.4), which reads bytes from the network, and the DNS checks
// that act on its answers (FCrDNS, the HELO check, DNSBL, RHSBL) inside a Protocol.
//
// Input layout (the seeds in fuzz/corpus/dns/ start with this byte):
//
//   byte 0  bits 0-1  the client: 0 192.0.2.1, 1 192.0.2.66, 2 2001:db8::1, 3 192.0.2.3
//           bit 2     dns_refuse_at_rcpt
//           bit 3     dns_temp_error_refuses off
//   bytes 1.. one DNS response message
//
// Invariants checked:
//   - parse_answer of the message, for each of A, AAAA, PTR and TXT: found exactly when there
//     are records; not_found and temp_error have none and a TTL of 0; an A record is a dotted
//     IPv4 address and an AAAA an IPv6 one (both parse back); a PTR name is 1..253 octets of
//     lower-case letters, digits, '-', '_' and '.' with no empty label; a TXT record is
//     printable ASCII no longer than the message;
//   - a session whose resolver answers every question with that message (parsed for the
//     question's type) gives only well-formed replies: the greeting is 220, 421 or 554; EHLO
//     250, 450 or 550; MAIL 250 or 554; RCPT 250, 450, 550 or 554; listings name a configured
//     zone and a 127/8 address.
#include "fuzz/fuzz.hpp"
#include "smtpd.hpp"

#include <arpa/inet.h>

#include <memory>

namespace {

using smtpd::DnsAnswer;
using smtpd::DnsType;

// check_answer - the invariants of one parsed answer.
void check_answer(const DnsAnswer& a, DnsType type, std::size_t message_size) {
  bool found = a.status == DnsAnswer::Status::found;
  FUZZ_CHECK(found == !a.records.empty());
  if (!found) FUZZ_CHECK(a.ttl == 0);
  for (const std::string& r : a.records) {
    unsigned char bytes[16];
    switch (type) {
    case DnsType::a: FUZZ_CHECK(inet_pton(AF_INET, r.c_str(), bytes) == 1); break;
    case DnsType::aaaa: FUZZ_CHECK(inet_pton(AF_INET6, r.c_str(), bytes) == 1); break;
    case DnsType::ptr:
      FUZZ_CHECK(!r.empty() && r.size() <= 253);
      FUZZ_CHECK(r.front() != '.' && r.back() != '.' && r.find("..") == std::string::npos);
      for (char c : r)
        FUZZ_CHECK((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
                   c == '.');
      break;
    case DnsType::txt:
      FUZZ_CHECK(r.size() <= message_size);
      for (char c : r)
        FUZZ_CHECK(c >= 0x20 && c < 0x7F);
      break;
    }
  }
}

// MessageResolver - answers every question with the fuzzed message, parsed for its type.
struct MessageResolver : smtpd::DnsResolver {
  std::string message;

  std::vector<DnsAnswer> resolve(const std::vector<smtpd::DnsQuery>& queries) override {
    std::vector<DnsAnswer> out;
    for (const smtpd::DnsQuery& q : queries)
      out.push_back(smtpd::dns::parse_answer(message, q.type));
    return out;
  }
};

// code_of - the last reply's code in `out`, 0 when there is none.
int code_of(const std::string& out) {
  std::vector<fuzz::ReplyLine> lines = fuzz::parse_replies(out);
  return lines.empty() ? 0 : lines.back().code;
}

void check_session(uint8_t flags, const std::string& message) {
  static const char* clients[] = {"192.0.2.1", "192.0.2.66", "2001:db8::1", "192.0.2.3"};
  auto resolver = std::make_shared<MessageResolver>();
  resolver->message = message;
  smtpd::Options o;
  o.hostname = "mx.test";
  o.require_fcrdns = o.helo_check = o.reverse_dns = true;
  o.dnsbl_zones = {"bl.example"};
  o.rhsbl_zones = {"rhs.example"};
  o.dns_refuse_at_rcpt = flags & 4;
  o.dns_temp_error_refuses = !(flags & 8);
  o.dns_resolver = resolver;
  smtpd::SessionInfo info;
  info.peer.ip = clients[flags & 3];
  smtpd::Protocol p(o, info);
  int greeting = code_of(p.take_output());
  FUZZ_CHECK(greeting == 220 || greeting == 421 || greeting == 554);
  for (const smtpd::DnsListing& l : p.session().dns.listings) {
    FUZZ_CHECK(l.zone == "bl.example" || l.zone == "rhs.example");
    FUZZ_CHECK(l.address.rfind("127.", 0) == 0);
  }
  if (greeting != 220) return;
  p.feed("EHLO mail.example.org\r\n");
  int ehlo = code_of(p.take_output());
  FUZZ_CHECK(ehlo == 250 || ehlo == 450 || ehlo == 550);
  if (ehlo != 250) return;
  p.feed("MAIL FROM:<a@spam.example>\r\n");
  int mail = code_of(p.take_output());
  FUZZ_CHECK(mail == 250 || mail == 554);
  if (mail != 250) return;
  p.feed("RCPT TO:<b@mx.test>\r\n");
  int rcpt = code_of(p.take_output());
  FUZZ_CHECK(rcpt == 250 || rcpt == 450 || rcpt == 550 || rcpt == 554);
}

} // namespace

int fuzz_dns(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  std::string message(reinterpret_cast<const char*>(data) + 1, size - 1);
  for (DnsType type : {DnsType::a, DnsType::aaaa, DnsType::ptr, DnsType::txt})
    check_answer(smtpd::dns::parse_answer(message, type), type, message.size());
  check_session(data[0], message);
  return 0;
}

SMTPD_FUZZ_ENTRY(fuzz_dns)
