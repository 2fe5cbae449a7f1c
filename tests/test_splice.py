"""come-splice (issue 28): per-half merges on tiny random models of every family (a splice is its two source
halves bit for bit, corners are SLEB's drops), and the method's step (it holds SLEB's drop trials, its screen, its
criteria, its plan replays)."""

import copy

import pytest
import torch
from conftest import SAMPLE_TEXT, prune_config, replays_bit_for_bit, same_weights, tiny_model, tiny_tokenizer
from test_families import CONFIGS, attn_out, calibration, mlp_out, run, tiny_family

from come import prune
from come.distillation.correspond import correspondences
from come.merge import concat_layers
from come.models import get_adapter
from come.ops import apply_step, initial_tree, update_tree
from come.plan_check import geometry_of, validate_plan

# every family: the conftest ones (Llama with o_proj/down_proj biases too), and test_families' others
FAMILIES = ["llama", "llama-bias", "mistral", "qwen2", "qwen3", *CONFIGS]


def model_of(family: str, **kw):
    if family == "llama-bias":
        model = tiny_model("llama", attention_bias=True, mlp_bias=True, **kw)
        assert get_adapter(model).o_proj(model.model.layers[0]).bias is not None
        return model
    return tiny_family(family, **kw) if family in CONFIGS else tiny_model(family, **kw)


def halves(a, ratio_attn, ratio_mlp):
    """(attn_groups, mlp_channels) with every piece of each half from the layer whose share is 1."""
    g, c = list(range(a.geometry().num_kv_heads)), list(range(a.down_proj(a.layers[0]).weight.shape[1]))
    return (g, []) if ratio_attn == 1 else ([], g), (c, []) if ratio_mlp == 1 else ([], c)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("norm", ["mean", "fold"])
@pytest.mark.parametrize("attn_from", ["a", "b"])
def test_a_splice_is_its_two_source_halves_bit_for_bit(family, norm, attn_from):
    """Attention of one layer, MLP of the other: exactly that attention sub-layer (pre/post-norms, q/k norms,
    o_proj bias, attention type) followed by exactly that MLP sub-layer (its norms, down_proj bias), in both norm
    modes (a half of one layer is never folded)."""
    model = model_of(family)
    a, calib = calibration(model)
    la, lb = a.layers[0], a.layers[1]  # sliding then global where the family alternates
    src_attn, src_mlp = (la, lb) if attn_from == "a" else (lb, la)
    r = 1.0 if attn_from == "a" else 0.0
    groups, channels = halves(a, r, 1 - r)
    merged = concat_layers(a, la, lb, groups, channels, (r, 1 - r), norm, (1 - r, r))
    assert a.layer_type(merged) == a.layer_type(src_attn)
    h = calib.hidden[0][0]
    with torch.no_grad():
        u = h + a.residual_update(src_attn, "attn", attn_out(a, src_attn, h, calib.kwargs_for(src_attn)[0]))
        expected = u + a.residual_update(src_mlp, "mlp", mlp_out(a, src_mlp, u))
        got = run(merged, h, calib.kwargs_for(merged)[0])
    assert torch.equal(got, expected)
    # the halves' own parameters, bit for bit
    for src, getters in ((src_attn, (a.attn_norm, a.attn_post_norm, a.o_proj)),
                         (src_mlp, (a.mlp_norm, a.mlp_post_norm, a.down_proj))):
        for get in getters:
            if get(src) is not None:
                assert same_weights(get(merged), get(src)), get.__name__
    for kind, src in (("attn_in", src_attn), ("mlp_in", src_mlp)):
        for name, (w, b) in getattr(a, kind)(src).items():
            mw, mb = getattr(a, kind)(merged)[name]
            assert torch.equal(mw, w) and (b is None or torch.equal(mb, b)), name
    if a.has_qk_norm:
        assert all(same_weights(m, s) for m, s in zip(a.qk_norms(merged), a.qk_norms(src_attn)))


