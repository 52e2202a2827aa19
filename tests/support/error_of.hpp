/**
 * @file error_of.hpp
 * @brief Test helpers for failure paths: the message a body throws, and substring search.
 */
#pragma once

#include <zeroblocks/core/error.hpp>

#include <string>

namespace zbt {

/// @brief Runs `body`; returns the `zeroblocks::error` message it threw, or "" if none.
template <class F>
std::string error_of(F&& body) {
  try {
    body();
  } catch (const zeroblocks::error& e) {
    return e.what();
  }
  return "";
}

/// @brief Whether `s` contains `part`.
inline bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace zbt
