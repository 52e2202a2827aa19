// Stage-3 parameters with a stage-0 bucketer cannot work: full gradients of
// parameters that are not resident.
#include <zeroblocks/zeroblocks.hpp>
namespace zb = zeroblocks;
int main() {
  zb::param_registry reg;
  reg.add("w", {4}, "u");
  zb::engine<zb::bfloat16, zb::host_space, zb::comm::self, zb::partition::even, zb::coordinate::on_demand,
             zb::bucket::all_reduce> e(reg, {});
}
