// The deterministic mutation run over every reader of outside bytes (checkpoint/format.hpp
// through fuzz/targets.hpp, the entry points the libFuzzer targets call): the seed
// corpus in fuzz/corpus must be accepted, and thousands of mutated inputs per reader —
// byte-level edits, and JSON-aware ones that put extreme numbers, wrong types and odd
// names into the fields — must each be accepted or refused with a zeroblocks::error
// naming the input. Any other exception fails the test; under the sanitize preset any
// read outside an input, overflow or undefined conversion is a sanitizer report.
// ZB_MUTATIONS=N sets the mutations per seed (default 1500).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "targets.hpp"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <typeinfo>
#include <vector>

namespace fs = std::filesystem;
using bytes = std::string;

namespace {

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

bytes read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<bytes> seeds(const char* target) {
  std::vector<bytes> out;
  std::vector<fs::path> paths;
  for (const auto& e : fs::directory_iterator(fs::path(ZB_FUZZ_CORPUS) / target)) paths.push_back(e.path());
  std::sort(paths.begin(), paths.end());  // a fixed order: the run is the same every time
  for (const auto& p : paths) out.push_back(read_file(p));
  return out;
}

const std::vector<std::string> numbers = {"-1", "0", "1", "-0", "1.5", "1e308", "-1e308", "1e-300", "18446744073709551615",
                                          "18446744073709551616", "9223372036854775807", "9223372036854775808",
                                          "4294967296", "65536", "4611686018427387904", "\"x\"", "null", "[]", "{}",
                                          "true", "[0,0,0,0]", "[1e308]"};
const std::vector<std::string> strings = {"\"\"", "\"../rank-00000.bin\"", "\"rank-00001.bin\"", "\"F64\"", "\"BOOL\"",
                                          "\"I8\"", "\"zz\"", "\"0000000000000000\"", "\"ffffffffffffffff\"", "0",
                                          "[]", "{}", "null", "\"__metadata__\"", "\"F32\""};

/// Where JSON numbers and strings start and end in `s` (a rough scan: enough to aim at fields).
void tokens(const bytes& s, std::vector<std::pair<std::size_t, std::size_t>>& nums,
            std::vector<std::pair<std::size_t, std::size_t>>& strs) {
  for (std::size_t i = 0; i < s.size();) {
    if (s[i] == '"') {
      std::size_t j = i + 1;
      while (j < s.size() && s[j] != '"') j += s[j] == '\\' ? 2 : 1;
      if (j >= s.size()) break;
      strs.emplace_back(i, j + 1);
      i = j + 1;
    } else if (s[i] == '-' || (s[i] >= '0' && s[i] <= '9')) {
      std::size_t j = i + 1;
      while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '.' || s[j] == 'e' ||
                              s[j] == 'E' || s[j] == '+' || s[j] == '-'))
        ++j;
      nums.emplace_back(i, j);
      i = j;
    } else {
      ++i;
    }
  }
}

