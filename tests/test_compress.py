"""`come compress` (issue 31): prune + recover + evaluate in one command, one folder, resumable at each stage; the
recovery's trainable sets; come-splice's merge tree under hierarchical distillation. Tiny random models only."""

import json

import pytest
import torch
import yaml
from conftest import SAMPLE_TEXT, Interrupted
from test_distill import one_thread  # noqa: F401  (autouse: one thread, as there)
from transformers import AutoModelForCausalLM

from come import ComeError, PruneConfig, prune
from come.cli import main
from come.compress import CompressConfig, check_something_to_train, compress
from come.config import CalibConfig
from come.distillation import DistillConfig, correspondences, distill
from come.distillation.global_ import trainable_groups
from come.models import get_adapter
from come.plan import PLAN_FILE


@pytest.fixture
def inputs(tiny_dir, tmp_path):
    """(tiny Llama folder, calibration text, training text, evaluation text)."""
    path, calib = tiny_dir
    train = tmp_path / "train.txt"
    train.write_text(SAMPLE_TEXT * 2)
    return path, calib, train, tmp_path / "eval.txt"


def config(inputs, out, **kw):
    path, calib, train, evaluated = inputs
    base = dict(model=str(path), target_layers=4, calib=CalibConfig(data=str(calib), samples=4, seq_len=32,
                                                                    batch_size=2),
                recover=256, train_data=str(train), train_seq_len=32, train_batch_size=2, lr=1e-3,
                ppl=[str(evaluated)], ppl_seq_len=32, ppl_max_windows=2, baseline="none", device="cpu",
                progress=False, out=str(out))
    return CompressConfig(**dict(base, **kw))


