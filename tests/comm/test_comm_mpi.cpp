// comm::mpi against its contract (comm/comm.hpp), on the world size mpirun gave (CTest
// runs 1, 2, 3 and 4 ranks), for float, half and bfloat16 payloads:
//  - all-gather out of place and in place; reduce-scatter and all-reduce bit-exact
//    against a sum computed here, independently, in the documented way (fp32, rank
//    order 0..N-1, times scale, rounded once); all-reduce == reduce-scatter + all-gather;
//  - non-blocking collectives with several requests in flight, completed out of order;
//  - broadcast from every root;
//  - the counting convention, per collective kind, and control traffic kept apart;
//  - control helpers (agree, all_gather_values, all_gather_strings);
//  - the abort channel: a rank that fails turns its peers' wait into an error, no hang;
//  - on one rank, comm::self gives the same bits and payload counts as comm::mpi;
//  - the progress thread: a large non-blocking all-gather lands while this rank makes
//    no MPI call at all (only watches its receive buffer).
// Every test case builds a fresh comm::mpi: a failed one is unusable by design.
#include "mpi_test_main.hpp"

#include <zeroblocks/comm/mpi.hpp>

#include "comm_patterns.hpp"
#include "error_of.hpp"
#include <zeroblocks/comm/self.hpp>
#include <zeroblocks/core/numeric.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <thread>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

namespace zb = zeroblocks;
using zbt::error_of;
using zbt::has;
using C = zb::comm::mpi;

namespace {

using zbt::bits_of;
using zbt::expected_reduction;
using zbt::pattern;

/// A value no pattern produces (a NaN with a recognisable payload for 16-bit types).
template <class T>
T sentinel() {
  if constexpr (std::is_same_v<T, float>) {
    float f;
    const std::uint32_t b = 0x7fc12345u;
    std::memcpy(&f, &b, 4);
    return f;
  } else {
    return T::from_bits(0x7e55u);
  }
}


template <class T>
std::vector<T> filled(int j, std::size_t n) {
  std::vector<T> v(n);
  for (std::size_t k = 0; k < n; ++k) v[k] = pattern<T>(j, k);
  return v;
}

/// Bitwise equality of n elements (memcmp, but defined for empty, possibly null, ranges).
template <class T>
bool same_bits(const T* a, const T* b, std::size_t n) {
  return n == 0 || std::memcmp(a, b, n * sizeof(T)) == 0;
}

std::size_t idx(zb::collective c) { return static_cast<std::size_t>(c); }

/// `d` (a counter difference) shows exactly one call of kind `c` moving `elements`,
/// nothing of any other kind, and no control traffic.
void check_only(const zb::comm_counters& d, zb::collective c, std::uint64_t elements, std::uint64_t calls = 1) {
  for (std::size_t k = 0; k < zb::collective_count; ++k) {
    INFO("kind " << zb::collective_name(static_cast<zb::collective>(k)) << " (expected change in "
                 << zb::collective_name(c) << ")");
    CHECK(d.elements[k] == (k == idx(c) ? elements : 0));
    CHECK(d.calls[k] == (k == idx(c) ? calls : 0));
  }
  CHECK(d.control_elements == 0);
  CHECK(d.control_calls == 0);
}

/// `d` shows no payload traffic at all.
void check_no_payload(const zb::comm_counters& d) {
  for (std::size_t k = 0; k < zb::collective_count; ++k) {
    CHECK(d.elements[k] == 0);
    CHECK(d.calls[k] == 0);
  }
}

const std::size_t counts[] = {0, 1, 7, 1000, 2500};  // 2500: crosses reduce_blocks' 2048 chunk

}  // namespace

