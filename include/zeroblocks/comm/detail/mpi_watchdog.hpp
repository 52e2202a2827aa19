/**
 * @file detail/mpi_watchdog.hpp
 * @brief The collective watchdog (`watchdog.hpp`) over MPI: point-to-point messages on
 *        a private duplicate communicator, shared by a `comm::mpi` and every `dup()` of
 *        it (the engine's gradient, gather and control communicators), so a rank waiting
 *        on one of them hears about an incident started on another.
 *
 * Every library wait calls `watch(started, waiting_for)` in its polling loop; every
 * collective's start calls `check()`. Messages (each prefixed with the channel's nonce,
 * as the abort channel's): `S` a rank's position, starting or answering an incident;
 * `V` the leader's verdict. Needs `<mpi.h>` (included first by `comm/mpi.hpp`).
 */
#pragma once

#include "../../core/config.hpp"
#include "../../core/error.hpp"
#include "watchdog.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace detail {

class mpi_watchdog {
  using clock = std::chrono::steady_clock;

public:
  /// Collective over `parent`.
  explicit mpi_watchdog(MPI_Comm parent) {
    ZB_REQUIRE(MPI_Comm_dup(parent, &comm_) == MPI_SUCCESS, "watchdog: MPI_Comm_dup failed");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    if (rank_ == 0) {
      std::random_device rd;
      nonce_ = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
    }
    ZB_REQUIRE(MPI_Bcast(&nonce_, 1, MPI_UINT64_T, 0, comm_) == MPI_SUCCESS, "watchdog: MPI_Bcast failed");
    positions_.resize(static_cast<std::size_t>(size_));
    post();
  }
  mpi_watchdog(const mpi_watchdog&) = delete;
  mpi_watchdog& operator=(const mpi_watchdog&) = delete;
  ~mpi_watchdog() {
    int fin = 0;
    MPI_Finalized(&fin);
    if (fin || comm_ == MPI_COMM_NULL) return;
    if (req_ != MPI_REQUEST_NULL) {
      MPI_Cancel(&req_);
      MPI_Wait(&req_, MPI_STATUS_IGNORE);
    }
    for (int flag = 1; flag;) {
      MPI_Status st;
      MPI_Iprobe(MPI_ANY_SOURCE, tag, comm_, &flag, &st);
      if (flag) MPI_Recv(in_.get(), capacity, MPI_CHAR, st.MPI_SOURCE, tag, comm_, MPI_STATUS_IGNORE);
    }
    if (incident_) return;  // sends may be in flight: leak the communicator (the process ends)
    MPI_Comm_free(&comm_);
  }

  /// @brief Seconds a wait may make no progress before an incident; 0 = never.
  void set_timeout(double seconds) {
    ZB_REQUIRE(seconds >= 0.0 && seconds < 1e9, "collective_timeout ", seconds, " s must be >= 0 (0 = off)");
    timeout_ = seconds;
  }
  double timeout() const { return timeout_; }
  /// @brief How long the leader waits for answers: half the timeout, 1 to 30 s.
  double grace() const { return std::min(30.0, std::max(1.0, 0.5 * timeout_)); }

  /// @brief What the engine is doing (set at each of its calls; read in an incident).
  watch_activity activity;

  /// @brief Whether an incident ended in a verdict (the communicators are then unusable).
  bool decided() const { return decided_.load(std::memory_order_acquire); }

  /// @brief In a wait's polling loop: start an incident when this wait, begun at
  /// `started`, exceeded the timeout; take part in one that started. Throws the verdict.
  /// Thread-safe (an `async_saver`'s thread waits on a dup too): one thread at a time
  /// does the watchdog's work, the others skip their turn.
  void watch(clock::time_point started, const std::function<std::string()>& waiting_for) {
    if (decided_.load(std::memory_order_acquire)) raise();
    std::unique_lock lock(m_, std::try_to_lock);
    if (!lock) return;
    const auto now = clock::now();
    if (now < next_poll_) return;
    next_poll_ = now + std::chrono::milliseconds(1);
    receive();
    if (!incident_ && timeout_ > 0 && now - started > std::chrono::duration<double>(timeout_)) begin(now);
    if (incident_) take_part(waiting_for);
  }

  /// @brief Before a collective starts (and on the engine's calls): raise the verdict of
  /// an incident, or take part in one that started while this rank was elsewhere.
  void check(const std::function<std::string()>& about_to) {
    if (decided_.load(std::memory_order_acquire)) raise();
    {
      std::unique_lock lock(m_, std::try_to_lock);
      if (!lock) return;
      const auto now = clock::now();
      if (now < next_check_) return;
      next_check_ = now + std::chrono::microseconds(100);
      receive();
      if (!incident_) return;
    }
    // An incident started while this rank was outside the library: answer and wait for
    // the verdict here (the incident ends within the leader's grace).
    for (unsigned spins = 0;; ++spins) {
      if (decided_.load(std::memory_order_acquire)) raise();
      {
        std::lock_guard lock(m_);
        take_part(about_to);
        receive();
      }
      if (spins > 64) sched_yield();
    }
  }

private:
  static constexpr int capacity = 4096;
  static constexpr int tag = 11;

