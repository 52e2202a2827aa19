/**
 * @file test_kernels.cu
 * @brief CUDA kernels (the kernel/cuda headers) against the host kernels (kernel/host.hpp)
 *        and the plain references (tests/kernel/reference.hpp).
 *
 * Bounds, as stated in the headers:
 * - `cuda::fused_adamw`: 0 ulp — master, m, v and param are bit-identical (memcmp) to
 *   the reference and to the host kernel, for float / half / bfloat16 gradients and
 *   parameters, decoupled and L2 decay, over three consecutive steps, at sizes around
 *   the vector width (0, 1, 7, 8, 9, ...) and 1000003, with aligned arrays, arrays all
 *   offset by 1 or 3 elements (vector body after a scalar head) and arrays offset
 *   differently (the scalar path), with and without the param output. Guard elements
 *   around the range keep their bits. With ±Inf / NaN gradients every non-NaN result is
 *   still bit-identical and every NaN result is NaN on both (payloads may differ);
 * - `cuda::grad_sumsq`: within 1e-12 relative of the host kernel and of a long double
 *   reference (the summation orders differ; see grad_sumsq.cuh for the bound), the same
 *   bits on a second run and for the same data at a misaligned address, and
 *   `nonfinite` (and Inf vs NaN) exactly as on the host;
 * - `cuda::upcast` / `cuda::downcast`: bit-identical to the host kernels, specials
 *   included, except that a NaN result only has to be NaN;
 * - the device conversions (`core/numeric.hpp` compiled by nvcc) equal the host ones
 *   on all 65536 patterns of half and bfloat16 and on special and random floats.
 *
 * Without a GPU the main exits 77 and CTest reports the test as skipped.
 */
#include "cuda_test_main.hpp"

#include <zeroblocks/core/cuda_check.hpp>
#include <zeroblocks/kernel/cuda/kernels.cuh>
#include <zeroblocks/kernel/host.hpp>

#include "kernel/reference.hpp"
#include "kernel/test_data.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace zb = zeroblocks;
namespace kn = zeroblocks::kernel;
namespace kc = zeroblocks::kernel::cuda;
using zb::bfloat16;
// `half` alone would be CUDA's own (cuda_fp16.h declares ::half): spell zb::half.

namespace {

/// Device memory for the lifetime of the scope.
template <class T>
class device_buffer {
public:
  explicit device_buffer(std::size_t n) : n_(n) {
    void* p = nullptr;
    ZB_CUDA_CHECK(cudaMalloc(&p, (n == 0 ? 1 : n) * sizeof(T)));
    ptr_ = static_cast<T*>(p);
  }
  ~device_buffer() { cudaFree(ptr_); }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;

