/**
 * @file coordinate.hpp
 * @brief The coordinator role: when full 16-bit parameters exist.
 *
 * Policies, side by side:
 *  - `coordinate::resident` (`resident.hpp`): the full parameters are always present
 *    (stages 0–2). After a sharded step each rank's updated slices are all-gathered.
 *  - `coordinate::on_demand` (`on_demand.hpp`): each rank keeps only its 16-bit shard
 *    (stage 3); acquiring a unit all-gathers it into a buffer that releasing frees.
 *  - `coordinate::prefetch_trace` (`prefetch_trace.hpp`): stage 3 that records the order
 *    of acquires in the first step, then gathers ahead of use along that trace, keeps
 *    units that are reused soon and small units for good (the `stage3` preset);
 *    `coordinate::prefetch_trace_nvme` is the same with the 16-bit shard in the master
 *    tier on NVMe, read ahead of each gather (the `infinity` preset).
 *
 * A coordinator policy is a tag type with `using coordinator_concept = coordinator_tag;`,
 * `shards_params`, its knobs as `config` (`policy/config.hpp`; `no_config` when it has
 * none), its optional capabilities as `static constexpr coordinator_caps caps`, and a
 * nested `template <class Ctx> class impl` built as `impl(ctx, config)`.
 *
 * Every `impl` provides (checked by `coordinator_complete<C, Ctx>()`, which names the
 * missing operation): `acquire(u) -> const T*` (the unit's full parameters, laid out as
 * in the flat layout), `release(u)`, `owned_slice(u, r) -> T*` (where the step writes
 * rank r's updated slice), `publish(sharded)` (make updated slices visible after an
 * applied step), `stats() -> coordinator_stats`, `static declare(lay, config,
 * world, report&, elem_bytes)` (the bytes it holds at rest, for the estimator) and
 * `static step_traffic(lay, config, step_shape, sharded, comm_counters&)` (the elements
 * its collectives move in a steady-state step of that shape, for the planner). The
 * engine counts acquisitions, so a policy sees one `acquire` per first hold and one
 * `release` per last.
 *
 * Optional capabilities, declared in `caps` (never probed: a declared capability whose
 * operation is missing or misspelled fails to compile, naming it):
 *  - `checks_acquire` → `bool checks_acquire(u) const`: true when acquiring `u` now
 *    will start a gather the other ranks must match without a verified trace to go
 *    by; the engine then compares every rank's position and unit first (one small
 *    all-gather on its control communicator), so ranks that acquire differently fail
 *    with the position and both unit names instead of pairing wrong gathers (or
 *    hanging).
 *  - `follows_trace` → `trace_agreed(events)`: at `step()`, after every rank was shown
 *    to have the same sequence of acquire/release events since the previous step
 *    (`events`: unit index, `release_bit` set for a release); nothing may be in flight
 *    when it returns (the step rewrites the shards the gathers read). `step_begins()`:
 *    the step's first `begin_micro_step`. `step_ended()`: `step()` is about to return.
 *    `params_changed()`: the trainer wrote parameters (`set_param`): drop gathered copies.
 *    `set_eval(on)`: the engine enters (leaves) evaluation mode between steps; the
 *    acquires that follow belong to a second trace of their own, agreed by
 *    `trace_agreed` at `end_eval` as the training trace is at `step()`, so evaluation
 *    passes never invalidate the training trace (see `engine::begin_eval`).
 *    `set_aside(on)`: the engine gathers every unit outside the step's order
 *    (`gather_params`); those acquires neither follow nor change the trace.
 *  - `params_on_tier` → `attach_param_tier(param_tier_view)`: the rank's 16-bit shard
 *    lives in the master state's tier, which the master must offer
 *    (`master_caps::keeps_param_tier`); `owned_slice` is then never written by the
 *    engine (the master's `set` and step write the tier).
 */
#pragma once

#include "../policy/traffic.hpp"
#include "../core/config.hpp"
#include "../layout/layout.hpp"
#include "../policy/config.hpp"
#include "../space/memory.hpp"
#include "../swap/swap.hpp"  // param_tier_view

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

ZB_NAMESPACE_BEGIN

/// @brief Tag that marks a type as a coordinator policy.
struct coordinator_tag {};

/// @brief A coordinator's optional capabilities (see the file comment).
struct coordinator_caps {
  bool checks_acquire = false;
  bool follows_trace = false;
  bool params_on_tier = false;
};

template <class C>
concept coordinator_policy = std::same_as<typename C::coordinator_concept, coordinator_tag> &&
                             policy_config<typename C::config> &&
                             requires {
                               { C::shards_params } -> std::convertible_to<bool>;
                               { C::caps } -> std::convertible_to<coordinator_caps>;
                             };

/// @brief In a trace event, marks a release (the rest is the unit index).
inline constexpr std::uint32_t release_bit = 0x80000000u;

