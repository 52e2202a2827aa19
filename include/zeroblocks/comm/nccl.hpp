/**
 * @file nccl.hpp
 * @brief `comm::nccl`: the communicator role (see `comm.hpp`) over NCCL, for device
 * buffers. Needs no nvcc; the deterministic reduction's kernel is in `nccl.cuh`.
 *
 * ## Streams and requests
 *
 * Every communicator owns a CUDA stream (non-blocking, `nccl_config::stream_priority`)
 * and runs its collectives there, so they overlap the trainer's computation. The
 * trainer's stream is the *compute stream*: `cuda_space::compute_stream()` of the calling
 * thread — the stream the engine's own copies and kernels run on — unless
 * `set_compute_stream` fixes another for this communicator. A collective is ordered after the work already submitted to the compute
 * stream — it first makes the communicator's stream wait on an event recorded on the
 * compute stream — and `request::wait()` orders the compute stream after the collective
 * by making it wait on the collective's completion event. All of this is stream-ordered:
 * neither `i`-collectives nor `wait()` block the host. So the blocking forms
 * (`all_gather`, `reduce_scatter`, ...) are `i`-form + `wait()`: their result is ready
 * for the next kernel on the compute stream, not yet for the host.
 *
 * To wait on the host: `request::synchronize()` (this collective), `synchronize()`
 * (everything issued on this communicator), `barrier()` (every rank reached it and all
 * their earlier collectives and compute-stream work completed). `request::test()` is a
 * non-blocking query: true once the collective finished on the device (then as if
 * `wait()` was called). Host waits poll rather than block, so a peer's failure
 * (below) or an NCCL error interrupts them.
 *
 * ## Reductions: `nccl_config::reduce`
 *
 * `comm.hpp`'s contract — 16-bit sums accumulate in fp32, in rank order 0..N-1, scaled,
 * rounded once, bit-identical whichever collective carried them — cannot be met by
 * `ncclReduceScatter`/`ncclAllReduce`, which sum in the element type in an order that
 * depends on the algorithm, the topology and the world size.
 *  - `reduce_mode::deterministic` (default) keeps it. A reduce-scatter is an all-to-all
 *    of the blocks (grouped `ncclSend`/`ncclRecv` into a scratch buffer of
 *    `(N-1) * count` elements from the `cuda_space` pool), then one kernel that sums the
 *    N blocks in rank order in fp32, scales and rounds once (`nccl.cuh`). Each rank sends
 *    and receives `(N-1) * count` elements: the bytes of a ring reduce-scatter. The
 *    result is bit-identical with `comm::mpi` and `comm::self` on the same inputs (NaN
 *    payloads aside: any NaN stays a NaN). An all-reduce is that reduce-scatter followed
 *    by an in-place `ncclAllGather`. The kernel is registered by including `nccl.cuh` in
 *    one translation unit compiled by nvcc; without it, constructing a deterministic
 *    communicator throws and says so. (That unit must not use `--use_fast_math` or
 *    `-ftz=true`: flushing subnormals changes the bits.)
 *  - `reduce_mode::native`: `ncclReduceScatter` / `ncclAllReduce` with `ncclSum`, or, when
 *    `scale != 1`, a pre-multiplied sum (`ncclRedOpCreatePreMulSum`, scale rounded to the
 *    element type and applied to each input before the sum). NCCL's tuned algorithms
 *    (NVLS, trees, fewer passes over memory): faster, especially across nodes, but not
 *    bit-identical with `comm::mpi`, nor across world sizes.
 * Both need `count % size() == 0` for an all-reduce, as `comm::mpi` does.
 *
 * ## Bootstrap
 *
 * The ranks agree on an `ncclUniqueId` either over MPI (`nccl(MPI_Comm)`: rank 0 makes
 * it and broadcasts it) or, for single-node runs without MPI, through a file
 * (`nccl(file_bootstrap{dir, name, rank, size})`): rank 0 writes the id to a temporary
 * file and renames it atomically to `<dir>/<name>.ncclid`; the other ranks poll for it
 * and, after `file_bootstrap::timeout`, throw an error naming the path. Rank 0 removes
 * the file once every rank joined. `name` must be unique per job (a leftover file of a
 * crashed job with the same name sends late ranks to a dead rank 0).
 *
 * NCCL needs one GPU per rank: two ranks of one communicator on the same device is an
 * error. Call a communicator from one thread, with its device current (checked).
 *
 * ## Communicators from communicators
 *
 * `dup()` (collective) gives a communicator over the same ranks whose collectives are
 * ordered independently, with a stream of its own (`ncclCommSplit` with one color);
 * `split(color, key)` gives sub-communicators: ranks passing the same color form one,
 * ordered by key, then by rank (a negative color: this rank joins none, and gets an
 * empty communicator, `valid() == false`). Children share their parent's abort channel.
 *
 * ## Grouped calls
 *
 * Collectives issued (on any `comm::nccl`, on this thread) while a `comm::nccl::group`
 * guard lives, or inside `comm::nccl::grouped([&]{...})`, are fused with
 * `ncclGroupStart`/`ncclGroupEnd` and launched when the outermost group ends. Their
 * requests can be waited on only after that.
 *
 * ## Control helpers and failure
 *
 * `all_gather_values`, `all_gather_strings` and `agree` (the engine's small agreements,
 * counted as control traffic exactly as `comm::mpi` counts them) run over NCCL itself —
 * bytes staged through a small device buffer, then a host wait — in both bootstrap
 * modes, so one code path serves both. They do not wait for the compute stream.
 *
 * `abort_peers(message)` tells every other rank that this one failed, over the
 * bootstrap's side channel: point-to-point MPI messages on a private duplicate of the
 * MPI communicator, or an `<dir>/<name>.<nonce>.abort` file. Every host wait, and every
 * call that issues work, watches that channel (and `ncclCommGetAsyncError`), so a rank
 * waiting for a collective a failed peer never joins raises
 * `zeroblocks::error("rank k failed: ...")` instead of hanging. A communicator that
 * failed — an NCCL or CUDA error, a peer's abort — is aborted (`ncclCommAbort`, which
 * also stops its kernels) and throws from then on. NCCL errors name the call, the error
 * (`ncclGetErrorString`) and NCCL's own last message (`ncclGetLastError`).
 *
 * By default communicators are non-blocking (`nccl_config::blocking = false`): NCCL
 * returns from initialisation, splits and finalisation at once and zeroblocks polls for
 * completion, so a rank that never joins (a wrong world size, a crashed peer) gives an
 * error after `nccl_config::init_timeout` rather than a hang.
 *
 * Counting follows `comm.hpp` exactly as `comm::mpi` does (elements per rank: all-gather
 * its output, reduce-scatter its input, all-reduce twice its buffer, broadcast its buffer).
 */
#pragma once

#include "../core/config.hpp"
#include "../core/cuda_check.hpp"
#include "../core/error.hpp"
#include "../core/numeric.hpp"
#include "../space/cuda_space.hpp"
#include "comm.hpp"

#include <cuda_runtime.h>
#include <nccl.h>

/// `ZB_NCCL_WITH_MPI`: offer the MPI bootstrap. On by default when `<mpi.h>` is found
/// (the zeroblocks target links MPI unless ZEROBLOCKS_WITH_MPI is OFF); define it to 0
/// to build without MPI.
#ifndef ZB_NCCL_WITH_MPI
#if __has_include(<mpi.h>)
#define ZB_NCCL_WITH_MPI 1
#else
#define ZB_NCCL_WITH_MPI 0
#endif
#endif
#if ZB_NCCL_WITH_MPI
// We use MPI's C API only; keep the deprecated C++ bindings (and their warnings) out.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>
#endif

