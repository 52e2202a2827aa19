/**
 * @file comm.hpp
 * @brief The communicator role: how ranks exchange bytes.
 *
 * Policies: `comm::self` (one rank, `self.hpp`), `comm::mpi` (host buffers over MPI,
 * `mpi.hpp`) and `comm::nccl` (device buffers over NCCL, stream-ordered, bootstrapped
 * over MPI or a shared file; `nccl.hpp` / `nccl.cuh`, target `zeroblocks::cuda`). A communicator is an object (it owns a communicator handle and counters)
 * whose type carries `using communicator_concept = communicator_tag;`.
 *
 * Collectives, for element types float, half and bfloat16:
 *  - `all_gather(send, recv, count)`: recv holds `count * size()` elements, block r from
 *    rank r. In place when `send == recv + rank() * count`.
 *  - `reduce_scatter(buf, recv, count, scale)`: `buf` holds `count * size()` elements;
 *    rank r receives `scale * sum_j buf_j[r]`. Sums of 16-bit values accumulate in fp32,
 *    in rank order 0..N-1, and are rounded once — so the result is deterministic and the
 *    same whichever collective produced it. `buf` is used as scratch (clobbered).
 *  - `all_reduce(buf, count, scale)`: in place, reduce-scatter then all-gather with the
 *    same summation, so stage 0 (all-reduce) and stages 1–3 (reduce-scatter) produce
 *    bit-identical reduced gradients from the same inputs.
 *  - optional `ireduce_scatter_accumulate(buf, acc, count, scale)` (host communicators:
 *    `comm::mpi`, `comm::self`): the reduce-scatter's rank-ordered fp32 sum, times
 *    `scale`, added to the fp32 array `acc` instead of rounded to T — what fp32
 *    gradient accumulation (`step_config::grad_accum`) reduces with. Counted as a
 *    reduce-scatter.
 *  - `broadcast(buf, count, root)`, `barrier()`.
 *  - `dup()`: a communicator over the same ranks whose collectives are ordered
 *    independently (parameter gathers and gradient reductions each get their own).
 *  - `i`-prefixed variants return a `request` to `wait()` on.
 *  - control helpers used by the engine for small agreements (`all_gather_values`,
 *    `agree`): these are counted separately (`control`), not as payload.
 *  - optional `static constexpr bool device_memory`: whether the payload buffers it
 *    takes are GPU memory (`comm::nccl`, `comm::cuda_self`) or host memory (`comm::mpi`,
 *    `comm::self`). The engine refuses at compile time a communicator that cannot reach
 *    its Space's memory (`comm_reaches`); one that does not say is not checked.
 *
 * Counting convention (elements, per rank): all-gather counts its output
 * (`count * size()`), reduce-scatter its input (`count * size()`), all-reduce twice its
 * buffer, broadcast its buffer. With it a stage 0–2 step moves 2Ψ and stage 3 3Ψ.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"

#include <array>
#include <concepts>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

ZB_NAMESPACE_BEGIN

/// @brief Tag that marks a type as a communicator policy.
struct communicator_tag {};

/// @brief The kinds of collectives a communicator counts.
enum class collective : int { all_gather = 0, reduce_scatter, all_reduce, broadcast, count_ };

inline constexpr std::size_t collective_count = static_cast<std::size_t>(collective::count_);

constexpr std::string_view collective_name(collective c) {
  constexpr std::array<std::string_view, collective_count> names = {
      "all_gather", "reduce_scatter", "all_reduce", "broadcast"};
  return names[static_cast<std::size_t>(c)];
}

/// @brief Elements and calls per collective kind, plus control traffic.
struct comm_counters {
  std::array<std::uint64_t, collective_count> elements{};
  std::array<std::uint64_t, collective_count> calls{};
  std::uint64_t control_elements = 0;  ///< flags, norms, hashes: not model payload
  std::uint64_t control_calls = 0;

  std::uint64_t operator[](collective c) const { return elements[static_cast<std::size_t>(c)]; }
  /// @brief Payload elements over all collective kinds.
  std::uint64_t payload() const {
    std::uint64_t s = 0;
    for (auto e : elements) s += e;
    return s;
  }
  void count(collective c, std::uint64_t n) {
    elements[static_cast<std::size_t>(c)] += n;
    calls[static_cast<std::size_t>(c)] += 1;
  }
  /// @brief The counting convention, in one place (elements per rank): an all-gather
  /// counts its output, a reduce-scatter its input (`count` per rank each, times the
  /// world), an all-reduce twice its buffer, a broadcast its buffer.
  void count_all_gather(std::uint64_t count, int world) { this->count(collective::all_gather, count * world); }
  void count_reduce_scatter(std::uint64_t count, int world) {
    this->count(collective::reduce_scatter, count * world);
  }
  void count_all_reduce(std::uint64_t count) { this->count(collective::all_reduce, 2 * count); }
  void count_broadcast(std::uint64_t count) { this->count(collective::broadcast, count); }
  friend comm_counters operator+(comm_counters a, const comm_counters& b) {
    for (std::size_t i = 0; i < collective_count; ++i) {
      a.elements[i] += b.elements[i];
      a.calls[i] += b.calls[i];
    }
    a.control_elements += b.control_elements;
    a.control_calls += b.control_calls;
    return a;
  }
  friend comm_counters operator-(comm_counters a, const comm_counters& b) {
    for (std::size_t i = 0; i < collective_count; ++i) {
      a.elements[i] -= b.elements[i];
      a.calls[i] -= b.calls[i];
    }
    a.control_elements -= b.control_elements;
    a.control_calls -= b.control_calls;
    return a;
  }
};

/// @brief A communicator policy.
template <class C>
concept communicator_policy =
    std::same_as<typename C::communicator_concept, communicator_tag> &&
    requires(C& c, const C& cc, float* f, std::size_t n) {
      { cc.rank() } -> std::convertible_to<int>;
      { cc.size() } -> std::convertible_to<int>;
      c.all_gather(f, f, n);
      c.reduce_scatter(f, f, n, 1.0f);
      c.all_reduce(f, n, 1.0f);
      c.broadcast(f, n, 0);
      c.barrier();
      c.iall_gather(f, f, n).wait();
      c.ireduce_scatter(f, f, n, 1.0f).wait();
      c.iall_reduce(f, n, 1.0f).wait();
      c.ibroadcast(f, n, 0).wait();
      c.ibarrier().wait();
      { cc.dup() } -> std::same_as<C>;
      { cc.counters() } -> std::same_as<const comm_counters&>;
      typename C::request;
      // What the engine's agreements and failure handling call (detail/control.hpp and
      // detail/abort_channel.hpp implement them once for every communicator).
      { c.all_gather_values(std::vector<double>{}) } -> std::same_as<std::vector<double>>;
      { c.all_gather_strings(std::string{}) } -> std::same_as<std::vector<std::string>>;
      c.agree(true, std::string{});
      c.abort_peers(std::string{});
      { cc.failed() } -> std::convertible_to<bool>;
      { cc.peer_failed() } -> std::convertible_to<bool>;
    };

/// @brief Whether communicator `C` can move buffers of memory space `Space`: a
/// communicator of device memory for a space the host cannot read, and the reverse.
/// (A host-memory communicator on `cuda_space` would hand device pointers to MPI.)
template <class C, class Space>
constexpr bool comm_reaches() {
  if constexpr (requires { C::device_memory; }) return C::device_memory == !Space::host_accessible;
  else return true;
}

ZB_NAMESPACE_END
