/**
 * @file on_demand.hpp
 * @brief `coordinate::on_demand`: stage 3 without prefetch. Each rank holds its 16-bit
 * shard; acquiring a unit all-gathers it into a freshly allocated buffer (counted as
 * `gathered`), releasing the last hold frees it. Every acquire waits for its gather,
 * after the engine checked that every rank acquires the same unit at the same position
 * (`checks_acquire`). The baseline that `prefetch_trace` improves on.
 */
#pragma once

#include "../policy/context.hpp"
#include "../space/host_space.hpp"
#include "coordinate.hpp"

#include <algorithm>
#include <chrono>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace coordinate {

/// @brief Gather a unit when acquired, free it when released.
struct on_demand {
  using coordinator_concept = coordinator_tag;
  static constexpr bool shards_params = true;
  static constexpr const char* name = "on_demand";
  using config = no_config;
  static constexpr coordinator_caps caps{.checks_acquire = true};

  template <class Ctx>
  class impl {
    using T = typename Ctx::param_type;

  public:
    impl(Ctx& ctx, const config&)
        : ctx_(ctx),
          shard_(ctx.lay.shard_numel(), mem_category::params16, &ctx.tracker),
          gathered_(ctx.lay.unit_count()) {
      shard_.zero();
    }
    static void declare(const layout& lay, const config&, int, memory_report& r,
                        std::size_t elem_bytes) {
      r.current[static_cast<std::size_t>(mem_category::params16)] += lay.shard_numel() * elem_bytes;
    }

    /// Every acquire gathers: each unit twice per micro-step.
    static void step_traffic(const layout& lay, const config&, step_shape s, bool, comm_counters& t) {
      for (int k = 0; k < 2 * s.micro_steps; ++k)
        for (std::size_t u = 0; u < lay.unit_count(); ++u) t.count_all_gather(lay.unit(u).slice_numel, lay.world());
    }

    bool checks_acquire(std::size_t) const { return true; }

    const T* acquire(std::size_t u) {
      const auto& up = ctx_.lay.unit(u);
      auto& g = gathered_[u];
      g = buffer<T, typename Ctx::space>(up.padded_numel, mem_category::gathered, &ctx_.tracker);
      stats_.live_numel += up.padded_numel;
      stats_.peak_live_numel = std::max(stats_.peak_live_numel, stats_.live_numel);
      ++stats_.acquires;
      ++stats_.misses;
      ++stats_.gathers;
      stats_.gathered_numel += up.padded_numel;
      const auto t0 = std::chrono::steady_clock::now();
      ctx_.gather_comm.all_gather(shard_.data() + up.shard_offset, g.data(), up.slice_numel);
      stats_.wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      return g.data();
    }
    void release(std::size_t u) {
      stats_.live_numel -= ctx_.lay.unit(u).padded_numel;
      gathered_[u].reset();
    }
    coordinator_stats stats() const { return stats_; }
    T* owned_slice(std::size_t u, int) { return shard_.data() + ctx_.lay.unit(u).shard_offset; }
    void publish(bool) {}

  private:
    Ctx& ctx_;
    buffer<T, typename Ctx::space> shard_;
    std::vector<buffer<T, typename Ctx::space>> gathered_;
    coordinator_stats stats_;
  };
};

}  // namespace coordinate
ZB_NAMESPACE_END
