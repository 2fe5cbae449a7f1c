"""CoMe (progressive concatenation merge, docs/method.md §4), CoMe-P (the ratio by grid search on calibration NLL)
and come-plus (ours: each merged layer's o_proj/down_proj re-fitted, decisions on held-out windows).

The schedule, as in the paper:

    while layers > target:
        calibration pass on the current model (only from the last merged layer on): BI, pair scores, sensitivities
        merge the fresh pair (l, l+1) with the lowest angular pair score, at ratio r_BI (CoMe) or the ratio of
        the grid with the lowest calibration NLL (CoMe-P); the merged layer takes each layer's most sensitive KV
        groups and MLP channels (`merge_step`)

Differs from the authors' code on purpose: the pair score compares true layer outputs (not the final-normed
hidden state), a KV group is the unit of attention selection (their GQA tiling mismatches query and KV
heads), and only layers from the merge point on are re-run after each merge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from come.cliargs import arg
from come.errors import ComeError
from come.merge import concat_layers
from come.methods.base import PruneContext
from come.methods.registry import Limit, Method, always, register, trial_share, windows_of
from come.reconstruct import MIN_WINDOWS, RefitProblem, attention_updates, held_out_windows, refit_merged
from come.scores import attn_group_sensitivity, bi_ratio, mlp_sensitivity, pair_scores, split_budget, top_k

PAPER = "Layer as Puzzle Pieces: Compressing Large Language Models through Layer Concatenation (NeurIPS 2025)"


@dataclass
class PairOptions:
    """How a progressive pair merge (the CoMe family, wsum) picks its pairs."""

    pair_tokens: str = arg("last", choices=["last", "all"], help="tokens of the angular pair score")
    remerge: bool = arg(False, help="allow merging layers that are already merges")


@dataclass
class ComeOptions(PairOptions):
    norm: str = arg("mean", choices=["mean", "fold"],  # mean (the authors' code) | fold (ours)
                    help="norm handling of a merged layer")
    pair_score: str = arg("angular", choices=["angular", "drop"],
                          help="how the pair is chosen: angular (the paper), drop (the pairs around the layer whose "
                          "removal costs least, the plain drop competing)")


@dataclass
class ComePOptions(ComeOptions):
    grid: int = arg(20, help="ratio grid size g (ratios 0, 1/g, ..., 1)")

    def __post_init__(self) -> None:
        if self.grid < 1:
            raise ComeError(f"--grid must be >= 1, got {self.grid}")


def merge_step(ctx: PruneContext, l: int, ratio: tuple[float, float],
               mlp_ratio: tuple[float, float] | None = None) -> dict:
    """The plan step merging (l, l+1) with `ratio`: each layer's most sensitive KV groups and MLP channels. With
    `mlp_ratio`, a per-half merge (come-splice): `ratio` sets the attention half, `mlp_ratio` the MLP half."""
    a = ctx.adapter
    geo = a.geometry()
    la, lb = a.layers[l], a.layers[l + 1]
    sa, sb = ctx.calib.stats[l], ctx.calib.stats[l + 1]
    d_ff = a.down_proj(la).weight.shape[1]
    k_attn = split_budget(ratio, geo.num_kv_heads)
    k_mlp = split_budget(ratio if mlp_ratio is None else mlp_ratio, d_ff)
    step = {
        "op": "merge",
        "layer": l,
        "ratio": [float(ratio[0]), float(ratio[1])],
        "norm": ctx.options.norm,
        "attn_groups": [
            top_k(attn_group_sensitivity(a, la, sa), k_attn[0]),
            top_k(attn_group_sensitivity(a, lb, sb), k_attn[1]),
        ],
        "mlp_channels": [top_k(mlp_sensitivity(a, la, sa), k_mlp[0]), top_k(mlp_sensitivity(a, lb, sb), k_mlp[1])],
    }
    if mlp_ratio is not None:
        step["mlp_ratio"] = [float(mlp_ratio[0]), float(mlp_ratio[1])]
    return step


def candidates(ctx: PruneContext) -> list[int]:
    """Pairs (l, l+1) that may merge; without re-merge, neither layer may be a merge already."""
    pairs = range(ctx.num_layers - 1)
    if ctx.options.remerge:
        return list(pairs)
    return [l for l in pairs if len(ctx.tree[l]) == 1 and len(ctx.tree[l + 1]) == 1]


def no_pair_left(ctx: PruneContext) -> ComeError:
    return ComeError(f"no pair left to merge at {ctx.num_layers} layers without re-merging: raise the target or "
                     "pass --remerge")


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


@dataclass(frozen=True)
class Family:
    """What sets the members of the CoMe family apart, and the schedule they share.

    ratios: the merge ratios a step tries: "bi" (r_BI alone, CoMe), "grid" (0, 1/g, ..., 1, CoMe-P) or "plus"
    (0, r_BI, 1: merge, or keep one layer of the pair). refit: each trial's merged layer has its o_proj/down_proj
    ridge re-fitted to the pair's output (come.reconstruct), the ridge pulling toward the merged weights.
    held_out: every choice is scored on the calibration windows no re-fit sees (every HOLDOUT_EVERY-th), not on
    the loss windows. A research variant (experiments/) is a subclass that overrides one of the steps below."""

    ratios: str = "bi"
    refit: bool = False
    held_out: bool = False

    def run(self, ctx: PruneContext) -> None:
        """Merge (or, with --pair-score drop, merge or drop) until the target depth."""
        windows = held_out_windows(ctx.calib.input_ids.shape[0]) if self.held_out else None
        self.start(ctx)
        while ctx.num_layers > ctx.target_layers:
            if ctx.options.pair_score == "drop":
                self.merge_or_drop(ctx, windows)
            else:
                self.step(ctx, windows)

    def start(self, ctx: PruneContext) -> None:
        ctx.calib.run(0)

    def step(self, ctx: PruneContext, windows) -> None:
        """One step of the paper's schedule."""
        (step, _, weights, report), scores = self.choose_merge(ctx, windows)
        apply_merge(ctx, step, scores, weights, report)

    def choose_merge(self, ctx: PruneContext, windows, score: bool = False) -> tuple[tuple, dict]:
        """(the trial of the chosen merge, its scores): the fresh pair with the lowest angular score (pick_pair), at
        the ratio of its grid with the lowest NLL (its only ratio is scored only when `score`)."""
        sbi = pair_scores(ctx.calib.hidden, last_token=ctx.options.pair_tokens == "last")
        bi = [s.bi for s in ctx.calib.stats]
        cands = candidates(ctx)
        if not cands:
            raise no_pair_left(ctx)
        scores: dict = {"pair_angular": sbi, "bi": bi, "candidates": cands}
        if windows is not None:
            scores["scored_on"] = "held-out windows"
        l = self.pick_pair(ctx, cands, sbi, windows, scores)
        r_bi = bi_ratio(bi[l], bi[l + 1])
        scores["bi_ratio"] = list(r_bi)
        grid = self.grid(ctx, r_bi[0])
        score = score or len(grid) > 1
        targets = self.targets(ctx, l)
        trials = {r: self.trial(ctx, merge_step(ctx, l, (r, 1 - r)), targets, score, windows)
                  for r in ctx.trials(grid, f"ratios of pair {l}")}
        if len(grid) > 1:
            scores["ratio_grid_nll"] = {f"{r:.4f}": t[1] for r, t in trials.items()}
        best = min(trials, key=lambda r: (trials[r][1] or 0.0, abs(r - r_bi[0])))
        return trials[best], scores

    def pick_pair(self, ctx: PruneContext, cands: list[int], sbi: list[float], windows, scores: dict) -> int:
        """The paper's choice: the candidate pair with the lowest angular score (ties: the first)."""
        return min(cands, key=lambda i: (sbi[i], i))

    def grid(self, ctx: PruneContext, r_bi: float) -> list[float]:
        """The ratios a merge of a pair whose BI ratio is `r_bi` tries."""
        if self.ratios == "bi":
            return [r_bi]
        if self.ratios == "grid":
            g = ctx.options.grid
            return [i / g for i in range(g + 1)]
        return sorted({0.0, r_bi, 1.0})

    def targets(self, ctx: PruneContext, i: int) -> tuple | None:
        """What the re-fit of a merge of (i, i+1) matches: the two attention updates and the pair's output (None
        without a re-fit)."""
        if not self.refit:
            return None
        return attention_updates(ctx.calib, ctx.adapter, i), ctx.calib.hidden[i + 2]

    def trial(self, ctx: PruneContext, step: dict, targets: tuple | None, score: bool = True,
              windows=None) -> tuple[dict, float | None, dict, dict]:
        """(step, calibration NLL if `step` were applied, refit weights, refit report): the merged layer re-fitted to
        `targets` when given; the NLL (skipped unless `score`) re-runs only the layers from the pair on, over the
        windows of the boolean mask `windows` (default: the loss windows)."""
        a, l = ctx.adapter, step["layer"]
        merged = concat_layers(a, a.layers[l], a.layers[l + 1], step["attn_groups"], step["mlp_channels"],
                               step["ratio"], step["norm"])
        weights, report = {}, {}
        if targets is not None:
            weights, report = refit_merged(self.problem(ctx, merged, l, targets))
        n_batches = None if windows is not None else ctx.loss_batches
        nll = ctx.calib.forward_from(l, [merged, *list(a.layers)[l + 2:]], n_batches, windows) if score else None
        return step, nll, weights, report

    def problem(self, ctx: PruneContext, merged, l: int, targets: tuple) -> RefitProblem:
        """The re-fit of `merged`, the merge of (l, l+1), to `targets` (come.reconstruct)."""
        return RefitProblem(ctx.calib, ctx.adapter, merged, ctx.calib.hidden[l], *targets)

    def merge_or_drop(self, ctx: PruneContext, windows) -> None:
        """One step of `--pair-score drop`: find the layer d whose removal costs least (SLEB's choice), then try every
        merge of a pair holding it, (d-1, d) and (d, d+1), at each ratio (ratio 1 of (d-1, d) keeps layer d-1 alone:
        a drop of d with a re-fitted neighbour), and the plain drop; take the lowest NLL (on the held-out windows
        when `windows` is given). The merges are where SLEB would cut, not where adjacent states look most alike."""
        from come.methods.sleb import cheapest_removal, drop_layer

        removal, d = cheapest_removal(ctx, ctx.loss_batches)  # a drop fits nothing: chosen on the loss windows
        scores: dict = {"removal_nll": removal, "candidates": [], "drop_nll": drop_cost(ctx, removal, d, windows)}
        if windows is not None:
            scores["scored_on"] = "held-out windows"
        bi = [s.bi for s in ctx.calib.stats]
        best = None  # (nll, |r - r_BI|, pair, trial)
        for i in [i for i in (d - 1, d) if i in candidates(ctx)]:
            r_bi = bi_ratio(bi[i], bi[i + 1])[0]
            targets = self.targets(ctx, i)
            trials = {r: self.trial(ctx, merge_step(ctx, i, (r, 1 - r)), targets, windows=windows)
                      for r in ctx.trials(self.grid(ctx, r_bi), f"ratios of pair {i}")}
            scores["candidates"].append(i)
            scores[f"pair{i}_ratio_nll"] = {f"{r:.4f}": t[1] for r, t in trials.items()}
            for r, t in trials.items():
                key = (t[1], abs(r - r_bi), i)
                if best is None or key < best[:3]:
                    best = (*key, t)
        if best is None or scores["drop_nll"] <= best[0]:
            drop_layer(ctx, d, scores)
            return
        step, nll, weights, report = best[3]
        scores["merge_nll"] = nll
        apply_merge(ctx, step, scores, weights, report)

    def trials_per_step(self, cfg, layers: int) -> int:
        """Loss trials of one step (what `--dry-run` counts)."""
        per_step = {"bi": 0, "grid": getattr(cfg.options, "grid", 0) + 1, "plus": 3}[self.ratios]
        return layers + 2 * per_step if cfg.options.pair_score == "drop" else per_step

    def passes(self, cfg, layers: int, target: int) -> tuple[float, str]:
        """(full-pass equivalents, at most; one line): a full pass, a re-run from each merged layer on, the loss
        trials (on --loss-samples windows when given), and each re-fit's two passes of the merged layer."""
        k = layers - target
        trials = k * self.trials_per_step(cfg, layers)
        total = 1 + k + trials * trial_share(cfg)
        extra = f" + {trials} loss trials" if trials else ""
        if self.refit:  # each re-fit runs the merged layer twice (o_proj, then down_proj)
            total += trials * 2 / layers
            extra += " (each with 2 passes of the merged layer to re-fit it)"
        return total, (f"1 full pass + {k} re-runs from each merged layer on{extra}{windows_of(cfg)} (at most "
                       f"{math.ceil(total)} full-pass equivalents)")

    def min_calib_samples(self, cfg) -> int:
        """A re-fit holds every HOLDOUT_EVERY-th window out of the fit to decide on it: it needs one such window."""
        return MIN_WINDOWS if self.refit else 1


