"""CoMe (progressive concatenation merge, docs/method.md §4) and CoMe-P (ratio by grid search on calibration NLL).

Differs from the authors' code on purpose: the pair score compares true layer outputs (not the final-normed
hidden state), a KV group is the unit of attention selection (their GQA tiling mismatches query and KV
heads), and only layers from the merge point on are re-run after each merge.
"""

from __future__ import annotations

import torch

from come.capture import Calibration
from come.data import sampled_windows
from come.errors import ComeError
from come.merge import concat_layers
from come.methods.base import PruneContext
from come.methods.registry import Limit, Method, register
from come.reconstruct import (
    FOLD,
    HOLDOUT_EVERY,
    MIN_WINDOWS,
    Anchor,
    attention_updates,
    held_out_windows,
    refit_merged,
)
from come.scores import attn_group_sensitivity, bi_ratio, mlp_sensitivity, pair_scores, split_budget, top_k
from come.search import downhill

PAPER = "Layer as Puzzle Pieces: Compressing Large Language Models through Layer Concatenation (NeurIPS 2025)"


def come_reads(settings: dict) -> tuple[str, ...]:
    """The PruneConfig fields the CoMe family's plans depend on; the re-fit's only when it re-fits."""
    fields = ("norm", "pair_score", "pair_tokens", "remerge", "ratio_power", "grid", "reconstruct",
              "drop_candidates") + (("grid_search",) if settings.get("method") == "come-p" else ())
    refits = settings.get("reconstruct") or settings.get("method") == "come-plus"
    # --refit-anchor is read only when on: plans made before it existed ran without it (the default)
    anchor = ("refit_anchor",) if settings.get("refit_anchor") else ()
    return fields + (("refit_target", "refit_prior", "cross_fit", *anchor) if refits else ())


def merge_step(ctx: PruneContext, l: int, ratio: tuple[float, float]) -> dict:
    """The plan step merging (l, l+1) with `ratio`: each layer's most sensitive KV groups and MLP channels."""
    a = ctx.adapter
    geo = a.geometry()
    la, lb = a.layers[l], a.layers[l + 1]
    sa, sb = ctx.calib.stats[l], ctx.calib.stats[l + 1]
    d_ff = a.down_proj(la).weight.shape[1]
    k_attn = split_budget(ratio, geo.num_kv_heads)
    k_mlp = split_budget(ratio, d_ff)
    return {
        "op": "merge",
        "layer": l,
        "ratio": [float(ratio[0]), float(ratio[1])],
        "norm": ctx.config.norm,
        "attn_groups": [
            top_k(attn_group_sensitivity(a, la, sa), k_attn[0]),
            top_k(attn_group_sensitivity(a, lb, sb), k_attn[1]),
        ],
        "mlp_channels": [top_k(mlp_sensitivity(a, la, sa), k_mlp[0]), top_k(mlp_sensitivity(a, lb, sb), k_mlp[1])],
    }


def trial(ctx: PruneContext, step: dict, targets: tuple | None = None, score: bool = True,
          windows: torch.Tensor | None = None) -> tuple[dict, float | None, dict, dict]:
    """(step, calibration NLL if `step` were applied, refit weights, refit report): the merged layer is ridge
    re-fitted to `targets` (attention, output) when given; the NLL (skipped unless `score`) re-runs only the
    layers from the pair on, over the windows of the boolean mask `windows` (default: the loss windows). With
    --cross-fit a re-fitted trial scored on held-out windows is scored on every window instead (cross_fitted)."""
    if targets is not None and windows is not None and score and ctx.config.cross_fit:
        return cross_fitted(ctx, step, targets)
    merged, weights, report = _merged(ctx, step, targets, FOLD)
    n_batches = None if windows is not None else ctx.loss_batches
    nll = ctx.calib.forward_from(step["layer"], [merged, *list(ctx.adapter.layers)[step["layer"] + 2 :]],
                                 n_batches, windows) if score else None
    return step, nll, weights, report


