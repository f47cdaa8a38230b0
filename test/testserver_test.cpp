// testserver_test.cpp - smtpd::TestServer, the in-process server for other people's test suites
// (the README's "Testing your code with smtpd" example), driven by a real socket client.
#include "../smtpd.hpp"
#include "test_client.hpp"

#include <doctest/doctest.h>

#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using namespace std::string_literals;
using test::contains;
using test::ends_with;
using test::starts_with;

namespace {

// send_mail - one whole SMTP transaction to 127.0.0.1:`port`, as an application would: with
// the library's own client (the README's "Testing your code" case). Throws when refused.
void send_mail(uint16_t port, const std::string& from, const std::string& to,
               const std::string& content) {
  smtpd::ClientOptions client;
  client.helo_name = "app.test";
  smtpd::Reply r =
      smtpd::SendMail("127.0.0.1:" + std::to_string(port), from, {to}, content, client);
  CHECK(r.code == 250);
}

// session - a connected Client past the greeting and EHLO (both REQUIREd).
void session(test::Client& c) {
  REQUIRE(c.connected());
  REQUIRE(c.read_reply().rfind("220 ", 0) == 0);
  REQUIRE(c.command("EHLO app.test").rfind("250", 0) == 0);
}

// Seen - what the user's handlers of a test were given, under a mutex (they run on the server's
// threads): the data of each message they were asked about, and how their sinks ended.
struct Seen {
  std::mutex mu;
  std::vector<std::string> data; // per message: what the handler saw, or the bytes a sink got
  std::size_t writes = 0;        // MessageSink::write() calls, over all sinks
  std::size_t abandoned = 0;     // sinks destroyed without finish()

  void saw(std::string message) {
    std::lock_guard<std::mutex> lock(mu);
    data.push_back(std::move(message));
  }
};

// Sink - a user's MessageSink that keeps the bytes it gets and judges by them: a message with
// "spam" is refused at finish(), one with "poison" at the write() that completes the word.
class Sink : public smtpd::MessageSink {
public:
  explicit Sink(std::shared_ptr<Seen> seen) : seen_(std::move(seen)) {}

  ~Sink() override {
    std::lock_guard<std::mutex> lock(seen_->mu);
    if (!finished_) ++seen_->abandoned;
  }

  void write(std::string_view piece) override {
    bytes_ += piece;
    {
      std::lock_guard<std::mutex> lock(seen_->mu);
      ++seen_->writes;
    }
    if (contains(bytes_, "poison")) throw smtpd::Reply{554, "5.6.0", "Poisoned"};
  }

  std::optional<smtpd::Reply> finish() override {
    finished_ = true;
    seen_->saw(bytes_);
    if (contains(bytes_, "spam")) return smtpd::Reply{554, "5.7.1", "Spam"};
    return std::nullopt;
  }

private:
  std::shared_ptr<Seen> seen_;
  std::string bytes_;
  bool finished_ = false;
};

// lines - `count` lines of 50 characters, CRLF included: a message body of several pieces.
std::string lines(int count) {
  std::string body;
  for (int i = 0; i < count; ++i)
    body += std::string(48, char('a' + i % 26)) + "\r\n";
  return body;
}

const char* const queued = "250 2.0.0 Ok: queued as ";

} // namespace

