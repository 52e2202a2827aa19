/**
 * @file detail/abort_channel.hpp
 * @brief The abort protocol, written once for every communicator: the side channel a
 *        failed rank uses to tell its peers, so that they raise an error instead of
 *        waiting forever in a collective the failed rank will never join.
 *
 * `abort_channel` is the protocol — send once, poll (rate-limited) while waiting,
 * remember who failed and why — over a transport: `mpi_abort_channel`
 * (`mpi_abort_channel.hpp`: point-to-point MPI messages on a private duplicate
 * communicator; `comm::mpi`, and `comm::nccl` bootstrapped over MPI) or
 * `file_abort_channel` (a file the first failing rank links into place; `comm::nccl`
 * bootstrapped through a shared directory). Peers see "rank k failed: <message>"; the
 * failing rank's own calls raise "<who>: unusable after this rank failed: <message>".
 */
#pragma once

#include "../../core/config.hpp"
#include "../../core/error.hpp"

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

ZB_NAMESPACE_BEGIN
namespace detail {

/// @brief The abort protocol over a transport (`do_send`, `do_poll`).
class abort_channel {
public:
  explicit abort_channel(std::string who) : who_(std::move(who)) {}
  virtual ~abort_channel() = default;
  abort_channel(const abort_channel&) = delete;
  abort_channel& operator=(const abort_channel&) = delete;

  /// @brief Tell every other rank that this rank failed. Idempotent; never blocks or
  /// throws. Nothing is sent once a peer's failure was received (that is what this rank
  /// would report).
  void send(const std::string& message) noexcept {
    if (failed_) return;
    failed_ = true;
    sent_ = true;
    try {
      reason_ = concat(who_, ": unusable after this rank failed: ", message);
      do_send(message);
    } catch (...) {
      // Best effort: peers may then only notice through the transport itself.
    }
  }
  /// @brief Look for a peer's message (at most every 100 µs); true once failed.
  bool poll() noexcept {
    if (failed_) return true;
    const auto now = std::chrono::steady_clock::now();
    if (now < next_poll_) return false;
    next_poll_ = now + std::chrono::microseconds(100);
    try {
      if (auto m = do_poll()) {
        failed_ = true;
        reason_ = std::move(*m);
      }
    } catch (...) {
    }
    return failed_;
  }
  bool failed() const noexcept { return failed_; }
  /// @brief The failure came from another rank (which told everyone already).
  bool peer_failed() const noexcept { return failed_ && !sent_; }
  /// @brief "rank k failed: message", or this rank's own failure.
  const std::string& reason() const noexcept { return reason_; }

protected:
  virtual void do_send(const std::string& message) = 0;
  virtual std::optional<std::string> do_poll() = 0;

private:
  std::string who_;
  bool failed_ = false;
  bool sent_ = false;
  std::string reason_;
  std::chrono::steady_clock::time_point next_poll_{};
};

/// @brief Abort messages through a file: the first rank that fails links
/// "<rank>\n<message>" into place at `path`; the others look for it.
class file_abort_channel final : public abort_channel {
public:
  file_abort_channel(std::string who, std::filesystem::path path, int rank)
      : abort_channel(std::move(who)), path_(std::move(path)), rank_(rank) {}
  const std::filesystem::path& path() const noexcept { return path_; }

protected:
  void do_send(const std::string& message) override {
    std::filesystem::path tmp = path_;
    tmp += concat(".", rank_, ".", ::getpid(), ".tmp");
    {
      std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
      f << rank_ << '\n' << message;
    }
    std::error_code ec;
    std::filesystem::create_hard_link(tmp, path_, ec);  // fails if a peer was first: keep its message
    std::filesystem::remove(tmp, ec);
  }
  std::optional<std::string> do_poll() override {
    std::error_code ec;
    if (!std::filesystem::exists(path_, ec)) return std::nullopt;
    std::ifstream f(path_, std::ios::binary);
    std::string first;
    std::getline(f, first);
    std::ostringstream os;
    os << f.rdbuf();
    return concat("rank ", first.empty() ? std::string("?") : first, " failed: ", os.str());
  }

private:
  std::filesystem::path path_;
  int rank_;
};

}  // namespace detail
ZB_NAMESPACE_END
