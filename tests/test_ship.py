"""Ship-ready output and CLI: model cards, legacy config keys, recipes, dry runs, --version, extras, eval tasks."""

import importlib.metadata
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import tomllib
import torch
import yaml
from conftest import tiny_model

from come import recipe
from come.card import CARD_FILE, EVAL_END, EVAL_START, front_matter, hub_id
from come.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "data" / "configs"
# published parameter counts of the committed configs (tied embeddings counted once)
PUBLISHED = {"llama-3-8b": (32, 8_030_261_248), "llama-3-70b": (80, 70_553_706_496),
             "qwen2.5-7b": (28, 7_615_616_512), "mistral-7b-v0.1": (32, 7_241_732_096),
             "mistral-7b-v0.3": (32, 7_248_023_552)}


@pytest.fixture
def run(capsys):
    def _run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err.strip().splitlines()[-1] if err.strip() else ""

    return _run


def prune_flags(path, text, *extra):
    return ["prune", path, "--calib-data", text, "--calib-samples", 2, "--calib-seq-len", 32, "--device", "cpu",
            *extra]


def written_text(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir() if p.suffix in (".md", ".json") and p.is_file()}


# --- model card, summary, config ------------------------------------------------------------------------------


def test_prune_writes_a_hub_card_and_no_absolute_path(run, tiny_dir, tmp_path):
    path, text = tiny_dir
    out = tmp_path / "out"
    code, _, err = run(*prune_flags(path, text, "--target-layers", 4, "--out", out))
    assert code == 0, err
    card = (out / CARD_FILE).read_text()
    meta = yaml.safe_load(card.split("---")[1])  # the front matter parses as YAML
    assert meta == front_matter(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"come", "layer-pruning"} <= set(meta["tags"])
    assert "base_model" not in meta  # a local folder has no hub id to name
    assert "| decoder layers | 6 | 4 |" in card and "## What was removed" in card
    assert card.count("merged original layers") == 2  # two merges, in original layer numbers
    assert "come prune tiny-llama --target-layers 4" in card and "arxiv.org/abs/2510.15304" in card
    assert "@inproceedings" in card and EVAL_START in card
    for name in ("come_summary.md", CARD_FILE):
        assert str(tmp_path) not in (out / name).read_text(), name
    assert (out / "come_summary.md").read_text().startswith("# come on tiny-llama")
    plan = json.loads((out / "come_plan.json").read_text())
    assert plan["settings"]["model_path"] == "tiny-llama"  # the resolved folder by its name, not its absolute path


