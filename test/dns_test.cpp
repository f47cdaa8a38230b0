// dns_test.cpp - the DNS checks (issue 17): the DNS answer parser on crafted messages (RFC 1035
// §4.1, compression §4.1.4), the names looked up (RFC 1035 §3.5, RFC 3596 §2.5, RFC 5782 §2.1
// and §2.4), the cache, and each check's verdict and reply through the socket-free Protocol with
// a table for a resolver: FCrDNS (RFC 7372 §3.3), the HELO check, DNSBL and RHSBL (RFC 5782).
// Then the Server: exemptions, and the C library resolver against a UDP socket that never
// answers (the timeout) and a tiny one that does (the cache). test/interop_dns.sh does the
// same against dnsmasq.
#include "../smtpd.hpp"
#include "protocol_helpers.hpp"
#include "test_client.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace std::chrono_literals;
using namespace std::string_literals;
using smtpd::DnsAnswer;
using smtpd::DnsQuery;
using smtpd::DnsType;
using Status = smtpd::DnsAnswer::Status;

using test::Client;
using test::loopback_options;
using test::reply_code;

namespace {

// ---- building DNS messages by hand ----------------------------------------------------------

std::string u16(unsigned v) {
  return {char(v >> 8 & 0xFF), char(v & 0xFF)};
}

std::string u32(uint32_t v) {
  return u16(v >> 16) + u16(v & 0xFFFF);
}

// wire - "a.b" as labels: "\1a\1b\0".
std::string wire(const std::string& name) {
  std::string out;
  std::size_t start = 0;
  while (start < name.size()) {
    std::size_t dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    out += char(dot - start);
    out += name.substr(start, dot - start);
    start = dot + 1;
  }
  return out + '\0';
}

// header - id 0x1234, the flags, one question, `answers` answers.
std::string header(unsigned flags, unsigned answers, unsigned questions = 1) {
  return u16(0x1234) + u16(flags) + u16(questions) + u16(answers) + u16(0) + u16(0);
}

constexpr unsigned response = 0x8180; // QR, RD, RA, NOERROR

// question - `name` type `type` class IN; at offset 12 in every message built here.
std::string question(const std::string& name, DnsType type) {
  return wire(name) + u16(unsigned(type)) + u16(1);
}

// rr - a resource record: owner (already in wire form), type, class IN, ttl, rdata.
std::string rr(const std::string& owner, unsigned type, uint32_t ttl, const std::string& rdata) {
  return owner + u16(type) + u16(1) + u32(ttl) + u16(unsigned(rdata.size())) + rdata;
}

const std::string to_question = "\xC0\x0C"; // a pointer to offset 12, the question's name

std::string a_rdata(unsigned char a, unsigned char b, unsigned char c, unsigned char d) {
  return {char(a), char(b), char(c), char(d)};
}

// ---- a resolver answering from a table --------------------------------------------------------

// TableResolver - answers from `table` ("name TYPE" → answer); a name not in it is not_found.
// Records every question asked.
struct TableResolver : smtpd::DnsResolver {
  std::map<std::string, DnsAnswer> table;
  std::vector<std::string> asked;
  std::mutex mu;

  static std::string key(const std::string& name, DnsType type) {
    const char* t = type == DnsType::a      ? "A"
                    : type == DnsType::aaaa ? "AAAA"
                    : type == DnsType::ptr  ? "PTR"
                                            : "TXT";
    return name + " " + t;
  }

  void set(const std::string& name, DnsType type, std::vector<std::string> records) {
    table[key(name, type)] = DnsAnswer{Status::found, std::move(records), 60};
  }

  void fail(const std::string& name, DnsType type) {
    table[key(name, type)] = DnsAnswer{Status::temp_error, {}, 0};
  }

