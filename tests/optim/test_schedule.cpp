/**
 * @file test_schedule.cpp
 * @brief Tests of `zeroblocks::schedule` (optim/schedule.hpp), DeepSpeed's lr schedulers.
 *
 * Two kinds of check:
 *  - every scheduler against its formula written out again here, in closed form (not in
 *    DeepSpeed's operation order), at the boundaries of each phase and over whole ranges;
 *  - tables of values DeepSpeed itself computed. They come from running the unmodified
 *    `deepspeed/runtime/lr_schedules.py` of microsoft/DeepSpeed (commit 38327e07f6cd,
 *    2025-02-21) under python3 with a stand-in `torch.optim.Optimizer` (a class with
 *    `param_groups = [{'lr': base_lr, 'betas': (0.9, 0.999)}]` and `defaults` holding
 *    'betas') and a stand-in `deepspeed.utils.logger`: build the scheduler, call
 *    `step()` k + 1 times, read `param_groups[0]['lr']` (and `['betas']`); the k = -1 row
 *    is what the constructor wrote. Values printed with Python's repr, so each literal is
 *    the exact double. Where DeepSpeed uses only + - * / and floor the match must be bit
 *    for bit (same operations in the same order); where it calls log or cos, within a
 *    few ulps (another libm may round those differently).
 *  - every `validate()` error, and the stated DeepSpeed oddities (stair counts ignored,
 *    the cosine rising again after total_num_steps, warmup_num_steps clamped to 2).
 */
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <zeroblocks/optim/schedule.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <numbers>
#include <string>
#include <vector>

namespace sch = zeroblocks::schedule;

namespace {

constexpr double nan_v = std::numeric_limits<double>::quiet_NaN();
constexpr double inf_v = std::numeric_limits<double>::infinity();

struct row {
  long step;
  double lr;
};
struct mrow {
  long step;
  double lr;
  double mom;
};

/// Relative closeness for formulas evaluated in a different order than the library.
bool close(double a, double b, double rel = 1e-12) {
  return std::fabs(a - b) <= rel * std::max({std::fabs(a), std::fabs(b), 1e-300});
}

/// `exact`: bit for bit; otherwise within 8 ulps-ish (transcendental functions).
void check_table(const std::vector<row>& rows, const std::function<double(long)>& f, bool exact) {
  for (const auto& r : rows) {
    const double got = f(r.step);
    INFO("step ", r.step, ": got ", got, ", DeepSpeed ", r.lr);
    if (exact)
      CHECK(got == r.lr);
    else
      CHECK(close(got, r.lr, 2e-15));
  }
}

/// Runs `f`, which must throw `zeroblocks::error` whose reason contains `needle`.
void check_error(const std::function<void()>& f, const std::string& needle) {
  bool threw = false;
  std::string reason;
  try {
    f();
  } catch (const zeroblocks::error& e) {
    threw = true;
    reason = e.reason();
  }
  INFO("expected an error mentioning \"", needle, "\"; got \"", reason, "\"");
  CHECK(threw);
  CHECK(reason.find(needle) != std::string::npos);
}

// ---- the formulas, written out independently -------------------------------------

double ref_warmup(long t, double lo, double hi, long w_cfg, bool log) {
  const long w = w_cfg < 2 ? 2 : w_cfg;
  if (t >= w) return hi;
  const double f = log ? std::log(double(t) + 1.0) / std::log(double(w)) : double(t) / double(w);
  return lo + f * (hi - lo);
}

double ref_warmup_decay(long t, long total, double lo, double hi, long w_cfg, bool log) {
  const long w = w_cfg < 2 ? 2 : w_cfg;
  if (t < w) return ref_warmup(t, lo, hi, w_cfg, log);
  if (t >= total) return lo;
  const long span = total - w > 1 ? total - w : 1;
  return lo + (hi - lo) * double(total - t) / double(span);
}

double ref_cosine_ratio(long t, long total, double wmin, long w_cfg, double cmin, bool log) {
  const long w = w_cfg < 2 ? 2 : w_cfg;
  if (t < w) {
    const double f = log ? std::log(double(t) + 1.0) / std::log(double(w)) : double(t) / double(w);
    return wmin * (1.0 - f) + f;
  }
  const double phase = std::numbers::pi * double(t + 1 - w) / double(total - w);
  return cmin + (1.0 - cmin) * 0.5 * (1.0 + std::cos(phase));
}

struct ref_cycle {
  double lo, hi;
  long first, second;
  long decay_step;
  double lr_rate;
  double mom_lo, mom_hi, mom_rate;

  double frac(long t) const {  // 0 at the cycle's ends, 1 at its peak
    const long b = t + 1;
    if (b <= first) return double(b) / double(first);
    return double(first + second - b) / double(second);
  }
  double lr(long t) const {
    if (t < first + second) return lo + (hi - lo) * frac(t);
    if (decay_step == 0 || lr_rate == 0.0) return lo;
    return lo / (1.0 + lr_rate * double(t + 1 - first - second) / double(decay_step));
  }
  double mom(long t) const {
    if (t < first + second) return mom_hi - (mom_hi - mom_lo) * frac(t);
    if (decay_step == 0 || mom_rate == 0.0) return mom_hi;
    return mom_hi + mom_hi * mom_rate * double(t + 1 - first - second) / double(decay_step);
  }
};

double ref_range(long t, double lo, long size, double rate, bool stairs) {
  const long b = t + 1;
  const double i = stairs ? double(b / size) : double(b) / double(size);
  return lo + lo * rate * i;
}

}  // namespace

