// tls_ciphers_test.cpp - which TLS ciphers the server agrees to (Options::tls_ciphers and
// tls_ciphersuites): by default TLS 1.2 only with ECDHE key exchange (forward secrecy) and an
// AEAD cipher, never static RSA nor CBC; the options widen or narrow that, and a bad list makes
// the Server constructor throw. Real handshakes over loopback with OpenSSL clients limited to
// chosen ciphers (tls_client.hpp), so the server is the side that decides.
//
// Built without OpenSSL (SMTPD_NO_TLS): lists other than the defaults are refused.
#include "test_client.hpp"

#include <doctest/doctest.h>

#include <stdexcept>
#include <string>

#ifdef SMTPD_NO_TLS

using namespace test;

TEST_SUITE("tls") {

  TEST_CASE("SMTPD_NO_TLS: tls_ciphers and tls_ciphersuites other than the defaults are refused") {
    CHECK_NOTHROW(smtpd::Server{loopback_options()});

    smtpd::Options ciphers = loopback_options();
    ciphers.tls_ciphers = "AES128-SHA";
    CHECK_THROWS_AS(smtpd::Server{ciphers}, std::invalid_argument);

    smtpd::Options suites = loopback_options();
    suites.tls_ciphersuites = "TLS_AES_128_GCM_SHA256";
    CHECK_THROWS_AS(smtpd::Server{suites}, std::invalid_argument);

    smtpd::Options none = loopback_options();
    none.tls_ciphersuites = "";
    CHECK_THROWS_AS(smtpd::Server{none}, std::invalid_argument);
  }
}

#else // TLS

#include "tls_client.hpp"

#include <filesystem>
#include <vector>

using namespace test;

namespace {

// RsaCert - a self-signed RSA certificate (CN=localhost) and its key, made once per run with
// the openssl command line in a temporary directory removed at exit. The test CA's
// certificates are ECDSA, and static-RSA key exchange needs an RSA key to exist at all.
struct RsaCert {
  std::string dir, cert, key, error;

  RsaCert() {
    dir = test::make_temp_dir("smtpd-rsa", error);
    if (dir.empty()) return;
    cert = dir + "/cert.pem";
    key = dir + "/key.pem";
    std::string command = "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost "
                          "-keyout '" +
                          key + "' -out '" + cert + "' >'" + dir + "/openssl.log' 2>&1 </dev/null";
    if (std::system(command.c_str()) != 0) error = "openssl req failed (see " + dir + ")";
  }

  ~RsaCert() {
    std::error_code ignored;
    if (!dir.empty()) std::filesystem::remove_all(dir, ignored);
  }

