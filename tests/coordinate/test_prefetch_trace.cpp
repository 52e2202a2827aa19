// coordinate::prefetch_trace (the stage3 preset) against its contract, on the world
// size mpirun gave (CTest runs 1, 2, 3 and 4 ranks; unit sizes do not divide evenly):
//  - the first step is recorded (served on demand), verified, then followed: gathers
//    are issued in trace order, ahead of their acquires;
//  - at every acquire: elements ahead <= prefetch_numel, gathers ahead <= max_inflight,
//    live elements <= max_live_numel, and gathered memory (buffers kept for reuse
//    included) <= max_live_numel elements;
//  - prefetch_across_steps: the next step's first gathers start when step() returns,
//    so no acquire of a followed step misses; results unchanged;
//  - reuse distance and persistence: elements communicated per step equal 3Ψ minus
//    what they save, computed here independently from the layout and the sequence;
//  - a step that leaves the trace (a skipped layer, a step that ends early): counted,
//    served on demand, no gathered memory left behind, re-recorded, and every run's
//    master weights equal stage 0's and on_demand's bit for bit;
//  - gather_params between steps and inside one: served aside, the trace neither
//    followed nor changed, the next acquires still prefetched;
//  - ranks whose acquire or release order differs fail with the first differing event
//    and both unit names.
#include "mpi_test_main.hpp"

#include <zeroblocks/comm/mpi.hpp>
#include <zeroblocks/zeroblocks.hpp>

#include "error_of.hpp"
#include "harness.hpp"

#include <cmath>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace zb = zeroblocks;
using zbt::error_of;
using zbt::has;
using C = zb::comm::mpi;
using T = zb::bfloat16;

