// mailsink.cpp - a mail catcher for developers and scripts: an SMTP (or LMTP) server that
// accepts every message and prints a line about it, stores it (Maildir or mbox), hands it to a
// program, or drops it; with --relay it passes each message on to another server first.
//
//     build/mailsink --help
//     build/mailsink --listen 127.0.0.1:0 --maildir /tmp/mail
//     build/mailsink --count 1 --json                  (wait for one message, print it as JSON)
//     build/mailsink --mbox /tmp/mail.mbox --accept-domain example.test
//     build/mailsink --exec ./deliver.sh --verbose     (the program reads the message on stdin)
//     build/mailsink --fail-rate 0.3 --fail-reply "451 4.3.0 Try again later" --seed 7
//     build/mailsink --tls-cert cert.pem --tls-key key.pem --auth-file users --auth-required
//
// `make example` builds it; by hand:
//
//     g++ -std=c++17 -O2 -pthread example/mailsink.cpp smtpd.cpp -lssl -lcrypto -o build/mailsink
//
// The program in nine parts, in the order main() uses them:
//   1. Command line: a table of flags, strict value parsing, the rules between flags, --help.
//   2. Output: stdout and stderr shared by every connection thread; the --verbose transcript.
//   3. Maildir: safe delivery into DIR/tmp, then DIR/new (the Maildir rules, see maildir(5)).
//   4. Mbox: appending to one mboxrd file under a lock, synced before the 250.
//   5. Exec: running a program per message, with a time limit, never through a shell.
//   6. Reports: header fields, the one-line summary and the JSON object of a message.
//  6b. Relay: passing each message on upstream (--relay) before the client's reply.
//   7. Sink: the hooks and the message handler: domains, fault injection, delivery, --count.
//   8. Users: the AUTH accounts from --auth and --auth-file, and the password check.
//   9. main: check the setup, listen, serve on a thread, stop on a signal, --count or
//      --exit-after, shut down.
#include "../smtpd.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <initializer_list>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ; // the process environment, which --exec programs inherit

namespace {

// Exit statuses, as --help documents them.
constexpr int exit_ok = 0;
constexpr int exit_runtime_error = 1; // the setup failed, serving failed, or --exit-after came
                                      // before --count messages
constexpr int exit_usage_error = 2;   // the command line is wrong

constexpr const char* default_listen = "127.0.0.1:2525";
constexpr unsigned long long max_timeout_seconds = 24 * 60 * 60; // one day
constexpr unsigned long long default_exec_timeout_seconds = 60;
constexpr const char* default_fail_reply = "451 4.3.0 Try again later";
constexpr unsigned long long default_relay_timeout_seconds = 60;
constexpr std::size_t max_reply_text = 400; // --fail-reply text; a reply line has 512 octets

// =============================================================================================
// 1. Command line
// =============================================================================================

// Users - the AUTH accounts: user name -> password.
using Users = std::map<std::string, std::string>;

// Stage - the SMTP command --fail-stage refuses: MAIL, RCPT, or the end of DATA.
enum class Stage { mail, rcpt, data };

// Config - everything the command line sets. The server settings live in smtpd::Options
// directly, so the library's own defaults apply to every flag not given.
struct Config {
  smtpd::Options options;
  Users users;                         // from --auth; main() adds those of the --auth-files
  std::vector<std::string> auth_files; // --auth-file, read by main() before listening

  // Delivery: at most one of these; none of them means "print a summary to stdout".
  std::string maildir;                            // --maildir DIR
  std::string mbox;                               // --mbox FILE
  std::vector<std::string> exec;                  // --exec PROGRAM ARG...: the program's argv
  bool discard = false;                           // --discard
  std::optional<unsigned long long> exec_timeout; // --exec-timeout SECONDS

  // What is printed.
  bool json = false;       // one JSON object per message instead of the summary line
  bool print_body = false; // the message itself after its summary line
  bool quiet = false;      // no summary lines, no startup line
  bool verbose = false;    // the SMTP transcript on stderr

  // When to stop, besides SIGINT and SIGTERM.
  unsigned long long count = 0;      // --count N; 0: no limit
  unsigned long long exit_after = 0; // --exit-after SECONDS; 0: no limit

  std::vector<std::string> accept_domains;  // --accept-domain, lower case; empty: every domain
  std::vector<std::string> fail_recipients; // --fail-recipient, lower case: refused after the
                                            // data with fail_reply (per recipient in LMTP)
  bool socket_mode_given = false;           // --socket-mode seen: it needs a unix: --listen

  // Fault injection: refuse `fail_stage` with `fail_reply` with probability `fail_rate`.
  std::optional<double> fail_rate;
  std::optional<smtpd::Reply> fail_reply;
  std::optional<Stage> fail_stage;
  std::optional<unsigned long long> seed;

  bool limit_exempt_given = false; // --limit-exempt seen: it replaces the default list

  // --relay: each accepted message is passed on to this server before the client's reply.
  std::string relay;                    // --relay HOST:PORT or unix:PATH; "" = no relaying
  bool relay_tls = false;               // --relay-tls: STARTTLS required, certificate verified
  std::string relay_ca;                 // --relay-ca FILE: the CAs that verify it
  std::string relay_auth_file;          // --relay-auth-file FILE: USER:PASSWORD for AUTH
  bool relay_lmtp = false;              // --relay-lmtp: speak LMTP to it
  unsigned long long relay_timeout = 0; // --relay-timeout SECONDS; 0: default_relay_timeout

  bool help = false;

  Config() {
    options.addr = default_listen;
    options.appname = "mailsink";
  }
};

// UsageError - the command line is wrong; main() prints it with "see --help" and exits 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// parse_whole - a whole number from 0 to `max`: digits only, no sign, spaces or suffix.
unsigned long long parse_whole(const std::string& text, unsigned long long max) {
  unsigned long long number = 0;
  const char* end = text.data() + text.size();
  auto [stop, error] = std::from_chars(text.data(), end, number);
  if (error == std::errc::invalid_argument || stop != end)
    throw UsageError("needs a whole number, not '" + text + "'");
  if (error == std::errc::result_out_of_range || number > max)
    throw UsageError("'" + text + "' is too large (at most " + std::to_string(max) + ")");
  return number;
}

// parse_count - parse_whole, but at least 1.
unsigned long long parse_count(const std::string& text, unsigned long long max) {
  const unsigned long long number = parse_whole(text, max);
  if (number == 0) throw UsageError("needs a positive whole number, not '" + text + "'");
  return number;
}

// parse_size - parse_count for a std::size_t setting.
std::size_t parse_size(const std::string& text) {
  return static_cast<std::size_t>(parse_count(text, std::numeric_limits<std::size_t>::max()));
}

// set_timeout - --timeout: one limit for a silent client, in commands and in message data.
void set_timeout(Config& config, const std::string& text) {
  const std::chrono::seconds timeout(parse_count(text, max_timeout_seconds));
  config.options.command_timeout = timeout;
  config.options.data_timeout = timeout;
}

// parse_rate - a probability from 0 to 1 written as digits with at most one '.' ("0", "0.25",
// ".5", "1"): no sign, exponent, "nan" or hexadecimal, which strtod alone would take.
double parse_rate(const std::string& text) {
  const auto digits =
      std::count_if(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
  const auto dots = std::count(text.begin(), text.end(), '.');
  const bool well_formed =
      digits > 0 && dots <= 1 && static_cast<std::size_t>(digits + dots) == text.size();
  if (!well_formed || std::strtod(text.c_str(), nullptr) > 1.0)
    throw UsageError("needs a probability from 0 to 1, not '" + text + "'");
  return std::strtod(text.c_str(), nullptr);
}

// is_digits - whether `text` is 1 to `most` ASCII digits.
bool is_digits(std::string_view text, std::size_t most) {
  if (text.empty() || text.size() > most) return false;
  return std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// is_enhanced_code - whether `word` looks like an RFC 3463 status code: digit.digits.digits.
bool is_enhanced_code(std::string_view word) {
  const std::size_t first = word.find('.');
  const std::size_t second = first == std::string_view::npos ? first : word.find('.', first + 1);
  if (second == std::string_view::npos) return false;
  return is_digits(word.substr(0, first), 1) &&
         is_digits(word.substr(first + 1, second - first - 1), 3) &&
         is_digits(word.substr(second + 1), 3);
}

// is_printable_ascii - whether every byte of `text` is printable ASCII (space to '~').
bool is_printable_ascii(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) { return c >= ' ' && c <= '~'; });
}

// parse_reply - "CODE [ENHANCED] TEXT" as in "451 4.3.0 Try again later": a 4xx or 5xx code,
// an optional RFC 3463 code of the same class, and printable ASCII text (may be empty: the
// library's default text is not used, so an empty text stays empty).
smtpd::Reply parse_reply(const std::string& text) {
  const std::string_view all(text);
  if (!is_digits(all.substr(0, 3), 3) || (all.size() > 3 && all[3] != ' '))
    throw UsageError("needs 'CODE [X.Y.Z] TEXT' with a three-digit CODE, not '" + text + "'");
  const int code = std::stoi(text.substr(0, 3));
  if (code < 400 || code > 599)
    throw UsageError("needs a 4xx or 5xx reply code, not " + text.substr(0, 3));
  std::string_view rest = all.size() > 4 ? all.substr(4) : std::string_view();
  std::string enhanced;
  const std::string_view word = rest.substr(0, rest.find(' '));
  if (is_enhanced_code(word)) {
    if (word[0] != text[0])
      throw UsageError("has enhanced code " + std::string(word) + " of another class than " +
                       text.substr(0, 3));
    enhanced = std::string(word);
    rest.remove_prefix(std::min(rest.size(), word.size() + 1));
  }
  if (!is_printable_ascii(rest)) throw UsageError("text must be printable ASCII");
  if (rest.size() > max_reply_text)
    throw UsageError("text is longer than " + std::to_string(max_reply_text) + " characters");
  return smtpd::Reply{code, enhanced, std::string(rest)};
}

// parse_stage - "mail", "rcpt" or "data".
Stage parse_stage(const std::string& text) {
  if (text == "mail") return Stage::mail;
  if (text == "rcpt") return Stage::rcpt;
  if (text == "data") return Stage::data;
  throw UsageError("needs mail, rcpt or data, not '" + text + "'");
}

// parse_socket_mode - --socket-mode: a file mode in octal, as chmod(1) takes it ("0660",
// "660", "0600"): one to four octal digits, at most 0777 (the set-id and sticky bits mean
// nothing on a socket). Who may connect to a Unix socket is decided by write permission on it
// (unix(7)), so 0660 lets the owner and the group in.
unsigned parse_socket_mode(const std::string& text) {
  const bool octal =
      !text.empty() && text.size() <= 4 &&
      std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '7'; });
  if (!octal) throw UsageError("needs an octal file mode such as 0660, not '" + text + "'");
  const unsigned long mode = std::stoul(text, nullptr, 8);
  if (mode > 0777) throw UsageError("needs a mode of at most 0777, not " + text);
  return static_cast<unsigned>(mode);
}

// unix_listen_path - the PATH of a --listen "unix:PATH", or "" for a TCP address.
std::string unix_listen_path(const std::string& addr) {
  return addr.rfind("unix:", 0) == 0 ? addr.substr(5) : std::string();
}

// lower_ascii - `text` with ASCII letters in lower case (domains compare case-insensitively).
std::string lower_ascii(std::string text) {
  for (char& c : text)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return text;
}

// add_domain - --accept-domain: a domain alone ("example.test", not "user@example.test"),
// stored in lower case.
void add_domain(Config& config, const std::string& domain) {
  if (domain.find('@') != std::string::npos)
    throw UsageError("needs a domain without '@', not '" + domain + "'");
  if (!is_printable_ascii(domain) || domain.find_first_of(" <>") != std::string::npos)
    throw UsageError("needs a domain name, not '" + domain + "'");
  config.accept_domains.push_back(lower_ascii(domain));
}

// add_fail_recipient - --fail-recipient: an address as RCPT gives it, without the brackets
// ("bob@example.test"), stored in lower case: it matches a recipient in any case.
void add_fail_recipient(Config& config, const std::string& address) {
  if (!is_printable_ascii(address) || address.find_first_of(" <>") != std::string::npos)
    throw UsageError("needs an address without spaces or brackets, not '" + address + "'");
  config.fail_recipients.push_back(lower_ascii(address));
}

// parse_relay_address - --relay: "HOST:PORT", "[IPv6]:PORT" or "unix:/absolute/path", checked
// for its form only (the upstream may start after mailsink does).
std::string parse_relay_address(const std::string& address) {
  if (address.rfind("unix:", 0) == 0) {
    if (address.size() < 7 || address[5] != '/')
      throw UsageError("needs unix:PATH with an absolute PATH, not '" + address + "'");
    return address;
  }
  const std::size_t colon = address.rfind(':');
  const std::string host = colon == std::string::npos ? "" : address.substr(0, colon);
  const std::string port = colon == std::string::npos ? "" : address.substr(colon + 1);
  if (host.empty() || !is_printable_ascii(host) || host.find(' ') != std::string::npos ||
      !is_digits(port, 5) || std::stoul(port) == 0 || std::stoul(port) > 65535)
    throw UsageError("needs HOST:PORT, [IPv6]:PORT or unix:PATH, not '" + address + "'");
  return address;
}

// parse_account - "USER:PASSWORD" split at the first ':', so the password may hold ':'. Throws
// UsageError for a missing ':', an empty user or an empty password; `what` names the text in
// the message ("the value", "the line"), which never quotes it: it holds a password.
std::pair<std::string, std::string> parse_account(const std::string& text, const char* what) {
  const std::size_t colon = text.find(':');
  if (colon == std::string::npos)
    throw UsageError(std::string("needs USER:PASSWORD, but ") + what + " has no ':'");
  if (colon == 0)
    throw UsageError(std::string("needs USER:PASSWORD, but ") + what + " has no user name");
  if (colon + 1 == text.size())
    throw UsageError(std::string("needs USER:PASSWORD, but ") + what + " has no password");
  return {text.substr(0, colon), text.substr(colon + 1)};
}

// add_account - add the account "USER:PASSWORD" to `users`; a user given twice is an error.
void add_account(Users& users, const std::string& text, const char* what) {
  auto [user, password] = parse_account(text, what);
  if (!users.emplace(user, std::move(password)).second)
    throw UsageError("gives user '" + user + "' a second time");
}

// add_limit_exempt - --limit-exempt CIDR: the first one replaces the default list (loopback),
// "none" leaves it empty, so the per-client limits and checks can be tried from loopback. The
// Server checks each CIDR when it starts.
void add_limit_exempt(Config& config, const std::string& cidr) {
  if (!config.limit_exempt_given) config.options.limit_exempt_networks.clear();
  config.limit_exempt_given = true;
  if (cidr != "none") config.options.limit_exempt_networks.push_back(cidr);
}

// is_esmtp_keyword - whether `word` is an esmtp-keyword (RFC 5321 §4.1.2): a letter or digit,
// then letters, digits and '-'.
bool is_esmtp_keyword(std::string_view word) {
  auto alphanumeric = [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
  };
  if (word.empty() || !alphanumeric(word[0])) return false;
  return std::all_of(word.begin(), word.end(), [&](char c) { return alphanumeric(c) || c == '-'; });
}

