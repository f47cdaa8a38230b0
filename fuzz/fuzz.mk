# fuzz/fuzz.mk - the fuzz targets; included by the Makefile, whose variables it uses ($(BUILD),
# $(CXX), $(ALL_CPPFLAGS), $(ALL_CXXFLAGS), $(ALL_LDLIBS), $(LIB_OBJ), $(BUILD)/flags).
#
#   make fuzz [FUZZ_SECONDS=60]   builds each libFuzzer target with clang++
#                                 -fsanitize=fuzzer,address,undefined into $(BUILD)/fuzz/ and
#                                 runs it for FUZZ_SECONDS, starting from fuzz/corpus/<target>/;
#                                 new inputs go to $(BUILD)/fuzz/corpus-<target>/, crashes to
#                                 $(BUILD)/fuzz/artifacts/. A target stops at its first
#                                 crash; the others still run; then make fails.
#   make fuzz-replay              builds $(BUILD)/fuzz-replay (plain $(CXX), no libFuzzer) and
#                                 runs every file of fuzz/corpus/<target>/ through its target;
#                                 prints "fuzz-replay: N passed, N failed".
#
# A crash found by `make fuzz`: minimise it ($(BUILD)/fuzz/<target> -minimize_crash=1
# -runs=10000 <artifact>), copy it to fuzz/corpus/<target>/crash-<what>, and it is replayed by
# every `make test` from then on. fuzz/seeds.py rewrites the hand-written seeds.

FUZZ_SECONDS ?= 60
FUZZ_CXX ?= clang++
FUZZ_MAX_LEN ?= 16384
FUZZ_TARGETS := protocol parsers auth bdat proxy dns lmtp reply
FUZZ_SANITIZERS := address,undefined
FUZZ_CXXFLAGS = $(ALL_CXXFLAGS) -fno-omit-frame-pointer -fno-sanitize-recover=all
FUZZ_BINS := $(FUZZ_TARGETS:%=$(BUILD)/fuzz/%)
FUZZ_LIB_OBJ := $(BUILD)/fuzz/smtpd-libfuzzer.o
FUZZ_LIB_SRC ?= smtpd.cpp # another copy (a candidate fix, say) can be fuzzed instead
FUZZ_REPLAY_OBJS := $(FUZZ_TARGETS:%=$(BUILD)/fuzz/%.o) $(BUILD)/fuzz/replay.o

.PHONY: fuzz fuzz-replay

fuzz: $(FUZZ_BINS)
	@failed=; for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(BUILD)/fuzz/corpus-$$t $(BUILD)/fuzz/artifacts; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	  $(BUILD)/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -max_len=$(FUZZ_MAX_LEN) -timeout=10 \
	    -dict=fuzz/smtp.dict -print_final_stats=1 \
	    -artifact_prefix=$(BUILD)/fuzz/artifacts/$$t- $(BUILD)/fuzz/corpus-$$t fuzz/corpus/$$t \
	    || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then \
	  echo "fuzz: FAILED:$$failed (inputs in $(BUILD)/fuzz/artifacts/)"; exit 1; \
	fi; echo "fuzz: every target ran $(FUZZ_SECONDS) s without a failure"

# The library instrumented for coverage and sanitizers (fuzzer-no-link: no main of its own).
$(FUZZ_LIB_OBJ): $(FUZZ_LIB_SRC) smtpd.hpp $(BUILD)/flags
	@mkdir -p $(@D)
	$(FUZZ_CXX) $(ALL_CPPFLAGS) $(FUZZ_CXXFLAGS) -fsanitize=fuzzer-no-link,$(FUZZ_SANITIZERS) \
	  -c $< -o $@

$(FUZZ_BINS): $(BUILD)/fuzz/%: fuzz/%.cpp fuzz/fuzz.hpp smtpd.hpp $(FUZZ_LIB_OBJ)
	$(FUZZ_CXX) $(ALL_CPPFLAGS) -DSMTPD_FUZZ_LIBFUZZER $(FUZZ_CXXFLAGS) \
	  -fsanitize=fuzzer,$(FUZZ_SANITIZERS) $< $(FUZZ_LIB_OBJ) $(LDFLAGS) $(ALL_LDLIBS) -o $@

# The replay program: the targets compiled plainly by the Makefile's $(BUILD)/%.o rule (which
# writes .d files), the library object, and fuzz/replay.cpp's main.
$(BUILD)/fuzz-replay: $(FUZZ_REPLAY_OBJS) $(LIB_OBJ) $(BUILD)/flags
	$(CXX) $(ALL_CXXFLAGS) $(LDFLAGS) $(filter %.o,$^) $(ALL_LDLIBS) -o $@

fuzz-replay: $(BUILD)/fuzz-replay
	$(BUILD)/fuzz-replay fuzz/corpus

-include $(FUZZ_REPLAY_OBJS:.o=.d)
