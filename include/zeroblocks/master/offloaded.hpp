/**
 * @file offloaded.hpp
 * @brief `master::offloaded`: ZeRO-Offload for GPU ranks — fp32 master, Adam m and v in
 *        pinned host memory, the step on the host kernels, 16-bit gradients down during
 *        backward and 16-bit parameters up.
 *
 * The engine runs on `cuda_space` (gradients and parameters on the GPU); this policy
 * keeps the rank's optimizer state (12 B per owned element) in `cuda_pinned_space` memory
 * (host memory registered with CUDA), plus a pinned copy of the 16-bit gradient shard (2 B per owned
 * element; DeepSpeed keeps an fp32 one, 4 B).
 *
 * Gradients go down during backward. With the stage 2/3 bucketer
 * (`bucket::reduce_scatter`) the engine hands this policy each bucket's block as soon as
 * it has been reduced and accumulated into the shard (`shard_updated`): the block is
 * copied device → host on a copy stream of its own, ordered after the accumulation by
 * an event, while backward goes on. Every micro-step copies its blocks (the shard
 * accumulates on the GPU; the last micro-step's copies carry the final sums), and just
 * before the shard is written again (`shard_will_change`: the next micro-step's first
 * accumulation, or the zeroing after the step) the compute stream waits for the copies
 * in flight — not earlier, so the next forward does not wait for them. With other
 * bucketers (stages 0/1 reduce at the step) the copies start at `step()`, chunk by
 * chunk, overlapped with the host kernel.
 *
 * `apply()` cuts the owned slices into chunks of `cfg.master.chunk_numel` elements
 * and runs the host's fused kernel on each — upcast, unscale, clip, AdamW, writing
 * master, m, v and the new 16-bit parameters into one of two pinned staging buffers —
 * while the previous chunk's parameters go up (host → device) on a second stream. Only
 * 16-bit values cross PCIe: 2 B down (per micro-step) and 2 B up per element (DeepSpeed
 * moves fp32 gradients down: 4 B). The parameters' upload is ordered before later work
 * on the engine's compute stream (`Engine::set_compute_stream`, `ctx.stream`) with an event, so the next
 * forward waits for exactly what it needs. `stats()` counts the bytes each way.
 *
 * Results equal `master::resident` on the host bit for bit: the same host kernel on the
 * same 16-bit gradients.
 *
 * Needs the CUDA runtime headers (not nvcc): link `zeroblocks::cuda`.
 */
#pragma once

#include "../policy/context.hpp"
#include "../kernel/host.hpp"
#include "../space/cuda_space.hpp"
#include "../space/host_space.hpp"
#include "detail/chunks.hpp"
#include "offloaded_plan.hpp"
#include "master.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace master {

/// @brief fp32 master, m, v in pinned host memory; host step; 16-bit copies over PCIe.
struct offloaded {
  using master_concept = master_tag;
  /// Where the state lives (not `space`: it is not the engine's space, by design).
  using state_space = cuda_pinned_space;
  static constexpr const char* name = "offloaded";
  using config = offloaded_config;
  static constexpr master_caps caps{.takes_shard_stream = true};

  /// @brief Elements per pipeline chunk.
  static std::size_t chunk(const config& cfg, std::size_t owned) { return offloaded_chunk(cfg, owned); }

  template <class Ctx>
  class impl {
    using T = typename Ctx::param_type;
    static_assert(!Ctx::space::host_accessible,
                  "master::offloaded: the engine's space must be the GPU (cuda_space); on host ranks use "
                  "master::resident");

  public:
    impl(Ctx& ctx, const config& cfg, master_shape shape)
        : ctx_(ctx),
          owned_(shape.owned_numel),
          chunk_(chunk(cfg, owned_)),
          st_(owned_, &ctx.tracker),
          grad_(owned_, mem_category::staging, &ctx.tracker) {
      for (auto& p : param_) p = buffer<T, cuda_pinned_space>(chunk_, mem_category::staging, &ctx.tracker);
    }
    impl(const impl&) = delete;
    impl& operator=(const impl&) = delete;
    /// Copies still in flight (an engine destroyed between backward and step(), or
    /// unwound) write into the pinned buffers: let them land before those are freed.
    ~impl() {
      (void)cudaStreamSynchronize(down_);
      (void)cudaStreamSynchronize(up_);
    }
    using rule = typename Ctx::rule;
    using state_t = optimizer_state<cuda_pinned_space, rule::state_count>;

    static void declare(master_shape shape, const config& cfg, memory_report& r) {
      offloaded_declare<sizeof(T), rule::state_count>(shape, cfg, r);
    }

    static std::size_t tier_bytes(master_shape, const config&) { return 0; }

