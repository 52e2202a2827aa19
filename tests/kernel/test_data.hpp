/**
 * @file test_data.hpp
 * @brief Test inputs shared by the host kernel tests and the CUDA kernel tests (one
 *        generator, so both backends are held to the same cases).
 */
#pragma once

#include <zeroblocks/core/numeric.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace zbt {

/// Random float with a wide spread of exponents and both signs.
inline float spread(std::mt19937& rng, float lo_exp, float hi_exp) {
  std::uniform_real_distribution<float> e(lo_exp, hi_exp);
  return std::exp2(e(rng)) * ((rng() & 1) ? -1.0f : 1.0f);
}

template <class T>
std::vector<T> make(std::size_t n, std::mt19937& rng, float lo_exp, float hi_exp, bool positive = false) {
  std::vector<T> out(n);
  for (auto& x : out) {
    float f = (rng() % 17 == 0) ? 0.0f : spread(rng, lo_exp, hi_exp);
    if (positive) f = std::fabs(f);
    x = zeroblocks::from_float<T>(f);
  }
  return out;
}

/// Values that hit every corner of the conversions: zeros, subnormals of every type,
/// overflow thresholds, ±Inf, NaNs with payloads, rounding ties.
inline std::vector<float> special_floats() {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> s = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.0f, 65520.0f, -65520.0f, 1e-8f,
                          5.96e-8f, 2.98e-8f, std::numeric_limits<float>::denorm_min(),
                          std::numeric_limits<float>::min(), std::numeric_limits<float>::max(), inf, -inf,
                          std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN()};
  float f;
  for (std::uint32_t u : {0x7f812345u, 0x3f808000u, 0x3f818000u, 0x00008000u, 0x00018000u, 0x7f7f8000u,
                          0x33000000u, 0x33000001u, 0x387fe000u, 0x387ff000u, 0x477fefffu, 0x477ff000u}) {
    std::memcpy(&f, &u, 4);
    s.push_back(f);
  }
  return s;
}

}  // namespace zbt
