/**
 * @file gpt_model.hpp
 * @brief A GPT-2 architecture decoder with its forward and backward passes written out
 * by hand on the host. Self-contained: it does not depend on zeroblocks.
 *
 * Architecture (GPT-2):
 *   x = wte[token] + wpe[position]
 *   for each of the L blocks:
 *     x += c_proj(causal_self_attention(c_attn(ln_1(x))))
 *     x += mlp.c_proj(gelu_tanh(mlp.c_fc(ln_2(x))))
 *   logits = ln_f(x) @ wte^T            (the LM head is tied to the token embedding)
 *   loss   = mean cross-entropy over the B*T positions
 *
 * Linear layers store their weight the way GPT-2's Conv1D does: shape (in, out),
 * row-major, y = x @ W + b. LayerNorm uses eps = 1e-5, GELU uses the tanh
 * approximation and attention scores are scaled by 1/sqrt(head_size).
 *
 * Every kernel is a template on the scalar type F (float for training, double for the
 * finite-difference gradient check). Matrix products go through CBLAS (sgemm/dgemm),
 * everything else is plain loops parallelised with OpenMP.
 *
 * Interface in three layers:
 *  - a parameter catalogue: `tensors(cfg)` lists GPT-2's tensor names, shapes, the
 *    "unit" each belongs to ("embed", "h.0" ... "h.{L-1}", "head") and whether weight
 *    decay applies; `init_gpt2` makes GPT-2's initial values in the same order;
 *  - pointer views (`weights`, `grads`, `block_weights`, `block_grads`) so a trainer can
 *    point the model at memory it owns (for example gathered ZeRO shards), one pointer
 *    per tensor and no copies;
 *  - stage-granular passes (`embed_forward`, `block_forward`, `head_forward`,
 *    `head_backward`, `block_backward`, `embed_backward`) so that a trainer only has to
 *    hold one unit's parameters at a time, plus whole-model `forward` / `backward`.
 *
 * Gradient rule: every backward function OVERWRITES its gradient outputs; nothing ever
 * accumulates into a caller's gradient buffer. The tied token embedding therefore gets
 * two separate parts, one from the LM head (`head_backward`, d_wte_head) and one from
 * the embedding lookup (`embed_backward`, d_wte_embed); the full gradient of wte is
 * their sum, which the caller forms (the whole-model `backward` does it for you).
 *
 * Determinism: for a fixed OpenMP (and OpenBLAS) thread count the results are bit for
 * bit the same from run to run. Every output element is computed by exactly one thread
 * in a fixed order: there are no atomics and no reductions whose order depends on the
 * thread schedule. Column sums (bias and LayerNorm gradients, the embedding scatter)
 * are parallel over channels with each channel summing rows in order. Inner loops use
 * `#pragma omp simd` (reductions included): the vector order is fixed at compile time, so
 * a given binary always sums in the same order.
 *
 * Threads: the OpenMP loops use OMP_NUM_THREADS; Debian's OpenBLAS (pthreads build) has
 * its own pool, sized by OPENBLAS_NUM_THREADS (falling back to OMP_NUM_THREADS). Results
 * are fixed for fixed thread counts but may differ in the last bits between different
 * OpenBLAS thread counts. On a small or busy machine, OpenMP workers spinning at the end
 * of a loop can starve OpenBLAS's threads (and the other way round); if two or more
 * threads run slowly, set OMP_WAIT_POLICY=passive or OPENBLAS_NUM_THREADS=1. Nothing here
 * calls BLAS from inside an OpenMP parallel region.
 */
