#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/moe_routing.h"

namespace troupe::kernels {

void moe_route_ref(const float* logits, const float* bias, float* scores, int64_t* chosen, int64_t* counts,
                   const RouteShape& s) {
  const auto E = s.experts, per_group = s.experts / s.groups;
  std::vector<double> choice(static_cast<size_t>(E));
  for (int64_t t = 0; t < s.tokens; ++t) {
    const float* l = logits + t * E;
    float* sc = scores + t * E;
    if (s.sigmoid) {
      for (int64_t e = 0; e < E; ++e) sc[e] = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(l[e]))));
    } else {
      const double most = *std::max_element(l, l + E);
      double sum = 0;
      for (int64_t e = 0; e < E; ++e) sum += std::exp(l[e] - most);
      for (int64_t e = 0; e < E; ++e) sc[e] = static_cast<float>(std::exp(l[e] - most) / sum);
    }
    for (int64_t e = 0; e < E; ++e) choice[e] = static_cast<double>(sc[e]) + (bias ? bias[e] : 0.f);
    if (s.groups > 1) {
      std::vector<std::pair<double, int64_t>> group_score;
      for (int64_t g = 0; g < s.groups; ++g) {
        std::vector<double> members(choice.begin() + g * per_group, choice.begin() + (g + 1) * per_group);
        std::sort(members.rbegin(), members.rend());
        group_score.emplace_back(members[0] + (per_group > 1 ? members[1] : 0.0), g);
      }
      std::stable_sort(group_score.begin(), group_score.end(), [](auto& a, auto& b) { return a.first > b.first; });
      std::vector<bool> kept(static_cast<size_t>(s.groups), false);
      for (int64_t i = 0; i < s.groups_kept; ++i) kept[group_score[i].second] = true;
      for (int64_t e = 0; e < E; ++e)
        if (!kept[e / per_group]) choice[e] = -std::numeric_limits<double>::infinity();
    }
    std::vector<bool> taken(static_cast<size_t>(E), false);
    for (int64_t j = 0; j < s.top_k; ++j) {
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e)
        if (!taken[e] && (best < 0 || choice[e] > choice[best])) best = e;
      chosen[t * s.top_k + j] = best;
      ++counts[best];
      taken[best] = true;
    }
  }
}

void moe_permute_ref(float* out, const float* x, const int64_t* positions, int64_t tokens, int64_t top_k, int64_t dim) {
  for (int64_t i = 0; i < tokens * top_k; ++i) std::copy(x + (i / top_k) * dim, x + (i / top_k + 1) * dim, out + positions[i] * dim);
}

void moe_permute_backward_ref(float* dx, const float* dout, const int64_t* positions, int64_t tokens, int64_t top_k,
                              int64_t dim) {
  moe_unpermute_ref(dx, dout, nullptr, positions, tokens, top_k, dim);
}

void moe_unpermute_ref(float* out, const float* y, const float* weights, const int64_t* positions, int64_t tokens,
                       int64_t top_k, int64_t dim) {
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t d = 0; d < dim; ++d) {
      double sum = 0;
      for (int64_t j = 0; j < top_k; ++j)
        sum += (weights ? static_cast<double>(weights[t * top_k + j]) : 1.0) * y[positions[t * top_k + j] * dim + d];
      out[t * dim + d] = static_cast<float>(sum);
    }
}

void moe_unpermute_backward_ref(float* dy, float* dweights, const float* dout, const float* y, const float* weights,
                                const int64_t* positions, int64_t tokens, int64_t top_k, int64_t dim) {
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < top_k; ++j) {
      const auto row = positions[t * top_k + j];
      double dot = 0;
      for (int64_t d = 0; d < dim; ++d) {
        dy[row * dim + d] = weights[t * top_k + j] * dout[t * dim + d];
        dot += static_cast<double>(dout[t * dim + d]) * y[row * dim + d];
      }
      dweights[t * top_k + j] = static_cast<float>(dot);
    }
}

}  // namespace troupe::kernels
