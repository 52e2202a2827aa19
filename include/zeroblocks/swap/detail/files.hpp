/**
 * @file files.hpp
 * @brief Internals shared by the swap backends: the tier's striped, preallocated files,
 * the split of a transfer into requests, the pread/pwrite engine (all of `swap::posix`,
 * and `swap::uring`'s fallback) and `basic_backend`, the public read/write/wait surface
 * both policies share.
 */
#pragma once

#include "../../core/config.hpp"
#include "../../core/error.hpp"
#include "../swap.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace detail {

/// "ENOSPC: No space left on device".
inline std::string errno_text(int err) {
  const char* name = ::strerrorname_np(err);
  return concat(name ? name : "errno", " (", std::strerror(err), ")");
}

/// One request: a piece of a transfer that lies in one file.
struct swap_request {
  std::shared_ptr<swap_job> job;
  bool write = false;
  int file = 0;
  std::size_t file_offset = 0;
  std::byte* buf = nullptr;
  std::size_t bytes = 0;
  std::size_t logical_offset = 0;
  std::size_t issued = 0;  // bytes actually asked of the kernel (< bytes: injected short transfer)
};

/**
 * The rank's files of one tier: one per configured directory, preallocated, the logical
 * address space striped over them in `block_size` units (stripe s lives in file
 * s mod F at offset (s div F) × block_size). Removed on destruction unless `keep_files`.
 */
class swap_files {
public:
  swap_files(const swap_config& cfg, const std::string& tier, int rank, std::size_t bytes) : cfg_(cfg) {
    ZB_REQUIRE(!cfg.paths.empty(), "swap: swap_config::paths is empty; give at least one directory for the '", tier,
               "' tier files (one per NVMe device to stripe over several)");
    ZB_REQUIRE(cfg.block_size >= swap_block_align && cfg.block_size % swap_block_align == 0,
               "swap: block_size ", cfg.block_size, " must be a positive multiple of ", swap_block_align, " bytes");
    ZB_REQUIRE(cfg.queue_depth >= 1, "swap: queue_depth must be >= 1 (got ", cfg.queue_depth, ")");
    ZB_REQUIRE(cfg.threads >= 1, "swap: threads must be >= 1 (got ", cfg.threads, ")");
    ZB_REQUIRE(cfg.timeout_s >= 0, "swap: timeout_s must be >= 0 (0 waits forever; got ", cfg.timeout_s, ")");
    const std::size_t b = cfg.block_size, nf = cfg.paths.size();
    capacity_ = swap_tier_capacity(bytes, cfg);
    const std::size_t stripes = capacity_ / b;
    // A random token tells this tier's files from any other's in the same process (no
    // process-wide counter: no hidden state).
    std::random_device rd;
    const std::uint64_t token = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
    try {
      for (std::size_t f = 0; f < nf; ++f) {
        std::string path = cfg.paths[f];
        if (path.empty()) path = ".";
        if (path.back() != '/') path += '/';
        path += concat("zeroblocks-", tier, "-rank", rank, "-", ::getpid(), "-", std::hex, token, std::dec, ".swap");
        const std::size_t size = (stripes > f ? (stripes - f + nf - 1) / nf : 0) * b;
        open_one(path, cfg.paths[f], size);
      }
    } catch (...) {
      close_all();
      throw;
    }
  }
  swap_files(const swap_files&) = delete;
  swap_files& operator=(const swap_files&) = delete;
  ~swap_files() { close_all(); }

  std::size_t capacity() const { return capacity_; }
  int fd(int f) const { return fds_[static_cast<std::size_t>(f)]; }
  const std::vector<int>& fds() const { return fds_; }
  const std::string& path(int f) const { return paths_[static_cast<std::size_t>(f)]; }
  const swap_config& config() const { return cfg_; }

  /// Check a transfer and cut it into requests at stripe boundaries.
  std::vector<swap_request> split(bool write, std::size_t offset, const void* buf, std::size_t bytes,
                                  const std::shared_ptr<swap_job>& job) const {
    const std::size_t padded = swap_round_up(bytes);
    ZB_REQUIRE(offset % swap_block_align == 0, "swap: ", write ? "write" : "read", " offset ", offset,
               " is not a multiple of ", swap_block_align, " (O_DIRECT)");
    ZB_REQUIRE(reinterpret_cast<std::uintptr_t>(buf) % swap_block_align == 0, "swap: ", write ? "write" : "read",
               " buffer is not ", swap_block_align, "-byte aligned (O_DIRECT; use staging_pool buffers)");
    ZB_REQUIRE(offset <= capacity_ && padded <= capacity_ - offset, "swap: ", write ? "write" : "read", " of ",
               bytes, " bytes at offset ", offset, " runs past the end of the tier (", capacity_, " bytes)");
    std::vector<swap_request> out;
    const std::size_t b = cfg_.block_size, nf = fds_.size();
    for (std::size_t done = 0; done < padded;) {
      const std::size_t o = offset + done, s = o / b, in = o % b;
      const std::size_t len = std::min(padded - done, b - in);
      swap_request r;
      r.job = job;
      r.write = write;
      r.file = static_cast<int>(s % nf);
      r.file_offset = (s / nf) * b + in;
      r.buf = const_cast<std::byte*>(static_cast<const std::byte*>(buf)) + done;
      r.bytes = len;
      r.logical_offset = o;
      out.push_back(r);
      done += len;
    }
    return out;
  }

