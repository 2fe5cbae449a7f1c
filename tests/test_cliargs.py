"""Flags from config dataclasses (come.cliargs): defaults, types and choices come from the fields, deprecated
aliases still work with a note, and a printed `come prune` line parses back to the same config."""

from __future__ import annotations

import argparse
import dataclasses
import shlex

import pytest

from come import recipe
from come.cli import build_parser, main
from come.cliargs import add_config_args, arg, check_choices, config_from_args, flags, like
from come.config import CalibConfig, PruneConfig
from come.errors import ComeError


def parse(*argv):
    return build_parser().parse_args([str(a) for a in argv])


def prune_config(*argv) -> PruneConfig:
    return config_from_args(PruneConfig, parse("prune", *argv))


def calib_config(args) -> CalibConfig:
    return config_from_args(CalibConfig, args)


def subparser(command: str) -> argparse.ArgumentParser:
    return build_parser().come_commands[command]


# --- defaults, types, the flags of before ---------------------------------------------------------------------


def test_defaults_come_from_the_dataclass():
    assert prune_config("m", "--target-layers", 4) == PruneConfig(model="m", target_layers=4)
    assert calib_config(parse("prune", "m")) == CalibConfig()


def test_every_flag_reaches_its_field():
    cfg = prune_config(
        "m", "--sparsity", 0.25, "--method", "come-p", "--norm", "fold", "--pair-score", "drop", "--pair-tokens",
        "all", "--remerge", "--grid", 7, "--loss-samples", 3, "--option", "A=1", "--option", "B=x", "--calib-data",
        "c4", "--calib-samples", 5, "--calib-seq-len", 64, "--calib-batch-size", 2, "--calib-seed", 3,
        "--dtype", "bfloat16", "--save-dtype", "float16", "--device", "cpu", "--offload", "never",
        "--store-device", "cpu")
    assert cfg == PruneConfig(
        model="m", sparsity=0.25, method="come-p", loss_samples=3,
        method_options={"A": "1", "B": "x", "norm": "fold", "pair_score": "drop", "pair_tokens": "all", "remerge": True,
                        "grid": 7},
        calib=CalibConfig(data="c4", samples=5, seq_len=64, batch_size=2, seed=3), dtype="bfloat16",
        save_dtype="float16", device="cpu", offload="never", store_device="cpu")


# every option string `come prune` had before its flags came from PruneConfig, but the research settings that left
# for experiments/come_variants.py (--reconstruct, --refit-target, --refit-prior, --drop-candidates)
OLD_PRUNE_FLAGS = ["--target-layers", "--sparsity", "--method", "--norm", "--pair-score", "--pair-tokens", "--remerge",
                   "--grid", "--save-dtype", "--option", "--loss-samples", "--calib-data", "--calib-samples",
                   "--calib-seq-len", "--batch-size", "--seed", "--dtype", "--device", "--trust-remote-code",
                   "--offload", "--store-device", "--dry-run", "--gpu-memory", "--out", "--overwrite", "--config",
                   "--print-config"]


def test_every_flag_of_before_is_still_accepted():
    prune = subparser("prune")
    prune.parse_known_args(["m", "--grid", "3"])  # a method's option: its flags join the parser
    accepted = {s for a in prune._actions for s in a.option_strings}
    assert set(OLD_PRUNE_FLAGS) <= accepted
    apply = {s for a in subparser("apply")._actions for s in a.option_strings}
    assert {"--model", "--target-layers", "--dtype", "--device", "--save-dtype", "--force", "--out"} <= apply


def test_prune_flags_are_the_config_fields():
    """Every PruneConfig field but `progress` is a flag; calibration flags are --calib-*."""
    names = {f.name for f in flags(PruneConfig)}
    assert names == {f.name for f in dataclasses.fields(PruneConfig)} - {"progress"}
    assert [f.flag for f in flags(CalibConfig)] == ["--calib-data", "--calib-samples", "--calib-seq-len",
                                                    "--calib-batch-size", "--calib-seed"]


