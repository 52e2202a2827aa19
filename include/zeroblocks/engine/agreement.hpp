/**
 * @file agreement.hpp
 * @brief The engine's per-step agreement: before each step (and, for stages 2/3, each
 * micro-step, and each unchecked stage-3 acquire) every rank must be at the same call,
 * step and micro-step, with the same stage-3 acquire/release order, learning rate and
 * loss scale, acquiring the same unit, and — at `step()` — holding no unit. The values
 * that entered the engine since the last agreement (`set_param`) must be the same too
 * (`initial_values.hpp`): checked here, before the first step or gather uses them.
 *
 * One small all-gather of a few numbers on the engine's control communicator; a
 * difference throws the same message on every rank. A different stage-3 order is
 * named by its first differing event (the whole orders are exchanged only then).
 */
#pragma once

#include "../coordinate/coordinate.hpp"  // release_bit
#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../layout/layout.hpp"
#include "checks.hpp"
#include "initial_values.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace detail {

/// @brief The stage-3 acquire/release events of the current step, and their hash.
class trace_log {
public:
  void log(std::uint32_t e) {
    events_.push_back(e);
    hash_ = (hash_ ^ (static_cast<std::uint64_t>(e) + 1)) * 1099511628211ull;
  }
  void clear() {
    events_.clear();
    hash_ = seed;
  }
  std::span<const std::uint32_t> events() const { return events_; }
  std::size_t size() const { return events_.size(); }
  std::uint64_t hash() const { return hash_; }

private:
  static constexpr std::uint64_t seed = 1469598103934665603ull;
  std::vector<std::uint32_t> events_;
  std::uint64_t hash_ = seed;
};

/// @brief Where the agreement is run from.
enum class call_site { begin_micro_step = 1, step = 2, acquire = 3, end_eval = 4 };

/// @brief What this rank reports at an agreement.
struct rank_position {
  call_site where = call_site::step;
  long steps = 0;            ///< steps applied (or skipped) so far
  int micro_steps = 0;       ///< micro-steps completed in this step
  std::size_t unit = 0;      ///< the unit being acquired (`call_site::acquire`)
  std::size_t held = 0;      ///< units held now
  double lr = 0.0;           ///< learning rate in effect
  double loss_scale = 1.0;   ///< loss scale in effect
};

inline std::string call_text(double call, double unit, const layout& lay) {
  if (call == 1.0) return "begin_micro_step()";
  if (call == 2.0) return "step()";
  if (call == 4.0) return "end_eval()";
  return concat("acquire('", lay.unit_name(static_cast<std::size_t>(unit)), "')");
}

inline std::string event_text(std::uint32_t e, const layout& lay) {
  return concat(e & release_bit ? "release '" : "acquire '", lay.unit_name(e & ~release_bit), "'");
}

/// The stage-3 orders differ (hash or length): exchange them and name the first
/// difference. Collective; every rank throws the same message.
template <class Comm>
[[noreturn]] void fail_on_order(Comm& control, const layout& lay, const trace_log& log, long steps) {
  std::vector<std::string> mine;
  for (auto e : log.events()) mine.push_back(std::to_string(e));
  agree_on_lines(control, mine, [&](std::size_t i, const std::string* a, const std::string* b, int r) {
    auto text = [&](const std::string* s) {
      return s ? event_text(static_cast<std::uint32_t>(std::stoul(*s)), lay) : std::string("<none>");
    };
    ZB_FAIL("stage 3: ranks acquire and release units in different orders: event #", i + 1, " of step ", steps + 1,
            " is ", text(a), " on rank 0 but ", text(b), " on rank ", r,
            " (every rank must acquire and release units in the same order)");
  });
  ZB_FAIL("stage 3: ranks acquire and release units in different orders (hash mismatch)");
}

