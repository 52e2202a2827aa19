# CUDA benchmarks (nvcc), included by bench/CMakeLists.txt when the zeroblocks::cuda
# target exists.

# bench_cuda_kernels: the CUDA optimizer-step kernels (fused AdamW, upcast, sum of
# squares) against device-to-device copy bandwidth measured in the same run;
# bench/cuda_kernels.sh also compares it with PyTorch's fused AdamW.
add_executable(bench_cuda_kernels cuda_kernels.cu)
target_link_libraries(bench_cuda_kernels PRIVATE zeroblocks::cuda zeroblocks_warnings)
# CMake 3.25 has no dialect table for nvcc 13 (CUDA_STANDARD 20 is refused): pass it.
target_compile_options(bench_cuda_kernels PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20>)
if(NOT _zb_multi_config AND NOT CMAKE_BUILD_TYPE)
  target_compile_options(bench_cuda_kernels PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-O3>)
endif()