  T* get() const { return ptr_; }
  // Both synchronise the whole device: the kernels run on non-blocking streams, which
  // a plain cudaMemcpy (legacy default stream) does not wait for, and a pageable
  // cudaMemcpy to the device may return before its DMA has landed.
  void upload(const std::vector<T>& h) {
    REQUIRE(h.size() == n_);
    ZB_CUDA_CHECK(cudaDeviceSynchronize());
    ZB_CUDA_CHECK(cudaMemcpy(ptr_, h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
    ZB_CUDA_CHECK(cudaDeviceSynchronize());
  }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    ZB_CUDA_CHECK(cudaDeviceSynchronize());
    ZB_CUDA_CHECK(cudaMemcpy(h.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }

private:
  T* ptr_ = nullptr;
  std::size_t n_;
};

/// A non-default stream for the lifetime of the scope (the kernels must honour it).
class stream_scope {
public:
  stream_scope() { ZB_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~stream_scope() { cudaStreamDestroy(s_); }
  stream_scope(const stream_scope&) = delete;
  stream_scope& operator=(const stream_scope&) = delete;
  cudaStream_t get() const { return s_; }
  void sync() const { ZB_CUDA_CHECK(cudaStreamSynchronize(s_)); }

private:
  cudaStream_t s_ = nullptr;
};

/// Sizes around the vector width (8), its tails, a large odd one, and one past a single
/// grid-stride pass on an H100 (5M elements: ~625k vectors against ~270k resident threads).
const std::vector<std::size_t> sizes = {0, 1, 7, 8, 9, 15, 16, 17, 33, 1000, 4097, 1000003, 5000011};

using zbt::make;
using zbt::special_floats;
using zbt::spread;

template <class T>
std::uint32_t bits_of(T x) {
  if constexpr (std::is_same_v<T, float>) {
    std::uint32_t u;
    std::memcpy(&u, &x, 4);
    return u;
  } else {
    return x.bits;
  }
}

template <class T>
bool is_nan(T x) {
  return std::isnan(zb::to_float(x));
}

/// Index of the first element whose bits differ, where NaN == NaN when `nan_equal`;
/// -1 when all agree.
template <class T>
long first_difference(const std::vector<T>& a, const std::vector<T>& b, bool nan_equal = false) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (bits_of(a[i]) == bits_of(b[i])) continue;
    if (nan_equal && is_nan(a[i]) && is_nan(b[i])) continue;
    return static_cast<long>(i);
  }
  return -1;
}

/// Checks two buffers agree (bit for bit, or NaN-for-NaN) and names the first difference.
template <class T>
void check_same(const char* what, const std::vector<T>& dev, const std::vector<T>& ref, bool nan_equal = false) {
  const long i = first_difference(dev, ref, nan_equal);
  if (i >= 0) {
    const std::size_t at = static_cast<std::size_t>(i);
    FAIL_CHECK(what << ": first difference at element " << i << " of " << dev.size() << ": device bits 0x"
                    << std::hex << bits_of(dev[at]) << ", expected 0x" << bits_of(ref[at]) << std::dec);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------
// conversions on the device
// ---------------------------------------------------------------------------------

namespace {

__global__ void widen_all_patterns(float* from_half, float* from_bf16) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < 65536u) {
    from_half[i] = zb::to_float(zb::half::from_bits(static_cast<std::uint16_t>(i)));
    from_bf16[i] = zb::to_float(bfloat16::from_bits(static_cast<std::uint16_t>(i)));
  }
}

__global__ void narrow_floats(const float* f, zb::half* to_half, bfloat16* to_bf16, std::size_t n) {
  const std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    to_half[i] = zb::from_float<zb::half>(f[i]);
    to_bf16[i] = zb::from_float<bfloat16>(f[i]);
  }
}

}  // namespace

TEST_CASE("device conversions equal the host ones bit for bit") {
  device_buffer<float> wide_h(65536), wide_b(65536);
  widen_all_patterns<<<256, 256>>>(wide_h.get(), wide_b.get());
  ZB_CUDA_CHECK_LAUNCH("widen_all_patterns");
  const auto dev_h = wide_h.download(), dev_b = wide_b.download();
  std::vector<float> host_h(65536), host_b(65536);
  for (std::uint32_t i = 0; i < 65536u; ++i) {
    host_h[i] = zb::to_float(zb::half::from_bits(static_cast<std::uint16_t>(i)));
    host_b[i] = zb::to_float(bfloat16::from_bits(static_cast<std::uint16_t>(i)));
  }
  check_same("half -> float", dev_h, host_h);
  check_same("bfloat16 -> float", dev_b, host_b);

  // Narrowing: specials, every widened 16-bit value and its neighbours (ties and the
  // values just around them), and random floats of every exponent.
  std::vector<float> f = special_floats();
  for (float x : host_h) {
    std::uint32_t u;
    std::memcpy(&u, &x, 4);
    for (std::uint32_t bits : {u - 1u, u, u + 1u, u + 0x1000u, u + 0x8000u}) {  // neighbours, half/bf16 ties
      float y;
      std::memcpy(&y, &bits, 4);
      f.push_back(y);
    }
  }
  std::mt19937 rng(5);
  for (int i = 0; i < 200000; ++i) {
    const std::uint32_t u = static_cast<std::uint32_t>(rng());
    float y;
    std::memcpy(&y, &u, 4);
    f.push_back(y);
  }
  device_buffer<float> in(f.size());
  device_buffer<zb::half> out_h(f.size());
  device_buffer<bfloat16> out_b(f.size());
  in.upload(f);
  narrow_floats<<<static_cast<unsigned>((f.size() + 255) / 256), 256>>>(in.get(), out_h.get(), out_b.get(), f.size());
  ZB_CUDA_CHECK_LAUNCH("narrow_floats");
  std::vector<zb::half> ref_h(f.size());
  std::vector<bfloat16> ref_b(f.size());
  for (std::size_t i = 0; i < f.size(); ++i) {
    ref_h[i] = zb::from_float<zb::half>(f[i]);
    ref_b[i] = zb::from_float<bfloat16>(f[i]);
  }
  check_same("float -> half", out_h.download(), ref_h);
  check_same("float -> bfloat16", out_b.download(), ref_b);
}

// ---------------------------------------------------------------------------------
// fused_adamw
// ---------------------------------------------------------------------------------

namespace {

/// Element offsets of the arrays (master, m, v, grad, param) from a 256-byte aligned
/// allocation: all alike (vector body after a head) or different (scalar path).
struct offsets {
  const char* name;
  std::size_t master, m, v, grad, param;
};

const offsets offset_cases[] = {
    {"aligned", 0, 0, 0, 0, 0},
    {"all +1", 1, 1, 1, 1, 1},
    {"all +3", 3, 3, 3, 3, 3},
    {"grad +1 only (scalar path)", 0, 0, 0, 1, 0},
    {"m +2, param +5 (scalar path)", 0, 2, 0, 0, 5},
};

constexpr std::size_t guard = 16;  // sentinel elements after the range

template <class G, class P>
void check_fused_adamw(std::uint32_t seed, bool nonfinite_grads = false) {
  std::mt19937 rng(seed);
  stream_scope stream;
  for (bool decoupled : {true, false}) {
    for (std::size_t n : sizes) {
      for (const offsets& off : offset_cases) {
        if (n > 100000 && off.master == 3) continue;  // the large size: keep the run short
        for (bool write_param : {true, false}) {
          CAPTURE(decoupled);
          CAPTURE(n);
          const std::string offsets_name = off.name;
          CAPTURE(offsets_name);
          CAPTURE(write_param);
          // Each array: [offset elements][n elements][guard], filled around the range
          // with sentinels the kernel must not touch.
          auto padded = [&](auto v, std::size_t offset, auto sentinel) {
            decltype(v) out(offset + v.size() + guard, sentinel);
            std::copy(v.begin(), v.end(), out.begin() + static_cast<std::ptrdiff_t>(offset));
            return out;
          };
          const float sentinel = -123.0f;
          const P sentinel_p = zb::from_float<P>(-77.0f);
          auto master = padded(make<float>(n, rng, -12, 2), off.master, sentinel);
          auto m = padded(make<float>(n, rng, -20, -6), off.m, sentinel);
          auto v = padded(make<float>(n, rng, -40, -12, true), off.v, sentinel);
          auto grad_n = make<G>(n, rng, -14, 11);  // loss-scaled gradients
          if (nonfinite_grads && n > 0) {
            const float inf = std::numeric_limits<float>::infinity();
            for (std::size_t i = 0; i < n; i += 1 + rng() % 97) {
              const float special = (rng() % 3 == 0) ? inf : (rng() % 2 == 0) ? -inf : std::nanf("");
              grad_n[i] = zb::from_float<G>(special);
            }
          }
          const auto grad = padded(grad_n, off.grad, zb::from_float<G>(0.0f));
          auto param = padded(std::vector<P>(n, zb::from_float<P>(0.0f)), off.param, sentinel_p);

          device_buffer<float> d_master(master.size()), d_m(m.size()), d_v(v.size());
          device_buffer<G> d_grad(grad.size());
          device_buffer<P> d_param(param.size());
          d_master.upload(master);
          d_m.upload(m);
          d_v.upload(v);
          d_grad.upload(grad);
          d_param.upload(param);
          auto h_master = master, h_m = m, h_v = v;
          auto h_param = param;

          for (long t = 1; t <= 3; ++t) {  // each step starts from the state the last produced
            const auto a = kn::make_adamw_args(1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, decoupled, t + 4,
                                               0.7f / 1024.0f);
            kc::fused_adamw(d_master.get() + off.master, d_m.get() + off.m, d_v.get() + off.v,
                            d_grad.get() + off.grad, write_param ? d_param.get() + off.param : nullptr, n, a,
                            stream.get());
            zb::test::ref_fused_adamw(master.data() + off.master, m.data() + off.m, v.data() + off.v,
                                      grad.data() + off.grad, param.data() + off.param, n, a);
            kn::fused_adamw(h_master.data() + off.master, h_m.data() + off.m, h_v.data() + off.v,
                            grad.data() + off.grad, h_param.data() + off.param, n, a);
          }
          stream.sync();
          const auto dev_master = d_master.download(), dev_m = d_m.download(), dev_v = d_v.download();
          const auto dev_param = d_param.download();
          const bool nan_equal = nonfinite_grads;
          check_same("master vs reference", dev_master, master, nan_equal);
          check_same("m vs reference", dev_m, m, nan_equal);
          check_same("v vs reference", dev_v, v, nan_equal);
          check_same("master vs host kernel", dev_master, h_master, nan_equal);
          check_same("m vs host kernel", dev_m, h_m, nan_equal);
          check_same("v vs host kernel", dev_v, h_v, nan_equal);
          if (write_param) {
            check_same("param vs reference", dev_param, param, nan_equal);
            check_same("param vs host kernel", dev_param, h_param, nan_equal);
          } else {
            // param == nullptr: the buffer keeps its zeros and sentinels.
            const auto untouched =
                padded(std::vector<P>(n, zb::from_float<P>(0.0f)), off.param, sentinel_p);
            check_same("param untouched", dev_param, untouched);
          }
        }
      }
    }
  }
}

}  // namespace

TEST_CASE_TEMPLATE("cuda::fused_adamw is bit-identical to the host kernel and the reference", T, float, zb::half,
                   bfloat16) {
  check_fused_adamw<T, T>(101);
}

TEST_CASE("cuda::fused_adamw with mixed gradient / parameter types") {
  check_fused_adamw<float, zb::half>(7);
  check_fused_adamw<zb::half, bfloat16>(8);
  check_fused_adamw<bfloat16, float>(9);
}

TEST_CASE_TEMPLATE("cuda::fused_adamw with ±Inf / NaN gradients: non-NaN results identical, NaN where NaN", T,
                   zb::half, bfloat16) {
  check_fused_adamw<T, T>(23, true);
}

namespace {

/// cuda::fused_step of `Rule` (one state array or none) against the host kernel and the
/// plain reference `ref`, bit for bit, three consecutive steps.
template <class Rule, class T, class MakeArgs, class Ref>
void check_fused_step(std::uint32_t seed, MakeArgs make_args, Ref ref) {
  constexpr int K = Rule::state_count;
  std::mt19937 rng(seed);
  stream_scope stream;
  for (std::size_t n : sizes) {
    CAPTURE(n);
    auto master = make<float>(n, rng, -12, 2), st = make<float>(n, rng, -20, -6);
    const auto grad = make<T>(n, rng, -14, 11);
    std::vector<T> param(n, zb::from_float<T>(0.0f));
    device_buffer<float> d_master(n), d_st(n);
    device_buffer<T> d_grad(n), d_param(n);
    d_master.upload(master);
    d_st.upload(st);
    d_grad.upload(grad);
    d_param.upload(param);
    auto h_master = master, h_st = st;
    auto h_param = param;
    for (long t = 1; t <= 3; ++t) {
      const auto a = make_args(t);
      float* d_state[1] = {d_st.get()};
      float* h_state[1] = {h_st.data()};
      kc::fused_step<Rule>(d_master.get(), d_state, d_grad.get(), d_param.get(), n, a, stream.get());
      kn::fused_step<Rule>(h_master.data(), h_state, grad.data(), h_param.data(), n, a);
      ref(master.data(), K > 0 ? st.data() : nullptr, grad.data(), param.data(), n, a);
    }
    stream.sync();
    const auto dev_master = d_master.download(), dev_st = d_st.download();
    const auto dev_param = d_param.download();
    check_same("master vs reference", dev_master, master);
    check_same("state vs reference", dev_st, st);
    check_same("param vs reference", dev_param, param);
    check_same("master vs host kernel", dev_master, h_master);
    check_same("param vs host kernel", dev_param, h_param);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("cuda::fused_step (Lion, SGD) is bit-identical to the host kernel and the reference", T, float,
                   zb::half, bfloat16) {
  check_fused_step<kn::lion_rule, T>(
      31, [](long) { return kn::make_lion_args(1e-4f, 0.9f, 0.99f, 0.1f, 0.7f / 1024.0f); },
      [](float* p, float* m, const T* g, T* q, std::size_t n, const kn::lion_step_args& a) {
        zb::test::ref_lion(p, m, g, q, n, a);
      });
  auto sgd_ref = [](float* p, float* b, const T* g, T* q, std::size_t n, const kn::sgd_step_args& a) {
    zb::test::ref_sgd(p, b, g, q, n, a);
  };
  check_fused_step<kn::sgd_rule<true>, T>(
      32, [](long) { return kn::make_sgd_args(1e-2f, 0.9f, 0.01f, true, 0.7f / 1024.0f); }, sgd_ref);
  check_fused_step<kn::sgd_rule<false>, T>(
      33, [](long) { return kn::make_sgd_args(1e-2f, 0.0f, 0.01f, false, 0.7f / 1024.0f); }, sgd_ref);
}

// ---------------------------------------------------------------------------------
// grad_sumsq
// ---------------------------------------------------------------------------------

namespace {

/// Relative difference |a - b| / |b| (0 when both are 0).
double rel_diff(double a, double b) { return b == 0 ? std::fabs(a) : std::fabs(a - b) / std::fabs(b); }

template <class G>
void check_grad_sumsq(std::uint32_t seed) {
  std::mt19937 rng(seed);
  stream_scope stream;
  device_buffer<kc::sumsq_workspace> ws(1);
  std::vector<std::size_t> ns = sizes;
  ns.push_back(3000017);  // more than sumsq_max_blocks * 2048: threads own several vectors
  for (std::size_t n : ns) {
    CAPTURE(n);
    const auto g = make<G>(n, rng, -14, 11);
    const kn::grad_stats host = kn::grad_sumsq(g.data(), n);
    const long double ref = zb::test::ref_sumsq(g.data(), n);

    // At offset 0 (vector loads) and 1 (element loads): the same bits, twice.
    double first = -1;
    for (std::size_t offset : {0, 1}) {
      CAPTURE(offset);
      std::vector<G> padded(n + offset, zb::from_float<G>(1e4f));
      std::copy(g.begin(), g.end(), padded.begin() + static_cast<std::ptrdiff_t>(offset));
      device_buffer<G> d(padded.size());
      d.upload(padded);
      for (int run = 0; run < 2; ++run) {
        const kn::grad_stats dev = kc::grad_sumsq_sync(d.get() + offset, n, ws.get(), stream.get());
        CHECK_FALSE(dev.nonfinite);
        CHECK(rel_diff(dev.sumsq, host.sumsq) <= 1e-12);
        CHECK(rel_diff(dev.sumsq, static_cast<double>(ref)) <= 1e-12);
        if (first < 0) first = dev.sumsq;
        CHECK(std::memcmp(&first, &dev.sumsq, sizeof(double)) == 0);  // deterministic
      }
    }
    if (n == 0) CHECK(first == 0.0);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("cuda::grad_sumsq agrees with the host within 1e-12 and is deterministic", T, float, zb::half,
                   bfloat16) {
  check_grad_sumsq<T>(31);
}

TEST_CASE_TEMPLATE("cuda::grad_sumsq flags ±Inf and NaN wherever they are", T, float, zb::half, bfloat16) {
  stream_scope stream;
  device_buffer<kc::sumsq_workspace> ws(1);
  std::mt19937 rng(77);
  const float inf = std::numeric_limits<float>::infinity();
  for (std::size_t n : {std::size_t{1}, std::size_t{9}, std::size_t{4097}, std::size_t{1000003}}) {
    for (float special : {inf, -inf, std::nanf("")}) {
      for (std::size_t where : {std::size_t{0}, n / 2, n - 1}) {
        CAPTURE(n);
        CAPTURE(special);
        CAPTURE(where);
        auto g = make<T>(n, rng, -10, 5);
        g[where] = zb::from_float<T>(special);
        device_buffer<T> d(n);
        d.upload(g);
        kc::grad_sumsq(d.get(), n, ws.get(), stream.get());
        // The result stays on the device until fetched.
        const kn::grad_stats dev = kc::fetch_grad_stats(&ws.get()->result, stream.get());
        const kn::grad_stats host = kn::grad_sumsq(g.data(), n);
        CHECK(host.nonfinite);
        CHECK(dev.nonfinite);
        CHECK(std::isnan(dev.sumsq) == std::isnan(host.sumsq));
        CHECK(std::isinf(dev.sumsq) == std::isinf(host.sumsq));
      }
    }
  }
}

// ---------------------------------------------------------------------------------
// upcast / downcast
// ---------------------------------------------------------------------------------

TEST_CASE_TEMPLATE("cuda::upcast and cuda::downcast equal the host kernels (NaN for NaN)", T, float, zb::half,
                   bfloat16) {
  std::mt19937 rng(41);
  stream_scope stream;
  const auto specials = special_floats();
  for (std::size_t n : sizes) {
    for (std::size_t dst_off : {0, 1}) {
      for (std::size_t src_off : {0, 1}) {
        for (float scale : {1.0f, 1.0f / 1024.0f, 3.0f}) {
          CAPTURE(n);
          CAPTURE(dst_off);
          CAPTURE(src_off);
          CAPTURE(scale);
          std::vector<float> f(n);
          for (std::size_t i = 0; i < n; ++i)
            f[i] = (i % 5 == 0) ? specials[(i / 5) % specials.size()] : spread(rng, -30, 17);

          // upcast: T -> float
          std::vector<T> src(n + src_off, zb::from_float<T>(0.0f));
          for (std::size_t i = 0; i < n; ++i) src[src_off + i] = zb::from_float<T>(f[i]);
          std::vector<float> dst(n + dst_off + guard, -5.0f);
          device_buffer<T> d_src(src.size());
          device_buffer<float> d_dst(dst.size());
          d_src.upload(src);
          d_dst.upload(dst);
          kc::upcast(d_dst.get() + dst_off, d_src.get() + src_off, n, scale, stream.get());
          kn::upcast(dst.data() + dst_off, src.data() + src_off, n, scale);
          stream.sync();
          check_same("upcast", d_dst.download(), dst, true);

          // downcast: float -> T
          std::vector<float> src32(n + src_off, 0.0f);
          std::copy(f.begin(), f.end(), src32.begin() + static_cast<std::ptrdiff_t>(src_off));
          std::vector<T> dst16(n + dst_off + guard, zb::from_float<T>(-5.0f));
          device_buffer<float> d_src32(src32.size());
          device_buffer<T> d_dst16(dst16.size());
          d_src32.upload(src32);
          d_dst16.upload(dst16);
          kc::downcast(d_dst16.get() + dst_off, d_src32.get() + src_off, n, scale, stream.get());
          kn::downcast(dst16.data() + dst_off, src32.data() + src_off, n, scale);
          std::vector<T> ref(dst16);  // the plain reference agrees with the host kernel
          zb::test::ref_downcast(ref.data() + dst_off, src32.data() + src_off, n, scale);
          stream.sync();
          check_same("downcast vs host kernel", d_dst16.download(), dst16, true);
          check_same("downcast vs reference", d_dst16.download(), ref, true);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------
// errors
// ---------------------------------------------------------------------------------

namespace {
__global__ void never_launches() {}
}  // namespace

TEST_CASE("bad input and launch errors throw zeroblocks::error with a clear message") {
  stream_scope stream;
  device_buffer<float> f(64);
  device_buffer<bfloat16> b(64);
  const auto a = kn::make_adamw_args(1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, true, 1, 1.0f);
  CHECK_THROWS_AS(kc::fused_adamw(f.get(), f.get() + 16, nullptr, b.get(), b.get() + 32, 8, a, stream.get()),
                  zb::error);
  // A float array at an odd byte address cannot be loaded on the GPU: refused up front.
  float* odd = reinterpret_cast<float*>(reinterpret_cast<char*>(f.get()) + 2);
  try {
    kc::fused_adamw(odd, f.get() + 16, f.get() + 32, b.get(), b.get() + 32, 8, a, stream.get());
    FAIL("expected an error");
  } catch (const zb::error& e) {
    CHECK(std::string(e.what()).find("not aligned to its element size") != std::string::npos);
  }
  CHECK_THROWS_AS(kc::upcast(f.get(), static_cast<const bfloat16*>(nullptr), 4, 1.0f, stream.get()), zb::error);
  CHECK_THROWS_AS(kc::grad_sumsq(b.get(), 4, nullptr, stream.get()), zb::error);
  // n == 0 launches nothing and accepts null arrays.
  CHECK_NOTHROW(kc::fused_adamw<bfloat16, bfloat16>(nullptr, nullptr, nullptr, nullptr, nullptr, 0, a, stream.get()));

  // The launch check names the kernel and the CUDA error (2048 threads per block is
  // more than any GPU allows).
  never_launches<<<1, 2048, 0, stream.get()>>>();
  try {
    ZB_CUDA_CHECK_LAUNCH("never_launches");
    FAIL("expected a launch error");
  } catch (const zb::error& e) {
    const std::string what = e.what();
    CHECK(what.find("never_launches") != std::string::npos);
    CHECK(what.find("cudaErrorInvalidConfiguration") != std::string::npos);
  }
  try {
    ZB_CUDA_CHECK(cudaSetDevice(-1));
    FAIL("expected an error");
  } catch (const zb::error& e) {
    CHECK(std::string(e.what()).find("cudaSetDevice(-1)") != std::string::npos);
  }
  CHECK(cudaGetLastError() == cudaErrorInvalidDevice);  // clear it: later checks start clean
}
