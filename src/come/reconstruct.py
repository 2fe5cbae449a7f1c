"""Closed-form reconstruction (ours): re-fit a merged layer's output projections by ridge least squares.

After a merge at l, `o_proj` is re-fitted so the merged attention's residual update matches the sum of the two
original attention updates, then `down_proj` so the merged layer's output matches the original pair's output
`h_out(l+1)`, taking the (re-fitted) attention part as given. Gram matrices are accumulated over windows in
float64 (memory d_in^2, independent of the number of tokens). Every HOLDOUT_EVERY-th calibration window is held
out: the fit never sees it, the ridge strength is chosen on it, and "no re-fit" (lambda = infinity) is one of the
candidates, so a fit is applied only when it beats the plain merge on windows it was not fitted to. The ridge
pulls toward zero (`prior "zero"`) or toward the merged layer's own weights (`prior "merged"`: a strong ridge then
keeps the plain merge, so with few calibration tokens the fit moves only as far as the held-out windows support).
A residual multiplier (Granite) enters the fit exactly; behind a post-norm (Gemma 2/3, OLMo 2) the fit is a
surrogate and its candidates are scored by their true held-out error (see `refit_merged`). One re-fit is one
`RefitProblem` (the merged layer, its inputs, the two targets, the prior, the held-out fold). The weights are
stored with the plan (safetensors) and installed by its `refit` step (`come.ops`), so replay is bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from come.capture import Calibration, _first, on_device
from come.models import ModelAdapter
from come.search import downhill

LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # relative to the mean diagonal of the Gram matrix
# toward the merged weights a strong ridge is meaningful (it approaches the unfitted merge), so search further
LAMBDAS_MERGED = (*LAMBDAS, 10.0, 100.0)
PRIORS = ("zero", "merged")
SEARCH_START = 1.0  # where ridge_fit's walk along the grid starts (the strength most re-fits pick)
HOLDOUT_EVERY = 4  # every 4th calibration window is held out: no fit sees it; decisions are scored on it
MIN_WINDOWS = HOLDOUT_EVERY  # a held-out window needs at least this many calibration windows
FOLD = HOLDOUT_EVERY - 1  # the held-out fold of the applied re-fit: the last window of each group of HOLDOUT_EVERY


def held_out_windows(n_windows: int, fold: int = FOLD) -> torch.Tensor:
    """Boolean mask of the held-out calibration windows: fold `fold` (0 <= fold < HOLDOUT_EVERY) holds every
    window whose index is `fold` modulo HOLDOUT_EVERY; the default is the last of each group. The folds together
    cover every window once."""
    return torch.arange(n_windows) % HOLDOUT_EVERY == fold


def _rows(x: torch.Tensor, t: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale * x, t) as float64 rows [n, features] (what Gram and HeldOut accumulate)."""
    x = x.reshape(-1, x.shape[-1]).double()
    if scale != 1.0:
        x = x * scale
    return x, t.reshape(-1, t.shape[-1]).double()


@dataclass
class Gram:
    """Sufficient statistics of a least-squares problem X W^T ~ T: X^T X, X^T T and ||T||^2 (float64)."""

    xx: torch.Tensor | None = None
    xt: torch.Tensor | None = None
    tt: float = 0.0
    n: int = 0

    def add(self, x: torch.Tensor, t: torch.Tensor, scale: float = 1.0) -> None:
        """Add the rows of (scale * x, t)."""
        x, t = _rows(x, t, scale)
        xx, xt = x.T @ x, x.T @ t
        self.xx = xx if self.xx is None else self.xx + xx
        self.xt = xt if self.xt is None else self.xt + xt
        self.tt += float((t * t).sum())
        self.n += x.shape[0]

    def __add__(self, other: Gram) -> Gram:
        return Gram(self.xx + other.xx, self.xt + other.xt, self.tt + other.tt, self.n + other.n)

    def error(self, wt: torch.Tensor) -> float:
        """||X W^T - T||^2 for W^T = wt [d_in, d_out], from the statistics alone."""
        wt = wt.to(self.xx)  # double, and on the statistics' device (offloaded weights live on the CPU)
        return float((wt * (self.xx @ wt)).sum() - 2 * (wt * self.xt).sum() + self.tt)

    def solve(self, lam: float, prior: torch.Tensor | None = None) -> torch.Tensor:
        """argmin ||X W^T - T||^2 + lam * s * ||W^T - prior||^2 (prior None: zero), s = mean diagonal of X^T X."""
        scale = self.xx.diagonal().mean().clamp_min(1e-12)
        eye = torch.eye(self.xx.shape[0], dtype=self.xx.dtype, device=self.xx.device)
        rhs = self.xt if prior is None else self.xt + lam * scale * prior.to(self.xt)
        return torch.linalg.solve(self.xx + lam * scale * eye, rhs)


