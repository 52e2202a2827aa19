// The engine on one rank (comm::self), and the pieces it is built from that need no MPI:
//  - stages 1-3 reproduce stage 0 bit for bit on one rank (fp32, fp16, bf16), with
//    clipping, an injected overflow and gradient accumulation; memory equals the ZeRO
//    formula and the policies' estimate; traffic follows the counting convention;
//  - the loss scalers (dynamic with hysteresis, growth and floor; fixed; none);
//  - a step with an overflow is skipped and leaves no trace (master, params, moments,
//    step count), and the scale reacts as documented;
//  - clipping really clips: the reported norm equals an L2 norm computed here, and the
//    first AdamW update equals one computed here from the clipped gradient;
//  - memory_tracker, buffer<T, host_space> (tracking, moves), pinned_space.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "harness.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>
#include "error_of.hpp"

namespace zb = zeroblocks;
using zbt::error_of;
using zbt::has;
using S = zb::comm::self;

namespace {

template <class T>
void check_same_run(const zbt::run_output& ref, const zbt::run_output& got, int stage) {
  INFO("stage " << stage << " vs stage 0, " << zb::dtype_name<T>());
  CHECK(zbt::first_difference(ref.master, got.master) == -1);
  CHECK(zbt::first_difference(ref.params, got.params) == -1);
  REQUIRE(ref.results.size() == got.results.size());
  for (std::size_t s = 0; s < ref.results.size(); ++s) {
    INFO("step " << s);
    CHECK(ref.results[s].applied == got.results[s].applied);
    CHECK(ref.results[s].clip_factor == got.results[s].clip_factor);
    CHECK(ref.results[s].loss_scale == got.results[s].loss_scale);
    CHECK(ref.results[s].step == got.results[s].step);
    if (ref.results[s].applied) CHECK(ref.results[s].grad_norm == got.results[s].grad_norm);
  }
}

template <class T>
void check_memory_and_traffic(const zbt::run_output& r, int stage, int gas,
                              zbt::stage3_variant v = zbt::stage3_variant::on_demand) {
  INFO("stage " << stage << " (variant " << static_cast<int>(v) << ") " << zb::dtype_name<T>());
  CHECK(r.formula == zb::zero_formula_bytes(stage, r.psi, 1, sizeof(T), 12, r.accum32));
  CHECK(r.memory.model_state() == r.formula);
  for (std::size_t c = 0; c < zb::mem_category_count; ++c) {
    INFO("category " << zb::mem_category_name(static_cast<zb::mem_category>(c)));
    CHECK(r.memory.current[c] == r.estimate.current[c]);
  }
  // One rank: 16Ψ of model state whatever the stage (with fp32 accumulation of 16-bit
  // T: stages 0/1 add a 4Ψ fp32 sum, stages 2/3 hold the gradient in fp32: 20Ψ, 18Ψ).
  const std::size_t grads = r.accum32 ? (stage < 2 ? sizeof(T) + 4 : 4) : sizeof(T);
  CHECK(r.memory.model_state() == (sizeof(T) + grads + 12) * r.psi);
  CHECK(r.first_step_traffic.payload() == zbt::expected_payload(stage, r.psi, gas, v, r.accum32));
}

template <class T>
void all_stages_equal(const zbt::run_options& o) {
  auto r0 = zbt::run<zb::stage0<S, T>>(S{}, o);
  auto r1 = zbt::run<zb::stage1<S, T>>(S{}, o);
  auto r2 = zbt::run<zb::stage2<S, T>>(S{}, o);
  auto r3 = zbt::run<zb::stage3_on_demand<S, T>>(S{}, o);
  auto r3p = zbt::run<zb::stage3<S, T>>(S{}, o, zbt::prefetch_only{});
  auto r3d = zbt::run<zb::stage3<S, T>>(S{}, o);
  check_same_run<T>(r0, r1, 1);
  check_same_run<T>(r0, r2, 2);
  check_same_run<T>(r0, r3, 3);
  check_same_run<T>(r0, r3p, 3);
  check_same_run<T>(r0, r3d, 3);
  check_memory_and_traffic<T>(r0, 0, o.gas);
  check_memory_and_traffic<T>(r1, 1, o.gas);
  check_memory_and_traffic<T>(r2, 2, o.gas);
  check_memory_and_traffic<T>(r3, 3, o.gas);
  check_memory_and_traffic<T>(r3p, 3, o.gas, zbt::stage3_variant::prefetch_only);
  check_memory_and_traffic<T>(r3d, 3, o.gas, zbt::stage3_variant::defaults);
  // Not vacuous: training moved the master, the overflow was skipped, clipping acted.
  auto untouched = o;
  untouched.steps = 0;
  CHECK(zbt::first_difference(r0.master, zbt::run<zb::stage0<S, T>>(S{}, untouched).master) != -1);
  if (o.overflow_step >= 0) CHECK_FALSE(r0.results[o.overflow_step].applied);
  if (o.max_grad_norm > 0) {
    bool clipped = false;
    for (auto& s : r0.results) clipped = clipped || s.clip_factor < 1.0f;
    CHECK(clipped);
  }
}

/// The model and a hand-driven training loop (used where zbt::run hides too much).
struct manual {
  zbt::synthetic_model model;

