/**
 * @file test_ds_config.cpp
 * @brief Tests of `engine/ds_config.hpp`: a DeepSpeed `ds_config.json` read into a preset
 *        and an engine config. One process, no communication.
 *
 *  - The example configurations of DeepSpeed's own documentation, as printed there
 *    (cited per case; where the page's listing is not valid JSON — DeepSpeed reads
 *    configs with hjson — once verbatim, to see the error name the line and column, and
 *    once with the commas fixed), parse to the values and the preset DeepSpeed uses.
 *  - Batch arithmetic: every combination of the three numbers, as DeepSpeed's
 *    `_set_batch_related_parameters` / `_batch_assertion` (deepspeed/runtime/config.py).
 *  - Every error path: an unknown key (full path, nearest key), a value zeroblocks cannot
 *    honour (with the reason), a wrong type (naming the key), syntax, duplicates, files.
 *  - Warnings: one line per key accepted and not applied.
 *  - `apply` onto stage0, stage3, infinity and hand-built engines; `check_engine`;
 *    `schedule::any`.
 */
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <zeroblocks/engine/ds_config.hpp>
#include <zeroblocks/zeroblocks.hpp>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

namespace zb = zeroblocks;
using json = nlohmann::json;

namespace {

zb::ds_config parse(const std::string& text, int world = 1) { return zb::parse_ds_config_text(text, world, "test.json"); }

/// The message of the error `text` raises, or "" (and a failed check) when none.
std::string error_of(const std::string& text, int world = 1) {
  try {
    parse(text, world);
  } catch (const zb::error& e) {
    return e.reason();
  }
  FAIL_CHECK("no error for: ", text);
  return "";
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

/// Check that the error text contains every part.
void check_error(const std::string& text, std::initializer_list<const char*> parts, int world = 1) {
  const std::string e = error_of(text, world);
  INFO("error: ", e);
  for (const char* p : parts) CHECK_MESSAGE(has(e, p), "missing '", p, "'");
}

/// The warning lines that mention `part`.
std::size_t warnings_with(const zb::ds_config& d, const std::string& part) {
  std::size_t n = 0;
  for (const auto& w : d.warnings) n += has(w, part) ? 1 : 0;
  return n;
}

template <class Config>
std::string apply_error(const zb::ds_config& d, Config& cfg) {
  try {
    zb::apply(d, cfg);
  } catch (const zb::error& e) {
    return e.reason();
  }
  FAIL_CHECK("apply raised no error");
  return "";
}

template <class Engine>
std::string check_engine_error(const zb::ds_config& d) {
  try {
    zb::check_engine<Engine>(d);
  } catch (const zb::error& e) {
    return e.reason();
  }
  FAIL_CHECK("check_engine raised no error");
  return "";
}

}  // namespace

// ---- DeepSpeed's documentation --------------------------------------------------------

TEST_CASE("config-json page: the Adam, WarmupLR and fp16 examples") {
  // https://www.deepspeed.ai/docs/config-json/ ("Optimizer Parameters", "Scheduler
  // Parameters", "FP16 training options"; train_batch_size: its example value 32).
  const auto d = parse(R"json({
    "train_batch_size": 32,
    "optimizer": {
      "type": "Adam",
      "params": {
        "lr": 0.001,
        "betas": [
          0.8,
          0.999
        ],
        "eps": 1e-8,
        "weight_decay": 3e-7
      }
    },
    "scheduler": {
      "type": "WarmupLR",
      "params": {
          "warmup_min_lr": 0,
          "warmup_max_lr": 0.001,
          "warmup_num_steps": 1000
      }
    },
    "fp16": {
      "enabled": true,
      "auto_cast": false,
      "loss_scale": 0,
      "initial_scale_power": 16,
      "loss_scale_window": 1000,
      "hysteresis": 2,
      "consecutive_hysteresis": false,
      "min_loss_scale": 1
    }
  })json", 4);
  CHECK(d.train_batch_size == 32);
  CHECK(d.train_micro_batch_size_per_gpu == 8);  // 32 // 4, accumulation 1
  CHECK(d.gradient_accumulation_steps == 1);
  CHECK(d.dtype == zb::ds_dtype::fp16);
  CHECK(d.preset == zb::ds_preset::stage0);  // no zero_optimization block: stage 0
  CHECK(d.optimizer.type == zb::ds_optimizer_type::adam);
  CHECK(d.optimizer.lr == 0.001);
  CHECK(d.optimizer.beta1 == 0.8);
  CHECK(d.optimizer.beta2 == 0.999);
  CHECK(d.optimizer.eps == 1e-8);
  CHECK(d.optimizer.weight_decay == 3e-7);
  CHECK(d.optimizer.decoupled);  // DeepSpeed's "Adam" is AdamW unless adam_w_mode is false
  REQUIRE(d.scheduler);
  CHECK(std::string(d.scheduler->name()) == "WarmupLR");
  const auto* w = d.scheduler->get_if<zb::schedule::warmup_lr>();
  REQUIRE(w);
  CHECK(w->warmup_max_lr == 0.001);
  CHECK(w->warmup_num_steps == 1000);
  CHECK(w->warmup_type == "log");
  CHECK(d.fp16.dynamic());
  CHECK(d.fp16.initial_scale == 65536.0f);
  CHECK(d.fp16.loss_scale_window == 1000);
  CHECK(d.fp16.hysteresis == 1);  // stage 0: DeepSpeed's fused fp16 optimizer has none
  CHECK(d.fp16.min_loss_scale == 1.0f);
  CHECK(warnings_with(d, "fp16.auto_cast") == 1);
  CHECK(warnings_with(d, "fp16.hysteresis") == 1);
  CHECK(d.warnings.size() == 2);
}

TEST_CASE("config-json page: the bf16 and data_types examples") {
  // https://www.deepspeed.ai/docs/config-json/ ("BFLOAT16 training options", "Data Type
  // options": "grad_accum_dtype"=["fp32"|"fp16"|"bf16"], here "fp32").
  const auto d = parse(R"json({
    "train_micro_batch_size_per_gpu": 4,
    "bf16": {
       "enabled": true
     },
    "data_types": {
      "grad_accum_dtype": "fp32"
    }
  })json", 2);
  CHECK(d.dtype == zb::ds_dtype::bf16);
  REQUIRE(d.grad_accum_dtype);
  CHECK(*d.grad_accum_dtype == zb::ds_dtype::fp32);
  CHECK(d.train_batch_size == 8);
  CHECK(d.warnings.empty());
}

