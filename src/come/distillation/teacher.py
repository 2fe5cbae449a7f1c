"""Teacher states, computed batch by batch as training consumes them (never all held in memory)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from come.models import ModelAdapter


class _Stop(Exception):
    pass


@dataclass
class TeacherStates:
    """Boundary states of one batch: `boundary[i]` enters layer i (`boundary[L]` leaves the last layer, before the
    final norm); `layer_kwargs` calls a decoder layer standalone (`layer(h, **layer_kwargs)`)."""

    boundary: dict[int, torch.Tensor]
    layer_kwargs: dict
    logits: torch.Tensor | None = None


def capture_states(model, adapter: ModelAdapter, input_ids: torch.Tensor, keep: set[int] | None = None,
                   logits: bool = False) -> TeacherStates:
    """Run `model` on `input_ids` with hooks and keep the boundaries in `keep` (all when None).

    Without `logits`, the forward stops after the last boundary needed. Gradients flow if the caller enables them.
    """
    n = adapter.num_layers
    keep = set(range(n + 1)) if keep is None else set(keep)
    upto = n if logits else max(keep)
    out: dict[int, torch.Tensor] = {}
    kwargs: dict = {}

    def pre(_m, args, kw):
        h = args[0] if args else kw["hidden_states"]
        kwargs.update({k: v for k, v in kw.items() if k not in ("hidden_states", "past_key_values", "cache")})
        kwargs["use_cache"] = False
        if 0 in keep:
            out[0] = h
        if upto == 0:
            raise _Stop

    def post(i):
        def fn(_m, _args, output):
            if i + 1 in keep:
                out[i + 1] = output[0] if isinstance(output, tuple) else output
            if i + 1 == upto and not logits:
                raise _Stop

        return fn

    handles = [adapter.layers[0].register_forward_pre_hook(pre, with_kwargs=True)]
    handles += [layer.register_forward_hook(post(i)) for i, layer in enumerate(adapter.layers)]
    result = None
    try:
        result = model(input_ids=input_ids, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return TeacherStates(out, kwargs, result.logits if result is not None else None)
