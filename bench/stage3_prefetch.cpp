/**
 * @file stage3_prefetch.cpp
 * @brief Stage 2 vs stage 3 on demand vs stage 3 with prefetch, on real compute.
 *
 * The model is a stack of `--layers` linear layers, each one unit holding a d×d bf16
 * weight (`--dim`). Every rank runs forward y = x·W and backward (dx = dy·Wᵀ,
 * dW = xᵀ·dy) on its own `--batch` rows, in fp32, layer by layer: acquire the unit,
 * compute, release. The loss is ½‖y‖²/batch. Every configuration trains the same
 * steps from the same weights; timings are taken after `--warmup` steps and are the
 * median over `--steps` of the slowest rank's step (each step starts after a barrier).
 * The configurations take turns step by step (all engines live at once), so drift in
 * the machine's speed hits them alike.
 *
 * Printed per configuration: step time, time spent in the trainer's own compute,
 * acquire wait (time inside the coordinator's acquire and release: gather waits and
 * any MPI progress work done there), gathers per step, and the ratios:
 *  - step / stage-2 step (goal for prefetch: ≤ 1.10);
 *  - hidden = 1 − prefetch acquire wait / on-demand acquire wait (goal ≥ 0.90), where
 *    on demand every gather is waited for in full.
 * It also prints a unit's compute time (forward + backward of one layer) against its
 * gather time (on-demand wait per gather): the goal applies when compute ≥ gather.
 *
 * Run (4 ranks): mpirun -np 4 ./bench_stage3_prefetch [--dim 1024] [--batch 64]
 *                [--layers 8] [--steps 10] [--warmup 2]
 */
#include <zeroblocks/comm/mpi.hpp>
#include <zeroblocks/zeroblocks.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace zb = zeroblocks;
using C = zb::comm::mpi;
using T = zb::bfloat16;
using clk = std::chrono::steady_clock;

