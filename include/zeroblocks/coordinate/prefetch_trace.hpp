/**
 * @file prefetch_trace.hpp
 * @brief `coordinate::prefetch_trace`: stage 3 whose all-gathers run ahead of use;
 *        `coordinate::prefetch_trace_nvme`: the same with the 16-bit shard on NVMe.
 *
 * Each rank keeps its 16-bit shard, as with `on_demand`. On top:
 *
 *  - **Trace.** The engine logs every first acquire and last release of a unit. At
 *    `step()` it checks that the log is the same on every rank (a hash in its per-step
 *    agreement; on mismatch the whole order, and the error names the first differing
 *    event and both units on every rank) and hands it over: it becomes the trace.
 *    Until a trace exists every acquire is served on demand, after a cross-rank check of
 *    its position and unit (`checks_acquire`), so ranks that acquire differently fail
 *    right there with both names instead of pairing wrong gathers.
 *  - **Prefetch.** Following a trace, each acquire (and each release, which may free
 *    budget) issues non-blocking all-gathers for the next units of the trace while three
 *    bounds hold: elements gathered ahead and not yet acquired ≤ `prefetch_numel`;
 *    live gathered elements ≤ `max_live_numel`; gathers ahead ≤ `max_inflight`. A
 *    step's first gathers start at its first `begin_micro_step`.
 *  - **Reuse.** A released unit whose next acquire in the trace comes before
 *    `max_reuse_distance_numel` elements of other acquires stays gathered.
 *  - **Persistence.** Units with fewer than `persistence_threshold_numel` elements keep
 *    a gathered copy for good (category `persistent`, allocated at construction, not
 *    counted as live); it is gathered once per step, at its first acquire after the
 *    parameters changed.
 *  - **Evaluation.** Between steps the engine may enter evaluation mode
 *    (`engine::begin_eval`): gathered copies not held are dropped and the acquires that
 *    follow are recorded, verified and followed as a second trace, with the same
 *    prefetch, reuse and persistence; leaving it swaps the training trace back in. So a
 *    periodic evaluation pass is prefetched along its own order and never invalidates
 *    the training trace. (Persistent copies stay valid across the switch: parameters
 *    change only at `step()`.)
 *  - **Deviation.** An acquire that is not the trace's next unit (or a step that ends
 *    before the trace does) invalidates the trace: in-flight gathers are waited out,
 *    everything gathered but not held is freed, the rest of the step is served on demand
 *    (checked per acquire), rank 0 prints one line, and the step's own order becomes
 *    the new trace at `step()`.
 *
 * Every decision — what to gather, when, what to keep — depends only on the trace, the
 * sequence of acquires and releases, and the knobs, never on timing. So all ranks issue
 * the same gathers in the same order on the engine's gather communicator; the engine
 * verifies the sequence at every step.
 *
 * Overlap: requests come from `Ctx::comm_type`'s non-blocking all-gather. `comm::mpi`
 * advances them from its progress thread while the trainer computes; a CUDA
 * communicator will return stream-ordered requests through the same calls.
 *
 * Differences from DeepSpeed's coordinator: bounded by elements *and* by a request
 * count; a deviation is reported and counted (`coordinator_stats::invalidations`)
 * rather than silently turning prefetch off; the trace is verified across ranks.
 *
 * **Parameters on NVMe** (`prefetch_trace_nvme`, the `infinity` preset, with
 * `master::swapped`): the rank's 16-bit shard is not in memory but in the master tier's
 * parameter section (see `master/swapped.hpp`, which also writes it at each step). A
 * gather then starts from the disk: the unit's slice is read (the 4 KiB blocks covering
 * it) into one of `max_inflight + 1` staging buffers, copied to its place in the
 * gathered buffer, and all-gathered in place. Following a trace, reads run ahead of the
 * gathers — up to `max_inflight` of them, for the next units the gather scan will
 * reach — so a gather finds its slice in memory instead of waiting on the disk
 * (`coordinator_stats::tier_reads`, `tier_read_hits`, `tier_read_wait_seconds`). Off
 * the trace each gather reads its slice first. Reads in flight are settled before the
 * step (which changes the committed section) and on a deviation.
 */
#pragma once

#include "../policy/context.hpp"
#include "../space/host_space.hpp"
#include "../space/ops.hpp"
#include "../swap/swap.hpp"
#include "coordinate.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <limits>
#include <span>
#include <vector>

ZB_NAMESPACE_BEGIN

