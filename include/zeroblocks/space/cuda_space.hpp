/**
 * @file cuda_space.hpp
 * @brief The space role on the GPU: `cuda_space` (device memory from a stream-ordered
 * pool), `cuda_pinned_space` (host memory registered with CUDA), and RAII `cuda_stream`
 * / `cuda_event`.
 *
 * `cuda_space` is a space policy (see `host_space.hpp` for the role) whose bytes live in
 * the current device's memory and are not host accessible. Memory comes from a
 * `cudaMallocAsync` memory pool that zeroblocks creates per device (not the device's
 * default pool, so other users of that pool are not affected). The pool's release
 * threshold is "keep everything" by default: memory freed to it stays reserved for the
 * next allocation instead of going back to the driver at every synchronisation, which
 * is what makes per-step transient buffers (gathered parameters, communication scratch)
 * cheap. `set_release_threshold` and `trim` give memory back when asked.
 *
 * Two forms of every operation:
 *  - stream-ordered (`allocate_async`, `deallocate_async`, `copy_async`,
 *    `fill_zero_async`): enqueued on the stream given, ordered with the work on it, never
 *    blocking the host. This is what hot paths use.
 *  - synchronous (`allocate`, `deallocate`, `copy`, `fill_zero`, the `space_policy`
 *    surface that `buffer<T, cuda_space>` uses): they behave like `cudaMalloc`,
 *    `cudaFree`, `cudaMemcpy` and `cudaMemset` followed by a synchronisation. `allocate`
 *    returns memory usable from any stream at once. `deallocate`, `copy` and `fill_zero`
 *    first wait for all work on the device (as `cudaFree` does), so they never race with
 *    a kernel still using the memory, whichever stream it runs on. That costs a device
 *    synchronisation: fine for long-lived buffers, wrong for a per-step one.
 *
 * CUDA errors throw `zeroblocks::error` naming the call (`core/cuda_check.hpp`), except
 * in `deallocate`, which runs in destructors: there an error (a device already broken by
 * an earlier fault) leaks the block rather than terminating the program.
 *
 * Only `<cuda_runtime.h>` is needed: this header compiles with a plain C++ compiler given
 * the CUDA include directory (the `zeroblocks::cuda` CMake target).
 */
#pragma once

#include "../core/config.hpp"
#include "../core/cuda_check.hpp"
#include "../core/error.hpp"
#include "host_space.hpp"

#include <cuda_runtime.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <utility>
#include <vector>

ZB_NAMESPACE_BEGIN

class cuda_event;

/// @brief An owned CUDA stream (move-only). Non-blocking by default: it does not
/// synchronise implicitly with the legacy default stream.
class cuda_stream {
public:
  /// @brief Create a stream with `flags` (`cudaStreamNonBlocking` by default) and
  /// `priority` (lower numbers are higher priority; 0 is the default priority).
  explicit cuda_stream(unsigned flags = cudaStreamNonBlocking, int priority = 0) {
    ZB_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, flags, priority));
  }
  cuda_stream(const cuda_stream&) = delete;
  cuda_stream& operator=(const cuda_stream&) = delete;
  cuda_stream(cuda_stream&& o) noexcept : stream_(std::exchange(o.stream_, nullptr)) {}
  cuda_stream& operator=(cuda_stream&& o) noexcept {
    if (this != &o) {
      reset();
      stream_ = std::exchange(o.stream_, nullptr);
    }
    return *this;
  }
  ~cuda_stream() { reset(); }

  /// @brief The stream handle.
  cudaStream_t get() const noexcept { return stream_; }
  /// @brief The stream handle, so a `cuda_stream` passes where a `cudaStream_t` is taken.
  operator cudaStream_t() const noexcept { return stream_; }

  /// @brief Block the host until all work on the stream is complete.
  void synchronize() const { ZB_CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  /// @brief True when all work on the stream is complete (never blocks).
  bool ready() const {
    const cudaError_t e = cudaStreamQuery(stream_);
    if (e == cudaErrorNotReady) return false;
    ZB_CUDA_CHECK(e);
    return true;
  }
  /// @brief Make later work on this stream wait for `e` (stream-ordered; the host does
  /// not block).
  inline void wait(const cuda_event& e) const;

private:
  void reset() noexcept {
    if (stream_) (void)cudaStreamDestroy(stream_);
    stream_ = nullptr;
  }
  cudaStream_t stream_ = nullptr;
};