  template <class E>
  void init(E& eng) const {
    for (std::size_t p = 0; p < model.params.size(); ++p) {
      std::vector<float> v(eng.model_layout().param(p).numel);
      for (std::size_t i = 0; i < v.size(); ++i) v[i] = zbt::synthetic_model::init(p, i);
      eng.set_param(model.params[p], v);
    }
  }

  /// One micro-step, one step. Gradients depend on the current parameters and on `s`;
  /// with `inject_inf`, one element of one gradient is +Inf.
  template <class E>
  zb::step_result step(E& eng, int s, bool inject_inf) const {
    using T = typename E::param_type;
    zbt::run_options o;
    eng.begin_micro_step();
    for (auto it = model.units.rbegin(); it != model.units.rend(); ++it) {
      auto g = eng.acquire(*it);
      for (auto pi : eng.model_layout().unit(it->index).params) {
        auto view = g.param({pi});
        std::vector<T> grad(view.size());
        for (std::size_t i = 0; i < view.size(); ++i)
          grad[i] = zb::from_float<T>(zbt::grad_value(o, zb::to_float(view[i]), pi, i, s, 0, 0) * eng.loss_scale());
        if (inject_inf && pi == 5 && !grad.empty()) grad[grad.size() / 2] = zb::from_float<T>(INFINITY);
        eng.grad_ready({pi}, grad);
      }
    }
    eng.end_micro_step();
    return eng.step();
  }
};

template <class T>
std::vector<float> widen(const std::vector<T>& v) {
  std::vector<float> out;
  for (auto x : v) out.push_back(zb::to_float(x));
  return out;
}

}  // namespace

// ---- one rank: every stage is stage 0 -------------------------------------------------

TEST_CASE_TEMPLATE("one rank: stages 1-3 equal stage 0 bit for bit (clipping, overflow)", T, float, zb::half,
                   zb::bfloat16) {
  zbt::run_options o;
  o.steps = 5;
  o.gas = 1;
  o.overflow_step = 2;
  o.max_grad_norm = 0.5f;
  all_stages_equal<T>(o);
}

TEST_CASE_TEMPLATE("one rank: stages 1-3 equal stage 0 bit for bit with accumulation", T, float, zb::half,
                   zb::bfloat16) {
  // With one rank the reduction is exact (scale 1), so even continuous gradients
  // accumulated over micro-steps must agree exactly.
  zbt::run_options o;
  o.steps = 3;
  o.gas = 3;
  o.overflow_step = 1;
  o.max_grad_norm = 0.05f;
  all_stages_equal<T>(o);
  o.quantized = true;
  all_stages_equal<T>(o);
}

TEST_CASE("one rank: bucket size does not change the result") {
  zbt::run_options a, b;
  a.bucket_numel = 1;
  b.bucket_numel = std::size_t{1} << 30;
  auto ra = zbt::run<zb::stage2<S, zb::bfloat16>>(S{}, a);
  auto rb = zbt::run<zb::stage3<S, zb::bfloat16>>(S{}, b);
  auto r0 = zbt::run<zb::stage0<S, zb::bfloat16>>(S{}, a);
  CHECK(zbt::first_difference(ra.master, r0.master) == -1);
  CHECK(zbt::first_difference(rb.master, r0.master) == -1);
  CHECK(ra.memory[zb::mem_category::buckets] < rb.memory[zb::mem_category::buckets]);
}

// ---- loss scalers -------------------------------------------------------------------

