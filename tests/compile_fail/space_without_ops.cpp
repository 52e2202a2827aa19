// An engine on a space with no space_ops (e.g. cuda_space in a translation unit that did
// not include zeroblocks/cuda.cuh) must not compile, and must say what to include.
#include <zeroblocks/zeroblocks.hpp>

#include "fake_device_space.hpp"

namespace zb = zeroblocks;

int main() {
  using bad = zb::engine<zb::bfloat16, fake_device_space, zb::comm::self>;
  return sizeof(bad) > 0 ? 0 : 1;
}
