# cuda_space, CUDA-registered pinned_space and comm::nccl.
zb_add_cuda_test(test_cuda_space SOURCES test_cuda_space.cu)
zb_add_cuda_test(test_comm_nccl SOURCES test_comm_nccl.cu RANKS 1 2)
# The same source as one process without MPI (one rank bootstrapped through a file): a
# GPU machine with no MPI (scripts/gpu_check.sh) runs this one.
zb_add_cuda_test(test_comm_nccl_single SOURCES test_comm_nccl.cu)
# Compiled by the plain C++ compiler: proves space/cuda_space.hpp and comm/nccl.hpp need no nvcc.
zb_add_cuda_test(test_cuda_headers_cxx SOURCES test_cuda_headers_cxx.cpp)
# The engine (stage 0-3 presets) on cuda_space with comm::nccl against the host engine.
zb_add_cuda_test(test_engine_cuda SOURCES test_engine_cuda.cu)
# The same on comm::cuda_self (one rank without NCCL), and master::offloaded's PCIe traffic.
zb_add_cuda_test(test_engine_cuda_self SOURCES test_engine_cuda_self.cu)
