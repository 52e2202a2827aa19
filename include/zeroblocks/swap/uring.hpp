/**
 * @file uring.hpp
 * @brief `swap::uring`: the swap interface on io_uring (liburing).
 *
 * One I/O thread per backend owns a ring of `queue_depth` entries. It takes the
 * requests of every transfer in order (each at most `block_size` bytes, cut at stripe
 * boundaries), keeps up to `queue_depth` of them in the kernel, reaps completions and
 * completes tickets — so a transfer of any length runs at full depth while the trainer
 * computes, and the trainer's thread only queues work and waits on tickets.
 *
 * - Files: `O_DIRECT`, preallocated, registered with the ring (`IOSQE_FIXED_FILE`).
 * - Buffers: `register_buffers` (the master pipeline registers its staging pool)
 *   makes requests into those buffers `READ_FIXED` / `WRITE_FIXED`, which skips
 *   pinning pages per request. Others go as plain `READ` / `WRITE`. A kernel that
 *   refuses registration (e.g. `RLIMIT_MEMLOCK`) only loses that optimisation.
 * - Run-time detection: without liburing at build time (`ZB_HAVE_LIBURING` 0), when
 *   `io_uring_queue_init` fails (old kernel, seccomp in containers, io_uring disabled by
 *   `kernel.io_uring_disabled`), or with `ZEROBLOCKS_SWAP=posix`, the backend runs the
 *   pread/pwrite engine of `swap::posix` instead; rank 0 prints one line saying which
 *   backend runs and why, and `backend_name()` tells.
 *
 * Differences from DeepSpeed's `aio` op: one preallocated file per rank per tier
 * (DeepSpeed opens and closes one file per tensor per operation), striping over
 * several directories (DeepSpeed takes one path; users build RAID-0), registered
 * buffers and files, and no libaio build step.
 */
#pragma once

#include "../core/env.hpp"
#include "detail/files.hpp"
#include "swap.hpp"

#ifndef ZB_HAVE_LIBURING
#if __has_include(<liburing.h>)
#define ZB_HAVE_LIBURING 1
#else
#define ZB_HAVE_LIBURING 0
#endif
#endif
#if ZB_HAVE_LIBURING
#include <liburing.h>
#endif

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace detail {

/// The ring and its I/O thread (defined only when built with liburing; `swap::uring`
/// holds it through a pointer whose deleter is set where it is created, so the class's
/// layout is the same whether or not a translation unit sees liburing).
class uring_engine;

#if ZB_HAVE_LIBURING
class uring_engine {
public:
  /// Sets up the ring; returns nullptr and the reason when io_uring cannot be used.
  static std::unique_ptr<uring_engine> try_create(const swap_files& files, swap_counters& c, int depth,
                                                  std::string& why) {
    auto e = std::unique_ptr<uring_engine>(new uring_engine(files, c, depth));
    const int rc = ::io_uring_queue_init(static_cast<unsigned>(depth), &e->ring_, 0);
    if (rc < 0) {
      why = concat("io_uring_queue_init: ", errno_text(-rc));
      return nullptr;
    }
    e->ring_ok_ = true;
    const auto& fds = files.fds();
    e->fixed_files_ = ::io_uring_register_files(&e->ring_, fds.data(), static_cast<unsigned>(fds.size())) == 0;
    e->thread_ = std::thread([p = e.get()] { p->run(); });
    return e;
  }
  uring_engine(const uring_engine&) = delete;
  uring_engine& operator=(const uring_engine&) = delete;
  ~uring_engine() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();  // it finishes everything queued first
    if (ring_ok_) ::io_uring_queue_exit(&ring_);
  }

  void submit(std::vector<swap_request>&& rs) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (auto& r : rs) queue_.push_back(std::move(r));
    }
    cv_.notify_all();
  }
  /// Register staging buffers; only while no transfer is in flight.
  bool register_buffers(const std::vector<iovec>& v) {
    std::lock_guard<std::mutex> lk(mu_);
    if (!registered_.empty()) {
      ::io_uring_unregister_buffers(&ring_);
      registered_.clear();
    }
    if (v.empty()) return true;
    if (::io_uring_register_buffers(&ring_, v.data(), static_cast<unsigned>(v.size())) != 0) return false;
    registered_ = v;
    return true;
  }
  bool fixed_files() const { return fixed_files_; }

