/**
 * @file master.hpp
 * @brief The master-state role: where fp32 master weights, Adam m and v live and where
 * the fused step runs.
 *
 * Policies, side by side:
 *  - `master::resident<Space>` (`resident.hpp`): in memory of `Space`, the step on the
 *    host kernels.
 *  - `master::swapped<Swap>` (`swapped.hpp`): on NVMe through a swap backend, the step a
 *    read · update · write pipeline over sub-groups (ZeRO-Infinity).
 *  - `master::offloaded` (`offloaded.hpp`, needs the CUDA runtime): ZeRO-Offload for
 *    GPU ranks — state in pinned host memory, the host step, 16-bit gradients down and
 *    16-bit parameters up, pipelined over chunks.
 *
 * A master policy is a tag type with `using master_concept = master_tag;`, its knobs as
 * `config` (`policy/config.hpp`), its optional capabilities as
 * `static constexpr master_caps caps`, and a nested `template <class Ctx> class impl`
 * built as `impl(ctx, config, master_shape)` for the rank's owned numel (Ψ for stage 0,
 * Ψ/N otherwise). Every `impl` provides (checked by `master_complete<M, Ctx>()`, which
 * names what is missing) `set(offset, values, n)`, `read_master(offset, out, n)`,
 * `read_state(which, offset, out, n)` / `write_state(which, offset, in, n)` (array
 * `which`: 0 the master, k ≥ 1 the rule's state array k−1; what checkpoints move),
 * `apply(slices, per_group)` — the fused pass over every owned slice, each with the
 * constants of its parameter group (`per_group[slice.group]`), the step — and
 * `static declare(master_shape, config, report&)` (the memory it holds) and
 * `static tier_bytes(master_shape, config) -> std::size_t` (the disk it takes; 0 without
 * a tier).
 *
 * Optional capabilities, declared in `caps`:
 *  - `transactional` → `commit()` / `rollback()`: the step is a transaction: the engine
 *    calls `commit()` once every rank's `apply` succeeded, `rollback()` on every rank
 *    when one failed (the 16-bit parameters return to the committed state) and throws
 *    `collective_error`.
 *  - `takes_shard_stream` → `shard_updated(offset, data, n)` / `shard_will_change()`:
 *    connected to a bucketer that declares `bucketer_caps::streams_shard`, the master
 *    moves each reduced gradient block as it lands during backward.
 *  - `keeps_param_tier` → `param_tier() -> param_tier_view`: with
 *    `master_shape::params_on_tier` the rank's 16-bit parameter shard lives in the
 *    master's tier, for a coordinator that declares `coordinator_caps::params_on_tier`.
 */
#pragma once

#include "../core/config.hpp"
#include "../policy/config.hpp"
#include "../space/host_space.hpp"
#include "../space/memory.hpp"
#include "../swap/swap.hpp"  // param_tier_view

#include <concepts>
#include <cstddef>
#include <vector>

ZB_NAMESPACE_BEGIN

/// @brief Tag that marks a type as a master-state policy.
struct master_tag {};

/// @brief A master's optional capabilities (see the file comment).
struct master_caps {
  bool transactional = false;
  bool takes_shard_stream = false;
  bool keeps_param_tier = false;
};

/// @brief What a master is built for: the rank's owned elements, and whether the 16-bit
/// parameter shard lives in the master's tier too (only for `keeps_param_tier`).
struct master_shape {
  std::size_t owned_numel = 0;
  bool params_on_tier = false;
};

template <class M>
concept master_policy = std::same_as<typename M::master_concept, master_tag> && policy_config<typename M::config> &&
                        requires {
                          { M::caps } -> std::convertible_to<master_caps>;
                        };

/// @brief The fp32 master and the optimizer rule's `K` state arrays of `n` owned
/// elements in `Space`, zeroed, tracked as `master_fp32` and `optim_state0/1` (the
/// state `master::resident` and `master::offloaded` hold in memory): 4 (1 + K) bytes
/// per element.
template <class Space, int K>
struct optimizer_state {
  static_assert(K >= 0 && K <= 2, "optimizer_state: a rule keeps at most 2 fp32 state arrays");
  buffer<float, Space> master;
  std::vector<buffer<float, Space>> state;

