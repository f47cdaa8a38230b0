// testserver_test.cpp - smtpd::TestServer, the in-process server for other people's test suites
// (the README's "Testing your code with smtpd" example), driven by a real socket client.
#include "../smtpd.hpp"
#include "test_client.hpp"

#include <doctest/doctest.h>

using namespace std::chrono_literals;

namespace {

// send_mail - one whole SMTP transaction to 127.0.0.1:`port`, as an application would.
void send_mail(uint16_t port, const std::string& from, const std::string& to,
               const std::string& content) {
  test::Client c(port);
  REQUIRE(c.connected());
  c.expect(220);
  c.command("EHLO app.test");
  CHECK(c.command("MAIL FROM:<" + from + ">").rfind("250", 0) == 0);
  CHECK(c.command("RCPT TO:<" + to + ">").rfind("250", 0) == 0);
  CHECK(c.command("DATA").rfind("354", 0) == 0);
  CHECK(c.command(content + "\r\n.").rfind("250", 0) == 0);
  CHECK(c.command("QUIT").rfind("221", 0) == 0);
}

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

} // TEST_SUITE("testserver")
