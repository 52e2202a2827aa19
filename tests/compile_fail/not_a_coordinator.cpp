// An int where a coordinator belongs must be rejected, naming the role.
#include <zeroblocks/zeroblocks.hpp>
namespace zb = zeroblocks;
int main() {
  zb::param_registry reg;
  reg.add("w", {4}, "u");
  zb::engine<zb::bfloat16, zb::host_space, zb::comm::self, zb::partition::even, int> e(reg, {});
}