def test_card_names_hub_base_model_and_its_license(tmp_path):
    assert hub_id("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id("meta-llama/Meta-Llama-3-8B") == "meta-llama/Meta-Llama-3-8B"
    snap = tmp_path / "hub" / "models--Qwen--Qwen2.5-7B" / "snapshots" / "abc123"
    assert hub_id(str(snap)) == "Qwen/Qwen2.5-7B"
    assert hub_id(str(tmp_path / "my-model")) is None
    from come.card import base_license, card_text
    from come.plan import Plan

    base = tmp_path / "base"
    base.mkdir()
    (base / CARD_FILE).write_text("---\nlicense: mit\ntags: [x]\n---\n# a model\n")
    assert base_license(str(base)) == "mit"
    assert base_license("smollm2-135m") == "apache-2.0"
    plan = Plan("come", {"name": "smollm2-135m", "num_layers": 4, "params": 100}, {"model": "smollm2-135m"},
                tree=[[0, 1], [2], [3]], stats={"layers_before": 4, "layers_after": 3, "params_before": 100,
                                                "params_after": 75})
    meta = front_matter(card_text(plan, license="apache-2.0"))
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"


def test_card_of_a_bundled_base_says_where_its_weights_came_from_and_reproduces_by_hub_id():
    """A card is for readers who never saw this machine: the Hub id in "Reproduce" (and the bundled alias that gives
    these very weights), the base's provenance (dequantised from a 4-bit GGUF), a load snippet, a limitations
    line, and where the card comes from."""
    from come.card import card_text
    from come.plan import Plan

    rec = {"command": "prune", "model": "smollm2-135m", "target_layers": 20, "method": "come"}
    plan = Plan("come", {"name": "smollm2-135m", "num_layers": 30, "params": 100},
                {"model": "smollm2-135m", "recipe": rec}, tree=[[0, 1]] + [[i] for i in range(2, 30)],
                stats={"layers_before": 30, "layers_after": 29, "params_before": 100, "params_after": 97})
    card = card_text(plan, recipe=rec)
    assert "come prune HuggingFaceTB/SmolLM2-135M-Instruct --target-layers 20" in card
    assert "bundled `smollm2-135m`" in card and "come prune smollm2-135m ..." in card
    assert "dequantised from the 4-bit GGUF file `SmolLM2-135M-Instruct.Q4_1.gguf`" in card
    assert 'AutoModelForCausalLM.from_pretrained("THIS_FOLDER")' in card
    assert "## Limitations" in card and "Not measured yet" in card and "Made with `come`" in card
    local = Plan("come", {"name": "tiny", "source": "local", "num_layers": 3}, {"model": "/x/tiny"}, tree=[[0], [1]])
    assert "dequantised" not in card_text(local)  # a model of the user's own: no provenance claim


def test_output_folder_has_a_recipe_that_reproduces_the_plan_and_eval_fills_the_limitations(
        run, tiny_dir, tmp_path, monkeypatch):
    path, text = tiny_dir
    config = json.loads((path / "config.json").read_text())  # as a GGUF conversion leaves it: the file's own name
    (path / "config.json").write_text(json.dumps({**config, "_model_name_or_path": "Smollm2 135M 8k Lc100K"}))
    monkeypatch.chdir(tmp_path)  # the recipe names the model and the text by their names, as a user shares it
    assert run(*prune_flags(path.name, text.name, "--target-layers", 4, "--out", "out"))[0] == 0
    saved = {name: json.loads((tmp_path / "out" / name).read_text()) for name in ("config.json",
                                                                                  "tokenizer_config.json")}
    assert not {"_model_name_or_path", "_name_or_path"} & set(saved["config.json"])
    assert not {"is_local", "local_files_only"} & set(saved["tokenizer_config.json"])
    rec = yaml.safe_load((tmp_path / "out" / "recipe.yaml").read_text())
    assert rec["model"] == "tiny-llama" and rec["target_layers"] == 4 and str(tmp_path) not in str(rec)
    code, _, err = run("prune", "--config", "out/recipe.yaml", "--out", "again")
    assert code == 0, err
    first, again = (json.loads((tmp_path / d / "come_plan.json").read_text()) for d in ("out", "again"))
    assert (first["steps"], first["tree"]) == (again["steps"], again["tree"])
    held_out = tmp_path / "held-out.txt"
    held_out.write_text("Some other text about rivers, cities and the stars, for scoring only. " * 60)
    code, _, err = run("eval", "out", "--baseline", path.name, "--ppl", held_out, "--ppl-seq-len", 32,
                       "--ppl-max-windows", 2, "--device", "cpu", "--out", "out/eval")
    assert code == 0, err
    card = (tmp_path / "out" / CARD_FILE).read_text()
    limits = card.split("## Limitations")[1].split("##")[0]
    assert "Not measured yet" not in limits and re.search(r"ppl/held-out\.txt x\d+\.\d\d", limits), limits
    assert "retained %" not in card  # perplexity is a ratio to the base, never a "retained %"


def test_saved_config_carries_the_keys_transformers_4_reads(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from come.prune import save_model

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 256}
    model = tiny_model("llama", rope_parameters=rope)
    save_model(model, tmp_path / "m", torch.bfloat16)
    raw = json.loads((tmp_path / "m" / "config.json").read_text())
    # transformers 4.x: LlamaConfig(rope_theta=..., rope_scaling=...) from the top-level keys
    assert raw["rope_theta"] == 500000.0
    assert raw["rope_scaling"]["rope_type"] == "llama3" and raw["rope_scaling"]["factor"] == 8.0
    assert raw["rope_scaling"]["original_max_position_embeddings"] == 256 and "rope_theta" not in raw["rope_scaling"]
    assert raw["torch_dtype"] == "bfloat16"
    again = AutoConfig.from_pretrained(tmp_path / "m")  # and transformers 5 reads the same RoPE back
    assert again.rope_parameters == model.config.rope_parameters
    ids = torch.arange(20).reshape(1, 20)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    with torch.no_grad():  # the same weights, rounded to bfloat16 as saved, under the original config
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    assert torch.allclose(reloaded(ids).logits, model(ids).logits, atol=1e-5)
    model = tiny_model("qwen2")  # default RoPE: rope_scaling null, as transformers 4.x wrote it
    save_model(model, tmp_path / "q", None)
    raw = json.loads((tmp_path / "q" / "config.json").read_text())
    assert raw["rope_theta"] == model.config.rope_parameters["rope_theta"] and raw["rope_scaling"] is None


def test_apply_writes_summary_and_card_and_eval_fills_the_card(run, tiny_dir, tmp_path, monkeypatch):
    path, text = tiny_dir
    out = tmp_path / "out"
    assert run(*prune_flags(path, text, "--target-layers", 4, "--method", "sleb", "--out", out))[0] == 0
    import come.models

    asked, real = [], come.models.load_model
    monkeypatch.setattr(come.models, "load_model", lambda name, dtype, device, **k: asked.append(device)
                        or real(name, dtype, "cpu", **k))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU, as far as `auto` can tell
    code, _, err = run("apply", out, "--model", path, "--target-layers", 5, "--dtype", "float32",
                       "--out", tmp_path / "cut")
    assert code == 0, err
    assert asked == ["cuda"]  # --device auto is cuda when available
    monkeypatch.undo()
    card = (tmp_path / "cut" / CARD_FILE).read_text()
    assert front_matter(card)["tags"][:2] == ["come", "layer-pruning"]
    assert "| decoder layers | 6 | 5 |" in card and "come apply come_plan.json --model tiny-llama" in card
    summary = (tmp_path / "cut" / "come_summary.md").read_text()
    assert "| layers | 6 | 5 |" in summary and "Replayed from the plan by `come apply`" in summary
    for name, body in written_text(tmp_path / "cut").items():
        if name != "come_plan.json":  # the plan's base-model record is another module's business
            assert str(tmp_path) not in body, name
    held_out = tmp_path / "held-out.txt"
    held_out.write_text("Some other text about rivers, cities and the stars, for scoring only. " * 60)
    code, printed, err = run("eval", tmp_path / "cut", "--ppl", held_out, "--ppl-seq-len", 32, "--ppl-max-windows", 2,
                             "--device", "cpu", "--out", tmp_path / "cut" / "eval")
    assert code == 0, err
    card = (tmp_path / "cut" / CARD_FILE).read_text()
    table = card.split(EVAL_START)[1].split(EVAL_END)[0]
    assert "| ppl/" in table and "[eval/eval.md](eval/eval.md)" in table and str(tmp_path) not in card
    assert "added the evaluation to the model card" in printed
    front_matter(card)["tags"]  # still a valid card


# --- recipes ----------------------------------------------------------------------------------------------------


def test_recipe_gives_the_same_plan_as_the_flag_line(run, tiny_dir, tmp_path):
    path, text = tiny_dir
    flags = prune_flags(path, text, "--target-layers", 4, "--method", "come-plus", "--calib-samples", 4,
                        "--out", tmp_path / "a")
    assert run(*flags)[0] == 0
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({
        "command": "prune", "model": str(path), "target_layers": 4, "method": "come-plus", "device": "cpu",
        "calib": {"data": str(text), "samples": 4, "seq_len": 32}, "out": str(tmp_path / "b")}))
    code, _, err = run("prune", "--config", tmp_path / "r.yaml")
    assert code == 0, err
    a, b = (json.loads((tmp_path / x / "come_plan.json").read_text()) for x in "ab")
    for key in ("steps", "tree", "settings", "method", "seed"):
        assert a[key] == b[key], key
    assert a["settings"]["recipe"]["method"] == "come-plus"  # the plan records the resolved recipe
    from safetensors.torch import load_file

    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # a flag given on the command line wins over the file; the other member of an exclusive pair is dropped
    code, _, err = run("prune", "--config", tmp_path / "r.yaml", "--sparsity", 0.2, "--method", "sleb",
                       "--out", tmp_path / "c")
    assert code == 0, err
    c = json.loads((tmp_path / "c" / "come_plan.json").read_text())
    assert c["method"] == "sleb" and c["settings"]["target_layers"] is None and c["settings"]["sparsity"] == 0.2


