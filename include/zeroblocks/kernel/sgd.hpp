/**
 * @file sgd.hpp
 * @brief SGD with momentum and optional Nesterov (PyTorch's `torch.optim.SGD` with
 *        dampening 0) as one per-element definition shared by every kernel.
 *
 * ```
 * g = g + wd*p                 weight decay as L2, as PyTorch's SGD
 * b = mu*b + g                 momentum buffer (starts at 0, so the first b is g)
 * g = nesterov ? g + mu*b : b
 * p = p - lr*g
 * ```
 * `sgd_rule<true>` keeps the buffer (one fp32 state array: K = 8 bytes per element with
 * the master); `sgd_rule<false>` is plain SGD with no state (K = 4). Every multiply-add
 * is an explicit `fmaf`: a vector path with the same operations in order is
 * bit-identical to `sgd_element`.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"

#include <math.h>

ZB_NAMESPACE_BEGIN
namespace kernel {

/// @brief Per-step constants of SGD.
struct sgd_step_args {
  float grad_scale;    ///< 1/(loss_scale*micro_steps) * clip_factor
  float momentum;      ///< mu (ignored without a buffer)
  float weight_decay;  ///< L2, 0 = none
  bool nesterov;
  float neg_lr;        ///< -lr
};

inline sgd_step_args make_sgd_args(float lr, float momentum, float weight_decay, bool nesterov, float grad_scale) {
  ZB_REQUIRE(momentum >= 0.0f && momentum < 1.0f, "sgd: momentum must be in [0, 1) (got ", momentum, ")");
  return {grad_scale, momentum, weight_decay, nesterov, -lr};
}

/// @brief The SGD update of one element; `b` is the momentum buffer when `Momentum`.
template <bool Momentum>
ZB_HOST_DEVICE ZB_FORCE_INLINE void sgd_element(float& p, float* b, float g_raw, const sgd_step_args& a) {
  float g = ::fmaf(a.weight_decay, p, g_raw * a.grad_scale);
  if constexpr (Momentum) {
    b[0] = ::fmaf(a.momentum, b[0], g);
    g = a.nesterov ? ::fmaf(a.momentum, b[0], g) : b[0];
  }
  p = ::fmaf(a.neg_lr, g, p);
}

/// @brief SGD as an update rule of the generic fused step (`kernel/rule.hpp`).
template <bool Momentum>
struct sgd_rule {
  static constexpr int state_count = Momentum ? 1 : 0;
  static constexpr const char* name = Momentum ? "sgd" : "sgd_plain";
  using args = sgd_step_args;
  ZB_HOST_DEVICE ZB_FORCE_INLINE static void update(float& p, float* s, float g_raw, const args& a) {
    sgd_element<Momentum>(p, s, g_raw, a);
  }
};

}  // namespace kernel
ZB_NAMESPACE_END
