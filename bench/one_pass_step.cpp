// bench_one_pass_step: the engine's whole host step against the fused pass alone and
// against a DeepSpeed-like host sequence of the same work, paired in one run.
//
// The engine is stage 2 on one rank (comm::self), bf16 parameters and gradients,
// gradients accumulated in bf16 (`grad_accum_dtype::param`, as DeepSpeed's fp16/bf16
// default), AdamW; `--accum fp32` runs fp32 accumulation instead (its fused pass reads
// 4-byte gradients: 30 B per element). Each round:
//
//  - one micro-step (untimed here: backward's reduction, where the one-pass step took
//    the norm statistics of each gradient slice while writing it), then
//  - `step`    `eng.step()`: the norm from those statistics, the fused pass, publish;
//  - `fused`   `kernel::fused_adamw` alone on arrays of the same size (28 B per element):
//              the floor the step is held to (goal: step / fused <= 1.03);
//  - `2-pass`  `grad_sumsq` + `fused_adamw`: the step as zeroblocks ran it before (30 B);
//  - `ds`      a DeepSpeed-like ZeRO-Offload host sequence of the same update, written
//              with this library's own fastest kernels so that only the bytes differ:
//              fp32 gradient norm (4 B), CPU Adam on fp32 gradients (28 B: the fused
//              kernel writing its fp32 "parameter" onto the master it just wrote, which
//              costs no traffic), fp32 -> bf16 parameter copy (6 B): 38 B per element
//              (goal: ds / step >= 1.35);
//  - `ds+u`    the same plus the in-place unscale pass DeepSpeed runs every step (8 B).
//
// Also, paired: `kernel::accumulate_sumsq` against `kernel::accumulate` and against
// `accumulate` + `grad_sumsq` (what the one-pass step adds to backward's reduction, and
// what it saves), on the same arrays.
//
// Ratios are medians of per-round ratios (each round runs every variant back to back, so
// a slow phase of the shared machine hits them alike).
//
// Usage: bench_one_pass_step [--n N=67108864] [--rounds R=15] [--threads T=1] [--accum bf16|fp32]
#include <zeroblocks/zeroblocks.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace zb = zeroblocks;
namespace kn = zeroblocks::kernel;
using S = zb::comm::self;
using T = zb::bfloat16;
using E = zb::stage2<S, T>;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
template <class F>
double time_of(F&& f) {
  const double t0 = now();
  f();
  return now() - t0;
}
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t n = std::size_t{1} << 26;
  int rounds = 15, threads = 1;
  bool fp32_accum = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--n") n = std::strtoull(argv[i + 1], nullptr, 10);
    else if (a == "--rounds") rounds = std::atoi(argv[i + 1]);
    else if (a == "--threads") threads = std::atoi(argv[i + 1]);
    else if (a == "--accum") fp32_accum = std::string(argv[i + 1]) == "fp32";
    else {
      std::fprintf(stderr, "usage: bench_one_pass_step [--n N] [--rounds R] [--threads T] [--accum bf16|fp32]\n");
      return 2;
    }
  }
  // The model: 64 units of one parameter each (layers), two buckets.
  constexpr std::size_t units = 64;
  const std::size_t per = n / units;
  n = per * units;
  zb::param_registry reg;
  for (std::size_t u = 0; u < units; ++u) reg.add("layer" + std::to_string(u) + ".w", {per}, "layer" + std::to_string(u));
  E::config cfg;
  cfg.step.threads = threads;
  cfg.step.grad_accum = fp32_accum ? zb::grad_accum_dtype::fp32 : zb::grad_accum_dtype::param;
  cfg.optim.lr = 1e-4f;
  E eng(reg, S{}, cfg);
  std::vector<float> init(per);
  for (std::size_t i = 0; i < per; ++i) init[i] = 0.02f * std::sin(0.001f * static_cast<float>(i));
  for (std::size_t p = 0; p < units; ++p) eng.set_param({p}, init);
  std::vector<T> grad(per);
  for (std::size_t i = 0; i < per; ++i) grad[i] = zb::from_float<T>(0.001f * std::cos(0.3f * static_cast<float>(i)));
  auto micro_step = [&] {
    eng.begin_micro_step();
    for (std::size_t p = units; p-- > 0;) eng.grad_ready({p}, grad);
    eng.end_micro_step();
  };

  // The kernels' own arrays (first touched by the kernels' split, as the engine's are).
  std::vector<float> master(n), m(n, 0.0f), v(n, 0.0f), g32(n);
  std::vector<T> g16(n), p16(n), acc(n);
  kn::detail::parallel_ranges(n, threads, [&](std::size_t b, std::size_t e) {
    for (std::size_t i = b; i < e; ++i) {
      master[i] = 0.02f * std::sin(0.001f * static_cast<float>(i));
      g32[i] = 0.001f * std::cos(0.3f * static_cast<float>(i));
      g16[i] = zb::from_float<T>(g32[i]);
      acc[i] = g16[i];
    }
  });
  auto args = [](long step) { return kn::make_adamw_args(1e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, true, step, 1.0f); };
  long kstep = 0;
  // The fused pass alone reads the gradients the engine's does: bf16, or fp32 (30 B).
  auto fused = [&] {
    if (fp32_accum) kn::fused_adamw(master.data(), m.data(), v.data(), g32.data(), p16.data(), n, args(++kstep), threads);
    else kn::fused_adamw(master.data(), m.data(), v.data(), g16.data(), p16.data(), n, args(++kstep), threads);
  };
  auto two_pass = [&] {
    volatile double s = kn::grad_sumsq(g16.data(), n, threads).sumsq;
    (void)s;
    fused();
  };
  auto ds = [&](bool unscale) {
    volatile double s = kn::grad_sumsq(g32.data(), n, threads).sumsq;
    (void)s;
    if (unscale) kn::upcast(g32.data(), g32.data(), n, 1.0f, threads);  // grads.mul_(1/scale), in place
    kn::fused_adamw(master.data(), m.data(), v.data(), g32.data(), master.data(), n, args(++kstep), threads);
    kn::downcast(p16.data(), master.data(), n, 1.0f, threads);
  };

  eng.enable_timers(true);  // (two clock reads per engine call: nothing at this size)
  for (int w = 0; w < 2; ++w) {  // warm-up
    micro_step();
    eng.step();
    fused();
    two_pass();
    ds(false);
    ds(true);
  }
  (void)eng.take_timers();
  std::vector<double> t_step, t_fused, t_two, t_ds, t_dsu, t_micro;
  std::vector<double> r_step, r_two, r_ds, r_dsu, r_ds_fused;
  std::vector<double> t_acc, t_accs, t_acc2, r_accs, r_acc2;
  for (int r = 0; r < rounds; ++r) {
    t_micro.push_back(time_of(micro_step));
    // (step and fused alternate which runs first, so neither always follows the
    // micro-step's writes)
    double ts = 0, tf = 0;
    if (r % 2) {
      tf = time_of(fused);
      ts = time_of([&] { eng.step(); });
    } else {
      ts = time_of([&] { eng.step(); });
      tf = time_of(fused);
    }
    const double t2 = time_of(two_pass);
    const double td = time_of([&] { ds(false); });
    const double tu = time_of([&] { ds(true); });
    t_step.push_back(ts), t_fused.push_back(tf), t_two.push_back(t2), t_ds.push_back(td), t_dsu.push_back(tu);
    r_step.push_back(ts / tf), r_two.push_back(t2 / tf), r_ds.push_back(td / ts), r_dsu.push_back(tu / ts);
    r_ds_fused.push_back(td / tf);
    // accumulate vs accumulate_sumsq vs accumulate + grad_sumsq (dst drifts; values stay small)
    const double a1 = time_of([&] { kn::accumulate(acc.data(), g16.data(), n, threads); });
    const double a2 = time_of([&] {
      volatile double s = kn::accumulate_sumsq(acc.data(), g16.data(), n, threads).sumsq;
      (void)s;
    });
    const double a3 = time_of([&] {
      kn::accumulate(acc.data(), g16.data(), n, threads);
      volatile double s = kn::grad_sumsq(acc.data(), n, threads).sumsq;
      (void)s;
    });
    t_acc.push_back(a1), t_accs.push_back(a2), t_acc2.push_back(a3);
    r_accs.push_back(a2 / a1), r_acc2.push_back(a3 / a1);
    if (r % 2) std::fill(acc.begin(), acc.end(), g16[0]);  // keep the sums from growing
  }
  const double mb = static_cast<double>(n) / 1e6;
  std::printf("bench_one_pass_step: n = %zu (%.0fM) elements, %zu units, bf16, %s accumulation, %d thread(s), "
              "%d rounds, ISA %s\n",
              n, mb, units, fp32_accum ? "fp32" : "bf16", threads, rounds, kn::isa_name(kn::host_isa()));
  auto row = [&](const char* what, const std::vector<double>& t, double bytes) {
    std::printf("  %-44s median %8.2f ms  %6.2f GB/s (%2.0f B/elem)\n", what, 1e3 * median(t),
                bytes * static_cast<double>(n) / median(t) / 1e9, bytes);
  };
  const double step_bytes = fp32_accum ? 30 : 28;
  row("micro-step (backward's reduction, untimed)", t_micro, 0);
  row("step: eng.step()", t_step, step_bytes);
  row("fused: fused_adamw alone", t_fused, step_bytes);
  row("2-pass: grad_sumsq + fused_adamw", t_two, 30);
  row("ds: fp32 norm + Adam(fp32 grad) + copy", t_ds, 38);
  row("ds+u: ds + unscale pass", t_dsu, 46);
  row("accumulate (bf16)", t_acc, 6);
  row("accumulate_sumsq", t_accs, 6);
  row("accumulate + grad_sumsq", t_acc2, 8);
  const auto tm = eng.take_timers();
  std::printf("  engine timers, ms per step: norm %.3f, fused %.3f, publish %.3f, rest of step %.3f; "
              "end_micro_step %.3f\n",
              1e3 * tm.norm_s / rounds, 1e3 * tm.fused_s / rounds, 1e3 * tm.publish_s / rounds,
              1e3 * (tm.step_s - tm.norm_s - tm.fused_s - tm.publish_s - tm.reduce_s) / rounds,
              1e3 * tm.micro_end_s / rounds);
  auto ratio = [](const char* what, const std::vector<double>& r, const char* goal) {
    std::printf("  %-44s median %.3f  (p25 %.3f, p75 %.3f)  %s\n", what, median(r), quantile(r, 0.25),
                quantile(r, 0.75), goal);
  };
  std::printf("paired ratios (per round):\n");
  ratio("step / fused", r_step, "goal <= 1.03");
  ratio("2-pass / fused (the step before)", r_two, "");
  ratio("ds / step", r_ds, "goal >= 1.35 (byte ratio 38/28 = 1.357)");
  ratio("ds+u / step", r_dsu, "(46/28 = 1.64)");
  ratio("ds / fused", r_ds_fused, "");
  ratio("accumulate_sumsq / accumulate", r_accs, "(what backward pays for the norm)");
  ratio("(accumulate + grad_sumsq) / accumulate", r_acc2, "(a separate pass instead)");
  return 0;
}
