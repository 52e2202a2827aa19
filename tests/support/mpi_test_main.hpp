/**
 * @file mpi_test_main.hpp
 * @brief doctest main for tests that run on every rank of an `mpirun`.
 *
 * Initialises MPI, runs the doctest session on every rank (rank > 0 reports only
 * failures), and returns non-zero from any rank that saw a failure, so mpirun fails.
 */
#pragma once

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <string>
#include <vector>

inline int zb_world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
inline int zb_world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

/// Every rank's string, in rank order (on MPI_COMM_WORLD: tests check that every rank
/// raised the same error with it).
inline std::vector<std::string> zb_all_strings(const std::string& mine) {
  const int n = zb_world_size();
  int len = static_cast<int>(mine.size());
  std::vector<int> lens(static_cast<std::size_t>(n));
  MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, MPI_COMM_WORLD);
  std::vector<int> offs(static_cast<std::size_t>(n), 0);
  int total = 0;
  for (int r = 0; r < n; ++r) offs[static_cast<std::size_t>(r)] = total, total += lens[static_cast<std::size_t>(r)];
  std::string all(static_cast<std::size_t>(total), '\0');
  MPI_Allgatherv(mine.data(), len, MPI_CHAR, all.data(), lens.data(), offs.data(), MPI_CHAR, MPI_COMM_WORLD);
  std::vector<std::string> out;
  for (int r = 0; r < n; ++r)
    out.push_back(all.substr(static_cast<std::size_t>(offs[static_cast<std::size_t>(r)]),
                             static_cast<std::size_t>(lens[static_cast<std::size_t>(r)])));
  return out;
}

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  doctest::Context ctx(argc, argv);
  if (zb_world_rank() != 0) ctx.setOption("minimal", true);
  int rc = ctx.run();
  // Agree on the outcome so one failing rank fails the whole run.
  int worst = 0;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
