// Bad input ends with a clear error on every rank — never a hang (CTest's timeout
// would catch one) and never a silent wrong result. Runs on 1–4 ranks.
#include "mpi_test_main.hpp"

#include <zeroblocks/comm/mpi.hpp>
#include <zeroblocks/master/swapped.hpp>

#include "harness.hpp"

#include <string>
#include <type_traits>
#include "error_of.hpp"

namespace zb = zeroblocks;
using zbt::error_of;
using zbt::has;
using C = zb::comm::mpi;

namespace {

zb::param_registry small_model(bool differ_here) {
  zb::param_registry reg;
  reg.add("a", {7}, "u0");
  reg.add("b", {4, differ_here ? std::size_t{4} : std::size_t{3}}, "u0");
  reg.add("c", {5}, "u1");
  return reg;
}

/// One micro-step reporting every parameter's gradient once.
template <class E>
void clean_micro_step(E& eng, const zb::param_registry& reg) {
  eng.begin_micro_step();
  for (std::size_t p = 0; p < reg.size(); ++p) {
    std::vector<zb::bfloat16> g(reg.params()[p].numel, zb::bfloat16(0.25f));
    eng.grad_ready({p}, g);
  }
  eng.end_micro_step();
}

/// One micro-step, then a step.
template <class E>
void clean_step(E& eng, const zb::param_registry& reg) {
  clean_micro_step(eng, reg);
  eng.step();
}

}  // namespace

TEST_CASE_TEMPLATE("ranks that register different parameters fail on every rank", E, zb::stage0<C>, zb::stage2<C>,
                   zb::stage3<C>) {
  const int rank = zb_world_rank(), world = zb_world_size();
  if (world == 1) return;  // nothing can differ with one rank
  auto msg = error_of([&] { E eng(small_model(rank == world - 1), C(MPI_COMM_WORLD)); });
  INFO(msg);
  CHECK(has(msg, "parameter registration differs across ranks"));
  CHECK(has(msg, "parameter #1 is 'b' [4,3] in unit 'u0' on rank 0 but 'b' [4,4] in unit 'u0' on rank " +
                     std::to_string(world - 1)));
}

TEST_CASE("a rank that registers fewer parameters fails on every rank") {
  const int rank = zb_world_rank(), world = zb_world_size();
  if (world == 1) return;
  zb::param_registry reg = small_model(false);
  if (rank != 1) reg.add("extra", {3}, "u2");
  auto msg = error_of([&] { zb::stage1<C> eng(reg, C(MPI_COMM_WORLD)); });
  INFO(msg);
  CHECK(has(msg, "parameter #3 is 'extra' [3] in unit 'u2' on rank 0 but <nothing> on rank 1"));
}

TEST_CASE("a configuration that cannot work fails at construction on every rank") {
  auto reg = small_model(false);
  zb::stage2<C>::config cfg;
  cfg.bucket.bucket_count = 0;
  auto msg = error_of([&] { zb::stage2<C> eng(reg, C(MPI_COMM_WORLD), cfg); });
  CHECK(has(msg, "bucket.bucket_count must be >= 1"));

  zb::stage0<C>::config bad_lr;
  bad_lr.optim.beta2 = 1.5f;
  msg = error_of([&] { zb::stage0<C> eng(reg, C(MPI_COMM_WORLD), bad_lr); });
  CHECK(has(msg, "optim.beta2 1.5 must be in [0, 1)"));

  zb::stage1<C, zb::half>::config scale;
  scale.scale.initial_scale = 0.5f;
  scale.scale.min_scale = 1.0f;
  msg = error_of([&] { zb::stage1<C, zb::half> eng(reg, C(MPI_COMM_WORLD), scale); });
  CHECK(has(msg, "need scale.initial_scale"));

  zb::stage3<C>::config inflight;
  inflight.coordinate.max_inflight = -1;
  msg = error_of([&] { zb::stage3<C> eng(reg, C(MPI_COMM_WORLD), inflight); });
  CHECK(has(msg, "coordinate.max_inflight must be >= 0"));

  zb::param_registry empty;
  msg = error_of([&] { zb::stage3<C> eng(empty, C(MPI_COMM_WORLD)); });
  CHECK(has(msg, "no parameters registered"));
}