TEST_CASE("scale::dynamic: hysteresis, halving, floor, growth") {
  zb::scale::dynamic d;  // defaults: 2^16, hysteresis 2, growth every 1000, floor 1
  CHECK(d.scale() == 65536.0f);

  SUBCASE("an overflow with hysteresis 2 keeps the scale once, then halves") {
    d.update(true);
    CHECK(d.scale() == 65536.0f);
    d.update(true);
    CHECK(d.scale() == 32768.0f);
    // Hysteresis is used up (it resets on growth only, as DeepSpeed's default): every
    // further overflow halves.
    d.update(true);
    CHECK(d.scale() == 16384.0f);
    d.update(false);  // a good step does not restore the hysteresis
    d.update(true);
    CHECK(d.scale() == 8192.0f);
  }
  SUBCASE("growth after growth_interval good steps; an overflow restarts the count") {
    zb::dynamic_scale_config c;
    c.initial_scale = 8.0f;
    c.growth_interval = 3;
    c.hysteresis = 2;
    zb::scale::dynamic g(c);
    g.update(false);
    g.update(false);
    CHECK(g.scale() == 8.0f);
    g.update(true);  // hysteresis absorbs it; the good-step count restarts
    CHECK(g.scale() == 8.0f);
    g.update(false);
    g.update(false);
    CHECK(g.scale() == 8.0f);  // only 2 good steps since the overflow
    g.update(false);
    CHECK(g.scale() == 16.0f);
    // Growth reset the hysteresis: the next overflow is absorbed again.
    g.update(true);
    CHECK(g.scale() == 16.0f);
    g.update(true);
    CHECK(g.scale() == 8.0f);
    for (int i = 0; i < 3; ++i) g.update(false);
    CHECK(g.scale() == 16.0f);
    for (int i = 0; i < 6; ++i) g.update(false);
    CHECK(g.scale() == 64.0f);
  }
  SUBCASE("never below min_scale") {
    zb::dynamic_scale_config c;
    c.initial_scale = 8.0f;
    c.min_scale = 2.0f;
    c.hysteresis = 1;
    zb::scale::dynamic f(c);
    f.update(true);
    CHECK(f.scale() == 4.0f);
    f.update(true);
    CHECK(f.scale() == 2.0f);
    for (int i = 0; i < 10; ++i) f.update(true);
    CHECK(f.scale() == 2.0f);
    c.min_scale = 3.0f;  // a floor that is not a power of two is still respected
    zb::scale::dynamic h(c);
    h.update(true);
    CHECK(h.scale() == 4.0f);
    h.update(true);
    CHECK(h.scale() == 3.0f);
  }
  SUBCASE("validation") {
    zb::dynamic_scale_config c;
    c.initial_scale = 0.5f;
    CHECK(has(error_of([&] { c.validate(); }), "need scale.initial_scale"));
    c = {};
    c.growth_interval = 0;
    CHECK(has(error_of([&] { c.validate(); }), "scale.growth_interval must be >= 1"));
    c = {};
    c.hysteresis = 0;
    CHECK(has(error_of([&] { c.validate(); }), "scale.hysteresis must be >= 1"));
    c = {};
    c.min_scale = 0.0f;
    CHECK_THROWS_AS(c.validate(), zb::error);
    CHECK_NOTHROW(zb::dynamic_scale_config{}.validate());
  }
}

TEST_CASE("scale::fixed and scale::none never change") {
  zb::fixed_scale_config c;
  c.scale = 128.0f;
  zb::scale::fixed f(c);
  zb::scale::none n;
  CHECK(f.scale() == 128.0f);
  CHECK(n.scale() == 1.0f);
  for (int i = 0; i < 5; ++i) {
    f.update(true);
    n.update(true);
  }
  for (int i = 0; i < 2000; ++i) {
    f.update(false);
    n.update(false);
  }
  CHECK(f.scale() == 128.0f);
  CHECK(n.scale() == 1.0f);
  CHECK(zb::scale::fixed().scale() == 1.0f);
  c.scale = 0.0f;
  CHECK(has(error_of([&] { c.validate(); }), "scale.scale 0 must be finite and > 0"));
  CHECK_NOTHROW(zb::no_config{}.validate());
  // Default scaler per parameter type.
  CHECK(std::is_same_v<zb::default_scaler_t<zb::half>, zb::scale::dynamic>);
  CHECK(std::is_same_v<zb::default_scaler_t<zb::bfloat16>, zb::scale::none>);
  CHECK(std::is_same_v<zb::default_scaler_t<float>, zb::scale::none>);
}

// ---- overflow: the step is skipped and leaves no trace ------------------------------