  std::vector<DnsAnswer> resolve(const std::vector<DnsQuery>& queries) override {
    std::lock_guard<std::mutex> lock(mu);
    std::vector<DnsAnswer> out;
    for (const DnsQuery& q : queries) {
      asked.push_back(key(q.name, q.type));
      auto it = table.find(key(q.name, q.type));
      out.push_back(it != table.end() ? it->second : DnsAnswer{Status::not_found, {}, 0});
    }
    return out;
  }
};

// The world of these tests: 192.0.2.1 is mail.example.org and back; 192.0.2.2 points to
// liar.example, which does not point back; 192.0.2.3 has no PTR; 192.0.2.4's PTR lookup fails.
// 192.0.2.66 is on bl.example with a reason, and on nr.example without one.
std::shared_ptr<TableResolver> world() {
  auto r = std::make_shared<TableResolver>();
  r->set("1.2.0.192.in-addr.arpa", DnsType::ptr, {"mail.example.org"});
  r->set("mail.example.org", DnsType::a, {"192.0.2.1"});
  r->set("2.2.0.192.in-addr.arpa", DnsType::ptr, {"liar.example"});
  r->set("liar.example", DnsType::a, {"198.51.100.9"});
  r->fail("4.2.0.192.in-addr.arpa", DnsType::ptr);
  r->set("66.2.0.192.in-addr.arpa", DnsType::ptr, {"spammer.example"});
  r->set("spammer.example", DnsType::a, {"192.0.2.66"});
  r->set("66.2.0.192.bl.example", DnsType::a, {"127.0.0.2"});
  r->set("66.2.0.192.bl.example", DnsType::txt, {"Listed: see https://bl.example/192.0.2.66"});
  r->set("66.2.0.192.nr.example", DnsType::a, {"127.0.0.4"});
  r->set("1.2.0.192.odd.example", DnsType::a, {"10.0.0.1"}); // not 127/8: no listing
  r->set("other.example", DnsType::a, {"192.0.2.1"});
  r->set("spam.example.rhs.example", DnsType::a, {"127.0.1.2"});
  r->set("spam.example.rhs.example", DnsType::txt, {"Bad domain"});
  r->fail("slow.example", DnsType::a);
  return r;
}

// Session - a Protocol with the world's resolver; `lines` sent one by one, all replies kept.
struct Session {
  smtpd::Options options;
  std::shared_ptr<TableResolver> dns = world();
  std::unique_ptr<smtpd::Protocol> p;
  std::string out;

  explicit Session(smtpd::Options o) : options(std::move(o)) {
    options.hostname = "mx.test";
    if (!options.dns_resolver) options.dns_resolver = dns;
  }

  std::string connect(const std::string& ip, bool exempt = false) {
    smtpd::SessionInfo info = test::client_info(ip);
    info.dns.exempt = exempt;
    p = std::make_unique<smtpd::Protocol>(options, info);
    return p->take_output();
  }

  std::string send(const std::string& line) {
    p->feed(line + "\r\n");
    return p->take_output();
  }

  const smtpd::DnsChecks& checks() const { return p->session().dns; }
};

smtpd::Options with(std::function<void(smtpd::Options&)> set) {
  smtpd::Options o;
  set(o);
  return o;
}

// udp_socket - a UDP socket bound to 127.0.0.1 and a free port (set in `port`), for the tests
// of the C library resolver to stand in for a DNS server.
int udp_socket(uint16_t& port) {
  int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof a;
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &length) == 0);
  port = ntohs(a.sin_port);
  return fd;
}

} // namespace

