/**
 * @file self.hpp
 * @brief `comm::basic_self<Space>`: the communicator of a single rank, over memory of
 *        `Space`. `comm::self` is the host one; `comm::cuda_self` moves device memory
 *        (`cuda_space`) and needs `zeroblocks/cuda.cuh` where the engine is instantiated.
 *
 * Every collective is a local copy (or a scaled rounding, for reductions) done with
 * `space_ops<Space>` — for `cuda_space` on the compute stream it is given
 * (`set_compute_stream`; an engine gives it its own), so it is ordered with the
 * engine's other work and its requests are complete at once — and is
 * counted exactly like `comm::mpi` counts, so a one-rank run reports the same
 * elements-communicated figures as a one-rank MPI run.
 */
#pragma once

#include "../space/host_space.hpp"
#include "../space/ops.hpp"
#include "comm.hpp"
#include "detail/control.hpp"
#include "detail/reduce.hpp"

#include <string>
#include <vector>

ZB_NAMESPACE_BEGIN

struct cuda_space;  // space/cuda_space.hpp (needs the CUDA runtime)

namespace comm {

/// @brief One rank; collectives are local operations on memory of `Space`.
template <class Space>
class basic_self : public detail::control_ops<basic_self<Space>> {
  friend class detail::control_ops<basic_self>;
  /// Used only when a collective is instantiated (`space_ops<cuda_space>` is in
  /// `space/cuda_ops.cuh`).
  auto ops() const { return space_ops<Space>{stream_}; }

public:
  using communicator_concept = communicator_tag;
  static constexpr const char* name = Space::host_accessible ? "self" : "cuda_self";
  /// The buffers it moves are device memory (see `comm_reaches`).
  static constexpr bool device_memory = !Space::host_accessible;

  /// @brief Already complete.
  struct request {
    void wait() {}
    bool test() { return true; }
  };

  /// @brief Another one on the same compute stream.
  basic_self dup() const {
    basic_self d;
    d.stream_ = stream_;
    return d;
  }
  /// @brief The stream its collectives run on (`cuda_self`: the default stream 0 until
  /// set; an engine sets its compute stream here). Host memory: `no_stream`.
  void set_compute_stream(typename Space::stream_type s) { stream_ = s; }
  typename Space::stream_type compute_stream() const { return stream_; }
  int rank() const { return 0; }
  int size() const { return 1; }
  const comm_counters& counters() const { return counters_; }

  template <class T>
  void all_gather(const T* send, T* recv, std::size_t count) {
    if (send != recv && count) ops().copy(recv, send, count * sizeof(T));
    counters_.count_all_gather(count, 1);
  }
  template <class T>
  request iall_gather(const T* send, T* recv, std::size_t count) {
    all_gather(send, recv, count);
    return {};
  }
  template <class T>
  void reduce_scatter(T* buf, T* recv, std::size_t count, float scale) {
    ops().scale(recv, buf, count, scale, 1);
    counters_.count_reduce_scatter(count, 1);
  }
  template <class T>
  request ireduce_scatter(T* buf, T* recv, std::size_t count, float scale) {
    reduce_scatter(buf, recv, count, scale);
    return {};
  }
  /// @brief `acc[i] += scale * buf[i]` in fp32 (see `comm::mpi`).
  template <class T>
  request ireduce_scatter_accumulate(T* buf, float* acc, std::size_t count, float scale, bool first = false)
    requires(Space::host_accessible)
  {
    detail::reduce_blocks_accumulate(buf, count, 1, count, scale, acc, first);
    counters_.count_reduce_scatter(count, 1);
    return {};
  }
  template <class T>
  void all_reduce(T* buf, std::size_t count, float scale) {
    ops().scale(buf, buf, count, scale, 1);
    counters_.count_all_reduce(count);
  }
  template <class T>
  request iall_reduce(T* buf, std::size_t count, float scale) {
    all_reduce(buf, count, scale);
    return {};
  }
  template <class T>
  void broadcast(T*, std::size_t count, int root) {
    ZB_REQUIRE(root == 0, "comm::self: broadcast root ", root, " out of range");
    counters_.count_broadcast(count);
  }
  template <class T>
  request ibroadcast(T* buf, std::size_t count, int root) {
    broadcast(buf, count, root);
    return {};
  }
  void barrier() {}
  request ibarrier() { return {}; }

  // all_gather_values, all_gather_strings, agree: detail::control_ops.

  /// @brief Tell the other ranks that this rank failed (nothing to do with one rank).
  void abort_peers(const std::string&) {}
  bool failed() const { return false; }
  bool peer_failed() const { return false; }

private:
  // The transport of the control helpers: one rank's bytes are all there is.
  void ensure_usable() {}
  std::vector<char> control_all_gather(const void* mine, std::size_t bytes) {
    const char* p = static_cast<const char*>(mine);
    return {p, p + bytes};
  }
  comm_counters& control_counters() { return counters_; }

  comm_counters counters_;
  typename Space::stream_type stream_{};
};

/// @brief One rank, host memory.
using self = basic_self<host_space>;
/// @brief One rank, device memory (`cuda_space`): a GPU run without NCCL.
using cuda_self = basic_self<cuda_space>;

static_assert(communicator_policy<self>);

}  // namespace comm
ZB_NAMESPACE_END
