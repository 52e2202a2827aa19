/**
 * @file comm_patterns.hpp
 * @brief Inputs and expected results shared by the communicator tests (`comm::mpi`,
 *        `comm::nccl`): every backend is checked against the same documented reduction.
 */
#pragma once

#include <zeroblocks/core/numeric.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace zbt {

template <class T>
std::uint32_t bits_of(T x) {
  std::uint32_t b = 0;
  std::memcpy(&b, &x, sizeof(T));
  return b;
}

/// Rank j's value at index k: magnitudes spread over 2^-6 .. 2^5, so the order of an
/// fp32 summation matters and the final rounding to 16 bits is not trivial.
template <class T>
T pattern(int j, std::size_t k) {
  const float v = std::sin(0.37f * static_cast<float>(k) + 1.9f * static_cast<float>(j) + 0.05f) *
                  std::ldexp(1.0f, static_cast<int>((k * 7 + static_cast<std::size_t>(j) * 3) % 12) - 6);
  return zeroblocks::from_float<T>(v);
}

/// The documented reduction (comm.hpp), computed here: for element i of rank r's block,
/// acc = float(x_0) + float(x_1) + ... + float(x_{N-1}) in that order, in fp32; the
/// result is from_float<T>(acc * scale).
template <class T>
T expected_reduction(int world, int r, std::size_t count, std::size_t i, float scale) {
  const std::size_t k = static_cast<std::size_t>(r) * count + i;
  float acc = zeroblocks::to_float(pattern<T>(0, k));
  for (int j = 1; j < world; ++j) acc += zeroblocks::to_float(pattern<T>(j, k));
  const float scaled = acc * scale;
  return zeroblocks::from_float<T>(scaled);
}

}  // namespace zbt
