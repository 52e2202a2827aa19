// zeroblocks-plan: per-rank memory by category, NVMe disk per rank and elements
// communicated per step, for a model on any number of ranks (up to 65,536), without
// running them. The figures come from the engine's own static estimators
// (zeroblocks/plan.hpp); a test asserts they equal what the engine reports at run time.
//
//   zeroblocks-plan --model 7b --world 8,64,1024 --preset stage1,stage2,stage3,infinity
//   zeroblocks-plan --params 1.5G --units 48 --world 16 --preset all --dtype fp16
//   zeroblocks-plan --registry model.txt --world 4 --preset stage3 --max-live-numel 1e8
#include <zeroblocks/plan.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace zb = zeroblocks;

namespace {

const char* usage =
    "usage: zeroblocks-plan MODEL [--world N[,N...]] [--preset P[,P...]|all] [--dtype bf16|fp16|fp32]\n"
    "                       [--micro-steps G] [--grad-accum auto|param|fp32] [KNOBS]\n"
    "MODEL (one of):\n"
    "  --model 7b|13b|70b          LLaMA-2 shapes (70b with grouped-query attention, 8 KV heads)\n"
    "  --llama H,L,F,V[,KV]        a LLaMA-style decoder: hidden, layers, MLP width, vocabulary[, KV width]\n"
    "  --params N [--units U]      N parameters in U equal units (default: one per 100M, at least 1)\n"
    "  --registry FILE             one parameter per line: name unit dims [group] (dims like 4096x11008)\n"
    "KNOBS (the engine's defaults unless given; numbers take K, M, G suffixes or 1e9 forms):\n"
    "  --bucket-numel N  --bucket-count N  --prefetch-numel N  --max-live-numel N\n"
    "  --max-reuse-numel N  --persistence N  --sub-group-numel N  --buffer-count N  --chunk-numel N\n"
    "  --align N\n"
    "Presets: stage0 stage1 stage2 stage3 stage3_on_demand stage2_offload stage3_offload stage2_nvme\n"
    "stage3_nvme infinity (default: stage1,stage2,stage3,infinity). Memory is per rank, at rest (a\n"
    "stage-3 step gathers units on top, bounded by the prefetch knobs); 'host' is the part of it in\n"
    "pinned host memory (ZeRO-Offload); elements per step are this rank's collectives' payload in a\n"
    "steady-state step (every unit acquired forward then backward in each micro-step).\n";

[[noreturn]] void die(const std::string& m) {
  std::fprintf(stderr, "zeroblocks-plan: %s\n%s", m.c_str(), usage);
  std::exit(2);
}

/// "7e9", "1.5G", "350M", "4096" → count.
std::size_t number(const std::string& s, const char* what) {
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    die(std::string("bad number for ") + what + ": '" + s + "'");
  }
  double mult = 1;
  if (used + 1 == s.size()) {
    switch (s.back()) {
      case 'K': case 'k': mult = 1e3; break;
      case 'M': case 'm': mult = 1e6; break;
      case 'G': case 'g': case 'B': case 'b': mult = 1e9; break;
      default: die(std::string("bad suffix for ") + what + ": '" + s + "'");
    }
  } else if (used != s.size()) {
    die(std::string("bad number for ") + what + ": '" + s + "'");
  }
  v *= mult;
  if (!(v >= 0) || v > 1.8e19 || std::floor(v) != v) die(std::string(what) + " must be a whole number >= 0: '" + s + "'");
  return static_cast<std::size_t>(v);
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream is(s);
  for (std::string t; std::getline(is, t, ',');)
    if (!t.empty()) out.push_back(t);
  return out;
}