TEST_CASE("config-json page: offload and aio examples (NVMe)") {
  // https://www.deepspeed.ai/docs/config-json/ ("Parameter offloading", "Optimizer
  // offloading", "Asynchronous I/O"), with the page's placeholders [cpu|nvme] and
  // [true|false] filled in (nvme, false).
  const std::string offload_param = R"json(
      "offload_param": {
        "device": "nvme",
        "nvme_path": "/local_nvme",
        "pin_memory": false,
        "buffer_count": 5,
        "buffer_size": 1e8,
        "max_in_cpu": 1e9
      })json";
  const std::string aio = R"json(
    "aio": {
      "block_size": 1048576,
      "queue_depth": 8,
      "thread_count": 1,
      "single_submit": false,
      "overlap_events": true
    })json";
  // The page's optimizer example offloads 30% ("ratio": 0.3): partial offload is refused.
  check_error(R"json({"train_batch_size": 8, "zero_optimization": {"stage": 3,)json" + offload_param + R"json(,
      "offload_optimizer": {
        "device": "nvme",
        "nvme_path": "/local_nvme",
        "pin_memory": false,
        "ratio": 0.3,
        "buffer_count": 4,
        "fast_init": false
      }},)json" + aio + "}",
              {"zero_optimization.offload_optimizer.ratio", "partial offload", "not implemented"});
  // Without the ratio: ZeRO-Infinity.
  const auto d = parse(R"json({"train_batch_size": 8, "zero_optimization": {"stage": 3,)json" + offload_param + R"json(,
      "offload_optimizer": {
        "device": "nvme",
        "nvme_path": "/local_nvme",
        "pin_memory": false,
        "buffer_count": 4,
        "fast_init": false
      }},)json" + aio + "}");
  CHECK(d.preset == zb::ds_preset::infinity);
  CHECK(d.nvme_paths() == std::vector<std::string>{"/local_nvme"});
  CHECK(d.aio.block_size == std::size_t{1048576});
  CHECK(d.aio.queue_depth == 8);
  CHECK(d.aio.thread_count == 1);
  CHECK(d.zero_optimization.offload_optimizer.buffer_count == 4);
  // pin_memory twice, buffer_count/buffer_size/max_in_cpu of offload_param, fast_init,
  // single_submit, overlap_events: one line each.
  for (const char* k : {"offload_param.pin_memory", "offload_optimizer.pin_memory", "offload_param.buffer_count",
                        "offload_param.buffer_size", "offload_param.max_in_cpu", "offload_optimizer.fast_init",
                        "aio.single_submit", "aio.overlap_events"})
    CHECK_MESSAGE(warnings_with(d, k) == 1, k);
  CHECK(d.warnings.size() == 8);

  zb::infinity<zb::comm::self>::config cfg;
  zb::apply(d, cfg);
  CHECK(cfg.master.swap.paths == std::vector<std::string>{"/local_nvme"});
  CHECK(cfg.master.swap.block_size == std::size_t{1048576});
  CHECK(cfg.master.swap.queue_depth == 8);
  CHECK(cfg.master.swap.threads == 1);
  CHECK(cfg.master.buffer_count == 4);
  zb::check_engine<zb::infinity<zb::comm::self, float>>(d);  // no fp16/bf16 block: fp32
  CHECK(has(check_engine_error<zb::stage3_nvme<zb::comm::self, float>>(d), "needs the parameter shard on the tier"));
  CHECK(has(check_engine_error<zb::stage3<zb::comm::self, float>>(d), "master::swapped"));
}

TEST_CASE("ZeRO tutorial: the stage 1, 2 and 3 examples") {
  // https://www.deepspeed.ai/tutorials/zero/ ("Training a 1.5B Parameter GPT-2 model",
  // "Training a 10B Parameter GPT-2 model", "Training trillion-scale models with ZeRO-Infinity").
  const auto s1 = parse(R"json({
    "train_batch_size": 16,
    "zero_optimization": {
        "stage": 1,
        "reduce_bucket_size": 5e8
    }
  })json");
  CHECK(s1.preset == zb::ds_preset::stage1);
  CHECK(s1.zero_optimization.reduce_bucket_size == std::size_t{500000000});
  CHECK(s1.warnings.empty());

  const auto s2 = parse(R"json({
    "train_batch_size": 16,
    "zero_optimization": {
        "stage": 2,
        "contiguous_gradients": true,
        "overlap_comm": true,
        "reduce_scatter": true,
        "reduce_bucket_size": 5e8,
        "allgather_bucket_size": 5e8
    }
  })json");
  CHECK(s2.preset == zb::ds_preset::stage2);
  CHECK(s2.zero_optimization.overlap_comm == true);
  CHECK(warnings_with(s2, "zero_optimization.contiguous_gradients") == 1);
  CHECK(warnings_with(s2, "zero_optimization.reduce_scatter") == 1);
  CHECK(warnings_with(s2, "zero_optimization.allgather_bucket_size") == 1);
  CHECK(s2.warnings.size() == 3);

  const auto s3 = parse(R"json({
    "train_batch_size": 16,
    "zero_optimization": {
        "stage": 3,
        "contiguous_gradients": true,
        "stage3_max_live_parameters": 1e9,
        "stage3_max_reuse_distance": 1e9,
        "stage3_prefetch_bucket_size": 1e7,
        "stage3_param_persistence_threshold": 1e5,
        "reduce_bucket_size": 1e7,
        "sub_group_size": 1e9,
        "offload_optimizer": {
            "device": "cpu"
         },
        "offload_param": {
            "device": "cpu"
       }
   }
  })json");
  CHECK(s3.preset == zb::ds_preset::stage3_offload);
  CHECK(zb::host_preset(s3.preset) == zb::ds_preset::stage3);
  CHECK(s3.zero_optimization.stage3_max_live_parameters == std::size_t{1000000000});
  CHECK(s3.zero_optimization.stage3_prefetch_bucket_size == std::size_t{10000000});
  CHECK(s3.zero_optimization.stage3_param_persistence_threshold == std::size_t{100000});
  CHECK(s3.zero_optimization.sub_group_size == std::size_t{1000000000});
  CHECK(warnings_with(s3, "offload_optimizer.device") == 1);
  CHECK(warnings_with(s3, "offload_param.device") == 1);
  CHECK(warnings_with(s3, "contiguous_gradients") == 1);

  // On host ranks the plain stage 3 engine is what this config asks for.
  using E = zb::stage3<zb::comm::self>;  // bfloat16, but the config has no dtype block: fp32
  using E32 = zb::stage3<zb::comm::self, float>;
  CHECK(has(check_engine_error<E>(s3), "trains in fp32"));
  zb::check_engine<E32>(s3);
  E32::config cfg;
  zb::apply(s3, cfg);
  CHECK(cfg.coordinate.max_live_numel == std::size_t{1000000000});
  CHECK(cfg.coordinate.max_reuse_distance_numel == std::size_t{1000000000});
  CHECK(cfg.coordinate.prefetch_numel == std::size_t{10000000});
  CHECK(cfg.coordinate.persistence_threshold_numel == std::size_t{100000});
  CHECK(cfg.bucket.bucket_numel == std::size_t{10000000});
}

TEST_CASE("ZeRO-Offload tutorial: the listing as printed is not JSON; fixed, it is stage2_offload") {
  // https://www.deepspeed.ai/tutorials/zero-offload/ ("DeepSpeed Configuration Changes").
  // The page's listing has a trailing comma after "cpu" and no comma after the
  // offload_optimizer block (hjson, which DeepSpeed uses, accepts both).
  const std::string printed = R"json({
    "zero_optimization": {
        "stage": 2,
        "offload_optimizer": {
            "device": "cpu",
        }
        "contiguous_gradients": true,
        "overlap_comm": true
    }
})json";
  const std::string e = error_of(printed);
  INFO(e);
  CHECK(has(e, "test.json:6:9: JSON syntax error"));  // the '}' after the trailing comma
  CHECK(has(e, "hjson"));
  const auto d = parse(R"json({
    "train_micro_batch_size_per_gpu": 1,
    "zero_optimization": {
        "stage": 2,
        "offload_optimizer": {
            "device": "cpu"
        },
        "contiguous_gradients": true,
        "overlap_comm": true
    }
})json");
  CHECK(d.preset == zb::ds_preset::stage2_offload);
  CHECK(zb::host_preset(d.preset) == zb::ds_preset::stage2);
  zb::check_engine<zb::stage2<zb::comm::self, float>>(d);  // host ranks: plain stage 2
}

