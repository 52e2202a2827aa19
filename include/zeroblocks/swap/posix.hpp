/**
 * @file posix.hpp
 * @brief `swap::posix`: the swap interface on `pread`/`pwrite` threads.
 *
 * `swap_config::threads` workers take the requests of every transfer from one queue, in
 * order, each request `block_size` bytes or less. Same files, striping, alignment and
 * error reporting as `swap::uring` (`swap.hpp`); used where io_uring is unavailable, and
 * as the baseline the uring backend is measured against.
 */
#pragma once

#include "detail/files.hpp"
#include "swap.hpp"

#include <memory>
#include <string>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace swap {

/// @brief pread/pwrite worker threads over the tier's striped files.
class posix : public detail::basic_backend<posix> {
public:
  using swap_concept = swap_tag;
  static constexpr const char* name = "posix";

  /// @brief Create and preallocate the rank's files of `tier` (`bytes` of logical space).
  posix(const swap_config& cfg, const std::string& tier, int rank, std::size_t bytes) {
    files_ = std::make_unique<detail::swap_files>(cfg, tier, rank, bytes);
    engine_ = std::make_unique<detail::posix_engine>(*files_, counters_, cfg.threads);
  }
  const char* backend_name() const { return name; }
  /// @brief Nothing to register for pread/pwrite.
  void register_buffers(const std::vector<iovec>&) {}

  void engine_submit(std::vector<detail::swap_request>&& rs) { engine_->submit(std::move(rs)); }

private:
  std::unique_ptr<detail::posix_engine> engine_;  // after files_: joins before they close
};

static_assert(swap_policy<posix>);

}  // namespace swap
ZB_NAMESPACE_END
