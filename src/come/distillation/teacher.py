"""Teacher states, computed batch by batch as training consumes them (never all held in memory)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from come.capture import first_of_each_type, standalone_kwargs
from come.models import ModelAdapter


class _Stop(Exception):
    pass


@dataclass
class TeacherStates:
    """Boundary states of one batch: `boundary[i]` enters layer i (`boundary[L]` leaves the last layer, before the
    final norm); `type_kwargs` holds, per attention type, what the model hands a layer of that type (mask, RoPE),
    so a layer runs standalone as `layer(h, **states.kwargs_for(layer))`."""

    boundary: dict[int, torch.Tensor]
    type_kwargs: dict[str | None, dict]
    adapter: ModelAdapter
    logits: torch.Tensor | None = None

    def kwargs_for(self, layer) -> dict:
        """The keyword arguments `layer` (of the teacher or of its pruned student) runs with: those of its own
        attention type (a sliding-window layer gets the sliding mask and, in Gemma 3, the local RoPE)."""
        return self.type_kwargs[self.adapter.layer_type(layer)]


def capture_states(model, adapter: ModelAdapter, input_ids: torch.Tensor, keep: set[int] | None = None,
                   logits: bool = False) -> TeacherStates:
    """Run `model` on `input_ids` with hooks and keep the boundaries in `keep` (all when None), and the layer
    keyword arguments of every attention type met on the way.

    Without `logits`, the forward stops after the last boundary needed. Gradients flow if the caller enables them.
    """
    n = adapter.num_layers
    keep = set(range(n + 1)) if keep is None else set(keep)
    upto = n if logits else max(keep)
    out: dict[int, torch.Tensor] = {}
    type_kwargs: dict = {}
    starts = {i: t for t, i in first_of_each_type(adapter).items()}

    def pre(i):
        def fn(_m, args, kw):
            if i in starts:
                type_kwargs[starts[i]] = standalone_kwargs(kw)
            if i == 0 and 0 in keep:
                out[0] = args[0] if args else kw["hidden_states"]
            if upto == 0:
                raise _Stop

        return fn

    def post(i):
        def fn(_m, _args, output):
            if i + 1 in keep:
                out[i + 1] = output[0] if isinstance(output, tuple) else output
            if i + 1 == upto and not logits:
                raise _Stop

        return fn

    handles = [adapter.layers[i].register_forward_pre_hook(pre(i), with_kwargs=True) for i in sorted({0, *starts})]
    handles += [layer.register_forward_hook(post(i)) for i, layer in enumerate(adapter.layers)]
    result = None
    try:
        result = model(input_ids=input_ids, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return TeacherStates(out, type_kwargs, adapter, result.logits if result is not None else None)
