/**
 * @file scale.hpp
 * @brief The loss-scaler role: fp16 overflow handling. Policies `scale::none`,
 * `scale::fixed`, `scale::dynamic`.
 *
 * The trainer multiplies its loss by `engine.loss_scale()` before backward; the engine
 * divides it out inside the fused step. Whatever the policy, a step whose gradients hold
 * Inf or NaN is skipped on every rank (the overflow flag is all-reduced) and leaves the
 * master state untouched. `dynamic` then halves the scale on the `hysteresis`-th overflow
 * since the scale last grew (DeepSpeed's delayed shift with its default
 * `consecutive_hysteresis = false`: good steps in between do not restore it), never below
 * `min_scale`, and doubles it after `growth_interval` overflow-free steps in a row,
 * which also restores the hysteresis.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../policy/config.hpp"

#include <algorithm>
#include <cmath>
#include <concepts>
#include <string>
#include <utility>
#include <vector>

ZB_NAMESPACE_BEGIN

/// @brief Tag that marks a type as a loss-scaler policy.
struct scaler_tag {};

/// @brief Knob of `scale::fixed` (DeepSpeed name in brackets).
struct fixed_scale_config {
  float scale = 1.0f;  ///< the constant loss scale [loss_scale]
  void validate() const {
    ZB_REQUIRE(scale > 0.0f && std::isfinite(scale), "scale.scale ", scale, " must be finite and > 0");
  }
  /// Calls `v(name, field)` for each knob that must agree across ranks (`policy/config.hpp`).
  template <class Self, class V>
  static void fields_of(Self& c, V&& v) { v("scale", c.scale); }
};

/// @brief Knobs of `scale::dynamic` (DeepSpeed names in brackets).
struct dynamic_scale_config {
  float initial_scale = 65536.0f;  ///< 2^16 [initial_scale_power = 16]
  long growth_interval = 1000;     ///< overflow-free steps before doubling [loss_scale_window]
  int hysteresis = 2;              ///< overflows tolerated before halving [hysteresis]
  float min_scale = 1.0f;          ///< floor [min_loss_scale]
  void validate() const {
    ZB_REQUIRE(std::isfinite(initial_scale) && initial_scale > 0.0f && min_scale > 0.0f && initial_scale >= min_scale,
               "scale: need scale.initial_scale (", initial_scale, ") >= scale.min_scale (", min_scale, ") > 0");
    ZB_REQUIRE(growth_interval >= 1, "scale.growth_interval must be >= 1 (got ", growth_interval, ")");
    ZB_REQUIRE(hysteresis >= 1, "scale.hysteresis must be >= 1 (got ", hysteresis, ")");
  }
  /// Calls `v(name, field)` for each knob that must agree across ranks (`policy/config.hpp`).
  template <class Self, class V>
  static void fields_of(Self& c, V&& v) {
    v("initial_scale", c.initial_scale);
    v("growth_interval", c.growth_interval);
    v("hysteresis", c.hysteresis);
    v("min_scale", c.min_scale);
  }
};

/// @brief A scaler's run-time state as named numbers (what a checkpoint saves).
using scaler_state = std::vector<std::pair<std::string, double>>;

/// @brief A loss scaler: tagged, built from its own `config`, `scale()`,
/// `update(overflow)`, and its state for checkpoints: `state() -> scaler_state` and
/// `restore(const scaler_state&)` (throws naming a missing value).
template <class S>
concept scaler_policy = std::same_as<typename S::scaler_concept, scaler_tag> && policy_config<typename S::config> &&
                        std::constructible_from<S, const typename S::config&> &&
                        requires(S& s, const S& cs, bool b, const scaler_state& st) {
                          { cs.scale() } -> std::same_as<float>;
                          s.update(b);
                          { cs.state() } -> std::same_as<scaler_state>;
                          s.restore(st);
                        };

namespace detail {
/// The value named `name` in `st`, or an error naming it.
inline double state_value(const scaler_state& st, const char* name) {
  for (const auto& [k, v] : st)
    if (k == name) return v;
  ZB_FAIL("loss scaler state: no value '", name, "'");
}
}  // namespace detail

namespace scale {

/// @brief No scaling (bf16, fp32).
struct none {
  using scaler_concept = scaler_tag;
  static constexpr const char* name = "none";
  using config = no_config;
  explicit none(const config& = {}) {}
  float scale() const { return 1.0f; }
  void update(bool /*overflow*/) {}
  scaler_state state() const { return {}; }
  void restore(const scaler_state&) {}
};

/// @brief A constant scale.
struct fixed {
  using scaler_concept = scaler_tag;
  static constexpr const char* name = "fixed";
  using config = fixed_scale_config;
  explicit fixed(const config& c = {}) : s_(c.scale) {}
  float scale() const { return s_; }
  void update(bool) {}
  scaler_state state() const { return {}; }  // the scale is the config's
  void restore(const scaler_state&) {}

private:
  float s_;
};

/// @brief Dynamic loss scaling with hysteresis.
struct dynamic {
  using scaler_concept = scaler_tag;
  static constexpr const char* name = "dynamic";
  using config = dynamic_scale_config;
  explicit dynamic(const config& c = {}) : c_(c), s_(c.initial_scale), hysteresis_left_(c.hysteresis) {}
  float scale() const { return s_; }
  void update(bool overflow) {
    if (overflow) {
      good_steps_ = 0;
      if (hysteresis_left_ > 1) {
        --hysteresis_left_;
      } else {
        s_ = std::max(s_ * 0.5f, c_.min_scale);
      }
      return;
    }
    if (++good_steps_ % c_.growth_interval == 0) {
      s_ *= 2.0f;
      hysteresis_left_ = c_.hysteresis;
    }
  }
  /// The scale, the overflows still tolerated, and the overflow-free steps in a row
  /// (so a resumed run doubles at the same step as one that never stopped).
  scaler_state state() const {
    return {{"scale", s_}, {"hysteresis_left", hysteresis_left_}, {"good_steps", static_cast<double>(good_steps_)}};
  }
  void restore(const scaler_state& st) {
    s_ = static_cast<float>(detail::state_value(st, "scale"));
    hysteresis_left_ = static_cast<int>(detail::state_value(st, "hysteresis_left"));
    good_steps_ = static_cast<long>(detail::state_value(st, "good_steps"));
  }

private:
  config c_;
  float s_;
  int hysteresis_left_;
  long good_steps_ = 0;
};

static_assert(scaler_policy<none> && scaler_policy<fixed> && scaler_policy<dynamic>);

}  // namespace scale
ZB_NAMESPACE_END
