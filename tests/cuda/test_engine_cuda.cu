// The engine on the GPU with comm::nccl (one rank, file bootstrap): the stage 0-3 presets
// and the ZeRO-Offload presets on cuda_space against the same presets on the host
// (host_space, comm::self), from the same parameters and gradients, bit for bit (see
// engine_compare.cuh). Skipped without a GPU.
#include "engine_compare.cuh"

using namespace zbgt;

TEST_CASE_TEMPLATE("stages 0-3 and the offload presets on cuda_space with comm::nccl equal the host engine", T,
                   float, zeroblocks::half, zeroblocks::bfloat16) {
  presets_equal_host<T, zb::comm::nccl>();
}
