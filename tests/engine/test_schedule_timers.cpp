// The engine applying a learning-rate schedule (`set_lr_schedule`) and timing its calls
// (`enable_timers`, `take_timers`, `throughput_line`), on one rank (comm::self):
//  - a scheduled engine equals, bit for bit, one whose trainer sets the same rates by
//    hand, and the rate in effect after each update is the schedule's; skipped
//    overflow steps do not advance it; a bad rate is an error;
//  - the timers count steps and micro-steps, every phase is >= 0 and the step's phases
//    fit inside it; off, they stay zero; `take_timers` starts over;
//  - the throughput line's figures, computed by hand.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "error_of.hpp"
#include "harness.hpp"

#include <zeroblocks/optim/schedule.hpp>

#include <zeroblocks/master/swapped.hpp>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

namespace zb = zeroblocks;
using S = zb::comm::self;
using zbt::error_of;
using zbt::has;

namespace {

zb::schedule::warmup_decay_lr test_schedule() {
  zb::schedule::warmup_decay_lr s;
  s.total_num_steps = 6;
  s.warmup_min_lr = 0.001;
  s.warmup_max_lr = 0.02;
  s.warmup_num_steps = 3;
  s.warmup_type = "linear";
  return s;
}

/// Train `steps` steps; `before_step(eng, s)` runs before each step().
template <class E, class F>
zbt::run_output train(const zbt::run_options& o, F before_step, bool timers = false,
                      std::vector<float>* lrs = nullptr, zb::step_timers* t = nullptr) {
  zbt::synthetic_model model(o.width, o.grouped);
  E eng(model.reg, S{}, zbt::config_for<E>(o));
  eng.enable_timers(timers);
  zbt::init_params(eng, model);
  zbt::run_output out;
  for (int s = 0; s < o.steps; ++s) {
    zbt::run_micro_steps(eng, model, o, s);
    before_step(eng, s);
    out.results.push_back(eng.step());
    if (lrs) lrs->push_back(eng.get_config().optim.lr);
  }
  if (t) *t = eng.take_timers();
  out.master = eng.gather_master();
  if (t) CHECK(eng.timers().steps == 0);  // taken: starts over
  return out;
}

}  // namespace

TEST_CASE_TEMPLATE("set_lr_schedule equals setting the same rates by hand; overflow steps do not advance it", E,
                   zb::stage2<S, zb::half>, zb::stage3<S, zb::bfloat16>, zb::stage0<S, float>) {
  zbt::run_options o;
  o.steps = 6;
  o.gas = 2;
  o.overflow_step = std::is_same_v<typename E::param_type, zb::half> ? 2 : -1;
  const auto sched = test_schedule();
  std::vector<float> lrs;
  auto scheduled = train<E>(o, [&](E& eng, int s) {
    if (s == 0) eng.set_lr_schedule([sched](long n) { return static_cast<float>(sched.lr(n - 1)); });
  }, false, &lrs);
  // By hand: the trainer sets DeepSpeed's engine rate for the update about to run.
  auto by_hand = train<E>(o, [&](E& eng, int) {
    eng.set_learning_rate(static_cast<float>(sched.lr(eng.steps() - 1)));
  });
  CHECK(zbt::first_difference(scheduled.master, by_hand.master) == -1);
  // The rate in effect after each step is the one its update used: lr(n - 1) for the
  // n-th applied update (n from 0); a skipped step leaves n where it was.
  long n = 0;
  for (std::size_t s = 0; s < lrs.size(); ++s) {
    INFO("step " << s);
    CHECK(lrs[s] == static_cast<float>(sched.lr(n - 1)));
    if (scheduled.results[s].applied) ++n;
  }
  if (o.overflow_step >= 0) CHECK_FALSE(scheduled.results[o.overflow_step].applied);
  // It made a difference: a constant rate gives other parameters.
  auto constant = train<E>(o, [](E&, int) {});
  CHECK(zbt::first_difference(scheduled.master, constant.master) != -1);
}