// =====================================================================================
TEST_CASE("defaults are DeepSpeed's class defaults") {
  const sch::warmup_lr w{};
  CHECK(w.warmup_min_lr == 0.0);
  CHECK(w.warmup_max_lr == 0.001);
  CHECK(w.warmup_num_steps == 1000);
  CHECK(w.warmup_type == "log");

  const sch::warmup_decay_lr d{};
  CHECK(d.total_num_steps == 0);  // required in DeepSpeed
  CHECK(d.warmup_min_lr == 0.0);
  CHECK(d.warmup_max_lr == 0.001);
  CHECK(d.warmup_num_steps == 1000);
  CHECK(d.warmup_type == "log");

  const sch::warmup_cosine_lr c{};
  CHECK(c.total_num_steps == 0);  // required in DeepSpeed
  CHECK(c.warmup_min_ratio == 0.0);
  CHECK(c.warmup_num_steps == 1000);
  CHECK(c.cos_min_ratio == 0.0001);
  CHECK(c.warmup_type == "log");
  CHECK(std::isnan(c.base_lr));  // required: the optimizer's lr

  const sch::one_cycle o{};
  CHECK(std::isnan(o.cycle_min_lr));  // required in DeepSpeed
  CHECK(std::isnan(o.cycle_max_lr));
  CHECK(o.decay_lr_rate == 0.0);
  CHECK(o.cycle_first_step_size == 2000);
  CHECK(!o.cycle_second_step_size.has_value());
  CHECK(o.cycle_first_stair_count == 0);
  CHECK(!o.cycle_second_stair_count.has_value());
  CHECK(o.decay_step_size == 0);
  CHECK(o.cycle_momentum);
  CHECK(o.cycle_min_mom == 0.8);
  CHECK(o.cycle_max_mom == 0.9);
  CHECK(o.decay_mom_rate == 0.0);
  CHECK(sch::one_cycle::momentum_beta2 == 0.99);
  CHECK(o.second_step_size() == 2000);
  CHECK(o.cycle_total_size() == 4000);

  const sch::lr_range_test r{};
  CHECK(r.lr_range_test_min_lr == 1e-3);
  CHECK(r.lr_range_test_step_size == 2000);
  CHECK(r.lr_range_test_step_rate == 1.0);
  CHECK(!r.lr_range_test_staircase);
}

// =====================================================================================
TEST_CASE("warmup_lr: formula at the boundaries, both warmup types") {
  for (const char* type : {"log", "linear"}) {
    const bool log = std::string(type) == "log";
    for (long w : {0L, 1L, 2L, 3L, 10L, 1000L}) {
      const sch::warmup_lr s{.warmup_min_lr = 1e-5, .warmup_max_lr = 3e-4, .warmup_num_steps = w,
                             .warmup_type = type};
      s.validate();
      const long we = s.effective_warmup_num_steps();
      CHECK(we == std::max(2L, w));
      CAPTURE(type);
      CAPTURE(w);
      CHECK(s.lr(-1) == 1e-5);  // the constructor's value
      CHECK(s.lr(0) == 1e-5);   // log(1) = 0 and 0/W = 0
      for (long t : {0L, 1L, we - 2, we - 1, we, we + 1, 10 * we + 7}) {
        if (t < 0) continue;
        CAPTURE(t);
        CHECK(close(s.lr(t), ref_warmup(t, 1e-5, 3e-4, w, log)));
      }
      // log reaches the max one step before linear does.
      CHECK(close(s.lr(we - 1), log ? 3e-4 : 1e-5 + (3e-4 - 1e-5) * double(we - 1) / double(we)));
      CHECK(s.lr(we) == 3e-4);
      CHECK(s.lr(we + 1) == 3e-4);
      for (long t = 0; t <= we + 3; ++t) CHECK(close(s.lr(t), ref_warmup(t, 1e-5, 3e-4, w, log)));
    }
  }
  // A "warmup" downwards (min > max) is what DeepSpeed computes too.
  const sch::warmup_lr down{.warmup_min_lr = 1e-3, .warmup_max_lr = 1e-4, .warmup_num_steps = 10,
                            .warmup_type = "linear"};
  CHECK(close(down.lr(5), 1e-3 + (1e-4 - 1e-3) * 0.5));
}

