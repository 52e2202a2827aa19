// comm::nccl against the communicator contract (comm/comm.hpp) on the world size mpirun
// gave (CTest: 1 and 2 ranks), one GPU per rank, for float, half and bfloat16:
//  - every collective against the same operation done here on the host, with counts
//    that do not divide evenly; in place and out of place;
//  - reduce_mode::deterministic: bit-identical with comm::mpi (built on MPI_COMM_WORLD in
//    the same test) on the same inputs; reduce_mode::native: within tolerance;
//  - stream ordering: a collective follows the compute stream, request::wait() orders the
//    compute stream after it without a host wait; test(), synchronize(), out-of-order waits;
//  - grouped calls (guard and grouped()), across two communicators;
//  - counters equal comm::mpi's for the same calls, control traffic apart;
//  - control helpers (all_gather_values, all_gather_strings, agree);
//  - dup() and split(); the file bootstrap, its timeout error; blocking communicators;
//  - the abort channel (MPI and file): a rank that fails turns its peers' wait into an
//    error, no hang;
//  - the collective watchdog: a host wait past collective_timeout ends in its error
//    (over MPI the position exchange's verdict, the same on every rank; with the file
//    bootstrap the local deadline), the family stops, no hang.
// Skipped (exit 77) without a GPU, or when ranks would share a GPU (NCCL refuses that).
//
// Two forms from this one source: under mpirun (ZB_CUDA_TEST_MPI, CTest test_comm_nccl_npN;
// the world is MPI_COMM_WORLD and the host reference comm::mpi), and a single process
// without MPI (test_comm_nccl_single, for a machine with a GPU and no MPI: the world is
// one rank bootstrapped through a file, the host reference comm::self).
#include "cuda_test_main.hpp"

#ifdef ZB_CUDA_TEST_MPI
#include <zeroblocks/comm/mpi.hpp>
#endif
#include <zeroblocks/comm/nccl.cuh>
#include <zeroblocks/comm/self.hpp>
#include <zeroblocks/core/numeric.hpp>
#include <zeroblocks/space/cuda_space.hpp>

#include "comm_patterns.hpp"
#include "error_of.hpp"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace zb = zeroblocks;
using zbt::error_of;
using zbt::has;
using N = zb::comm::nccl;

namespace {

#ifdef ZB_CUDA_TEST_MPI
using host_comm = zb::comm::mpi;  // the host reference
int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}
void world_barrier() { MPI_Barrier(MPI_COMM_WORLD); }
long rank0_pid() {
  long pid = static_cast<long>(::getpid());
  MPI_Bcast(&pid, 1, MPI_LONG, 0, MPI_COMM_WORLD);
  return pid;
}
host_comm host_world() { return host_comm(MPI_COMM_WORLD); }

