/**
 * @file gpt_step.cpp
 * @brief The GPT demo model's training step: single-process AdamW (no zeroblocks) vs
 * stage 2 vs stage 3 on demand vs stage 3 with prefetch.
 *
 * Every configuration trains the same model (`examples/gpt/gpt_model.hpp`, the
 * trainer of `examples/gpt/engine_trainer.hpp`) on the same batches; all live at once
 * and take turns step by step, so drift in the machine's speed hits them alike. Each
 * timed step starts after a barrier and counts as the slowest rank's time; figures are
 * medians over `--steps` after `--warmup`.
 *
 *  - **baseline**: the same model's whole forward/backward on this rank's batch and a
 *    plain fp32 AdamW (clipping, decoupled decay, no decay for biases/LayerNorms)
 *    written here, no zeroblocks. With 1 rank this is the single-process trainer at the
 *    same global batch.
 *  - **stage2**, **stage3_od** (`stage3_on_demand`), **stage3_pf** (`stage3`, trace
 *    prefetch, persistence/reuse sized as the demo sizes them), parameters of `--dtype`.
 *
 * Printed: step time, tokens/s, ratios stage2/baseline (per-sample cost: same batch on
 * 1 rank), stage3_pf/stage2, and the fraction of gather time hidden = 1 − prefetch
 * acquire wait / on-demand acquire wait (the coordinator's time inside acquire/release),
 * with a block's compute (forward + backward, from the baseline) against its on-demand
 * gather (on-demand wait per gather) and the trainer's compute per token row.
 *
 * Run: mpirun -np 2 ./bench_gpt_step [--batch 8] [--seq 64] [--layers 4] [--embd 128]
 *      [--heads 4] [--steps 10] [--warmup 2] [--dtype bf16|fp32]
 */
#include <zeroblocks/comm/mpi.hpp>
#include <zeroblocks/zeroblocks.hpp>

#include "gpt/engine_trainer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace zb = zeroblocks;
using C = zb::comm::mpi;
using clk = std::chrono::steady_clock;

namespace {

struct options {
  int batch = 8, seq = 64, layers = 4, embd = 128, heads = 4, steps = 10, warmup = 2;
  std::string dtype = "bf16";
};

double since(clk::time_point t0) { return std::chrono::duration<double>(clk::now() - t0).count(); }
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}
double slowest(double t) {
  MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return t;
}

constexpr float lr = 1e-3f, wd = 0.1f, clip = 1.0f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;

/// Tokens of step s for this rank: n sequences of T+1 bytes from a fixed pseudo-text.
void batch_of(int s, int rank, int n, int T, std::vector<int>& tok, std::vector<int>& tgt) {
  tok.resize(static_cast<std::size_t>(n) * T);
  tgt.resize(tok.size());
  std::uint64_t x = 0x9e3779b97f4a7c15ull * static_cast<std::uint64_t>(s * 131 + rank + 1);
  for (std::size_t i = 0; i < tok.size(); ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    tok[i] = static_cast<int>(32 + x % 90);
    tgt[i] = static_cast<int>(32 + (x >> 16) % 90);
  }
}

/// The trainer without zeroblocks: the whole model's forward/backward, plain AdamW.
class baseline {
public:
  baseline(const gpt::config& c, int n, int T) : cfg_(c), acts_(c, n, T), n_(n), T_(T) {
    specs_ = gpt::tensors(c);
    w_ = gpt::init_gpt2(c, 1234);
    for (auto& t : w_) g_.emplace_back(t.size(), 0.0f), m_.emplace_back(t.size(), 0.0f), v_.emplace_back(t.size(), 0.0f);
    scratch_.resize(w_[0].size());
  }
  /// Returns the compute (forward + backward) part of the step's time.
  double step(int s, int rank) {
    batch_of(s, rank, n_, T_, tok_, tgt_);
    const auto t0 = clk::now();
    const auto W = gpt::weights_from<float>(cfg_, gpt::const_pointers(w_));
    const auto G = gpt::grads_from<float>(cfg_, gpt::pointers(g_));
    gpt::forward(acts_, W, tok_.data(), tgt_.data());
    gpt::backward(acts_, W, G, tok_.data(), tgt_.data(), 1.0f, scratch_.data());
    const double compute = since(t0);
    double sumsq = 0.0;
    for (auto& g : g_)
      for (float x : g) sumsq += static_cast<double>(x) * x;
    const float k = static_cast<float>(std::min(1.0, clip / (std::sqrt(sumsq) + 1e-6)));
    ++t_;
    const float c1 = 1.0f - std::pow(b1, static_cast<float>(t_)), c2 = 1.0f - std::pow(b2, static_cast<float>(t_));
    for (std::size_t p = 0; p < w_.size(); ++p) {
      float* w = w_[p].data();
      const float* g = g_[p].data();
      float* m = m_[p].data();
      float* v = v_[p].data();
      const float decay = specs_[p].decay ? wd : 0.0f;
      const std::ptrdiff_t n = static_cast<std::ptrdiff_t>(w_[p].size());
#pragma omp parallel for schedule(static)
      for (std::ptrdiff_t i = 0; i < n; ++i) {
        const float gi = g[i] * k;
        m[i] = b1 * m[i] + (1.0f - b1) * gi;
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        w[i] -= lr * ((m[i] / c1) / (std::sqrt(v[i] / c2) + eps) + decay * w[i]);
      }
    }
    return compute;
  }

private:
  gpt::config cfg_;
  gpt::activations<float> acts_;
  int n_, T_;
  long t_ = 0;
  std::vector<gpt::tensor_spec> specs_;
  std::vector<std::vector<float>> w_, g_, m_, v_;
  std::vector<float> scratch_;
  std::vector<int> tok_, tgt_;
};

