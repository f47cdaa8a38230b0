// unix_socket_test.cpp - listeners on Unix-domain sockets (unix(7)), SMTP and LMTP, through a
// real Server on a socket in a temporary directory: the address, the file mode, a stale socket
// file replaced and a live one never taken, the file removed on close and on a graceful
// shutdown (and only if it is still ours), the client's SO_PEERCRED credentials in SessionInfo
// and the Received header, and per-IP limits and rates that do not apply to Unix clients.
#include "../smtpd.hpp"
#include "test_client.hpp"

#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

using namespace std::chrono_literals;

namespace {

// TempDir - a fresh directory under /tmp, removed with what is left in it.
struct TempDir {
  std::string path;

  TempDir() {
    char pattern[] = "/tmp/smtpd-unix-XXXXXX";
    REQUIRE(::mkdtemp(pattern) != nullptr);
    path = pattern;
  }

  ~TempDir() { (void)std::system(("rm -rf '" + path + "'").c_str()); }

  std::string file(const std::string& name) const { return path + "/" + name; }
};

bool exists(const std::string& path) {
  struct stat st {};

  return ::lstat(path.c_str(), &st) == 0;
}

unsigned mode_of(const std::string& path) {
  struct stat st {};

  REQUIRE(::lstat(path.c_str(), &st) == 0);
  return unsigned(st.st_mode & 07777);
}

// stale_socket - a socket file at `path` with nobody listening: bound, then closed without
// removing the file, as a server killed with SIGKILL leaves it.
void make_stale_socket(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.data(), path.size());
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  ::close(fd);
  REQUIRE(exists(path));
}

smtpd::Options unix_options(const std::string& path) {
  smtpd::Options o;
  o.addr = "unix:" + path;
  o.hostname = "mx.test";
  return o;
}

// greeted - connect to the Unix socket and read the greeting's code (0: no connection).
int greeted(const std::string& path) {
  test::Client c(path, 5s);
  if (!c.connected()) return 0;
  return test::reply_code(c.read_reply());
}

} // namespace