/// @brief Knobs of the stage-3 coordinators `coordinate::prefetch_trace` and
/// `prefetch_trace_nvme` (`cfg.coordinate`). Defaults are DeepSpeed's, whose names are in
/// brackets; all are element counts of the 16-bit parameters (padded units), so the same
/// numbers mean the same memory in bytes × 2. Every knob must agree across ranks.
struct prefetch_config {
  /// Gathered ahead of use, not yet acquired, at most this many elements. Larger hides
  /// more latency, costs memory. 0 = no prefetch. [stage3_prefetch_bucket_size]
  std::size_t prefetch_numel = 50'000'000;
  /// Gathered parameters alive at once (held, kept for reuse, prefetched, in flight),
  /// persistent units excepted. Bounds stage 3's transient memory. [stage3_max_live_parameters]
  std::size_t max_live_numel = 1'000'000'000;
  /// A released unit whose next use comes before this many elements of other units have
  /// been acquired stays gathered (one gather instead of two). 0 = never keep.
  /// [stage3_max_reuse_distance]
  std::size_t max_reuse_distance_numel = 1'000'000'000;
  /// Units with fewer elements stay gathered for good: one gather per step instead of
  /// two, memory reported as `persistent`. 0 = none. [stage3_param_persistence_threshold]
  std::size_t persistence_threshold_numel = 100'000;
  /// Prefetched gathers issued and not yet acquired, at most. Bounds outstanding
  /// requests. 0 = no prefetch. (DeepSpeed has no such knob.)
  int max_inflight = 8;
  /// Start the next step's first gathers when `step()` returns rather than at the next
  /// `begin_micro_step`, so they overlap whatever the trainer does between steps (data
  /// loading, logging) and the first unit is not waited for. Costs: up to
  /// `prefetch_numel` gathered elements held between steps (memory at rest above the
  /// estimate), and gathers a run's last step issues for nothing. (DeepSpeed has no
  /// such knob; its prefetch starts inside the forward pass.)
  bool prefetch_across_steps = false;

  void validate() const {
    ZB_REQUIRE(max_inflight >= 0, "coordinate.max_inflight must be >= 0 (got ", max_inflight, "; 0 = no prefetch)");
  }
  /// Calls `v(name, field)` for each knob that must agree across ranks (`policy/config.hpp`).
  template <class Self, class V>
  static void fields_of(Self& c, V&& v) {
    v("prefetch_numel", c.prefetch_numel);
    v("max_live_numel", c.max_live_numel);
    v("max_reuse_distance_numel", c.max_reuse_distance_numel);
    v("persistence_threshold_numel", c.persistence_threshold_numel);
    v("max_inflight", c.max_inflight);
    v("prefetch_across_steps", c.prefetch_across_steps);
  }
};

namespace coordinate {

/// @brief Stage 3 with a recorded fetch order, prefetch, reuse and persistence; with
/// `ParamsOnTier` the 16-bit shard is read from the master tier (NVMe) ahead of use.
template <bool ParamsOnTier>
struct basic_prefetch_trace {
  using coordinator_concept = coordinator_tag;
  static constexpr bool shards_params = true;
  /// The 16-bit shard lives in the master state's tier (needs `master::swapped`).
  static constexpr bool params_on_tier = ParamsOnTier;
  static constexpr const char* name = ParamsOnTier ? "prefetch_trace_nvme" : "prefetch_trace";
  using config = prefetch_config;
  static constexpr coordinator_caps caps{.checks_acquire = true, .follows_trace = true, .params_on_tier = ParamsOnTier};

  /// @brief Units below the persistence threshold (padded elements).
  static bool persistent_unit(const layout& lay, const config& cfg, std::size_t u) {
    const std::size_t n = lay.unit(u).padded_numel;
    return n > 0 && n < cfg.persistence_threshold_numel;
  }

  template <class Ctx>
  class impl {
    using T = typename Ctx::param_type;
    using Space = typename Ctx::space;
    using request = typename Ctx::comm_type::request;
    static constexpr std::size_t npos = std::numeric_limits<std::size_t>::max();

    enum class state : unsigned char { empty, in_flight, ready };
    enum class mode : unsigned char { recording, following, deviated };
    struct slot {
      buffer<T, Space> buf;  // the gathered copy (persistent units: allocated for good)
      request req;
      state st = state::empty;
      bool persistent = false;
      bool ahead = false;  // issued ahead of its acquire, not acquired yet
      bool held = false;
      bool kept = false;   // released, kept for a near reuse
    };