/// NCCL needs a GPU of its own per rank: when this node has fewer GPUs than ranks, every
/// rank skips the whole program together (CTest reports "Skipped").
void require_gpu_per_rank() {
  static int verdict = -1;
  if (verdict < 0) {
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    int local = 1, devices = 0;
    MPI_Comm_size(node, &local);
    MPI_Comm_free(&node);
    if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
    int ok = local <= devices ? 1 : 0;
    MPI_Allreduce(&ok, &verdict, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  }
  if (!verdict) {
    if (world_rank() == 0) std::printf("NCCL needs one GPU per rank and this node has fewer: test skipped\n");
    std::fflush(stdout);
    MPI_Finalize();
    std::exit(zb_skip_return_code);
  }
}
#else
using host_comm = zb::comm::self;  // one rank: the reference is the one-rank reduction
int world_rank() { return 0; }
int world_size() { return 1; }
void world_barrier() {}
long rank0_pid() { return static_cast<long>(::getpid()); }
host_comm host_world() { return host_comm(); }
void require_gpu_per_rank() {}  // the main skips without a GPU; one rank needs one
#endif

using zbt::bits_of;
using zbt::expected_reduction;
using zbt::pattern;

template <class T>
std::vector<T> filled(int j, std::size_t n) {
  std::vector<T> v(n);
  for (std::size_t k = 0; k < n; ++k) v[k] = pattern<T>(j, k);
  return v;
}
template <class T>
T sentinel() {
  if constexpr (std::is_same_v<T, float>) return -12345.0f;
  else return T::from_bits(0x7e55u);
}

/// The exact-ish value a native reduction approximates: the fp32 sum of the inputs as
/// stored in T, times scale, not rounded to T.
template <class T>
float fp32_reduction(int world, int r, std::size_t count, std::size_t i, float scale) {
  const std::size_t k = static_cast<std::size_t>(r) * count + i;
  float acc = 0.0f;
  for (int j = 0; j < world; ++j) acc += zb::to_float(pattern<T>(j, k));
  return acc * scale;
}
/// Sum of magnitudes for a tolerance on native reductions.
template <class T>
float magnitude(int world, int r, std::size_t count, std::size_t i) {
  const std::size_t k = static_cast<std::size_t>(r) * count + i;
  float m = 0.0f;
  for (int j = 0; j < world; ++j) m += std::fabs(zb::to_float(pattern<T>(j, k)));
  return m;
}
template <class T>
float tolerance() {
  if constexpr (std::is_same_v<T, float>) return 1e-5f;
  else if constexpr (std::is_same_v<T, zb::half>) return 4e-3f;
  else return 3e-2f;
}

/// Device array (cuda_space) with host transfers.
template <class T>
struct dev_array {
  explicit dev_array(std::size_t n) : n_(n), p_(static_cast<T*>(zb::cuda_space::allocate(n * sizeof(T)))) {}
  dev_array(const dev_array&) = delete;
  dev_array& operator=(const dev_array&) = delete;
  ~dev_array() { zb::cuda_space::deallocate(p_, n_ * sizeof(T)); }
  T* get() const { return p_; }
  void upload(const std::vector<T>& h) {
    REQUIRE(h.size() <= n_);
    zb::cuda_space::copy(p_, h.data(), h.size() * sizeof(T));
  }
  /// Read on stream `s` (ordered after its work), then wait for it.
  std::vector<T> download(cudaStream_t s) const {
    std::vector<T> h(n_);
    if (n_) {
      REQUIRE(cudaMemcpyAsync(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost, s) == cudaSuccess);
      REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
    }
    return h;
  }
  std::size_t n_;
  T* p_;
};

template <class T>
long first_bad(const std::vector<T>& got, const std::vector<T>& want) {
  if (got.size() != want.size()) return -2;
  for (std::size_t i = 0; i < got.size(); ++i)
    if (bits_of(got[i]) != bits_of(want[i])) return static_cast<long>(i);
  return -1;
}

zb::comm::nccl_config native() {
  zb::comm::nccl_config c;
  c.reduce = zb::comm::reduce_mode::native;
  return c;
}

// The last is past one grid-stride pass of the deterministic reduction's kernel
// (4096 blocks of 256 threads).
const std::size_t counts[] = {1, 7, 1000, 4099, (std::size_t{1} << 21) + 3};

std::string test_dir() {
  const std::string d = std::string(ZB_SWAP_TEST_DIR) + "/nccl_bootstrap";
  if (world_rank() == 0) std::filesystem::create_directories(d);
  world_barrier();
  return d;
}

/// A name no earlier run used: rank 0's pid and a counter, agreed over MPI.
std::string unique_name(const char* what) {
  static int serial = 0;
  return std::string(what) + "_" + std::to_string(rank0_pid()) + "_" + std::to_string(serial++);
}

/// The NCCL world: over MPI_COMM_WORLD, or (single process) one rank through a file.
N nccl_world(zb::comm::nccl_config cfg = {}) {
#ifdef ZB_CUDA_TEST_MPI
  return N(MPI_COMM_WORLD, cfg);
#else
  return N(zb::comm::file_bootstrap{test_dir(), unique_name("world"), 0, 1}, cfg);
#endif
}

/// Spin for `cycles` then fill `p[0..n)` with `value`: slow producer on the compute stream.
__global__ void fill_after_spin(float* p, std::size_t n, float value, long long cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
  for (std::size_t i = threadIdx.x; i < n; i += blockDim.x) p[i] = value;
}

std::size_t idx(zb::collective c) { return static_cast<std::size_t>(c); }

/// Spin until the host sets `*flag` (mapped host memory): a kernel that does not end on
/// its own, as a collective whose peer never came.
__global__ void spin_until(const volatile int* flag) {
  while (*flag == 0) {
  }
}

}  // namespace

