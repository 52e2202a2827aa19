/**
 * @file presets_cuda.hpp
 * @brief The GPU compositions: ZeRO-Offload (`stage2_offload`, `stage3_offload`). The
 *        in-memory presets `stage0` … `stage3` take `cuda_space` as their third argument
 *        (`stage2<comm::nccl, bfloat16, cuda_space>`). Needs `zeroblocks::cuda`; the
 *        engine must be instantiated in a translation unit that included
 *        `zeroblocks/cuda.cuh`.
 *
 * | preset | coordinator | bucketer | master | GPU memory per rank | pinned host memory |
 * |---|---|---|---|---|---|
 * | stage2_offload | resident | reduce_scatter | offloaded | 2Ψ + 2Ψ/N | 12Ψ/N + staging |
 * | stage3_offload | prefetch_trace | reduce_scatter | offloaded | 4Ψ/N (+ gathered units) | 12Ψ/N + staging |
 */
#pragma once

#include "../master/offloaded.hpp"
#include "../space/cuda_space.hpp"
#include "presets.hpp"

ZB_NAMESPACE_BEGIN

/// @brief Stage 2 with the optimizer state and step on the host (DeepSpeed: stage 2 +
/// `offload_optimizer.device: cpu`).
template <class Comm, class T = bfloat16>
using stage2_offload = engine<T, cuda_space, Comm, partition::even, coordinate::resident, bucket::reduce_scatter,
                              master::offloaded, default_scaler_t<T>, optim::adamw>;
/// @brief Stage 3 with the optimizer state and step on the host (DeepSpeed: stage 3 +
/// `offload_optimizer.device: cpu`).
template <class Comm, class T = bfloat16>
using stage3_offload = engine<T, cuda_space, Comm, partition::even, coordinate::prefetch_trace, bucket::reduce_scatter,
                              master::offloaded, default_scaler_t<T>, optim::adamw>;

ZB_NAMESPACE_END
