"""Baseline methods on tiny random models: depth, bit-for-bit replay, reload, and exact method properties."""

import copy

import pytest
import torch
from conftest import SAMPLE_TEXT, prune_config, replays_bit_for_bit, same_weights, tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM

from come import PruneConfig, prune
from come.capture import Calibration
from come.data import calibration_windows
from come.errors import ComeError
from come.methods.laco import rdsc_layer
from come.methods.wsum import weighted_layer
from come.models import get_adapter, load_model

BASELINES = ["reverse", "reverse-keep-last", "magnitude", "magnitude+", "taylor", "taylor+", "shortgpt", "angular",
             "sleb", "laco", "mka", "wsum"]


@pytest.fixture
def tiny8_dir(tmp_path):
    """An 8-layer tiny Llama: enough for the `+` variants, which keep 6 layers."""
    path = tmp_path / "tiny8"
    tiny_model("llama", num_hidden_layers=8).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    text = tmp_path / "calib.txt"
    text.write_text(SAMPLE_TEXT * 40)
    return path, text


@pytest.mark.parametrize("method", BASELINES)
def test_method_depth_replay_reload(tiny8_dir, tmp_path, method):
    path, text = tiny8_dir
    opts = {"T": 0.3} if method == "laco" else {}  # random layers: merged states sit at cos 0.4-0.6
    res = prune(prune_config(path, text, method=method, target_layers=6, method_options=opts))
    assert res.model.config.num_hidden_layers == 6 == len(res.model.model.layers) == len(res.plan.tree)
    assert sorted(i for block in res.plan.tree for i in block) == list(range(8))
    assert replays_bit_for_bit(res, path, tensors=False)  # the JSON alone replays a baseline's plan
    out = res.save(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, 512, (1, 10))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, res.model(ids).logits)


def _calibration(path, text):
    model, tok, _ = load_model(str(path), "float32", "cpu")
    ids = calibration_windows(tok, str(text), 4, 32, 0)
    adapter = get_adapter(model)
    return model, adapter, Calibration(model, adapter, ids, 2, "cpu", progress=False)


def test_shortgpt_drops_exactly_the_lowest_bi_layers(tiny_dir):
    path, text = tiny_dir
    _, _, calib = _calibration(path, text)
    calib.run(0)
    bi = torch.tensor([s.bi for s in calib.stats])
    lowest = sorted(torch.argsort(bi)[:3].tolist())
    res = prune(prune_config(path, text, method="shortgpt", target_layers=3))
    dropped = sorted(st["sources"][0] for st in res.plan.steps)
    assert dropped == lowest
    kept = [i for i in range(6) if i not in lowest]
    dense, _, _ = load_model(str(path), "float32", "cpu")
    for new, orig in zip(res.model.model.layers, kept):
        assert same_weights(new, dense.model.layers[orig])


def test_sleb_first_choice_equals_brute_force(tiny_dir):
    path, text = tiny_dir
    model, adapter, calib = _calibration(path, text)
    nll = []
    for i in range(6):
        m = copy.deepcopy(model)
        a = get_adapter(m)
        a.set_layers([x for j, x in enumerate(a.layers) if j != i])
        c = Calibration(m, a, calib.input_ids, 2, "cpu", progress=False)
        c.run(0)
        nll.append(c.final_nll())
    best = min(range(6), key=lambda i: nll[i])
    res = prune(prune_config(path, text, method="sleb", target_layers=5))
    step = res.plan.steps[0]
    assert step["layer"] == best
    assert step["scores"]["removal_nll"] == pytest.approx(nll, rel=1e-5)


def test_laco_weights_follow_the_rdsc_equation():
    layers = tiny_model("llama").model.layers
    merged = rdsc_layer([layers[1], layers[2], layers[3]])
    p = {n: [dict(layers[i].named_parameters())[n] for i in (1, 2, 3)] for n, _ in merged.named_parameters()}
    for name, w in merged.named_parameters():
        a, b, c = p[name]
        want = a if "norm" in name else a + (b - a) + (c - a)
        torch.testing.assert_close(w, want, rtol=0, atol=1e-6)
    assert not torch.equal(merged.self_attn.q_proj.weight, layers[1].self_attn.q_proj.weight)


def test_wsum_ratio_one_zero_is_the_first_layer():
    layers = tiny_model("qwen2").model.layers  # q/k/v biases are summed too
    assert same_weights(weighted_layer(layers[2], layers[3], (1.0, 0.0)), layers[2])
    half = weighted_layer(layers[2], layers[3], (0.5, 0.5))
    up = (layers[2].mlp.up_proj.weight + layers[3].mlp.up_proj.weight) / 2
    torch.testing.assert_close(half.mlp.up_proj.weight, up)


def test_plus_variants_keep_first_four_and_last_two(tiny_dir):
    path, text = tiny_dir
    with pytest.raises(ComeError, match="needs 1 removals, but keeping the first 4 and last 2 layers at most 0"):
        prune(prune_config(path, text, method="magnitude+", target_layers=5))


def test_wsum_without_remerge_is_refused_beyond_half(tiny_dir):
    path, text = tiny_dir
    with pytest.raises(ComeError, match="remerge"):
        prune(prune_config(path, text, method="wsum", target_layers=2))


