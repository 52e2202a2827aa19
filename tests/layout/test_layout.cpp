// Parameter registry, flat layout (partition::even), the stage 2/3 bucket plan and the
// ZeRO memory formula. Single process: every world size is simulated by building the
// layout for it. Expectations are recomputed here from the documented rules (align every
// parameter, pad every unit to a multiple of world * align, slice r to rank r, shards
// are the slices in unit order), not read back from the layout.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <zeroblocks/zeroblocks.hpp>

#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>
#include "error_of.hpp"

namespace zb = zeroblocks;
using zbt::error_of;
using zbt::has;

namespace {

constexpr std::size_t align = 32;

std::size_t round_up(std::size_t n, std::size_t m) { return n == 0 ? 0 : ((n + m - 1) / m) * m; }

/// Awkward sizes on purpose: a unit registered in two interleaved pieces, a scalar, a
/// zero-size parameter first, in the middle and last, a unit of only zero-size
/// parameters, units larger and smaller than one aligned chunk.
zb::param_registry awkward_model() {
  zb::param_registry reg;
  reg.add("embed.w", {13, 7}, "embed");   // 91
  reg.add("l1.empty", {0}, "l1");         // zero-size first in its unit
  reg.add("l1.w", {5, 11}, "l1");         // 55
  reg.add("embed.b", {3}, "embed");       // back to an earlier unit
  reg.add("l1.mid", {4, 0}, "l1");        // zero-size in the middle
  reg.add("l1.b", {5}, "l1");
  reg.add("scalar", {}, "l2");            // empty shape: one element
  reg.add("nothing", {0}, "empty_unit");  // a unit with only zero-size parameters
  reg.add("nothing2", {0, 5}, "empty_unit");
  reg.add("l3.w", {97, 3}, "l3");         // 291
  reg.add("l3.b", {3}, "l3");
  reg.add("l3.tail", {0}, "l3");          // zero-size last
  reg.add("exact", {64}, "exact");        // exactly two aligned chunks
  reg.add("head.w", {37}, "head");
  return reg;
}

/// The same model with its zero-size parameters left out.
zb::param_registry awkward_model_without_empties() {
  zb::param_registry reg;
  reg.add("embed.w", {13, 7}, "embed");
  reg.add("l1.w", {5, 11}, "l1");
  reg.add("embed.b", {3}, "embed");
  reg.add("l1.b", {5}, "l1");
  reg.add("scalar", {}, "l2");
  reg.add("l3.w", {97, 3}, "l3");
  reg.add("l3.b", {3}, "l3");
  reg.add("exact", {64}, "exact");
  reg.add("head.w", {37}, "head");
  return reg;
}

/// Checks every documented property of `lay` against an independent recomputation.
void check_layout(const zb::param_registry& reg, const zb::layout& lay, int world) {
  INFO("world " << world);
  const std::size_t w = static_cast<std::size_t>(world);
  REQUIRE(lay.world() == world);
  REQUIRE(lay.align_numel() == align);
  REQUIRE(lay.unit_count() == reg.units().size());
  REQUIRE(lay.param_count() == reg.size());

  std::size_t offset = 0, shard = 0, raw_total = 0, max_unit = 0;
  for (std::size_t u = 0; u < lay.unit_count(); ++u) {
    INFO("unit " << reg.units()[u]);
    const auto& up = lay.unit(u);
    CHECK(lay.unit_name(u) == reg.units()[u]);

    // Parameters of the unit, in registration order.
    std::vector<std::size_t> expected_params;
    for (std::size_t p = 0; p < reg.size(); ++p)
      if (reg.params()[p].unit == u) expected_params.push_back(p);
    CHECK(up.params == expected_params);

    // Units are contiguous, in order.
    CHECK(up.offset == offset);
    CHECK(up.shard_offset == shard);

    std::size_t pos = 0, raw = 0, end = 0;  // end: of the last element of a non-empty parameter
    for (std::size_t p : expected_params) {
      INFO("param " << reg.params()[p].name);
      const auto& pp = lay.param(p);
      pos = round_up(pos, align);
      CHECK(pp.unit == u);
      CHECK(pp.numel == reg.params()[p].numel);
      CHECK(pp.offset_in_unit == pos);
      CHECK(pp.offset == up.offset + pp.offset_in_unit);
      CHECK(pp.offset % align == 0);
      CHECK(pp.offset_in_unit % align == 0);
      // Inside its unit.
      CHECK(pp.offset_in_unit + pp.numel <= up.used_numel);
      CHECK(pp.offset + pp.numel <= up.offset + up.padded_numel);
      pos += pp.numel;
      raw += pp.numel;
      if (pp.numel > 0) end = pos;
    }
    // Padding: the smallest multiple of world*align that holds the used part.
    CHECK(up.raw_numel == raw);
    CHECK(up.used_numel >= raw);
    // Zero-size parameters take no space: only the non-empty ones decide the padding.
    CHECK(up.padded_numel == round_up(end, w * align));
    CHECK(up.padded_numel % (w * align) == 0);
    CHECK(up.padded_numel >= up.used_numel);
    if (up.used_numel > 0) CHECK(up.padded_numel < up.used_numel + w * align);
    CHECK(up.slice_numel * w == up.padded_numel);
    CHECK(up.slice_numel % align == 0);
    if (raw == 0) {
      CHECK(up.padded_numel == 0);
      CHECK(up.slice_numel == 0);
    }
    offset += up.padded_numel;
    shard += up.slice_numel;
    raw_total += raw;
    max_unit = up.padded_numel > max_unit ? up.padded_numel : max_unit;
  }
  CHECK(lay.total_numel() == offset);
  CHECK(lay.shard_numel() == shard);
  CHECK(lay.shard_numel() * w == lay.total_numel());
  CHECK(lay.raw_numel() == raw_total);
  CHECK(lay.max_unit_numel() == max_unit);

  // Parameters never overlap: mark every element, each at most once.
  std::vector<int> owner(lay.total_numel(), -1);
  for (std::size_t p = 0; p < lay.param_count(); ++p) {
    const auto& pp = lay.param(p);
    for (std::size_t i = 0; i < pp.numel; ++i) {
      CHECK(owner[pp.offset + i] == -1);
      owner[pp.offset + i] = static_cast<int>(p);
    }
  }
}

}  // namespace

