/**
 * @file resident.hpp
 * @brief `coordinate::resident`: full 16-bit parameters always in memory (stages 0–2).
 */
#pragma once

#include "../policy/context.hpp"
#include "../space/host_space.hpp"
#include "coordinate.hpp"

#include <vector>

ZB_NAMESPACE_BEGIN
namespace coordinate {

/// @brief Full parameters resident on every rank.
struct resident {
  using coordinator_concept = coordinator_tag;
  static constexpr bool shards_params = false;
  static constexpr const char* name = "resident";
  using config = no_config;
  static constexpr coordinator_caps caps{};

  template <class Ctx>
  class impl {
    using T = typename Ctx::param_type;

  public:
    impl(Ctx& ctx, const config&)
        : ctx_(ctx),
          params_(ctx.lay.total_numel(), mem_category::params16, &ctx.tracker) {
      params_.zero();
    }
    static void declare(const layout& lay, const config&, int, memory_report& r,
                        std::size_t elem_bytes) {
      r.current[static_cast<std::size_t>(mem_category::params16)] += lay.total_numel() * elem_bytes;
    }

    /// After a sharded step, one all-gather of every unit's slices.
    static void step_traffic(const layout& lay, const config&, step_shape, bool sharded_step, comm_counters& t) {
      if (sharded_step)
        for (std::size_t u = 0; u < lay.unit_count(); ++u) t.count_all_gather(lay.unit(u).slice_numel, lay.world());
    }

    const T* acquire(std::size_t u) { return params_.data() + ctx_.lay.unit(u).offset; }
    void release(std::size_t) {}
    T* owned_slice(std::size_t u, int r) {
      const auto& up = ctx_.lay.unit(u);
      return params_.data() + up.offset + static_cast<std::size_t>(r) * up.slice_numel;
    }
    /// @brief After a sharded step: every rank's slices to every rank (in place).
    void publish(bool sharded_step) {
      if (!sharded_step) return;  // every rank updated every slice itself
      std::vector<typename Ctx::comm_type::request> pending;
      pending.reserve(ctx_.lay.unit_count());
      for (std::size_t u = 0; u < ctx_.lay.unit_count(); ++u)
        pending.push_back(ctx_.gather_comm.iall_gather(owned_slice(u, ctx_.rank()), params_.data() + ctx_.lay.unit(u).offset,
                                                ctx_.lay.unit(u).slice_numel));
      for (auto& p : pending) p.wait();
    }
    coordinator_stats stats() const { return {}; }
    /// @brief Full parameters of the whole model (for inspection).
    const T* full() const { return params_.data(); }

  private:
    Ctx& ctx_;
    buffer<T, typename Ctx::space> params_;
  };
};

}  // namespace coordinate
ZB_NAMESPACE_END
