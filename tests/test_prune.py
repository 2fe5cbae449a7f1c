"""End-to-end pruning on tiny random models: plans, replay, save/reload, determinism (the plan file itself:
test_plan.py)."""

import pytest
import torch
from conftest import SAMPLE_TEXT, prune_config, replays_bit_for_bit, same_weights, tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM

from come import prune
from come.models import load_model
from come.plan import PLAN_FILE


@pytest.mark.parametrize("method,options", [("come", {}), ("come", {"norm": "fold"}), ("come-p", {"grid": 4}),
                                            ("come-plus", {})])
def test_prune_replays_bit_for_bit(tiny_dir, method, options):
    path, text = tiny_dir
    res = prune(prune_config(path, text, method=method, target_layers=4, method_options=options))
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
    res = prune(prune_config(path, text, target_layers=3, method_options={"remerge": True}))
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


@pytest.mark.parametrize("method", ["come-plus", "come"])
def test_pair_score_drop_merges_around_the_cheapest_removal_or_drops_it(tiny_dir, method):
    """--pair-score drop: each step finds the layer d whose removal costs least, tries the pairs holding it at
    every ratio, and the plain drop of d; the lowest NLL wins (on the held-out windows for come-plus)."""
    path, text = tiny_dir
    res = prune(prune_config(path, text, method=method, target_layers=2,
                             method_options={"pair_score": "drop"}))  # past L/2 merges
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