TEST_CASE("warmup_lr: DeepSpeed's own values") {
  // DeepSpeed WarmupLR() with its defaults (log, 0 -> 0.001 over 1000 steps).
  check_table({{-1, 0.0},
               {0, 0.0},
               {1, 0.00010034333188799373},
               {9, 0.0003333333333333334},
               {998, 0.0009998551627419942},
               {999, 0.001},
               {1000, 0.001},
               {1001, 0.001}},
              [](long t) { return sch::warmup_lr{}.lr(t); }, false);
  // WarmupLR(warmup_min_lr=1e-5, warmup_max_lr=3e-4, warmup_num_steps=100, warmup_type='linear').
  const sch::warmup_lr lin{.warmup_min_lr = 1e-5, .warmup_max_lr = 3e-4, .warmup_num_steps = 100,
                           .warmup_type = "linear"};
  check_table({{-1, 1e-05},
               {0, 1e-05},
               {1, 1.29e-05},
               {50, 0.00015499999999999997},
               {99, 0.00029709999999999996},
               {100, 0.0003},
               {101, 0.0003}},
              [&](long t) { return lin.lr(t); }, true);
  // warmup_num_steps=0 is max(2, 0) = 2 in DeepSpeed: 2e-4 -> 1e-3, log then linear.
  const sch::warmup_lr w0log{.warmup_min_lr = 2e-4, .warmup_max_lr = 1e-3, .warmup_num_steps = 0};
  check_table({{-1, 0.0002}, {0, 0.0002}, {1, 0.001}, {2, 0.001}, {3, 0.001}},
              [&](long t) { return w0log.lr(t); }, false);
  const sch::warmup_lr w0lin{.warmup_min_lr = 2e-4, .warmup_max_lr = 1e-3, .warmup_num_steps = 0,
                             .warmup_type = "linear"};
  check_table({{-1, 0.0002}, {0, 0.0002}, {1, 0.0006000000000000001}, {2, 0.001}, {3, 0.001}},
              [&](long t) { return w0lin.lr(t); }, true);
}

// =====================================================================================
TEST_CASE("warmup_decay_lr: formula at the boundaries, both warmup types") {
  for (const char* type : {"log", "linear"}) {
    const bool log = std::string(type) == "log";
    for (long w : {0L, 2L, 100L}) {
      for (long total : {std::max(2L, w), std::max(2L, w) + 1, 1000L}) {
        const sch::warmup_decay_lr s{.total_num_steps = total, .warmup_min_lr = 1e-5, .warmup_max_lr = 1e-3,
                                     .warmup_num_steps = w, .warmup_type = type};
        s.validate();
        const long we = s.effective_warmup_num_steps();
        CAPTURE(type);
        CAPTURE(w);
        CAPTURE(total);
        CHECK(s.lr(-1) == 1e-5);
        for (long t : {0L, 1L, we - 1, we, we + 1, total - 1, total, total + 1, 3 * total + 5}) {
          CAPTURE(t);
          CHECK(close(s.lr(t), ref_warmup_decay(t, total, 1e-5, 1e-3, w, log)));
        }
        if (total > we) CHECK(s.lr(we) == 1e-3);  // (T - W) / (T - W)
        CHECK(s.lr(total) == 1e-5);                // the decay ends at min ...
        CHECK(s.lr(total + 1) == 1e-5);            // ... and stays there
        CHECK(s.lr(50 * total) == 1e-5);
        for (long t = 0; t <= total + 2; ++t) CHECK(close(s.lr(t), ref_warmup_decay(t, total, 1e-5, 1e-3, w, log)));
      }
    }
  }
}

TEST_CASE("warmup_decay_lr: DeepSpeed's own values") {
  // WarmupDecayLR(total_num_steps=1000, warmup_min_lr=1e-5, warmup_max_lr=1e-3,
  //               warmup_num_steps=100, warmup_type='log').
  const sch::warmup_decay_lr lg{.total_num_steps = 1000, .warmup_min_lr = 1e-5, .warmup_max_lr = 1e-3,
                                .warmup_num_steps = 100};
  check_table({{-1, 1e-05},
               {0, 1e-05},
               {1, 0.00015900984785367068},
               {98, 0.000997839421325787},
               {99, 0.0009999999999999998},
               {100, 0.001},
               {101, 0.0009989},
               {500, 0.0005600000000000001},
               {999, 1.11e-05},
               {1000, 1e-05},
               {1001, 1e-05},
               {5000, 1e-05}},
              [&](long t) { return lg.lr(t); }, false);
  // The same with warmup_type='linear' (only + - * /: bit for bit).
  sch::warmup_decay_lr lin = lg;
  lin.warmup_type = "linear";
  check_table({{-1, 1e-05},
               {0, 1e-05},
               {1, 1.9900000000000003e-05},
               {98, 0.0009801999999999999},
               {99, 0.0009901},
               {100, 0.001},
               {101, 0.0009989},
               {500, 0.0005600000000000001},
               {999, 1.11e-05},
               {1000, 1e-05},
               {1001, 1e-05},
               {5000, 1e-05}},
              [&](long t) { return lin.lr(t); }, true);
  // WarmupDecayLR(total_num_steps=100, warmup_num_steps=100): the decay is one step long,
  // straight from max (99, end of log warmup) to min.
  const sch::warmup_decay_lr eq{.total_num_steps = 100, .warmup_num_steps = 100};
  check_table({{98, 0.0009978175972987747}, {99, 0.0009999999999999998}, {100, 0.0}, {101, 0.0}},
              [&](long t) { return eq.lr(t); }, false);
}

