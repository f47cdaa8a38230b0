// api_test.cpp - the public entry points a first program uses, each doing its real job over a
// loopback socket: ListenAndServe and ListenAndServeTLS (which block for good, so they run in a
// forked child that the test kills), Server::serve(fd) with a socket the user made, the empty
// address and the system host name defaults, and a 421 from user code closing the connection.
#include "../smtpd.hpp"
#include "test_client.hpp"
#ifndef SMTPD_NO_TLS
#include "tls_client.hpp"
#endif

#include <doctest/doctest.h>

#include <csignal>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace std::chrono_literals;

namespace {

// free_port - a loopback port nobody listens on right now (bound to port 0, then released).
uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&address), length) == 0 &&
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  ::close(fd);
  REQUIRE(ok);
  return ntohs(address.sin_port);
}

// Child - a forked process running one of the blocking one-liners. What its handler receives is
// written to a pipe; the destructor kills the child and reaps it, so no test leaves it behind.
class Child {
public:
  // Runs `serve(pipe_fd)` in a child process; it must not return (if it does, or throws, the
  // child exits with status 2 and the parent's reads see end of file).
  template <class Serve> explicit Child(Serve serve) {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::close(fds[0]);
      try {
        serve(fds[1]);
      } catch (...) {}
      ::_exit(2);
    }
    ::close(fds[1]);
    read_fd_ = fds[0];
  }

  ~Child() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    ::close(read_fd_);
  }

  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  // read_until - what the child wrote until it wrote `marker` (or closed the pipe), bounded by
  // the pipe's end and 5 s.
  std::string read_until(const std::string& marker) {
    std::string got;
    auto until = test::Clock::now() + 5s;
    while (got.find(marker) == std::string::npos && test::Clock::now() < until) {
      pollfd p{read_fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      char buffer[4096];
      ssize_t n = ::read(read_fd_, buffer, sizeof buffer);
      if (n <= 0) break;
      got.append(buffer, std::size_t(n));
    }
    return got;
  }

private:
  pid_t pid_ = -1;
  int read_fd_ = -1;
};

// connect_when_up - a client connected to 127.0.0.1:`port` once something listens there,
// trying for at most 5 s (the child needs a moment to start).
std::unique_ptr<test::Client> connect_when_up(uint16_t port) {
  for (auto until = test::Clock::now() + 5s; test::Clock::now() < until;) {
    auto c = std::make_unique<test::Client>(port);
    if (c->connected()) return c;
    std::this_thread::sleep_for(20ms);
  }
  return nullptr;
}

// pipe_handler - a Handler that writes "from|to|data" and an end mark to `fd`.
smtpd::Handler pipe_handler(int fd) {
  return [fd](const smtpd::Peer&, const std::string& from, const std::vector<std::string>& to,
              const std::string& data) {
    std::string record = from + "|" + (to.empty() ? "" : to[0]) + "|" + data + "<end>";
    (void)!::write(fd, record.data(), record.size());
  };
}

const std::string content = "Subject: one-liner\r\n\r\nHello.\r\n";

} // namespace

