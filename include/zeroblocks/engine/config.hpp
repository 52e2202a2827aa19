/**
 * @file config.hpp
 * @brief The engine's configuration: one config per role, aggregated.
 *
 * ```
 * using E = zb::stage3<zb::comm::mpi, zb::bfloat16>;
 * E::config cfg;                              // every knob has a default
 * cfg.optim.lr = 3e-4f;                       // optimizer (optim::adamw: adamw_config)
 * cfg.step.max_grad_norm = 1.0f;              // the engine's own step knobs
 * cfg.bucket.bucket_numel = 1 << 24;          // bucketer (bucket::reduce_scatter)
 * cfg.coordinate.prefetch_numel = 1 << 26;    // coordinator (coordinate::prefetch_trace)
 * E eng(registry, comm, cfg);
 * ```
 *
 * Each member is the `config` of the policy in that role, so an engine's config holds
 * exactly the knobs of the policies it is made of: `cfg.coordinate` of a stage-2
 * engine (`coordinate::resident`) is `no_config`, and setting a stage-3 knob on it does
 * not compile. Each role validates its own knobs, naming the field; the engine checks
 * them on every rank and then compares every rank's fields (`fields_of`), so ranks whose
 * knobs or policies differ fail at construction on every rank with the role, the field,
 * both values and both ranks.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../core/numeric.hpp"
#include "../policy/config.hpp"

#include <cmath>
#include <optional>
#include <string>
#include <vector>

ZB_NAMESPACE_BEGIN

/// @brief The type gradients are summed in over the micro-steps of a step.
/// [data_types.grad_accum_dtype]
///
/// - `param`: in the parameter type T, as the gradients arrive. Stages 0/1 add each
///   micro-step's local gradient into a full T buffer and reduce once, at the boundary;
///   stages 2/3 reduce each micro-step and add the reduced shard in T. With 16-bit T
///   and several micro-steps those round differently (stages 2/3 differ from stage 0
///   by 16-bit rounding), and the averaged gradient is rounded to T before the step.
/// - `fp32`: every micro-step's gradient is reduced across ranks (T on the wire, summed
///   in fp32 in rank order) and the fp32 sum is added to an fp32 accumulator — never
///   rounded to T. Every stage performs the same floating-point operations, so every
///   stage is bit-identical to stage 0 for any number of micro-steps. Cost, for Ψ
///   elements on N ranks: the gradient state is 4 B/element instead of 2 — stage 0
///   holds 2Ψ (this micro-step's local gradient) + 4Ψ, stage 1 2Ψ + 4Ψ/N, stages 2/3
///   4Ψ/N instead of 2Ψ/N; stages 0/1 reduce every micro-step instead of once per step
///   (m·Ψ reduce-scatter elements for m micro-steps), and stage 0 all-gathers the fp32
///   sum once per step (Ψ elements of 4 B). Stages 2/3 move exactly what they move in
///   16 bits. Host spaces with `comm::mpi` / `comm::self` (not yet `cuda_space`, nor
///   `master::offloaded`).
/// - `automatic` (default): `fp32` for bfloat16 parameters (8 bits of mantissa lose
///   real signal when summed; DeepSpeed added grad_accum_dtype after bf16 runs that
///   diverged, #2768), `param` for half (fp16 with loss scaling, as DeepSpeed) and
///   float (where the two are the same) — and `param` where `fp32` is not available.
enum class grad_accum_dtype : int { automatic = 0, param = 1, fp32 = 2 };

inline const char* grad_accum_name(grad_accum_dtype d) {
  switch (d) {
    case grad_accum_dtype::automatic: return "automatic";
    case grad_accum_dtype::param: return "param";
    case grad_accum_dtype::fp32: return "fp32";
  }
  return "?";
}

/// @brief The engine's own knobs of the step (`cfg.step`; DeepSpeed names in brackets).
/// `threads` is a rank's own resource and may differ across ranks; the rest must agree.
struct step_config {
  /// Global-norm clipping of the averaged, unscaled gradient; 0 = off. [gradient_clipping]
  float max_grad_norm = 0.0f;
  /// Host kernel threads per rank; 0 = all OpenMP gives.
  int threads = 0;
  /// What gradients are summed in over micro-steps (see `grad_accum_dtype`).
  /// [data_types.grad_accum_dtype]
  grad_accum_dtype grad_accum = grad_accum_dtype::automatic;
  /// Seconds a collective wait may make no progress before every rank raises the same
  /// error naming the rank that diverged and where (the collective watchdog,
  /// `comm/detail/watchdog.hpp`); 0 = wait forever. Communicators with a watchdog
  /// (`comm::mpi`) only. [torch.distributed init_process_group(timeout=...)]
  double collective_timeout_s = 600.0;

  void validate() const {
    ZB_REQUIRE(collective_timeout_s >= 0.0 && collective_timeout_s < 1e9, "step.collective_timeout_s ",
               collective_timeout_s, " must be >= 0 (0 = off) and finite");
    ZB_REQUIRE(grad_accum == grad_accum_dtype::automatic || grad_accum == grad_accum_dtype::param ||
                   grad_accum == grad_accum_dtype::fp32,
               "step.grad_accum ", static_cast<int>(grad_accum), " is not automatic, param or fp32");
    ZB_REQUIRE(max_grad_norm >= 0.0f && std::isfinite(max_grad_norm), "step.max_grad_norm ", max_grad_norm,
               " must be finite and >= 0 (0 = off)");
    ZB_REQUIRE(threads >= 0, "step.threads must be >= 0 (0 = all), got ", threads);
  }
  /// Calls `v(name, field)` for each knob that must agree across ranks (`policy/config.hpp`).
  template <class Self, class V>
  static void fields_of(Self& c, V&& v) {
    v("max_grad_norm", c.max_grad_norm);
    v("grad_accum", c.grad_accum);
    v("collective_timeout_s", c.collective_timeout_s);
  }
};

/// @brief The hyper-parameters of one parameter group (as PyTorch's `param_groups`):
/// parameters registered with group g (`param_registry::add(..., g)`) are updated with
/// `cfg.groups[g]` applied to the optimizer's config. Must agree across ranks.
struct param_group {
  /// Multiplies the optimizer's learning rate (and what `set_learning_rate` sets).
  float lr_scale = 1.0f;
  /// The group's weight decay; none: the optimizer's (`cfg.optim.weight_decay`).
  std::optional<float> weight_decay;

  void validate(std::size_t g) const {
    ZB_REQUIRE(lr_scale >= 0.0f && std::isfinite(lr_scale), "groups[", g, "].lr_scale ", lr_scale,
               " must be finite and >= 0");
    ZB_REQUIRE(!weight_decay || (*weight_decay >= 0.0f && std::isfinite(*weight_decay)), "groups[", g,
               "].weight_decay ", weight_decay.value_or(0.0f), " must be finite and >= 0");
  }
};

/// @brief Every runtime knob of an engine made of these policies, one member per role.
/// Use it as `Engine::config`.
template <class Partitioner, class Coordinator, class Bucketer, class Master, class Scaler, class Optim>
struct engine_config {
  typename Optim::config optim{};              ///< the optimizer's hyper-parameters
  typename Scaler::config scale{};             ///< the loss scaler's knobs
  step_config step{};                          ///< clipping, host threads
  typename Partitioner::config partition{};    ///< alignment of slices
  typename Coordinator::config coordinate{};   ///< when full parameters exist (stage 3 prefetch)
  typename Bucketer::config bucket{};          ///< gradient buckets
  typename Master::config master{};            ///< the fp32 state's tier (NVMe, offload)
  /// Parameter groups: `groups[g]` for the parameters registered in group g. Group 0
  /// needs no entry (the optimizer's own settings); a parameter in a group g ≥ 1 needs
  /// `groups.size() > g`. E.g. GPT practice: `groups = {{}, {.weight_decay = 0.0f}}`
  /// and biases and norms registered in group 1.
  std::vector<param_group> groups{};

  /// @brief Call `v(role, policy name, role config)` for each role, in a fixed order.
  template <class V>
  void roles(V&& v) {
    roles_of(*this, v);
  }
  template <class V>
  void roles(V&& v) const {
    roles_of(*this, v);
  }
  /// @brief Validate every role's knobs; the first problem throws, naming the field.
  void validate() const {
    roles([](const char*, const char*, const auto& c) { c.validate(); });
    for (std::size_t g = 0; g < groups.size(); ++g) groups[g].validate(g);
  }

private:
  template <class Self, class V>
  static void roles_of(Self& c, V& v) {
    v("optim", Optim::name, c.optim);
    v("scale", Scaler::name, c.scale);
    v("step", "engine", c.step);
    v("partition", Partitioner::name, c.partition);
    v("coordinate", Coordinator::name, c.coordinate);
    v("bucket", Bucketer::name, c.bucket);
    v("master", Master::name, c.master);
  }
};

/// @brief The lines two ranks must agree on: the policies, then every role's fields
/// (`role.field=value`). Compared across ranks at construction.
template <class T, class Space, class Config>
std::vector<std::string> agreement_lines(const Config& cfg) {
  std::vector<std::string> out;
  out.push_back(detail::concat("policies.param_type=", dtype_name<T>()));
  out.push_back(detail::concat("policies.space=", Space::name));
  cfg.roles([&](const char* role, const char* policy, const auto& c) {
    out.push_back(detail::concat("policies.", role, '=', policy));
    for (auto& l : config_lines(c, role)) out.push_back(std::move(l));
  });
  out.push_back(detail::concat("groups.count=", cfg.groups.size()));
  for (std::size_t g = 0; g < cfg.groups.size(); ++g) {
    out.push_back(detail::concat("groups.", g, ".lr_scale=", field_text(cfg.groups[g].lr_scale)));
    out.push_back(detail::concat("groups.", g, ".weight_decay=",
                                 cfg.groups[g].weight_decay ? field_text(*cfg.groups[g].weight_decay) : "optim"));
  }
  return out;
}

ZB_NAMESPACE_END
