// fuzz/proxy.cpp - fuzz target "proxy": what a proxy in front of the server says about the
// client. Mode 0 is the PROXY protocol header parser (HAProxy's proxy-protocol.txt, v1 and v2),
// smtpd::parse_proxy_header, on arbitrary bytes; mode 1 is XCLIENT (Postfix's XCLIENT_README)
// through a Protocol, with trusted networks and the requirements they lift.
//
// Input layout (the seeds in fuzz/corpus/proxy/ start with these bytes):
//
//   byte 0  bit 0     mode: 0 the PROXY header, 1 XCLIENT
//   mode 0: bytes 1.. the first bytes of a connection from a proxy
//   mode 1: byte 1    bit 0 auth_required; bit 1 tls_required; bit 2 trusted_networks holds
//                     203.0.113.0/24 (else 198.18.0.0/15); bit 3 the client 192.0.2.1 is in
//                     xclient_networks (else it is not, and XCLIENT must be refused)
//           bytes 2.. the client's bytes, fed in one piece after the greeting
//
// Invariants checked, besides "no crash, no sanitizer report":
//   mode 0 - a complete header takes 15..107 octets (v1) or 16..max_proxy_v2_bytes (v2), no
//            more than were given; a header that names a client gives numeric addresses; the
//            result is the same for the header alone and with any bytes after it;
//          - every prefix shorter than a complete header needs more, so a reader that consumes
//            what the parser asked for never takes a byte beyond the header; need_more is never
//            said of more bytes than the largest header; invalid stays invalid when more bytes
//            come, and says why.
//   mode 1 - the output is well-formed replies; a client not in xclient_networks never gets a
//            220 after the greeting and its identity never changes;
//          - the peer's address is the client's own, "unknown" or a numeric address; neither
//            the peer's name nor the login (only XCLIENT sets them here) has a control
//            character or a space; the proxy recorded is empty or the connecting client;
//          - a message is handed over only to a client that is trusted (by its current address)
//            or meets the requirements: never without TLS under tls_required (this target has
//            no TLS), never unauthenticated under auth_required.
#include "fuzz/fuzz.hpp"
#include "smtpd.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <string>
#include <vector>

namespace {

using Status = smtpd::ProxyHeader::Status;

// numeric - whether `ip` is an IPv4 or IPv6 address in numeric form.
bool numeric(const std::string& ip) {
  unsigned char bytes[16];
  return inet_pton(AF_INET, ip.c_str(), bytes) == 1 || inet_pton(AF_INET6, ip.c_str(), bytes) == 1;
}

// same - two results agree.
bool same(const smtpd::ProxyHeader& a, const smtpd::ProxyHeader& b) {
  return a.status == b.status && a.version == b.version && a.length == b.length &&
         a.local == b.local && a.source.ip == b.source.ip && a.source.port == b.source.port &&
         a.destination.ip == b.destination.ip && a.destination.port == b.destination.port;
}

void fuzz_header(std::string_view bytes) {
  smtpd::ProxyHeader h = smtpd::parse_proxy_header(bytes);
  switch (h.status) {
  case Status::complete: {
    FUZZ_CHECK(h.length <= bytes.size());
    if (h.version == 1)
      FUZZ_CHECK(h.length >= 15 && h.length <= smtpd::max_proxy_v1_bytes);
    else
      FUZZ_CHECK(h.version == 2 && h.length >= 16 && h.length <= smtpd::max_proxy_v2_bytes);
    if (!h.local) FUZZ_CHECK(numeric(h.source.ip) && numeric(h.destination.ip));
    FUZZ_CHECK(same(h, smtpd::parse_proxy_header(bytes.substr(0, h.length))));
    FUZZ_CHECK(same(h, smtpd::parse_proxy_header(std::string(bytes) + "\r\nEHLO x\r\n")));
    // The prefixes a reader may see: each needs more (a sample: all would be quadratic).
    std::vector<std::size_t> cuts = {0, h.length / 2, h.length - 1};
    for (std::size_t k = 1; k < std::min<std::size_t>(h.length, 24); ++k)
      cuts.push_back(k);
    for (std::size_t k : cuts)
      FUZZ_CHECK(smtpd::parse_proxy_header(bytes.substr(0, k)).status == Status::need_more);
    break;
  }
  case Status::need_more:
    FUZZ_CHECK(bytes.size() < smtpd::max_proxy_v2_bytes);
    FUZZ_CHECK(bytes.empty() || h.version == 1 || h.version == 2);
    if (h.version == 1) FUZZ_CHECK(bytes.size() < smtpd::max_proxy_v1_bytes);
    break;
  case Status::invalid:
    FUZZ_CHECK(!h.error.empty());
    FUZZ_CHECK(smtpd::parse_proxy_header(std::string(bytes) + "\r\n").status == Status::invalid);
    break;
  }
}

// clean - no control character, no space, no DEL.
bool clean(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    unsigned char u = static_cast<unsigned char>(c);
    return u > 0x20 && u != 0x7F;
  });
}

