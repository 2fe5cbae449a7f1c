"""End-to-end pruning on tiny random models: plans, replay, save/reload, determinism (the plan file itself:
test_plan.py)."""

import pytest
import torch
from conftest import SAMPLE_TEXT, prune_config, replays_bit_for_bit, same_weights, tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM

from come import prune
from come.models import load_model
from come.plan import PLAN_FILE


@pytest.mark.parametrize("method,extra", [("come", {}), ("come", {"norm": "fold", "pair_score": "loss"}),
                                          ("come-p", {"grid": 4}), ("come-plus", {}),
                                          ("come-plus", {"refit_prior": "zero"}),
                                          ("come", {"reconstruct": True, "refit_target": "dense"})])
def test_prune_replays_bit_for_bit(tiny_dir, method, extra):
    path, text = tiny_dir
    res = prune(prune_config(path, text, method=method, target_layers=4, **extra))
    assert res.model.config.num_hidden_layers == 4 == len(res.model.model.layers)
    assert [st["op"] for st in res.plan.steps if st["op"] != "refit"] == ["merge", "merge"]
    assert sorted(i for block in res.plan.tree for i in block) == list(range(6))
    assert all(len(b) <= 2 for b in res.plan.tree)  # no re-merge by default
    assert replays_bit_for_bit(res, path)


def test_same_seed_same_plan_other_seed_other_windows(tiny_dir):
    path, text = tiny_dir
    p1 = prune(prune_config(path, text, target_layers=4)).plan
    p2 = prune(prune_config(path, text, target_layers=4)).plan
    p3 = prune(prune_config(path, text, target_layers=4, seed=1)).plan
    assert p1.steps == p2.steps and p1.tree == p2.tree
    assert p1.steps[0]["scores"]["bi"] != p3.steps[0]["scores"]["bi"]


def test_save_and_from_pretrained_give_identical_logits(tiny_dir, tmp_path):
    path, text = tiny_dir
    res = prune(prune_config(path, text, target_layers=3, remerge=True))
    out = res.save(tmp_path / "out")
    assert (out / "model.safetensors").exists() and (out / PLAN_FILE).exists() and (out / "come_summary.md").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert reloaded.config.num_hidden_layers == 3
    ids = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, res.model(ids).logits)
        gen = reloaded.generate(ids[:1], max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, 16)
    assert any(len(b) > 2 for b in res.plan.tree)  # 6 -> 3 needs a re-merge


def test_sparsity_resolves_to_whole_layers(tiny_dir):
    path, text = tiny_dir
    model, _, _ = load_model(str(path), "float32", "cpu")
    from come.models import count_params, get_adapter

    per_layer = get_adapter(model).params_per_layer()
    s = 2.4 * per_layer / count_params(model)  # 2.4 layers' worth rounds to 2
    res = prune(prune_config(path, text, sparsity=s))
    assert res.model.config.num_hidden_layers == 4


def test_drop_candidates_take_the_lower_calibration_nll_and_replay(tiny_dir):
    path, text = tiny_dir
    res = prune(prune_config(path, text, method="come-plus", target_layers=2, drop_candidates=True))  # past L/2 merges
    assert res.model.config.num_hidden_layers == 2
    moves = [st for st in res.plan.steps if st["op"] != "refit"]
    for st in moves:
        sc = st["scores"]
        best_drop = min(sc["removal_nll"])
        if "merge_nll" not in sc:  # no fresh pair was left: a drop is the only move
            assert st["op"] == "drop"
        elif st["op"] == "drop":  # SLEB's choice of layer; merge and drop compared on the held-out windows
            assert sc["drop_nll"] < sc["merge_nll"] and st["layer"] == sc["removal_nll"].index(best_drop)
        else:
            assert st["op"] == "merge" and sc["merge_nll"] <= sc["drop_nll"]
            assert sc["scored_on"] == "held-out windows"
    assert replays_bit_for_bit(res, path)


