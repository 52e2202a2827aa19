/**
 * @file ops.hpp
 * @brief `space_ops<Space>`: every operation the engine and its policies perform on
 *        memory of a space — copies across the host boundary, fills, and the numeric
 *        kernels — so that no policy dereferences memory it cannot reach.
 *
 * The engine never touches parameter, gradient or optimizer memory directly: it calls
 * `space_ops<Space>`. A `space_ops<Space>` is a small value made from the space's
 * `stream_type` (`space_ops<Space>{stream}`), and the stream it runs on is the one it
 * was given — there is no ambient stream. For host spaces (`host_space`,
 * `pinned_space`; `stream_type` is the empty `no_stream`) the operations are
 * `memcpy`/`memset` and the vectorised host kernels of `kernel/host.hpp`. For
 * `cuda_space` the specialisation is in `space/cuda_ops.cuh` (nvcc): the `.cuh` kernels
 * and `cudaMemcpyAsync` on the stream it holds (the engine's compute stream, see
 * `Engine::set_compute_stream`), with a stream synchronisation only where the host
 * needs a result (`grad_sumsq`, `to_host`, `from_host`, `synchronize`). A translation
 * unit that instantiates an engine on `cuda_space` must include `zeroblocks/cuda.cuh`
 * (or `space/cuda_ops.cuh`) first.
 *
 * Operations (n elements; "in the space" = memory of `Space`):
 *  - `copy(dst, src, bytes)`: within the space;
 *  - `from_host(dst, host_src, bytes)`, `to_host(host_dst, src, bytes)`: across;
 *  - `fill_zero(p, bytes)`;
 *  - `accumulate(dst, src, n, threads)`: `dst = T(float(dst) + float(src))`;
 *  - `grad_sumsq(g, n, threads) -> kernel::grad_stats` (on the host when it returns);
 *  - `fused_adamw(master, m, v, grad, param, n, args, threads)`;
 *  - `fused_step<Rule>(master, state, grad, param, n, args, threads)`: the fused pass
 *    of any optimizer rule (`state`: its `Rule::state_count` fp32 arrays);
 *  - `downcast(dst, src, n, scale, threads)`;
 *  - `scale(dst, src, n, scale, threads)`: `dst = T(scale * float(src))`, rounded once
 *    (a one-rank reduction: what `comm::basic_self` does for a reduce-scatter);
 *  - `synchronize()`: returns once the work submitted so far is complete.
 * `threads` is the host kernels' thread count (ignored on the GPU).
 */
#pragma once

#include "../core/config.hpp"
#include "../kernel/host.hpp"
#include "host_space.hpp"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <type_traits>

ZB_NAMESPACE_BEGIN

/// @brief The operations on memory of `Space` (no definition: a space without
/// operations cannot hold an engine's state; `cuda_space`'s are in `cuda_ops.cuh`).
template <class Space>
struct space_ops;

/// @brief Host spaces: `memcpy` and the host kernels, in program order.
struct host_ops {
  host_ops() = default;
  explicit host_ops(no_stream) {}
  static void synchronize() {}
  static void copy(void* dst, const void* src, std::size_t bytes) { kernel::copy_bytes(dst, src, bytes); }
  static void from_host(void* dst, const void* src, std::size_t bytes) { copy(dst, src, bytes); }
  static void to_host(void* dst, const void* src, std::size_t bytes) { copy(dst, src, bytes); }
  static void fill_zero(void* p, std::size_t bytes) {
    if (bytes) std::memset(p, 0, bytes);
  }
  template <class T>
  static void accumulate(T* dst, const T* src, std::size_t n, int threads) {
    kernel::accumulate(dst, src, n, threads);
  }
  template <class G>
  static kernel::grad_stats grad_sumsq(const G* g, std::size_t n, int threads) {
    return kernel::grad_sumsq(g, n, threads);
  }
  template <class G, class P>
  static void fused_adamw(float* master, float* m, float* v, const G* grad, P* param, std::size_t n,
                          const kernel::adamw_step_args& a, int threads) {
    kernel::fused_adamw(master, m, v, grad, param, n, a, threads);
  }
  template <class Rule, class G, class P>
  static void fused_step(float* master, float* const* state, const G* grad, P* param, std::size_t n,
                         const typename Rule::args& a, int threads) {
    kernel::fused_step<Rule>(master, state, grad, param, n, a, threads);
  }
  template <class T>
  static void downcast(T* dst, const float* src, std::size_t n, float scale, int threads) {
    kernel::downcast(dst, src, n, scale, threads);
  }
  /// `dst` may equal `src`. The upcast is exact, so this is the same single rounding
  /// as the N-rank reduction (`comm/detail/reduce.hpp`) with one block.
  template <class T>
  static void scale(T* dst, const T* src, std::size_t n, float s, int threads) {
    constexpr std::size_t chunk = 2048;
    alignas(64) float acc[chunk];
    for (std::size_t c0 = 0; c0 < n; c0 += chunk) {
      const std::size_t k = std::min(chunk, n - c0);
      kernel::upcast(acc, src + c0, k, 1.0f, threads);
      kernel::downcast(dst + c0, acc, k, s, threads);
    }
  }
};

template <>
struct space_ops<host_space> : host_ops {
  using host_ops::host_ops;
};
template <>
struct space_ops<pinned_space> : host_ops {
  using host_ops::host_ops;
};

/// @brief Whether `space_ops<Space>` is defined (complete) at this point.
template <class Space>
concept has_space_ops = requires { sizeof(space_ops<Space>); };

ZB_NAMESPACE_END
