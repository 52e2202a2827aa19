/**
 * @file ds_config.hpp
 * @brief A DeepSpeed `ds_config.json` read into zeroblocks: the preset to build
 *        (`ds_config::preset`), the trainer's numbers (batch, micro-steps, schedule,
 *        progress lines) and the knobs of the engine's roles (`apply`).
 *
 * Needs nlohmann-json (Debian `nlohmann-json3-dev`): link `nlohmann_json::nlohmann_json`
 * (or `zeroblocks::checkpoint`, which brings it). `zeroblocks.hpp` does not include this
 * header.
 *
 * ```
 * zb::ds_config ds = zb::load_ds_config("ds_config.json", world_size);
 * for (const auto& w : ds.warnings) std::fprintf(stderr, "%s\n", w.c_str());  // keys not applied
 * // ds.preset says which engine to build, e.g. ds_preset::stage3 with ds.dtype bf16:
 * using E = zb::stage3<zb::comm::mpi, zb::bfloat16>;
 * zb::check_engine<E>(ds);            // the engine is the one the config asks for
 * E::config cfg;                      // zeroblocks' defaults ...
 * zb::apply(ds, cfg);                 // ... overwritten by what the config says
 * E eng(reg, comm, cfg);
 * for (long s = 0; s < steps; ++s) {
 *   if (ds.scheduler) eng.set_learning_rate(static_cast<float>(ds.scheduler->lr(eng.steps() - 1)));
 *   for (long m = 0; m < ds.gradient_accumulation_steps; ++m) {
 *     // ds.train_micro_batch_size_per_gpu samples on this rank
 *   }
 *   eng.step();
 * }
 * ```
 * (`lr(eng.steps() - 1)` is DeepSpeed's own order: its engine steps the scheduler after
 * each applied update, so update k uses `lr(k - 1)`; see `optim/schedule.hpp`.)
 *
 * What is read, and where it goes (`apply` writes only the fields the engine has):
 *
 * | DeepSpeed key | zeroblocks |
 * |---|---|
 * | `train_batch_size`, `train_micro_batch_size_per_gpu`, `gradient_accumulation_steps` | the same `ds_config` fields, resolved as DeepSpeed does (below): the trainer's loop |
 * | `fp16.enabled`, `bf16.enabled` (or `bfloat16`) | `ds_config::dtype`: the engine's T is `half`, `bfloat16`, else `float` |
 * | `fp16.loss_scale` (0: dynamic), `initial_scale_power`, `loss_scale_window`, `hysteresis`, `min_loss_scale` | `cfg.scale`: `scale::dynamic` (`initial_scale`, `growth_interval`, `hysteresis`, `min_scale`) or `scale::fixed` (`scale`) |
 * | `gradient_clipping` | `cfg.step.max_grad_norm` |
 * | `data_types.grad_accum_dtype` | `cfg.step.grad_accum` (`"fp32"`: fp32; the model's dtype: param) |
 * | `zero_optimization.stage`, `offload_optimizer.device`, `offload_param.device` | `ds_config::preset` |
 * | `reduce_bucket_size` | `cfg.bucket.bucket_numel` |
 * | `overlap_comm` | `cfg.bucket.bucket_count`: true 2 (double buffering), false 1 |
 * | `stage3_prefetch_bucket_size` | `cfg.coordinate.prefetch_numel` |
 * | `stage3_max_live_parameters` | `cfg.coordinate.max_live_numel` |
 * | `stage3_max_reuse_distance` | `cfg.coordinate.max_reuse_distance_numel` |
 * | `stage3_param_persistence_threshold` | `cfg.coordinate.persistence_threshold_numel` |
 * | `sub_group_size` | `cfg.master.sub_group_numel` |
 * | `offload_optimizer.nvme_path` (and a different `offload_param.nvme_path`) | `cfg.master.swap.paths` |
 * | `offload_optimizer.buffer_count` | `cfg.master.buffer_count` |
 * | `aio.block_size`, `aio.queue_depth`, `aio.thread_count` (= `intra_op_parallelism`) | `cfg.master.swap.block_size`, `.queue_depth`, `.threads` |
 * | `optimizer.type` `Adam`, `AdamW`, `Lion`, `SGD` and its `params` | `cfg.optim` (`adamw_config`, `lion_config`, `sgd_config`) |
 * | `scheduler.type` `WarmupLR`, `WarmupDecayLR`, `WarmupCosineLR`, `OneCycle`, `LRRangeTest` and its `params` | `ds_config::scheduler` (`schedule::any`); the trainer calls `set_learning_rate` |
 * | `steps_per_print` | `ds_config::steps_per_print` (the trainer's progress line) |
 * | `wall_clock_breakdown` | `ds_config::wall_clock_breakdown`: `engine::enable_timers` (`engine/timers.hpp`), by `apply_runtime` |
 *
 * `apply_runtime(ds, eng)` does what goes to a constructed engine rather than its config:
 * it installs the scheduler (`eng.set_lr_schedule`, in DeepSpeed's order: the update after
 * n applied updates uses lr(n − 1)) and turns the timers on for `wall_clock_breakdown`.
 * A trainer may instead call `eng.set_learning_rate(ds.scheduler->lr(eng.steps() - 1))`
 * before each step, as the example above does.
 *
 * A key that is absent leaves zeroblocks' default, which may differ from DeepSpeed's:
 * `reduce_bucket_size` 2^25 (DeepSpeed 5e8), `overlap_comm` 2 buffers (DeepSpeed: on for
 * stage 3 only), `sub_group_size` 2^24 (DeepSpeed 1e9, which would ask 48 GB of staging
 * buffers here), `stage3_max_reuse_distance` and the others as in DeepSpeed, and the
 * gradient accumulation type `automatic` (fp32 for bfloat16; DeepSpeed sums bf16
 * gradients in fp32 at stage 0 but in bf16 at stages 1–3 — write
 * `"grad_accum_dtype": "bf16"` for that). Numbers DeepSpeed itself defaults are
 * DeepSpeed's: the optimizer's (FusedAdam: lr 1e-3, betas (0.9, 0.999), eps 1e-8,
 * weight_decay 0) and the loss scaler's.
 *
 * Preset (`ds_preset`):
 *
 * | stage | offload_optimizer | offload_param | preset |
 * |---|---|---|---|
 * | 0, 1, 2, 3 | none | none | `stage0` … `stage3` |
 * | 2 | nvme | none | `stage2_nvme` |
 * | 3 | nvme | none or cpu | `stage3_nvme` |
 * | 3 | nvme | nvme | `infinity` |
 * | 2, 3 | cpu | none or cpu | `stage2_offload`, `stage3_offload` (`presets_cuda.hpp`) |
 *
 * `offload_optimizer.device: "cpu"` is ZeRO-Offload: fp32 master and optimizer state in
 * host memory, the step on the CPU. That is the GPU presets `stage2_offload` /
 * `stage3_offload`. Ranks that train on the host keep that state in host memory
 * already — the plain `stage2` / `stage3` are what the config asks for there:
 * `host_preset(p)` maps one onto the other (and `check_engine` accepts either on
 * `host_space`). `offload_param.device: "cpu"` likewise: the 16-bit parameter shard is
 * in host memory on host ranks; on GPU ranks zeroblocks keeps it in GPU memory (2Ψ/N;
 * parameter offload to the host is not implemented), which a warning says.
 *
 * Refused, with an error that says why: an unknown key (named by its full path, e.g.
 * `zero_optimization.stage3_prefetch_bucket`, with the nearest supported key by edit
 * distance); a value of the wrong type (a string where a number is expected, a
 * fraction where an integer is); `"auto"` (a Hugging Face Trainer placeholder, filled
 * in by the Trainer, not by DeepSpeed); inconsistent batch numbers; `fp16` and `bf16`
 * both enabled; `consecutive_hysteresis: true`; offload at stage 0 or 1 (no preset);
 * `offload_param` below stage 3; `offload_param` on NVMe without `offload_optimizer` on
 * NVMe (`infinity` keeps the parameter shard in the optimizer tier's files); NVMe without
 * `nvme_path`; an optimizer zeroblocks does not have (Lamb, OneBitAdam, Adagrad, …),
 * `amsgrad`, `bias_correction: false`, SGD's `dampening`, `max_grad_norm` among the
 * optimizer's params (DeepSpeed refuses it too: use `gradient_clipping`); an unknown
 * scheduler; OneCycle with `cycle_momentum` (the engine changes only the learning rate
 * between steps; write `"cycle_momentum": false`); a value given per parameter group (a
 * list); features that change what is trained and are not implemented (`amp`,
 * `elasticity`, `curriculum_learning`, `data_efficiency`, `progressive_layer_drop`,
 * `eigenvalue`, `hybrid_engine`, `autotuning` when enabled; `compression_training`,
 * `pipeline`; ZeRO++ quantization, hpZ, MiCS, partial offload `ratio` < 1).
 *
 * Accepted and not applied — one line each in `ds_config::warnings`, which the caller
 * prints: keys that only log or profile (`memory_breakdown`, `tensorboard`, `wandb`,
 * `csv_monitor`, `comet`, `comms_logger`, `flops_profiler`, …), the model's or the data
 * loader's own business (`activation_checkpointing`, `sparse_attention`,
 * `dataloader_drop_last`, `fp16.auto_cast`), knobs of DeepSpeed's implementation that
 * have no counterpart because zeroblocks does it one way (`contiguous_gradients`,
 * `reduce_scatter`, `allgather_partitions`, `allgather_bucket_size`, `pin_memory`,
 * `aio.single_submit`, `aio.overlap_events`, `prescale_gradients`,
 * `gradient_predivide_factor`, `communication_data_type` — zeroblocks sends gradients in
 * the parameter type and sums them in fp32 —, …), disabled feature blocks, and a
 * disabled `fp16` / `bf16` block's other keys.
 *
 * Batch numbers, as DeepSpeed (`deepspeed/runtime/config.py`,
 * `_set_batch_related_parameters`, `_batch_assertion`), with N the world size:
 * all three given: checked; two: the third derived with floor division
 * (`gradient_accumulation_steps = train_batch_size // micro // N`,
 * `micro = train_batch_size // N // gradient_accumulation_steps`, or
 * `train_batch_size = micro * gradient_accumulation_steps * N`); only
 * `train_batch_size`: gradient_accumulation_steps 1, micro = train_batch_size // N; only
 * micro: gradient_accumulation_steps 1, train_batch_size = micro * N; neither: an
 * error. Then all three must be > 0 and `train_batch_size == micro *
 * gradient_accumulation_steps * N`, else an error naming the three numbers and N.
 *
 * DeepSpeed facts relied on (microsoft/DeepSpeed at 38327e07f6cd, 2025-02-21:
 * `deepspeed/runtime/config.py`, `engine.py`, `fp16/loss_scaler.py`,
 * `fp16/fused_optimizer.py`, `zero/config.py`, `zero/offload_config.py`,
 * `swap_tensor/constants.py`, `ops/adam/fused_adam.py`): the optimizer
 * name is case-insensitive for DeepSpeed's own optimizers and a `torch.optim` class name
 * otherwise (`SGD`); `"Adam"` is AdamW (decoupled weight decay) unless
 * `"adam_w_mode": false` (`ADAM_W_MODE_DEFAULT = True`; the docs' table calls it "L2
 * regularization (also known as AdamW)"), and with `"torch_adam": true` the optimizer
 * is torch's Adam / AdamW, whose AdamW defaults weight_decay to 0.01; the loss scaler
 * of ZeRO stages 1–3 with `"fp16": {"enabled": true}` and none of the dynamic knobs is
 * `DynamicLossScaler()`'s defaults (initial scale 2^32, hysteresis 1), with any knob
 * given 2^`initial_scale_power` (16), window 1000, hysteresis 2, min 1; stage 0's fused
 * fp16 optimizer (`FP16_Optimizer`) starts at 2^`initial_scale_power` and has no
 * hysteresis (mapped to hysteresis 1; it also doubles one step later); a static
 * `loss_scale` skips overflowing steps like the dynamic one (zeroblocks: `scale::fixed`,
 * or `scale::dynamic` pinned — initial = min = loss_scale, never grows);
 * `overlap_comm` defaults to true at stage 3 only. DeepSpeed stops the run when an
 * overflow happens at `min_loss_scale`; zeroblocks keeps skipping such steps.
 * DeepSpeed reads a config file with hjson (trailing commas, missing commas at line
 * ends, `#` comments); this reader takes JSON with C and C++ comments, and refuses
 * duplicate keys as DeepSpeed does.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../core/numeric.hpp"
#include "../optim/adamw.hpp"
#include "../optim/lion.hpp"
#include "../optim/schedule.hpp"
#include "../optim/sgd.hpp"
#include "../policy/config.hpp"
#include "../scale/scale.hpp"
#include "engine.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

ZB_NAMESPACE_BEGIN

/// @brief The training dtype of a DeepSpeed config: the engine's parameter type T.
enum class ds_dtype { fp32, fp16, bf16 };

inline const char* ds_dtype_name(ds_dtype d) {
  switch (d) {
    case ds_dtype::fp32: return "fp32";
    case ds_dtype::fp16: return "fp16";
    case ds_dtype::bf16: return "bf16";
  }
  return "?";
}

/// @brief The zeroblocks preset a DeepSpeed config asks for (see the file comment).
enum class ds_preset { stage0, stage1, stage2, stage3, stage2_nvme, stage3_nvme, infinity, stage2_offload, stage3_offload };

inline const char* ds_preset_name(ds_preset p) {
  switch (p) {
    case ds_preset::stage0: return "stage0";
    case ds_preset::stage1: return "stage1";
    case ds_preset::stage2: return "stage2";
    case ds_preset::stage3: return "stage3";
    case ds_preset::stage2_nvme: return "stage2_nvme";
    case ds_preset::stage3_nvme: return "stage3_nvme";
    case ds_preset::infinity: return "infinity";
    case ds_preset::stage2_offload: return "stage2_offload";
    case ds_preset::stage3_offload: return "stage3_offload";
  }
  return "?";
}

/// @brief The preset for ranks that train on the host: ZeRO-Offload's `stage2_offload` /
/// `stage3_offload` become `stage2` / `stage3` (their fp32 state is in host memory
/// already); every other preset is itself.
inline ds_preset host_preset(ds_preset p) {
  if (p == ds_preset::stage2_offload) return ds_preset::stage2;
  if (p == ds_preset::stage3_offload) return ds_preset::stage3;
  return p;
}

/// @brief Whether the preset keeps the fp32 master and optimizer state on NVMe.
inline bool ds_preset_nvme(ds_preset p) {
  return p == ds_preset::stage2_nvme || p == ds_preset::stage3_nvme || p == ds_preset::infinity;
}

/// @brief `offload_optimizer.device` / `offload_param.device`.
enum class ds_offload_device { none, cpu, nvme };

/// @brief The optimizer of a DeepSpeed config; `none`: no `"optimizer"` block (the
/// trainer brings its own, and `apply` leaves `cfg.optim` alone).
enum class ds_optimizer_type { none, adam, adamw, lion, sgd };

/// @brief An `"offload_optimizer"` / `"offload_param"` block (DeepSpeed's names).
struct ds_offload {
  ds_offload_device device = ds_offload_device::none;
  std::string nvme_path;            ///< required for nvme
  std::optional<int> buffer_count;  ///< offload_optimizer only: `cfg.master.buffer_count`
};

/// @brief `"zero_optimization"`: the stage and the knobs zeroblocks maps (absent: unset).
struct ds_zero {
  int stage = 0;
  std::optional<std::size_t> reduce_bucket_size;
  std::optional<bool> overlap_comm;
  std::optional<std::size_t> stage3_prefetch_bucket_size;
  std::optional<std::size_t> stage3_param_persistence_threshold;
  std::optional<std::size_t> stage3_max_live_parameters;
  std::optional<std::size_t> stage3_max_reuse_distance;
  std::optional<std::size_t> sub_group_size;
  ds_offload offload_optimizer;
  ds_offload offload_param;
};

/// @brief `"aio"`: the NVMe tier's I/O knobs (absent: unset).
struct ds_aio {
  std::optional<std::size_t> block_size;
  std::optional<int> queue_depth;
  std::optional<int> thread_count;  ///< also read as `intra_op_parallelism`
};

/// @brief fp16 loss scaling, resolved as DeepSpeed resolves it (used when dtype is fp16).
struct ds_loss_scale {
  float loss_scale = 0.0f;         ///< 0: dynamic; otherwise the static scale
  float initial_scale = 65536.0f;  ///< 2^initial_scale_power (2^32 when no dynamic knob is given, stage >= 1)
  long loss_scale_window = 1000;
  int hysteresis = 2;
  float min_loss_scale = 1.0f;
  bool dynamic() const { return loss_scale == 0.0f; }
};

/// @brief `"optimizer"`: type and params with DeepSpeed's defaults resolved.
struct ds_optimizer {
  ds_optimizer_type type = ds_optimizer_type::none;
  std::string type_name;      ///< as written in the config
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;  ///< Adam, AdamW, Lion (`betas`)
  double eps = 1e-8;                  ///< Adam, AdamW
  double weight_decay = 0.0;
  bool decoupled = true;  ///< Adam / AdamW: decoupled weight decay (AdamW) unless adam_w_mode false
  double momentum = 0.0;  ///< SGD
  bool nesterov = false;  ///< SGD
};

/// @brief A DeepSpeed configuration, read and resolved (`parse_ds_config`,
/// `load_ds_config`). DeepSpeed's names; see the file comment for where each goes.
struct ds_config {
  std::string source = "ds_config";  ///< the file (or "ds_config"), named in messages
  int world_size = 1;                ///< the data-parallel ranks the batch numbers were resolved for
  long train_batch_size = 0;
  long train_micro_batch_size_per_gpu = 0;
  long gradient_accumulation_steps = 0;
  float gradient_clipping = 0.0f;  ///< 0: off (DeepSpeed's default in code; its docs say 1.0)
  ds_dtype dtype = ds_dtype::fp32;
  ds_loss_scale fp16;                       ///< with dtype fp16
  std::optional<ds_dtype> grad_accum_dtype; ///< [data_types.grad_accum_dtype]; unset: zeroblocks' automatic
  ds_zero zero_optimization;
  ds_aio aio;
  ds_optimizer optimizer;
  std::optional<schedule::any> scheduler;
  std::optional<long> steps_per_print;
  bool wall_clock_breakdown = false;  ///< the engine's timers (`apply_runtime`)
  ds_preset preset = ds_preset::stage0;
  /// One line per key accepted but not applied, and why; the caller prints them.
  std::vector<std::string> warnings;

  /// The NVMe directories (`offload_optimizer.nvme_path`, then a different
  /// `offload_param.nvme_path`); empty without NVMe.
  std::vector<std::string> nvme_paths() const {
    std::vector<std::string> p;
    if (zero_optimization.offload_optimizer.device == ds_offload_device::nvme)
      p.push_back(zero_optimization.offload_optimizer.nvme_path);
    if (zero_optimization.offload_param.device == ds_offload_device::nvme &&
        std::find(p.begin(), p.end(), zero_optimization.offload_param.nvme_path) == p.end())
      p.push_back(zero_optimization.offload_param.nvme_path);
    return p;
  }
  /// One line saying what the configuration asks for (preset, dtype, batch, optimizer,
  /// schedule, loss scaling), for a trainer's log.
  std::string summary() const;
};

namespace detail::ds {

using json = nlohmann::json;

/// Where we are: the source named in messages, the warnings collected.
struct reader {
  std::string source;
  std::vector<std::string>* warnings;

  template <class... A>
  [[noreturn]] void fail(const std::string& path, A&&... a) const {
    // Where: the config's key, not this line (the message names source and path).
    throw error(detail::concat(source, ": ", path, path.empty() ? "" : ": ", std::forward<A>(a)...),
                "parse_ds_config (engine/ds_config.hpp)");
  }
  /// A warning line: `source: path = value: why`.
  template <class... A>
  void warn(const std::string& path, const json& v, A&&... why) const {
    const std::string shown = v.is_object() ? "{...}" : v.is_array() ? "[...]" : v.dump();
    warnings->push_back(detail::concat(source, ": ", path, " = ", shown, ": ", std::forward<A>(why)...));
  }
  /// A key accepted and not applied: `source: path = value: not applied: why`.
  template <class... A>
  void ignored(const std::string& path, const json& v, A&&... why) const {
    warn(path, v, "not applied: ", std::forward<A>(why)...);
  }
};

inline std::string join(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}

inline std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

/// Levenshtein distance (case-insensitive): how far a key is from a supported one.
inline std::size_t edit_distance(std::string_view a0, std::string_view b0) {
  const std::string a = lower(std::string(a0)), b = lower(std::string(b0));
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

/// The supported key nearest to `key` (the first of equals, in the list's order).
inline std::string nearest(std::string_view key, std::initializer_list<std::string_view> known) {
  std::string best;
  std::size_t d = std::numeric_limits<std::size_t>::max();
  for (auto k : known)
    if (const auto e = edit_distance(key, k); e < d) d = e, best = std::string(k);
  return best;
}

/// What a JSON value is, for messages: `a string ("5e8")`.
inline std::string describe(const json& v) {
  const char* kind = v.is_string() ? "a string" : v.is_boolean() ? "a boolean" : v.is_number() ? "a number"
                   : v.is_array()  ? "a list"   : v.is_object()  ? "an object" : "null";
  return detail::concat(kind, " (", v.dump(), ")");
}

/// `v` must be an object; every key must be one of `known` (the supported keys at this
/// level, mapped or accepted), else an error naming the key and the nearest one.
inline void check_keys(const reader& r, const json& v, const std::string& path,
                       std::initializer_list<std::string_view> known) {
  if (!v.is_object()) r.fail(path, "expected an object ({...}), got ", describe(v));
  for (auto it = v.begin(); it != v.end(); ++it) {
    const std::string& k = it.key();
    if (std::find(known.begin(), known.end(), std::string_view(k)) == known.end())
      r.fail(join(path, k), "unsupported key (nearest supported key: '", join(path, nearest(k, known)),
             "'); zeroblocks refuses keys it does not know rather than ignore them (engine/ds_config.hpp lists them)");
  }
}

inline const json* find(const json& obj, std::string_view key) {
  auto it = obj.find(std::string(key));
  return it == obj.end() ? nullptr : &*it;
}

/// "auto" is the Hugging Face Trainer's placeholder, not a DeepSpeed value.
inline void refuse_auto(const reader& r, const json& v, const std::string& path) {
  if (v.is_string() && v.get<std::string>() == "auto")
    r.fail(path, "\"auto\" is a placeholder the Hugging Face Trainer fills in before DeepSpeed sees the "
                 "config; write the value");
}

inline double number(const reader& r, const json& v, const std::string& path) {
  refuse_auto(r, v, path);
  if (!v.is_number()) r.fail(path, "expected a number, got ", describe(v));
  const double x = v.get<double>();
  if (!std::isfinite(x)) r.fail(path, "expected a finite number, got ", v.dump());
  return x;
}

/// An integer in [lo, hi]; `5e8` (an integral float, as DeepSpeed's examples write
/// sizes) is accepted, `1.5` is not.
inline long long integer(const reader& r, const json& v, const std::string& path, long long lo = 0,
                         long long hi = std::numeric_limits<long long>::max()) {
  refuse_auto(r, v, path);
  if (!v.is_number()) r.fail(path, "expected an integer, got ", describe(v));
  long long x = 0;
  if (v.is_number_unsigned()) {
    const auto u = v.get<unsigned long long>();
    if (u > static_cast<unsigned long long>(std::numeric_limits<long long>::max()))
      r.fail(path, "integer ", v.dump(), " is too large");
    x = static_cast<long long>(u);
  } else if (v.is_number_integer()) {
    x = v.get<long long>();
  } else {
    const double d = v.get<double>();
    if (!std::isfinite(d) || std::floor(d) != d) r.fail(path, "expected an integer, got ", v.dump());
    if (!(std::fabs(d) < 9.2e18)) r.fail(path, "integer ", v.dump(), " is too large");
    x = static_cast<long long>(d);
  }
  if (x < lo || x > hi) {
    if (hi == std::numeric_limits<long long>::max()) r.fail(path, "must be >= ", lo, ", got ", v.dump());
    r.fail(path, "must be in [", lo, ", ", hi, "], got ", v.dump());
  }
  return x;
}

inline bool boolean(const reader& r, const json& v, const std::string& path) {
  refuse_auto(r, v, path);
  if (!v.is_boolean()) r.fail(path, "expected true or false, got ", describe(v));
  return v.get<bool>();
}

inline std::string string(const reader& r, const json& v, const std::string& path) {
  if (!v.is_string()) r.fail(path, "expected a string, got ", describe(v));
  return v.get<std::string>();
}

/// A number a DeepSpeed scheduler also takes as one value per parameter group.
inline double per_group_number(const reader& r, const json& v, const std::string& path) {
  if (v.is_array())
    r.fail(path, "one value per parameter group is not supported: a zeroblocks engine has one learning rate "
                 "(parameter groups scale it with cfg.groups[g].lr_scale); give one number");
  return number(r, v, path);
}

/// A section that only logs, profiles or belongs to the trainer: one warning line.
inline void cosmetic(const reader& r, const json& v, const std::string& path, const char* why) {
  r.ignored(path, v, why);
}

/// A feature block with `"enabled"`: refused when enabled, a warning when not.
inline void feature(const reader& r, const json& v, const std::string& path, const char* what) {
  if (!v.is_object()) r.fail(path, "expected an object ({\"enabled\": ...}), got ", describe(v));
  bool on = false;
  if (auto* e = find(v, "enabled")) on = boolean(r, *e, join(path, "enabled"));
  if (on) r.fail(path, what, " is not implemented in zeroblocks; remove the block or set \"enabled\": false");
  r.ignored(path, v, "disabled");
}

inline std::size_t size_knob(const reader& r, const json& v, const std::string& path, long long lo) {
  return static_cast<std::size_t>(integer(r, v, path, lo));
}

/// `data_types.grad_accum_dtype` and `communication_data_type` spellings (DeepSpeed's DtypeEnum).
inline std::optional<ds_dtype> dtype_of(std::string s) {
  s = lower(s);
  if (s == "fp32" || s == "float32" || s == "float" || s == "torch.float32") return ds_dtype::fp32;
  if (s == "fp16" || s == "float16" || s == "half" || s == "torch.float16") return ds_dtype::fp16;
  if (s == "bf16" || s == "bfloat16" || s == "torch.bfloat16") return ds_dtype::bf16;
  return std::nullopt;
}

// ---- sections ------------------------------------------------------------------------

struct batch_numbers {
  std::optional<long long> train, micro, gas;
};

/// DeepSpeed's `_set_batch_related_parameters` and `_batch_assertion`.
inline void resolve_batch(const reader& r, const batch_numbers& b, int world, ds_config& d) {
  auto T = b.train, M = b.micro, G = b.gas;
  const long long n = world;
  std::string derived;
  if (T && M && G) {
  } else if (T && M) {
    G = (*M > 0 ? *T / *M : 0) / n;
    derived = detail::concat("gradient_accumulation_steps derived as ", *T, " // ", *M, " // ", n, " = ", *G);
  } else if (T && G) {
    M = *G > 0 ? *T / n / *G : 0;
    derived = detail::concat("train_micro_batch_size_per_gpu derived as ", *T, " // ", n, " // ", *G, " = ", *M);
  } else if (M && G) {
    T = *M * *G * n;
    derived = detail::concat("train_batch_size derived as ", *M, " * ", *G, " * ", n, " = ", *T);
  } else if (T) {
    G = 1;
    M = *T / n;
    derived = detail::concat("gradient_accumulation_steps 1 and train_micro_batch_size_per_gpu derived as ", *T,
                             " // ", n, " = ", *M);
  } else if (M) {
    G = 1;
    T = *M * n;
    derived = detail::concat("gradient_accumulation_steps 1 and train_batch_size derived as ", *M, " * ", n, " = ",
                             *T);
  } else {
    r.fail("train_batch_size", "either train_batch_size or train_micro_batch_size_per_gpu is needed",
           G ? " (gradient_accumulation_steps alone does not fix the batch)" : "", ", as DeepSpeed requires");
  }
  const std::string with = derived.empty() ? std::string() : " (" + derived + ", as DeepSpeed does)";
  if (!(*T > 0 && *M > 0 && *G > 0) || *T != *M * *G * n)
    r.fail("train_batch_size", "batch numbers do not fit: train_batch_size ", *T, " must equal ",
           "train_micro_batch_size_per_gpu ", *M, " * gradient_accumulation_steps ", *G, " * world size ", n,
           " (= ", *M * *G * n, "), each > 0", with);
  d.train_batch_size = static_cast<long>(*T);
  d.train_micro_batch_size_per_gpu = static_cast<long>(*M);
  d.gradient_accumulation_steps = static_cast<long>(*G);
}

inline void read_fp16(const reader& r, const json& v, const std::string& path, ds_config& d, bool& enabled,
                      bool& dynamic_knobs, std::optional<long long>& initial_power) {
  check_keys(r, v, path,
             {"enabled", "auto_cast", "loss_scale", "initial_scale_power", "loss_scale_window", "hysteresis",
              "consecutive_hysteresis", "min_loss_scale", "fp16_master_weights_and_grads"});
  enabled = false;
  if (auto* e = find(v, "enabled")) enabled = boolean(r, *e, join(path, "enabled"));
  if (!enabled) {
    if (v.size() > (find(v, "enabled") ? 1u : 0u))
      r.ignored(path, v, "fp16 is not enabled, so its other keys are not used (as in DeepSpeed)");
    return;
  }
  auto& s = d.fp16;
  if (auto* x = find(v, "loss_scale")) {
    const double ls = number(r, *x, join(path, "loss_scale"));
    if (ls < 0.0 || ls > std::numeric_limits<float>::max())
      r.fail(join(path, "loss_scale"), "must be 0 (dynamic) or a positive static scale, got ", x->dump());
    s.loss_scale = static_cast<float>(ls);
  }
  for (const char* k : {"initial_scale_power", "loss_scale_window", "hysteresis", "min_loss_scale",
                        "consecutive_hysteresis"})
    if (find(v, k)) dynamic_knobs = true;
  if (auto* x = find(v, "initial_scale_power")) initial_power = integer(r, *x, join(path, "initial_scale_power"), 0, 127);
  if (auto* x = find(v, "loss_scale_window"))
    s.loss_scale_window = static_cast<long>(integer(r, *x, join(path, "loss_scale_window"), 1));
  if (auto* x = find(v, "hysteresis"))
    s.hysteresis = static_cast<int>(integer(r, *x, join(path, "hysteresis"), 1, std::numeric_limits<int>::max()));
  if (auto* x = find(v, "consecutive_hysteresis"); x && boolean(r, *x, join(path, "consecutive_hysteresis")))
    r.fail(join(path, "consecutive_hysteresis"),
           "true is not implemented: scale::dynamic restores the hysteresis only when the scale grows "
           "(DeepSpeed's default, consecutive_hysteresis false)");
  if (auto* x = find(v, "min_loss_scale")) {
    const double m = number(r, *x, join(path, "min_loss_scale"));
    if (m < 0.0) r.fail(join(path, "min_loss_scale"), "must be >= 0, got ", x->dump());
    if (m == 0.0) {
      s.min_loss_scale = std::numeric_limits<float>::min();
      r.warn(join(path, "min_loss_scale"), *x,
             "0 (no floor) becomes the smallest normal float, 1.2e-38: scale::dynamic needs a positive floor");
    } else {
      s.min_loss_scale = static_cast<float>(m);
    }
  }
  if (auto* x = find(v, "auto_cast"))
    r.ignored(join(path, "auto_cast"), *x, "casting the model's inputs is the trainer's business");
  if (auto* x = find(v, "fp16_master_weights_and_grads")) {
    if (boolean(r, *x, join(path, "fp16_master_weights_and_grads")))
      r.fail(join(path, "fp16_master_weights_and_grads"), "true is not implemented: zeroblocks keeps an fp32 master");
    r.ignored(join(path, "fp16_master_weights_and_grads"), *x, "zeroblocks always keeps an fp32 master");
  }
}

inline bool read_bf16(const reader& r, const json& v, const std::string& path) {
  check_keys(r, v, path, {"enabled", "immediate_grad_update"});
  bool enabled = false;
  if (auto* e = find(v, "enabled")) enabled = boolean(r, *e, join(path, "enabled"));
  if (auto* x = find(v, "immediate_grad_update"))
    r.ignored(join(path, "immediate_grad_update"), *x,
           enabled ? "a knob of DeepSpeed's BF16_Optimizer; zeroblocks' accumulation is data_types.grad_accum_dtype"
                   : "bf16 is not enabled, so its other keys are not used (as in DeepSpeed)");
  return enabled;
}

inline void read_offload(const reader& r, const json& v, const std::string& path, ds_offload& o, bool optimizer) {
  if (optimizer)
    check_keys(r, v, path,
               {"device", "nvme_path", "buffer_count", "pin_memory", "pipeline_read", "pipeline_write", "fast_init",
                "ratio", "pipeline"});
  else
    check_keys(r, v, path, {"device", "nvme_path", "buffer_count", "buffer_size", "max_in_cpu", "pin_memory"});
  if (auto* x = find(v, "device")) {
    const std::string dev = string(r, *x, join(path, "device"));
    if (dev == "none") o.device = ds_offload_device::none;
    else if (dev == "cpu") o.device = ds_offload_device::cpu;
    else if (dev == "nvme") o.device = ds_offload_device::nvme;
    else r.fail(join(path, "device"), "\"", dev, "\" is not one of \"none\", \"cpu\", \"nvme\"");
  }
  if (auto* x = find(v, "nvme_path")) {
    if (!x->is_null()) o.nvme_path = string(r, *x, join(path, "nvme_path"));
    if (o.device != ds_offload_device::nvme) r.ignored(join(path, "nvme_path"), *x, "the device is not nvme");
  }
  if (o.device == ds_offload_device::nvme && o.nvme_path.empty())
    r.fail(join(path, "nvme_path"), "device \"nvme\" needs an nvme_path (the directory of the tier files)");
  if (auto* x = find(v, "buffer_count")) {
    if (optimizer) {
      o.buffer_count = static_cast<int>(integer(r, *x, join(path, "buffer_count"), 0, 1 << 20));
      if (*o.buffer_count < 2)
        r.fail(join(path, "buffer_count"), "zeroblocks' NVMe pipeline needs at least 2 staging buffers (3 "
                                           "overlap read, update and write), got ", *o.buffer_count);
      if (o.device != ds_offload_device::nvme) r.ignored(join(path, "buffer_count"), *x, "the device is not nvme");
    } else {
      r.ignored(join(path, "buffer_count"), *x,
             "the parameter shard is read through the optimizer tier's staging buffers (cfg.master.buffer_count)");
    }
  }
  if (auto* x = find(v, "ratio")) {
    const double ratio = number(r, *x, join(path, "ratio"));
    if (ratio < 1.0)
      r.fail(join(path, "ratio"), "partial offload (ZeRO-Offload++ Twin-Flow, ratio < 1) is not implemented");
    r.ignored(join(path, "ratio"), *x, "1 is the whole optimizer state, what zeroblocks offloads");
  }
  for (const char* k : {"pin_memory", "pipeline_read", "pipeline_write", "pipeline", "fast_init", "buffer_size",
                        "max_in_cpu"})
    if (auto* x = find(v, k))
      r.ignored(join(path, k), *x,
             std::string_view(k) == "pin_memory" ? "host_space memory is pageable; master::offloaded (GPU ranks) "
                                                   "always pins its host buffers"
             : std::string_view(k).starts_with("pipeline") ? "zeroblocks' NVMe step always overlaps read, update and write"
             : std::string_view(k) == "fast_init"          ? "no counterpart: zeroblocks writes the initial tier once"
                                                           : "no counterpart: the parameter shard lives in the optimizer "
                                                             "tier's files (infinity)");
}

inline void read_zero(const reader& r, const json& v, const std::string& path, ds_config& d) {
  auto& z = d.zero_optimization;
  if (v.is_boolean()) {  // DeepSpeed's deprecated form: true = stage 1
    z.stage = v.get<bool>() ? 1 : 0;
    r.warn(path, v, "deprecated boolean form, read as stage ", z.stage, " (as DeepSpeed does)");
    return;
  }
  check_keys(r, v, path,
             {"stage", "reduce_bucket_size", "overlap_comm", "contiguous_gradients", "reduce_scatter",
              "allgather_partitions", "allgather_bucket_size", "use_multi_rank_bucket_allreduce",
              "load_from_fp32_weights", "elastic_checkpoint", "offload_param", "offload_optimizer", "sub_group_size",
              "cpu_offload", "cpu_offload_param", "cpu_offload_use_pin_memory", "stage3_prefetch_bucket_size",
              "prefetch_bucket_size", "stage3_param_persistence_threshold", "param_persistence_threshold",
              "stage3_model_persistence_threshold", "model_persistence_threshold", "stage3_max_live_parameters",
              "max_live_parameters", "stage3_max_reuse_distance", "max_reuse_distance",
              "stage3_gather_16bit_weights_on_model_save", "gather_16bit_weights_on_model_save",
              "stage3_gather_fp16_weights_on_model_save", "stage3_module_granularity_threshold",
              "module_granularity_threshold", "stage3_use_all_reduce_for_fetch_params",
              "use_all_reduce_for_fetch_params", "ignore_unused_parameters", "legacy_stage1", "round_robin_gradients",
              "zero_hpz_partition_size", "zero_quantized_weights", "zero_quantized_nontrainable_weights",
              "zero_quantized_gradients", "zeropp_loco_param", "mics_shard_size", "mics_hierarchical_params_gather",
              "memory_efficient_linear", "pipeline_loading_checkpoint", "override_module_apply",
              "log_trace_cache_warnings", "grad_hooks"});
  if (auto* x = find(v, "stage")) z.stage = static_cast<int>(integer(r, *x, join(path, "stage"), 0, 3));
  if (auto* x = find(v, "reduce_bucket_size")) z.reduce_bucket_size = size_knob(r, *x, join(path, "reduce_bucket_size"), 1);
  if (auto* x = find(v, "overlap_comm")) z.overlap_comm = boolean(r, *x, join(path, "overlap_comm"));
  // stage-3 knobs: DeepSpeed accepts the alias (stage3_...) and the field name.
  auto knob = [&](const char* alias, const char* field, std::optional<std::size_t>& out) {
    const json* a = find(v, alias);
    const json* f = find(v, field);
    if (a && f) r.fail(join(path, field), "given twice, also as '", join(path, alias), "'");
    if (const json* x = a ? a : f) out = size_knob(r, *x, join(path, a ? alias : field), 0);
  };
  knob("stage3_prefetch_bucket_size", "prefetch_bucket_size", z.stage3_prefetch_bucket_size);
  knob("stage3_param_persistence_threshold", "param_persistence_threshold", z.stage3_param_persistence_threshold);
  knob("stage3_max_live_parameters", "max_live_parameters", z.stage3_max_live_parameters);
  knob("stage3_max_reuse_distance", "max_reuse_distance", z.stage3_max_reuse_distance);
  if (auto* x = find(v, "sub_group_size")) z.sub_group_size = size_knob(r, *x, join(path, "sub_group_size"), 1);
  if (auto* x = find(v, "offload_optimizer"); x && !x->is_null())
    read_offload(r, *x, join(path, "offload_optimizer"), z.offload_optimizer, true);
  if (auto* x = find(v, "offload_param"); x && !x->is_null())
    read_offload(r, *x, join(path, "offload_param"), z.offload_param, false);
  // Deprecated booleans, mapped as DeepSpeed maps them.
  auto deprecated = [&](const char* key, const char* newer, ds_offload& o) {
    if (auto* x = find(v, key)) {
      const bool on = boolean(r, *x, join(path, key));
      if (on && o.device != ds_offload_device::none)
        r.fail(join(path, key), "given together with ", join(path, newer), " (DeepSpeed refuses both too)");
      if (on) o.device = ds_offload_device::cpu;
      r.warn(join(path, key), *x, "deprecated; read as ", newer, ".device ", on ? "\"cpu\" (as DeepSpeed does)" : "unchanged");
    }
  };
  deprecated("cpu_offload", "offload_optimizer", z.offload_optimizer);
  deprecated("cpu_offload_param", "offload_param", z.offload_param);
  // Refused when they change what is computed or communicated in a way zeroblocks does not.
  auto refuse_true = [&](const char* key, const char* what) {
    if (auto* x = find(v, key)) {
      if (x->is_boolean() ? x->get<bool>() : !x->is_null())
        r.fail(join(path, key), what, " is not implemented in zeroblocks");
      r.ignored(join(path, key), *x, "off, as zeroblocks");
    }
  };
  refuse_true("zero_quantized_weights", "ZeRO++ quantized weights");
  refuse_true("zero_quantized_nontrainable_weights", "ZeRO++ quantized weights");
  refuse_true("zero_quantized_gradients", "ZeRO++ quantized gradients");
  refuse_true("zeropp_loco_param", "LoCo-ZeRO++");
  if (auto* x = find(v, "zero_hpz_partition_size")) {
    if (integer(r, *x, join(path, "zero_hpz_partition_size")) > 1)
      r.fail(join(path, "zero_hpz_partition_size"), "hierarchical partitioning (ZeRO++ hpZ) is not implemented");
    r.ignored(join(path, "zero_hpz_partition_size"), *x, "no hpZ, as zeroblocks");
  }
  if (auto* x = find(v, "mics_shard_size")) {
    if (integer(r, *x, join(path, "mics_shard_size"), -1) > 0)
      r.fail(join(path, "mics_shard_size"), "MiCS (sharding over a subgroup of ranks) is not implemented");
    r.ignored(join(path, "mics_shard_size"), *x, "no MiCS, as zeroblocks");
  }
  struct why_t {
    const char* key;
    const char* why;
  };
  static constexpr why_t accepted[] = {
      {"contiguous_gradients", "zeroblocks' gradient buckets are contiguous buffers always"},
      {"reduce_scatter", "stages 2/3 reduce-scatter, stage 0 all-reduces (bucket:: policies), whatever this says"},
      {"allgather_partitions", "zeroblocks all-gathers the updated parameters"},
      {"allgather_bucket_size", "the all-gather after the step moves whole shards (no bucket knob)"},
      {"use_multi_rank_bucket_allreduce", "no counterpart"},
      {"load_from_fp32_weights", "zeroblocks::checkpoint always restores the fp32 master"},
      {"elastic_checkpoint", "zeroblocks::checkpoint reshards on load whatever this says"},
      {"cpu_offload_use_pin_memory", "deprecated; pinning is master::offloaded's own choice"},
      {"stage3_model_persistence_threshold", "no counterpart: persistence is per unit (stage3_param_persistence_threshold)"},
      {"model_persistence_threshold", "no counterpart: persistence is per unit (stage3_param_persistence_threshold)"},
      {"stage3_gather_16bit_weights_on_model_save", "zeroblocks::checkpoint gathers what it saves"},
      {"gather_16bit_weights_on_model_save", "zeroblocks::checkpoint gathers what it saves"},
      {"stage3_gather_fp16_weights_on_model_save", "zeroblocks::checkpoint gathers what it saves"},
      {"stage3_module_granularity_threshold", "units are the trainer's (param_registry::add's unit)"},
      {"module_granularity_threshold", "units are the trainer's (param_registry::add's unit)"},
      {"stage3_use_all_reduce_for_fetch_params", "zeroblocks gathers with all-gather"},
      {"use_all_reduce_for_fetch_params", "zeroblocks gathers with all-gather"},
      {"ignore_unused_parameters", "a gradient never handed over counts as zero"},
      {"legacy_stage1", "no counterpart"},
      {"round_robin_gradients", "no counterpart"},
      {"mics_hierarchical_params_gather", "no MiCS"},
      {"memory_efficient_linear", "the model's business"},
      {"pipeline_loading_checkpoint", "no pipeline parallelism"},
      {"override_module_apply", "the model's business"},
      {"log_trace_cache_warnings", "zeroblocks counts trace invalidations in coordination_stats()"},
      {"grad_hooks", "the trainer hands gradients over with grad_ready"},
  };
  for (const auto& a : accepted)
    if (auto* x = find(v, a.key)) r.ignored(join(path, a.key), *x, a.why);
}

inline void read_aio(const reader& r, const json& v, const std::string& path, ds_aio& a) {
  check_keys(r, v, path,
             {"block_size", "queue_depth", "thread_count", "intra_op_parallelism", "single_submit", "overlap_events",
              "use_gds"});
  if (auto* x = find(v, "block_size")) {
    const auto b = integer(r, *x, join(path, "block_size"), 1);
    if (b % 4096 != 0)
      r.fail(join(path, "block_size"), "must be a multiple of 4096 bytes (O_DIRECT requests), got ", b);
    a.block_size = static_cast<std::size_t>(b);
  }
  if (auto* x = find(v, "queue_depth"))
    a.queue_depth = static_cast<int>(integer(r, *x, join(path, "queue_depth"), 1, 1 << 16));
  const json* t = find(v, "thread_count");
  const json* i = find(v, "intra_op_parallelism");
  if (t && i) r.fail(join(path, "intra_op_parallelism"), "given twice, also as '", join(path, "thread_count"), "'");
  if (const json* x = t ? t : i)
    a.thread_count = static_cast<int>(integer(r, *x, join(path, t ? "thread_count" : "intra_op_parallelism"), 1, 1024));
  if (auto* x = find(v, "use_gds")) {
    if (boolean(r, *x, join(path, "use_gds")))
      r.fail(join(path, "use_gds"), "GPUDirect Storage is not implemented in zeroblocks");
    r.ignored(join(path, "use_gds"), *x, "off, as zeroblocks");
  }
  if (auto* x = find(v, "single_submit"))
    r.ignored(join(path, "single_submit"), *x, "swap::uring submits each transfer's requests as one batch");
  if (auto* x = find(v, "overlap_events"))
    r.ignored(join(path, "overlap_events"), *x, "zeroblocks keeps queue_depth requests in flight always");
}

inline void read_optimizer(const reader& r, const json& v, const std::string& path, ds_optimizer& o) {
  check_keys(r, v, path, {"type", "params", "legacy_fusion"});
  const json* t = find(v, "type");
  if (!t || t->is_null()) r.fail(join(path, "type"), "missing: an optimizer block needs a type");
  o.type_name = string(r, *t, join(path, "type"));
  const std::string low = lower(o.type_name);
  // DeepSpeed lower-cases its own optimizers' names; other names are torch.optim classes.
  if (low == "adam") o.type = ds_optimizer_type::adam;
  else if (low == "adamw") o.type = ds_optimizer_type::adamw;
  else if (low == "lion") o.type = ds_optimizer_type::lion;
  else if (o.type_name == "SGD") o.type = ds_optimizer_type::sgd;
  else {
    for (std::string_view ds : {"adagrad", "lamb", "onebitadam", "zerooneadam", "onebitlamb", "muadam", "muadamw",
                                "musgd"})
      if (low == ds)
        r.fail(join(path, "type"), "\"", o.type_name, "\": zeroblocks has no such optimizer (it has Adam, AdamW, "
                                   "Lion, SGD: optim::adamw, optim::lion, optim::sgd)");
    r.fail(join(path, "type"), "\"", o.type_name, "\" is not an optimizer zeroblocks has (Adam, AdamW, Lion, SGD; "
                               "nearest: \"", nearest(o.type_name, {"Adam", "AdamW", "Lion", "SGD"}), "\")");
  }
  if (auto* x = find(v, "legacy_fusion")) r.ignored(join(path, "legacy_fusion"), *x, "no counterpart");
  const json empty = json::object();
  const json* pp = find(v, "params");
  const json& p = pp && !pp->is_null() ? *pp : empty;
  const std::string pa = join(path, "params");
  if (p.is_object() && find(p, "max_grad_norm"))
    r.fail(join(pa, "max_grad_norm"), "is not an optimizer parameter (DeepSpeed refuses it too): use the top-level "
                                      "\"gradient_clipping\"");
  auto betas = [&](const char* key) {
    if (auto* x = find(p, key)) {
      const std::string bp = join(pa, key);
      if (!x->is_array() || x->size() != 2) r.fail(bp, "expected a list of two numbers [beta1, beta2], got ", describe(*x));
      o.beta1 = number(r, (*x)[0], bp + "[0]");
      o.beta2 = number(r, (*x)[1], bp + "[1]");
    }
  };
  switch (o.type) {
    case ds_optimizer_type::adam:
    case ds_optimizer_type::adamw: {
      check_keys(r, p, pa,
                 {"lr", "betas", "eps", "weight_decay", "bias_correction", "amsgrad", "adam_w_mode", "torch_adam",
                  "set_grad_none", "fused", "foreach", "max_grad_norm"});
      bool adam_w_mode = true, torch_adam = false;
      if (auto* x = find(p, "adam_w_mode")) adam_w_mode = boolean(r, *x, join(pa, "adam_w_mode"));
      if (auto* x = find(p, "torch_adam")) torch_adam = boolean(r, *x, join(pa, "torch_adam"));
      // DeepSpeed: AdamW for type AdamW, or for Adam unless adam_w_mode is false.
      o.decoupled = o.type == ds_optimizer_type::adamw || adam_w_mode;
      if (o.type == ds_optimizer_type::adamw && !adam_w_mode)
        r.warn(join(pa, "adam_w_mode"), *find(p, "adam_w_mode"), "type AdamW is AdamW whatever adam_w_mode says (as in DeepSpeed)");
      // torch.optim.AdamW defaults weight_decay to 0.01; FusedAdam, CPUAdam and torch Adam to 0.
      o.weight_decay = torch_adam && o.decoupled ? 0.01 : 0.0;
      if (auto* x = find(p, "lr")) o.lr = number(r, *x, join(pa, "lr"));
      betas("betas");
      if (auto* x = find(p, "eps")) o.eps = number(r, *x, join(pa, "eps"));
      if (auto* x = find(p, "weight_decay")) o.weight_decay = number(r, *x, join(pa, "weight_decay"));
      if (auto* x = find(p, "bias_correction"); x && !boolean(r, *x, join(pa, "bias_correction")))
        r.fail(join(pa, "bias_correction"), "false is not implemented: optim::adamw always corrects the moments' bias");
      if (auto* x = find(p, "amsgrad"); x && boolean(r, *x, join(pa, "amsgrad")))
        r.fail(join(pa, "amsgrad"), "AMSGrad is not implemented (DeepSpeed's FusedAdam refuses it too)");
      for (const char* k : {"set_grad_none", "fused", "foreach"})
        if (auto* x = find(p, k)) r.ignored(join(pa, k), *x, "an implementation choice of PyTorch's; no counterpart");
      if (torch_adam)
        r.warn(join(pa, "torch_adam"), *find(p, "torch_adam"), "optim::adamw runs the step; the defaults of torch's ",
               o.decoupled ? "AdamW (weight_decay 0.01)" : "Adam", " were used, as DeepSpeed would");
      break;
    }
    case ds_optimizer_type::lion:
      check_keys(r, p, pa, {"lr", "betas", "weight_decay", "set_grad_none", "max_grad_norm"});
      // (DeepSpeed's FusedLion defaults: lr 1e-3, betas (0.9, 0.999), weight_decay 0: ds_optimizer's.)
      if (auto* x = find(p, "lr")) o.lr = number(r, *x, join(pa, "lr"));
      betas("betas");
      if (auto* x = find(p, "weight_decay")) o.weight_decay = number(r, *x, join(pa, "weight_decay"));
      if (auto* x = find(p, "set_grad_none")) r.ignored(join(pa, "set_grad_none"), *x, "no counterpart");
      break;
    case ds_optimizer_type::sgd:
      check_keys(r, p, pa,
                 {"lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach", "differentiable",
                  "fused", "max_grad_norm"});
      if (auto* x = find(p, "lr")) o.lr = number(r, *x, join(pa, "lr"));
      if (auto* x = find(p, "momentum")) o.momentum = number(r, *x, join(pa, "momentum"));
      if (auto* x = find(p, "weight_decay")) o.weight_decay = number(r, *x, join(pa, "weight_decay"));
      if (auto* x = find(p, "nesterov")) o.nesterov = boolean(r, *x, join(pa, "nesterov"));
      if (auto* x = find(p, "dampening"); x && number(r, *x, join(pa, "dampening")) != 0.0)
        r.fail(join(pa, "dampening"), "non-zero dampening is not implemented: optim::sgd is torch's SGD with dampening 0");
      if (auto* x = find(p, "maximize"); x && boolean(r, *x, join(pa, "maximize")))
        r.fail(join(pa, "maximize"), "true is not implemented (negate the loss instead)");
      for (const char* k : {"foreach", "differentiable", "fused"})
        if (auto* x = find(p, k)) r.ignored(join(pa, k), *x, "an implementation choice of PyTorch's; no counterpart");
      break;
    case ds_optimizer_type::none:
      break;
  }
  if (!(o.lr >= 0.0)) r.fail(join(pa, "lr"), "must be >= 0, got ", o.lr);
  if (!(o.weight_decay >= 0.0)) r.fail(join(pa, "weight_decay"), "must be >= 0, got ", o.weight_decay);
  if (!(o.beta1 >= 0.0 && o.beta1 < 1.0 && o.beta2 >= 0.0 && o.beta2 < 1.0))
    r.fail(join(pa, "betas"), "each must be in [0, 1), got [", o.beta1, ", ", o.beta2, "]");
  if (!(o.eps > 0.0)) r.fail(join(pa, "eps"), "must be > 0, got ", o.eps);
  if (!(o.momentum >= 0.0 && o.momentum < 1.0)) r.fail(join(pa, "momentum"), "must be in [0, 1), got ", o.momentum);
  if (o.nesterov && o.momentum <= 0.0) r.fail(join(pa, "nesterov"), "Nesterov needs momentum > 0 (as torch's SGD)");
}

inline schedule::any read_scheduler(const reader& r, const json& v, const std::string& path, const ds_optimizer& opt) {
  check_keys(r, v, path, {"type", "params"});
  const json* t = find(v, "type");
  if (!t || t->is_null()) r.fail(join(path, "type"), "missing: a scheduler block needs a type");
  const std::string type = string(r, *t, join(path, "type"));
  const json empty = json::object();
  const json* pp = find(v, "params");
  const json& p = pp && !pp->is_null() ? *pp : empty;
  const std::string pa = join(path, "params");
  auto num = [&](const char* k, double& out) {
    if (auto* x = find(p, k)) out = per_group_number(r, *x, join(pa, k));
  };
  auto lng = [&](const char* k, long& out) {
    if (auto* x = find(p, k)) out = static_cast<long>(integer(r, *x, join(pa, k), 0));
  };
  auto str = [&](const char* k, std::string& out) {
    if (auto* x = find(p, k)) out = string(r, *x, join(pa, k));
  };
  auto last_batch_iteration = [&] {
    if (auto* x = find(p, "last_batch_iteration"); x && integer(r, *x, join(pa, "last_batch_iteration"),
                                                                std::numeric_limits<long long>::min()) != -1)
      r.fail(join(pa, "last_batch_iteration"), "only -1 (a fresh start) is supported: lr(step) takes the step, "
                                               "so a resumed trainer passes its own");
  };
  schedule::any out;
  if (type == "WarmupLR" || type == "WarmupDecayLR") {
    const bool decay = type == "WarmupDecayLR";
    if (decay)
      check_keys(r, p, pa, {"total_num_steps", "warmup_min_lr", "warmup_max_lr", "warmup_num_steps", "warmup_type",
                            "last_batch_iteration"});
    else
      check_keys(r, p, pa, {"warmup_min_lr", "warmup_max_lr", "warmup_num_steps", "warmup_type", "last_batch_iteration"});
    schedule::warmup_decay_lr s;
    if (decay) {
      if (!find(p, "total_num_steps")) r.fail(join(pa, "total_num_steps"), "missing (WarmupDecayLR has no default)");
      lng("total_num_steps", s.total_num_steps);
    }
    num("warmup_min_lr", s.warmup_min_lr);
    num("warmup_max_lr", s.warmup_max_lr);
    lng("warmup_num_steps", s.warmup_num_steps);
    str("warmup_type", s.warmup_type);
    if (decay) out = s;
    else
      out = schedule::warmup_lr{.warmup_min_lr = s.warmup_min_lr, .warmup_max_lr = s.warmup_max_lr,
                                .warmup_num_steps = s.warmup_num_steps, .warmup_type = s.warmup_type};
  } else if (type == "WarmupCosineLR") {
    check_keys(r, p, pa, {"total_num_steps", "warmup_min_ratio", "warmup_num_steps", "cos_min_ratio", "warmup_type",
                          "last_batch_iteration"});
    schedule::warmup_cosine_lr s;
    if (!find(p, "total_num_steps")) r.fail(join(pa, "total_num_steps"), "missing (WarmupCosineLR has no default)");
    lng("total_num_steps", s.total_num_steps);
    num("warmup_min_ratio", s.warmup_min_ratio);
    lng("warmup_num_steps", s.warmup_num_steps);
    num("cos_min_ratio", s.cos_min_ratio);
    str("warmup_type", s.warmup_type);
    if (opt.type == ds_optimizer_type::none)
      r.fail(path, "WarmupCosineLR scales the optimizer's lr: give an \"optimizer\" block with params.lr");
    s.base_lr = opt.lr;
    out = s;
  } else if (type == "OneCycle") {
    check_keys(r, p, pa, {"cycle_min_lr", "cycle_max_lr", "decay_lr_rate", "cycle_first_step_size",
                          "cycle_second_step_size", "cycle_first_stair_count", "cycle_second_stair_count",
                          "decay_step_size", "cycle_momentum", "cycle_min_mom", "cycle_max_mom", "decay_mom_rate",
                          "last_batch_iteration"});
    schedule::one_cycle s;
    for (const char* k : {"cycle_min_lr", "cycle_max_lr"})
      if (!find(p, k)) r.fail(join(pa, k), "missing (OneCycle has no default)");
    num("cycle_min_lr", s.cycle_min_lr);
    num("cycle_max_lr", s.cycle_max_lr);
    num("decay_lr_rate", s.decay_lr_rate);
    lng("cycle_first_step_size", s.cycle_first_step_size);
    if (auto* x = find(p, "cycle_second_step_size"); x && !x->is_null())
      s.cycle_second_step_size = static_cast<long>(integer(r, *x, join(pa, "cycle_second_step_size"), 0));
    lng("cycle_first_stair_count", s.cycle_first_stair_count);
    if (auto* x = find(p, "cycle_second_stair_count"); x && !x->is_null())
      s.cycle_second_stair_count = static_cast<long>(integer(r, *x, join(pa, "cycle_second_stair_count"), 0));
    lng("decay_step_size", s.decay_step_size);
    if (auto* x = find(p, "cycle_momentum")) s.cycle_momentum = boolean(r, *x, join(pa, "cycle_momentum"));
    num("cycle_min_mom", s.cycle_min_mom);
    num("cycle_max_mom", s.cycle_max_mom);
    num("decay_mom_rate", s.decay_mom_rate);
    if (s.cycle_momentum)
      r.fail(join(pa, "cycle_momentum"), "OneCycle cycles Adam's beta1 each step (DeepSpeed's default, true), but "
                                         "a zeroblocks engine changes only the learning rate between steps; write "
                                         "\"cycle_momentum\": false");
    out = s;
  } else if (type == "LRRangeTest") {
    check_keys(r, p, pa, {"lr_range_test_min_lr", "lr_range_test_step_size", "lr_range_test_step_rate",
                          "lr_range_test_staircase", "last_batch_iteration"});
    schedule::lr_range_test s;
    num("lr_range_test_min_lr", s.lr_range_test_min_lr);
    lng("lr_range_test_step_size", s.lr_range_test_step_size);
    num("lr_range_test_step_rate", s.lr_range_test_step_rate);
    if (auto* x = find(p, "lr_range_test_staircase"))
      s.lr_range_test_staircase = boolean(r, *x, join(pa, "lr_range_test_staircase"));
    out = s;
  } else {
    r.fail(join(path, "type"), "\"", type, "\" is not a scheduler zeroblocks has (DeepSpeed's WarmupLR, "
                               "WarmupDecayLR, WarmupCosineLR, OneCycle, LRRangeTest; the names are case-sensitive "
                               "as in DeepSpeed; nearest: \"",
           nearest(type, {"WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest"}), "\")");
  }
  last_batch_iteration();
  try {
    out.validate();
  } catch (const error& e) {
    r.fail(pa, e.reason());
  }
  return out;
}

/// The preset of the stage and the offload devices, or an error saying why there is none.
inline ds_preset choose_preset(const reader& r, ds_config& d) {
  const auto& z = d.zero_optimization;
  const auto opt = z.offload_optimizer.device, par = z.offload_param.device;
  const std::string zp = "zero_optimization";
  using dev = ds_offload_device;
  if (par != dev::none && z.stage < 3)
    r.fail(zp + ".offload_param", "offloading parameters needs ZeRO stage 3 (as in DeepSpeed), the stage is ", z.stage);
  if (opt != dev::none && z.stage < 2)
    r.fail(zp + ".offload_optimizer", "zeroblocks offloads the optimizer state at stages 2 and 3 (",
           opt == dev::nvme ? "stage2_nvme, stage3_nvme, infinity" : "stage2_offload, stage3_offload",
           "); the stage is ", z.stage,
           z.stage == 1 ? ": use stage 2 (the same optimizer-state memory, less gradient memory)"
                        : ": ZeRO stage 0 keeps everything replicated",
           opt == dev::cpu ? "; on host ranks the fp32 state is in host memory anyway: remove offload_optimizer" : "");
  if (par == dev::nvme && opt != dev::nvme)
    r.fail(zp + ".offload_param.device", "\"nvme\" needs offload_optimizer.device \"nvme\" too: zeroblocks' "
                                         "infinity preset keeps the 16-bit parameter shard in the optimizer tier's "
                                         "files (there is no parameter-only NVMe tier)");
  if (par == dev::cpu)
    r.warn(zp + ".offload_param.device", nlohmann::json("cpu"),
           "zeroblocks keeps the 16-bit parameter shard in the rank's own memory: host memory on host ranks (what "
           "this asks), GPU memory on GPU ranks (2 bytes x params / ranks; parameter offload to the host is not "
           "implemented)");
  if (opt == dev::cpu)
    r.warn(zp + ".offload_optimizer.device", nlohmann::json("cpu"),
           "preset ", z.stage == 2 ? "stage2_offload" : "stage3_offload",
           " on GPU ranks (ZeRO-Offload); ranks that train on the host keep the fp32 state in host memory already "
           "and use ", z.stage == 2 ? "stage2" : "stage3", " (host_preset)");
  if (opt == dev::nvme) {
    if (z.stage == 2) return ds_preset::stage2_nvme;
    return par == dev::nvme ? ds_preset::infinity : ds_preset::stage3_nvme;
  }
  if (opt == dev::cpu) return z.stage == 2 ? ds_preset::stage2_offload : ds_preset::stage3_offload;
  switch (z.stage) {
    case 0: return ds_preset::stage0;
    case 1: return ds_preset::stage1;
    case 2: return ds_preset::stage2;
    default: return ds_preset::stage3;
  }
}

/// The coordinator policy of an engine type (for `check_engine`).
template <class E>
struct coordinator_of;
template <class T, class Space, class Comm, class Partitioner, class Coordinator, class Bucketer, class Master,
          class Scaler, class Optim>
struct coordinator_of<engine<T, Space, Comm, Partitioner, Coordinator, Bucketer, Master, Scaler, Optim>> {
  using type = Coordinator;
};

}  // namespace detail::ds

/// @brief Read a DeepSpeed configuration (a parsed JSON object) for `world_size`
/// data-parallel ranks. Throws `zeroblocks::error` naming `source`, the key's full path
/// and the reason; collects a warning line per key it accepts without applying.
inline ds_config parse_ds_config(const nlohmann::json& j, int world_size, std::string_view source = "ds_config") {
  using namespace detail::ds;
  ds_config d;
  d.source = std::string(source);
  const reader r{d.source, &d.warnings};
  if (world_size < 1) r.fail("world size", "must be >= 1, got ", world_size);
  d.world_size = world_size;
  check_keys(r, j, "",
             {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
              "gradient_clipping", "fp16", "bf16", "bfloat16", "zero_optimization", "optimizer", "scheduler", "aio",
              "data_types", "steps_per_print", "wall_clock_breakdown", "memory_breakdown", "dump_state",
              "prescale_gradients", "gradient_predivide_factor", "sparse_gradients", "zero_allow_untested_optimizer",
              "zero_force_ds_cpu_optimizer", "communication_data_type", "seq_parallel_communication_data_type",
              "tensorboard", "wandb", "csv_monitor", "comet", "comms_logger", "flops_profiler",
              "activation_checkpointing", "sparse_attention", "checkpoint", "dataloader_drop_last", "allgather_size",
              "disable_allgather", "vocabulary_size", "amp", "autotuning", "elasticity", "curriculum_learning",
              "data_efficiency", "progressive_layer_drop", "eigenvalue", "hybrid_engine", "compression_training",
              "pipeline"});

  // Batch numbers.
  batch_numbers b;
  auto batch = [&](const char* k, std::optional<long long>& out) {
    if (auto* x = find(j, k); x && !x->is_null()) out = integer(r, *x, k, std::numeric_limits<long long>::min());
  };
  batch("train_batch_size", b.train);
  batch("train_micro_batch_size_per_gpu", b.micro);
  batch("gradient_accumulation_steps", b.gas);
  resolve_batch(r, b, world_size, d);

  if (auto* x = find(j, "gradient_clipping")) {
    const double c = number(r, *x, "gradient_clipping");
    if (c < 0.0) r.fail("gradient_clipping", "must be >= 0 (0 = off), got ", x->dump());
    d.gradient_clipping = static_cast<float>(c);
  }
  if (auto* x = find(j, "steps_per_print"); x && !x->is_null())
    d.steps_per_print = static_cast<long>(integer(r, *x, "steps_per_print", 1));
  if (auto* x = find(j, "wall_clock_breakdown"); x && !x->is_null())
    d.wall_clock_breakdown = boolean(r, *x, "wall_clock_breakdown");

  // Precision. (The zero stage first: the fp16 defaults depend on it.)
  if (auto* x = find(j, "zero_optimization"); x && !x->is_null()) read_zero(r, *x, "zero_optimization", d);
  bool fp16 = false, dynamic_knobs = false;
  std::optional<long long> power;
  if (auto* x = find(j, "fp16")) read_fp16(r, *x, "fp16", d, fp16, dynamic_knobs, power);
  const json* bfj = find(j, "bf16");
  const json* bfo = find(j, "bfloat16");
  if (bfj && bfo) r.fail("bfloat16", "given together with 'bf16' (the same block; 'bfloat16' is its old name)");
  const bool bf16 = bfj ? read_bf16(r, *bfj, "bf16") : bfo ? read_bf16(r, *bfo, "bfloat16") : false;
  if (fp16 && bf16) r.fail("bf16.enabled", "fp16 and bf16 are both enabled; enable one (DeepSpeed refuses both too)");
  d.dtype = fp16 ? ds_dtype::fp16 : bf16 ? ds_dtype::bf16 : ds_dtype::fp32;
  if (fp16) {
    auto& s = d.fp16;
    if (!dynamic_knobs && d.zero_optimization.stage >= 1) {
      // ZeRO's optimizers build DynamicLossScaler() with its own defaults then.
      s.initial_scale = 4294967296.0f;  // 2^32
      s.hysteresis = 1;
    } else {
      s.initial_scale = std::ldexp(1.0f, static_cast<int>(power.value_or(16)));  // power <= 127: finite
    }
    if (!s.dynamic()) {
      if (dynamic_knobs)
        r.ignored("fp16", *find(j, "fp16"), "the dynamic-scaling knobs are not used with a static loss_scale (as in DeepSpeed)");
    } else if (s.min_loss_scale > s.initial_scale) {
      r.fail("fp16.min_loss_scale", s.min_loss_scale, " must be <= the initial scale 2^", power.value_or(16), " = ",
             s.initial_scale);
    }
    if (d.zero_optimization.stage == 0 && s.dynamic()) {
      // DeepSpeed's stage-0 fp16 optimizer (FP16_Optimizer, with its FusedAdam) halves on
      // every overflow: no hysteresis, whatever the config says.
      s.hysteresis = 1;
      if (auto* h = find(*find(j, "fp16"), "hysteresis"))
        r.ignored("fp16.hysteresis", *h, "DeepSpeed's stage-0 fp16 optimizer has no hysteresis; zeroblocks' stage 0 "
                                         "uses hysteresis 1 to match");
    }
  }
  if (auto* x = find(j, "data_types"); x && !x->is_null()) {
    check_keys(r, *x, "data_types", {"grad_accum_dtype"});
    if (auto* g = find(*x, "grad_accum_dtype"); g && !g->is_null()) {
      const std::string s = string(r, *g, "data_types.grad_accum_dtype");
      const auto t = dtype_of(s);
      if (!t) r.fail("data_types.grad_accum_dtype", "\"", s, "\" is not \"fp32\", \"fp16\" or \"bf16\"");
      if (*t != ds_dtype::fp32 && *t != d.dtype)
        r.fail("data_types.grad_accum_dtype", "\"", s, "\" with ", ds_dtype_name(d.dtype),
               " parameters: zeroblocks sums gradients either in the parameter type or in fp32");
      d.grad_accum_dtype = t;
    }
  }

  // Optimizer, then the scheduler (WarmupCosineLR reads the optimizer's lr).
  if (auto* x = find(j, "optimizer"); x && !x->is_null()) read_optimizer(r, *x, "optimizer", d.optimizer);
  if (auto* x = find(j, "scheduler"); x && !x->is_null()) d.scheduler = read_scheduler(r, *x, "scheduler", d.optimizer);
  if (auto* x = find(j, "aio"); x && !x->is_null()) read_aio(r, *x, "aio", d.aio);

  d.preset = choose_preset(r, d);
  if (!ds_preset_nvme(d.preset) && find(j, "aio"))
    r.ignored("aio", *find(j, "aio"), "no NVMe tier in preset ", ds_preset_name(d.preset));
  if (ds_preset_nvme(d.preset) && d.zero_optimization.offload_param.device == ds_offload_device::nvme &&
      d.zero_optimization.offload_param.nvme_path != d.zero_optimization.offload_optimizer.nvme_path)
    r.warn("zero_optimization.offload_param.nvme_path", nlohmann::json(d.zero_optimization.offload_param.nvme_path),
           "the parameter shard shares the optimizer tier's files; both directories hold that tier, striped");

  // Accepted, not applied.
  if (auto* x = find(j, "communication_data_type"); x && !x->is_null()) {
    const std::string s = string(r, *x, "communication_data_type");
    if (!dtype_of(s)) r.fail("communication_data_type", "\"", s, "\" is not \"fp32\", \"fp16\" or \"bf16\"");
    r.ignored("communication_data_type", *x, "zeroblocks sends gradients in the parameter type (",
           ds_dtype_name(d.dtype), ") and sums them in fp32, in rank order");
  }
  struct why_t {
    const char* key;
    const char* why;
  };
  static constexpr why_t accepted[] = {
      {"memory_breakdown", "engine::memory() reports memory by category"},
      {"dump_state", "no counterpart"},
      {"prescale_gradients", "zeroblocks sums 16-bit gradients in fp32, then scales once"},
      {"gradient_predivide_factor", "zeroblocks sums 16-bit gradients in fp32, then scales once"},
      {"sparse_gradients", "zeroblocks reduces dense gradients (the same average)"},
      {"zero_allow_untested_optimizer", "zeroblocks runs only its own optimizers"},
      {"zero_force_ds_cpu_optimizer", "zeroblocks runs only its own optimizers"},
      {"seq_parallel_communication_data_type", "no sequence parallelism"},
      {"tensorboard", "logging is the trainer's business"},
      {"wandb", "logging is the trainer's business"},
      {"csv_monitor", "logging is the trainer's business"},
      {"comet", "logging is the trainer's business"},
      {"comms_logger", "the engine counts what it communicates (engine::counters())"},
      {"flops_profiler", "profiling is the trainer's business"},
      {"activation_checkpointing", "the model's business"},
      {"sparse_attention", "the model's business"},
      {"checkpoint", "zeroblocks::checkpoint has its own options"},
      {"dataloader_drop_last", "the data loader's business"},
      {"allgather_size", "no counterpart"},
      {"disable_allgather", "no counterpart"},
      {"vocabulary_size", "the model's business"},
  };
  for (const auto& a : accepted)
    if (auto* x = find(j, a.key)) cosmetic(r, *x, a.key, a.why);
  struct feature_t {
    const char* key;
    const char* what;
  };
  static constexpr feature_t features[] = {
      {"amp", "Apex AMP"},
      {"autotuning", "DeepSpeed's autotuner"},
      {"elasticity", "elastic batch sizes"},
      {"curriculum_learning", "curriculum learning"},
      {"data_efficiency", "DeepSpeed's data efficiency library"},
      {"progressive_layer_drop", "progressive layer dropping"},
      {"eigenvalue", "eigenvalue computation"},
      {"hybrid_engine", "DeepSpeed's hybrid engine"},
  };
  for (const auto& f : features)
    if (auto* x = find(j, f.key)) feature(r, *x, f.key, f.what);
  if (find(j, "compression_training"))
    r.fail("compression_training", "DeepSpeed's compression library is not implemented in zeroblocks");
  if (find(j, "pipeline"))
    r.fail("pipeline", "pipeline parallelism is not implemented in zeroblocks (data-parallel ZeRO only)");
  return d;
}

/// @brief Read a DeepSpeed configuration from JSON text; `source` names it in messages.
/// A syntax error names the source, line and column; a key given twice in an object is
/// an error (DeepSpeed refuses duplicate keys too). C and C++ comments are allowed.
inline ds_config parse_ds_config_text(std::string_view text, int world_size, std::string_view source = "ds_config") {
  using json = nlohmann::json;
  // Duplicate keys: nlohmann keeps the last one silently, so watch the parser's events.
  struct frame {
    std::vector<std::string> keys;
    std::string key;  // the current key (objects) for the path
  };
  std::vector<frame> stack;
  std::string duplicate;
  auto path_of = [&](const std::string& k) {
    std::string p;
    for (std::size_t i = 0; i + 1 < stack.size(); ++i) p += (stack[i].key.empty() ? "[]" : stack[i].key) + ".";
    return p + k;
  };
  json::parser_callback_t cb = [&](int, json::parse_event_t ev, json& parsed) {
    switch (ev) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        stack.push_back({});
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!stack.empty()) stack.pop_back();
        break;
      case json::parse_event_t::key: {
        const std::string k = parsed.get<std::string>();
        auto& f = stack.back();
        if (duplicate.empty() && std::find(f.keys.begin(), f.keys.end(), k) != f.keys.end()) duplicate = path_of(k);
        f.keys.push_back(k);
        f.key = k;
        break;
      }
      case json::parse_event_t::value:
        break;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/true, /*ignore_comments=*/true);
  } catch (const json::parse_error& e) {
    // Line and column of the byte where parsing stopped (e.byte is 1-based).
    std::size_t line = 1, col = 1;
    for (std::size_t i = 0; i + 1 < e.byte && i < text.size(); ++i) {
      if (text[i] == '\n') ++line, col = 1;
      else ++col;
    }
    std::string why = e.what();
    if (auto p = why.find("] "); p != std::string::npos) why = why.substr(p + 2);
    ZB_FAIL(source, ":", line, ":", col, ": JSON syntax error: ", why,
            " (DeepSpeed reads its config with hjson, which also allows trailing commas and missing commas at line "
            "ends; this reader takes JSON, with // and /* */ comments)");
  }
  if (!duplicate.empty()) ZB_FAIL(source, ": ", duplicate, ": key given twice (DeepSpeed refuses duplicate keys too)");
  return parse_ds_config(j, world_size, source);
}

