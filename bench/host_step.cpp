/**
 * @file host_step.cpp
 * @brief Benchmark of the host optimizer step (grad_sumsq + fused_adamw) against a
 *        same-traffic ceiling kernel measured in the same run.
 *
 * What is measured, per thread count (1, 2 by default) and gradient dtype (bf16, fp16),
 * on `--n` elements (default 64M = 67108864):
 *
 * - `ceiling`: a kernel with exactly the fused pass's memory traffic — reads fp32
 *   master, 16-bit grad, m, v; writes fp32 master, m, v and the 16-bit param, 28 B per
 *   element — and trivial math (three adds and the two conversions). It uses the same
 *   ISA, vector width, 2x unroll, thread split and ordinary (non-streaming) stores as
 *   `fused_adamw`, so the comparison is fair: it is what the memory system allows this
 *   access pattern.
 * - `sumsq`:  `kernel::grad_sumsq` (reads the 16-bit gradient: 2 B per element).
 * - `fused`:  `kernel::fused_adamw` (28 B per element).
 * - `step`:   both passes back to back, as the engine runs them (30 B per element).
 * - `triad`:  STREAM triad `a = b + s*c` on three fp32 arrays (12 B per element), for
 *   reference.
 *
 * Ratios (1.0 = as fast as the ceiling's bandwidth):
 * - fused ratio = ceiling_time / fused_time  (same bytes, so = bandwidth ratio);
 * - step ratio  = ceiling_time * (30/28) / step_time, i.e. the step's achieved bandwidth
 *   (30 B per element) over the ceiling's bandwidth (28 B per element).
 * "ratio" uses the median times; "paired" is the median over rounds of the ratio taken
 * within each round (ceiling and kernel run back to back), which cancels slow drift.
 *
 * Method: arrays are page-aligned and first-touched by the same threads, with the same
 * split, as the kernels use (`kernel::detail::parallel_ranges`); every kernel runs
 * `--warmup` times, then `--reps` rounds interleave all kernels (so drift on a shared
 * machine hits them alike) and the median time of each is reported. GB = 1e9 bytes.
 * The ISA is `kernel::host_isa()`: set ZEROBLOCKS_ISA=avx2|scalar to measure lower ones.
 *
 * Usage: bench_host_step [--n N] [--reps R] [--warmup W] [--threads 1,2]
 */
#include <zeroblocks/kernel/host.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace zb = zeroblocks;
namespace kn = zeroblocks::kernel;

