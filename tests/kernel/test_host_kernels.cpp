/**
 * @file test_host_kernels.cpp
 * @brief Host kernels (kernel/host.hpp) against the plain references in reference.hpp.
 *
 * One test body runs on every ISA this CPU has (forced through
 * `kernel::detail::set_isa_override`), for float / half / bfloat16, for sizes around
 * every vector width and tail length, with misaligned pointers, on 1 and 2 threads:
 * - fused_adamw (decoupled and L2) equals the reference bit for bit (memcmp of master,
 *   m, v and param), over two consecutive steps;
 * - grad_sumsq is within a stated tolerance of a long double reference, identical for
 *   every thread count and every ISA, and flags ±Inf / NaN wherever they are;
 * - accumulate / upcast / downcast equal the reference bit for bit, specials included.
 */
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <zeroblocks/kernel/host.hpp>

#include "reference.hpp"
#include "test_data.hpp"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace zb = zeroblocks;
namespace kn = zeroblocks::kernel;
using zb::bfloat16;
using zb::half;

namespace {

/// Every ISA this CPU can run, lowest first.
std::vector<kn::isa> available_isas() {
  std::vector<kn::isa> out;
  for (kn::isa i : {kn::isa::scalar, kn::isa::avx2, kn::isa::avx512})
    if (kn::isa_supported(i)) out.push_back(i);
  return out;
}

/// Force an ISA for the lifetime of the scope.
struct isa_scope {
  explicit isa_scope(kn::isa i) { kn::detail::set_isa_override(i); }
  ~isa_scope() { kn::detail::clear_isa_override(); }
  isa_scope(const isa_scope&) = delete;
  isa_scope& operator=(const isa_scope&) = delete;
};

/// Sizes around every vector width (8, 16, 32), tails of every kind, one size above
/// the OpenMP threshold so two threads really split it, and a random large one.
std::vector<std::size_t> test_sizes(std::mt19937& rng) {
  std::vector<std::size_t> s = {0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 1000, 4097};
  s.push_back(kn::detail::parallel_min_elements + 4 * kn::detail::parallel_grain + 13);
  s.push_back(200000 + rng() % 50000);
  return s;
}

using zbt::make;
using zbt::special_floats;
using zbt::spread;

template <class T>
bool same_bits(const T* a, const T* b, std::size_t n) {
  return n == 0 || std::memcmp(a, b, n * sizeof(T)) == 0;
}

}  // namespace

// ---------------------------------------------------------------------------------
// adamw args and the per-element rule
// ---------------------------------------------------------------------------------

TEST_CASE("make_adamw_args folds the step constants") {
  const auto a = kn::make_adamw_args(1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, true, 3, 0.25f);
  CHECK(a.step_size == doctest::Approx(1e-3 / (1 - std::pow(double(0.9f), 3))).epsilon(1e-6));
  // The float betas (0.999f is not 0.999) are what the bias corrections use.
  CHECK(a.inv_sqrt_bc2 == doctest::Approx(1 / std::sqrt(1 - std::pow(double(0.999f), 3))).epsilon(1e-6));
  CHECK(a.neg_lr_wd == static_cast<float>(-double(1e-3f) * double(0.1f)));
  CHECK(a.one_minus_beta1 == doctest::Approx(0.1).epsilon(1e-6));
  CHECK(a.grad_scale == 0.25f);
  CHECK(kn::make_adamw_args(1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, false, 1, 1.0f).neg_lr_wd == 0.0f);
  CHECK_THROWS_AS(kn::make_adamw_args(1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, true, 0, 1.0f), zb::error);
  CHECK_THROWS_AS(kn::make_adamw_args(1e-3f, 1.0f, 0.999f, 1e-8f, 0.0f, true, 1, 1.0f), zb::error);
}