namespace {

/// Six units of different sizes, each a weight and a small bias.
struct model {
  zb::param_registry reg;
  std::vector<zb::unit_id> units;
  std::vector<std::vector<zb::param_id>> params;  // per unit
  model() {
    const std::size_t sizes[] = {1000, 3001, 2000, 5003, 1500, 2500};
    for (std::size_t k = 0; k < 6; ++k) {
      const std::string unit = "layer" + std::to_string(k);
      auto w = reg.add("w" + std::to_string(k), {sizes[k]}, unit);
      auto b = reg.add("b" + std::to_string(k), {7 + k}, unit);
      units.push_back(reg.unit(unit));
      params.push_back({w, b});
    }
  }
};

using seq = std::vector<std::size_t>;
const seq fwd_all = {0, 1, 2, 3, 4, 5};
const seq bwd_all = {5, 4, 3, 2, 1, 0};

template <class E>
void init(E& eng, const model& m) {
  for (auto& ps : m.params)
    for (auto p : ps) {
      std::vector<float> v(eng.model_layout().param(p.index).numel);
      for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.02f * std::sin(0.37f * static_cast<float>(i + 3 * p.index));
      eng.set_param(p, v);
    }
}

/// The gradient of element i: from its gathered value (or a constant when the unit
/// was not acquired), the step and the rank.
template <class E>
void report(E& eng, const model& m, std::size_t u, int step, const std::function<float(zb::param_id, std::size_t)>& x) {
  for (auto p : m.params[u]) {
    const std::size_t n = eng.model_layout().param(p.index).numel;
    std::vector<T> grad(n);
    for (std::size_t i = 0; i < n; ++i)
      grad[i] = zb::from_float<T>(0.05f * std::sin(9.0f * x(p, i) + 0.1f * static_cast<float>(i) + static_cast<float>(step)) +
                                  0.003f * static_cast<float>(eng.rank()));
    eng.grad_ready(p, grad);
  }
}

/// Backward: acquire `bwd` one unit at a time and report its gradients; units in
/// `grads_only` get gradients without an acquire. `check` runs after every acquire.
template <class E>
void backward(E& eng, const model& m, const seq& bwd, int step, const std::function<void()>& check = [] {},
              const seq& grads_only = {}) {
  for (auto u : bwd) {
    auto g = eng.acquire(m.units[u]);
    check();
    report(eng, m, u, step, [&](zb::param_id p, std::size_t i) { return zb::to_float(g.param(p)[i]); });
  }
  for (auto u : grads_only) report(eng, m, u, step, [](zb::param_id, std::size_t) { return 0.01f; });
}

/// One micro-step: acquire `fwd` one unit at a time (each released before the next,
/// as a layer-by-layer trainer does), then backward.
template <class E>
void micro_step(E& eng, const model& m, const seq& fwd, const seq& bwd, int step,
                const std::function<void()>& check = [] {}, const seq& grads_only = {}) {
  eng.begin_micro_step();
  for (auto u : fwd) {
    auto g = eng.acquire(m.units[u]);
    CHECK(g.param(m.params[u][1]).size() == 7 + u);
    check();
  }
  backward(eng, m, bwd, step, check, grads_only);
  eng.end_micro_step();
}

/// The knobs of these tests, for any stage-3 engine: converts to its config (the
/// prefetch knobs go to coordinators that have them).
struct knob_set {
  zb::prefetch_config prefetch;
  template <class Cfg>
  operator Cfg() const {
    Cfg c;
    if constexpr (requires { c.bucket.bucket_numel; }) c.bucket.bucket_numel = 3000;
    c.optim.lr = 0.01f;
    if constexpr (requires { c.coordinate.prefetch_numel; }) c.coordinate = prefetch;
    return c;
  }
};
knob_set knobs(std::size_t prefetch, std::size_t live, std::size_t reuse, std::size_t persist, int inflight) {
  knob_set c;
  c.prefetch.prefetch_numel = prefetch;
  c.prefetch.max_live_numel = live;
  c.prefetch.max_reuse_distance_numel = reuse;
  c.prefetch.persistence_threshold_numel = persist;
  c.prefetch.max_inflight = inflight;
  return c;
}
constexpr std::size_t big = std::size_t{1} << 40;

/// The same steps on any engine; returns the fp32 master weights.
struct plan_step {
  seq fwd = fwd_all, bwd = bwd_all, grads_only = {};
};
template <class E>
std::vector<float> train(const model& m, const knob_set& cfg, const std::vector<plan_step>& plan) {
  E eng(m.reg, C(MPI_COMM_WORLD), cfg);
  init(eng, m);
  for (std::size_t s = 0; s < plan.size(); ++s) {
    micro_step(eng, m, plan[s].fwd, plan[s].bwd, static_cast<int>(s), [] {}, plan[s].grads_only);
    REQUIRE(eng.step().applied);
  }
  return eng.gather_master();
}

std::vector<std::uint32_t> events_of(const seq& order) {
  std::vector<std::uint32_t> e;
  for (auto u : order) {
    e.push_back(static_cast<std::uint32_t>(u));
    e.push_back(static_cast<std::uint32_t>(u) | zb::release_bit);
  }
  return e;
}
seq concat(const seq& a, const seq& b) {
  seq r = a;
  r.insert(r.end(), b.begin(), b.end());
  return r;
}

}  // namespace