@pytest.mark.parametrize("family", FAMILIES)
def test_the_corners_are_slebs_drops_bit_for_bit(family):
    """(1, 1) keeps layer l whole (a drop of l+1), (0, 0) keeps l+1 (a drop of l): after the merge step the model
    is the model after SLEB's drop step, weights and config."""
    model = model_of(family)
    a = get_adapter(model)
    for r, dropped in ((1.0, 2), (0.0, 1)):
        groups, channels = halves(a, r, r)
        step = {"op": "merge", "layer": 1, "ratio": [r, 1 - r], "mlp_ratio": [r, 1 - r], "norm": "mean",
                "attn_groups": [list(x) for x in groups], "mlp_channels": [list(x) for x in channels]}
        merged_model, dropped_model = copy.deepcopy(model), copy.deepcopy(model)
        apply_step(get_adapter(merged_model), step)
        apply_step(get_adapter(dropped_model), {"op": "drop", "layer": dropped})
        assert same_weights(merged_model, dropped_model)
        assert getattr(merged_model.config, "layer_types", None) == getattr(dropped_model.config, "layer_types", None)


def test_a_per_half_merge_gives_each_half_its_own_bias_and_post_norm():
    """Attention all of a, MLP of both: o_proj's bias is a's (it was ratio-averaged with b's before), down_proj's
    is the MLP ratio's mean; a step without `mlp_ratio` keeps the old averaging (old plans replay as they did)."""
    model = model_of("llama-bias")
    a = get_adapter(model)
    la, lb = a.layers[0], a.layers[1]
    g, c = list(range(a.geometry().num_kv_heads)), list(range(a.down_proj(la).weight.shape[1]))
    channels = (c[::2], c[1::2])
    new = concat_layers(a, la, lb, (g, []), channels, (1.0, 0.0), "mean", (0.5, 0.5))
    assert torch.equal(a.o_proj(new).bias, a.o_proj(la).bias)
    assert torch.equal(a.down_proj(new).bias, (0.5 * a.down_proj(la).bias + 0.5 * a.down_proj(lb).bias))
    old = concat_layers(a, la, lb, (g, []), channels, (0.7, 0.3), "mean")
    assert torch.equal(a.o_proj(old).bias, (0.7 * a.o_proj(la).bias + 0.3 * a.o_proj(lb).bias))
    model = model_of("gemma3_text")
    a = get_adapter(model)
    la, lb = a.layers[0], a.layers[2]
    new = concat_layers(a, la, lb, ([0], [1]), (c[::2], []), (0.5, 0.5), "mean", (1.0, 0.0))
    assert torch.equal(a.mlp_post_norm(new).weight, a.mlp_post_norm(la).weight)
    assert not torch.equal(a.attn_post_norm(new).weight, a.attn_post_norm(la).weight)


# --- the method ---

@pytest.fixture(scope="module")
def tiny8(tmp_path_factory):
    root = tmp_path_factory.mktemp("splice")
    path, text = root / "llama8", root / "calib.txt"
    tiny_model("llama", num_hidden_layers=8).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    text.write_text(SAMPLE_TEXT * 40)
    return path, text


def splice(tiny8, **options):
    path, text = tiny8
    return prune(prune_config(path, text, samples=8, method="come-splice", target_layers=5, method_options=options))


