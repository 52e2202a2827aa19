/**
 * @file detail/control.hpp
 * @brief The engine's small agreements, written once for every communicator:
 *        `all_gather_values`, `all_gather_strings` and `agree`, over one transport
 *        primitive each communicator supplies.
 *
 * A communicator derives from `control_ops<Derived>` (CRTP) and provides
 *
 * ```
 * void ensure_usable();                                        // throws after a failure
 * std::vector<char> control_all_gather(const void* mine, std::size_t bytes);
 *                                        // every rank's `bytes` bytes, in rank order
 * comm_counters& control_counters();
 * ```
 *
 * Everything here is control traffic: counted in `control_elements` / `control_calls`,
 * never as payload. `agree` is the collective check the engine's construction and
 * transactional steps rely on: when any rank passes `ok == false`, every rank throws the
 * message of the lowest such rank, prefixed with its number.
 */
#pragma once

#include "../../core/config.hpp"
#include "../../core/error.hpp"
#include "../comm.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace detail {

template <class Derived>
class control_ops {
public:
  /// @brief Every rank's values (same count on each rank), concatenated in rank order.
  std::vector<double> all_gather_values(const std::vector<double>& mine) {
    auto& d = self();
    d.ensure_usable();
    auto& c = d.control_counters();
    c.control_elements += mine.size() * static_cast<std::size_t>(d.size());
    c.control_calls += 1;
    if (mine.empty()) return {};
    const std::vector<char> all = d.control_all_gather(mine.data(), mine.size() * sizeof(double));
    std::vector<double> out(mine.size() * static_cast<std::size_t>(d.size()));
    std::memcpy(out.data(), all.data(), out.size() * sizeof(double));
    return out;
  }

  /// @brief Every rank's string, in rank order (lengths first, then the padded bytes).
  std::vector<std::string> all_gather_strings(const std::string& mine) {
    auto& d = self();
    d.ensure_usable();
    const std::vector<double> lens = all_gather_values({static_cast<double>(mine.size())});
    d.control_counters().control_calls += 1;
    std::size_t longest = 0;
    for (double l : lens) longest = std::max(longest, static_cast<std::size_t>(l));
    std::vector<std::string> out(static_cast<std::size_t>(d.size()));
    if (longest == 0) return out;
    std::string padded = mine;
    padded.resize(longest, '\0');
    const std::vector<char> all = d.control_all_gather(padded.data(), longest);
    for (std::size_t r = 0; r < out.size(); ++r)
      out[r].assign(all.data() + r * longest, static_cast<std::size_t>(lens[r]));
    return out;
  }

  /// @brief Collective check. If any rank passes `ok == false`, every rank throws the
  /// message of the lowest such rank (prefixed with its number).
  void agree(bool ok, const std::string& message) {
    auto& d = self();
    d.ensure_usable();
    auto& c = d.control_counters();
    c.control_elements += 1;
    c.control_calls += 1;
    const std::int32_t mine = ok ? d.size() : d.rank();
    const std::vector<char> all = d.control_all_gather(&mine, sizeof mine);
    std::int32_t first = d.size();
    for (int r = 0; r < d.size(); ++r) {
      std::int32_t v;
      std::memcpy(&v, all.data() + static_cast<std::size_t>(r) * sizeof v, sizeof v);
      first = std::min(first, v);
    }
    if (first == d.size()) return;
    // Only the failing ranks' messages travel; the lowest one is reported.
    const auto texts = all_gather_strings(d.rank() == first ? message : std::string());
    ZB_FAIL("rank ", first, ": ", texts[static_cast<std::size_t>(first)]);
  }

private:
  Derived& self() { return static_cast<Derived&>(*this); }
};

}  // namespace detail
ZB_NAMESPACE_END
