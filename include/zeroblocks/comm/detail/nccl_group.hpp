/**
 * @file detail/nccl_group.hpp
 * @brief NCCL groups: the thread's group depth and deferred work, `comm::nccl_group` (RAII).
 *
 * Part of `comm::nccl` (`comm/nccl.hpp`, whose header comment describes the whole).
 */
#pragma once

#include "nccl_state.hpp"

ZB_NAMESPACE_BEGIN
namespace detail {


inline void nccl_group_begin() {
  auto& g = nccl_group_now();
  if (g.depth == 0) {
    const ncclResult_t r = ncclGroupStart();
    ZB_REQUIRE(r == ncclSuccess, "comm::nccl: ncclGroupStart failed: ", nccl_error_text(r, nullptr));
  }
  ++g.depth;
}
inline void nccl_group_touch(const std::shared_ptr<nccl_state>& s) {
  auto& t = nccl_group_now().touched;
  if (std::find(t.begin(), t.end(), s) == t.end()) t.push_back(s);
}
inline void nccl_group_defer(std::function<void()> f) { nccl_group_now().after.push_back(std::move(f)); }

/// @brief Abort the communicators that failed while the group was open.
inline void nccl_run_queued_aborts() noexcept {
  auto aborts = std::exchange(nccl_group_now().aborts, {});
  for (auto& w : aborts)
    if (auto s = w.lock()) {
      s->abort_queued = false;
      s->abort_nccl();
    }
}

/// @brief Close one group level; the outermost launches the group (ncclGroupEnd), waits
/// for non-blocking communicators to have enqueued it, then runs the deferred work.
inline void nccl_group_end() {
  auto& g = nccl_group_now();
  if (--g.depth > 0) return;
  auto touched = std::exchange(g.touched, {});
  auto after = std::exchange(g.after, {});
  const ncclResult_t r = ncclGroupEnd();
  // ncclCommAbort frees a communicator: read the group's error text first, and settle
  // only communicators that were not aborted. (Aborts run right away, so a healthy
  // communicator fused with a failed one is not left waiting on the failed one's work.)
  if (r != ncclSuccess && r != ncclInProgress) {
    const ncclComm_t first = touched.empty() ? nullptr : touched.front()->comm;
    const std::string message = concat("comm::nccl: ncclGroupEnd failed: ", nccl_error_text(r, first));
    for (auto& t : touched) t->fail_quietly(message);
    nccl_run_queued_aborts();
    ZB_FAIL(message);
  }
  nccl_run_queued_aborts();
  for (std::size_t i = 0; i < touched.size(); ++i) {
    if (touched[i]->failed || touched[i]->aborted) continue;  // aborted: nothing to wait for
    try {
      touched[i]->settle(touched[i]->comm, "ncclGroupEnd");
    } catch (...) {
      for (std::size_t j = i + 1; j < touched.size(); ++j)
        touched[j]->fail_quietly("comm::nccl: a communicator grouped with this one failed");
      throw;
    }
  }
  std::exception_ptr first;
  for (auto& f : after) {
    try {
      f();
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}
/// @brief Close one group level after an exception: the outermost ends the group and
/// fails the communicators in it (this rank issued a different set of calls than its
/// peers, who would otherwise hang).
inline void nccl_group_abandon(const std::string& why) noexcept {
  auto& g = nccl_group_now();
  if (--g.depth > 0) return;
  auto touched = std::exchange(g.touched, {});
  g.after.clear();
  (void)ncclGroupEnd();
  nccl_run_queued_aborts();
  for (auto& t : touched) t->fail_quietly(why);
}

/// @brief Issue `enqueue()` (NCCL calls) in a group on `st`, then `after()` once launched.
template <class Enqueue>
void nccl_grouped_on(const std::shared_ptr<nccl_state>& st, Enqueue&& enqueue, std::function<void()> after) {
  nccl_group_begin();
  nccl_group_touch(st);
  try {
    enqueue();
    if (after) nccl_group_defer(std::move(after));
  } catch (...) {
    std::string what = "an unknown exception";
    try {
      throw;
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    nccl_group_abandon(concat("comm::nccl: issuing a collective failed on rank ", st->rank, ": ", what));
    throw;
  }
  nccl_group_end();
}

}  // namespace detail

namespace comm {

/// @brief RAII NCCL group: collectives issued on this thread (any `comm::nccl`) while it
/// lives are fused and launched when it ends (`end()`, or the destructor).
class nccl_group {
public:
  nccl_group() : uncaught_(std::uncaught_exceptions()) { detail::nccl_group_begin(); }
  nccl_group(const nccl_group&) = delete;
  nccl_group& operator=(const nccl_group&) = delete;
  /// @brief Ends the group if `end()` was not called. Errors are not thrown from here:
  /// the communicators involved are failed and throw at their next call. Leaving the
  /// scope by an exception abandons the group and fails its communicators.
  ~nccl_group() {
    if (ended_) return;
    if (std::uncaught_exceptions() > uncaught_) {
      detail::nccl_group_abandon("comm::nccl: an exception left a group of NCCL calls half issued");
      return;
    }
    try {
      detail::nccl_group_end();
    } catch (...) {
    }
  }
  /// @brief Launch the group now; throws if launching failed.
  void end() {
    ZB_REQUIRE(!ended_, "comm::nccl::group: end() called twice");
    ended_ = true;
    detail::nccl_group_end();
  }

private:
  bool ended_ = false;
  int uncaught_;
};

}  // namespace comm
ZB_NAMESPACE_END
