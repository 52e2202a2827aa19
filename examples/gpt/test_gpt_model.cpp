// Tests for examples/gpt/gpt_model.hpp: a finite-difference check of the hand-written
// backward pass in double, bit-for-bit agreement between the stage-granular and the
// whole-model paths, linearity in the loss seed, initial loss and a short training run,
// and argument validation.
//
// Build (from the repository root):
//   g++ -std=c++20 -O2 -Wall -Wextra -Wpedantic -Werror -fopenmp
//       $(pkg-config --cflags openblas) examples/gpt/test_gpt_model.cpp
//       $(pkg-config --libs openblas) -o /tmp/test_gpt_model        (one line)
//   OMP_NUM_THREADS=2 /tmp/test_gpt_model
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "gpt_model.hpp"

#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace {

using store_f = std::vector<std::vector<float>>;

/// Parameters with every tensor random and non-trivial (LayerNorm weights near 1 but not
/// 1, biases non-zero), so that no gradient term can hide behind a 0 or a 1.
template <class F>
std::vector<std::vector<F>> random_params(const gpt::config& cfg, std::uint64_t seed) {
    gpt::rng g(seed);
    std::vector<std::vector<F>> out;
    for (const auto& t : gpt::tensors(cfg)) {
        std::vector<F> v(t.numel());
        const bool ln = t.name.find("ln_") != std::string::npos;
        const bool weight = t.name.size() > 7 && t.name.ends_with(".weight");
        for (auto& x : v) {
            const double z = g.normal();
            if (ln && weight) {
                x = F(1.0 + 0.2 * z);
            } else if (t.shape.size() == 1) {
                x = F(0.1 * z);
            } else if (t.name.rfind("wte", 0) == 0 || t.name.rfind("wpe", 0) == 0) {
                x = F(0.5 * z);
            } else {
                x = F(0.3 * z);
            }
        }
        out.push_back(std::move(v));
    }
    return out;
}

template <class F>
std::vector<std::vector<F>> zeros_like(const gpt::config& cfg, F fill = F(0)) {
    std::vector<std::vector<F>> out;
    for (const auto& t : gpt::tensors(cfg)) out.emplace_back(t.numel(), fill);
    return out;
}

/// The whole-model path: forward then backward (dloss) into a fresh gradient store.
template <class F>
F full_step(const gpt::config& cfg, int B, int T, const std::vector<std::vector<F>>& params,
            std::vector<std::vector<F>>& grad, const std::vector<int>& tok,
            const std::vector<int>& tgt, F dloss) {
    gpt::activations<F> acts(cfg, B, T);
    const auto w = gpt::weights_from(cfg, gpt::const_pointers(params));
    const auto g = gpt::grads_from(cfg, gpt::pointers(grad));
    std::vector<F> scratch(std::size_t(cfg.vocab) * std::size_t(cfg.n_embd));
    const F loss = gpt::forward(acts, w, tok.data(), tgt.data());
    gpt::backward(acts, w, g, tok.data(), tgt.data(), dloss, scratch.data());
    return loss;
}

template <class F>
F loss_only(gpt::activations<F>& acts, const gpt::config& cfg,
            const std::vector<std::vector<F>>& params, const std::vector<int>& tok,
            const std::vector<int>& tgt) {
    const auto w = gpt::weights_from(cfg, gpt::const_pointers(params));
    return gpt::forward(acts, w, tok.data(), tgt.data());
}

bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<int> random_tokens(gpt::rng& g, std::size_t n, int vocab) {
    std::vector<int> t(n);
    for (auto& x : t) x = int(g.below(std::uint64_t(vocab)));
    return t;
}

}  // namespace