  RsaCert(const RsaCert&) = delete;
  RsaCert& operator=(const RsaCert&) = delete;
};

// rsa_cert - the run's RSA certificate; the test stops when it could not be made.
const RsaCert& rsa_cert() {
  static RsaCert made;
  REQUIRE_MESSAGE(made.error.empty(), made.error);
  return made;
}

// ecdsa_options - loopback options with STARTTLS on, using the test CA's (ECDSA) server
// certificate.
smtpd::Options ecdsa_options() {
  const Certs& c = certs();
  REQUIRE_MESSAGE(c.ok(), c.error);
  smtpd::Options options = loopback_options();
  options.tls_cert_file = c.server_cert;
  options.tls_key_file = c.server_key;
  return options;
}

// rsa_options - the same with the RSA certificate.
smtpd::Options rsa_options() {
  smtpd::Options options = loopback_options();
  options.tls_cert_file = rsa_cert().cert;
  options.tls_key_file = rsa_cert().key;
  return options;
}

// tls12_client - a client context for TLS 1.2 only that offers just `ciphers` (OpenSSL names),
// so that whether a handshake works depends on the server's list alone. The certificate is not
// verified: these tests are about ciphers.
CtxPtr tls12_client(const std::string& ciphers) {
  ClientTls o;
  o.min_version = TLS1_2_VERSION;
  o.max_version = TLS1_2_VERSION;
  CtxPtr ctx = client_context(o);
  REQUIRE(ctx);
  REQUIRE_MESSAGE(SSL_CTX_set_cipher_list(ctx.get(), ciphers.c_str()) == 1,
                  "client cipher list " << ciphers << ": " << openssl_errors());
  return ctx;
}

// tls13_client - a client context for TLS 1.3 only that offers just `suites`.
CtxPtr tls13_client(const std::string& suites) {
  ClientTls o;
  o.min_version = TLS1_3_VERSION;
  CtxPtr ctx = client_context(o);
  REQUIRE(ctx);
  REQUIRE_MESSAGE(SSL_CTX_set_ciphersuites(ctx.get(), suites.c_str()) == 1,
                  "client suites " << suites << ": " << openssl_errors());
  return ctx;
}

// negotiate - greeting, EHLO, STARTTLS and a handshake with `ctx` against `ts`: the cipher
// agreed on, or "refused: <why>" when the handshake failed. After a success the session is
// checked to go on (EHLO over TLS gets 250).
std::string negotiate(smtpd::TestServer& ts, SSL_CTX* ctx) {
  TlsClient c(ts.port());
  REQUIRE(c.connected());
  CHECK(reply_code(c.read_reply()) == 220);
  CHECK(reply_code(c.command("EHLO client.example")) == 250);
  if (!c.starttls(ctx, "")) return "refused: " + c.error();
  CHECK(reply_code(c.command("EHLO client.example")) == 250);
  CHECK(c.command("QUIT") == "221 2.0.0 Bye\r\n");
  return c.cipher();
}

// refused - negotiate() failed.
bool refused(const std::string& negotiated) {
  return starts_with(negotiated, "refused: ");
}

// thrown - what constructing a Server with `options` threw as std::invalid_argument ("" for
// nothing; another exception fails the test).
std::string thrown(const smtpd::Options& options) {
  try {
    smtpd::Server server(options);
  } catch (const std::invalid_argument& e) { return e.what(); }
  return "";
}

} // namespace

