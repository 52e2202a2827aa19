/**
 * @file detail/nccl_state.hpp
 * @brief `comm::nccl`'s shared state (`nccl_state`: the NCCL handle, stream, events, failure) and an issued operation (`nccl_op`).
 *
 * Part of `comm::nccl` (`comm/nccl.hpp`, whose header comment describes the whole).
 */
#pragma once

#include "nccl_base.hpp"

ZB_NAMESPACE_BEGIN
namespace detail {

struct nccl_state;

/// @brief This thread's NCCL group: depth, the communicators with operations in it, what
/// must run once it is launched (events, kernels, second phases) in issue order, and the
/// communicators to abort once it is closed (NCCL would defer an abort made inside a
/// group to the group's end anyway; we make that explicit).
struct nccl_group_state {
  int depth = 0;
  std::vector<std::shared_ptr<nccl_state>> touched;
  std::vector<std::function<void()>> after;
  std::vector<std::weak_ptr<nccl_state>> aborts;
};
inline nccl_group_state& nccl_group_now() {
  thread_local nccl_group_state g;
  return g;
}

/// @brief The collective watchdog of a communicator family (a `comm::nccl` and every
/// `dup()`/`split()` of it share one): the deadline, what the caller is doing, and — when
/// bootstrapped over MPI — the position exchange of `comm::mpi` (`mpi_watchdog`) on a
/// duplicate of the MPI communicator. Without MPI (the file bootstrap) the first rank
/// past its deadline names itself, what it waited for and where its caller was.
struct nccl_watch {
  double timeout_s = 600;   ///< 0 = wait forever
  watch_activity activity;  ///< the caller's position (file bootstrap)
#if ZB_NCCL_WITH_MPI
  std::shared_ptr<mpi_watchdog> exchange;  ///< the MPI bootstrap's position exchange
#endif
  watch_activity* caller() {
#if ZB_NCCL_WITH_MPI
    if (exchange) return &exchange->activity;
#endif
    return &activity;
  }
};

/// @brief What a communicator and its requests share: the NCCL handle, the stream, the
/// event pool, the abort channel, the failure state. It outlives the `comm::nccl` while
/// requests hold it.
struct nccl_state : std::enable_shared_from_this<nccl_state> {
  ncclComm_t comm = nullptr;
  int rank = 0;
  int size = 0;
  int device = 0;
  comm::nccl_config cfg;
  std::shared_ptr<nccl_abort_channel> channel;
  cudaStream_t stream = nullptr;   ///< owned: where the collectives run
  /// The trainer's stream (not owned), which collectives follow: stream 0 until set.
  cudaStream_t compute = nullptr;
  cudaEvent_t ready = nullptr;  ///< recorded on the compute stream before each collective
  std::vector<cudaEvent_t> spare_events;
  void* barrier_word = nullptr;  ///< a few bytes of device memory barriers reduce
  bool aborted = false;          ///< ncclCommAbort was called
  bool abort_queued = false;     ///< to be aborted when this thread's group closes
  bool failed = false;           ///< unusable; `reason` says why
  std::string reason;
  /// The family's watchdog (`comm::nccl::set_collective_timeout`; the engine sets its
  /// `step.collective_timeout_s`).
  std::shared_ptr<nccl_watch> watch = std::make_shared<nccl_watch>();
  std::string label = "NCCL";  ///< "gradient", "parameter", … in the watchdog's reports

  nccl_state() = default;
  nccl_state(const nccl_state&) = delete;
  nccl_state& operator=(const nccl_state&) = delete;

  /// @brief Wrap an NCCL communicator being initialised (`ncclCommInitRankConfig` or
  /// `ncclCommSplit` returned it): wait for it (non-blocking), then make the stream,
  /// events and barrier word. On failure the communicator is aborted, peers are told.
  static std::shared_ptr<nccl_state> make(ncclComm_t c, int rank, int size, const comm::nccl_config& cfg,
                                          std::shared_ptr<nccl_abort_channel> channel,
                                          cudaStream_t compute,
                                          const char* what) {
    auto s = std::make_shared<nccl_state>();
    s->comm = c;
    s->rank = rank;
    s->size = size;
    s->cfg = cfg;
    s->channel = std::move(channel);
    s->compute = compute;
    // The current device is the communicator's (checked below): if settling fails, the
    // destructor must not make another device current.
    if (cudaGetDevice(&s->device) != cudaSuccess) s->device = 0;
    s->settle(c, what, cfg.init_timeout);
    try {
      ZB_REQUIRE(ncclCommUserRank(c, &s->rank) == ncclSuccess && ncclCommCount(c, &s->size) == ncclSuccess &&
                     ncclCommCuDevice(c, &s->device) == ncclSuccess,
                 "comm::nccl: querying the new communicator failed");
      ZB_CUDA_CHECK(cudaStreamCreateWithPriority(&s->stream, cudaStreamNonBlocking, cfg.stream_priority));
      ZB_CUDA_CHECK(cudaEventCreateWithFlags(&s->ready, cudaEventDisableTiming));
      s->barrier_word = cuda_space::allocate(16);
    } catch (const std::exception& e) {
      s->fail_quietly(concat("comm::nccl: setting up the communicator on rank ", rank, " failed: ", e.what()));
      throw;
    }
    return s;
  }

