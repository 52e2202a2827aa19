/**
 * @file detail/nccl_base.hpp
 * @brief `comm::nccl`'s foundations: the NCCL/MPI includes, its config structs, element types, the block reducers `nccl.cuh` registers, error text, backoff, and the abort channels it uses.
 *
 * Part of `comm::nccl` (`comm/nccl.hpp`, whose header comment describes the whole).
 */
#pragma once

#include "../../core/config.hpp"
#include "../../core/cuda_check.hpp"
#include "../../core/error.hpp"
#include "../../core/numeric.hpp"
#include "../../space/cuda_space.hpp"
#include "abort_channel.hpp"
#include "watchdog.hpp"

#include <cuda_runtime.h>
#include <nccl.h>

/// `ZB_NCCL_WITH_MPI`: offer the MPI bootstrap. On by default when `<mpi.h>` is found
/// (the zeroblocks target links MPI unless ZEROBLOCKS_WITH_MPI is OFF); define it to 0
/// to build without MPI.
#ifndef ZB_NCCL_WITH_MPI
#if __has_include(<mpi.h>)
#define ZB_NCCL_WITH_MPI 1
#else
#define ZB_NCCL_WITH_MPI 0
#endif
#endif
#if ZB_NCCL_WITH_MPI
#include "mpi_include.hpp"  // <mpi.h>, C API only

#include "mpi_abort_channel.hpp"
#include "mpi_watchdog.hpp"
#endif

#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace comm {


/// @brief How `comm::nccl` reduces (see the header's "Reductions").
enum class reduce_mode {
  deterministic,  ///< all-to-all + fp32 rank-ordered sum kernel: bit-identical with comm::mpi
  native,         ///< ncclReduceScatter / ncclAllReduce: faster, not bit-identical
};

/// @brief Runtime knobs of `comm::nccl`; copied into communicators made by dup()/split().
struct nccl_config {
  /// @brief Reduction algorithm for reduce_scatter / all_reduce.
  reduce_mode reduce = reduce_mode::deterministic;
  /// @brief NCCL blocking communicators: initialisation, split and finalisation block in
  /// NCCL, with no timeout. The default (false) polls them, with `init_timeout`.
  bool blocking = false;
  /// @brief How long initialisation, split and finalisation may take (non-blocking
  /// communicators) before this rank gives up with an error.
  std::chrono::milliseconds init_timeout{std::chrono::minutes(5)};
  /// @brief Priority of the communicator's stream (lower is higher; 0 = default).
  int stream_priority = 0;
  /// @brief Device to use (made current by the constructor); -1: the current device.
  int device = -1;
  /// @brief Name for NCCL's logs (`commName`); empty: none.
  std::string name;
};

/// @brief Bootstrap through a shared directory (single node, no MPI); see the header.
struct file_bootstrap {
  std::string dir;   ///< an existing directory every rank sees
  std::string name;  ///< unique per job: files are `<dir>/<name>.ncclid` and `<dir>/<name>.<nonce>.abort`
  int rank = 0;      ///< this rank, 0..size-1 (rank 0 creates the id)
  int size = 1;      ///< number of ranks
  /// @brief How long ranks other than 0 wait for the id file.
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
};

}  // namespace comm

namespace detail {

template <class>
inline constexpr bool nccl_always_false = false;

/// @brief The NCCL datatype of an element type.
template <class T>
constexpr ncclDataType_t nccl_datatype() {
  if constexpr (std::is_same_v<T, float>) return ncclFloat32;
  else if constexpr (std::is_same_v<T, half>) return ncclFloat16;
  else if constexpr (std::is_same_v<T, bfloat16>) return ncclBfloat16;
  else static_assert(nccl_always_false<T>, "comm::nccl: element type must be float, half or bfloat16");
}

/// @brief Launches, on `s`: out[i] = T(scale * sum_{j<nblocks} float(block_j[i])) for
/// i < count, block `self` being `mine` and block j != self being
/// `others + (j - (j > self)) * count`. `out` may alias `mine`. Defined in `nccl.cuh`.
using nccl_block_reduce_fn = cudaError_t (*)(const void* mine, const void* others, int self, int nblocks,
                                             std::size_t count, float scale, void* out, cudaStream_t s);

/// @brief The block-reduction kernels, one per element type; filled in by `nccl.cuh`.
struct nccl_block_reducers {
  nccl_block_reduce_fn f32 = nullptr;
  nccl_block_reduce_fn f16 = nullptr;
  nccl_block_reduce_fn bf16 = nullptr;
};
inline nccl_block_reducers& nccl_reducers() noexcept {
  static nccl_block_reducers r;
  return r;
}
template <class T>
nccl_block_reduce_fn nccl_reducer() noexcept {
  if constexpr (std::is_same_v<T, float>) return nccl_reducers().f32;
  else if constexpr (std::is_same_v<T, half>) return nccl_reducers().f16;
  else return nccl_reducers().bf16;
}

/// @brief "ncclX error text: NCCL's last message".
inline std::string nccl_error_text(ncclResult_t r, ncclComm_t c) {
  std::string s = ncclGetErrorString(r);
  const char* last = ncclGetLastError(c);
  if (last && *last) s += std::string(": ") + last;
  return s;
}

/// @brief Spin, then yield, then sleep: host waits that stay responsive without
/// burning a core for long.
inline void nccl_backoff(unsigned n) {
  if (n < 64) return;
  if (n < 2048) std::this_thread::yield();
  else std::this_thread::sleep_for(std::chrono::microseconds(50));
}

/// The abort channel (`comm/detail/abort_channel.hpp`, `mpi_abort_channel.hpp`),
/// shared with `comm::mpi`.
using nccl_abort_channel = abort_channel;
using nccl_file_abort_channel = file_abort_channel;
#if ZB_NCCL_WITH_MPI
using nccl_mpi_abort_channel = mpi_abort_channel;
#endif

}  // namespace detail
ZB_NAMESPACE_END