TEST_CASE("decoupled decay has no bias: 2000 steps of decay alone match float64") {
  // With zero gradients only the decay moves p: p_t = p_0 (1 - lr wd)^t. Rounding the
  // factor 1 - lr wd to float gave the same relative error every step (-1.4e-8 at lr
  // 1e-3, wd 0.01: 2.8e-5 after 2000 steps); fma(p, -lr wd, p) leaves only each step's
  // own rounding, which does not accumulate with one sign.
  for (float p0 : {0.5f, 1.0f, 3.0f, -7.25f}) {
    float p = p0, m = 0.0f, v = 0.0f;
    for (long t = 1; t <= 2000; ++t)
      kn::adamw_element(p, m, v, 0.0f, kn::make_adamw_args(1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, true, t, 1.0f));
    const double want = double(p0) * std::pow(1.0 - double(1e-3f) * double(0.01f), 2000.0);
    CAPTURE(p0);
    CHECK(std::fabs(double(p) / want - 1.0) < 5e-6);
  }
}

TEST_CASE("adamw_element is AdamW: agrees with a textbook double implementation") {
  for (bool decoupled : {true, false}) {
    float p = 0.5f, m = 0.0f, v = 0.0f;
    double pd = 0.5, md = 0.0, vd = 0.0;
    const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.05;
    for (long t = 1; t <= 20; ++t) {
      const float g_raw = 1024.0f * std::sin(0.7f * static_cast<float>(t));  // loss-scaled
      const auto a = kn::make_adamw_args(float(lr), float(b1), float(b2), float(eps), float(wd), decoupled, t,
                                         1.0f / 1024.0f);
      kn::adamw_element(p, m, v, g_raw, a);
      double g = g_raw / 1024.0;
      if (!decoupled) g += wd * pd;
      md = b1 * md + (1 - b1) * g;
      vd = b2 * vd + (1 - b2) * g * g;
      const double mh = md / (1 - std::pow(b1, double(t))), vh = vd / (1 - std::pow(b2, double(t)));
      if (decoupled) pd *= 1 - lr * wd;
      pd -= lr * mh / (std::sqrt(vh) + eps);
    }
    CHECK(p == doctest::Approx(pd).epsilon(1e-5));
    CHECK(m == doctest::Approx(md).epsilon(1e-5));
    CHECK(v == doctest::Approx(vd).epsilon(1e-5));
  }
}

TEST_CASE("ISA selection: detection, ZEROBLOCKS_ISA, override") {
  const auto isas = available_isas();
  const kn::isa best = isas.back();
  MESSAGE("ISAs on this CPU: best = " << std::string(kn::isa_name(best)));
  ::unsetenv("ZEROBLOCKS_ISA");
  CHECK(kn::detail::choose_isa() == best);
  ::setenv("ZEROBLOCKS_ISA", "scalar", 1);
  CHECK(kn::detail::choose_isa() == kn::isa::scalar);
  ::setenv("ZEROBLOCKS_ISA", "avx512", 1);
  CHECK(kn::detail::choose_isa() == best);  // never raised past what the CPU has
  ::setenv("ZEROBLOCKS_ISA", "avx2", 1);
  CHECK(kn::detail::choose_isa() == (best == kn::isa::scalar ? kn::isa::scalar : kn::isa::avx2));
  ::setenv("ZEROBLOCKS_ISA", "sse9", 1);
  CHECK_THROWS_AS(kn::detail::choose_isa(), zb::error);
  ::unsetenv("ZEROBLOCKS_ISA");
  for (kn::isa i : isas) {
    isa_scope scope(i);
    CHECK(kn::host_isa() == i);
  }
  for (kn::isa i : {kn::isa::avx2, kn::isa::avx512})
    if (!kn::isa_supported(i)) CHECK_THROWS_AS(kn::detail::set_isa_override(i), zb::error);
  CHECK(std::string(kn::isa_name(kn::isa::avx512)) == "avx512");
}

// ---------------------------------------------------------------------------------
// fused_adamw
// ---------------------------------------------------------------------------------

