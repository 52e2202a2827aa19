// cuda_space, cuda_stream, cuda_event and cuda_pinned_space (space/cuda_space.hpp,
// space/host_space.hpp), on one GPU:
//  - synchronous allocate / copy / fill_zero / deallocate round trips, 0 bytes, alignment;
//  - stream-ordered allocate_async / copy_async / fill_zero_async / deallocate_async;
//  - the pool keeps freed memory (release threshold) until trimmed;
//  - events: record, wait from another stream (stream ordering), synchronize, elapsed time;
//  - buffer<T, cuda_space> is tracked like any other buffer;
//  - cuda_pinned_space registers exactly the bytes asked for with CUDA (cudaPointerGetAttributes),
//    each allocation on pages of its own, and the tracker counts the exact size.
// Skipped (exit 77) without a GPU.
#include "cuda_test_main.hpp"

#include <zeroblocks/space/cuda_space.hpp>
#include <zeroblocks/space/host_space.hpp>
#include <zeroblocks/space/memory.hpp>

#include "error_of.hpp"

#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

namespace zb = zeroblocks;
using zbt::error_of;
using zbt::has;

namespace {

/// Spins for about `cycles` clock cycles, then writes `value`: a kernel slow enough that
/// work ordered after it on another stream would see the old value if ordering failed.
__global__ void slow_write(int* p, int value, long long cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
  *p = value;
}

std::vector<std::uint8_t> pattern_bytes(std::size_t n, unsigned seed) {
  std::vector<std::uint8_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::uint8_t>((i * 131u + seed * 7u) & 0xffu);
  return v;
}

bool is_registered(const void* p) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return a.type == cudaMemoryTypeHost;
}

}  // namespace

TEST_CASE("cuda_space: synchronous allocate, copy, fill_zero, deallocate") {
  static_assert(zb::space_policy<zb::cuda_space>);
  static_assert(!zb::cuda_space::host_accessible);
  CHECK(std::string(zb::cuda_space::name) == "cuda");

  for (std::size_t n : {std::size_t{1}, std::size_t{1000}, std::size_t{1} << 20, (std::size_t{1} << 20) + 3}) {
    void* d = zb::cuda_space::allocate(n);
    REQUIRE(d != nullptr);
    CHECK(reinterpret_cast<std::uintptr_t>(d) % zb::default_alignment == 0);
    const auto in = pattern_bytes(n, 1);
    zb::cuda_space::copy(d, in.data(), n);
    std::vector<std::uint8_t> out(n, 0);
    zb::cuda_space::copy(out.data(), d, n);
    CHECK(out == in);
    zb::cuda_space::fill_zero(d, n / 2);
    zb::cuda_space::copy(out.data(), d, n);
    for (std::size_t i = 0; i < n; ++i) REQUIRE(out[i] == (i < n / 2 ? 0 : in[i]));
    // device to device
    void* e = zb::cuda_space::allocate(n);
    zb::cuda_space::copy(e, d, n);
    std::vector<std::uint8_t> back(n, 1);
    zb::cuda_space::copy(back.data(), e, n);
    CHECK(back == out);
    zb::cuda_space::deallocate(e, n);
    zb::cuda_space::deallocate(d, n);
  }
  CHECK(zb::cuda_space::allocate(0) == nullptr);
  zb::cuda_space::deallocate(nullptr, 0);  // no-op
  void* a = zb::cuda_space::allocate(100, 256);
  CHECK(reinterpret_cast<std::uintptr_t>(a) % 256 == 0);
  zb::cuda_space::deallocate(a, 100);
  CHECK(has(error_of([] { zb::cuda_space::allocate(100, 512); }), "alignment 512"));
  CHECK(has(error_of([] { zb::cuda_space::allocate(100, 48); }), "power of two"));
}

