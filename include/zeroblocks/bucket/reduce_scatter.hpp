/**
 * @file reduce_scatter.hpp
 * @brief `bucket::reduce_scatter`: stages 2 and 3. Full gradients are transient.
 *
 * Buckets are fixed at construction: consecutive units, taken from the last unit
 * backwards (the order backward produces them) until a bucket reaches `bucket_numel`
 * (a unit larger than that gets a bucket of its own). Inside a bucket buffer the
 * gradients are packed rank-major — rank r's slices of the bucket's units, one after
 * another — so a single reduce-scatter hands each rank exactly the contiguous piece of
 * its gradient shard that those units occupy.
 *
 * During backward, `grad_ready` scatters each gradient into its bucket's buffer; when a
 * bucket has all its parameters it is reduce-scattered without waiting, and backward
 * continues while it is in flight. Buckets are *issued in bucket order only* — a bucket
 * completed early waits for its predecessors — so every rank issues the same sequence
 * of collectives whatever order its backward reported gradients in (DeepSpeed and DDP
 * match buckets by arrival and hang or mix gradients when ranks differ). Completed
 * reductions are accumulated into the shard and their buffers reused. At most
 * `bucket_count` buffers are normally live; if backward's order is so far from the
 * expected one that every buffer is held by an unfinished bucket, one more is
 * allocated (it shows in the `buckets` peak) rather than deadlocking.
 *
 * Parameters never reported in a micro-step contribute zeros (an unused layer).
 *
 * With fp32 accumulation (`ctx.accum32`, `grad_accum_dtype::fp32`) the gradient shard
 * is fp32 (4Ψ/N) and each bucket's reduction adds its fp32 rank-ordered sum straight
 * into it (`comm.ireduce_scatter_accumulate`): T on the wire as before, never rounded
 * to T afterwards (`grad_slice32`). Not with a shard listener (`master::offloaded`).
 *
 * `on_shard_updated(updated, will_write)` registers `updated(shard_offset, data, n)`,
 * called after each bucket's reduced block was accumulated into the shard (ordered on
 * the space's stream), and `will_write()`, called before the shard is first written in
 * a micro-step and before it is zeroed: the engine passes them to a master that reads
 * the shard asynchronously during backward (`master::offloaded` copies it to the host,
 * and must let those copies finish before the shard changes — no earlier, so the next
 * forward does not wait for them).
 */
#pragma once

#include "../policy/context.hpp"
#include "../kernel/host.hpp"
#include "../space/host_space.hpp"
#include "../space/ops.hpp"
#include "bucket.hpp"
#include "detail/slice_stats.hpp"

#include <algorithm>
#include <cstring>
#include <deque>
#include <functional>
#include <optional>
#include <vector>

ZB_NAMESPACE_BEGIN

/// @brief Knobs of `bucket::reduce_scatter` (`cfg.bucket`; DeepSpeed names in brackets).
/// Both must agree across ranks.
struct bucket_config {
  /// Elements per gradient bucket (whole units; a unit larger than this is a bucket of
  /// its own). [reduce_bucket_size]
  std::size_t bucket_numel = std::size_t{1} << 25;
  /// Bucket buffers in flight (2 = double buffering). [overlap_comm]
  int bucket_count = 2;

  void validate() const {
    ZB_REQUIRE(bucket_numel >= 1, "bucket.bucket_numel must be >= 1");
    ZB_REQUIRE(bucket_count >= 1, "bucket.bucket_count must be >= 1 (got ", bucket_count, ")");
  }
  /// Calls `v(name, field)` for each knob that must agree across ranks (`policy/config.hpp`).
  template <class Self, class V>
  static void fields_of(Self& c, V&& v) {
    v("bucket_numel", c.bucket_numel);
    v("bucket_count", c.bucket_count);
  }
};

namespace bucket {

/// @brief Stage 2/3 gradient reduction: overlapped reduce-scatter per bucket.
struct reduce_scatter {
  using bucketer_concept = bucketer_tag;
  static constexpr bool shards_grads = true;
  static constexpr bool shards_master = true;
  static constexpr const char* name = "reduce_scatter";
  using config = bucket_config;
  static constexpr bucketer_caps caps{.streams_shard = true};

  /// @brief A fixed group of consecutive units reduced together.
  struct bucket_plan {
    std::size_t first_unit = 0, last_unit = 0;  ///< inclusive, ascending
    std::size_t block_numel = 0;                ///< one rank's part (sum of slices)
    std::size_t raw_numel = 0;                  ///< parameter elements expected
  };