/// Every rank must be at the same place (see the file comment). Collective on `control`.
/// The values that entered the engine since the last agreement (`values`) are compared
/// too, after the position: equal, their hashes are dropped; different, every rank
/// throws naming the parameter (`initial_values.hpp`).
template <class Comm>
void agree_on_position(Comm& control, const layout& lay, const trace_log& log, const rank_position& p,
                       initial_values& values) {
  enum field { f_call, f_step, f_micro, f_events, f_hash_hi, f_hash_lo, f_lr, f_scale, f_unit, f_held,
               f_values_hi, f_values_lo, k };
  const char* names[] = {"call", "step", "completed micro-steps", "", "", "", "learning rate", "loss scale"};
  std::vector<double> mine(k);
  mine[f_call] = static_cast<double>(p.where);
  mine[f_step] = static_cast<double>(p.steps);
  mine[f_micro] = static_cast<double>(p.micro_steps);
  mine[f_events] = static_cast<double>(log.size());
  mine[f_hash_hi] = static_cast<double>(log.hash() >> 32);
  mine[f_hash_lo] = static_cast<double>(log.hash() & 0xffffffffu);
  mine[f_lr] = p.lr;
  mine[f_scale] = p.loss_scale;
  mine[f_unit] = static_cast<double>(p.unit);
  mine[f_held] = static_cast<double>(p.held);
  const std::uint64_t vh = values.summary();
  mine[f_values_hi] = static_cast<double>(vh >> 32);
  mine[f_values_lo] = static_cast<double>(vh & 0xffffffffu);
  const auto all = control.all_gather_values(mine);
  auto at = [&](int r, int f) { return all[static_cast<std::size_t>(r) * k + f]; };
  for (int r = 1; r < control.size(); ++r)
    for (int i = f_call; i <= f_scale; ++i) {
      if (at(r, i) == at(0, i)) continue;
      if (i == f_call)
        ZB_FAIL("ranks out of step: rank 0 is in ", call_text(at(0, f_call), at(0, f_unit), lay), " after ",
                at(0, f_micro), " micro-step(s) and ", at(0, f_events), " stage-3 acquire/release(s) but rank ", r,
                " is in ", call_text(at(r, f_call), at(r, f_unit), lay), " after ", at(r, f_micro), " and ",
                at(r, f_events), " (every rank must run the same micro-steps and acquire the same units)");
      if (i >= f_events && i <= f_hash_lo) fail_on_order(control, lay, log, p.steps);
      ZB_FAIL("ranks disagree on the ", names[i], ": ", at(0, i), " on rank 0, ", at(r, i), " on rank ", r);
    }
  if (p.where == call_site::acquire)
    for (int r = 1; r < control.size(); ++r)
      if (at(r, f_unit) != at(0, f_unit))
        ZB_FAIL("stage 3: ranks acquire different units at event #", log.size() + 1, " of step ", p.steps + 1, ": '",
                lay.unit_name(static_cast<std::size_t>(at(0, f_unit))), "' on rank 0 but '",
                lay.unit_name(static_cast<std::size_t>(at(r, f_unit))), "' on rank ", r,
                " (every rank must acquire units in the same order)");
  if (p.where == call_site::step || p.where == call_site::end_eval)
    for (int r = 0; r < control.size(); ++r)
      if (at(r, f_held) > 0)
        ZB_FAIL(p.where == call_site::step ? "step" : "end_eval", ": rank ", r, " still holds ", at(r, f_held),
                " acquired unit(s); release every unit before ",
                p.where == call_site::step ? "step() (stage 3 would keep stale parameters)" : "end_eval()");
  for (int r = 1; r < control.size(); ++r)
    if (at(r, f_values_hi) != at(0, f_values_hi) || at(r, f_values_lo) != at(0, f_values_lo))
      values.fail(control, lay, concat("set_param (checked at ", call_text(at(0, f_call), at(0, f_unit), lay), ")").c_str());
  values.settle();
}

}  // namespace detail
ZB_NAMESPACE_END
