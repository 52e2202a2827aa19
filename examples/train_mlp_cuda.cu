// The main demo built by nvcc against zeroblocks::cuda: the same program as
// train_mlp.cpp, plus `--device cuda` (model state, gradients and collectives on the GPU
// through cuda_space and comm::nccl; `--offload cpu` for ZeRO-Offload).
#define ZB_DEMO_CUDA 1
#include <zeroblocks/cuda.cuh>

#include "train_mlp.cpp"