TEST_SUITE("api") {

  TEST_CASE("ListenAndServe serves, prepends Received, hands the message over and says 250") {
    uint16_t port = free_port();
    std::string addr = "127.0.0.1:" + std::to_string(port);
    Child child(
        [&](int fd) { smtpd::ListenAndServe(addr, pipe_handler(fd), "apitest", "mx.test"); });
    auto c = connect_when_up(port);
    REQUIRE(c);
    CHECK(c->read_reply() == "220 mx.test ESMTP apitest\r\n");
    c->command("EHLO client.test");
    CHECK(test::reply_code(test::send_message(*c, "a@b.test", "c@d.test", content)) == 250);
    CHECK(test::reply_code(c->command("QUIT")) == 221);
    std::string got = child.read_until("<end>");
    CHECK(got.rfind("a@b.test|c@d.test|Received: from client.test ", 0) == 0);
    CHECK(got.find("by mx.test (apitest) with ESMTP id ") != std::string::npos);
    CHECK(test::ends_with(got, "\r\n" + content + "<end>"));
  }

#ifndef SMTPD_NO_TLS
  TEST_CASE("ListenAndServeTLS offers STARTTLS with the given certificate and delivers") {
    const test::Certs& certs = test::certs();
    REQUIRE(certs.error.empty());
    uint16_t port = free_port();
    std::string addr = "127.0.0.1:" + std::to_string(port);
    Child child([&](int fd) {
      smtpd::ListenAndServeTLS(addr, certs.server_cert, certs.server_key, pipe_handler(fd), "",
                               "mx.test");
    });
    REQUIRE(connect_when_up(port)); // up; that probe connection just goes away
    test::TlsClient c(port);
    REQUIRE(c.connected());
    CHECK(c.read_reply() == "220 mx.test ESMTP smtpd\r\n"); // appname "" is "smtpd"
    CHECK(c.command("EHLO client.test").find("STARTTLS\r\n") != std::string::npos);
    test::ClientTls verify;
    verify.ca = certs.ca;
    test::CtxPtr ctx = test::client_context(verify);
    REQUIRE(c.starttls(ctx.get()));
    c.command("EHLO client.test");
    CHECK(test::reply_code(test::send_message(c, "a@b.test", "c@d.test", content)) == 250);
    std::string got = child.read_until("<end>");
    CHECK(got.find("with ESMTPS id ") != std::string::npos);
    CHECK(test::ends_with(got, "\r\n" + content + "<end>"));
  }
#endif

  TEST_CASE("ListenAndServe throws when it cannot listen, and never serves") {
    CHECK_THROWS_AS(smtpd::ListenAndServe("no-port", nullptr, "", ""), std::invalid_argument);
    CHECK_THROWS_AS(smtpd::ListenAndServe("127.0.0.1:99999", nullptr, "", ""),
                    std::invalid_argument);
  }

  TEST_CASE("addr \"\" means \":25\", every address on port 25, as in mhale/smtpd") {
    smtpd::Options options;
    options.addr = "";
    smtpd::Server server(options); // does not listen: a test must not take port 25
    CHECK(server.options().addr == ":25");
  }

  TEST_CASE("Server::serve(fd) serves on a listening socket the user made, and owns it") {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    REQUIRE(::listen(fd, 16) == 0);
    std::vector<std::string> delivered;
    std::mutex mu;
    smtpd::Options options;
    options.hostname = "mx.test";
    options.handler = [&](const smtpd::Peer&, const std::string&, const std::vector<std::string>&,
                          const std::string& data) {
      std::lock_guard<std::mutex> lock(mu);
      delivered.push_back(data);
    };
    smtpd::Server server(options);
    std::thread serving([&] { server.serve(fd); });
    REQUIRE(server.wait_ready(5s));
    REQUIRE(server.port() != 0); // address() reads the socket it was given
    {
      test::Client c(server.port());
      REQUIRE(c.connected());
      c.expect(220);
      c.command("EHLO client.test");
      CHECK(test::reply_code(test::send_message(c, "a@b.test", "c@d.test", content)) == 250);
      c.command("QUIT");
    }
    server.close();
    serving.join();
    std::lock_guard<std::mutex> lock(mu);
    REQUIRE(delivered.size() == 1);
    CHECK(test::ends_with(delivered[0], "\r\n" + content));
    // The server owned the socket and closed it: the descriptor number is free again.
    CHECK(::fcntl(fd, F_GETFD) == -1);
  }

  TEST_CASE("hostname \"\" greets with the system host name (gethostname)") {
    char name[256] = {};
    REQUIRE(::gethostname(name, sizeof name - 1) == 0);
    smtpd::Options options; // hostname left empty
    smtpd::Protocol protocol(options, test::client_info());
    CHECK(protocol.take_output() == "220 " + std::string(name) + " ESMTP smtpd\r\n");
    smtpd::TestServer smtp;
    test::Client c(smtp.port());
    REQUIRE(c.connected());
    CHECK(c.read_reply() == "220 " + std::string(name) + " ESMTP smtpd\r\n");
  }

  TEST_CASE("RFC 5321 §3.8: a handler's 421 reaches the client, then the connection closes") {
    smtpd::Options options;
    options.hostname = "mx.test";
    options.message_handler = [](const smtpd::SessionInfo&, const smtpd::Envelope&,
                                 const std::string&) -> std::optional<smtpd::Reply> {
      return smtpd::Reply{421, "4.3.2", "Store offline, closing"};
    };
    smtpd::TestServer smtp(options);
    test::Client c(smtp.port());
    REQUIRE(c.connected());
    c.expect(220);
    c.command("EHLO client.test");
    CHECK(test::send_message(c, "a@b.test", "c@d.test", content) ==
          "421 4.3.2 Store offline, closing\r\n");
    CHECK(c.wait_closed()); // end of stream, without our asking
    CHECK(c.buffered().empty());
    CHECK(smtp.messages().empty());
  }

} // TEST_SUITE("api")