  /// Ask the fault hook about a request; fills `issued`. Returns an errno to fail with.
  int consult_hook(swap_request& r) const {
    r.issued = r.bytes;
    if (!cfg_.fault_hook) return 0;
    const swap_request_info info{r.write, &paths_[static_cast<std::size_t>(r.file)], r.file_offset, r.bytes,
                                 r.logical_offset};
    const swap_fault f = cfg_.fault_hook(info);
    if (f.short_transfer) r.issued = r.bytes / 2 / swap_block_align * swap_block_align;
    return f.error;
  }

  /// The error text of a failed request: file, offset, length and cause.
  std::string describe(const swap_request& r, int err, std::size_t got) const {
    const char* op = r.write ? "write" : "read";
    const std::string& file = paths_[static_cast<std::size_t>(r.file)];
    if (err != 0)
      return concat("swap: ", op, " of ", r.bytes, " bytes at offset ", r.file_offset, " of ", file,
                    " failed: ", errno_text(err));
    return concat("swap: short ", op, " at offset ", r.file_offset, " of ", file, ": ", got, " of ", r.bytes,
                  " bytes transferred");
  }

private:
  void open_one(const std::string& path, const std::string& dir, std::size_t size) {
    int flags = O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC;
    if (cfg_.direct_io) flags |= O_DIRECT;
    const int fd = ::open(path.c_str(), flags, 0600);
    if (fd < 0) {
      const int err = errno;
      if (err == EINVAL && cfg_.direct_io) {
        // Linux creates the file before it checks O_DIRECT: remove it (O_EXCL made it ours).
        ::unlink(path.c_str());
        ZB_FAIL("swap: the filesystem of ", dir, " does not support O_DIRECT (open of ", path, ": ",
                errno_text(err), "); put the tier on an NVMe filesystem such as ext4 or xfs, or set "
                "swap_config::direct_io = false to go through the page cache");
      }
      ZB_FAIL("swap: cannot create ", path, ": ", errno_text(err));
    }
    fds_.push_back(fd);
    paths_.push_back(path);
    if (size == 0) return;
    // Preallocate: the blocks exist from now on, so a full disk shows here, at
    // construction, not in the middle of a step. Unwritten extents read as zeros.
    // A size the filesystem cannot hold is refused first, without asking: on ext4 a
    // failing fallocate fills the disk for a moment (other programs writing there can
    // then fail), and glibc's fallback without fallocate writes zeros up to the size.
    int rc = 0;
    struct statvfs fs {};
    if (size > static_cast<std::size_t>(std::numeric_limits<off_t>::max())) rc = EFBIG;
    else if (::fstatvfs(fd, &fs) == 0 && fs.f_blocks > 0 &&  // (ramfs reports no size at all)
             static_cast<unsigned long long>(fs.f_bavail) * fs.f_frsize < size)
      rc = ENOSPC;
    else rc = ::posix_fallocate(fd, 0, static_cast<off_t>(size));
    if (rc != 0)
      ZB_FAIL("swap: cannot preallocate ", size, " bytes for ", path, ": ", errno_text(rc),
              rc == ENOSPC ? " — the tier needs that much free space in its directory" : "");
  }
  void close_all() noexcept {
    for (std::size_t f = 0; f < fds_.size(); ++f) {
      ::close(fds_[f]);
      if (!cfg_.keep_files) ::unlink(paths_[f].c_str());
    }
    fds_.clear();
    paths_.clear();
  }

  swap_config cfg_;
  std::size_t capacity_ = 0;
  std::vector<int> fds_;
  std::vector<std::string> paths_;
};

/// Byte counters updated from I/O threads.
struct swap_counters {
  std::atomic<std::uint64_t> bytes_read{0}, bytes_written{0}, requests{0}, reads{0}, writes{0};
  swap_stats snapshot() const {
    return {bytes_read.load(), bytes_written.load(), requests.load(), reads.load(), writes.load()};
  }
};

