"""Hierarchical distillation of a merged (pruned) student from its teacher, and the LoRA recovery baseline."""

from come.distillation.correspond import Correspondence, check_pair, correspondences
from come.distillation.losses import LossWeights
from come.distillation.train import DistillConfig, DistillResult, distill

__all__ = ["Correspondence", "DistillConfig", "DistillResult", "LossWeights", "check_pair", "correspondences",
           "distill"]