#pragma once

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace gpt {

// ---------------------------------------------------------------------------------------
// Configuration and parameter catalogue
// ---------------------------------------------------------------------------------------

/// Model sizes. The defaults are a small byte-level model (vocab 256).
struct config {
    int vocab = 256;    ///< V: vocabulary size
    int max_seq = 64;   ///< maxT: number of learned positions (longest sequence)
    int n_layer = 4;    ///< L: number of transformer blocks
    int n_head = 4;     ///< NH: attention heads per block
    int n_embd = 128;   ///< C: width of the residual stream

    /// Throws std::invalid_argument with a readable message if a size is not positive or
    /// n_embd is not a multiple of n_head.
    void validate() const {
        auto positive = [](int v, const char* name) {
            if (v <= 0) {
                throw std::invalid_argument(std::string("gpt::config: ") + name +
                                            " must be positive, got " + std::to_string(v));
            }
        };
        positive(vocab, "vocab");
        positive(max_seq, "max_seq");
        positive(n_layer, "n_layer");
        positive(n_head, "n_head");
        positive(n_embd, "n_embd");
        if (n_embd % n_head != 0) {
            throw std::invalid_argument("gpt::config: n_embd (" + std::to_string(n_embd) +
                                        ") must be divisible by n_head (" +
                                        std::to_string(n_head) + ")");
        }
    }
};

/// One parameter tensor: GPT-2's name, its shape, the unit it belongs to ("embed",
/// "h.{i}" or "head") and whether weight decay should apply to it.
struct tensor_spec {
    std::string name;
    std::vector<std::size_t> shape;
    std::string unit;
    bool decay = false;

    std::size_t numel() const {
        std::size_t n = 1;
        for (std::size_t d : shape) n *= d;
        return n;
    }
};

/// Number of tensors in one transformer block (and so in one "h.{i}" unit).
inline constexpr std::size_t tensors_per_block = 12;

/// Index in `tensors()` order of the first tensor of block `layer` (its ln_1.weight).
inline constexpr std::size_t block_first_tensor(std::size_t layer) {
    return 2 + tensors_per_block * layer;
}

/// Index in `tensors()` order of ln_f.weight (the first tensor of unit "head").
inline std::size_t head_first_tensor(const config& cfg) {
    return block_first_tensor(static_cast<std::size_t>(cfg.n_layer));
}

/// The parameter tensors in their canonical order: wte, wpe, then for each block ln_1
/// (weight, bias), attn.c_attn (weight, bias), attn.c_proj (weight, bias), ln_2 (weight,
/// bias), mlp.c_fc (weight, bias), mlp.c_proj (weight, bias), and finally ln_f (weight,
/// bias). Names and shapes match Hugging Face's gpt2 model.safetensors. Decay is true for
/// the 2-D weights (wte and wpe included) and false for biases and LayerNorm weights.
inline std::vector<tensor_spec> tensors(const config& cfg) {
    cfg.validate();
    const std::size_t V = static_cast<std::size_t>(cfg.vocab);
    const std::size_t T = static_cast<std::size_t>(cfg.max_seq);
    const std::size_t C = static_cast<std::size_t>(cfg.n_embd);
    std::vector<tensor_spec> out;
    out.push_back({"wte.weight", {V, C}, "embed", true});
    out.push_back({"wpe.weight", {T, C}, "embed", true});
    for (int i = 0; i < cfg.n_layer; ++i) {
        const std::string p = "h." + std::to_string(i);
        out.push_back({p + ".ln_1.weight", {C}, p, false});
        out.push_back({p + ".ln_1.bias", {C}, p, false});
        out.push_back({p + ".attn.c_attn.weight", {C, 3 * C}, p, true});
        out.push_back({p + ".attn.c_attn.bias", {3 * C}, p, false});
        out.push_back({p + ".attn.c_proj.weight", {C, C}, p, true});
        out.push_back({p + ".attn.c_proj.bias", {C}, p, false});
        out.push_back({p + ".ln_2.weight", {C}, p, false});
        out.push_back({p + ".ln_2.bias", {C}, p, false});
        out.push_back({p + ".mlp.c_fc.weight", {C, 4 * C}, p, true});
        out.push_back({p + ".mlp.c_fc.bias", {4 * C}, p, false});
        out.push_back({p + ".mlp.c_proj.weight", {4 * C, C}, p, true});
        out.push_back({p + ".mlp.c_proj.bias", {C}, p, false});
    }
    out.push_back({"ln_f.weight", {C}, "head", false});
    out.push_back({"ln_f.bias", {C}, "head", false});
    return out;
}

/// Total number of parameters (wte counted once: the LM head shares it).
inline std::size_t param_count(const config& cfg) {
    std::size_t n = 0;
    for (const auto& t : tensors(cfg)) n += t.numel();
    return n;
}

// ---------------------------------------------------------------------------------------
// Pointer views
// ---------------------------------------------------------------------------------------

/// Read-only pointers to one block's 12 tensors, in `tensors()` order.
template <class F>
struct block_weights {
    const F *ln1_w, *ln1_b, *attn_w, *attn_b, *attn_proj_w, *attn_proj_b, *ln2_w, *ln2_b,
        *fc_w, *fc_b, *fc_proj_w, *fc_proj_b;
};

/// Writable pointers to one block's 12 gradient tensors, in `tensors()` order.
template <class F>
struct block_grads {
    F *ln1_w, *ln1_b, *attn_w, *attn_b, *attn_proj_w, *attn_proj_b, *ln2_w, *ln2_b, *fc_w,
        *fc_b, *fc_proj_w, *fc_proj_b;
};

/// Read-only pointers to the whole model's parameters.
template <class F>
struct weights {
    const F* wte;
    const F* wpe;
    std::vector<block_weights<F>> blocks;
    const F* lnf_w;
    const F* lnf_b;
};

/// Writable pointers to the whole model's gradients.
template <class F>
struct grads {
    F* wte;
    F* wpe;
    std::vector<block_grads<F>> blocks;
    F* lnf_w;
    F* lnf_b;
};

/// Builds a block view from 12 consecutive pointers p[0..11] (one unit "h.{i}", in
/// `tensors()` order). Works for `const F*` (weights) and `F*` (gradients) alike.
template <class P>
auto block_view_from(const P* p) {
    using F = std::remove_const_t<std::remove_pointer_t<P>>;
    if constexpr (std::is_const_v<std::remove_pointer_t<P>>) {
        return block_weights<F>{p[0], p[1], p[2], p[3], p[4],  p[5],
                                 p[6], p[7], p[8], p[9], p[10], p[11]};
    } else {
        return block_grads<F>{p[0], p[1], p[2], p[3], p[4],  p[5],
                              p[6], p[7], p[8], p[9], p[10], p[11]};
    }
}

/// Block weights from a vector of per-tensor pointers: uses ptrs[first .. first+11].
template <class F>
block_weights<F> block_weights_from(const std::vector<const F*>& ptrs, std::size_t first) {
    if (first + tensors_per_block > ptrs.size()) {
        throw std::out_of_range("gpt::block_weights_from: not enough pointers");
    }
    return block_view_from(ptrs.data() + first);
}

/// Block gradients from a vector of per-tensor pointers: uses ptrs[first .. first+11].
template <class F>
block_grads<F> block_grads_from(const std::vector<F*>& ptrs, std::size_t first) {
    if (first + tensors_per_block > ptrs.size()) {
        throw std::out_of_range("gpt::block_grads_from: not enough pointers");
    }
    return block_view_from(ptrs.data() + first);
}

/// Whole-model weights from one pointer per tensor in `tensors()` order.
template <class F>
weights<F> weights_from(const config& cfg, const std::vector<const F*>& ptrs) {
    const std::size_t n = head_first_tensor(cfg) + 2;
    if (ptrs.size() != n) {
        throw std::invalid_argument("gpt::weights_from: expected " + std::to_string(n) +
                                    " pointers, got " + std::to_string(ptrs.size()));
    }
    weights<F> w{ptrs[0], ptrs[1], {}, ptrs[n - 2], ptrs[n - 1]};
    for (int l = 0; l < cfg.n_layer; ++l) {
        w.blocks.push_back(block_weights_from(ptrs, block_first_tensor(std::size_t(l))));
    }
    return w;
}

/// Whole-model gradients from one pointer per tensor in `tensors()` order.
template <class F>
grads<F> grads_from(const config& cfg, const std::vector<F*>& ptrs) {
    const std::size_t n = head_first_tensor(cfg) + 2;
    if (ptrs.size() != n) {
        throw std::invalid_argument("gpt::grads_from: expected " + std::to_string(n) +
                                    " pointers, got " + std::to_string(ptrs.size()));
    }
    grads<F> g{ptrs[0], ptrs[1], {}, ptrs[n - 2], ptrs[n - 1]};
    for (int l = 0; l < cfg.n_layer; ++l) {
        g.blocks.push_back(block_grads_from(ptrs, block_first_tensor(std::size_t(l))));
    }
    return g;
}

/// Convenience: one read-only pointer per tensor of a vector-of-vectors parameter store.
template <class F>
std::vector<const F*> const_pointers(const std::vector<std::vector<F>>& store) {
    std::vector<const F*> p;
    for (const auto& v : store) p.push_back(v.data());
    return p;
}

/// Convenience: one writable pointer per tensor of a vector-of-vectors gradient store.
template <class F>
std::vector<F*> pointers(std::vector<std::vector<F>>& store) {
    std::vector<F*> p;
    for (auto& v : store) p.push_back(v.data());
    return p;
}

// ---------------------------------------------------------------------------------------
// Deterministic random numbers and GPT-2 initialisation
// ---------------------------------------------------------------------------------------

/// xoshiro256** seeded through splitmix64, with Box-Muller normals. Written out here so
/// that initial values do not depend on the standard library's distributions.
class rng {
public:
    explicit rng(std::uint64_t seed) {
        std::uint64_t x = seed;
        for (auto& s : s_) s = splitmix64(x);
    }

    std::uint64_t next_u64() {
        const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
        const std::uint64_t t = s_[1] << 17;
        s_[2] ^= s_[0];
        s_[3] ^= s_[1];
        s_[1] ^= s_[2];
        s_[0] ^= s_[3];
        s_[2] ^= t;
        s_[3] = rotl(s_[3], 45);
        return result;
    }

    /// Uniform in (0, 1]: never 0, so it is safe under log().
    double uniform_open0() { return double((next_u64() >> 11) + 1) * 0x1.0p-53; }

    /// Uniform in [0, 1).
    double uniform() { return double(next_u64() >> 11) * 0x1.0p-53; }

    /// Uniform integer in [0, n) (n > 0); the tiny modulo bias is irrelevant here.
    std::uint64_t below(std::uint64_t n) { return next_u64() % n; }

    /// Standard normal via Box-Muller; the second value of each pair is kept for the
    /// next call.
    double normal() {
        if (has_spare_) {
            has_spare_ = false;
            return spare_;
        }
        const double u1 = uniform_open0();
        const double u2 = uniform();
        const double r = std::sqrt(-2.0 * std::log(u1));
        const double a = 6.283185307179586476925 * u2;
        spare_ = r * std::sin(a);
        has_spare_ = true;
        return r * std::cos(a);
    }

private:
    static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
    static std::uint64_t splitmix64(std::uint64_t& x) {
        std::uint64_t z = (x += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    std::uint64_t s_[4]{};
    double spare_ = 0.0;
    bool has_spare_ = false;
};

/// GPT-2's initialisation, one vector per tensor in `tensors()` order: every 2-D weight
/// (wte, wpe, c_attn, c_fc) ~ normal(0, 0.02); the two residual projections
/// (attn.c_proj.weight, mlp.c_proj.weight) ~ normal(0, 0.02/sqrt(2L)); biases 0;
/// LayerNorm weights 1 and biases 0. One generator stream is consumed in tensor order, so
/// the result depends only on (cfg, seed).
inline std::vector<std::vector<float>> init_gpt2(const config& cfg, std::uint64_t seed) {
    const auto specs = tensors(cfg);
    rng g(seed);
    const double std_w = 0.02;
    const double std_proj = 0.02 / std::sqrt(2.0 * cfg.n_layer);
    auto ends_with = [](const std::string& s, const std::string& suffix) {
        return s.size() >= suffix.size() &&
               s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    std::vector<std::vector<float>> out;
    out.reserve(specs.size());
    for (const auto& t : specs) {
        std::vector<float> v(t.numel(), 0.0f);
        const bool is_ln = t.name.find(".ln_") != std::string::npos ||
                           t.name.rfind("ln_f.", 0) == 0;
        if (is_ln) {
            if (ends_with(t.name, ".weight")) std::fill(v.begin(), v.end(), 1.0f);
        } else if (t.shape.size() == 2) {
            const bool proj = ends_with(t.name, "c_proj.weight");
            const double s = proj ? std_proj : std_w;
            for (auto& x : v) x = static_cast<float>(s * g.normal());
        }
        out.push_back(std::move(v));
    }
    return out;
}

// ---------------------------------------------------------------------------------------
// Kernels (internal)
// ---------------------------------------------------------------------------------------

namespace detail {

/// Row-major GEMM: C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C.
inline void gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
inline void gemm(bool ta, bool tb, int M, int N, int K, double alpha, const double* A,
                 int lda, const double* B, int ldb, double beta, double* C, int ldc) {
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/// Channels per chunk for column-wise reductions (parallel over chunks, rows in order).
inline constexpr std::size_t col_chunk = 32;

/// Linear layer forward: out[N,OC] = inp[N,IC] @ W[IC,OC] + b[OC]. If `add_to` is true
/// the result is added to what `out` already holds (used for the residual connections:
/// out must then already contain the residual input).
template <class F>
void linear_forward(F* out, const F* inp, const F* W, const F* b, std::size_t N,
                    std::size_t IC, std::size_t OC, bool add_to) {
#pragma omp parallel for schedule(static)
    for (std::size_t n = 0; n < N; ++n) {
        F* o = out + n * OC;
        if (add_to) {
            for (std::size_t j = 0; j < OC; ++j) o[j] += b[j];
        } else {
            for (std::size_t j = 0; j < OC; ++j) o[j] = b[j];
        }
    }
    gemm(false, false, int(N), int(OC), int(IC), F(1), inp, int(IC), W, int(OC), F(1), out,
         int(OC));
}

/// Column sums: db[j] = sum over rows n (in order) of d[n, j]. Overwrites db.
template <class F>
void col_sum(F* db, const F* d, std::size_t N, std::size_t M) {
    const std::size_t nchunks = (M + col_chunk - 1) / col_chunk;
#pragma omp parallel for schedule(static)
    for (std::size_t ch = 0; ch < nchunks; ++ch) {
        const std::size_t j0 = ch * col_chunk, j1 = std::min(M, j0 + col_chunk);
        for (std::size_t j = j0; j < j1; ++j) db[j] = F(0);
        for (std::size_t n = 0; n < N; ++n) {
            const F* row = d + n * M;
#pragma omp simd
            for (std::size_t j = j0; j < j1; ++j) db[j] += row[j];
        }
    }
}

/// Linear layer backward. Given dout[N,OC], OVERWRITES dW[IC,OC] = inp^T dout,
/// db[OC] = column sums of dout and dinp[N,IC] = dout W^T.
template <class F>
void linear_backward(F* dinp, F* dW, F* db, const F* dout, const F* inp, const F* W,
                     std::size_t N, std::size_t IC, std::size_t OC) {
    gemm(false, true, int(N), int(IC), int(OC), F(1), dout, int(OC), W, int(OC), F(0), dinp,
         int(IC));
    gemm(true, false, int(IC), int(OC), int(N), F(1), inp, int(IC), dout, int(OC), F(0), dW,
         int(OC));
    col_sum(db, dout, N, OC);
}

/// LayerNorm over the last dimension: out = (x - mean) * rstd * w + b, also storing the
/// per-row mean and rstd = 1/sqrt(var + 1e-5) (biased variance) for the backward pass.
template <class F>
void layernorm_forward(F* out, F* mean, F* rstd, const F* inp, const F* w, const F* b,
                       std::size_t N, std::size_t C) {
    const F eps = F(1e-5);
#pragma omp parallel for schedule(static)
    for (std::size_t n = 0; n < N; ++n) {
        const F* x = inp + n * C;
        F m = F(0);
#pragma omp simd reduction(+ : m)
        for (std::size_t c = 0; c < C; ++c) m += x[c];
        m /= F(C);
        F v = F(0);
#pragma omp simd reduction(+ : v)
        for (std::size_t c = 0; c < C; ++c) {
            const F d = x[c] - m;
            v += d * d;
        }
        v /= F(C);
        const F r = F(1) / std::sqrt(v + eps);
        F* o = out + n * C;
#pragma omp simd
        for (std::size_t c = 0; c < C; ++c) o[c] = (x[c] - m) * r * w[c] + b[c];
        mean[n] = m;
        rstd[n] = r;
    }
}

/// LayerNorm backward. OVERWRITES dw and db. The input gradient is ADDED to dinp when
/// `accumulate_dinp` is true (the residual stream, which already carries the gradient of
/// the skip path) and written over it otherwise.
template <class F>
void layernorm_backward(F* dinp, F* dw, F* db, const F* dout, const F* inp, const F* w,
                        const F* mean, const F* rstd, std::size_t N, std::size_t C,
                        bool accumulate_dinp) {
#pragma omp parallel for schedule(static)
    for (std::size_t n = 0; n < N; ++n) {
        const F* x = inp + n * C;
        const F* dy = dout + n * C;
        const F m = mean[n], r = rstd[n];
        F s1 = F(0), s2 = F(0);  // sum of (dy*w), sum of (dy*w*xhat)
#pragma omp simd reduction(+ : s1, s2)
        for (std::size_t c = 0; c < C; ++c) {
            const F g = dy[c] * w[c];
            s1 += g;
            s2 += g * (x[c] - m) * r;
        }
        s1 /= F(C);
        s2 /= F(C);
        F* dx = dinp + n * C;
        for (std::size_t c = 0; c < C; ++c) {
            const F xhat = (x[c] - m) * r;
            const F v = r * (dy[c] * w[c] - s1 - xhat * s2);
            if (accumulate_dinp) {
                dx[c] += v;
            } else {
                dx[c] = v;
            }
        }
    }
    const std::size_t nchunks = (C + col_chunk - 1) / col_chunk;
#pragma omp parallel for schedule(static)
    for (std::size_t ch = 0; ch < nchunks; ++ch) {
        const std::size_t c0 = ch * col_chunk, c1 = std::min(C, c0 + col_chunk);
        for (std::size_t c = c0; c < c1; ++c) {
            dw[c] = F(0);
            db[c] = F(0);
        }
        for (std::size_t n = 0; n < N; ++n) {
            const F* x = inp + n * C;
            const F* dy = dout + n * C;
            const F m = mean[n], r = rstd[n];
#pragma omp simd
            for (std::size_t c = c0; c < c1; ++c) {
                dw[c] += dy[c] * (x[c] - m) * r;
                db[c] += dy[c];
            }
        }
    }
}

template <class F>
constexpr F gelu_k0() {
    return F(0.79788456080286535587989211986876L);  // sqrt(2/pi)
}
template <class F>
constexpr F gelu_k1() {
    return F(0.044715L);
}

/// GELU, tanh approximation: 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3).
/// Computed as x * sigmoid(2u), which is the same function (0.5 (1 + tanh(u)) ==
/// 1 / (1 + exp(-2u))) and needs one exp instead of a slower tanh. For very negative u,
/// exp overflows to +inf and the sigmoid is exactly 0, which is the right limit.
template <class F>
void gelu_forward(F* out, const F* inp, std::size_t n) {
#pragma omp parallel for schedule(static)
    for (std::size_t i = 0; i < n; ++i) {
        const F x = inp[i];
        const F u = gelu_k0<F>() * (x + gelu_k1<F>() * x * x * x);
        out[i] = x / (F(1) + std::exp(F(-2) * u));
    }
}

/// GELU backward: OVERWRITES dinp[i] = dout[i] * gelu'(inp[i]) (dinp may alias dout).
/// With s = sigmoid(2u): gelu = x s, gelu' = s + 2 x s (1 - s) du/dx, which equals the
/// tanh form 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx.
template <class F>
void gelu_backward(F* dinp, const F* inp, const F* dout, std::size_t n) {
#pragma omp parallel for schedule(static)
    for (std::size_t i = 0; i < n; ++i) {
        const F x = inp[i];
        const F u = gelu_k0<F>() * (x + gelu_k1<F>() * x * x * x);
        const F sg = F(1) / (F(1) + std::exp(F(-2) * u));
        const F du = gelu_k0<F>() * (F(1) + F(3) * gelu_k1<F>() * x * x);
        const F g = sg + F(2) * x * sg * (F(1) - sg) * du;
        dinp[i] = dout[i] * g;
    }
}

/// Causal multi-head attention forward. qkv is [B,T,3C] (q | k | v, each split into NH
/// heads of size hs = C/NH); writes the probabilities att [B,NH,T,T] (zero above the
/// diagonal) and the attention output out [B,T,C]. Parallel over (b, head, t).
template <class F>
void attention_forward(F* out, F* att, const F* qkv, std::size_t B, std::size_t T,
                       std::size_t C, std::size_t NH) {
    const std::size_t hs = C / NH, C3 = 3 * C;
    const F scale = F(1) / std::sqrt(F(hs));
    const std::size_t total = B * NH * T;
#pragma omp parallel for schedule(static)
    for (std::size_t idx = 0; idx < total; ++idx) {
        const std::size_t t = idx % T, h = (idx / T) % NH, b = idx / (T * NH);
        const F* q = qkv + (b * T + t) * C3 + h * hs;
        F* row = att + idx * T;  // idx == (b*NH + h)*T + t
        F mx = -std::numeric_limits<F>::infinity();
        for (std::size_t t2 = 0; t2 <= t; ++t2) {
            const F* k = qkv + (b * T + t2) * C3 + C + h * hs;
            F s = F(0);
#pragma omp simd reduction(+ : s)
            for (std::size_t i = 0; i < hs; ++i) s += q[i] * k[i];
            s *= scale;
            row[t2] = s;
            mx = std::max(mx, s);
        }
        F sum = F(0);
        for (std::size_t t2 = 0; t2 <= t; ++t2) {
            row[t2] = std::exp(row[t2] - mx);
            sum += row[t2];
        }
        const F inv = F(1) / sum;
        for (std::size_t t2 = 0; t2 <= t; ++t2) row[t2] *= inv;
        for (std::size_t t2 = t + 1; t2 < T; ++t2) row[t2] = F(0);
        F* o = out + (b * T + t) * C + h * hs;
        for (std::size_t i = 0; i < hs; ++i) o[i] = F(0);
        for (std::size_t t2 = 0; t2 <= t; ++t2) {
            const F* v = qkv + (b * T + t2) * C3 + 2 * C + h * hs;
            const F p = row[t2];
#pragma omp simd
            for (std::size_t i = 0; i < hs; ++i) o[i] += p * v[i];
        }
    }
}

/// Causal attention backward. OVERWRITES dqkv [B,T,3C] from dout [B,T,C], using the
/// saved probabilities att and qkv. dpre [B,NH,T,T] is scratch (gradient of the scaled
/// scores). Two passes keep every output element with a single writer: pass 1 is parallel
/// over query rows (b, h, t) and writes dpre's row and dq[t]; pass 2 is parallel over key
/// rows (b, h, t2) and writes dk[t2] and dv[t2], summing over t >= t2 in order.
template <class F>
void attention_backward(F* dqkv, F* dpre, const F* dout, const F* att, const F* qkv,
                        std::size_t B, std::size_t T, std::size_t C, std::size_t NH) {
    const std::size_t hs = C / NH, C3 = 3 * C;
    const F scale = F(1) / std::sqrt(F(hs));
    const std::size_t total = B * NH * T;
#pragma omp parallel for schedule(static)
    for (std::size_t idx = 0; idx < total; ++idx) {
        const std::size_t t = idx % T, h = (idx / T) % NH, b = idx / (T * NH);
        const F* P = att + idx * T;
        F* dS = dpre + idx * T;
        const F* dy = dout + (b * T + t) * C + h * hs;
        // dP[t2] = dy . v[t2]; then softmax backward dS = P * (dP - sum_j P_j dP_j).
        F dot = F(0);
        for (std::size_t t2 = 0; t2 <= t; ++t2) {
            const F* v = qkv + (b * T + t2) * C3 + 2 * C + h * hs;
            F s = F(0);
#pragma omp simd reduction(+ : s)
            for (std::size_t i = 0; i < hs; ++i) s += dy[i] * v[i];
            dS[t2] = s;
            dot += P[t2] * s;
        }
        for (std::size_t t2 = 0; t2 <= t; ++t2) dS[t2] = P[t2] * (dS[t2] - dot);
        for (std::size_t t2 = t + 1; t2 < T; ++t2) dS[t2] = F(0);
        // dq[t] = scale * sum_t2 dS[t2] k[t2]
        F* dq = dqkv + (b * T + t) * C3 + h * hs;
        for (std::size_t i = 0; i < hs; ++i) dq[i] = F(0);
        for (std::size_t t2 = 0; t2 <= t; ++t2) {
            const F* k = qkv + (b * T + t2) * C3 + C + h * hs;
            const F g = dS[t2] * scale;
#pragma omp simd
            for (std::size_t i = 0; i < hs; ++i) dq[i] += g * k[i];
        }
    }
#pragma omp parallel for schedule(static)
    for (std::size_t idx = 0; idx < total; ++idx) {
        const std::size_t t2 = idx % T, h = (idx / T) % NH, b = idx / (T * NH);
        const std::size_t bh = b * NH + h;
        F* dk = dqkv + (b * T + t2) * C3 + C + h * hs;
        F* dv = dqkv + (b * T + t2) * C3 + 2 * C + h * hs;
        for (std::size_t i = 0; i < hs; ++i) {
            dk[i] = F(0);
            dv[i] = F(0);
        }
        for (std::size_t t = t2; t < T; ++t) {
            const F gs = dpre[(bh * T + t) * T + t2] * scale;
            const F p = att[(bh * T + t) * T + t2];
            const F* q = qkv + (b * T + t) * C3 + h * hs;
            const F* dy = dout + (b * T + t) * C + h * hs;
#pragma omp simd
            for (std::size_t i = 0; i < hs; ++i) {
                dk[i] += gs * q[i];
                dv[i] += p * dy[i];
            }
        }
    }
}

inline void check_tokens(const int* tok, std::size_t n, int vocab, const char* what) {
    if (tok == nullptr) throw std::invalid_argument(std::string("gpt: null ") + what);
    for (std::size_t i = 0; i < n; ++i) {
        if (tok[i] < 0 || tok[i] >= vocab) {
            throw std::out_of_range(std::string("gpt: ") + what + "[" + std::to_string(i) +
                                    "] = " + std::to_string(tok[i]) +
                                    " is outside [0, vocab)");
        }
    }
}

}  // namespace detail

// ---------------------------------------------------------------------------------------
// Activations
// ---------------------------------------------------------------------------------------

/// Everything the forward pass saves for the backward pass, for a batch of B sequences of
/// length T (1 <= T <= max_seq), plus the backward pass's scratch buffers and the
/// gradient of the residual stream. All memory is allocated in the constructor; the
/// passes never allocate. Memory is O(L*B*T*C + L*B*NH*T^2 + B*T*V).
template <class F>
class activations {
public:
    /// Per-layer saved tensors. "inp" of layer l is `encoded` for l == 0 and
    /// layers[l-1].res_out otherwise.
    struct layer {
        std::vector<F> ln1, ln1_mean, ln1_rstd;  // ln_1 output [B,T,C], stats [B*T]
        std::vector<F> qkv;                      // c_attn output [B,T,3C]
        std::vector<F> att;                      // attention probabilities [B,NH,T,T]
        std::vector<F> atty;                     // attention output before c_proj [B,T,C]
        std::vector<F> res_attn;                 // residual after attention [B,T,C]
        std::vector<F> ln2, ln2_mean, ln2_rstd;  // ln_2 output [B,T,C], stats [B*T]
        std::vector<F> fch;                      // c_fc output (pre-GELU) [B,T,4C]
        std::vector<F> fch_gelu;                 // GELU output [B,T,4C]
        std::vector<F> res_out;                  // block output residual [B,T,C]
    };

    activations(const config& cfg, int B, int T) : cfg_(cfg), B_(B), T_(T) {
        cfg.validate();
        if (B <= 0) throw std::invalid_argument("gpt::activations: B must be positive");
        if (T <= 0 || T > cfg.max_seq) {
            throw std::invalid_argument("gpt::activations: T = " + std::to_string(T) +
                                        " must be in [1, max_seq = " +
                                        std::to_string(cfg.max_seq) + "]");
        }
        const std::size_t N = bt(), C = std::size_t(cfg.n_embd), NH = std::size_t(cfg.n_head);
        const std::size_t V = std::size_t(cfg.vocab), TT = std::size_t(T);
        encoded.assign(N * C, F(0));
        layers.resize(std::size_t(cfg.n_layer));
        for (auto& l : layers) {
            l.ln1.assign(N * C, F(0));
            l.ln1_mean.assign(N, F(0));
            l.ln1_rstd.assign(N, F(0));
            l.qkv.assign(N * 3 * C, F(0));
            l.att.assign(std::size_t(B) * NH * TT * TT, F(0));
            l.atty.assign(N * C, F(0));
            l.res_attn.assign(N * C, F(0));
            l.ln2.assign(N * C, F(0));
            l.ln2_mean.assign(N, F(0));
            l.ln2_rstd.assign(N, F(0));
            l.fch.assign(N * 4 * C, F(0));
            l.fch_gelu.assign(N * 4 * C, F(0));
            l.res_out.assign(N * C, F(0));
        }
        lnf.assign(N * C, F(0));
        lnf_mean.assign(N, F(0));
        lnf_rstd.assign(N, F(0));
        probs.assign(N * V, F(0));
        losses.assign(N, F(0));
        dresid.assign(N * C, F(0));
        dln.assign(N * C, F(0));
        datty.assign(N * C, F(0));
        dqkv.assign(N * 3 * C, F(0));
        dpre.assign(std::size_t(B) * NH * TT * TT, F(0));
        dfch.assign(N * 4 * C, F(0));
        dlogits.assign(N * V, F(0));
    }

    const config& cfg() const { return cfg_; }
    int B() const { return B_; }
    int T() const { return T_; }
    std::size_t bt() const { return std::size_t(B_) * std::size_t(T_); }

    /// Input of block `l`'s residual stream (its ln_1 input).
    const F* block_input(std::size_t l) const {
        return l == 0 ? encoded.data() : layers[l - 1].res_out.data();
    }
    /// Output of the last block (input of ln_f).
    const F* final_residual() const { return layers.back().res_out.data(); }

    // Saved by the forward pass.
    std::vector<F> encoded;                  // wte[token] + wpe[t]  [B,T,C]
    std::vector<layer> layers;               // per block
    std::vector<F> lnf, lnf_mean, lnf_rstd;  // ln_f output [B,T,C] and stats
    std::vector<F> probs;                    // softmax of the logits [B,T,V]
    std::vector<F> losses;                   // per-position cross-entropy [B*T]

    // Backward pass. `dresid` is the gradient of the residual stream: head_backward
    // writes d(loss)/d(final residual) into it, each block_backward turns the gradient of
    // its output into the gradient of its input in place, and embed_backward reads it as
    // the gradient of `encoded`. The rest is scratch.
    std::vector<F> dresid;
    std::vector<F> dln, datty, dqkv, dpre, dfch, dlogits;

private:
    config cfg_;
    int B_, T_;
};

// ---------------------------------------------------------------------------------------
// Stage-granular passes
// ---------------------------------------------------------------------------------------

/// Embedding forward: encoded[b,t,:] = wte[tokens[b*T+t], :] + wpe[t, :].
/// tokens holds B*T ids in [0, vocab). Throws std::out_of_range on a bad id.
template <class F>
void embed_forward(activations<F>& a, const int* tokens, const F* wte, const F* wpe) {
    const std::size_t T = std::size_t(a.T()), C = std::size_t(a.cfg().n_embd), N = a.bt();
    detail::check_tokens(tokens, N, a.cfg().vocab, "tokens");
    F* out = a.encoded.data();
#pragma omp parallel for schedule(static)
    for (std::size_t n = 0; n < N; ++n) {
        const F* e = wte + std::size_t(tokens[n]) * C;
        const F* p = wpe + (n % T) * C;
        F* o = out + n * C;
        for (std::size_t c = 0; c < C; ++c) o[c] = e[c] + p[c];
    }
}

/// Forward of transformer block `layer` (0-based). Reads the block's input from the
/// activations (embed_forward / the previous block_forward must have run) and saves
/// everything its backward needs.
template <class F>
void block_forward(activations<F>& a, int layer, const block_weights<F>& w) {
    const config& cfg = a.cfg();
    if (layer < 0 || layer >= cfg.n_layer) {
        throw std::out_of_range("gpt::block_forward: bad layer " + std::to_string(layer));
    }
    const std::size_t B = std::size_t(a.B()), T = std::size_t(a.T()), N = a.bt();
    const std::size_t C = std::size_t(cfg.n_embd), NH = std::size_t(cfg.n_head);
    auto& L = a.layers[std::size_t(layer)];
    const F* inp = a.block_input(std::size_t(layer));

    detail::layernorm_forward(L.ln1.data(), L.ln1_mean.data(), L.ln1_rstd.data(), inp,
                              w.ln1_w, w.ln1_b, N, C);
    detail::linear_forward(L.qkv.data(), L.ln1.data(), w.attn_w, w.attn_b, N, C, 3 * C,
                           false);
    detail::attention_forward(L.atty.data(), L.att.data(), L.qkv.data(), B, T, C, NH);
    std::copy(inp, inp + N * C, L.res_attn.begin());
    detail::linear_forward(L.res_attn.data(), L.atty.data(), w.attn_proj_w, w.attn_proj_b,
                           N, C, C, true);
    detail::layernorm_forward(L.ln2.data(), L.ln2_mean.data(), L.ln2_rstd.data(),
                              L.res_attn.data(), w.ln2_w, w.ln2_b, N, C);
    detail::linear_forward(L.fch.data(), L.ln2.data(), w.fc_w, w.fc_b, N, C, 4 * C, false);
    detail::gelu_forward(L.fch_gelu.data(), L.fch.data(), N * 4 * C);
    std::copy(L.res_attn.begin(), L.res_attn.end(), L.res_out.begin());
    detail::linear_forward(L.res_out.data(), L.fch_gelu.data(), w.fc_proj_w, w.fc_proj_b,
                           N, 4 * C, C, true);
}

/// Head forward: final LayerNorm, logits = ln_f(x) @ wte^T and their softmax (kept in
/// a.probs). With targets (B*T ids) returns the mean cross-entropy over the B*T
/// positions; with targets == nullptr only the probabilities are computed and 0 is
/// returned. The loss is summed over positions in order, so it is deterministic.
template <class F>
F head_forward(activations<F>& a, const F* lnf_w, const F* lnf_b, const F* wte,
               const int* targets) {
    const config& cfg = a.cfg();
    const std::size_t N = a.bt(), C = std::size_t(cfg.n_embd), V = std::size_t(cfg.vocab);
    if (targets != nullptr) detail::check_tokens(targets, N, cfg.vocab, "targets");
    detail::layernorm_forward(a.lnf.data(), a.lnf_mean.data(), a.lnf_rstd.data(),
                              a.final_residual(), lnf_w, lnf_b, N, C);
    F* P = a.probs.data();
    detail::gemm(false, true, int(N), int(V), int(C), F(1), a.lnf.data(), int(C), wte, int(C),
                 F(0), P, int(V));
    F* losses = a.losses.data();
#pragma omp parallel for schedule(static)
    for (std::size_t n = 0; n < N; ++n) {
        F* row = P + n * V;
        F mx = row[0];
        for (std::size_t v = 1; v < V; ++v) mx = std::max(mx, row[v]);
        // Shifted logit of the target, taken before the row is turned into probabilities.
        const F shifted = targets != nullptr ? row[std::size_t(targets[n])] - mx : F(0);
        F sum = F(0);
        for (std::size_t v = 0; v < V; ++v) {
            row[v] = std::exp(row[v] - mx);
            sum += row[v];
        }
        const F inv = F(1) / sum;
        for (std::size_t v = 0; v < V; ++v) row[v] *= inv;
        if (targets != nullptr) {
            // -log softmax from the logit itself (no log(0) for tiny probabilities):
            // -log p[y] = log(sum_v exp(logit_v - mx)) - (logit_y - mx).
            losses[n] = std::log(sum) - shifted;
        }
    }
    if (targets == nullptr) return F(0);
    F total = F(0);
    for (std::size_t n = 0; n < N; ++n) total += losses[n];
    return total / F(N);
}

/// Head backward. Requires head_forward with the same targets to have run. `dloss`
/// multiplies d(mean loss): pass 1 for the plain gradient, or a loss scale.
/// OVERWRITES d_lnf_w [C], d_lnf_b [C] and d_wte_head [V,C] (the LM head's part of the
/// tied embedding gradient only; embed_backward produces the other part). Starts the
/// residual gradient: a.dresid = d(loss)/d(output of the last block).
template <class F>
void head_backward(activations<F>& a, const F* lnf_w, const F* lnf_b, const F* wte,
                   const int* targets, F dloss, F* d_lnf_w, F* d_lnf_b, F* d_wte_head) {
    (void)lnf_b;  // the bias does not enter its own or any other gradient
    const config& cfg = a.cfg();
    const std::size_t N = a.bt(), C = std::size_t(cfg.n_embd), V = std::size_t(cfg.vocab);
    detail::check_tokens(targets, N, cfg.vocab, "targets");
    const F scale = dloss / F(N);
    const F* P = a.probs.data();
    F* dl = a.dlogits.data();
#pragma omp parallel for schedule(static)
    for (std::size_t n = 0; n < N; ++n) {
        const F* p = P + n * V;
        F* d = dl + n * V;
        const std::size_t y = std::size_t(targets[n]);
        for (std::size_t v = 0; v < V; ++v) {
            const F ind = v == y ? F(1) : F(0);
            d[v] = (p[v] - ind) * scale;
        }
    }
    // d_wte_head[V,C] = dlogits^T @ lnf ; dln[N,C] = dlogits @ wte
    detail::gemm(true, false, int(V), int(C), int(N), F(1), dl, int(V), a.lnf.data(), int(C),
                 F(0), d_wte_head, int(C));
    detail::gemm(false, false, int(N), int(C), int(V), F(1), dl, int(V), wte, int(C), F(0),
                 a.dln.data(), int(C));
    detail::layernorm_backward(a.dresid.data(), d_lnf_w, d_lnf_b, a.dln.data(),
                               a.final_residual(), lnf_w, a.lnf_mean.data(),
                               a.lnf_rstd.data(), N, C, /*accumulate_dinp=*/false);
}

/// Backward of block `layer`. On entry a.dresid holds the gradient of the block's output;
/// on return it holds the gradient of the block's input (so call the blocks from the last
/// to the first). OVERWRITES all 12 gradient tensors in `g`.
template <class F>
void block_backward(activations<F>& a, int layer, const block_weights<F>& w,
                    const block_grads<F>& g) {
    const config& cfg = a.cfg();
    if (layer < 0 || layer >= cfg.n_layer) {
        throw std::out_of_range("gpt::block_backward: bad layer " + std::to_string(layer));
    }
    const std::size_t B = std::size_t(a.B()), T = std::size_t(a.T()), N = a.bt();
    const std::size_t C = std::size_t(cfg.n_embd), NH = std::size_t(cfg.n_head);
    auto& L = a.layers[std::size_t(layer)];
    const F* inp = a.block_input(std::size_t(layer));
    F* dres = a.dresid.data();

    // MLP: res_out = res_attn + fc_proj(gelu(fc(ln2(res_attn))))
    detail::linear_backward(a.dfch.data(), g.fc_proj_w, g.fc_proj_b, dres,
                            L.fch_gelu.data(), w.fc_proj_w, N, 4 * C, C);
    detail::gelu_backward(a.dfch.data(), L.fch.data(), a.dfch.data(), N * 4 * C);
    detail::linear_backward(a.dln.data(), g.fc_w, g.fc_b, a.dfch.data(), L.ln2.data(),
                            w.fc_w, N, C, 4 * C);
    detail::layernorm_backward(dres, g.ln2_w, g.ln2_b, a.dln.data(), L.res_attn.data(),
                               w.ln2_w, L.ln2_mean.data(), L.ln2_rstd.data(), N, C, true);
    // Attention: res_attn = inp + attn_proj(attention(c_attn(ln1(inp))))
    detail::linear_backward(a.datty.data(), g.attn_proj_w, g.attn_proj_b, dres,
                            L.atty.data(), w.attn_proj_w, N, C, C);
    detail::attention_backward(a.dqkv.data(), a.dpre.data(), a.datty.data(), L.att.data(),
                               L.qkv.data(), B, T, C, NH);
    detail::linear_backward(a.dln.data(), g.attn_w, g.attn_b, a.dqkv.data(), L.ln1.data(),
                            w.attn_w, N, C, 3 * C);
    detail::layernorm_backward(dres, g.ln1_w, g.ln1_b, a.dln.data(), inp, w.ln1_w,
                               L.ln1_mean.data(), L.ln1_rstd.data(), N, C, true);
}

/// Embedding backward. Reads a.dresid as the gradient of `encoded` (all blocks' backward
/// must have run). OVERWRITES d_wte_embed [V,C] (the lookup's part of the tied embedding
/// gradient only: rows of tokens absent from the batch are zero) and d_wpe [maxT,C]
/// (rows t >= T are zero). Parallel over channel chunks; each element sums the positions
/// in order, so repeated tokens add up deterministically.
template <class F>
void embed_backward(activations<F>& a, const int* tokens, F* d_wte_embed, F* d_wpe) {
    const config& cfg = a.cfg();
    const std::size_t B = std::size_t(a.B()), T = std::size_t(a.T()), N = a.bt();
    const std::size_t C = std::size_t(cfg.n_embd), V = std::size_t(cfg.vocab);
    const std::size_t maxT = std::size_t(cfg.max_seq);
    detail::check_tokens(tokens, N, cfg.vocab, "tokens");
    const F* d = a.dresid.data();
#pragma omp parallel for schedule(static)
    for (std::size_t v = 0; v < V; ++v) {
        F* row = d_wte_embed + v * C;
        for (std::size_t c = 0; c < C; ++c) row[c] = F(0);
    }
    const std::size_t nchunks = (C + detail::col_chunk - 1) / detail::col_chunk;
#pragma omp parallel for schedule(static)
    for (std::size_t ch = 0; ch < nchunks; ++ch) {
        const std::size_t c0 = ch * detail::col_chunk, c1 = std::min(C, c0 + detail::col_chunk);
        for (std::size_t n = 0; n < N; ++n) {
            F* row = d_wte_embed + std::size_t(tokens[n]) * C;
            const F* g = d + n * C;
            for (std::size_t c = c0; c < c1; ++c) row[c] += g[c];
        }
    }
#pragma omp parallel for schedule(static)
    for (std::size_t t = 0; t < maxT; ++t) {
        F* row = d_wpe + t * C;
        for (std::size_t c = 0; c < C; ++c) row[c] = F(0);
        if (t >= T) continue;
        for (std::size_t b = 0; b < B; ++b) {
            const F* g = d + (b * T + t) * C;
            for (std::size_t c = 0; c < C; ++c) row[c] += g[c];
        }
    }
}

// ---------------------------------------------------------------------------------------
// Whole-model conveniences (single process)
// ---------------------------------------------------------------------------------------

/// Full forward pass. Returns the mean loss (0 if targets == nullptr; the probabilities
/// are in a.probs either way).
template <class F>
F forward(activations<F>& a, const weights<F>& w, const int* tokens, const int* targets) {
    if (w.blocks.size() != std::size_t(a.cfg().n_layer)) {
        throw std::invalid_argument("gpt::forward: weights have the wrong number of blocks");
    }
    embed_forward(a, tokens, w.wte, w.wpe);
    for (int l = 0; l < a.cfg().n_layer; ++l) block_forward(a, l, w.blocks[std::size_t(l)]);
    return head_forward(a, w.lnf_w, w.lnf_b, w.wte, targets);
}

/// Full backward pass after `forward` with the same tokens and targets. OVERWRITES every
/// gradient in `g`; g.wte receives the complete tied-embedding gradient (lookup part plus
/// LM-head part, summed here). scratch_wte [V*C] is caller-provided room for the head's
/// part so that nothing is allocated.
template <class F>
void backward(activations<F>& a, const weights<F>& w, const grads<F>& g, const int* tokens,
              const int* targets, F dloss, F* scratch_wte) {
    const config& cfg = a.cfg();
    if (w.blocks.size() != std::size_t(cfg.n_layer) ||
        g.blocks.size() != std::size_t(cfg.n_layer)) {
        throw std::invalid_argument("gpt::backward: views have the wrong number of blocks");
    }
    head_backward(a, w.lnf_w, w.lnf_b, w.wte, targets, dloss, g.lnf_w, g.lnf_b, scratch_wte);
    for (int l = cfg.n_layer - 1; l >= 0; --l) {
        block_backward(a, l, w.blocks[std::size_t(l)], g.blocks[std::size_t(l)]);
    }
    embed_backward(a, tokens, g.wte, g.wpe);
    const std::size_t n = std::size_t(cfg.vocab) * std::size_t(cfg.n_embd);
#pragma omp parallel for schedule(static)
    for (std::size_t i = 0; i < n; ++i) g.wte[i] += scratch_wte[i];
}

}  // namespace gpt
