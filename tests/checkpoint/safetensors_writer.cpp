// Writes what check_safetensors.py reads back with Python's safetensors and numpy:
// a 2-rank stage-0 run saves a checkpoint (each rank writes half of it), and rank 0,
// which holds the whole state in memory (stage 0), writes `expected.json` — every
// parameter's name, shape, fp32 master and AdamW m and v from the engine's memory —
// then exports the checkpoint as safetensors in fp32 (with optimizer state), bf16 and
// fp16 through the library. The zeroblocks-export tool writes a fourth copy (the
// script runs it).
//
//   safetensors_writer DIR
#include <zeroblocks/checkpoint/checkpoint.hpp>
#include <zeroblocks/comm/mpi.hpp>

#include "harness.hpp"

#include <mpi.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace zb = zeroblocks;

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int code = 0;
  try {
    if (argc != 2) throw std::runtime_error("usage: safetensors_writer DIR");
    const std::string dir = argv[1];
    zbt::synthetic_model m(3);
    zbt::run_options o;
    using E = zb::stage0<zb::comm::mpi>;
    E eng(m.reg, zb::comm::mpi(MPI_COMM_WORLD), zbt::config_for<E>(o));
    zbt::init_params(eng, m);
    for (int s = 0; s < 3; ++s) {
      zbt::run_micro_steps(eng, m, o, s);
      eng.step();
    }
    const std::string name = zb::checkpoint::save(eng, dir);
    if (eng.rank() == 0) {
      nlohmann::ordered_json ex;
      std::vector<std::vector<float>> arrays(E::state_arrays);
      for (const auto& seg : eng.load_segments()) {  // stage 0: every element, in layout order
        const auto& d = eng.registry().params()[seg.param];
        auto& j = ex[d.name];
        if (!j.contains("shape")) {
          j["shape"] = d.shape;
          for (int a = 0; a < E::state_arrays; ++a) j[std::to_string(a)] = nlohmann::json::array();
        }
        for (int a = 0; a < E::state_arrays; ++a) {
          arrays[a].resize(seg.count);
          eng.read_state(a, seg.master_offset, arrays[a].data(), seg.count);
          for (float v : arrays[a]) j[std::to_string(a)].push_back(v);
        }
      }
      for (const auto& d : eng.registry().params())
        if (!ex.contains(d.name)) ex[d.name] = {{"shape", d.shape}, {"0", nlohmann::json::array()},
                                                {"1", nlohmann::json::array()}, {"2", nlohmann::json::array()}};
      std::ofstream(dir + "/expected.json") << ex.dump();
      zb::checkpoint::export_options eo;
      eo.optimizer_state = true;
      eo.chunk_numel = 100;  // many chunks per tensor
      zb::checkpoint::export_safetensors(dir, name, dir + "/model-fp32.safetensors", eo);
      eo.optimizer_state = false;
      eo.dtype = "bf16";
      zb::checkpoint::export_safetensors(dir, "", dir + "/model-bf16.safetensors", eo);
      eo.dtype = "fp16";
      zb::checkpoint::export_safetensors(dir, name, dir + "/model-fp16.safetensors", eo);
      std::printf("safetensors_writer: wrote %s and three exports\n", name.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "safetensors_writer: FAILED: %s\n", e.what());
    code = 1;
  }
  MPI_Finalize();
  return code;
}