TEST_CASE_TEMPLATE("all_gather out of place and in place", T, float, zb::half, zb::bfloat16) {
  const int rank = zb_world_rank(), world = zb_world_size();
  C comm(MPI_COMM_WORLD);
  REQUIRE(comm.rank() == rank);
  REQUIRE(comm.size() == world);
  for (std::size_t count : counts) {
    INFO("count " << count << " on " << world << " ranks");
    const std::size_t total = count * static_cast<std::size_t>(world);

    // Out of place: send is this rank's block, recv starts as sentinels.
    std::vector<T> send = filled<T>(rank, count);
    std::vector<T> recv(total, sentinel<T>());
    auto before = comm.counters();
    comm.all_gather(send.data(), recv.data(), count);
    check_only(comm.counters() - before, zb::collective::all_gather, total);
    long bad = -1;
    for (int r = 0; r < world && bad < 0; ++r)
      for (std::size_t i = 0; i < count; ++i)
        if (bits_of(recv[r * count + i]) != bits_of(pattern<T>(r, i))) {
          bad = static_cast<long>(r * count + i);
          break;
        }
    CHECK(bad == -1);
    // The send buffer is left alone.
    std::vector<T> send_again = filled<T>(rank, count);
    CHECK(same_bits(send.data(), send_again.data(), count));

    // In place: send == recv + rank * count; the other blocks start as sentinels.
    std::vector<T> buf(total, sentinel<T>());
    for (std::size_t i = 0; i < count; ++i) buf[rank * count + i] = pattern<T>(rank, i);
    before = comm.counters();
    comm.all_gather(buf.data() + static_cast<std::size_t>(rank) * count, buf.data(), count);
    check_only(comm.counters() - before, zb::collective::all_gather, total);
    bad = -1;
    for (int r = 0; r < world && bad < 0; ++r)
      for (std::size_t i = 0; i < count; ++i)
        if (bits_of(buf[r * count + i]) != bits_of(pattern<T>(r, i))) {
          bad = static_cast<long>(r * count + i);
          break;
        }
    CHECK(bad == -1);
  }
}

TEST_CASE_TEMPLATE("reduce_scatter equals the fp32 rank-ordered sum, scaled, rounded once", T, float, zb::half,
                   zb::bfloat16) {
  const int rank = zb_world_rank(), world = zb_world_size();
  C comm(MPI_COMM_WORLD);
  for (float scale : {1.0f, 1.0f / static_cast<float>(world), 0.3f}) {
    for (std::size_t count : counts) {
      INFO("count " << count << " scale " << scale << " on " << world << " ranks");
      const std::size_t total = count * static_cast<std::size_t>(world);
      std::vector<T> buf = filled<T>(rank, total);
      std::vector<T> recv(count, sentinel<T>());
      auto before = comm.counters();
      comm.reduce_scatter(buf.data(), recv.data(), count, scale);
      check_only(comm.counters() - before, zb::collective::reduce_scatter, total);
      long bad = -1;
      for (std::size_t i = 0; i < count; ++i)
        if (bits_of(recv[i]) != bits_of(expected_reduction<T>(world, rank, count, i, scale))) {
          bad = static_cast<long>(i);
          break;
        }
      CHECK(bad == -1);
      if (bad >= 0) {
        INFO("got " << zb::to_float(recv[bad]) << " expected "
                    << zb::to_float(expected_reduction<T>(world, rank, count, bad, scale)));
        CHECK(false);
      }
    }
  }
}

TEST_CASE("the reduction's summation order is observable (the bit-exact checks can fail)") {
  // Guards the test above against being vacuous: with this pattern, summing in the
  // reverse rank order gives different fp32 bits for some element when N >= 3.
  const int world = zb_world_size();
  if (world < 3) return;
  const std::size_t count = 1000;
  bool differs = false;
  for (int r = 0; r < world && !differs; ++r)
    for (std::size_t i = 0; i < count && !differs; ++i) {
      const std::size_t k = static_cast<std::size_t>(r) * count + i;
      float fwd = zb::to_float(pattern<float>(0, k)), rev = zb::to_float(pattern<float>(world - 1, k));
      for (int j = 1; j < world; ++j) fwd += zb::to_float(pattern<float>(j, k));
      for (int j = world - 2; j >= 0; --j) rev += zb::to_float(pattern<float>(j, k));
      differs = bits_of(fwd) != bits_of(rev);
    }
  CHECK(differs);
}