TEST_CASE_TEMPLATE("comm::nccl: all_gather out of place and in place", T, float, zb::half, zb::bfloat16) {
  require_gpu_per_rank();
  const int rank = world_rank(), world = world_size();
  N comm = nccl_world();
  REQUIRE(comm.valid());
  REQUIRE(comm.rank() == rank);
  REQUIRE(comm.size() == world);
  zb::cuda_stream compute;
  comm.set_compute_stream(compute);
  CHECK(comm.compute_stream() == compute.get());
  for (std::size_t count : counts) {
    INFO("count " << count << " on " << world << " ranks");
    const std::size_t total = count * static_cast<std::size_t>(world);
    std::vector<T> want(total);
    for (int r = 0; r < world; ++r)
      for (std::size_t i = 0; i < count; ++i) want[static_cast<std::size_t>(r) * count + i] = pattern<T>(r, i);

    dev_array<T> send(count), recv(total);
    send.upload(filled<T>(rank, count));
    recv.upload(std::vector<T>(total, sentinel<T>()));
    const auto before = comm.counters();
    comm.all_gather(send.get(), recv.get(), count);
    CHECK(comm.counters()[zb::collective::all_gather] - before[zb::collective::all_gather] == total);
    CHECK(first_bad(recv.download(compute), want) == -1);

    // In place: this rank's block already sits at its offset.
    dev_array<T> inplace(total);
    std::vector<T> init(total, sentinel<T>());
    for (std::size_t i = 0; i < count; ++i) init[static_cast<std::size_t>(rank) * count + i] = pattern<T>(rank, i);
    inplace.upload(init);
    auto req = comm.iall_gather(inplace.get() + static_cast<std::size_t>(rank) * count, inplace.get(), count);
    CHECK(req.pending());
    req.synchronize();
    CHECK(!req.pending());
    CHECK(first_bad(inplace.download(compute), want) == -1);
  }
}

TEST_CASE("comm::nccl: the compute stream is stream 0 until set; dups made later inherit it") {
  require_gpu_per_rank();
  N comm = nccl_world();
  zb::cuda_stream a, b;
  CHECK(comm.compute_stream() == nullptr);
  const N before = comm.dup();
  comm.set_compute_stream(a);
  CHECK(comm.compute_stream() == a.get());
  CHECK(before.compute_stream() == nullptr);  // each communicator holds its own
  const N child = comm.dup();
  CHECK(child.compute_stream() == a.get());
  comm.set_compute_stream(b);
  CHECK(comm.compute_stream() == b.get());
  CHECK(child.compute_stream() == a.get());
}

TEST_CASE_TEMPLATE("comm::nccl: deterministic reduce_scatter equals comm::mpi bit for bit", T, float, zb::half,
                   zb::bfloat16) {
  require_gpu_per_rank();
  const int rank = world_rank(), world = world_size();
  N comm = nccl_world();
  CHECK(comm.config().reduce == zb::comm::reduce_mode::deterministic);
  host_comm host = host_world();
  zb::cuda_stream compute;
  comm.set_compute_stream(compute);
  for (float scale : {1.0f, 1.0f / static_cast<float>(world), 0.37f}) {
    for (std::size_t count : counts) {
      INFO("count " << count << ", scale " << scale << " on " << world << " ranks");
      const std::size_t total = count * static_cast<std::size_t>(world);
      const std::vector<T> input = filled<T>(rank, total);
      std::vector<T> want(count);
      for (std::size_t i = 0; i < count; ++i) want[i] = expected_reduction<T>(world, rank, count, i, scale);

      // Out of place.
      dev_array<T> buf(total), recv(count);
      buf.upload(input);
      comm.reduce_scatter(buf.get(), recv.get(), count, scale);
      const std::vector<T> got = recv.download(compute);
      CHECK(first_bad(got, want) == -1);

      // comm::mpi on the same inputs, on the host.
      std::vector<T> hbuf = input, hrecv(count);
      host.reduce_scatter(hbuf.data(), hrecv.data(), count, scale);
      CHECK(first_bad(got, hrecv) == -1);

      // In place: the result lands in this rank's block of buf.
      dev_array<T> buf2(total);
      buf2.upload(input);
      comm.ireduce_scatter(buf2.get(), buf2.get() + static_cast<std::size_t>(rank) * count, count, scale).wait();
      const std::vector<T> all = buf2.download(compute);
      const std::vector<T> mine(all.begin() + static_cast<std::ptrdiff_t>(rank * count),
                                all.begin() + static_cast<std::ptrdiff_t>((rank + 1) * count));
      CHECK(first_bad(mine, want) == -1);
    }
  }
}

