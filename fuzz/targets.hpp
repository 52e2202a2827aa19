/**
 * @file targets.hpp
 * @brief The fuzzed entry points, shared by the libFuzzer targets (`fuzz_*.cpp`,
 *        `scripts/fuzz.sh`) and the deterministic mutation run in the default suite
 *        (`tests/checkpoint/test_format_mutations.cpp`).
 *
 * Each takes arbitrary bytes, runs the reader of checkpoint/format.hpp on them and then
 * does with the result what the library does with it — touching every byte range the
 * result names, so AddressSanitizer sees any range outside the input. A reader's
 * `zeroblocks::error` is the expected way to refuse an input: it is returned as text
 * (empty when the input was accepted). Anything else — another exception type, a
 * crash, a sanitizer report — is a defect and escapes.
 */
#pragma once

#include <zeroblocks/checkpoint/format.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace zbfuzz {

namespace ck = zeroblocks::checkpoint;

/// The name the inputs are given in error messages.
inline const std::string input_name = "fuzz-input";

/// Runs `f`; the `zeroblocks::error` it throws, as text ("" when none).
template <class F>
std::string refused(F&& f) {
  try {
    f();
  } catch (const zeroblocks::error& e) {
    std::string s = e.what();
    return s.empty() ? std::string("(empty message)") : s;
  }
  return {};
}

/// Sum of a byte range, so the compiler keeps the reads.
inline volatile unsigned char sink = 0;
inline void touch(const unsigned char* b, std::size_t n) {
  unsigned char x = 0;
  for (std::size_t i = 0; i < n; ++i) x = static_cast<unsigned char>(x + b[i]);
  sink = static_cast<unsigned char>(sink + x);
}

/// A manifest's text.
inline std::string manifest(const std::uint8_t* d, std::size_t n) {
  return refused([&] {
    const auto m = ck::read_manifest(std::string_view(reinterpret_cast<const char*>(d), n), input_name, "fuzz");
    std::uint64_t total = 0;
    for (const auto& f : m.files)
      for (const auto& s : f.segments) total += s.count;
    sink = static_cast<unsigned char>(sink + total);
  });
}

/// A manifest and rank 0's file: 4 bytes (little-endian) of the manifest's length, the
/// manifest, then the file's bytes. Reads as `load` does when the file's size matches:
/// every block's checksum, then every segment's runs, through pointers into the file.
inline std::string checkpoint(const std::uint8_t* d, std::size_t n) {
  return refused([&] {
    if (n < 4) return;
    std::uint32_t len = 0;
    std::memcpy(&len, d, 4);
    if (len > n - 4) return;
    const auto m = ck::read_manifest(std::string_view(reinterpret_cast<const char*>(d + 4), len), input_name, "fuzz");
    const unsigned char* file = d + 4 + len;
    const std::size_t bytes = n - 4 - len;
    const auto& f = m.files.at(0);  // world >= 1, so there is a files[0]
    ZB_REQUIRE(f.bytes == bytes, "fuzz: ", f.file, " has ", bytes, " bytes; the manifest says ", f.bytes);
    ck::verify_blocks(f.file, f, "fuzz", [&](std::uint64_t off, std::size_t) { return file + off; });
    for (const auto& s : f.segments)
      for (int a = 0; a < m.state_arrays; ++a)
        touch(file + s.offset + static_cast<std::uint64_t>(a) * s.count * 4, static_cast<std::size_t>(s.count) * 4);
  });
}

/// A safetensors file: the header, then every tensor's bytes.
inline std::string safetensors(const std::uint8_t* d, std::size_t n) {
  return refused([&] {
    const auto h = ck::read_safetensors_header(d, n, input_name, "fuzz");
    for (const auto& t : h.tensors) touch(d + t.begin, static_cast<std::size_t>(t.end - t.begin));
  });
}

}  // namespace zbfuzz
