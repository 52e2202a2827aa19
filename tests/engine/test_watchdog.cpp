// The collective watchdog (`step.collective_timeout_s`): the ways a run used to hang with
// no message end, on every rank, in one error naming where each rank is — within the
// timeout plus a few seconds. One rank (the last) misbehaves in each case:
//   - an extra acquire, or a missing one, on a followed stage-3 trace;
//   - skipping step();
//   - stuck in the trainer's own code (it raises the same error when it comes back);
//   - stopped without dying (SIGSTOP; the test continues it afterwards).
// Every rank's message must be the same text. Runs on 2–4 ranks. The verdict's wording
// itself is checked directly on made-up positions.
#include "mpi_test_main.hpp"

#include <zeroblocks/comm/mpi.hpp>
#include <zeroblocks/zeroblocks.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <functional>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "error_of.hpp"

namespace zb = zeroblocks;
using zbt::error_of;
using zbt::has;
using C = zb::comm::mpi;
using E = zb::stage3<C>;

namespace {

constexpr double timeout_s = 1.0;

std::string unit_name(std::size_t u) {
  std::string s = "u";  // (+= : see last_rank)
  s += std::to_string(u);
  return s;
}

zb::param_registry model() {
  zb::param_registry reg;
  for (std::size_t u = 0; u < 3; ++u) {
    std::string w = "w";
    w += std::to_string(u);
    reg.add(w, {40}, unit_name(u));
  }
  return reg;
}

E::config config() {
  E::config cfg;
  cfg.step.collective_timeout_s = timeout_s;
  return cfg;
}

/// Forward (acquire/release each unit in `order`) and backward, one micro-step.
void micro_step(E& eng, const zb::param_registry& reg, const std::vector<std::size_t>& order) {
  eng.begin_micro_step();
  for (std::size_t u : order) {
    auto g = eng.acquire(reg.unit(unit_name(u)));
  }
  for (std::size_t u = 3; u-- > 0;) {
    auto g = eng.acquire(reg.unit(unit_name(u)));
    eng.grad_ready({u}, std::vector<zb::bfloat16>(40, zb::bfloat16(0.01f)));
  }
  eng.end_micro_step();
}

/// Two clean steps (stage 3 records the trace, then follows it), then `misbehave` on
/// every rank (the last one deviates). Returns the message; checks every rank got the
/// same one, and that the well-behaved ranks got it in time.
std::string incident(const std::function<void(E&, const zb::param_registry&, bool)>& misbehave,
                     const std::function<void()>& after = {}, const char* expected = "collective watchdog") {
  const int rank = zb_world_rank(), world = zb_world_size();
  const bool odd = rank == world - 1;
  auto reg = model();
  std::string msg;
  double elapsed = 0;
  {
    E eng(reg, C(MPI_COMM_WORLD), config());
    for (std::size_t p = 0; p < reg.size(); ++p) eng.set_param({p}, std::vector<float>(40, 0.1f));
    for (int s = 0; s < 2; ++s) {
      micro_step(eng, reg, {0, 1, 2});
      eng.step();
    }
    const auto t0 = std::chrono::steady_clock::now();
    msg = error_of([&] {
      misbehave(eng, reg, odd);
      // A rank the incident missed meets it at its next call.
      for (int s = 0; s < 3; ++s) {
        micro_step(eng, reg, {0, 1, 2});
        eng.step();
      }
    });
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  if (after) after();
  const auto all = zb_all_strings(msg);
  if (rank == 0) std::printf("[%d ranks] %.1f s: %s\n", world, elapsed, msg.c_str());
  INFO(msg);
  CHECK(has(msg, expected));
  for (const auto& m : all) CHECK(m == msg);  // the same error on every rank
  // Not a speed check: the bound is the timeout + the leader's grace + slack, where the
  // only alternative is a hang.
  if (!odd) CHECK(elapsed < timeout_s + 1.0 + 15.0);
  MPI_Barrier(MPI_COMM_WORLD);
  return msg;
}

/// "rank <last>" (built with += : "rank " + std::to_string() trips GCC 12's -Wrestrict, bug 105329).
std::string last_rank() {
  std::string s = "rank ";
  s += std::to_string(zb_world_size() - 1);
  return s;
}

}  // namespace

TEST_CASE("the verdict names the diverged rank, the silent ones, or every position") {
  using P = std::vector<std::optional<std::string>>;
  const auto v3 = zb::detail::watchdog_verdict(1, 1, 0, P{"step() (step 3)", "step() (step 3)", "acquire 'u1'"});
  CHECK(has(v3, "rank 2 diverged: acquire 'u1'. The other ranks 0 and 1: step() (step 3)."));
  const auto v2 = zb::detail::watchdog_verdict(1, 1, 1, P{"step()", "acquire 'u1'"});
  CHECK(has(v2, "rank 1 waited 1 s"));
  CHECK(has(v2, "The ranks disagree: rank 0: step(); rank 1: acquire 'u1'."));
  const auto vs = zb::detail::watchdog_verdict(2, 1, 0, P{"step()", std::nullopt, "step()", std::nullopt});
  CHECK(has(vs, "ranks 1 and 3 did not answer within 1 s: not inside a zeroblocks call"));
  CHECK(has(vs, "Where the others are: ranks 0 and 2: step()."));
  const auto same = zb::detail::watchdog_verdict(1, 1, 0, P{"x", "x"});
  CHECK(has(same, "Every rank is in the same place (x): no rank diverged"));
}

TEST_CASE("an extra acquire on one rank, on a followed trace") {
  if (zb_world_size() == 1) return;
  const auto msg = incident([](E& eng, const zb::param_registry& reg, bool odd) {
    eng.begin_micro_step();
    {
      auto g = eng.acquire(reg.unit("u0"));
    }
    if (odd) {
      auto g = eng.acquire(reg.unit("u0"));  // not the trace's next unit
    }
    for (std::size_t u : {1, 2}) {
      auto g = eng.acquire(reg.unit(unit_name(u)));
    }
    for (std::size_t u = 3; u-- > 0;) {
      auto g = eng.acquire(reg.unit(unit_name(u)));
      eng.grad_ready({u}, std::vector<zb::bfloat16>(40, zb::bfloat16(0.01f)));
    }
    eng.end_micro_step();
    eng.step();
  });
  CHECK(has(msg, "acquire of unit 'u0' (step 3, micro-step 1)"));
  if (zb_world_size() >= 3) CHECK(has(msg, last_rank() + " diverged: acquire of unit 'u0'"));
}

TEST_CASE("a missing acquire on one rank, on a followed trace") {
  if (zb_world_size() == 1) return;
  const auto msg = incident([](E& eng, const zb::param_registry& reg, bool odd) {
    micro_step(eng, reg, odd ? std::vector<std::size_t>{0, 2} : std::vector<std::size_t>{0, 1, 2});
    eng.step();
  });
  CHECK(has(msg, "acquire of unit 'u2' (step 3, micro-step 1)"));
  if (zb_world_size() >= 3) CHECK(has(msg, last_rank() + " diverged: acquire of unit 'u2'"));
}

TEST_CASE("one rank skips step()") {
  // Stage 3 agrees at every micro-step's start, so this one is caught there, at once,
  // before the watchdog's timeout.
  if (zb_world_size() == 1) return;
  incident(
      [](E& eng, const zb::param_registry& reg, bool odd) {
        micro_step(eng, reg, {0, 1, 2});
        if (!odd) eng.step();
        micro_step(eng, reg, {0, 1, 2});
        eng.step();
      },
      {}, "ranks out of step");
}

TEST_CASE("one rank stuck in the trainer's own code") {
  if (zb_world_size() == 1) return;
  const auto msg = incident([](E& eng, const zb::param_registry& reg, bool odd) {
    micro_step(eng, reg, {0, 1, 2});
    if (odd) std::this_thread::sleep_for(std::chrono::duration<double>(4 * timeout_s + 2.0));
    eng.step();
  });
  CHECK(has(msg, last_rank() + " did not answer"));
  CHECK(has(msg, "step()"));
}

TEST_CASE("a rank that stops without dying") {
  if (zb_world_size() == 1) return;
  const int world = zb_world_size();
  int pid = static_cast<int>(::getpid());
  std::vector<int> pids(static_cast<std::size_t>(world));
  MPI_Allgather(&pid, 1, MPI_INT, pids.data(), 1, MPI_INT, MPI_COMM_WORLD);
  const auto msg = incident(
      [](E& eng, const zb::param_registry& reg, bool odd) {
        micro_step(eng, reg, {0, 1, 2});
        if (odd) std::raise(SIGSTOP);  // continued by rank 0 once the others have their error
        eng.step();
      },
      [&] {
        if (zb_world_rank() == 0) ::kill(pids.back(), SIGCONT);
      });
  CHECK(has(msg, last_rank() + " did not answer"));
}