template <class G, class P>
void check_fused_adamw(std::uint32_t seed) {
  std::mt19937 rng(seed);
  const auto sizes = test_sizes(rng);
  for (kn::isa which : available_isas()) {
    isa_scope scope(which);
    for (bool decoupled : {true, false}) {
      for (std::size_t n : sizes) {
        for (std::size_t offset : {0, 1}) {  // offset 1: every array misaligned by one element
          for (int threads : {1, 2}) {
            const std::string isa_str = kn::isa_name(which);
            CAPTURE(isa_str);
            CAPTURE(decoupled);
            CAPTURE(n);
            CAPTURE(offset);
            CAPTURE(threads);
            const std::size_t len = n + offset;
            auto master = make<float>(len, rng, -12, 2);
            auto m = make<float>(len, rng, -20, -6);
            auto v = make<float>(len, rng, -40, -12, true);
            auto grad = make<G>(len, rng, -14, 11);  // loss-scaled 16-bit gradients
            std::vector<P> param(len);
            auto r_master = master, r_m = m, r_v = v;
            auto r_param = param;
            // Two consecutive steps: the second starts from state the first produced.
            for (long t = 1; t <= 2; ++t) {
              const auto a = kn::make_adamw_args(1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, decoupled, t + 4,
                                                 0.7f / 1024.0f);
              kn::fused_adamw(master.data() + offset, m.data() + offset, v.data() + offset,
                              grad.data() + offset, param.data() + offset, n, a, threads);
              zb::test::ref_fused_adamw(r_master.data() + offset, r_m.data() + offset, r_v.data() + offset,
                                        grad.data() + offset, r_param.data() + offset, n, a);
              REQUIRE(same_bits(master.data(), r_master.data(), len));
              REQUIRE(same_bits(m.data(), r_m.data(), len));
              REQUIRE(same_bits(v.data(), r_v.data(), len));
              REQUIRE(same_bits(param.data(), r_param.data(), len));
            }
          }
        }
      }
    }
  }
}

TEST_CASE_TEMPLATE("fused_adamw is bit-identical to the reference (G == P)", T, float, half, bfloat16) {
  check_fused_adamw<T, T>(101);
}

TEST_CASE("fused_adamw with mixed gradient / parameter types") {
  check_fused_adamw<float, half>(7);
  check_fused_adamw<half, bfloat16>(8);
  check_fused_adamw<bfloat16, float>(9);
}

TEST_CASE("fused_adamw touches nothing outside [0, n)") {
  const float sentinel = -123.0f;
  const half sentinel16 = half::from_bits(0x7e77);  // a NaN: no update can produce it
  for (kn::isa which : available_isas()) {
    isa_scope scope(which);
    for (std::size_t n : {1, 5, 17, 40}) {
      // Guard elements around the range must keep their bits (masked stores / tails).
      std::vector<float> master(n + 32, sentinel), m(n + 32, sentinel), v(n + 32, sentinel);
      std::vector<half> grad(n + 32, half(1.0f)), param(n + 32, sentinel16);
      for (std::size_t i = 16; i < 16 + n; ++i) master[i] = m[i] = v[i] = 0.5f;
      const auto a = kn::make_adamw_args(1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, true, 1, 1.0f);
      kn::fused_adamw(master.data() + 16, m.data() + 16, v.data() + 16, grad.data() + 16, param.data() + 16, n,
                      a, 1);
      for (std::size_t i = 0; i < n + 32; ++i) {
        const bool inside = i >= 16 && i < 16 + n;
        CHECK((master[i] == sentinel) != inside);
        CHECK((m[i] == sentinel) != inside);
        CHECK((v[i] == sentinel) != inside);
        CHECK((param[i] == sentinel16) != inside);
      }
    }
  }
}

// ---------------------------------------------------------------------------------
// fused_step: Lion and SGD
// ---------------------------------------------------------------------------------

TEST_CASE("lion_element is Lion: agrees with a textbook double implementation") {
  float p = 0.5f, m = 0.0f;
  double pd = 0.5, md = 0.0;
  const double lr = 1e-3, b1 = 0.9, b2 = 0.99, wd = 0.1;
  for (long t = 1; t <= 50; ++t) {
    const float g_raw = 1024.0f * std::sin(0.7f * static_cast<float>(t));
    kn::lion_element(p, m, g_raw, kn::make_lion_args(float(lr), float(b1), float(b2), float(wd), 1.0f / 1024.0f));
    const double g = g_raw / 1024.0, c = b1 * md + (1 - b1) * g;
    pd -= lr * wd * pd;
    pd -= lr * (c > 0 ? 1.0 : c < 0 ? -1.0 : 0.0);
    md = b2 * md + (1 - b2) * g;
  }
  CHECK(p == doctest::Approx(pd).epsilon(1e-5));
  CHECK(m == doctest::Approx(md).epsilon(1e-5));
  CHECK(kn::sign_of(0.0f) == 0.0f);
  CHECK(kn::sign_of(-3.0f) == -1.0f);
}

