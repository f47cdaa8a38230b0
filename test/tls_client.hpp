// tls_client.hpp - helpers for the TLS tests (tls_test.cpp), on top of test_client.hpp:
//
//   certs()        throwaway certificates made once per test run with the openssl command line,
//                  in a temporary directory removed at exit: a CA, a server certificate it
//                  signed (SAN DNS:localhost, IP:127.0.0.1), the same key encrypted, a client
//                  certificate it signed, an unrelated self-signed client certificate, and two
//                  more server certificates (CN=first, CN=second) for reload tests.
//   ClientTls /    an OpenSSL client context: the CA to verify the server with, a client
//   client_context certificate to present, the protocol versions allowed.
//   TlsClient      one connection that speaks plain SMTP, then TLS (after STARTTLS, or at once
//                  for implicit TLS). OpenSSL works on memory BIOs and this class moves the
//                  bytes to and from the socket itself, with MSG_NOSIGNAL and SO_RCVTIMEO, so a
//                  server that goes away can neither hang the test nor SIGPIPE it.
//
// Only built with TLS (not with SMTPD_NO_TLS).
#ifndef SMTPD_TEST_TLS_CLIENT_HPP
#define SMTPD_TEST_TLS_CLIENT_HPP

#ifndef SMTPD_NO_TLS

#include "test_client.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace test {

// write_file - replace `path` with `content`; false when it could not be written.
inline bool write_file(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  return bool(out);
}

// make_temp_dir - a new private directory under the system's temporary one, named from
// `prefix`; "" (and `error` set) when it cannot be made.
inline std::string make_temp_dir(const std::string& prefix, std::string& error) {
  std::string base = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
  std::vector<char> name(base.begin(), base.end());
  name.push_back('\0');
  if (::mkdtemp(name.data()) == nullptr) {
    error = "mkdtemp failed";
    return "";
  }
  return name.data();
}

// Certs - paths of the throwaway certificates and keys; `error` says what failed, if anything.
struct Certs {
  std::string dir;
  std::string ca, ca_key;              // CN=smtpd test CA
  std::string server_cert, server_key; // CN=localhost, SAN DNS:localhost, IP:127.0.0.1
  std::string server_key_encrypted;    // server_key under key_password
  std::string key_password = "correct horse battery staple";
  std::string client_cert, client_key; // CN=test-client, signed by the CA
  std::string rogue_cert, rogue_key;   // CN=rogue-client, self-signed
  std::string first_cert, first_key;   // CN=first, signed by the CA, SAN as the server's
  std::string second_cert, second_key; // CN=second, likewise
  std::string garbage;                 // a file that is not PEM at all
  std::string error;

  Certs() { make(); }

  ~Certs() {
    if (dir.empty()) return;
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }

  Certs(const Certs&) = delete;
  Certs& operator=(const Certs&) = delete;

  bool ok() const { return error.empty(); }

  // path - a file in the temporary directory.
  std::string path(const std::string& name) const { return dir + "/" + name; }

private:
  // openssl - run the openssl command line in the directory; its chatter goes to a log file.
  bool openssl(const std::string& args) {
    if (!error.empty()) return false;
    std::string command =
        "cd '" + dir + "' && openssl " + args + " >>'" + dir + "/openssl.log' 2>&1 </dev/null";
    if (std::system(command.c_str()) != 0) {
      error = "failed: openssl " + args + " (see " + dir + "/openssl.log)";
      return false;
    }
    return true;
  }

  // key - a fresh P-256 key in `name`.key.
  bool key(const std::string& name) {
    return openssl("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out " + name + ".key");
  }

  // signed_by_ca - `name`.key and `name`.pem with `subject`, signed by the CA with `extfile`.
  bool signed_by_ca(const std::string& name, const std::string& subject, const std::string& extfile,
                    int serial) {
    return key(name) &&
           openssl("req -new -key " + name + ".key -subj '" + subject + "' -out " + name +
                   ".csr") &&
           openssl("x509 -req -in " + name + ".csr -CA ca.pem -CAkey ca.key -set_serial " +
                   std::to_string(serial) + " -days 2 -extfile " + extfile + " -out " + name +
                   ".pem");
  }

