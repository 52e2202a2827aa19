# CUDA kernels of the optimizer step (include/zeroblocks/kernel/cuda/*.cuh) against the host kernels and
# the plain references: bit-identical fused pass and casts, sum of squares within 1e-12.
zb_add_cuda_test(test_cuda_kernels SOURCES test_kernels.cu)
