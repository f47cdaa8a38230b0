// smtpd.hpp - an SMTP server (mail receiver) library for C++17, in two files.
//
// Drop smtpd.hpp and smtpd.cpp into your project and build with one line:
//
//     g++ -std=c++17 -O2 -pthread app.cpp smtpd.cpp -lssl -lcrypto
//     g++ -std=c++17 -O2 -pthread -DSMTPD_NO_TLS app.cpp smtpd.cpp      (no OpenSSL)
//
// The smallest program:
//
//     smtpd::ListenAndServe("127.0.0.1:2525",
//         [](const smtpd::Peer& peer, const std::string& from,
//            const std::vector<std::string>& to, const std::string& data) { ... },
//         "myapp", "");
//
// The library has three layers (see smtpd.cpp, which reads top to bottom as a lesson in SMTP):
// Protocol, the socket-free RFC 5321 state machine; the Connection loop, one thread per client;
// and Server, which listens, accepts, limits and shuts down. This header is the public API only.
#ifndef SMTPD_HPP
#define SMTPD_HPP

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#define SMTPD_VERSION "0.1.0"

// OpenSSL's SSL_CTX, declared (not defined) so this header needs no OpenSSL headers and has the
// same layout with and without TLS.
struct ssl_ctx_st;

namespace smtpd {

// ---------------------------------------------------------------------------------------------
// Value types
// ---------------------------------------------------------------------------------------------

// Reply - one SMTP reply: a three-digit code, an RFC 3463 enhanced status code and text.
// `text` may hold several lines separated by '\n'; they go out as a multi-line reply.
// Hooks and handlers refuse something by returning or throwing a Reply (e.g. 550 "5.1.1").
// An enhanced code that is empty or does not match the code's class is replaced by "X.0.0".
struct Reply {
  int code = 250;
  std::string enhanced; // "2.1.0"; empty: derived from the code
  std::string text;     // human-readable text; never interpreted as a format string

  Reply() = default;

  Reply(int reply_code, std::string enhanced_code, std::string reply_text)
      : code(reply_code), enhanced(std::move(enhanced_code)), text(std::move(reply_text)) {}

  bool positive() const { return code >= 200 && code < 400; }

  // ---- named refusals: the common policy answers, with their RFC 3463 enhanced codes ----
  // Return or throw them from a hook: `return smtpd::Reply::no_such_user();`.

  // no_such_user - 550 5.1.1 "No such user": the recipient's mailbox does not exist (RCPT).
  static Reply no_such_user() { return {550, "5.1.1", "No such user"}; }

  // bad_helo - 550 5.7.1 "Bad HELO": the HELO/EHLO name is refused by policy.
  static Reply bad_helo() { return {550, "5.7.1", "Bad HELO"}; }

  // fcrdns_failure - 550 5.7.25 "FCrDNS failure": the client's address has no forward-confirmed
  // reverse DNS name (RFC 7372 §3.3, "reverse DNS validation failed"). From on_connect it goes
  // out as the 554 greeting, as every permanent refusal there does (RFC 5321 §3.1).
  static Reply fcrdns_failure() { return {550, "5.7.25", "FCrDNS failure"}; }

  // ip_on_blocklist - 554 5.7.1 "IP address is on a blocklist", followed by ": " and `zone`
  // (a DNSBL zone or a reason) when one is given.
  static Reply ip_on_blocklist(std::string_view zone = {}) {
    return {554, "5.7.1", with_reason("IP address is on a blocklist", zone)};
  }

  // domain_on_blocklist - 554 5.7.1 "Domain is on a blocklist", followed by ": " and `zone`
  // when one is given.
  static Reply domain_on_blocklist(std::string_view zone = {}) {
    return {554, "5.7.1", with_reason("Domain is on a blocklist", zone)};
  }

  // no_valid_recipients - 554 5.5.1 "No valid recipients": the server's own answer to DATA
  // after every RCPT was refused (RFC 5321 §3.3).
  static Reply no_valid_recipients() { return {554, "5.5.1", "No valid recipients"}; }

private:
  // with_reason - `text`, then ": " and `reason` with CR, LF and every other control character
  // made a space (so a zone can neither end the reply line nor add one); "" adds nothing.
  static std::string with_reason(std::string text, std::string_view reason) {
    if (reason.empty()) return text;
    text += ": ";
    for (char c : reason)
      text += static_cast<unsigned char>(c) < 0x20 || c == 0x7F ? ' ' : c;
    return text;
  }
};

// Peer - one end of a connection: an IP address and port, or a Unix-domain socket.
struct Peer {
  std::string ip;       // "192.0.2.1" or "2001:db8::1" (no brackets); "" on a Unix socket
  uint16_t port = 0;    // remote TCP port; 0 on a Unix socket
  std::string hostname; // reverse-DNS name when Options::reverse_dns found one, else empty

  // A Unix-domain socket (Options::addr "unix:PATH"): its path, and for the client's end the
  // credentials of the process that connected (SO_PEERCRED, unix(7)); -1 when unknown or TCP.
  std::string unix_path;
  int pid = -1, uid = -1, gid = -1;

  bool is_unix() const { return !unix_path.empty(); }

