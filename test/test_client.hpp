// test_client.hpp - loopback clients for the server tests, in the manner of cpp-httplib's:
//
//   Client      one socket with SO_RCVTIMEO and SO_SNDTIMEO, and one buffered reader: replies are
//               read whole (multi-line included), no byte is dropped, and no call waits forever.
//
// The servers they talk to are the library's own smtpd::TestServer (the test API users rely on),
// or a smtpd::Server driven directly by a test of Server itself.
//
// Failures are reported as text ("...<timeout>", "...<eof>") so that a CHECK shows what the
// server actually sent.
#ifndef SMTPD_TEST_CLIENT_HPP
#define SMTPD_TEST_CLIENT_HPP

#include "../smtpd.hpp"
#include "protocol_helpers.hpp"

#include <doctest/doctest.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

namespace test {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// starts_with, ends_with, contains - string tests that read well inside CHECK.
inline bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

inline bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

inline bool contains(std::string_view s, std::string_view part) {
  return s.find(part) != std::string_view::npos;
}

// reply_code - the three-digit code a reply starts with, or -1.
inline int reply_code(std::string_view reply) {
  if (reply.size() < 3) return -1;
  int code = 0;
  for (char c : reply.substr(0, 3)) {
    if (c < '0' || c > '9') return -1;
    code = code * 10 + (c - '0');
  }
  return code;
}

// final_lines - how many complete reply lines in `bytes` end a reply ("250 ...", not "250-...").
inline std::size_t final_lines(std::string_view bytes) {
  std::size_t count = 0;
  for (std::size_t end; (end = bytes.find("\r\n")) != std::string_view::npos;) {
    if (end >= 4 && bytes[3] == ' ') ++count;
    bytes.remove_prefix(end + 2);
  }
  return count;
}

// poll_until - call `done` every 10 ms until it returns true or `limit` passes.
template <class Done> bool poll_until(Done done, milliseconds limit) {
  auto until = Clock::now() + limit;
  for (;;) {
    if (done()) return true;
    if (Clock::now() >= until) return false;
    std::this_thread::sleep_for(10ms);
  }
}

// elapsed_ms - milliseconds since `start`.
inline long long elapsed_ms(Clock::time_point start) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - start).count();
}

// make_address - a numeric IPv4 or IPv6 address and a port as a socket address.
inline bool make_address(const std::string& ip, uint16_t port, sockaddr_storage& address,
                         socklen_t& length) {
  address = sockaddr_storage{};
  auto* v4 = reinterpret_cast<sockaddr_in*>(&address);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&address);
  if (::inet_pton(AF_INET, ip.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    length = sizeof *v4;
    return true;
  }
  if (::inet_pton(AF_INET6, ip.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    length = sizeof *v6;
    return true;
  }
  return false;
}

// set_socket_timeout - SO_RCVTIMEO and SO_SNDTIMEO on `fd`.
inline void set_socket_timeout(int fd, milliseconds timeout) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>(timeout.count() % 1000 * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

// connect_socket - a TCP socket connected to ip:port with both timeouts set (SO_SNDTIMEO
// bounds connect() too), or -1. `receive_buffer` > 0 sets SO_RCVBUF before connecting.
inline int connect_socket(const std::string& ip, uint16_t port, milliseconds timeout,
                          int receive_buffer = 0) {
  sockaddr_storage address;
  socklen_t length = 0;
  if (!make_address(ip, port, address, length)) return -1;
  int fd = ::socket(address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  set_socket_timeout(fd, timeout);
  if (receive_buffer > 0)
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), length) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// linger_zero - make the next close() of `fd` send a TCP RST instead of a FIN.
// connect_unix - a connected Unix-domain stream socket to `path` with both socket timeouts
// set, or -1.
inline int connect_unix(const std::string& path, milliseconds timeout) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) return -1;
  std::memcpy(a.sun_path, path.data(), path.size());
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  set_socket_timeout(fd, timeout);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

inline void linger_zero(int fd) {
  linger hard{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &hard, sizeof hard);
}

// send_all - write every byte to `fd`; false when the connection failed or a send() timed out.
// Bounded: each send() either makes progress or times out, and the whole call stops after 60 s.
inline bool send_all(int fd, std::string_view bytes) {
  auto until = Clock::now() + 60s;
  while (!bytes.empty() && fd >= 0) {
    ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n > 0) {
      bytes.remove_prefix(std::size_t(n));
      continue;
    }
    if (n < 0 && errno == EINTR && Clock::now() < until) continue;
    return false;
  }
  return bytes.empty();
}

