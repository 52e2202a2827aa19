/**
 * @file error.hpp
 * @brief The library's one error type and the checks that raise it.
 *
 * `zeroblocks::error` carries what went wrong and where (function, file, line). Checks
 * that involve several ranks (a configuration, a parameter set) are made collective by
 * the engine so that every rank raises the same error instead of some ranks hanging in
 * a collective the failing rank never joins; see `comm/mpi.hpp` for the abort channel
 * that turns a failure on one rank into an error on the others.
 */
#pragma once

#include "config.hpp"

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <version>
#if defined(__cpp_lib_source_location)
#include <source_location>
#endif

ZB_NAMESPACE_BEGIN

/// @brief The exception every zeroblocks failure raises.
class error : public std::runtime_error {
public:
  error(const std::string& what, std::string where)
      : std::runtime_error("zeroblocks: " + what + " [at " + where + "]"),
        what_(what), where_(std::move(where)) {}

  /// @brief What went wrong, without the location.
  const std::string& reason() const noexcept { return what_; }
  /// @brief Function, file and line that raised the error.
  const std::string& where() const noexcept { return where_; }

private:
  std::string what_;
  std::string where_;
};

/// @brief An error every rank raised together, after agreeing on it, that left the
/// engine consistent on every rank: usable (e.g. a step whose NVMe writes failed on
/// some rank and was rolled back everywhere), or stopped alike everywhere (a step whose
/// NVMe tier stopped answering on some rank: every later call says so). The engine does
/// not abort its communicators for it.
class collective_error : public error {
public:
  using error::error;
};

namespace detail {

#if defined(__cpp_lib_source_location)
using source_location = std::source_location;
#else
/// Where `std::source_location` is missing (clang 14 with libstdc++ 12, Debian 12's
/// clang): the same three facts from the builtins GCC and clang both have.
struct source_location {
  static constexpr source_location current(const char* file = __builtin_FILE(), int line = __builtin_LINE(),
                                           const char* fn = __builtin_FUNCTION()) noexcept {
    return {file, line, fn};
  }
  constexpr const char* file_name() const noexcept { return file_; }
  constexpr unsigned line() const noexcept { return static_cast<unsigned>(line_); }
  constexpr const char* function_name() const noexcept { return fn_; }
  const char* file_ = "";
  int line_ = 0;
  const char* fn_ = "";
};
#endif

inline std::string location_string(const source_location& loc) {
  std::string file = loc.file_name();
  if (auto pos = file.rfind("include/zeroblocks/"); pos != std::string::npos)
    file = file.substr(pos + 8);
  // Template signatures are long; keep the qualified name up to the parameter list.
  std::string fn = loc.function_name();
  if (auto paren = fn.find('('); paren != std::string::npos) fn = fn.substr(0, paren);
  if (auto space = fn.rfind(' '); space != std::string::npos) fn = fn.substr(space + 1);
  for (const char* ns : {"zeroblocks::v0::", "zeroblocks::"})
    for (auto pos = fn.find(ns); pos != std::string::npos; pos = fn.find(ns)) fn.erase(pos, std::string(ns).size());
  std::ostringstream os;
  os << fn << " (" << file << ":" << loc.line() << ")";
  return os.str();
}

template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

}  // namespace detail

/// @brief Throw `zeroblocks::error` built from the streamed message parts.
#define ZB_FAIL(...)                                                                  \
  throw ::zeroblocks::error(::zeroblocks::detail::concat(__VA_ARGS__),                \
                            ::zeroblocks::detail::location_string(                    \
                                ::zeroblocks::detail::source_location::current()))

/// @brief Check a condition; on failure throw `zeroblocks::error` with the message.
#define ZB_REQUIRE(cond, ...)                                                         \
  do {                                                                                \
    if (!(cond)) ZB_FAIL(__VA_ARGS__);                                                \
  } while (0)

ZB_NAMESPACE_END
