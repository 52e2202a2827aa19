/**
 * @file config.hpp
 * @brief Library-wide macros: version, namespace, host/device annotations.
 *
 * Every public name lives in `zeroblocks::v0` (an inline namespace, as CUB/CCCL do),
 * so a future ABI-incompatible release can coexist in one binary with this one.
 */
#pragma once

#define ZB_VERSION_MAJOR 0
#define ZB_VERSION_MINOR 1
#define ZB_VERSION_PATCH 0

#define ZB_NAMESPACE_BEGIN namespace zeroblocks { inline namespace v0 {
#define ZB_NAMESPACE_END } }

// One per-element definition is shared by the host loops and the CUDA kernels.
#if defined(__CUDACC__)
#define ZB_HOST_DEVICE __host__ __device__
#define ZB_FORCE_INLINE __forceinline__
#else
#define ZB_HOST_DEVICE
#define ZB_FORCE_INLINE inline __attribute__((always_inline))
#endif