TEST_CASE_TEMPLATE("fp16: an overflow step leaves master and params unchanged and is reported", E,
                   zb::stage0<S, zb::half>, zb::stage1<S, zb::half>, zb::stage2<S, zb::half>,
                   zb::stage3<S, zb::half>) {
  manual m;
  E eng(m.model.reg, S{});
  m.init(eng);
  auto r = m.step(eng, 0, false);
  CHECK(r.applied);
  CHECK(r.step == 1);
  const auto master_before = eng.gather_master();
  const auto params_before = widen(eng.gather_params());

  r = m.step(eng, 1, true);
  CHECK_FALSE(r.applied);
  CHECK(r.step == 1);
  CHECK(r.loss_scale == 65536.0f);
  CHECK(std::isinf(r.grad_norm));
  CHECK(eng.steps() == 1);
  CHECK(eng.stats().skipped == 1);
  CHECK(zbt::first_difference(master_before, eng.gather_master()) == -1);
  CHECK(zbt::first_difference(params_before, widen(eng.gather_params())) == -1);
  CHECK(eng.loss_scale() == 65536.0f);  // hysteresis 2: kept once

  r = m.step(eng, 2, true);
  CHECK_FALSE(r.applied);
  CHECK(r.loss_scale == 65536.0f);      // the scale this step's gradients carried
  CHECK(eng.loss_scale() == 32768.0f);  // then halved
  CHECK(eng.stats().skipped == 2);
  CHECK(zbt::first_difference(master_before, eng.gather_master()) == -1);

  r = m.step(eng, 3, false);
  CHECK(r.applied);
  CHECK(r.step == 2);
  CHECK(r.loss_scale == 32768.0f);
  const auto after = eng.gather_master();
  CHECK(zbt::first_difference(master_before, after) != -1);
  for (float x : after) CHECK(std::isfinite(x));
}

TEST_CASE_TEMPLATE("stages 0-2: an acquired parameter keeps its address across steps and shows the new values", E,
                   zb::stage0<S, zb::bfloat16>, zb::stage1<S, zb::bfloat16>, zb::stage2<S, zb::bfloat16>) {
  // What a trainer relies on when it points its own tensors at the engine's memory once.
  manual m;
  E eng(m.model.reg, S{});
  m.init(eng);
  std::vector<const zb::bfloat16*> where(eng.model_layout().param_count(), nullptr);
  std::vector<std::vector<float>> before(where.size());
  for (const auto& u : m.model.units) {
    auto g = eng.acquire(u);
    for (auto pi : eng.model_layout().unit(u.index).params) {
      where[pi] = g.param({pi}).data();
      for (auto x : g.param({pi})) before[pi].push_back(zb::to_float(x));
    }
  }
  for (int s = 0; s < 3; ++s) {
    REQUIRE(m.step(eng, s, false).applied);
    bool changed = false;
    for (const auto& u : m.model.units) {
      auto g = eng.acquire(u);
      for (auto pi : eng.model_layout().unit(u.index).params) {
        INFO("step " << s << ", parameter " << pi);
        CHECK(g.param({pi}).data() == where[pi]);
        for (std::size_t i = 0; i < before[pi].size(); ++i) changed = changed || zb::to_float(where[pi][i]) != before[pi][i];
      }
    }
    CHECK(changed);  // the same memory holds the stepped values
  }
}

TEST_CASE_TEMPLATE("param_mut: the same memory, writable; the next step rewrites it from the master", E,
                   zb::stage0<S, float>, zb::stage2<S, float>, zb::stage3<S, float>) {
  manual m;
  E eng(m.model.reg, S{});
  m.init(eng);
  const zb::param_id p = m.model.params[2];  // l1.w
  std::vector<float> before;
  {
    auto g = eng.acquire(eng.unit_of(p));
    auto w = g.param_mut(p);
    CHECK(static_cast<const float*>(w.data()) == g.param(p).data());
    before.assign(w.begin(), w.end());
    for (auto& x : w) x = 1000.0f;  // scratch use by a kernel taking float*
    CHECK(g.param(p)[0] == 1000.0f);
  }
  REQUIRE(m.step(eng, 0, false).applied);
  auto g = eng.acquire(eng.unit_of(p));
  // The master never saw the writes: the values are the stepped initial ones, near `before`.
  for (std::size_t i = 0; i < before.size(); ++i) CHECK(std::fabs(g.param(p)[i] - before[i]) < 0.1f);
}

