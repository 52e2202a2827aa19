/**
 * @file harness.hpp
 * @brief A synthetic trainer for the engine tests: a model with awkward sizes (sizes
 * that do not divide by the world size, zero-size parameters, a unit with nothing in
 * it), gradients that depend on the parameters the engine hands out (so a wrong gather
 * changes the result), optional overflow injection, and the full acquire/release
 * protocol of forward and backward.
 */
#pragma once

#include <zeroblocks/zeroblocks.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace zbt {
namespace zb = zeroblocks;

struct synthetic_model {
  zb::param_registry reg;
  std::vector<zb::param_id> params;
  std::vector<zb::unit_id> units;

  /// `width` multiplies the first dimension of every non-empty parameter (a bigger model
  /// with the same awkward shape). `grouped`: biases in parameter group 1, `l3.w` and
  /// `head.w` in group 2 (`group_settings` gives the groups' hyper-parameters), so units
  /// and slices span several groups.
  explicit synthetic_model(std::size_t width = 1, bool grouped = false) {
    add("embed.w", {13 * width, 7}, "embed");
    add("embed.empty", {0}, "embed");
    add("l1.w", {5 * width, 11}, "l1");
    add("l1.b", {5 * width}, "l1", grouped ? 1 : 0);
    add("l2.w", {1 * width}, "l2");
    add("l3.w", {97 * width, 3}, "l3", grouped ? 2 : 0);
    add("l3.b", {3 * width}, "l3", grouped ? 1 : 0);
    add("nothing", {0}, "empty_unit");
    add("head.w", {37 * width}, "head", grouped ? 2 : 0);
    for (auto& n : reg.units()) units.push_back(reg.unit(n));
  }
  void add(const char* n, std::vector<std::size_t> shape, const char* unit, std::size_t group = 0) {
    params.push_back(reg.add(n, std::move(shape), unit, group));
  }
  /// The groups of a `grouped` model: 1 without weight decay, 2 at half the learning
  /// rate with a stronger decay.
  static std::vector<zb::param_group> group_settings() {
    return {{}, {.lr_scale = 1.0f, .weight_decay = 0.0f}, {.lr_scale = 0.5f, .weight_decay = 0.1f}};
  }
  static float init(std::size_t p, std::size_t i) {
    return 0.5f * std::sin(0.37f * static_cast<float>(i) + 1.3f * static_cast<float>(p) + 0.1f);
  }
};

struct run_options {
  int steps = 4;
  int gas = 1;                 ///< micro-steps per step
  bool quantized = false;      ///< gradients on a grid where every sum is exact
  int overflow_step = -1;      ///< inject +Inf on the last rank, micro-step 0, of this step
  float max_grad_norm = 0.0f;
  std::size_t bucket_numel = 100;  ///< small, so there are several buckets
  std::size_t width = 1;           ///< synthetic_model's width
  bool grouped = false;            ///< synthetic_model's parameter groups (and their settings)
};

struct run_output {
  std::vector<float> master;
  std::vector<float> params;  ///< 16-bit params widened (bitwise comparable)
  std::vector<zb::step_result> results;
  zb::comm_counters first_step_traffic;
  zb::memory_report memory;
  zb::memory_report estimate;
  std::size_t formula = 0;
  std::size_t psi = 0;
  std::size_t max_unit = 0;
  bool accum32 = false;  ///< the engine summed gradients in fp32 (grad_accum_dtype)
};

/// The gradient a parameter element gets: depends on its current value, the step,
/// micro-step, rank and position.
inline float grad_value(const run_options& o, float x, std::size_t p, std::size_t i, int s, int m, int r) {
  const float noise = std::sin(1.7f * static_cast<float>(i) + 0.3f * static_cast<float>(s) +
                               1.1f * static_cast<float>(m) + 2.3f * static_cast<float>(r) + static_cast<float>(p));
  if (!o.quantized) return 0.3f * x + 0.05f * noise;
  // k in [-2, 2], value 12 k 2^-10: any sum of up to 8 such values, and that sum
  // divided by 1..4 ranks, is exact in bf16/fp16/fp32 — so every stage must agree
  // bit for bit even with accumulation over micro-steps.
  float k = std::round(2.0f * x + noise);
  k = std::fmax(-2.0f, std::fmin(2.0f, k));
  return 12.0f * k * (1.0f / 1024.0f);
}

/// Set every parameter of `model` to its initial value.
template <class Engine>
void init_params(Engine& eng, const synthetic_model& model) {
  for (std::size_t p = 0; p < model.params.size(); ++p) {
    std::vector<float> v(eng.model_layout().param(p).numel);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = synthetic_model::init(p, i);
    eng.set_param(model.params[p], v);
  }
}