/// @brief An owned CUDA event (move-only). Without timing by default (cheaper to record
/// and to wait on); `cuda_event::timed()` makes one `elapsed_ms` can use.
class cuda_event {
public:
  /// @brief Create an event with `flags` (`cudaEventDisableTiming` by default).
  explicit cuda_event(unsigned flags = cudaEventDisableTiming) {
    ZB_CUDA_CHECK(cudaEventCreateWithFlags(&event_, flags));
  }
  /// @brief An event that records timestamps, for `elapsed_ms`.
  static cuda_event timed() { return cuda_event(cudaEventDefault); }

  cuda_event(const cuda_event&) = delete;
  cuda_event& operator=(const cuda_event&) = delete;
  cuda_event(cuda_event&& o) noexcept : event_(std::exchange(o.event_, nullptr)) {}
  cuda_event& operator=(cuda_event&& o) noexcept {
    if (this != &o) {
      reset();
      event_ = std::exchange(o.event_, nullptr);
    }
    return *this;
  }
  ~cuda_event() { reset(); }

  /// @brief The event handle.
  cudaEvent_t get() const noexcept { return event_; }

  /// @brief Capture the work submitted to `s` so far: the event completes when it does.
  void record(cudaStream_t s) { ZB_CUDA_CHECK(cudaEventRecord(event_, s)); }
  /// @brief Make later work on `s` wait for this event's last record (stream-ordered).
  void enqueue_wait(cudaStream_t s) const { ZB_CUDA_CHECK(cudaStreamWaitEvent(s, event_, 0)); }
  /// @brief Block the host until the recorded work is complete.
  void synchronize() const { ZB_CUDA_CHECK(cudaEventSynchronize(event_)); }
  /// @brief True when the recorded work is complete (or nothing was recorded); never blocks.
  bool ready() const {
    const cudaError_t e = cudaEventQuery(event_);
    if (e == cudaErrorNotReady) return false;
    ZB_CUDA_CHECK(e);
    return true;
  }
  /// @brief Milliseconds from `start` to this event; both must be `timed()` events,
  /// recorded and complete.
  float elapsed_ms(const cuda_event& start) const {
    float ms = 0.0f;
    ZB_CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, event_));
    return ms;
  }

private:
  void reset() noexcept {
    if (event_) (void)cudaEventDestroy(event_);
    event_ = nullptr;
  }
  cudaEvent_t event_ = nullptr;
};

inline void cuda_stream::wait(const cuda_event& e) const { e.enqueue_wait(stream_); }

/// @brief Bytes a device's zeroblocks pool holds: `reserved` from the driver, `used` by
/// live allocations (reserved - used is kept for reuse), and their high-water marks.
struct cuda_pool_usage {
  std::uint64_t reserved = 0;
  std::uint64_t used = 0;
  std::uint64_t reserved_peak = 0;
  std::uint64_t used_peak = 0;
};

/// @brief Device memory of the current CUDA device, from a stream-ordered pool.
struct cuda_space {
  using space_concept = space_tag;
  static constexpr const char* name = "cuda";
  static constexpr bool host_accessible = false;
  /// @brief The largest alignment allocations guarantee (the CUDA allocators' 256 B).
  static constexpr std::size_t max_alignment = 256;

  /// @brief What orders work on this space's memory. An engine on `cuda_space` holds
  /// one, its *compute stream* (`Engine::set_compute_stream`): nothing reads a stream
  /// from thread-local or global state.
  using stream_type = cudaStream_t;

  // ---- stream-ordered -------------------------------------------------------------

