// auth_test.cpp - SMTP AUTH (RFC 4954) with the PLAIN (RFC 4616), LOGIN and CRAM-MD5 (RFC 2195)
// mechanisms. Most cases drive smtpd::Protocol directly with strings: what EHLO advertises and
// when (§3, §4: no clear-text passwords without TLS), each mechanism's dialogue, the refusals
// (§4, §6: 501 535 538 503 504), auth_required (§6: 530), the failure limit and its delay, the
// 12288-octet line limit (§4), masking in the logs, MAIL's AUTH= parameter (§5) and STARTTLS
// forgetting the authentication (RFC 3207 §4.2). The last cases run a Server on 127.0.0.1.
//
// CRAM-MD5 challenges are random, so RFC 2195's example cannot be replayed: the expected
// digest is computed here with OpenSSL's HMAC (itself checked against RFC 2195's example) in a
// TLS build; a build without OpenSSL still checks every refusal.
#include "../smtpd.hpp"
#include "protocol_helpers.hpp"
#include "test_client.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <cstddef>
#include <optional>
#include <regex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#ifndef SMTPD_NO_TLS
#include <openssl/evp.h>
#include <openssl/hmac.h>
#endif

using namespace std::string_literals;
using namespace std::chrono_literals;

namespace {

using test::client_info;
using test::mask_ids;
using test::printable;

// ---- base64 (RFC 4648 §4), written out so the tests do not trust the library's own ------------

const char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string b64(std::string_view bytes) {
  std::string out;
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    unsigned v = unsigned(static_cast<unsigned char>(bytes[i])) << 16 |
                 unsigned(static_cast<unsigned char>(bytes[i + 1])) << 8 |
                 unsigned(static_cast<unsigned char>(bytes[i + 2]));
    out += b64_alphabet[v >> 18 & 63];
    out += b64_alphabet[v >> 12 & 63];
    out += b64_alphabet[v >> 6 & 63];
    out += b64_alphabet[v & 63];
  }
  std::size_t left = bytes.size() - i;
  if (left == 1) {
    unsigned v = unsigned(static_cast<unsigned char>(bytes[i])) << 16;
    out += b64_alphabet[v >> 18 & 63];
    out += b64_alphabet[v >> 12 & 63];
    out += "==";
  } else if (left == 2) {
    unsigned v = unsigned(static_cast<unsigned char>(bytes[i])) << 16 |
                 unsigned(static_cast<unsigned char>(bytes[i + 1])) << 8;
    out += b64_alphabet[v >> 18 & 63];
    out += b64_alphabet[v >> 12 & 63];
    out += b64_alphabet[v >> 6 & 63];
    out += '=';
  }
  return out;
}

// unb64 - decode padded base64; nullopt on anything else.
std::optional<std::string> unb64(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  std::string out;
  for (std::size_t i = 0; i < text.size(); i += 4) {
    unsigned v = 0;
    int pad = 0;
    for (std::size_t j = 0; j < 4; ++j) {
      char c = text[i + j];
      unsigned digit = 0;
      if (c == '=' && i + 4 == text.size() && j >= 2) {
        ++pad;
      } else {
        const char* at = std::char_traits<char>::find(b64_alphabet, 64, c);
        if (at == nullptr || pad > 0) return std::nullopt;
        digit = unsigned(at - b64_alphabet);
      }
      v = v << 6 | digit;
    }
    out += char(v >> 16 & 0xFF);
    if (pad < 2) out += char(v >> 8 & 0xFF);
    if (pad < 1) out += char(v & 0xFF);
  }
  return out;
}

// ---- fixed texts ---------------------------------------------------------------------------

const std::string plain_alice = b64("\0alice\0wonderland"s); // AGFsaWNlAHdvbmRlcmxhbmQ=
const std::string plain_wrong = b64("\0alice\0guess"s);
const std::string ok_235 = "235 2.7.0 Authentication successful\r\n";
const std::string bad_535 = "535 5.7.8 Authentication credentials invalid\r\n";
const std::string cannot_decode_501 = "501 5.5.2 Cannot decode response\r\n";
const std::string cancelled_501 = "501 5.0.0 Authentication cancelled\r\n";
const std::string unrecognized_504 = "504 5.5.4 Unrecognized authentication type\r\n";
const std::string required_530 = "530 5.7.0 Authentication required\r\n";
const std::string encryption_538 =
    "538 5.7.11 Encryption required for requested authentication mechanism\r\n";
const std::string too_many_421 =
    "421 4.7.0 Too many authentication failures, closing connection\r\n";
const std::string temporary_454 = "454 4.7.0 Temporary authentication failure\r\n";
const std::string username_334 = "334 VXNlcm5hbWU6\r\n"; // "Username:"
const std::string password_334 = "334 UGFzc3dvcmQ6\r\n"; // "Password:"

// ehlo_reply - the exact EHLO reply with default options, ending with `auth_line` ("AUTH ...")
// when it is not empty, and with `starttls` when STARTTLS is offered.
std::string ehlo_reply(const std::string& auth_line, bool starttls = false) {
  std::vector<std::string> lines = {"mx.test",    "SIZE 26214400",       "8BITMIME",
                                    "PIPELINING", "ENHANCEDSTATUSCODES", "SMTPUTF8",
                                    "CHUNKING",   "LIMITS RCPTMAX=100"};
  if (starttls) lines.emplace_back("STARTTLS");
  if (!auth_line.empty()) lines.push_back(auth_line);
  std::string out;
  for (std::size_t i = 0; i < lines.size(); ++i)
    out += (i + 1 < lines.size() ? "250-" : "250 ") + lines[i] + "\r\n";
  return out;
}

// ---- options and the session under test ----------------------------------------------------

// AuthCall - one call of on_auth, as the hook saw it.
struct AuthCall {
  std::string mechanism, username, password, authzid;
  bool tls = false;
};

// alice_checker - an on_auth that accepts alice / wonderland and records each call in `calls`.
smtpd::AuthHook alice_checker(std::vector<AuthCall>* calls = nullptr) {
  return [calls](const smtpd::SessionInfo& s, const std::string& mechanism,
                 const std::string& username, const std::string& password,
                 const std::string& authzid) {
    if (calls) calls->push_back({mechanism, username, password, authzid, s.tls});
    return username == "alice" && password == "wonderland";
  };
}

// alice_secret - an auth_secret that knows alice's secret "wonderland" and nobody else.
std::optional<std::string> alice_secret(const smtpd::SessionInfo&, const std::string& user) {
  if (user == "alice") return "wonderland"s;
  return std::nullopt;
}

// auth_options - every mechanism configured for alice; PLAIN and LOGIN allowed without TLS when
// `insecure`.
smtpd::Options auth_options(bool insecure = true, std::vector<AuthCall>* calls = nullptr) {
  smtpd::Options o;
  o.on_auth = alice_checker(calls);
  o.auth_secret = alice_secret;
  o.auth_insecure = insecure;
  return o;
}

smtpd::SessionInfo tls_info() {
  smtpd::SessionInfo info = client_info();
  info.tls = true;
  info.tls_version = "TLSv1.3";
  info.tls_cipher = "TLS_AES_256_GCM_SHA384";
  return info;
}

// Session - Options (hostname "mx.test") and the Protocol that uses them; the greeting is kept
// apart, so send() returns only what its bytes produced.
struct Session {
  smtpd::Options options;
  smtpd::Protocol protocol;
  std::string greeting;

  static smtpd::Options named(smtpd::Options o) {
    if (o.hostname.empty()) o.hostname = "mx.test";
    return o;
  }

  explicit Session(smtpd::Options o = {}, smtpd::SessionInfo info = client_info())
      : options(named(std::move(o))), protocol(options, std::move(info)),
        greeting(protocol.take_output()) {}

