/**
 * @file engine.hpp
 * @brief `zeroblocks::engine`: one class template composed from the policies.
 *
 * ```
 * engine<T, Space, Comm, Partitioner, Coordinator, Bucketer, Master, Scaler, Optim>
 * ```
 * T is the parameter/gradient type (half, bfloat16 or float). Space is where the
 * parameters, gradients and buckets live: `host_space` (CPU ranks, `comm::mpi` /
 * `comm::self`) or `cuda_space` (GPU ranks, `comm::nccl` / `comm::cuda_self`; the
 * translation unit must include `zeroblocks/cuda.cuh`); every operation on that memory
 * goes through `space_ops<Space>`, and a communicator that cannot reach it is refused at
 * compile time.
 *
 * On `cuda_space` the engine's work is stream-ordered on the calling thread's compute
 * stream (`cuda_space::compute_stream()`; communicators order their own streams against
 * it with events): the views `acquire` hands out are ready for kernels on that stream,
 * and `grad_ready` copies the gradient out on it — the trainer may overwrite the buffer
 * with later work on that stream, but from the host or another stream only after
 * synchronising it. The stage follows from
 * the policies: `bucket::all_reduce` → stage 0; `reduce_at_boundary` → 1;
 * `reduce_scatter` with `coordinate::resident` → 2; with `coordinate::on_demand` or
 * `coordinate::prefetch_trace` → 3.
 * `presets.hpp` names the usual combinations.
 *
 * A training step, from the trainer's side:
 * ```
 * for (int micro = 0; micro < accumulation; ++micro) {
 *   eng.begin_micro_step();
 *   // forward:  auto u = eng.acquire(unit); use u.param(p) ...; u.release() (or scope end)
 *   // backward: acquire again; eng.grad_ready(p, grad) for each parameter
 *   eng.end_micro_step();
 * }
 * auto r = eng.step();   // norm + overflow pass, loss scaler, fused AdamW, param gather
 * ```
 * The trainer multiplies its loss by `eng.loss_scale()`. Gradients are averaged over
 * ranks and micro-steps by the engine.
 *
 * Failure behaviour: configuration, parameter registration and allocation are checked
 * collectively at construction (every rank throws the same message). Each step — and,
 * for stages 2/3, each micro-step — begins with one small all-gather on a control
 * communicator that checks every rank is at the same step and micro-step, with the same
 * stage-3 gather order, learning rate and loss scale, and (at `step()`) no unit still
 * acquired. Anything thrown on one rank from inside the engine, and any exception that
 * unwinds through it, is sent to the other ranks over the communicators' abort channel
 * before it propagates, so they raise an error instead of hanging in a collective.
 * A master-state policy whose step is a transaction (`commit()` / `rollback()`, e.g.
 * `master::swapped`) is the exception: when its I/O fails on some rank, every rank rolls
 * back and throws the same `collective_error`, the communicators stay usable, and
 * calling `step()` again retries the step with the gradients already reduced.
 *
 * Communicators: the engine duplicates the one it is given (`Comm::dup`) into three —
 * gradient reductions, parameter gathers, control — so those three streams keep their
 * own order on every rank however the trainer interleaves acquires and gradients.
 * (DESIGN.md has one communicator; sharing it lets a stage-3 gather pair with another
 * rank's bucket reduce-scatter when backward orders differ — a silent corruption.)
 */
#pragma once

#include "../bucket/all_reduce.hpp"
#include "../bucket/bucket.hpp"
#include "../bucket/reduce_at_boundary.hpp"
#include "../bucket/reduce_scatter.hpp"
#include "../comm/comm.hpp"
#include "../coordinate/coordinate.hpp"
#include "../coordinate/on_demand.hpp"
#include "../coordinate/prefetch_trace.hpp"
#include "../coordinate/resident.hpp"
#include "../core/numeric.hpp"
#include "../kernel/host.hpp"
#include "../layout/layout.hpp"
#include "../master/master.hpp"
#include "../master/resident.hpp"
#include "../master/swapped.hpp"
#include "../optim/adamw.hpp"
#include "../partition/even.hpp"
#include "../scale/scale.hpp"
#include "../space/host_space.hpp"
#include "../space/ops.hpp"
#include "context.hpp"

#include <bit>
#include <cmath>
#include <cstdint>
#include <exception>
#include <optional>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

ZB_NAMESPACE_BEGIN

/// @brief The loss scaler a parameter type needs by default: dynamic for fp16 only.
template <class T>
using default_scaler_t = std::conditional_t<std::is_same_v<T, half>, scale::dynamic, scale::none>;

/// @brief What `engine::step()` did.
struct step_result {
  bool applied = false;     ///< false: overflow, step skipped on every rank
  double grad_norm = 0.0;   ///< global L2 norm of the averaged, unscaled gradient (before clipping)
  float clip_factor = 1.0f; ///< multiplier applied to the gradient (1 = no clipping)
  float loss_scale = 1.0f;  ///< scale the gradients carried
  long step = 0;            ///< optimizer steps applied so far
};

/// @brief The ZeRO model-state formula, bytes per rank, for `psi` elements.
/// Stage 0 (p+g+12)Ψ, 1 (p+g)Ψ + 12Ψ/N, 2 pΨ + (g+12)Ψ/N, 3 (p+g+12)Ψ/N with p = g =
/// bytes of T (2 for 16-bit: the paper's 16Ψ, 4Ψ+12Ψ/N, 2Ψ+14Ψ/N, 16Ψ/N).
inline std::size_t zero_formula_bytes(int stage, std::size_t psi, int world, std::size_t elem_bytes) {
  const std::size_t n = static_cast<std::size_t>(world), k = 12, p = elem_bytes, g = elem_bytes;
  switch (stage) {
    case 0: return (p + g + k) * psi;
    case 1: return (p + g) * psi + k * psi / n;
    case 2: return p * psi + (g + k) * psi / n;
    case 3: return (p + g + k) * psi / n;
  }
  ZB_FAIL("zero_formula_bytes: stage ", stage, " is not 0..3");
}