def _merged(ctx: PruneContext, step: dict, targets: tuple | None, fold: int) -> tuple:
    """(merged layer of `step`, refit weights, refit report), re-fitted to `targets` with `fold` held out."""
    a, l = ctx.adapter, step["layer"]
    merged = concat_layers(
        a, a.layers[l], a.layers[l + 1], step["attn_groups"], step["mlp_channels"], step["ratio"], step["norm"]
    )
    weights, report = {}, {}
    if targets is not None:
        attn, out, anchor = targets
        weights, report = refit_merged(ctx.calib, a, merged, ctx.calib.hidden[l], attn, out, ctx.config.refit_prior,
                                       fold, anchor)
    return merged, weights, report


def cross_fitted(ctx: PruneContext, step: dict, targets: tuple) -> tuple[dict, float, dict, dict]:
    """`trial` under --cross-fit: for each of the HOLDOUT_EVERY folds of calibration windows, re-fit with that fold
    held out and score the fold; the NLL is the mean over every window, each judged by a fit that never saw it.
    The weights (and report) are the default fold's, the re-fit the step applies; the report adds the folds'
    NLLs. HOLDOUT_EVERY re-fits per trial instead of one, and the suffix runs over all windows, not a quarter."""
    l, n = step["layer"], ctx.calib.input_ids.shape[0]
    suffix = list(ctx.adapter.layers)[l + 2 :]
    total, count, folds, kept = 0.0, 0, {}, ({}, {})
    for fold in range(HOLDOUT_EVERY):
        mask = held_out_windows(n, fold)
        if not mask.any():
            continue
        merged, weights, report = _merged(ctx, step, targets, fold)
        nll = ctx.calib.forward_from(l, [merged, *suffix], None, mask)
        folds[str(fold)] = nll
        total, count = total + nll * int(mask.sum()), count + int(mask.sum())
        if fold == FOLD:
            kept = (weights, report)
    weights, report = kept
    report["cross_fit_nll"] = folds
    return step, total / count, weights, report


def candidates(ctx: PruneContext) -> list[int]:
    """Pairs (l, l+1) that may merge; without re-merge, neither layer may be a merge already."""
    pairs = range(ctx.num_layers - 1)
    if ctx.config.remerge:
        return list(pairs)
    return [l for l in pairs if len(ctx.tree[l]) == 1 and len(ctx.tree[l + 1]) == 1]


def refit_targets(ctx: PruneContext, i: int, dense: list | None) -> tuple:
    """What the re-fit of a merge of (i, i+1) matches: the two attention updates and the pair's output ("dense":
    the original model's state after the pair's last original layer, so the fit also absorbs the error that
    earlier merges left in the input), and with --refit-anchor the same two on the anchor's windows (else None)."""
    out = dense[ctx.tree[i + 1][-1] + 1] if ctx.config.refit_target == "dense" else ctx.calib.hidden[i + 2]
    anchor = None
    if ctx.anchor is not None:  # the same targets on the model's own text (always the current pair's output)
        cache = ctx.anchor
        anchor = Anchor(cache, cache.hidden[i], attention_updates(cache, ctx.adapter, i), cache.hidden[i + 2])
    return attention_updates(ctx.calib, ctx.adapter, i), out, anchor


def anchor_cache(ctx: PruneContext) -> Calibration:
    """--refit-anchor N: a second cache over N windows (of the calibration's length) of text the unpruned model
    samples itself (`come.data.sampled_windows`), run through every layer and kept up to date after each step."""
    c, cfg = ctx.calib, ctx.config
    ids = sampled_windows(ctx.model, cfg.refit_anchor, c.input_ids.shape[1], cfg.calib.seed)
    cache = Calibration(ctx.model, ctx.adapter, ids, c.batches[0].shape[0], c.device, c.store_device, c.progress)
    cache.run(0)
    return cache


def apply_merge(ctx: PruneContext, step: dict, scores: dict, weights: dict, report: dict) -> None:
    """Apply a merge (with its re-fit, if any) as plan steps and refresh the cache from it."""
    l = step["layer"]
    step["scores"] = scores
    step["sources"] = [list(ctx.tree[l]), list(ctx.tree[l + 1])]
    ctx.apply(step, more_follows=bool(weights))  # a checkpoint holds the merge with its re-fit
    if weights:
        keys = {name: f"step{len(ctx.steps)}.{name}" for name in weights}
        refit = {"op": "refit", "layer": l, "tensors": keys, "report": report}
        ctx.apply(refit, {keys[name]: w for name, w in weights.items()})
    ctx.refresh(l)


