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
