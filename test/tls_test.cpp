// tls_test.cpp - TLS: STARTTLS (RFC 3207) and implicit TLS (RFC 8314) over loopback sockets,
// with throwaway certificates made at run time (tls_client.hpp), and the STARTTLS steps of the
// socket-free Protocol. Every socket has a receive timeout and every wait is bounded.
//
// Built without OpenSSL (SMTPD_NO_TLS) only one test remains: TLS settings are refused.
#include "test_client.hpp"

#include <doctest/doctest.h>

#include <stdexcept>
#include <string>

#ifdef SMTPD_NO_TLS

using namespace test;

TEST_SUITE("tls") {

  TEST_CASE("SMTPD_NO_TLS: a TLS certificate is refused and EHLO never offers STARTTLS") {
    smtpd::Options options = loopback_options();
    options.tls_cert_file = "cert.pem";
    options.tls_key_file = "key.pem";
    CHECK_THROWS_AS(smtpd::Server{options}, std::invalid_argument);

    for (bool with_cert : {false, true}) {
      smtpd::Options o = loopback_options();
      if (with_cert) {
        o.tls_cert_file = "cert.pem";
        o.tls_key_file = "key.pem";
      }
      smtpd::Protocol p(o, client_info());
      CHECK(starts_with(p.take_output(), "220 "));
      p.feed("EHLO client.example\r\n");
      std::string ehlo = p.take_output();
      CHECK(starts_with(ehlo, "250-mx.test\r\n"));
      CHECK_FALSE(contains(ehlo, "STARTTLS"));
      p.feed("STARTTLS\r\n");
      CHECK(p.take_output() == "502 5.5.1 Command not implemented\r\n");
      CHECK_FALSE(p.starttls_requested());
    }
  }
}

#else // TLS

#include "tls_client.hpp"

#include <filesystem>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

using namespace test;

namespace {

const char* const ready_220 = "220 2.0.0 Ready to start TLS\r\n";
const char* const greeting_220 = "220 mx.test ESMTP smtpd\r\n";
const char* const must_starttls_530 = "530 5.7.0 Must issue a STARTTLS command first\r\n";
const char* const queued_prefix = "250 2.0.0 Ok: queued as ";

// the_certs - the run's certificates; the test stops when they could not be made.
const Certs& the_certs() {
  const Certs& c = certs();
  REQUIRE_MESSAGE(c.ok(), c.error);
  return c;
}

// tls_options - loopback options with STARTTLS on, using the test server certificate.
smtpd::Options tls_options() {
  const Certs& c = the_certs();
  smtpd::Options options = loopback_options();
  options.tls_cert_file = c.server_cert;
  options.tls_key_file = c.server_key;
  return options;
}

// required - a client context that was made; the test stops when it could not be.
CtxPtr required(CtxPtr ctx) {
  REQUIRE(ctx);
  return ctx;
}

// verifying_client - a client context that verifies the server against the test CA (REQUIREd).
CtxPtr verifying_client(int max_version = 0) {
  ClientTls o;
  o.ca = the_certs().ca;
  o.max_version = max_version;
  return required(client_context(o));
}

// with_client_cert - a client context that verifies the server against the test CA and
// presents `cert` with `key` (REQUIREd).
CtxPtr with_client_cert(const std::string& cert, const std::string& key) {
  ClientTls o;
  o.ca = the_certs().ca;
  o.cert = cert;
  o.key = key;
  return required(client_context(o));
}

// Recorder - a MailHook that records the session each MAIL saw, under a mutex. Declare it
// before the TestServer that uses it.
class Recorder {
public:
  smtpd::MailHook mail_hook() {
    return [this](const smtpd::SessionInfo& session, const std::string&,
                  const smtpd::Params&) -> std::optional<smtpd::Reply> {
      std::lock_guard<std::mutex> lock(mu_);
      mail_sessions_.push_back(session);
      return std::nullopt;
    };
  }

