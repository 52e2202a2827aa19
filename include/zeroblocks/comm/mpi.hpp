/**
 * @file mpi.hpp
 * @brief `comm::mpi`: collectives over MPI for host buffers.
 *
 * Reductions are built from an in-place `MPI_Ialltoall` (each rank receives every
 * rank's copy of its block) followed by `detail::reduce_blocks` (fp32 sum in rank order,
 * scaled, rounded once). So 16-bit payloads travel as 16 bits — no fp32 on the wire —
 * yet accumulate in fp32, and the result is bit-identical whichever collective carried
 * it, on any world size. This is what lets every ZeRO stage reproduce stage 0 exactly
 * when each step has one micro-step (with several, stages 2/3 reduce before they
 * accumulate, which rounds differently in 16 bits; see tests/engine/test_equivalence.cpp).
 *
 * Failure: a rank that hits an error calls `abort_peers(message)`, which sends the
 * message on a private duplicate communicator to every other rank. Every wait in this
 * communicator polls that channel, so a rank blocked in a collective the failed rank will
 * never join raises `zeroblocks::error("rank k failed: ...")` instead of hanging. After
 * that the communicator refuses further collectives.
 *
 * Watchdog (`detail/mpi_watchdog.hpp`): every wait also watches the clock. One that makes
 * no progress for `collective_timeout()` seconds (default 600; the engine sets its
 * `step.collective_timeout_s`) starts an incident: the ranks exchange where each one is
 * and every rank raises the same `collective_error` naming the rank that diverged (or did
 * not answer) and where. A communicator and its `dup()`s share one watchdog.
 *
 * The caller owns MPI initialisation (`MPI_Init_thread`, `MPI_Finalize`); `comm::mpi`
 * duplicates the communicator it is given and frees its duplicates on destruction.
 * Progress: while any non-blocking collective is in flight, a per-process thread keeps
 * MPI's progress engine turning (`detail/mpi_progress.hpp`), so gathers and reductions
 * advance while the trainer computes. That needs `MPI_THREAD_MULTIPLE`; without it they
 * advance only inside `request::test()` / `wait()` and the engine's calls.
 */
#pragma once

#include "comm.hpp"
#include "detail/control.hpp"
#include "detail/mpi_progress.hpp"  // also <mpi.h>, C API only (no deprecated C++ bindings)
#include "detail/mpi_abort_channel.hpp"
#include "detail/mpi_watchdog.hpp"
#include "detail/reduce.hpp"

#include <climits>
#include <string>
#include <type_traits>
#include <utility>

ZB_NAMESPACE_BEGIN
namespace comm {

/// @brief Collectives over an MPI communicator (duplicated at construction).
class mpi : public detail::control_ops<mpi> {
public:
  using communicator_concept = communicator_tag;
  static constexpr const char* name = "mpi";
  /// Payload buffers are host buffers (no CUDA-aware MPI assumed).
  static constexpr bool device_memory = false;

  /// @brief What a collective is, for the watchdog's reports.
  struct op_info {
    const char* kind = "?";
    unsigned long seq = 0;  ///< its number among this communicator's collectives
    std::size_t count = 0;
  };

  /// @brief A pending non-blocking collective; `wait()` completes it (and any local
  /// reduction that follows the transfer). Dropping a pending request abandons it.
  class request {
  public:
    request() = default;
    request(const request&) = delete;
    request& operator=(const request&) = delete;
    request(request&& o) noexcept { *this = std::move(o); }
    request& operator=(request&& o) noexcept {
      std::swap(comm_, o.comm_);
      std::swap(req_, o.req_);
      std::swap(next_, o.next_);
      std::swap(ticket_, o.ticket_);
      std::swap(job_, o.job_);
      std::swap(op_, o.op_);
      return *this;
    }
    /// @brief Block until complete; throws if a peer aborted meanwhile.
    void wait() {
      const auto started = std::chrono::steady_clock::now();
      if (job_) comm_->wait_offloaded(*job_, op_, started);
      while (comm_) {
        if (job_) job_done();
        else comm_->wait_request(req_, op_, started);
        advance();
      }
    }
    /// @brief Drive progress; true (and completed) when the whole operation is done.
    /// A two-stage request (all-reduce) starts its second transfer from here, so
    /// several of them must be tested in the order they were issued, as with wait().
    bool test() {
      if (job_) {
        if (job_->state.load(std::memory_order_acquire) < 2) return false;
        job_done();
        advance();
        return true;
      }
      if (comm_ && comm_->test_request(req_)) advance();
      return comm_ == nullptr;
    }
    bool pending() const { return comm_ != nullptr; }