TEST_CASE_TEMPLATE("all_reduce equals reduce_scatter then all_gather, bit for bit", T, float, zb::half,
                   zb::bfloat16) {
  const int rank = zb_world_rank(), world = zb_world_size();
  const std::size_t n = static_cast<std::size_t>(world);
  C comm(MPI_COMM_WORLD);
  for (float scale : {1.0f, 1.0f / static_cast<float>(world), 0.3f}) {
    for (std::size_t block : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{1000}}) {
      const std::size_t count = block * n;
      INFO("count " << count << " scale " << scale << " on " << world << " ranks");
      // Reference path: reduce-scatter into my block, all-gather the blocks.
      std::vector<T> scratch = filled<T>(rank, count);
      std::vector<T> mine(block, sentinel<T>());
      std::vector<T> ref(count, sentinel<T>());
      comm.reduce_scatter(scratch.data(), mine.data(), block, scale);
      comm.all_gather(mine.data(), ref.data(), block);

      std::vector<T> buf = filled<T>(rank, count);
      auto before = comm.counters();
      comm.all_reduce(buf.data(), count, scale);
      // Counted as one all-reduce of 2*count, not as its parts.
      check_only(comm.counters() - before, zb::collective::all_reduce, 2 * count);

      CHECK(same_bits(buf.data(), ref.data(), count));
      long bad = -1;
      for (int r = 0; r < world && bad < 0; ++r)
        for (std::size_t i = 0; i < block; ++i)
          if (bits_of(buf[r * block + i]) != bits_of(expected_reduction<T>(world, r, block, i, scale))) {
            bad = static_cast<long>(r * block + i);
            break;
          }
      CHECK(bad == -1);
    }
  }

  // A count that is not a multiple of the world size is refused, on every rank, and
  // the communicator stays usable afterwards.
  if (world > 1) {
    std::vector<T> buf = filled<T>(rank, 2 * n + 1);
    auto before = comm.counters();
    auto msg = error_of([&] { comm.all_reduce(buf.data(), 2 * n + 1, 1.0f); });
    INFO(msg);
    CHECK(has(msg, "is not a multiple of the world size " + std::to_string(world)));
    check_no_payload(comm.counters() - before);
    CHECK_FALSE(comm.failed());
    std::vector<T> ok = filled<T>(rank, n);
    CHECK_NOTHROW(comm.all_reduce(ok.data(), n, 1.0f));
    CHECK(bits_of(ok[rank]) == bits_of(expected_reduction<T>(world, rank, 1, 0, 1.0f)));
  }
}

TEST_CASE_TEMPLATE("iall_reduce, ibroadcast, ibarrier: in flight together, completed by test() or wait()", T,
                   float, zb::half, zb::bfloat16) {
  const int rank = zb_world_rank(), world = zb_world_size();
  const std::size_t n = static_cast<std::size_t>(world);
  C comm(MPI_COMM_WORLD);
  const std::size_t block = 300, count = block * n;
  const float scale = 1.0f / static_cast<float>(world);
  std::vector<T> a = filled<T>(rank, count), b = filled<T>(rank + 7, count);
  std::vector<T> bc = filled<T>(rank, 50);
  const int root = world - 1;
  auto before = comm.counters();
  auto ra = comm.iall_reduce(a.data(), count, scale);
  auto rb = comm.iall_reduce(b.data(), count, scale);
  auto rc = comm.ibroadcast(bc.data(), bc.size(), root);
  auto rd = comm.ibarrier();
  // Two-stage request: drive it by test() alone until done.
  while (!rb.test()) {
  }
  CHECK_FALSE(rb.pending());
  rd.wait();
  rc.wait();
  ra.wait();
  auto d = comm.counters() - before;
  CHECK(d.elements[idx(zb::collective::all_reduce)] == 4 * count);
  CHECK(d.elements[idx(zb::collective::broadcast)] == bc.size());
  CHECK(d.elements[idx(zb::collective::all_gather)] == 0);
  CHECK(d.elements[idx(zb::collective::reduce_scatter)] == 0);
  // Same bits as the blocking form.
  std::vector<T> ref = filled<T>(rank, count);
  comm.all_reduce(ref.data(), count, scale);
  CHECK(same_bits(a.data(), ref.data(), count));
  std::vector<T> ref_b = filled<T>(rank + 7, count);
  comm.all_reduce(ref_b.data(), count, scale);
  CHECK(same_bits(b.data(), ref_b.data(), count));
  std::vector<T> expect_bc = filled<T>(root, 50);
  CHECK(same_bits(bc.data(), expect_bc.data(), bc.size()));
}

