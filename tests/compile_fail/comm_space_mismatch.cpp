// An engine on a device space with a host-memory communicator (comm::self, comm::mpi)
// must not compile: the collectives would hand device pointers to memcpy or MPI.
#include <zeroblocks/zeroblocks.hpp>

#include "fake_device_space.hpp"

namespace zb = zeroblocks;

template <>
struct zb::space_ops<fake_device_space> : zb::host_ops {};

int main() {
  using bad = zb::engine<zb::bfloat16, fake_device_space, zb::comm::self, zb::partition::even, zb::coordinate::resident,
                         zb::bucket::reduce_scatter, zb::master::resident<fake_device_space>>;
  return sizeof(bad) > 0 ? 0 : 1;
}
