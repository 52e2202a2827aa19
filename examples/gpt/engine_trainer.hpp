/**
 * @file engine_trainer.hpp
 * @brief GPT-2 (`gpt_model.hpp`) driven through a zeroblocks engine: the registration
 * of GPT-2's tensors as engine parameters and the per-micro-step acquire / compute /
 * `grad_ready` sequence. Shared by `train_gpt.cpp` (the demo) and `bench/gpt_step.cpp`.
 *
 * Units: `embed` (wte, wpe), `h.0` ... `h.{L-1}` (12 tensors each), `head` (ln_f).
 * Biases and LayerNorm weights are in parameter group 1 (the trainer gives it no weight
 * decay); `wte.weight` is declared used twice (`set_uses`): the embedding and the LM
 * head each report their part of its gradient as soon as it exists and the engine adds
 * them.
 */
#pragma once

#include <zeroblocks/zeroblocks.hpp>

#include "gpt_model.hpp"

#include <cstddef>
#include <type_traits>
#include <vector>

namespace gpt {

namespace zb = zeroblocks;

/// Engine parameters of GPT-2's tensors, unit by unit (`gpt::tensors` order).
struct gpt_params {
  zb::param_registry reg;
  std::vector<zb::param_id> ids;
  std::vector<gpt::tensor_spec> specs;
  int n_layer = 0;
  explicit gpt_params(const gpt::config& c) : specs(gpt::tensors(c)), n_layer(c.n_layer) {
    for (const auto& t : specs) ids.push_back(reg.add(t.name, t.shape, t.unit, t.decay ? 0 : 1));
    reg.set_uses(ids[0], 2);  // wte.weight: the token embedding and the LM head
  }
  static constexpr std::size_t per_block = 12;
  std::size_t block_first(int l) const { return 2 + per_block * static_cast<std::size_t>(l); }
  std::size_t head_first() const { return 2 + per_block * static_cast<std::size_t>(n_layer); }
};

/// fp32 views of acquired parameters: the engine's own memory for fp32 (no copy, no
/// address change across steps for stages 0–2), widened copies for 16-bit types.
template <class T>
struct widened {
  std::vector<std::vector<float>> bufs;
  template <class View>
  const float* of(const View& v, std::size_t slot) {
    if constexpr (std::is_same_v<T, float>) {
      return v.data();
    } else {
      if (bufs.size() <= slot) bufs.resize(slot + 1);
      auto& b = bufs[slot];
      b.resize(v.size());
      for (std::size_t i = 0; i < v.size(); ++i) b[i] = zb::to_float(v[i]);
      return b.data();
    }
  }
};

template <class Engine>
class trainer {
  using T = typename Engine::param_type;

public:
  trainer(Engine& eng, const gpt_params& P, const gpt::config& c, std::size_t local_batch, int T_)
      : eng_(eng), P_(P), cfg_(c), acts_(c, static_cast<int>(std::max<std::size_t>(local_batch, 1)), T_),
        seq_(T_) {
    // Gradient buffers for one unit of each kind: every gradient is handed to the
    // engine as soon as it is computed (the engine copies it), so one block's buffers
    // serve every block and both parts of the tied wte share one buffer.
    for (std::size_t i = 0; i < 2 + gpt_params::per_block + 2; ++i) {
      const std::size_t t = i < 2 + gpt_params::per_block ? i : P.head_first() + (i - 2 - gpt_params::per_block);
      grads_.emplace_back(P.specs[t].numel(), 0.0f);
    }
    units_.push_back(eng.unit_of(P.ids[0]));
    for (int l = 0; l < c.n_layer; ++l) units_.push_back(eng.unit_of(P.ids[P.block_first(l)]));
    units_.push_back(eng.unit_of(P.ids[P.head_first()]));
  }

  /// One micro-step's forward and backward on `n` local sequences; returns the summed
  /// token loss. The backward is seeded with `set_dloss` (loss scale × this rank's share).
  double forward_backward(const std::vector<int>& tok, const std::vector<int>& tgt, std::size_t n) {
    const double loss = forward(tok, tgt, n, /*keep_head=*/true);
    backward_blocks_and_embed(tok);
    return loss;
  }