namespace {

struct options {
  std::size_t dim = 1024, batch = 64;
  int layers = 8, steps = 10, warmup = 2;
};

double seconds_since(clk::time_point t0) { return std::chrono::duration<double>(clk::now() - t0).count(); }

/// y[B×d] = x[B×d] · W[d×d]
void matmul(const float* x, const float* w, float* y, std::size_t b, std::size_t d) {
  std::fill(y, y + b * d, 0.0f);
  for (std::size_t i = 0; i < b; ++i)
    for (std::size_t k = 0; k < d; ++k) {
      const float a = x[i * d + k];
      const float* wr = w + k * d;
      float* yr = y + i * d;
#pragma omp simd
      for (std::size_t j = 0; j < d; ++j) yr[j] += a * wr[j];
    }
}
/// dx[B×d] = dy · Wᵀ
void matmul_t(const float* dy, const float* w, float* dx, std::size_t b, std::size_t d) {
  for (std::size_t i = 0; i < b; ++i)
    for (std::size_t k = 0; k < d; ++k) {
      const float* wr = w + k * d;
      const float* g = dy + i * d;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (std::size_t j = 0; j < d; ++j) acc += g[j] * wr[j];
      dx[i * d + k] = acc;
    }
}
/// dW[d×d] = xᵀ · dy
void outer(const float* x, const float* dy, float* dw, std::size_t b, std::size_t d) {
  std::fill(dw, dw + d * d, 0.0f);
  for (std::size_t k = 0; k < d; ++k)
    for (std::size_t i = 0; i < b; ++i) {
      const float a = x[i * d + k];
      const float* g = dy + i * d;
      float* r = dw + k * d;
#pragma omp simd
      for (std::size_t j = 0; j < d; ++j) r[j] += a * g[j];
    }
}

struct result {
  double step = 0, compute = 0, wait = 0, gathers = 0;
  zb::coordinator_stats st{};
  bool progress = false;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}
double max_over_ranks(double x) {
  double m = 0;
  MPI_Allreduce(&x, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return m;
}

/// One configuration's engine and trainer state; steps are run one at a time so the
/// configurations can take turns (see main).
struct runner {
  virtual ~runner() = default;
  virtual void one_step(int s, bool record) = 0;
  virtual result summary() const = 0;
};

/// The knobs the configurations differ in, applied to each engine's own config.
struct knobs {
  std::size_t bucket_numel = 0;
  zb::prefetch_config prefetch;
  template <class E>
  typename E::config config_of() const {
    typename E::config c;
    c.optim.lr = 1e-4f;
    c.bucket.bucket_numel = bucket_numel;
    if constexpr (requires { c.coordinate.prefetch_numel; }) c.coordinate = prefetch;
    return c;
  }
};

template <class E>
class runner_of final : public runner {
public:
  runner_of(const options& o, const knobs& k) : o_(o), eng_(make_registry(), C(MPI_COMM_WORLD), k.config_of<E>()) {
    const std::size_t d = o.dim;
    std::vector<float> v(d * d);
    for (int l = 0; l < o.layers; ++l) {
      for (std::size_t i = 0; i < v.size(); ++i)
        v[i] = std::sin(0.7f * static_cast<float>(i) + static_cast<float>(l)) / std::sqrt(static_cast<float>(d));
      eng_.set_param(w_[l], v);
    }
    act_.assign(o.layers + 1, std::vector<float>(o.batch * d));
    wf_.resize(d * d);
    dw_.resize(d * d);
    dy_.resize(o.batch * d);
    dx_.resize(o.batch * d);
    g16_.resize(d * d);
    progress_ = eng_.communicator().async_progress();
  }

  void one_step(int s, bool record) override {
    const std::size_t d = o_.dim, b = o_.batch;
    const int rank = eng_.rank();
    MPI_Barrier(MPI_COMM_WORLD);
    const auto before = eng_.coordination_stats();
    const auto t0 = clk::now();
    double compute = 0;
    // begin_micro_step before preparing the batch: stage 3 starts its first gathers.
    eng_.begin_micro_step();
    {
      const auto t = clk::now();
      for (std::size_t i = 0; i < b * d; ++i)
        act_[0][i] = std::cos(0.01f * static_cast<float>(i + 977 * (s + 1) + 31 * rank));
      compute += seconds_since(t);
    }
    for (int l = 0; l < o_.layers; ++l) {
      auto g = eng_.acquire(units_[l]);
      const auto t = clk::now();
      auto p = g.param(w_[l]);
      for (std::size_t i = 0; i < d * d; ++i) wf_[i] = zb::to_float(p[i]);
      matmul(act_[l].data(), wf_.data(), act_[l + 1].data(), b, d);
      compute += seconds_since(t);
    }
    {
      const auto t = clk::now();
      for (std::size_t i = 0; i < b * d; ++i) dy_[i] = act_[o_.layers][i] / static_cast<float>(b);
      compute += seconds_since(t);
    }
    for (int l = o_.layers - 1; l >= 0; --l) {
      auto g = eng_.acquire(units_[l]);
      const auto t = clk::now();
      auto p = g.param(w_[l]);
      for (std::size_t i = 0; i < d * d; ++i) wf_[i] = zb::to_float(p[i]);
      outer(act_[l].data(), dy_.data(), dw_.data(), b, d);
      matmul_t(dy_.data(), wf_.data(), dx_.data(), b, d);
      std::swap(dy_, dx_);
      for (std::size_t i = 0; i < d * d; ++i) g16_[i] = zb::from_float<T>(dw_[i]);
      compute += seconds_since(t);
      eng_.grad_ready(w_[l], g16_);
    }
    eng_.end_micro_step();
    eng_.step();
    const double dt = seconds_since(t0);
    const auto after = eng_.coordination_stats();
    const double step = max_over_ranks(dt), comp = max_over_ranks(compute),
                 wait = max_over_ranks(after.wait_seconds - before.wait_seconds);
    if (record) {
      steps_.push_back(step);
      computes_.push_back(comp);
      waits_.push_back(wait);
      gathers_.push_back(static_cast<double>(after.gathers - before.gathers));
    }
  }

  result summary() const override {
    result r;
    r.step = median(steps_);
    r.compute = median(computes_);
    r.wait = median(waits_);
    r.gathers = median(gathers_);
    r.st = eng_.coordination_stats();
    r.progress = progress_;
    return r;
  }

private:
  zb::param_registry& make_registry() {
    for (int l = 0; l < o_.layers; ++l) {
      w_.push_back(reg_.add("w" + std::to_string(l), {o_.dim, o_.dim}, "layer" + std::to_string(l)));
      units_.push_back(reg_.unit("layer" + std::to_string(l)));
    }
    return reg_;
  }

  const options o_;
  zb::param_registry reg_;
  std::vector<zb::param_id> w_;
  std::vector<zb::unit_id> units_;
  E eng_;
  std::vector<std::vector<float>> act_;
  std::vector<float> wf_, dw_, dy_, dx_;
  std::vector<T> g16_;
  std::vector<double> steps_, computes_, waits_, gathers_;
  bool progress_ = false;
};

bool parse(int argc, char** argv, options& o) {
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    if (i + 1 >= argc) return false;
    const long v = std::strtol(argv[++i], nullptr, 10);
    if (v <= 0) return false;
    if (f == "--dim") o.dim = static_cast<std::size_t>(v);
    else if (f == "--batch") o.batch = static_cast<std::size_t>(v);
    else if (f == "--layers") o.layers = static_cast<int>(v);
    else if (f == "--steps") o.steps = static_cast<int>(v);
    else if (f == "--warmup") o.warmup = static_cast<int>(v);
    else return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  options o;
  int rc = 0;
  if (!parse(argc, argv, o)) {
    if (rank == 0)
      std::fprintf(stderr, "usage: bench_stage3_prefetch [--dim D] [--batch B] [--layers L] [--steps N] [--warmup W]\n");
    MPI_Finalize();
    return 2;
  }
  try {
    const std::size_t unit = o.dim * o.dim;
    knobs base;
    base.bucket_numel = unit;  // one bucket per layer: reduce-scatter overlaps backward
    // Prefetch that saves memory: at most two units ahead and four live, and reuse only
    // for a unit acquired again right away (the last layer, where forward turns into
    // backward): every other acquire gathers, so those gathers must really be hidden.
    knobs lean = base;
    lean.prefetch.prefetch_numel = 2 * unit;
    lean.prefetch.max_live_numel = 4 * unit;
    lean.prefetch.max_reuse_distance_numel = 1;
    // DeepSpeed's defaults: everything fits the budgets, so forward's units are kept
    // for backward (one gather per unit per step instead of two).
    knobs defaults = base;
    // Both again with the next step's first gathers started when step() returns (they
    // then overlap the time between steps: here the barrier that starts each step).
    knobs lean_x = lean, defaults_x = defaults;
    lean_x.prefetch.prefetch_across_steps = defaults_x.prefetch.prefetch_across_steps = true;

    // The configurations take turns, one step each, the first of each round rotating:
    // on a shared machine whose speed drifts (this one's compute time moves by a third
    // over seconds), every configuration then sees the same slow and fast periods.
    std::vector<std::unique_ptr<runner>> runs;
    runs.push_back(std::make_unique<runner_of<zb::stage2<C, T>>>(o, base));
    runs.push_back(std::make_unique<runner_of<zb::stage3_on_demand<C, T>>>(o, base));
    runs.push_back(std::make_unique<runner_of<zb::stage3<C, T>>>(o, lean));
    runs.push_back(std::make_unique<runner_of<zb::stage3<C, T>>>(o, defaults));
    runs.push_back(std::make_unique<runner_of<zb::stage3<C, T>>>(o, lean_x));
    runs.push_back(std::make_unique<runner_of<zb::stage3<C, T>>>(o, defaults_x));
    for (int s = 0; s < o.warmup + o.steps; ++s)
      for (std::size_t k = 0; k < runs.size(); ++k) runs[(k + static_cast<std::size_t>(s)) % runs.size()]->one_step(s, s >= o.warmup);
    const auto s2 = runs[0]->summary(), s3d = runs[1]->summary(), s3p = runs[2]->summary(),
               s3k = runs[3]->summary(), s3px = runs[4]->summary(), s3kx = runs[5]->summary();
    if (rank == 0) {
      const double gather = s3d.gathers > 0 ? s3d.wait / s3d.gathers : 0.0;
      const double unit_compute = s3d.compute / o.layers;
      std::printf("# bench_stage3_prefetch: %d ranks, %d layers of %zux%zu bf16 (%.1f M elements, %.1f MB per unit), "
                  "batch %zu rows per rank, median of %d steps after %d warmup, progress thread %s\n",
                  world, o.layers, o.dim, o.dim, o.layers * unit / 1e6, unit * 2 / 1e6, o.batch, o.steps, o.warmup,
                  s3p.progress ? "on" : "OFF");
      std::printf("# a unit's compute (forward + backward): %.2f ms; its gather on demand: %.2f ms; compute/gather %.2f\n",
                  unit_compute * 1e3, gather * 1e3, gather > 0 ? unit_compute / gather : 0.0);
      std::printf("| configuration | step ms | compute ms | acquire wait ms | gathers/step | step / stage 2 | hidden |\n");
      std::printf("|---|---|---|---|---|---|---|\n");
      auto row = [&](const char* name, const result& r, bool hidden) {
        std::printf("| %s | %.1f | %.1f | %.2f | %.0f | %.3f | %s |\n", name, r.step * 1e3, r.compute * 1e3,
                    r.wait * 1e3, r.gathers, r.step / s2.step,
                    hidden ? std::to_string(1.0 - r.wait / s3d.wait).substr(0, 5).c_str() : "");
      };
      row("stage 2", s2, false);
      row("stage 3 on demand", s3d, false);
      row("stage 3 prefetch (2 units ahead, 4 live, reuse distance 1)", s3p, true);
      row("stage 3 prefetch (DeepSpeed defaults: reuse keeps forward's units)", s3k, true);
      row("stage 3 prefetch, lean, prefetch_across_steps", s3px, true);
      row("stage 3 prefetch, defaults, prefetch_across_steps", s3kx, true);
      std::printf("# prefetch (lean): prefetch hits %llu, misses %llu, invalidations %llu, peak live %.1f units\n",
                  static_cast<unsigned long long>(s3p.st.prefetch_hits),
                  static_cast<unsigned long long>(s3p.st.misses),
                  static_cast<unsigned long long>(s3p.st.invalidations),
                  static_cast<double>(s3p.st.peak_live_numel) / static_cast<double>(unit));
      auto goal = [&](const char* name, const result& r) {
        const double ratio = r.step / s2.step, hidden = 1.0 - r.wait / s3d.wait;
        std::printf("# goal (compute >= gather), %s: prefetch step <= 1.10 x stage 2: %s (%.3f); hidden >= 0.90: %s "
                    "(%.3f)\n",
                    name, ratio <= 1.10 ? "met" : "NOT met", ratio, hidden >= 0.90 ? "met" : "NOT met", hidden);
      };
      goal("lean", s3p);
      goal("defaults", s3k);
      goal("lean, across steps", s3px);
      goal("defaults, across steps", s3kx);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
    rc = 1;
  }
  MPI_Finalize();
  return rc;
}
