// mailsink.cpp - a mail catcher for developers and scripts: an SMTP server that accepts every
// message and prints it to stdout, or stores it in a Maildir, and never sends mail anywhere.
//
//     build/mailsink --help
//     build/mailsink --listen 127.0.0.1:0 --maildir /tmp/mail
//     build/mailsink --tls-cert cert.pem --tls-key key.pem       (STARTTLS offered)
//     build/mailsink --tls-cert cert.pem --tls-key key.pem --auth-file users --auth-required
//
// `make example` builds it; by hand:
//
//     g++ -std=c++17 -O2 -pthread example/mailsink.cpp smtpd.cpp -lssl -lcrypto -o build/mailsink
//
// The program in six parts, in the order main() uses them:
//   1. Command line: a table of flags, strict number parsing, TLS and AUTH flag rules, --help.
//   2. Output: stdout and stderr shared by every connection thread.
//   3. Maildir: safe delivery into DIR/tmp, then DIR/new (the Maildir rules, see maildir(5)).
//   4. Sink: the message handler that prints, stores or drops each message.
//   5. Users: the AUTH accounts from --auth and --auth-file, and the password check.
//   6. main: check the setup, listen, serve on a thread, wait for SIGINT/SIGTERM, shut down.
#include "../smtpd.hpp"

#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <ctime>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