// =====================================================================================
TEST_CASE("warmup_cosine_lr: formula at the boundaries, both warmup types") {
  for (const char* type : {"log", "linear"}) {
    const bool log = std::string(type) == "log";
    for (long w : {0L, 1L, 100L}) {
      for (long total : {std::max(2L, w) + 1, 1000L}) {
        const sch::warmup_cosine_lr s{.total_num_steps = total, .warmup_min_ratio = 0.1, .warmup_num_steps = w,
                                      .cos_min_ratio = 0.01, .warmup_type = type, .base_lr = 3e-4};
        s.validate();
        const long we = s.effective_warmup_num_steps();
        const long R = total - we;
        CAPTURE(type);
        CAPTURE(w);
        CAPTURE(total);
        CHECK(s.lr(-1) == 0.0);  // DeepSpeed's constructor writes 0, not 0.1 * base
        CHECK(s.lr_ratio(-1) == 0.0);
        CHECK(close(s.lr(0), 0.1 * 3e-4));
        for (long t : {0L, 1L, we - 1, we, we + 1, total - 2, total - 1, total, total + 1, we - 1 + 2 * R,
                       we + 2 * R}) {
          CAPTURE(t);
          const double ratio = ref_cosine_ratio(t, total, 0.1, w, 0.01, log);
          CHECK(close(s.lr_ratio(t), ratio));
          CHECK(close(s.lr(t), 3e-4 * ratio));
        }
        if (log) CHECK(close(s.lr_ratio(we - 1), 1.0));
        CHECK(s.lr_ratio(we) < 1.0);                      // r = 1 already at t = W
        CHECK(close(s.lr_ratio(total - 1), 0.01));        // the minimum, one step early
        CHECK(s.lr_ratio(total) > s.lr_ratio(total - 1));  // and back up after it
        CHECK(close(s.lr_ratio(we - 1 + 2 * R), 1.0));    // a whole period later
        for (long t = 0; t <= total + 2; ++t)
          CHECK(close(s.lr_ratio(t), ref_cosine_ratio(t, total, 0.1, w, 0.01, log), 1e-11));
      }
    }
  }
}

TEST_CASE("warmup_cosine_lr: DeepSpeed's own values") {
  // Optimizer lr 3e-4; WarmupCosineLR(total_num_steps=1000, warmup_min_ratio=0.1,
  // warmup_num_steps=100, cos_min_ratio=0.01, warmup_type='log').
  const sch::warmup_cosine_lr lg{.total_num_steps = 1000, .warmup_min_ratio = 0.1, .warmup_num_steps = 100,
                                 .cos_min_ratio = 0.01, .base_lr = 3e-4};
  const std::vector<row> after_warmup = {{100, 0.00029999909528718186}, {101, 0.0002999963811597511},
                                         {550, 0.00015098163826483927}, {998, 3.0009047128181268e-06},
                                         {999, 2.9999999999999997e-06}, {1000, 3.0009047128181268e-06},
                                         {1001, 3.00361884024888e-06},  {1899, 0.0003},
                                         {1900, 0.00029999909528718186}};
  check_table({{-1, 0.0},
               {0, 2.9999999999999997e-05},
               {1, 7.063904941463745e-05},
               {98, 0.00029941075127066916},
               {99, 0.0002999999999999999}},
              [&](long t) { return lg.lr(t); }, false);
  check_table(after_warmup, [&](long t) { return lg.lr(t); }, false);
  // The same, warmup_type='linear'.
  sch::warmup_cosine_lr lin = lg;
  lin.warmup_type = "linear";
  check_table({{-1, 0.0},
               {0, 2.9999999999999997e-05},
               {1, 3.27e-05},
               {98, 0.00029459999999999995},
               {99, 0.00029729999999999996}},
              [&](long t) { return lin.lr(t); }, true);
  check_table(after_warmup, [&](long t) { return lin.lr(t); }, false);
  // Optimizer lr 1e-3; WarmupCosineLR(total_num_steps=2000) with its defaults.
  const sch::warmup_cosine_lr def{.total_num_steps = 2000, .base_lr = 1e-3};
  check_table({{-1, 0.0},
               {0, 0.0},
               {1, 0.00010034333188799373},
               {998, 0.0009998551627419942},
               {999, 0.001},
               {1000, 0.000999997532847669},
               {1999, 1.0000000000000001e-07},
               {2000, 1.0246715233098637e-07}},
              [&](long t) { return def.lr(t); }, false);
}

