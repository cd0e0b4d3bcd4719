"""Cross-layer Knowledge-Fusion MoE: per-layer token-compressing experts and a soft per-video gate.

A video's LinkedOut features are ``x`` (L, K, D): K tokens from each of L kept backbone layers. Expert
``l`` compresses layer ``l``'s tokens into one vector ``h^(l)`` (d); a soft gate gives each video its own
weights ``pi`` (L,) over layers; the item is ``sum_l pi_l h^(l)`` (paper, arXiv 2512.16891, §3).

Expert ``l`` (all experts run batched, parameters stacked on a leading expert axis):

    z_k   = LN(x_k) W_l + b_l                    # (K, d) per-token projection, LN without affine
    a     = softmax_k(z_k . q_lj / sqrt(d))      # (Q, K) attention pooling with Q learned queries
    h^(l) = Mix_l([sum_k a_jk z_k]_j)            # (d,)  Q pooled tokens -> d (identity when Q = 1)
          (+ optional residual MLP)

The pooling is computed in the input space (``sum_k a_k LN(x_k)`` first, projected once), which is
the same function but avoids a ``(M, L, K, d)`` intermediate. The LayerNorm has no affine parameters:
before a Linear they would be redundant with ``W_l``. Parameters per expert ``D*d + d + Q*d`` (+
``Q*d*d + d`` when Q > 1): at the paper's D = 4096, d = 256, Q = 1 the six experts hold 6.29 M
parameters (paper: ~6.3 M); at Qwen2-7B's real D = 3584, 5.51 M. The gate adds ~19 k.

Everything is static-shape tensor code (loops only over the static number of layers): it exports to
ONNX with a dynamic batch axis ``M``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linkedout.model.config import FusionConfig

__all__ = ["CrossLayerFusion", "FusionConfig", "FusionOutput", "LayerExperts", "SoftGate"]


@dataclass
class FusionOutput:
    """What ``CrossLayerFusion`` returns for ``M`` videos."""

    emb: Tensor  # (M, d) fused item embedding sum_l pi_l h^(l)
    gate: Tensor  # (M, L) gate weights pi (rows sum to 1; fixed 1/L in "uniform", one-hot in "single")
    layer_outputs: Tensor  # (M, L, d) expert outputs h^(l) (zeros for unused layers in "single")
    aux_loss: Tensor | None = None  # () weighted sum of the active regularisers (training mode only)
    aux_terms: dict[str, Tensor] = field(default_factory=dict)  # unweighted terms, for logging


class LayerExperts(nn.Module):
    """``E`` token-compressing experts run in one batched pass.

    Input ``(M, E, K, D)`` (the features of the layers the experts own), output ``(M, E, d)``.
    """

    def __init__(self, num_experts: int, in_dim: int, d_model: int, queries: int = 1, hidden: int = 0,
                 init_std: float = 0.02) -> None:
        super().__init__()
        e, dd, d, q = num_experts, in_dim, d_model, queries
        self.num_experts, self.in_dim, self.d_model, self.queries, self.hidden = e, dd, d, q, hidden
        self.proj_weight = nn.Parameter(torch.empty(e, dd, d))  # (E, D, d)
        self.proj_bias = nn.Parameter(torch.zeros(e, d))  # (E, d)
        self.query = nn.Parameter(torch.empty(e, q, d))  # (E, Q, d)
        if q > 1:
            self.mix_weight: nn.Parameter | None = nn.Parameter(torch.empty(e, q * d, d))  # (E, Q*d, d)
            self.mix_bias: nn.Parameter | None = nn.Parameter(torch.zeros(e, d))  # (E, d)
        else:
            self.mix_weight = self.mix_bias = None
        if hidden > 0:
            self.mlp_norm_weight: nn.Parameter | None = nn.Parameter(torch.ones(e, d))
            self.mlp_norm_bias: nn.Parameter | None = nn.Parameter(torch.zeros(e, d))
            self.mlp_w1: nn.Parameter | None = nn.Parameter(torch.empty(e, d, hidden))  # (E, d, H)
            self.mlp_b1: nn.Parameter | None = nn.Parameter(torch.zeros(e, hidden))  # (E, H)
            self.mlp_w2: nn.Parameter | None = nn.Parameter(torch.empty(e, hidden, d))  # (E, H, d)
            self.mlp_b2: nn.Parameter | None = nn.Parameter(torch.zeros(e, d))  # (E, d)
        else:
            self.mlp_norm_weight = self.mlp_norm_bias = None
            self.mlp_w1 = self.mlp_b1 = self.mlp_w2 = self.mlp_b2 = None
        self.reset_parameters(init_std)

    def reset_parameters(self, std: float = 0.02) -> None:
        for p in (self.proj_weight, self.query, self.mix_weight, self.mlp_w1, self.mlp_w2):
            if p is not None:
                nn.init.normal_(p, std=std)
        for p in (self.proj_bias, self.mix_bias, self.mlp_b1, self.mlp_b2, self.mlp_norm_bias):
            if p is not None:
                nn.init.zeros_(p)
        if self.mlp_norm_weight is not None:
            nn.init.ones_(self.mlp_norm_weight)

    @staticmethod
    def _per_expert(x: Tensor, weight: Tensor) -> Tensor:
        """``x`` (M, E, F) times the expert's own ``weight`` (E, F, G) -> (M, E, G)."""
        y = torch.bmm(x.transpose(0, 1), weight)  # (E, M, G)
        return y.transpose(0, 1)  # (M, E, G)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (M, E, K, D) -> expert outputs ``h`` (M, E, d)."""
        e = x.shape[1]
        d, q = self.d_model, self.queries
        xn = F.layer_norm(x, (self.in_dim,))  # (M, E, K, D)
        # Attention logits z_k . q_j = LN(x_k) (W q_j) + b . q_j; the bias term is constant over k and
        # cancels in the softmax over tokens.
        wq = torch.matmul(self.proj_weight, self.query.transpose(1, 2))  # (E, D, Q)
        logits = torch.matmul(xn, wq.unsqueeze(0)) / math.sqrt(d)  # (M, E, K, Q)
        attn = torch.softmax(logits.transpose(2, 3), dim=-1)  # (M, E, Q, K)
        pooled = torch.matmul(attn.to(xn.dtype), xn)  # (M, E, Q, D)
        # Project each expert's pooled tokens with its own W: (E, M*Q, D) @ (E, D, d).
        pooled_e = pooled.transpose(0, 1).reshape(e, -1, self.in_dim)  # (E, M*Q, D)
        z = torch.bmm(pooled_e, self.proj_weight).reshape(e, -1, q, d).transpose(0, 1)  # (M, E, Q, d)
        z = z + self.proj_bias[None, :, None, :]  # softmax weights sum to 1, so the bias passes as is
        if self.mix_weight is not None and self.mix_bias is not None:
            h = self._per_expert(z.reshape(-1, e, q * d), self.mix_weight) + self.mix_bias  # (M, E, d)
        else:
            h = z[:, :, 0]  # (M, E, d)
        if self.mlp_w1 is not None:
            assert self.mlp_norm_weight is not None and self.mlp_norm_bias is not None
            assert self.mlp_b1 is not None and self.mlp_w2 is not None and self.mlp_b2 is not None
            u = F.layer_norm(h, (d,)) * self.mlp_norm_weight + self.mlp_norm_bias  # (M, E, d)
            u = F.gelu(self._per_expert(u, self.mlp_w1) + self.mlp_b1)  # (M, E, H)
            h = h + self._per_expert(u, self.mlp_w2) + self.mlp_b2  # (M, E, d)
        return h