namespace {

// Exit statuses, as --help documents them.
constexpr int exit_ok = 0;
constexpr int exit_runtime_error = 1; // the setup failed or serving failed
constexpr int exit_usage_error = 2;   // the command line is wrong

constexpr const char* default_listen = "127.0.0.1:2525";
constexpr unsigned long long max_timeout_seconds = 24 * 60 * 60; // one day

// =============================================================================================
// 1. Command line
// =============================================================================================

// Users - the AUTH accounts: user name -> password.
using Users = std::map<std::string, std::string>;

// Config - everything the command line sets. The server settings live in smtpd::Options
// directly, so the library's own defaults apply to every flag not given.
struct Config {
  smtpd::Options options;
  std::string maildir;                 // "" = print messages to stdout
  Users users;                         // from --auth; main() adds those of the --auth-files
  std::vector<std::string> auth_files; // --auth-file, read by main() before listening
  bool quiet = false;
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

// parse_count - a whole number from 1 to `max`: digits only, no sign, spaces or suffix.
unsigned long long parse_count(const std::string& text, unsigned long long max) {
  unsigned long long number = 0;
  const char* end = text.data() + text.size();
  auto [stop, error] = std::from_chars(text.data(), end, number);
  if (error == std::errc::invalid_argument || stop != end || (error == std::errc() && number == 0))
    throw UsageError("needs a positive whole number, not '" + text + "'");
  if (error == std::errc::result_out_of_range || number > max)
    throw UsageError("'" + text + "' is too large (at most " + std::to_string(max) + ")");
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

// Flag - one command-line flag: its name, whether a value follows it, and what it sets.
struct Flag {
  const char* name;
  bool takes_value;
  void (*apply)(Config& config, const std::string& value);
};

// flags - every flag mailsink knows; print_usage() documents each one.
const Flag flags[] = {
    {"--listen", true, [](Config& c, const std::string& v) { c.options.addr = v; }},
    {"--maildir", true, [](Config& c, const std::string& v) { c.maildir = v; }},
    {"--hostname", true, [](Config& c, const std::string& v) { c.options.hostname = v; }},
    {"--max-size", true,
     [](Config& c, const std::string& v) { c.options.max_message_bytes = parse_size(v); }},
    {"--max-recipients", true,
     [](Config& c, const std::string& v) { c.options.max_recipients = parse_size(v); }},
    {"--timeout", true, [](Config& c, const std::string& v) { set_timeout(c, v); }},
    {"--max-connections", true,
     [](Config& c, const std::string& v) { c.options.max_connections = parse_size(v); }},
    {"--strict", false, [](Config& c, const std::string&) { c.options.strict = true; }},
    {"--tls-cert", true, [](Config& c, const std::string& v) { c.options.tls_cert_file = v; }},
    {"--tls-key", true, [](Config& c, const std::string& v) { c.options.tls_key_file = v; }},
    {"--tls-key-password", true,
     [](Config& c, const std::string& v) { c.options.tls_key_password = v; }},
    {"--tls-required", false, [](Config& c, const std::string&) { c.options.tls_required = true; }},
    {"--tls-implicit", false, [](Config& c, const std::string&) { c.options.tls_implicit = true; }},
    {"--tls-client-ca", true,
     [](Config& c, const std::string& v) { c.options.tls_client_ca_file = v; }},
    {"--auth", true, [](Config& c, const std::string& v) { add_account(c.users, v, "the value"); }},
    {"--auth-file", true, [](Config& c, const std::string& v) { c.auth_files.push_back(v); }},
    {"--auth-required", false,
     [](Config& c, const std::string&) { c.options.auth_required = true; }},
    {"--auth-insecure", false,
     [](Config& c, const std::string&) { c.options.auth_insecure = true; }},
    {"--quiet", false, [](Config& c, const std::string&) { c.quiet = true; }},
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
  if (alone != nullptr) throw UsageError(std::string(alone) + " needs --tls-cert and --tls-key");
}

// check_auth_flags - --auth-required and --auth-insecure need a user from --auth or
// --auth-file. Throws UsageError naming the first flag that is alone.
void check_auth_flags(const Config& config) {
  if (!config.users.empty() || !config.auth_files.empty()) return;
  if (config.options.auth_required) throw UsageError("--auth-required needs --auth or --auth-file");
  if (config.options.auth_insecure) throw UsageError("--auth-insecure needs --auth or --auth-file");
}

// parse_args - read argv strictly: "--flag value" or "--flag=value"; throws UsageError for an
// unknown flag, a missing or empty value, a value given to a switch, a bad number or account,
// a TLS flag without the certificate and key it needs, or an AUTH flag without a user.
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
  }
  if (!config.help) {
    check_tls_flags(config.options);
    check_auth_flags(config);
  }
  return config;
}

// print_usage - the --help text; the defaults shown come from smtpd::Options itself.
void print_usage(std::ostream& out) {
  const smtpd::Options defaults;
  const auto timeout = std::chrono::duration_cast<std::chrono::seconds>(defaults.command_timeout);
  out << "usage: mailsink [options]\n"
      << "\n"
      << "A mail catcher for developers and scripts: an SMTP server that accepts every message\n"
      << "and prints it to stdout or stores it in a Maildir. It never relays mail.\n"
      << "\n"
      << "options (also accepted as --flag=value):\n"
      << "  --listen HOST:PORT    address to listen on (default " << default_listen << ");\n"
      << "                        [::1]:PORT for IPv6, :PORT for every address, port 0 for\n"
      << "                        any free port (the startup line tells which)\n"
      << "  --maildir DIR         store each message as a file in DIR/new, creating DIR,\n"
      << "                        DIR/tmp, DIR/new and DIR/cur if missing (default: print\n"
      << "                        each message to stdout instead)\n"
      << "  --hostname NAME       our name in the greeting and the Received header\n"
      << "                        (default: the system host name)\n"
      << "  --max-size BYTES      largest message accepted, advertised as SIZE\n"
      << "                        (default " << defaults.max_message_bytes << ")\n"
      << "  --max-recipients N    most recipients of one message (default "
      << defaults.max_recipients << ")\n"
      << "  --timeout SECONDS     close a connection silent this long, in commands or in\n"
      << "                        message data; at most " << max_timeout_seconds << " (default "
      << timeout.count() << ")\n"
      << "  --max-connections N   clients served at once; more are refused with 421\n"
      << "                        (default " << defaults.max_connections << ")\n"
      << "  --strict              refuse bare CR or LF in messages, over-long lines, and\n"
      << "                        MAIL/RCPT syntax RFC 5321 does not allow (default: lenient)\n"
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
      << "  --quiet               print nothing per message and no startup line; errors\n"
      << "                        still go to stderr (default: not quiet)\n"
      << "  --help                print this help and exit\n"
      << "\n"
      << "Each message gets a summary line on stdout: time, client, the TLS version when the\n"
      << "session used TLS, auth=USER when the client authenticated, <sender> -> <recipients>,\n"
      << "size and subject, then the message itself, or with --maildir the stored file's path.\n"
      << "A client that fails AUTH " << defaults.auth_max_failures
      << " times in one session is disconnected.\n"
      << "SIGINT or SIGTERM stops mailsink gracefully; messages being received are finished.\n"
      << "\n"
      << "exit status:\n"
      << "  " << exit_ok << "  stopped by SIGINT or SIGTERM, or --help\n"
      << "  " << exit_runtime_error
      << "  setup or runtime error (unusable maildir, TLS certificate or key,\n"
      << "     --auth-file, or address to listen on)\n"
      << "  " << exit_usage_error
      << "  usage error (unknown flag, missing or bad value, a TLS flag\n"
      << "     without --tls-cert and --tls-key, an AUTH flag without --auth or --auth-file)\n";
}

// =============================================================================================
// 2. Output
// =============================================================================================

// Output - stdout and stderr, shared by every connection thread; one lock keeps each message
// and each error line whole.
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
    std::cerr << "mailsink: " << text << std::endl;
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
bool write_all(int fd, const std::string& content) {
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
// 4. Sink - what happens to each message
// =============================================================================================

// starts_with_ignoring_case - whether `text` begins with the ASCII `prefix`, in any case.
bool starts_with_ignoring_case(std::string_view text, std::string_view prefix) {
  if (text.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    char c = text[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != prefix[i]) return false;
  }
  return true;
}

// subject_of - the first line of the first Subject header (RFC 5322 §3.6.5), or "" when the
// header section, which ends at the first empty line, has none.
std::string subject_of(const std::string& message) {
  std::size_t start = 0;
  while (start < message.size()) {
    std::size_t end = message.find('\n', start);
    if (end == std::string::npos) end = message.size();
    std::string_view line(message.data() + start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) break;
    if (starts_with_ignoring_case(line, "subject:")) {
      line.remove_prefix(8);
      while (!line.empty() && (line.front() == ' ' || line.front() == '\t'))
        line.remove_prefix(1);
      return std::string(line);
    }
    start = end + 1;
  }
  return "";
}

// printable - `text` with control characters replaced by '?', so a hostile subject cannot
// send escape sequences to the terminal or break the one-line summary.
std::string printable(std::string text) {
  for (char& c : text) {
    const unsigned char byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) c = '?';
  }
  return text;
}

// local_time_now - the current local time as "2024-05-01 13:45:07".
std::string local_time_now() {
  std::time_t now = std::time(nullptr);
  std::tm parts{};
  ::localtime_r(&now, &parts);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%d %H:%M:%S", &parts);
  return text;
}

// summary_line - "TIME PEER [TLSv1.3] [auth=USER] <from> -> <to>, <to> SIZE bytes, subject
// "SUBJECT"" without a newline; the TLS version only when the session used TLS, the user only
// when the client authenticated; "<>" is the null reverse-path of a bounce.
std::string summary_line(const smtpd::SessionInfo& session, const smtpd::Envelope& envelope,
                         const std::string& message) {
  std::ostringstream line;
  line << local_time_now() << " " << session.peer.to_string();
  if (session.tls) line << " " << session.tls_version;
  if (!session.auth_user.empty()) line << " auth=" << session.auth_user;
  line << " <" << envelope.from << "> ->";
  for (std::size_t i = 0; i < envelope.to.size(); ++i)
    line << (i == 0 ? " <" : ", <") << envelope.to[i] << ">";
  line << " " << message.size() << " bytes, subject \"" << subject_of(message) << "\"";
  return printable(line.str());
}

// Sink - receives each message: stores it when there is a Maildir, prints it unless quiet.
class Sink {
public:
  Sink(Output& output, Maildir* maildir, bool quiet)
      : output_(output), maildir_(maildir), quiet_(quiet) {}