// ---- registry -----------------------------------------------------------------------

TEST_CASE("registry: handles, units in first-use order, numel, lookups") {
  zb::param_registry reg;
  auto a = reg.add("a", {2, 3}, "u0");
  auto b = reg.add("b", {4}, "u1");
  auto c = reg.add("c", {}, "u0");
  auto d = reg.add("d", {7, 0, 2}, "u2");
  CHECK(a.index == 0);
  CHECK(b.index == 1);
  CHECK(c.index == 2);
  CHECK(d.index == 3);
  CHECK(reg.size() == 4);
  CHECK(reg.units() == std::vector<std::string>{"u0", "u1", "u2"});
  CHECK(reg.params()[0].numel == 6);
  CHECK(reg.params()[1].numel == 4);
  CHECK(reg.params()[2].numel == 1);  // empty shape: a scalar
  CHECK(reg.params()[3].numel == 0);
  CHECK(reg.params()[2].unit == 0);
  CHECK(reg.params()[3].unit == 2);
  CHECK(reg.unit("u0") == zb::unit_id{0});
  CHECK(reg.unit("u1") == zb::unit_id{1});
  CHECK(reg.unit("u2") == zb::unit_id{2});
  CHECK(reg.param("c") == c);
  CHECK(reg.param("d") == d);
  CHECK(reg.describe(0) == "'a' [2,3] in unit 'u0'");
  CHECK(reg.describe(2) == "'c' [] in unit 'u0'");
  CHECK(reg.describe(9) == "<no parameter>");
}

