/**
 * @file presets.hpp
 * @brief The usual compositions: `stage0` … `stage3`.
 *
 * | preset | coordinator | bucketer | master | model state per rank |
 * |---|---|---|---|---|
 * | stage0 | resident | all_reduce | resident, replicated | 16Ψ |
 * | stage1 | resident | reduce_at_boundary | resident, sharded | 4Ψ + 12Ψ/N |
 * | stage2 | resident | reduce_scatter | resident, sharded | 2Ψ + 14Ψ/N |
 * | stage3 | prefetch_trace | reduce_scatter | resident, sharded | 16Ψ/N (+ persistent units) |
 * | stage3_on_demand | on_demand | reduce_scatter | resident, sharded | 16Ψ/N |
 * | infinity | prefetch_trace_nvme | reduce_scatter | swapped (NVMe), sharded, 16-bit params too | 2Ψ/N + staging; 28Ψ/N on disk |
 *
 * (Bytes for 16-bit T.) The loss scaler defaults to `scale::dynamic` for `half` and
 * `scale::none` otherwise; every preset takes the communicator first and the parameter
 * type second: `stage2<comm::mpi, bfloat16>`. `infinity` takes the swap backend third
 * (`swap::uring` by default; it falls back to pread/pwrite threads where io_uring is
 * unavailable) and needs `cfg.master.swap.paths`.
 */
#pragma once

#include "engine.hpp"

ZB_NAMESPACE_BEGIN

template <class Comm, class T = bfloat16, class Space = host_space>
using stage0 = engine<T, Space, Comm, partition::even, coordinate::resident, bucket::all_reduce,
                      master::resident<Space>, default_scaler_t<T>, optim::adamw>;
template <class Comm, class T = bfloat16, class Space = host_space>
using stage1 = engine<T, Space, Comm, partition::even, coordinate::resident, bucket::reduce_at_boundary,
                      master::resident<Space>, default_scaler_t<T>, optim::adamw>;
template <class Comm, class T = bfloat16, class Space = host_space>
using stage2 = engine<T, Space, Comm, partition::even, coordinate::resident, bucket::reduce_scatter,
                      master::resident<Space>, default_scaler_t<T>, optim::adamw>;
template <class Comm, class T = bfloat16, class Space = host_space>
using stage3 = engine<T, Space, Comm, partition::even, coordinate::prefetch_trace, bucket::reduce_scatter,
                      master::resident<Space>, default_scaler_t<T>, optim::adamw>;
/// @brief Stage 3 that gathers every unit when acquired and waits for it (no trace, no
/// prefetch, no persistence): the baseline `prefetch_trace` is measured against.
template <class Comm, class T = bfloat16, class Space = host_space>
using stage3_on_demand = engine<T, Space, Comm, partition::even, coordinate::on_demand, bucket::reduce_scatter,
                                master::resident<Space>, default_scaler_t<T>, optim::adamw>;
/// @brief ZeRO-Infinity: stage 3 with fp32 master, m, v and the 16-bit parameter shard
/// on NVMe (`master::swapped`, a read · update · write pipeline over sub-groups; the
/// coordinator `prefetch_trace_nvme` reads each unit's slice ahead of its gather along
/// the trace). Only the 16-bit gradient shard (2Ψ/N) and the staging buffers stay in
/// memory, plus the gathered units and persistent units.
template <class Comm, class T = bfloat16, class Swap = swap::uring>
using infinity = engine<T, host_space, Comm, partition::even, coordinate::prefetch_trace_nvme,
                        bucket::reduce_scatter, master::swapped<Swap>, default_scaler_t<T>, optim::adamw>;
/// @brief `infinity` with the 16-bit parameter shard kept in memory (DeepSpeed: stage 3
/// with `offload_optimizer.device: nvme` and no `offload_param`).
template <class Comm, class T = bfloat16, class Swap = swap::uring>
using stage3_nvme = engine<T, host_space, Comm, partition::even, coordinate::prefetch_trace, bucket::reduce_scatter,
                           master::swapped<Swap>, default_scaler_t<T>, optim::adamw>;
/// @brief Stage 2 with the optimizer state on NVMe (DeepSpeed: stage 2 +
/// `offload_optimizer.device: nvme`).
template <class Comm, class T = bfloat16, class Swap = swap::uring>
using stage2_nvme = engine<T, host_space, Comm, partition::even, coordinate::resident, bucket::reduce_scatter,
                           master::swapped<Swap>, default_scaler_t<T>, optim::adamw>;

ZB_NAMESPACE_END
