/**
 * @file format.hpp
 * @brief The readers of outside bytes, apart from any engine or file: a checkpoint's
 *        manifest (`read_manifest`), its rank files' block checksums (`verify_blocks`)
 *        and a safetensors header (`read_safetensors_header`).
 *
 * Each takes bytes and returns a typed, fully checked value, or throws one
 * `zeroblocks::error` naming the file and the field (`files[1].segments[3][2]`) — for
 * every input, whatever it holds: no other exception type, no read outside the bytes
 * given, no arithmetic that wraps, no recursion on the input's nesting. `load`,
 * `export_safetensors` and `import_safetensors` (checkpoint.hpp) only ever see what
 * these return, so everything those do with the values (offsets into mappings, sizes of
 * allocations) is bounded by the file sizes checked here.
 *
 * They are fuzzed: `fuzz/` holds a libFuzzer target for each (clang; `scripts/fuzz.sh`)
 * with a seed corpus, and `test_format_mutations` runs thousands of deterministic
 * mutations of the seeds through the same entry points in the default suite (and under
 * AddressSanitizer/UBSan). Split out of checkpoint.hpp so that the readers compile
 * without the engine (a fuzz target builds in seconds) and are read in one place.
 *
 * Needs nlohmann-json and xxHash, as `zeroblocks::checkpoint` does.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"

#include <nlohmann/json.hpp>
#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace checkpoint {

/// @brief The format this code writes; it reads this version and older.
inline constexpr int format_version = 1;

namespace detail {

using json = nlohmann::json;
using ::zeroblocks::detail::concat;

inline std::string hex64(std::uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

/// The name of rank `r`'s file in a checkpoint: `rank-NNNNN.bin`.
inline std::string rank_file_name(int r) {
  char b[32];
  std::snprintf(b, sizeof b, "rank-%05d.bin", r);
  return b;
}

/// Typed access to a parsed JSON document with errors that name the file and the
/// field. Only what the value's type allows is read (no conversion that wraps or is
/// undefined: a negative or fractional count, a float past an integer's range).
struct json_reader {
  std::string who, where;

  [[noreturn]] void fail(const std::string& path, const std::string& what) const {
    ZB_FAIL(who, ": ", where, ": ", path, " ", what);
  }
  const json& member(const json& o, const char* key, const std::string& path) const {
    if (!o.is_object()) fail(path, "is not an object");
    const auto it = o.find(key);
    if (it == o.end()) fail(path.empty() ? std::string(key) : concat(path, ".", key), "is missing");
    return *it;
  }
  static std::string field(const std::string& path, const char* key) {
    return path.empty() ? std::string(key) : concat(path, ".", key);
  }
  std::uint64_t u64(const json& v, const std::string& path, std::uint64_t max) const {
    if (!v.is_number_unsigned()) fail(path, "is not a non-negative integer");
    const auto x = v.get<std::uint64_t>();
    if (x > max) fail(path, concat("is ", x, "; at most ", max, " is valid"));
    return x;
  }
  std::uint64_t u64(const json& o, const char* key, const std::string& path, std::uint64_t max) const {
    return u64(member(o, key, path), field(path, key), max);
  }
  std::int64_t i64(const json& o, const char* key, const std::string& path) const {
    const auto& v = member(o, key, path);
    if (!v.is_number_integer()) fail(field(path, key), "is not an integer");
    if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
      fail(field(path, key), "is too large");
    return v.get<std::int64_t>();
  }
  double number(const json& v, const std::string& path) const {
    if (!v.is_number()) fail(path, "is not a number");
    return v.get<double>();
  }
  std::string text(const json& o, const char* key, const std::string& path) const {
    const auto& v = member(o, key, path);
    if (!v.is_string()) fail(field(path, key), "is not a string");
    return v.get<std::string>();
  }
  const json& array(const json& o, const char* key, const std::string& path) const {
    const auto& v = member(o, key, path);
    if (!v.is_array()) fail(field(path, key), "is not an array");
    return v;
  }
  /// A shape: an array of non-negative integers whose product (returned in `numel`)
  /// does not pass 2^62.
  std::vector<std::uint64_t> shape(const json& v, const std::string& path, std::uint64_t& numel) const {
    if (!v.is_array()) fail(path, "is not an array");
    if (v.size() > 64) fail(path, concat("has ", v.size(), " dimensions; at most 64 are read"));
    constexpr std::uint64_t limit = std::uint64_t{1} << 62;
    std::vector<std::uint64_t> s;
    numel = 1;
    for (std::size_t i = 0; i < v.size(); ++i) {
      s.push_back(u64(v[i], concat(path, "[", i, "]"), limit));
      if (s.back() != 0 && numel > limit / s.back()) fail(path, concat("has more than ", limit, " elements"));
      numel *= s.back();
    }
    return s;
  }
};

/// Parse JSON text; a syntax error (or nesting deeper than `max_depth`, which parsing
/// and printing would otherwise follow) is an error naming `where`.
inline json parse_json(std::string_view text, const json_reader& r, const char* what) {
  constexpr int max_depth = 64;
  bool too_deep = false;
  json j;
  try {
    j = json::parse(text.begin(), text.end(), [&](int d, json::parse_event_t ev, json&) {
      if ((ev == json::parse_event_t::object_start || ev == json::parse_event_t::array_start) && d >= max_depth)
        too_deep = true;
      return !too_deep;
    });
  } catch (const std::exception& e) {
    ZB_FAIL(r.who, ": ", r.where, ": ", what, " is not valid JSON: ", e.what());
  }
  ZB_REQUIRE(!too_deep, r.who, ": ", r.where, ": ", what, " nests deeper than ", max_depth, " levels");
  return j;
}

/// A shape as text: `[26,7]`.
inline std::string shape_text(const std::vector<std::uint64_t>& s) {
  std::string t = "[";
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i) t += ',';
    t += std::to_string(s[i]);
  }
  return t + "]";
}

}  // namespace detail

/// @brief A checkpoint manifest, read and checked (see checkpoint.hpp for the format).
struct manifest {
  /// One run of a rank file: elements `[begin, begin + count)` of parameter `param`,
  /// `state_arrays` runs of `count` fp32 values from byte `offset`.
  struct segment {
    std::uint64_t param = 0, begin = 0, count = 0, offset = 0;
  };
  struct rank_file {
    std::string file;                   ///< `rank-NNNNN.bin` (checked: no other name, no path)
    std::uint64_t bytes = 0;            ///< its size
    std::uint64_t xxh3 = 0;             ///< XXH3-64 of the whole file
    std::uint64_t block_bytes = 1;      ///< bytes per checksummed block (>= 1)
    std::vector<std::uint64_t> blocks;  ///< XXH3-64 of each block (ceil(bytes / block_bytes) of them)
    std::vector<segment> segments;      ///< each inside the file and inside its parameter
  };
  struct param {
    std::string name, describe;
    std::vector<std::uint64_t> shape;
    std::uint64_t numel = 1;
  };
  int version = 0;
  std::string name;
  int world = 0;
  std::string optimizer;
  int state_arrays = 1;  ///< 1 + the optimizer's state arrays
  std::vector<param> registry;
  std::vector<rank_file> files;  ///< `world` of them, rank order
  std::int64_t steps = 0;
  std::uint64_t skipped = 0;
  double lr = 0;
  std::vector<std::pair<std::string, double>> scaler;
};

/// @brief Read and check manifest `text` of `where` (the error's prefix is `who`):
/// format and version, every field's type, the rank files' names (`rank-NNNNN.bin`, one
/// per rank of `world`), checksum lists of the right length, and every segment inside
/// its file and its parameter. What it cannot know — the engine's model and optimizer,
/// the files' actual sizes — `load` checks.
inline manifest read_manifest(std::string_view text, const std::string& where, const char* who) {
  detail::json_reader r{who, where};
  const auto j = detail::parse_json(text, r, "the manifest");
  ZB_REQUIRE(j.is_object() && j.contains("format") && j["format"] == "zeroblocks-checkpoint", who, ": ", where,
             " is not a zeroblocks checkpoint manifest");
  manifest m;
  {
    const auto& v = r.member(j, "format_version", "");
    ZB_REQUIRE(v.is_number_integer() && v.get<std::int64_t>() >= 1 && v.get<std::int64_t>() <= format_version, who,
               ": ", where, " has format version ", v.is_number_integer() ? std::to_string(v.get<std::int64_t>()) : "?",
               "; this zeroblocks reads versions 1 to ", format_version, " (a newer zeroblocks wrote it?)");
    m.version = static_cast<int>(v.get<std::int64_t>());
  }
  m.name = r.text(j, "name", "");
  m.world = static_cast<int>(r.u64(j, "world", "", 1u << 24));
  if (m.world < 1) r.fail("world", "is 0");
  const auto& opt = r.member(j, "optimizer", "");
  m.optimizer = r.text(opt, "name", "optimizer");
  m.state_arrays = static_cast<int>(r.u64(opt, "state_arrays", "optimizer", 64));
  if (m.state_arrays < 1) r.fail("optimizer.state_arrays", "is 0");

  const auto& reg = r.array(j, "registry", "");
  m.registry.reserve(reg.size());
  for (std::size_t p = 0; p < reg.size(); ++p) {
    const std::string path = detail::concat("registry[", p, "]");
    manifest::param e;
    e.name = r.text(reg[p], "name", path);
    e.describe = r.text(reg[p], "describe", path);
    e.shape = r.shape(r.member(reg[p], "shape", path), path + ".shape", e.numel);
    m.registry.push_back(std::move(e));
  }

  const auto& run = r.member(j, "run", "");
  m.steps = r.i64(run, "steps", "run");
  m.skipped = r.u64(run, "skipped", "run", std::numeric_limits<std::uint64_t>::max());
  m.lr = r.number(r.member(run, "lr", "run"), "run.lr");
  if (!(std::abs(m.lr) <= std::numeric_limits<float>::max())) r.fail("run.lr", "is not a finite fp32 value");
  const auto& sc = r.member(run, "scaler", "run");
  if (!sc.is_object()) r.fail("run.scaler", "is not an object");
  for (const auto& [k, v] : sc.items()) m.scaler.emplace_back(k, r.number(v, detail::concat("run.scaler.", k)));

  const auto& files = r.array(j, "files", "");
  ZB_REQUIRE(files.size() == static_cast<std::size_t>(m.world), who, ": ", where, " lists ", files.size(),
             " rank files for ", m.world, " ranks");
  const std::uint64_t run_bytes = 4 * static_cast<std::uint64_t>(m.state_arrays);
  for (std::size_t fi = 0; fi < files.size(); ++fi) {
    const auto& f = files[fi];
    const std::string path = detail::concat("files[", fi, "]");
    manifest::rank_file rf;
    rf.file = r.text(f, "file", path);
    if (rf.file != detail::rank_file_name(static_cast<int>(fi)))
      r.fail(path + ".file", detail::concat("is '", rf.file, "', not ", detail::rank_file_name(static_cast<int>(fi))));
    rf.bytes = r.u64(f, "bytes", path, std::uint64_t{1} << 62);
    rf.block_bytes = r.u64(f, "block_bytes", path, std::uint64_t{1} << 62);
    if (rf.block_bytes == 0) r.fail(path + ".block_bytes", "is 0");
    const auto hash_of = [&](const detail::json& h, const std::string& at) {
      if (!h.is_string() || h.get_ref<const std::string&>().size() != 16) r.fail(at, "is not 16 hex digits");
      std::uint64_t x = 0;
      for (char c : h.get_ref<const std::string&>()) {
        const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) r.fail(at, "is not 16 hex digits");
        x = (x << 4) | static_cast<std::uint64_t>(d);
      }
      return x;
    };
    rf.xxh3 = hash_of(r.member(f, "xxh3", path), path + ".xxh3");
    const auto& blocks = r.array(f, "blocks", path);
    const std::uint64_t nblocks = rf.bytes / rf.block_bytes + (rf.bytes % rf.block_bytes != 0);
    ZB_REQUIRE(blocks.size() == nblocks, who, ": ", where, ": ", rf.file, " has ", nblocks, " blocks of ",
               rf.block_bytes, " bytes but the manifest lists ", blocks.size(), " checksums");
    rf.blocks.reserve(blocks.size());
    for (std::size_t b = 0; b < blocks.size(); ++b) rf.blocks.push_back(hash_of(blocks[b], detail::concat(path, ".blocks[", b, "]")));
    const auto& segs = r.array(f, "segments", path);
    rf.segments.reserve(segs.size());
    for (std::size_t si = 0; si < segs.size(); ++si) {
      const auto& s = segs[si];
      const std::string at = detail::concat(path, ".segments[", si, "]");
      if (!s.is_array() || s.size() != 4) r.fail(at, "is not [param, begin, count, offset]");
      manifest::segment g;
      const auto big = std::numeric_limits<std::uint64_t>::max();
      g.param = r.u64(s[0], at + "[0]", big);
      g.begin = r.u64(s[1], at + "[1]", big);
      g.count = r.u64(s[2], at + "[2]", big);
      g.offset = r.u64(s[3], at + "[3]", big);
      // Inside the file and the parameter (the load reads these ranges through a mapping).
      const bool inside = g.param < m.registry.size() && g.count <= rf.bytes / run_bytes &&
                          g.offset <= rf.bytes - g.count * run_bytes && g.begin <= m.registry[g.param].numel &&
                          g.count <= m.registry[g.param].numel - g.begin;
      ZB_REQUIRE(inside, who, ": ", where, ": a segment of ", rf.file, " ([", g.param, ", ", g.begin, ", ", g.count,
                 ", ", g.offset, "]) lies outside its file or its parameter");
      rf.segments.push_back(g);
    }
    m.files.push_back(std::move(rf));
  }
  return m;
}

/// @brief Check a rank file's checksum block by block: `block_at(off, n)` gives the
/// file's bytes `[off, off + n)` (the file's size, `f.bytes`, checked by the caller); an
/// error names `path` and the bad byte range. The blocks cover every byte, so one hash
/// pass suffices: the whole-file `xxh3` (for tools that check a file alone) is not
/// recomputed.
template <class BlockAt>
void verify_blocks(const std::string& path, const manifest::rank_file& f, const char* who, BlockAt&& block_at) {
  std::size_t b = 0;
  for (std::uint64_t off = 0; off < f.bytes; off += f.block_bytes, ++b) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(f.block_bytes, f.bytes - off));
    ZB_REQUIRE(XXH3_64bits(block_at(off, n), n) == f.blocks[b], who, ": ", path, " is corrupt: bytes [", off, ", ",
               off + n, ") do not match their checksum");
  }
}

/// @brief A safetensors file's header, read and checked.
struct safetensors_header {
  struct tensor {
    std::string name;
    std::string dtype;  ///< as the file names it: F32, BF16, F16, I64, ...
    std::vector<std::uint64_t> shape;
    std::uint64_t numel = 1;
    std::uint64_t begin = 0, end = 0;  ///< byte range in the file (the header's offsets + its end)
  };
  std::uint64_t data_start = 0;  ///< 8 + the header's length
  std::vector<tensor> tensors;   ///< in the header's order
  std::vector<std::pair<std::string, std::string>> metadata;
  const tensor* find(std::string_view name) const {
    for (const auto& t : tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
};

/// @brief Bytes per element of a safetensors dtype; 0 for a name the format does not have.
inline std::size_t safetensors_dtype_bytes(std::string_view d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

/// @brief Read and check the header of a safetensors file whose first `file_bytes`
/// bytes are at `b`: the 8-byte little-endian length (inside the file, at most 100 MB
/// as the format's reference reader allows), a JSON object whose `__metadata__` maps
/// strings to strings and whose every other entry has a known `dtype`, a `shape` and
/// `data_offsets` `[begin, end]` inside the data and exactly as long as the shape and
/// dtype need, no two tensors overlapping. Errors name `where`.
inline safetensors_header read_safetensors_header(const unsigned char* b, std::uint64_t file_bytes,
                                                  const std::string& where, const char* who) {
  detail::json_reader r{who, where};
  ZB_REQUIRE(file_bytes >= 8, who, ": ", where, " is too short for a safetensors file");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | b[i];
  ZB_REQUIRE(n <= file_bytes - 8, who, ": ", where, ": header of ", n, " bytes runs past the end of the file");
  constexpr std::uint64_t max_header = 100'000'000;
  ZB_REQUIRE(n <= max_header, who, ": ", where, ": header of ", n, " bytes; at most ", max_header, " are read");
  safetensors_header h;
  h.data_start = 8 + n;
  const std::uint64_t data_bytes = file_bytes - h.data_start;
  const auto j = detail::parse_json(
      std::string_view(reinterpret_cast<const char*>(b + 8), static_cast<std::size_t>(n)), r, "the header");
  ZB_REQUIRE(j.is_object(), who, ": ", where, ": the header is not a JSON object");
  for (const auto& [key, t] : j.items()) {
    if (key == "__metadata__") {
      if (!t.is_object()) r.fail(key, "is not an object");
      for (const auto& [mk, mv] : t.items()) {
        if (!mv.is_string()) r.fail(detail::concat(key, ".", mk), "is not a string");
        h.metadata.emplace_back(mk, mv.get<std::string>());
      }
      continue;
    }
    const std::string path = detail::concat("tensor '", key, "'");
    safetensors_header::tensor e;
    e.name = key;
    e.dtype = r.text(t, "dtype", path);
    const std::size_t size = safetensors_dtype_bytes(e.dtype);
    if (size == 0) r.fail(path + ".dtype", detail::concat("is '", e.dtype, "', not a safetensors dtype"));
    e.shape = r.shape(r.member(t, "shape", path), path + ".shape", e.numel);
    const auto& off = r.array(t, "data_offsets", path);
    if (off.size() != 2) r.fail(path + ".data_offsets", "is not [begin, end]");
    const std::uint64_t b0 = r.u64(off[0], path + ".data_offsets[0]", data_bytes);
    const std::uint64_t b1 = r.u64(off[1], path + ".data_offsets[1]", data_bytes);
    const std::uint64_t need = e.numel * size;  // numel <= 2^62 and size <= 8: may exceed 2^64 ...
    const bool fits = e.numel <= (std::uint64_t{1} << 60);  // ... so compare only when it cannot wrap
    ZB_REQUIRE(b0 <= b1 && fits && b1 - b0 == need, who, ": ", where, ": ", path, " has data_offsets [", b0, ", ", b1,
               "], not ", fits ? std::to_string(need) : std::string("its"), " bytes of ", e.dtype, " ",
               detail::shape_text(e.shape), " inside the file");
    e.begin = h.data_start + b0;
    e.end = h.data_start + b1;
    h.tensors.push_back(std::move(e));
  }
  // No two tensors share bytes (the format's files are one buffer cut into pieces).
  std::vector<const safetensors_header::tensor*> by_begin;
  for (const auto& t : h.tensors)
    if (t.end > t.begin) by_begin.push_back(&t);
  std::sort(by_begin.begin(), by_begin.end(), [](auto* x, auto* y) { return x->begin < y->begin; });
  for (std::size_t i = 1; i < by_begin.size(); ++i)
    ZB_REQUIRE(by_begin[i - 1]->end <= by_begin[i]->begin, who, ": ", where, ": tensors '", by_begin[i - 1]->name,
               "' and '", by_begin[i]->name, "' overlap");
  return h;
}

}  // namespace checkpoint
ZB_NAMESPACE_END
