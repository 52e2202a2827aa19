// The `.hpp` half of the CUDA backend needs no nvcc: this file is compiled by the plain
// C++ compiler (with the project's warnings as errors) and links zeroblocks::cuda. It
// includes space/cuda_space.hpp and comm/nccl.hpp but not comm/nccl.cuh, so:
//  - cuda_space and pinned_space work from host-compiled code;
//  - comm::nccl in reduce_mode::native works (no kernel of ours is involved);
//  - reduce_mode::deterministic is refused with a message naming nccl.cuh.
// One process (file bootstrap, one rank). Skipped (exit 77) without a GPU.
#include "cuda_test_main.hpp"

#include <zeroblocks/comm/nccl.hpp>
#include <zeroblocks/engine/presets_cuda.hpp>
#include <zeroblocks/master/offloaded.hpp>
#include <zeroblocks/space/cuda_space.hpp>
#include <zeroblocks/space/host_space.hpp>

#include "error_of.hpp"

#include <unistd.h>

#include <string>
#include <vector>

namespace zb = zeroblocks;
using zbt::error_of;
using zbt::has;

namespace {

zb::comm::file_bootstrap one_rank(const char* what) {
  return {ZB_SWAP_TEST_DIR, std::string(what) + "_" + std::to_string(::getpid()), 0, 1};
}

}  // namespace

TEST_CASE("host-compiled: cuda_space and pinned_space") {
  zb::cuda_stream s;
  std::vector<float> in(1000), out(1000);
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i) * 0.5f;
  void* d = zb::cuda_space::allocate_async(in.size() * sizeof(float), s);
  zb::cuda_space::copy_async(d, in.data(), in.size() * sizeof(float), s);
  zb::cuda_space::copy_async(out.data(), d, out.size() * sizeof(float), s);
  zb::cuda_space::deallocate_async(d, s);
  s.synchronize();
  CHECK(out == in);
  void* p = zb::pinned_space::allocate(12345);
  CHECK(zb::pinned_space::last_lock_ok());
  zb::pinned_space::deallocate(p, 12345);
}

TEST_CASE("host-compiled: comm::nccl native reductions on one rank") {
  zb::comm::nccl_config cfg;
  cfg.reduce = zb::comm::reduce_mode::native;
  zb::comm::nccl comm(one_rank("cxx_native"), cfg);
  CHECK(comm.size() == 1);
  CHECK(comm.rank() == 0);
  const std::size_t n = 257;
  std::vector<float> h(n);
  for (std::size_t i = 0; i < n; ++i) h[i] = static_cast<float>(i);
  auto* d = static_cast<float*>(zb::cuda_space::allocate(n * sizeof(float)));
  zb::cuda_space::copy(d, h.data(), n * sizeof(float));
  comm.all_reduce(d, n, 0.5f);
  comm.synchronize();
  std::vector<float> out(n);
  zb::cuda_space::copy(out.data(), d, n * sizeof(float));
  for (std::size_t i = 0; i < n; ++i) CHECK(out[i] == 0.5f * static_cast<float>(i));
  comm.all_gather(d, d, n);  // in place on one rank: unchanged
  comm.barrier();
  CHECK(comm.all_gather_values({3.0}) == std::vector<double>{3.0});
  CHECK(comm.counters()[zb::collective::all_reduce] == 2 * n);
  zb::cuda_space::deallocate(d, n * sizeof(float));
}

TEST_CASE("host-compiled: reduce_mode::deterministic without nccl.cuh is refused clearly") {
  const std::string e = error_of([] { zb::comm::nccl comm(one_rank("cxx_deterministic")); });
  CHECK(has(e, "nccl.cuh"));
  CHECK(has(e, "reduce_mode::native"));
}
