// proxy_test.cpp - behind proxies and across machines (issue 15): the PROXY protocol header
// parser (HAProxy's proxy-protocol.txt, v1 and v2), XCLIENT through the Protocol (Postfix's
// XCLIENT_README) written as RFC 5321 Appendix D scripts, trusted networks, the per-client rate
// limits with their bounded table, and PROXY headers read by a Server over loopback from a
// hand-written peer (the real HAProxy and nginx are in test/interop_proxy.sh).
#include "protocol_helpers.hpp"
#include "test_client.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using namespace std::string_literals;
using test::client_info;
using test::printable;

namespace {

using Status = smtpd::ProxyHeader::Status;

// ---- PROXY headers -------------------------------------------------------------------------

const std::string v1_tcp4 = "PROXY TCP4 198.51.100.7 192.0.2.25 40000 25\r\n";
const std::string v1_tcp6 = "PROXY TCP6 2001:db8::7 2001:db8::25 40001 2525\r\n";

// v2 - a v2 header: the signature, version/command, family, and `block` with its length.
std::string v2(unsigned char version_command, unsigned char family, const std::string& block) {
  std::string h("\r\n\r\n\0\r\nQUIT\n", 12);
  h += char(version_command);
  h += char(family);
  h += char((block.size() >> 8) & 0xFF);
  h += char(block.size() & 0xFF);
  return h + block;
}

// v2_tcp4_block - the addresses of TCP over IPv4: 203.0.113.9:4567 to 192.0.2.1:25.
std::string v2_tcp4_block() {
  return std::string("\xCB\x00\x71\x09"
                     "\xC0\x00\x02\x01"
                     "\x11\xD7"
                     "\x00\x19",
                     12);
}

// v2_tcp6_block - 2001:db8::9 port 4568 to 2001:db8::1 port 587.
std::string v2_tcp6_block() {
  std::string b(36, '\0');
  b[0] = '\x20', b[1] = '\x01', b[2] = '\x0d', b[3] = '\xb8', b[15] = '\x09';
  b[16] = '\x20', b[17] = '\x01', b[18] = '\x0d', b[19] = '\xb8', b[31] = '\x01';
  b[32] = '\x11', b[33] = '\xD8', b[34] = '\x02', b[35] = '\x4B';
  return b;
}

// tlv - one TLV: type, 16-bit length, value (proxy-protocol.txt §2.2.7).
std::string tlv(unsigned char type, const std::string& value) {
  return std::string(1, char(type)) + char(value.size() >> 8) + char(value.size() & 0xFF) + value;
}

smtpd::ProxyHeader parse(const std::string& bytes) {
  return smtpd::parse_proxy_header(bytes);
}

// every_prefix_needs_more - each proper prefix of a valid header asks for more bytes.
void every_prefix_needs_more(const std::string& header) {
  for (std::size_t n = 0; n < header.size(); ++n) {
    INFO("prefix of ", n, " octets of ", printable(header));
    CHECK(parse(header.substr(0, n)).status == Status::need_more);
  }
}

// ---- the Protocol --------------------------------------------------------------------------

// Session - a Protocol with options (hostname mx.test) for a client at `ip`.
struct Session {
  smtpd::Options options;
  smtpd::Protocol protocol;
  std::string greeting;

  Session(smtpd::Options o, const std::string& ip, smtpd::RateLimiter* rates = nullptr)
      : options(named(std::move(o))), protocol(options, client_info(ip), rates),
        greeting(protocol.take_output()) {}

  static smtpd::Options named(smtpd::Options o) {
    o.hostname = "mx.test";
    return o;
  }

  std::string line(const std::string& command) {
    protocol.feed(command + "\r\n");
    return protocol.take_output();
  }
};

// script - "C: " lines are sent, the "S: " lines after them are exactly the replies. An "S: "
// entry may hold several reply lines separated by '\n' (the EHLO replies below); a "C: " entry
// is one command line as it stands (message content may hold CRLFs).
void script(Session& s, std::initializer_list<std::string_view> dialogue) {
  std::string sent, got, expected;
  auto compare = [&] {
    INFO("after: ", printable(sent));
    CHECK(printable(test::mask_ids(got)) == printable(expected));
    sent.clear(), got.clear(), expected.clear();
  };
  auto step = [&](std::string_view l) {
    std::string text(l.substr(3));
    if (l.substr(0, 3) == "C: ") {
      if (!expected.empty()) compare();
      sent += text + "\r\n";
      got += s.line(text);
    } else {
      expected += text + "\r\n";
    }
  };
  for (std::string_view entry : dialogue)
    for (bool replies = entry.substr(0, 3) == "S: ";;) {
      std::size_t end = replies ? entry.find('\n') : std::string_view::npos;
      step(entry.substr(0, end));
      if (end == std::string_view::npos) break;
      entry.remove_prefix(end + 1);
    }
  if (!expected.empty() || !got.empty()) compare();
}

// The EHLO reply with the default options, as "S: " lines: to a client, and to a proxy in
// xclient_networks, which is offered XCLIENT too.
const std::string ehlo_extensions = "S: 250-mx.test\n"
                                    "S: 250-SIZE 26214400\n"
                                    "S: 250-8BITMIME\n"
                                    "S: 250-PIPELINING\n"
                                    "S: 250-ENHANCEDSTATUSCODES\n"
                                    "S: 250-SMTPUTF8\n"
                                    "S: 250-CHUNKING\n";
const std::string ehlo_reply = ehlo_extensions + "S: 250 LIMITS RCPTMAX=100";
const std::string ehlo_reply_xclient =
    ehlo_extensions + "S: 250-LIMITS RCPTMAX=100\n"
                      "S: 250 XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT";

// xclient_options - XCLIENT allowed from 192.0.2.0/24 (the proxy), messages recorded.
struct Recorded {
  std::vector<smtpd::SessionInfo> sessions;
  std::vector<std::string> data;
};

smtpd::Options xclient_options(std::shared_ptr<Recorded> seen) {
  smtpd::Options o;
  o.xclient_networks = {"192.0.2.0/24"};
  o.message_handler = [seen](const smtpd::SessionInfo& s, const smtpd::Envelope&,
                             const std::string& data) -> std::optional<smtpd::Reply> {
    seen->sessions.push_back(s);
    seen->data.push_back(data);
    return std::nullopt;
  };
  return o;
}

// ---- the Server, over loopback ---------------------------------------------------------------

// Log - log_error lines, for the checks on why a connection was closed.
struct Log {
  std::mutex mu;
  std::vector<std::string> lines;

  bool any(const std::string& part) {
    std::lock_guard<std::mutex> lock(mu);
    for (const std::string& l : lines)
      if (l.find(part) != std::string::npos) return true;
    return false;
  }
};

smtpd::Options proxied(std::shared_ptr<Log> log) {
  smtpd::Options o = test::loopback_options();
  o.proxy_networks = {"127.0.0.1/32"};
  o.proxy_timeout = 500ms;
  o.log_error = [log](std::string_view line) {
    std::lock_guard<std::mutex> lock(log->mu);
    log->lines.emplace_back(line);
  };
  return o;
}

// closed_silently - the server closes the connection without sending a byte.
bool closed_silently(test::Client& c) {
  bool closed = c.wait_closed();
  INFO("received: ", printable(c.buffered()));
  CHECK(c.buffered().empty());
  return closed;
}

// proxy_line - a v1 header presenting the client `ip`.
std::string proxy_line(const std::string& ip, int port = 40000) {
  return "PROXY TCP4 " + ip + " 192.0.2.25 " + std::to_string(port) + " 25\r\n";
}

} // namespace