/// @brief Read a DeepSpeed configuration file; errors name the path (and the line and
/// column of a syntax error).
inline ds_config load_ds_config(const std::string& path, int world_size) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) ZB_FAIL(path, ": is a directory, not a DeepSpeed config file");
  std::ifstream f(path, std::ios::binary);
  if (!f) ZB_FAIL(path, ": cannot open the DeepSpeed config file");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) ZB_FAIL(path, ": cannot read the DeepSpeed config file");
  return parse_ds_config_text(ss.str(), world_size, path);
}

inline std::string ds_config::summary() const {
  const ds_config& d = *this;
  std::ostringstream os;
  os << "ZeRO stage " << d.zero_optimization.stage << " (preset " << ds_preset_name(d.preset) << "), "
     << ds_dtype_name(d.dtype) << ", train_batch_size " << d.train_batch_size << " = micro-batch "
     << d.train_micro_batch_size_per_gpu << " x accumulation " << d.gradient_accumulation_steps << " x "
     << d.world_size << " ranks";
  const auto& o = d.optimizer;
  if (o.type != ds_optimizer_type::none) {
    os << ", " << o.type_name << " lr " << o.lr;
    if (o.type != ds_optimizer_type::sgd) os << " betas (" << o.beta1 << ", " << o.beta2 << ")";
    if (o.type == ds_optimizer_type::adam || o.type == ds_optimizer_type::adamw)
      os << " eps " << o.eps << (o.decoupled ? " decoupled" : " L2");
    if (o.type == ds_optimizer_type::sgd) os << " momentum " << o.momentum << (o.nesterov ? " nesterov" : "");
    os << " weight_decay " << o.weight_decay;
  }
  if (d.scheduler) os << ", scheduler " << d.scheduler->name();
  if (d.gradient_clipping > 0.0f) os << ", gradient_clipping " << d.gradient_clipping;
  if (d.wall_clock_breakdown) os << ", wall_clock_breakdown";
  if (d.grad_accum_dtype) os << ", grad_accum_dtype " << ds_dtype_name(*d.grad_accum_dtype);
  if (d.dtype == ds_dtype::fp16) {
    int e = 0;
    const bool pow2 = std::frexp(d.fp16.initial_scale, &e) == 0.5f;
    if (d.fp16.dynamic())
      os << ", dynamic loss scale from " << (pow2 ? "2^" + std::to_string(e - 1) : std::to_string(d.fp16.initial_scale))
         << " (window " << d.fp16.loss_scale_window
         << ", hysteresis " << d.fp16.hysteresis << ", min " << d.fp16.min_loss_scale << ")";
    else
      os << ", static loss scale " << d.fp16.loss_scale;
  }
  return os.str();
}