TEST_CASE("sgd_element is torch.optim.SGD (dampening 0): agrees with a textbook double implementation") {
  for (bool nesterov : {false, true}) {
    float p = 0.5f, b = 0.0f;
    double pd = 0.5, bd = 0.0;
    const double lr = 1e-2, mu = 0.9, wd = 0.01;
    for (long t = 1; t <= 50; ++t) {
      const float g_raw = 1024.0f * std::sin(0.7f * static_cast<float>(t));
      kn::sgd_element<true>(p, &b, g_raw, kn::make_sgd_args(float(lr), float(mu), float(wd), nesterov, 1.0f / 1024.0f));
      double g = g_raw / 1024.0 + wd * pd;
      bd = t == 1 ? g : mu * bd + g;  // torch initialises the buffer to the first gradient
      g = nesterov ? g + mu * bd : bd;
      pd -= lr * g;
    }
    CAPTURE(nesterov);
    CHECK(p == doctest::Approx(pd).epsilon(1e-5));
    CHECK(b == doctest::Approx(bd).epsilon(1e-5));
  }
}

/// The fused step of `Rule` on every ISA, sizes, offsets and thread counts, against the
/// plain reference `ref(master, state0 or nullptr, grad, param, n, args)`, bit for bit,
/// over two consecutive steps, with guard elements around the range untouched.
template <class Rule, class G, class P, class MakeArgs, class Ref>
void check_fused_step(std::uint32_t seed, MakeArgs make_args, Ref ref) {
  constexpr int K = Rule::state_count;
  std::mt19937 rng(seed);
  const auto sizes = test_sizes(rng);
  for (kn::isa which : available_isas()) {
    isa_scope scope(which);
    for (int variant : {0, 1}) {
      for (std::size_t n : sizes) {
        for (std::size_t offset : {0, 1}) {
          for (int threads : {1, 2}) {
            const std::string isa_str = kn::isa_name(which);
            CAPTURE(isa_str);
            CAPTURE(variant);
            CAPTURE(n);
            CAPTURE(offset);
            CAPTURE(threads);
            const std::size_t len = n + offset + 3;  // 3 guard elements after the range
            auto master = make<float>(len, rng, -12, 2);
            auto st = make<float>(len, rng, -20, -6);
            auto grad = make<G>(len, rng, -14, 11);
            std::vector<P> param(len);
            auto r_master = master, r_st = st;
            auto r_param = param;
            for (long t = 1; t <= 2; ++t) {
              const auto a = make_args(variant, t);
              float* state[1] = {st.data() + offset};
              kn::fused_step<Rule>(master.data() + offset, state, grad.data() + offset, param.data() + offset, n, a,
                                   threads);
              ref(r_master.data() + offset, K > 0 ? r_st.data() + offset : nullptr, grad.data() + offset,
                  r_param.data() + offset, n, a);
              REQUIRE(same_bits(master.data(), r_master.data(), len));
              REQUIRE(same_bits(st.data(), r_st.data(), len));
              REQUIRE(same_bits(param.data(), r_param.data(), len));
            }
          }
        }
      }
    }
  }
}

TEST_CASE_TEMPLATE("fused_step<lion_rule> is bit-identical to the reference", T, float, half, bfloat16) {
  auto args = [](int variant, long) {
    return kn::make_lion_args(1e-4f, 0.9f, 0.99f, variant ? 0.1f : 0.0f, 0.7f / 1024.0f);
  };
  auto ref = [](float* p, float* m, const T* g, T* q, std::size_t n, const kn::lion_step_args& a) {
    zb::test::ref_lion(p, m, g, q, n, a);
  };
  check_fused_step<kn::lion_rule, T, T>(201, args, ref);
  check_fused_step<kn::lion_rule, half, bfloat16>(202, args, [](float* p, float* m, const half* g, bfloat16* q,
                                                                std::size_t n, const kn::lion_step_args& a) {
    zb::test::ref_lion(p, m, g, q, n, a);
  });
}