TEST_CASE_TEMPLATE("non-blocking collectives: several in flight, waited in reverse order", T, float, zb::half,
                   zb::bfloat16) {
  const int rank = zb_world_rank(), world = zb_world_size();
  const std::size_t n = static_cast<std::size_t>(world);
  C comm(MPI_COMM_WORLD);
  const std::size_t ca = 1000, cb = 7, cc = 2500, cd = 1;
  const float sa = 0.5f, sc = 1.0f / static_cast<float>(world);

  std::vector<T> bufa = filled<T>(rank, ca * n), recva(ca, sentinel<T>());
  std::vector<T> sendb = filled<T>(rank, cb), recvb(cb * n, sentinel<T>());
  std::vector<T> bufc = filled<T>(rank, cc * n), recvc(cc, sentinel<T>());
  std::vector<T> bufd(cd * n, sentinel<T>());
  bufd[rank] = pattern<T>(rank, 0);

  const auto before = comm.counters();
  auto ra = comm.ireduce_scatter(bufa.data(), recva.data(), ca, sa);
  auto rb = comm.iall_gather(sendb.data(), recvb.data(), cb);
  auto rc = comm.ireduce_scatter(bufc.data(), recvc.data(), cc, sc);
  auto rd = comm.iall_gather(bufd.data() + rank * cd, bufd.data(), cd);  // in place
  auto re = comm.ireduce_scatter(static_cast<T*>(nullptr), static_cast<T*>(nullptr), 0, 1.0f);  // empty
  // Counted at issue.
  const auto issued = comm.counters() - before;
  CHECK(issued[zb::collective::reduce_scatter] == (ca + cc) * n);
  CHECK(issued.calls[idx(zb::collective::reduce_scatter)] == 3);
  CHECK(issued[zb::collective::all_gather] == (cb + cd) * n);
  CHECK(issued.calls[idx(zb::collective::all_gather)] == 2);
  CHECK(issued[zb::collective::all_reduce] == 0);
  CHECK(issued.control_calls == 0);

  re.wait();
  rd.wait();
  CHECK_FALSE(rd.pending());
  rc.wait();
  // b by polling test() instead of wait().
  while (!rb.test()) {
  }
  CHECK(rb.test());  // a completed request stays complete
  ra.wait();
  ra.wait();  // waiting twice is harmless

  long bad = -1;
  for (std::size_t i = 0; i < ca && bad < 0; ++i)
    if (bits_of(recva[i]) != bits_of(expected_reduction<T>(world, rank, ca, i, sa))) bad = static_cast<long>(i);
  CHECK(bad == -1);
  bad = -1;
  for (std::size_t i = 0; i < cc && bad < 0; ++i)
    if (bits_of(recvc[i]) != bits_of(expected_reduction<T>(world, rank, cc, i, sc))) bad = static_cast<long>(i);
  CHECK(bad == -1);
  bad = -1;
  for (int r = 0; r < world && bad < 0; ++r)
    for (std::size_t i = 0; i < cb; ++i)
      if (bits_of(recvb[r * cb + i]) != bits_of(pattern<T>(r, i))) bad = static_cast<long>(r * cb + i);
  CHECK(bad == -1);
  for (int r = 0; r < world; ++r) CHECK(bits_of(bufd[r]) == bits_of(pattern<T>(r, 0)));
}

TEST_CASE_TEMPLATE("broadcast from every root", T, float, zb::half, zb::bfloat16) {
  const int rank = zb_world_rank(), world = zb_world_size();
  C comm(MPI_COMM_WORLD);
  for (std::size_t count : {std::size_t{0}, std::size_t{1}, std::size_t{1000}}) {
    for (int root = 0; root < world; ++root) {
      INFO("root " << root << " count " << count);
      std::vector<T> buf = filled<T>(rank, count);
      auto before = comm.counters();
      comm.broadcast(buf.data(), count, root);
      check_only(comm.counters() - before, zb::collective::broadcast, count);
      long bad = -1;
      for (std::size_t i = 0; i < count && bad < 0; ++i)
        if (bits_of(buf[i]) != bits_of(pattern<T>(root, i))) bad = static_cast<long>(i);
      CHECK(bad == -1);
    }
  }
  // A root outside the communicator is refused locally on every rank.
  std::vector<T> buf(4);
  CHECK(has(error_of([&] { comm.broadcast(buf.data(), 4, world); }), "root " + std::to_string(world) + " out of range"));
  CHECK(has(error_of([&] { comm.broadcast(buf.data(), 4, -1); }), "out of range"));
  CHECK_FALSE(comm.failed());
}