TEST_SUITE("testserver") {

  TEST_CASE("TestServer: serves on 127.0.0.1, a free port, and keeps accepted messages") {
    smtpd::TestServer smtp;
    CHECK(smtp.port() != 0);
    CHECK(smtp.address() == "127.0.0.1:" + std::to_string(smtp.port()));
    send_mail(smtp.port(), "app@example.test", "user@example.test", "Subject: reset\r\n\r\nhi");
    REQUIRE(smtp.wait_for(1, 5s));
    std::vector<smtpd::TestServer::Message> got = smtp.messages();
    REQUIRE(got.size() == 1);
    CHECK(got[0].envelope.from == "app@example.test");
    CHECK(got[0].envelope.to == std::vector<std::string>{"user@example.test"});
    CHECK(got[0].session.helo == "app.test");
    CHECK(got[0].data.rfind("Received: from app.test", 0) == 0);
    CHECK(got[0].data.find("\r\nSubject: reset\r\n\r\nhi\r\n") != std::string::npos);
    smtp.clear();
    CHECK(smtp.messages().empty());
    CHECK_FALSE(smtp.wait_for(1, 50ms));
  }

  TEST_CASE("TestServer: the user's handler is called first and may refuse") {
    smtpd::Options options;
    options.on_rcpt = [](const smtpd::SessionInfo&, const std::string& to,
                         const smtpd::Params&) -> std::optional<smtpd::Reply> {
      if (to == "nobody@example.test") return smtpd::Reply{550, "5.1.1", "No such user"};
      return std::nullopt;
    };
    options.message_handler = [](const smtpd::SessionInfo&, const smtpd::Envelope&,
                                 const std::string& data) -> std::optional<smtpd::Reply> {
      if (data.find("spam") != std::string::npos) return smtpd::Reply{554, "5.7.1", "Spam"};
      return std::nullopt;
    };
    smtpd::TestServer smtp(options);
    test::Client c(smtp.port());
    REQUIRE(c.connected());
    c.expect(220);
    c.command("EHLO app.test");
    c.command("MAIL FROM:<a@example.test>");
    CHECK(c.command("RCPT TO:<nobody@example.test>") == "550 5.1.1 No such user\r\n");
    c.command("RCPT TO:<b@example.test>");
    c.command("DATA");
    CHECK(c.command("spam spam\r\n.") == "554 5.7.1 Spam\r\n");
    send_mail(smtp.port(), "a@example.test", "b@example.test", "ham");
    REQUIRE(smtp.wait_for(1, 5s));
    CHECK(smtp.messages().size() == 1);
  }

  TEST_CASE("TestServer: many senders at once, each message kept once") {
    smtpd::TestServer smtp;
    std::vector<std::thread> senders;
    for (int i = 0; i < 8; ++i)
      senders.emplace_back([&, i] {
        send_mail(smtp.port(), "s" + std::to_string(i) + "@example.test", "r@example.test",
                  "Subject: " + std::to_string(i));
      });
    for (std::thread& t : senders)
      t.join();
    REQUIRE(smtp.wait_for(8, 5s));
    CHECK(smtp.messages().size() == 8);
  }

  TEST_CASE("TestServer: the destructor stops the server; its port is free again") {
    uint16_t port = 0;
    {
      smtpd::TestServer smtp;
      port = smtp.port();
    }
    test::Client c(port);
    CHECK_FALSE(c.connected());
  }

  // --- the three kinds of handler ------------------------------------------------------------

  TEST_CASE("TestServer with a Handler: called first, it may refuse by throwing; only what it "
            "accepted is kept, as it saw it") {
    auto seen = std::make_shared<Seen>();
    smtpd::Options options;
    options.hostname = "mx.test";
    options.handler = [seen](const smtpd::Peer&, const std::string&,
                             const std::vector<std::string>& to, const std::string& data) {
      seen->saw(data);
      if (to.front() == "nobody@example.test") throw smtpd::Reply{550, "5.1.1", "No such user"};
      if (to.front() == "crash@example.test") throw std::runtime_error("disk on fire");
    };
    smtpd::TestServer smtp(options);
    test::Client c(smtp.port());
    session(c);
    CHECK(test::send_message(c, "a@example.test", "nobody@example.test",
                             "Subject: 1\r\n\r\nrefused\r\n") == "550 5.1.1 No such user\r\n");
    CHECK(starts_with(test::send_message(c, "a@example.test", "crash@example.test",
                                         "Subject: 2\r\n\r\nfailed\r\n"),
                      "451 4.3.0 "));
    CHECK(starts_with(
        test::send_message(c, "a@example.test", "b@example.test", "Subject: 3\r\n\r\nkept\r\n"),
        queued));

    std::vector<smtpd::TestServer::Message> got = smtp.messages();
    REQUIRE(got.size() == 1);
    CHECK(got[0].envelope.to == std::vector<std::string>{"b@example.test"});
    CHECK(got[0].session.peer.ip == "127.0.0.1");
    CHECK(ends_with(got[0].data, "\r\nSubject: 3\r\n\r\nkept\r\n"));
    std::lock_guard<std::mutex> lock(seen->mu);
    REQUIRE(seen->data.size() == 3); // asked about every message, the refused ones too
    CHECK(got[0].data == seen->data[2]);
  }

  TEST_CASE("TestServer with a MessageHandler: its verdict is what the client hears; nullopt or "
            "a 2xx keeps the message") {
    auto seen = std::make_shared<Seen>();
    smtpd::Options options;
    options.hostname = "mx.test";
    options.message_handler = [seen](const smtpd::SessionInfo&, const smtpd::Envelope&,
                                     const std::string& data) -> std::optional<smtpd::Reply> {
      seen->saw(data);
      if (contains(data, "spam")) return smtpd::Reply{554, "5.7.1", "Spam"};
      if (contains(data, "odd")) return smtpd::Reply{354, "", "not a verdict"}; // becomes 451
      if (contains(data, "custom")) return smtpd::Reply{250, "2.0.0", "Kept for you"};
      return std::nullopt;
    };
    smtpd::TestServer smtp(options);
    test::Client c(smtp.port());
    session(c);
    auto send = [&](const std::string& subject) {
      return test::send_message(c, "a@example.test", "b@example.test",
                                "Subject: " + subject + "\r\n\r\nbody\r\n");
    };
    CHECK(send("spam") == "554 5.7.1 Spam\r\n");
    CHECK(starts_with(send("odd"), "451 4.3.0 "));
    CHECK(send("custom") == "250 2.0.0 Kept for you\r\n");
    CHECK(starts_with(send("plain"), queued));

    std::vector<smtpd::TestServer::Message> got = smtp.messages();
    REQUIRE(got.size() == 2);
    CHECK(ends_with(got[0].data, "\r\nSubject: custom\r\n\r\nbody\r\n"));
    CHECK(ends_with(got[1].data, "\r\nSubject: plain\r\n\r\nbody\r\n"));
    std::lock_guard<std::mutex> lock(seen->mu);
    REQUIRE(seen->data.size() == 4);
    CHECK(got[0].data == seen->data[2]);
    CHECK(got[1].data == seen->data[3]);
  }

  TEST_CASE("TestServer with a StreamHandler: the sink gets every piece; the message is kept, "
            "byte for byte as the sink got it, when finish() accepts") {
    auto seen = std::make_shared<Seen>();
    smtpd::Options options;
    options.hostname = "mx.test";
    options.stream_chunk_bytes = 64; // a message of many pieces
    options.stream_handler =
        [seen](const smtpd::SessionInfo&,
               const smtpd::Envelope& envelope) -> std::unique_ptr<smtpd::MessageSink> {
      if (envelope.from == "blocked@example.test") throw smtpd::Reply{550, "5.7.1", "Blocked"};
      return std::make_unique<Sink>(seen);
    };
    smtpd::TestServer smtp(options);
    test::Client c(smtp.port());
    session(c);
    const std::string body = "Subject: kept\r\n\r\n" + lines(20);
    CHECK(starts_with(test::send_message(c, "a@example.test", "b@example.test", body), queued));
    CHECK(test::send_message(c, "a@example.test", "b@example.test",
                             "Subject: spam\r\n\r\n" + lines(3)) == "554 5.7.1 Spam\r\n");
    // The handler itself refuses: DATA gets its Reply, and there is no sink.
    CHECK(test::send_message(c, "blocked@example.test", "b@example.test", "x\r\n") ==
          "550 5.7.1 Blocked\r\n");
    CHECK(c.command("QUIT") == "221 2.0.0 Bye\r\n");

    std::vector<smtpd::TestServer::Message> got = smtp.messages();
    REQUIRE(got.size() == 1);
    CHECK(got[0].envelope.from == "a@example.test");
    CHECK(got[0].envelope.to == std::vector<std::string>{"b@example.test"});
    CHECK(got[0].session.helo == "app.test");
    CHECK(starts_with(got[0].data, "Received: from app.test ([127.0.0.1])\r\n"));
    CHECK(ends_with(got[0].data, "\r\n" + body));
    std::lock_guard<std::mutex> lock(seen->mu);
    REQUIRE(seen->data.size() == 2); // both sinks were finished
    CHECK(got[0].data == seen->data[0]);
    CHECK(seen->writes >= got[0].data.size() / 64);
    CHECK(seen->abandoned == 0);
  }

  TEST_CASE("TestServer with a PerRecipientHandler, over LMTP (RFC 2033 §4.2): kept with the "
            "recipients it was delivered to; smtpd::Client reads one reply per recipient") {
    smtpd::Options options;
    options.hostname = "mx.test";
    options.lmtp = true;
    options.per_recipient_handler = [](const smtpd::SessionInfo&, const smtpd::Envelope& e,
                                       const std::string&) {
      smtpd::RecipientReplies verdicts;
      for (const std::string& to : e.to)
        verdicts.push_back(starts_with(to, "full")
                               ? std::optional<smtpd::Reply>({452, "4.2.2", "Mailbox full"})
                               : std::nullopt);
      return verdicts;
    };
    smtpd::TestServer lmtp(options);
    smtpd::ClientOptions client_options;
    client_options.lmtp = true;
    smtpd::Client client(lmtp.address(), client_options);
    client.hello();
    smtpd::SendResult r =
        client.send("a@example.test", {"b@example.test", "full@example.test", "c@example.test"},
                    "Subject: lmtp\n\nhi\n");
    REQUIRE(r.data.size() == 3);
    CHECK(starts_with(r.data[0].text, "Ok: queued as "));
    CHECK(r.data[1].code == 452);
    CHECK(r.data[1].text == "Mailbox full");
    CHECK(r.data[2].code == 250);
    CHECK(r.accepted(0));
    CHECK_FALSE(r.accepted(1));
    // Delivered to nobody: not kept.
    r = client.send("a@example.test", {"full@example.test"}, "Subject: none\n\nx\n");
    REQUIRE(r.data.size() == 1);
    CHECK(r.data[0].code == 452);
    client.quit();

    std::vector<smtpd::TestServer::Message> got = lmtp.messages();
    REQUIRE(got.size() == 1);
    CHECK(got[0].envelope.to.size() == 3);
    CHECK(got[0].delivered_to == std::vector<std::string>{"b@example.test", "c@example.test"});
    CHECK(ends_with(got[0].data, "\r\nSubject: lmtp\r\n\r\nhi\r\n"));
  }

  TEST_CASE("TestServer with a StreamHandler: an abandoned sink keeps nothing") {
    auto seen = std::make_shared<Seen>();
    smtpd::Options options;
    options.hostname = "mx.test";
    options.max_message_bytes = 1000;
    options.stream_handler = [seen](const smtpd::SessionInfo&, const smtpd::Envelope&) {
      return std::make_unique<Sink>(seen);
    };
    smtpd::TestServer smtp(options);
    test::Client c(smtp.port());
    session(c);
    // Too big: the rest is read and dropped, and finish() is never called.
    CHECK(starts_with(test::send_message(c, "a@example.test", "b@example.test",
                                         "Subject: big\r\n\r\n" + lines(40)),
                      "552 "));
    // A write() that throws refuses the message with its Reply; finish() is never called.
    CHECK(test::send_message(c, "a@example.test", "b@example.test",
                             "Subject: poison\r\n\r\nx\r\n") == "554 5.6.0 Poisoned\r\n");
    { // a client that goes away in the middle of the content
      test::Client gone(smtp.port());
      session(gone);
      CHECK(gone.command("MAIL FROM:<a@example.test>").rfind("250", 0) == 0);
      CHECK(gone.command("RCPT TO:<b@example.test>").rfind("250", 0) == 0);
      CHECK(gone.command("DATA").rfind("354", 0) == 0);
      REQUIRE(gone.send("Subject: cut\r\n\r\nhalf a li"));
    }
    CHECK(test::poll_until(
        [&] {
          std::lock_guard<std::mutex> lock(seen->mu);
          return seen->abandoned == 3;
        },
        5s));
    CHECK(smtp.messages().empty());
    std::lock_guard<std::mutex> lock(seen->mu);
    CHECK(seen->data.empty()); // no finish() at all
  }

  TEST_CASE("TestServer: two handlers are refused with std::invalid_argument, as Server does") {
    smtpd::Options options;
    options.handler = [](const smtpd::Peer&, const std::string&, const std::vector<std::string>&,
                         const std::string&) {};
    options.message_handler = [](const smtpd::SessionInfo&, const smtpd::Envelope&,
                                 const std::string&) -> std::optional<smtpd::Reply> {
      return std::nullopt;
    };
    CHECK_THROWS_AS(smtpd::TestServer{options}, std::invalid_argument);
    options.message_handler = nullptr;
    options.stream_handler = [](const smtpd::SessionInfo&, const smtpd::Envelope&) {
      return std::unique_ptr<smtpd::MessageSink>();
    };
    CHECK_THROWS_AS(smtpd::TestServer{options}, std::invalid_argument);
  }

  TEST_CASE("TestServer: a Session object gets every call through it, and its messages are kept") {
    // Calls - every Session method, counted; the object streams when `stream` is set.
    struct Calls {
      std::mutex mu;
      std::set<std::string> seen;

      void add(const std::string& name) {
        std::lock_guard<std::mutex> lock(mu);
        seen.insert(name);
      }
    };

    class Sink : public smtpd::MessageSink {
    public:
      void write(std::string_view) override {}

      std::optional<smtpd::Reply> finish() override { return std::nullopt; }
    };

    class Counting : public smtpd::Session {
    public:
      explicit Counting(Calls& c) : c_(c) {}

      std::optional<smtpd::Reply> command(const smtpd::SessionInfo&, std::string_view) override {
        return note("command");
      }

      std::optional<smtpd::Reply> hello(const smtpd::SessionInfo&, const std::string&) override {
        return note("hello");
      }

      std::optional<smtpd::Reply> mail(const smtpd::SessionInfo&, const std::string& from,
                                       const smtpd::MailOptions&) override {
        stream_ = from == "stream@example.test";
        return note("mail");
      }

      std::optional<smtpd::Reply> rcpt(const smtpd::SessionInfo&, const smtpd::Envelope&,
                                       const std::string&, const smtpd::RcptOptions&) override {
        return note("rcpt");
      }

      std::unique_ptr<smtpd::MessageSink> data(const smtpd::SessionInfo&,
                                               const smtpd::Envelope&) override {
        note("data");
        if (stream_) return std::make_unique<Sink>();
        return nullptr;
      }

      std::optional<smtpd::Reply> message(const smtpd::SessionInfo&, const smtpd::Envelope&,
                                          const std::string&) override {
        return note("message");
      }

      smtpd::RecipientReplies message_per_recipient(const smtpd::SessionInfo& s,
                                                    const smtpd::Envelope& e,
                                                    const std::string& data) override {
        note("message_per_recipient");
        return Session::message_per_recipient(s, e, data); // asks message()
      }

      void reset(const smtpd::SessionInfo&) override { note("reset"); }

      void close(const smtpd::SessionInfo&, smtpd::SessionEnd) override { note("close"); }

      std::vector<std::string> auth_mechanisms(const smtpd::SessionInfo&) override {
        note("auth_mechanisms");
        return {"PLAIN", "CRAM-MD5"};
      }

      bool check_password(const smtpd::SessionInfo&, const std::string&, const std::string&,
                          const std::string&, const std::string&) override {
        note("check_password");
        return true;
      }

      std::optional<std::string> secret(const smtpd::SessionInfo&, const std::string&) override {
        note("secret");
        return std::nullopt;
      }

    private:
      std::optional<smtpd::Reply> note(const std::string& name) {
        c_.add(name);
        return std::nullopt;
      }

      Calls& c_;
      bool stream_ = false;
    };

    Calls calls;
    smtpd::Options options;
    options.auth_insecure = true;
    options.auth_failure_delay = 0ms;
    options.new_session = [&](const smtpd::SessionInfo&) {
      return std::make_unique<Counting>(calls);
    };
    smtpd::TestServer smtp(options);
    {
      test::Client c(smtp.port());
      session(c);
      CHECK(starts_with(c.command("AUTH CRAM-MD5"), "334 "));
      CHECK(starts_with(c.command("YWxpY2UgMDA="), "535 ")); // "alice 00": secret() is asked
      CHECK(starts_with(c.command("AUTH PLAIN AGFsaWNlAHB3"), "235 "));
      for (const char* from : {"whole@example.test", "stream@example.test"}) {
        CHECK(starts_with(c.command("MAIL FROM:<"s + from + ">"), "250 "));
        CHECK(starts_with(c.command("RCPT TO:<b@example.test>"), "250 "));
        CHECK(starts_with(c.command("DATA"), "354 "));
        CHECK(starts_with(c.command("Subject: s\r\n\r\nhi\r\n."), "250 "));
      }
      CHECK(starts_with(c.command("QUIT"), "221 "));
    }
    REQUIRE(smtp.wait_for(2, 5s));
    std::vector<smtpd::TestServer::Message> got = smtp.messages();
    CHECK(got[0].envelope.from == "whole@example.test");
    CHECK(got[1].envelope.from == "stream@example.test");
    CHECK(ends_with(got[1].data, "\r\nSubject: s\r\n\r\nhi\r\n"));
    CHECK(test::poll_until(
        [&] {
          std::lock_guard<std::mutex> lock(calls.mu);
          return calls.seen.count("close") == 1;
        },
        5s));
    std::lock_guard<std::mutex> lock(calls.mu);
    CHECK(calls.seen == std::set<std::string>{"command", "hello", "mail", "rcpt", "data", "message",
                                              "message_per_recipient", "reset", "close",
                                              "auth_mechanisms", "check_password", "secret"});
  }

  // --- stopping --------------------------------------------------------------------------------

  TEST_CASE("TestServer: stop() cuts the clients and closes the port; again does nothing; port(), "
            "address() and messages() stay") {
    smtpd::TestServer smtp;
    uint16_t port = smtp.port();
    std::string address = smtp.address();
    send_mail(port, "a@example.test", "b@example.test", "Subject: before");
    test::Client idle(port);
    session(idle);

    smtp.stop();
    CHECK(idle.wait_closed());
    CHECK_FALSE(test::Client(port).connected());
    CHECK(smtp.server().connections() == 0);
    CHECK(smtp.port() == port);
    CHECK(smtp.address() == address);
    CHECK(smtp.messages().size() == 1);
    smtp.stop();
    CHECK(smtp.messages().size() == 1);
  }

} // TEST_SUITE("testserver")