TEST_CASE_TEMPLATE("fused_step<sgd_rule> (momentum, Nesterov, plain) is bit-identical to the reference", T, float,
                   half, bfloat16) {
  auto ref = [](float* p, float* b, const T* g, T* q, std::size_t n, const kn::sgd_step_args& a) {
    zb::test::ref_sgd(p, b, g, q, n, a);
  };
  check_fused_step<kn::sgd_rule<true>, T, T>(
      301, [](int variant, long) { return kn::make_sgd_args(1e-2f, 0.9f, 0.01f, variant == 1, 0.7f / 1024.0f); },
      ref);
  check_fused_step<kn::sgd_rule<false>, T, T>(
      302, [](int variant, long) { return kn::make_sgd_args(1e-2f, 0.0f, variant ? 0.01f : 0.0f, false, 0.7f / 1024.0f); },
      ref);
}

TEST_CASE("fused_step<adamw_rule> is fused_adamw") {
  std::mt19937 rng(5);
  const std::size_t n = 1000;
  auto master = make<float>(n, rng, -12, 2), m = make<float>(n, rng, -20, -6), v = make<float>(n, rng, -40, -12, true);
  auto grad = make<bfloat16>(n, rng, -14, 11);
  std::vector<bfloat16> param(n), r_param(n);
  auto r_master = master, r_m = m, r_v = v;
  const auto a = kn::make_adamw_args(1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, true, 3, 1.0f / 1024.0f);
  float* st[2] = {m.data(), v.data()};
  kn::fused_step<kn::adamw_rule>(master.data(), st, grad.data(), param.data(), n, a, 1);
  zb::test::ref_fused_adamw(r_master.data(), r_m.data(), r_v.data(), grad.data(), r_param.data(), n, a);
  CHECK(same_bits(master.data(), r_master.data(), n));
  CHECK(same_bits(v.data(), r_v.data(), n));
  CHECK(same_bits(param.data(), r_param.data(), n));
}

// ---------------------------------------------------------------------------------
// grad_sumsq
// ---------------------------------------------------------------------------------

template <class T>
T inf_of() {
  return zb::from_float<T>(std::numeric_limits<float>::infinity());
}
template <class T>
T nan_of() {
  return zb::from_float<T>(std::numeric_limits<float>::quiet_NaN());
}

TEST_CASE_TEMPLATE("grad_sumsq: accurate, deterministic across threads and ISAs", T, float, half, bfloat16) {
  std::mt19937 rng(202);
  auto sizes = test_sizes(rng);
  for (std::size_t extra : {std::size_t{8191}, std::size_t{8192}, std::size_t{8193}, std::size_t{3 * 8192 + 5},
                            std::size_t{(1u << 20) + 3}})
    sizes.push_back(extra);
  // Stated tolerance: relative 1e-12 against a long double sum (double lanes over
  // blocks of 8192 keep the error near n_block * 2^-53).
  const double tol = 1e-12;
  for (std::size_t n : sizes) {
    for (std::size_t offset : {0, 1}) {
      CAPTURE(n);
      CAPTURE(offset);
      auto g = make<T>(n + offset, rng, -20, 8);
      const T* gp = g.data() + offset;
      const long double want = zb::test::ref_sumsq(gp, n);
      double first = -1;
      for (kn::isa which : available_isas()) {
        isa_scope scope(which);
        const std::string isa_str = kn::isa_name(which);
        CAPTURE(isa_str);
        const auto s1 = kn::grad_sumsq(gp, n, 1);
        CHECK_FALSE(s1.nonfinite);
        CHECK(std::fabs(static_cast<long double>(s1.sumsq) - want) <= tol * want);
        for (int threads : {2, 3, 0}) {
          const auto s = kn::grad_sumsq(gp, n, threads);
          CHECK(std::memcmp(&s.sumsq, &s1.sumsq, sizeof(double)) == 0);  // same bits
        }
        // All ISAs share the lane layout, so they agree bit for bit too.
        if (first < 0) first = s1.sumsq;
        CHECK(std::memcmp(&first, &s1.sumsq, sizeof(double)) == 0);
      }
    }
  }
}