TEST_CASE("registry: bad registrations and lookups throw") {
  zb::param_registry reg;
  reg.add("a", {2}, "u0");
  CHECK(has(error_of([&] { reg.add("a", {3}, "u1"); }), "parameter 'a' registered twice"));
  CHECK(has(error_of([&] { reg.add("a", {2}, "u0"); }), "registered twice"));  // even identical
  CHECK(has(error_of([&] { reg.add("", {2}, "u0"); }), "empty parameter name"));
  CHECK(has(error_of([&] { reg.add("b", {2}, ""); }), "parameter 'b' has an empty unit name"));
  CHECK(has(error_of([&] { (void)reg.unit("nope"); }), "no unit named 'nope'"));
  CHECK(has(error_of([&] { (void)reg.param("nope"); }), "no parameter named 'nope'"));
  CHECK_THROWS_AS((void)reg.unit(""), zb::error);
  // Failed registrations left nothing behind.
  CHECK(reg.size() == 1);
  CHECK(reg.units() == std::vector<std::string>{"u0"});
  CHECK_NOTHROW(reg.add("b", {2}, "u1"));
  CHECK(reg.unit("u1") == zb::unit_id{1});
}

// ---- layout -------------------------------------------------------------------------

TEST_CASE("layout (align 32) for worlds 1..5: alignment, units, padding, slices, shards") {
  const auto reg = awkward_model();
  for (int world = 1; world <= 5; ++world) {
    const auto lay = zb::partition::even::make_layout(reg, world, align);
    check_layout(reg, lay, world);
  }
}

TEST_CASE("layout: concrete numbers for the awkward model") {
  const auto reg = awkward_model();
  // Worked by hand. embed: w 91 at 0, b 3 at 96 -> used 99. l1: empty at 0, w 55 at 0,
  // mid 0 at 64, b 5 at 64 -> used 69. l2: 1. empty_unit: 0. l3: w 291 at 0, b 3 at
  // 320, tail 0 at 352 -> used 352 (raw 294). exact: 64. head: 37.
  {
    const auto lay = zb::partition::even::make_layout(reg, 1, align);
    CHECK(lay.param(reg.param("embed.b").index).offset_in_unit == 96);
    CHECK(lay.param(reg.param("l1.w").index).offset_in_unit == 0);
    CHECK(lay.param(reg.param("l1.b").index).offset_in_unit == 64);
    CHECK(lay.param(reg.param("l3.b").index).offset_in_unit == 320);
    std::vector<std::size_t> padded;
    for (std::size_t u = 0; u < lay.unit_count(); ++u) padded.push_back(lay.unit(u).padded_numel);
    CHECK(padded == std::vector<std::size_t>{128, 96, 32, 0, 352, 64, 64});
    CHECK(lay.total_numel() == 736);
    CHECK(lay.shard_numel() == 736);
    CHECK(lay.raw_numel() == 91 + 3 + 55 + 5 + 1 + 291 + 3 + 64 + 37);
  }
  {
    const auto lay = zb::partition::even::make_layout(reg, 3, align);  // pad to 96
    std::vector<std::size_t> padded, slices, shard_offsets;
    for (std::size_t u = 0; u < lay.unit_count(); ++u) {
      padded.push_back(lay.unit(u).padded_numel);
      slices.push_back(lay.unit(u).slice_numel);
      shard_offsets.push_back(lay.unit(u).shard_offset);
    }
    CHECK(padded == std::vector<std::size_t>{192, 96, 96, 0, 384, 96, 96});
    CHECK(slices == std::vector<std::size_t>{64, 32, 32, 0, 128, 32, 32});
    CHECK(shard_offsets == std::vector<std::size_t>{0, 64, 96, 128, 128, 256, 288});
    CHECK(lay.total_numel() == 960);
    CHECK(lay.shard_numel() == 320);
    CHECK(lay.unit(reg.unit("head").index).offset == 864);
    CHECK(lay.param(reg.param("head.w").index).offset == 864);
    CHECK(lay.max_unit_numel() == 384);
  }
}

