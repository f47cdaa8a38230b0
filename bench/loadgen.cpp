// bench/loadgen.cpp - the benchmark's own SMTP load generator: C++17 and POSIX sockets only (it
// does not use the smtpd library), one thread, every connection driven by one epoll loop.
//
//     loadgen send --port P [--conns N] [--messages M] [--size BYTES] [--pipeline] [--bdat]
//                  [--timeout S]
//     loadgen idle --port P --conns N [--timeout S] [--burst K]
//
// send: N connections to 127.0.0.1:P (or --host) share M messages of exactly BYTES bytes each
//   (headers included, CRLF line ends). Each connection says EHLO, then sends messages until
//   the M are taken, then QUIT. Lock-step (the default) waits for every reply before the next
//   command. --pipeline uses RFC 2920 PIPELINING (refused when the EHLO reply does not offer
//   it): MAIL, RCPT and DATA go out in one write, and after the 354 the message, its final dot
//   and the next MAIL/RCPT/DATA (or QUIT) go out in one write. When the server offers SIZE,
//   MAIL carries SIZE=BYTES (as curl and Python's smtplib do). --bdat sends each message as one
//   RFC 3030 chunk, "BDAT BYTES LAST" and the message in one write, instead of DATA, 354, the
//   message and its dot (refused when the EHLO reply does not offer CHUNKING); with --pipeline
//   too, MAIL, RCPT and the chunk go out in one write.
// idle: open N connections (at most K handshakes in flight, default 64), read the greeting, say
//   EHLO and hold them. Prints a "ready" JSON line when all N are idle (or --timeout passed),
//   then waits for a line on stdin: "noop" sends NOOP on every idle connection and checks that
//   each is answered 250 (within --timeout again), prints a "noop" JSON line and exits.
//
// Every reply code is checked against what the command expects (220, 250, 354, 221); a wrong
// code or a connection the server drops counts as an error and that connection is abandoned.
// The result is one JSON line on stdout. Exit status: 0 when nothing went wrong, 1 when there
// were errors or the time ran out, 2 for a usage error.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cctype>
#include <csignal>
#include <cstring>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

namespace {

using Clock = std::chrono::steady_clock;

struct Config {
  bool idle = false;
  std::string host = "127.0.0.1";
  int port = 0;
  long conns = 1;
  long messages = 1;
  std::size_t size = 1024;
  bool pipeline = false;
  bool bdat = false; // RFC 3030: each message as one BDAT LAST chunk
  double timeout = 60;
  long burst = 64;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "loadgen: %s\n"
               "usage: loadgen send --port P [--conns N] [--messages M] [--size BYTES] "
               "[--pipeline] [--bdat] [--timeout S] [--host IP]\n"
               "       loadgen idle --port P --conns N [--timeout S] [--burst K] [--host IP]\n",
               why);
  std::exit(2);
}

long number(const char* flag, const char* text) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || v < 0) usage((std::string("bad number for ") + flag).c_str());
  return v;
}

Config parse(int argc, char** argv) {
  if (argc < 2) usage("missing mode");
  Config c;
  std::string mode = argv[1];
  if (mode == "idle")
    c.idle = true;
  else if (mode != "send")
    usage("mode must be send or idle");
  for (int i = 2; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--pipeline") {
      c.pipeline = true;
      continue;
    }
    if (flag == "--bdat") {
      c.bdat = true;
      continue;
    }
    if (i + 1 >= argc) usage(("missing value for " + flag).c_str());
    const char* v = argv[++i];
    if (flag == "--port")
      c.port = static_cast<int>(number("--port", v));
    else if (flag == "--host")
      c.host = v;
    else if (flag == "--conns")
      c.conns = number("--conns", v);
    else if (flag == "--messages")
      c.messages = number("--messages", v);
    else if (flag == "--size")
      c.size = static_cast<std::size_t>(number("--size", v));
    else if (flag == "--timeout")
      c.timeout = static_cast<double>(number("--timeout", v));
    else if (flag == "--burst")
      c.burst = std::max(1L, number("--burst", v));
    else
      usage(("unknown flag " + flag).c_str());
  }
  if (c.port <= 0 || c.port > 65535) usage("--port is required");
  if (c.conns < 1) usage("--conns must be at least 1");
  return c;
}

// make_message - exactly `size` bytes: a few headers, a blank line, then 76-letter lines; every
// line ends in CRLF and none starts with '.', so no dot-stuffing is needed.
std::string make_message(std::size_t size) {
  std::string m = "From: <loadgen@example.test>\r\nTo: <sink@example.test>\r\n"
                  "Subject: smtpd benchmark\r\nMessage-ID: <bench@loadgen.example.test>\r\n\r\n";
  if (size < m.size() + 2) size = m.size() + 2;
  m.reserve(size);
  const std::string_view letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  std::size_t line = 0;
  while (m.size() < size) {
    std::size_t left = size - m.size();
    if (left <= 2 || line == 76) {
      if (left == 1) { // cannot end a line in one byte: lengthen the previous line instead
        m.insert(m.size() - 2, 1, 'x');
        break;
      }
      m += "\r\n";
      line = 0;
      continue;
    }
    m += letters[(m.size() * 7 + line) % letters.size()];
    ++line;
  }
  return m;
}

// What the next reply answers; each has one expected code.
enum class Expect { greeting, ehlo, mail, rcpt, data, message, quit, noop };

int expected_code(Expect e) {
  switch (e) {
  case Expect::greeting: return 220;
  case Expect::data: return 354;
  case Expect::quit: return 221;
  default: return 250;
  }
}

const char* expect_name(Expect e) {
  switch (e) {
  case Expect::greeting: return "greeting";
  case Expect::ehlo: return "EHLO";
  case Expect::mail: return "MAIL";
  case Expect::rcpt: return "RCPT";
  case Expect::data: return "DATA";
  case Expect::message: return "end of data";
  case Expect::quit: return "QUIT";
  case Expect::noop: return "NOOP";
  }
  return "?";
}

struct Conn {
  int fd = -1;
  std::string in;             // reply bytes not parsed yet
  std::deque<Expect> expect;  // replies still to come, in order
  std::string head;           // output, part 1: the BDAT command before the message
  std::size_t head_off = 0;
  const char* big = nullptr;  // output, part 2: a view of the shared message (not copied)
  std::size_t big_left = 0;
  std::string tail;           // output, part 3: commands and the final dot
  std::size_t tail_off = 0;
  bool watching_out = false;  // EPOLLOUT registered
  bool pipelining = false;    // the EHLO reply offered PIPELINING
  bool size_ext = false;      // ... and SIZE
  bool chunking = false;      // ... and CHUNKING (RFC 3030)
  bool idle = false;          // idle mode: EHLO done, being held
  bool quitting = false;      // QUIT sent
};

class LoadGen {
public:
  explicit LoadGen(const Config& c) : cfg_(c) {
    if (!cfg_.idle) message_ = make_message(cfg_.size);
    std::string size_param = " SIZE=" + std::to_string(message_.size());
    mail_ = "MAIL FROM:<loadgen@example.test>\r\n";
    mail_size_ = "MAIL FROM:<loadgen@example.test>" + size_param + "\r\n";
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) die("epoll_create1");
    std::memset(&addr_, 0, sizeof addr_);
    addr_.sin_family = AF_INET;
    addr_.sin_port = htons(static_cast<uint16_t>(cfg_.port));
    if (inet_pton(AF_INET, cfg_.host.c_str(), &addr_.sin_addr) != 1) usage("--host must be an IPv4 address");
    conns_.resize(static_cast<std::size_t>(cfg_.conns));
  }

  int run_send() {
    start_ = Clock::now();
    deadline_ = start_ + seconds(cfg_.timeout);
    for (std::size_t i = 0; i < conns_.size(); ++i) open_conn(i);
    while (open_ > 0 && !fatal_) {
      if (Clock::now() > deadline_) {
        timed_out_ = true;
        break;
      }
      poll_once(100);
    }
    double secs = elapsed(start_);
    std::printf("{\"mode\":\"send\",\"pipeline\":%s,\"bdat\":%s,\"conns\":%ld,\"size\":%zu,\"messages\":%ld,"
                "\"ok\":%ld,\"errors\":%ld,\"seconds\":%.6f,\"msgs_per_s\":%.1f,\"mib_per_s\":%.2f,"
                "\"timed_out\":%s,\"first_error\":\"%s\"}\n",
                cfg_.pipeline ? "true" : "false", cfg_.bdat ? "true" : "false", cfg_.conns, message_.size(), cfg_.messages, ok_,
                errors_, secs, secs > 0 ? ok_ / secs : 0.0,
                secs > 0 ? ok_ * static_cast<double>(message_.size()) / secs / 1048576.0 : 0.0,
                timed_out_ ? "true" : "false", json_escape(first_error_).c_str());
    std::fflush(stdout);
    return errors_ == 0 && !timed_out_ && ok_ == cfg_.messages ? 0 : 1;
  }

  int run_idle() {
    start_ = Clock::now();
    deadline_ = start_ + seconds(cfg_.timeout);
    std::size_t next = 0;
    while (!fatal_) {
      // Keep at most `burst` handshakes in flight, so no listen backlog overflows.
      while (next < conns_.size() && static_cast<long>(next) - ready_ - failed_ < cfg_.burst)
        open_conn(next++);
      if (ready_ + failed_ >= cfg_.conns) break;
      if (Clock::now() > deadline_) {
        timed_out_ = true;
        break;
      }
      poll_once(100);
    }
    std::printf("{\"phase\":\"ready\",\"conns\":%ld,\"ready\":%ld,\"failed\":%ld,\"seconds\":%.3f,"
                "\"timed_out\":%s,\"first_error\":\"%s\"}\n",
                cfg_.conns, ready_, failed_, elapsed(start_), timed_out_ ? "true" : "false",
                json_escape(first_error_).c_str());
    std::fflush(stdout);
    // Hold the connections until told to check them.
    char line[64];
    if (std::fgets(line, sizeof line, stdin) == nullptr || std::strncmp(line, "noop", 4) != 0)
      return 1;
    auto noop_start = Clock::now();
    deadline_ = noop_start + seconds(cfg_.timeout);
    long sent = 0;
    for (auto& c : conns_) {
      if (c.fd < 0 || !c.idle) continue;
      send_text(c, "NOOP\r\n", Expect::noop);
      ++sent;
    }
    bool noop_timed_out = false;
    while (noop_ok_ + noop_bad_ < sent && !fatal_) {
      if (Clock::now() > deadline_) {
        noop_timed_out = true;
        break;
      }
      poll_once(100);
    }
    std::printf("{\"phase\":\"noop\",\"sent\":%ld,\"ok\":%ld,\"errors\":%ld,\"dropped\":%ld,"
                "\"seconds\":%.3f,\"timed_out\":%s,\"first_error\":\"%s\"}\n",
                sent, noop_ok_, noop_bad_, dropped_, elapsed(noop_start),
                noop_timed_out ? "true" : "false", json_escape(first_error_).c_str());
    std::fflush(stdout);
    return noop_ok_ == cfg_.conns && !noop_timed_out ? 0 : 1;
  }