    void set(std::size_t offset, const float* values, std::size_t n) {
      std::memcpy(st_.master.data() + offset, values, n * sizeof(float));
    }
    void read_master(std::size_t offset, float* out, std::size_t n) const { read_state(0, offset, out, n); }
    /// @brief Array `which` (0: master; k ≥ 1: the rule's state array k−1) in host memory.
    void read_state(int which, std::size_t offset, float* out, std::size_t n) const {
      std::memcpy(out, array(which) + offset, n * sizeof(float));
    }
    void write_state(int which, std::size_t offset, const float* in, std::size_t n) {
      std::memcpy(array(which) + offset, in, n * sizeof(float));
    }
    const offloaded_stats& stats() const { return stats_; }

    /// @brief A reduced block of the gradient shard (device memory, owned elements
    /// `[offset, offset + n)`) is final for this micro-step: copy it down now.
    void shard_updated(std::size_t offset, const T* data, std::size_t n) {
      if (n == 0) return;
      ZB_REQUIRE(offset <= owned_ && n <= owned_ - offset, "master::offloaded: gradient block [", offset, ", ",
                 offset + n, ") outside the ", owned_, " owned elements");
      ready_.record(ctx_.stream);
      ready_.enqueue_wait(down_);
      cuda_space::copy_async(grad_.data() + offset, data, n * sizeof(T), down_);
      streamed_ += n;
      in_flight_ = true;
      stats_.grad_bytes_down_backward += n * sizeof(T);
    }
    /// @brief The shard is about to be written (a micro-step's first accumulation, or
    /// the zeroing): the copies reading it must be done first, and the micro-step
    /// copies it anew.
    void shard_will_change() {
      if (in_flight_) {
        copied_.record(down_);
        copied_.enqueue_wait(ctx_.stream);
        in_flight_ = false;
      }
      streamed_ = 0;
    }

    /// @brief The step: (gradients down,) host fused pass, parameters up, pipelined.
    void apply(const std::vector<step_slice<T>>& slices, const std::vector<typename rule::args>& per_group) {
      // Pieces of at most one chunk (the staging buffers' size), cut as master::swapped cuts
      // its sub-groups.
      const auto work = detail::cut_into_chunks(slices, chunk_);
      if (work.empty()) return;
      const cudaStream_t compute = ctx_.stream;
      // The gradients are final, and the parameters free to be overwritten, once the
      // compute stream's work so far is done: both copy streams follow it.
      ready_.record(compute);
      ready_.enqueue_wait(up_);
      // Streamed during backward: every owned element's final block went down already.
      const bool streamed = streamed_ == owned_;
      if (streamed) {
        down_.synchronize();
      } else {
        ready_.enqueue_wait(down_);
        while (fetched_.size() < work.size()) fetched_.emplace_back();
        for (std::size_t k = 0; k < work.size(); ++k) {
          cuda_space::copy_async(grad_.data() + work[k].master_offset, work[k].grad, work[k].numel * sizeof(T), down_);
          fetched_[k].record(down_);
          stats_.grad_bytes_down_step += work[k].numel * sizeof(T);
        }
      }
      for (std::size_t k = 0; k < work.size(); ++k) {
        const int b = static_cast<int>(k % 2);
        if (!streamed) fetched_[k].synchronize();
        // Staging b's parameters (chunk k-2's) must have gone up before they are overwritten.
        if (k >= 2) uploaded_[b].synchronize();
        const auto& w = work[k];
        const std::size_t o = w.master_offset;
        kernel::fused_step<rule>(st_.master.data() + o, st_.states(o).data(), grad_.data() + o, param_[b].data(),
                                 w.numel, per_group[w.group], ctx_.threads);
        cuda_space::copy_async(w.param, param_[b].data(), w.numel * sizeof(T), up_);
        uploaded_[b].record(up_);
        stats_.param_bytes_up += w.numel * sizeof(T);
      }
      // Later work on the compute stream (the next forward, the parameter all-gather)
      // follows the last upload.
      done_.record(up_);
      done_.enqueue_wait(compute);
      up_.synchronize();  // staging is reused by the next step; nothing is left in flight
      in_flight_ = false;  // every copy down was waited for above
      ++stats_.steps;
    }

  private:
    float* array(int which) const { return which == 0 ? st_.master.data() : st_.state[which - 1].data(); }

    Ctx& ctx_;
    std::size_t owned_;
    std::size_t chunk_;
    state_t st_;
    buffer<T, cuda_pinned_space> grad_;      ///< the 16-bit gradient shard, on the host
    buffer<T, cuda_pinned_space> param_[2];  ///< new 16-bit parameters of chunk k, k+1
    cuda_stream down_, up_;
    cuda_event ready_, copied_, uploaded_[2], done_;
    std::vector<cuda_event> fetched_;  ///< per chunk, for copies started at step()
    std::size_t streamed_ = 0;         ///< elements copied down in this micro-step
    bool in_flight_ = false;           ///< copies down may still be reading the shard
    offloaded_stats stats_;
  };
};

}  // namespace master
ZB_NAMESPACE_END
