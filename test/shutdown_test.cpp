// shutdown_test.cpp - Server::drain(): stop accepting and leave the open sessions alone, then
// the graceful shutdown; and drain() against a shutdown() or close() on other threads. Each test
// runs a Server on 127.0.0.1 port 0, serving on its own thread (Serving), with test::Client as
// the client; every wait is bounded, and nothing is timed.
#include "test_client.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <future>
#include <memory>
#include <thread>
#include <vector>

using namespace test;

namespace {

const char* const shutting_down_421 = "421 4.3.2 Service shutting down, try again later\r\n";

// Serving - a Server listening on 127.0.0.1 port 0 and serving on a thread of its own for the
// length of a scope; the destructor close()s it and joins the thread. Declare the futures of
// calls made in the background after it, so that they end before the Server does.
class Serving {
public:
  explicit Serving(smtpd::Options options) : server(std::move(options)) {
    server.listen();
    port = server.port();
    thread_ = std::thread([this] {
      try {
        server.serve();
      } catch (const std::exception&) { // a logic_error: ready stays false, the test says so
      }
      returned_ = true;
    });
    ready = server.wait_ready(5s);
  }

  ~Serving() {
    server.close();
    thread_.join();
  }

  Serving(const Serving&) = delete;
  Serving& operator=(const Serving&) = delete;

  // serve_returned - serve() has returned on the serving thread.
  bool serve_returned() const { return returned_; }

  smtpd::Server server;
  uint16_t port = 0;
  bool ready = false;

private:
  std::thread thread_;
  std::atomic<bool> returned_{false};
};

// options_counting - loopback options whose handler counts the messages in `accepted`.
smtpd::Options options_counting(std::atomic<int>& accepted) {
  smtpd::Options options;
  options.addr = "127.0.0.1:0";
  options.hostname = "mx.test";
  options.handler = [&accepted](const smtpd::Peer&, const std::string&,
                                const std::vector<std::string>&,
                                const std::string&) { ++accepted; };
  return options;
}

// greeted - `c` is connected, and got 220 for the greeting and 250 for EHLO.
bool greeted(Client& c) {
  return c.connected() && reply_code(c.read_reply()) == 220 &&
         reply_code(c.command("EHLO client.example")) == 250;
}

// refused - a new client on `port` cannot connect (the kernel refuses it: nothing listens).
bool refused(uint16_t port) {
  Client c(port, "127.0.0.1", 1s);
  return !c.connected();
}

// message - one whole transaction on `c`; the reply to the final dot.
std::string message(Client& c) {
  return send_message(c, "a@example.org", "b@example.net", "Subject: drained\r\n\r\nHi.\r\n");
}

} // namespace