TEST_CASE_TEMPLATE("comm::nccl: deterministic all_reduce equals reduce-scatter + all-gather and comm::mpi", T, float,
                   zb::half, zb::bfloat16) {
  require_gpu_per_rank();
  const int rank = world_rank(), world = world_size();
  N comm = nccl_world();
  host_comm host = host_world();
  zb::cuda_stream compute;
  comm.set_compute_stream(compute);
  for (std::size_t block : {std::size_t{1}, std::size_t{333}, std::size_t{2049}}) {
    const float scale = 0.5f;
    const std::size_t count = block * static_cast<std::size_t>(world);
    INFO("count " << count << " on " << world << " ranks");
    const std::vector<T> input = filled<T>(rank, count);
    std::vector<T> want(count);
    for (int r = 0; r < world; ++r)
      for (std::size_t i = 0; i < block; ++i)
        want[static_cast<std::size_t>(r) * block + i] = expected_reduction<T>(world, r, block, i, scale);
    dev_array<T> buf(count);
    buf.upload(input);
    const auto before = comm.counters();
    comm.all_reduce(buf.get(), count, scale);
    CHECK(comm.counters()[zb::collective::all_reduce] - before[zb::collective::all_reduce] == 2 * count);
    const std::vector<T> got = buf.download(compute);
    CHECK(first_bad(got, want) == -1);
    std::vector<T> hbuf = input;
    host.all_reduce(hbuf.data(), count, scale);
    CHECK(first_bad(got, hbuf) == -1);
  }
  if (world > 1) {
    dev_array<T> buf(5);
    CHECK(has(error_of([&] { comm.all_reduce(buf.get(), 3, 1.0f); }), "multiple of the world size"));
  }
}

TEST_CASE_TEMPLATE("comm::nccl: native reductions are close to the reference", T, float, zb::half, zb::bfloat16) {
  require_gpu_per_rank();
  const int rank = world_rank(), world = world_size();
  N comm = nccl_world(native());
  CHECK(comm.config().reduce == zb::comm::reduce_mode::native);
  zb::cuda_stream compute;
  comm.set_compute_stream(compute);
  for (float scale : {1.0f, 0.25f}) {
    const std::size_t count = 1001;
    const std::size_t total = count * static_cast<std::size_t>(world);
    INFO("scale " << scale << " on " << world << " ranks");
    dev_array<T> buf(total), recv(count);
    buf.upload(filled<T>(rank, total));
    comm.reduce_scatter(buf.get(), recv.get(), count, scale);
    const std::vector<T> got = recv.download(compute);
    int bad = 0;
    for (std::size_t i = 0; i < count; ++i) {
      const float want = fp32_reduction<T>(world, rank, count, i, scale);
      const float tol = tolerance<T>() * (magnitude<T>(world, rank, count, i) * scale + 1e-3f);
      if (std::fabs(zb::to_float(got[i]) - want) > tol) ++bad;
    }
    CHECK(bad == 0);

    dev_array<T> all(total);
    all.upload(filled<T>(rank, total));
    comm.all_reduce(all.get(), total, scale);
    const std::vector<T> agot = all.download(compute);
    bad = 0;
    for (int r = 0; r < world; ++r)
      for (std::size_t i = 0; i < count; ++i) {
        const float want = fp32_reduction<T>(world, r, count, i, scale);
        const float tol = tolerance<T>() * (magnitude<T>(world, r, count, i) * scale + 1e-3f);
        if (std::fabs(zb::to_float(agot[static_cast<std::size_t>(r) * count + i]) - want) > tol) ++bad;
      }
    CHECK(bad == 0);
  }
}

TEST_CASE_TEMPLATE("comm::nccl: broadcast from every root", T, float, zb::half, zb::bfloat16) {
  require_gpu_per_rank();
  const int rank = world_rank(), world = world_size();
  N comm = nccl_world();
  zb::cuda_stream compute;
  comm.set_compute_stream(compute);
  for (int root = 0; root < world; ++root) {
    const std::size_t count = 777;
    dev_array<T> buf(count);
    buf.upload(filled<T>(rank, count));
    comm.broadcast(buf.get(), count, root);
    CHECK(first_bad(buf.download(compute), filled<T>(root, count)) == -1);
  }
  dev_array<T> buf(4);
  CHECK(has(error_of([&] { comm.broadcast(buf.get(), 4, world); }), "out of range"));
}