#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <source_location>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace comm {

/// @brief How `comm::nccl` reduces (see the header's "Reductions").
enum class reduce_mode {
  deterministic,  ///< all-to-all + fp32 rank-ordered sum kernel: bit-identical with comm::mpi
  native,         ///< ncclReduceScatter / ncclAllReduce: faster, not bit-identical
};

/// @brief Runtime knobs of `comm::nccl`; copied into communicators made by dup()/split().
struct nccl_config {
  /// @brief Reduction algorithm for reduce_scatter / all_reduce.
  reduce_mode reduce = reduce_mode::deterministic;
  /// @brief NCCL blocking communicators: initialisation, split and finalisation block in
  /// NCCL, with no timeout. The default (false) polls them, with `init_timeout`.
  bool blocking = false;
  /// @brief How long initialisation, split and finalisation may take (non-blocking
  /// communicators) before this rank gives up with an error.
  std::chrono::milliseconds init_timeout{std::chrono::minutes(5)};
  /// @brief Priority of the communicator's stream (lower is higher; 0 = default).
  int stream_priority = 0;
  /// @brief Device to use (made current by the constructor); -1: the current device.
  int device = -1;
  /// @brief Name for NCCL's logs (`commName`); empty: none.
  std::string name;
};

/// @brief Bootstrap through a shared directory (single node, no MPI); see the header.
struct file_bootstrap {
  std::string dir;   ///< an existing directory every rank sees
  std::string name;  ///< unique per job: files are `<dir>/<name>.ncclid` and `<dir>/<name>.<nonce>.abort`
  int rank = 0;      ///< this rank, 0..size-1 (rank 0 creates the id)
  int size = 1;      ///< number of ranks
  /// @brief How long ranks other than 0 wait for the id file.
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
};

}  // namespace comm

namespace detail {

template <class>
inline constexpr bool nccl_always_false = false;

/// @brief The NCCL datatype of an element type.
template <class T>
constexpr ncclDataType_t nccl_datatype() {
  if constexpr (std::is_same_v<T, float>) return ncclFloat32;
  else if constexpr (std::is_same_v<T, half>) return ncclFloat16;
  else if constexpr (std::is_same_v<T, bfloat16>) return ncclBfloat16;
  else static_assert(nccl_always_false<T>, "comm::nccl: element type must be float, half or bfloat16");
}

/// @brief Launches, on `s`: out[i] = T(scale * sum_{j<nblocks} float(block_j[i])) for
/// i < count, block `self` being `mine` and block j != self being
/// `others + (j - (j > self)) * count`. `out` may alias `mine`. Defined in `nccl.cuh`.
using nccl_block_reduce_fn = cudaError_t (*)(const void* mine, const void* others, int self, int nblocks,
                                             std::size_t count, float scale, void* out, cudaStream_t s);

/// @brief The block-reduction kernels, one per element type; filled in by `nccl.cuh`.
struct nccl_block_reducers {
  nccl_block_reduce_fn f32 = nullptr;
  nccl_block_reduce_fn f16 = nullptr;
  nccl_block_reduce_fn bf16 = nullptr;
};
inline nccl_block_reducers& nccl_reducers() noexcept {
  static nccl_block_reducers r;
  return r;
}
template <class T>
nccl_block_reduce_fn nccl_reducer() noexcept {
  if constexpr (std::is_same_v<T, float>) return nccl_reducers().f32;
  else if constexpr (std::is_same_v<T, half>) return nccl_reducers().f16;
  else return nccl_reducers().bf16;
}

/// @brief "ncclX error text: NCCL's last message".
inline std::string nccl_error_text(ncclResult_t r, ncclComm_t c) {
  std::string s = ncclGetErrorString(r);
  const char* last = ncclGetLastError(c);
  if (last && *last) s += std::string(": ") + last;
  return s;
}

/// @brief Spin, then yield, then sleep: host waits that stay responsive without
/// burning a core for long.
inline void nccl_backoff(unsigned n) {
  if (n < 64) return;
  if (n < 2048) std::this_thread::yield();
  else std::this_thread::sleep_for(std::chrono::microseconds(50));
}

/// @brief The side channel a failed rank uses to tell its peers (shared by a
/// communicator and those made from it by dup/split).
class nccl_abort_channel {
public:
  virtual ~nccl_abort_channel() = default;

