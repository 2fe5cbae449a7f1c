"""What a method works with: the model, its calibration cache, the target, and the plan being written."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from come.capture import Calibration
from come.models import ModelAdapter
from come.plan import apply_step, update_tree


@dataclass
class PruneContext:
    model: object
    adapter: ModelAdapter
    calib: Calibration
    target_layers: int
    config: object  # come.config.PruneConfig
    tree: list[list[int]] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    tensors: dict = field(default_factory=dict)  # weights computed by steps (saved with the plan)
    started: float = field(default_factory=time.perf_counter)
    on_step: object = None  # called with the context after every step (e.g. to write a checkpoint)

    def __post_init__(self) -> None:
        if not self.tree:
            self.tree = [[i] for i in range(self.adapter.num_layers)]

    def apply(self, step: dict, tensors: dict | None = None, more_follows: bool = False) -> None:
        """Apply a step to the model (the same code as replay), record it, and update the merge tree.
        `more_follows`: the step is not a whole decision yet (a merge whose re-fit comes next), so no checkpoint
        is written after it."""
        step["tree_before"] = [list(b) for b in self.tree]
        self.tensors.update(tensors or {})
        apply_step(self.adapter, step, self.tensors)
        update_tree(self.tree, step)
        self.steps.append(step)
        if self.on_step is not None and not more_follows:
            self.on_step(self)
        if getattr(self.config, "progress", False):  # a step of SLEB or come-p can take minutes: say each one
            print(f"[{self.config.method}] step {len(self.steps)}: {step['op']} at layer {step.get('layer')} -> "
                  f"{self.num_layers} layers ({time.perf_counter() - self.started:.0f} s)", file=sys.stderr,
                  flush=True)

    def option(self, key: str):
        """The value of the method's option `key` (its default unless --option set it)."""
        from come.methods.registry import method_options

        return method_options(self.config.method, self.config.method_options)[key]

    @property
    def loss_batches(self) -> int | None:
        """Calibration batches for loss trials: --loss-samples windows, rounded up to whole batches."""
        k = self.config.loss_samples
        return None if k is None else max(1, -(-k // self.config.calib.batch_size))

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers
