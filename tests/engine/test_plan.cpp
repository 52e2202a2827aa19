// The memory planner (zeroblocks/plan.hpp, the zeroblocks-plan tool) against what the
// engine reports at run time, on 1–4 ranks: for the demo's MLP and the test harness's
// model (sizes that do not divide), every preset, and stage-3 knobs that make
// persistence, reuse and the live bound matter, the planned layout size, memory per
// category at rest, NVMe disk per rank and payload elements per collective kind of a
// steady-state step equal the engine's own figures exactly. Also: the registry text
// format, the LLaMA shapes' parameter counts, and the planner's refusals.
#include "mpi_test_main.hpp"

#include <zeroblocks/comm/mpi.hpp>
#include <zeroblocks/plan.hpp>

#include "error_of.hpp"
#include "harness.hpp"

#include <filesystem>
#include <sstream>
#include <string>
#include <unistd.h>

namespace zb = zeroblocks;
using C = zb::comm::mpi;

namespace {

/// The demo's MLP (examples/train_mlp.cpp: widths 16, 64, 61, 58, 4), as registry text.
zb::param_registry demo_model() {
  std::istringstream text(R"(# name unit dims
layer0.w layer0 64x16
layer0.b layer0 64
layer1.w layer1 61x64
layer1.b layer1 61
layer2.w layer2 58x61
layer2.b layer2 58
layer3.w layer3 4x58
layer3.b layer3 4
)");
  return zb::plan::from_text(text);
}

/// Train `gas` micro-steps per step for three steps; the figures of the last two
/// (steady state: stage 3 follows the first step's trace) must equal the plan.
template <class E>
void plan_matches_run(const zbt::synthetic_model& m, zb::plan::knobs k, const char* what) {
  const int world = zb_world_size();
  INFO(std::string(what) << ", world " << world);
  typename E::config cfg;
  zb::plan::apply(cfg, k);
  cfg.optim.lr = 0.01f;
  if constexpr (requires { cfg.master.swap.paths; }) {
    const auto dir = std::filesystem::path(ZB_SWAP_TEST_DIR) / "plan" /
                     (std::to_string(::getpid()) + "-" + std::to_string(zb_world_rank()));
    std::filesystem::create_directories(dir);
    cfg.master.swap.paths = {dir.string()};
  }
  const auto want = zb::plan::estimate_for<E>(m.reg, world, cfg, zb::step_shape{k.micro_steps});
  E eng(m.reg, C(MPI_COMM_WORLD), cfg);
  zbt::init_params(eng, m);
  zbt::run_options o;
  o.gas = k.micro_steps;
  for (int s = 0; s < 3; ++s) {
    const auto before = eng.counters();
    zbt::run_micro_steps(eng, m, o, s);
    eng.step();
    const auto got = eng.counters() - before;
    if (s == 0) continue;
    for (std::size_t c = 0; c < zb::collective_count; ++c) {
      INFO("step " << s << ", " << zb::collective_name(static_cast<zb::collective>(c)));
      CHECK(got.elements[c] == want.traffic.elements[c]);
    }
  }
  CHECK(eng.model_layout().total_numel() == want.psi);
  CHECK(eng.model_layout().raw_numel() == want.raw_numel);
  CHECK(eng.formula_bytes() == want.formula_bytes);
  const auto mem = eng.memory();
  for (std::size_t c = 0; c < zb::mem_category_count; ++c) {
    INFO("category " << zb::mem_category_name(static_cast<zb::mem_category>(c)));
    CHECK(mem.current[c] == want.memory.current[c]);
  }
  if constexpr (requires { eng.master_state().stats().file_bytes; })
    CHECK(eng.master_state().stats().file_bytes == want.disk_bytes);
  else
    CHECK(want.disk_bytes == 0);
}

template <class E>
void plan_matches_run_for_models() {
  zb::plan::knobs k;
  k.micro_steps = 2;
  k.bucket_numel = 300;  // several buckets
  k.sub_group_numel = 500;
  zbt::synthetic_model demo(1);
  demo.reg = demo_model();
  demo.params.clear();
  demo.units.clear();
  for (std::size_t p = 0; p < demo.reg.size(); ++p) demo.params.push_back({p});
  for (auto& n : demo.reg.units()) demo.units.push_back(demo.reg.unit(n));
  plan_matches_run<E>(demo, k, "demo MLP, defaults");
  plan_matches_run<E>(zbt::synthetic_model(3), k, "synthetic model, defaults");
  if constexpr (E::stage == 3) {
    const zbt::synthetic_model m(3);
    k.persistence_threshold_numel = 0;
    plan_matches_run<E>(m, k, "no persistence, reuse");
    plan_matches_run<E>(demo, k, "demo MLP, no persistence, reuse");
    k.max_reuse_distance_numel = 0;
    plan_matches_run<E>(m, k, "no persistence, no reuse");
    k.max_reuse_distance_numel = 400;
    k.persistence_threshold_numel = 40;
    plan_matches_run<E>(m, k, "some units persist, short reuse");
    k.max_reuse_distance_numel.reset();
    k.persistence_threshold_numel = 0;
    k.max_live_numel = 1200;  // binds: kept units are dropped, farthest next use first
    plan_matches_run<E>(m, k, "live bound");
    k.max_live_numel = 5000;
    plan_matches_run<E>(demo, k, "demo MLP, live bound");
  }
}

}  // namespace