TEST_CASE("counters: a sequence of collectives adds up per kind; control is separate") {
  const int rank = zb_world_rank(), world = zb_world_size();
  const std::uint64_t n = static_cast<std::uint64_t>(world);
  C comm(MPI_COMM_WORLD);
  const auto start = comm.counters();  // construction's own agreement is not payload
  check_no_payload(start);

  std::vector<float> a(6 * n, 1.0f), r(6 * n);
  comm.all_gather(a.data(), r.data(), 6);           // 6n
  comm.all_gather(a.data(), r.data(), 0);           // 0, still a call
  comm.reduce_scatter(a.data(), r.data(), 5, 1.0f);  // 5n
  comm.all_reduce(a.data(), 6 * n, 1.0f);           // 12n
  comm.broadcast(a.data(), 9, 0);                   // 9
  comm.barrier();                                   // nothing
  const auto payload = comm.counters() - start;
  CHECK(payload[zb::collective::all_gather] == 6 * n);
  CHECK(payload.calls[idx(zb::collective::all_gather)] == 2);
  CHECK(payload[zb::collective::reduce_scatter] == 5 * n);
  CHECK(payload.calls[idx(zb::collective::reduce_scatter)] == 1);
  CHECK(payload[zb::collective::all_reduce] == 12 * n);
  CHECK(payload.calls[idx(zb::collective::all_reduce)] == 1);
  CHECK(payload[zb::collective::broadcast] == 9);
  CHECK(payload.calls[idx(zb::collective::broadcast)] == 1);
  CHECK(payload.payload() == 6 * n + 5 * n + 12 * n + 9);
  CHECK(payload.control_elements == 0);
  CHECK(payload.control_calls == 0);

  // Control helpers: control counters move, payload counters do not.
  auto before = comm.counters();
  auto vals = comm.all_gather_values({1.0, 2.0, static_cast<double>(rank)});
  auto d = comm.counters() - before;
  check_no_payload(d);
  CHECK(d.control_elements == 3 * n);
  CHECK(d.control_calls == 1);
  CHECK(vals.size() == 3 * n);

  before = comm.counters();
  comm.agree(true, "fine");
  d = comm.counters() - before;
  check_no_payload(d);
  CHECK(d.control_calls == 1);

  before = comm.counters();
  (void)comm.all_gather_strings("x");
  d = comm.counters() - before;
  check_no_payload(d);
  CHECK(d.control_calls >= 1);
}

TEST_CASE("agree: silent when all agree, the same error on every rank otherwise") {
  const int rank = zb_world_rank(), world = zb_world_size();
  C comm(MPI_COMM_WORLD);
  CHECK_NOTHROW(comm.agree(true, "unused"));

  // Rank N-1 objects.
  std::string msg = error_of([&] { comm.agree(rank != world - 1, "the sky is falling"); });
  INFO(msg);
  CHECK(has(msg, "rank " + std::to_string(world - 1) + ": the sky is falling"));

  // Every rank objects, each with its own message: the lowest rank's wins everywhere.
  msg = error_of([&] { comm.agree(false, "complaint from " + std::to_string(rank)); });
  CHECK(has(msg, "rank 0: complaint from 0"));

  // The odd ranks object: rank 1's message (if there is a rank 1).
  msg = error_of([&] { comm.agree(rank % 2 == 0, "odd rank " + std::to_string(rank)); });
  if (world > 1) CHECK(has(msg, "rank 1: odd rank 1"));
  else CHECK(msg.empty());

  // A failed agreement is an ordinary error: the communicator still works.
  CHECK_FALSE(comm.failed());
  CHECK_NOTHROW(comm.agree(true, "unused"));
  std::vector<float> x(static_cast<std::size_t>(world), 1.0f);
  comm.all_reduce(x.data(), x.size(), 1.0f);
  for (float v : x) CHECK(v == static_cast<float>(world));
}

