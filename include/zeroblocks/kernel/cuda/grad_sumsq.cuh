/**
 * @file grad_sumsq.cuh
 * @brief Sum of squares and non-finite check of a gradient shard on the GPU, in one
 *        read pass; the result stays on the device.
 *
 * The CUDA counterpart of `kernel::grad_sumsq` (`kernel/host.hpp`). Every element is
 * widened with `to_float` (`core/numeric.hpp`), squared and added in double (the square
 * of a float is exact in double, so fused or not the add rounds once). The result is a
 * `kernel::grad_stats` in a caller-allocated device `sumsq_workspace`: the step can
 * all-reduce `&ws->result.sumsq` across ranks and let the loss scaler decide without a
 * host round trip; `fetch_grad_stats` copies it to the host when a value is needed.
 * `nonfinite` is read off the sum exactly as on the host: squares of finite floats
 * cannot overflow a double sum, so the sum is finite iff every element is (and a sum
 * all-reduced over ranks keeps that property).
 *
 * Summation order (two launches on the caller's stream, no atomics):
 * 1. `blocks = min(sumsq_max_blocks, ceil(n / 2048))` blocks of 256 threads, chosen from
 *    `n` only. With `T = blocks * 256` threads, thread `t` owns the 8-element vectors
 *    `t, t + T, t + 2T, ...` (and, last, the partial vector at the end of the range if
 *    it falls to it) and adds their squares, in index order, into one double; the block
 *    combines its threads with `cub::BlockReduce` (warp-reductions algorithm, a fixed
 *    shuffle tree) into `ws->block_sums[block]`.
 * 2. One block of 256 threads: thread `t` adds `block_sums[t], [t + 256], ...` in
 *    order, and the same block reduction gives `ws->result`.
 * The order depends only on `n` (not on the pointer's alignment — misaligned gradients
 * are read element by element into the same vectors — nor on the stream or the launch
 * history), so the result is deterministic: the same bits on every run on a GPU, and
 * on every GPU built with the same CUB version.
 *
 * It differs from the host's order (blocks of 8192 elements, 32 lanes per block, block
 * sums added one after the other): reproducing that on the GPU would need a sequential
 * chain of n / 8192 dependent additions. Both are sums of the same non-negative terms,
 * each within `depth * 2^-53` (relative) of the exact sum, where `depth` is the longest
 * chain of additions any term goes through (host: about 261 + n / 8192; device: about
 * 40 + n / 2^18). So `|device - host| <= 1e-12 * host` for n up to about 7e7 elements
 * (in practice the difference is a few ulp); the tests check 1e-12 relative against the
 * host kernel and a long double reference.
 */
#pragma once

#include "../../core/config.hpp"
#include "../../core/cuda_check.hpp"
#include "../../core/error.hpp"
#include "../../core/numeric.hpp"
#include "../host.hpp"  // kernel::grad_stats, the result type shared with the host kernel
#include "detail/launch.cuh"
#include "detail/pack.cuh"

#include <cub/block/block_reduce.cuh>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

ZB_NAMESPACE_BEGIN
namespace kernel::cuda {

/// @brief Most blocks `grad_sumsq` launches (the size of its scratch).
inline constexpr int sumsq_max_blocks = 1024;

/**
 * @brief Device-resident result and scratch of `grad_sumsq`.
 *
 * Allocate one in device memory (`sizeof(sumsq_workspace)`, about 8 KiB; no
 * initialisation needed) and give it to every call; calls that may run concurrently
 * (different streams) need their own. `result` is valid once the launch has completed
 * on its stream.
 */
struct sumsq_workspace {
  grad_stats result;                       ///< the sum of squares and the non-finite flag
  double block_sums[sumsq_max_blocks];     ///< per-block partial sums (scratch)
};

namespace detail {

/// @brief Blocks of the first pass for `n` elements (depends on `n` only).
inline int sumsq_blocks(std::size_t n) {
  const std::size_t vectors = (n + vec_elems - 1) / vec_elems;
  const std::size_t blocks = (vectors + block_threads - 1) / block_threads;
  return static_cast<int>(std::clamp<std::size_t>(blocks, 1, sumsq_max_blocks));
}

using sumsq_block_reduce = cub::BlockReduce<double, block_threads, cub::BLOCK_REDUCE_WARP_REDUCTIONS>;

/// @brief Squares of `count` (<= 8) elements of `x`, added in order into `acc`.
template <class G>
__device__ __forceinline__ void sumsq_add(const pack8<G>& x, int count, double& acc) {
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (j < count) {
      const double d = static_cast<double>(to_float(x.x[j]));
      acc = ::fma(d, d, acc);  // d*d is exact in double: fused or not, one rounding
    }
  }
}

/// @brief First pass: each block's sum of squares into `block_sums[blockIdx.x]`.
template <class G, bool Aligned>
__global__ void __launch_bounds__(block_threads)
    sumsq_partial_kernel(const G* __restrict__ g, std::size_t n, double* __restrict__ block_sums) {
  __shared__ typename sumsq_block_reduce::TempStorage temp;
  const std::size_t threads = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  const std::size_t tid = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::size_t full = n / vec_elems;
  double acc = 0.0;
  for (std::size_t k = tid; k < full; k += threads) {
    const G* p = g + vec_elems * k;
    if constexpr (Aligned) sumsq_add(load8(p), 8, acc);
    else sumsq_add(load8_unaligned(p), 8, acc);
  }
  const int rest = static_cast<int>(n - vec_elems * full);
  if (rest > 0 && tid == full % threads) {
    pack8<G> x{};
    for (int j = 0; j < rest; ++j) x.x[j] = g[vec_elems * full + static_cast<std::size_t>(j)];
    sumsq_add(x, rest, acc);
  }
  const double block_sum = sumsq_block_reduce(temp).Sum(acc);
  if (threadIdx.x == 0) block_sums[blockIdx.x] = block_sum;
}

/// @brief Second pass: the block sums into `result` (one block of `Threads` threads).
/// A template (only ever `block_threads`) so that a header included by several
/// translation units does not define the kernel's host stub more than once.
template <int Threads>
__global__ void __launch_bounds__(Threads)
    sumsq_final_kernel(const double* __restrict__ block_sums, int count, grad_stats* __restrict__ result) {
  static_assert(Threads == block_threads, "sumsq_final_kernel: the block reduction is sized for block_threads");
  __shared__ typename sumsq_block_reduce::TempStorage temp;
  double acc = 0.0;
  for (int b = static_cast<int>(threadIdx.x); b < count; b += Threads) acc += block_sums[b];
  const double total = sumsq_block_reduce(temp).Sum(acc);
  if (threadIdx.x == 0) {
    result->sumsq = total;
    result->nonfinite = !::isfinite(total);
  }
}

}  // namespace detail