class HeldOut:
    """The held-out rows of X W^T ~ T, to score candidate weights: kept as rows while there are no more of them
    than input features (an error then costs n d_in d_out instead of d_in^2 d_out through the statistics, and no
    d_in^2 statistics are built), else turned into Gram statistics. float64, like Gram."""

    def __init__(self) -> None:
        self.rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.gram: Gram | None = None
        self.n = 0

    def add(self, x: torch.Tensor, t: torch.Tensor, scale: float = 1.0) -> None:
        x, t = _rows(x, t, scale)
        self.n += x.shape[0]
        if self.gram is None and self.n <= x.shape[1]:
            self.rows.append((x, t))
            return
        if self.gram is None:
            self.gram = Gram()
            for rx, rt in self.rows:
                self.gram.add(rx, rt)
            self.rows = []
        self.gram.add(x, t)

    def error(self, wt: torch.Tensor) -> float:
        """||X W^T - T||^2 over the held-out rows for W^T = wt [d_in, d_out]."""
        if self.gram is not None:
            return self.gram.error(wt)
        total = 0.0
        for x, t in self.rows:
            total += float(((x @ wt.to(x) - t) ** 2).sum())
        return total


@dataclass
class RidgeResult:
    weight: torch.Tensor | None  # new W [d_out, d_in] in the layer's dtype, None when the fit did not help
    lam: float
    error_before: float
    error_after: float
    val_errors: dict = field(default_factory=dict)


def _prior_grid(w0: torch.Tensor, prior: str, lambdas: tuple[float, ...] | None = None
                ) -> tuple[tuple[float, ...], torch.Tensor | None]:
    """The ridge strengths (`lambdas`, else the prior's grid) and what the ridge pulls toward (None: zero)."""
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
    grid = LAMBDAS if prior == "zero" else LAMBDAS_MERGED
    return tuple(lambdas or grid), (None if prior == "zero" else w0.T.double())


def ridge_candidates(fit: Gram, w0: torch.Tensor, prior: str = "zero", lambdas: tuple[float, ...] | None = None
                     ) -> dict[float, torch.Tensor]:
    """{lambda: W^T} solved on `fit` for every lambda of the grid (see ridge_fit)."""
    lambdas, center = _prior_grid(w0, prior, lambdas)
    return {lam: fit.solve(lam, center) for lam in lambdas}


def pick(solutions: dict[float, torch.Tensor], val_errors: dict[float, float], w0: torch.Tensor) -> RidgeResult:
    """The candidate with the lowest held-out error, "keep `w0`" (key math.inf) among them (ties: the larger
    lambda)."""
    lam = min(val_errors, key=lambda k: (val_errors[k], k))
    before = val_errors[math.inf]
    shown = {f"{k:g}": v for k, v in val_errors.items()}
    if lam == math.inf:
        return RidgeResult(None, lam, before, before, shown)
    return RidgeResult(solutions[lam].T.to(w0.dtype).contiguous(), lam, before, val_errors[lam], shown)


