/**
 * @file adamw.hpp
 * @brief The optimizer role: the update rule. Policies `optim::adamw` (here),
 *        `optim::lion` (`lion.hpp`), `optim::sgd` / `optim::sgd_plain` (`sgd.hpp`).
 *
 * An optimizer policy is a tag with `using optimizer_concept = optimizer_tag;`, its
 * hyper-parameters as `config` (with an `lr`, which `engine::set_learning_rate`
 * changes), `using rule = ...` — the per-element update shared by the host and CUDA
 * kernels, which also fixes the state layout (`rule::state_count` fp32 arrays beside
 * the fp32 master: K = 4 × (1 + state_count) bytes per element in the ZeRO formulas) —
 * and `args(config, step, grad_scale) -> rule::args`, the constants of one step. The
 * master-state policies run whatever rule they are given (`kernel::fused_step`).
 *
 * Adam with bias correction and either decoupled weight decay (AdamW, Loshchilov &
 * Hutter; `p *= 1 - lr*wd`) or L2 (`g += wd*p`). The per-element arithmetic is
 * `kernel::adamw_element` (`kernel/adamw.hpp`), shared by the host and CUDA kernels; this
 * policy holds the hyper-parameters and produces the per-step constants.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../kernel/adamw.hpp"
#include "../policy/config.hpp"

#include <cmath>
#include <concepts>
#include <cstddef>

ZB_NAMESPACE_BEGIN

/// @brief Tag that marks a type as an optimizer policy.
struct optimizer_tag {};

/// @brief AdamW hyper-parameters (PyTorch defaults, but weight decay 0.01 as AdamW).
struct adamw_config {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.01f;
  bool decoupled = true;  ///< AdamW; false = L2 regularisation (classic Adam)

  void validate() const {
    require_finite_nonnegative("optim.lr", lr);
    require_unit_interval("optim.beta1", beta1);
    require_unit_interval("optim.beta2", beta2);
    ZB_REQUIRE(eps > 0.0f && std::isfinite(eps), "optim.eps ", eps, " must be finite and > 0");
    require_finite_nonnegative("optim.weight_decay", weight_decay);
  }
  /// Calls `v(name, field)` for each knob that must agree across ranks (`policy/config.hpp`).
  template <class Self, class V>
  static void fields_of(Self& c, V&& v) {
    v("lr", c.lr);
    v("beta1", c.beta1);
    v("beta2", c.beta2);
    v("eps", c.eps);
    v("weight_decay", c.weight_decay);
    v("decoupled", c.decoupled);
  }
};

/// @brief An optimizer: tagged, with its own `config` (which has an `lr`, the knob the
/// engine's `set_learning_rate` changes), its per-element `rule` (state layout and
/// update) and `args(config, step, grad_scale)`, the per-step constants of the rule.
template <class O>
concept optimizer_policy = std::same_as<typename O::optimizer_concept, optimizer_tag> &&
                           policy_config<typename O::config> &&
                           requires(typename O::config& c, long t, float s) {
                             { c.lr } -> std::convertible_to<float>;
                             { c.weight_decay } -> std::convertible_to<float>;  // parameter groups override it
                             { O::rule::state_count } -> std::convertible_to<int>;
                             { O::args(c, t, s) } -> std::same_as<typename O::rule::args>;
                           };

/// @brief fp32 bytes per element an optimizer keeps: the master and its state arrays
/// (the ZeRO paper's K: Adam 12, Lion 8, SGD with momentum 8, plain SGD 4).
template <class O>
inline constexpr std::size_t optimizer_state_bytes = 4 * (1 + static_cast<std::size_t>(O::rule::state_count));

namespace optim {

/// @brief Adam / AdamW.
struct adamw {
  using optimizer_concept = optimizer_tag;
  using config = adamw_config;
  using rule = kernel::adamw_rule;
  static constexpr const char* name = "adamw";

  /// @brief Constants of step t (1-based) with the given gradient multiplier.
  static kernel::adamw_step_args args(const config& c, long t, float grad_scale) {
    return kernel::make_adamw_args(c.lr, c.beta1, c.beta2, c.eps, c.weight_decay, c.decoupled, t,
                                   grad_scale);
  }
};

}  // namespace optim
ZB_NAMESPACE_END
