/**
 * @file plan.hpp
 * @brief The memory planner: per-rank memory by category, disk per rank for the NVMe
 *        tier and elements communicated per step, for any model and world size up to
 *        65,536 ranks, without running them — from the same static estimators the
 *        engine's run-time figures are checked against (`Engine::estimate`,
 *        `estimate_tier_bytes`, `estimate_traffic`).
 *
 * ```
 * auto reg = zb::plan::llama({.hidden = 4096, .layers = 32, .ffn = 11008, .vocab = 32000});
 * zb::plan::knobs k;                       // the engine's defaults unless set
 * auto r = zb::plan::estimate("stage3", "bf16", reg, 1024, k);
 * // r.memory: bytes per category per rank; r.disk_bytes; r.traffic: elements per step
 * ```
 *
 * The command-line tool `zeroblocks-plan` (tools/zeroblocks_plan.cpp) prints these
 * tables. DeepSpeed's `estimate_zero3_model_states_mem_needs_all_live` pads its answer
 * by 1.5× in its own docs; these figures are the bytes the engine allocates at rest (a
 * test asserts they equal `eng.memory()` for the demo's models), plus what a stage-3
 * step gathers on top (`gathered`, bounded by the prefetch knobs, not at rest).
 *
 * Presets: `stage0`, `stage1`, `stage2`, `stage3`, `stage3_on_demand` (memory in the
 * engine's space — host or GPU alike), `stage2_nvme`, `stage3_nvme`, `infinity` (the
 * NVMe tier: fp32 master and optimizer state on disk, `infinity` the 16-bit shard too).
 * ZeRO-Offload (`stage2_offload`, `stage3_offload`): the coordinator's and bucketer's
 * bytes on the GPU as `stage2` / `stage3`, and `master::offloaded`'s declaration
 * (`master/offloaded_plan.hpp`, no CUDA needed) in pinned host memory
 * (`result::host_bytes`).
 */
#pragma once

#include "comm/self.hpp"
#include "engine/presets.hpp"
#include "master/offloaded_plan.hpp"
#include "master/swapped.hpp"

#include <cstddef>
#include <cstdint>
#include <istream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace plan {

/// @brief The knobs a plan depends on; unset ones keep the engine's defaults.
struct knobs {
  std::optional<std::size_t> bucket_numel;                 ///< cfg.bucket.bucket_numel
  std::optional<int> bucket_count;                         ///< cfg.bucket.bucket_count
  std::optional<std::size_t> prefetch_numel;               ///< cfg.coordinate.prefetch_numel
  std::optional<std::size_t> max_live_numel;               ///< cfg.coordinate.max_live_numel
  std::optional<std::size_t> max_reuse_distance_numel;     ///< cfg.coordinate.max_reuse_distance_numel
  std::optional<std::size_t> persistence_threshold_numel;  ///< cfg.coordinate.persistence_threshold_numel
  std::optional<std::size_t> sub_group_numel;              ///< cfg.master.sub_group_numel (NVMe)
  std::optional<int> buffer_count;                         ///< cfg.master.buffer_count (NVMe)
  std::optional<std::size_t> chunk_numel;                  ///< cfg.master.chunk_numel (offload)
  std::optional<std::size_t> align_numel;                  ///< cfg.partition.align_numel
  int micro_steps = 1;                                     ///< gradient accumulation steps per step
  std::optional<grad_accum_dtype> grad_accum;              ///< cfg.step.grad_accum
};

/// @brief A plan for one preset, parameter type and world size (per rank).
struct result {
  std::string preset;
  std::string dtype;
  int world = 1;
  int stage = 0;
  std::size_t psi = 0;           ///< padded elements of the flat layout
  std::size_t raw_numel = 0;     ///< parameters, without padding
  std::size_t max_unit_numel = 0;
  memory_report memory;          ///< bytes at rest per category (`current`)
  std::size_t formula_bytes = 0; ///< the ZeRO paper's model-state bytes for this stage
  std::size_t disk_bytes = 0;    ///< the NVMe tier's files per rank (0 without one)
  std::size_t host_bytes = 0;    ///< of `memory`, what sits in pinned host memory (offload presets)
  comm_counters traffic;         ///< payload elements per steady-state step, per collective
  std::size_t elem_bytes = 2;    ///< bytes of the parameter type
};

