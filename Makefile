# Makefile - builds the smtpd library object, the examples and the tests; every output goes
# under $(BUILD). `make help` lists the targets.
#
#   make                   library object + build/hello + build/mailsink
#   make test              doctest suites + interop with real clients; ends "N passed, N failed"
#   make run               build/mailsink listening on 127.0.0.1:2525
#   make asan | tsan       the doctest suites under sanitizers (build/asan, build/tsan)
#   make notls             everything with TLS=0 (-DSMTPD_NO_TLS, no OpenSSL) in build/notls
#   make TLS=0 CXX=clang++ BUILD=build/clang ...   the variables below combine freely

CXX ?= g++
CXXFLAGS ?= -std=c++17 -O2 -g -Wall -Wextra -Wpedantic
CPPFLAGS ?=
LDFLAGS ?=
LDLIBS ?=
TLS ?= 1
BUILD ?= build
PREFIX ?= /usr/local
DESTDIR ?=
CLANG_FORMAT ?= clang-format

# Flags every build gets on top of the user's: threads always; TLS=0 compiles without OpenSSL.
ALL_CPPFLAGS := $(strip -I. $(CPPFLAGS))
ALL_CXXFLAGS := $(CXXFLAGS) -pthread
ALL_LDLIBS := $(LDLIBS)
ifeq ($(TLS),0)
  ALL_CPPFLAGS += -DSMTPD_NO_TLS
else
  ALL_LDLIBS += -lssl -lcrypto
endif

# The Debian 12 packages that building and testing need (`make deps` installs them as root).
# Real clients for the interop tests: msmtp, Go, Postfix (SASL PLAIN needs libsasl2-modules).
DEB_PACKAGES := g++ make libssl-dev openssl doctest-dev python3 swaks libnet-ssleay-perl curl \
  clang clang-format msmtp golang-go postfix libsasl2-modules
# Real components in front of and beside the server: HAProxy (PROXY protocol), nginx's mail
# proxy (XCLIENT), dnsmasq (the DNS checks).
DEB_PACKAGES += haproxy nginx libnginx-mod-mail dnsmasq
# A real server for the client's interop tests (test/interop_client.sh: AUTH, LMTP).
DEB_PACKAGES += python3-aiosmtpd
# test/consumer.sh builds a program against smtpd with CMake and with pkg-config.
DEB_PACKAGES += cmake pkgconf
# test/interop_ext.sh runs Exim's binary, unpacked by .ci/exim.sh into $(BUILD)/exim (never
# installed: it conflicts with postfix); these are the shared libraries it needs (ldd).
DEB_PACKAGES += libcrypt1 libnsl2 libdb5.3 libgnutls30 libgnutls-dane0 libpcre2-8-0 libidn12 \
  libidn2-0

