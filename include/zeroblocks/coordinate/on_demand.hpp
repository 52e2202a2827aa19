/**
 * @file on_demand.hpp
 * @brief `coordinate::on_demand`: stage 3 without prefetch. Each rank holds its 16-bit
 * shard; acquiring a unit all-gathers it into a freshly allocated buffer (counted as
 * `gathered`), releasing the last hold frees it. Every acquire waits for its gather.
 */
#pragma once

#include "../engine/context.hpp"
#include "../space/host_space.hpp"
#include "coordinate.hpp"

#include <vector>

ZB_NAMESPACE_BEGIN
namespace coordinate {

/// @brief Gather a unit when acquired, free it when released.
struct on_demand {
  using coordinator_concept = coordinator_tag;
  static constexpr bool shards_params = true;
  static constexpr const char* name = "on_demand";

  template <class Ctx>
  class impl {
    using T = typename Ctx::param_type;

  public:
    explicit impl(Ctx& ctx)
        : ctx_(ctx),
          shard_(ctx.lay.shard_numel(), mem_category::params16, &ctx.tracker),
          gathered_(ctx.lay.unit_count()) {
      shard_.zero();
    }
    static void declare(const layout& lay, const engine_config&, int, memory_report& r,
                        std::size_t elem_bytes) {
      r.current[static_cast<std::size_t>(mem_category::params16)] += lay.shard_numel() * elem_bytes;
    }

    const T* acquire(std::size_t u) {
      const auto& up = ctx_.lay.unit(u);
      auto& g = gathered_[u];
      g = buffer<T, typename Ctx::space>(up.padded_numel, mem_category::gathered, &ctx_.tracker);
      ctx_.gather_comm.all_gather(shard_.data() + up.shard_offset, g.data(), up.slice_numel);
      return g.data();
    }
    void release(std::size_t u) { gathered_[u].reset(); }
    T* owned_slice(std::size_t u, int) { return shard_.data() + ctx_.lay.unit(u).shard_offset; }
    void publish(bool) {}

  private:
    Ctx& ctx_;
    buffer<T, typename Ctx::space> shard_;
    std::vector<buffer<T, typename Ctx::space>> gathered_;
  };
};

}  // namespace coordinate
ZB_NAMESPACE_END
