// The one-pass step: every bucketer takes the norm statistics of this rank's gradient
// slices where it last writes them, and the engine's step uses those instead of its own
// pass over the gradient shard. Checked here through a wrapper bucketer that, whenever
// the engine asks for a slice's statistics, recomputes them from the slice the fused
// pass will read: every slice must have them (none left to the step) and they must be
// the same bits. Stages 0–3, T and fp32 accumulation, 1–3 micro-steps, an overflow
// step, 1–4 ranks; the results equal the unwrapped engines'.
#include "mpi_test_main.hpp"

#include <zeroblocks/comm/mpi.hpp>
#include <zeroblocks/zeroblocks.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace zb = zeroblocks;
using C = zb::comm::mpi;

namespace {

struct stats_log {
  std::size_t asked = 0, missing = 0, mismatched = 0;
};
stats_log g_log;

/// Bucketer `B`, with `slice_stats` checked against a fresh `grad_sumsq` of the slice.
template <class B>
struct checked : B {
  template <class Ctx>
  class impl : public B::template impl<Ctx> {
    using base = typename B::template impl<Ctx>;

  public:
    impl(Ctx& ctx, const typename B::config& cfg) : base(ctx, cfg), ctx_(ctx) {}
    const zb::kernel::grad_stats* slice_stats(std::size_t u, int r) {
      ++g_log.asked;
      const zb::kernel::grad_stats* got = base::slice_stats(u, r);
      if (!got) {
        ++g_log.missing;
        return got;
      }
      const std::size_t n = ctx().lay.unit(u).slice_numel;
      const auto want = ctx().accum32 ? zb::kernel::grad_sumsq(this->grad_slice32(u, r), n, 1)
                                      : zb::kernel::grad_sumsq(this->grad_slice(u, r), n, 1);
      if (std::memcmp(&want.sumsq, &got->sumsq, sizeof(double)) != 0 || want.nonfinite != got->nonfinite)
        ++g_log.mismatched;
      return got;
    }

  private:
    const Ctx& ctx() const { return ctx_; }
    const Ctx& ctx_;
  };
};

template <class P, class Coord, class Bucket>
using composed = zb::engine<P, zb::host_space, C, zb::partition::even, Coord, Bucket, zb::master::resident<zb::host_space>,
                            zb::default_scaler_t<P>, zb::optim::adamw>;

zb::param_registry model() {
  zb::param_registry reg;
  const std::size_t sizes[] = {37, 5, 9000, 0, 129, 3, 77, 1, 200, 31};  // one slice spans two sumsq blocks
  for (std::size_t i = 0; i < std::size(sizes); ++i) {
    std::string name = "p", unit = "u";
    name += std::to_string(i);
    unit += std::to_string(i / 2);
    reg.add(name, {sizes[i]}, unit);
  }
  return reg;
}

struct outcome {
  std::vector<float> master;
  std::vector<double> norms;
};

template <class E>
outcome train(int micro, zb::grad_accum_dtype accum) {
  using P = typename E::param_type;
  auto reg = model();
  typename E::config cfg;
  if constexpr (requires { cfg.bucket.bucket_numel; }) cfg.bucket.bucket_numel = 300;  // several buckets
  cfg.optim.lr = 0.01f;
  cfg.step.grad_accum = accum;
  cfg.step.max_grad_norm = 0.5f;
  E eng(reg, C(MPI_COMM_WORLD), cfg);
  for (std::size_t p = 0; p < reg.size(); ++p)
    eng.set_param({p}, std::vector<float>(reg.params()[p].numel, 0.01f * static_cast<float>(p)));
  outcome out;
  for (int s = 0; s < 4; ++s) {
    for (int m = 0; m < micro; ++m) {
      eng.begin_micro_step();
      for (std::size_t q = reg.size(); q-- > 0;) {
        std::vector<P> g(reg.params()[q].numel);
        for (std::size_t i = 0; i < g.size(); ++i)
          g[i] = P(0.01f * std::sin(0.37f * static_cast<float>(i) + static_cast<float>(q) +
                                    1.3f * static_cast<float>(eng.rank()) + 0.5f * static_cast<float>(7 * s + m)));
        if (s == 2 && m == 0 && q == 2 && eng.rank() == eng.world() - 1)
          g[17] = P(std::numeric_limits<float>::infinity());  // an overflow step
        eng.grad_ready({q}, g);
      }
      eng.end_micro_step();
    }
    const auto r = eng.step();
    CHECK(r.applied == (s != 2));
    out.norms.push_back(r.grad_norm);
  }
  out.master = eng.gather_master();
  return out;
}

template <class P, class Coord, class Bucket>
void check_composition(const char* what) {
  for (auto accum : {zb::grad_accum_dtype::param, zb::grad_accum_dtype::fp32}) {
    for (int micro : {1, 2, 3}) {
      CAPTURE(what);
      CAPTURE(static_cast<int>(accum));
      CAPTURE(micro);
      const auto plain = train<composed<P, Coord, Bucket>>(micro, accum);
      g_log = {};
      const auto got = train<composed<P, Coord, checked<Bucket>>>(micro, accum);
      CHECK(g_log.asked > 0);
      CHECK(g_log.missing == 0);     // the step computed no slice's statistics itself
      CHECK(g_log.mismatched == 0);  // and those it used are the slices' own
      CHECK(got.master == plain.master);
      CHECK(std::memcmp(got.norms.data(), plain.norms.data(), got.norms.size() * sizeof(double)) == 0);
    }
  }
}

}  // namespace

TEST_CASE_TEMPLATE("every stage's step reads its norm statistics from the bucketer, and they are right", P,
                   zb::bfloat16, zb::half) {
  check_composition<P, zb::coordinate::resident, zb::bucket::all_reduce>("stage 0");
  check_composition<P, zb::coordinate::resident, zb::bucket::reduce_at_boundary>("stage 1");
  check_composition<P, zb::coordinate::resident, zb::bucket::reduce_scatter>("stage 2");
  check_composition<P, zb::coordinate::prefetch_trace, zb::bucket::reduce_scatter>("stage 3");
}