/// The micro-steps of step `s` (forward and backward acquires, gradients), without step().
template <class Engine>
void run_micro_steps(Engine& eng, const synthetic_model& model, const run_options& o, int s) {
  using T = typename Engine::param_type;
  const int rank = eng.rank(), world = eng.world();
  for (int m = 0; m < o.gas; ++m) {
    eng.begin_micro_step();
    for (auto u : model.units) {  // forward
      auto g = eng.acquire(u);
      for (auto p : model.reg.params()) (void)p;
    }
    for (auto it = model.units.rbegin(); it != model.units.rend(); ++it) {  // backward
      auto g = eng.acquire(*it);
      for (auto pi : eng.model_layout().unit(it->index).params) {
        auto view = g.param({pi});
        std::vector<T> grad(view.size());
        for (std::size_t i = 0; i < view.size(); ++i)
          grad[i] = zb::from_float<T>(grad_value(o, zb::to_float(view[i]), pi, i, s, m, rank) * eng.loss_scale());
        if (s == o.overflow_step && m == 0 && rank == world - 1 && !grad.empty())
          grad[grad.size() / 2] = zb::from_float<T>(std::numeric_limits<float>::infinity());
        eng.grad_ready({pi}, grad);
      }
    }
    eng.end_micro_step();
  }
}

/// The engine's full parameters, widened (bitwise comparable).
template <class Engine>
std::vector<float> params_of(Engine& eng) {
  std::vector<float> out;
  for (auto x : eng.gather_params()) out.push_back(zb::to_float(x));
  return out;
}

/// Does nothing to a config (the default `tweak` of `run`).
struct no_tweak {
  template <class C>
  void operator()(C&) const {}
};

/// The config `run` uses: the engine's defaults, the options' clipping and bucket size
/// (where the engine has buckets), lr 0.01, then `tweak(cfg)`.
template <class Engine, class Tweak = no_tweak>
typename Engine::config config_for(const run_options& o, Tweak&& tweak = {}) {
  typename Engine::config cfg;
  cfg.step.max_grad_norm = o.max_grad_norm;
  if constexpr (requires { cfg.bucket.bucket_numel; }) cfg.bucket.bucket_numel = o.bucket_numel;
  cfg.optim.lr = 0.01f;
  if (o.grouped) cfg.groups = synthetic_model::group_settings();
  tweak(cfg);
  return cfg;
}

/// Train the synthetic model with `o`; `tweak(cfg)` adjusts the engine's config.
template <class Engine, class Tweak = no_tweak>
run_output run(typename Engine::comm_type comm, const run_options& o, Tweak&& tweak = {}) {
  synthetic_model model(o.width, o.grouped);
  Engine eng(model.reg, std::move(comm), config_for<Engine>(o, tweak));
  init_params(eng, model);
  run_output out;
  for (int s = 0; s < o.steps; ++s) {
    const auto before = eng.counters();
    run_micro_steps(eng, model, o, s);
    out.results.push_back(eng.step());
    if (s == 0) out.first_step_traffic = eng.counters() - before;
  }
  out.memory = eng.memory();
  out.estimate = Engine::estimate(eng.model_layout(), eng.get_config());
  out.formula = eng.formula_bytes();
  out.psi = eng.model_layout().total_numel();
  out.max_unit = eng.model_layout().max_unit_numel();
  out.accum32 = eng.accumulates_fp32();
  out.master = eng.gather_master();
  out.params = params_of(eng);
  return out;
}

/// How a stage-3 run was configured (the expected traffic and memory depend on it).
enum class stage3_variant {
  on_demand,      ///< coordinate::on_demand
  prefetch_only,  ///< prefetch_trace, persistence and reuse off: on demand's gathers, issued ahead
  defaults,       ///< prefetch_trace with DeepSpeed's defaults: the test models' small units persist
};
/// prefetch_trace with persistence and reuse turned off (a `tweak` for `run`).
struct prefetch_only {
  template <class C>
  void operator()(C& c) const {
    c.coordinate.persistence_threshold_numel = 0;
    c.coordinate.max_reuse_distance_numel = 0;
  }
};
/// Payload elements of a step with `gas` micro-steps (one forward and one backward
/// acquire per unit per micro-step): stages 0/1 2Ψ, stage 2 (gas+1)Ψ, stage 3 3·gas·Ψ
/// — or gas·Ψ + Ψ when every unit persists (one gather per step, at its first acquire).
/// With fp32 accumulation (`accum32`) stages 0/1 reduce every micro-step: (gas+1)Ψ
/// (stage 0's Ψ is the all-gather of the fp32 sum, stage 1's the parameters').
inline std::uint64_t expected_payload(int stage, std::uint64_t psi, int gas, stage3_variant v, bool accum32 = false) {
  if (stage == 2 || (stage < 2 && accum32)) return (gas + 1) * psi;
  if (stage == 3) return v == stage3_variant::defaults ? (gas + 1) * psi : 3 * gas * psi;
  return 2 * psi;
}

/// Bitwise equality of two float arrays (NaN-safe); returns the first differing index or -1.
inline long first_difference(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) return static_cast<long>(i);
  return -1;
}

}  // namespace zbt