// upper_ascii - `text` with ASCII letters in upper case (ESMTP keywords are case-insensitive).
std::string upper_ascii(std::string text) {
  for (char& c : text)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  return text;
}

// is_one_of - whether `word` is in `list`.
bool is_one_of(const std::string& word, std::initializer_list<const char*> list) {
  return std::any_of(list.begin(), list.end(), [&](const char* item) { return word == item; });
}

// The parameters and EHLO keywords the library handles itself (with mailsink's flags): a
// --mail-parameter, --rcpt-parameter or --ehlo-keyword naming one would let it through unparsed
// or offer it twice.
const std::initializer_list<const char*> own_mail_parameters = {
    "SIZE", "BODY", "SMTPUTF8", "AUTH", "RET", "ENVID", "REQUIRETLS"};
const std::initializer_list<const char*> own_rcpt_parameters = {"NOTIFY", "ORCPT"};
const std::initializer_list<const char*> own_ehlo_keywords = {
    "SIZE",     "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES",
    "SMTPUTF8", "CHUNKING", "BINARYMIME", "DSN",
    "LIMITS",   "AUTH",     "STARTTLS",   "REQUIRETLS"};

// add_keyword - --mail-parameter and --rcpt-parameter: an esmtp-keyword that is not one of
// `own`, stored in upper case; the same keyword twice is an error.
void add_keyword(std::vector<std::string>& keywords, const std::string& keyword,
                 std::initializer_list<const char*> own) {
  if (!is_esmtp_keyword(keyword))
    throw UsageError("needs a parameter keyword (a letter or digit, then letters, digits and "
                     "'-'), not '" +
                     keyword + "'");
  std::string upper = upper_ascii(keyword);
  if (is_one_of(upper, own))
    throw UsageError("cannot take " + upper + ": it belongs to an extension mailsink implements");
  if (std::find(keywords.begin(), keywords.end(), upper) != keywords.end())
    throw UsageError("gives '" + upper + "' a second time");
  keywords.push_back(std::move(upper));
}

// max_ehlo_line - the longest --ehlo-keyword line: a reply line has 512 octets with "250-" and
// CRLF (RFC 5321 §4.5.3.1.5).
constexpr std::size_t max_ehlo_line = 506;

// parse_ehlo_line - --ehlo-keyword: an ehlo-line of RFC 5321 §4.1.1.1, a keyword and
// parameters of printable ASCII without spaces, one space between each.
std::string parse_ehlo_line(const std::string& line) {
  const std::size_t space = line.find(' ');
  const std::string keyword = line.substr(0, space);
  if (!is_esmtp_keyword(keyword))
    throw UsageError("needs an EHLO keyword (a letter or digit, then letters, digits and '-'), "
                     "not '" +
                     keyword + "'");
  if (is_one_of(upper_ascii(keyword), own_ehlo_keywords))
    throw UsageError("cannot add " + upper_ascii(keyword) +
                     ": mailsink decides itself whether to offer it");
  for (std::size_t start = space; start != std::string::npos;) {
    const std::size_t next = line.find(' ', start + 1);
    const std::string param = line.substr(start + 1, next - start - 1);
    if (param.empty() || !is_printable_ascii(param))
      throw UsageError("needs one space between parameters of printable ASCII, not '" + line + "'");
    start = next;
  }
  if (line.size() > max_ehlo_line)
    throw UsageError("is longer than " + std::to_string(max_ehlo_line) + " characters");
  return line;
}

// Flag - one command-line flag: its name, whether a value follows it, what it sets, and
// whether every later argument belongs to it too (--exec PROGRAM ARG...).
struct Flag {
  const char* name;
  bool takes_value;
  void (*apply)(Config& config, const std::string& value);
  bool takes_rest = false; // parse_args() appends the later arguments to Config::exec
};

// flags - every flag mailsink knows; print_usage() documents each one.
const Flag flags[] = {
    {"--listen", true, [](Config& c, const std::string& v) { c.options.addr = v; }},
    {"--socket-mode", true,
     [](Config& c, const std::string& v) {
       c.options.unix_socket_mode = parse_socket_mode(v);
       c.socket_mode_given = true;
     }},
    {"--lmtp", false, [](Config& c, const std::string&) { c.options.lmtp = true; }},
    {"--hostname", true, [](Config& c, const std::string& v) { c.options.hostname = v; }},
    // extensions
    {"--binarymime", false, [](Config& c, const std::string&) { c.options.binarymime = true; }},
    {"--dsn", false, [](Config& c, const std::string&) { c.options.dsn = true; }},
    {"--requiretls", false, [](Config& c, const std::string&) { c.options.requiretls = true; }},
    {"--mail-parameter", true,
     [](Config& c, const std::string& v) {
       add_keyword(c.options.mail_parameters, v, own_mail_parameters);
     }},
    {"--rcpt-parameter", true,
     [](Config& c, const std::string& v) {
       add_keyword(c.options.rcpt_parameters, v, own_rcpt_parameters);
     }},
    {"--ehlo-keyword", true,
     [](Config& c, const std::string& v) {
       c.options.ehlo_keywords.push_back(parse_ehlo_line(v));
     }},
    // delivery
    {"--maildir", true, [](Config& c, const std::string& v) { c.maildir = v; }},
    {"--mbox", true, [](Config& c, const std::string& v) { c.mbox = v; }},
    {"--exec", true, [](Config& c, const std::string& v) { c.exec = {v}; }, true},
    {"--exec-timeout", true,
     [](Config& c, const std::string& v) { c.exec_timeout = parse_count(v, max_timeout_seconds); }},
    {"--discard", false, [](Config& c, const std::string&) { c.discard = true; }},
    // output
    {"--json", false, [](Config& c, const std::string&) { c.json = true; }},
    {"--print-body", false, [](Config& c, const std::string&) { c.print_body = true; }},
    {"--quiet", false, [](Config& c, const std::string&) { c.quiet = true; }},
    {"--verbose", false, [](Config& c, const std::string&) { c.verbose = true; }},
    // stopping
    {"--count", true,
     [](Config& c, const std::string& v) {
       c.count = parse_count(v, std::numeric_limits<unsigned long long>::max());
     }},
    {"--exit-after", true,
     [](Config& c, const std::string& v) { c.exit_after = parse_count(v, max_timeout_seconds); }},
    // recipients and faults
    {"--accept-domain", true, [](Config& c, const std::string& v) { add_domain(c, v); }},
    {"--fail-rate", true, [](Config& c, const std::string& v) { c.fail_rate = parse_rate(v); }},
    {"--fail-reply", true, [](Config& c, const std::string& v) { c.fail_reply = parse_reply(v); }},
    {"--fail-recipient", true, [](Config& c, const std::string& v) { add_fail_recipient(c, v); }},
    {"--fail-stage", true, [](Config& c, const std::string& v) { c.fail_stage = parse_stage(v); }},
    {"--seed", true,
     [](Config& c, const std::string& v) {
       c.seed = parse_whole(v, std::numeric_limits<unsigned long long>::max());
     }},
    // limits
    {"--max-size", true,
     [](Config& c, const std::string& v) { c.options.max_message_bytes = parse_size(v); }},
    {"--max-recipients", true,
     [](Config& c, const std::string& v) { c.options.max_recipients = parse_size(v); }},
    {"--timeout", true, [](Config& c, const std::string& v) { set_timeout(c, v); }},
    {"--max-connections", true,
     [](Config& c, const std::string& v) { c.options.max_connections = parse_size(v); }},
    {"--limit-exempt", true, [](Config& c, const std::string& v) { add_limit_exempt(c, v); }},
    {"--strict", false, [](Config& c, const std::string&) { c.options.strict = true; }},
    // proxies and rates
    {"--proxy-from", true,
     [](Config& c, const std::string& v) { c.options.proxy_networks.push_back(v); }},
    {"--xclient-from", true,
     [](Config& c, const std::string& v) { c.options.xclient_networks.push_back(v); }},
    {"--trusted", true,
     [](Config& c, const std::string& v) { c.options.trusted_networks.push_back(v); }},
    {"--max-connection-rate", true,
     [](Config& c, const std::string& v) { c.options.max_connection_rate = parse_size(v); }},
    {"--max-message-rate", true,
     [](Config& c, const std::string& v) { c.options.max_message_rate = parse_size(v); }},
    {"--max-recipient-rate", true,
     [](Config& c, const std::string& v) { c.options.max_recipient_rate = parse_size(v); }},
    // TLS
    {"--tls-cert", true, [](Config& c, const std::string& v) { c.options.tls_cert_file = v; }},
    {"--tls-key", true, [](Config& c, const std::string& v) { c.options.tls_key_file = v; }},
    {"--tls-key-password", true,
     [](Config& c, const std::string& v) { c.options.tls_key_password = v; }},
    {"--tls-required", false, [](Config& c, const std::string&) { c.options.tls_required = true; }},
    {"--tls-implicit", false, [](Config& c, const std::string&) { c.options.tls_implicit = true; }},
    {"--tls-client-ca", true,
     [](Config& c, const std::string& v) { c.options.tls_client_ca_file = v; }},
    {"--tls-ciphers", true, [](Config& c, const std::string& v) { c.options.tls_ciphers = v; }},
    {"--tls-ciphersuites", true,
     [](Config& c, const std::string& v) { c.options.tls_ciphersuites = v; }},
    // AUTH
    {"--auth", true, [](Config& c, const std::string& v) { add_account(c.users, v, "the value"); }},
    {"--auth-file", true, [](Config& c, const std::string& v) { c.auth_files.push_back(v); }},
    {"--auth-required", false,
     [](Config& c, const std::string&) { c.options.auth_required = true; }},
    {"--auth-insecure", false,
     [](Config& c, const std::string&) { c.options.auth_insecure = true; }},
    // DNS checks
    {"--dns-server", true,
     [](Config& c, const std::string& v) { c.options.dns_servers.push_back(v); }},
    {"--dns-timeout", true,
     [](Config& c, const std::string& v) {
       c.options.dns_timeout = std::chrono::milliseconds(parse_count(v, 60000));
     }},
    {"--require-fcrdns", false,
     [](Config& c, const std::string&) { c.options.require_fcrdns = true; }},
    {"--helo-check", false, [](Config& c, const std::string&) { c.options.helo_check = true; }},
    {"--dnsbl", true, [](Config& c, const std::string& v) { c.options.dnsbl_zones.push_back(v); }},
    {"--rhsbl", true, [](Config& c, const std::string& v) { c.options.rhsbl_zones.push_back(v); }},
    {"--dns-at-rcpt", false,
     [](Config& c, const std::string&) { c.options.dns_refuse_at_rcpt = true; }},
    {"--dns-record-only", false,
     [](Config& c, const std::string&) {
       c.options.dnsbl_refuse = false;
       c.options.rhsbl_refuse = false;
     }},
    {"--dns-tempfail-pass", false,
     [](Config& c, const std::string&) { c.options.dns_temp_error_refuses = false; }},
    // relay
    {"--relay", true, [](Config& c, const std::string& v) { c.relay = parse_relay_address(v); }},
    {"--relay-tls", false, [](Config& c, const std::string&) { c.relay_tls = true; }},
    {"--relay-ca", true, [](Config& c, const std::string& v) { c.relay_ca = v; }},
    {"--relay-auth-file", true, [](Config& c, const std::string& v) { c.relay_auth_file = v; }},
    {"--relay-lmtp", false, [](Config& c, const std::string&) { c.relay_lmtp = true; }},
    {"--relay-timeout", true,
     [](Config& c, const std::string& v) { c.relay_timeout = parse_count(v, max_timeout_seconds); }},
    {"--help", false, [](Config& c, const std::string&) { c.help = true; }},
};

// is_flag - whether a command-line argument looks like a flag ("--something").
bool is_flag(const std::string& argument) {
  return argument.rfind("--", 0) == 0;
}

// find_flag - the flag called `name`, or nullptr.
const Flag* find_flag(const std::string& name) {
  for (const Flag& flag : flags)
    if (name == flag.name) return &flag;
  return nullptr;
}

// check_listen_flags - a "unix:PATH" --listen needs an absolute PATH: the socket is created
// where it says, and a relative one would depend on the directory mailsink was started in,
// which its clients (Postfix's lmtp, a Dovecot-style config) cannot know. --socket-mode needs
// a unix: --listen. A missing directory or a path too long for a socket is found when
// listening, before the startup line (exit status 1).
void check_listen_flags(const Config& config) {
  const std::string path = unix_listen_path(config.options.addr);
  const bool is_unix = config.options.addr.rfind("unix:", 0) == 0;
  if (is_unix && path.empty()) throw UsageError("--listen unix: needs a PATH");
  if (is_unix && path.front() != '/')
    throw UsageError("--listen unix:PATH needs an absolute PATH, not '" + path + "'");
  if (config.socket_mode_given && !is_unix)
    throw UsageError("--socket-mode needs --listen unix:PATH");
}

// check_relay_flags - the --relay-* flags need --relay, and --relay-ca needs --relay-tls (without
// it no TLS is used upstream, so there is nothing to verify).
void check_relay_flags(const Config& config) {
  if (config.relay.empty()) {
    const char* alone = config.relay_tls                  ? "--relay-tls"
                        : !config.relay_ca.empty()        ? "--relay-ca"
                        : !config.relay_auth_file.empty() ? "--relay-auth-file"
                        : config.relay_lmtp               ? "--relay-lmtp"
                        : config.relay_timeout != 0       ? "--relay-timeout"
                                                          : nullptr;
    if (alone != nullptr) throw UsageError(std::string(alone) + " needs --relay");
  }
  if (!config.relay_ca.empty() && !config.relay_tls)
    throw UsageError("--relay-ca needs --relay-tls");
}

// check_tls_flags - the TLS flags need each other: --tls-cert and --tls-key go together, and
// every other --tls-* flag needs both. Throws UsageError naming the first flag that is alone.
void check_tls_flags(const smtpd::Options& options) {
  const bool has_cert = !options.tls_cert_file.empty();
  const bool has_key = !options.tls_key_file.empty();
  if (has_cert && !has_key) throw UsageError("--tls-cert needs --tls-key");
  if (has_key && !has_cert) throw UsageError("--tls-key needs --tls-cert");
  if (has_cert) return;
  const char* alone = nullptr;
  if (!options.tls_key_password.empty())
    alone = "--tls-key-password";
  else if (options.tls_required)
    alone = "--tls-required";
  else if (options.tls_implicit)
    alone = "--tls-implicit";
  else if (!options.tls_client_ca_file.empty())
    alone = "--tls-client-ca";
  else if (options.tls_ciphers != smtpd::Options().tls_ciphers)
    alone = "--tls-ciphers";
  else if (options.tls_ciphersuites != smtpd::Options().tls_ciphersuites)
    alone = "--tls-ciphersuites";
  else if (options.requiretls)
    alone = "--requiretls";
  if (alone != nullptr) throw UsageError(std::string(alone) + " needs --tls-cert and --tls-key");
}

