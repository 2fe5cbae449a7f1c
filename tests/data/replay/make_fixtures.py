"""Write the replay fixtures: every method's plan on a tiny random model, and a digest of the weights it produced.

The fixtures pin behaviour across refactors: `tests/test_replay_fixtures.py` replays each stored plan on the same
tiny model and requires the very same weights (bit for bit, on any CPU), and re-runs each method to require the
same plan (the same decisions; floats within rounding). The base models are drawn with NumPy (`portable_init`), so
they are the same on every CPU. Regenerate only on purpose (a deliberate change of a method's decisions), and say
why in the commit:

    HF_HUB_OFFLINE=1 python tests/data/replay/make_fixtures.py
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # tests/ (conftest's tiny models)
sys.path.insert(0, str(HERE.parents[2] / "experiments"))  # the research variants some cases run
import come_variants  # noqa: E402, F401  (registers them)

# Small enough that a re-fit's tensors stay a few hundred kB; a Qwen2 model covers biases.
MODEL = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2)

# base models: name -> (family, config overrides); magnitude+/taylor+ keep the first 4 and last 2 layers
BASES = {"llama": ("llama", {}), "qwen2": ("qwen2", {}), "llama-deep": ("llama", {"num_hidden_layers": 10})}

# name -> (base, PruneConfig fields beyond model/calib). Research variants are records of experiments/come_variants.py
# (`come-plus:prior-zero`); the settings that asked for them until commit bcfc332 are in each case's expected.json.
CASES = {
    "come": ("llama", dict(method="come", target_layers=4)),
    "come-fold-loss": ("llama", dict(method="come:pair-loss", target_layers=4, method_options={"norm": "fold"})),
    "come-refit-dense": ("llama", dict(method="come:refit-dense", target_layers=4)),
    "come-remerge": ("llama", dict(method="come", target_layers=2, method_options={"remerge": True})),
    "come-p": ("llama", dict(method="come-p", target_layers=4, method_options={"grid": 4})),
    "come-plus": ("llama", dict(method="come-plus", target_layers=4)),
    "come-plus-zero": ("llama", dict(method="come-plus:prior-zero", target_layers=4)),
    "come-plus-drop": ("llama", dict(method="come-plus:drop-candidates", target_layers=3)),
    "come-plus-qwen2": ("qwen2", dict(method="come-plus", target_layers=4)),
    "laco": ("llama", dict(method="laco", target_layers=4, method_options={"T": 0.0})),
    "wsum": ("llama", dict(method="wsum", target_layers=4)),
    "sleb": ("llama", dict(method="sleb", target_layers=4)),
    "shortgpt": ("llama", dict(method="shortgpt", target_layers=4)),
    "angular": ("llama", dict(method="angular", target_layers=4)),
    "mka": ("llama", dict(method="mka", target_layers=4)),
    "magnitude": ("llama", dict(method="magnitude", target_layers=4)),
    "magnitude+": ("llama-deep", dict(method="magnitude+", target_layers=8)),
    "taylor": ("llama", dict(method="taylor", target_layers=4)),
    "taylor+": ("llama-deep", dict(method="taylor+", target_layers=8)),
    "reverse": ("llama", dict(method="reverse", target_layers=4)),
    "reverse-keep-last": ("llama", dict(method="reverse-keep-last", target_layers=4)),
    # drops, splices and per-half concatenations (merge steps with mlp_ratio); Qwen2 for the q/k/v biases
    "come-splice-qwen2": ("qwen2", dict(method="come-splice", target_layers=3)),
}


def weights_digest(model) -> str:
    """sha256 over every tensor of the state dict (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def portable_init(model, seed: int = 0) -> None:
    """Draw every parameter anew from NumPy's PCG64 generator, whose stream is fixed by its seed alone.

    torch's own random fill (`randn_like`, `normal_`) runs through vectorised kernels whose output depends on the
    CPU's vector width (AVX-512, AVX2, the scalar fallback), so a model drawn with it differs between machines and
    a digest of weights derived from it means nothing elsewhere. NumPy's draws and the float64 -> float32 cast are
    the same on every CPU. Norm weights around 1 and non-zero biases, as `tiny_model` draws them, so that merges of
    norms and biases are really exercised."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            z = rng.standard_normal(tuple(p.shape))
            if "norm" in name:
                z = 1 + 0.3 * z
            elif name.endswith("bias"):
                z = 0.1 * z
            else:
                z = 0.02 * z
            p.copy_(torch.from_numpy(z.astype(np.float32)))


def make_base(folder: Path, base: str):
    """The tiny base model folder (weights, tokenizer) and its calibration text, as the tests build them: the same
    weights on every CPU (`portable_init`)."""
    from conftest import SAMPLE_TEXT, tiny_model, tiny_tokenizer

    family, overrides = BASES[base]
    model = tiny_model(family, **MODEL, **overrides)
    portable_init(model)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    text = folder.parent / f"{folder.name}-calib.txt"
    text.write_text(SAMPLE_TEXT * 40)
    return text


def prune_case(base: Path, text: Path, fields: dict):
    from come import PruneConfig, prune
    from come.config import CalibConfig

    calib = CalibConfig(data=str(text), samples=4, seq_len=32, batch_size=2, seed=0)
    return prune(PruneConfig(model=str(base), calib=calib, progress=False, device="cpu", **fields))


def comparable(plan_json: dict) -> dict:
    """What must not change between the fixture and a re-run: the decisions, not paths, versions or timings. A
    research variant's plan compares with those of the method it varies (what its case asked for before it became
    a record of its own)."""
    from come.methods import get_method

    method = get_method(plan_json["method"])
    return {"method": method.variant_of or method.name, **{k: plan_json[k] for k in ("steps", "tree", "seed")}}


def main(dest: Path = HERE) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bases = {}
        for name, (base_name, fields) in CASES.items():
            if base_name not in bases:
                base = Path(tmp) / f"tiny-{base_name}"
                bases[base_name] = (base, make_base(base, base_name))
            base, text = bases[base_name]
            res = prune_case(base, text, dict(fields))
            out = dest / name
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            res.plan.save(out / "come_plan.json")
            meta = {"base": base_name, "fields": fields, "weights_sha256": weights_digest(res.model),
                    "num_layers": res.plan.num_layers}
            (out / "expected.json").write_text(json.dumps(meta, indent=1) + "\n")
            print(f"{name}: {res.plan.num_layers} layers, {len(res.plan.steps)} steps", flush=True)
        # The bases' own digests: the same on every CPU, or no digest of a replay could be.
        from come.models import load_model

        digests = {name: weights_digest(load_model(str(base), "float32", "cpu")[0])
                   for name, (base, _) in bases.items()}
        (dest / "bases.json").write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
