/**
 * @file host_avx2.hpp
 * @brief AVX2 + FMA + F16C bodies of the host kernels (8 floats per vector).
 *
 * Same contract as `host_avx512.hpp`: compiled through `__attribute__((target(...)))`,
 * called only when the CPU has AVX2, FMA and F16C, bit-identical to the scalar spec.
 * AVX2 has no masked 16-bit loads, so tails (< 8 elements per slice) run the scalar
 * element code inside this target; with `adamw_element`'s explicit `fmaf` that code
 * compiles to the same `vfmadd`/`vsqrtss`/`vdivss` operations and so gives the same
 * bits (the tests check tails of every length).
 *
 * float → bfloat16 uses integer round-to-nearest-even and packs with `vpackusdw`
 * (the rounded values are < 2^16, so the unsigned saturation never triggers).
 */
#pragma once

#include "host_scalar.hpp"

#if ZB_X86_KERNELS

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

/// Target attribute of every AVX2 function (the ISA set `host_isa()` checks for).
#define ZB_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define ZB_AVX2_INLINE ZB_TARGET_AVX2 inline __attribute__((always_inline))

// GCC 12 reports the intrinsics' deliberate `_mm*_undefined_*()` operands as
// -Wmaybe-uninitialized when they are inlined into a target-attribute function (GCC bug
// 105593); the values are never read. Silence exactly that, for this header only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

ZB_NAMESPACE_BEGIN
namespace kernel::detail::avx2 {

/// @brief float → 8 bfloat16 bits, RNE, NaN quietened (as `bfloat16::from_float_bits`).
ZB_AVX2_INLINE __m128i bf16_bits(__m256 f) {
  const __m256i x = _mm256_castps_si256(f);
  const __m256i hi = _mm256_srli_epi32(x, 16);
  const __m256i lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(
      _mm256_add_epi32(x, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x7fffffff)),
                                         _mm256_set1_epi32(0x7f800000));
  const __m256i r = _mm256_blendv_epi8(rounded, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

/// @brief Load 8 elements of T widened to float.
template <class T>
ZB_AVX2_INLINE __m256 load(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm256_loadu_ps(p);
  } else if constexpr (std::is_same_v<T, half>) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
}

/// @brief Narrow 8 floats to T (RNE) and store them.
template <class T>
ZB_AVX2_INLINE void store(T* p, __m256 x) {
  if constexpr (std::is_same_v<T, float>) {
    _mm256_storeu_ps(p, x);
  } else if constexpr (std::is_same_v<T, half>) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
  } else {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), bf16_bits(x));
  }
}

/// @brief The step constants broadcast once per slice.
struct adamw_consts {
  __m256 grad_scale, weight_decay, beta1, beta2, one_minus_beta1, one_minus_beta2;
  __m256 inv_sqrt_bc2, eps, neg_lr_wd, neg_step_size;
};

ZB_AVX2_INLINE adamw_consts broadcast(const adamw_step_args& a) {
  return {_mm256_set1_ps(a.grad_scale),      _mm256_set1_ps(a.weight_decay),
          _mm256_set1_ps(a.beta1),           _mm256_set1_ps(a.beta2),
          _mm256_set1_ps(a.one_minus_beta1), _mm256_set1_ps(a.one_minus_beta2),
          _mm256_set1_ps(a.inv_sqrt_bc2),    _mm256_set1_ps(a.eps),
          _mm256_set1_ps(a.neg_lr_wd),           _mm256_set1_ps(-a.step_size)};
}

