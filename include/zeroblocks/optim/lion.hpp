/**
 * @file lion.hpp
 * @brief `optim::lion`: Lion (Chen et al. 2023), one fp32 moment beside the master
 *        (K = 8 bytes per element against Adam's 12). The per-element rule is
 *        `kernel::lion_element` (`kernel/lion.hpp`), shared by the host and CUDA kernels.
 *
 * Defaults are the reference implementation's (lion-pytorch): lr 1e-4, betas
 * (0.9, 0.99), no weight decay. Lion's update has unit magnitude per element, so its
 * lr is typically 3–10× smaller than AdamW's and its weight decay as much larger.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../kernel/lion.hpp"
#include "../policy/config.hpp"
#include "adamw.hpp"  // optimizer_tag, optimizer_policy

#include <cmath>

ZB_NAMESPACE_BEGIN

/// @brief Lion hyper-parameters (`cfg.optim`); every one must agree across ranks.
struct lion_config {
  float lr = 1e-4f;
  float beta1 = 0.9f;   ///< interpolation of the update direction
  float beta2 = 0.99f;  ///< decay of the moment
  float weight_decay = 0.0f;  ///< decoupled: p -= lr*wd*p

  void validate() const {
    require_finite_nonnegative("optim.lr", lr);
    require_unit_interval("optim.beta1", beta1);
    require_unit_interval("optim.beta2", beta2);
    require_finite_nonnegative("optim.weight_decay", weight_decay);
  }
  /// Calls `v(name, field)` for each knob that must agree across ranks (`policy/config.hpp`).
  template <class Self, class V>
  static void fields_of(Self& c, V&& v) {
    v("lr", c.lr);
    v("beta1", c.beta1);
    v("beta2", c.beta2);
    v("weight_decay", c.weight_decay);
  }
};

namespace optim {

/// @brief Lion.
struct lion {
  using optimizer_concept = optimizer_tag;
  using config = lion_config;
  using rule = kernel::lion_rule;
  static constexpr const char* name = "lion";
  /// @brief Constants of step t (Lion has no bias correction) with the gradient multiplier.
  static kernel::lion_step_args args(const config& c, long /*t*/, float grad_scale) {
    return kernel::make_lion_args(c.lr, c.beta1, c.beta2, c.weight_decay, grad_scale);
  }
};

static_assert(optimizer_policy<lion>);

}  // namespace optim
ZB_NAMESPACE_END
