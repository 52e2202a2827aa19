/**
 * @file nccl.cuh
 * @brief `comm::nccl` plus the kernel of its deterministic reduction (needs nvcc).
 *
 * Include this header (instead of, or as well as, `nccl.hpp`) in one translation unit
 * compiled by nvcc: it defines the block-reduction kernel and registers its launchers
 * with `comm::nccl` during static initialisation, which `reduce_mode::deterministic`
 * needs (see `nccl.hpp`). Other translation units may include `nccl.hpp` alone and be
 * compiled by a plain C++ compiler.
 *
 * The kernel is the device twin of `detail::reduce_blocks` (`detail/reduce.hpp`), the
 * reduction `comm::mpi` and `comm::self` use: per element, widen each block's value to
 * fp32 with the exact conversions of `numeric.hpp`, sum them in block (rank) order
 * starting from block 0, multiply by `scale`, round once to the element type with the
 * same round-to-nearest-even narrowing. `__fadd_rn` / `__fmul_rn` keep nvcc from
 * contracting the sum and the scaling into an FMA, which would round differently from
 * the host. So for the same inputs the bits equal the host's (a NaN's payload aside).
 */
#pragma once

#if !defined(__CUDACC__)
#error "zeroblocks/comm/nccl.cuh needs nvcc; plain C++ translation units include zeroblocks/comm/nccl.hpp"
#endif

#include "../core/numeric.hpp"
#include "nccl.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>

ZB_NAMESPACE_BEGIN
namespace detail {

/// @brief out[i] = T(scale * sum_j float(block_j[i])), blocks in order 0..nblocks-1; block
/// `self` is `mine`, block j != self is `others + (j - (j > self)) * count`. Grid-stride.
/// `out` may alias `mine` (each element is read before it is written, by one thread).
template <class T>
__global__ void nccl_block_reduce_kernel(const T* mine, const T* __restrict__ others, int self, int nblocks,
                                         std::size_t count, float scale, T* out) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    float acc = 0.0f;
    for (int j = 0; j < nblocks; ++j) {
      const T* block = j == self ? mine : others + static_cast<std::size_t>(j - (j > self ? 1 : 0)) * count;
      const float v = to_float(block[i]);
      acc = j == 0 ? v : __fadd_rn(acc, v);  // start from block 0 itself: -0 + ... stays as the host has it
    }
    out[i] = from_float<T>(__fmul_rn(acc, scale));
  }
}

/// @brief Launcher with the type-erased signature `comm::nccl` calls.
template <class T>
cudaError_t nccl_block_reduce_launch(const void* mine, const void* others, int self, int nblocks, std::size_t count,
                                     float scale, void* out, cudaStream_t s) {
  if (count == 0) return cudaSuccess;
  constexpr unsigned threads = 256;
  // Enough blocks to fill an H100/H200 several times over; the loop covers the rest.
  const std::size_t wanted = (count + threads - 1) / threads;
  const unsigned blocks = static_cast<unsigned>(std::min<std::size_t>(wanted, 4096));
  nccl_block_reduce_kernel<T><<<blocks, threads, 0, s>>>(static_cast<const T*>(mine), static_cast<const T*>(others),
                                                         self, nblocks, count, scale, static_cast<T*>(out));
  return launch_status();
}

/// @brief Registers the launchers during static initialisation of any translation unit
/// that includes this header.
[[maybe_unused]] inline const bool nccl_block_reducers_registered = [] {
  auto& r = nccl_reducers();
  r.f32 = &nccl_block_reduce_launch<float>;
  r.f16 = &nccl_block_reduce_launch<half>;
  r.bf16 = &nccl_block_reduce_launch<bfloat16>;
  return true;
}();

}  // namespace detail
ZB_NAMESPACE_END