  void make() {
    dir = make_temp_dir("smtpd-tls", error);
    if (dir.empty()) return;
    if (dir.find('\'') != std::string::npos) {
      error = "temporary directory name has a quote: " + dir;
      return;
    }
    ca = path("ca.pem");
    ca_key = path("ca.key");
    server_cert = path("server.pem");
    server_key = path("server.key");
    server_key_encrypted = path("server-encrypted.key");
    client_cert = path("client.pem");
    client_key = path("client.key");
    rogue_cert = path("rogue.pem");
    rogue_key = path("rogue.key");
    first_cert = path("first.pem");
    first_key = path("first.key");
    second_cert = path("second.pem");
    second_key = path("second.key");
    garbage = path("garbage.pem");

    if (!write_file(path("server.ext"), "basicConstraints=CA:FALSE\n"
                                        "keyUsage=critical,digitalSignature,keyEncipherment\n"
                                        "extendedKeyUsage=serverAuth\n"
                                        "subjectAltName=DNS:localhost,IP:127.0.0.1\n") ||
        !write_file(path("client.ext"), "basicConstraints=CA:FALSE\n"
                                        "keyUsage=critical,digitalSignature\n"
                                        "extendedKeyUsage=clientAuth\n") ||
        !write_file(garbage, "this is not a certificate\n")) {
      error = "cannot write into " + dir;
      return;
    }
    key("ca") &&
        openssl("req -x509 -new -key ca.key -days 2 -subj '/O=smtpd tests/CN=smtpd "
                "test CA' -addext 'basicConstraints=critical,CA:TRUE' -addext "
                "'keyUsage=critical,keyCertSign,cRLSign' -out ca.pem") &&
        signed_by_ca("server", "/O=smtpd tests/CN=localhost", "server.ext", 2) &&
        signed_by_ca("client", "/O=smtpd tests/CN=test-client", "client.ext", 3) &&
        signed_by_ca("first", "/O=smtpd tests/CN=first", "server.ext", 4) &&
        signed_by_ca("second", "/O=smtpd tests/CN=second", "server.ext", 5) && key("rogue") &&
        openssl("req -x509 -new -key rogue.key -days 2 -subj '/CN=rogue-client' -out "
                "rogue.pem") &&
        openssl("pkey -in server.key -aes256 -passout 'pass:" + key_password +
                "' -out server-encrypted.key");
  }
};

// certs - the certificates of this test run, made on first use.
inline const Certs& certs() {
  static Certs made;
  return made;
}

// openssl_errors - OpenSSL's error queue as text (and emptied).
inline std::string openssl_errors() {
  std::string text;
  for (int i = 0; i < 32; ++i) {
    unsigned long e = ERR_get_error();
    if (e == 0) break;
    char buffer[256];
    ERR_error_string_n(e, buffer, sizeof buffer);
    if (!text.empty()) text += "; ";
    text += buffer;
  }
  return text;
}

struct CtxFree {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};

using CtxPtr = std::unique_ptr<SSL_CTX, CtxFree>;

// ClientTls - how a test client speaks TLS.
struct ClientTls {
  std::string ca;          // verify the server with this CA file; "" = do not verify
  std::string cert, key;   // the client certificate to present; "" = none
  int min_version = 0;     // e.g. TLS1_2_VERSION; 0 = OpenSSL's default
  int max_version = 0;     // e.g. TLS1_2_VERSION; 0 = the newest
  int security_level = -1; // OpenSSL security level; -1 = the default
};

