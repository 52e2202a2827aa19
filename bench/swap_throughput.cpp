/**
 * @file swap_throughput.cpp
 * @brief Sequential read and write throughput of a swap backend over one tier file,
 *        the workload `master::swapped` puts on the disk.
 *
 * The file (`--size` bytes, preallocated by the backend) is written, then read, from
 * end to end in transfers of `--transfer` bytes from a registered staging pool, with
 * `--pool` transfers in flight (the backend cuts each into `--block` requests and keeps
 * `--depth` of them in the kernel). Each direction runs `--reps` times; the best pass
 * is reported, in GB/s (1e9 bytes), as fio reports its bandwidth.
 *
 * `bench/swap_vs_fio.sh` runs this and fio with the same request size, queue depth and
 * file size, and prints the ratios.
 *
 * Usage: bench_swap_throughput --dir D [--backend uring|posix] [--size BYTES]
 *        [--block BYTES] [--depth N] [--threads N] [--transfer BYTES] [--pool N] [--reps N]
 */
#include <zeroblocks/swap/posix.hpp>
#include <zeroblocks/swap/uring.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace zb = zeroblocks;

namespace {

struct options {
  std::string dir = ".";
  std::string backend = "uring";
  std::size_t size = std::size_t{4} << 30;
  std::size_t block = std::size_t{1} << 20;
  int depth = 8;
  int threads = 2;
  std::size_t transfer = std::size_t{64} << 20;
  int pool = 2;
  int reps = 2;
};

std::size_t parse_size(const char* s) {
  char* end = nullptr;
  double v = std::strtod(s, &end);
  switch (end && *end ? *end : ' ') {
    case 'k': case 'K': v *= 1024; break;
    case 'm': case 'M': v *= 1024 * 1024; break;
    case 'g': case 'G': v *= 1024.0 * 1024 * 1024; break;
    default: break;
  }
  return static_cast<std::size_t>(v);
}

template <class Swap>
void run(const options& o) {
  zb::swap_config cfg;
  cfg.paths = {o.dir};
  cfg.block_size = o.block;
  cfg.queue_depth = o.depth;
  cfg.threads = o.threads;
  Swap io(cfg, "bench", 0, o.size);
  zb::staging_pool pool(o.pool, o.transfer, nullptr);
  io.register_buffers(pool.iovecs());
  for (int b = 0; b < pool.count(); ++b) std::memset(pool.data(b), 0x5a + b, pool.bytes());
  const std::size_t n = io.capacity() / o.transfer;
  auto pass = [&](bool write) {
    std::vector<zb::swap_ticket> t(static_cast<std::size_t>(pool.count()));
    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t k = 0; k < n; ++k) {
      auto& slot = t[k % t.size()];
      io.wait(slot);
      std::byte* buf = pool.data(static_cast<int>(k % t.size()));
      slot = write ? io.write(k * o.transfer, buf, o.transfer) : io.read(k * o.transfer, buf, o.transfer);
    }
    for (auto& x : t) io.wait(x);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  const double bytes = static_cast<double>(n * o.transfer);
  double best_w = 1e30, best_r = 1e30;
  for (int r = 0; r < o.reps; ++r) {
    best_w = std::min(best_w, pass(true));
    best_r = std::min(best_r, pass(false));
  }
  std::printf("backend=%s requested=%s size=%zu block=%zu depth=%d threads=%d transfer=%zu pool=%d "
              "write_GBps=%.3f read_GBps=%.3f\n",
              io.backend_name(), Swap::name, n * o.transfer, o.block, o.depth, o.threads, o.transfer, o.pool,
              bytes / best_w / 1e9, bytes / best_r / 1e9);
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const char* v = argv[i + 1];
    if (k == "--dir") o.dir = v;
    else if (k == "--backend") o.backend = v;
    else if (k == "--size") o.size = parse_size(v);
    else if (k == "--block") o.block = parse_size(v);
    else if (k == "--depth") o.depth = std::atoi(v);
    else if (k == "--threads") o.threads = std::atoi(v);
    else if (k == "--transfer") o.transfer = parse_size(v);
    else if (k == "--pool") o.pool = std::atoi(v);
    else if (k == "--reps") o.reps = std::atoi(v);
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  try {
    if (o.backend == "posix") run<zb::swap::posix>(o);
    else run<zb::swap::uring>(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
