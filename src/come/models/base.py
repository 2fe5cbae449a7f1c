"""The architecture interface: everything the engine touches in a model goes through a ModelAdapter."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

Piece = tuple[torch.Tensor, torch.Tensor | None]  # (weight rows, bias rows or None) of one projection
GLOBAL = "full_attention"


@dataclass(frozen=True)
class AttnGeometry:
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def n_rep(self) -> int:
        return self.num_heads // self.num_kv_heads


def new_linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    """An nn.Linear holding `weight`/`bias` (copies), trainable as `like` is. Its random init is skipped (the copy
    overwrites it): a third of the time of building a merged layer, which come-splice's screen does 7 times a pair."""
    lin = torch.nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None,
                                   device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    lin.weight.requires_grad_(like.weight.requires_grad)
    return lin


class ModelAdapter:
    """Pre-norm decoder (`h + Attn(N1 h)`, then `u + MLP(N2 u)`) laid out like HF Llama.

    Subclasses name the `model_types` they serve and override what differs in their family: fused projections,
    norms after the sub-layers, per-channel q/k norms, residual multipliers, logit post-processing, layer types.
    """

    model_types: tuple[str, ...] = ()
    family = ""  # the name users know the family by (listed when an architecture is refused)
    has_qk_norm = False
    qk_norm_per_head = True  # False: q/k norms span the whole projection, one weight per row (OLMo 2)
    norm_offset = 0.0  # an RMSNorm scales by offset + weight (Gemma: 1 + w)
    # a layer's projections by module path (LoRA adapts these); a family with fused projections names its own
    lora_targets: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

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

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the model's forward turns last-layer states into: final norm, LM head, then the family's
        post-processing (soft-capping, scaling)."""
        return self.lm_head()(self.final_norm()(hidden))

    def geometry(self) -> AttnGeometry:
        c = self.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return AttnGeometry(c.num_attention_heads, c.num_key_value_heads or c.num_attention_heads, head_dim)

    # --- one layer: projections ---
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

    def attn_in(self, layer) -> dict[str, Piece]:
        """The attention's input projections as separate matrices: {"q", "k", "v"} -> (weight, bias)."""
        return {n: _piece(p) for n, p in (("q", self.q_proj(layer)), ("k", self.k_proj(layer)),
                                          ("v", self.v_proj(layer)))}

    def set_attn_in(self, layer, pieces: dict[str, Piece]) -> None:
        """Install new q/k/v matrices (any number of rows) in `layer`."""
        attn = layer.self_attn
        for name, (w, b) in pieces.items():
            setattr(attn, f"{name}_proj", new_linear(w, b, getattr(attn, f"{name}_proj")))

    def mlp_in(self, layer) -> dict[str, Piece]:
        """The MLP's input projections as separate matrices: {"gate", "up"} -> (weight, bias)."""
        return {"gate": _piece(self.gate_proj(layer)), "up": _piece(self.up_proj(layer))}

    def set_mlp_in(self, layer, pieces: dict[str, Piece]) -> None:
        for name, (w, b) in pieces.items():
            setattr(layer.mlp, f"{name}_proj", new_linear(w, b, getattr(layer.mlp, f"{name}_proj")))

    def set_o_proj(self, layer, proj: nn.Linear) -> None:
        layer.self_attn.o_proj = proj

    def set_down_proj(self, layer, proj: nn.Linear) -> None:
        layer.mlp.down_proj = proj

    def params_per_layer(self) -> int:
        return sum(p.numel() for p in self.layers[0].parameters())

    # --- one layer: norms and the residual ---
    def attn_norm(self, layer) -> nn.Module | None:
        """The norm on the attention's input (None: the family has none)."""
        return layer.input_layernorm

    def mlp_norm(self, layer) -> nn.Module | None:
        return layer.post_attention_layernorm

    def attn_post_norm(self, layer) -> nn.Module | None:
        """A norm on the attention's output, before it joins the residual (Gemma 2/3, OLMo 2)."""
        return None

    def mlp_post_norm(self, layer) -> nn.Module | None:
        return None

    def qk_norms(self, layer) -> tuple[nn.Module, nn.Module] | None:
        """q/k norms after the projections (Qwen3, Gemma 3 per head; OLMo 2 over the whole projection), which
        cannot be folded into the projections."""
        return (layer.self_attn.q_norm, layer.self_attn.k_norm) if self.has_qk_norm else None

    def residual_multiplier(self, layer) -> float:
        """The factor on each sub-layer's update before it joins the residual (Granite)."""
        return 1.0

    def residual_update(self, layer, kind: str, y: torch.Tensor) -> torch.Tensor:
        """What sub-layer `kind` ("attn" or "mlp") adds to the residual, given its output projection's output y."""
        post = self.attn_post_norm(layer) if kind == "attn" else self.mlp_post_norm(layer)
        if post is not None:
            y = post(y)
        m = self.residual_multiplier(layer)
        return y if m == 1.0 else y * m

    def norm_scale(self, norm: nn.Module) -> torch.Tensor:
        """The per-channel factor an RMSNorm applies after normalising (float32)."""
        w = norm.weight.detach().float()
        return w + self.norm_offset if self.norm_offset else w

    def set_norm_identity(self, norm: nn.Module) -> None:
        """Make `norm` scale by one (its scale was folded elsewhere)."""
        with torch.no_grad():
            norm.weight.fill_(1.0 - self.norm_offset)

    # --- one layer: attention type (sliding window or global) ---
    def layer_type(self, layer) -> str | None:
        """The layer's attention type (`config.layer_types` entry); None where the family has one type."""
        return getattr(layer.self_attn, "layer_type", None)

    def set_layer_type(self, layer, layer_type: str) -> None:
        attn = layer.self_attn
        attn.layer_type = layer_type
        if hasattr(attn, "sliding_window"):
            attn.sliding_window = self.config.sliding_window if layer_type == "sliding_attention" else None
        if hasattr(attn, "is_sliding"):
            attn.is_sliding = layer_type == "sliding_attention"

    def merged_layer_type(self, type_a: str, type_b: str) -> str:
        """Type of a layer holding attention heads of both: the global one when they differ (a head that saw the
        whole context keeps it; a sliding-window head loses nothing it had)."""
        return type_a if type_a == type_b else GLOBAL

    # --- structural edits ---
    def set_layers(self, layers: list[nn.Module], kept: list[int] | None = None) -> None:
        """Install `layers` as the stack and make config and per-layer indices agree with it (see sync_config)."""
        self.model.model.layers = nn.ModuleList(layers)
        self.sync_config(kept)

    def sync_config(self, kept: list[int] | None = None) -> None:
        """Renumber `layer_idx`, shrink `num_hidden_layers` and make `layer_types` follow the layers.

        `kept`: for each new layer, the index of the old layer whose per-layer config entries it keeps (used
        where the layers do not carry their own type).
        """
        c = self.config
        old_n = c.num_hidden_layers
        new_n = len(self.layers)
        if kept is None:
            kept = list(range(new_n))
        for i, layer in enumerate(self.layers):
            layer.self_attn.layer_idx = i
            if hasattr(layer, "layer_idx"):
                layer.layer_idx = i
        values = getattr(c, "layer_types", None)
        if isinstance(values, list) and len(values) == old_n:
            own = [self.layer_type(layer) for layer in self.layers]
            c.layer_types = own if None not in own else [values[k] for k in kept]
        c.num_hidden_layers = new_n


def _piece(proj: nn.Linear) -> Piece:
    return proj.weight.detach(), None if proj.bias is None else proj.bias.detach()
