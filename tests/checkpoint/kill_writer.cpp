// The process kill_trials.sh kills: trains a stage-2 engine and saves a checkpoint after
// every step (keep_last 2) until killed or done. With --verify it loads `latest`
// (verified: sizes, checksums, registry), checks the step count matches the name, trains
// one more step and saves it (which must remove an interrupted save's leftovers) and
// prints "kill_writer: VERIFIED <name>".
//
//   kill_writer DIR [--verify] [--steps N]
#include <zeroblocks/checkpoint/checkpoint.hpp>
#include <zeroblocks/comm/mpi.hpp>

#include "harness.hpp"

#include <mpi.h>

#include <cstdio>
#include <filesystem>
#include <string>

namespace zb = zeroblocks;

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int code = 0;
  try {
    if (argc < 2) throw std::runtime_error("usage: kill_writer DIR [--verify] [--steps N]");
    const std::string dir = argv[1];
    bool verify = false;
    int steps = 1000;
    for (int i = 2; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--verify") verify = true;
      else if (a == "--steps" && i + 1 < argc) steps = std::stoi(argv[++i]);
    }
    zbt::synthetic_model m(400);  // ~193K elements: 2.3 MB of state per checkpoint
    zbt::run_options o;
    using E = zb::stage2<zb::comm::mpi>;
    E eng(m.reg, zb::comm::mpi(MPI_COMM_WORLD), zbt::config_for<E>(o));
    zb::checkpoint::save_options so;
    so.keep_last = 2;
    so.chunk_numel = 4096;  // many small writes: a kill lands inside a file more often
    if (verify) {
      const std::string name = zb::checkpoint::latest(dir);
      if (name.empty()) {
        if (eng.rank() == 0) std::printf("kill_writer: VERIFIED nothing saved yet\n");
      } else {
        zb::checkpoint::load(eng, dir);
        if ("step-" + std::to_string(eng.steps()) != name)
          throw std::runtime_error("latest is " + name + " but it holds step " + std::to_string(eng.steps()));
        zbt::run_micro_steps(eng, m, o, static_cast<int>(eng.steps()));
        eng.step();
        const std::string next = zb::checkpoint::save(eng, dir, so);
        if (eng.rank() == 0) {
          for (const auto& e : std::filesystem::directory_iterator(dir))
            if (e.path().filename().string().rfind(".tmp-", 0) == 0)
              throw std::runtime_error("leftover " + e.path().string() + " survived a save");
          if (zb::checkpoint::latest(dir) != next) throw std::runtime_error("latest is not " + next);
          std::printf("kill_writer: VERIFIED %s, then saved %s\n", name.c_str(), next.c_str());
        }
      }
    } else {
      zbt::init_params(eng, m);
      if (!zb::checkpoint::latest(dir).empty()) zb::checkpoint::load(eng, dir);  // go on from the last one
      for (int s = 0; s < steps; ++s) {
        zbt::run_micro_steps(eng, m, o, static_cast<int>(eng.steps()));
        eng.step();
        zb::checkpoint::save(eng, dir, so);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kill_writer: FAILED: %s\n", e.what());
    code = 1;
  }
  MPI_Finalize();
  return code;
}
