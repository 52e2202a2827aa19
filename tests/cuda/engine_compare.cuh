// Shared by the GPU engine tests: a small model with awkward sizes, a trainer loop whose
// gradients depend on the gathered parameters (copied to the host, computed, copied
// back to the engine's space), and `compare<Host, Gpu>`, which trains a host engine and
// a GPU engine alike and checks fp32 master weights and 16-bit parameters bit for bit
// (reductions on one rank scale and round once, and the fused step and the casts give
// the host's bits), the gradient norm within 1e-12 relative (CUB's summation order),
// and the traffic counters equal.
#pragma once

#include "cuda_test_main.hpp"

#include <zeroblocks/cuda.cuh>

#include <cmath>
#include <filesystem>
#include <string>
#include <unistd.h>
#include <vector>

namespace zbgt {
namespace zb = zeroblocks;

struct model {
  zb::param_registry reg;
  std::vector<zb::param_id> params;
  std::vector<zb::unit_id> units;
  model() {
    params.push_back(reg.add("embed.w", {13, 7}, "embed"));
    params.push_back(reg.add("embed.empty", {0}, "embed"));
    params.push_back(reg.add("l1.w", {5, 11}, "l1"));
    params.push_back(reg.add("l1.b", {5}, "l1"));
    params.push_back(reg.add("l2.w", {97, 3}, "l2"));
    params.push_back(reg.add("head.w", {37}, "head"));
    for (auto& n : reg.units()) units.push_back(reg.unit(n));
  }
};

float init_value(std::size_t p, std::size_t i) {
  return 0.5f * std::sin(0.37f * static_cast<float>(i) + 1.3f * static_cast<float>(p) + 0.1f);
}

/// Copies a parameter view (host or device memory) to the host.
template <class T>
std::vector<T> to_host(std::span<const T> v, bool device) {
  std::vector<T> h(v.size());
  if (v.empty()) return h;
  if (device) {
    // On the compute stream, which the engine's gathers are ordered before (a plain
    // cudaMemcpy runs on the legacy stream, which does not wait for a non-blocking one).
    const cudaStream_t cs = zb::cuda_space::compute_stream();
    REQUIRE(cudaMemcpyAsync(h.data(), v.data(), v.size_bytes(), cudaMemcpyDeviceToHost, cs) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(cs) == cudaSuccess);
  }
  else std::copy(v.begin(), v.end(), h.begin());
  return h;
}

struct outcome {
  std::vector<float> master, params;
  std::vector<double> norms;
};

/// K steps of `micro` micro-steps: forward acquires, backward acquires with gradients
/// from the gathered values (copied to the host, computed, copied back to the engine's
/// space).
template <class E>
outcome train(E& eng, const model& m, bool device, int steps, int micro = 2) {
  using T = typename E::param_type;
  for (std::size_t p = 0; p < m.params.size(); ++p) {
    std::vector<float> v(eng.model_layout().param(p).numel);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = init_value(p, i);
    eng.set_param(m.params[p], v);
  }
  outcome out;
  T* dgrad = nullptr;
  if (device) REQUIRE(cudaMalloc(&dgrad, eng.model_layout().total_numel() * sizeof(T) + 64) == cudaSuccess);
  for (int s = 0; s < steps; ++s) {
    for (int k = 0; k < micro; ++k) {
      eng.begin_micro_step();
      for (auto u : m.units) auto g = eng.acquire(u);
      for (auto it = m.units.rbegin(); it != m.units.rend(); ++it) {
        auto g = eng.acquire(*it);
        for (auto pi : eng.model_layout().unit(it->index).params) {
          const auto x = to_host(g.param({pi}), device);
          std::vector<T> grad(x.size());
          for (std::size_t i = 0; i < x.size(); ++i)
            grad[i] = zb::from_float<T>(0.3f * zb::to_float(x[i]) +
                                        0.05f * std::sin(1.7f * static_cast<float>(i) + 0.3f * static_cast<float>(s) +
                                                         static_cast<float>(pi) + 0.7f * static_cast<float>(k)));
          if (device && !grad.empty()) {
            // Stream-ordered on the compute stream: the upload, then grad_ready's copy out of
            // dgrad; the host waits before the next upload overwrites dgrad (and `grad`).
            const cudaStream_t cs = zb::cuda_space::compute_stream();
            REQUIRE(cudaMemcpyAsync(dgrad, grad.data(), grad.size() * sizeof(T), cudaMemcpyHostToDevice, cs) ==
                    cudaSuccess);
            eng.grad_ready({pi}, std::span<const T>(dgrad, grad.size()));
            REQUIRE(cudaStreamSynchronize(cs) == cudaSuccess);
          } else {
            eng.grad_ready({pi}, grad);
          }
        }
      }
      eng.end_micro_step();
    }
    const auto r = eng.step();
    REQUIRE(r.applied);
    out.norms.push_back(r.grad_norm);
  }
  if (dgrad) cudaFree(dgrad);
  out.master = eng.gather_master();
  for (auto x : eng.gather_params()) out.params.push_back(zb::to_float(x));
  return out;
}

zb::comm::nccl one_rank_nccl(const std::string& tag) {
  const auto dir = std::filesystem::path(ZB_SWAP_TEST_DIR) / "nccl-engine";
  std::filesystem::create_directories(dir);
  return zb::comm::nccl(zb::comm::file_bootstrap{dir.string(), tag + "-" + std::to_string(::getpid()), 0, 1});
}

/// The communicator of a one-rank GPU engine.
template <class C>
C one_rank(const std::string& tag) {
  if constexpr (std::is_same_v<C, zb::comm::nccl>) return one_rank_nccl(tag);
  else return C{};
}

/// The host engine `Host` and the GPU engine `Gpu` train alike; compare.
template <class Host, class Gpu>
void compare(const char* name, zb::engine_config cfg = {}) {
  using T = typename Host::param_type;
  INFO(name << " " << zb::dtype_name<T>() << " on " << Gpu::comm_type::name);
  model m;
  cfg.optim.lr = 0.01f;
  cfg.bucket_numel = 100;  // several buckets
  Host host(m.reg, zb::comm::self{}, cfg);
  const auto want = train(host, m, false, 3);
  Gpu gpu(m.reg, one_rank<typename Gpu::comm_type>(name), cfg);
  const auto got = train(gpu, m, true, 3);
  REQUIRE(got.master.size() == want.master.size());
  CHECK(std::memcmp(got.master.data(), want.master.data(), want.master.size() * sizeof(float)) == 0);
  REQUIRE(got.params.size() == want.params.size());
  CHECK(std::memcmp(got.params.data(), want.params.data(), want.params.size() * sizeof(float)) == 0);
  for (std::size_t s = 0; s < want.norms.size(); ++s)
    CHECK(std::fabs(got.norms[s] - want.norms[s]) <= 1e-12 * std::fabs(want.norms[s]));
  // Traffic is counted alike: the same elements per collective kind.
  CHECK(gpu.counters().payload() == host.counters().payload());
}

template <class Comm, class T, class Space>
using stage0_p = zb::stage0<Comm, T, Space>;
template <class Comm, class T, class Space>
using stage1_p = zb::stage1<Comm, T, Space>;
template <class Comm, class T, class Space>
using stage2_p = zb::stage2<Comm, T, Space>;
template <class Comm, class T, class Space>
using stage3_p = zb::stage3<Comm, T, Space>;

/// Preset on the host with comm::self against the same preset on cuda_space with `GpuComm`.
template <template <class, class, class> class Preset, class T, class GpuComm>
void gpu_equals_host(const char* name) {
  compare<Preset<zb::comm::self, T, zb::host_space>, Preset<GpuComm, T, zb::cuda_space>>(name);
}

}  // namespace zbgt
