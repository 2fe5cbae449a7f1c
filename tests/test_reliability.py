"""Never lose or corrupt data: output folders, plans, checkpoints, foreign code and messages under bad input and
faults (a careless or hostile user, a full or read-only disk, SIGKILL/SIGTERM). Tiny models; in-process runs of
the CLI except where a real process must die."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

import come.io
import come.models
from come.cli import main
from come.errors import ComeError
from come.io import atomic_output_dir, clean_stale_temporaries
from come.plan import Plan, apply_plan

ROOT = Path(__file__).resolve().parents[1]
PRUNE = ["--calib-samples", "2", "--calib-seq-len", "32", "--device", "cpu"]
EVAL = ["--ppl-seq-len", "32", "--ppl-max-windows", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(work folder, base model folder, calibration text, evaluation text)."""
    from conftest import SAMPLE_TEXT, tiny_model, tiny_tokenizer

    work = tmp_path_factory.mktemp("rel")
    tok = tiny_tokenizer()
    for name, kw in (("base", {}), ("seed1", {"seed": 1}), ("wide", {"hidden_size": 120})):
        tiny_model(**kw).save_pretrained(work / name)
        tok.save_pretrained(work / name)
    (work / "calib.txt").write_text(SAMPLE_TEXT * 40)
    (work / "eval.txt").write_text(SAMPLE_TEXT[::-1] * 40)
    return work, work / "base", work / "calib.txt", work / "eval.txt"


@pytest.fixture(scope="module")
def plans(base):
    """Plan folders of the base model pruned 6 -> 4: plain CoMe, and CoMe with re-fit tensors."""
    work, model, calib, _ = base
    for name, extra in (("plain", []), ("refit", ["--reconstruct", "--calib-samples", "4"])):
        assert main(["prune", str(model), "--target-layers", "4", "--calib-data", str(calib), *PRUNE,
                     "--out", str(work / "plans" / name), *extra]) == 0
    return work / "plans"


@pytest.fixture
def run(capsys):
    def _run(*argv):
        code = main([str(a) for a in argv])
        err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "it/s" not in ln]
        return code, "\n".join(ln for ln in err if ln.startswith("come: "))
    return _run


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if any model's weights are loaded."""
    def fail(*a, **k):
        pytest.fail("weights were loaded before the refusal")
    for module in ("come.models", "come.prune"):
        monkeypatch.setattr(sys.modules[module], "load_model", fail)


def one_line_error(code, err, *needles):
    assert code == 2, err
    assert err.startswith("come: error: ") and "\n" not in err, err
    for n in needles:
        assert n in err, err


def prune_argv(model, calib, out, *extra):
    return ["prune", model, "--target-layers", "5", "--calib-data", calib, *PRUNE, "--out", out, *extra]


# --- data loss: outputs that would destroy data are refused up front ---


@pytest.mark.parametrize("target", [".", ".."])
@pytest.mark.parametrize("command", ["prune", "apply", "eval", "compare"])
def test_out_that_is_the_current_folder_or_a_parent_is_refused(base, plans, run, tmp_path, monkeypatch, no_weights,
                                                               command, target):
    work, model, calib, text = base
    (tmp_path / "child").mkdir()
    (tmp_path / "keep.txt").write_text("user data")
    (tmp_path / "child" / "keep.txt").write_text("user data")
    monkeypatch.chdir(tmp_path / "child")
    argv = {"prune": prune_argv(model, calib, target),
            "apply": ["apply", plans / "plain", "--model", model, "--out", target],
            "eval": ["eval", model, "--ppl", text, *EVAL, "--out", target],
            "compare": ["compare", model, "--target-layers", "5", "--methods", "sleb", "--calib-data", calib,
                        "--ppl-data", text, "--out", target]}[command]
    code, err = run(*argv, "--overwrite")
    one_line_error(code, err, "current folder" if target == "." else "a parent of the current folder")
    assert (tmp_path / "keep.txt").read_text() == (tmp_path / "child" / "keep.txt").read_text() == "user data"


