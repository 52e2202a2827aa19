// bench_step_options: what two engine options cost, measured in pairs in one run.
//
//   1. Timers (`enable_timers`, [wall_clock_breakdown]): a whole training step (acquire,
//      grad_ready, end_micro_step, step) with timers on against timers off. Off is the
//      default and costs one flag test per call; on adds two steady_clock reads per call.
//   2. fp32 gradient accumulation (`grad_accum_dtype::fp32`, bf16's default) against
//      accumulation in bf16, stage 2, with 1 and 4 micro-steps.
//
// Each pair runs alternately, step by step, after warm-up; the figure is the median of
// the per-pair ratios (B / A), so slow phases of a shared machine hit both sides. Two
// models: many small units (per-call overhead shows) and a few large ones (memory
// traffic shows). One process (comm::self), so no MPI noise.
//
// Usage: bench_step_options [pairs=41]
#include <zeroblocks/zeroblocks.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace zb = zeroblocks;
using S = zb::comm::self;
using T = zb::bfloat16;
using E = zb::stage2<S, T>;

namespace {

struct model {
  zb::param_registry reg;
  std::vector<zb::unit_id> units;
  model(std::size_t n_units, std::size_t per_param, std::size_t params_per_unit) {
    for (std::size_t u = 0; u < n_units; ++u) {
      const std::string un = "u" + std::to_string(u);
      for (std::size_t p = 0; p < params_per_unit; ++p) reg.add(un + ".p" + std::to_string(p), {per_param}, un);
      units.push_back(reg.unit(un));
    }
  }
};

struct runner {
  model& m;
  E eng;
  std::vector<std::vector<T>> grads;
  int micro;
  runner(model& md, zb::grad_accum_dtype accum, bool timers, int micro_steps)
      : m(md), eng(md.reg, S{}, [&] {
          E::config c;
          c.step.grad_accum = accum;
          c.step.threads = 1;
          return c;
        }()),
        micro(micro_steps) {
    eng.enable_timers(timers);
    for (std::size_t p = 0; p < m.reg.size(); ++p) {
      std::vector<float> v(m.reg.params()[p].numel);
      for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.01f * std::sin(0.1f * static_cast<float>(i + p));
      eng.set_param({p}, v);
      grads.emplace_back(v.size());
      for (std::size_t i = 0; i < v.size(); ++i) grads.back()[i] = zb::from_float<T>(0.001f * std::cos(0.3f * i));
    }
  }
  double step() {
    const auto t0 = std::chrono::steady_clock::now();
    for (int k = 0; k < micro; ++k) {
      eng.begin_micro_step();
      for (auto u : m.units) {
        auto g = eng.acquire(u);
      }
      for (auto it = m.units.rbegin(); it != m.units.rend(); ++it) {
        auto g = eng.acquire(*it);
        for (auto p : eng.model_layout().unit(it->index).params) eng.grad_ready({p}, grads[p]);
      }
      eng.end_micro_step();
    }
    eng.step();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void pair(const char* what, runner& a, runner& b, int pairs) {
  for (int i = 0; i < 3; ++i) a.step(), b.step();  // warm-up
  std::vector<double> ta, tb, r;
  for (int i = 0; i < pairs; ++i) {
    const double x = (i % 2) ? (tb.push_back(b.step()), ta.push_back(a.step()), ta.back())
                             : (ta.push_back(a.step()), tb.push_back(b.step()), ta.back());
    r.push_back(tb.back() / x);
  }
  std::printf("%-58s A %8.3f ms  B %8.3f ms  B/A median %.3f  (p25 %.3f, p75 %.3f)\n", what, 1e3 * median(ta),
              1e3 * median(tb), median(r), [&] {
                auto s = r;
                std::sort(s.begin(), s.end());
                return s[s.size() / 4];
              }(),
              [&] {
                auto s = r;
                std::sort(s.begin(), s.end());
                return s[3 * s.size() / 4];
              }());
}

}  // namespace

int main(int argc, char** argv) {
  const int pairs = argc > 1 ? std::atoi(argv[1]) : 41;
  using A = zb::grad_accum_dtype;
  struct shape {
    const char* name;
    std::size_t units, per_param, params_per_unit;
  };
  for (const shape& s : {shape{"512 units x 4 params x 256 (0.5M elements)", 512, 256, 4},
                         shape{"16 units x 2 params x 256K (8.4M elements)", 16, 1 << 18, 2}}) {
    model m(s.units, s.per_param, s.params_per_unit);
    std::printf("\n== %s, bf16, stage 2, one rank, 1 thread\n", s.name);
    {
      runner off(m, A::fp32, false, 1), on(m, A::fp32, true, 1);
      pair("timers: A off, B on (1 micro-step)", off, on, pairs);
    }
    for (int micro : {1, 4}) {
      runner p16(m, A::param, false, micro), p32(m, A::fp32, false, micro);
      const std::string what = "accumulation: A bf16, B fp32 (" + std::to_string(micro) + " micro-steps)";
      pair(what.c_str(), p16, p32, pairs);
    }
  }
  return 0;
}