def test_the_full_search_takes_the_cheapest_of_every_drop_and_every_candidate(tiny8):
    res = splice(tiny8, screen=0)
    assert replays_bit_for_bit(res, tiny8[0])
    validate_plan(res.plan, geometry_of(get_adapter(res.model)))
    correspondences(res.plan.tree)  # the tree is what distillation reads
    tree, moves = initial_tree(8), set()
    for st in res.plan.steps:
        sc = st["scores"]
        trials = [c["trial"] for c in sc["candidates"]]
        assert len(trials) == len(sc["candidates"]) >= 1  # screen 0: every candidate had its full trial
        assert len(sc["drop"]) == len(tree)  # every layer's drop was trialled
        best = min(min(sc["drop"]), min(trials))
        assert sc["chosen"]["cost"] == best <= min(sc["drop"])  # never worse than SLEB's move on the objective
        moves.add(sc["chosen"]["move"])
        if st["op"] == "drop":
            assert sc["chosen"]["move"] == "drop" and sc["drop"][st["layer"]] == best
            assert st["layer"] == min(range(len(tree)), key=lambda i: (sc["drop"][i], i))
        else:
            assert st["op"] == "merge" and st["mlp_ratio"][0] == sc["chosen"]["mlp_ratio"][0]
            assert sc["chosen"]["move"] in ("splice", "concat")
            assert st["sources"] == [tree[st["layer"]], tree[st["layer"] + 1]]
            halves = sc["chosen"]["halves"]  # a splice: each half from one source block, one from each
            for half, pieces in (("attn", st["attn_groups"]), ("mlp", st["mlp_channels"])):
                assert halves[half] == [i for p, b in zip(pieces, st["sources"]) if p for i in b]
            both = sorted(halves["attn"] + halves["mlp"]) == sum(st["sources"], [])  # no half of both layers
            assert (sc["chosen"]["move"] == "splice") == both
        for by, field in (("predicted", "predicted"), ("relative", "local_error")):
            order = sorted(sc["candidates"], key=lambda c: c[field])
            assert sc["best_rank"][by] == order.index(min(order, key=lambda c: c["trial"]))
            for n, said in sc["screen_would_choose"][by].items():  # a screen of n: its n best, then the drops
                b = min(order[: int(n)], key=lambda c: c["trial"])
                assert said.startswith("drop") == (min(sc["drop"]) <= b["trial"]), (by, n)
                assert said.startswith("drop") or f"of pair {b['layer']} " in said
        update_tree(tree, st)
    assert tree == res.plan.tree
    assert moves & {"splice", "concat"}  # on this model the search does take a non-drop move
    from come.prune import summary_text  # the summary names each half's ratio of a per-half merge

    merges = [st for st in res.plan.steps if st["op"] == "merge"]
    text = summary_text(res.plan)
    for st in merges:
        (ra, rb), (ma, mb) = st["ratio"], st["mlp_ratio"]
        assert f"attention ratio {ra:.2f}/{rb:.2f}, MLP ratio {ma:.2f}/{mb:.2f}" in text
    # the MLP budget follows `mlp_ratio`: a per-half merge whose channels do not fit it is refused
    import json

    from come.errors import ComeError
    from come.plan import Plan

    data = json.loads(res.plan.to_json())
    k, st = next((k, st) for k, st in enumerate(data["steps"]) if st["op"] == "merge" and all(st["mlp_channels"])
                 or st["op"] == "merge")
    st["mlp_ratio"] = [0.5, 0.5] if st["mlp_ratio"][0] != 0.5 else [0.25, 0.75]
    with pytest.raises(ComeError, match=rf"steps\[{k}\] \(merge\): mlp_channels"):
        validate_plan(Plan.load_dict(data), geometry_of(get_adapter(res.model)))


@pytest.mark.parametrize("screen_by, field", [("predicted", "predicted"), ("relative", "local_error")])
def test_the_screen_sends_its_best_candidates_to_the_full_trial(tiny8, screen_by, field):
    res = splice(tiny8, screen=2, screen_by=screen_by)
    assert replays_bit_for_bit(res, tiny8[0])
    for st in res.plan.steps:
        sc = st["scores"]
        tried = sorted((c for c in sc["candidates"] if "trial" in c), key=lambda c: c["rank"])
        assert [c["rank"] for c in tried] == [0, 1] and sc["screen_by"] == screen_by
        assert [c[field] for c in tried] == sorted(c[field] for c in sc["candidates"])[:2]
        assert sc["chosen"]["cost"] == min(min(sc["drop"]), *(c["trial"] for c in tried))
        # predicted: the drop of l+1's cost scaled by local errors (a candidate as bad as that drop locally is
        # predicted to cost what it cost)
        for c in sc["candidates"]:
            assert (c["predicted"] - sc["current"]) * (sc["drop"][c["layer"] + 1] - sc["current"]) >= 0


