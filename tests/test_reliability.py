"""Never lose or corrupt data: output folders, plans, checkpoints, foreign code and messages under bad input and
faults (a careless or hostile user, a full or read-only disk, SIGKILL/SIGTERM). Tiny models; in-process runs of
the CLI except where a real process must die."""

import importlib
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

import come.distillation.train  # noqa: F401  (bound to the real load_model before no_weights patches it)
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
    for name, extra in (("plain", []), ("refit", ["--method", "come-plus", "--calib-samples", "4"])):
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
                        "--ppl", text, "--out", target]}[command]
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
    prune_module = importlib.import_module("come.prune")  # the module: `come.prune` is also the API function
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
    # every file too, the weights included (transformers writes model.safetensors 0600 through a temporary file)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
    assert modes["model.safetensors"] == 0o640 and set(modes.values()) == {0o640}, modes


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
            "2", "--calib-seq-len", "32", "--ppl", text, "--ppl-seq-len", "32", "--ppl-max-windows", "2",
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
    for module in (come.models, come.models.loading):  # the API name and the one load_config calls
        monkeypatch.setattr(module, "resolve_model", lambda n: pytest.fail(f"looked up {n}"))
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
    monkeypatch.setattr(come.models.loading, "TRUST_REMOTE_CODE", False)  # restored after the opt-in below
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


# --- every command that writes: one output discipline (distill and compare as prune and apply) ---

DISTILL = ["--train-seq-len", "32", "--train-batch-size", "2", "--steps", "1", "--device", "cpu"]


def distill_argv(student, teacher, data, out, *extra):
    return ["distill", "--student", student, "--teacher", teacher, "--train-data", data, *DISTILL, "--out", out,
            *extra]


def compare_argv(model, calib, text, out, *extra):
    return ["compare", model, "--target-layers", "5", "--methods", "sleb", "--calib-data", calib, "--calib-samples",
            "2", "--calib-seq-len", "32", "--ppl", text, "--ppl-seq-len", "32", "--ppl-max-windows", "2",
            "--device", "cpu", "--out", out, *extra]


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def test_distill_and_compare_never_replace_their_inputs(base, plans, run, tmp_path, no_weights):
    work, model, calib, text = base
    teacher = tmp_path / "teacher"
    shutil.copytree(model, teacher)
    student = plans / "plain"
    data_dir, ppl_dir = tmp_path / "train", tmp_path / "ppl"
    data_dir.mkdir()
    ppl_dir.mkdir()
    shutil.copy(calib, data_dir / "train.txt")
    shutil.copy(text, ppl_dir / "ppl.txt")
    before = {f: listing(f) for f in (teacher, student, data_dir, ppl_dir)}
    for out in (teacher, student, data_dir, teacher / "inside"):
        one_line_error(*run(*distill_argv(student, teacher, data_dir / "train.txt", out, "--overwrite")),
                       "this run reads")
    one_line_error(*run(*compare_argv(model, calib, ppl_dir / "ppl.txt", ppl_dir, "--overwrite")), "this run reads")
    one_line_error(*run(*compare_argv(teacher, calib, text, teacher / "cmp")), "lies inside")
    one_line_error(*run(*prune_argv(teacher, calib, teacher / "pruned")), "lies inside")
    assert {f: listing(f) for f in (teacher, student, data_dir, ppl_dir)} == before


@pytest.mark.parametrize("command", ["prune", "apply", "eval", "compare", "distill"])
def test_out_that_holds_the_home_folder_is_refused(base, plans, run, tmp_path, monkeypatch, no_weights, command):
    work, model, calib, text = base
    home = tmp_path / "users" / "me"
    home.mkdir(parents=True)
    (home / "keep.txt").write_text("user data")
    monkeypatch.setenv("HOME", str(home))
    for out in (tmp_path / "users", tmp_path):
        argv = {"prune": prune_argv(model, calib, out),
                "apply": ["apply", plans / "plain", "--model", model, "--out", out],
                "eval": ["eval", model, "--ppl", text, *EVAL, "--out", out],
                "compare": compare_argv(model, calib, text, out),
                "distill": distill_argv(plans / "plain", model, calib, out)}[command]
        one_line_error(*run(*argv, "--overwrite"), "a parent of the home folder")
    assert (home / "keep.txt").read_text() == "user data"