def test_out_dot_in_an_empty_folder_is_refused(base, run, tmp_path, monkeypatch):
    _, model, calib, _ = base
    monkeypatch.chdir(tmp_path)
    one_line_error(*run(*prune_argv(model, calib, ".")), "is the current folder")
    assert tmp_path.is_dir() and not any(tmp_path.iterdir())


def test_out_that_is_or_holds_an_input_is_refused(base, plans, run, tmp_path, no_weights):
    work, model, calib, text = base
    victim = tmp_path / "models" / "m"
    shutil.copytree(model, victim)
    before = sorted(p.name for p in victim.iterdir())
    for out in (victim, victim.parent):
        one_line_error(*run(*prune_argv(victim, calib, out, "--overwrite")), "which this run reads")
    one_line_error(*run(*prune_argv(model, calib, work, "--overwrite")), "which this run reads")  # holds calib
    one_line_error(*run("eval", victim, "--ppl", text, *EVAL, "--out", victim, "--overwrite"), "this run reads")
    one_line_error(*run("apply", plans / "plain", "--model", victim, "--out", victim, "--overwrite"), "this run reads")
    assert sorted(p.name for p in victim.iterdir()) == before


def test_overwrite_writes_the_new_folder_then_swaps(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    # deleting the old folder fails part-way: the new result is in place whole, the old one waits aside
    real_rmtree = shutil.rmtree

    def rmtree_fails_on_old(path, *a, **k):
        if ".out.old-" in str(path):
            raise PermissionError(13, "Permission denied")
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(come.io.shutil, "rmtree", rmtree_fails_on_old)
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".out.old-")]
    assert len(aside) == 1 and (aside[0] / "old.txt").read_text() == "old"
    monkeypatch.setattr(come.io.shutil, "rmtree", real_rmtree)
    os.utime(aside[0], (0, 0))
    os.utime(aside[0] / "old.txt", (0, 0))
    with atomic_output_dir(out, overwrite=True) as tmp:  # the next run removes the old folder left aside
        (tmp / "newer.txt").write_text("newer")
    assert not aside[0].exists() and sorted(p.name for p in out.iterdir()) == ["newer.txt"]

    # renaming the new folder in fails: the old folder is back, whole, and nothing else is left
    real_rename = Path.rename

    def rename_fails_for_new(self, target):
        if ".out.tmp-" in self.name:
            raise OSError(5, "Input/output error")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename_fails_for_new)
    with pytest.raises(OSError):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "newest.txt").write_text("newest")
    assert sorted(p.name for p in out.iterdir()) == ["newer.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_outputs_that_cannot_be_written_are_refused_before_weights_load(base, run, tmp_path, monkeypatch,
                                                                        no_weights):
    _, model, calib, _ = base
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_error(*run(*prune_argv(model, calib, afile / "out")), "which is a file")
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("x")
    (tmp_path / "link").symlink_to(real)
    one_line_error(*run(*prune_argv(model, calib, tmp_path / "link", "--overwrite")), "is a symbolic link")
    assert (real / "keep.txt").exists()
    mount = tmp_path / "mnt"
    mount.mkdir()
    monkeypatch.setattr(come.io.os.path, "ismount", lambda p: Path(p) == mount)
    one_line_error(*run(*prune_argv(model, calib, mount)), "is a mount point")
    monkeypatch.setattr(come.io.shutil, "disk_usage", lambda p: SimpleNamespace(free=4096))
    one_line_error(*run(*prune_argv(model, calib, tmp_path / "full")), "the result needs about", "0.0 MiB free")


def test_read_only_file_system_is_refused_before_weights_load(base, run, tmp_path, no_weights):
    _, model, calib, _ = base
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)]).returncode:
            pytest.skip("cannot mount a tmpfs here")
    else:
        ro.chmod(0o555)
    try:
        one_line_error(*run(*prune_argv(model, calib, ro / "out")), "cannot write in")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)])
        ro.chmod(0o755)


