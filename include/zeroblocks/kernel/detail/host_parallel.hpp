/**
 * @file host_parallel.hpp
 * @brief How host kernels split a flat range across OpenMP threads.
 *
 * Every host kernel hands each thread one contiguous slice of the index range; slice
 * boundaries are multiples of `parallel_grain` elements, so with page-aligned arrays
 * each thread owns whole pages of every array (fp32 and 16-bit alike) and no two
 * threads write the same cache line. A caller that first-touches its buffers with
 * `parallel_ranges` and the same `n` and thread count places every page on the NUMA
 * node of the thread that later streams it.
 *
 * Without OpenMP (`_OPENMP` undefined) everything runs on the calling thread; the
 * pragmas are guarded so `-Wall` (`-Wunknown-pragmas`) stays quiet.
 *
 * Under ThreadSanitizer the same slices run on `std::thread`s instead of an OpenMP
 * team: GNU libgomp is not instrumented, so ThreadSanitizer cannot see the barrier
 * that ends a parallel region and would report every access after it; it does see a
 * thread's start and join, so this way it checks what matters here — that no two
 * slices touch the same memory.
 */
#pragma once

#include "../../core/config.hpp"

#include <algorithm>
#include <cstddef>

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(__SANITIZE_THREAD__)
#define ZB_PARALLEL_STD_THREADS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ZB_PARALLEL_STD_THREADS 1
#endif
#endif
#if defined(ZB_PARALLEL_STD_THREADS)
#include <thread>
#include <vector>
#endif

ZB_NAMESPACE_BEGIN
namespace kernel::detail {

/// @brief Slice boundaries are multiples of this many elements: 8 KiB of an fp32 array,
/// 4 KiB of a 16-bit one, i.e. whole pages of both.
inline constexpr std::size_t parallel_grain = 2048;

/// @brief Below this many elements a kernel runs on the calling thread: starting an
/// OpenMP team costs more than the work.
inline constexpr std::size_t parallel_min_elements = std::size_t{1} << 16;

/// @brief A half-open index range `[begin, end)`.
struct index_range {
  std::size_t begin;
  std::size_t end;
};

/// @brief Number of threads a kernel uses for `threads` (0 means `omp_get_max_threads()`).
inline int resolve_threads(int threads) {
#if defined(_OPENMP)
  return threads > 0 ? threads : omp_get_max_threads();
#else
  (void)threads;
  return 1;
#endif
}

/// @brief The slice of `[0, n)` thread `tid` of `nt` owns: contiguous, boundaries on
/// multiples of `grain`; trailing threads may get an empty slice.
inline index_range thread_range(std::size_t n, int tid, int nt, std::size_t grain = parallel_grain) {
  const std::size_t units = (n + grain - 1) / grain;
  const std::size_t per = (units + static_cast<std::size_t>(nt) - 1) / static_cast<std::size_t>(nt);
  const std::size_t begin = std::min(n, static_cast<std::size_t>(tid) * per * grain);
  const std::size_t end = std::min(n, begin + per * grain);
  return {begin, end};
}

/**
 * @brief Call `f(begin, end)` once per thread on that thread's slice of `[0, n)`.
 *
 * Runs `f(0, n)` on the calling thread when one thread is asked for, when `n` is
 * below `min_parallel`, or when there are fewer grains than threads would need.
 * `f` must not throw (it runs inside an OpenMP region).
 */
template <class F>
void parallel_ranges(std::size_t n, int threads, std::size_t min_parallel, std::size_t grain, F&& f) {
  if (n == 0) return;
  int nt = resolve_threads(threads);
  const std::size_t units = (n + grain - 1) / grain;
  if (static_cast<std::size_t>(nt) > units) nt = static_cast<int>(units);
  if (nt <= 1 || n < min_parallel) {
    f(std::size_t{0}, n);
    return;
  }
#if defined(ZB_PARALLEL_STD_THREADS)
  std::vector<std::thread> team;
  team.reserve(static_cast<std::size_t>(nt - 1));
  for (int t = 1; t < nt; ++t)
    team.emplace_back([&, t] {
      const index_range r = thread_range(n, t, nt, grain);
      if (r.begin < r.end) f(r.begin, r.end);
    });
  const index_range mine = thread_range(n, 0, nt, grain);
  if (mine.begin < mine.end) f(mine.begin, mine.end);
  for (auto& t : team) t.join();
#elif defined(_OPENMP)
#pragma omp parallel num_threads(nt)
  {
    // The team may be smaller than asked for (OMP_DYNAMIC, limits): split by its real size.
    const index_range r = thread_range(n, omp_get_thread_num(), omp_get_num_threads(), grain);
    if (r.begin < r.end) f(r.begin, r.end);
  }
#else
  f(std::size_t{0}, n);
#endif
}

/// @brief `parallel_ranges` with the library's default grain and threshold.
template <class F>
void parallel_ranges(std::size_t n, int threads, F&& f) {
  parallel_ranges(n, threads, parallel_min_elements, parallel_grain, static_cast<F&&>(f));
}

}  // namespace kernel::detail
ZB_NAMESPACE_END