TEST_CASE("tensor catalogue: names, shapes, units, decay, GPT-2 small parameter count") {
    const gpt::config cfg{};
    const auto ts = gpt::tensors(cfg);
    REQUIRE(ts.size() == 2 + 12 * 4 + 2);
    CHECK(ts[0].name == "wte.weight");
    CHECK(ts[0].shape == std::vector<std::size_t>{256, 128});
    CHECK(ts[0].unit == "embed");
    CHECK(ts[0].decay);
    CHECK(ts[1].name == "wpe.weight");
    CHECK(ts[1].shape == std::vector<std::size_t>{64, 128});
    CHECK(ts[gpt::block_first_tensor(1)].name == "h.1.ln_1.weight");
    CHECK(ts[gpt::block_first_tensor(1) + 2].name == "h.1.attn.c_attn.weight");
    CHECK(ts[gpt::block_first_tensor(1) + 2].shape == std::vector<std::size_t>{128, 384});
    CHECK(ts[gpt::block_first_tensor(1) + 2].decay);
    CHECK_FALSE(ts[gpt::block_first_tensor(1) + 3].decay);
    CHECK(ts[gpt::block_first_tensor(1) + 10].name == "h.1.mlp.c_proj.weight");
    CHECK(ts[gpt::block_first_tensor(1) + 10].shape == std::vector<std::size_t>{512, 128});
    CHECK(ts[gpt::block_first_tensor(3) + 11].unit == "h.3");
    CHECK(ts[gpt::head_first_tensor(cfg)].name == "ln_f.weight");
    CHECK(ts.back().name == "ln_f.bias");
    CHECK(ts.back().unit == "head");
    CHECK_FALSE(ts.back().decay);
    // GPT-2 small (124M): the well-known 124,439,808 parameters.
    CHECK(gpt::param_count(gpt::config{50257, 1024, 12, 12, 768}) == 124439808u);
}

TEST_CASE("finite-difference gradient check in double, every element of every tensor") {
    // Sizes that divide unevenly: 3 heads of 4, T = 5 < max_seq = 7, vocab 11.
    const gpt::config cfg{11, 7, 2, 3, 12};
    const int B = 2, T = 5;
    // Tokens 0, 7, 8 and 10 never appear in the input (their wte rows get only the head's
    // gradient); 1, 3 and 5 appear twice (the embedding scatter must add both).
    const std::vector<int> tok{3, 1, 4, 1, 5, 9, 2, 6, 5, 3};
    const std::vector<int> tgt{1, 4, 1, 5, 9, 2, 6, 5, 3, 5};
    auto params = random_params<double>(cfg, 1234);
    auto grad = zeros_like<double>(cfg, std::numeric_limits<double>::quiet_NaN());
    const double loss0 = full_step(cfg, B, T, params, grad, tok, tgt, 1.0);
    CHECK(std::isfinite(loss0));

    const auto specs = gpt::tensors(cfg);
    gpt::activations<double> acts(cfg, B, T);
    const double h = 1e-5;
    // Central differences in double with h = 1e-5: the truncation error is O(h^2) and the
    // rounding error about eps * loss / h ~ 5e-11 in absolute terms. So an element passes
    // when |analytic - numeric| <= 1e-6 * max(|analytic|, |numeric|) + 1e-9 (the 1e-9
    // floor is ~20x the rounding noise: it matters only for gradients that are ~0, e.g.
    // the attention key bias, whose exact gradient is 0 because softmax ignores a shift
    // shared by a whole row). We expect relative errors ~1e-8..1e-7 on gradients >= 1e-3.
    const double rel_bound = 1e-6, abs_floor = 1e-9;
    double worst_rel = 0.0, worst_abs = 0.0;
    std::size_t checked = 0, failures = 0;  // only the first 5 failures are printed
    for (std::size_t ti = 0; ti < specs.size(); ++ti) {
        double tensor_rel = 0.0, tensor_abs = 0.0;
        for (std::size_t i = 0; i < params[ti].size(); ++i) {
            const double orig = params[ti][i];
            params[ti][i] = orig + h;
            const double lp = loss_only(acts, cfg, params, tok, tgt);
            params[ti][i] = orig - h;
            const double lm = loss_only(acts, cfg, params, tok, tgt);
            params[ti][i] = orig;
            const double num = (lp - lm) / (2 * h);
            const double ana = grad[ti][i];
            const double diff = std::abs(ana - num);
            const double mag = std::max(std::abs(ana), std::abs(num));
            tensor_abs = std::max(tensor_abs, diff);
            if (mag >= 1e-3) tensor_rel = std::max(tensor_rel, diff / mag);
            ++checked;
            if (!(diff <= rel_bound * mag + abs_floor) && ++failures <= 5) {
                FAIL_CHECK(specs[ti].name << "[" << i << "]: analytic " << ana << " numeric "
                                          << num << " abs err " << diff);
            }
        }
        MESSAGE(specs[ti].name << ": max rel err (|g| >= 1e-3) " << tensor_rel
                               << ", max abs err " << tensor_abs);
        worst_rel = std::max(worst_rel, tensor_rel);
        worst_abs = std::max(worst_abs, tensor_abs);
    }
    MESSAGE("checked " << checked << " elements (all of them): max rel err " << worst_rel
                       << " (on |g| >= 1e-3), max abs err " << worst_abs);
    CHECK(failures == 0);
    CHECK(worst_rel < rel_bound);

    // wpe rows t >= T are never read: their gradient is exactly zero, and so is the
    // finite difference (the loss does not change at all).
    for (std::size_t t = std::size_t(T); t < std::size_t(cfg.max_seq); ++t) {
        for (std::size_t c = 0; c < std::size_t(cfg.n_embd); ++c) {
            CHECK(grad[1][t * std::size_t(cfg.n_embd) + c] == 0.0);
        }
    }
    // wte rows of tokens absent from the input still get the head's gradient.
    double absent_row = 0.0;
    for (std::size_t c = 0; c < std::size_t(cfg.n_embd); ++c) absent_row += std::abs(grad[0][c]);
    CHECK(absent_row > 0.0);
}