def test_a_save_that_fails_anyway_lands_in_a_named_fallback_folder(base, run, tmp_path, monkeypatch):
    prune_module = sys.modules["come.prune"]  # `come.prune` is also the API function
    _, model, calib, _ = base
    out = tmp_path / "out"
    real_save = prune_module.save_model

    def disk_full_beside_out(m, folder, dtype):
        if Path(folder).parent == tmp_path:
            raise OSError(28, "No space left on device")
        real_save(m, folder, dtype)

    monkeypatch.setattr(prune_module, "save_model", disk_full_beside_out)
    monkeypatch.setenv("COME_RESCUE_DIR", str(tmp_path / "rescue"))
    code, err = run(*prune_argv(model, calib, out))
    one_line_error(code, err, "No space left on device", "saved in")
    rescue = Path(err.split("saved in ")[1].split(" instead")[0])
    assert rescue.parent == tmp_path / "rescue" and (rescue / "come_plan.json").exists()
    assert len(load_file(rescue / "model.safetensors")) > 0
    # no temporary is left; the run's checkpoint (the whole plan) stays for `--resume`
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".out.resume"]
    assert (tmp_path / ".out.resume" / "come_plan.json").exists()


def test_output_folder_mode_follows_the_umask(base, tmp_path):
    _, model, calib, _ = base
    old = os.umask(0o027)
    try:
        assert main([str(a) for a in prune_argv(model, calib, tmp_path / "out")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750


# --- temporaries and signals ---

KILL_DURING_WRITE = """
import os, signal, sys
from come.io import atomic_output_dir
with atomic_output_dir(sys.argv[1]) as tmp:
    (tmp / "half.bin").write_bytes(b"x" * 1000)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_temporaries_are_removed_by_the_next_run(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, "-c", KILL_DURING_WRITE, str(tmp_path / "out")], env=env)
    assert r.returncode == -signal.SIGKILL
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    assert len(left) == 1 and (left[0] / "half.bin").exists()
    # a temporary without a writer record: kept while fresh (another run may be writing it), removed when old
    fresh, old = tmp_path / ".out.tmp-fresh", tmp_path / ".out.tmp-old"
    fresh.mkdir()
    old.mkdir()
    os.utime(old, (0, 0))
    foreign = tmp_path / ".notours.tmp-x"  # another output's temporary without a writer record: never touched
    foreign.mkdir()
    os.utime(foreign, (0, 0))
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "done.txt").write_text("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notours.tmp-x", ".out.tmp-fresh", "out"]
    assert clean_stale_temporaries(tmp_path, "out", max_age_s=0) == [fresh]


SIGTERM_DURING_SAVE = """
import os, signal, sys
import importlib
module = importlib.import_module("come.prune")  # come's names load on first use
real = module.save_model
def save_then_term(*a, **k):
    real(*a, **k)
    os.kill(os.getpid(), signal.SIGTERM)
module.save_model = save_then_term
from come.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_is_handled_like_sigint(base, tmp_path):
    _, model, calib, _ = base
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    argv = [str(a) for a in prune_argv(model, calib, tmp_path / "out")]
    r = subprocess.run([sys.executable, "-c", SIGTERM_DURING_SAVE, *argv], env=env, capture_output=True, text=True)
    assert r.returncode == 143 and "come: terminated" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and [p.name for p in tmp_path.iterdir()] == [".out.resume"]
    assert "--resume" in r.stderr  # the plan so far stays beside --out, and the error says how to go on


def test_compare_never_carries_stale_temporaries_and_refuses_out_dot(base, run, tmp_path, monkeypatch):
    _, model, calib, text = base
    out = tmp_path / "c"
    argv = ["compare", model, "--target-layers", "5", "--methods", "sleb", "--calib-data", calib, "--calib-samples",
            "2", "--calib-seq-len", "32", "--ppl-data", text, "--ppl-seq-len", "32", "--ppl-max-windows", "2",
            "--device", "cpu", "--out"]
    assert run(*argv, out)[0] == 0
    stale = out.with_name("c.partial") / "methods" / ".sleb.tmp-dead"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_text("half-written")
    (out.with_name("c.partial") / "rows").mkdir()
    (out.with_name("c.partial") / "rows" / ".sleb.json.tmp").write_text("{")
    assert run(*argv, out, "--resume")[0] == 0
    assert not list(out.rglob(".*tmp*")) and not out.with_name("c.partial").exists()
    monkeypatch.chdir(tmp_path / "c")
    one_line_error(*run(*argv, ".", "--resume"), "is the current folder")


# --- silent corruption: checkpoints ---


def broken_copy(model, dst, edit):
    shutil.copytree(model, dst)
    sd = load_file(dst / "model.safetensors")
    edit(dst, sd)
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_missing_or_unexpected_checkpoint_keys_are_an_error(base, run, tmp_path):
    from conftest import tiny_model

    _, model, calib, text = base

    def no_layer5(d, sd):
        for k in [k for k in sd if ".layers.5." in k or k == "lm_head.weight"]:
            del sd[k]

    def no_lm_head(d, sd):
        del sd["lm_head.weight"]

    def extra(d, sd):
        sd["model.extra.weight"] = sd["model.norm.weight"].clone()

    def claims_8(d, sd):
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 8}))

    m = broken_copy(model, tmp_path / "nolayer5", no_layer5)
    one_line_error(*run(*prune_argv(m, calib, tmp_path / "o1")), "says 6 layers but the weights hold 5")
    m = broken_copy(model, tmp_path / "nohead", no_lm_head)
    one_line_error(*run(*prune_argv(m, calib, tmp_path / "o2")), "1 missing weights", "lm_head.weight")
    m = broken_copy(model, tmp_path / "extra", extra)
    one_line_error(*run("eval", m, "--ppl", text, *EVAL), "1 unexpected weights", "model.extra.weight")
    m = broken_copy(model, tmp_path / "eight", claims_8)
    one_line_error(*run("eval", m, "--ppl", text, *EVAL), "says 8 layers but the weights hold 6")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    tied = tmp_path / "tied"  # tied embeddings: no lm_head.weight on disk, as the config says
    tiny_model(tie_word_embeddings=True).save_pretrained(tied)
    shutil.copy(model / "tokenizer.json", tied)
    shutil.copy(model / "tokenizer_config.json", tied)
    assert "lm_head.weight" not in load_file(tied / "model.safetensors")
    loaded, _, _ = come.models.load_model(str(tied), "float32", "cpu")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