  // "192.0.2.1:1234", "[2001:db8::1]:1234", or "unix:/run/lmtp.sock" with the client's
  // credentials when known: "unix:/run/lmtp.sock[pid=12,uid=1000,gid=1000]"
  std::string to_string() const;
};

// Params - ESMTP parameters of MAIL or RCPT (RFC 5321 §4.1.2 esmtp-param), in the order given.
// Keywords are upper-cased; a parameter without "=value" has an empty value.
using Params = std::vector<std::pair<std::string, std::string>>;

// MailOptions - the parameters of MAIL FROM, parsed: RFC 1870 SIZE, RFC 6152 and RFC 3030
// BODY, RFC 6531 SMTPUTF8, RFC 3461 RET and ENVID (DSN), RFC 8689 REQUIRETLS, RFC 4954 AUTH.
// `params` keeps every parameter as given, those of Options::mail_parameters included.
struct MailOptions {
  uint64_t size = 0;       // SIZE=; 0 when not given
  bool body_8bit = false;  // BODY=8BITMIME
  bool binarymime = false; // BODY=BINARYMIME (RFC 3030 §3): the content may be any octets,
                           // and it comes only with BDAT
  bool smtputf8 = false;   // SMTPUTF8
  bool requiretls = false; // REQUIRETLS (RFC 8689): pass the message on only over verified TLS
  std::string ret;         // RET= (DSN): "FULL" or "HDRS" (upper case); "" when not given
  std::string envid;       // ENVID= (DSN), xtext-decoded; "" when not given
  // AUTH= (RFC 4954 §5), xtext-decoded: "<>" or a mailbox. Trusted only in an authenticated
  // session; otherwise "<>" whatever the client said (§5: an untrusted value is not passed on).
  // "" when not given.
  std::string auth;
  Params params;
};

// RcptOptions - the parameters of RCPT TO, parsed: RFC 3461 NOTIFY and ORCPT (DSN). `params`
// keeps every parameter as given, those of Options::rcpt_parameters included.
struct RcptOptions {
  // NOTIFY= (DSN): {"NEVER"}, or some of "SUCCESS", "FAILURE", "DELAY" in the order given
  // (upper case); empty when not given.
  std::vector<std::string> notify;
  std::string orcpt_type; // ORCPT= address type, e.g. "rfc822" (as given); "" when not given
  std::string orcpt;      // ORCPT= original recipient, xtext-decoded
  Params params;
};

// Envelope - one mail transaction (RFC 5321 §3.3): reset by MAIL, RSET, HELO/EHLO and after the
// message.
struct Envelope {
  std::string from;              // reverse-path without brackets; "" for the null path <>
  std::vector<std::string> to;   // accepted forward-paths, without brackets, in order
  Params mail_params;            // parameters of the MAIL command (SIZE, BODY, SMTPUTF8...)
  bool smtputf8 = false;         // MAIL carried SMTPUTF8 (RFC 6531): addresses may be UTF-8
  bool body_8bit = false;        // MAIL carried BODY=8BITMIME (RFC 6152)
  MailOptions mail;              // the MAIL parameters, parsed (DSN, REQUIRETLS, AUTH=, BODY...)
  std::vector<RcptOptions> rcpt; // the parameters of each accepted recipient: rcpt[i] is to[i]'s
  bool chunked = false;          // the content came with BDAT (RFC 3030), not DATA
};

// DnsStatus - the outcome of one DNS check (README "DNS checks").
enum class DnsStatus {
  not_checked, // the check is off, the client is exempt, or it has not run yet
  pass,        // confirmed
  fail,        // definitely not: the DNS answered, and the answer says no
  temp_error,  // no usable answer: a timeout, SERVFAIL, a malformed reply
};

// DnsListing - one blocklist entry found for the client (RFC 5782): its IP on a DNSBL, or its
// HELO name or MAIL FROM domain on an RHSBL.
struct DnsListing {
  std::string zone;    // the list's zone, e.g. "dnsbl.example"
  std::string source;  // what was looked up: "ip", "helo" or "mail"
  std::string listed;  // the IP or domain that is listed
  std::string address; // the list's A record, e.g. "127.0.0.2" (its return code, RFC 5782 §2.3)
  std::string reason;  // the TXT record, or "" when the list gives none
};

// DnsChecks - the results of the DNS checks for this session, for hooks and Session objects
// (e.g. to score several lists, as postscreen's dnsbl_threshold does, instead of refusing).
struct DnsChecks {
  bool exempt = false; // a check is on, but the client is in limit_exempt_networks: no
                       // lookups (set by Server; a Protocol's owner may set it)
  DnsStatus fcrdns = DnsStatus::not_checked; // forward-confirmed reverse DNS
  std::string fcrdns_name; // the PTR name that resolves back to the client's IP, when pass
  DnsStatus helo = DnsStatus::not_checked; // the HELO/EHLO name is fcrdns_name or resolves to
                                           // the IP (an address literal: is the IP)
  std::vector<DnsListing> listings;        // DNSBL and RHSBL entries found, in query order
};

// SessionInfo - the connection, as far as the client has told us (RFC 5321 §3: a session).
struct SessionInfo {
  std::string id; // unique per session; also in the Received header's id clause and log lines
  Peer peer;
  Peer local;       // our end: the address and port the client connected to (no hostname)
  Peer proxy;       // the proxy's own end when a PROXY header or XCLIENT named the peer; else empty
  std::string helo; // the HELO/EHLO argument; empty before it
  bool esmtp = false;           // true after EHLO, false after HELO
  bool tls = false;             // the session runs over TLS
  std::string tls_version;      // "TLSv1.3" when tls
  std::string tls_cipher;       // "TLS_AES_256_GCM_SHA384" when tls
  std::string tls_peer_subject; // the verified client certificate's subject (RFC 2253), or ""
  std::string auth_user;        // the authenticated identity; empty when not authenticated
  DnsChecks dns;                // the DNS checks' results (all not_checked when they are off)
};

// ---------------------------------------------------------------------------------------------
// Addresses - a mailbox split into its parts, for hooks and handlers (RFC 5321 §4.1.2)
// ---------------------------------------------------------------------------------------------

// Mailbox - one address: local "@" domain, or local "@" address literal.
struct Mailbox {
  std::string local;           // the local part exactly as written: quotes, backslashes, case
  std::string domain;          // the domain as written; "" when the address has a literal
  std::string address_literal; // with its brackets: "[192.0.2.1]", "[IPv6:2001:db8::1]"; or ""
  bool utf8 = false;           // holds UTF-8 (non-ASCII): needs SMTPUTF8 (RFC 6531) to travel

  // address - the mailbox again, as written: local "@" domain (or address literal).
  std::string address() const;

  // domain_lower - the domain with ASCII letters lower-cased (other octets as they are), for
  // comparing domains; "" when the address has a literal.
  std::string domain_lower() const;

  // user - the local part without its quotes and backslashes ("john smith"@x gives john smith,
  // "a\"b"@x gives a"b), cut before its first '+': jo+news@x gives jo, +news@x gives "" (the
  // tag is all there is). Case is kept.
  std::string user() const;
};

// parse_mailbox - split "local@domain" (a mailbox as hooks receive it) or "<local@domain>" with
// the parser the server uses for MAIL and RCPT (RFC 5321 §4.1.2; UTF-8 local parts and domains
// as RFC 6531 allows, with `utf8` set), within its limits: local part 64 octets, domain 255,
// the text 256 (RFC 5321 §4.5.3.1). So every `from` and `to` a hook receives parses, but ""
// (the null reverse-path <>) and the bare "Postmaster" RCPT accepts (RFC 5321 §4.1.1.3): those
// are no mailboxes. nullopt when not valid: also "<>", a source route, spaces around it.
std::optional<Mailbox> parse_mailbox(std::string_view text);

// ---------------------------------------------------------------------------------------------
// Hooks and handlers
//
// Every hook may return a Reply (or throw one) to answer with that reply instead of the
// default; a 2xx reply accepts, a 4xx/5xx reply refuses. Returning std::nullopt accepts with
// the default reply. Any other exception a hook throws becomes "451 4.3.0" and the session goes
// on. A 421 from any hook, handler or sink is sent and then the connection is closed (RFC 5321
// §3.8: 421 means the server is closing the channel); other 4xx replies leave the session open.
// Hooks run on the connection's thread, synchronously, one session at a time per thread.
// ---------------------------------------------------------------------------------------------

// Handler - called once per message, after the final dot, before the server replies. `data` is
// the whole message, CRLF line ends, dot-unstuffed, with our Received header on top. Return
// normally to accept (250); throw a Reply to refuse with it. Unset: messages are accepted and
// dropped. This is the shape of mhale/smtpd's Handler.
using Handler = std::function<void(const Peer& remote, const std::string& from,
                                   const std::vector<std::string>& to, const std::string& data)>;

// MessageHandler - the same moment as Handler, for users who need the whole session (HELO name,
// TLS, AUTH) and envelope. Return nullopt or a 2xx Reply to accept, a 4xx/5xx Reply to refuse.
// Set one of handler, message_handler, stream_handler and per_recipient_handler (Server throws
// when two are set).
using MessageHandler = std::function<std::optional<Reply>(
    const SessionInfo& session, const Envelope& envelope, const std::string& data)>;

// RecipientReplies - the verdict on one message per recipient, for LMTP (RFC 2033 §4.2) and
// partial delivery: element i answers envelope.to[i]; nullopt or a 2xx Reply delivers to that
// recipient, a 4xx/5xx Reply refuses it. In LMTP each one is that recipient's reply after the
// data. In SMTP there is one reply for the message, so they are folded (README "LMTP"): all
// delivered gives the first 2xx given (or 250); otherwise a refusal wins, a 421 first, then
// the first other 4xx (the client retries later), then the first 5xx. A list of the wrong
// length is a bug: every recipient gets 451 4.3.0.
using RecipientReplies = std::vector<std::optional<Reply>>;

// PerRecipientHandler - the same moment as MessageHandler, with a verdict per recipient (a
// mailbox store that files the message into each mailbox on its own). Set one handler only.
using PerRecipientHandler = std::function<RecipientReplies(
    const SessionInfo& session, const Envelope& envelope, const std::string& data)>;

// MessageSink - receives one message in pieces as it arrives (see StreamHandler). write() gets
// consecutive pieces, the first beginning with our Received header; finish(), after the final
// dot, gives the verdict: nullopt or a 2xx Reply accepts, a 4xx/5xx Reply refuses. A sink
// destroyed without finish() was abandoned: the client went away, or the message was refused
// for its size or (strict mode) its content. write() and finish() may throw a Reply; any other
// exception becomes 451 4.3.0 (after a failed write() the rest is read and dropped).
class MessageSink {
public:
  virtual ~MessageSink() = default;
  virtual void write(std::string_view piece) = 0;
  virtual std::optional<Reply> finish() = 0;

