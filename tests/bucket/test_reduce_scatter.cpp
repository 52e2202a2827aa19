// bucket::reduce_scatter (stages 2/3) under the conditions that break bucketers matched
// by arrival order: ranks that report gradients in different orders, a rank that skips
// a parameter, and the overlap itself (a bucket's reduce-scatter starts while backward
// is still reporting). Results are compared bit for bit with stage 0 fed the same
// gradients. Runs on 1–4 ranks.
#include "mpi_test_main.hpp"

#include <zeroblocks/comm/mpi.hpp>
#include <zeroblocks/zeroblocks.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace zb = zeroblocks;
using C = zb::comm::mpi;
using T = zb::bfloat16;

namespace {

zb::param_registry model() {
  zb::param_registry reg;
  const std::size_t sizes[] = {37, 5, 64, 0, 129, 3, 77, 1, 200, 31};
  for (std::size_t i = 0; i < std::size(sizes); ++i)
  {
    // (built with += : "p" + std::to_string(i) trips GCC 12's -Wrestrict, bug 105329)
    std::string name = "p", unit = "u";
    name += std::to_string(i);
    unit += std::to_string(i / 2);  // 5 units of 2
    reg.add(name, {sizes[i]}, unit);
  }
  return reg;
}

float grad_of(std::size_t p, std::size_t i, int rank, int step) {
  return 0.01f * std::sin(0.7f * static_cast<float>(i) + static_cast<float>(p) + 1.3f * static_cast<float>(rank) +
                          0.5f * static_cast<float>(step));
}

/// Train `steps` steps; each rank reports its gradients in `order(rank, step)`, skipping
/// parameter `skip` on rank `skip_rank` (stage 0 gets zeros for it instead).
template <class E, class Order>
std::vector<float> train(Order order, int skip_rank = -1, std::size_t skip = 0, bool report_zero = false) {
  auto reg = model();
  typename E::config cfg;
  if constexpr (requires { cfg.bucket.bucket_numel; }) cfg.bucket.bucket_numel = 150;  // several buckets
  cfg.optim.lr = 0.01f;
  E eng(reg, C(MPI_COMM_WORLD), cfg);
  for (std::size_t p = 0; p < reg.size(); ++p)
    eng.set_param({p}, std::vector<float>(reg.params()[p].numel, 0.1f * static_cast<float>(p)));
  for (int s = 0; s < 3; ++s) {
    eng.begin_micro_step();
    for (std::size_t p : order(eng.rank(), s)) {
      std::vector<T> g(reg.params()[p].numel);
      for (std::size_t i = 0; i < g.size(); ++i) g[i] = T(grad_of(p, i, eng.rank(), s));
      if (eng.rank() == skip_rank && p == skip) {
        if (!report_zero) continue;
        std::fill(g.begin(), g.end(), T(0.0f));
      }
      eng.grad_ready({p}, g);
    }
    eng.end_micro_step();
    REQUIRE(eng.step().applied);
  }
  return eng.gather_master();
}

std::vector<std::size_t> reverse_order(int, int) {
  std::vector<std::size_t> v(10);
  std::iota(v.rbegin(), v.rend(), 0);
  return v;
}

}  // namespace

TEST_CASE("ranks reporting gradients in different orders still match stage 0") {
  auto shuffled = [](int rank, int step) {
    std::vector<std::size_t> v(10);
    std::iota(v.begin(), v.end(), 0);
    std::mt19937 rng(static_cast<unsigned>(17 * rank + step));
    std::shuffle(v.begin(), v.end(), rng);
    return v;
  };
  const auto ref = train<zb::stage0<C>>(reverse_order);
  CHECK(train<zb::stage2<C>>(shuffled) == ref);
  CHECK(train<zb::stage3<C>>(shuffled) == ref);
  CHECK(train<zb::stage2<C>>(reverse_order) == ref);
}