  public:
    impl(Ctx& ctx, const config& cfg)
        : ctx_(ctx),
          knobs_(cfg),
          shard_(ParamsOnTier ? 0 : ctx.lay.shard_numel(), mem_category::params16, &ctx.tracker),
          slots_(ctx.lay.unit_count()),
          last_pos_(ctx.lay.unit_count(), npos) {
      shard_.zero();
      if constexpr (ParamsOnTier) {
        reads_ = staging_pool(read_buffers(cfg), read_buffer_bytes(ctx.lay), &ctx.tracker);
        read_of_.assign(slots_.size(), -1);
        for (int b = 0; b < reads_.count(); ++b) free_reads_.push_back(b);
        read_ticket_.resize(static_cast<std::size_t>(reads_.count()));
        read_unit_.assign(static_cast<std::size_t>(reads_.count()), npos);
      }
      for (std::size_t u = 0; u < slots_.size(); ++u)
        if (persistent_unit(ctx.lay, cfg, u)) {
          slots_[u].persistent = true;
          slots_[u].buf = buffer<T, Space>(ctx.lay.unit(u).padded_numel, mem_category::persistent, &ctx.tracker);
          ++stats_.persistent_units;
        }
      // The bound must admit one acquire of every unit it governs; otherwise it could
      // never hold. (Same layout and knobs on every rank, so every rank fails alike.)
      for (std::size_t u = 0; u < slots_.size(); ++u)
        ZB_REQUIRE(slots_[u].persistent || ctx.lay.unit(u).padded_numel <= cfg.max_live_numel,
                   "coordinate.max_live_numel is ", cfg.max_live_numel, " but unit #", u, " has ",
                   ctx.lay.unit(u).padded_numel, " elements (padded): one acquire of it must fit; set it to at least ",
                   ctx.lay.max_unit_numel(), " (the largest unit), or keep small units gathered with ",
                   "persistence_threshold_numel");
    }
    impl(const impl&) = delete;
    impl& operator=(const impl&) = delete;
    ~impl() {
      settle_reads();
      // Gathers still in flight write into our buffers: finish them, unless the
      // communicator failed (then the engine has quarantined the memory).
      if (ctx_.gather_comm.failed()) return;
      try {
        drain();
      } catch (...) {
        ctx_.tracker.quarantine();
      }
    }

    static void declare(const layout& lay, const config& cfg, int, memory_report& r,
                        std::size_t elem_bytes) {
      if constexpr (ParamsOnTier)
        r.current[static_cast<std::size_t>(mem_category::staging)] +=
            static_cast<std::size_t>(read_buffers(cfg)) * swap_round_up(read_buffer_bytes(lay));
      else
        r.current[static_cast<std::size_t>(mem_category::params16)] += lay.shard_numel() * elem_bytes;
      for (std::size_t u = 0; u < lay.unit_count(); ++u)
        if (persistent_unit(lay, cfg, u))
          r.current[static_cast<std::size_t>(mem_category::persistent)] += lay.unit(u).padded_numel * elem_bytes;
    }

