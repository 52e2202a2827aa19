/**
 * @file swapped.hpp
 * @brief `master::swapped<Swap>`: fp32 master weights and the optimizer's state (Adam's
 * m and v) on NVMe (ZeRO-Infinity's optimizer tier), the step a read · compute · write
 * pipeline.
 *
 * The rank's owned elements are cut into sub-groups of `cfg.master.sub_group_numel`.
 * A sub-group's state is one record on disk — its master and the optimizer rule's
 * state arrays back to back, 4 (1 + K) B per element (12 B for Adam, 8 for Lion and
 * SGD with momentum; the figures below are Adam's), padded to 4 KiB — so a step reads
 * and writes each sub-group once,
 * sequentially. The step is a pipeline over `buffer_count` staging buffers: while
 * sub-group k is updated by the fused host kernel, k+1 (and further, with more
 * buffers) is being read and k−1 written. Memory held by the tier is the staging pool,
 * `buffer_count × 12 B × sub_group_numel`, whatever Ψ is.
 *
 * No gradient touches the disk: the 16-bit gradient shard stays in memory and is upcast
 * inside the fused pass (DeepSpeed swaps fp32 gradients out and back in; we move
 * 12 B per element per step each way, never 16).
 *
 * Two slots, one commit. The file holds two copies of every record; step t reads slot
 * A and writes slot B, and the engine commits (flips A and B) only after every rank
 * reported that all of its writes landed. If any write or read fails anywhere, no rank
 * commits: each rolls its 16-bit parameters back to the committed master (read from
 * slot A, which no failed step ever touches) and `step()` throws the same
 * `zeroblocks::collective_error` on every rank — the engine stays usable, the
 * gradients are still there, and the step can be retried. The price is twice the disk
 * space (24 B per owned element); bytes moved per step are unchanged.
 *
 * `set()` and `read_master()` go through a one-record cache (initialisation and
 * inspection, not the step).
 *
 * Parameter tier (stage 3 with `coordinate::prefetch_trace_nvme`, the `infinity`
 * preset): the rank's 16-bit parameter shard lives in the same file, as one contiguous
 * section per slot after the records, and nowhere in memory. The step's fused pass
 * writes each sub-group's new 16-bit parameters into the staging buffer next to its
 * record, and they go to the other slot's section with the record, so the parameters
 * share the state's commit: a rolled-back step leaves the committed section as it was,
 * and nothing needs restoring. The coordinator reads unit slices from the committed
 * section ahead of their gathers (`param_tier()`). Sub-groups are then a multiple of
 * 4 KiB of parameters (2048 16-bit elements) so each one's chunk starts on a block. Per
 * applied step the tier writes 12 + 2 B per owned element; the gathers read 2 B per
 * owned element per gather.
 */
#pragma once

#include "../policy/context.hpp"
#include "../kernel/host.hpp"
#include "../swap/posix.hpp"
#include "../swap/swap.hpp"
#include "../swap/uring.hpp"
#include "detail/chunks.hpp"
#include "master.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace master {

/// @brief Counters of the NVMe master tier.
struct swapped_stats {
  swap_stats io;                       ///< the backend's byte and request counters
  std::uint64_t payload_written = 0;   ///< state bytes the steps wrote (12 B per owned element and step)
  std::uint64_t payload_read = 0;      ///< state bytes the steps read
  std::uint64_t commits = 0;           ///< steps committed
  std::uint64_t rollbacks = 0;         ///< steps rolled back after an I/O failure
  std::size_t sub_groups = 0;          ///< sub-groups per step
  std::size_t sub_group_numel = 0;     ///< elements per sub-group (the last may be shorter)
  std::size_t staging_bytes = 0;       ///< the staging pool: all the memory the tier holds
  std::size_t file_bytes = 0;          ///< the tier's logical file space (two slots)
  bool params_on_tier = false;         ///< the 16-bit parameter shard lives here too
  std::uint64_t param_payload_written = 0;  ///< 16-bit parameter bytes the steps wrote
  double io_wait_s = 0;                ///< seconds the steps' pipelines waited for the tier's I/O
};