/// @brief `adamw_element` on 8 lanes: the same operations in the same order.
template <bool Decoupled>
ZB_AVX2_INLINE void adamw_vec(__m256& p, __m256& m, __m256& v, __m256 g_raw, const adamw_consts& c) {
  __m256 g = _mm256_mul_ps(g_raw, c.grad_scale);
  if constexpr (!Decoupled) g = _mm256_fmadd_ps(c.weight_decay, p, g);
  m = _mm256_fmadd_ps(c.beta1, m, _mm256_mul_ps(c.one_minus_beta1, g));
  v = _mm256_fmadd_ps(c.beta2, v, _mm256_mul_ps(_mm256_mul_ps(c.one_minus_beta2, g), g));
  const __m256 denom = _mm256_fmadd_ps(_mm256_sqrt_ps(v), c.inv_sqrt_bc2, c.eps);
  if constexpr (Decoupled) p = _mm256_fmadd_ps(p, c.neg_lr_wd, p);
  p = _mm256_fmadd_ps(c.neg_step_size, _mm256_div_ps(m, denom), p);
}

template <bool Decoupled, class G, class P>
ZB_TARGET_AVX2 void fused_adamw_impl(float* master, float* m, float* v, const G* grad, P* param,
                                     std::size_t begin, std::size_t end, const adamw_step_args& a) {
  const adamw_consts c = broadcast(a);
  std::size_t i = begin;
  for (; i + 16 <= end; i += 16) {
    __m256 p0 = load(master + i), p1 = load(master + i + 8);
    __m256 m0 = load(m + i), m1 = load(m + i + 8);
    __m256 v0 = load(v + i), v1 = load(v + i + 8);
    adamw_vec<Decoupled>(p0, m0, v0, load(grad + i), c);
    adamw_vec<Decoupled>(p1, m1, v1, load(grad + i + 8), c);
    store(master + i, p0);
    store(master + i + 8, p1);
    store(m + i, m0);
    store(m + i + 8, m1);
    store(v + i, v0);
    store(v + i + 8, v1);
    store(param + i, p0);
    store(param + i + 8, p1);
  }
  for (; i + 8 <= end; i += 8) {
    __m256 p0 = load(master + i), m0 = load(m + i), v0 = load(v + i);
    adamw_vec<Decoupled>(p0, m0, v0, load(grad + i), c);
    store(master + i, p0);
    store(m + i, m0);
    store(v + i, v0);
    store(param + i, p0);
  }
  // Scalar tail, compiled for this target: explicit fmaf → the same vfmadd as above.
  for (; i < end; ++i) {
    float p = master[i];
    adamw_element(p, m[i], v[i], to_float(grad[i]), a);
    master[i] = p;
    param[i] = from_float<P>(p);
  }
}

/// @brief Fused AdamW over `[begin, end)`.
template <class G, class P>
inline void fused_adamw_range(float* master, float* m, float* v, const G* grad, P* param,
                              std::size_t begin, std::size_t end, const adamw_step_args& a) {
  if (a.decoupled) fused_adamw_impl<true>(master, m, v, grad, param, begin, end, a);
  else fused_adamw_impl<false>(master, m, v, grad, param, begin, end, a);
}

// ---- the other update rules: one vector body each, the generic loop below ---------

/// @brief `sign_of` on 8 lanes: 1, -1, or the lane itself (±0, NaN).
ZB_AVX2_INLINE __m256 sign_of(__m256 x) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 r = _mm256_blendv_ps(x, _mm256_set1_ps(1.0f), _mm256_cmp_ps(x, zero, _CMP_GT_OQ));
  return _mm256_blendv_ps(r, _mm256_set1_ps(-1.0f), _mm256_cmp_ps(x, zero, _CMP_LT_OQ));
}

/// @brief The vector body of an update rule (a specialisation per rule).
template <class Rule>
struct vec_rule;

