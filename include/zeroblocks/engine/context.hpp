/**
 * @file context.hpp
 * @brief What an engine hands its policies: the layout, the communicator, the memory
 * tracker and the configuration — and `engine_config`, every runtime knob in one
 * aggregate.
 *
 * Policies are tag types with a nested `template <class Ctx> class impl` that the
 * engine instantiates with its `engine_context<T, Space, Comm>`; the tag alone is what a
 * user names when composing an engine (CUTLASS-style: the policy picks the algorithm,
 * the engine supplies the types).
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../layout/layout.hpp"
#include "../optim/adamw.hpp"
#include "../scale/scale.hpp"
#include "../space/memory.hpp"
#include "../swap/swap.hpp"

#include <cstddef>
#include <string>

ZB_NAMESPACE_BEGIN

/// @brief Knobs of the stage-3 coordinator `coordinate::prefetch_trace` (the others
/// ignore them). Defaults are DeepSpeed's, whose names are in brackets; all are element
/// counts of the 16-bit parameters (padded units), so the same numbers mean the same
/// memory in bytes × 2.
struct prefetch_config {
  /// Gathered ahead of use, not yet acquired, at most this many elements. Larger hides
  /// more latency, costs memory. 0 = no prefetch. [stage3_prefetch_bucket_size]
  std::size_t prefetch_numel = 50'000'000;
  /// Gathered parameters alive at once (held, kept for reuse, prefetched, in flight),
  /// persistent units excepted. Bounds stage 3's transient memory. [stage3_max_live_parameters]
  std::size_t max_live_numel = 1'000'000'000;
  /// A released unit whose next use comes before this many elements of other units have
  /// been acquired stays gathered (one gather instead of two). 0 = never keep.
  /// [stage3_max_reuse_distance]
  std::size_t max_reuse_distance_numel = 1'000'000'000;
  /// Units with fewer elements stay gathered for good: one gather per step instead of
  /// two, memory reported as `persistent`. 0 = none. [stage3_param_persistence_threshold]
  std::size_t persistence_threshold_numel = 100'000;
  /// Prefetched gathers issued and not yet acquired, at most. Bounds outstanding MPI
  /// requests. (DeepSpeed has no such knob.)
  int max_inflight = 8;
  /// Start the next step's first gathers when `step()` returns rather than at the next
  /// `begin_micro_step`, so they overlap whatever the trainer does between steps (data
  /// loading, logging) and the first unit is not waited for. Costs: up to
  /// `prefetch_numel` gathered elements held between steps (memory at rest above the
  /// estimate), and gathers a run's last step issues for nothing. (DeepSpeed has no
  /// such knob; its prefetch starts inside the forward pass.)
  bool prefetch_across_steps = false;
};

/// @brief Every runtime knob, with defaults. Validated once, collectively, at engine
/// construction. DeepSpeed's name for each knob is given in brackets.
struct engine_config {
  adamw_config optim{};            ///< learning rate, betas, eps, weight decay
  scale_config scale{};            ///< loss scaler knobs (used by the chosen scaler)
  float max_grad_norm = 0.0f;      ///< global-norm clipping, 0 = off [gradient_clipping]
  std::size_t bucket_numel = std::size_t{1} << 25;  ///< gradient bucket [reduce_bucket_size]
  int bucket_count = 2;            ///< bucket buffers in flight (2 = double buffering) [overlap_comm]
  std::size_t align_numel = 32;    ///< parameter alignment in elements (64 B of 16-bit)
  int threads = 0;                 ///< host kernel threads per rank, 0 = all OpenMP gives
  prefetch_config prefetch{};      ///< stage-3 coordinator (coordinate::prefetch_trace)
  swap_config swap{};              ///< NVMe tier (master::swapped): paths, request size, depth, buffers
};

/// @brief The engine's state as its policies see it.
template <class T, class Space, class Comm>
struct engine_context {
  using param_type = T;
  using space = Space;
  using comm_type = Comm;

  const layout& lay;
  Comm& comm;         ///< gradient reductions (bucketers)
  Comm& gather_comm;  ///< parameter gathers (coordinators): its own order, see comm::dup
  Comm& control_comm; ///< the engine's small agreements (not used by policies)
  memory_tracker& tracker;
  const engine_config& cfg;

  int rank() const { return comm.rank(); }
  int world() const { return comm.size(); }

  /// @brief A failure detected on this rank only: tell the peers (so nobody hangs in a
  /// collective this rank will not join), then throw.
  [[noreturn]] void fail_local(const std::string& message, const std::string& where) const {
    comm.abort_peers(message);
    gather_comm.abort_peers(message);
    control_comm.abort_peers(message);
    throw error(message, where);
  }
};

/// @brief Raise a local failure through the context: peers are told, then it throws.
#define ZB_LOCAL_FAIL(ctx, ...)                                                         \
  (ctx).fail_local(::zeroblocks::detail::concat(__VA_ARGS__),                           \
                   ::zeroblocks::detail::location_string(std::source_location::current()))

ZB_NAMESPACE_END