struct runner {
  std::string name;
  std::function<void(int)> step;
  std::function<double()> wait;  ///< coordinator time in acquire/release so far
  std::function<double()> gathers;
  std::vector<double> times;
  double wait0 = 0, gathers0 = 0;
};

template <class Engine>
runner make_runner(const std::string& name, const gpt::config& mc, int local, int T, int world, int batch,
                   std::vector<std::shared_ptr<void>>& keep) {
  auto P = std::make_shared<gpt::gpt_params>(mc);
  typename Engine::config cfg;
  cfg.optim.lr = lr;
  cfg.optim.weight_decay = wd;
  cfg.groups = {{}, {.lr_scale = 1.0f, .weight_decay = 0.0f}};
  cfg.step.max_grad_norm = clip;
  std::size_t block = 0;
  for (std::size_t k = 0; k < gpt::gpt_params::per_block; ++k) block += P->specs[2 + k].numel();
  const std::size_t embed = P->specs[0].numel() + P->specs[1].numel();
  cfg.bucket.bucket_numel = std::max<std::size_t>(gpt::param_count(mc) / 4, 1024);
  if constexpr (requires { cfg.coordinate.persistence_threshold_numel; }) {
    cfg.coordinate.persistence_threshold_numel = 4 * static_cast<std::size_t>(mc.n_embd);
    cfg.coordinate.max_live_numel = embed + 3 * block + 4096;
    cfg.coordinate.prefetch_numel = 2 * block + 4096;
    cfg.coordinate.max_reuse_distance_numel = 0;
  }
  auto eng = std::make_shared<Engine>(P->reg, C(MPI_COMM_WORLD), cfg);
  {
    const auto init = gpt::init_gpt2(mc, 1234);
    for (std::size_t i = 0; i < P->ids.size(); ++i) eng->set_param(P->ids[i], init[i]);
  }
  auto tr = std::make_shared<gpt::trainer<Engine>>(*eng, *P, mc, static_cast<std::size_t>(local), T);
  auto data = std::make_shared<std::pair<std::vector<int>, std::vector<int>>>();
  keep.push_back(P);
  keep.push_back(eng);
  keep.push_back(tr);
  keep.push_back(data);
  runner r;
  r.name = name;
  Engine* e = eng.get();
  gpt::trainer<Engine>* t = tr.get();
  r.step = [e, t, data, local, T, world, batch](int s) {
    batch_of(s, e->rank(), local, T, data->first, data->second);
    t->set_dloss(e->loss_scale() * static_cast<float>(world) * static_cast<float>(local) / static_cast<float>(batch));
    e->begin_micro_step();
    t->forward_backward(data->first, data->second, static_cast<std::size_t>(local));
    e->end_micro_step();
    e->step();
  };
  r.wait = [e] { return e->coordination_stats().wait_seconds; };
  r.gathers = [e] { return static_cast<double>(e->coordination_stats().gathers); };
  return r;
}

