"""Distillation on the families whose layers differ in attention type, whose logits are soft-capped or scaled, or
whose projections are fused (Gemma 2/3, Phi-3, OLMo 2, Granite; Qwen2 with sliding-window layers), on tiny random
models: the teacher's states and standalone layers reproduce the model's forward, the logit lens reads the model's
own logits, LoRA reaches every projection, and `come distill` trains a `come prune` student of each family."""

import copy
import json
import re
from contextlib import nullcontext

import pytest
import torch
from conftest import SAMPLE_TEXT, tiny_tokenizer
from test_distill import one_thread  # noqa: F401  (autouse: one thread per test, as there)
from test_families import MIXED, NEW_FAMILIES, run, tiny_family
from transformers import AutoModelForCausalLM, AutoTokenizer

from come.capture import Calibration
from come.cli import main
from come.data import split_windows, tokenize
from come.distillation import LossWeights, correspondences
from come.distillation.correspond import Correspondence
from come.distillation.global_ import global_loss_fn
from come.distillation.layerwise import layerwise_loss_fn
from come.distillation.lora import add_lora
from come.distillation.losses import kl_logits, nmse
from come.distillation.memory import Shapes
from come.distillation.teacher import capture_states
from come.distillation.train import training_text
from come.models import get_adapter, load_model
from come.plan import Plan

POST_PROCESSED = ["gemma2", "gemma3_text", "granite"]  # logits soft-capped (Gemma) or divided (Granite)
T = 24  # tokens per window: longer than the sliding window (8), so a sliding layer's mask differs from a global one
SEQ = 32  # `come distill` windows


def token_ids(n=2, t=T, seed=1):
    return torch.randint(0, 512, (n, t), generator=torch.Generator().manual_seed(seed))


def identity(n_layers: int) -> list[Correspondence]:
    return [Correspondence(i, i, i) for i in range(n_layers)]


# --- the teacher's states and the layers run standalone ---

@pytest.mark.parametrize("family", MIXED)
def test_teacher_states_run_every_layer_as_the_model_does(family):
    """Sliding-window and global layers alternate: each layer, run standalone with the kwargs of its own attention
    type, gives the model's own hidden states bit for bit, so a student identical to its teacher has zero loss."""
    model = tiny_family(family)
    a = get_adapter(model)
    ids = token_ids()
    w = LossWeights(mse=1)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, use_cache=False)
        copy_of = get_adapter(copy.deepcopy(model))
        _, parts = layerwise_loss_fn(model, a, copy_of, identity(a.num_layers), w, nullcontext)(ids)
        assert parts.keys() == {f"L{i}" for i in range(a.num_layers)} and max(parts.values()) < 1e-12, parts
        states = capture_states(model, a, ids)
        for i, layer in enumerate(a.layers):
            assert torch.equal(states.boundary[i], out.hidden_states[i]), i
            assert torch.equal(run(layer, states.boundary[i], states.kwargs_for(layer)), states.boundary[i + 1]), i
        assert torch.allclose(a.logits(states.boundary[a.num_layers]), out.logits, rtol=1e-5, atol=1e-6)


# --- logits: the family's soft-capping and scaling ---

@pytest.mark.parametrize("family", POST_PROCESSED)
def test_logit_terms_read_the_models_own_logits(family):
    """A student whose last layer differs from its teacher's: the logit-lens term at the last point (layer-wise and
    global stage) and the final-logits term are the KL between the two models' own logits."""
    teacher = tiny_family(family)
    student = copy.deepcopy(teacher)
    ta, sa = get_adapter(teacher), get_adapter(student)
    n = ta.num_layers
    ids = token_ids()
    with torch.no_grad():
        torch.manual_seed(2)
        for p in sa.layers[-1].parameters():
            p.add_(0.1 * torch.randn_like(p))
        expected = kl_logits(student(ids).logits, teacher(ids).logits).item()
        lens = LossWeights(mse=0, kl=1, logits=0)
        layerwise, _ = layerwise_loss_fn(teacher, ta, sa, identity(n)[-1:], lens, nullcontext)(ids)
        global_lens, _ = global_loss_fn(teacher, ta, student, sa, identity(n), lens, nullcontext)(ids)
        final, parts = global_loss_fn(teacher, ta, student, sa, identity(n), LossWeights(mse=0, logits=1),
                                      nullcontext)(ids)
    assert expected > 1e-5  # the models differ (Granite divides its logits by 8: a small KL)
    assert layerwise.item() == pytest.approx(expected, rel=1e-4)
    assert global_lens.item() == pytest.approx(expected / n, rel=1e-4)  # the hidden terms average over the points
    assert final.item() == pytest.approx(expected, rel=1e-4) and parts["logits_kl"] == pytest.approx(expected, rel=1e-4)


# --- LoRA: the projections each family has ---

@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_lora_adapts_every_projection_of_its_layers(family):
    """Every linear map of the chosen layers gets an adapter (Phi-3: the fused qkv_proj and gate_up_proj), and the
    memory estimate counts them all."""
    model = tiny_family(family, num_hidden_layers=4)
    linears = [(n, m) for n, m in model.model.layers[0].named_modules() if isinstance(m, torch.nn.Linear)]
    lora_numel = sum(m.in_features + m.out_features for _, m in linears)
    peft = add_lora(model, [1, 3])
    adapted = {re.search(r"\.layers\.(\d+)\.(.+)$", n).groups() for n, m in peft.named_modules()
               if hasattr(m, "lora_A")}
    assert adapted == {(str(i), n) for i in (1, 3) for n, _ in linears}
    assert Shapes.of(tiny_family(family, num_hidden_layers=4).config).lora == [lora_numel] * 4