  /// @brief Allocate `bytes` from the current device's pool, ordered on stream `s`: the
  /// memory may be used by work on `s` from now on (by other streams once they are
  /// ordered after `s`). 0 bytes gives nullptr.
  static void* allocate_async(std::size_t bytes, cudaStream_t s, std::size_t alignment = default_alignment) {
    check_alignment(alignment);
    if (bytes == 0) return nullptr;
    void* p = nullptr;
    const cudaError_t e = cudaMallocFromPoolAsync(&p, bytes, pool(), s);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // not sticky: clear it so the caller may recover
      std::uint64_t reserved = 0, used = 0;
      (void)cudaMemPoolGetAttribute(pool(), cudaMemPoolAttrReservedMemCurrent, &reserved);
      (void)cudaMemPoolGetAttribute(pool(), cudaMemPoolAttrUsedMemCurrent, &used);
      ZB_FAIL("cuda_space: out of device memory allocating ", bytes, " bytes (the pool holds ", reserved,
              " bytes, ", used, " of them in use)");
    }
    ZB_CUDA_CHECK(e);
    if (reinterpret_cast<std::uintptr_t>(p) % alignment != 0) {  // never seen: CUDA aligns to 256 B
      (void)cudaFreeAsync(p, s);
      ZB_FAIL("cuda_space: the pool returned ", p, ", not aligned to ", alignment, " bytes");
    }
    return p;
  }
  /// @brief Return `p` to the pool once the work submitted to `s` so far is complete.
  static void deallocate_async(void* p, cudaStream_t s) {
    if (p) ZB_CUDA_CHECK(cudaFreeAsync(p, s));
  }
  /// @brief Copy `bytes` (any direction: device, pinned or pageable host) on stream `s`.
  /// With pageable host memory CUDA stages the copy, and it may block the host.
  static void copy_async(void* dst, const void* src, std::size_t bytes, cudaStream_t s) {
    if (bytes) ZB_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s));
  }
  /// @brief Zero `bytes` of device memory on stream `s`.
  static void fill_zero_async(void* p, std::size_t bytes, cudaStream_t s) {
    if (bytes) ZB_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, s));
  }

  // ---- synchronous (the space_policy surface) ------------------------------------

  /// @brief Allocate `bytes`; usable from any stream on return. 0 bytes gives nullptr.
  static void* allocate(std::size_t bytes, std::size_t alignment = default_alignment) {
    const cudaStream_t s = device_state().sync_stream;
    void* p = allocate_async(bytes, s, alignment);
    if (p) ZB_CUDA_CHECK(cudaStreamSynchronize(s));
    return p;
  }
  /// @brief Free `p` after all work on the device completed (as `cudaFree`). Never
  /// throws: on a CUDA error the block is leaked.
  static void deallocate(void* p, std::size_t /*bytes*/) noexcept {
    if (!p) return;
    try {
      const cudaStream_t s = device_state().sync_stream;
      if (cudaDeviceSynchronize() != cudaSuccess || cudaFreeAsync(p, s) != cudaSuccess) (void)cudaGetLastError();
    } catch (...) {
      // device_state() could not create the pool or stream: the device is unusable.
    }
  }
  /// @brief Copy `bytes` after all work on the device completed; returns when the copy did.
  static void copy(void* dst, const void* src, std::size_t bytes) {
    if (!bytes) return;
    const cudaStream_t s = device_state().sync_stream;
    ZB_CUDA_CHECK(cudaDeviceSynchronize());
    ZB_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s));
    ZB_CUDA_CHECK(cudaStreamSynchronize(s));
  }
  /// @brief Zero `bytes` after all work on the device completed; returns when done.
  static void fill_zero(void* p, std::size_t bytes) {
    if (!bytes) return;
    const cudaStream_t s = device_state().sync_stream;
    ZB_CUDA_CHECK(cudaDeviceSynchronize());
    ZB_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, s));
    ZB_CUDA_CHECK(cudaStreamSynchronize(s));
  }

  // ---- the pool ------------------------------------------------------------------

  /// @brief The current device's zeroblocks pool (created on first use).
  static cudaMemPool_t pool() { return device_state().pool; }

  /// @brief Keep up to `bytes` reserved in the current device's pool when it is idle at
  /// a synchronisation point; more is given back to the driver. The default keeps
  /// everything (`std::numeric_limits<std::uint64_t>::max()`).
  static void set_release_threshold(std::uint64_t bytes) {
    ZB_CUDA_CHECK(cudaMemPoolSetAttribute(pool(), cudaMemPoolAttrReleaseThreshold, &bytes));
  }
  /// @brief Give memory the pool keeps but nobody uses back to the driver, down to
  /// `keep_bytes` reserved.
  static void trim(std::size_t keep_bytes = 0) { ZB_CUDA_CHECK(cudaMemPoolTrimTo(pool(), keep_bytes)); }

  /// @brief What the current device's pool holds.
  static cuda_pool_usage usage() {
    cuda_pool_usage u;
    const cudaMemPool_t p = pool();
    ZB_CUDA_CHECK(cudaMemPoolGetAttribute(p, cudaMemPoolAttrReservedMemCurrent, &u.reserved));
    ZB_CUDA_CHECK(cudaMemPoolGetAttribute(p, cudaMemPoolAttrUsedMemCurrent, &u.used));
    ZB_CUDA_CHECK(cudaMemPoolGetAttribute(p, cudaMemPoolAttrReservedMemHigh, &u.reserved_peak));
    ZB_CUDA_CHECK(cudaMemPoolGetAttribute(p, cudaMemPoolAttrUsedMemHigh, &u.used_peak));
    return u;
  }