/// @brief The space a master-state policy keeps its state in (void when it names none).
template <class M>
struct master_space {
  using type = void;
};
template <class M>
  requires requires { typename M::space; }
struct master_space<M> {
  using type = typename M::space;
};
template <class M>
using master_space_t = typename master_space<M>::type;

/// @brief A master keeping its state in its own space fits an engine on `Space` when the
/// fused step can reach both: the same space, or two host-accessible ones.
template <class M, class Space>
consteval bool master_space_fits() {
  using MS = master_space_t<M>;
  if constexpr (std::is_void_v<MS> || std::is_same_v<MS, Space>) return true;
  else return MS::host_accessible && Space::host_accessible;
}

/// @brief Whether coordinator policy C reads the 16-bit shard from the master tier.
template <class C>
consteval bool params_on_tier_of() {
  if constexpr (requires { C::params_on_tier; }) return C::params_on_tier;
  else return false;
}
template <class C>
inline constexpr bool params_on_tier_v = params_on_tier_of<C>();

template <class T, class Space, class Comm, class Partitioner = partition::even,
          class Coordinator = coordinate::resident, class Bucketer = bucket::all_reduce,
          class Master = master::resident<Space>, class Scaler = default_scaler_t<T>,
          class Optim = optim::adamw>
class engine {
  static_assert(is_param_type_v<T>,
                "zeroblocks::engine: T (parameter type) must be float, half or bfloat16 "
                "(see zeroblocks/core/numeric.hpp)");
  static_assert(space_policy<Space>,
                "zeroblocks::engine: Space is not a space policy (see zeroblocks/space/host_space.hpp)");
  static_assert(has_space_ops<Space>,
                "zeroblocks::engine: no space_ops for this Space; for cuda_space include zeroblocks/cuda.cuh "
                "(space/cuda_ops.cuh) before instantiating the engine, in a translation unit compiled by nvcc");
  static_assert(master_space_fits<Master, Space>(),
                "zeroblocks::engine: master::resident<S> keeps its state in S, and the fused step reads the "
                "gradients and writes the parameters of the engine's Space: use the same space (for fp32 state "
                "in host memory with parameters on the GPU: master::offloaded, zeroblocks/master/offloaded.hpp)");
  static_assert(communicator_policy<Comm>,
                "zeroblocks::engine: Comm is not a communicator policy (see zeroblocks/comm/comm.hpp)");
  static_assert(comm_reaches<Comm, Space>(),
                "zeroblocks::engine: Comm cannot move memory of this Space: on cuda_space use comm::nccl or "
                "comm::cuda_self; on host spaces comm::mpi or comm::self (see zeroblocks/comm/comm.hpp)");
  static_assert(partitioner_policy<Partitioner>,
                "zeroblocks::engine: Partitioner is not a partitioner policy (see zeroblocks/partition/even.hpp)");
  static_assert(coordinator_policy<Coordinator>,
                "zeroblocks::engine: Coordinator is not a coordinator policy (see zeroblocks/coordinate/coordinate.hpp)");
  static_assert(bucketer_policy<Bucketer>,
                "zeroblocks::engine: Bucketer is not a bucketer policy (see zeroblocks/bucket/bucket.hpp)");
  static_assert(master_policy<Master>,
                "zeroblocks::engine: Master is not a master-state policy (see zeroblocks/master/master.hpp)");
  static_assert(scaler_policy<Scaler>,
                "zeroblocks::engine: Scaler is not a loss-scaler policy (see zeroblocks/scale/scale.hpp)");
  static_assert(optimizer_policy<Optim>,
                "zeroblocks::engine: Optim is not an optimizer policy (see zeroblocks/optim/adamw.hpp)");
  static_assert(!params_on_tier_v<Coordinator> ||
                    requires(typename Master::template impl<engine_context<T, Space, Comm>>& m) { m.param_tier(); },
                "zeroblocks::engine: the Coordinator reads the 16-bit parameters from the master tier (NVMe), so "
                "the Master must keep them there: use master::swapped (zeroblocks/master/swapped.hpp)");
  static_assert(!Coordinator::shards_params || Bucketer::shards_grads,
                "zeroblocks::engine: the Coordinator shards parameters (stage 3), so the Bucketer must "
                "shard gradients too: use bucket::reduce_scatter (zeroblocks/bucket/reduce_scatter.hpp)");

public:
  using param_type = T;
  using space = Space;
  using comm_type = Comm;
  using context = engine_context<T, Space, Comm>;
  using coordinator_impl = typename Coordinator::template impl<context>;
  using master_impl = typename Master::template impl<context>;
  using bucketer_impl = typename Bucketer::template impl<context>;
  /// @brief The operations on `Space` memory (copies, kernels) the engine uses.
  using ops = space_ops<Space>;

  /// @brief Optimizer state is sharded (stages 1–3) or replicated (stage 0).
  static constexpr bool sharded_master = Bucketer::shards_master;
  /// @brief The ZeRO stage these policies make.
  static constexpr int stage = Coordinator::shards_params ? 3
                               : Bucketer::shards_grads   ? 2
                               : Bucketer::shards_master  ? 1
                                                          : 0;

