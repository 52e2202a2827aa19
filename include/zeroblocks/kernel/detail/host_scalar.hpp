/**
 * @file host_scalar.hpp
 * @brief Portable scalar bodies of the host kernels (any CPU, any compiler).
 *
 * These run when no vector ISA is available (non-x86, or `ZEROBLOCKS_ISA=scalar`),
 * and they fix the conventions the vector bodies must follow:
 *
 * - the gradient sum of squares is computed per block of `sumsq_block` elements; in a
 *   block, element `i` goes to lane `i % sumsq_lanes` (a double accumulator), and the
 *   lanes are combined by the fixed tree of `reduce_lanes`. Squares of floats are exact
 *   in double, so `lane += x*x` rounds once whether or not it is fused, and every ISA
 *   that honours the lane assignment gives the same bits;
 * - every other kernel is one `numeric.hpp` conversion / `adamw_element` per element.
 *
 * Each function works on one slice `[begin, end)`; `kernel/host.hpp` splits the range
 * across threads.
 */
#pragma once

#include "../../core/numeric.hpp"
#include "../adamw.hpp"
#include "../lion.hpp"
#include "../sgd.hpp"

#include <cstddef>

/// 1 when the x86 vector bodies (AVX2, AVX-512) are compiled: on x86-64, unless the user
/// defines ZEROBLOCKS_NO_X86_KERNELS (which also lets an x86 machine build and test the
/// portable configuration that non-x86 targets get).
#if defined(__x86_64__) && !defined(ZEROBLOCKS_NO_X86_KERNELS)
#define ZB_X86_KERNELS 1
#else
#define ZB_X86_KERNELS 0
#endif

ZB_NAMESPACE_BEGIN
namespace kernel::detail {

/// @brief Elements per block of the deterministic sum of squares.
inline constexpr std::size_t sumsq_block = 8192;
/// @brief Double accumulators per block; element i of a block goes to lane i % 32.
inline constexpr std::size_t sumsq_lanes = 32;

/// @brief Combine the 32 lanes of a block in a fixed pairwise tree.
inline double reduce_lanes(double* lanes) {
  for (std::size_t s = sumsq_lanes / 2; s >= 1; s /= 2)
    for (std::size_t j = 0; j < s; ++j) lanes[j] += lanes[j + s];
  return lanes[0];
}

namespace scalar {

/// @brief Add the squares of `g[i]`, `i < n`, into `lanes[i % 32]` (lanes already hold the
/// sums of the elements before; n may be any count).
template <class G>
inline void sumsq_lanes_add(const G* g, std::size_t n, double* lanes) {
  for (std::size_t i = 0; i < n; ++i) {
    const double x = static_cast<double>(to_float(g[i]));
    lanes[i % sumsq_lanes] += x * x;  // exact product: contraction cannot change it
  }
}

/// @brief Sum of squares of one block (`n <= sumsq_block`).
template <class G>
inline double sumsq_block_sum(const G* g, std::size_t n) {
  double lanes[sumsq_lanes] = {};
  sumsq_lanes_add(g, n, lanes);
  return reduce_lanes(lanes);
}

/// @brief Fused AdamW over `[begin, end)`.
template <class G, class P>
inline void fused_adamw_range(float* master, float* m, float* v, const G* grad, P* param,
                              std::size_t begin, std::size_t end, const adamw_step_args& a) {
  for (std::size_t i = begin; i < end; ++i) {
    float p = master[i];
    adamw_element(p, m[i], v[i], to_float(grad[i]), a);
    master[i] = p;
    param[i] = from_float<P>(p);
  }
}

/// @brief The fused step of any update rule over `[begin, end)`: `Rule::update` on the
/// master and the rule's `state_count` state arrays `st[k]`, then the 16-bit parameter.
template <class Rule, class G, class P>
inline void fused_step_range(float* master, float* const* st, const G* grad, P* param, std::size_t begin,
                             std::size_t end, const typename Rule::args& a) {
  constexpr int K = Rule::state_count;
  for (std::size_t i = begin; i < end; ++i) {
    float p = master[i];
    float s[K > 0 ? K : 1];
    for (int k = 0; k < K; ++k) s[k] = st[k][i];
    Rule::update(p, s, to_float(grad[i]), a);
    master[i] = p;
    for (int k = 0; k < K; ++k) st[k][i] = s[k];
    param[i] = from_float<P>(p);
  }
}

/// @brief `dst[i] = T(float(dst[i]) + float(src[i]))` over `[begin, end)`.
template <class T>
inline void accumulate_range(T* dst, const T* src, std::size_t begin, std::size_t end) {
  for (std::size_t i = begin; i < end; ++i)
    dst[i] = from_float<T>(to_float(dst[i]) + to_float(src[i]));
}

/// @brief `dst[i] = float(src[i]) * scale` over `[begin, end)`.
template <class T>
inline void upcast_range(float* dst, const T* src, std::size_t begin, std::size_t end, float scale) {
  for (std::size_t i = begin; i < end; ++i) dst[i] = to_float(src[i]) * scale;
}

/// @brief `dst[i] = T(src[i] * scale)` over `[begin, end)`.
template <class T>
inline void downcast_range(T* dst, const float* src, std::size_t begin, std::size_t end, float scale) {
  for (std::size_t i = begin; i < end; ++i) dst[i] = from_float<T>(src[i] * scale);
}

}  // namespace scalar
}  // namespace kernel::detail
ZB_NAMESPACE_END