TEST_CASE_TEMPLATE("fp16: a skipped step leaves no trace in the optimizer state", E, zb::stage0<S, zb::half>,
                   zb::stage2<S, zb::half>, zb::stage3<S, zb::half>) {
  // A: good, overflow, good.  B: the same two good steps, no overflow in between.
  // With hysteresis high enough that the scale never moves, A and B must end equal bit
  // for bit: the Inf gradient was dropped, the moments and the step count untouched.
  manual m;
  typename E::config cfg;
  cfg.scale.hysteresis = 100;
  E a(m.model.reg, S{}, cfg);
  E b(m.model.reg, S{}, cfg);
  m.init(a);
  m.init(b);
  CHECK(m.step(a, 0, false).applied);
  CHECK_FALSE(m.step(a, 1, true).applied);
  CHECK(m.step(a, 2, false).applied);
  CHECK(m.step(b, 0, false).applied);
  CHECK(m.step(b, 2, false).applied);
  CHECK(a.loss_scale() == b.loss_scale());
  CHECK(a.steps() == b.steps());
  CHECK(zbt::first_difference(a.gather_master(), b.gather_master()) == -1);
  CHECK(zbt::first_difference(widen(a.gather_params()), widen(b.gather_params())) == -1);
}

// ---- clipping -----------------------------------------------------------------------

TEST_CASE_TEMPLATE("clipping really clips: norm, clip factor and the first AdamW update", E, zb::stage0<S, float>,
                   zb::stage1<S, zb::half>, zb::stage2<S, zb::bfloat16>, zb::stage3<S, zb::half>,
                   zb::stage0<S, zb::bfloat16>) {
  using T = typename E::param_type;
  zb::param_registry reg;
  reg.add("w", {40, 7}, "a");
  reg.add("b", {13}, "a");
  reg.add("z", {0}, "b");
  reg.add("c", {100}, "b");
  typename E::config cfg;
  cfg.optim.lr = 0.01f;
  cfg.optim.weight_decay = 0.0f;
  // Tiny: each clipped gradient element is about 1e-8, comparable to eps, so the first
  // Adam update lr*g/(|g|+eps) is visibly smaller than the unclipped lr*sign(g).
  cfg.step.max_grad_norm = 2e-7f;
  E eng(reg, S{}, cfg);

  std::vector<std::vector<float>> init(reg.size()), grads_f(reg.size());
  for (std::size_t p = 0; p < reg.size(); ++p) {
    init[p].resize(reg.params()[p].numel);
    for (std::size_t i = 0; i < init[p].size(); ++i) init[p][i] = 0.5f * std::cos(0.3f * static_cast<float>(i) + static_cast<float>(p));
    eng.set_param({p}, init[p]);
  }
  const float scale = eng.loss_scale();
  CHECK(scale == (std::is_same_v<T, zb::half> ? 65536.0f : 1.0f));

  // The gradients, loss-scaled and rounded to T, exactly as handed to the engine.
  eng.begin_micro_step();
  for (std::size_t p = 0; p < reg.size(); ++p) {
    std::vector<T> g(reg.params()[p].numel);
    for (std::size_t i = 0; i < g.size(); ++i) {
      const float v = 0.3f * std::sin(1.1f * static_cast<float>(i) + 0.7f * static_cast<float>(p) + 0.2f);
      g[i] = zb::from_float<T>(v * scale);
      grads_f[p].push_back(zb::to_float(g[i]));
    }
    auto u = eng.acquire(eng.unit_of({p}));
    eng.grad_ready({p}, g);
  }
  eng.end_micro_step();
  const auto r = eng.step();

  // The norm of the averaged, unscaled gradient, computed here in double. One rank and
  // one micro-step: the average is the gradient itself, divided by the loss scale. The
  // engine also sums in double but in its own order (lane blocks over the padded flat
  // buffer), so the two agree to rounding only: relative 1e-6 is far above double
  // rounding (~1e-15) and far below any real error (a missing element, a wrong scale).
  double sumsq = 0.0;
  for (auto& g : grads_f)
    for (float x : g) sumsq += static_cast<double>(x) * static_cast<double>(x);
  const double norm = std::sqrt(sumsq) / static_cast<double>(scale);
  REQUIRE(r.applied);
  CHECK(r.loss_scale == scale);
  CHECK(r.grad_norm == doctest::Approx(norm).epsilon(1e-6));
  CHECK(r.grad_norm > 100.0 * cfg.step.max_grad_norm);  // so it must clip
  const double clip = cfg.step.max_grad_norm / norm;
  CHECK(r.clip_factor < 1.0f);
  CHECK(static_cast<double>(r.clip_factor) == doctest::Approx(clip).epsilon(1e-5));

  // First AdamW step (t = 1, no decay): m_hat = g', v_hat = g'^2, so
  // p1 = p0 - lr * g' / (|g'| + eps) with g' the clipped, unscaled gradient.
  const auto master = eng.gather_master();
  const auto params = eng.gather_params();
  double max_err = 0.0, max_clip_effect = 0.0;
  for (std::size_t p = 0; p < reg.size(); ++p) {
    const auto& pp = eng.model_layout().param(p);
    for (std::size_t i = 0; i < pp.numel; ++i) {
      const double gc = static_cast<double>(grads_f[p][i]) / scale * clip;
      const double expect = init[p][i] - cfg.optim.lr * gc / (std::fabs(gc) + cfg.optim.eps);
      const double unclipped_gc = static_cast<double>(grads_f[p][i]) / scale;
      const double unclipped = init[p][i] - cfg.optim.lr * unclipped_gc / (std::fabs(unclipped_gc) + cfg.optim.eps);
      max_err = std::max(max_err, std::fabs(master[pp.offset + i] - expect));
      max_clip_effect = std::max(max_clip_effect, std::fabs(expect - unclipped));
      // The 16-bit parameter is the master rounded once.
      CHECK(zb::to_float(params[pp.offset + i]) == zb::to_float(zb::from_float<T>(master[pp.offset + i])));
    }
  }
  INFO("max |master - expected| = " << max_err << ", clip moves the update by up to " << max_clip_effect);
  CHECK(max_err < 1e-6);
  CHECK(max_clip_effect > 1e-3);  // the check above could tell clipped from unclipped
}