private:
  /// Per device: the pool, and a private non-blocking stream the synchronous forms use
  /// (so they do not pick up the legacy default stream's implicit synchronisation).
  /// Both live until the process ends: destroying them from a static destructor could
  /// run after the CUDA runtime was torn down.
  struct per_device {
    cudaMemPool_t pool = nullptr;
    cudaStream_t sync_stream = nullptr;
  };

  static void check_alignment(std::size_t alignment) {
    ZB_REQUIRE(alignment != 0 && (alignment & (alignment - 1)) == 0 && alignment <= max_alignment,
               "cuda_space: alignment ", alignment, " must be a power of two no larger than ", max_alignment);
  }

  static per_device& device_state() {
    int device = 0;
    ZB_CUDA_CHECK(cudaGetDevice(&device));
    static std::mutex m;
    static std::vector<per_device>* devices = nullptr;  // never freed, see above
    std::lock_guard<std::mutex> lock(m);
    if (!devices) {
      // Sized once (the device count does not change), so references stay valid.
      int count = 0;
      ZB_CUDA_CHECK(cudaGetDeviceCount(&count));
      devices = new std::vector<per_device>(static_cast<std::size_t>(count));
    }
    ZB_REQUIRE(device >= 0 && static_cast<std::size_t>(device) < devices->size(), "cuda_space: current device ",
               device, " out of range");
    per_device& d = (*devices)[static_cast<std::size_t>(device)];
    if (!d.pool) {
      cudaMemPoolProps props{};
      props.allocType = cudaMemAllocationTypePinned;
      props.handleTypes = cudaMemHandleTypeNone;
      props.location.type = cudaMemLocationTypeDevice;
      props.location.id = device;
      cudaMemPool_t pool = nullptr;
      ZB_CUDA_CHECK(cudaMemPoolCreate(&pool, &props));
      // Keep freed memory reserved for reuse instead of returning it at each sync.
      std::uint64_t keep = std::numeric_limits<std::uint64_t>::max();
      ZB_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
      d.pool = pool;
    }
    if (!d.sync_stream) ZB_CUDA_CHECK(cudaStreamCreateWithFlags(&d.sync_stream, cudaStreamNonBlocking));
    return d;
  }
};

static_assert(space_policy<cuda_space>);

/// @brief `cudaHostRegister` (portable: pinned for every device and context), so the GPU
/// reads and writes the memory by DMA and `cudaMemcpyAsync` from it does not block the
/// host. Each allocation starts on a page of its own (CUDA registers whole pages and
/// refuses a range that overlaps one registered before): at most a page minus one byte
/// of slack at the end. Registration fails without a usable GPU or under
/// RLIMIT_MEMLOCK; the error is cleared (not sticky for the next call).
struct cuda_register_pages {
  static constexpr const char* name = "cuda_pinned";
  static std::size_t alignment(std::size_t a) {
    static const std::size_t page = [] {
      const long r = ::sysconf(_SC_PAGESIZE);
      return r > 0 ? static_cast<std::size_t>(r) : std::size_t{4096};
    }();
    return a > page ? a : page;
  }
  static bool lock(void* p, std::size_t bytes) {
    if (cudaHostRegister(p, bytes, cudaHostRegisterPortable) == cudaSuccess) return true;
    (void)cudaGetLastError();
    return false;
  }
  static void unlock(void* p, std::size_t) {
    // Not registered (registration failed): cudaErrorHostMemoryNotRegistered, cleared.
    if (cudaHostUnregister(p) != cudaSuccess) (void)cudaGetLastError();
  }
};

/// @brief Host memory registered with CUDA: ZeRO-Offload's host state
/// (`master::offloaded`). Exactly the bytes asked for are registered (DeepSpeed issue
/// #3000: no power-of-two rounding); `last_lock_ok()` tells whether registration worked.
using cuda_pinned_space = locked_host_space<cuda_register_pages>;

static_assert(space_policy<cuda_pinned_space>);

ZB_NAMESPACE_END
