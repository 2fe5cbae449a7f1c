"""Hierarchical distillation of a merged (pruned) student from its teacher, and the LoRA recovery baseline.

    config.py      DistillConfig, DistillResult, the training text
    train.py       distill(): a run (models, windows, where it stands), its stages in order, the saved student
    stages.py      each stage as a record: what it trains, with which loss and learning rate
    loop.py        the training loop every stage runs, and the state a checkpoint records
    checkpoint.py  checkpoints in the run folder (come.runstore), read by --resume
    processes.py   rank, world size, device and collectives (torchrun)
    summary.py     distill_summary.json / .md
    correspond.py, losses.py, layerwise.py, global_.py, lora.py, teacher.py: the losses and what they compare
    sharding.py    FSDP2 (--strategy fsdp); memory.py: the --dry-run estimate; cli.py: `come distill`

The names below load their module on first use (PEP 562): `come.distillation.config` (what recipes read) loads
neither torch nor the pruning code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from come.lazy import lazy_names

_LAZY = {
    "Correspondence": "come.distillation.correspond",
    "check_pair": "come.distillation.correspond",
    "correspondences": "come.distillation.correspond",
    "DistillConfig": "come.distillation.config",
    "DistillResult": "come.distillation.config",
    "LossWeights": "come.distillation.losses",
    "distill": "come.distillation.train",
}

__all__ = ["Correspondence", "DistillConfig", "DistillResult", "LossWeights", "check_pair", "correspondences",
           "distill"]

if TYPE_CHECKING:
    from come.distillation.config import DistillConfig, DistillResult
    from come.distillation.correspond import Correspondence, check_pair, correspondences
    from come.distillation.losses import LossWeights
    from come.distillation.train import distill


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
