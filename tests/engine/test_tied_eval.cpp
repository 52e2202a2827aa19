// Tied parameters and evaluation mode, on the world size mpirun gave (1–4 ranks).
//
// Tied: a parameter registered once and declared used twice (`set_uses`) gets its
// gradient in two parts, reported as they are computed — one early in backward (the
// head, as GPT's output layer reuses the token embedding), one at the end. Every stage
// must end bit-identical to stage 0, and stage 0 must equal a run where the trainer
// adds the two parts itself and reports once.
//
// Evaluation: with stage 3 an evaluation pass after every step must not invalidate the
// training trace, must be prefetched along a trace of its own from the second pass on,
// and must serve the same values as stage 0 (the checksum of what each pass read).
#include "mpi_test_main.hpp"

#include <zeroblocks/comm/mpi.hpp>

#include "error_of.hpp"
#include "harness.hpp"

#include <cmath>
#include <vector>

namespace zb = zeroblocks;
using C = zb::comm::mpi;
using zbt::error_of;
using zbt::has;

namespace {

struct tied_model {
  zb::param_registry reg;
  zb::param_id E, P, W, b;
  explicit tied_model(bool tie) {
    E = reg.add("wte", {13, 5}, "embed");
    P = reg.add("wpe", {7}, "embed");
    W = reg.add("mid.w", {11, 3}, "mid");
    b = reg.add("head.b", {9}, "head");
    if (tie) reg.set_uses(E, 2);
  }
};

float part_value(float x, std::size_t i, int part, int s, int m, int r) {
  return 0.2f * x + 0.03f * std::sin(0.7f * static_cast<float>(i) + 1.9f * static_cast<float>(part) +
                                     0.4f * static_cast<float>(s) + 1.3f * static_cast<float>(m) +
                                     2.1f * static_cast<float>(r));
}

template <class Engine>
std::vector<typename Engine::param_type> grad_of(const typename Engine::param_view& v, int part, int s, int m,
                                                 int r, float scale) {
  using T = typename Engine::param_type;
  std::vector<T> g(v.size());
  for (std::size_t i = 0; i < v.size(); ++i)
    g[i] = zb::from_float<T>(part_value(zb::to_float(v[i]), i, part, s, m, r) * scale);
  return g;
}

/// Train `steps` steps of `gas` micro-steps. `tie`: report the tied weight in two parts
/// (the engine sums); otherwise the trainer sums them (in T, as the engine does) and
/// reports once, at the end of backward.
template <class Engine>
std::vector<float> train(bool tie, int steps, int gas, std::size_t bucket_numel, long* invalidations = nullptr) {
  using T = typename Engine::param_type;
  tied_model model(tie);
  auto cfg = zbt::config_for<Engine>(zbt::run_options{.bucket_numel = bucket_numel});
  if constexpr (requires { cfg.coordinate.persistence_threshold_numel; }) {
    cfg.coordinate.persistence_threshold_numel = 0;
    cfg.coordinate.max_reuse_distance_numel = 0;
  }
  Engine eng(model.reg, C(MPI_COMM_WORLD), cfg);
  for (auto p : {model.E, model.P, model.W, model.b}) {
    std::vector<float> v(eng.model_layout().param(p.index).numel);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = zbt::synthetic_model::init(p.index, i);
    eng.set_param(p, v);
  }
  const int r = eng.rank();
  const auto ue = eng.unit_of(model.E), um = eng.unit_of(model.W), uh = eng.unit_of(model.b);
  for (int s = 0; s < steps; ++s) {
    for (int m = 0; m < gas; ++m) {
      eng.begin_micro_step();
      { auto g = eng.acquire(ue); }
      { auto g = eng.acquire(um); }
      std::vector<T> head_part;
      {  // the head uses the embedding: both held
        auto gh = eng.acquire(uh);
        auto ge = eng.acquire(ue);
        head_part = grad_of<Engine>(ge.param(model.E), 1, s, m, r, eng.loss_scale());
        if (tie) eng.grad_ready(model.E, head_part);  // reported at once
        eng.grad_ready(model.b, grad_of<Engine>(gh.param(model.b), 0, s, m, r, eng.loss_scale()));
      }
      {
        auto g = eng.acquire(um);
        eng.grad_ready(model.W, grad_of<Engine>(g.param(model.W), 0, s, m, r, eng.loss_scale()));
      }
      {
        auto g = eng.acquire(ue);
        auto embed_part = grad_of<Engine>(g.param(model.E), 2, s, m, r, eng.loss_scale());
        if (tie) {
          eng.grad_ready(model.E, embed_part);
        } else {
          for (std::size_t i = 0; i < embed_part.size(); ++i)
            embed_part[i] = zb::from_float<T>(zb::to_float(head_part[i]) + zb::to_float(embed_part[i]));
          eng.grad_ready(model.E, embed_part);
        }
        eng.grad_ready(model.P, grad_of<Engine>(g.param(model.P), 0, s, m, r, eng.loss_scale()));
      }
      eng.end_micro_step();
    }
    eng.step();
  }
  if (invalidations) *invalidations = static_cast<long>(eng.coordination_stats().invalidations);
  // The partial sum's buffer is declared: memory equals the estimate.
  const auto est = Engine::estimate(eng.model_layout(), eng.get_config());
  CHECK(eng.memory().current[static_cast<std::size_t>(zb::mem_category::buckets)] >=
        (tie ? 13 * 5 * sizeof(T) : 0));
  CHECK(eng.memory().current == est.current);
  return eng.gather_master();
}

template <class T>
void check_tied(int gas) {
  INFO(zb::dtype_name<T>() << ", " << gas << " micro-step(s), " << zb_world_size() << " ranks");
  const auto ref = train<zb::stage0<C, T>>(true, 3, gas, 40);
  const auto own_sum = train<zb::stage0<C, T>>(false, 3, gas, 40);
  CHECK(zbt::first_difference(ref, own_sum) == -1);
  CHECK(zbt::first_difference(ref, train<zb::stage1<C, T>>(true, 3, gas, 40)) == -1);
  if (gas == 1) {  // (several micro-steps in 16-bit: stages 2/3 round per micro-step, as ever)
    CHECK(zbt::first_difference(ref, train<zb::stage2<C, T>>(true, 3, gas, 40)) == -1);
    long inv = -1;
    CHECK(zbt::first_difference(ref, train<zb::stage3<C, T>>(true, 3, gas, 40, &inv)) == -1);
    CHECK(inv == 0);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("tied parameter reported in two parts: every stage equals stage 0", T, float, zb::bfloat16,
                   zb::half) {
  check_tied<T>(1);
}

TEST_CASE_TEMPLATE("tied parameter, 3 micro-steps: stage 1 equals stage 0, stage 3 equals stage 2", T, float,
                   zb::bfloat16) {
  // (Stages 2/3 reduce each micro-step and sum afterwards, stages 0/1 sum first: with
  // continuous gradients those orders round differently, even in fp32.)
  const auto ref = train<zb::stage0<C, T>>(true, 2, 3, 40);
  CHECK(zbt::first_difference(ref, train<zb::stage1<C, T>>(true, 2, 3, 40)) == -1);
  const auto s2 = train<zb::stage2<C, T>>(true, 2, 3, 40);
  CHECK(zbt::first_difference(s2, train<zb::stage3<C, T>>(true, 2, 3, 40)) == -1);
  if (zb_world_size() == 1) CHECK(zbt::first_difference(ref, s2) == -1);
}

TEST_CASE("tied parameter: a third part is an error; a missing part counts as zero") {
  tied_model model(true);
  zb::stage2<C, float> eng(model.reg, C(MPI_COMM_WORLD));
  eng.begin_micro_step();
  std::vector<float> g(65, 1.0f);
  eng.grad_ready(model.E, g);
  eng.grad_ready(model.E, g);
  const auto msg = error_of([&] { eng.grad_ready(model.E, g); });
  CHECK(has(msg, "gradient of 'wte' [13,5] in unit 'embed' used 2 times reported 3 times in micro-step 1 of step 1, "
                 "more than its 2 declared uses"));
}

TEST_CASE("tied parameter: one part reported, then end_micro_step hands it over") {
  // Stage 0 with one part only equals a run with the untied parameter reported once.
  auto run = [](bool tie) {
    tied_model model(tie);
    zb::stage0<C, float> eng(model.reg, C(MPI_COMM_WORLD), zbt::config_for<zb::stage0<C, float>>({}));
    std::vector<float> v(65, 0.25f);
    eng.set_param(model.E, v);
    eng.begin_micro_step();
    std::vector<float> g(65);
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = 0.01f * static_cast<float>(i);
    eng.grad_ready(model.E, g);
    eng.end_micro_step();
    eng.step();
    return eng.gather_master();
  };
  CHECK(zbt::first_difference(run(true), run(false)) == -1);
}

TEST_CASE("registration: ranks that declare different uses fail at construction") {
  if (zb_world_size() < 2) return;
  tied_model model(zb_world_rank() == 0);
  const auto msg = error_of([&] { zb::stage2<C, float> eng(model.reg, C(MPI_COMM_WORLD)); });
  CHECK(has(msg, "wte"));
  CHECK(has(msg, "used 2 times"));
}

namespace {

/// Train `steps` steps; after each, an evaluation pass reads every unit forward and
/// sums what it sees (the checksums are returned, one per pass).
template <class Engine>
std::vector<double> train_with_eval(int steps, zb::coordinator_stats* stats = nullptr,
                                    std::vector<std::size_t>* eval_hits = nullptr) {
  zbt::synthetic_model model;
  zbt::run_options o;
  o.steps = steps;
  auto cfg = zbt::config_for<Engine>(o);
  if constexpr (requires { cfg.coordinate.persistence_threshold_numel; }) zbt::prefetch_only{}(cfg);
  Engine eng(model.reg, C(MPI_COMM_WORLD), cfg);
  zbt::init_params(eng, model);
  std::vector<double> sums;
  for (int s = 0; s < steps; ++s) {
    zbt::run_micro_steps(eng, model, o, s);
    eng.step();
    const auto before = eng.coordination_stats();
    {
      auto ev = eng.eval();
      double sum = 0.0;
      for (auto u : model.units) {
        auto g = eng.acquire(u);
        for (auto pi : eng.model_layout().unit(u.index).params) {
          auto v = g.param({pi});
          for (std::size_t i = 0; i < v.size(); ++i) sum += zb::to_float(v[i]) * static_cast<double>(i + 1);
        }
      }
      sums.push_back(sum);
    }
    if (eval_hits) eval_hits->push_back(eng.coordination_stats().prefetch_hits - before.prefetch_hits);
  }
  if (stats) *stats = eng.coordination_stats();
  return sums;
}

}  // namespace

TEST_CASE_TEMPLATE("evaluation mode: stage 3 keeps its training trace, prefetches the evaluation, same values", T,
                   float, zb::bfloat16) {
  const auto ref = train_with_eval<zb::stage0<C, T>>(4);
  zb::coordinator_stats st;
  std::vector<std::size_t> hits;
  const auto got = train_with_eval<zb::stage3<C, T>>(4, &st, &hits);
  CHECK(ref == got);
  CHECK(st.invalidations == 0);
  REQUIRE(hits.size() == 4);
  CHECK(hits[0] == 0);  // the first pass records the evaluation's trace
  // From the second pass on the evaluation follows its trace: every unit but the first
  // (which may be gathered before the pass starts or on demand) is prefetched.
  const std::size_t units = zbt::synthetic_model().reg.units().size();
  for (std::size_t i = 1; i < hits.size(); ++i) CHECK(hits[i] >= units - 2);
  CHECK(ref == train_with_eval<zb::stage3_on_demand<C, T>>(4));
  CHECK(ref == train_with_eval<zb::stage2<C, T>>(4));
}

TEST_CASE("evaluation mode: misuse is an error") {
  zbt::synthetic_model model;
  SUBCASE("micro-step inside evaluation") {
    zb::stage3<C, float> eng(model.reg, C(MPI_COMM_WORLD));
    eng.begin_eval();
    CHECK(has(error_of([&] { eng.begin_micro_step(); }), "begin_micro_step: in evaluation mode (call end_eval() first)"));
  }
  SUBCASE("evaluation inside a step") {
    zb::stage2<C, float> eng(model.reg, C(MPI_COMM_WORLD));
    eng.begin_micro_step();
    eng.end_micro_step();
    CHECK(has(error_of([&] { eng.begin_eval(); }), "begin_eval: only between steps (1 micro-step(s) of this step are pending"));
  }
  SUBCASE("end_eval with a unit held (stage 3: every rank)") {
    zb::stage3<C, float> eng(model.reg, C(MPI_COMM_WORLD));
    eng.begin_eval();
    auto g = eng.acquire(model.units[0]);
    CHECK(has(error_of([&] { eng.end_eval(); }), "end_eval: rank 0 still holds 1 acquired unit(s); release every unit before end_eval()"));
  }
  SUBCASE("end_eval without begin") {
    zb::stage0<C, float> eng(model.reg, C(MPI_COMM_WORLD));
    CHECK(has(error_of([&] { eng.end_eval(); }), "end_eval: not in evaluation mode"));
  }
}
