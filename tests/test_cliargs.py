"""Flags from config dataclasses (come.cliargs): defaults, types and choices come from the fields, deprecated
aliases still work with a note, and a printed `come prune` line parses back to the same config."""

from __future__ import annotations

import argparse
import dataclasses
import shlex

import pytest

from come import recipe
from come.cli import build_parser, calib_config, main
from come.cliargs import add_config_args, arg, check_choices, config_from_args, flags, like
from come.config import CalibConfig, PruneConfig
from come.errors import ComeError


def parse(*argv):
    return build_parser().parse_args([str(a) for a in argv])


def prune_config(*argv) -> PruneConfig:
    return config_from_args(PruneConfig, parse("prune", *argv))


def subparser(command: str) -> argparse.ArgumentParser:
    return build_parser().come_commands[command]


# --- defaults, types, the flags of before ---------------------------------------------------------------------


def test_defaults_come_from_the_dataclass():
    assert prune_config("m", "--target-layers", 4) == PruneConfig(model="m", target_layers=4)
    assert calib_config(parse("prune", "m")) == CalibConfig()


def test_every_flag_reaches_its_field():
    cfg = prune_config(
        "m", "--sparsity", 0.25, "--method", "come-p", "--norm", "fold", "--pair-score", "loss", "--pair-tokens",
        "all", "--remerge", "--ratio-power", 2.5, "--grid", 7, "--loss-samples", 3, "--reconstruct",
        "--refit-target", "dense", "--refit-prior", "zero", "--option", "A=1", "--option", "B=x", "--drop-candidates",
        "--calib-data", "c4", "--calib-samples", 5, "--calib-seq-len", 64, "--calib-batch-size", 2, "--calib-seed", 3,
        "--dtype", "bfloat16", "--save-dtype", "float16", "--device", "cpu", "--offload", "never",
        "--store-device", "cpu")
    assert cfg == PruneConfig(
        model="m", sparsity=0.25, method="come-p", norm="fold", pair_score="loss", pair_tokens="all", remerge=True,
        ratio_power=2.5, grid=7, loss_samples=3, reconstruct=True, refit_target="dense", refit_prior="zero",
        method_options={"A": "1", "B": "x"}, drop_candidates=True,
        calib=CalibConfig(data="c4", samples=5, seq_len=64, batch_size=2, seed=3), dtype="bfloat16",
        save_dtype="float16", device="cpu", offload="never", store_device="cpu")


# every option string `come prune` had before its flags came from PruneConfig
OLD_PRUNE_FLAGS = ["--target-layers", "--sparsity", "--method", "--norm", "--pair-score", "--pair-tokens", "--remerge",
                   "--grid", "--reconstruct", "--refit-target", "--refit-prior", "--save-dtype", "--option",
                   "--drop-candidates", "--loss-samples", "--calib-data", "--calib-samples", "--calib-seq-len",
                   "--batch-size", "--seed", "--dtype", "--device", "--trust-remote-code", "--offload",
                   "--store-device", "--dry-run", "--gpu-memory", "--out", "--overwrite", "--config", "--print-config"]


def test_every_flag_of_before_is_still_accepted():
    accepted = {s for a in subparser("prune")._actions for s in a.option_strings}
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
    from come.models import DTYPES
    from come.placement import OFFLOAD_MODES
    from come.reconstruct import PRIORS

    choices = {f.name: set(f.choices) for f in flags(PruneConfig) if f.choices}
    assert choices["norm"] == set(NORM_MODES) and choices["refit_prior"] == set(PRIORS)
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
    with pytest.raises(ComeError, match="--pair-tokens must be one of last, all, got 'first'"):
        check_choices(PruneConfig(model="m", target_layers=4, pair_tokens="first"))
    with pytest.raises(ComeError, match="--refit-prior must be one of merged, zero, got 'one'"):
        PruneConfig(model="m", target_layers=4, refit_prior="one").validate()


def test_help_shows_each_default():
    text = " ".join(subparser("prune").format_help().split())
    for needle in ("--calib-batch-size CALIB_BATCH_SIZE calibration windows per forward pass (default: 8)",
                   "--calib-seed CALIB_SEED seed of the choice of windows (default: 0)",
                   "--ratio-power RATIO_POWER", "(default: 1.0)", "--norm {mean,fold}",
                   "norm handling of a merged layer (default: mean)", "--grid GRID", "(default: 20)"):
        assert needle in text, needle
    assert "--batch-size" not in text.replace("--calib-batch-size", "")  # aliases stay out of the help


# --- a printed command line parses back to its config ---------------------------------------------------------


@pytest.mark.parametrize("cfg", [
    PruneConfig(model="smollm2-135m", target_layers=20),
    PruneConfig(model="smollm2-135m", sparsity=0.3, method="laco", method_options={"T": 0.5, "C": 3},
                calib=CalibConfig(data="c4", samples=16, seq_len=256, batch_size=4, seed=7)),
    PruneConfig(model="smollm2-135m", target_layers=18, method="come-p", norm="fold", pair_score="loss",
                pair_tokens="all", remerge=True, ratio_power=2.0, grid=5, loss_samples=8, reconstruct=True,
                refit_target="dense", refit_prior="zero", drop_candidates=True, dtype="bfloat16",
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
    mine, theirs = (" ".join(x.format_help().split()) for x in (p, subparser("prune")))
    dtype_help = "--dtype DTYPE auto (float32 on CPU, else the checkpoint dtype), float32, bfloat16, float16"
    assert dtype_help in mine and dtype_help in theirs


def test_toy_only_exclude_and_prefix():
    p, args = toy("--x-fast", "--x-limit", 2, "--no-save", prefix="x", only=("fast", "limit", "save"))
    assert config_from_args(Toy, args, prefix="x", name="y") == Toy("y", limit=2, fast=True, save=False)
    assert "--x-no-save" not in p.format_help() and "--x-mode" not in p.format_help()  # explicit flags keep names
    p, _ = toy(exclude=("depths",))
    assert "--depths" not in p.format_help() and "--no-save" in p.format_help()
    assert "plain" not in p.format_help()