def test_demo_recipe_is_the_makefile_demo(run):
    line = next(ln for ln in (ROOT / "Makefile").read_text().replace("\\\n", " ").splitlines()
                if "/come prune" in ln)
    argv = shlex.split(line.split("come prune", 1)[1])
    code, from_flags, err = run("prune", *argv, "--print-config")
    assert code == 0, err
    code, from_file, err = run("prune", "--config", ROOT / "recipes" / "demo.yaml", "--print-config")
    assert code == 0, err
    assert yaml.safe_load(from_file) == yaml.safe_load(from_flags)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")))
def test_every_shipped_recipe_is_valid_and_round_trips(run, name):
    command = yaml.safe_load((ROOT / "recipes" / name).read_text())["command"]
    code, printed, err = run(command, "--config", ROOT / "recipes" / name, "--print-config")
    assert code == 0, err
    effective = yaml.safe_load(printed)
    assert effective["command"] == command and effective["out"].startswith("runs/")
    again = Path(pytest.importorskip("tempfile").mkdtemp()) / "again.yaml"
    again.write_text(printed)
    assert yaml.safe_load(run(command, "--config", again, "--print-config")[1]) == effective


@pytest.mark.parametrize("body,needle", [
    ("target_layers: 4\nbogus: 1\n", "unknown key bogus; valid keys for `come prune`: model, target_layers"),
    ("calib: {samples: many}\n", "calib.samples must be int, got 'many'"),
    ("target_layers: 4.5\n", "target_layers must be int | null, got 4.5"),
    ("command: compare\n", "is a `come compare` recipe: run `come compare --config"),
    ("[1, 2]\n", "must be a mapping of settings"),
    ("a: [1\n", "is not valid YAML at line"),
    ("target_layer: 4\n", "unknown key target_layer (did you mean target_layers?); valid keys"),
])
def test_bad_recipes_are_one_line_errors(run, tiny_dir, tmp_path, body, needle):
    path, _ = tiny_dir
    (tmp_path / "r.yaml").write_text(body)
    code, _, err = run("prune", path, "--config", tmp_path / "r.yaml", "--print-config")
    assert code == 2 and err.startswith("come: error: ") and needle in err, err


