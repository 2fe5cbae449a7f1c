"""Hierarchical distillation of a merged (pruned) student from its teacher, and the LoRA recovery baseline."""

from come.distill.correspond import Correspondence, check_pair, correspondences
from come.distill.losses import LossWeights
from come.distill.train import DistillConfig, DistillResult, distill

__all__ = ["Correspondence", "DistillConfig", "DistillResult", "LossWeights", "check_pair", "correspondences",
           "distill"]