TEST_CASE("a bad configuration on one rank only fails on every rank") {
  const int rank = zb_world_rank(), world = zb_world_size();
  auto reg = small_model(false);
  zb::stage2<C>::config cfg;
  if (rank == world - 1) cfg.partition.align_numel = 3;  // not a power of two
  auto msg = error_of([&] { zb::stage2<C> eng(reg, C(MPI_COMM_WORLD), cfg); });
  CHECK(has(msg, "rank " + std::to_string(world - 1) + ": partition.align_numel 3 must be a power of two"));
}

TEST_CASE("a configuration that differs between ranks fails on every rank") {
  const int rank = zb_world_rank(), world = zb_world_size();
  if (world == 1) return;
  auto reg = small_model(false);
  zb::stage2<C>::config cfg;
  if (rank == world - 1) cfg.bucket.bucket_numel = 12345;
  auto msg = error_of([&] { zb::stage2<C> eng(reg, C(MPI_COMM_WORLD), cfg); });
  CHECK(has(msg, "configuration differs across ranks: bucket.bucket_numel (role 'bucket') is 33554432 on rank 0 "
                 "but 12345 on rank " + std::to_string(world - 1)));
}

namespace {

// A tripwire for new knobs: the number of members of every config. A knob added to a
// config breaks these counts, so whoever adds it is sent to its `fields_of()` (which the
// cross-rank comparison and the test below walk) — or to its doc, if it may differ
// per rank. (Counted as aggregate initialisers; nested configs count as one.)
struct any_init {
  template <class T>
  operator T() const;
};
template <class T, class... A>
consteval std::size_t member_count() {
  if constexpr (requires { T{A{}..., any_init{}}; }) return member_count<T, A..., any_init>();
  else return sizeof...(A);
}
static_assert(member_count<zb::adamw_config>() == 6, "adamw_config: list the new knob in fields_of()");
static_assert(member_count<zb::dynamic_scale_config>() == 4, "dynamic_scale_config: list the new knob in fields_of()");
static_assert(member_count<zb::fixed_scale_config>() == 1, "fixed_scale_config: list the new knob in fields_of()");
static_assert(member_count<zb::step_config>() == 4, "step_config: 3 in fields_of(), threads per rank");
static_assert(member_count<zb::partition_config>() == 1, "partition_config: list the new knob in fields_of()");
static_assert(member_count<zb::prefetch_config>() == 6, "prefetch_config: list the new knob in fields_of()");
static_assert(member_count<zb::bucket_config>() == 2, "bucket_config: list the new knob in fields_of()");
static_assert(member_count<zb::master::swapped_config>() == 3, "swapped_config: list the new knob in fields_of()");
static_assert(member_count<zb::swap_config>() == 8,
              "swap_config: 5 in swapped_config's fields_of(); paths, threads, fault_hook per rank");
static_assert(member_count<zb::no_config>() == 0);
static_assert(member_count<zb::param_group>() == 2, "param_group: add the new setting to agreement_lines");
static_assert(member_count<zb::lion_config>() == 4, "lion_config: list the new knob in fields_of()");
static_assert(member_count<zb::sgd_config>() == 4, "sgd_config: list the new knob in fields_of()");

/// Changes the k-th field a config lists (`fields_of`) to another valid value: a bool
/// flipped, a number doubled (0 becomes 1) or, for floating point, halved (0 becomes
/// 0.5). Returns the field's `role.name`, or "" when the config has fewer fields.
template <class Config>
std::string vary_field(Config& cfg, std::size_t k) {
  std::size_t i = 0;
  std::string hit;
  cfg.roles([&](const char* role, const char*, auto& c) {
    zb::config_fields(c, [&](const char* name, auto& f) {
      if (i++ != k) return;
      hit = std::string(role) + "." + name;
      using F = std::remove_cvref_t<decltype(f)>;
      if constexpr (std::is_same_v<F, bool>) f = !f;
      else if constexpr (std::is_enum_v<F>) f = static_cast<F>(static_cast<int>(f) == 0 ? 1 : 0);
      else if constexpr (std::is_floating_point_v<F>) f = f == F(0) ? F(0.5) : f * F(0.5);
      else f = f == F(0) ? F(1) : static_cast<F>(f * 2);
    });
  });
  return hit;
}

/// Every knob of engine E, varied on the last rank alone: every rank raises the error
/// naming that knob, the last rank, and both values — never a hang (CTest's timeout).
template <class E>
void every_knob_must_agree(const zb::param_registry& reg, typename E::config base = {}) {
  const int rank = zb_world_rank(), world = zb_world_size();
  std::size_t varied = 0;
  for (std::size_t k = 0;; ++k) {
    auto cfg = base;
    const std::string field = vary_field(cfg, k);
    if (field.empty()) break;
    ++varied;
    auto mine = rank == world - 1 ? cfg : base;
    auto msg = error_of([&] { E eng(reg, C(MPI_COMM_WORLD), mine); });
    INFO("varied " << field << ": " << msg);
    CHECK(has(msg, "configuration differs across ranks: " + field + " (role '"));
    CHECK(has(msg, " on rank " + std::to_string(world - 1) + " (every rank must pass the same knobs)"));
  }
  // Every preset has knobs in at least the optimizer, the step and the partitioner.
  CHECK(varied >= 8);
}

}  // namespace