TEST_SUITE("dns") {

  // ---- the answer parser (RFC 1035 §4.1) -------------------------------------------------------

  TEST_CASE("parse_answer: an A record behind a compression pointer (RFC 1035 §4.1.4)") {
    std::string m = header(response, 1) + question("2.0.0.127.bl.example", DnsType::a) +
                    rr(to_question, 1, 300, a_rdata(127, 0, 0, 2));
    DnsAnswer a = smtpd::dns::parse_answer(m, DnsType::a);
    CHECK(a.status == Status::found);
    REQUIRE(a.records.size() == 1);
    CHECK(a.records[0] == "127.0.0.2");
    CHECK(a.ttl == 300);
  }

  TEST_CASE("parse_answer: the RCODE decides first (RFC 1035 §4.1.1)") {
    std::string q = question("x.example", DnsType::a);
    CHECK(smtpd::dns::parse_answer(header(0x8183, 0) + q, DnsType::a).status ==
          Status::not_found); // NXDOMAIN
    CHECK(smtpd::dns::parse_answer(header(0x8182, 0) + q, DnsType::a).status ==
          Status::temp_error); // SERVFAIL
    CHECK(smtpd::dns::parse_answer(header(0x8185, 0) + q, DnsType::a).status ==
          Status::temp_error); // REFUSED
    CHECK(smtpd::dns::parse_answer(header(response, 0) + q, DnsType::a).status ==
          Status::not_found); // NODATA: the name exists, no A
    CHECK(smtpd::dns::parse_answer(header(0x0100, 0) + q, DnsType::a).status ==
          Status::temp_error); // a query, not a response
    CHECK(smtpd::dns::parse_answer(header(response | 0x0200, 0) + q, DnsType::a).status ==
          Status::temp_error); // TC: truncated
  }

  TEST_CASE("parse_answer: every truncation of a good message is a temp_error, never a crash") {
    std::string m = header(response, 2) + question("1.2.0.192.in-addr.arpa", DnsType::ptr) +
                    rr(to_question, 12, 60, wire("mail.example.org")) +
                    rr(to_question, 12, 60, "\x04next\xC0\x34"); // "next." + a pointer into it
    DnsAnswer whole = smtpd::dns::parse_answer(m, DnsType::ptr);
    CHECK(whole.status == Status::found);
    CHECK(whole.records.size() == 2);
    for (std::size_t n = 0; n < m.size(); ++n)
      CHECK_MESSAGE(smtpd::dns::parse_answer(m.substr(0, n), DnsType::ptr).status ==
                        Status::temp_error,
                    "cut at ", n);
  }

  TEST_CASE("parse_answer: compression loops and forward pointers are refused") {
    std::string q = question("x.example", DnsType::a);
    // A pointer to itself: the owner name at offset 12 + q.size() points there.
    std::size_t at = 12 + q.size();
    std::string self = {char(0xC0 | (at >> 8)), char(at & 0xFF)};
    CHECK(smtpd::dns::parse_answer(header(response, 1) + q + rr(self, 1, 1, a_rdata(1, 2, 3, 4)),
                                   DnsType::a)
              .status == Status::temp_error);
    // A label, then a pointer back to that label: a loop through one label.
    std::string loop = "\x01x" + std::string{char(0xC0 | (at >> 8)), char(at & 0xFF)};
    CHECK(smtpd::dns::parse_answer(header(response, 1) + q + rr(loop, 1, 1, a_rdata(1, 2, 3, 4)),
                                   DnsType::a)
              .status == Status::temp_error);
    // A pointer forward, past the end.
    CHECK(smtpd::dns::parse_answer(
              header(response, 1) + q + rr("\xC0\xFF", 1, 1, a_rdata(1, 2, 3, 4)), DnsType::a)
              .status == Status::temp_error);
    // The reserved label types 01 and 10 (RFC 6891 §5).
    CHECK(smtpd::dns::parse_answer(
              header(response, 1) + q + rr("\x41x\0"s, 1, 1, a_rdata(1, 2, 3, 4)), DnsType::a)
              .status == Status::temp_error);
  }

  TEST_CASE("parse_answer: bad lengths (RDLENGTH, A size, labels, names, TXT strings)") {
    std::string q = question("x.example", DnsType::a);
    std::string h = header(response, 1);
    std::string over = to_question + u16(1) + u16(1) + u32(1) + u16(200) + a_rdata(1, 2, 3, 4);
    CHECK(smtpd::dns::parse_answer(h + q + over, DnsType::a).status == Status::temp_error);
    CHECK(smtpd::dns::parse_answer(h + q + rr(to_question, 1, 1, "12345"), DnsType::a).status ==
          Status::temp_error); // an A record of 5 octets
    std::string long_label = char(64) + std::string(64, 'a') + '\0';
    CHECK(smtpd::dns::parse_answer(h + q + rr(long_label, 1, 1, a_rdata(1, 2, 3, 4)), DnsType::a)
              .status == Status::temp_error); // RFC 1035 §3.1: labels of 63 octets at most
    std::string long_name;
    for (int i = 0; i < 5; ++i)
      long_name += char(60) + std::string(60, 'a');
    CHECK(smtpd::dns::parse_answer(h + q + rr(long_name + '\0', 1, 1, a_rdata(1, 2, 3, 4)),
                                   DnsType::a)
              .status == Status::temp_error); // names of 255 octets at most
    std::string tq = question("x.example", DnsType::txt);
    CHECK(smtpd::dns::parse_answer(h + tq + rr(to_question, 16, 1, "\x09short"), DnsType::txt)
              .status == Status::temp_error); // a string longer than its record
  }

  TEST_CASE("parse_answer: TXT strings joined, control bytes made spaces; AAAA; CNAME skipped") {
    std::string tq = question("2.0.0.127.bl.example", DnsType::txt);
    DnsAnswer t = smtpd::dns::parse_answer(
        header(response, 1) + tq + rr(to_question, 16, 5, "\x05Hello\x07, w\r\nld"), DnsType::txt);
    REQUIRE(t.records.size() == 1);
    CHECK(t.records[0] == "Hello, w  ld");
    std::string q6 = question("v6.example", DnsType::aaaa);
    std::string v6(16, '\0');
    v6[0] = 0x20, v6[1] = 0x01, v6[2] = 0x0d, v6[3] = char(0xb8), v6[15] = 1;
    DnsAnswer six = smtpd::dns::parse_answer(header(response, 2) + q6 +
                                                 rr(to_question, 5, 9, wire("real.example")) +
                                                 rr(wire("real.example"), 28, 9, v6),
                                             DnsType::aaaa);
    REQUIRE(six.records.size() == 1);
    CHECK(six.records[0] == "2001:db8::1");
  }

  TEST_CASE("parse_answer: a PTR name unfit for a host is no answer; names are lower-cased") {
    std::string q = question("1.2.0.192.in-addr.arpa", DnsType::ptr);
    DnsAnswer bad = smtpd::dns::parse_answer(
        header(response, 1) + q + rr(to_question, 12, 1, wire("evil host\r\n.example")),
        DnsType::ptr);
    CHECK(bad.status == Status::not_found);
    // A label holding a dot, at the end: "g_." would make the text "mail.g_." (found by
    // fuzz/dns.cpp; fuzz/corpus/dns/crash-ptr-label-with-dot).
    DnsAnswer dotted = smtpd::dns::parse_answer(
        header(response, 1) + q + rr(to_question, 12, 1, "\x04mail\x03g_.\0"s), DnsType::ptr);
    CHECK(dotted.status == Status::not_found);
    DnsAnswer upper = smtpd::dns::parse_answer(
        header(response, 1) + q + rr(to_question, 12, 1, wire("Mail.Example.ORG")), DnsType::ptr);
    REQUIRE(upper.records.size() == 1);
    CHECK(upper.records[0] == "mail.example.org");
  }

  // ---- the names looked up -------------------------------------------------------------------

  TEST_CASE("reverse_name: IPv4 octets and IPv6 nibbles reversed (RFC 5782 §2.1, §2.4)") {
    CHECK(smtpd::dns::reverse_name("192.0.2.99", "bl.example") == "99.2.0.192.bl.example");
    CHECK(smtpd::dns::reverse_name("192.0.2.1", "in-addr.arpa") == "1.2.0.192.in-addr.arpa");
    // RFC 5782 §2.4's example address.
    CHECK(smtpd::dns::reverse_name("2001:db8:1:2:3:4:567:89ab", "bl.example") ==
          "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.example");
    CHECK(smtpd::dns::reverse_name("::1", "ip6.arpa") ==
          "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa");
    CHECK(smtpd::dns::reverse_name("not an ip", "bl.example").empty());
    CHECK(smtpd::dns::reverse_name("", "bl.example").empty());
  }

  // ---- the cache -----------------------------------------------------------------------------

  TEST_CASE("Cache: bounded in size, the oldest goes first") {
    smtpd::dns::Cache cache(2, 60s);
    auto now = smtpd::dns::Cache::Clock::now();
    DnsAnswer a{Status::found, {"127.0.0.2"}, 300};
    cache.put({"a.example", DnsType::a}, a, now);
    cache.put({"b.example", DnsType::a}, a, now);
    cache.put({"c.example", DnsType::a}, a, now);
    CHECK(cache.size() == 2);
    CHECK_FALSE(cache.get({"a.example", DnsType::a}, now));
    CHECK(cache.get({"b.example", DnsType::a}, now));
    CHECK(cache.get({"C.Example", DnsType::a}, now)); // names compare without case (RFC 4343)
    CHECK_FALSE(cache.get({"c.example", DnsType::txt}, now)); // another type, another entry
  }

  TEST_CASE("Cache: an answer expires after min(its TTL, the cache's); errors are not kept") {
    smtpd::dns::Cache cache(100, 60s);
    auto now = smtpd::dns::Cache::Clock::now();
    cache.put({"short.example", DnsType::a}, {Status::found, {"127.0.0.2"}, 5}, now);
    cache.put({"long.example", DnsType::a}, {Status::found, {"127.0.0.2"}, 3600}, now);
    cache.put({"none.example", DnsType::a}, {Status::not_found, {}, 0}, now);
    cache.put({"fail.example", DnsType::a}, {Status::temp_error, {}, 0}, now);
    cache.put({"zero.example", DnsType::a}, {Status::found, {"127.0.0.2"}, 0}, now);
    CHECK(cache.get({"short.example", DnsType::a}, now + 4s));
    CHECK_FALSE(cache.get({"short.example", DnsType::a}, now + 5s));
    CHECK(cache.get({"long.example", DnsType::a}, now + 59s));
    CHECK_FALSE(cache.get({"long.example", DnsType::a}, now + 60s));
    CHECK(cache.get({"none.example", DnsType::a}, now + 59s)->status == Status::not_found);
    CHECK_FALSE(cache.get({"fail.example", DnsType::a}, now));
    CHECK_FALSE(cache.get({"zero.example", DnsType::a}, now));
    CHECK(cache.size() == 1); // the expired ones were dropped as they were found
  }

  // ---- FCrDNS (RFC 7372 §3.3: X.7.25) ---------------------------------------------------------

  TEST_CASE("require_fcrdns: a confirmed client is greeted, and its name recorded") {
    Session s(with([](smtpd::Options& o) { o.require_fcrdns = true; }));
    CHECK(s.connect("192.0.2.1") == "220 mx.test ESMTP smtpd\r\n");
    CHECK(s.checks().fcrdns == smtpd::DnsStatus::pass);
    CHECK(s.checks().fcrdns_name == "mail.example.org");
    CHECK(s.p->session().peer.hostname.empty()); // reverse_dns is off
  }

  TEST_CASE("require_fcrdns: no PTR, or a PTR that does not point back, gets 554 at greeting") {
    Session s(with([](smtpd::Options& o) { o.require_fcrdns = true; }));
    // A permanent refusal in the greeting is a 554 (RFC 5321 §3.1); no enhanced code before EHLO
    // (RFC 2034 §3).
    CHECK(s.connect("192.0.2.3") == "554 FCrDNS failure\r\n");
    CHECK(s.checks().fcrdns == smtpd::DnsStatus::fail);
    CHECK(s.send("EHLO c.example") == "503 Service refused, only QUIT allowed\r\n");
    CHECK(s.connect("192.0.2.2") == "554 FCrDNS failure\r\n");
    CHECK(s.checks().fcrdns_name.empty());
  }

  TEST_CASE("require_fcrdns: a temporary DNS failure is 421 4.7.25, or let through") {
    Session s(with([](smtpd::Options& o) { o.require_fcrdns = true; }));
    CHECK(s.connect("192.0.2.4") == "421 FCrDNS failure: temporary DNS error\r\n");
    CHECK(s.p->should_close());
    CHECK(s.checks().fcrdns == smtpd::DnsStatus::temp_error);
    s.options.dns_temp_error_refuses = false;
    CHECK(s.connect("192.0.2.4") == "220 mx.test ESMTP smtpd\r\n");
  }

  TEST_CASE("require_fcrdns at RCPT: 550 5.7.25 and 450 4.7.25 with their enhanced codes") {
    Session s(with([](smtpd::Options& o) {
      o.require_fcrdns = true;
      o.dns_refuse_at_rcpt = true;
    }));
    CHECK(s.connect("192.0.2.3") == "220 mx.test ESMTP smtpd\r\n");
    s.send("EHLO c.example");
    CHECK(s.send("MAIL FROM:<a@c.example>") == "250 2.1.0 Ok\r\n");
    CHECK(s.send("RCPT TO:<b@mx.test>") == "550 5.7.25 FCrDNS failure\r\n");
    CHECK(s.connect("192.0.2.4") == "220 mx.test ESMTP smtpd\r\n");
    s.send("EHLO c.example");
    s.send("MAIL FROM:<a@c.example>");
    CHECK(s.send("RCPT TO:<b@mx.test>") == "450 4.7.25 FCrDNS failure: temporary DNS error\r\n");
    CHECK(s.connect("192.0.2.1") == "220 mx.test ESMTP smtpd\r\n");
    s.send("EHLO c.example");
    s.send("MAIL FROM:<a@c.example>");
    CHECK(s.send("RCPT TO:<b@mx.test>") == "250 2.1.5 Ok\r\n");
  }

  TEST_CASE("reverse_dns with the checks on: Peer::hostname is the confirmed name") {
    Session s(with([](smtpd::Options& o) {
      o.reverse_dns = true;
      o.dnsbl_zones = {"bl.example"};
    }));
    s.connect("192.0.2.1");
    CHECK(s.p->session().peer.hostname == "mail.example.org");
    s.connect("192.0.2.2");
    CHECK(s.p->session().peer.hostname.empty()); // not forward-confirmed: not shown
  }

  // ---- the HELO check --------------------------------------------------------------------------

  TEST_CASE("helo_check: the confirmed name, a name that resolves to the IP, or 550 5.7.1") {
    Session s(with([](smtpd::Options& o) { o.helo_check = true; }));
    s.connect("192.0.2.1");
    CHECK(s.send("EHLO MAIL.example.org.").rfind("250-mx.test\r\n", 0) == 0);
    CHECK(s.checks().helo == smtpd::DnsStatus::pass);
    CHECK(s.send("EHLO other.example").rfind("250-mx.test\r\n", 0) == 0); // A 192.0.2.1
    CHECK(s.send("EHLO liar.example") == "550 5.7.1 Bad HELO\r\n");
    CHECK(s.checks().helo == smtpd::DnsStatus::fail);
    CHECK(s.send("EHLO unknown.example") == "550 5.7.1 Bad HELO\r\n");
    std::size_t asked = s.dns->asked.size();
    CHECK(s.send("EHLO -not_a.domain!") == "550 5.7.1 Bad HELO\r\n"); // RFC 5321 §4.1.1.1
    CHECK(s.dns->asked.size() == asked);                              // not looked up
    CHECK(s.send("HELO slow.example") == "450 4.7.1 Bad HELO: temporary DNS error\r\n");
    CHECK(s.checks().helo == smtpd::DnsStatus::temp_error);
    s.options.dns_temp_error_refuses = false;
    CHECK(s.send("HELO slow.example") == "250 mx.test\r\n");
  }

  TEST_CASE("helo_check: an address literal must be the client's address (RFC 5321 §4.1.3)") {
    Session s(with([](smtpd::Options& o) { o.helo_check = true; }));
    s.connect("192.0.2.3");
    CHECK(s.send("HELO [192.0.2.3]") == "250 mx.test\r\n");
    CHECK(s.send("HELO [192.0.2.4]") == "550 Bad HELO\r\n"); // no EHLO: no enhanced code
    s.connect("2001:db8::5");
    CHECK(s.send("HELO [IPv6:2001:DB8:0::5]") == "250 mx.test\r\n");
  }

  // ---- DNSBL (RFC 5782) --------------------------------------------------------------------

  TEST_CASE("dnsbl_zones: a listed IP is refused in the greeting, with the zone and the TXT") {
    Session s(with([](smtpd::Options& o) { o.dnsbl_zones = {"bl.example"}; }));
    CHECK(s.connect("192.0.2.66") == "554 IP address is on a blocklist: bl.example (Listed: see "
                                     "https://bl.example/192.0.2.66)\r\n");
    REQUIRE(s.checks().listings.size() == 1);
    const smtpd::DnsListing& l = s.checks().listings[0];
    CHECK(l.zone == "bl.example");
    CHECK(l.source == "ip");
    CHECK(l.listed == "192.0.2.66");
    CHECK(l.address == "127.0.0.2");
    CHECK(s.connect("192.0.2.1") == "220 mx.test ESMTP smtpd\r\n");
    CHECK(s.checks().listings.empty());
  }

  TEST_CASE("dnsbl_zones: without a TXT only the zone; an A outside 127/8 is no listing") {
    Session s(with([](smtpd::Options& o) { o.dnsbl_zones = {"odd.example", "nr.example"}; }));
    CHECK(s.connect("192.0.2.66") == "554 IP address is on a blocklist: nr.example\r\n");
    CHECK(s.connect("192.0.2.1") == "220 mx.test ESMTP smtpd\r\n");
    // One round: the PTR, A and TXT per zone, all asked together; then the forward lookup.
    CHECK(s.dns->asked.size() >= 6);
  }

  TEST_CASE("dnsbl_zones at RCPT: 554 5.7.1 after MAIL, so the sender is known") {
    Session s(with([](smtpd::Options& o) {
      o.dnsbl_zones = {"bl.example"};
      o.dns_refuse_at_rcpt = true;
    }));
    CHECK(s.connect("192.0.2.66") == "220 mx.test ESMTP smtpd\r\n");
    s.send("EHLO c.example");
    s.send("MAIL FROM:<a@c.example>");
    CHECK(s.send("RCPT TO:<b@mx.test>") ==
          "554 5.7.1 IP address is on a blocklist: bl.example (Listed: see "
          "https://bl.example/192.0.2.66)\r\n");
  }

  TEST_CASE("dnsbl_refuse false: listings only recorded, for hooks to score") {
    std::vector<std::string> seen;
    Session s(with([&](smtpd::Options& o) {
      o.dnsbl_zones = {"bl.example", "nr.example"};
      o.dnsbl_refuse = false;
      o.on_connect = [&](const smtpd::SessionInfo& info) -> std::optional<smtpd::Reply> {
        for (const smtpd::DnsListing& l : info.dns.listings)
          seen.push_back(l.zone + "=" + l.address);
        if (info.dns.listings.size() >= 2) return smtpd::Reply{554, "5.7.1", "Score too high"};
        return std::nullopt;
      };
    }));
    CHECK(s.connect("192.0.2.66") == "554 Score too high\r\n");
    CHECK(seen == std::vector<std::string>{"bl.example=127.0.0.2", "nr.example=127.0.0.4"});
  }

  TEST_CASE("dnsbl_zones: an IPv6 client is looked up by nibbles (RFC 5782 §2.4)") {
    Session s(with([](smtpd::Options& o) { o.dnsbl_zones = {"bl.example"}; }));
    s.dns->set("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example",
               DnsType::a, {"127.0.0.10"});
    CHECK(s.connect("2001:db8::1") == "554 IP address is on a blocklist: bl.example\r\n");
    CHECK(s.dns->asked.front() ==
          "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa PTR");
  }

  // ---- RHSBL -------------------------------------------------------------------------------

  TEST_CASE("rhsbl_zones: a listed MAIL FROM domain gets 554 5.7.1 at MAIL") {
    Session s(with([](smtpd::Options& o) { o.rhsbl_zones = {"rhs.example"}; }));
    s.connect("192.0.2.1");
    s.send("EHLO c.example");
    CHECK(s.send("MAIL FROM:<x@SPAM.example>") ==
          "554 5.7.1 Domain is on a blocklist: rhs.example (Bad domain)\r\n");
    REQUIRE(s.checks().listings.size() == 1);
    CHECK(s.checks().listings[0].source == "mail");
    CHECK(s.checks().listings[0].listed == "spam.example");
    CHECK(s.send("MAIL FROM:<x@ok.example>") == "250 2.1.0 Ok\r\n");
    CHECK(s.checks().listings.empty()); // the last MAIL's listing is forgotten
    CHECK(s.send("RSET").rfind("250", 0) == 0);
    CHECK(s.send("MAIL FROM:<>") == "250 2.1.0 Ok\r\n"); // the null path: no domain
  }

  TEST_CASE("rhsbl_zones: a listed HELO name is refused at MAIL; rhsbl_refuse false records") {
    Session s(with([](smtpd::Options& o) { o.rhsbl_zones = {"rhs.example"}; }));
    s.connect("192.0.2.1");
    CHECK(s.send("EHLO spam.example").rfind("250-", 0) == 0);
    REQUIRE(s.checks().listings.size() == 1);
    CHECK(s.checks().listings[0].source == "helo");
    CHECK(s.send("MAIL FROM:<x@ok.example>") ==
          "554 5.7.1 Domain is on a blocklist: rhs.example (Bad domain)\r\n");
    s.options.rhsbl_refuse = false;
    CHECK(s.send("MAIL FROM:<x@ok.example>") == "250 2.1.0 Ok\r\n");
  }

  // ---- exemptions and defaults -----------------------------------------------------------

  TEST_CASE("an exempt client (limit_exempt_networks) is not looked up at all") {
    Session s(with([](smtpd::Options& o) {
      o.require_fcrdns = o.helo_check = true;
      o.dnsbl_zones = {"bl.example"};
      o.rhsbl_zones = {"rhs.example"};
    }));
    CHECK(s.connect("192.0.2.66", true) == "220 mx.test ESMTP smtpd\r\n");
    CHECK(s.send("EHLO spam.example").rfind("250-", 0) == 0);
    CHECK(s.send("MAIL FROM:<x@spam.example>") == "250 2.1.0 Ok\r\n");
    CHECK(s.send("RCPT TO:<b@mx.test>") == "250 2.1.5 Ok\r\n");
    CHECK(s.dns->asked.empty());
    CHECK(s.checks().fcrdns == smtpd::DnsStatus::not_checked);
    CHECK(s.checks().helo == smtpd::DnsStatus::not_checked);
  }

  TEST_CASE("every check off (the default): no lookup, even with a resolver set") {
    Session s{smtpd::Options()};
    s.connect("192.0.2.66");
    s.send("EHLO liar.example");
    s.send("MAIL FROM:<x@spam.example>");
    CHECK(s.dns->asked.empty());
  }

  TEST_CASE("a resolver answering too few answers: the rest count as temporary errors") {
    struct Mute : smtpd::DnsResolver {
      std::vector<DnsAnswer> resolve(const std::vector<DnsQuery>&) override { return {}; }
    };

    Session s(with([](smtpd::Options& o) {
      o.require_fcrdns = true;
      o.dnsbl_zones = {"bl.example"};
      o.dns_resolver = std::make_shared<Mute>();
    }));
    CHECK(s.connect("192.0.2.66") == "421 FCrDNS failure: temporary DNS error\r\n");
  }

  // ---- the Server: exemptions, the C library resolver --------------------------------------

  TEST_CASE("Server: loopback is exempt by default; --limit-exempt none makes it checked") {
    auto dns = world();
    dns->set("1.0.0.127.in-addr.arpa", DnsType::ptr, {"localhost.example"});
    dns->set("localhost.example", DnsType::a, {"127.0.0.1"});
    smtpd::Options options = loopback_options();
    options.require_fcrdns = true;
    options.dnsbl_zones = {"bl.example"};
    options.dns_resolver = dns;
    {
      smtpd::TestServer ts(options);
      Client c(ts.port());
      CHECK(reply_code(c.read_reply()) == 220);
    }
    CHECK(dns->asked.empty());
    options.limit_exempt_networks.clear();
    smtpd::TestServer ts(options);
    Client c(ts.port());
    CHECK(reply_code(c.read_reply()) == 220);
    std::lock_guard<std::mutex> lock(dns->mu);
    CHECK(dns->asked.size() == 4); // PTR, A + TXT on bl.example, then A of the name
  }

  TEST_CASE("make_dns_resolver: bad dns_servers entries are refused") {
    for (const char* bad : {"", "localhost", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
                            "127.0.0.1:x", "::1", "300.0.0.1"}) {
      smtpd::Options o;
      o.dns_servers = {bad};
      CHECK_THROWS_AS(smtpd::make_dns_resolver(o), std::invalid_argument);
    }
    smtpd::Options o;
    o.dns_servers = {"127.0.0.1", "192.0.2.53:5353"};
    CHECK(smtpd::make_dns_resolver(o).get() != nullptr);
  }

  TEST_CASE("the C library resolver: a server that never answers is a temp_error in time") {
    // A bound UDP socket that nobody reads: the questions go out and get nothing back.
    uint16_t port = 0;
    int fd = udp_socket(port);
    smtpd::Options o;
    o.dns_servers = {"127.0.0.1:" + std::to_string(port)};
    o.dns_timeout = 200ms;
    auto resolver = smtpd::make_dns_resolver(o);
    auto start = std::chrono::steady_clock::now();
    std::vector<DnsAnswer> answers = resolver->resolve(
        {{"a.example", DnsType::a}, {"b.example", DnsType::txt}, {"c.example", DnsType::ptr}});
    auto waited = std::chrono::steady_clock::now() - start;
    REQUIRE(answers.size() == 3);
    for (const DnsAnswer& answer : answers)
      CHECK(answer.status == Status::temp_error);
    CHECK(waited < 10s); // given up after dns_timeout, not the resolver's seconds
    ::close(fd);
  }

  TEST_CASE("the C library resolver: parallel questions to a real UDP server, then the cache") {
    // A tiny DNS server: answers every question with A 127.0.0.2 (TTL 60), counts questions.
    uint16_t port = 0;
    int fd = udp_socket(port);
    std::atomic<int> questions{0};
    std::atomic<bool> stop{false};
    std::thread server([&] {
      char buf[512];
      while (!stop) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0) continue;
        sockaddr_in from{};
        socklen_t from_length = sizeof from;
        ssize_t n =
            ::recvfrom(fd, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &from_length);
        if (n < 12) continue;
        ++questions;
        std::string reply(buf, std::size_t(n));
        reply[2] = char(0x81), reply[3] = char(0x80); // QR RD RA, NOERROR
        reply[6] = 0, reply[7] = 1;                   // one answer
        reply[8] = reply[9] = reply[10] = reply[11] = 0;
        reply += rr(to_question, 1, 60, a_rdata(127, 0, 0, 2));
        ::sendto(fd, reply.data(), reply.size(), 0, reinterpret_cast<sockaddr*>(&from),
                 from_length);
      }
    });
    smtpd::Options o;
    o.dns_servers = {"127.0.0.1:" + std::to_string(port)};
    o.dns_timeout = 5s;
    auto resolver = smtpd::make_dns_resolver(o);
    std::vector<DnsQuery> queries{{"a.example", DnsType::a}, {"b.example", DnsType::a}};
    std::vector<DnsAnswer> first = resolver->resolve(queries);
    std::vector<DnsAnswer> second = resolver->resolve(queries);
    stop = true;
    server.join();
    ::close(fd);
    for (const auto& answers : {first, second}) {
      REQUIRE(answers.size() == 2);
      CHECK(answers[0].status == Status::found);
      CHECK(answers[1].records == std::vector<std::string>{"127.0.0.2"});
    }
    CHECK(questions == 2); // the second round came from the cache
  }

} // TEST_SUITE("dns")
