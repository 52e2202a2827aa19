/**
 * @file detail/watchdog.hpp
 * @brief The collective watchdog's protocol and verdict, independent of the transport
 *        (`mpi_watchdog.hpp` carries it over MPI).
 *
 * A wait that makes no progress for `collective_timeout` seconds starts an *incident*:
 * the waiting rank sends every rank its *position* (what the trainer asked the engine
 * for, at which step / micro-step, and which collective it waits in: kind, sequence
 * number on which communicator, size). Every rank that is inside a library wait (they
 * all poll the watchdog) answers with its own position, once. The lowest rank that
 * started an incident (the *leader*) waits a grace period for the answers, then sends
 * the *verdict* — one text built from every position it has — and every rank raises it
 * (`collective_error`). A rank that is not inside a library call cannot answer (busy in
 * the trainer's own code, or stopped without dying): the verdict names it as such; when
 * it next calls the library it raises the same verdict. After an incident the
 * communicators are unusable (their collectives no longer pair up), as after a failure.
 *
 * The verdict groups the ranks by position. A strict majority in one position makes
 * every other rank "diverged" (named with its position); no majority (e.g. two ranks)
 * lists every rank's position side by side; ranks that did not answer are named first.
 * Every rank in the same place means nobody diverged: a transport problem or a timeout
 * too short for the collective.
 */
#pragma once

#include "../../core/config.hpp"
#include "../../core/error.hpp"

#include <algorithm>
#include <atomic>
#include <map>
#include <optional>
#include <string>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace detail {

/// @brief What the engine (or any user of a communicator) is doing, for the watchdog's
/// reports: set at each call, formatted only when an incident needs it.
struct watch_activity {
  /// e.g. "acquire"; nullptr: not inside an engine call. Atomic: the engine's thread
  /// sets it, a thread waiting on a dup (an `async_saver`) may read it in an incident.
  std::atomic<const char*> call{nullptr};
  std::string (*describe)(const void* self) = nullptr;  ///< more detail (unit, step, …)
  const void* self = nullptr;  ///< set once by the engine, before any other thread waits
  std::string text() const {
    if (!call.load(std::memory_order_relaxed)) return "outside any engine call";
    return describe ? describe(self) : std::string(call.load(std::memory_order_relaxed));
  }
  void clear() {
    call.store(nullptr, std::memory_order_relaxed);
    describe = nullptr;
    self = nullptr;
  }
};

/// @brief Ranks listed as "0, 2 and 3".
inline std::string rank_list(const std::vector<int>& r) {
  std::string out;
  for (std::size_t i = 0; i < r.size(); ++i) {
    if (i) out += i + 1 == r.size() ? " and " : ", ";
    out += std::to_string(r[i]);
  }
  return out;
}

/**
 * @brief The incident's verdict from each rank's position (`std::nullopt`: no answer).
 * Deterministic: the same positions give the same text on every rank.
 */
inline std::string watchdog_verdict(double timeout_s, double grace_s, int initiator,
                                    const std::vector<std::optional<std::string>>& positions) {
  const int n = static_cast<int>(positions.size());
  std::vector<int> silent;
  std::map<std::string, std::vector<int>> groups;
  for (int r = 0; r < n; ++r) {
    if (positions[static_cast<std::size_t>(r)]) groups[*positions[static_cast<std::size_t>(r)]].push_back(r);
    else silent.push_back(r);
  }
  std::string out = concat("collective watchdog: rank ", initiator, " waited ", timeout_s,
                           " s (collective_timeout) without progress. ");
  auto many = [](const std::vector<int>& r) { return r.size() == 1 ? "rank " : "ranks "; };
  // Positions in order of their lowest rank, so the text does not depend on sorting.
  std::vector<std::pair<int, const std::string*>> order;
  for (const auto& [pos, ranks] : groups) order.push_back({ranks.front(), &pos});
  std::sort(order.begin(), order.end());
  auto list_all = [&](const char* head) {
    out += head;
    for (std::size_t i = 0; i < order.size(); ++i) {
      const auto& ranks = groups.at(*order[i].second);
      out += concat(i ? "; " : "", many(ranks), rank_list(ranks), ": ", *order[i].second);
    }
    out += ".";
  };
  if (!silent.empty()) {
    out += concat(many(silent), rank_list(silent), " did not answer within ", grace_s,
                  " s: not inside a zeroblocks call (busy in the trainer's own code, or stopped without exiting).");
    if (!groups.empty()) list_all(" Where the others are: ");
    return out;
  }
  if (groups.size() == 1)
    return out + concat("Every rank is in the same place (", groups.begin()->first,
                        "): no rank diverged; the transport is stuck, or the timeout is too short for this "
                        "collective.");
  // A strict majority of the ranks in one position: everyone else diverged.
  for (const auto& [pos, ranks] : groups) {
    if (2 * ranks.size() <= static_cast<std::size_t>(n)) continue;
    for (const auto& o : order)
      if (*o.second != pos)
        out += concat(many(groups.at(*o.second)), rank_list(groups.at(*o.second)), " diverged: ", *o.second, ". ");
    return out + concat("The other ", many(ranks), rank_list(ranks), ": ", pos, ".");
  }
  list_all("The ranks disagree: ");
  return out;
}

}  // namespace detail
ZB_NAMESPACE_END
