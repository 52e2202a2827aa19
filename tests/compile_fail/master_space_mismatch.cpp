// An engine on a device space with master::resident<host_space> must not compile: the
// fused step reads device gradients and would write device parameters from the host.
#include <zeroblocks/zeroblocks.hpp>

#include "fake_device_space.hpp"

namespace zb = zeroblocks;

template <>
struct zb::space_ops<fake_device_space> : zb::host_ops {};

int main() {
  using bad = zb::engine<zb::bfloat16, fake_device_space, zb::comm::self, zb::partition::even, zb::coordinate::resident,
                         zb::bucket::reduce_scatter, zb::master::resident<zb::host_space>>;
  return sizeof(bad) > 0 ? 0 : 1;
}
