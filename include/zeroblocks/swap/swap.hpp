/**
 * @file swap.hpp
 * @brief The swap-backend role: how bytes reach a file on NVMe.
 *
 * Policies, side by side:
 *  - `swap::uring` (`uring.hpp`): liburing, `O_DIRECT`, registered buffers and files, a
 *    configurable request size and queue depth, one I/O thread that keeps the queue full.
 *    Where io_uring cannot be used (built without liburing, a kernel or seccomp policy
 *    that refuses `io_uring_setup`, or `ZEROBLOCKS_SWAP=posix`) it runs the posix engine
 *    instead and rank 0 prints one line saying so and why.
 *  - `swap::posix` (`posix.hpp`): the same interface on `pread`/`pwrite` threads.
 *
 * A backend object owns one *tier file* per rank — one preallocated (`fallocate`) file
 * in each configured directory, the bytes striped over them in `block_size` units so
 * several NVMe devices add up (no RAID-0 needed, no file per tensor) — and moves bytes
 * between that logical address space and memory:
 *
 * ```
 * swap::uring io(cfg, "master", rank, bytes);       // creates and preallocates the files
 * swap_ticket t = io.write(offset, buf, n);          // non-blocking; buf stays valid until waited
 * io.wait(t);                                        // throws swap error: file, offset, cause
 * ```
 *
 * Alignment (`O_DIRECT`): `offset` is a multiple of `swap_block_align` (4 KiB) and `buf`
 * is 4 KiB aligned with room for `round_up(n, 4 KiB)` bytes; the transfer moves whole
 * 4 KiB blocks, so a tail that is not a multiple of the block travels padded (callers
 * lay records out on 4 KiB boundaries; `staging_pool` buffers satisfy all of this).
 *
 * Failure: every error names the file, its offset, the request length and the cause
 * (`ENOSPC`, `EIO`, a short transfer, a directory whose filesystem refuses `O_DIRECT`).
 * A ticket fails as a whole; the bytes of its other requests may or may not have
 * reached the disk, so callers never overwrite the only good copy of anything in place
 * (`master::swapped` writes each step to the other of two slots).
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../space/host_space.hpp"
#include "../space/memory.hpp"

#include <sys/uio.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

ZB_NAMESPACE_BEGIN

/// @brief Tag that marks a type as a swap-backend policy.
struct swap_tag {};

/// @brief `O_DIRECT` granularity: offsets, buffer addresses and transfer lengths.
inline constexpr std::size_t swap_block_align = 4096;

/// @brief `n` rounded up to a multiple of `swap_block_align`.
constexpr std::size_t swap_round_up(std::size_t n) {
  return (n + swap_block_align - 1) / swap_block_align * swap_block_align;
}

/// @brief One request as the fault hook sees it (tests inject errors with it).
struct swap_request_info {
  bool write = false;
  const std::string* file = nullptr;  ///< path of the file the request goes to
  std::size_t file_offset = 0;        ///< offset in that file
  std::size_t bytes = 0;              ///< request length
  std::size_t logical_offset = 0;     ///< offset in the tier's address space
};

/// @brief What the fault hook asks for: nothing, an errno, or a short transfer (the
/// request is really issued for half its length, rounded down to the block).
struct swap_fault {
  int error = 0;
  bool short_transfer = false;
};

/// @brief The NVMe tier's knobs (DeepSpeed's names in brackets).
struct swap_config {
  /// Directories for the tier files, one file per rank per tier in each; several
  /// directories (on several devices) are striped in `block_size` units.
  /// [offload_optimizer.nvme_path — DeepSpeed takes one]
  std::vector<std::string> paths;
  /// Bytes per I/O request and stripe unit; a multiple of 4 KiB. [aio.block_size 1 MiB]
  std::size_t block_size = std::size_t{1} << 20;
  /// Requests in flight per tier file set. [aio.queue_depth 8]
  int queue_depth = 8;
  /// `swap::posix` I/O threads. [aio.intra_op_parallelism 1]
  int threads = 2;
  /// Open files with `O_DIRECT` (bypass the page cache: bounded memory, real disk
  /// bandwidth). false for filesystems without it (tmpfs); then the page cache is used.
  bool direct_io = true;
  /// Leave the tier files in place when the engine ends (otherwise they are removed).
  bool keep_files = false;
  /// Seconds a transfer may take before `wait` gives up on it; 0 waits forever. A
  /// transfer past it means the device or filesystem stopped answering: the wait throws
  /// naming the transfer, and the tier issues no more transfers (the kernel may still
  /// write the buffers it holds). The engine turns it into an error on every rank that
  /// says the step cannot be retried. [none: DeepSpeed's aio waits block forever]
  double timeout_s = 600;
  /// Test hook, called on the I/O thread before each request: inject a fault.
  std::function<swap_fault(const swap_request_info&)> fault_hook;
};

/// @brief The disk a tier of `bytes` logical bytes takes: whole `block_size` stripes
/// (what the files are preallocated to; `swap_files::capacity`).
inline std::size_t swap_tier_capacity(std::size_t bytes, const swap_config& cfg) {
  const std::size_t b = cfg.block_size ? cfg.block_size : 1;
  return (bytes + b - 1) / b * b;
}

/// @brief Byte counters of a backend.
struct swap_stats {
  std::uint64_t bytes_read = 0;     ///< bytes moved from the files (whole 4 KiB blocks)
  std::uint64_t bytes_written = 0;  ///< bytes moved to the files
  std::uint64_t requests = 0;       ///< requests completed
  std::uint64_t reads = 0;          ///< read tickets issued
  std::uint64_t writes = 0;         ///< write tickets issued
};

namespace detail {

/// Words every error of a stuck tier carries (the engine recognises them in an agreed
/// step failure: such a step cannot be retried).
inline constexpr const char* swap_stuck_words = "the tier stopped answering";

struct swap_job;

/// A backend's transfers in flight, in issue order, and whether one of them timed out
/// (the backend is then stuck: it takes no more transfers). A timed-out wait names the
/// oldest transfer still in flight besides its own: with one I/O queue, the transfer
/// that hangs holds up every later one, and which of them a caller waits on first is a
/// matter of timing; the oldest is the one the device did not answer.
struct swap_inflight {
  std::atomic<bool> stuck{false};
  std::mutex mu;
  std::vector<std::weak_ptr<swap_job>> jobs;  // issue order

  inline void add(const std::shared_ptr<swap_job>& j);
  /// "; the oldest transfer in flight, a write of N bytes at offset O of F, was issued
  /// 3.2 s ago and has not completed either" (empty when `self` is the oldest).
  inline std::string oldest_besides(const swap_job* self);
};

/// One transfer in progress: its requests count down; the first error is kept.
struct swap_job {
  std::atomic<std::size_t> remaining{0};
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::string error;  // first failure, with file/offset/cause
  double timeout_s = 0;                       // 0: wait forever
  std::shared_ptr<swap_inflight> inflight;    // the backend's (null: no deadline bookkeeping)
  std::string what;                           // "read of N bytes at offset O of FILE"
  std::chrono::steady_clock::time_point issued_at = std::chrono::steady_clock::now();

  /// Wait (lock held) until done or past the timeout; false, with the backend marked
  /// stuck, on a timeout. A backend already stuck does not wait again.
  bool wait_done(std::unique_lock<std::mutex>& lk) {
    if (timeout_s <= 0) {
      cv.wait(lk, [&] { return done; });
      return true;
    }
    if (inflight && inflight->stuck.load()) return done;
    if (cv.wait_for(lk, std::chrono::duration<double>(timeout_s), [&] { return done; })) return true;
    if (inflight) inflight->stuck.store(true);
    return false;
  }

  void fail(std::string why) {
    std::lock_guard<std::mutex> lk(mu);
    if (error.empty()) error = std::move(why);
  }
  /// One request finished (successfully or not).
  void finish_one() {
    if (remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lk(mu);
      done = true;
      cv.notify_all();
    }
  }
};

// Only `remaining` is read here (never a job's mutex): a waiter that timed out calls
// `oldest_besides` after releasing its own job's lock, so no two locks nest.
void swap_inflight::add(const std::shared_ptr<swap_job>& j) {
  std::lock_guard<std::mutex> lk(mu);
  std::erase_if(jobs, [](const std::weak_ptr<swap_job>& w) {
    const auto p = w.lock();
    return !p || p->remaining.load(std::memory_order_acquire) == 0;
  });
  jobs.push_back(j);
}

std::string swap_inflight::oldest_besides(const swap_job* self) {
  std::lock_guard<std::mutex> lk(mu);
  for (const auto& w : jobs) {
    const auto p = w.lock();
    if (!p || p->remaining.load(std::memory_order_acquire) == 0) continue;
    if (p.get() == self) return {};
    const double ago = std::chrono::duration<double>(std::chrono::steady_clock::now() - p->issued_at).count();
    return concat("; the oldest transfer in flight, a ", p->what, ", was issued ",
                  static_cast<double>(static_cast<long>(ago * 10)) / 10, " s ago and has not completed either");
  }
  return {};
}

}  // namespace detail

/// @brief A non-blocking transfer; `wait` it on the backend that issued it. Copyable
/// (shared), empty when default-constructed (waiting on it does nothing).
class swap_ticket {
public:
  swap_ticket() = default;
  explicit swap_ticket(std::shared_ptr<detail::swap_job> j) : job_(std::move(j)) {}
  bool empty() const { return !job_; }
  /// @brief Whether the transfer has finished (successfully or not).
  bool ready() const {
    if (!job_) return true;
    std::lock_guard<std::mutex> lk(job_->mu);
    return job_->done;
  }
  /// @brief Block until done; throw `zeroblocks::error` naming file, offset and cause
  /// if it failed. The ticket is empty afterwards.
  void wait() {
    if (!job_) return;
    auto j = std::move(job_);
    std::unique_lock<std::mutex> lk(j->mu);
    if (!j->wait_done(lk)) {
      lk.unlock();
      const std::string oldest = j->inflight ? j->inflight->oldest_besides(j.get()) : std::string();
      ZB_FAIL("swap: ", j->what, " has not completed after ", j->timeout_s, " s (swap.timeout_s)", oldest, ": ",
              detail::swap_stuck_words, ". The kernel may still write this tier's buffers, so it takes no "
              "more transfers; restart the run from its last checkpoint");
    }
    if (!j->error.empty()) ZB_FAIL(j->error);
  }
  /// @brief Block until done, ignoring its outcome (used while unwinding: the buffer
  /// must not be reused while the kernel may still write it). Gives up at the timeout
  /// (at once on a stuck backend): the backend then takes no more transfers.
  void settle() noexcept {
    if (!job_) return;
    auto j = std::move(job_);
    std::unique_lock<std::mutex> lk(j->mu);
    (void)j->wait_done(lk);
  }

private:
  std::shared_ptr<detail::swap_job> job_;
};

/// @brief How a stage-3 coordinator reads the 16-bit parameter shard a master tier holds
/// (`master::swapped` with parameters on the tier, read by `coordinate::prefetch_trace_nvme`). Type-erased: the coordinator does
/// not know the master's type.
struct param_tier_view {
  /// Start reading `bytes` at byte `offset` of the committed parameter section (both
  /// multiples of 4 KiB, `buf` aligned as `swap.hpp` requires).
  std::function<swap_ticket(std::size_t offset, std::byte* buf, std::size_t bytes)> read;
  /// Wait for a ticket from `read` (throws the swap error).
  std::function<void(swap_ticket&)> wait;
  /// Bytes of the section (the shard, padded to 4 KiB).
  std::size_t section_bytes = 0;
};

/// @brief A swap backend: a tagged object that reads and writes its tier file.
template <class S>
concept swap_policy = std::same_as<typename S::swap_concept, swap_tag> &&
                      requires(S& s, const S& cs, void* p, const void* q, std::size_t n, swap_ticket& t) {
                        { s.read(n, p, n) } -> std::same_as<swap_ticket>;
                        { s.write(n, q, n) } -> std::same_as<swap_ticket>;
                        s.wait(t);
                        { cs.capacity() } -> std::convertible_to<std::size_t>;
                        { cs.stats() } -> std::convertible_to<swap_stats>;
                        { cs.backend_name() } -> std::convertible_to<const char*>;
                        s.register_buffers(std::vector<iovec>{});
                      };

/**
 * @brief A bounded pool of aligned, page-locked staging buffers: `count` × `bytes`
 * (each rounded to 4 KiB), counted under `mem_category::staging`. Exactly that much —
 * no power-of-two rounding. The backend registers them (`register_buffers`) so io_uring
 * skips per-request page pinning.
 */
class staging_pool {
public:
  staging_pool() = default;
  staging_pool(int count, std::size_t bytes, memory_tracker* tracker) : bytes_(swap_round_up(bytes)) {
    ZB_REQUIRE(count >= 1, "staging_pool: count must be >= 1 (got ", count, ")");
    for (int i = 0; i < count; ++i)
      bufs_.emplace_back(bytes_, mem_category::staging, tracker, swap_block_align);
  }
  int count() const { return static_cast<int>(bufs_.size()); }
  std::size_t bytes() const { return bytes_; }
  std::byte* data(int i) const { return bufs_[static_cast<std::size_t>(i)].data(); }
  std::vector<iovec> iovecs() const {
    std::vector<iovec> v;
    for (auto& b : bufs_) v.push_back({b.data(), b.bytes()});
    return v;
  }

private:
  std::size_t bytes_ = 0;
  std::vector<buffer<std::byte, pinned_space>> bufs_;
};

ZB_NAMESPACE_END
