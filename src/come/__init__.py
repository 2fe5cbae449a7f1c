"""CoMe: compress LLMs by concatenating adjacent decoder layers."""

__version__ = "0.1.0"

from come.compare import CompareConfig, compare  # noqa: E402
from come.config import CalibConfig, PruneConfig  # noqa: E402
from come.distillation import DistillConfig, DistillResult, distill  # noqa: E402
from come.errors import ComeError  # noqa: E402
from come.plan import Plan, apply_plan  # noqa: E402
from come.prune import PruneResult, prune  # noqa: E402

__all__ = ["CalibConfig", "ComeError", "CompareConfig", "DistillConfig", "DistillResult", "Plan", "PruneConfig",
           "PruneResult", "apply_plan", "compare", "distill", "prune"]