class SoftGate(nn.Module):
    """Per-video soft gate over ``L`` layers from cheap per-layer summaries.

    ``summaries`` (M, L, S) -> ``pi`` (M, L): each summary is layer-normalised (no affine), mapped by a
    shared ``Linear(S, G)`` + GELU, the L results concatenated and scored by ``Linear(L*G, L)``; then
    ``softmax(logits / temperature)``. Joint scoring lets the gate compare the layers of one video.
    """

    def __init__(self, num_layers: int, summary_dim: int, hidden: int, temperature: float = 1.0,
                 init_std: float = 0.02) -> None:
        super().__init__()
        self.num_layers, self.summary_dim, self.temperature = num_layers, summary_dim, temperature
        self.summary = nn.Linear(summary_dim, hidden)
        self.score = nn.Linear(num_layers * hidden, num_layers)
        for lin in (self.summary, self.score):
            nn.init.normal_(lin.weight, std=init_std)
            nn.init.zeros_(lin.bias)

    def logits(self, summaries: Tensor) -> Tensor:
        """``summaries`` (M, L, S) -> gate logits (M, L) before the temperature."""
        s = F.layer_norm(summaries, (self.summary_dim,))  # (M, L, S)
        u = F.gelu(self.summary(s))  # (M, L, G)
        return self.score(u.flatten(1))  # (M, L)

    def forward(self, summaries: Tensor) -> Tensor:
        """``summaries`` (M, L, S) -> ``pi`` (M, L), rows sum to 1."""
        return torch.softmax(self.logits(summaries).float() / self.temperature, dim=-1)