@pytest.mark.parametrize("method", ["come-plus", "come"])
def test_pair_score_drop_merges_around_the_cheapest_removal_or_drops_it(tiny_dir, method):
    """--pair-score drop: each step finds the layer d whose removal costs least, tries the pairs holding it at
    every ratio, and the plain drop of d; the lowest NLL wins (on the held-out windows for come-plus)."""
    path, text = tiny_dir
    res = prune(prune_config(path, text, method=method, target_layers=2, pair_score="drop"))  # past L/2 merges
    assert res.model.config.num_hidden_layers == 2
    moves = [st for st in res.plan.steps if st["op"] != "refit"]
    seen = set()
    for st in moves:
        sc = st["scores"]
        d = sc["removal_nll"].index(min(sc["removal_nll"]))
        if method == "come":  # come-plus re-scores the drop on its held-out windows
            assert sc["drop_nll"] == sc["removal_nll"][d]
        assert set(sc["candidates"]) <= {d - 1, d}
        tried = [v for i in sc["candidates"] for v in sc[f"pair{i}_ratio_nll"].values()]
        if st["op"] == "drop":
            assert st["layer"] == d and all(sc["drop_nll"] <= v for v in tried)
        else:
            assert st["layer"] in (d - 1, d) and sc["merge_nll"] == min(tried) < sc["drop_nll"]
        assert (sc.get("scored_on") == "held-out windows") == (method == "come-plus")
        seen.add(st["op"])
    assert len(moves) == 4
    if method == "come":  # on this model both branches run (come-plus drops every time here)
        assert seen == {"merge", "drop"}
    assert replays_bit_for_bit(res, path)


def test_saved_in_the_checkpoint_dtype_unless_told(tmp_path):
    src = tmp_path / "bf16"  # a bfloat16 checkpoint with tied embeddings, computed in float32 here
    m = tiny_model("llama", tie_word_embeddings=True).to(torch.bfloat16)
    m.save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    text = tmp_path / "calib.txt"
    text.write_text(SAMPLE_TEXT * 40)
    res = prune(prune_config(src, text, target_layers=4, dtype="float32"))
    assert res.model.dtype == torch.float32 and res.plan.stats["save_dtype"] == "bfloat16"
    out = res.save(tmp_path / "out")
    assert res.model.dtype == torch.float32  # the in-memory result is untouched
    back = AutoModelForCausalLM.from_pretrained(out, dtype="auto")  # dtype from the saved config
    assert back.dtype == torch.bfloat16 and back.config.tie_word_embeddings
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()
    want = {k: v.to(torch.bfloat16) for k, v in res.model.state_dict().items()}
    assert all(torch.equal(v, want[k]) for k, v in back.state_dict().items())
    res.save_dtype = torch.float32  # --save-dtype float32
    back32 = AutoModelForCausalLM.from_pretrained(res.save(tmp_path / "out32"), dtype="auto")
    assert back32.dtype == torch.float32 and same_weights(back32, res.model)


def test_each_step_is_reported_when_progress_is_on(tiny_dir, capsys, caplog):
    path, text = tiny_dir
    c = prune_config(path, text, method="sleb", target_layers=4)
    c.progress = True
    res = prune(c)
    err = capsys.readouterr().err
    assert len(res.plan.steps) == 2
    # a bar of layers removed (2 of 2) naming each step, and a bar of SLEB's trials at each depth
    assert "prune sleb: 100%" in err and "2/2" in err
    assert f"step 2: drop at {res.plan.steps[1]['layer']}" in err
    assert "removals at 6 layers" in err and "removals at 5 layers" in err
    c.progress = False  # without bars, each step is a log line (logger come.prune)
    with caplog.at_level("INFO", logger="come.prune"):
        res = prune(c)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sleb step")]
    assert len(logged) == 2
    assert logged[0].startswith(f"sleb step 1: drop at layer {res.plan.steps[0]['layer']} -> 5 layers (")
    assert " -> 4 layers (" in logged[1]