  // finish_per_recipient - instead of finish(), a verdict per recipient (see RecipientReplies).
  // The default gives finish()'s one verdict to every recipient.
  virtual RecipientReplies finish_per_recipient(const Envelope& envelope);
};

// StreamHandler - called at DATA, before the 354: return the sink for this message, or throw a
// Reply to refuse the DATA command. Memory per message then stays within stream_chunk_bytes
// whatever its size (go-smtp's io.Reader style). Set it instead of handler or message_handler.
using StreamHandler = std::function<std::unique_ptr<MessageSink>(const SessionInfo& session,
                                                                 const Envelope& envelope)>;

// ConnectHook - a client connected, before the greeting. Unset: every client is greeted.
// A 2xx reply accepts, but the greeting stays "220 <hostname> ESMTP <appname>" (RFC 5321 §4.2
// wants our domain first).
// A 4xx reply is sent as 421 and the connection closed; a 5xx reply is sent as the greeting
// (554) and every later command but QUIT gets 503 (RFC 5321 §3.1).
using ConnectHook = std::function<std::optional<Reply>(const SessionInfo& session)>;

// HeloHook - the client said HELO/EHLO `name`. Unset: every name is accepted. A 2xx reply
// accepts with the standard reply (our name and, for EHLO, the extension list).
using HeloHook =
    std::function<std::optional<Reply>(const SessionInfo& session, const std::string& name)>;

// MailHook - MAIL FROM:<from> with its parameters. Unset: every sender is accepted.
using MailHook = std::function<std::optional<Reply>(const SessionInfo& session,
                                                    const std::string& from, const Params& params)>;

// RcptHook - RCPT TO:<to> with its parameters. Unset: every recipient is accepted.
using RcptHook = std::function<std::optional<Reply>(const SessionInfo& session,
                                                    const std::string& to, const Params& params)>;

// AuthHook - check a user name and password sent with AUTH PLAIN or LOGIN (RFC 4954). Return
// true to accept. `authzid` is PLAIN's authorization identity ("" when absent); the session's
// auth_user becomes `username`. Throwing a Reply answers with it (e.g. 454 4.7.0); any other
// exception becomes "454 4.7.0". Unset (and no auth_secret): AUTH is not offered.
using AuthHook = std::function<bool(const SessionInfo& session, const std::string& mechanism,
                                    const std::string& username, const std::string& password,
                                    const std::string& authzid)>;

// SecretLookup - the plaintext secret of `username` for CRAM-MD5 (RFC 2195), which needs it to
// check the client's answer; nullopt for an unknown user. CRAM-MD5 is offered only when set.
using SecretLookup = std::function<std::optional<std::string>(const SessionInfo& session,
                                                              const std::string& username)>;

// LogHook - one line read from (log_read) or written to (log_write) a client, without CRLF.
// Message content is not logged line by line: log_read gets one "<N octets of message data>"
// line per message, and AUTH exchanges are masked ("AUTH PLAIN ****"), so no password is ever
// logged. Unset: nothing is logged.
using LogHook = std::function<void(const Peer& peer, std::string_view line)>;

// ErrorLog - a system-level event: accept() failures, refused connections, handler exceptions.
// Unset: nothing is logged.
using ErrorLog = std::function<void(std::string_view message)>;

// ---------------------------------------------------------------------------------------------
// Session - an object per connection (go-smtp's Session, alienscience's SessionHandler), for
// state that lives as long as the session: greylisting triplets, a database handle, counters.
// Set Options::new_session; it is called once per connection, before the greeting, and the
// object lives until just after close(). Every method runs on the connection's thread, so the
// object needs no locking of its own. Each method may return or throw a Reply as hooks do (see
// above); every method has an accepting default, so override only what you need.
// ---------------------------------------------------------------------------------------------

// SessionEnd - why a session ended, as close() is told.
enum class SessionEnd {
  quit,        // the client said QUIT (RFC 5321 §4.1.1.10)
  timeout,     // the client was silent too long (421 4.4.2)
  client_gone, // the connection broke or the client closed it without QUIT, TLS failure included
  shutdown,    // the server is stopping (421 4.3.2)
  refused,     // we closed it: a 421 from a limit, a hook or this object, or a 554 non-SMTP verb
};

class Session {
public:
  virtual ~Session() = default;

  // command - every command line, before it runs (mailhog's verb filter); AUTH's credentials
  // are masked as in logs. Return a Reply to refuse it (it is then not run), nullopt to go on.
  virtual std::optional<Reply> command(const SessionInfo& session, std::string_view line);

  // hello - HELO/EHLO `name` (RFC 5321 §4.1.1.1).
  virtual std::optional<Reply> hello(const SessionInfo& session, const std::string& name);

  // mail - MAIL FROM:<from> (RFC 5321 §4.1.1.2); "" is the null reverse-path <>.
  virtual std::optional<Reply> mail(const SessionInfo& session, const std::string& from,
                                    const MailOptions& options);

  // rcpt - RCPT TO:<to> (RFC 5321 §4.1.1.3); `envelope` holds the sender and the recipients
  // accepted so far (greylisting sees client, sender and recipient together).
  virtual std::optional<Reply> rcpt(const SessionInfo& session, const Envelope& envelope,
                                    const std::string& to, const RcptOptions& options);

  // data - DATA was accepted: return a MessageSink to receive the message in pieces as it
  // arrives, or nullptr (the default) to get it whole in message(). Throw a Reply to refuse.
  virtual std::unique_ptr<MessageSink> data(const SessionInfo& session, const Envelope& envelope);

  // message - the whole message after the final dot (when data() returned nullptr), with our
  // Received header on top; the reply (250 by default) is sent only after this returns.
  virtual std::optional<Reply> message(const SessionInfo& session, const Envelope& envelope,
                                       const std::string& data);

  // message_per_recipient - the same moment, with a verdict per recipient (see
  // RecipientReplies); the one the server calls. The default gives message()'s one verdict to
  // every recipient, so override one of the two.
  virtual RecipientReplies message_per_recipient(const SessionInfo& session,
                                                 const Envelope& envelope, const std::string& data);

  // reset - the transaction ended or was abandoned: RSET, HELO/EHLO, STARTTLS, or after the
  // final dot whatever the verdict (RFC 5321 §4.1.1.5).
  virtual void reset(const SessionInfo& session);

  // close - the session ended (called once, last); the object is destroyed right after.
  virtual void close(const SessionInfo& session, SessionEnd why);

  // auth_mechanisms - the AUTH mechanisms (RFC 4954) to offer this session, of "PLAIN",
  // "LOGIN" and "CRAM-MD5"; asked at each EHLO and AUTH. PLAIN and LOGIN are still offered only
  // under TLS unless Options::auth_insecure. Default: none, so AUTH is not offered.
  virtual std::vector<std::string> auth_mechanisms(const SessionInfo& session);

  // check_password - AUTH PLAIN or LOGIN: true accepts. Default: false.
  virtual bool check_password(const SessionInfo& session, const std::string& mechanism,
                              const std::string& username, const std::string& password,
                              const std::string& authzid);

  // secret - AUTH CRAM-MD5: the user's plaintext secret, nullopt for an unknown user (default).
  virtual std::optional<std::string> secret(const SessionInfo& session,
                                            const std::string& username);
};

// SessionFactory - makes the Session of a new connection, before the greeting. Throw a Reply
// to refuse the client as on_connect does (4xx: 421 and close; 5xx: 554, then only QUIT).
using SessionFactory = std::function<std::unique_ptr<Session>(const SessionInfo& session)>;

// Tracer - the exact bytes of one session (alienscience's SessionTracer), for debugging: what
// the client sent (AUTH exchanges masked as "****", message content included), what we wrote,
// a mark after each burst written, and the end. Runs on the connection's thread.
class Tracer {
public:
  virtual ~Tracer() = default;
  virtual void client(std::string_view bytes) = 0; // bytes read, in order
  virtual void server(std::string_view bytes) = 0; // bytes queued to write, in order