TEST_CASE_TEMPLATE("grad_sumsq flags Inf and NaN at any position", T, float, half, bfloat16) {
  std::mt19937 rng(303);
  for (std::size_t n : {std::size_t{1}, std::size_t{17}, std::size_t{100}, std::size_t{8192 * 3 + 21},
                        std::size_t{300007}}) {
    auto g = make<T>(n, rng, -10, 4);
    std::vector<std::size_t> positions = {0, n - 1, n / 2};
    if (n > 40) positions.push_back(n - 5);  // inside the vector tail
    if (n > 8192) positions.push_back(8192);  // first element of a block
    for (kn::isa which : available_isas()) {
      isa_scope scope(which);
      for (std::size_t pos : positions) {
        for (T bad : {inf_of<T>(), zb::from_float<T>(-std::numeric_limits<float>::infinity()), nan_of<T>()}) {
          for (int threads : {1, 2}) {
            const std::string isa_str = kn::isa_name(which);
            CAPTURE(isa_str);
            CAPTURE(n);
            CAPTURE(pos);
            CAPTURE(threads);
            const T keep = g[pos];
            g[pos] = bad;
            CHECK(kn::grad_sumsq(g.data(), n, threads).nonfinite);
            g[pos] = keep;
            CHECK_FALSE(kn::grad_sumsq(g.data(), n, threads).nonfinite);
          }
        }
      }
    }
  }
}

TEST_CASE("grad_sumsq: largest finite values are not mistaken for overflow") {
  for (kn::isa which : available_isas()) {
    isa_scope scope(which);
    std::vector<float> f(100000, std::numeric_limits<float>::max());
    std::vector<half> h(100000, half::from_bits(0x7bff));
    std::vector<bfloat16> b(100000, bfloat16::from_bits(0xff7f));
    CHECK_FALSE(kn::grad_sumsq(f.data(), f.size(), 2).nonfinite);
    CHECK_FALSE(kn::grad_sumsq(h.data(), h.size(), 2).nonfinite);
    CHECK_FALSE(kn::grad_sumsq(b.data(), b.size(), 2).nonfinite);
    CHECK(kn::grad_sumsq(h.data(), h.size(), 2).sumsq == 100000.0 * 65504.0 * 65504.0);
    CHECK(kn::grad_sumsq(h.data(), 0, 2).sumsq == 0.0);
  }
}

// ---------------------------------------------------------------------------------
// accumulate / upcast / downcast
// ---------------------------------------------------------------------------------

/// Random values with specials sprinkled in (every 13th element, at different phases).
template <class T>
std::vector<T> make_with_specials(std::size_t n, std::mt19937& rng, std::size_t phase) {
  auto out = make<T>(n, rng, -26, 17);
  const auto sp = special_floats();
  for (std::size_t i = phase; i < n; i += 13) out[i] = zb::from_float<T>(sp[rng() % sp.size()]);
  return out;
}

TEST_CASE_TEMPLATE("accumulate / upcast / downcast are bit-identical to the reference", T, float, half, bfloat16) {
  std::mt19937 rng(404);
  const auto sizes = test_sizes(rng);
  for (kn::isa which : available_isas()) {
    isa_scope scope(which);
    for (std::size_t n : sizes) {
      for (std::size_t offset : {0, 1}) {
        for (int threads : {1, 2}) {
          const std::string isa_str = kn::isa_name(which);
          CAPTURE(isa_str);
          CAPTURE(n);
          CAPTURE(offset);
          CAPTURE(threads);
          const std::size_t len = n + offset;
          // accumulate: specials in dst and src at different positions (a NaN in both at
          // once would leave the choice of payload to operand order).
          auto dst = make_with_specials<T>(len, rng, 3);
          const auto src = make_with_specials<T>(len, rng, 9);
          auto r_dst = dst;
          kn::accumulate(dst.data() + offset, src.data() + offset, n, threads);
          zb::test::ref_accumulate(r_dst.data() + offset, src.data() + offset, n);
          REQUIRE(same_bits(dst.data(), r_dst.data(), len));

          for (float scale_value : {1.0f, 1.0f / 1024.0f, 3.0f, 65536.0f}) {
            // Opaque scale: GCC folds x * 1.0f to x (keeping a signalling NaN signalling)
            // when it sees the constant; the kernel multiplies at run time and quietens it.
            volatile float opaque = scale_value;
            const float scale = opaque;
            CAPTURE(scale);
            std::vector<float> up(len, -7.0f), r_up(len, -7.0f);
            kn::upcast(up.data() + offset, src.data() + offset, n, scale, threads);
            zb::test::ref_upcast(r_up.data() + offset, src.data() + offset, n, scale);
            REQUIRE(same_bits(up.data(), r_up.data(), len));

            auto f = make_with_specials<float>(len, rng, 5);
            std::vector<T> down(len, zb::from_float<T>(-7.0f)), r_down = down;
            kn::downcast(down.data() + offset, f.data() + offset, n, scale, threads);
            zb::test::ref_downcast(r_down.data() + offset, f.data() + offset, n, scale);
            REQUIRE(same_bits(down.data(), r_down.data(), len));
          }
        }
      }
    }
  }
}