def test_choices_are_those_the_code_accepts():
    from come.merge import NORM_MODES
    from come.methods.come import ComeOptions
    from come.models import DTYPES
    from come.placement import OFFLOAD_MODES

    choices = {f.name: set(f.choices) for f in flags(PruneConfig) if f.choices}
    assert {f.name: set(f.choices) for f in flags(ComeOptions) if f.choices}["norm"] == set(NORM_MODES)
    assert choices["offload"] == set(OFFLOAD_MODES) and {"auto", *DTYPES} >= choices["save_dtype"]


# --- deprecated aliases -----------------------------------------------------------------------------------------


def test_deprecated_alias_works_and_names_the_new_flag(capsys):
    cfg = prune_config("m", "--target-layers", 4, "--batch-size", 2, "--seed", 5)
    assert (cfg.calib.batch_size, cfg.calib.seed) == (2, 5)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert "--batch-size is deprecated" in err[0] and "use --calib-batch-size" in err[0]
    assert "--seed is deprecated" in err[1] and "use --calib-seed" in err[1]
    prune_config("m", "--target-layers", 4, "--calib-batch-size", 2)
    assert capsys.readouterr().err == ""  # the new flag: no note


def test_compare_keeps_the_calibration_flags_and_their_aliases(capsys):
    args = parse("compare", "m", "--target-layers", 4, "--batch-size", 3, "--calib-samples", 6)
    assert calib_config(args) == CalibConfig(samples=6, batch_size=3)
    assert "use --calib-batch-size" in capsys.readouterr().err


def test_alias_with_a_recipe_notes_once(capsys, tmp_path):
    (tmp_path / "r.yaml").write_text("command: prune\nmodel: m\ntarget_layers: 4\ncalib: {samples: 4}\n")
    assert main(["prune", "--config", str(tmp_path / "r.yaml"), "--batch-size", "2", "--print-config"]) == 0
    out = capsys.readouterr()
    assert out.err.count("--batch-size is deprecated") == 1
    printed = recipe.yaml.safe_load(out.out)
    assert printed["calib"]["batch_size"] == 2 and printed["calib"]["samples"] == 4


# --- bad values, help -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv,needle", [
    (["prune", "m", "--target-layers", 4, "--norm", "max"], "--norm must be one of mean, fold, got 'max'"),
    (["prune", "m", "--target-layers", 4, "--offload", "sometimes"],
     "--offload must be one of auto, always, never, got 'sometimes'"),
    (["apply", "plan.json", "--out", "o", "--save-dtype", "int8"],
     "--save-dtype must be one of auto, float32, bfloat16, float16, got 'int8'"),
])
def test_a_value_outside_the_choices_is_a_one_line_error(capsys, argv, needle):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"come: error: {needle}"]


def test_validate_refuses_what_the_flags_refuse():
    with pytest.raises(ComeError, match="--offload must be one of auto, always, never, got 'x'"):
        check_choices(PruneConfig(model="m", target_layers=4, offload="x"))
    with pytest.raises(ComeError, match="--pair-tokens must be one of last, all, got 'first'"):
        PruneConfig(model="m", target_layers=4, method_options={"pair_tokens": "first"}).validate()
    with pytest.raises(ComeError, match="--norm must be one of mean, fold, got 'one'"):
        PruneConfig(model="m", target_layers=4, method="come-plus", method_options={"norm": "one"}).validate()


def help_text(*argv, capsys) -> str:
    with pytest.raises(SystemExit):
        main(["prune", *argv])
    return " ".join(capsys.readouterr().out.split())


def test_help_shows_each_default(capsys):
    text = help_text("--help-all", capsys=capsys)
    for needle in ("--calib-batch-size CALIB_BATCH_SIZE calibration windows per forward pass (default: 8)",
                   "--calib-seed CALIB_SEED seed of the choice of windows (default: 0)",
                   "--laco-t LACO_T", "(default: 0.65)", "--norm {mean,fold}",
                   "norm handling of a merged layer (come, come-p, come-plus, come-splice) (default: mean)",
                   "--grid GRID"):
        assert needle in text, needle
    assert "--batch-size" not in text.replace("--calib-batch-size", "")  # aliases stay out of the help


