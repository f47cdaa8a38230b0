// consumer.cpp - a program using smtpd as another project would (test/consumer.sh builds it with
// CMake, with pkg-config and with the README's g++ line). It serves one message with
// smtpd::TestServer, sends it over a socket, and checks what the server kept; then that the
// library agrees with this file on SMTPD_NO_TLS. Prints "consumer: ok, TLS on|off" and exits 0.
#include "smtpd.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <string>

namespace {

// say - send `line` ("" for none), then read one whole reply; returns its code, or 0.
int say(int fd, const std::string& line) {
  if (send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size()))
    return 0;
  std::string current;
  char c;
  while (recv(fd, &c, 1, 0) == 1) {
    current += c;
    if (c != '\n') continue;
    if (current.size() >= 4 && current[3] == ' ') // "250 ..." ends a reply, "250-..." does not
      return std::stoi(current.substr(0, 3));
    current.clear();
  }
  return 0;
}

int fail(const char* what) {
  std::fprintf(stderr, "consumer: %s\n", what);
  return 1;
}

} // namespace

int main() {
  smtpd::TestServer smtp;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(smtp.port());
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    return fail("cannot connect to the TestServer");
  bool accepted = say(fd, "") == 220 && say(fd, "EHLO consumer.test\r\n") == 250 &&
                  say(fd, "MAIL FROM:<alice@example.test>\r\n") == 250 &&
                  say(fd, "RCPT TO:<bob@example.test>\r\n") == 250 && say(fd, "DATA\r\n") == 354 &&
                  say(fd, "Subject: hi\r\n\r\nhello\r\n.\r\n") == 250 && say(fd, "QUIT\r\n") == 221;
  close(fd);
  if (!accepted || !smtp.wait_for(1, std::chrono::seconds(5)))
    return fail("the message was not accepted");
  const auto mail = smtp.messages().at(0);
  if (mail.envelope.from != "alice@example.test" || mail.envelope.to.size() != 1 ||
      mail.envelope.to[0] != "bob@example.test" ||
      mail.data.find("\r\nSubject: hi\r\n\r\nhello\r\n") == std::string::npos)
    return fail("the TestServer kept something else");

  // SMTPD_NO_TLS as this file sees it must be what the library was built with: a library without
  // TLS refuses a certificate naming SMTPD_NO_TLS; one with TLS fails to read the missing file.
  smtpd::Options tls;
  tls.tls_cert_file = tls.tls_key_file = "/nonexistent/smtpd-consumer.pem";
  std::string error;
  try {
    smtpd::TestServer refused(tls);
  } catch (const std::exception& e) { error = e.what(); }
#ifdef SMTPD_NO_TLS
  if (error.find("SMTPD_NO_TLS") == std::string::npos)
    return fail(("compiled with SMTPD_NO_TLS, but the library has TLS: " + error).c_str());
  std::puts("consumer: ok, TLS off");
#else
  if (error.empty() || error.find("SMTPD_NO_TLS") != std::string::npos)
    return fail(("compiled for TLS, but the library has none: " + error).c_str());
  std::puts("consumer: ok, TLS on");
#endif
  return 0;
}