def ridge_fit(fit: Gram, val: Gram | HeldOut, w0: torch.Tensor, prior: str = "zero",
              lambdas: tuple[float, ...] | None = None) -> RidgeResult:
    """Solve on `fit` and keep the lambda with the lowest error on the held-out `val` windows, with "keep `w0`"
    (lambda = infinity) as a candidate: the result's weight is None when no fit beats `w0` there. The ridge pulls
    toward zero (`prior="zero"`) or toward `w0` (`"merged"`). error_before / error_after are the held-out errors of
    `w0` and of the chosen weight.

    The held-out error is unimodal along the lambda grid on every re-fit measured (54 of 54 on SmolLM2-135M), so
    instead of solving for every lambda the search starts at SEARCH_START and walks the grid downhill: the same
    choice as trying them all whenever the curve is unimodal, with 3-4 solves instead of 5-7 (the solves and their
    errors are most of come-plus's cost). `val_errors` holds the lambdas it tried. `lambdas`: another grid (the
    walk then starts at SEARCH_START if it holds it, else at its first)."""
    lambdas, center = _prior_grid(w0, prior, lambdas)
    solutions: dict[float, torch.Tensor] = {}
    val_errors: dict[float, float] = {}

    def key(i: int) -> tuple[float, float]:
        lam = lambdas[i]
        if lam not in solutions:
            solutions[lam] = fit.solve(lam, center)
            val_errors[lam] = val.error(solutions[lam])
        return val_errors[lam], lam  # the order of `pick` (ties: the smaller lambda)

    downhill(len(lambdas), lambdas.index(SEARCH_START) if SEARCH_START in lambdas else 0, key)
    val_errors[math.inf] = val.error(w0.T)  # no re-fit: the merged weights as they are
    return pick(solutions, val_errors, w0)


def _held(x: torch.Tensor, first_window: int, fold: int) -> torch.Tensor:
    """Which windows of a batch (starting at global window `first_window`) are in the held-out `fold`."""
    return held_out_windows(first_window + x.shape[0], fold)[first_window:].to(x.device)


def _split_add(fit: Gram, val: Gram | HeldOut | None, x: torch.Tensor, t: torch.Tensor, first_window: int,
               fold: int, scale: float = 1.0) -> None:
    """Add windows of a batch to `fit` or `val` by their global index (those of the held-out `fold` to `val`; with
    `val` None they are left out)."""
    held = _held(x, first_window, fold)
    if (~held).any():
        fit.add(x[~held], t[~held], scale)
    if val is not None and held.any():
        val.add(x[held], t[held], scale)


@torch.no_grad()
def capture(calib: Calibration, layer: nn.Module, inputs: Sequence[torch.Tensor], module: nn.Module,
            fn: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]) -> None:
    """Run `layer` over all batches; for each, call fn(batch, layer_input, module_input, module_output, out)."""
    seen: dict = {}

    def hook(_m, args, out):
        seen["x"], seen["y"] = args[0].detach(), out.detach()

    handle = module.register_forward_hook(hook)
    try:
        with on_device(layer, calib.device):
            for b, (h, kw) in enumerate(zip(inputs, calib.kwargs_for(layer))):
                h = h.to(calib.device)
                out = _first(layer(h, **kw))
                fn(b, h, seen["x"], seen["y"], out)
    finally:
        handle.remove()


def attention_updates(calib: Calibration, adapter: ModelAdapter, l: int) -> list[torch.Tensor]:
    """Per batch, Attn_l(h_in(l)) + Attn_{l+1}(h_in(l+1)): the two original attention residual updates (each
    o_proj output through its layer's post-norm and residual multiplier, `ModelAdapter.residual_update`)."""
    updates: list[torch.Tensor] = []

    def first(b, h, x, y, out):
        updates.append(adapter.residual_update(adapter.layers[l], "attn", y).float())

    def second(b, h, x, y, out):
        y = adapter.residual_update(adapter.layers[l + 1], "attn", y)
        updates[b] = (updates[b] + y.float()).to(calib.store_device)

    capture(calib, adapter.layers[l], calib.hidden[l], adapter.o_proj(adapter.layers[l]), first)
    capture(calib, adapter.layers[l + 1], calib.hidden[l + 1], adapter.o_proj(adapter.layers[l + 1]), second)
    return updates