private:
  static Clock::duration seconds(double s) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  }
  static double elapsed(Clock::time_point since) {
    return std::chrono::duration<double>(Clock::now() - since).count();
  }
  [[noreturn]] static void die(const char* what) {
    std::fprintf(stderr, "loadgen: %s: %s\n", what, std::strerror(errno));
    std::exit(1);
  }
  static std::string json_escape(const std::string& s) {
    std::string out;
    for (char ch : s) {
      if (ch == '"' || ch == '\\') out += '\\';
      if (static_cast<unsigned char>(ch) < 0x20) continue;
      out += ch;
    }
    return out;
  }

  void note_error(const std::string& what) {
    if (first_error_.empty()) first_error_ = what;
  }

  void open_conn(std::size_t i) {
    Conn& c = conns_[i];
    c = Conn{};
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) {
      note_error(std::string("socket: ") + std::strerror(errno));
      ++failed_;
      ++errors_;
      return;
    }
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c.fd, reinterpret_cast<sockaddr*>(&addr_), sizeof addr_) != 0 && errno != EINPROGRESS) {
      note_error(std::string("connect: ") + std::strerror(errno));
      ::close(c.fd);
      c.fd = -1;
      ++failed_;
      ++errors_;
      return;
    }
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = i;
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &ev) != 0) die("epoll_ctl");
    c.expect.push_back(Expect::greeting);
    ++open_;
  }

  // close_conn - done with a connection; `failed` counts it as an error (idle mode: as failed
  // or dropped).
  void close_conn(Conn& c, bool failed) {
    if (c.fd < 0) return;
    ::close(c.fd); // also removes it from the epoll set
    c.fd = -1;
    --open_;
    if (!failed) return;
    ++errors_;
    if (cfg_.idle) {
      if (c.idle) {
        ++dropped_;
        if (!c.expect.empty() && c.expect.front() == Expect::noop) ++noop_bad_;
      } else {
        ++failed_;
      }
    }
  }

  void poll_once(int timeout_ms) {
    epoll_event events[256];
    int n = epoll_wait(ep_, events, 256, timeout_ms);
    if (n < 0) {
      if (errno == EINTR) return;
      die("epoll_wait");
    }
    for (int k = 0; k < n; ++k) {
      Conn& c = conns_[events[k].data.u64];
      if (c.fd < 0) continue;
      if (events[k].events & EPOLLOUT) flush(c);
      if (c.fd >= 0 && (events[k].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
        read_replies(c);
    }
  }

  void read_replies(Conn& c) {
    char buf[65536];
    for (;;) {
      ssize_t n = ::read(c.fd, buf, sizeof buf);
      if (n > 0) {
        c.in.append(buf, static_cast<std::size_t>(n));
        if (static_cast<std::size_t>(n) < sizeof buf) break;
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      if (n < 0 && errno == EINTR) continue;
      // End of stream or an error: fine only right after our QUIT was answered.
      parse(c);
      if (c.fd < 0) return;
      bool clean = c.quitting && c.expect.empty();
      if (!clean) {
        note_error(n == 0 ? std::string("server closed the connection while waiting for ") +
                                (c.expect.empty() ? "nothing" : expect_name(c.expect.front()))
                          : std::string("read: ") + std::strerror(errno));
      }
      close_conn(c, !clean);
      return;
    }
    parse(c);
  }

  // parse - take every complete reply out of c.in and act on it.
  void parse(Conn& c) {
    std::size_t pos = 0;
    std::size_t reply_start = 0;
    while (c.fd >= 0) {
      std::size_t nl = c.in.find('\n', pos);
      if (nl == std::string::npos) break;
      std::string_view line(c.in.data() + pos, nl - pos);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      pos = nl + 1;
      if (line.size() < 3 || !std::isdigit(static_cast<unsigned char>(line[0])) ||
          !std::isdigit(static_cast<unsigned char>(line[1])) ||
          !std::isdigit(static_cast<unsigned char>(line[2]))) {
        note_error("malformed reply line: " + std::string(line.substr(0, 80)));
        close_conn(c, true);
        return;
      }
      if (!c.expect.empty() && c.expect.front() == Expect::ehlo && line.size() > 4) {
        std::string kw(line.substr(4));
        for (char& ch : kw) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
        if (kw == "PIPELINING") c.pipelining = true;
        if (kw == "CHUNKING") c.chunking = true;
        if (kw.rfind("SIZE", 0) == 0 && (kw.size() == 4 || kw[4] == ' ')) c.size_ext = true;
      }
      if (line.size() > 3 && line[3] == '-') continue; // more lines of this reply follow
      int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
      std::string_view text(c.in.data() + reply_start, pos - reply_start);
      reply_start = pos;
      on_reply(c, code, text);
    }
    if (c.fd >= 0) c.in.erase(0, reply_start);
  }

  void on_reply(Conn& c, int code, std::string_view text) {
    if (c.expect.empty()) {
      note_error("unexpected reply: " + std::string(text.substr(0, 80)));
      close_conn(c, true);
      return;
    }
    Expect e = c.expect.front();
    c.expect.pop_front();
    if (code != expected_code(e)) {
      note_error(std::string("reply to ") + expect_name(e) + ": " + std::string(text.substr(0, 120)));
      if (e == Expect::noop) ++noop_bad_;
      close_conn(c, true);
      return;
    }
    switch (e) {
    case Expect::greeting:
      send_text(c, "EHLO loadgen.example.test\r\n", Expect::ehlo);
      break;
    case Expect::ehlo:
      if (cfg_.idle) {
        c.idle = true;
        ++ready_;
      } else if (cfg_.pipeline && !c.pipelining) {
        note_error("the server does not offer PIPELINING");
        fatal_ = true;
        close_conn(c, true);
      } else if (cfg_.bdat && !c.chunking) {
        note_error("the server does not offer CHUNKING");
        fatal_ = true;
        close_conn(c, true);
      } else {
        next_transaction(c, nullptr);
      }
      break;
    case Expect::mail:
      if (!cfg_.pipeline) send_text(c, "RCPT TO:<sink@example.test>\r\n", Expect::rcpt);
      break;
    case Expect::rcpt:
      if (!cfg_.pipeline && cfg_.bdat)
        send_chunk(c, "");
      else if (!cfg_.pipeline)
        send_text(c, "DATA\r\n", Expect::data);
      break;
    case Expect::data:
      send_message(c);
      break;
    case Expect::message:
      ++ok_;
      if (!cfg_.pipeline || cfg_.bdat) next_transaction(c, nullptr);
      break;
    case Expect::quit:
      close_conn(c, false);
      break;
    case Expect::noop:
      ++noop_ok_;
      break;
    }
  }

  // next_transaction - start the next message if one is left, else say QUIT. In pipelined mode
  // the commands are appended to `prefix` (the message just sent) so they share its write.
  void next_transaction(Conn& c, std::string* prefix) {
    std::string own;
    std::string& out = prefix != nullptr ? *prefix : own;
    if (claimed_ < cfg_.messages) {
      ++claimed_;
      out += c.size_ext ? mail_size_ : mail_;
      c.expect.push_back(Expect::mail);
      if (cfg_.pipeline && cfg_.bdat) { // MAIL, RCPT and the chunk in one write
        out += "RCPT TO:<sink@example.test>\r\n";
        c.expect.push_back(Expect::rcpt);
        send_chunk(c, out);
        return;
      }
      if (cfg_.pipeline) {
        out += "RCPT TO:<sink@example.test>\r\nDATA\r\n";
        c.expect.push_back(Expect::rcpt);
        c.expect.push_back(Expect::data);
      }
    } else {
      out += "QUIT\r\n";
      c.expect.push_back(Expect::quit);
      c.quitting = true;
    }
    if (prefix == nullptr) queue(c, nullptr, 0, own);
  }

  // send_message - after 354: the message and its final dot (pipelined: plus what comes next).
  void send_message(Conn& c) {
    std::string tail = ".\r\n";
    c.expect.push_back(Expect::message);
    if (cfg_.pipeline) next_transaction(c, &tail);
    queue(c, message_.data(), message_.size(), tail);
  }

  // send_chunk - `commands`, then the whole message as one chunk: "BDAT SIZE LAST" and the
  // message, with no dot-stuffing and no final dot (RFC 3030 §2).
  void send_chunk(Conn& c, const std::string& commands) {
    c.expect.push_back(Expect::message);
    queue(c, nullptr, 0, "", commands + "BDAT " + std::to_string(message_.size()) + " LAST\r\n",
          message_.data(), message_.size());
  }

  void send_text(Conn& c, const char* text, Expect e) {
    c.expect.push_back(e);
    queue(c, nullptr, 0, text);
  }

  static bool pending(const Conn& c) {
    return c.head_off < c.head.size() || c.big_left > 0 || c.tail_off < c.tail.size();
  }

  // queue - add output (an optional view of the shared message, then `text`; or with --bdat
  // `head`, the message, nothing after) and write it.
  void queue(Conn& c, const char* big, std::size_t big_len, const std::string& text,
             const std::string& head = "", const char* head_big = nullptr,
             std::size_t head_big_len = 0) {
    if (head_big_len > 0) { // the BDAT form: head, then the message
      big = head_big;
      big_len = head_big_len;
    }
    const bool was_pending = pending(c);
    if (was_pending) { // keep the order: copy behind what is pending
      c.tail += head;
      c.tail.append(big, big_len);
      c.tail += text;
      flush(c);
      return;
    }
    c.head = head;
    c.head_off = 0;
    c.tail.clear();
    c.tail_off = 0;
    c.big = big;
    c.big_left = big_len;
    c.tail += text;
    flush(c);
  }

  // flush - write as much output as the socket takes, in one writev; wait for EPOLLOUT if some
  // is left.
  void flush(Conn& c) {
    while (pending(c)) {
      iovec iov[3];
      int n = 0;
      if (c.head_off < c.head.size())
        iov[n++] = {const_cast<char*>(c.head.data() + c.head_off), c.head.size() - c.head_off};
      if (c.big_left > 0) iov[n++] = {const_cast<char*>(c.big), c.big_left};
      if (c.tail_off < c.tail.size())
        iov[n++] = {const_cast<char*>(c.tail.data() + c.tail_off), c.tail.size() - c.tail_off};
      ssize_t w = ::writev(c.fd, iov, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        note_error(std::string("write: ") + std::strerror(errno));
        close_conn(c, true);
        return;
      }
      std::size_t done = static_cast<std::size_t>(w);
      std::size_t from_head = std::min(done, c.head.size() - c.head_off);
      c.head_off += from_head;
      done -= from_head;
      std::size_t from_big = std::min(done, c.big_left);
      c.big += from_big;
      c.big_left -= from_big;
      c.tail_off += done - from_big;
    }
    const bool left = pending(c);
    if (left != c.watching_out) {
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLRDHUP | (left ? EPOLLOUT : 0u);
      ev.data.u64 = static_cast<std::uint64_t>(&c - conns_.data());
      if (epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev) != 0) die("epoll_ctl");
      c.watching_out = left;
    }
  }

  Config cfg_;
  std::string message_;
  std::string mail_, mail_size_;
  int ep_ = -1;
  sockaddr_in addr_{};
  std::vector<Conn> conns_;
  Clock::time_point start_, deadline_;
  long open_ = 0, claimed_ = 0, ok_ = 0, errors_ = 0;
  long ready_ = 0, failed_ = 0, dropped_ = 0, noop_ok_ = 0, noop_bad_ = 0;
  bool timed_out_ = false, fatal_ = false;
  std::string first_error_;
};

} // namespace

int main(int argc, char** argv) {
  Config cfg = parse(argc, argv);
  std::signal(SIGPIPE, SIG_IGN);
  // One descriptor per connection: raise the soft limit to the hard one.
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);
  }
  LoadGen gen(cfg);
  return cfg.idle ? gen.run_idle() : gen.run_send();
}