TEST_CASE_TEMPLATE("every knob of every preset is compared across ranks", E, zb::stage0<C>, zb::stage1<C, zb::half>,
                   zb::stage2<C>, zb::stage3<C, zb::half>, zb::stage3_on_demand<C>) {
  if (zb_world_size() == 1) return;
  every_knob_must_agree<E>(small_model(false));
}

TEST_CASE_TEMPLATE("every knob of the NVMe presets is compared across ranks", E, zb::infinity<C, zb::half>,
                   zb::stage3_nvme<C>, zb::stage2_nvme<C>) {
  if (zb_world_size() == 1) return;
  typename E::config base;
  base.master.swap.paths = {"."};  // never reached: the check fails before any file exists
  every_knob_must_agree<E>(small_model(false), base);
}

TEST_CASE("parameter groups that differ between ranks fail on every rank") {
  const int rank = zb_world_rank(), world = zb_world_size();
  if (world == 1) return;
  auto reg = small_model(false);
  zb::stage2<C>::config cfg;
  cfg.groups = {{}, {.lr_scale = 1.0f, .weight_decay = 0.0f}};
  if (rank == world - 1) cfg.groups[1].weight_decay = 0.1f;
  auto msg = error_of([&] { zb::stage2<C> eng(reg, C(MPI_COMM_WORLD), cfg); });
  CHECK(has(msg, "configuration differs across ranks: groups.1.weight_decay (role 'groups') is 0 on rank 0 but 0.1"));
  if (rank == world - 1) cfg.groups.push_back({});
  msg = error_of([&] { zb::stage2<C> eng(reg, C(MPI_COMM_WORLD), cfg); });
  CHECK(has(msg, "groups.count (role 'groups') is 2 on rank 0 but 3 on rank " + std::to_string(world - 1)));
}

TEST_CASE("ranks built from different policies fail on every rank") {
  const int rank = zb_world_rank(), world = zb_world_size();
  if (world == 1) return;
  auto reg = small_model(false);
  auto msg = error_of([&] {
    if (rank == world - 1) zb::stage2<C> eng(reg, C(MPI_COMM_WORLD));
    else zb::stage3<C> eng(reg, C(MPI_COMM_WORLD));
  });
  INFO(msg);
  CHECK(has(msg, "ranks are built from different policies: policies.coordinate is prefetch_trace on rank 0 but "
                 "resident on rank " + std::to_string(world - 1)));
  msg = error_of([&] {
    if (rank == world - 1) zb::stage3<C, zb::half> eng(reg, C(MPI_COMM_WORLD));
    else zb::stage3<C, zb::bfloat16> eng(reg, C(MPI_COMM_WORLD));
  });
  CHECK(has(msg, "policies.param_type is bf16 on rank 0 but fp16 on rank " + std::to_string(world - 1)));
}