    /// The gathers of a steady-state step of shape `s`, following its trace: the
    /// decisions `acquire`, `release` and `make_room` take, replayed on unit sizes alone
    /// (prefetch changes when a gather is issued, not whether: it issues only within
    /// `max_live_numel` and never drops a kept unit). Persistent units are gathered once
    /// (the step before made their copies stale).
    static void step_traffic(const layout& lay, const config& cfg, step_shape s, bool, comm_counters& t) {
      std::vector<std::size_t> order;  // the trace's acquires
      for (int m = 0; m < s.micro_steps; ++m) {
        for (std::size_t u = 0; u < lay.unit_count(); ++u) order.push_back(u);
        for (std::size_t u = lay.unit_count(); u-- > 0;) order.push_back(u);
      }
      const std::size_t n = order.size();
      std::vector<std::size_t> prefix(n + 1, 0), next(n, npos), seen(lay.unit_count(), npos);
      for (std::size_t i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + lay.unit(order[i]).padded_numel;
      for (std::size_t i = n; i-- > 0;) {
        next[i] = seen[order[i]];
        seen[order[i]] = i;
      }
      std::vector<char> gathered(lay.unit_count(), 0), kept(lay.unit_count(), 0);
      std::vector<std::size_t> kept_next(lay.unit_count(), npos);
      std::size_t live = 0;
      const auto gather = [&](std::size_t u) { t.count_all_gather(lay.unit(u).slice_numel, lay.world()); };
      for (std::size_t i = 0; i < n; ++i) {
        const std::size_t u = order[i], un = lay.unit(u).padded_numel;
        if (persistent_unit(lay, cfg, u)) {
          if (!gathered[u]) gather(u), gathered[u] = 1;
          continue;
        }
        if (kept[u]) {
          kept[u] = 0;  // a reuse hit: held again
        } else {
          while (live + un > cfg.max_live_numel) {  // make_room: farthest next use first
            std::size_t victim = npos, far = 0;
            for (std::size_t v = 0; v < kept.size(); ++v)
              if (kept[v] && (victim == npos || kept_next[v] >= far)) victim = v, far = kept_next[v];
            if (victim == npos) break;
            kept[victim] = 0;
            live -= lay.unit(victim).padded_numel;
          }
          gather(u);
          live += un;
        }
        // The release right after: kept when its next acquire is near enough.
        if (next[i] != npos && prefix[next[i]] - prefix[i + 1] < cfg.max_reuse_distance_numel) {
          kept[u] = 1;
          kept_next[u] = next[i];
        } else {
          live -= un;
        }
      }
    }

    /// Off the trace (or without one) every acquire is checked across ranks first.
    bool checks_acquire(std::size_t u) const {
      return mode_ != mode::following || pos_ >= trace_units_.size() || trace_units_[pos_] != u;
    }

    const T* acquire(std::size_t u) {
      const timer time_it(stats_.wait_seconds);
      if (mode_ == mode::following && checks_acquire(u)) deviate(u);
      ++stats_.acquires;
      last_pos_[u] = pos_++;
      slot& s = slots_[u];
      if (s.st == state::empty) {
        make_room(u);
        issue(u, false);
        ++stats_.misses;
      } else if (s.ahead) {
        ++stats_.prefetch_hits;
        s.ahead = false;
        --ahead_count_;
        ahead_numel_ -= numel(u);
      } else if (s.persistent) {
        ++stats_.persistent_hits;
      } else if (s.kept) {
        ++stats_.reuse_hits;
      }
      s.kept = false;
      s.held = true;
      issue_ahead();  // before waiting: the next gathers start now
      wait(u);
      return s.buf.data();
    }

    void release(std::size_t u) {
      const timer time_it(stats_.wait_seconds);
      slot& s = slots_[u];
      s.held = false;
      if (s.persistent) return;
      if (mode_ == mode::following) {
        std::size_t next = last_pos_[u] < next_same_.size() ? next_same_[last_pos_[u]] : npos;
        if (next != npos && next < pos_) next = npos;  // cannot happen on a followed trace
        if (next != npos && prefix_[next] - prefix_[pos_] < knobs_.max_reuse_distance_numel) {
          s.kept = true;
        } else {
          free(u);
          if (next != npos) issue_pos_ = std::min(issue_pos_, next);  // gather it again later
        }
        issue_ahead();  // the scan may have been waiting for this decision, or for budget
        return;
      }
      free(u);
    }

    /// Where the step writes this rank's slice of unit u; nullptr with the parameters on
    /// the tier (the master tier writes them, see `master::swapped`).
    T* owned_slice(std::size_t u, int) {
      if constexpr (ParamsOnTier) return nullptr;
      else return shard_.data() + ctx_.lay.unit(u).shard_offset;
    }
    /// The master tier's parameter section to gather from (the engine attaches it).
    void attach_param_tier(param_tier_view v) {
      static_assert(ParamsOnTier, "attach_param_tier: this coordinator keeps its shard in memory");
      tier_ = std::move(v);
    }

    /// After an applied step: every persistent copy is stale (the rest were dropped at
    /// `trace_agreed`).
    void publish(bool) {
      for (auto& s : slots_)
        if (s.persistent && !s.held) s.st = state::empty;
    }
    /// The first micro-step of a step begins: start its first gathers now rather than at
    /// its first acquire. (Not at `publish`: memory between steps stays what `declare`
    /// says, and a run's last step gathers nothing it will not use.)
    void step_begins() { issue_ahead(); }
    /// `step()` returned (applied or skipped): with `prefetch_across_steps` the next
    /// step's first gathers start now, from the updated shard.
    void step_ended() {
      if (knobs_.prefetch_across_steps) issue_ahead();
    }

    /// The step's event sequence, the same on every rank: it becomes the trace.
    void trace_agreed(std::span<const std::uint32_t> events) {
      drain();
      settle_reads();  // the step is about to change the committed parameter section
      if (mode_ == mode::following && pos_ != trace_units_.size()) {
        ++stats_.invalidations;
        warn(detail::concat(eval_ ? "the evaluation ended after " : "the step ended after ", pos_, " of the trace's ", trace_units_.size(), " acquires"),
             false);
      }
      drop_unheld();
      issue_order_.clear();
      if (!std::equal(events.begin(), events.end(), trace_.begin(), trace_.end())) set_trace(events);
      mode_ = mode::following;
      pos_ = 0;
      issue_pos_ = 0;
      std::fill(last_pos_.begin(), last_pos_.end(), npos);
    }

    /// Enter (`on`) or leave evaluation mode: the other trace and its position take over.
    /// Between steps, with no unit held (the engine checks). Nothing in flight crosses.
    void set_eval(bool on) {
      if (on == eval_) return;
      drain();
      settle_reads();
      drop_unheld();
      std::swap(mode_, other_.mode_);
      trace_.swap(other_.trace);
      trace_units_.swap(other_.trace_units);
      prefix_.swap(other_.prefix);
      next_same_.swap(other_.next_same);
      prev_same_.swap(other_.prev_same);
      eval_ = on;
      pos_ = 0;
      issue_pos_ = 0;
      std::fill(last_pos_.begin(), last_pos_.end(), npos);
      if (on) issue_ahead();  // the evaluation's first gathers start now
    }

    /// Enter (`on`) or leave a gather outside the step's order (`engine::gather_params`,
    /// between steps or inside one): its acquires are served on demand, neither checked
    /// against the trace nor recorded, and the step's position in the trace is kept.
    /// On leaving, what those acquires took (a gather issued ahead, a kept copy) is issued
    /// again from the current position, so the step's next acquires are still ahead.
    void set_aside(bool on) {
      if (on == aside_.active) return;
      if (on) {
        aside_.mode_ = mode_;
        aside_.pos = pos_;
        aside_.last_pos = last_pos_;
        mode_ = mode::recording;  // on demand, nothing issued ahead
      } else {
        mode_ = aside_.mode_;
        pos_ = aside_.pos;
        last_pos_.swap(aside_.last_pos);
        issue_pos_ = pos_;
        issue_ahead();
      }
      aside_.active = on;
    }

    /// The trainer wrote parameters: every gathered copy not in use is dropped.
    void params_changed() {
      drain();
      settle_reads();
      drop_unheld();
      for (auto& s : slots_)
        if (s.persistent && !s.held) s.st = state::empty;
      issue_pos_ = pos_;
    }

    coordinator_stats stats() const {
      coordinator_stats s = stats_;
      s.live_numel = live_;
      s.ahead_gathers = ahead_count_;
      s.ahead_numel = ahead_numel_;
      s.trace_events = trace_.size();
      s.trace_complete = mode_ == mode::following;
      return s;
    }
    /// @brief Units in the order their gathers were issued this step (tests, tools).
    const std::vector<std::size_t>& issue_order() const { return issue_order_; }
    /// @brief The trace: acquire/release events (`release_bit` marks releases).
    const std::vector<std::uint32_t>& trace() const { return trace_; }

  private:
    std::size_t numel(std::size_t u) const { return ctx_.lay.unit(u).padded_numel; }

    /// Adds the time from construction to destruction to `sink`.
    struct timer {
      double& sink;
      std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
      ~timer() { sink += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); }
    };

