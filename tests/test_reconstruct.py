"""Closed-form ridge re-fit: exact when the target is reachable, never worse, deterministic."""

import math

import pytest
import torch
from conftest import tiny_model

from come.capture import Calibration
from come.merge import concat_layers, replace_pair
from come.models import get_adapter
from come.reconstruct import (
    HOLDOUT_EVERY,
    LAMBDAS,
    LAMBDAS_MERGED,
    PRIORS,
    Gram,
    HeldOut,
    RefitProblem,
    attention_updates,
    held_out_windows,
    refit_merged,
    ridge_fit,
)


def test_ridge_recovers_a_reachable_target_exactly():
    torch.manual_seed(0)
    x = torch.randn(400, 16, dtype=torch.float64)
    w_true = torch.randn(8, 16, dtype=torch.float64)
    fit, val = Gram(), Gram()
    fit.add(x[:300], x[:300] @ w_true.T)
    val.add(x[300:], x[300:] @ w_true.T)
    res = ridge_fit(fit, val, torch.zeros(8, 16, dtype=torch.float64))
    assert res.lam == 1e-4  # the smallest ridge wins on a noiseless target
    torch.testing.assert_close(res.weight, w_true, rtol=1e-3, atol=1e-3)
    assert res.error_after < 1e-4 * res.error_before


def test_ridge_never_applies_a_worse_fit():
    torch.manual_seed(0)
    x = torch.randn(50, 16, dtype=torch.float64)
    w0 = torch.randn(4, 16, dtype=torch.float64)
    fit, val = Gram(), Gram()
    fit.add(x[:40], x[:40] @ w0.T)  # the current weights are already the exact solution
    val.add(x[40:], x[40:] @ w0.T)
    res = ridge_fit(fit, val, w0)
    assert res.weight is None and res.error_after >= res.error_before
    assert res.lam == math.inf  # "no re-fit" won on the held-out windows


def test_ridge_toward_the_merged_weights_solves_the_prior_problem_and_tends_to_them():
    torch.manual_seed(0)
    x = torch.randn(30, 16, dtype=torch.float64)
    w0 = torch.randn(4, 16, dtype=torch.float64)
    t = x @ torch.randn(4, 16, dtype=torch.float64).T + 0.1 * torch.randn(30, 4, dtype=torch.float64)
    g = Gram()
    g.add(x, t)
    for lam in (1e-2, 1.0, 100.0):  # the normal equations of ||X W^T - T||^2 + lam s ||W^T - W0^T||^2 hold
        wt = g.solve(lam, w0.T)
        s = g.xx.diagonal().mean()
        torch.testing.assert_close((g.xx + lam * s * torch.eye(16, dtype=torch.float64)) @ wt,
                                   g.xt + lam * s * w0.T)
    assert (g.solve(1e6, w0.T) - w0.T).abs().max() < 1e-4  # a huge ridge keeps the merged weights
    assert g.solve(1e6).abs().max() < 1e-4  # toward zero it shrinks them away
    fit, val = Gram(), Gram()
    fit.add(x[:20], t[:20])
    val.add(x[20:], t[20:])
    res = ridge_fit(fit, val, w0, prior="merged")
    assert set(res.val_errors) <= {"0.0001", "0.001", "0.01", "0.1", "1", "10", "100", "inf"}
    assert res.val_errors[f"{res.lam:g}"] == min(res.val_errors.values())
    assert res.error_after < res.error_before and res.weight is not None


def exhaustive(fit, val, w0, prior):
    """The choice of trying every lambda of the grid (what ridge_fit's walk must reproduce)."""
    lambdas = LAMBDAS if prior == "zero" else LAMBDAS_MERGED
    center = None if prior == "zero" else w0.T.double()
    errors = {lam: val.error(fit.solve(lam, center)) for lam in lambdas}
    errors[math.inf] = val.error(w0.T)
    return min(errors, key=lambda k: (errors[k], k)), errors