/// @brief Knobs of `master::swapped` (`cfg.master`; DeepSpeed names in brackets).
/// Every knob must agree across ranks except `swap.paths` (a rank's own directories),
/// `swap.threads` (a rank's I/O threads) and `swap.fault_hook` (a test's).
struct swapped_config {
  /// The backend's knobs: directories, request size, queue depth, O_DIRECT.
  swap_config swap{};
  /// Staging buffers of the pipeline; each holds one sub-group's fp32 master, m and v
  /// (12 B × sub_group_numel, rounded to 4 KiB). At least 2; 3 overlaps read k+1,
  /// compute k and write k−1; more reads further ahead. [offload_optimizer.buffer_count 4]
  int buffer_count = 4;
  /// Elements of the rank's optimizer state read, updated and written as one piece.
  /// Bounds the tier's memory: buffer_count × 12 B × sub_group_numel. DeepSpeed's
  /// default (1e9) would ask 48 GB of staging buffers here. [sub_group_size 1e9]
  std::size_t sub_group_numel = std::size_t{1} << 24;

  void validate() const {
    ZB_REQUIRE(sub_group_numel >= 1, "master.sub_group_numel must be >= 1");
    ZB_REQUIRE(buffer_count >= 2, "master.buffer_count must be >= 2 (got ", buffer_count,
               "; 3 overlaps read, update and write)");
  }
  /// Calls `v(name, field)` for each knob that must agree across ranks (`policy/config.hpp`).
  template <class Self, class V>
  static void fields_of(Self& c, V&& v) {
    v("buffer_count", c.buffer_count);
    v("sub_group_numel", c.sub_group_numel);
    v("swap.block_size", c.swap.block_size);
    v("swap.queue_depth", c.swap.queue_depth);
    v("swap.direct_io", c.swap.direct_io);
    v("swap.keep_files", c.swap.keep_files);
    v("swap.timeout_s", c.swap.timeout_s);
  }
};

/// @brief Master state on NVMe through swap backend `Swap` (`swap::uring` by default).
template <class Swap = swap::uring>
struct swapped {
  using master_concept = master_tag;
  using swap_backend = Swap;
  static constexpr const char* name = "swapped";
  using config = swapped_config;
  static constexpr master_caps caps{.transactional = true, .keeps_param_tier = true};
  static_assert(swap_policy<Swap>,
                "master::swapped<Swap>: Swap is not a swap-backend policy (see zeroblocks/swap/swap.hpp)");

  /// @brief Elements per sub-group for `owned` elements; with the parameters on the tier
  /// a multiple of 4 KiB of `elem_bytes`-byte parameters.
  static std::size_t sub_group(const config& cfg, std::size_t owned, std::size_t elem_bytes = 0) {
    std::size_t s = std::max<std::size_t>(1, std::min(cfg.sub_group_numel, owned));
    if (elem_bytes) {
      const std::size_t q = swap_block_align / elem_bytes;
      s = (s + q - 1) / q * q;
    }
    return s;
  }

  template <class Ctx>
  class impl {
    using T = typename Ctx::param_type;
    using rule = typename Ctx::rule;
    /// Bytes of one element's record: the fp32 master and the rule's state (Adam: 12).
    static constexpr std::size_t record_bytes = 4 * (1 + static_cast<std::size_t>(rule::state_count));
    using piece = detail::chunk_piece<T>;  // a slice's part in one sub-group