  // chunk - the octets of a BDAT chunk (RFC 3030), in order with the rest; by default they go
  // to client() as well. Override it to show a size instead: they may be binary.
  virtual void chunk(std::string_view bytes) { client(bytes); }

  virtual void flush() {} // the bytes since the last flush went out

  virtual void close() {} // the session ended
};

// TracerFactory - a Tracer for a new session, or nullptr not to trace it.
using TracerFactory = std::function<std::unique_ptr<Tracer>(const SessionInfo& session)>;

// ---------------------------------------------------------------------------------------------
// DNS - the lookups behind the DNS checks (Options::dns_*, README "DNS checks"). The Protocol
// asks an injectable DnsResolver, so tests and fuzzers answer from a table; a Server uses the
// C library's resolver (res_nquery) unless Options::dns_resolver names another.
// ---------------------------------------------------------------------------------------------

// DnsType - the record types the checks ask for (RFC 1035 §3.2.2, RFC 3596 for AAAA).
enum class DnsType : uint16_t { a = 1, ptr = 12, txt = 16, aaaa = 28 };

// DnsQuery - one question: a name and a type.
struct DnsQuery {
  std::string name; // "2.0.0.127.dnsbl.example", no trailing dot
  DnsType type = DnsType::a;
};

// DnsAnswer - the answer to one question.
struct DnsAnswer {
  enum class Status { found, not_found, temp_error };
  Status status = Status::temp_error; // not_found: NXDOMAIN or no record of the type
  std::vector<std::string> records;   // A, AAAA: numeric address; PTR: the name, lower case,
                                      // no trailing dot; TXT: its strings joined
  uint32_t ttl = 0;                   // the smallest TTL of the records, seconds
};

// DnsResolver - answers questions. resolve() gets every question of one round at once and
// returns one answer per question, in order; it may ask them in parallel. It must not throw,
// and is called from many connection threads at once.
class DnsResolver {
public:
  virtual ~DnsResolver() = default;
  virtual std::vector<DnsAnswer> resolve(const std::vector<DnsQuery>& queries) = 0;
};

// The building blocks of the C library resolver, public for tests and fuzzers.
namespace dns {

// parse_answer - the records of `type` in the answer section of the DNS response `message`
// (RFC 1035 §4.1), with name compression (§4.1.4) checked for loops and bounds. NXDOMAIN or
// no such record: not_found; another RCODE, truncation or anything malformed: temp_error.
DnsAnswer parse_answer(std::string_view message, DnsType type);

// reverse_name - the name under which `ip` is looked up: IPv4 octets reversed, IPv6 nibbles
// reversed (RFC 1035 §3.5, RFC 3596 §2.5, RFC 5782 §2.1 and §2.4), followed by "." and `zone`
// ("in-addr.arpa" or "ip6.arpa" for a PTR). "" when `ip` is not a numeric address.
std::string reverse_name(const std::string& ip, const std::string& zone);

// Cache - answers kept until they expire, at most `max_entries` of them (the oldest goes
// first). Thread-safe. Temporary errors are not kept.
class Cache {
public:
  using Clock = std::chrono::steady_clock;
  Cache(std::size_t max_entries, std::chrono::seconds max_ttl);
  ~Cache();
  Cache(const Cache&) = delete;
  Cache& operator=(const Cache&) = delete;

  // get - the answer to `q` cached and not expired at `now`, or nullopt.
  std::optional<DnsAnswer> get(const DnsQuery& q, Clock::time_point now);
  // put - keep `a` until now + min(its ttl, max_ttl); a temp_error is not kept.
  void put(const DnsQuery& q, const DnsAnswer& a, Clock::time_point now);
  std::size_t size() const;

private:
  struct State;
  std::unique_ptr<State> s_;
};

} // namespace dns

// ---------------------------------------------------------------------------------------------
// Options - every setting of a Server (and of a Protocol), with its default. Frozen once
// serving starts: Server copies it at construction.
// ---------------------------------------------------------------------------------------------
struct Options {
  std::string addr = ":25";         // "host:port", "[v6]:port" or ":port" (all addresses);
                                    // "" is ":25", every address on the SMTP port; or
                                    // "unix:/path/to.sock", a Unix-domain socket
  unsigned unix_socket_mode = 0660; // file mode of a "unix:" socket (who may connect)
  bool lmtp = false; // speak LMTP (RFC 2033): LHLO, and a reply per recipient after the data
  std::string appname = "smtpd";              // shown in the greeting and the Received header
  std::string hostname;                       // our name in the greeting; "" = the system host name
  Handler handler;                            // see Handler
  MessageHandler message_handler;             // see MessageHandler; set at most one of these four:
  StreamHandler stream_handler;               // see StreamHandler; Server throws when two are set
  PerRecipientHandler per_recipient_handler;  // see PerRecipientHandler; or this one
  std::size_t stream_chunk_bytes = 64 * 1024; // the most a StreamHandler's message buffers

  ConnectHook on_connect; // see ConnectHook
  HeloHook on_helo;       // see HeloHook
  MailHook on_mail;       // see MailHook
  RcptHook on_rcpt;       // see RcptHook

  // A Session object per connection instead of the hooks above, the three handlers, on_auth
  // and auth_secret (setting both kinds makes Server throw: one place decides). See Session.
  SessionFactory new_session;
  TracerFactory new_tracer; // see Tracer; unset: no tracing

  LogHook log_read;   // see LogHook
  LogHook log_write;  // see LogHook
  ErrorLog log_error; // see ErrorLog

  std::size_t max_message_bytes = 25 * 1024 * 1024; // RFC 1870 SIZE; advertised in EHLO
  std::size_t max_recipients = 100;                 // RFC 5321 §4.5.3.1.8: at least 100
  std::size_t max_command_line_bytes = 512;         // with CRLF; RFC 5321 §4.5.3.1.4: at least 512
  bool smtputf8 = true; // advertise and accept SMTPUTF8 (RFC 6531); false: 555 for it

  // The ESMTP extensions that can be turned on or off; SIZE, 8BITMIME, PIPELINING and
  // ENHANCEDSTATUSCODES are always on, and LIMITS (RFC 9422) always tells RCPTMAX.
  bool chunking = true;    // CHUNKING (RFC 3030): the BDAT command
  bool binarymime = false; // BINARYMIME (RFC 3030 §3), needs chunking. Off by default: the
                           // handler then gets any octets (NUL, bare CR, bare LF) as content
  bool dsn = false; // DSN (RFC 3461): RET, ENVID, NOTIFY and ORCPT. Off by default: a receiver
                    // that advertises DSN owes the sender delivery notices (RFC 3461 §5.2)
  bool requiretls = false; // REQUIRETLS (RFC 8689), offered inside TLS only
  // Keywords of your own: MAIL and RCPT parameters to accept and pass on to the hooks and the
  // session in `params` instead of answering 555 (e.g. "XOORG"), and lines to add to the EHLO
  // reply (e.g. "XOORG" or "XFOO bar"). Unknown parameters still get 555.
  std::vector<std::string> mail_parameters;
  std::vector<std::string> rcpt_parameters;
  std::vector<std::string> ehlo_keywords;
  std::chrono::milliseconds command_timeout = std::chrono::minutes(5); // RFC 5321 §4.5.3.2.7
  std::chrono::milliseconds data_timeout = std::chrono::minutes(5);    // between data reads
  std::size_t max_connections = 1000; // concurrent; beyond it: 421 and close
  std::size_t hard_error_limit = 20;  // errors in one session before 421 and close (Postfix)
  bool strict = false; // reject bare CR/LF in data, over-long data lines, and MAIL/RCPT syntax
                       // that RFC 5321 §4.1.2 does not allow (e.g. "MAIL FROM: <a@b>")
  std::size_t thread_stack_bytes = 256 * 1024; // stack of each connection thread
  std::size_t max_idle_threads = 32;       // threads kept parked after their connection, for reuse
  std::chrono::microseconds read_spin{30}; // before a thread sleeps waiting for its client, it
                                           // yields and looks again this long (0: sleep at once)
  bool batch_scheduling = true; // connection threads run as SCHED_BATCH (Linux): a woken one
                                // waits its turn instead of preempting the running thread

