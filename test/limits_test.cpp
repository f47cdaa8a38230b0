// limits_test.cpp - the abuse limits (issue 7) over real loopback sockets: the per-line command
// deadline, the minimum data rate and maximum session duration, the per-IP connection limit and
// its exempt networks, early talkers, unauthorized pipelining, HTTP requests, the error tarpit,
// the junk-command budget, the bounded pool of parked worker threads, a handler stuck past a
// shutdown, and hooks that throw before MAIL. Every wait is bounded; timings are checked as
// lower bounds or generous upper bounds only (loaded 2-core machines run this).
#include "test_client.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <vector>

#include <sys/syscall.h>

using namespace test;

namespace {

const char* const cut_enhanced = "421 4.4.2 Timeout exceeded, closing connection\r\n";
const char* const too_many_from_ip =
    "421 Too many connections from your address, try again later\r\n";
const char* const early_554 = "554 Protocol error: input before the greeting; closing\r\n";
const char* const pipelined_554 = "554 Protocol error: commands pipelined before EHLO; closing\r\n";
const char* const web_554 = "554 This is an SMTP server, not a web server; closing\r\n";
const char* const errors_421 = "421 4.7.0 Too many errors, closing connection\r\n";
const char* const noop_ok = "250 2.0.0 Ok\r\n";

// threads_now - the number of threads in this process, from /proc/self/status ("Threads:").
// Back to the baseline is checked as "<= baseline": when the whole binary runs, a thread left
// by another suite may end meanwhile; a thread of ours left over still shows as one too many.
long threads_now() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (starts_with(line, "Threads:")) return std::stol(line.substr(8));
  return -1;
}

// baseline_threads - threads_now() before a test starts its server (REQUIREd to be known).
long baseline_threads() {
  long base = threads_now();
  REQUIRE(base > 0);
  return base;
}

// kernel_tid - the calling thread's kernel id; unlike pthread_t it is not recycled soon, so
// distinct values count distinct threads.
long kernel_tid() {
  return long(::syscall(SYS_gettid));
}

// has_ipv6_loopback - whether a socket can be bound to [::1].
bool has_ipv6_loopback() {
  sockaddr_storage address;
  socklen_t length = 0;
  if (!make_address("::1", 0, address, length)) return false;
  int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  bool bound = ::bind(fd, reinterpret_cast<sockaddr*>(&address), length) == 0;
  ::close(fd);
  return bound;
}

// hello - the greeting (220) then EHLO (250); false if either is missing.
bool hello(Client& c) {
  std::string greeting = c.read_reply();
  if (reply_code(greeting) != 220) {
    MESSAGE("greeting: " << printable(greeting));
    return false;
  }
  std::string ehlo = c.command("EHLO limits.test");
  if (reply_code(ehlo) != 250) MESSAGE("EHLO reply: " << printable(ehlo));
  return reply_code(ehlo) == 250;
}

// ready - the client is connected and past the greeting and EHLO (both REQUIREd).
void ready(Client& c) {
  REQUIRE(c.connected());
  REQUIRE(hello(c));
}

// drained - the server's connection count returns to zero within `limit`.
bool drained(smtpd::TestServer& ts, milliseconds limit) {
  return poll_until([&] { return ts.server().connections() == 0; }, limit);
}

// check_threads_fall_to - the process's thread count falls to `most` or fewer within `limit`
// (CHECKed, with the count and the `base`line in the message).
void check_threads_fall_to(long most, long base, milliseconds limit = 3s) {
  CHECK_MESSAGE(poll_until([&] { return threads_now() <= most; }, limit),
                "threads " << threads_now() << ", baseline " << base);
}

// ThreadIds - the kernel ids of the threads that read client lines (a log_read hook), under a
// mutex. Declare it before the smtpd::TestServer that uses it.
struct ThreadIds {
  std::mutex mu;
  std::set<long> tids;

