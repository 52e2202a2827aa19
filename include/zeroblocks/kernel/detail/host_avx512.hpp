/**
 * @file host_avx512.hpp
 * @brief AVX-512 bodies of the host kernels (16 floats per vector, masked tails).
 *
 * Compiled through `__attribute__((target(...)))`, so users need no `-march` flag;
 * `kernel/host.hpp` calls these only after `__builtin_cpu_supports` said yes.
 *
 * Conversions, all bit-identical to `core/numeric.hpp`:
 * - half → float: `vcvtph2ps` (exact; NaN quietened with payload, like `half::to_float`);
 * - float → half: `vcvtps2ph` with round-to-nearest-even (NaN quietened the same way);
 * - bfloat16 → float: zero-extend and shift left 16 (exact);
 * - float → bfloat16: integer round-to-nearest-even plus NaN quietening, exactly
 *   `bfloat16::from_float_bits`. `vcvtneps2bf16` is deliberately not used: it flushes
 *   denormal inputs to zero and would disagree with the scalar path.
 *
 * The AdamW body performs the IEEE operations of `adamw_element` in the same order
 * (the same multiplies, `vfmadd`s, `vsqrtps`, `vdivps`), so every element is
 * bit-identical to the scalar spec. Tails use masked loads and stores, which do not
 * touch memory outside the mask.
 */
#pragma once

#include "host_scalar.hpp"

#if ZB_X86_KERNELS

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

/// Target attribute of every AVX-512 function (the ISA set `host_isa()` checks for).
#define ZB_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c,fma")))
#define ZB_AVX512_INLINE ZB_TARGET_AVX512 inline __attribute__((always_inline))

// GCC 12 reports the intrinsics' deliberate `_mm*_undefined_*()` operands as
// -Wmaybe-uninitialized when they are inlined into a target-attribute function (GCC bug
// 105593); the values are never read. Silence exactly that, for this header only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

ZB_NAMESPACE_BEGIN
namespace kernel::detail::avx512 {

/// @brief Mask of the first `r` lanes (`r < 16`).
ZB_AVX512_INLINE __mmask16 first_lanes(std::size_t r) {
  return static_cast<__mmask16>((1u << r) - 1u);
}

/// @brief float → bfloat16 bits (in the low 16 bits of each 32-bit lane), RNE, NaN quietened.
ZB_AVX512_INLINE __m512i bf16_bits(__m512 f) {
  const __m512i x = _mm512_castps_si512(f);
  const __m512i hi = _mm512_srli_epi32(x, 16);
  const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
  // Round to nearest even on the 16 dropped bits: add 0x7fff + lsb, keep the top half.
  const __m512i rounded = _mm512_srli_epi32(
      _mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  // NaN (|x| > Inf as integers): keep the top half and set the quiet bit, as the scalar does.
  const __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  return _mm512_mask_blend_epi32(nan, rounded, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
}

/// @brief Load 16 elements of T widened to float.
template <class T>
ZB_AVX512_INLINE __m512 load(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_loadu_ps(p);
  } else if constexpr (std::is_same_v<T, half>) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  } else {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
}

/// @brief Load the first lanes of `k` (others read as zero, memory outside `k` untouched).
template <class T>
ZB_AVX512_INLINE __m512 load(const T* p, __mmask16 k) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_maskz_loadu_ps(k, p);
  } else if constexpr (std::is_same_v<T, half>) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p));
  } else {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
}

/// @brief Narrow 16 floats to T (RNE) and store them.
template <class T>
ZB_AVX512_INLINE void store(T* p, __m512 x) {
  if constexpr (std::is_same_v<T, float>) {
    _mm512_storeu_ps(p, x);
  } else if constexpr (std::is_same_v<T, half>) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bf16_bits(x)));
  }
}