  // TLS (RFC 3207 STARTTLS, RFC 8314 implicit TLS). Setting a certificate (or a context) turns
  // STARTTLS on. In a build with SMTPD_NO_TLS, setting any of these makes Server throw.
  std::string tls_cert_file;         // PEM certificate chain (leaf first)
  std::string tls_key_file;          // PEM private key
  std::string tls_key_password;      // passphrase of an encrypted key; "" for none
  ssl_ctx_st* tls_context = nullptr; // your own SSL_CTX instead of the files (you keep your
                                     // reference; the options below that shape it are not used)
  bool tls_required = false;         // before STARTTLS only EHLO HELO NOOP RSET STARTTLS QUIT: 530
  bool tls_implicit = false;         // handshake on connect, before the greeting (port 465 style)
  std::string tls_client_ca_file;    // ask clients for a certificate, verify it with these
                                     // CAs; a client without one is still served
  std::string tls_min_version = "TLSv1.2"; // "TLSv1.2" or "TLSv1.3"
  // The TLS 1.2 ciphers, in order of preference (the server's order wins), in OpenSSL's
  // cipher-list syntax (openssl-ciphers(1)). The default is Mozilla's "intermediate" TLS 1.2
  // list without its DHE ciphers (why: smtpd.cpp, section 6): ECDHE key exchange (forward
  // secrecy) with AEAD ciphers only, so no static RSA and no CBC. Widen it only for old
  // clients, e.g. append ":AES128-SHA". A list that selects no TLS 1.2 cipher makes Server throw.
  std::string tls_ciphers = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                            "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
                            "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256";
  // The TLS 1.3 cipher suites, in order of preference: OpenSSL's own default. Names from
  // RFC 8446 §B.4 separated by ':'; an unknown name makes Server throw; "" turns TLS 1.3 off
  // (refused with tls_min_version "TLSv1.3"). Neither list applies to a tls_context.
  std::string tls_ciphersuites =
      "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256";

  // Proxies, trusted networks and per-client rates (README "Running behind proxies").
  // Networks are CIDR strings ("10.0.0.0/8", "::1/128", or one address); a bad one makes
  // Server throw. Per-client rates count per client address over a sliding minute (Postfix's
  // anvil), do not apply to limit_exempt_networks, and are off (0) by default.
  std::vector<std::string> proxy_networks; // clients there must begin with a PROXY protocol
                                           // v1/v2 header (HAProxy); others are served directly
  std::chrono::milliseconds proxy_timeout = std::chrono::seconds(5); // for the whole header
  std::vector<std::string> xclient_networks; // clients there may send XCLIENT (nginx, Postfix)
  std::vector<std::string> trusted_networks; // not held to tls_required or auth_required
                                             // (go-smtp's SecureNet, Postfix's mynetworks)
  std::size_t max_connection_rate = 0;       // connections per client per minute: then 421 4.7.0
  std::size_t max_message_rate = 0;          // MAIL commands per client per minute: 450 4.7.1
  std::size_t max_recipient_rate = 0;        // RCPT commands per client per minute: 450 4.7.1
  std::size_t rate_table_size = 100000;      // client addresses the rate counters keep at most

  // AUTH (RFC 4954). Offered when on_auth (PLAIN, LOGIN) or auth_secret (CRAM-MD5) is set.
  AuthHook on_auth;                         // see AuthHook
  SecretLookup auth_secret;                 // see SecretLookup
  std::vector<std::string> auth_mechanisms; // offered, in this order; empty: every one possible
                                            // ("PLAIN", "LOGIN", "CRAM-MD5")
  bool auth_required = false;        // before AUTH only AUTH EHLO HELO NOOP RSET STARTTLS QUIT: 530
  bool auth_insecure = false;        // offer PLAIN and LOGIN without TLS (tests on loopback only)
  std::size_t auth_max_failures = 3; // failed AUTH attempts in a session before 421 and close
  std::chrono::milliseconds auth_failure_delay = std::chrono::seconds(1); // before each 535

  // Abuse limits (defaults follow Postfix's smtpd). Per-client limits do not apply to clients
  // in limit_exempt_networks, as Postfix exempts mynetworks: local proxies, tests, benchmarks.
  std::size_t soft_error_limit = 10; // errors after which each error reply waits error_delay
  std::chrono::milliseconds error_delay = std::chrono::seconds(1); // the tarpit
  std::size_t junk_command_limit = 100; // NOOP RSET VRFY HELP per message before each one
                                        // counts as an error
  std::size_t min_data_rate = 500;      // bytes/s: DATA may take data_timeout + size/rate
  std::chrono::milliseconds max_session_duration = std::chrono::hours(1); // then 421 4.4.2
  std::size_t max_connections_per_ip = 50; // concurrent, per client address: then 421 4.7.0
  std::vector<std::string> limit_exempt_networks = {"127.0.0.0/8", "::1/128"}; // CIDR
  std::chrono::milliseconds greeting_delay = std::chrono::milliseconds(0);     // wait before 220
  bool reject_early_talkers = true;           // input before our 220: 554 and close
  bool reject_unauthorized_pipelining = true; // a burst of commands before PIPELINING was
                                              // advertised (no EHLO yet): 554 and close
  bool reverse_dns = false; // look up the client's name (on its own thread) for Received
  std::chrono::milliseconds reverse_dns_timeout = std::chrono::seconds(2);

