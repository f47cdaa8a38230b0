// session_test.cpp - the per-session API (Options::new_session and smtpd::Session), driven
// through the socket-free Protocol: every method and its arguments, every way a session ends,
// exceptions from each method, the command filter, AUTH through the object, streaming, the
// session id and local address, the greylisting example of the README, and the options that
// came with it (max_command_line_bytes, smtputf8).
#include "../smtpd.hpp"
#include "protocol_helpers.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

using namespace std::string_literals;

namespace {

using test::printable;

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Calls - what a RecordingSession saw, one line per call, shared with the test.
using Calls = std::vector<std::string>;

// RecordingSession - a Session that writes down every call, and answers as told.
class RecordingSession : public smtpd::Session {
public:
  explicit RecordingSession(Calls& calls) : calls_(calls) { calls_.push_back("created"); }

  ~RecordingSession() override { calls_.push_back("destroyed"); }

  std::optional<smtpd::Reply> command(const smtpd::SessionInfo&, std::string_view line) override {
    calls_.push_back("command " + std::string(line));
    return std::nullopt;
  }

  std::optional<smtpd::Reply> hello(const smtpd::SessionInfo&, const std::string& name) override {
    calls_.push_back("hello " + name);
    return std::nullopt;
  }

  std::optional<smtpd::Reply> mail(const smtpd::SessionInfo& s, const std::string& from,
                                   const smtpd::MailOptions& m) override {
    calls_.push_back("mail " + from + " size=" + std::to_string(m.size) +
                     (m.body_8bit ? " 8bit" : "") + (m.smtputf8 ? " utf8" : "") +
                     " helo=" + s.helo);
    return std::nullopt;
  }

  std::optional<smtpd::Reply> rcpt(const smtpd::SessionInfo&, const smtpd::Envelope& e,
                                   const std::string& to, const smtpd::RcptOptions&) override {
    calls_.push_back("rcpt " + to + " from=" + e.from + " so_far=" + std::to_string(e.to.size()));
    if (to.rfind("nobody@", 0) == 0) return smtpd::Reply{550, "5.1.1", "No such user"};
    return std::nullopt;
  }

  std::unique_ptr<smtpd::MessageSink> data(const smtpd::SessionInfo&,
                                           const smtpd::Envelope& e) override {
    calls_.push_back("data to=" + std::to_string(e.to.size()));
    return nullptr;
  }

  std::optional<smtpd::Reply> message(const smtpd::SessionInfo&, const smtpd::Envelope&,
                                      const std::string& data) override {
    std::size_t body = data.find("\r\n\r\n");
    calls_.push_back("message " + printable(data.substr(body == std::string::npos ? 0 : body)));
    return std::nullopt;
  }

  void reset(const smtpd::SessionInfo&) override { calls_.push_back("reset"); }

  void close(const smtpd::SessionInfo&, smtpd::SessionEnd why) override {
    calls_.push_back("close " + name(why));
  }

  static std::string name(smtpd::SessionEnd why) {
    switch (why) {
    case smtpd::SessionEnd::quit: return "quit";
    case smtpd::SessionEnd::timeout: return "timeout";
    case smtpd::SessionEnd::client_gone: return "client_gone";
    case smtpd::SessionEnd::shutdown: return "shutdown";
    case smtpd::SessionEnd::refused: return "refused";
    }
    return "?";
  }

private:
  Calls& calls_;
};

// Driven - Options whose new_session makes `Make`, and a Protocol using them; the greeting is
// kept apart.
struct Driven {
  smtpd::Options options;
  std::unique_ptr<smtpd::Protocol> protocol;
  std::string greeting;

  explicit Driven(smtpd::SessionFactory factory, smtpd::Options o = {}) : options(std::move(o)) {
    options.hostname = "mx.test";
    options.new_session = std::move(factory);
    protocol = std::make_unique<smtpd::Protocol>(options, test::client_info());
    greeting = protocol->take_output();
  }

  std::string send(std::string_view bytes) {
    protocol->feed(bytes);
    return protocol->take_output();
  }
};

// recording - a factory of RecordingSessions writing into `calls`.
smtpd::SessionFactory recording(Calls& calls) {
  return [&calls](const smtpd::SessionInfo&) { return std::make_unique<RecordingSession>(calls); };
}

const std::string transaction =
    "EHLO c.test\r\nMAIL FROM:<a@b.test> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<c@d.test>\r\n";

} // namespace

