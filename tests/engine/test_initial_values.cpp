// One source of truth for initial values (engine/initial_values.hpp), on 1–4 ranks:
//  - ranks that pass different values to set_param (a trainer seeding its initialiser
//    by rank) get the same error on every rank at the first agreement, naming the
//    parameter, the first block of elements that differs and the ranks — for stages 0–3
//    and the NVMe tier; a parameter set on some ranks only is named likewise;
//  - set_param_from(root, ...): values passed on one rank only end the same on every
//    rank, bit-identical to every rank passing them; a different root or parameter on
//    some rank, or values passed by a non-root, is an error on every rank, not a hang;
//  - values set again after training started are checked at the next step;
//  - the value hash tells -0 from +0 and equal blocks hash alike.
#include "mpi_test_main.hpp"

#include <zeroblocks/comm/mpi.hpp>
#include <zeroblocks/master/swapped.hpp>

#include "error_of.hpp"
#include "harness.hpp"

#include <filesystem>
#include <string>
#include <unistd.h>

namespace zb = zeroblocks;
using zbt::error_of;
using zbt::has;
using C = zb::comm::mpi;

namespace {

/// A config for `E` with NVMe paths in a per-rank directory where the preset has a tier.
template <class E>
typename E::config config_of() {
  zbt::run_options o;
  auto cfg = zbt::config_for<E>(o);
  if constexpr (requires { cfg.master.swap.paths; }) {
    const auto dir = std::filesystem::path(ZB_SWAP_TEST_DIR) / "initial_values" /
                     (std::to_string(::getpid()) + "-" + std::to_string(zb_world_rank()));
    std::filesystem::create_directories(dir);
    cfg.master.swap.paths = {dir.string()};
  }
  return cfg;
}

/// Every parameter's values; `bump_rank` passes a different value at element `at` of
/// parameter `param` (nothing changes where the parameter is shorter).
template <class E>
void init_all(E& eng, const zbt::synthetic_model& m, int bump_rank = -1, std::size_t param = 0, std::size_t at = 0) {
  for (std::size_t p = 0; p < m.params.size(); ++p) {
    std::vector<float> v(eng.model_layout().param(p).numel);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = zbt::synthetic_model::init(p, i);
    if (eng.rank() == bump_rank && p == param && at < v.size()) v[at] += 1.0f;
    eng.set_param(m.params[p], v);
  }
}

/// One step of the synthetic trainer.
template <class E>
void one_step(E& eng, const zbt::synthetic_model& m, int s = 0) {
  zbt::run_micro_steps(eng, m, zbt::run_options{}, s);
  eng.step();
}

}  // namespace

TEST_CASE_TEMPLATE("different initial values on one rank are an error on every rank, naming the elements", E,
                   zb::stage0<C>, zb::stage1<C>, zb::stage2<C, zb::half>, zb::stage3<C>, zb::stage3_on_demand<C>,
                   zb::stage2_nvme<C>, zb::infinity<C>) {
  const int world = zb_world_size();
  if (world == 1) return;  // nothing can differ
  zbt::synthetic_model m(30);  // embed.w: 390 x 7 = 2730 elements, three blocks of 1024
  E eng(m.reg, C(MPI_COMM_WORLD), config_of<E>());
  init_all(eng, m, world - 1, 0, 2500);
  const auto msg = error_of([&] { one_step(eng, m); });
  INFO(msg);
  CHECK(has(msg, "ranks passed different initial values for parameter 'embed.w' (#0): rank 0 and rank " +
                     std::to_string(world - 1) + " differ in elements [2048, 2730)"));
}

TEST_CASE_TEMPLATE("a parameter set on some ranks only is an error on every rank", E, zb::stage0<C>, zb::stage3<C>) {
  const int world = zb_world_size();
  if (world == 1) return;
  zbt::synthetic_model m;
  E eng(m.reg, C(MPI_COMM_WORLD), config_of<E>());
  for (std::size_t p = 0; p < m.params.size(); ++p) {
    if (p == 2 && eng.rank() == 1) continue;  // rank 1 forgets l1.w
    std::vector<float> v(eng.model_layout().param(p).numel, 0.25f);
    eng.set_param(m.params[p], v);
  }
  const auto msg = error_of([&] { one_step(eng, m); });
  INFO(msg);
  CHECK(has(msg, "initial values of parameter 'l1.w' (#2): it was set on rank 0 but not on rank 1"));
}

TEST_CASE_TEMPLATE("values set on every rank alike train as before; set again later, they are checked again", E,
                   zb::stage0<C>, zb::stage2<C>, zb::stage3<C>) {
  zbt::synthetic_model m;
  E eng(m.reg, C(MPI_COMM_WORLD), config_of<E>());
  init_all(eng, m);
  one_step(eng, m, 0);
  one_step(eng, m, 1);
  if (zb_world_size() == 1) return;
  // A reload after training started (the checkpoint path will do this) with one rank's
  // values off in the last element of head.w.
  init_all(eng, m, 1, 8, 36);
  const auto msg = error_of([&] { one_step(eng, m, 2); });
  INFO(msg);
  CHECK(has(msg, "parameter 'head.w' (#8): rank 0 and rank 1 differ in elements [0, 37)"));
}

