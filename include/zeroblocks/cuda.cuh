/**
 * @file cuda.cuh
 * @brief Everything of the CUDA backend, for a translation unit compiled by nvcc: the
 * host-side library (`zeroblocks.hpp`), `cuda_space` and its streams and events,
 * `space_ops<cuda_space>` (so engines run on `cuda_space`),
 * `comm::nccl` with its deterministic-reduction kernel, and the fused optimizer,
 * sum-of-squares and cast kernels. Link `zeroblocks::cuda`.
 *
 * Translation units compiled by a plain C++ compiler may include `space/cuda_space.hpp`
 * and `comm/nccl.hpp` (no kernels); one nvcc unit of the program must include
 * `comm/nccl.cuh` (this header does) for `reduce_mode::deterministic`.
 */
#pragma once

#if !defined(__CUDACC__)
#error "zeroblocks/cuda.cuh needs nvcc; plain C++ translation units include zeroblocks/space/cuda_space.hpp and zeroblocks/comm/nccl.hpp"
#endif

#include "comm/nccl.cuh"
#include "engine/presets_cuda.hpp"
#include "space/cuda_ops.cuh"
#include "kernel/cuda/kernels.cuh"
#include "space/cuda_space.hpp"
#include "zeroblocks.hpp"
