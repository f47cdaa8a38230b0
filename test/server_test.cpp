// server_test.cpp - the Server over real sockets: a Server on 127.0.0.1 port 0 served on its own
// thread (smtpd::TestServer, or the test's own thread where serve() itself is tested), clients
// with timeouts on every socket (Client), and every wait bounded.
// Covers the connection loop and the Server: transactions, pipelining, concurrency, timeouts,
// the connection limit, abrupt clients, graceful shutdown and close(), addresses and options.
#include "test_client.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <system_error>
#include <vector>

#include <sched.h>

using namespace test;

namespace {

// greet - read the greeting and say EHLO; true when both were accepted.
bool greet(Client& c, const std::string& name = "client.example") {
  if (reply_code(c.read_reply()) != 220) return false;
  return reply_code(c.command("EHLO " + name)) == 250;
}

// require_greeted - `c` must be connected, greeted (220) and past EHLO (250).
void require_greeted(Client& c) {
  REQUIRE(c.connected());
  REQUIRE(greet(c));
}

// start_data - MAIL FROM:<a@example.org>, RCPT TO:<b@example.net> and DATA, a command at a time,
// each reply CHECKed (250, 250, 354): the message content comes next.
void start_data(Client& c) {
  CHECK(reply_code(c.command("MAIL FROM:<a@example.org>")) == 250);
  CHECK(reply_code(c.command("RCPT TO:<b@example.net>")) == 250);
  CHECK(reply_code(c.command("DATA")) == 354);
}

// ipv6_loopback_available - whether a plain socket can bind to ::1.
bool ipv6_loopback_available() {
  int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_storage address;
  socklen_t length = 0;
  bool ok = make_address("::1", 0, address, length) &&
            ::bind(fd, reinterpret_cast<sockaddr*>(&address), length) == 0;
  ::close(fd);
  return ok;
}

// can_connect - whether a TCP connection to 127.0.0.1:port is accepted by the kernel.
bool can_connect(uint16_t port) {
  Client c(port, "127.0.0.1", 1s);
  return c.connected();
}

const char* const queued_prefix = "250 2.0.0 Ok: queued as ";
const char* const shutting_down_421 = "421 4.3.2 Service shutting down, try again later\r\n";
const char* const timeout_421 = "421 4.4.2 Timeout exceeded, closing connection\r\n";

// CloseAtExit - close()s a Server when the scope ends. The tests of serve() itself run it on a
// std::async thread, and a failed REQUIRE must not leave the future's destructor waiting for a
// serve() that nobody stops.
struct CloseAtExit {
  smtpd::Server& server;

  ~CloseAtExit() { server.close(); }
};

} // namespace

