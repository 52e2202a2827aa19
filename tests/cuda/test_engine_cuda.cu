// The engine on the GPU with comm::nccl (one rank, file bootstrap): the stage 0-3 presets
// and the ZeRO-Offload presets on cuda_space against the same presets on the host
// (host_space, comm::self), from the same parameters and gradients, bit for bit (see
// engine_compare.cuh). Skipped without a GPU.
#include "engine_compare.cuh"

using namespace zbgt;

TEST_CASE_TEMPLATE("stages 0-3 on cuda_space with comm::nccl equal the host engine bit for bit", T, float,
                   zeroblocks::half, zeroblocks::bfloat16) {
  gpu_equals_host<stage0_p, T, zb::comm::nccl>("stage0");
  gpu_equals_host<stage1_p, T, zb::comm::nccl>("stage1");
  gpu_equals_host<stage2_p, T, zb::comm::nccl>("stage2");
  gpu_equals_host<stage3_p, T, zb::comm::nccl>("stage3");
}

TEST_CASE_TEMPLATE("ZeRO-Offload (master::offloaded) with comm::nccl equals the host engine bit for bit", T, float,
                   zeroblocks::half, zeroblocks::bfloat16) {
  zb::engine_config cfg;
  cfg.swap.sub_group_numel = 50;  // several pipeline chunks per slice, a short last one
  compare<zb::stage2<zb::comm::self, T>, zb::stage2_offload<zb::comm::nccl, T>>("stage2_offload", cfg);
  compare<zb::stage3<zb::comm::self, T>, zb::stage3_offload<zb::comm::nccl, T>>("stage3_offload", cfg);
}