/// @brief Narrow and store only the lanes of `k`.
template <class T>
ZB_AVX512_INLINE void store(T* p, __m512 x, __mmask16 k) {
  if constexpr (std::is_same_v<T, float>) {
    _mm512_mask_storeu_ps(p, k, x);
  } else if constexpr (std::is_same_v<T, half>) {
    _mm256_mask_storeu_epi16(p, k, _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    _mm256_mask_storeu_epi16(p, k, _mm512_cvtepi32_epi16(bf16_bits(x)));
  }
}

/// @brief The step constants broadcast once per slice.
struct adamw_consts {
  __m512 grad_scale, weight_decay, beta1, beta2, one_minus_beta1, one_minus_beta2;
  __m512 inv_sqrt_bc2, eps, neg_lr_wd, neg_step_size;
};

ZB_AVX512_INLINE adamw_consts broadcast(const adamw_step_args& a) {
  return {_mm512_set1_ps(a.grad_scale),      _mm512_set1_ps(a.weight_decay),
          _mm512_set1_ps(a.beta1),           _mm512_set1_ps(a.beta2),
          _mm512_set1_ps(a.one_minus_beta1), _mm512_set1_ps(a.one_minus_beta2),
          _mm512_set1_ps(a.inv_sqrt_bc2),    _mm512_set1_ps(a.eps),
          _mm512_set1_ps(a.neg_lr_wd),           _mm512_set1_ps(-a.step_size)};
}

/// @brief `adamw_element` on 16 lanes: the same operations in the same order.
template <bool Decoupled>
ZB_AVX512_INLINE void adamw_vec(__m512& p, __m512& m, __m512& v, __m512 g_raw, const adamw_consts& c) {
  __m512 g = _mm512_mul_ps(g_raw, c.grad_scale);
  if constexpr (!Decoupled) g = _mm512_fmadd_ps(c.weight_decay, p, g);
  m = _mm512_fmadd_ps(c.beta1, m, _mm512_mul_ps(c.one_minus_beta1, g));
  v = _mm512_fmadd_ps(c.beta2, v, _mm512_mul_ps(_mm512_mul_ps(c.one_minus_beta2, g), g));
  const __m512 denom = _mm512_fmadd_ps(_mm512_sqrt_ps(v), c.inv_sqrt_bc2, c.eps);
  if constexpr (Decoupled) p = _mm512_fmadd_ps(p, c.neg_lr_wd, p);
  p = _mm512_fmadd_ps(c.neg_step_size, _mm512_div_ps(m, denom), p);
}

template <bool Decoupled, class G, class P>
ZB_TARGET_AVX512 void fused_adamw_impl(float* master, float* m, float* v, const G* grad, P* param,
                                       std::size_t begin, std::size_t end, const adamw_step_args& a) {
  const adamw_consts c = broadcast(a);
  std::size_t i = begin;
  // Two vectors per iteration: more independent sqrt/div chains in flight per load.
  for (; i + 32 <= end; i += 32) {
    __m512 p0 = load(master + i), p1 = load(master + i + 16);
    __m512 m0 = load(m + i), m1 = load(m + i + 16);
    __m512 v0 = load(v + i), v1 = load(v + i + 16);
    adamw_vec<Decoupled>(p0, m0, v0, load(grad + i), c);
    adamw_vec<Decoupled>(p1, m1, v1, load(grad + i + 16), c);
    store(master + i, p0);
    store(master + i + 16, p1);
    store(m + i, m0);
    store(m + i + 16, m1);
    store(v + i, v0);
    store(v + i + 16, v1);
    store(param + i, p0);
    store(param + i + 16, p1);
  }
  for (; i + 16 <= end; i += 16) {
    __m512 p0 = load(master + i), m0 = load(m + i), v0 = load(v + i);
    adamw_vec<Decoupled>(p0, m0, v0, load(grad + i), c);
    store(master + i, p0);
    store(m + i, m0);
    store(v + i, v0);
    store(param + i, p0);
  }
  if (i < end) {
    // Masked tail: inactive lanes compute on zeros and are never stored.
    const __mmask16 k = first_lanes(end - i);
    __m512 p0 = load(master + i, k), m0 = load(m + i, k), v0 = load(v + i, k);
    adamw_vec<Decoupled>(p0, m0, v0, load(grad + i, k), c);
    store(master + i, p0, k);
    store(m + i, m0, k);
    store(v + i, v0, k);
    store(param + i, p0, k);
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

/// @brief `sign_of` on 16 lanes: 1, -1, or the lane itself (±0, NaN).
ZB_AVX512_INLINE __m512 sign_of(__m512 x) {
  const __m512 zero = _mm512_setzero_ps();
  const __m512 r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, zero, _CMP_GT_OQ), x, _mm512_set1_ps(1.0f));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, zero, _CMP_LT_OQ), r, _mm512_set1_ps(-1.0f));
}

