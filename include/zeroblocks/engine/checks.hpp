/**
 * @file checks.hpp
 * @brief The engine's construction checks, collective: every rank's configuration is
 * valid, every rank has the same policies and knobs, every rank registered the same
 * parameters. A failure throws the same message on every rank.
 *
 * Each comparison first exchanges a 64-bit hash (one small all-gather); only on a
 * mismatch are the full lists exchanged, so the message can name the first line that
 * differs, its value on both ranks and both ranks.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../layout/registry.hpp"
#include "../policy/config.hpp"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace detail {

/// Split text on '\n' (each line ends with one).
inline std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> v;
  std::size_t a = 0;
  for (std::size_t b; (b = s.find('\n', a)) != std::string::npos; a = b + 1) v.push_back(s.substr(a, b - a));
  return v;
}

/// Every rank's `lines` must equal rank 0's. Collective on `comm`. On a mismatch every
/// rank calls `fail(index, rank-0 line or nullptr, rank-r line or nullptr, r)`, which
/// must throw; lines are compared in order.
template <class Comm, class Fail>
void agree_on_lines(Comm& comm, const std::vector<std::string>& lines, Fail&& fail) {
  const std::uint64_t h = fingerprint_of(lines);
  const auto hashes = comm.all_gather_values(
      {static_cast<double>(h >> 32), static_cast<double>(h & 0xffffffffu), static_cast<double>(lines.size())});
  bool same = true;
  for (int r = 1; r < comm.size(); ++r)
    for (int k = 0; k < 3; ++k) same = same && hashes[3 * r + k] == hashes[k];
  if (same) return;
  std::string joined;
  for (const auto& l : lines) joined += l + "\n";
  const auto all = comm.all_gather_strings(joined);
  const auto ref = split_lines(all[0]);
  for (int r = 1; r < comm.size(); ++r) {
    const auto other = split_lines(all[r]);
    for (std::size_t i = 0; i < std::max(ref.size(), other.size()); ++i) {
      const std::string* a = i < ref.size() ? &ref[i] : nullptr;
      const std::string* b = i < other.size() ? &other[i] : nullptr;
      if (a && b && *a == *b) continue;
      fail(i, a, b, r);
      ZB_FAIL("agree_on_lines: the failure callback returned");
    }
  }
  ZB_FAIL("ranks disagree (hash mismatch with equal lists)");
}

/// Validate the config on every rank: the first invalid knob of any rank is an error
/// on every rank (the message says which rank).
template <class Comm, class Config>
void agree_config_valid(Comm& comm, const Config& cfg, const param_registry& reg,
                        const std::string& engine_problem = {}) {
  std::string problem;
  try {
    cfg.validate();
    ZB_REQUIRE(engine_problem.empty(), engine_problem);
    ZB_REQUIRE(reg.size() > 0, "engine: no parameters registered");
    for (const auto& p : reg.params())
      ZB_REQUIRE(p.group == 0 || p.group < cfg.groups.size(), "engine: parameter '", p.name, "' is in group ",
                 p.group, " but cfg.groups has ", cfg.groups.size(), " entries (group 0 needs none)");
  } catch (const error& e) {
    problem = e.reason();
  }
  comm.agree(problem.empty(), problem);
}

/// Every rank has the same policies and knobs (`agreement_lines`).
template <class Comm>
void agree_config_same(Comm& comm, const std::vector<std::string>& lines) {
  agree_on_lines(comm, lines, [](std::size_t, const std::string* a, const std::string* b, int r) {
    auto key = [](const std::string* l) { return l ? l->substr(0, l->find('=')) : std::string("<nothing>"); };
    auto value = [](const std::string* l) { return l ? l->substr(l->find('=') + 1) : std::string("<nothing>"); };
    const std::string field = a ? key(a) : key(b);
    const std::string role = field.substr(0, field.find('.'));
    if (key(a) != key(b))  // different policies give different field lists
      ZB_FAIL("engine: configuration differs across ranks: rank 0 has ", a ? *a : "<nothing>", " but rank ", r,
              " has ", b ? *b : "<nothing>", " (the ranks were built with different policies for the '", role,
              "' role)");
    if (role == "policies")
      ZB_FAIL("engine: ranks are built from different policies: ", field, " is ", value(a), " on rank 0 but ",
              value(b), " on rank ", r);
    ZB_FAIL("engine: configuration differs across ranks: ", field, " (role '", role, "') is ", value(a),
            " on rank 0 but ", value(b), " on rank ", r, " (every rank must pass the same knobs)");
  });
}

/// Every rank registered the same parameters (names, shapes, units), in the same order.
template <class Comm>
void agree_registry_same(Comm& comm, const std::vector<std::string>& described) {
  agree_on_lines(comm, described, [](std::size_t i, const std::string* a, const std::string* b, int r) {
    ZB_FAIL("engine: parameter registration differs across ranks: parameter #", i, " is ",
            a ? *a : std::string("<nothing>"), " on rank 0 but ", b ? *b : std::string("<nothing>"), " on rank ", r);
  });
}

}  // namespace detail
ZB_NAMESPACE_END
