/**
 * @file traffic.hpp
 * @brief What the planner asks of the roles that communicate: the shape of a step, and
 * the elements each role's collectives move in it (`comm_counters`, counted as the
 * communicators count at run time).
 *
 * Coordinators and bucketers offer `static step_traffic(lay, config, step_shape, ...,
 * comm_counters&)`; `Engine::estimate_traffic` adds them up, and `zeroblocks-plan`
 * prints the sum for world sizes nobody has to run. A test asserts that it equals what
 * the engine's counters report for the same step.
 */
#pragma once

#include "../comm/comm.hpp"
#include "../core/config.hpp"

ZB_NAMESPACE_BEGIN

/// @brief The step a planner assumes: `micro_steps` micro-steps, each acquiring every
/// unit once in registration order (forward) and once in reverse order (backward),
/// releasing each before acquiring the next — what `examples/train_mlp.cpp` and the test
/// harness do. Steady state: from the second step on (stage 3 then follows the trace
/// recorded in the first), every step applied.
struct step_shape {
  int micro_steps = 1;
  /// Gradients accumulated in fp32 (`grad_accum_dtype::fp32`): stages 0/1 reduce every
  /// micro-step, stage 0 all-gathers the fp32 sum once per step.
  bool accum32 = false;
};

ZB_NAMESPACE_END