def test_cross_fit_judges_every_window_and_applies_the_default_refit(tiny_dir, monkeypatch):
    """--cross-fit: each re-fitted trial is scored on every window, fold by fold, each fold by a fit that held it
    out. The default fold's NLL and weights are exactly those of the plain held-out trial (the applied re-fit is
    unchanged); the trial's NLL is the window-weighted mean of its folds; the drop competes on every window."""
    import dataclasses

    from come.methods import come as come_mod
    from come.reconstruct import FOLD, HOLDOUT_EVERY, held_out_windows

    path, text = tiny_dir
    real, checked = come_mod.cross_fitted, []

    def spy(ctx, step, targets):
        out = real(ctx, step, targets)
        n = ctx.calib.input_ids.shape[0]
        plain_ctx = dataclasses.replace(ctx, config=dataclasses.replace(ctx.config, cross_fit=False))
        plain = come_mod.trial(plain_ctx, step, targets, windows=held_out_windows(n))
        folds = out[3]["cross_fit_nll"]
        assert folds[str(FOLD)] == plain[1] and out[2].keys() == plain[2].keys()
        assert all(torch.equal(out[2][k], plain[2][k]) for k in plain[2])
        sizes = {str(f): int(held_out_windows(n, f).sum()) for f in range(HOLDOUT_EVERY)}
        assert out[1] == pytest.approx(sum(folds[f] * sizes[f] for f in folds) / n, rel=1e-12)
        checked.append(len(folds))
        return out

    monkeypatch.setattr(come_mod, "cross_fitted", spy)
    res = prune(prune_config(path, text, method="come-plus", target_layers=2, pair_score="drop", cross_fit=True,
                             samples=8))
    assert checked and set(checked) == {HOLDOUT_EVERY}
    for st in (s for s in res.plan.steps if s["op"] != "refit"):
        sc = st["scores"]
        assert sc["scored_on"] == "every window, cross-fitted"
        assert sc["drop_nll"] == sc["removal_nll"][sc["removal_nll"].index(min(sc["removal_nll"]))]
    assert res.plan.settings["cross_fit"] is True
    assert replays_bit_for_bit(res, path)


def test_refit_anchor_fits_to_the_models_own_text_kept_current(tiny_dir, monkeypatch):
    """--refit-anchor N: N windows the unpruned model sampled are cached and, at every step's re-fit, hold exactly
    the states a fresh run of them through the current model gives (the cache follows merges and drops); the
    plan records the setting and replays bit for bit."""
    from come.capture import Calibration
    from come.methods import come as come_mod

    path, text = tiny_dir
    real, checked = come_mod.refit_targets, []

    def spy(ctx, i, dense):
        out = real(ctx, i, dense)
        anchor = out[2]
        assert anchor is not None and anchor.calib is ctx.anchor and ctx.anchor.input_ids.shape == (4, 32)
        fresh = Calibration(ctx.model, ctx.adapter, ctx.anchor.input_ids, 2, "cpu", progress=False)
        fresh.run(0)
        for b in range(2):
            assert torch.equal(anchor.inputs[b], fresh.hidden[i][b])
            assert torch.equal(anchor.out_target[b], fresh.hidden[i + 2][b])
        checked.append(ctx.num_layers)
        return out

    monkeypatch.setattr(come_mod, "refit_targets", spy)
    res = prune(prune_config(path, text, method="come-plus", target_layers=3, pair_score="drop", refit_anchor=4,
                             samples=8))
    assert len(set(checked)) == 3  # at 6, 5 and 4 layers: after each step, merge or drop
    assert res.plan.settings["refit_anchor"] == 4
    assert replays_bit_for_bit(res, path)


def test_sampled_windows_are_reproducible_and_leave_the_rng_alone(tiny_dir):
    from come.data import sampled_windows

    model = tiny_model("llama")
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a, b = sampled_windows(model, 3, 16, seed=0), sampled_windows(model, 3, 16, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.shape == (3, 16) and torch.equal(a, b) and int(a.max()) < model.config.vocab_size
    assert not torch.equal(a, sampled_windows(model, 3, 16, seed=1))
    assert len(set(a[:, 1:].flatten().tolist())) > 10  # sampled, not one repeated token


@pytest.mark.parametrize("kw,match", [({"method": "sleb", "refit_anchor": 4}, "re-fits nothing"),
                                      ({"method": "come-plus", "refit_anchor": -1}, ">= 0"),
                                      ({"method": "come-plus", "refit_anchor": 4, "refit_target": "dense"},
                                       "--refit-target dense")])
def test_refit_anchor_is_refused_where_it_cannot_work(tiny_dir, kw, match):
    from come.errors import ComeError

    path, text = tiny_dir
    with pytest.raises(ComeError, match=match):
        prune(prune_config(path, text, target_layers=2, **kw))


def test_cross_fit_is_refused_where_nothing_is_re_fitted(tiny_dir):
    from come.errors import ComeError

    path, text = tiny_dir
    with pytest.raises(ComeError, match="--cross-fit"):
        prune(prune_config(path, text, method="sleb", target_layers=2, cross_fit=True))
