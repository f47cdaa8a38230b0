// bdat_server_test.cpp - BDAT (RFC 3030) over real loopback connections to smtpd::TestServer:
// pipelined binary chunks delivered byte-exact, and a client that vanishes or breaks TLS in
// the middle of a chunk, which must lose its partial message and nothing else (these run
// under ASan and TSan too). The protocol rules themselves are in extensions_test.cpp.
#include "../smtpd.hpp"
#include "test_client.hpp"
#ifndef SMTPD_NO_TLS
#include "tls_client.hpp"
#endif

#include <doctest/doctest.h>

#include <string>

using namespace test;
using namespace std::string_literals;

namespace {

// chunk - a BDAT command and its octets.
std::string chunk(const std::string& octets, bool last) {
  return "BDAT " + std::to_string(octets.size()) + (last ? " LAST" : "") + "\r\n" + octets;
}

// content - a delivered message without the Received header on top.
std::string content(const std::string& data) {
  std::size_t at = 0;
  while ((at = data.find("\r\n", at)) != std::string::npos && at + 2 < data.size() &&
         data[at + 2] == '\t')
    at += 2;
  return data.substr(at + 2);
}

// drained - the server's connection count returns to zero within 5 s.
bool drained(smtpd::TestServer& ts) {
  return poll_until([&] { return ts.server().connections() == 0; }, 5s);
}

const std::string envelope = "EHLO client.test\r\nMAIL FROM:<a@b.test> BODY=BINARYMIME\r\n"
                             "RCPT TO:<c@d.test>\r\n";

smtpd::Options binary_options() {
  smtpd::Options o = loopback_options();
  o.binarymime = true;
  return o;
}

} // namespace

TEST_SUITE("server") {

  TEST_CASE("RFC 3030 §4.2: pipelined binary chunks over a socket arrive byte-exact") {
    smtpd::TestServer ts(binary_options());
    Client c(ts.port());
    REQUIRE(c.connected());
    CHECK(reply_code(c.read_reply()) == 220);
    std::string binary;
    for (int i = 0; i < 70000; ++i) // every octet value, CR LF "." among them, past one read
      binary += char(i * 7 % 256);
    REQUIRE(send_all(c.fd(), envelope + chunk(binary.substr(0, 40000), false) +
                                 chunk(binary.substr(40000), true) + "QUIT\r\n"));
    CHECK(reply_code(c.read_reply()) == 250); // EHLO
    CHECK(c.read_reply() == "250 2.1.0 Ok\r\n");
    CHECK(c.read_reply() == "250 2.1.5 Ok\r\n");
    CHECK(c.read_reply() == "250 2.0.0 40000 octets received\r\n");
    CHECK(starts_with(c.read_reply(), "250 2.0.0 Ok: queued as "));
    CHECK(c.read_reply() == "221 2.0.0 Bye\r\n");
    REQUIRE(ts.wait_for(1, 5s));
    auto messages = ts.messages();
    CHECK(messages[0].envelope.chunked);
    CHECK(content(messages[0].data) == binary);
  }

  TEST_CASE("a client that vanishes in the middle of a chunk loses only its partial message") {
    smtpd::TestServer ts(binary_options());
    for (bool reset : {false, true}) {
      CAPTURE(reset);
      Client c(ts.port());
      REQUIRE(c.connected());
      CHECK(reply_code(c.read_reply()) == 220);
      REQUIRE(send_all(c.fd(), envelope + chunk("x", false) + "BDAT 1000 LAST\r\nonly a part"));
      CHECK(reply_code(c.read_reply()) == 250);
      CHECK(reply_code(c.read_reply()) == 250);
      CHECK(reply_code(c.read_reply()) == 250);
      CHECK(c.read_reply() == "250 2.0.0 1 octets received\r\n");
      if (reset)
        c.reset(); // TCP RST
      else
        c.close(); // FIN
      CHECK(drained(ts));
    }
    CHECK(ts.messages().empty());
    Client next(ts.port()); // the server is unharmed
    CHECK(reply_code(next.read_reply()) == 220);
    REQUIRE(send_all(next.fd(), envelope + chunk("whole", true)));
    for (int i = 0; i < 3; ++i)
      CHECK(reply_code(next.read_reply()) == 250);
    CHECK(starts_with(next.read_reply(), "250 2.0.0 Ok: queued as "));
    REQUIRE(ts.wait_for(1, 5s));
    CHECK(content(ts.messages()[0].data) == "whole");
  }

#ifndef SMTPD_NO_TLS
  TEST_CASE("a client that breaks TLS in the middle of a chunk loses only its partial message") {
    smtpd::Options o = binary_options();
    const Certs& certs = test::certs();
    REQUIRE_MESSAGE(certs.ok(), certs.error);
    o.tls_cert_file = certs.server_cert;
    o.tls_key_file = certs.server_key;
    smtpd::TestServer ts(o);
    ClientTls verify;
    verify.ca = certs.ca;
    CtxPtr ctx = client_context(verify);
    REQUIRE(ctx);
    TlsClient c(ts.port());
    REQUIRE(c.connected());
    CHECK(reply_code(c.read_reply()) == 220);
    CHECK(reply_code(c.command("EHLO client.test")) == 250);
    REQUIRE(c.starttls(ctx.get(), "localhost"));
    REQUIRE(c.send(envelope + "BDAT 500 LAST\r\nthe start of it"));
    CHECK(reply_code(c.read_reply()) == 250);
    CHECK(reply_code(c.read_reply()) == 250);
    CHECK(reply_code(c.read_reply()) == 250);
    CHECK(c.send_raw("\x17\x03\x03\x00\x10garbage-not-tls!"s)); // a forged TLS record
    CHECK(drained(ts));
    CHECK(ts.messages().empty());
  }
#endif

} // TEST_SUITE("server")
