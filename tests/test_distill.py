"""Distillation on tiny random models: correspondences, losses, training, resume, two processes, bad inputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SAMPLE_TEXT, Interrupted, stop_at
from transformers import AutoModelForCausalLM

from come import ComeError, PruneConfig, prune
from come.config import CalibConfig
from come.distillation import DistillConfig, correspondences, distill
from come.distillation.correspond import Correspondence
from come.distillation.layerwise import layer_loss
from come.distillation.losses import LossWeights
from come.distillation.teacher import capture_states
from come.models import get_adapter, load_model
from come.plan import PLAN_FILE


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a busy shared CPU: several threads spin-wait on each other (measured 50x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def pruned(tiny_dir, tmp_path):
    """(teacher folder, student folder, text file): the tiny Llama pruned 6 -> 4 layers by CoMe."""
    path, text = tiny_dir
    calib = CalibConfig(data=str(text), samples=4, seq_len=32, batch_size=2)
    res = prune(PruneConfig(model=str(path), target_layers=4, calib=calib, progress=False, device="cpu"))
    student = res.save(tmp_path / "student")
    train = tmp_path / "train.txt"  # 10 windows of 32 tokens: batches repeat, so a falling loss is not noise
    train.write_text(SAMPLE_TEXT * 2)
    return path, student, train


def cfg(pruned, out, **kw):
    teacher, student, text = pruned
    base = dict(student=str(student), teacher=str(teacher), out=str(out), data=str(text), seq_len=32, batch_size=2,
                steps=4, lr=1e-3, device="cpu", progress=False)
    return DistillConfig(**dict(base, **kw))


def weights(folder):
    m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return m.state_dict()


def test_correspondences_from_tree():
    corr = correspondences([[0], [1, 2], [3], [4, 5, 6], [7]])
    assert corr == [Correspondence(0, 0, 0), Correspondence(1, 1, 2), Correspondence(2, 3, 3),
                    Correspondence(3, 4, 6), Correspondence(4, 7, 7)]
    assert [c.merged for c in corr] == [False, True, False, True, False]
    for bad in ([[0], [2]], [[1, 0]], [[0], []], [[1], [2]]):
        with pytest.raises(ComeError):
            correspondences(bad)


def test_layer_loss_zero_for_exact_copy(pruned):
    teacher_dir, student_dir, _ = pruned
    t, _, _ = load_model(str(teacher_dir), "float32", "cpu")
    s, _, _ = load_model(str(student_dir), "float32", "cpu")
    ta, sa = get_adapter(t), get_adapter(s)
    single = next(c for c in correspondences(json.loads((student_dir / PLAN_FILE).read_text())["tree"])
                  if not c.merged)
    ids = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        states = capture_states(t, ta, ids)
        w = LossWeights(mse=1, cos=1, kl=1)
        zero = layer_loss(sa.layers[single.layer], states, single, w, ta.logits)
        merged = next(c for c in correspondences(json.loads((student_dir / PLAN_FILE).read_text())["tree"])
                      if c.merged)
        nonzero = layer_loss(sa.layers[merged.layer], states, merged, w, ta.logits)
    assert zero.item() < 1e-5
    assert nonzero.item() > 1e-3


# the ratio the mean loss of the last 3 of 12 steps must beat, against the first 3 (measured: about half of it)
@pytest.mark.parametrize("stage,extra,ratio", [
    ("layerwise", {}, 0.7),
    ("global", {}, 0.7),
    ("global", {"train": "lora", "lora_lr": 1e-2}, 0.9),
    ("global", {"train": "norms", "lr": 1e-2, "loss": "mse=1,cos=0.5,kl=0.5,logits=1"}, 0.98),
    ("lora", {"lora_lr": 1e-2}, 0.97),  # the LM loss of a random model: the baseline moves it a little
])
def test_few_steps_reduce_loss(pruned, tmp_path, stage, extra, ratio):
    res = distill(cfg(pruned, tmp_path / "out", stage=stage, steps=12, batch_size=2, **extra))
    out = res.out
    assert (out / PLAN_FILE).exists() and (out / "distill_summary.md").exists()
    log = [json.loads(line) for line in (out / "distill_log.jsonl").read_text().splitlines()]
    assert len(log) == 12 and all(r["stage"] == stage for r in log)
    first, last = (sum(r["loss"] for r in part) / 3 for part in (log[:3], log[-3:]))
    assert last < ratio * first, (first, last)
    if stage == "global":
        assert set(log[0]["points"]) >= {c.name for c in correspondences(res.summary["tree"])} | {"logits_kl"}
    m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)  # a stock HF folder, adapters merged
    assert m.config.num_hidden_layers == 4 and not any("lora" in k for k in m.state_dict())


def test_resume_is_bit_for_bit(pruned, tmp_path):
    full = distill(cfg(pruned, tmp_path / "full", stage="both", steps=6, grad_accum=2))
    with pytest.raises(Interrupted):  # in the global stage, after its checkpoint at step 2 (9 = 6 + 3)
        distill(cfg(pruned, tmp_path / "cut", stage="both", steps=6, grad_accum=2, checkpoint_every=2),
                on_step=stop_at(9))
    assert not (tmp_path / "cut").exists() and (tmp_path / "cut.partial" / "checkpoint" / "state.json").exists()
    with pytest.raises(ComeError, match="resume"):  # an interrupted run is neither overwritten nor mixed silently
        distill(cfg(pruned, tmp_path / "cut", stage="both", steps=6, grad_accum=2, checkpoint_every=2))
    with pytest.raises(ComeError, match="other settings"):
        distill(cfg(pruned, tmp_path / "cut", stage="both", steps=6, grad_accum=2, lr=5e-4, resume=True))
    resumed = distill(cfg(pruned, tmp_path / "cut", stage="both", steps=6, grad_accum=2, checkpoint_every=2,
                          resume=True))
    a, b = weights(full.out), weights(resumed.out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full.summary["stages"]["global"]["last_loss"] == resumed.summary["stages"]["global"]["last_loss"]
    log = (resumed.out / "distill_log.jsonl").read_text().splitlines()
    assert len(log) == 12 and not (tmp_path / "cut.partial").exists()


def test_resume_inside_lora_stage(pruned, tmp_path):
    kw = dict(stage="lora", steps=5, lora_lr=1e-2)
    full = distill(cfg(pruned, tmp_path / "full", **kw))
    with pytest.raises(Interrupted):
        distill(cfg(pruned, tmp_path / "cut", checkpoint_every=1, **kw), on_step=stop_at(3))
    resumed = distill(cfg(pruned, tmp_path / "cut", checkpoint_every=1, resume=True, **kw))
    a, b = weights(full.out), weights(resumed.out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def run_cli(args, nproc=None, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    launcher = [sys.executable, "-m", "come.cli"]
    if nproc:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    "-m", "come.cli"]
    return subprocess.run(launcher + ["distill", *args], env=env, capture_output=True, text=True, timeout=timeout)


def cli_args(pruned, out, *extra):
    teacher, student, text = pruned
    return ["--student", str(student), "--teacher", str(teacher), "--train-data", str(text), "--train-seq-len", "32",
            "--train-batch-size", "4", "--lr", "1e-3", "--device", "cpu", "--out", str(out), *extra]


@pytest.mark.parametrize("stage", ["both"])  # layer-split layer-wise stage, then DDP; ~1 min here
def test_two_processes_match_one(pruned, tmp_path, stage):
    extra = ["--stage", stage, "--steps", "3", "--grad-accum", "2"]
    one = run_cli(cli_args(pruned, tmp_path / "one", *extra))
    assert one.returncode == 0, one.stderr[-2000:]
    two = run_cli(cli_args(pruned, tmp_path / "two", *extra), nproc=2)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    changed = max((a[k] - w).abs().max().item() for k, w in weights(pruned[1]).items())
    assert changed > 1e-3 and diff < 1e-4, (changed, diff)
    s = json.loads((tmp_path / "two" / "distill_summary.json").read_text())
    assert s["processes"] == 2


def test_bad_inputs(pruned, tmp_path):
    teacher, student, text = pruned
    no_plan = tmp_path / "no-plan"
    no_plan.mkdir()
    (no_plan / "config.json").write_text("{}")
    cases = {
        "no plan": cfg(pruned, tmp_path / "o1", student=str(no_plan)),
        "too short": cfg(pruned, tmp_path / "o2", seq_len=400),
        "diverged": cfg(pruned, tmp_path / "o3", stage="global", lr=1e8, clip=0, steps=6),
    }
    for why, c in cases.items():
        with pytest.raises(ComeError) as e:
            distill(c)
        assert "\n" not in str(e.value), why
        assert not Path(c.out).exists() and not Path(c.out + ".partial").exists(), why
    # a teacher that is not the student's original: other layer count, then other weights
    other = tmp_path / "other"
    AutoModelForCausalLM.from_pretrained(teacher).save_pretrained(other)
    from conftest import tiny_model
    tiny_model(num_hidden_layers=5).save_pretrained(tmp_path / "five")
    tiny_model(seed=1).save_pretrained(tmp_path / "seed1")
    for t, match in ((tmp_path / "five", "layers"), (tmp_path / "seed1", "embeddings")):
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (tmp_path / t.name / f).write_bytes((teacher / f).read_bytes())
        with pytest.raises(ComeError, match=match):
            distill(cfg(pruned, tmp_path / "o4", teacher=str(t)))
    eval_text = tmp_path / "eval.txt"
    from come.data import wiki_passages
    eval_text.write_text("\n\n".join(wiki_passages("eval")[:20]))
    with pytest.raises(ComeError, match="evaluation"):
        distill(cfg(pruned, tmp_path / "o5", data=str(eval_text)))
    r = run_cli(cli_args(pruned, tmp_path / "o6", "--steps", "2", "--loss", "mse=1,bogus=2"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "bogus" in r.stderr


def test_perplexity_windows_beyond_the_students_context_are_refused_before_any_weights_load(pruned, tmp_path,
                                                                                            monkeypatch):
    import come.distillation.train as train

    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("weights loaded"))
    c = cfg(pruned, tmp_path / "o", ppl_windows=2, ppl_data=str(pruned[0].parent / "eval.txt"))
    assert c.ppl_seq_len == 2048  # `come eval`'s default; the tiny model's context is 512
    with pytest.raises(ComeError, match=r"^--ppl-seq-len 2048 exceeds the model context \(512\)"):
        distill(c)
    assert not (tmp_path / "o").exists()