TEST_CASE("a schedule that gives a bad rate is an error naming the update") {
  zbt::run_options o;
  o.steps = 1;
  auto msg = error_of([&] {
    train<zb::stage2<S>>(o, [](zb::stage2<S>& eng, int) { eng.set_lr_schedule([](long) { return NAN; }); });
  });
  CHECK(has(msg, "the learning-rate schedule gave nan for update 1 (must be finite and >= 0)"));
}

TEST_CASE_TEMPLATE("timers: steps, micro-steps and phases add up; off they stay zero", E, zb::stage1<S>,
                   zb::stage3<S>) {
  zbt::run_options o;
  o.steps = 3;
  o.gas = 2;
  zb::step_timers on, off;
  auto a = train<E>(o, [](E&, int) {}, true, nullptr, &on);
  auto b = train<E>(o, [](E&, int) {}, false, nullptr, &off);
  CHECK(zbt::first_difference(a.master, b.master) == -1);  // timing changes nothing
  CHECK(on.steps == 3);
  CHECK(on.micro_steps == 6);
  for (double x : {on.acquire_s, on.grad_ready_s, on.micro_end_s, on.reduce_s, on.norm_s, on.fused_s, on.publish_s})
    CHECK(x >= 0.0);
  CHECK(on.step_s > 0.0);
  CHECK(on.fused_s > 0.0);
  CHECK(on.reduce_s + on.norm_s + on.fused_s + on.publish_s <= on.step_s);
  CHECK(on.engine_s() >= on.step_s);
  CHECK(on.tier_io_s == 0.0);  // no tier
  // Off: nothing timed (the counts still run).
  CHECK(off.step_s == 0.0);
  CHECK(off.acquire_s == 0.0);
  CHECK(off.fused_s == 0.0);
  CHECK(off.steps == 3);
}

TEST_CASE("timers: an NVMe tier's I/O waits are a part of the fused phase") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(ZB_SWAP_TEST_DIR) / "timers-tier";
  fs::create_directories(dir);
  using E = zb::stage2_nvme<S, zb::bfloat16, zb::swap::posix>;
  zbt::synthetic_model model(64, false);
  zbt::run_options o;
  auto cfg = zbt::config_for<E>(o);
  cfg.master.swap.paths = {dir.string()};
  E eng(model.reg, S{}, cfg);
  eng.enable_timers(true);
  zbt::init_params(eng, model);
  for (int s = 0; s < 3; ++s) {
    zbt::run_micro_steps(eng, model, o, s);
    eng.step();
  }
  const auto t = eng.take_timers();
  CHECK(t.tier_io_s > 0.0);
  CHECK(t.tier_io_s <= t.fused_s);
  CHECK(has(zb::throughput_line(3, t, 1.0, 1.0), " | tier I/O wait "));
}

TEST_CASE("throughput_line: samples/s and TFLOP/s from the step count and the wall clock") {
  zb::step_timers t;
  t.steps = 10;
  t.step_s = 0.5;
  t.fused_s = 0.25;
  t.acquire_s = 0.1;
  const std::string line = zb::throughput_line(40, t, 2.0, 8.0, 1e12);
  INFO(line);
  CHECK(has(line, "step 40 | 40.0 samples/s | 40.000 TFLOP/s"));  // 10 steps x 8 samples / 2 s
  CHECK(has(line, "wall 200.00, engine 60.00 (acquire 10.00,"));   // ms per step
  CHECK(has(line, "step 50.00 = reduce 0.00 + norm 0.00 + fused 25.00 + publish 0.00)"));
  CHECK_FALSE(has(zb::throughput_line(1, t, 2.0, 8.0), "TFLOP/s"));
  CHECK_FALSE(has(line, "tier I/O"));  // only with a tier
  t.tier_io_s = 0.125;
  CHECK(has(zb::throughput_line(40, t, 2.0, 8.0), "publish 0.00) | tier I/O wait 12.50 of fused"));
}