// =====================================================================================
TEST_CASE("one_cycle: formula at the end of each phase, with and without decay") {
  struct cfg {
    long first;
    std::optional<long> second;
    long decay_step;
    double lr_rate, mom_rate;
  };
  for (const cfg& c : {cfg{10, 20, 5, 0.5, 0.01}, cfg{3, 7, 0, 0.5, 0.01}, cfg{4, std::nullopt, 2, 1.0, 0.0},
                       cfg{7, 1, 3, 0.0, 0.02}, cfg{1, 1, 1, 2.0, -0.01}, cfg{2000, std::nullopt, 1000, 0.1, 0.1}}) {
    const sch::one_cycle s{.cycle_min_lr = 1e-4, .cycle_max_lr = 1e-3, .decay_lr_rate = c.lr_rate,
                           .cycle_first_step_size = c.first, .cycle_second_step_size = c.second,
                           .decay_step_size = c.decay_step, .cycle_min_mom = 0.85, .cycle_max_mom = 0.95,
                           .decay_mom_rate = c.mom_rate};
    s.validate();
    const long F = c.first, S = c.second.value_or(c.first), T = F + S;
    CHECK(s.cycle_total_size() == T);
    const ref_cycle ref{1e-4, 1e-3, F, S, c.decay_step, c.lr_rate, 0.85, 0.95, c.mom_rate};
    CAPTURE(F);
    CAPTURE(S);
    CAPTURE(c.decay_step);
    CHECK(s.lr(-1) == 1e-4);  // the constructor's values
    CHECK(s.momentum(-1) == 0.85);
    for (long t : {0L, 1L, F - 2, F - 1, F, F + 1, T - 2, T - 1, T, T + 1, T + c.decay_step - 1,
                   T + c.decay_step, T + 10 * c.decay_step + 3}) {
      if (t < 0) continue;
      CAPTURE(t);
      CHECK(close(s.lr(t), ref.lr(t)));
      CHECK(close(s.momentum(t), ref.mom(t)));
    }
    CHECK(close(s.lr(F - 1), 1e-3));  // the peak
    CHECK(close(s.momentum(F - 1), 0.85));
    CHECK(close(s.lr(T - 1), 1e-4));  // back at the bottom one step before F + S
    CHECK(close(s.momentum(T - 1), 0.95));
    for (long t = 0; t <= T + 3 * std::max(1L, c.decay_step) && t < 5000; ++t) {
      CHECK(close(s.lr(t), ref.lr(t)));
      CHECK(close(s.momentum(t), ref.mom(t)));
    }
  }
}

TEST_CASE("one_cycle: stair counts change nothing (DeepSpeed never reads them)") {
  const sch::one_cycle plain{.cycle_min_lr = 0.01, .cycle_max_lr = 0.1, .cycle_first_step_size = 12,
                             .cycle_second_step_size = 8, .decay_step_size = 4, .decay_mom_rate = 0.1};
  sch::one_cycle stairs = plain;
  stairs.cycle_first_stair_count = 3;
  stairs.cycle_second_stair_count = 2;
  sch::one_cycle stairs_first_only = plain;
  stairs_first_only.cycle_first_stair_count = 4;
  for (long t = -1; t < 40; ++t) {
    CHECK(stairs.lr(t) == plain.lr(t));
    CHECK(stairs.momentum(t) == plain.momentum(t));
    CHECK(stairs_first_only.lr(t) == plain.lr(t));
  }
  // Each stair would have to hold the lr for 4 steps; DeepSpeed's (and this) lr moves every step.
  CHECK(stairs.lr(1) != stairs.lr(0));
}

TEST_CASE("one_cycle: DeepSpeed's own values") {
  // OneCycle(cycle_min_lr=1e-4, cycle_max_lr=1e-3, cycle_first_step_size=10,
  //          cycle_second_step_size=20, decay_lr_rate=0.5, decay_step_size=5,
  //          cycle_min_mom=0.85, cycle_max_mom=0.95, decay_mom_rate=0.01,
  //          cycle_first_stair_count=3, cycle_second_stair_count=4); betas[0] as momentum
  //          (betas[1] was 0.99 at every step, the constructor's included).
  const sch::one_cycle a{.cycle_min_lr = 1e-4, .cycle_max_lr = 1e-3, .decay_lr_rate = 0.5,
                         .cycle_first_step_size = 10, .cycle_second_step_size = 20, .cycle_first_stair_count = 3,
                         .cycle_second_stair_count = 4, .decay_step_size = 5, .cycle_min_mom = 0.85,
                         .cycle_max_mom = 0.95, .decay_mom_rate = 0.01};
  const std::vector<mrow> ta = {{-1, 0.0001, 0.85},
                                {0, 0.00019000000000000028, 0.94},
                                {1, 0.00028, 0.9299999999999999},
                                {8, 0.0009100000000000001, 0.86},
                                {9, 0.0009999999999999998, 0.85},
                                {10, 0.0009549999999999999, 0.855},
                                {11, 0.00091, 0.86},
                                {28, 0.00014499999999999984, 0.945},
                                {29, 0.0001, 0.95},
                                {30, 9.09090909090909e-05, 0.9519},
                                {31, 8.333333333333334e-05, 0.9538},
                                {34, 6.666666666666667e-05, 0.9594999999999999},
                                {35, 6.25e-05, 0.9613999999999999},
                                {100, 1.234567901234568e-05, 1.0848999999999998}};
  for (const auto& r : ta) {
    CAPTURE(r.step);
    CHECK(a.lr(r.step) == r.lr);
    CHECK(a.momentum(r.step) == r.mom);
  }
  // OneCycle(cycle_min_lr=0.01, cycle_max_lr=0.1, cycle_first_step_size=3,
  //          cycle_second_step_size=7): no decay. F / (F + S) = 0.3 is not exact in
  //          binary, so step 2 takes DeepSpeed's "second half" branch; still 0.1 exactly.
  const sch::one_cycle b{.cycle_min_lr = 0.01, .cycle_max_lr = 0.1, .cycle_first_step_size = 3,
                         .cycle_second_step_size = 7};
  const std::vector<mrow> tb = {{-1, 0.01, 0.8},
                                {0, 0.04000000000000003, 0.8666666666666667},
                                {1, 0.06999999999999999, 0.8333333333333334},
                                {2, 0.1, 0.8},
                                {3, 0.08714285714285716, 0.8142857142857143},
                                {4, 0.07428571428571429, 0.8285714285714286},
                                {8, 0.02285714285714287, 0.8857142857142857},
                                {9, 0.01, 0.9},
                                {10, 0.01, 0.9},
                                {11, 0.01, 0.9},
                                {50, 0.01, 0.9}};
  for (const auto& r : tb) {
    CAPTURE(r.step);
    CHECK(b.lr(r.step) == r.lr);
    CHECK(b.momentum(r.step) == r.mom);
  }
  // OneCycle(cycle_min_lr=0.01, cycle_max_lr=0.1, cycle_first_step_size=4,
  //          decay_step_size=2, decay_lr_rate=1.0): second size unset (= 4), momentum
  //          decay rate 0 (momentum stays at cycle_max_mom after the cycle).
  const sch::one_cycle c{.cycle_min_lr = 0.01, .cycle_max_lr = 0.1, .decay_lr_rate = 1.0,
                         .cycle_first_step_size = 4, .decay_step_size = 2};
  const std::vector<mrow> tc = {{-1, 0.01, 0.8},   {0, 0.0325, 0.875},
                                {3, 0.1, 0.8},     {4, 0.0775, 0.8250000000000001},
                                {7, 0.01, 0.9},    {8, 0.006666666666666667, 0.9},
                                {9, 0.005, 0.9},   {12, 0.002857142857142857, 0.9}};
  for (const auto& r : tc) {
    CAPTURE(r.step);
    CHECK(c.lr(r.step) == r.lr);
    CHECK(c.momentum(r.step) == r.mom);
  }
}

