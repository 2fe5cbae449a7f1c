"""Write the replay fixtures: every method's plan on a tiny random model, and a digest of the weights it produced.

The fixtures pin behaviour across refactors: `tests/test_replay_fixtures.py` replays each stored plan on the same
tiny model and requires the very same weights (bit for bit), and re-runs each method to require the very same
plan. Regenerate only on purpose (a deliberate change of a method's decisions), and say why in the commit:

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

# Small enough that a re-fit's tensors stay a few hundred kB; a Qwen2 model covers biases.
MODEL = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2)

# base models: name -> (family, config overrides); magnitude+/taylor+ keep the first 4 and last 2 layers
BASES = {"llama": ("llama", {}), "qwen2": ("qwen2", {}), "llama-deep": ("llama", {"num_hidden_layers": 10})}

# name -> (base, PruneConfig fields beyond model/calib)
CASES = {
    "come": ("llama", dict(method="come", target_layers=4)),
    "come-fold-loss": ("llama", dict(method="come", target_layers=4, norm="fold", pair_score="loss")),
    "come-refit-dense": ("llama", dict(method="come", target_layers=4, reconstruct=True, refit_target="dense")),
    "come-remerge": ("llama", dict(method="come", target_layers=2, remerge=True)),
    "come-p": ("llama", dict(method="come-p", target_layers=4, grid=4)),
    "come-plus": ("llama", dict(method="come-plus", target_layers=4)),
    "come-plus-zero": ("llama", dict(method="come-plus", target_layers=4, refit_prior="zero")),
    "come-plus-drop": ("llama", dict(method="come-plus", target_layers=3, drop_candidates=True)),
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
}


def weights_digest(model) -> str:
    """sha256 over every tensor of the state dict (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def make_base(folder: Path, base: str):
    """The tiny base model folder (weights, tokenizer) and its calibration text, as the tests build them."""
    from conftest import SAMPLE_TEXT, tiny_model, tiny_tokenizer

    family, overrides = BASES[base]
    model = tiny_model(family, **MODEL, **overrides)
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
    """What must not change between the fixture and a re-run: the decisions, not paths, versions or timings."""
    return {k: plan_json[k] for k in ("method", "steps", "tree", "seed")}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bases = {}
        for name, (base_name, fields) in CASES.items():
            if base_name not in bases:
                base = Path(tmp) / f"tiny-{base_name}"
                bases[base_name] = (base, make_base(base, base_name))
            base, text = bases[base_name]
            res = prune_case(base, text, dict(fields))
            out = HERE / name
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            res.plan.save(out / "come_plan.json")
            meta = {"base": base_name, "fields": fields, "weights_sha256": weights_digest(res.model),
                    "num_layers": res.plan.num_layers}
            (out / "expected.json").write_text(json.dumps(meta, indent=1) + "\n")
            print(f"{name}: {res.plan.num_layers} layers, {len(res.plan.steps)} steps", flush=True)


if __name__ == "__main__":
    main()