  /// @brief Buckets for a layout, in issue order (last units first).
  static std::vector<bucket_plan> plan(const layout& lay, std::size_t bucket_numel) {
    std::vector<bucket_plan> out;
    std::size_t u = lay.unit_count();
    while (u > 0) {
      bucket_plan b;
      b.last_unit = u - 1;
      std::size_t numel = 0;
      do {
        --u;
        numel += lay.unit(u).padded_numel;
        b.block_numel += lay.unit(u).slice_numel;
        b.raw_numel += lay.unit(u).raw_numel;
      } while (u > 0 && numel + lay.unit(u - 1).padded_numel <= bucket_numel);
      b.first_unit = u;
      out.push_back(b);
    }
    return out;
  }
  static std::size_t max_bucket_numel(const layout& lay, std::size_t bucket_numel) {
    std::size_t m = 0;
    for (auto& b : plan(lay, bucket_numel)) m = std::max(m, b.block_numel * lay.world());
    return m;
  }

  template <class Ctx>
  class impl {
    using T = typename Ctx::param_type;
    using buf_t = buffer<T, typename Ctx::space>;
    using request = typename Ctx::comm_type::request;

  public:
    impl(Ctx& ctx, const config& cfg)
        : ctx_(ctx),
          cfg_(cfg),
          shard_(ctx.accum32 ? 0 : ctx.lay.shard_numel(), mem_category::grads16, &ctx.tracker),
          shard32_(ctx.accum32 ? ctx.lay.shard_numel() : 0, mem_category::grads32, &ctx.tracker),
          plans_(plan(ctx.lay, cfg.bucket_numel)),
          bucket_of_unit_(ctx.lay.unit_count()),
          state_(plans_.size()),
          stats_(ctx.lay.unit_count()) {
      if (shard_.size()) shard_.zero();
      if (shard32_.size()) shard32_.zero();
      if constexpr (!accumulates_fp32)
        ZB_REQUIRE(!ctx.accum32, "bucket::reduce_scatter: fp32 gradient accumulation needs a communicator with "
                                 "ireduce_scatter_accumulate (comm::mpi, comm::self)");
      buffer_numel_ = max_bucket_numel(ctx.lay, cfg.bucket_numel);
      for (std::size_t b = 0; b < plans_.size(); ++b)
        for (std::size_t u = plans_[b].first_unit; u <= plans_[b].last_unit; ++u) bucket_of_unit_[u] = b;
      for (int i = 0; i < cfg.bucket_count && buffer_numel_ > 0; ++i)
        free_.push_back(buf_t(buffer_numel_, mem_category::buckets, &ctx.tracker));
    }
    static void declare(const layout& lay, const config& cfg, int, memory_report& r, std::size_t elem_bytes,
                        bool accum32) {
      if (accum32) r.current[static_cast<std::size_t>(mem_category::grads32)] += lay.shard_numel() * sizeof(float);
      else r.current[static_cast<std::size_t>(mem_category::grads16)] += lay.shard_numel() * elem_bytes;
      const std::size_t b = max_bucket_numel(lay, cfg.bucket_numel);
      if (b > 0)
        r.current[static_cast<std::size_t>(mem_category::buckets)] +=
            static_cast<std::size_t>(cfg.bucket_count) * b * elem_bytes;
    }

    /// One reduce-scatter of every non-empty bucket per micro-step.
    /// (The same with fp32 accumulation: T on the wire either way.)
    static void step_traffic(const layout& lay, const config& cfg, step_shape s, comm_counters& t) {
      for (const auto& b : plan(lay, cfg.bucket_numel))
        if (b.block_numel > 0)
          for (int k = 0; k < s.micro_steps; ++k) t.count_reduce_scatter(b.block_numel, lay.world());
    }

    void begin_micro_step() {
      stats_.forget();  // each bucket's finish records its units' slices again
      first_micro_ = fresh_;
      for (auto& s : state_) s = {};
      written_ = false;
      next_issue_ = 0;
      issue_ready();  // buckets with nothing to wait for (zero-size parameters only)
    }

    void grad_ready(std::size_t p, const T* g) {
      const auto& pp = ctx_.lay.param(p);
      if (pp.numel == 0) return;  // nothing to carry (its bucket may be done already)
      const std::size_t b = bucket_of_unit_[pp.unit];
      auto& st = state_[b];
      if (!st.buf) st.buf = take_buffer(b);
      scatter(b, pp, g, st.buf->data());
      st.filled += pp.numel;
      if (st.filled == plans_[b].raw_numel) issue_ready();
      poll();
    }