def drop_cost(ctx: PruneContext, removal: list[float], d: int, windows) -> float:
    """What dropping layer d costs on the windows the merges are judged on (the held-out mask `windows`, else the
    loss windows `removal` was scored on), so the two compare like for like."""
    if windows is None:
        return removal[d]
    return ctx.calib.forward_from(d, list(ctx.adapter.layers)[d + 1:], None, windows)


def no_remerge_limit(num_layers: int, cfg) -> int:
    """Without re-merge each merge needs two fresh layers: at most floor(L/2) merges (drops have no limit)."""
    options = cfg.options
    return num_layers - 1 if options.remerge or getattr(options, "pair_score", "") == "drop" else num_layers // 2


# without re-merge each merge needs two fresh layers (checked by prune/compare before loading weights)
NO_REMERGE = Limit(no_remerge_limit, "without re-merging", "raise the target or pass --remerge")


def register_family(name: str, family: Family, options: type, paper: str = PAPER, **record) -> Method:
    """Register a member of the CoMe family (or a variant of one: experiments/) under `name`; `record`: fields of
    the Method record that differ."""
    fields = dict(options=options, passes=family.passes, limit=NO_REMERGE, min_calib_samples=family.min_calib_samples,
                  resumable=always, keeps_dense_states=True, refits=family.refit)
    return register(Method(name, family.run, paper, **{**fields, **record}))


COME = register_family("come", Family("bi"), ComeOptions)
COME_P = register_family("come-p", Family("grid"), ComePOptions)
# Ours, training-free: the merged layer's o_proj/down_proj ridge re-fitted to the pair's output; keeping either
# layer alone (also re-fitted) is tried too and wins when its held-out NLL is lower.
COME_PLUS = register_family("come-plus", Family("plus", refit=True, held_out=True), ComeOptions, "ours")