LIB_OBJ := $(BUILD)/smtpd.o
EXAMPLES := $(BUILD)/hello $(BUILD)/mailsink
EXAMPLE_OBJS := $(BUILD)/example/hello.o $(BUILD)/example/mailsink.o
TEST_SRCS := test/main.cpp test/header_check.cpp $(sort $(wildcard test/*_test.cpp))
TEST_OBJS := $(TEST_SRCS:%.cpp=$(BUILD)/%.o)
OBJS := $(LIB_OBJ) $(EXAMPLE_OBJS) $(TEST_OBJS) $(BUILD)/test/client_driver.o
FMT_SRCS = $(wildcard smtpd.hpp smtpd.cpp example/*.cpp example/*.hpp test/*.cpp test/*.hpp)

ASAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -O1
TSAN_FLAGS := -fsanitize=thread -fno-omit-frame-pointer -O1
ASAN_ENV := ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
TSAN_ENV := TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
# The suites with threads; the socket-free ones gain nothing under TSan.
TSAN_TEST_ARGS ?= -ts=server,tls,auth,limits,testserver,shutdown,proxy,dns,unix

.DEFAULT_GOAL := all
.PHONY: all deps test run example asan tsan notls fmt fmt-check install uninstall clean help FORCE
.DELETE_ON_ERROR:

all: $(LIB_OBJ) $(EXAMPLES) | deps

example: $(EXAMPLES)

# --- compiling and linking ---------------------------------------------------------------------
# -MMD -MP write a .d file beside each object, so editing smtpd.hpp rebuilds what includes it.
# $(BUILD)/flags records the compiler and flags: changing them (say TLS=0 into the same BUILD)
# rebuilds everything instead of linking stale objects. It also runs `deps` before any compile.
FLAGS_LINE = $(subst ','\'',$(CXX) $(ALL_CPPFLAGS) $(ALL_CXXFLAGS) $(LDFLAGS) $(ALL_LDLIBS))
$(BUILD)/flags: FORCE | deps
	@mkdir -p $(@D)
	@echo '$(FLAGS_LINE)' | cmp -s - $@ || echo '$(FLAGS_LINE)' > $@

$(BUILD)/%.o: %.cpp $(BUILD)/flags
	@mkdir -p $(@D)
	$(CXX) $(ALL_CPPFLAGS) $(ALL_CXXFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/hello: $(BUILD)/example/hello.o $(LIB_OBJ)
$(BUILD)/mailsink: $(BUILD)/example/mailsink.o $(LIB_OBJ)
$(BUILD)/tests: $(TEST_OBJS) $(LIB_OBJ)
# test/interop_client.sh drives smtpd::Client against real servers through this program.
$(BUILD)/client_driver: $(BUILD)/test/client_driver.o $(LIB_OBJ)
$(EXAMPLES) $(BUILD)/tests $(BUILD)/client_driver: $(BUILD)/flags
	$(CXX) $(ALL_CXXFLAGS) $(LDFLAGS) $(filter %.o,$^) $(ALL_LDLIBS) -o $@

-include $(OBJS:.o=.d)

# --- dependencies ------------------------------------------------------------------------------
# Fast when everything is installed (one dpkg-query per package, no apt). As root the missing
# packages are installed; otherwise the command to do so is printed and the build stops.
deps:
	@bash .ci/deps.sh deps $(DEB_PACKAGES)
	@bash .ci/exim.sh $(BUILD)/exim

# --- running -----------------------------------------------------------------------------------
run: $(BUILD)/mailsink
	$(BUILD)/mailsink --listen 127.0.0.1:2525

# test/run-all.sh runs $(BUILD)/tests, then test/interop.sh $(BUILD)/mailsink, and prints
# "N passed, N failed" last.
test: all $(BUILD)/tests $(BUILD)/fuzz-replay $(BUILD)/client_driver | deps
	bash test/run-all.sh $(BUILD)

# Sanitizer and no-TLS builds: the same Makefile, one level down, in their own build directory.
asan:
	$(MAKE) --no-print-directory BUILD=$(BUILD)/asan CXXFLAGS='$(CXXFLAGS) $(ASAN_FLAGS)' \
	  $(BUILD)/asan/tests $(BUILD)/asan/mailsink
	$(ASAN_ENV) $(BUILD)/asan/tests

tsan:
	$(MAKE) --no-print-directory BUILD=$(BUILD)/tsan CXXFLAGS='$(CXXFLAGS) $(TSAN_FLAGS)' \
	  $(BUILD)/tsan/tests $(BUILD)/tsan/mailsink
	$(TSAN_ENV) $(BUILD)/tsan/tests $(TSAN_TEST_ARGS)

notls:
	$(MAKE) --no-print-directory BUILD=$(BUILD)/notls TLS=0 all $(BUILD)/notls/tests
	$(BUILD)/notls/tests

# --- formatting (clang-format 14, the .clang-format at the top) ---------------------------------
fmt:
	$(CLANG_FORMAT) -i $(FMT_SRCS)

fmt-check:
	$(CLANG_FORMAT) --dry-run -Werror $(FMT_SRCS)

# --- installing --------------------------------------------------------------------------------
# make install [PREFIX=/usr/local] [DESTDIR=/staging] [TLS=0] puts what a C++ build needs to use
# smtpd under $(DESTDIR)$(PREFIX):
#   include/smtpd.hpp  lib/libsmtpd.a  lib/pkgconfig/smtpd.pc  bin/mailsink
#   lib/cmake/smtpd/smtpdConfig.cmake, smtpdConfigVersion.cmake, smtpdTargets.cmake
# The pkg-config and CMake files are filled in from the templates in cmake/ with sed (the same
# templates CMakeLists.txt uses), so no CMake is needed to install, nor to build the library.
# make uninstall (same PREFIX and DESTDIR) removes exactly those files, then the directories
# the first install created, when they are empty again: install lists them, before creating
# them, in lib/cmake/smtpd/make-install-created-dirs (paths without DESTDIR).
SMTPD_VERSION := $(shell sed -n 's/^.define SMTPD_VERSION "\([^"]*\)"$$/\1/p' smtpd.hpp)
INSTALL_ROOT = $(DESTDIR)$(PREFIX)
CREATED_DIRS := lib/cmake/smtpd/make-install-created-dirs
INSTALLED := include/smtpd.hpp lib/libsmtpd.a lib/pkgconfig/smtpd.pc bin/mailsink \
  lib/cmake/smtpd/smtpdConfig.cmake lib/cmake/smtpd/smtpdConfigVersion.cmake \
  lib/cmake/smtpd/smtpdTargets.cmake
PACKAGE_FILES := smtpd.pc smtpdConfig.cmake smtpdConfigVersion.cmake smtpdTargets.cmake

# The templates' variables (CMakeLists.txt sets the same ones). OpenSSL goes in Requires, not
# Requires.private: libsmtpd.a is a static archive, which records no dependencies, so every
# program linking it needs -lssl -lcrypto, also from plain `pkg-config --libs smtpd`.
ifeq ($(TLS),0)
  PKG_TLS := OFF
  PKG_REQUIRES :=
  PKG_CFLAGS := -DSMTPD_NO_TLS
else
  PKG_TLS := ON
  PKG_REQUIRES := Requires: openssl
  PKG_CFLAGS :=
endif
PKG_SED = sed -e 's|@SMTPD_VERSION@|$(SMTPD_VERSION)|g' -e 's|@SMTPD_TLS@|$(PKG_TLS)|g' \
  -e 's|@SMTPD_PC_PREFIX@|$(PREFIX)|g' -e 's|@SMTPD_PC_LIBDIR@|$${prefix}/lib|g' \
  -e 's|@SMTPD_PC_INCLUDEDIR@|$${prefix}/include|g' -e 's|@SMTPD_PC_REQUIRES@|$(PKG_REQUIRES)|g' \
  -e 's|@SMTPD_PC_CFLAGS@|$(PKG_CFLAGS)|g'

$(BUILD)/libsmtpd.a: $(LIB_OBJ)
	rm -f $@
	$(AR) rcs $@ $^

install: $(BUILD)/libsmtpd.a $(BUILD)/mailsink
	@mkdir -p $(BUILD)/package
	for f in $(PACKAGE_FILES); do $(PKG_SED) cmake/$$f.in > $(BUILD)/package/$$f || exit 1; done
	@created=$$(for d in include lib/pkgconfig lib/cmake/smtpd bin; do \
	    d='$(PREFIX)'/$$d; \
	    while [ ! -d '$(DESTDIR)'"$$d" ]; do echo "$$d"; d=$$(dirname "$$d"); done; \
	  done | sort -u); \
	install -d '$(INSTALL_ROOT)/include' '$(INSTALL_ROOT)/lib/pkgconfig' \
	  '$(INSTALL_ROOT)/lib/cmake/smtpd' '$(INSTALL_ROOT)/bin' && \
	if [ ! -f '$(INSTALL_ROOT)/$(CREATED_DIRS)' ]; then \
	  printf '%s\n' "$$created" > '$(INSTALL_ROOT)/$(CREATED_DIRS)'; fi
	install -m 644 smtpd.hpp '$(INSTALL_ROOT)/include/'
	install -m 644 $(BUILD)/libsmtpd.a '$(INSTALL_ROOT)/lib/'
	install -m 644 $(BUILD)/package/smtpd.pc '$(INSTALL_ROOT)/lib/pkgconfig/'
	install -m 644 $(BUILD)/package/smtpdConfig.cmake $(BUILD)/package/smtpdConfigVersion.cmake \
	  $(BUILD)/package/smtpdTargets.cmake '$(INSTALL_ROOT)/lib/cmake/smtpd/'
	install -m 755 $(BUILD)/mailsink '$(INSTALL_ROOT)/bin/'

# Deepest directories first (sort -r puts a directory after everything inside it); rmdir leaves
# any directory that holds something else by now.
uninstall:
	@created=$$(cat '$(INSTALL_ROOT)/$(CREATED_DIRS)' 2>/dev/null); \
	echo "rm -f $(INSTALLED) $(CREATED_DIRS) (in $(INSTALL_ROOT))"; \
	rm -f $(foreach f,$(INSTALLED) $(CREATED_DIRS),'$(INSTALL_ROOT)/$(f)') && \
	printf '%s\n' "$$created" | sort -r | while IFS= read -r d; do \
	  [ -z "$$d" ] || rmdir '$(DESTDIR)'"$$d" 2>/dev/null || true; \
	done

clean:
	rm -rf $(BUILD)

help:
	@echo 'targets: all (default) deps test run example asan tsan notls fmt fmt-check install uninstall clean'
	@echo 'variables: CXX=$(CXX) CXXFLAGS=$(CXXFLAGS) TLS=$(TLS) BUILD=$(BUILD) PREFIX=$(PREFIX)'

# --- benchmark ---------------------------------------------------------------------------------
# `make bench [ROUNDS=3]`: our server (build/bench/sink, the library with a no-op handler)
# against Postfix's smtp-sink and aiosmtpd, run alternately; bench/run.py says what each case
# measures. Prints a table, writes $(BUILD)/bench/results.jsonl and bench/throughput.png.
# The anchors come from Debian; as root the missing ones are installed (Postfix preseeded to
# "No configuration" so it neither writes main.cf nor starts a daemon).
ROUNDS ?= 3
BENCH_PYTHON ?= /usr/bin/python3
BENCH_PACKAGES := postfix python3-aiosmtpd gnuplot-nox
BENCH_OBJS := $(BUILD)/bench/sink.o $(BUILD)/bench/loadgen.o
BENCH_BINS := $(BUILD)/bench/sink $(BUILD)/bench/loadgen
.PHONY: bench bench-deps

bench: $(BENCH_BINS) | bench-deps
	$(BENCH_PYTHON) bench/run.py --build $(BUILD) --rounds $(ROUNDS)

$(BUILD)/bench/sink: $(BUILD)/bench/sink.o $(LIB_OBJ)
	$(CXX) $(ALL_CXXFLAGS) $(LDFLAGS) $(filter %.o,$^) $(ALL_LDLIBS) -o $@

$(BUILD)/bench/loadgen: $(BUILD)/bench/loadgen.o
	$(CXX) $(ALL_CXXFLAGS) $(LDFLAGS) $(filter %.o,$^) $(LDLIBS) -o $@

bench-deps:
	@bash .ci/deps.sh bench-deps $(BENCH_PACKAGES)

-include $(BENCH_OBJS:.o=.d)

# --- fuzzing: `make fuzz`, and the corpus replayed by `make test` (fuzz/fuzz.mk) ---------------
include fuzz/fuzz.mk

# --- `make stress` and `make crash-test` (test/stress.mk) ---------------------------------------
include test/stress.mk