@pytest.mark.parametrize("prior", PRIORS)
def test_the_walk_along_the_grid_picks_what_trying_every_lambda_picks(prior):
    """On many noisy problems of different sizes (so the best lambda lands all over the grid): whenever the held-out
    error is unimodal along the grid, the walk's choice is the exhaustive one, with fewer solves."""
    torch.manual_seed(0)
    checked, picks, tried = 0, set(), []
    for _ in range(40):
        n, d = int(torch.randint(12, 80, ())), int(torch.randint(4, 24, ()))
        x = torch.randn(n + 20, d, dtype=torch.float64) * torch.rand(d, dtype=torch.float64) * 3
        w0 = torch.randn(3, d, dtype=torch.float64)
        noise = float(torch.rand(())) * 4
        t = x @ (w0 + torch.randn(3, d, dtype=torch.float64) * float(torch.rand(()))).T
        t = t + noise * torch.randn(n + 20, 3, dtype=torch.float64)
        fit, val = Gram(), HeldOut()
        fit.add(x[:n], t[:n])
        val.add(x[n:], t[n:])
        best, errors = exhaustive(fit, val, w0, prior)
        curve = [errors[lam] for lam in (LAMBDAS if prior == "zero" else LAMBDAS_MERGED)]
        low = curve.index(min(curve))
        if not (all(a > b for a, b in zip(curve[:low], curve[1 : low + 1]))
                and all(a < b for a, b in zip(curve[low:], curve[low + 1 :]))):
            continue  # not unimodal: the walk may stop at a local minimum (documented)
        res = ridge_fit(fit, val, w0, prior)
        assert res.lam == best
        checked += 1
        picks.add(best)
        tried.append(len(res.val_errors) - 1)
    assert checked >= 20 and len(picks) >= 3  # the check covered minima at several places of the grid
    assert sum(tried) / len(tried) < len(LAMBDAS if prior == "zero" else LAMBDAS_MERGED)


def test_held_out_rows_score_as_the_statistics_do():
    """HeldOut keeps rows while they are fewer than the input features, then statistics: the same error."""
    torch.manual_seed(0)
    x, t, wt = (torch.randn(40, 16, dtype=torch.float64), torch.randn(40, 5, dtype=torch.float64),
                torch.randn(16, 5, dtype=torch.float64))
    g, few, many = Gram(), HeldOut(), HeldOut()
    g.add(x[:10], t[:10], 2.0)
    few.add(x[:10], t[:10], 2.0)
    assert few.gram is None and math.isclose(few.error(wt), g.error(wt), rel_tol=1e-12)
    g.add(x[10:], t[10:], 2.0)
    for i in range(0, 40, 10):
        many.add(x[i : i + 10], t[i : i + 10], 2.0)
    assert many.gram is not None and not many.rows  # 40 rows > 16 features: statistics
    assert math.isclose(many.error(wt), g.error(wt), rel_tol=1e-12)


def setup_merge(seed=0):
    model = tiny_model("qwen2", seed=seed)  # q/k/v biases
    a = get_adapter(model)
    torch.manual_seed(1)
    ids = torch.randint(0, 512, (8, 24))
    calib = Calibration(model, a, ids, batch_size=4, progress=False)
    calib.run(0)
    l = 2
    attn_t, out_t = attention_updates(calib, a, l), calib.hidden[l + 2]
    d_ff = model.config.intermediate_size
    return model, a, calib, l, attn_t, out_t, d_ff


def test_double_width_refit_reproduces_the_pair_and_never_hurts():
    model, a, calib, l, attn_t, out_t, d_ff = setup_merge()
    geo = a.geometry()
    all_g, all_c = list(range(geo.num_kv_heads)), list(range(d_ff))
    merged = concat_layers(a, a.layers[l], a.layers[l + 1], (all_g, all_g), (all_c, all_c), (0.5, 0.5), "fold")
    replace_pair(a, l, merged)
    # o_proj: the merged attention holds both layers' heads; with their own o_proj columns the update is exact
    # up to the input of layer l+1 (h_out(l) vs h_in(l)); the refit must lower the error and be applied.
    weights, report = refit_merged(RefitProblem(calib, a, a.layers[l], calib.hidden[l], attn_t, out_t, prior="zero"))
    for name in ("o_proj", "down_proj"):
        r = report[name]
        assert r["error_after"] <= r["error_before"]
    assert report["down_proj"]["applied"]
    # the reported error is the true error of the installed weights on the held-out windows: recompute it
    held = held_out_windows(8).split(4)
    with torch.no_grad():
        err = sum(((merged(h, **kw) - y)[m] ** 2).sum().item()
                  for h, kw, y, m in zip(calib.hidden[l], calib.layer_kwargs, out_t, held))
    assert abs(err - report["down_proj"]["error_after"]) <= 1e-3 * max(err, 1e-9) + 1e-6


def test_lambda_selection_is_deterministic():
    reports = []
    for _ in range(2):
        model, a, calib, l, attn_t, out_t, d_ff = setup_merge()
        merged = concat_layers(a, a.layers[l], a.layers[l + 1], ([0], [1]), (list(range(64)), list(range(64, 128))),
                               (0.5, 0.5), "mean")
        replace_pair(a, l, merged)
        weights, report = refit_merged(RefitProblem(calib, a, a.layers[l], calib.hidden[l], attn_t, out_t,
                                                    prior="zero"))
        reports.append((report, weights))
    assert reports[0][0] == reports[1][0]
    assert all(torch.equal(reports[0][1][k], reports[1][1][k]) for k in reports[0][1])