/// @brief Write what `d` says into an engine's config (`Engine::config`, the aggregate of
/// `engine/config.hpp`): the optimizer's hyper-parameters, the loss scaler's knobs,
/// clipping, gradient accumulation type, buckets, stage-3 prefetch knobs and the NVMe
/// tier — each only where this engine's roles have the field (a stage-2 engine has no
/// prefetch knobs: the config's stage-3 knobs are not written, as DeepSpeed ignores them
/// at stage 2). Fields the config leaves unset keep their value. Throws where the
/// config asks for what the engine's policies cannot do: another optimizer than the
/// engine's, fp16 loss scaling on an engine without a scaler, dynamic scaling on
/// `scale::fixed`, NVMe on an engine without a swap tier, fp32 accumulation where the
/// engine has no `cfg.step.grad_accum`. With a scheduler, `cfg.optim.lr` is its lr
/// before the first step (`lr(-1)`, what DeepSpeed's scheduler writes when built).
template <class Config>
void apply(const ds_config& d, Config& cfg) {
  const std::string& src = d.source;
  // Optimizer.
  using O = std::remove_cvref_t<decltype(cfg.optim)>;
  const auto& o = d.optimizer;
  const auto f = [](double x) { return static_cast<float>(x); };
  if (o.type != ds_optimizer_type::none) {
    auto mismatch = [&](const char* engine_optim) {
      ZB_FAIL(src, ": optimizer.type \"", o.type_name, "\" but the engine's optimizer is ", engine_optim,
              "; build the engine with ",
              o.type == ds_optimizer_type::lion  ? "optim::lion"
              : o.type == ds_optimizer_type::sgd ? "optim::sgd"
                                                 : "optim::adamw (the presets' optimizer)",
              " (the last template argument of zeroblocks::engine)");
    };
    if constexpr (std::is_same_v<O, adamw_config>) {
      if (o.type != ds_optimizer_type::adam && o.type != ds_optimizer_type::adamw) mismatch("optim::adamw");
      cfg.optim.lr = f(o.lr);
      cfg.optim.beta1 = f(o.beta1);
      cfg.optim.beta2 = f(o.beta2);
      cfg.optim.eps = f(o.eps);
      cfg.optim.weight_decay = f(o.weight_decay);
      cfg.optim.decoupled = o.decoupled;
    } else if constexpr (std::is_same_v<O, lion_config>) {
      if (o.type != ds_optimizer_type::lion) mismatch("optim::lion");
      cfg.optim.lr = f(o.lr);
      cfg.optim.beta1 = f(o.beta1);
      cfg.optim.beta2 = f(o.beta2);
      cfg.optim.weight_decay = f(o.weight_decay);
    } else if constexpr (std::is_same_v<O, sgd_config>) {
      if (o.type != ds_optimizer_type::sgd) mismatch("optim::sgd");
      cfg.optim.lr = f(o.lr);
      cfg.optim.momentum = f(o.momentum);
      cfg.optim.weight_decay = f(o.weight_decay);
      cfg.optim.nesterov = o.nesterov;
    } else {
      mismatch("a policy ds_config has no mapping for");
    }
  }
  if (d.scheduler) cfg.optim.lr = f(d.scheduler->lr(-1));

  // Loss scaling (fp16).
  using S = std::remove_cvref_t<decltype(cfg.scale)>;
  if (d.dtype == ds_dtype::fp16) {
    const auto& s = d.fp16;
    if constexpr (std::is_same_v<S, dynamic_scale_config>) {
      if (s.dynamic()) {
        cfg.scale.initial_scale = s.initial_scale;
        cfg.scale.growth_interval = s.loss_scale_window;
        cfg.scale.hysteresis = s.hysteresis;
        cfg.scale.min_scale = s.min_loss_scale;
      } else {  // a static scale: pinned (an overflow still skips the step, as in DeepSpeed)
        cfg.scale.initial_scale = s.loss_scale;
        cfg.scale.min_scale = s.loss_scale;
        cfg.scale.growth_interval = std::numeric_limits<long>::max();
        cfg.scale.hysteresis = 1;
      }
    } else if constexpr (std::is_same_v<S, fixed_scale_config>) {
      if (s.dynamic())
        ZB_FAIL(src, ": fp16.loss_scale 0 asks for dynamic loss scaling, but the engine's scaler is scale::fixed; "
                     "use scale::dynamic (the presets' scaler for half parameters)");
      cfg.scale.scale = s.loss_scale;
    } else {
      ZB_FAIL(src, ": fp16 needs a loss scaler, but the engine's is scale::none; build the engine with half "
                   "parameters (the presets then use scale::dynamic)");
    }
  }

  // The engine's own step knobs.
  cfg.step.max_grad_norm = d.gradient_clipping;
  if (d.grad_accum_dtype) {
    if constexpr (requires { cfg.step.grad_accum; }) {
      using G = std::remove_cvref_t<decltype(cfg.step.grad_accum)>;
      cfg.step.grad_accum = *d.grad_accum_dtype == ds_dtype::fp32 ? G::fp32 : G::param;
    } else {
      if (*d.grad_accum_dtype == ds_dtype::fp32 && d.dtype != ds_dtype::fp32)
        ZB_FAIL(src, ": data_types.grad_accum_dtype \"fp32\": this engine sums gradients in the parameter type "
                     "(its step config has no grad_accum)");
    }
  }

  // Gradient buckets.
  if constexpr (requires { cfg.bucket.bucket_numel; })
    if (d.zero_optimization.reduce_bucket_size) cfg.bucket.bucket_numel = *d.zero_optimization.reduce_bucket_size;
  if constexpr (requires { cfg.bucket.bucket_count; })
    if (d.zero_optimization.overlap_comm) cfg.bucket.bucket_count = *d.zero_optimization.overlap_comm ? 2 : 1;

  // Stage-3 coordination.
  const auto& z = d.zero_optimization;
  if constexpr (requires { cfg.coordinate.prefetch_numel; })
    if (z.stage3_prefetch_bucket_size) cfg.coordinate.prefetch_numel = *z.stage3_prefetch_bucket_size;
  if constexpr (requires { cfg.coordinate.max_live_numel; })
    if (z.stage3_max_live_parameters) cfg.coordinate.max_live_numel = *z.stage3_max_live_parameters;
  if constexpr (requires { cfg.coordinate.max_reuse_distance_numel; })
    if (z.stage3_max_reuse_distance) cfg.coordinate.max_reuse_distance_numel = *z.stage3_max_reuse_distance;
  if constexpr (requires { cfg.coordinate.persistence_threshold_numel; })
    if (z.stage3_param_persistence_threshold)
      cfg.coordinate.persistence_threshold_numel = *z.stage3_param_persistence_threshold;

  // The NVMe tier.
  if constexpr (requires { cfg.master.swap.paths; }) {
    if (ds_preset_nvme(d.preset)) cfg.master.swap.paths = d.nvme_paths();
    if constexpr (requires { cfg.master.sub_group_numel; })
      if (z.sub_group_size) cfg.master.sub_group_numel = *z.sub_group_size;
    if constexpr (requires { cfg.master.buffer_count; })
      if (z.offload_optimizer.buffer_count) cfg.master.buffer_count = *z.offload_optimizer.buffer_count;
    if (d.aio.block_size) cfg.master.swap.block_size = *d.aio.block_size;
    if (d.aio.queue_depth) cfg.master.swap.queue_depth = *d.aio.queue_depth;
    if (d.aio.thread_count) cfg.master.swap.threads = *d.aio.thread_count;
  } else {
    if (ds_preset_nvme(d.preset))
      ZB_FAIL(src, ": the config keeps the optimizer state on NVMe (preset ", ds_preset_name(d.preset),
              "), but this engine's master state has no NVMe tier (master::swapped)");
  }
}