TEST_SUITE("session") {

  TEST_CASE("Session: every method, with its arguments, in the order of the dialogue") {
    Calls calls;
    {
      Driven d(recording(calls));
      CHECK(d.greeting == "220 mx.test ESMTP smtpd\r\n");
      CHECK(calls == Calls{"created"}); // made before the greeting
      std::string replies =
          d.send(transaction + "RCPT TO:<nobody@d.test>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n"
                               "RSET\r\nQUIT\r\n");
      CHECK(test::mask_ids(replies).find("550 5.1.1 No such user\r\n354 ") != std::string::npos);
      CHECK(d.protocol->should_close());
      CHECK(calls.back() == "close quit"); // told at once, destroyed with the Protocol
    }
    CHECK(calls == Calls{"created", "command EHLO c.test", "hello c.test", "reset",
                         "command MAIL FROM:<a@b.test> SIZE=100 BODY=8BITMIME",
                         "mail a@b.test size=100 8bit helo=c.test", "command RCPT TO:<c@d.test>",
                         "rcpt c@d.test from=a@b.test so_far=0", "command RCPT TO:<nobody@d.test>",
                         "rcpt nobody@d.test from=a@b.test so_far=1", "command DATA", "data to=1",
                         "message \\r\\n\\r\\nhi\\r\\n", "reset", "command RSET", "reset",
                         "command QUIT", "close quit", "destroyed"});
  }

  TEST_CASE("Session: close() says how the session ended, once, and the object dies after it") {
    struct Ending {
      const char* name;
      std::function<void(smtpd::Protocol&)> end;
      std::string why;
    };

    const std::vector<Ending> endings = {
        {"QUIT", [](smtpd::Protocol& p) { p.feed("QUIT\r\n"); }, "close quit"},
        {"timeout", [](smtpd::Protocol& p) { p.timeout(); }, "close timeout"},
        {"shutdown", [](smtpd::Protocol& p) { p.shutting_down(); }, "close shutdown"},
        {"disconnect mid-DATA",
         [](smtpd::Protocol& p) {
           p.feed("DATA\r\npart of a mess");
           p.disconnected();
         },
         "close client_gone"},
        {"Protocol destroyed", [](smtpd::Protocol&) {}, "close client_gone"},
        {"HTTP verb", [](smtpd::Protocol& p) { p.feed("GET / HTTP/1.1\r\n"); }, "close refused"},
        {"error limit",
         [](smtpd::Protocol& p) {
           for (int i = 0; i < 30; ++i)
             p.feed("FOO\r\n");
         },
         "close refused"},
    };
    for (const Ending& e : endings) {
      CAPTURE(e.name);
      Calls calls;
      {
        Driven d(recording(calls));
        d.send(transaction);
        e.end(*d.protocol);
        d.protocol->disconnected(); // a second ending changes nothing
      }
      REQUIRE(calls.size() >= 3);
      CHECK(calls[calls.size() - 2] == e.why);
      CHECK(calls.back() == "destroyed");
      CHECK(std::count_if(calls.begin(), calls.end(),
                          [](const std::string& c) { return c.rfind("close", 0) == 0; }) == 1);
      CHECK(std::find(calls.begin(), calls.end(), "message \\r\\n") == calls.end());
    }
  }

#ifndef SMTPD_NO_TLS // the Protocol offers STARTTLS only in a TLS build
  TEST_CASE("RFC 3207 §4.2: STARTTLS resets the session object's transaction") {
    Calls calls;
    smtpd::Options o;
    o.tls_cert_file = "unused.pem"; // the Protocol never loads it: STARTTLS is offered
    Driven d(recording(calls), o);
    CHECK(d.send("EHLO c.test\r\nSTARTTLS\r\n").find("220 2.0.0 Ready to start TLS") !=
          std::string::npos);
    calls.clear();
    d.protocol->tls_started("TLSv1.3", "TLS_AES_128_GCM_SHA256", "");
    CHECK(calls == Calls{"reset"});
    CHECK(d.send("EHLO c.test\r\n").rfind("250-mx.test", 0) == 0);
  }
#endif

  TEST_CASE("Session: a Reply or an exception from each method, and the session goes on") {
    // ThrowingSession - throws from the method named `where`, a Reply or a runtime_error.
    class ThrowingSession : public smtpd::Session {
    public:
      ThrowingSession(std::string where, bool reply) : where_(std::move(where)), reply_(reply) {}

      std::optional<smtpd::Reply> command(const smtpd::SessionInfo&, std::string_view l) override {
        if (where_ == "command" && l == "NOOP") fail();
        return std::nullopt;
      }

      std::optional<smtpd::Reply> hello(const smtpd::SessionInfo&, const std::string&) override {
        if (where_ == "hello") fail();
        return std::nullopt;
      }

      std::optional<smtpd::Reply> mail(const smtpd::SessionInfo&, const std::string&,
                                       const smtpd::MailOptions&) override {
        if (where_ == "mail") fail();
        return std::nullopt;
      }

      std::optional<smtpd::Reply> rcpt(const smtpd::SessionInfo&, const smtpd::Envelope&,
                                       const std::string&, const smtpd::RcptOptions&) override {
        if (where_ == "rcpt") fail();
        return std::nullopt;
      }

      std::unique_ptr<smtpd::MessageSink> data(const smtpd::SessionInfo&,
                                               const smtpd::Envelope&) override {
        if (where_ == "data") fail();
        return nullptr;
      }

      std::optional<smtpd::Reply> message(const smtpd::SessionInfo&, const smtpd::Envelope&,
                                          const std::string&) override {
        if (where_ == "message") fail();
        return std::nullopt;
      }

      void reset(const smtpd::SessionInfo&) override {
        if (where_ == "reset") fail();
      }

      void close(const smtpd::SessionInfo&, smtpd::SessionEnd) override {
        if (where_ == "close") fail();
      }

    private:
      void fail() {
        if (reply_) throw smtpd::Reply{550, "5.7.1", "Refused by " + where_};
        throw std::runtime_error(where_ + " broke");
      }

      std::string where_;
      bool reply_;
    };

    struct Case {
      std::string where;
      std::string input;    // after the greeting
      std::string expected; // the reply that shows the failure
    };

    const std::string mail = "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n";
    const std::string rcpt = mail + "RCPT TO:<c@d.test>\r\n";
    const std::string dot = rcpt + "DATA\r\nhi\r\n.\r\n";
    const std::vector<Case> cases = {
        {"command", "EHLO c.test\r\nNOOP\r\n", "%s\r\n"},
        {"hello", "EHLO c.test\r\n", "%s\r\n"},
        {"mail", mail, "%s\r\n"},
        {"rcpt", rcpt, "%s\r\n"},
        {"data", rcpt + "DATA\r\n", "%s\r\n"},
        {"message", dot, "%s\r\n"},
        {"reset", dot + "RSET\r\n", "250 2.0.0 Ok\r\n"},
        {"close", "QUIT\r\n", "221 Bye\r\n"},
    };
    for (bool as_reply : {true, false}) {
      for (const Case& c : cases) {
        CAPTURE(c.where);
        CAPTURE(as_reply);
        std::vector<std::string> errors;
        smtpd::Options o;
        o.log_error = [&](std::string_view m) { errors.emplace_back(m); };
        Driven d(
            [&](const smtpd::SessionInfo&) {
              return std::make_unique<ThrowingSession>(c.where, as_reply);
            },
            o);
        std::string replies = d.send(c.input);
        std::string failure = as_reply ? "550 5.7.1 Refused by " + c.where
                              : c.where == "hello"
                                  ? "421 Local error in processing, closing connection"
                                  : "451 4.3.0 Local error in processing, try again later";
        if (c.where == "hello" && as_reply) failure = "550 Refused by hello"; // no EHLO yet
        std::string expected = c.expected;
        if (expected.find("%s") != std::string::npos) expected = failure + "\r\n";
        CHECK(
            printable(replies.substr(replies.size() - std::min(replies.size(), expected.size()))) ==
            printable(expected));
        bool quiet_method = c.where == "reset" || c.where == "close";
        if (!as_reply && !quiet_method) {
          REQUIRE(errors.size() == 1);
          CHECK(errors[0].find(d.protocol->session().id) != std::string::npos);
          CHECK(errors[0].find("Session::" + c.where + " threw: " + c.where + " broke") !=
                std::string::npos);
        }
      }
    }
  }

  TEST_CASE("Session: the factory refuses like on_connect: 4xx closes with 421, 5xx greets 554") {
    for (int code : {450, 554}) {
      CAPTURE(code);
      Driven d([code](const smtpd::SessionInfo&) -> std::unique_ptr<smtpd::Session> {
        throw smtpd::Reply{code, "", "Not now"};
      });
      if (code == 450) {
        CHECK(d.greeting == "421 Not now\r\n");
        CHECK(d.protocol->should_close());
      } else {
        CHECK(d.greeting == "554 Not now\r\n");
        CHECK(d.send("EHLO c.test\r\n") == "503 Service refused, only QUIT allowed\r\n");
        CHECK(d.send("QUIT\r\n") == "221 Bye\r\n");
      }
    }
  }

  TEST_CASE("mailhog's verb filter: Session::command refuses a verb before it runs") {
    class NoVrfy : public smtpd::Session {
    public:
      std::vector<std::string> seen;

      std::optional<smtpd::Reply> command(const smtpd::SessionInfo&,
                                          std::string_view line) override {
        seen.emplace_back(line);
        if (line.substr(0, 4) == "VRFY") return smtpd::Reply{502, "5.5.1", "VRFY is off here"};
        return std::nullopt;
      }
    };

    NoVrfy* object = nullptr;
    smtpd::Options o;
    o.auth_insecure = true;
    Driven d(
        [&](const smtpd::SessionInfo&) {
          auto made = std::make_unique<NoVrfy>();
          object = made.get();
          return made;
        },
        o);
    CHECK(d.send("EHLO c.test\r\nVRFY root\r\nNOOP\r\nAUTH PLAIN AGFsaWNlAHB3\r\n") ==
          "250-mx.test\r\n250-SIZE 26214400\r\n250-8BITMIME\r\n250-PIPELINING\r\n"
          "250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 LIMITS RCPTMAX=100\r\n"
          "502 5.5.1 VRFY is off here\r\n"
          "250 2.0.0 Ok\r\n502 5.5.1 Command not implemented\r\n");
    REQUIRE(object != nullptr);
    // AUTH's initial response is masked before the filter sees it, as in logs.
    CHECK(object->seen ==
          std::vector<std::string>{"EHLO c.test", "VRFY root", "NOOP", "AUTH PLAIN ****"});
  }

  TEST_CASE("RFC 4954: AUTH through the Session object: its mechanisms, its password check") {
    class Accounts : public smtpd::Session {
    public:
      std::vector<std::string> auth_mechanisms(const smtpd::SessionInfo&) override {
        return {"LOGIN", "PLAIN", "NOT-A-MECHANISM"};
      }

      bool check_password(const smtpd::SessionInfo&, const std::string& mechanism,
                          const std::string& user, const std::string& password,
                          const std::string&) override {
        return mechanism == "PLAIN" && user == "alice" && password == "pw";
      }
    };

    smtpd::Options o;
    o.auth_insecure = true;
    Driven d([](const smtpd::SessionInfo&) { return std::make_unique<Accounts>(); }, o);
    CHECK(d.send("EHLO c.test\r\n").find("250 AUTH LOGIN PLAIN\r\n") != std::string::npos);
    CHECK(d.send("AUTH CRAM-MD5\r\n") == "504 5.5.4 Unrecognized authentication type\r\n");
    CHECK(d.send("AUTH PLAIN AGFsaWNlAHB3\r\n") == "235 2.7.0 Authentication successful\r\n");
    CHECK(d.protocol->session().auth_user == "alice");
  }

  TEST_CASE("Session::data returning a sink streams the message; message() is not called") {
    struct Collected {
      std::string bytes;
      bool finished = false;
    };

    class Sink : public smtpd::MessageSink {
    public:
      explicit Sink(Collected& c) : c_(c) {}

      void write(std::string_view piece) override { c_.bytes += piece; }

      std::optional<smtpd::Reply> finish() override {
        c_.finished = true;
        return smtpd::Reply{250, "2.0.0", "Streamed"};
      }

    private:
      Collected& c_;
    };

    class Streaming : public smtpd::Session {
    public:
      explicit Streaming(Collected& c) : c_(c) {}

      std::unique_ptr<smtpd::MessageSink> data(const smtpd::SessionInfo&,
                                               const smtpd::Envelope&) override {
        return std::make_unique<Sink>(c_);
      }

      std::optional<smtpd::Reply> message(const smtpd::SessionInfo&, const smtpd::Envelope&,
                                          const std::string&) override {
        throw std::logic_error("message() must not be called for a streamed message");
      }

    private:
      Collected& c_;
    };

    Collected c;
    Driven d([&](const smtpd::SessionInfo&) { return std::make_unique<Streaming>(c); });
    std::string replies = d.send(transaction + "DATA\r\nSubject: s\r\n\r\n..dot\r\n.\r\n");
    CHECK(ends_with(replies, "354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Streamed\r\n"));
    CHECK(c.finished);
    CHECK(c.bytes.rfind("Received: from c.test ", 0) == 0);
    CHECK(ends_with(c.bytes, "\r\nSubject: s\r\n\r\n.dot\r\n"));
  }

  TEST_CASE("SessionInfo: a unique id per session, the prefix of its messages' queue ids") {
    std::set<std::string> ids;
    for (int i = 0; i < 100; ++i) {
      smtpd::Options o;
      smtpd::Protocol p(o, test::client_info());
      ids.insert(p.session().id);
      CHECK(p.session().id.size() == 14);
    }
    CHECK(ids.size() == 100);
    std::vector<std::string> seen;
    smtpd::Options o;
    o.hostname = "mx.test";
    o.message_handler = [&](const smtpd::SessionInfo& s, const smtpd::Envelope&,
                            const std::string& data) -> std::optional<smtpd::Reply> {
      seen.push_back(s.id + "|" + data.substr(0, data.find(";")));
      return std::nullopt;
    };
    smtpd::Protocol p(o, test::client_info());
    p.take_output();
    p.feed(transaction + "DATA\r\nx\r\n.\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"
                         "DATA\r\ny\r\n.\r\n");
    std::string out = p.take_output();
    const std::string& id = p.session().id;
    CHECK(out.find("queued as " + id + "01\r\n") != std::string::npos);
    CHECK(out.find("queued as " + id + "02\r\n") != std::string::npos);
    REQUIRE(seen.size() == 2);
    CHECK(seen[0].rfind(id + "|Received: from c.test ", 0) == 0);
    CHECK(ends_with(seen[0], " id " + id + "01\r\n\tfor <c@d.test>"));
  }

  TEST_CASE("Options: new_session with a hook or handler throws; one kind decides") {
    smtpd::Options o;
    o.new_session = [](const smtpd::SessionInfo&) { return std::make_unique<smtpd::Session>(); };
    CHECK_NOTHROW(smtpd::Server{o});
    o.stream_chunk_bytes = 0; // Session::data() may return a sink: pieces must have a size
    CHECK_THROWS_AS(smtpd::Server{o}, std::invalid_argument);
    o.stream_chunk_bytes = 4096;
    o.on_rcpt = [](const smtpd::SessionInfo&, const std::string&,
                   const smtpd::Params&) -> std::optional<smtpd::Reply> { return std::nullopt; };
    CHECK_THROWS_AS(smtpd::Server{o}, std::invalid_argument);
  }

  TEST_CASE("RFC 5321 §4.5.3.1.4: max_command_line_bytes, at least 512, allows longer lines") {
    smtpd::Options o;
    o.max_command_line_bytes = 511;
    CHECK_THROWS_AS(smtpd::Server{o}, std::invalid_argument);
    const std::string long_name = "EHLO " + std::string(700, 'a') + ".test\r\n"; // 712 octets
    for (std::size_t limit : {512, 1000}) {
      CAPTURE(limit);
      o.max_command_line_bytes = limit;
      o.hostname = "mx.test";
      smtpd::Protocol p(o, test::client_info());
      p.take_output();
      p.feed(long_name);
      std::string reply = p.take_output();
      CHECK(reply.rfind(limit == 512 ? "500 Line too long" : "250-mx.test", 0) == 0);
    }
  }

  TEST_CASE("RFC 6531: smtputf8 = false: not advertised, the parameter and UTF-8 paths refused") {
    smtpd::Options o;
    o.smtputf8 = false;
    o.hostname = "mx.test";
    smtpd::Protocol p(o, test::client_info());
    p.take_output();
    p.feed("EHLO c.test\r\n");
    CHECK(p.take_output().find("SMTPUTF8") == std::string::npos);
    p.feed("MAIL FROM:<a@b.test> SMTPUTF8\r\nMAIL FROM:<j\xc3\xb6rg@b.test>\r\n");
    CHECK(p.take_output() == "555 5.5.4 Unsupported MAIL/RCPT parameter\r\n"
                             "553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter\r\n");
  }

} // TEST_SUITE("session")

