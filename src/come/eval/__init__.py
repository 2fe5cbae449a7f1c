"""Evaluation: perplexity, zero-shot accuracy (lm-evaluation-harness) and speed, with a dense baseline."""

from come.eval.evaluation import EvalConfig, evaluate, save
from come.eval.harness import TASKS
from come.eval.ppl import perplexity
from come.eval.report import averages, retained, table
from come.eval.speed import measure_speed

__all__ = [
    "TASKS", "EvalConfig", "averages", "evaluate", "measure_speed", "perplexity", "retained", "save", "table",
]