TEST_CASE("comm::nccl: collectives follow the compute stream; wait() orders it without a host wait") {
  require_gpu_per_rank();
  const int rank = world_rank(), world = world_size();
  N comm = nccl_world();
  zb::cuda_stream compute;
  comm.set_compute_stream(compute);
  const std::size_t count = 4096, total = count * static_cast<std::size_t>(world);
  dev_array<float> send(count), recv(total);
  send.upload(std::vector<float>(count, -1.0f));
  // The producer is slow and nothing waits for it on the host: the gather must still see
  // its output, and the copy after wait() must see the gather's.
  fill_after_spin<<<1, 256, 0, compute>>>(send.get(), count, static_cast<float>(rank + 1), 100'000'000);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  auto req = comm.iall_gather(send.get(), recv.get(), count);
  req.wait();
  CHECK(!req.pending());
  const std::vector<float> got = recv.download(compute);
  long bad = -1;
  for (std::size_t i = 0; i < total && bad < 0; ++i)
    if (got[i] != static_cast<float>(i / count + 1)) bad = static_cast<long>(i);
  CHECK(bad == -1);

  // Several requests in flight, completed out of order, by test(), synchronize(), wait().
  dev_array<float> a(total), b(total), c(total);
  send.upload(std::vector<float>(count, static_cast<float>(rank)));
  auto ra = comm.iall_gather(send.get(), a.get(), count);
  auto rb = comm.iall_gather(send.get(), b.get(), count);
  auto rc = comm.iall_gather(send.get(), c.get(), count);
  rc.synchronize();
  while (!rb.test()) {
  }
  CHECK(rb.test());  // already complete: stays true
  ra.wait();
  comm.synchronize();
  for (auto* arr : {&a, &b, &c}) {
    const std::vector<float> h = arr->download(compute);
    for (std::size_t i = 0; i < total; ++i) REQUIRE(h[i] == static_cast<float>(i / count));
  }
  N::request empty;
  CHECK(!empty.pending());
  CHECK(empty.test());
  empty.wait();
}

TEST_CASE("comm::nccl: grouped calls, on one and on two communicators") {
  require_gpu_per_rank();
  const int rank = world_rank(), world = world_size();
  N comm = nccl_world();
  N other = comm.dup();
  zb::cuda_stream compute;
  comm.set_compute_stream(compute);
  other.set_compute_stream(compute);
  const std::size_t count = 513, total = count * static_cast<std::size_t>(world);
  dev_array<float> send(count), g1(total), g2(total), rs(total), out(count);
  send.upload(filled<float>(rank, count));
  rs.upload(filled<float>(rank, total));
  std::vector<float> want_gather(total), want_rs(count);
  for (int r = 0; r < world; ++r)
    for (std::size_t i = 0; i < count; ++i) want_gather[static_cast<std::size_t>(r) * count + i] = pattern<float>(r, i);
  for (std::size_t i = 0; i < count; ++i) want_rs[i] = expected_reduction<float>(world, rank, count, i, 0.5f);

  N::request r1, r2, r3;
  {
    N::group g;
    r1 = comm.iall_gather(send.get(), g1.get(), count);
    r2 = other.iall_gather(send.get(), g2.get(), count);
    r3 = comm.ireduce_scatter(rs.get(), out.get(), count, 0.5f);
    CHECK(has(error_of([&] { r1.wait(); }), "end the group first"));
    CHECK(r1.pending());
    CHECK(!r2.test());  // not launched yet
    g.end();
  }
  r1.wait();
  r2.wait();
  r3.wait();
  CHECK(first_bad(g1.download(compute), want_gather) == -1);
  CHECK(first_bad(g2.download(compute), want_gather) == -1);
  CHECK(first_bad(out.download(compute), want_rs) == -1);

  // The function form, with a deterministic all-reduce (two phases) inside.
  dev_array<float> ar(total);
  ar.upload(filled<float>(rank, total));
  N::request r4;
  N::grouped([&] {
    r4 = comm.iall_reduce(ar.get(), total, 1.0f);
    r1 = other.iall_gather(send.get(), g1.get(), count);
  });
  r4.synchronize();
  r1.wait();
  std::vector<float> want_ar(total);
  for (int r = 0; r < world; ++r)
    for (std::size_t i = 0; i < count; ++i)
      want_ar[static_cast<std::size_t>(r) * count + i] = expected_reduction<float>(world, r, count, i, 1.0f);
  CHECK(first_bad(ar.download(compute), want_ar) == -1);
  CHECK(first_bad(g1.download(compute), want_gather) == -1);
}

