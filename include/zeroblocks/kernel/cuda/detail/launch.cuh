/**
 * @file launch.cuh
 * @brief Launch plumbing shared by the CUDA kernels: block size, grid sizing from the
 *        GPU's occupancy, and the split of a flat range into a 16-byte vector body and
 *        scalar edges.
 *
 * Every elementwise kernel (`fused_adamw`, `upcast`, `downcast`) runs a grid-stride
 * loop over `vec_split`: elements `[0, head)` and `[head + 8*nvec, n)` one at a time,
 * `[head, head + 8*nvec)` eight at a time with 16-byte loads and stores. `head` (0..7)
 * is the number of leading elements after which *every* array of the call is 16-byte
 * aligned: a shard that starts a few elements into an aligned buffer (all arrays offset
 * alike, e.g. `pointer + 1`) is still vectorised. When no such `head` exists (arrays
 * misaligned differently) the whole range takes the scalar path. Eight elements of
 * fp32 are 32 bytes and of a 16-bit type 16 bytes, so one `head` keeps both kinds of
 * array aligned for the whole body.
 *
 * Grids are sized to fill the GPU once (SMs x resident blocks per SM, from
 * `cudaOccupancyMaxActiveBlocksPerMultiprocessor`, cached per kernel and device) and
 * never larger than the work: on a streaming kernel that is the full memory parallelism
 * without a partial last wave.
 */
#pragma once

#include "../../../core/config.hpp"
#include "../../../core/cuda_check.hpp"
#include "../../../core/error.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>

ZB_NAMESPACE_BEGIN
namespace kernel::cuda::detail {

/// @brief Threads per block of every kernel here.
inline constexpr int block_threads = 256;

/// @brief Elements per vector step: 16 bytes of a 16-bit array, 2 x 16 bytes of fp32.
inline constexpr std::size_t vec_elems = 8;

/// @brief How a flat range of `n` elements is cut into scalar edges and a vector body.
struct vec_split {
  std::size_t head;  ///< leading elements done one at a time (0..7)
  std::size_t nvec;  ///< vectors of `vec_elems` elements starting at element `head`

  /// @brief Index of the `s`-th scalar element: the head first, then the tail.
  __host__ __device__ std::size_t scalar_index(std::size_t s) const {
    return s < head ? s : s + vec_elems * nvec;
  }
  /// @brief Number of elements done one at a time.
  __host__ __device__ std::size_t scalar_count(std::size_t n) const { return n - vec_elems * nvec; }
};

/// @brief One array of a call, for `split_for_vectors` (`ptr == nullptr`: not used).
struct array_view {
  const void* ptr;
  std::size_t elem_size;
};

/// @brief Check that a non-null array is aligned to its element size (CUDA cannot load
/// a `float` or a 16-bit value from an address that is not); `what` names it.
inline void require_element_aligned(const char* kernel, const char* what, const void* p,
                                    std::size_t elem_size) {
  ZB_REQUIRE(reinterpret_cast<std::uintptr_t>(p) % elem_size == 0, kernel, ": ", what, " (", p,
             ") is not aligned to its element size (", elem_size, " bytes)");
}

/// @brief The vector/scalar split of `n` elements over the arrays of a call: the
/// smallest `head` after which every array is 16-byte aligned, or all-scalar when the
/// arrays disagree.
template <std::size_t N>
inline vec_split split_for_vectors(std::size_t n, const array_view (&arrays)[N]) {
  for (std::size_t head = 0; head < vec_elems && head < n; ++head) {
    bool ok = true;
    for (const array_view& a : arrays)
      if (a.ptr != nullptr && (reinterpret_cast<std::uintptr_t>(a.ptr) + head * a.elem_size) % 16 != 0)
        ok = false;
    if (ok) return {head, (n - head) / vec_elems};
  }
  return {0, 0};
}

/// @brief Grid that fills the current GPU once with blocks of `block` threads of
/// `kernel`; computed on first use per device and cached (one cache per launcher).
class resident_grid {
public:
  template <class Kernel>
  int get(Kernel kernel, int block) {
    int dev = 0;
    ZB_CUDA_CHECK(cudaGetDevice(&dev));
    if (dev >= 0 && dev < max_devices) {
      const int cached = slots_[dev].load(std::memory_order_relaxed);
      if (cached > 0) return cached;
    }
    int sms = 0, per_sm = 0;
    ZB_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    ZB_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, block, 0));
    const int grid = std::max(1, sms) * std::max(1, per_sm);
    if (dev >= 0 && dev < max_devices) slots_[dev].store(grid, std::memory_order_relaxed);
    return grid;
  }

private:
  static constexpr int max_devices = 64;
  std::atomic<int> slots_[max_devices]{};
};

/// @brief Blocks for a grid-stride launch with `work` items per thread-slot: enough to
/// cover the work, at most `resident`, at least 1.
inline unsigned grid_for(std::size_t work, int resident) {
  const std::size_t need = (work + block_threads - 1) / block_threads;
  return static_cast<unsigned>(std::clamp<std::size_t>(need, 1, static_cast<std::size_t>(resident)));
}

}  // namespace kernel::cuda::detail
ZB_NAMESPACE_END