TEST_CASE("all_gather_values and all_gather_strings return every rank's content in rank order") {
  const int rank = zb_world_rank(), world = zb_world_size();
  C comm(MPI_COMM_WORLD);
  const double rd = static_cast<double>(rank);
  auto vals = comm.all_gather_values({rd * 10.0 + 0.5, -rd, 1e300, rd * 1e-300});
  REQUIRE(vals.size() == 4u * static_cast<std::size_t>(world));
  for (int r = 0; r < world; ++r) {
    const double d = static_cast<double>(r);
    CHECK(vals[4 * r + 0] == d * 10.0 + 0.5);
    CHECK(vals[4 * r + 1] == -d);
    CHECK(vals[4 * r + 2] == 1e300);
    CHECK(vals[4 * r + 3] == d * 1e-300);
  }
  CHECK(comm.all_gather_values({}).empty());

  // Strings of different lengths, rank 0's empty, one with a NUL and non-ASCII bytes.
  auto text = [](int r) {
    if (r == 0) return std::string();
    std::string s = "rank " + std::to_string(r) + ":" + std::string(static_cast<std::size_t>(r) * 37, 'a' + r);
    s.push_back('\0');
    s += "\xc3\xa9nd";
    return s;
  };
  auto strs = comm.all_gather_strings(text(rank));
  REQUIRE(strs.size() == static_cast<std::size_t>(world));
  for (int r = 0; r < world; ++r) CHECK(strs[r] == text(r));
}