/// @brief Apply `k` to an engine config (fields the preset has).
template <class Config>
void apply(Config& cfg, const knobs& k) {
  if constexpr (requires { cfg.bucket.bucket_numel; }) {
    if (k.bucket_numel) cfg.bucket.bucket_numel = *k.bucket_numel;
    if (k.bucket_count) cfg.bucket.bucket_count = *k.bucket_count;
  }
  if constexpr (requires { cfg.coordinate.prefetch_numel; }) {
    if (k.prefetch_numel) cfg.coordinate.prefetch_numel = *k.prefetch_numel;
    if (k.max_live_numel) cfg.coordinate.max_live_numel = *k.max_live_numel;
    if (k.max_reuse_distance_numel) cfg.coordinate.max_reuse_distance_numel = *k.max_reuse_distance_numel;
    if (k.persistence_threshold_numel) cfg.coordinate.persistence_threshold_numel = *k.persistence_threshold_numel;
  }
  if constexpr (requires { cfg.master.sub_group_numel; }) {
    if (k.sub_group_numel) cfg.master.sub_group_numel = *k.sub_group_numel;
    if (k.buffer_count) cfg.master.buffer_count = *k.buffer_count;
    cfg.master.swap.paths = {"<planned>"};  // never opened: validation wants a path
  }
  if constexpr (requires { cfg.partition.align_numel; })
    if (k.align_numel) cfg.partition.align_numel = *k.align_numel;
  if (k.grad_accum) cfg.step.grad_accum = *k.grad_accum;
}

/// @brief The plan of engine type `E` (any composition) for `reg` on `world` ranks
/// with `cfg`.
template <class E>
result estimate_for(const param_registry& reg, int world, const typename E::config& cfg, step_shape s) {
  ZB_REQUIRE(world >= 1 && world <= 65536, "plan: world size ", world, " must be in [1, 65536]");
  ZB_REQUIRE(s.micro_steps >= 1, "plan: micro_steps must be >= 1, got ", s.micro_steps);
  cfg.validate();
  const layout lay = E::plan_layout(reg, world, cfg);
  result r;
  r.world = world;
  r.stage = E::stage;
  r.psi = lay.total_numel();
  r.raw_numel = lay.raw_numel();
  r.max_unit_numel = lay.max_unit_numel();
  r.memory = E::estimate(lay, cfg);
  r.elem_bytes = sizeof(typename E::param_type);
  r.formula_bytes = zero_formula_bytes(E::stage, r.psi, world, r.elem_bytes,
                                       optimizer_state_bytes<typename E::optimizer_type>, E::accumulates_fp32(cfg));
  r.disk_bytes = E::estimate_tier_bytes(lay, cfg);
  r.traffic = E::estimate_traffic(lay, cfg, s);
  return r;
}