# --- silent corruption: plans ---


def merge_at(plan):
    return next(s for s in plan["steps"] if s["op"] == "merge")


def first(op):
    return lambda p: next(i for i, s in enumerate(p["steps"]) if s["op"] == op)


PLAN_EDITS = {
    "negative layer": (lambda p: merge_at(p).update(layer=-2), "layer -2 is out of range"),
    "layer past the end": (lambda p: merge_at(p).update(layer=5), "layer 5 is out of range"),
    "layer as a string": (lambda p: merge_at(p).update(layer="1"), "layer must be an integer"),
    "layer as a bool": (lambda p: merge_at(p).update(layer=True), "layer must be an integer"),
    "duplicated channel": (lambda p: merge_at(p)["mlp_channels"][0].__setitem__(1, merge_at(p)["mlp_channels"][0][0]),
                           "mlp_channels of layer a repeats index"),
    "too few channels": (lambda p: merge_at(p)["mlp_channels"][0].pop(), "budget of"),
    "channel out of range": (lambda p: merge_at(p)["mlp_channels"][1].__setitem__(0, 10**6), "outside 0..127"),
    "duplicated KV group": (lambda p: merge_at(p).update(attn_groups=[[0, 0], []]), "attn_groups"),
    "missing attn_groups": (lambda p: merge_at(p).pop("attn_groups"), "attn_groups must be two lists"),
    "NaN ratio": (lambda p: merge_at(p).update(ratio=[math.nan, 0.5]), "ratio [nan, 0.5] must be two shares"),
    "negative ratio": (lambda p: merge_at(p).update(ratio=[-0.5, 1.5]), "must be two shares in [0, 1]"),
    "ratio of one number": (lambda p: merge_at(p).update(ratio=[1.0]), "ratio must be a list of two numbers"),
    "ratio not summing to 1": (lambda p: merge_at(p).update(ratio=[0.5, 0.6]), "sum to 1"),
    "unknown norm": (lambda p: merge_at(p).update(norm="max"), "norm must be one of"),
    "merge of three": (lambda p: merge_at(p).update(span=3), "span of a merge must be 2"),
    "unknown op": (lambda p: merge_at(p).update(op="explode"), "op is unknown"),
    "wrong tree": (lambda p: p.update(tree=[[0], [1], [2, 3, 4, 5]]), "plan tree does not match its steps"),
    "steps not a list": (lambda p: p.update(steps={"op": "merge"}), "plan steps must be a list"),
    "no base layer count": (lambda p: p["base_model"].pop("num_layers"), "num_layers"),
}