// check_auth_flags - --auth-required and --auth-insecure need a user from --auth or
// --auth-file. Throws UsageError naming the first flag that is alone.
void check_auth_flags(const Config& config) {
  if (!config.users.empty() || !config.auth_files.empty()) return;
  if (config.options.auth_required) throw UsageError("--auth-required needs --auth or --auth-file");
  if (config.options.auth_insecure) throw UsageError("--auth-insecure needs --auth or --auth-file");
}

// check_delivery_flags - at most one delivery mode; output flags that contradict each other or
// the mode; flags that only make sense with another one. Throws UsageError naming them.
void check_delivery_flags(Config& config) {
  std::vector<std::string> modes;
  if (!config.maildir.empty()) modes.push_back("--maildir");
  if (!config.mbox.empty()) modes.push_back("--mbox");
  if (!config.exec.empty()) modes.push_back("--exec");
  if (config.discard) modes.push_back("--discard");
  if (modes.size() > 1)
    throw UsageError(modes[0] + " and " + modes[1] + " are both delivery modes; give one");
  if (config.discard && config.json) throw UsageError("--discard prints nothing, not --json");
  if (config.discard && config.print_body)
    throw UsageError("--discard prints nothing, not --print-body");
  if (config.json && config.print_body)
    throw UsageError("--json and --print-body do not combine (the JSON has no body)");
  if (config.quiet && (config.json || config.print_body || config.verbose))
    throw UsageError(std::string("--quiet contradicts ") + (config.json         ? "--json"
                                                            : config.print_body ? "--print-body"
                                                                                : "--verbose"));
  if (config.exec_timeout && config.exec.empty()) throw UsageError("--exec-timeout needs --exec");
  if (!config.fail_rate) {
    if (config.fail_reply && config.fail_recipients.empty())
      throw UsageError("--fail-reply needs --fail-rate or --fail-recipient");
    if (config.fail_stage) throw UsageError("--fail-stage needs --fail-rate");
    if (config.seed) throw UsageError("--seed needs --fail-rate");
  }
  if (!config.fail_reply) config.fail_reply = parse_reply(default_fail_reply);
  if (!config.fail_stage) config.fail_stage = Stage::data;
  if (!config.exec_timeout) config.exec_timeout = default_exec_timeout_seconds;
}

// parse_args - read argv strictly: "--flag value" or "--flag=value"; throws UsageError for an
// unknown flag, a missing or empty value, a value given to a switch, a bad number, reply,
// domain or account, and for flags that contradict or need each other. --exec takes every
// argument after it, flags included: they are the program's.
Config parse_args(int argc, char** argv) {
  Config config;
  for (int i = 1; i < argc && !config.help; ++i) {
    std::string name = argv[i];
    std::optional<std::string> value;
    std::size_t equals = name.find('=');
    if (is_flag(name) && equals != std::string::npos) {
      value = name.substr(equals + 1);
      name.resize(equals);
    }
    const Flag* flag = find_flag(name);
    if (flag == nullptr) throw UsageError("unknown argument '" + name + "'");
    if (!flag->takes_value && value) throw UsageError(name + " takes no value");
    if (flag->takes_value && !value && i + 1 < argc && !is_flag(argv[i + 1])) value = argv[++i];
    if (flag->takes_value && (!value || value->empty())) throw UsageError(name + " needs a value");
    try {
      flag->apply(config, value.value_or(""));
    } catch (const UsageError& e) { throw UsageError(name + " " + e.what()); }
    if (flag->takes_rest) {
      config.exec.insert(config.exec.end(), argv + i + 1, argv + argc);
      break;
    }
  }
  if (!config.help) {
    check_relay_flags(config);
    check_listen_flags(config);
    check_tls_flags(config.options);
    check_auth_flags(config);
    check_delivery_flags(config);
  }
  return config;
}

// wrap_list - a ':'-separated list broken after a ':' so that no line, once indented by
// `indent` spaces, passes 80 columns; every line but the first starts with the indent.
std::string wrap_list(const std::string& list, std::size_t indent) {
  std::string text, line;
  for (std::size_t start = 0; start < list.size();) {
    std::size_t end = std::min(list.find(':', start), list.size() - 1) + 1; // ':' included
    std::string piece = list.substr(start, end - start);
    if (!line.empty() && indent + line.size() + piece.size() > 80) {
      text += line + "\n" + std::string(indent, ' ');
      line.clear();
    }
    line += piece;
    start = end;
  }
  return text + line;
}

// octal - `mode` as chmod(1) writes it: "0660".
std::string octal(unsigned mode) {
  char text[8];
  std::snprintf(text, sizeof text, "0%o", mode);
  return text;
}

// print_usage - the --help text; the defaults shown come from smtpd::Options itself.
void print_usage(std::ostream& out) {
  const smtpd::Options defaults;
  const auto timeout = std::chrono::duration_cast<std::chrono::seconds>(defaults.command_timeout);
  out << "usage: mailsink [options] [--exec PROGRAM [ARG...]]\n"
      << "\n"
      << "A mail catcher for developers and scripts: an SMTP (or LMTP) server that accepts\n"
      << "every message and prints a line about it, stores it, hands it to a program or drops\n"
      << "it. It relays mail only when --relay says where to.\n"
      << "\n"
      << "options (also accepted as --flag=value):\n"
      << "  --listen HOST:PORT    address to listen on (default " << default_listen << ");\n"
      << "                        [::1]:PORT for IPv6, :PORT for every address, port 0 for\n"
      << "                        any free port (the startup line tells which); or\n"
      << "                        unix:PATH, a Unix-domain socket at the absolute PATH: a\n"
      << "                        stale socket file there is replaced, a live one (another\n"
      << "                        server listening) is an error; the file is removed when\n"
      << "                        mailsink stops\n"
      << "  --socket-mode MODE    file mode of the unix: socket, in octal (default "
      << octal(defaults.unix_socket_mode) << "):\n"
      << "                        who may write to it may connect; needs --listen unix:PATH\n"
      << "  --lmtp                speak LMTP (RFC 2033) instead of SMTP: LHLO (HELO and EHLO\n"
      << "                        get 500), and one reply per accepted recipient after the\n"
      << "                        data, in RCPT order (default: SMTP)\n"
      << "  --hostname NAME       our name in the greeting and the Received header\n"
      << "                        (default: the system host name)\n"
      << "\n"
      << "extensions (CHUNKING, RFC 3030, is always offered: messages may come with BDAT):\n"
      << "  --binarymime          offer BINARYMIME (RFC 3030): a message sent with BDAT after\n"
      << "                        BODY=BINARYMIME may hold any octets (default: off)\n"
      << "  --dsn                 offer DSN (RFC 3461): RET and ENVID on MAIL, NOTIFY and ORCPT\n"
      << "                        on RCPT are accepted and shown by --json; mailsink sends no\n"
      << "                        notices (default: off, those parameters get 555)\n"
      << "  --requiretls          offer REQUIRETLS (RFC 8689), inside TLS only; needs\n"
      << "                        --tls-cert and --tls-key (default: off)\n"
      << "  --mail-parameter KEYWORD\n"
      << "                        accept the MAIL parameter KEYWORD[=VALUE] (shown by --json\n"
      << "                        in mail_params); repeatable; not one mailsink implements\n"
      << "                        (SIZE, BODY, AUTH, RET...) (default: unknown ones get 555)\n"
      << "  --rcpt-parameter KEYWORD\n"
      << "                        the same for RCPT (--json: rcpt_options' params)\n"
      << "  --ehlo-keyword LINE   add LINE, \"KEYWORD [PARAM...]\", to the EHLO reply;\n"
      << "                        repeatable; not a keyword mailsink offers itself (CHUNKING,\n"
      << "                        DSN...) (default: none)\n"
      << "\n"
      << "delivery, at most one (default: a summary line per message on stdout):\n"
      << "  --maildir DIR         store each message as a file in DIR/new, creating DIR,\n"
      << "                        DIR/tmp, DIR/new and DIR/cur if missing; synced to disk\n"
      << "                        before the client hears 250\n"
      << "  --mbox FILE           append each message to FILE in mboxrd format, creating it if\n"
      << "                        missing: a 'From SENDER DATE' line (MAILER-DAEMON for <>, the\n"
      << "                        date in UTC), the message with LF line ends (CRLF becomes LF)\n"
      << "                        and '>' before every line matching /^>*From /, then a blank\n"
      << "                        line. Appended under an fcntl() write lock, synced before 250\n"
      << "  --exec PROGRAM [ARG...]\n"
      << "                        run PROGRAM (found in PATH; never through a shell) for each\n"
      << "                        message, with every later argument as its arguments, so\n"
      << "                        --exec comes last. The message is on its stdin; its stdout\n"
      << "                        goes to our stderr. Its environment adds SMTPD_FROM (empty\n"
      << "                        for <>), SMTPD_TO (one recipient a line: those delivered\n"
      << "                        to), SMTPD_PEER (IP:PORT, or unix:PATH[pid=N,uid=N,gid=N]\n"
      << "                        for a Unix-socket client), SMTPD_HELO, SMTPD_TLS (0, or the\n"
      << "                        TLS version) and SMTPD_AUTH_USER (empty if none). Exit\n"
      << "                        status 0 accepts (250); 75 (EX_TEMPFAIL) answers 451\n"
      << "                        4.3.0; any other answers 550 5.0.0 with the first line of\n"
      << "                        its stderr (printable ASCII, at most 200 characters);\n"
      << "                        killed or too slow: 451 4.3.0\n"
      << "  --exec-timeout SECONDS\n"
      << "                        kill the --exec program's process group after this long\n"
      << "                        (default " << default_exec_timeout_seconds << ")\n"
      << "  --discard             accept every message and drop it, printing nothing per\n"
      << "                        message (for benchmarks)\n"
      << "\n"
      << "output:\n"
      << "  --json                print one JSON object per message on stdout, one line each,\n"
      << "                        instead of the summary line (also with --maildir, --mbox,\n"
      << "                        --exec): time (RFC 3339, UTC), peer, helo, tls (version or\n"
      << "                        null), auth_user (or null), from, to (array), size, subject\n"
      << "                        and message_id (null when the header is missing), path (the\n"
      << "                        Maildir file or mbox, else null), body (7BIT, 8BITMIME or\n"
      << "                        BINARYMIME), chunked (true: sent with BDAT), requiretls, ret,\n"
      << "                        envid and auth (MAIL's RET=, ENVID= and AUTH=, decoded, or\n"
      << "                        null), mail_params (every MAIL parameter: KEYWORD: value),\n"
      << "                        rcpt_options (one per recipient in to: notify, an array or\n"
      << "                        null; orcpt, \"TYPE;ADDRESS\" or null; params, every RCPT\n"
      << "                        parameter), delivered_to (the recipients it was delivered\n"
      << "                        to: to without those --fail-recipient or the --relay\n"
      << "                        upstream refused in LMTP), unix_path, pid, uid and gid (a\n"
      << "                        Unix-socket client's socket and credentials, null over\n"
      << "                        TCP) (default: summary lines)\n"
      << "  --print-body          print the message itself after its summary line (default:\n"
      << "                        the summary line only)\n"
      << "  --quiet               print nothing per message and no startup line; errors\n"
      << "                        still go to stderr (default: not quiet)\n"
      << "  --verbose             print the SMTP transcript on stderr, 'C:' for what the client\n"
      << "                        sent and 'S:' for our replies, line by line as the library's\n"
      << "                        tracer saw them: AUTH secrets masked, message content\n"
      << "                        included, but a BDAT chunk only as 'C: <N octets>'\n"
      << "                        (default: no transcript)\n"
      << "\n"
      << "stopping (besides SIGINT and SIGTERM):\n"
      << "  --count N             exit 0 once N messages were accepted: take no new client,\n"
      << "                        give open sessions 2 s to QUIT, then stop. Later messages\n"
      << "                        are refused with 451 4.3.2 (default: no limit)\n"
      << "  --exit-after SECONDS  stop after SECONDS: exit 1 when --count was given and fewer\n"
      << "                        messages arrived, exit 0 without --count (default: no limit)\n"
      << "\n"
      << "relay (pass each message on before answering; default: no relaying):\n"
      << "  --relay HOST:PORT     pass each accepted message on to this SMTP server ([IPv6]:PORT,\n"
      << "                        or unix:PATH) while the client waits: the client's reply is\n"
      << "                        the upstream's verdict, per recipient (a 250 only after the\n"
      << "                        upstream's 250; its refusals passed back; no connection, a\n"
      << "                        failed TLS check or a time-out: 451 4.4.1). It comes before\n"
      << "                        the delivery mode, which then gets only what the upstream\n"
      << "                        accepted; if that fails, the client hears 451 and retries, and\n"
      << "                        the upstream gets the message twice (never lost). In SMTP a\n"
      << "                        recipient the upstream refuses refuses the whole message\n"
      << "  --relay-tls           require STARTTLS upstream, verifying its certificate chain\n"
      << "                        and host name (default: no TLS upstream)\n"
      << "  --relay-ca FILE       verify it with the PEM CAs in FILE (default: the system's);\n"
      << "                        needs --relay-tls\n"
      << "  --relay-auth-file FILE\n"
      << "                        AUTH upstream as the one USER:PASSWORD line of FILE (the\n"
      << "                        --auth-file format); without --relay-tls the password is sent\n"
      << "                        in clear (default: no AUTH)\n"
      << "  --relay-lmtp          speak LMTP upstream (LHLO; one reply per recipient)\n"
      << "  --relay-timeout SECONDS\n"
      << "                        the limit on each step upstream: connecting, each reply\n"
      << "                        (default " << default_relay_timeout_seconds << ")\n"
      << "\n"
      << "recipients and faults:\n"
      << "  --accept-domain DOMAIN\n"
      << "                        accept recipients in DOMAIN only (exact match of the part\n"
      << "                        after the last '@', any case); repeatable. Others get '550\n"
      << "                        5.1.1 Recipient address rejected: domain not accepted';\n"
      << "                        <postmaster> is always accepted (default: every domain)\n"
      << "  --fail-rate P         refuse the --fail-stage command with probability P, from 0\n"
      << "                        to 1, to test a sender's retry logic (default: 0, never)\n"
      << "  --fail-reply \"CODE [X.Y.Z] TEXT\"\n"
      << "                        the refusal: a 4xx or 5xx code, an optional enhanced code of\n"
      << "                        the same class, printable text\n"
      << "                        (default \"" << default_fail_reply << "\")\n"
      << "  --fail-recipient ADDRESS\n"
      << "                        refuse ADDRESS (any case) after the data with the\n"
      << "                        --fail-reply; repeatable. With --lmtp that recipient gets\n"
      << "                        the refusal as its own reply and the others are delivered;\n"
      << "                        in SMTP the one reply is the refusal, so the whole message\n"
      << "                        is refused and stored for nobody (default: none)\n"
      << "  --fail-stage mail|rcpt|data\n"
      << "                        which command is refused: MAIL, each RCPT, or the message at\n"
      << "                        the end of DATA (default data)\n"
      << "  --seed N              seed of the random numbers --fail-rate draws, for\n"
      << "                        reproducible runs (default: a random seed)\n"
      << "\n"
      << "limits:\n"
      << "  --max-size BYTES      largest message accepted, advertised as SIZE\n"
      << "                        (default " << defaults.max_message_bytes << ")\n"
      << "  --max-recipients N    most recipients of one message (default "
      << defaults.max_recipients << ")\n"
      << "  --timeout SECONDS     close a connection silent this long, in commands or in\n"
      << "                        message data; at most " << max_timeout_seconds << " (default "
      << timeout.count() << ")\n"
      << "  --max-connections N   clients served at once; more are refused with 421\n"
      << "                        (default " << defaults.max_connections << ")\n"
      << "  --limit-exempt CIDR   clients the per-client limits do not apply to (repeatable;\n"
      << "                        \"none\": every client is held to them); the first one\n"
      << "                        replaces the default, 127.0.0.0/8 and ::1/128\n"
      << "  --strict              refuse bare CR or LF in messages, over-long lines, and\n"
      << "                        MAIL/RCPT syntax RFC 5321 does not allow (default: lenient)\n"
      << "\n"
      << "proxies and rates:\n"
      << "  --proxy-from CIDR     clients there (HAProxy) must begin with a PROXY protocol\n"
      << "                        v1/v2 header naming the real client (repeatable; default:\n"
      << "                        none, every client is served directly)\n"
      << "  --xclient-from CIDR   clients there (nginx's mail proxy) may send XCLIENT\n"
      << "                        (repeatable; default: none)\n"
      << "  --trusted CIDR        clients there are not held to --tls-required or to AUTH\n"
      << "                        (repeatable; default: none)\n"
      << "  --max-connection-rate N\n"
      << "                        connections per client address per minute, then 421\n"
      << "                        (default: no limit)\n"
      << "  --max-message-rate N  messages (MAIL) per client address per minute, then 450\n"
      << "                        (default: no limit)\n"
      << "  --max-recipient-rate N\n"
      << "                        recipients (RCPT) per client address per minute, then 450\n"
      << "                        (default: no limit); --limit-exempt clients have none\n"
      << "\n"
      << "TLS:\n"
      << "  --tls-cert FILE       offer STARTTLS (RFC 3207) with this PEM certificate chain,\n"
      << "                        leaf first; needs --tls-key (default: no TLS)\n"
      << "  --tls-key FILE        the PEM private key of --tls-cert\n"
      << "  --tls-key-password PASS\n"
      << "                        passphrase of an encrypted --tls-key (default: none)\n"
      << "  --tls-required        refuse mail until the client has said STARTTLS (530);\n"
      << "                        needs --tls-cert and --tls-key (default: TLS optional)\n"
      << "  --tls-implicit        TLS from the first byte, before the greeting (RFC 8314,\n"
      << "                        port 465 style) instead of STARTTLS; needs --tls-cert\n"
      << "                        and --tls-key\n"
      << "  --tls-client-ca FILE  ask clients for a certificate and verify it with the PEM\n"
      << "                        CAs in FILE; clients without one are still served; needs\n"
      << "                        --tls-cert and --tls-key (default: no client certificates)\n"
      << "  --tls-ciphers LIST    the TLS 1.2 ciphers, in order of preference, in OpenSSL's\n"
      << "                        syntax (openssl-ciphers(1)); widen it only for old clients,\n"
      << "                        e.g. append :AES128-SHA; needs --tls-cert and --tls-key\n"
      << "                        (default: ECDHE with AES-GCM or ChaCha20-Poly1305 only:\n"
      << "                        " << wrap_list(defaults.tls_ciphers + ")", 24) << "\n"
      << "  --tls-ciphersuites LIST\n"
      << "                        the TLS 1.3 suites, in order of preference, ':' between\n"
      << "                        names; needs --tls-cert and --tls-key (default:\n"
      << "                        " << wrap_list(defaults.tls_ciphersuites + ")", 24) << "\n"
      << "\n"
      << "AUTH:\n"
      << "  --auth USER:PASSWORD  offer AUTH (RFC 4954: PLAIN, LOGIN, CRAM-MD5) and accept USER\n"
      << "                        with PASSWORD; split at the first ':', so the password may\n"
      << "                        hold ':'; repeat for more users. Any local user can read a\n"
      << "                        command line with ps: prefer --auth-file (default: no AUTH)\n"
      << "  --auth-file FILE      read users from FILE, one USER:PASSWORD a line; blank lines\n"
      << "                        and lines starting with '#' are ignored; repeatable. A bad\n"
      << "                        line stops mailsink before it listens\n"
      << "  --auth-required       refuse mail until the client has authenticated (530); needs\n"
      << "                        --auth or --auth-file (default: AUTH optional)\n"
      << "  --auth-insecure       offer PLAIN and LOGIN without TLS too, which sends passwords\n"
      << "                        in clear: for tests on loopback only; needs --auth or\n"
      << "                        --auth-file (default: before STARTTLS only CRAM-MD5)\n"
      << "\n"
      << "DNS checks (for clients outside --limit-exempt; all off by default):\n"
      << "  --dns-server IP[:PORT]\n"
      << "                        ask this DNS server (IPv4; repeatable; default: the servers\n"
      << "                        of /etc/resolv.conf)\n"
      << "  --dns-timeout MS      give up a round of lookups after MS milliseconds (default "
      << defaults.dns_timeout.count() << ")\n"
      << "  --require-fcrdns      refuse clients without forward-confirmed reverse DNS\n"
      << "                        (554 in the greeting, 550 5.7.25 at RCPT)\n"
      << "  --helo-check          refuse a HELO/EHLO name that is not the client's (550 5.7.1)\n"
      << "  --dnsbl ZONE          refuse clients whose IP is listed in ZONE (RFC 5782; 554\n"
      << "                        5.7.1 with the zone and its TXT reason); repeatable\n"
      << "  --rhsbl ZONE          refuse at MAIL a HELO name or sender domain listed in ZONE;\n"
      << "                        repeatable\n"
      << "  --dns-at-rcpt         refuse for FCrDNS and DNSBL at each RCPT, not in the greeting\n"
      << "  --dns-record-only     do not refuse for DNSBL and RHSBL listings, only show them\n"
      << "  --dns-tempfail-pass   let a client through when a check meets a DNS failure\n"
      << "                        (default: 421 in the greeting, 450 4.7.25 or 4.7.1 later)\n"
      << "--json shows the results in a \"dns\" field when a DNS check is on.\n"
      << "\n"
      << "  --help                print this help and exit\n"
      << "\n"
      << "The summary line of a message: local time, client, the TLS version when the session\n"
      << "used TLS, auth=USER when the client authenticated, <sender> -> <recipients>, size,\n"
      << "subject, and the stored file's path with --maildir or --mbox.\n"
      << "A client that fails AUTH " << defaults.auth_max_failures
      << " times in one session is disconnected.\n"
      << "SIGINT or SIGTERM stops mailsink gracefully; messages being received are finished.\n"
      << "Every check (flags, paths, the --exec program, the address) is done before\n"
      << "mailsink listens; the line 'mailsink: listening on ADDRESS' on stderr says it is\n"
      << "ready.\n"
      << "\n"
      << "exit status:\n"
      << "  " << exit_ok << "  stopped by SIGINT or SIGTERM, --count reached, --exit-after\n"
      << "     passed without --count, or --help\n"
      << "  " << exit_runtime_error
      << "  setup or runtime error (unusable maildir, mbox, --exec program, TLS\n"
      << "     certificate or key, --auth-file, or address to listen on), or --exit-after\n"
      << "     passed before --count messages arrived\n"
      << "  " << exit_usage_error
      << "  usage error (unknown flag, missing or bad value, two delivery modes,\n"
      << "     flags that contradict each other or lack the flag they need)\n";
}

