/**
 * @file offloaded_plan.hpp
 * @brief What can be known of `master::offloaded` without the CUDA runtime: its knob,
 *        its counters, and the memory it holds — so the planner (`zeroblocks/plan.hpp`)
 *        plans ZeRO-Offload runs from the same declaration the policy reports with.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "master.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>

ZB_NAMESPACE_BEGIN
namespace master {

/// @brief Bytes `master::offloaded` moved over PCIe (per rank, since construction).
struct offloaded_stats {
  std::uint64_t grad_bytes_down_backward = 0;  ///< 16-bit gradient blocks copied during backward
  std::uint64_t grad_bytes_down_step = 0;      ///< 16-bit gradients copied at step() (stages 0/1)
  std::uint64_t param_bytes_up = 0;            ///< 16-bit parameters copied up after the host step
  std::uint64_t steps = 0;                     ///< applied steps
};

/// @brief Knob of `master::offloaded` (`cfg.master`); must agree across ranks.
struct offloaded_config {
  /// Elements per pipeline chunk of the host step: the host kernel runs on one chunk
  /// while the previous chunk's 16-bit parameters go up. Two pinned staging buffers of
  /// this many 16-bit elements. [DeepSpeed has none: its CPU Adam runs whole, then copies]
  std::size_t chunk_numel = std::size_t{1} << 24;

  void validate() const { ZB_REQUIRE(chunk_numel >= 1, "master.chunk_numel must be >= 1"); }
  /// Calls `v(name, field)` for each knob that must agree across ranks (`policy/config.hpp`).
  template <class Self, class V>
  static void fields_of(Self& c, V&& v) { v("chunk_numel", c.chunk_numel); }
};

/// @brief Elements per pipeline chunk of the host step for `owned` elements.
inline std::size_t offloaded_chunk(const offloaded_config& cfg, std::size_t owned) {
  return std::max<std::size_t>(1, std::min(cfg.chunk_numel, std::max<std::size_t>(owned, 1)));
}

/// @brief What `master::offloaded` holds: the fp32 master and the optimizer's `K` state
/// arrays in pinned host memory (4 (1 + K) B per owned element), and as staging the
/// pinned 16-bit gradient shard and two 16-bit parameter chunks (`ElemBytes` each).
template <std::size_t ElemBytes, int K>
void offloaded_declare(master_shape shape, const offloaded_config& cfg, memory_report& r) {
  optimizer_state<host_space, K>::declare(shape.owned_numel, r);
  r.current[static_cast<std::size_t>(mem_category::staging)] +=
      (shape.owned_numel + 2 * offloaded_chunk(cfg, shape.owned_numel)) * ElemBytes;
}

}  // namespace master
ZB_NAMESPACE_END