@pytest.mark.parametrize("case", list(PLAN_EDITS))
def test_apply_validates_the_plan_before_touching_the_model(plans, base, run, tmp_path, no_weights, case):
    _, model, _, _ = base
    edit, needle = PLAN_EDITS[case]
    folder = tmp_path / "plan"
    shutil.copytree(plans / "plain", folder)
    plan = json.loads((folder / "come_plan.json").read_text())
    edit(plan)
    (folder / "come_plan.json").write_text(json.dumps(plan))
    one_line_error(*run("apply", folder, "--model", model, "--out", tmp_path / "out"), needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tensor,needle", [
    (torch.tensor(1e30), "has shape [], o_proj of this model is [96, 96]"),
    (torch.zeros(96, 96, dtype=torch.float16), "is float16 but the model computes in float32"),
    (torch.full((96, 96), math.nan), "holds NaN or infinite values"),
    (torch.zeros(96, 96, dtype=torch.int32), "must be a floating-point tensor"),
])
def test_apply_checks_sidecar_tensors(plans, base, run, tmp_path, no_weights, tensor, needle):
    _, model, _, _ = base
    folder = tmp_path / "plan"
    shutil.copytree(plans / "refit", folder)
    tensors = load_file(folder / "come_plan.safetensors")
    key = json.loads((folder / "come_plan.json").read_text())["steps"][1]["tensors"]["o_proj"]
    tensors[key] = tensor
    save_file(tensors, folder / "come_plan.safetensors")
    one_line_error(*run("apply", folder, "--model", model, "--out", tmp_path / "out"), f"tensor '{key}'", needle)


def test_apply_plan_refuses_a_bad_step_before_the_first_one(plans, base):
    from conftest import tiny_model

    plan = Plan.load(plans / "plain")
    plan.steps[-1] = dict(plan.steps[-1], layer=99)
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ComeError, match=r"plan steps\[\d+\] \(merge\): layer 99 is out of range"):
        apply_plan(model, plan)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_apply_refuses_another_model_of_the_plan_shape_unless_forced(plans, base, run, tmp_path):
    work, model, _, _ = base
    code, err = run("apply", plans / "plain", "--model", work / "seed1", "--out", tmp_path / "o1")
    one_line_error(code, err, "other weights", "--force")
    code, err = run("apply", plans / "plain", "--model", work / "seed1", "--out", tmp_path / "o2", "--force")
    assert code == 0 and "come: warning: --force" in err and (tmp_path / "o2" / "model.safetensors").exists()
    code, err = run("apply", plans / "plain", "--model", work / "wide", "--out", tmp_path / "o3", "--force")
    one_line_error(code, err, "of another shape (hidden_size 96 vs 120")
    other_cfg = tmp_path / "eps"
    shutil.copytree(model, other_cfg)
    cfg = json.loads((other_cfg / "config.json").read_text())
    (other_cfg / "config.json").write_text(json.dumps({**cfg, "rms_norm_eps": 0.1}))
    one_line_error(*run("apply", plans / "plain", "--model", other_cfg, "--out", tmp_path / "o4"), "other config")