    void issue(std::size_t u, bool ahead) {
      slot& s = slots_[u];
      const auto& up = ctx_.lay.unit(u);
      if (!s.persistent) {
        s.buf = take_buffer(up.padded_numel);
        live_ += up.padded_numel;
        stats_.peak_live_numel = std::max(stats_.peak_live_numel, live_);
        if (live_ > knobs_.max_live_numel) ++stats_.over_limit;
      }
      if constexpr (ParamsOnTier) {
        // The slice comes from the disk into its own place in the gathered buffer; the
        // gather then runs in place.
        T* mine = s.buf.data() + static_cast<std::size_t>(ctx_.rank()) * up.slice_numel;
        load_slice(u, mine);
        s.req = ctx_.gather_comm.iall_gather(mine, s.buf.data(), up.slice_numel);
      } else {
        s.req = ctx_.gather_comm.iall_gather(shard_.data() + up.shard_offset, s.buf.data(), up.slice_numel);
      }
      s.st = state::in_flight;
      in_flight_.push_back(u);
      issue_order_.push_back(u);
      ++stats_.gathers;
      stats_.gathered_numel += up.padded_numel;
      if (ahead) {
        s.ahead = true;
        ++ahead_count_;
        ahead_numel_ += up.padded_numel;
        ++stats_.prefetches;
      }
    }

    /// Walk the trace from the next position and issue what the bounds allow.
    void issue_ahead() {
      if (mode_ != mode::following) return;
      poll();
      issue_pos_ = std::max(issue_pos_, pos_);
      while (issue_pos_ < trace_units_.size()) {
        const std::size_t u = trace_units_[issue_pos_];
        slot& s = slots_[u];
        if (s.st != state::empty || s.held) {  // gathered, kept, ahead or in use now
          if (!stays_until(u, issue_pos_)) break;  // its release decides: wait for it
          ++issue_pos_;
          continue;
        }
        if (ahead_count_ >= static_cast<std::size_t>(std::max(knobs_.max_inflight, 0))) break;
        if (ahead_numel_ + numel(u) > knobs_.prefetch_numel) break;
        if (!s.persistent && live_ + numel(u) > knobs_.max_live_numel) break;
        // Parameters on the tier: the gather goes out once its slice is in memory; until
        // then the scan stops here (a later acquire or release resumes it) and the reads
        // below run ahead.
        if constexpr (ParamsOnTier)
          if (!slice_ready(u)) break;
        issue(u, true);
        ++issue_pos_;
      }
      if constexpr (ParamsOnTier) read_ahead();
    }

