/**
 * @file fused_adamw.cuh
 * @brief The fused optimizer pass on the GPU: upcast · unscale · clip · AdamW · write
 *        fp32 master, m, v and the 16-bit parameter, in one launch over a flat shard.
 *
 * The CUDA counterpart of `kernel::fused_adamw` (`kernel/host.hpp`). Per element it
 * runs the shared definition `kernel::adamw_element` (`kernel/adamw.hpp`) on the
 * gradient widened by `to_float` and writes the parameter back with `from_float<P>`
 * (`core/numeric.hpp`, round to nearest even) — the very functions the host loops call,
 * so there is one definition of the math.
 *
 * Memory traffic with 16-bit gradient and parameter: 28 bytes per element (2 B grad
 * read, 12 B master/m/v read, 12 B written, 2 B param written), moved with 16-byte
 * vector loads and stores (two `float4`-sized operations per fp32 array and one per
 * 16-bit array for every eight elements). Shards whose arrays are all offset alike from
 * 16-byte alignment are vectorised after a scalar head; arrays misaligned differently
 * take a scalar path; see `detail/launch.cuh`.
 *
 * Results (the bound the tests hold it to): **bit-identical** to the host kernel and to
 * the plain reference for every element whose results are not NaN, i.e. 0 ulp on
 * master, m, v and param. Why that holds: `adamw_element` spells every multiply-add as
 * an explicit `fmaf` and has no other `a*b+c` for nvcc's `-fmad` to contract (a `fmul`
 * feeds only an `fmaf` addend, a division or a store); `fmaf`, `sqrtf` and `/` are
 * correctly rounded on the device under nvcc's defaults (`-prec-div=true`,
 * `-prec-sqrt=true`, `-ftz=false`), exactly as on the host; the conversions are the
 * same integer code on both sides. **Requirement:** translation units that instantiate
 * this kernel must not be compiled with `-use_fast_math`, `-ftz=true`,
 * `-prec-div=false` or `-prec-sqrt=false` (approximate division / square root and
 * flushed subnormals change the last bits; nvcc exposes no macro to detect them).
 * NaN payloads are outside the contract: an element whose host result is NaN is NaN on
 * the device too, but the GPU produces the canonical NaN where x86 propagates a
 * payload (this happens only for non-finite gradients, whose step the loss scaler
 * skips).
 *
 * Preconditions: the arrays do not overlap; every pointer is aligned to its element
 * size (checked: an `error` is thrown otherwise); no other alignment is needed.
 */
#pragma once

#include "../../core/config.hpp"
#include "../../core/cuda_check.hpp"
#include "../../core/error.hpp"
#include "../../core/numeric.hpp"
#include "../adamw.hpp"
#include "detail/launch.cuh"
#include "detail/pack.cuh"

#include <cuda_runtime.h>

#include <cstddef>

ZB_NAMESPACE_BEGIN
namespace kernel::cuda {
namespace detail {

/// @brief One element of the fused pass (the scalar edges and the scalar path).
template <class G, class P>
__device__ __forceinline__ void fused_adamw_one(float* __restrict__ master, float* __restrict__ m,
                                                float* __restrict__ v, const G* __restrict__ grad,
                                                P* __restrict__ param, std::size_t i,
                                                const adamw_step_args& a) {
  float p = master[i], mi = m[i], vi = v[i];
  adamw_element(p, mi, vi, to_float(grad[i]), a);
  master[i] = p;
  m[i] = mi;
  v[i] = vi;
  if (param != nullptr) param[i] = from_float<P>(p);
}

/// @brief The fused pass: a grid-stride loop over the vector body, then over the scalar
/// head and tail (see `vec_split`).
template <class G, class P>
__global__ void __launch_bounds__(block_threads)
    fused_adamw_kernel(float* __restrict__ master, float* __restrict__ m, float* __restrict__ v,
                       const G* __restrict__ grad, P* __restrict__ param, std::size_t n, vec_split split,
                       adamw_step_args a) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  const std::size_t tid = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (std::size_t k = tid; k < split.nvec; k += stride) {
    const std::size_t i = split.head + vec_elems * k;
    pack8<float> pm = load8(master + i), mm = load8(m + i), vv = load8(v + i);
    const pack8<G> gg = load8(grad + i);
#pragma unroll
    for (int j = 0; j < 8; ++j) adamw_element(pm.x[j], mm.x[j], vv.x[j], to_float(gg.x[j]), a);
    store8(master + i, pm);
    store8(m + i, mm);
    store8(v + i, vv);
    if (param != nullptr) {
      pack8<P> pp;
#pragma unroll
      for (int j = 0; j < 8; ++j) pp.x[j] = from_float<P>(pm.x[j]);
      store8(param + i, pp);
    }
  }
  const std::size_t scalars = split.scalar_count(n);
  for (std::size_t s = tid; s < scalars; s += stride)
    fused_adamw_one(master, m, v, grad, param, split.scalar_index(s), a);
}

}  // namespace detail

