// Smoke test of the CUDA test plumbing: a kernel runs and the host sees its result.
#include "cuda_test_main.hpp"

#include <zeroblocks/cuda.cuh>  // the umbrella: every CUDA header compiles together

__global__ void zb_smoke_fill(int* p, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = 3 * i;
}

TEST_CASE("cuda smoke: a kernel writes device memory the host reads back") {
  int* d = nullptr;
  REQUIRE(cudaMalloc(&d, 100 * sizeof(int)) == cudaSuccess);
  zb_smoke_fill<<<1, 128>>>(d, 100);
  int h[100] = {};
  REQUIRE(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost) == cudaSuccess);
  cudaFree(d);
  for (int i = 0; i < 100; ++i) CHECK(h[i] == 3 * i);
}