namespace {

// -----------------------------------------------------------------------------------
// Ceiling and triad kernels: same ISA helpers, unroll and stores as the real kernels.
// -----------------------------------------------------------------------------------

#if ZB_X86_KERNELS
template <class G>
ZB_TARGET_AVX512 void ceiling_avx512(float* master, float* m, float* v, const G* grad, G* param,
                                     std::size_t begin, std::size_t end) {
  namespace d = kn::detail::avx512;
  std::size_t i = begin;
  for (; i + 32 <= end; i += 32) {
    const __m512 g0 = d::load(grad + i), g1 = d::load(grad + i + 16);
    const __m512 p0 = _mm512_add_ps(d::load(master + i), g0), p1 = _mm512_add_ps(d::load(master + i + 16), g1);
    const __m512 m0 = _mm512_add_ps(d::load(m + i), g0), m1 = _mm512_add_ps(d::load(m + i + 16), g1);
    const __m512 v0 = _mm512_add_ps(d::load(v + i), g0), v1 = _mm512_add_ps(d::load(v + i + 16), g1);
    d::store(master + i, p0);
    d::store(master + i + 16, p1);
    d::store(m + i, m0);
    d::store(m + i + 16, m1);
    d::store(v + i, v0);
    d::store(v + i + 16, v1);
    d::store(param + i, p0);
    d::store(param + i + 16, p1);
  }
  for (; i < end; ++i) {  // n is a multiple of 32 in practice; keep it correct anyway
    const float g = zb::to_float(grad[i]);
    master[i] += g;
    m[i] += g;
    v[i] += g;
    param[i] = zb::from_float<G>(master[i]);
  }
}

template <class G>
ZB_TARGET_AVX2 void ceiling_avx2(float* master, float* m, float* v, const G* grad, G* param, std::size_t begin,
                                 std::size_t end) {
  namespace d = kn::detail::avx2;
  std::size_t i = begin;
  for (; i + 16 <= end; i += 16) {
    const __m256 g0 = d::load(grad + i), g1 = d::load(grad + i + 8);
    const __m256 p0 = _mm256_add_ps(d::load(master + i), g0), p1 = _mm256_add_ps(d::load(master + i + 8), g1);
    const __m256 m0 = _mm256_add_ps(d::load(m + i), g0), m1 = _mm256_add_ps(d::load(m + i + 8), g1);
    const __m256 v0 = _mm256_add_ps(d::load(v + i), g0), v1 = _mm256_add_ps(d::load(v + i + 8), g1);
    d::store(master + i, p0);
    d::store(master + i + 8, p1);
    d::store(m + i, m0);
    d::store(m + i + 8, m1);
    d::store(v + i, v0);
    d::store(v + i + 8, v1);
    d::store(param + i, p0);
    d::store(param + i + 8, p1);
  }
  for (; i < end; ++i) {
    const float g = zb::to_float(grad[i]);
    master[i] += g;
    m[i] += g;
    v[i] += g;
    param[i] = zb::from_float<G>(master[i]);
  }
}

ZB_TARGET_AVX512 void triad_avx512(float* a, const float* b, const float* c, float s, std::size_t begin,
                                   std::size_t end) {
  const __m512 vs = _mm512_set1_ps(s);
  std::size_t i = begin;
  for (; i + 32 <= end; i += 32) {
    _mm512_storeu_ps(a + i, _mm512_fmadd_ps(vs, _mm512_loadu_ps(c + i), _mm512_loadu_ps(b + i)));
    _mm512_storeu_ps(a + i + 16, _mm512_fmadd_ps(vs, _mm512_loadu_ps(c + i + 16), _mm512_loadu_ps(b + i + 16)));
  }
  for (; i < end; ++i) a[i] = b[i] + s * c[i];
}

ZB_TARGET_AVX2 void triad_avx2(float* a, const float* b, const float* c, float s, std::size_t begin,
                               std::size_t end) {
  const __m256 vs = _mm256_set1_ps(s);
  std::size_t i = begin;
  for (; i + 16 <= end; i += 16) {
    _mm256_storeu_ps(a + i, _mm256_fmadd_ps(vs, _mm256_loadu_ps(c + i), _mm256_loadu_ps(b + i)));
    _mm256_storeu_ps(a + i + 8, _mm256_fmadd_ps(vs, _mm256_loadu_ps(c + i + 8), _mm256_loadu_ps(b + i + 8)));
  }
  for (; i < end; ++i) a[i] = b[i] + s * c[i];
}
#endif

template <class G>
void ceiling_scalar(float* master, float* m, float* v, const G* grad, G* param, std::size_t begin,
                    std::size_t end) {
  for (std::size_t i = begin; i < end; ++i) {
    const float g = zb::to_float(grad[i]);
    master[i] += g;
    m[i] += g;
    v[i] += g;
    param[i] = zb::from_float<G>(master[i]);
  }
}

template <class G>
void ceiling(float* master, float* m, float* v, const G* grad, G* param, std::size_t n, int threads) {
  const kn::isa which = kn::host_isa();
  kn::detail::parallel_ranges(n, threads, [&](std::size_t b, std::size_t e) {
    switch (which) {
#if ZB_X86_KERNELS
      case kn::isa::avx512: ceiling_avx512(master, m, v, grad, param, b, e); break;
      case kn::isa::avx2: ceiling_avx2(master, m, v, grad, param, b, e); break;
#endif
      default: ceiling_scalar(master, m, v, grad, param, b, e); break;
    }
  });
}

void triad(float* a, const float* b, const float* c, float s, std::size_t n, int threads) {
  const kn::isa which = kn::host_isa();
  kn::detail::parallel_ranges(n, threads, [&](std::size_t lo, std::size_t hi) {
    switch (which) {
#if ZB_X86_KERNELS
      case kn::isa::avx512: triad_avx512(a, b, c, s, lo, hi); break;
      case kn::isa::avx2: triad_avx2(a, b, c, s, lo, hi); break;
#endif
      default:
        for (std::size_t i = lo; i < hi; ++i) a[i] = b[i] + s * c[i];
        break;
    }
  });
}

// -----------------------------------------------------------------------------------
// Harness
// -----------------------------------------------------------------------------------

/// Page-aligned buffer (2 MiB alignment so transparent huge pages can back it).
template <class T>
struct buffer {
  T* data = nullptr;
  explicit buffer(std::size_t n) {
    const std::size_t align = std::size_t{2} << 20;
    const std::size_t bytes = (n * sizeof(T) + align - 1) / align * align;
    data = static_cast<T*>(std::aligned_alloc(align, bytes));
    if (data == nullptr) {
      std::fprintf(stderr, "allocation of %zu bytes failed\n", bytes);
      std::exit(1);
    }
#if defined(MADV_HUGEPAGE)
    // Ask for transparent huge pages (THP is often "madvise" only): fewer TLB misses for
    // every kernel alike, and no drift from khugepaged collapsing pages mid-run.
    ::madvise(data, bytes, MADV_HUGEPAGE);
#endif
  }
  ~buffer() { std::free(data); }
  buffer(const buffer&) = delete;
  buffer& operator=(const buffer&) = delete;
};

double seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

struct options {
  std::size_t n = 67108864;
  int reps = 9;
  int warmup = 2;
  std::vector<int> threads = {1, 2};
};

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--n") o.n = std::strtoull(next(), nullptr, 10);
    else if (a == "--reps") o.reps = std::atoi(next());
    else if (a == "--warmup") o.warmup = std::atoi(next());
    else if (a == "--threads") {
      o.threads.clear();
      std::string list = next();
      for (std::size_t pos = 0; pos < list.size();) {
        const std::size_t comma = list.find(',', pos);
        o.threads.push_back(std::atoi(list.substr(pos, comma - pos).c_str()));
        pos = comma == std::string::npos ? list.size() : comma + 1;
      }
    } else {
      std::fprintf(stderr, "usage: %s [--n N] [--reps R] [--warmup W] [--threads 1,2]\n", argv[0]);
      std::exit(2);
    }
  }
  if (o.reps < 1) o.reps = 1;
  return o;
}