def test_the_kl_criterion_measures_the_distance_from_the_dense_model(tiny8):
    from come.methods import get_method
    from come.methods.base import PruneContext
    from come.methods.splice import Judge
    from come.reconstruct import held_out_windows

    res = splice(tiny8, criterion="kl")
    assert replays_bit_for_bit(res, tiny8[0])
    for st in res.plan.steps:
        assert all(c >= 0 for c in st["scores"]["drop"]) and st["scores"]["criterion"] == "kl"
    # on the dense model itself the KL is ~0 (the float16 cache), far below any drop's
    from come.capture import Calibration
    from come.data import calibration_windows
    from come.models import load_model

    path, text = tiny8
    model, tok, _ = load_model(str(path), "float32", "cpu")
    a = get_adapter(model)
    ids = calibration_windows(tok, str(text), 8, 32, 0)
    calib = Calibration(model, a, ids, 2, "cpu", progress=False)
    cfg = prune_config(path, text, samples=8, method="come-splice", target_layers=5,
                       method_options={"criterion": "kl"})
    ctx = PruneContext(model, a, calib, 5, cfg)
    calib.run(0)
    judge = Judge(ctx, "kl", held_out_windows(8))
    layers = list(a.layers)
    assert abs(judge(8, [])) < 1e-3 < min(judge(i, layers[i + 1:]) for i in range(8))
    assert get_method("come-splice").resumable(cfg) is False
    assert get_method("come-splice").resumable(prune_config(path, text, method="come-splice", target_layers=5))


def test_deciding_on_every_window_its_drop_trials_are_slebs(tiny8):
    """With `decide_on` all, the step's drop trials are SLEB's removal NLLs on the same model, so where no splice or
    concatenation beats them it drops SLEB's layer; on the held-out windows they are another objective."""
    path, text = tiny8
    sleb = prune(prune_config(path, text, samples=8, method="sleb", target_layers=7))
    first = sleb.plan.steps[0]["scores"]["removal_nll"]
    every = splice(tiny8, decide_on="all").plan.steps[0]["scores"]
    assert every["scored_on"] == "all windows" and every["drop"] == pytest.approx(first, rel=1e-6)
    assert every["chosen"]["cost"] <= min(first) * (1 + 1e-6)
    held = splice(tiny8).plan.steps[0]["scores"]
    assert held["scored_on"] == "held-out windows" and held["drop"] != pytest.approx(first, rel=1e-3)


def test_the_optional_refit_is_come_plus_s_and_replays(tiny8):
    """--refit: each trialled splice/concatenation is re-fitted (come-plus's ridge) before its trial; a chosen one is
    a merge step followed by its refit step (when the fit helped on held-out windows), replayed with its tensors."""
    res = splice(tiny8, screen=0, refit=True)
    assert replays_bit_for_bit(res, tiny8[0])
    ops = [st["op"] for st in res.plan.steps]
    for i, st in enumerate(res.plan.steps):
        if st["op"] == "merge":
            tried = [c for c in st["scores"]["candidates"] if "trial" in c]
            assert tried and all("refit" in c for c in tried)
            chosen = min(tried, key=lambda c: (c["trial"], c["rank"]))
            assert (ops[i + 1:i + 2] == ["refit"]) == chosen["refit"]
    assert "refit" in ops  # a re-fit won somewhere on this model
    plain = splice(tiny8, screen=0)
    first = [c["trial"] for c in plain.plan.steps[0]["scores"]["candidates"]]
    refitted = [c["trial"] for c in res.plan.steps[0]["scores"]["candidates"]]
    assert first != refitted  # the re-fit changed what the trials measured
    with pytest.raises(Exception, match="decide-on held-out"):
        splice(tiny8, refit=True, decide_on="all")