    /// @brief Issue what is left (missing gradients count as zero), wait, accumulate.
    void end_micro_step() {
      for (std::size_t b = 0; b < plans_.size(); ++b) state_[b].filled = plans_[b].raw_numel;
      while (next_issue_ < plans_.size()) {
        auto& st = state_[next_issue_];
        if (!st.buf && plans_[next_issue_].block_numel > 0) st.buf = take_buffer(next_issue_);
        issue_ready();
      }
      while (!in_flight_.empty()) complete_oldest();
      fresh_ = false;  // every bucket has written its part of the shard
    }
    void reduce_for_step() {}
    const T* grad_slice(std::size_t u, int) { return shard_.data() + ctx_.lay.unit(u).shard_offset; }
    /// fp32 accumulation: the fp32 gradient shard (nullptr otherwise).
    const float* grad_slice32(std::size_t u, int) {
      return ctx_.accum32 ? shard32_.data() + ctx_.lay.unit(u).shard_offset : nullptr;
    }
    /// The one-pass step: the statistics of this rank's slice of unit `u` as last
    /// written (host spaces; nullptr otherwise).
    const kernel::grad_stats* slice_stats(std::size_t u, int r) const {
      return r == ctx_.rank() ? stats_.get(u) : nullptr;
    }
    void zero() {
      stats_.forget();
      fresh_ = true;
      if (will_write_) will_write_();
      // (stream-ordered on the GPU; one of the two is empty. On a host space the T shard
      // needs no zeros: the step's first micro-step copies into it.)
      // fp32 accumulation: the first micro-step's reductions overwrite the fp32 shard.)
      if (shard_.size() && !Ctx::space::host_accessible) ctx_.ops().fill_zero(shard_.data(), shard_.bytes());
    }
    const std::vector<bucket_plan>& plans() const { return plans_; }
    /// @brief Call `updated(shard_offset, data, n)` after each block lands in the shard,
    /// `will_write()` before the shard is first written in a micro-step or zeroed.
    void on_shard_updated(std::function<void(std::size_t, const T*, std::size_t)> updated,
                          std::function<void()> will_write) {
      listener_ = std::move(updated);
      will_write_ = std::move(will_write);
    }

  private:
    static constexpr bool accumulates_fp32 =
        requires(typename Ctx::comm_type& c, T* b, float* a) { c.ireduce_scatter_accumulate(b, a, std::size_t{}, 1.0f); };
    struct bucket_state {
      std::optional<buf_t> buf;
      std::size_t filled = 0;
      bool issued = false;
    };
    struct flight {
      std::size_t bucket;
      request req;
    };

    /// Copy a parameter's gradient into rank-major position inside the bucket buffer.
    void scatter(std::size_t b, const param_place& pp, const T* g, T* buf) {
      const auto& plan = plans_[b];
      std::size_t unit_block_off = 0;  // offset of this unit's slice inside a rank's block
      for (std::size_t u = plan.first_unit; u < pp.unit; ++u) unit_block_off += ctx_.lay.unit(u).slice_numel;
      const std::size_t slice = ctx_.lay.unit(pp.unit).slice_numel;
      std::size_t done = 0;
      while (done < pp.numel) {
        const std::size_t pos = pp.offset_in_unit + done;
        const std::size_t r = pos / slice, in_slice = pos % slice;
        const std::size_t n = std::min(pp.numel - done, slice - in_slice);
        ctx_.ops().copy(buf + r * plan.block_numel + unit_block_off + in_slice, g + done, n * sizeof(T));
        done += n;
      }
    }

    buf_t take_buffer(std::size_t) {
      while (free_.empty() && !in_flight_.empty()) complete_oldest();
      buf_t b;
      if (!free_.empty()) {
        b = std::move(free_.back());
        free_.pop_back();
      } else {
        // Every buffer is held by a bucket still filling: backward's order is far from
        // the layout's reverse. Grow rather than deadlock; the peak shows it.
        b = buf_t(buffer_numel_, mem_category::buckets, &ctx_.tracker);
      }
      // Padding and unreported parameters reduce as zeros. (ops: on the GPU a stream-
      // ordered fill, where buffer::zero() would synchronise the device mid-backward.)
      ctx_.ops().fill_zero(b.data(), b.bytes());
      return b;
    }

