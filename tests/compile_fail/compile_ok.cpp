// The same shape as the compile-fail sources, with a valid composition.
#include <zeroblocks/zeroblocks.hpp>
namespace zb = zeroblocks;
int main() {
  zb::param_registry reg;
  reg.add("w", {4}, "u");
  zb::engine<zb::bfloat16, zb::host_space, zb::comm::self, zb::partition::even, zb::coordinate::on_demand,
             zb::bucket::reduce_scatter> e(reg, {});
}