TEST_CASE("Getting Started page: the bing_bert-style config (deprecated boolean zero_optimization)") {
  // https://www.deepspeed.ai/getting-started/ ("DeepSpeed Configuration").
  const auto d = parse(R"json({
  "train_batch_size": 8,
  "gradient_accumulation_steps": 1,
  "optimizer": {
    "type": "Adam",
    "params": {
      "lr": 0.00015
    }
  },
  "fp16": {
    "enabled": true
  },
  "zero_optimization": true
})json", 2);
  CHECK(d.train_micro_batch_size_per_gpu == 4);  // 8 // 2 // 1
  CHECK(d.preset == zb::ds_preset::stage1);     // true: stage 1, as DeepSpeed reads it
  CHECK(warnings_with(d, "deprecated boolean form") == 1);
  CHECK(d.optimizer.lr == 0.00015);
  CHECK(d.optimizer.weight_decay == 0.0);  // FusedAdam's default
  // fp16 without dynamic knobs at ZeRO stage >= 1: DynamicLossScaler()'s defaults.
  CHECK(d.fp16.initial_scale == 4294967296.0f);
  CHECK(d.fp16.hysteresis == 1);
  CHECK(d.fp16.loss_scale_window == 1000);
  zb::stage1<zb::comm::self, zb::half>::config cfg;
  zb::apply(d, cfg);
  CHECK(cfg.scale.initial_scale == 4294967296.0f);
  CHECK(cfg.scale.hysteresis == 1);
  CHECK(cfg.optim.lr == doctest::Approx(0.00015f));
  CHECK(cfg.optim.weight_decay == 0.0f);
  zb::check_engine<zb::stage1<zb::comm::self, zb::half>>(d);
}

TEST_CASE("ZeRO-3 API page: the AdamW example and the NVMe example") {
  // https://deepspeed.readthedocs.io/en/latest/zero3.html ("Example ZeRO-3
  // Configurations" 1 and 4; the page's listings have "..." for the rest, a trailing
  // comma after "stage": 3 and a missing comma between the offload blocks — fixed here).
  const auto d = parse(R"json({
    "train_micro_batch_size_per_gpu": 2,
    "zero_optimization": {
        "stage": 3
    },
    "fp16": {
        "enabled": true
    },
    "optimizer": {
        "type": "AdamW",
        "params": {
        "lr": 0.001,
        "betas": [
            0.8,
            0.999
        ],
        "eps": 1e-8,
        "weight_decay": 3e-7
        }
    }
  })json", 4);
  CHECK(d.preset == zb::ds_preset::stage3);
  CHECK(d.train_batch_size == 8);
  CHECK(d.optimizer.type == zb::ds_optimizer_type::adamw);
  CHECK(d.optimizer.decoupled);
  zb::stage3<zb::comm::self, zb::half>::config cfg;
  zb::apply(d, cfg);
  CHECK(cfg.optim.beta1 == 0.8f);
  CHECK(cfg.optim.weight_decay == 3e-7f);
  CHECK(cfg.optim.decoupled);
  CHECK(cfg.scale.initial_scale == 4294967296.0f);

  const auto n = parse(R"json({
    "train_micro_batch_size_per_gpu": 2,
    "zero_optimization": {
        "stage": 3,
        "offload_optimizer": {
            "device": "nvme",
            "nvme_path": "/nvme_data"
        },
        "offload_param": {
            "device": "nvme",
            "nvme_path": "/nvme_data"
        }
    }
  })json");
  CHECK(n.preset == zb::ds_preset::infinity);
  CHECK(n.nvme_paths() == std::vector<std::string>{"/nvme_data"});
  CHECK(n.warnings.empty());
}

// ---- batch arithmetic -----------------------------------------------------------------

TEST_CASE("batch numbers: every combination, as DeepSpeed resolves them") {
  struct row {
    const char* json;
    int world;
    long tb, mb, ga;
  };
  const std::vector<row> ok = {
      {R"({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2})", 4, 32, 4, 2},
      {R"({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4})", 4, 32, 4, 2},   // ga = 32 // 4 // 4
      {R"({"train_batch_size": 32, "gradient_accumulation_steps": 2})", 4, 32, 4, 2},      // mb = 32 // 4 // 2
      {R"({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2})", 4, 32, 4, 2},  // tb = 4*2*4
      {R"({"train_batch_size": 32})", 4, 32, 8, 1},                                       // ga 1, mb = 32 // 4
      {R"({"train_micro_batch_size_per_gpu": 4})", 3, 12, 4, 1},                          // ga 1, tb = 4 * 3
      {R"({"train_batch_size": 5e1, "train_micro_batch_size_per_gpu": 5.0})", 1, 50, 5, 10},  // integral floats
  };
  for (const auto& r : ok) {
    INFO(r.json, " on ", r.world, " ranks");
    const auto d = parse(r.json, r.world);
    CHECK(d.train_batch_size == r.tb);
    CHECK(d.train_micro_batch_size_per_gpu == r.mb);
    CHECK(d.gradient_accumulation_steps == r.ga);
    CHECK(d.world_size == r.world);
  }
  // Three given, inconsistent: the three numbers and the world size.
  check_error(R"({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 2})",
              {"train_batch_size 32", "train_micro_batch_size_per_gpu 3", "gradient_accumulation_steps 2",
               "world size 4", "(= 24)"},
              4);
  // Two given, the third derived by floor division and then inconsistent (DeepSpeed's
  // assertion fails the same way).
  check_error(R"({"train_batch_size": 30, "train_micro_batch_size_per_gpu": 4})",
              {"train_batch_size 30", "gradient_accumulation_steps 3", "world size 2",
               "gradient_accumulation_steps derived as 30 // 4 // 2 = 3"},
              2);
  check_error(R"({"train_batch_size": 30, "gradient_accumulation_steps": 4})",
              {"train_micro_batch_size_per_gpu 3", "derived as 30 // 2 // 4 = 3", "world size 2"}, 2);
  check_error(R"({"train_batch_size": 30})", {"train_micro_batch_size_per_gpu 7", "world size 4"}, 4);
  check_error(R"({"train_batch_size": 2, "train_micro_batch_size_per_gpu": 4})",
              {"gradient_accumulation_steps 0", "each > 0"}, 1);
  // Only the accumulation steps, or nothing.
  check_error(R"({"gradient_accumulation_steps": 4})",
              {"either train_batch_size or train_micro_batch_size_per_gpu is needed", "alone"});
  check_error("{}", {"either train_batch_size or train_micro_batch_size_per_gpu is needed"});
  check_error(R"({"train_micro_batch_size_per_gpu": 0})", {"train_micro_batch_size_per_gpu 0", "each > 0"});
  check_error(R"({"train_micro_batch_size_per_gpu": -2})", {"train_micro_batch_size_per_gpu -2"});
  check_error(R"({"train_batch_size": 8.5})", {"train_batch_size", "expected an integer, got 8.5"});
  check_error(R"({"train_batch_size": "auto"})", {"train_batch_size", "\"auto\"", "Hugging Face"});
  check_error(R"({"train_batch_size": 8})", {"world size", "must be >= 1"}, 0);
}

// ---- errors -----------------------------------------------------------------------------