template <class T>
int run(const options& o) {
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  gpt::config mc{256, std::max(64, o.seq), o.layers, o.heads, o.embd};
  mc.validate();
  if (o.batch % world != 0) {
    if (rank == 0) std::fprintf(stderr, "bench_gpt_step: --batch must divide by the %d ranks\n", world);
    return 2;
  }
  const int local = o.batch / world;
  std::vector<std::shared_ptr<void>> keep;
  baseline base(mc, local, o.seq);
  std::vector<runner> rs;
  runner b;
  b.name = world == 1 ? "baseline (1 process)" : "baseline (per rank)";
  std::vector<double> compute;
  b.step = [&](int s) { compute.push_back(base.step(s, rank)); };
  b.wait = [] { return 0.0; };
  b.gathers = [] { return 0.0; };
  rs.push_back(std::move(b));
  rs.push_back(make_runner<zb::stage2<C, T>>("stage2", mc, local, o.seq, world, o.batch, keep));
  rs.push_back(make_runner<zb::stage3_on_demand<C, T>>("stage3_od", mc, local, o.seq, world, o.batch, keep));
  rs.push_back(make_runner<zb::stage3<C, T>>("stage3_pf", mc, local, o.seq, world, o.batch, keep));

  for (int s = 0; s < o.warmup + o.steps; ++s) {
    if (s == o.warmup) {
      compute.clear();
      for (auto& r : rs) r.wait0 = r.wait(), r.gathers0 = r.gathers();
    }
    for (auto& r : rs) {
      MPI_Barrier(MPI_COMM_WORLD);
      const auto t0 = clk::now();
      r.step(s);
      const double t = slowest(since(t0));
      if (s >= o.warmup) r.times.push_back(t);
    }
  }
  const double tokens = static_cast<double>(o.batch) * o.seq;
  const double t_base = median(rs[0].times), t2 = median(rs[1].times), tod = median(rs[2].times),
               tpf = median(rs[3].times);
  const double wait_od = slowest(rs[2].wait() - rs[2].wait0), wait_pf = slowest(rs[3].wait() - rs[3].wait0);
  const double gathers_od = rs[2].gathers() - rs[2].gathers0;
  const double comp = slowest(median(compute));
  const double block_compute = comp / o.layers;  // the blocks dominate; embedding/head share is small
  const double gather_each = gathers_od > 0 ? wait_od / gathers_od : 0.0;
  std::vector<double> waits;  // (collective: every rank takes part)
  for (auto& r : rs) waits.push_back(slowest(r.wait() - r.wait0));
  if (rank == 0) {
    std::printf("bench_gpt_step: %d ranks, %s, model %zu parameters (%d layers, width %d, %d heads), global batch "
                "%d x %d tokens, %d steps after %d warm-up, medians of the slowest rank\n",
                world, zb::dtype_name<T>(), gpt::param_count(mc), o.layers, o.embd, o.heads, o.batch, o.seq, o.steps,
                o.warmup);
    std::printf("%-22s %10s %12s %14s\n", "config", "step_ms", "tokens/s", "acquire_wait_s");
    for (std::size_t i = 0; i < rs.size(); ++i)
      std::printf("%-22s %10.2f %12.0f %14.4f\n", rs[i].name.c_str(), 1e3 * median(rs[i].times),
                  tokens / median(rs[i].times), waits[i]);
    std::printf("ratio stage2 / baseline         = %.3f%s\n", t2 / t_base,
                world == 1 ? "  (per-sample cost, same batch; goal <= 1.05)" : "  (baseline: each rank's share, no communication)");
    std::printf("ratio stage3_pf / stage2        = %.3f  (goal <= 1.10 at 2 ranks)\n", tpf / t2);
    std::printf("ratio stage3_od / stage2        = %.3f\n", tod / t2);
    std::printf("gather time hidden              = %.3f  (1 - %.4f s / %.4f s; goal >= 0.90)\n",
                wait_od > 0 ? 1.0 - wait_pf / wait_od : 0.0, wait_pf, wait_od);
    std::printf("block compute / on-demand gather = %.1f  (%.3f ms / %.3f ms per gather; goal applies at >= 20)\n",
                gather_each > 0 ? block_compute / gather_each : 0.0, 1e3 * block_compute, 1e3 * gather_each);
    std::printf("trainer compute per token row   = %.2f us (forward + backward, %d rows per rank)\n",
                1e6 * comp / (static_cast<double>(local) * o.seq), local * o.seq);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i], v = argv[i + 1];
    if (f == "--batch") o.batch = std::atoi(v.c_str());
    else if (f == "--seq") o.seq = std::atoi(v.c_str());
    else if (f == "--layers") o.layers = std::atoi(v.c_str());
    else if (f == "--embd") o.embd = std::atoi(v.c_str());
    else if (f == "--heads") o.heads = std::atoi(v.c_str());
    else if (f == "--steps") o.steps = std::atoi(v.c_str());
    else if (f == "--warmup") o.warmup = std::atoi(v.c_str());
    else if (f == "--dtype") o.dtype = v;
    else {
      std::fprintf(stderr, "bench_gpt_step: unknown option %s\n", f.c_str());
      MPI_Finalize();
      return 2;
    }
  }
  int rc = 0;
  try {
    rc = o.dtype == "fp32" ? run<float>(o) : run<zb::bfloat16>(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpt_step: %s\n", e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return rc;
}