  optimizer_state(std::size_t n, memory_tracker* tracker) : master(n, mem_category::master_fp32, tracker) {
    master.zero();
    state.reserve(K);
    for (int k = 0; k < K; ++k) {
      state.emplace_back(n, category(k), tracker);
      state.back().zero();
    }
  }
  /// @brief The state arrays at owned element `offset`, as the fused step takes them.
  struct at_offset {
    float* p[K > 0 ? K : 1] = {};
    float* const* data() const { return p; }
  };
  at_offset states(std::size_t offset) {
    at_offset r;
    for (int k = 0; k < K; ++k) r.p[k] = state[k].data() + offset;
    return r;
  }
  static constexpr mem_category category(int k) { return k == 0 ? mem_category::optim_state0 : mem_category::optim_state1; }
  /// @brief What it holds, for the estimator: 4 (1 + K) B per element.
  static void declare(std::size_t n, memory_report& r) {
    r.current[static_cast<std::size_t>(mem_category::master_fp32)] += n * 4;
    for (int k = 0; k < K; ++k) r.current[static_cast<std::size_t>(category(k))] += n * 4;
  }
};

/// @brief One contiguous piece of the step: a slice's gradient, its 16-bit parameter
/// destination, its length, where it sits in the master arrays, and its parameter group
/// (the index of its constants in `apply`'s per-group arguments). Under fp32 gradient
/// accumulation the gradient is `grad32` (fp32) and `grad` is null.
template <class T>
struct step_slice {
  const T* grad = nullptr;
  const float* grad32 = nullptr;
  T* param = nullptr;
  std::size_t numel = 0;
  std::size_t master_offset = 0;
  std::size_t group = 0;
};

namespace detail {
/// @brief `f(grad)` with a slice's (or chunk piece's) gradient: the fp32 one under fp32
/// accumulation, else the T one — so a master's fused pass is written once for both.
template <class Piece, class F>
void with_grad(const Piece& p, F&& f) {
  if (p.grad32) f(p.grad32);
  else f(p.grad);
}
}  // namespace detail

/// @brief Checks, with a message naming the role and the operation, that master
/// policy `M` provides every operation the engine calls with context `Ctx`.
template <class M, class Ctx>
consteval bool master_complete() {
  using I = typename M::template impl<Ctx>;
  using T = typename Ctx::param_type;
  using cfg = typename M::config;
  static_assert(std::constructible_from<I, Ctx&, const cfg&, master_shape>,
                "master role: impl<Ctx> must be constructible as impl(Ctx&, const config&, master_shape)");
  static_assert(requires(I& m, std::size_t o, const float* v) { m.set(o, v, o); },
                "master role: impl lacks `set(std::size_t offset, const float* values, std::size_t n)`");
  static_assert(requires(I& m, std::size_t o, float* out) { m.read_master(o, out, o); },
                "master role: impl lacks `read_master(std::size_t offset, float* out, std::size_t n)`");
  static_assert(requires(I& m, std::size_t o, float* out, const float* in) {
                  m.read_state(0, o, out, o);
                  m.write_state(0, o, in, o);
                },
                "master role: impl lacks `read_state(int which, std::size_t offset, float* out, std::size_t n)` "
                "or `write_state(int which, std::size_t offset, const float* in, std::size_t n)` (checkpoints)");
  static_assert(requires(I& m, const std::vector<step_slice<T>>& s,
                         const std::vector<typename Ctx::rule::args>& a) { m.apply(s, a); },
                "master role: impl lacks its step, `apply(const std::vector<step_slice<T>>&, "
                "const std::vector<rule::args>& per_group)`");
  static_assert(requires(const cfg& k, memory_report& r) { I::declare(master_shape{}, k, r); },
                "master role: impl lacks `static declare(master_shape, const config&, memory_report&)`");
  static_assert(requires(const cfg& k) { { I::tier_bytes(master_shape{}, k) } -> std::convertible_to<std::size_t>; },
                "master role: impl lacks `static std::size_t tier_bytes(master_shape, const config&)` (disk per rank)");
  if constexpr (M::caps.transactional)
    static_assert(requires(I& m) {
                    m.commit();
                    m.rollback();
                  },
                  "master role: caps.transactional is declared but impl lacks `commit()` and `rollback()`");
  if constexpr (M::caps.takes_shard_stream)
    static_assert(requires(I& m, std::size_t o, const T* d) {
                    m.shard_updated(o, d, o);
                    m.shard_will_change();
                  },
                  "master role: caps.takes_shard_stream is declared but impl lacks "
                  "`shard_updated(offset, data, n)` and `shard_will_change()`");
  if constexpr (M::caps.keeps_param_tier)
    static_assert(requires(I& m) { { m.param_tier() } -> std::convertible_to<param_tier_view>; },
                  "master role: caps.keeps_param_tier is declared but impl lacks `param_tier_view param_tier()`");
  return true;
}

ZB_NAMESPACE_END
