// fuzz/fuzz.hpp - what the fuzz targets share: the invariant check, a reply-syntax checker and a
// few byte helpers. Header-only; every target includes it.
//
// Each target defines `int fuzz_<name>(const uint8_t* data, size_t size)` and, when compiled
// with -DSMTPD_FUZZ_LIBFUZZER (fuzz/fuzz.mk does for the clang builds), the libFuzzer entry point
// LLVMFuzzerTestOneInput calling it. Compiled plainly, the targets only define fuzz_<name>, and
// fuzz/replay.cpp links all of them into one program that runs the corpus, so each crash found
// by libFuzzer becomes a regression test.
#ifndef SMTPD_FUZZ_HPP
#define SMTPD_FUZZ_HPP

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#ifdef SMTPD_FUZZ_LIBFUZZER
#define SMTPD_FUZZ_ENTRY(fn)                                                                       \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {                        \
    return fn(data, size);                                                                         \
  }
#else
#define SMTPD_FUZZ_ENTRY(fn)
#endif

// FUZZ_CHECK - an invariant: when it does not hold, say which and stop with a trap, which
// libFuzzer reports as a crash (and the replay program as a failed input).
#define FUZZ_CHECK(cond)                                                                           \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      std::fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);            \
      std::fflush(stderr);                                                                         \
      __builtin_trap();                                                                            \
    }                                                                                              \
  } while (0)

namespace fuzz {

// Bytes - a cursor over the fuzzer's input; reading past the end gives zeros.
struct Bytes {
  const uint8_t* data;
  size_t size;
  size_t pos = 0;

  bool empty() const { return pos >= size; }

  uint8_t byte() { return pos < size ? data[pos++] : 0; }

  // take - up to n bytes, as text.
  std::string_view take(size_t n) {
    size_t k = n < size - pos ? n : size - pos;
    std::string_view s(reinterpret_cast<const char*>(data + pos), k);
    pos += k;
    return s;
  }

  std::string_view rest() { return take(size - pos); }
};

// Chunker - the lengths the client's bytes are fed in: 0 = one line per feed (split after each
// LF), 1 = n + 1 bytes, 2 = all at once, 3 = lengths 1..64 from a xorshift generator.
struct Chunker {
  int mode;
  unsigned n;
  uint32_t state;

  // of - the chunker for `mode` and `n` (the seed of mode 3 derived from n).
  static Chunker of(int mode, unsigned n) { return {mode, n, 0x9E3779B9u ^ n}; }

  // take - the next piece of `rest`, removed from it.
  std::string_view take(std::string_view& rest) {
    size_t len = next(rest);
    if (len > rest.size()) len = rest.size();
    std::string_view piece = rest.substr(0, len);
    rest.remove_prefix(len);
    return piece;
  }

  size_t next(std::string_view rest) {
    switch (mode) {
    case 0: {
      size_t lf = rest.find('\n');
      return lf == std::string_view::npos ? rest.size() : lf + 1;
    }
    case 1: return n + 1;
    case 2: return rest.size();
    default:
      state ^= state << 13;
      state ^= state >> 17;
      state ^= state << 5;
      return 1 + state % 64;
    }
  }
};

// ReplyLine - one line of server output, split up.
struct ReplyLine {
  int code;
  bool last; // ' ' after the code, not '-'
  std::string_view text;
};

// parse_replies - check that `out` is a sequence of complete, well-formed replies (RFC 5321
// §4.2): each line "DDD" + ' ' or '-' + text + CRLF, at most 512 octets with the CRLF, no CR, LF
// or other control character inside, the code 2xx/4xx/5xx or 334/354, every line of a multi-line
// reply with the same code, and the output ending with a reply's last line. Returns the lines.
inline std::vector<ReplyLine> parse_replies(std::string_view out) {
  std::vector<ReplyLine> lines;
  bool open = false; // inside a multi-line reply
  int open_code = 0;
  while (!out.empty()) {
    size_t end = out.find("\r\n");
    FUZZ_CHECK(end != std::string_view::npos);
    std::string_view line = out.substr(0, end);
    out.remove_prefix(end + 2);
    FUZZ_CHECK(line.size() + 2 <= 512);
    FUZZ_CHECK(line.size() >= 4);
    for (size_t i = 0; i < 3; ++i)
      FUZZ_CHECK(line[i] >= '0' && line[i] <= '9');
    FUZZ_CHECK(line[3] == ' ' || line[3] == '-');
    for (unsigned char c : line)
      FUZZ_CHECK(c >= 0x20 && c != 0x7F);
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    FUZZ_CHECK(code >= 200 && code <= 599);
    FUZZ_CHECK(code / 100 != 3 || code == 334 || code == 354);
    if (open) FUZZ_CHECK(code == open_code);
    open = line[3] == '-';
    open_code = code;
    lines.push_back({code, !open, line.substr(4)});
  }
  FUZZ_CHECK(!open);
  return lines;
}

// count_code - how many replies (last lines) in `lines` have `code`.
inline size_t count_code(const std::vector<ReplyLine>& lines, int code) {
  size_t n = 0;
  for (const ReplyLine& l : lines)
    n += l.last && l.code == code;
  return n;
}

// is_utf8 - whether `s` is well-formed UTF-8 (RFC 3629: no overlongs, surrogates, or values
// past U+10FFFF). Written independently of the library's checker.
inline bool is_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char b = static_cast<unsigned char>(s[i]);
    size_t n = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? b : n == 2 ? b & 0x1F : n == 3 ? b & 0x0F : b & 0x07;
    for (size_t k = 1; k < n; ++k) {
      unsigned char c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = cp << 6 | (c & 0x3F);
    }
    static const uint32_t min_for_length[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_for_length[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

// base64 - RFC 4648 §4 with padding (the fuzz targets build AUTH responses with it).
inline std::string base64(std::string_view in) {
  static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < in.size(); i += 3) {
    uint32_t v = uint32_t(static_cast<unsigned char>(in[i])) << 16;
    if (i + 1 < in.size()) v |= uint32_t(static_cast<unsigned char>(in[i + 1])) << 8;
    if (i + 2 < in.size()) v |= static_cast<unsigned char>(in[i + 2]);
    out += alphabet[v >> 18 & 63];
    out += alphabet[v >> 12 & 63];
    out += i + 1 < in.size() ? alphabet[v >> 6 & 63] : '=';
    out += i + 2 < in.size() ? alphabet[v & 63] : '=';
  }
  return out;
}

} // namespace fuzz

#endif // SMTPD_FUZZ_HPP