/// `lion_element` on 8 lanes: the same operations in the same order.
template <>
struct vec_rule<lion_rule> {
  struct consts {
    __m256 grad_scale, beta1, beta2, one_minus_beta1, one_minus_beta2, neg_lr, neg_lr_wd;
  };
  ZB_AVX2_INLINE static consts make(const lion_step_args& a) {
    return {_mm256_set1_ps(a.grad_scale),      _mm256_set1_ps(a.beta1),  _mm256_set1_ps(a.beta2),
            _mm256_set1_ps(a.one_minus_beta1), _mm256_set1_ps(a.one_minus_beta2), _mm256_set1_ps(a.neg_lr),
            _mm256_set1_ps(a.neg_lr_wd)};
  }
  ZB_AVX2_INLINE static void update(__m256& p, __m256* s, __m256 g_raw, const consts& c) {
    const __m256 g = _mm256_mul_ps(g_raw, c.grad_scale);
    const __m256 d = _mm256_fmadd_ps(c.beta1, s[0], _mm256_mul_ps(c.one_minus_beta1, g));
    p = _mm256_fmadd_ps(p, c.neg_lr_wd, p);
    p = _mm256_fmadd_ps(c.neg_lr, sign_of(d), p);
    s[0] = _mm256_fmadd_ps(c.beta2, s[0], _mm256_mul_ps(c.one_minus_beta2, g));
  }
};

/// `sgd_element` on 8 lanes: the same operations in the same order.
template <bool Momentum>
struct vec_rule<sgd_rule<Momentum>> {
  struct consts {
    __m256 grad_scale, momentum, weight_decay, neg_lr;
    bool nesterov;
  };
  ZB_AVX2_INLINE static consts make(const sgd_step_args& a) {
    return {_mm256_set1_ps(a.grad_scale), _mm256_set1_ps(a.momentum), _mm256_set1_ps(a.weight_decay),
            _mm256_set1_ps(a.neg_lr), a.nesterov};
  }
  ZB_AVX2_INLINE static void update(__m256& p, [[maybe_unused]] __m256* s, __m256 g_raw, const consts& c) {
    __m256 g = _mm256_fmadd_ps(c.weight_decay, p, _mm256_mul_ps(g_raw, c.grad_scale));
    if constexpr (Momentum) {
      s[0] = _mm256_fmadd_ps(c.momentum, s[0], g);
      g = c.nesterov ? _mm256_fmadd_ps(c.momentum, s[0], g) : s[0];
    }
    p = _mm256_fmadd_ps(c.neg_lr, g, p);
  }
};

/// @brief The fused step of `Rule` over `[begin, end)`, 8 lanes at a time; the tail runs
/// the scalar rule compiled for this target (explicit fmaf: the same vfmadd).
template <class Rule, class G, class P>
ZB_TARGET_AVX2 void fused_step_range(float* master, float* const* st, const G* grad, P* param, std::size_t begin,
                                     std::size_t end, const typename Rule::args& a) {
  constexpr int K = Rule::state_count;
  const auto c = vec_rule<Rule>::make(a);
  __m256 s[K > 0 ? K : 1];
  std::size_t i = begin;
  for (; i + 8 <= end; i += 8) {
    __m256 p = load(master + i);
    for (int k = 0; k < K; ++k) s[k] = load(st[k] + i);
    vec_rule<Rule>::update(p, s, load(grad + i), c);
    store(master + i, p);
    for (int k = 0; k < K; ++k) store(st[k] + i, s[k]);
    store(param + i, p);
  }
  for (; i < end; ++i) {
    float p = master[i];
    float sc[K > 0 ? K : 1];
    for (int k = 0; k < K; ++k) sc[k] = st[k][i];
    Rule::update(p, sc, to_float(grad[i]), a);
    master[i] = p;
    for (int k = 0; k < K; ++k) st[k][i] = sc[k];
    param[i] = from_float<P>(p);
  }
}

