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
#include <zeroblocks/kernel/lion.hpp>
#include <zeroblocks/kernel/sgd.hpp>

#include <cmath>

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

/// @brief Lion, written out from its definition (Chen et al. 2023, Algorithm 2) with
/// every multiply-add as one fmaf and decoupled decay as fma(p, -lr*wd, p).
template <class G, class P>
void ref_lion(float* master, float* m, const G* grad, P* param, std::size_t n, const kernel::lion_step_args& a) {
  for (std::size_t i = 0; i < n; ++i) {
    const float g = to_float(grad[i]) * a.grad_scale;
    const float c = std::fma(a.beta1, m[i], a.one_minus_beta1 * g);
    const float sign = c > 0.0f ? 1.0f : c < 0.0f ? -1.0f : c;
    float p = std::fma(master[i], a.neg_lr_wd, master[i]);
    p = std::fma(a.neg_lr, sign, p);
    m[i] = std::fma(a.beta2, m[i], a.one_minus_beta2 * g);
    master[i] = p;
    param[i] = from_float<P>(p);
  }
}

/// @brief SGD with momentum (buffer `b`, or nullptr for none) and optional Nesterov, as
/// torch.optim.SGD with dampening 0, every multiply-add one fmaf.
template <class G, class P>
void ref_sgd(float* master, float* b, const G* grad, P* param, std::size_t n, const kernel::sgd_step_args& a) {
  for (std::size_t i = 0; i < n; ++i) {
    float g = std::fma(a.weight_decay, master[i], to_float(grad[i]) * a.grad_scale);
    if (b != nullptr) {
      b[i] = std::fma(a.momentum, b[i], g);
      g = a.nesterov ? std::fma(a.momentum, b[i], g) : b[i];
    }
    master[i] = std::fma(a.neg_lr, g, master[i]);
    param[i] = from_float<P>(master[i]);
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