/// @brief The vector body of an update rule (a specialisation per rule).
template <class Rule>
struct vec_rule;

/// `lion_element` on 16 lanes: the same operations in the same order.
template <>
struct vec_rule<lion_rule> {
  struct consts {
    __m512 grad_scale, beta1, beta2, one_minus_beta1, one_minus_beta2, neg_lr, neg_lr_wd;
  };
  ZB_AVX512_INLINE static consts make(const lion_step_args& a) {
    return {_mm512_set1_ps(a.grad_scale),      _mm512_set1_ps(a.beta1),  _mm512_set1_ps(a.beta2),
            _mm512_set1_ps(a.one_minus_beta1), _mm512_set1_ps(a.one_minus_beta2), _mm512_set1_ps(a.neg_lr),
            _mm512_set1_ps(a.neg_lr_wd)};
  }
  ZB_AVX512_INLINE static void update(__m512& p, __m512* s, __m512 g_raw, const consts& c) {
    const __m512 g = _mm512_mul_ps(g_raw, c.grad_scale);
    const __m512 d = _mm512_fmadd_ps(c.beta1, s[0], _mm512_mul_ps(c.one_minus_beta1, g));
    p = _mm512_fmadd_ps(p, c.neg_lr_wd, p);
    p = _mm512_fmadd_ps(c.neg_lr, sign_of(d), p);
    s[0] = _mm512_fmadd_ps(c.beta2, s[0], _mm512_mul_ps(c.one_minus_beta2, g));
  }
};

/// `sgd_element` on 16 lanes: the same operations in the same order.
template <bool Momentum>
struct vec_rule<sgd_rule<Momentum>> {
  struct consts {
    __m512 grad_scale, momentum, weight_decay, neg_lr;
    bool nesterov;
  };
  ZB_AVX512_INLINE static consts make(const sgd_step_args& a) {
    return {_mm512_set1_ps(a.grad_scale), _mm512_set1_ps(a.momentum), _mm512_set1_ps(a.weight_decay),
            _mm512_set1_ps(a.neg_lr), a.nesterov};
  }
  ZB_AVX512_INLINE static void update(__m512& p, [[maybe_unused]] __m512* s, __m512 g_raw, const consts& c) {
    __m512 g = _mm512_fmadd_ps(c.weight_decay, p, _mm512_mul_ps(g_raw, c.grad_scale));
    if constexpr (Momentum) {
      s[0] = _mm512_fmadd_ps(c.momentum, s[0], g);
      g = c.nesterov ? _mm512_fmadd_ps(c.momentum, s[0], g) : s[0];
    }
    p = _mm512_fmadd_ps(c.neg_lr, g, p);
  }
};

/// @brief The fused step of `Rule` over `[begin, end)`, 16 lanes at a time, a masked tail.
template <class Rule, class G, class P>
ZB_TARGET_AVX512 void fused_step_range(float* master, float* const* st, const G* grad, P* param, std::size_t begin,
                                       std::size_t end, const typename Rule::args& a) {
  constexpr int K = Rule::state_count;
  const auto c = vec_rule<Rule>::make(a);
  __m512 s[K > 0 ? K : 1];
  std::size_t i = begin;
  for (; i + 16 <= end; i += 16) {
    __m512 p = load(master + i);
    for (int k = 0; k < K; ++k) s[k] = load(st[k] + i);
    vec_rule<Rule>::update(p, s, load(grad + i), c);
    store(master + i, p);
    for (int k = 0; k < K; ++k) store(st[k] + i, s[k]);
    store(param + i, p);
  }
  if (i < end) {
    const __mmask16 m = first_lanes(end - i);
    __m512 p = load(master + i, m);
    for (int k = 0; k < K; ++k) s[k] = load(st[k] + i, m);
    vec_rule<Rule>::update(p, s, load(grad + i, m), c);
    store(master + i, p, m);
    for (int k = 0; k < K; ++k) store(st[k] + i, s[k], m);
    store(param + i, p, m);
  }
}