  /// @brief Tell every other rank that `rank` failed. Idempotent; never blocks or throws.
  /// Nothing is sent once a peer's failure was received (that is what we would report).
  void send(int rank, const std::string& message) noexcept {
    if (failed_) return;
    failed_ = true;
    sent_ = true;
    try {
      reason_ = concat("comm::nccl: unusable after rank ", rank, " failed: ", message);
      do_send(message);
    } catch (...) {
      // Best effort: peers may then only notice through NCCL itself.
    }
  }
  /// @brief Look for a peer's message (at most every 100 µs); true once failed.
  bool poll() noexcept {
    if (failed_) return true;
    const auto now = std::chrono::steady_clock::now();
    if (now < next_poll_) return false;
    next_poll_ = now + std::chrono::microseconds(100);
    try {
      if (auto m = do_poll()) {
        failed_ = true;
        reason_ = std::move(*m);
      }
    } catch (...) {
    }
    return failed_;
  }
  bool failed() const noexcept { return failed_; }
  bool peer_failed() const noexcept { return failed_ && !sent_; }
  /// @brief "rank k failed: message" (or this rank's own failure).
  const std::string& reason() const noexcept { return reason_; }

protected:
  virtual void do_send(const std::string& message) = 0;
  virtual std::optional<std::string> do_poll() = 0;

private:
  bool failed_ = false;
  bool sent_ = false;
  std::string reason_;
  std::chrono::steady_clock::time_point next_poll_{};
};

#if ZB_NCCL_WITH_MPI
/// @brief Abort messages over a private duplicate of the bootstrap MPI communicator
/// (the scheme of `comm::mpi`: a posted receive, tested while waiting).
class nccl_mpi_abort_channel final : public nccl_abort_channel {
public:
  explicit nccl_mpi_abort_channel(MPI_Comm parent) {
    check(MPI_Comm_dup(parent, &comm_), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    // A freed communicator's context id is reused: a generation agreed by all ranks,
    // used as the tag, keeps a stale message from matching this channel's receive.
    static int last_generation = 0;
    int mine = last_generation + 1, agreed = 0;
    check(MPI_Allreduce(&mine, &agreed, 1, MPI_INT, MPI_MAX, comm_), "MPI_Allreduce");
    last_generation = agreed;
    tag_ = 1 + agreed % 30000;
    check(MPI_Irecv(in_.get(), capacity, MPI_CHAR, MPI_ANY_SOURCE, tag_, comm_, &req_), "MPI_Irecv");
  }
  nccl_mpi_abort_channel(const nccl_mpi_abort_channel&) = delete;
  nccl_mpi_abort_channel& operator=(const nccl_mpi_abort_channel&) = delete;
  ~nccl_mpi_abort_channel() override {
    int fin = 0;
    MPI_Finalized(&fin);
    if (fin || comm_ == MPI_COMM_NULL) return;
    if (req_ != MPI_REQUEST_NULL) {
      MPI_Cancel(&req_);
      MPI_Wait(&req_, MPI_STATUS_IGNORE);
    }
    for (int flag = 1; flag;) {  // drop messages never received (several peers failed)
      MPI_Status st;
      MPI_Iprobe(MPI_ANY_SOURCE, tag_, comm_, &flag, &st);
      if (flag) MPI_Recv(in_.get(), capacity, MPI_CHAR, st.MPI_SOURCE, tag_, comm_, MPI_STATUS_IGNORE);
    }
    if (failed()) return;  // sends may still be in flight: leak the communicator, the process ends soon
    MPI_Comm_free(&comm_);
  }

protected:
  static bool mpi_usable() {
    int fin = 0;
    MPI_Finalized(&fin);
    return !fin;
  }
  void do_send(const std::string& message) override {
    if (!mpi_usable()) return;
    // The sends are freed, not waited for: the buffer must outlive them (leaked).
    char* out = new char[capacity]();
    std::strncpy(out, message.c_str(), capacity - 1);
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      MPI_Request q;
      if (MPI_Isend(out, capacity, MPI_CHAR, r, tag_, comm_, &q) == MPI_SUCCESS) MPI_Request_free(&q);
    }
  }
  std::optional<std::string> do_poll() override {
    if (req_ == MPI_REQUEST_NULL || !mpi_usable()) return std::nullopt;
    int flag = 0;
    MPI_Status st;
    if (MPI_Test(&req_, &flag, &st) != MPI_SUCCESS || !flag) return std::nullopt;
    req_ = MPI_REQUEST_NULL;
    return concat("rank ", st.MPI_SOURCE, " failed: ", in_.get());
  }

private:
  static constexpr int capacity = 1024;
  static void check(int rc, const char* what) {
    ZB_REQUIRE(rc == MPI_SUCCESS, "comm::nccl: ", what, " failed (MPI error ", rc, ") creating the abort channel");
  }
  MPI_Comm comm_ = MPI_COMM_NULL;
  MPI_Request req_ = MPI_REQUEST_NULL;
  int rank_ = 0;
  int size_ = 1;
  int tag_ = 1;
  std::unique_ptr<char[]> in_ = std::make_unique<char[]>(capacity);
};
#endif

/// @brief Abort messages through a file: the first rank that fails links
/// "<rank>\n<message>" into place at `path`; the others look for it.
class nccl_file_abort_channel final : public nccl_abort_channel {
public:
  nccl_file_abort_channel(std::filesystem::path path, int rank) : path_(std::move(path)), rank_(rank) {}
  const std::filesystem::path& path() const noexcept { return path_; }

protected:
  void do_send(const std::string& message) override {
    std::filesystem::path tmp = path_;
    tmp += concat(".", rank_, ".", ::getpid(), ".tmp");
    {
      std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
      f << rank_ << '\n' << message;
    }
    std::error_code ec;
    std::filesystem::create_hard_link(tmp, path_, ec);  // fails if a peer was first: keep its message
    std::filesystem::remove(tmp, ec);
  }
  std::optional<std::string> do_poll() override {
    std::error_code ec;
    if (!std::filesystem::exists(path_, ec)) return std::nullopt;
    std::ifstream f(path_, std::ios::binary);
    std::string first, rest;
    std::getline(f, first);
    std::ostringstream os;
    os << f.rdbuf();
    rest = os.str();
    return concat("rank ", first.empty() ? std::string("?") : first, " failed: ", rest);
  }

private:
  std::filesystem::path path_;
  int rank_;
};

struct nccl_state;

/// @brief This thread's NCCL group: depth, the communicators with operations in it, what
/// must run once it is launched (events, kernels, second phases) in issue order, and the
/// communicators to abort once it is closed (NCCL would defer an abort made inside a
/// group to the group's end anyway; we make that explicit).
struct nccl_group_state {
  int depth = 0;
  std::vector<std::shared_ptr<nccl_state>> touched;
  std::vector<std::function<void()>> after;
  std::vector<std::weak_ptr<nccl_state>> aborts;
};
inline nccl_group_state& nccl_group_now() {
  thread_local nccl_group_state g;
  return g;
}

/// @brief What a communicator and its requests share: the NCCL handle, the stream, the
/// event pool, the abort channel, the failure state. It outlives the `comm::nccl` while
/// requests hold it.
struct nccl_state : std::enable_shared_from_this<nccl_state> {
  ncclComm_t comm = nullptr;
  int rank = 0;
  int size = 0;
  int device = 0;
  comm::nccl_config cfg;
  std::shared_ptr<nccl_abort_channel> channel;
  cudaStream_t stream = nullptr;   ///< owned: where the collectives run
  /// The trainer's stream (not owned); unset: `cuda_space::compute_stream()` of the
  /// calling thread, the stream the engine's own copies and kernels run on.
  std::optional<cudaStream_t> compute;
  cudaEvent_t ready = nullptr;  ///< recorded on the compute stream before each collective
  std::vector<cudaEvent_t> spare_events;
  void* barrier_word = nullptr;  ///< a few bytes of device memory barriers reduce
  bool aborted = false;          ///< ncclCommAbort was called
  bool abort_queued = false;     ///< to be aborted when this thread's group closes
  bool failed = false;           ///< unusable; `reason` says why
  std::string reason;

  nccl_state() = default;
  nccl_state(const nccl_state&) = delete;
  /// @brief The stream collectives follow and `wait()` orders, now.
  cudaStream_t compute_now() const { return compute ? *compute : cuda_space::compute_stream(); }
  nccl_state& operator=(const nccl_state&) = delete;

  /// @brief Wrap an NCCL communicator being initialised (`ncclCommInitRankConfig` or
  /// `ncclCommSplit` returned it): wait for it (non-blocking), then make the stream,
  /// events and barrier word. On failure the communicator is aborted, peers are told.
  static std::shared_ptr<nccl_state> make(ncclComm_t c, int rank, int size, const comm::nccl_config& cfg,
                                          std::shared_ptr<nccl_abort_channel> channel,
                                          std::optional<cudaStream_t> compute,
                                          const char* what) {
    auto s = std::make_shared<nccl_state>();
    s->comm = c;
    s->rank = rank;
    s->size = size;
    s->cfg = cfg;
    s->channel = std::move(channel);
    s->compute = compute;
    // The current device is the communicator's (checked below): if settling fails, the
    // destructor must not make another device current.
    if (cudaGetDevice(&s->device) != cudaSuccess) s->device = 0;
    s->settle(c, what, cfg.init_timeout);
    try {
      ZB_REQUIRE(ncclCommUserRank(c, &s->rank) == ncclSuccess && ncclCommCount(c, &s->size) == ncclSuccess &&
                     ncclCommCuDevice(c, &s->device) == ncclSuccess,
                 "comm::nccl: querying the new communicator failed");
      ZB_CUDA_CHECK(cudaStreamCreateWithPriority(&s->stream, cudaStreamNonBlocking, cfg.stream_priority));
      ZB_CUDA_CHECK(cudaEventCreateWithFlags(&s->ready, cudaEventDisableTiming));
      s->barrier_word = cuda_space::allocate(16);
    } catch (const std::exception& e) {
      s->fail_quietly(concat("comm::nccl: setting up the communicator on rank ", rank, " failed: ", e.what()));
      throw;
    }
    return s;
  }

