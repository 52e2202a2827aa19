/**
 * @file host.hpp
 * @brief Host kernels of the optimizer step and of gradient handling, with run-time
 *        ISA dispatch (AVX-512 / AVX2 / scalar) and OpenMP across cores.
 *
 * Kernels (each over a flat range of `n` elements, `threads` = 0 meaning
 * `omp_get_max_threads()`):
 * - `grad_sumsq`   — deterministic sum of squares (in double) + non-finite check;
 * - `fused_adamw`  — upcast · unscale · clip · AdamW · write fp32 master, m, v and the
 *                    16-bit parameter, in one pass (28 B per element with 16-bit types);
 * - `accumulate`, `upcast`, `downcast` — gradient accumulation and dtype casts;
 * - `accumulate_sumsq`, `copy_sumsq` — accumulation (or a copy) and `grad_sumsq` of
 *   the result in one pass.
 *
 * The vector ISA is chosen once at run time from `__builtin_cpu_supports` (users pass no
 * `-march`), can be lowered with the environment variable `ZEROBLOCKS_ISA=scalar|avx2|
 * avx512`, and can be forced by tests with `detail::set_isa_override`. Every ISA gives
 * the same bits as the scalar per-element spec (`adamw_element`, `numeric.hpp`
 * conversions); `grad_sumsq` is also the same on every ISA because all paths use the
 * lane layout fixed in `detail/host_scalar.hpp`, and it never depends on the thread
 * count (fixed blocks, combined in index order).
 *
 * On non-x86 targets (or with ZEROBLOCKS_NO_X86_KERNELS defined) only the scalar bodies
 * are compiled and `host_isa()` is always `isa::scalar`.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/env.hpp"
#include "../core/error.hpp"
#include "../core/numeric.hpp"
#include "adamw.hpp"
#include "lion.hpp"
#include "sgd.hpp"
#include "detail/host_parallel.hpp"
#include "detail/host_scalar.hpp"

#include "detail/host_avx2.hpp"    // empty unless ZB_X86_KERNELS
#include "detail/host_avx512.hpp"  // empty unless ZB_X86_KERNELS

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace kernel {

/// @brief Instruction sets the host kernels have bodies for, lowest first.
enum class isa { scalar, avx2, avx512 };

/// @brief Lower-case name of an ISA ("scalar", "avx2", "avx512").
inline const char* isa_name(isa i) {
  switch (i) {
    case isa::scalar: return "scalar";
    case isa::avx2: return "avx2";
    case isa::avx512: return "avx512";
  }
  return "?";
}

/// @brief Whether this CPU (and this build) can run the kernels of `i`.
/// avx2 needs AVX2 + FMA + F16C; avx512 needs AVX-512 F/BW/VL/DQ + FMA + F16C.
inline bool isa_supported(isa i) {
  switch (i) {
    case isa::scalar: return true;
#if ZB_X86_KERNELS
    case isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case isa::avx512:
      return isa_supported(isa::avx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq");
#else
    case isa::avx2:
    case isa::avx512: return false;
#endif
  }
  return false;
}

namespace detail {

/// @brief The override slot: -1 none, otherwise an `isa` value. One per program
/// (a function-local static of an inline function).
inline std::atomic<int>& isa_override_slot() {
  static std::atomic<int> slot{-1};
  return slot;
}

/// @brief Force every following kernel call to use `i` (tests and benches).
/// Throws `zeroblocks::error` when the CPU cannot run `i`.
inline void set_isa_override(isa i) {
  ZB_REQUIRE(isa_supported(i), "kernel: ISA '", isa_name(i), "' is not supported by this CPU");
  isa_override_slot().store(static_cast<int>(i), std::memory_order_relaxed);
}

/// @brief Return to the automatically chosen ISA.
inline void clear_isa_override() { isa_override_slot().store(-1, std::memory_order_relaxed); }

/// @brief The best supported ISA, lowered (never raised) by `ZEROBLOCKS_ISA`.
inline isa choose_isa() {
  isa best = isa::scalar;
  if (isa_supported(isa::avx512)) best = isa::avx512;
  else if (isa_supported(isa::avx2)) best = isa::avx2;
  if (const auto env = zeroblocks::env::isa()) {
    isa want;
    if (*env == "scalar") want = isa::scalar;
    else if (*env == "avx2") want = isa::avx2;
    else if (*env == "avx512") want = isa::avx512;
    else ZB_FAIL("kernel: ZEROBLOCKS_ISA='", *env, "' is not one of scalar, avx2, avx512");
    if (want < best) best = want;  // asking for more than the CPU has keeps the best it has
  }
  return best;
}

}  // namespace detail

/// @brief The ISA the host kernels use: the override if set, otherwise the choice made
/// on first call (cached) from the CPU and `ZEROBLOCKS_ISA`.
inline isa host_isa() {
  const int forced = detail::isa_override_slot().load(std::memory_order_relaxed);
  if (forced >= 0) return static_cast<isa>(forced);
  static const isa chosen = detail::choose_isa();
  return chosen;
}

/// @brief Result of `grad_sumsq`.
struct grad_stats {
  double sumsq = 0;        ///< sum of float(g[i])^2 in double; +Inf or NaN when nonfinite
  bool nonfinite = false;  ///< some element is ±Inf or NaN
};

namespace detail {
/// Sum of squares of `len <= sumsq_block` elements with the chosen ISA's lane layout.
template <class G>
double sumsq_block_on(isa which, const G* g, std::size_t len) {
  switch (which) {
#if ZB_X86_KERNELS
    case isa::avx512: return avx512::sumsq_block_sum(g, len);
    case isa::avx2: return avx2::sumsq_block_sum(g, len);
#endif
    default: return scalar::sumsq_block_sum(g, len);
  }
}
/// The `grad_stats` of `n` elements from `block(begin, len)`, called once per block of
/// `sumsq_block` (threads may share the blocks) and summed in block order, so neither
/// the thread count nor what else `block` does changes a bit of the result.
template <class Block>
grad_stats ordered_sumsq(std::size_t n, int threads, Block&& block) {
  const std::size_t blocks = (n + sumsq_block - 1) / sumsq_block;
  auto one = [&](std::size_t b) {
    const std::size_t begin = b * sumsq_block;
    return block(begin, n - begin < sumsq_block ? n - begin : sumsq_block);
  };
  double total = 0.0;
  if (n < parallel_min_elements || resolve_threads(threads) <= 1) {
    for (std::size_t b = 0; b < blocks; ++b) total += one(b);
  } else {
    // Block sums land in their slot; the sum over slots below runs in index order.
    std::vector<double> partial(blocks);
    parallel_ranges(blocks, threads, 0, 1, [&](std::size_t b0, std::size_t b1) {
      for (std::size_t b = b0; b < b1; ++b) partial[b] = one(b);
    });
    for (std::size_t b = 0; b < blocks; ++b) total += partial[b];
  }
  return {total, !std::isfinite(total)};
}
}  // namespace detail

/**
 * @brief Sum of squares and non-finite check of a gradient shard, in one read pass.
 *
 * Deterministic: the range is cut into blocks of `detail::sumsq_block` (8192) elements,
 * each block is summed with a fixed lane layout, and block sums are added in index
 * order; the result depends only on the data (not on the thread count, nor on the ISA).
 * Squares of finite floats cannot overflow a double sum, so the sum is finite exactly
 * when every element is: `nonfinite` is read off the sum, at no extra cost per element.
 *
 * @tparam G float, half or bfloat16
 */