def ratio_grid(ratios: str, r_bi: float, g: int) -> list[float]:
    """The ratios a merge tries (see progressive_merge)."""
    if ratios == "bi":
        return [r_bi]
    if ratios == "grid":
        return [i / g for i in range(g + 1)]
    return sorted({0.0, r_bi, 1.0})


def walk_ratios(ctx: PruneContext, l: int, grid: list[float], r_bi: float, targets, windows) -> dict:
    """`--grid-search walk`: the trials of CoMe-P's grid from the point nearest r_BI, walking to the better
    neighbour while one is better (come.search.downhill): the grid's best ratio whenever the NLL is unimodal in
    the ratio, with a handful of trials instead of g + 1. {ratio: trial} of the ratios tried."""
    trials: dict = {}

    def key(k: int) -> tuple[float, float]:
        r = grid[k]
        if r not in trials:
            trials[r] = trial(ctx, merge_step(ctx, l, (r, 1 - r)), targets, windows=windows)
        return trials[r][1], abs(r - r_bi)

    downhill(len(grid), min(range(len(grid)), key=lambda k: (abs(grid[k] - r_bi), k)), key)
    return trials


def drop_cost(ctx: PruneContext, removal: list[float], d: int, windows) -> float:
    """What dropping layer d costs on the windows the merges are judged on (the held-out mask `windows`, else the
    loss windows `removal` was scored on; every window under --cross-fit), so the two compare like for like."""
    every = windows is not None and ctx.config.cross_fit  # cross-fitted merges are judged on every window
    if windows is None or (every and ctx.loss_batches is None):
        return removal[d]  # `removal` was scored on exactly those windows
    return ctx.calib.forward_from(d, list(ctx.adapter.layers)[d + 1 :], None, None if every else windows)


def scored_on(ctx: PruneContext) -> str:
    """What a plan's held-out scores were measured on (recorded with each step)."""
    return "every window, cross-fitted" if ctx.config.cross_fit else "held-out windows"


def merge_or_drop(ctx: PruneContext, ratios: str, reconstruct: bool, windows, dense: list | None) -> None:
    """One step of `--pair-score drop`: find the layer d whose removal costs least (SLEB's choice), then try every
    merge of a pair holding it, (d-1, d) and (d, d+1), at each ratio (ratio 1 of (d-1, d) keeps layer d-1 alone: a
    drop of d with a re-fitted neighbour), and the plain drop; take the lowest NLL (on the held-out windows when
    `windows` is given). The merges are where SLEB would cut, not where adjacent states look most alike."""
    from come.methods.sleb import cheapest_removal, drop_layer

    cfg = ctx.config
    removal, d = cheapest_removal(ctx, ctx.loss_batches)  # a drop fits nothing: chosen on the loss windows, as SLEB
    scores: dict = {"removal_nll": removal, "candidates": [], "drop_nll": drop_cost(ctx, removal, d, windows)}
    if windows is not None:
        scores["scored_on"] = scored_on(ctx)
    bi = [s.bi for s in ctx.calib.stats]
    pairs = [i for i in (d - 1, d) if i in candidates(ctx)]
    best = None  # (nll, |r - r_BI|, pair, trial)
    for i in pairs:
        r_bi = bi_ratio(bi[i], bi[i + 1], cfg.ratio_power)
        targets = refit_targets(ctx, i, dense) if reconstruct else None
        grid = ratio_grid(ratios, r_bi[0], cfg.grid)
        trials = {r: trial(ctx, merge_step(ctx, i, (r, 1 - r)), targets, windows=windows)
                  for r in ctx.trials(grid, f"ratios of pair {i}")}
        scores["candidates"].append(i)
        scores[f"pair{i}_ratio_nll"] = {f"{r:.4f}": t[1] for r, t in trials.items()}
        for r, t in trials.items():
            key = (t[1], abs(r - r_bi[0]), i)
            if best is None or key < best[:3]:
                best = (*key, t)
    if best is None or scores["drop_nll"] <= best[0]:
        drop_layer(ctx, d, scores)
        return
    step, nll, weights, report = best[3]
    scores["merge_nll"] = nll
    apply_merge(ctx, step, scores, weights, report)