    /// A live unit `u` is still gathered when position `j` is acquired: persistent, kept
    /// for exactly `j`, or certain to be kept when released after its previous use (the
    /// reuse distance it will see is at most the elements acquired strictly between
    /// that use and `j`).
    bool stays_until(std::size_t u, std::size_t j) const {
      const slot& s = slots_[u];
      if (s.persistent) return true;
      if (s.kept) return last_pos_[u] < next_same_.size() && next_same_[last_pos_[u]] == j;
      const std::size_t prev = prev_same_[j];
      return prev != npos && prefix_[j] - prefix_[prev + 1] < knobs_.max_reuse_distance_numel;
    }

    /// A demand gather would pass max_live_numel: drop kept units, farthest reuse first.
    void make_room(std::size_t u) {
      if (slots_[u].persistent) return;
      while (live_ + numel(u) > knobs_.max_live_numel) {
        std::size_t victim = npos, far = 0;
        for (std::size_t v = 0; v < slots_.size(); ++v) {
          if (!slots_[v].kept) continue;
          const std::size_t next = last_pos_[v] < next_same_.size() ? next_same_[last_pos_[v]] : npos;
          if (victim == npos || next >= far) {
            victim = v;
            far = next;
          }
        }
        if (victim == npos) return;
        free(victim);
        if (far != npos) issue_pos_ = std::min(issue_pos_, far);
      }
    }

    void wait(std::size_t u) {
      slot& s = slots_[u];
      if (s.st != state::in_flight) return;
      s.req.wait();
      s.st = state::ready;
      in_flight_.erase(std::find(in_flight_.begin(), in_flight_.end(), u));
    }
    /// Let finished gathers retire. Only needed when nothing advances MPI in the
    /// background: with a progress thread, testing here would do the transfers' work on
    /// the trainer's thread instead.
    void poll() {
      if constexpr (requires(const typename Ctx::comm_type& c) { c.async_progress(); })
        if (ctx_.gather_comm.async_progress()) return;
      for (std::size_t i = 0; i < in_flight_.size();) {
        slot& s = slots_[in_flight_[i]];
        if (s.req.test()) {
          s.st = state::ready;
          in_flight_.erase(in_flight_.begin() + static_cast<std::ptrdiff_t>(i));
        } else {
          ++i;
        }
      }
    }
    void drain() {
      while (!in_flight_.empty()) wait(in_flight_.front());
    }
    void free(std::size_t u) {
      slot& s = slots_[u];
      if (s.persistent) return;
      if (s.st != state::empty) live_ -= numel(u);
      give_buffer(std::move(s.buf));
      s.st = state::empty;
      s.kept = false;
      s.ahead = false;
    }
    /// A gathered buffer of n elements: a released one of the same size if there is one
    /// (no fresh pages, no allocator call on the trainer's thread), else a new one.
    buffer<T, Space> take_buffer(std::size_t n) {
      for (std::size_t i = idle_.size(); i-- > 0;)
        if (idle_[i].size() == n) {
          buffer<T, Space> b = std::move(idle_[i]);
          idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(i));
          idle_numel_ -= n;
          return b;
        }
      // A new one: first give back parked buffers it would not fit beside.
      while (!idle_.empty() && live_ + idle_numel_ + n > knobs_.max_live_numel) {
        idle_numel_ -= idle_.front().size();
        idle_.erase(idle_.begin());
      }
      return buffer<T, Space>(n, mem_category::gathered, &ctx_.tracker);
    }
    /// Keep a released buffer for reuse while idle + live elements stay within
    /// max_live_numel (so gathered memory never exceeds it); free it otherwise.
    void give_buffer(buffer<T, Space>&& b) {
      if (b.size() == 0) return;
      if (live_ + idle_numel_ + b.size() <= knobs_.max_live_numel) {
        idle_numel_ += b.size();
        idle_.push_back(std::move(b));
      } else {
        b.reset();
      }
      // Live elements grew since buffers were parked: give back what no longer fits.
      while (!idle_.empty() && live_ + idle_numel_ > knobs_.max_live_numel) {
        idle_numel_ -= idle_.front().size();
        idle_.erase(idle_.begin());
      }
    }
    /// Release the idle buffers (the step's end: memory at rest is what `declare` says).
    void clear_idle() {
      idle_.clear();
      idle_numel_ = 0;
    }