TEST_CASE("unknown keys: the full path and the nearest supported key") {
  check_error(R"({"train_batch_sise": 8})", {"train_batch_sise: unsupported key", "nearest supported key: 'train_batch_size'"});
  check_error(R"({"train_batch_size": 8, "zero_optimization": {"stage": 3, "stage3_prefetch_bucket": 5}})",
              {"zero_optimization.stage3_prefetch_bucket: unsupported key",
               "'zero_optimization.stage3_prefetch_bucket_size'"});
  check_error(R"({"train_batch_size": 8, "zero_optimization": {"stage": 3,
                  "offload_optimizer": {"device": "nvme", "nvme_pth": "/x"}}})",
              {"zero_optimization.offload_optimizer.nvme_pth", "'zero_optimization.offload_optimizer.nvme_path'"});
  check_error(R"({"train_batch_size": 8, "optimizer": {"type": "AdamW", "params": {"weight_decy": 0.1}}})",
              {"optimizer.params.weight_decy", "'optimizer.params.weight_decay'"});
  check_error(R"({"train_batch_size": 8, "scheduler": {"type": "WarmupLR", "params": {"warmup_max": 0.1}}})",
              {"scheduler.params.warmup_max", "'scheduler.params.warmup_max_lr'"});
  check_error(R"({"train_batch_size": 8, "aio": {"queue_deep": 4}})", {"aio.queue_deep", "'aio.queue_depth'"});
  check_error(R"({"train_batch_size": 8, "fp16": {"enabled": true, "loss_scal": 0}})", {"fp16.loss_scal", "'fp16.loss_scale'"});
  check_error(R"({"train_batch_size": 8, "data_types": {"grad_acum_dtype": "fp32"}})",
              {"data_types.grad_acum_dtype", "'data_types.grad_accum_dtype'"});
}

TEST_CASE("values zeroblocks cannot honour: the reason") {
  const std::string b = R"("train_batch_size": 8, )";
  auto j = [&](const std::string& rest) { return "{" + b + rest + "}"; };
  check_error(j(R"("fp16": {"enabled": true}, "bf16": {"enabled": true})"), {"fp16 and bf16 are both enabled"});
  check_error(j(R"("zero_optimization": {"stage": 3, "offload_param": {"device": "nvme", "nvme_path": "/x"}})"),
              {"offload_param.device", "needs offload_optimizer.device \"nvme\" too"});
  check_error(j(R"("zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}})"),
              {"zero_optimization.offload_param", "needs ZeRO stage 3", "the stage is 2"});
  check_error(j(R"("zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}})"),
              {"zero_optimization.offload_optimizer", "stages 2 and 3", "use stage 2", "host memory anyway"});
  check_error(j(R"("zero_optimization": {"stage": 0, "offload_optimizer": {"device": "nvme", "nvme_path": "/x"}})"),
              {"zero_optimization.offload_optimizer", "stage2_nvme", "the stage is 0"});
  check_error(j(R"("zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme"}})"),
              {"zero_optimization.offload_optimizer.nvme_path", "needs an nvme_path"});
  check_error(j(R"("zero_optimization": {"stage": 3, "offload_optimizer": {"device": "disk"}})"),
              {"zero_optimization.offload_optimizer.device", "\"disk\" is not one of"});
  check_error(j(R"("zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme", "nvme_path": "/x", "buffer_count": 1}})"),
              {"offload_optimizer.buffer_count", "at least 2 staging buffers"});
  check_error(j(R"("zero_optimization": {"stage": 3, "zero_quantized_weights": true})"),
              {"zero_optimization.zero_quantized_weights", "ZeRO++ quantized weights is not implemented"});
  check_error(j(R"("zero_optimization": {"stage": 3, "zero_hpz_partition_size": 8})"), {"hpZ", "not implemented"});
  check_error(j(R"("zero_optimization": {"stage": 3, "mics_shard_size": 8})"), {"MiCS"});
  check_error(j(R"("zero_optimization": {"stage": 3, "reduce_bucket_size": 0})"),
              {"zero_optimization.reduce_bucket_size", "must be >= 1"});
  check_error(j(R"("zero_optimization": {"stage": 4})"), {"zero_optimization.stage", "must be in [0, 3]"});
  check_error(j(R"("zero_optimization": {"stage": 3, "stage3_max_live_parameters": 1, "max_live_parameters": 2})"),
              {"zero_optimization.max_live_parameters", "given twice"});
  check_error(j(R"("fp16": {"enabled": true, "consecutive_hysteresis": true})"),
              {"fp16.consecutive_hysteresis", "not implemented"});
  check_error(j(R"("fp16": {"enabled": true, "fp16_master_weights_and_grads": true})"), {"fp32 master"});
  check_error(j(R"("fp16": {"enabled": true, "initial_scale_power": 8, "min_loss_scale": 1024})"),
              {"fp16.min_loss_scale", "initial scale"});
  check_error(j(R"("optimizer": {"type": "Lamb", "params": {"lr": 0.1}})"),
              {"optimizer.type", "\"Lamb\"", "no such optimizer", "Adam, AdamW, Lion, SGD"});
  check_error(j(R"("optimizer": {"type": "Adamm"})"), {"optimizer.type", "nearest: \"Adam\""});
  check_error(j(R"("optimizer": {"type": "sgd"})"), {"optimizer.type", "nearest: \"SGD\""});  // torch's name, case-sensitive
  check_error(j(R"("optimizer": {"params": {"lr": 0.1}})"), {"optimizer.type", "missing"});
  check_error(j(R"("optimizer": {"type": "Adam", "params": {"amsgrad": true}})"), {"optimizer.params.amsgrad", "AMSGrad"});
  check_error(j(R"("optimizer": {"type": "Adam", "params": {"bias_correction": false}})"),
              {"optimizer.params.bias_correction", "always corrects"});
  check_error(j(R"("optimizer": {"type": "Adam", "params": {"max_grad_norm": 1.0}})"),
              {"optimizer.params.max_grad_norm", "gradient_clipping"});
  check_error(j(R"("optimizer": {"type": "SGD", "params": {"dampening": 0.1}})"), {"optimizer.params.dampening"});
  check_error(j(R"("optimizer": {"type": "SGD", "params": {"nesterov": true}})"), {"Nesterov needs momentum"});
  check_error(j(R"("optimizer": {"type": "AdamW", "params": {"betas": [0.9, 1.5]}})"), {"optimizer.params.betas", "[0, 1)"});
  check_error(j(R"("scheduler": {"type": "WarmupCosine", "params": {}})"),
              {"scheduler.type", "\"WarmupCosine\"", "nearest: \"WarmupCosineLR\""});
  check_error(j(R"("scheduler": {"type": "OneCycle", "params": {"cycle_min_lr": 0.001, "cycle_max_lr": 0.01}})"),
              {"scheduler.params.cycle_momentum", "changes only the learning rate", "\"cycle_momentum\": false"});
  check_error(j(R"("scheduler": {"type": "OneCycle", "params": {"cycle_max_lr": 0.01, "cycle_momentum": false}})"),
              {"scheduler.params.cycle_min_lr", "missing"});
  check_error(j(R"("scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": 10}})"),
              {"scheduler.params.total_num_steps", "missing"});
  check_error(j(R"("scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": 5, "warmup_num_steps": 10}})"),
              {"scheduler.params", "total_num_steps (5) must be >= warmup_num_steps"});
  check_error(j(R"("scheduler": {"type": "WarmupLR", "params": {"warmup_type": "cosine"}})"),
              {"scheduler.params", "warmup_type \"cosine\""});
  check_error(j(R"("scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": 100}})"),
              {"scheduler", "give an \"optimizer\" block"});
  check_error(j(R"("scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": [0.1, 0.2]}})"),
              {"scheduler.params.warmup_max_lr", "one value per parameter group"});
  check_error(j(R"("scheduler": {"type": "WarmupLR", "params": {"last_batch_iteration": 10}})"),
              {"scheduler.params.last_batch_iteration", "only -1"});
  check_error(j(R"("data_types": {"grad_accum_dtype": "fp16"}, "bf16": {"enabled": true})"),
              {"data_types.grad_accum_dtype", "in the parameter type or in fp32"});
  check_error(j(R"("data_types": {"grad_accum_dtype": "int8"})"),
              {"data_types.grad_accum_dtype", "\"int8\" is not \"fp32\", \"fp16\" or \"bf16\""});
  check_error(j(R"("fp16": {"enabled": true, "loss_scale": -1})"), {"fp16.loss_scale", "must be 0 (dynamic) or a positive"});
  check_error(j(R"("fp16": {"enabled": true, "min_loss_scale": -1})"), {"fp16.min_loss_scale", "must be >= 0"});
  check_error(j(R"("bf16": {"enabled": true}, "bfloat16": {"enabled": true})"), {"bfloat16", "old name"});
  check_error(j(R"("gradient_clipping": -1)"), {"gradient_clipping", "must be >= 0"});
  check_error(j(R"("zero_optimization": {"stage": 2, "cpu_offload": true, "offload_optimizer": {"device": "cpu"}})"),
              {"zero_optimization.cpu_offload", "given together with zero_optimization.offload_optimizer"});
  check_error(j(R"("aio": {"thread_count": 1, "intra_op_parallelism": 2})"), {"aio.intra_op_parallelism", "given twice"});
  check_error(j(R"("optimizer": {"type": "SGD", "params": {"maximize": true}})"), {"optimizer.params.maximize"});
  check_error(j(R"("optimizer": {"type": "AdamW", "params": {"lr": -0.1}})"), {"optimizer.params.lr", "must be >= 0"});
  check_error(j(R"("optimizer": {"type": "AdamW", "params": {"weight_decay": -0.1}})"),
              {"optimizer.params.weight_decay", "must be >= 0"});
  check_error(j(R"("optimizer": {"type": "AdamW", "params": {"eps": 0}})"), {"optimizer.params.eps", "must be > 0"});
  check_error(j(R"("optimizer": {"type": "SGD", "params": {"momentum": 1.0}})"), {"optimizer.params.momentum", "[0, 1)"});
  check_error(j(R"("scheduler": {"params": {}})"), {"scheduler.type", "missing"});
  check_error(j(R"("optimizer": {"type": "AdamW"}, "scheduler": {"type": "WarmupCosineLR", "params": {}})"),
              {"scheduler.params.total_num_steps", "missing"});
  check_error(j(R"("amp": true)"), {"amp", "expected an object"});
  check_error(j(R"("aio": {"block_size": 1000})"), {"aio.block_size", "multiple of 4096"});
  check_error(j(R"("aio": {"use_gds": true})"), {"aio.use_gds", "GPUDirect"});
  check_error(j(R"("amp": {"enabled": true})"), {"amp", "Apex AMP is not implemented"});
  check_error(j(R"("elasticity": {"enabled": true})"), {"elasticity", "not implemented"});
  check_error(j(R"("pipeline": {"stages": 2})"), {"pipeline", "pipeline parallelism"});
  check_error(j(R"("compression_training": {})"), {"compression_training"});
  check_error(j(R"("communication_data_type": "int4")"), {"communication_data_type", "\"int4\""});
  check_error(j(R"("zero_optimization": {"stage": 3, "reduce_bucket_size": "auto"})"),
              {"zero_optimization.reduce_bucket_size", "Hugging Face Trainer"});
}

