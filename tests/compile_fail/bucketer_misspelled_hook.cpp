// A bucketer that declares a capability but misspells its operation (`on_shard_update`
// for `on_shard_updated`) must be rejected, naming the role, the capability and the
// operation — not silently run without it.
#include <zeroblocks/zeroblocks.hpp>
namespace zb = zeroblocks;

struct misspelled : zb::bucket::all_reduce {
  static constexpr zb::bucketer_caps caps{.streams_shard = true};
  template <class Ctx>
  struct impl : zb::bucket::all_reduce::impl<Ctx> {
    using base = zb::bucket::all_reduce::impl<Ctx>;
    using base::base;
    template <class U, class W>
    void on_shard_update(U&&, W&&) {}
  };
};

int main() {
  using bad = zb::engine<zb::bfloat16, zb::host_space, zb::comm::self, zb::partition::even, zb::coordinate::resident,
                         misspelled>;
  return sizeof(bad) > 0 ? 0 : 1;
}
