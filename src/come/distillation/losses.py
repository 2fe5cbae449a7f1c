"""Distillation losses between a student state `s` and a teacher state `t` ([..., hidden]), all in float32."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from come.errors import ComeError


@dataclass
class LossWeights:
    """Weights of the hidden-state terms at each correspondence point, and of the KL on final logits."""

    mse: float = 1.0  # scale-normalised MSE ||s - t||^2 / ||t||^2, per token
    cos: float = 0.0  # 1 - cos(s, t)
    kl: float = 0.0  # logit-lens KL (the teacher's logits function, `ModelAdapter.logits`, on both states)
    logits: float = 1.0  # KL on the final logits (global stage)
    temperature: float = 1.0

    @classmethod
    def parse(cls, spec: str | None, temperature: float = 1.0) -> LossWeights:
        """From `mse=1,cos=0.1,kl=0,logits=1`; terms not named keep their defaults."""
        w = cls(temperature=temperature)
        for item in (spec or "").split(","):
            if not item.strip():
                continue
            key, _, value = item.partition("=")
            key = key.strip()
            if key not in ("mse", "cos", "kl", "logits"):
                raise ComeError(f"unknown loss term {key!r} in --loss: use mse, cos, kl, logits (e.g. mse=1,kl=0.1)")
            try:
                setattr(w, key, float(value))
            except ValueError as e:
                raise ComeError(f"--loss term {key} needs a number, got {value!r} (e.g. {key}=0.5)") from e
        return w

    def validate(self) -> None:
        if min(self.mse, self.cos, self.kl, self.logits) < 0:
            raise ComeError("--loss weights must be >= 0")
        if self.temperature <= 0:
            raise ComeError(f"--temperature must be > 0, got {self.temperature}")


def nmse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ||s - t||^2 / ||t||^2: blind to the residual stream's scale, which grows with depth."""
    s, t = s.float(), t.float()
    return ((s - t).pow(2).sum(-1) / t.pow(2).sum(-1).clamp_min(1e-12)).mean()


def cosine(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (1 - F.cosine_similarity(s.float(), t.float(), dim=-1)).mean()


def kl_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) per token at temperature T, times T^2 (Hinton), averaged over tokens."""
    v = student_logits.shape[-1]
    log_s = F.log_softmax(student_logits.float().reshape(-1, v) / temperature, -1)
    log_t = F.log_softmax(teacher_logits.float().reshape(-1, v) / temperature, -1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * temperature**2


def logit_lens_kl(s: torch.Tensor, t: torch.Tensor, lens, temperature: float = 1.0) -> torch.Tensor:
    """KL of the logit lens: `lens` (the teacher's `ModelAdapter.logits`: final norm, LM head and the family's
    soft-capping or scaling, as its forward makes logits) reads both states."""
    with torch.no_grad():
        t_logits = lens(t)
    return kl_logits(lens(s), t_logits, temperature)


def hidden_loss(s: torch.Tensor, t: torch.Tensor, w: LossWeights, lens=None) -> torch.Tensor:
    """The weighted hidden-state term at one correspondence point (`lens` is needed by the logit-lens term)."""
    loss = s.new_zeros((), dtype=torch.float32)
    if w.mse:
        loss = loss + w.mse * nmse(s, t)
    if w.cos:
        loss = loss + w.cos * cosine(s, t)
    if w.kl:
        loss = loss + w.kl * logit_lens_kl(s, t, lens, w.temperature)
    return loss