// ---- greylisting, as the README shows it
// ---------------------------------------------------------

namespace {

// Greylist - server-wide memory of (client IP, sender, recipient) triplets: a triplet seen for
// the first time is deferred with 450; a retry after `delay` is accepted (the client is a real
// MTA with a queue, not a spam cannon that never retries).
class Greylist {
public:
  using Clock = std::chrono::steady_clock;

  explicit Greylist(Clock::duration delay) : delay_(delay) {}

  bool allow(const std::string& ip, const std::string& from, const std::string& to) {
    std::lock_guard<std::mutex> lock(mu_);
    auto [at, first_time] = first_seen_.try_emplace(std::make_tuple(ip, from, to), Clock::now());
    return !first_time && Clock::now() - at->second >= delay_;
  }

private:
  std::mutex mu_;
  std::map<std::tuple<std::string, std::string, std::string>, Clock::time_point> first_seen_;
  Clock::duration delay_;
};

// GreylistSession - the per-session part: the client's address is known for the whole session,
// the sender for the transaction.
class GreylistSession : public smtpd::Session {
public:
  explicit GreylistSession(Greylist& list) : list_(list) {}

  std::optional<smtpd::Reply> rcpt(const smtpd::SessionInfo& s, const smtpd::Envelope& e,
                                   const std::string& to, const smtpd::RcptOptions&) override {
    if (list_.allow(s.peer.ip, e.from, to)) return std::nullopt;
    ++deferred;
    return smtpd::Reply{450, "4.2.0", "Greylisted, please try again later"};
  }

