/**
 * @file context.hpp
 * @brief What an engine hands its policies: the layout, the communicators, the memory
 * tracker, the compute stream and the host-kernel thread count.
 *
 * Policies are tag types with a nested `template <class Ctx> class impl` that the
 * engine instantiates with its `policy_context<T, Space, Comm>`, together with the
 * policy's own `config` (see `policy/config.hpp`); the tag alone is what a user names
 * when composing an engine (CUTLASS-style: the policy picks the algorithm, the engine
 * supplies the types). This header sits below the role folders, so a policy never
 * includes `engine/`: nothing in a role depends on how the engine composes it.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../layout/layout.hpp"
#include "../space/memory.hpp"
#include "../space/ops.hpp"

#include <string>

ZB_NAMESPACE_BEGIN

/// @brief The engine's state as its policies see it. `Optim` is the optimizer policy:
/// master-state policies run its `rule` (`kernel::fused_step`) and keep its state arrays.
template <class T, class Space, class Comm, class Optim>
struct policy_context {
  using param_type = T;
  using space = Space;
  using comm_type = Comm;
  using optimizer = Optim;
  using rule = typename Optim::rule;

  const layout& lay;
  Comm& comm;         ///< gradient reductions (bucketers)
  Comm& gather_comm;  ///< parameter gathers (coordinators): its own order, see comm::dup
  Comm& control_comm; ///< the engine's small agreements (not used by policies)
  memory_tracker& tracker;
  /// The engine's compute stream (`Engine::set_compute_stream`): every operation a
  /// policy runs on `Space` memory goes through `ops()`, on this stream. Host spaces:
  /// `no_stream`. A reference, so a stream set after construction reaches the policies.
  const typename Space::stream_type& stream;
  int threads = 0;    ///< host kernel threads per rank (0 = all OpenMP gives)
  /// Gradients are summed over micro-steps in fp32 (`grad_accum_dtype::fp32`, resolved
  /// by the engine): bucketers reduce every micro-step into an fp32 accumulator and
  /// hand out `grad_slice32`.
  bool accum32 = false;

  /// @brief The operations on `Space` memory, on the compute stream.
  auto ops() const { return space_ops<Space>{stream}; }

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
                   ::zeroblocks::detail::location_string(::zeroblocks::detail::source_location::current()))

ZB_NAMESPACE_END