/// One mutation of `s`, whose JSON text (if any) is `s[json_begin, json_end)`.
void mutate(bytes& s, std::mt19937_64& rng, std::size_t json_begin, std::size_t json_end) {
  auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % (n ? n : 1)); };
  if (s.empty()) {
    s.push_back(static_cast<char>(rng()));
    return;
  }
  const int kind = static_cast<int>(rng() % 12);
  if (kind <= 5 && json_end > json_begin) {  // aim at a field: its value, or its key and value
    std::vector<std::pair<std::size_t, std::size_t>> nums, strs;
    tokens(s.substr(json_begin, json_end - json_begin), nums, strs);
    if (kind == 5 && !strs.empty()) {  // drop a key: '"key": ' up to the next ',' or '}'
      const auto [b, e] = strs[pick(strs.size())];
      const std::size_t from = json_begin + b;
      if (e < json_end - json_begin && s[json_begin + e] == ':') {
        const std::size_t to = s.find_first_of(",}", json_begin + e);
        if (to != std::string::npos && to < json_end) {
          if (s[to] == ',') {
            s.erase(from, to - from + 1);
          } else {  // the last member: drop the comma before it too
            std::size_t c = from;
            while (c > json_begin && std::isspace(static_cast<unsigned char>(s[c - 1]))) --c;
            if (c > json_begin && s[c - 1] == ',') --c;
            s.erase(c, to - c);
          }
        }
      }
      return;
    }
    const bool num = kind < 3 ? !nums.empty() : strs.empty();
    const auto& list = num ? nums : strs;
    if (!list.empty()) {
      const auto [b, e] = list[pick(list.size())];
      const auto& with = num ? numbers[pick(numbers.size())] : strings[pick(strings.size())];
      s.replace(json_begin + b, e - b, with);
      return;
    }
  }
  switch (kind) {
    case 6:
      s[pick(s.size())] ^= static_cast<char>(1u << pick(8));
      break;
    case 7: {
      static const char interesting[] = {'\0', '\xff', '-', '9', '"', '[', '{', ']', '}', ',', ':', '\\', 'e'};
      s[pick(s.size())] = interesting[pick(sizeof interesting)];
      break;
    }
    case 8: {
      const std::size_t at = pick(s.size());
      s.erase(at, 1 + pick(16));
      break;
    }
    case 9: {
      const std::size_t at = pick(s.size()), n = 1 + pick(std::min<std::size_t>(64, s.size() - at));
      s.insert(pick(s.size()), s.substr(at, n));
      break;
    }
    case 10:
      s.resize(pick(s.size()));
      break;
    default: {  // an 8-byte little-endian length or offset at the start: extreme values
      static const std::uint64_t v[] = {0, 1, 7, 8, 4096, 0x7fffffffffffffffull, 0xffffffffffffffffull, 100'000'001};
      std::uint64_t x = v[pick(std::size(v))];
      if (rng() % 2) x = s.size() + pick(3) - 1;
      const std::size_t w = std::min<std::size_t>(s.size(), rng() % 2 ? 8 : 4);
      std::memcpy(s.data(), &x, w);
    }
  }
}

struct outcome {
  std::size_t accepted = 0, refused = 0, parse_errors = 0;
  std::map<std::string, std::size_t> reasons;  // the refusals' texts up to the first digit or quote
};