/// Train with every rank passing the values (`from_root` false) or rank `root` alone.
template <class E>
zbt::run_output train(bool from_root, int root) {
  zbt::synthetic_model m(3);
  E eng(m.reg, C(MPI_COMM_WORLD), config_of<E>());
  const auto before = eng.counters();
  for (std::size_t p = 0; p < m.params.size(); ++p) {
    std::vector<float> v(eng.model_layout().param(p).numel);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = zbt::synthetic_model::init(p, i);
    if (!from_root) eng.set_param(m.params[p], v);
    else if (eng.rank() == root) eng.set_param_from(root, m.params[p], v);
    else eng.set_param_from(root, m.params[p], {});
  }
  zbt::run_output out;
  out.first_step_traffic = eng.counters() - before;
  out.master = eng.gather_master();  // before any step: the values as set
  for (int s = 0; s < 3; ++s) one_step(eng, m, s);
  out.params = zbt::params_of(eng);
  const auto after = eng.gather_master();
  out.master.insert(out.master.end(), after.begin(), after.end());
  out.psi = eng.model_layout().raw_numel();
  return out;
}

TEST_CASE_TEMPLATE("set_param_from: values given on one rank end the same on every rank, bit for bit", E,
                   zb::stage0<C>, zb::stage1<C>, zb::stage2<C, zb::half>, zb::stage3<C>, zb::stage2_nvme<C>,
                   zb::infinity<C>) {
  const int world = zb_world_size();
  const int root = world - 1;
  const auto want = train<E>(false, root);
  const auto got = train<E>(true, root);
  CHECK(zbt::first_difference(got.master, want.master) == -1);
  CHECK(zbt::first_difference(got.params, want.params) == -1);
  // One fp32 broadcast of each parameter, and nothing moved when every rank passed values.
  CHECK(want.first_step_traffic.payload() == 0);
  CHECK(got.first_step_traffic.payload() == got.psi);
}

TEST_CASE("set_param_from: a different root or parameter, or values from a non-root, fail on every rank") {
  const int world = zb_world_size();
  zbt::synthetic_model m;
  using E = zb::stage3<C>;
  std::vector<float> v(m.reg.params()[2].numel, 0.5f);
  {
    E eng(m.reg, C(MPI_COMM_WORLD), config_of<E>());
    const auto msg = error_of([&] {
      const int root = eng.rank() == world - 1 ? 0 : world - 1;  // the last rank names another root
      eng.set_param_from(root, m.params[2], eng.rank() == root ? std::span<const float>(v) : std::span<const float>());
    });
    INFO(msg);
    if (world > 1) CHECK(has(msg, "set_param_from: rank 0 sets parameter #2 from rank " + std::to_string(world - 1) +
                                  " but rank " + std::to_string(world - 1) + " sets parameter #2 from rank 0"));
    else CHECK(msg.empty());
  }
  {
    E eng(m.reg, C(MPI_COMM_WORLD), config_of<E>());
    const auto msg = error_of([&] { eng.set_param_from(0, m.params[2], v); });  // every rank passes values
    INFO(msg);
    if (world > 1) CHECK(has(msg, "rank 1 is not the root and must pass no values"));
    else CHECK(msg.empty());
  }
  {
    E eng(m.reg, C(MPI_COMM_WORLD), config_of<E>());
    const auto msg = error_of([&] { eng.set_param_from(world, m.params[2], {}); });
    INFO(msg);
    CHECK(has(msg, "set_param_from: root " + std::to_string(world) + " out of range"));
  }
}

TEST_CASE("the value hash sees every bit and only the bits") {
  std::vector<float> a(3000), b;
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = 0.001f * static_cast<float>(i);
  b = a;
  CHECK(zb::detail::hash_values(a.data(), a.size(), 7) == zb::detail::hash_values(b.data(), b.size(), 7));
  for (std::size_t i : {std::size_t{0}, std::size_t{31}, std::size_t{32}, std::size_t{2999}}) {
    b = a;
    b[i] = i == 0 ? -0.0f : std::nextafter(b[i], 10.0f);  // -0 against +0; one ulp
    CHECK(zb::detail::hash_values(a.data(), a.size(), 7) != zb::detail::hash_values(b.data(), b.size(), 7));
  }
  CHECK(zb::detail::hash_values(a.data(), 5, 7) != zb::detail::hash_values(a.data(), 6, 7));  // the tail counts
  CHECK(zb::detail::hash_values(a.data(), 8, 1) != zb::detail::hash_values(a.data(), 8, 2));  // and the seed
}
