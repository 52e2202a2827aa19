// Parameters must be float, half or bfloat16.
#include <zeroblocks/zeroblocks.hpp>
namespace zb = zeroblocks;
int main() {
  zb::param_registry reg;
  reg.add("w", {4}, "u");
  zb::stage2<zb::comm::self, double> e(reg, {});
}