def test_the_front_door_shows_what_most_runs_need(capsys):
    """`come prune --help` lists the flags most runs need; --help-all the rest, the methods' options included."""
    text = help_text("--help", capsys=capsys)
    shown = {w.rstrip(",") for w in text.split() if w.startswith("--")}
    for needle in ("--target-layers", "--method", "--calib-data", "--out", "--config", "--help-all"):
        assert needle in shown, needle
    for hidden in ("--calib-seed", "--store-device", "--grid", "--pair-score", "--laco-t"):
        assert hidden not in shown, hidden


# --- a printed command line parses back to its config ---------------------------------------------------------


@pytest.mark.parametrize("cfg", [
    PruneConfig(model="smollm2-135m", target_layers=20),
    PruneConfig(model="smollm2-135m", sparsity=0.3, method="laco", method_options={"T": 0.5, "C": 3},
                calib=CalibConfig(data="c4", samples=16, seq_len=256, batch_size=4, seed=7)),
    PruneConfig(model="smollm2-135m", target_layers=18, method="come-p", loss_samples=8, dtype="bfloat16",
                method_options={"norm": "fold", "pair_score": "drop", "pair_tokens": "all", "remerge": True, "grid": 5},
                save_dtype="float16", device="cpu", offload="always", store_device="cpu"),
], ids=["defaults", "laco-calib", "every-setting"])
def test_printed_command_line_parses_back_to_the_same_config(cfg, capsys):
    cfg.validate()
    line = recipe.command_line(recipe.of(cfg), out="OUT")
    words = shlex.split(line)
    assert words[:3] == ["come", "prune", "smollm2-135m"] and words[-2:] == ["--out", "OUT"]
    args = build_parser().parse_args(words[1:])
    assert capsys.readouterr().err == ""  # canonical flags only: no deprecation note
    again = config_from_args(PruneConfig, args)
    again.validate()
    assert again == cfg, line


def test_printed_line_uses_the_new_calibration_flags():
    cfg = PruneConfig(model="m", target_layers=4, calib=CalibConfig(batch_size=2, seed=1))
    line = recipe.command_line(recipe.of(cfg))
    assert "--calib-batch-size 2" in line and "--calib-seed 1" in line and " --batch-size" not in line


# --- the machinery on a config of its own -----------------------------------------------------------------------


@dataclasses.dataclass
class Toy:
    name: str = arg(positional=True, nargs="?", help="a name")
    depths: list[int] = arg(default_factory=list, help="comma list")
    limit: int | None = arg(None, exclusive="budget", help="a limit")
    steps: int | None = arg(None, exclusive="budget", help="steps")
    save: bool = arg(True, flag="--no-save", help="do not save")
    fast: bool = arg(False, help="go fast")
    mode: str = arg("a", choices=["a", "b"], aliases=["--old-mode"], group="modes", help="the mode")
    plain: int = 3  # no help: no flag


def toy(*argv, prefix="", **kw):
    p = argparse.ArgumentParser(prog="toy", exit_on_error=False)
    add_config_args(p, Toy, prefix=prefix, **kw)
    return p, p.parse_args([str(a) for a in argv])


def test_toy_types_switches_and_lists(capsys):
    p, args = toy("x", "--depths", "24,22", "--limit", 5, "--no-save", "--fast", "--old-mode", "b")
    assert config_from_args(Toy, args) == Toy("x", [24, 22], 5, None, False, True, "b", 3)
    assert "toy: warning: --old-mode is deprecated" in capsys.readouterr().err
    assert config_from_args(Toy, toy()[1]) == Toy(None)
    assert config_from_args(Toy, toy()[1], plain=9, mode="b") == Toy(None, mode="b", plain=9)
    with pytest.raises(argparse.ArgumentError):
        toy("--limit", 1, "--steps", 2)  # an exclusive pair
    with pytest.raises(ComeError, match="--mode must be one of a, b, got 'c'"):
        toy("--old-mode", "c")  # named by its new flag
    assert "modes" in [g.title for g in p._action_groups]


@dataclasses.dataclass
class Other:
    target_layers: int | None = like(PruneConfig, "target_layers", exclusive=None)
    dtype: str = like(PruneConfig, "dtype")
    depths: list[int] = arg(default_factory=list, type=str, help="raw", parse=lambda s: sorted(map(int, s.split(","))))


