/**
 * @file detail/full_grads.hpp
 * @brief Full local gradients: the storage shared by `bucket::all_reduce` (stage 0)
 * and `bucket::reduce_at_boundary` (stage 1).
 *
 * Accumulation in T (`grad_accum_dtype::param`): each micro-step's local 16-bit
 * gradient is added into a full T buffer; the derived bucketer reduces it once, at the
 * boundary (all-reduce for stage 0, reduce-scatter for stage 1).
 *
 * Accumulation in fp32 (`ctx.accum32`): the T buffer holds one micro-step's local
 * gradient; at each `end_micro_step` every unit is reduce-scattered (T on the wire) and
 * the fp32 sum added to this rank's slices of an fp32 accumulator
 * (`comm.ireduce_scatter_accumulate`) — the very operations stages 2/3 perform, so every
 * stage is bit-identical. Stage 1 keeps only its slices in fp32 (4Ψ/N); stage 0 keeps
 * the full fp32 array (4Ψ) and all-gathers the slices at the boundary, so every rank
 * holds the whole averaged gradient.
 */
#pragma once

#include "../../policy/context.hpp"
#include "../../kernel/host.hpp"
#include "../../space/host_space.hpp"
#include "../../space/ops.hpp"
#include "slice_stats.hpp"

#include <cstring>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace bucket::detail {

/// `Full32`: the fp32 accumulator spans every element (stage 0) or only this rank's
/// slices (stage 1).
template <class Ctx, bool Full32>
class full_grads {
  using T = typename Ctx::param_type;

public:
  template <class Config>
  full_grads(Ctx& ctx, const Config&)
      : ctx_(ctx), grads_(ctx.lay.total_numel(), mem_category::grads16, &ctx.tracker), stats_(ctx.lay.unit_count()) {
    grads_.zero();
    if (ctx.accum32) {
      if constexpr (requires(T* b, float* a) { ctx.comm.ireduce_scatter_accumulate(b, a, std::size_t{}, 1.0f); }) {
        acc_ = buffer<float, typename Ctx::space>(acc_numel(ctx.lay), mem_category::grads32, &ctx.tracker);
        acc_.zero();
      } else {
        ZB_FAIL("fp32 gradient accumulation needs a communicator with ireduce_scatter_accumulate");
      }
    }
  }
  static std::size_t acc_numel(const layout& lay) { return Full32 ? lay.total_numel() : lay.shard_numel(); }
  static void declare(const layout& lay, memory_report& r, std::size_t elem_bytes, bool accum32) {
    r.current[static_cast<std::size_t>(mem_category::grads16)] += lay.total_numel() * elem_bytes;
    if (accum32) r.current[static_cast<std::size_t>(mem_category::grads32)] += acc_numel(lay) * sizeof(float);
  }
  /// fp32 accumulation: one reduce-scatter of every unit per micro-step.
  static void accum32_traffic(const layout& lay, step_shape s, comm_counters& t) {
    for (int k = 0; k < s.micro_steps; ++k)
      for (std::size_t u = 0; u < lay.unit_count(); ++u) t.count_reduce_scatter(lay.unit(u).slice_numel, lay.world());
  }

  void begin_micro_step() { stats_.forget(); }
  void grad_ready(std::size_t p, const T* g) {
    const auto& pp = ctx_.lay.param(p);
    if (pp.numel == 0) return;  // (an empty span may carry a null pointer)
    T* dst = grads_.data() + pp.offset;
    // The first micro-step of a step copies; later ones add with one rounding (fp32
    // accumulation: every micro-step starts from zero, so each copies).
    if (micro_steps_ == 0 || ctx_.accum32) ctx_.ops().copy(dst, g, pp.numel * sizeof(T));
    else ctx_.ops().accumulate(dst, g, pp.numel, ctx_.threads);
  }
  void end_micro_step() {
    ++micro_steps_;
    if (!ctx_.accum32) return;
    if constexpr (requires(T* b, float* a) { ctx_.comm.ireduce_scatter_accumulate(b, a, std::size_t{}, 1.0f); }) {
      const float avg = 1.0f / static_cast<float>(ctx_.world());
      std::vector<typename Ctx::comm_type::request> pending;  // every unit in flight at once
      pending.reserve(ctx_.lay.unit_count());
      for (std::size_t u = 0; u < ctx_.lay.unit_count(); ++u)
        pending.push_back(ctx_.comm.ireduce_scatter_accumulate(unit_base(u), acc_slice(u, ctx_.rank()),
                                                               ctx_.lay.unit(u).slice_numel, avg,
                                                               micro_steps_ == 1));  // the step's first
      for (std::size_t u = 0; u < pending.size(); ++u) {
        pending[u].wait();
        note_stats(u);  // this micro-step's sum, just added: in cache
      }
      // The reduction used the buffer as scratch; parameters a micro-step does not
      // report must count as zero in the next one.
      ctx_.ops().fill_zero(grads_.data(), grads_.bytes());
    }
  }
  void zero() {
    stats_.forget();
    ctx_.ops().fill_zero(grads_.data(), grads_.bytes());  // stream-ordered on the GPU
    // (acc_ needs no zeros: the step's first micro-step writes this rank's slices, and
    // stage 0's all-gather the others, before anything reads them.)
    micro_steps_ = 0;
  }
  T* unit_base(std::size_t u) { return grads_.data() + ctx_.lay.unit(u).offset; }
  const T* grad_slice(std::size_t u, int r) {
    return unit_base(u) + static_cast<std::size_t>(r) * ctx_.lay.unit(u).slice_numel;
  }
  /// fp32 accumulation: slice r of unit u of the fp32 sum (stage 1: this rank's only).
  float* acc_slice(std::size_t u, int r) {
    const auto& up = ctx_.lay.unit(u);
    if constexpr (Full32) return acc_.data() + up.offset + static_cast<std::size_t>(r) * up.slice_numel;
    else return acc_.data() + up.shard_offset;
  }
  const float* grad_slice32(std::size_t u, int r) { return acc_.size() ? acc_slice(u, r) : nullptr; }
  /// The one-pass step: the statistics of this rank's slice of unit `u` as last
  /// reduced (host spaces; nullptr otherwise). (The engine sums every rank's own.)
  const kernel::grad_stats* slice_stats(std::size_t u, int r) const {
    return r == ctx_.rank() ? stats_.get(u) : nullptr;
  }

protected:
  /// Record the statistics of this rank's slice of unit `u`, just written by a
  /// reduction (still in cache): the fp32 sum under fp32 accumulation, else the T sum.
  void note_stats(std::size_t u) {
    if constexpr (Ctx::space::host_accessible) {
      const std::size_t n = ctx_.lay.unit(u).slice_numel;
      stats_.set(u, ctx_.accum32 ? kernel::grad_sumsq(grad_slice32(u, ctx_.rank()), n, ctx_.threads)
                                 : kernel::grad_sumsq(grad_slice(u, ctx_.rank()), n, ctx_.threads));
    }
  }

  Ctx& ctx_;
  buffer<T, typename Ctx::space> grads_;
  buffer<float, typename Ctx::space> acc_;  ///< fp32 accumulation only
  int micro_steps_ = 0;
  slice_stats_table stats_;
};

}  // namespace bucket::detail
ZB_NAMESPACE_END