TEST_CASE_TEMPLATE("parameter groups: every element gets its group's lr and weight decay (scalar reference)", E,
                   zb::stage0<S, zb::bfloat16>, zb::stage2<S, zb::bfloat16>, zb::stage3<S, zb::bfloat16>) {
  // One unit whose parameters alternate groups (so one slice spans all three), with
  // sizes that leave alignment gaps between them; one step with known gradients, then
  // each element's master against the scalar AdamW with its group's constants.
  zb::param_registry reg;
  reg.add("a.w", {37}, "u", 0);
  reg.add("a.b", {5}, "u", 1);
  reg.add("c.w", {70}, "u", 2);
  reg.add("c.b", {3}, "u", 1);
  reg.add("d.w", {9}, "v", 2);
  typename E::config cfg;
  cfg.optim.lr = 0.01f;
  cfg.optim.weight_decay = 0.05f;
  cfg.groups = {{}, {.lr_scale = 1.0f, .weight_decay = 0.0f}, {.lr_scale = 0.25f, .weight_decay = 0.2f}};
  E eng(reg, S{}, cfg);
  std::vector<std::vector<float>> init(reg.size());
  for (std::size_t p = 0; p < reg.size(); ++p) {
    init[p].resize(reg.params()[p].numel);
    for (std::size_t i = 0; i < init[p].size(); ++i) init[p][i] = 0.5f + 0.01f * static_cast<float>(i + 7 * p);
    eng.set_param({p}, init[p]);
  }
  auto grad_of = [](std::size_t p, std::size_t i) { return 0.125f * static_cast<float>((i + p) % 7) - 0.375f; };
  eng.begin_micro_step();
  for (std::size_t p = 0; p < reg.size(); ++p) {
    std::vector<zb::bfloat16> g(reg.params()[p].numel);
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = zb::from_float<zb::bfloat16>(grad_of(p, i));
    eng.grad_ready({p}, g);
  }
  eng.end_micro_step();
  REQUIRE(eng.step().applied);
  const auto master = eng.gather_master();
  for (std::size_t p = 0; p < reg.size(); ++p) {
    const std::size_t g = reg.params()[p].group;
    const float lr = g == 2 ? 0.01f * 0.25f : 0.01f, wd = g == 0 ? 0.05f : g == 1 ? 0.0f : 0.2f;
    const auto a = zb::kernel::make_adamw_args(lr, 0.9f, 0.999f, 1e-8f, wd, true, 1, 1.0f);
    const auto got = eng.extract(master, {p});
    for (std::size_t i = 0; i < got.size(); ++i) {
      float want = init[p][i], m = 0.0f, v = 0.0f;
      zb::kernel::adamw_element(want, m, v, zb::to_float(zb::from_float<zb::bfloat16>(grad_of(p, i))), a);
      CAPTURE(p);
      CAPTURE(i);
      REQUIRE(std::memcmp(&got[i], &want, sizeof(float)) == 0);
    }
  }
}

