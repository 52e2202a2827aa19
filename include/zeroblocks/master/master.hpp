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
#include "../space/host_space.hpp"
#include "../space/memory.hpp"

#include <concepts>
#include <cstddef>

ZB_NAMESPACE_BEGIN

/// @brief Tag that marks a type as a master-state policy.
struct master_tag {};

template <class M>
concept master_policy = std::same_as<typename M::master_concept, master_tag>;

/// @brief fp32 master, Adam m and v of `n` owned elements in `Space`, zeroed, tracked as
/// `master_fp32`, `adam_m`, `adam_v` (the state `master::resident` and
/// `master::offloaded` hold in memory).
template <class Space>
struct adam_state {
  buffer<float, Space> master, m, v;
  adam_state(std::size_t n, memory_tracker* tracker)
      : master(n, mem_category::master_fp32, tracker),
        m(n, mem_category::adam_m, tracker),
        v(n, mem_category::adam_v, tracker) {
    master.zero();
    m.zero();
    v.zero();
  }
  /// @brief What it holds, for the estimator: 12 B per element.
  static void declare(std::size_t n, memory_report& r) {
    r.current[static_cast<std::size_t>(mem_category::master_fp32)] += n * 4;
    r.current[static_cast<std::size_t>(mem_category::adam_m)] += n * 4;
    r.current[static_cast<std::size_t>(mem_category::adam_v)] += n * 4;
  }
};

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