  private:
    friend class mpi;
    /// `next` runs when the transfer completes: local work (a reduction) and, for a
    /// two-stage collective, the start of the second transfer, whose request it returns
    /// (MPI_REQUEST_NULL when the operation is complete).
    request(mpi* c, MPI_Request r, std::function<MPI_Request()> next)
        : comm_(c), req_(r), next_(std::move(next)), ticket_(c->progress_), op_(c->last_op_) {}
    request(mpi* c, std::shared_ptr<detail::offload_job> job) : comm_(c), job_(std::move(job)), op_(c->last_op_) {}
    /// The progress thread finished the job: raise its error, if any.
    void job_done() {
      auto j = std::move(job_);
      if (j->state.load(std::memory_order_acquire) == 3) std::exchange(comm_, nullptr)->check(j->rc, "MPI_Iallgather");
    }
    void advance() {
      auto f = std::move(next_);
      next_ = nullptr;
      const MPI_Request more = f ? f() : MPI_REQUEST_NULL;
      if (more == MPI_REQUEST_NULL) {
        comm_ = nullptr;
        ticket_.reset();
      } else {
        req_ = more;
      }
    }
    mpi* comm_ = nullptr;
    MPI_Request req_ = MPI_REQUEST_NULL;
    std::function<MPI_Request()> next_;
    detail::progress_ticket ticket_;  // keeps the progress thread polling while pending
    std::shared_ptr<detail::offload_job> job_;  // started and completed by the progress thread
    op_info op_;  // what it is, for the watchdog
  };

  /// @brief Duplicate `parent` for payload, for the abort channel and for the watchdog.
  explicit mpi(MPI_Comm parent = MPI_COMM_WORLD) : mpi(parent, nullptr) {}
  mpi(const mpi&) = delete;
  mpi& operator=(const mpi&) = delete;
  mpi(mpi&& o) noexcept { swap(o); }
  mpi& operator=(mpi&& o) noexcept {
    swap(o);
    return *this;
  }
  ~mpi() {
    progress_.reset();  // the last holder joins the thread, before MPI_Finalize
    if (failed() && !graveyard_.empty()) new std::vector<std::shared_ptr<void>>(std::move(graveyard_));  // leak, see wait_request
    int fin = 0;
    MPI_Finalized(&fin);
    if (fin || comm_ == MPI_COMM_NULL) return;
    // After a failure, abandoned non-blocking collectives still reference the
    // communicator from inside MPI's progress engine: freeing it would crash a later,
    // unrelated MPI call. Leak it instead; the process is expected to end. (The abort
    // channel cleans up after itself.)
    if (failed()) return;
    MPI_Comm_free(&comm_);
  }

  /// @brief A new communicator over the same ranks (collective): its collectives are
  /// ordered independently of this one's (the engine gathers parameters on one and
  /// reduces gradients on another, so the two streams cannot cross).
  mpi dup() const {
    mpi d(comm_, watchdog_);
    d.label_ = label_;
    return d;
  }

  // ---- the watchdog (detail/mpi_watchdog.hpp), shared with every dup() ----------

