/**
 * @file coordinate.hpp
 * @brief The coordinator role: when full 16-bit parameters exist.
 *
 * Policies, side by side:
 *  - `coordinate::resident` (`resident.hpp`): the full parameters are always present
 *    (stages 0–2). After a sharded step each rank's updated slices are all-gathered.
 *  - `coordinate::on_demand` (`on_demand.hpp`): each rank keeps only its 16-bit shard
 *    (stage 3); acquiring a unit all-gathers it into a buffer that releasing frees.
 *
 * A coordinator's `impl<Ctx>` provides: `acquire(u) -> const T*` (the unit's full
 * parameters, laid out as in the flat layout), `release(u)`, `owned_slice(u, r) -> T*`
 * (where the step writes rank r's updated slice), `publish()` (make updated slices
 * visible after a step), and `static declare(lay, cfg, world, report&)` (the bytes it
 * holds at rest, for the estimator). The engine counts acquisitions, so a policy never
 * sees a release without an acquire.
 */
#pragma once

#include "../core/config.hpp"

#include <concepts>

ZB_NAMESPACE_BEGIN

/// @brief Tag that marks a type as a coordinator policy.
struct coordinator_tag {};

template <class C>
concept coordinator_policy = std::same_as<typename C::coordinator_concept, coordinator_tag> &&
                             requires { { C::shards_params } -> std::convertible_to<bool>; };

ZB_NAMESPACE_END
