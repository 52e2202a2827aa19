/**
 * @file demo_util.hpp
 * @brief Small helpers the example trainers share: a rank's share of a global batch,
 * the distance between two fp32 masters, digit grouping for the tables.
 */
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace demo {

/// Rank r's contiguous share of `total` samples (sizes that do not divide spread the rest).
inline std::pair<std::size_t, std::size_t> shard_of(std::size_t total, int rank, int world) {
  const std::size_t a = total * static_cast<std::size_t>(rank) / static_cast<std::size_t>(world);
  const std::size_t b = total * static_cast<std::size_t>(rank + 1) / static_cast<std::size_t>(world);
  return {a, b - a};
}

/// Max |a - b| over two fp32 masters of the same layout (infinity when they differ in size).
inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double m = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(static_cast<double>(a[i]) - b[i]));
  return m;
}

/// "12,345" style grouping for byte and element counts.
inline std::string grouped(std::uint64_t v) {
  std::string s = std::to_string(v), out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

}  // namespace demo