TEST_CASE("the first step is recorded and verified, later steps gather ahead in trace order") {
  model m;
  const auto cfg = knobs(big, big, /*reuse*/ 0, /*persist*/ 0, /*inflight*/ 2);
  zb::stage3<C, T> eng(m.reg, C(MPI_COMM_WORLD), cfg);
  init(eng, m);
  const seq order = concat(fwd_all, bwd_all);
  const std::uint64_t psi = eng.model_layout().total_numel();

  // Step 1: no trace yet, every acquire gathers on demand, in the order of acquires.
  auto before = eng.coordination_stats();
  auto traffic = eng.counters();
  micro_step(eng, m, fwd_all, bwd_all, 0, [&] { CHECK_FALSE(eng.coordination_stats().trace_complete); });
  CHECK(eng.coordinator().issue_order() == order);
  auto st = eng.coordination_stats();
  CHECK(st.misses - before.misses == 12);
  CHECK(st.prefetches == 0);
  eng.step();
  CHECK((eng.counters() - traffic).payload() == 3 * psi);  // reuse and persistence off: 3Ψ
  st = eng.coordination_stats();
  CHECK(st.trace_complete);
  CHECK(eng.coordinator().trace() == events_of(order));

  // Steps 2 and 3: the same gathers, in the same order, each issued before its acquire,
  // never more than two ahead.
  for (int s = 1; s < 3; ++s) {
    before = eng.coordination_stats();
    traffic = eng.counters();
    micro_step(eng, m, fwd_all, bwd_all, s, [&] { CHECK(eng.coordination_stats().ahead_gathers <= 2); });
    CHECK(eng.coordinator().issue_order() == order);
    st = eng.coordination_stats();
    CHECK(st.prefetch_hits - before.prefetch_hits == 12);
    CHECK(st.misses - before.misses == 0);
    CHECK(st.prefetches - before.prefetches == 12);
    eng.step();
    CHECK((eng.counters() - traffic).payload() == 3 * psi);
  }
  CHECK(st.invalidations == 0);
  CHECK(eng.memory()[zb::mem_category::gathered] == 0);
  CHECK(eng.coordination_stats().live_numel == 0);
}

TEST_CASE("prefetch_numel, max_inflight and max_live_numel hold at every acquire") {
  model m;
  const std::size_t max_unit = zb::partition::even::make_layout(m.reg, zb_world_size(), 32).max_unit_numel();
  struct limits {
    std::size_t prefetch, live;
    int inflight;
  };
  const std::vector<limits> cases = {
      {6000, big, 8},                  // the element budget binds
      {big, big, 1},                   // one gather ahead at a time
      {big, max_unit + 3000, 8},       // live memory binds (reuse keeps units too)
      {8000, 2 * max_unit, 3},         // all three
  };
  const std::vector<plan_step> plan(3);
  const auto ref = train<zb::stage3_on_demand<C, T>>(m, knobs(big, big, big, 0, 8), plan);
  for (const auto& c : cases) {
    INFO("prefetch_numel " << c.prefetch << " max_live_numel " << c.live << " max_inflight " << c.inflight);
    const auto cfg = knobs(c.prefetch, c.live, big, 0, c.inflight);
    zb::stage3<C, T> eng(m.reg, C(MPI_COMM_WORLD), cfg);
    init(eng, m);
    std::size_t checks = 0;
    auto check = [&] {
      const auto st = eng.coordination_stats();
      CHECK(st.ahead_numel <= c.prefetch);
      CHECK(st.ahead_gathers <= static_cast<std::size_t>(c.inflight));
      CHECK(st.live_numel <= c.live);
      CHECK(eng.memory()[zb::mem_category::gathered] <= c.live * sizeof(T));
      ++checks;
    };
    for (int s = 0; s < 3; ++s) {
      micro_step(eng, m, fwd_all, bwd_all, s, check);
      REQUIRE(eng.step().applied);
    }
    const auto st = eng.coordination_stats();
    CHECK(checks == 36);
    CHECK(st.peak_live_numel <= c.live);
    CHECK(eng.memory().peak_of(zb::mem_category::gathered) <= c.live * sizeof(T));
    CHECK(st.over_limit == 0);
    CHECK(st.prefetch_hits > 0);  // not vacuous: the bounds left room to prefetch
    CHECK(zbt::first_difference(eng.gather_master(), ref) == -1);
  }
}

