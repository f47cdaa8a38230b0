// client_test.cpp - smtpd::Client, SendMail and the reply parser: the parser on tables of good
// and nasty replies, split at every offset; the client against our own server (TestServer):
// every path, every refusal stage, STARTTLS with verification, AUTH, the ESMTP parameters,
// pipelining, byte-exact content; and against hostile servers written here on raw loopback
// sockets (over-long lines, endless replies, garbage, a slow drip, early closes), which the
// client must survive with a ClientIOError, never a hang. Every wait is bounded.
#include "test_client.hpp"
#ifndef SMTPD_NO_TLS
#include "tls_client.hpp"
#endif

#include <doctest/doctest.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <poll.h>
#include <sys/un.h>

using namespace test;

namespace {

using Status = smtpd::ReplyParse::Status;

// Trace - what a Tracer saw, as events: "C" + bytes read, "S" + bytes written, "F" a flush.
struct Trace {
  std::mutex mu;
  std::vector<std::string> events;

  void add(std::string event) {
    std::lock_guard<std::mutex> lock(mu);
    events.push_back(std::move(event));
  }

  // client_bytes - everything the client sent, joined.
  std::string client_bytes() {
    std::lock_guard<std::mutex> lock(mu);
    std::string all;
    for (const std::string& e : events)
      if (e[0] == 'C') all += e.substr(1);
    return all;
  }

  // flushes_between - the flushes (reply bursts written) after the client bytes holding
  // `first` and before those holding `last`; -1 when either is missing.
  int flushes_between(const std::string& first, const std::string& last) {
    std::lock_guard<std::mutex> lock(mu);
    std::string joined;
    for (const std::string& e : events)
      joined += e[0] == 'F' ? std::string("\x01") : e[0] == 'C' ? e.substr(1) : std::string();
    std::size_t a = joined.find(first), b = joined.find(last, a == std::string::npos ? 0 : a);
    if (a == std::string::npos || b == std::string::npos) return -1;
    return int(std::count(joined.begin() + long(a), joined.begin() + long(b), '\x01'));
  }
};

class RecordingTracer : public smtpd::Tracer {
public:
  explicit RecordingTracer(std::shared_ptr<Trace> trace) : trace_(std::move(trace)) {}

  void client(std::string_view bytes) override { trace_->add("C" + std::string(bytes)); }

  void server(std::string_view bytes) override { trace_->add("S" + std::string(bytes)); }

  void flush() override { trace_->add("F"); }

private:
  std::shared_ptr<Trace> trace_;
};

// traced - loopback options whose sessions are traced into `trace`.
smtpd::Options traced(std::shared_ptr<Trace> trace, smtpd::Options options = loopback_options()) {
  options.new_tracer = [trace](const smtpd::SessionInfo&) {
    return std::make_unique<RecordingTracer>(trace);
  };
  return options;
}

// no_bare_line_ends - every CR is followed by LF and every LF preceded by CR.
bool no_bare_line_ends(std::string_view bytes) {
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    if (bytes[i] == '\r' && (i + 1 >= bytes.size() || bytes[i + 1] != '\n')) return false;
    if (bytes[i] == '\n' && (i == 0 || bytes[i - 1] != '\r')) return false;
  }
  return true;
}

// body_of - a stored message without our Received header (the first field, folded lines).
std::string body_of(const std::string& data) {
  std::size_t at = 0;
  do {
    at = data.find("\r\n", at);
    if (at == std::string::npos) return data;
    at += 2;
  } while (at < data.size() && (data[at] == ' ' || data[at] == '\t'));
  return data.substr(at);
}

// quick - client options with short timeouts, for tests that expect to time out or fail.
smtpd::ClientOptions quick(std::chrono::milliseconds timeout = 300ms) {
  smtpd::ClientOptions o;
  o.helo_name = "client.test";
  o.starttls = false;
  o.connect_timeout = o.greeting_timeout = o.command_timeout = o.mail_timeout = o.rcpt_timeout =
      o.data_timeout = o.block_timeout = o.final_timeout = timeout;
  return o;
}

// plain - client options for our own server: no STARTTLS attempt, 10 s timeouts.
smtpd::ClientOptions plain() {
  return quick(10s);
}

const std::string probe = "From: a@example.org\r\nSubject: probe\r\n\r\nHello.\r\n";

// ScriptedServer - a hand-written server on loopback (TCP port 0, or a Unix socket): accepts
// one connection within 5 s and runs `script` on it (with 5 s socket timeouts), then closes.
class ScriptedServer {
public:
  using Script = std::function<void(int fd)>;

  explicit ScriptedServer(Script script, const std::string& unix_path = "")
      : unix_path_(unix_path) {
    if (unix_path.empty()) {
      listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      REQUIRE(::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
      socklen_t length = sizeof a;
      ::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &length);
      port_ = ntohs(a.sin_port);
    } else {
      listener_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_un a{};
      a.sun_family = AF_UNIX;
      std::snprintf(a.sun_path, sizeof a.sun_path, "%s", unix_path.c_str());
      ::unlink(unix_path.c_str());
      REQUIRE(::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    }
    REQUIRE(::listen(listener_, 4) == 0);
    thread_ = std::thread([this, script] {
      pollfd p{listener_, POLLIN, 0};
      if (::poll(&p, 1, 5000) != 1) return;
      int fd = ::accept(listener_, nullptr, nullptr);
      if (fd < 0) return;
      set_socket_timeout(fd, 5s);
      script(fd);
      ::close(fd);
    });
  }

  ~ScriptedServer() {
    ::shutdown(listener_, SHUT_RDWR);
    thread_.join();
    ::close(listener_);
    if (!unix_path_.empty()) ::unlink(unix_path_.c_str());
  }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

private:
  int listener_ = -1;
  uint16_t port_ = 0;
  std::string unix_path_;
  std::thread thread_;
};

// Script helpers: send text; read one line (CRLF stripped; "" on timeout or close); read until
// the end of DATA content.
void say(int fd, const std::string& text) {
  send_all(fd, text);
}

std::string hear(int fd, std::string& buffer) {
  std::string line;
  for (int i = 0; i < 1000 && !take_line(buffer, line); ++i) {
    bool eof = false, reset = false;
    if (recv_plain(fd, buffer, eof, reset) <= 0) return "";
  }
  if (line.size() >= 2) line.resize(line.size() - 2);
  return line;
}

std::string hear_data(int fd, std::string& buffer) {
  for (int i = 0; i < 10000 && buffer.find("\r\n.\r\n") == std::string::npos; ++i) {
    bool eof = false, reset = false;
    if (recv_plain(fd, buffer, eof, reset) <= 0) return "";
  }
  std::size_t end = buffer.find("\r\n.\r\n");
  if (end == std::string::npos) return "";
  std::string content = buffer.substr(0, end + 2);
  buffer.erase(0, end + 5);
  return content;
}

} // namespace

