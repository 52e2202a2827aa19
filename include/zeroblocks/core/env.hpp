/**
 * @file env.hpp
 * @brief Every environment variable zeroblocks reads, in one place.
 *
 * The library's behaviour is set by its configs; these overrides exist for operators
 * and tests, who cannot always rebuild a trainer. Each is read where it takes effect
 * (at first use of the host kernels, at a communicator's or a swap backend's
 * construction) through the functions below, and nowhere else.
 *
 * | variable | values | effect |
 * |---|---|---|
 * | `ZEROBLOCKS_ISA` | `scalar`, `avx2`, `avx512` | lowers (never raises) the host kernels' instruction set |
 * | `ZEROBLOCKS_SWAP` | `posix` | `swap::uring` runs its pread/pwrite fallback |
 * | `ZEROBLOCKS_MPI_PROGRESS` | `off` or `0` | `comm::mpi` runs no progress thread |
 * | `ZEROBLOCKS_MPI_PROGRESS_US` | 0..1000000 | the progress thread's pause between polls, µs (default 20) |
 */
#pragma once

#include "config.hpp"
#include "error.hpp"

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

ZB_NAMESPACE_BEGIN
namespace env {

/// @brief The value of `name`, or nothing when it is unset or empty.
inline std::optional<std::string> get(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

/// @brief `ZEROBLOCKS_ISA`: the host kernel ISA asked for, if any.
inline std::optional<std::string> isa() { return get("ZEROBLOCKS_ISA"); }

/// @brief `ZEROBLOCKS_SWAP=posix`: the io_uring backend must use its posix fallback.
inline bool swap_forced_posix() {
  const auto v = get("ZEROBLOCKS_SWAP");
  return v && *v == "posix";
}

/// @brief `ZEROBLOCKS_MPI_PROGRESS=off|0`: no MPI progress thread.
inline bool mpi_progress_off() {
  const auto v = get("ZEROBLOCKS_MPI_PROGRESS");
  return v && (*v == "off" || *v == "0");
}

/// @brief `ZEROBLOCKS_MPI_PROGRESS_US`: the progress thread's pause in µs (default 20).
inline unsigned mpi_progress_pause_us() {
  const auto v = get("ZEROBLOCKS_MPI_PROGRESS_US");
  if (!v) return 20;
  char* end = nullptr;
  const unsigned long us = std::strtoul(v->c_str(), &end, 10);
  ZB_REQUIRE(end && *end == '\0' && us <= 1000000, "ZEROBLOCKS_MPI_PROGRESS_US='", *v,
             "' must be a number of microseconds (0..1000000)");
  return static_cast<unsigned>(us);
}

}  // namespace env
ZB_NAMESPACE_END