// =============================================================================================
// 2. Output
// =============================================================================================

// printable - `text` with control characters replaced by '?', so a hostile subject or command
// cannot send escape sequences to the terminal or break a line in two.
std::string printable(std::string text) {
  for (char& c : text) {
    const unsigned char byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) c = '?';
  }
  return text;
}

// Output - stdout and stderr, shared by every connection thread; one lock keeps each message
// and each stderr line whole.
class Output {
public:
  // print - write `text` to stdout and flush, so a script reading the pipe sees it at once.
  void print(const std::string& text) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::cout << text << std::flush;
  }

  // log - write "mailsink: `text`" as one line to stderr: errors, and the startup line.
  void log(const std::string& text) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::cerr << "mailsink: " + text + "\n" << std::flush;
  }

  // transcript - one --verbose line: "mailsink: PEER C: LINE" for what the client sent, or
  // "S:" for a reply (`from_client` false). The library has masked AUTH secrets already.
  void transcript(const smtpd::Peer& peer, bool from_client, std::string_view line) {
    log(peer.to_string() + (from_client ? " C: " : " S: ") + printable(std::string(line)));
  }

private:
  std::mutex mutex_;
};

// =============================================================================================
// 3. Maildir
//
// A Maildir never shows a half-written message: a delivery writes the file under a unique name
// in DIR/tmp, syncs it to disk, then renames it into DIR/new, where mail readers look. Only after
// the rename is on disk may the server answer 250 and the client forget the message.
// =============================================================================================

// errno_error - a std::system_error whose what() reads "`what`: No space left on device".
std::system_error errno_error(const std::string& what, int error_number = errno) {
  return std::system_error(error_number, std::generic_category(), what);
}

// write_all - write all of `content` to `fd`, carrying on after short writes and EINTR.
// Returns false with errno set on failure.
bool write_all(int fd, std::string_view content) {
  const char* next = content.data();
  std::size_t left = content.size();
  while (left > 0) {
    ssize_t written = ::write(fd, next, left);
    if (written < 0 && errno == EINTR) continue;
    if (written < 0) return false;
    next += written;
    left -= static_cast<std::size_t>(written);
  }
  return true;
}

// create_file - create `path`, which must not exist yet, with `content`, synced to disk.
// On failure removes what it created and throws std::system_error.
void create_file(const std::string& path, const std::string& content) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) throw errno_error("create " + path);
  const char* failed_step = nullptr;
  int failure = 0;
  if (!write_all(fd, content)) {
    failed_step = "write ";
    failure = errno;
  } else if (::fsync(fd) != 0) {
    failed_step = "fsync ";
    failure = errno;
  }
  if (::close(fd) != 0 && failed_step == nullptr) { // NFS may report a failed write only here
    failed_step = "close ";
    failure = errno;
  }
  if (failed_step == nullptr) return;
  ::unlink(path.c_str());
  throw errno_error(failed_step + path, failure);
}

// sync_directory - flush a directory's entries to disk, so a rename into it survives a crash.
void sync_directory(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw errno_error("open " + path);
  const bool synced = ::fsync(fd) == 0;
  const int failure = errno;
  ::close(fd);
  if (!synced) throw errno_error("fsync " + path, failure);
}

// make_directory - create `path` with mode 0700 unless it exists already.
void make_directory(const std::string& path) {
  if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST)
    throw errno_error("create directory " + path);
}

// maildir_host_name - the system host name, with '/' and ':' written as "\057" and "\072"
// because a Maildir file name may not contain them (maildir(5)).
std::string maildir_host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
  std::string safe;
  for (const char* c = name; *c != '\0'; ++c) {
    if (*c == '/')
      safe += "\\057";
    else if (*c == ':')
      safe += "\\072";
    else
      safe += *c;
  }
  return safe;
}

// Maildir - one Maildir directory; deliver() may be called from many threads at once.
class Maildir {
public:
  explicit Maildir(std::string dir) : dir_(std::move(dir)), host_(maildir_host_name()) {}

  // prepare - create DIR, DIR/tmp, DIR/new and DIR/cur if missing, and prove that a file can
  // be created in DIR/tmp. Throws std::system_error with the path and reason.
  void prepare() {
    for (const char* sub : {"", "/tmp", "/new", "/cur"})
      make_directory(dir_ + sub);
    const std::string probe = dir_ + "/tmp/" + unique_name();
    create_file(probe, "");
    ::unlink(probe.c_str());
  }

  // deliver - store `message` as DIR/new/NAME and return that path, once it is safe on disk.
  // Throws std::system_error, after removing the partial file, when it could not be stored.
  std::string deliver(const std::string& message) {
    const std::string name = unique_name();
    const std::string tmp_path = dir_ + "/tmp/" + name;
    const std::string new_path = dir_ + "/new/" + name;
    create_file(tmp_path, message);
    if (::rename(tmp_path.c_str(), new_path.c_str()) != 0) {
      std::system_error error = errno_error("rename " + tmp_path + " to " + new_path);
      ::unlink(tmp_path.c_str());
      throw error;
    }
    try {
      sync_directory(dir_ + "/new");
    } catch (const std::system_error&) {
      ::unlink(new_path.c_str()); // the client will be told 451 and send it again
      throw;
    }
    return new_path;
  }

private:
  // unique_name - "<seconds>.M<microseconds>P<pid>Q<counter>.<host>" (maildir(5)): unique across
  // time (the clock), processes (the pid) and this process's threads (the atomic counter).
  std::string unique_name() {
    using namespace std::chrono;
    const auto since_epoch = system_clock::now().time_since_epoch();
    const auto whole_seconds = duration_cast<seconds>(since_epoch);
    const auto micros = duration_cast<microseconds>(since_epoch - whole_seconds);
    return std::to_string(whole_seconds.count()) + ".M" + std::to_string(micros.count()) + "P" +
           std::to_string(::getpid()) + "Q" + std::to_string(++counter_) + "." + host_;
  }

  const std::string dir_;
  const std::string host_;
  std::atomic<unsigned long> counter_{0};
};

// =============================================================================================
// 4. Mbox
//
// One file holds every message, each starting with a "From " line, so a body line starting with
// "From " must be quoted. mboxrd quotes reversibly: a '>' goes before every line matching
// /^>*From /, and a reader removes one '>' from each such line. Appends are serialised twice:
// a mutex among our own threads (fcntl locks belong to the process, so they do not exclude our
// own threads) and an fcntl() write lock against other programs (mail readers, another
// mailsink). A failed append is cut off again, so the file never keeps half a message.
// =============================================================================================

// asctime_utc_now - the current time in UTC as asctime() writes it: "Thu Nov 22 11:00:00 2026".
std::string asctime_utc_now() {
  std::time_t now = std::time(nullptr);
  std::tm parts{};
  ::gmtime_r(&now, &parts);
  char text[64];
  std::strftime(text, sizeof text, "%a %b %e %H:%M:%S %Y", &parts);
  return text;
}

// from_line_sender - the envelope sender for the "From " line: MAILER-DAEMON for the null
// sender <>, and spaces or control characters (possible in a quoted local part) as '_', since
// readers split the line at spaces.
std::string from_line_sender(const std::string& from) {
  if (from.empty()) return "MAILER-DAEMON";
  std::string sender = from;
  for (char& c : sender) {
    const unsigned char byte = static_cast<unsigned char>(c);
    if (byte <= 0x20 || byte == 0x7f) c = '_';
  }
  return sender;
}

// needs_from_quoting - whether `line` matches /^>*From / (mboxrd).
bool needs_from_quoting(std::string_view line) {
  const std::size_t arrows = line.find_first_not_of('>');
  return arrows != std::string_view::npos && line.substr(arrows, 5) == "From ";
}