  void begin(clock::time_point now) {
    incident_ = true;
    entered_ = now;
    initiator_ = rank_;
    leader_ = std::min(leader_, rank_);
  }
  /// Answer once, then (leader) decide or (others) wait for the verdict.
  void take_part(const std::function<std::string()>& waiting_for) {
    if (verdict_) raise_locked();
    if (!answered_) {
      answered_ = true;
      const std::string mine = position(waiting_for);
      positions_[static_cast<std::size_t>(rank_)] = mine;
      leader_ = std::min(leader_, rank_);
      send('S', mine);
    }
    const double in = std::chrono::duration<double>(clock::now() - entered_).count();
    std::size_t have = 0;
    for (const auto& p : positions_) have += p.has_value();
    if (leader_ == rank_ && (have == positions_.size() || in > grace())) {
      decide(watchdog_verdict(timeout_, grace(), initiator_, positions_));
      send('V', *verdict_);
      raise_locked();
    }
    // The leader stopped too (it cannot send a verdict): decide alone, later.
    if (leader_ != rank_ && in > 4 * grace() + 5.0) {
      decide(watchdog_verdict(timeout_, grace(), initiator_, positions_) +
             concat(" (rank ", leader_, " was to send the verdict and did not; this is rank ", rank_, "'s)"));
      raise_locked();
    }
  }
  std::string position(const std::function<std::string()>& waiting_for) const {
    std::string w = waiting_for ? waiting_for() : std::string();
    return w.empty() ? activity.text() : concat(activity.text(), ", waiting in ", w);
  }

  void receive() {
    while (req_ != MPI_REQUEST_NULL) {
      int flag = 0;
      MPI_Status st;
      if (MPI_Test(&req_, &flag, &st) != MPI_SUCCESS || !flag) return;
      req_ = MPI_REQUEST_NULL;
      std::uint64_t nonce = 0;
      std::memcpy(&nonce, in_.get(), sizeof nonce);
      const char kind = in_[sizeof nonce];
      const std::string text(in_.get() + sizeof nonce + 1);
      post();
      if (nonce != nonce_) continue;  // for an earlier channel on a reused context id
      const int from = st.MPI_SOURCE;
      if (kind == 'V') {
        if (!verdict_) decide(text);
        incident_ = true;
        continue;
      }
      if (kind != 'S' || from < 0 || from >= size_) continue;
      positions_[static_cast<std::size_t>(from)] = text;
      if (!incident_) {
        incident_ = true;
        entered_ = clock::now();
        initiator_ = from;
      }
      leader_ = std::min(leader_, from);  // the lowest rank that answered decides
    }
  }
  void decide(std::string verdict) {
    verdict_ = std::move(verdict);
    decided_.store(true, std::memory_order_release);
  }
  /// The same text and location on every rank.
  [[noreturn]] void raise() {
    std::lock_guard lock(m_);
    raise_locked();
  }
  [[noreturn]] void raise_locked() const {
    throw collective_error(*verdict_, location_string(::zeroblocks::detail::source_location::current()));
  }

  void send(char kind, const std::string& text) {
    // Freed, not waited for: the buffer must outlive the sends (leaked, once per process).
    char* out = new char[capacity]();
    std::memcpy(out, &nonce_, sizeof nonce_);
    out[sizeof nonce_] = kind;
    std::strncpy(out + sizeof nonce_ + 1, text.c_str(), capacity - sizeof nonce_ - 2);
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      MPI_Request q;
      if (MPI_Isend(out, capacity, MPI_CHAR, r, tag, comm_, &q) == MPI_SUCCESS) MPI_Request_free(&q);
    }
  }
  void post() {
    in_[capacity] = '\0';
    if (MPI_Irecv(in_.get(), capacity, MPI_CHAR, MPI_ANY_SOURCE, tag, comm_, &req_) != MPI_SUCCESS)
      req_ = MPI_REQUEST_NULL;
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  MPI_Request req_ = MPI_REQUEST_NULL;
  int rank_ = 0, size_ = 1;
  std::uint64_t nonce_ = 0;
  std::unique_ptr<char[]> in_ = std::make_unique<char[]>(capacity + 1);  // + a terminating zero
  double timeout_ = 600.0;
  bool incident_ = false, answered_ = false;
  int leader_ = 1 << 30, initiator_ = -1;
  clock::time_point entered_{}, next_poll_{}, next_check_{};
  std::vector<std::optional<std::string>> positions_;
  std::optional<std::string> verdict_;  ///< written once, before decided_
  std::atomic<bool> decided_{false};
  std::mutex m_;  ///< the state above (a dup may be waited on from another thread)
};

}  // namespace detail
ZB_NAMESPACE_END