TEST_CASE("abort_peers: the others' collective raises 'rank N-1 failed: ...' instead of hanging") {
  const int rank = zb_world_rank(), world = zb_world_size();
  if (world == 1) return;
  const int bad = world - 1;
  std::string msg;
  {
    C comm(MPI_COMM_WORLD);
    comm.barrier();  // works before the failure
    // (Only rank N-1 can assert failed() == false here: a peer may already have seen
    // its abort message while finishing this barrier — the documented grace period.)
    if (rank == bad) {
      CHECK_FALSE(comm.failed());
      comm.abort_peers("boom");
      comm.abort_peers("second call is ignored");  // idempotent, never blocks
      CHECK(comm.failed());
      // This rank's own communicator refuses further collectives, immediately.
      msg = error_of([&] { comm.barrier(); });
      INFO(msg);
      CHECK(has(msg, "unusable after this rank failed: boom"));
    } else {
      msg = error_of([&] { comm.barrier(); });
      INFO(msg);
      CHECK(has(msg, "rank " + std::to_string(bad) + " failed: boom"));
      CHECK_FALSE(has(msg, "second call"));
      CHECK(comm.failed());
      // Later collectives fail at once with the same reason.
      std::vector<float> x(4, 1.0f), y(4 * static_cast<std::size_t>(world));
      const std::string again = error_of([&] { comm.all_gather(x.data(), y.data(), 4); });
      CHECK(has(again, "rank " + std::to_string(bad) + " failed: boom"));
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);  // everyone is back in step: later tests start clean

  // A fresh communicator after the failed one works (its abort tag is its own).
  C fresh(MPI_COMM_WORLD);
  std::vector<float> v(static_cast<std::size_t>(world), 2.0f);
  fresh.all_reduce(v.data(), v.size(), 0.5f);
  for (float x : v) CHECK(x == static_cast<float>(world));
  CHECK_FALSE(fresh.failed());
}

TEST_CASE("a moved communicator keeps working") {
  const int rank = zb_world_rank(), world = zb_world_size();
  C a(MPI_COMM_WORLD);
  std::vector<float> x(1, 1.0f), y(static_cast<std::size_t>(world));
  a.all_gather(x.data(), y.data(), 1);
  C b(std::move(a));
  CHECK(b.rank() == rank);
  CHECK(b.size() == world);
  CHECK(b.counters()[zb::collective::all_gather] == static_cast<std::uint64_t>(world));
  std::vector<float> v(static_cast<std::size_t>(world), 1.0f);
  b.all_reduce(v.data(), v.size(), 1.0f);
  for (float e : v) CHECK(e == static_cast<float>(world));
}

TEST_CASE_TEMPLATE("on one rank, comm::self and comm::mpi give the same bits and payload counts", T, float,
                   zb::half, zb::bfloat16) {
  if (zb_world_size() != 1) return;
  C m(MPI_COMM_WORLD);
  zb::comm::self s;
  for (float scale : {1.0f, 0.3f, 1.0f / 3.0f}) {
    for (std::size_t count : counts) {
      INFO("count " << count << " scale " << scale);
      std::vector<T> bm = filled<T>(0, count), bs = filled<T>(0, count);
      std::vector<T> rm(count, sentinel<T>()), rs(count, sentinel<T>());
      m.reduce_scatter(bm.data(), rm.data(), count, scale);
      s.reduce_scatter(bs.data(), rs.data(), count, scale);
      CHECK(same_bits(rm.data(), rs.data(), count));
      for (std::size_t i = 0; i < count; ++i)
        if (bits_of(rs[i]) != bits_of(expected_reduction<T>(1, 0, count, i, scale))) {
          CHECK(i == count);  // fails, reporting the index
          break;
        }

      std::vector<T> am = filled<T>(0, count), as = filled<T>(0, count);
      m.all_reduce(am.data(), count, scale);
      s.all_reduce(as.data(), count, scale);
      CHECK(same_bits(am.data(), as.data(), count));
      CHECK(same_bits(am.data(), rm.data(), count));

      std::vector<T> gm(count), gs(count);
      m.all_gather(rm.data(), gm.data(), count);
      s.all_gather(rs.data(), gs.data(), count);
      CHECK(same_bits(gm.data(), gs.data(), count));
      m.broadcast(gm.data(), count, 0);
      s.broadcast(gs.data(), count, 0);
    }
  }
  const auto& cm = m.counters();
  const auto& cs = s.counters();
  for (std::size_t k = 0; k < zb::collective_count; ++k) {
    INFO("kind " << zb::collective_name(static_cast<zb::collective>(k)));
    CHECK(cm.elements[k] == cs.elements[k]);
    CHECK(cm.calls[k] == cs.calls[k]);
  }
  // Both refuse a broadcast root other than 0.
  std::vector<T> b(1);
  CHECK_THROWS_AS(m.broadcast(b.data(), 1, 1), zb::error);
  CHECK_THROWS_AS(s.broadcast(b.data(), 1, 1), zb::error);
}

TEST_CASE("progress thread: an all-gather completes while the rank makes no MPI call") {
  C comm;
  // The test binaries initialise MPI with MPI_THREAD_MULTIPLE, so the thread must exist
  // unless the environment turned it off.
  const char* env = std::getenv("ZEROBLOCKS_MPI_PROGRESS");
  const bool off = env && (std::string(env) == "off" || std::string(env) == "0");
  REQUIRE(comm.async_progress() == !off);
  if (off || comm.size() == 1) return;
  // 8 MiB per rank: far past the eager limit, so the transfer needs progress on both
  // sides (rendezvous) and cannot finish inside MPI_Iallgather itself.
  const std::size_t n = std::size_t{1} << 21;
  auto value = [](int r, std::size_t i) { return static_cast<float>((i * 7 + static_cast<std::size_t>(r) + 1) % 16777213); };
  std::vector<float> send(n), recv(n * comm.size(), -1.0f);
  for (std::size_t i = 0; i < n; ++i) send[i] = value(comm.rank(), i);
  auto req = comm.iall_gather(send.data(), recv.data(), n);
  // Watch the last element of every peer's block, without entering MPI. Data written by
  // the progress thread shows up here; without it, nothing would (until wait()).
  auto landed = [&] {
    for (int r = 0; r < comm.size(); ++r)
      if (std::atomic_ref<float>(recv[(r + 1) * n - 1]).load(std::memory_order_acquire) != value(r, n - 1))
        return false;
    return true;
  };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool ok = false;
  while (!(ok = landed()) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK_MESSAGE(ok, "the all-gather made no progress while this rank stayed out of MPI for 60 s");
  req.wait();
  for (int r = 0; r < comm.size(); ++r)
    for (std::size_t i = 0; i < n; i += 4099) REQUIRE(recv[r * n + i] == value(r, i));
}