TEST_CASE_TEMPLATE("a unit released twice or never acquired", E, zb::stage0<C>, zb::stage3<C>) {
  auto reg = small_model(false);
  E eng(reg, C(MPI_COMM_WORLD));
  auto u0 = reg.unit("u0");
  SUBCASE("released twice through the guard") {
    auto g = eng.acquire(u0);
    g.release();
    auto msg = error_of([&] { g.release(); });
    CHECK(has(msg, "unit_guard::release: the guard holds no unit (already released, or moved from)"));
  }
  SUBCASE("released through the guard, then through the engine") {
    auto g = eng.acquire(u0);
    g.release();
    auto msg = error_of([&] { eng.release(u0); });
    CHECK(has(msg, "release: unit 'u0' released more times than acquired"));
  }
  SUBCASE("a moved-from guard cannot release the new owner's hold") {
    auto g = eng.acquire(u0);
    auto g2 = std::move(g);
    auto msg = error_of([&] { g.release(); });
    CHECK(has(msg, "the guard holds no unit (already released, or moved from)"));
    CHECK(g2.holds());
    CHECK(g2.param(reg.param("a")).size() == 7);
  }
  SUBCASE("never acquired") {
    auto msg = error_of([&] { eng.release(reg.unit("u1")); });
    CHECK(has(msg, "unit 'u1' released more times than acquired (released twice, or never acquired)"));
  }
}

TEST_CASE("gradient reported twice in a micro-step, or with the wrong size") {
  auto reg = small_model(false);
  zb::stage2<C> eng(reg, C(MPI_COMM_WORLD));
  eng.begin_micro_step();
  std::vector<zb::bfloat16> g(7, zb::bfloat16(1.0f));
  eng.grad_ready(reg.param("a"), g);
  auto msg = error_of([&] { eng.grad_ready(reg.param("a"), g); });
  CHECK(has(msg, "gradient of 'a' [7] in unit 'u0' reported twice in micro-step 1 of step 1"));
}

TEST_CASE("gradient of the wrong size, step without micro-step") {
  auto reg = small_model(false);
  // (16-bit accumulation: stage 1's begin_micro_step then runs no collective, so the
  // engine still gets to the second check after the first error spent the communicator.)
  zb::stage1<C>::config cfg;
  cfg.step.grad_accum = zb::grad_accum_dtype::param;
  zb::stage1<C> eng(reg, C(MPI_COMM_WORLD), cfg);
  auto msg = error_of([&] { eng.step(); });
  CHECK(has(msg, "step: no micro-step since the last step"));
  eng.begin_micro_step();
  std::vector<zb::bfloat16> g(6);
  msg = error_of([&] { eng.grad_ready(reg.param("c"), g); });
  CHECK(has(msg, "gradient of 'c' [5] in unit 'u1' has 6 elements, expected 5"));
}

// The hard case: misuse on ONE rank while the others go on into collectives that the
// failing rank will never join. They must raise an error naming the failed rank.
TEST_CASE_TEMPLATE("misuse on one rank turns into an error on the others, not a hang", E, zb::stage0<C>,
                   zb::stage1<C>, zb::stage2<C>, zb::stage3<C>) {
  const int rank = zb_world_rank(), world = zb_world_size();
  if (world == 1) return;
  auto reg = small_model(false);
  const int bad = world - 1;
  std::string msg;
  {
    E eng(reg, C(MPI_COMM_WORLD));
    clean_step(eng, reg);  // a good step first: the engine works
    msg = error_of([&] {
      eng.begin_micro_step();
      for (std::size_t p = 0; p < reg.size(); ++p) {
        std::vector<zb::bfloat16> g(reg.params()[p].numel, zb::bfloat16(0.5f));
        eng.grad_ready({p}, g);
        if (rank == bad && p == 1) eng.grad_ready({p}, g);  // twice, on this rank only
      }
      eng.end_micro_step();
      eng.step();
      // Stage 3 keeps going into the next forward: its gathers must fail too.
      for (int i = 0; i < 3; ++i) clean_step(eng, reg);
    });
  }
  INFO(msg);
  if (rank == bad) {
    CHECK(has(msg, "gradient of 'b' [4,3] in unit 'u0' reported twice"));
  } else {
    CHECK(has(msg, "rank " + std::to_string(bad) + " failed: grad_ready: gradient of 'b' [4,3] in unit 'u0' reported twice"));
  }
  MPI_Barrier(MPI_COMM_WORLD);  // everyone is back in step: later tests start clean
}