void fuzz_xclient(uint8_t flags, std::string_view client) {
  const std::string me = "192.0.2.1";
  smtpd::Options o;
  o.hostname = "mx.example.org";
  o.auth_required = flags & 1;
  o.tls_required = flags & 2;
  o.trusted_networks = {(flags & 4) ? "203.0.113.0/24" : "198.18.0.0/15"};
  bool listed = flags & 8;
  o.xclient_networks = {listed ? "192.0.2.0/24" : "198.51.100.0/24"};
  o.error_delay = std::chrono::milliseconds(0);
  // trusted - the same networks, by hand (numeric IPv4 addresses are dotted quads).
  auto trusted = [flags](const std::string& ip) {
    if (flags & 4) return ip.rfind("203.0.113.", 0) == 0;
    return ip.rfind("198.18.", 0) == 0 || ip.rfind("198.19.", 0) == 0;
  };
  o.message_handler = [&](const smtpd::SessionInfo& s, const smtpd::Envelope&,
                          const std::string&) -> std::optional<smtpd::Reply> {
    bool trusted_now = trusted(s.peer.ip);
    if (o.tls_required && !trusted_now) FUZZ_CHECK(s.tls);
    if (o.auth_required && !trusted_now) FUZZ_CHECK(!s.auth_user.empty());
    return std::nullopt;
  };
  smtpd::SessionInfo info;
  info.peer.ip = me;
  info.peer.port = 4242;
  smtpd::Protocol p(o, info);
  std::string greeting = p.take_output();
  FUZZ_CHECK(greeting.rfind("220 ", 0) == 0);
  p.feed(client);
  std::string out = p.take_output();
  std::vector<fuzz::ReplyLine> lines = fuzz::parse_replies(out);
  const smtpd::SessionInfo& s = p.session();
  if (!listed) {
    for (const fuzz::ReplyLine& l : lines)
      FUZZ_CHECK(l.code != 220);
    FUZZ_CHECK(s.peer.ip == me && s.peer.port == 4242 && s.proxy.ip.empty());
  }
  FUZZ_CHECK(s.peer.ip == me || s.peer.ip == "unknown" || numeric(s.peer.ip));
  FUZZ_CHECK(s.local.ip.empty() || s.local.ip == "unknown" || numeric(s.local.ip));
  FUZZ_CHECK(clean(s.peer.hostname) && clean(s.auth_user)); // only XCLIENT sets these here
  FUZZ_CHECK(s.proxy.ip.empty() || s.proxy.ip == me);
}

} // namespace

int fuzz_proxy(const uint8_t* data, size_t size) {
  fuzz::Bytes in{data, size};
  uint8_t mode = in.byte();
  if (mode & 1) {
    uint8_t flags = in.byte();
    fuzz_xclient(flags, in.rest());
  } else {
    fuzz_header(in.rest());
  }
  return 0;
}

SMTPD_FUZZ_ENTRY(fuzz_proxy)
