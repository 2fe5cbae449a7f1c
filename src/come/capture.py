"""Calibration pass: run the decoder stack layer by layer over fixed windows, with forward hooks.

Hidden states are cached at every layer boundary, so after an edit at layer l only layers l.. are re-run,
and each layer is on the compute device only during its own turn (each layer sees all windows before the
next one runs). Statistics are accumulated in float32 whatever the model dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from come.models import ModelAdapter


class _Caught(Exception):
    pass


class _Recorder(nn.Module):
    """Stands in for decoder layer i: hands what the model passes it to `record` and returns its input."""

    def __init__(self, i: int, record):
        super().__init__()
        self.i, self.record = i, record

    def forward(self, *args, **kwargs):
        h = args[0] if args else kwargs.pop("hidden_states")
        self.record(self.i, h, kwargs)
        return h


@dataclass
class LayerStats:
    """Float32 statistics of one decoder layer over the calibration windows."""

    bi: float  # block influence: sum over tokens of 1 - clamp(cos(h_in, h_out), 0, 1)
    mlp_abs: torch.Tensor  # [d_ff] mean |input of down_proj|
    attn_abs: torch.Tensor  # [H * d_h] mean |input of o_proj|
    tokens: int


@contextmanager
def on_device(module: nn.Module, device: torch.device):
    """Run `module` on `device` for the duration (no-op when it is there): bounded device memory.

    For reading only (forward passes): afterwards the module gets back the very tensors it had at home, so
    streamed weights cross to the device once and are never copied back (nor re-allocated in CPU memory);
    anything written to its parameters or buffers meanwhile is dropped.
    """
    first = next(module.parameters(), None)
    first = first if first is not None else next(module.buffers(), None)  # e.g. a rotary embedding
    home = first.device if first is not None else torch.device(device)
    if home == torch.device(device):
        yield module
        return
    # .to() either swaps a parameter's data in place or installs a new Parameter (e.g. to meta): undo both
    params = [(m, name, p, p.data) for m in module.modules() for name, p in m._parameters.items() if p is not None]
    buffers = [(m, name, b) for m in module.modules() for name, b in m._buffers.items() if b is not None]
    module.to(device)
    try:
        yield module
    finally:
        for m, name, p, data in params:
            p.data = data
            m._parameters[name] = p
        for m, name, b in buffers:
            m._buffers[name] = b


def first_of_each_type(adapter: ModelAdapter) -> dict[str | None, int]:
    """Attention type -> index of its first layer, whose keyword arguments serve every layer of the type."""
    types = [adapter.layer_type(layer) for layer in adapter.layers]
    return {t: i for i, t in reversed(list(enumerate(types)))}


def standalone_kwargs(kwargs: dict) -> dict:
    """What the model hands a layer (mask, RoPE, ...), fit to call the layer on its own: no cache, no states."""
    out = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "cache", "past_key_values")}
    out["use_cache"] = False
    return out


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def cos_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last dim in float32; NaN where a vector is zero (callers decide)."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1, eps=0.0)


class Calibration:
    """Cached layer-boundary hidden states of a model on calibration windows, and per-layer statistics.

    `hidden[i]` is the list (one tensor per batch) of states entering layer i; `hidden[L]` leaves the last
    layer, before the final norm.
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: ModelAdapter,
        input_ids: torch.Tensor,
        batch_size: int = 8,
        device: torch.device | str | None = None,
        store_device: torch.device | str | None = None,
        progress: bool = True,
        cache_dir: str | None = None,
    ):
        self.model = model
        self.adapter = adapter
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        # "disk": the cached boundaries live in memory-mapped files under `cache_dir` (come.diskcache); the
        # states of trials, which nothing keeps, in CPU memory
        self.disk = None
        if store_device == "disk":
            from come.diskcache import DiskCache

            self.disk, store_device = DiskCache(cache_dir), "cpu"
        self.store_device = torch.device(store_device) if store_device is not None else self.device
        self.input_ids = input_ids
        self.batches = list(input_ids.split(batch_size))
        self.progress = progress
        self.type_kwargs: dict[str | None, list[dict]] = {}  # per attention type, per batch: a layer's kwargs
        self.layer_kwargs: list[dict] = []  # those of layer 0's type (all layers' where the model has one type)
        self.hidden: list[list[torch.Tensor]] = []
        self.stats: list[LayerStats] = []
        self._embed()

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()

    @torch.no_grad()
    def _embed(self) -> None:
        """Embed each batch and catch the keyword arguments the model hands its layers (mask, RoPE), once per
        attention type: a sliding-window layer gets its own mask (and, in Gemma 3, its own RoPE)."""
        layers = self.adapter.layers
        types = [self.adapter.layer_type(layer) for layer in layers]
        first = first_of_each_type(self.adapter)
        caught: dict = {}

        def record(i: int, h: torch.Tensor, kwargs: dict) -> None:
            if i == 0:
                caught["h"] = h
            if first[types[i]] == i:
                caught[types[i]] = standalone_kwargs(kwargs)
            if i == len(types) - 1:
                raise _Caught

        states = []
        self.type_kwargs = {t: [] for t in first}
        inner = self.model.model
        modules = [m for m in (self.adapter.embed_tokens(), getattr(inner, "rotary_emb", None)) if m is not None]
        with _stand_in(self.model, layers, nn.ModuleList(_Recorder(i, record) for i in range(len(layers)))):
            for batch in self.batches:
                with _all_on_device(modules, self.device):
                    try:
                        self.model(input_ids=batch.to(self.device), use_cache=False)
                    except _Caught:
                        pass
                for t in first:
                    self.type_kwargs[t].append(caught[t])
                states.append(caught["h"].to(self.store_device))
        self.layer_kwargs = self.type_kwargs[types[0]]
        self.hidden = [states if self.disk is None else self.disk.store(states)]

    def close(self) -> None:
        """Remove the disk cache's files (a no-op for a cache in memory)."""
        if self.disk is not None:
            self.disk.close()

    def kwargs_for(self, layer: nn.Module) -> list[dict]:
        """Per batch, the keyword arguments `layer` runs with (those of its attention type)."""
        return self.type_kwargs[self.adapter.layer_type(layer)]

    def run(self, start: int = 0) -> None:
        """(Re)compute boundaries start+1..L and stats of layers start..L-1 from the cached `hidden[start]`."""
        del self.hidden[start + 1 :]
        del self.stats[start:]
        layers = self.adapter.layers
        it = range(start, len(layers))
        if self.progress:
            it = tqdm(it, desc="calibration", unit="layer", leave=False)
        for i in it:
            out, stats = self.run_layer(layers[i], self.hidden[i], collect=True, cache=True)
            self.hidden.append(out)
            self.stats.append(stats)

    def refresh(self, start: int, needed: bool = True) -> None:
        """After a step changed layer `start`: re-run the cache from it when another decision will read it;
        after the last step nothing does, and the stale part is dropped instead (one suffix pass saved)."""
        if needed:
            self.run(start)
        else:
            del self.hidden[start + 1 :]
            del self.stats[start:]

    @torch.no_grad()
    def run_layer(
        self, layer: nn.Module, inputs: Sequence[torch.Tensor], collect: bool = False,
        kwargs: Sequence[dict] | None = None, cache: bool = False,
    ) -> tuple[list[torch.Tensor], LayerStats | None]:
        """Run one layer over all batches; with `collect`, hook its o_proj/down_proj inputs for statistics.
        `kwargs`: per batch, the layer's keyword arguments (default: those of the calibration batches). `cache`:
        the outputs are a boundary of the cache (written to the disk cache as they come, when there is one)."""
        a = self.adapter
        acc = {"mlp": None, "attn": None}
        handles = []
        if collect:

            def hook(key):
                def fn(_m, args):
                    x = args[0].detach()
                    s = x.abs().float().reshape(-1, x.shape[-1]).sum(0)
                    acc[key] = s if acc[key] is None else acc[key] + s

                return fn

            handles = [
                a.down_proj(layer).register_forward_pre_hook(hook("mlp")),
                a.o_proj(layer).register_forward_pre_hook(hook("attn")),
            ]
        outs, bi, tokens = ([] if not cache or self.disk is None else self.disk.store()), 0.0, 0
        try:
            with on_device(layer, self.device):
                for h, kw in zip(inputs, self.kwargs_for(layer) if kwargs is None else kwargs):
                    h_dev = h.to(self.device)
                    out = _first(layer(h_dev, **kw))
                    if collect:
                        bi += block_influence(h_dev, out)
                        tokens += h.shape[0] * h.shape[1]
                    outs.append(out.to(self.store_device))
        finally:
            for hd in handles:
                hd.remove()
        if not collect:
            return outs, None
        return outs, LayerStats(bi, (acc["mlp"] / tokens).cpu(), (acc["attn"] / tokens).cpu(), tokens)

    @torch.no_grad()
    def forward_from(self, start: int, layers: Sequence[nn.Module], n_batches: int | None = None,
                     windows: torch.Tensor | None = None, loss=None) -> float:
        """Mean next-token NLL when `layers` replace the stack from boundary `start` on (a trial, cache untouched);
        over the windows selected by the boolean mask `windows` (default: all). Only the selected windows run
        through the layers: a window's states do not depend on the others in its batch (bit for bit). `loss`:
        another score of the final states, loss(states, token ids) per kept batch (come-splice's KL)."""
        states, ids, keep, picked = self._select(self.hidden[start][:n_batches], n_batches, windows)
        kwargs = None
        if windows is not None:
            kwargs = {}
            for layer in layers:  # per attention type, the kwargs of the kept windows of each kept batch
                t = self.adapter.layer_type(layer)
                if t not in kwargs:
                    per_batch = self.type_kwargs[t]
                    kwargs[t] = [select_windows(per_batch[b], keep[b]) for b in picked]
        for layer in layers:
            kw = None if kwargs is None else kwargs[self.adapter.layer_type(layer)]
            states, _ = self.run_layer(layer, states, kwargs=kw)
        return (loss or self._nll)(states, ids)

    @torch.no_grad()
    def nll(self, final_states: Sequence[torch.Tensor], n_batches: int | None = None,
            windows: torch.Tensor | None = None) -> float:
        """Mean next-token NLL (float32) of the final norm + LM head on the last-layer states; only the windows
        whose entry of the boolean mask `windows` (one per calibration window) is True, when given."""
        states, ids, _, _ = self._select(final_states, n_batches, windows)
        return self._nll(states, ids)

    def _select(self, states: Sequence[torch.Tensor], n_batches: int | None, windows: torch.Tensor | None):
        """(states, token ids) of the first `n_batches` batches cut to the windows of the boolean mask `windows`
        (batches left without a window dropped), with the per-batch masks and the kept batches' indices."""
        states, ids = list(states), self.batches[:n_batches]
        if windows is None:
            return states, ids, None, range(len(states))
        keep = windows.split([b.shape[0] for b in self.batches])
        picked = [b for b in range(len(states)) if keep[b].any()]
        return ([states[b][keep[b].to(states[b].device)] for b in picked], [ids[b][keep[b]] for b in picked],
                keep, picked)

    def _nll(self, final_states: Sequence[torch.Tensor], batches: Sequence[torch.Tensor]) -> float:
        a = self.adapter
        total, count = 0.0, 0
        with _all_on_device([a.final_norm(), a.lm_head()], self.device):
            for h, ids in zip(final_states, batches):
                for hb, ib in zip(h.split(2), ids.split(2)):  # 2 windows at a time bounds the logits' memory
                    # the last position predicts nothing: leaving it out of the LM head makes the logits contiguous,
                    # where slicing them afterwards copied 2 x seq_len x vocab floats per chunk (the same values)
                    logits = a.logits(hb[:, :-1].to(self.device)).float()
                    labels = ib.to(self.device)
                    loss = F.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum"
                    )
                    total += loss.item()
                    count += labels[:, 1:].numel()
        return total / count

    def final_nll(self) -> float:
        return self.nll(self.hidden[-1])


