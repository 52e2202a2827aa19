/**
 * @file layout.hpp
 * @brief The flat layout: where every parameter lives in the flat 16-bit buffers.
 *
 * Units are laid out in registration order, each unit's parameters one after another,
 * each parameter starting on an `align_numel` boundary (so vector loads and the CUDA
 * kernels' 16-byte accesses stay aligned). The partitioner pads each unit so it splits
 * into `world` equal, aligned slices; slice r of every unit belongs to rank r. A rank's
 * shard is the concatenation of its slices in unit order, so its fp32 master, Adam
 * moments and (stage 2/3) gradient shard are each one contiguous array, and a bucket
 * of consecutive units reduce-scatters straight into a contiguous piece of the shard.
 *
 * Zero-size parameters take no space; a unit of only zero-size parameters has zero
 * slices. Ψ in the memory formulas is `total_numel()`, the padded size.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "registry.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

ZB_NAMESPACE_BEGIN

/// @brief Placement of one parameter.
struct param_place {
  std::size_t unit = 0;
  std::size_t offset = 0;          ///< in the full flat layout
  std::size_t offset_in_unit = 0;
  std::size_t numel = 0;
  std::size_t group = 0;           ///< parameter group (registry)
  int uses = 1;                    ///< gradient parts per micro-step (registry: tied weights)
};

/// @brief Placement of one unit.
struct unit_place {
  std::vector<std::size_t> params;  ///< parameter indices, in layout order
  std::size_t offset = 0;           ///< in the full flat layout
  std::size_t used_numel = 0;       ///< up to the end of the last parameter
  std::size_t padded_numel = 0;     ///< multiple of world * align_numel
  std::size_t slice_numel = 0;      ///< padded_numel / world
  std::size_t shard_offset = 0;     ///< where this unit's slice starts in a rank's shard
  std::size_t raw_numel = 0;        ///< sum of its parameters' numel
};

/// @brief The flat layout of a registry for a world size, built by a partitioner.
class layout {
public:
  layout() = default;
  /// @param pad_unit  the partitioner's rule: padded numel of a unit of `used` elements
  template <class PadUnit>
  layout(const param_registry& reg, int world, std::size_t align_numel, PadUnit pad_unit)
      : world_(world), align_(align_numel) {
    ZB_REQUIRE(world >= 1, "layout: world size ", world, " must be >= 1");
    ZB_REQUIRE(align_numel >= 1, "layout: align_numel must be >= 1");
    units_.resize(reg.units().size());
    names_ = reg.units();
    params_.resize(reg.size());
    for (std::size_t i = 0; i < reg.size(); ++i) units_[reg.params()[i].unit].params.push_back(i);
    std::size_t offset = 0, shard = 0;
    for (auto& u : units_) {
      u.offset = offset;
      u.shard_offset = shard;
      std::size_t pos = 0;
      for (auto pi : u.params) {
        pos = round_up(pos, align_);
        params_[pi] = {static_cast<std::size_t>(&u - units_.data()), offset + pos, pos,
                       reg.params()[pi].numel, reg.params()[pi].group, reg.params()[pi].uses};
        pos += reg.params()[pi].numel;
        u.raw_numel += reg.params()[pi].numel;
      }
      u.used_numel = pos;
      u.padded_numel = pad_unit(pos, world, align_);
      ZB_REQUIRE(u.padded_numel >= pos && u.padded_numel % world == 0,
                 "layout: partitioner padded a unit of ", pos, " elements to ", u.padded_numel,
                 ", not a multiple of world ", world);
      u.slice_numel = u.padded_numel / world;
      offset += u.padded_numel;
      shard += u.slice_numel;
      raw_ += u.raw_numel;
    }
    total_ = offset;
    shard_ = shard;
  }

  int world() const { return world_; }
  std::size_t align_numel() const { return align_; }
  /// @brief Ψ: padded total of the flat buffers.
  std::size_t total_numel() const { return total_; }
  /// @brief Ψ/N: a rank's shard.
  std::size_t shard_numel() const { return shard_; }
  /// @brief Sum of parameter sizes, without alignment or padding.
  std::size_t raw_numel() const { return raw_; }
  std::size_t unit_count() const { return units_.size(); }
  std::size_t param_count() const { return params_.size(); }
  const unit_place& unit(std::size_t u) const { return units_[u]; }
  const param_place& param(std::size_t p) const { return params_[p]; }
  const std::string& unit_name(std::size_t u) const { return names_[u]; }
  /// @brief Number of parameter groups used (highest group index + 1).
  std::size_t group_count() const {
    std::size_t g = 1;
    for (const auto& p : params_) g = p.group + 1 > g ? p.group + 1 : g;
    return g;
  }
  /// @brief Runs of one parameter group in `[begin, end)` of unit `u` (unit
  /// coordinates): calls `f(begin, end, group)` for each maximal run, in order. An
  /// element between parameters (alignment, padding) belongs to the group of the
  /// parameter before it (the first parameter's before any).
  template <class F>
  void group_runs(std::size_t u, std::size_t begin, std::size_t end, F&& f) const {
    if (begin >= end) return;
    const auto& up = units_[u];
    std::size_t g = up.params.empty() ? 0 : params_[up.params.front()].group;
    std::size_t run = begin;
    for (auto pi : up.params) {
      const auto& pp = params_[pi];
      if (pp.offset_in_unit >= end) break;
      if (pp.group == g) continue;
      if (pp.offset_in_unit > run) f(run, pp.offset_in_unit, g);
      run = pp.offset_in_unit > run ? pp.offset_in_unit : run;
      g = pp.group;
    }
    f(run, end, g);
  }

  /// @brief Largest padded unit.
  std::size_t max_unit_numel() const {
    std::size_t m = 0;
    for (auto& u : units_) m = u.padded_numel > m ? u.padded_numel : m;
    return m;
  }

  static std::size_t round_up(std::size_t n, std::size_t m) { return (n + m - 1) / m * m; }

private:
  int world_ = 1;
  std::size_t align_ = 1;
  std::vector<unit_place> units_;
  std::vector<param_place> params_;
  std::vector<std::string> names_;
  std::size_t total_ = 0, shard_ = 0, raw_ = 0;
};

ZB_NAMESPACE_END