/// @brief What a stage-3 coordinator did, since construction (zero for `resident`).
struct coordinator_stats {
  std::uint64_t acquires = 0;          ///< first holds served (nested holds are not counted)
  std::uint64_t gathers = 0;           ///< all-gathers issued, on demand or ahead
  std::uint64_t gathered_numel = 0;    ///< elements those gathers produced (padded units)
  std::uint64_t prefetches = 0;        ///< gathers issued ahead of their acquire
  std::uint64_t prefetch_hits = 0;     ///< acquires whose gather had been issued ahead
  std::uint64_t reuse_hits = 0;        ///< acquires of a unit kept gathered after its release
  std::uint64_t persistent_hits = 0;   ///< acquires of a persistent unit already gathered
  std::uint64_t misses = 0;            ///< acquires that had to start their own gather
  std::uint64_t invalidations = 0;     ///< steps that left the trace (then served on demand)
  std::uint64_t wasted_prefetches = 0; ///< prefetched gathers dropped unused by an invalidation
  std::uint64_t over_limit = 0;        ///< acquires that pushed live elements past max_live_numel
  std::size_t live_numel = 0;          ///< gathered elements alive now (persistent excepted)
  std::size_t peak_live_numel = 0;     ///< highest live_numel seen
  std::size_t ahead_gathers = 0;       ///< gathers issued ahead, not acquired yet (now)
  std::size_t ahead_numel = 0;         ///< ... and their elements
  std::size_t persistent_units = 0;    ///< units below the persistence threshold
  std::size_t trace_events = 0;        ///< length of the current trace (0: none yet)
  bool trace_complete = false;         ///< a verified trace is being followed
  double wait_seconds = 0.0;           ///< time the trainer spent inside the coordinator's acquire and
                                       ///< release: gather waits and the MPI progress work done there
  // Parameters on NVMe (prefetch_trace_nvme):
  std::uint64_t tier_reads = 0;        ///< slice reads from the parameter tier
  std::uint64_t tier_read_hits = 0;    ///< gathers whose slice read had been started ahead
  std::uint64_t tier_read_bytes = 0;   ///< bytes those reads moved (whole 4 KiB blocks)
  double tier_read_wait_seconds = 0.0; ///< time gathers waited for their slice's read
};

/// @brief Checks, with a message naming the role and the operation, that coordinator
/// policy `C` provides every operation the engine calls with context `Ctx`: the
/// required ones and those of the capabilities it declares. True when it does.
template <class C, class Ctx>
consteval bool coordinator_complete() {
  using I = typename C::template impl<Ctx>;
  using T = typename Ctx::param_type;
  using cfg = typename C::config;
  static_assert(std::constructible_from<I, Ctx&, const cfg&>,
                "coordinator role: impl<Ctx> must be constructible as impl(Ctx&, const config&)");
  static_assert(requires(I& c, std::size_t u) { { c.acquire(u) } -> std::convertible_to<const T*>; },
                "coordinator role: impl lacks `const T* acquire(std::size_t unit)`");
  static_assert(requires(I& c, std::size_t u) { c.release(u); },
                "coordinator role: impl lacks `release(std::size_t unit)`");
  static_assert(requires(I& c, std::size_t u, int r) { { c.owned_slice(u, r) } -> std::convertible_to<T*>; },
                "coordinator role: impl lacks `T* owned_slice(std::size_t unit, int rank)`");
  static_assert(requires(I& c, bool b) { c.publish(b); }, "coordinator role: impl lacks `publish(bool sharded)`");
  static_assert(requires(const I& c) { { c.stats() } -> std::convertible_to<coordinator_stats>; },
                "coordinator role: impl lacks `coordinator_stats stats() const`");
  static_assert(requires(const layout& l, const cfg& k, memory_report& r) { I::declare(l, k, 1, r, std::size_t{}); },
                "coordinator role: impl lacks `static declare(const layout&, const config&, int world, "
                "memory_report&, std::size_t elem_bytes)`");
  static_assert(requires(const layout& l, const cfg& k, comm_counters& t) { I::step_traffic(l, k, step_shape{}, true, t); },
                "coordinator role: impl lacks `static step_traffic(const layout&, const config&, step_shape, "
                "bool sharded_step, comm_counters&)`");
  if constexpr (C::caps.checks_acquire)
    static_assert(requires(const I& c, std::size_t u) { { c.checks_acquire(u) } -> std::convertible_to<bool>; },
                  "coordinator role: caps.checks_acquire is declared but impl lacks "
                  "`bool checks_acquire(std::size_t unit) const`");
  if constexpr (C::caps.follows_trace) {
    static_assert(requires(I& c, std::span<const std::uint32_t> e) { c.trace_agreed(e); },
                  "coordinator role: caps.follows_trace is declared but impl lacks "
                  "`trace_agreed(std::span<const std::uint32_t>)`");
    static_assert(requires(I& c) { c.step_begins(); },
                  "coordinator role: caps.follows_trace is declared but impl lacks `step_begins()`");
    static_assert(requires(I& c) { c.step_ended(); },
                  "coordinator role: caps.follows_trace is declared but impl lacks `step_ended()`");
    static_assert(requires(I& c) { c.params_changed(); },
                  "coordinator role: caps.follows_trace is declared but impl lacks `params_changed()`");
    static_assert(requires(I& c, bool on) { c.set_eval(on); },
                  "coordinator role: caps.follows_trace is declared but impl lacks `set_eval(bool)`");
    static_assert(requires(I& c, bool on) { c.set_aside(on); },
                  "coordinator role: caps.follows_trace is declared but impl lacks `set_aside(bool)`");
  }
  if constexpr (C::caps.params_on_tier)
    static_assert(requires(I& c, param_tier_view v) { c.attach_param_tier(v); },
                  "coordinator role: caps.params_on_tier is declared but impl lacks "
                  "`attach_param_tier(param_tier_view)`");
  return true;
}

ZB_NAMESPACE_END