// client_context - an SSL_CTX for `o`; null when OpenSSL refused a setting (a CHECK fails).
inline CtxPtr client_context(const ClientTls& o) {
  CtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  bool ok = ctx != nullptr;
  if (ok && o.security_level >= 0) {
    SSL_CTX_set_security_level(ctx.get(), o.security_level);
    ok = SSL_CTX_set_cipher_list(ctx.get(), "DEFAULT:@SECLEVEL=0") == 1;
  }
  if (ok && o.min_version != 0) ok = SSL_CTX_set_min_proto_version(ctx.get(), o.min_version) == 1;
  if (ok && o.max_version != 0) ok = SSL_CTX_set_max_proto_version(ctx.get(), o.max_version) == 1;
  if (ok && !o.ca.empty()) {
    ok = SSL_CTX_load_verify_locations(ctx.get(), o.ca.c_str(), nullptr) == 1;
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  }
  if (ok && !o.cert.empty())
    ok = SSL_CTX_use_certificate_chain_file(ctx.get(), o.cert.c_str()) == 1 &&
         SSL_CTX_use_PrivateKey_file(ctx.get(), o.key.c_str(), SSL_FILETYPE_PEM) == 1 &&
         SSL_CTX_check_private_key(ctx.get()) == 1;
  CHECK_MESSAGE(ok, "client SSL_CTX: " << openssl_errors());
  if (!ok) ctx.reset();
  return ctx;
}

// subject_of - a certificate's subject in RFC 2253 form ("CN=localhost,O=smtpd tests").
inline std::string subject_of(X509* cert) {
  if (cert == nullptr) return "";
  BIO* bio = BIO_new(BIO_s_mem());
  X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  std::string subject(data, std::size_t(n > 0 ? n : 0));
  BIO_free(bio);
  return subject;
}

// TlsClient - one connection to a test server, plain first, TLS after handshake().
class TlsClient : public ReplyReader<TlsClient> {
public:
  explicit TlsClient(uint16_t port, milliseconds timeout = 5s)
      : fd_(connect_socket("127.0.0.1", port, timeout)), timeout_(timeout) {}

  ~TlsClient() { close(); }

  TlsClient(const TlsClient&) = delete;
  TlsClient& operator=(const TlsClient&) = delete;

  bool connected() const { return fd_ >= 0; }

  int fd() const { return fd_; }

  SSL* ssl() const { return ssl_; }

  // secure - the handshake succeeded and application data now goes over TLS.
  bool secure() const { return secure_; }

  // error - what went wrong in the last TLS call that failed.
  const std::string& error() const { return error_; }

  // set_timeout - how long one recv()/send() may wait, and one read_line() or handshake in all.
  void set_timeout(milliseconds timeout) {
    timeout_ = timeout;
    set_socket_timeout(fd_, timeout);
  }

