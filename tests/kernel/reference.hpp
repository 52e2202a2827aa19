/**
 * @file reference.hpp
 * @brief Plain scalar references of the host kernels: the spec the tests hold every
 *        ISA path to.
 *
 * Straightforward loops, one element at a time, written from the kernel contracts in
 * `kernel/host.hpp` and the per-element rule `adamw_element` (the formula is the spec).
 * Nothing here is vectorised or threaded on purpose.
 */
#pragma once

#include <zeroblocks/core/numeric.hpp>
#include <zeroblocks/kernel/adamw.hpp>

#include <cstddef>

namespace zeroblocks::test {

/// @brief The fused AdamW pass, element by element.
template <class G, class P>
void ref_fused_adamw(float* master, float* m, float* v, const G* grad, P* param, std::size_t n,
                     const kernel::adamw_step_args& a) {
  for (std::size_t i = 0; i < n; ++i) {
    float p = master[i];
    kernel::adamw_element(p, m[i], v[i], to_float(grad[i]), a);
    master[i] = p;
    param[i] = from_float<P>(p);
  }
}

/// @brief Sum of squares in long double, one element at a time (accuracy reference;
/// the kernel's summation order differs, so compare with a relative tolerance).
template <class G>
long double ref_sumsq(const G* g, std::size_t n) {
  long double s = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const long double x = to_float(g[i]);
    s += x * x;
  }
  return s;
}

/// @brief Gradient accumulation with one rounding.
template <class T>
void ref_accumulate(T* dst, const T* src, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) dst[i] = from_float<T>(to_float(dst[i]) + to_float(src[i]));
}

/// @brief Upcast with scale.
template <class T>
void ref_upcast(float* dst, const T* src, std::size_t n, float scale) {
  for (std::size_t i = 0; i < n; ++i) dst[i] = to_float(src[i]) * scale;
}

/// @brief Downcast with scale.
template <class T>
void ref_downcast(T* dst, const float* src, std::size_t n, float scale) {
  for (std::size_t i = 0; i < n; ++i) dst[i] = from_float<T>(src[i] * scale);
}

}  // namespace zeroblocks::test
