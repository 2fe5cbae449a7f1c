"""CoMe: compress LLMs by concatenating adjacent decoder layers.

The public names below load their module on first use (PEP 562), so `import come` and importing any one
submodule stay light: neither loads torch nor the rest of the package.
"""

from __future__ import annotations

import sys
import types
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from come.lazy import lazy_names

try:
    __version__ = version("come")  # pyproject.toml is the one place the version is written
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# public name -> the module that defines it
_LAZY = {
    "CalibConfig": "come.config",
    "ComeError": "come.errors",
    "CompareConfig": "come.compare",
    "DistillConfig": "come.distillation",
    "DistillResult": "come.distillation",
    "Plan": "come.plan",
    "PruneConfig": "come.config",
    "PruneResult": "come.prune",
    "apply_plan": "come.plan",
    "compare": "come.compare",
    "distill": "come.distillation",
    "prune": "come.prune",
}

__all__ = ["CalibConfig", "ComeError", "CompareConfig", "DistillConfig", "DistillResult", "Plan", "PruneConfig",
           "PruneResult", "apply_plan", "compare", "distill", "prune"]

if TYPE_CHECKING:
    from come.compare import CompareConfig, compare
    from come.config import CalibConfig, PruneConfig
    from come.distillation import DistillConfig, DistillResult, distill
    from come.errors import ComeError
    from come.plan import Plan, apply_plan
    from come.prune import PruneResult, prune


class _Package(types.ModuleType):
    """`come.compare` and `come.prune` are the functions, as they always were, not the submodules of the same
    name: importing such a submodule (which binds it on its package) leaves the public name alone."""

    def __setattr__(self, name: str, value) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
