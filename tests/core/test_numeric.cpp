/**
 * @file test_numeric.cpp
 * @brief Exhaustive tests of the host 16-bit types `half` and `bfloat16` (core/numeric.hpp).
 *
 * Every one of the 65,536 bit patterns of each type is checked against a mathematical
 * reference built with `ldexp`; rounding from float is checked at every midpoint between
 * adjacent finite values (and one float ulp either side), at the overflow thresholds, on
 * subnormals, signed zeros and every float NaN; and a random float sample is compared
 * with an independent nearest-value search and, when the CPU has F16C, with the
 * hardware conversions `_cvtss_sh` / `_cvtsh_ss` bit for bit.
 */
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <zeroblocks/core/numeric.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

using zeroblocks::bfloat16;
using zeroblocks::half;

namespace {

std::uint32_t bits_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float float_of(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// Layout of a 16-bit IEEE-like format: 1 sign bit, `exp_bits`, `mant_bits`.
struct format {
  int exp_bits;
  int mant_bits;
  int bias() const { return (1 << (exp_bits - 1)) - 1; }
  std::uint16_t exp_mask() const { return static_cast<std::uint16_t>(((1u << exp_bits) - 1u) << mant_bits); }
  std::uint16_t max_finite() const { return static_cast<std::uint16_t>(exp_mask() - 1u); }
  std::uint16_t inf() const { return exp_mask(); }
  bool is_nan(std::uint16_t b) const {
    return (b & exp_mask()) == exp_mask() && (b & ((1u << mant_bits) - 1u)) != 0;
  }
  /// Exact value of a non-NaN pattern (magnitude patterns above max_finite: Inf), via ldexp.
  double value(std::uint16_t b) const {
    const bool neg = (b & 0x8000u) != 0;
    const unsigned mag = b & 0x7fffu;
    const unsigned e = mag >> mant_bits;
    const unsigned m = mag & ((1u << mant_bits) - 1u);
    double v;
    if (e == 0) v = std::ldexp(static_cast<double>(m), 1 - bias() - mant_bits);
    else if (e == (1u << exp_bits) - 1u) v = std::numeric_limits<double>::infinity();
    else v = std::ldexp(static_cast<double>(m + (1u << mant_bits)), static_cast<int>(e) - bias() - mant_bits);
    return neg ? -v : v;
  }
  /// Value the magnitude pattern after max_finite would have if the exponent went on.
  double beyond_max() const { return std::ldexp(1.0, bias() + 1); }

  /// Round a finite float to the nearest pattern, ties to even, by searching the
  /// monotone table of magnitudes: an independent reference of from_float_bits.
  std::uint16_t nearest(float f) const {
    const std::uint16_t sign = std::signbit(f) ? 0x8000u : 0u;
    const double a = std::fabs(static_cast<double>(f));
    unsigned lo = 0, hi = max_finite();  // largest k with value(k) <= a
    if (value(static_cast<std::uint16_t>(hi)) <= a) lo = hi;
    else
      while (hi - lo > 1) {
        const unsigned mid = (lo + hi) / 2;
        if (value(static_cast<std::uint16_t>(mid)) <= a) lo = mid;
        else hi = mid;
      }
    const double below = value(static_cast<std::uint16_t>(lo));
    const double above = lo == max_finite() ? beyond_max() : value(static_cast<std::uint16_t>(lo + 1));
    unsigned k;
    if (a - below < above - a) k = lo;
    else if (a - below > above - a) k = lo + 1;
    else k = (lo & 1u) ? lo + 1 : lo;
    if (k > max_finite()) k = inf();
    return static_cast<std::uint16_t>(sign | k);
  }
};

const format half_fmt{5, 10};
const format bf16_fmt{8, 7};

#if defined(__x86_64__)
bool cpu_has_f16c() { return __builtin_cpu_supports("f16c"); }
__attribute__((target("f16c"))) std::uint16_t f16c_from_float(float f) {
  return static_cast<std::uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}
__attribute__((target("f16c"))) float f16c_to_float(std::uint16_t h) { return _cvtsh_ss(h); }
#else
bool cpu_has_f16c() { return false; }
std::uint16_t f16c_from_float(float) { return 0; }
float f16c_to_float(std::uint16_t) { return 0; }
#endif

template <class T>
const format& fmt_of() {
  if constexpr (std::is_same_v<T, half>) return half_fmt;
  else return bf16_fmt;
}

template <class T>
std::uint16_t narrow(float f) {
  return T::from_float_bits(f);
}
template <class T>
float widen(std::uint16_t b) {
  return T::to_float(b);
}

}  // namespace

TEST_CASE_TEMPLATE("to_float is exact for every bit pattern", T, half, bfloat16) {
  const format& fm = fmt_of<T>();
  long mismatches = 0;
  for (unsigned b = 0; b < 65536; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    const float f = widen<T>(h);
    if (fm.is_nan(h)) {
      // NaN: sign and payload kept; half is quietened (F16C / CUDA), bfloat16 is the
      // plain top-half widening.
      std::uint32_t want = (static_cast<std::uint32_t>(h & 0x8000u) << 16);
      if constexpr (std::is_same_v<T, half>) want |= 0x7fc00000u | (static_cast<std::uint32_t>(h & 0x3ffu) << 13);
      else want = static_cast<std::uint32_t>(h) << 16;
      mismatches += bits_of(f) != want;
      mismatches += !std::isnan(f);
      continue;
    }
    const double want = fm.value(h);
    // Exactness: the float equals the real value, sign of zero included.
    mismatches += static_cast<double>(f) != want;
    mismatches += std::signbit(f) != ((h & 0x8000u) != 0);
  }
  CHECK(mismatches == 0);
}

TEST_CASE("half::to_float matches F16C _cvtsh_ss bit for bit") {
  if (!cpu_has_f16c()) {
    MESSAGE("CPU has no F16C: skipped");
    return;
  }
  long mismatches = 0;
  for (unsigned b = 0; b < 65536; ++b)
    mismatches += bits_of(half::to_float(static_cast<std::uint16_t>(b))) !=
                  bits_of(f16c_to_float(static_cast<std::uint16_t>(b)));
  CHECK(mismatches == 0);
}

TEST_CASE_TEMPLATE("float -> 16 -> float -> 16 is the identity on non-NaN patterns", T, half, bfloat16) {
  const format& fm = fmt_of<T>();
  long mismatches = 0;
  for (unsigned b = 0; b < 65536; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    if (fm.is_nan(h)) continue;
    const std::uint16_t h2 = narrow<T>(widen<T>(h));
    const std::uint16_t h3 = narrow<T>(widen<T>(h2));
    mismatches += (h2 != h) + (h3 != h);
  }
  CHECK(mismatches == 0);
}

TEST_CASE_TEMPLATE("midpoints round to even, one float ulp off rounds to nearest", T, half, bfloat16) {
  const format& fm = fmt_of<T>();
  long mismatches = 0, checked = 0;
  for (std::uint16_t sign : {std::uint16_t{0}, std::uint16_t{0x8000}}) {
    // Pairs (k, k+1) of adjacent magnitudes; the last pair is (max finite, Inf), whose
    // "midpoint" is the overflow threshold.
    for (unsigned k = 0; k <= fm.max_finite(); ++k) {
      const double lo = fm.value(static_cast<std::uint16_t>(k));
      const double hi = k == fm.max_finite() ? fm.beyond_max() : fm.value(static_cast<std::uint16_t>(k + 1));
      const double mid_d = (lo + hi) / 2;
      const float mid = static_cast<float>(mid_d);
      REQUIRE(static_cast<double>(mid) == mid_d);  // midpoints are floats (11/8 bits < 24)
      const auto lo_bits = static_cast<std::uint16_t>(sign | k);
      const auto hi_bits = static_cast<std::uint16_t>(sign | (k + 1));  // k+1 past max is Inf
      const std::uint16_t even = (k & 1u) ? hi_bits : lo_bits;
      const float s = sign ? -1.0f : 1.0f;
      mismatches += narrow<T>(s * mid) != even;
      mismatches += narrow<T>(s * std::nextafter(mid, 0.0f)) != lo_bits;
      mismatches += narrow<T>(s * std::nextafter(mid, std::numeric_limits<float>::infinity())) != hi_bits;
      // Exact values round to themselves.
      mismatches += narrow<T>(s * static_cast<float>(lo)) != lo_bits;
      ++checked;
    }
  }
  CHECK(checked == 2 * (fm.max_finite() + 1));
  CHECK(mismatches == 0);
}

TEST_CASE("overflow thresholds") {
  // half: 65504 is the largest finite; 65520 (the midpoint to 2^16) ties to even = Inf.
  CHECK(half::from_float_bits(65504.0f) == 0x7bff);
  CHECK(half::from_float_bits(std::nextafter(65520.0f, 0.0f)) == 0x7bff);
  CHECK(half::from_float_bits(65520.0f) == 0x7c00);
  CHECK(half::from_float_bits(-65520.0f) == 0xfc00);
  CHECK(half::from_float_bits(1e30f) == 0x7c00);
  CHECK(half::from_float_bits(std::numeric_limits<float>::infinity()) == 0x7c00);
  CHECK(half::from_float_bits(-std::numeric_limits<float>::infinity()) == 0xfc00);
  // bfloat16: the largest finite is 0x7f7f; past the midpoint to 2^128 (and at it,
  // by ties-to-even) the result is Inf; FLT_MAX is past it.
  const float bmax = bfloat16::to_float(0x7f7f);
  const float bmid = float_of(0x7f7f8000u);
  CHECK(bfloat16::from_float_bits(bmax) == 0x7f7f);
  CHECK(bfloat16::from_float_bits(std::nextafter(bmid, 0.0f)) == 0x7f7f);
  CHECK(bfloat16::from_float_bits(bmid) == 0x7f80);
  CHECK(bfloat16::from_float_bits(-bmid) == 0xff80);
  CHECK(bfloat16::from_float_bits(std::numeric_limits<float>::max()) == 0x7f80);
  CHECK(bfloat16::from_float_bits(std::numeric_limits<float>::infinity()) == 0x7f80);
  CHECK(bfloat16::from_float_bits(-std::numeric_limits<float>::infinity()) == 0xff80);
}

TEST_CASE("every float NaN narrows to a quiet NaN with its payload's top bits") {
  long mismatches = 0;
  const bool f16c = cpu_has_f16c();
  for (std::uint32_t sign : {0u, 0x80000000u}) {
    for (std::uint32_t mant = 1; mant < (1u << 23); ++mant) {
      const std::uint32_t x = sign | 0x7f800000u | mant;
      const float f = float_of(x);
      const std::uint16_t h = half::from_float_bits(f);
      const std::uint16_t b = bfloat16::from_float_bits(f);
      mismatches += !half_fmt.is_nan(h) || (h & 0x0200u) == 0;  // NaN, quiet bit set
      mismatches += h != static_cast<std::uint16_t>((sign >> 16) | 0x7e00u | ((mant >> 13) & 0x3ffu));
      mismatches += !bf16_fmt.is_nan(b) || (b & 0x0040u) == 0;
      mismatches += b != static_cast<std::uint16_t>((x >> 16) | 0x40u);
      if (f16c) mismatches += h != f16c_from_float(f);
    }
  }
  CHECK(mismatches == 0);
}

TEST_CASE("subnormals and signed zero") {
  // half: smallest subnormal 2^-24; 2^-25 is the tie with 0 (rounds to even 0).
  CHECK(half::from_float_bits(std::ldexp(1.0f, -24)) == 0x0001);
  CHECK(half::from_float_bits(std::ldexp(1.0f, -25)) == 0x0000);
  CHECK(half::from_float_bits(std::nextafter(std::ldexp(1.0f, -25), 1.0f)) == 0x0001);
  CHECK(half::from_float_bits(std::ldexp(3.0f, -25)) == 0x0002);  // 1.5 ulp ties to even 2
  CHECK(half::from_float_bits(std::ldexp(1023.0f, -24)) == 0x03ff);  // largest subnormal
  CHECK(half::from_float_bits(std::ldexp(1.0f, -14)) == 0x0400);     // smallest normal
  CHECK(half::to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(half::from_float_bits(std::numeric_limits<float>::denorm_min()) == 0x0000);
  CHECK(half::from_float_bits(-std::numeric_limits<float>::denorm_min()) == 0x8000);
  // bfloat16 keeps float's exponent range: float subnormals round like normals
  // (no flush to zero, unlike vcvtneps2bf16).
  CHECK(bfloat16::from_float_bits(float_of(0x00010000u)) == 0x0001);
  CHECK(bfloat16::from_float_bits(float_of(0x00008000u)) == 0x0000);  // tie to even 0
  CHECK(bfloat16::from_float_bits(float_of(0x00008001u)) == 0x0001);
  CHECK(bfloat16::from_float_bits(float_of(0x00018000u)) == 0x0002);  // tie to even 2
  CHECK(bfloat16::from_float_bits(float_of(0x007fffffu)) == 0x0080);  // rounds up to min normal
  CHECK(bfloat16::to_float(0x0001) == float_of(0x00010000u));
  // Signed zero survives both ways.
  CHECK(half::from_float_bits(-0.0f) == 0x8000);
  CHECK(bfloat16::from_float_bits(-0.0f) == 0x8000);
  CHECK(half::from_float_bits(0.0f) == 0x0000);
  CHECK(std::signbit(half::to_float(0x8000)));
  CHECK(std::signbit(bfloat16::to_float(0x8000)));
  CHECK(half::to_float(0x8000) == 0.0f);
}

TEST_CASE_TEMPLATE("random floats round to the nearest value (independent search)", T, half, bfloat16) {
  const format& fm = fmt_of<T>();
  std::mt19937 rng(1234);
  std::uniform_int_distribution<std::uint32_t> any_bits;
  // Half of the sample over all bit patterns, half concentrated on the type's range.
  std::uniform_real_distribution<float> log_mag(std::is_same_v<T, half> ? -27.0f : -136.0f,
                                                std::is_same_v<T, half> ? 17.0f : 128.0f);
  long mismatches = 0;
  for (int i = 0; i < 400000; ++i) {
    float f = float_of(any_bits(rng));
    if (i & 1) f = std::copysign(std::exp2(log_mag(rng)), (i & 2) ? -1.0f : 1.0f);
    if (std::isnan(f)) continue;
    mismatches += narrow<T>(f) != fm.nearest(f);
  }
  CHECK(mismatches == 0);
}

TEST_CASE("random floats: half::from_float_bits matches F16C _cvtss_sh bit for bit") {
  if (!cpu_has_f16c()) {
    MESSAGE("CPU has no F16C: skipped");
    return;
  }
  std::mt19937 rng(42);
  std::uniform_int_distribution<std::uint32_t> any_bits;
  std::uniform_real_distribution<float> log_mag(-27.0f, 17.0f);
  long mismatches = 0;
  for (int i = 0; i < 4000000; ++i) {
    float f = float_of(any_bits(rng));
    if (i & 1) f = std::copysign(std::exp2(log_mag(rng)), (i & 2) ? -1.0f : 1.0f);
    mismatches += half::from_float_bits(f) != f16c_from_float(f);
  }
  // All float bit patterns in the half range's neighbourhood, 1 in 7 (covers every
  // exponent and rounding position).
  for (std::uint32_t x = 0x32000000u; x < 0x48000000u; x += 7) {
    mismatches += half::from_float_bits(float_of(x)) != f16c_from_float(float_of(x));
    mismatches += half::from_float_bits(float_of(x | 0x80000000u)) != f16c_from_float(float_of(x | 0x80000000u));
  }
  CHECK(mismatches == 0);
}
