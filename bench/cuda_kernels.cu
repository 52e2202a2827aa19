/**
 * @file cuda_kernels.cu
 * @brief Benchmark of the CUDA optimizer-step kernels against the GPU's own copy
 *        bandwidth, measured in the same run.
 *
 * What is measured, for each `--n` (default 64M and 256M elements), bf16 gradients and
 * parameters, fp32 master / m / v:
 *
 * - `memcpy`: `cudaMemcpyAsync` device to device of 14 B per element (so it reads 14 B
 *   and writes 14 B per element: the fused pass's traffic, half read, half written);
 * - `copy`:   a vectorised (16-byte) grid-stride copy kernel over the same bytes;
 *   the better of the two is the **baseline** bandwidth (what the memory system
 *   gives a read+write stream);
 * - `fused`:  `cuda::fused_adamw<bf16, bf16>`, 28 B per element (2 B grad read, 12 B
 *   master/m/v read, 12 B written, 2 B param written);
 * - `upcast`: `cuda::upcast<bf16>` to fp32, 6 B per element (2 read, 4 written);
 * - `sumsq`:  `cuda::grad_sumsq<bf16>`, 2 B per element, read only (a read-only stream
 *   can beat the read+write baseline, so its ratio may exceed 1).
 *
 * Bandwidth = bytes moved / median kernel time (cudaEvent timing around each launch;
 * GB = 1e9 bytes); ratio = bandwidth / baseline bandwidth (goal for fused and upcast:
 * >= 0.9). Every kernel runs `--warmup` times, then `--reps` rounds interleave all of
 * them so clock and thermal drift hit them alike. The last lines,
 * `RESULT fused_adamw n=... elems_per_s=...`, are for bench/cuda_kernels.sh, which
 * compares them with PyTorch's fused AdamW (bench/torch_fused_adamw.py).
 *
 * Without a usable CUDA device it prints "no CUDA device" and exits 0.
 *
 * Usage: bench_cuda_kernels [--n N[,N...]] [--reps R] [--warmup W]
 */
#include <zeroblocks/core/cuda_check.hpp>
#include <zeroblocks/kernel/cuda/kernels.cuh>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace zb = zeroblocks;
namespace kn = zeroblocks::kernel;
namespace kc = zeroblocks::kernel::cuda;

namespace {

/// The copy baseline: 16-byte loads and stores, grid-stride, grid sized like the
/// library's kernels (one full wave of resident blocks).
__global__ void __launch_bounds__(kc::detail::block_threads)
    copy_kernel(uint4* __restrict__ dst, const uint4* __restrict__ src, std::size_t n16) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n16; i += stride)
    dst[i] = src[i];
}

/// Deterministic, finite initial state: small parameters, zero m, small positive v,
/// gradients of order 1 (a loss-scaled bf16 gradient).
__global__ void init_state(float* master, float* m, float* v, zb::bfloat16* grad, std::size_t n) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u;
    const float u = static_cast<float>(h >> 8) * (1.0f / 16777216.0f) - 0.5f;  // [-0.5, 0.5)
    master[i] = 0.02f * u;
    m[i] = 0.0f;
    v[i] = 1e-6f;
    grad[i] = zb::from_float<zb::bfloat16>(u * 8.0f);
  }
}

template <class T>
T* device_alloc(std::size_t n) {
  void* p = nullptr;
  ZB_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
  return static_cast<T*>(p);
}