// recv_plain - one recv() from `fd` appended to `buffer`: the bytes read, 0 at end of stream
// (`eof` set), -1 when the receive timeout passed or the connection failed (`was_reset` set on
// a TCP reset).
inline long recv_plain(int fd, std::string& buffer, bool& eof, bool& was_reset) {
  if (fd < 0) return -1;
  char chunk[16 * 1024];
  for (int tries = 0; tries < 100; ++tries) {
    ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n > 0) buffer.append(chunk, std::size_t(n));
    if (n == 0) eof = true;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == ECONNRESET) was_reset = true;
    return long(n);
  }
  return -1;
}

// take_line - move the first whole line (CRLF included) of `buffer` into `line`; false when
// there is none yet.
inline bool take_line(std::string& buffer, std::string& line) {
  std::size_t end = buffer.find("\r\n");
  if (end == std::string::npos) return false;
  line = buffer.substr(0, end + 2);
  buffer.erase(0, end + 2);
  return true;
}

// ReplyReader - read_reply(), expect() and command() for a connection class `Conn` that has
// read_line() and send() (Client here, TlsClient in tls_client.hpp).
template <class Conn> class ReplyReader {
public:
  // read_reply - one whole reply, possibly multi-line, exactly as sent (CRLFs included): lines
  // until one whose fourth character is not '-'. On failure the text ends with a "<...>" note.
  std::string read_reply() {
    std::string reply;
    for (int lines = 0; lines < 1000; ++lines) {
      std::string line = self().read_line();
      reply += line;
      if (!ends_with(line, "\r\n")) return reply;
      if (line.size() < 6 || line[3] != '-') return reply;
    }
    return reply + "<too many lines>";
  }

  // expect - read a reply and CHECK its code; returns the reply for further checks.
  std::string expect(int code) {
    std::string reply = read_reply();
    CHECK_MESSAGE(reply_code(reply) == code,
                  "expected a " << code << " reply, got: \"" << printable(reply) << "\"");
    return reply;
  }

  // command - send one command line (CRLF added) and read its reply.
  std::string command(std::string_view line) {
    self().send(std::string(line) + "\r\n");
    return read_reply();
  }

private:
  Conn& self() { return static_cast<Conn&>(*this); }
};

// Client - one connection to a test server, with a buffered reader.
class Client : public ReplyReader<Client> {
public:
  // Connects to ip:port; connected() tells whether it worked. `receive_buffer` > 0 sets
  // SO_RCVBUF before connecting (a small one makes a client that never reads fill up quickly).
  explicit Client(uint16_t port, const std::string& ip = "127.0.0.1", milliseconds timeout = 5s,
                  int receive_buffer = 0)
      : fd_(connect_socket(ip, port, timeout, receive_buffer)), timeout_(timeout) {}

  // Connects to the Unix-domain socket at `unix_path` (a server's "unix:PATH" address).
  Client(const std::string& unix_path, milliseconds timeout)
      : fd_(connect_unix(unix_path, timeout)), timeout_(timeout) {}