  /// Summed token loss of `n` sequences, forward only (inside `eng.eval()`).
  double evaluate(const std::vector<int>& tok, const std::vector<int>& tgt, std::size_t n) {
    return forward(tok, tgt, n, /*keep_head=*/false);
  }

  void set_dloss(float d) { dloss_ = d; }

private:
  /// The buffer for tensor i's gradient (see the constructor).
  std::vector<float>& grad(std::size_t i) {
    if (i < 2) return grads_[i];
    if (i >= P_.head_first()) return grads_[2 + gpt_params::per_block + (i - P_.head_first())];
    return grads_[2 + (i - 2) % gpt_params::per_block];
  }
  auto view(const typename Engine::unit_guard& g, std::size_t i) const { return g.param(P_.ids[i]); }

  gpt::block_weights<float> block_weights(const typename Engine::unit_guard& g, int l) {
    const std::size_t f = P_.block_first(l);
    std::vector<const float*> p(gpt_params::per_block);
    for (std::size_t k = 0; k < p.size(); ++k) p[k] = wide_.of(view(g, f + k), k);
    return gpt::block_view_from(p.data());
  }

  /// Forward through every unit; with `keep_head` the head's backward runs while the
  /// head and the embedding are still held, reporting their gradients at once.
  double forward(const std::vector<int>& tok, const std::vector<int>& tgt, std::size_t n, bool keep_head) {
    {
      auto g = eng_.acquire(units_.front());
      gpt::embed_forward(acts_, tok.data(), wide_.of(view(g, 0), 0), wide_.of(view(g, 1), 1));
    }
    for (int l = 0; l < cfg_.n_layer; ++l) {
      auto g = eng_.acquire(units_[1 + l]);
      gpt::block_forward(acts_, l, block_weights(g, l));
    }
    auto gh = eng_.acquire(units_.back());
    auto ge = eng_.acquire(units_.front());  // the LM head is the token embedding
    const std::size_t h = P_.head_first();
    const float* lnf_w = wide_.of(view(gh, h), 0);
    const float* lnf_b = wide_.of(view(gh, h + 1), 1);
    const float* wte = wide_.of(view(ge, 0), 2);
    const double mean = gpt::head_forward(acts_, lnf_w, lnf_b, wte, tgt.data());
    if (keep_head) {
      gpt::head_backward(acts_, lnf_w, lnf_b, wte, tgt.data(), dloss_, grad(h).data(), grad(h + 1).data(),
                         grad(0).data());
      report(h, grad(h));
      report(h + 1, grad(h + 1));
      report(0, grad(0));  // wte, first part: the engine keeps the sum, the trainer nothing
    }
    return mean * static_cast<double>(n) * seq_;
  }

  void backward_blocks_and_embed(const std::vector<int>& tok) {
    for (int l = cfg_.n_layer - 1; l >= 0; --l) {
      auto g = eng_.acquire(units_[1 + l]);
      const std::size_t f = P_.block_first(l);
      std::vector<float*> d(gpt_params::per_block);
      for (std::size_t k = 0; k < d.size(); ++k) d[k] = grad(f + k).data();
      gpt::block_backward(acts_, l, block_weights(g, l), gpt::block_view_from(d.data()));
      for (std::size_t k = 0; k < d.size(); ++k) report(f + k, grad(f + k));
    }
    {
      auto g = eng_.acquire(units_.front());
      gpt::embed_backward(acts_, tok.data(), grad(0).data(), grad(1).data());
      report(0, grad(0));  // wte, second part: the engine adds the two
      report(1, grad(1));
    }
  }

  void report(std::size_t i, const std::vector<float>& g) {
    if constexpr (std::is_same_v<T, float>) {
      eng_.grad_ready(P_.ids[i], g);
    } else {
      low_.resize(g.size());
      for (std::size_t k = 0; k < g.size(); ++k) low_[k] = zb::from_float<T>(g[k]);
      eng_.grad_ready(P_.ids[i], low_);
    }
  }

  Engine& eng_;
  const gpt_params& P_;
  gpt::config cfg_;
  gpt::activations<float> acts_;
  int seq_;
  float dloss_ = 1.0f;
  std::vector<zb::unit_id> units_;
  std::vector<std::vector<float>> grads_;
  widened<T> wide_;
  std::vector<T> low_;
};

}  // namespace gpt
