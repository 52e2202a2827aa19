/**
 * @file master.hpp
 * @brief The master-state role: where fp32 master weights, Adam m and v live and where
 * the fused step runs.
 *
 * Policies, side by side:
 *  - `master::resident<Space>` (`resident.hpp`): in memory of `Space`, the step on the
 *    host kernels.
 *  - `master::swapped<Swap>` (`swapped.hpp`): on NVMe through a swap backend, the step a
 *    read · update · write pipeline over sub-groups (ZeRO-Infinity).
 *  - `master::offloaded` (`offloaded.hpp`, needs the CUDA runtime): ZeRO-Offload for
 *    GPU ranks — state in pinned host memory, the host step, 16-bit gradients down and
 *    16-bit parameters up, pipelined over chunks.
 *
 * An `impl<Ctx>` is built for the rank's owned numel (Ψ for stage 0, Ψ/N otherwise) and
 * provides `set(offset, values, n)`, `read_master(offset, out, n)`,
 * `apply(slices, args)` — the fused pass over every owned slice — and
 * `static declare(owned, cfg, report&)` (the memory it holds). Optional:
 * `commit()` / `rollback()` — the step is a transaction: the engine calls `commit()`
 * once every rank's `apply` succeeded, `rollback()` on every rank when one failed (the
 * 16-bit parameters return to the committed state) and throws `collective_error`.
 */
#pragma once

#include "../core/config.hpp"

#include <concepts>
#include <cstddef>

ZB_NAMESPACE_BEGIN

/// @brief Tag that marks a type as a master-state policy.
struct master_tag {};

template <class M>
concept master_policy = std::same_as<typename M::master_concept, master_tag>;

/// @brief One contiguous piece of the step: a slice's gradient, its 16-bit parameter
/// destination, its length and where it sits in the master arrays.
template <class T>
struct step_slice {
  const T* grad = nullptr;
  T* param = nullptr;
  std::size_t numel = 0;
  std::size_t master_offset = 0;
};

ZB_NAMESPACE_END
