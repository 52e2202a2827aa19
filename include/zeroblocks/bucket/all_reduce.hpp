/**
 * @file all_reduce.hpp
 * @brief `bucket::all_reduce`: stage 0, plain data parallelism — the reference every
 * other stage is tested against. Full gradients, all-reduced (averaged) per unit at
 * the accumulation boundary; every rank then holds the whole averaged gradient and
 * updates all parameters itself.
 *
 * With fp32 accumulation (`grad_accum_dtype::fp32`) each micro-step is reduce-scattered
 * into this rank's slices of a full fp32 sum, and the boundary all-gathers the fp32
 * slices instead of all-reducing T (`detail/full_grads.hpp`).
 */
#pragma once

#include "bucket.hpp"
#include "detail/full_grads.hpp"

#include <vector>

ZB_NAMESPACE_BEGIN
namespace bucket {

/// @brief Stage 0 gradient reduction.
struct all_reduce {
  using bucketer_concept = bucketer_tag;
  static constexpr bool shards_grads = false;
  static constexpr bool shards_master = false;
  static constexpr const char* name = "all_reduce";
  using config = no_config;
  static constexpr bucketer_caps caps{};

  template <class Ctx>
  class impl : public detail::full_grads<Ctx, true> {
    using base = detail::full_grads<Ctx, true>;

  public:
    using base::base;
    static void declare(const layout& lay, const config&, int, memory_report& r, std::size_t elem_bytes,
                        bool accum32) {
      base::declare(lay, r, elem_bytes, accum32);
    }
    /// One all-reduce of every unit per step (fp32 accumulation: a reduce-scatter per
    /// micro-step, then an all-gather of the fp32 sum).
    static void step_traffic(const layout& lay, const config&, step_shape s, comm_counters& t) {
      if (s.accum32) {
        base::accum32_traffic(lay, s, t);
        for (std::size_t u = 0; u < lay.unit_count(); ++u) t.count_all_gather(lay.unit(u).slice_numel, lay.world());
        return;
      }
      for (std::size_t u = 0; u < lay.unit_count(); ++u) t.count_all_reduce(lay.unit(u).padded_numel);
    }
    void reduce_for_step() {
      auto& ctx = this->ctx_;
      if (ctx.accum32) {  // every rank gets every slice of the fp32 sum
        std::vector<typename Ctx::comm_type::request> pending;
        pending.reserve(ctx.lay.unit_count());
        for (std::size_t u = 0; u < ctx.lay.unit_count(); ++u)
          pending.push_back(ctx.comm.iall_gather(this->acc_slice(u, ctx.rank()), this->acc_slice(u, 0),
                                                 ctx.lay.unit(u).slice_numel));
        for (auto& p : pending) p.wait();  // (own slices' statistics: end_micro_step)
        return;
      }
      const float avg = 1.0f / static_cast<float>(ctx.world());
      std::vector<typename Ctx::comm_type::request> pending;  // every unit in flight at once
      pending.reserve(ctx.lay.unit_count());
      for (std::size_t u = 0; u < ctx.lay.unit_count(); ++u)
        pending.push_back(ctx.comm.iall_reduce(this->unit_base(u), ctx.lay.unit(u).padded_numel, avg));
      for (std::size_t u = 0; u < pending.size(); ++u) {
        pending[u].wait();
        this->note_stats(u);  // the one-pass step: while the next units are in flight
      }
    }
  };
};

}  // namespace bucket
ZB_NAMESPACE_END