  public:
    /// `shape.params_on_tier`: keep the 16-bit parameter shard in the tier as well (the
    /// engine asks for it for a coordinator that reads it from here).
    impl(Ctx& ctx, const config& cfg, master_shape shape)
        : ctx_(ctx),
          params_(shape.params_on_tier),
          n_(shape.owned_numel),
          s_(checked_sub_group(cfg, n_, params_ ? sizeof(T) : 0)),
          g_((n_ + s_ - 1) / s_),
          rec_(swap_round_up(record_bytes * s_)),
          prec_(params_ ? swap_round_up(sizeof(T) * s_) : 0),
          psec_(params_ ? swap_round_up(sizeof(T) * n_) : 0),
          pool_(cfg.buffer_count, rec_ + prec_, &ctx.tracker),
          io_(cfg.swap, "master", ctx.rank(), 2 * g_ * rec_ + 2 * psec_),
          per_(g_) {
      io_.register_buffers(pool_.iovecs());
      stats_.sub_groups = g_;
      stats_.sub_group_numel = s_;
      stats_.staging_bytes = pool_.bytes() * static_cast<std::size_t>(pool_.count());
      stats_.file_bytes = io_.capacity();
      stats_.params_on_tier = params_;
    }
    impl(const impl&) = delete;
    impl& operator=(const impl&) = delete;

    /// The tier's size on disk: two slots of every record, and with the parameters on
    /// the tier two parameter sections, in whole stripes (`swap_tier_capacity`).
    static std::size_t tier_bytes(master_shape shape, const config& cfg) {
      const std::size_t s = sub_group(cfg, shape.owned_numel, shape.params_on_tier ? sizeof(T) : 0);
      const std::size_t groups = shape.owned_numel == 0 ? 0 : (shape.owned_numel + s - 1) / s;
      const std::size_t psec = shape.params_on_tier ? swap_round_up(sizeof(T) * shape.owned_numel) : 0;
      return swap_tier_capacity(2 * groups * swap_round_up(record_bytes * s) + 2 * psec, cfg.swap);
    }

    static void declare(master_shape shape, const config& cfg, memory_report& r) {
      const std::size_t s = sub_group(cfg, shape.owned_numel, shape.params_on_tier ? sizeof(T) : 0);
      r.current[static_cast<std::size_t>(mem_category::staging)] +=
          static_cast<std::size_t>(std::max(cfg.buffer_count, 0)) *
          (swap_round_up(record_bytes * s) + (shape.params_on_tier ? swap_round_up(sizeof(T) * s) : 0));
    }

    /// @brief Read access to the committed 16-bit parameter section (parameters on the
    /// tier only): what `coordinate::prefetch_trace_nvme` gathers from.
    param_tier_view param_tier() {
      ZB_REQUIRE(params_, "master::swapped: param_tier() without parameters on the tier");
      param_tier_view v;
      v.read = [this](std::size_t offset, std::byte* buf, std::size_t bytes) {
        ZB_REQUIRE(offset % swap_block_align == 0 && offset + bytes <= psec_,
                   "master::swapped: parameter read of ", bytes, " bytes at ", offset, " is outside the section");
        flush();  // values set() left in the one-record cache go to disk first
        return io_.read(param_base(slot_) + offset, buf, bytes);
      };
      v.wait = [this](swap_ticket& t) { io_.wait(t); };
      v.section_bytes = psec_;
      return v;
    }

    /// @brief Initial master values (fp32), `n` from owned element `offset`.
    void set(std::size_t offset, const float* values, std::size_t n) { write_state(0, offset, values, n); }
    /// @brief Write array `which` (0: master — with the parameters on the tier also the
    /// 16-bit parameters it rounds to; k ≥ 1: the rule's state array k−1), `n` values
    /// from owned element `offset` (a checkpoint's load).
    void write_state(int which, std::size_t offset, const float* values, std::size_t n) {
      while (n > 0) {
        const std::size_t g = offset / s_, at = offset % s_, len = std::min(n, numel_of(g) - at);
        float* rec = load(g) + static_cast<std::size_t>(which) * numel_of(g);
        std::memcpy(rec + at, values, len * sizeof(float));
        if (params_ && which == 0) {  // the 16-bit parameters a fresh master rounds to
          T* p = param_area(0);
          for (std::size_t i = 0; i < len; ++i) p[at + i] = from_float<T>(values[i]);
        }
        dirty_ = true;
        offset += len;
        values += len;
        n -= len;
      }
    }
    /// @brief Copy `n` committed master values from owned element `offset` into `out`.
    void read_master(std::size_t offset, float* out, std::size_t n) { read_state(0, offset, out, n); }
    /// @brief ... Adam's first (`which` 1) or second (2) moment.
    void read_state(int which, std::size_t offset, float* out, std::size_t n) {
      while (n > 0) {
        const std::size_t g = offset / s_, at = offset % s_, len = std::min(n, numel_of(g) - at);
        const float* rec = load(g) + static_cast<std::size_t>(which) * numel_of(g);
        std::memcpy(out, rec + at, len * sizeof(float));
        offset += len;
        out += len;
        n -= len;
      }
    }

