/**
 * @file upcast.cuh
 * @brief dtype casts on the GPU: `upcast` (16-bit or fp32 → fp32, times a scale) and
 *        `downcast` (fp32 times a scale → 16-bit or fp32, round to nearest even).
 *
 * The CUDA counterparts of `kernel::upcast` / `kernel::downcast` (`kernel/host.hpp`):
 * `dst[i] = float(src[i]) * scale` and `dst[i] = T(src[i] * scale)`, with the
 * conversions of `core/numeric.hpp` (the same integer code on host and device) and one
 * IEEE multiply. One grid-stride launch; 16-byte vector loads and stores on the body,
 * scalar head and tail (see `detail/launch.cuh`).
 *
 * Results: bit-identical to the host kernels for every input whose result is not NaN
 * (0 ulp). NaN inputs give NaN, but its payload and sign are not part of the contract:
 * the multiply by `scale` returns the GPU's canonical NaN where x86 keeps the input's
 * payload. Do not compile with `-use_fast_math` / `-ftz=true` (a flushed subnormal is
 * a different result).
 *
 * Preconditions: `src` and `dst` do not overlap and are aligned to their element size.
 */
#pragma once

#include "../../core/config.hpp"
#include "../../core/cuda_check.hpp"
#include "../../core/error.hpp"
#include "../../core/numeric.hpp"
#include "detail/launch.cuh"
#include "detail/pack.cuh"

#include <cuda_runtime.h>

#include <cstddef>

ZB_NAMESPACE_BEGIN
namespace kernel::cuda {
namespace detail {

/// @brief `dst[i] = float(src[i]) * scale`.
template <class T>
__global__ void __launch_bounds__(block_threads)
    upcast_kernel(float* __restrict__ dst, const T* __restrict__ src, std::size_t n, vec_split split,
                  float scale) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  const std::size_t tid = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (std::size_t k = tid; k < split.nvec; k += stride) {
    const std::size_t i = split.head + vec_elems * k;
    const pack8<T> x = load8(src + i);
    pack8<float> y;
#pragma unroll
    for (int j = 0; j < 8; ++j) y.x[j] = to_float(x.x[j]) * scale;
    store8(dst + i, y);
  }
  const std::size_t scalars = split.scalar_count(n);
  for (std::size_t s = tid; s < scalars; s += stride) {
    const std::size_t i = split.scalar_index(s);
    dst[i] = to_float(src[i]) * scale;
  }
}

/// @brief `dst[i] = T(src[i] * scale)`.
template <class T>
__global__ void __launch_bounds__(block_threads)
    downcast_kernel(T* __restrict__ dst, const float* __restrict__ src, std::size_t n, vec_split split,
                    float scale) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  const std::size_t tid = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (std::size_t k = tid; k < split.nvec; k += stride) {
    const std::size_t i = split.head + vec_elems * k;
    const pack8<float> x = load8(src + i);
    pack8<T> y;
#pragma unroll
    for (int j = 0; j < 8; ++j) y.x[j] = from_float<T>(x.x[j] * scale);
    store8(dst + i, y);
  }
  const std::size_t scalars = split.scalar_count(n);
  for (std::size_t s = tid; s < scalars; s += stride) {
    const std::size_t i = split.scalar_index(s);
    dst[i] = from_float<T>(src[i] * scale);
  }
}

}  // namespace detail

/**
 * @brief Upcast with scale on the device: `dst[i] = float(src[i]) * scale`, `i < n`.
 *
 * One asynchronous launch on `stream` (none when `n == 0`); launch errors throw
 * `zeroblocks::error`. Bit-identical to `kernel::upcast` except for NaN payloads.
 *
 * @tparam T source type (half, bfloat16 or float)
 */
template <class T>
void upcast(float* dst, const T* src, std::size_t n, float scale, cudaStream_t stream) {
  static_assert(is_param_type_v<T>, "cuda::upcast: T must be float, half or bfloat16");
  if (n == 0) return;
  constexpr const char* name = "cuda::upcast";
  ZB_REQUIRE(dst != nullptr && src != nullptr, name, ": dst and src must not be null (n = ", n, ")");
  detail::require_element_aligned(name, "dst", dst, sizeof(float));
  detail::require_element_aligned(name, "src", src, sizeof(T));
  const detail::array_view arrays[] = {{dst, sizeof(float)}, {src, sizeof(T)}};
  const detail::vec_split split = detail::split_for_vectors(n, arrays);
  static detail::resident_grid resident;
  const unsigned grid = detail::grid_for(std::max(split.nvec, split.scalar_count(n)),
                                         resident.get(detail::upcast_kernel<T>, detail::block_threads));
  detail::upcast_kernel<T><<<grid, detail::block_threads, 0, stream>>>(dst, src, n, split, scale);
  ZB_CUDA_CHECK_LAUNCH(name);
}

/**
 * @brief Downcast with scale on the device: `dst[i] = T(src[i] * scale)`, `i < n`,
 * rounding to nearest even (overflow to ±Inf, subnormals kept, as `core/numeric.hpp`).
 *
 * One asynchronous launch on `stream` (none when `n == 0`); launch errors throw
 * `zeroblocks::error`. Bit-identical to `kernel::downcast` except for NaN payloads.
 *
 * @tparam T destination type (half, bfloat16 or float)
 */
template <class T>
void downcast(T* dst, const float* src, std::size_t n, float scale, cudaStream_t stream) {
  static_assert(is_param_type_v<T>, "cuda::downcast: T must be float, half or bfloat16");
  if (n == 0) return;
  constexpr const char* name = "cuda::downcast";
  ZB_REQUIRE(dst != nullptr && src != nullptr, name, ": dst and src must not be null (n = ", n, ")");
  detail::require_element_aligned(name, "dst", dst, sizeof(T));
  detail::require_element_aligned(name, "src", src, sizeof(float));
  const detail::array_view arrays[] = {{dst, sizeof(T)}, {src, sizeof(float)}};
  const detail::vec_split split = detail::split_for_vectors(n, arrays);
  static detail::resident_grid resident;
  const unsigned grid = detail::grid_for(std::max(split.nvec, split.scalar_count(n)),
                                         resident.get(detail::downcast_kernel<T>, detail::block_threads));
  detail::downcast_kernel<T><<<grid, detail::block_threads, 0, stream>>>(dst, src, n, split, scale);
  ZB_CUDA_CHECK_LAUNCH(name);
}

}  // namespace kernel::cuda
ZB_NAMESPACE_END
