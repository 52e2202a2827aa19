// libFuzzer target: zbfuzz::checkpoint (targets.hpp). Built by scripts/fuzz.sh with clang.
#include "targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  (void)zbfuzz::checkpoint(data, size);
  return 0;
}