TEST_CASE("comm::nccl: counters follow comm::mpi's convention; control apart") {
  require_gpu_per_rank();
  const int world = world_size();
  N comm = nccl_world();
  host_comm host = host_world();
  const std::size_t c = 12, total = c * static_cast<std::size_t>(world);
  dev_array<zb::half> d(total), d2(total);
  std::vector<zb::half> h(total), h2(total);
  auto both = [&](auto&& on_nccl, auto&& on_mpi) {
    on_nccl();
    on_mpi();
  };
  both([&] { comm.all_gather(d.get(), d2.get(), c); }, [&] { host.all_gather(h.data(), h2.data(), c); });
  both([&] { comm.all_gather(d.get(), d2.get(), 0); }, [&] { host.all_gather(h.data(), h2.data(), 0); });
  both([&] { comm.reduce_scatter(d2.get(), d.get(), c, 1.0f); }, [&] { host.reduce_scatter(h2.data(), h.data(), c, 1.0f); });
  both([&] { comm.iall_reduce(d2.get(), total, 0.5f).wait(); }, [&] { host.iall_reduce(h2.data(), total, 0.5f).wait(); });
  both([&] { comm.ibroadcast(d.get(), c, 0).wait(); }, [&] { host.ibroadcast(h.data(), c, 0).wait(); });
  both([&] { comm.barrier(); }, [&] { host.barrier(); });
  both([&] { (void)comm.all_gather_values({1.0, 2.0, 3.0}); }, [&] { (void)host.all_gather_values({1.0, 2.0, 3.0}); });
  both([&] { (void)comm.all_gather_strings("abc"); }, [&] { (void)host.all_gather_strings("abc"); });
  both([&] { comm.agree(true, "fine"); }, [&] { host.agree(true, "fine"); });
  const zb::comm_counters& a = comm.counters();
  const zb::comm_counters& b = host.counters();
  for (std::size_t k = 0; k < zb::collective_count; ++k) {
    INFO("kind " << zb::collective_name(static_cast<zb::collective>(k)));
    CHECK(a.elements[k] == b.elements[k]);
    CHECK(a.calls[k] == b.calls[k]);
  }
  CHECK(a.control_elements == b.control_elements);
  CHECK(a.control_calls == b.control_calls);
  CHECK(a[zb::collective::all_gather] == total);
  CHECK(a.calls[idx(zb::collective::all_gather)] == 2);
  CHECK(a[zb::collective::reduce_scatter] == total);
  CHECK(a[zb::collective::all_reduce] == 2 * total);
  CHECK(a[zb::collective::broadcast] == c);
  // A dup counts for itself.
  N d3 = comm.dup();
  CHECK(d3.counters().payload() == 0);
}

TEST_CASE("comm::nccl: control helpers") {
  require_gpu_per_rank();
  const int rank = world_rank(), world = world_size();
  N comm = nccl_world();
  const auto values = comm.all_gather_values({static_cast<double>(rank), 0.5 * rank, -1.0});
  REQUIRE(values.size() == 3 * static_cast<std::size_t>(world));
  for (int r = 0; r < world; ++r) {
    CHECK(values[3 * r] == r);
    CHECK(values[3 * r + 1] == 0.5 * r);
    CHECK(values[3 * r + 2] == -1.0);
  }
  const auto strings = comm.all_gather_strings(std::string(static_cast<std::size_t>(rank) * 3, 'x'));
  REQUIRE(strings.size() == static_cast<std::size_t>(world));
  for (int r = 0; r < world; ++r) CHECK(strings[r] == std::string(static_cast<std::size_t>(r) * 3, 'x'));
  comm.agree(true, "nothing wrong");
  const std::string e = error_of([&] { comm.agree(rank != world - 1, "rank-specific trouble"); });
  CHECK(has(e, "rank " + std::to_string(world - 1) + ": rank-specific trouble"));
  // A failed agreement leaves the communicator usable.
  CHECK(!comm.failed());
  comm.agree(true, "still fine");
  CHECK(comm.all_gather_values({1.0}).size() == static_cast<std::size_t>(world));
}

TEST_CASE("comm::nccl: dup and split") {
  require_gpu_per_rank();
  const int rank = world_rank(), world = world_size();
  N comm = nccl_world();
  zb::cuda_stream compute;
  comm.set_compute_stream(compute);
  N d = comm.dup();
  CHECK(d.valid());
  CHECK(d.rank() == rank);
  CHECK(d.size() == world);
  CHECK(d.stream() != comm.stream());
  CHECK(d.handle() != comm.handle());
  CHECK(d.compute_stream() == compute.get());
  CHECK(d.config().reduce == comm.config().reduce);
  {
    dev_array<float> s(3), r(3 * static_cast<std::size_t>(world));
    s.upload(std::vector<float>(3, static_cast<float>(rank)));
    d.all_gather(s.get(), r.get(), 3);
    const auto h = r.download(compute);
    for (std::size_t i = 0; i < h.size(); ++i) CHECK(h[i] == static_cast<float>(i / 3));
  }
  // Ranks of one parity, ordered by descending world rank (key = -rank).
  N sub = comm.split(rank % 2, -rank);
  REQUIRE(sub.valid());
  std::vector<int> members;
  for (int r = world - 1; r >= 0; --r)
    if (r % 2 == rank % 2) members.push_back(r);
  CHECK(sub.size() == static_cast<int>(members.size()));
  CHECK(members[static_cast<std::size_t>(sub.rank())] == rank);
  {
    dev_array<float> s(1), r(members.size());
    s.upload({static_cast<float>(rank)});
    sub.all_gather(s.get(), r.get(), 1);
    const auto h = r.download(compute);
    for (std::size_t i = 0; i < members.size(); ++i) CHECK(h[i] == static_cast<float>(members[i]));
    dev_array<float> rs(members.size()), one(1);
    rs.upload(std::vector<float>(members.size(), 1.0f));
    sub.reduce_scatter(rs.get(), one.get(), 1, 1.0f);
    CHECK(one.download(compute)[0] == static_cast<float>(members.size()));
  }
  // Opting out: an empty communicator.
  N none = comm.split(rank == 0 ? -1 : 1, rank);
  CHECK(none.valid() == (rank != 0));
  if (rank == 0) {
    CHECK(none.size() == 0);
    CHECK(has(error_of([&] { none.barrier(); }), "empty communicator"));
  } else {
    CHECK(none.size() == world - 1);
    none.barrier();
  }
  // Moved-from communicators are empty.
  N moved(std::move(d));
  CHECK(moved.valid());
  CHECK(!d.valid());
}

