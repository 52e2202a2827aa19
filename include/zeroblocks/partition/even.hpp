/**
 * @file even.hpp
 * @brief The partitioner role: which rank owns which slice of each unit.
 *
 * Policies: `partition::even` (each unit split into `world` equal, aligned slices; rank r
 * owns slice r). A partitioner has `using partitioner_concept = partitioner_tag;`, its
 * knobs as `config` (`cfg.partition`), a static `pad_unit(used_numel, world, align)` that
 * gives a unit's padded size, and builds the `layout` with
 * `make_layout(registry, world, config)`. A hierarchical (hpZ-style) partitioner will
 * add a secondary group here.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../layout/layout.hpp"
#include "../policy/config.hpp"

#include <concepts>

ZB_NAMESPACE_BEGIN

/// @brief Tag that marks a type as a partitioner policy.
struct partitioner_tag {};

/// @brief Knob of `partition::even` (`cfg.partition`); must agree across ranks.
struct partition_config {
  /// Every slice starts on a multiple of this many elements (32: 64 B of 16-bit, one
  /// cache line, and 16-byte vector access on the GPU). A power of two.
  std::size_t align_numel = 32;

  void validate() const {
    ZB_REQUIRE(align_numel >= 1 && (align_numel & (align_numel - 1)) == 0, "partition.align_numel ", align_numel,
               " must be a power of two");
  }
  /// Calls `v(name, field)` for each knob that must agree across ranks (`policy/config.hpp`).
  template <class Self, class V>
  static void fields_of(Self& c, V&& v) { v("align_numel", c.align_numel); }
};

template <class P>
concept partitioner_policy = std::same_as<typename P::partitioner_concept, partitioner_tag> &&
                             policy_config<typename P::config> &&
                             requires(const param_registry& r, const typename P::config& c) {
                               { P::make_layout(r, 1, c) } -> std::same_as<layout>;
                             };

namespace partition {

/// @brief Every unit split evenly over all ranks.
struct even {
  using partitioner_concept = partitioner_tag;
  static constexpr const char* name = "even";
  using config = partition_config;

  /// @brief Pad to a multiple of world * align, so every slice is aligned.
  static std::size_t pad_unit(std::size_t used, int world, std::size_t align) {
    return layout::round_up(used, static_cast<std::size_t>(world) * align);
  }
  static layout make_layout(const param_registry& reg, int world, const config& cfg) {
    return make_layout(reg, world, cfg.align_numel);
  }
  /// @brief The same with the alignment given directly (layout tests, tools).
  static layout make_layout(const param_registry& reg, int world, std::size_t align) {
    return layout(reg, world, align, &pad_unit);
  }
};

}  // namespace partition
ZB_NAMESPACE_END
