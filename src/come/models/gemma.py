"""Gemma 2 and Gemma 3 (text): four norms per layer, RMSNorm scale 1 + w, logit soft-capping, and sliding-window
layers between global ones."""

import torch

from come.models.base import ModelAdapter
from come.models.registry import register


@register
class Gemma2Adapter(ModelAdapter):
    """h + PN1(Attn(N1 h)), then u + PN2(MLP(N2 u)); every norm scales by 1 + w. Attention logits are soft-capped
    inside the attention (per head, so a merge keeps it); final logits are soft-capped here."""

    model_types = ("gemma2",)
    family = "Gemma 2"
    norm_offset = 1.0

    def mlp_norm(self, layer):
        return layer.pre_feedforward_layernorm

    def attn_post_norm(self, layer):
        return layer.post_attention_layernorm

    def mlp_post_norm(self, layer):
        return layer.post_feedforward_layernorm

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().logits(hidden)
        cap = getattr(self.config, "final_logit_softcapping", None)
        return logits if cap is None else torch.tanh(logits / cap) * cap


@register
class Gemma3Adapter(Gemma2Adapter):
    """As Gemma 2, with per-head q/k norms and a RoPE base of its own for sliding-window layers."""

    model_types = ("gemma3_text",)
    family = "Gemma 3"
    has_qk_norm = True