TEST_CASE("cuda_space: stream-ordered allocate, copy, fill, free on one stream") {
  zb::cuda_stream s;
  const std::size_t n = (std::size_t{1} << 22) + 5;
  auto* host = static_cast<std::uint8_t*>(zb::cuda_pinned_space::allocate(n));
  const auto in = pattern_bytes(n, 3);
  std::memcpy(host, in.data(), n);
  void* d = zb::cuda_space::allocate_async(n, s);
  zb::cuda_space::copy_async(d, host, n, s);
  zb::cuda_space::fill_zero_async(static_cast<std::uint8_t*>(d) + 10, 100, s);
  s.synchronize();             // the upload read `host`: only now may it change
  std::memset(host, 0xee, n);  // so the download below must write every byte
  zb::cuda_space::copy_async(host, d, n, s);
  zb::cuda_space::deallocate_async(d, s);
  s.synchronize();
  CHECK(s.ready());
  for (std::size_t i = 0; i < n; ++i) REQUIRE(host[i] == (i >= 10 && i < 110 ? 0 : in[i]));
  zb::cuda_pinned_space::deallocate(host, n);
}

TEST_CASE("cuda_space: the pool keeps freed memory for reuse until trimmed") {
  zb::cuda_stream s;
  const std::size_t n = std::size_t{64} << 20;
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);  // frees of earlier tests have run
  const auto before = zb::cuda_space::usage();
  void* d = zb::cuda_space::allocate_async(n, s);
  s.synchronize();
  const auto during = zb::cuda_space::usage();
  CHECK(during.used >= before.used + n);
  CHECK(during.reserved >= n);
  zb::cuda_space::deallocate_async(d, s);
  s.synchronize();
  CHECK(cudaDeviceSynchronize() == cudaSuccess);  // a sync point: a default pool would release here
  const auto after = zb::cuda_space::usage();
  CHECK(after.used == before.used);
  CHECK(after.reserved >= n);  // kept: the release threshold is "keep everything"
  // Reuse: the same size again comes from what the pool holds.
  void* again = zb::cuda_space::allocate_async(n, s);
  s.synchronize();
  CHECK(zb::cuda_space::usage().reserved == after.reserved);
  zb::cuda_space::deallocate_async(again, s);
  s.synchronize();
  zb::cuda_space::trim(0);
  CHECK(zb::cuda_space::usage().reserved < n);
  CHECK(zb::cuda_space::usage().used_peak >= n);
}

TEST_CASE("cuda_event / cuda_stream: record, wait from another stream, synchronize, time") {
  zb::cuda_stream producer, consumer;
  int* flag = static_cast<int*>(zb::cuda_space::allocate(sizeof(int)));
  zb::cuda_space::fill_zero(flag, sizeof(int));
  auto* host = static_cast<int*>(zb::cuda_pinned_space::allocate(sizeof(int)));
  *host = -1;

  zb::cuda_event start = zb::cuda_event::timed(), stop = zb::cuda_event::timed(), written;
  start.record(producer);
  slow_write<<<1, 1, 0, producer>>>(flag, 42, 50'000'000);  // ~25 ms at 2 GHz
  REQUIRE(cudaGetLastError() == cudaSuccess);
  written.record(producer);
  stop.record(producer);
  consumer.wait(written);  // stream-ordered: the host does not block here
  zb::cuda_space::copy_async(host, flag, sizeof(int), consumer);
  consumer.synchronize();
  CHECK(*host == 42);
  CHECK(written.ready());
  stop.synchronize();
  CHECK(stop.elapsed_ms(start) > 0.0f);

  // enqueue_wait is the same ordering seen from the event's side.
  slow_write<<<1, 1, 0, producer>>>(flag, 7, 20'000'000);
  written.record(producer);
  written.enqueue_wait(consumer);
  zb::cuda_space::copy_async(host, flag, sizeof(int), consumer);
  consumer.synchronize();
  CHECK(*host == 7);

  // Move-only wrappers keep their handles.
  zb::cuda_stream moved(std::move(consumer));
  CHECK(consumer.get() == nullptr);
  CHECK(moved.get() != nullptr);
  zb::cuda_event e2(std::move(written));
  CHECK(written.get() == nullptr);
  e2.record(moved);
  e2.synchronize();
  CHECK(e2.ready());

  zb::cuda_pinned_space::deallocate(host, sizeof(int));
  zb::cuda_space::deallocate(flag, sizeof(int));
}