  /// @brief Seconds a wait may make no progress before the ranks are asked where they
  /// are and all raise the same error; 0 = never. Default 600 (NCCL's and PyTorch's
  /// order of magnitude). Every rank should set the same.
  void set_collective_timeout(double seconds) { watchdog_->set_timeout(seconds); }
  double collective_timeout() const { return watchdog_->timeout(); }
  /// @brief The name this communicator has in the watchdog's reports ("gradient", …).
  void set_label(std::string label) { label_ = std::move(label); }
  /// @brief Where the engine records the call it is in (read only in an incident).
  detail::watch_activity* watch_activity() { return &watchdog_->activity; }

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm handle() const { return comm_; }
  const comm_counters& counters() const { return counters_; }
  /// @brief True when a progress thread advances this communicator's non-blocking
  /// collectives between calls (MPI_THREAD_MULTIPLE, see detail/mpi_progress.hpp).
  bool async_progress() const { return progress_ != nullptr; }
  /// @brief True once a peer aborted (or this rank did); collectives then throw.
  bool failed() const { return (abort_ && abort_->failed()) || (watchdog_ && watchdog_->decided()); }
  /// @brief True when the failure came from another rank (it told everyone already).
  bool peer_failed() const { return abort_ && abort_->peer_failed(); }

  // ---- payload collectives ------------------------------------------------------

  template <class T>
  request iall_gather(const T* send, T* recv, std::size_t count) {
    // With a progress thread, no MPI call here: an MPI_Test on this thread (the abort
    // poll) can end up doing in-flight transfers' copies for the progress engine —
    // milliseconds on the trainer's thread. A peer's abort is then seen by the wait,
    // which polls for it.
    if (progress_) {
      if (failed()) ensure_usable();
    } else {
      ensure_usable();
    }
    note_op("all-gather", count);
    counters_.count_all_gather(count, size_);
    if (count == 0) return {};
    const int n = checked_count(count);
    const bool in_place = send == recv + static_cast<std::size_t>(rank_) * count;
    if (progress_) {  // the progress thread starts and completes it
      auto job = std::make_shared<detail::offload_job>();
      job->started = offload_started_;
      const MPI_Comm c = comm_;
      const MPI_Datatype dt = datatype<T>();
      job->start = [=](MPI_Request* r) {
        return MPI_Iallgather(in_place ? MPI_IN_PLACE : send, n, dt, recv, n, dt, c, r);
      };
      ++offload_submitted_;
      progress_->submit(job);
      return request(this, std::move(job));
    }
    MPI_Request r;
    check(MPI_Iallgather(in_place ? MPI_IN_PLACE : send, n, datatype<T>(), recv, n, datatype<T>(),
                         comm_, &r),
          "MPI_Iallgather");
    return request(this, r, nullptr);
  }
  template <class T>
  void all_gather(const T* send, T* recv, std::size_t count) {
    iall_gather(send, recv, count).wait();
  }

  /// @brief Non-blocking reduce-scatter; `buf` (count*size elements) is clobbered.
  template <class T>
  request ireduce_scatter(T* buf, T* recv, std::size_t count, float scale) {
    const int nb = size_;
    return exchange_then(buf, count, [buf, recv, count, scale, nb] {
      detail::reduce_blocks(buf, count, nb, count, scale, recv);
    });
  }
  template <class T>
  void reduce_scatter(T* buf, T* recv, std::size_t count, float scale) {
    ireduce_scatter(buf, recv, count, scale).wait();
  }
  /// @brief Reduce-scatter added to an fp32 accumulator: `acc[i] += scale * sum_j
  /// buf_j[rank][i]`, the same rank-ordered fp32 sum as `ireduce_scatter`, never rounded
  /// to T. T travels as T (16 bits on the wire for 16-bit T); counted as a reduce-scatter.
  /// `first`: `acc[i] = scale * sum` (the accumulator starts here and needs no zeroing).
  template <class T>
  request ireduce_scatter_accumulate(T* buf, float* acc, std::size_t count, float scale, bool first = false) {
    const int nb = size_;
    return exchange_then(buf, count, [buf, acc, count, scale, nb, first] {
      detail::reduce_blocks_accumulate(buf, count, nb, count, scale, acc, first);
    });
  }

