// hello.cpp - the smallest smtpd program: a line about each message it receives.
//
// From the #include on, this file is the listing under "Hello, mail" in README.md, byte for
// byte, and it builds the README's way (test/readme_build.sh checks both). Next to smtpd.hpp
// and smtpd.cpp:
//
//     g++ -std=c++17 -O2 -pthread hello.cpp smtpd.cpp -lssl -lcrypto -o hello
//     ./hello &
//     swaks --server 127.0.0.1:2525 --from alice@example.test --to bob@example.test
//
// In this repository `make` builds it as build/hello, with -I. to find smtpd.hpp.
#include "smtpd.hpp"
#include <iostream>

int main() {
  smtpd::ListenAndServe(
      "127.0.0.1:2525",
      [](const smtpd::Peer& peer, const std::string& from, const std::vector<std::string>& to,
         const std::string& data) {
        std::cout << peer.to_string() << ": <" << from << "> to " << to.size() << " recipient(s), "
                  << data.size() << " octets\n";
      },
      "hello", "");
}
