/**
 * @file resident.hpp
 * @brief `master::resident<Space>`: fp32 master, Adam m and v of the rank's owned
 * elements held in `Space` (the engine's); the step runs the fused kernel of `space_ops<Space>`
 * on them (host loops, or the CUDA kernel for `cuda_space`).
 */
#pragma once

#include "../policy/context.hpp"
#include "../kernel/host.hpp"
#include "../space/host_space.hpp"
#include "../space/ops.hpp"
#include "master.hpp"

#include <cstring>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace master {

/// @brief Master state resident in `Space` (host memory for now).
template <class Space = host_space>
struct resident {
  using master_concept = master_tag;
  using space = Space;
  static constexpr const char* name = "resident";
  using config = no_config;
  static constexpr master_caps caps{};
  static_assert(space_policy<Space>,
                "master::resident<Space>: Space is not a space policy (see zeroblocks/space/host_space.hpp)");

  template <class Ctx>
  class impl {
    using T = typename Ctx::param_type;

  public:
    using rule = typename Ctx::rule;
    using state_t = optimizer_state<Space, rule::state_count>;

    impl(Ctx& ctx, const config&, master_shape shape) : ctx_(ctx), st_(shape.owned_numel, &ctx.tracker) {}
    static void declare(master_shape shape, const config&, memory_report& r) { state_t::declare(shape.owned_numel, r); }
    static std::size_t tier_bytes(master_shape, const config&) { return 0; }

    void set(std::size_t offset, const float* values, std::size_t n) {
      ctx_.ops().from_host(st_.master.data() + offset, values, n * sizeof(float));
    }
    const float* master(std::size_t offset) const { return st_.master.data() + offset; }
    /// @brief Copy `n` master values from owned element `offset` into `out`.
    void read_master(std::size_t offset, float* out, std::size_t n) const {
      ctx_.ops().to_host(out, st_.master.data() + offset, n * sizeof(float));
    }
    /// @brief Array `which` (0: master; k ≥ 1: the rule's state array k−1), `n` values
    /// from owned element `offset`, to or from host memory (a checkpoint's save and load).
    void read_state(int which, std::size_t offset, float* out, std::size_t n) const {
      ctx_.ops().to_host(out, array(which) + offset, n * sizeof(float));
    }
    void write_state(int which, std::size_t offset, const float* in, std::size_t n) {
      ctx_.ops().from_host(array(which) + offset, in, n * sizeof(float));
    }
    /// @brief The optimizer's state array `k` (Adam: 0 = m, 1 = v) at owned element `offset`.
    const float* state(int k, std::size_t offset) const { return st_.state[k].data() + offset; }

    /// @brief The fused pass: upcast, unscale, clip, the rule's update, write master,
    /// its state and the parameter.
    void apply(const std::vector<step_slice<T>>& slices, const std::vector<typename rule::args>& per_group) {
      const auto ops = ctx_.ops();
      for (const auto& s : slices) {
        const std::size_t o = s.master_offset;
        detail::with_grad(s, [&](const auto* g) {
          ops.template fused_step<rule>(st_.master.data() + o, st_.states(o).data(), g, s.param, s.numel,
                                         per_group[s.group], ctx_.threads);
        });
      }
    }

  private:
    float* array(int which) const { return which == 0 ? st_.master.data() : st_.state[which - 1].data(); }

    Ctx& ctx_;
    state_t st_;
  };
};

}  // namespace master
ZB_NAMESPACE_END
