/**
 * @file registry.hpp
 * @brief Parameter registration: name, shape and unit of every parameter.
 *
 * A *unit* is the group of parameters fetched together (a layer, a block): stage 3
 * gathers and frees whole units, buckets hold whole units, and each unit is split evenly
 * over the ranks. The trainer fills a `param_registry` in the same order on every rank;
 * the engine checks that all ranks registered the same thing and fails on every rank,
 * naming the first difference, if not.
 *
 * A parameter may name a *parameter group* (as PyTorch's `param_groups`): group 0, the
 * default, uses the optimizer's hyper-parameters; group g ≥ 1 those of
 * `cfg.groups[g]` (its own weight decay and learning-rate multiplier — e.g. no decay on
 * biases and norms, GPT practice). Groups do not affect the layout.
 *
 * A parameter used by more than one unit's computation (tied weights: GPT's token
 * embedding reused by the output layer) is registered once, in one unit, and declared
 * with `set_uses(p, n)`: the trainer then hands its gradient over in n parts, each as
 * soon as it is computed, and the engine adds them (see `engine::grad_ready`).
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

ZB_NAMESPACE_BEGIN

/// @brief Handle of a registered parameter (its registration index).
struct param_id {
  std::size_t index = 0;
  friend bool operator==(param_id, param_id) = default;
};

/// @brief Handle of a unit (its index, in order of first registration).
struct unit_id {
  std::size_t index = 0;
  friend bool operator==(unit_id, unit_id) = default;
};

/// @brief One registered parameter.
struct param_decl {
  std::string name;
  std::vector<std::size_t> shape;
  std::size_t unit = 0;
  std::size_t numel = 0;
  std::size_t group = 0;  ///< parameter group (0: the optimizer's own settings)
  int uses = 1;           ///< gradient parts per micro-step (tied weights: > 1)
};

/// @brief The ordered list of parameters and units a model registers.
class param_registry {
public:
  /// @brief Register a parameter of `shape` in unit `unit` (created on first use), in
  /// parameter group `group` (0: the optimizer's own hyper-parameters).
  param_id add(std::string name, std::vector<std::size_t> shape, const std::string& unit, std::size_t group = 0) {
    ZB_REQUIRE(!name.empty(), "param_registry::add: empty parameter name");
    ZB_REQUIRE(!by_name_.count(name), "param_registry::add: parameter '", name,
               "' registered twice");
    ZB_REQUIRE(!unit.empty(), "param_registry::add: parameter '", name, "' has an empty unit name");
    std::size_t numel = 1;
    for (auto d : shape) {
      ZB_REQUIRE(d == 0 || numel <= (std::size_t{1} << 48) / d, "param_registry::add: parameter '", name,
                 "' has more than 2^48 elements");
      numel *= d;
    }
    auto [it, inserted] = unit_index_.try_emplace(unit, units_.size());
    if (inserted) units_.push_back(unit);
    by_name_[name] = params_.size();
    params_.push_back({std::move(name), std::move(shape), it->second, numel, group, 1});
    return {params_.size() - 1};
  }
  /// @brief Declare that parameter `p` is used `uses` times in a micro-step (tied or
  /// shared weights): its gradient arrives in that many parts, which the engine sums.
  void set_uses(param_id p, int uses) {
    ZB_REQUIRE(p.index < params_.size(), "param_registry::set_uses: parameter index ", p.index, " out of range (",
               params_.size(), " registered)");
    ZB_REQUIRE(uses >= 1, "param_registry::set_uses: parameter '", params_[p.index].name, "' needs uses >= 1 (got ",
               uses, ")");
    params_[p.index].uses = uses;
  }

  const std::vector<param_decl>& params() const { return params_; }
  const std::vector<std::string>& units() const { return units_; }
  std::size_t size() const { return params_.size(); }
  /// @brief Unit handle by name.
  unit_id unit(const std::string& name) const {
    auto it = unit_index_.find(name);
    ZB_REQUIRE(it != unit_index_.end(), "param_registry: no unit named '", name, "'");
    return {it->second};
  }
  /// @brief Parameter handle by name.
  param_id param(const std::string& name) const {
    auto it = by_name_.find(name);
    ZB_REQUIRE(it != by_name_.end(), "param_registry: no parameter named '", name, "'");
    return {it->second};
  }

  /// @brief One line describing parameter i, used to name differences between ranks.
  std::string describe(std::size_t i) const {
    if (i >= params_.size()) return "<no parameter>";
    const auto& p = params_[i];
    std::ostringstream os;  // (string operator+ chains trip GCC 12's -Wrestrict, bug 105329)
    os << "'" << p.name << "' [";
    for (std::size_t d = 0; d < p.shape.size(); ++d) os << (d ? "," : "") << p.shape[d];
    os << "] in unit '" << units_[p.unit] << "'";
    if (p.group != 0) os << " group " << p.group;
    if (p.uses != 1) os << " used " << p.uses << " times";
    return os.str();
  }

private:
  std::vector<param_decl> params_;
  std::vector<std::string> units_;
  std::unordered_map<std::string, std::size_t> unit_index_;
  std::unordered_map<std::string, std::size_t> by_name_;
};

ZB_NAMESPACE_END