  // DNS checks (README "DNS checks"). All off by default: each refuses some legitimate mail.
  // They run for clients outside limit_exempt_networks, on the connection's thread.
  std::vector<std::string> dns_servers; // "IP" or "IP:PORT" (IPv4); empty: /etc/resolv.conf
  std::chrono::milliseconds dns_timeout = std::chrono::seconds(2); // per round of lookups, which
                                                                   // run in parallel
  std::size_t dns_cache_entries = 10000; // answers cached, shared by every connection
  std::chrono::seconds dns_cache_ttl = std::chrono::seconds(300); // at most; a record's TTL may
                                                                  // be shorter
  bool require_fcrdns = false;          // no forward-confirmed name: 550 5.7.25 (RFC 7372)
  bool helo_check = false;              // a HELO name that is not the client's: 550 5.7.1 Bad HELO
  bool dns_temp_error_refuses = true;   // a check that could not finish: 450 4.7.25 / 4.7.1;
                                        // false: let the client through
  std::vector<std::string> dnsbl_zones; // IP blocklists (RFC 5782), e.g. "zen.spamhaus.org"
  std::vector<std::string> rhsbl_zones; // domain blocklists: the HELO name, the MAIL domain
  bool dnsbl_refuse = true;             // a listed IP: 554 5.7.1; false: only recorded
  bool rhsbl_refuse = true;             // a listed domain: 554 5.7.1 at MAIL; false: recorded
  bool dns_refuse_at_rcpt = false;      // FCrDNS and DNSBL refusals at each RCPT (Postfix's
                                        // smtpd_delay_reject) instead of in the greeting
  std::shared_ptr<DnsResolver> dns_resolver; // null: a Server uses make_dns_resolver(*this)
};

// make_dns_resolver - the C library's resolver (res_nquery) asking options.dns_servers, each
// question on its own thread, a round given up after options.dns_timeout, answers cached
// (dns_cache_entries, dns_cache_ttl). Throws std::invalid_argument for a bad server address.
std::shared_ptr<DnsResolver> make_dns_resolver(const Options& options);

// ---------------------------------------------------------------------------------------------
// The PROXY protocol (HAProxy's proxy-protocol.txt): a load balancer in front of the server
// starts each connection with a header saying who the client really is.
// ---------------------------------------------------------------------------------------------

// ProxyHeader - what parse_proxy_header found at the start of the bytes.
struct ProxyHeader {
  enum class Status {
    complete,  // a whole, valid header of `length` octets; what follows is the client's
    need_more, // a valid start of a header: every byte so far belongs to it; read more
    invalid,   // not a header, or a bad one (`error` says why): close the connection
  };
  Status status = Status::need_more;
  int version = 0;        // 1 (text) or 2 (binary), once known
  std::size_t length = 0; // complete: the octets the header takes
  bool local = false;     // v1 UNKNOWN, v2 LOCAL (or a family other than TCP over IPv4/IPv6):
                          // keep the connection's own addresses
  Peer source;            // the client, as the proxy saw it (complete and not local)
  Peer destination;       // the address the client connected to (complete and not local)
  std::string error;      // invalid: why
};

// The longest headers accepted: v1 at most 107 octets with its CRLF (proxy-protocol.txt §2.1);
// v2 16 octets and its length field, capped here (addresses and TLVs fit easily).
constexpr std::size_t max_proxy_v1_bytes = 107;
constexpr std::size_t max_proxy_v2_bytes = 4096;

// parse_proxy_header - read a PROXY protocol v1 or v2 header from the start of `bytes`. Pure:
// no socket, no state, the same answer for the same bytes. A reader feeds it the bytes so far and,
// on need_more, may consume all of them from the socket and wait for more: so nothing after the
// header is ever consumed (a TLS ClientHello or early commands stay where they are).
ProxyHeader parse_proxy_header(std::string_view bytes);

// ---------------------------------------------------------------------------------------------
// RateLimiter - per-client counters over a sliding minute (Postfix's anvil): connections,
// messages (MAIL) and recipients (RCPT). A Server makes one from its Options and shares it with
// every session; a Protocol made by hand counts nothing unless given one. The table of client
// addresses is bounded (rate_table_size, least recently seen evicted first) and forgets an
// address two minutes after its last event, so a flood of addresses cannot grow it without
// limit. Thread-safe.
// ---------------------------------------------------------------------------------------------
class RateLimiter {
public:
  enum class Kind { connection, message, recipient };

  // Reads max_connection_rate, max_message_rate, max_recipient_rate, rate_table_size and
  // limit_exempt_networks (throws std::invalid_argument for a bad network).
  explicit RateLimiter(const Options& options);
  ~RateLimiter();
  RateLimiter(const RateLimiter&) = delete;
  RateLimiter& operator=(const RateLimiter&) = delete;

  // allow - one more event of `kind` from `ip` at `now`: true (and counted) while the client
  // stays within its limit over the last minute, false (not counted) beyond it. Always true
  // when that limit is 0 or the address is in limit_exempt_networks.
  bool allow(Kind kind, const std::string& ip,
             std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now());

  // tracked - the client addresses held now.
  std::size_t tracked() const;

private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------------------------------------
// Protocol - one SMTP session, with no socket and no thread: feed it the bytes the client
// sent, read back the bytes to send and whether to close. Deterministic; the Connection loop,
// the unit tests and the fuzzer all drive it the same way. Not thread-safe (one per session).
//
//     smtpd::Protocol p(options, session_info);
//     send(p.take_output());                    // the greeting
//     while (!p.should_close()) { p.feed(bytes_read); send(p.take_output()); }
// ---------------------------------------------------------------------------------------------
class Protocol {
public:
  // Starts a session: runs on_connect and queues the greeting. `options.hostname` "" means the
  // system host name. `options` is referred to, not copied: it must outlive the Protocol.
  // `rates`, when given, counts this client's messages and recipients (Options::max_message_rate
  // and max_recipient_rate); it must outlive the Protocol. A Server passes its own.
  Protocol(const Options& options, SessionInfo session, RateLimiter* rates = nullptr);
  ~Protocol();
  Protocol(const Protocol&) = delete;
  Protocol& operator=(const Protocol&) = delete;

  // feed - hand over bytes the client sent. Replies accumulate in the output until taken, so a
  // pipelined burst (RFC 2920) is answered with one write. Bytes after a request to close are
  // ignored.
  void feed(std::string_view bytes);

  // take_output - the reply bytes queued so far; the queue is emptied.
  std::string take_output();

  // take_output - the same into `into` (its old content is dropped): the two buffers trade
  // places, so a loop that reuses `into` allocates nothing once both have grown.
  void take_output(std::string& into);

  // has_output - whether replies are waiting to be taken.
  bool has_output() const;

  // should_close - the session is over (QUIT, 421, error limit): send the output, then close.
  bool should_close() const;

  // in_data - the client is sending message content (the data timeout applies).
  bool in_data() const;

  // idle - between transactions with no partial command: a graceful shutdown may close now.
  bool idle() const;

  // lines_completed - how many whole lines (commands, AUTH responses) have been read.
  std::size_t lines_completed() const;

  // deadline - when the client must have sent more, by the rule of the phase it is in now: a
  // whole command line within command_timeout, message content within data_timeout of silence
  // and min_data_rate overall, the session within max_session_duration. An owner asks before
  // each read and calls timeout() once it passes. (The only member that reads a clock.)
  std::chrono::steady_clock::time_point deadline();

  // starttls_requested - STARTTLS was accepted: send the output, then run the TLS handshake and
  // call tls_started(). Input fed after the STARTTLS line was discarded (RFC 3207 §4.2 and the
  // command-injection attacks of CVE-2011-0411), and nothing more is read until then.
  bool starttls_requested() const;

  // tls_started - the handshake succeeded: record it in the session and forget everything the
  // client said before, back to the state right after the greeting (RFC 3207 §4.2).
  void tls_started(std::string version, std::string cipher, std::string peer_subject);

  // take_reply_delay - how long to wait before sending the queued output (after a failed AUTH,
  // or an error past soft_error_limit: a tarpit); zero almost always. Reading it resets it.
  std::chrono::milliseconds take_reply_delay();

  // timeout - the client was silent too long: queue "421 4.4.2" and ask to close.
  void timeout();

  // shutting_down - the server is stopping: queue "421 4.3.2" and ask to close.
  void shutting_down();

  // disconnected - the client went away; a partial message is dropped, never handed over.
  void disconnected();

  const SessionInfo& session() const;
  const Envelope& envelope() const;

private:
  struct State;
  std::unique_ptr<State> s_;
};

// ---------------------------------------------------------------------------------------------
// Server - listens, runs one thread per connection, enforces the limits, shuts down gracefully.
// Errors in setting up (bad address, port in use) are thrown as std::system_error or
// std::invalid_argument; errors while serving go to Options::log_error.
// ---------------------------------------------------------------------------------------------
class Server {
public:
  explicit Server(Options options);
  ~Server(); // close()s and joins every thread
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // listen - bind and listen on options.addr; afterwards address() tells the bound port.
  void listen();

  // serve - accept connections on the listener from listen() until drain(), shutdown() or
  // close(). Returns at once if one of them came first (they are final). Throws
  // std::logic_error when called before listen() or while already serving.
  void serve();

  // serve - accept connections on `listening_fd` (a bound, listening socket the Server now
  // owns) until drain(), shutdown() or close().
  void serve(int listening_fd);

  // listen_and_serve - listen() then serve().
  void listen_and_serve();

  // address - the bound address, e.g. "127.0.0.1:41234" or "[::1]:41234"; "" before listening.
  std::string address() const;

  // port - the bound port; 0 before listening.
  uint16_t port() const;

