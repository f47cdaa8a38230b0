// bench/sink.cpp - the server side of `make bench`: the smtpd library with a handler that does
// nothing, so the benchmark measures the library (protocol, threads, buffers) and not storage.
//
//     build/bench/sink 127.0.0.1:2525 [max-connections] [stream]
//
// `make bench` builds it (bench/run.py starts it on a free loopback port). It accepts every
// message up to 64 MiB (the 50 MiB case needs more than the library's 25 MiB default), serves up
// to `max-connections` clients at once (default 20000, for the idle-connection case), prints
// nothing, and on SIGINT or SIGTERM closes every connection and exits 0. With a third argument
// "stream" it uses a stream_handler whose sink drops every piece (the bounded-memory path).
#include "../smtpd.hpp"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>

int main(int argc, char** argv) {
  if (argc < 2 || argc > 4) {
    std::fprintf(stderr, "usage: %s HOST:PORT [max-connections] [stream]\n", argv[0]);
    return 2;
  }
  // Block the stop signals before any thread exists, so every thread inherits the mask and
  // only the sigwait() below receives them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  smtpd::Options options;
  options.addr = argv[1];
  options.appname = "smtpd-bench";
  options.hostname = "bench.localhost";
  options.max_connections = argc >= 3 ? std::strtoul(argv[2], nullptr, 10) : 20000;
  options.max_message_bytes = 64u * 1024 * 1024;
  // The no-op handler: the message arrives whole (the buffered path) and is dropped.
  options.handler = [](const smtpd::Peer&, const std::string&, const std::vector<std::string>&,
                       const std::string&) {};
  if (argc == 4 && std::string(argv[3]) == "stream") { // the pieces are dropped as they come

    struct Drop : smtpd::MessageSink {
      void write(std::string_view) override {}

      std::optional<smtpd::Reply> finish() override { return std::nullopt; }
    };

    options.handler = nullptr;
    options.stream_handler = [](const smtpd::SessionInfo&, const smtpd::Envelope&) {
      return std::make_unique<Drop>();
    };
  }
  options.log_error = [](std::string_view message) {
    std::fprintf(stderr, "sink: %.*s\n", static_cast<int>(message.size()), message.data());
  };

  try {
    smtpd::Server server(options);
    server.listen();
    std::thread serving([&server] { server.serve(); });
    int signal_number = 0;
    while (sigwait(&stop, &signal_number) != 0) {}
    server.close();
    serving.join();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sink: %s\n", e.what());
    return 1;
  }
  return 0;
}
