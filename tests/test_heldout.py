"""come-plus decides on calibration windows that no re-fit saw, and refuses too few windows up front."""

import math

import pytest
import torch
from conftest import prune_config

from come import apply_plan, prune
from come.cli import main
from come.compare import CompareConfig, compare
from come.config import CalibConfig
from come.errors import ComeError
from come.models import load_model
from come.reconstruct import held_out_windows


def test_come_plus_scores_its_choices_on_held_out_windows(tiny_dir, monkeypatch):
    """Every NLL that decides a ratio is computed on the held-out windows only, and the recorded choice is the
    argmin of what was recorded; re-fits that do not beat the plain merge there are not applied."""
    from come.capture import Calibration

    masks = []
    real = Calibration.forward_from

    def spy(self, start, layers, n_batches=None, windows=None):
        masks.append(None if windows is None else windows.tolist())
        return real(self, start, layers, n_batches, windows)

    monkeypatch.setattr(Calibration, "forward_from", spy)
    path, text = tiny_dir
    res = prune(prune_config(path, text, samples=8, batch_size=4, method="come-plus", target_layers=4))
    held = held_out_windows(8).tolist()
    assert masks and all(m == held for m in masks)
    merges = [s for s in res.plan.steps if s["op"] == "merge"]
    assert len(merges) == 2
    for s in merges:
        sc = s["scores"]
        assert sc["scored_on"] == "held-out windows"
        grid = {float(r): v for r, v in sc["ratio_grid_nll"].items()}
        assert s["ratio"][0] == pytest.approx(min(grid, key=lambda r: (grid[r], abs(r - sc["bi_ratio"][0]))), abs=1e-4)
    for s in res.plan.steps:
        if s["op"] == "refit":
            for r in s["report"].values():  # applied only when it beat "no re-fit" on the held-out windows
                assert r["applied"] and r["error_after"] < r["val_errors"]["inf"]
    model, _, _ = load_model(str(path), "float32", "cpu")
    replayed = apply_plan(model, res.plan)
    ids = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        assert torch.equal(replayed(ids).logits, res.model(ids).logits)


def test_come_plus_with_two_windows_is_refused_before_loading(tiny_dir, tmp_path, capsys, monkeypatch):
    import importlib

    path, text = tiny_dir
    prune_mod = importlib.import_module("come.prune")  # the module (come.prune is also the function's name)
    monkeypatch.setattr(prune_mod, "load_model", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(ComeError, match="come-plus needs at least 4 calibration windows"):
        prune_config(path, text, samples=2, batch_size=4, method="come-plus", target_layers=4).validate()
    code = main(["prune", str(path), "--method", "come-plus", "--target-layers", "4", "--calib-data", str(text),
                 "--calib-samples", "2", "--calib-seq-len", "32", "--device", "cpu", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--calib-samples 4 or more" in err[0], err
    assert not (tmp_path / "o").exists()


def test_compare_reports_a_refused_method_as_a_failed_row(tiny_dir, tmp_path):
    path, text = tiny_dir
    result = compare(CompareConfig(
        model=str(path), methods="shortgpt,come-plus", target_layers=4, evals="ppl",
        ppl_data=str(text.with_name("eval.txt")), ppl_seq_len=32, ppl_max_windows=2,
        calib=CalibConfig(data=str(text), samples=2, seq_len=32, batch_size=2), device="cpu",
        out=str(tmp_path / "cmp"), save_models=False, progress=False))
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["shortgpt"]["layers"] == 4 and math.isfinite(rows["shortgpt"]["ppl"]["ppl"])
    assert "needs at least 4 calibration windows" in rows["come-plus"]["error"]