TEST_CASE_TEMPLATE("the plan equals the engine's run-time figures", E, zb::stage0<C>, zb::stage1<C>,
                   zb::stage2<C, zb::half>, zb::stage3<C>, zb::stage3_on_demand<C>, zb::stage2_nvme<C>,
                   zb::stage3_nvme<C>, zb::infinity<C>) {
  plan_matches_run_for_models<E>();
}

TEST_CASE("LLaMA shapes have the published parameter counts; 65,536 ranks plan without running") {
  std::size_t n7 = 0, n70 = 0;
  const auto reg7 = zb::plan::llama({4096, 32, 11008, 32000, 0});
  const auto reg = zb::plan::llama({8192, 80, 28672, 32000, 1024});
  for (const auto& p : reg7.params()) n7 += p.numel;
  for (const auto& p : reg.params()) n70 += p.numel;
  CHECK(n7 == 6'738'415'616ull);   // LLaMA-2 7B
  CHECK(n70 == 68'976'648'192ull); // LLaMA-2 70B
  const auto r = zb::plan::estimate("stage3", "bf16", reg, 65536);
  // 18 B per element over 65,536 ranks (bf16 accumulates gradients in fp32 by default:
  // a 4-byte gradient shard), plus the units below the persistence threshold (the
  // norms' head unit is not: the output layer is large).
  CHECK(r.formula_bytes == 18 * r.psi / 65536);
  CHECK(r.memory.model_state() == r.formula_bytes);
  CHECK(r.disk_bytes == 0);
  const auto nvme = zb::plan::estimate("infinity", "bf16", reg, 1024);
  CHECK(nvme.disk_bytes >= 2 * (12 + 2) * (nvme.psi / 1024));  // two slots of master, m, v and parameters
}

TEST_CASE("ZeRO-Offload plans: the GPU holds stage 2's or 3's buffers, pinned host memory the fp32 state") {
  const int world = 4;
  const auto reg = zb::plan::llama({256, 4, 688, 1000, 64});
  zb::plan::knobs k;
  k.chunk_numel = 1000;
  k.grad_accum = zb::grad_accum_dtype::param;  // what master::offloaded takes (the 16-bit shard)
  for (const char* p : {"stage2", "stage3"}) {
    const auto gpu = zb::plan::estimate(p, "bf16", reg, world, k);
    const auto off = zb::plan::estimate(std::string(p) + "_offload", "bf16", reg, world, k);
    INFO(p);
    const std::size_t shard = gpu.psi / world;
    CHECK(off.host_bytes == 12 * shard + (shard + 2 * 1000) * 2);  // master, m, v + 16-bit staging
    CHECK(off.memory[zb::mem_category::params16] == gpu.memory[zb::mem_category::params16]);
    CHECK(off.memory[zb::mem_category::grads16] == gpu.memory[zb::mem_category::grads16]);
    CHECK(off.memory[zb::mem_category::buckets] == gpu.memory[zb::mem_category::buckets]);
    CHECK(off.memory[zb::mem_category::master_fp32] == 4 * shard);
    CHECK(off.traffic.payload() == gpu.traffic.payload());
    CHECK(gpu.host_bytes == 0);
  }
}

TEST_CASE("the planner refuses what it cannot plan") {
  const auto reg = zb::plan::uniform(1000, 3);
  CHECK(zbt::has(zbt::error_of([&] { (void)zb::plan::estimate("stage9", "bf16", reg, 8); }), "unknown preset 'stage9'"));
  CHECK(zbt::has(zbt::error_of([&] { (void)zb::plan::estimate("stage1", "int8", reg, 8); }), "unknown dtype 'int8'"));
  CHECK(zbt::has(zbt::error_of([&] { (void)zb::plan::estimate("stage1", "bf16", reg, 65537); }),
                 "world size 65537 must be in [1, 65536]"));
  std::istringstream bad("w u 4x?\n");
  CHECK(zbt::has(zbt::error_of([&] { (void)zb::plan::from_text(bad); }), "line 1: bad dimension '?'"));
  zb::plan::knobs k;
  k.bucket_count = 0;
  CHECK(zbt::has(zbt::error_of([&] { (void)zb::plan::estimate("stage2", "bf16", reg, 8, k); }),
                 "bucket.bucket_count must be >= 1"));
}
