"""Granite: multipliers on the embeddings, attention scores, residual updates and logits."""

import torch

from come.models.base import ModelAdapter
from come.models.registry import register


@register
class GraniteAdapter(ModelAdapter):
    """h + m Attn(N1 h), then u + m MLP(N2 u), with m = `residual_multiplier` on every layer alike, so the pieces
    of a merge keep their weight in the residual. The embedding and attention multipliers act inside the model's
    own forward; the logits are divided by `logits_scaling` here too."""

    model_types = ("granite",)
    family = "Granite"

    def residual_multiplier(self, layer) -> float:
        return layer.residual_multiplier

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().logits(hidden) / self.config.logits_scaling