  int deferred = 0;

private:
  Greylist& list_;
};

} // namespace

TEST_SUITE("session") {

  TEST_CASE("greylisting: the first attempt of a triplet gets 450, the retry 250") {
    Greylist list(std::chrono::seconds(0));
    auto attempt = [&](const std::string& ip) {
      smtpd::Options o;
      o.hostname = "mx.test";
      o.new_session = [&](const smtpd::SessionInfo&) {
        return std::make_unique<GreylistSession>(list);
      };
      smtpd::Protocol p(o, test::client_info(ip));
      p.take_output();
      p.feed("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n");
      std::string out = p.take_output();
      return out.substr(out.rfind("\r\n", out.size() - 3) + 2);
    };
    CHECK(attempt("192.0.2.1") == "450 4.2.0 Greylisted, please try again later\r\n");
    CHECK(attempt("192.0.2.1") == "250 2.1.5 Ok\r\n");
    CHECK(attempt("192.0.2.2") == "450 4.2.0 Greylisted, please try again later\r\n");
  }

} // TEST_SUITE("session")

// ---- the tracer ------------------------------------------------------------------------------

namespace {

// Trace - what a RecordingTracer saw: "C[bytes]" read, "S[bytes]" written, "|" a flush, "#" the
// close, in order.
class RecordingTracer : public smtpd::Tracer {
public:
  explicit RecordingTracer(std::string& trace) : trace_(trace) {}

