// client_driver.cpp - smtpd::Client from the command line, for test/interop_client.sh: sends
// the message on stdin to real servers (Postfix's smtpd, aiosmtpd) and prints what they said.
//
//   client_driver ADDR FROM TO... [options] < message
//
//   --sendmail            the one call, smtpd::SendMail (default: the step-by-step Client)
//   --starttls            STARTTLS after EHLO      --implicit-tls   TLS from the first byte
//   --ca FILE             CAs to verify with       --name NAME      tls_server_name
//   --no-verify           tls_verify off           --lmtp           LHLO, a reply per recipient
//   --user U --pass P     AUTH                     --mech M         the AUTH mechanism
//   --ret R --envid E     DSN on MAIL              --notify N --orcpt A   DSN on each RCPT
//   --smtputf8 --8bitmime --binarymime --chunking (prefer_chunking)
//
// Output, one line each: "greeting: CODE TEXT", "ehlo: KEYWORD..." (the extensions), "tls: 1",
// "auth: CODE", "mail: CODE ENHANCED TEXT", "rcpt N: ...", "data N: ...", "final: ..." (for
// --sendmail). A refusal thrown is "refused: WHAT" (exit 1), a connection failure "io-error:
// WHAT" (exit 2), a bad argument "usage: WHAT" (exit 3). Exit 0 otherwise.
#include "smtpd.hpp"

#include <iostream>
#include <iterator>
#include <string>
#include <vector>

namespace {

// show - a reply on one line: "250 2.0.0 text / more text".
std::string show(const smtpd::Reply& r) {
  std::string text = r.text;
  for (std::size_t at = text.find('\n'); at != std::string::npos; at = text.find('\n', at))
    text.replace(at, 1, " / ");
  return std::to_string(r.code) + (r.enhanced.empty() ? "" : " " + r.enhanced) + " " + text;
}

struct Args {
  std::string addr, from, mech;
  std::vector<std::string> to;
  bool sendmail = false, starttls = false;
  smtpd::ClientOptions options;
  smtpd::RcptOptions rcpt;
};

Args parse(int argc, char** argv) {
  Args a;
  a.options.helo_name = "client.interop.test";
  a.options.starttls = false;
  std::vector<std::string> words;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--sendmail")
      a.sendmail = true;
    else if (arg == "--starttls")
      a.starttls = a.options.starttls = true;
    else if (arg == "--implicit-tls")
      a.options.implicit_tls = true;
    else if (arg == "--ca")
      a.options.tls_ca_file = value();
    else if (arg == "--name")
      a.options.tls_server_name = value();
    else if (arg == "--no-verify")
      a.options.tls_verify = false;
    else if (arg == "--lmtp")
      a.options.lmtp = true;
    else if (arg == "--user")
      a.options.username = value();
    else if (arg == "--pass")
      a.options.password = value();
    else if (arg == "--mech")
      a.mech = a.options.auth_mechanism = value();
    else if (arg == "--ret")
      a.options.mail.ret = value();
    else if (arg == "--envid")
      a.options.mail.envid = value();
    else if (arg == "--notify") {
      std::string list = value();
      for (std::size_t at = 0; at <= list.size();) {
        std::size_t comma = list.find(',', at);
        if (comma == std::string::npos) comma = list.size();
        a.rcpt.notify.push_back(list.substr(at, comma - at));
        at = comma + 1;
      }
    } else if (arg == "--orcpt")
      a.rcpt.orcpt = value();
    else if (arg == "--smtputf8")
      a.options.mail.smtputf8 = true;
    else if (arg == "--8bitmime")
      a.options.mail.body_8bit = true;
    else if (arg == "--binarymime")
      a.options.mail.binarymime = true;
    else if (arg == "--chunking")
      a.options.prefer_chunking = true;
    else if (arg.rfind("--", 0) == 0)
      throw std::invalid_argument("unknown option " + arg);
    else
      words.push_back(arg);
  }
  if (words.size() < 3) throw std::invalid_argument("want ADDR FROM TO...");
  a.addr = words[0];
  a.from = words[1];
  a.to.assign(words.begin() + 2, words.end());
  a.options.connect_timeout = a.options.command_timeout = std::chrono::seconds(20);
  return a;
}

// step_by_step - the Client: hello, STARTTLS, AUTH, then send() (pipelined when offered).
void step_by_step(const Args& a, const std::string& message) {
  smtpd::Client c(a.addr, a.options);
  std::cout << "greeting: " << show(c.greeting()) << "\n";
  c.hello();
  if (a.starttls) c.starttls();
  std::cout << "tls: " << c.tls() << "\n";
  std::cout << "ehlo:";
  for (const char* k : {"PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "DSN", "CHUNKING",
                        "BINARYMIME", "STARTTLS", "AUTH", "ENHANCEDSTATUSCODES"})
    if (c.has_extension(k)) std::cout << " " << k;
  std::cout << "\n";
  if (!a.options.username.empty()) {
    smtpd::Reply auth = c.auth(a.options.username, a.options.password, a.mech);
    std::cout << "auth: " << show(auth) << "\n";
  }
  std::vector<smtpd::RcptOptions> rcpt(a.to.size(), a.rcpt);
  smtpd::SendResult r = c.send(a.from, a.to, message, a.options.mail, rcpt);
  std::cout << "mail: " << show(r.mail) << "\n";
  for (std::size_t i = 0; i < r.rcpt.size(); ++i)
    std::cout << "rcpt " << i << ": " << show(r.rcpt[i]) << (r.accepted(i) ? " (delivered)" : "")
              << "\n";
  for (std::size_t i = 0; i < r.data.size(); ++i)
    std::cout << "data " << i << ": " << show(r.data[i]) << "\n";
  smtpd::Reply quit = c.quit();
  std::cout << "quit: " << show(quit) << "\n";
}

} // namespace

int main(int argc, char** argv) {
  try {
    Args a = parse(argc, argv);
    std::string message((std::istreambuf_iterator<char>(std::cin)),
                        std::istreambuf_iterator<char>());
    if (a.sendmail) {
      smtpd::Reply final = smtpd::SendMail(a.addr, a.from, a.to, message, a.options);
      std::cout << "final: " << show(final) << "\n";
    } else {
      step_by_step(a, message);
    }
    return 0;
  } catch (const smtpd::ClientError& e) {
    std::cout << "refused: " << e.what() << "\n";
    return 1;
  } catch (const smtpd::ClientIOError& e) {
    std::cout << "io-error: " << e.what() << (e.timed_out() ? " (timed out)" : "") << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cout << "usage: " << e.what() << "\n";
    return 3;
  }
}