  /// @brief Non-blocking in-place all-reduce: reduce-scatter (in-place all-to-all, then
  /// the fp32 rank-ordered sum) followed by an in-place all-gather, as one request.
  /// `count % size() == 0`.
  template <class T>
  request iall_reduce(T* buf, std::size_t count, float scale) {
    ensure_usable();
    note_op("all-reduce", count);
    ZB_REQUIRE(count % size_ == 0, "comm::mpi::all_reduce: count ", count,
               " is not a multiple of the world size ", size_, " (pad the buffer)");
    counters_.count_all_reduce(count);
    if (count == 0) return {};
    const std::size_t block = count / size_;
    const int n = checked_count(block);
    T* mine = buf + static_cast<std::size_t>(rank_) * block;
    MPI_Request r;
    in_order();
    check(MPI_Ialltoall(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, n, datatype<T>(), comm_, &r),
          "MPI_Ialltoall");
    const int nb = size_;
    return request(this, r, [this, buf, mine, block, scale, nb, n] {
      detail::reduce_blocks(buf, block, nb, block, scale, mine);
      MPI_Request gather;
      in_order();
      check(MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, n, datatype<T>(), comm_, &gather),
            "MPI_Iallgather");
      return gather;
    });
  }
  /// @brief In-place all-reduce; see `iall_reduce`.
  template <class T>
  void all_reduce(T* buf, std::size_t count, float scale) {
    iall_reduce(buf, count, scale).wait();
  }

  template <class T>
  request ibroadcast(T* buf, std::size_t count, int root) {
    ensure_usable();
    note_op("broadcast", count);
    ZB_REQUIRE(root >= 0 && root < size_, "comm::mpi::broadcast: root ", root, " out of range");
    counters_.count_broadcast(count);
    if (count == 0) return {};
    MPI_Request r;
    in_order();
    check(MPI_Ibcast(buf, checked_count(count), datatype<T>(), root, comm_, &r), "MPI_Ibcast");
    return request(this, r, nullptr);
  }
  template <class T>
  void broadcast(T* buf, std::size_t count, int root) {
    ibroadcast(buf, count, root).wait();
  }

  request ibarrier() {
    ensure_usable();
    note_op("barrier", 0);
    MPI_Request r;
    in_order();
    check(MPI_Ibarrier(comm_, &r), "MPI_Ibarrier");
    return request(this, r, nullptr);
  }
  void barrier() { ibarrier().wait(); }

  // ---- control (counted separately): all_gather_values, all_gather_strings and
  // agree come from detail::control_ops, over control_all_gather below.

  /// @brief Tell every other rank this rank failed, so their waits raise instead of
  /// hanging. Idempotent; never blocks.
  void abort_peers(const std::string& message) {
    // Nothing to send if we already sent, or if a peer's failure is what we are
    // reporting (the channel checks both).
    if (watchdog_ && watchdog_->decided()) return;  // every rank raises the verdict already
    if (abort_) abort_->send(message);
  }

private:
  friend class detail::control_ops<mpi>;

  /// The control helpers' transport: every rank's `bytes` bytes, in rank order. The
  /// buffers live in one block that outlives a failed wait (a peer's transfer may still
  /// write into it).
  std::vector<char> control_all_gather(const void* mine, std::size_t bytes) {
    note_op("agreement", bytes);
    const op_info op = last_op_;
    auto io = std::make_shared<std::vector<char>>(bytes * (static_cast<std::size_t>(size_) + 1));
    std::memcpy(io->data(), mine, bytes);
    MPI_Request r;
    in_order();
    check(MPI_Iallgather(io->data(), checked_count(bytes), MPI_CHAR, io->data() + bytes, checked_count(bytes),
                         MPI_CHAR, comm_, &r),
          "MPI_Iallgather");
    wait_request(r, io, op, std::chrono::steady_clock::now());
    return {io->begin() + static_cast<std::ptrdiff_t>(bytes), io->end()};
  }
  comm_counters& control_counters() { return counters_; }

