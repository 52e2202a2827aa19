/**
 * @file detail/reduce.hpp
 * @brief The one reduction every communicator uses: sum N blocks in fp32, in block
 * order, scale, round once.
 *
 * Because all communicators and all collectives reduce through this function, the
 * result of a reduction does not depend on which collective carried it (all-reduce in
 * stage 0, reduce-scatter in stages 1–3) or on the world size's algorithm choice in MPI.
 */
#pragma once

#include "../../core/config.hpp"
#include "../../kernel/host.hpp"

#include <algorithm>
#include <cstddef>

ZB_NAMESPACE_BEGIN
namespace detail {

/// @brief The rank-ordered fp32 sum of `nblocks` blocks of T, in chunks: calls
/// `emit(first, sum, n)` with `sum[i] = sum_{j<nblocks} T2F(base[j*stride + first + i])`.
template <class T, class Emit>
void sum_blocks(const T* base, std::size_t stride, int nblocks, std::size_t count, Emit&& emit) {
  constexpr std::size_t chunk = 2048;
  alignas(64) float acc[chunk];
  alignas(64) float tmp[chunk];
  for (std::size_t c0 = 0; c0 < count; c0 += chunk) {
    const std::size_t n = std::min(chunk, count - c0);
    kernel::upcast(acc, base + c0, n, 1.0f, 1);
    for (int j = 1; j < nblocks; ++j) {
      kernel::upcast(tmp, base + static_cast<std::size_t>(j) * stride + c0, n, 1.0f, 1);
      for (std::size_t i = 0; i < n; ++i) acc[i] += tmp[i];
    }
    emit(c0, static_cast<const float*>(acc), n);
  }
}

/// @brief out[i] = T(scale * sum_{j<nblocks} T2F(base[j*stride + i])) for i < count.
/// `out` may alias block `j` of `base`.
template <class T>
void reduce_blocks(const T* base, std::size_t stride, int nblocks, std::size_t count, float scale,
                   T* out) {
  sum_blocks(base, stride, nblocks, count,
             [&](std::size_t c0, const float* sum, std::size_t n) { kernel::downcast(out + c0, sum, n, scale, 1); });
}

/// @brief acc[i] += scale * sum_{j<nblocks} T2F(base[j*stride + i]) for i < count, in
/// fp32: the same rank-ordered sum as `reduce_blocks`, added to an fp32 accumulator
/// instead of rounded to T (fp32 gradient accumulation, `grad_accum_dtype::fp32`).
/// `first`: the accumulator starts here (`acc[i] = scale * sum`), so it needs no zeroing.
template <class T>
void reduce_blocks_accumulate(const T* base, std::size_t stride, int nblocks, std::size_t count, float scale,
                              float* out, bool first = false) {
  sum_blocks(base, stride, nblocks, count, [&](std::size_t c0, const float* sum, std::size_t n) {
    float* o = out + c0;
    if (first)
      for (std::size_t i = 0; i < n; ++i) o[i] = sum[i] * scale;
    else
      for (std::size_t i = 0; i < n; ++i) o[i] += sum[i] * scale;
  });
}

}  // namespace detail
ZB_NAMESPACE_END