def test_eval_may_write_inside_the_model_it_evaluates(base, run, tmp_path):
    _, model, _, text = base
    m = tmp_path / "m"
    shutil.copytree(model, m)
    assert run("eval", m, "--ppl", text, *EVAL, "--out", m / "eval")[0] == 0
    assert json.loads((m / "eval" / "eval.json").read_text())["model"]["ppl"]


@pytest.mark.parametrize("command", ["prune", "apply", "eval", "compare", "distill"])
def test_what_appears_in_out_while_a_run_works_is_kept(base, plans, run, tmp_path, monkeypatch, command):
    """A file written into --out while the run works (another program, the user) is never replaced without
    --overwrite: the run refuses at the end and keeps its own result beside it."""
    import come.runstore

    work, model, calib, text = base
    out = tmp_path / "out"
    for module in (come.io, come.runstore):
        real = module.publish

        def publish_after_a_user_wrote(new, target, overwrite, real=real):
            if target == out:  # (compare's per-method folders inside its run folder are not --out)
                target.mkdir(exist_ok=True)
                (target / "notes.txt").write_text("the user's notes")
            return real(new, target, overwrite)

        monkeypatch.setattr(module, "publish", publish_after_a_user_wrote)
    argv = {"prune": prune_argv(model, calib, out),
            "apply": ["apply", plans / "plain", "--model", model, "--out", out],
            "eval": ["eval", model, "--ppl", text, *EVAL, "--out", out],
            "compare": compare_argv(model, calib, text, out),
            "distill": distill_argv(plans / "plain", model, calib, out)}[command]
    code, err = run(*argv)
    one_line_error(code, err, "was written to while this run worked (notes.txt)", "not replaced")
    assert listing(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "the user's notes"
    kept = Path(err.split("result is in ")[1].split(": move it")[0])
    assert kept.is_dir() and any(kept.iterdir())
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def checkpoint_after_one_step(monkeypatch, run, argv):
    """Run `come prune argv` interrupted (Ctrl-C) right after its first checkpoint."""
    import come.resume

    real = come.resume.writer

    def writer_then_interrupt(*a, **k):
        on_step = real(*a, **k)

        def step(ctx):
            on_step(ctx)
            raise KeyboardInterrupt

        return step

    monkeypatch.setattr(come.resume, "writer", writer_then_interrupt)
    assert run(*argv)[0] == 130
    monkeypatch.setattr(come.resume, "writer", real)


def test_a_second_run_on_the_same_out_is_refused_and_the_checkpoint_survives(base, run, tmp_path, monkeypatch):
    from come.io import output_lock

    _, model, calib, _ = base
    out = tmp_path / "out"
    argv = prune_argv(model, calib, out, "--method", "sleb")
    checkpoint_after_one_step(monkeypatch, run, argv)
    ck = tmp_path / ".out.resume"
    saved = (ck / "come_plan.json").read_text()
    with output_lock(out):  # a first run is still working on --out
        for extra in ((), ("--resume",), ("--overwrite",)):
            one_line_error(*run(*argv, *extra), "another come run is working on --out")
    assert (ck / "come_plan.json").read_text() == saved
    # a new run (without --resume) stopped before its first step leaves the old checkpoint whole
    prune_module = importlib.import_module("come.prune")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prune_module, "Calibration", interrupted)
    assert run(*argv)[0] == 130
    assert (ck / "come_plan.json").read_text() == saved
    monkeypatch.undo()
    assert run(*argv, "--resume")[0] == 0 and not ck.exists() and (out / "come_plan.json").exists()
    assert not (tmp_path / ".out.lock").exists()


def test_two_come_processes_on_one_out_one_refuses(base, tmp_path):
    """Real processes: the lock goes with the process; the second run exits 2 with one line, the first finishes."""
    _, model, calib, _ = base
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "come.cli", *map(str, prune_argv(model, calib, tmp_path / "out"))]
    first = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (tmp_path / ".out.lock").exists() and time.time() - t0 < 120:
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # the first run holds the lock, and keeps holding it while stopped
    try:
        second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert second.returncode == 2 and len(lines) == 1 and "another come run" in lines[0], second.stderr
    assert (tmp_path / "out" / "come_plan.json").exists() and not (tmp_path / ".out.lock").exists()


