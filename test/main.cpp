// main.cpp - the doctest runner: every test/*_test.cpp links into one binary, build/tests.
// Run one layer with `build/tests -ts=protocol`; `build/tests --help` lists the options.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