def _weighted_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """Mean of ``values`` (M,) weighted by ``weights`` (M,) (e.g. 0 for padding rows)."""
    if weights is None:
        return values.mean()
    w = weights.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1.0)


class CrossLayerFusion(nn.Module):
    """The video item tower: ``(M, L, K, D)`` backbone features -> ``FusionOutput`` (emb ``(M, d)``).

    Modes (``FusionConfig.mode``): ``moe`` (one expert per layer and a learned soft gate), ``uniform``
    (every layer's expert, ``pi = 1/L`` fixed, no gate parameters), ``single`` (one expert on layer
    ``single_layer`` only; ``-1`` = the last layer, the "last layer only" ablation).

    Regularisers (training mode only, weights in the config; 0 turns a term off):
    ``balance`` = KL(batch-mean pi || uniform), ``entropy`` = mean per-video entropy of pi (both
    ``moe`` only) and ``kp`` (knowledge preservation) = MSE between ``Linear(d, D)(h^(l))`` and the
    stop-grad, layer-normalised token mean of layer ``l``'s features, over the layers in use.
    """

    def __init__(self, cfg: FusionConfig, init_std: float = 0.02) -> None:
        super().__init__()
        self.config = cfg
        L = cfg.num_layers
        self.experts = LayerExperts(cfg.num_experts, cfg.in_dim, cfg.d_model, cfg.expert_queries,
                                    cfg.expert_hidden, init_std)
        self.gate: SoftGate | None = None
        if cfg.mode == "moe":
            summary_dim = cfg.d_model if cfg.gate_input == "expert" else cfg.in_dim
            self.gate = SoftGate(L, summary_dim, cfg.gate_hidden, cfg.gate_temperature, init_std)
        self.kp_decoder: nn.Linear | None = None
        if cfg.kp_weight > 0:
            self.kp_decoder = nn.Linear(cfg.d_model, cfg.in_dim)
            nn.init.normal_(self.kp_decoder.weight, std=init_std)
            nn.init.zeros_(self.kp_decoder.bias)
        onehot = torch.zeros(L)
        if cfg.mode == "single":
            onehot[cfg.resolved_single_layer] = 1.0
        self.single_onehot: Tensor
        self.register_buffer("single_onehot", onehot, persistent=False)  # (L,)

    def _check_features(self, features: Tensor) -> None:
        cfg = self.config
        if features.dim() != 4:
            raise ValueError(f"features must be (M, L, K, D), got shape {tuple(features.shape)}")
        for axis, name, want in ((1, "num_layers", cfg.num_layers), (2, "tokens", cfg.tokens),
                                 (3, "in_dim", cfg.in_dim)):
            if features.shape[axis] != want:
                raise ValueError(f"features axis {axis} is {features.shape[axis]} but FusionConfig.{name} "
                                 f"is {want} (features shape {tuple(features.shape)})")

    def forward(self, features: Tensor, valid: Tensor | None = None) -> FusionOutput:
        """Fuse ``features`` (M, L, K, D) into item embeddings.

        ``valid`` (M,) bool, optional: rows that count in the regularisers' batch means (False for
        the padding item 0). Returns ``FusionOutput``: ``emb`` (M, d), ``gate`` (M, L),
        ``layer_outputs`` (M, L, d), ``aux_loss`` () or None, ``aux_terms``.
        """
        self._check_features(features)
        cfg = self.config
        L = cfg.num_layers
        if cfg.mode == "single":
            li = cfg.resolved_single_layer
            used = features[:, li : li + 1]  # (M, 1, K, D)
        else:
            used = features  # (M, L, K, D)
        h = self.experts(used)  # (M, E, d)

        if cfg.mode == "single":
            gate = self.single_onehot.unsqueeze(0).expand(h.shape[0], -1).to(h.dtype)  # (M, L)
            layer_outputs = self.single_onehot[None, :, None].to(h.dtype) * h  # (M, L, d)
            emb = h[:, 0]  # (M, d)
        else:
            if self.gate is not None:
                # Per-layer summaries: expert outputs (M, L, d) or token-mean features (M, L, D).
                summaries = h if cfg.gate_input == "expert" else features.mean(dim=2)
                gate = self.gate(summaries)  # (M, L) float32
            else:
                gate = torch.ones_like(h[..., 0], dtype=torch.float32) / L  # (M, L)
            layer_outputs = h  # (M, L, d)
            emb = (gate.to(h.dtype).unsqueeze(-1) * h).sum(dim=1)  # (M, d)

        aux_loss: Tensor | None = None
        terms: dict[str, Tensor] = {}
        if self.training:
            aux_loss, terms = self._regularisers(used, h, gate, valid)
        return FusionOutput(emb=emb, gate=gate, layer_outputs=layer_outputs, aux_loss=aux_loss,
                            aux_terms=terms)

    def _regularisers(self, used: Tensor, h: Tensor, gate: Tensor, valid: Tensor | None,
                      ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """Weighted sum and unweighted values of the active regularisers (see the class docstring)."""
        cfg = self.config
        terms: dict[str, Tensor] = {}
        total: Tensor | None = None
        eps = 1e-9
        if cfg.mode == "moe" and cfg.balance_weight > 0:
            pi = gate.float()  # (M, L)
            if valid is None:
                mean_pi = pi.mean(dim=0)  # (L,)
            else:
                w = valid.to(pi.dtype).unsqueeze(-1)  # (M, 1)
                mean_pi = (pi * w).sum(dim=0) / w.sum().clamp_min(1.0)  # (L,)
            terms["balance"] = (mean_pi * torch.log(mean_pi * cfg.num_layers + eps)).sum()
            total = cfg.balance_weight * terms["balance"]
        if cfg.mode == "moe" and cfg.entropy_weight > 0:
            pi = gate.float()
            ent = -(pi * torch.log(pi + eps)).sum(dim=-1)  # (M,)
            terms["entropy"] = _weighted_mean(ent, valid)
            t = cfg.entropy_weight * terms["entropy"]
            total = t if total is None else total + t
        if self.kp_decoder is not None:
            with torch.no_grad():
                target = F.layer_norm(used.float().mean(dim=2), (cfg.in_dim,))  # (M, E, D)
            recon = self.kp_decoder(h).float()  # (M, E, D)
            per_video = (recon - target).pow(2).mean(dim=(1, 2))  # (M,)
            terms["kp"] = _weighted_mean(per_video, valid)
            t = cfg.kp_weight * terms["kp"]
            total = t if total is None else total + t
        return total, terms
