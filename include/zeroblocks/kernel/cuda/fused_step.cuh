/**
 * @file fused_step.cuh
 * @brief The fused optimizer pass of any update rule on the GPU (`lion_rule`,
 *        `sgd_rule<M>`; AdamW goes to its vectorised `fused_adamw.cuh`).
 *
 * The CUDA counterpart of `kernel::fused_step` (`kernel/host.hpp`): per element the
 * rule's shared definition `Rule::update` (`kernel/lion.hpp`, `kernel/sgd.hpp`, marked
 * `ZB_HOST_DEVICE`) on the gradient widened by `to_float`, the parameter written back
 * with `from_float<P>` — the same functions the host loops call. A plain grid-stride
 * loop with scalar accesses (the rules have 0 or 1 state arrays: 10–18 B per element
 * with 16-bit types; the vector loads of `fused_adamw.cuh` are not applied here yet).
 * Bit-identical to the host for non-NaN results under nvcc's default float flags, for
 * the reasons `fused_adamw.cuh` gives (explicit `fmaf` only, correctly rounded ops).
 */
#pragma once

#include "../../core/config.hpp"
#include "../../core/cuda_check.hpp"
#include "../../core/error.hpp"
#include "../../core/numeric.hpp"
#include "../lion.hpp"
#include "../sgd.hpp"
#include "detail/launch.cuh"
#include "fused_adamw.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <type_traits>

ZB_NAMESPACE_BEGIN
namespace kernel::cuda {
namespace detail {

/// The state arrays of a rule, passed by value to the kernel.
template <int K>
struct state_arrays {
  float* p[K > 0 ? K : 1];
};

template <class Rule, class G, class P>
__global__ void __launch_bounds__(block_threads)
    fused_step_kernel(float* __restrict__ master, state_arrays<Rule::state_count> st, const G* __restrict__ grad,
                      P* __restrict__ param, std::size_t n, typename Rule::args a) {
  constexpr int K = Rule::state_count;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    float p = master[i];
    float s[K > 0 ? K : 1];
#pragma unroll
    for (int k = 0; k < K; ++k) s[k] = st.p[k][i];
    Rule::update(p, s, to_float(grad[i]), a);
    master[i] = p;
#pragma unroll
    for (int k = 0; k < K; ++k) st.p[k][i] = s[k];
    if (param != nullptr) param[i] = from_float<P>(p);
  }
}

}  // namespace detail

/// @brief The fused pass of `Rule` over a device shard, one launch on `stream`.
template <class Rule, class G, class P>
void fused_step(float* master, float* const* state, const G* grad, P* param, std::size_t n,
                const typename Rule::args& a, cudaStream_t stream) {
  static_assert(is_param_type_v<G>, "cuda::fused_step: G must be float, half or bfloat16");
  static_assert(is_param_type_v<P>, "cuda::fused_step: P must be float, half or bfloat16");
  if constexpr (std::is_same_v<Rule, adamw_rule>) {
    fused_adamw(master, state[0], state[1], grad, param, n, a, stream);
  } else {
    if (n == 0) return;
    constexpr const char* name = "cuda::fused_step";
    constexpr int K = Rule::state_count;
    ZB_REQUIRE(master != nullptr && grad != nullptr, name, ": master and grad must not be null (n = ", n, ")");
    detail::state_arrays<K> st{};
    for (int k = 0; k < K; ++k) {
      ZB_REQUIRE(state[k] != nullptr, name, ": state array ", k, " is null");
      st.p[k] = state[k];
    }
    static detail::resident_grid resident;
    const unsigned grid =
        detail::grid_for(n, resident.get(detail::fused_step_kernel<Rule, G, P>, detail::block_threads));
    detail::fused_step_kernel<Rule, G, P><<<grid, detail::block_threads, 0, stream>>>(master, st, grad, param, n, a);
    ZB_CUDA_CHECK_LAUNCH(name);
  }
}

}  // namespace kernel::cuda
ZB_NAMESPACE_END