/// @brief The plan of a ZeRO-Offload composition: engine type `E` gives the layout, the
/// coordinator's and bucketer's bytes (on the GPU) and the traffic; the master is
/// `master::offloaded` with `mcfg` (in pinned host memory).
template <class E>
result estimate_offload_for(const param_registry& reg, int world, const typename E::config& cfg,
                            const master::offloaded_config& mcfg, step_shape s) {
  static_assert(E::sharded_master, "plan: ZeRO-Offload shards the optimizer state (stage 1-3 compositions)");
  mcfg.validate();
  // master::offloaded takes the 16-bit gradient shard (no fp32 accumulation).
  ZB_REQUIRE(!E::accumulates_fp32(cfg), "plan: the offload presets accumulate gradients in the parameter type "
                                        "(set step.grad_accum = param)");
  result r = estimate_for<E>(reg, world, cfg, s);
  const layout lay = E::plan_layout(reg, world, cfg);
  memory_report m;
  E::coordinator_impl::declare(lay, cfg.coordinate, world, m, sizeof(typename E::param_type));
  E::bucketer_impl::declare(lay, cfg.bucket, world, m, sizeof(typename E::param_type), false);
  memory_report host;
  master::offloaded_declare<sizeof(typename E::param_type), E::optimizer_type::rule::state_count>(
      master_shape{lay.shard_numel(), false}, mcfg, host);
  for (std::size_t c = 0; c < mem_category_count; ++c) {
    m.current[c] += host.current[c];
    r.host_bytes += host.current[c];
  }
  r.memory = m;
  return r;
}

/// @brief The preset names `estimate` knows.
inline const std::vector<std::string>& presets() {
  static const std::vector<std::string> v = {"stage0",         "stage1",         "stage2",      "stage3",
                                             "stage3_on_demand", "stage2_offload", "stage3_offload", "stage2_nvme",
                                             "stage3_nvme",    "infinity"};
  return v;
}

namespace detail {
template <class T>
result by_preset(const std::string& preset, const param_registry& reg, int world, const knobs& k) {
  using C = comm::self;
  auto run = [&]<class E>() {
    typename E::config cfg;
    apply(cfg, k);
    return estimate_for<E>(reg, world, cfg, step_shape{k.micro_steps});
  };
  if (preset == "stage0") return run.template operator()<stage0<C, T>>();
  if (preset == "stage1") return run.template operator()<stage1<C, T>>();
  if (preset == "stage2") return run.template operator()<stage2<C, T>>();
  if (preset == "stage3") return run.template operator()<stage3<C, T>>();
  if (preset == "stage3_on_demand") return run.template operator()<stage3_on_demand<C, T>>();
  auto offload = [&]<class E>() {
    typename E::config cfg;
    apply(cfg, k);
    cfg.step.grad_accum = grad_accum_dtype::param;  // what master::offloaded supports
    master::offloaded_config mcfg;
    if (k.chunk_numel) mcfg.chunk_numel = *k.chunk_numel;
    return estimate_offload_for<E>(reg, world, cfg, mcfg, step_shape{k.micro_steps});
  };
  // The GPU presets' coordinator and bucketer, on the host engine of the same stage.
  if (preset == "stage2_offload") return offload.template operator()<stage2<C, T>>();
  if (preset == "stage3_offload") return offload.template operator()<stage3<C, T>>();
  if (preset == "stage2_nvme") return run.template operator()<stage2_nvme<C, T>>();
  if (preset == "stage3_nvme") return run.template operator()<stage3_nvme<C, T>>();
  if (preset == "infinity") return run.template operator()<infinity<C, T>>();
  std::string known;
  for (const auto& p : presets()) known += (known.empty() ? "" : ", ") + p;
  ZB_FAIL("plan: unknown preset '", preset, "' (known: ", known, ")");
}
}  // namespace detail

/// @brief The plan of a preset by name, for parameter type `dtype` ("bf16", "fp16",
/// "fp32").
inline result estimate(const std::string& preset, const std::string& dtype, const param_registry& reg, int world,
                       const knobs& k = {}) {
  result r;
  if (dtype == "bf16") r = detail::by_preset<bfloat16>(preset, reg, world, k);
  else if (dtype == "fp16") r = detail::by_preset<half>(preset, reg, world, k);
  else if (dtype == "fp32") r = detail::by_preset<float>(preset, reg, world, k);
  else ZB_FAIL("plan: unknown dtype '", dtype, "' (bf16, fp16 or fp32)");
  r.preset = preset;
  r.dtype = dtype;
  return r;
}

// ---- model descriptions -------------------------------------------------------------