template <class G>
void run_dtype(const options& o, int threads, float* master, float* m, float* v, std::uint16_t* grad_bits,
               std::uint16_t* param_bits) {
  const std::size_t n = o.n;
  G* grad = reinterpret_cast<G*>(grad_bits);
  G* param = reinterpret_cast<G*>(param_bits);
  // Gradient values of a loss-scaled fp16/bf16 run, written by the owning threads.
  kn::detail::parallel_ranges(n, threads, [&](std::size_t b, std::size_t e) {
    std::mt19937 rng(static_cast<unsigned>(b));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (std::size_t i = b; i < e; ++i) grad[i] = zb::from_float<G>(u(rng) * 64.0f);
  });
  const auto args = kn::make_adamw_args(1e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, true, 10, 1.0f / 1024.0f);

  std::vector<double> t_ceiling, t_sumsq, t_fused, t_step, t_triad, r_fused, r_step;
  double sink = 0;
  auto time = [](auto&& f) {
    const double t0 = seconds_now();
    f();
    return seconds_now() - t0;
  };
  for (int r = -o.warmup; r < o.reps; ++r) {
    const double tc = time([&] { ceiling(master, m, v, grad, param, n, threads); });
    const double ts = time([&] { sink += kn::grad_sumsq(grad, n, threads).sumsq; });
    const double tf = time([&] { kn::fused_adamw(master, m, v, grad, param, n, args, threads); });
    const double tst = time([&] {
      const auto st = kn::grad_sumsq(grad, n, threads);
      sink += st.sumsq;
      if (!st.nonfinite) kn::fused_adamw(master, m, v, grad, param, n, args, threads);
    });
    // Triad on copies of the state arrays' roles: a = master, b = m, c = v; values stay
    // bounded because m and v are only read here.
    const double tt = time([&] { triad(master, m, v, 0.5f, n, threads); });
    if (r < 0) continue;
    t_ceiling.push_back(tc);
    t_sumsq.push_back(ts);
    t_fused.push_back(tf);
    t_step.push_back(tst);
    t_triad.push_back(tt);
    // Paired ratios: ceiling and kernel measured back to back in the same round, so
    // slow drift of a shared machine cancels.
    r_fused.push_back(tc / tf);
    r_step.push_back(tc * (30.0 / 28.0) / tst);
  }
  const double c = median(t_ceiling), s = median(t_sumsq), f = median(t_fused), st = median(t_step),
               tr = median(t_triad);
  const double dn = static_cast<double>(n);
  auto gbs = [dn](double bytes_per_elem, double sec) { return bytes_per_elem * dn / sec / 1e9; };
  const char* isa = kn::isa_name(kn::host_isa());
  const char* dt = zb::dtype_name<G>();
  const char* row = "| %-6s | %d | %s | %-7s | %8.2f | %6.2f |";
  auto line = [&](const char* k, double sec, double bytes, double ratio, double paired) {
    std::printf(row, isa, threads, dt, k, sec * 1e3, gbs(bytes, sec));
    if (ratio > 0) std::printf(" %.3f | %.3f |\n", ratio, paired);
    else std::printf("       |       |\n");
  };
  line("ceiling", c, 28, 0, 0);
  line("sumsq", s, 2, 0, 0);
  line("fused", f, 28, c / f, median(r_fused));
  line("step", st, 30, c * (30.0 / 28.0) / st, median(r_step));
  line("triad", tr, 12, 0, 0);
  if (sink == 12345.678) std::printf("#\n");  // keep the sums alive
}

}  // namespace