@dataclass
class RefitProblem:
    """One re-fit: a merged `layer` that runs on `inputs` (per batch of `calib`'s windows) and the residual updates
    it should produce. `attn_target`: per batch, the attention update to match (attention_updates); `out_target`:
    the layer output to match. `prior`: what the ridge pulls toward (ridge_fit). `fold`: the calibration windows
    held out of the fit (held_out_windows), on which the ridge strength is chosen. `fit`: the projections
    re-fitted (the others keep the plain merge's weights); `lambdas`: the ridge strengths tried (None: the
    prior's grid)."""

    calib: Calibration
    adapter: ModelAdapter
    layer: nn.Module
    inputs: Sequence[torch.Tensor]
    attn_target: Sequence[torch.Tensor]
    out_target: Sequence[torch.Tensor]
    prior: str = "merged"
    fold: int = FOLD
    fit: tuple[str, ...] = ("o_proj", "down_proj")
    lambdas: tuple[float, ...] | None = None

    @property
    def starts(self) -> list[int]:
        """The global index of each batch's first window."""
        sizes = [h.shape[0] for h in self.inputs]
        return [sum(sizes[:b]) for b in range(len(sizes))]


def refit_merged(p: RefitProblem) -> tuple[dict[str, torch.Tensor], dict]:
    """Ridge re-fit (in place) of o_proj then down_proj of the merged layer of `p`; returns (weights, report).

    Each sub-layer adds `residual_update(y)` to the residual, y its output projection's output. Without a post-norm
    that is m (x W^T + b), linear in W (m: the residual multiplier, 1 but for Granite): the fit solves
    ||(m x) W^T - (T - m b)||^2 exactly and its held-out error is the true error of the update (of the layer
    output, for down_proj). Behind a post-norm (Gemma 2/3, OLMo 2) it is not linear: see `_post_norm_fit`."""
    adapter, layer, starts = p.adapter, p.layer, p.starts
    weights, report = {}, {}
    o, down = adapter.o_proj(layer), adapter.down_proj(layer)
    post = adapter.attn_post_norm(layer) is not None or adapter.mlp_post_norm(layer) is not None
    plain: dict = {}  # post-norm families, per batch: held-out error of the plain merge's output (the guard)

    def attn_t(b, h, out):
        if post:
            held = _held(h, starts[b], p.fold)
            plain[b] = float(((out[held].double() - p.out_target[b][held].to(out.device).double()) ** 2).sum())
        return p.attn_target[b]

    o_res = _fit_projection(p, "o_proj", o, "attn", attn_t)
    # the plain merge's weights, to go back to (only behind post-norms, and only if o_proj changes)
    plain_w = [q.weight.detach().clone() for q in (o, down)] if post and o_res.weight is not None else None
    _install("o_proj", o, o_res, weights, report, p.prior)

    attn_out: dict = {}
    handle = o.register_forward_hook(lambda _m, _a, y: attn_out.__setitem__("y", y.detach()))

    def mlp_t(b, h, out):
        # the merged layer's own post-attention residual: what its MLP's update adds to
        u = h.float() + adapter.residual_update(layer, "attn", attn_out["y"]).float()
        return p.out_target[b].to(h.device).float() - u

    try:
        down_res = _fit_projection(p, "down_proj", down, "mlp", mlp_t)
    finally:
        handle.remove()
    _install("down_proj", down, down_res, weights, report, p.prior)
    if post:
        report["plain_error"] = sum(plain.values())
        for name in ("o_proj", "down_proj"):
            report[name]["fit"] = "pre-norm surrogate; errors: true, held-out"
        if plain_w is not None and down_res.error_after > report["plain_error"]:
            # the re-fitted attention left the layer output worse than the plain merge on the held-out windows,
            # and no down_proj fit made up for it: keep the plain merge
            with torch.no_grad():
                for proj, w in zip((o, down), plain_w):
                    proj.weight.copy_(w)
            weights.clear()
            for name in ("o_proj", "down_proj"):
                report[name].update(applied=False, reason="held-out layer output error above the plain merge's")
    return weights, report