  smtpd::LogHook hook() {
    return [this](const smtpd::Peer&, std::string_view) {
      std::lock_guard<std::mutex> lock(mu);
      tids.insert(kernel_tid());
    };
  }

  std::size_t count() {
    std::lock_guard<std::mutex> lock(mu);
    return tids.size();
  }
};

// ipv6_options - loopback options on [::1] with max_connections_per_ip = 2 and `exempt` as the
// exempt networks.
smtpd::Options ipv6_options(const std::string& exempt) {
  smtpd::Options options = loopback_options();
  options.addr = "[::1]:0";
  options.max_connections_per_ip = 2;
  options.limit_exempt_networks = {exempt};
  return options;
}

// open_transaction - MAIL, RCPT and DATA, one at a time; true when DATA got 354.
bool open_transaction(Client& c) {
  return reply_code(c.command("MAIL FROM:<a@b.test>")) == 250 &&
         reply_code(c.command("RCPT TO:<c@d.test>")) == 250 && reply_code(c.command("DATA")) == 354;
}

// Log - log_error lines collected under a mutex; shared so a detached thread may outlive a test.
struct Log {
  std::mutex mu;
  std::vector<std::string> lines;

  smtpd::ErrorLog hook(const std::shared_ptr<Log>& self) {
    return [self](std::string_view line) {
      std::lock_guard<std::mutex> lock(self->mu);
      self->lines.emplace_back(line);
    };
  }

  bool any(std::string_view part) {
    std::lock_guard<std::mutex> lock(mu);
    return std::any_of(lines.begin(), lines.end(),
                       [&](const std::string& l) { return contains(l, part); });
  }

  std::string all() {
    std::lock_guard<std::mutex> lock(mu);
    std::string joined;
    for (const std::string& l : lines)
      joined += l + "\n";
    return joined;
  }
};

// open_clients - `n` connected clients to 127.0.0.1:port (or `ip`), each greeted with 220 and
// past EHLO; REQUIREs it.
std::vector<std::unique_ptr<Client>> open_clients(std::size_t n, uint16_t port,
                                                  const std::string& ip = "127.0.0.1") {
  std::vector<std::unique_ptr<Client>> clients;
  for (std::size_t i = 0; i < n; ++i) {
    clients.push_back(std::make_unique<Client>(port, ip));
    REQUIRE(clients.back()->connected());
  }
  for (auto& c : clients)
    REQUIRE(hello(*c));
  return clients;
}

// Pinned - a handler that blocks until released: the state it shares with the test.
struct Pinned {
  std::mutex mu;
  std::condition_variable cv;
  bool entered = false;
  bool released = false;
  std::atomic<bool> replied{false}; // the 250 for its message was queued (after it returned)
};

} // namespace

namespace {

// hello_and_quit - one short session: connect, EHLO, QUIT, and see the server close.
void hello_and_quit(uint16_t port) {
  Client c(port);
  ready(c);
  CHECK(c.command("QUIT") == "221 2.0.0 Bye\r\n");
  CHECK(c.wait_closed());
}

} // namespace