TEST_CASE("comm::nccl: blocking communicators work the same") {
  require_gpu_per_rank();
  const int rank = world_rank(), world = world_size();
  zb::comm::nccl_config cfg;
  cfg.blocking = true;
  cfg.name = "zeroblocks-test";
  N comm = nccl_world(cfg);
  N d = comm.dup();
  CHECK(d.config().blocking);
  const std::size_t count = 100, total = count * static_cast<std::size_t>(world);
  dev_array<zb::bfloat16> buf(total), out(count);
  buf.upload(filled<zb::bfloat16>(rank, total));
  d.reduce_scatter(buf.get(), out.get(), count, 2.0f);
  std::vector<zb::bfloat16> want(count);
  for (std::size_t i = 0; i < count; ++i) want[i] = expected_reduction<zb::bfloat16>(world, rank, count, i, 2.0f);
  CHECK(first_bad(out.download(d.compute_stream()), want) == -1);
  comm.barrier();
}

TEST_CASE("comm::nccl: file bootstrap") {
  require_gpu_per_rank();
  const int rank = world_rank(), world = world_size();
  const std::string dir = test_dir();
  const std::string name = unique_name("boot");
  zb::comm::file_bootstrap boot{dir, name, rank, world, std::chrono::seconds(60)};
  N comm(boot);
  CHECK(comm.rank() == rank);
  CHECK(comm.size() == world);
  if (rank == 0) CHECK(!std::filesystem::exists(std::filesystem::path(dir) / (name + ".ncclid")));
  host_comm host = host_world();
  const std::size_t count = 999, total = count * static_cast<std::size_t>(world);
  const std::vector<zb::half> input = filled<zb::half>(rank, total);
  dev_array<zb::half> buf(total), out(count);
  buf.upload(input);
  comm.reduce_scatter(buf.get(), out.get(), count, 0.3f);
  std::vector<zb::half> hbuf = input, hout(count);
  host.reduce_scatter(hbuf.data(), hout.data(), count, 0.3f);
  CHECK(first_bad(out.download(comm.compute_stream()), hout) == -1);
  // Control helpers over the file-bootstrapped communicator, and a dup.
  N d = comm.dup();
  const auto v = d.all_gather_values({static_cast<double>(rank)});
  for (int r = 0; r < world; ++r) CHECK(v[r] == r);
  CHECK(has(error_of([&] { d.agree(rank != 0, "rank zero says no"); }), "rank 0: rank zero says no"));
  d.barrier();
}

TEST_CASE("comm::nccl: file bootstrap errors: timeout, bad directory, bad rank") {
  require_gpu_per_rank();
  const std::string dir = test_dir();
  const std::string name = unique_name("nobody_writes");
  const std::string path = (std::filesystem::path(dir) / (name + ".ncclid")).string();
  const auto start = std::chrono::steady_clock::now();
  // Every rank plays a rank > 0 of a job whose rank 0 never comes.
  const std::string e = error_of([&] { N c(zb::comm::file_bootstrap{dir, name, 1, 2, std::chrono::milliseconds(300)}); });
  CHECK(has(e, "timed out"));
  CHECK(has(e, path));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(30));
  CHECK(has(error_of([&] { N c(zb::comm::file_bootstrap{dir + "/no/such/dir", name, 0, 1}); }), "does not exist"));
  CHECK(has(error_of([&] { N c(zb::comm::file_bootstrap{dir, name, 2, 2}); }), "out of range"));
  CHECK(has(error_of([&] { N c(zb::comm::file_bootstrap{dir, "a/b", 0, 1}); }), "file name"));
}