/// Finish a request whose kernel call returned `res` (bytes, or -errno).
inline void complete_request(const swap_files& files, swap_counters& c, swap_request& r, long res) {
  if (res < 0) {
    r.job->fail(files.describe(r, static_cast<int>(-res), 0));
  } else {
    (r.write ? c.bytes_written : c.bytes_read) += static_cast<std::uint64_t>(res);
    if (static_cast<std::size_t>(res) != r.bytes) r.job->fail(files.describe(r, 0, static_cast<std::size_t>(res)));
  }
  ++c.requests;
  r.job->finish_one();
}

/// The pread/pwrite engine: `threads` workers take requests in order from one queue.
class posix_engine {
public:
  posix_engine(const swap_files& files, swap_counters& counters, int threads)
      : files_(files), counters_(counters) {
    for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { run(); });
  }
  posix_engine(const posix_engine&) = delete;
  posix_engine& operator=(const posix_engine&) = delete;
  ~posix_engine() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  void submit(std::vector<swap_request>&& rs) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (auto& r : rs) queue_.push_back(std::move(r));
    }
    cv_.notify_all();
  }

private:
  void run() {
    for (;;) {
      swap_request r;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stop_ with nothing left
        r = std::move(queue_.front());
        queue_.pop_front();
      }
      long res = 0;
      if (const int err = files_.consult_hook(r); err != 0) {
        res = -err;
      } else {
        const int fd = files_.fd(r.file);
        std::size_t done = 0;
        while (done < r.issued) {
          const ssize_t n = r.write ? ::pwrite(fd, r.buf + done, r.issued - done, static_cast<off_t>(r.file_offset + done))
                                    : ::pread(fd, r.buf + done, r.issued - done, static_cast<off_t>(r.file_offset + done));
          if (n < 0 && errno == EINTR) continue;
          if (n < 0) {
            done = 0;
            res = -errno;
            break;
          }
          if (n == 0) break;  // end of file: a short transfer
          done += static_cast<std::size_t>(n);
        }
        if (res == 0) res = static_cast<long>(done);
      }
      complete_request(files_, counters_, r, res);
    }
  }

  const swap_files& files_;
  swap_counters& counters_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<swap_request> queue_;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

/// read / write / wait / stats over the files and an `Engine` with `submit(requests)`.
/// `Derived::engine_submit(requests)` routes to whichever engine runs.
template <class Derived>
class basic_backend {
public:
  /// @brief Read `bytes` (rounded up to 4 KiB) at `offset` into `buf`. Non-blocking.
  swap_ticket read(std::size_t offset, void* buf, std::size_t bytes) {
    ++counters_.reads;
    return issue(false, offset, buf, bytes);
  }
  /// @brief Write `bytes` (rounded up to 4 KiB: the tail block carries whatever `buf`
  /// holds past `bytes`) from `buf` to `offset`. Non-blocking.
  swap_ticket write(std::size_t offset, const void* buf, std::size_t bytes) {
    ++counters_.writes;
    return issue(true, offset, buf, bytes);
  }
  /// @brief Wait for a transfer; throws naming file, offset and cause on failure.
  void wait(swap_ticket& t) { t.wait(); }
  std::size_t capacity() const { return files_->capacity(); }
  swap_stats stats() const { return counters_.snapshot(); }
  /// @brief Paths of the tier's files (one per configured directory).
  std::vector<std::string> files() const {
    std::vector<std::string> v;
    for (int f = 0; f < static_cast<int>(files_->fds().size()); ++f) v.push_back(files_->path(f));
    return v;
  }

protected:
  swap_ticket issue(bool write, std::size_t offset, const void* buf, std::size_t bytes) {
    if (bytes == 0) return {};
    ZB_REQUIRE(!inflight_->stuck.load(), "swap: ", swap_stuck_words, " (an earlier transfer did not complete within ",
               "swap.timeout_s = ", files_->config().timeout_s, " s): no more transfers are issued");
    auto job = std::make_shared<swap_job>();
    auto rs = files_->split(write, offset, buf, bytes, job);
    job->timeout_s = files_->config().timeout_s;
    job->inflight = inflight_;
    job->what = concat(write ? "write" : "read", " of ", bytes, " bytes at offset ", rs.front().file_offset, " of ",
                       files_->path(rs.front().file));
    job->remaining.store(rs.size());
    if (job->timeout_s > 0) inflight_->add(job);
    static_cast<Derived*>(this)->engine_submit(std::move(rs));
    return swap_ticket(std::move(job));
  }

  std::unique_ptr<swap_files> files_;
  swap_counters counters_;
  std::shared_ptr<swap_inflight> inflight_ = std::make_shared<swap_inflight>();
};

}  // namespace detail
ZB_NAMESPACE_END
