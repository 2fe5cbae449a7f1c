"""What a method works with: the model, its calibration cache, the target, and the plan being written."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from come.capture import Calibration
from come.models import ModelAdapter
from come.plan import apply_step, update_tree

log = logging.getLogger("come.prune")


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
    bar: object = None  # the progress bar of layers removed (with --progress)
    options: object = None  # the method's options (an instance of its record's `options`), from the config

    def __post_init__(self) -> None:
        if not self.tree:
            self.tree = [[i] for i in range(self.adapter.num_layers)]
        if self.options is None:
            from come.methods.registry import get_method

            self.options = get_method(self.config.method).parse_options(self.config.method_options)

    def trials(self, items, what: str):
        """`items` with a progress bar of their own (a step's trials can take minutes), when progress is on."""
        items = list(items)
        show = getattr(self.config, "progress", False) and len(items) > 1
        return tqdm(items, desc=f"  {what}", unit="trial", leave=False, disable=not show)

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
        # the bar names each step when it is shown; otherwise a log line does (a line beside a bar breaks it)
        log.log(logging.DEBUG if getattr(self.config, "progress", False) else logging.INFO,
                "%s step %d: %s at layer %s -> %d layers (%.0f s)", self.config.method, len(self.steps), step["op"],
                step.get("layer"), self.num_layers, time.perf_counter() - self.started)
        if getattr(self.config, "progress", False):  # a step of SLEB or come-p can take minutes: show each one
            if self.bar is None:
                self.bar = tqdm(total=len(step["tree_before"]) - self.target_layers, desc=f"prune {self.config.method}",
                                unit="layer")
            self.bar.update(len(step["tree_before"]) - self.num_layers)
            self.bar.set_postfix_str(f"step {len(self.steps)}: {step['op']} at {step.get('layer')}")
            if self.num_layers <= self.target_layers:
                self.bar.close()

    def refresh(self, l: int) -> None:
        """After a step changed layer `l`: bring the calibration cache up to date from it, when another decision
        will read it (Calibration.refresh)."""
        self.calib.refresh(l, self.num_layers > self.target_layers)

    @property
    def loss_batches(self) -> int | None:
        """Calibration batches for loss trials: --loss-samples windows, rounded up to whole batches."""
        k = self.config.loss_samples
        return None if k is None else max(1, -(-k // self.config.calib.batch_size))

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers
