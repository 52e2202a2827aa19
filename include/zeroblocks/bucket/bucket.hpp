/**
 * @file bucket.hpp
 * @brief The bucketer role: when and how gradients are reduced across ranks.
 *
 * Policies, side by side:
 *  - `bucket::all_reduce` (`all_reduce.hpp`, stage 0): full local gradients accumulate
 *    over micro-steps and are all-reduced at the accumulation boundary.
 *  - `bucket::reduce_at_boundary` (`reduce_at_boundary.hpp`, stage 1): the same full
 *    local gradients, reduce-scattered at the boundary; each rank keeps its slices.
 *  - `bucket::reduce_scatter` (`reduce_scatter.hpp`, stages 2/3): gradients fill
 *    fixed buckets as backward produces them; each full bucket is reduce-scattered
 *    asynchronously and its result accumulated into the rank's gradient shard.
 *
 * Gradients are averaged over ranks inside the reduction (fp32, before rounding) and
 * summed over micro-steps; the engine divides by the number of micro-steps in the fused
 * step.
 *
 * A bucketer policy is a tag type with `using bucketer_concept = bucketer_tag;`,
 * `shards_grads`, `shards_master`, its knobs as `config` (`policy/config.hpp`), its
 * optional capabilities as `static constexpr bucketer_caps caps`, and a nested
 * `template <class Ctx> class impl` built as `impl(ctx, config)` that provides
 * (checked by `bucketer_complete<B, Ctx>()`, which names what is missing)
 * `begin_micro_step()`, `grad_ready(param, grad)`, `end_micro_step()`,
 * `reduce_for_step()`, `grad_slice(u, r) -> const T*`, `grad_slice32(u, r) -> const
 * float*` (fp32 accumulation, `ctx.accum32`: the fp32 gradient; nullptr otherwise),
 * `zero()`, `static declare(lay, config, world, report&, elem_bytes, accum32)` and
 * `static step_traffic(lay,
 * config, step_shape, comm_counters&)` (`policy/traffic.hpp`). The engine has already
 * checked each report (known parameter, right size, not reported twice in the
 * micro-step) before calling `grad_ready`.
 *
 * Optional member (the one-pass step, `detail/slice_stats.hpp`): `slice_stats(u, r) ->
 * const kernel::grad_stats*`, the norm statistics of this rank's slice of unit `u` as
 * last written (nullptr when not known: the engine then computes them at the step).
 * All three bucketers provide it on host spaces.
 *
 * Optional capability, declared in `caps`:
 *  - `streams_shard` → `on_shard_updated(updated, will_write)` (see
 *    `reduce_scatter.hpp`): the bucketer reports each reduced block of the gradient
 *    shard as it lands, so a master that declares `master_caps::takes_shard_stream` can
 *    move it during backward.
 */
#pragma once

#include "../core/config.hpp"
#include "../layout/layout.hpp"
#include "../policy/config.hpp"
#include "../policy/traffic.hpp"
#include "../space/memory.hpp"

#include <concepts>
#include <cstddef>
#include <functional>

ZB_NAMESPACE_BEGIN

/// @brief Tag that marks a type as a bucketer policy.
struct bucketer_tag {};

/// @brief A bucketer's optional capabilities (see the file comment).
struct bucketer_caps {
  bool streams_shard = false;
};

template <class B>
concept bucketer_policy = std::same_as<typename B::bucketer_concept, bucketer_tag> &&
                          policy_config<typename B::config> &&
                          requires {
                            { B::shards_grads } -> std::convertible_to<bool>;
                            { B::shards_master } -> std::convertible_to<bool>;
                            { B::caps } -> std::convertible_to<bucketer_caps>;
                          };

/// @brief Checks, with a message naming the role and the operation, that bucketer
/// policy `B` provides every operation the engine calls with context `Ctx`.
template <class B, class Ctx>
consteval bool bucketer_complete() {
  using I = typename B::template impl<Ctx>;
  using T = typename Ctx::param_type;
  using cfg = typename B::config;
  static_assert(std::constructible_from<I, Ctx&, const cfg&>,
                "bucketer role: impl<Ctx> must be constructible as impl(Ctx&, const config&)");
  static_assert(requires(I& b) { b.begin_micro_step(); }, "bucketer role: impl lacks `begin_micro_step()`");
  static_assert(requires(I& b, std::size_t p, const T* g) { b.grad_ready(p, g); },
                "bucketer role: impl lacks `grad_ready(std::size_t param, const T* grad)`");
  static_assert(requires(I& b) { b.end_micro_step(); }, "bucketer role: impl lacks `end_micro_step()`");
  static_assert(requires(I& b) { b.reduce_for_step(); }, "bucketer role: impl lacks `reduce_for_step()`");
  static_assert(requires(I& b, std::size_t u, int r) { { b.grad_slice(u, r) } -> std::convertible_to<const T*>; },
                "bucketer role: impl lacks `const T* grad_slice(std::size_t unit, int rank)`");
  static_assert(requires(I& b) { b.zero(); }, "bucketer role: impl lacks `zero()`");
  static_assert(requires(const layout& l, const cfg& k, memory_report& r) { I::declare(l, k, 1, r, std::size_t{}, false); },
                "bucketer role: impl lacks `static declare(const layout&, const config&, int world, "
                "memory_report&, std::size_t elem_bytes, bool accum32)`");
  static_assert(requires(I& b, std::size_t u, int r) { { b.grad_slice32(u, r) } -> std::convertible_to<const float*>; },
                "bucketer role: impl lacks `const float* grad_slice32(std::size_t unit, int rank)` (the fp32 "
                "gradient under fp32 accumulation; nullptr otherwise)");
  static_assert(requires(const layout& l, const cfg& k, comm_counters& t) { I::step_traffic(l, k, step_shape{}, t); },
                "bucketer role: impl lacks `static step_traffic(const layout&, const config&, step_shape, "
                "comm_counters&)`");
  if constexpr (B::caps.streams_shard)
    static_assert(requires(I& b, std::function<void(std::size_t, const T*, std::size_t)> updated,
                           std::function<void()> will_write) { b.on_shard_updated(updated, will_write); },
                  "bucketer role: caps.streams_shard is declared but impl lacks "
                  "`on_shard_updated(updated(offset, data, n), will_write())`");
  return true;
}

ZB_NAMESPACE_END
