// A master-state policy without its step (`apply`) must be rejected, naming the role
// and the operation.
#include <zeroblocks/zeroblocks.hpp>
namespace zb = zeroblocks;

struct no_step {
  using master_concept = zb::master_tag;
  static constexpr const char* name = "no_step";
  using config = zb::no_config;
  static constexpr zb::master_caps caps{};
  template <class Ctx>
  struct impl {
    impl(Ctx&, const config&, zb::master_shape) {}
    static void declare(zb::master_shape, const config&, zb::memory_report&) {}
    void set(std::size_t, const float*, std::size_t) {}
    void read_master(std::size_t, float*, std::size_t) {}
  };
};

int main() {
  using bad = zb::engine<zb::bfloat16, zb::host_space, zb::comm::self, zb::partition::even, zb::coordinate::resident,
                         zb::bucket::all_reduce, no_step>;
  return sizeof(bad) > 0 ? 0 : 1;
}