def select_windows(kwargs: dict, keep: torch.Tensor) -> dict:
    """A layer's keyword arguments for the windows `keep` (a boolean mask over its batch) of a batch: tensors
    with one row per window (e.g. a per-window attention mask) are cut; shared ones (RoPE, positions) are kept."""
    n = keep.shape[0]

    def cut(v):
        if torch.is_tensor(v):
            return v[keep.to(v.device)] if n > 1 and v.dim() > 0 and v.shape[0] == n else v
        if isinstance(v, tuple):
            return tuple(cut(x) for x in v)
        return v

    return {k: cut(v) for k, v in kwargs.items()}


@contextmanager
def _stand_in(model: nn.Module, layers: nn.ModuleList, stand_ins: nn.ModuleList):
    """Put `stand_ins` where the model keeps `layers` for the duration."""
    parent, name = next((m, n) for m in model.modules() for n, c in m.named_children() if c is layers)
    setattr(parent, name, stand_ins)
    try:
        yield
    finally:
        setattr(parent, name, layers)


@contextmanager
def _all_on_device(modules: list[nn.Module], device: torch.device):
    with ExitStack() as stack:
        for m in modules:
            stack.enter_context(on_device(m, device))
        yield


def block_influence(h_in: torch.Tensor, h_out: torch.Tensor) -> float:
    """sum over tokens of 1 - clamp(cos(h_in, h_out), 0, 1); a NaN cosine counts as 0.5."""
    d = 1 - cos_rows(h_in, h_out).clamp(0, 1)
    return torch.nan_to_num(d, nan=0.5).sum().item()
