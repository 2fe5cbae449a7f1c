"""Integration on the real SmolLM2-135M (30 layers, GQA 9/3): CoMe to 20 layers on wiki-passages."""

import math
import random

import pytest
import torch
from conftest import same_weights
from transformers import AutoModelForCausalLM

from come import CalibConfig, PruneConfig, apply_plan, prune
from come.eval.ppl import perplexity
from come.models import load_model
from come.plan import PLAN_FILE, Plan

pytestmark = pytest.mark.smollm2

CALIB = CalibConfig(data="wiki-passages", samples=8, seq_len=256, batch_size=8, seed=0)
PPL = dict(source="wiki-passages", seq_len=256, max_windows=20, progress=False)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    res = prune(PruneConfig(model="smollm2-135m", target_layers=20, calib=CALIB, device="cpu", progress=False))
    out = res.save(tmp_path_factory.mktemp("smollm2") / "come-20")
    return res, out


def test_come_20_layers_loads_generates_and_keeps_perplexity_in_band(pruned):
    res, out = pruned
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert model.config.num_hidden_layers == 20
    assert sorted(i for b in res.plan.tree for i in b) == list(range(30))
    tok = res.tokenizer
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 8 and tok.decode(gen[0, ids.shape[1]:]).strip()
    ppl = perplexity(model, tok, **PPL)["ppl"]
    print(f"CoMe 20 layers: ppl {ppl:.1f}")
    assert math.isfinite(ppl)
    assert 60 < ppl < 400, ppl  # measured 162.9 (8x256 calibration tokens, 20 windows of 256)


def test_come_beats_dropping_the_same_number_of_layers_at_random(pruned):
    res, _ = pruned
    model, tok, _ = load_model("smollm2-135m", "float32", "cpu")
    layers = list(model.model.layers)
    keep = sorted(random.Random(0).sample(range(30), 20))
    model.model.layers = torch.nn.ModuleList(layers[i] for i in keep)
    model.config.num_hidden_layers = 20
    ppl_random = perplexity(model, tok, **PPL)["ppl"]
    ppl_come = perplexity(res.model, tok, **PPL)["ppl"]
    print(f"random drop: {ppl_random:.1f}, CoMe: {ppl_come:.1f}")
    assert ppl_come < ppl_random / 5


def test_plan_replays_bit_for_bit_on_the_real_model(pruned):
    res, out = pruned
    fresh, _, _ = load_model("smollm2-135m", "float32", "cpu")
    apply_plan(fresh, Plan.load(out / PLAN_FILE))
    assert same_weights(fresh, res.model)