TEST_SUITE("server") {

  // --- one session, end to end -------------------------------------------------------------------

  TEST_CASE(
      "RFC 5321 §3.3: a whole transaction over a socket; QUIT gets 221 and the server closes") {
    smtpd::Options options = loopback_options();
    smtpd::TestServer ts(options);

    Client c(ts.port());
    REQUIRE(c.connected());
    CHECK(c.expect(220) == "220 mx.test ESMTP smtpd\r\n");
    c.send("EHLO client.example\r\n");
    std::string ehlo = c.expect(250);
    CHECK(starts_with(ehlo, "250-mx.test\r\n"));
    CHECK(contains(ehlo, "250-PIPELINING\r\n"));
    c.send("MAIL FROM:<alice@example.org>\r\n");
    CHECK(c.expect(250) == "250 2.1.0 Ok\r\n");
    c.send("RCPT TO:<bob@example.net>\r\n");
    CHECK(c.expect(250) == "250 2.1.5 Ok\r\n");
    c.send("DATA\r\n");
    CHECK(c.expect(354) == "354 End data with <CR><LF>.<CR><LF>\r\n");
    c.send("Subject: hello\r\n\r\nHi Bob.\r\n..a stuffed dot\r\n.\r\n");
    CHECK(starts_with(c.expect(250), queued_prefix));
    c.send("QUIT\r\n");
    CHECK(c.expect(221) == "221 2.0.0 Bye\r\n");
    CHECK(c.wait_closed());
    CHECK(c.eof());
    CHECK(c.buffered().empty());

    std::vector<smtpd::TestServer::Message> got = ts.messages();
    REQUIRE(got.size() == 1);
    const smtpd::TestServer::Message& m = got[0];
    CHECK(m.session.peer.ip == "127.0.0.1");
    CHECK(m.session.peer.port != 0);
    CHECK(m.session.peer.port == c.local_port());
    CHECK(m.envelope.from == "alice@example.org");
    CHECK(m.envelope.to == std::vector<std::string>{"bob@example.net"});
    CHECK(starts_with(m.data, "Received: from client.example ([127.0.0.1])\r\n"
                              "\tby mx.test (smtpd) with ESMTP id "));
    CHECK(contains(m.data, "\r\n\tfor <bob@example.net>;\r\n\t"));
    CHECK(ends_with(m.data, "\r\nSubject: hello\r\n\r\nHi Bob.\r\n.a stuffed dot\r\n"));
    CHECK(poll_until([&] { return ts.server().connections() == 0; }, 2s));
  }

  // --- pipelining --------------------------------------------------------------------------------

  TEST_CASE("RFC 2920: pipelined commands are answered in order, each burst with one write") {
    smtpd::Options options = loopback_options();
    smtpd::TestServer ts(options);

    Client c(ts.port());
    require_greeted(c);

    // A burst of four commands in one write; DATA ends the group (RFC 2920 §3.1).
    REQUIRE(c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
                   "RCPT TO:<c@example.net>\r\nDATA\r\n"));
    // The replies should come in one segment: wait a little, then count the recv() calls that
    // returned data until all four replies are in (at most 2 s).
    std::this_thread::sleep_for(100ms);
    c.set_timeout(200ms);
    int reads_with_data = 0;
    auto until = Clock::now() + 2s;
    while (final_lines(c.buffered()) < 4 && Clock::now() < until) {
      long n = c.recv_once();
      if (n > 0) ++reads_with_data;
      if (n == 0) break;
    }
    c.set_timeout(5s);
    CHECK(c.buffered() == "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
                          "354 End data with <CR><LF>.<CR><LF>\r\n");
    CHECK(reads_with_data >= 1);
    CHECK(reads_with_data <= 2);
    CHECK(c.read_reply() == "250 2.1.0 Ok\r\n");
    CHECK(c.read_reply() == "250 2.1.5 Ok\r\n");
    CHECK(c.read_reply() == "250 2.1.5 Ok\r\n");
    CHECK(reply_code(c.read_reply()) == 354);

    // The end of one message and the whole of the next transaction, in one write.
    REQUIRE(c.send("Subject: one\r\n\r\nfirst\r\n.\r\n"
                   "MAIL FROM:<a@example.org>\r\nRCPT TO:<d@example.net>\r\nDATA\r\n"));
    CHECK(starts_with(c.expect(250), queued_prefix));
    CHECK(c.read_reply() == "250 2.1.0 Ok\r\n");
    CHECK(c.read_reply() == "250 2.1.5 Ok\r\n");
    CHECK(reply_code(c.read_reply()) == 354);
    REQUIRE(c.send("Subject: two\r\n\r\nsecond\r\n.\r\nQUIT\r\n"));
    CHECK(starts_with(c.expect(250), queued_prefix));
    CHECK(c.expect(221) == "221 2.0.0 Bye\r\n");
    CHECK(c.wait_closed());

    std::vector<smtpd::TestServer::Message> got = ts.messages();
    REQUIRE(got.size() == 2);
    CHECK(got[0].envelope.to == std::vector<std::string>{"b@example.net", "c@example.net"});
    CHECK(ends_with(got[0].data, "\r\nSubject: one\r\n\r\nfirst\r\n"));
    CHECK(got[1].envelope.to == std::vector<std::string>{"d@example.net"});
    CHECK(ends_with(got[1].data, "\r\nSubject: two\r\n\r\nsecond\r\n"));
  }

  TEST_CASE("RFC 2920: a burst's replies are held until the burst is done, then written together") {
    // Waiting before reading cannot tell one write from four: the kernel merges queued segments.
    // Here a slow on_rcpt hook sits between the replies, so a server that wrote after every reply
    // would deliver the first ones ~200 ms before the rest; the first recv() would miss some.
    smtpd::Options options = loopback_options();
    options.on_rcpt = [](const smtpd::SessionInfo&, const std::string& to,
                         const smtpd::Params&) -> std::optional<smtpd::Reply> {
      if (to == "slow@example.net") std::this_thread::sleep_for(200ms);
      return std::nullopt;
    };
    smtpd::TestServer ts(options);

    Client c(ts.port());
    require_greeted(c);
    REQUIRE(c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
                   "RCPT TO:<slow@example.net>\r\nDATA\r\n"));
    CHECK(c.recv_once() > 0);
    CHECK(c.buffered() == "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
                          "354 End data with <CR><LF>.<CR><LF>\r\n");
  }

  // --- concurrency -------------------------------------------------------------------------------

  TEST_CASE("100 concurrent clients each deliver 3 messages; all 300 arrive exactly once") {
    constexpr int clients = 100;
    constexpr int per_client = 3;
    std::mutex mu;
    std::multiset<std::string> ids; // the X-Id header of every message the handler saw
    smtpd::Options options = loopback_options();
    options.handler = [&](const smtpd::Peer&, const std::string&, const std::vector<std::string>&,
                          const std::string& data) {
      std::size_t at = data.find("X-Id: ");
      std::string id = at == std::string::npos ? "?" : data.substr(at, data.find('\r', at) - at);
      std::lock_guard<std::mutex> lock(mu);
      ids.insert(id);
    };
    smtpd::TestServer ts(options);

    auto start = Clock::now();
    std::atomic<int> accepted{0};
    std::vector<std::string> failures; // guarded by mu
    std::vector<std::thread> threads;
    for (int i = 0; i < clients; ++i) {
      threads.emplace_back([&, i] {
        auto fail = [&](const std::string& what) {
          std::lock_guard<std::mutex> lock(mu);
          failures.push_back("client " + std::to_string(i) + ": " + printable(what));
        };
        Client c(ts.port(), "127.0.0.1", 10s);
        if (!c.connected()) return fail("cannot connect");
        if (!greet(c, "client" + std::to_string(i) + ".example")) return fail("greeting/EHLO");
        for (int j = 0; j < per_client; ++j) {
          std::string id = "X-Id: " + std::to_string(i) + "-" + std::to_string(j);
          std::string r = send_message(c, "sender@example.org", "rcpt@example.net",
                                       id + "\r\nSubject: load\r\n\r\nbody\r\n");
          if (!starts_with(r, queued_prefix)) return fail(r);
          ++accepted;
        }
        std::string bye = c.command("QUIT");
        if (reply_code(bye) != 221) fail(bye);
      });
    }
    for (std::thread& t : threads)
      t.join();

    std::lock_guard<std::mutex> lock(mu);
    CHECK_MESSAGE(failures.empty(), failures.size() << " clients failed; the first: "
                                                    << (failures.empty() ? "" : failures.front()));
    CHECK(accepted == clients * per_client);
    CHECK(ids.size() == std::size_t(clients * per_client));
    std::set<std::string> unique(ids.begin(), ids.end());
    CHECK(unique.size() == std::size_t(clients * per_client));
    CHECK(unique.count("?") == 0);
    CHECK(elapsed_ms(start) < 60000);
  }

  // --- timeouts ----------------------------------------------------------------------------------

  TEST_CASE("RFC 5321 §4.5.3.2.7: a silent client gets 421 4.4.2 after the command timeout") {
    smtpd::Options options = loopback_options();
    options.command_timeout = 300ms;
    smtpd::TestServer ts(options);

    Client c(ts.port());
    require_greeted(c);
    auto start = Clock::now();
    CHECK(c.read_reply() == timeout_421);
    CHECK(c.wait_closed());
    CHECK(c.eof());
    CHECK(elapsed_ms(start) >= 250);
    CHECK(elapsed_ms(start) < 2000);

    // Before EHLO no enhanced codes were negotiated (RFC 2034 §3), so the 421 carries none.
    Client quiet(ts.port());
    REQUIRE(quiet.connected());
    quiet.expect(220);
    CHECK(quiet.read_reply() == "421 Timeout exceeded, closing connection\r\n");
    CHECK(quiet.wait_closed());
    CHECK(poll_until([&] { return ts.server().connections() == 0; }, 2s));
  }

  TEST_CASE("RFC 5321 §4.5.3.2.6: a client that stops mid-DATA gets 421 after the data timeout") {
    smtpd::Options options = loopback_options();
    options.data_timeout = 300ms; // the command timeout stays at 5 minutes
    smtpd::TestServer ts(options);

    Client c(ts.port());
    require_greeted(c);
    start_data(c);
    REQUIRE(c.send("Subject: never finished\r\n\r\nhalf a li"));
    auto start = Clock::now();
    CHECK(c.read_reply() == timeout_421);
    CHECK(c.wait_closed());
    CHECK(elapsed_ms(start) < 2000);
    CHECK(poll_until([&] { return ts.server().connections() == 0; }, 2s));
    CHECK(ts.messages().size() == 0);
  }

  // --- the connection limit ----------------------------------------------------------------------

  TEST_CASE("max_connections: one client too many gets 421 and EOF; a freed slot is reused") {
    std::mutex mu;
    std::vector<std::string> errors;
    smtpd::Options options = loopback_options();
    options.max_connections = 2;
    options.log_error = [&](std::string_view message) {
      std::lock_guard<std::mutex> lock(mu);
      errors.emplace_back(message);
    };
    smtpd::TestServer ts(options);

    Client first(ts.port()), second(ts.port());
    REQUIRE(first.connected());
    REQUIRE(second.connected());
    first.expect(220);
    second.expect(220);
    CHECK(ts.server().connections() == 2);

    // Refused before any EHLO, so without an enhanced code (RFC 2034 §3).
    Client third(ts.port());
    REQUIRE(third.connected());
    CHECK(third.read_reply() == "421 Too many connections, try again later\r\n");
    CHECK(third.wait_closed());
    // Never silently: the refusal is logged (just after the socket is closed, so wait for it).
    CHECK(poll_until(
        [&] {
          std::lock_guard<std::mutex> lock(mu);
          return std::any_of(errors.begin(), errors.end(), [](const std::string& e) {
            return contains(e, "too many connections");
          });
        },
        2s));

    CHECK(first.command("QUIT") == "221 Bye\r\n"); // no EHLO, so no enhanced code
    CHECK(first.wait_closed());
    // The slot frees once the first connection's thread has finished: retry, bounded.
    bool served = false;
    std::string last;
    auto until = Clock::now() + 2s;
    while (!served && Clock::now() < until) {
      Client next(ts.port());
      if (!next.connected()) break;
      last = next.read_reply();
      served = reply_code(last) == 220 && reply_code(next.command("EHLO again.example")) == 250;
      if (!served) std::this_thread::sleep_for(20ms);
    }
    CHECK_MESSAGE(served, "last reply: " << printable(last));
    CHECK(reply_code(second.command("NOOP")) == 250);
  }

  // --- clients that go away ----------------------------------------------------------------------

  TEST_CASE("abrupt disconnects end their connections; no message is delivered half") {
    smtpd::Options options = loopback_options();
    smtpd::TestServer ts(options);

    { // closes in the middle of a command line
      Client c(ts.port());
      require_greeted(c);
      REQUIRE(c.send("MAIL FROM:<a@exam"));
    }
    { // closes in the middle of DATA
      Client c(ts.port());
      require_greeted(c);
      start_data(c);
      REQUIRE(c.send("Subject: cut\r\n\r\nthe first half\r\n"));
    }
    { // resets (RST) in the middle of DATA
      Client c(ts.port());
      require_greeted(c);
      start_data(c);
      REQUIRE(c.send("Subject: reset\r\n\r\nthe first half\r\n"));
      c.reset();
    }
    { // sends garbage and NUL bytes, then closes without reading the replies
      Client c(ts.port());
      REQUIRE(c.connected());
      c.expect(220);
      using namespace std::string_literals;
      REQUIRE(c.send("\0\x01\xff garbage \x80\r\n\0\0\0NOOP\0\r\n\n\r\r\nhalf a"s));
    }
    CHECK(poll_until([&] { return ts.server().connections() == 0; }, 2s));
    CHECK(ts.server().connections() == 0);
    CHECK(ts.messages().size() == 0);

    // The server is unharmed.
    Client c(ts.port());
    require_greeted(c);
    CHECK(
        starts_with(send_message(c, "a@example.org", "b@example.net", "Subject: ok\r\n\r\nok\r\n"),
                    queued_prefix));
    CHECK(ts.messages().size() == 1);
  }

  TEST_CASE("a client that pipelines megabytes and never reads is cut off; others are served") {
    smtpd::Options options = loopback_options();
    options.command_timeout = 500ms;
    // NOOPs past junk_command_limit would end the session as errors long before the replies
    // back up: this test is about the client that never reads, so that limit is lifted here.
    options.junk_command_limit = 1u << 30;
    smtpd::TestServer ts(options);

    std::atomic<bool> flood_closed{false};
    std::thread flooder([&] {
      // A small receive buffer, so the server's replies back up quickly whatever the kernel's
      // autotuning would allow.
      Client c(ts.port(), "127.0.0.1", 5s, 4096);
      if (!c.connected()) return;
      // The greeting first: bytes sent before it would make this an early talker (554 and
      // closed at once), and on a loaded machine the server may look only after they came.
      c.read_reply();
      std::string noops = "EHLO flood.example\r\n";
      while (noops.size() < 2 * 1024 * 1024)
        noops += "NOOP\r\n";
      (void)c.send(noops); // fails once the server gives up on us; either way is fine
      flood_closed = c.wait_closed(true);
    });

    // While the flood is on, a well-behaved client is served.
    CHECK(poll_until([&] { return ts.server().connections() >= 1; }, 2s));
    {
      Client c(ts.port());
      require_greeted(c);
      CHECK(starts_with(
          send_message(c, "a@example.org", "b@example.net", "Subject: meanwhile\r\n\r\nhi\r\n"),
          queued_prefix));
      CHECK(c.command("QUIT") == "221 2.0.0 Bye\r\n");
    }
    auto start = Clock::now();
    bool drained = poll_until([&] { return ts.server().connections() == 0; }, 5s);
    CHECK_MESSAGE(drained, "connections still open after " << elapsed_ms(start)
                                                           << " ms: " << ts.server().connections());
    flooder.join();
    CHECK(flood_closed);

    Client after(ts.port());
    REQUIRE(after.connected());
    CHECK(greet(after));
  }

  // --- handler refusals --------------------------------------------------------------------------

  TEST_CASE("a handler's Reply is sent as is; any other exception becomes 451 and the session goes "
            "on") {
    smtpd::Options options = loopback_options();
    options.handler = [](const smtpd::Peer&, const std::string&, const std::vector<std::string>& to,
                         const std::string&) {
      if (to.front() == "nobody@example.net") throw smtpd::Reply{550, "5.1.1", "no such user"};
      if (to.front() == "crash@example.net") throw std::runtime_error("disk on fire");
    };
    smtpd::TestServer ts(options);

    Client c(ts.port());
    require_greeted(c);
    CHECK(send_message(c, "a@example.org", "nobody@example.net", "x\r\n") ==
          "550 5.1.1 no such user\r\n");
    CHECK(
        starts_with(send_message(c, "a@example.org", "crash@example.net", "x\r\n"), "451 4.3.0 "));
    CHECK(
        starts_with(send_message(c, "a@example.org", "real@example.net", "x\r\n"), queued_prefix));
    CHECK(c.command("QUIT") == "221 2.0.0 Bye\r\n");
    std::vector<smtpd::TestServer::Message> got = ts.messages();
    REQUIRE(got.size() == 1);
    CHECK(got[0].envelope.to == std::vector<std::string>{"real@example.net"});
  }

  // --- stopping ----------------------------------------------------------------------------------

  TEST_CASE("graceful shutdown: idle clients get 421 4.3.2, a message in flight is finished") {
    // The Server itself, served on a std::async thread: the future tells that serve() returned,
    // and get() rethrows what it threw.
    std::mutex mu;
    std::vector<std::string> delivered;
    smtpd::Options options = loopback_options();
    options.handler = [&](const smtpd::Peer&, const std::string&, const std::vector<std::string>&,
                          const std::string& data) {
      std::lock_guard<std::mutex> lock(mu);
      delivered.push_back(data);
    };
    smtpd::Server server(options);
    server.listen();
    std::future<void> serving = std::async(std::launch::async, [&] { server.serve(); });
    CloseAtExit closer{server};
    REQUIRE(server.wait_ready(5s));
    uint16_t port = server.port();

    Client idle(port);
    require_greeted(idle);
    Client busy(port);
    require_greeted(busy);
    start_data(busy);
    REQUIRE(busy.send("Subject: in flight\r\n\r\nfirst half\r\n"));

    auto stopped = std::async(std::launch::async, [&] { server.shutdown(5s); });
    auto start = Clock::now();
    CHECK(idle.read_reply() == shutting_down_421);
    CHECK(elapsed_ms(start) < 1000);
    CHECK(idle.wait_closed());
    CHECK(stopped.wait_for(0ms) == std::future_status::timeout); // the message is in flight

    REQUIRE(busy.send("second half\r\n.\r\n"));
    CHECK(starts_with(busy.expect(250), queued_prefix));
    CHECK(busy.read_reply() == shutting_down_421);
    CHECK(busy.wait_closed());

    bool returned = stopped.wait_for(5s) == std::future_status::ready;
    CHECK(returned);
    if (!returned) server.close(); // so that the future's destructor does not wait forever
    CHECK(elapsed_ms(start) < 3000);
    CHECK(server.connections() == 0);
    CHECK_FALSE(can_connect(port));
    bool serve_returned = serving.wait_for(2s) == std::future_status::ready;
    CHECK(serve_returned);
    if (serve_returned) CHECK_NOTHROW(serving.get());

    std::lock_guard<std::mutex> lock(mu);
    REQUIRE(delivered.size() == 1);
    CHECK(ends_with(delivered[0], "\r\nSubject: in flight\r\n\r\nfirst half\r\nsecond half\r\n"));
  }

  TEST_CASE("graceful shutdown: a transaction that outlives the deadline is cut, not delivered") {
    smtpd::Options options = loopback_options();
    smtpd::TestServer ts(options);

    Client busy(ts.port());
    require_greeted(busy);
    start_data(busy);
    REQUIRE(busy.send("Subject: too slow\r\n\r\nnever ends"));

    auto start = Clock::now();
    auto stopped = std::async(std::launch::async, [&] { ts.server().shutdown(300ms); });
    bool returned = stopped.wait_for(5s) == std::future_status::ready;
    CHECK(returned);
    if (!returned) ts.server().close();
    CHECK(elapsed_ms(start) >= 250);
    CHECK(elapsed_ms(start) < 2000);
    CHECK(busy.wait_closed());
    CHECK(busy.buffered() == ""); // cut, not answered: the message was not accepted
    CHECK(ts.server().connections() == 0);
    CHECK(ts.messages().size() == 0);
  }

  TEST_CASE("close() is immediate: every client sees EOF and serve() returns") {
    // The Server itself, served on a std::async thread, as in the graceful shutdown test above.
    std::atomic<int> delivered{0};
    smtpd::Options options = loopback_options();
    options.handler = [&](const smtpd::Peer&, const std::string&, const std::vector<std::string>&,
                          const std::string&) { ++delivered; };
    smtpd::Server server(options);
    server.listen();
    std::future<void> serving = std::async(std::launch::async, [&] { server.serve(); });
    CloseAtExit closer{server};
    REQUIRE(server.wait_ready(5s));
    uint16_t port = server.port();

    Client before_ehlo(port);
    REQUIRE(before_ehlo.connected());
    before_ehlo.expect(220);
    Client after_ehlo(port);
    require_greeted(after_ehlo);
    Client in_data(port);
    require_greeted(in_data);
    start_data(in_data);
    REQUIRE(in_data.send("Subject: cut\r\n\r\nhalf"));
    CHECK(server.connections() == 3);

    auto start = Clock::now();
    server.close();
    CHECK(elapsed_ms(start) < 1000);
    CHECK(server.connections() == 0);
    // An idle session may still get its 421 in before the cut; nothing else may arrive.
    for (Client* c : {&before_ehlo, &after_ehlo, &in_data}) {
      CHECK(c->wait_closed());
      CHECK((c->buffered().empty() || reply_code(c->buffered()) == 421));
    }
    CHECK(in_data.buffered() == "");
    bool serve_returned = serving.wait_for(2s) == std::future_status::ready;
    CHECK(serve_returned);
    if (serve_returned) CHECK_NOTHROW(serving.get());
    CHECK_FALSE(can_connect(port));
    CHECK(delivered == 0);
  }

  TEST_CASE("reverse_dns: the client's forward-confirmed name reaches Peer and Received") {
    // 127.0.0.1 is "localhost" in /etc/hosts, forwards and backwards, on any Debian machine.
    std::mutex mu;
    std::string hostname, data;
    smtpd::Options options = loopback_options();
    options.reverse_dns = true;
    options.handler = [&](const smtpd::Peer& peer, const std::string&,
                          const std::vector<std::string>&, const std::string& message) {
      std::lock_guard<std::mutex> lock(mu);
      hostname = peer.hostname;
      data = message;
    };
    smtpd::TestServer ts(options);
    Client c(ts.port());
    require_greeted(c);
    CHECK(reply_code(send_message(c, "a@example.org", "b@example.net", "x\r\n")) == 250);
    std::lock_guard<std::mutex> lock(mu);
    CHECK(hostname == "localhost");
    CHECK(data.rfind("Received: from client.example (localhost [127.0.0.1])", 0) == 0);
  }

  TEST_CASE("reverse_dns off (the default): no lookup, no name") {
    std::mutex mu;
    std::string hostname = "unset";
    smtpd::Options options = loopback_options();
    options.handler = [&](const smtpd::Peer& peer, const std::string&,
                          const std::vector<std::string>&, const std::string&) {
      std::lock_guard<std::mutex> lock(mu);
      hostname = peer.hostname;
    };
    smtpd::TestServer ts(options);
    Client c(ts.port());
    require_greeted(c);
    CHECK(reply_code(send_message(c, "a@example.org", "b@example.net", "x\r\n")) == 250);
    std::lock_guard<std::mutex> lock(mu);
    CHECK(hostname.empty());
  }

  TEST_CASE("shutdown() or close() before serve() has started makes serve() return at once") {
    smtpd::Options options = loopback_options();
    smtpd::Server server(options);
    server.listen();
    server.close();
    // A thread that reaches serve() only after the server was told to stop must not throw.
    CHECK_NOTHROW(server.serve());
    CHECK_FALSE(server.wait_ready(50ms));
  }

  // --- addresses ---------------------------------------------------------------------------------

  TEST_CASE("listen on [::1]:0 serves IPv6 clients") {
    if (!ipv6_loopback_available()) {
      MESSAGE("no IPv6 loopback on this machine: skipped");
      return;
    }
    smtpd::Options options = loopback_options();
    options.addr = "[::1]:0";
    smtpd::TestServer ts(options);
    CHECK(ts.server().address() == "[::1]:" + std::to_string(ts.port()));

    Client c(ts.port(), "::1");
    require_greeted(c);
    CHECK(starts_with(send_message(c, "a@example.org", "b@example.net", "x\r\n"), queued_prefix));
    std::vector<smtpd::TestServer::Message> got = ts.messages();
    REQUIRE(got.size() == 1);
    CHECK(got[0].session.peer.ip == "::1");
    CHECK(got[0].session.peer.port == c.local_port());
    CHECK(starts_with(got[0].data, "Received: from client.example ([IPv6:::1])\r\n"));
  }

  TEST_CASE("listen on :0 (every address) serves a client on 127.0.0.1") {
    smtpd::Options options = loopback_options();
    options.addr = ":0";
    smtpd::TestServer ts(options);
    CHECK(ts.port() != 0);
    Client c(ts.port());
    REQUIRE(c.connected());
    CHECK(greet(c));
    CHECK(c.command("QUIT") == "221 2.0.0 Bye\r\n");
  }

  TEST_CASE("bad addresses throw std::invalid_argument from listen()") {
    for (const char* addr : {"nonsense", "1.2.3.4", "127.0.0.1:99999", "[::1:25",
                             "127.0.0.1:", "127.0.0.1:port", "::1:25", "[::1]25", "127.0.0.1:-1"}) {
      CAPTURE(addr);
      smtpd::Options options = loopback_options();
      options.addr = addr;
      smtpd::Server server(options);
      CHECK_THROWS_AS(server.listen(), std::invalid_argument);
      CHECK(server.port() == 0);
    }
  }

  TEST_CASE("a port in use throws std::system_error from listen()") {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_storage address;
    socklen_t length = 0;
    REQUIRE(make_address("127.0.0.1", 0, address, length));
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&address), length) == 0);
    REQUIRE(::listen(fd, 1) == 0);
    length = sizeof address;
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0);
    uint16_t port = ntohs(reinterpret_cast<sockaddr_in*>(&address)->sin_port);

    smtpd::Options options = loopback_options();
    options.addr = "127.0.0.1:" + std::to_string(port);
    smtpd::Server server(options);
    try {
      server.listen();
      FAIL("listen() on a port in use did not throw");
    } catch (const std::system_error& e) { CHECK(e.code().value() == EADDRINUSE); }
    ::close(fd);
  }

  TEST_CASE("ListenAndServe with a bad address throws std::invalid_argument") {
    CHECK_THROWS_AS(smtpd::ListenAndServe("nonsense", nullptr, "", "mx.test"),
                    std::invalid_argument);
    CHECK_THROWS_AS(smtpd::ListenAndServe("127.0.0.1:70000", nullptr, "", "mx.test"),
                    std::invalid_argument);
  }

  TEST_CASE("address() and port() tell the bound address, as getpeername sees it") {
    smtpd::Options options = loopback_options();
    smtpd::Server server(options);
    CHECK(server.address() == "");
    CHECK(server.port() == 0);
    CHECK_THROWS_AS(server.serve(), std::logic_error); // not listening yet

    server.listen();
    uint16_t port = server.port();
    CHECK(port != 0);
    CHECK(server.address() == "127.0.0.1:" + std::to_string(port));
    CHECK_FALSE(server.wait_ready(50ms)); // listening, not serving

    std::string serve_error;
    std::thread serving([&] {
      try {
        server.serve();
      } catch (const std::exception& e) { serve_error = e.what(); }
    });

    struct Stop { // a scope guard: a failed REQUIRE below must not leave the thread running
      smtpd::Server& server;
      std::thread& thread;

      ~Stop() {
        server.close();
        thread.join();
      }
    } stop{server, serving};

    REQUIRE(server.wait_ready(5s));

    Client c(port);
    REQUIRE(c.connected());
    CHECK(c.remote_port() == port);
    CHECK(server.port() == port);
    c.expect(220);
  }

  // --- options -----------------------------------------------------------------------------------

  TEST_CASE("Options: zero timeouts and limits, or two handlers, are refused by the constructor") {
    auto refused = [](void (*change)(smtpd::Options&)) {
      smtpd::Options options = loopback_options();
      change(options);
      try {
        smtpd::Server server(options);
      } catch (const std::invalid_argument&) { return true; }
      return false;
    };
    CHECK(refused([](smtpd::Options& o) { o.command_timeout = 0ms; }));
    CHECK(refused([](smtpd::Options& o) { o.data_timeout = 0ms; }));
    CHECK(refused([](smtpd::Options& o) { o.command_timeout = -5ms; }));
    CHECK(refused([](smtpd::Options& o) { o.max_message_bytes = 0; }));
    CHECK(refused([](smtpd::Options& o) { o.max_recipients = 0; }));
    CHECK(refused([](smtpd::Options& o) { o.max_connections = 0; }));
    CHECK(refused([](smtpd::Options& o) { o.hard_error_limit = 0; }));
    CHECK(refused([](smtpd::Options& o) {
      o.handler = [](const smtpd::Peer&, const std::string&, const std::vector<std::string>&,
                     const std::string&) {};
      o.message_handler = [](const smtpd::SessionInfo&, const smtpd::Envelope&,
                             const std::string&) -> std::optional<smtpd::Reply> {
        return std::nullopt;
      };
    }));
    CHECK(refused([](smtpd::Options& o) { o.read_spin = std::chrono::microseconds(-1); }));
    CHECK(refused([](smtpd::Options& o) { o.read_spin = 11ms; }));
    CHECK_FALSE(refused([](smtpd::Options&) {})); // the defaults are fine
    CHECK_FALSE(refused([](smtpd::Options& o) { o.read_spin = 0ms; }));
  }

  // --- how connection threads wait and are scheduled ---------------------------------------------

  // scheduling_policy_seen - deliver one message and return the scheduling policy the handler's
  // thread (the connection thread) had.
  int scheduling_policy_seen(smtpd::Options options) {
    std::atomic<int> policy{-1};
    options.handler = [&](const smtpd::Peer&, const std::string&, const std::vector<std::string>&,
                          const std::string&) { policy = sched_getscheduler(0); };
    smtpd::TestServer ts(options);
    Client c(ts.port());
    require_greeted(c);
    CHECK(starts_with(send_message(c, "a@example.org", "b@example.net", "hi\r\n"), queued_prefix));
    return policy;
  }

  TEST_CASE("batch_scheduling: connection threads run as SCHED_BATCH, or as created when off") {
    smtpd::Options options = loopback_options();
    CHECK(scheduling_policy_seen(options) == SCHED_BATCH); // the default
    options.batch_scheduling = false;
    CHECK(scheduling_policy_seen(options) == SCHED_OTHER);
  }

  TEST_CASE("read_spin: with spinning off, at the longest spin, and for a slow client, the same "
            "session") {
    for (auto spin : {std::chrono::microseconds(0), std::chrono::microseconds(10000)}) {
      CAPTURE(spin.count());
      smtpd::Options options = loopback_options();
      options.read_spin = spin;
      smtpd::TestServer ts(options);
      Client c(ts.port());
      require_greeted(c);
      // A client slower than any spin: the thread gives up spinning and sleeps until it writes.
      std::this_thread::sleep_for(50ms);
      CHECK(
          starts_with(send_message(c, "a@example.org", "b@example.net", "one\r\n"), queued_prefix));
      std::this_thread::sleep_for(30ms);
      CHECK(
          starts_with(send_message(c, "a@example.org", "b@example.net", "two\r\n"), queued_prefix));
      CHECK(reply_code(c.command("QUIT")) == 221);
      REQUIRE(ts.wait_for(2, 5s));
      CHECK(ts.messages().at(1).data.find("two\r\n") != std::string::npos);
    }
  }

  // --- logging -----------------------------------------------------------------------------------

  TEST_CASE("log_read and log_write see the session's lines, without CRLF, on its thread") {
    std::mutex mu;
    std::vector<std::string> read, written;
    std::set<std::thread::id> threads;
    std::vector<std::string> peers;
    smtpd::Options options = loopback_options();
    options.log_read = [&](const smtpd::Peer& peer, std::string_view line) {
      std::lock_guard<std::mutex> lock(mu);
      read.emplace_back(line);
      threads.insert(std::this_thread::get_id());
      peers.push_back(peer.ip);
    };
    options.log_write = [&](const smtpd::Peer& peer, std::string_view line) {
      std::lock_guard<std::mutex> lock(mu);
      written.emplace_back(line);
      threads.insert(std::this_thread::get_id());
      peers.push_back(peer.ip);
    };
    smtpd::TestServer ts(options);

    Client c(ts.port());
    require_greeted(c);
    CHECK(
        starts_with(send_message(c, "a@example.org", "b@example.net", "Subject: x\r\n\r\nbody\r\n"),
                    queued_prefix));
    CHECK(c.command("QUIT") == "221 2.0.0 Bye\r\n");
    CHECK(c.wait_closed());

    std::lock_guard<std::mutex> lock(mu);
    CHECK(read == std::vector<std::string>{"EHLO client.example", "MAIL FROM:<a@example.org>",
                                           "RCPT TO:<b@example.net>", "DATA",
                                           "<20 octets of message data>", "QUIT"});
    REQUIRE(written.size() == 14);
    CHECK(written[0] == "220 mx.test ESMTP smtpd");
    CHECK(written[1] == "250-mx.test");
    CHECK(written[8] == "250 LIMITS RCPTMAX=100");
    CHECK(written[9] == "250 2.1.0 Ok");
    CHECK(written[10] == "250 2.1.5 Ok");
    CHECK(written[11] == "354 End data with <CR><LF>.<CR><LF>");
    CHECK(starts_with(written[12], "250 2.0.0 Ok: queued as "));
    CHECK(written[13] == "221 2.0.0 Bye");
    for (const std::string& line : written) {
      CAPTURE(line);
      CHECK_FALSE(contains(line, "\r"));
      CHECK_FALSE(contains(line, "\n"));
    }
    CHECK(threads.size() == 1);
    CHECK(threads.count(std::this_thread::get_id()) == 0);
    CHECK(std::all_of(peers.begin(), peers.end(),
                      [](const std::string& ip) { return ip == "127.0.0.1"; }));
  }

} // TEST_SUITE("server")
