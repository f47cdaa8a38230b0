// fuzz/replay.cpp - runs the fuzz corpus through the fuzz targets without libFuzzer, so a
// plain g++ build (`make test`) replays every seed and every crash ever found.
//
//   fuzz-replay [CORPUS_DIR]     CORPUS_DIR defaults to fuzz/corpus
//
// Every file of CORPUS_DIR/<target>/ goes through that target's fuzz_<target>() in a child
// process, so a crash, a sanitizer abort or a failed invariant (a trap) fails that input and
// the others still run. Prints each failure, then "fuzz-replay: N passed, N failed"; exits
// non-zero when anything failed or no input was found.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

int fuzz_protocol(const uint8_t* data, size_t size);
int fuzz_parsers(const uint8_t* data, size_t size);
int fuzz_auth(const uint8_t* data, size_t size);
int fuzz_bdat(const uint8_t* data, size_t size);
int fuzz_proxy(const uint8_t* data, size_t size);
int fuzz_dns(const uint8_t* data, size_t size);
int fuzz_lmtp(const uint8_t* data, size_t size);
int fuzz_reply(const uint8_t* data, size_t size);

namespace {

struct Target {
  const char* name;
  int (*run)(const uint8_t*, size_t);
};

const Target targets[] = {
    {"protocol", fuzz_protocol},
    {"parsers", fuzz_parsers},
    {"auth", fuzz_auth},
    {"bdat", fuzz_bdat},
    {"proxy", fuzz_proxy},
    {"dns", fuzz_dns},
    {"lmtp", fuzz_lmtp},
    {"reply", fuzz_reply},
};

// replay_one - run one input in a child process; true when it returned normally.
bool replay_one(const Target& t, const std::string& input, std::string& why) {
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid < 0) {
    why = "fork failed";
    return false;
  }
  if (pid == 0) {
    t.run(reinterpret_cast<const uint8_t*>(input.data()), input.size());
    _exit(0);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) {
    why = "waitpid failed";
    return false;
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return true;
  why = WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
                            : "exit status " + std::to_string(WEXITSTATUS(status));
  return false;
}

} // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  fs::path root = argc > 1 ? argv[1] : "fuzz/corpus";
  int passed = 0, failed = 0;
  for (const Target& t : targets) {
    fs::path dir = root / t.name;
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
      std::printf("fuzz-replay: %s: no corpus directory %s\n", t.name, dir.c_str());
      ++failed;
      continue;
    }
    std::vector<fs::path> files;
    for (const fs::directory_entry& e : fs::directory_iterator(dir))
      if (e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    int target_passed = 0;
    for (const fs::path& file : files) {
      std::ifstream f(file, std::ios::binary);
      std::string input((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      std::string why;
      if (f.bad()) {
        why = "cannot read";
      } else if (replay_one(t, input, why)) {
        ++passed;
        ++target_passed;
        continue;
      }
      std::printf("fuzz-replay: FAILED %s: %s\n", file.c_str(), why.c_str());
      ++failed;
    }
    std::printf("fuzz-replay: %s: %d of %zu inputs passed\n", t.name, target_passed, files.size());
    if (files.empty()) ++failed; // an empty corpus proves nothing
  }
  std::printf("fuzz-replay: %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
