/**
 * @file detail/full_grads.hpp
 * @brief Full local 16-bit gradients accumulated over micro-steps: the storage shared
 * by `bucket::all_reduce` (stage 0) and `bucket::reduce_at_boundary` (stage 1). They
 * differ only in the collective run at the accumulation boundary.
 */
#pragma once

#include "../../policy/context.hpp"
#include "../../kernel/host.hpp"
#include "../../space/host_space.hpp"
#include "../../space/ops.hpp"

#include <cstring>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace bucket::detail {

template <class Ctx>
class full_grads {
  using T = typename Ctx::param_type;

public:
  template <class Config>
  full_grads(Ctx& ctx, const Config&)
      : ctx_(ctx), grads_(ctx.lay.total_numel(), mem_category::grads16, &ctx.tracker) {
    grads_.zero();
  }
  static void declare(const layout& lay, memory_report& r, std::size_t elem_bytes) {
    r.current[static_cast<std::size_t>(mem_category::grads16)] += lay.total_numel() * elem_bytes;
  }

  void begin_micro_step() {}
  void grad_ready(std::size_t p, const T* g) {
    const auto& pp = ctx_.lay.param(p);
    if (pp.numel == 0) return;  // (an empty span may carry a null pointer)
    T* dst = grads_.data() + pp.offset;
    // The first micro-step of a step copies; later ones add with one rounding.
    if (micro_steps_ == 0) ctx_.ops().copy(dst, g, pp.numel * sizeof(T));
    else ctx_.ops().accumulate(dst, g, pp.numel, ctx_.threads);
  }
  void end_micro_step() { ++micro_steps_; }
  void zero() {
    ctx_.ops().fill_zero(grads_.data(), grads_.bytes());  // stream-ordered on the GPU
    micro_steps_ = 0;
  }
  T* unit_base(std::size_t u) { return grads_.data() + ctx_.lay.unit(u).offset; }
  const T* grad_slice(std::size_t u, int r) {
    return unit_base(u) + static_cast<std::size_t>(r) * ctx_.lay.unit(u).slice_numel;
  }

protected:
  Ctx& ctx_;
  buffer<T, typename Ctx::space> grads_;
  int micro_steps_ = 0;
};

}  // namespace bucket::detail
ZB_NAMESPACE_END