TEST_CASE_TEMPLATE("accumulate_sumsq / copy_sumsq are accumulate / memcpy then grad_sumsq, bit for bit", T, float, half, bfloat16) {
  // The one-pass step depends on it: the statistics the bucketer takes while it writes
  // a gradient slice must be the bits a separate grad_sumsq pass would compute.
  std::mt19937 rng(505);
  auto sizes = test_sizes(rng);
  for (std::size_t extra : {std::size_t{8191}, std::size_t{8193}, std::size_t{(1u << 17) + 3}}) sizes.push_back(extra);
  for (kn::isa which : available_isas()) {
    isa_scope scope(which);
    for (std::size_t n : sizes) {
      for (int threads : {1, 2, 3}) {
        const std::string isa_str = kn::isa_name(which);
        CAPTURE(isa_str);
        CAPTURE(n);
        CAPTURE(threads);
        auto dst = make<T>(n + 1, rng, -20, 8);
        const auto src = make<T>(n + 1, rng, -20, 8);
        auto r_dst = dst;
        const auto got = kn::accumulate_sumsq(dst.data() + 1, src.data() + 1, n, threads);
        kn::accumulate(r_dst.data() + 1, src.data() + 1, n, 1);
        const auto want = kn::grad_sumsq(r_dst.data() + 1, n, 1);
        REQUIRE(same_bits(dst.data(), r_dst.data(), n + 1));
        CHECK(std::memcmp(&got.sumsq, &want.sumsq, sizeof(double)) == 0);
        CHECK(got.nonfinite == want.nonfinite);
        std::vector<T> copied(n + 1, zb::from_float<T>(-7.0f));
        const auto got_copy = kn::copy_sumsq(copied.data() + 1, src.data() + 1, n, threads);
        const auto want_copy = kn::grad_sumsq(src.data() + 1, n, 1);
        CHECK(std::memcmp(copied.data() + 1, src.data() + 1, n * sizeof(T)) == 0);
        CHECK(static_cast<float>(copied[0]) == -7.0f);  // nothing before dst touched
        CHECK(std::memcmp(&got_copy.sumsq, &want_copy.sumsq, sizeof(double)) == 0);
        if (n > 0) {  // an overflow made by the accumulation itself is flagged
          dst[1 + n / 2] = inf_of<T>();
          CHECK(kn::accumulate_sumsq(dst.data() + 1, src.data() + 1, n, threads).nonfinite);
        }
      }
    }
  }
}

