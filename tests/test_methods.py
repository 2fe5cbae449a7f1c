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

    assert settings_used("sleb", {}) == settings_used("come-plus", {}) == COMMON_SETTINGS
    assert "method_options" in COMMON_SETTINGS  # each method's options: the fields of its record's dataclass


def test_options_a_plan_of_an_older_version_recorded():
    """Plans made before the CoMe family's settings became its options kept them beside the others: they read the
    same; settings that left (refit_prior, ...) are not options."""
    from come.methods import get_method

    old = {"method": "come-p", "norm": "fold", "grid": 4, "remerge": False, "pair_tokens": "last",
           "pair_score": "angular", "refit_prior": "merged", "ratio_power": 1.0, "method_options": {}}
    assert get_method("come-p").recorded_options(old) == {"pair_tokens": "last", "remerge": False, "norm": "fold",
                                                          "pair_score": "angular", "grid": 4}
    assert get_method("laco").recorded_options({"method_options": {"C": 2, "I": 2, "T": 0.3, "L": 1}})["T"] == 0.3


def test_registering_a_name_twice_is_refused():
    from come.methods import METHODS, Method, register

    before = METHODS["sleb"]
    with pytest.raises(ValueError, match="'sleb' is registered already"):
        register(Method("sleb", lambda ctx: None, "ours"))
    assert METHODS["sleb"] is before


def test_every_method_has_a_complete_frozen_record():
    import dataclasses
    import re

    from come.cliargs import flags
    from come.methods import COMMON_SETTINGS, METHODS, Method, get_method

    fields = {f.name for f in dataclasses.fields(PruneConfig)}
    assert set(COMMON_SETTINGS) <= fields
    assert set(METHODS) >= set(BASELINES) | {"come", "come-p", "come-plus"}
    for name, m in METHODS.items():
        assert isinstance(m, Method) and m.name == name and get_method(name) is m and callable(m.run)
        assert m.paper == "ours" or re.search(r"\((.* )?(19|20)\d\d\)", m.paper), (name, m.paper)
        options = dataclasses.fields(m.options)
        assert len(flags(m.options)) == len(options), name  # every option has a help line, and so a flag
        assert not {o.name for o in options} & fields, name  # an option is no PruneConfig field
        for remerge in ({}, {"remerge": True}):
            c = PruneConfig(model="m", method=name, target_layers=1,
                            method_options=remerge if "remerge" in {o.name for o in options} else {})
            assert m.min_calib_samples(c) >= 1
            for n in range(2, 65):
                assert 0 <= m.limit.max_removable(n, c) <= n - 1, (name, n)
            total, text = m.passes(c, 24, 16)
            assert total >= 0 and text and "not estimated" not in text, name
        with pytest.raises(dataclasses.FrozenInstanceError):
            m.paper = "changed"
    assert not METHODS["angular"].prefix_consistent
    assert [n for n, m in METHODS.items() if m.needs_whole_model] == ["taylor", "taylor+"]
    assert METHODS["laco"].parse_options({}).T == 0.65


def test_the_limits_of_the_records():
    from come.methods import max_removable

    plain, remerge = (PruneConfig(model="m", method="come", target_layers=1, method_options={"remerge": r})
                      for r in (False, True))
    drops = PruneConfig(model="m", method="come", target_layers=1, method_options={"pair_score": "drop"})
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
        if m.variant_of or not m.run.__module__.startswith("come.methods."):  # a research variant, a test's toy
            continue
        row = next(line for line in docs.splitlines() if line.startswith("|") and f"`{name}`" in line)
        assert m.paper.partition(" (")[0] in row, (name, m.paper)


def test_a_method_in_one_file_prunes_dry_runs_and_replays(tiny8_dir, tmp_path, capsys):
    """Adding a method is one file (tests/data/toy/toy_method.py): registered on import, its option a flag of its
    own, its cost in --dry-run, its plan replayed by `come apply`."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    from come.cli import main
    from come.methods import METHODS

    if "toy-every-other" not in METHODS:
        spec = importlib.util.spec_from_file_location("toy_method", Path(__file__).parent / "data/toy/toy_method.py")
        sys.modules["toy_method"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    path, text = tiny8_dir
    res = prune(prune_config(path, text, method="toy-every-other", target_layers=5, method_options={"stride": 3}))
    assert [st["sources"] for st in res.plan.steps] == [[7], [4], [1]]
    assert res.plan.settings["method_options"] == {"stride": 3}
    common = [path, "--method", "toy-every-other", "--target-layers", 5, "--calib-data", text, "--calib-samples", 2,
              "--calib-seq-len", 32, "--device", "cpu"]
    assert main([str(a) for a in ["prune", *common, "--toy-stride", 3, "--dry-run"]]) == 0
    assert "calibration   none: every 3th layer goes" in capsys.readouterr().out
    out = tmp_path / "toy"
    assert main([str(a) for a in ["prune", *common, "--toy-stride", 3, "--out", out]]) == 0
    plan = json.loads((out / "come_plan.json").read_text())
    assert plan["method"] == "toy-every-other" and plan["settings"]["method_options"] == {"stride": 3}
    assert "- method options: stride=3" in (out / "README.md").read_text()
    assert main([str(a) for a in ["apply", out, "--model", path, "--out", tmp_path / "replayed"]]) == 0
    assert same_weights(AutoModelForCausalLM.from_pretrained(tmp_path / "replayed"), res.model)
    assert main([str(a) for a in ["prune", *common, "--grid", 3, "--out", tmp_path / "x"]]) == 2
    assert "method toy-every-other has no option 'grid'" in capsys.readouterr().err


def test_a_plan_of_a_retired_setting_names_it_and_the_commit_on_its_card():
    """The stored plan of `--refit-prior zero` (before it became the research variant come-plus:prior-zero): its
    card names the setting, where it went and the last commit that offered it; its options read as recorded."""
    from pathlib import Path

    from come.card import _settings_lines
    from come.config import RETIRED_AFTER
    from come.plan import Plan

    plan = Plan.load(Path(__file__).parent / "data" / "replay" / "come-plus-zero" / "come_plan.json")
    lines = "\n".join(_settings_lines(plan))
    assert "- method options: pair_tokens=last, remerge=False, norm=mean, pair_score=angular" in lines
    assert f"until commit {RETIRED_AFTER}: refit_prior=zero (the variant come-plus:prior-zero" in lines
