/**
 * @file schedule.hpp
 * @brief `zeroblocks::schedule`: DeepSpeed's learning-rate schedulers
 *        (`deepspeed/runtime/lr_schedules.py`) as small value types.
 *
 * Each type is an aggregate of the DeepSpeed scheduler's constructor parameters, with the
 * same names and DeepSpeed's defaults (the class defaults, which a `"scheduler"` block of
 * a DeepSpeed JSON config falls back to; not the `add_tuning_arguments` argparse
 * defaults, which differ). Nothing is stored between calls: `lr(step)` is a pure function.
 *
 *  - `warmup_lr` (DeepSpeed `WarmupLR`): from `warmup_min_lr` to `warmup_max_lr` over the
 *    warmup (logarithmic or linear), then constant at `warmup_max_lr`.
 *  - `warmup_decay_lr` (`WarmupDecayLR`): the same warmup, then linear decay that reaches
 *    `warmup_min_lr` at step `total_num_steps` and stays there.
 *  - `warmup_cosine_lr` (`WarmupCosineLR`): a ratio of the optimizer's base lr (`base_lr`
 *    here; DeepSpeed reads the param group's `lr` when the scheduler is built) that warms
 *    up from `warmup_min_ratio` to 1, then follows a half cosine down to `cos_min_ratio`.
 *  - `one_cycle` (`OneCycle`): lr up from `cycle_min_lr` to `cycle_max_lr` over
 *    `cycle_first_step_size` steps, back down over `cycle_second_step_size`, then
 *    optionally decayed; Adam's beta1 ("momentum") cycled the opposite way.
 *  - `lr_range_test` (`LRRangeTest`): lr grows linearly (or in stairs) from
 *    `lr_range_test_min_lr`, to find the largest lr that still trains.
 *  - `any`: one of the five, chosen at run time (a `std::variant`; what a DeepSpeed
 *    `"scheduler"` block read by `engine/ds_config.hpp` becomes).
 *
 * The step convention. DeepSpeed's scheduler holds `last_batch_iteration`, -1 when built;
 * each `step()` adds one and writes `get_lr()`, evaluated at the new value, into the
 * optimizer's param groups. Here `lr(step)` is the lr DeepSpeed has written after
 * `step()` has been called `step + 1` times from a fresh start, i.e. with
 * `last_batch_iteration == step`. `lr(-1)` is what DeepSpeed's constructor writes before
 * any `step()` (warmup_min_lr, 0, cycle_min_lr, lr_range_test_min_lr; see each type).
 * Steps below -1 are an error.
 *
 * How a zeroblocks trainer uses one:
 *
 *     schedule::warmup_decay_lr sched{.total_num_steps = 10000, .warmup_max_lr = 3e-4,
 *                                     .warmup_num_steps = 500, .warmup_type = "linear"};
 *     sched.validate();
 *     for (long step = 0; step < 10000; ++step) {
 *       ... forward, backward ...
 *       eng.set_learning_rate(static_cast<float>(sched.lr(step)));
 *       eng.step();
 *     }
 *
 * so zeroblocks' update number `step` (from 0) uses DeepSpeed's lr at
 * `last_batch_iteration == step`. DeepSpeed's own engine calls the scheduler's `step()`
 * *after* `optimizer.step()`, so its update number k uses the lr at
 * `last_batch_iteration == k - 1` (the constructor's value for the first update). A
 * trainer that wants DeepSpeed's engine update for update calls `sched.lr(step - 1)`
 * instead; DeepSpeed's engine also leaves the scheduler alone on steps it skips for an
 * fp16 overflow, so such a trainer does not advance `step` on a skipped step either.
 *
 * Where this differs from DeepSpeed (the learning rates never do, for an accepted
 * configuration; `validate()` and every `lr()` only refuse more):
 *  - `validate()` throws `zeroblocks::error` for a configuration DeepSpeed accepts with
 *    only a warning or that makes it fail later: an unknown `warmup_type` (WarmupLR logs
 *    a warning and uses "log"; WarmupCosineLR raises UnboundLocalError in the warmup),
 *    `total_num_steps` below the warmup (DeepSpeed warns; for WarmupCosineLR equality
 *    divides by zero), negative or non-finite values, and a missing required parameter
 *    (DeepSpeed's `total_num_steps`, `cycle_min_lr` and `cycle_max_lr` have no default;
 *    here they default to 0 / NaN and `validate()` asks for them). `lr()` and
 *    `momentum()` call `validate()` themselves.
 *  - DeepSpeed takes a list of values (one per param group) for some parameters; a
 *    zeroblocks engine has one learning rate, so each is a single value here.
 *
 * DeepSpeed behaviour reproduced on purpose (it surprises):
 *  - `warmup_num_steps` below 2 becomes 2 (`max(2, warmup_num_steps)`), so 0 does not
 *    turn the warmup off: "log" gives min at step 0 and max from step 1, "linear" gives
 *    min, the midpoint, then max. `effective_warmup_num_steps()` returns that value.
 *  - The log warmup reaches the max at step `warmup_num_steps - 1` (log W / log W); the
 *    linear one only at `warmup_num_steps`.
 *  - WarmupCosineLR's cosine keeps going after `total_num_steps`: it reaches
 *    `cos_min_ratio` at step `total_num_steps - 1` and then rises again (period
 *    2 (total_num_steps - warmup_num_steps)); it is not clamped. Its constructor writes
 *    lr 0, not `base_lr * warmup_min_ratio`.
 *  - OneCycle ignores `cycle_first_stair_count` / `cycle_second_stair_count` (they are
 *    stored but never read: no staircase), and `decay_step_size` only scales the
 *    continuous decay `cycle_min_lr / (1 + decay_lr_rate * n / decay_step_size)`.
 *    The post-cycle momentum *grows*: `cycle_max_mom * (1 + decay_mom_rate * n /
 *    decay_step_size)`. DeepSpeed writes the momentum as Adam's `betas = (momentum,
 *    0.99)`, overwriting beta2 with 0.99 (`one_cycle::momentum_beta2`), and its
 *    constructor writes beta1 = `cycle_min_mom` although step 0 is near `cycle_max_mom`.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

ZB_NAMESPACE_BEGIN
namespace schedule {

namespace detail {

inline constexpr double unset = std::numeric_limits<double>::quiet_NaN();

inline void require_step(const char* who, long step) {
  ZB_REQUIRE(step >= -1, "schedule::", who, ": step ", step,
             " must be >= -1 (-1 is the value before the first DeepSpeed step())");
}

inline void require_finite(const char* who, const char* field, double v) {
  ZB_REQUIRE(std::isfinite(v), "schedule::", who, ": ", field, " (", v, ") must be finite");
}

inline void require_finite_nonnegative(const char* who, const char* field, double v) {
  ZB_REQUIRE(std::isfinite(v) && v >= 0.0, "schedule::", who, ": ", field, " (", v,
             ") must be finite and >= 0");
}

/// The check shared by the three warmup schedulers.
inline void require_warmup(const char* who, long warmup_num_steps, const std::string& type) {
  ZB_REQUIRE(warmup_num_steps >= 0, "schedule::", who, ": warmup_num_steps (", warmup_num_steps,
             ") must be >= 0");
  ZB_REQUIRE(type == "log" || type == "linear", "schedule::", who, ": warmup_type \"", type,
             "\" must be \"log\" or \"linear\"");
}

/// DeepSpeed's warmup fraction at `last_batch_iteration == t` for 0 <= t < w, w >= 2.
inline double warmup_fraction(long t, long w, const std::string& type) {
  if (type == "log") return (1.0 / std::log(static_cast<double>(w))) * std::log(static_cast<double>(t + 1));
  return static_cast<double>(t) / static_cast<double>(w);
}

}  // namespace detail

/// @brief DeepSpeed `WarmupLR`: warmup from `warmup_min_lr` to `warmup_max_lr`, then flat.
///
/// With W = max(2, warmup_num_steps) and t = step:
/// lr = warmup_min_lr + (warmup_max_lr - warmup_min_lr) * g, where g = log(t+1)/log(W)
/// ("log") or t/W ("linear") for t < W, and 1 from t = W on. lr(-1) = warmup_min_lr.
struct warmup_lr {
  static constexpr const char* deepspeed_name = "WarmupLR";  ///< DeepSpeed's class name
  double warmup_min_lr = 0.0;
  double warmup_max_lr = 0.001;
  long warmup_num_steps = 1000;
  std::string warmup_type = "log";  ///< "log" or "linear"

  /// The warmup length DeepSpeed actually uses: max(2, warmup_num_steps).
  long effective_warmup_num_steps() const { return std::max(2L, warmup_num_steps); }

  void validate() const {
    detail::require_finite_nonnegative("warmup_lr", "warmup_min_lr", warmup_min_lr);
    detail::require_finite_nonnegative("warmup_lr", "warmup_max_lr", warmup_max_lr);
    detail::require_warmup("warmup_lr", warmup_num_steps, warmup_type);
  }

  /// The lr after DeepSpeed's `step()` has run `step + 1` times (see the file comment).
  double lr(long step) const {
    validate();
    detail::require_step("warmup_lr", step);
    if (step < 0) return warmup_min_lr;
    return warmup_min_lr + (warmup_max_lr - warmup_min_lr) * gamma(step);
  }

private:
  double gamma(long t) const {
    const long w = effective_warmup_num_steps();
    return t < w ? detail::warmup_fraction(t, w, warmup_type) : 1.0;
  }
};

/// @brief DeepSpeed `WarmupDecayLR`: `warmup_lr`'s warmup, then linear decay to
/// `warmup_min_lr` at `total_num_steps`.
///
/// With W = max(2, warmup_num_steps), T = total_num_steps, t = step: during the warmup
/// (t < W) as `warmup_lr`; from t = W on the factor is
/// max(0, (T - t) / max(1, T - W)), so lr is `warmup_max_lr` at t = W, `warmup_min_lr`
/// at t = T and stays `warmup_min_lr` after it. lr(-1) = warmup_min_lr.
struct warmup_decay_lr {
  static constexpr const char* deepspeed_name = "WarmupDecayLR";  ///< DeepSpeed's class name
  long total_num_steps = 0;  ///< required (DeepSpeed has no default); >= W
  double warmup_min_lr = 0.0;
  double warmup_max_lr = 0.001;
  long warmup_num_steps = 1000;
  std::string warmup_type = "log";  ///< "log" or "linear"

  long effective_warmup_num_steps() const { return std::max(2L, warmup_num_steps); }

  void validate() const {
    detail::require_finite_nonnegative("warmup_decay_lr", "warmup_min_lr", warmup_min_lr);
    detail::require_finite_nonnegative("warmup_decay_lr", "warmup_max_lr", warmup_max_lr);
    detail::require_warmup("warmup_decay_lr", warmup_num_steps, warmup_type);
    ZB_REQUIRE(total_num_steps > 0,
               "schedule::warmup_decay_lr: total_num_steps is required (DeepSpeed has no default), got ",
               total_num_steps);
    ZB_REQUIRE(total_num_steps >= effective_warmup_num_steps(), "schedule::warmup_decay_lr: total_num_steps (",
               total_num_steps, ") must be >= warmup_num_steps (", effective_warmup_num_steps(),
               " = max(2, ", warmup_num_steps, "))");
  }

  double lr(long step) const {
    validate();
    detail::require_step("warmup_decay_lr", step);
    if (step < 0) return warmup_min_lr;
    return warmup_min_lr + (warmup_max_lr - warmup_min_lr) * gamma(step);
  }

private:
  double gamma(long t) const {
    const long w = effective_warmup_num_steps();
    if (t < w) return detail::warmup_fraction(t, w, warmup_type);
    const double span = std::max(1.0, static_cast<double>(total_num_steps - w));
    return std::max(0.0, static_cast<double>(total_num_steps - t) / span);
  }
};

/// @brief DeepSpeed `WarmupCosineLR`: lr = base_lr * ratio(step).
///
/// With W = max(2, warmup_num_steps), T = total_num_steps, t = step:
///  - t < W: ratio = warmup_min_ratio + f * (1 - warmup_min_ratio), with f = log(t+1)/log(W)
///    ("log") or t/W ("linear");
///  - t >= W: with r = t - W + 1 and R = T - W,
///    ratio = max(0, cos_min_ratio + (1 - cos_min_ratio) * (1 + cos(pi r / R)) / 2),
///    which is cos_min_ratio at t = T - 1 and, as in DeepSpeed, rises again after it.
/// lr(-1) = 0 (DeepSpeed's constructor writes 0.0, whatever the warmup_min_ratio).
///
/// `base_lr` is the optimizer's learning rate when DeepSpeed builds the scheduler (the
/// `lr` of the config's `"optimizer"` params); it is required here.
struct warmup_cosine_lr {
  static constexpr const char* deepspeed_name = "WarmupCosineLR";  ///< DeepSpeed's class name
  long total_num_steps = 0;  ///< required (DeepSpeed has no default); > W
  double warmup_min_ratio = 0.0;
  long warmup_num_steps = 1000;
  double cos_min_ratio = 0.0001;
  std::string warmup_type = "log";  ///< "log" or "linear"
  double base_lr = detail::unset;   ///< required: the optimizer's lr (DeepSpeed's org_lrs)

  long effective_warmup_num_steps() const { return std::max(2L, warmup_num_steps); }

  void validate() const {
    validate_ratio_fields();
    detail::require_finite_nonnegative("warmup_cosine_lr", "base_lr (the optimizer's lr, required)", base_lr);
  }

  /// DeepSpeed's `get_lr_ratio()` at `last_batch_iteration == step` (0 for step -1);
  /// does not need `base_lr`.
  double lr_ratio(long step) const {
    validate_ratio_fields();
    detail::require_step("warmup_cosine_lr", step);
    if (step < 0) return 0.0;
    const long w = effective_warmup_num_steps();
    if (step < w) {
      const double f = detail::warmup_fraction(step, w, warmup_type);
      return warmup_min_ratio + f * (1.0 - warmup_min_ratio);
    }
    const double r = static_cast<double>(step - w + 1);
    const double big_r = static_cast<double>(total_num_steps - w);
    const double c = (1.0 + std::cos(std::numbers::pi * r / big_r)) / 2.0;
    return std::max(0.0, cos_min_ratio + (1.0 - cos_min_ratio) * c);
  }

  double lr(long step) const {
    validate();
    detail::require_step("warmup_cosine_lr", step);
    if (step < 0) return 0.0;
    return base_lr * lr_ratio(step);
  }

private:
  void validate_ratio_fields() const {
    detail::require_finite_nonnegative("warmup_cosine_lr", "warmup_min_ratio", warmup_min_ratio);
    detail::require_finite_nonnegative("warmup_cosine_lr", "cos_min_ratio", cos_min_ratio);
    detail::require_warmup("warmup_cosine_lr", warmup_num_steps, warmup_type);
    ZB_REQUIRE(total_num_steps > 0,
               "schedule::warmup_cosine_lr: total_num_steps is required (DeepSpeed has no default), got ",
               total_num_steps);
    ZB_REQUIRE(total_num_steps > effective_warmup_num_steps(), "schedule::warmup_cosine_lr: total_num_steps (",
               total_num_steps, ") must be > warmup_num_steps (", effective_warmup_num_steps(), " = max(2, ",
               warmup_num_steps, "))");
  }
};

/// @brief DeepSpeed `OneCycle`.
///
/// With F = cycle_first_step_size, S = cycle_second_step_size (F when unset),
/// b = step + 1 and the scale s:
///  - step < F + S: s = b / F while b <= F, else (F + S - b) / S (DeepSpeed computes it
///    from b / (F + S) in floating point, reproduced operation for operation);
///    lr = cycle_min_lr + (cycle_max_lr - cycle_min_lr) s,
///    momentum = cycle_max_mom - (cycle_max_mom - cycle_min_mom) s.
///    So lr peaks at step F - 1 and is back at cycle_min_lr at step F + S - 1.
///  - step >= F + S, with n = step - (F + S) + 1: lr = cycle_min_lr / (1 + decay_lr_rate
///    n / decay_step_size) and momentum = cycle_max_mom (1 + decay_mom_rate n /
///    decay_step_size); when decay_step_size is 0 or a rate is 0, that one stays at
///    cycle_min_lr / cycle_max_mom.
/// lr(-1) = cycle_min_lr, momentum(-1) = cycle_min_mom (the constructor's values).
/// The stair counts are accepted and ignored, as DeepSpeed does.
struct one_cycle {
  static constexpr const char* deepspeed_name = "OneCycle";  ///< DeepSpeed's class name
  double cycle_min_lr = detail::unset;  ///< required (DeepSpeed has no default)
  double cycle_max_lr = detail::unset;  ///< required (DeepSpeed has no default)
  double decay_lr_rate = 0.0;
  long cycle_first_step_size = 2000;
  std::optional<long> cycle_second_step_size{};  ///< unset: cycle_first_step_size
  long cycle_first_stair_count = 0;                ///< ignored, as by DeepSpeed
  std::optional<long> cycle_second_stair_count{};  ///< ignored, as by DeepSpeed
  long decay_step_size = 0;                        ///< 0: no post-cycle decay
  bool cycle_momentum = true;
  double cycle_min_mom = 0.8;
  double cycle_max_mom = 0.9;
  double decay_mom_rate = 0.0;

  /// DeepSpeed writes `betas = (momentum(step), momentum_beta2)` when it cycles momentum.
  static constexpr double momentum_beta2 = 0.99;

  long second_step_size() const { return cycle_second_step_size.value_or(cycle_first_step_size); }
  /// The first step of the post-cycle phase: F + S.
  long cycle_total_size() const { return cycle_first_step_size + second_step_size(); }

  void validate() const {
    detail::require_finite_nonnegative("one_cycle", "cycle_min_lr (required)", cycle_min_lr);
    detail::require_finite_nonnegative("one_cycle", "cycle_max_lr (required)", cycle_max_lr);
    detail::require_finite_nonnegative("one_cycle", "decay_lr_rate", decay_lr_rate);
    ZB_REQUIRE(cycle_first_step_size >= 1, "schedule::one_cycle: cycle_first_step_size (", cycle_first_step_size,
               ") must be >= 1");
    ZB_REQUIRE(!cycle_second_step_size || *cycle_second_step_size >= 1,
               "schedule::one_cycle: cycle_second_step_size (", cycle_second_step_size.value_or(0),
               ") must be >= 1 (or unset: cycle_first_step_size)");
    ZB_REQUIRE(decay_step_size >= 0, "schedule::one_cycle: decay_step_size (", decay_step_size,
               ") must be >= 0 (0: no decay)");
    if (cycle_momentum) {
      detail::require_finite_nonnegative("one_cycle", "cycle_min_mom", cycle_min_mom);
      detail::require_finite_nonnegative("one_cycle", "cycle_max_mom", cycle_max_mom);
      detail::require_finite("one_cycle", "decay_mom_rate", decay_mom_rate);
    }
  }

  double lr(long step) const {
    validate();
    detail::require_step("one_cycle", step);
    if (step < 0) return cycle_min_lr;
    const double total = total_size();
    if (static_cast<double>(step) < total) return cycle_min_lr + (cycle_max_lr - cycle_min_lr) * scale(step);
    if (decay_step_size == 0 || decay_lr_rate == 0.0) return cycle_min_lr;
    return cycle_min_lr / (1.0 + decay_lr_rate * decay_interval(step));
  }

  /// Adam's beta1 as DeepSpeed sets it; an error when `cycle_momentum` is false (DeepSpeed
  /// then leaves the betas alone, as it does for an optimizer without `betas`).
  double momentum(long step) const {
    validate();
    ZB_REQUIRE(cycle_momentum, "schedule::one_cycle: momentum() needs cycle_momentum = true");
    detail::require_step("one_cycle", step);
    if (step < 0) return cycle_min_mom;
    const double total = total_size();
    if (static_cast<double>(step) < total) return cycle_max_mom - (cycle_max_mom - cycle_min_mom) * scale(step);
    if (decay_step_size == 0 || decay_mom_rate == 0.0) return cycle_max_mom;
    return cycle_max_mom * (1.0 + decay_mom_rate * decay_interval(step));
  }

private:
  double total_size() const {
    return static_cast<double>(cycle_first_step_size) + static_cast<double>(second_step_size());
  }
  // The position in the cycle, in the same floating-point steps as DeepSpeed.
  double scale(long step) const {
    const double total = total_size();
    const double ratio = static_cast<double>(cycle_first_step_size) / total;
    const double q = static_cast<double>(step + 1) / total;
    const double cycle = std::floor(1.0 + q);
    const double x = 1.0 + q - cycle;
    return x <= ratio ? x / ratio : (x - 1.0) / (ratio - 1.0);
  }
  double decay_interval(long step) const {
    const double n = static_cast<double>(step) - total_size() + 1.0;
    return n / static_cast<double>(decay_step_size);
  }
};

/// @brief DeepSpeed `LRRangeTest`: lr = lr_range_test_min_lr * (1 + lr_range_test_step_rate * i)
/// with i = (step + 1) / lr_range_test_step_size, rounded down when
/// `lr_range_test_staircase`. lr(-1) = lr_range_test_min_lr.
struct lr_range_test {
  static constexpr const char* deepspeed_name = "LRRangeTest";  ///< DeepSpeed's class name
  double lr_range_test_min_lr = 1e-3;
  long lr_range_test_step_size = 2000;
  double lr_range_test_step_rate = 1.0;
  bool lr_range_test_staircase = false;

  void validate() const {
    detail::require_finite_nonnegative("lr_range_test", "lr_range_test_min_lr", lr_range_test_min_lr);
    ZB_REQUIRE(lr_range_test_step_size >= 1, "schedule::lr_range_test: lr_range_test_step_size (",
               lr_range_test_step_size, ") must be >= 1");
    detail::require_finite_nonnegative("lr_range_test", "lr_range_test_step_rate", lr_range_test_step_rate);
  }

  double lr(long step) const {
    validate();
    detail::require_step("lr_range_test", step);
    if (step < 0) return lr_range_test_min_lr;
    double i = static_cast<double>(step + 1) / static_cast<double>(lr_range_test_step_size);
    if (lr_range_test_staircase) i = std::floor(i);
    return lr_range_test_min_lr * (1.0 + lr_range_test_step_rate * i);
  }
};

/// @brief One of the five schedulers, chosen at run time (e.g. by the `"scheduler"` block
/// of a DeepSpeed config, `engine/ds_config.hpp`): a value type over a `std::variant`,
/// with the same `lr(step)` (same step convention, see the file comment) and
/// `validate()` as the scheduler it holds.
///
///     schedule::any sched = schedule::warmup_lr{.warmup_max_lr = 3e-4, .warmup_num_steps = 100};
///     eng.set_learning_rate(static_cast<float>(sched.lr(step)));
///
/// Default-constructed it holds a default `warmup_lr` (DeepSpeed's class defaults).
class any {
public:
  using variant = std::variant<warmup_lr, warmup_decay_lr, warmup_cosine_lr, one_cycle, lr_range_test>;

  any() = default;
  /// From any of the five (implicit, so `any s = warmup_lr{...};` reads naturally).
  template <class S>
    requires std::is_constructible_v<variant, S&&> && (!std::is_same_v<std::remove_cvref_t<S>, any>)
  any(S&& s) : v_(std::forward<S>(s)) {}

  /// The lr after DeepSpeed's `step()` has run `step + 1` times (see the file comment).
  double lr(long step) const {
    return std::visit([step](const auto& s) { return s.lr(step); }, v_);
  }
  void validate() const {
    std::visit([](const auto& s) { s.validate(); }, v_);
  }
  /// DeepSpeed's class name of the held scheduler ("WarmupLR", ..., "LRRangeTest").
  const char* name() const {
    return std::visit([](const auto& s) { return std::remove_cvref_t<decltype(s)>::deepspeed_name; }, v_);
  }
  /// The held scheduler if it is an `S`, else nullptr.
  template <class S>
  const S* get_if() const { return std::get_if<S>(&v_); }
  template <class S>
  S* get_if() { return std::get_if<S>(&v_); }
  const variant& get() const { return v_; }

private:
  variant v_{};
};

}  // namespace schedule
ZB_NAMESPACE_END