    void issue_ready() {
      const float avg = 1.0f / static_cast<float>(ctx_.world());
      while (next_issue_ < plans_.size() && state_[next_issue_].filled == plans_[next_issue_].raw_numel) {
        const std::size_t b = next_issue_++;
        auto& st = state_[b];
        st.issued = true;
        if (plans_[b].block_numel == 0) continue;
        if (!st.buf) st.buf = take_buffer(b);  // all its parameters are zero-size
        T* base = st.buf->data();
        const std::size_t blk = plans_[b].block_numel;
        if constexpr (accumulates_fp32) {
          if (ctx_.accum32) {  // the reduction adds into the fp32 shard as it completes
            float* into = shard32_.data() + ctx_.lay.unit(plans_[b].first_unit).shard_offset;
            in_flight_.push_back({b, ctx_.comm.ireduce_scatter_accumulate(base, into, blk, avg, first_micro_)});
            continue;
          }
        }
        in_flight_.push_back({b, ctx_.comm.ireduce_scatter(
                                     base, base + static_cast<std::size_t>(ctx_.rank()) * blk, blk, avg)});
      }
    }

    void poll() {
      while (!in_flight_.empty() && in_flight_.front().req.test()) finish(in_flight_.front().bucket), in_flight_.pop_front();
    }
    void complete_oldest() {
      in_flight_.front().req.wait();
      finish(in_flight_.front().bucket);
      in_flight_.pop_front();
    }
    /// Accumulate the reduced block into the shard (fp32 accumulation: the reduction
    /// added it already) and recycle the buffer.
    /// On a host space the norm statistics of each unit's slice are taken here too: in
    /// the accumulation's pass (`accumulate_sumsq`), or, with fp32 accumulation (the
    /// communicator added into the fp32 shard), right after it while still in cache.
    void finish(std::size_t b) {
      auto& st = state_[b];
      const auto& plan = plans_[b];
      const std::size_t off = ctx_.lay.unit(plan.first_unit).shard_offset;
      if (!ctx_.accum32) {
        const std::size_t blk = plan.block_numel;
        const T* mine = st.buf->data() + static_cast<std::size_t>(ctx_.rank()) * blk;
        if (!written_) {
          written_ = true;
          if (will_write_) will_write_();
        }
        if constexpr (Ctx::space::host_accessible) {
          // The step's first micro-step copies (the shard is not zeroed between steps:
          // every bucket is reduced in every micro-step, so the copy covers it all).
          for (std::size_t u = plan.first_unit; u <= plan.last_unit; ++u) {
            const auto& up = ctx_.lay.unit(u);
            T* dst = shard_.data() + up.shard_offset;
            const T* src = mine + (up.shard_offset - off);
            stats_.set(u, first_micro_ ? kernel::copy_sumsq(dst, src, up.slice_numel, ctx_.threads)
                                       : kernel::accumulate_sumsq(dst, src, up.slice_numel, ctx_.threads));
          }
        } else {
          ctx_.ops().accumulate(shard_.data() + off, mine, blk, ctx_.threads);
        }
        if (listener_) listener_(off, shard_.data() + off, blk);
      } else if constexpr (Ctx::space::host_accessible) {
        for (std::size_t u = plan.first_unit; u <= plan.last_unit; ++u) {
          const auto& up = ctx_.lay.unit(u);
          stats_.set(u, kernel::grad_sumsq(shard32_.data() + up.shard_offset, up.slice_numel, ctx_.threads));
        }
      }
      free_.push_back(std::move(*st.buf));
      st.buf.reset();
      // Keep at most bucket_count buffers; extra ones grown under pressure are freed.
      if (free_.size() > static_cast<std::size_t>(cfg_.bucket_count)) free_.pop_back();
    }

    Ctx& ctx_;
    config cfg_;
    buf_t shard_;
    buffer<float, typename Ctx::space> shard32_;  ///< fp32 accumulation only
    std::vector<bucket_plan> plans_;
    std::vector<std::size_t> bucket_of_unit_;
    std::vector<bucket_state> state_;
    std::vector<buf_t> free_;
    std::deque<flight> in_flight_;
    std::size_t next_issue_ = 0;
    std::size_t buffer_numel_ = 0;
    std::function<void(std::size_t, const T*, std::size_t)> listener_;
    std::function<void()> will_write_;
    bool written_ = false;  ///< the shard was written in this micro-step
    bool fresh_ = true;        ///< host T shard / fp32 shard: no micro-step of this step has completed
    bool first_micro_ = true;  ///< this micro-step writes the shard instead of adding to it
    detail::slice_stats_table stats_;
  };
};

}  // namespace bucket
ZB_NAMESPACE_END