  // close - free the TLS state and close the socket (no close_notify: see shutdown()).
  void close() {
    if (ssl_ != nullptr) SSL_free(ssl_); // frees both memory BIOs too
    ssl_ = nullptr;
    secure_ = false;
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  // reset - close with a TCP RST instead of a FIN.
  void reset() {
    if (fd_ < 0) return;
    linger_zero(fd_);
    close();
  }

  // send_raw - write bytes to the socket as they are, bypassing TLS.
  bool send_raw(std::string_view bytes) { return send_all(fd_, bytes); }

  // send - write application bytes: over TLS once secure, plain before.
  bool send(std::string_view bytes) {
    if (!secure_) return send_raw(bytes);
    while (!bytes.empty()) {
      int err = SSL_ERROR_NONE;
      int chunk = int(std::min<std::size_t>(bytes.size(), 1 << 20));
      int n = run([&] { return SSL_write(ssl_, bytes.data(), chunk); }, err);
      if (n <= 0) return false;
      bytes.remove_prefix(std::size_t(n));
    }
    return flushed_ok_;
  }

  // handshake - start TLS on the connection with `ctx` (SSL_connect). `host` is the name (or
  // the IP address) the server certificate must match when the context verifies; "" for no
  // name check. Bytes received in plain text and not yet read are moved to plain_leftover().
  bool handshake(SSL_CTX* ctx, const std::string& host = "localhost") {
    if (fd_ < 0 || ctx == nullptr || ssl_ != nullptr) return false;
    plain_leftover_ += buffer_;
    buffer_.clear();
    ssl_ = SSL_new(ctx);
    if (ssl_ == nullptr) return fail("SSL_new: " + openssl_errors());
    rbio_ = BIO_new(BIO_s_mem());
    wbio_ = BIO_new(BIO_s_mem());
    SSL_set_bio(ssl_, rbio_, wbio_);
    in_addr ip4{};
    if (!host.empty() && ::inet_pton(AF_INET, host.c_str(), &ip4) == 1) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), host.c_str());
    } else if (!host.empty()) {
      SSL_set_tlsext_host_name(ssl_, host.c_str());
      SSL_set1_host(ssl_, host.c_str());
    }
    int err = SSL_ERROR_NONE;
    int r = run([&] { return SSL_connect(ssl_); }, err);
    if (r != 1) {
      long verify = SSL_get_verify_result(ssl_);
      if (verify != X509_V_OK)
        error_ += std::string(" (verify: ") + X509_verify_cert_error_string(verify) + ")";
      return false;
    }
    secure_ = true;
    return true;
  }

  // starttls - send STARTTLS, expect "220 2.0.0 Ready to start TLS", then handshake().
  bool starttls(SSL_CTX* ctx, const std::string& host = "localhost") {
    std::string reply = command("STARTTLS");
    CHECK_MESSAGE(reply == "220 2.0.0 Ready to start TLS\r\n",
                  "STARTTLS got: \"" << printable(reply) << "\"");
    if (reply_code(reply) != 220) return false;
    bool ok = handshake(ctx, host);
    CHECK_MESSAGE(plain_leftover_.empty(),
                  "plain text after STARTTLS's 220: \"" << printable(plain_leftover_) << "\"");
    return ok;
  }

  // shutdown - send our close_notify.
  void shutdown() {
    if (!secure_) return;
    SSL_shutdown(ssl_);
    flush();
  }

  // version - the negotiated protocol ("TLSv1.3"), "" before the handshake.
  std::string version() const { return ssl_ != nullptr ? SSL_get_version(ssl_) : ""; }

  // cipher - the negotiated cipher suite.
  std::string cipher() const {
    return ssl_ != nullptr ? SSL_CIPHER_get_name(SSL_get_current_cipher(ssl_)) : "";
  }

  // server_subject - the subject of the certificate the server presented.
  std::string server_subject() const {
    if (ssl_ == nullptr) return "";
    X509* cert = SSL_get_peer_certificate(ssl_);
    std::string subject = subject_of(cert);
    X509_free(cert);
    return subject;
  }

  // got_close_notify - the server ended TLS with a close_notify alert.
  bool got_close_notify() const {
    return ssl_ != nullptr && (SSL_get_shutdown(ssl_) & SSL_RECEIVED_SHUTDOWN) != 0;
  }

  // last_read_error - SSL_get_error of the last TLS read that ended the stream.
  int last_read_error() const { return last_read_error_; }

  // recv_once - read once (through TLS when secure) into the buffer: bytes read, 0 at the end
  // of the stream (clean or not), -1 on timeout.
  long recv_once() {
    if (fd_ < 0) return -1;
    if (!secure_) {
      bool reset = false;
      long n = recv_plain(fd_, buffer_, eof_, reset);
      if (reset) was_reset_ = eof_ = true;
      return n;
    }
    char chunk[16 * 1024];
    int err = SSL_ERROR_NONE;
    int n = run([&] { return SSL_read(ssl_, chunk, int(sizeof chunk)); }, err);
    if (n > 0) {
      buffer_.append(chunk, std::size_t(n));
      return n;
    }
    if (timed_out_) return -1;
    last_read_error_ = err;
    eof_ = true;
    return 0;
  }

  // read_line - the next line, CRLF included; on failure what is buffered followed by "<eof>",
  // "<reset>" or "<timeout>".
  std::string read_line() {
    auto until = Clock::now() + timeout_;
    std::string line;
    for (int rounds = 0; !take_line(buffer_, line); ++rounds) {
      if (was_reset_) return buffer_ + "<reset>";
      if (eof_) return buffer_ + "<eof>";
      if (Clock::now() >= until || rounds > 100000 || recv_once() < 0) return buffer_ + "<timeout>";
    }
    return line;
  }

  // wait_closed - wait (bounded) until the server ends the connection.
  bool wait_closed() {
    auto until = Clock::now() + timeout_;
    for (int rounds = 0; !eof_ && !was_reset_; ++rounds) {
      if (Clock::now() >= until || rounds > 100000) return false;
      if (recv_once() < 0 && !eof_) return false;
    }
    return true;
  }

  // plain_pending - bytes the server sent in plain text that are waiting, unread, on the
  // socket or in the buffer (checked without blocking).
  std::size_t plain_pending() {
    char chunk[4096];
    ssize_t n = ::recv(fd_, chunk, sizeof chunk, MSG_DONTWAIT | MSG_PEEK);
    return buffer_.size() + std::size_t(n > 0 ? n : 0);
  }

  const std::string& buffered() const { return buffer_; }

  const std::string& plain_leftover() const { return plain_leftover_; }

  bool eof() const { return eof_; }

  bool was_reset() const { return was_reset_; }

