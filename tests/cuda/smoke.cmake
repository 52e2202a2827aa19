zb_add_cuda_test(test_cuda_smoke SOURCES smoke.cu)