  /// @brief Build the layout, check configuration and registration across ranks,
  /// allocate every buffer. Collective.
  engine(const param_registry& reg, Comm comm, engine_config cfg = {})
      : comm_(std::move(comm)),
        gather_comm_(comm_.dup()),
        control_comm_(comm_.dup()),
        cfg_(cfg),
        layout_(checked_layout(reg)),
        ctx_{layout_, comm_, gather_comm_, control_comm_, tracker_, cfg_},
        scaler_(cfg_.scale),
        holds_(layout_.unit_count(), 0),
        bases_(layout_.unit_count(), nullptr),
        reported_(layout_.param_count(), 0) {
    // Allocation can fail on one rank only (memory): agree before anyone goes on.
    std::string problem;
    try {
      coord_.emplace(ctx_);
      bucketer_.emplace(ctx_);
      if constexpr (params_on_tier_v<Coordinator>) {
        master_.emplace(ctx_, owned_numel(), true);
        coord_->attach_param_tier(master_->param_tier());
      } else {
        master_.emplace(ctx_, owned_numel());
      }
    } catch (const std::exception& e) {
      problem = std::string("engine: allocating the model state failed: ") + e.what();
    }
    comm_.agree(problem.empty(), problem);
    // A master that moves gradients elsewhere (master::offloaded: to the host) starts
    // as each bucket's reduced block lands in the shard, during backward.
    if constexpr (streams_shard_v) {
      bucketer_->on_shard_updated(
          [m = &*master_](std::size_t offset, const T* data, std::size_t n) { m->shard_updated(offset, data, n); },
          [m = &*master_] { m->shard_will_change(); });
    }
    for (std::size_t u = 0; u < layout_.unit_count(); ++u) {
      const auto& up = layout_.unit(u);
      for (int r = 0; r < comm_.size(); ++r) {
        if (sharded_master && r != comm_.rank()) continue;
        const std::size_t moff = sharded_master ? up.shard_offset : up.offset + r * up.slice_numel;
        owned_.push_back({u, r, moff, up.slice_numel});
      }
    }
  }

  engine(const engine&) = delete;
  engine& operator=(const engine&) = delete;
  ~engine() {
    // An exception is unwinding through the trainer with this engine in use (the
    // trainer's own, or one of ours that has told the peers already): make sure the other
    // ranks raise instead of waiting for us in a collective.
    if (std::uncaught_exceptions() > exceptions_at_birth_)
      tell_peers(detail::concat("an exception on rank ", comm_.rank(), " unwound through the engine"));
    // A peer failed while collectives were in flight: they may still land in our
    // buffers, so those must outlive us (see memory_tracker::quarantine).
    if (comm_.failed() || gather_comm_.failed() || control_comm_.failed()) tracker_.quarantine();
  }

  // ---- model --------------------------------------------------------------------

  const layout& model_layout() const { return layout_; }
  Comm& communicator() { return comm_; }
  const engine_config& config() const { return cfg_; }
  int rank() const { return comm_.rank(); }
  int world() const { return comm_.size(); }

  /// @brief Set a parameter's initial value (fp32; every rank passes the same values).
  void set_param(param_id p, std::span<const float> values) {
    check_param(p, "set_param");
    const auto& pp = layout_.param(p.index);
    if (values.size() != pp.numel)
      ZB_LOCAL_FAIL(ctx_, "set_param: parameter ", describe(p), " has ", pp.numel, " elements, got ",
                    values.size());
    const auto& up = layout_.unit(pp.unit);
    // Stage 3: gathers in flight read the shard; copies made from it become stale.
    if constexpr (requires(coordinator_impl& c) { c.params_changed(); }) coord_->params_changed();
    for (int r = 0; r < comm_.size(); ++r) {
      // The part of the parameter that falls in slice r of its unit.
      const std::size_t s0 = r * up.slice_numel, s1 = s0 + up.slice_numel;
      const std::size_t a = std::max(s0, pp.offset_in_unit), b = std::min(s1, pp.offset_in_unit + pp.numel);
      if (a >= b) continue;
      const float* src = values.data() + (a - pp.offset_in_unit);
      // (Parameters on the tier: the master's set() writes them.)
      if (!params_on_tier_v<Coordinator> && (!Coordinator::shards_params || r == comm_.rank())) {
        std::vector<T> rounded(b - a);
        for (std::size_t i = 0; i < b - a; ++i) rounded[i] = from_float<T>(src[i]);
        ops::from_host(coord_->owned_slice(pp.unit, r) + (a - s0), rounded.data(), rounded.size() * sizeof(T));
      }
      if (!sharded_master || r == comm_.rank()) {
        const std::size_t moff = sharded_master ? up.shard_offset : up.offset + s0;
        master_->set(moff + (a - s0), src, b - a);
      }
    }
  }

  // ---- parameters: acquire / release ---------------------------------------------

  /// @brief RAII hold on a unit's full parameters. Move-only; releases on destruction.
  class unit_guard {
  public:
    unit_guard() = default;
    unit_guard(const unit_guard&) = delete;
    unit_guard& operator=(const unit_guard&) = delete;
    unit_guard(unit_guard&& o) noexcept
        : eng_(std::exchange(o.eng_, nullptr)), held_(std::exchange(o.held_, false)), unit_(o.unit_),
          base_(std::exchange(o.base_, nullptr)) {}
    unit_guard& operator=(unit_guard&& o) noexcept {
      if (this != &o) {
        reset_quietly();
        eng_ = std::exchange(o.eng_, nullptr);
        held_ = std::exchange(o.held_, false);
        unit_ = o.unit_;
        base_ = std::exchange(o.base_, nullptr);
      }
      return *this;
    }
    ~unit_guard() { reset_quietly(); }

    /// @brief Full view of a parameter of this unit.
    std::span<const T> param(param_id p) const {
      if (!held_) fail("unit_guard::param: the guard holds no unit (already released, or moved from)");
      eng_->check_param(p, "unit_guard::param");
      const auto& pp = eng_->layout_.param(p.index);
      if (pp.unit != unit_.index)
        fail(detail::concat("unit_guard::param: parameter ", eng_->describe(p), " is not in unit '",
                            eng_->layout_.unit_name(unit_.index), "'"));
      return {base_ + pp.offset_in_unit, pp.numel};
    }
    unit_id unit() const { return unit_; }
    bool holds() const { return held_; }
    /// @brief Release now; a second release (or one on a moved-from guard) is an error.
    void release() {
      if (!held_) fail("unit_guard::release: the guard holds no unit (already released, or moved from)");
      held_ = false;
      base_ = nullptr;
      eng_->release(unit_);
    }