def test_like_shares_a_flag_and_type_leaves_the_words_to_parse():
    p = argparse.ArgumentParser()
    add_config_args(p, Other)
    args = p.parse_args(["--target-layers", "3", "--depths", "5,4,6"])
    assert config_from_args(Other, args) == Other(3, "auto", [4, 5, 6])
    mine, theirs = (" ".join(x.format_help().split()) for x in (p, subparser("apply")))  # prune: --help-all
    dtype_help = "--dtype DTYPE auto (float32 on CPU, else the checkpoint dtype), float32, bfloat16, float16"
    assert dtype_help in mine and dtype_help in theirs


def test_toy_only_exclude_and_prefix():
    p, args = toy("--x-fast", "--x-limit", 2, "--no-save", prefix="x", only=("fast", "limit", "save"))
    assert config_from_args(Toy, args, prefix="x", name="y") == Toy("y", limit=2, fast=True, save=False)
    assert "--x-no-save" not in p.format_help() and "--x-mode" not in p.format_help()  # explicit flags keep names
    p, _ = toy(exclude=("depths",))
    assert "--depths" not in p.format_help() and "--no-save" in p.format_help()
    assert "plain" not in p.format_help()


# --- come eval, come compare, come distill: their configs from their flags -------------------------------------


def eval_config(*argv):
    from come.eval.cli import config_from_args as eval_from_args

    return eval_from_args(parse("eval", *argv))


def compare_config(*argv):
    from come.compare import CompareConfig

    return config_from_args(CompareConfig, parse("compare", *argv))


def distill_config(*argv):
    from come.distillation.config import DistillConfig

    return config_from_args(DistillConfig, parse("distill", *argv))


def test_every_subcommand_without_flags_gives_the_dataclass_defaults(capsys):
    from come.compare import CompareConfig
    from come.distillation.config import DistillConfig
    from come.eval.config import EvalConfig

    assert eval_config("m") == EvalConfig(model="m")
    assert compare_config("m") == CompareConfig(model="m")
    assert distill_config("--student", "s") == DistillConfig(student="s", out=None)
    assert capsys.readouterr().err == ""


def test_eval_flags_reach_their_fields():
    from come.eval.config import EvalConfig

    cfg = eval_config("m", "--baseline", "b", "--ppl", "wiki-passages,ood", "--ppl-seq-len", 128, "--ppl-max-windows",
                      4, "--ppl-bos", "--tasks", "piqa,boolq", "--limit", 5, "--offline-tasks", "--num-fewshot", 2,
                      "--eval-batch-size", 3, "--speed", "--speed-batch", 2, "--speed-prompt-len", 16,
                      "--speed-gen-len", 4, "--speed-repeats", 1, "--dtype", "float32", "--device", "cpu")
    assert cfg == EvalConfig(model="m", baseline="b", ppl=["wiki-passages", "ood"], ppl_seq_len=128,
                             ppl_max_windows=4, ppl_bos=True, tasks=["piqa", "boolq"], limit=5, offline_tasks=True,
                             num_fewshot=2, batch_size=3, speed=True, speed_batch=2, speed_prompt_len=16,
                             speed_gen_len=4, speed_repeats=1, dtype="float32", device="cpu")
    assert eval_config("m").offline_tasks is None  # left out: the environment decides
    args = parse("-v", "eval", "m")
    from come.eval.cli import config_from_args as eval_from_args

    assert eval_from_args(args).verbose is True


def test_eval_lists_accept_what_the_comma_strings_did(monkeypatch):
    from come.eval.harness import parse_tasks
    from come.eval.ppl import expand_sources

    assert expand_sources([]) == expand_sources([""]) == []  # --ppl left out, before and now
    assert parse_tasks(["piqa", "boolq"], offline=True) == parse_tasks("piqa,boolq", offline=True)
    assert parse_tasks([], offline=True) == parse_tasks(None) == []


