/**
 * @file numeric.hpp
 * @brief The library's own 16-bit floating-point host types, `half` and `bfloat16`.
 *
 * Both are a single `std::uint16_t` of bits, bit-compatible with CUDA's `__half` and
 * `__nv_bfloat16`, so a buffer of them can be copied to and from the device as is.
 * Conversions from `float` round to nearest, ties to even, and handle every class of
 * input: NaN (quietened, payload's top bits kept, exactly as x86 F16C and CUDA do),
 * ±Inf, subnormals (gradual underflow) and overflow (to ±Inf). Conversions to `float`
 * are exact. Arithmetic is deliberately not provided: kernels upcast, compute in
 * `float`, and round once.
 *
 * `dtype_traits<T>` names the element types the library moves (float, half, bfloat16)
 * and tells whether a type is one of its 16-bit kinds.
 */
#pragma once

#include "config.hpp"

#include <bit>
#include <cstdint>
#include <cstring>
#include <type_traits>

ZB_NAMESPACE_BEGIN

/// @brief IEEE 754 binary16, stored as bits.
struct half {
  std::uint16_t bits = 0;

  half() = default;
  ZB_HOST_DEVICE explicit half(float f) : bits(from_float_bits(f)) {}
  ZB_HOST_DEVICE static constexpr half from_bits(std::uint16_t b) {
    half h;
    h.bits = b;
    return h;
  }
  ZB_HOST_DEVICE explicit operator float() const { return to_float(bits); }

  /// @brief Exact widening of binary16 bits to a float.
  ZB_HOST_DEVICE static float to_float(std::uint16_t h) {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t exp = (h >> 10) & 0x1fu;
    std::uint32_t mant = h & 0x3ffu;
    std::uint32_t out;
    if (exp == 0x1f) {
      // Inf, or NaN quietened with its payload kept (what F16C and CUDA do).
      out = sign | 0x7f800000u | (mant ? (0x400000u | (mant << 13)) : 0u);
    } else if (exp != 0) {
      out = sign | ((exp + 112u) << 23) | (mant << 13);
    } else if (mant == 0) {
      out = sign;
    } else {
      // Subnormal: normalise the mantissa.
      std::uint32_t e = 113;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --e;
      }
      out = sign | (e << 23) | ((mant & 0x3ffu) << 13);
    }
    return bit_float(out);
  }

  /// @brief Round-to-nearest-even narrowing of a float to binary16 bits.
  ZB_HOST_DEVICE static std::uint16_t from_float_bits(float f) {
    const std::uint32_t x = float_bits(f);
    const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
    const std::uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)  // NaN: quiet it, keep the top payload bits (as F16C/CUDA)
      return static_cast<std::uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u)  // >= 65520 rounds to Inf (also Inf itself)
      return static_cast<std::uint16_t>(sign | 0x7c00u);
    if (ax >= 0x38800000u) {  // normal half range (>= 2^-14)
      const std::uint32_t lsb = (ax >> 13) & 1u;
      const std::uint32_t r = ax + 0xfffu + lsb;  // RNE on the 13 dropped bits
      return static_cast<std::uint16_t>(sign | ((r - 0x38000000u) >> 13));
    }
    if (ax < 0x33000000u)  // < 2^-25 (half of the smallest subnormal): to zero
      return sign;
    // Subnormal half: value = m * 2^-24. Shift the full 24-bit significand.
    const std::uint32_t e = ax >> 23;
    const std::uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - e;  // 14..24 bits dropped
    const std::uint32_t kept = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1u);
    const std::uint32_t halfway = 1u << (shift - 1u);
    const std::uint32_t up = (rem > halfway) || (rem == halfway && (kept & 1u));
    return static_cast<std::uint16_t>(sign | (kept + up));
  }

  ZB_HOST_DEVICE static std::uint32_t float_bits(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
  }
  ZB_HOST_DEVICE static float bit_float(std::uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }

  friend bool operator==(half a, half b) { return a.bits == b.bits; }
};

/// @brief bfloat16 (the top half of an IEEE binary32), stored as bits.
struct bfloat16 {
  std::uint16_t bits = 0;

  bfloat16() = default;
  ZB_HOST_DEVICE explicit bfloat16(float f) : bits(from_float_bits(f)) {}
  ZB_HOST_DEVICE static constexpr bfloat16 from_bits(std::uint16_t b) {
    bfloat16 h;
    h.bits = b;
    return h;
  }
  ZB_HOST_DEVICE explicit operator float() const { return to_float(bits); }

  ZB_HOST_DEVICE static float to_float(std::uint16_t b) {
    return half::bit_float(static_cast<std::uint32_t>(b) << 16);
  }

  /// @brief Round-to-nearest-even narrowing; NaN is quietened (bit 6 set), Inf kept,
  /// finite values that round past the largest bfloat16 become Inf.
  ZB_HOST_DEVICE static std::uint16_t from_float_bits(float f) {
    const std::uint32_t x = half::float_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);
    const std::uint32_t lsb = (x >> 16) & 1u;
    return static_cast<std::uint16_t>((x + 0x7fffu + lsb) >> 16);
  }

  friend bool operator==(bfloat16 a, bfloat16 b) { return a.bits == b.bits; }
};

static_assert(sizeof(half) == 2 && std::is_trivially_copyable_v<half>);
static_assert(sizeof(bfloat16) == 2 && std::is_trivially_copyable_v<bfloat16>);

/// @brief Element types the library stores parameters and gradients in.
template <class T>
inline constexpr bool is_param_type_v =
    std::is_same_v<T, float> || std::is_same_v<T, half> || std::is_same_v<T, bfloat16>;

/// @brief Widen any supported element to float.
template <class T>
ZB_HOST_DEVICE ZB_FORCE_INLINE float to_float(T x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else return T::to_float(x.bits);
}

/// @brief Narrow a float to T with round-to-nearest-even.
template <class T>
ZB_HOST_DEVICE ZB_FORCE_INLINE T from_float(float f) {
  if constexpr (std::is_same_v<T, float>) return f;
  else return T::from_bits(T::from_float_bits(f));
}

/// @brief Human-readable name of an element type (for messages and tables).
template <class T>
constexpr const char* dtype_name() {
  if constexpr (std::is_same_v<T, float>) return "fp32";
  else if constexpr (std::is_same_v<T, half>) return "fp16";
  else if constexpr (std::is_same_v<T, bfloat16>) return "bf16";
  else return "?";
}

ZB_NAMESPACE_END
