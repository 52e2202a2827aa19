// A space the host cannot read, for the compile-fail tests: it satisfies space_policy and
// nothing more (its functions are never called; these programs must not even compile).
#pragma once

#include <zeroblocks/zeroblocks.hpp>

struct fake_device_space {
  using space_concept = zeroblocks::space_tag;
  static constexpr const char* name = "fake_device";
  static constexpr bool host_accessible = false;
  static void* allocate(std::size_t, std::size_t = 64) { return nullptr; }
  static void deallocate(void*, std::size_t) {}
  static void copy(void*, const void*, std::size_t) {}
  static void fill_zero(void*, std::size_t) {}
};