/**
 * @brief The fused optimizer pass over a device shard: for every `i < n`, AdamW on
 * `(master[i], m[i], v[i])` with gradient `float(grad[i])` (multiplied by
 * `a.grad_scale`, i.e. unscaled and clipped), then `param[i] = P(master[i])`.
 *
 * One kernel launch on `stream`, asynchronous; launch errors throw `zeroblocks::error`.
 * Bit-identical to `kernel::fused_adamw` on the host for non-NaN results (see the file
 * comment for the compiler flags this needs).
 *
 * @tparam G gradient type (float, half, bfloat16)
 * @tparam P parameter type written back (float, half, bfloat16)
 * @param master fp32 master parameters (device, updated)
 * @param m      first moments (device, updated)
 * @param v      second moments (device, updated)
 * @param grad   gradients, not yet unscaled (device)
 * @param param  parameter copy to write, or nullptr to write none (device)
 * @param n      elements (0: nothing is launched)
 * @param a      the step's constants from `kernel::make_adamw_args`
 * @param stream the stream to launch on
 */
template <class G, class P>
void fused_adamw(float* master, float* m, float* v, const G* grad, P* param, std::size_t n,
                 const adamw_step_args& a, cudaStream_t stream) {
  static_assert(is_param_type_v<G>, "cuda::fused_adamw: G must be float, half or bfloat16");
  static_assert(is_param_type_v<P>, "cuda::fused_adamw: P must be float, half or bfloat16");
  if (n == 0) return;
  constexpr const char* name = "cuda::fused_adamw";
  ZB_REQUIRE(master != nullptr && m != nullptr && v != nullptr && grad != nullptr, name,
             ": master, m, v and grad must not be null (n = ", n, ")");
  detail::require_element_aligned(name, "master", master, sizeof(float));
  detail::require_element_aligned(name, "m", m, sizeof(float));
  detail::require_element_aligned(name, "v", v, sizeof(float));
  detail::require_element_aligned(name, "grad", grad, sizeof(G));
  if (param != nullptr) detail::require_element_aligned(name, "param", param, sizeof(P));
  const detail::array_view arrays[] = {
      {master, sizeof(float)}, {m, sizeof(float)}, {v, sizeof(float)}, {grad, sizeof(G)}, {param, sizeof(P)}};
  const detail::vec_split split = detail::split_for_vectors(n, arrays);
  static detail::resident_grid resident;
  const unsigned grid = detail::grid_for(std::max(split.nvec, split.scalar_count(n)),
                                         resident.get(detail::fused_adamw_kernel<G, P>, detail::block_threads));
  detail::fused_adamw_kernel<G, P><<<grid, detail::block_threads, 0, stream>>>(master, m, v, grad, param, n,
                                                                               split, a);
  ZB_CUDA_CHECK_LAUNCH(name);
}

}  // namespace kernel::cuda
ZB_NAMESPACE_END
