/**
 * @file lion.hpp
 * @brief The Lion update rule (Chen et al. 2023, "Symbolic Discovery of Optimization
 *        Algorithms") as one per-element definition shared by every kernel.
 *
 * ```
 * c = b1*m + (1-b1)*g          the update direction, from the moment before this step
 * p = p - lr*wd*p              decoupled decay, as fma(p, -lr*wd, p)
 * p = p - lr*sign(c)
 * m = b2*m + (1-b2)*g          the moment, with the second beta
 * ```
 * One fp32 state array (m) beside the master: K = 8 bytes per element with the master.
 * `sign(0) = 0`, as `torch.sign`. Every multiply-add is an explicit `fmaf`, so a vector
 * path performing the same IEEE operations in order is bit-identical to `lion_element`.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"

#include <cmath>
#include <math.h>

ZB_NAMESPACE_BEGIN
namespace kernel {

/// @brief Per-step constants of Lion.
struct lion_step_args {
  float grad_scale;       ///< 1/(loss_scale*micro_steps) * clip_factor
  float beta1, beta2;
  float one_minus_beta1, one_minus_beta2;
  float neg_lr;           ///< -lr
  float neg_lr_wd;        ///< -(lr*wd), 0 = no decay
};

/// @brief The constants of one step (Lion has no bias correction: `t` is unused).
inline lion_step_args make_lion_args(float lr, float beta1, float beta2, float weight_decay, float grad_scale) {
  ZB_REQUIRE(beta1 >= 0.0f && beta1 < 1.0f, "lion: beta1 must be in [0, 1) (got ", beta1, ")");
  ZB_REQUIRE(beta2 >= 0.0f && beta2 < 1.0f, "lion: beta2 must be in [0, 1) (got ", beta2, ")");
  lion_step_args a{};
  a.grad_scale = grad_scale;
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.one_minus_beta1 = static_cast<float>(1.0 - static_cast<double>(beta1));
  a.one_minus_beta2 = static_cast<float>(1.0 - static_cast<double>(beta2));
  a.neg_lr = -lr;
  a.neg_lr_wd = static_cast<float>(-static_cast<double>(lr) * static_cast<double>(weight_decay));
  return a;
}

/// @brief sign(x) as a float: 1, -1, or x itself for ±0 (and NaN).
ZB_HOST_DEVICE ZB_FORCE_INLINE float sign_of(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x); }

/// @brief The Lion update of one element: the spec every kernel reproduces bit for bit.
ZB_HOST_DEVICE ZB_FORCE_INLINE void lion_element(float& p, float& m, float g_raw, const lion_step_args& a) {
  const float g = g_raw * a.grad_scale;
  const float c = ::fmaf(a.beta1, m, a.one_minus_beta1 * g);
  p = ::fmaf(p, a.neg_lr_wd, p);
  p = ::fmaf(a.neg_lr, sign_of(c), p);
  m = ::fmaf(a.beta2, m, a.one_minus_beta2 * g);
}

/// @brief Lion as an update rule of the generic fused step (`kernel/rule.hpp`).
struct lion_rule {
  static constexpr int state_count = 1;
  static constexpr const char* name = "lion";
  using args = lion_step_args;
  ZB_HOST_DEVICE ZB_FORCE_INLINE static void update(float& p, float* s, float g_raw, const args& a) {
    lion_element(p, s[0], g_raw, a);
  }
};

}  // namespace kernel
ZB_NAMESPACE_END
