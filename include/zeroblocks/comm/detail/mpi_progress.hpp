/**
 * @file detail/mpi_progress.hpp
 * @brief Background progress for MPI non-blocking operations (used by `comm::mpi`).
 *
 * Open MPI (and most MPIs) advance a non-blocking collective only while some thread is
 * inside an MPI call: a rank that starts an `MPI_Iallgather` and then multiplies
 * matrices for 20 ms gets its data no earlier than its next `MPI_Test`. To overlap
 * communication with the trainer's computation, one thread per process enters MPI's
 * progress engine (an `MPI_Iprobe` on a private `MPI_COMM_SELF` duplicate, which runs
 * every pending operation's progress) while operations are in flight, and sleeps on a
 * condition variable when none are. All-gathers go further (`offload_job`): the thread
 * starts them, tests them and marks them done, so the trainer's thread only queues one
 * and later reads an atomic — on a busy machine, a trainer thread that enters MPI
 * contends for MPI's locks with this one and pays for copies it need not make.
 *
 * It needs `MPI_THREAD_MULTIPLE`. With a lower thread level (or
 * `ZEROBLOCKS_MPI_PROGRESS=off`) there is no thread: operations then advance inside
 * zeroblocks calls only, and rank 0 says so once on stderr. The pause between polls is
 * `ZEROBLOCKS_MPI_PROGRESS_US` microseconds (default 20; 0 = yield only): shorter
 * polls cut latency, longer ones leave more CPU to the trainer.
 *
 * The thread lives while any `comm::mpi` (or one of its requests) holds a reference;
 * the last one joins it, so every `comm::mpi` must be destroyed before `MPI_Finalize`
 * (as the MPI handles they own already require).
 */
#pragma once

#include "../../core/config.hpp"
#include "../../core/env.hpp"
#include "../../core/error.hpp"

#include "mpi_include.hpp"  // <mpi.h>, C API only
#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace detail {

/// @brief A non-blocking operation the progress thread starts and completes, so the
/// trainer's thread spends no time in MPI for it (not even the local copy an
/// all-gather starts with). `state`: 0 queued, 1 running, 2 done, 3 failed (`rc`).
struct offload_job {
  std::function<int(MPI_Request*)> start;
  MPI_Request req = MPI_REQUEST_NULL;
  int rc = MPI_SUCCESS;
  std::atomic<int> state{0};
  std::shared_ptr<std::atomic<unsigned long>> started;  // the communicator's started-job count
};

class mpi_progress {
public:
  /// @brief The process's progress thread, started on first use; nullptr when MPI lacks
  /// MPI_THREAD_MULTIPLE or the environment turned it off.
  static std::shared_ptr<mpi_progress> shared() {
    static std::mutex m;
    static std::weak_ptr<mpi_progress> current;
    std::lock_guard<std::mutex> lock(m);
    if (auto p = current.lock()) return p;
    if (!wanted()) return nullptr;
    auto p = std::shared_ptr<mpi_progress>(new mpi_progress());
    current = p;
    return p;
  }

  mpi_progress(const mpi_progress&) = delete;
  mpi_progress& operator=(const mpi_progress&) = delete;
  ~mpi_progress() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Comm_free(&self_);
  }

  /// @brief An operation started: keep polling until the matching `end()`.
  void begin() {
    if (active_.fetch_add(1, std::memory_order_acq_rel) == 0) {
      std::lock_guard<std::mutex> lock(m_);  // pairs with the wait in loop()
      cv_.notify_one();
    }
  }
  void end() { active_.fetch_sub(1, std::memory_order_acq_rel); }
  /// @brief Queue an operation for the thread to start, in submission order.
  void submit(std::shared_ptr<offload_job> job) {
    {
      std::lock_guard<std::mutex> lock(m_);
      queue_.push_back(std::move(job));
    }
    begin();
    cv_.notify_one();
  }
  /// @brief Times the thread entered MPI's progress engine (for tests and benchmarks).
  unsigned long polls() const { return polls_.load(std::memory_order_relaxed); }