  private:
    friend class engine;
    unit_guard(engine* e, unit_id u, const T* base) : eng_(e), held_(true), unit_(u), base_(base) {}
    [[noreturn]] void fail(const std::string& message) const {
      if (eng_) eng_->ctx_.fail_local(message, detail::location_string(std::source_location::current()));
      ZB_FAIL(message);
    }
    void reset_quietly() noexcept {
      if (!held_) return;
      held_ = false;
      try {
        eng_->release(unit_);
      } catch (...) {
      }
    }
    engine* eng_ = nullptr;  // kept after release, so misuse is reported to the peers
    bool held_ = false;
    unit_id unit_{};
    const T* base_ = nullptr;
  };

  /// @brief Make unit `u`'s full parameters available (stage 3: all-gather them).
  [[nodiscard]] unit_guard acquire(unit_id u) {
    return guarded([&] {
      check_unit(u, "acquire");
      if (holds_[u.index] == 0) {
        // Without a verified order to go by, check this acquire against every rank's
        // before its gather exists (see coordinate.hpp).
        if constexpr (requires(const coordinator_impl& c) { c.checks_acquire(std::size_t{}); })
          if (coord_->checks_acquire(u.index)) agree_on_state(call_site::acquire, u.index);
        bases_[u.index] = coord_->acquire(u.index);  // before counting: exception-safe
        if constexpr (Coordinator::shards_params) log_event(static_cast<std::uint32_t>(u.index));
      }
      ++holds_[u.index];
      ++stats_.acquires;
      return unit_guard(this, u, bases_[u.index]);
    });
  }
  /// @brief Drop one hold on unit `u` (the guard does this for you).
  void release(unit_id u) {
    guarded([&] {
      check_unit(u, "release");
      if (holds_[u.index] == 0)
        ZB_LOCAL_FAIL(ctx_, "release: unit '", layout_.unit_name(u.index),
                      "' released more times than acquired (released twice, or never acquired)");
      if (--holds_[u.index] == 0) {
        coord_->release(u.index);
        bases_[u.index] = nullptr;
        if constexpr (Coordinator::shards_params) log_event(static_cast<std::uint32_t>(u.index) | release_bit);
      }
    });
  }
  /// @brief Unit handle of a parameter.
  unit_id unit_of(param_id p) const {
    ZB_REQUIRE(p.index < layout_.param_count(), "unit_of: parameter index ", p.index, " out of range (",
               layout_.param_count(), " registered)");
    return {layout_.param(p.index).unit};
  }

  // ---- gradients -----------------------------------------------------------------

  void begin_micro_step() {
    guarded([&] {
      if (in_micro_) ZB_LOCAL_FAIL(ctx_, "begin_micro_step: the previous micro-step was not ended");
      if (grads_reduced_)
        ZB_LOCAL_FAIL(ctx_, "begin_micro_step: the last step() failed and was rolled back; call step() again "
                            "to retry it before starting new micro-steps");
      // Stages 2/3 reduce during every micro-step: before starting one, check that every
      // rank is at the same place (same step, same number of micro-steps, same stage-3
      // gather order so far). A rank that runs an extra micro-step meets a rank already
      // in step() here, and both fail, before any collective of that micro-step exists.
      // (Checking at end_micro_step instead could deadlock against a rank still waiting
      // for a bucket buffer, and stage 0/1 need only the check in step().)
      if constexpr (Bucketer::shards_grads) agree_on_state(call_site::begin_micro_step);
      in_micro_ = true;
      if constexpr (requires(coordinator_impl& c) { c.step_begins(); })
        if (micro_steps_ == 0) coord_->step_begins();
      std::fill(reported_.begin(), reported_.end(), 0);
      bucketer_->begin_micro_step();
    });
  }
  /// @brief Hand over the (loss-scaled) gradient of parameter `p` for this micro-step.
  void grad_ready(param_id p, std::span<const T> grad) {
    guarded([&] { grad_ready_unguarded(p, grad); });
  }
  void end_micro_step() {
    guarded([&] {
      if (!in_micro_) ZB_LOCAL_FAIL(ctx_, "end_micro_step: no micro-step is open");
      bucketer_->end_micro_step();
      in_micro_ = false;
      ++micro_steps_;
    });
  }

  // ---- the step ------------------------------------------------------------------

  /// @brief Reduce, check, clip and apply AdamW; then make parameters current.
  step_result step() {
    return guarded([&] { return step_unguarded(); });
  }

private:
  void grad_ready_unguarded(param_id p, std::span<const T> grad) {
    check_param(p, "grad_ready");
    if (!in_micro_) ZB_LOCAL_FAIL(ctx_, "grad_ready: ", describe(p), " reported outside a micro-step");
    const auto& pp = layout_.param(p.index);
    if (grad.size() != pp.numel)
      ZB_LOCAL_FAIL(ctx_, "grad_ready: gradient of ", describe(p), " has ", grad.size(), " elements, expected ",
                    pp.numel);
    if (reported_[p.index])
      ZB_LOCAL_FAIL(ctx_, "grad_ready: gradient of ", describe(p), " reported twice in micro-step ",
                    micro_steps_ + 1, " of step ", steps_ + 1);
    reported_[p.index] = 1;
    bucketer_->grad_ready(p.index, grad.data());
  }