  template <class T>
  static MPI_Datatype datatype() {
    if constexpr (std::is_same_v<T, float>) return MPI_FLOAT;
    else if constexpr (std::is_same_v<T, double>) return MPI_DOUBLE;
    else {
      static_assert(sizeof(T) == 2, "comm::mpi: element type must be float, half or bfloat16");
      return MPI_UINT16_T;  // 16-bit floats travel as bits; we do the arithmetic
    }
  }
  static int checked_count(std::size_t n) {
    ZB_REQUIRE(n <= static_cast<std::size_t>(INT_MAX), "comm::mpi: ", n,
               " elements in one call exceed MPI's int count; split the unit");
    return static_cast<int>(n);
  }
  /// Collectives must start in the same order on every rank: before starting one from
  /// this thread, let the progress thread start every all-gather queued before it.
  void in_order() const {
    while (offload_started_->load(std::memory_order_acquire) < offload_submitted_) sched_yield();
  }
  /// Wait for an offloaded operation, watching the abort channel (every millisecond) as
  /// `wait_request` does.
  void wait_offloaded(const detail::offload_job& job, const op_info& op, std::chrono::steady_clock::time_point started) {
    using clock = std::chrono::steady_clock;
    clock::time_point deadline{}, next_poll = clock::now();
    for (unsigned spins = 0; job.state.load(std::memory_order_acquire) < 2; ++spins) {
      if (spins > 64) sched_yield();
      if (clock::now() < next_poll) continue;
      next_poll = clock::now() + std::chrono::milliseconds(1);
      watch(op, started);
      if (poll_abort()) {
        if (deadline == clock::time_point{}) deadline = clock::now() + std::chrono::milliseconds(200);
        else if (clock::now() > deadline) ZB_FAIL(abort_->reason());
      }
    }
  }
  /// An MPI error on this rank (a size mismatch between ranks shows up as a truncation
  /// here): tell the peers, then throw.
  void check(int rc, const char* what) {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    const std::string message = detail::concat("comm::mpi: ", what, " failed: ", std::string(text, len));
    abort_peers(message);
    ZB_FAIL(message);
  }
  /// The reduce-scatters' transfer: an in-place all-to-all of `count` elements per rank
  /// (each rank receives every rank's copy of its block), then `reduce` (counted as a
  /// reduce-scatter of `count`).
  template <class T, class Reduce>
  request exchange_then(T* buf, std::size_t count, Reduce reduce) {
    ensure_usable();
    note_op("reduce-scatter", count);
    counters_.count_reduce_scatter(count, size_);
    if (count == 0) return {};
    const int n = checked_count(count);
    MPI_Request r;
    in_order();
    check(MPI_Ialltoall(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, n, datatype<T>(), comm_, &r), "MPI_Ialltoall");
    return request(this, r, [reduce] {
      reduce();
      return MPI_REQUEST_NULL;
    });
  }
  void ensure_usable() {
    if (watchdog_) watchdog_->check([this] { return detail::concat("starting a collective on the ", label_, " communicator"); });
    if (poll_abort()) ZB_FAIL(abort_->reason().empty() ? std::string("comm::mpi: communicator unusable after a failure")
                                                       : abort_->reason());
  }
  /// A peer's abort message, if one arrived; true once this communicator failed.
  bool poll_abort() { return abort_ && abort_->poll(); }
  bool test_request(MPI_Request& r) {
    int flag = 0;
    check(MPI_Test(&r, &flag, MPI_STATUS_IGNORE), "MPI_Test");
    if (!flag) poll_abort();
    return flag != 0;
  }
  /// Wait; if it fails, `keep` (the receive buffer) is kept alive for good, since the
  /// abandoned transfer may still write into it.
  void wait_request(MPI_Request& r, std::shared_ptr<void> keep, const op_info& op,
                    std::chrono::steady_clock::time_point started) {
    try {
      wait_request(r, op, started);
    } catch (...) {
      graveyard_.push_back(std::move(keep));
      throw;
    }
  }
  void wait_request(MPI_Request& r, const op_info& op, std::chrono::steady_clock::time_point started) {
    // Poll rather than MPI_Wait so a peer's abort message can interrupt us; yield
    // after a short spin so oversubscribed ranks (more ranks than cores) progress.
    using clock = std::chrono::steady_clock;
    clock::time_point deadline{};
    for (unsigned spins = 0; !test_request(r); ++spins) {
      watch(op, started);
      if (failed()) {
        // A peer failed. It may have failed *after* joining this collective, which
        // then still completes: give it a moment, so this rank's own next call (and
        // not a collective that was fine) is where the failure surfaces.
        if (deadline == clock::time_point{}) deadline = clock::now() + std::chrono::milliseconds(200);
        else if (clock::now() > deadline) ZB_FAIL(abort_->reason());
      }
      if (spins > 64) sched_yield();
    }
  }
  /// The watchdog's turn in a wait (rate-limited inside; throws its verdict).
  void watch(const op_info& op, std::chrono::steady_clock::time_point started) {
    if (watchdog_) watchdog_->watch(started, [&] { return describe(op); });
  }
  void note_op(const char* kind, std::size_t count) { last_op_ = {kind, ++op_seq_, count}; }
  std::string describe(const op_info& op) const {
    return detail::concat(op.kind, " #", op.seq, " (", op.count, op.count == 1 ? " element" : " elements",
                          ") on the ", label_, " communicator");
  }
  /// `parent` duplicated; the watchdog shared with the communicator this one dups.
  mpi(MPI_Comm parent, std::shared_ptr<detail::mpi_watchdog> watchdog) {
    int init = 0;
    MPI_Initialized(&init);
    ZB_REQUIRE(init, "comm::mpi: MPI is not initialised; call MPI_Init_thread first");
    check(MPI_Comm_dup(parent, &comm_), "MPI_Comm_dup");
    // Errors come back as codes (and then as zeroblocks::error), not as a job abort.
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    // The abort protocol on a private duplicate (detail/abort_channel.hpp).
    abort_ = std::make_unique<detail::mpi_abort_channel>("comm::mpi", parent);
    watchdog_ = watchdog ? std::move(watchdog) : std::make_shared<detail::mpi_watchdog>(parent);
    progress_ = detail::mpi_progress::shared();
  }

