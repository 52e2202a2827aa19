/**
 * @file pack.cuh
 * @brief Eight elements moved with 16-byte memory operations.
 *
 * `pack8<T>` is eight `T` aligned to 16 bytes: one 16-byte load or store for half and
 * bfloat16 (`ld.global.v4.u32`), two for float. The callers guarantee the alignment
 * (see `vec_split` in launch.cuh); `load8_unaligned` is the element-by-element load
 * for arrays that are only element-aligned.
 */
#pragma once

#include "../../../core/config.hpp"
#include "../../../core/numeric.hpp"

#include <cstddef>

ZB_NAMESPACE_BEGIN
namespace kernel::cuda::detail {

/// @brief Eight consecutive elements, 16-byte aligned.
template <class T>
struct alignas(16) pack8 {
  T x[8];
};

static_assert(sizeof(pack8<half>) == 16 && sizeof(pack8<bfloat16>) == 16 && sizeof(pack8<float>) == 32);

/// @brief Load eight elements from a 16-byte aligned address.
template <class T>
__device__ __forceinline__ pack8<T> load8(const T* p) {
  return *reinterpret_cast<const pack8<T>*>(p);
}

/// @brief Load eight elements from an address aligned only to `sizeof(T)`.
template <class T>
__device__ __forceinline__ pack8<T> load8_unaligned(const T* p) {
  pack8<T> r;
#pragma unroll
  for (int j = 0; j < 8; ++j) r.x[j] = p[j];
  return r;
}

/// @brief Store eight elements to a 16-byte aligned address.
template <class T>
__device__ __forceinline__ void store8(T* p, const pack8<T>& v) {
  *reinterpret_cast<pack8<T>*>(p) = v;
}

}  // namespace kernel::cuda::detail
ZB_NAMESPACE_END