TEST_SUITE("tls") {

  // --- the defaults -----------------------------------------------------------------------------

  TEST_CASE("tls_ciphers default: every TLS 1.2 cipher in it has ECDHE key exchange and is AEAD") {
    const smtpd::Options defaults;
    CtxPtr ctx(SSL_CTX_new(TLS_server_method()));
    REQUIRE(ctx);
    REQUIRE(SSL_CTX_set_cipher_list(ctx.get(), defaults.tls_ciphers.c_str()) == 1);
    REQUIRE(SSL_CTX_set_ciphersuites(ctx.get(), defaults.tls_ciphersuites.c_str()) == 1);
    STACK_OF(SSL_CIPHER)* list = SSL_CTX_get_ciphers(ctx.get());
    int tls12 = 0, tls13 = 0;
    for (int i = 0; i < sk_SSL_CIPHER_num(list); ++i) {
      const SSL_CIPHER* cipher = sk_SSL_CIPHER_value(list, i);
      std::string name = SSL_CIPHER_get_name(cipher);
      CAPTURE(name);
      CHECK(SSL_CIPHER_is_aead(cipher) == 1);
      if (std::string(SSL_CIPHER_get_version(cipher)) == "TLSv1.3") {
        ++tls13;
        continue;
      }
      ++tls12;
      CHECK(SSL_CIPHER_get_kx_nid(cipher) == NID_kx_ecdhe);
    }
    CHECK(tls12 == 6);
    CHECK(tls13 == 3);
  }

  TEST_CASE("default ciphers: TLS 1.2 static RSA key exchange is refused (no forward secrecy)") {
    smtpd::TestServer ts(rsa_options());
    for (const char* cipher :
         {"AES256-GCM-SHA384", "AES128-GCM-SHA256", "AES128-SHA", "AES256-SHA256"}) {
      CAPTURE(cipher);
      CtxPtr ctx = tls12_client(cipher);
      std::string negotiated = negotiate(ts, ctx.get());
      CHECK_MESSAGE(refused(negotiated), "negotiated " << negotiated);
    }
  }

  TEST_CASE("default ciphers: TLS 1.2 CBC ciphers are refused even with ECDHE (Lucky Thirteen)") {
    smtpd::TestServer rsa(rsa_options());
    for (const char* cipher : {"ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA384"}) {
      CAPTURE(cipher);
      CtxPtr ctx = tls12_client(cipher);
      std::string negotiated = negotiate(rsa, ctx.get());
      CHECK_MESSAGE(refused(negotiated), "negotiated " << negotiated);
    }
    smtpd::TestServer ecdsa(ecdsa_options());
    for (const char* cipher : {"ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384"}) {
      CAPTURE(cipher);
      CtxPtr ctx = tls12_client(cipher);
      std::string negotiated = negotiate(ecdsa, ctx.get());
      CHECK_MESSAGE(refused(negotiated), "negotiated " << negotiated);
    }
  }

  TEST_CASE("default ciphers: TLS 1.2 ECDHE with AES-GCM or ChaCha20-Poly1305 works, for RSA "
            "and ECDSA certificates") {
    smtpd::TestServer rsa(rsa_options());
    for (const char* cipher : {"ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
                               "ECDHE-RSA-CHACHA20-POLY1305"}) {
      CtxPtr ctx = tls12_client(cipher);
      CHECK(negotiate(rsa, ctx.get()) == cipher);
    }
    smtpd::TestServer ecdsa(ecdsa_options());
    for (const char* cipher : {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                               "ECDHE-ECDSA-CHACHA20-POLY1305"}) {
      CtxPtr ctx = tls12_client(cipher);
      CHECK(negotiate(ecdsa, ctx.get()) == cipher);
    }
  }

  TEST_CASE("default ciphers: the server's order wins: AES-256-GCM before AES-128-GCM") {
    smtpd::TestServer ts(rsa_options());
    CtxPtr ctx = tls12_client("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384");
    CHECK(negotiate(ts, ctx.get()) == "ECDHE-RSA-AES256-GCM-SHA384");
  }

  TEST_CASE("default suites: TLS 1.3 works with each of OpenSSL's default suites") {
    smtpd::TestServer ts(ecdsa_options());
    for (const char* suite :
         {"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"}) {
      CtxPtr ctx = tls13_client(suite);
      CHECK(negotiate(ts, ctx.get()) == suite);
    }
  }

  // --- the options ------------------------------------------------------------------------------

  TEST_CASE("tls_ciphers: a list that allows static RSA and CBC lets such a client in") {
    smtpd::Options options = rsa_options();
    options.tls_ciphers = options.tls_ciphers + ":AES128-SHA";
    smtpd::TestServer ts(options);
    CtxPtr old_client = tls12_client("AES128-SHA");
    CHECK(negotiate(ts, old_client.get()) == "AES128-SHA");
    CtxPtr modern = tls12_client("AES128-SHA:ECDHE-RSA-AES128-GCM-SHA256");
    CHECK(negotiate(ts, modern.get()) == "ECDHE-RSA-AES128-GCM-SHA256"); // still preferred
  }

  TEST_CASE("tls_ciphers: a narrower list refuses what it leaves out") {
    smtpd::Options options = ecdsa_options();
    options.tls_ciphers = "ECDHE-ECDSA-CHACHA20-POLY1305";
    smtpd::TestServer ts(options);
    CtxPtr left_out = tls12_client("ECDHE-ECDSA-AES256-GCM-SHA384");
    CHECK(refused(negotiate(ts, left_out.get())));
    CtxPtr kept = tls12_client("ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305");
    CHECK(negotiate(ts, kept.get()) == "ECDHE-ECDSA-CHACHA20-POLY1305");
  }

  TEST_CASE("tls_ciphersuites: the TLS 1.3 suites are the ones given; \"\" leaves TLS 1.2") {
    smtpd::Options options = ecdsa_options();
    options.tls_ciphersuites = "TLS_CHACHA20_POLY1305_SHA256";
    {
      smtpd::TestServer ts(options);
      CtxPtr left_out = tls13_client("TLS_AES_256_GCM_SHA384");
      CHECK(refused(negotiate(ts, left_out.get())));
      CtxPtr both = tls13_client("TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
      CHECK(negotiate(ts, both.get()) == "TLS_CHACHA20_POLY1305_SHA256");
    }
    options.tls_ciphersuites = "";
    smtpd::TestServer ts(options);
    CtxPtr tls13 = tls13_client("TLS_AES_256_GCM_SHA384");
    CHECK(refused(negotiate(ts, tls13.get())));
    TlsClient c(ts.port());
    ClientTls any;
    CtxPtr ctx = client_context(any);
    REQUIRE(ctx);
    CHECK(reply_code(c.read_reply()) == 220);
    CHECK(reply_code(c.command("EHLO client.example")) == 250);
    REQUIRE(c.starttls(ctx.get(), ""));
    CHECK(c.version() == "TLSv1.2");
  }

  TEST_CASE("tls_ciphers and tls_ciphersuites do not apply to a tls_context") {
    const Certs& c = certs();
    REQUIRE_MESSAGE(c.ok(), c.error);
    CtxPtr own(SSL_CTX_new(TLS_server_method()));
    REQUIRE(own);
    REQUIRE(SSL_CTX_use_certificate_chain_file(own.get(), c.server_cert.c_str()) == 1);
    REQUIRE(SSL_CTX_use_PrivateKey_file(own.get(), c.server_key.c_str(), SSL_FILETYPE_PEM) == 1);
    REQUIRE(SSL_CTX_set_cipher_list(own.get(), "ECDHE-ECDSA-AES128-SHA") == 1);
    smtpd::Options options = loopback_options();
    options.tls_context = own.get();
    smtpd::TestServer ts(options);
    CtxPtr cbc = tls12_client("ECDHE-ECDSA-AES128-SHA");
    CHECK(negotiate(ts, cbc.get()) == "ECDHE-ECDSA-AES128-SHA"); // the context's own list
  }

  TEST_CASE("an invalid tls_ciphers or tls_ciphersuites makes the Server constructor throw, "
            "with or without a certificate") {
    struct Case {
      std::string what;
      std::string ciphers, suites, min_version;
    };

    const smtpd::Options defaults;
    const std::string c12 = defaults.tls_ciphers, c13 = defaults.tls_ciphersuites;
    const Case bad[] = {
        {"ciphers: unknown name", "NO-SUCH-CIPHER", c13, "TLSv1.2"},
        {"ciphers: empty", "", c13, "TLSv1.2"},
        {"ciphers: only TLS 1.3 names", "TLS_AES_128_GCM_SHA256", c13, "TLSv1.2"},
        {"ciphers: not in this OpenSSL (RC4)", "RC4-MD5", c13, "TLSv1.2"},
        {"suites: unknown name", c12, "TLS_NO_SUCH_SUITE", "TLSv1.2"},
        {"suites: one unknown among known", c12, "TLS_AES_128_GCM_SHA256:TLS_BOGUS", "TLSv1.2"},
        {"suites: a TLS 1.2 name", c12, "ECDHE-RSA-AES128-GCM-SHA256", "TLSv1.2"},
        {"suites: a TLS 1.2 suite's RFC name", c12, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
         "TLSv1.2"},
        {"suites: lower case", c12, "tls_aes_128_gcm_sha256", "TLSv1.2"},
        {"suites: empty with tls_min_version TLSv1.3", c12, "", "TLSv1.3"},
    };
    for (const Case& k : bad) {
      CAPTURE(k.what);
      for (bool with_cert : {false, true}) {
        CAPTURE(with_cert);
        smtpd::Options options = with_cert ? ecdsa_options() : loopback_options();
        options.tls_ciphers = k.ciphers;
        options.tls_ciphersuites = k.suites;
        options.tls_min_version = k.min_version;
        std::string what = thrown(options);
        CHECK_MESSAGE(starts_with(what, "smtpd: tls_ciphers"),
                      k.what << ": threw \"" << what << "\"");
      }
    }
    const Case good[] = {
        {"ciphers: OpenSSL's keywords", "HIGH:!aNULL:!kRSA", c13, "TLSv1.2"},
        {"suites: one, with spaces and an empty entry", c12,
         " TLS_AES_128_GCM_SHA256 :", "TLSv1.2"},
        {"suites: empty: no TLS 1.3", c12, "", "TLSv1.2"},
        {"suites: CCM, not in the default", c12, "TLS_AES_128_CCM_SHA256", "TLSv1.3"},
    };
    for (const Case& k : good) {
      CAPTURE(k.what);
      smtpd::Options options = ecdsa_options();
      options.tls_ciphers = k.ciphers;
      options.tls_ciphersuites = k.suites;
      options.tls_min_version = k.min_version;
      CHECK(thrown(options) == "");
    }
  }
}

#endif // SMTPD_NO_TLS