# --- `come prune`, then `come distill` ---

@pytest.fixture(scope="module")
def pruned_pair(tmp_path_factory):
    """family -> (teacher folder, `come prune` student folder with 2 layers less, training text), made once."""
    root = tmp_path_factory.mktemp("distill-families")
    text = root / "calib.txt"
    text.write_text(SAMPLE_TEXT * 40)
    train = root / "train.txt"
    train.write_text(SAMPLE_TEXT * 2)
    made = {}

    def get(family):
        if family not in made:
            teacher, student = root / family, root / f"{family}-pruned"
            tiny_family(family).save_pretrained(teacher)
            tiny_tokenizer().save_pretrained(teacher)
            assert main(["prune", str(teacher), "--target-layers", "4", "--calib-data", str(text), "--calib-samples",
                         "4", "--calib-seq-len", "32", "--device", "cpu", "--out", str(student)]) == 0
            made[family] = teacher, student, train
        return made[family]

    return get


def train_windows(student, text):
    """The windows `come distill` trains on."""
    return split_windows(tokenize(AutoTokenizer.from_pretrained(student), training_text(str(text))), SEQ, "training")


def distill_args(teacher, student, text, out, *extra):
    return ["distill", "--student", str(student), "--teacher", str(teacher), "--train-data", str(text),
            "--train-seq-len", str(SEQ), "--steps", "2", "--device", "cpu", "--out", str(out), *extra]


def expected_layerwise_points(teacher_dir, student_dir, ids):
    """Each merged layer's first loss (mse=1, kl=1) on the windows `ids`, computed by the calibration engine: the
    teacher's states and each layer's kwargs from `Calibration`, logits from the teacher's `adapter.logits`."""
    teacher, _, _ = load_model(str(teacher_dir), "float32", "cpu")
    student, _, _ = load_model(str(student_dir), "float32", "cpu")
    ta, sa = get_adapter(teacher), get_adapter(student)
    calib = Calibration(teacher, ta, ids, batch_size=len(ids), progress=False)
    calib.run(0)
    points = {}
    with torch.no_grad():
        for c in correspondences(Plan.load(student_dir).tree):
            if c.merged:
                layer = sa.layers[c.layer]
                s, t = run(layer, calib.hidden[c.first][0], calib.kwargs_for(layer)[0]), calib.hidden[c.last + 1][0]
                points[c.name] = (nmse(s, t) + kl_logits(ta.logits(s), ta.logits(t))).item()
    return points


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_come_distill_both_after_prune(pruned_pair, family, tmp_path, capsys):
    """The layer-wise stage's first losses are the calibration engine's (each layer with its own attention type's
    mask and RoPE, logits soft-capped / scaled as the model does); the saved student loads with from_pretrained."""
    teacher, student, text = pruned_pair(family)
    ids = train_windows(student, text)  # one micro-batch holds every window: its loss is the mean over all of them
    out = tmp_path / "out"
    assert main(distill_args(teacher, student, text, out, "--stage", "both", "--loss", "mse=1,kl=1",
                             "--train-batch-size", str(len(ids)), "--lr", "1e-3")) == 0
    capsys.readouterr()
    log = [json.loads(line) for line in (out / "distill_log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == ["layerwise"] * 2 + ["global"] * 2
    expected = expected_layerwise_points(teacher, student, ids)
    assert expected and log[0]["points"] == pytest.approx(expected, rel=1e-4)
    before = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    after = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert after.config.num_hidden_layers == 4
    assert getattr(after.config, "layer_types", None) == getattr(before.config, "layer_types", None)
    merged = [c.layer for c in correspondences(Plan.load(student).tree) if c.merged]
    for i in merged:
        a, b = before.model.layers[i].state_dict(), after.model.layers[i].state_dict()
        assert any(not torch.equal(a[k], b[k]) for k in a), i
    with torch.no_grad():
        assert torch.isfinite(after(token_ids()).logits).all()


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_come_distill_lora_after_prune(pruned_pair, family, tmp_path, capsys):
    """The LoRA baseline moves every projection of every layer (merged into the saved weights) and nothing else."""
    teacher, student, text = pruned_pair(family)
    out = tmp_path / "out"
    assert main(distill_args(teacher, student, text, out, "--stage", "lora", "--train-batch-size", "2",
                             "--lora-lr", "1e-2")) == 0
    capsys.readouterr()
    before = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    after = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert after.config.num_hidden_layers == 4 and not any("lora" in k for k in after.state_dict())
    projections = {n + ".weight" for n, m in before.named_modules() if isinstance(m, torch.nn.Linear)
                   and ".layers." in n}
    a, b = before.state_dict(), after.state_dict()
    assert a.keys() == b.keys() and projections
    for k in a:
        assert torch.equal(a[k], b[k]) != (k in projections), k
    with torch.no_grad():
        assert torch.isfinite(after(token_ids()).logits).all()