  ~nccl_state() {
    int previous = -1;
    const bool switch_device = cudaGetDevice(&previous) == cudaSuccess && previous != device;
    if (switch_device) (void)cudaSetDevice(device);
    if (comm && !aborted) {
      bool ok = !failed && !(channel && channel->poll());
      if (ok) {
        try {
          // Let issued work finish (watching for a peer's failure), then finalise.
          host_wait([&] { return query(cudaStreamQuery(stream), "cudaStreamQuery"); });
          const ncclResult_t r = ncclCommFinalize(comm);
          if (r == ncclSuccess || r == ncclInProgress) settle(comm, "ncclCommFinalize", cfg.init_timeout);
          else ok = false;
        } catch (...) {
          ok = false;
        }
      }
      if (ok && !aborted) {
        (void)ncclCommDestroy(comm);
      } else if (!aborted) {
        (void)ncclCommAbort(comm);  // directly: no group can outlive us usefully
        aborted = true;
      }
    }
    if (barrier_word) (void)cudaFreeAsync(barrier_word, stream ? stream : cudaStreamLegacy);
    if (stream) {
      (void)cudaStreamSynchronize(stream);
      (void)cudaStreamDestroy(stream);
    }
    if (ready) (void)cudaEventDestroy(ready);
    for (cudaEvent_t e : spare_events) (void)cudaEventDestroy(e);
    (void)cudaGetLastError();
    if (switch_device) (void)cudaSetDevice(previous);
  }

  /// @brief An event for a collective's completion (from the pool).
  cudaEvent_t take_event() {
    if (!spare_events.empty()) {
      cudaEvent_t e = spare_events.back();
      spare_events.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    cuda_ok(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    return e;
  }
  void give_event(cudaEvent_t e) noexcept { spare_events.push_back(e); }

  /// @brief Stop the NCCL communicator (and its kernels). Idempotent. Inside a group,
  /// queued until the group is closed.
  void abort_nccl() noexcept {
    if (!comm || aborted) {
      aborted = true;
      return;
    }
    auto& g = nccl_group_now();
    if (g.depth > 0) {
      if (!abort_queued) {
        try {
          g.aborts.push_back(weak_from_this());
          abort_queued = true;
          return;
        } catch (...) {
          // (no memory: abort now)
        }
      } else {
        return;
      }
    }
    (void)ncclCommAbort(comm);
    aborted = true;
    abort_queued = false;
  }
  /// @brief Mark failed, tell the peers, abort NCCL; no throw.
  void fail_quietly(const std::string& message) noexcept {
    if (!failed) {
      failed = true;
      try {
        reason = message;
      } catch (...) {
      }
    }
    if (channel) channel->send(rank, message);
    abort_nccl();
  }
  /// @brief Mark failed (telling the peers unless `tell_peers` is false), abort NCCL, throw.
  [[noreturn]] void fail(const std::string& message, bool tell_peers = true,
                         std::source_location loc = std::source_location::current()) {
    if (tell_peers) {
      fail_quietly(message);
    } else {
      if (!failed) {
        failed = true;
        reason = message;
      }
      abort_nccl();
    }
    throw error(message, location_string(loc));
  }
  void cuda_ok(cudaError_t e, const char* what, std::source_location loc = std::source_location::current()) {
    if (e != cudaSuccess)
      fail(concat("comm::nccl: ", what, " failed on rank ", rank, ": ", cuda_error_text(e)), true, loc);
  }
  void nccl_ok(ncclResult_t r, const char* what, std::source_location loc = std::source_location::current()) {
    if (r != ncclSuccess && r != ncclInProgress)
      fail(concat("comm::nccl: ", what, " failed on rank ", rank, ": ", nccl_error_text(r, comm)), true, loc);
  }
  /// @brief cudaSuccess → true, cudaErrorNotReady → false, anything else fails.
  bool query(cudaError_t e, const char* what) {
    if (e == cudaErrorNotReady) {
      (void)cudaGetLastError();
      return false;
    }
    cuda_ok(e, what);
    return true;
  }

  /// @brief Throw if this communicator failed, a peer reported failure, or NCCL reports an
  /// asynchronous error (in the last two cases, abort it first).
  void check(std::source_location loc = std::source_location::current()) {
    if (failed) throw error(reason, location_string(loc));
    if (channel && channel->poll()) fail(channel->reason(), false, loc);
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm, &state);
    if (r != ncclSuccess)
      fail(concat("comm::nccl: ncclCommGetAsyncError failed on rank ", rank, ": ", nccl_error_text(r, comm)), true,
           loc);
    if (state != ncclSuccess && state != ncclInProgress)
      fail(concat("comm::nccl: NCCL reported an error on rank ", rank, ": ", nccl_error_text(state, comm)), true, loc);
  }

  /// @brief Wait (host) until a non-blocking communicator `c` has finished what it was
  /// doing (`what`), watching the abort channel; `timeout` 0 = none.
  void settle(ncclComm_t c, const char* what, std::chrono::milliseconds timeout = std::chrono::milliseconds(0)) {
    const auto start = std::chrono::steady_clock::now();
    for (unsigned n = 0;; ++n) {
      ncclResult_t state = ncclInProgress;
      const ncclResult_t r = ncclCommGetAsyncError(c, &state);
      if (r != ncclSuccess) fail(concat("comm::nccl: ", what, " on rank ", rank, ": ", nccl_error_text(r, c)));
      if (state == ncclSuccess) return;
      if (state != ncclInProgress)
        fail(concat("comm::nccl: ", what, " failed on rank ", rank, ": ", nccl_error_text(state, c)));
      if (channel && channel->poll()) fail(channel->reason(), false);
      if (timeout.count() > 0 && std::chrono::steady_clock::now() - start > timeout)
        fail(concat("comm::nccl: ", what, " did not complete within ",
                    std::chrono::duration<double>(timeout).count(), " s on rank ", rank, " (do all ", size,
                    " ranks make this call?)"));
      nccl_backoff(n);
    }
  }

  /// @brief Poll `done()` until true, checking for failures while waiting.
  template <class Done>
  void host_wait(Done&& done) {
    for (unsigned n = 0; !done(); ++n) {
      if (n >= 64) check();
      nccl_backoff(n);
    }
  }
};

/// @brief One issued operation: its completion event, recorded once it is on the stream.
struct nccl_op {
  std::shared_ptr<nccl_state> st;
  cudaEvent_t done = nullptr;
  bool recorded = false;