@pytest.mark.parametrize("command,argv,alias,new,value,read", [
    ("eval", ["m"], "--batch-size", "--eval-batch-size", 3, lambda c: c.batch_size),
    ("compare", ["m"], "--batch-size", "--calib-batch-size", 3, lambda c: (c.calib.batch_size, c.eval_batch)),
    ("compare", ["m"], "--seed", "--calib-seed", 3, lambda c: c.calib.seed),
    ("distill", ["--student", "s"], "--data", "--train-data", "c4", lambda c: c.data),
    ("distill", ["--student", "s"], "--seq-len", "--train-seq-len", 64, lambda c: c.seq_len),
    ("distill", ["--student", "s"], "--batch-size", "--train-batch-size", 2, lambda c: c.batch_size),
    ("distill", ["--student", "s"], "--seed", "--train-seed", 7, lambda c: c.seed),
    ("compare", ["m"], "--ppl-data", "--ppl", "c4", lambda c: c.ppl_data),  # --ppl, as `come eval` names it
    ("distill", ["--student", "s"], "--ppl-data", "--ppl", "c4", lambda c: c.ppl_data),
    # --ppl-max-windows, as `come eval` and `come compare` name it
    ("distill", ["--student", "s"], "--ppl-windows", "--ppl-max-windows", 3, lambda c: c.ppl_windows),
])
def test_every_deprecated_alias_works_and_notes_the_new_flag(capsys, command, argv, alias, new, value, read):
    build = {"eval": eval_config, "compare": compare_config, "distill": distill_config}[command]
    old = build(*argv, alias, value)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{alias} is deprecated" in err[0] and f"use {new}" in err[0], err
    assert read(old) == read(build(*argv, new, value))
    assert capsys.readouterr().err == ""  # the new flag: no note
    assert read(old) != read(build(*argv))  # the value reached the field
    expected = (value, value) if command == "compare" and alias == "--batch-size" else value
    assert read(old) == expected


# --- one vocabulary: the same name and default for the same thing in every command --------------------------------

VOCABULARY_COMMANDS = ("prune", "eval", "compare", "distill")


def _same_things():
    """Settings that mean the same in several commands, as (config class, field) per command."""
    from come.compare import CompareConfig
    from come.distillation.config import DistillConfig
    from come.eval.config import EvalConfig

    return {
        "perplexity text": [(EvalConfig, "ppl"), (CompareConfig, "ppl_data"), (DistillConfig, "ppl_data")],
        "perplexity window length": [(EvalConfig, "ppl_seq_len"), (CompareConfig, "ppl_seq_len"),
                                     (DistillConfig, "ppl_seq_len")],
        "perplexity windows scored": [(EvalConfig, "ppl_max_windows"), (CompareConfig, "ppl_max_windows"),
                                      (DistillConfig, "ppl_windows")],
        "zero-shot tasks": [(EvalConfig, "tasks"), (CompareConfig, "tasks")],
        "items per task": [(EvalConfig, "limit"), (CompareConfig, "limit")],
        "scoring batch": [(EvalConfig, "batch_size"), (CompareConfig, "eval_batch_size")],
        "compute dtype": [(PruneConfig, "dtype"), (EvalConfig, "dtype"), (CompareConfig, "dtype"),
                          (DistillConfig, "dtype")],
        "device": [(PruneConfig, "device"), (EvalConfig, "device"), (CompareConfig, "device"),
                   (DistillConfig, "device")],
        "saved dtype": [(PruneConfig, "save_dtype"), (DistillConfig, "save_dtype")],
        "layers kept": [(PruneConfig, "target_layers"), (CompareConfig, "target_layers")],
    }


def test_the_same_setting_has_the_same_flag_in_every_command():
    from come.cliargs import flag_name

    for thing, fields in _same_things().items():
        names = {cls.__name__: flag_name(cls, field) for cls, field in fields}
        assert len(set(names.values())) == 1, f"{thing}: {names}"