    /// @brief The step: for each sub-group read its record from the committed slot,
    /// run the fused pass on the slices that fall in it, write it to the other slot.
    /// Nothing is committed until `commit()`. Throws (after every transfer settled)
    /// when a read or write failed.
    void apply(const std::vector<step_slice<T>>& slices, const std::vector<typename rule::args>& a) {
      flush();
      cached_ = npos;
      for (auto& p : per_) p.clear();
      for (const auto& p : detail::cut_into_chunks(slices, s_)) per_[p.chunk].push_back(p);
      pending_ = true;
      const std::size_t nb = static_cast<std::size_t>(pool_.count());
      const int from = slot_, to = 1 - slot_;
      std::vector<swap_ticket> rt(nb), wt(nb), pt(nb);
      try {
        for (std::size_t j = 0; j + 1 < nb && j < g_; ++j) rt[j] = read_record(from, j, pool_.data(static_cast<int>(j)));
        for (std::size_t g = 0; g < g_; ++g) {
          const std::size_t b = g % nb;
          wait_io(rt[b]);
          compute(g, static_cast<int>(b), a);
          wt[b] = io_.write(offset_of(to, g), pool_.data(static_cast<int>(b)), record_bytes * numel_of(g));
          stats_.payload_written += record_bytes * numel_of(g);
          if (params_) {
            pt[b] = io_.write(param_base(to) + sizeof(T) * g * s_, param_area(static_cast<int>(b)),
                              sizeof(T) * numel_of(g));
            stats_.param_payload_written += sizeof(T) * numel_of(g);
          }
          // The buffer of sub-group g-1 is next: once its writes have landed, read ahead into it.
          if (const std::size_t j = g + nb - 1; j < g_) {
            const std::size_t bj = j % nb;
            wait_io(wt[bj]);
            wait_io(pt[bj]);
            rt[bj] = read_record(from, j, pool_.data(static_cast<int>(bj)));
          }
        }
        for (auto& t : wt) wait_io(t);
        for (auto& t : pt) wait_io(t);
      } catch (...) {
        for (auto& t : rt) t.settle();  // the kernel may still write these buffers
        for (auto& t : wt) t.settle();
        for (auto& t : pt) t.settle();
        throw;
      }
    }
    /// @brief Every rank's `apply` succeeded: the written slot becomes the committed one.
    void commit() {
      if (!pending_) return;
      slot_ = 1 - slot_;
      pending_ = false;
      ++stats_.commits;
    }
    /// @brief Some rank's `apply` failed: restore the 16-bit parameters of the last
    /// `apply` from the committed master (its slot was not written). Throws if the
    /// committed slot cannot be read either. With the parameters on the tier there is
    /// nothing to restore: the committed section was not written either.
    void rollback() {
      if (!pending_) return;
      pending_ = false;
      cached_ = npos;
      for (std::size_t g = 0; g < g_ && !params_; ++g) {
        if (per_[g].empty()) continue;
        const float* rec = load(g);
        for (const auto& p : per_[g]) kernel::downcast(p.param, rec + p.at, p.numel, 1.0f, ctx_.threads);
      }
      ++stats_.rollbacks;
    }

    swapped_stats stats() const {
      auto s = stats_;
      s.io = io_.stats();
      return s;
    }
    const Swap& backend() const { return io_; }

  private:
    static constexpr std::size_t npos = static_cast<std::size_t>(-1);

