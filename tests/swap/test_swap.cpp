// The swap backends, each run through the same bodies (swap::uring and swap::posix):
//  - round trips at sizes and offsets that are not multiples of the block or of the
//    request size, striped over one, two and three directories, with many transfers in
//    flight at once, into registered (staging_pool) and plain buffers;
//  - the striping layout itself: a stripe lands in the file and at the offset the
//    documented formula gives (read back with plain pread);
//  - faults injected through the hook (EIO, ENOSPC, short transfers) fail the ticket
//    with file, offset and cause, and leave what was on disk before untouched;
//  - a real ENOSPC, on a private 8 MiB tmpfs (zbt::small_fs; never the disk the suite
//    runs on): a tier larger than the free space fails at construction naming the file,
//    leaves no file behind and gives the space back;
//  - a transfer that hangs past swap.timeout_s: the wait fails, names the oldest
//    transfer in flight (the one the device did not answer) and the backend takes no more;
//  - bad input (unaligned offsets and buffers, past the end, no paths, a bad block size);
//  - ZEROBLOCKS_SWAP=posix makes swap::uring run (and say it runs) the posix engine.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <zeroblocks/swap/posix.hpp>
#include <zeroblocks/swap/uring.hpp>

#include "error_of.hpp"
#include "scratch_fs.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cerrno>
#include <iterator>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace zb = zeroblocks;
namespace fs = std::filesystem;
using zbt::error_of;
using zbt::has;