// mbox_entry - one message as mboxrd: the "From " line, the message with CRLF turned into LF
// and /^>*From / lines quoted with one more '>', a final LF if it had none, and a blank line.
std::string mbox_entry(const std::string& from, const std::string& message) {
  std::string entry = "From " + from_line_sender(from) + " " + asctime_utc_now() + "\n";
  entry.reserve(entry.size() + message.size() + message.size() / 32 + 2);
  std::size_t start = 0;
  while (start < message.size()) {
    std::size_t end = message.find('\n', start);
    const bool has_lf = end != std::string::npos;
    if (!has_lf) end = message.size();
    std::string_view line(message.data() + start, end - start);
    if (has_lf && !line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (needs_from_quoting(line)) entry += '>';
    entry.append(line.data(), line.size());
    entry += '\n';
    start = end + 1;
  }
  entry += '\n';
  return entry;
}

// FileCloser - closes a file descriptor when it goes out of scope.
struct FileCloser {
  int fd;

  ~FileCloser() {
    if (fd >= 0) ::close(fd);
  }
};

// Mbox - one mbox file; deliver() may be called from many threads at once.
class Mbox {
public:
  explicit Mbox(std::string path) : path_(std::move(path)) {}

  // prepare - create the file if missing and prove it can be opened for appending. Throws
  // std::system_error with the path and reason.
  void prepare() { FileCloser file{open_file()}; }

  // deliver - append `message` from `from` and return once it is on disk. Throws
  // std::system_error, after cutting off a partial append, when it could not be stored.
  void deliver(const std::string& from, const std::string& message) {
    const std::string entry = mbox_entry(from, message);
    std::lock_guard<std::mutex> threads(mutex_);
    FileCloser file{open_file()};

    struct flock lock {};

    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET; // l_start 0, l_len 0: the whole file, however long it grows
    while (::fcntl(file.fd, F_SETLKW, &lock) != 0)
      if (errno != EINTR) throw errno_error("lock " + path_);

    struct stat before {};

    if (::fstat(file.fd, &before) != 0) throw errno_error("stat " + path_);
    // The file should end with a blank line; a message must not glue onto a partial last line.
    const std::string separator = separator_needed(file.fd, before.st_size);
    const char* failed_step = nullptr;
    if (!write_all(file.fd, separator + entry))
      failed_step = "write ";
    else if (::fsync(file.fd) != 0)
      failed_step = "fsync ";
    if (failed_step == nullptr) return; // closing the file releases the lock
    const int failure = errno;
    if (::ftruncate(file.fd, before.st_size) == 0) ::fsync(file.fd);
    throw errno_error(failed_step + path_, failure);
  }

private:
  // open_file - open (creating it, mode 0600) for appending; reading too, for
  // separator_needed(). Throws std::system_error.
  int open_file() const {
    int fd = ::open(path_.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) throw errno_error("open " + path_);
    return fd;
  }

  // separator_needed - what to write before the next "From " line in a file of `size` bytes:
  // nothing if it is empty or ends with "\n\n", else the line ends it lacks.
  static std::string separator_needed(int fd, off_t size) {
    if (size == 0) return "";
    char tail[2] = {'\n', '\n'};
    const off_t start = size >= 2 ? size - 2 : 0;
    const ssize_t got = ::pread(fd, tail + (size >= 2 ? 0 : 1), size >= 2 ? 2 : 1, start);
    if (got <= 0) return ""; // unreadable: append as if it ended well
    if (tail[1] != '\n') return "\n\n";
    return tail[0] == '\n' ? "" : "\n";
  }

  const std::string path_;
  std::mutex mutex_;
};

// =============================================================================================
// 5. Exec - one program run per message
//
// The program is run with fork() and execve(), never through a shell, so nothing in an envelope
// address is ever parsed as a command: addresses reach it only as environment values. Its path
// is found in PATH once, before listening, so a missing program stops mailsink at once and the
// child does not search (execvp may allocate, and would hand a script without "#!" to /bin/sh).
// Everything the child needs (argv, the environment) is built before fork(): between fork()
// and execve() a child of a threaded process may only call async-signal-safe functions.
// Each run has its own process group, so a time-out kills the program and everything it
// started; the child is always waited for, and every descriptor we open is close-on-exec.
// =============================================================================================

// ExecOutcome - how a program run ended.
struct ExecOutcome {
  enum Kind { exited, killed, timed_out } kind = exited;

  int status = 0;          // the exit status (exited) or the signal (killed)
  std::string stderr_text; // the start of what it wrote to stderr
};

// find_program - the path execve() should run for `name`: `name` itself when it holds a '/',
// else the first executable regular file DIR/name for DIR in $PATH (an empty entry is the
// current directory). Throws std::runtime_error when there is none.
std::string find_program(const std::string& name) {
  auto runnable = [](const std::string& path) {
    struct stat info {};
    return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode) &&
           ::access(path.c_str(), X_OK) == 0;
  };
  if (name.find('/') != std::string::npos) {
    if (!runnable(name)) throw errno_error("cannot run --exec program " + name);
    return name;
  }
  const char* path_variable = std::getenv("PATH");
  const std::string search = path_variable != nullptr ? path_variable : "/usr/bin:/bin";
  std::size_t start = 0;
  for (;;) {
    const std::size_t end = std::min(search.find(':', start), search.size());
    const std::string dir = search.substr(start, end - start);
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (runnable(candidate)) return candidate;
    if (end == search.size()) break;
    start = end + 1;
  }
  throw std::runtime_error("cannot find --exec program " + name + " in PATH");
}

// first_line_sanitised - the first line of `text` made safe for an SMTP reply: printable ASCII
// only (other bytes become '?'), spaces trimmed, at most `limit` characters.
std::string first_line_sanitised(const std::string& text, std::size_t limit) {
  std::string line = text.substr(0, text.find('\n'));
  if (!line.empty() && line.back() == '\r') line.pop_back();
  for (char& c : line)
    if (c < ' ' || c > '~') c = '?';
  const std::size_t first = line.find_first_not_of(' ');
  if (first == std::string::npos) return "";
  line = line.substr(first, line.find_last_not_of(' ') + 1 - first);
  if (line.size() > limit) line.resize(limit);
  return line;
}

// exec_environment - our environment without any SMTPD_* variable we set, plus those, as
// "NAME=VALUE" strings.
std::vector<std::string> exec_environment(const smtpd::SessionInfo& session,
                                          const smtpd::Envelope& envelope) {
  std::string to;
  for (const std::string& recipient : envelope.to)
    to += (to.empty() ? "" : "\n") + recipient;
  const std::vector<std::string> ours = {
      "SMTPD_FROM=" + envelope.from,
      "SMTPD_TO=" + to,
      "SMTPD_PEER=" + session.peer.to_string(),
      "SMTPD_HELO=" + session.helo,
      "SMTPD_TLS=" + (session.tls ? session.tls_version : std::string("0")),
      "SMTPD_AUTH_USER=" + session.auth_user,
  };
  std::vector<std::string> environment;
  for (char** variable = environ; *variable != nullptr; ++variable) {
    const std::string_view entry(*variable);
    const std::string_view name = entry.substr(0, entry.find('=') + 1); // "NAME="
    const bool replaced = std::any_of(ours.begin(), ours.end(), [&](const std::string& mine) {
      return std::string_view(mine).substr(0, name.size()) == name;
    });
    if (!replaced) environment.emplace_back(entry);
  }
  environment.insert(environment.end(), ours.begin(), ours.end());
  return environment;
}

// pointers - the char* array execve() wants, ending in nullptr; valid while `strings` lives.
std::vector<char*> pointers(std::vector<std::string>& strings) {
  std::vector<char*> result;
  for (std::string& s : strings)
    result.push_back(s.data());
  result.push_back(nullptr);
  return result;
}

// close_descriptors_above_stderr - in an --exec child: close every descriptor but 0, 1 and
// 2, so that the program gets none of ours (ours are close-on-exec anyway) nor any that
// mailsink itself inherited. Async-signal-safe; `highest` bounds the fallback loop.
void close_descriptors_above_stderr(int highest) {
#ifdef SYS_close_range
  if (::syscall(SYS_close_range, 3u, ~0u, 0u) == 0) return;
#endif
  for (int fd = 3; fd <= highest; ++fd)
    ::close(fd);
}

// Pipe - a pipe whose ends are closed when it goes out of scope, unless closed before.
struct Pipe {
  int read_end = -1;
  int write_end = -1;

  Pipe() {
    int ends[2];
    if (::pipe2(ends, O_CLOEXEC) != 0) throw errno_error("pipe");
    read_end = ends[0];
    write_end = ends[1];
  }

  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;

  ~Pipe() {
    close(read_end);
    close(write_end);
  }