TEST_CASE("vector conversions agree with numeric.hpp on every 16-bit pattern and float NaNs") {
  // upcast with scale 1 is the vector widening; downcast with scale 1 the narrowing.
  std::vector<half> h(65536);
  std::vector<bfloat16> b(65536);
  for (unsigned i = 0; i < 65536; ++i) {
    h[i] = half::from_bits(static_cast<std::uint16_t>(i));
    b[i] = bfloat16::from_bits(static_cast<std::uint16_t>(i));
  }
  // Floats: every 16-bit pattern widened, plus a sweep of all exponents and the NaN space.
  std::vector<float> f;
  for (unsigned i = 0; i < 65536; ++i) f.push_back(half::to_float(static_cast<std::uint16_t>(i)));
  for (std::uint64_t u = 0; u < (1ull << 32); u += 4099) {
    float x;
    const auto u32 = static_cast<std::uint32_t>(u);
    std::memcpy(&x, &u32, 4);
    f.push_back(x);
  }
  volatile float opaque_one = 1.0f;  // keep x * 1.0f a run-time multiply (see above)
  const float one = opaque_one;
  for (kn::isa which : available_isas()) {
    isa_scope scope(which);
    const std::string isa_str = kn::isa_name(which);
    CAPTURE(isa_str);
    std::vector<float> got(65536), want(65536);
    kn::upcast(got.data(), h.data(), h.size(), one, 1);
    zb::test::ref_upcast(want.data(), h.data(), h.size(), one);
    CHECK(same_bits(got.data(), want.data(), got.size()));
    kn::upcast(got.data(), b.data(), b.size(), one, 1);
    zb::test::ref_upcast(want.data(), b.data(), b.size(), one);
    CHECK(same_bits(got.data(), want.data(), got.size()));
    std::vector<half> hd(f.size()), hr(f.size());
    std::vector<bfloat16> bd(f.size()), br(f.size());
    kn::downcast(hd.data(), f.data(), f.size(), one, 1);
    zb::test::ref_downcast(hr.data(), f.data(), f.size(), one);
    CHECK(same_bits(hd.data(), hr.data(), hd.size()));
    kn::downcast(bd.data(), f.data(), f.size(), one, 1);
    zb::test::ref_downcast(br.data(), f.data(), f.size(), one);
    CHECK(same_bits(bd.data(), br.data(), bd.size()));
  }
}

// The kernels only ever narrow results of arithmetic (already-quiet NaNs), so the public
// API cannot feed a signalling NaN to the vector narrowing; test the narrowing helpers
// directly on every float NaN (signalling included) and a sweep of all exponents.
#if ZB_X86_KERNELS
namespace {
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c,fma"))) void narrow_avx512(
    const float* in, half* h, bfloat16* b, std::size_t n) {
  for (std::size_t i = 0; i + 16 <= n; i += 16) {
    kn::detail::avx512::store(h + i, _mm512_loadu_ps(in + i));
    kn::detail::avx512::store(b + i, _mm512_loadu_ps(in + i));
  }
}
__attribute__((target("avx2,fma,f16c"))) void narrow_avx2(const float* in, half* h, bfloat16* b,
                                                           std::size_t n) {
  for (std::size_t i = 0; i + 8 <= n; i += 8) {
    kn::detail::avx2::store(h + i, _mm256_loadu_ps(in + i));
    kn::detail::avx2::store(b + i, _mm256_loadu_ps(in + i));
  }
}
}  // namespace

TEST_CASE("vector narrowing helpers: every float NaN (signalling too) and an exponent sweep") {
  std::vector<float> f;
  for (std::uint32_t sign : {0u, 0x80000000u})
    for (std::uint32_t mant = 1; mant < (1u << 23); ++mant) {
      const std::uint32_t u = sign | 0x7f800000u | mant;
      float x;
      std::memcpy(&x, &u, 4);
      f.push_back(x);
    }
  for (std::uint64_t u = 0; u < (1ull << 32); u += 997) {
    const auto u32 = static_cast<std::uint32_t>(u);
    float x;
    std::memcpy(&x, &u32, 4);
    f.push_back(x);
  }
  while (f.size() % 16) f.push_back(0.0f);
  std::vector<half> hr(f.size()), hv(f.size());
  std::vector<bfloat16> br(f.size()), bv(f.size());
  for (std::size_t i = 0; i < f.size(); ++i) {
    hr[i] = zb::from_float<half>(f[i]);
    br[i] = zb::from_float<bfloat16>(f[i]);
  }
  if (kn::isa_supported(kn::isa::avx512)) {
    narrow_avx512(f.data(), hv.data(), bv.data(), f.size());
    CHECK(same_bits(hv.data(), hr.data(), f.size()));
    CHECK(same_bits(bv.data(), br.data(), f.size()));
  }
  if (kn::isa_supported(kn::isa::avx2)) {
    narrow_avx2(f.data(), hv.data(), bv.data(), f.size());
    CHECK(same_bits(hv.data(), hr.data(), f.size()));
    CHECK(same_bits(bv.data(), br.data(), f.size()));
  }
}
#endif
