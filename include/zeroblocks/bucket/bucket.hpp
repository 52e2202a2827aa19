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
 * step. An `impl<Ctx>` provides `begin_micro_step()`, `grad_ready(param, grad)`,
 * `end_micro_step()`, `reduce_for_step()`, `grad_slice(u, r)`, `zero()` and
 * `static declare(...)`. The engine has already checked each report (known parameter,
 * right size, not reported twice in the micro-step) before calling `grad_ready`.
 */
#pragma once

#include "../core/config.hpp"

#include <concepts>

ZB_NAMESPACE_BEGIN

/// @brief Tag that marks a type as a bucketer policy.
struct bucketer_tag {};

template <class B>
concept bucketer_policy = std::same_as<typename B::bucketer_concept, bucketer_tag> &&
                          requires {
                            { B::shards_grads } -> std::convertible_to<bool>;
                            { B::shards_master } -> std::convertible_to<bool>;
                          };

ZB_NAMESPACE_END