  std::string send(std::string_view bytes) {
    protocol.feed(bytes);
    return protocol.take_output();
  }

  std::string line(std::string_view command) { return send(std::string(command) + "\r\n"); }

  // ehlo - EHLO client.test; the reply.
  std::string ehlo() { return line("EHLO client.test"); }

  const std::string& user() const { return protocol.session().auth_user; }

  bool closed() const { return protocol.should_close(); }
};

// P - a reply in printable form, so a failed CHECK shows CR and LF.
std::string P(std::string_view bytes) {
  return printable(bytes);
}

// challenge_of - the decoded text of a "334 <base64>" reply line, or "<not a 334>".
std::string challenge_of(const std::string& reply) {
  if (reply.size() < 6 || reply.compare(0, 4, "334 ") != 0 ||
      reply.compare(reply.size() - 2, 2, "\r\n") != 0)
    return "<not a 334>";
  std::optional<std::string> text = unb64(std::string_view(reply).substr(4, reply.size() - 6));
  return text ? *text : "<not base64>";
}

// check_alice_call - on_auth was called once (REQUIREd): for alice / wonderland by `mechanism`,
// without an authzid (each CHECKed).
void check_alice_call(const std::vector<AuthCall>& calls, const std::string& mechanism) {
  REQUIRE(calls.size() == 1);
  CHECK(calls[0].mechanism == mechanism);
  CHECK(calls[0].username == "alice");
  CHECK(calls[0].password == "wonderland");
  CHECK(calls[0].authzid == "");
}

// asking_secret_options - options whose auth_secret knows alice (as alice_secret) and records in
// `asked` each user it is asked about.
smtpd::Options asking_secret_options(std::vector<std::string>& asked) {
  smtpd::Options o;
  o.auth_secret = [&asked](const smtpd::SessionInfo&, const std::string& user) {
    asked.push_back(user);
    return alice_secret({}, user);
  };
  return o;
}

const std::regex cram_challenge_form(R"(<[0-9]+\.[0-9]+@mx\.test>)");

#ifndef SMTPD_NO_TLS
// openssl_hmac_md5_hex - the oracle: HMAC-MD5 by OpenSSL, as lower-case hex (RFC 2195).
std::string openssl_hmac_md5_hex(std::string_view key, std::string_view message) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  static const unsigned char nothing = 0;
  const void* key_bytes = key.empty() ? &nothing : static_cast<const void*>(key.data());
  HMAC(EVP_md5(), key_bytes, int(key.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), digest, &length);
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) {
    hex += "0123456789abcdef"[digest[i] >> 4];
    hex += "0123456789abcdef"[digest[i] & 15];
  }
  return hex;
}
#endif

// long_plain - `n` characters of base64 that decode to PLAIN credentials of alice with a
// password of her own: n must be a multiple of 4.
std::string long_plain(std::size_t n, std::string* password = nullptr) {
  std::size_t bytes = n / 4 * 3;
  std::string pass(bytes - 7, 'p');
  if (password) *password = pass;
  std::string encoded = b64("\0alice\0"s + pass);
  REQUIRE(encoded.size() == n);
  return encoded;
}

} // namespace

