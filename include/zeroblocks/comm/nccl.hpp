/**
 * @file nccl.hpp
 * @brief `comm::nccl`: the communicator role (see `comm.hpp`) over NCCL, for device
 * buffers. Needs no nvcc; the deterministic reduction's kernel is in `nccl.cuh`.
 *
 * ## Streams and requests
 *
 * Every communicator owns a CUDA stream (non-blocking, `nccl_config::stream_priority`)
 * and runs its collectives there, so they overlap the trainer's computation. The
 * trainer's stream is the *compute stream*, set with `set_compute_stream` (an engine
 * sets its own compute stream on its communicators, so the two cannot disagree; dups
 * inherit it); until set it is stream 0, the legacy default stream. Nothing reads a
 * stream from thread-local or global state. A collective is ordered after the work already submitted to the compute
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
 * empty communicator, `valid() == false`). Children share their parent's abort channel
 * and collective watchdog (`set_collective_timeout`): over MPI, an incident involves
 * every rank of the MPI communicator the family was bootstrapped on.
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

#include "../space/cuda_space.hpp"
#include "comm.hpp"
#include "detail/control.hpp"
#include "detail/nccl_base.hpp"       // includes, configs, element types, abort channels
#include "detail/nccl_bootstrap.hpp"  // unique-id exchange, NCCL config
#include "detail/nccl_group.hpp"      // groups (and nccl_state, nccl_op)
#include "detail/nccl_state.hpp"      // the shared state

ZB_NAMESPACE_BEGIN
namespace comm {

/// @brief Collectives over NCCL for device buffers (see the header for streams,
/// requests, reduction modes, bootstrap and failure handling).
class nccl : public detail::control_ops<nccl> {
  friend class detail::control_ops<nccl>;

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
      op->st->cuda_ok(cudaStreamWaitEvent(op->st->compute, op->done, 0), "cudaStreamWaitEvent");
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
      st.host_wait([&] { return st.query(cudaEventQuery(e), "cudaEventQuery"); }, "a collective");
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
    auto channel = std::make_shared<detail::nccl_mpi_abort_channel>("comm::nccl", parent);
    auto exchange = std::make_shared<detail::mpi_watchdog>(parent);  // collective over parent
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
    st_->watch->exchange = std::move(exchange);
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
        "comm::nccl", fs::path(boot.dir) / (boot.name + "." + nonce + ".abort"), boot.rank);
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
    nccl out(detail::nccl_state::make(child, st.rank, st.size, st.cfg, st.channel, st.compute, "ncclCommSplit"));
    if (out.st_) {
      out.st_->watch = st.watch;
      out.st_->label = st.label;
    }
    return out;
  }

  /// @brief Seconds a host wait (`synchronize`, a request's `synchronize`, `dup`) may
  /// go without the device completing (default 600; 0 = wait forever; the engine sets
  /// its `step.collective_timeout_s`). Shared by the communicator, its `dup()`s and
  /// `split()`s, as `comm::mpi`'s. Bootstrapped over MPI, a wait past it starts
  /// `comm::mpi`'s position exchange (`detail/watchdog.hpp`) on a duplicate of the MPI
  /// communicator: every rank raises the same `collective_error` naming the rank that
  /// diverged and where each is, and aborts its NCCL communicators. With the file
  /// bootstrap (no side channel that can carry it) the first rank past its deadline names
  /// itself, what it waited for and where its caller was; the others raise that.
  void set_collective_timeout(double seconds) {
    ZB_REQUIRE(seconds >= 0.0 && seconds < 1e9, "collective_timeout ", seconds, " s must be >= 0 (0 = off)");
    if (!st_) return;
    st_->watch->timeout_s = seconds;
#if ZB_NCCL_WITH_MPI
    if (st_->watch->exchange) st_->watch->exchange->set_timeout(seconds);
#endif
  }
  double collective_timeout() const { return st_ ? st_->watch->timeout_s : 0.0; }
  /// @brief Where the caller is, for the watchdog's reports (the engine sets it at each
  /// call). Shared by the family; never null on a valid communicator.
  detail::watch_activity* watch_activity() { return st_ ? st_->watch->caller() : nullptr; }
  /// @brief The communicator's name in the watchdog's reports ("gradient", …).
  void set_label(std::string label) {
    if (st_) st_->label = std::move(label);
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
  /// @brief The trainer's stream that collectives follow and `request::wait()` orders
  /// (stream 0, the legacy default stream, until set). An engine sets its compute
  /// stream here (`Engine::set_compute_stream`). Communicators `dup()`ed later inherit it.
  void set_compute_stream(cudaStream_t s) {
    ZB_REQUIRE(st_, "comm::nccl: empty communicator");
    st_->compute = s;
  }
  cudaStream_t compute_stream() const { return st_ ? st_->compute : nullptr; }
  /// @brief Collectives progress on the GPU without host calls.
  bool async_progress() const { return true; }
  /// @brief True once this communicator failed or a peer reported failure.
  bool failed() const {
    if (!st_) return false;
    return st_->failed || st_->verdict_reached() || (st_->channel && st_->channel->poll());
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
    counters_.count_all_gather(count, size());
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
    counters_.count_reduce_scatter(count, size());
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
    counters_.count_all_reduce(count);
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
    counters_.count_broadcast(count);
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

  // ---- control (counted separately): all_gather_values, all_gather_strings and
  // agree come from detail::control_ops, over control_all_gather below.

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
    if (st_->channel) st_->channel->send(message);
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
      channel->send(message);
      if (comm) (void)ncclCommAbort(comm);
      ZB_FAIL(message);
    }
    return detail::nccl_state::make(comm, rank, size, cfg, std::move(channel), nullptr, "ncclCommInitRankConfig");
  }

  void ensure_usable() const {
    ZB_REQUIRE(st_, "comm::nccl: empty communicator (default-constructed, moved from, or a split this rank "
                    "did not join)");
    int current = -1;
    ZB_CUDA_CHECK(cudaGetDevice(&current));
    ZB_REQUIRE(current == st_->device, "comm::nccl: called with device ", current,
               " current, but the communicator is on device ", st_->device);
    st_->watch_check();
    st_->check();
  }

  /// Issue one operation: follow the compute stream (unless `follow_compute` is false),
  /// run `enqueue` (NCCL calls) inside a group, then — once the group is launched —
  /// `after` (kernels, second phases) and the completion event.
  template <class Enqueue>
  request launch(bool follow_compute, Enqueue&& enqueue, std::function<void()> after) {
    const std::shared_ptr<detail::nccl_state>& st = st_;
    if (follow_compute) {
      st->cuda_ok(cudaEventRecord(st->ready, st->compute), "cudaEventRecord");
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

  comm_counters& control_counters() { return counters_; }
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



  std::shared_ptr<detail::nccl_state> st_;
  comm_counters counters_;
};

static_assert(communicator_policy<nccl>);

}  // namespace comm
ZB_NAMESPACE_END