/// @brief Widen 8 elements of T to double lanes (helper of the sum of squares).
template <class T>
ZB_AVX512_INLINE __m512d load8_pd(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_cvtps_pd(_mm256_loadu_ps(p));
  } else if constexpr (std::is_same_v<T, half>) {
    return _mm512_cvtps_pd(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  } else {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
  }
}

/// @brief Sum of squares of one block, lanes as `scalar::sumsq_block_sum` (4 × 8 doubles).
template <class G>
ZB_TARGET_AVX512 double sumsq_block_sum(const G* g, std::size_t n) {
  __m512d acc0 = _mm512_setzero_pd(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  std::size_t i = 0;
  for (; i + sumsq_lanes <= n; i += sumsq_lanes) {
    const __m512d x0 = load8_pd(g + i), x1 = load8_pd(g + i + 8);
    const __m512d x2 = load8_pd(g + i + 16), x3 = load8_pd(g + i + 24);
    acc0 = _mm512_fmadd_pd(x0, x0, acc0);  // x*x is exact in double: fma == mul+add
    acc1 = _mm512_fmadd_pd(x1, x1, acc1);
    acc2 = _mm512_fmadd_pd(x2, x2, acc2);
    acc3 = _mm512_fmadd_pd(x3, x3, acc3);
  }
  alignas(64) double lanes[sumsq_lanes];
  _mm512_store_pd(lanes, acc0);
  _mm512_store_pd(lanes + 8, acc1);
  _mm512_store_pd(lanes + 16, acc2);
  _mm512_store_pd(lanes + 24, acc3);
  // The tail (< 32 elements) continues each lane's sequence in the same order.
  scalar::sumsq_lanes_add(g + i, n - i, lanes);
  return reduce_lanes(lanes);
}

/// @brief `dst[i] = T(float(dst[i]) + float(src[i]))` over `[begin, end)`.
template <class T>
ZB_TARGET_AVX512 void accumulate_range(T* dst, const T* src, std::size_t begin, std::size_t end) {
  std::size_t i = begin;
  for (; i + 16 <= end; i += 16) store(dst + i, _mm512_add_ps(load(dst + i), load(src + i)));
  if (i < end) {
    const __mmask16 k = first_lanes(end - i);
    store(dst + i, _mm512_add_ps(load(dst + i, k), load(src + i, k)), k);
  }
}

/// @brief `dst[i] = float(src[i]) * scale` over `[begin, end)`.
template <class T>
ZB_TARGET_AVX512 void upcast_range(float* dst, const T* src, std::size_t begin, std::size_t end,
                                   float scale) {
  const __m512 s = _mm512_set1_ps(scale);
  std::size_t i = begin;
  for (; i + 16 <= end; i += 16) _mm512_storeu_ps(dst + i, _mm512_mul_ps(load(src + i), s));
  if (i < end) {
    const __mmask16 k = first_lanes(end - i);
    _mm512_mask_storeu_ps(dst + i, k, _mm512_mul_ps(load(src + i, k), s));
  }
}

/// @brief `dst[i] = T(src[i] * scale)` over `[begin, end)`.
template <class T>
ZB_TARGET_AVX512 void downcast_range(T* dst, const float* src, std::size_t begin, std::size_t end,
                                     float scale) {
  const __m512 s = _mm512_set1_ps(scale);
  std::size_t i = begin;
  for (; i + 16 <= end; i += 16) store(dst + i, _mm512_mul_ps(_mm512_loadu_ps(src + i), s));
  if (i < end) {
    const __mmask16 k = first_lanes(end - i);
    store(dst + i, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, src + i), s), k);
  }
}

}  // namespace kernel::detail::avx512
ZB_NAMESPACE_END

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#endif  // ZB_X86_KERNELS