def test_laco_says_why_it_cannot_reach_the_target(tiny8_dir):
    path, text = tiny8_dir  # at T = 0.65 no merge of random layers passes (measured cos 0.38-0.60)
    with pytest.raises(ComeError, match=r"laco stopped at 8 layers: .* above T = 0.65 "
                       r"\(the best merge left reached 0\.\d{3}, at layer \d\).*--option T="):
        prune(prune_config(path, text, method="laco", target_layers=6))


def test_laco_options_shape_the_merge(tiny8_dir):
    path, text = tiny8_dir
    res = prune(prune_config(path, text, method="laco", target_layers=6, method_options={"T": "0.3", "C": "2"}))
    assert res.plan.settings["method_options"] == {"C": 2, "I": 2, "T": 0.3, "L": 1}  # typed, defaults filled
    spans = [st["span"] for st in res.plan.steps]
    assert spans == [2, 2]  # C = 2: pairs (the default C = 4 takes 3 layers at once here)
    assert all(st["scores"]["threshold"] == 0.3 for st in res.plan.steps)


def test_settings_a_plan_depends_on():
    from come.methods import COMMON_SETTINGS, settings_used

    assert settings_used("sleb", {}) == COMMON_SETTINGS
    assert "refit_prior" in settings_used("come-plus", {"method": "come-plus"})
    assert "refit_prior" not in settings_used("come-p", {"method": "come-p", "reconstruct": False})
    assert "refit_prior" in settings_used("come-p", {"method": "come-p", "reconstruct": True})
    assert "ratio_power" in settings_used("wsum", {}) and "norm" in settings_used("come", {})


def test_registering_a_name_twice_is_refused():
    from come.methods import METHODS, Method, register

    before = METHODS["sleb"]
    with pytest.raises(ValueError, match="'sleb' is registered already"):
        register(Method("sleb", lambda ctx: None, "ours"))
    assert METHODS["sleb"] is before


def test_every_method_has_a_complete_frozen_record():
    import dataclasses
    import re

    from come.methods import COMMON_SETTINGS, METHODS, Method, Option, get_method

    fields = {f.name for f in dataclasses.fields(PruneConfig)}
    assert set(COMMON_SETTINGS) <= fields
    assert set(METHODS) == set(BASELINES) | {"come", "come-p", "come-plus"}
    for name, m in METHODS.items():
        assert isinstance(m, Method) and m.name == name and get_method(name) is m and callable(m.run)
        assert m.paper == "ours" or re.search(r"\((.* )?(19|20)\d\d\)", m.paper), (name, m.paper)
        assert all(isinstance(o, Option) and isinstance(o.default, o.type) for o in m.options.values())
        for settings in ({"method": name}, {"method": name, "reconstruct": True}):
            used = m.settings_used(settings)
            assert set(used) <= fields and len(set(used)) == len(used), name
        for remerge in (False, True):
            c = PruneConfig(model="m", method=name, target_layers=1, remerge=remerge)
            assert m.min_calib_samples(c) >= 1
            for n in range(2, 65):
                assert 0 <= m.limit.max_removable(n, c) <= n - 1, (name, n)
        with pytest.raises(dataclasses.FrozenInstanceError):
            m.paper = "changed"
        with pytest.raises(TypeError):
            m.options["X"] = Option(int, 1, "x")
    assert not METHODS["angular"].prefix_consistent
    assert [n for n, m in METHODS.items() if m.needs_whole_model] == ["taylor", "taylor+"]
    assert METHODS["laco"].options["T"].default == 0.65


def test_the_limits_of_the_records():
    from come.methods import max_removable

    plain, remerge = (PruneConfig(model="m", method="come", target_layers=1, remerge=r) for r in (False, True))
    drops = PruneConfig(model="m", method="come", target_layers=1, drop_candidates=True)
    assert [max_removable("come", n, plain) for n in (2, 7, 24)] == [1, 3, 12]
    assert max_removable("come-plus", 24, remerge) == max_removable("come", 24, drops) == 23
    assert max_removable("wsum", 24, plain) == 12
    assert [max_removable("magnitude+", n, plain) for n in (5, 6, 24)] == [0, 0, 18]
    assert max_removable("taylor", 24, plain) == max_removable("laco", 24, plain) == 23


@pytest.mark.parametrize("method, layers, target, said", [
    ("come", 24, 11, "without re-merging at most 12 are possible (target >= 12): raise the target or pass --remerge"),
    ("wsum", 7, 3, "without re-merging at most 3 are possible (target >= 4): raise the target or pass --remerge"),
    ("taylor+", 24, 5, "keeping the first 4 and last 2 layers at most 18 are possible (target >= 6): raise the "
                       "target or use magnitude/taylor"),
])
def test_a_target_beyond_the_limit_is_refused_in_one_line(method, layers, target, said):
    from come.prune import check_reachable

    c = PruneConfig(model="m", method=method, target_layers=target)
    with pytest.raises(ComeError) as err:
        check_reachable(c, layers, target)
    assert str(err.value) == f"{method}: {layers} -> {target} layers needs {layers - target} removals, but {said}"
    check_reachable(c, layers, target + 1)  # one layer more is reachable


def test_the_methods_docs_name_every_paper():
    from pathlib import Path

    from come.methods import METHODS

    docs = (Path(__file__).parents[1] / "docs" / "methods.md").read_text()
    for name, m in METHODS.items():
        row = next(line for line in docs.splitlines() if line.startswith("|") and f"`{name}`" in line)
        assert m.paper.partition(" (")[0] in row, (name, m.paper)
