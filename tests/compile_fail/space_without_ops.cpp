// An engine on a space with no space_ops (e.g. cuda_space in a translation unit that did
// not include zeroblocks/cuda.cuh) must not compile, and must say what to include.
#include <zeroblocks/zeroblocks.hpp>

namespace zb = zeroblocks;

struct opaque_space {
  using space_concept = zb::space_tag;
  static constexpr const char* name = "opaque";
  static constexpr bool host_accessible = false;
  static void* allocate(std::size_t, std::size_t = 64) { return nullptr; }
  static void deallocate(void*, std::size_t) {}
  static void copy(void*, const void*, std::size_t) {}
  static void fill_zero(void*, std::size_t) {}
};

int main() {
  using bad = zb::engine<zb::bfloat16, opaque_space, zb::comm::self>;
  return sizeof(bad) > 0 ? 0 : 1;
}
