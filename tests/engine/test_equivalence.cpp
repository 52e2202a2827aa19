// Every stage ends K steps with exactly the parameters (fp32 master and the 16-bit
// copies) of stage 0, on the world size mpirun gave (CTest runs 1, 2, 3 and 4 ranks),
// for fp32, fp16 and bf16 parameters, with clipping active and an injected overflow.
//
// Exactness, not a tolerance, is the contract here: all collectives reduce through the
// same fp32 rank-ordered sum (comm/detail/reduce.hpp) and the norm is summed in the
// same order by every stage, so with one micro-step per step the stages perform the
// same floating-point operations. With several micro-steps, stage 2/3 reduce each
// micro-step and accumulate afterwards, while stages 0/1 accumulate locally first; in
// 16-bit those differ by rounding, so that case uses gradients on a grid where every
// sum is exact (harness.hpp, `quantized`) — again an exact comparison.
// Also checked per run: memory equals the ZeRO formula and the policies' estimate, and
// the elements communicated in a step equal 2Ψ (stages 0–2) or 3Ψ (stage 3).
#include "mpi_test_main.hpp"

#include <zeroblocks/comm/mpi.hpp>

#include "harness.hpp"

namespace zb = zeroblocks;
using zbt::run_options;

namespace {

template <class T>
void check_stage_matches(const zbt::run_output& ref, const zbt::run_output& got, int stage) {
  INFO("stage " << stage << " " << zb::dtype_name<T>() << " on " << zb_world_size() << " ranks");
  CHECK(zbt::first_difference(ref.master, got.master) == -1);
  CHECK(zbt::first_difference(ref.params, got.params) == -1);
  REQUIRE(ref.results.size() == got.results.size());
  for (std::size_t s = 0; s < ref.results.size(); ++s) {
    CHECK(ref.results[s].applied == got.results[s].applied);
    CHECK(ref.results[s].clip_factor == got.results[s].clip_factor);
    CHECK(ref.results[s].loss_scale == got.results[s].loss_scale);
    if (ref.results[s].applied) CHECK(ref.results[s].grad_norm == got.results[s].grad_norm);
  }
}

template <class T>
void check_memory_and_traffic(const zbt::run_output& r, int stage, int gas,
                              zbt::stage3_variant v = zbt::stage3_variant::on_demand, std::size_t state_bytes = 12) {
  INFO("stage " << stage << " (variant " << static_cast<int>(v) << ") " << zb::dtype_name<T>() << " on "
                << zb_world_size() << " ranks");
  // Model state equals the paper's formula for the padded Ψ, and every category the
  // policies' declaration.
  CHECK(r.memory.model_state() == r.formula);
  CHECK(r.formula == zb::zero_formula_bytes(stage, r.psi, zb_world_size(), sizeof(T), state_bytes, r.accum32));
  for (std::size_t c = 0; c < zb::mem_category_count; ++c) {
    INFO("category " << zb::mem_category_name(static_cast<zb::mem_category>(c)));
    CHECK(r.memory.current[c] == r.estimate.current[c]);
  }
  CHECK(r.memory[zb::mem_category::gathered] == 0);
  if (stage == 3 && v == zbt::stage3_variant::on_demand)
    CHECK(r.memory.peak_of(zb::mem_category::gathered) == r.max_unit * sizeof(T));
  if (v == zbt::stage3_variant::defaults) {
    REQUIRE(r.max_unit < zb::prefetch_config{}.persistence_threshold_numel);  // every unit persists
    CHECK(r.memory[zb::mem_category::persistent] == r.psi * sizeof(T));
  }
  // Elements communicated in the first step (which has no overflow).
  CHECK(r.first_step_traffic.payload() == zbt::expected_payload(stage, r.psi, gas, v, r.accum32));
}

/// A `tweak`: gradients accumulated in `D` (grad_accum_dtype), then `Then`.
template <zb::grad_accum_dtype D, class Then = zbt::no_tweak>
struct accum_in {
  template <class Cfg>
  void operator()(Cfg& c) const {
    c.step.grad_accum = D;
    Then{}(c);
  }
};
using accum_fp32 = accum_in<zb::grad_accum_dtype::fp32>;
using accum_param = accum_in<zb::grad_accum_dtype::param>;

template <class T, class Accum = zbt::no_tweak>
void all_stages(const run_options& o, bool exact_stage23 = true, Accum = {}) {
  using C = zb::comm::mpi;
  auto r0 = zbt::run<zb::stage0<C, T>>(C(MPI_COMM_WORLD), o, Accum{});
  auto r1 = zbt::run<zb::stage1<C, T>>(C(MPI_COMM_WORLD), o, Accum{});
  auto r2 = zbt::run<zb::stage2<C, T>>(C(MPI_COMM_WORLD), o, Accum{});
  auto r3 = zbt::run<zb::stage3_on_demand<C, T>>(C(MPI_COMM_WORLD), o, Accum{});
  auto r3p = zbt::run<zb::stage3<C, T>>(C(MPI_COMM_WORLD), o, [](auto& c) {
    Accum{}(c);
    zbt::prefetch_only{}(c);
  });
  auto r3d = zbt::run<zb::stage3<C, T>>(C(MPI_COMM_WORLD), o, Accum{});
  check_memory_and_traffic<T>(r0, 0, o.gas);
  check_memory_and_traffic<T>(r1, 1, o.gas);
  check_memory_and_traffic<T>(r2, 2, o.gas);
  check_memory_and_traffic<T>(r3, 3, o.gas);
  check_memory_and_traffic<T>(r3p, 3, o.gas, zbt::stage3_variant::prefetch_only);
  check_memory_and_traffic<T>(r3d, 3, o.gas, zbt::stage3_variant::defaults);
  check_stage_matches<T>(r0, r1, 1);
  if (exact_stage23) {
    check_stage_matches<T>(r0, r2, 2);
    check_stage_matches<T>(r0, r3, 3);
    check_stage_matches<T>(r0, r3p, 3);
    check_stage_matches<T>(r0, r3d, 3);
  }
  // Whatever the coordinator, stage 3 computes the same thing.
  CHECK(zbt::first_difference(r3.master, r3p.master) == -1);
  CHECK(zbt::first_difference(r3.master, r3d.master) == -1);
  // The run really trained, the overflow step was skipped and clipping was active.
  CHECK(zbt::first_difference(r0.master, zbt::run<zb::stage0<C, T>>(C(MPI_COMM_WORLD), [&] {
                                auto q = o;
                                q.steps = 0;
                                return q;
                              }(), Accum{}).master) != -1);
  if (o.overflow_step >= 0) CHECK_FALSE(r0.results[o.overflow_step].applied);
  if (o.max_grad_norm > 0) {
    bool clipped = false;
    for (auto& s : r0.results) clipped = clipped || s.clip_factor < 1.0f;
    CHECK(clipped);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("stages 1-3 equal stage 0: one micro-step, clipping, overflow", T, float, zb::half,
                   zb::bfloat16) {
  run_options o;
  o.steps = 5;
  o.gas = 1;
  o.overflow_step = 2;
  o.max_grad_norm = 0.5f;
  all_stages<T>(o);
}

/// 3 micro-steps of gradients on the exact grid, an overflow at step 1, clipping.
static run_options exact_grid_accumulation() {
  run_options o;
  o.steps = 4;
  o.gas = 3;
  o.quantized = true;
  o.overflow_step = 1;
  o.max_grad_norm = 0.05f;
  return o;
}

TEST_CASE_TEMPLATE("stages 1-3 equal stage 0: accumulation over 3 micro-steps (exact grid)", T, float,
                   zb::half, zb::bfloat16) {
  all_stages<T>(exact_grid_accumulation());
}

TEST_CASE_TEMPLATE("stage 1 equals stage 0 with accumulation of continuous gradients", T, float, zb::half,
                   zb::bfloat16) {
  run_options o;
  o.steps = 3;
  o.gas = 2;
  o.max_grad_norm = 0.5f;
  all_stages<T>(o, /*exact_stage23=*/false);
}

// ---- fp32 gradient accumulation (grad_accum_dtype) --------------------------------
// Every micro-step is reduced (16-bit on the wire, fp32 rank-ordered sum) and added to
// an fp32 accumulator, on every stage: the same operations, so every stage equals
// stage 0 bit for bit with continuous gradients and any number of micro-steps — where
// 16-bit accumulation makes stages 2/3 differ (checked below, so the comparison is not
// vacuous).

TEST_CASE_TEMPLATE("fp32 accumulation: every stage equals stage 0 bit for bit, 1-4 micro-steps", T, zb::half,
                   zb::bfloat16) {
  for (int gas = 1; gas <= 4; ++gas) {
    INFO(gas << " micro-steps");
    run_options o;
    o.steps = 3;
    o.gas = gas;
    o.max_grad_norm = 0.5f;
    o.overflow_step = gas == 2 ? 1 : -1;
    all_stages<T>(o, true, accum_fp32{});
  }
}

TEST_CASE("fp32 accumulation is bf16's default; 16-bit accumulation stays available and exact on the grid") {
  using C = zb::comm::mpi;
  CHECK(zb::stage2<C, zb::bfloat16>::accumulates_fp32({}));
  CHECK_FALSE(zb::stage2<C, zb::half>::accumulates_fp32({}));
  CHECK_FALSE(zb::stage2<C, float>::accumulates_fp32({}));
  all_stages<zb::bfloat16>(exact_grid_accumulation(), true, accum_param{});
}

TEST_CASE("16-bit accumulation of continuous gradients: stage 2 differs from stage 0, fp32 does not") {
  using C = zb::comm::mpi;
  using T = zb::bfloat16;
  run_options o;
  o.steps = 3;
  o.gas = 2;
  auto p0 = zbt::run<zb::stage0<C, T>>(C(MPI_COMM_WORLD), o, accum_param{});
  auto p2 = zbt::run<zb::stage2<C, T>>(C(MPI_COMM_WORLD), o, accum_param{});
  auto f0 = zbt::run<zb::stage0<C, T>>(C(MPI_COMM_WORLD), o, accum_fp32{});
  auto f2 = zbt::run<zb::stage2<C, T>>(C(MPI_COMM_WORLD), o, accum_fp32{});
  CHECK_FALSE(p0.accum32);
  CHECK(f0.accum32);
  // One rank reduces nothing across ranks: the orders agree there.
  if (zb_world_size() > 1) CHECK(zbt::first_difference(p0.master, p2.master) != -1);
  CHECK(zbt::first_difference(f0.master, f2.master) == -1);
  // fp32 accumulation changes the result (the averaged gradient is no longer rounded to bf16).
  CHECK(zbt::first_difference(p0.master, f0.master) != -1);
}

// ---- other optimizers: every stage runs whatever rule it is given ------------------

template <class T, class O>
using opt_stage0 = zb::engine<T, zb::host_space, zb::comm::mpi, zb::partition::even, zb::coordinate::resident,
                              zb::bucket::all_reduce, zb::master::resident<zb::host_space>, zb::default_scaler_t<T>, O>;
template <class T, class O>
using opt_stage1 = zb::engine<T, zb::host_space, zb::comm::mpi, zb::partition::even, zb::coordinate::resident,
                              zb::bucket::reduce_at_boundary, zb::master::resident<zb::host_space>,
                              zb::default_scaler_t<T>, O>;
template <class T, class O>
using opt_stage2 = zb::engine<T, zb::host_space, zb::comm::mpi, zb::partition::even, zb::coordinate::resident,
                              zb::bucket::reduce_scatter, zb::master::resident<zb::host_space>,
                              zb::default_scaler_t<T>, O>;
template <class T, class O>
using opt_stage3 = zb::engine<T, zb::host_space, zb::comm::mpi, zb::partition::even, zb::coordinate::prefetch_trace,
                              zb::bucket::reduce_scatter, zb::master::resident<zb::host_space>,
                              zb::default_scaler_t<T>, O>;

template <class T, class O, class Tweak = zbt::no_tweak>
void all_stages_with(const run_options& o, Tweak tweak = {}) {
  using C = zb::comm::mpi;
  INFO(O::name);
  constexpr std::size_t k = zb::optimizer_state_bytes<O>;
  auto r0 = zbt::run<opt_stage0<T, O>>(C(MPI_COMM_WORLD), o, tweak);
  auto r1 = zbt::run<opt_stage1<T, O>>(C(MPI_COMM_WORLD), o, tweak);
  auto r2 = zbt::run<opt_stage2<T, O>>(C(MPI_COMM_WORLD), o, tweak);
  auto r3 = zbt::run<opt_stage3<T, O>>(C(MPI_COMM_WORLD), o, tweak);
  check_memory_and_traffic<T>(r0, 0, o.gas, zbt::stage3_variant::on_demand, k);
  check_memory_and_traffic<T>(r1, 1, o.gas, zbt::stage3_variant::on_demand, k);
  check_memory_and_traffic<T>(r2, 2, o.gas, zbt::stage3_variant::on_demand, k);
  check_memory_and_traffic<T>(r3, 3, o.gas, zbt::stage3_variant::defaults, k);
  check_stage_matches<T>(r0, r1, 1);
  check_stage_matches<T>(r0, r2, 2);
  check_stage_matches<T>(r0, r3, 3);
  // The optimizer state is what K says: none beyond the master for plain SGD.
  CHECK(r0.memory[zb::mem_category::adam_m] == (k >= 8 ? 4 * r0.psi : 0));
  CHECK(r0.memory[zb::mem_category::adam_v] == (k >= 12 ? 4 * r0.psi : 0));
  // It trained: the parameters moved.
  auto q = o;
  q.steps = 0;
  CHECK(zbt::first_difference(r0.master, zbt::run<opt_stage0<T, O>>(C(MPI_COMM_WORLD), q, tweak).master) != -1);
}

struct nesterov {
  template <class Cfg>
  void operator()(Cfg& c) const {
    c.optim.nesterov = true;
    c.optim.weight_decay = 0.01f;
  }
};
struct lion_decay {
  template <class Cfg>
  void operator()(Cfg& c) const {
    c.optim.lr = 1e-3f;
    c.optim.weight_decay = 0.1f;
  }
};

TEST_CASE_TEMPLATE("Lion and SGD: stages 1-3 equal stage 0, memory (p+g+K)Ψ exactly", T, float, zb::half,
                   zb::bfloat16) {
  run_options o;
  o.steps = 4;
  o.gas = 1;
  o.overflow_step = 2;
  o.max_grad_norm = 0.5f;
  all_stages_with<T, zb::optim::lion>(o, lion_decay{});
  all_stages_with<T, zb::optim::sgd>(o);
  all_stages_with<T, zb::optim::sgd>(o, nesterov{});
  all_stages_with<T, zb::optim::sgd_plain>(o);
  // Accumulation over micro-steps on the exact grid.
  o.gas = 2;
  o.quantized = true;
  all_stages_with<T, zb::optim::lion>(o);
  all_stages_with<T, zb::optim::sgd>(o);
}

TEST_CASE_TEMPLATE("parameter groups: stages 1-3 equal stage 0 with slices that span groups", T, float, zb::half,
                   zb::bfloat16) {
  run_options o;
  o.steps = 4;
  o.overflow_step = 2;
  o.max_grad_norm = 0.5f;
  o.grouped = true;
  all_stages<T>(o);
  all_stages_with<T, zb::optim::lion>(o);
  all_stages_with<T, zb::optim::sgd>(o);
  // The groups really change the result.
  o.grouped = false;
  const auto plain = zbt::run<zb::stage0<zb::comm::mpi, T>>(zb::comm::mpi(MPI_COMM_WORLD), o);
  o.grouped = true;
  const auto grouped = zbt::run<zb::stage0<zb::comm::mpi, T>>(zb::comm::mpi(MPI_COMM_WORLD), o);
  CHECK(zbt::first_difference(plain.master, grouped.master) != -1);
}

TEST_CASE("one big bucket and one bucket per unit give the same result") {
  using C = zb::comm::mpi;
  run_options a, b;
  a.bucket_numel = 1;          // every unit its own bucket
  b.bucket_numel = 1u << 30;   // everything in one bucket
  auto ra = zbt::run<zb::stage2<C, zb::bfloat16>>(C(MPI_COMM_WORLD), a);
  auto rb = zbt::run<zb::stage2<C, zb::bfloat16>>(C(MPI_COMM_WORLD), b);
  CHECK(zbt::first_difference(ra.master, rb.master) == -1);
  CHECK(ra.memory[zb::mem_category::buckets] < rb.memory[zb::mem_category::buckets]);
}
