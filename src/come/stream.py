"""Weights streamed from the checkpoint (`--stream`, chosen with the offload): the decoder layers are read from
the model's safetensors files (`safe_open`, memory-mapped) one layer at a time when something needs them, and
released after, so CPU memory holds the embedding, the final norm and the LM head, and a few decoder layers.

The model is built on the meta device (Accelerate's `init_empty_weights`) and only its non-layer weights are
read. Each parameter-holding module of a decoder layer gets a `LazyParams` parameter table: whatever reads a
parameter of a released layer (a forward pass, a merge, a score, `.to(device)`, `deepcopy`, `state_dict`) first
has the `Streamer` read that whole layer back. At most `limit` registered layers are held at once: holding one
more releases the least recently used (layers no longer in the model first). A layer whose weights changed
since it was read (a re-fit), or that a step made (a merge), is written to a scratch safetensors file under
`--cache-dir` when released and read back from there, so the computation is exactly that of a run with every
weight in memory. `Streamer.save` writes the pruned model layer by layer as sharded safetensors with an index.

A change is seen through each weight's identity and its version counter, which every in-place operation on it
advances; an edit through `.data` (`p.data.copy_(x)`) advances no counter and would be lost at the release: come
edits weights in place under `torch.no_grad()` or installs new ones, never through `.data`.
"""

from __future__ import annotations

import copy
import json
import shutil
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from come.errors import ComeError

DEFAULT_LIMIT = 3  # a merge's two layers and the layer it makes
SHARD_BYTES = 4 * 2**30  # at most this much of the result in memory while it is written
_PEEK = [0]  # > 0: parameters are read for their shapes only (counting), a released layer stays released


@contextmanager
def peek() -> Iterator[None]:
    """Within it, reading a streamed layer's parameters does not load them: for code that needs shapes only."""
    _PEEK[0] += 1
    try:
        yield
    finally:
        _PEEK[0] -= 1


def unstream(model: nn.Module) -> None:
    """Make a streamed model (`load_streamed`) a plain one, every layer in memory; a no-op on any other model."""
    streamer = getattr(model, "come_streamer", None)
    if streamer is not None:
        streamer.unstream()