def test_symlinked_checkpoint_run_folder_or_lock_is_refused(base, plans, run, tmp_path, no_weights):
    _, model, calib, text = base
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "come_plan.json").write_text("the user's file")
    for name in (".out.resume", "out.partial", ".out.lock"):
        link = tmp_path / name
        link.symlink_to(victim)
        one_line_error(*run(*prune_argv(model, calib, tmp_path / "out")), "is a symbolic link")
        one_line_error(*run(*compare_argv(model, calib, text, tmp_path / "out")), "is a symbolic link")
        one_line_error(*run(*distill_argv(plans / "plain", model, calib, tmp_path / "out")), "is a symbolic link")
        link.unlink()
    assert listing(victim) == ["come_plan.json"] and (victim / "come_plan.json").read_text() == "the user's file"


def test_overlong_out_names_are_refused_up_front(base, run, tmp_path, no_weights):
    _, model, calib, _ = base
    for n in (245, 250, 255):
        one_line_error(*run(*prune_argv(model, calib, tmp_path / ("x" * n))), "bytes long", "at most 241")
    assert list(tmp_path.iterdir()) == []


# --- a failing save keeps the result ---

def _raiser(kind):
    if kind == "SafetensorError":
        from safetensors import SafetensorError

        return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    if kind == "tokenizers Exception":
        return Exception("No space left on device (os error 28)")
    return OSError(28, "No space left on device")


def disk_full_beside(monkeypatch, folder, kind):
    """Saving a model into `folder` fails with the error type `kind` raises; fallback folders go to folder/rescue."""
    prune_module = importlib.import_module("come.prune")
    real_save = prune_module.save_model

    def disk_full_beside_out(m, into, dtype):
        if Path(into).parent == folder:
            raise _raiser(kind)
        real_save(m, into, dtype)

    monkeypatch.setattr(prune_module, "save_model", disk_full_beside_out)
    monkeypatch.setenv("COME_RESCUE_DIR", str(folder / "rescue"))


@pytest.mark.parametrize("kind", ["SafetensorError", "tokenizers Exception", "OSError"])
def test_any_write_error_lands_in_the_fallback_folder(base, run, tmp_path, monkeypatch, kind):
    _, model, calib, _ = base
    disk_full_beside(monkeypatch, tmp_path, kind)
    code, err = run(*prune_argv(model, calib, tmp_path / "out"))
    one_line_error(code, err, "No space left on device", "saved in")
    rescue = Path(err.split("saved in ")[1].split(" instead")[0])
    assert (rescue / "come_plan.json").exists() and len(load_file(rescue / "model.safetensors")) > 0


def test_when_nothing_can_be_written_the_error_says_so(base, run, tmp_path, monkeypatch):
    prune_module = importlib.import_module("come.prune")
    _, model, calib, _ = base

    def disk_full(m, folder, dtype):
        raise _raiser("SafetensorError")

    monkeypatch.setattr(prune_module, "save_model", disk_full)
    monkeypatch.setenv("COME_RESCUE_DIR", str(tmp_path / "rescue"))
    code, err = run(*prune_argv(model, calib, tmp_path / "out"))
    one_line_error(code, err, "No space left on device", "nothing was saved", str(tmp_path / "rescue"))
    assert not (tmp_path / "out").exists() and not list((tmp_path / "rescue").iterdir())


def test_distill_keeps_the_student_when_its_save_fails(base, plans, run, tmp_path, monkeypatch):
    _, model, calib, _ = base
    disk_full_beside(monkeypatch, tmp_path, "SafetensorError")
    code, err = run(*distill_argv(plans / "plain", model, calib, tmp_path / "out"))
    one_line_error(code, err, "No space left on device", "saved in")
    rescue = Path(err.split("saved in ")[1].split(" instead")[0])
    assert (rescue / "distill_summary.json").exists() and (rescue / "model.safetensors").exists()