  static void close(int& fd) {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

// Runner - runs the --exec program; run() may be called from many threads at once.
class Runner {
public:
  Runner(std::vector<std::string> argv, std::chrono::seconds limit)
      : argv_(std::move(argv)), limit_(limit) {}

  // prepare - find the program in PATH. Throws std::runtime_error when there is none.
  void prepare() { path_ = find_program(argv_.front()); }

  const std::string& name() const { return argv_.front(); }

  // run - run the program with `message` on its stdin and the session in its environment.
  // Throws std::system_error when it cannot even be started (no pipe, no fork).
  ExecOutcome run(const smtpd::SessionInfo& session, const smtpd::Envelope& envelope,
                  const std::string& message) const {
    std::vector<std::string> argv_strings = argv_;
    std::vector<std::string> env_strings = exec_environment(session, envelope);
    std::vector<char*> argv = pointers(argv_strings);
    std::vector<char*> envp = pointers(env_strings);
    const std::string exec_failed = "mailsink: cannot run " + path_ + "\n";
    const long open_max = ::sysconf(_SC_OPEN_MAX);
    const int highest_fd = open_max > 0 && open_max < 65536 ? static_cast<int>(open_max) : 65536;
    sigset_t no_signals;
    sigemptyset(&no_signals);

    struct sigaction default_action {};

    default_action.sa_handler = SIG_DFL;
    Pipe input;  // the message, to the program's stdin
    Pipe errors; // the program's stderr, to us
    const auto deadline = std::chrono::steady_clock::now() + limit_;

    const pid_t pid = ::fork();
    if (pid < 0) throw errno_error("fork");
    if (pid == 0) { // the child: async-signal-safe calls only, then execve() or _exit()
      ::setpgid(0, 0);
      ::dup2(input.read_end, STDIN_FILENO);
      ::dup2(STDERR_FILENO, STDOUT_FILENO); // its stdout: our stderr, never our stdout
      ::dup2(errors.write_end, STDERR_FILENO);
      close_descriptors_above_stderr(highest_fd);
      ::sigprocmask(SIG_SETMASK, &no_signals, nullptr); // we block SIGINT and SIGTERM
      ::sigaction(SIGPIPE, &default_action, nullptr);   // and ignore SIGPIPE, which exec keeps
      ::execve(path_.c_str(), argv.data(), envp.data());
      ssize_t ignored = ::write(STDERR_FILENO, exec_failed.data(), exec_failed.size());
      (void)ignored;
      ::_exit(75); // EX_TEMPFAIL: the program may be back by the time the client retries
    }
    ::setpgid(pid, pid); // also here, so that a kill of the group cannot come before it exists
    Pipe::close(input.read_end);
    Pipe::close(errors.write_end);
    ExecOutcome outcome;
    if (!exchange(input.write_end, errors.read_end, message, outcome.stderr_text, deadline) ||
        !wait_until(pid, outcome, deadline)) {
      ::kill(-pid, SIGKILL);
      ::kill(pid, SIGKILL);
      int status = 0;
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
      outcome.kind = ExecOutcome::timed_out;
    }
    return outcome;
  }

private:
  // exchange - write `message` to `to_child` and read `from_child` (its stderr) into `errors`,
  // at the same time, so that neither side can block the other, until the message is written
  // (or the program closed its stdin: EPIPE, which SIGPIPE being ignored turns into an
  // error) and its stderr is closed. False when `deadline` passed first.
  static bool exchange(int& to_child, int& from_child, std::string_view message,
                       std::string& errors, std::chrono::steady_clock::time_point deadline) {
    constexpr std::size_t kept_error_bytes = 4096; // more is read but not kept
    ::fcntl(to_child, F_SETFL, O_NONBLOCK);
    ::fcntl(from_child, F_SETFL, O_NONBLOCK);
    std::size_t written = 0;
    if (message.empty()) Pipe::close(to_child);
    while (to_child >= 0 || from_child >= 0) {
      pollfd fds[2] = {{to_child, POLLOUT, 0}, {from_child, POLLIN, 0}};
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      const int ready = ::poll(fds, 2, static_cast<int>(std::min<long long>(left.count(), 1000)));
      if (ready < 0 && errno != EINTR) return false;
      if (ready <= 0) continue;
      if (to_child >= 0 && fds[0].revents != 0) {
        const std::size_t chunk = std::min<std::size_t>(message.size() - written, 65536);
        const ssize_t n = ::write(to_child, message.data() + written, chunk);
        if (n > 0) written += static_cast<std::size_t>(n);
        if ((n < 0 && errno != EAGAIN && errno != EINTR) || written == message.size())
          Pipe::close(to_child); // done, or the program does not want the rest (EPIPE)
      }
      if (from_child >= 0 && fds[1].revents != 0) {
        char buffer[4096];
        const ssize_t n = ::read(from_child, buffer, sizeof buffer);
        if (n > 0 && errors.size() < kept_error_bytes)
          errors.append(buffer, std::min<std::size_t>(n, kept_error_bytes - errors.size()));
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) Pipe::close(from_child);
      }
    }
    return true;
  }

  // wait_until - reap `pid` and record how it ended in `outcome`; false if it is still running
  // at `deadline`. Polls, sleeping 1 ms at first and at most 50 ms: its stderr is closed by
  // now, so it is normally exiting already.
  static bool wait_until(pid_t pid, ExecOutcome& outcome,
                         std::chrono::steady_clock::time_point deadline) {
    std::chrono::milliseconds nap(1);
    for (;;) {
      int status = 0;
      const pid_t done = ::waitpid(pid, &status, WNOHANG);
      if (done == pid) {
        if (WIFSIGNALED(status)) {
          outcome.kind = ExecOutcome::killed;
          outcome.status = WTERMSIG(status);
        } else {
          outcome.kind = ExecOutcome::exited;
          outcome.status = WEXITSTATUS(status);
        }
        return true;
      }
      if (done < 0 && errno != EINTR) return false;
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return false;
      std::this_thread::sleep_for(
          std::min<std::chrono::steady_clock::duration>(nap, deadline - now));
      nap = std::min(nap * 2, std::chrono::milliseconds(50));
    }
  }

  const std::vector<std::string> argv_; // argv_[0] as given, which the program sees
  const std::chrono::seconds limit_;
  std::string path_; // set by prepare()
};

// exec_reply - what the client hears about a run of the --exec program: nullopt (250) for exit
// status 0. Anything else is logged on stderr too.
std::optional<smtpd::Reply> exec_reply(const ExecOutcome& outcome, const Runner& runner,
                                       Output& output) {
  constexpr std::size_t reply_text_limit = 200;
  const std::string said = first_line_sanitised(outcome.stderr_text, reply_text_limit);
  const std::string name = runner.name();
  if (outcome.kind == ExecOutcome::timed_out) {
    output.log(name + " did not finish within --exec-timeout; killed");
    return smtpd::Reply{451, "4.3.0", "Local delivery timed out, try again later"};
  }
  if (outcome.kind == ExecOutcome::killed) {
    output.log(name + " was killed by signal " + std::to_string(outcome.status));
    return smtpd::Reply{451, "4.3.0", "Local delivery failed, try again later"};
  }
  if (outcome.status == 0) return std::nullopt;
  output.log(name + " exited with status " + std::to_string(outcome.status) +
             (said.empty() ? "" : ": " + said));
  if (outcome.status == 75) // EX_TEMPFAIL
    return smtpd::Reply{451, "4.3.0", said.empty() ? "Temporary local failure, try again" : said};
  return smtpd::Reply{550, "5.0.0", said.empty() ? "Message refused by local delivery" : said};
}

// =============================================================================================
// 6. Reports - what is printed about each message
// =============================================================================================

// starts_with_ignoring_case - whether `text` begins with the ASCII `prefix` (lower case), in
// any case.
bool starts_with_ignoring_case(std::string_view text, std::string_view prefix) {
  if (text.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    char c = text[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != prefix[i]) return false;
  }
  return true;
}

// without_line_end - `line` without its LF or CRLF.
std::string_view without_line_end(std::string_view line) {
  if (!line.empty() && line.back() == '\n') line.remove_suffix(1);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

// header_field - the value of the first header field called `name` (lower case, without the
// colon), unfolded (RFC 5322 §2.2.3: a line starting with a space or tab continues the field)
// and trimmed; nullopt when the header section, which ends at the first empty line, has none.
std::optional<std::string> header_field(const std::string& message, std::string_view name) {
  std::optional<std::string> value; // set while reading the wanted field's lines
  std::size_t start = 0;
  while (start < message.size()) {
    std::size_t end = message.find('\n', start);
    end = end == std::string::npos ? message.size() : end + 1;
    const std::string_view line = without_line_end({message.data() + start, end - start});
    start = end;
    if (line.empty()) break;
    const bool continuation = line.front() == ' ' || line.front() == '\t';
    if (value && !continuation) break; // the wanted field ended
    if (value) {
      *value += line;
    } else if (!continuation && starts_with_ignoring_case(line, name) &&
               line.substr(name.size(), 1) == ":") {
      value = std::string(line.substr(name.size() + 1));
    }
  }
  if (!value) return std::nullopt;
  const std::size_t first = value->find_first_not_of(" \t");
  if (first == std::string::npos) return std::string();
  return value->substr(first, value->find_last_not_of(" \t") + 1 - first);
}

// formatted_now - the current time through strftime `format`, in UTC or local time.
std::string formatted_now(const char* format, bool utc) {
  std::time_t now = std::time(nullptr);
  std::tm parts{};
  if (utc)
    ::gmtime_r(&now, &parts);
  else
    ::localtime_r(&now, &parts);
  char text[64];
  std::strftime(text, sizeof text, format, &parts);
  return text;
}

// summary_line - "TIME PEER [TLSv1.3] [auth=USER] <from> -> <to>, <to>[; refused <to>] SIZE
// bytes, subject "SUBJECT"" without a newline; the TLS version only when the session used TLS,
// the user only when the client authenticated; "<>" is the null reverse-path of a bounce. The
// recipients after "->" are those it was `delivered` to; "; refused" lists the others (LMTP
// with --fail-recipient). PEER is "IP:PORT", or "unix:PATH[pid=N,uid=N,gid=N]" for a client
// of a Unix socket.
std::string summary_line(const smtpd::SessionInfo& session, const smtpd::Envelope& envelope,
                         const std::vector<std::string>& delivered, const std::string& message) {
  std::ostringstream line;
  line << formatted_now("%Y-%m-%d %H:%M:%S", false) << " " << session.peer.to_string();
  if (session.tls) line << " " << session.tls_version;
  if (!session.auth_user.empty()) line << " auth=" << session.auth_user;
  line << " <" << envelope.from << "> ->";
  for (std::size_t i = 0; i < delivered.size(); ++i)
    line << (i == 0 ? " <" : ", <") << delivered[i] << ">";
  // LMTP with --fail-recipient: the recipients refused after the data, which were not delivered.
  std::size_t refused = 0;
  for (const std::string& to : envelope.to) {
    if (std::find(delivered.begin(), delivered.end(), to) != delivered.end()) continue;
    line << (refused++ == 0 ? "; refused <" : ", <") << to << ">";
  }
  line << " " << message.size() << " bytes, subject \""
       << header_field(message, "subject").value_or("") << "\"";
  return printable(line.str());
}

// utf8_length - the length of the valid UTF-8 sequence starting at `text[i]` (a byte >= 0x80),
// or 0 if it is not one: a bad lead or continuation byte, a truncated sequence, an overlong
// form, a surrogate or a code point above U+10FFFF (RFC 3629).
std::size_t utf8_length(std::string_view text, std::size_t i) {
  const unsigned char lead = static_cast<unsigned char>(text[i]);
  std::size_t length = 0;
  std::uint32_t code_point = 0;
  std::uint32_t smallest = 0;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2, code_point = lead & 0x1Fu, smallest = 0x80;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3, code_point = lead & 0x0Fu, smallest = 0x800;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4, code_point = lead & 0x07u, smallest = 0x10000;
  } else {
    return 0;
  }
  if (text.size() - i < length) return 0;
  for (std::size_t k = 1; k < length; ++k) {
    const unsigned char next = static_cast<unsigned char>(text[i + k]);
    if ((next & 0xC0u) != 0x80u) return 0;
    code_point = (code_point << 6) | (next & 0x3Fu);
  }
  if (code_point < smallest || code_point > 0x10FFFF) return 0;
  if (code_point >= 0xD800 && code_point <= 0xDFFF) return 0;
  return length;
}

// json_string - `text` as a JSON string (RFC 8259 §7) with its quotes: '"' and '\' escaped,
// control characters (and DEL) as \u00XX, valid UTF-8 as it is, and each byte that is not
// part of valid UTF-8 replaced by U+FFFD, so the output is always valid JSON in UTF-8.
std::string json_string(std::string_view text) {
  static const char hex[] = "0123456789abcdef";
  std::string out = "\"";
  for (std::size_t i = 0; i < text.size();) {
    const unsigned char byte = static_cast<unsigned char>(text[i]);
    if (byte == '"' || byte == '\\') {
      out += '\\';
      out += static_cast<char>(byte);
      ++i;
    } else if (byte < 0x20 || byte == 0x7f) {
      out += "\\u00";
      out += hex[byte >> 4];
      out += hex[byte & 0x0f];
      ++i;
    } else if (byte < 0x80) {
      out += static_cast<char>(byte);
      ++i;
    } else if (const std::size_t length = utf8_length(text, i); length > 0) {
      out.append(text.substr(i, length));
      i += length;
    } else {
      out += "\\ufffd";
      ++i;
    }
  }
  return out + "\"";
}

// json_string_or_null - json_string(*text), or null when there is no text.
std::string json_string_or_null(const std::optional<std::string>& text) {
  return text ? json_string(*text) : "null";
}

// json_params - MAIL or RCPT parameters as a JSON object, KEYWORD: value ("" for a parameter
// without a value), in the order given.
std::string json_params(const smtpd::Params& params) {
  std::string object = "{";
  for (const auto& [keyword, value] : params)
    object += (object.size() > 1 ? "," : "") + json_string(keyword) + ":" + json_string(value);
  return object + "}";
}

// json_rcpt_options - the DSN fields and parameters of one recipient: notify (an array, null
// when not given), orcpt ("TYPE;ADDRESS", the address xtext-decoded, null when not given) and
// params.
std::string json_rcpt_options(const smtpd::RcptOptions& options) {
  std::string notify = "null";
  if (!options.notify.empty()) {
    notify = "[";
    for (const std::string& word : options.notify)
      notify += (notify.size() > 1 ? "," : "") + json_string(word);
    notify += "]";
  }
  const bool has_orcpt = !options.orcpt_type.empty() || !options.orcpt.empty();
  return "{\"notify\":" + notify + ",\"orcpt\":" +
         (has_orcpt ? json_string(options.orcpt_type + ";" + options.orcpt) : "null") +
         ",\"params\":" + json_params(options.params) + "}";
}

// body_type - the BODY of the message: "BINARYMIME", "8BITMIME" or "7BIT" (none given).
const char* body_type(const smtpd::Envelope& envelope) {
  if (envelope.mail.binarymime) return "BINARYMIME";
  if (envelope.mail.body_8bit || envelope.body_8bit) return "8BITMIME";
  return "7BIT";
}

// dns_status - a DnsStatus as a JSON string.
std::string dns_status(smtpd::DnsStatus status) {
  switch (status) {
  case smtpd::DnsStatus::pass: return "\"pass\"";
  case smtpd::DnsStatus::fail: return "\"fail\"";
  case smtpd::DnsStatus::temp_error: return "\"temp_error\"";
  case smtpd::DnsStatus::not_checked: break;
  }
  return "\"not_checked\"";
}

// dns_json - ',"dns":{...}' with the DNS checks' results, or "" when no check was asked for
// (so the --json object keeps its usual fields).
std::string dns_json(const smtpd::SessionInfo& session) {
  const smtpd::DnsChecks& d = session.dns;
  if (d.fcrdns == smtpd::DnsStatus::not_checked && d.helo == smtpd::DnsStatus::not_checked &&
      d.listings.empty() && !d.exempt)
    return "";
  std::string listings = "[";
  for (const smtpd::DnsListing& l : d.listings)
    listings += std::string(listings.size() > 1 ? "," : "") + "{\"zone\":" + json_string(l.zone) +
                ",\"source\":" + json_string(l.source) + ",\"listed\":" + json_string(l.listed) +
                ",\"address\":" + json_string(l.address) + ",\"reason\":" + json_string(l.reason) +
                "}";
  return ",\"dns\":{\"exempt\":" + std::string(d.exempt ? "true" : "false") +
         ",\"fcrdns\":" + dns_status(d.fcrdns) + ",\"fcrdns_name\":" + json_string(d.fcrdns_name) +
         ",\"helo\":" + dns_status(d.helo) + ",\"listings\":" + listings + "]}";
}

// json_addresses - a list of addresses as a JSON array.
std::string json_addresses(const std::vector<std::string>& addresses) {
  std::string array = "[";
  for (const std::string& address : addresses)
    array += (array.size() > 1 ? "," : "") + json_string(address);
  return array + "]";
}

// json_peer_credentials - ',"unix_path":...,"pid":N,"uid":N,"gid":N': a Unix-socket client's
// listener path and its SO_PEERCRED (unix(7)) credentials, each null over TCP (or when the
// kernel gave none).
std::string json_peer_credentials(const smtpd::Peer& peer) {
  auto number = [](int n) { return n < 0 ? std::string("null") : std::to_string(n); };
  return ",\"unix_path\":" + (peer.is_unix() ? json_string(peer.unix_path) : std::string("null")) +
         ",\"pid\":" + number(peer.pid) + ",\"uid\":" + number(peer.uid) +
         ",\"gid\":" + number(peer.gid);
}

// json_line - the --json object of one message, on one line with a final newline. `path` is
// where --maildir or --mbox stored it, "" when it was not stored; `delivered` the recipients
// it was delivered to (all of envelope.to but those --fail-recipient or the upstream refused).
std::string json_line(const smtpd::SessionInfo& session, const smtpd::Envelope& envelope,
                      const std::vector<std::string>& delivered, const std::string& message,
                      const std::string& path) {
  auto unless_empty = [](const std::string& text) {
    return text.empty() ? std::nullopt : std::optional<std::string>(text);
  };
  const std::string to = json_addresses(envelope.to);
  // One object per recipient; a recipient the library gave no options to gets empty ones.
  std::string rcpt_options = "[";
  for (std::size_t i = 0; i < envelope.to.size(); ++i)
    rcpt_options +=
        (i > 0 ? "," : "") +
        json_rcpt_options(i < envelope.rcpt.size() ? envelope.rcpt[i] : smtpd::RcptOptions());
  rcpt_options += "]";
  const smtpd::MailOptions& mail = envelope.mail;
  return "{\"time\":" + json_string(formatted_now("%Y-%m-%dT%H:%M:%SZ", true)) +
         ",\"peer\":" + json_string(session.peer.to_string()) +
         ",\"helo\":" + json_string(session.helo) + ",\"tls\":" +
         json_string_or_null(session.tls ? std::optional(session.tls_version) : std::nullopt) +
         ",\"auth_user\":" + json_string_or_null(unless_empty(session.auth_user)) +
         ",\"from\":" + json_string(envelope.from) + ",\"to\":" + to +
         ",\"size\":" + std::to_string(message.size()) +
         ",\"subject\":" + json_string_or_null(header_field(message, "subject")) +
         ",\"message_id\":" + json_string_or_null(header_field(message, "message-id")) +
         ",\"path\":" + json_string_or_null(unless_empty(path)) +
         ",\"body\":" + json_string(body_type(envelope)) +
         ",\"chunked\":" + (envelope.chunked ? "true" : "false") +
         ",\"requiretls\":" + (mail.requiretls ? "true" : "false") +
         ",\"ret\":" + json_string_or_null(unless_empty(mail.ret)) +
         ",\"envid\":" + json_string_or_null(unless_empty(mail.envid)) +
         ",\"auth\":" + json_string_or_null(unless_empty(mail.auth)) +
         ",\"mail_params\":" + json_params(envelope.mail_params) +
         ",\"rcpt_options\":" + rcpt_options +
         // Added later, after the older fields, which keep their order (scripts grep for them).
         ",\"delivered_to\":" + json_addresses(delivered) + json_peer_credentials(session.peer) +
         dns_json(session) + "}\n";
}

// =============================================================================================
// 6b. Relay - passing each accepted message on to an upstream server (--relay)
//
// The message goes upstream while our client waits for its reply, so our reply is the
// upstream's verdict: a 250 only after the upstream's 250, its refusals passed back per
// recipient, and a failed connection a 451 4.4.1 (the client keeps the message and retries).
// Nothing a client was told 250 about can be lost by a crash of mailsink, since by then the
// upstream has it; a crash after the upstream's 250 and before ours only makes the client
// send it again (a duplicate, never a loss). One connection per message, closed with QUIT.
// =============================================================================================

// reply_text_from_upstream - an upstream reply's text made safe to pass on: control characters
// (the line breaks of a multi-line reply too) as spaces, at most max_reply_text characters.
std::string reply_text_from_upstream(const std::string& text) {
  std::string safe;
  for (char c : text.substr(0, max_reply_text))
    safe += (c >= ' ' && c <= '~') ? c : ' ';
  return safe;
}

// passed_back - the reply our client gets for an upstream refusal `reply`: the same code, its
// enhanced code when it has one of the same class, and its text. A 421 becomes 451 4.4.2: it
// means the upstream is closing its connection, and ours must stay open.
smtpd::Reply passed_back(const smtpd::Reply& reply) {
  if (reply.code == 421)
    return smtpd::Reply{451, "4.4.2", "Upstream closed: " + reply_text_from_upstream(reply.text)};
  const bool same_class = !reply.enhanced.empty() && reply.enhanced[0] == '0' + reply.code / 100;
  return smtpd::Reply{reply.code, same_class ? reply.enhanced : "",
                      reply_text_from_upstream(reply.text)};
}

// Relay - the upstream of --relay; pass() may be called from many threads at once.
class Relay {
public:
  Relay(const Config& config, std::string user, std::string password, Output& output)
      : address_(config.relay), output_(output) {
    options_.helo_name = config.options.hostname; // "" = the system host name, as ours
    options_.lmtp = config.relay_lmtp;
    options_.starttls = false; // pass() says STARTTLS itself, only with --relay-tls
    options_.tls_verify = true;
    options_.tls_ca_file = config.relay_ca;
    options_.username = std::move(user);
    options_.password = std::move(password);
    // One limit for every step (not RFC 5321's minutes): our own client waits meanwhile.
    const std::chrono::seconds limit(config.relay_timeout != 0 ? config.relay_timeout
                                                               : default_relay_timeout_seconds);
    options_.connect_timeout = options_.greeting_timeout = options_.command_timeout = limit;
    options_.mail_timeout = options_.rcpt_timeout = options_.data_timeout = limit;
    options_.block_timeout = options_.final_timeout = limit;
    tls_ = config.relay_tls;
  }

