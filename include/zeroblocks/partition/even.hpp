/**
 * @file even.hpp
 * @brief The partitioner role: which rank owns which slice of each unit.
 *
 * Policies: `partition::even` (each unit split into `world` equal, aligned slices; rank r
 * owns slice r). A partitioner has `using partitioner_concept = partitioner_tag;`, a
 * static `pad_unit(used_numel, world, align)` that gives a unit's padded size, and builds
 * the `layout`. A hierarchical (hpZ-style) partitioner will add a secondary group here.
 */
#pragma once

#include "../core/config.hpp"
#include "../layout/layout.hpp"

#include <concepts>

ZB_NAMESPACE_BEGIN

/// @brief Tag that marks a type as a partitioner policy.
struct partitioner_tag {};

template <class P>
concept partitioner_policy = std::same_as<typename P::partitioner_concept, partitioner_tag> &&
                             requires(const param_registry& r) {
                               { P::make_layout(r, 1, std::size_t{1}) } -> std::same_as<layout>;
                             };

namespace partition {

/// @brief Every unit split evenly over all ranks.
struct even {
  using partitioner_concept = partitioner_tag;
  static constexpr const char* name = "even";

  /// @brief Pad to a multiple of world * align, so every slice is aligned.
  static std::size_t pad_unit(std::size_t used, int world, std::size_t align) {
    return layout::round_up(used, static_cast<std::size_t>(world) * align);
  }
  static layout make_layout(const param_registry& reg, int world, std::size_t align) {
    return layout(reg, world, align, &pad_unit);
  }
};

}  // namespace partition
ZB_NAMESPACE_END
