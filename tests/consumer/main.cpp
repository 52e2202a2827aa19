// Trains two parameters for a few steps with stage 2 over MPI; prints "consumer ok".
#include <zeroblocks/comm/mpi.hpp>
#include <zeroblocks/zeroblocks.hpp>

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rc = 0;
  {
    namespace zb = zeroblocks;
    zb::param_registry reg;
    auto w = reg.add("w", {10}, "layer");
    zb::stage2<zb::comm::mpi, zb::bfloat16> eng(reg, zb::comm::mpi(MPI_COMM_WORLD));
    eng.set_param(w, std::vector<float>(10, 1.0f));
    for (int s = 0; s < 3; ++s) {
      eng.begin_micro_step();
      std::vector<zb::bfloat16> g(10, zb::bfloat16(0.5f));
      eng.grad_ready(w, g);
      eng.end_micro_step();
      if (!eng.step().applied) rc = 1;
    }
    auto m = eng.gather_master();
    if (!(m[0] < 1.0f)) rc = 1;
    if (eng.rank() == 0) std::printf("consumer %s\n", rc ? "FAILED" : "ok");
  }
  MPI_Finalize();
  return rc;
}
