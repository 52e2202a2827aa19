/**
 * @file nvme_step.cpp
 * @brief The optimizer step of the `infinity` preset (fp32 master, m, v and the 16-bit
 *        parameter shard on NVMe) on a
 *        model whose state does not fit in this machine's memory, against the time the
 *        disk alone needs for the step's bytes.
 *
 * One rank (`comm::self`), bf16 parameters, Ψ = `--psi` elements (default 1.75e9: 16Ψ
 * = 28 GB of model state against 24 GiB of RAM; in memory stay the 2Ψ bf16 gradient
 * shard, the staging pools and the gathered units; the bf16 parameters are on disk) in units of `--unit` elements. Each
 * step runs one micro-step that acquires every unit forward and backward and hands a
 * constant gradient over (this part is not timed), then `step()` is timed: the norm
 * pass over the gradient, then the pipeline — read each sub-group's 12 B/element
 * record, update it with the fused kernel, write it and the sub-group's new 2 B/element
 * bf16 parameters to the other slot.
 *
 * Two I/O bounds, with the bytes the tier really moved in that step and fio's figures
 * (io_uring, O_DIRECT, same request size and depth) passed in by `bench/nvme_step.sh`:
 * "separate" = bytes_read / fio_read_bw + bytes_written / fio_write_bw (reads and
 * writes one after the other), "mixed" = all bytes / fio's 50/50 mixed read+write
 * bandwidth (reads and writes at once, as the pipeline issues them). Printed: step time
 * / bound (goal ≤ 1.15). The first step reads never-written (preallocated, unwritten)
 * extents, which the filesystem answers with zeros without touching the disk: only the
 * second and later steps measure real reads. Parameters start at zero (no `set_param`: initialising 28 GB through the
 * tier would cost another full pass and measures nothing new).
 *
 * Usage: bench_nvme_step --dir D --fio-read-gbps R --fio-write-gbps W [--psi N]
 *        [--fio-mixed-gbps M] [--unit N] [--sub-group N] [--buffers N] [--block BYTES] [--depth N] [--steps N]
 *        [--backend uring|posix]
 */
#include <zeroblocks/zeroblocks.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace zb = zeroblocks;

namespace {

template <class Swap>
int run(int argc, char** argv) {
  std::string dir = ".";
  double fio_r = 0, fio_w = 0, fio_m = 0;
  std::size_t psi = 1'750'000'000, unit = std::size_t{1} << 24, sub_group = std::size_t{1} << 24;
  std::size_t block = std::size_t{1} << 20;
  int buffers = 4, depth = 8, steps = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const char* v = argv[i + 1];
    if (k == "--dir") dir = v;
    else if (k == "--fio-read-gbps") fio_r = std::atof(v);
    else if (k == "--fio-write-gbps") fio_w = std::atof(v);
    else if (k == "--fio-mixed-gbps") fio_m = std::atof(v);
    else if (k == "--psi") psi = static_cast<std::size_t>(std::atof(v));
    else if (k == "--unit") unit = static_cast<std::size_t>(std::atof(v));
    else if (k == "--sub-group") sub_group = static_cast<std::size_t>(std::atof(v));
    else if (k == "--buffers") buffers = std::atoi(v);
    else if (k == "--block") block = static_cast<std::size_t>(std::atof(v));
    else if (k == "--depth") depth = std::atoi(v);
    else if (k == "--steps") steps = std::atoi(v);
  }
  zb::param_registry reg;
  std::vector<zb::param_id> params;
  for (std::size_t done = 0, i = 0; done < psi; ++i) {
    const std::size_t n = std::min(unit, psi - done);
    params.push_back(reg.add("layer" + std::to_string(i) + ".w", {n}, "layer" + std::to_string(i)));
    done += n;
  }
  using engine = zb::infinity<zb::comm::self, zb::bfloat16, Swap>;
  typename engine::config cfg;
  cfg.master.swap.paths = {dir};
  cfg.master.swap.block_size = block;
  cfg.master.swap.queue_depth = depth;
  cfg.master.sub_group_numel = sub_group;
  cfg.master.buffer_count = buffers;
  engine eng(reg, zb::comm::self{}, cfg);
  const auto& tier = eng.master_state();
  std::printf("psi=%zu (16*psi = %.1f GB of model state), units=%zu of %zu, sub-group %zu x %d buffers, "
              "backend %s, block %zu, depth %d\n",
              psi, 16.0 * static_cast<double>(psi) / 1e9, params.size(), unit, sub_group, buffers,
              tier.backend().backend_name(), block, depth);
  const auto& mem = eng.memory();
  std::printf("memory held: params16 %.2f GB, grads16 %.2f GB, staging %.2f GB, total %.2f GB; tier files %.1f GB\n",
              mem[zb::mem_category::params16] / 1e9, mem[zb::mem_category::grads16] / 1e9,
              mem[zb::mem_category::staging] / 1e9, mem.total() / 1e9, tier.stats().file_bytes / 1e9);
  std::vector<zb::bfloat16> grad(unit, zb::from_float<zb::bfloat16>(1e-3f));
  for (int s = 0; s < steps; ++s) {
    eng.begin_micro_step();
    for (std::size_t u = 0; u < params.size(); ++u) (void)eng.acquire({u});
    for (std::size_t u = params.size(); u-- > 0;) {
      auto g = eng.acquire({u});
      eng.grad_ready(params[u], {grad.data(), eng.model_layout().param(u).numel});
    }
    eng.end_micro_step();
    const auto before = tier.stats();
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = eng.step();
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto after = tier.stats();
    const double rb = static_cast<double>(after.io.bytes_read - before.io.bytes_read);
    const double wb = static_cast<double>(after.io.bytes_written - before.io.bytes_written);
    std::printf("step %d: applied %d  time %.2f s  read %.2f GB  written %.2f GB (payload: state %.2f GB = 12*psi, "
                "16-bit params %.2f GB = 2*psi)",
                s + 1, r.applied, t, rb / 1e9, wb / 1e9, (after.payload_written - before.payload_written) / 1e9,
                (after.param_payload_written - before.param_payload_written) / 1e9);
    if (fio_r > 0 && fio_w > 0) {
      const double bound = rb / (fio_r * 1e9) + wb / (fio_w * 1e9);
      std::printf("  I/O bound (separate) %.2f s  ratio %.3f", bound, t / bound);
    }
    if (fio_m > 0) {
      const double bound = (rb + wb) / (fio_m * 1e9);
      std::printf("  I/O bound (mixed) %.2f s  ratio %.3f", bound, t / bound);
    }
    if (fio_r > 0 || fio_m > 0) std::printf("  (goal <= 1.15)");
    std::printf("\n");
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    for (int i = 1; i + 1 < argc; i += 2)
      if (std::string(argv[i]) == "--backend" && std::string(argv[i + 1]) == "posix")
        return run<zb::swap::posix>(argc, argv);
    return run<zb::swap::uring>(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