  ~nccl_state() {
    int previous = -1;
    const bool switch_device = cudaGetDevice(&previous) == cudaSuccess && previous != device;
    if (switch_device) (void)cudaSetDevice(device);
    if (comm && !aborted) {
      bool ok = !failed && !(channel && channel->poll());
      if (ok) {
        try {
          // Let issued work finish (watching for a peer's failure), then finalise.
          host_wait([&] { return query(cudaStreamQuery(stream), "cudaStreamQuery"); });
          const ncclResult_t r = ncclCommFinalize(comm);
          if (r == ncclSuccess || r == ncclInProgress) settle(comm, "ncclCommFinalize", cfg.init_timeout);
          else ok = false;
        } catch (...) {
          ok = false;
        }
      }
      if (ok && !aborted) {
        (void)ncclCommDestroy(comm);
      } else if (!aborted) {
        (void)ncclCommAbort(comm);  // directly: no group can outlive us usefully
        aborted = true;
      }
    }
    if (barrier_word) (void)cudaFreeAsync(barrier_word, stream ? stream : cudaStreamLegacy);
    if (stream) {
      (void)cudaStreamSynchronize(stream);
      (void)cudaStreamDestroy(stream);
    }
    if (ready) (void)cudaEventDestroy(ready);
    for (cudaEvent_t e : spare_events) (void)cudaEventDestroy(e);
    (void)cudaGetLastError();
    if (switch_device) (void)cudaSetDevice(previous);
  }

