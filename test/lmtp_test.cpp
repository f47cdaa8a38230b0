// lmtp_test.cpp - LMTP (RFC 2033) and verdicts per recipient, driven through smtpd::Protocol with
// no sockets: LHLO in place of HELO/EHLO (§4.1), the greeting, one reply per accepted recipient
// after the data (§4.2), with DATA and with BDAT (RFC 3030), pipelined (RFC 2920) and replayed
// split at every offset; the Received header's "with LMTP" (RFC 3848); and how an SMTP session
// folds verdicts per recipient into its one reply (RFC 5321 §4.1.1.4, §6.1).
#include "../smtpd.hpp"
#include "protocol_helpers.hpp"

#include <doctest/doctest.h>

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

using namespace std::string_literals;

namespace {

using smtpd::Reply;
using test::client_info;
using test::mask_ids;
using test::printable;

// Delivered - what a handler saw of one message.
struct Delivered {
  smtpd::Envelope envelope;
  std::string data;
};

// Session - a Protocol (hostname mx.test) whose per_recipient_handler answers with `verdicts`
// (empty: deliver to all) and records each message. The greeting is taken at construction.
struct Session {
  std::vector<Delivered> delivered;
  smtpd::RecipientReplies verdicts;
  std::vector<std::string> errors; // log_error lines
  smtpd::Options options;
  std::unique_ptr<smtpd::Protocol> protocol;
  std::string greeting;

  explicit Session(smtpd::Options o = lmtp(), smtpd::SessionInfo info = client_info()) {
    options = std::move(o);
    options.hostname = "mx.test";
    options.log_error = [this](std::string_view line) { errors.emplace_back(line); };
    if (!options.new_session && !options.stream_handler && !options.per_recipient_handler)
      options.per_recipient_handler = [this](const smtpd::SessionInfo&, const smtpd::Envelope& e,
                                             const std::string& data) {
        delivered.push_back({e, data});
        return verdicts.empty() ? smtpd::RecipientReplies(e.to.size()) : verdicts;
      };
    protocol = std::make_unique<smtpd::Protocol>(options, std::move(info));
    greeting = protocol->take_output();
  }

  static smtpd::Options lmtp() {
    smtpd::Options o;
    o.lmtp = true;
    return o;
  }

  // send - feed `bytes` in one read; the replies they produced, queue ids masked.
  std::string send(std::string_view bytes) {
    protocol->feed(bytes);
    return mask_ids(protocol->take_output());
  }
};

// lines - `replies` joined, each with its CRLF.
std::string lines(std::initializer_list<std::string_view> replies) {
  std::string out;
  for (std::string_view r : replies)
    out += std::string(r) + "\r\n";
  return out;
}

const std::string lhlo_reply =
    lines({"250-mx.test", "250-SIZE 26214400", "250-8BITMIME", "250-PIPELINING",
           "250-ENHANCEDSTATUSCODES", "250-SMTPUTF8", "250-CHUNKING", "250 LIMITS RCPTMAX=100"});

const std::string queued = "250 2.0.0 Ok: queued as XXXX";

// two_recipients - LHLO, MAIL and two accepted RCPTs, each answered; the replies checked.
void two_recipients(Session& s) {
  REQUIRE(s.send("LHLO client.test\r\n").find("250 LIMITS RCPTMAX=100\r\n") != std::string::npos);
  REQUIRE(s.send("MAIL FROM:<a@x.test>\r\n") == lines({"250 2.1.0 Ok"}));
  REQUIRE(s.send("RCPT TO:<b@y.test>\r\n") == lines({"250 2.1.5 Ok"}));
  REQUIRE(s.send("RCPT TO:<c@y.test>\r\n") == lines({"250 2.1.5 Ok"}));
}

// run_split - feed `input` to a fresh LMTP session in two reads split at `at`; all the output.
std::string run_split(const smtpd::Options& options, const std::string& input, std::size_t at) {
  Session s(options);
  std::string out = s.send(input.substr(0, at));
  return out + s.send(input.substr(at));
}

} // namespace

