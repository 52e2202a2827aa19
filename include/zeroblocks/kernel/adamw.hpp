/**
 * @file adamw.hpp
 * @brief The AdamW update rule as one per-element definition, shared by every kernel.
 *
 * The optimizer step of every master-state policy ends in the same arithmetic on one
 * element: upcast-and-unscale the 16-bit gradient, optionally add L2 decay, update the
 * first and second moments, bias-correct, apply decoupled decay and move the parameter.
 * `adamw_element` is that arithmetic, written once and marked `ZB_HOST_DEVICE` so the
 * host loops (`kernel/host.hpp`, scalar / AVX2 / AVX-512) and the CUDA kernel use the
 * very same expression. Every multiply-add is an explicit `fmaf`, so no compiler
 * contraction (`-ffp-contract`) can change a result: a vector path that performs the
 * same IEEE operations in the same order is bit-identical to this function, and the
 * tests hold every path to that.
 *
 * `make_adamw_args` folds everything that is constant within one step (bias
 * corrections, the decay factor, the combined unscale · clip factor) on the host, in
 * double, and rounds each to float once.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"

#include <cmath>
#include <math.h>  // ::fmaf / ::sqrtf, the spellings host and CUDA device code share

ZB_NAMESPACE_BEGIN
namespace kernel {

/// @brief Per-step constants of the fused AdamW pass, computed once on the host.
struct adamw_step_args {
  float grad_scale;    ///< multiplies the upcast gradient: 1/(loss_scale*micro_steps) * clip_factor
  float lr;            ///< learning rate of this step
  float beta1, beta2, eps;
  float weight_decay;
  bool decoupled;      ///< true: AdamW (p *= 1 - lr*wd); false: L2 (g += wd*p)
  float step_size;     ///< lr / (1 - beta1^t)
  float inv_sqrt_bc2;  ///< 1 / sqrt(1 - beta2^t)
  float one_minus_beta1, one_minus_beta2;  ///< 1-b1, 1-b2
  float neg_lr_wd;     ///< -(lr*wd) for decoupled decay, 0 with L2: p = fma(p, -lr*wd, p)
};

/**
 * @brief Build the constants of optimizer step `t` (the first step is `t == 1`).
 *
 * Bias corrections and the decay factor are computed in double and rounded to float
 * once, so they do not depend on how the caller's compiler evaluates float
 * expressions. `neg_lr_wd` is 0 when `decoupled` is false (L2 decay goes through the
 * gradient instead).
 *
 * Decoupled decay is applied as `fma(p, -lr*wd, p)`, not `p * float(1 - lr*wd)`: the
 * factor 1 - lr*wd rounded to float carries a relative error of up to 3e-8 that repeats
 * with the same sign every step (about -1.4e-8 per step at lr 1e-3, wd 0.01: a drift
 * of 1.4e-5 over 1000 steps against a float64 AdamW), while -lr*wd itself rounds with a
 * relative error of 6e-8 of a quantity 1e5 times smaller, and the fma rounds once.
 */
inline adamw_step_args make_adamw_args(float lr, float beta1, float beta2, float eps,
                                       float weight_decay, bool decoupled, long t,
                                       float grad_scale) {
  ZB_REQUIRE(t >= 1, "adamw: step t must be >= 1 (got ", t, ")");
  ZB_REQUIRE(beta1 >= 0.0f && beta1 < 1.0f, "adamw: beta1 must be in [0, 1) (got ", beta1, ")");
  ZB_REQUIRE(beta2 >= 0.0f && beta2 < 1.0f, "adamw: beta2 must be in [0, 1) (got ", beta2, ")");
  ZB_REQUIRE(eps >= 0.0f, "adamw: eps must be >= 0 (got ", eps, ")");
  adamw_step_args a{};
  a.grad_scale = grad_scale;
  a.lr = lr;
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.eps = eps;
  a.weight_decay = weight_decay;
  a.decoupled = decoupled;
  const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(t));
  a.step_size = static_cast<float>(static_cast<double>(lr) / bc1);
  a.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  a.one_minus_beta1 = static_cast<float>(1.0 - static_cast<double>(beta1));
  a.one_minus_beta2 = static_cast<float>(1.0 - static_cast<double>(beta2));
  a.neg_lr_wd = decoupled ? static_cast<float>(-static_cast<double>(lr) * static_cast<double>(weight_decay)) : 0.0f;
  return a;
}

/**
 * @brief The AdamW update of one element: the spec every kernel reproduces bit for bit.
 *
 * @param p      fp32 master parameter (updated)
 * @param m      first moment (updated)
 * @param v      second moment (updated)
 * @param g_raw  gradient already widened to float, not yet unscaled
 * @param a      the step constants from `make_adamw_args`
 */
ZB_HOST_DEVICE ZB_FORCE_INLINE void adamw_element(float& p, float& m, float& v, float g_raw,
                                                  const adamw_step_args& a) {
  float g = g_raw * a.grad_scale;
  if (!a.decoupled) g = ::fmaf(a.weight_decay, p, g);  // L2: decay enters the moments
  m = ::fmaf(a.beta1, m, a.one_minus_beta1 * g);
  // (1-b2)*g first, then *g: two roundings, in this order, on every path.
  v = ::fmaf(a.beta2, v, (a.one_minus_beta2 * g) * g);
  const float denom = ::fmaf(::sqrtf(v), a.inv_sqrt_bc2, a.eps);
  if (a.decoupled) p = ::fmaf(p, a.neg_lr_wd, p);
  p = ::fmaf(-a.step_size, m / denom, p);
}

/// @brief AdamW as an update rule of the generic fused step (`kernel/rule.hpp`): two
/// fp32 state arrays beside the master (m, v). The host and CUDA kernels run it through
/// their dedicated `fused_adamw` paths.
struct adamw_rule {
  static constexpr int state_count = 2;
  static constexpr const char* name = "adamw";
  using args = adamw_step_args;
  ZB_HOST_DEVICE ZB_FORCE_INLINE static void update(float& p, float* s, float g_raw, const args& a) {
    adamw_element(p, s[0], s[1], g_raw, a);
  }
};

}  // namespace kernel
ZB_NAMESPACE_END
