/**
 * @file detail/slice_stats.hpp
 * @brief The norm statistics of this rank's gradient slices, taken where a bucketer
 * writes them (the one-pass step).
 *
 * The step's gradient norm is the sum, in rank order, of `kernel::grad_sumsq` over each
 * rank's unit slices. A bucketer on a host space computes each of this rank's slices'
 * `grad_stats` right where it writes that slice — fused into the accumulation
 * (`kernel::accumulate_sumsq`), or just after the communicator wrote it, while it is
 * still in cache — and the engine's step reads them (`slice_stats(u, r)`) instead of
 * making its own pass over the gradient shard. The statistics are those of the same
 * bytes, computed by the same blocks in the same order, so the norm is bit-identical
 * to a separate pass. They are recomputed at every write (the bucketer cannot know
 * which micro-step is the last) and forgotten when the gradients are zeroed; a slice
 * with no entry (device spaces, or a path that did not record one) makes the engine
 * compute it at the step, as before.
 */
#pragma once

#include "../../core/config.hpp"
#include "../../kernel/host.hpp"

#include <cstddef>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace bucket::detail {

/// @brief One `grad_stats` per unit for this rank's slice, or none.
class slice_stats_table {
public:
  explicit slice_stats_table(std::size_t units) : stats_(units), known_(units, 0) {}
  void set(std::size_t u, kernel::grad_stats s) {
    stats_[u] = s;
    known_[u] = 1;
  }
  /// The statistics of unit `u`'s slice as last written, or nullptr.
  const kernel::grad_stats* get(std::size_t u) const { return known_[u] ? &stats_[u] : nullptr; }
  void forget() { known_.assign(known_.size(), 0); }

private:
  std::vector<kernel::grad_stats> stats_;
  std::vector<char> known_;
};

}  // namespace bucket::detail
ZB_NAMESPACE_END