def _fit_projection(p: RefitProblem, name: str, proj: nn.Linear, kind: str, target: Callable) -> RidgeResult:
    """Fit `proj` (the output projection `name` of sub-layer `kind`) so the sub-layer's residual update matches
    target(batch, layer_input, layer_output) on the fit windows; the result's errors are the true held-out ones,
    sum over held-out tokens of ||residual_update(kind, x W^T + b) - target||^2. A projection `p.fit` leaves out
    keeps its weights, as if the held-out search had kept the plain merge."""
    if name not in p.fit:
        return RidgeResult(None, math.inf, 0.0, 0.0, {"left out": 0.0})
    post = p.adapter.attn_post_norm(p.layer) if kind == "attn" else p.adapter.mlp_post_norm(p.layer)
    if post is not None:
        return _post_norm_fit(p, proj, kind, post, target)
    m = p.adapter.residual_multiplier(p.layer)
    fit, val = Gram(), HeldOut()

    def row(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return t - m * proj.bias.float() if proj.bias is not None else t

    _collect(p, proj, target, row, fit, val, m)
    return ridge_fit(fit, val, proj.weight.detach(), p.prior, p.lambdas)


def _collect(p: RefitProblem, proj: nn.Linear, target: Callable, row: Callable, fit: Gram, val: HeldOut | None,
             scale: float) -> None:
    """Run the layer over its calibration inputs and add, per batch, (scale * proj's input, row(target, proj's
    output)) to `fit`, or to `val` for the windows of the held-out fold (left out when `val` is None)."""
    starts = p.starts

    def add(b, h, x, y, out):
        t = row(target(b, h, out).to(x.device).float(), y)
        _split_add(fit, val, x, t, starts[b], p.fold, scale)

    capture(p.calib, p.layer, p.inputs, proj, add)


def _post_norm_fit(p: RefitProblem, proj: nn.Linear, kind: str, post: nn.Module, target: Callable) -> RidgeResult:
    """Behind a post-norm the update m PN(x W^T + b) is not linear in W. An RMSNorm keeps only the direction of
    its input, so the fit matches a pre-norm target that the norm maps onto the target's direction: per token,
    (T / m) g / (g^2 + eps) (g: the norm's scale, eps = 1e-3 of its mean square, for channels it nearly
    zeroes), rescaled to the RMS of the current output (the scale the norm discards is unknown; the merged
    weights' is the natural one). That is a surrogate, so the candidates (every lambda and "no re-fit") are
    then scored by their true error on the held-out windows, in a second pass with the re-fitted weights as
    they would be installed."""
    adapter, layer, starts = p.adapter, p.layer, p.starts
    m = adapter.residual_multiplier(layer)
    g = adapter.norm_scale(post)
    inv = g / (g * g + 1e-3 * (g * g).mean()) / m
    fit = Gram()

    def row(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        v = t * inv.to(t.device)
        rms_y, rms_v = y.float().pow(2).mean(-1, keepdim=True).sqrt(), v.pow(2).mean(-1, keepdim=True).sqrt()
        z = v * (rms_y / rms_v.clamp_min(1e-12))
        return z - proj.bias.float() if proj.bias is not None else z

    _collect(p, proj, target, row, fit, None, 1.0)
    w0 = proj.weight.detach()
    solutions = ridge_candidates(fit, w0, p.prior, p.lambdas)
    installed = {lam: wt.T.to(w0.dtype) for lam, wt in solutions.items()}
    installed[math.inf] = w0
    errors = dict.fromkeys(installed, 0.0)

    def score(b, h, x, y, out):
        held = _held(x, starts[b], p.fold)
        if not held.any():
            return
        t = target(b, h, out)[held].to(x.device).double()
        for lam, w in installed.items():
            upd = adapter.residual_update(layer, kind, nn.functional.linear(x[held], w.to(x.device), proj.bias))
            errors[lam] += float(((upd.double() - t) ** 2).sum())

    capture(p.calib, layer, p.inputs, proj, score)
    return pick(solutions, errors, w0)


def _install(name: str, proj: nn.Linear, res: RidgeResult, weights: dict, report: dict, prior: str = "zero") -> None:
    """Install and keep the re-fitted weight of `proj` when the fit lowered the held-out error."""
    report[name] = {"lambda": None if math.isinf(res.lam) else res.lam, "prior": prior,
                    "error_before": res.error_before, "error_after": res.error_after,
                    "applied": res.weight is not None, "val_errors": res.val_errors}
    if res.weight is not None:
        with torch.no_grad():
            proj.weight.copy_(res.weight)
        # keep what was installed: the model's dtype (half the plan of a bf16 run; replay copies it back exactly)
        # and on the CPU (a 70B re-fit plan would otherwise hold gigabytes of accelerator memory until saved)
        weights[name] = proj.weight.detach().to("cpu", copy=True)