TEST_CASE("wrong types name the key") {
  const std::string b = R"("train_batch_size": 8, )";
  auto j = [&](const std::string& rest) { return "{" + b + rest + "}"; };
  check_error(j(R"("zero_optimization": {"stage": 3, "reduce_bucket_size": "5e8"})"),
              {"zero_optimization.reduce_bucket_size", "expected an integer, got a string (\"5e8\")"});
  check_error(j(R"("gradient_clipping": "1.0")"), {"gradient_clipping", "expected a number, got a string"});
  check_error(j(R"("zero_optimization": {"stage": 2.5})"), {"zero_optimization.stage", "expected an integer, got 2.5"});
  check_error(j(R"("zero_optimization": [3])"), {"zero_optimization", "expected an object", "a list"});
  check_error(j(R"("fp16": {"enabled": "true"})"), {"fp16.enabled", "expected true or false, got a string"});
  check_error(j(R"("optimizer": {"type": "AdamW", "params": {"betas": [0.9]}})"),
              {"optimizer.params.betas", "a list of two numbers"});
  check_error(j(R"("optimizer": {"type": "AdamW", "params": {"betas": [0.9, "0.99"]}})"),
              {"optimizer.params.betas[1]", "expected a number"});
  check_error(j(R"("optimizer": {"type": "AdamW", "params": {"lr": null}})"), {"optimizer.params.lr", "null"});
  check_error(j(R"("optimizer": {"type": 3})"), {"optimizer.type", "expected a string"});
  check_error(j(R"("scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10.5}})"),
              {"scheduler.params.warmup_num_steps", "expected an integer"});
  check_error(j(R"("zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme", "nvme_path": 7}})"),
              {"zero_optimization.offload_optimizer.nvme_path", "expected a string"});
  check_error(j(R"("steps_per_print": 0)"), {"steps_per_print", "must be >= 1"});
  check_error(j(R"("wall_clock_breakdown": 1)"), {"wall_clock_breakdown", "expected true or false"});
  check_error("[1, 2]", {"expected an object"});
  check_error(j(R"("zero_optimization": {"stage": 3, "reduce_bucket_size": 18446744073709551615})"),
              {"zero_optimization.reduce_bucket_size", "is too large"});
  check_error(j(R"("zero_optimization": {"stage": 3, "reduce_bucket_size": 1e19})"),
              {"zero_optimization.reduce_bucket_size", "is too large"});
  // A json built in code can hold what JSON text cannot: NaN.
  json built = {{"train_batch_size", 8}, {"gradient_clipping", std::numeric_limits<double>::quiet_NaN()}};
  try {
    zb::parse_ds_config(built, 1);
    FAIL_CHECK("no error");
  } catch (const zb::error& e) {
    CHECK(has(e.reason(), "ds_config: gradient_clipping: expected a finite number"));
  }
}

TEST_CASE("syntax errors, duplicate keys and files") {
  // Line and column of the error.
  check_error("{\n  \"train_batch_size\": 8,\n  \"fp16\": {\"enabled\": tru}\n}", {"test.json:3:", "JSON syntax error"});
  check_error("{\"train_batch_size\": 8,}", {"test.json:1:", "JSON syntax error"});
  // Comments are allowed (C and C++ style).
  CHECK(parse("// a comment\n{\"train_batch_size\": 8 /* eight */}").train_batch_size == 8);
  // Duplicate keys, at any depth.
  check_error(R"({"train_batch_size": 8, "train_batch_size": 16})", {"train_batch_size: key given twice"});
  check_error(R"({"train_batch_size": 8, "zero_optimization": {"stage": 2, "stage": 3}})",
              {"zero_optimization.stage: key given twice"});
  CHECK(parse(R"({"train_batch_size": 8, "optimizer": {"type": "AdamW", "params": {"lr": 0.1}},
                  "scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": 0.1}}})").train_batch_size == 8);
  // Files.
  try {
    zb::load_ds_config(ZB_SWAP_TEST_DIR, 1);
    FAIL_CHECK("no error");
  } catch (const zb::error& e) {
    CHECK(has(e.reason(), "is a directory"));
  }
  try {
    zb::load_ds_config("/nonexistent/dir/ds_config.json", 1);
    FAIL_CHECK("no error");
  } catch (const zb::error& e) {
    CHECK(has(e.reason(), "/nonexistent/dir/ds_config.json: cannot open"));
  }
  const std::string path = std::string(ZB_SWAP_TEST_DIR) + "/test_ds_config.json";
  {
    std::ofstream f(path);
    f << "{\n  \"train_batch_size\": 8,\n  \"zero_optimization\": {\"stage\": 2,}\n}\n";
  }
  try {
    zb::load_ds_config(path, 1);
    FAIL_CHECK("no error");
  } catch (const zb::error& e) {
    CHECK(has(e.reason(), path + ":3:"));
  }
  {
    std::ofstream f(path);
    f << R"({"train_batch_size": 8, "zero_optimization": {"stage": 2, "stage3_prefetch_bucket": 1}})";
  }
  try {
    zb::load_ds_config(path, 1);
    FAIL_CHECK("no error");
  } catch (const zb::error& e) {
    CHECK(has(e.reason(), path + ": zero_optimization.stage3_prefetch_bucket: unsupported key"));
  }
  {
    std::ofstream f(path);
    f << R"({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3, "zero_optimization": {"stage": 2}})";
  }
  const auto d = zb::load_ds_config(path, 2);
  CHECK(d.source == path);
  CHECK(d.train_batch_size == 12);
  CHECK(d.preset == zb::ds_preset::stage2);
  std::remove(path.c_str());
}