outcome run(const char* target, const std::function<std::string(const std::uint8_t*, std::size_t)>& f,
            std::size_t json_at) {
  const auto corpus = seeds(target);
  REQUIRE(!corpus.empty());
  std::size_t per_seed = 1500;
  if (const char* e = std::getenv("ZB_MUTATIONS")) per_seed = std::strtoull(e, nullptr, 10);
  outcome o;
  std::mt19937_64 rng(0x5eed'0000u + corpus.size());
  for (std::size_t si = 0; si < corpus.size(); ++si) {
    const auto& seed = corpus[si];
    {
      const auto err = f(reinterpret_cast<const std::uint8_t*>(seed.data()), seed.size());
      INFO(std::string(target), " seed #", si, ": ", err);
      CHECK(err.empty());  // the corpus is valid input
    }
    // The JSON text's extent in the seed: after a 4-byte length (checkpoint) or an
    // 8-byte one (safetensors), or all of it (manifest).
    std::size_t jb = json_at, je = seed.size();
    if (json_at == 4) {
      std::uint32_t len = 0;
      std::memcpy(&len, seed.data(), 4);
      je = 4 + len;
    } else if (json_at == 8) {
      std::uint64_t len = 0;
      std::memcpy(&len, seed.data(), 8);
      je = 8 + static_cast<std::size_t>(len);
    }
    for (std::size_t i = 0; i < per_seed; ++i) {
      bytes s = seed;
      const int edits = rng() % 4 != 0 ? 1 : 2 + static_cast<int>(rng() % 2);
      for (int k = 0; k < edits; ++k) mutate(s, rng, jb, std::min(je, s.size()));
      std::string err;
      try {
        err = f(reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
      } catch (const std::exception& e) {
        FAIL_CHECK(std::string(target), " mutation ", i, " of seed #", si, " threw a ", std::string(typeid(e).name()),
                   " (not a zeroblocks::error): ", std::string(e.what()));
        continue;
      }
      if (err.empty()) {
        ++o.accepted;
        continue;
      }
      ++o.refused;
      // A clear error: it names the reader and the input.
      if (err.find("fuzz") == std::string::npos) FAIL_CHECK(std::string(target), ": an error without its source: ", err);
      if (err.find("not valid JSON") != std::string::npos) ++o.parse_errors;
      // The refusal's kind: its text without quoted names and numbers.
      std::string reason;
      bool quoted = false;
      for (char c : err) {
        if (c == '\'') quoted = !quoted;
        if (!quoted && !std::isdigit(static_cast<unsigned char>(c))) reason += c;
      }
      ++o.reasons[reason];
    }
  }
  MESSAGE(std::string(target), ": ", corpus.size(), " seeds x ", per_seed, " mutations: ", o.accepted, " accepted, ", o.refused,
          " refused (", o.parse_errors, " as invalid JSON), ", o.reasons.size(), " distinct refusals");
  return o;
}

}  // namespace

TEST_CASE("manifest: mutations are accepted or refused with a clear error") {
  const auto o = run("manifest", zbfuzz::manifest, 0);
  // The mutations reach past the JSON syntax into the fields' checks.
  CHECK(o.refused - o.parse_errors > o.refused / 4);
  CHECK(o.reasons.size() >= 10);
}

TEST_CASE("checkpoint (manifest + rank file): mutations are accepted or refused with a clear error") {
  const auto o = run("checkpoint", zbfuzz::checkpoint, 4);
  CHECK(o.refused - o.parse_errors > o.refused / 4);
  CHECK(o.reasons.size() >= 10);
}

TEST_CASE("safetensors header: mutations are accepted or refused with a clear error") {
  const auto o = run("safetensors", zbfuzz::safetensors, 8);
  CHECK(o.refused - o.parse_errors > o.refused / 4);
  CHECK(o.reasons.size() >= 8);
}

TEST_CASE("hand-made hostile inputs") {
  auto refusal = [](const std::function<std::string(const std::uint8_t*, std::size_t)>& f, const bytes& s) {
    return f(reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
  };
  // Nesting a recursive reader or printer would follow down to a stack overflow.
  const bytes deep = std::string(200000, '[') + std::string(200000, ']');
  CHECK(has(refusal(zbfuzz::manifest, deep), "nests deeper than 64 levels"));
  bytes st(8, '\0');
  const bytes deep_header = "{\"a\":" + deep + "}";
  const std::uint64_t n = deep_header.size();
  std::memcpy(st.data(), &n, 8);
  CHECK(has(refusal(zbfuzz::safetensors, st + deep_header), "nests deeper than 64 levels"));
  // A shape whose element count wraps 64 bits, and offsets that would then look right.
  bytes h = R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}})";
  bytes f(8, '\0');
  const std::uint64_t hn = h.size();
  std::memcpy(f.data(), &hn, 8);
  CHECK(has(refusal(zbfuzz::safetensors, f + h), "has more than"));
  // A rank file named outside the checkpoint's directory.
  auto m = read_file(fs::path(ZB_FUZZ_CORPUS) / "manifest" / "step3.json");
  const auto at = m.find("\"rank-00000.bin\"");
  REQUIRE(at != std::string::npos);
  m.replace(at, 16, "\"../../etc/passwd\"");
  CHECK(has(refusal(zbfuzz::manifest, m), "files[0].file is '../../etc/passwd', not rank-00000.bin"));
}
