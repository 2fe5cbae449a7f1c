"""Closed-form reconstruction (ours): re-fit a merged layer's output projections by ridge least squares.

After a merge at l, `o_proj` is re-fitted so the merged attention's residual update matches the sum of the two
original attention updates, then `down_proj` so the merged layer's output matches the original pair's output
`h_out(l+1)`, taking the (re-fitted) attention part as given. Gram matrices are accumulated over windows in
float64 (memory d_in^2, independent of the number of tokens). Every HOLDOUT_EVERY-th calibration window is held
out: the fit never sees it, the ridge strength is chosen on it, and "no re-fit" (lambda = infinity) is one of the
candidates, so a fit is applied only when it beats the plain merge on windows it was not fitted to. The ridge pulls toward zero (`prior
"zero"`) or toward the merged layer's own weights (`prior "merged"`: a strong ridge then keeps the plain merge,
so with few calibration tokens the fit moves only as far as the held-out windows support). The weights are
stored with the plan (safetensors), so replay is bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from come.capture import Calibration, _first, on_device
from come.models import ModelAdapter
from come.plan import register_op

LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # relative to the mean diagonal of the Gram matrix
# toward the merged weights a strong ridge is meaningful (it approaches the unfitted merge), so search further
LAMBDAS_MERGED = (*LAMBDAS, 10.0, 100.0)
PRIORS = ("zero", "merged")
HOLDOUT_EVERY = 4  # every 4th calibration window is held out: no fit sees it; decisions are scored on it
MIN_WINDOWS = HOLDOUT_EVERY  # a held-out window needs at least this many calibration windows


def held_out_windows(n_windows: int) -> torch.Tensor:
    """Boolean mask of the held-out calibration windows (every HOLDOUT_EVERY-th, the last of each group)."""
    return torch.arange(n_windows) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1


@dataclass
class Gram:
    """Sufficient statistics of a least-squares problem X W^T ~ T: X^T X, X^T T and ||T||^2 (float64)."""

    xx: torch.Tensor | None = None
    xt: torch.Tensor | None = None
    tt: float = 0.0
    n: int = 0

    def add(self, x: torch.Tensor, t: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        t = t.reshape(-1, t.shape[-1]).double()
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


@dataclass
class RidgeResult:
    weight: torch.Tensor | None  # new W [d_out, d_in] in the layer's dtype, None when the fit did not help
    lam: float
    error_before: float
    error_after: float
    val_errors: dict = field(default_factory=dict)


def ridge_fit(fit: Gram, val: Gram, w0: torch.Tensor, prior: str = "zero") -> RidgeResult:
    """Solve on `fit` for every lambda and keep the one with the lowest error on the held-out `val` windows, with
    "keep `w0`" (lambda = infinity) as a candidate: the result's weight is None when no fit beats `w0` there.
    The ridge pulls toward zero (`prior="zero"`) or toward `w0` (`"merged"`). error_before / error_after are the
    held-out errors of `w0` and of the chosen weight."""
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
    lambdas = LAMBDAS if prior == "zero" else LAMBDAS_MERGED
    center = None if prior == "zero" else w0.T.double()
    solutions = {lam: fit.solve(lam, center) for lam in lambdas}
    val_errors = {lam: val.error(wt) for lam, wt in solutions.items()}
    val_errors[math.inf] = val.error(w0.T)  # no re-fit: the merged weights as they are
    lam = min(val_errors, key=lambda k: (val_errors[k], k))
    before = val_errors[math.inf]
    if lam == math.inf:
        return RidgeResult(None, lam, before, before, {f"{k:g}": v for k, v in val_errors.items()})
    weight = solutions[lam].T.to(w0.dtype).contiguous()
    return RidgeResult(weight, lam, before, val_errors[lam], {f"{k:g}": v for k, v in val_errors.items()})


def _split_add(fit: Gram, val: Gram, x: torch.Tensor, t: torch.Tensor, first_window: int) -> None:
    """Add windows of a batch to `fit` or `val` by their global index (every HOLDOUT_EVERY-th is held out)."""
    held = held_out_windows(first_window + x.shape[0])[first_window:].to(x.device)
    if (~held).any():
        fit.add(x[~held], t[~held])
    if held.any():
        val.add(x[held], t[held])


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
    """Per batch, Attn_l(h_in(l)) + Attn_{l+1}(h_in(l+1)): the two original attention residual updates."""
    updates: list[torch.Tensor] = []

    def first(b, h, x, y, out):
        updates.append(y.float())

    def second(b, h, x, y, out):
        updates[b] = (updates[b] + y.float()).to(calib.store_device)

    capture(calib, adapter.layers[l], calib.hidden[l], adapter.o_proj(adapter.layers[l]), first)
    capture(calib, adapter.layers[l + 1], calib.hidden[l + 1], adapter.o_proj(adapter.layers[l + 1]), second)
    return updates


def refit_merged(calib: Calibration, adapter: ModelAdapter, layer: nn.Module, inputs: Sequence[torch.Tensor],
                 attn_target: Sequence[torch.Tensor], out_target: Sequence[torch.Tensor], prior: str = "zero"
                 ) -> tuple[dict[str, torch.Tensor], dict]:
    """Ridge re-fit (in place) of o_proj then down_proj of a merged `layer` that runs on `inputs` (per batch);
    returns (weights, report). `prior`: what the ridge pulls toward (see ridge_fit)."""
    sizes = [h.shape[0] for h in inputs]
    starts = [sum(sizes[:b]) for b in range(len(sizes))]
    weights, report = {}, {}
    o, down = adapter.o_proj(layer), adapter.down_proj(layer)

    fit, val = Gram(), Gram()

    def add_attn(b, h, x, y, out):
        t = attn_target[b].to(x.device).float()
        if o.bias is not None:
            t = t - o.bias.float()
        _split_add(fit, val, x, t, starts[b])

    capture(calib, layer, inputs, o, add_attn)
    _fit_and_install("o_proj", o, fit, val, weights, report, prior)

    fit, val = Gram(), Gram()
    attn_out: dict = {}
    handle = o.register_forward_hook(lambda _m, _a, y: attn_out.__setitem__("y", y.detach()))

    def add_mlp(b, h, x, y, out):
        u = h.float() + attn_out["y"].float()  # post-attention residual of the merged layer
        t = out_target[b].to(x.device).float() - u
        if down.bias is not None:
            t = t - down.bias.float()
        _split_add(fit, val, x, t, starts[b])

    try:
        capture(calib, layer, inputs, down, add_mlp)
    finally:
        handle.remove()
    _fit_and_install("down_proj", down, fit, val, weights, report, prior)
    return weights, report


def _fit_and_install(name: str, proj: nn.Linear, fit: Gram, val: Gram, weights: dict, report: dict,
                     prior: str = "zero") -> None:
    """Solve the ridge problem for `proj`; install and keep the weight only if it lowers the error."""
    res = ridge_fit(fit, val, proj.weight.detach(), prior)
    report[name] = {"lambda": None if math.isinf(res.lam) else res.lam, "prior": prior, "error_before": res.error_before, "error_after": res.error_after,
                    "applied": res.weight is not None, "val_errors": res.val_errors}
    if res.weight is not None:
        with torch.no_grad():
            proj.weight.copy_(res.weight)
        # keep what was installed: the model's dtype (half the plan of a bf16 run; replay copies it back exactly)
        # and on the CPU (a 70B re-fit plan would otherwise hold gigabytes of accelerator memory until saved)
        weights[name] = proj.weight.detach().to("cpu", copy=True)


@register_op("refit", needs_tensors=True, keeps_depth=True)
def apply_refit(adapter: ModelAdapter, step: dict, tensors: dict) -> None:
    """Install re-fitted projection weights of layer `layer` from the plan's tensors."""
    layer = adapter.layers[step["layer"]]
    getters = {"o_proj": adapter.o_proj, "down_proj": adapter.down_proj}
    for name, key in step["tensors"].items():
        proj = getters[name](layer)
        with torch.no_grad():
            proj.weight.copy_(tensors[key].to(proj.weight.device))