TEST_CASE("parameter groups: a parameter in a group without settings is an error naming it") {
  zb::param_registry reg;
  reg.add("a", {4}, "u");
  reg.add("b", {4}, "u", 2);
  zb::stage0<S, float>::config cfg;
  cfg.groups = {{}, {}};
  CHECK(has(error_of([&] { zb::stage0<S, float> e(reg, S{}, cfg); }),
            "parameter 'b' is in group 2 but cfg.groups has 2 entries"));
  cfg.groups = {{}, {}, {.lr_scale = -1.0f, .weight_decay = {}}};
  CHECK(has(error_of([&] { zb::stage0<S, float> e(reg, S{}, cfg); }), "groups[2].lr_scale -1 must be finite"));
}

TEST_CASE("no clipping when the norm is below max_grad_norm, or when it is off") {
  zbt::run_options o;
  o.steps = 2;
  o.max_grad_norm = 1e6f;
  auto big = zbt::run<zb::stage2<S, float>>(S{}, o);
  o.max_grad_norm = 0.0f;
  auto off = zbt::run<zb::stage2<S, float>>(S{}, o);
  for (auto& r : big.results) CHECK(r.clip_factor == 1.0f);
  for (auto& r : off.results) CHECK(r.clip_factor == 1.0f);
  CHECK(zbt::first_difference(big.master, off.master) == -1);
  CHECK(big.results[0].grad_norm == off.results[0].grad_norm);
}

// ---- memory accounting --------------------------------------------------------------

TEST_CASE("memory_tracker: current and peak per category") {
  zb::memory_tracker t;
  using C = zb::mem_category;
  t.add(C::params16, 100);
  t.add(C::master_fp32, 400);
  t.add(C::buckets, 50);
  t.add(C::params16, 20);
  CHECK(t.report()[C::params16] == 120);
  CHECK(t.report().peak_of(C::params16) == 120);
  t.sub(C::params16, 100);
  CHECK(t.report()[C::params16] == 20);
  CHECK(t.report().peak_of(C::params16) == 120);  // peak stays
  t.add(C::params16, 50);
  CHECK(t.report().peak_of(C::params16) == 120);
  t.add(C::params16, 60);
  CHECK(t.report()[C::params16] == 130);
  CHECK(t.report().peak_of(C::params16) == 130);
  CHECK(t.report()[C::grads16] == 0);
  CHECK(t.report().peak_of(C::grads16) == 0);
  // Model state = params + grads + master + m + v; buckets are outside it.
  t.add(C::adam_m, 7);
  t.add(C::adam_v, 9);
  t.add(C::grads16, 3);
  t.add(C::gathered, 1000);
  t.add(C::other, 11);
  CHECK(t.report().model_state() == 130 + 3 + 400 + 7 + 9);
  CHECK(t.report().total() == 130 + 3 + 400 + 7 + 9 + 50 + 1000 + 11);
  CHECK_FALSE(t.quarantined());
  CHECK(zb::mem_category_name(C::master_fp32) == "master_fp32");
  CHECK(zb::mem_category_name(C::other) == "other");
}

TEST_CASE("buffer<T, host_space>: tracks, untracks, moves") {
  zb::memory_tracker t;
  using C = zb::mem_category;
  {
    zb::buffer<float, zb::host_space> a(1000, C::master_fp32, &t);
    CHECK(a.size() == 1000);
    CHECK(a.bytes() == 4000);
    REQUIRE(a.data() != nullptr);
    CHECK(reinterpret_cast<std::uintptr_t>(a.data()) % zb::default_alignment == 0);
    CHECK(t.report()[C::master_fp32] == 4000);
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i);
    CHECK(a.span().size() == 1000);
    CHECK(a.span()[999] == 999.0f);

    // Move construction: ownership moves, the bytes are counted once.
    zb::buffer<float, zb::host_space> b(std::move(a));
    CHECK(a.data() == nullptr);
    CHECK(a.size() == 0);
    CHECK(b.size() == 1000);
    CHECK(b[999] == 999.0f);
    CHECK(t.report()[C::master_fp32] == 4000);

    // Move assignment frees what the target held.
    zb::buffer<zb::half, zb::host_space> h(10, C::params16, &t);
    zb::buffer<zb::half, zb::host_space> h2(30, C::params16, &t);
    CHECK(t.report()[C::params16] == 80);
    h = std::move(h2);
    CHECK(h.size() == 30);
    CHECK(h2.size() == 0);
    CHECK(t.report()[C::params16] == 60);
    CHECK(t.report().peak_of(C::params16) == 80);

    h.zero();
    for (std::size_t i = 0; i < h.size(); ++i) CHECK(h[i].bits == 0);

    b.reset();
    CHECK(b.data() == nullptr);
    CHECK(b.size() == 0);
    CHECK(t.report()[C::master_fp32] == 0);
    b.reset();  // twice is harmless
    CHECK(t.report()[C::master_fp32] == 0);

    // Zero elements: no allocation, nothing tracked.
    zb::buffer<float, zb::host_space> z(0, C::other, &t);
    CHECK(z.data() == nullptr);
    CHECK(t.report()[C::other] == 0);
    // Untracked buffers work too.
    zb::buffer<float, zb::host_space> u(16, C::other, nullptr);
    u.zero();
    CHECK(u[15] == 0.0f);
    CHECK(t.report()[C::other] == 0);
  }
  // Destructors untracked everything.
  for (std::size_t c = 0; c < zb::mem_category_count; ++c) CHECK(t.report().current[c] == 0);
  CHECK(t.report().peak_of(C::master_fp32) == 4000);
}