/// @brief Sum of squares of one block, lanes as `scalar::sumsq_block_sum` (8 × 4 doubles).
template <class G>
ZB_TARGET_AVX2 double sumsq_block_sum(const G* g, std::size_t n) {
  __m256d acc[8];
  for (auto& a : acc) a = _mm256_setzero_pd();
  std::size_t i = 0;
  for (; i + sumsq_lanes <= n; i += sumsq_lanes) {
    for (int q = 0; q < 4; ++q) {
      const __m256 x = load(g + i + 8 * q);
      const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(x));
      const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
      acc[2 * q] = _mm256_fmadd_pd(lo, lo, acc[2 * q]);  // exact square: fma == mul+add
      acc[2 * q + 1] = _mm256_fmadd_pd(hi, hi, acc[2 * q + 1]);
    }
  }
  alignas(32) double lanes[sumsq_lanes];
  for (int q = 0; q < 8; ++q) _mm256_store_pd(lanes + 4 * q, acc[q]);
  scalar::sumsq_lanes_add(g + i, n - i, lanes);
  return reduce_lanes(lanes);
}

/// @brief `dst[i] = T(float(dst[i]) + float(src[i]))` over `[begin, end)`.
template <class T>
ZB_TARGET_AVX2 void accumulate_range(T* dst, const T* src, std::size_t begin, std::size_t end) {
  std::size_t i = begin;
  for (; i + 8 <= end; i += 8) store(dst + i, _mm256_add_ps(load(dst + i), load(src + i)));
  scalar::accumulate_range(dst, src, i, end);
}

/// @brief `accumulate_range(dst, src, 0, n)` and `sumsq_block_sum(dst, n)` of the result
/// (`n <= sumsq_block`) in one sweep: each vector is added, stored (rounded to T), read
/// back from the store (forwarded, no memory access) and squared into the same lanes
/// `sumsq_block_sum` uses, so both results are bit-identical to the two calls.
template <class T>
ZB_TARGET_AVX2 double accumulate_sumsq_block(T* dst, const T* src, std::size_t n) {
  __m256d acc[8];
  for (auto& a : acc) a = _mm256_setzero_pd();
  std::size_t i = 0;
  for (; i + sumsq_lanes <= n; i += sumsq_lanes) {
    for (int q = 0; q < 4; ++q) {
      T* d = dst + i + 8 * q;
      store(d, _mm256_add_ps(load(d), load(src + i + 8 * q)));
      const __m256 x = load(d);  // the rounded value
      const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(x));
      const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
      acc[2 * q] = _mm256_fmadd_pd(lo, lo, acc[2 * q]);
      acc[2 * q + 1] = _mm256_fmadd_pd(hi, hi, acc[2 * q + 1]);
    }
  }
  alignas(32) double lanes[sumsq_lanes];
  for (int q = 0; q < 8; ++q) _mm256_store_pd(lanes + 4 * q, acc[q]);
  scalar::accumulate_range(dst, src, i, n);
  scalar::sumsq_lanes_add(dst + i, n - i, lanes);
  return reduce_lanes(lanes);
}

/// @brief `dst[i] = float(src[i]) * scale` over `[begin, end)`.
template <class T>
ZB_TARGET_AVX2 void upcast_range(float* dst, const T* src, std::size_t begin, std::size_t end,
                                 float scale) {
  const __m256 s = _mm256_set1_ps(scale);
  std::size_t i = begin;
  for (; i + 8 <= end; i += 8) _mm256_storeu_ps(dst + i, _mm256_mul_ps(load(src + i), s));
  scalar::upcast_range(dst, src, i, end, scale);
}

/// @brief `dst[i] = T(src[i] * scale)` over `[begin, end)`.
template <class T>
ZB_TARGET_AVX2 void downcast_range(T* dst, const float* src, std::size_t begin, std::size_t end,
                                   float scale) {
  const __m256 s = _mm256_set1_ps(scale);
  std::size_t i = begin;
  for (; i + 8 <= end; i += 8) store(dst + i, _mm256_mul_ps(_mm256_loadu_ps(src + i), s));
  scalar::downcast_range(dst, src, i, end, scale);
}

}  // namespace kernel::detail::avx2
ZB_NAMESPACE_END

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#endif  // ZB_X86_KERNELS