  // wait_ready - blocks until serve() is accepting or `timeout` passes; true when ready.
  bool wait_ready(std::chrono::milliseconds timeout) const;

  // drain - stop accepting for good and leave the open sessions alone: new clients are refused
  // (by the kernel) from the moment it is called and serve() returns, while each session goes
  // on as usual, further transactions included, until its client says QUIT or goes away. Waits
  // until no session is left (true) or `timeout` passes (false); drain(0ms) only stops
  // accepting. Returns early when shutdown() or close() begins on another thread. Then call
  // shutdown() or close() as usual: a client that QUITs during the drain gets 221, not 421.
  // Callable from any thread, concurrently with shutdown() and close().
  bool drain(std::chrono::milliseconds timeout);

  // shutdown - graceful: stop accepting, send 421 to idle clients, let transactions in flight
  // finish until `deadline` passes, then cut the rest; join every thread. A thread still inside
  // your handler a second after that is detached and finishes when the handler returns (the
  // server's internals stay alive until then), so shutdown always returns. Callable from any
  // thread (e.g. one that sigwait()s); not from an asynchronous signal handler.
  void shutdown(std::chrono::milliseconds deadline = std::chrono::seconds(10));

  // close - immediate: stop accepting and cut every connection; join every thread.
  void close();

  // reload_tls - read tls_cert_file and tls_key_file again (certificates rotate); new
  // connections use them, current ones keep theirs. Throws std::runtime_error, keeping the old
  // certificate, when the files are unusable.
  void reload_tls();

  // connections - the number of connections being served now.
  std::size_t connections() const;

  const Options& options() const;

private:
  struct Impl;
  std::shared_ptr<Impl> impl_; // shared with connection threads (see shutdown)
};

// ---------------------------------------------------------------------------------------------
// TestServer - an SMTP server for your own test suite, in the spirit of aiosmtpd's Controller:
// it serves on 127.0.0.1 and a free port on a background thread, and keeps every accepted
// message in memory. stop() or the destructor closes it and joins the thread.
//
//     smtpd::TestServer smtp;                          // ready when constructed
//     app.send_password_reset("127.0.0.1", smtp.port());
//     REQUIRE(smtp.wait_for(1, std::chrono::seconds(5)));
//     CHECK(smtp.messages()[0].envelope.to.at(0) == "user@example.test");
//
// Any one of handler, message_handler, stream_handler or per_recipient_handler may be set in
// the options (not two): it is called first, its verdict is what the client hears, and only a
// message it delivers (to at least one recipient) is kept. A MessageSink gets every piece as
// usual; its message is kept when its verdict delivers it, not when the sink is abandoned.
// With no handler set, every message is accepted and kept. With Options::new_session instead,
// the Session objects get every call as usual, and a message is kept when their
// message_per_recipient() (by default message()) delivers it, or the verdict of the sink their
// data() returned. Options::addr may name a Unix socket ("unix:/tmp/x.sock"); port() is 0 then.
// ---------------------------------------------------------------------------------------------
class TestServer {
public:
  // Message - one accepted message, as the handler saw it.
  struct Message {
    SessionInfo session;
    Envelope envelope;
    std::string data; // with our Received header on top (for a sink: the pieces, joined)
    std::vector<std::string> delivered_to; // the recipients the verdict delivered it to: all of
                                           // envelope.to, unless verdicts per recipient said no
  };

  // Starts serving. `options.addr` left at its default becomes "127.0.0.1:0". Throws what
  // Server throws (two handlers set, bad options, address in use), or std::runtime_error when
  // the server is not ready within 5 s.
  explicit TestServer(Options options = Options());
  ~TestServer(); // stop()
  TestServer(const TestServer&) = delete;
  TestServer& operator=(const TestServer&) = delete;

  uint16_t port() const;       // the bound port (still told after stop())
  std::string address() const; // "127.0.0.1:PORT" (likewise)

  // messages - a copy of the messages accepted so far, in order of acceptance.
  std::vector<Message> messages() const;

  // wait_for - block until at least `count` messages were accepted, or `timeout` passes.
  bool wait_for(std::size_t count, std::chrono::milliseconds timeout) const;

  // clear - forget the messages accepted so far.
  void clear();

  // stop - close() the server (every connection is cut) and join its thread. Calling it again
  // does nothing; messages() stays readable. Not to be called from two threads at once.
  void stop();

  // server - the Server underneath, e.g. for connections() or shutdown().
  Server& server();

private:
  struct State;
  std::unique_ptr<State> s_;
};

// ListenAndServe - serve SMTP on `addr` with `handler` until the process ends (mhale/smtpd's
// ListenAndServe). `addr` "" means ":25" (every address, port 25), `appname` "" means "smtpd",
// `hostname` "" the system host name. Throws std::system_error or std::invalid_argument when it
// cannot listen.
void ListenAndServe(const std::string& addr, Handler handler, const std::string& appname,
                    const std::string& hostname);

// ListenAndServeTLS - the same with STARTTLS offered, using a PEM certificate chain and key.
void ListenAndServeTLS(const std::string& addr, const std::string& cert_file,
                       const std::string& key_file, Handler handler, const std::string& appname,
                       const std::string& hostname);

// ---------------------------------------------------------------------------------------------
// 9. Client - an SMTP and LMTP client (go-smtp's Client and SendMail): blocking, one connection,
// for programs that pass mail on (forward, relay, release a caught message). It speaks what the
// server side implements (PIPELINING, STARTTLS, AUTH, SIZE, 8BITMIME, SMTPUTF8, DSN, CHUNKING,
// BINARYMIME, REQUIRETLS, LMTP) and never sends a bare CR or LF: message line ends are made
// CRLF, so it cannot carry a smuggled message (except BINARYMIME content, which is octets).
//
//     smtpd::SendMail("mx.example.org:25", "me@example.org", {"you@example.net"}, message);
//
// Errors: ClientError when the server refused (it carries the Reply), ClientIOError when the
// connection failed or a reply was malformed or late, std::invalid_argument for arguments that
// can never be sent (a CR or LF in an address, an unparsable address, a bad option).
// ---------------------------------------------------------------------------------------------

// ClientError - the server refused: carries its Reply. what(): "MAIL: 550 5.1.0 text". A
// request the server cannot honour because it did not advertise the extension is refused the
// same way before anything is sent, with a Reply made locally (its text says "not sent").
class ClientError : public std::runtime_error {
public:
  ClientError(std::string command, Reply reply);

  const Reply& reply() const { return reply_; }

  const std::string& command() const { return command_; } // "MAIL", "RCPT", "greeting", ...

private:
  std::string command_;
  Reply reply_;
};

// ClientIOError - the connection failed: resolve/connect, TLS handshake or certificate, a
// malformed, over-long or endless reply, the server closed, or a timeout (timed_out()). Also
// TLS asked of a library built with SMTPD_NO_TLS.
class ClientIOError : public std::runtime_error {
public:
  ClientIOError(const std::string& what, bool timed_out = false);