/// @brief `total` parameters in `units` units of (nearly) equal size, one parameter each.
inline param_registry uniform(std::size_t total, std::size_t units) {
  ZB_REQUIRE(total > 0 && units > 0 && units <= total, "plan: ", total, " parameters in ", units,
             " units: need 0 < units <= parameters");
  param_registry reg;
  for (std::size_t u = 0; u < units; ++u) {
    const std::size_t n = total / units + (u < total % units ? 1 : 0);
    reg.add(::zeroblocks::detail::concat("unit", u, ".w"), {n}, ::zeroblocks::detail::concat("unit", u));
  }
  return reg;
}

/// @brief A LLaMA-style decoder: token embedding, `layers` blocks (attention with
/// `kv_hidden`-wide keys and values for grouped-query attention, a SwiGLU MLP of width
/// `ffn`, two RMSNorms), a final norm and an untied output head. One unit per block.
struct llama_shape {
  std::size_t hidden = 4096;
  std::size_t layers = 32;
  std::size_t ffn = 11008;
  std::size_t vocab = 32000;
  std::size_t kv_hidden = 0;  ///< 0: hidden (multi-head attention)
};

inline param_registry llama(const llama_shape& s) {
  ZB_REQUIRE(s.hidden > 0 && s.layers > 0 && s.ffn > 0 && s.vocab > 0, "plan: llama shape sizes must be > 0");
  const std::size_t h = s.hidden, kv = s.kv_hidden ? s.kv_hidden : s.hidden;
  param_registry reg;
  reg.add("tok_embeddings.weight", {s.vocab, h}, "embed");
  for (std::size_t l = 0; l < s.layers; ++l) {
    const std::string u = ::zeroblocks::detail::concat("layers.", l), p = u + ".";
    reg.add(p + "attention_norm.weight", {h}, u, 1);
    reg.add(p + "attention.wq.weight", {h, h}, u);
    reg.add(p + "attention.wk.weight", {kv, h}, u);
    reg.add(p + "attention.wv.weight", {kv, h}, u);
    reg.add(p + "attention.wo.weight", {h, h}, u);
    reg.add(p + "ffn_norm.weight", {h}, u, 1);
    reg.add(p + "feed_forward.w1.weight", {s.ffn, h}, u);
    reg.add(p + "feed_forward.w2.weight", {h, s.ffn}, u);
    reg.add(p + "feed_forward.w3.weight", {s.ffn, h}, u);
  }
  reg.add("norm.weight", {h}, "head", 1);
  reg.add("output.weight", {s.vocab, h}, "head");
  return reg;
}

/// @brief A registry from text: one parameter per line, `name unit dims [group]` with
/// dims as `4096x11008` (or one number); blank lines and `#` comments are skipped.
inline param_registry from_text(std::istream& in) {
  param_registry reg;
  std::string line;
  std::size_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (const auto c = line.find('#'); c != std::string::npos) line.resize(c);
    std::istringstream ls(line);
    std::string name, unit, dims;
    if (!(ls >> name)) continue;
    ZB_REQUIRE(static_cast<bool>(ls >> unit >> dims), "plan: line ", lineno, ": expected `name unit dims [group]`");
    std::size_t group = 0;
    if (!(ls >> group)) group = 0;
    std::vector<std::size_t> shape;
    std::istringstream ds(dims);
    for (std::string d; std::getline(ds, d, 'x');) {
      std::size_t used = 0;
      unsigned long long v = 0;
      try {
        v = std::stoull(d, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      ZB_REQUIRE(used == d.size() && !d.empty(), "plan: line ", lineno, ": bad dimension '", d, "' in '", dims, "'");
      shape.push_back(static_cast<std::size_t>(v));
    }
    reg.add(name, shape, unit, group);
  }
  ZB_REQUIRE(reg.size() > 0, "plan: the registry description has no parameters");
  return reg;
}

}  // namespace plan
ZB_NAMESPACE_END