  const std::string& address() const { return address_; }

  // pass - send `message` to the envelope's recipients upstream; one verdict per
  // envelope.to[i]: nullopt when the upstream accepted it (its 250 after the data), else the
  // reply our client gets for that recipient.
  smtpd::RecipientReplies pass(const smtpd::Envelope& envelope, const std::string& message) {
    const std::size_t recipients = envelope.to.size();
    try {
      smtpd::Client client(address_, options_);
      client.hello();
      if (tls_) client.starttls(); // verified: the chain and the host name
      if (!options_.username.empty()) client.auth(options_.username, options_.password);
      const smtpd::SendResult result =
          client.send(envelope.from, envelope.to, message, mail_options(envelope));
      try {
        client.quit();
      } catch (const std::exception&) {} // the verdict is in: a lost QUIT changes nothing
      return verdicts(result, recipients);
    } catch (const smtpd::ClientError& e) { // greeting, EHLO, STARTTLS or AUTH refused
      output_.log("relay to " + address_ + ": " + e.what());
      return smtpd::RecipientReplies(
          recipients,
          smtpd::Reply{451, "4.4.0",
                       "Upstream refused " + e.command() + ": " + std::to_string(e.reply().code)});
    } catch (const smtpd::ClientIOError& e) { // no connection, TLS failed, timed out, closed
      output_.log("relay to " + address_ + ": " + e.what());
      return smtpd::RecipientReplies(
          recipients, smtpd::Reply{451, "4.4.1", "Upstream unavailable, try again later"});
    } catch (const std::exception& e) { // e.g. a MAIL parameter the upstream does not offer
      output_.log("relay to " + address_ + ": " + e.what());
      return smtpd::RecipientReplies(
          recipients, smtpd::Reply{451, "4.3.0", "Could not relay the message, try again later"});
    }
  }

private:
  // mail_options - what MAIL upstream says about the content: its body type and SMTPUTF8,
  // as our client declared them. DSN requests (RET, ENVID, NOTIFY, ORCPT) and the other
  // parameters stay with us: mailsink sends no notices, so it asks the upstream for none.
  static smtpd::MailOptions mail_options(const smtpd::Envelope& envelope) {
    smtpd::MailOptions mail;
    mail.body_8bit = envelope.mail.body_8bit || envelope.body_8bit;
    mail.binarymime = envelope.mail.binarymime;
    mail.smtputf8 = envelope.mail.smtputf8 || envelope.smtputf8;
    return mail;
  }

  // verdicts - one per recipient from the upstream's replies: MAIL's refusal for all; else a
  // recipient refused at RCPT gets that reply, an accepted one the reply after the data (in
  // LMTP its own, in RCPT order among the accepted; in SMTP the one reply).
  smtpd::RecipientReplies verdicts(const smtpd::SendResult& result, std::size_t recipients) {
    const smtpd::Reply missing{451, "4.4.1", "Upstream gave no reply, try again later"};
    if (!result.mail.positive())
      return smtpd::RecipientReplies(recipients, passed_back(result.mail));
    smtpd::RecipientReplies verdicts(recipients);
    std::size_t accepted = 0;
    for (std::size_t i = 0; i < recipients; ++i) {
      const smtpd::Reply rcpt = i < result.rcpt.size() ? result.rcpt[i] : missing;
      if (!rcpt.positive()) {
        verdicts[i] = passed_back(rcpt);
        continue;
      }
      const std::size_t k = options_.lmtp ? accepted++ : 0;
      const smtpd::Reply data = k < result.data.size() ? result.data[k] : missing;
      if (!data.positive()) verdicts[i] = passed_back(data);
    }
    return verdicts;
  }

  const std::string address_;
  smtpd::ClientOptions options_;
  bool tls_ = false;
  Output& output_;
};

// =============================================================================================
// 7. Sink - what happens to each recipient and each message
// =============================================================================================

// StopReason - why main() stops serving.
enum class StopReason { none, signal, count_reached, time_up, serve_failed };

// Stop - the reason to stop, set once by the first thread that sees one: the signal thread,
// the Sink (--count), the serving thread (it failed) or main() itself (--exit-after).
class Stop {
public:
  // request - ask main() to stop for `reason`, unless another reason came first.
  void request(StopReason reason) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (reason_ == StopReason::none) reason_ = reason;
    }
    changed_.notify_all();
  }

  // requested - whether a stop was asked for.
  bool requested() {
    std::lock_guard<std::mutex> lock(mutex_);
    return reason_ != StopReason::none;
  }

  // wait - block until a stop is asked for, or until `deadline`, if any, which is time_up.
  StopReason wait(std::optional<std::chrono::steady_clock::time_point> deadline) {
    std::unique_lock<std::mutex> lock(mutex_);
    auto asked = [this] { return reason_ != StopReason::none; };
    if (!deadline)
      changed_.wait(lock, asked);
    else if (!changed_.wait_until(lock, *deadline, asked))
      reason_ = StopReason::time_up;
    return reason_;
  }

private:
  std::mutex mutex_;
  std::condition_variable changed_;
  StopReason reason_ = StopReason::none;
};

// Delivery - where accepted messages go: at most one of these is set; none prints to stdout.
struct Delivery {
  Maildir* maildir = nullptr;
  Mbox* mbox = nullptr;
  const Runner* runner = nullptr;
  bool discard = false;
  Relay* relay = nullptr; // --relay, besides any of the above: first
};

// Sink - the hooks: refuses recipients outside --accept-domain, injects --fail-rate faults,
// delivers and reports each message, and asks main() to stop after --count messages.
// Every method may be called from many connection threads at once.
class Sink {
public:
  Sink(const Config& config, Delivery delivery, Output& output, Stop& stop)
      : config_(config), delivery_(delivery), output_(output), stop_(stop),
        random_(config.seed ? *config.seed : std::random_device{}()) {}

  // on_mail - the smtpd::MailHook: nullopt accepts, a Reply refuses.
  std::optional<smtpd::Reply> on_mail() { return fault(Stage::mail); }

  // on_rcpt - the smtpd::RcptHook: the domain check first (a fixed answer), then a fault.
  std::optional<smtpd::Reply> on_rcpt(const std::string& to) {
    if (!domain_accepted(to))
      return smtpd::Reply{550, "5.1.1", "Recipient address rejected: domain not accepted"};
    return fault(Stage::rcpt);
  }

  // receive - the smtpd::PerRecipientHandler: one verdict per envelope.to[i], nullopt
  // accepting that recipient. In LMTP each is that recipient's own reply after the data
  // (RFC 2033 §4.2); in SMTP the library folds them into the one reply, a refusal winning.
  // The message is stored (or run, printed) once, for the recipients accepted; when none is,
  // or in SMTP when any is refused (the client will hear a refusal for all), it is not.
  smtpd::RecipientReplies receive(const smtpd::SessionInfo& session,
                                  const smtpd::Envelope& envelope, const std::string& message) {
    const std::size_t recipients = envelope.to.size();
    auto for_all = [recipients](const std::optional<smtpd::Reply>& reply) {
      return smtpd::RecipientReplies(recipients, reply);
    };
    if (std::optional<smtpd::Reply> refused = fault(Stage::data)) return for_all(refused);
    // --fail-recipient: those recipients get the --fail-reply, the others nullopt (accepted).
    smtpd::RecipientReplies verdicts(recipients);
    smtpd::Envelope delivered = envelope; // the envelope of the accepted recipients only
    delivered.to.clear();
    delivered.rcpt.clear();
    for (std::size_t i = 0; i < recipients; ++i) {
      if (fails_recipient(envelope.to[i])) {
        verdicts[i] = config_.fail_reply;
        continue;
      }
      delivered.to.push_back(envelope.to[i]);
      if (i < envelope.rcpt.size()) delivered.rcpt.push_back(envelope.rcpt[i]);
    }
    const bool all_accepted = delivered.to.size() == recipients;
    if (delivered.to.empty() || (!all_accepted && !config_.options.lmtp)) return verdicts;
    if (!claim_slot())
      return for_all(
          smtpd::Reply{451, "4.3.2", "mailsink has its --count messages and is stopping"});
    // --relay comes before the local delivery, so that the Maildir, mbox, program or summary
    // sees only what the upstream accepted, and needs no undoing when it refuses. If the local
    // delivery then fails, the client hears 451 and sends the message again: the upstream gets
    // it twice, but nothing is lost.
    if (delivery_.relay != nullptr && !relay(delivered, message, verdicts)) {
      release_slot();
      return verdicts;
    }
    std::string path;
    if (std::optional<smtpd::Reply> refused = deliver(session, delivered, message, path)) {
      release_slot();
      return for_all(refused);
    }
    report(session, envelope, delivered, message, path);
    count_accepted();
    return verdicts;
  }

  // accepted - how many messages were accepted so far.
  unsigned long long accepted() {
    std::lock_guard<std::mutex> lock(count_mutex_);
    return accepted_;
  }

private:
  // domain_accepted - whether `to` is <postmaster> or in an --accept-domain domain (the part
  // after the last '@': a quoted local part may hold '@' too), or there is no such flag.
  bool domain_accepted(const std::string& to) const {
    if (config_.accept_domains.empty() || lower_ascii(to) == "postmaster") return true;
    const std::size_t at = to.rfind('@');
    if (at == std::string::npos) return false;
    const std::string domain = lower_ascii(to.substr(at + 1));
    const auto& domains = config_.accept_domains;
    return std::find(domains.begin(), domains.end(), domain) != domains.end();
  }

  // relay - pass the message to `delivered`'s recipients upstream; a recipient the upstream
  // refused gets its verdict in `verdicts` (whose nullopt entries are `delivered`'s recipients,
  // in order) and leaves `delivered`. False when nothing is left to deliver locally: every
  // recipient was refused, or in SMTP any was (the one reply will be a refusal, so the client
  // keeps the message and sends it again; those the upstream took get it twice then).
  bool relay(smtpd::Envelope& delivered, const std::string& message,
             smtpd::RecipientReplies& verdicts) {
    const smtpd::RecipientReplies upstream = delivery_.relay->pass(delivered, message);
    smtpd::Envelope kept = delivered;
    kept.to.clear();
    kept.rcpt.clear();
    std::size_t j = 0; // delivered.to[j] is the recipient of the next nullopt verdict
    for (std::optional<smtpd::Reply>& verdict : verdicts) {
      if (verdict) continue; // refused here already (--fail-recipient)
      if (upstream[j]) {
        verdict = upstream[j];
      } else {
        kept.to.push_back(delivered.to[j]);
        if (j < delivered.rcpt.size()) kept.rcpt.push_back(delivered.rcpt[j]);
      }
      ++j;
    }
    const bool all_taken = kept.to.size() == delivered.to.size();
    delivered = std::move(kept);
    return !delivered.to.empty() && (all_taken || config_.options.lmtp);
  }

  // fails_recipient - whether `to` is a --fail-recipient (compared ignoring ASCII case).
  bool fails_recipient(const std::string& to) const {
    const auto& failing = config_.fail_recipients;
    return !failing.empty() &&
           std::find(failing.begin(), failing.end(), lower_ascii(to)) != failing.end();
  }

  // fault - the --fail-reply, with probability --fail-rate, when `stage` is the --fail-stage.
  // Rates 0 and 1 draw nothing, so they are exact.
  std::optional<smtpd::Reply> fault(Stage stage) {
    if (!config_.fail_rate || stage != *config_.fail_stage || *config_.fail_rate <= 0.0)
      return std::nullopt;
    if (*config_.fail_rate < 1.0) {
      std::lock_guard<std::mutex> lock(random_mutex_);
      if (std::uniform_real_distribution<double>(0.0, 1.0)(random_) >= *config_.fail_rate)
        return std::nullopt;
    }
    return config_.fail_reply;
  }

  // claim_slot - with --count N, take one of the N messages before delivering, so no more
  // than N are accepted even when clients send at once; false when all N are taken.
  bool claim_slot() {
    std::lock_guard<std::mutex> lock(count_mutex_);
    if (config_.count != 0 && claimed_ >= config_.count) return false;
    ++claimed_;
    return true;
  }

  // release_slot - give back a slot whose message was not accepted after all.
  void release_slot() {
    std::lock_guard<std::mutex> lock(count_mutex_);
    --claimed_;
  }

  // count_accepted - count an accepted message; the Nth of --count N asks main() to stop.
  // The 250 still reaches the client, and so does the 221 to its QUIT: main() drains first.
  void count_accepted() {
    std::lock_guard<std::mutex> lock(count_mutex_);
    if (++accepted_ == config_.count) stop_.request(StopReason::count_reached);
  }

  // deliver - hand `message` to the delivery mode; sets `path` when it was stored in a file.
  // Returns a refusal when it could not be delivered.
  std::optional<smtpd::Reply> deliver(const smtpd::SessionInfo& session,
                                      const smtpd::Envelope& envelope, const std::string& message,
                                      std::string& path) {
    try {
      if (delivery_.maildir != nullptr) {
        path = delivery_.maildir->deliver(message);
      } else if (delivery_.mbox != nullptr) {
        delivery_.mbox->deliver(envelope.from, message);
        path = config_.mbox;
      } else if (delivery_.runner != nullptr) {
        return exec_reply(delivery_.runner->run(session, envelope, message), *delivery_.runner,
                          output_);
      }
    } catch (const std::system_error& e) {
      output_.log(std::string("could not deliver a message: ") + e.what());
      return smtpd::Reply{451, "4.3.0", "Local error: could not store message"};
    }
    return std::nullopt;
  }

