/**
 * @file unit_guard.hpp
 * @brief `unit_guard<Engine>`: the RAII hold on a unit's full parameters that
 * `engine::acquire` returns (spell it `Engine::unit_guard`).
 *
 * Move-only; releases on destruction. `param(p)` returns the parameter's full view as a
 * `space_span<const T, Space>` — indexable on host spaces, a device pointer and length
 * on `cuda_space`. Stages 0–2 keep the full parameters resident, so the address a guard
 * hands out for a unit is the same every step; stage 3 gathers into buffers that may
 * change from one acquire to the next.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../layout/registry.hpp"
#include "../space/span.hpp"

#include <string>
#include <utility>

ZB_NAMESPACE_BEGIN

/// @brief A hold on one unit's full parameters (see the file comment).
template <class Engine>
class unit_guard {
  using T = typename Engine::param_type;
  using Space = typename Engine::space;

public:
  unit_guard() = default;
  unit_guard(const unit_guard&) = delete;
  unit_guard& operator=(const unit_guard&) = delete;
  unit_guard(unit_guard&& o) noexcept
      : eng_(std::exchange(o.eng_, nullptr)), held_(std::exchange(o.held_, false)), unit_(o.unit_),
        base_(std::exchange(o.base_, nullptr)) {}
  unit_guard& operator=(unit_guard&& o) noexcept {
    if (this != &o) {
      reset_quietly();
      eng_ = std::exchange(o.eng_, nullptr);
      held_ = std::exchange(o.held_, false);
      unit_ = o.unit_;
      base_ = std::exchange(o.base_, nullptr);
    }
    return *this;
  }
  ~unit_guard() { reset_quietly(); }

  /// @brief Full view of a parameter of this unit, in the engine's memory space.
  space_span<const T, Space> param(param_id p) const {
    if (!held_) fail("unit_guard::param: the guard holds no unit (already released, or moved from)");
    eng_->check_param(p, "unit_guard::param");
    const auto& pp = eng_->model_layout().param(p.index);
    if (pp.unit != unit_.index)
      fail(detail::concat("unit_guard::param: parameter ", eng_->describe(p), " is not in unit '",
                          eng_->model_layout().unit_name(unit_.index), "'"));
    return {base_ + pp.offset_in_unit, pp.numel};
  }
  /// @brief The same view, writable: for kernels whose signatures take `T*`. The memory
  /// is the engine's copy of the full parameter on this rank; what the trainer writes
  /// there is never read back by the engine (it does not reach the fp32 master or the
  /// other ranks) and is overwritten by the next `step()` (stages 0–2) or the next gather
  /// (stage 3). Writing is therefore safe for the engine but changes what this rank
  /// computes with until then: to change a parameter's value, use `set_param`.
  space_span<T, Space> param_mut(param_id p) const {
    const auto v = param(p);
    return {const_cast<T*>(v.data()), v.size()};
  }
  unit_id unit() const { return unit_; }
  bool holds() const { return held_; }
  /// @brief Release now; a second release (or one on a moved-from guard) is an error.
  void release() {
    if (!held_) fail("unit_guard::release: the guard holds no unit (already released, or moved from)");
    held_ = false;
    base_ = nullptr;
    eng_->release(unit_);
  }

private:
  friend Engine;
  unit_guard(Engine* e, unit_id u, const T* base) : eng_(e), held_(true), unit_(u), base_(base) {}
  [[noreturn]] void fail(const std::string& message) const {
    if (eng_) eng_->fail_local(message, detail::location_string(::zeroblocks::detail::source_location::current()));
    ZB_FAIL(message);
  }
  void reset_quietly() noexcept {
    if (!held_) return;
    held_ = false;
    try {
      eng_->release(unit_);
    } catch (...) {
    }
  }
  Engine* eng_ = nullptr;  // kept after release, so misuse is reported to the peers
  bool held_ = false;
  unit_id unit_{};
  const T* base_ = nullptr;
};

ZB_NAMESPACE_END