/// Rank 0 fails before a collective; the others wait on it and must raise, not hang.
void abort_scenario(N& comm) {
  const int rank = comm.rank(), world = comm.size();
  zb::cuda_stream compute;
  comm.set_compute_stream(compute);
  const std::size_t count = 1 << 16;
  dev_array<float> send(count), recv(count * static_cast<std::size_t>(world));
  if (rank == 0) {
    comm.abort_peers("boom on rank zero");
    CHECK(comm.failed());
    CHECK(!comm.peer_failed());
    CHECK(has(error_of([&] { comm.barrier(); }), "boom on rank zero"));
  } else {
    const std::string e = error_of([&] {
      auto req = comm.iall_gather(send.get(), recv.get(), count);
      req.synchronize();
    });
    CHECK(has(e, "rank 0 failed: boom on rank zero"));
    CHECK(comm.failed());
    CHECK(comm.peer_failed());
    CHECK(has(error_of([&] { comm.barrier(); }), "rank 0 failed"));
  }
  // Both wait here on the host (MPI), outside the failed communicator.
  REQUIRE(cudaStreamSynchronize(compute) == cudaSuccess);
}

#ifdef ZB_CUDA_TEST_MPI
TEST_CASE("comm::nccl: a failed rank makes its peers raise, not hang (MPI channel)") {
  require_gpu_per_rank();
  N comm = nccl_world();
  abort_scenario(comm);
  world_barrier();
}
#endif

TEST_CASE("comm::nccl: a failed rank makes its peers raise, not hang (file channel)") {
  require_gpu_per_rank();
  const std::string dir = test_dir();
  N comm(zb::comm::file_bootstrap{dir, unique_name("abort"), world_rank(), world_size()});
  abort_scenario(comm);
  world_barrier();
}

TEST_CASE("comm::nccl: a host wait past collective_timeout ends in the watchdog's error, not a hang") {
  require_gpu_per_rank();
  int* flag = nullptr;
  REQUIRE(cudaHostAlloc(reinterpret_cast<void**>(&flag), sizeof(int), cudaHostAllocMapped) == cudaSuccess);
  *reinterpret_cast<volatile int*>(flag) = 0;
  int* dflag = nullptr;
  REQUIRE(cudaHostGetDevicePointer(reinterpret_cast<void**>(&dflag), flag, 0) == cudaSuccess);
  // Released after 8 s whatever happens: if ncclCommAbort waited for the device, the test
  // would end late (and fail its time check) rather than hang.
  std::thread release([flag] {
    std::this_thread::sleep_for(std::chrono::seconds(8));
    *reinterpret_cast<volatile int*>(flag) = 1;
  });
  {
    N comm = nccl_world();
    N other = comm.dup();
    comm.set_collective_timeout(1);
    CHECK(other.collective_timeout() == 1);  // shared by the family
    comm.set_label("gradient");
    REQUIRE(comm.watch_activity() != nullptr);
    // The communicator's own stream does not drain.
    spin_until<<<1, 1, 0, comm.stream()>>>(dflag);
    REQUIRE(cudaGetLastError() == cudaSuccess);
    const auto t0 = std::chrono::steady_clock::now();
    std::string e;
    bool collective = false;
    try {
      comm.synchronize();
    } catch (const zb::collective_error& x) {
      collective = true;
      e = x.what();
    } catch (const zb::error& x) {
      e = x.what();
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    INFO(e);
    CHECK(has(e, "collective watchdog"));
    CHECK(secs < 1 + 1 + 3);  // the timeout, the grace (1 s at least), a margin
#ifdef ZB_CUDA_TEST_MPI
    // Every rank stuck alike: the exchange finds nobody diverged, and says so everywhere.
    CHECK(collective);
    CHECK(has(e, "waited 1 s (collective_timeout) without progress"));
    CHECK(has(e, "Every rank is in the same place (outside any engine call, waiting in the collectives issued "
                 "on the gradient communicator (comm::nccl)): no rank diverged"));
#else
    CHECK(!collective);
    CHECK(has(e, "collective watchdog: comm::nccl on rank 0 (device "));
    CHECK(has(e, "waited 1 s (collective_timeout) for the collectives issued on the gradient communicator to "
                 "complete on the device, outside any engine call"));
#endif
    CHECK(comm.failed());
    CHECK(has(error_of([&] { comm.barrier(); }), "collective watchdog"));
#ifdef ZB_CUDA_TEST_MPI
    CHECK(other.failed());  // the verdict stops the whole family
    CHECK(has(error_of([&] { other.barrier(); }), "collective watchdog"));
#endif
    release.join();  // the kernel ends; the destructors can drain the streams
  }
  REQUIRE(cudaFreeHost(flag) == cudaSuccess);
  world_barrier();
}