TEST_CASE("stage-granular path equals whole-model backward bit for bit (float)") {
    const gpt::config cfg{37, 16, 3, 2, 32};
    const int B = 3, T = 9;
    gpt::rng r(99);
    const auto tok = random_tokens(r, std::size_t(B * T), cfg.vocab);
    const auto tgt = random_tokens(r, std::size_t(B * T), cfg.vocab);
    const auto params = random_params<float>(cfg, 7);

    auto g_full = zeros_like<float>(cfg);
    const float loss_full = full_step(cfg, B, T, params, g_full, tok, tgt, 1.0f);

    // Stage path with unit-by-unit views and gradient buffers full of garbage (NaN): every
    // backward function must overwrite, never accumulate.
    const float nan = std::numeric_limits<float>::quiet_NaN();
    auto g_stage = zeros_like<float>(cfg, nan);
    const std::size_t VC = std::size_t(cfg.vocab) * std::size_t(cfg.n_embd);
    std::vector<float> d_wte_head(VC, nan), d_wte_embed(VC, nan);
    const auto wp = gpt::const_pointers(params);
    auto gp = gpt::pointers(g_stage);
    gpt::activations<float> acts(cfg, B, T);
    gpt::embed_forward(acts, tok.data(), wp[0], wp[1]);
    for (int l = 0; l < cfg.n_layer; ++l) {
        gpt::block_forward(acts, l, gpt::block_weights_from(wp, gpt::block_first_tensor(l)));
    }
    const std::size_t hf = gpt::head_first_tensor(cfg);
    const float loss_stage = gpt::head_forward(acts, wp[hf], wp[hf + 1], wp[0], tgt.data());
    gpt::head_backward(acts, wp[hf], wp[hf + 1], wp[0], tgt.data(), 1.0f, gp[hf], gp[hf + 1],
                       d_wte_head.data());
    for (int l = cfg.n_layer - 1; l >= 0; --l) {
        gpt::block_backward(acts, l, gpt::block_weights_from(wp, gpt::block_first_tensor(l)),
                            gpt::block_grads_from(gp, gpt::block_first_tensor(l)));
    }
    gpt::embed_backward(acts, tok.data(), d_wte_embed.data(), gp[1]);
    for (std::size_t i = 0; i < VC; ++i) g_stage[0][i] = d_wte_embed[i] + d_wte_head[i];

    CHECK(std::memcmp(&loss_full, &loss_stage, sizeof(float)) == 0);
    const auto specs = gpt::tensors(cfg);
    for (std::size_t ti = 0; ti < specs.size(); ++ti) {
        INFO(specs[ti].name);
        CHECK(bit_equal(g_full[ti], g_stage[ti]));
    }

    // Run to run: a second whole-model step into NaN-filled buffers is identical.
    auto g_again = zeros_like<float>(cfg, nan);
    const float loss_again = full_step(cfg, B, T, params, g_again, tok, tgt, 1.0f);
    CHECK(std::memcmp(&loss_full, &loss_again, sizeof(float)) == 0);
    for (std::size_t ti = 0; ti < specs.size(); ++ti) CHECK(bit_equal(g_full[ti], g_again[ti]));

    // Logits-only forward: returns 0 and gives the same probabilities.
    gpt::activations<float> acts2(cfg, B, T);
    const float zero = gpt::forward(acts2, gpt::weights_from(cfg, wp), tok.data(), nullptr);
    CHECK(zero == 0.0f);
    CHECK(bit_equal(acts.probs, acts2.probs));
}