  // report - print what --json, --print-body, --quiet and --discard ask for about a message;
  // `delivered` is `envelope` with only the recipients it was delivered to.
  void report(const smtpd::SessionInfo& session, const smtpd::Envelope& envelope,
              const smtpd::Envelope& delivered, const std::string& message,
              const std::string& path) {
    if (config_.quiet || delivery_.discard) return;
    if (config_.json)
      return output_.print(json_line(session, envelope, delivered.to, message, path));
    std::string text = summary_line(session, envelope, delivered.to, message);
    if (!path.empty()) text += " " + path;
    text += "\n";
    if (config_.print_body) text += message + "\n";
    output_.print(text);
  }

  const Config& config_;
  const Delivery delivery_;
  Output& output_;
  Stop& stop_;
  std::mutex random_mutex_;
  std::mt19937_64 random_; // --seed, or a random seed
  std::mutex count_mutex_;
  unsigned long long claimed_ = 0;  // messages accepted or being delivered
  unsigned long long accepted_ = 0; // messages accepted
};

// =============================================================================================
// 8. Users - the AUTH accounts and the password check
// =============================================================================================

// is_blank - whether `line` holds nothing but spaces and tabs.
bool is_blank(const std::string& line) {
  return line.find_first_not_of(" \t") == std::string::npos;
}

// load_auth_file - add the accounts in `path` to `users`: one USER:PASSWORD a line (a CR before
// the LF is dropped), blank lines and lines starting with '#' ignored. Throws
// std::runtime_error naming the file, and the line when one is bad; a file with no account is
// an error too, since it would leave AUTH off without a word.
void load_auth_file(const std::string& path, Users& users) {
  std::ifstream file(path);
  if (!file) throw errno_error("cannot read --auth-file " + path);
  std::string line;
  unsigned long number = 0;
  std::size_t accounts = 0;
  while (std::getline(file, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (is_blank(line) || line.front() == '#') continue;
    try {
      add_account(users, line, "the line");
    } catch (const UsageError& e) {
      throw std::runtime_error("--auth-file " + path + ", line " + std::to_string(number) + ": " +
                               e.what());
    }
    ++accounts;
  }
  if (file.bad()) throw errno_error("cannot read --auth-file " + path);
  if (accounts == 0) throw std::runtime_error("--auth-file " + path + " has no USER:PASSWORD line");
}

// constant_time_equals - whether `given` equals `expected`, in a time that depends on their
// lengths but never on their contents: every byte of `given` is compared with no early exit,
// and a length difference is folded into the result instead of returning at once, so the time
// tells nothing about how much of a guess was right.
bool constant_time_equals(const std::string& given, const std::string& expected) {
  std::size_t difference = given.size() ^ expected.size();
  for (std::size_t i = 0; i < given.size(); ++i) {
    const unsigned char want = i < expected.size() ? static_cast<unsigned char>(expected[i]) : 0;
    difference |= static_cast<unsigned char>(given[i]) ^ want;
  }
  return difference == 0;
}

// install_auth - offer AUTH when there is any user: on_auth checks PLAIN and LOGIN passwords,
// auth_secret gives CRAM-MD5 the password it needs. Both hold their own copy of the users.
void install_auth(smtpd::Options& options, const Users& accounts) {
  if (accounts.empty()) return;
  auto users = std::make_shared<const Users>(accounts);
  options.on_auth = [users](const smtpd::SessionInfo&, const std::string&, const std::string& user,
                            const std::string& password, const std::string&) {
    auto found = users->find(user);
    // An unknown user still costs one comparison, like a known user with a wrong password.
    static const std::string no_password(16, '\0');
    const std::string& expected = found == users->end() ? no_password : found->second;
    const bool matches = constant_time_equals(password, expected);
    return matches && found != users->end();
  };
  options.auth_secret = [users](const smtpd::SessionInfo&,
                                const std::string& user) -> std::optional<std::string> {
    auto found = users->find(user);
    if (found == users->end()) return std::nullopt;
    return found->second;
  };
}

// =============================================================================================
// 9. main - setup, serving and stopping
//
// Signals are handled the thread-safe way: SIGINT and SIGTERM are blocked before any thread
// exists, so every thread inherits the block and none is interrupted; one thread takes them
// with sigwait() and tells main() through Stop, which also hears of --count, --exit-after and
// a failure of serving. main() then calls Server::shutdown(), which is not async-signal-safe;
// after --count, Server::drain() first, so that the last sender's QUIT still gets 221.
// =============================================================================================

// keep_standard_fds_open - open /dev/null as any of stdin, stdout and stderr that is closed,
// so that no descriptor we open later takes their numbers (an --exec child's dup2() onto 0, 1
// and 2 relies on it) and nothing we print lands in a file or socket of ours.
void keep_standard_fds_open() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) >= 0 || errno != EBADF) continue;
    const int opened = ::open("/dev/null", O_RDWR); // the lowest free number: `fd`
    if (opened > 2) ::close(opened);
  }
}

// block_stop_signals - block SIGINT and SIGTERM in this thread and the threads it starts
// later, ignore SIGPIPE (a client gone mid-reply, an --exec program that does not read all
// of its stdin), and return the set for sigwait().
sigset_t block_stop_signals() {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  return stop_signals;
}

// Deliveries - the delivery mode's objects, prepared before listening.
struct Deliveries {
  std::optional<Maildir> maildir;
  std::optional<Mbox> mbox;
  std::optional<Runner> runner;
  std::optional<Relay> relay;

  Delivery view(const Config& config) {
    Delivery delivery;
    delivery.relay = relay ? &*relay : nullptr;
    delivery.maildir = maildir ? &*maildir : nullptr;
    delivery.mbox = mbox ? &*mbox : nullptr;
    delivery.runner = runner ? &*runner : nullptr;
    delivery.discard = config.discard;
    return delivery;
  }
};

// prepare_delivery - create the Maildir, the mbox file, or find the --exec program; read the
// --relay-auth-file. Throws std::runtime_error (std::system_error too) with a message naming
// the path.
void prepare_delivery(const Config& config, Deliveries& deliveries, Output& output) {
  if (!config.relay.empty()) {
    Users account; // --relay-auth-file has the --auth-file format, with one account
    if (!config.relay_auth_file.empty()) {
      load_auth_file(config.relay_auth_file, account);
      if (account.size() != 1)
        throw std::runtime_error("--relay-auth-file " + config.relay_auth_file +
                                 " must hold one USER:PASSWORD line, not " +
                                 std::to_string(account.size()));
    }
    std::string user, password;
    if (!account.empty()) std::tie(user, password) = *account.begin();
    deliveries.relay.emplace(config, user, password, output);
  }
  if (!config.maildir.empty()) {
    try {
      deliveries.maildir.emplace(config.maildir).prepare();
    } catch (const std::system_error& e) {
      throw std::runtime_error("cannot use maildir " + config.maildir + ": " + e.what());
    }
  }
  if (!config.mbox.empty()) {
    try {
      deliveries.mbox.emplace(config.mbox).prepare();
    } catch (const std::system_error& e) {
      throw std::runtime_error("cannot use mbox " + config.mbox + ": " + e.what());
    }
  }
  if (!config.exec.empty())
    deliveries.runner.emplace(config.exec, std::chrono::seconds(*config.exec_timeout)).prepare();
}

// Transcript - the --verbose tracer: the session's bytes each way, cut into lines for
// Output::transcript. A line is printed once its LF arrives, or at the close. A BDAT chunk
// (RFC 3030) may be binary: it is shown as one line "<N octets>" once its N octets have come
// (N from the BDAT command line before it), never as its bytes.
class Transcript : public smtpd::Tracer {
public:
  Transcript(Output& output, smtpd::Peer peer) : output_(output), peer_(std::move(peer)) {}

  void client(std::string_view bytes) override {
    end_chunk();
    add(client_, true, bytes);
  }

  void server(std::string_view bytes) override { add(server_, false, bytes); }

  void chunk(std::string_view bytes) override {
    chunk_octets_ += bytes.size();
    if (chunk_expected_ && chunk_octets_ >= *chunk_expected_) end_chunk();
  }

  void close() override {
    end_chunk();
    if (!client_.empty()) output_.transcript(peer_, true, client_);
    if (!server_.empty()) output_.transcript(peer_, false, server_);
  }

private:
  // add - append to one direction's pending text and print each whole line, without CRLF.
  void add(std::string& pending, bool from_client, std::string_view bytes) {
    pending.append(bytes);
    std::size_t start = 0;
    for (std::size_t lf; (lf = pending.find('\n', start)) != std::string::npos; start = lf + 1) {
      std::size_t end = lf > start && pending[lf - 1] == '\r' ? lf - 1 : lf;
      const std::string_view line = std::string_view(pending).substr(start, end - start);
      output_.transcript(peer_, from_client, line);
      if (from_client) expect_chunk(line);
    }
    pending.erase(0, start);
  }

  // expect_chunk - after a client line "BDAT N [LAST]" (any case), the chunk of N octets
  // follows; "BDAT 0" has none, so its "<0 octets>" line is printed at once.
  void expect_chunk(std::string_view line) {
    chunk_expected_.reset();
    if (line.size() < 5 || upper_ascii(std::string(line.substr(0, 5))) != "BDAT ") return;
    const std::string_view size = line.substr(5, line.find(' ', 5) - 5);
    unsigned long long octets = 0;
    const auto [stop, error] = std::from_chars(size.data(), size.data() + size.size(), octets);
    if (error != std::errc() || stop != size.data() + size.size()) return;
    chunk_expected_ = octets;
    chunk_octets_ = 0;
    if (octets == 0) output_.transcript(peer_, true, "<0 octets>");
  }

  // end_chunk - print the chunk's line if any of its octets came: "<N octets>", or
  // "<N of M octets>" when it was cut short (the client went away or spoke before its end).
  void end_chunk() {
    if (chunk_octets_ > 0) {
      std::string line = "<" + std::to_string(chunk_octets_);
      if (chunk_expected_ && chunk_octets_ < *chunk_expected_)
        line += " of " + std::to_string(*chunk_expected_);
      output_.transcript(peer_, true, line + " octets>");
    }
    chunk_octets_ = 0;
    chunk_expected_.reset();
  }

  Output& output_;
  smtpd::Peer peer_;
  std::string client_, server_;                      // a line each way whose end has not arrived
  unsigned long long chunk_octets_ = 0;              // of the chunk being received
  std::optional<unsigned long long> chunk_expected_; // its size, from the BDAT line
};

// server_options - the command line's options plus the hooks, the message handler, the error
// log, the --verbose transcript and, when there are users, the AUTH checks.
smtpd::Options server_options(const Config& config, Sink& sink, Output& output) {
  smtpd::Options options = config.options;
  options.on_mail = [&sink](const smtpd::SessionInfo&, const std::string&, const smtpd::Params&) {
    return sink.on_mail();
  };
  options.on_rcpt = [&sink](const smtpd::SessionInfo&, const std::string& to,
                            const smtpd::Params&) { return sink.on_rcpt(to); };
  // The per-recipient form, so that --fail-recipient can refuse one recipient of many in LMTP;
  // in SMTP the library folds the verdicts into one reply.
  options.per_recipient_handler =
      [&sink](const smtpd::SessionInfo& session, const smtpd::Envelope& envelope,
              const std::string& message) { return sink.receive(session, envelope, message); };
  options.log_error = [&output](std::string_view message) { output.log(std::string(message)); };
  if (config.verbose) {
    options.new_tracer = [&output](const smtpd::SessionInfo& session) {
      return std::make_unique<Transcript>(output, session.peer);
    };
  }
  install_auth(options, config.users);
  return options;
}

// count_drain_time - how long open sessions may go on after the Nth message of --count N.
constexpr std::chrono::seconds count_drain_time(2);

// serve_until_stop - serve on a thread until a signal, --count or --exit-after, then shut down
// gracefully. Returns the exit status.
int serve_until_stop(smtpd::Server& server, const sigset_t& stop_signals, const Config& config,
                     Sink& sink, Stop& stop, Output& output) {
  std::string serve_error; // read only after join()
  std::thread serving([&] {
    try {
      server.serve();
    } catch (const std::exception& e) { serve_error = e.what(); }
    stop.request(StopReason::serve_failed); // nothing new when it ended because we asked
  });
  std::thread signals([&] {
    int signal_number = 0;
    sigwait(&stop_signals, &signal_number);
    stop.request(StopReason::signal);
  });
  // --exit-after counts from now: listen() is done, so clients can connect.
  std::optional<std::chrono::steady_clock::time_point> deadline;
  if (config.exit_after != 0)
    deadline = std::chrono::steady_clock::now() + std::chrono::seconds(config.exit_after);
  // Wait until serve() accepts, so that shutdown() cannot come before it, unless it failed.
  while (!server.wait_ready(std::chrono::milliseconds(100)) && !stop.requested()) {}
  const StopReason reason = stop.wait(deadline);
  // The sender of the Nth message is still connected, about to say QUIT: a 421 in reply would
  // make its client report an error (Python's smtplib raises). So take no new client, and give
  // the open sessions a moment to end by themselves before the 421 of the graceful shutdown.
  if (reason == StopReason::count_reached) server.drain(count_drain_time);
  server.shutdown(std::chrono::seconds(10));
  serving.join();
  pthread_kill(signals.native_handle(), SIGTERM); // no signal came: wake it from sigwait()
  signals.join();

  if (reason == StopReason::serve_failed || !serve_error.empty()) {
    output.log(serve_error.empty() ? "the server stopped unexpectedly" : serve_error);
    return exit_runtime_error;
  }
  if (reason == StopReason::time_up && config.count != 0) {
    output.log("--exit-after " + std::to_string(config.exit_after) + ": " +
               std::to_string(sink.accepted()) + " of --count " + std::to_string(config.count) +
               " messages arrived");
    return exit_runtime_error;
  }
  return exit_ok;
}

} // namespace

// main - parse the command line, read the --auth-files, prepare the delivery, listen, then serve
// until it is time to stop.
int main(int argc, char** argv) {
  Config config;
  try {
    config = parse_args(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "mailsink: " << e.what() << "; see --help\n";
    return exit_usage_error;
  }
  if (config.help) {
    print_usage(std::cout);
    return exit_ok;
  }

  keep_standard_fds_open();
  const sigset_t stop_signals = block_stop_signals(); // before any thread is started
  Output output;
  Deliveries deliveries;
  try {
    for (const std::string& path : config.auth_files)
      load_auth_file(path, config.users);
    prepare_delivery(config, deliveries, output);
  } catch (const std::runtime_error& e) { // std::system_error too: an unreadable file
    output.log(e.what());
    return exit_runtime_error;
  }

  Stop stop;
  Sink sink(config, deliveries.view(config), output, stop);
  std::optional<smtpd::Server> server; // constructed here: it reads the TLS files at once
  try {
    server.emplace(server_options(config, sink, output));
  } catch (const std::exception& e) { // an unreadable or mismatched certificate or key
    output.log(std::string("cannot start: ") + e.what());
    return exit_runtime_error;
  }
  try {
    server->listen();
  } catch (const std::exception& e) { // std::system_error or std::invalid_argument
    output.log(e.what());             // names the address and the reason
    return exit_runtime_error;
  }
  if (!config.quiet) output.log("listening on " + server->address());
  return serve_until_stop(*server, stop_signals, config, sink, stop, output);
}