TEST_SUITE("limits") {

  // --- slow clients ------------------------------------------------------------------------------

  TEST_CASE("RFC 5321 §4.5.3.2.7: a command line trickled byte by byte is cut at command_timeout "
            "(slowloris)") {
    smtpd::Options options = loopback_options();
    options.command_timeout = 500ms;
    smtpd::TestServer ts(options);

    Client c(ts.port());
    ready(c);
    c.set_timeout(200ms); // read_line() then doubles as the 200 ms pause between bytes
    const std::string trickle = "NOOP and this line never ends, one byte at a time";
    std::string got;
    std::size_t sent = 0;
    auto start = Clock::now();
    for (std::size_t i = 0; i < trickle.size() && elapsed_ms(start) < 6000; ++i) {
      if (!c.send(trickle.substr(i, 1))) break;
      ++sent;
      got = c.read_line();
      if (ends_with(got, "\r\n") || c.eof() || c.was_reset()) break;
    }
    long long took = elapsed_ms(start);
    CHECK_MESSAGE(got == cut_enhanced, "got: " << printable(got));
    CHECK(sent >= 2); // several gaps, none of them as long as the timeout
    CHECK(took >= 400);
    CHECK(took <= 3000);
    c.set_timeout(3s);
    CHECK(c.wait_closed());
    CHECK(drained(ts, 2s));
  }

  TEST_CASE("RFC 5321 §4.5.3.2.7: complete command lines every 200 ms keep restarting the clock") {
    smtpd::Options options = loopback_options();
    options.command_timeout = 500ms;
    smtpd::TestServer ts(options);

    Client c(ts.port());
    ready(c);
    auto start = Clock::now();
    int answered = 0;
    for (int i = 0; i < 10; ++i) {
      std::string r = c.command("NOOP");
      CHECK_MESSAGE(r == noop_ok, "NOOP #" << i + 1 << ": " << printable(r));
      if (r != noop_ok) break;
      ++answered;
      std::this_thread::sleep_for(200ms);
    }
    CHECK(answered == 10);
    CHECK(elapsed_ms(start) >= 1900); // far longer than one command_timeout
    CHECK(c.command("QUIT") == "221 2.0.0 Bye\r\n");
    CHECK(c.wait_closed());
  }

  TEST_CASE("Postfix smtpd_min_data_rate: content slower than min_data_rate is cut with 421 4.4.2 "
            "after data_timeout + size/rate; the handler is not called") {
    smtpd::Options options = loopback_options();
    options.data_timeout = 1s;
    options.min_data_rate = 1000; // bytes/s; the client sends 250
    smtpd::TestServer ts(options);

    Client c(ts.port());
    ready(c);
    REQUIRE(open_transaction(c));
    c.set_timeout(200ms);
    const std::string chunk = std::string(48, 's') + "\r\n"; // 50 bytes every 200 ms
    std::string got;
    long long sent = 0;
    auto start = Clock::now();
    for (int i = 0; i < 40 && elapsed_ms(start) < 8000; ++i) {
      if (!c.send(chunk)) break;
      sent += static_cast<long long>(chunk.size());
      got = c.read_line();
      if (ends_with(got, "\r\n") || c.eof() || c.was_reset()) break;
    }
    long long took = elapsed_ms(start);
    CHECK_MESSAGE(got == cut_enhanced, "got: " << printable(got));
    // The allowance is data_timeout + received/rate: 1000 ms + 1 ms per byte. The last chunk may
    // have arrived after the deadline, so it is not counted in the lower bound.
    long long expected = 1000 + sent;
    CHECK_MESSAGE(took >= 1000 + sent - 100, "took " << took << " ms after " << sent << " bytes");
    CHECK_MESSAGE(took <= 3 * expected, "took " << took << " ms after " << sent << " bytes");
    c.set_timeout(3s);
    CHECK(c.wait_closed());
    CHECK(drained(ts, 2s));
    CHECK(ts.messages().size() == 0);
  }

  TEST_CASE("Postfix smtpd_min_data_rate: 200 KB sent quickly, then the dot, is accepted") {
    smtpd::Options options = loopback_options();
    options.data_timeout = 1s;
    options.min_data_rate = 1000;
    smtpd::TestServer ts(options);

    Client c(ts.port(), "127.0.0.1", 10s);
    ready(c);
    REQUIRE(open_transaction(c));
    std::string content = "Subject: big\r\n\r\n";
    for (int i = 0; i < 2048; ++i)
      content += std::string(98, char('a' + i % 26)) + "\r\n";
    REQUIRE(content.size() > 200 * 1000);
    REQUIRE(c.send(content + ".\r\n"));
    std::string r = c.read_reply();
    CHECK_MESSAGE(starts_with(r, "250 2.0.0 Ok: queued as "), "got: " << printable(r));
    std::vector<smtpd::TestServer::Message> got = ts.messages();
    REQUIRE(got.size() == 1);
    CHECK(ends_with(got[0].data, content));
    CHECK(c.command("QUIT") == "221 2.0.0 Bye\r\n");
  }

  TEST_CASE("max_session_duration: a client busy with NOOPs every 100 ms is cut with 421 4.4.2") {
    smtpd::Options options = loopback_options();
    options.max_session_duration = 1s;
    smtpd::TestServer ts(options);

    auto start = Clock::now();
    Client c(ts.port());
    ready(c);
    std::string r;
    int noops = 0;
    for (int i = 0; i < 100 && elapsed_ms(start) < 8000; ++i) {
      r = c.command("NOOP");
      if (r != noop_ok) break;
      ++noops;
      std::this_thread::sleep_for(100ms);
    }
    long long took = elapsed_ms(start);
    CHECK_MESSAGE(r == cut_enhanced, "got: " << printable(r) << " after " << noops << " NOOPs");
    CHECK(noops >= 3);
    CHECK(took >= 900);
    CHECK(took <= 5000);
    CHECK(c.wait_closed());
  }

  // --- the per-IP connection limit ---------------------------------------------------------------

  TEST_CASE("max_connections_per_ip: with no exempt networks the third loopback client gets 421 "
            "and EOF; a freed slot is served") {
    auto log = std::make_shared<Log>();
    smtpd::Options options = loopback_options();
    options.max_connections_per_ip = 2;
    options.limit_exempt_networks = {};
    options.log_error = log->hook(log);
    smtpd::TestServer ts(options);

    Client first(ts.port()), second(ts.port());
    REQUIRE(first.connected());
    REQUIRE(second.connected());
    first.expect(220);
    second.expect(220);
    REQUIRE(ts.server().connections() == 2);

    Client third(ts.port());
    REQUIRE(third.connected());
    std::string r = third.read_line();
    CHECK_MESSAGE(r == too_many_from_ip, "got: " << printable(r));
    CHECK(third.wait_closed());
    CHECK(third.buffered().empty());
    CHECK(ts.server().connections() == 2);
    CHECK(poll_until([&] { return log->any("too many from its address"); }, 2s));

    CHECK(first.command("QUIT") == "221 Bye\r\n");
    CHECK(first.wait_closed());
    REQUIRE(poll_until([&] { return ts.server().connections() == 1; }, 3s));
    Client fourth(ts.port());
    REQUIRE(fourth.connected());
    CHECK(hello(fourth));
    CHECK(second.command("NOOP") == "250 Ok\r\n"); // the survivor is still served
  }

  TEST_CASE("max_connections_per_ip: loopback is exempt by default (127.0.0.0/8, ::1/128)") {
    smtpd::Options options = loopback_options();
    options.max_connections_per_ip = 2;
    smtpd::TestServer ts(options);

    auto clients = open_clients(10, ts.port());
    CHECK(ts.server().connections() == 10);
    for (auto& c : clients)
      CHECK(c->command("QUIT") == "221 2.0.0 Bye\r\n");
    CHECK(drained(ts, 3s));
  }

  TEST_CASE("limit_exempt_networks: a bad CIDR makes the constructor throw std::invalid_argument; "
            "a bare address is one host") {
    for (const char* bad : {"300.0.0.0/8", "10.0.0.0/33", "nonsense", "::1/129", "10.0.0.0/"}) {
      CAPTURE(bad);
      smtpd::Options options = loopback_options();
      options.limit_exempt_networks = {bad};
      CHECK_THROWS_AS(smtpd::Server{options}, std::invalid_argument);
    }
    for (const char* good : {"::1", "192.0.2.7", "10.0.0.0/8", "2001:db8::/32", "0.0.0.0/0"}) {
      CAPTURE(good);
      smtpd::Options options = loopback_options();
      options.limit_exempt_networks = {good};
      CHECK_NOTHROW(smtpd::Server{options});
    }
  }

  TEST_CASE("max_connections_per_ip over IPv6: ::1 is limited unless ::1/128 is exempt") {
    if (!has_ipv6_loopback()) {
      MESSAGE("no IPv6 loopback on this machine: skipped");
      return;
    }
    SUBCASE("exempt 127.0.0.0/8 only: the third [::1] client is refused") {
      smtpd::TestServer ts(ipv6_options("127.0.0.0/8"));
      auto clients = open_clients(2, ts.port(), "::1");
      Client third(ts.port(), "::1");
      REQUIRE(third.connected());
      std::string r = third.read_line();
      CHECK_MESSAGE(r == too_many_from_ip, "got: " << printable(r));
      CHECK(third.wait_closed());
    }
    SUBCASE("exempt ::1/128: five [::1] clients are served") {
      smtpd::TestServer ts(ipv6_options("::1/128"));
      auto clients = open_clients(5, ts.port(), "::1");
      CHECK(ts.server().connections() == 5);
      for (auto& c : clients)
        CHECK(c->command("QUIT") == "221 2.0.0 Bye\r\n");
    }
  }

  // --- clients that do not follow the dialogue --------------------------------------------------

  TEST_CASE("early talker: input before the delayed greeting gets 554 and EOF, never a 220") {
    smtpd::Options options = loopback_options();
    options.greeting_delay = 300ms;
    smtpd::TestServer ts(options);

    Client eager(ts.port());
    REQUIRE(eager.connected());
    REQUIRE(eager.send("EHLO x\r\n"));
    std::string r = eager.read_line();
    CHECK_MESSAGE(r == early_554, "got: " << printable(r));
    CHECK(eager.wait_closed());
    CHECK_MESSAGE(eager.buffered().empty(), "after the 554: " << printable(eager.buffered()));

    auto start = Clock::now();
    Client patient(ts.port());
    REQUIRE(patient.connected());
    std::string greeting = patient.read_reply();
    CHECK(greeting == "220 mx.test ESMTP smtpd\r\n");
    CHECK(elapsed_ms(start) >= 250);
    CHECK(reply_code(patient.command("EHLO patient.test")) == 250);
    CHECK(patient.command("QUIT") == "221 2.0.0 Bye\r\n");
  }

  TEST_CASE("early talker: with reject_early_talkers = false the eager client is served") {
    smtpd::Options options = loopback_options();
    options.greeting_delay = 300ms;
    options.reject_early_talkers = false;
    smtpd::TestServer ts(options);

    Client eager(ts.port());
    REQUIRE(eager.connected());
    REQUIRE(eager.send("EHLO x\r\n"));
    CHECK(eager.read_reply() == "220 mx.test ESMTP smtpd\r\n");
    CHECK(reply_code(eager.read_reply()) == 250);
    CHECK(eager.command("QUIT") == "221 2.0.0 Bye\r\n");
    CHECK(eager.wait_closed());
  }

  TEST_CASE("RFC 2920 §3.1: commands pipelined after HELO get 554 and EOF; after EHLO a burst is "
            "fine") {
    smtpd::Options options = loopback_options();
    smtpd::TestServer ts(options);

    Client bulk(ts.port());
    REQUIRE(bulk.connected());
    bulk.expect(220);
    REQUIRE(bulk.send("HELO x\r\nMAIL FROM:<a@b.test>\r\n"));
    CHECK(bulk.read_reply() == "250 mx.test\r\n");
    std::string r = bulk.read_reply();
    CHECK_MESSAGE(r == pipelined_554, "got: " << printable(r));
    CHECK(bulk.wait_closed());

    Client polite(ts.port());
    ready(polite);
    REQUIRE(polite.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"));
    CHECK(polite.read_reply() == "250 2.1.0 Ok\r\n");
    CHECK(polite.read_reply() == "250 2.1.5 Ok\r\n");
    CHECK(reply_code(polite.read_reply()) == 354);
    REQUIRE(polite.send("Subject: burst\r\n\r\nhi\r\n.\r\nQUIT\r\n"));
    CHECK(starts_with(polite.read_reply(), "250 2.0.0 Ok: queued as "));
    CHECK(polite.read_reply() == "221 2.0.0 Bye\r\n");
    CHECK(polite.wait_closed());
    CHECK(ts.messages().size() == 1);
  }

  TEST_CASE("Postfix smtpd_forbidden_commands: an HTTP request gets one 554 line and EOF") {
    smtpd::Options options = loopback_options();
    smtpd::TestServer ts(options);

    Client browser(ts.port());
    REQUIRE(browser.connected());
    browser.expect(220);
    REQUIRE(browser.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    std::string r = browser.read_line();
    CHECK_MESSAGE(r == web_554, "got: " << printable(r));
    CHECK(browser.wait_closed());
    CHECK_MESSAGE(browser.buffered().empty(), "after the 554: " << printable(browser.buffered()));
  }

  // --- error and junk budgets --------------------------------------------------------------------

  TEST_CASE("Postfix smtpd_soft_error_limit / smtpd_error_sleep_time: errors past the soft limit "
            "are answered after error_delay") {
    smtpd::Options options = loopback_options();
    options.soft_error_limit = 2;
    options.error_delay = 300ms;
    smtpd::TestServer ts(options);

    Client c(ts.port());
    ready(c);
    for (int i = 1; i <= 4; ++i) {
      CAPTURE(i);
      auto start = Clock::now();
      std::string r = c.command("BOGUS");
      long long took = elapsed_ms(start);
      CHECK(r == "500 5.5.2 Command not recognized\r\n");
      if (i <= 2)
        CHECK(took < 250); // within the soft limit: no tarpit
      else
        CHECK(took >= 250);
    }
    CHECK(c.command("QUIT") == "221 2.0.0 Bye\r\n");
  }

  TEST_CASE("error tarpit: shutdown() during a 10 s error_delay returns within 3 s") {
    smtpd::Options options = loopback_options();
    options.soft_error_limit = 0; // the very first error is delayed
    options.error_delay = 10s;
    smtpd::TestServer ts(options);

    Client c(ts.port(), "127.0.0.1", 8s);
    ready(c);
    REQUIRE(c.send("BOGUS\r\n"));
    std::this_thread::sleep_for(300ms); // the server is now waiting before its 500
    auto start = Clock::now();
    ts.server().shutdown(10s);
    long long took = elapsed_ms(start);
    CHECK_MESSAGE(took <= 3000, "shutdown took " << took << " ms");
    CHECK(reply_code(c.read_reply()) == 500);
    CHECK(c.read_reply() == "421 4.3.2 Service shutting down, try again later\r\n");
    CHECK(c.wait_closed());
  }

  TEST_CASE("Postfix smtpd_junk_command_limit: junk past the limit counts as errors until the "
            "hard limit closes with 421 4.7.0") {
    smtpd::Options options = loopback_options();
    options.junk_command_limit = 3;
    options.hard_error_limit = 2;
    smtpd::TestServer ts(options);

    Client c(ts.port());
    ready(c);
    for (int i = 1; i <= 3; ++i) {
      CAPTURE(i);
      CHECK(c.command("NOOP") == noop_ok);
    }
    // The 4th junk command is the first error; the 5th reaches hard_error_limit.
    CHECK(c.command("NOOP") == noop_ok);
    REQUIRE(c.send("NOOP\r\n"));
    std::string last;
    for (int replies = 0; replies < 2; ++replies) {
      last = c.read_reply();
      if (last != noop_ok) break;
    }
    CHECK_MESSAGE(last == errors_421, "got: " << printable(last));
    CHECK(c.wait_closed());
  }

  TEST_CASE("Postfix smtpd_junk_command_limit: a delivered message resets the junk count") {
    smtpd::Options options = loopback_options();
    options.junk_command_limit = 3;
    options.hard_error_limit = 2;
    smtpd::TestServer ts(options);

    Client c(ts.port());
    ready(c);
    for (int i = 0; i < 3; ++i)
      CHECK(c.command("NOOP") == noop_ok);
    REQUIRE(open_transaction(c));
    REQUIRE(c.send("Subject: reset\r\n\r\nbody\r\n.\r\n"));
    CHECK(starts_with(c.read_reply(), "250 2.0.0 Ok: queued as "));
    // Without the reset the 2nd of these would reach hard_error_limit and close.
    for (int i = 1; i <= 3; ++i) {
      CAPTURE(i);
      CHECK(c.command("NOOP") == noop_ok);
    }
    CHECK(c.command("QUIT") == "221 2.0.0 Bye\r\n");
    CHECK(ts.messages().size() == 1);
  }

  // --- worker threads ----------------------------------------------------------------------------

  TEST_CASE("max_idle_threads = 4: sequential connections reuse one parked worker; the thread "
            "count stays bounded and returns to its baseline after shutdown") {
    long base = baseline_threads();
    ThreadIds ids;
    long peak = 0;
    {
      smtpd::Options options = loopback_options();
      options.max_idle_threads = 4;
      options.log_read = ids.hook();
      smtpd::TestServer ts(options);
      for (int i = 0; i < 20; ++i) {
        CAPTURE(i);
        hello_and_quit(ts.port());
        // The connection is forgotten under the same lock hold that parks its worker.
        REQUIRE(drained(ts, 2s));
        peak = std::max(peak, threads_now());
      }
      std::size_t workers = ids.count();
      CHECK_MESSAGE(workers == 1, workers << " worker threads served 20 sequential connections");
      // base + the serve() thread + at most max_idle_threads parked workers + a few.
      CHECK_MESSAGE(peak <= base + 1 + 4 + 2, "peak " << peak << ", baseline " << base);
      CHECK(threads_now() <= base + 1 + 4);
    }
    check_threads_fall_to(base, base);
  }

  TEST_CASE("max_idle_threads = 0: every connection gets a new thread, which ends after it") {
    long base = baseline_threads();
    ThreadIds ids;
    {
      smtpd::Options options = loopback_options();
      options.max_idle_threads = 0;
      options.log_read = ids.hook();
      smtpd::TestServer ts(options);
      for (int i = 0; i < 20; ++i) {
        CAPTURE(i);
        hello_and_quit(ts.port());
      }
      CHECK(ids.count() == 20);
      // Only the serve() thread is left once the last worker has ended.
      check_threads_fall_to(base + 1, base);
    }
    check_threads_fall_to(base, base);
  }

  TEST_CASE("50 connections in concurrent batches of 10: all served, idle workers capped at "
            "max_idle_threads, none left after shutdown") {
    long base = baseline_threads();
    {
      smtpd::Options options = loopback_options();
      options.max_idle_threads = 4;
      smtpd::TestServer ts(options);
      int served = 0;
      for (int batch = 0; batch < 5; ++batch) {
        CAPTURE(batch);
        auto clients = open_clients(10, ts.port());
        CHECK(ts.server().connections() == 10);
        CHECK(threads_now() <= base + 1 + 10 + 4);
        for (auto& c : clients)
          if (c->command("QUIT") == "221 2.0.0 Bye\r\n") ++served;
        for (auto& c : clients)
          CHECK(c->wait_closed());
        REQUIRE(drained(ts, 3s));
        // Workers beyond the pool end; at most max_idle_threads stay parked.
        check_threads_fall_to(base + 1 + 4, base);
      }
      CHECK(served == 50);
    }
    check_threads_fall_to(base, base);
  }

  TEST_CASE("issue 7: a handler stuck past shutdown's deadline is detached and logged; it finishes "
            "safely after the Server is destroyed") {
    long base = baseline_threads();
    auto pinned = std::make_shared<Pinned>();
    auto log = std::make_shared<Log>();
    smtpd::Options options = loopback_options();
    options.log_error = log->hook(log);
    options.handler = [pinned](const smtpd::Peer&, const std::string&,
                               const std::vector<std::string>&, const std::string&) {
      std::unique_lock<std::mutex> lock(pinned->mu);
      pinned->entered = true;
      pinned->cv.notify_all();
      pinned->cv.wait_for(lock, 30s, [&] { return pinned->released; }); // bounded, just in case
    };
    options.log_write = [pinned](const smtpd::Peer&, std::string_view line) {
      if (starts_with(line, "250 2.0.0 Ok: queued as ")) pinned->replied = true;
    };
    auto ts = std::make_unique<smtpd::TestServer>(options);

    Client c(ts->port());
    ready(c);
    REQUIRE(open_transaction(c));
    REQUIRE(c.send("Subject: stuck\r\n\r\nbody\r\n.\r\n"));
    {
      std::unique_lock<std::mutex> lock(pinned->mu);
      REQUIRE(pinned->cv.wait_for(lock, 5s, [&] { return pinned->entered; }));
    }

    auto start = Clock::now();
    ts->server().shutdown(300ms);
    long long took = elapsed_ms(start);
    CHECK(took >= 250);
    CHECK_MESSAGE(took <= 3000, "shutdown took " << took << " ms");
    CHECK_MESSAGE(log->any("handler"), "log_error: " << log->all());
    CHECK(c.wait_closed()); // the connection itself was cut
    CHECK_FALSE(pinned->replied.load());

    ts.reset(); // the Server is gone while its handler still runs
    {
      std::lock_guard<std::mutex> lock(pinned->mu);
      pinned->released = true;
    }
    pinned->cv.notify_all();
    CHECK(poll_until([&] { return pinned->replied.load(); }, 5s));
    check_threads_fall_to(base, base, 5s);
  }

  // --- hooks that throw before MAIL -------------------------------------------------------------

  TEST_CASE("on_helo throwing: 421 without an enhanced code and EOF; others are still served") {
    auto log = std::make_shared<Log>();
    smtpd::Options options = loopback_options();
    options.log_error = log->hook(log);
    options.on_helo = [](const smtpd::SessionInfo&,
                         const std::string& name) -> std::optional<smtpd::Reply> {
      if (name == "boom.test") throw std::runtime_error("helo hook exploded");
      return std::nullopt;
    };
    smtpd::TestServer ts(options);

    Client victim(ts.port());
    REQUIRE(victim.connected());
    victim.expect(220);
    std::string r = victim.command("EHLO boom.test");
    CHECK_MESSAGE(r == "421 Local error in processing, closing connection\r\n",
                  "got: " << printable(r));
    CHECK(victim.wait_closed());
    CHECK(log->any("helo hook exploded"));

    Client other(ts.port());
    REQUIRE(other.connected());
    CHECK(hello(other));
    CHECK(other.command("QUIT") == "221 2.0.0 Bye\r\n");
  }

  TEST_CASE("on_connect throwing: 421 and EOF; the next client is served") {
    std::atomic<int> calls{0};
    smtpd::Options options = loopback_options();
    options.on_connect = [&](const smtpd::SessionInfo&) -> std::optional<smtpd::Reply> {
      if (calls++ == 0) throw std::runtime_error("connect hook exploded");
      return std::nullopt;
    };
    smtpd::TestServer ts(options);

    Client victim(ts.port());
    REQUIRE(victim.connected());
    std::string r = victim.read_reply();
    CHECK_MESSAGE(starts_with(r, "421 "), "got: " << printable(r));
    CHECK(victim.wait_closed());

    Client other(ts.port());
    REQUIRE(other.connected());
    CHECK(hello(other));
    CHECK(other.command("QUIT") == "221 2.0.0 Bye\r\n");
    CHECK(calls.load() == 2);
  }
}
