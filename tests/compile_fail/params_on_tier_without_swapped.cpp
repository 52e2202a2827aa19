// Stage 3 with the 16-bit parameters on NVMe (coordinate::prefetch_trace_nvme) reads
// them from the master tier, so a master that keeps no tier must not compile.
#include <zeroblocks/zeroblocks.hpp>

namespace zb = zeroblocks;

int main() {
  using bad = zb::engine<zb::bfloat16, zb::host_space, zb::comm::self, zb::partition::even,
                         zb::coordinate::prefetch_trace_nvme, zb::bucket::reduce_scatter,
                         zb::master::resident<zb::host_space>>;
  return sizeof(bad) > 0 ? 0 : 1;
}