  bool timed_out() const { return timed_out_; }

private:
  bool timed_out_;
};

// ClientOptions - how a Client connects and what SendMail does. Timeouts default to RFC 5321
// §4.5.3.2's; each is an overall deadline for one reply (a server that drips bytes still hits
// it), or for one write of content (block_timeout).
struct ClientOptions {
  std::string helo_name;       // EHLO/LHLO argument; "" = the system host name
  bool lmtp = false;           // LHLO, and one reply per recipient after the data (RFC 2033)
  bool implicit_tls = false;   // TLS from the first byte (RFC 8314, port 465)
  bool starttls = true;        // SendMail: STARTTLS when the server offers it
  bool require_tls = false;    // SendMail: a server without STARTTLS is an error (530)
  bool tls_verify = true;      // verify the certificate chain and the host name
  std::string tls_ca_file;     // PEM CAs; "" = the system store
  std::string tls_server_name; // SNI and the name checked; "" = the host from addr
  std::string tls_min_version = "TLSv1.2"; // or "TLSv1.3"
  std::string username, password;          // SendMail: AUTH when username is not ""
  std::string auth_mechanism;   // "" = the best offered: CRAM-MD5, then PLAIN, then LOGIN
  MailOptions mail;             // SendMail: MAIL parameters (SIZE is filled in)
  bool prefer_chunking = false; // BDAT (RFC 3030) whenever CHUNKING is offered; without it
                                // BDAT is used only for BODY=BINARYMIME, which needs it
  std::size_t bdat_chunk_bytes = 1024 * 1024; // the largest BDAT chunk
  // RFC 5321 §4.5.3.2 defaults
  std::chrono::milliseconds connect_timeout = std::chrono::seconds(30); // each address tried
  std::chrono::milliseconds greeting_timeout = std::chrono::minutes(5);
  std::chrono::milliseconds command_timeout = std::chrono::minutes(5); // EHLO, AUTH, RSET, ...
  std::chrono::milliseconds mail_timeout = std::chrono::minutes(5);
  std::chrono::milliseconds rcpt_timeout = std::chrono::minutes(5);
  std::chrono::milliseconds data_timeout = std::chrono::minutes(2);   // DATA's 354, BDAT's 250
  std::chrono::milliseconds block_timeout = std::chrono::minutes(3);  // each write of content
  std::chrono::milliseconds final_timeout = std::chrono::minutes(10); // after the final dot
};

// SendResult - one transaction's replies.
struct SendResult {
  Reply mail;              // MAIL's reply, or a local refusal (an extension the server lacks)
  std::vector<Reply> rcpt; // one per recipient given, in order (empty when MAIL failed)
  std::vector<Reply> data; // SMTP: the reply to DATA when refused, else the final reply; empty
                           // when the data was never sent (MAIL refused, no recipient taken);
                           // LMTP: one per accepted recipient, in RCPT order

  // accepted - recipient i was accepted at RCPT and its data reply is positive.
  bool accepted(std::size_t i) const;
};

// ReplyParse - what a ReplyParser found at the start of the bytes read.
struct ReplyParse {
  enum class Status {
    complete,  // a whole reply of `length` octets; what follows belongs to the next reply
    need_more, // every line so far is well-formed and the last one has not come: read more
    invalid,   // not a reply, or one beyond the bounds (`error` says why)
  };
  Status status = Status::need_more;
  Reply reply;            // complete: the code, the enhanced code (RFC 3463) when the text
                          // starts with one of the code's class, the lines' text joined by '\n'
  std::size_t length = 0; // complete: the octets the reply takes
  std::string error;      // invalid: why
};

// The bounds on what a server may send as one reply: RFC 5321 §4.5.3.1.5 allows 512 octets
// per reply line; we take up to 4096 (long EHLO lines exist) and 1000 lines.
constexpr std::size_t max_client_reply_line_bytes = 4096;
constexpr std::size_t max_client_reply_lines = 1000;

// ReplyParser - reads one SMTP reply (RFC 5321 §4.2): "DDD-text" lines, then "DDD text" (or
// "DDD"), each ending in CRLF (a bare LF is tolerated). Every line must carry the same code, of
// 2xx to 5xx. Resumable: parse() is given all the bytes read since the reply began, each call
// the same bytes plus more, and scans only what it has not seen; reset() before the next reply.
// Pure otherwise: no socket, no clock.
class ReplyParser {
public:
  ReplyParse parse(std::string_view bytes);

  void reset() { *this = ReplyParser(); }

private:
  std::size_t scanned_ = 0; // the octets of whole lines already checked
  std::size_t lines_ = 0;
  Reply reply_;
};

// parse_reply - one reply at the start of `bytes` (a fresh ReplyParser's answer).
ReplyParse parse_reply(std::string_view bytes);

// Client - one connection to an SMTP or LMTP server. Not thread-safe. Methods other than
// send() and lmtp_data() throw ClientError when the server refuses (4xx/5xx), ClientIOError
// when the connection fails; after a ClientIOError or a 421 the connection is unusable.
class Client {
public:
  // addr: "host:port", "[v6]:port" or "unix:/path". Connects (each resolved address in turn),
  // runs the TLS handshake with implicit_tls, reads the greeting (a non-220 greeting throws
  // ClientError "greeting" after a QUIT). Throws std::invalid_argument for a bad addr.
  explicit Client(const std::string& addr, ClientOptions options = {});
  ~Client(); // closes (no QUIT)
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  const Reply& greeting() const;
  Reply hello();    // EHLO (HELO after a 5xx, RFC 5321 §3.2) or LHLO (RFC 2033 §4.1)
  Reply starttls(); // STARTTLS, the handshake (verified unless tls_verify is off), EHLO again
  // auth - AUTH (RFC 4954) with `mechanism` ("" = the best offered: CRAM-MD5, PLAIN, LOGIN).
  // A mechanism the server did not offer: ClientError 504, nothing sent.
  Reply auth(const std::string& username, const std::string& password,
             const std::string& mechanism = "");
  bool tls() const;
  bool has_extension(std::string_view keyword) const; // after hello(); case-insensitive
  // extension - the parameters of an EHLO keyword ("52428800" for SIZE, "" for PIPELINING);
  // nullopt when not offered.
  std::optional<std::string> extension(std::string_view keyword) const;
  // mail - MAIL FROM (from "" is the null path <>). Sends SIZE when offered (and refuses a size
  // above the server's limit: 552), BODY, SMTPUTF8, RET/ENVID, REQUIRETLS and AUTH= as set;
  // one the server did not advertise is a ClientError before anything is sent. `params` is
  // not sent.
  Reply mail(const std::string& from, const MailOptions& options = {});
  Reply rcpt(const std::string& to, const RcptOptions& options = {}); // NOTIFY, ORCPT (DSN)
  // data - SMTP: DATA and the content dot-stuffed, or BDAT (BODY=BINARYMIME, or
  // prefer_chunking with CHUNKING offered); the final reply. Line ends become CRLF.
  Reply data(std::string_view message);
  // lmtp_data - LMTP: the data, then one reply per recipient accepted since MAIL, in order
  // (RFC 2033 §4.2); refusals are in the list, not thrown (a refused DATA is).
  std::vector<Reply> lmtp_data(std::string_view message);
  // send - MAIL, every RCPT, the data, pipelined when offered (RFC 2920: MAIL, the RCPTs and
  // DATA in one write; the content after the 354). Refusals are in the result, not thrown,
  // local ones too (SendResult::mail); only ClientIOError and std::invalid_argument are thrown.
  // The data goes to the recipients accepted; none accepted: RSET, no data.
  SendResult send(const std::string& from, const std::vector<std::string>& to,
                  std::string_view message, const MailOptions& mail = {},
                  const std::vector<RcptOptions>& rcpt = {});
  Reply verify(const std::string& address); // VRFY (RFC 5321 §3.5.1)
  Reply noop();
  Reply reset(); // RSET
  Reply quit();  // QUIT, then close

private:
  friend Reply SendMail(const std::string&, const std::string&, const std::vector<std::string>&,
                        std::string_view, const ClientOptions&);
  // send_all_or_nothing - send() for SendMail: the data only when every recipient was taken.
  SendResult send_all_or_nothing(const std::string& from, const std::vector<std::string>& to,
                                 std::string_view message, const MailOptions& mail);

  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// SendMail - connect, EHLO, STARTTLS when offered (or required), AUTH when a username is set,
// send, QUIT. Returns the final reply (LMTP: the last recipient's); throws ClientError at the
// first refusal (MAIL, any RCPT: then no data is sent; the data) and ClientIOError when the
// connection fails. `message` may have CRLF or LF line ends.
Reply SendMail(const std::string& addr, const std::string& from, const std::vector<std::string>& to,
               std::string_view message, const ClientOptions& options = {});

} // namespace smtpd

#endif // SMTPD_HPP
