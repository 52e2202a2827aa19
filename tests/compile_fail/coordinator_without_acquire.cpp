// A coordinator policy whose impl misses an operation the engine calls (here `acquire`
// is misspelled `aquire`) must be rejected, naming the role and the operation.
#include <zeroblocks/zeroblocks.hpp>
namespace zb = zeroblocks;

struct no_acquire {
  using coordinator_concept = zb::coordinator_tag;
  static constexpr bool shards_params = false;
  static constexpr const char* name = "no_acquire";
  using config = zb::no_config;
  static constexpr zb::coordinator_caps caps{};
  template <class Ctx>
  struct impl : zb::coordinate::resident::impl<Ctx> {
    using base = zb::coordinate::resident::impl<Ctx>;
    using base::base;
    using base::declare;
    const typename Ctx::param_type* acquire(std::size_t, int) = delete;  // not callable as acquire(u)
  };
};

int main() {
  using bad = zb::engine<zb::bfloat16, zb::host_space, zb::comm::self, zb::partition::even, no_acquire>;
  return sizeof(bad) > 0 ? 0 : 1;
}