TEST_SUITE("unix") {

  TEST_CASE("unix(7): SMTP on a Unix socket; the peer's SO_PEERCRED in SessionInfo and Received") {
    TempDir dir;
    std::string path = dir.file("smtp.sock");
    smtpd::TestServer smtp(unix_options(path));
    CHECK(smtp.address() == "unix:" + path);
    CHECK(smtp.port() == 0);
    CHECK(mode_of(path) == 0660); // Options::unix_socket_mode's default
    test::Client c(path, 5s);
    REQUIRE(c.connected());
    c.expect(220);
    c.command("EHLO client.test");
    CHECK(test::reply_code(
              test::send_message(c, "a@x.test", "b@y.test", "Subject: t\r\n\r\nhi\r\n")) == 250);
    REQUIRE(smtp.wait_for(1, 5s));
    smtpd::TestServer::Message m = smtp.messages().at(0);
    CHECK(m.session.peer.is_unix());
    CHECK(m.session.peer.unix_path == path);
    CHECK(m.session.peer.ip.empty());
    CHECK(m.session.peer.pid == int(::getpid()));
    CHECK(m.session.peer.uid == int(::getuid()));
    CHECK(m.session.peer.gid == int(::getgid()));
    CHECK(m.session.local.unix_path == path);
    std::string expected = "Received: from client.test (via unix socket, uid " +
                           std::to_string(::getuid()) + " pid " + std::to_string(::getpid()) + ")";
    CHECK(m.data.rfind(expected, 0) == 0);
    CHECK(m.delivered_to == std::vector<std::string>{"b@y.test"});
  }

  TEST_CASE("RFC 2033 over a Unix socket: LHLO and one reply per recipient") {
    TempDir dir;
    std::string path = dir.file("lmtp.sock");
    smtpd::Options o = unix_options(path);
    o.lmtp = true;
    o.per_recipient_handler = [](const smtpd::SessionInfo&, const smtpd::Envelope& e,
                                 const std::string&) {
      smtpd::RecipientReplies r;
      for (const std::string& to : e.to)
        r.push_back(to == "full@y.test"
                        ? std::optional<smtpd::Reply>(smtpd::Reply{452, "4.2.2", "Mailbox full"})
                        : std::nullopt);
      return r;
    };
    smtpd::TestServer lmtp(o);
    test::Client c(path, 5s);
    REQUIRE(c.connected());
    CHECK(c.expect(220).find("mx.test LMTP") != std::string::npos);
    CHECK(test::reply_code(c.command("EHLO client.test")) == 500);
    CHECK(test::reply_code(c.command("LHLO client.test")) == 250);
    c.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<ok@y.test>\r\nRCPT TO:<full@y.test>\r\nDATA\r\n");
    c.expect(250);
    c.expect(250);
    c.expect(250);
    c.expect(354);
    c.send("Subject: t\r\n\r\nhi\r\n.\r\n");
    c.expect(250);
    CHECK(c.expect(452).find("4.2.2 Mailbox full") != std::string::npos);
    REQUIRE(lmtp.wait_for(1, 5s));
    smtpd::TestServer::Message m = lmtp.messages().at(0);
    CHECK(m.envelope.to == std::vector<std::string>{"ok@y.test", "full@y.test"});
    CHECK(m.delivered_to == std::vector<std::string>{"ok@y.test"});
    CHECK(m.data.find(" with LMTP id ") != std::string::npos);
  }

  TEST_CASE("unix_socket_mode sets the socket file's mode") {
    TempDir dir;
    std::string path = dir.file("m.sock");
    smtpd::Options o = unix_options(path);
    o.unix_socket_mode = 0600;
    smtpd::TestServer smtp(o);
    CHECK(mode_of(path) == 0600);
    CHECK(greeted(path) == 220);
    o.unix_socket_mode = 010000; // not a file mode
    CHECK_THROWS_AS(smtpd::Server{o}, std::invalid_argument);
  }

  TEST_CASE("a stale socket file (its server killed) is replaced") {
    TempDir dir;
    std::string path = dir.file("stale.sock");
    make_stale_socket(path);
    smtpd::TestServer smtp(unix_options(path));
    CHECK(greeted(path) == 220);
  }

  TEST_CASE("a live server's socket is never taken, nor a file that is not a socket") {
    TempDir dir;
    std::string path = dir.file("live.sock");
    smtpd::TestServer first(unix_options(path));
    smtpd::Server second(unix_options(path));
    CHECK_THROWS_AS(second.listen(), std::system_error);
    CHECK(greeted(path) == 220); // the first still serves on its own file
    std::string plain = dir.file("plain");
    std::ofstream(plain) << "keep me";
    smtpd::Server third(unix_options(plain));
    CHECK_THROWS_AS(third.listen(), std::system_error);
    std::ifstream in(plain);
    std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(content == "keep me");
    smtpd::Server too_long(unix_options(dir.file(std::string(200, 'x'))));
    CHECK_THROWS_AS(too_long.listen(), std::invalid_argument);
  }

  TEST_CASE("the socket file is removed on close and on a graceful shutdown") {
    TempDir dir;
    std::string path = dir.file("gone.sock");
    {
      smtpd::TestServer smtp(unix_options(path));
      REQUIRE(exists(path));
      smtp.stop();
      CHECK_FALSE(exists(path));
    }
    smtpd::Server server(unix_options(path));
    server.listen();
    std::thread serving([&] { server.serve(); });
    REQUIRE(server.wait_ready(5s));
    CHECK(greeted(path) == 220);
    server.shutdown(1s);
    serving.join();
    CHECK_FALSE(exists(path));
  }

  TEST_CASE("a socket file that is no longer ours is left alone on close") {
    TempDir dir;
    std::string path = dir.file("moved.sock");
    smtpd::TestServer first(unix_options(path));
    REQUIRE(::unlink(path.c_str()) == 0);         // someone removed it...
    smtpd::TestServer second(unix_options(path)); // ...and another server took the name
    first.stop();
    CHECK(exists(path));
    CHECK(greeted(path) == 220);
  }

  TEST_CASE("per-IP limits and rates do not apply to Unix clients, which have no IP") {
    TempDir dir;
    std::string path = dir.file("limits.sock");
    smtpd::Options o = unix_options(path);
    o.limit_exempt_networks = {}; // nothing exempt: a TCP client would be held to both
    o.max_connections_per_ip = 1;
    o.max_connection_rate = 1;
    smtpd::TestServer smtp(o);
    std::vector<std::unique_ptr<test::Client>> clients;
    for (int i = 0; i < 3; ++i) {
      clients.push_back(std::make_unique<test::Client>(path, 5s));
      REQUIRE(clients.back()->connected());
      CHECK(test::reply_code(clients.back()->read_reply()) == 220);
    }
  }

} // TEST_SUITE("unix")