  std::vector<smtpd::SessionInfo> mail_sessions() const {
    std::lock_guard<std::mutex> lock(mu_);
    return mail_sessions_;
  }

private:
  mutable std::mutex mu_;
  std::vector<smtpd::SessionInfo> mail_sessions_;
};

// client_ca_options - tls_options() that verify client certificates against the test CA, with
// `rec` as the MAIL hook.
smtpd::Options client_ca_options(Recorder& rec) {
  smtpd::Options options = tls_options();
  options.tls_client_ca_file = the_certs().ca;
  options.on_mail = rec.mail_hook();
  return options;
}

// the_message - the one message `ts` accepted (REQUIREd to be exactly one).
smtpd::TestServer::Message the_message(const smtpd::TestServer& ts) {
  std::vector<smtpd::TestServer::Message> got = ts.messages();
  REQUIRE(got.size() == 1);
  return got[0];
}

// the_mail_session - the session of the one MAIL `rec` saw (REQUIREd to be exactly one).
smtpd::SessionInfo the_mail_session(const Recorder& rec) {
  std::vector<smtpd::SessionInfo> mails = rec.mail_sessions();
  REQUIRE(mails.size() == 1);
  return mails[0];
}

// offers_starttls - the EHLO reply has a line that is exactly the STARTTLS keyword, in the
// middle ("250-STARTTLS") or last ("250 STARTTLS") of the reply.
bool offers_starttls(const std::string& ehlo_reply) {
  return contains("\r\n" + ehlo_reply, "\r\n250-STARTTLS\r\n") ||
         contains("\r\n" + ehlo_reply, "\r\n250 STARTTLS\r\n");
}

// ehlo - send EHLO and return the reply (CHECKed to be 250).
std::string ehlo(TlsClient& c, const std::string& name = "client.example") {
  std::string reply = c.command("EHLO " + name);
  CHECK_MESSAGE(reply_code(reply) == 250, "EHLO got: \"" << printable(reply) << "\"");
  return reply;
}

// greeted - the client is connected (REQUIREd) and got the plain-text greeting (CHECKed).
void greeted(TlsClient& c) {
  REQUIRE(c.connected());
  CHECK(c.read_reply() == greeting_220);
}

// plain_session - greeting and EHLO (each CHECKed): a plain-text session ready for commands.
void plain_session(TlsClient& c) {
  greeted(c);
  ehlo(c);
}

// ready_for_handshake - greeting, EHLO and STARTTLS answered with 220 (each CHECKed): the next
// bytes the client sends are its side of the handshake.
void ready_for_handshake(TlsClient& c) {
  plain_session(c);
  CHECK(c.command("STARTTLS") == ready_220);
}

// start_tls_session - greeting, EHLO, STARTTLS, handshake and EHLO again: true when all worked
// and the connection is ready for a transaction over TLS.
bool start_tls_session(TlsClient& c, SSL_CTX* ctx, const std::string& host = "localhost") {
  if (!c.connected()) return false;
  std::string greeting = c.read_reply();
  CHECK(greeting == greeting_220);
  if (reply_code(greeting) != 220) return false;
  if (reply_code(ehlo(c)) != 250) return false;
  bool ok = c.starttls(ctx, host);
  CHECK_MESSAGE(ok, "handshake failed: " << c.error());
  if (!ok) return false;
  return reply_code(ehlo(c)) == 250;
}

// drained - the server's connection count returns to zero within 5 s.
bool drained(smtpd::TestServer& ts) {
  return poll_until([&] { return ts.server().connections() == 0; }, 5s);
}

// still_serves - a fresh plain client is greeted and gets 250 to EHLO.
bool still_serves(smtpd::TestServer& ts) {
  TlsClient c(ts.port());
  return c.connected() && c.read_reply() == greeting_220 && reply_code(c.command("EHLO x")) == 250;
}

// what_throws - constructs a Server with `options` and tells what it threw ("" for nothing).
std::string what_throws(const smtpd::Options& options) {
  try {
    smtpd::Server server(options);
  } catch (const std::invalid_argument& e) {
    return std::string("std::invalid_argument: ") + e.what();
  } catch (const std::runtime_error& e) {
    return std::string("std::runtime_error: ") + e.what();
  } catch (const std::exception& e) {
    return std::string("std::exception: ") + e.what();
  } catch (...) { return "unknown exception"; }
  return "";
}

// client_hello - the first flight of a real TLS client (its ClientHello record).
std::string client_hello() {
  CtxPtr ctx = verifying_client();
  SSL* ssl = SSL_new(ctx.get());
  REQUIRE(ssl != nullptr);
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl, in, out);
  SSL_set_tlsext_host_name(ssl, "localhost");
  CHECK(SSL_connect(ssl) <= 0); // it wants the server's answer
  std::string hello;
  char chunk[4096];
  for (int n; (n = BIO_read(out, chunk, int(sizeof chunk))) > 0;)
    hello.append(chunk, std::size_t(n));
  SSL_free(ssl);
  return hello;
}

} // namespace