// ---- warnings -------------------------------------------------------------------------

TEST_CASE("cosmetic keys: one warning line each, naming the key") {
  const auto d = parse(R"json({
    "train_batch_size": 8,
    "bf16": {"enabled": true},
    "prescale_gradients": false,
    "gradient_predivide_factor": 1.0,
    "memory_breakdown": false,
    "zero_allow_untested_optimizer": true,
    "communication_data_type": "bf16",
    "sparse_gradients": false,
    "steps_per_print": 100,
    "tensorboard": {"enabled": true, "output_path": "output/ds_logs/", "job_name": "train_bert"},
    "wandb": {"enabled": true, "group": "my_group", "team": "my_team", "project": "my_project"},
    "csv_monitor": {"enabled": true, "output_path": "output/ds_logs/", "job_name": "train_bert"},
    "comms_logger": {"enabled": true, "verbose": false, "prof_all": true, "debug": false},
    "flops_profiler": {"enabled": false, "profile_step": 1, "module_depth": -1, "top_modules": 1, "detailed": true},
    "activation_checkpointing": {"partition_activations": false, "cpu_checkpointing": false},
    "autotuning": {"enabled": false},
    "fp16": {"enabled": false, "loss_scale": 0}
  })json");
  CHECK(d.dtype == zb::ds_dtype::bf16);
  CHECK(d.steps_per_print == 100);
  const char* keys[] = {"prescale_gradients", "gradient_predivide_factor", "memory_breakdown",
                        "zero_allow_untested_optimizer", "communication_data_type", "sparse_gradients", "tensorboard",
                        "wandb", "csv_monitor", "comms_logger", "flops_profiler", "activation_checkpointing",
                        "autotuning", "test.json: fp16 ="};
  for (const char* k : keys) CHECK_MESSAGE(warnings_with(d, k) == 1, k);
  CHECK(d.warnings.size() == std::size(keys));
  for (const auto& w : d.warnings) {
    CHECK(w.rfind("test.json: ", 0) == 0);
    CHECK(w.find('\n') == std::string::npos);
  }
  CHECK(warnings_with(d, "test.json: prescale_gradients = false: not applied: ") == 1);
  // Keys zeroblocks applies produce no warning.
  CHECK(parse(R"({"train_batch_size": 8, "gradient_clipping": 1.0, "steps_per_print": 10, "wall_clock_breakdown": true,
                  "zero_optimization": {"stage": 3, "reduce_bucket_size": 1000, "overlap_comm": true,
                    "stage3_prefetch_bucket_size": 1, "stage3_param_persistence_threshold": 1,
                    "stage3_max_live_parameters": 1, "stage3_max_reuse_distance": 1}})")
            .warnings.empty());
  // min_loss_scale 0 (no floor, seen in real configs) is honoured as the smallest float.
  const auto m = parse(R"({"train_batch_size": 8, "fp16": {"enabled": true, "min_loss_scale": 0.0}})");
  CHECK(m.fp16.min_loss_scale == std::numeric_limits<float>::min());
  CHECK(warnings_with(m, "fp16.min_loss_scale") == 1);
}

// ---- apply and check_engine -------------------------------------------------------------

TEST_CASE("apply onto stage0, stage3 and infinity configs") {
  const auto d = parse(R"json({
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 2,
    "gradient_clipping": 0.5,
    "bf16": {"enabled": true},
    "data_types": {"grad_accum_dtype": "fp32"},
    "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-6, "weight_decay": 0.1}},
    "scheduler": {"type": "WarmupDecayLR",
                  "params": {"total_num_steps": 100, "warmup_min_lr": 1e-5, "warmup_max_lr": 3e-4,
                             "warmup_num_steps": 10, "warmup_type": "linear"}},
    "zero_optimization": {"stage": 3, "reduce_bucket_size": 5e5, "overlap_comm": false,
      "stage3_prefetch_bucket_size": 2e5, "stage3_param_persistence_threshold": 1e3,
      "stage3_max_live_parameters": 1e6, "stage3_max_reuse_distance": 0, "sub_group_size": 1e6}
  })json", 2);
  CHECK(d.preset == zb::ds_preset::stage3);
  CHECK(d.train_batch_size == 16);

  zb::stage0<zb::comm::self>::config c0;  // bfloat16, all_reduce: no bucket knobs
  zb::apply(d, c0);
  CHECK(c0.optim.lr == 1e-5f);  // the scheduler's lr before the first step (lr(-1) = warmup_min_lr)
  CHECK(c0.optim.beta2 == 0.95f);
  CHECK(c0.optim.eps == 1e-6f);
  CHECK(c0.optim.weight_decay == 0.1f);
  CHECK(c0.optim.decoupled);
  CHECK(c0.step.max_grad_norm == 0.5f);
  [](auto& c) {  // (a template: compiles before and after cfg.step.grad_accum exists)
    if constexpr (requires { c.step.grad_accum; }) CHECK(c.step.grad_accum == decltype(c.step.grad_accum)::fp32);
  }(c0);
  c0.validate();

  zb::stage3<zb::comm::self>::config c3;
  const auto defaults = c3;
  zb::apply(d, c3);
  CHECK(c3.bucket.bucket_numel == std::size_t{500000});
  CHECK(c3.bucket.bucket_count == 1);  // overlap_comm false
  CHECK(c3.coordinate.prefetch_numel == std::size_t{200000});
  CHECK(c3.coordinate.persistence_threshold_numel == std::size_t{1000});
  CHECK(c3.coordinate.max_live_numel == std::size_t{1000000});
  CHECK(c3.coordinate.max_reuse_distance_numel == std::size_t{0});
  CHECK(c3.coordinate.max_inflight == defaults.coordinate.max_inflight);  // no DeepSpeed knob: untouched
  c3.validate();
  zb::check_engine<zb::stage3<zb::comm::self>>(d);
  CHECK(has(check_engine_error<zb::stage2<zb::comm::self>>(d), "ZeRO stage 3 (preset stage3) but the engine is stage 2"));
  CHECK(has(check_engine_error<zb::stage3<zb::comm::self, zb::half>>(d), "trains in bf16"));

  // Keys left out keep the config's values.
  const auto bare = parse(R"({"train_batch_size": 8, "zero_optimization": {"stage": 3}})");
  zb::stage3<zb::comm::self>::config c3b;
  c3b.bucket.bucket_numel = 12345;
  zb::apply(bare, c3b);
  CHECK(c3b.bucket.bucket_numel == std::size_t{12345});
  CHECK(c3b.bucket.bucket_count == defaults.bucket.bucket_count);
  CHECK(c3b.optim.lr == defaults.optim.lr);  // no optimizer block: the trainer's own

  // The NVMe tier: infinity.
  const auto n = parse(R"json({
    "train_batch_size": 8, "bf16": {"enabled": true},
    "zero_optimization": {"stage": 3, "sub_group_size": 4096,
      "offload_optimizer": {"device": "nvme", "nvme_path": "/a", "buffer_count": 3},
      "offload_param": {"device": "nvme", "nvme_path": "/b"}},
    "aio": {"block_size": 262144, "queue_depth": 32, "intra_op_parallelism": 4}
  })json");
  CHECK(n.preset == zb::ds_preset::infinity);
  CHECK(warnings_with(n, "offload_param.nvme_path") == 1);  // two directories: striped
  zb::infinity<zb::comm::self>::config ci;
  zb::apply(n, ci);
  CHECK(ci.master.swap.paths == std::vector<std::string>{"/a", "/b"});
  CHECK(ci.master.sub_group_numel == std::size_t{4096});
  CHECK(ci.master.buffer_count == 3);
  CHECK(ci.master.swap.block_size == std::size_t{262144});
  CHECK(ci.master.swap.queue_depth == 32);
  CHECK(ci.master.swap.threads == 4);
  ci.validate();
  zb::check_engine<zb::infinity<zb::comm::self>>(n);
  // ... and not onto an engine without a tier.
  zb::stage3<zb::comm::self>::config cn;
  CHECK(has(apply_error(n, cn), "has no NVMe tier"));
  // stage2_nvme
  const auto n2 = parse(R"({"train_batch_size": 8, "bf16": {"enabled": true}, "zero_optimization": {"stage": 2,
      "offload_optimizer": {"device": "nvme", "nvme_path": "/a"}}})");
  CHECK(n2.preset == zb::ds_preset::stage2_nvme);
  zb::check_engine<zb::stage2_nvme<zb::comm::self>>(n2);
  const auto n3 = parse(R"({"train_batch_size": 8, "bf16": {"enabled": true}, "zero_optimization": {"stage": 3,
      "offload_optimizer": {"device": "nvme", "nvme_path": "/a"}}})");
  CHECK(n3.preset == zb::ds_preset::stage3_nvme);
  zb::check_engine<zb::stage3_nvme<zb::comm::self>>(n3);
  CHECK(has(check_engine_error<zb::infinity<zb::comm::self>>(n3), "preset stage3_nvme keeps the parameter shard in memory"));
}

