/**
 * @file sgd.hpp
 * @brief `optim::sgd`: SGD with momentum and optional Nesterov, as PyTorch's
 *        `torch.optim.SGD` with dampening 0 (one fp32 buffer: K = 8 bytes per element);
 *        `optim::sgd_plain`: without a buffer (K = 4). The per-element rule is
 *        `kernel::sgd_element` (`kernel/sgd.hpp`), shared by the host and CUDA kernels.
 *
 * Weight decay is L2 (added to the gradient), as PyTorch's SGD. The first step's
 * buffer equals the gradient (PyTorch initialises it so; here `0*mu + g` is exactly g).
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../kernel/sgd.hpp"
#include "../policy/config.hpp"
#include "adamw.hpp"  // optimizer_tag, optimizer_policy

#include <cmath>

ZB_NAMESPACE_BEGIN

/// @brief SGD hyper-parameters (`cfg.optim`); every one must agree across ranks.
struct sgd_config {
  float lr = 1e-3f;
  float momentum = 0.9f;      ///< `optim::sgd` only (ignored by `sgd_plain`)
  float weight_decay = 0.0f;  ///< L2: g += wd*p
  bool nesterov = false;      ///< `optim::sgd` only

  void validate() const {
    require_finite_nonnegative("optim.lr", lr);
    require_unit_interval("optim.momentum", momentum);
    require_finite_nonnegative("optim.weight_decay", weight_decay);
    ZB_REQUIRE(!nesterov || momentum > 0.0f, "optim.nesterov needs optim.momentum > 0");
  }
  /// Calls `v(name, field)` for each knob that must agree across ranks (`policy/config.hpp`).
  template <class Self, class V>
  static void fields_of(Self& c, V&& v) {
    v("lr", c.lr);
    v("momentum", c.momentum);
    v("weight_decay", c.weight_decay);
    v("nesterov", c.nesterov);
  }
};

namespace optim {

/// @brief SGD; `Momentum` keeps the momentum buffer (one fp32 array).
template <bool Momentum>
struct basic_sgd {
  using optimizer_concept = optimizer_tag;
  using config = sgd_config;
  using rule = kernel::sgd_rule<Momentum>;
  static constexpr const char* name = Momentum ? "sgd" : "sgd_plain";
  static kernel::sgd_step_args args(const config& c, long /*t*/, float grad_scale) {
    return kernel::make_sgd_args(c.lr, Momentum ? c.momentum : 0.0f, c.weight_decay, Momentum && c.nesterov,
                                 grad_scale);
  }
};

/// @brief SGD with momentum (and Nesterov if configured).
using sgd = basic_sgd<true>;
/// @brief SGD without a momentum buffer.
using sgd_plain = basic_sgd<false>;

static_assert(optimizer_policy<sgd> && optimizer_policy<sgd_plain>);

}  // namespace optim
ZB_NAMESPACE_END