// =====================================================================================
TEST_CASE("lr_range_test: formula and DeepSpeed's own values") {
  for (bool stairs : {false, true}) {
    const sch::lr_range_test s{.lr_range_test_min_lr = 1e-3, .lr_range_test_step_size = 10,
                               .lr_range_test_step_rate = 0.5, .lr_range_test_staircase = stairs};
    CAPTURE(stairs);
    CHECK(s.lr(-1) == 1e-3);
    for (long t = 0; t < 100; ++t) CHECK(close(s.lr(t), ref_range(t, 1e-3, 10, 0.5, stairs)));
    CHECK(s.lr(8) == (stairs ? 1e-3 : s.lr(8)));
    CHECK(close(s.lr(9), 1.5e-3));  // (9 + 1) / 10 = 1: the first stair
  }
  // LRRangeTest(lr_range_test_min_lr=1e-3, lr_range_test_step_size=10,
  //             lr_range_test_step_rate=0.5, lr_range_test_staircase=False / True).
  const sch::lr_range_test cont{.lr_range_test_min_lr = 1e-3, .lr_range_test_step_size = 10,
                                .lr_range_test_step_rate = 0.5};
  check_table({{-1, 0.001},
               {0, 0.0010500000000000002},
               {8, 0.00145},
               {9, 0.0015},
               {10, 0.0015500000000000002},
               {19, 0.002},
               {20, 0.0020499999999999997},
               {25, 0.0023}},
              [&](long t) { return cont.lr(t); }, true);
  sch::lr_range_test st = cont;
  st.lr_range_test_staircase = true;
  check_table({{-1, 0.001}, {0, 0.001}, {8, 0.001}, {9, 0.0015}, {10, 0.0015}, {19, 0.002}, {20, 0.002}, {25, 0.002}},
              [&](long t) { return st.lr(t); }, true);
}

