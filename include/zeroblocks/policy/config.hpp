/**
 * @file config.hpp
 * @brief What every policy's `config` is: an aggregate of knobs with defaults that can
 * list its fields, check itself, and be fingerprinted across ranks.
 *
 * Each policy names its knobs as `using config = ...;` (a role's policies may share
 * one; a policy without knobs uses `no_config`). A config provides
 *
 * ```
 * void validate() const;                     // throws zeroblocks::error naming the field
 * template <class Self, class V>
 * static void fields_of(Self& c, V&& v);     // v("name", c.member) for each knob that
 *                                            // must agree across ranks
 * ```
 * `fields_of` is one function for const and mutable configs alike (call it through
 * `config_fields(c, v)`).
 *
 * The engine's config aggregates one config per role (`cfg.coordinate`, `cfg.bucket`,
 * `cfg.master`, `cfg.scale`, `cfg.optim`, `cfg.partition`, `cfg.step`). At
 * construction every rank's fields are compared (`config_fingerprint`, then
 * `config_text` on a mismatch), so ranks whose knobs differ fail on every rank with
 * the role, the field, both values and both ranks — instead of pairing collectives of
 * different sizes and hanging. The field list is also what a test walks to vary every
 * knob (`fields_of` on a mutable config gives mutable references), so a new knob cannot be forgotten.
 *
 * Knobs that may legitimately differ per rank (a rank's own directories, a test's
 * fault hook, the number of host threads) are not listed by `fields_of`; their config's
 * doc says so.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"

#include <cmath>
#include <concepts>
#include <iomanip>
#include <limits>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

ZB_NAMESPACE_BEGIN

/// @brief The config of a policy without knobs.
struct no_config {
  void validate() const {}
  template <class Self, class V>
  static void fields_of(Self&, V&&) {}
};

/// @brief Call `v(name, field)` for each field of `c` that must agree across ranks
/// (mutable references when `c` is mutable).
template <class C, class V>
void config_fields(C& c, V&& v) {
  std::remove_const_t<C>::fields_of(c, v);
}

namespace detail {
/// Visits nothing; used to check a config's `fields_of` compiles with a generic visitor.
struct any_field_visitor {
  template <class F>
  void operator()(const char*, F&) const {}
};
}  // namespace detail

/// @brief A policy config: default-constructible, copyable, `validate()`, `fields_of(c, v)`.
template <class C>
concept policy_config = std::default_initializable<C> && std::copyable<C> &&
                        requires(const C& c, C& m, detail::any_field_visitor v) {
                          c.validate();
                          C::fields_of(c, v);
                          C::fields_of(m, v);
                        };

/// @brief Throws unless `value` is finite and >= 0, naming the field (`optim.lr`, ...).
inline void require_finite_nonnegative(const char* field, float value) {
  ZB_REQUIRE(value >= 0.0f && std::isfinite(value), field, " ", value, " must be finite and >= 0");
}
/// @brief Throws unless `value` is in [0, 1), naming the field (`optim.beta1`, ...).
inline void require_unit_interval(const char* field, float value) {
  ZB_REQUIRE(value >= 0.0f && value < 1.0f, field, " ", value, " must be in [0, 1)");
}

/// @brief One field's value as text: exact for every arithmetic type (floats in
/// hexadecimal, so two values that print alike but differ in a bit are told apart).
template <class F>
std::string field_text(const F& f) {
  if constexpr (std::is_same_v<F, bool>) return f ? "true" : "false";
  else if constexpr (std::is_enum_v<F>) return std::to_string(static_cast<long long>(f));
  else if constexpr (std::is_floating_point_v<F>)
    return detail::concat(std::setprecision(std::numeric_limits<F>::max_digits10), f);  // round-trips
  else if constexpr (std::is_integral_v<F>) return std::to_string(f);
  else return detail::concat(f);
}

/// @brief "name=value" per field, one per line, prefixed by `role.`.
template <class C>
std::vector<std::string> config_lines(const C& c, const char* role) {
  std::vector<std::string> out;
  config_fields(c, [&](const char* name, const auto& f) {
    out.push_back(detail::concat(role, '.', name, '=', field_text(f)));
  });
  return out;
}

/// @brief FNV-1a over the lines (cheap; a mismatch is then explained line by line).
inline std::uint64_t fingerprint_of(const std::vector<std::string>& lines) {
  std::uint64_t h = 1469598103934665603ull;
  for (const auto& l : lines) {
    for (char ch : l) h = (h ^ static_cast<unsigned char>(ch)) * 1099511628211ull;
    h = (h ^ 0x0a) * 1099511628211ull;
  }
  return h;
}

ZB_NAMESPACE_END