  /// @brief An event for a collective's completion (from the pool).
  cudaEvent_t take_event() {
    if (!spare_events.empty()) {
      cudaEvent_t e = spare_events.back();
      spare_events.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    cuda_ok(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    return e;
  }
  void give_event(cudaEvent_t e) noexcept { spare_events.push_back(e); }

  /// @brief Stop the NCCL communicator (and its kernels). Idempotent. Inside a group,
  /// queued until the group is closed.
  void abort_nccl() noexcept {
    if (!comm || aborted) {
      aborted = true;
      return;
    }
    auto& g = nccl_group_now();
    if (g.depth > 0) {
      if (!abort_queued) {
        try {
          g.aborts.push_back(weak_from_this());
          abort_queued = true;
          return;
        } catch (...) {
          // (no memory: abort now)
        }
      } else {
        return;
      }
    }
    (void)ncclCommAbort(comm);
    aborted = true;
    abort_queued = false;
  }
  /// @brief Mark failed (the first reason stays), abort NCCL; tell nobody; no throw.
  void stop(const std::string& message) noexcept {
    if (!failed) {
      failed = true;
      try {
        reason = message;
      } catch (...) {
      }
    }
    abort_nccl();
  }
  /// @brief Mark failed, tell the peers, abort NCCL; no throw.
  void fail_quietly(const std::string& message) noexcept {
    if (channel) channel->send(message);
    stop(message);
  }
  /// @brief Mark failed (telling the peers unless `tell_peers` is false), abort NCCL, throw.
  [[noreturn]] void fail(const std::string& message, bool tell_peers = true,
                         ::zeroblocks::detail::source_location loc = ::zeroblocks::detail::source_location::current()) {
    if (tell_peers) fail_quietly(message);
    else stop(message);
    throw error(message, location_string(loc));
  }
  void cuda_ok(cudaError_t e, const char* what, ::zeroblocks::detail::source_location loc = ::zeroblocks::detail::source_location::current()) {
    if (e != cudaSuccess)
      fail(concat("comm::nccl: ", what, " failed on rank ", rank, ": ", cuda_error_text(e)), true, loc);
  }
  void nccl_ok(ncclResult_t r, const char* what, ::zeroblocks::detail::source_location loc = ::zeroblocks::detail::source_location::current()) {
    if (r != ncclSuccess && r != ncclInProgress)
      fail(concat("comm::nccl: ", what, " failed on rank ", rank, ": ", nccl_error_text(r, comm)), true, loc);
  }
  /// @brief cudaSuccess → true, cudaErrorNotReady → false, anything else fails.
  bool query(cudaError_t e, const char* what) {
    if (e == cudaErrorNotReady) {
      (void)cudaGetLastError();
      return false;
    }
    cuda_ok(e, what);
    return true;
  }

  /// @brief Throw if this communicator failed, a peer reported failure, or NCCL reports an
  /// asynchronous error (in the last two cases, abort it first).
  void check(::zeroblocks::detail::source_location loc = ::zeroblocks::detail::source_location::current()) {
    if (failed) throw error(reason, location_string(loc));
    if (channel && channel->poll()) fail(channel->reason(), false, loc);
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm, &state);
    if (r != ncclSuccess)
      fail(concat("comm::nccl: ncclCommGetAsyncError failed on rank ", rank, ": ", nccl_error_text(r, comm)), true,
           loc);
    if (state != ncclSuccess && state != ncclInProgress)
      fail(concat("comm::nccl: NCCL reported an error on rank ", rank, ": ", nccl_error_text(state, comm)), true, loc);
  }

  /// @brief Wait (host) until a non-blocking communicator `c` has finished what it was
  /// doing (`what`), watching the abort channel; `timeout` 0 = none.
  void settle(ncclComm_t c, const char* what, std::chrono::milliseconds timeout = std::chrono::milliseconds(0)) {
    const auto start = std::chrono::steady_clock::now();
    for (unsigned n = 0;; ++n) {
      ncclResult_t state = ncclInProgress;
      const ncclResult_t r = ncclCommGetAsyncError(c, &state);
      if (r != ncclSuccess) fail(concat("comm::nccl: ", what, " on rank ", rank, ": ", nccl_error_text(r, c)));
      if (state == ncclSuccess) return;
      if (state != ncclInProgress)
        fail(concat("comm::nccl: ", what, " failed on rank ", rank, ": ", nccl_error_text(state, c)));
      if (channel && channel->poll()) fail(channel->reason(), false);
      if (timeout.count() > 0 && std::chrono::steady_clock::now() - start > timeout)
        fail(concat("comm::nccl: ", what, " did not complete within ",
                    std::chrono::duration<double>(timeout).count(), " s on rank ", rank, " (do all ", size,
                    " ranks make this call?)"));
      nccl_backoff(n);
    }
  }

  /// @brief Poll `done()` until true, checking for failures while waiting. Past the
  /// family's `collective_timeout`: over MPI, an incident of the position exchange (every
  /// rank raises the same `collective_error` naming the rank that diverged and where);
  /// otherwise this communicator fails (aborted, the peers told: each raises
  /// `rank r failed: collective watchdog: …`) naming `what` and the caller's position.
  template <class Done>
  void host_wait(Done&& done, const char* what = "the collectives issued") {
    const auto start = std::chrono::steady_clock::now();
    for (unsigned n = 0; !done(); ++n) {
      if (n >= 64) {
        check();
        watch_wait(start, what, n);
      }
      nccl_backoff(n);
    }
  }

  /// @brief Before issuing work: raise the verdict of an incident, or take part in one
  /// that started while this rank was away (MPI bootstrap; nothing otherwise).
  void watch_check() {
#if ZB_NCCL_WITH_MPI
    if (!watch->exchange) return;
    try {
      watch->exchange->check([this] { return concat("starting a collective on the ", label, " communicator"); });
    } catch (const collective_error& e) {
      stop(e.reason());  // every rank raises the verdict: tell nobody
      throw;
    }
#endif
  }
  /// @brief Whether the family's position exchange ended in a verdict.
  bool verdict_reached() const {
#if ZB_NCCL_WITH_MPI
    return watch->exchange && watch->exchange->decided();
#else
    return false;
#endif
  }

private:
  void watch_wait(std::chrono::steady_clock::time_point start, const char* what, unsigned n) {
#if ZB_NCCL_WITH_MPI
    if (watch->exchange) {
      try {
        watch->exchange->watch(start, [&] {
          // No device number: ranks in the same place must give the same text.
          return concat(what, " on the ", label, " communicator (comm::nccl)");
        });
      } catch (const collective_error& e) {
        stop(e.reason());  // every rank raises the verdict: tell nobody
        throw;
      }
      return;
    }
#endif
    const double limit = watch->timeout_s;
    if (limit > 0 && n % 256 == 0 &&
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > limit)
      fail(concat("collective watchdog: comm::nccl on rank ", rank, " (device ", device, ") waited ", limit,
                  " s (collective_timeout) for ", what, " on the ", label,
                  " communicator to complete on the device, ", watch->caller()->text(),
                  "; a peer that never issued its part, a stuck kernel or a lost link. The communicator is "
                  "aborted"));
  }
};

/// @brief One issued operation: its completion event, recorded once it is on the stream.
struct nccl_op {
  std::shared_ptr<nccl_state> st;
  cudaEvent_t done = nullptr;
  bool recorded = false;

  explicit nccl_op(std::shared_ptr<nccl_state> s) : st(std::move(s)) { done = st->take_event(); }
  nccl_op(const nccl_op&) = delete;
  nccl_op& operator=(const nccl_op&) = delete;
  ~nccl_op() {
    if (done) st->give_event(done);
  }
  void record() {
    st->cuda_ok(cudaEventRecord(done, st->stream), "cudaEventRecord");
    recorded = true;
  }
};
}  // namespace detail
ZB_NAMESPACE_END
