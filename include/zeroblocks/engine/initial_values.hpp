/**
 * @file initial_values.hpp
 * @brief One source of truth for the values that enter an engine: every rank must pass
 *        the same initial values, checked once before they are used, at the cost of a
 *        hash.
 *
 * `set_param` documents that every rank passes the same values; a trainer that seeds its
 * initialiser by rank breaks that silently (stage 0 then trains replicas that never
 * meet, stages 1–3 a mix of them). DeepSpeed hides such a bug by broadcasting rank 0's
 * parameters at start-up. zeroblocks finds it instead: each value that enters the
 * engine is folded into a 64-bit hash per block of `block` elements of its parameter
 * (8 B per 1,024 fp32 values received: 0.2 % of what `set_param` already holds, freed
 * once checked). The ranks compare one 64-bit hash of all of them inside the engine's
 * per-step agreement (`agreement.hpp`), which already runs before the first step
 * changes any state (and, with stages 2/3, before each micro-step; with stage 3, before
 * an unverified gather): no collective of its own, none per `set_param` call. Only when they differ are the
 * per-parameter and then the per-block hashes exchanged, so that every rank throws the
 * same error naming the first parameter that differs, the first block of elements in
 * which it does, and the two ranks.
 *
 * The block (not the element) is the finest the message can name without a copy of the
 * values on every rank; with stage 3 a rank keeps only its own slices of them.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../layout/layout.hpp"
#include "../layout/registry.hpp"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace detail {

/// @brief A 64-bit hash of `n` fp32 values' bits (so -0 and +0, and NaN payloads,
/// differ): four independent multiply-rotate lanes over 8-byte words, then a mix.
/// Not cryptographic; two different blocks collide with probability about 2^-64.
inline std::uint64_t hash_values(const float* v, std::size_t n, std::uint64_t seed) {
  constexpr std::uint64_t p1 = 0x9E3779B185EBCA87ull, p2 = 0xC2B2AE3D27D4EB4Full, p3 = 0x165667B19E3779F9ull;
  const auto round = [](std::uint64_t acc, std::uint64_t w) { return std::rotl(acc + w * p2, 31) * p1; };
  std::uint64_t a[4] = {seed + p1 + p2, seed + p2, seed, seed - p1};
  const auto* bytes = reinterpret_cast<const unsigned char*>(v);
  const std::size_t total = n * sizeof(float);
  std::size_t i = 0;
  for (; i + 32 <= total; i += 32)
    for (int l = 0; l < 4; ++l) {
      std::uint64_t w;
      std::memcpy(&w, bytes + i + 8 * l, 8);
      a[l] = round(a[l], w);
    }
  std::uint64_t h = std::rotl(a[0], 1) + std::rotl(a[1], 7) + std::rotl(a[2], 12) + std::rotl(a[3], 18);
  for (; i < total; i += 4) {
    std::uint32_t w;
    std::memcpy(&w, bytes + i, 4);
    h = std::rotl(h ^ (w * p1), 23) * p2 + p3;
  }
  h ^= total;
  h ^= h >> 33;
  h *= p2;
  h ^= h >> 29;
  h *= p3;
  h ^= h >> 32;
  return h;
}

/// @brief The hashes of the values that entered the engine since the last check, and
/// the check.
class initial_values {
public:
  /// Elements per hashed block: the finest a mismatch is located to.
  static constexpr std::size_t block = 1024;

  explicit initial_values(const param_registry& reg) : blocks_(reg.size()), set_(reg.size(), 0) {
    names_.reserve(reg.size());
    for (const auto& p : reg.params()) names_.push_back(p.name);
  }

  /// @brief Parameter `p` now holds `values` on this rank.
  void record(std::size_t p, std::span<const float> values) {
    auto& b = blocks_[p];
    b.assign((values.size() + block - 1) / block, 0);
    for (std::size_t k = 0; k < b.size(); ++k) {
      const std::size_t a = k * block, n = std::min(block, values.size() - a);
      b[k] = hash_values(values.data() + a, n, k);
    }
    set_[p] = 1;
    pending_ = true;
  }
  /// @brief Values entered since the last check.
  bool pending() const { return pending_; }
  /// @brief One hash of every value recorded since the last check (0: none), which
  /// the engine's per-step agreement compares across ranks (`agreement.hpp`).
  std::uint64_t summary() const { return pending_ ? summary_of_all() | 1 : 0; }
  /// @brief Every rank's summary was the same: drop the hashes.
  void settle() {
    for (auto& b : blocks_) std::vector<std::uint64_t>().swap(b);
    std::fill(set_.begin(), set_.end(), 0);
    pending_ = false;
  }

  /// @brief Some rank's summary differs. Collective on `comm`: locate the first
  /// parameter (then block, then rank) that differs and throw the same message on every
  /// rank; every rank decides from the same gathered data. `what` names the call.
  template <class Comm>
  [[noreturn]] void fail(Comm& comm, const layout& lay, const char* what) const {
    const std::size_t np = blocks_.size();
    std::vector<double> mine;
    mine.reserve(2 * np);
    for (std::size_t p = 0; p < np; ++p)
      for (double d : halves(param_hash(p))) mine.push_back(d);
    const auto all = comm.all_gather_values(mine);
    const auto at = [&](int r, std::size_t p) {
      return std::make_pair(all[2 * np * static_cast<std::size_t>(r) + 2 * p],
                            all[2 * np * static_cast<std::size_t>(r) + 2 * p + 1]);
    };
    for (std::size_t p = 0; p < np; ++p) {
      for (int r = 1; r < comm.size(); ++r) {
        if (at(r, p) == at(0, p)) continue;
        const auto& pp = lay.param(p);
        const std::string name = detail::concat("parameter '", names_[p], "' (#", p, ")");
        const bool set0 = at(0, p).second != 0.0, setr = at(r, p).second != 0.0;  // a set hash is odd
        if (!set0 || !setr)
          ZB_FAIL(what, ": ranks disagree on the initial values of ", name, ": it was set on rank ", set0 ? 0 : r,
                  " but not on rank ", set0 ? r : 0,
                  " since the last check (every rank sets the same parameters, or use set_param_from)");
        // Both set: exchange that parameter's block hashes to locate the difference.
        std::vector<double> bl;
        for (auto b : blocks_[p])
          for (double d : halves(b)) bl.push_back(d);
        const auto blocks = comm.all_gather_values(bl);
        const std::size_t nb = blocks_[p].size();
        const std::size_t base = 2 * nb * static_cast<std::size_t>(r);
        std::size_t k = 0;
        while (k < nb && blocks[base + 2 * k] == blocks[2 * k] && blocks[base + 2 * k + 1] == blocks[2 * k + 1]) ++k;
        const std::size_t a = std::min(k * block, pp.numel), b = std::min(a + block, pp.numel);
        ZB_FAIL(what, ": ranks passed different initial values for ", name, ": rank 0 and rank ", r,
                " differ in elements [", a, ", ", b, ") (the first block of ", block,
                " that differs); every rank must pass the same values (a trainer seeding its initialiser by "
                "rank?), or initialise on one rank with set_param_from(root, ...)");
      }
    }
    ZB_FAIL(what, ": ranks disagree on the initial values (hash mismatch with equal parameter hashes)");
  }

private:
  static std::vector<double> halves(std::uint64_t h) {
    return {static_cast<double>(h >> 32), static_cast<double>(h & 0xffffffffu)};
  }
  /// 0: not set since the last check; otherwise odd (so its low half is never 0).
  std::uint64_t param_hash(std::size_t p) const {
    if (!set_[p]) return 0;
    std::uint64_t h = 0x27D4EB2F165667C5ull ^ blocks_[p].size();
    for (auto b : blocks_[p]) h = std::rotl(h ^ b, 27) * 0x9E3779B185EBCA87ull;
    return h | 1;
  }
  std::uint64_t summary_of_all() const {
    std::uint64_t h = 0x165667B19E3779F9ull;
    for (std::size_t p = 0; p < blocks_.size(); ++p) h = std::rotl(h ^ param_hash(p), 29) * 0xC2B2AE3D27D4EB4Full + p;
    return h;
  }

  std::vector<std::string> names_;
  std::vector<std::vector<std::uint64_t>> blocks_;
  std::vector<char> set_;
  bool pending_ = false;
};

}  // namespace detail
ZB_NAMESPACE_END
