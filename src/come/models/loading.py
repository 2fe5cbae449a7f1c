"""Loading a model: names (aliases, folders, hub ids), dtypes and devices, the config, the weights (checked against
the config), remote code refused unless trusted, and a cheap fingerprint of a checkpoint."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from come.assets import MODEL_ALIASES, alias_dir
from come.errors import ComeError
from come.models.registry import check_supported
from come.placement import move_model

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
        return str(alias_dir(name))
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
    """torch.device(device), or a one-line error that names the flag it came from (also for a GPU that is not
    there)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ComeError(f"{flag} {device!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    missing = _missing_device(dev)
    if missing:
        raise ComeError(f"{flag} {device!r}: device '{device}' cannot run here, {missing}: pass {flag} cpu")
    return dev


def _missing_device(dev: torch.device) -> str | None:
    """Why `dev` is not usable on this machine, or None."""
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            built = "" if torch.version.cuda else f" (this torch {torch.__version__} is built without CUDA)"
            return f"no CUDA GPU is visible{built}"
        if dev.index is not None and dev.index >= n:
            return f"only {n} CUDA GPU{'s' if n > 1 else ''} (cuda:0..cuda:{n - 1}) visible"
    if dev.type == "mps" and not torch.backends.mps.is_available():
        return "no Apple GPU (mps) is available"
    return None


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


# Model folders that ship Python code (`auto_map`) are refused unless the user opts in (--trust-remote-code):
# loading them would run that code.
TRUST_REMOTE_CODE = False


def allow_remote_code(allow: bool = True) -> None:
    """Let models and tokenizers whose folder ships its own code (`auto_map`) load, running that code."""
    global TRUST_REMOTE_CODE
    TRUST_REMOTE_CODE = allow


def _local_json(path: Path, name: str) -> dict | None:
    """A local folder's JSON file (None when absent); a file that is not JSON is a one-line error."""
    file = path / name
    if not file.exists():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ComeError(f"could not load model {path}: cannot read {name} "
                        f"({getattr(e, 'strerror', None) or type(e).__name__}): restore the model folder") from None
    except json.JSONDecodeError as e:
        raise ComeError(f"could not load model {path}: {name} is not valid JSON ({e.msg} at line {e.lineno}): "
                        "restore it (e.g. copy or download the model again)") from None
    if not isinstance(data, dict):
        raise ComeError(f"could not load model {path}: {name} holds a JSON {type(data).__name__}, not an object: "
                        "restore it")
    return data


def check_remote_code(name: str, auto_map, where: str) -> None:
    if auto_map and not TRUST_REMOTE_CODE:
        raise ComeError(f"model '{name}' ships its own Python code ({where} has auto_map), which come does not run: "
                        "pass --trust-remote-code to run that code (only for a source you trust)")


def load_config(name: str):
    """(config, local_path_or_id); refuses unsupported architectures, and folders that ship their own code
    (unless remote code is allowed), before any weights are read."""
    from transformers import AutoConfig

    path = resolve_model(name)
    local = Path(path).is_dir()
    if local:
        raw = _local_json(Path(path), "config.json")
        check_remote_code(name, raw.get("auto_map"), "config.json")
        check_remote_code(name, (_local_json(Path(path), "tokenizer_config.json") or {}).get("auto_map"),
                          "tokenizer_config.json")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=TRUST_REMOTE_CODE)
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        if local:
            hint = f"{str(e).splitlines()[0][:200]}: fix or restore {Path(path) / 'config.json'}"
        else:
            hint = "the hub is offline here: pass a local model folder" if offline else "check the name or path"
        raise ComeError(f"could not load model config for '{name}' ({type(e).__name__}): {hint}") from e
    check_remote_code(name, getattr(config, "auto_map", None), "its config")
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
    if Path(path).is_dir():
        weight_files(Path(path))  # a missing, unreadable or corrupt file: one line naming it, before loading
    trust = TRUST_REMOTE_CODE
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, output_loading_info=True,
                                                           trust_remote_code=trust)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    except Exception as e:
        raise ComeError(f"could not load model '{name}' ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    check_loading_info(name, config, info)
    move_model(model, weights_device or dev, name)
    model.eval()
    return model, tokenizer, path


WEIGHTS_INDEX = "model.safetensors.index.json"
_LAYER_KEY = re.compile(r"\.layers\.(\d+)\.")


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder (from its index when sharded), each checked to exist and to be a
    readable safetensors file; a folder with only PyTorch (.bin) weights gives []."""
    from safetensors import safe_open

    index = _local_json(folder, WEIGHTS_INDEX)
    if index is not None:
        names = sorted(set((index.get("weight_map") or {}).values()))
        if not names:
            raise ComeError(f"{folder / WEIGHTS_INDEX} lists no weight files: restore the model folder")
    elif (folder / "model.safetensors").exists() or (folder / "model.safetensors").is_symlink():
        names = ["model.safetensors"]
    else:
        if any(folder.glob("pytorch_model*.bin")):
            return []
        raise ComeError(f"model folder {folder} has no weights (model.safetensors or {WEIGHTS_INDEX}): pass a "
                        "complete Hugging Face model folder")
    files = [folder / n for n in names]
    for f in files:
        if f.is_symlink() and not f.exists():
            raise ComeError(f"weights file {f} is a broken link (to {os.readlink(f)}): restore the file it points to")
        if not f.is_file():
            raise ComeError(f"weights file {f} is missing (or not a file): restore the model folder")
        try:
            with safe_open(str(f), "pt") as st:
                st.keys()
        except OSError as e:
            raise ComeError(f"weights file {f} cannot be read ({e.strerror or type(e).__name__}): check its "
                            "permissions or restore it") from None
        except Exception as e:
            raise ComeError(f"weights file {f} is not a valid safetensors file ({str(e).splitlines()[0][:120]}): "
                            "it is truncated or corrupt, restore it (e.g. download it again)") from None
    return files


def check_loading_info(name: str, config, info: dict) -> None:
    """Missing or unexpected checkpoint keys are an error: transformers would fill missing weights with random
    values (tied weights, which the config declares, are not missing: transformers ties them)."""
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    claimed = getattr(config, "num_hidden_layers", None) or 0
    short = {int(m.group(1)) for k in missing if (m := _LAYER_KEY.search(k))}
    held = claimed
    while held - 1 in short:
        held -= 1
    if held < claimed:
        raise ComeError(f"model '{name}': config.json says {claimed} layers but the weights hold {held} (weights "
                        f"missing for layers {held}..{claimed - 1}): fix num_hidden_layers or restore the weights")
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
            fix = "restore the weights" if what == "missing" else "pass the checkpoint that matches its config.json"
            raise ComeError(f"model '{name}': {len(keys)} {what} weights in the checkpoint ({shown}): {fix}")


FINGERPRINT_SAMPLE = 4096  # bytes of every tensor read at its start, middle and end
CONFIG_KEYS_IGNORED = ("transformers_version", "_name_or_path")  # rewritten by any save


def model_folder(path: str) -> Path | None:
    """The local folder of a model: the path itself, or a hub id's cached snapshot (None when not cached)."""
    if Path(path).is_dir():
        return Path(path)
    try:
        from transformers.utils import cached_file

        found = cached_file(path, "config.json", local_files_only=True)
    except Exception:
        return None
    return Path(found).parent if found else None


def fingerprint(path: str) -> dict:
    """{"config", "weights"}: short SHA-256 digests of a model's config.json (less the keys any save rewrites) and
    of its weights (every tensor's name, dtype, shape and 4 KiB samples of its bytes at the start, middle and
    end, so a 140 GB checkpoint costs a few MB of reading). A part that cannot be read is None."""
    import hashlib

    folder = model_folder(path)
    if folder is None:
        return {"config": None, "weights": None}
    raw = {k: v for k, v in (_local_json(folder, "config.json") or {}).items() if k not in CONFIG_KEYS_IGNORED}
    config = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]
    files = weight_files(folder)
    if not files:
        return {"config": config, "weights": None}
    from safetensors import safe_open

    entries = {}
    for f in files:
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                entries[key] = _tensor_digest(st.get_slice(key))
    h = hashlib.sha256()
    for key in sorted(entries):
        h.update(key.encode() + b"\0" + entries[key])
    return {"config": config, "weights": h.hexdigest()[:16]}


def _tensor_digest(sl) -> bytes:
    import hashlib

    shape = list(sl.get_shape())
    h = hashlib.sha256(f"{sl.get_dtype()}{shape}".encode())
    if not shape or 0 in shape:
        return h.digest()
    rows = shape[0]
    step = FINGERPRINT_SAMPLE // 4 if len(shape) == 1 else 1  # elements of a vector, rows of a matrix
    for start in sorted({0, rows // 2, max(rows - step, 0)}):
        h.update(_as_bytes(sl[start:start + step]))
    return h.digest()


def _as_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def count_params(model) -> int:
    """Unique parameters (tied embeddings counted once); streamed layers are not read for it (come.stream)."""
    from contextlib import nullcontext

    streamer = getattr(model, "come_streamer", None)
    with streamer.peek() if streamer is not None else nullcontext():
        return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
