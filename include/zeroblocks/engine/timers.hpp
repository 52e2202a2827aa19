/**
 * @file timers.hpp
 * @brief Where a rank's wall-clock time goes, step by step, and the throughput line a
 * trainer prints every `steps_per_print` steps. [wall_clock_breakdown, steps_per_print]
 *
 * `engine::enable_timers(true)` makes the engine time each of its calls: acquire (what
 * the trainer waits for parameters: stage-3 gathers not hidden by prefetch, NVMe
 * parameter reads), grad_ready (bucket copies, reductions issued, reductions completed
 * on the way), end_micro_step (waiting for a micro-step's reductions still in flight),
 * and the step's phases: the boundary reduction (stages 0/1), the norm pass with its
 * agreement, the fused optimizer pass (with an NVMe tier's reads and writes, which it
 * pipelines; `tier_io_s` is the part of it spent waiting for the tier's reads and
 * writes) and publishing the parameters (the stage 1/2 all-gather). `take_timers()`
 * hands out what was summed since the last call and starts over.
 *
 * Off (the default) the engine only tests a flag per call; `bench/timers_overhead.cpp`
 * measures the on/off cost against each other in one run. Timers are per rank (a knob
 * that may differ across ranks; ranks never exchange them), read with `steady_clock`.
 *
 * `throughput_line(...)` formats the line: steps, samples/s, and TFLOP/s when the
 * trainer gives the flops of one sample (e.g. 6·params·tokens for a transformer's
 * forward + backward, the usual estimate), then the breakdown in ms per step.
 */
#pragma once

#include "../core/config.hpp"

#include <chrono>
#include <cstdio>
#include <string>

ZB_NAMESPACE_BEGIN

/// @brief Seconds spent in each part of the engine's calls, summed over `steps` steps.
struct step_timers {
  double acquire_s = 0;     ///< in acquire(): parameters not ready (gathers, tier reads)
  double grad_ready_s = 0;  ///< in grad_ready(): copies into buckets, reductions issued
  double micro_end_s = 0;   ///< in end_micro_step(): reductions still in flight
  double reduce_s = 0;      ///< step: the boundary reduction (stages 0/1) or fp32 all-gather
  double norm_s = 0;        ///< step: sum of squares, non-finite check, their agreement
  double fused_s = 0;       ///< step: the fused optimizer pass (with NVMe tier I/O)
  double publish_s = 0;     ///< step: parameters made current (stage 1/2 all-gather)
  double tier_io_s = 0;     ///< step: of `fused_s`, waiting for the NVMe tier's I/O (master::swapped)
  double step_s = 0;        ///< step(): the whole call
  long steps = 0;           ///< step() calls summed here
  long micro_steps = 0;     ///< end_micro_step() calls summed here

  /// @brief The engine's own time: every part above but `step_s` (which holds the step's parts).
  double engine_s() const { return acquire_s + grad_ready_s + micro_end_s + step_s; }
};

/// @brief Times one region into `slot` when `on`; a flag test when off.
class scoped_timer {
public:
  scoped_timer(bool on, double& slot) : slot_(on ? &slot : nullptr) {
    if (slot_) t0_ = std::chrono::steady_clock::now();
  }
  scoped_timer(const scoped_timer&) = delete;
  scoped_timer& operator=(const scoped_timer&) = delete;
  ~scoped_timer() {
    if (slot_) *slot_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }

private:
  double* slot_;
  std::chrono::steady_clock::time_point t0_{};
};

/// @brief The line a trainer prints every `steps_per_print` steps: `t` covers the last
/// `t.steps` steps, which took `wall_s` seconds of the trainer's wall clock and
/// processed `samples_per_step` samples each (global batch: micro-batch × micro-steps ×
/// ranks). `flops_per_sample` > 0 adds TFLOP/s (the whole job's, over all ranks).
inline std::string throughput_line(long step, const step_timers& t, double wall_s, double samples_per_step,
                                   double flops_per_sample = 0) {
  const double steps = t.steps > 0 ? static_cast<double>(t.steps) : 1.0;
  const double sps = wall_s > 0 ? samples_per_step * steps / wall_s : 0.0;
  char buf[512];
  int n = std::snprintf(buf, sizeof buf, "step %ld | %.1f samples/s", step, sps);
  if (flops_per_sample > 0 && n > 0 && n < static_cast<int>(sizeof buf))
    n += std::snprintf(buf + n, sizeof buf - n, " | %.3f TFLOP/s", sps * flops_per_sample / 1e12);
  auto ms = [&](double s) { return 1e3 * s / steps; };
  if (n > 0 && n < static_cast<int>(sizeof buf))
    std::snprintf(buf + n, sizeof buf - n,
                  " | ms/step: wall %.2f, engine %.2f (acquire %.2f, grad_ready %.2f, micro_end %.2f, step %.2f = "
                  "reduce %.2f + norm %.2f + fused %.2f + publish %.2f)",
                  ms(wall_s), ms(t.engine_s()), ms(t.acquire_s), ms(t.grad_ready_s), ms(t.micro_end_s),
                  ms(t.step_s), ms(t.reduce_s), ms(t.norm_s), ms(t.fused_s), ms(t.publish_s));
  std::string line = buf;
  if (t.tier_io_s > 0) {  // an NVMe tier: how much of the fused pass waited for the disk
    std::snprintf(buf, sizeof buf, " | tier I/O wait %.2f of fused", ms(t.tier_io_s));
    line += buf;
  }
  return line;
}

ZB_NAMESPACE_END