namespace {
/// An engine config as it was before `cfg.step.grad_accum` existed (and with no scaler,
/// buckets, coordinator or master knobs): `apply` must compile and refuse fp32 accumulation.
struct old_step_config {
  float max_grad_norm = 0.0f;
};
struct old_engine_config {
  zb::adamw_config optim{};
  zb::no_config scale{};
  old_step_config step{};
  zb::no_config bucket{}, coordinate{}, master{};
};
}  // namespace

TEST_CASE("apply onto a config without step.grad_accum") {
  old_engine_config c;
  const auto param = parse(R"({"train_batch_size": 8, "bf16": {"enabled": true}, "data_types": {"grad_accum_dtype": "bf16"},
                              "gradient_clipping": 2.0})");
  zb::apply(param, c);  // accumulation in the parameter type: what such an engine does
  CHECK(c.step.max_grad_norm == 2.0f);
  const auto f32 = parse(R"({"train_batch_size": 8, "bf16": {"enabled": true}, "data_types": {"grad_accum_dtype": "fp32"}})");
  CHECK(has(apply_error(f32, c), "this engine sums gradients in the parameter type"));
}

TEST_CASE("apply: loss scaling onto scale::dynamic, scale::fixed and scale::none") {
  using dyn_engine = zb::stage2<zb::comm::self, zb::half>;
  using fixed_engine = zb::engine<zb::half, zb::host_space, zb::comm::self, zb::partition::even,
                                  zb::coordinate::resident, zb::bucket::reduce_scatter, zb::master::resident<zb::host_space>,
                                  zb::scale::fixed, zb::optim::adamw>;
  const auto dyn = parse(R"({"train_batch_size": 8, "zero_optimization": {"stage": 2},
      "fp16": {"enabled": true, "initial_scale_power": 12, "loss_scale_window": 500, "hysteresis": 3, "min_loss_scale": 2}})");
  dyn_engine::config cd;
  zb::apply(dyn, cd);
  CHECK(cd.scale.initial_scale == 4096.0f);
  CHECK(cd.scale.growth_interval == 500);
  CHECK(cd.scale.hysteresis == 3);
  CHECK(cd.scale.min_scale == 2.0f);
  cd.validate();
  fixed_engine::config cf;
  CHECK(has(apply_error(dyn, cf), "dynamic loss scaling"));

  const auto stat = parse(R"({"train_batch_size": 8, "zero_optimization": {"stage": 2},
      "fp16": {"enabled": true, "loss_scale": 128}})");
  CHECK(!stat.fp16.dynamic());
  fixed_engine::config cf2;
  zb::apply(stat, cf2);
  CHECK(cf2.scale.scale == 128.0f);
  dyn_engine::config cd2;  // scale::dynamic pinned at 128: never grows, never shrinks
  zb::apply(stat, cd2);
  CHECK(cd2.scale.initial_scale == 128.0f);
  CHECK(cd2.scale.min_scale == 128.0f);
  CHECK(cd2.scale.growth_interval == std::numeric_limits<long>::max());
  cd2.validate();
  zb::scale::dynamic pinned(cd2.scale);
  pinned.update(true);
  pinned.update(false);
  CHECK(pinned.scale() == 128.0f);

  zb::stage2<zb::comm::self, float>::config cnone;  // scale::none
  CHECK(has(apply_error(stat, cnone), "scale::none"));
}

TEST_CASE("apply: optimizers other than AdamW need the engine's optimizer to match") {
  using lion_engine = zb::engine<zb::bfloat16, zb::host_space, zb::comm::self, zb::partition::even,
                                 zb::coordinate::resident, zb::bucket::all_reduce, zb::master::resident<zb::host_space>,
                                 zb::scale::none, zb::optim::lion>;
  using sgd_engine = zb::engine<zb::bfloat16, zb::host_space, zb::comm::self, zb::partition::even,
                                zb::coordinate::resident, zb::bucket::all_reduce, zb::master::resident<zb::host_space>,
                                zb::scale::none, zb::optim::sgd>;
  const auto lion = parse(R"({"train_batch_size": 8, "bf16": {"enabled": true},
      "optimizer": {"type": "lion", "params": {"lr": 1e-4, "betas": [0.95, 0.98], "weight_decay": 1.0}}})");
  lion_engine::config cl;
  zb::apply(lion, cl);
  CHECK(cl.optim.lr == 1e-4f);
  CHECK(cl.optim.beta1 == 0.95f);
  CHECK(cl.optim.beta2 == 0.98f);
  CHECK(cl.optim.weight_decay == 1.0f);
  zb::check_engine<lion_engine>(lion);
  zb::stage0<zb::comm::self>::config ca;
  CHECK(has(apply_error(lion, ca), "build the engine with optim::lion"));
  CHECK(has(check_engine_error<zb::stage0<zb::comm::self>>(lion), "optim::adamw"));

  const auto sgd = parse(R"({"train_batch_size": 8, "bf16": {"enabled": true},
      "optimizer": {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9, "nesterov": true, "weight_decay": 1e-4}}})");
  sgd_engine::config cs;
  zb::apply(sgd, cs);
  CHECK(cs.optim.lr == 0.1f);
  CHECK(cs.optim.momentum == 0.9f);
  CHECK(cs.optim.nesterov);
  CHECK(cs.optim.weight_decay == 1e-4f);
  zb::check_engine<sgd_engine>(sgd);

  // DeepSpeed's Adam: AdamW unless adam_w_mode is false; torch_adam + AdamW defaults wd to 0.01.
  const auto l2 = parse(R"({"train_batch_size": 8, "optimizer": {"type": "Adam", "params": {"adam_w_mode": false, "weight_decay": 0.1}}})");
  CHECK(!l2.optimizer.decoupled);
  zb::stage0<zb::comm::self, float>::config c2;
  zb::apply(l2, c2);
  CHECK(!c2.optim.decoupled);
  const auto tw = parse(R"({"train_batch_size": 8, "optimizer": {"type": "AdamW", "params": {"torch_adam": true}}})");
  CHECK(tw.optimizer.weight_decay == 0.01);
  CHECK(warnings_with(tw, "optimizer.params.torch_adam") == 1);
  const auto ta = parse(R"({"train_batch_size": 8, "optimizer": {"type": "Adam", "params": {"torch_adam": true, "adam_w_mode": false}}})");
  CHECK(ta.optimizer.weight_decay == 0.0);
  const auto aw = parse(R"({"train_batch_size": 8, "optimizer": {"type": "AdamW", "params": {"adam_w_mode": false}}})");
  CHECK(aw.optimizer.decoupled);  // type AdamW wins, as in DeepSpeed
}

