"""A method in one file, as docs/methods.md describes adding one: its options, its cost, its record.

`toy-every-other` drops every `stride`-th layer from the top, with no calibration pass at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from come.cliargs import arg
from come.methods import Method, register
from come.methods.oneshot import drop_ranked


@dataclass
class ToyOptions:
    stride: int = arg(2, flag="--toy-stride", help="drop every stride-th layer from the top first")


def toy_every_other(ctx) -> None:
    n, stride = ctx.num_layers, ctx.options.stride
    first = list(range(n - 1, -1, -stride))
    drop_ranked(ctx, first + [i for i in range(n - 1, -1, -1) if i not in first], {"stride": stride})


def passes(cfg, layers: int, target: int) -> tuple[float, str]:
    return 0.0, f"none: every {cfg.options.stride}th layer goes"


register(Method("toy-every-other", toy_every_other, "ours", options=ToyOptions, passes=passes))
