"""Phi-3 and Phi-4 (`phi3`): q, k and v in one fused `qkv_proj`, gate and up in one fused `gate_up_proj`."""

import torch

from come.models.base import ModelAdapter, Piece, new_linear
from come.models.registry import register


def _split(proj, sizes: list[int]) -> list[Piece]:
    w = proj.weight.detach().split(sizes)
    b = [None] * len(sizes) if proj.bias is None else proj.bias.detach().split(sizes)
    return list(zip(w, b))


def _fused(pieces: list[Piece], like) -> torch.nn.Linear:
    bias = None if pieces[0][1] is None else torch.cat([b for _, b in pieces])
    return new_linear(torch.cat([w for w, _ in pieces]), bias, like)


@register
class Phi3Adapter(ModelAdapter):
    """Rows of `qkv_proj` are [q | k | v] and of `gate_up_proj` [gate | up]: a merge selects rows inside each
    block and fuses the blocks again."""

    model_types = ("phi3",)
    family = "Phi-3 / Phi-4"
    lora_targets = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")

    def attn_in(self, layer) -> dict[str, Piece]:
        proj = layer.self_attn.qkv_proj
        geo = self.geometry()
        kv_rows = proj.out_features // (geo.n_rep + 2)  # this layer's KV heads x head_dim
        return dict(zip("qkv", _split(proj, [geo.n_rep * kv_rows, kv_rows, kv_rows])))

    def set_attn_in(self, layer, pieces: dict[str, Piece]) -> None:
        attn = layer.self_attn
        attn.qkv_proj = _fused([pieces[n] for n in "qkv"], attn.qkv_proj)

    def mlp_in(self, layer) -> dict[str, Piece]:
        proj = layer.mlp.gate_up_proj
        return dict(zip(("gate", "up"), _split(proj, [proj.out_features // 2] * 2)))

    def set_mlp_in(self, layer, pieces: dict[str, Piece]) -> None:
        layer.mlp.gate_up_proj = _fused([pieces["gate"], pieces["up"]], layer.mlp.gate_up_proj)
