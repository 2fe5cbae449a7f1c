"""`come compare`: several methods (or variants of one) on the same calibration windows, evaluated the same way,
in one table.

Every method prunes the same model with the same calibration settings (same windows, same seed), its plan (and
model) is saved, and each result and the dense model are scored by `come.eval`. With `sweep`, every depth
between the dense model and the target is scored too: progressive methods by replaying plan prefixes, others by
pruning again at each depth. A `Variant` is a row of its own: a method with PruneConfig settings (and
calibration text) of its own, e.g. `Variant("come-plus, prior zero", "come-plus", {"refit_prior": "zero"})`.

    config.py    CompareConfig, Variant
    run.py       compare(): the rows, resume, the run folder (come.runstore)
    evaluate.py  a model's scores, and its sweep over depths
    report.py    compare.md (numbers from come.eval.report)
    plots.py     compare.png, sweep.png
    cli_args.py  the `come compare` flags and what the command prints
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from come.lazy import lazy_names

# public name -> the module that defines it; loaded on first use (PEP 562), so that `come.compare.config` (what
# recipes read) loads neither torch nor the pruning code
_LAZY = {
    "CompareConfig": "come.compare.config",
    "Variant": "come.compare.config",
    "parse_methods": "come.compare.config",
    "compare": "come.compare.run",
    "evaluate_model": "come.compare.evaluate",
    "fmt_ppl": "come.compare.report",
    "markdown": "come.compare.report",
    "paired_section": "come.compare.report",
    "table": "come.compare.report",
    "_add_paired": "come.compare.report",  # the name the statistics tests import (report.add_paired)
}

__all__ = ["CompareConfig", "Variant", "compare", "evaluate_model", "fmt_ppl", "markdown", "paired_section",
           "parse_methods", "table"]

if TYPE_CHECKING:
    from come.compare.config import CompareConfig, Variant, parse_methods
    from come.compare.evaluate import evaluate_model
    from come.compare.report import fmt_ppl, markdown, paired_section, table
    from come.compare.run import compare


__getattr__, __dir__ = lazy_names(__name__, _LAZY, {"_add_paired": "add_paired"})
