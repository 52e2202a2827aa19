// The engine on the GPU with comm::cuda_self (one rank, no NCCL: collectives are copies
// and scaled roundings on the compute stream): the stage 0-3 presets and the ZeRO-Offload
// presets on cuda_space against the host engine bit for bit (see engine_compare.cuh), and
// master::offloaded's PCIe traffic: gradients go down during backward with the stage 2/3
// bucketer, at step() with stage 1's. Skipped without a GPU.
#include "engine_compare.cuh"

#include <zeroblocks/plan.hpp>

using namespace zbgt;

TEST_CASE_TEMPLATE("stages 0-3 and the offload presets on cuda_space with comm::cuda_self equal the host engine",
                   T, float, zeroblocks::half, zeroblocks::bfloat16) {
  presets_equal_host<T, zb::comm::cuda_self>();
}

namespace {
/// Stage 1 with the offloaded master (no preset): its bucketer reduces at the step, so
/// the gradients go down then.
template <class Comm, class T>
using stage1_offload = zb::engine<T, zb::cuda_space, Comm, zb::partition::even, zb::coordinate::resident,
                                  zb::bucket::reduce_at_boundary, zb::master::offloaded>;
}  // namespace

TEST_CASE_TEMPLATE("stage 1 with master::offloaded equals the host engine", T, float, zeroblocks::half,
                   zeroblocks::bfloat16) {
  knobs cfg;
  cfg.chunk_numel = 50;
  compare<zb::stage1<zb::comm::self, T>, stage1_offload<zb::comm::cuda_self, T>>("stage1 + offloaded", cfg);
}

TEST_CASE_TEMPLATE("gradient clipping on the GPU matches the host (the factor from the GPU's norm)", T, float,
                   zeroblocks::half, zeroblocks::bfloat16) {
  knobs cfg;
  cfg.max_grad_norm = 0.05f;  // below the norms the model's gradients reach: every step clips
  // The norms agree within 1e-12 relative, so the float clip factor almost always has the
  // same bits, and then the results must too (compare checks it); should it not, allow one
  // rounding step of the 16-bit types.
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-2;
  compare<zb::stage2<zb::comm::self, T>, zb::stage2<zb::comm::cuda_self, T, zb::cuda_space>>("stage2 clipped", cfg, {},
                                                                                               1, tol);
  compare<zb::stage3<zb::comm::self, T>, zb::stage3_offload<zb::comm::cuda_self, T>>("stage3_offload clipped", cfg, {},
                                                                                      1, tol);
}

TEST_CASE("master::offloaded moves 16-bit gradients down during backward and 16-bit parameters up") {
  using T = zb::bfloat16;
  train_options o;
  o.steps = 3;
  o.micro = 2;
  knobs cfg;
  cfg.bucket_numel = 4000;
  cfg.chunk_numel = 5000;
  const model m(100);  // copies long enough to race with later work if misordered
  compute_stream_scope scope;
  {
    zb::stage2_offload<zb::comm::cuda_self, T> eng(m.reg, {}, cfg.config_of<zb::stage2_offload<zb::comm::cuda_self, T>>(1),
                                                   scope.stream);
    const std::size_t owned = eng.model_layout().shard_numel();
    const std::uint64_t owned_bytes = owned * sizeof(T);
    train(eng, m, true, o);
    const auto& st = eng.master_state().stats();
    // Every micro-step's reduced blocks went down as they landed; nothing at step().
    CHECK(st.grad_bytes_down_backward == o.steps * o.micro * owned_bytes);
    CHECK(st.grad_bytes_down_step == 0);
    CHECK(st.param_bytes_up == o.steps * owned_bytes);
    CHECK(st.steps == static_cast<std::uint64_t>(o.steps));
    // 12 B of host state per owned element, and the host copy of the gradient shard
    // (2 B per owned element) plus two parameter chunks counted as staging.
    CHECK(eng.memory()[zb::mem_category::master_fp32] == owned * 4);
    CHECK(eng.memory()[zb::mem_category::staging] ==
          (owned + 2 * zb::master::offloaded::chunk(eng.get_config().master, owned)) * sizeof(T));
    // The planner's figures for this composition (zeroblocks-plan's stage2_offload).
    using host_twin = zb::stage2<zb::comm::self, T>;
    const auto want = zb::plan::estimate_offload_for<host_twin>(m.reg, 1, cfg.config_of<host_twin>(1),
                                                                eng.get_config().master, zb::step_shape{o.micro});
    for (std::size_t c = 0; c < zb::mem_category_count; ++c) CHECK(eng.memory().current[c] == want.memory.current[c]);
  }
  {
    stage1_offload<zb::comm::cuda_self, T> eng(m.reg, {}, cfg.config_of<stage1_offload<zb::comm::cuda_self, T>>(1), scope.stream);
    const std::uint64_t owned_bytes = eng.model_layout().shard_numel() * sizeof(T);
    train(eng, m, true, o);
    const auto& st = eng.master_state().stats();
    CHECK(st.grad_bytes_down_backward == 0);
    CHECK(st.grad_bytes_down_step == o.steps * owned_bytes);
    CHECK(st.param_bytes_up == o.steps * owned_bytes);
  }
}