  step_result step_unguarded() {
    if (in_micro_) ZB_LOCAL_FAIL(ctx_, "step: a micro-step is still open (call end_micro_step first)");
    if (micro_steps_ == 0) ZB_LOCAL_FAIL(ctx_, "step: no micro-step since the last step");
    agree_on_state(call_site::step);
    // Stage 3: the acquire/release order is now known to be the same everywhere.
    if constexpr (requires(coordinator_impl& c, std::span<const std::uint32_t> e) { c.trace_agreed(e); })
      coord_->trace_agreed(events_);
    // A retried step (after a rolled-back transaction) has its gradients reduced already.
    if (!grads_reduced_) bucketer_->reduce_for_step();
    grads_reduced_ = true;

    // Pass 1: sum of squares + non-finite, per rank-slice group, summed in rank order
    // so every stage computes the same norm bit for bit.
    const int n = comm_.size();
    std::vector<double> partial(n, 0.0);
    bool nonfinite = false;
    for (const auto& s : owned_) {
      auto st = ops::grad_sumsq(bucketer_->grad_slice(s.unit, s.rank), s.numel, cfg_.threads);
      partial[s.rank] += st.sumsq;
      nonfinite = nonfinite || st.nonfinite;
    }
    double sumsq = 0.0;
    if constexpr (sharded_master) {
      auto all = control_comm_.all_gather_values({partial[comm_.rank()], nonfinite ? 1.0 : 0.0});
      nonfinite = false;
      for (int r = 0; r < n; ++r) {
        sumsq += all[2 * r];
        nonfinite = nonfinite || all[2 * r + 1] != 0.0;
      }
    } else {
      for (int r = 0; r < n; ++r) sumsq += partial[r];
    }
    nonfinite = nonfinite || !std::isfinite(sumsq);

    step_result res;
    res.loss_scale = scaler_.scale();
    const float grad_scale = 1.0f / (res.loss_scale * static_cast<float>(micro_steps_));
    if (nonfinite) {
      scaler_.update(true);
      ++stats_.skipped;
      finish_step();
      res.step = steps_;
      res.grad_norm = INFINITY;
      return res;
    }
    res.grad_norm = std::sqrt(sumsq) * grad_scale;
    if (cfg_.max_grad_norm > 0.0f && res.grad_norm > cfg_.max_grad_norm)
      res.clip_factor = static_cast<float>(cfg_.max_grad_norm / (res.grad_norm + 1e-6));

    // Pass 2: the fused upcast · unscale · clip · AdamW · downcast.
    ++steps_;
    const auto args = Optim::args(cfg_.optim, steps_, grad_scale * res.clip_factor);
    std::vector<step_slice<T>> slices;
    slices.reserve(owned_.size());
    for (const auto& s : owned_)
      slices.push_back({bucketer_->grad_slice(s.unit, s.rank), coord_->owned_slice(s.unit, s.rank), s.numel,
                        s.master_offset});
    if constexpr (requires(master_impl& m) { m.commit(); }) {
      // A transaction (master::swapped): commit only if every rank's state landed.
      std::string problem;
      try {
        master_->apply(slices, args);
      } catch (const error& e) {
        problem = e.reason();
      } catch (const std::exception& e) {
        problem = e.what();
      }
      try {
        control_comm_.agree(problem.empty(), problem);
      } catch (const error& e) {
        if (control_comm_.failed()) throw;  // the agreement itself broke: not recoverable
        master_->rollback();
        --steps_;
        throw collective_error(detail::concat("step ", steps_ + 1, " was not applied on any rank (parameters and "
                                              "optimizer state are still those after step ", steps_,
                                              "; step() can be retried): ", e.reason()),
                               detail::location_string(std::source_location::current()));
      }
      master_->commit();
    } else {
      master_->apply(slices, args);
    }
    coord_->publish(sharded_master);
    scaler_.update(false);
    finish_step();
    res.applied = true;
    res.step = steps_;
    return res;
  }

public:
  float loss_scale() const { return scaler_.scale(); }
  /// @brief New learning rate for the following steps (every rank must set the same;
  /// the step checks it).
  void set_learning_rate(float lr) {
    guarded([&] {
      if (!(lr >= 0.0f && std::isfinite(lr)))
        ZB_LOCAL_FAIL(ctx_, "set_learning_rate: ", lr, " must be finite and >= 0");
      cfg_.optim.lr = lr;
    });
  }
  long steps() const { return steps_; }

  // ---- inspection ----------------------------------------------------------------

  /// @brief Bytes held now and at peak, per category.
  const memory_report& memory() const { return tracker_.report(); }
  /// @brief Elements communicated so far, per collective kind.
  comm_counters counters() const {
    return comm_.counters() + gather_comm_.counters() + control_comm_.counters();
  }

  struct usage_stats {
    std::uint64_t acquires = 0;
    std::uint64_t skipped = 0;
  };
  const usage_stats& stats() const { return stats_; }
  /// @brief The coordinator's counters (gathers, prefetch hits, invalidations, live
  /// elements, ...); zero for coordinators that keep none (stages 0–2).
  zeroblocks::coordinator_stats coordination_stats() const {
    if constexpr (requires(const coordinator_impl& c) { c.stats(); }) return coord_->stats();
    else return {};
  }
  /// @brief The coordinator policy's state, for inspection.
  const coordinator_impl& coordinator() const { return *coord_; }
  /// @brief The master-state policy's state (e.g. `master::swapped`'s I/O counters).
  const master_impl& master_state() const { return *master_; }

  /// @brief What this configuration holds at rest, per category, from the policies'
  /// declarations (compare with `memory()` and with `zero_formula_bytes`).
  static memory_report estimate(const layout& lay, const engine_config& cfg) {
    memory_report r;
    using Ctx = context;
    const int w = lay.world();
    Coordinator::template impl<Ctx>::declare(lay, cfg, w, r, sizeof(T));
    Bucketer::template impl<Ctx>::declare(lay, cfg, w, r, sizeof(T));
    if constexpr (params_on_tier_v<Coordinator>)
      Master::template impl<Ctx>::declare(lay.shard_numel(), cfg, r, true);
    else
      Master::template impl<Ctx>::declare(sharded_master ? lay.shard_numel() : lay.total_numel(), cfg, r);
    return r;
  }
  /// @brief The ZeRO formula for this engine's stage and layout.
  std::size_t formula_bytes() const {
    return zero_formula_bytes(stage, layout_.total_numel(), comm_.size(), sizeof(T));
  }