namespace {

/// The test's scratch root: $ZB_SWAP_TEST_DIR, else the build tree (a real disk
/// filesystem with O_DIRECT).
fs::path scratch_root() {
  const char* root = std::getenv("ZB_SWAP_TEST_DIR");
  return fs::path(root && *root ? root : ZB_SWAP_TEST_DIR);
}

/// A fresh directory under the scratch root, removed at scope end.
struct scratch {
  fs::path dir;
  explicit scratch(const std::string& name) {
    dir = scratch_root() / ("swap-" + name + "-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~scratch() { fs::remove_all(dir); }
  std::string sub(const std::string& s) const {
    fs::create_directories(dir / s);
    return (dir / s).string();
  }
  std::size_t files() const {
    std::size_t n = 0;
    for (auto& e : fs::recursive_directory_iterator(dir)) n += e.is_regular_file();
    return n;
  }
};

zb::swap_config config_for(std::vector<std::string> paths, std::size_t block = 64 * 1024, int depth = 4) {
  zb::swap_config c;
  c.paths = std::move(paths);
  c.block_size = block;
  c.queue_depth = depth;
  c.threads = 2;
  return c;
}

void fill_random(std::byte* p, std::size_t n, unsigned seed) {
  std::mt19937 g(seed);
  for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<std::byte>(g() & 0xff);
}

}  // namespace

TEST_CASE_TEMPLATE("round trips at awkward sizes, striped over 1-3 directories", Swap, zb::swap::uring,
                   zb::swap::posix) {
  scratch s("roundtrip");
  for (int nd = 1; nd <= 3; ++nd) {
    std::vector<std::string> paths;
    for (int d = 0; d < nd; ++d) paths.push_back(s.sub("d" + std::to_string(nd) + std::to_string(d)));
    const std::size_t block = 64 * 1024;
    Swap io(config_for(paths, block, 3), "rt", 0, 5 * block + 777);  // capacity rounds to blocks
    CAPTURE(nd);
    CHECK(io.capacity() == 6 * block);
    CHECK(io.files().size() == static_cast<std::size_t>(nd));
    // Each file holds its share of the 6 stripes, preallocated.
    std::size_t total = 0;
    for (auto& f : io.files()) total += fs::file_size(f);
    CHECK(total == 6 * block);

    zb::memory_tracker tr;
    zb::staging_pool pool(2, 6 * block, &tr);
    CHECK(tr.report()[zb::mem_category::staging] == 2 * 6 * block);
    if constexpr (std::is_same_v<Swap, zb::swap::uring>) {
      io.register_buffers(pool.iovecs());
      MESSAGE("backend " << std::string(io.backend_name()) << ", buffers registered " << io.buffers_registered()
                         << ", files registered " << io.files_registered());
    }
    // Sizes off the 4 KiB block and off the request size, at block-aligned offsets,
    // some crossing stripes; several in flight at once.
    const std::size_t sizes[] = {1, 4095, 4097, block - 1, block + 1, 2 * block + 4096 + 13, 5 * block + 777};
    const std::size_t offsets[] = {0, 4096, block - 4096, 3 * block, block + 8192, 0, 0};
    std::vector<std::vector<std::byte>> want;
    unsigned seed = 1;
    for (std::size_t k = 0; k < std::size(sizes); ++k) {
      CAPTURE(sizes[k]);
      std::memset(pool.data(0), 0, pool.bytes());
      fill_random(pool.data(0), sizes[k], seed);
      want.emplace_back(pool.data(0), pool.data(0) + sizes[k]);
      auto w = io.write(offsets[k], pool.data(0), sizes[k]);
      io.wait(w);
      std::memset(pool.data(1), 0xab, pool.bytes());
      auto r = io.read(offsets[k], pool.data(1), sizes[k]);
      io.wait(r);
      CHECK(std::memcmp(pool.data(1), want.back().data(), sizes[k]) == 0);
      ++seed;
    }
    // Plain (unregistered) aligned buffers, 24 transfers in flight, then read back.
    std::vector<zb::buffer<std::byte, zb::host_space>> bufs;
    std::vector<zb::swap_ticket> tickets;
    for (int k = 0; k < 24; ++k) {
      bufs.emplace_back(2 * 4096, zb::mem_category::other, nullptr, zb::swap_block_align);
      fill_random(bufs.back().data(), 2 * 4096, 100 + k);
      tickets.push_back(io.write(static_cast<std::size_t>(k) * 8192, bufs.back().data(), 8192 - 5));
    }
    for (auto& t : tickets) io.wait(t);
    tickets.clear();
    std::vector<zb::buffer<std::byte, zb::host_space>> back;
    for (int k = 0; k < 24; ++k) {
      back.emplace_back(2 * 4096, zb::mem_category::other, nullptr, zb::swap_block_align);
      tickets.push_back(io.read(static_cast<std::size_t>(k) * 8192, back.back().data(), 8192));
    }
    for (auto& t : tickets) io.wait(t);
    for (int k = 0; k < 24; ++k) CHECK(std::memcmp(back[k].data(), bufs[k].data(), 8192 - 5) == 0);
    const auto st = io.stats();
    CHECK(st.reads == std::size(sizes) + 24);
    CHECK(st.writes == std::size(sizes) + 24);
    CHECK(st.bytes_written == st.bytes_read);  // both moved whole 4 KiB blocks of the same transfers
  }
  CHECK(s.files() == 0);  // the tier files are removed with the backend
}

TEST_CASE_TEMPLATE("striping puts stripe s in file s mod F at (s div F) * block", Swap, zb::swap::uring,
                   zb::swap::posix) {
  scratch s("stripe");
  const std::size_t block = 16 * 1024;
  std::vector<std::string> paths = {s.sub("a"), s.sub("b"), s.sub("c")};
  auto cfg = config_for(paths, block);
  Swap io(cfg, "st", 3, 8 * block);
  zb::staging_pool pool(1, 8 * block, nullptr);
  for (std::size_t i = 0; i < 8 * block; ++i) pool.data(0)[i] = static_cast<std::byte>((i / block) * 16 + 1);
  auto w = io.write(0, pool.data(0), 8 * block);
  io.wait(w);
  const auto files = io.files();
  REQUIRE(files.size() == 3);
  CHECK(has(files[0], "rank3"));
  for (std::size_t stripe = 0; stripe < 8; ++stripe) {
    CAPTURE(stripe);
    std::FILE* f = std::fopen(files[stripe % 3].c_str(), "rb");
    REQUIRE(f != nullptr);
    std::fseek(f, static_cast<long>((stripe / 3) * block), SEEK_SET);
    unsigned char c = 0;
    CHECK(std::fread(&c, 1, 1, f) == 1);
    CHECK(c == stripe * 16 + 1);
    std::fclose(f);
  }
}

TEST_CASE_TEMPLATE("injected faults fail the ticket with file, offset and cause; good data stays", Swap,
                   zb::swap::uring, zb::swap::posix) {
  scratch s("fault");
  const std::size_t block = 64 * 1024;
  auto cfg = config_for({s.sub("a"), s.sub("b")}, block);
  std::atomic<int> mode{0};  // 0 none, 1 EIO on writes at stripe 2, 2 ENOSPC on all writes, 3 short read
  cfg.fault_hook = [&](const zb::swap_request_info& r) {
    zb::swap_fault f;
    const int m = mode.load();
    if (m == 1 && r.write && r.logical_offset / block == 2) f.error = EIO;
    if (m == 2 && r.write) f.error = ENOSPC;
    if (m == 3 && !r.write) f.short_transfer = true;
    return f;
  };
  Swap io(cfg, "fault", 0, 4 * block);
  zb::staging_pool pool(2, 4 * block, nullptr);
  fill_random(pool.data(0), 4 * block, 7);
  auto w = io.write(0, pool.data(0), 4 * block);
  io.wait(w);  // the last good data

  // EIO on the requests of stripe 2: the message names the file of stripe 2 (file 0,
  // at offset block) and the cause; the other stripes may have been written.
  mode = 1;
  fill_random(pool.data(1), 4 * block, 8);
  auto bad = io.write(0, pool.data(1), 4 * block);
  const std::string e1 = error_of([&] { io.wait(bad); });
  CHECK(has(e1, "swap: write of 65536 bytes at offset 65536 of " + io.files()[0] + " failed: EIO"));
  // Stripe 2 still holds the last good data (the failed request never reached the disk).
  mode = 0;
  auto r = io.read(2 * block, pool.data(1), block);
  io.wait(r);
  CHECK(std::memcmp(pool.data(1), pool.data(0) + 2 * block, block) == 0);
  w = io.write(0, pool.data(0), 4 * block);  // all stripes good again
  io.wait(w);

  // ENOSPC on every write: nothing changes on disk.
  mode = 2;
  fill_random(pool.data(1), 4 * block, 9);
  auto full = io.write(0, pool.data(1), 4 * block);
  const std::string e2 = error_of([&] { io.wait(full); });
  CHECK(has(e2, "failed: ENOSPC (No space left on device)"));
  mode = 0;
  r = io.read(0, pool.data(1), 4 * block);
  io.wait(r);
  CHECK(std::memcmp(pool.data(1), pool.data(0), 4 * block) == 0);

  // A short read: the error says how much arrived.
  mode = 3;
  r = io.read(block, pool.data(1), block);
  const std::string e3 = error_of([&] { io.wait(r); });
  CHECK(has(e3, "swap: short read at offset 0 of " + io.files()[1] + ": 32768 of 65536 bytes transferred"));
  mode = 0;
  // The backend stays usable after failed transfers.
  r = io.read(0, pool.data(1), 4 * block);
  io.wait(r);
  CHECK(std::memcmp(pool.data(1), pool.data(0), 4 * block) == 0);
}

TEST_CASE_TEMPLATE("a hung write: waiting on a later read times out and names the write as the one in flight", Swap,
                   zb::swap::uring, zb::swap::posix) {
  scratch s("hung");
  const std::size_t block = 64 * 1024;
  auto cfg = config_for({s.sub("a")}, block);
  cfg.threads = 1;  // one queue: the read waits behind the write, as on one device
  cfg.timeout_s = 1;
  std::atomic<int> hang{0}, release{0};
  cfg.fault_hook = [&](const zb::swap_request_info& r) {
    if (r.write && hang.exchange(0))
      while (!release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return zb::swap_fault{};
  };
  // The buffers outlive the backend: its destructor waits for the hung write, which
  // then reads them.
  zb::staging_pool pool(2, 4 * block, nullptr);
  Swap io(cfg, "hung", 0, 4 * block);
  fill_random(pool.data(0), 4 * block, 11);
  hang = 1;
  auto w = io.write(0, pool.data(0), block);
  auto r = io.read(2 * block, pool.data(1), block);
  // The caller waits on the read first: its message is the read's, and it names the
  // write that the device never answered.
  const std::string e = error_of([&] { io.wait(r); });
  INFO(e);
  CHECK(has(e, "swap: read of 65536 bytes at offset 131072 of " + io.files()[0] +
                   " has not completed after 1 s (swap.timeout_s); the oldest transfer in flight, a write of "
                   "65536 bytes at offset 0 of " + io.files()[0] + ", was issued "));
  CHECK(has(e, "the tier stopped answering"));
  // Stuck: the write is not waited for again, and nothing more is issued.
  const std::string ew = error_of([&] { io.wait(w); });
  CHECK(has(ew, "swap: write of 65536 bytes at offset 0 of " + io.files()[0] + " has not completed after 1 s "
                "(swap.timeout_s): the tier stopped answering"));
  CHECK(has(error_of([&] { (void)io.read(0, pool.data(1), block); }), "no more transfers are issued"));
  release = 1;  // the device answers; destroying the backend waits for its transfers
}

TEST_CASE_TEMPLATE("a tier larger than the free space fails at construction and leaves no file", Swap,
                   zb::swap::uring, zb::swap::posix) {
  // The full disk is a private 8 MiB tmpfs: filling the build directory's disk, even
  // for the moment posix_fallocate takes to fail, breaks whatever else writes there.
  zbt::small_fs small(scratch_root(), "enospc", std::size_t{8} << 20);
  if (!small.mounted()) {
    // Without a filesystem of its own, only sizes the library refuses before asking the
    // filesystem are safe to try: more than the directory's free space (checked with
    // fstatvfs first), and more than an off_t holds.
    MESSAGE("not checked: a filesystem really full, no small filesystem to fill ("
            << small.why_not() << "); checked instead: sizes refused before any allocation");
    const std::string dir = small.sub("a");
    for (const std::size_t want : {small.free_bytes() + (std::size_t{4} << 30), std::size_t{1} << 63}) {
      CAPTURE(want);
      const std::string e = error_of([&] { Swap io(config_for({dir}), "big", 0, want); });
      CHECK(has(e, "swap: cannot preallocate "));
      CHECK(has(e, want >> 63 ? "EFBIG" : "ENOSPC"));
      CHECK(small.files() == 0);
    }
    return;
  }
  const std::string dir = small.sub("a");
  auto cfg = config_for({dir});
  cfg.direct_io = false;  // tmpfs has O_DIRECT only from Linux 6.6; the preallocation is the same
  // Half the filesystem taken: the second tier fits the filesystem but not its free
  // space, the first not even the filesystem. Both are refused by the free-space check
  // before any block is allocated (posix_fallocate would fill the filesystem first).
  {
    const int fd = ::open((small.dir() / "filler").c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    const int rc = ::posix_fallocate(fd, 0, off_t{4} << 20);
    ::close(fd);
    REQUIRE(rc == 0);
  }
  const std::size_t free_bytes = small.free_bytes();
  for (const std::size_t want : {free_bytes + (std::size_t{4} << 30), free_bytes + (std::size_t{1} << 20)}) {
    CAPTURE(want);
    const std::string e = error_of([&] { Swap io(cfg, "big", 0, want); });
    CHECK(has(e, "swap: cannot preallocate "));
    CHECK(has(e, dir + "/zeroblocks-big-rank0-"));
    CHECK(has(e, "ENOSPC"));
    CHECK(has(e, "the tier needs that much free space in its directory"));
    CHECK(small.files() == 1);  // the filler only
    CHECK(small.free_bytes() == free_bytes);
  }
}

TEST_CASE_TEMPLATE("bad input is refused with a message", Swap, zb::swap::uring, zb::swap::posix) {
  scratch s("bad");
  CHECK(has(error_of([&] { Swap io(config_for({}), "t", 0, 4096); }), "swap_config::paths is empty"));
  CHECK(has(error_of([&] { Swap io(config_for({s.sub("a")}, 1000), "t", 0, 4096); }),
            "block_size 1000 must be a positive multiple of 4096"));
  CHECK(has(error_of([&] { Swap io(config_for({s.sub("a")}, 4096, 0), "t", 0, 4096); }), "queue_depth"));
  CHECK(has(error_of([&] { Swap io(config_for({(s.dir / "missing").string()}), "t", 0, 4096); }),
            "cannot create"));
  Swap io(config_for({s.sub("b")}), "t", 0, 64 * 1024);
  zb::staging_pool pool(1, 128 * 1024, nullptr);
  CHECK(has(error_of([&] { (void)io.read(100, pool.data(0), 10); }), "offset 100 is not a multiple of 4096"));
  CHECK(has(error_of([&] { (void)io.write(0, pool.data(0) + 8, 10); }), "buffer is not 4096-byte aligned"));
  CHECK(has(error_of([&] { (void)io.write(60 * 1024, pool.data(0), 8192); }), "runs past the end of the tier"));
  CHECK(io.read(0, pool.data(0), 0).empty());  // nothing to move
}

TEST_CASE_TEMPLATE("a filesystem without O_DIRECT: a clear error, and direct_io = false works there", Swap,
                   zb::swap::uring, zb::swap::posix) {
  // ramfs refuses O_DIRECT (EINVAL at open). Mounting one needs CAP_SYS_ADMIN: CI and
  // this project's machines run as root; elsewhere the case says so and checks nothing.
  // The case writes 64 KiB (ramfs has no size limit).
  zbt::small_fs ram(scratch_root(), "nodirect", std::size_t{1} << 20, "ramfs");
  if (!ram.mounted()) {
    MESSAGE("not checked: a filesystem without O_DIRECT, cannot mount a ramfs (" << ram.why_not() << ")");
    return;
  }
  const std::string dir = ram.dir().string();
  const std::string e = error_of([&] { Swap io(config_for({dir}), "t", 0, 64 * 1024); });
  CHECK(has(e, "swap: the filesystem of " + dir + " does not support O_DIRECT"));
  CHECK(has(e, "EINVAL"));
  CHECK(has(e, "swap_config::direct_io = false"));
  CHECK(std::distance(fs::directory_iterator(dir), fs::directory_iterator{}) == 0);  // nothing left behind
  // Through the page cache: a round trip works.
  auto cfg = config_for({dir});
  cfg.direct_io = false;
  Swap io(cfg, "t", 0, 64 * 1024);
  zb::staging_pool pool(2, 64 * 1024, nullptr);
  fill_random(pool.data(0), 10000, 7);
  auto w = io.write(4096, pool.data(0), 10000);
  io.wait(w);
  auto r = io.read(4096, pool.data(1), 10000);
  io.wait(r);
  CHECK(std::memcmp(pool.data(0), pool.data(1), 10000) == 0);
}

TEST_CASE("ZEROBLOCKS_SWAP=posix makes swap::uring run the posix engine, and say so") {
  scratch s("env");
  {
    zb::swap::uring io(config_for({s.sub("a")}), "t", 1, 64 * 1024);
    MESSAGE("swap::uring here runs: " << std::string(io.backend_name())
                                      << (io.fallback_reason().empty() ? "" : " because " + io.fallback_reason()));
  }
  ::setenv("ZEROBLOCKS_SWAP", "posix", 1);
  zb::swap::uring io(config_for({s.sub("b")}), "t", 1, 64 * 1024);
  ::unsetenv("ZEROBLOCKS_SWAP");
  CHECK(std::string(io.backend_name()) == "posix");
  CHECK(io.fallback_reason() == "ZEROBLOCKS_SWAP=posix");
  zb::staging_pool pool(1, 8192, nullptr);
  fill_random(pool.data(0), 8192, 3);
  std::vector<std::byte> want(pool.data(0), pool.data(0) + 8192);
  auto w = io.write(4096, pool.data(0), 8192);
  io.wait(w);
  std::memset(pool.data(0), 0, 8192);
  auto r = io.read(4096, pool.data(0), 8192);
  io.wait(r);
  CHECK(std::memcmp(pool.data(0), want.data(), 8192) == 0);
}