  ~Client() { close(); }

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return fd_ >= 0; }

  int fd() const { return fd_; }

  // close - close the socket now (an orderly FIN).
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  // reset - close the socket with a TCP RST instead of a FIN (SO_LINGER with zero time).
  void reset() {
    if (fd_ < 0) return;
    linger_zero(fd_);
    close();
  }

  // set_timeout - how long one recv() or send() may wait, and one read_line() in all.
  void set_timeout(milliseconds timeout) {
    timeout_ = timeout;
    set_socket_timeout(fd_, timeout);
  }

  // local_port - our end's port, as the server sees it.
  uint16_t local_port() const {
    sockaddr_storage address{};
    socklen_t length = sizeof address;
    if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length) != 0) return 0;
    return port_of(address);
  }

  // remote_port - the server's port, as our socket is connected to it (getpeername).
  uint16_t remote_port() const {
    sockaddr_storage address{};
    socklen_t length = sizeof address;
    if (::getpeername(fd_, reinterpret_cast<sockaddr*>(&address), &length) != 0) return 0;
    return port_of(address);
  }

  // send - write every byte (send_all).
  bool send(std::string_view bytes) { return send_all(fd_, bytes); }

  // recv_once - one recv() appended to the buffer: the bytes read, 0 at end of stream, -1 when
  // the receive timeout passed or the connection failed (reset() then tells a TCP reset).
  long recv_once() { return recv_plain(fd_, buffer_, eof_, was_reset_); }

  // read_line - the next line, CRLF included. When no whole line arrives in time, returns what
  // is buffered followed by "<eof>", "<reset>" or "<timeout>", and leaves the buffer as it was.
  std::string read_line() {
    auto until = Clock::now() + timeout_;
    std::string line;
    while (!take_line(buffer_, line)) {
      if (eof_) return buffer_ + "<eof>";
      if (was_reset_) return buffer_ + "<reset>";
      if (Clock::now() >= until || recv_once() < 0)
        return buffer_ + (was_reset_ ? "<reset>" : "<timeout>");
    }
    return line;
  }

  // wait_closed - wait (bounded by the timeout) for the server to close the connection: true at
  // end of stream or on a reset. Bytes arriving first are kept in the buffer, or dropped when
  // `discard` (a client that sent megabytes of pipelined commands).
  bool wait_closed(bool discard = false) {
    auto until = Clock::now() + timeout_;
    while (!eof_ && !was_reset_) {
      if (Clock::now() >= until) return false;
      if (recv_once() < 0 && !was_reset_) return false;
      if (discard) buffer_.clear();
    }
    return true;
  }

  // buffered - bytes received and not yet read as lines.
  const std::string& buffered() const { return buffer_; }

  bool eof() const { return eof_; }

  bool was_reset() const { return was_reset_; }

private:
  static uint16_t port_of(const sockaddr_storage& address) {
    if (address.ss_family == AF_INET)
      return ntohs(reinterpret_cast<const sockaddr_in*>(&address)->sin_port);
    if (address.ss_family == AF_INET6)
      return ntohs(reinterpret_cast<const sockaddr_in6*>(&address)->sin6_port);
    return 0;
  }

  int fd_ = -1;
  milliseconds timeout_;
  std::string buffer_;
  bool eof_ = false;
  bool was_reset_ = false;
};

// send_message - one whole transaction on a Client or TlsClient, a command at a time; returns
// the reply to the final dot (or the first reply that was not the expected one).
template <class Conn>
std::string send_message(Conn& c, const std::string& from, const std::string& to,
                         const std::string& content) {
  std::string r = c.command("MAIL FROM:<" + from + ">");
  if (reply_code(r) != 250) return r;
  r = c.command("RCPT TO:<" + to + ">");
  if (reply_code(r) != 250) return r;
  r = c.command("DATA");
  if (reply_code(r) != 354) return r;
  c.send(content + ".\r\n");
  return c.read_reply();
}

// loopback_options - what the loopback tests start from: 127.0.0.1, an ephemeral port, and a
// fixed host name so that replies can be compared exactly.
inline smtpd::Options loopback_options() {
  smtpd::Options options;
  options.addr = "127.0.0.1:0";
  options.hostname = "mx.test";
  return options;
}

} // namespace test

#endif // SMTPD_TEST_CLIENT_HPP
