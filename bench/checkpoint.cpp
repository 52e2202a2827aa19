// bench_checkpoint: checkpoint save and load throughput of one rank (comm::self), the
// time training is blocked by async_saver::save against a plain memcpy of the same
// state, in one run. bench/checkpoint.sh puts the throughputs next to fio's and
// measures the offline export's peak memory.
//
//   bench_checkpoint --dir DIR [--numel N] [--reps R]
// Prints "RESULT checkpoint save_MBps=... load_MBps=... state_bytes=...",
// "RESULT async blocked_s=... memcpy_s=... ratio=..." (goal ratio <= 1.5).
#include <zeroblocks/checkpoint/checkpoint.hpp>
#include <zeroblocks/zeroblocks.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace zb = zeroblocks;
using clock_type = std::chrono::steady_clock;

static double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

static void drop_caches() {
  if (FILE* f = std::fopen("/proc/sys/vm/drop_caches", "w")) {  // root only: loads then read the disk
    ::sync();
    std::fputs("3\n", f);
    std::fclose(f);
  }
}

int main(int argc, char** argv) {
  std::string dir;
  std::size_t numel = std::size_t{1} << 24;  // 16 Mi elements: 192 MiB of fp32 master, m, v
  int reps = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--dir") dir = argv[i + 1];
    else if (a == "--numel") numel = std::stoull(argv[i + 1]);
    else if (a == "--reps") reps = std::stoi(argv[i + 1]);
  }
  if (dir.empty()) {
    std::fprintf(stderr, "usage: bench_checkpoint --dir DIR [--numel N] [--reps R]\n");
    return 2;
  }
  using E = zb::stage0<zb::comm::self>;
  zb::param_registry reg;
  const std::size_t units = 16;
  for (std::size_t u = 0; u < units; ++u)
    reg.add("w" + std::to_string(u), {numel / units}, "u" + std::to_string(u));
  E eng(reg, {});
  for (std::size_t p = 0; p < units; ++p) {
    std::vector<float> v(numel / units);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = 1e-3f * static_cast<float>((i * 7 + p) % 1000);
    eng.set_param({p}, v);
  }
  const double bytes = static_cast<double>(numel / units * units) * 4.0 * E::state_arrays;
  double best_save = 1e30, best_load = 1e30, best_block = 1e30, best_copy = 1e30;
  for (int r = 0; r < reps; ++r) {
    std::filesystem::remove_all(dir);
    zb::checkpoint::save_options so;
    so.name = "bench";
    auto t0 = clock_type::now();
    zb::checkpoint::save(eng, dir, so);
    best_save = std::min(best_save, seconds_since(t0));
    drop_caches();
    t0 = clock_type::now();
    zb::checkpoint::load(eng, dir, "bench");
    best_load = std::min(best_load, seconds_since(t0));
    // async: the time save() blocks (the snapshot) against a memcpy of the same bytes.
    std::filesystem::remove_all(dir);
    zb::checkpoint::async_saver<E> saver(eng);
    saver.save(dir, so);  // the first save allocates the snapshot buffer
    saver.wait();
    so.name = "bench2";
    t0 = clock_type::now();
    saver.save(dir, so);  // steady state: what every later save blocks
    best_block = std::min(best_block, seconds_since(t0));
    saver.wait();
    so.name = "bench";
    std::vector<float> src(static_cast<std::size_t>(bytes / 4), 1.0f), dst(src.size());
    t0 = clock_type::now();
    std::memcpy(dst.data(), src.data(), src.size() * sizeof(float));
    best_copy = std::min(best_copy, seconds_since(t0));
    if (dst[dst.size() / 2] != 1.0f) return 1;
  }
  std::printf("RESULT checkpoint state_bytes=%.0f save_s=%.4f load_s=%.4f save_MBps=%.1f load_MBps=%.1f\n", bytes,
              best_save, best_load, bytes / best_save / 1e6, bytes / best_load / 1e6);
  std::printf("RESULT async blocked_s=%.4f memcpy_s=%.4f ratio=%.2f (goal <= 1.5)\n", best_block, best_copy,
              best_block / best_copy);
  return 0;
}