/**
 * @brief Sum of squares (in double) and non-finite check of `g[0, n)` on the device;
 * the result lands in `ws->result`.
 *
 * Two asynchronous launches on `stream` (also for `n == 0`, which yields
 * `{0, false}`); launch errors throw `zeroblocks::error`. Deterministic (the order
 * depends on `n` only) and within 1e-12 relative of `kernel::grad_sumsq` for shards up
 * to ~7e7 elements; see the file comment.
 *
 * @tparam G gradient type (half, bfloat16 or float)
 * @param g      gradient shard (device), aligned to its element size
 * @param n      elements
 * @param ws     device workspace receiving the result
 * @param stream the stream to launch on
 */
template <class G>
void grad_sumsq(const G* g, std::size_t n, sumsq_workspace* ws, cudaStream_t stream) {
  static_assert(is_param_type_v<G>, "cuda::grad_sumsq: G must be float, half or bfloat16");
  constexpr const char* name = "cuda::grad_sumsq";
  ZB_REQUIRE(ws != nullptr, name, ": the workspace must not be null");
  ZB_REQUIRE(n == 0 || g != nullptr, name, ": the gradient must not be null (n = ", n, ")");
  detail::require_element_aligned(name, "grad", g, sizeof(G));
  const int blocks = detail::sumsq_blocks(n);
  if (reinterpret_cast<std::uintptr_t>(g) % 16 == 0)
    detail::sumsq_partial_kernel<G, true><<<blocks, detail::block_threads, 0, stream>>>(g, n, ws->block_sums);
  else
    detail::sumsq_partial_kernel<G, false><<<blocks, detail::block_threads, 0, stream>>>(g, n, ws->block_sums);
  ZB_CUDA_CHECK_LAUNCH(name);
  detail::sumsq_final_kernel<detail::block_threads><<<1, detail::block_threads, 0, stream>>>(ws->block_sums, blocks, &ws->result);
  ZB_CUDA_CHECK_LAUNCH(name);
}

/**
 * @brief Copy a device `grad_stats` (e.g. `&ws->result`) to the host: an asynchronous
 * copy on `stream`, then a synchronisation of `stream`.
 */
inline grad_stats fetch_grad_stats(const grad_stats* result, cudaStream_t stream) {
  ZB_REQUIRE(result != nullptr, "cuda::fetch_grad_stats: the result pointer must not be null");
  grad_stats host{};
  ZB_CUDA_CHECK(cudaMemcpyAsync(&host, result, sizeof host, cudaMemcpyDeviceToHost, stream));
  ZB_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

/// @brief `grad_sumsq` followed by `fetch_grad_stats`: the convenience for callers that
/// want the value now (synchronises `stream`).
template <class G>
grad_stats grad_sumsq_sync(const G* g, std::size_t n, sumsq_workspace* ws, cudaStream_t stream) {
  grad_sumsq(g, n, ws, stream);
  return fetch_grad_stats(&ws->result, stream);
}

}  // namespace kernel::cuda
ZB_NAMESPACE_END