def test_plan_records_the_base_model_by_name_and_apply_finds_it_locally(plans, base, run, tmp_path, monkeypatch):
    work, model, _, _ = base
    text = (plans / "plain" / "come_plan.json").read_text()
    recorded = json.loads(text)["base_model"]
    assert recorded["name"] == "base" and recorded["source"] == "local" and str(work) not in json.dumps(recorded)
    assert recorded["shape"]["hidden_size"] == 96 and all(recorded["fingerprint"].values())
    # beside the plan's folder
    shutil.copytree(plans / "plain", tmp_path / "p")
    shutil.copytree(model, tmp_path / "base")
    monkeypatch.chdir(tmp_path / "p")
    assert run("apply", tmp_path / "p", "--out", tmp_path / "o1")[0] == 0
    a, b = load_file(plans / "plain" / "model.safetensors"), load_file(tmp_path / "o1" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a folder named like the base in the current folder, but another model: refused by its fingerprint
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(work / "seed1", elsewhere / "base")
    monkeypatch.chdir(elsewhere)
    one_line_error(*run("apply", plans / "plain", "--out", tmp_path / "o2"), "other weights")
    # nothing of that name anywhere near: a one-line error, never a hub lookup
    monkeypatch.chdir(tmp_path / "p")
    monkeypatch.setattr(come.models, "resolve_model", lambda n: pytest.fail(f"looked up {n}"))
    one_line_error(*run("apply", plans / "plain", "--out", tmp_path / "o3"), "local model folder 'base'",
                   "pass --model")
    monkeypatch.undo()
    # a plan written before base models carried a source, shape and fingerprint still applies
    legacy = json.loads(text)
    legacy["base_model"] = {k: recorded[k] for k in ("name", "model_type", "num_layers", "hidden_size", "params")}
    (tmp_path / "p" / "come_plan.json").write_text(json.dumps(legacy))
    assert run("apply", tmp_path / "p", "--model", model, "--out", tmp_path / "o4")[0] == 0


# --- foreign code ---


def evil_copy(model, dst, marker, where="config.json"):
    shutil.copytree(model, dst)
    cfg = json.loads((dst / where).read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel",
                       "AutoTokenizer": ["evil.EvilTokenizer", None]}
    if where == "config.json":
        cfg["model_type"] = "evil"
    (dst / where).write_text(json.dumps(cfg))
    (dst / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    return dst


def test_folders_that_ship_code_are_refused_unless_trusted(base, run, tmp_path, monkeypatch):
    _, model, calib, text = base
    marker = tmp_path / "RAN"
    monkeypatch.setattr(come.models, "TRUST_REMOTE_CODE", False)  # restored after the opt-in below
    monkeypatch.setattr("builtins.input", lambda *a: "y")  # a user who answers yes to transformers' prompt
    for where in ("config.json", "tokenizer_config.json"):
        evil = evil_copy(model, tmp_path / where, marker, where)
        one_line_error(*run("eval", evil, "--ppl", text, *EVAL), "ships its own Python code", where,
                       "--trust-remote-code")
        one_line_error(*run(*prune_argv(evil, calib, tmp_path / "o")), "--trust-remote-code")
    assert not marker.exists()
    code, err = run("eval", tmp_path / "config.json", "--ppl", text, *EVAL, "--trust-remote-code")
    assert marker.exists()  # the opt-in does run the folder's code (then its unknown architecture is refused)
    one_line_error(code, err, "unsupported architecture")


def test_every_load_passes_trust_remote_code_false(base, monkeypatch):
    import transformers

    _, model, _, _ = base
    seen = []
    for cls in ("AutoConfig", "AutoModelForCausalLM", "AutoTokenizer"):
        real = getattr(transformers, cls).from_pretrained

        def spy(*a, _real=real, _cls=cls, **k):
            seen.append((_cls, k.get("trust_remote_code", "absent")))
            return _real(*a, **k)
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", spy)
    come.models.load_model(str(model), "float32", "cpu")
    assert {c for c, _ in seen} == {"AutoConfig", "AutoModelForCausalLM", "AutoTokenizer"}
    assert all(v is False for _, v in seen), seen


# --- messages ---


def test_messages_say_what_is_wrong(base, run, tmp_path, no_weights):
    _, model, calib, text = base
    bad = tmp_path / "badcfg"
    shutil.copytree(model, bad)
    (bad / "config.json").write_text('{"model_type": "llama",')
    code, err = run("eval", bad, "--ppl", text, *EVAL)
    one_line_error(code, err, "is not valid JSON")
    assert "offline" not in err
    if not torch.cuda.is_available():
        code, err = run("eval", model, "--ppl", text, "--ppl-seq-len", "32", "--device", "cuda")
        one_line_error(code, err, "no CUDA GPU is visible", "--device cpu")
        assert "dtype" not in err
        one_line_error(*run(*prune_argv(model, calib, tmp_path / "o"), "--store-device", "cuda"),
                       "--store-device 'cuda'", "no CUDA GPU is visible")
    ints = tmp_path / "ints.jsonl"
    ints.write_text('{"text": 5}\n' * 20)
    one_line_error(*run(*prune_argv(model, ints, tmp_path / "o")), "--calib-data", "must be a string")
    one_line_error(*run(*prune_argv(model, tmp_path / "nope.txt", tmp_path / "o")), "nope.txt")
    one_line_error(*run("prune", model, "--target-layers", "5", "--calib-data", calib, "--calib-seq-len", "1024",
                        "--out", tmp_path / "o"), "--calib-seq-len 1024 exceeds the model context (512)")
    assert not (tmp_path / "o").exists()


def test_unreadable_weights_are_named(base, run, tmp_path):
    _, model, _, text = base
    link = tmp_path / "link"
    shutil.copytree(model, link)
    (link / "model.safetensors").unlink()
    (link / "model.safetensors").symlink_to(tmp_path / "gone.safetensors")
    one_line_error(*run("eval", link, "--ppl", text, *EVAL), "is a broken link")
    cut = tmp_path / "cut"
    shutil.copytree(model, cut)
    (cut / "model.safetensors").write_bytes((cut / "model.safetensors").read_bytes()[:4000])
    one_line_error(*run("eval", cut, "--ppl", text, *EVAL), "is not a valid safetensors file", "truncated")


def test_baseline_problems_fail_before_the_model_is_evaluated(base, run, tmp_path, monkeypatch):
    import come.eval.evaluation

    _, model, _, text = base
    monkeypatch.setattr(come.eval.evaluation, "evaluate_model", lambda *a: pytest.fail("evaluated first"))
    forged = tmp_path / "forged.json"
    for data in ({"settings": [], "model": {}}, {"settings": {}, "model": {"ppl": 3}},
                 {"settings": {}, "model": {"ppl": {"x": {"ppl": "high"}}}}):
        forged.write_text(json.dumps(data))
        one_line_error(*run("eval", model, "--ppl", text, *EVAL, "--baseline", forged), "is not a `come eval`")
    t = time.perf_counter()
    one_line_error(*run("eval", model, "--ppl", text, *EVAL, "--baseline", "models/bsae"), "models/bsae")
    assert time.perf_counter() - t < 30