TEST_SUITE("lmtp") {

  TEST_CASE("RFC 2033 §4.1: the greeting names LMTP; LHLO gets the EHLO reply") {
    Session s;
    CHECK(s.greeting == "220 mx.test LMTP smtpd\r\n");
    CHECK(s.send("LHLO client.test\r\n") == lhlo_reply);
    CHECK(s.protocol->session().helo == "client.test");
    CHECK(s.protocol->session().esmtp);
  }

  TEST_CASE("RFC 2033 §4.1: HELO and EHLO are refused in LMTP; LHLO needs a domain") {
    Session s;
    CHECK(s.send("HELO client.test\r\n") ==
          lines({"500 This is an LMTP server: say LHLO (RFC 2033 §4.1)"}));
    CHECK(s.send("EHLO client.test\r\n") ==
          lines({"500 This is an LMTP server: say LHLO (RFC 2033 §4.1)"}));
    CHECK(s.send("MAIL FROM:<a@x.test>\r\n") == lines({"503 Send HELO/EHLO first"}));
    CHECK(s.send("LHLO\r\n") == lines({"501 Syntax: LHLO domain"}));
    CHECK(s.send("LHLO client.test\r\n") == lhlo_reply);
    CHECK(s.send("EHLO client.test\r\n") ==
          lines({"500 5.5.1 This is an LMTP server: say LHLO (RFC 2033 §4.1)"}));
  }

  TEST_CASE("an SMTP server does not know LHLO, and greets as ESMTP") {
    Session s(smtpd::Options{});
    CHECK(s.greeting == "220 mx.test ESMTP smtpd\r\n");
    CHECK(s.send("LHLO client.test\r\n") == lines({"500 Command not recognized"}));
  }

  TEST_CASE("RFC 2033 §4.2: after the dot, one reply per accepted recipient, in RCPT order") {
    Session s;
    REQUIRE(s.send("LHLO client.test\r\n") == lhlo_reply);
    REQUIRE(s.send("MAIL FROM:<a@x.test>\r\n") == lines({"250 2.1.0 Ok"}));
    REQUIRE(s.send("RCPT TO:<b@y.test>\r\n") == lines({"250 2.1.5 Ok"}));
    REQUIRE(s.send("RCPT TO:<bad address>\r\n") != lines({"250 2.1.5 Ok"})); // not accepted
    REQUIRE(s.send("RCPT TO:<c@y.test>\r\n") == lines({"250 2.1.5 Ok"}));
    s.verdicts = {std::nullopt, Reply{452, "4.2.2", "Mailbox full"}};
    CHECK(s.send("DATA\r\n") == lines({"354 End data with <CR><LF>.<CR><LF>"}));
    CHECK(s.send("Subject: hi\r\n\r\nbody\r\n.\r\n") == lines({queued, "452 4.2.2 Mailbox full"}));
    REQUIRE(s.delivered.size() == 1);
    CHECK(s.delivered[0].envelope.to == std::vector<std::string>{"b@y.test", "c@y.test"});
    // The session goes on, with a fresh transaction.
    CHECK(s.send("MAIL FROM:<a@x.test>\r\n") == lines({"250 2.1.0 Ok"}));
  }

  TEST_CASE("RFC 2033 §4.2: a message refused whole gets that reply once per recipient") {
    SUBCASE("past the size limit: 552 for each") {
      smtpd::Options o = Session::lmtp();
      o.max_message_bytes = 10;
      Session s(o);
      two_recipients(s);
      s.send("DATA\r\n");
      std::string big = "Subject: big\r\n\r\n" + std::string(100, 'x') + "\r\n.\r\n";
      std::string tooBig = "552 5.3.4 Message size exceeds fixed maximum message size";
      CHECK(s.send(big) == lines({tooBig, tooBig}));
      CHECK(s.delivered.empty());
    }
    SUBCASE("a Reply thrown by the handler answers every recipient") {
      smtpd::Options o = Session::lmtp();
      o.per_recipient_handler = [](const smtpd::SessionInfo&, const smtpd::Envelope&,
                                   const std::string&) -> smtpd::RecipientReplies {
        throw Reply{554, "5.6.0", "Content refused"};
      };
      Session s(o);
      two_recipients(s);
      s.send("DATA\r\n");
      CHECK(s.send("x\r\n.\r\n") ==
            lines({"554 5.6.0 Content refused", "554 5.6.0 Content refused"}));
    }
    SUBCASE("any other exception: 451 for each, and the session goes on") {
      smtpd::Options o = Session::lmtp();
      o.per_recipient_handler = [](const smtpd::SessionInfo&, const smtpd::Envelope&,
                                   const std::string&) -> smtpd::RecipientReplies {
        throw std::runtime_error("disk on fire");
      };
      Session s(o);
      two_recipients(s);
      s.send("DATA\r\n");
      std::string local = "451 4.3.0 Local error in processing, try again later";
      CHECK(s.send("x\r\n.\r\n") == lines({local, local}));
      CHECK_FALSE(s.protocol->should_close());
    }
  }

  TEST_CASE("verdicts per recipient: a list of the wrong length is a bug, never a delivery") {
    Session s;
    two_recipients(s);
    s.verdicts = {std::nullopt}; // one verdict for two recipients
    s.send("DATA\r\n");
    std::string local = "451 4.3.0 Local error in processing, try again later";
    CHECK(s.send("x\r\n.\r\n") == lines({local, local}));
    REQUIRE_FALSE(s.errors.empty());
    CHECK(s.errors.back().find("gave 1 verdicts for 2 recipients") != std::string::npos);
  }

  TEST_CASE("RFC 2033 §4.2, RFC 3030 §4: BDAT LAST is answered per recipient, other chunks once") {
    Session s;
    two_recipients(s);
    s.verdicts = {Reply{550, "5.1.1", "No such user"}, std::nullopt};
    CHECK(s.send("BDAT 6\r\nHello ") == lines({"250 2.0.0 6 octets received"}));
    CHECK(s.send("BDAT 7 LAST\r\nworld\r\n") == lines({"550 5.1.1 No such user", queued}));
    REQUIRE(s.delivered.size() == 1);
    CHECK(s.delivered[0].envelope.chunked);
    CHECK(s.delivered[0].data.substr(s.delivered[0].data.size() - 13) == "Hello world\r\n");
  }

  TEST_CASE("RFC 2920 with RFC 2033: a pipelined LMTP group with BDAT, split at every offset") {
    const std::string input = "LHLO client.test\r\n"
                              "MAIL FROM:<a@x.test>\r\n"
                              "RCPT TO:<b@y.test>\r\n"
                              "RCPT TO:<c@y.test>\r\n"
                              "RCPT TO:<d@y.test>\r\n"
                              "BDAT 9\r\nSubject: "
                              "BDAT 6 LAST\r\nhi\r\n\r\n"
                              "QUIT\r\n";
    const std::string expected = lhlo_reply + lines({"250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok",
                                                     "250 2.1.5 Ok", "250 2.0.0 9 octets received",
                                                     queued, queued, queued, "221 2.0.0 Bye"});
    smtpd::Options o = Session::lmtp();
    Session whole(o);
    CHECK(printable(whole.send(input)) == printable(expected));
    CHECK(whole.protocol->should_close());
    for (std::size_t at = 1; at < input.size(); ++at) {
      INFO("split at ", at);
      CHECK(printable(run_split(o, input, at)) == printable(expected));
    }
  }

  TEST_CASE("RFC 2033 §4.2: a pipelined DATA group gets its replies in order") {
    Session s;
    REQUIRE(s.send("LHLO client.test\r\n") == lhlo_reply);
    s.verdicts = {std::nullopt, Reply{450, "4.2.1", "Try later"}};
    CHECK(s.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n"
                 "x\r\n.\r\nNOOP\r\n") == lines({"250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok",
                                                 "354 End data with <CR><LF>.<CR><LF>", queued,
                                                 "450 4.2.1 Try later", "250 2.0.0 Ok"}));
  }

  TEST_CASE("a message refused for many recipients counts as one error, not one per recipient") {
    smtpd::Options o = Session::lmtp();
    o.hard_error_limit = 3;
    Session s(o);
    REQUIRE(s.send("LHLO client.test\r\n") == lhlo_reply);
    s.send("MAIL FROM:<a@x.test>\r\n");
    for (int i = 0; i < 10; ++i)
      REQUIRE(s.send("RCPT TO:<r" + std::to_string(i) + "@y.test>\r\n") == lines({"250 2.1.5 Ok"}));
    s.verdicts.assign(10, Reply{550, "5.1.1", "No such user"});
    s.send("DATA\r\n");
    std::string out = s.send("x\r\n.\r\n");
    CHECK(out.size() == 10 * lines({"550 5.1.1 No such user"}).size());
    CHECK_FALSE(s.protocol->should_close());
    CHECK(s.send("NOOP\r\n") == lines({"250 2.0.0 Ok"}));
  }

  TEST_CASE("a 421 among the verdicts is sent in its place and then the connection closes") {
    Session s;
    two_recipients(s);
    s.verdicts = {Reply{421, "4.3.2", "Going down"}, std::nullopt};
    s.send("DATA\r\n");
    CHECK(s.send("x\r\n.\r\n") == lines({"421 4.3.2 Going down", queued}));
    CHECK(s.protocol->should_close());
  }

  TEST_CASE("RFC 5321 §4.1.1.4: in SMTP, verdicts per recipient fold into one reply") {
    smtpd::Options smtp;
    Session s(smtp);
    auto run = [&](smtpd::RecipientReplies verdicts) {
      s.verdicts = std::move(verdicts);
      s.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n"
             "RCPT TO:<d@y.test>\r\nDATA\r\n");
      return s.send("x\r\n.\r\n");
    };
    REQUIRE(s.send("EHLO client.test\r\n").find("250 LIMITS") != std::string::npos);
    SUBCASE("all delivered: the first recipient's reply") {
      CHECK(run({Reply{250, "2.0.0", "first"}, Reply{250, "2.0.0", "second"}, std::nullopt}) ==
            lines({"250 2.0.0 first"}));
      CHECK(run({}) == lines({queued}));
    }
    SUBCASE("a refusal wins over delivery (RFC 5321 §6.1: no silent loss)") {
      CHECK(run({std::nullopt, Reply{550, "5.1.1", "No such user"}, std::nullopt}) ==
            lines({"550 5.1.1 No such user"}));
    }
    SUBCASE("a temporary refusal wins over a permanent one: the client tries again") {
      CHECK(run({Reply{550, "5.1.1", "No such user"}, std::nullopt,
                 Reply{452, "4.2.2", "Mailbox full"}}) == lines({"452 4.2.2 Mailbox full"}));
    }
    SUBCASE("a 421 wins over everything, and closes") {
      CHECK(run({Reply{450, "4.2.1", "later"}, Reply{421, "4.3.2", "Going down"}, std::nullopt}) ==
            lines({"421 4.3.2 Going down"}));
      CHECK(s.protocol->should_close());
    }
  }

  TEST_CASE("RFC 3848: the Received header says LMTP, LMTPS, UTF8LMTP") {
    SUBCASE("plain") {
      Session s;
      two_recipients(s);
      s.send("DATA\r\nx\r\n.\r\n");
      REQUIRE(s.delivered.size() == 1);
      CHECK(s.delivered[0].data.find("by mx.test (smtpd) with LMTP id ") != std::string::npos);
    }
    SUBCASE("over TLS") {
      Session s(Session::lmtp(), test::tls_info());
      two_recipients(s);
      s.send("DATA\r\nx\r\n.\r\n");
      REQUIRE(s.delivered.size() == 1);
      CHECK(s.delivered[0].data.find(" with LMTPS id ") != std::string::npos);
    }
    SUBCASE("with SMTPUTF8 (RFC 6531 §3.7.3)") {
      Session s;
      REQUIRE(s.send("LHLO client.test\r\n") == lhlo_reply);
      s.send("MAIL FROM:<a@x.test> SMTPUTF8\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n");
      REQUIRE(s.delivered.size() == 1);
      CHECK(s.delivered[0].data.find(" with UTF8LMTP id ") != std::string::npos);
    }
  }

  TEST_CASE("a Unix-socket client: Received names its process, not an address") {
    smtpd::SessionInfo info;
    info.peer.unix_path = "/run/lmtp.sock";
    info.peer.pid = 42;
    info.peer.uid = 1000;
    info.peer.gid = 100;
    CHECK(info.peer.to_string() == "unix:/run/lmtp.sock[pid=42,uid=1000,gid=100]");
    Session s(Session::lmtp(), info);
    two_recipients(s);
    s.send("DATA\r\nx\r\n.\r\n");
    REQUIRE(s.delivered.size() == 1);
    CHECK(s.delivered[0].data.rfind(
              "Received: from client.test (via unix socket, uid 1000 pid 42)\r\n\tby mx.test", 0) ==
          0);
  }

  TEST_CASE("HELP in LMTP lists LHLO") {
    Session s;
    CHECK(s.send("HELP\r\n").find("Commands: LHLO MAIL") != std::string::npos);
  }

  TEST_CASE("Session::message_per_recipient, and message()'s one verdict for all by default") {
    struct PerRecipient : smtpd::Session {
      smtpd::RecipientReplies message_per_recipient(const smtpd::SessionInfo&,
                                                    const smtpd::Envelope& e,
                                                    const std::string&) override {
        smtpd::RecipientReplies r;
        for (const std::string& to : e.to)
          r.push_back(to == "c@y.test" ? std::optional<Reply>(Reply{550, "5.1.1", "gone"})
                                       : std::nullopt);
        return r;
      }
    };

    struct Whole : smtpd::Session {
      std::optional<Reply> message(const smtpd::SessionInfo&, const smtpd::Envelope&,
                                   const std::string&) override {
        return Reply{250, "2.0.0", "Stored"};
      }
    };

    smtpd::Options o = Session::lmtp();
    SUBCASE("per recipient") {
      o.new_session = [](const smtpd::SessionInfo&) { return std::make_unique<PerRecipient>(); };
      Session s(o);
      two_recipients(s);
      s.send("DATA\r\n");
      CHECK(s.send("x\r\n.\r\n") == lines({queued, "550 5.1.1 gone"}));
    }
    SUBCASE("one verdict") {
      o.new_session = [](const smtpd::SessionInfo&) { return std::make_unique<Whole>(); };
      Session s(o);
      two_recipients(s);
      s.send("DATA\r\n");
      CHECK(s.send("x\r\n.\r\n") == lines({"250 2.0.0 Stored", "250 2.0.0 Stored"}));
    }
  }

  TEST_CASE("MessageSink::finish_per_recipient for a streamed message") {
    struct Sink : smtpd::MessageSink {
      std::string* got;

      explicit Sink(std::string* g) : got(g) {}

      void write(std::string_view piece) override { got->append(piece); }

      std::optional<Reply> finish() override { return Reply{250, "2.0.0", "whole"}; }

      smtpd::RecipientReplies finish_per_recipient(const smtpd::Envelope& e) override {
        smtpd::RecipientReplies r(e.to.size());
        r.back() = Reply{452, "4.2.2", "Mailbox full"};
        return r;
      }
    };

    std::string got;
    smtpd::Options o = Session::lmtp();
    o.stream_handler = [&](const smtpd::SessionInfo&, const smtpd::Envelope&) {
      return std::make_unique<Sink>(&got);
    };
    Session s(o);
    two_recipients(s);
    s.send("DATA\r\n");
    CHECK(s.send("body\r\n.\r\n") == lines({queued, "452 4.2.2 Mailbox full"}));
    CHECK(got.substr(got.size() - 6) == "body\r\n");
  }

  TEST_CASE("Options: two handlers, or a handler beside new_session, are refused") {
    smtpd::Options o;
    o.addr = "127.0.0.1:0";
    o.per_recipient_handler = [](const smtpd::SessionInfo&, const smtpd::Envelope& e,
                                 const std::string&) {
      return smtpd::RecipientReplies(e.to.size());
    };
    o.message_handler = [](const smtpd::SessionInfo&, const smtpd::Envelope&, const std::string&) {
      return std::optional<Reply>();
    };
    CHECK_THROWS_AS(smtpd::Server{o}, std::invalid_argument);
    o.message_handler = nullptr;
    o.new_session = [](const smtpd::SessionInfo&) { return std::make_unique<smtpd::Session>(); };
    CHECK_THROWS_AS(smtpd::Server{o}, std::invalid_argument);
  }

} // TEST_SUITE("lmtp")