template <class G>
grad_stats grad_sumsq(const G* g, std::size_t n, int threads = 0) {
  static_assert(is_param_type_v<G>, "grad_sumsq: G must be float, half or bfloat16");
  const isa which = host_isa();
  return detail::ordered_sumsq(
      n, threads, [which, g](std::size_t begin, std::size_t len) { return detail::sumsq_block_on(which, g + begin, len); });
}

/**
 * @brief The fused optimizer pass over a shard: for every `i < n`, AdamW on
 * `(master[i], m[i], v[i])` with gradient `float(grad[i])`, then `param[i] = P(master[i])`.
 *
 * Bit-identical, element by element, to `adamw_element` followed by `from_float<P>` on
 * every ISA and thread count. Arrays must not overlap; no alignment is required.
 *
 * @tparam G gradient type (float, half, bfloat16)
 * @tparam P 16-bit (or fp32) parameter type written back (float, half, bfloat16)
 */
template <class G, class P>
void fused_adamw(float* master, float* m, float* v, const G* grad, P* param, std::size_t n,
                 const adamw_step_args& a, int threads = 0) {
  static_assert(is_param_type_v<G>, "fused_adamw: G must be float, half or bfloat16");
  static_assert(is_param_type_v<P>, "fused_adamw: P must be float, half or bfloat16");
  const isa which = host_isa();
  detail::parallel_ranges(n, threads, [&](std::size_t b, std::size_t e) {
    switch (which) {
#if ZB_X86_KERNELS
      case isa::avx512: detail::avx512::fused_adamw_range(master, m, v, grad, param, b, e, a); break;
      case isa::avx2: detail::avx2::fused_adamw_range(master, m, v, grad, param, b, e, a); break;
#endif
      default: detail::scalar::fused_adamw_range(master, m, v, grad, param, b, e, a); break;
    }
  });
}

