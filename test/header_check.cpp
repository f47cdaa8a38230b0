// header_check.cpp - smtpd.hpp compiles on its own: it is included first and alone, so a
// missing standard include in it fails the build here rather than in a user's program.
#include "../smtpd.hpp"

namespace {

// header_check_options - uses the public API, so the compiler needs the whole definition.
[[maybe_unused]] smtpd::Options header_check_options() {
  return smtpd::Options{};
}

} // namespace