TEST_CASE("layout: zero-size parameters take no space") {
  const auto with = awkward_model(), without = awkward_model_without_empties();
  for (int world = 1; world <= 5; ++world) {
    INFO("world " << world);
    const auto a = zb::partition::even::make_layout(with, world, align);
    const auto b = zb::partition::even::make_layout(without, world, align);
    CHECK(a.total_numel() == b.total_numel());
    CHECK(a.shard_numel() == b.shard_numel());
    CHECK(a.raw_numel() == b.raw_numel());
    // Every non-empty parameter sits at the same place in both.
    for (std::size_t p = 0; p < without.size(); ++p) {
      const auto& name = without.params()[p].name;
      INFO(name);
      CHECK(a.param(with.param(name).index).offset == b.param(p).offset);
    }
    // The unit of only zero-size parameters has no slices and sits between its
    // neighbours without a gap.
    const auto& e = a.unit(with.unit("empty_unit").index);
    CHECK(e.padded_numel == 0);
    CHECK(e.slice_numel == 0);
    CHECK(e.raw_numel == 0);
    CHECK(e.used_numel == 0);
    CHECK(e.params.size() == 2);
    CHECK(a.unit(with.unit("l3").index).offset == e.offset);
    CHECK(a.unit(with.unit("l3").index).shard_offset == e.shard_offset);
  }
}

TEST_CASE("layout: a registry of only zero-size parameters, and an empty registry") {
  zb::param_registry reg;
  reg.add("z1", {0}, "a");
  reg.add("z2", {3, 0}, "b");
  for (int world = 1; world <= 5; ++world) {
    const auto lay = zb::partition::even::make_layout(reg, world, align);
    check_layout(reg, lay, world);
    CHECK(lay.total_numel() == 0);
    CHECK(lay.shard_numel() == 0);
    CHECK(lay.max_unit_numel() == 0);
  }
  zb::param_registry none;
  const auto lay = zb::partition::even::make_layout(none, 2, align);
  CHECK(lay.unit_count() == 0);
  CHECK(lay.total_numel() == 0);
}

TEST_CASE("layout: other alignments, and invalid arguments") {
  const auto reg = awkward_model();
  for (std::size_t a : {std::size_t{1}, std::size_t{8}, std::size_t{64}}) {
    for (int world = 1; world <= 5; ++world) {
      INFO("align " << a << " world " << world);
      const auto lay = zb::partition::even::make_layout(reg, world, a);
      for (std::size_t p = 0; p < lay.param_count(); ++p) CHECK(lay.param(p).offset % a == 0);
      for (std::size_t u = 0; u < lay.unit_count(); ++u) {
        CHECK(lay.unit(u).padded_numel % (a * static_cast<std::size_t>(world)) == 0);
        CHECK(lay.unit(u).padded_numel >= lay.unit(u).used_numel);
      }
    }
  }
  // align 1, world 1: no padding at all; used == padded == raw when no zero-size
  // parameter sits between others.
  const auto tight = zb::partition::even::make_layout(awkward_model_without_empties(), 1, 1);
  CHECK(tight.total_numel() == tight.raw_numel());

  CHECK(has(error_of([&] { (void)zb::partition::even::make_layout(reg, 0, align); }), "world size 0 must be >= 1"));
  CHECK(has(error_of([&] { (void)zb::partition::even::make_layout(reg, -2, align); }), "must be >= 1"));
  CHECK(has(error_of([&] { (void)zb::partition::even::make_layout(reg, 2, 0); }), "align_numel must be >= 1"));
  // A partitioner that breaks the rule (padded not a multiple of world) is rejected.
  auto bad_pad = [](std::size_t used, int, std::size_t) { return used + 1; };
  CHECK(has(error_of([&] { zb::layout lay(reg, 2, align, bad_pad); }), "not a multiple of world 2"));
  auto shrink = [](std::size_t used, int, std::size_t) { return used / 2 / 2 * 2; };
  CHECK_THROWS_AS(zb::layout(reg, 2, align, shrink), zb::error);
}

// ---- bucket plan (stages 2/3) -------------------------------------------------------