TEST_CASE("a parameter one rank never reports counts as a zero gradient") {
  const int skip_rank = zb_world_size() - 1;
  const auto ref = train<zb::stage0<C>>(reverse_order, skip_rank, 4, /*report_zero=*/true);
  CHECK(train<zb::stage0<C>>(reverse_order, skip_rank, 4) == ref);
  CHECK(train<zb::stage1<C>>(reverse_order, skip_rank, 4) == ref);
  CHECK(train<zb::stage2<C>>(reverse_order, skip_rank, 4) == ref);
  CHECK(train<zb::stage3<C>>(reverse_order, skip_rank, 4) == ref);
}

TEST_CASE("a bucket is reduce-scattered as soon as it is complete, before backward ends") {
  auto reg = model();
  zb::stage2<C>::config cfg;
  cfg.bucket.bucket_numel = 150;
  zb::stage2<C> eng(reg, C(MPI_COMM_WORLD), cfg);
  const auto& plans = zb::bucket::reduce_scatter::plan(eng.model_layout(), cfg.bucket.bucket_numel);
  REQUIRE(plans.size() >= 3);
  auto calls = [&] {
    return eng.counters().calls[static_cast<std::size_t>(zb::collective::reduce_scatter)];
  };
  const auto before = calls();
  eng.begin_micro_step();
  std::size_t issued_during_backward = 0;
  for (std::size_t p : reverse_order(0, 0)) {
    std::vector<T> g(reg.params()[p].numel, T(0.5f));
    eng.grad_ready({p}, g);
    issued_during_backward = calls() - before;
    // Once the first bucket's parameters are all in, its collective has been issued.
    const auto& first = plans.front();
    if (eng.model_layout().param(p).unit == first.first_unit && p % 2 == 0) CHECK(issued_during_backward >= 1);
  }
  // Every bucket with data was issued by the time the last gradient arrived: nothing
  // was left for end_micro_step.
  std::size_t with_data = 0;
  for (auto& b : plans) with_data += b.block_numel > 0;
  CHECK(issued_during_backward == with_data);
  eng.end_micro_step();
  CHECK(calls() - before == with_data);
  // Reported in reverse layout order, the pool of bucket_count buffers sufficed.
  CHECK(eng.memory().peak_of(zb::mem_category::buckets) == eng.memory()[zb::mem_category::buckets]);
  eng.step();
}

TEST_CASE("gradients reported in forward order (worst case) stay correct and bounded") {
  auto forward = [](int, int) {
    std::vector<std::size_t> v(10);
    std::iota(v.begin(), v.end(), 0);
    return v;
  };
  const auto ref = train<zb::stage0<C>>(reverse_order);
  CHECK(train<zb::stage2<C>>(forward) == ref);
}

// ---- the shard stream: what master::offloaded builds its backward-time copies on ----

namespace {

struct stream_log {
  std::size_t blocks = 0, changes = 0, applies = 0, mismatched = 0, uncovered = 0, written_early = 0;
};
stream_log g_log;

/// master::resident, plus a copy of the gradient shard kept only from `shard_updated`
/// (as master::offloaded keeps its host copy). `apply` checks that copy against the
/// shard the engine hands it: every block must have been reported, after its last
/// accumulation. And a block reported must not change before `shard_will_change` (an
/// asynchronous copy of it may still be reading it): checked there, by rereading it.
struct streaming_probe {
  using master_concept = zb::master_tag;
  using space = zb::host_space;
  static constexpr const char* name = "streaming_probe";
  using config = zb::no_config;
  static constexpr zb::master_caps caps{.takes_shard_stream = true};
  template <class Ctx>
  class impl : public zb::master::resident<zb::host_space>::impl<Ctx> {
    using base = zb::master::resident<zb::host_space>::template impl<Ctx>;
    using P = typename Ctx::param_type;