def test_distill_recipe_and_flags(run, tmp_path):
    (tmp_path / "d.yaml").write_text("command: distill\nstudent: runs/pruned\nstage: global\ntokens: 4096\n"
                                     "out: runs/distilled\n")
    code, printed, err = run("distill", "--config", tmp_path / "d.yaml", "--steps", 3, "--lr", 3e-4, "--print-config")
    assert code == 0, err
    got = yaml.safe_load(printed)
    assert (got["student"], got["stage"], got["out"], got["lr"]) == ("runs/pruned", "global", "runs/distilled", 3e-4)
    assert got["steps"] == 3 and got["tokens"] is None  # the flag's budget replaces the file's
    code, _, err = run("distill", "--steps", 3, "--print-config")
    assert code == 2 and "give --student" in err


def test_recipe_keys_are_the_config_fields():
    from dataclasses import fields

    from come.compare import CompareConfig
    from come.config import PruneConfig
    from come.distillation.train import DistillConfig

    for command, cls in (("prune", PruneConfig), ("compare", CompareConfig), ("distill", DistillConfig)):
        keys = set(recipe.valid_keys(command))
        assert {f.name for f in fields(cls) if f.name not in recipe.RUN_ONLY and f.name != "calib"} <= keys
    assert "calib.seq_len" in recipe.valid_keys("prune") and "progress" not in recipe.valid_keys("prune")


# --- dry run ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_committed_configs_are_the_published_models(name):
    from come.models import count_params, get_adapter, load_config, meta_model

    assert [p.name for p in (CONFIGS / name).iterdir()] == ["config.json"]  # a config, no weights
    adapter = get_adapter(meta_model(load_config(str(CONFIGS / name))[0]))
    assert (adapter.num_layers, count_params(adapter.model)) == PUBLISHED[name]