TEST_CASE("max_live_numel below the largest unit is an error on every rank at construction") {
  model m;
  const auto lay = zb::partition::even::make_layout(m.reg, zb_world_size(), 32);
  const std::size_t max_unit = lay.max_unit_numel();
  const std::string e = error_of([&] {
    zb::stage3<C, T> eng(m.reg, C(MPI_COMM_WORLD), knobs(big, max_unit - 1, big, 0, 8));
  });
  INFO(e);
  CHECK(has(e, "coordinate.max_live_numel is " + std::to_string(max_unit - 1)));
  CHECK(has(e, "set it to at least " + std::to_string(max_unit) + " (the largest unit)"));
  // Exactly the largest unit is enough; so is a smaller bound when the units above it
  // stay gathered for good (persistence).
  zb::stage3<C, T> fits(m.reg, C(MPI_COMM_WORLD), knobs(big, max_unit, big, 0, 8));
  zb::stage3<C, T> persists(m.reg, C(MPI_COMM_WORLD), knobs(big, 1, big, max_unit + 1, 8));
}

TEST_CASE("prefetch_across_steps: the next step's first gathers start when step() returns") {
  model m;
  auto cfg = knobs(6000, big, 0, 0, 2);
  cfg.prefetch.prefetch_across_steps = true;
  const std::vector<plan_step> plan(3);
  const auto ref = train<zb::stage3_on_demand<C, T>>(m, cfg, plan);
  zb::stage3<C, T> eng(m.reg, C(MPI_COMM_WORLD), cfg);
  init(eng, m);
  const seq order = concat(fwd_all, bwd_all);
  for (int s = 0; s < 3; ++s) {
    const auto before = eng.coordination_stats();
    if (s > 0) {
      // Between steps: gathers of the next step are out already, within the bounds.
      CHECK(before.ahead_gathers > 0);
      CHECK(before.ahead_gathers <= 2);
      CHECK(before.ahead_numel <= 6000);
      CHECK(eng.memory()[zb::mem_category::gathered] > 0);
    }
    micro_step(eng, m, fwd_all, bwd_all, s);
    const auto st = eng.coordination_stats();
    CHECK(eng.coordinator().issue_order() == order);
    if (s > 0) {
      CHECK(st.misses - before.misses == 0);
      CHECK(st.prefetch_hits - before.prefetch_hits == 12);
    }
    REQUIRE(eng.step().applied);
  }
  CHECK(eng.coordination_stats().invalidations == 0);
  CHECK(zbt::first_difference(eng.gather_master(), ref) == -1);
}

TEST_CASE("gather_params between steps or inside one neither follows nor changes the trace") {
  // A trainer that exports its weights now and then (not every step): the gathers are
  // served aside, on demand, and the next acquires still follow the trace, prefetched.
  model m;
  auto cfg = knobs(6000, big, 0, 0, 2);
  cfg.prefetch.prefetch_across_steps = true;
  zb::stage3_on_demand<C, T> ref(m.reg, C(MPI_COMM_WORLD), cfg);
  zb::stage3<C, T> eng(m.reg, C(MPI_COMM_WORLD), cfg);
  init(ref, m);
  init(eng, m);
  const auto trace = events_of(concat(fwd_all, bwd_all));
  for (int s = 0; s < 5; ++s) {
    if (s == 2 || s == 3) CHECK(zbt::first_difference(zbt::params_of(eng), zbt::params_of(ref)) == -1);
    const auto before = eng.coordination_stats();
    micro_step(ref, m, fwd_all, bwd_all, s);
    bool once = s == 4;  // inside a step too, with a unit held
    micro_step(eng, m, fwd_all, bwd_all, s, [&] {
      if (!std::exchange(once, false)) return;
      CHECK(zbt::first_difference(zbt::params_of(eng), zbt::params_of(ref)) == -1);
    });
    const auto st = eng.coordination_stats();
    if (s >= 1 && s <= 3) CHECK(st.misses - before.misses == 0);  // all gathered ahead
    REQUIRE(ref.step().applied);
    REQUIRE(eng.step().applied);
    CHECK(eng.coordinator().trace() == trace);
  }
  CHECK(eng.coordination_stats().invalidations == 0);
  CHECK(zbt::first_difference(eng.gather_master(), ref.gather_master()) == -1);
}