TEST_CASE("dloss scales every gradient exactly (x8 in float)") {
    const gpt::config cfg{29, 12, 2, 4, 16};
    const int B = 2, T = 12;
    gpt::rng r(5);
    const auto tok = random_tokens(r, std::size_t(B * T), cfg.vocab);
    const auto tgt = random_tokens(r, std::size_t(B * T), cfg.vocab);
    const auto params = random_params<float>(cfg, 11);
    auto g1 = zeros_like<float>(cfg), g8 = zeros_like<float>(cfg);
    full_step(cfg, B, T, params, g1, tok, tgt, 1.0f);
    full_step(cfg, B, T, params, g8, tok, tgt, 8.0f);
    std::size_t mismatches = 0, nonzero = 0, total = 0;
    for (std::size_t ti = 0; ti < g1.size(); ++ti) {
        for (std::size_t i = 0; i < g1[ti].size(); ++i) {
            ++total;
            if (g1[ti][i] != 0.0f) ++nonzero;
            if (g8[ti][i] != 8.0f * g1[ti][i]) ++mismatches;
        }
    }
    CHECK(mismatches == 0);
    CHECK(nonzero > total / 2);
}

TEST_CASE("GPT-2 initialisation: statistics, determinism, loss near ln(V)") {
    const gpt::config cfg{};
    const auto p = gpt::init_gpt2(cfg, 42);
    const auto specs = gpt::tensors(cfg);
    REQUIRE(p.size() == specs.size());
    auto stddev = [](const std::vector<float>& v) {
        double s = 0, s2 = 0;
        for (float x : v) {
            s += x;
            s2 += double(x) * x;
        }
        const double m = s / double(v.size());
        return std::sqrt(s2 / double(v.size()) - m * m);
    };
    CHECK(stddev(p[0]) == doctest::Approx(0.02).epsilon(0.03));
    const std::size_t b0 = gpt::block_first_tensor(0);
    CHECK(stddev(p[b0 + 2]) == doctest::Approx(0.02).epsilon(0.03));              // c_attn
    CHECK(stddev(p[b0 + 10]) == doctest::Approx(0.02 / std::sqrt(8.0)).epsilon(0.03));  // mlp.c_proj
    CHECK(stddev(p[b0 + 4]) == doctest::Approx(0.02 / std::sqrt(8.0)).epsilon(0.05));   // attn.c_proj
    for (float x : p[b0 + 0]) CHECK(x == 1.0f);  // ln_1.weight
    for (float x : p[b0 + 3]) CHECK(x == 0.0f);  // c_attn.bias
    CHECK(p == gpt::init_gpt2(cfg, 42));
    CHECK(p[0] != gpt::init_gpt2(cfg, 43)[0]);

    const int B = 2, T = 64;
    gpt::rng r(3);
    const auto tok = random_tokens(r, std::size_t(B * T), cfg.vocab);
    const auto tgt = random_tokens(r, std::size_t(B * T), cfg.vocab);
    gpt::activations<float> acts(cfg, B, T);
    const float loss = loss_only(acts, cfg, p, tok, tgt);
    MESSAGE("initial loss " << loss << ", ln(V) = " << std::log(256.0));
    CHECK(loss == doctest::Approx(std::log(256.0)).epsilon(0.01));
}