TEST_SUITE("client") {

  // ---- the reply parser ------------------------------------------------------------------------

  TEST_CASE("RFC 5321 §4.2: the reply parser reads single and multi-line replies") {
    struct Row {
      std::string bytes;
      int code;
      std::string enhanced, text;
    };

    const Row rows[] = {
        {"220 mx.test ESMTP\r\n", 220, "", "mx.test ESMTP"},
        {"250 2.1.0 Ok\r\n", 250, "2.1.0", "Ok"},
        {"250\r\n", 250, "", ""},
        {"250 \r\n", 250, "", ""},
        {"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n", 250, "",
         "mx.test\nPIPELINING\nSIZE 1000"},
        {"550-5.1.1 No such\r\n550 5.1.1 user\r\n", 550, "5.1.1", "No such\nuser"},
        {"451 4.3.0\r\n", 451, "4.3.0", ""},
        {"250 5.1.1 class differs: not an enhanced code\r\n", 250, "",
         "5.1.1 class differs: not an enhanced code"},
        {"354 End data with <CR><LF>.<CR><LF>\r\n", 354, "", "End data with <CR><LF>.<CR><LF>"},
        {"250 bare LF tolerated\n", 250, "", "bare LF tolerated"},
    };
    for (const Row& row : rows) {
      CAPTURE(row.bytes);
      smtpd::ReplyParse p = smtpd::parse_reply(row.bytes + "250 next\r\n");
      REQUIRE(p.status == Status::complete);
      CHECK(p.length == row.bytes.size());
      CHECK(p.reply.code == row.code);
      CHECK(p.reply.enhanced == row.enhanced);
      CHECK(p.reply.text == row.text);
      // Every proper prefix needs more; fed in growing pieces the resumable parser agrees.
      smtpd::ReplyParser resumed;
      for (std::size_t n = 0; n < row.bytes.size(); ++n) {
        CHECK(smtpd::parse_reply(row.bytes.substr(0, n)).status == Status::need_more);
        CHECK(resumed.parse(row.bytes.substr(0, n)).status == Status::need_more);
      }
      smtpd::ReplyParse last = resumed.parse(row.bytes);
      CHECK(last.status == Status::complete);
      CHECK(last.reply.text == row.text);
    }
  }

  TEST_CASE("RFC 5321 §4.2: malformed, over-long and endless replies are invalid, bounded") {
    const std::string bad[] = {
        "HTTP/1.1 400 Bad Request\r\n",
        "25\r\n",
        "2500 x\r\n",
        "250x\r\n",
        "150 too low\r\n",
        "650 too high\r\n",
        "250-first\r\n251 second code\r\n",
        "\r\n",
        std::string("\0\0\0\r\n", 5),
        "250 " + std::string(smtpd::max_client_reply_line_bytes, 'x') + "\r\n",
    };
    for (const std::string& bytes : bad) {
      CAPTURE(bytes.substr(0, 40));
      smtpd::ReplyParse p = smtpd::parse_reply(bytes);
      CHECK(p.status == Status::invalid);
      CHECK_FALSE(p.error.empty());
    }
    // An over-long line is refused before its end comes, so the buffer stays bounded.
    std::string endless_line = "250 " + std::string(smtpd::max_client_reply_line_bytes, 'y');
    CHECK(smtpd::parse_reply(endless_line).status == Status::invalid);
    // 1000 continuation lines are the most: the 1000th that is not last ends it.
    std::string many;
    for (std::size_t i = 0; i < smtpd::max_client_reply_lines - 1; ++i)
      many += "250-line\r\n";
    CHECK(smtpd::parse_reply(many + "250 end\r\n").status == Status::complete);
    CHECK(smtpd::parse_reply(many + "250-more\r\n").status == Status::invalid);
  }

  // ---- against our own server ----------------------------------------------------------------

  TEST_CASE("SendMail: one call delivers byte for byte to our server") {
    smtpd::TestServer server(loopback_options());
    smtpd::Reply r =
        smtpd::SendMail(server.address(), "alice@example.org", {"bob@example.net"}, probe, plain());
    CHECK(r.code == 250);
    CHECK(r.enhanced == "2.0.0");
    REQUIRE(server.wait_for(1, 5s));
    smtpd::TestServer::Message m = server.messages().at(0);
    CHECK(m.envelope.from == "alice@example.org");
    CHECK(m.envelope.to == std::vector<std::string>{"bob@example.net"});
    CHECK(m.session.helo == "client.test");
    CHECK(m.session.esmtp);
    CHECK(m.envelope.mail.size == probe.size()); // SendMail fills in SIZE (RFC 1870)
    CHECK(body_of(m.data) == probe);
  }

  TEST_CASE("RFC 5321 §2.3.8, §4.5.2: LF and CR become CRLF, dots are stuffed, no bare CR/LF") {
    auto trace = std::make_shared<Trace>();
    smtpd::TestServer server(traced(trace));
    const std::string message = "A: 1\nB: 2\r\rbody\r\n.leading dot\n..two dots\n.\n\rlast";
    const std::string expected =
        "A: 1\r\nB: 2\r\n\r\nbody\r\n.leading dot\r\n..two dots\r\n.\r\n\r\nlast\r\n";
    smtpd::SendMail(server.address(), "", {"bob@example.net"}, message, plain());
    REQUIRE(server.wait_for(1, 5s));
    CHECK(body_of(server.messages().at(0).data) == expected);
    CHECK(server.messages().at(0).envelope.from == ""); // the null reverse-path <>
    std::string wire = trace->client_bytes();
    CHECK(no_bare_line_ends(wire));
    CHECK(contains(wire, "\r\n..leading dot\r\n...two dots\r\n..\r\n\r\nlast\r\n.\r\n"));
    CHECK(contains(wire, "MAIL FROM:<> SIZE="));
  }

  TEST_CASE("A smuggled message inside the content stays content (RFC 5321 §4.1.1.4)") {
    auto trace = std::make_shared<Trace>();
    smtpd::TestServer server(traced(trace));
    const std::string smuggle = "Subject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<v@x."
                                "test>\r\nDATA\r\n\r\n.\r\nafter\r\n";
    smtpd::SendMail(server.address(), "a@example.org", {"b@example.net"}, smuggle, plain());
    REQUIRE(server.wait_for(1, 5s));
    CHECK(server.messages().size() == 1);
    CHECK(contains(server.messages().at(0).data, "MAIL FROM:<evil@x.test>"));
    CHECK(no_bare_line_ends(trace->client_bytes()));
  }

  TEST_CASE("The step-by-step Client: hello, extensions, mail, rcpt, data, verify, noop, reset") {
    smtpd::Options options = loopback_options();
    options.max_message_bytes = 123456;
    smtpd::TestServer server(options);
    smtpd::Client c(server.address(), plain());
    CHECK(c.greeting().code == 220);
    CHECK(c.greeting().text == "mx.test ESMTP smtpd");
    smtpd::Reply ehlo = c.hello();
    CHECK(ehlo.code == 250);
    CHECK(starts_with(ehlo.text, "mx.test\n"));
    CHECK(c.has_extension("pipelining"));
    CHECK(c.has_extension("CHUNKING"));
    CHECK(c.extension("SIZE") == std::optional<std::string>("123456"));
    CHECK(c.extension("PIPELINING") == std::optional<std::string>(""));
    CHECK_FALSE(c.extension("DSN"));
    CHECK_FALSE(c.tls());
    CHECK(c.noop().code == 250);
    CHECK(c.verify("bob").code == 252); // RFC 5321 §3.5.3
    CHECK(c.mail("alice@example.org").enhanced == "2.1.0");
    CHECK(c.rcpt("bob@example.net").enhanced == "2.1.5");
    CHECK(c.reset().code == 250); // the transaction is gone
    c.mail("alice@example.org");
    c.rcpt("<carol@example.net>"); // brackets are accepted too
    c.rcpt("Postmaster");          // RFC 5321 §4.1.1.3
    CHECK(c.data(probe).code == 250);
    c.mail("alice@example.org");
    c.rcpt("dave@example.net");
    CHECK(c.data("second\n").code == 250); // a second transaction on the same connection
    CHECK(c.quit().code == 221);
    REQUIRE(server.wait_for(2, 5s));
    CHECK(server.messages()[0].envelope.to ==
          std::vector<std::string>{"carol@example.net", "Postmaster"});
    CHECK(body_of(server.messages()[1].data) == "second\r\n");
  }

  TEST_CASE("RFC 5321 §3.1: a 554 greeting is a ClientError \"greeting\"") {
    smtpd::Options options = loopback_options();
    options.on_connect = [](const smtpd::SessionInfo&) -> std::optional<smtpd::Reply> {
      return smtpd::Reply{554, "5.7.1", "Go away"};
    };
    smtpd::TestServer server(options);
    try {
      smtpd::Client c(server.address(), plain());
      FAIL("the client should have thrown");
    } catch (const smtpd::ClientError& e) {
      CHECK(e.command() == "greeting");
      CHECK(e.reply().code == 554);
      CHECK(std::string(e.what()) == "greeting: 554 Go away");
    }
    CHECK_THROWS_AS(
        smtpd::SendMail(server.address(), "a@example.org", {"b@example.net"}, probe, plain()),
        smtpd::ClientError);
  }

  TEST_CASE("RFC 5321 §3.2: EHLO refused, HELO refused: ClientError \"HELO\"") {
    smtpd::Options options = loopback_options();
    options.on_helo = [](const smtpd::SessionInfo&,
                         const std::string&) -> std::optional<smtpd::Reply> {
      return smtpd::Reply{550, "5.7.1", "Not you"};
    };
    smtpd::TestServer server(options);
    smtpd::Client c(server.address(), plain());
    try {
      c.hello();
      FAIL("hello should have thrown");
    } catch (const smtpd::ClientError& e) {
      CHECK(e.command() == "HELO"); // EHLO got 550, so HELO was tried (and refused as well)
      CHECK(e.reply().code == 550);
    }
  }

  TEST_CASE("Refusals at MAIL, at one RCPT, at every RCPT, at DATA and at the final dot") {
    smtpd::Options options = loopback_options();
    options.on_mail = [](const smtpd::SessionInfo&, const std::string& from,
                         const smtpd::Params&) -> std::optional<smtpd::Reply> {
      if (from == "spammer@example.org") return smtpd::Reply{550, "5.7.1", "No"};
      return std::nullopt;
    };
    options.on_rcpt = [](const smtpd::SessionInfo&, const std::string& to,
                         const smtpd::Params&) -> std::optional<smtpd::Reply> {
      if (starts_with(to, "nobody")) return smtpd::Reply::no_such_user();
      return std::nullopt;
    };
    options.message_handler = [](const smtpd::SessionInfo&, const smtpd::Envelope& e,
                                 const std::string&) -> std::optional<smtpd::Reply> {
      if (e.from == "virus@example.org") return smtpd::Reply{554, "5.7.1", "Infected"};
      return std::nullopt;
    };
    smtpd::TestServer server(options);
    smtpd::Client c(server.address(), plain());
    c.hello();

    SUBCASE("MAIL refused: send() reports it, step-by-step throws") {
      smtpd::SendResult r = c.send("spammer@example.org", {"bob@example.net"}, probe);
      CHECK(r.mail.code == 550);
      CHECK(r.rcpt.empty());
      CHECK(r.data.empty());
      CHECK_FALSE(r.accepted(0));
      try {
        c.mail("spammer@example.org");
        FAIL("mail should have thrown");
      } catch (const smtpd::ClientError& e) {
        CHECK(e.command() == "MAIL");
        CHECK(std::string(e.what()) == "MAIL: 550 5.7.1 No");
      }
      CHECK_THROWS_AS(smtpd::SendMail(server.address(), "spammer@example.org", {"b@example.net"},
                                      probe, plain()),
                      smtpd::ClientError);
    }
    SUBCASE("one RCPT refused: the others get the message") {
      smtpd::SendResult r =
          c.send("alice@example.org", {"bob@example.net", "nobody@example.net"}, probe);
      CHECK(r.mail.code == 250);
      REQUIRE(r.rcpt.size() == 2);
      CHECK(r.rcpt[1].code == 550);
      CHECK(r.rcpt[1].enhanced == "5.1.1");
      REQUIRE(r.data.size() == 1);
      CHECK(r.data[0].code == 250);
      CHECK(r.accepted(0));
      CHECK_FALSE(r.accepted(1));
      REQUIRE(server.wait_for(1, 5s));
      CHECK(server.messages()[0].envelope.to == std::vector<std::string>{"bob@example.net"});
      CHECK_THROWS_AS(c.rcpt("nobody@example.net"), smtpd::ClientError);
    }
    SUBCASE("SendMail: one RCPT refused means no data at all") {
      try {
        smtpd::SendMail(server.address(), "alice@example.org",
                        {"bob@example.net", "nobody@example.net"}, probe, plain());
        FAIL("SendMail should have thrown");
      } catch (const smtpd::ClientError& e) {
        CHECK(e.command() == "RCPT");
        CHECK(e.reply().code == 550);
      }
      CHECK_FALSE(server.wait_for(1, 200ms));
    }
    SUBCASE("every RCPT refused: no data, and the session goes on") {
      smtpd::SendResult r = c.send("alice@example.org", {"nobody@a.test", "nobody@b.test"}, probe);
      CHECK(r.mail.code == 250);
      CHECK(r.rcpt.size() == 2);
      CHECK(r.data.empty());
      CHECK(c.noop().code == 250);
      CHECK(c.send("alice@example.org", {"bob@example.net"}, probe).accepted(0));
      REQUIRE(server.wait_for(1, 5s));
      CHECK(server.messages().size() == 1);
    }
    SUBCASE("the final verdict refused") {
      smtpd::SendResult r = c.send("virus@example.org", {"bob@example.net"}, probe);
      REQUIRE(r.data.size() == 1);
      CHECK(r.data[0].code == 554);
      CHECK_FALSE(r.accepted(0));
      c.mail("virus@example.org");
      c.rcpt("bob@example.net");
      try {
        c.data(probe);
        FAIL("data should have thrown");
      } catch (const smtpd::ClientError& e) {
        CHECK(e.command() == "DATA");
        CHECK(e.reply().text == "Infected");
      }
      CHECK(c.noop().code == 250);
    }
  }

  TEST_CASE("RFC 5321 §4.1.1.4: DATA itself refused (a stream handler throws at DATA)") {
    smtpd::Options options = loopback_options();
    options.stream_handler = [](const smtpd::SessionInfo&,
                                const smtpd::Envelope&) -> std::unique_ptr<smtpd::MessageSink> {
      throw smtpd::Reply{452, "4.3.1", "Disk full"};
    };
    smtpd::TestServer server(options);
    smtpd::Client c(server.address(), plain());
    c.hello();
    smtpd::SendResult r = c.send("a@example.org", {"b@example.net"}, probe);
    REQUIRE(r.data.size() == 1);
    CHECK(r.data[0].code == 452);
    CHECK_FALSE(r.accepted(0));
    c.mail("a@example.org");
    c.rcpt("b@example.net");
    CHECK_THROWS_AS(c.data(probe), smtpd::ClientError);
    CHECK(c.noop().code == 250);
  }

  TEST_CASE("RFC 2920 §3.1: send() pipelines MAIL, every RCPT and DATA in one burst") {
    auto trace = std::make_shared<Trace>();
    smtpd::TestServer server(traced(trace));
    smtpd::Client c(server.address(), plain());
    c.hello();
    REQUIRE(c.has_extension("PIPELINING"));
    smtpd::SendResult r =
        c.send("a@example.org", {"b@example.net", "c@example.net", "d@example.net"}, probe);
    CHECK(r.accepted(2));
    c.quit();
    // The server answered MAIL, the RCPTs and DATA with one write: no flush came between.
    CHECK(trace->flushes_between("MAIL FROM:", "DATA\r\n") == 0);
    // The content came only after the 354.
    CHECK(trace->flushes_between("DATA\r\n", "Hello.") == 1);
  }

  TEST_CASE("RFC 2920: SendMail waits for the RCPT replies before DATA (no data if one fails)") {
    auto trace = std::make_shared<Trace>();
    smtpd::TestServer server(traced(trace));
    smtpd::SendMail(server.address(), "a@example.org", {"b@example.net", "c@example.net"}, probe,
                    plain());
    CHECK(trace->flushes_between("MAIL FROM:", "RCPT TO:<c@example.net>") == 0);
    CHECK(trace->flushes_between("RCPT TO:<c@example.net>", "DATA\r\n") == 1);
  }

  TEST_CASE("RFC 3461, RFC 6531, RFC 3030: DSN, SMTPUTF8 and BINARYMIME arrive in the Envelope") {
    smtpd::Options options = loopback_options();
    options.dsn = true;
    options.binarymime = true;
    smtpd::TestServer server(options);
    smtpd::Client c(server.address(), plain());
    c.hello();
    smtpd::MailOptions mail;
    mail.ret = "hdrs";
    mail.envid = "id+1=x y";
    mail.smtputf8 = true;
    mail.binarymime = true;
    smtpd::RcptOptions rcpt;
    rcpt.notify = {"success", "FAILURE"};
    rcpt.orcpt = "Bob+list@example.net";
    const char raw[] = "\x00\x01\r\n.\r\nbare\nLF and bare\rCR\xff";
    const std::string binary(raw, sizeof raw - 1);
    smtpd::SendResult r =
        c.send("alice@example.org", {"bob@example.net", "jöran@example.net"}, binary, mail, {rcpt});
    CHECK(r.accepted(0));
    CHECK(r.accepted(1));
    REQUIRE(server.wait_for(1, 5s));
    smtpd::TestServer::Message m = server.messages()[0];
    CHECK(m.envelope.mail.ret == "HDRS");
    CHECK(m.envelope.mail.envid == "id+1=x y"); // xtext there and back
    CHECK(m.envelope.smtputf8);
    CHECK(m.envelope.mail.binarymime);
    CHECK(m.envelope.chunked); // BINARYMIME travels by BDAT
    REQUIRE(m.envelope.rcpt.size() == 2);
    CHECK(m.envelope.rcpt[0].notify == std::vector<std::string>{"SUCCESS", "FAILURE"});
    CHECK(m.envelope.rcpt[0].orcpt_type == "rfc822");
    CHECK(m.envelope.rcpt[0].orcpt == "Bob+list@example.net");
    CHECK(m.envelope.rcpt[1].notify.empty());
    CHECK(body_of(m.data) == binary); // octets, exactly: no CRLF rewriting in BINARYMIME
  }

  TEST_CASE("RFC 3030 §2: prefer_chunking sends BDAT in chunks, content in CRLF") {
    auto trace = std::make_shared<Trace>();
    smtpd::TestServer server(traced(trace));
    smtpd::ClientOptions o = plain();
    o.prefer_chunking = true;
    o.bdat_chunk_bytes = 10;
    const std::string message = "line one\nline two\r\n.dot\n";
    smtpd::Reply r =
        smtpd::SendMail(server.address(), "a@example.org", {"b@example.net"}, message, o);
    CHECK(r.code == 250);
    REQUIRE(server.wait_for(1, 5s));
    CHECK(server.messages()[0].envelope.chunked);
    CHECK(body_of(server.messages()[0].data) == "line one\r\nline two\r\n.dot\r\n");
    std::string wire = trace->client_bytes();
    CHECK(contains(wire, "BDAT 10\r\n"));
    CHECK(contains(wire, "BDAT 6 LAST\r\n"));
    CHECK(no_bare_line_ends(wire));
  }

  TEST_CASE("What the server did not advertise is refused before anything is sent") {
    auto trace = std::make_shared<Trace>();
    smtpd::Options options = traced(trace);
    options.max_message_bytes = 1000;
    options.smtputf8 = false;
    smtpd::TestServer server(options);
    smtpd::Client c(server.address(), plain());
    c.hello();
    auto refused = [&](const smtpd::MailOptions& m, int code) {
      try {
        c.mail("a@example.org", m);
        FAIL("mail should have thrown");
      } catch (const smtpd::ClientError& e) {
        CHECK(e.reply().code == code);
        CHECK(contains(e.reply().text, "(not sent)"));
      }
    };
    smtpd::MailOptions dsn;
    dsn.ret = "FULL"; // RFC 3461: DSN is off here
    refused(dsn, 555);
    smtpd::MailOptions utf8;
    utf8.smtputf8 = true;
    refused(utf8, 553);
    smtpd::MailOptions binary;
    binary.binarymime = true;
    refused(binary, 554);
    smtpd::MailOptions big;
    big.size = 1001; // RFC 1870 §6: over the advertised SIZE
    refused(big, 552);
    smtpd::MailOptions requiretls;
    requiretls.requiretls = true; // RFC 8689: only inside TLS
    refused(requiretls, 550);
    smtpd::MailOptions auth;
    auth.auth = "<>";
    refused(auth, 555);
    smtpd::RcptOptions notify;
    notify.notify = {"NEVER"};
    CHECK_THROWS_AS(c.rcpt("b@example.net", notify), smtpd::ClientError);
    smtpd::SendResult r = c.send("a@example.org", {"b@example.net"}, probe, dsn);
    CHECK(r.mail.code == 555);
    CHECK(r.rcpt.empty());
    CHECK_THROWS_AS(c.auth("u", "p"), smtpd::ClientError); // AUTH is not offered
    CHECK_THROWS_AS(c.starttls(), smtpd::ClientError);     // nor STARTTLS
    c.quit();
    std::string wire = trace->client_bytes();
    CHECK_FALSE(contains(wire, "MAIL"));
    CHECK_FALSE(contains(wire, "RCPT"));
    CHECK_FALSE(contains(wire, "AUTH"));
    CHECK_FALSE(contains(wire, "STARTTLS"));
    smtpd::ClientOptions o = plain();
    o.require_tls = true;
    try {
      smtpd::SendMail(server.address(), "a@example.org", {"b@example.net"}, probe, o);
      FAIL("SendMail should have thrown");
    } catch (const smtpd::ClientError& e) {
      CHECK(e.command() == "STARTTLS");
      CHECK(e.reply().code == 530);
    }
  }

  TEST_CASE("Arguments that would inject commands are refused (std::invalid_argument)") {
    auto trace = std::make_shared<Trace>();
    smtpd::TestServer server(traced(trace));
    smtpd::Client c(server.address(), plain());
    c.hello();
    CHECK_THROWS_AS(c.mail("a@example.org>\r\nRCPT TO:<x@y.test"), std::invalid_argument);
    CHECK_THROWS_AS(c.mail("not an address"), std::invalid_argument);
    CHECK_THROWS_AS(c.rcpt("b@example.net\n"), std::invalid_argument);
    CHECK_THROWS_AS(c.rcpt(""), std::invalid_argument);
    CHECK_THROWS_AS(c.verify("x\r\nQUIT"), std::invalid_argument);
    CHECK_THROWS_AS(c.send("a@example.org", {"b@x.test\r\nDATA"}, probe), std::invalid_argument);
    smtpd::ClientOptions o = plain();
    o.helo_name = "a\r\nMAIL FROM:<x@y.test>";
    CHECK_THROWS_AS(smtpd::Client(server.address(), o), std::invalid_argument);
    o = plain();
    o.command_timeout = 0ms;
    CHECK_THROWS_AS(smtpd::Client(server.address(), o), std::invalid_argument);
    CHECK_THROWS_AS(smtpd::Client("no-port", plain()), std::invalid_argument);
    c.quit();
    CHECK_FALSE(contains(trace->client_bytes(), "MAIL"));
  }

  TEST_CASE("RFC 4954: AUTH PLAIN, LOGIN and CRAM-MD5 against our server") {
    smtpd::Options options = loopback_options();
    options.auth_insecure = true;
    options.auth_failure_delay = 1ms;
    options.on_auth = [](const smtpd::SessionInfo&, const std::string&, const std::string& user,
                         const std::string& password, const std::string&) {
      return user == "alice" && password == "wonder land";
    };
    options.auth_secret = [](const smtpd::SessionInfo&,
                             const std::string& user) -> std::optional<std::string> {
      if (user == "alice") return std::string("wonder land");
      return std::nullopt;
    };
    smtpd::TestServer server(options);
    for (const char* mechanism : {"PLAIN", "LOGIN", "CRAM-MD5", ""}) {
      CAPTURE(mechanism);
      smtpd::Client c(server.address(), plain());
      c.hello();
      smtpd::Reply r = c.auth("alice", "wonder land", mechanism);
      CHECK(r.code == 235);
      smtpd::MailOptions m;
      m.auth = "alice@example.org"; // RFC 4954 §5, trusted now that the session authenticated
      CHECK(c.send("alice@example.org", {"b@example.net"}, probe, m).accepted(0));
    }
    REQUIRE(server.wait_for(4, 5s));
    for (const smtpd::TestServer::Message& m : server.messages()) {
      CHECK(m.session.auth_user == "alice");
      CHECK(m.envelope.mail.auth == "alice@example.org");
    }
    smtpd::Client c(server.address(), plain());
    c.hello();
    try {
      c.auth("alice", "wrong", "PLAIN");
      FAIL("auth should have thrown");
    } catch (const smtpd::ClientError& e) {
      CHECK(e.command() == "AUTH");
      CHECK(e.reply().code == 535);
    }
    CHECK_THROWS_AS(c.auth("alice", "wrong", "CRAM-MD5"), smtpd::ClientError);
    CHECK_THROWS_AS(c.auth("alice", "wrong", "LOGIN"), smtpd::ClientError);
    CHECK_THROWS_AS(c.auth("alice", "x", "SCRAM-SHA-1"), smtpd::ClientError); // not offered
    smtpd::ClientOptions o = plain();
    o.username = "alice";
    o.password = "wonder land";
    smtpd::SendMail(server.address(), "alice@example.org", {"b@example.net"}, probe, o);
    REQUIRE(server.wait_for(5, 5s));
    CHECK(server.messages()[4].session.auth_user == "alice");
  }

  TEST_CASE("Unix-domain sockets: addr \"unix:/path\"") {
    char name[] = "/tmp/smtpd-client-XXXXXX";
    REQUIRE(::mkdtemp(name) != nullptr);
    std::string dir = name;
    std::string path = dir + "/lmtp.sock";
    { // the server goes (and unlinks its socket) before the directory is removed
      ScriptedServer server(
          [](int fd) {
            std::string in;
            say(fd, "220 unix.test ESMTP\r\n");
            if (hear(fd, in) != "EHLO client.test") return;
            say(fd, "250 unix.test\r\n");
            if (hear(fd, in) == "QUIT") say(fd, "221 Bye\r\n");
          },
          path);
      smtpd::Client c("unix:" + path, plain());
      CHECK(c.greeting().text == "unix.test ESMTP");
      CHECK(c.hello().code == 250);
      CHECK(c.quit().code == 221);
    }
    CHECK_THROWS_AS(smtpd::Client("unix:" + dir + "/none.sock", plain()), smtpd::ClientIOError);
    CHECK(::rmdir(dir.c_str()) == 0);
  }

  TEST_CASE("RFC 2033 §4.2: LMTP gives one reply per accepted recipient, in order") {
    ScriptedServer server([](int fd) {
      std::string in;
      say(fd, "220 lmtp.test LMTP\r\n");
      if (hear(fd, in) != "LHLO client.test") return;
      say(fd, "250-lmtp.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n");
      for (int round = 0; round < 2; ++round) {
        if (!starts_with(hear(fd, in), "MAIL FROM:<a@example.org>")) return;
        say(fd, "250 2.1.0 Ok\r\n");
        for (const char* to : {"<x@t.test>", "<nobody@t.test>", "<y@t.test>", "<full@t.test>"}) {
          std::string line = hear(fd, in);
          if (!contains(line, to)) return;
          say(fd, contains(line, "nobody") ? "550 5.1.1 No such user\r\n" : "250 2.1.5 Ok\r\n");
        }
        if (hear(fd, in) != "DATA") return;
        say(fd, "354 Go\r\n");
        if (hear_data(fd, in) != "Hi\r\n") return;
        say(fd, "250 2.0.0 x delivered\r\n250 2.0.0 y delivered\r\n452 4.2.2 Mailbox full\r\n");
        if (round == 1) break;
        if (hear(fd, in) != "RSET") return;
        say(fd, "250 2.0.0 Ok\r\n");
      }
    });
    smtpd::ClientOptions o = plain();
    o.lmtp = true;
    smtpd::Client c(server.address(), o);
    c.hello();
    std::vector<std::string> to = {"x@t.test", "nobody@t.test", "y@t.test", "full@t.test"};
    smtpd::SendResult r = c.send("a@example.org", to, "Hi\n");
    REQUIRE(r.rcpt.size() == 4);
    REQUIRE(r.data.size() == 3);
    CHECK(r.accepted(0));
    CHECK_FALSE(r.accepted(1));
    CHECK(r.accepted(2));
    CHECK_FALSE(r.accepted(3));
    CHECK(r.data[2].code == 452);
    CHECK(c.reset().code == 250);
    c.mail("a@example.org");
    for (const std::string& address : to) {
      try {
        c.rcpt(address);
      } catch (const smtpd::ClientError&) { CHECK(address == "nobody@t.test"); }
    }
    CHECK_THROWS_AS(c.data("Hi\n"), std::logic_error); // LMTP: lmtp_data
    std::vector<smtpd::Reply> replies = c.lmtp_data("Hi\n");
    REQUIRE(replies.size() == 3);
    CHECK(replies[0].text == "x delivered");
    CHECK(replies[2].enhanced == "4.2.2");
  }

  TEST_CASE("RFC 5321 §3.2: HELO after a 502 to EHLO; no extension is then used") {
    ScriptedServer server([](int fd) {
      std::string in;
      say(fd, "220 old.test SMTP\r\n");
      if (hear(fd, in) != "EHLO client.test") return;
      say(fd, "502 5.5.1 What?\r\n");
      if (hear(fd, in) != "HELO client.test") return;
      say(fd, "250 old.test\r\n");
      // Lock-step: each command alone (no PIPELINING was offered).
      for (const char* expected :
           {"MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA"}) {
        if (hear(fd, in) != expected || !in.empty()) return;
        say(fd, std::string(expected) == "DATA" ? "354 Go\r\n" : "250 Ok\r\n");
      }
      if (hear_data(fd, in) != "x\r\n") return;
      say(fd, "250 Ok\r\n");
      if (hear(fd, in) == "QUIT") say(fd, "221 Bye\r\n");
    });
    smtpd::Reply r =
        smtpd::SendMail(server.address(), "a@example.org", {"b@example.net"}, "x", plain());
    CHECK(r.code == 250);
  }

  TEST_CASE("RFC 5321 §3.8: a 421 inside a pipelined group ends send() without an exception") {
    ScriptedServer server([](int fd) {
      std::string in;
      say(fd, "220 busy.test ESMTP\r\n");
      if (hear(fd, in) != "EHLO client.test") return;
      say(fd, "250-busy.test\r\n250 PIPELINING\r\n");
      hear(fd, in); // MAIL, then the first RCPT: the server gives up there
      hear(fd, in);
      say(fd, "250 2.1.0 Ok\r\n421 4.3.2 Shutting down\r\n");
    });
    smtpd::Client c(server.address(), plain());
    c.hello();
    smtpd::SendResult r = c.send("a@example.org", {"b@example.net", "c@example.net"}, probe);
    CHECK(r.mail.code == 250);
    REQUIRE(r.rcpt.size() == 1);
    CHECK(r.rcpt[0].code == 421);
    CHECK(r.data.empty());
    CHECK_THROWS_AS(c.noop(), smtpd::ClientIOError); // closed after the 421
  }

  TEST_CASE("A server that drops the connection mid-DATA: ClientIOError") {
    ScriptedServer server([](int fd) {
      std::string in;
      say(fd, "220 drop.test ESMTP\r\n");
      hear(fd, in);
      say(fd, "250 drop.test\r\n");
      for (int i = 0; i < 3; ++i) {
        hear(fd, in);
        say(fd, i == 2 ? "354 Go\r\n" : "250 Ok\r\n");
      }
      bool eof = false, reset = false;
      recv_plain(fd, in, eof, reset); // some of the content, then gone
      linger_zero(fd);
    });
    std::string big(2 * 1024 * 1024, 'x');
    for (std::size_t i = 70; i < big.size(); i += 72)
      big[i] = '\n';
    try {
      smtpd::SendMail(server.address(), "a@example.org", {"b@example.net"}, big, quick(5s));
      FAIL("SendMail should have thrown");
    } catch (const smtpd::ClientIOError& e) { CHECK_FALSE(e.timed_out()); }
  }

  // ---- hostile servers ------------------------------------------------------------------------

  TEST_CASE("Hostile: an over-long reply line is a ClientIOError, not a growing buffer") {
    ScriptedServer server([](int fd) { say(fd, "220 " + std::string(100000, 'A') + "\r\n"); });
    try {
      smtpd::Client c(server.address(), quick(5s));
      FAIL("the client should have thrown");
    } catch (const smtpd::ClientIOError& e) {
      CHECK(contains(e.what(), "longer than"));
      CHECK_FALSE(e.timed_out());
    }
  }

  TEST_CASE("Hostile: a never-ending multi-line reply stops at 1000 lines") {
    ScriptedServer server([](int fd) {
      std::string in;
      say(fd, "220 endless.test\r\n");
      hear(fd, in);
      for (int i = 0; i < 5000; ++i)
        if (!send_all(fd, "250-and more\r\n")) return;
    });
    smtpd::Client c(server.address(), quick(5s));
    try {
      c.hello();
      FAIL("hello should have thrown");
    } catch (const smtpd::ClientIOError& e) { CHECK(contains(e.what(), "1000 lines")); }
    CHECK_THROWS_AS(c.noop(), smtpd::ClientIOError); // the connection is closed now
  }

  TEST_CASE("Hostile: garbage instead of a reply") {
    for (const char* garbage : {"HTTP/1.1 400 Bad Request\r\n\r\n", "\x16\x03\x01\x02\x05\r\n",
                                "220-ok\r\n554 changed its mind\r\n"}) {
      CAPTURE(garbage);
      ScriptedServer server([garbage](int fd) { say(fd, garbage); });
      CHECK_THROWS_AS(smtpd::Client(server.address(), quick(5s)), smtpd::ClientIOError);
    }
  }

  TEST_CASE("Hostile: a slow drip (a byte per 100 ms) hits the reply's deadline") {
    std::atomic<bool> stop{false};
    ScriptedServer server([&stop](int fd) {
      std::string greeting = "220 slow.test " + std::string(100, 'z') + "\r\n";
      for (std::size_t i = 0; i < greeting.size() && !stop; ++i) {
        if (::send(fd, &greeting[i], 1, MSG_NOSIGNAL) != 1) return;
        std::this_thread::sleep_for(100ms);
      }
    });
    try {
      smtpd::Client c(server.address(), quick(300ms));
      FAIL("the client should have timed out");
    } catch (const smtpd::ClientIOError& e) { CHECK(e.timed_out()); }
    stop = true;
  }

  TEST_CASE("Hostile: the server closes at once, or after the greeting, or never answers") {
    {
      ScriptedServer server([](int) {});
      CHECK_THROWS_AS(smtpd::Client(server.address(), quick(5s)), smtpd::ClientIOError);
    }
    {
      ScriptedServer server([](int fd) {
        std::string in;
        say(fd, "220 short.test\r\n");
        hear(fd, in);
      });
      smtpd::Client c(server.address(), quick(5s));
      try {
        c.hello();
        FAIL("hello should have thrown");
      } catch (const smtpd::ClientIOError& e) { CHECK(contains(e.what(), "closed")); }
    }
    {
      ScriptedServer server([](int fd) {
        std::string in;
        say(fd, "220 mute.test\r\n");
        hear(fd, in); // and says nothing until the client gives up
        hear(fd, in);
      });
      smtpd::Client c(server.address(), quick(300ms));
      try {
        c.hello();
        FAIL("hello should have timed out");
      } catch (const smtpd::ClientIOError& e) { CHECK(e.timed_out()); }
    }
  }

  TEST_CASE("Connecting to a port where nothing listens is a ClientIOError") {
    uint16_t port;
    {
      smtpd::TestServer gone(loopback_options());
      port = gone.port();
    }
    CHECK_THROWS_AS(smtpd::Client("127.0.0.1:" + std::to_string(port), quick(5s)),
                    smtpd::ClientIOError);
    CHECK_THROWS_AS(smtpd::Client("no-such-host.invalid:25", quick(5s)), smtpd::ClientIOError);
  }

  TEST_CASE("IPv6: addr \"[::1]:port\"") {
    smtpd::Options options = loopback_options();
    options.addr = "[::1]:0";
    std::unique_ptr<smtpd::TestServer> server;
    try {
      server = std::make_unique<smtpd::TestServer>(options);
    } catch (const std::exception& e) {
      MESSAGE("no IPv6 loopback here: " << e.what());
      return;
    }
    smtpd::Reply r = smtpd::SendMail("[::1]:" + std::to_string(server->port()), "a@example.org",
                                     {"b@example.net"}, probe, plain());
    CHECK(r.code == 250);
    REQUIRE(server->wait_for(1, 5s));
    CHECK(server->messages()[0].session.peer.ip == "::1");
  }

#ifndef SMTPD_NO_TLS

  TEST_CASE("RFC 3207: STARTTLS verified with the test CA; wrong name or unknown CA fail") {
    const Certs& certs = test::certs();
    REQUIRE_MESSAGE(certs.ok(), certs.error);
    auto trace = std::make_shared<Trace>();
    smtpd::Options options = traced(trace);
    options.tls_cert_file = certs.server_cert;
    options.tls_key_file = certs.server_key;
    options.requiretls = true;
    smtpd::TestServer server(options);
    smtpd::ClientOptions o = plain();
    o.tls_ca_file = certs.ca;

    SUBCASE("by IP (the certificate's IP SAN) and by name (SNI and the DNS SAN)") {
      for (const char* name : {"", "localhost"}) {
        CAPTURE(name);
        o.tls_server_name = name;
        smtpd::Client c(server.address(), o);
        c.hello();
        CHECK(c.has_extension("STARTTLS"));
        CHECK_FALSE(c.has_extension("REQUIRETLS"));
        smtpd::Reply again = c.starttls();
        CHECK(again.code == 250);
        CHECK(c.tls());
        CHECK_FALSE(c.has_extension("STARTTLS")); // RFC 3207 §4.2: the EHLO after the handshake
        CHECK(c.has_extension("REQUIRETLS"));     // offered inside TLS only (RFC 8689)
        smtpd::MailOptions m;
        m.requiretls = true;
        CHECK(c.send("a@example.org", {"b@example.net"}, probe, m).accepted(0));
        CHECK(c.quit().code == 221);
      }
      REQUIRE(server.wait_for(2, 5s));
      CHECK(server.messages()[0].session.tls);
      CHECK(server.messages()[0].envelope.mail.requiretls);
    }
    SUBCASE("SendMail does STARTTLS when offered") {
      smtpd::SendMail(server.address(), "a@example.org", {"b@example.net"}, probe, [&] {
        smtpd::ClientOptions s = o;
        s.starttls = true;
        return s;
      }());
      REQUIRE(server.wait_for(1, 5s));
      CHECK(server.messages()[0].session.tls);
    }
    SUBCASE("a wrong name fails the handshake") {
      o.tls_server_name = "wrong.example";
      smtpd::Client c(server.address(), o);
      c.hello();
      try {
        c.starttls();
        FAIL("starttls should have thrown");
      } catch (const smtpd::ClientIOError& e) {
        CHECK(contains(e.what(), "certificate verification failed"));
      }
    }
    SUBCASE("an unknown CA fails the handshake; with verification off it passes") {
      o.tls_ca_file = certs.rogue_cert;
      smtpd::Client c(server.address(), o);
      c.hello();
      CHECK_THROWS_AS(c.starttls(), smtpd::ClientIOError);
      o.tls_ca_file = "";
      smtpd::Client system_store(server.address(), o); // the system's CAs do not know it either
      system_store.hello();
      CHECK_THROWS_AS(system_store.starttls(), smtpd::ClientIOError);
      o.tls_verify = false;
      smtpd::Client unverified(server.address(), o);
      unverified.hello();
      unverified.starttls();
      CHECK(unverified.tls());
    }
  }

  TEST_CASE("RFC 3207 §4.2: what the server sent after its 220 is dropped, not read in TLS") {
    const Certs& certs = test::certs();
    REQUIRE_MESSAGE(certs.ok(), certs.error);
    ScriptedServer server([&certs](int fd) {
      std::string in;
      say(fd, "220 inject.test ESMTP\r\n");
      if (hear(fd, in) != "EHLO client.test") return;
      say(fd, "250-inject.test\r\n250 STARTTLS\r\n");
      if (hear(fd, in) != "STARTTLS") return;
      // A man in the middle's addition: a fake EHLO reply, in the clear, after the 220.
      say(fd, "220 Go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n");
      SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
      SSL_CTX_use_certificate_chain_file(ctx, certs.server_cert.c_str());
      SSL_CTX_use_PrivateKey_file(ctx, certs.server_key.c_str(), SSL_FILETYPE_PEM);
      SSL* ssl = SSL_new(ctx);
      SSL_set_fd(ssl, fd);
      if (SSL_accept(ssl) == 1) {
        std::string got;
        char buf[512];
        for (int i = 0; i < 100 && got.find("\r\n") == std::string::npos; ++i) {
          int n = SSL_read(ssl, buf, sizeof buf);
          if (n <= 0) break;
          got.append(buf, std::size_t(n));
        }
        const std::string reply = "250-inside.test\r\n250 SIZE 1000\r\n";
        if (got == "EHLO client.test\r\n") SSL_write(ssl, reply.data(), int(reply.size()));
        SSL_read(ssl, buf, sizeof buf); // until the client goes
      }
      SSL_free(ssl);
      SSL_CTX_free(ctx);
    });
    smtpd::ClientOptions o = plain();
    o.tls_ca_file = certs.ca;
    smtpd::Client c(server.address(), o);
    c.hello();
    smtpd::Reply again = c.starttls();
    CHECK(again.text == "inside.test\nSIZE 1000");
    CHECK_FALSE(c.has_extension("AUTH"));
    CHECK(c.extension("SIZE") == std::optional<std::string>("1000"));
  }

  TEST_CASE("RFC 8314: implicit TLS, and a greeting that comes inside it") {
    const Certs& certs = test::certs();
    REQUIRE_MESSAGE(certs.ok(), certs.error);
    smtpd::Options options = loopback_options();
    options.tls_cert_file = certs.server_cert;
    options.tls_key_file = certs.server_key;
    options.tls_implicit = true;
    smtpd::TestServer server(options);
    smtpd::ClientOptions o = plain();
    o.implicit_tls = true;
    o.tls_ca_file = certs.ca;
    o.tls_min_version = "TLSv1.3";
    smtpd::Reply r =
        smtpd::SendMail(server.address(), "a@example.org", {"b@example.net"}, probe, o);
    CHECK(r.code == 250);
    REQUIRE(server.wait_for(1, 5s));
    CHECK(server.messages()[0].session.tls_version == "TLSv1.3");
    o.implicit_tls = false; // a plain client against a TLS listener: no greeting, a timeout
    o.greeting_timeout = 300ms;
    CHECK_THROWS_AS(smtpd::Client(server.address(), o), smtpd::ClientIOError);
  }

#else

  TEST_CASE("SMTPD_NO_TLS: TLS asked of the client is a ClientIOError") {
    smtpd::Options options = loopback_options();
    smtpd::TestServer server(options);
    smtpd::ClientOptions o = plain();
    o.implicit_tls = true;
    CHECK_THROWS_AS(smtpd::Client(server.address(), o), smtpd::ClientIOError);
  }

#endif
}
