"""The architecture interface: everything the engine touches in a model goes through a ModelAdapter."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class AttnGeometry:
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def n_rep(self) -> int:
        return self.num_heads // self.num_kv_heads


class ModelAdapter:
    """Pre-norm decoder (`h + Attn(N1 h)`, then `u + MLP(N2 u)`) laid out like HF Llama.

    Subclasses name the `model_type`s they serve and override what differs in their family.
    """

    model_types: tuple[str, ...] = ()
    has_qk_norm = False

    def __init__(self, model: nn.Module):
        self.model = model

    @property
    def config(self):
        return self.model.config

    # --- the stack ---
    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def embed_tokens(self) -> nn.Module:
        return self.model.model.embed_tokens

    def final_norm(self) -> nn.Module:
        return self.model.model.norm

    def lm_head(self) -> nn.Module:
        return self.model.lm_head

    def geometry(self) -> AttnGeometry:
        c = self.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return AttnGeometry(c.num_attention_heads, c.num_key_value_heads or c.num_attention_heads, head_dim)

    # --- one layer ---
    def q_proj(self, layer) -> nn.Linear:
        return layer.self_attn.q_proj

    def k_proj(self, layer) -> nn.Linear:
        return layer.self_attn.k_proj

    def v_proj(self, layer) -> nn.Linear:
        return layer.self_attn.v_proj

    def o_proj(self, layer) -> nn.Linear:
        return layer.self_attn.o_proj

    def gate_proj(self, layer) -> nn.Linear:
        return layer.mlp.gate_proj

    def up_proj(self, layer) -> nn.Linear:
        return layer.mlp.up_proj

    def down_proj(self, layer) -> nn.Linear:
        return layer.mlp.down_proj

    def attn_norm(self, layer) -> nn.Module:
        return layer.input_layernorm

    def mlp_norm(self, layer) -> nn.Module:
        return layer.post_attention_layernorm

    def qk_norms(self, layer) -> tuple[nn.Module, nn.Module] | None:
        """Per-head q/k norms (Qwen3), which cannot be folded into the projections."""
        return (layer.self_attn.q_norm, layer.self_attn.k_norm) if self.has_qk_norm else None

    def attn_in_projs(self, layer) -> list[nn.Linear]:
        return [self.q_proj(layer), self.k_proj(layer), self.v_proj(layer)]

    def mlp_in_projs(self, layer) -> list[nn.Linear]:
        return [self.gate_proj(layer), self.up_proj(layer)]

    def params_per_layer(self) -> int:
        return sum(p.numel() for p in self.layers[0].parameters())

    # --- structural edits ---
    def set_layers(self, layers: list[nn.Module], kept: list[int] | None = None) -> None:
        """Install `layers` as the stack and make config and per-layer indices agree with it (see sync_config)."""
        self.model.model.layers = nn.ModuleList(layers)
        self.sync_config(kept)

    def sync_config(self, kept: list[int] | None = None) -> None:
        """Renumber `layer_idx` and shrink `num_hidden_layers` and per-layer config lists.

        `kept`: for each new layer, the index of the old layer whose per-layer config entries it keeps.
        """
        c = self.config
        old_n = c.num_hidden_layers
        new_n = len(self.layers)
        if kept is None:
            kept = list(range(new_n))
        for i, layer in enumerate(self.layers):
            layer.self_attn.layer_idx = i
        for key in ("layer_types",):
            values = getattr(c, key, None)
            if isinstance(values, list) and len(values) == old_n:
                setattr(c, key, [values[k] for k in kept])
        c.num_hidden_layers = new_n