TEST_CASE("schedulers become schedule::any with DeepSpeed's values") {
  const auto d = parse(R"json({"train_batch_size": 8,
    "optimizer": {"type": "AdamW", "params": {"lr": 0.002}},
    "scheduler": {"type": "WarmupCosineLR",
                  "params": {"total_num_steps": 100, "warmup_num_steps": 10, "warmup_min_ratio": 0.1,
                             "cos_min_ratio": 0.05, "warmup_type": "linear", "last_batch_iteration": -1}}})json");
  REQUIRE(d.scheduler);
  const auto* c = d.scheduler->get_if<zb::schedule::warmup_cosine_lr>();
  REQUIRE(c);
  CHECK(c->base_lr == 0.002);  // the optimizer's lr
  zb::schedule::warmup_cosine_lr ref{.total_num_steps = 100, .warmup_min_ratio = 0.1, .warmup_num_steps = 10,
                                     .cos_min_ratio = 0.05, .warmup_type = "linear", .base_lr = 0.002};
  for (long s : {-1L, 0L, 5L, 9L, 10L, 50L, 99L, 150L}) CHECK(d.scheduler->lr(s) == ref.lr(s));

  const auto o = parse(R"json({"train_batch_size": 8, "scheduler": {"type": "OneCycle",
      "params": {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "cycle_first_step_size": 10, "cycle_momentum": false}}})json");
  REQUIRE(o.scheduler);
  CHECK(std::string(o.scheduler->name()) == "OneCycle");
  CHECK(o.scheduler->lr(9) == doctest::Approx(1e-3));
  const auto r = parse(R"json({"train_batch_size": 8, "scheduler": {"type": "LRRangeTest",
      "params": {"lr_range_test_min_lr": 1e-4, "lr_range_test_step_size": 10, "lr_range_test_staircase": true}}})json");
  CHECK(r.scheduler->lr(18) == doctest::Approx(2e-4));  // 1e-4 * (1 + floor(19 / 10))
  CHECK(r.scheduler->lr(19) == doctest::Approx(3e-4));
  const auto w = parse(R"json({"train_batch_size": 8, "scheduler": {"type": "WarmupDecayLR",
      "params": {"total_num_steps": 20, "warmup_max_lr": 0.01, "warmup_num_steps": 5, "warmup_type": "linear"}}})json");
  CHECK(w.scheduler->lr(20) == 0.0);
  CHECK(w.scheduler->lr(5) == 0.01);

  zb::schedule::any a;  // a default WarmupLR
  CHECK(std::string(a.name()) == "WarmupLR");
  a.validate();
  a = zb::schedule::lr_range_test{};
  CHECK(a.get_if<zb::schedule::lr_range_test>());
  CHECK(!a.get_if<zb::schedule::warmup_lr>());
  CHECK(a.lr(-1) == 1e-3);
}

TEST_CASE("apply_runtime: the scheduler and the timers go to the engine") {
  const auto d = parse(R"json({"train_batch_size": 8, "wall_clock_breakdown": true,
    "optimizer": {"type": "AdamW", "params": {"lr": 0.01}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0.001, "warmup_max_lr": 0.01,
                                                 "warmup_num_steps": 4, "warmup_type": "linear"}}})json");
  CHECK(d.wall_clock_breakdown);
  zb::param_registry reg;
  const auto w = reg.add("w", {16}, "u");
  using E = zb::stage0<zb::comm::self, float>;
  E::config cfg;
  zb::apply(d, cfg);
  E eng(reg, zb::comm::self{}, cfg);
  eng.set_param(w, std::vector<float>(16, 1.0f));
  // (A template, so that it compiles before and after the engine has these.)
  [&](auto& e) {
    constexpr bool runtime = requires { e.set_lr_schedule([](long) { return 0.0f; }); e.enable_timers(true); };
    if constexpr (runtime) {
      zb::apply_runtime(d, e);
      CHECK(e.has_lr_schedule());
      CHECK(e.timers_enabled());
    }
    // The rates follow DeepSpeed's order: lr(-1), lr(0), lr(1) = 0.001, 0.001, 0.00325.
    // Adam's first steps on a constant gradient move each weight by the rate (bias-corrected
    // m / sqrt(v) = 1; no weight decay).
    const std::vector<float> g(16, 0.5f);
    for (int s = 0; s < 3; ++s) {
      if constexpr (!runtime) e.set_learning_rate(static_cast<float>(d.scheduler->lr(e.steps() - 1)));
      e.begin_micro_step();
      e.grad_ready(w, g);
      e.end_micro_step();
      e.step();
    }
    CHECK(e.steps() == 3);
    const std::vector<float> m = e.gather_master();
    REQUIRE(m.size() >= 16);
    CHECK(m[0] == doctest::Approx(1.0 - 0.001 - 0.001 - 0.00325).epsilon(1e-6));
  }(eng);
}

TEST_CASE("apply_runtime refuses what an engine without a schedule or timers cannot do") {
  struct bare_engine {  // no set_lr_schedule, no enable_timers
    long steps() const { return 0; }
  } bare;
  const auto sched = parse(R"({"train_batch_size": 8, "scheduler": {"type": "WarmupLR"}})");
  const auto timed = parse(R"({"train_batch_size": 8, "wall_clock_breakdown": true})");
  const auto plain = parse(R"({"train_batch_size": 8, "wall_clock_breakdown": false})");
  auto message = [&](const zb::ds_config& d) -> std::string {
    try {
      zb::apply_runtime(d, bare);
    } catch (const zb::error& e) {
      return e.reason();
    }
    return "";
  };
  CHECK(has(message(sched), "scheduler WarmupLR: this engine has no set_lr_schedule"));
  CHECK(has(message(timed), "wall_clock_breakdown: this engine has no timers"));
  CHECK(message(plain).empty());
}

TEST_CASE("summary: one line") {
  const auto d = parse(R"({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "bf16": {"enabled": true},
      "zero_optimization": {"stage": 3}, "optimizer": {"type": "AdamW", "params": {"lr": 0.001}}})", 2);
  const std::string s = d.summary();
  INFO(s);
  CHECK(has(s, "ZeRO stage 3 (preset stage3), bf16, train_batch_size 16 = micro-batch 4 x accumulation 2 x 2 ranks"));
  CHECK(has(s, "AdamW lr 0.001"));
  CHECK(s.find('\n') == std::string::npos);
}