def test_a_checkpoint_that_cannot_be_written_warns_and_the_prune_goes_on(base, tmp_path, monkeypatch, capsys):
    import come.resume

    _, model, calib, _ = base

    def disk_full(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(come.resume, "write_text_atomic", disk_full)
    assert main([str(a) for a in prune_argv(model, calib, tmp_path / "out", "--target-layers", "4")]) == 0
    err = capsys.readouterr().err
    assert err.count("could not write the checkpoint") == 1 and "No space left on device" in err
    assert (tmp_path / "out" / "come_plan.json").exists() and not (tmp_path / ".out.resume").exists()


def test_a_distill_checkpoint_that_cannot_be_written_warns_and_the_training_goes_on(
        base, plans, run, tmp_path, monkeypatch, capsys):
    from come.distillation.checkpoint import Checkpoints

    _, model, calib, _ = base

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Checkpoints, "save", disk_full)
    argv = distill_argv(plans / "plain", model, calib, tmp_path / "out", "--checkpoint-every", "1")
    argv[argv.index("--steps") + 1] = "2"
    assert main([str(a) for a in argv]) == 0
    err = capsys.readouterr().err
    assert err.count("could not write the checkpoint") == 1 and "No space left on device" in err
    assert (tmp_path / "out" / "model.safetensors").exists()


# --- resume checks what it resumes from, not only the paths ---

def test_prune_resume_refuses_other_calibration_text_at_the_same_path(base, run, tmp_path, monkeypatch):
    from conftest import SAMPLE_TEXT

    _, model, _, _ = base
    calib = tmp_path / "calib.txt"
    calib.write_text(SAMPLE_TEXT * 40)
    argv = prune_argv(model, calib, tmp_path / "out", "--method", "sleb")
    checkpoint_after_one_step(monkeypatch, run, argv)
    calib.write_text(SAMPLE_TEXT.upper() * 40)
    one_line_error(*run(*argv, "--resume"), "made from other calibration windows", "without --resume")
    assert (tmp_path / ".out.resume" / "come_plan.json").exists()


def test_distill_resume_refuses_a_replaced_student_teacher_or_data(base, plans, tmp_path):
    from come.distillation import DistillConfig, distill

    _, model, calib, _ = base
    student, teacher, data = tmp_path / "student", tmp_path / "teacher", tmp_path / "train.txt"
    shutil.copytree(plans / "plain", student)
    shutil.copytree(model, teacher)
    shutil.copy(calib, data)

    def cfg(**kw):
        return DistillConfig(**dict(dict(student=str(student), teacher=str(teacher), out=str(tmp_path / "out"),
                                         data=str(data), seq_len=32, batch_size=2, steps=3, device="cpu",
                                         progress=False, checkpoint_every=1, stage="layerwise"), **kw))

    def stop(info):
        if info["run_step"] >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(cfg(), on_step=stop)
    assert (tmp_path / "out.partial" / "checkpoint" / "state.json").exists()
    shutil.rmtree(student)
    shutil.copytree(plans / "refit", student)  # another pruning of the same teacher, at the same path
    with pytest.raises(ComeError, match="student's weights or config differ"):
        distill(cfg(resume=True))
    shutil.rmtree(student)
    shutil.copytree(plans / "plain", student)
    data.write_text(data.read_text().upper())
    with pytest.raises(ComeError, match="training windows differ"):
        distill(cfg(resume=True))
    shutil.copy(calib, data)
    assert distill(cfg(resume=True)).out == tmp_path / "out"


# --- tracebacks that are one-line errors ---