    /// Free every non-persistent copy nobody holds; count prefetches never used.
    void drop_unheld() {
      for (std::size_t u = 0; u < slots_.size(); ++u) {
        slot& s = slots_[u];
        if (s.ahead) ++stats_.wasted_prefetches;
        if (!s.held) free(u);
        s.ahead = false;
        s.kept = false;
      }
      ahead_count_ = 0;
      ahead_numel_ = 0;
      clear_idle();
    }

    // ---- parameters on the tier ----------------------------------------------------

    /// Staging buffers for slice reads: max_inflight ahead, one more for a demand read.
    static int read_buffers(const config& cfg) { return std::max(cfg.max_inflight, 0) + 1; }
    /// The 4 KiB blocks covering any unit's slice, at most.
    static std::size_t read_buffer_bytes(const layout& lay) {
      std::size_t most = 0;
      for (std::size_t u = 0; u < lay.unit_count(); ++u)
        most = std::max(most, swap_round_up(lay.unit(u).slice_numel * sizeof(T)) + swap_block_align);
      return most;
    }
    /// First byte of unit u's slice in the section, rounded down to a block.
    std::size_t read_origin(std::size_t u) const {
      return ctx_.lay.unit(u).shard_offset * sizeof(T) / swap_block_align * swap_block_align;
    }
    void start_read(std::size_t u, int b) {
      const auto& up = ctx_.lay.unit(u);
      const std::size_t begin = read_origin(u);
      const std::size_t end = swap_round_up((up.shard_offset + up.slice_numel) * sizeof(T));
      read_ticket_[static_cast<std::size_t>(b)] = tier_.read(begin, reads_.data(b), end - begin);
      read_unit_[static_cast<std::size_t>(b)] = u;
      read_of_[u] = b;
      ++stats_.tier_reads;
      stats_.tier_read_bytes += end - begin;
    }
    void finish_read(int b) {
      read_unit_[static_cast<std::size_t>(b)] = npos;
      free_reads_.push_back(b);
    }
    /// Whether unit u's slice is in memory (starts its read if none was started).
    bool slice_ready(std::size_t u) {
      if (ctx_.lay.unit(u).slice_numel == 0) return true;
      if (read_of_[u] < 0) {
        if (free_reads_.size() > 1) {
          const int b = free_reads_.back();
          free_reads_.pop_back();
          start_read(u, b);
        }
        return false;
      }
      return read_ticket_[static_cast<std::size_t>(read_of_[u])].ready();
    }
    /// Unit u's slice into `dst`: from its read ahead if one was started, else read now.
    void load_slice(std::size_t u, T* dst) {
      const auto& up = ctx_.lay.unit(u);
      if (up.slice_numel == 0) return;
      int b = read_of_[u];
      if (b >= 0) {
        ++stats_.tier_read_hits;
      } else {
        b = free_reads_.back();  // read_ahead leaves one buffer free for this
        free_reads_.pop_back();
        start_read(u, b);
      }
      read_of_[u] = -1;
      {
        const timer time_it(stats_.tier_read_wait_seconds);
        try {
          tier_.wait(read_ticket_[static_cast<std::size_t>(b)]);
        } catch (...) {
          finish_read(b);
          throw;
        }
      }
      ctx_.ops().from_host(dst, reads_.data(b) + (up.shard_offset * sizeof(T) - read_origin(u)),
                           up.slice_numel * sizeof(T));
      finish_read(b);
    }
    /// Start reads for the units the gather scan reaches next (the same walk as
    /// `issue_ahead`, past the gathers it issued), keeping one buffer for demand reads.
    void read_ahead() {
      for (std::size_t j = issue_pos_; j < trace_units_.size() && free_reads_.size() > 1; ++j) {
        const std::size_t u = trace_units_[j];
        const slot& s = slots_[u];
        if (s.st != state::empty || s.held) {
          if (!stays_until(u, j)) break;
          continue;
        }
        if (read_of_[u] >= 0 || ctx_.lay.unit(u).slice_numel == 0) continue;
        const int b = free_reads_.back();
        free_reads_.pop_back();
        start_read(u, b);
      }
    }
    /// Wait out every read in flight and forget them (errors included: the data is
    /// dropped, and a unit needing it reads again).
    void settle_reads() {
      if constexpr (ParamsOnTier) {
        for (int b = 0; b < reads_.count(); ++b) {
          const std::size_t u = read_unit_[static_cast<std::size_t>(b)];
          if (u == npos) continue;
          read_ticket_[static_cast<std::size_t>(b)].settle();
          read_of_[u] = -1;
          finish_read(b);
        }
      }
    }