  public:
    impl(Ctx& ctx, const config& cfg, zb::master_shape shape)
        : base(ctx, cfg, shape), copy_(shape.owned_numel), owned_(shape.owned_numel) {}
    void shard_updated(std::size_t offset, const P* data, std::size_t n) {
      REQUIRE(offset + n <= owned_);
      std::copy(data, data + n, copy_.begin() + static_cast<std::ptrdiff_t>(offset));
      streamed_ += n;
      ++g_log.blocks;
      seen_.push_back({data, offset, n});
    }
    void shard_will_change() {
      for (const auto& b : seen_)
        if (!bitwise_equal(b.data, copy_.data() + b.offset, b.n)) ++g_log.written_early;
      seen_.clear();
      streamed_ = 0;
      ++g_log.changes;
    }
    void apply(const std::vector<zb::step_slice<P>>& slices, const std::vector<zb::kernel::adamw_step_args>& a) {
      ++g_log.applies;
      if (streamed_ != owned_) ++g_log.uncovered;
      for (const auto& s : slices)
        if (!std::equal(s.grad, s.grad + s.numel, copy_.begin() + static_cast<std::ptrdiff_t>(s.master_offset),
                        [](P x, P y) { return std::memcmp(&x, &y, sizeof(P)) == 0; }))
          ++g_log.mismatched;
      base::apply(slices, a);
    }

  private:
    struct block {
      const P* data;
      std::size_t offset, n;
    };
    static bool bitwise_equal(const P* a, const P* b, std::size_t n) { return std::memcmp(a, b, n * sizeof(P)) == 0; }
    std::vector<P> copy_;
    std::vector<block> seen_;  ///< blocks reported since the last shard_will_change
    std::size_t owned_, streamed_ = 0;
  };
};

template <class Coord>
using probed = zb::engine<T, zb::host_space, C, zb::partition::even, Coord, zb::bucket::reduce_scatter, streaming_probe>;

/// Like train(), with `micro` micro-steps per step whose gradients differ.
template <class E>
std::vector<float> train_micro(int micro) {
  auto reg = model();
  typename E::config cfg;
  if constexpr (requires { cfg.bucket.bucket_numel; }) cfg.bucket.bucket_numel = 150;
  cfg.optim.lr = 0.01f;
  // A streaming master takes the 16-bit shard: accumulate in T on both sides.
  cfg.step.grad_accum = zb::grad_accum_dtype::param;
  E eng(reg, C(MPI_COMM_WORLD), cfg);
  for (std::size_t p = 0; p < reg.size(); ++p)
    eng.set_param({p}, std::vector<float>(reg.params()[p].numel, 0.1f * static_cast<float>(p)));
  for (int s = 0; s < 3; ++s) {
    for (int m = 0; m < micro; ++m) {
      eng.begin_micro_step();
      for (std::size_t p : reverse_order(eng.rank(), s)) {
        std::vector<T> g(reg.params()[p].numel);
        for (std::size_t i = 0; i < g.size(); ++i) g[i] = T(grad_of(p, i, eng.rank(), 7 * s + m));
        eng.grad_ready({p}, g);
      }
      eng.end_micro_step();
    }
    REQUIRE(eng.step().applied);
  }
  return eng.gather_master();
}

}  // namespace

TEST_CASE("each reduced block is handed to a streaming master after its last accumulation") {
  for (int micro : {1, 2, 3}) {
    CAPTURE(micro);
    const auto ref = train_micro<zb::stage2<C>>(micro);
    for (int stage : {2, 3}) {
      CAPTURE(stage);
      g_log = {};
      const auto got = stage == 2 ? train_micro<probed<zb::coordinate::resident>>(micro)
                                  : train_micro<probed<zb::coordinate::prefetch_trace>>(micro);
      CHECK(got == ref);
      CHECK(g_log.applies == 3);
      CHECK(g_log.uncovered == 0);   // every owned element streamed in the last micro-step
      CHECK(g_log.mismatched == 0);  // and streamed with its final value
      CHECK(g_log.written_early == 0);  // and left alone until shard_will_change
      // One shard_will_change per micro-step (before its first accumulation) and one per
      // step (before the shard is zeroed).
      CHECK(g_log.changes == static_cast<std::size_t>(3 * micro + 3));
      CHECK(g_log.blocks > 0);
    }
  }
}
