// zeroblocks-export: a checkpoint as one safetensors file, offline (no MPI, no engine),
// streamed with memory bounded by --chunk-numel whatever the model's size.
//
//   zeroblocks-export CKPT_DIR [NAME] OUT.safetensors [--dtype fp32|bf16|fp16]
//                     [--optimizer-state] [--chunk-numel N]
// NAME defaults to the one CKPT_DIR/latest names.
#include <zeroblocks/checkpoint/checkpoint.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace zb = zeroblocks;

int main(int argc, char** argv) {
  const char* usage =
      "usage: zeroblocks-export CKPT_DIR [NAME] OUT.safetensors [--dtype fp32|bf16|fp16] [--optimizer-state]\n"
      "                         [--chunk-numel N]\n";
  std::vector<std::string> pos;
  zb::checkpoint::export_options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(usage, stdout);
      return 0;
    } else if (a == "--optimizer-state") {
      o.optimizer_state = true;
    } else if ((a == "--dtype" || a == "--chunk-numel") && i + 1 < argc) {
      const std::string v = argv[++i];
      if (a == "--dtype") o.dtype = v;
      else {
        char* end = nullptr;
        const unsigned long long n = std::strtoull(v.c_str(), &end, 10);
        if (v.empty() || *end || n == 0) {
          std::fprintf(stderr, "zeroblocks-export: --chunk-numel wants a count >= 1, got '%s'\n%s", v.c_str(), usage);
          return 2;
        }
        o.chunk_numel = static_cast<std::size_t>(n);
      }
    } else if (a.rfind("--", 0) == 0) {
      std::fprintf(stderr, "zeroblocks-export: unknown option %s\n%s", a.c_str(), usage);
      return 2;
    } else {
      pos.push_back(a);
    }
  }
  if (pos.size() != 2 && pos.size() != 3) {
    std::fputs(usage, stderr);
    return 2;
  }
  const std::string dir = pos[0], name = pos.size() == 3 ? pos[1] : "", out = pos.back();
  try {
    zb::checkpoint::export_safetensors(dir, name, out, o);
    std::printf("zeroblocks-export: wrote %s (%s%s)\n", out.c_str(), o.dtype.c_str(),
                o.optimizer_state ? ", with optimizer state" : "");
  } catch (const zb::error& e) {
    std::fprintf(stderr, "zeroblocks-export: %s\n", e.what());
    return 1;
  }
  return 0;
}