  /// @brief The full fp32 master weights in layout order. Collective; counts as traffic.
  std::vector<float> gather_master() {
    auto owned = std::make_unique<std::vector<float>>(layout_.total_numel());
    auto& out = *owned;
    leak_on_failure guard(owned);
    for (const auto& s : owned_) {
      const auto& up = layout_.unit(s.unit);
      master_->read_master(s.master_offset, out.data() + up.offset + s.rank * up.slice_numel, s.numel);
    }
    if constexpr (sharded_master) {
      if constexpr (Space::host_accessible) {
        for (std::size_t u = 0; u < layout_.unit_count(); ++u) {
          const auto& up = layout_.unit(u);
          comm_.all_gather(out.data() + up.offset + comm_.rank() * up.slice_numel, out.data() + up.offset,
                           up.slice_numel);
        }
      } else {
        // The communicator moves memory of the engine's space (comm::nccl: device
        // memory): gather there, then copy the result to the host.
        buffer<float, Space> dev(layout_.total_numel(), mem_category::other, nullptr);
        ops::from_host(dev.data(), out.data(), out.size() * sizeof(float));
        for (std::size_t u = 0; u < layout_.unit_count(); ++u) {
          const auto& up = layout_.unit(u);
          comm_.all_gather(dev.data() + up.offset + comm_.rank() * up.slice_numel, dev.data() + up.offset,
                           up.slice_numel);
        }
        ops::to_host(out.data(), dev.data(), out.size() * sizeof(float));
      }
    }
    return std::move(out);
  }
  /// @brief The full parameters (type T) in layout order. Collective for stage 3.
  std::vector<T> gather_params() {
    std::vector<T> out(layout_.total_numel());
    for (std::size_t u = 0; u < layout_.unit_count(); ++u) {
      auto g = acquire({u});
      if (layout_.unit(u).padded_numel)
        ops::to_host(out.data() + layout_.unit(u).offset, bases_[u], layout_.unit(u).padded_numel * sizeof(T));
    }
    return out;
  }
  /// @brief One parameter out of a `gather_*` result.
  template <class V>
  std::vector<V> extract(const std::vector<V>& flat, param_id p) const {
    ZB_REQUIRE(p.index < layout_.param_count() && flat.size() == layout_.total_numel(),
               "extract: parameter index out of range, or not a gather_* result");
    const auto& pp = layout_.param(p.index);
    return {flat.begin() + pp.offset, flat.begin() + pp.offset + pp.numel};
  }

  std::string describe(param_id p) const {
    return p.index < reg_lines_.size() ? reg_lines_[p.index] : detail::concat("<parameter #", p.index, ">");
  }

private:
  /// Leaks a collective's output buffer if the collective fails: a peer's transfer may
  /// still arrive in it.
  template <class V>
  struct leak_on_failure {
    explicit leak_on_failure(std::unique_ptr<V>& o) : owned(o) {}
    std::unique_ptr<V>& owned;
    int exceptions = std::uncaught_exceptions();
    ~leak_on_failure() {
      if (std::uncaught_exceptions() > exceptions) (void)owned.release();
    }
  };

  struct owned_slice_ref {
    std::size_t unit;
    int rank;
    std::size_t master_offset;
    std::size_t numel;
  };

  /// Run a public operation; if it throws, make sure the peers learn of it (a failure
  /// that came from a peer is not echoed back).
  template <class F>
  decltype(auto) guarded(F&& f) {
    try {
      return f();
    } catch (const collective_error&) {
      throw;  // every rank raised it together and the engine is consistent: nothing to tell
    } catch (const std::exception& e) {
      tell_peers(e.what());
      throw;
    }
  }
  void tell_peers(const std::string& message) {
    if (comm_.peer_failed() || gather_comm_.peer_failed() || control_comm_.peer_failed()) return;
    comm_.abort_peers(message);
    gather_comm_.abort_peers(message);
    control_comm_.abort_peers(message);
  }

  enum class call_site { begin_micro_step = 1, step = 2, acquire = 3 };

  static std::string call_text(double call, double unit, const layout& lay) {
    if (call == 1.0) return "begin_micro_step()";
    if (call == 2.0) return "step()";
    return detail::concat("acquire('", lay.unit_name(static_cast<std::size_t>(unit)), "')");
  }
  std::string event_text(std::uint32_t e) const {
    return detail::concat(e & release_bit ? "release '" : "acquire '", layout_.unit_name(e & ~release_bit), "'");
  }