TEST_SUITE("proxy") {

  TEST_CASE("PROXY v1: TCP4 and TCP6 give the client and the address it reached") {
    smtpd::ProxyHeader h = parse(v1_tcp4 + "EHLO x\r\n");
    REQUIRE(h.status == Status::complete);
    CHECK(h.version == 1);
    CHECK(h.length == v1_tcp4.size()); // what follows is the client's, not the header's
    CHECK_FALSE(h.local);
    CHECK(h.source.ip == "198.51.100.7");
    CHECK(h.source.port == 40000);
    CHECK(h.destination.ip == "192.0.2.25");
    CHECK(h.destination.port == 25);

    h = parse(v1_tcp6);
    REQUIRE(h.status == Status::complete);
    CHECK(h.source.ip == "2001:db8::7");
    CHECK(h.source.port == 40001);
    CHECK(h.destination.ip == "2001:db8::25");
    CHECK(h.destination.port == 2525);
    every_prefix_needs_more(v1_tcp4);
    every_prefix_needs_more(v1_tcp6);
  }

  TEST_CASE("PROXY v1: UNKNOWN keeps the connection's addresses, whatever follows it") {
    for (std::string line : {"PROXY UNKNOWN\r\n", "PROXY UNKNOWN ffff:f...f:ffff 1 2 3\r\n"}) {
      smtpd::ProxyHeader h = parse(line + "rest");
      REQUIRE(h.status == Status::complete);
      CHECK(h.local);
      CHECK(h.length == line.size());
      CHECK(h.source.ip.empty());
    }
  }

  TEST_CASE("PROXY v1: every malformed or over-long header is invalid") {
    const char* const bad[] = {
        "PROXY TCP4 198.51.100.7 192.0.2.25 40000 25\n",     // LF without CR
        "PROXY TCP4 198.51.100.7  192.0.2.25 40000 25\r\n",  // two spaces
        "PROXY TCP4 198.51.100.7 192.0.2.25 40000\r\n",      // a field missing
        "PROXY TCP4 198.51.100.7 192.0.2.25 40000 25 1\r\n", // one too many
        "PROXY TCP4 2001:db8::7 192.0.2.25 40000 25\r\n",    // IPv6 under TCP4
        "PROXY TCP6 198.51.100.7 2001:db8::1 40000 25\r\n",  // IPv4 under TCP6
        "PROXY TCP4 198.51.100.7 192.0.2.25 65536 25\r\n",   // port out of range
        "PROXY TCP4 198.51.100.7 192.0.2.25 040000 25\r\n",  // leading zero
        "PROXY TCP4 198.51.100.7 192.0.2.25 -1 25\r\n",      // not a number
        "PROXY TCP5 198.51.100.7 192.0.2.25 40000 25\r\n",   // no such protocol
        "PROXY tcp4 198.51.100.7 192.0.2.25 40000 25\r\n",   // case matters
        "PROXY TCP4 198.51.100.256 192.0.2.25 40000 25\r\n", // not an address
        "PROXY \r\n",
        "PROXYTCP4\r\n",
        "EHLO client.test\r\n", // a client that is no proxy
        "proxy TCP4 1.2.3.4 1.2.3.5 1 2\r\n",
    };
    for (const char* b : bad) {
      INFO(printable(b));
      smtpd::ProxyHeader h = parse(b);
      CHECK(h.status == Status::invalid);
      CHECK_FALSE(h.error.empty());
    }
    // 107 octets at most, CRLF included (§2.1): no line end within them is invalid at once.
    std::string longest = "PROXY UNKNOWN " + std::string(107 - 16, 'x') + "\r\n";
    REQUIRE(longest.size() == 107);
    CHECK(parse(longest).status == Status::complete);
    CHECK(parse(longest.substr(0, 106) + "x\r\n").status == Status::invalid);
    CHECK(parse("PROXY UNKNOWN " + std::string(200, 'x')).status == Status::invalid);
    CHECK(parse("PROXY UNKNOWN " + std::string(92, 'x')).status == Status::need_more);
  }

  TEST_CASE("PROXY v2: PROXY over TCP4 and TCP6, with TLVs skipped") {
    std::string header = v2(0x21, 0x11, v2_tcp4_block() + tlv(0x01, "h2") + tlv(0x04, ""));
    smtpd::ProxyHeader h = parse(header + "\x16\x03\x01 a ClientHello");
    REQUIRE(h.status == Status::complete);
    CHECK(h.version == 2);
    CHECK(h.length == header.size());
    CHECK_FALSE(h.local);
    CHECK(h.source.ip == "203.0.113.9");
    CHECK(h.source.port == 4567);
    CHECK(h.destination.ip == "192.0.2.1");
    CHECK(h.destination.port == 25);
    every_prefix_needs_more(header);

    std::string six = v2(0x21, 0x21, v2_tcp6_block());
    h = parse(six);
    REQUIRE(h.status == Status::complete);
    CHECK(h.source.ip == "2001:db8::9");
    CHECK(h.source.port == 4568);
    CHECK(h.destination.ip == "2001:db8::1");
    CHECK(h.destination.port == 587);
    every_prefix_needs_more(six);
  }

  TEST_CASE("PROXY v2: LOCAL, UNSPEC and UNIX keep the connection's addresses") {
    // LOCAL (a health check by the proxy itself): the block is ignored, whatever it holds (§2.2).
    for (const std::string& header :
         {v2(0x20, 0x00, ""), v2(0x20, 0x11, v2_tcp4_block()), v2(0x20, 0x00, "junk"),
          v2(0x20, 0x41, "x"), v2(0x21, 0x00, ""), v2(0x21, 0x00, tlv(0x04, "pad")),
          v2(0x21, 0x31, std::string(216, 'p'))}) {
      INFO(printable(header));
      smtpd::ProxyHeader h = parse(header);
      REQUIRE(h.status == Status::complete);
      CHECK(h.local);
      CHECK(h.length == header.size());
    }
  }

  TEST_CASE("PROXY v2: a bad version, command, family, length or TLV is invalid") {
    const std::string bad[] = {
        v2(0x11, 0x11, v2_tcp4_block()),               // version 1 in a v2 header
        v2(0x22, 0x11, v2_tcp4_block()),               // command 2
        v2(0x21, 0x12, v2_tcp4_block()),               // UDP: not SMTP
        v2(0x21, 0x41, v2_tcp4_block()),               // no such family
        v2(0x21, 0x10, v2_tcp4_block()),               // IPv4, no transport
        v2(0x21, 0x11, v2_tcp4_block().substr(0, 11)), // addresses cut short
        v2(0x21, 0x21, v2_tcp4_block()),               // 12 octets for IPv6
        v2(0x21, 0x11, v2_tcp4_block() + "\x01\x00"),  // a TLV without its length
        v2(0x21, 0x11, v2_tcp4_block() + tlv(1, "ab") + "\x02\x00\x05xy"), // value overruns
    };
    for (const std::string& b : bad) {
      INFO(printable(b));
      CHECK(parse(b).status == Status::invalid);
    }
    // The length field up to 65535: beyond the cap it is refused before any of it is read.
    std::string huge = v2(0x21, 0x11, v2_tcp4_block()).substr(0, 14) + "\xFF\xFF";
    CHECK(parse(huge).status == Status::invalid);
    std::string at_cap = v2(0x21, 0x11, v2_tcp4_block() + tlv(4, std::string(4096 - 16 - 15, 0)));
    REQUIRE(at_cap.size() == smtpd::max_proxy_v2_bytes);
    CHECK(parse(at_cap).status == Status::complete);
    std::string signature_wrong("\r\n\r\n\0\r\nQUIX\n", 12);
    CHECK(parse(signature_wrong).status == Status::invalid);
    CHECK(parse(std::string("\r\n\r\n", 4)).status == Status::need_more);
    CHECK(parse("").status == Status::need_more);
  }

  TEST_CASE("XCLIENT: refused from a client not on the list, and not advertised to it") {
    auto seen = std::make_shared<Recorded>();
    Session s(xclient_options(seen), "198.51.100.1");
    script(s, {
                  "C: EHLO client.test",
                  ehlo_reply,
                  "C: XCLIENT ADDR=203.0.113.9",
                  "S: 550 5.7.0 Insufficient authorization for XCLIENT",
              });
    CHECK(s.protocol.session().peer.ip == "198.51.100.1");
  }

  TEST_CASE("XCLIENT: a listed proxy names the client; the session starts over as it") {
    auto seen = std::make_shared<Recorded>();
    Session s(xclient_options(seen), "192.0.2.10");
    CHECK(s.greeting == "220 mx.test ESMTP smtpd\r\n");
    script(s, {
                  "C: EHLO proxy.test",
                  ehlo_reply_xclient,
                  "C: XCLIENT ADDR=203.0.113.9 PORT=4567 NAME=mail.example.org",
                  "S: 220 mx.test ESMTP smtpd",
                  "C: XCLIENT HELO=client.example DESTADDR=IPV6:2001:db8::25 DESTPORT=587",
                  "S: 220 mx.test ESMTP smtpd",
                  "C: MAIL FROM:<a@example.org>", // a fresh session: HELO first
                  "S: 503 Send HELO/EHLO first",
                  "C: HELO client.example",
                  "S: 250 mx.test",
                  "C: MAIL FROM:<a@example.org>",
                  "S: 250 Ok",
                  "C: RCPT TO:<b@example.net>",
                  "S: 250 Ok",
                  "C: DATA",
                  "S: 354 End data with <CR><LF>.<CR><LF>",
                  "C: Subject: hi\r\n\r\nbody\r\n.",
                  "S: 250 Ok: queued as XXXX",
              });
    const smtpd::SessionInfo& info = s.protocol.session();
    CHECK(info.peer.ip == "203.0.113.9");
    CHECK(info.peer.port == 4567);
    CHECK(info.peer.hostname == "mail.example.org");
    CHECK(info.local.ip == "2001:db8::25");
    CHECK(info.local.port == 587);
    CHECK(info.proxy.ip == "192.0.2.10");
    REQUIRE(seen->data.size() == 1);
    CHECK(seen->sessions[0].peer.ip == "203.0.113.9");
    CHECK(test::starts_with(seen->data[0],
                            "Received: from client.example (mail.example.org [203.0.113.9])\r\n"));
  }

  TEST_CASE("XCLIENT: inside a transaction, or malformed, changes nothing") {
    auto seen = std::make_shared<Recorded>();
    Session s(xclient_options(seen), "192.0.2.10");
    s.line("EHLO proxy.test");
    script(s, {
                  "C: XCLIENT",
                  "S: 501 5.5.4 Syntax: XCLIENT attribute=value...",
                  "C: XCLIENT FOO=bar",
                  "S: 501 5.5.4 Bad XCLIENT attribute: FOO=bar",
                  "C: XCLIENT ADDR",
                  "S: 501 5.5.4 Bad XCLIENT attribute: ADDR",
                  "C: XCLIENT ADDR=203.0.113.9 PORT=65536",
                  "S: 501 5.5.4 Bad XCLIENT attribute: PORT=65536",
                  "C: XCLIENT ADDR=203.0.113.300",
                  "S: 501 5.5.4 Bad XCLIENT attribute: ADDR=203.0.113.300",
                  "C: XCLIENT NAME=bad_name!",
                  "S: 501 5.5.4 Bad XCLIENT attribute: NAME=bad_name!",
                  "C: XCLIENT LOGIN=a+2",
                  "S: 501 5.5.4 Bad XCLIENT attribute: LOGIN=a+2",
                  "C: XCLIENT HELO=a+0D+0Ab",
                  "S: 501 5.5.4 Bad XCLIENT attribute: HELO=a+0D+0Ab",
                  "C: XCLIENT PROTO=LMTP",
                  "S: 501 5.5.4 Bad XCLIENT attribute: PROTO=LMTP",
                  "C: MAIL FROM:<a@example.org>",
                  "S: 250 2.1.0 Ok",
                  "C: XCLIENT ADDR=203.0.113.9",
                  "S: 503 5.5.1 MAIL transaction in progress",
              });
    CHECK(s.protocol.session().peer.ip == "192.0.2.10");
    CHECK(s.protocol.session().proxy.ip.empty());
  }

  TEST_CASE("XCLIENT: [UNAVAILABLE] and [TEMPUNAVAIL] clear; xtext is decoded") {
    auto seen = std::make_shared<Recorded>();
    Session s(xclient_options(seen), "192.0.2.10");
    CHECK(s.line("XCLIENT ADDR=[TEMPUNAVAIL] NAME=[UNAVAILABLE] LOGIN=a+2Bb+3Dc") ==
          "220 mx.test ESMTP smtpd\r\n");
    CHECK(s.protocol.session().peer.ip == "unknown");
    CHECK(s.protocol.session().peer.hostname.empty());
    CHECK(s.protocol.session().auth_user == "a+b=c");
    CHECK(s.line("XCLIENT LOGIN=[UNAVAILABLE] ADDR=IPV6:2001:DB8::9") ==
          "220 mx.test ESMTP smtpd\r\n");
    CHECK(s.protocol.session().peer.ip == "2001:db8::9");
    CHECK(s.protocol.session().auth_user.empty());
    CHECK(s.protocol.session().proxy.ip == "192.0.2.10"); // the connecting proxy, still
  }

  TEST_CASE("XCLIENT: LOGIN counts as authenticated for auth_required, and in Received") {
    auto seen = std::make_shared<Recorded>();
    smtpd::Options o = xclient_options(seen);
    o.auth_required = true;
    Session s(o, "192.0.2.10");
    script(s, {
                  "C: HELO proxy.test",
                  "S: 250 mx.test",
                  "C: MAIL FROM:<a@example.org>",
                  "S: 530 Authentication required",
                  "C: XCLIENT ADDR=203.0.113.9 LOGIN=alice PROTO=ESMTP",
                  "S: 220 mx.test ESMTP smtpd",
              });
    CHECK(test::contains(s.line("EHLO client.example"), "250 XCLIENT "));
    script(s, {
                  "C: MAIL FROM:<a@example.org>",
                  "S: 250 2.1.0 Ok",
                  "C: RCPT TO:<b@example.net>",
                  "S: 250 2.1.5 Ok",
                  "C: DATA",
                  "S: 354 End data with <CR><LF>.<CR><LF>",
                  "C: .",
                  "S: 250 2.0.0 Ok: queued as XXXX",
              });
    REQUIRE(seen->data.size() == 1);
    CHECK(seen->sessions[0].auth_user == "alice");
    CHECK(test::contains(seen->data[0], " with ESMTPA id "));
  }

  TEST_CASE("XCLIENT: the proxy's own AUTH is not handed to the client it names") {
    auto seen = std::make_shared<Recorded>();
    smtpd::Options o = xclient_options(seen);
    o.auth_insecure = true;
    o.on_auth = [](const smtpd::SessionInfo&, const std::string&, const std::string& user,
                   const std::string& password,
                   const std::string&) { return user == "proxy" && password == "pw"; };
    Session s(o, "192.0.2.10");
    s.line("EHLO proxy.test");
    CHECK(s.line("AUTH PLAIN AHByb3h5AHB3") == "235 2.7.0 Authentication successful\r\n");
    CHECK(s.protocol.session().auth_user == "proxy");
    s.line("XCLIENT ADDR=203.0.113.9");
    CHECK(s.protocol.session().auth_user.empty());
  }

  TEST_CASE("trusted networks are not held to tls_required or auth_required") {
    smtpd::Options o;
    o.tls_required = true;
    o.trusted_networks = {"10.0.0.0/8", "2001:db8::/32"};
    for (const char* ip : {"10.1.2.3", "2001:db8::5"}) {
      Session trusted(o, ip);
      trusted.line("EHLO client.test");
      CHECK(trusted.line("MAIL FROM:<a@example.org>") == "250 2.1.0 Ok\r\n");
    }
    Session outside(o, "192.0.2.1");
    outside.line("EHLO client.test");
    CHECK(outside.line("MAIL FROM:<a@example.org>") ==
          "530 5.7.0 Must issue a STARTTLS command first\r\n");

    smtpd::Options a;
    a.auth_required = true;
    a.trusted_networks = {"10.0.0.0/8"};
    Session t(a, "10.9.9.9");
    t.line("EHLO client.test");
    CHECK(t.line("MAIL FROM:<a@example.org>") == "250 2.1.0 Ok\r\n");
    Session u(a, "11.0.0.1");
    u.line("EHLO client.test");
    CHECK(u.line("MAIL FROM:<a@example.org>") == "530 5.7.0 Authentication required\r\n");
  }

  TEST_CASE("trust follows the client XCLIENT names, not the proxy") {
    auto seen = std::make_shared<Recorded>();
    smtpd::Options o = xclient_options(seen);
    o.auth_required = true;
    o.trusted_networks = {"192.0.2.0/24", "10.0.0.0/8"};
    Session s(o, "192.0.2.10");
    s.line("EHLO proxy.test");
    CHECK(s.line("MAIL FROM:<a@example.org>") == "250 2.1.0 Ok\r\n");
    s.line("RSET");
    s.line("XCLIENT ADDR=203.0.113.9");
    s.line("EHLO client.example");
    CHECK(s.line("MAIL FROM:<a@example.org>") == "530 5.7.0 Authentication required\r\n");
    s.line("XCLIENT ADDR=10.0.0.9");
    s.line("EHLO client.example");
    CHECK(s.line("MAIL FROM:<a@example.org>") == "250 2.1.0 Ok\r\n");
  }

  TEST_CASE("rate limits: a sliding minute per client and kind") {
    using Kind = smtpd::RateLimiter::Kind;
    smtpd::Options o;
    o.max_connection_rate = 3;
    o.limit_exempt_networks = {"10.0.0.0/8"};
    smtpd::RateLimiter rates(o);
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 3; ++i)
      CHECK(rates.allow(Kind::connection, "192.0.2.1", t0));
    CHECK_FALSE(rates.allow(Kind::connection, "192.0.2.1", t0 + 1s));
    CHECK(rates.allow(Kind::connection, "192.0.2.2", t0 + 1s)); // per address
    CHECK(rates.allow(Kind::message, "192.0.2.1", t0 + 1s));    // limit 0: none
    CHECK(rates.allow(Kind::connection, "10.1.1.1", t0));       // exempt
    for (int i = 0; i < 10; ++i)
      CHECK(rates.allow(Kind::connection, "10.1.1.1", t0));
    CHECK(rates.tracked() == 2); // the exempt address and the unlimited kind take no room
    // A minute later the last minute's three still count in full: refused.
    CHECK_FALSE(rates.allow(Kind::connection, "192.0.2.1", t0 + 60s));
    // Half a minute more, half of them: 1.5 + 1 is within 3.
    CHECK(rates.allow(Kind::connection, "192.0.2.1", t0 + 90s));
    // Two quiet minutes forget the address altogether.
    CHECK(rates.allow(Kind::connection, "192.0.2.9", t0 + 300s));
    CHECK(rates.tracked() == 1);
  }

  TEST_CASE("rate limits: the table stays bounded under a flood of addresses") {
    using Kind = smtpd::RateLimiter::Kind;
    smtpd::Options o;
    o.max_recipient_rate = 1;
    o.rate_table_size = 1000;
    smtpd::RateLimiter rates(o);
    auto t0 = std::chrono::steady_clock::now();
    CHECK(rates.allow(Kind::recipient, "192.0.2.1", t0));
    CHECK_FALSE(rates.allow(Kind::recipient, "192.0.2.1", t0));
    for (int i = 0; i < 100000; ++i) {
      std::string ip = "10." + std::to_string(i >> 16) + "." + std::to_string((i >> 8) & 255) +
                       "." + std::to_string(i & 255);
      CHECK(rates.allow(Kind::recipient, ip, t0 + 1s));
      if (rates.tracked() > 1000) FAIL("the table grew past its bound: ", rates.tracked());
    }
    CHECK(rates.tracked() == 1000);
    // The least recently seen address was evicted: it starts again from nothing.
    CHECK(rates.allow(Kind::recipient, "192.0.2.1", t0 + 2s));
  }

  TEST_CASE("rate limits: messages and recipients through the Protocol") {
    smtpd::Options o;
    o.max_message_rate = 2;
    o.max_recipient_rate = 3;
    o.limit_exempt_networks = {};
    smtpd::RateLimiter rates(o);
    Session s(o, "192.0.2.1", &rates);
    script(s, {
                  "C: EHLO client.test",
                  ehlo_reply,
                  "C: MAIL FROM:<a@example.org>",
                  "S: 250 2.1.0 Ok",
                  "C: RCPT TO:<b1@example.net>",
                  "S: 250 2.1.5 Ok",
                  "C: RCPT TO:<b2@example.net>",
                  "S: 250 2.1.5 Ok",
                  "C: RSET",
                  "S: 250 2.0.0 Ok",
                  "C: MAIL FROM:<a@example.org>",
                  "S: 250 2.1.0 Ok",
                  "C: RCPT TO:<b3@example.net>",
                  "S: 250 2.1.5 Ok",
                  "C: RCPT TO:<b4@example.net>",
                  "S: 450 4.7.1 Too many recipients from your address, try again later",
                  "C: RSET",
                  "S: 250 2.0.0 Ok",
                  "C: MAIL FROM:<a@example.org>",
                  "S: 450 4.7.1 Too much mail from your address, try again later",
              });
    // The same limiter in the next session: the counts are per client, not per session.
    Session again(o, "192.0.2.1", &rates);
    again.line("EHLO client.test");
    CHECK(again.line("MAIL FROM:<a@example.org>") ==
          "450 4.7.1 Too much mail from your address, try again later\r\n");
    Session other(o, "192.0.2.2", &rates);
    other.line("EHLO client.test");
    CHECK(other.line("MAIL FROM:<a@example.org>") == "250 2.1.0 Ok\r\n");
  }

  TEST_CASE("Server: a PROXY v1 header names the client for everything after it") {
    auto log = std::make_shared<Log>();
    smtpd::Options o = proxied(log);
    auto connected = std::make_shared<std::vector<std::string>>();
    auto mu = std::make_shared<std::mutex>();
    o.on_connect = [connected, mu](const smtpd::SessionInfo& s) -> std::optional<smtpd::Reply> {
      std::lock_guard<std::mutex> lock(*mu);
      connected->push_back(s.peer.to_string());
      return std::nullopt;
    };
    smtpd::TestServer server(o);
    test::Client c(server.port());
    REQUIRE(c.connected());
    c.send(v1_tcp4);
    c.expect(220); // the header is not early talk
    c.command("EHLO client.test");
    CHECK(test::reply_code(test::send_message(c, "a@example.org", "b@example.net", "hi\r\n")) ==
          250);
    REQUIRE(server.wait_for(1, 5s));
    smtpd::TestServer::Message m = server.messages()[0];
    CHECK(m.session.peer.to_string() == "198.51.100.7:40000");
    CHECK(m.session.local.to_string() == "192.0.2.25:25");
    CHECK(m.session.proxy.ip == "127.0.0.1");
    CHECK(test::starts_with(m.data, "Received: from client.test ([198.51.100.7])\r\n"));
    std::lock_guard<std::mutex> lock(*mu);
    CHECK(*connected == std::vector<std::string>{"198.51.100.7:40000"});
  }

  TEST_CASE("Server: bytes after the header are kept (v2 with TLVs, commands in the same write)") {
    auto log = std::make_shared<Log>();
    smtpd::Options o = proxied(log);
    o.reject_early_talkers = false;
    smtpd::TestServer server(o);
    test::Client c(server.port());
    REQUIRE(c.connected());
    std::string header = v2(0x21, 0x11, v2_tcp4_block() + tlv(0x02, "authority") + tlv(0x04, ""));
    c.send(header + "EHLO client.test\r\nNOOP\r\n");
    c.expect(220);
    std::string ehlo = c.expect(250);
    CHECK(test::starts_with(ehlo, "250-mx.test\r\n"));
    CHECK(c.read_reply() == "250 2.0.0 Ok\r\n");
    CHECK(test::reply_code(test::send_message(c, "a@example.org", "b@example.net", "hi\r\n")) ==
          250);
    REQUIRE(server.wait_for(1, 5s));
    CHECK(server.messages()[0].session.peer.to_string() == "203.0.113.9:4567");
  }

  TEST_CASE("Server: a v2 LOCAL header keeps the proxy's own address") {
    auto log = std::make_shared<Log>();
    smtpd::TestServer server(proxied(log));
    test::Client c(server.port());
    REQUIRE(c.connected());
    c.send(v2(0x20, 0x00, ""));
    c.expect(220);
    c.command("EHLO client.test");
    test::send_message(c, "a@example.org", "b@example.net", "hi\r\n");
    REQUIRE(server.wait_for(1, 5s));
    CHECK(server.messages()[0].session.peer.ip == "127.0.0.1");
    CHECK(server.messages()[0].session.proxy.ip.empty());
  }

  TEST_CASE("Server: a missing, malformed, over-long or slow header closes without a reply") {
    auto log = std::make_shared<Log>();
    smtpd::TestServer server(proxied(log));
    const std::string bad[] = {
        "EHLO client.test\r\n",
        "PROXY TCP4 198.51.100.7 192.0.2.25 40000 25\n",
        "PROXY UNKNOWN " + std::string(200, 'x'),
        v2(0x21, 0x11, v2_tcp4_block()).substr(0, 14) + "\xFF\xFF",
        v2(0x21, 0x11, v2_tcp4_block() + "\x01\x00"),
    };
    for (const std::string& b : bad) {
      INFO(printable(b));
      test::Client c(server.port());
      REQUIRE(c.connected());
      c.send(b);
      CHECK(closed_silently(c));
    }
    { // nothing at all: closed when proxy_timeout passes
      test::Client c(server.port());
      auto start = test::Clock::now();
      CHECK(closed_silently(c));
      CHECK(test::elapsed_ms(start) >= 400);
    }
    { // a header trickled in slower than proxy_timeout allows
      test::Client c(server.port());
      for (char ch : std::string("PROXY TCP4 198.51.100.7")) {
        if (!c.send(std::string(1, ch))) break;
        std::this_thread::sleep_for(40ms);
      }
      CHECK(closed_silently(c));
    }
    CHECK(log->any("no valid PROXY header: timed out"));
    CHECK(log->any("no valid PROXY header: v1 header over 107 octets"));
    CHECK(server.server().connections() <= 1);
  }

  TEST_CASE("Server: clients not on the list are served directly; PROXY is just unknown") {
    auto log = std::make_shared<Log>();
    smtpd::Options o = proxied(log);
    o.proxy_networks = {"192.0.2.0/24"};
    smtpd::TestServer server(o);
    test::Client c(server.port());
    REQUIRE(c.connected());
    c.expect(220);
    CHECK(c.command(v1_tcp4.substr(0, v1_tcp4.size() - 2)) == "500 Command not recognized\r\n");
    c.command("EHLO client.test");
    test::send_message(c, "a@example.org", "b@example.net", "hi\r\n");
    REQUIRE(server.wait_for(1, 5s));
    CHECK(server.messages()[0].session.peer.ip == "127.0.0.1");
  }

  TEST_CASE("Server: the per-IP limit counts the clients the headers name, not the proxy") {
    auto log = std::make_shared<Log>();
    smtpd::Options o = proxied(log);
    o.max_connections_per_ip = 2;
    o.limit_exempt_networks = {}; // not even loopback: the proxy itself is never counted
    smtpd::TestServer server(o);
    std::vector<std::unique_ptr<test::Client>> open;
    for (int i = 0; i < 2; ++i) {
      open.push_back(std::make_unique<test::Client>(server.port()));
      open.back()->send(proxy_line("198.51.100.1", 40000 + i));
      open.back()->expect(220);
    }
    test::Client third(server.port());
    third.send(proxy_line("198.51.100.1", 40002));
    CHECK(third.read_reply() == "421 Too many connections from your address, try again later\r\n");
    CHECK(third.wait_closed());
    for (int i = 0; i < 3; ++i) { // others behind the same proxy are served
      open.push_back(std::make_unique<test::Client>(server.port()));
      open.back()->send(proxy_line("198.51.100." + std::to_string(2 + i)));
      open.back()->expect(220);
    }
    CHECK(log->any("refused 198.51.100.1:40002: too many from its address"));
  }

  TEST_CASE("Server: the connection rate, per real client, and its table bounded") {
    auto log = std::make_shared<Log>();
    smtpd::Options o = proxied(log);
    o.max_connection_rate = 1;
    o.rate_table_size = 8;
    o.limit_exempt_networks = {};
    smtpd::TestServer server(o);
    auto connect_as = [&](const std::string& ip) {
      test::Client c(server.port());
      c.send(proxy_line(ip));
      std::string greeting = c.read_reply();
      c.command("QUIT");
      return greeting;
    };
    CHECK(connect_as("198.51.100.1") == "220 mx.test ESMTP smtpd\r\n");
    CHECK(connect_as("198.51.100.1") ==
          "421 Too many connections from your address per minute, try again later\r\n");
    CHECK(connect_as("198.51.100.2") == "220 mx.test ESMTP smtpd\r\n");
    // A flood of other addresses pushes the first out of the bounded table: it starts afresh.
    for (int i = 0; i < 20; ++i)
      CHECK(connect_as("203.0.113." + std::to_string(i)) == "220 mx.test ESMTP smtpd\r\n");
    CHECK(connect_as("198.51.100.1") == "220 mx.test ESMTP smtpd\r\n");
  }

  TEST_CASE("Server: bad networks in the new options are refused at construction") {
    for (auto set : std::vector<void (*)(smtpd::Options&)>{
             [](smtpd::Options& o) { o.proxy_networks = {"not-a-network"}; },
             [](smtpd::Options& o) { o.xclient_networks = {"10.0.0.0/33"}; },
             [](smtpd::Options& o) { o.trusted_networks = {"::1/129"}; },
             [](smtpd::Options& o) { o.proxy_timeout = 0ms; },
             [](smtpd::Options& o) { o.rate_table_size = 0; },
         }) {
      smtpd::Options o = test::loopback_options();
      set(o);
      CHECK_THROWS_AS(smtpd::Server{o}, std::invalid_argument);
    }
  }

} // TEST_SUITE