TEST_SUITE("tls") {

  // --- EHLO and the STARTTLS command -------------------------------------------------------------

  TEST_CASE("RFC 3207 §4: EHLO advertises 250-STARTTLS when a certificate is set, not once TLS "
            "is active") {
    smtpd::TestServer ts(tls_options());
    CtxPtr ctx = verifying_client();

    TlsClient c(ts.port());
    greeted(c);
    std::string before = ehlo(c);
    CHECK(starts_with(before, "250-mx.test\r\n"));
    CHECK(offers_starttls(before));
    REQUIRE(c.starttls(ctx.get()));
    std::string after = ehlo(c);
    CHECK(starts_with(after, "250-mx.test\r\n"));
    CHECK_FALSE(contains(after, "STARTTLS"));
    CHECK(contains(after, "PIPELINING"));
  }

  TEST_CASE("RFC 3207: without TLS configured EHLO never offers STARTTLS, and STARTTLS gets 502") {
    smtpd::TestServer ts(loopback_options());
    TlsClient c(ts.port());
    greeted(c);
    CHECK_FALSE(contains(ehlo(c), "STARTTLS"));
    CHECK(c.command("STARTTLS") == "502 5.5.1 Command not implemented\r\n");
    CHECK(c.command("NOOP") == "250 2.0.0 Ok\r\n");
  }

  TEST_CASE("RFC 3207 §4: STARTTLS takes no argument: 501 5.5.4 Syntax: STARTTLS") {
    smtpd::TestServer ts(tls_options());
    TlsClient c(ts.port());
    plain_session(c);
    CHECK(c.command("STARTTLS foo") == "501 5.5.4 Syntax: STARTTLS\r\n");
    // Still plain text and usable: STARTTLS proper works afterwards.
    CtxPtr ctx = verifying_client();
    CHECK(c.starttls(ctx.get()));
  }

  TEST_CASE("RFC 3207: STARTTLS before EHLO gets 503 Send HELO/EHLO first") {
    smtpd::TestServer ts(tls_options());
    TlsClient c(ts.port());
    greeted(c);
    std::string reply = c.command("STARTTLS");
    CHECK(reply_code(reply) == 503);
    CHECK(contains(reply, "Send HELO/EHLO first"));
    CHECK_FALSE(c.secure());
    // The session goes on in plain text.
    CHECK(offers_starttls(ehlo(c)));
  }

  TEST_CASE("RFC 3207: STARTTLS inside a mail transaction gets 503") {
    smtpd::TestServer ts(tls_options());
    TlsClient c(ts.port());
    plain_session(c);
    CHECK(c.command("MAIL FROM:<a@example.org>") == "250 2.1.0 Ok\r\n");
    std::string reply = c.command("STARTTLS");
    CHECK(reply_code(reply) == 503);
    CHECK(starts_with(reply, "503 5.5.1 "));
    // The transaction is still open and plain.
    CHECK(c.command("RCPT TO:<b@example.net>") == "250 2.1.5 Ok\r\n");
  }

  TEST_CASE("RFC 3207 §4.2: STARTTLS once TLS is active gets 503 5.5.1") {
    smtpd::TestServer ts(tls_options());
    CtxPtr ctx = verifying_client();
    TlsClient c(ts.port());
    REQUIRE(start_tls_session(c, ctx.get()));
    std::string reply = c.command("STARTTLS");
    CHECK(starts_with(reply, "503 5.5.1 "));
    CHECK(c.command("NOOP") == "250 2.0.0 Ok\r\n");
  }

  TEST_CASE("RFC 3207 §4.2: after the handshake the session is reset: EHLO again first, the "
            "earlier transaction is gone") {
    smtpd::TestServer ts(tls_options());
    CtxPtr ctx = verifying_client();

    TlsClient c(ts.port());
    plain_session(c);
    REQUIRE(c.starttls(ctx.get()));
    // No EHLO since the handshake: enhanced codes are not negotiated yet (RFC 2034), and the
    // HELO name of the plain-text part is forgotten.
    CHECK(c.command("MAIL FROM:<a@example.org>") == "503 Send HELO/EHLO first\r\n");
    CHECK(c.command("RCPT TO:<b@example.net>") == "503 Send HELO/EHLO first\r\n");
    ehlo(c, "second.example");
    // Nothing of a transaction survived: RCPT needs a MAIL given over TLS.
    CHECK(c.command("RCPT TO:<b@example.net>") == "503 5.5.1 Need MAIL command\r\n");
    CHECK(starts_with(send_message(c, "a@example.org", "b@example.net", "x\r\n"), queued_prefix));
    smtpd::TestServer::Message d = the_message(ts);
    CHECK(d.session.helo == "second.example");
    CHECK(d.session.tls);
  }

  TEST_CASE("RFC 3207 §4.2: commands pipelined before STARTTLS are answered; a transaction "
            "they opened refuses STARTTLS") {
    smtpd::TestServer ts(tls_options());
    TlsClient c(ts.port());
    plain_session(c);
    REQUIRE(c.send_raw("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nSTARTTLS\r\n"));
    CHECK(c.read_reply() == "250 2.1.0 Ok\r\n");
    CHECK(c.read_reply() == "250 2.1.5 Ok\r\n");
    CHECK(starts_with(c.read_reply(), "503 5.5.1 "));
    CHECK(c.command("RSET") == "250 2.0.0 Ok\r\n");
    CtxPtr ctx = verifying_client();
    REQUIRE(c.starttls(ctx.get()));
    ehlo(c);
    CHECK(c.command("RCPT TO:<b@example.net>") == "503 5.5.1 Need MAIL command\r\n");
  }

  // --- STARTTLS command injection ---------------------------------------------------------------

  TEST_CASE("CVE-2011-0411: commands pipelined after STARTTLS in plain text are discarded") {
    smtpd::TestServer ts(tls_options());
    CtxPtr ctx = verifying_client();

    TlsClient c(ts.port());
    plain_session(c);
    REQUIRE(c.send_raw("STARTTLS\r\nRSET\r\nMAIL FROM:<evil@x.test>\r\n"));
    CHECK(c.read_reply() == ready_220);
    std::this_thread::sleep_for(100ms);
    CHECK_MESSAGE(c.plain_pending() == 0,
                  "plain text after 220: \"" << printable(c.buffered()) << "\"");
    REQUIRE_MESSAGE(c.handshake(ctx.get()), c.error());
    CHECK(c.plain_leftover().empty());

    // The first thing over TLS is the answer to our EHLO: no stray 250s for RSET or MAIL.
    std::string reply = ehlo(c);
    CHECK(starts_with(reply, "250-mx.test\r\n"));
    CHECK(final_lines(reply) == 1);
    CHECK(c.buffered().empty());
    // No transaction was opened by the injected MAIL: ours is not "nested".
    CHECK(c.command("MAIL FROM:<good@x.test>") == "250 2.1.0 Ok\r\n");
    CHECK(c.command("RCPT TO:<b@example.net>") == "250 2.1.5 Ok\r\n");
    CHECK(c.command("DATA") == "354 End data with <CR><LF>.<CR><LF>\r\n");
    c.send("Subject: t\r\n\r\nbody\r\n.\r\n");
    CHECK(starts_with(c.read_reply(), queued_prefix));
    CHECK(c.command("NOOP") == "250 2.0.0 Ok\r\n");

    smtpd::TestServer::Message d = the_message(ts);
    CHECK(d.envelope.from == "good@x.test");
  }

  TEST_CASE("CVE-2011-0411: STARTTLS and the handshake's first bytes in one write") {
    // A client that does not wait for the 220 at all: whether the server serves it or cuts
    // it, it must not answer anything that was pipelined after STARTTLS, and it must not crash.
    smtpd::TestServer ts(tls_options());
    TlsClient c(ts.port());
    plain_session(c);
    REQUIRE(c.send_raw("STARTTLS\r\nNOOP\r\nNOOP\r\n" + client_hello()));
    CHECK(c.read_line() == ready_220);
    c.set_timeout(1s);
    c.wait_closed();
    CHECK_FALSE(contains(c.buffered(), "250"));
    c.close();
    CHECK(drained(ts));
    CHECK(still_serves(ts));
  }

  // --- a message over TLS -----------------------------------------------------------------------

  TEST_CASE("RFC 3207: a message over STARTTLS: SessionInfo has tls, version and cipher; "
            "Received says ESMTPS") {
    smtpd::TestServer ts(tls_options());
    CtxPtr ctx = verifying_client();

    TlsClient c(ts.port());
    REQUIRE(start_tls_session(c, ctx.get()));
    CHECK(c.version() == "TLSv1.3");
    CHECK(starts_with(send_message(c, "alice@example.org", "bob@example.net",
                                   "Subject: secret\r\n\r\nHi Bob.\r\n"),
                      queued_prefix));
    CHECK(c.command("QUIT") == "221 2.0.0 Bye\r\n");

    smtpd::TestServer::Message d = the_message(ts);
    CHECK(d.session.tls);
    CHECK(d.session.esmtp);
    CHECK(d.session.helo == "client.example");
    CHECK(d.session.tls_version == c.version());
    CHECK((d.session.tls_version == "TLSv1.3" || d.session.tls_version == "TLSv1.2"));
    CHECK_FALSE(d.session.tls_cipher.empty());
    CHECK(d.session.tls_cipher == c.cipher());
    CHECK(d.session.tls_peer_subject.empty());
    CHECK(d.envelope.from == "alice@example.org");
    CHECK(contains(d.data, " with ESMTPS id "));
    CHECK(contains(d.data, "\r\n\t(using TLSv1."));
    CHECK(contains(d.data, " with cipher " + c.cipher() + ")"));
    CHECK(ends_with(d.data, "\r\nSubject: secret\r\n\r\nHi Bob.\r\n"));
  }

  TEST_CASE("RFC 3207: the server certificate verifies for DNS:localhost and IP:127.0.0.1") {
    smtpd::TestServer ts(tls_options());
    CtxPtr ctx = verifying_client();
    for (const char* host : {"localhost", "127.0.0.1"}) {
      CAPTURE(host);
      TlsClient c(ts.port());
      REQUIRE(start_tls_session(c, ctx.get(), host));
      CHECK(contains(c.server_subject(), "CN=localhost"));
    }
    // And a wrong name fails on our side: the check is real.
    TlsClient wrong(ts.port());
    ready_for_handshake(wrong);
    CHECK_FALSE(wrong.handshake(ctx.get(), "mail.example.com"));
    wrong.close();
    CHECK(drained(ts));
  }

  TEST_CASE("RFC 3207: a TLS 1.2 client is served and the session says TLSv1.2") {
    smtpd::TestServer ts(tls_options());
    CtxPtr ctx = verifying_client(TLS1_2_VERSION);
    TlsClient c(ts.port());
    REQUIRE(start_tls_session(c, ctx.get()));
    CHECK(c.version() == "TLSv1.2");
    CHECK(starts_with(send_message(c, "a@example.org", "b@example.net", "x\r\n"), queued_prefix));
    smtpd::TestServer::Message d = the_message(ts);
    CHECK(d.session.tls_version == "TLSv1.2");
    CHECK(d.session.tls_cipher == c.cipher());
    CHECK(contains(d.data, "(using TLSv1.2 with cipher " + c.cipher() + ")"));
  }

  // --- tls_required -----------------------------------------------------------------------------

  TEST_CASE("RFC 3207 §4: tls_required: 530 5.7.0 before STARTTLS, except EHLO HELO NOOP RSET "
            "QUIT") {
    smtpd::Options options = tls_options();
    options.tls_required = true;
    smtpd::TestServer ts(options);
    CtxPtr ctx = verifying_client();

    TlsClient c(ts.port());
    greeted(c);
    CHECK(offers_starttls(ehlo(c)));
    for (const char* line : {"MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA",
                             "VRFY postmaster", "HELP", "EXPN list"}) {
      CAPTURE(line);
      CHECK(c.command(line) == must_starttls_530);
    }
    CHECK(c.command("NOOP") == "250 2.0.0 Ok\r\n");
    CHECK(c.command("RSET") == "250 2.0.0 Ok\r\n");
    CHECK(c.command("HELO client.example") == "250 mx.test\r\n");
    CHECK(offers_starttls(ehlo(c)));
    REQUIRE(c.starttls(ctx.get()));
    ehlo(c);
    CHECK(starts_with(send_message(c, "a@example.org", "b@example.net", "x\r\n"), queued_prefix));
    CHECK(c.command("VRFY postmaster") != must_starttls_530);
    CHECK(c.command("QUIT") == "221 2.0.0 Bye\r\n");
    CHECK(ts.messages().size() == 1);

    TlsClient quitter(ts.port());
    greeted(quitter);
    CHECK(quitter.command("QUIT") == "221 Bye\r\n"); // no EHLO: no enhanced code
    CHECK(quitter.wait_closed());
    CHECK(ts.messages().size() == 1);
  }

  // --- protocol versions ------------------------------------------------------------------------

  TEST_CASE("RFC 8996: tls_min_version defaults to TLSv1.2: a TLS 1.1 client fails") {
    smtpd::TestServer ts(tls_options());
    ClientTls old;
    old.max_version = TLS1_1_VERSION;
    old.security_level = 0; // let our side try TLS 1.1, so that the server is the one to refuse
    CtxPtr ctx = required(client_context(old));
    TlsClient c(ts.port());
    ready_for_handshake(c);
    CHECK_FALSE(c.handshake(ctx.get(), ""));
    MESSAGE("TLS 1.1 handshake: " << c.error());
    c.close();
    CHECK(drained(ts));
    CHECK(still_serves(ts));
  }

  TEST_CASE("RFC 8446: tls_min_version TLSv1.3 refuses a TLS 1.2 client and serves a TLS 1.3 "
            "one") {
    smtpd::Options options = tls_options();
    options.tls_min_version = "TLSv1.3";
    smtpd::TestServer ts(options);

    CtxPtr capped = verifying_client(TLS1_2_VERSION);
    TlsClient old(ts.port());
    ready_for_handshake(old);
    CHECK_FALSE(old.handshake(capped.get()));
    old.close();
    CHECK(drained(ts));

    CtxPtr modern = verifying_client();
    TlsClient c(ts.port());
    REQUIRE(start_tls_session(c, modern.get()));
    CHECK(c.version() == "TLSv1.3");
    CHECK(c.command("NOOP") == "250 2.0.0 Ok\r\n");
  }

  // --- implicit TLS -----------------------------------------------------------------------------

  TEST_CASE("RFC 8314 §3.3: implicit TLS: handshake first, then the greeting over TLS; no "
            "STARTTLS") {
    smtpd::Options options = tls_options();
    options.tls_implicit = true;
    smtpd::TestServer ts(options);
    CtxPtr ctx = verifying_client();

    TlsClient c(ts.port());
    REQUIRE(c.connected());
    REQUIRE_MESSAGE(c.handshake(ctx.get()), c.error());
    CHECK(c.version() == "TLSv1.3");
    CHECK(c.read_reply() == greeting_220);
    std::string reply = ehlo(c);
    CHECK(starts_with(reply, "250-mx.test\r\n"));
    CHECK_FALSE(contains(reply, "STARTTLS"));
    CHECK(starts_with(c.command("STARTTLS"), "503 5.5.1 "));
    CHECK(starts_with(send_message(c, "a@example.org", "b@example.net", "Subject: s\r\n\r\nx\r\n"),
                      queued_prefix));
    CHECK(c.command("QUIT") == "221 2.0.0 Bye\r\n");

    smtpd::TestServer::Message d = the_message(ts);
    CHECK(d.session.tls);
    CHECK(d.session.tls_version == "TLSv1.3");
    CHECK_FALSE(d.session.tls_cipher.empty());
    CHECK(contains(d.data, " with ESMTPS id "));
    CHECK(contains(d.data, "(using TLSv1.3 with cipher "));
  }

  TEST_CASE("RFC 8314: implicit TLS: a plain-text client is disconnected, the server lives on") {
    smtpd::Options options = tls_options();
    options.tls_implicit = true;
    smtpd::TestServer ts(options);

    TlsClient c(ts.port());
    REQUIRE(c.connected());
    REQUIRE(c.send_raw("EHLO x\r\n"));
    CHECK(c.wait_closed());
    CHECK_FALSE(contains(c.buffered(), "220"));
    CHECK_FALSE(contains(c.buffered(), "250"));
    c.close();
    CHECK(drained(ts));

    CtxPtr ctx = verifying_client();
    TlsClient good(ts.port());
    REQUIRE(good.handshake(ctx.get()));
    CHECK(good.read_reply() == greeting_220);
  }

  TEST_CASE("RFC 8314: implicit TLS: a client that sends nothing is cut after command_timeout") {
    smtpd::Options options = tls_options();
    options.tls_implicit = true;
    options.command_timeout = 300ms;
    smtpd::TestServer ts(options);

    TlsClient c(ts.port());
    REQUIRE(c.connected());
    auto start = Clock::now();
    CHECK(c.wait_closed());
    long long ms = elapsed_ms(start);
    CHECK(ms >= 200);
    CHECK(ms < 3000);
    CHECK(c.buffered().empty()); // no plain-text 421 on a TLS port
    c.close();
    CHECK(drained(ts));
  }

  // --- broken handshakes ------------------------------------------------------------------------

  TEST_CASE("RFC 3207: garbage instead of a ClientHello closes the connection; others are "
            "served") {
    smtpd::TestServer ts(tls_options());
    TlsClient c(ts.port());
    ready_for_handshake(c);
    REQUIRE(c.send_raw("HELLO THERE\r\n"));
    CHECK(c.wait_closed());
    CHECK_FALSE(contains(c.buffered(), "HELLO"));
    c.close();
    CHECK(drained(ts));
    CHECK(still_serves(ts));
  }

  TEST_CASE("RFC 3207: a client that disappears mid-handshake is cleaned up") {
    smtpd::TestServer ts(tls_options());
    std::string hello = client_hello();
    REQUIRE(hello.size() > 10);
    for (bool rst : {false, true}) {
      CAPTURE(rst);
      TlsClient c(ts.port());
      ready_for_handshake(c);
      REQUIRE(c.send_raw(hello.substr(0, hello.size() / 2)));
      std::this_thread::sleep_for(50ms);
      if (rst)
        c.reset();
      else
        c.close();
      CHECK(drained(ts));
    }
    CHECK(still_serves(ts));
  }

  TEST_CASE("RFC 5321 §4.5.3.2: a client that stalls mid-handshake is cut after command_timeout") {
    smtpd::Options options = tls_options();
    options.command_timeout = 300ms;
    smtpd::TestServer ts(options);
    std::string hello = client_hello();
    REQUIRE(hello.size() > 10);
    TlsClient c(ts.port());
    ready_for_handshake(c);
    REQUIRE(c.send_raw(hello.substr(0, hello.size() / 2)));
    auto start = Clock::now();
    CHECK(c.wait_closed());
    CHECK(elapsed_ms(start) < 3000);
    c.close();
    CHECK(drained(ts));
  }

  // --- client certificates ----------------------------------------------------------------------

  TEST_CASE("RFC 5246 §7.4.4: tls_client_ca_file: a CA-signed client certificate is verified "
            "and its subject reaches the hooks") {
    Recorder rec;
    smtpd::Options options = client_ca_options(rec);
    smtpd::TestServer ts(options);

    CtxPtr ctx = with_client_cert(the_certs().client_cert, the_certs().client_key);
    TlsClient c(ts.port());
    REQUIRE(start_tls_session(c, ctx.get()));
    CHECK(starts_with(send_message(c, "a@example.org", "b@example.net", "x\r\n"), queued_prefix));

    smtpd::SessionInfo mail = the_mail_session(rec);
    CHECK(mail.tls);
    CHECK(contains(mail.tls_peer_subject, "CN=test-client"));
    MESSAGE("tls_peer_subject: " << mail.tls_peer_subject);
    smtpd::TestServer::Message d = the_message(ts);
    CHECK(contains(d.session.tls_peer_subject, "CN=test-client"));
  }

  TEST_CASE("RFC 5246 §7.4.6: tls_client_ca_file: an unrelated self-signed client certificate "
            "is refused") {
    Recorder rec;
    smtpd::TestServer ts(client_ca_options(rec));

    CtxPtr ctx = with_client_cert(the_certs().rogue_cert, the_certs().rogue_key);
    TlsClient c(ts.port(), 2s);
    ready_for_handshake(c);
    // With TLS 1.3 the client finishes first and hears of the refusal at its next read.
    bool handshake = c.handshake(ctx.get());
    std::string reply = handshake ? c.command("EHLO client.example") : "";
    CHECK_MESSAGE(reply_code(reply) != 250, "a rogue certificate was served: " << printable(reply));
    MESSAGE("rogue client: handshake " << handshake << ", " << c.error());
    c.close();
    CHECK(drained(ts));
    CHECK(rec.mail_sessions().empty());
    CHECK(still_serves(ts));
  }

  TEST_CASE("tls_client_ca_file: a client without a certificate is still served") {
    Recorder rec;
    smtpd::TestServer ts(client_ca_options(rec));
    CtxPtr ctx = verifying_client();
    TlsClient c(ts.port());
    REQUIRE(start_tls_session(c, ctx.get()));
    CHECK(c.command("MAIL FROM:<a@example.org>") == "250 2.1.0 Ok\r\n");
    smtpd::SessionInfo mail = the_mail_session(rec);
    CHECK(mail.tls);
    CHECK(mail.tls_peer_subject.empty());
  }

  TEST_CASE("without tls_client_ca_file a client certificate is not asked for nor reported") {
    Recorder rec;
    smtpd::Options options = tls_options();
    options.on_mail = rec.mail_hook();
    smtpd::TestServer ts(options);
    CtxPtr ctx = with_client_cert(the_certs().client_cert, the_certs().client_key);
    TlsClient c(ts.port());
    REQUIRE(start_tls_session(c, ctx.get()));
    CHECK(c.command("MAIL FROM:<a@example.org>") == "250 2.1.0 Ok\r\n");
    smtpd::SessionInfo mail = the_mail_session(rec);
    CHECK(mail.tls_peer_subject.empty());
  }

  // --- keys and files ---------------------------------------------------------------------------

  TEST_CASE("tls_key_password: an encrypted key works with its passphrase; a wrong one throws") {
    smtpd::Options options = tls_options();
    options.tls_key_file = the_certs().server_key_encrypted;
    options.tls_key_password = the_certs().key_password;
    {
      smtpd::TestServer ts(options);
      CtxPtr ctx = verifying_client();
      TlsClient c(ts.port());
      REQUIRE(start_tls_session(c, ctx.get()));
      CHECK(c.command("NOOP") == "250 2.0.0 Ok\r\n");
    }
    options.tls_key_password = "wrong horse";
    std::string wrong = what_throws(options);
    CHECK_MESSAGE(!wrong.empty(), "a wrong passphrase was accepted");
    MESSAGE("wrong passphrase: " << wrong);
    options.tls_key_password = "";
    std::string none = what_throws(options);
    CHECK_MESSAGE(!none.empty(), "an encrypted key without a passphrase was accepted");
    MESSAGE("no passphrase: " << none);
  }

  TEST_CASE("unusable TLS files make the Server constructor throw") {
    const Certs& c = the_certs();

    struct Case {
      std::string what;
      std::string cert, key, client_ca;
    };

    const Case cases[] = {
        {"missing certificate", c.path("nope.pem"), c.server_key, ""},
        {"missing key", c.server_cert, c.path("nope.key"), ""},
        {"certificate is not PEM", c.garbage, c.server_key, ""},
        {"key is not PEM", c.server_cert, c.garbage, ""},
        {"key does not match the certificate", c.server_cert, c.client_key, ""},
        {"missing client CA file", c.server_cert, c.server_key, c.path("nope-ca.pem")},
    };
    for (const Case& k : cases) {
      CAPTURE(k.what);
      smtpd::Options options = loopback_options();
      options.tls_cert_file = k.cert;
      options.tls_key_file = k.key;
      options.tls_client_ca_file = k.client_ca;
      std::string thrown = what_throws(options);
      CHECK_MESSAGE(!thrown.empty(), k.what << " was accepted");
      MESSAGE(k.what << ": " << thrown);
    }
    smtpd::Options bad_version = tls_options();
    bad_version.tls_min_version = "TLSv1.1";
    CHECK_MESSAGE(!what_throws(bad_version).empty(), "tls_min_version TLSv1.1 was accepted");
    bad_version.tls_min_version = "bogus";
    CHECK_MESSAGE(!what_throws(bad_version).empty(), "tls_min_version bogus was accepted");
  }

  TEST_CASE("tls_context: a caller's SSL_CTX is used, and stays the caller's") {
    const Certs& certs = the_certs();
    CtxPtr server_ctx(SSL_CTX_new(TLS_server_method()));
    REQUIRE(server_ctx);
    REQUIRE(SSL_CTX_use_certificate_chain_file(server_ctx.get(), certs.first_cert.c_str()) == 1);
    REQUIRE(SSL_CTX_use_PrivateKey_file(server_ctx.get(), certs.first_key.c_str(),
                                        SSL_FILETYPE_PEM) == 1);
    {
      smtpd::Options options = loopback_options();
      options.tls_context = server_ctx.get();
      smtpd::TestServer ts(options);
      CtxPtr ctx = verifying_client();
      TlsClient c(ts.port());
      REQUIRE(start_tls_session(c, ctx.get()));
      CHECK(contains(c.server_subject(), "CN=first"));
      CHECK(c.command("QUIT") == "221 2.0.0 Bye\r\n");
    }
    // The server is gone; our context is still ours and usable (freed by CtxPtr, once).
    SSL* ssl = SSL_new(server_ctx.get());
    CHECK(ssl != nullptr);
    SSL_free(ssl);
  }

  // --- reload_tls -------------------------------------------------------------------------------

  TEST_CASE("reload_tls: new connections get the new certificate, open ones keep working, a "
            "broken file throws and keeps the old one") {
    const Certs& certs = the_certs();
    namespace fs = std::filesystem;
    std::string cert = certs.path("rotating.pem"), key = certs.path("rotating.key");
    auto install = [&](const std::string& from_cert, const std::string& from_key) {
      fs::copy_file(from_cert, cert, fs::copy_options::overwrite_existing);
      fs::copy_file(from_key, key, fs::copy_options::overwrite_existing);
    };
    install(certs.first_cert, certs.first_key);

    smtpd::Options options = loopback_options();
    options.tls_cert_file = cert;
    options.tls_key_file = key;
    smtpd::TestServer ts(options);
    CtxPtr ctx = verifying_client();

    TlsClient before(ts.port());
    REQUIRE(start_tls_session(before, ctx.get()));
    CHECK(contains(before.server_subject(), "CN=first"));

    install(certs.second_cert, certs.second_key);
    CHECK_NOTHROW(ts.server().reload_tls());
    {
      TlsClient after(ts.port());
      REQUIRE(start_tls_session(after, ctx.get()));
      CHECK(contains(after.server_subject(), "CN=second"));
    }
    // The connection made before the reload goes on.
    CHECK(starts_with(send_message(before, "a@example.org", "b@example.net", "x\r\n"),
                      queued_prefix));

    // A broken certificate file: reload throws, the server keeps CN=second.
    REQUIRE(write_file(cert, "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n"));
    CHECK_THROWS_AS(ts.server().reload_tls(), std::runtime_error);
    {
      TlsClient later(ts.port());
      REQUIRE(start_tls_session(later, ctx.get()));
      CHECK(contains(later.server_subject(), "CN=second"));
    }
    // A certificate whose key is not the one in the key file: refused as well.
    fs::copy_file(certs.first_cert, cert, fs::copy_options::overwrite_existing);
    CHECK_THROWS_AS(ts.server().reload_tls(), std::runtime_error);
    {
      TlsClient later(ts.port());
      REQUIRE(start_tls_session(later, ctx.get()));
      CHECK(contains(later.server_subject(), "CN=second"));
    }
    CHECK(before.command("NOOP") == "250 2.0.0 Ok\r\n");
    CHECK(ts.messages().size() == 1);
  }

  // --- closing ----------------------------------------------------------------------------------

  TEST_CASE("RFC 8446 §6.1: QUIT over TLS: 221 then a close_notify, not a bare TCP close") {
    for (bool implicit : {false, true}) {
      CAPTURE(implicit);
      smtpd::Options options = tls_options();
      options.tls_implicit = implicit;
      smtpd::TestServer ts(options);
      CtxPtr ctx = verifying_client();
      TlsClient c(ts.port());
      REQUIRE(c.connected());
      if (implicit) {
        REQUIRE(c.handshake(ctx.get()));
        CHECK(c.read_reply() == greeting_220);
        ehlo(c);
      } else {
        REQUIRE(start_tls_session(c, ctx.get()));
      }
      CHECK(c.command("QUIT") == "221 2.0.0 Bye\r\n");
      CHECK(c.recv_once() == 0);
      CHECK(c.last_read_error() == SSL_ERROR_ZERO_RETURN);
      CHECK_MESSAGE(c.got_close_notify(), "no close_notify: " << c.error());
      CHECK(c.buffered().empty());
      c.close();
      CHECK(drained(ts));
    }
  }

  TEST_CASE("RFC 5321 §3.8: shutdown() sends 421 over TLS to an idle TLS client") {
    smtpd::Options options = tls_options();
    smtpd::TestServer ts(options);
    CtxPtr ctx = verifying_client();
    TlsClient c(ts.port());
    REQUIRE(start_tls_session(c, ctx.get()));
    ts.server().shutdown(2s);
    CHECK(c.read_reply() == "421 4.3.2 Service shutting down, try again later\r\n");
    CHECK(c.wait_closed());
    CHECK(ts.server().connections() == 0);
  }

  TEST_CASE("close() cuts TLS connections in every state") {
    smtpd::Options options = tls_options();
    smtpd::TestServer ts(options);
    CtxPtr ctx = verifying_client();
    TlsClient idle(ts.port());
    REQUIRE(start_tls_session(idle, ctx.get()));
    TlsClient in_data(ts.port());
    REQUIRE(start_tls_session(in_data, ctx.get()));
    CHECK(in_data.command("MAIL FROM:<a@example.org>") == "250 2.1.0 Ok\r\n");
    CHECK(in_data.command("RCPT TO:<b@example.net>") == "250 2.1.5 Ok\r\n");
    CHECK(in_data.command("DATA") == "354 End data with <CR><LF>.<CR><LF>\r\n");
    TlsClient mid_handshake(ts.port());
    ready_for_handshake(mid_handshake);
    std::string hello = client_hello();
    REQUIRE(mid_handshake.send_raw(hello.substr(0, hello.size() / 2)));
    std::this_thread::sleep_for(50ms);

    auto start = Clock::now();
    ts.stop(); // close() and join
    CHECK(elapsed_ms(start) < 3000);
    CHECK(idle.wait_closed());
    CHECK(in_data.wait_closed());
    CHECK(mid_handshake.wait_closed());
  }

  // --- Protocol, no sockets ---------------------------------------------------------------------

  TEST_CASE("Protocol: STARTTLS discards what follows it and only the 220 is sent; tls_started "
            "resets the session") {
    smtpd::Options options = tls_options();
    smtpd::Protocol p(options, client_info());
    CHECK(p.take_output() == greeting_220);
    p.feed("EHLO client.example\r\n");
    std::string ehlo_reply = p.take_output();
    CHECK(offers_starttls(ehlo_reply));
    CHECK(p.session().esmtp);
    CHECK(p.session().helo == "client.example");
    CHECK_FALSE(p.starttls_requested());

    p.feed("STARTTLS\r\nNOOP\r\n");
    CHECK(p.starttls_requested());
    CHECK(p.take_output() == ready_220);
    CHECK_FALSE(p.should_close());
    p.feed("RSET\r\nMAIL FROM:<evil@x.test>\r\n"); // more, before the handshake: ignored
    CHECK_FALSE(p.has_output());

    p.tls_started("TLSv1.3", "TLS_AES_128_GCM_SHA256", "");
    CHECK_FALSE(p.starttls_requested());
    CHECK_FALSE(p.has_output()); // no second greeting (RFC 3207 §4.2)
    CHECK(p.session().tls);
    CHECK(p.session().tls_version == "TLSv1.3");
    CHECK(p.session().tls_cipher == "TLS_AES_128_GCM_SHA256");
    CHECK(p.session().tls_peer_subject.empty());
    CHECK(p.session().helo.empty());
    CHECK_FALSE(p.session().esmtp);
    CHECK(p.envelope().from.empty());
    CHECK(p.idle());

    p.feed("MAIL FROM:<a@example.org>\r\n");
    CHECK(p.take_output() == "503 Send HELO/EHLO first\r\n");
    p.feed("EHLO again.example\r\n");
    std::string after = p.take_output();
    CHECK(starts_with(after, "250-mx.test\r\n"));
    CHECK_FALSE(contains(after, "STARTTLS"));
    CHECK(p.session().helo == "again.example");
    p.feed("MAIL FROM:<a@example.org>\r\n");
    CHECK(p.take_output() == "250 2.1.0 Ok\r\n");
    p.feed("STARTTLS\r\n");
    CHECK(starts_with(p.take_output(), "503 5.5.1 "));
    CHECK_FALSE(p.starttls_requested());
  }

  TEST_CASE("Protocol: tls_started records the client certificate subject") {
    smtpd::Options options = tls_options();
    smtpd::Protocol p(options, client_info());
    p.take_output();
    p.feed("EHLO client.example\r\nSTARTTLS\r\n");
    CHECK(ends_with(p.take_output(), ready_220));
    REQUIRE(p.starttls_requested());
    p.tls_started("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", "CN=test-client,O=smtpd tests");
    CHECK(p.session().tls_version == "TLSv1.2");
    CHECK(p.session().tls_peer_subject == "CN=test-client,O=smtpd tests");
  }

  TEST_CASE("Protocol: tls_required answers 530 before STARTTLS") {
    smtpd::Options options = tls_options();
    options.tls_required = true;
    smtpd::Protocol p(options, client_info());
    p.take_output();
    p.feed("EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nNOOP\r\n");
    std::string out = p.take_output();
    CHECK(contains(out, "\r\n" + std::string(must_starttls_530) + "250 2.0.0 Ok\r\n"));
    p.feed("STARTTLS\r\n");
    CHECK(p.take_output() == ready_220);
    p.tls_started("TLSv1.3", "TLS_AES_256_GCM_SHA384", "");
    p.feed("EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n");
    CHECK(ends_with(p.take_output(), "\r\n250 2.1.0 Ok\r\n"));
  }

  TEST_CASE("Protocol: without TLS configured, STARTTLS is 502 and never requested") {
    smtpd::Options options = loopback_options(); // Protocol keeps a reference: must outlive it
    smtpd::Protocol p(options, client_info());
    p.take_output();
    p.feed("EHLO client.example\r\n");
    CHECK_FALSE(contains(p.take_output(), "STARTTLS"));
    p.feed("STARTTLS\r\n");
    CHECK(p.take_output() == "502 5.5.1 Command not implemented\r\n");
    CHECK_FALSE(p.starttls_requested());
  }
}

#endif // SMTPD_NO_TLS
