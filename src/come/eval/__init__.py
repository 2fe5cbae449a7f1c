"""Evaluation: perplexity, zero-shot accuracy (lm-evaluation-harness) and speed, with a dense baseline.

The names below load their module on first use (PEP 562): importing one submodule (say `come.eval.stats`)
loads neither torch nor the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from come.lazy import lazy_names

# public name -> the module that defines it
_LAZY = {
    "TASKS": "come.eval.harness",
    "EvalConfig": "come.eval.evaluation",
    "averages": "come.eval.report",
    "evaluate": "come.eval.evaluation",
    "measure_speed": "come.eval.speed",
    "perplexity": "come.eval.ppl",
    "retained": "come.eval.report",
    "save": "come.eval.evaluation",
    "table": "come.eval.report",
}

__all__ = [
    "TASKS", "EvalConfig", "averages", "evaluate", "measure_speed", "perplexity", "retained", "save", "table",
]

if TYPE_CHECKING:
    from come.eval.evaluation import EvalConfig, evaluate, save
    from come.eval.harness import TASKS
    from come.eval.ppl import perplexity
    from come.eval.report import averages, retained, table
    from come.eval.speed import measure_speed


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
