// fuzz/reply.cpp - fuzz target "reply": what an SMTP server may send the client. The reply
// parser (smtpd::ReplyParser, RFC 5321 §4.2) on arbitrary bytes, read whole and resumed piece
// by piece as a socket would deliver them, reply after reply as the Client reads a pipelined
// burst.
//
// Input layout (the seeds in fuzz/corpus/reply/ start with these bytes):
//
//   byte 0  bits 0-1  how the bytes are fed to the resumable parser (fuzz::Chunker: 0 a line
//                     at a time, 1 n + 1 bytes, 2 all at once, 3 random lengths)
//           bits 2-7  n
//   bytes 1..         the server's bytes
//
// Invariants checked, besides "no crash, no sanitizer report":
//   - fed in pieces, the parser reaches the same verdict, length and reply as when given the
//     bytes at once; it never answers before the reply's last line is there;
//   - a complete reply takes no more bytes than given, ends in LF, has a code of 200..599, an
//     enhanced code that is empty or of the code's class, at most max_client_reply_lines lines;
//     its bytes alone give the same reply, and one octet fewer needs more;
//   - need_more is never said of more than max_client_reply_lines lines of at most
//     max_client_reply_line_bytes each (memory stays bounded), nor of a partial line that long;
//   - invalid says why, and stays invalid whatever comes after.
#include "fuzz/fuzz.hpp"
#include "smtpd.hpp"

#include <string>

namespace {

using Status = smtpd::ReplyParse::Status;

bool same(const smtpd::ReplyParse& a, const smtpd::ReplyParse& b) {
  return a.status == b.status && a.length == b.length && a.reply.code == b.reply.code &&
         a.reply.enhanced == b.reply.enhanced && a.reply.text == b.reply.text;
}

// check_one - the invariants for the reply at the start of `bytes`; its length when complete.
size_t check_one(std::string_view bytes, fuzz::Chunker chunker) {
  smtpd::ReplyParse whole = smtpd::parse_reply(bytes);
  smtpd::ReplyParser resumed;
  smtpd::ReplyParse piecewise;
  size_t fed = 0;
  for (int i = 0; i < 100000; ++i) {
    size_t n = chunker.next(bytes.substr(fed));
    fed = n > bytes.size() - fed ? bytes.size() : fed + n;
    piecewise = resumed.parse(bytes.substr(0, fed));
    if (piecewise.status != Status::need_more || fed == bytes.size()) break;
  }
  FUZZ_CHECK(fed == bytes.size() || piecewise.status != Status::need_more);
  FUZZ_CHECK(same(whole, piecewise));

  switch (whole.status) {
  case Status::complete: {
    const smtpd::Reply& r = whole.reply;
    FUZZ_CHECK(whole.length > 0 && whole.length <= bytes.size());
    FUZZ_CHECK(bytes[whole.length - 1] == '\n');
    FUZZ_CHECK(r.code >= 200 && r.code <= 599);
    FUZZ_CHECK(r.enhanced.empty() || r.enhanced[0] == char('0' + r.code / 100));
    size_t lines = 1;
    for (char c : r.text)
      lines += c == '\n';
    FUZZ_CHECK(lines <= smtpd::max_client_reply_lines);
    FUZZ_CHECK(same(smtpd::parse_reply(bytes.substr(0, whole.length)), whole));
    FUZZ_CHECK(smtpd::parse_reply(bytes.substr(0, whole.length - 1)).status == Status::need_more);
    return whole.length;
  }
  case Status::need_more: {
    size_t lines = 0, last = 0;
    for (size_t i = 0; i < bytes.size(); ++i)
      if (bytes[i] == '\n') ++lines, last = i + 1;
    FUZZ_CHECK(lines < smtpd::max_client_reply_lines);
    FUZZ_CHECK(bytes.size() - last < smtpd::max_client_reply_line_bytes);
    FUZZ_CHECK(bytes.size() <= smtpd::max_client_reply_lines * smtpd::max_client_reply_line_bytes);
    return 0;
  }
  case Status::invalid: {
    FUZZ_CHECK(!whole.error.empty());
    std::string more(bytes);
    more += "250 fine\r\n";
    FUZZ_CHECK(smtpd::parse_reply(more).status == Status::invalid);
    return 0;
  }
  }
  return 0;
}

} // namespace

int fuzz_reply(const uint8_t* data, size_t size) {
  fuzz::Bytes in{data, size};
  uint8_t mode = in.byte();
  fuzz::Chunker chunker{mode & 3, unsigned(mode >> 2), 2463534242u};
  std::string_view bytes = in.rest();
  // Reply after reply, as the client reads a pipelined burst; each one consumes bytes.
  for (int i = 0; i < 10000 && !bytes.empty(); ++i) {
    size_t length = check_one(bytes, chunker);
    if (length == 0) break;
    bytes.remove_prefix(length);
  }
  return 0;
}

SMTPD_FUZZ_ENTRY(fuzz_reply)