/**
 * @brief The fused optimizer pass of any update rule (`adamw_rule`, `lion_rule`,
 * `sgd_rule<M>`): for every `i < n`, `Rule::update` on `master[i]` and the rule's
 * `state_count` state arrays `state[k][i]` with gradient `float(grad[i])`, then
 * `param[i] = P(master[i])`. One read and one write of each array, in one pass.
 *
 * Bit-identical, element by element, to `Rule::update` followed by `from_float<P>` on
 * every ISA and thread count. AdamW runs its dedicated path (`fused_adamw`).
 */
template <class Rule, class G, class P>
void fused_step(float* master, float* const* state, const G* grad, P* param, std::size_t n,
                const typename Rule::args& a, int threads = 0) {
  static_assert(is_param_type_v<G>, "fused_step: G must be float, half or bfloat16");
  static_assert(is_param_type_v<P>, "fused_step: P must be float, half or bfloat16");
  if constexpr (std::is_same_v<Rule, adamw_rule>) {
    fused_adamw(master, state[0], state[1], grad, param, n, a, threads);
  } else {
    const isa which = host_isa();
    detail::parallel_ranges(n, threads, [&](std::size_t b, std::size_t e) {
      switch (which) {
#if ZB_X86_KERNELS
        case isa::avx512: detail::avx512::fused_step_range<Rule>(master, state, grad, param, b, e, a); break;
        case isa::avx2: detail::avx2::fused_step_range<Rule>(master, state, grad, param, b, e, a); break;
#endif
        default: detail::scalar::fused_step_range<Rule>(master, state, grad, param, b, e, a); break;
      }
    });
  }
}

/// @brief `memcpy` split across threads (whole pages per thread): a single thread's
/// copy does not reach the memory bandwidth of the socket. Below 4 MiB, or with one
/// thread, a plain `memcpy`. Must not overlap.
inline void copy_bytes(void* dst, const void* src, std::size_t bytes, int threads = 0) {
  constexpr std::size_t min_parallel = std::size_t{4} << 20, grain = 4096;
  detail::parallel_ranges(bytes, threads, min_parallel, grain, [&](std::size_t b, std::size_t e) {
    std::memcpy(static_cast<char*>(dst) + b, static_cast<const char*>(src) + b, e - b);
  });
}

/// @brief Gradient accumulation: `dst[i] = T(float(dst[i]) + float(src[i]))`, one rounding.
template <class T>
void accumulate(T* dst, const T* src, std::size_t n, int threads = 0) {
  static_assert(is_param_type_v<T>, "accumulate: T must be float, half or bfloat16");
  const isa which = host_isa();
  detail::parallel_ranges(n, threads, [&](std::size_t b, std::size_t e) {
    switch (which) {
#if ZB_X86_KERNELS
      case isa::avx512: detail::avx512::accumulate_range(dst, src, b, e); break;
      case isa::avx2: detail::avx2::accumulate_range(dst, src, b, e); break;
#endif
      default: detail::scalar::accumulate_range(dst, src, b, e); break;
    }
  });
}