TEST_CASE_TEMPLATE("ranks that run different numbers of micro-steps fail on every rank", E, zb::stage0<C>,
                   zb::stage1<C>, zb::stage2<C>, zb::stage3<C>) {
  const int rank = zb_world_rank(), world = zb_world_size();
  if (world == 1) return;
  auto reg = small_model(false);
  std::string msg;
  {
    E eng(reg, C(MPI_COMM_WORLD));
    msg = error_of([&] {
      const int micro = rank == world - 1 ? 2 : 1;
      for (int m = 0; m < micro; ++m) clean_micro_step(eng, reg);
      eng.step();
    });
  }
  INFO(msg);
  // Stages 2/3 meet at begin_micro_step() vs step(); stages 0/1 in step() with different counts.
  CHECK((has(msg, "ranks out of step") || has(msg, "ranks disagree on the completed micro-steps")));
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST_CASE_TEMPLATE("stage 3: ranks that acquire units in different orders fail at that acquire, before its gather",
                   E, zb::stage3<C>, zb::stage3_on_demand<C>) {
  const int rank = zb_world_rank(), world = zb_world_size();
  if (world == 1) return;
  zb::param_registry reg;  // two units of the same size: a swapped gather goes unnoticed by MPI
  auto x = reg.add("x", {40}, "first");
  auto y = reg.add("y", {40}, "second");
  std::string msg;
  {
    E eng(reg, C(MPI_COMM_WORLD));
    eng.set_param(x, std::vector<float>(40, 1.0f));
    eng.set_param(y, std::vector<float>(40, 2.0f));
    eng.begin_micro_step();  // step 1 acquires nothing (on prefetch_trace: an empty trace)
    for (auto p : {x, y}) eng.grad_ready(p, std::vector<zb::bfloat16>(40, zb::bfloat16(0.5f)));
    eng.end_micro_step();
    eng.step();
    msg = error_of([&] {
      eng.begin_micro_step();
      std::vector<zb::unit_id> order = {reg.unit("first"), reg.unit("second")};
      if (rank == world - 1) std::swap(order[0], order[1]);
      for (auto u : order) {
        auto g = eng.acquire(u);
      }
      for (auto p : {x, y}) eng.grad_ready(p, std::vector<zb::bfloat16>(40, zb::bfloat16(0.5f)));
      eng.end_micro_step();
      eng.step();
    });
  }
  INFO(msg);
  CHECK(has(msg, "ranks acquire different units at event #1 of step 2: 'first' on rank 0 but 'second' on rank " +
                     std::to_string(world - 1)));
  CHECK(has(msg, "every rank must acquire units in the same order"));
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST_CASE_TEMPLATE("a unit still acquired at step() is an error on every rank", E, zb::stage0<C>, zb::stage3<C>) {
  auto reg = small_model(false);
  E eng(reg, C(MPI_COMM_WORLD));
  std::string msg;
  {
    auto held = eng.acquire(reg.unit("u1"));
    msg = error_of([&] { clean_step(eng, reg); });
  }
  CHECK(has(msg, "still holds 1 acquired unit(s); release every unit before step()"));
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST_CASE_TEMPLATE("the trainer's own exception on one rank reaches the others", E, zb::stage0<C>, zb::stage2<C>,
                   zb::stage3<C>) {
  const int rank = zb_world_rank(), world = zb_world_size();
  if (world == 1) return;
  auto reg = small_model(false);
  std::string msg;
  try {
    E eng(reg, C(MPI_COMM_WORLD));
    clean_step(eng, reg);
    if (rank == 0) throw std::runtime_error("trainer: data loader failed");
    clean_step(eng, reg);  // the others go on into collectives rank 0 never joins
    clean_step(eng, reg);
  } catch (const std::exception& e) {
    msg = e.what();
  }
  INFO(msg);
  if (rank == 0) CHECK(msg == "trainer: data loader failed");
  else CHECK(has(msg, "rank 0 failed: an exception on rank 0 unwound through the engine"));
  MPI_Barrier(MPI_COMM_WORLD);
}
