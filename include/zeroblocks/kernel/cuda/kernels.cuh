/**
 * @file kernels.cuh
 * @brief All CUDA kernels of the optimizer step (needs nvcc):
 * - `cuda::grad_sumsq`  — sum of squares + non-finite check, result on the device
 *                         (`grad_sumsq.cuh`);
 * - `cuda::fused_adamw` — upcast · unscale · clip · AdamW · write fp32 master, m, v and
 *                         the 16-bit parameter in one launch (`fused_adamw.cuh`);
 * - `cuda::upcast`, `cuda::downcast` — dtype casts with a scale (`upcast.cuh`).
 *
 * Each is the device twin of the host kernel of the same name in `kernel/host.hpp`,
 * built on the same per-element definitions (`kernel/adamw.hpp`, `core/numeric.hpp`).
 * All launch asynchronously on the `cudaStream_t` they are given and throw
 * `zeroblocks::error` on bad arguments or a failed launch.
 *
 * Element types are the library's `zeroblocks::half` / `zeroblocks::bfloat16` (and
 * `float`). Note that CUDA's `cuda_fp16.h` declares a global `::half` (= `__half`):
 * outside namespace `zeroblocks` spell `zeroblocks::half`. Buffers of `__half` /
 * `__nv_bfloat16` hold the same bits: pass them with a `reinterpret_cast`.
 */
#pragma once

#include "fused_adamw.cuh"
#include "fused_step.cuh"
#include "grad_sumsq.cuh"
#include "upcast.cuh"
