// Shared by the GPU engine tests: the host tests' synthetic model, a trainer loop whose
// gradients depend on the gathered parameters (copied to the host, computed, copied
// back to the engine's space), and `compare<Host, Gpu>`, which trains a host engine and
// a GPU engine alike and checks fp32 master weights and 16-bit parameters bit for bit
// (reductions on one rank scale and round once, and the fused step and the casts give
// the host's bits), the gradient norm within 1e-12 relative (CUB's summation order),
// and the traffic counters equal.
#pragma once

#include "cuda_test_main.hpp"
#include "harness.hpp"

#include <zeroblocks/cuda.cuh>

#include <cmath>
#include <filesystem>
#include <limits>
#include <string>
#include <unistd.h>
#include <vector>

namespace zbgt {
namespace zb = zeroblocks;

/// The host tests' synthetic model: sizes that do not divide, zero-size parameters, a
/// unit with nothing in it.
using model = zbt::synthetic_model;

/// Copies a parameter view to the host; its type says whether it is device memory.
/// Device memory is read on the engine's compute stream `cs`.
template <class T, class Space>
std::vector<T> to_host(zb::space_span<const T, Space> v, typename Space::stream_type cs = {}) {
  std::vector<T> h(v.size());
  if (v.empty()) return h;
  if constexpr (Space::host_accessible) {
    std::copy(v.begin(), v.end(), h.begin());
  } else {
    // On the compute stream, which the engine's gathers are ordered before (a plain
    // cudaMemcpy runs on the legacy stream, which does not wait for a non-blocking one).
    REQUIRE(cudaMemcpyAsync(h.data(), v.data(), v.size_bytes(), cudaMemcpyDeviceToHost, cs) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(cs) == cudaSuccess);
  }
  return h;
}

/// The engine's compute stream, or 0 for a host engine.
template <class E>
cudaStream_t compute_stream_of(const E& eng) {
  if constexpr (E::has_streams) return eng.compute_stream();
  else return nullptr;
}

struct outcome {
  std::vector<float> master, params;
  std::vector<double> norms;
  std::vector<float> clips;
  std::vector<bool> applied;
};

/// How `train` runs.
struct train_options {
  int steps = 3;
  int micro = 2;           ///< micro-steps per step
  int overflow_step = -1;  ///< this step's first micro-step gets an Inf: the step is skipped
};

/// Steps of `micro` micro-steps: forward acquires, backward acquires with gradients from
/// the gathered values (copied to the host, computed, scaled by the loss scale as the
/// trainer contract says, copied back to the engine's space).
template <class E>
outcome train(E& eng, const model& m, bool device, train_options o = {}) {
  using T = typename E::param_type;
  for (std::size_t p = 0; p < m.params.size(); ++p) {
    std::vector<float> v(eng.model_layout().param(p).numel);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = model::init(p, i);
    eng.set_param(m.params[p], v);
  }
  outcome out;
  T* dgrad = nullptr;
  if (device) REQUIRE(cudaMalloc(&dgrad, eng.model_layout().total_numel() * sizeof(T) + 64) == cudaSuccess);
  for (int s = 0; s < o.steps; ++s) {
    for (int k = 0; k < o.micro; ++k) {
      eng.begin_micro_step();
      for (auto u : m.units) auto g = eng.acquire(u);
      for (auto it = m.units.rbegin(); it != m.units.rend(); ++it) {
        auto g = eng.acquire(*it);
        for (auto pi : eng.model_layout().unit(it->index).params) {
          const auto x = to_host(g.param({pi}), eng.compute_stream());
          std::vector<T> grad(x.size());
          for (std::size_t i = 0; i < x.size(); ++i)
            grad[i] = zb::from_float<T>(
                eng.loss_scale() *
                (0.3f * zb::to_float(x[i]) + 0.05f * std::sin(1.7f * static_cast<float>(i) +
                                                              0.3f * static_cast<float>(s) + static_cast<float>(pi) +
                                                              0.7f * static_cast<float>(k))));
          if (s == o.overflow_step && k == 0 && !grad.empty())
            grad[grad.size() / 2] = zb::from_float<T>(std::numeric_limits<float>::infinity());
          if (device && !grad.empty()) {
            // Stream-ordered on the compute stream: the upload, then grad_ready's copy out of
            // dgrad; the host waits before the next upload overwrites dgrad (and `grad`).
            const cudaStream_t cs = compute_stream_of(eng);
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
    CHECK(r.applied == (s != o.overflow_step));
    out.applied.push_back(r.applied);
    out.norms.push_back(r.grad_norm);
    out.clips.push_back(r.clip_factor);
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

/// The GPU engine runs on a non-blocking stream of its own, as a trainer's would (the
/// legacy default stream would hide missing stream ordering by synchronising): engines
/// are built with `scope.stream` as their compute stream. Declared before the engines,
/// so it outlives them.
struct compute_stream_scope {
  zb::cuda_stream stream;
  ~compute_stream_scope() { (void)cudaStreamSynchronize(stream); }
};

/// The knobs a comparison sets, applied to each engine's own config (the host and the
/// GPU engine have different policies, so different config types).
struct knobs {
  float max_grad_norm = 0.0f;   ///< cfg.step.max_grad_norm
  std::size_t bucket_numel = 0; ///< cfg.bucket.bucket_numel; 0: 100 × the model's width (several buckets)
  std::size_t chunk_numel = 0;  ///< master::offloaded's cfg.master.chunk_numel; 0: its default
  template <class E>
  typename E::config config_of(std::size_t width) const {
    typename E::config c;
    c.optim.lr = 0.01f;
    c.step.max_grad_norm = max_grad_norm;
    if constexpr (requires { c.bucket.bucket_numel; }) c.bucket.bucket_numel = bucket_numel ? bucket_numel : 100 * width;
    if constexpr (requires { c.master.chunk_numel; })
      if (chunk_numel) c.master.chunk_numel = chunk_numel;
    return c;
  }
};

/// The host engine `Host` and the GPU engine `Gpu` train alike (on `synthetic_model(width)`);
/// compare. Master weights and parameters must be bit-identical — unless gradient
/// clipping (`cfg.step.max_grad_norm`) gave a clip factor with other bits (it comes from the
/// GPU's norm, CUB's summation order, within 1e-12 relative of the host's), then within
/// `clip_rel_tol` relative.
template <class Host, class Gpu>
void compare(const char* name, knobs cfg = {}, train_options o = {}, std::size_t width = 1,
             double clip_rel_tol = 0.0) {
  using T = typename Host::param_type;
  INFO(name << " " << zb::dtype_name<T>() << " on " << Gpu::comm_type::name << ", width " << width);
  model m(width);
  Host host(m.reg, zb::comm::self{}, cfg.config_of<Host>(width));
  const auto want = train(host, m, false, o);
  compute_stream_scope scope;
  Gpu gpu(m.reg, one_rank<typename Gpu::comm_type>(name), cfg.config_of<Gpu>(width), scope.stream);
  REQUIRE(gpu.compute_stream() == scope.stream.get());
  const auto got = train(gpu, m, true, o);
  REQUIRE(got.norms.size() == want.norms.size());
  CHECK(got.applied == want.applied);
  bool same_clips = true;
  for (std::size_t s = 0; s < want.norms.size(); ++s) {
    if (want.applied[s]) CHECK(std::fabs(got.norms[s] - want.norms[s]) <= 1e-12 * std::fabs(want.norms[s]));
    same_clips = same_clips && std::memcmp(&got.clips[s], &want.clips[s], sizeof(float)) == 0;
    if (cfg.max_grad_norm > 0.0f && want.applied[s]) CHECK(want.clips[s] < 1.0f);  // the clipping case clips
  }
  if (cfg.max_grad_norm == 0.0f) CHECK(same_clips);
  WARN_MESSAGE(same_clips, "clip factors differ in their last bits: comparing within a tolerance");
  const double tol = same_clips ? 0.0 : clip_rel_tol;
  auto same = [tol](const std::vector<float>& a, const std::vector<float>& b) {
    if (a.size() != b.size()) return false;
    if (tol == 0.0) return std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
    for (std::size_t i = 0; i < a.size(); ++i)
      if (!(std::fabs(double(a[i]) - double(b[i])) <= tol * std::fabs(double(b[i])) + 1e-30)) return false;
    return true;
  };
  CHECK(same(got.master, want.master));
  CHECK(same(got.params, want.params));
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

/// Stages 0-3 and the ZeRO-Offload presets (several pipeline chunks per slice, a short
/// last one) on `GpuComm` against the host.
template <class T, class GpuComm>
void presets_equal_host() {
  gpu_equals_host<stage0_p, T, GpuComm>("stage0");
  gpu_equals_host<stage1_p, T, GpuComm>("stage1");
  gpu_equals_host<stage2_p, T, GpuComm>("stage2");
  gpu_equals_host<stage3_p, T, GpuComm>("stage3");
  knobs cfg;
  cfg.chunk_numel = 50;
  compare<zb::stage2<zb::comm::self, T>, zb::stage2_offload<GpuComm, T>>("stage2_offload", cfg);
  compare<zb::stage3<zb::comm::self, T>, zb::stage3_offload<GpuComm, T>>("stage3_offload", cfg);
  // A wider model (copies that take longer than a kernel launch) with a skipped step.
  train_options o;
  o.overflow_step = 1;
  cfg.chunk_numel = 5000;
  compare<zb::stage2<zb::comm::self, T>, zb::stage2<GpuComm, T, zb::cuda_space>>("stage2 wide, overflow", cfg, o, 200);
  compare<zb::stage2<zb::comm::self, T>, zb::stage2_offload<GpuComm, T>>("stage2_offload wide, overflow", cfg, o, 200);
  compare<zb::stage3<zb::comm::self, T>, zb::stage3_offload<GpuComm, T>>("stage3_offload wide, overflow", cfg, o, 200);
}

}  // namespace zbgt
