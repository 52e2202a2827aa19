/**
 * @file detail/chunks.hpp
 * @brief The one piece the masters' step pipelines share: cutting the step's slices
 *        into chunks of the owned range.
 *
 * `master::swapped` moves its state through staging buffers one sub-group at a time,
 * `master::offloaded` its 16-bit parameters one chunk at a time; both cut the owned
 * range `[0, owned)` at multiples of a chunk size and run the fused pass piece by piece.
 * A piece never crosses a chunk boundary, so a chunk's pieces fill one staging buffer.
 */
#pragma once

#include "../../core/config.hpp"
#include "../master.hpp"

#include <algorithm>
#include <cstddef>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace detail {

/// @brief Part of a step slice that lies in one chunk.
template <class T>
struct chunk_piece {
  const T* grad = nullptr;
  const float* grad32 = nullptr;  ///< fp32 accumulation: the gradient (then `grad` is null)
  T* param = nullptr;
  std::size_t numel = 0;
  std::size_t master_offset = 0;  ///< in the owned range
  std::size_t group = 0;          ///< parameter group (its step constants)
  std::size_t chunk = 0;          ///< master_offset / chunk_numel
  std::size_t at = 0;             ///< master_offset % chunk_numel
};

/// @brief The slices cut at multiples of `chunk_numel` (> 0) of their master offsets,
/// in slice order.
template <class T>
std::vector<chunk_piece<T>> cut_into_chunks(const std::vector<step_slice<T>>& slices, std::size_t chunk_numel) {
  std::vector<chunk_piece<T>> out;
  for (const auto& s : slices)
    for (std::size_t done = 0; done < s.numel;) {
      const std::size_t o = s.master_offset + done, at = o % chunk_numel;
      const std::size_t len = std::min(s.numel - done, chunk_numel - at);
      out.push_back({s.grad ? s.grad + done : nullptr, s.grad32 ? s.grad32 + done : nullptr,
                     s.param ? s.param + done : nullptr, len, o, s.group, o / chunk_numel, at});
      done += len;
    }
  return out;
}

}  // namespace detail
ZB_NAMESPACE_END