TEST_CASE("bucket::reduce_scatter::plan covers every unit once, last units first, consecutively") {
  const auto reg = awkward_model();
  using B = zb::bucket::reduce_scatter;
  for (int world = 1; world <= 5; ++world) {
    const auto lay = zb::partition::even::make_layout(reg, world, align);
    const std::size_t w = static_cast<std::size_t>(world);
    for (std::size_t bucket_numel : {std::size_t{1}, std::size_t{100}, std::size_t{300}, std::size_t{500},
                                     lay.total_numel(), std::size_t{1} << 40}) {
      INFO("world " << world << " bucket_numel " << bucket_numel);
      const auto plans = B::plan(lay, bucket_numel);
      REQUIRE_FALSE(plans.empty());
      std::vector<int> covered(lay.unit_count(), 0);
      std::size_t max_bucket = 0;
      for (std::size_t i = 0; i < plans.size(); ++i) {
        const auto& b = plans[i];
        INFO("bucket " << i);
        CHECK(b.first_unit <= b.last_unit);
        // Reverse order, consecutive: bucket 0 ends with the last unit, each next one
        // ends right before its predecessor starts.
        if (i == 0) CHECK(b.last_unit == lay.unit_count() - 1);
        else CHECK(b.last_unit + 1 == plans[i - 1].first_unit);
        std::size_t slices = 0, raw = 0, padded = 0;
        for (std::size_t u = b.first_unit; u <= b.last_unit && u < lay.unit_count(); ++u) {
          ++covered[u];
          slices += lay.unit(u).slice_numel;
          raw += lay.unit(u).raw_numel;
          padded += lay.unit(u).padded_numel;
        }
        CHECK(b.block_numel == slices);
        CHECK(b.raw_numel == raw);
        CHECK(b.block_numel * w == padded);
        // Size rule: within bucket_numel unless it is a single (too large) unit, and
        // greedy: the next unit down would not have fit.
        if (b.first_unit != b.last_unit) CHECK(padded <= bucket_numel);
        if (b.first_unit > 0) CHECK(padded + lay.unit(b.first_unit - 1).padded_numel > bucket_numel);
        max_bucket = std::max(max_bucket, padded);
      }
      CHECK(plans.back().first_unit == 0);
      for (std::size_t u = 0; u < lay.unit_count(); ++u) {
        INFO("unit " << lay.unit_name(u));
        CHECK(covered[u] == 1);
      }
      CHECK(B::max_bucket_numel(lay, bucket_numel) == max_bucket);
      if (bucket_numel == 1) CHECK(plans.size() == lay.unit_count());  // every unit on its own
      if (bucket_numel >= lay.total_numel()) CHECK(plans.size() == 1);  // everything in one
    }
  }
}

// ---- ZeRO memory formula ------------------------------------------------------------