def progressive_merge(ctx: PruneContext, ratios: str = "bi", reconstruct: bool = False,
                      pair_score: str | None = None, drops: bool | None = None, held_out: bool = False) -> None:
    """Merge pairs until the target depth.

    ratios: "bi" (the BI-proportional ratio), "grid" (CoMe-P: r in {0, 1/g, ..., 1} by calibration NLL) or
    "plus" ({0, r_BI, 1} by calibration NLL: merge, or keep one layer of the pair). With `reconstruct`, the
    merged layer's o_proj/down_proj are ridge re-fitted to the pair's output (inside every trial too).
    pair_score: "angular", "loss" or "drop" (see merge_or_drop) (default: the config's).
    drops: also try SLEB's candidates (drop any one layer) each step and take SLEB's choice when its calibration NLL
    is lower than the chosen merge's (default: the config's `drop_candidates`).
    held_out: score every choice (ratio, merge vs. drop, pair by loss) on the held-out calibration windows that no
    re-fit sees (come-plus), instead of on the loss windows.
    """
    from come.methods.sleb import cheapest_removal, drop_layer

    cfg = ctx.config
    pair_score = pair_score or cfg.pair_score
    drops = cfg.drop_candidates if drops is None else drops
    windows = held_out_windows(ctx.calib.input_ids.shape[0]) if held_out else None
    ctx.calib.run(0)
    if reconstruct and cfg.refit_anchor:
        ctx.anchor = anchor_cache(ctx)
    # the unpruned model's boundary states, kept (a second cache) only when a re-fit targets them
    dense = list(ctx.calib.hidden) if reconstruct and cfg.refit_target == "dense" else None
    while ctx.num_layers > ctx.target_layers:
        if pair_score == "drop":
            merge_or_drop(ctx, ratios, reconstruct, windows, dense)
            continue
        sbi = pair_scores(ctx.calib.hidden, last_token=cfg.pair_tokens == "last")
        bi = [s.bi for s in ctx.calib.stats]
        cands = candidates(ctx)
        if drops:  # SLEB's choice of a layer to drop (a drop fits nothing: scored on the loss windows as SLEB does)
            drop_nll, d = cheapest_removal(ctx, ctx.loss_batches)
        if drops and not cands:  # no fresh pair left: dropping is the only move
            drop_layer(ctx, d, {"removal_nll": drop_nll})
            continue
        if drops:
            d_nll = drop_cost(ctx, drop_nll, d, windows)
        if not cands:
            raise ComeError(
                f"no pair left to merge at {ctx.num_layers} layers without re-merging: "
                "raise the target or pass --remerge"
            )
        scores: dict = {"pair_angular": sbi, "bi": bi, "candidates": cands}
        if held_out:
            scores["scored_on"] = scored_on(ctx)
        if drops:
            scores["removal_nll"] = drop_nll
            scores["drop_nll"] = d_nll
        ratio_of = {i: bi_ratio(bi[i], bi[i + 1], cfg.ratio_power) for i in cands}

        def targets_of(i: int) -> tuple | None:
            return refit_targets(ctx, i, dense) if reconstruct else None

        if pair_score == "loss":
            loss = {i: trial(ctx, merge_step(ctx, i, ratio_of[i]), targets_of(i), windows=windows)[1]
                    for i in ctx.trials(cands, f"pairs at {ctx.num_layers} layers")}
            l = min(cands, key=lambda i: (loss[i], i))
            scores["pair_loss"] = {str(k): v for k, v in loss.items()}
        else:
            l = min(cands, key=lambda i: (sbi[i], i))
        ratio = ratio_of[l]
        scores["bi_ratio"] = list(ratio)
        targets = targets_of(l)
        grid = ratio_grid(ratios, ratio[0], cfg.grid)
        scored = len(grid) > 1 or drops
        if ratios == "grid" and cfg.grid_search == "walk":
            trials = walk_ratios(ctx, l, grid, ratio[0], targets, windows)
        else:
            trials = {r: trial(ctx, merge_step(ctx, l, (r, 1 - r)), targets, score=scored, windows=windows)
                      for r in ctx.trials(grid, f"ratios of pair {l}")}
        if len(grid) > 1:
            scores["ratio_grid_nll"] = {f"{r:.4f}": t[1] for r, t in trials.items()}
        best = min(trials, key=lambda r: (trials[r][1] or 0.0, abs(r - ratio[0])))
        step, merge_nll, weights, report = trials[best]
        if drops:
            scores["merge_nll"] = merge_nll
        if drops and d_nll < merge_nll:
            drop_layer(ctx, d, scores)
            continue
        apply_merge(ctx, step, scores, weights, report)