struct timer {
  cudaEvent_t start{}, stop{};
  timer() {
    ZB_CUDA_CHECK(cudaEventCreate(&start));
    ZB_CUDA_CHECK(cudaEventCreate(&stop));
  }
  ~timer() {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
  timer(const timer&) = delete;
  timer& operator=(const timer&) = delete;

  /// Seconds the work enqueued by `f` on `stream` took on the GPU.
  double time(cudaStream_t stream, const std::function<void()>& f) {
    ZB_CUDA_CHECK(cudaEventRecord(start, stream));
    f();
    ZB_CUDA_CHECK(cudaEventRecord(stop, stream));
    ZB_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    ZB_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    return static_cast<double>(ms) * 1e-3;
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t k = v.size() / 2;
  return v.size() % 2 ? v[k] : 0.5 * (v[k - 1] + v[k]);
}

std::vector<std::size_t> parse_list(const char* s) {
  std::vector<std::size_t> out;
  std::string str(s);
  std::size_t pos = 0;
  while (pos <= str.size()) {
    const std::size_t comma = str.find(',', pos);
    const std::string item = str.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    if (!item.empty()) out.push_back(static_cast<std::size_t>(std::strtod(item.c_str(), nullptr)));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

struct measured {
  const char* name;
  double bytes_per_elem;  // bytes moved per element of n
  std::function<void()> run;
  std::vector<double> times;
};

void bench_n(std::size_t n, int reps, int warmup, cudaStream_t stream) {
  // Copy baseline over 14 B per element each way (rounded to whole 16-byte words).
  const std::size_t copy_bytes = (14 * n) / 16 * 16;
  float* master = device_alloc<float>(n);
  float* m = device_alloc<float>(n);
  float* v = device_alloc<float>(n);
  auto* grad = device_alloc<zb::bfloat16>(n);
  auto* param = device_alloc<zb::bfloat16>(n);
  auto* copy_src = device_alloc<uint4>(copy_bytes / 16);
  auto* copy_dst = device_alloc<uint4>(copy_bytes / 16);
  auto* ws = device_alloc<kc::sumsq_workspace>(1);
  float* upcast_dst = reinterpret_cast<float*>(copy_dst);  // 14 B per element >= the 4 B it needs

  init_state<<<1024, 256, 0, stream>>>(master, m, v, grad, n);
  ZB_CUDA_CHECK_LAUNCH("init_state");
  ZB_CUDA_CHECK(cudaMemsetAsync(copy_src, 0x3c, copy_bytes, stream));
  ZB_CUDA_CHECK(cudaStreamSynchronize(stream));

  int copy_grid = 0;
  {
    kc::detail::resident_grid resident;
    copy_grid = resident.get(copy_kernel, kc::detail::block_threads);
  }
  const auto args = kn::make_adamw_args(1e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, true, 10, 1.0f / 1024.0f);
  const double copy_per_elem = 2.0 * static_cast<double>(copy_bytes) / static_cast<double>(n);

  std::vector<measured> ks;
  ks.push_back({"memcpy", copy_per_elem,
                [&] { ZB_CUDA_CHECK(cudaMemcpyAsync(copy_dst, copy_src, copy_bytes, cudaMemcpyDeviceToDevice, stream)); },
                {}});
  ks.push_back({"copy", copy_per_elem,
                [&] {
                  copy_kernel<<<copy_grid, kc::detail::block_threads, 0, stream>>>(copy_dst, copy_src, copy_bytes / 16);
                  ZB_CUDA_CHECK_LAUNCH("copy_kernel");
                },
                {}});
  ks.push_back({"fused", 28.0, [&] { kc::fused_adamw(master, m, v, grad, param, n, args, stream); }, {}});
  ks.push_back({"upcast", 6.0, [&] { kc::upcast(upcast_dst, grad, n, 1.0f / 1024.0f, stream); }, {}});
  ks.push_back({"sumsq", 2.0, [&] { kc::grad_sumsq(grad, n, ws, stream); }, {}});

  timer t;
  for (auto& k : ks)
    for (int i = 0; i < warmup; ++i) t.time(stream, k.run);
  for (int r = 0; r < reps; ++r)
    for (auto& k : ks) k.times.push_back(t.time(stream, k.run));

  auto gbps = [n](const measured& k) {
    return k.bytes_per_elem * static_cast<double>(n) / median(k.times) / 1e9;
  };
  const double baseline = std::max(gbps(ks[0]), gbps(ks[1]));
  std::printf("\nn = %zu elements (%.1f M); baseline = best copy = %.1f GB/s\n", n, static_cast<double>(n) / 1048576.0,
              baseline);
  std::printf("  %-8s %10s %12s %10s %14s %8s\n", "kernel", "B/elem", "median ms", "GB/s", "Gelem/s", "ratio");
  for (const auto& k : ks) {
    const double med = median(k.times);
    std::printf("  %-8s %10.1f %12.3f %10.1f %14.2f %8.3f\n", k.name, k.bytes_per_elem, med * 1e3, gbps(k),
                static_cast<double>(n) / med / 1e9, gbps(k) / baseline);
  }
  const double fused_s = median(ks[2].times);
  std::printf("  fused / copy bandwidth = %.3f (goal >= 0.9); upcast / copy = %.3f\n", gbps(ks[2]) / baseline,
              gbps(ks[3]) / baseline);
  std::printf("RESULT fused_adamw n=%zu elems_per_s=%.6e gbps=%.2f copy_gbps=%.2f\n", n,
              static_cast<double>(n) / fused_s, gbps(ks[2]), baseline);

  for (void* p : {static_cast<void*>(master), static_cast<void*>(m), static_cast<void*>(v),
                  static_cast<void*>(grad), static_cast<void*>(param), static_cast<void*>(copy_src),
                  static_cast<void*>(copy_dst), static_cast<void*>(ws)})
    ZB_CUDA_CHECK(cudaFree(p));
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::size_t> ns = {std::size_t{64} << 20, std::size_t{256} << 20};
  int reps = 20, warmup = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--n" && i + 1 < argc) ns = parse_list(argv[++i]);
    else if (a == "--reps" && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else if (a == "--warmup" && i + 1 < argc) warmup = std::max(0, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr, "usage: %s [--n N[,N...]] [--reps R] [--warmup W]\n", argv[0]);
      return 2;
    }
  }
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0) {
    std::printf("no CUDA device (%s): nothing to measure\n",
                e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    return 0;
  }
  try {
    int dev = 0;
    ZB_CUDA_CHECK(cudaGetDevice(&dev));
    cudaDeviceProp prop{};
    ZB_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    std::printf("device %d: %s, %d SMs, %.1f GiB; %d warmup + %d timed rounds, median\n", dev, prop.name,
                prop.multiProcessorCount, static_cast<double>(prop.totalGlobalMem) / (1u << 30), warmup, reps);
    cudaStream_t stream = nullptr;
    ZB_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    for (std::size_t n : ns) {
      const std::size_t need = 16 * n + 2 * (14 * n);  // master, m, v, grad, param; copy src + dst
      std::size_t free_bytes = 0, total_bytes = 0;
      ZB_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
      if (need > free_bytes) {
        std::printf("\nn = %zu: needs %.1f GB, %.1f GB free: skipped\n", n, static_cast<double>(need) / 1e9,
                    static_cast<double>(free_bytes) / 1e9);
        continue;
      }
      bench_n(n, reps, warmup, stream);
    }
    ZB_CUDA_CHECK(cudaStreamDestroy(stream));
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "bench_cuda_kernels: %s\n", ex.what());
    return 1;
  }
  return 0;
}