TEST_CASE("Adam on a repeating byte string makes the loss fall") {
    const gpt::config cfg{256, 32, 2, 2, 32};
    const int B = 4, T = 32, steps = 250;
    const std::string text = "the quick brown fox jumps over the lazy dog; ";
    auto params = gpt::init_gpt2(cfg, 2024);
    auto grad = zeros_like<float>(cfg);
    auto m = zeros_like<float>(cfg), v = zeros_like<float>(cfg);
    gpt::activations<float> acts(cfg, B, T);
    std::vector<float> scratch(std::size_t(cfg.vocab) * std::size_t(cfg.n_embd));
    std::vector<int> tok(std::size_t(B * T)), tgt(std::size_t(B * T));
    gpt::rng r(1);
    const float lr = 3e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    float first = 0, last = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int step = 1; step <= steps; ++step) {
        for (int b = 0; b < B; ++b) {
            const std::size_t off = std::size_t(r.below(text.size()));
            for (int t = 0; t <= T; ++t) {
                const int c = static_cast<unsigned char>(text[(off + std::size_t(t)) % text.size()]);
                if (t < T) tok[std::size_t(b * T + t)] = c;
                if (t > 0) tgt[std::size_t(b * T + t - 1)] = c;
            }
        }
        const auto w = gpt::weights_from(cfg, gpt::const_pointers(params));
        const auto g = gpt::grads_from(cfg, gpt::pointers(grad));
        const float loss = gpt::forward(acts, w, tok.data(), tgt.data());
        gpt::backward(acts, w, g, tok.data(), tgt.data(), 1.0f, scratch.data());
        if (step == 1) first = loss;
        last = loss;
        const float c1 = 1.0f - std::pow(b1, float(step)), c2 = 1.0f - std::pow(b2, float(step));
        for (std::size_t ti = 0; ti < params.size(); ++ti) {
            for (std::size_t i = 0; i < params[ti].size(); ++i) {
                const float gi = grad[ti][i];
                m[ti][i] = b1 * m[ti][i] + (1 - b1) * gi;
                v[ti][i] = b2 * v[ti][i] + (1 - b2) * gi * gi;
                params[ti][i] -= lr * (m[ti][i] / c1) / (std::sqrt(v[ti][i] / c2) + eps);
            }
        }
    }
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    MESSAGE("Adam: loss " << first << " -> " << last << " in " << steps << " steps, " << secs
                          << " s");
    CHECK(first == doctest::Approx(std::log(256.0)).epsilon(0.02));
    CHECK(last < 0.5f);
}

TEST_CASE("validation errors") {
    gpt::config bad{};
    bad.n_embd = 10;
    bad.n_head = 3;
    CHECK_THROWS_AS(bad.validate(), std::invalid_argument);
    CHECK_THROWS_WITH(bad.validate(), doctest::Contains("divisible by n_head"));
    gpt::config zero{};
    zero.vocab = 0;
    CHECK_THROWS_WITH_AS(zero.validate(), doctest::Contains("vocab must be positive"),
                         std::invalid_argument);
    CHECK_THROWS_AS(gpt::tensors(bad), std::invalid_argument);

    const gpt::config cfg{11, 7, 1, 1, 4};
    CHECK_NOTHROW(gpt::activations<float>(cfg, 1, 7));
    CHECK_THROWS_WITH_AS(gpt::activations<float>(cfg, 1, 8), doctest::Contains("max_seq"),
                         std::invalid_argument);
    CHECK_THROWS_AS(gpt::activations<float>(cfg, 0, 4), std::invalid_argument);
    CHECK_THROWS_AS(gpt::activations<float>(cfg, 1, 0), std::invalid_argument);

    const auto params = random_params<float>(cfg, 1);
    gpt::activations<float> acts(cfg, 1, 3);
    const std::vector<int> tok{1, 11, 2}, ok{1, 2, 3};
    CHECK_THROWS_AS(loss_only(acts, cfg, params, tok, ok), std::out_of_range);
    CHECK_THROWS_AS(loss_only(acts, cfg, params, ok, tok), std::out_of_range);
    CHECK_THROWS_AS(gpt::weights_from(cfg, std::vector<const float*>(3, nullptr)),
                    std::invalid_argument);
}