TEST_SUITE("auth") {

  // =============================================================================================
  // What EHLO advertises (RFC 4954 §3) and when (§4: no clear-text passwords without TLS)
  // =============================================================================================

  TEST_CASE("RFC 4954 §3: EHLO advertises AUTH with each mechanism whose callback is set") {
    SUBCASE("on_auth and auth_secret, under TLS: PLAIN LOGIN CRAM-MD5 as the last line") {
      Session s(auth_options(false), tls_info());
      CHECK(P(s.ehlo()) == P(ehlo_reply("AUTH PLAIN LOGIN CRAM-MD5")));
    }
    SUBCASE("on_auth only, under TLS: PLAIN LOGIN") {
      smtpd::Options o;
      o.on_auth = alice_checker();
      Session s(o, tls_info());
      CHECK(P(s.ehlo()) == P(ehlo_reply("AUTH PLAIN LOGIN")));
    }
    SUBCASE("auth_secret only, without TLS: CRAM-MD5 sends no password, so it is offered") {
      smtpd::Options o;
      o.auth_secret = alice_secret;
      Session s(o);
      CHECK(P(s.ehlo()) == P(ehlo_reply("AUTH CRAM-MD5")));
    }
    SUBCASE("both, with auth_insecure, without TLS: all three") {
      Session s(auth_options(true));
      CHECK(P(s.ehlo()) == P(ehlo_reply("AUTH PLAIN LOGIN CRAM-MD5")));
    }
  }

  TEST_CASE("RFC 4954 §4: PLAIN and LOGIN are not offered in clear text unless auth_insecure") {
    SUBCASE("both callbacks, no TLS: only CRAM-MD5") {
      Session s(auth_options(false));
      CHECK(P(s.ehlo()) == P(ehlo_reply("AUTH CRAM-MD5")));
    }
    SUBCASE("on_auth only, no TLS: no AUTH line at all") {
      smtpd::Options o;
      o.on_auth = alice_checker();
      Session s(o);
      CHECK(P(s.ehlo()) == P(ehlo_reply("")));
      // ...and using them anyway gets 538 (RFC 4954 §6).
      CHECK(P(s.line("AUTH PLAIN " + plain_alice)) == P(encryption_538));
      CHECK(P(s.line("AUTH LOGIN")) == P(encryption_538));
      CHECK(s.user().empty());
    }
    SUBCASE("on_auth only, auth_insecure: PLAIN LOGIN") {
      smtpd::Options o;
      o.on_auth = alice_checker();
      o.auth_insecure = true;
      Session s(o);
      CHECK(P(s.ehlo()) == P(ehlo_reply("AUTH PLAIN LOGIN")));
    }
  }

  TEST_CASE("RFC 4954 §3: auth_mechanisms limits and orders what is offered and accepted") {
    smtpd::Options o = auth_options(true);
    o.auth_mechanisms = {"LOGIN"};
    Session s(o);
    CHECK(P(s.ehlo()) == P(ehlo_reply("AUTH LOGIN")));
    CHECK(P(s.line("AUTH PLAIN " + plain_alice)) == P(unrecognized_504));
    CHECK(P(s.line("AUTH PLAIN")) == P(unrecognized_504));
    CHECK(P(s.line("AUTH CRAM-MD5")) == P(unrecognized_504));
    CHECK(P(s.line("AUTH LOGIN")) == P(username_334));
    CHECK(s.user().empty());

    smtpd::Options reordered = auth_options(true);
    reordered.auth_mechanisms = {"cram-md5", "PLAIN"};
    Session r(reordered);
    CHECK(P(r.ehlo()) == P(ehlo_reply("AUTH CRAM-MD5 PLAIN")));
    CHECK(P(r.line("AUTH LOGIN")) == P(unrecognized_504));
  }

  TEST_CASE("RFC 4954 §3: without on_auth and auth_secret there is no AUTH: 502") {
    Session s;
    CHECK(P(s.ehlo()) == P(ehlo_reply("")));
    CHECK(P(s.line("AUTH PLAIN " + plain_alice)) == P("502 5.5.1 Command not implemented\r\n"));
    CHECK(P(s.line("AUTH CRAM-MD5")) == P("502 5.5.1 Command not implemented\r\n"));
    CHECK(s.user().empty());
  }

  // =============================================================================================
  // PLAIN (RFC 4616)
  // =============================================================================================

  TEST_CASE("RFC 4616: PLAIN with an initial response authenticates; hooks and Received see it") {
    std::vector<AuthCall> calls;
    std::vector<std::string> users_at_mail, users_at_rcpt, users_at_data, datas;
    smtpd::Options o = auth_options(true, &calls);
    o.on_mail = [&](const smtpd::SessionInfo& s, const std::string&, const smtpd::Params&) {
      users_at_mail.push_back(s.auth_user);
      return std::optional<smtpd::Reply>();
    };
    o.on_rcpt = [&](const smtpd::SessionInfo& s, const std::string&, const smtpd::Params&) {
      users_at_rcpt.push_back(s.auth_user);
      return std::optional<smtpd::Reply>();
    };
    o.message_handler = [&](const smtpd::SessionInfo& s, const smtpd::Envelope&,
                            const std::string& data) {
      users_at_data.push_back(s.auth_user);
      datas.push_back(data);
      return std::optional<smtpd::Reply>();
    };
    bool tls = false;
    SUBCASE("in clear text (auth_insecure): with ESMTPA") {
      tls = false;
    }
    SUBCASE("under TLS: with ESMTPSA") {
      tls = true;
    }
    CAPTURE(tls);
    Session s(o, tls ? tls_info() : client_info());
    s.ehlo();
    CHECK(P(plain_alice) == P("AGFsaWNlAHdvbmRlcmxhbmQ="));
    CHECK(P(s.line("AUTH PLAIN " + plain_alice)) == P(ok_235));
    CHECK(s.user() == "alice");
    check_alice_call(calls, "PLAIN");
    CHECK(calls[0].tls == tls);
    CHECK(P(mask_ids(s.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"))) ==
          P("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"));
    CHECK(P(mask_ids(s.send("Subject: hi\r\n\r\nbody\r\n.\r\n"))) ==
          P("250 2.0.0 Ok: queued as XXXX\r\n"));
    CHECK(users_at_mail == std::vector<std::string>{"alice"});
    CHECK(users_at_rcpt == std::vector<std::string>{"alice"});
    CHECK(users_at_data == std::vector<std::string>{"alice"});
    REQUIRE(datas.size() == 1);
    const std::string with = tls ? " with ESMTPSA id " : " with ESMTPA id ";
    CHECK_MESSAGE(datas[0].find(with) != std::string::npos, printable(datas[0]));
    // The authentication lasts for the session: a second message is authenticated too.
    s.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nx\r\n.\r\n");
    CHECK(users_at_data == std::vector<std::string>{"alice", "alice"});
  }

  TEST_CASE("RFC 4954 §4: PLAIN without an initial response gets an empty 334 challenge") {
    Session s(auth_options(true));
    s.ehlo();
    CHECK(P(s.line("AUTH PLAIN")) == P("334 \r\n"));
    CHECK(s.user().empty());
    CHECK(P(s.line(plain_alice)) == P(ok_235));
    CHECK(s.user() == "alice");

    // Pipelined in one read, the same replies in one burst.
    Session p(auth_options(true));
    p.ehlo();
    CHECK(P(p.send("AUTH PLAIN\r\n" + plain_alice + "\r\nNOOP\r\n")) ==
          P("334 \r\n" + ok_235 + "250 2.0.0 Ok\r\n"));
    CHECK(p.user() == "alice");
  }

  TEST_CASE("RFC 4616: the authorization identity (authzid) is passed to on_auth") {
    std::vector<AuthCall> calls;
    Session s(auth_options(true, &calls));
    s.ehlo();
    CHECK(P(s.line("AUTH PLAIN " + b64("bob\0alice\0wonderland"s))) == P(ok_235));
    REQUIRE(calls.size() == 1);
    CHECK(calls[0].authzid == "bob");
    CHECK(calls[0].username == "alice");
    CHECK(calls[0].password == "wonderland");
    CHECK(s.user() == "alice"); // the authenticated identity, not the requested one
  }

  TEST_CASE("RFC 4954 §4: \"=\" is an empty initial response; empty PLAIN is malformed (501)") {
    std::vector<AuthCall> calls;
    Session s(auth_options(true, &calls));
    s.ehlo();
    CHECK(P(s.line("AUTH PLAIN =")) == P(cannot_decode_501));
    // An empty response line after the 334: the same.
    CHECK(P(s.line("AUTH PLAIN")) == P("334 \r\n"));
    CHECK(P(s.line("")) == P(cannot_decode_501));
    CHECK(calls.empty());
    CHECK(s.user().empty());
    // The exchange is over: the next line is a command again.
    CHECK(P(s.line("NOOP")) == P("250 2.0.0 Ok\r\n"));
  }

  TEST_CASE("RFC 4616: a PLAIN message without exactly two NULs cannot be decoded (501)") {
    std::vector<AuthCall> calls;
    Session s(auth_options(true, &calls));
    s.ehlo();
    for (const std::string& message :
         {"alice wonderland"s, "\0alicewonderland"s, "\0alice\0wonder\0land"s, "\0\0\0"s}) {
      CAPTURE(printable(message));
      CHECK(P(s.line("AUTH PLAIN " + b64(message))) == P(cannot_decode_501));
    }
    CHECK(calls.empty());
    CHECK(s.user().empty());
  }

  TEST_CASE("RFC 4616: authcid and passwd are 1*SAFE: an empty one is never 235") {
    // A permissive on_auth (a test sink that takes any password) must not turn a malformed
    // message into a 235 for nobody: the session would say "authenticated" with no identity.
    smtpd::Options o;
    o.auth_insecure = true;
    o.on_auth = [](const smtpd::SessionInfo&, const std::string&, const std::string&,
                   const std::string&, const std::string&) { return true; };
    for (const std::string& message : {"\0\0wonderland"s, "\0alice\0"s, "bob\0\0wonderland"s}) {
      CAPTURE(printable(message));
      Session s(o);
      s.ehlo();
      std::string reply = s.line("AUTH PLAIN " + b64(message));
      CHECK_MESSAGE(reply.rfind("5", 0) == 0, "got: ", P(reply));
      if (reply == ok_235) CHECK_MESSAGE(!s.user().empty(), "235, yet auth_user is empty");
    }
  }

  // =============================================================================================
  // LOGIN (draft-murchison-sasl-login): "Username:" and "Password:" prompts
  // =============================================================================================

  TEST_CASE("LOGIN: Username: and Password: prompts, then 235") {
    std::vector<AuthCall> calls;
    Session s(auth_options(true, &calls));
    s.ehlo();
    CHECK(challenge_of(username_334) == "Username:");
    CHECK(challenge_of(password_334) == "Password:");
    CHECK(P(s.line("AUTH LOGIN")) == P(username_334));
    CHECK(P(s.line(b64("alice"))) == P(password_334));
    CHECK(calls.empty());
    CHECK(P(s.line(b64("wonderland"))) == P(ok_235));
    CHECK(s.user() == "alice");
    check_alice_call(calls, "LOGIN");
  }

  TEST_CASE("LOGIN: an initial response is the user name: straight to the Password: prompt") {
    Session s(auth_options(true));
    s.ehlo();
    CHECK(P(s.line("AUTH LOGIN " + b64("alice"))) == P(password_334));
    CHECK(P(s.line(b64("wonderland"))) == P(ok_235));
    CHECK(s.user() == "alice");
  }

  TEST_CASE("LOGIN: an empty user name still takes one prompt each, then on_auth decides") {
    // The second line answers "Password:"; it must not be taken for the user name and the
    // password asked for again.
    std::vector<AuthCall> calls;
    Session s(auth_options(true, &calls));
    s.ehlo();
    CHECK(P(s.line("AUTH LOGIN")) == P(username_334));
    CHECK(P(s.line("")) == P(password_334));
    CHECK(P(s.line(b64("wonderland"))) == P(bad_535));
    if (!calls.empty()) {
      CHECK(calls[0].username == "");
      CHECK(calls[0].password == "wonderland");
    }
    CHECK(P(s.line("NOOP")) == P("250 2.0.0 Ok\r\n"));

    Session e(auth_options(true));
    e.ehlo();
    CHECK(P(e.line("AUTH LOGIN =")) == P(password_334));
    CHECK(P(e.line(b64("wonderland"))) == P(bad_535));
  }

  TEST_CASE("LOGIN: a wrong password gets 535") {
    Session s(auth_options(true));
    s.ehlo();
    s.line("AUTH LOGIN");
    s.line(b64("alice"));
    CHECK(P(s.line(b64("guess"))) == P(bad_535));
    CHECK(s.user().empty());
  }

  // =============================================================================================
  // CRAM-MD5 (RFC 2195)
  // =============================================================================================

  TEST_CASE("RFC 2195: the challenge is a fresh msg-id-like <digits.digits@hostname>") {
    Session s(auth_options(false));
    s.ehlo();
    std::string first = challenge_of(s.line("AUTH CRAM-MD5"));
    CHECK_MESSAGE(std::regex_match(first, cram_challenge_form), first);
    CHECK(P(s.line("*")) == P(cancelled_501));
    std::string second = challenge_of(s.line("AUTH CRAM-MD5"));
    CHECK_MESSAGE(std::regex_match(second, cram_challenge_form), second);
    CHECK(first != second);
    s.line("*");
    // Another session, another challenge.
    Session t(auth_options(false));
    t.ehlo();
    std::string third = challenge_of(t.line("AUTH CRAM-MD5"));
    CHECK(third != first);
    CHECK(third != second);
  }

  TEST_CASE("RFC 2195: a wrong digest or an unknown user gets 535") {
    std::vector<std::string> asked;
    smtpd::Options o = asking_secret_options(asked);
    Session s(o);
    s.ehlo();
    REQUIRE(s.line("AUTH CRAM-MD5").rfind("334 ", 0) == 0);
    CHECK(P(s.line(b64("alice 0123456789abcdef0123456789abcdef"))) == P(bad_535));
    REQUIRE(s.line("AUTH CRAM-MD5").rfind("334 ", 0) == 0);
    CHECK(P(s.line(b64("nobody 0123456789abcdef0123456789abcdef"))) == P(bad_535));
    CHECK(asked == std::vector<std::string>{"alice", "nobody"});
    CHECK(s.user().empty());
    // No digest at all: refused too, without a crash.
    Session t(o);
    t.ehlo();
    t.line("AUTH CRAM-MD5");
    CHECK(P(t.line(b64("alice"))) == P(bad_535));
    CHECK(t.user().empty());
  }

  TEST_CASE("RFC 2195: the server speaks first; an initial response gets 501") {
    std::vector<std::string> asked;
    smtpd::Options o = asking_secret_options(asked);
    Session s(o);
    s.ehlo();
    CHECK(P(s.line("AUTH CRAM-MD5 xyz")) == P("501 5.5.4 Syntax: AUTH CRAM-MD5\r\n"));
    CHECK(P(s.line("NOOP")) == P("250 2.0.0 Ok\r\n")); // no exchange was started
    CHECK(asked.empty());
  }

#ifndef SMTPD_NO_TLS
  TEST_CASE("RFC 2195: the test's HMAC-MD5 oracle (OpenSSL) gives RFC 2195's example digest") {
    CHECK(openssl_hmac_md5_hex("tanstaaftanstaaf", "<1896.697170952@postoffice.reston.mci.net>") ==
          "b913a602c7eda7a495b4e6e7334d3890");
    // RFC 2202 test case 2 for HMAC-MD5.
    CHECK(openssl_hmac_md5_hex("Jefe", "what do ya want for nothing?") ==
          "750c783e6ab0b503eaa86e310a5db738");
  }

  TEST_CASE("RFC 2195: the right digest of the challenge authenticates (checked with OpenSSL)") {
    Session s(auth_options(false));
    s.ehlo();
    std::string challenge = challenge_of(s.line("AUTH CRAM-MD5"));
    REQUIRE(std::regex_match(challenge, cram_challenge_form));
    std::string digest = openssl_hmac_md5_hex("wonderland", challenge);
    CHECK(P(s.line(b64("alice " + digest))) == P(ok_235));
    CHECK(s.user() == "alice");
    CHECK(P(s.line("AUTH CRAM-MD5")) == P("503 5.5.1 Already authenticated\r\n"));
  }

  TEST_CASE("RFC 2195: the library's MD5 agrees with OpenSSL across key and message lengths") {
    // Secrets from 0 to 130 octets cover HMAC's short keys, a 64-octet key and keys hashed
    // first (RFC 2104 §2); host names of 1..80 octets move the challenge across MD5's padding
    // boundaries (RFC 1321 §3.1: 55, 56, 63, 64 octets into a block).
    int failures = 0;
    for (std::size_t secret_length : {0, 1, 15, 16, 55, 56, 63, 64, 65, 100, 128, 130}) {
      for (std::size_t host_length = 1; host_length <= 80; host_length += 3) {
        std::string secret(secret_length, 's');
        for (std::size_t i = 0; i < secret.size(); ++i)
          secret[i] = char('!' + i % 90);
        smtpd::Options o;
        o.hostname = std::string(host_length, 'h');
        o.auth_secret = [secret](const smtpd::SessionInfo&, const std::string& user) {
          return user == "carol" ? std::optional<std::string>(secret) : std::nullopt;
        };
        Session s(o);
        s.ehlo();
        std::string challenge = challenge_of(s.line("AUTH CRAM-MD5"));
        std::string reply = s.line(b64("carol " + openssl_hmac_md5_hex(secret, challenge)));
        if (reply != ok_235) {
          ++failures;
          CAPTURE(secret_length);
          CAPTURE(host_length);
          CAPTURE(challenge);
          CHECK(P(reply) == P(ok_235));
        }
      }
    }
    CHECK(failures == 0);
  }

  TEST_CASE("RFC 2195: the digest answers this challenge only, and only in lower-case hex") {
    Session s(auth_options(false));
    s.ehlo();
    std::string old_challenge = challenge_of(s.line("AUTH CRAM-MD5"));
    s.line("*");
    s.line("AUTH CRAM-MD5");
    // A digest of the previous challenge is no good for this one (no replay).
    CHECK(P(s.line(b64("alice " + openssl_hmac_md5_hex("wonderland", old_challenge)))) ==
          P(bad_535));
    CHECK(s.user().empty());
  }
#endif

  // =============================================================================================
  // Refusals (RFC 4954 §4, §6)
  // =============================================================================================

  TEST_CASE("RFC 4954 §6: a wrong password or unknown user gets 535 5.7.8") {
    std::vector<AuthCall> calls;
    Session s(auth_options(true, &calls));
    s.ehlo();
    CHECK(P(s.line("AUTH PLAIN " + plain_wrong)) == P(bad_535));
    CHECK(P(s.line("AUTH PLAIN " + b64("\0mallory\0wonderland"s))) == P(bad_535));
    CHECK(calls.size() == 2);
    CHECK(s.user().empty());
    CHECK_FALSE(s.closed());
    CHECK(P(s.line("AUTH PLAIN " + plain_alice)) == P(ok_235));
  }

  TEST_CASE("RFC 4954 §4: \"*\" cancels the exchange with 501 5.0.0, at any step") {
    std::vector<AuthCall> calls;
    Session s(auth_options(true, &calls));
    s.ehlo();
    CHECK(P(s.line("AUTH PLAIN")) == P("334 \r\n"));
    CHECK(P(s.line("*")) == P(cancelled_501));
    CHECK(P(s.line("AUTH LOGIN")) == P(username_334));
    CHECK(P(s.line("*")) == P(cancelled_501));
    CHECK(P(s.line("AUTH LOGIN")) == P(username_334));
    CHECK(P(s.line(b64("alice"))) == P(password_334));
    CHECK(P(s.line("*")) == P(cancelled_501));
    CHECK(s.line("AUTH CRAM-MD5").rfind("334 ", 0) == 0);
    CHECK(P(s.line("*")) == P(cancelled_501));
    CHECK(calls.empty());
    CHECK(s.user().empty());
    CHECK(P(s.line("NOOP")) == P("250 2.0.0 Ok\r\n"));
    CHECK(P(s.line("AUTH PLAIN " + plain_alice)) == P(ok_235));
  }

  TEST_CASE("RFC 4954 §4: a response that is not base64 gets 501 5.5.2 and ends the exchange") {
    std::vector<AuthCall> calls;
    smtpd::Options o = auth_options(true, &calls);
    o.hard_error_limit = 1000;
    Session s(o);
    s.ehlo();
    for (const char* bad : {"!!!", "abc", "ab=c", "a===", "====", "AGFs aWNl", "AGFsaWNl="}) {
      CAPTURE(bad);
      CHECK(P(s.line("AUTH PLAIN "s + bad)) == P(cannot_decode_501));
      CHECK(P(s.line("AUTH PLAIN")) == P("334 \r\n"));
      CHECK(P(s.line(bad)) == P(cannot_decode_501));
      CHECK(P(s.line("AUTH LOGIN")) == P(username_334));
      CHECK(P(s.line(bad)) == P(cannot_decode_501));
      CHECK(P(s.line("NOOP")) == P("250 2.0.0 Ok\r\n"));
    }
    CHECK(calls.empty());
    CHECK_FALSE(s.closed()); // 501s are not failed attempts (but hard_error_limit still counts)
  }

  TEST_CASE("RFC 4954 §4: unknown mechanism 504, missing mechanism 501") {
    Session s(auth_options(true));
    s.ehlo();
    CHECK(P(s.line("AUTH FOO")) == P(unrecognized_504));
    CHECK(P(s.line("AUTH FOO " + plain_alice)) == P(unrecognized_504));
    CHECK(P(s.line("AUTH DIGEST-MD5")) == P(unrecognized_504));
    CHECK(P(s.line("AUTH")) == P("501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"));
    CHECK(P(s.line("AUTH   ")) == P("501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"));
    // Mechanism names are case-insensitive (RFC 4422 §3.1 names are upper case; clients vary).
    CHECK(P(s.line("auth plain " + plain_alice)) == P(ok_235));
  }

  TEST_CASE("RFC 4954 §4: AUTH before EHLO gets 503") {
    Session s(auth_options(true));
    CHECK(P(s.line("AUTH PLAIN " + plain_alice)) == P("503 Send HELO/EHLO first\r\n"));
    CHECK(s.user().empty());
  }

  TEST_CASE("RFC 4954 §4: AUTH after a successful AUTH gets 503 5.5.1") {
    std::vector<AuthCall> calls;
    Session s(auth_options(true, &calls));
    s.ehlo();
    CHECK(P(s.line("AUTH PLAIN " + plain_alice)) == P(ok_235));
    CHECK(P(s.line("AUTH PLAIN " + plain_alice)) == P("503 5.5.1 Already authenticated\r\n"));
    CHECK(P(s.line("AUTH LOGIN")) == P("503 5.5.1 Already authenticated\r\n"));
    CHECK(calls.size() == 1);
    // RSET keeps the authentication (it resets the transaction only).
    CHECK(P(s.line("RSET")) == P("250 2.0.0 Ok\r\n"));
    CHECK(s.user() == "alice");
  }

  TEST_CASE("RFC 4954 §4: AUTH during a mail transaction gets 503 5.5.1") {
    std::vector<AuthCall> calls;
    Session s(auth_options(true, &calls));
    s.ehlo();
    CHECK(P(s.line("MAIL FROM:<a@b.test>")) == P("250 2.1.0 Ok\r\n"));
    CHECK(P(s.line("AUTH PLAIN " + plain_alice)) ==
          P("503 5.5.1 MAIL transaction in progress\r\n"));
    CHECK(P(s.line("RCPT TO:<c@d.test>")) == P("250 2.1.5 Ok\r\n"));
    CHECK(P(s.line("AUTH PLAIN")) == P("503 5.5.1 MAIL transaction in progress\r\n"));
    CHECK(calls.empty());
    CHECK(P(s.line("RSET")) == P("250 2.0.0 Ok\r\n"));
    CHECK(P(s.line("AUTH PLAIN " + plain_alice)) == P(ok_235));
  }

  TEST_CASE("RFC 4954 §4: PLAIN or LOGIN without TLS (and no auth_insecure) gets 538 5.7.11") {
    std::vector<AuthCall> calls;
    Session s(auth_options(false, &calls));
    s.ehlo();
    CHECK(P(s.line("AUTH PLAIN " + plain_alice)) == P(encryption_538));
    CHECK(P(s.line("AUTH PLAIN")) == P(encryption_538));
    CHECK(P(s.line("AUTH LOGIN")) == P(encryption_538));
    CHECK(calls.empty());
    CHECK(s.user().empty());
    // CRAM-MD5 sends no password: it goes ahead.
    CHECK(s.line("AUTH CRAM-MD5").rfind("334 ", 0) == 0);
    s.line("*");
    // The same options under TLS: PLAIN works.
    Session t(auth_options(false, &calls), tls_info());
    t.ehlo();
    CHECK(P(t.line("AUTH PLAIN " + plain_alice)) == P(ok_235));
  }

  // =============================================================================================
  // auth_required (RFC 4954 §6: 530 5.7.0)
  // =============================================================================================

  TEST_CASE("RFC 4954 §6: with auth_required, commands but EHLO HELO NOOP RSET QUIT AUTH get 530") {
    std::vector<std::string> datas;
    smtpd::Options o = auth_options(true);
    o.auth_required = true;
    o.handler = [&](const smtpd::Peer&, const std::string&, const std::vector<std::string>&,
                    const std::string& data) { datas.push_back(data); };
    Session s(o);
    CHECK(P(s.ehlo()) == P(ehlo_reply("AUTH PLAIN LOGIN CRAM-MD5")));
    CHECK(P(s.line("MAIL FROM:<a@b.test>")) == P(required_530));
    CHECK(P(s.line("RCPT TO:<c@d.test>")) == P(required_530));
    CHECK(P(s.line("DATA")) == P(required_530));
    CHECK(P(s.line("VRFY alice")) == P(required_530));
    CHECK(P(s.line("HELP")) == P(required_530));
    CHECK(P(s.line("NOOP")) == P("250 2.0.0 Ok\r\n"));
    CHECK(P(s.line("RSET")) == P("250 2.0.0 Ok\r\n"));
    CHECK(P(s.line("HELO client.test")) == P("250 mx.test\r\n"));
    CHECK(P(s.line("MAIL FROM:<a@b.test>")) == P("530 Authentication required\r\n"));
    CHECK(P(s.ehlo()) == P(ehlo_reply("AUTH PLAIN LOGIN CRAM-MD5")));
    CHECK(P(s.line("AUTH PLAIN " + plain_wrong)) == P(bad_535));
    CHECK(P(s.line("MAIL FROM:<a@b.test>")) == P(required_530));
    CHECK(P(s.line("AUTH PLAIN " + plain_alice)) == P(ok_235));
    CHECK(P(mask_ids(s.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"))) ==
          P("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"));
    CHECK(P(mask_ids(s.send("hello\r\n.\r\n"))) == P("250 2.0.0 Ok: queued as XXXX\r\n"));
    CHECK(datas.size() == 1);
    CHECK(P(s.line("VRFY alice")).rfind("252 ", 0) == 0);
    CHECK(P(s.line("QUIT")) == P("221 2.0.0 Bye\r\n"));
    CHECK(s.closed());
  }

  TEST_CASE("RFC 4954 §6: with auth_required, QUIT before AUTH still says goodbye") {
    smtpd::Options o = auth_options(true);
    o.auth_required = true;
    Session s(o);
    s.ehlo();
    CHECK(P(s.line("QUIT")) == P("221 2.0.0 Bye\r\n"));
    CHECK(s.closed());
  }

  // =============================================================================================
  // The failure limit and the delay before each 535
  // =============================================================================================

  TEST_CASE("auth_max_failures: the third failure gets 535, then 421 and the session closes") {
    std::vector<AuthCall> calls;
    smtpd::Options o = auth_options(true, &calls);
    o.auth_failure_delay = 250ms;
    Session s(o);
    CHECK(s.protocol.take_reply_delay() == 0ms); // the greeting is not delayed
    s.ehlo();
    CHECK(s.protocol.take_reply_delay() == 0ms);
    CHECK(P(s.line("AUTH PLAIN " + plain_wrong)) == P(bad_535));
    CHECK(s.protocol.take_reply_delay() == 250ms);
    CHECK(s.protocol.take_reply_delay() == 0ms); // reading it resets it
    CHECK_FALSE(s.closed());
    CHECK(P(s.line("NOOP")) == P("250 2.0.0 Ok\r\n"));
    CHECK(s.protocol.take_reply_delay() == 0ms);
    CHECK(P(s.line("AUTH LOGIN")) == P(username_334));
    CHECK(P(s.line(b64("alice"))) == P(password_334));
    CHECK(s.protocol.take_reply_delay() == 0ms);
    CHECK(P(s.line(b64("guess"))) == P(bad_535));
    CHECK(s.protocol.take_reply_delay() == 250ms);
    CHECK_FALSE(s.closed());
    CHECK(P(s.line("AUTH PLAIN " + plain_wrong)) == P(bad_535 + too_many_421));
    CHECK(s.protocol.take_reply_delay() == 250ms);
    CHECK(s.closed());
    // Nothing more is read, so a right password now is never checked.
    CHECK(s.send("AUTH PLAIN " + plain_alice + "\r\n").empty());
    CHECK(calls.size() == 3);
    CHECK(s.user().empty());
  }

  TEST_CASE("auth_max_failures: CRAM-MD5 failures count too; success and 501s do not") {
    smtpd::Options o = auth_options(false);
    o.auth_max_failures = 2;
    o.auth_failure_delay = 100ms;
    o.soft_error_limit = 100; // the ten 501s below must not trigger the error tarpit
    Session s(o);
    s.ehlo();
    for (int i = 0; i < 5; ++i) { // cancelled and undecodable exchanges are no guesses
      s.line("AUTH CRAM-MD5");
      CHECK(P(s.line("*")) == P(cancelled_501));
      s.line("AUTH CRAM-MD5");
      CHECK(P(s.line("!!!!")) == P(cannot_decode_501));
      CHECK(s.protocol.take_reply_delay() == 0ms);
    }
    CHECK_FALSE(s.closed());
    s.line("AUTH CRAM-MD5");
    CHECK(P(s.line(b64("alice 00000000000000000000000000000000"))) == P(bad_535));
    CHECK(s.protocol.take_reply_delay() == 100ms);
    s.line("AUTH CRAM-MD5");
    CHECK(P(s.line(b64("nobody 00000000000000000000000000000000"))) == P(bad_535 + too_many_421));
    CHECK(s.closed());
  }

  TEST_CASE("auth_max_failures = 1: the first failure closes; a success has no delay") {
    smtpd::Options o = auth_options(true);
    o.auth_max_failures = 1;
    o.auth_failure_delay = 5ms;
    Session ok(o);
    ok.ehlo();
    CHECK(P(ok.line("AUTH PLAIN " + plain_alice)) == P(ok_235));
    CHECK(ok.protocol.take_reply_delay() == 0ms);
    Session bad(o);
    bad.ehlo();
    CHECK(P(bad.line("AUTH PLAIN " + plain_wrong)) == P(bad_535 + too_many_421));
    CHECK(bad.protocol.take_reply_delay() == 5ms);
    CHECK(bad.closed());
  }

  // =============================================================================================
  // Exceptions from on_auth and auth_secret
  // =============================================================================================

  TEST_CASE("RFC 4954 §6: on_auth throwing gets 454 4.7.0, not counted as a failure") {
    std::vector<std::string> errors;
    smtpd::Options o;
    o.auth_insecure = true;
    o.auth_max_failures = 1;
    o.log_error = [&](std::string_view m) { errors.emplace_back(m); };
    o.on_auth = [](const smtpd::SessionInfo&, const std::string&, const std::string& user,
                   const std::string&, const std::string&) -> bool {
      if (user == "alice") throw std::runtime_error("directory down");
      throw smtpd::Reply{454, "4.7.0", "try later"};
    };
    Session s(o);
    s.ehlo();
    CHECK(P(s.line("AUTH PLAIN " + plain_alice)) == P(temporary_454));
    CHECK(s.protocol.take_reply_delay() == 0ms);
    CHECK_FALSE(s.closed());
    CHECK(errors.size() == 1);
    CHECK(P(s.line("AUTH PLAIN " + b64("\0bob\0x"s))) == P("454 4.7.0 try later\r\n"));
    CHECK_FALSE(s.closed());
    s.line("AUTH LOGIN");
    s.line(b64("alice"));
    CHECK(P(s.line(b64("x"))) == P(temporary_454));
    CHECK_FALSE(s.closed());
    CHECK(s.user().empty());
    CHECK(P(s.line("NOOP")) == P("250 2.0.0 Ok\r\n"));
  }

  TEST_CASE("RFC 4954 §6: auth_secret throwing gets 454 4.7.0") {
    smtpd::Options o;
    o.auth_max_failures = 1;
    o.auth_secret = [](const smtpd::SessionInfo&,
                       const std::string&) -> std::optional<std::string> {
      throw std::runtime_error("vault sealed");
    };
    Session s(o);
    s.ehlo();
    s.line("AUTH CRAM-MD5");
    CHECK(P(s.line(b64("alice 00000000000000000000000000000000"))) == P(temporary_454));
    CHECK_FALSE(s.closed());
    CHECK(s.user().empty());
  }

  // =============================================================================================
  // Line lengths (RFC 4954 §4: 12288 octets for AUTH lines; RFC 5321 §4.5.3.1.4: 512 others)
  // =============================================================================================

  TEST_CASE("RFC 4954 §4: an AUTH command line of 12288 octets is read; 12289 is too long") {
    std::vector<AuthCall> calls;
    smtpd::Options o = auth_options(true, &calls);
    std::string long_password;
    // "AUTH" + 4 spaces + "PLAIN " + 12272 base64 + CRLF = 12288 octets; the extra spaces
    // before the mechanism are skipped by the lenient parser.
    std::string response = long_plain(12272, &long_password);
    std::string full = "AUTH    PLAIN " + response;
    REQUIRE(full.size() + 2 == 12288);
    o.on_auth = [&](const smtpd::SessionInfo&, const std::string&, const std::string& user,
                    const std::string& password, const std::string&) {
      calls.push_back({"", user, "", "", false});
      return user == "alice" && password == long_password;
    };
    {
      Session s(o);
      s.ehlo();
      CHECK(P(s.line(full)) == P(ok_235));
      CHECK(s.user() == "alice");
    }
    {
      // 12288 octets of undecodable response: a decoding error, not a line error.
      Session s(o);
      s.ehlo();
      std::string line = "AUTH PLAIN " + std::string(12288 - 13, 'A');
      REQUIRE(line.size() + 2 == 12288);
      CHECK(P(s.line(line)) == P(cannot_decode_501));
      CHECK(P(s.line("NOOP")) == P("250 2.0.0 Ok\r\n"));
    }
    {
      Session s(o);
      s.ehlo();
      std::string line = "AUTH PLAIN " + std::string(12289 - 13, 'A');
      REQUIRE(line.size() + 2 == 12289);
      std::string reply = s.line(line);
      CHECK_MESSAGE(reply.rfind("500 ", 0) == 0, P(reply));
      CHECK(P(s.line("NOOP")) == P("250 2.0.0 Ok\r\n")); // no exchange was started
      CHECK(s.user().empty());
    }
    CHECK(calls.size() == 1);
  }

  TEST_CASE("RFC 4954 §4: a 12288-octet AUTH line is read the same however the reads split it") {
    std::string password;
    std::string line = "AUTH    PLAIN " + long_plain(12272, &password) + "\r\n";
    REQUIRE(line.size() == 12288);
    smtpd::Options o;
    o.auth_insecure = true;
    o.on_auth = [&](const smtpd::SessionInfo&, const std::string&, const std::string& user,
                    const std::string& pass,
                    const std::string&) { return user == "alice" && pass == password; };
    for (std::size_t split : {1, 2, 3, 4, 5, 6, 14, 100, 511, 512, 513, 4096, 12286, 12287}) {
      CAPTURE(split);
      Session s(o);
      s.ehlo();
      std::string got = s.send(line.substr(0, split));
      got += s.send(line.substr(split));
      CHECK(P(got) == P(ok_235));
    }
    // In three reads: the middle one has no line end, so the line so far is judged on its own.
    for (const auto& reads : std::vector<std::pair<std::size_t, std::size_t>>{
             {1, 700}, {3, 700}, {4, 600}, {5, 600}, {3, 12000}, {100, 12000}}) {
      std::size_t first = reads.first, second = reads.second; // (clang 14: no bindings in CAPTURE)
      CAPTURE(first);
      CAPTURE(second);
      Session s(o);
      s.ehlo();
      std::string got = s.send(line.substr(0, first));
      got += s.send(line.substr(first, second - first));
      got += s.send(line.substr(second));
      CHECK(P(got) == P(ok_235));
    }
  }

  TEST_CASE("RFC 4954 §4: a response over 12288 octets gets 500 5.5.6 and ends the exchange") {
    std::vector<AuthCall> calls;
    smtpd::Options o = auth_options(true, &calls);
    SUBCASE("the longest base64 response that fits (12284 + CRLF) is still a response") {
      Session s(o);
      s.ehlo();
      CHECK(P(s.line("AUTH PLAIN")) == P("334 \r\n"));
      CHECK(P(s.line(long_plain(12284))) == P(bad_535));
      CHECK(calls.size() == 1);
    }
    SUBCASE("12289 octets in one read") {
      Session s(o);
      s.ehlo();
      CHECK(P(s.line("AUTH PLAIN")) == P("334 \r\n"));
      CHECK(P(s.line(std::string(12287, 'A'))) ==
            P("500 5.5.6 Authentication exchange line is too long\r\n"));
      CHECK(P(s.line("NOOP")) == P("250 2.0.0 Ok\r\n"));
      CHECK(calls.empty());
    }
    SUBCASE("a longer response arriving in several reads (as from a socket)") {
      Session s(o);
      s.ehlo();
      CHECK(P(s.line("AUTH LOGIN")) == P(username_334));
      std::string got;
      for (int i = 0; i < 4; ++i)
        got += s.send(std::string(4096, 'A'));
      got += s.send("\r\n");
      CHECK(P(got) == P("500 5.5.6 Authentication exchange line is too long\r\n"));
      // The exchange is over: this is a command, not the next base64 response.
      CHECK(P(s.line("NOOP")) == P("250 2.0.0 Ok\r\n"));
      CHECK(calls.empty());
    }
  }

  TEST_CASE("RFC 5321 §4.5.3.1.4: other commands keep the 512-octet limit: 500 5.5.2") {
    Session s(auth_options(true));
    s.ehlo();
    std::string noop = "NOOP " + std::string(512 - 7, 'x');
    REQUIRE(noop.size() + 2 == 512);
    CHECK(P(s.line(noop)) == P("250 2.0.0 Ok\r\n"));
    CHECK(P(s.line(noop + "x")) == P("500 5.5.2 Line too long\r\n"));
    // "AUTHX..." is not an AUTH line.
    CHECK(P(s.line("AUTHX " + std::string(600, 'x'))) == P("500 5.5.2 Line too long\r\n"));
    CHECK(P(s.line("MAIL FROM:<a@b.test> " + std::string(600, 'x'))) ==
          P("500 5.5.2 Line too long\r\n"));
    CHECK(P(s.line("NOOP")) == P("250 2.0.0 Ok\r\n"));
  }

  // =============================================================================================
  // Logging: no password, ever
  // =============================================================================================

  TEST_CASE("log hooks: AUTH lines are logged as \"AUTH PLAIN ****\", exchange lines as \"****\"") {
    std::vector<std::string> read, written;
    smtpd::Options o = auth_options(true);
    o.auth_max_failures = 100;
    o.log_read = [&](const smtpd::Peer&, std::string_view l) { read.emplace_back(l); };
    o.log_write = [&](const smtpd::Peer&, std::string_view l) { written.emplace_back(l); };
    Session s(o);
    s.ehlo();
    s.line("AUTH PLAIN " + plain_wrong);
    s.line("auth plain " + plain_alice.substr(0, 10));
    s.line("AUTH PLAIN");
    s.line(plain_alice);
    CHECK(s.user() == "alice");
    Session t(o);
    t.ehlo();
    t.line("AUTH LOGIN");
    t.line(b64("alice"));
    t.line(b64("wonderland"));
    Session u(o);
    u.ehlo();
    u.line("AUTH LOGIN " + b64("alice"));
    u.line("*");
    u.line("AUTH PLAIN " + plain_alice);
    CHECK(read == std::vector<std::string>{"EHLO client.test", "AUTH PLAIN ****", "auth plain ****",
                                           "AUTH PLAIN", "****", "EHLO client.test", "AUTH LOGIN",
                                           "****", "****", "EHLO client.test", "AUTH LOGIN ****",
                                           "****", "AUTH PLAIN ****"});
    std::vector<std::string> secrets = {
        "wonderland",         b64("wonderland"),      plain_alice,  plain_wrong,
        b64("\0wonderland"s), b64("\0\0wonderland"s), b64("alice"), "guess"};
    for (const std::vector<std::string>* log : {&read, &written})
      for (const std::string& l : *log)
        for (const std::string& secret : secrets) {
          CAPTURE(l);
          CHECK(l.find(secret) == std::string::npos);
        }
  }

  // =============================================================================================
  // MAIL FROM's AUTH= parameter (RFC 4954 §5)
  // =============================================================================================

  TEST_CASE("RFC 4954 §5: MAIL FROM's AUTH= parameter is accepted when AUTH is offered") {
    std::vector<smtpd::Params> seen;
    smtpd::Options o = auth_options(true);
    o.on_mail = [&](const smtpd::SessionInfo&, const std::string&, const smtpd::Params& p) {
      seen.push_back(p);
      return std::optional<smtpd::Reply>();
    };
    Session s(o);
    s.ehlo();
    CHECK(P(s.line("MAIL FROM:<a@b.test> AUTH=<>")) == P("250 2.1.0 Ok\r\n"));
    CHECK(P(s.line("RSET")) == P("250 2.0.0 Ok\r\n"));
    CHECK(P(s.line("MAIL FROM:<a@b.test> AUTH=alice@b.test")) == P("250 2.1.0 Ok\r\n"));
    REQUIRE(seen.size() == 2);
    CHECK(seen[1] == smtpd::Params{{"AUTH", "alice@b.test"}});

    Session none; // no AUTH configured: the parameter belongs to no offered extension
    none.ehlo();
    CHECK(P(none.line("MAIL FROM:<a@b.test> AUTH=<>")) ==
          P("555 5.5.4 Unsupported MAIL/RCPT parameter\r\n"));
    CHECK(P(none.line("MAIL FROM:<a@b.test> AUTH=alice@b.test")) ==
          P("555 5.5.4 Unsupported MAIL/RCPT parameter\r\n"));
  }

  // =============================================================================================
  // STARTTLS forgets the authentication (RFC 3207 §4.2)
  // =============================================================================================

#ifndef SMTPD_NO_TLS
  TEST_CASE("RFC 3207 §4.2: after STARTTLS the session is no longer authenticated") {
    smtpd::Options o = auth_options(true);
    o.tls_cert_file = "not-loaded-by-protocol.pem";
    o.auth_required = true;
    Session s(o);
    CHECK(P(s.ehlo()) == P(ehlo_reply("AUTH PLAIN LOGIN CRAM-MD5", true)));
    CHECK(P(s.line("AUTH PLAIN " + plain_alice)) == P(ok_235));
    CHECK(s.user() == "alice");
    CHECK(P(s.line("STARTTLS")) == P("220 2.0.0 Ready to start TLS\r\n"));
    REQUIRE(s.protocol.starttls_requested());
    s.protocol.tls_started("TLSv1.3", "TLS_AES_256_GCM_SHA384", "");
    CHECK(s.user().empty());
    CHECK(P(s.ehlo()) == P(ehlo_reply("AUTH PLAIN LOGIN CRAM-MD5")));
    CHECK(P(s.line("MAIL FROM:<a@b.test>")) == P(required_530));
    CHECK(P(s.line("AUTH PLAIN " + plain_alice)) == P(ok_235));
    CHECK(P(s.line("MAIL FROM:<a@b.test>")) == P("250 2.1.0 Ok\r\n"));
  }

  TEST_CASE("RFC 3207 §4.2: STARTTLS during an AUTH exchange is a response, not a command") {
    smtpd::Options o = auth_options(true);
    o.tls_cert_file = "not-loaded-by-protocol.pem";
    Session s(o);
    s.ehlo();
    // "STARTTLS" is valid base64 (six octets, no NUL): an undecodable PLAIN message.
    CHECK(P(s.line("AUTH PLAIN")) == P("334 \r\n"));
    CHECK(P(s.line("STARTTLS")) == P(cannot_decode_501));
    CHECK_FALSE(s.protocol.starttls_requested());
  }
#endif

} // TEST_SUITE("auth")

// =============================================================================================
// Over real sockets: a Server on 127.0.0.1 port 0
// =============================================================================================

namespace {

// loopback_auth_options - loopback options offering AUTH PLAIN and LOGIN without TLS, for alice.
// The smtpd::TestServer they are served with keeps the messages, with the session's auth_user.
smtpd::Options loopback_auth_options() {
  smtpd::Options o = test::loopback_options();
  o.on_auth = alice_checker();
  o.auth_insecure = true;
  return o;
}

// past_ehlo - the client is connected (REQUIREd), has read the greeting and has sent EHLO
// (neither reply checked).
void past_ehlo(test::Client& c) {
  REQUIRE(c.connected());
  c.read_reply();
  c.command("EHLO client.test");
}

} // namespace

TEST_SUITE("auth") {

  TEST_CASE("loopback: AUTH PLAIN, then a message is delivered with auth_user") {
    smtpd::Options o = loopback_auth_options();
    o.auth_required = true;
    smtpd::TestServer server(o);
    test::Client c(server.port());
    REQUIRE(c.connected());
    CHECK(P(c.read_reply()) == P("220 mx.test ESMTP smtpd\r\n"));
    CHECK(P(c.command("EHLO client.test")) == P(ehlo_reply("AUTH PLAIN LOGIN")));
    CHECK(P(c.command("MAIL FROM:<a@b.test>")) == P(required_530));
    CHECK(P(c.command("AUTH PLAIN")) == P("334 \r\n"));
    CHECK(P(c.command(plain_alice)) == P(ok_235));
    CHECK(P(c.command("MAIL FROM:<a@b.test> AUTH=alice@b.test")) == P("250 2.1.0 Ok\r\n"));
    CHECK(P(c.command("RCPT TO:<c@d.test>")) == P("250 2.1.5 Ok\r\n"));
    CHECK(c.command("DATA").rfind("354 ", 0) == 0);
    CHECK(P(mask_ids(c.command("Subject: hi\r\n\r\nbody\r\n."))) ==
          P("250 2.0.0 Ok: queued as XXXX\r\n"));
    CHECK(P(c.command("QUIT")) == P("221 2.0.0 Bye\r\n"));
    CHECK(c.wait_closed());
    std::vector<smtpd::TestServer::Message> mail = server.messages();
    REQUIRE(mail.size() == 1);
    CHECK(mail[0].session.auth_user == "alice");
    CHECK(mail[0].data.find(" with ESMTPA id ") != std::string::npos);
    CHECK(mail[0].data.find("body\r\n") != std::string::npos);
  }

  TEST_CASE("loopback: three failed AUTHs get 421 and the connection is closed") {
    smtpd::Options o = loopback_auth_options();
    o.auth_failure_delay = 0ms;
    smtpd::TestServer server(o);
    test::Client c(server.port());
    past_ehlo(c);
    CHECK(P(c.command("AUTH PLAIN " + plain_wrong)) == P(bad_535));
    CHECK(P(c.command("AUTH LOGIN")) == P(username_334));
    CHECK(P(c.command(b64("alice"))) == P(password_334));
    CHECK(P(c.command(b64("nope"))) == P(bad_535));
    CHECK(P(c.command("AUTH PLAIN " + plain_wrong)) == P(bad_535));
    CHECK(P(c.read_reply()) == P(too_many_421));
    CHECK(c.wait_closed());
  }

  TEST_CASE("loopback: an over-long AUTH response gets 500 5.5.6 and ends the exchange") {
    // Over a socket a long line arrives in several reads, so this is the usual case.
    smtpd::TestServer server(loopback_auth_options());
    test::Client c(server.port());
    past_ehlo(c);
    CHECK(P(c.command("AUTH LOGIN")) == P(username_334));
    CHECK(P(c.command(std::string(20000, 'A'))) ==
          P("500 5.5.6 Authentication exchange line is too long\r\n"));
    CHECK(P(c.command("NOOP")) == P("250 2.0.0 Ok\r\n"));
  }

  TEST_CASE("loopback: auth_failure_delay holds the 535 back") {
    smtpd::Options o = loopback_auth_options();
    o.auth_failure_delay = 200ms;
    smtpd::TestServer server(o);
    test::Client c(server.port());
    past_ehlo(c);
    auto start = test::Clock::now();
    CHECK(P(c.command("AUTH PLAIN " + plain_wrong)) == P(bad_535));
    CHECK(test::elapsed_ms(start) >= 150);
    // A success is not delayed (no upper bound asserted: only that it works).
    CHECK(P(c.command("AUTH PLAIN " + plain_alice)) == P(ok_235));
  }

  TEST_CASE("loopback: shutdown() during the failure delay returns promptly") {
    smtpd::Options o = loopback_auth_options();
    o.auth_failure_delay = 30s;
    smtpd::TestServer server(o);
    test::Client c(server.port(), "127.0.0.1", 10s);
    past_ehlo(c);
    REQUIRE(c.send("AUTH PLAIN " + plain_wrong + "\r\n"));
    std::this_thread::sleep_for(200ms); // the connection is now waiting out the delay
    auto start = test::Clock::now();
    server.server().shutdown(5s);
    CHECK(test::elapsed_ms(start) < 2000);
    // The client is told, and the connection ends.
    std::string rest = c.read_reply();
    CHECK(P(rest) == P(bad_535));
    CHECK(c.wait_closed());
  }

} // TEST_SUITE("auth")