TEST_SUITE("shutdown") {

  TEST_CASE("drain: serve() returns and new clients are refused at once; open sessions go on "
            "until they QUIT (221), and then drain() returns true") {
    std::atomic<int> accepted{0};
    Serving s(options_counting(accepted));
    REQUIRE(s.ready);
    Client idle(s.port);
    REQUIRE(greeted(idle));
    Client busy(s.port);
    REQUIRE(greeted(busy));
    CHECK(reply_code(busy.command("MAIL FROM:<a@example.org>")) == 250);

    auto drained = std::async(std::launch::async, [&] { return s.server.drain(20s); });
    CHECK(poll_until([&] { return s.serve_returned(); }, 5s));
    CHECK(poll_until([&] { return refused(s.port); }, 5s));
    CHECK(drained.wait_for(0ms) == std::future_status::timeout); // two sessions are open

    // Both sessions carry on as if nothing happened, further transactions included.
    CHECK(reply_code(idle.command("NOOP")) == 250);
    CHECK(reply_code(busy.command("RCPT TO:<b@example.net>")) == 250);
    CHECK(reply_code(busy.command("DATA")) == 354);
    busy.send("Subject: in flight\r\n\r\nHi.\r\n.\r\n");
    CHECK(reply_code(busy.read_reply()) == 250);
    CHECK(reply_code(message(busy)) == 250);
    CHECK(busy.command("QUIT") == "221 2.0.0 Bye\r\n");
    CHECK(busy.wait_closed());
    CHECK(drained.wait_for(0ms) == std::future_status::timeout); // one session is open
    CHECK(idle.command("QUIT") == "221 2.0.0 Bye\r\n");
    CHECK(idle.wait_closed());

    REQUIRE(drained.wait_for(10s) == std::future_status::ready);
    CHECK(drained.get());
    CHECK(s.server.connections() == 0);
    CHECK(accepted == 2);
    s.server.shutdown(5s); // nothing left to stop: it returns
    CHECK(refused(s.port));
  }

  TEST_CASE("drain: a session still open when the time is up is left alone; shutdown() then "
            "sends it 421 4.3.2") {
    std::atomic<int> accepted{0};
    Serving s(options_counting(accepted));
    REQUIRE(s.ready);
    Client c(s.port);
    REQUIRE(greeted(c));

    CHECK_FALSE(s.server.drain(0ms)); // drain(0ms) only stops accepting
    CHECK(s.server.connections() == 1);
    CHECK(poll_until([&] { return s.serve_returned(); }, 5s));
    CHECK(refused(s.port));
    CHECK(reply_code(message(c)) == 250); // the session goes on
    CHECK_FALSE(s.server.drain(50ms));

    auto stopped = std::async(std::launch::async, [&] { s.server.shutdown(5s); });
    CHECK(c.read_reply() == shutting_down_421);
    CHECK(c.wait_closed());
    CHECK(stopped.wait_for(10s) == std::future_status::ready);
    CHECK(s.server.connections() == 0);
    CHECK(accepted == 1);
  }

  TEST_CASE("drain returns early when shutdown() or close() begins on another thread") {
    std::atomic<int> accepted{0};
    Serving s(options_counting(accepted));
    REQUIRE(s.ready);
    Client c(s.port);
    REQUIRE(greeted(c));

    auto drained = std::async(std::launch::async, [&] { return s.server.drain(20s); });
    CHECK(poll_until([&] { return s.serve_returned(); }, 5s));
    SUBCASE("shutdown") {
      auto stopped = std::async(std::launch::async, [&] { s.server.shutdown(5s); });
      CHECK(c.read_reply() == shutting_down_421);
      CHECK(stopped.wait_for(10s) == std::future_status::ready);
    }
    SUBCASE("close") {
      s.server.close();
    }
    CHECK(c.wait_closed());
    CHECK(drained.wait_for(10s) == std::future_status::ready);
    CHECK(s.server.connections() == 0);
  }

  TEST_CASE("drain before serve(): serve() returns at once; after shutdown(): true at once") {
    std::atomic<int> accepted{0};
    {
      smtpd::Server server(options_counting(accepted));
      server.listen();
      CHECK(server.drain(0ms)); // no session: true
      CHECK(server.address() == "");
      CHECK_NOTHROW(server.serve()); // final, like shutdown()
      CHECK_FALSE(server.wait_ready(50ms));
    }
    Serving s(options_counting(accepted));
    REQUIRE(s.ready);
    s.server.shutdown(1s);
    CHECK(s.server.drain(20s));
    CHECK(poll_until([&] { return s.serve_returned(); }, 5s));
  }

  TEST_CASE("drain, shutdown and close from many threads at once: each returns, every session "
            "ends") {
    std::atomic<int> accepted{0};
    Serving s(options_counting(accepted));
    REQUIRE(s.ready);
    std::vector<std::unique_ptr<Client>> clients;
    for (int i = 0; i < 8; ++i) {
      clients.push_back(std::make_unique<Client>(s.port));
      REQUIRE(greeted(*clients.back()));
    }
    CHECK(reply_code(clients[0]->command("MAIL FROM:<a@example.org>")) == 250);

    std::vector<std::future<void>> calls;
    for (int i = 0; i < 3; ++i) {
      calls.push_back(std::async(std::launch::async, [&] { s.server.drain(20s); }));
      calls.push_back(std::async(std::launch::async, [&] { s.server.shutdown(2s); }));
    }
    calls.push_back(std::async(std::launch::async, [&] { s.server.close(); }));
    for (auto& call : calls)
      CHECK(call.wait_for(20s) == std::future_status::ready);
    for (auto& c : clients)
      CHECK(c->wait_closed());
    CHECK(s.server.connections() == 0);
    CHECK(poll_until([&] { return s.serve_returned(); }, 5s));
    CHECK(refused(s.port));
  }
}
