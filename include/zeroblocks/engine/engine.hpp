#pragma once

#include "../bucket/all_reduce.hpp"
#include "../bucket/bucket.hpp"
#include "../bucket/reduce_at_boundary.hpp"
#include "../bucket/reduce_scatter.hpp"
#include "../comm/comm.hpp"
#include "../comm/detail/watchdog.hpp"
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
#include "../optim/lion.hpp"
#include "../optim/sgd.hpp"
#include "../policy/context.hpp"
#include "../partition/even.hpp"
#include "../scale/scale.hpp"
#include "../space/host_space.hpp"
#include "../space/ops.hpp"
#include "../space/span.hpp"
#include "agreement.hpp"
#include "checks.hpp"
#include "config.hpp"
#include "timers.hpp"
#include "unit_guard.hpp"

#include <bit>
#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
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
/// Stage 0 (p+g+K)Ψ, 1 (p+g)Ψ + KΨ/N, 2 pΨ + (g+K)Ψ/N, 3 (p+g+K)Ψ/N with p = g =
/// bytes of T and K the optimizer's fp32 bytes per element (`optimizer_state_bytes`:
/// Adam 12, Lion and SGD with momentum 8, plain SGD 4). For 16-bit T and Adam: the
/// paper's 16Ψ, 4Ψ+12Ψ/N, 2Ψ+14Ψ/N, 16Ψ/N. With fp32 gradient accumulation
/// (`accum32`): 20Ψ, 4Ψ+16Ψ/N, 2Ψ+16Ψ/N, 18Ψ/N.
inline std::size_t zero_formula_bytes(int stage, std::size_t psi, int world, std::size_t elem_bytes,
                                      std::size_t state_bytes = 12, bool accum32 = false) {
  const std::size_t n = static_cast<std::size_t>(world), k = state_bytes, p = elem_bytes, g = elem_bytes;
  // fp32 accumulation (grad_accum_dtype::fp32): stages 0/1 keep the micro-step's local
  // T gradient and an fp32 sum (full at stage 0, sharded at stage 1); stages 2/3 keep
  // their gradient shard in fp32 instead of T.
  const std::size_t a = accum32 ? 4 : 0;
  switch (stage) {
    case 0: return (p + g + a + k) * psi;
    case 1: return (p + g) * psi + (a + k) * psi / n;
    case 2: return p * psi + ((accum32 ? a : g) + k) * psi / n;
    case 3: return (p + (accum32 ? a : g) + k) * psi / n;
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
  static_assert(!Coordinator::caps.params_on_tier || Master::caps.keeps_param_tier,
                "zeroblocks::engine: the Coordinator reads the 16-bit parameters from the master tier (NVMe), so "
                "the Master must keep them there: use master::swapped (zeroblocks/master/swapped.hpp)");
  static_assert(!Coordinator::shards_params || Bucketer::shards_grads,
                "zeroblocks::engine: the Coordinator shards parameters (stage 3), so the Bucketer must "
                "shard gradients too: use bucket::reduce_scatter (zeroblocks/bucket/reduce_scatter.hpp)");

public:
  using param_type = T;
  using space = Space;
  using comm_type = Comm;
  using optimizer_type = Optim;
  using context = policy_context<T, Space, Comm, Optim>;
  /// @brief Every runtime knob, one member per role (`engine/config.hpp`).
  using config = engine_config<Partitioner, Coordinator, Bucketer, Master, Scaler, Optim>;
  /// @brief What `acquire` returns (`engine/unit_guard.hpp`).
  using unit_guard = zeroblocks::unit_guard<engine>;
  /// @brief A parameter's full view in the engine's memory space.
  using param_view = space_span<const T, Space>;
  using coordinator_impl = typename Coordinator::template impl<context>;
  using master_impl = typename Master::template impl<context>;
  using bucketer_impl = typename Bucketer::template impl<context>;

private:
  // Each role offers every operation the engine calls, and those of the capabilities
  // it declares (a message names the role and the operation otherwise).
  static_assert(coordinator_complete<Coordinator, context>());
  static_assert(bucketer_complete<Bucketer, context>());
  static_assert(master_complete<Master, context>());
  /// The bucketer reports each reduced block and the master takes it (see the constructor).
  static constexpr bool streams_shard = Bucketer::caps.streams_shard && Master::caps.takes_shard_stream;
  static constexpr bool params_on_tier = Coordinator::caps.params_on_tier;

public:
  /// @brief What orders work on `Space` memory: `cudaStream_t` for `cuda_space`, the
  /// empty `no_stream` for host spaces.
  using stream_type = typename Space::stream_type;
  /// @brief A communicator on a space with streams runs its collectives after the work
  /// on the compute stream (`comm::nccl`, `comm::cuda_self`): it takes that stream.
  static constexpr bool has_streams = !std::is_same_v<stream_type, no_stream>;
  static_assert(!has_streams || requires(Comm& c, stream_type s) { c.set_compute_stream(s); },
                "zeroblocks::engine: the communicator of an engine on a space with streams must offer "
                "set_compute_stream(stream) (comm::nccl and comm::cuda_self do)");

  /// @brief Optimizer state is sharded (stages 1–3) or replicated (stage 0).
  static constexpr bool sharded_master = Bucketer::shards_master;
  /// @brief The ZeRO stage these policies make.
  static constexpr int stage = Coordinator::shards_params ? 3
                               : Bucketer::shards_grads   ? 2
                               : Bucketer::shards_master  ? 1
                                                          : 0;

  /// @brief fp32 gradient accumulation (`grad_accum_dtype::fp32`) is available: host
  /// memory, a communicator that reduces into fp32 (`ireduce_scatter_accumulate`), and no
  /// master that streams the T gradient shard away during backward (`master::offloaded`).
  static constexpr bool fp32_accum_available =
      Space::host_accessible && !streams_shard &&
      requires(Comm& c, T* b, float* a) { c.ireduce_scatter_accumulate(b, a, std::size_t{}, 1.0f); };
  /// @brief Whether `cfg` makes this engine accumulate gradients in fp32 (see
  /// `grad_accum_dtype`; with float parameters the two choices are the same: false).
  static bool accumulates_fp32(const config& cfg) {
    if constexpr (std::is_same_v<T, float> || !fp32_accum_available) return false;
    else
      return cfg.step.grad_accum == grad_accum_dtype::fp32 ||
             (cfg.step.grad_accum == grad_accum_dtype::automatic && std::is_same_v<T, bfloat16>);
  }

  /// @brief Build the layout, check configuration and registration across ranks,
  /// allocate every buffer. Collective. `stream` is the compute stream (see
  /// `set_compute_stream`); construction's own copies already run on it.
  engine(const param_registry& reg, Comm comm, config cfg = {}, stream_type stream = {})
      : comm_(std::move(comm)),
        gather_comm_(comm_.dup()),
        control_comm_(comm_.dup()),
        cfg_(std::move(cfg)),
        layout_(checked_layout(reg)),
        stream_(stream),
        ctx_{layout_, comm_, gather_comm_, control_comm_, tracker_, stream_, cfg_.step.threads},
        scaler_(cfg_.scale),
        holds_(layout_.unit_count(), 0),
        bases_(layout_.unit_count(), nullptr),
        reported_(layout_.param_count(), 0),
        init_(reg) {
    follow_compute_stream();
    watch_calls();
    ctx_.accum32 = accumulates_fp32(cfg_);
    // Allocation can fail on one rank only (memory): agree before anyone goes on.
    std::string problem;
    try {
      coord_.emplace(ctx_, cfg_.coordinate);
      bucketer_.emplace(ctx_, cfg_.bucket);
      master_.emplace(ctx_, cfg_.master, master_shape{owned_numel(), params_on_tier});
      tied_.resize(layout_.param_count());
      for (std::size_t i = 0; i < layout_.param_count(); ++i)
        if (layout_.param(i).uses > 1 && layout_.param(i).numel > 0)
          tied_[i] = buffer<T, Space>(layout_.param(i).numel, mem_category::buckets, &tracker_);
      if constexpr (params_on_tier) coord_->attach_param_tier(master_->param_tier());
    } catch (const std::exception& e) {
      problem = std::string("engine: allocating the model state failed: ") + e.what();
    }
    comm_.agree(problem.empty(), problem);
    // A master that moves gradients elsewhere (master::offloaded: to the host) starts
    // as each bucket's reduced block lands in the shard, during backward.
    if constexpr (streams_shard) {
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
        // The fused pass takes the slice in runs of one parameter group, each with its
        // group's constants (no extra pass over memory: the runs tile the slice).
        const std::size_t s0 = static_cast<std::size_t>(r) * up.slice_numel;
        layout_.group_runs(u, s0, s0 + up.slice_numel, [&](std::size_t a, std::size_t b, std::size_t g) {
          pieces_.push_back({u, r, moff + (a - s0), a - s0, b - a, g});
        });
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
    if (activity_) activity_->clear();  // the watchdog may outlive this engine
  }

  // ---- model --------------------------------------------------------------------

  const layout& model_layout() const { return layout_; }
  Comm& communicator() { return comm_; }
  /// @brief The configuration in effect (the learning rate as last set).
  const config& get_config() const { return cfg_; }
  int rank() const { return comm_.rank(); }
  int world() const { return comm_.size(); }

  /// @brief Set a parameter's value (fp32). Every rank passes the same values: that is
  /// checked, by a hash, at the next agreement (the first `begin_micro_step` of stages
  /// 2/3, an unverified stage-3 `acquire`, or `step()` — before anything uses them), and
  /// different values (or a parameter set on some ranks only) are an error on every rank
  /// naming the parameter, the first block of elements that differs and the ranks.
  /// No collective of its own. To initialise on one rank only, see `set_param_from`.
  void set_param(param_id p, std::span<const float> values) {
    check_param(p, "set_param");
    const auto& pp = layout_.param(p.index);
    if (values.size() != pp.numel)
      ZB_LOCAL_FAIL(ctx_, "set_param: parameter ", describe(p), " has ", pp.numel, " elements, got ",
                    values.size());
    store_param(p, values);
    init_.record(p.index, values);
  }

  /// @brief Set a parameter's value from rank `root` only: `root` passes the values, the
  /// other ranks pass nothing (an empty span), so a trainer need not build the model on
  /// every rank. Collective: every rank calls it for the same parameter with the same
  /// root (checked first; a mismatch is an error on every rank, never a hang). The
  /// values go out as one fp32 broadcast of the parameter on the gradient communicator
  /// (counted with `counters()`); each rank keeps what it holds at its stage — with
  /// stage 3 only its own slices (one parameter's values are held while it is applied).
  void set_param_from(int root, param_id p, std::span<const float> values) {
    guarded("set_param_from", [&] {
      check_param(p, "set_param_from");
      const auto& pp = layout_.param(p.index);
      const bool is_root = comm_.rank() == root;
      const bool size_ok = is_root ? values.size() == pp.numel : values.empty();
      const auto all = control_comm_.all_gather_values(
          {static_cast<double>(root), static_cast<double>(p.index), size_ok ? 1.0 : 0.0});
      for (int r = 0; r < comm_.size(); ++r) {
        const double* a = &all[3 * static_cast<std::size_t>(r)];
        if (a[0] != all[0] || a[1] != all[1])
          ZB_FAIL("set_param_from: rank 0 sets parameter #", all[1], " from rank ", all[0], " but rank ", r,
                  " sets parameter #", a[1], " from rank ", a[0], " (every rank calls it alike)");
      }
      ZB_REQUIRE(root >= 0 && root < comm_.size(), "set_param_from: root ", root, " out of range (", comm_.size(),
                 " ranks)");
      for (int r = 0; r < comm_.size(); ++r)
        if (all[3 * static_cast<std::size_t>(r) + 2] == 0.0)
          ZB_FAIL("set_param_from: parameter ", describe(p), " has ", pp.numel, " elements; rank ", r,
                  r == root ? " (the root) passed another number of values"
                            : " is not the root and must pass no values");
      std::vector<float> host(pp.numel);
      if (is_root) std::copy(values.begin(), values.end(), host.begin());
      if (pp.numel) {
        buffer<float, Space> moved(pp.numel, mem_category::other, &tracker_);
        if (is_root) ops().from_host(moved.data(), host.data(), pp.numel * sizeof(float));
        comm_.broadcast(moved.data(), pp.numel, root);
        ops().to_host(host.data(), moved.data(), pp.numel * sizeof(float));
      }
      store_param(p, host);
      init_.record(p.index, host);
    });
  }

private:
  /// Write `values` (the full parameter) into what this rank holds of it.
  void store_param(param_id p, std::span<const float> values) {
    const auto& pp = layout_.param(p.index);
    const auto& up = layout_.unit(pp.unit);
    // Stage 3: gathers in flight read the shard; copies made from it become stale.
    if constexpr (Coordinator::caps.follows_trace) coord_->params_changed();
    for (int r = 0; r < comm_.size(); ++r) {
      // The part of the parameter that falls in slice r of its unit.
      const std::size_t s0 = r * up.slice_numel, s1 = s0 + up.slice_numel;
      const std::size_t a = std::max(s0, pp.offset_in_unit), b = std::min(s1, pp.offset_in_unit + pp.numel);
      if (a >= b) continue;
      const float* src = values.data() + (a - pp.offset_in_unit);
      // (Parameters on the tier: the master's set() writes them.)
      if (!params_on_tier && (!Coordinator::shards_params || r == comm_.rank())) {
        std::vector<T> rounded(b - a);
        for (std::size_t i = 0; i < b - a; ++i) rounded[i] = from_float<T>(src[i]);
        ops().from_host(coord_->owned_slice(pp.unit, r) + (a - s0), rounded.data(), rounded.size() * sizeof(T));
      }
      if (!sharded_master || r == comm_.rank()) {
        const std::size_t moff = sharded_master ? up.shard_offset : up.offset + s0;
        master_->set(moff + (a - s0), src, b - a);
      }
    }
  }

public:

  // ---- parameters: acquire / release ---------------------------------------------

  /// @brief Make unit `u`'s full parameters available (stage 3: all-gather them).
  [[nodiscard]] unit_guard acquire(unit_id u) {
    scoped_timer tm(timing_, timers_.acquire_s);
    return guarded("acquire", u.index, [&] {
      check_unit(u, "acquire");
      if (holds_[u.index] == 0) {
        // Without a verified order to go by, check this acquire against every rank's
        // before its gather exists (see coordinate.hpp).
        // (Not for `gather_params`' own acquires: every rank makes the same ones.)
        if constexpr (Coordinator::caps.checks_acquire)
          if (!aside_ && coord_->checks_acquire(u.index)) agree_on_state(detail::call_site::acquire, u.index);
        bases_[u.index] = coord_->acquire(u.index);  // before counting: exception-safe
        if constexpr (Coordinator::shards_params)
          if (!aside_) log().log(static_cast<std::uint32_t>(u.index));
      }
      ++holds_[u.index];
      ++stats_.acquires;
      return unit_guard(this, u, bases_[u.index]);
    });
  }
  /// @brief Drop one hold on unit `u` (the guard does this for you).
  void release(unit_id u) {
    guarded("release", u.index, [&] {
      check_unit(u, "release");
      if (holds_[u.index] == 0)
        ZB_LOCAL_FAIL(ctx_, "release: unit '", layout_.unit_name(u.index),
                      "' released more times than acquired (released twice, or never acquired)");
      if (--holds_[u.index] == 0) {
        coord_->release(u.index);
        bases_[u.index] = nullptr;
        if constexpr (Coordinator::shards_params)
          if (!aside_) log().log(static_cast<std::uint32_t>(u.index) | release_bit);
      }
    });
  }
  /// @brief Unit handle of a parameter.
  unit_id unit_of(param_id p) const {
    ZB_REQUIRE(p.index < layout_.param_count(), "unit_of: parameter index ", p.index, " out of range (",
               layout_.param_count(), " registered)");
    return {layout_.param(p.index).unit};
  }

  // ---- evaluation ----------------------------------------------------------------

  /// @brief Enter evaluation mode: forward passes (acquire/release) with no gradients,
  /// between steps. With stage 3 its acquires form a trace of their own (recorded,
  /// verified across ranks at `end_eval`, then followed with prefetch, reuse and
  /// persistence, like the training trace), so evaluating every N steps neither
  /// invalidates the training trace nor prints anything; the values served are the same
  /// parameters as in training. Gathered copies not held are dropped on entry and on exit
  /// (evaluation and training do not share gathered memory). Micro-steps, gradients and
  /// `step()` are errors until `end_eval`. Stages 0–2: a flag only.
  void begin_eval() {
    guarded("begin_eval", [&] {
      if (eval_) ZB_LOCAL_FAIL(ctx_, "begin_eval: already in evaluation mode");
      if (in_micro_ || micro_steps_ > 0)
        ZB_LOCAL_FAIL(ctx_, "begin_eval: only between steps (", micro_steps_pending(),
                      " micro-step(s) of this step are pending; call step() first)");
      if (held_units() > 0)
        ZB_LOCAL_FAIL(ctx_, "begin_eval: ", held_units(), " unit(s) still held; release them first");
      eval_ = true;
      if constexpr (Coordinator::caps.follows_trace) coord_->set_eval(true);
    });
  }
  /// @brief Leave evaluation mode. Stage 3: collective (every rank's evaluation must
  /// have acquired the same units in the same order; a difference is an error naming the
  /// first differing event on every rank), and no unit may be held.
  void end_eval() {
    guarded("end_eval", [&] {
      if (!eval_) ZB_LOCAL_FAIL(ctx_, "end_eval: not in evaluation mode");
      if constexpr (Coordinator::shards_params) {
        agree_on_state(detail::call_site::end_eval);
        if constexpr (Coordinator::caps.follows_trace) coord_->trace_agreed(eval_log_.events());
        eval_log_.clear();
      } else if (held_units() > 0) {
        ZB_LOCAL_FAIL(ctx_, "end_eval: ", held_units(), " unit(s) still held; release them first");
      }
      eval_ = false;
      if constexpr (Coordinator::caps.follows_trace) coord_->set_eval(false);
    });
  }
  bool in_eval() const { return eval_; }

  /// @brief Evaluation mode for a scope: `{ auto ev = eng.eval(); ... }`. Its destructor
  /// calls `end_eval` (collective with stage 3), except while an exception unwinds the
  /// stack (the peers have been told; the engine stays in evaluation mode). Call `end()`
  /// to leave earlier and see `end_eval`'s errors.
  class eval_scope {
  public:
    eval_scope(eval_scope&& o) noexcept : eng_(std::exchange(o.eng_, nullptr)), unwinding_(o.unwinding_) {}
    eval_scope& operator=(eval_scope&&) = delete;
    ~eval_scope() {
      if (!eng_ || std::uncaught_exceptions() > unwinding_) return;
      try {
        eng_->end_eval();
      } catch (...) {
      }
    }
    void end() {
      if (engine* e = std::exchange(eng_, nullptr)) e->end_eval();
    }

  private:
    friend engine;
    explicit eval_scope(engine* e) : eng_(e), unwinding_(std::uncaught_exceptions()) {}
    engine* eng_;
    int unwinding_;
  };
  [[nodiscard]] eval_scope eval() {
    begin_eval();
    return eval_scope(this);
  }

  // ---- gradients -----------------------------------------------------------------

  void begin_micro_step() {
    ZB_REQUIRE(stopped_.empty(), "begin_micro_step: this engine stopped: ", stopped_);
    guarded("begin_micro_step", [&] {
      if (in_micro_) ZB_LOCAL_FAIL(ctx_, "begin_micro_step: the previous micro-step was not ended");
      if (eval_) ZB_LOCAL_FAIL(ctx_, "begin_micro_step: in evaluation mode (call end_eval() first)");
      if (grads_reduced_)
        ZB_LOCAL_FAIL(ctx_, "begin_micro_step: the last step() failed and was rolled back; call step() again "
                            "to retry it before starting new micro-steps");
      // Stages 2/3 reduce during every micro-step: before starting one, check that every
      // rank is at the same place (same step, same number of micro-steps, same stage-3
      // gather order so far). A rank that runs an extra micro-step meets a rank already
      // in step() here, and both fail, before any collective of that micro-step exists.
      // (Checking at end_micro_step instead could deadlock against a rank still waiting
      // for a bucket buffer, and stage 0/1 need only the check in step() — unless they
      // accumulate in fp32, when they too reduce at the end of every micro-step.)
      if (Bucketer::shards_grads || ctx_.accum32) agree_on_state(detail::call_site::begin_micro_step);
      in_micro_ = true;
      if constexpr (Coordinator::caps.follows_trace)
        if (micro_steps_ == 0) coord_->step_begins();
      std::fill(reported_.begin(), reported_.end(), 0);
      bucketer_->begin_micro_step();
    });
  }
  /// @brief Hand over the (loss-scaled) gradient of parameter `p` for this micro-step.
  /// Once per parameter per micro-step; a parameter declared with
  /// `param_registry::set_uses(p, n)` (a tied weight) `n` times, one part per use as
  /// soon as it is computed: the engine sums the parts (in the order they come, in
  /// `T`, one rounding per part, identically on every stage) and hands the sum on with
  /// the last part, so its bucket is reduced then — nothing waits for the trainer to
  /// add them. Parts missing at `end_micro_step` count as zero.
  void grad_ready(param_id p, std::span<const T> grad) {
    scoped_timer tm(timing_, timers_.grad_ready_s);
    guarded("grad_ready", [&] { grad_ready_unguarded(p, grad); });
  }
  void end_micro_step() {
    scoped_timer tm(timing_, timers_.micro_end_s);
    guarded("end_micro_step", [&] {
      if (!in_micro_) ZB_LOCAL_FAIL(ctx_, "end_micro_step: no micro-step is open");
      hand_over_partial_ties();
      bucketer_->end_micro_step();
      in_micro_ = false;
      ++micro_steps_;
      ++timers_.micro_steps;
    });
  }

  // ---- the step ------------------------------------------------------------------

  /// @brief Reduce, check, clip and apply AdamW; then make parameters current.
  step_result step() {
    scoped_timer tm(timing_, timers_.step_s);
    ZB_REQUIRE(stopped_.empty(), "step: this engine stopped: ", stopped_);
    return guarded("step", [&] { return step_unguarded(); });
  }

  // ---- learning-rate schedule and timers -------------------------------------------

  /// @brief Let the engine set the learning rate of every step: before applying the
  /// update that follows `n` applied updates (n = 0 for the first; skipped overflow
  /// steps do not count, as in DeepSpeed) it sets `cfg.optim.lr = schedule(n)`. With the
  /// types of `optim/schedule.hpp` (`lr(n)`: DeepSpeed's rate at `last_batch_iteration
  /// == n`), `[s](long n) { return s.lr(n - 1); }` follows DeepSpeed's engine update for
  /// update (it steps its scheduler after the optimizer, so its first update runs at the
  /// constructor's rate, `lr(-1)`); `s.lr(n)` is the schedule.hpp example's convention.
  /// Every rank must set the same schedule (the step's agreement compares the rates).
  /// An empty function turns it off (`set_learning_rate` rules again). Not collective.
  void set_lr_schedule(std::function<float(long)> schedule) { schedule_ = std::move(schedule); }
  bool has_lr_schedule() const { return static_cast<bool>(schedule_); }
  /// @brief Time the engine's calls (`engine/timers.hpp`); per rank, off by default.
  /// [wall_clock_breakdown]
  void enable_timers(bool on) { timing_ = on; }
  bool timers_enabled() const { return timing_; }
  /// @brief What the timers summed since the last `take_timers()`; starts over.
  step_timers take_timers() { return std::exchange(timers_, step_timers{}); }
  const step_timers& timers() const { return timers_; }

private:
  void grad_ready_unguarded(param_id p, std::span<const T> grad) {
    check_param(p, "grad_ready");
    if (!in_micro_) ZB_LOCAL_FAIL(ctx_, "grad_ready: ", describe(p), " reported outside a micro-step");
    const auto& pp = layout_.param(p.index);
    if (grad.size() != pp.numel)
      ZB_LOCAL_FAIL(ctx_, "grad_ready: gradient of ", describe(p), " has ", grad.size(), " elements, expected ",
                    pp.numel);
    if (reported_[p.index] >= pp.uses) {
      if (pp.uses == 1)
        ZB_LOCAL_FAIL(ctx_, "grad_ready: gradient of ", describe(p), " reported twice in micro-step ",
                      micro_steps_ + 1, " of step ", steps_ + 1,
                      " (a parameter used twice, e.g. a tied weight, is declared with param_registry::set_uses)");
      ZB_LOCAL_FAIL(ctx_, "grad_ready: gradient of ", describe(p), " reported ", reported_[p.index] + 1,
                    " times in micro-step ", micro_steps_ + 1, " of step ", steps_ + 1, ", more than its ", pp.uses,
                    " declared uses");
    }
    const int part = ++reported_[p.index];
    if (pp.uses == 1 || pp.numel == 0) {
      bucketer_->grad_ready(p.index, grad.data());
      return;
    }
    // A tied parameter: its parts are summed here (in the order they come, one rounding
    // per part, the same on every stage) and the sum goes to the bucketer with the last
    // part, so its bucket is reduced as soon as the last use's gradient exists.
    T* acc = tied_[p.index].data();
    if (part == 1) ops().copy(acc, grad.data(), pp.numel * sizeof(T));
    else ops().accumulate(acc, grad.data(), pp.numel, cfg_.step.threads);
    if (part == pp.uses) bucketer_->grad_ready(p.index, acc);
  }
  /// Tied parameters with some parts missing: what came counts (missing parts are zero).
  void hand_over_partial_ties() {
    for (std::size_t i = 0; i < tied_.size(); ++i)
      if (reported_[i] > 0 && reported_[i] < layout_.param(i).uses) {
        reported_[i] = layout_.param(i).uses;
        bucketer_->grad_ready(i, tied_[i].data());
      }
  }

  step_result step_unguarded() {
    if (in_micro_) ZB_LOCAL_FAIL(ctx_, "step: a micro-step is still open (call end_micro_step first)");
    if (eval_) ZB_LOCAL_FAIL(ctx_, "step: in evaluation mode (call end_eval() first)");
    if (micro_steps_ == 0) ZB_LOCAL_FAIL(ctx_, "step: no micro-step since the last step");
    if (schedule_) {  // before the agreement, which compares the rate across ranks
      const float lr = schedule_(steps_);
      if (!(lr >= 0.0f && std::isfinite(lr)))
        ZB_LOCAL_FAIL(ctx_, "step: the learning-rate schedule gave ", lr, " for update ", steps_ + 1,
                      " (must be finite and >= 0)");
      cfg_.optim.lr = lr;
    }
    agree_on_state(detail::call_site::step);
    // Stage 3: the acquire/release order is now known to be the same everywhere. (A
    // retried step's was agreed by its first attempt: the coordinator is already past it.)
    if constexpr (Coordinator::caps.follows_trace)
      if (!grads_reduced_) coord_->trace_agreed(trace_.events());
    // A retried step (after a rolled-back transaction) has its gradients reduced already.
    if (!grads_reduced_) {
      scoped_timer tm(timing_, timers_.reduce_s);
      bucketer_->reduce_for_step();
    }
    grads_reduced_ = true;
    std::optional<scoped_timer> norm_tm(std::in_place, timing_, timers_.norm_s);

    // The norm: each rank's sum of squares over its own unit slices, in `owned_` order,
    // then the ranks' sums added in rank order, so every stage computes the same norm
    // bit for bit. (Stage 0 too: every rank holds the same reduced gradient, so rank r's
    // sum is what any rank would compute for slice r; each computes 1/N of the work.)
    // The one-pass step: the bucketer took each slice's statistics where it last wrote
    // it (`slice_stats`, host spaces), so this reads no gradient memory; a slice without
    // them is computed here.
    const int n = comm_.size();
    double mine = 0.0;
    bool nonfinite = false;
    for (const auto& s : owned_) {
      if (s.rank != comm_.rank()) continue;
      const kernel::grad_stats* known = nullptr;
      if constexpr (requires { bucketer_->slice_stats(s.unit, s.rank); }) known = bucketer_->slice_stats(s.unit, s.rank);
      const auto st = known ? *known
                      : ctx_.accum32
                          ? ops().grad_sumsq(bucketer_->grad_slice32(s.unit, s.rank), s.numel, cfg_.step.threads)
                          : ops().grad_sumsq(bucketer_->grad_slice(s.unit, s.rank), s.numel, cfg_.step.threads);
      mine += st.sumsq;
      nonfinite = nonfinite || st.nonfinite;
    }
    double sumsq = 0.0;
    {
      auto all = control_comm_.all_gather_values({mine, nonfinite ? 1.0 : 0.0});
      nonfinite = false;
      for (int r = 0; r < n; ++r) {
        sumsq += all[2 * r];
        nonfinite = nonfinite || all[2 * r + 1] != 0.0;
      }
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
    norm_tm.reset();
    res.grad_norm = std::sqrt(sumsq) * grad_scale;
    if (cfg_.step.max_grad_norm > 0.0f && res.grad_norm > cfg_.step.max_grad_norm)
      res.clip_factor = static_cast<float>(cfg_.step.max_grad_norm / (res.grad_norm + 1e-6));

    // Pass 2: the fused upcast · unscale · clip · optimizer update · downcast, with each
    // parameter group's constants.
    ++steps_;
    std::vector<typename Optim::rule::args> args;
    for (std::size_t g = 0; g < layout_.group_count(); ++g)
      args.push_back(Optim::args(group_config(g), steps_, grad_scale * res.clip_factor));
    std::vector<step_slice<T>> slices;
    slices.reserve(pieces_.size());
    // (A coordinator with the parameters on the tier has no slice in memory: nullptr.)
    auto at = [](auto* p, std::size_t off) { return p ? p + off : p; };
    for (const auto& s : pieces_) {
      const bool f32 = ctx_.accum32;
      step_slice<T> next{f32 ? nullptr : at(bucketer_->grad_slice(s.unit, s.rank), s.offset),
                         f32 ? at(bucketer_->grad_slice32(s.unit, s.rank), s.offset) : nullptr,
                         at(coord_->owned_slice(s.unit, s.rank), s.offset), s.numel, s.master_offset, s.group};
      // A piece that continues the previous one in every array (same group; stage 3's
      // shards, or stage 2 on one rank) extends it: one kernel call over the run, so
      // the hardware prefetchers do not restart at each unit (bench_one_pass_step).
      if (Space::host_accessible && !slices.empty()) {
        auto& prev = slices.back();
        const bool grads_follow =
            f32 ? (prev.grad32 && next.grad32 == prev.grad32 + prev.numel) : (prev.grad && next.grad == prev.grad + prev.numel);
        if (prev.group == next.group && grads_follow && prev.param && next.param == prev.param + prev.numel &&
            next.master_offset == prev.master_offset + prev.numel) {
          prev.numel += next.numel;
          continue;
        }
      }
      slices.push_back(next);
    }
    if constexpr (Master::caps.transactional) {
      // A transaction (master::swapped): commit only if every rank's state landed.
      std::string problem;
      try {
        scoped_timer tm(timing_, timers_.fused_s);
        const double io0 = tier_io_wait();
        master_->apply(slices, args);
        if (timing_) timers_.tier_io_s += tier_io_wait() - io0;
      } catch (const error& e) {
        problem = e.reason();
      } catch (const std::exception& e) {
        problem = e.what();
      }
      try {
        control_comm_.agree(problem.empty(), problem);
      } catch (const error& e) {
        if (control_comm_.failed()) throw;  // the agreement itself broke: not recoverable
        --steps_;
        if (e.reason().find(detail::swap_stuck_words) != std::string::npos) {
          // A rank's tier stopped answering (swap.timeout_s): nothing can be rolled back
          // or retried there. Every rank saw the same agreed text and stops alike.
          stopped_ = detail::concat("step ", steps_ + 1, " was not applied on any rank and cannot be retried: ",
                                    e.reason());
          throw collective_error(stopped_, detail::location_string(::zeroblocks::detail::source_location::current()));
        }
        master_->rollback();
        throw collective_error(detail::concat("step ", steps_ + 1, " was not applied on any rank (parameters and "
                                              "optimizer state are still those after step ", steps_,
                                              "; step() can be retried): ", e.reason()),
                               detail::location_string(::zeroblocks::detail::source_location::current()));
      }
      master_->commit();
    } else {
      scoped_timer tm(timing_, timers_.fused_s);
      master_->apply(slices, args);
    }
    {
      scoped_timer tm(timing_, timers_.publish_s);
      coord_->publish(sharded_master);
    }
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
    guarded("set_learning_rate", [&] {
      if (!(lr >= 0.0f && std::isfinite(lr)))
        ZB_LOCAL_FAIL(ctx_, "set_learning_rate: ", lr, " must be finite and >= 0");
      cfg_.optim.lr = lr;
    });
  }
  long steps() const { return steps_; }

  /// @brief The compute stream: every operation the engine and its policies run on
  /// `Space` memory (copies, accumulation, the optimizer kernels, `master::offloaded`'s
  /// transfers) is ordered on it, and the communicators' collectives follow it. For a
  /// GPU engine, set it to the trainer's stream (here or at construction), so gradients
  /// handed to `grad_ready`, the step and the gathers are ordered after the trainer's
  /// kernels; the trainer reads what `acquire` gathered on that stream too. The default
  /// is stream 0 (the legacy default stream). Switching waits for the work already on
  /// the old stream. Nothing else decides the stream: there is no thread-local or
  /// global one. Only for spaces with streams (`cuda_space`).
  void set_compute_stream(stream_type s)
    requires has_streams
  {
    ops().synchronize();
    stream_ = s;
    follow_compute_stream();
  }
  stream_type compute_stream() const { return stream_; }

  // ---- checkpoint support (zeroblocks/checkpoint/checkpoint.hpp) ------------------

  /// @brief fp32 arrays per element a checkpoint holds: the master and the optimizer
  /// rule's state arrays (array 0 the master, k ≥ 1 state array k−1).
  static constexpr int state_arrays = 1 + Optim::rule::state_count;
  /// @brief Elements `[begin, begin + count)` of parameter `param`, at `master_offset`
  /// in this rank's master arrays.
  struct state_segment {
    std::size_t param = 0, begin = 0, count = 0, master_offset = 0;
  };
  /// @brief What this rank writes to a checkpoint: the parameters' elements in slice
  /// `rank` of every unit (every stage: with stage 0 too each rank writes a 1/N part,
  /// so the ranks write in parallel and nothing twice), in layout order.
  std::vector<state_segment> save_segments() const { return segments(false); }
  /// @brief What this rank holds, so what a load must give it: its slices (sharded
  /// master), or every element (stage 0).
  std::vector<state_segment> load_segments() const { return segments(true); }
  /// @brief Array `which` of the master state, `n` values at `master_offset`, to the host.
  void read_state(int which, std::size_t master_offset, float* out, std::size_t n) {
    master_->read_state(which, master_offset, out, n);
  }
  /// @brief Load one segment: every array's values (`arrays[a]`, `s.count` each); the
  /// 16-bit parameters this rank keeps are rounded from the master, as `set_param` does.
  /// Call `state_loaded()` when every segment is in.
  void load_segment(const state_segment& s, const float* const* arrays) {
    for (int a = 0; a < state_arrays; ++a) master_->write_state(a, s.master_offset, arrays[a], s.count);
    const auto& pp = layout_.param(s.param);
    const auto& up = layout_.unit(pp.unit);
    const std::size_t at = pp.offset_in_unit + s.begin;  // unit coordinates
    const int r = static_cast<int>(at / up.slice_numel);
    if (!params_on_tier && (!Coordinator::shards_params || r == comm_.rank())) {
      T* dst = coord_->owned_slice(pp.unit, r) + (at - static_cast<std::size_t>(r) * up.slice_numel);
      if constexpr (std::is_same_v<T, float>) {
        ops().from_host(dst, arrays[0], s.count * sizeof(T));
      } else {  // rounded a piece at a time through a small buffer (no fresh pages to fault in)
        constexpr std::size_t piece = std::size_t{1} << 14;
        T rounded[piece];
        for (std::size_t i0 = 0; i0 < s.count; i0 += piece) {
          const std::size_t k = std::min(piece, s.count - i0);
          for (std::size_t i = 0; i < k; ++i) rounded[i] = from_float<T>(arrays[0][i0 + i]);
          ops().from_host(dst + i0, rounded, k * sizeof(T));
        }
      }
    }
  }
  /// @brief Every segment is in: make the parameters visible (stages 1/2: all-gather the
  /// slices; stage 3: drop gathered copies). Collective.
  void state_loaded() {
    if constexpr (Coordinator::caps.follows_trace) coord_->params_changed();
    coord_->publish(sharded_master);
    // Every value now comes from one verified source, the same on every rank: values
    // set_param recorded before (even different ones) no longer count.
    init_.settle();
  }
  /// @brief The step counters and loss-scaler state a checkpoint carries.
  struct run_state {
    long steps = 0;            ///< optimizer steps applied (AdamW's bias correction counts these)
    std::uint64_t skipped = 0; ///< steps skipped on overflow
    float lr = 0.0f;           ///< the learning rate in effect (`set_learning_rate`)
    scaler_state scaler;       ///< the loss scaler's state
  };
  run_state get_run_state() const { return {steps_, stats_.skipped, cfg_.optim.lr, scaler_.state()}; }
  void set_run_state(const run_state& s) {
    ZB_REQUIRE(!in_micro_ && micro_steps_ == 0, "checkpoint: load between steps, not inside one");
    steps_ = s.steps;
    stats_.skipped = s.skipped;
    cfg_.optim.lr = s.lr;
    scaler_.restore(s.scaler);
  }
  /// @brief Micro-steps run since the last step (a checkpoint is refused inside a step).
  int micro_steps_pending() const { return micro_steps_ + (in_micro_ ? 1 : 0); }
  /// @brief The registry's description of parameter `p` (name, shape, unit).
  const std::string& param_description(std::size_t p) const { return reg_lines_[p]; }
  /// @brief The parameters as registered (names, shapes, units, groups).
  const param_registry& registry() const { return reg_; }

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
  zeroblocks::coordinator_stats coordination_stats() const { return coord_->stats(); }
  /// @brief The coordinator policy's state, for inspection.
  const coordinator_impl& coordinator() const { return *coord_; }
  /// @brief The master-state policy's state (e.g. `master::swapped`'s I/O counters).
  const master_impl& master_state() const { return *master_; }

  /// @brief The layout these policies give `reg` on `world` ranks — without any rank:
  /// what the estimators below take to plan a run of any size.
  static layout plan_layout(const param_registry& reg, int world, const config& cfg) {
    return Partitioner::make_layout(reg, world, cfg.partition);
  }

  /// @brief What this configuration holds at rest, per category, from the policies'
  /// declarations (compare with `memory()` and with `zero_formula_bytes`).
  static memory_report estimate(const layout& lay, const config& cfg) {
    memory_report r;
    const int w = lay.world();
    coordinator_impl::declare(lay, cfg.coordinate, w, r, sizeof(T));
    bucketer_impl::declare(lay, cfg.bucket, w, r, sizeof(T), accumulates_fp32(cfg));
    master_impl::declare(master_shape{sharded_master ? lay.shard_numel() : lay.total_numel(), params_on_tier},
                         cfg.master, r);
    for (std::size_t i = 0; i < lay.param_count(); ++i)  // tied parameters' partial sums
      if (lay.param(i).uses > 1)
        r.current[static_cast<std::size_t>(mem_category::buckets)] += lay.param(i).numel * sizeof(T);
    return r;
  }
  /// @brief Payload elements this rank's collectives move in a steady-state step of
  /// shape `s` (`policy/traffic.hpp`), per collective kind, as `counters()` counts them:
  /// the coordinator's gathers plus the bucketer's reductions. Computed from the layout
  /// and the knobs alone (any world size, nothing allocated).
  /// @brief Disk bytes per rank of the master's tier (NVMe presets; 0 for the others):
  /// the size its files take (two slots, see `master/swapped.hpp`).
  static std::size_t estimate_tier_bytes(const layout& lay, const config& cfg) {
    return master_impl::tier_bytes(master_shape{sharded_master ? lay.shard_numel() : lay.total_numel(), params_on_tier},
                                   cfg.master);
  }
  static comm_counters estimate_traffic(const layout& lay, const config& cfg, step_shape s = {}) {
    comm_counters t;
    s.accum32 = accumulates_fp32(cfg);
    coordinator_impl::step_traffic(lay, cfg.coordinate, s, sharded_master, t);
    bucketer_impl::step_traffic(lay, cfg.bucket, s, t);
    return t;
  }
  /// @brief Gradients are summed over micro-steps in fp32 (`step_config::grad_accum`, resolved).
  bool accumulates_fp32() const { return ctx_.accum32; }
  /// @brief The ZeRO formula for this engine's stage and layout.
  std::size_t formula_bytes() const {
    return zero_formula_bytes(stage, layout_.total_numel(), comm_.size(), sizeof(T), optimizer_state_bytes<Optim>,
                              ctx_.accum32);
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
        ops().from_host(dev.data(), out.data(), out.size() * sizeof(float));
        for (std::size_t u = 0; u < layout_.unit_count(); ++u) {
          const auto& up = layout_.unit(u);
          comm_.all_gather(dev.data() + up.offset + comm_.rank() * up.slice_numel, dev.data() + up.offset,
                           up.slice_numel);
        }
        ops().to_host(out.data(), dev.data(), out.size() * sizeof(float));
      }
    }
    return std::move(out);
  }
  /// @brief The full parameters (type T) in layout order. Collective for stage 3:
  /// every rank calls it at the same point, between steps or inside one. Its gathers are
  /// served aside: they neither follow nor change the stage-3 trace, so exporting the
  /// weights now and then costs no invalidation and the next acquires are still
  /// prefetched.
  std::vector<T> gather_params() {
    struct aside_scope {
      engine& e;
      explicit aside_scope(engine& en) : e(en) {
        if constexpr (Coordinator::caps.follows_trace) e.coord_->set_aside(true);
        e.aside_ = true;
      }
      ~aside_scope() {
        e.aside_ = false;
        if constexpr (Coordinator::caps.follows_trace) e.coord_->set_aside(false);
      }
    } aside(*this);
    std::vector<T> out(layout_.total_numel());
    for (std::size_t u = 0; u < layout_.unit_count(); ++u) {
      auto g = acquire({u});
      if (layout_.unit(u).padded_numel)
        ops().to_host(out.data() + layout_.unit(u).offset, bases_[u], layout_.unit(u).padded_numel * sizeof(T));
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
  /// A run of one parameter group inside an owned slice.
  struct step_piece {
    std::size_t unit;
    int rank;
    std::size_t master_offset;
    std::size_t offset;  // in the slice
    std::size_t numel;
    std::size_t group;
  };

  /// The optimizer's config for parameter group g (`cfg.groups[g]` applied).
  typename Optim::config group_config(std::size_t g) const {
    auto c = cfg_.optim;
    if (g < cfg_.groups.size()) {
      c.lr = c.lr * cfg_.groups[g].lr_scale;
      if (cfg_.groups[g].weight_decay) c.weight_decay = *cfg_.groups[g].weight_decay;
    }
    return c;
  }

  /// Run a public operation; if it throws, make sure the peers learn of it (a failure
  /// that came from a peer is not echoed back).
  template <class F>
  decltype(auto) guarded(const char* call, F&& f) {
    return guarded(call, npos_unit, static_cast<F&&>(f));
  }
  /// The engine's public calls run in here: the watchdog learns which call (and unit)
  /// this rank is in, and an exception is told to the other ranks.
  template <class F>
  decltype(auto) guarded(const char* call, std::size_t unit, F&& f) {
    struct in_call {  // (calls nest: set_param_from → set_param)
      engine& e;
      const char* call;
      std::size_t unit;
      in_call(engine& en, const char* c, std::size_t u) : e(en), call(en.call_), unit(en.call_unit_) {
        e.call_ = c;
        e.call_unit_ = u;
        if (e.activity_) e.activity_->call.store(c, std::memory_order_relaxed);
      }
      ~in_call() {
        e.call_ = call;
        e.call_unit_ = unit;
        if (e.activity_) e.activity_->call.store(call, std::memory_order_relaxed);
      }
    } scope(*this, call, unit);
    try {
      return f();
    } catch (const collective_error&) {
      throw;  // every rank raised it together and the engine is consistent: nothing to tell
    } catch (const std::exception& e) {
      tell_peers(e.what());
      throw;
    }
  }
  /// Seconds the master's steps waited for tier I/O so far (0 without a tier).
  double tier_io_wait() const {
    if constexpr (requires { master_->stats().io_wait_s; }) return master_->stats().io_wait_s;
    else return 0.0;
  }
  static constexpr std::size_t npos_unit = static_cast<std::size_t>(-1);
  /// Where this rank is, for the collective watchdog (identical text on ranks in the
  /// same place: nothing rank-specific).
  std::string watch_position() const {
    const bool in_step = call_ && std::string_view(call_) == "step";
    std::string out = call_ ? std::string(call_) : std::string("?");
    out += in_step ? "()" : "";
    if (call_unit_ != npos_unit && call_unit_ < layout_.unit_count())
      out += detail::concat(" of unit '", layout_.unit_name(call_unit_), "'");
    if (in_step)
      out += detail::concat(" (step ", steps_ + 1, ", after ", micro_steps_, " micro-step", micro_steps_ == 1 ? ")" : "s)");
    else
      out += detail::concat(" (step ", steps_ + 1, ", ", in_micro_ ? "micro-step " : "after micro-step ",
                            micro_steps_ + (in_micro_ ? 1 : 0), ")");
    return out;
  }
  void watch_calls() {
    if constexpr (!requires(Comm& c) { c.watch_activity(); } && requires(Comm& c) { c.set_collective_timeout(1.0); }) {
      // A deadline per communicator, without the position exchange (comm::nccl).
      for (Comm* c : {&comm_, &gather_comm_, &control_comm_}) c->set_collective_timeout(cfg_.step.collective_timeout_s);
    }
    if constexpr (requires(Comm& c) { c.watch_activity(); }) {
      comm_.set_collective_timeout(cfg_.step.collective_timeout_s);
      comm_.set_label("gradient");
      gather_comm_.set_label("parameter");
      control_comm_.set_label("control");
      activity_ = comm_.watch_activity();
      activity_->self = this;
      activity_->describe = [](const void* self) { return static_cast<const engine*>(self)->watch_position(); };
    }
  }

  void tell_peers(const std::string& message) {
    if (comm_.peer_failed() || gather_comm_.peer_failed() || control_comm_.peer_failed()) return;
    comm_.abort_peers(message);
    gather_comm_.abort_peers(message);
    control_comm_.abort_peers(message);
  }

  /// Every rank at the same place (`agreement.hpp`); collective on the control communicator.
  void agree_on_state(detail::call_site where, std::size_t unit = 0) {
    detail::agree_on_position(control_comm_, layout_, log(),
                              {where, steps_, micro_steps_, unit, held_units(), static_cast<double>(cfg_.optim.lr),
                               static_cast<double>(scaler_.scale())},
                              init_);
  }

  std::size_t owned_numel() const { return sharded_master ? layout_.shard_numel() : layout_.total_numel(); }

  void finish_step() {
    ++timers_.steps;
    grads_reduced_ = false;
    bucketer_->zero();
    micro_steps_ = 0;
    trace_.clear();
    // Stage 3: the next step's first gathers may start now (prefetch_across_steps).
    if constexpr (Coordinator::caps.follows_trace) coord_->step_ended();
  }

  friend unit_guard;
  std::size_t held_units() const {
    std::size_t held = 0;
    for (int h : holds_) held += h > 0;
    return held;
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

  /// Validate config and registry on every rank, collectively (`checks.hpp`); then
  /// build the layout.
  layout checked_layout(const param_registry& reg) {
    std::string accum_problem;
    if (!std::is_same_v<T, float> && !fp32_accum_available && cfg_.step.grad_accum == grad_accum_dtype::fp32)
      accum_problem = detail::concat(
          "engine: step.grad_accum = fp32 is not available with these policies (",
          !Space::host_accessible ? "the gradients live in device memory; fp32 accumulation runs on host spaces"
          : streams_shard         ? "the master streams the 16-bit gradient shard during backward"
                                  : "the communicator has no ireduce_scatter_accumulate",
          "); use grad_accum_dtype::param or automatic");
    detail::agree_config_valid(comm_, cfg_, reg, accum_problem);
    detail::agree_config_same(comm_, agreement_lines<T, Space>(cfg_));
    reg_lines_.clear();
    for (std::size_t i = 0; i < reg.size(); ++i) reg_lines_.push_back(reg.describe(i));
    reg_ = reg;
    detail::agree_registry_same(comm_, reg_lines_);
    return Partitioner::make_layout(reg, comm_.size(), cfg_.partition);
  }

  /// A failure on this rank only: the peers are told, then it throws (unit_guard's misuse).
  [[noreturn]] void fail_local(const std::string& message, const std::string& where) const {
    ctx_.fail_local(message, where);
  }

  /// The parameter elements in slice `rank` of every unit (`all`: in every slice), with
  /// their master offsets, in layout order.
  std::vector<state_segment> segments(bool all) const {
    std::vector<state_segment> out;
    const int world = comm_.size(), rank = comm_.rank();
    if (all && sharded_master) all = false;  // a sharded master holds its own slices only
    for (std::size_t u = 0; u < layout_.unit_count(); ++u) {
      const auto& up = layout_.unit(u);
      for (int r = all ? 0 : rank; r < (all ? world : rank + 1); ++r) {
        const std::size_t s0 = static_cast<std::size_t>(r) * up.slice_numel, s1 = s0 + up.slice_numel;
        for (auto pi : up.params) {
          const auto& pp = layout_.param(pi);
          const std::size_t a = std::max(s0, pp.offset_in_unit), b = std::min(s1, pp.offset_in_unit + pp.numel);
          if (a >= b) continue;
          const std::size_t moff = sharded_master ? up.shard_offset + (a - s0) : up.offset + a;
          out.push_back({pi, a - pp.offset_in_unit, b - a, moff});
        }
      }
    }
    return out;
  }

  /// The operations on `Space` memory, on the compute stream.
  space_ops<Space> ops() const { return space_ops<Space>{stream_}; }
  /// The communicators' collectives follow the compute stream.
  void follow_compute_stream() {
    if constexpr (has_streams) {
      comm_.set_compute_stream(stream_);
      gather_comm_.set_compute_stream(stream_);
      control_comm_.set_compute_stream(stream_);
    }
  }

  Comm comm_;           // gradient reductions, construction checks
  Comm gather_comm_;    // parameter gathers (coordinator): an order of its own
  Comm control_comm_;   // per-step agreement and the gradient norm
  config cfg_;
  std::vector<std::string> reg_lines_;
  param_registry reg_;
  layout layout_;
  memory_tracker tracker_;
  stream_type stream_;  // the compute stream (before ctx_, which refers to it)
  context ctx_;
  std::optional<coordinator_impl> coord_;
  std::optional<bucketer_impl> bucketer_;
  std::optional<master_impl> master_;
  Scaler scaler_;
  std::vector<int> holds_;
  std::vector<const T*> bases_;
  std::vector<int> reported_;             // gradient parts reported this micro-step, per parameter
  std::vector<buffer<T, Space>> tied_;    // tied parameters (uses > 1): the sum of their parts so far
  std::vector<owned_slice_ref> owned_;
  detail::watch_activity* activity_ = nullptr;  ///< the watchdog's record of this rank's call
  const char* call_ = nullptr;                  ///< the public call this rank is in
  std::size_t call_unit_ = npos_unit;           ///< its unit (acquire, release)  // the norm pass: whole slices (its sums do not depend on groups)
  std::vector<step_piece> pieces_;      // the fused pass: the same slices in runs of one group
  bool in_micro_ = false;
  bool grads_reduced_ = false;  // this step's gradients are reduced (a retry must not reduce again)
  int micro_steps_ = 0;
  long steps_ = 0;
  usage_stats stats_;
  std::string stopped_;  // why the engine cannot go on (a stuck tier), on every rank alike
  std::function<float(long)> schedule_;  // set_lr_schedule
  bool timing_ = false;                  // enable_timers
  step_timers timers_;
  detail::trace_log trace_;  // stage 3: acquires/releases this step, and their hash
  detail::trace_log eval_log_;  // stage 3: the same for the evaluation under way
  bool eval_ = false;           // in evaluation mode (begin_eval .. end_eval)
  bool aside_ = false;          // inside gather_params: acquires not logged nor checked
  detail::trace_log& log() { return eval_ ? eval_log_ : trace_; }
  detail::initial_values init_;  // hashes of values set since the last agreement
  int exceptions_at_birth_ = std::uncaught_exceptions();
};

ZB_NAMESPACE_END