private:
  uring_engine(const swap_files& files, swap_counters& c, int depth) : files_(files), counters_(c), depth_(depth) {}

  void run() {
    std::vector<std::unique_ptr<swap_request>> batch;
    int inflight = 0;
    for (;;) {
      std::vector<iovec> regs;
      {
        std::unique_lock<std::mutex> lk(mu_);
        if (inflight == 0) cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
        if (stop_ && queue_.empty() && inflight == 0) return;
        while (!queue_.empty() && inflight + static_cast<int>(batch.size()) < depth_) {
          batch.push_back(std::make_unique<swap_request>(std::move(queue_.front())));
          queue_.pop_front();
        }
        if (!batch.empty()) regs = registered_;
      }
      int prepared = 0;
      for (auto& r : batch) {
        if (const int err = files_.consult_hook(*r); err != 0) {
          complete_request(files_, counters_, *r, -err);
          continue;
        }
        io_uring_sqe* sqe = ::io_uring_get_sqe(&ring_);  // never null: at most depth_ in flight
        prep(sqe, *r, regs);
        ::io_uring_sqe_set_data(sqe, r.release());
        ++prepared;
      }
      batch.clear();
      if (prepared > 0) {
        int rc;
        do rc = ::io_uring_submit(&ring_);
        while (rc == -EINTR);
        inflight += prepared;
      }
      if (inflight == 0) continue;
      // A submit refused earlier (-EBUSY, -EAGAIN) left entries queued: hand them over now.
      if (::io_uring_sq_ready(&ring_) > 0) (void)::io_uring_submit(&ring_);
      // Wait for a completion, but not forever: new work may have arrived meanwhile
      // and the ring may have room for it.
      io_uring_cqe* cqe = nullptr;
      __kernel_timespec ts{0, 200'000};
      const int rc = ::io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);
      if (rc < 0 && rc != -ETIME && rc != -EINTR) continue;
      unsigned seen = 0;
      // Drain what completed (peek loop rather than io_uring_for_each_cqe, whose
      // assignment-in-condition warns once nvcc has expanded the macro).
      for (; ::io_uring_peek_cqe(&ring_, &cqe) == 0 && cqe; ::io_uring_cqe_seen(&ring_, cqe)) {
        std::unique_ptr<swap_request> r(static_cast<swap_request*>(::io_uring_cqe_get_data(cqe)));
        long res = cqe->res;
        // An injected short transfer issued only part of the request.
        if (res >= 0 && r->issued != r->bytes) res = static_cast<long>(std::min<std::size_t>(res, r->issued));
        complete_request(files_, counters_, *r, res);
        ++seen;
      }
      inflight -= static_cast<int>(seen);
    }
  }

  void prep(io_uring_sqe* sqe, swap_request& r, const std::vector<iovec>& regs) {
    const int fd = fixed_files_ ? r.file : files_.fd(r.file);
    int index = -1;
    for (std::size_t i = 0; i < regs.size(); ++i) {
      auto* base = static_cast<std::byte*>(regs[i].iov_base);
      if (r.buf >= base && r.buf + r.issued <= base + regs[i].iov_len) {
        index = static_cast<int>(i);
        break;
      }
    }
    const auto off = static_cast<__u64>(r.file_offset);
    const auto len = static_cast<unsigned>(r.issued);
    if (r.write) {
      if (index >= 0) ::io_uring_prep_write_fixed(sqe, fd, r.buf, len, off, index);
      else ::io_uring_prep_write(sqe, fd, r.buf, len, off);
    } else {
      if (index >= 0) ::io_uring_prep_read_fixed(sqe, fd, r.buf, len, off, index);
      else ::io_uring_prep_read(sqe, fd, r.buf, len, off);
    }
    if (fixed_files_) sqe->flags |= IOSQE_FIXED_FILE;
  }

  const swap_files& files_;
  swap_counters& counters_;
  int depth_;
  io_uring ring_{};
  bool ring_ok_ = false;
  bool fixed_files_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<swap_request> queue_;
  std::vector<iovec> registered_;
  bool stop_ = false;
  std::thread thread_;
};
#endif

}  // namespace detail

namespace swap {

/// @brief io_uring over the tier's striped `O_DIRECT` files; pread/pwrite threads where
/// io_uring is unavailable (see the file comment).
class uring : public detail::basic_backend<uring> {
public:
  using swap_concept = swap_tag;
  static constexpr const char* name = "uring";

  /// @brief Create and preallocate the rank's files of `tier` (`bytes` of logical
  /// space) and set up the ring (or the fallback).
  uring(const swap_config& cfg, const std::string& tier, int rank, std::size_t bytes) {
    files_ = std::make_unique<detail::swap_files>(cfg, tier, rank, bytes);
    std::string why;
#if ZB_HAVE_LIBURING
    if (env::swap_forced_posix()) why = "ZEROBLOCKS_SWAP=posix";
    else if (auto r = detail::uring_engine::try_create(*files_, counters_, cfg.queue_depth, why))
      ring_ = ring_ptr(r.release(), [](detail::uring_engine* e) { delete e; });
#else
    why = "zeroblocks was built without liburing";
#endif
    if (!uses_uring()) {
      fallback_ = std::make_unique<detail::posix_engine>(*files_, counters_, cfg.threads);
      fallback_reason_ = why;
      if (rank == 0)
        std::fprintf(stderr, "zeroblocks: swap: io_uring unavailable (%s); the '%s' tier uses the posix "
                             "backend (pread/pwrite threads)\n", why.c_str(), tier.c_str());
    }
  }

  /// @brief "uring", or "posix" when the fallback runs.
  const char* backend_name() const { return uses_uring() ? "uring" : "posix"; }
  /// @brief Why the fallback runs (empty when io_uring does).
  const std::string& fallback_reason() const { return fallback_reason_; }
  /// @brief Register staging buffers with the ring (only while nothing is in flight).
  /// Returns whether they are registered (false: plain reads and writes are used).
  bool register_buffers(const std::vector<iovec>& v) {
#if ZB_HAVE_LIBURING
    if (ring_) return registered_ = ring_->register_buffers(v);
#endif
    (void)v;
    return false;
  }
  bool buffers_registered() const { return registered_; }
  bool files_registered() const {
#if ZB_HAVE_LIBURING
    return ring_ && ring_->fixed_files();
#else
    return false;
#endif
  }

  void engine_submit(std::vector<detail::swap_request>&& rs) {
#if ZB_HAVE_LIBURING
    if (ring_) return ring_->submit(std::move(rs));
#endif
    fallback_->submit(std::move(rs));
  }

private:
  bool uses_uring() const { return ring_ != nullptr; }
  // After files_ (in the base): the engines finish and join before the files close.
  using ring_ptr = std::unique_ptr<detail::uring_engine, void (*)(detail::uring_engine*)>;
  ring_ptr ring_{nullptr, nullptr};
  std::unique_ptr<detail::posix_engine> fallback_;
  std::string fallback_reason_;
  bool registered_ = false;
};

static_assert(swap_policy<uring>);

}  // namespace swap
ZB_NAMESPACE_END