int main(int argc, char** argv) {
  const options o = parse(argc, argv);
  std::printf("# bench_host_step: n = %zu elements, isa = %s, reps = %d (median), warmup = %d\n", o.n,
              kn::isa_name(kn::host_isa()), o.reps, o.warmup);
  std::printf("# GB/s with GB = 1e9 B; bytes/elem: ceiling & fused 28, sumsq 2, step 30, triad 12\n");
  std::printf("# ratio: fused = ceiling_time/fused_time; step = ceiling_time*(30/28)/step_time (medians)\n");
  std::printf("# paired: median over rounds of the same ratio taken within each round\n");
  std::printf("| isa    | thr | dtype | kernel  |       ms |   GB/s | ratio | paired |\n"
              "|---|---|---|---|---|---|---|---|\n");
  for (int threads : o.threads) {
    // Fresh arrays per thread count, first-touched with the kernels' own split so every
    // page sits where the thread that streams it runs.
    buffer<float> master(o.n), m(o.n), v(o.n);
    buffer<std::uint16_t> grad(o.n), param(o.n);
    kn::detail::parallel_ranges(o.n, threads, [&](std::size_t b, std::size_t e) {
      std::mt19937 rng(static_cast<unsigned>(b) + 1);
      std::uniform_real_distribution<float> u(-1.0f, 1.0f);
      for (std::size_t i = b; i < e; ++i) {
        master.data[i] = u(rng);
        m.data[i] = 1e-3f * u(rng);
        v.data[i] = 1e-6f * (1.5f + u(rng));
        grad.data[i] = 0;
        param.data[i] = 0;
      }
    });
    run_dtype<zb::bfloat16>(o, threads, master.data, m.data, v.data, grad.data, param.data);
    run_dtype<zb::half>(o, threads, master.data, m.data, v.data, grad.data, param.data);
  }
  return 0;
}
