/**
 * @file cuda_check.hpp
 * @brief Turning CUDA runtime errors into `zeroblocks::error`.
 *
 * - `ZB_CUDA_CHECK(call)` evaluates a CUDA runtime call and throws `zeroblocks::error`
 *   naming the call, the error's enum name and its description when it does not return
 *   `cudaSuccess`;
 * - `ZB_CUDA_CHECK_LAUNCH(what)` goes right after a `<<<...>>>` launch: it collects the
 *   launch's error with `cudaGetLastError` (bad configuration, no kernel image for this
 *   GPU, an earlier sticky error) and throws with `what` (the kernel's name) in the
 *   message. Errors raised later, while the kernel runs, surface at the next
 *   synchronising call, as usual in CUDA.
 *
 * Needs the CUDA runtime headers (`cuda_runtime_api.h`) but not nvcc: it compiles with a
 * plain C++ compiler given the CUDA include directory (the `zeroblocks::cuda` target).
 */
#pragma once

#include "config.hpp"
#include "error.hpp"

#include <cuda_runtime_api.h>

ZB_NAMESPACE_BEGIN
namespace detail {

/// @brief "cudaErrorX (description)" for an error code.
inline std::string cuda_error_text(cudaError_t e) {
  return concat(cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
}

/// @brief The error of the launch just made: `cudaGetLastError`, except that
/// `cudaErrorNotReady` — left behind by an earlier `cudaEventQuery`/`cudaStreamQuery`
/// that found work pending, never produced by a launch — counts as success.
inline cudaError_t launch_status() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaErrorNotReady ? cudaSuccess : e;
}

}  // namespace detail
ZB_NAMESPACE_END

/// @brief Evaluate a CUDA runtime call; throw `zeroblocks::error` unless it returns
/// `cudaSuccess`. The message names the call and the error.
#define ZB_CUDA_CHECK(call)                                                                \
  do {                                                                                     \
    const cudaError_t zb_cuda_status_ = (call);                                            \
    if (zb_cuda_status_ != cudaSuccess)                                                    \
      ZB_FAIL("CUDA call '", #call, "' failed: ",                                          \
              ::zeroblocks::detail::cuda_error_text(zb_cuda_status_));                      \
  } while (0)

/// @brief Check the kernel launch just made (`what` names it, e.g. "cuda::fused_adamw");
/// throws `zeroblocks::error` with the launch error.
#define ZB_CUDA_CHECK_LAUNCH(what)                                                         \
  do {                                                                                     \
    const cudaError_t zb_cuda_status_ = ::zeroblocks::detail::launch_status();            \
    if (zb_cuda_status_ != cudaSuccess)                                                    \
      ZB_FAIL("kernel launch of ", what, " failed: ",                                      \
              ::zeroblocks::detail::cuda_error_text(zb_cuda_status_));                      \
  } while (0)