/// @brief What the configuration says about a constructed engine (not its config): the
/// scheduler, installed with `eng.set_lr_schedule` in DeepSpeed's order (the update after
/// n applied updates uses `lr(n - 1)`; skipped overflow steps do not count), and
/// `wall_clock_breakdown` (`eng.enable_timers`). Throws if the engine lacks what the
/// configuration needs. Not collective; every rank calls it with the same configuration.
template <class Engine>
void apply_runtime(const ds_config& d, Engine& eng) {
  if (d.scheduler) {
    if constexpr (requires { eng.set_lr_schedule([](long) { return 0.0f; }); }) {
      eng.set_lr_schedule([s = *d.scheduler](long n) { return static_cast<float>(s.lr(n - 1)); });
    } else {
      ZB_FAIL(d.source, ": scheduler ", d.scheduler->name(), ": this engine has no set_lr_schedule; call "
              "set_learning_rate(ds.scheduler->lr(eng.steps() - 1)) before each step");
    }
  }
  if constexpr (requires { eng.enable_timers(true); }) {
    eng.enable_timers(d.wall_clock_breakdown);
  } else {
    if (d.wall_clock_breakdown) ZB_FAIL(d.source, ": wall_clock_breakdown: this engine has no timers");
  }
}

/// @brief Check that `Engine` is the engine the configuration asks for: its parameter
/// type (fp32 / fp16 / bf16 → float / half / bfloat16), its ZeRO stage, its master tier
/// (NVMe for the `_nvme` presets and `infinity`, with the parameter shard on the tier
/// for `infinity` only; `master::offloaded` for ZeRO-Offload on GPU ranks, or a host
/// engine — see `host_preset`) and its optimizer. Throws naming what differs.
template <class Engine>
void check_engine(const ds_config& d) {
  using T = typename Engine::param_type;
  using C = typename Engine::config;
  const std::string& src = d.source;
  const bool t_ok = d.dtype == ds_dtype::fp16   ? std::is_same_v<T, half>
                    : d.dtype == ds_dtype::bf16 ? std::is_same_v<T, bfloat16>
                                                : std::is_same_v<T, float>;
  if (!t_ok)
    ZB_FAIL(src, ": the config trains in ", ds_dtype_name(d.dtype), " but the engine's parameters are ",
            dtype_name<T>(), " (fp32: float, fp16: half, bf16: bfloat16)");
  if (Engine::stage != d.zero_optimization.stage)
    ZB_FAIL(src, ": the config asks for ZeRO stage ", d.zero_optimization.stage, " (preset ",
            ds_preset_name(d.preset), ") but the engine is stage ", Engine::stage);
  constexpr bool swapped = requires(C c) { c.master.swap.paths; };
  constexpr bool offloaded = requires(C c) { c.master.chunk_numel; };
  const bool want_nvme = ds_preset_nvme(d.preset);
  if (want_nvme != swapped)
    ZB_FAIL(src, ": preset ", ds_preset_name(d.preset), want_nvme ? " keeps" : " does not keep",
            " the optimizer state on NVMe, but the engine's master state ", swapped ? "does" : "does not",
            " (master::swapped)");
  constexpr bool params_on_tier = detail::ds::coordinator_of<Engine>::type::caps.params_on_tier;
  if (d.preset == ds_preset::infinity && !params_on_tier)
    ZB_FAIL(src, ": offload_param.device \"nvme\" (preset infinity) needs the parameter shard on the tier "
                 "(coordinate::prefetch_trace_nvme, the infinity preset); the engine keeps it in memory");
  if (d.preset == ds_preset::stage3_nvme && params_on_tier)
    ZB_FAIL(src, ": preset stage3_nvme keeps the parameter shard in memory, but the engine reads it from the tier "
                 "(infinity); add offload_param.device \"nvme\" or build stage3_nvme");
  const bool want_offload = d.preset == ds_preset::stage2_offload || d.preset == ds_preset::stage3_offload;
  constexpr bool host_engine = Engine::space::host_accessible;
  if (offloaded && !want_offload)
    ZB_FAIL(src, ": the engine offloads the optimizer state to the host (master::offloaded) but preset ",
            ds_preset_name(d.preset), " does not (offload_optimizer.device \"cpu\")");
  if (want_offload && !offloaded && !host_engine)
    ZB_FAIL(src, ": preset ", ds_preset_name(d.preset), " (offload_optimizer.device \"cpu\") on GPU ranks is ",
            d.preset == ds_preset::stage2_offload ? "stage2_offload" : "stage3_offload",
            " (presets_cuda.hpp); the engine keeps the optimizer state in GPU memory");
  using Opt = typename Engine::optimizer_type;
  const auto& o = d.optimizer;
  const bool opt_ok = o.type == ds_optimizer_type::none ||
                      ((o.type == ds_optimizer_type::adam || o.type == ds_optimizer_type::adamw) &&
                       std::is_same_v<Opt, optim::adamw>) ||
                      (o.type == ds_optimizer_type::lion && std::is_same_v<Opt, optim::lion>) ||
                      (o.type == ds_optimizer_type::sgd &&
                       (std::is_same_v<Opt, optim::sgd> ||
                        (std::is_same_v<Opt, optim::sgd_plain> && o.momentum == 0.0 && !o.nesterov)));
  if (!opt_ok)
    ZB_FAIL(src, ": optimizer.type \"", o.type_name, "\" but the engine's optimizer is optim::", Opt::name,
            o.type == ds_optimizer_type::sgd ? " (SGD with momentum needs optim::sgd)" : "");
}

ZB_NAMESPACE_END
