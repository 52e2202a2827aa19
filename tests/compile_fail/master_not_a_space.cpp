// master::resident<Space> needs a space policy.
#include <zeroblocks/zeroblocks.hpp>
namespace zb = zeroblocks;
int main() {
  zb::param_registry reg;
  reg.add("w", {4}, "u");
  zb::engine<zb::bfloat16, zb::host_space, zb::comm::self, zb::partition::even, zb::coordinate::resident,
             zb::bucket::reduce_scatter, zb::master::resident<int>> e(reg, {});
}