# Flags whose default differs on purpose between commands, and why (the help of the odd one says so).
DIFFERENT_DEFAULTS = {
    # eval measures only what it is asked for; compare always scores perplexity; distill measures one source
    "--ppl": {"eval": [], "compare": "wiki-passages,ood", "distill": "wiki-passages"},
    # distill's also switches the measurement on (0: off), since each measurement pauses training
    "--ppl-max-windows": {"eval": None, "compare": None, "distill": 0},
    # compare runs tasks only with --eval tasks, and then the seven bundled ones
    "--tasks": {"eval": [], "compare": "all"},
    # compare's follows --calib-batch-size, whose default is eval's (test_compare_scores_...: same batch of 8)
    "--eval-batch-size": {"eval": 8, "compare": None},
}


def _defaults() -> dict[str, dict[str, object]]:
    """Each flag of the four commands (aliases left out) -> {command: its default}."""
    out: dict[str, dict[str, object]] = {}
    for command in VOCABULARY_COMMANDS:
        for action in subparser(command)._actions:
            shown = action.help != argparse.SUPPRESS or getattr(action, "full_help", None) is not None
            for option in action.option_strings if shown else ():
                if option not in ("-h", "--help", "--help-all"):
                    out.setdefault(option, {})[command] = action.default
    return out


def test_a_flag_shared_by_commands_has_one_default():
    shared = {flag: by for flag, by in _defaults().items() if len(by) > 1}
    assert {"--ppl", "--ppl-seq-len", "--ppl-max-windows", "--dtype", "--device", "--out", "--calib-data"} <= \
        set(shared)
    for flag, by in shared.items():
        if flag in DIFFERENT_DEFAULTS:
            assert by == DIFFERENT_DEFAULTS[flag], flag  # a difference that went away leaves this table
        else:
            assert len({repr(v) for v in by.values()}) == 1, f"{flag} defaults differ: {by}"
    assert shared["--ppl-seq-len"] == {"eval": 2048, "compare": 2048, "distill": 2048}
    from come.compare import CompareConfig
    from come.eval.config import EvalConfig

    assert CompareConfig(model="m").eval_batch == EvalConfig(model="m").batch_size  # the same batch in effect
    help_text = " ".join(subparser("distill").format_help().split())
    assert "default 0: not measured, since each measurement pauses training" in help_text


def test_compare_batch_size_splits_into_calibration_and_scoring(capsys):
    cfg = compare_config("m", "--calib-batch-size", 2, "--eval-batch-size", 5)
    assert (cfg.calib.batch_size, cfg.eval_batch_size, cfg.eval_batch) == (2, 5, 5)
    cfg = compare_config("m", "--calib-batch-size", 3)  # scoring follows the calibration batch when not given
    assert (cfg.calib.batch_size, cfg.eval_batch_size, cfg.eval_batch) == (3, None, 3)
    cfg = compare_config("m", "--batch-size", 4)  # the older flag: both, as before
    assert (cfg.calib.batch_size, cfg.eval_batch) == (4, 4)
    cfg = compare_config("m", "--batch-size", 4, "--eval-batch-size", 1)
    assert (cfg.calib.batch_size, cfg.eval_batch) == (4, 1)
    help_text = " ".join(subparser("compare").format_help().split())
    assert "--eval-batch-size EVAL_BATCH_SIZE" in help_text and "(default: --calib-batch-size)" in help_text


def test_compare_scores_with_the_eval_batch_size(monkeypatch):
    from conftest import tiny_model

    import come.eval
    import come.eval.harness
    from come.compare import CompareConfig
    from come.compare.evaluate import evaluate_model
    from come.compare.run import _eval_key

    seen = []
    monkeypatch.setattr(come.eval, "perplexity", lambda *a, **k: seen.append(("ppl", a[5])) or {"ppl": 1.0})
    monkeypatch.setattr(come.eval.harness, "run_tasks", lambda *a, **k: seen.append(("tasks", a[4])) or {"tasks": {}})
    cfg = CompareConfig(model="m", evals=["ppl", "tasks"], tasks=["piqa"], ppl_data="wiki-passages", device="cpu",
                        calib=CalibConfig(batch_size=2), eval_batch_size=5, progress=False)
    evaluate_model(tiny_model("llama"), None, cfg)
    assert seen == [("ppl", 5), ("tasks", 5)]
    assert _eval_key({"eval_batch_size": 5, "calib": {"batch_size": 2}})["batch_size"] == 5
    assert _eval_key({"calib": {"batch_size": 2}})["batch_size"] == 2  # rows of earlier runs: as before


