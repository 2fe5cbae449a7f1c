"""Model loading and architecture adapters (one per family, behind `ModelAdapter`)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from come.assets import MODEL_ALIASES, smollm2_dir
from come.errors import ComeError
from come.models import gemma as _gemma  # noqa: F401  (each module registers its family's adapters)
from come.models import granite as _granite  # noqa: F401
from come.models import llama as _llama  # noqa: F401
from come.models import olmo2 as _olmo2  # noqa: F401
from come.models import phi3 as _phi3  # noqa: F401
from come.models.base import AttnGeometry, ModelAdapter
from come.models.registry import ADAPTERS, check_supported, get_adapter

__all__ = [
    "ADAPTERS",
    "AttnGeometry",
    "ModelAdapter",
    "check_supported",
    "count_params",
    "get_adapter",
    "load_config",
    "load_model",
    "meta_model",
    "parse_dtype",
    "resolve_model",
]

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_model(name: str) -> str:
    """A local folder for an alias or path; a hub id is returned unchanged."""
    if name in MODEL_ALIASES:
        return str(smollm2_dir())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ComeError(f"model folder {path} has no config.json: pass a Hugging Face model folder")
        return str(path)
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ComeError(
            f"model '{name}' is not a folder, a hub id (org/name) or an alias ({', '.join(MODEL_ALIASES)})"
        )
    return name


def checkpoint_dtype(config) -> torch.dtype:
    """The dtype a checkpoint declares in its config (float32 when it declares none)."""
    d = getattr(config, "dtype", None) if config is not None else None
    if isinstance(d, str):
        d = DTYPES.get(d.replace("torch.", ""))
    return d if isinstance(d, torch.dtype) else torch.float32


def save_dtype_for(spec: str, config) -> torch.dtype:
    """`--save-dtype`: "auto" is the checkpoint's own dtype, anything else a dtype name."""
    return checkpoint_dtype(config) if spec == "auto" else parse_dtype(spec)


def parse_dtype(dtype: str | torch.dtype | None, config=None, device: str = "cpu") -> torch.dtype:
    """`auto` is float32 on CPU (bf16 matmuls measured 8x slower than fp32 on this CPU) and the checkpoint's
    dtype on an accelerator."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if str(device).startswith("cpu"):
            return torch.float32
        return checkpoint_dtype(config)
    if dtype not in DTYPES:
        raise ComeError(f"unknown dtype '{dtype}': use one of auto, float32, bfloat16, float16")
    return DTYPES[dtype]


def parse_device(device: str, flag: str = "--device") -> torch.device:
    """torch.device(device), or a one-line error that names the flag it came from."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ComeError(f"{flag} {device!r} is not a device: use cpu, cuda, cuda:N or mps") from None


def check_device_dtype(device: str, dtype: torch.dtype) -> torch.device:
    dev = parse_device(device)
    try:
        a = torch.ones(4, 4, dtype=dtype, device=dev)
        (a @ a).sum().item()
    except Exception as e:
        raise ComeError(
            f"device '{device}' cannot run dtype {str(dtype).replace('torch.', '')} "
            f"({type(e).__name__}): pick another --dtype or --device"
        ) from e
    return dev


def load_config(name: str):
    """(config, local_path_or_id); refuses unsupported architectures before any weights are read."""
    from transformers import AutoConfig

    path = resolve_model(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = "the hub is offline here: pass a local model folder" if offline else "check the name or path"
        raise ComeError(f"could not load model config for '{name}' ({type(e).__name__}): {hint}") from e
    check_supported(config)
    return config, path


def meta_model(config):
    """The model's skeleton on the meta device: shapes and parameter counts without memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def load_model(name: str, dtype: str | torch.dtype | None = "auto", device: str = "cpu",
               weights_device: str | None = None):
    """(model, tokenizer, local_path_or_id) for an alias, folder or hub id; the model in eval mode, computing
    in the dtype `auto` means on `device`, its weights on `weights_device` (default: `device`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, path = load_config(name)
    torch_dtype = parse_dtype(dtype, config, device)
    dev = check_device_dtype(device, torch_dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise ComeError(f"could not load model '{name}' ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    move_model(model, weights_device or dev, name)
    model.eval()
    return model, tokenizer, path


def move_model(model, device, name: str = "the model") -> None:
    """model.to(device); running out of device memory is a one-line error that says what to do."""
    try:
        model.to(device)
    except torch.OutOfMemoryError:
        from come.placement import gib, model_bytes

        model.to("cpu")
        raise ComeError(
            f"{name} ({gib(model_bytes(model))} of weights) "
            f"does not fit on {device}: `come prune` streams it with --offload always; for evaluation use a machine "
            "with more GPU memory or several GPUs (come eval spreads it over all of them), or --device cpu"
        ) from None


def count_params(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
