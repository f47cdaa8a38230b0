# test/stress.mk - included by the Makefile: the stress test and the crash-consistency test of
# mailsink, both on loopback, both bounded to about a minute.
#
#   make stress [STRESS_ARGS='--seed N --clients 300 --duration 30 --rounds 1']
#       test/stress.py: hundreds of concurrent clients (normal, pipelined, aborted mid-DATA,
#       slowloris, oversize, garbage, broken TLS handshakes) against $(BUILD)/mailsink --maildir;
#       checks that every 250 was stored once and byte-exact, nothing else was stored, and the
#       server's threads, fds and RSS return to their baseline. Exit status 1 on a violation.
#   make crash-test [CRASH_ARGS='--seed N --reps 6']
#       test/crash_test.py: SIGKILLs $(BUILD)/mailsink --maildir at random moments while
#       clients send; every acknowledged message must be in new/, complete. Ends with
#       "crash-test: N passed, N failed" (test/run-all.sh can count it).
STRESS_PYTHON ?= python3
STRESS_ARGS ?=
CRASH_ARGS ?=
.PHONY: stress crash-test

stress: $(BUILD)/mailsink
	$(STRESS_PYTHON) test/stress.py --mailsink $(BUILD)/mailsink $(STRESS_ARGS)

crash-test: $(BUILD)/mailsink
	$(STRESS_PYTHON) test/crash_test.py $(CRASH_ARGS) $(BUILD)/mailsink