// =====================================================================================
TEST_CASE("validate: every error names its field") {
  SUBCASE("warmup_lr") {
    check_error([] { sch::warmup_lr{.warmup_min_lr = -1e-5}.validate(); }, "warmup_min_lr");
    check_error([] { sch::warmup_lr{.warmup_min_lr = nan_v}.validate(); }, "warmup_min_lr");
    check_error([] { sch::warmup_lr{.warmup_max_lr = inf_v}.validate(); }, "warmup_max_lr");
    check_error([] { sch::warmup_lr{.warmup_num_steps = -1}.validate(); }, "warmup_num_steps");
    check_error([] { sch::warmup_lr{.warmup_type = "cosine"}.validate(); }, "warmup_type");
    check_error([] { sch::warmup_lr{.warmup_type = "Log"}.validate(); }, "warmup_type");
    check_error([] { (void)sch::warmup_lr{}.lr(-2); }, "step -2");
    check_error([] { (void)sch::warmup_lr{.warmup_type = "exp"}.lr(5); }, "warmup_type");  // lr() validates
    CHECK_NOTHROW(sch::warmup_lr{.warmup_num_steps = 0}.validate());
  }
  SUBCASE("warmup_decay_lr") {
    check_error([] { sch::warmup_decay_lr{}.validate(); }, "total_num_steps is required");
    check_error([] { sch::warmup_decay_lr{.total_num_steps = -5}.validate(); }, "total_num_steps");
    // DeepSpeed only warns here (and then holds warmup_min_lr after the warmup).
    check_error([] { sch::warmup_decay_lr{.total_num_steps = 999}.validate(); },
                "total_num_steps (999) must be >= warmup_num_steps (1000");
    // Against the effective warmup, max(2, 0) = 2, as DeepSpeed compares.
    check_error([] { sch::warmup_decay_lr{.total_num_steps = 1, .warmup_num_steps = 0}.validate(); },
                "total_num_steps (1) must be >= warmup_num_steps (2");
    check_error([] { sch::warmup_decay_lr{.total_num_steps = 10, .warmup_min_lr = -1.0, .warmup_num_steps = 2}.validate(); },
                "warmup_min_lr");
    check_error([] { sch::warmup_decay_lr{.total_num_steps = 10, .warmup_max_lr = nan_v, .warmup_num_steps = 2}.validate(); },
                "warmup_max_lr");
    check_error([] { sch::warmup_decay_lr{.total_num_steps = 10, .warmup_num_steps = -3}.validate(); },
                "warmup_num_steps");
    check_error([] { sch::warmup_decay_lr{.total_num_steps = 10, .warmup_num_steps = 2, .warmup_type = ""}.validate(); },
                "warmup_type");
    check_error([] { (void)sch::warmup_decay_lr{.total_num_steps = 10, .warmup_num_steps = 2}.lr(-7); }, "step -7");
    CHECK_NOTHROW(sch::warmup_decay_lr{.total_num_steps = 1000}.validate());  // T == W is fine
    CHECK_NOTHROW(sch::warmup_decay_lr{.total_num_steps = 2, .warmup_num_steps = 0}.validate());
  }
  SUBCASE("warmup_cosine_lr") {
    check_error([] { sch::warmup_cosine_lr{.total_num_steps = 2000}.validate(); }, "base_lr");
    check_error([] { sch::warmup_cosine_lr{.total_num_steps = 2000, .base_lr = -1e-3}.validate(); }, "base_lr");
    check_error([] { (void)sch::warmup_cosine_lr{.total_num_steps = 2000}.lr(3); }, "base_lr");
    CHECK_NOTHROW((void)sch::warmup_cosine_lr{.total_num_steps = 2000}.lr_ratio(3));  // needs no base_lr
    check_error([] { sch::warmup_cosine_lr{.base_lr = 1e-3}.validate(); }, "total_num_steps is required");
    // DeepSpeed divides by zero after the warmup when total == warmup: refused.
    check_error([] { sch::warmup_cosine_lr{.total_num_steps = 1000, .base_lr = 1e-3}.validate(); },
                "total_num_steps (1000) must be > warmup_num_steps (1000");
    check_error([] { sch::warmup_cosine_lr{.total_num_steps = 500, .base_lr = 1e-3}.validate(); },
                "total_num_steps (500) must be > warmup_num_steps (1000");
    check_error([] { sch::warmup_cosine_lr{.total_num_steps = 2, .warmup_num_steps = 1, .base_lr = 1e-3}.validate(); },
                "warmup_num_steps (2 = max(2, 1))");
    check_error([] { (void)sch::warmup_cosine_lr{.total_num_steps = 2}.lr_ratio(0); }, "total_num_steps (2)");
    check_error([] { sch::warmup_cosine_lr{.total_num_steps = 2000, .warmup_min_ratio = -0.1, .base_lr = 1e-3}.validate(); },
                "warmup_min_ratio");
    check_error([] { sch::warmup_cosine_lr{.total_num_steps = 2000, .cos_min_ratio = nan_v, .base_lr = 1e-3}.validate(); },
                "cos_min_ratio");
    check_error([] { sch::warmup_cosine_lr{.total_num_steps = 2000, .warmup_num_steps = -1, .base_lr = 1e-3}.validate(); },
                "warmup_num_steps");
    check_error([] { sch::warmup_cosine_lr{.total_num_steps = 2000, .warmup_type = "cos", .base_lr = 1e-3}.validate(); },
                "warmup_type");
    check_error([] { (void)sch::warmup_cosine_lr{.total_num_steps = 2000, .base_lr = 1e-3}.lr(-2); }, "step -2");
    check_error([] { (void)sch::warmup_cosine_lr{.total_num_steps = 2000}.lr_ratio(-2); }, "step -2");
    CHECK_NOTHROW(sch::warmup_cosine_lr{.total_num_steps = 1001, .base_lr = 1e-3}.validate());
  }
  SUBCASE("one_cycle") {
    check_error([] { sch::one_cycle{}.validate(); }, "cycle_min_lr (required)");
    check_error([] { sch::one_cycle{.cycle_min_lr = 1e-3}.validate(); }, "cycle_max_lr (required)");
    check_error([] { sch::one_cycle{.cycle_min_lr = -1e-3, .cycle_max_lr = 1e-2}.validate(); }, "cycle_min_lr");
    check_error([] { sch::one_cycle{.cycle_min_lr = 1e-3, .cycle_max_lr = inf_v}.validate(); }, "cycle_max_lr");
    check_error([] { sch::one_cycle{.cycle_min_lr = 1e-3, .cycle_max_lr = 1e-2, .decay_lr_rate = -0.5}.validate(); },
                "decay_lr_rate");
    check_error([] { sch::one_cycle{.cycle_min_lr = 1e-3, .cycle_max_lr = 1e-2, .cycle_first_step_size = 0}.validate(); },
                "cycle_first_step_size (0)");
    check_error([] { sch::one_cycle{.cycle_min_lr = 1e-3, .cycle_max_lr = 1e-2, .cycle_second_step_size = 0}.validate(); },
                "cycle_second_step_size (0)");
    check_error([] { sch::one_cycle{.cycle_min_lr = 1e-3, .cycle_max_lr = 1e-2, .cycle_second_step_size = -1}.validate(); },
                "cycle_second_step_size (-1)");
    check_error([] { sch::one_cycle{.cycle_min_lr = 1e-3, .cycle_max_lr = 1e-2, .decay_step_size = -1}.validate(); },
                "decay_step_size (-1)");
    check_error([] { sch::one_cycle{.cycle_min_lr = 1e-3, .cycle_max_lr = 1e-2, .cycle_min_mom = nan_v}.validate(); },
                "cycle_min_mom");
    check_error([] { sch::one_cycle{.cycle_min_lr = 1e-3, .cycle_max_lr = 1e-2, .cycle_max_mom = -0.9}.validate(); },
                "cycle_max_mom");
    check_error([] { sch::one_cycle{.cycle_min_lr = 1e-3, .cycle_max_lr = 1e-2, .decay_mom_rate = inf_v}.validate(); },
                "decay_mom_rate");
    // Without cycle_momentum DeepSpeed never reads the momentum fields; neither does this.
    CHECK_NOTHROW(sch::one_cycle{.cycle_min_lr = 1e-3, .cycle_max_lr = 1e-2, .cycle_momentum = false,
                                 .cycle_min_mom = nan_v, .decay_mom_rate = inf_v}
                      .validate());
    check_error([] { (void)sch::one_cycle{.cycle_min_lr = 1e-3, .cycle_max_lr = 1e-2, .cycle_momentum = false}.momentum(0); },
                "cycle_momentum");
    check_error([] { (void)sch::one_cycle{.cycle_min_lr = 1e-3, .cycle_max_lr = 1e-2}.lr(-2); }, "step -2");
    check_error([] { (void)sch::one_cycle{.cycle_min_lr = 1e-3, .cycle_max_lr = 1e-2}.momentum(-2); }, "step -2");
    check_error([] { (void)sch::one_cycle{}.lr(0); }, "cycle_min_lr");  // lr() validates
    // Stair counts are ignored, whatever their value (DeepSpeed's argparse default is -1).
    CHECK_NOTHROW(sch::one_cycle{.cycle_min_lr = 1e-3, .cycle_max_lr = 1e-2, .cycle_first_stair_count = -1,
                                 .cycle_second_stair_count = -1}
                      .validate());
  }
  SUBCASE("lr_range_test") {
    check_error([] { sch::lr_range_test{.lr_range_test_min_lr = -1e-3}.validate(); }, "lr_range_test_min_lr");
    check_error([] { sch::lr_range_test{.lr_range_test_min_lr = nan_v}.validate(); }, "lr_range_test_min_lr");
    check_error([] { sch::lr_range_test{.lr_range_test_step_size = 0}.validate(); }, "lr_range_test_step_size (0)");
    check_error([] { sch::lr_range_test{.lr_range_test_step_rate = -1.0}.validate(); }, "lr_range_test_step_rate");
    check_error([] { (void)sch::lr_range_test{}.lr(-2); }, "step -2");
  }
}

TEST_CASE("errors are zeroblocks::error with the schedule's name") {
  try {
    sch::warmup_decay_lr{.total_num_steps = 10}.validate();
    FAIL("expected an error");
  } catch (const zeroblocks::error& e) {
    CHECK(std::string(e.reason()).find("schedule::warmup_decay_lr") != std::string::npos);
    CHECK(std::string(e.what()).rfind("zeroblocks: ", 0) == 0);
  }
}

TEST_CASE("the trainer loop from the header comment") {
  const sch::warmup_decay_lr sched{.total_num_steps = 10000, .warmup_max_lr = 3e-4, .warmup_num_steps = 500,
                                   .warmup_type = "linear"};
  sched.validate();
  float last = -1.0f;
  int rising = 0;
  for (long step = 0; step < 10000; ++step) {
    const float lr = static_cast<float>(sched.lr(step));
    CHECK_UNARY(std::isfinite(lr));
    CHECK_UNARY(lr >= 0.0f);  // what engine::set_learning_rate accepts
    if (lr > last) ++rising;
    last = lr;
  }
  CHECK(rising == 501);  // steps 0..500 rise (step 0 from the -1 sentinel), then it decays
  CHECK(last == static_cast<float>(3e-4 * 1.0 / 9500.0));
}