    static std::size_t checked_sub_group(const config& cfg, std::size_t owned, std::size_t elem_bytes) {
      cfg.validate();
      return sub_group(cfg, owned, elem_bytes);
    }
    std::size_t numel_of(std::size_t g) const { return std::min(s_, n_ - g * s_); }
    std::size_t offset_of(int slot, std::size_t g) const { return (static_cast<std::size_t>(slot) * g_ + g) * rec_; }
    swap_ticket read_record(int slot, std::size_t g, std::byte* buf) {
      stats_.payload_read += record_bytes * numel_of(g);
      return io_.read(offset_of(slot, g), buf, record_bytes * numel_of(g));
    }

    /// Byte offset of a slot's 16-bit parameter section (after both slots' records).
    std::size_t param_base(int slot) const { return 2 * g_ * rec_ + static_cast<std::size_t>(slot) * psec_; }
    /// Where staging buffer b keeps its sub-group's 16-bit parameters (after the record).
    T* param_area(int b) const { return reinterpret_cast<T*>(pool_.data(b) + rec_); }

    void compute(std::size_t g, int b, const std::vector<typename rule::args>& a) {
      const std::size_t n = numel_of(g);
      float* rec = reinterpret_cast<float*>(pool_.data(b));
      // The record: master, then each state array, n elements each.
      float* master = rec;
      // Elements no slice covers (none today: the slices tile the shard) stay zero
      // rather than carrying another sub-group's values to disk.
      if (params_) std::memset(static_cast<void*>(param_area(b)), 0, sizeof(T) * n);
      for (const auto& p : per_[g]) {
        float* state[rule::state_count > 0 ? rule::state_count : 1] = {};
        for (int k = 0; k < rule::state_count; ++k) state[k] = rec + (static_cast<std::size_t>(k) + 1) * n + p.at;
        detail::with_grad(p, [&](const auto* grad) {
          kernel::fused_step<rule>(master + p.at, state, grad, params_ ? param_area(b) + p.at : p.param, p.numel,
                                   a[p.group], ctx_.threads);
        });
      }
    }

    /// The committed record of sub-group g in staging buffer 0 (one-record cache), with
    /// its 16-bit parameters when they live here.
    float* load(std::size_t g) {
      float* rec = reinterpret_cast<float*>(pool_.data(0));
      if (cached_ == g) return rec;
      flush();
      cached_ = npos;
      auto t = io_.read(offset_of(slot_, g), pool_.data(0), record_bytes * numel_of(g));
      swap_ticket tp;
      if (params_) tp = io_.read(param_base(slot_) + sizeof(T) * g * s_, param_area(0), sizeof(T) * numel_of(g));
      io_.wait(t);
      io_.wait(tp);
      cached_ = g;
      return rec;
    }
    void flush() {
      if (!dirty_) return;
      dirty_ = false;
      auto t = io_.write(offset_of(slot_, cached_), pool_.data(0), record_bytes * numel_of(cached_));
      swap_ticket tp;
      if (params_)
        tp = io_.write(param_base(slot_) + sizeof(T) * cached_ * s_, param_area(0), sizeof(T) * numel_of(cached_));
      io_.wait(t);
      io_.wait(tp);
    }

    Ctx& ctx_;
    bool params_;
    std::size_t n_, s_, g_, rec_, prec_, psec_;
    staging_pool pool_;  // before io_: the backend (and its I/O thread) goes first
    Swap io_;
    std::vector<std::vector<piece>> per_;  // the last apply's pieces, per sub-group
    int slot_ = 0;                         // the committed slot
    bool pending_ = false;                 // an apply wrote the other slot, not committed yet
    std::size_t cached_ = npos;
    bool dirty_ = false;
    swapped_stats stats_;
    /// A wait of the step's pipeline, timed into `stats_.io_wait_s` (the engine's
    /// `step_timers::tier_io_s`).
    void wait_io(swap_ticket& t) {
      const auto t0 = std::chrono::steady_clock::now();
      io_.wait(t);
      stats_.io_wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
  };
};

}  // namespace master
ZB_NAMESPACE_END