TEST_CASE("buffer<T, cuda_space> is tracked, zeroed and freed") {
  zb::memory_tracker tracker;
  {
    zb::buffer<float, zb::cuda_space> b(1001, zb::mem_category::params16, &tracker);
    CHECK(tracker.report()[zb::mem_category::params16] == 1001 * sizeof(float));
    b.zero();
    std::vector<float> h(1001, 1.0f);
    zb::cuda_space::copy(h.data(), b.data(), b.bytes());
    for (float x : h) REQUIRE(x == 0.0f);
    zb::buffer<float, zb::cuda_space> moved(std::move(b));
    CHECK(moved.size() == 1001);
    CHECK(tracker.report()[zb::mem_category::params16] == 1001 * sizeof(float));
  }
  CHECK(tracker.report()[zb::mem_category::params16] == 0);
  CHECK(tracker.report().peak_of(zb::mem_category::params16) == 1001 * sizeof(float));
}

TEST_CASE("cuda_pinned_space: registered with CUDA at exactly the size asked for") {
  zb::memory_tracker tracker;
  const std::size_t n = 1'000'003;  // not a power of two, not a page multiple
  {
    zb::buffer<std::uint8_t, zb::cuda_pinned_space> b(n, zb::mem_category::staging, &tracker);
    CHECK(zb::cuda_pinned_space::last_lock_ok());
    CHECK(tracker.report()[zb::mem_category::staging] == n);  // exact, no rounding
    CHECK(is_registered(b.data()));
    CHECK(is_registered(b.data() + n - 1));
    unsigned flags = 0;
    CHECK(cudaHostGetFlags(&flags, b.data()) == cudaSuccess);
    // Asynchronous copies from and to it.
    zb::cuda_stream s;
    void* d = zb::cuda_space::allocate_async(n, s);
    const auto in = pattern_bytes(n, 9);
    std::memcpy(b.data(), in.data(), n);
    zb::cuda_space::copy_async(d, b.data(), n, s);
    zb::cuda_space::fill_zero_async(d, 5, s);
    zb::cuda_space::copy_async(b.data(), d, n, s);
    zb::cuda_space::deallocate_async(d, s);
    s.synchronize();
    for (std::size_t i = 0; i < n; ++i) REQUIRE(b[i] == (i < 5 ? 0 : in[i]));
  }
  CHECK(tracker.report()[zb::mem_category::staging] == 0);

  // Many small buffers: each must register (no two share a page, which CUDA refuses).
  std::vector<zb::buffer<float, zb::cuda_pinned_space>> small;
  for (int i = 0; i < 16; ++i) {
    small.emplace_back(25, zb::mem_category::other, &tracker);
    CHECK(zb::cuda_pinned_space::last_lock_ok());
    CHECK(is_registered(small.back().data()));
  }
  CHECK(tracker.report()[zb::mem_category::other] == 16 * 25 * sizeof(float));
  small.clear();
  CHECK(tracker.report()[zb::mem_category::other] == 0);
  // Freed memory is unregistered again (a fresh allocation at the same address registers).
  void* p = zb::cuda_pinned_space::allocate(4096 * 3 + 1);
  CHECK(zb::cuda_pinned_space::last_lock_ok());
  zb::cuda_pinned_space::deallocate(p, 4096 * 3 + 1);
  void* q = zb::cuda_pinned_space::allocate(4096 * 3 + 1);
  CHECK(zb::cuda_pinned_space::last_lock_ok());
  zb::cuda_pinned_space::deallocate(q, 4096 * 3 + 1);
}