private:
  bool fail(std::string why) {
    error_ = std::move(why);
    return false;
  }

  // flush - send what OpenSSL wrote into the write BIO.
  bool flush() {
    char chunk[16 * 1024];
    for (int rounds = 0; rounds < 100000 && BIO_ctrl_pending(wbio_) > 0; ++rounds) {
      int n = BIO_read(wbio_, chunk, int(sizeof chunk));
      if (n <= 0) break;
      if (!send_raw(std::string_view(chunk, std::size_t(n)))) return flushed_ok_ = false;
    }
    return true;
  }

  // fill - one recv() into the read BIO: true when bytes, the end of stream or a reset came.
  bool fill() {
    char chunk[16 * 1024];
    for (int tries = 0; tries < 100; ++tries) {
      ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
      if (n > 0) {
        BIO_write(rbio_, chunk, int(n));
        return true;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno != ECONNRESET) return false; // timeout
      if (n < 0) was_reset_ = true;
      socket_eof_ = true;
      BIO_set_mem_eof_return(rbio_, 0); // from now on an empty BIO reads as end of stream
      return true;
    }
    return false;
  }

  // run - call an SSL function until it no longer wants to read, moving the bytes; bounded by
  // the timeout. Returns its result; `err` gets SSL_get_error.
  template <class Op> int run(Op op, int& err) {
    timed_out_ = false;
    auto until = Clock::now() + timeout_;
    for (int rounds = 0; rounds < 100000; ++rounds) {
      ERR_clear_error();
      int r = op();
      err = r > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl_, r);
      std::string errors = err == SSL_ERROR_SSL ? openssl_errors() : "";
      flush();
      if (err == SSL_ERROR_WANT_READ) {
        if (Clock::now() >= until || !fill()) {
          timed_out_ = true;
          error_ = "timeout";
          return -1;
        }
        continue;
      }
      if (err == SSL_ERROR_WANT_WRITE) continue;
      if (err != SSL_ERROR_NONE)
        error_ = "SSL error " + std::to_string(err) + (errors.empty() ? "" : ": " + errors) +
                 (socket_eof_ ? " (connection closed)" : "");
      return r;
    }
    timed_out_ = true;
    error_ = "too many rounds";
    return -1;
  }

  int fd_ = -1;
  milliseconds timeout_;
  SSL* ssl_ = nullptr;
  BIO* rbio_ = nullptr; // owned by ssl_
  BIO* wbio_ = nullptr; // owned by ssl_
  bool secure_ = false;
  bool socket_eof_ = false;
  bool timed_out_ = false;
  bool flushed_ok_ = true;
  int last_read_error_ = SSL_ERROR_NONE;
  std::string error_;
  std::string buffer_;
  std::string plain_leftover_;
  bool eof_ = false;
  bool was_reset_ = false;
};

} // namespace test

#endif // SMTPD_NO_TLS

#endif // SMTPD_TEST_TLS_CLIENT_HPP
