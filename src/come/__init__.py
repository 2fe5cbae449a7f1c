"""CoMe: compress LLMs by concatenating adjacent decoder layers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("come")  # pyproject.toml is the one place the version is written
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

from come.compare import CompareConfig, compare  # noqa: E402
from come.config import CalibConfig, PruneConfig  # noqa: E402
from come.distillation import DistillConfig, DistillResult, distill  # noqa: E402
from come.errors import ComeError  # noqa: E402
from come.plan import Plan, apply_plan  # noqa: E402
from come.prune import PruneResult, prune  # noqa: E402

__all__ = ["CalibConfig", "ComeError", "CompareConfig", "DistillConfig", "DistillResult", "Plan", "PruneConfig",
           "PruneResult", "apply_plan", "compare", "distill", "prune"]