def dry(run, *argv):
    code, out, err = run("prune", *argv, "--dry-run")
    assert code == 0, err
    fields = dict(re.findall(r"^  ([A-Za-z ]+?)\s{2,}(.*)$", out, flags=re.M))
    return out, fields


def test_dry_run_of_llama_3_70b_on_one_80gb_gpu(run):
    """On a workstation with one 80 GB GPU and 128 GB of RAM: the weights stream from the checkpoint and the
    cache goes to disk, under 64 GiB of CPU memory; with both kept in CPU memory, ~294 GiB."""
    args = (CONFIGS / "llama-3-70b", "--target-layers", 56, "--gpu-memory", "80GiB", "--cpu-memory", "128GiB")
    out, f = dry(run, *args)
    assert f["layers"] == "80 -> 56" and "no weights read" in out
    removed = 24 * 855_654_400  # 24 decoder layers of 855,654,400 parameters
    assert f["parameters"].startswith(f"70,553,706,496 -> {70_553_706_496 - removed:,}")
    assert f["compute"].startswith("cuda in bfloat16") and "simulated" in f["compute"]
    assert f["weights"] == "131.4 GiB -> disk" and f["cache"].startswith("81.0 GiB") and f["cache"].endswith("disk")
    assert "read from the checkpoint one decoder layer at a time, streamed to cuda" in f["placement"]
    gpu = float(f["peak GPU"].strip("~").split()[0])
    cpu = float(f["peak CPU RAM"].strip("~").split()[0])
    assert gpu < 80 and cpu < 64
    assert f["calibration"].startswith("1 full pass + 24 re-runs")
    _, kept = dry(run, *args, "--stream", "never", "--store-device", "cpu")
    assert kept["weights"] == "131.4 GiB -> cpu" and kept["cache"].endswith("cpu")
    assert float(kept["peak CPU RAM"].strip("~").split()[0]) > 131.4 + 81  # weights and cache in CPU memory


@pytest.mark.parametrize("gpu,weights,cache", [("80GiB", "cuda", "cuda"), ("24GiB", "cuda", "cpu"),
                                               ("16GiB", "disk", "cpu")])