TEST_CASE("reuse distance and persistence: elements per step are 3Ψ minus what they save") {
  model m;
  const std::size_t reuse = 4000, persist = 1600;
  const auto cfg = knobs(big, big, reuse, persist, 8);
  zb::stage3<C, T> eng(m.reg, C(MPI_COMM_WORLD), cfg);
  init(eng, m);
  const auto& lay = eng.model_layout();
  const std::uint64_t psi = lay.total_numel();
  auto pad = [&](std::size_t u) { return lay.unit(u).padded_numel; };
  auto persistent = [&](std::size_t u) { return pad(u) < persist; };

  // Expected gathers, from the rule as documented: a persistent unit is gathered at its
  // first acquire of a step; any other unit at every acquire, unless (once a trace
  // exists) the elements acquired between its previous release and this acquire are
  // fewer than the reuse distance.
  const seq order = concat(fwd_all, bwd_all);
  auto expected_gathered = [&](bool traced) {
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < order.size(); ++i) {
      const std::size_t u = order[i];
      std::size_t prev = order.size();
      for (std::size_t k = 0; k < i; ++k)
        if (order[k] == u) prev = k;
      if (persistent(u)) {
        if (prev == order.size()) total += pad(u);
        continue;
      }
      std::size_t between = 0;
      for (std::size_t k = prev + 1; prev != order.size() && k < i; ++k) between += pad(order[k]);
      if (!(traced && prev != order.size() && between < reuse)) total += pad(u);
    }
    return total;
  };
  std::size_t persistent_bytes = 0;
  for (std::size_t u = 0; u < 6; ++u) persistent_bytes += persistent(u) ? pad(u) * sizeof(T) : 0;
  REQUIRE(persistent_bytes > 0);  // some units persist ...
  REQUIRE(persistent_bytes < psi * sizeof(T));  // ... not all
  REQUIRE(expected_gathered(true) < expected_gathered(false));  // and reuse saves something
  CHECK(eng.memory()[zb::mem_category::persistent] == persistent_bytes);

  for (int s = 0; s < 4; ++s) {
    INFO("step " << s + 1);
    const auto traffic = eng.counters();
    const auto before = eng.coordination_stats();
    micro_step(eng, m, fwd_all, bwd_all, s);
    REQUIRE(eng.step().applied);
    const std::uint64_t gathered = expected_gathered(s > 0);
    CHECK(eng.coordination_stats().gathered_numel - before.gathered_numel == gathered);
    // All-gathers plus the one reduce-scatter of Ψ: 3Ψ minus the savings.
    CHECK((eng.counters() - traffic).payload() == gathered + psi);
    CHECK(gathered + psi < 3 * psi);
  }
  const auto st = eng.coordination_stats();
  CHECK(st.reuse_hits > 0);
  CHECK(st.persistent_hits > 0);
  // At rest: persistent copies as declared, nothing else gathered.
  CHECK(eng.memory()[zb::mem_category::gathered] == 0);
  const auto est = decltype(eng)::estimate(lay, eng.get_config());
  for (std::size_t c = 0; c < zb::mem_category_count; ++c) {
    INFO("category " << zb::mem_category_name(static_cast<zb::mem_category>(c)));
    CHECK(eng.memory().current[c] == est.current[c]);
  }
  CHECK(zbt::first_difference(eng.gather_master(),
                              train<zb::stage3_on_demand<C, T>>(m, cfg, std::vector<plan_step>(4))) == -1);
}