    void deviate(std::size_t u) {
      ++stats_.invalidations;
      warn(pos_ < trace_units_.size()
               ? detail::concat("acquire #", pos_ + 1, " is '", ctx_.lay.unit_name(u), "' where the trace has '",
                                ctx_.lay.unit_name(trace_units_[pos_]), "'")
               : detail::concat("acquire #", pos_ + 1, " ('", ctx_.lay.unit_name(u), "') is past the trace's end"));
      drain();
      settle_reads();
      drop_unheld();
      mode_ = mode::deviated;
    }

    void warn(const std::string& what, bool mid_step = true) {
      if (ctx_.rank() == 0)
        std::fprintf(stderr, "zeroblocks: stage-3 prefetch %s invalidated: %s; %sits order becomes the new trace\n",
                     eval_ ? "trace of evaluation" : "trace", what.c_str(),
                     mid_step ? (eval_ ? "the rest of this evaluation gathers on demand and "
                                       : "the rest of this step gathers on demand and ")
                              : "");
    }

    void set_trace(std::span<const std::uint32_t> events) {
      trace_.assign(events.begin(), events.end());
      trace_units_.clear();
      for (auto e : trace_)
        if (!(e & release_bit)) trace_units_.push_back(e);
      const std::size_t n = trace_units_.size();
      prefix_.assign(n + 1, 0);
      for (std::size_t i = 0; i < n; ++i) prefix_[i + 1] = prefix_[i] + numel(trace_units_[i]);
      next_same_.assign(n, npos);
      prev_same_.assign(n, npos);
      std::vector<std::size_t> seen(slots_.size(), npos);
      for (std::size_t i = n; i-- > 0;) {
        next_same_[i] = seen[trace_units_[i]];
        seen[trace_units_[i]] = i;
      }
      for (std::size_t i = 0; i < n; ++i)
        if (next_same_[i] != npos) prev_same_[next_same_[i]] = i;
    }

    Ctx& ctx_;
    const config knobs_;  // a copy: the engine's config may be reassigned
    buffer<T, Space> shard_;
    std::vector<slot> slots_;
    mode mode_ = mode::recording;
    std::vector<std::uint32_t> trace_;      // events, as the engine logged them
    std::vector<std::size_t> trace_units_;  // the acquires of the trace, in order
    std::vector<std::size_t> prefix_;       // elements acquired before each trace position
    std::vector<std::size_t> next_same_;    // next trace position of the same unit
    std::vector<std::size_t> prev_same_;    // previous trace position of the same unit
    std::vector<std::size_t> last_pos_;     // position of each unit's latest acquire
    std::vector<std::size_t> in_flight_;    // units whose gather may still be running
    std::vector<std::size_t> issue_order_;  // this step's gathers, in issue order
    /// The trace not in use: evaluation's while training, training's while evaluating.
    struct idle_trace {
      mode mode_ = mode::recording;
      std::vector<std::uint32_t> trace;
      std::vector<std::size_t> trace_units, prefix, next_same, prev_same;
    } other_;
    bool eval_ = false;
    /// The position kept while a gather is served aside (`set_aside`).
    struct aside_state {
      bool active = false;
      mode mode_ = mode::recording;
      std::size_t pos = 0;
      std::vector<std::size_t> last_pos;
    } aside_;
    std::size_t pos_ = 0;                   // acquires so far this step
    std::size_t issue_pos_ = 0;             // next trace position to consider for prefetch
    std::size_t ahead_count_ = 0, ahead_numel_ = 0, live_ = 0;
    std::vector<buffer<T, Space>> idle_;    // released gathered buffers kept for reuse
    std::size_t idle_numel_ = 0;
    coordinator_stats stats_;
    // Parameters on the tier: slice reads in staging buffers.
    param_tier_view tier_;
    staging_pool reads_;
    std::vector<int> read_of_;             // unit -> staging buffer of its read, -1: none
    std::vector<int> free_reads_;          // staging buffers not in use
    std::vector<swap_ticket> read_ticket_; // per staging buffer
    std::vector<std::size_t> read_unit_;   // per staging buffer: its unit, npos: free
  };
};

/// @brief Stage 3 with the trace-following prefetch; 16-bit shard in memory.
using prefetch_trace = basic_prefetch_trace<false>;
/// @brief Stage 3 with the 16-bit shard on NVMe, read ahead along the trace (with
/// `master::swapped`: the `infinity` preset).
using prefetch_trace_nvme = basic_prefetch_trace<true>;

}  // namespace coordinate
ZB_NAMESPACE_END
