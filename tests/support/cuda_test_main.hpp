/**
 * @file cuda_test_main.hpp
 * @brief doctest main for CUDA tests: exits with 77 (CTest's SKIP_RETURN_CODE) when the
 *        machine has no usable CUDA device, so CTest reports the test as skipped.
 *
 * Define ZB_CUDA_TEST_MPI before including it for tests that run under mpirun: MPI is
 * initialised first, every rank checks for a device, and all ranks skip together.
 */
#pragma once

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <cstdio>

#ifdef ZB_CUDA_TEST_MPI
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#include <mpi.h>
#endif

inline constexpr int zb_skip_return_code = 77;

/// @brief Number of usable CUDA devices; 0 (with the reason printed) when there is none.
inline int zb_cuda_devices() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    std::printf("no usable CUDA device (%s): test skipped\n", cudaGetErrorString(e));
    return 0;
  }
  if (n == 0) std::printf("no CUDA device: test skipped\n");
  return n;
}

int main(int argc, char** argv) {
#ifdef ZB_CUDA_TEST_MPI
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int have = zb_cuda_devices() > 0 ? 1 : 0, all = 0;
  MPI_Allreduce(&have, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (!all) {
    MPI_Finalize();
    return zb_skip_return_code;
  }
  // One GPU per rank of this node: the rank among the ranks sharing this node's memory.
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
  int node_rank = rank, devices = 0;
  MPI_Comm_rank(node, &node_rank);
  MPI_Comm_free(&node);
  cudaGetDeviceCount(&devices);
  cudaSetDevice(node_rank % devices);
  doctest::Context ctx(argc, argv);
  if (rank != 0) ctx.setOption("minimal", true);
  int rc = ctx.run(), worst = 0;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
#else
  if (zb_cuda_devices() == 0) return zb_skip_return_code;
  doctest::Context ctx(argc, argv);
  return ctx.run();
#endif
}