def no_remerge_limit(num_layers: int, cfg) -> int:
    """Without re-merge each merge needs two fresh layers: at most floor(L/2) merges (drops have no limit)."""
    return num_layers - 1 if cfg.remerge or cfg.drop_candidates or cfg.pair_score == "drop" else num_layers // 2


def refits(cfg) -> bool:
    """Whether a CoMe-family run re-fits its merged layers (come-plus, or --reconstruct)."""
    return cfg.method == "come-plus" or cfg.reconstruct


def refit_windows(cfg) -> int:
    """Calibration windows a CoMe-family run needs: a re-fit (come-plus, --reconstruct) holds every
    HOLDOUT_EVERY-th window out of the fit to decide on it, so it needs at least one held-out window."""
    return MIN_WINDOWS if refits(cfg) else 1


# without re-merge each merge needs two fresh layers (checked by prune/compare before loading weights)
NO_REMERGE = Limit(no_remerge_limit, "without re-merging", "raise the target or pass --remerge")


def come(ctx: PruneContext) -> None:
    """Paper CoMe: merge the pair with the lowest angular score (or loss), BI-proportional ratio."""
    progressive_merge(ctx, "bi", ctx.config.reconstruct)


def come_p(ctx: PruneContext) -> None:
    """CoMe-P: as CoMe, with the ratio chosen on a grid by calibration NLL (r = 0 or 1 drops a layer)."""
    progressive_merge(ctx, "grid", ctx.config.reconstruct)


def come_plus(ctx: PruneContext) -> None:
    """Ours, training-free: the lowest-angular pair (or --pair-score loss) is merged with o_proj/down_proj ridge
    re-fitted to the pair's output (the ridge pulls toward the merged weights unless --refit-prior zero; toward
    zero it over-fit 8 x 256 calibration tokens: 49.0 / 106.0 ppl at 24 / 20 layers vs 39.4 / 70.5); keeping
    either layer alone (also re-fitted) is tried too and wins if its calibration NLL is lower. With
    --drop-candidates, SLEB's best single-layer drop competes too. Choosing the pair by re-fitted loss was
    measured worse on SmolLM2 (prior zero: 75.9 / 135.4 ppl vs 49.0 / 106.0), so the angular choice is the
    default."""
    progressive_merge(ctx, "plus", reconstruct=True, held_out=True)


def resumable(cfg) -> bool:
    """Each step decides from the current model's calibration cache alone, unless a re-fit targets the dense
    model's states (`--refit-target dense`) or fits to text the dense model sampled (`--refit-anchor`), which a
    replayed model no longer has."""
    return not (refits(cfg) and (cfg.refit_target == "dense" or cfg.refit_anchor))


register(Method("come", come, PAPER, reads=come_reads, limit=NO_REMERGE, min_calib_samples=refit_windows,
                resumable=resumable))
register(Method("come-p", come_p, PAPER, reads=come_reads, limit=NO_REMERGE, min_calib_samples=refit_windows,
                resumable=resumable))
register(Method("come-plus", come_plus, "ours", reads=come_reads, limit=NO_REMERGE,
                min_calib_samples=refit_windows, resumable=resumable))
