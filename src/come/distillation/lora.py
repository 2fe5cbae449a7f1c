"""LoRA through peft: adapters for the global stage's `--train lora`, and the LM-loss recovery baseline."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from come.errors import ComeError
from come.models import ModelAdapter, get_adapter


def projections(adapter: ModelAdapter) -> str:
    """Regular expression of the projections LoRA adapts, by module path inside a layer: those the family declares
    (`ModelAdapter.lora_targets`; Phi-3's fused qkv_proj and gate_up_proj, say)."""
    return "(" + "|".join(re.escape(name) for name in adapter.lora_targets) + ")"


def add_lora(model, layers: list[int], rank: int = 8, alpha: float = 16.0):
    """`model` wrapped by peft with adapters on every projection of `layers`; only the adapters train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise ComeError("LoRA needs peft: pip install 'come[distill]' (or pip install peft)") from e
    which = "|".join(str(i) for i in layers)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                     target_modules=rf".*\.layers\.({which})\.{projections(get_adapter(model))}")
    return get_peft_model(model, cfg)


def lora_groups(peft_model) -> list[list[torch.nn.Parameter]]:
    """The adapters (by name: whether they already require gradients depends on who touched them last)."""
    return [[p for n, p in peft_model.named_parameters() if "lora_" in n]]


def lm_loss_fn(student, autocast):
    """micro-batch ids -> (mean next-token cross-entropy, parts): the recovery baseline's loss."""

    def fn(ids: torch.Tensor):
        with autocast():
            logits = student(input_ids=ids, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        return loss, {"lm": loss.item()}

    return fn