def test_bad_inputs_are_one_line_errors(base, plans, run, tmp_path, no_weights):
    _, model, calib, text = base
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    one_line_error(*run(*prune_argv(model, empty, tmp_path / "o")), "is empty")
    for value in ("nan", "inf", "-inf"):
        one_line_error(*run(*prune_argv(model, calib, tmp_path / "o", f"--laco-t={value}")),
                       "--laco-t must be a finite number")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sparsity: .nan\n")
    one_line_error(*run("prune", model, "--config", recipe, "--out", tmp_path / "o"), "must be a finite number")
    recipe.write_bytes(bytes(range(256)) * 4)
    one_line_error(*run("prune", model, "--config", recipe, "--out", tmp_path / "o"), "is not a text file")
    lines = ["method_options:", "  a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdef", "bcdefg"):
        lines.append(f"  {name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    recipe.write_text("\n".join(lines) + "\n")  # ~300 bytes, 9**7 values once expanded
    t = time.perf_counter()
    one_line_error(*run("prune", model, "--config", recipe, "--out", tmp_path / "o"), "aliases expanded")
    assert time.perf_counter() - t < 10
    assert not (tmp_path / "o").exists()


def plan_variant(plans, tmp_path, name, edit):
    folder = tmp_path / name
    shutil.copytree(plans / "refit", folder)
    edit(folder)
    return folder


PLAN_FILES = {
    "sidecar truncated": (lambda d: (d / "come_plan.safetensors").write_bytes(
        (d / "come_plan.safetensors").read_bytes()[:100]), "cannot be read"),
    "sidecar empty": (lambda d: (d / "come_plan.safetensors").write_bytes(b""), "cannot be read"),
    "sidecar a folder": (lambda d: ((d / "come_plan.safetensors").unlink(), (d / "come_plan.safetensors").mkdir()),
                         "cannot be read"),
    "nested 100k deep": (lambda d: (d / "come_plan.json").write_text("[" * 100_000 + "]" * 100_000),
                         "not a plan come wrote"),
    "5000-digit integer": (lambda d: (d / "come_plan.json").write_text(
        (d / "come_plan.json").read_text().replace('"seed": 0', '"seed": ' + "9" * 5000, 1)), "not a plan come wrote"),
    "no base_model": (lambda d: _edit_json(d, lambda p: p.pop("base_model")), "has no base_model"),
    "base_model a string": (lambda d: _edit_json(d, lambda p: p.update(base_model="m")),
                            "base_model must be a JSON object"),
}


def _edit_json(folder, edit):
    plan = json.loads((folder / "come_plan.json").read_text())
    edit(plan)
    (folder / "come_plan.json").write_text(json.dumps(plan))


@pytest.mark.parametrize("case", list(PLAN_FILES))
def test_unreadable_plans_are_one_line_errors(plans, base, run, tmp_path, no_weights, case):
    _, model, _, _ = base
    edit, needle = PLAN_FILES[case]
    folder = plan_variant(plans, tmp_path, "plan", edit)
    one_line_error(*run("apply", folder, "--model", model, "--out", tmp_path / "o"), needle)
    assert not (tmp_path / "o").exists()


# --- non-finite weights and metrics ---

def test_nonfinite_weights_are_refused_unless_allowed(base, run, tmp_path):
    _, model, calib, text = base

    def nan_in_layer2(d, sd):
        sd["model.layers.2.mlp.down_proj.weight"][0, 0] = math.nan

    m = broken_copy(model, tmp_path / "nan", nan_in_layer2)
    one_line_error(*run(*prune_argv(m, calib, tmp_path / "p")), "model.layers.2.mlp.down_proj.weight",
                   "NaN or infinite", "--allow-nonfinite")
    one_line_error(*run("eval", m, "--ppl", text, *EVAL, "--out", tmp_path / "e"), "NaN or infinite")
    assert not (tmp_path / "p").exists() and not (tmp_path / "e").exists()
    code, err = run("eval", m, "--ppl", text, *EVAL, "--out", tmp_path / "e", "--allow-nonfinite")
    assert code == 1 and err.startswith("come: error: not a finite number: model.ppl.") and "\n" not in err, err
    result = json.loads((tmp_path / "e" / "eval.json").read_text())  # standard JSON: NaN written as null
    assert next(iter(result["model"]["ppl"].values()))["ppl"] is None
    assert "NaN" not in (tmp_path / "e" / "eval.json").read_text()


# --- a teacher that is not the student's source ---

def test_a_teacher_whose_layers_all_differ_is_warned_about(base, plans, tmp_path, capsys):
    from come.distillation import DistillConfig, distill

    work, model, calib, _ = base
    base_sd = load_file(model / "model.safetensors")

    def same_embeddings(d, sd):
        for k in ("model.embed_tokens.weight", "lm_head.weight"):
            sd[k] = base_sd[k].clone()

    teacher = broken_copy(work / "seed1", tmp_path / "teacher", same_embeddings)
    kw = dict(student=str(plans / "plain"), data=str(calib), seq_len=32, batch_size=2, steps=1, device="cpu",
              progress=False, stage="layerwise")
    distill(DistillConfig(teacher=str(teacher), out=str(tmp_path / "o1"), **kw))
    assert "come: warning: the teacher's decoder layers all differ" in capsys.readouterr().err
    distill(DistillConfig(teacher=str(model), out=str(tmp_path / "o2"), **kw))
    assert "decoder layers all differ" not in capsys.readouterr().err