  /// Every rank must be at the same call, step and micro-step, with the same stage-3
  /// acquire/release order, learning rate and loss scale, acquiring the same unit (at
  /// `acquire`), and hold no unit at step(). One small all-gather on the control
  /// communicator; a difference throws the same message on every rank. A different
  /// order is named by its first differing event (the whole orders are exchanged then).
  void agree_on_state(call_site where, std::size_t unit = 0) {
    std::size_t held = 0;
    for (int h : holds_) held += h > 0;
    enum field { f_call, f_step, f_micro, f_events, f_hash_hi, f_hash_lo, f_lr, f_scale, f_unit, f_held, k };
    const char* names[] = {"call", "step", "completed micro-steps", "", "", "", "learning rate", "loss scale"};
    std::vector<double> mine(k);
    mine[f_call] = static_cast<double>(where);
    mine[f_step] = static_cast<double>(steps_);
    mine[f_micro] = static_cast<double>(micro_steps_);
    mine[f_events] = static_cast<double>(events_.size());
    mine[f_hash_hi] = static_cast<double>(events_hash_ >> 32);
    mine[f_hash_lo] = static_cast<double>(events_hash_ & 0xffffffffu);
    mine[f_lr] = static_cast<double>(cfg_.optim.lr);
    mine[f_scale] = static_cast<double>(scaler_.scale());
    mine[f_unit] = static_cast<double>(unit);
    mine[f_held] = static_cast<double>(held);
    auto all = control_comm_.all_gather_values(mine);
    auto at = [&](int r, int f) { return all[static_cast<std::size_t>(r) * k + f]; };
    for (int r = 1; r < comm_.size(); ++r)
      for (int i = f_call; i <= f_scale; ++i) {
        if (at(r, i) == at(0, i)) continue;
        if (i == f_call)
          ZB_FAIL("ranks out of step: rank 0 is in ", call_text(at(0, f_call), at(0, f_unit), layout_), " after ",
                  at(0, f_micro), " micro-step(s) and ", at(0, f_events), " stage-3 acquire/release(s) but rank ", r,
                  " is in ", call_text(at(r, f_call), at(r, f_unit), layout_), " after ", at(r, f_micro), " and ",
                  at(r, f_events), " (every rank must run the same micro-steps and acquire the same units)");
        if (i >= f_events && i <= f_hash_lo) fail_on_order();
        ZB_FAIL("ranks disagree on the ", names[i], ": ", at(0, i), " on rank 0, ", at(r, i), " on rank ", r);
      }
    if (where == call_site::acquire)
      for (int r = 1; r < comm_.size(); ++r)
        if (at(r, f_unit) != at(0, f_unit))
          ZB_FAIL("stage 3: ranks acquire different units at event #", events_.size() + 1, " of step ", steps_ + 1,
                  ": '", layout_.unit_name(static_cast<std::size_t>(at(0, f_unit))), "' on rank 0 but '",
                  layout_.unit_name(static_cast<std::size_t>(at(r, f_unit))), "' on rank ", r,
                  " (every rank must acquire units in the same order)");
    if (where == call_site::step)
      for (int r = 0; r < comm_.size(); ++r)
        if (at(r, f_held) > 0)
          ZB_FAIL("step: rank ", r, " still holds ", at(r, f_held),
                  " acquired unit(s); release every unit before step() (stage 3 would keep stale parameters)");
  }

  /// The stage-3 orders differ (hash or length): exchange them and name the first
  /// difference. Collective; every rank throws the same message.
  [[noreturn]] void fail_on_order() {
    std::string mine;
    for (auto e : events_) {
      mine += std::to_string(e);
      mine += ',';
    }
    auto lists = control_comm_.all_gather_strings(mine);
    auto parse = [](const std::string& text) {
      std::vector<std::uint32_t> v;
      for (std::size_t a = 0, b; (b = text.find(',', a)) != std::string::npos; a = b + 1)
        v.push_back(static_cast<std::uint32_t>(std::stoul(text.substr(a, b - a))));
      return v;
    };
    const auto ref = parse(lists[0]);
    for (int r = 1; r < comm_.size(); ++r) {
      const auto other = parse(lists[r]);
      for (std::size_t i = 0; i < std::max(ref.size(), other.size()); ++i) {
        const bool a_ok = i < ref.size(), b_ok = i < other.size();
        if (a_ok && b_ok && ref[i] == other[i]) continue;
        ZB_FAIL("stage 3: ranks acquire and release units in different orders: event #", i + 1, " of step ",
                steps_ + 1, " is ", a_ok ? event_text(ref[i]) : std::string("<none>"), " on rank 0 but ",
                b_ok ? event_text(other[i]) : std::string("<none>"), " on rank ", r,
                " (every rank must acquire and release units in the same order)");
      }
    }
    ZB_FAIL("stage 3: ranks acquire and release units in different orders (hash mismatch)");
  }

  void log_event(std::uint32_t e) {
    events_.push_back(e);
    events_hash_ = (events_hash_ ^ (static_cast<std::uint64_t>(e) + 1)) * 1099511628211ull;
  }

  /// The bucketer reports each reduced block and the master takes it (see the constructor).
  static constexpr bool streams_shard_v =
      requires(bucketer_impl& b, master_impl& m, const T* p, std::size_t n) {
        b.on_shard_updated([](std::size_t, const T*, std::size_t) {}, [] {});
        m.shard_updated(n, p, n);
        m.shard_will_change();
      };

  std::size_t owned_numel() const { return sharded_master ? layout_.shard_numel() : layout_.total_numel(); }

  void finish_step() {
    grads_reduced_ = false;
    bucketer_->zero();
    micro_steps_ = 0;
    events_.clear();
    events_hash_ = events_hash_seed;
    // Stage 3: the next step's first gathers may start now (prefetch_across_steps).
    if constexpr (requires(coordinator_impl& c) { c.step_ended(); }) coord_->step_ended();
  }

  void check_param(param_id p, const char* what) {
    if (p.index >= layout_.param_count())
      ZB_LOCAL_FAIL(ctx_, what, ": parameter index ", p.index, " out of range (", layout_.param_count(),
                    " registered)");
  }
  void check_unit(unit_id u, const char* what) {
    if (u.index >= layout_.unit_count())
      ZB_LOCAL_FAIL(ctx_, what, ": unit index ", u.index, " out of range (", layout_.unit_count(), " units)");
  }