/**
 * @brief `accumulate(dst, src, n)` and `grad_sumsq(dst, n)` of the result in one pass
 * over memory: each block of `detail::sumsq_block` elements is accumulated and then
 * summed while it is still in the core's cache (16-32 KiB). Bit-identical to the two
 * calls one after the other, on every ISA and thread count (the same per-element
 * accumulation, the same block sums, summed in the same order). The gradient buckets
 * use it where they write a gradient shard for the last time, so the step's norm needs
 * no pass of its own.
 */
template <class T>
grad_stats accumulate_sumsq(T* dst, const T* src, std::size_t n, int threads = 0) {
  static_assert(is_param_type_v<T>, "accumulate_sumsq: T must be float, half or bfloat16");
  const isa which = host_isa();
  return detail::ordered_sumsq(n, threads, [which, dst, src](std::size_t begin, std::size_t len) {
    switch (which) {
#if ZB_X86_KERNELS
      case isa::avx512: detail::avx512::accumulate_range(dst, src, begin, begin + len); break;
      case isa::avx2: return detail::avx2::accumulate_sumsq_block(dst + begin, src + begin, len);
#endif
      default: detail::scalar::accumulate_range(dst, src, begin, begin + len); break;
    }
    return detail::sumsq_block_on(which, dst + begin, len);  // the block is in L1
  });
}

/// @brief `std::memcpy(dst, src, n * sizeof(T))` and `grad_sumsq(dst, n)` in one pass,
/// block by block as `accumulate_sumsq` (bit-identical to the two calls). For the first
/// write of a step, which then needs no zeroed shard to add to. Must not overlap.
template <class T>
grad_stats copy_sumsq(T* dst, const T* src, std::size_t n, int threads = 0) {
  static_assert(is_param_type_v<T>, "copy_sumsq: T must be float, half or bfloat16");
  const isa which = host_isa();
  return detail::ordered_sumsq(n, threads, [which, dst, src](std::size_t begin, std::size_t len) {
    std::memcpy(dst + begin, src + begin, len * sizeof(T));
    return detail::sumsq_block_on(which, dst + begin, len);
  });
}

/// @brief Upcast with scale: `dst[i] = float(src[i]) * scale`.
template <class T>
void upcast(float* dst, const T* src, std::size_t n, float scale, int threads = 0) {
  static_assert(is_param_type_v<T>, "upcast: T must be float, half or bfloat16");
  const isa which = host_isa();
  detail::parallel_ranges(n, threads, [&](std::size_t b, std::size_t e) {
    switch (which) {
#if ZB_X86_KERNELS
      case isa::avx512: detail::avx512::upcast_range(dst, src, b, e, scale); break;
      case isa::avx2: detail::avx2::upcast_range(dst, src, b, e, scale); break;
#endif
      default: detail::scalar::upcast_range(dst, src, b, e, scale); break;
    }
  });
}

/// @brief Downcast with scale: `dst[i] = T(src[i] * scale)` (RNE; NaN/Inf as `numeric.hpp`).
template <class T>
void downcast(T* dst, const float* src, std::size_t n, float scale, int threads = 0) {
  static_assert(is_param_type_v<T>, "downcast: T must be float, half or bfloat16");
  const isa which = host_isa();
  detail::parallel_ranges(n, threads, [&](std::size_t b, std::size_t e) {
    switch (which) {
#if ZB_X86_KERNELS
      case isa::avx512: detail::avx512::downcast_range(dst, src, b, e, scale); break;
      case isa::avx2: detail::avx2::downcast_range(dst, src, b, e, scale); break;
#endif
      default: detail::scalar::downcast_range(dst, src, b, e, scale); break;
    }
  });
}

}  // namespace kernel
ZB_NAMESPACE_END
