/**
 * @file cuda_ops.cuh
 * @brief `space_ops<cuda_space>`: the engine's operations on device memory (see
 *        `space/ops.hpp`), on the stream it is made with (the engine's compute
 *        stream). Needs nvcc.
 *
 * Copies are `cudaMemcpyAsync` on the compute stream; copies from or to host memory
 * synchronise that stream before they return (the host buffer may be reused at once).
 * The numeric operations are the `.cuh` kernels, which give the host kernels' bits
 * (the headers in `kernel/cuda/` state the bounds: fused pass and casts 0 ulp, sum of squares
 * within 1e-12 relative). `grad_sumsq` synchronises the stream (the host needs the
 * norm); its 8 KiB workspace comes from the `cuda_space` pool, stream-ordered.
 * `accumulate` and `scale` are grid-stride kernels with the host's per-element
 * expressions (`T(float(dst) + float(src))`, `T(float(src) * s)`: one operation, one
 * rounding — nothing nvcc can contract into an FMA).
 */
#pragma once

#if !defined(__CUDACC__)
#error "zeroblocks/space/cuda_ops.cuh needs nvcc"
#endif

#include "../core/cuda_check.hpp"
#include "../core/numeric.hpp"
#include "../kernel/cuda/kernels.cuh"
#include "cuda_space.hpp"
#include "ops.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>

ZB_NAMESPACE_BEGIN
namespace detail {

template <class T>
__global__ void cuda_accumulate_kernel(T* __restrict__ dst, const T* __restrict__ src, std::size_t n) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = from_float<T>(to_float(dst[i]) + to_float(src[i]));
}

template <class T>
__global__ void cuda_scale_kernel(T* dst, const T* src, std::size_t n, float scale) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = from_float<T>(to_float(src[i]) * scale);
}

/// Blocks for a grid-stride kernel of 256 threads over n elements.
inline unsigned grid_stride_blocks(std::size_t n) {
  return static_cast<unsigned>(std::min<std::size_t>((n + 255) / 256, 65535));
}

}  // namespace detail

/// @brief `cuda_space`: kernels and copies on the stream it was made with (the engine's
/// compute stream; 0, the legacy default stream, when made without one).
template <>
struct space_ops<cuda_space> {
  space_ops() = default;
  explicit space_ops(cudaStream_t s) : stream_(s) {}
  cudaStream_t stream() const { return stream_; }

  void synchronize() const { ZB_CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  void copy(void* dst, const void* src, std::size_t bytes) const { cuda_space::copy_async(dst, src, bytes, stream_); }
  void from_host(void* dst, const void* host_src, std::size_t bytes) const {
    if (!bytes) return;
    cuda_space::copy_async(dst, host_src, bytes, stream_);
    synchronize();
  }
  void to_host(void* host_dst, const void* src, std::size_t bytes) const {
    if (!bytes) return;
    cuda_space::copy_async(host_dst, src, bytes, stream_);
    synchronize();
  }
  void fill_zero(void* p, std::size_t bytes) const { cuda_space::fill_zero_async(p, bytes, stream_); }

  template <class T>
  void accumulate(T* dst, const T* src, std::size_t n, int /*threads*/) const {
    if (n == 0) return;
    detail::cuda_accumulate_kernel<T><<<detail::grid_stride_blocks(n), 256, 0, stream_>>>(dst, src, n);
    ZB_CUDA_CHECK_LAUNCH("zeroblocks accumulate");
  }
  /// `dst = T(float(src) * s)`, one rounding (`dst` may equal `src`): the host's bits.
  template <class T>
  void scale(T* dst, const T* src, std::size_t n, float s, int /*threads*/) const {
    if (n == 0) return;
    detail::cuda_scale_kernel<T><<<detail::grid_stride_blocks(n), 256, 0, stream_>>>(dst, src, n, s);
    ZB_CUDA_CHECK_LAUNCH("zeroblocks scale");
  }
  template <class G>
  kernel::grad_stats grad_sumsq(const G* g, std::size_t n, int /*threads*/) const {
    if (n == 0) return {};
    auto* ws = static_cast<kernel::cuda::sumsq_workspace*>(
        cuda_space::allocate_async(sizeof(kernel::cuda::sumsq_workspace), stream_));
    try {
      const auto st = kernel::cuda::grad_sumsq_sync(g, n, ws, stream_);
      cuda_space::deallocate_async(ws, stream_);
      return st;
    } catch (...) {
      cuda_space::deallocate_async(ws, stream_);
      throw;
    }
  }
  template <class G, class P>
  void fused_adamw(float* master, float* m, float* v, const G* grad, P* param, std::size_t n,
                   const kernel::adamw_step_args& a, int /*threads*/) const {
    if (n == 0) return;
    kernel::cuda::fused_adamw(master, m, v, grad, param, n, a, stream_);
  }
  template <class Rule, class G, class P>
  void fused_step(float* master, float* const* state, const G* grad, P* param, std::size_t n,
                  const typename Rule::args& a, int /*threads*/) const {
    if (n == 0) return;
    kernel::cuda::fused_step<Rule>(master, state, grad, param, n, a, stream_);
  }
  template <class T>
  void downcast(T* dst, const float* src, std::size_t n, float scale, int /*threads*/) const {
    if (n == 0) return;
    kernel::cuda::downcast(dst, src, n, scale, stream_);
  }

private:
  cudaStream_t stream_ = nullptr;
};

ZB_NAMESPACE_END