private:
  mpi_progress() : pause_us_(pause_from_env()) {
    MPI_Comm_dup(MPI_COMM_SELF, &self_);
    thread_ = std::thread([this] { loop(); });
  }

  /// Thread support and the environment switch; warns (rank 0, once) when it is off
  /// for want of MPI_THREAD_MULTIPLE.
  static bool wanted() {
    if (env::mpi_progress_off()) return false;
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    if (level == MPI_THREAD_MULTIPLE) return true;
    static std::atomic<bool> warned{false};
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0 && !warned.exchange(true))
      std::fprintf(stderr,
                   "zeroblocks: MPI was initialised without MPI_THREAD_MULTIPLE, so no progress thread: "
                   "non-blocking collectives advance only inside zeroblocks calls and do not overlap "
                   "computation (use MPI_Init_thread(..., MPI_THREAD_MULTIPLE, ...))\n");
    return false;
  }
  static unsigned pause_from_env() { return env::mpi_progress_pause_us(); }

  void loop() {
    for (;;) {
      if (active_.load(std::memory_order_acquire) == 0) {
        std::unique_lock<std::mutex> lock(m_);
        cv_.wait(lock, [&] { return stop_.load() || active_.load(std::memory_order_acquire) > 0; });
        if (stop_.load()) return;
      }
      if (stop_.load(std::memory_order_acquire)) return;
      std::vector<std::shared_ptr<offload_job>> fresh;
      {
        std::lock_guard<std::mutex> lock(m_);
        fresh.swap(queue_);
      }
      for (auto& j : fresh) {
        j->rc = j->start(&j->req);
        j->started->fetch_add(1, std::memory_order_release);
        if (j->rc != MPI_SUCCESS) {
          finish(*j, 3);
        } else {
          j->state.store(1, std::memory_order_release);
          running_.push_back(std::move(j));
        }
      }
      for (std::size_t i = 0; i < running_.size();) {
        int flag = 0;
        const int rc = MPI_Test(&running_[i]->req, &flag, MPI_STATUS_IGNORE);
        if (flag || rc != MPI_SUCCESS) {
          running_[i]->rc = rc;
          finish(*running_[i], rc == MPI_SUCCESS ? 2 : 3);
          running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
        } else {
          ++i;
        }
      }
      if (running_.empty()) {  // only the trainer thread's own requests: drive them
        int flag = 0;
        MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, self_, &flag, MPI_STATUS_IGNORE);
      }
      polls_.fetch_add(1, std::memory_order_relaxed);
      if (pause_us_ == 0) sched_yield();
      else std::this_thread::sleep_for(std::chrono::microseconds(pause_us_));
    }
  }

  void finish(offload_job& j, int state) {
    j.state.store(state, std::memory_order_release);
    end();
  }

  MPI_Comm self_ = MPI_COMM_NULL;
  std::vector<std::shared_ptr<offload_job>> queue_;    // submitted, not started (guarded by m_)
  std::vector<std::shared_ptr<offload_job>> running_;  // started by this thread, not complete
  const unsigned pause_us_;
  std::atomic<int> active_{0};
  std::atomic<unsigned long> polls_{0};
  std::mutex m_;
  std::condition_variable cv_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

/// @brief Holds one `begin()` on a progress thread until completion or destruction.
class progress_ticket {
public:
  progress_ticket() = default;
  explicit progress_ticket(std::shared_ptr<mpi_progress> p) : p_(std::move(p)) {
    if (p_) p_->begin();
  }
  progress_ticket(const progress_ticket&) = delete;
  progress_ticket& operator=(const progress_ticket&) = delete;
  progress_ticket(progress_ticket&& o) noexcept : p_(std::move(o.p_)) {}
  progress_ticket& operator=(progress_ticket&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = std::move(o.p_);
    }
    return *this;
  }
  ~progress_ticket() { reset(); }
  void reset() {
    if (p_) p_->end();
    p_.reset();
  }

private:
  std::shared_ptr<mpi_progress> p_;
};

}  // namespace detail
ZB_NAMESPACE_END
