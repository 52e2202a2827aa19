/**
 * @file host_space.hpp
 * @brief The space role: where bytes live. Policies `host_space` and `pinned_space`.
 *
 * A space is a tag type with `using space_concept = space_tag;` and static
 * `allocate(bytes, alignment)`, `deallocate(p, bytes)`, `copy`, `fill`. `host_space`
 * is pageable host memory aligned for the widest vector loads; `pinned_space` is
 * page-locked host memory (`mlock`), at the exact size asked for, never rounded to a
 * power of two. `cuda_space` (device memory) and `cuda_pinned_space` (host memory
 * registered with CUDA for DMA) are in `cuda_space.hpp`: which pinning a buffer gets is
 * in its type, never in a macro, so every translation unit of a program sees the same
 * classes whatever its include paths. `buffer<T, Space>` is the owning, tracked
 * allocation every component uses.
 *
 * Every space names its `stream_type`: what orders work on its memory. Host spaces have
 * none (`no_stream`, an empty type); `cuda_space`'s is a `cudaStream_t`, which an engine
 * on it holds as its compute stream (`Engine::set_compute_stream`).
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "memory.hpp"

#include <sys/mman.h>

#include <concepts>
#include <cstdlib>
#include <cstring>
#include <new>
#include <span>
#include <utility>

ZB_NAMESPACE_BEGIN

/// @brief Tag that marks a type as a space policy.
struct space_tag {};

/// @brief A space policy: a tagged type that allocates, frees, copies and fills.
template <class S>
concept space_policy = std::same_as<typename S::space_concept, space_tag> &&
                       requires(void* p, const void* q, std::size_t n) {
                         { S::allocate(n, n) } -> std::same_as<void*>;
                         S::deallocate(p, n);
                         S::copy(p, q, n);
                         S::fill_zero(p, n);
                       };

/// @brief The stream type of a space whose work is ordered by program order alone (the
/// host spaces): empty.
struct no_stream {
  friend constexpr bool operator==(no_stream, no_stream) { return true; }
};

/// @brief Alignment of every library allocation: a cache line, also the AVX-512 width.
inline constexpr std::size_t default_alignment = 64;

/// @brief Pageable host memory.
struct host_space {
  using space_concept = space_tag;
  static constexpr const char* name = "host";
  static constexpr bool host_accessible = true;
  using stream_type = no_stream;

  static void* allocate(std::size_t bytes, std::size_t alignment = default_alignment) {
    if (bytes == 0) return nullptr;
    const std::size_t rounded = (bytes + alignment - 1) / alignment * alignment;
    void* p = std::aligned_alloc(alignment, rounded);
    ZB_REQUIRE(p != nullptr, "host_space: out of memory allocating ", bytes, " bytes");
    return p;
  }
  static void deallocate(void* p, std::size_t /*bytes*/) { std::free(p); }
  static void copy(void* dst, const void* src, std::size_t bytes) {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  static void fill_zero(void* p, std::size_t bytes) {
    if (bytes) std::memset(p, 0, bytes);
  }
};

/// @brief Host memory whose pages `Lock` pins: `Lock::name`, `Lock::alignment(a)` (the
/// alignment an allocation needs), `Lock::lock(p, bytes) -> bool`, `Lock::unlock(p, bytes)`.
///
/// The allocation is `bytes` rounded up to the alignment, and exactly `bytes` are
/// locked — never a power of two (DeepSpeed issue #3000: pinned OOM from the caching
/// host allocator's rounding). When the pages cannot be locked they stay pageable and
/// `last_lock_ok()` tells; correctness never depends on pinning, only copy speed does.
template <class Lock>
struct locked_host_space {
  using space_concept = space_tag;
  static constexpr const char* name = Lock::name;
  static constexpr bool host_accessible = true;
  using stream_type = no_stream;

  static void* allocate(std::size_t bytes, std::size_t alignment = default_alignment) {
    void* p = host_space::allocate(bytes, Lock::alignment(alignment));
    last_lock_ok() = p != nullptr && Lock::lock(p, bytes);
    return p;
  }
  static void deallocate(void* p, std::size_t bytes) {
    if (p) Lock::unlock(p, bytes);
    std::free(p);
  }
  static void copy(void* dst, const void* src, std::size_t bytes) { host_space::copy(dst, src, bytes); }
  static void fill_zero(void* p, std::size_t bytes) { host_space::fill_zero(p, bytes); }
  /// @brief Whether the most recent allocation (on this thread) could be locked.
  static bool& last_lock_ok() {
    static thread_local bool ok = false;
    return ok;
  }
};

/// @brief `mlock`, best effort under RLIMIT_MEMLOCK.
struct mlock_pages {
  static constexpr const char* name = "pinned";
  static std::size_t alignment(std::size_t a) { return a; }
  static bool lock(void* p, std::size_t bytes) { return ::mlock(p, bytes) == 0; }
  static void unlock(void* p, std::size_t bytes) { ::munlock(p, bytes); }
};

/// @brief Page-locked host memory (`mlock`): the NVMe tier's staging buffers, which
/// `O_DIRECT` reads and writes. Memory the GPU copies from by DMA is
/// `cuda_pinned_space` (`cuda_space.hpp`), registered with CUDA instead.
using pinned_space = locked_host_space<mlock_pages>;

static_assert(space_policy<host_space>);
static_assert(space_policy<pinned_space>);

/// @brief An owning, tracked, aligned array of `T` in `Space`. Move-only.
template <class T, class Space>
class buffer {
public:
  buffer() = default;
  buffer(std::size_t n, mem_category cat, memory_tracker* tracker, std::size_t alignment = default_alignment)
      : n_(n), cat_(cat), tracker_(tracker) {
    data_ = static_cast<T*>(Space::allocate(bytes(), alignment));
    if (tracker_) tracker_->add(cat_, bytes());
  }
  buffer(const buffer&) = delete;
  buffer& operator=(const buffer&) = delete;
  buffer(buffer&& o) noexcept { swap(o); }
  buffer& operator=(buffer&& o) noexcept {
    buffer tmp(std::move(o));
    swap(tmp);
    return *this;
  }
  ~buffer() { reset(); }

  void reset() {
    if (data_ || n_) {
      if (!tracker_ || !tracker_->quarantined()) Space::deallocate(data_, bytes());
      if (tracker_) tracker_->sub(cat_, bytes());
    }
    data_ = nullptr;
    n_ = 0;
  }
  void zero() { Space::fill_zero(data_, bytes()); }

  T* data() const { return data_; }
  std::size_t size() const { return n_; }
  std::size_t bytes() const { return n_ * sizeof(T); }
  std::span<T> span() const { return {data_, n_}; }
  T& operator[](std::size_t i) const { return data_[i]; }

private:
  void swap(buffer& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(n_, o.n_);
    std::swap(cat_, o.cat_);
    std::swap(tracker_, o.tracker_);
  }
  T* data_ = nullptr;
  std::size_t n_ = 0;
  mem_category cat_ = mem_category::other;
  memory_tracker* tracker_ = nullptr;
};

ZB_NAMESPACE_END
