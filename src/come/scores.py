"""Scores of docs/method.md §2: block influence (collected in capture), pair angular score, channel sensitivity."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from come.capture import LayerStats, cos_rows
from come.models import ModelAdapter


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """arccos(clamp(cos, 0, 1)) / pi per row, float32; a NaN cosine counts as 0.5."""
    c = torch.nan_to_num(cos_rows(a, b), nan=0.5).clamp(0, 1)
    return torch.arccos(c) / math.pi


def pair_scores(hidden: Sequence[Sequence[torch.Tensor]], last_token: bool = True) -> list[float]:
    """SBI_l for every adjacent pair (l, l+1): angular distance between h_in(l) and h_out(l+1), summed over
    windows on the last token (default) or over all tokens. Low = the pair changes little = merge it."""
    scores = []
    for l in range(len(hidden) - 2):
        total = 0.0
        for a, b in zip(hidden[l], hidden[l + 2]):
            if last_token:
                a, b = a[:, -1], b[:, -1]
            total += angular_distance(a, b).sum().item()
        scores.append(total)
    return scores


def mlp_sensitivity(adapter: ModelAdapter, layer, stats: LayerStats) -> torch.Tensor:
    """S_j = mean_tokens |a_j| * ||W_down[:, j]||_1 for every MLP channel j."""
    w = adapter.down_proj(layer).weight.detach().float().cpu()
    return stats.mlp_abs * w.abs().sum(0)


def attn_group_sensitivity(adapter: ModelAdapter, layer, stats: LayerStats) -> torch.Tensor:
    """S_g = mean over tokens and over the query channels c of KV group g of |o_c| * ||W_o[:, c]||_1."""
    geo = adapter.geometry()
    w = adapter.o_proj(layer).weight.detach().float().cpu()
    per_channel = stats.attn_abs * w.abs().sum(0)  # [H * d_h], query heads in HF order
    n_groups = per_channel.numel() // (geo.n_rep * geo.head_dim)
    return per_channel.view(n_groups, geo.n_rep * geo.head_dim).mean(1)


def bi_ratio(bi_a: float, bi_b: float, p: float = 1.0) -> tuple[float, float]:
    """r_i = BI_i^p / sum BI^p for the two layers of a pair (equal split when both are zero)."""
    a, b = max(bi_a, 0.0) ** p, max(bi_b, 0.0) ** p
    if a + b == 0:
        return 0.5, 0.5
    return a / (a + b), b / (a + b)


def split_budget(ratio: tuple[float, float], k: int) -> tuple[int, int]:
    """The non-dominant layer keeps floor(r * K), the dominant one the rest (layer a wins ties)."""
    r_a, r_b = ratio
    if r_a >= r_b:
        k_b = math.floor(r_b * k + 1e-9)
        return k - k_b, k_b
    k_a = math.floor(r_a * k + 1e-9)
    return k_a, k - k_a


def top_k(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores, in original order; ties go to the lower index (deterministic)."""
    if k <= 0:
        return []
    order = torch.argsort(-scores, stable=True)[:k]
    return sorted(order.tolist())