TEST_CASE("zero_formula_bytes: the paper's 16-bit numbers and the fp32 variants") {
  const auto reg = awkward_model();
  for (int world = 1; world <= 5; ++world) {
    const std::size_t n = static_cast<std::size_t>(world);
    const std::size_t psi = zb::partition::even::make_layout(reg, world, align).total_numel();
    REQUIRE(psi % n == 0);
    INFO("world " << world << " psi " << psi);
    // 16-bit params and grads (p = g = 2): 16Ψ, 4Ψ + 12Ψ/N, 2Ψ + 14Ψ/N, 16Ψ/N.
    CHECK(zb::zero_formula_bytes(0, psi, world, 2) == 16 * psi);
    CHECK(zb::zero_formula_bytes(1, psi, world, 2) == 4 * psi + 12 * psi / n);
    CHECK(zb::zero_formula_bytes(2, psi, world, 2) == 2 * psi + 14 * psi / n);
    CHECK(zb::zero_formula_bytes(3, psi, world, 2) == 16 * psi / n);
    // fp32 params and grads (p = g = 4): 20Ψ, 8Ψ + 12Ψ/N, 4Ψ + 16Ψ/N, 20Ψ/N.
    CHECK(zb::zero_formula_bytes(0, psi, world, 4) == 20 * psi);
    CHECK(zb::zero_formula_bytes(1, psi, world, 4) == 8 * psi + 12 * psi / n);
    CHECK(zb::zero_formula_bytes(2, psi, world, 4) == 4 * psi + 16 * psi / n);
    CHECK(zb::zero_formula_bytes(3, psi, world, 4) == 20 * psi / n);
    // On one rank every stage holds the same.
    if (world == 1)
      for (int s = 1; s <= 3; ++s) CHECK(zb::zero_formula_bytes(s, psi, 1, 2) == 16 * psi);
  }
  // A concrete value: Ψ = 7.5e9 (the paper's example) on 64 ranks, stage 2: 2Ψ + 14Ψ/64.
  CHECK(zb::zero_formula_bytes(2, 7'500'000'000ull, 64, 2) == 15'000'000'000ull + 1'640'625'000ull);
  // fp32 gradient accumulation with 16-bit T: 20Ψ, 4Ψ+16Ψ/N, 2Ψ+16Ψ/N, 18Ψ/N.
  for (int world : {1, 2, 4, 8}) {
    const std::size_t psi = 8 * 1000, n = static_cast<std::size_t>(world);
    CHECK(zb::zero_formula_bytes(0, psi, world, 2, 12, true) == 20 * psi);
    CHECK(zb::zero_formula_bytes(1, psi, world, 2, 12, true) == 4 * psi + 16 * psi / n);
    CHECK(zb::zero_formula_bytes(2, psi, world, 2, 12, true) == 2 * psi + 16 * psi / n);
    CHECK(zb::zero_formula_bytes(3, psi, world, 2, 12, true) == 18 * psi / n);
  }
  CHECK(zb::zero_formula_bytes(0, 0, 4, 2) == 0);

  CHECK(has(error_of([] { (void)zb::zero_formula_bytes(4, 1024, 2, 2); }), "stage 4 is not 0..3"));
  CHECK(has(error_of([] { (void)zb::zero_formula_bytes(-1, 1024, 2, 2); }), "stage -1 is not 0..3"));
}

TEST_CASE_TEMPLATE("the presets' memory estimate equals the formula's model state", T, float, zb::half,
                   zb::bfloat16) {
  const auto reg = awkward_model();
  using S = zb::comm::self;
  typename zb::stage2<S, T>::config cfg;  // the same knobs for every preset: only the bucket's matter
  cfg.bucket.bucket_numel = 200;
  typename zb::stage0<S, T>::config cfg0;
  typename zb::stage1<S, T>::config cfg1;
  typename zb::stage3<S, T>::config cfg3;
  cfg3.bucket = cfg.bucket;
  for (int world = 1; world <= 5; ++world) {
    INFO("world " << world << " " << zb::dtype_name<T>());
    const auto lay = zb::partition::even::make_layout(reg, world, align);
    const std::size_t psi = lay.total_numel();
    // bf16 accumulates gradients in fp32 by default (grad_accum_dtype::automatic).
    const bool a32 = std::is_same_v<T, zb::bfloat16>;
    CHECK(zb::stage0<S, T>::accumulates_fp32(cfg0) == a32);
    CHECK(zb::stage0<S, T>::estimate(lay, cfg0).model_state() ==
          zb::zero_formula_bytes(0, psi, world, sizeof(T), 12, a32));
    CHECK(zb::stage1<S, T>::estimate(lay, cfg1).model_state() ==
          zb::zero_formula_bytes(1, psi, world, sizeof(T), 12, a32));
    CHECK(zb::stage2<S, T>::estimate(lay, cfg).model_state() ==
          zb::zero_formula_bytes(2, psi, world, sizeof(T), 12, a32));
    CHECK(zb::stage3<S, T>::estimate(lay, cfg3).model_state() ==
          zb::zero_formula_bytes(3, psi, world, sizeof(T), 12, a32));
    // Stage 2/3 also hold bucket_count buffers of the largest bucket, outside model state.
    const std::size_t bucket_bytes =
        static_cast<std::size_t>(cfg.bucket.bucket_count) *
        zb::bucket::reduce_scatter::max_bucket_numel(lay, cfg.bucket.bucket_numel) * sizeof(T);
    CHECK(zb::stage2<S, T>::estimate(lay, cfg)[zb::mem_category::buckets] == bucket_bytes);
    CHECK(zb::stage3<S, T>::estimate(lay, cfg3)[zb::mem_category::buckets] == bucket_bytes);
    CHECK(zb::stage0<S, T>::estimate(lay, cfg0)[zb::mem_category::buckets] == 0);
  }
  CHECK(zb::stage0<S, T>::stage == 0);
  CHECK(zb::stage1<S, T>::stage == 1);
  CHECK(zb::stage2<S, T>::stage == 2);
  CHECK(zb::stage3<S, T>::stage == 3);
}