def test_dry_run_placement_follows_the_gpu_size(run, gpu, weights, cache):
    _, f = dry(run, CONFIGS / "llama-3-8b", "--target-layers", 24, "--method", "come-plus", "--gpu-memory", gpu,
               "--cpu-memory", "256GiB")
    assert f["weights"] == f"15.0 GiB -> {weights}" and f["cache"].endswith(f"-> {cache}")
    assert f["parameters"].startswith("8,030,261,248 -> 6,285,365,248")


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.iterdir()))
@pytest.mark.parametrize("gpu", ["16GiB", "24GiB", "40GiB", "80GiB"])
def test_dry_run_never_says_it_fits_beside_a_peak_above_the_gpu(run, name, gpu):
    """Weights and cache may fit while the whole peak (2x cache, the re-fit's Gram matrices) does not: then a
    warning says so and names flags; run with those flags, the estimate is within the device (or the warning says
    nothing fits)."""
    budget = 0.8 * float(gpu[:-3])
    layers = PUBLISHED[name][0]
    for method in ("come-plus", "sleb"):
        args = (CONFIGS / name, "--target-layers", layers * 3 // 4, "--method", method, "--gpu-memory", gpu)
        out, f = dry(run, *args)
        peak = float(f["peak GPU"].strip("~").split()[0])
        warning = f.get("warning", "")
        if abs(peak - budget) > 0.05:  # the printed peak is rounded to 0.1 GiB
            assert (peak > budget) == bool(warning), (method, out)
        if "with --" in warning:
            flags = warning.split("with ", 1)[1].split(" the estimate")[0].split()
            _, fixed = dry(run, *args, *flags)
            assert float(fixed["peak GPU"].strip("~").split()[0]) <= budget and "warning" not in fixed
        elif warning:
            assert "even with the weights and the cache in CPU memory" in warning


def test_dry_run_counts_the_re_fit_passes(run):
    """come-plus, 32 -> 24 layers: 8 steps of 3 ratio trials, each re-fitting the merged layer with 2 passes of it:
    24 * 2 / 32 full-pass equivalents on top of 1 + 8 + 24; with --pair-score drop each step tries every removal
    (32 at most) and the ratios of two pairs."""
    args = (CONFIGS / "llama-3-8b", "--target-layers", 24, "--method", "come-plus", "--gpu-memory", "80GiB")
    _, plain = dry(run, *args)
    _, drop = dry(run, *args, "--pair-score", "drop")
    assert "(each with 2 passes of the merged layer" in plain["calibration"]
    assert "at most 35 full-pass" in plain["calibration"] and "+ 304 loss trials" in drop["calibration"]


@pytest.mark.parametrize("name,target", [("qwen2.5-7b", 21), ("mistral-7b-v0.1", 24), ("mistral-7b-v0.3", 24)])
def test_dry_run_on_qwen_and_mistral_configs(run, name, target):
    _, f = dry(run, CONFIGS / name, "--target-layers", target, "--method", "sleb", "--device", "cpu",
               "--cpu-memory", "256GiB")
    layers, params = PUBLISHED[name]
    assert f["layers"] == f"{layers} -> {target}" and f["compute"] == "cpu in float32"
    assert f["placement"] == "everything on the CPU" and f["peak GPU"] == "- (estimate)"
    assert f"{params:,} ->" in f["parameters"] and "removal trials" in f["calibration"]


def test_dry_run_bad_gpu_size_and_compare_dry_run(run):
    code, _, err = run("prune", CONFIGS / "llama-3-8b", "--target-layers", 24, "--dry-run", "--gpu-memory", "lots")
    assert code == 2 and "--gpu-memory 'lots' is not a size" in err
    code, out, err = run("compare", CONFIGS / "qwen2.5-7b", "--methods", "shortgpt,come", "--target-layers", 21,
                         "--calib-data", "wiki-passages", "--ppl", "wiki-passages", "--dry-run",
                         "--gpu-memory", "80GiB")
    assert code == 0, err
    assert "| shortgpt | 21 |" in out and "| come | 21 |" in out and "1 full pass over 32 x 2048" in out


# --- CLI and extras ---------------------------------------------------------------------------------------------


def test_version_and_help(run, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"come {importlib.metadata.version('come')}"
    from come.methods import METHODS

    with pytest.raises(SystemExit):
        main(["prune", "--help-all"])  # --help names the methods most runs use, --help-all every one
    text = " ".join(capsys.readouterr().out.split())
    # the product's methods (research variants that experiments/ registered in this process are not offered)
    assert all(m in text for m, record in METHODS.items() if record.variant_of is None)
    assert "(default: come)" in text and "(default: 2048)" in text and "(default: auto)" in text


def test_missing_extras_are_one_line_errors_before_loading(run, tiny_dir, tmp_path, monkeypatch):
    import come.models

    path, text = tiny_dir
    monkeypatch.setattr(come.models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    code, _, err = run("eval", path, "--tasks", "piqa", "--device", "cpu")
    assert code == 2 and "pip install 'come[eval]'" in err
    monkeypatch.setitem(sys.modules, "peft", None)
    student = tmp_path / "student"  # a folder `come prune` wrote, as far as the checks before loading can tell
    shutil.copytree(path, student)
    shutil.copy(ROOT / "tests" / "data" / "replay" / "shortgpt" / "come_plan.json", student)
    code, _, err = run("distill", "--student", student, "--stage", "lora", "--steps", 1, "--out", tmp_path / "d")
    assert code == 2 and "pip install 'come[distill]'" in err
    monkeypatch.setitem(sys.modules, "gguf", None)
    from come.assets import _convert_gguf
    from come.errors import ComeError

    with pytest.raises(ComeError, match=r"pip install 'come\[assets\]'"):
        _convert_gguf(tmp_path / "x.gguf", tmp_path / "y")


def test_gguf_is_an_extra_that_make_setup_installs():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("gguf") for d in meta["dependencies"]) and "pyyaml" in meta["dependencies"]
    assert meta["optional-dependencies"]["assets"] == ["gguf"]
    setup = next(ln for ln in (ROOT / "Makefile").read_text().splitlines() if "pip install -q -e" in ln)
    assert "assets" in setup.split("'")[1]


def test_compare_finishes_without_matplotlib(run, tiny_dir, tmp_path, monkeypatch):
    path, text = tiny_dir
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "cmp"
    held_out = tmp_path / "held-out.txt"
    held_out.write_text("Some other text about rivers, cities and the stars, for scoring only. " * 60)
    common = ["compare", path, "--target-layers", 4, "--eval", "ppl", "--ppl", held_out, "--ppl-seq-len", 32,
              "--ppl-max-windows", 2, "--calib-data", text, "--calib-samples", 2, "--calib-seq-len", 32,
              "--device", "cpu", "--out", out]
    code, printed, err = run(*common, "--methods", "shortgpt")
    assert code == 0, err
    assert "plot skipped" in printed and "pip install 'come[plot]'" in printed and not (out / "compare.png").exists()
    code, printed, err = run(*common, "--methods", "shortgpt,reverse", "--resume")
    assert code == 0, err
    assert "plot skipped" in printed and [r["method"] for r in json.loads((out / "compare.json").read_text())
                                          ["rows"]] == ["dense", "shortgpt", "reverse"]
    assert str(tmp_path) not in (out / "compare.md").read_text()


# --- evaluation beyond the seven --------------------------------------------------------------------------------


def test_online_any_lm_eval_task_offline_the_seven(monkeypatch):
    from types import SimpleNamespace

    from come.errors import ComeError
    from come.eval import harness

    # lm-eval's own index takes most of a minute to build: the real one in the slow test below
    monkeypatch.setattr(harness, "lm_eval_tasks", lambda: SimpleNamespace(all_tasks=["mmlu", "mmlu_anatomy", "piqa"]))
    assert harness.parse_tasks("mmlu,piqa", offline=False) == ["mmlu", "piqa"]
    with pytest.raises(ComeError, match=r"lm-eval has no task mmlu_anatomyy \(close: mmlu_anatomy"):
        harness.parse_tasks("piqa,mmlu_anatomyy", offline=False)
    with pytest.raises(ComeError, match="unknown task mmlu offline"):
        harness.parse_tasks("mmlu", offline=True)
    assert harness.parse_tasks("all", offline=True) == list(harness.TASKS)


@pytest.mark.slow
def test_lm_eval_index_knows_mmlu_and_not_a_typo():
    from come.errors import ComeError
    from come.eval.harness import parse_tasks

    assert parse_tasks("mmlu,arc_easy", offline=False) == ["mmlu", "arc_easy"]
    with pytest.raises(ComeError, match="lm-eval has no task no_such_task"):
        parse_tasks("no_such_task", offline=False)


def test_num_fewshot_reaches_lm_eval(run, tiny_dir, tmp_path, monkeypatch):
    import come.models

    path, _ = tiny_dir
    code, _, err = run("eval", path, "--tasks", "piqa", "--num-fewshot", -1, "--device", "cpu")
    assert code == 2 and "--num-fewshot -1" in err
    real = come.models.load_model
    monkeypatch.setattr(come.models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    code, _, err = run("eval", path, "--tasks", "piqa,mmlu", "--offline-tasks", "--device", "cpu")
    assert code == 2 and "unknown task mmlu offline" in err
    monkeypatch.setattr(come.models, "load_model", real)
    code, _, err = run("eval", path, "--tasks", "piqa", "--limit", 2, "--num-fewshot", 1, "--offline-tasks",
                       "--device", "cpu", "--batch-size", 2, "--out", tmp_path / "e")
    assert code == 0, err
    result = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert result["settings"]["num_fewshot"] == 1 and result["model"]["tasks"]["piqa"]["num_fewshot"] == 1


# --- the repository -----------------------------------------------------------------------------------------------


def test_license_readme_and_results_doc():
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme and "## Results" in readme
    assert "docs/results.md" in readme and "arxiv.org/abs/2510.15304" in readme and "@inproceedings" in readme
    assert "../shared" not in readme and "this machine" not in readme
    for link in re.findall(r"\]\(((?:docs|recipes)/[^)#]+)", readme):
        assert (ROOT / link).exists(), link
    assert (ROOT / "docs" / "results.md").read_text().count("## Current results") == 1