std::string gib(std::size_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return b;
}
std::string count(double n) {
  char b[32];
  if (n >= 1e9) std::snprintf(b, sizeof b, "%.3gG", n / 1e9);
  else if (n >= 1e6) std::snprintf(b, sizeof b, "%.3gM", n / 1e6);
  else if (n >= 1e3) std::snprintf(b, sizeof b, "%.3gK", n / 1e3);
  else std::snprintf(b, sizeof b, "%.0f", n);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string model, llama_arg, registry_file, dtype = "bf16";
  std::size_t params = 0, units = 0;
  std::vector<int> worlds = {8};
  std::vector<std::string> presets = {"stage1", "stage2", "stage3", "infinity"};
  zb::plan::knobs k;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::fputs(usage, stdout);
      return 0;
    }
    if (i + 1 >= args.size()) die("missing value after " + a);
    const std::string& v = args[++i];
    if (a == "--model") model = v;
    else if (a == "--llama") llama_arg = v;
    else if (a == "--params") params = number(v, "--params");
    else if (a == "--units") units = number(v, "--units");
    else if (a == "--registry") registry_file = v;
    else if (a == "--dtype") dtype = v;
    else if (a == "--micro-steps") k.micro_steps = static_cast<int>(number(v, "--micro-steps"));
    else if (a == "--grad-accum") {
      if (v == "auto") k.grad_accum = zb::grad_accum_dtype::automatic;
      else if (v == "param") k.grad_accum = zb::grad_accum_dtype::param;
      else if (v == "fp32") k.grad_accum = zb::grad_accum_dtype::fp32;
      else die("--grad-accum " + v + " must be auto, param or fp32");
    }
    else if (a == "--world") {
      worlds.clear();
      for (const auto& w : split(v)) {
        const std::size_t n = number(w, "--world");
        if (n < 1 || n > 65536) die("--world " + w + " must be in [1, 65536]");
        worlds.push_back(static_cast<int>(n));
      }
    } else if (a == "--preset") presets = v == "all" ? zb::plan::presets() : split(v);
    else if (a == "--bucket-numel") k.bucket_numel = number(v, a.c_str());
    else if (a == "--bucket-count") k.bucket_count = static_cast<int>(number(v, a.c_str()));
    else if (a == "--prefetch-numel") k.prefetch_numel = number(v, a.c_str());
    else if (a == "--max-live-numel") k.max_live_numel = number(v, a.c_str());
    else if (a == "--max-reuse-numel") k.max_reuse_distance_numel = number(v, a.c_str());
    else if (a == "--persistence") k.persistence_threshold_numel = number(v, a.c_str());
    else if (a == "--sub-group-numel") k.sub_group_numel = number(v, a.c_str());
    else if (a == "--buffer-count") k.buffer_count = static_cast<int>(number(v, a.c_str()));
    else if (a == "--chunk-numel") k.chunk_numel = number(v, a.c_str());
    else if (a == "--align") k.align_numel = number(v, a.c_str());
    else die("unknown option " + a);
  }
  try {
    zb::param_registry reg;
    std::string what;
    const int sources = !model.empty() + !llama_arg.empty() + (params > 0) + !registry_file.empty();
    if (sources != 1) die("give exactly one of --model, --llama, --params, --registry");
    if (!model.empty()) {
      zb::plan::llama_shape s;
      if (model == "7b") s = {4096, 32, 11008, 32000, 0};
      else if (model == "13b") s = {5120, 40, 13824, 32000, 0};
      else if (model == "70b") s = {8192, 80, 28672, 32000, 1024};
      else die("--model " + model + ": known are 7b, 13b, 70b");
      reg = zb::plan::llama(s);
      what = "LLaMA-2 " + model;
    } else if (!llama_arg.empty()) {
      std::vector<std::size_t> d;
      for (const auto& x : split(llama_arg)) d.push_back(number(x, "--llama"));
      if (d.size() != 4 && d.size() != 5) die("--llama wants H,L,F,V[,KV]");
      reg = zb::plan::llama({d[0], d[1], d[2], d[3], d.size() == 5 ? d[4] : 0});
      what = "LLaMA-style " + llama_arg;
    } else if (params > 0) {
      if (units == 0) units = std::max<std::size_t>(1, params / 100'000'000);
      reg = zb::plan::uniform(params, units);
      what = std::to_string(units) + " equal units";
    } else {
      std::ifstream f(registry_file);
      if (!f) die("cannot read " + registry_file);
      reg = zb::plan::from_text(f);
      what = registry_file;
    }
    std::size_t raw = 0;
    for (const auto& p : reg.params()) raw += p.numel;
    std::printf("zeroblocks-plan: %s: %s parameters, %zu units; %s, AdamW, %d micro-step(s) per step\n", what.c_str(),
                count(static_cast<double>(raw)).c_str(), reg.units().size(), dtype.c_str(), k.micro_steps);
    std::printf("memory per rank in GiB at rest (master+optim: fp32 master and AdamW m, v; NVMe presets: on disk "
                "instead, staged); grads: 16-bit and fp32 (bf16 accumulates in fp32 unless --grad-accum param);\n"
                "elements: this rank's payload per step\n\n");
    std::printf("%-17s %6s %9s %9s %13s %8s %10s %8s %10s %8s %10s %10s %12s\n", "preset", "ranks", "params16",
                "grads", "master+optim", "buckets", "persistent", "staging", "total", "host", "ZeRO", "disk",
                "elements");
    for (const auto& preset : presets)
      for (int w : worlds) {
        const auto r = zb::plan::estimate(preset, dtype, reg, w, k);
        const auto& m = r.memory;
        using c = zb::mem_category;
        std::size_t total = 0;
        for (auto b : m.current) total += b;
        std::printf("%-17s %6d %9s %9s %13s %8s %10s %8s %10s %8s %10s %10s %12s\n", preset.c_str(), w,
                    gib(m[c::params16]).c_str(), gib(m[c::grads16] + m[c::grads32]).c_str(),
                    gib(m[c::master_fp32] + m[c::adam_m] + m[c::adam_v]).c_str(), gib(m[c::buckets]).c_str(),
                    gib(m[c::persistent]).c_str(), gib(m[c::staging]).c_str(), gib(total).c_str(),
                    gib(r.host_bytes).c_str(), gib(r.formula_bytes).c_str(), gib(r.disk_bytes).c_str(),
                    count(static_cast<double>(r.traffic.payload())).c_str());
      }
  } catch (const zb::error& e) {
    std::fprintf(stderr, "zeroblocks-plan: %s\n", e.what());
    return 1;
  }
  return 0;
}