def read_tensors(sources: dict[str, tuple[str, str]], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """{name: tensor} for {name: (safetensors file, key)}: each read through a memory map (safe_open) and cast to
    `dtype` when floating. The one place streamed weights are read (tests count its calls)."""
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    by_file: dict[str, list[tuple[str, str]]] = {}
    for name, (file, key) in sources.items():
        by_file.setdefault(file, []).append((name, key))
    for file, pairs in by_file.items():
        with safe_open(file, "pt", device="cpu") as st:
            for name, key in pairs:
                t = st.get_tensor(key)
                out[name] = t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t
    return out


class LazyParams(dict):
    """A module's parameter table that has its streamer load the module's decoder layer before any parameter is
    read (names and membership need no load). A deep copy is a plain table of copies of the loaded weights."""

    def __init__(self, params: dict, streamer: Streamer, layer: nn.Module):
        super().__init__(params)
        self._refs = (weakref.ref(streamer), weakref.ref(layer))

    def _load(self) -> None:
        streamer, layer = (r() for r in self._refs)
        if streamer is not None and layer is not None:
            streamer.hold(layer)

    def __getitem__(self, key):
        self._load()
        return dict.__getitem__(self, key)

    def get(self, key, default=None):
        self._load()
        return dict.get(self, key, default)

    def items(self):
        self._load()
        return dict.items(self)

    def values(self):
        self._load()
        return dict.values(self)

    def __deepcopy__(self, memo):
        self._load()
        return {k: copy.deepcopy(v, memo) for k, v in dict.items(self)}

    def __reduce_ex__(self, protocol):
        self._load()
        return dict, (dict(dict.items(self)),)


class _Layer:
    """What the streamer knows of one decoder layer: where its weights are read from (None: only in memory)."""

    def __init__(self, sources: dict[str, tuple[str, str]] | None, requires_grad: dict[str, bool]):
        self.sources = sources
        self.requires_grad = requires_grad
        # while held: each weight (a weak reference, so a freed one is never mistaken for a new one at its address)
        # and its version counter, which in-place edits advance
        self.snapshot: dict[str, tuple[weakref.ref, int]] | None = None
        self.scratch: str | None = None


class Streamer:
    """Holds at most `limit` of the model's decoder layers in memory (see the module's docstring)."""

    def __init__(self, model: nn.Module, adapter, dtype: torch.dtype, scratch_dir: str | Path | None,
                 limit: int = DEFAULT_LIMIT):
        if limit < 2:
            raise ValueError("a streamer must hold at least 2 layers (a merge reads two)")
        self.adapter, self.dtype, self.limit = adapter, dtype, limit
        self._model = weakref.ref(model)
        self.layers: weakref.WeakKeyDictionary[nn.Module, _Layer] = weakref.WeakKeyDictionary()
        self.held: OrderedDict[nn.Module, _Layer] = OrderedDict()
        self.scratch_dir = scratch_dir
        self._scratch_root: Path | None = None
        self._finalizer = None
        self._files = 0
        self.adopting = True  # register the layers steps put into the model (off while unstreaming)
        self.loads = 0  # layers read so far (from the checkpoint or the scratch files)
        self.max_held = 0

    # --- registering layers ---
    def register(self, layer: nn.Module, sources: dict[str, tuple[str, str]] | None) -> None:
        """Stream `layer`: from `sources` ({parameter name: (file, key)}; its parameters are meta now) or, with
        None, a layer in memory that goes to a scratch file when released."""
        grads = {n: p.requires_grad for n, p in _params(layer)}
        state = _Layer(sources, grads)
        self.layers[layer] = state
        self._wrap(layer)
        if sources is None:
            state.snapshot = {}  # differs from any weights: written out when released
            self.held[layer] = state
            self._trim(keep=layer)

    def _wrap(self, layer: nn.Module) -> None:
        for m in layer.modules():
            if type(m.__dict__["_parameters"]) is not LazyParams:
                m.__dict__["_parameters"] = LazyParams(m.__dict__["_parameters"], self, layer)

    def _adopt(self) -> None:
        """Register the layers a step put into the model (a merge's) as layers in memory."""
        if not self.adopting:
            return
        for layer in list(self.adapter.layers):
            if layer not in self.layers and any(True for _ in _params(layer)):
                self.register(layer, None)

    # --- holding and releasing ---
    def hold(self, layer: nn.Module) -> None:
        """Have `layer`'s weights in memory (read them when released), as its most recently used."""
        state = self.layers.get(layer)
        if state is None or _PEEK[0]:
            return
        if layer in self.held:
            self.held.move_to_end(layer)
            return
        self._adopt()
        self.held[layer] = state
        self._trim(keep=layer)
        sources = state.sources
        tensors = read_tensors(sources, self.dtype)
        self.loads += 1
        modules = dict(layer.named_modules())
        for name, t in tensors.items():
            mod, _, leaf = name.rpartition(".")
            dict.__setitem__(modules[mod].__dict__["_parameters"], leaf,
                             _parameter(t, state.requires_grad.get(name, False)))
        state.snapshot = _snapshot(layer)

    def _trim(self, keep: nn.Module) -> None:
        """Release layers until at most `limit` are held: first those no longer in the model, then the least
        recently used."""
        while len(self.held) > self.limit:
            current = {id(x) for x in self.adapter.layers}
            victim = next((x for x in self.held if x is not keep and id(x) not in current),
                          next(x for x in self.held if x is not keep))
            self.release(victim)
        self.max_held = max(self.max_held, len(self.held))

    def release(self, layer: nn.Module) -> None:
        """Put `layer`'s weights back on the meta device; weights that changed since they were read (or were
        never on disk) are first written to a scratch file, which they are read from next time."""
        state = self.held.pop(layer)
        if _changed(layer, state.snapshot):
            self._wrap(layer)  # modules a step installed (a merge's new projections)
            path = self._new_scratch()
            weights = {n: p.detach().contiguous() for n, p in _params(layer)}
            from safetensors.torch import save_file

            save_file(weights, path)
            state.sources = {n: (path, n) for n in weights}
            state.requires_grad = {n: p.requires_grad for n, p in _params(layer)}
            if state.scratch is not None:
                Path(state.scratch).unlink(missing_ok=True)
            state.scratch = path
            weakref.finalize(layer, Path(path).unlink, True)
        for m in layer.modules():
            table = m.__dict__["_parameters"]
            for name, p in list(dict.items(table)):
                if p is not None:
                    dict.__setitem__(table, name, nn.Parameter(torch.empty_like(p, device="meta"),
                                                               requires_grad=p.requires_grad))
        state.snapshot = None

    @staticmethod
    def peek():
        """`peek()`, reachable from the model (`model.come_streamer.peek()`) by code that must not import this
        module (come.models.loading: this module imports it)."""
        return peek()

    def unstream(self) -> None:
        """Read every layer of the model into memory for good and make the model a plain one again (for a use
        of the whole model: evaluating it, moving it to a device)."""
        self.adopting = False
        for layer in list(self.adapter.layers):
            if layer in self.layers:
                self.hold(layer)
                self.held.pop(layer, None)
                del self.layers[layer]
                for m in layer.modules():
                    m.__dict__["_parameters"] = dict(dict.items(m.__dict__["_parameters"]))
        model = self._model()
        if model is not None and getattr(model, "come_streamer", None) is self:
            del model.come_streamer

    def held_layers(self) -> int:
        """How many registered layers have their weights in memory now (counted from the modules themselves)."""
        return sum(1 for layer in list(self.layers.keys())
                   if any(p.device.type != "meta" for _, p in _params(layer)))

    # --- scratch files ---
    def _new_scratch(self) -> str:
        if self._scratch_root is None:
            from come.diskcache import check_cache_dir
            from come.io import new_temporary

            self._scratch_root = new_temporary(check_cache_dir(self.scratch_dir) / "come-stream")
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._scratch_root), True)
        self._files += 1
        return str(self._scratch_root / f"layer-{self._files}.safetensors")

    def close(self) -> None:
        """Remove the scratch files (the model's changed layers can no longer be read after this)."""
        if self._finalizer is not None:
            self._finalizer()

    # --- writing the result ---
    def save(self, folder: str | Path, dtype: torch.dtype | None = None, shard_bytes: int | None = None) -> None:
        """Write the model as Hugging Face safetensors shards with an index (`model.safetensors` when one shard),
        and its config, reading one decoder layer at a time: at most `shard_bytes` of the result (plus the held
        layers) in memory. Floating weights are cast to `dtype` (default: the model's)."""
        from safetensors.torch import save_file

        model = self._model()
        folder = Path(folder)
        dtype = dtype or self.dtype
        shard_bytes = shard_bytes or SHARD_BYTES
        config = model.config
        tied = bool(getattr(config, "tie_word_embeddings", False))
        prefix = _layers_prefix(model, self.adapter)

        def cast(t: torch.Tensor) -> torch.Tensor:
            t = t.detach().to("cpu")
            return (t.to(dtype) if t.is_floating_point() else t).contiguous()

        shards: list[list[str]] = []  # the keys of each shard written
        buffer: dict[str, torch.Tensor] = {}
        size = [0, 0]  # bytes in the buffer, in all

        def flush() -> None:
            if buffer:
                save_file(buffer, str(folder / f".shard-{len(shards)}.tmp"), metadata={"format": "pt"})
                shards.append(list(buffer))
                buffer.clear()
                size[0] = 0

        def add(key: str, t: torch.Tensor) -> None:
            if size[0] and size[0] + t.numel() * t.element_size() > shard_bytes:
                flush()
            buffer[key] = t
            size[0] += t.numel() * t.element_size()
            size[1] += t.numel() * t.element_size()

        layer_ids = {id(x) for x in self.adapter.layers}
        seen: set[int] = set()
        for name, p in _named_outside(model, layer_ids):
            if tied and name == "lm_head.weight":
                continue
            if p.data_ptr() in seen:
                continue
            seen.add(p.data_ptr())
            add(name, cast(p))
        for j, layer in enumerate(self.adapter.layers):
            self.hold(layer)
            for name, p in _params(layer):
                add(f"{prefix}.{j}.{name}", cast(p))
        flush()
        n = len(shards)
        weight_map = {}
        for i, keys in enumerate(shards):
            file = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (folder / f".shard-{i}.tmp").rename(folder / file)
            weight_map.update({k: file for k in keys})
        if n > 1:
            index = {"metadata": {"total_size": size[1]}, "weight_map": dict(sorted(weight_map.items()))}
            (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        config.save_pretrained(folder)
        saved = json.loads((folder / "config.json").read_text())
        saved["dtype"] = str(dtype).replace("torch.", "")  # the weights on disk, whatever computed
        (folder / "config.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(folder)


def _parameter(t: torch.Tensor, requires_grad: bool) -> nn.Parameter:
    """A streamed weight as a parameter (the one place they are made: tests follow their lifetime)."""
    return nn.Parameter(t, requires_grad=requires_grad)


def _params(layer: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(qualified name, parameter) of a layer, read without loading it."""
    for mname, m in layer.named_modules():
        for name, p in dict.items(m.__dict__["_parameters"]):
            if p is not None:
                yield (f"{mname}.{name}" if mname else name), p


def _snapshot(layer: nn.Module) -> dict[str, tuple[weakref.ref, int]]:
    return {n: (weakref.ref(p), p._version) for n, p in _params(layer)}


def _changed(layer: nn.Module, snapshot: dict[str, tuple[weakref.ref, int]]) -> bool:
    """Whether `layer`'s weights are not those `snapshot` recorded: another set of names, a weight replaced, or
    one edited in place."""
    now = dict(_params(layer))
    if now.keys() != snapshot.keys():
        return True
    return any(ref() is not now[n] or now[n]._version != version for n, (ref, version) in snapshot.items())


def _named_outside(model: nn.Module, layer_ids: set[int]) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's parameters and persistent buffers outside its decoder layers, by state-dict name."""
    state = {}
    for mname, m in model.named_modules():
        if any(id(m) == i for i in layer_ids) or _inside(mname, model, layer_ids):
            continue
        for name, p in dict.items(m.__dict__["_parameters"]):
            if p is not None:
                state[f"{mname}.{name}" if mname else name] = p
        for name, b in m._buffers.items():
            if b is not None and name not in m._non_persistent_buffers_set:
                state[f"{mname}.{name}" if mname else name] = b
    return iter(state.items())


def _inside(mname: str, model: nn.Module, layer_ids: set[int]) -> bool:
    parts = mname.split(".")
    obj = model
    for part in parts[:-1] if mname else []:
        obj = obj._modules[part]
        if id(obj) in layer_ids:
            return True
    return False


def _layers_prefix(model: nn.Module, adapter) -> str:
    """The state-dict name of the decoder layer list ("model.layers")."""
    return next(name for name, m in model.named_modules() if m is adapter.layers)


def streamable(name: str) -> bool:
    """Whether model `name` has local safetensors weights to stream (a hub id not downloaded yet, or a folder with
    only PyTorch weights, has not)."""
    from come.models import load_config, model_folder, weight_files

    folder = model_folder(load_config(name)[1])
    return folder is not None and bool(weight_files(folder))


def load_streamed(name: str, dtype: torch.dtype, device: str, scratch_dir: str | None = None,
                  limit: int = DEFAULT_LIMIT):
    """(model, tokenizer, local path) like `load_model`, with the decoder layers streamed from the checkpoint's
    safetensors files (see the module's docstring). The non-layer weights are read into CPU memory."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from come.models import check_device_dtype, get_adapter, load_config, model_folder, weight_files
    from come.models.loading import TRUST_REMOTE_CODE

    config, path = load_config(name)
    check_device_dtype(device, dtype)
    folder = model_folder(path)
    files = weight_files(folder) if folder is not None else []
    if not files:
        raise ComeError(f"model '{name}' has no local safetensors weights to stream layer by layer: pass --stream "
                        "never (or convert the checkpoint to safetensors)")
    keys: dict[str, str] = {}
    from safetensors import safe_open

    for f in files:
        with safe_open(str(f), "pt") as st:
            keys.update({k: str(f) for k in st.keys()})
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=TRUST_REMOTE_CODE)
    adapter = get_adapter(model)
    prefix = _layers_prefix(model, adapter)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    wanted = [n for n, _ in model.named_parameters() if not (tied and n == "lm_head.weight")]
    missing = [n for n in wanted if n not in keys]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ComeError(f"model '{name}': {len(missing)} weights are not in its safetensors files under the names "
                        f"the model uses ({shown}): pass --stream never")
    layer_ids = {id(x) for x in adapter.layers}
    outside = [n for n, _ in _named_outside(model, layer_ids)]
    for n in outside:
        if n in keys:
            set_module_tensor_to_device(model, n, "cpu", value=read_tensors({n: (keys[n], n)}, dtype)[n])
    if tied:
        model.tie_weights()
    streamer = Streamer(model, adapter, dtype, scratch_dir, limit)
    for i, layer in enumerate(adapter.layers):
        local = [n for n, _ in _params(layer)]
        streamer.register(layer, {n: (keys[f"{prefix}.{i}.{n}"], f"{prefix}.{i}.{n}") for n in local})
    model.come_streamer = streamer
    model.eval()
    if (Path(folder) / "generation_config.json").exists():  # what from_pretrained reads beside the weights
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=TRUST_REMOTE_CODE)
    except Exception as e:
        raise ComeError(f"could not load the tokenizer of '{name}' ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]})") from e
    return model, tokenizer, path