def test_one_command_writes_one_complete_folder(inputs, tmp_path):
    res = compress(config(inputs, tmp_path / "out", recover=256))
    out = res.out
    assert list(res.stages) == ["prune", "layerwise", "global", "eval"]
    for name in ("config.json", "model.safetensors", PLAN_FILE, "README.md", "recipe.yaml", "distill_summary.json",
                 "distill_summary.md", "distill_log.jsonl", "eval/eval.json", "eval/eval.md", "come_summary.md"):
        assert (out / name).is_file(), name
    assert not (tmp_path / "out.partial").exists()  # the run folder is gone once the result is in place
    summary = json.loads((out / "distill_summary.json").read_text())
    assert summary["tokens"] == 256 and list(summary["stages"]) == ["layerwise", "global"]
    assert [s["tokens"] for s in summary["stages"].values()] == [128, 128]  # --layerwise-share 0.5
    assert summary["stages"]["global"]["train"] == "merged+norms"
    assert summary["stages"]["global"]["loss"] == "mse=0,cos=0,kl=0,logits=1"  # stage 2: logit KL only
    log = [json.loads(line) for line in (out / "distill_log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == ["layerwise"] * 2 + ["global"] * 2
    card = (out / "README.md").read_text()
    assert "## Recovery" in card and "256 training tokens" in card and "layer-wise" in card
    assert "come compress" in card and "Not evaluated yet" not in card  # the evaluation's table is in the card
    assert json.loads((out / "eval/eval.json").read_text())["model"]["name"] == "out"  # named as the folder
    for name in ("README.md", "recipe.yaml", "distill_summary.md", "distill_summary.json"):
        assert str(tmp_path) not in (out / name).read_text(), name  # no local paths in what is published
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["command"] == "compress" and recipe["recover"] == 256 and recipe["recovery"] == "staged"
    m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert m.config.num_hidden_layers == 4
    pruned = prune(config(inputs, tmp_path / "x").prune_config())  # the same plan as `come prune`, then trained
    assert json.loads((out / PLAN_FILE).read_text())["tree"] == pruned.plan.tree
    merged = next(j for j, b in enumerate(pruned.plan.tree) if len(b) > 1)
    key = f"model.layers.{merged}.mlp.down_proj.weight"
    assert not torch.equal(m.state_dict()[key], pruned.model.state_dict()[key])  # the recovery trained it


def test_the_recipe_makes_the_same_folder_again(inputs, tmp_path, capsys):
    """`come compress --config recipe.yaml` (the one in the folder) parses back to the same settings."""
    cfg = config(inputs, tmp_path / "out", recovery="global", train_last=1)
    from come import recipe

    path = tmp_path / "r.yaml"
    path.write_text(recipe.dump(recipe.of(cfg, str(tmp_path / "out"))))
    assert main(["compress", "--config", str(path), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load(path.read_text())


def stop_after(stage):
    def on_stage(name):
        if name == stage:
            raise Interrupted(name)
    return on_stage


def test_a_killed_run_resumes_without_redoing_finished_stages(inputs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(Interrupted):  # killed between recovery stage 1 and 2
        compress(config(inputs, out), on_stage=stop_after("layerwise"))
    partial = tmp_path / "out.partial"
    assert not out.exists() and (partial / "prune" / PLAN_FILE).is_file() and (partial / "layerwise").is_dir()
    assert not (partial / "global").exists()
    with pytest.raises(ComeError, match="--resume"):  # neither overwritten nor mixed silently
        compress(config(inputs, out))
    with pytest.raises(ComeError, match="other settings"):
        compress(config(inputs, out, lr=5e-4, resume=True))
    import sys

    import come.compress as c

    p = sys.modules["come.prune"]

    ran = []
    real = c._run_stage
    monkeypatch.setattr(c, "_run_stage", lambda cfg, store, name, model: (ran.append(name),
                                                                          real(cfg, store, name, model)))
    monkeypatch.setattr(p, "prune", lambda *a, **k: pytest.fail("the finished prune ran again"))
    res = compress(config(inputs, out, resume=True))
    assert ran == ["global", "eval"]
    assert res.stages["prune"] == {"ran": False} and res.stages["layerwise"] == {"ran": False}
    assert (out / "distill_summary.json").is_file() and not partial.exists()
    monkeypatch.undo()
    full = compress(config(inputs, tmp_path / "full"))
    a = AutoModelForCausalLM.from_pretrained(res.out, dtype=torch.float32).state_dict()
    b = AutoModelForCausalLM.from_pretrained(full.out, dtype=torch.float32).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the resumed run is the uninterrupted one


def test_a_stage_killed_inside_continues_from_its_checkpoint(inputs, tmp_path):
    """Killed in the middle of the global stage (after its checkpoint at step 1 of 2): --resume goes on from it."""
    from come.distillation import train

    real = train.distill
    calls = []

    def cut(cfg, on_step=None, **kw):
        calls.append(cfg.resume)
        if cfg.stage == "global" and not cfg.resume:
            def on(info):
                if info["step"] == 1:
                    raise Interrupted("global")
            return real(cfg, on_step=on)
        return real(cfg)

    import come.distillation.train as t

    t.distill = cut
    try:
        with pytest.raises(Interrupted):
            compress(config(inputs, tmp_path / "out", checkpoint_every=1))
        assert (tmp_path / "out.partial" / "global.partial" / "checkpoint" / "state.json").is_file()
        compress(config(inputs, tmp_path / "out", checkpoint_every=1, resume=True))
    finally:
        t.distill = real
    assert calls == [False, False, True]
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("argv,needle", [
    (["--recover", "0"], "--recover must be a positive number"),
    (["--recover", "-5"], "--recover must be a positive number"),
    ([], "give --recover"),
    (["--recover", "40"], "less than one training step"),
    (["--recover", "256", "--layerwise-share", "1"], "--layerwise-share"),
    (["--recover", "256", "--recovery", "lora", "--train-lm-head"], "not with --recovery lora"),
    (["--recover", "256", "--train-data", "EVAL"], "both as --train-data and as --ppl"),
    (["--recover", "256", "--train-data", "fiction"], "held-out evaluation text"),
    (["--recover", "10000000", "--train-seq-len", "100000"], "exceeds the model context"),
])
def test_bad_input_is_refused_in_one_line_before_weights_load(inputs, tmp_path, capsys, monkeypatch, argv,
                                                                 needle):
    path, calib, train, evaluated = inputs
    import come.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("weights loaded"))
    argv = [str(evaluated) if a == "EVAL" else a for a in argv]
    base = ["compress", str(path), "--target-layers", "4", "--calib-data", str(calib), "--calib-samples", "4",
            "--calib-seq-len", "32", "--train-data", str(train), "--train-seq-len", "32", "--train-batch-size", "2",
            "--ppl", str(evaluated), "--device", "cpu", "--out", str(tmp_path / "out")]
    if "--train-data" in argv:
        i = base.index("--train-data")
        del base[i:i + 2]
    assert main([*base, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_plan_that_merges_nothing_leaves_nothing_to_train(tmp_path):
    from come.plan import Plan

    (tmp_path / "s").mkdir()
    plan = Plan("x", {"name": "m", "num_layers": 2}, {}, [], [[0], [1]])
    plan.save(tmp_path / "s" / PLAN_FILE)
    with pytest.raises(ComeError, match="nothing for the recovery to train"):
        check_something_to_train(tmp_path / "s")
    plan.tree = [[0, 1]]
    plan.save(tmp_path / "s" / PLAN_FILE)
    check_something_to_train(tmp_path / "s")


def test_trainable_sets_of_the_global_stage(inputs):
    from come.models import load_model

    path = inputs[0]
    model, _, _ = load_model(str(path), "float32", "cpu")
    a = get_adapter(model)
    corr = correspondences([[0], [1, 2], [3], [4], [5]])  # a 5-layer student's tree (shapes do not matter here)
    ids = lambda groups: {id(p) for g in groups for p in g}  # noqa: E731
    merged = ids(trainable_groups(a, corr, "merged"))
    assert merged == {id(p) for p in a.layers[1].parameters()}
    with_norms = ids(trainable_groups(a, corr, "merged+norms"))
    norms = {id(p) for layer in a.layers for n, p in layer.named_parameters() if "norm" in n}
    assert with_norms == merged | norms | {id(p) for p in a.final_norm().parameters()}
    head = ids(trainable_groups(a, corr, "merged", lm_head=True, last=2))
    assert head == merged | {id(p) for layer in a.layers[-2:] for p in layer.parameters()} | \
        {id(p) for p in a.lm_head().parameters()}
    groups = trainable_groups(a, corr, "all", lm_head=True, last=3)  # each parameter once
    assert len(ids(groups)) == sum(len(g) for g in groups)


def test_come_splice_students_distil_each_layer_against_its_source_block(tiny_dir, tmp_path):
    """A come-splice plan (merges with mlp_ratio: splices or per-half concatenations; drops) maps every new
    layer to the contiguous block of original layers it stands for, and distils from it."""
    path, text = tiny_dir
    calib = CalibConfig(data=str(text), samples=8, seq_len=32, batch_size=2)
    res = prune(PruneConfig(model=str(path), target_layers=3, method="come-splice", calib=calib, progress=False,
                            device="cpu", method_options={"screen": 0}))
    tree = res.plan.tree
    corr = correspondences(tree)
    assert [list(range(c.first, c.last + 1)) for c in corr] == tree and sum(map(len, tree)) == 6
    moves = [(s["op"], "mlp_ratio" in s) for s in res.plan.steps]
    assert set(moves) == {("drop", False), ("merge", True)}, moves  # drops and per-half merges (a splice here)
    student = res.save(tmp_path / "student")
    train = tmp_path / "train.txt"
    train.write_text(SAMPLE_TEXT * 2)
    out = distill(DistillConfig(student=str(student), teacher=str(path), out=str(tmp_path / "d"), data=str(train),
                                stage="both", steps=1, seq_len=32, batch_size=2, device="cpu", progress=False))
    log = [json.loads(line) for line in (out.out / "distill_log.jsonl").read_text().splitlines()]
    merged = {c.name for c in corr if c.merged}
    assert merged and set(log[0]["points"]) == merged  # stage 1: exactly the merged/spliced layers
    assert set(log[1]["points"]) >= {c.name for c in corr}
    # a spliced layer's loss at its own block is what the layer computes on the teacher's states
    from come.distillation.layerwise import layer_loss
    from come.distillation.losses import LossWeights
    from come.distillation.teacher import capture_states
    from come.models import load_model

    t, _, _ = load_model(str(path), "float32", "cpu")
    s, _, _ = load_model(str(student), "float32", "cpu")
    ids = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        states = capture_states(t, get_adapter(t), ids)
        for c in corr:
            loss = layer_loss(get_adapter(s).layers[c.layer], states, c, LossWeights())
            assert torch.isfinite(loss)
            if not c.merged:
                assert loss.item() < 1e-5  # an untouched layer maps its own block exactly


def test_every_recipe_key_has_a_flag_and_the_printed_line_parses_back(inputs, tmp_path):
    """The card's `come compress ...` line gives the same settings as the recipe (every key through its flag)."""
    import shlex

    from come import recipe
    from come.cli import build_parser
    from come.cliargs import config_from_args

    parser = build_parser()
    accepted = {a.dest for a in parser.come_commands["compress"]._actions}
    for key in recipe.valid_keys("compress"):
        if key != "command":
            assert recipe.flag_of("compress", key).dest in accepted, key
    cfg = config(inputs, tmp_path / "out", recovery="full", train_lm_head=True, train_last=2, lr=3e-4,
                 method="come-plus", method_options={"pair_score": "drop"}, tasks=["piqa"], limit=5)
    line = recipe.command_line(recipe.of(cfg), out=str(tmp_path / "out"))
    args = parser.parse_args(shlex.split(line)[1:])
    again = config_from_args(CompressConfig, args, out=args.out, progress=False)
    assert recipe.of(again) == recipe.of(cfg)


def test_the_teacher_cache_skips_the_teacher_for_windows_seen_and_trains_the_same(inputs, tmp_path, monkeypatch):
    """10 training windows, 12 steps of 2: with --teacher-cache the teacher runs on the first pass only (5
    micro-batches), and the losses are those of the run that recomputes every state."""
    import come.distillation.layerwise as lw

    path = inputs[0]
    calib = CalibConfig(data=str(inputs[1]), samples=4, seq_len=32, batch_size=2)
    student = prune(PruneConfig(model=str(path), target_layers=4, calib=calib, progress=False,
                                device="cpu")).save(tmp_path / "student")
    real, calls = lw.capture_states, []
    monkeypatch.setattr(lw, "capture_states", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    losses = {}
    for mib in (0, 64):
        calls.clear()
        out = distill(DistillConfig(student=str(student), teacher=str(path), out=str(tmp_path / f"d{mib}"),
                                    data=str(inputs[2]), stage="layerwise", steps=12, seq_len=32, batch_size=2,
                                    lr=1e-3, device="cpu", progress=False, teacher_cache=mib)).out
        losses[mib] = [json.loads(line)["loss"] for line in (out / "distill_log.jsonl").read_text().splitlines()]
        assert len(calls) == (12 if mib == 0 else 5), mib
    assert losses[0] == pytest.approx(losses[64], rel=1e-4)


def test_the_dry_run_counts_what_the_global_stage_trains():
    """--train merged+norms adds every other layer's norms and the final norm, --train-lm-head the LM head,
    --train-last the last layers whole (gradients of one process, float32)."""
    from transformers import LlamaConfig

    from come.distillation.memory import Shapes, estimate

    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=5,
                         num_attention_heads=4, num_key_value_heads=2)
    tree = [[0], [1, 2], [3], [4], [5]]
    s = Shapes.of(config)

    def grads(**kw):
        cfg = DistillConfig(student="s", out="o", stage="global", steps=1, **kw)
        row = next(r for r in estimate(config, tree, cfg, 1, torch.float32, "cpu") if r.strategy == "ddp")
        return row.gradients // 4

    assert grads(train="merged") == s.layers[1]
    assert grads(train="merged+norms") == s.layers[1] + sum(s.norms) - s.norms[1] + s.hidden
    assert grads(train="merged", train_lm_head=True, train_last=2) == s.layers[1] + s.layers[3] + s.layers[4] + \
        s.vocab * s.hidden