  void client(std::string_view bytes) override { trace_ += "C[" + printable(bytes) + "]"; }

  void server(std::string_view bytes) override { trace_ += "S[" + printable(bytes) + "]"; }

  void flush() override { trace_ += "|"; }

  void close() override { trace_ += "#"; }

private:
  std::string& trace_;
};

} // namespace

TEST_SUITE("session") {

  TEST_CASE("Tracer: the exact bytes each way, a mark per burst, the close; AUTH masked") {
    std::string trace;
    smtpd::Options o;
    o.hostname = "mx.test";
    o.auth_insecure = true;
    o.on_auth = [](const smtpd::SessionInfo&, const std::string&, const std::string& user,
                   const std::string& password,
                   const std::string&) { return user == "alice" && password == "pw"; };
    o.new_tracer = [&](const smtpd::SessionInfo&) {
      return std::make_unique<RecordingTracer>(trace);
    };
    smtpd::Protocol p(o, test::client_info());
    p.take_output();
    p.feed("EHLO c.test\r\n");
    p.take_output();
    trace.clear(); // the greeting and EHLO: as the next steps show, bytes are passed as they are
    p.feed("AUTH PLAIN AGFsaW"); // an AUTH line split between reads: both pieces masked
    p.feed("NlAHB3\r\n");
    p.take_output();
    CHECK(trace == "C[AUTH PLAIN ****]C[****\\r\\n]S[235 2.7.0 Authentication successful\\r\\n]|");
    trace.clear();
    p.feed("MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n");
    p.take_output();
    p.feed("secret stays\r\n.\r\nQUIT\r\n");
    std::string out = test::mask_ids(p.take_output());
    CHECK(trace == "C[MAIL FROM:<a@b.test>\\r\\n]S[250 2.1.0 Ok\\r\\n]"
                   "C[RCPT TO:<c@d.test>\\r\\n]S[250 2.1.5 Ok\\r\\n]C[DATA\\r\\n]"
                   "S[354 End data with <CR><LF>.<CR><LF>\\r\\n]|"
                   "C[secret stays\\r\\n.\\r\\n]S[250 2.0.0 Ok: queued as " +
                       p.session().id + "01\\r\\n]C[QUIT\\r\\n]S[221 2.0.0 Bye\\r\\n]|#");
  }

  TEST_CASE("Tracer: AUTH LOGIN responses and input dropped after STARTTLS are masked") {
    std::string trace;
    smtpd::Options o;
    o.hostname = "mx.test";
    o.auth_insecure = true;
    o.tls_cert_file = "unused.pem";
    o.on_auth = [](const smtpd::SessionInfo&, const std::string&, const std::string&,
                   const std::string&, const std::string&) { return false; };
    o.auth_failure_delay = std::chrono::milliseconds(0);
    o.new_tracer = [&](const smtpd::SessionInfo&) {
      return std::make_unique<RecordingTracer>(trace);
    };
    smtpd::Protocol p(o, test::client_info());
    p.feed("EHLO c.test\r\n");
    p.take_output();
    trace.clear();
    p.feed("AUTH LOGIN\r\ndXNlcg==\r\ncGFzc3dvcmQ=\r\n");
    CHECK(trace == "C[AUTH LOGIN\\r\\n]S[334 VXNlcm5hbWU6\\r\\n]C[****\\r\\n]"
                   "S[334 UGFzc3dvcmQ6\\r\\n]C[****\\r\\n]"
                   "S[535 5.7.8 Authentication credentials invalid\\r\\n]");
    trace.clear();
    p.feed("AUTH PLAIN abc\rAGFsaWNlAHB3\r\n"); // a bare CR does not end what is masked
    CHECK(trace == "C[AUTH PLAIN ****\\r\\n]S[500 5.5.2 Bare <CR> received in command line\\r\\n]");
#ifndef SMTPD_NO_TLS // STARTTLS is offered only in a TLS build
    trace.clear();
    p.feed("STARTTLS\r\nAUTH PLAIN AGFsaWNlAHB3\r\nNOOP\r\n"); // injected behind STARTTLS
    CHECK(trace == "C[STARTTLS\\r\\n]S[220 2.0.0 Ready to start TLS\\r\\n]"
                   "C[AUTH PLAIN ****\\r\\n]C[NOOP\\r\\n]");
#endif
  }

} // TEST_SUITE("session")
