// An engine on a device space with a host-memory communicator (comm::self, comm::mpi)
// must not compile: the collectives would hand device pointers to memcpy or MPI.
#include <zeroblocks/zeroblocks.hpp>

namespace zb = zeroblocks;

struct fake_device_space {
  using space_concept = zb::space_tag;
  static constexpr const char* name = "fake_device";
  static constexpr bool host_accessible = false;
  static void* allocate(std::size_t, std::size_t = 64) { return nullptr; }
  static void deallocate(void*, std::size_t) {}
  static void copy(void*, const void*, std::size_t) {}
  static void fill_zero(void*, std::size_t) {}
};
template <>
struct zb::space_ops<fake_device_space> : zb::host_ops {};

int main() {
  using bad = zb::engine<zb::bfloat16, fake_device_space, zb::comm::self, zb::partition::even, zb::coordinate::resident,
                         zb::bucket::reduce_scatter, zb::master::resident<fake_device_space>>;
  return sizeof(bad) > 0 ? 0 : 1;
}
