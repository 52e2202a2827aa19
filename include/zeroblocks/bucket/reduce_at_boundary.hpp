/**
 * @file reduce_at_boundary.hpp
 * @brief `bucket::reduce_at_boundary`: stage 1. Full local gradients accumulate over
 * micro-steps (2Ψ bytes); at the boundary each unit is reduce-scattered in place, so
 * rank r's averaged slice lands where its own slice was — no extra shard buffer. All
 * units' reductions are in flight together.
 *
 * With fp32 accumulation (`grad_accum_dtype::fp32`) each micro-step is reduce-scattered
 * into this rank's fp32 gradient shard (4Ψ/N) instead (`detail/full_grads.hpp`).
 */
#pragma once

#include "bucket.hpp"
#include "detail/full_grads.hpp"

#include <vector>

ZB_NAMESPACE_BEGIN
namespace bucket {

/// @brief Stage 1 gradient reduction.
struct reduce_at_boundary {
  using bucketer_concept = bucketer_tag;
  static constexpr bool shards_grads = false;
  static constexpr bool shards_master = true;
  static constexpr const char* name = "reduce_at_boundary";
  using config = no_config;
  static constexpr bucketer_caps caps{};

  template <class Ctx>
  class impl : public detail::full_grads<Ctx, false> {
    using base = detail::full_grads<Ctx, false>;

  public:
    using base::base;
    static void declare(const layout& lay, const config&, int, memory_report& r, std::size_t elem_bytes,
                        bool accum32) {
      base::declare(lay, r, elem_bytes, accum32);
    }
    /// One reduce-scatter of every unit per step (fp32 accumulation: per micro-step).
    static void step_traffic(const layout& lay, const config&, step_shape s, comm_counters& t) {
      if (s.accum32) return base::accum32_traffic(lay, s, t);
      for (std::size_t u = 0; u < lay.unit_count(); ++u) t.count_reduce_scatter(lay.unit(u).slice_numel, lay.world());
    }
    void reduce_for_step() {
      auto& ctx = this->ctx_;
      if (ctx.accum32) return;  // reduced at every micro-step
      const float avg = 1.0f / static_cast<float>(ctx.world());
      std::vector<typename Ctx::comm_type::request> pending;
      pending.reserve(ctx.lay.unit_count());
      for (std::size_t u = 0; u < ctx.lay.unit_count(); ++u) {
        const auto& up = ctx.lay.unit(u);
        T* base_ptr = this->unit_base(u);
        pending.push_back(ctx.comm.ireduce_scatter(
            base_ptr, base_ptr + static_cast<std::size_t>(ctx.rank()) * up.slice_numel,
            up.slice_numel, avg));
      }
      for (std::size_t u = 0; u < pending.size(); ++u) {
        pending[u].wait();
        this->note_stats(u);  // the one-pass step: while the next units are in flight
      }
    }

  private:
    using T = typename Ctx::param_type;
  };
};

}  // namespace bucket
ZB_NAMESPACE_END