TEST_CASE("host_space and pinned_space: allocate, copy, fill, deallocate") {
  CHECK(zb::host_space::allocate(0) == nullptr);
  CHECK(zb::pinned_space::allocate(0) == nullptr);
  zb::pinned_space::deallocate(nullptr, 0);
  for (std::size_t bytes : {std::size_t{1}, std::size_t{100}, std::size_t{1} << 20}) {
    INFO(bytes << " bytes");
    void* h = zb::host_space::allocate(bytes);
    void* p = zb::pinned_space::allocate(bytes);
    REQUIRE(h != nullptr);
    REQUIRE(p != nullptr);
    CHECK(reinterpret_cast<std::uintptr_t>(p) % zb::default_alignment == 0);
    (void)zb::pinned_space::last_lock_ok();  // may be false under RLIMIT_MEMLOCK: not asserted
    std::memset(h, 0x5a, bytes);
    zb::pinned_space::copy(p, h, bytes);
    CHECK(std::memcmp(p, h, bytes) == 0);
    zb::pinned_space::fill_zero(p, bytes);
    CHECK(static_cast<unsigned char*>(p)[bytes - 1] == 0);
    CHECK(static_cast<unsigned char*>(p)[0] == 0);
    zb::pinned_space::deallocate(p, bytes);
    zb::host_space::deallocate(h, bytes);
  }
  zb::memory_tracker t;
  {
    zb::buffer<float, zb::pinned_space> b(4096, zb::mem_category::master_fp32, &t);
    b.zero();
    b[4095] = 3.0f;
    CHECK(b[4095] == 3.0f);
    CHECK(t.report()[zb::mem_category::master_fp32] == 4096 * 4);
  }
  CHECK(t.report()[zb::mem_category::master_fp32] == 0);
}

TEST_CASE("an engine's memory report: model state equals the formula, buckets and gathered as declared") {
  manual m;
  zb::stage3_on_demand<S, zb::bfloat16>::config cfg;
  cfg.bucket.bucket_numel = 100;
  zb::stage3_on_demand<S, zb::bfloat16> eng(m.model.reg, S{}, cfg);
  m.init(eng);
  const auto& lay = eng.model_layout();
  CHECK(eng.memory().model_state() == eng.formula_bytes());
  CHECK(eng.accumulates_fp32());  // bf16's default: the gradient shard is fp32
  CHECK(eng.formula_bytes() == 18 * lay.total_numel());
  CHECK(eng.memory()[zb::mem_category::gathered] == 0);
  {
    auto g = eng.acquire(m.model.units[0]);
    CHECK(eng.memory()[zb::mem_category::gathered] == lay.unit(0).padded_numel * 2);
    auto g2 = eng.acquire(m.model.units[0]);  // a second hold gathers nothing more
    CHECK(eng.memory()[zb::mem_category::gathered] == lay.unit(0).padded_numel * 2);
  }
  CHECK(eng.memory()[zb::mem_category::gathered] == 0);
  CHECK(eng.memory().peak_of(zb::mem_category::gathered) == lay.unit(0).padded_numel * 2);
  m.step(eng, 0, false);
  CHECK(eng.memory()[zb::mem_category::gathered] == 0);
  CHECK(eng.memory().peak_of(zb::mem_category::gathered) == lay.max_unit_numel() * 2);
  const auto est = decltype(eng)::estimate(lay, eng.get_config());
  for (std::size_t c = 0; c < zb::mem_category_count; ++c) {
    INFO("category " << zb::mem_category_name(static_cast<zb::mem_category>(c)));
    CHECK(eng.memory().current[c] == est.current[c]);
  }
}
