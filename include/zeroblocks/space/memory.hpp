/**
 * @file memory.hpp
 * @brief Memory categories and the tracker that counts bytes per category.
 *
 * Every allocation the library makes goes through a `memory_tracker`, so an engine
 * can report exactly what it holds (current and peak bytes per category) and tests
 * can assert that against the ZeRO formula. Categories follow the ZeRO paper's
 * accounting of model state (16-bit params, 16-bit grads, fp32 master, Adam m, Adam v)
 * plus the buffers a configuration declares (gradient buckets, gathered parameters,
 * communication scratch under `other`).
 */
#pragma once

#include "../core/config.hpp"

#include <array>
#include <cstddef>
#include <string_view>

ZB_NAMESPACE_BEGIN

/// @brief What an allocation holds.
enum class mem_category : int {
  params16 = 0,   ///< the 16-bit (or fp32) parameters the trainer computes with
  grads16,        ///< 16-bit gradients (full or shard)
  grads32,        ///< fp32 gradient accumulation (`grad_accum_dtype::fp32`): full or shard
  master_fp32,    ///< fp32 master weights
  adam_m,         ///< the optimizer's first fp32 state array (Adam's m; Lion's m; SGD's momentum)
  adam_v,         ///< the optimizer's second fp32 state array (Adam's v)
  buckets,        ///< gradient staging: bucket buffers (stage 2/3), partial sums of tied parameters
  gathered,       ///< parameters all-gathered for use (stage 3), live until released
  persistent,     ///< stage 3: small units kept gathered for good (persistence threshold)
  staging,        ///< NVMe tier: aligned, pinned staging buffers of the swap pipeline
  other,          ///< anything else (communication scratch, ...)
  count_,
  optim_state0 = adam_m,  ///< the optimizer's state array 0 (same category)
  optim_state1 = adam_v,  ///< the optimizer's state array 1 (same category)
};

inline constexpr std::size_t mem_category_count = static_cast<std::size_t>(mem_category::count_);

/// @brief Short name of a category, for tables.
constexpr std::string_view mem_category_name(mem_category c) {
  constexpr std::array<std::string_view, mem_category_count> names = {
      "params16", "grads16", "grads32", "master_fp32", "adam_m", "adam_v", "buckets", "gathered", "persistent", "staging", "other"};
  return names[static_cast<std::size_t>(c)];
}

/// @brief Bytes per category; `current` and `peak`.
struct memory_report {
  std::array<std::size_t, mem_category_count> current{};
  std::array<std::size_t, mem_category_count> peak{};

  std::size_t operator[](mem_category c) const { return current[static_cast<std::size_t>(c)]; }
  std::size_t peak_of(mem_category c) const { return peak[static_cast<std::size_t>(c)]; }
  /// @brief Model state: params, grads, master, m, v (what the ZeRO formula counts).
  std::size_t model_state() const {
    std::size_t s = 0;
    for (int i = 0; i <= static_cast<int>(mem_category::adam_v); ++i) s += current[i];
    return s;
  }
  std::size_t total() const {
    std::size_t s = 0;
    for (auto b : current) s += b;
    return s;
  }
};

/// @brief Counts bytes per category. Not thread-safe by design: one engine, one thread.
class memory_tracker {
public:
  void add(mem_category c, std::size_t bytes) {
    auto i = static_cast<std::size_t>(c);
    report_.current[i] += bytes;
    if (report_.current[i] > report_.peak[i]) report_.peak[i] = report_.current[i];
  }
  void sub(mem_category c, std::size_t bytes) {
    report_.current[static_cast<std::size_t>(c)] -= bytes;
  }
  const memory_report& report() const { return report_; }

  /// @brief After a failed collective, non-blocking transfers that can never be
  /// completed may still write into buffers: from now on, freeing leaks instead (the
  /// counts still go down). The process is expected to end soon after such a failure.
  void quarantine() { quarantined_ = true; }
  bool quarantined() const { return quarantined_; }

private:
  memory_report report_;
  bool quarantined_ = false;
};

ZB_NAMESPACE_END