  /// Validate config and registry on every rank, collectively; then build the layout.
  layout checked_layout(const param_registry& reg) {
    // 1. Config valid here?
    std::string problem;
    try {
      Optim::validate(cfg_.optim);
      Scaler::validate(cfg_.scale);
      ZB_REQUIRE(cfg_.bucket_numel >= 1, "engine_config: bucket_numel must be >= 1");
      ZB_REQUIRE(cfg_.bucket_count >= 1, "engine_config: bucket_count must be >= 1 (got ", cfg_.bucket_count, ")");
      ZB_REQUIRE(cfg_.align_numel >= 1 && (cfg_.align_numel & (cfg_.align_numel - 1)) == 0,
                 "engine_config: align_numel ", cfg_.align_numel, " must be a power of two");
      ZB_REQUIRE(cfg_.max_grad_norm >= 0.0f && std::isfinite(cfg_.max_grad_norm),
                 "engine_config: max_grad_norm must be finite and >= 0 (0 = off)");
      ZB_REQUIRE(cfg_.threads >= 0, "engine_config: threads must be >= 0 (0 = all)");
      ZB_REQUIRE(reg.size() > 0, "engine: no parameters registered");
    } catch (const error& e) {
      problem = e.reason();
    }
    comm_.agree(problem.empty(), problem);

    // 2. Same config on every rank?
    const std::vector<std::pair<const char*, double>> fields = {
        {"optim.lr", cfg_.optim.lr},
        {"optim.beta1", cfg_.optim.beta1},
        {"optim.beta2", cfg_.optim.beta2},
        {"optim.eps", cfg_.optim.eps},
        {"optim.weight_decay", cfg_.optim.weight_decay},
        {"optim.decoupled", cfg_.optim.decoupled ? 1.0 : 0.0},
        {"scale.fixed_scale", cfg_.scale.fixed_scale},
        {"scale.initial_scale", cfg_.scale.initial_scale},
        {"scale.growth_interval", static_cast<double>(cfg_.scale.growth_interval)},
        {"scale.hysteresis", static_cast<double>(cfg_.scale.hysteresis)},
        {"scale.min_scale", cfg_.scale.min_scale},
        {"max_grad_norm", cfg_.max_grad_norm},
        {"bucket_numel", static_cast<double>(cfg_.bucket_numel)},
        {"bucket_count", static_cast<double>(cfg_.bucket_count)},
        {"align_numel", static_cast<double>(cfg_.align_numel)},
    };
    std::vector<double> mine;
    for (auto& f : fields) mine.push_back(f.second);
    auto all = comm_.all_gather_values(mine);
    for (int r = 1; r < comm_.size(); ++r)
      for (std::size_t i = 0; i < fields.size(); ++i)
        if (std::bit_cast<std::uint64_t>(all[r * fields.size() + i]) != std::bit_cast<std::uint64_t>(all[i]))
          ZB_FAIL("engine: configuration differs across ranks: ", fields[i].first, " is ", all[i], " on rank 0 but ",
                  all[r * fields.size() + i], " on rank ", r);

    // 3. Same parameters on every rank? Hash first; on mismatch name the difference.
    reg_lines_.clear();
    std::uint64_t h = 1469598103934665603ull;
    for (std::size_t i = 0; i < reg.size(); ++i) {
      reg_lines_.push_back(reg.describe(i));
      for (char c : reg_lines_.back()) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
      h = (h ^ 0xff) * 1099511628211ull;
    }
    auto hashes = comm_.all_gather_values(
        {static_cast<double>(h >> 32), static_cast<double>(h & 0xffffffffu), static_cast<double>(reg.size())});
    bool same = true;
    for (int r = 1; r < comm_.size(); ++r)
      for (int k = 0; k < 3; ++k) same = same && hashes[3 * r + k] == hashes[k];
    if (!same) {
      std::string joined;
      for (auto& l : reg_lines_) joined += l + "\n";
      auto lists = comm_.all_gather_strings(joined);
      auto split = [](const std::string& s) {
        std::vector<std::string> v;
        std::size_t a = 0;
        for (std::size_t b; (b = s.find('\n', a)) != std::string::npos; a = b + 1) v.push_back(s.substr(a, b - a));
        return v;
      };
      auto ref = split(lists[0]);
      for (int r = 1; r < comm_.size(); ++r) {
        auto other = split(lists[r]);
        for (std::size_t i = 0; i < std::max(ref.size(), other.size()); ++i) {
          const std::string a = i < ref.size() ? ref[i] : "<nothing>", b = i < other.size() ? other[i] : "<nothing>";
          if (a != b)
            ZB_FAIL("engine: parameter registration differs across ranks: parameter #", i, " is ", a,
                    " on rank 0 but ", b, " on rank ", r);
        }
      }
      ZB_FAIL("engine: parameter registration differs across ranks (hash mismatch)");
    }
    return Partitioner::make_layout(reg, comm_.size(), cfg_.align_numel);
  }

  Comm comm_;           // gradient reductions, construction checks
  Comm gather_comm_;    // parameter gathers (coordinator): an order of its own
  Comm control_comm_;   // per-step agreement and the gradient norm
  engine_config cfg_;
  std::vector<std::string> reg_lines_;
  layout layout_;
  memory_tracker tracker_;
  context ctx_;
  std::optional<typename Coordinator::template impl<context>> coord_;
  std::optional<bucketer_impl> bucketer_;
  std::optional<typename Master::template impl<context>> master_;
  Scaler scaler_;
  std::vector<int> holds_;
  std::vector<const T*> bases_;
  std::vector<char> reported_;
  std::vector<owned_slice_ref> owned_;
  bool in_micro_ = false;
  bool grads_reduced_ = false;  // this step's gradients are reduced (a retry must not reduce again)
  int micro_steps_ = 0;
  long steps_ = 0;
  usage_stats stats_;
  static constexpr std::uint64_t events_hash_seed = 1469598103934665603ull;
  std::vector<std::uint32_t> events_;             // stage 3: acquires/releases this step
  std::uint64_t events_hash_ = events_hash_seed;  // ... and their hash
  int exceptions_at_birth_ = std::uncaught_exceptions();
};

ZB_NAMESPACE_END
