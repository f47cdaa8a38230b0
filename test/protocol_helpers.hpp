// protocol_helpers.hpp - small helpers shared by the tests that drive smtpd::Protocol directly
// (data_test, protocol_test, parse_test) and by the loopback tests (through test_client.hpp):
// escaping bytes for failure messages, the SessionInfo of a test client, and masking queue ids.
#ifndef SMTPD_TEST_PROTOCOL_HELPERS_HPP
#define SMTPD_TEST_PROTOCOL_HELPERS_HPP

#include "../smtpd.hpp"

#include <cctype>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

namespace test {

// printable - `bytes` with CR, LF, NUL and other control bytes (and bytes >= 0x7F) escaped, for
// failure messages.
inline std::string printable(std::string_view bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    if (c == '\r')
      out += "\\r";
    else if (c == '\n')
      out += "\\n";
    else if (c < 0x20 || c >= 0x7F) {
      out += "\\x";
      out += digits[c >> 4];
      out += digits[c & 15];
    } else
      out += char(c);
  }
  return out;
}

// client_info - the SessionInfo of a test client: peer `ip`:`port`, with reverse-DNS name
// `hostname` ("" for none).
inline smtpd::SessionInfo client_info(std::string ip = "192.0.2.1", std::string hostname = "",
                                      uint16_t port = 4321) {
  smtpd::SessionInfo info;
  info.peer.ip = std::move(ip);
  info.peer.port = port;
  info.peer.hostname = std::move(hostname);
  return info;
}

// tls_info - the SessionInfo of a test client whose session already runs over TLS 1.3 (as after
// implicit TLS), for Protocol tests of what TLS changes.
inline smtpd::SessionInfo tls_info() {
  smtpd::SessionInfo info = client_info();
  info.tls = true;
  info.tls_version = "TLSv1.3";
  info.tls_cipher = "TLS_AES_256_GCM_SHA384";
  return info;
}

// mask_ids - "queued as 65A1B2C3D4E5F6" becomes "queued as " + `mask`: ids change per message.
// Only a run of hex digits is replaced, so an id masked already is left as it is.
inline std::string mask_ids(std::string replies, std::string_view mask = "XXXX") {
  const std::string marker = "queued as ";
  for (std::size_t at = replies.find(marker); at != std::string::npos;
       at = replies.find(marker, at + marker.size())) {
    std::size_t start = at + marker.size(), end = start;
    while (end < replies.size() && std::isxdigit(static_cast<unsigned char>(replies[end])))
      ++end;
    if (end > start) replies.replace(start, end - start, mask);
  }
  return replies;
}

} // namespace test

#endif // SMTPD_TEST_PROTOCOL_HELPERS_HPP