  // receive - the smtpd::MessageHandler: nullopt accepts (250), a Reply refuses with it.
  std::optional<smtpd::Reply> receive(const smtpd::SessionInfo& session,
                                      const smtpd::Envelope& envelope, const std::string& message) {
    if (maildir_ == nullptr) {
      if (!quiet_) output_.print(summary_line(session, envelope, message) + "\n" + message + "\n");
      return std::nullopt;
    }
    std::string path;
    try {
      path = maildir_->deliver(message);
    } catch (const std::system_error& e) {
      output_.log(std::string("could not store a message: ") + e.what());
      return smtpd::Reply{451, "4.3.0", "Local error: could not store message"};
    }
    if (!quiet_) output_.print(summary_line(session, envelope, message) + " " + path + "\n");
    return std::nullopt;
  }

private:
  Output& output_;
  Maildir* maildir_; // nullptr: print to stdout
  bool quiet_;
};

// =============================================================================================
// 5. Users - the AUTH accounts and the password check
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
// 6. main - setup, serving and shutdown
//
// Signals are handled the thread-safe way: SIGINT and SIGTERM are blocked before any thread
// exists, so every thread inherits the block and none is interrupted; main() alone takes them
// with sigwait() and then calls Server::shutdown(), which is not async-signal-safe.
// =============================================================================================

// block_stop_signals - block SIGINT and SIGTERM in this thread and the threads it starts
// later, ignore SIGPIPE (a client gone mid-reply), and return the set for sigwait().
sigset_t block_stop_signals() {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  return stop_signals;
}

// server_options - the command line's options plus the message handler, the error log and,
// when there are users, the AUTH checks.
smtpd::Options server_options(const Config& config, Sink& sink, Output& output) {
  smtpd::Options options = config.options;
  options.message_handler = [&sink](const smtpd::SessionInfo& session,
                                    const smtpd::Envelope& envelope, const std::string& message) {
    return sink.receive(session, envelope, message);
  };
  options.log_error = [&output](std::string_view message) { output.log(std::string(message)); };
  install_auth(options, config.users);
  return options;
}

// serve_until_signal - serve on a thread until SIGINT or SIGTERM, then shut down gracefully.
// Returns the exit status: exit_ok, or exit_runtime_error when serving failed by itself.
int serve_until_signal(smtpd::Server& server, const sigset_t& stop_signals, Output& output) {
  std::atomic<bool> stopping{false};
  std::atomic<bool> serve_ended{false};
  std::string serve_error; // read only after join()
  std::thread serving([&] {
    try {
      server.serve();
    } catch (const std::exception& e) { serve_error = e.what(); }
    serve_ended = true;
    if (!stopping) { // serving failed by itself: wake main() from sigwait()
      if (serve_error.empty()) serve_error = "the server stopped unexpectedly";
      ::kill(::getpid(), SIGTERM);
    }
  });
  // Wait until serve() accepts, so that shutdown() cannot come before it, unless it failed.
  while (!server.wait_ready(std::chrono::milliseconds(100)) && !serve_ended) {}
  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  stopping = true;
  server.shutdown(std::chrono::seconds(10));
  serving.join();
  if (serve_error.empty()) return exit_ok;
  output.log(serve_error);
  return exit_runtime_error;
}

} // namespace

// main - parse the command line, read the --auth-files, prepare the Maildir, listen, then serve
// until a signal.
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

  const sigset_t stop_signals = block_stop_signals(); // before any thread is started
  Output output;
  try {
    for (const std::string& path : config.auth_files)
      load_auth_file(path, config.users);
  } catch (const std::runtime_error& e) { // std::system_error too: an unreadable file
    output.log(e.what());
    return exit_runtime_error;
  }
  std::optional<Maildir> maildir;
  if (!config.maildir.empty()) {
    try {
      maildir.emplace(config.maildir).prepare();
    } catch (const std::system_error& e) {
      output.log("cannot use maildir " + config.maildir + ": " + e.what());
      return exit_runtime_error;
    }
  }

  Sink sink(output, maildir ? &*maildir : nullptr, config.quiet);
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
  return serve_until_signal(*server, stop_signals, output);
}