  explicit nccl_op(std::shared_ptr<nccl_state> s) : st(std::move(s)) { done = st->take_event(); }
  nccl_op(const nccl_op&) = delete;
  nccl_op& operator=(const nccl_op&) = delete;
  ~nccl_op() {
    if (done) st->give_event(done);
  }
  void record() {
    st->cuda_ok(cudaEventRecord(done, st->stream), "cudaEventRecord");
    recorded = true;
  }
};

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

/// @brief The NCCL communicator configuration for our knobs.
inline ncclConfig_t nccl_make_config(const comm::nccl_config& cfg) {
  ncclConfig_t c = NCCL_CONFIG_INITIALIZER;
  c.blocking = cfg.blocking ? 1 : 0;
  if (!cfg.name.empty()) {
    // NCCL may keep the pointer for the communicator's life: names are interned for good.
    static std::mutex m;
    static auto* names = new std::set<std::string>();
    std::lock_guard<std::mutex> lock(m);
    c.commName = names->insert(cfg.name).first->c_str();
  }
  return c;
}

/// @brief A 16-hex-digit random token.
inline std::string nccl_nonce() {
  std::random_device rd;
  const std::uint64_t v = (static_cast<std::uint64_t>(rd()) << 32) ^ rd() ^
                          static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
                          (static_cast<std::uint64_t>(::getpid()) << 16);
  std::ostringstream os;
  os << std::hex;
  os.width(16);
  os.fill('0');
  os << v;
  return os.str();
}

inline constexpr const char* nccl_id_magic = "zeroblocks-nccl-id";

/// @brief Rank 0's side of the file bootstrap: write, then rename into place (atomic).
inline void nccl_write_id_file(const std::filesystem::path& path, int size, const std::string& nonce,
                               const ncclUniqueId& id) {
  std::filesystem::path tmp = path;
  tmp += concat(".", ::getpid(), ".tmp");
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << nccl_id_magic << " 1 " << size << ' ' << nonce << '\n';
    f.write(id.internal, NCCL_UNIQUE_ID_BYTES);
    f.flush();
    ZB_REQUIRE(f.good(), "comm::nccl: cannot write the NCCL id file '", tmp.string(), "'");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  ZB_REQUIRE(!ec, "comm::nccl: cannot rename '", tmp.string(), "' to '", path.string(), "': ", ec.message());
}

/// @brief The other ranks' side: poll for the file until `timeout`.
inline std::pair<ncclUniqueId, std::string> nccl_read_id_file(const std::filesystem::path& path, int rank,
                                                               int size, std::chrono::milliseconds timeout) {
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    std::error_code ec;
    if (std::filesystem::exists(path, ec)) {
      std::ifstream f(path, std::ios::binary);
      std::string line;
      std::getline(f, line);
      std::istringstream head(line);
      std::string magic, nonce;
      int version = 0, n = 0;
      head >> magic >> version >> n >> nonce;
      ncclUniqueId id{};
      f.read(id.internal, NCCL_UNIQUE_ID_BYTES);
      ZB_REQUIRE(magic == nccl_id_magic && version == 1 && f.gcount() == NCCL_UNIQUE_ID_BYTES,
                 "comm::nccl: '", path.string(), "' is not a zeroblocks NCCL id file");
      ZB_REQUIRE(n == size, "comm::nccl: rank ", rank, " expects ", size, " ranks but the NCCL id file '",
                 path.string(), "' was written for ", n, " (same name used by another job?)");
      return {id, nonce};
    }
    if (std::chrono::steady_clock::now() - start > timeout)
      ZB_FAIL("comm::nccl: rank ", rank, " timed out after ", std::chrono::duration<double>(timeout).count(),
              " s waiting for the NCCL id file '", path.string(),
              "' that rank 0 writes (is rank 0 running, with the same directory and name?)");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
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

/// @brief Collectives over NCCL for device buffers (see the header for streams,
/// requests, reduction modes, bootstrap and failure handling).
class nccl {
public:
  using communicator_concept = communicator_tag;
  static constexpr const char* name = "nccl";
  /// Payload buffers are device buffers.
  static constexpr bool device_memory = true;
  /// @brief RAII group guard (see `nccl_group`).
  using group = nccl_group;

  /// @brief A collective in flight. `wait()` is stream-ordered (the compute stream waits
  /// for it); `synchronize()` waits on the host; `test()` asks without blocking. Move-only;
  /// dropping a pending request leaves the collective to complete on its own.
  class request {
  public:
    request() = default;
    request(const request&) = delete;
    request& operator=(const request&) = delete;
    request(request&&) noexcept = default;
    request& operator=(request&&) noexcept = default;

    /// @brief Order the compute stream (as set when `wait()` is called) after the
    /// collective. Does not block the host. Throws if the communicator failed.
    void wait() {
      if (!op_) return;
      launched_or_throw();
      auto op = std::move(op_);
      op->st->check();
      op->st->cuda_ok(cudaStreamWaitEvent(op->st->compute_now(), op->done, 0), "cudaStreamWaitEvent");
    }
    /// @brief True (and then as `wait()`) once the collective completed on the device.
    bool test() {
      if (!op_) return true;
      if (!op_->recorded && detail::nccl_group_now().depth > 0) return false;
      launched_or_throw();
      op_->st->check();
      if (!op_->st->query(cudaEventQuery(op_->done), "cudaEventQuery")) return false;
      wait();
      return true;
    }
    /// @brief Block the host until the collective completed (then as `wait()`), raising
    /// instead of hanging if a peer fails meanwhile.
    void synchronize() {
      if (!op_) return;
      launched_or_throw();
      auto& st = *op_->st;
      const cudaEvent_t e = op_->done;
      st.host_wait([&] { return st.query(cudaEventQuery(e), "cudaEventQuery"); });
      wait();
    }
    /// @brief Not yet waited on.
    bool pending() const { return op_ != nullptr; }

  private:
    friend class nccl;
    explicit request(std::shared_ptr<detail::nccl_op> op) : op_(std::move(op)) {}
    void launched_or_throw() const {
      if (op_->recorded) return;
      ZB_REQUIRE(detail::nccl_group_now().depth == 0,
                 "comm::nccl: waiting on a request issued inside a group that has not ended yet: end the group first");
      ZB_FAIL(op_->st->failed ? op_->st->reason : std::string("comm::nccl: the collective was never launched"));
    }
    std::shared_ptr<detail::nccl_op> op_;
  };

#if ZB_NCCL_WITH_MPI
  /// @brief Bootstrap over MPI (collective over `parent`): rank r of `parent` becomes
  /// rank r here; `parent` also carries the abort channel (on a duplicate).
  explicit nccl(MPI_Comm parent, nccl_config cfg = {}) {
    check_config(cfg);
    int init = 0;
    MPI_Initialized(&init);
    ZB_REQUIRE(init, "comm::nccl: MPI is not initialised; call MPI_Init_thread first");
    int rank = 0, size = 1;
    MPI_Comm_rank(parent, &rank);
    MPI_Comm_size(parent, &size);
    if (cfg.device >= 0) ZB_CUDA_CHECK(cudaSetDevice(cfg.device));
    auto channel = std::make_shared<detail::nccl_mpi_abort_channel>(parent);
    struct {
      ncclUniqueId id;
      int ok;
      char text[512];
    } blob;
    std::memset(&blob, 0, sizeof blob);
    if (rank == 0) {
      const ncclResult_t r = ncclGetUniqueId(&blob.id);
      blob.ok = r == ncclSuccess;
      if (!blob.ok) std::strncpy(blob.text, detail::nccl_error_text(r, nullptr).c_str(), sizeof blob.text - 1);
    }
    ZB_REQUIRE(MPI_Bcast(&blob, sizeof blob, MPI_BYTE, 0, parent) == MPI_SUCCESS,
               "comm::nccl: broadcasting the NCCL id over MPI failed");
    ZB_REQUIRE(blob.ok, "comm::nccl: rank 0 could not create the NCCL id (ncclGetUniqueId): ", blob.text);
    st_ = init_rank(blob.id, rank, size, cfg, std::move(channel));
  }
#endif

  /// @brief Bootstrap through a file in a shared directory (single node, no MPI).
  explicit nccl(const file_bootstrap& boot, nccl_config cfg = {}) {
    namespace fs = std::filesystem;
    check_config(cfg);
    ZB_REQUIRE(boot.size >= 1 && boot.rank >= 0 && boot.rank < boot.size, "comm::nccl: file_bootstrap rank ",
               boot.rank, " / size ", boot.size, " out of range");
    ZB_REQUIRE(!boot.name.empty() && boot.name.find('/') == std::string::npos,
               "comm::nccl: file_bootstrap name '", boot.name, "' must be a non-empty file name");
    std::error_code ec;
    ZB_REQUIRE(fs::is_directory(boot.dir, ec), "comm::nccl: file_bootstrap directory '", boot.dir,
               "' does not exist");
    if (cfg.device >= 0) ZB_CUDA_CHECK(cudaSetDevice(cfg.device));
    const fs::path id_path = fs::path(boot.dir) / (boot.name + ".ncclid");
    ncclUniqueId id{};
    std::string nonce;
    if (boot.rank == 0) {
      const ncclResult_t r = ncclGetUniqueId(&id);
      ZB_REQUIRE(r == ncclSuccess, "comm::nccl: ncclGetUniqueId failed: ", detail::nccl_error_text(r, nullptr));
      nonce = detail::nccl_nonce();
      detail::nccl_write_id_file(id_path, boot.size, nonce, id);
    } else {
      std::tie(id, nonce) = detail::nccl_read_id_file(id_path, boot.rank, boot.size, boot.timeout);
    }
    auto channel = std::make_shared<detail::nccl_file_abort_channel>(
        fs::path(boot.dir) / (boot.name + "." + nonce + ".abort"), boot.rank);
    try {
      st_ = init_rank(id, boot.rank, boot.size, cfg, std::move(channel));
    } catch (...) {
      if (boot.rank == 0) fs::remove(id_path, ec);
      throw;
    }
    // Initialisation completes once every rank joined, so all have read the file.
    if (boot.rank == 0) fs::remove(id_path, ec);
  }

  /// @brief An empty communicator (`valid() == false`).
  nccl() = default;
  nccl(const nccl&) = delete;
  nccl& operator=(const nccl&) = delete;
  nccl(nccl&&) noexcept = default;
  nccl& operator=(nccl&&) noexcept = default;
  /// @brief Finalises the NCCL communicator once its work is done and no request holds it
  /// (aborts it instead after a failure).
  ~nccl() = default;

  /// @brief A communicator over the same ranks, ordered independently, with its own
  /// stream and the same configuration and compute stream. Collective.
  nccl dup() const { return split(0, rank()); }

  /// @brief Sub-communicators (collective over this one): ranks with the same `color`
  /// form one, ordered by `key` then by rank here. A negative color joins none and gets
  /// an empty communicator.
  nccl split(int color, int key) const {
    ensure_usable();
    ZB_REQUIRE(detail::nccl_group_now().depth == 0, "comm::nccl: dup()/split() inside a group");
    auto& st = *st_;
    // NCCL wants no operation outstanding on the parent while it splits.
    st.host_wait([&] { return st.query(cudaStreamQuery(st.stream), "cudaStreamQuery"); });
    ncclConfig_t c = detail::nccl_make_config(st.cfg);
    ncclComm_t child = nullptr;
    st.nccl_ok(ncclCommSplit(st.comm, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &child, &c), "ncclCommSplit");
    st.settle(st.comm, "ncclCommSplit", st.cfg.init_timeout);
    if (!child) return nccl();
    // make() aborts the child itself if it fails. (Messages name the parent's rank and
    // size until the child is ready.)
    return nccl(detail::nccl_state::make(child, st.rank, st.size, st.cfg, st.channel, st.compute, "ncclCommSplit"));
  }

  /// @brief False for an empty communicator (default-constructed, moved from, or a split
  /// this rank did not join).
  bool valid() const { return st_ != nullptr; }
  int rank() const { return st_ ? st_->rank : -1; }
  int size() const { return st_ ? st_->size : 0; }
  const comm_counters& counters() const { return counters_; }
  /// @brief The NCCL communicator.
  ncclComm_t handle() const { return st_ ? st_->comm : nullptr; }
  /// @brief The stream the collectives run on.
  cudaStream_t stream() const { return st_ ? st_->stream : nullptr; }
  /// @brief The CUDA device of this communicator.
  int device() const { return st_ ? st_->device : -1; }
  const nccl_config& config() const {
    ZB_REQUIRE(st_, "comm::nccl: empty communicator");
    return st_->cfg;
  }
  /// @brief The trainer's stream that collectives follow and `request::wait()` orders.
  /// Unset (the default), it is `cuda_space::compute_stream()` of the calling thread —
  /// the stream the engine's copies and kernels run on — so the two cannot disagree.
  void set_compute_stream(cudaStream_t s) {
    ZB_REQUIRE(st_, "comm::nccl: empty communicator");
    st_->compute = s;
  }
  /// @brief Go back to following `cuda_space::compute_stream()`.
  void follow_space_compute_stream() {
    ZB_REQUIRE(st_, "comm::nccl: empty communicator");
    st_->compute.reset();
  }
  cudaStream_t compute_stream() const { return st_ ? st_->compute_now() : nullptr; }
  /// @brief Collectives progress on the GPU without host calls.
  bool async_progress() const { return true; }
  /// @brief True once this communicator failed or a peer reported failure.
  bool failed() const {
    if (!st_) return false;
    return st_->failed || (st_->channel && st_->channel->poll());
  }
  /// @brief True when the failure came from another rank (it told everyone already).
  bool peer_failed() const {
    if (!st_ || !st_->channel) return false;
    st_->channel->poll();
    return st_->channel->peer_failed();
  }

  /// @brief Block the host until every collective issued on this communicator completed.
  void synchronize() {
    ensure_usable();
    auto& st = *st_;
    st.host_wait([&] { return st.query(cudaStreamQuery(st.stream), "cudaStreamQuery"); });
  }

  // ---- payload collectives ------------------------------------------------------

  /// @brief All-gather: `recv` gets `count * size()` elements, block r from rank r. In
  /// place when `send == recv + rank() * count`.
  template <class T>
  request iall_gather(const T* send, T* recv, std::size_t count) {
    ensure_usable();
    counters_.count(collective::all_gather, count * static_cast<std::size_t>(size()));
    if (count == 0) return {};
    detail::nccl_state* st = st_.get();
    return launch(true, [=] {
      st->nccl_ok(ncclAllGather(send, recv, count, detail::nccl_datatype<T>(), st->comm, st->stream), "ncclAllGather");
    }, nullptr);
  }
  template <class T>
  void all_gather(const T* send, T* recv, std::size_t count) {
    iall_gather(send, recv, count).wait();
  }

  /// @brief Reduce-scatter: `buf` holds `count * size()` elements; rank r's `recv` gets
  /// `scale * sum_j buf_j[r]` (see `reduce_mode`). `recv` may be `buf + rank() * count`.
  /// `buf` is left unchanged here, but callers must treat it as clobbered (comm.hpp).
  template <class T>
  request ireduce_scatter(T* buf, T* recv, std::size_t count, float scale) {
    ensure_usable();
    counters_.count(collective::reduce_scatter, count * static_cast<std::size_t>(size()));
    if (count == 0) return {};
    if (st_->cfg.reduce == reduce_mode::native) {
      detail::nccl_state* st = st_.get();
      const ncclRedOp_t op = scaled_sum<T>(scale);
      return launch(true, [=] {
        st->nccl_ok(ncclReduceScatter(buf, recv, count, detail::nccl_datatype<T>(), op, st->comm, st->stream),
                    "ncclReduceScatter");
      }, release_op(op));
    }
    return deterministic_reduce(buf, recv, count, scale, false);
  }
  template <class T>
  void reduce_scatter(T* buf, T* recv, std::size_t count, float scale) {
    ireduce_scatter(buf, recv, count, scale).wait();
  }

  /// @brief In-place all-reduce times `scale`; `count % size() == 0` (pad the buffer).
  template <class T>
  request iall_reduce(T* buf, std::size_t count, float scale) {
    ensure_usable();
    ZB_REQUIRE(count % static_cast<std::size_t>(size()) == 0, "comm::nccl::all_reduce: count ", count,
               " is not a multiple of the world size ", size(), " (pad the buffer)");
    counters_.count(collective::all_reduce, 2 * count);
    if (count == 0) return {};
    if (st_->cfg.reduce == reduce_mode::native) {
      detail::nccl_state* st = st_.get();
      const ncclRedOp_t op = scaled_sum<T>(scale);
      return launch(true, [=] {
        st->nccl_ok(ncclAllReduce(buf, buf, count, detail::nccl_datatype<T>(), op, st->comm, st->stream),
                    "ncclAllReduce");
      }, release_op(op));
    }
    const std::size_t block = count / static_cast<std::size_t>(size());
    return deterministic_reduce(buf, buf + static_cast<std::size_t>(rank()) * block, block, scale, true);
  }
  template <class T>
  void all_reduce(T* buf, std::size_t count, float scale) {
    iall_reduce(buf, count, scale).wait();
  }

  /// @brief Broadcast `count` elements of `buf` from `root`, in place.
  template <class T>
  request ibroadcast(T* buf, std::size_t count, int root) {
    ensure_usable();
    ZB_REQUIRE(root >= 0 && root < size(), "comm::nccl::broadcast: root ", root, " out of range");
    counters_.count(collective::broadcast, count);
    if (count == 0) return {};
    detail::nccl_state* st = st_.get();
    return launch(true, [=] {
      st->nccl_ok(ncclBroadcast(buf, buf, count, detail::nccl_datatype<T>(), root, st->comm, st->stream),
                  "ncclBroadcast");
    }, nullptr);
  }
  template <class T>
  void broadcast(T* buf, std::size_t count, int root) {
    ibroadcast(buf, count, root).wait();
  }

  /// @brief Stream-ordered barrier: completes (on the device) once every rank's compute
  /// stream reached it. Not counted.
  request ibarrier() {
    ensure_usable();
    detail::nccl_state* st = st_.get();
    return launch(true, [=] {
      st->nccl_ok(ncclAllReduce(st->barrier_word, st->barrier_word, 1, ncclUint8, ncclMax, st->comm, st->stream),
                  "ncclAllReduce (barrier)");
    }, nullptr);
  }
  /// @brief Host barrier: returns once every rank reached it and this rank's earlier
  /// collectives and compute-stream work completed.
  void barrier() { ibarrier().synchronize(); }

  // ---- control (counted separately, as comm::mpi counts them) -------------------

  /// @brief Every rank's values (same count on each rank), concatenated in rank order.
  std::vector<double> all_gather_values(const std::vector<double>& mine) {
    ensure_usable();
    counters_.control_elements += mine.size() * static_cast<std::size_t>(size());
    counters_.control_calls += 1;
    if (mine.empty()) return {};
    const std::vector<char> all = control_all_gather(mine.data(), mine.size() * sizeof(double));
    std::vector<double> out(mine.size() * static_cast<std::size_t>(size()));
    std::memcpy(out.data(), all.data(), all.size());
    return out;
  }

  /// @brief Every rank's string, in rank order.
  std::vector<std::string> all_gather_strings(const std::string& mine) {
    ensure_usable();
    const std::vector<double> lens = all_gather_values({static_cast<double>(mine.size())});
    counters_.control_calls += 1;
    std::size_t longest = 0;
    for (double l : lens) longest = std::max(longest, static_cast<std::size_t>(l));
    std::vector<std::string> out(static_cast<std::size_t>(size()));
    if (longest == 0) return out;
    std::string padded = mine;
    padded.resize(longest, '\0');
    const std::vector<char> all = control_all_gather(padded.data(), longest);
    for (std::size_t r = 0; r < out.size(); ++r)
      out[r].assign(all.data() + r * longest, static_cast<std::size_t>(lens[r]));
    return out;
  }

  /// @brief Collective check. If any rank passes `ok == false`, every rank throws the
  /// message of the lowest such rank (prefixed with its number).
  void agree(bool ok, const std::string& message) {
    ensure_usable();
    counters_.control_elements += 1;
    counters_.control_calls += 1;
    const std::int32_t mine = ok ? size() : rank();
    const std::vector<char> all = control_all_gather(&mine, sizeof mine);
    std::int32_t result = size();
    for (int r = 0; r < size(); ++r) {
      std::int32_t v;
      std::memcpy(&v, all.data() + static_cast<std::size_t>(r) * sizeof v, sizeof v);
      result = std::min(result, v);
    }
    if (result == size()) return;
    std::array<char, 1024> text{};
    if (rank() == result) std::strncpy(text.data(), message.c_str(), text.size() - 1);
    control_broadcast(text.data(), text.size(), result);
    text.back() = '\0';
    ZB_FAIL("rank ", result, ": ", text.data());
  }

  /// @brief Tell every other rank this rank failed, so their waits raise instead of
  /// hanging; then abort this communicator. Idempotent; never throws.
  void abort_peers(const std::string& message) {
    if (!st_) return;
    if (st_->channel && st_->channel->poll()) {  // a peer failed first: nothing to tell
      st_->abort_nccl();
      if (!st_->failed) {
        st_->failed = true;
        st_->reason = st_->channel->reason();
      }
      return;
    }
    // Peers see "rank k failed: <message>"; this rank's calls raise the channel's reason.
    if (st_->channel) st_->channel->send(st_->rank, message);
    if (!st_->failed) {
      st_->failed = true;
      st_->reason = st_->channel ? st_->channel->reason()
                                 : detail::concat("comm::nccl: unusable after this rank failed: ", message);
    }
    st_->abort_nccl();
  }

  /// @brief Run `f` with its collectives fused into one NCCL group.
  template <class F>
  static void grouped(F&& f) {
    group g;
    std::forward<F>(f)();
    g.end();
  }

private:
  explicit nccl(std::shared_ptr<detail::nccl_state> st) : st_(std::move(st)) {}

  static void check_config(const nccl_config& cfg) {
    ZB_REQUIRE(cfg.init_timeout.count() > 0, "comm::nccl: nccl_config::init_timeout must be positive");
    ZB_REQUIRE(cfg.reduce != reduce_mode::deterministic ||
                   (detail::nccl_reducers().f32 && detail::nccl_reducers().f16 && detail::nccl_reducers().bf16),
               "comm::nccl: reduce_mode::deterministic needs the block-reduction kernel of "
               "<zeroblocks/comm/nccl.cuh>: include that header in one translation unit compiled by nvcc, or "
               "set nccl_config::reduce = reduce_mode::native");
  }

  static std::shared_ptr<detail::nccl_state> init_rank(const ncclUniqueId& id, int rank, int size,
                                                       const nccl_config& cfg,
                                                       std::shared_ptr<detail::nccl_abort_channel> channel) {
    ncclConfig_t c = detail::nccl_make_config(cfg);
    ncclComm_t comm = nullptr;
    const ncclResult_t r = ncclCommInitRankConfig(&comm, size, id, rank, &c);
    if (r != ncclSuccess && r != ncclInProgress) {
      const std::string message = detail::concat("comm::nccl: ncclCommInitRankConfig failed on rank ", rank, " of ",
                                                 size, ": ", detail::nccl_error_text(r, comm));
      channel->send(rank, message);
      if (comm) (void)ncclCommAbort(comm);
      ZB_FAIL(message);
    }
    return detail::nccl_state::make(comm, rank, size, cfg, std::move(channel), std::nullopt, "ncclCommInitRankConfig");
  }

  void ensure_usable() const {
    ZB_REQUIRE(st_, "comm::nccl: empty communicator (default-constructed, moved from, or a split this rank "
                    "did not join)");
    int current = -1;
    ZB_CUDA_CHECK(cudaGetDevice(&current));
    ZB_REQUIRE(current == st_->device, "comm::nccl: called with device ", current,
               " current, but the communicator is on device ", st_->device);
    st_->check();
  }

  /// Issue one operation: follow the compute stream (unless `follow_compute` is false),
  /// run `enqueue` (NCCL calls) inside a group, then — once the group is launched —
  /// `after` (kernels, second phases) and the completion event.
  template <class Enqueue>
  request launch(bool follow_compute, Enqueue&& enqueue, std::function<void()> after) {
    const std::shared_ptr<detail::nccl_state>& st = st_;
    if (follow_compute) {
      st->cuda_ok(cudaEventRecord(st->ready, st->compute_now()), "cudaEventRecord");
      st->cuda_ok(cudaStreamWaitEvent(st->stream, st->ready, 0), "cudaStreamWaitEvent");
    }
    auto op = std::make_shared<detail::nccl_op>(st);
    detail::nccl_grouped_on(st, std::forward<Enqueue>(enqueue), [op, after = std::move(after)] {
      if (op->st->failed) return;  // aborted while grouped: wait() raises the reason
      if (after) after();
      op->record();
    });
    return request(std::move(op));
  }

  /// The reduction operator for a sum times `scale` (native mode).
  template <class T>
  ncclRedOp_t scaled_sum(float scale) {
    if (scale == 1.0f) return ncclSum;
    T s = from_float<T>(scale);
    ncclRedOp_t op;
    st_->nccl_ok(ncclRedOpCreatePreMulSum(&op, &s, detail::nccl_datatype<T>(),
                                          ncclScalarHostImmediate, st_->comm),
                 "ncclRedOpCreatePreMulSum");
    return op;
  }
  /// Destroys a created operator once the collective using it was launched.
  std::function<void()> release_op(ncclRedOp_t op) {
    if (op == ncclSum) return nullptr;
    detail::nccl_state* st = st_.get();
    return [st, op] { (void)ncclRedOpDestroy(op, st->comm); };
  }

  /// Deterministic reduce-scatter of `count`-element blocks of `buf` into `out` (which may
  /// be this rank's block); with `gather_after`, an in-place all-gather of the reduced
  /// blocks follows (all-reduce).
  template <class T>
  request deterministic_reduce(T* buf, T* out, std::size_t count, float scale, bool gather_after) {
    const std::shared_ptr<detail::nccl_state>& sp = st_;
    detail::nccl_state* st = sp.get();
    const detail::nccl_block_reduce_fn reduce = detail::nccl_reducer<T>();
    ZB_REQUIRE(reduce, "comm::nccl: the deterministic reduction kernel is not registered (include "
                       "<zeroblocks/comm/nccl.cuh> in a translation unit compiled by nvcc)");
    const int n = st->size, me = st->rank;
    const ncclDataType_t dt = detail::nccl_datatype<T>();
    T* mine = buf + static_cast<std::size_t>(me) * count;
    auto scratch = std::make_shared<T*>(nullptr);
    std::function<void()> after = [sp, reduce, mine, scratch, me, n, count, scale, out, gather_after, buf, dt] {
      detail::nccl_state* s = sp.get();
      s->cuda_ok(reduce(mine, *scratch, me, n, count, scale, out, s->stream), "the block-reduction kernel launch");
      if (*scratch) s->cuda_ok(cudaFreeAsync(*scratch, s->stream), "cudaFreeAsync");
      if (gather_after && n > 1)
        detail::nccl_grouped_on(sp, [&] {
          s->nccl_ok(ncclAllGather(out, buf, count, dt, s->comm, s->stream), "ncclAllGather");
        }, nullptr);
    };
    return launch(true, [=] {
      if (n == 1) return;
      // All-to-all of the blocks: block j goes to rank j; rank j's copy of our block
      // lands in slot j - (j > me) of the scratch. Peers in a rotated order.
      *scratch = static_cast<T*>(scratch_on_stream(st, static_cast<std::size_t>(n - 1) * count * sizeof(T)));
      for (int d = 1; d < n; ++d) {
        const int to = (me + d) % n, from = (me - d + n) % n;
        st->nccl_ok(ncclSend(buf + static_cast<std::size_t>(to) * count, count, dt, to, st->comm, st->stream),
                    "ncclSend");
        T* slot = *scratch + static_cast<std::size_t>(from - (from > me ? 1 : 0)) * count;
        st->nccl_ok(ncclRecv(slot, count, dt, from, st->comm, st->stream), "ncclRecv");
      }
    }, std::move(after));
  }

  /// Device scratch ordered on the communicator's stream. Failing to get it fails the
  /// communicator (and tells the peers): they would otherwise wait for this rank.
  static void* scratch_on_stream(detail::nccl_state* st, std::size_t bytes) {
    try {
      return cuda_space::allocate_async(bytes, st->stream, cuda_space::max_alignment);
    } catch (const std::exception& e) {
      st->fail(detail::concat("comm::nccl: rank ", st->rank, " could not allocate ", bytes,
                              " bytes of communication scratch: ", e.what()));
    }
  }

  /// Control all-gather of `bytes` per rank through device memory; host wait.
  std::vector<char> control_all_gather(const void* mine, std::size_t bytes) {
    ZB_REQUIRE(detail::nccl_group_now().depth == 0, "comm::nccl: control helpers cannot run inside a group");
    detail::nccl_state* st = st_.get();
    const std::size_t total = bytes * static_cast<std::size_t>(st->size);
    char* dev = static_cast<char*>(scratch_on_stream(st, total));
    char* slot = dev + bytes * static_cast<std::size_t>(st->rank);
    st->cuda_ok(cudaMemcpyAsync(slot, mine, bytes, cudaMemcpyHostToDevice, st->stream), "cudaMemcpyAsync");
    // If the wait throws, `dev` is leaked on purpose: the transfer may still write it.
    launch(false, [=] {
      st->nccl_ok(ncclAllGather(slot, dev, bytes, ncclUint8, st->comm, st->stream), "ncclAllGather (control)");
    }, nullptr).synchronize();
    std::vector<char> out(total);
    st->cuda_ok(cudaMemcpyAsync(out.data(), dev, total, cudaMemcpyDeviceToHost, st->stream), "cudaMemcpyAsync");
    st->cuda_ok(cudaFreeAsync(dev, st->stream), "cudaFreeAsync");
    st->cuda_ok(cudaStreamSynchronize(st->stream), "cudaStreamSynchronize");
    return out;
  }

  /// Control broadcast of `bytes` from `root` (in place in host memory); host wait.
  void control_broadcast(void* data, std::size_t bytes, int root) {
    ZB_REQUIRE(detail::nccl_group_now().depth == 0, "comm::nccl: control helpers cannot run inside a group");
    detail::nccl_state* st = st_.get();
    char* dev = static_cast<char*>(scratch_on_stream(st, bytes));
    st->cuda_ok(cudaMemcpyAsync(dev, data, bytes, cudaMemcpyHostToDevice, st->stream), "cudaMemcpyAsync");
    launch(false, [=] {
      st->nccl_ok(ncclBroadcast(dev, dev, bytes, ncclUint8, root, st->comm, st->stream), "ncclBroadcast (control)");
    }, nullptr).synchronize();
    st->cuda_ok(cudaMemcpyAsync(data, dev, bytes, cudaMemcpyDeviceToHost, st->stream), "cudaMemcpyAsync");
    st->cuda_ok(cudaFreeAsync(dev, st->stream), "cudaFreeAsync");
    st->cuda_ok(cudaStreamSynchronize(st->stream), "cudaStreamSynchronize");
  }

  std::shared_ptr<detail::nccl_state> st_;
  comm_counters counters_;
};

static_assert(communicator_policy<nccl>);

}  // namespace comm
ZB_NAMESPACE_END
