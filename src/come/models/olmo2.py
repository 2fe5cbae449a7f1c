"""OLMo 2: norms after the sub-layers only, and q/k norms over the whole projection."""

from come.models.base import ModelAdapter
from come.models.registry import register


@register
class Olmo2Adapter(ModelAdapter):
    """h + PN1(Attn(h)), then u + PN2(MLP(u)): no norm on a sub-layer's input. q_norm/k_norm normalise the whole
    q (k) projection with one weight per row, so their weights follow the selected rows in a merge."""

    model_types = ("olmo2",)
    family = "OLMo 2"
    has_qk_norm = True
    qk_norm_per_head = False

    def attn_norm(self, layer):
        return None

    def mlp_norm(self, layer):
        return None

    def attn_post_norm(self, layer):
        return layer.post_attention_layernorm

    def mlp_post_norm(self, layer):
        return layer.post_feedforward_layernorm