  void swap(mpi& o) noexcept {
    std::swap(comm_, o.comm_);
    std::swap(watchdog_, o.watchdog_);
    std::swap(label_, o.label_);
    std::swap(op_seq_, o.op_seq_);
    std::swap(last_op_, o.last_op_);
    std::swap(rank_, o.rank_);
    std::swap(size_, o.size_);
    std::swap(counters_, o.counters_);
    std::swap(abort_, o.abort_);  // on the heap: a posted receive survives the move
    std::swap(graveyard_, o.graveyard_);
    std::swap(progress_, o.progress_);
    std::swap(offload_started_, o.offload_started_);
    std::swap(offload_submitted_, o.offload_submitted_);
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  comm_counters counters_;
  std::unique_ptr<detail::mpi_abort_channel> abort_;
  std::shared_ptr<detail::mpi_watchdog> watchdog_;
  std::string label_ = "user's";
  unsigned long op_seq_ = 0;  ///< collectives started on this communicator
  op_info last_op_;
  std::vector<std::shared_ptr<void>> graveyard_;
  std::shared_ptr<detail::mpi_progress> progress_;
  std::shared_ptr<std::atomic<unsigned long>> offload_started_ = std::make_shared<std::atomic<unsigned long>>(0);
  unsigned long offload_submitted_ = 0;
};

static_assert(communicator_policy<mpi>);

}  // namespace comm
ZB_NAMESPACE_END