TEST_CASE("leaving the trace: invalidated, served on demand, recorded again; results equal stage 0") {
  model m;
  const auto cfg = knobs(big, big, big, 0, 8);
  // 1-2 normal; 3 skips layer 2 in forward (a conditional layer); 4-5 normal again;
  // 6 ends early: layer 0 gets gradients without being acquired in backward.
  std::vector<plan_step> plan(6);
  plan[2].fwd = {0, 1, 3, 4, 5};
  plan[5].bwd = {5, 4, 3, 2, 1};
  plan[5].grads_only = {0};
  zb::stage3<C, T> eng(m.reg, C(MPI_COMM_WORLD), cfg);
  init(eng, m);
  std::vector<std::uint64_t> invalidations;
  for (std::size_t s = 0; s < plan.size(); ++s) {
    const auto before = eng.coordination_stats();
    micro_step(eng, m, plan[s].fwd, plan[s].bwd, static_cast<int>(s), [] {}, plan[s].grads_only);
    REQUIRE(eng.step().applied);
    const auto st = eng.coordination_stats();
    invalidations.push_back(st.invalidations);
    INFO("step " << s + 1);
    CHECK(st.trace_complete);  // re-recorded at every step()
    CHECK(eng.memory()[zb::mem_category::gathered] == 0);  // nothing left behind
    CHECK(st.live_numel == 0);
    if (s == 4) CHECK(st.misses == before.misses);  // back on a trace: all prefetched
  }
  // Step 3 leaves the trace of 1-2; step 4 leaves step 3's; 5 follows 4's; step 6 ends
  // before its trace does.
  CHECK(invalidations == std::vector<std::uint64_t>{0, 0, 1, 2, 2, 3});
  CHECK(eng.coordination_stats().wasted_prefetches > 0);
  const auto master = eng.gather_master();
  CHECK(zbt::first_difference(master, train<zb::stage3_on_demand<C, T>>(m, cfg, plan)) == -1);
  CHECK(zbt::first_difference(master, train<zb::stage0<C, T>>(m, cfg, plan)) == -1);
}

TEST_CASE_TEMPLATE("ranks that acquire different units fail at that acquire, naming both", E, zb::stage3<C, T>,
                   zb::stage3_on_demand<C, T>) {
  const int rank = zb_world_rank(), world = zb_world_size();
  if (world == 1) return;
  model m;
  std::string msg;
  {
    E eng(m.reg, C(MPI_COMM_WORLD), knobs(big, big, big, 0, 8));
    init(eng, m);
    seq fwd = fwd_all;
    if (rank == world - 1) std::swap(fwd[1], fwd[2]);
    msg = error_of([&] {
      micro_step(eng, m, fwd, bwd_all, 0);
      eng.step();
    });
  }
  INFO(msg);
  CHECK(has(msg, "ranks acquire different units at event #3 of step 1: 'layer1' on rank 0 but 'layer2' on rank " +
                     std::to_string(world - 1)));
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST_CASE("a rank whose release order differs on a followed trace fails at step(), naming the event") {
  const int rank = zb_world_rank(), world = zb_world_size();
  if (world == 1) return;
  model m;
  std::string msg;
  {
    zb::stage3<C, T> eng(m.reg, C(MPI_COMM_WORLD), knobs(big, big, big, 0, 8));
    init(eng, m);
    for (int s = 0; s < 2; ++s) {
      micro_step(eng, m, fwd_all, bwd_all, s);
      eng.step();
    }
    msg = error_of([&] {
      eng.begin_micro_step();
      {
        auto a = eng.acquire(m.units[0]);
        if (rank == world - 1) {
          auto b = eng.acquire(m.units[1]);  // holds layer0 while acquiring layer1
          a.release();
        } else {
          a.release();
          auto b = eng.acquire(m.units[1]);
        }
      }
      for (std::size_t u = 2; u < 6; ++u) auto g = eng.acquire(m.units[u]);
      backward(eng, m, bwd_all, 2);
      eng.end_micro_step();
      eng.step();
    });
  }
  INFO(msg);
  CHECK(has(msg, "event #2 of step 3 is release 'layer0' on rank 0 but acquire 'layer1' on rank " +
                     std::to_string(world - 1)));
  MPI_Barrier(MPI_COMM_WORLD);
}
