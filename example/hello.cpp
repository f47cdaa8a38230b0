// hello.cpp - the smallest smtpd program: print who sent what to whom.
//
//     g++ -std=c++17 -pthread example/hello.cpp smtpd.cpp -lssl -lcrypto -o build/hello
//     build/hello &
//     swaks --server 127.0.0.1:2525 --from alice@example.test --to bob@example.test
#include "../smtpd.hpp"

#include <iostream>
#include <mutex>
#include <sstream>
#include <strings.h> // strncasecmp

// subject_of - the first "Subject:" header of a message, or "" when it has none.
std::string subject_of(const std::string& message) {
  std::istringstream lines(message);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) break; // a blank line ends the headers; the body follows
    if (strncasecmp(line.c_str(), "Subject:", 8) == 0) {
      std::string subject = line.substr(8);
      subject.erase(0, subject.find_first_not_of(" \t"));
      return subject;
    }
  }
  return "";
}

int main() {
  std::mutex print_mutex; // the handler runs on each client's own thread, maybe several at once
  try {
    smtpd::ListenAndServe(
        "127.0.0.1:2525",
        [&](const smtpd::Peer& peer, const std::string& from, const std::vector<std::string>& to,
            const std::string& data) {
          std::lock_guard<std::mutex> lock(print_mutex);
          std::cout << "From " << peer.to_string() << ": <" << from << "> to";
          for (const std::string& recipient : to)
            std::cout << " <" << recipient << ">";
          std::cout << ", Subject: " << subject_of(data) << std::endl;
        },
        "hello", "");
  } catch (const std::exception& e) { // port in use, bad address
    std::cerr << "hello: " << e.what() << "\n";
    return 1;
  }
}