def test_refit_reproduces_a_reachable_layer_output_exactly():
    """Targets made by the double-width merged layer itself (with a known down_proj W*): the fit recovers them."""
    model, a, calib, l, attn_t, out_t, d_ff = setup_merge()
    geo = a.geometry()
    all_g, all_c = list(range(geo.num_kv_heads)), list(range(d_ff))
    merged = concat_layers(a, a.layers[l], a.layers[l + 1], (all_g, all_g), (all_c, all_c), (0.5, 0.5), "fold")
    replace_pair(a, l, merged)
    down, o = a.down_proj(merged), a.o_proj(merged)
    seen = {}
    h1 = o.register_forward_hook(lambda _m, _a, y: seen.setdefault("attn", []).append(y.detach().clone()))
    with torch.no_grad():
        targets = [merged(h, **kw).clone() for h, kw in zip(calib.hidden[l], calib.layer_kwargs)]
    h1.remove()
    with torch.no_grad():
        down.weight.add_(0.05 * torch.randn_like(down.weight))  # move away from W*, keep o_proj exact
    weights, report = refit_merged(RefitProblem(calib, a, a.layers[l], calib.hidden[l], seen["attn"], targets,
                                                prior="zero"))
    assert report["down_proj"]["applied"]
    with torch.no_grad():
        got = [merged(h, **kw) for h, kw in zip(calib.hidden[l], calib.layer_kwargs)]
    # 6 fit windows x 24 tokens = 144 equations for 128 unknowns per output: the smallest ridge (1e-4) leaves a
    # residual of a few 1e-3 (was < 1e-3 when the fit also saw the held-out windows)
    for g, t in zip(got, targets):
        torch.testing.assert_close(g, t, rtol=2e-2, atol=2e-2)


def test_the_fit_never_sees_the_held_out_windows(monkeypatch):
    """Every 4th window is held out: the Gram matrices that are solved hold only the other windows' tokens, and
    the held-out windows' targets change which lambda wins but never a candidate solution."""
    assert held_out_windows(8).tolist() == [False, False, False, True] * 2
    solved = []
    real = Gram.solve
    monkeypatch.setattr(Gram, "solve", lambda self, lam, prior=None: solved.append(self.n) or real(self, lam, prior))
    model, a, calib, l, attn_t, out_t, d_ff = setup_merge()
    merged = concat_layers(a, a.layers[l], a.layers[l + 1], ([0], [1]), (list(range(64)), list(range(64, 128))),
                           (0.5, 0.5), "mean")
    replace_pair(a, l, merged)
    refit_merged(RefitProblem(calib, a, a.layers[l], calib.hidden[l], attn_t, out_t, prior="merged"))
    assert solved and set(solved) == {6 * 24}  # 6 of the 8 windows of 24 tokens; windows 3 and 7 never


@pytest.mark.parametrize("fold", range(HOLDOUT_EVERY))
def test_each_fold_is_kept_out_of_its_fit(monkeypatch, fold):
    """A re-fit may hold any fold of windows out (`RefitProblem.fold`): the targets of fold `fold`'s windows never
    change a solution of the fit that holds it out, and those of any other window do."""
    assert held_out_windows(8, fold).tolist() == [i % HOLDOUT_EVERY == fold for i in range(8)]
    real = Gram.solve

    def solutions(moved: int | None) -> dict:
        got: dict = {}
        monkeypatch.setattr(Gram, "solve", lambda self, lam, prior=None: got.setdefault(
            (self.xx.shape[0], lam), real(self, lam, prior)))
        model, a, calib, l, attn_t, out_t, d_ff = setup_merge()
        if moved is not None:  # move window `moved`'s output target (moving its attention target could change
            out_t[moved // 4][moved % 4] += 1.0  # the o_proj that wins, and so down_proj's inputs: not a leak)
        merged = concat_layers(a, a.layers[l], a.layers[l + 1], ([0], [1]),
                               (list(range(64)), list(range(64, 128))), (0.5, 0.5), "mean")
        replace_pair(a, l, merged)
        refit_merged(RefitProblem(calib, a, a.layers[l], calib.hidden[l], attn_t, out_t, prior="merged", fold=fold))
        return got

    base = solutions(None)
    inside, outside = solutions(fold + 4), solutions((fold + 1) % 4)
    common = base.keys() & inside.keys()
    assert common and all(torch.equal(base[k], inside[k]) for k in common)
    assert any(not torch.equal(base[k], outside[k]) for k in base.keys() & outside.keys())