def test_distill_choices_and_budget_come_from_the_fields(capsys):
    from come.distillation.config import TRAINABLE
    from come.distillation.global_ import TRAINABLE as TRAINED_BY_THE_GLOBAL_STAGE

    assert TRAINABLE == TRAINED_BY_THE_GLOBAL_STAGE
    assert main(["distill", "--student", "s", "--steps", "1", "--stage", "twice"]) == 2
    assert capsys.readouterr().err.strip() == "come: error: --stage must be one of layerwise, global, both, lora, " \
        "got 'twice'"
    with pytest.raises(SystemExit):
        parse("distill", "--student", "s", "--steps", 1, "--tokens", 4096)  # an exclusive pair
    assert "--steps" in capsys.readouterr().err
    cfg = distill_config("--student", "s", "--steps", 2, "--train", "norms", "--strategy", "fsdp")
    assert (cfg.steps, cfg.train, cfg.strategy) == (2, "norms", "fsdp")


def test_distill_validate_names_the_new_flags():
    from come.distillation.config import DistillConfig

    with pytest.raises(ComeError, match="--train-seq-len must be at least 2"):
        DistillConfig(student="s", out="o", steps=1, seq_len=1).validate()
    with pytest.raises(ComeError, match="--train-batch-size must be at least 1"):
        DistillConfig(student="s", out="o", steps=1, batch_size=0).validate()
    with pytest.raises(ComeError, match="--save-dtype must be one of auto, float32, bfloat16, float16"):
        DistillConfig(student="s", out="o", steps=1, save_dtype="int8").validate()


# --- recipes: every key through its flag ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["prune", "compare", "distill"])
def test_every_recipe_key_has_a_flag_on_its_command(command):
    accepted = {a.dest for a in subparser(command)._actions}
    for key in recipe.valid_keys(command):
        if key != "command":
            spec = recipe.flag_of(command, key)
            assert spec.dest in accepted, (command, key, spec.dest)


def test_printed_compare_and_distill_lines_parse_back_to_the_same_config(capsys):
    from come.compare import CompareConfig
    from come.distillation.config import DistillConfig

    cmp = CompareConfig(model="smollm2-135m", methods=["sleb", "laco"], target_layers=20, evals=["ppl", "tasks"],
                        tasks=["piqa"], limit=5, ppl_data="wiki-passages", ppl_seq_len=128, ppl_max_windows=3,
                        out="OUT", save_models=False, sweep=True, depths=[24, 22],
                        calib=CalibConfig(samples=8, batch_size=2, seed=1), loss_samples=4,
                        options={"laco.T": "0.5"}, dtype="float32", device="cpu", eval_batch_size=1)
    dst = DistillConfig(student="runs/s", out="OUT", teacher="t", stage="global", loss="mse=1", steps=3,
                        data="wikitext2", seq_len=64, batch_size=2, lr=3e-4, autocast=True, ppl_windows=2,
                        strategy="fsdp", save_dtype="bfloat16", seed=5)
    for cfg in (cmp.validate(), dst):
        line = recipe.command_line(recipe.of(cfg), out="OUT")
        args = build_parser().parse_args(shlex.split(line)[1:])
        assert capsys.readouterr().err == ""  # canonical flags only: no deprecation note
        again = config_from_args(type(cfg), args)
        assert (again.validate() if isinstance(again, CompareConfig) else again) == cfg, line


def test_a_flag_of_an_exclusive_group_drops_the_files_setting(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("command: compare\nmodel: m\nsparsity: 0.25\nmethods: [sleb]\n"
                                     "eval_batch_size: 3\ncalib: {batch_size: 2}\n")
    assert main(["compare", "--config", str(tmp_path / "c.yaml"), "--target-layers", "4", "--print-config"]) == 0
    got = recipe.yaml.safe_load(capsys.readouterr().out)
    assert (got["target_layers"], got["sparsity"], got["methods"]) == (4, None, ["sleb"])
    assert (got["eval_batch_size"], got["calib"]["batch_size"]) == (3, 2)
