"""come-splice (ours): a CoMe-family step that contains SLEB's. For each adjacent pair (l, l+1) of the
current model the candidates are the per-half merges (r_attn, r_mlp) on {0, r_BI, 1} x {0, r_BI, 1}:

    (1, 1)  drop l+1 (layer l kept whole)         (0, 0)  drop l
    (1, 0)  splice: attention of l + MLP of l+1   (0, 1)  splice: attention of l+1 + MLP of l
    others  the paper's concatenation, attention and MLP at their own ratio (one of them may be a whole half)

Each step:

    1. every single-layer drop gets the full suffix trial (SLEB's trial, `sleb.removal_nll`): the step holds
       SLEB's moves exactly, so on its own objective it can never do worse than SLEB's step;
    2. the other candidates of every pair are ranked by a cheap local screen, from the merged layer's output error
       against the pair's two-layer output on the cached boundary input, e = ||M(h_l) - h_{l+2}||^2 (one layer
       forward per candidate): `screen_by` predicted (default) ranks by the cost the drop of l+1 had in step 1
       scaled by e over that drop's own local error ||h_{l+1} - h_{l+2}||^2 (its error lands on the same boundary,
       so it measures what a unit of error there costs downstream), relative by e / ||h_{l+2} - h_l||^2 (the share
       of the pair's update missed); the best `screen` of them get the full suffix trial (`screen` 0: all of them,
       the full search);
    3. the cheapest trial wins (ties: the drop, then the better screen rank).

Trials and the screen run on the held-out calibration windows (`reconstruct.held_out_windows`, as come-plus
decides), or on every window with `decide_on` all (as SLEB does: nothing here is fitted to any window).
`criterion` nll: their mean next-token NLL (SLEB's); kl: the mean KL divergence from the dense model's next-token
distribution on them (EvoPress's), against dense log-probs cached once in float16 (decision windows x (seq_len - 1)
x vocab x 2 bytes: 2 x 255 x 262,144 x 2 = 267 MB for Gemma 3 at 8 x 256 windows, a quarter of them held out).

Plan steps: a corner is a plain `drop` (the tree and distillation treat it as SLEB's); a splice or concatenation is
a `merge` with `mlp_ratio` (a per-half merge, `come.merge.concat_layers`: `ratio` is the attention half's). Every
step's `scores` record the criterion, the current model's cost, every drop's trial, every screened candidate
(pair, ratios, move, relative local error, predicted cost, screen rank, trial cost when it had one) and the move
chosen; with `screen` 0 also which move each screen size would have chosen under each ranking
(`screen_would_choose`) and the best candidate's rank by each (`best_rank`), to measure the screen.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from come.capture import _all_on_device, select_windows
from come.cliargs import arg
from come.errors import ComeError
from come.methods.base import PruneContext
from come.methods.come import apply_merge, merge_step
from come.methods.registry import Method, register, windows_of
from come.methods.sleb import drop_layer, removal_nll
from come.ops import merged_layer
from come.reconstruct import MIN_WINDOWS, RefitProblem, attention_updates, held_out_windows, refit_merged
from come.scores import bi_ratio

log = logging.getLogger("come.prune")
SCREEN_SIZES = (1, 2, 3, 5)  # with screen 0 (the full search), what each of these screen sizes would have chosen


@dataclass
class SpliceOptions:
    criterion: str = arg("nll", choices=["nll", "kl"],
                         help="what a trial minimises on the decision windows: nll (SLEB's) or kl from the dense "
                         "model's next-token distribution (EvoPress's)")
    screen: int = arg(3, help="merge/splice candidates per step sent to the full trial, best by the local screen "
                      "(0: all, the full search)")
    screen_by: str = arg("predicted", choices=["predicted", "relative"],
                         help="how the screen ranks candidates across pairs: predicted (the local error scaled by "
                         "what the drop of l+1, whose error lands on the same boundary, cost per unit of it) or "
                         "relative (the local error over the pair's update)")
    norm: str = arg("mean", choices=["mean", "fold"], help="norm handling of a merged layer")
    decide_on: str = arg("held-out", choices=["held-out", "all"],
                         help="the calibration windows trials and the screen run on: held-out (every 4th, as "
                         "come-plus decides) or all (as SLEB does; no re-fit here sees any window)")
    refit: bool = arg(False, help="re-fit each trialled splice/concatenation's o_proj/down_proj to the pair's "
                      "output before its trial (come-plus's ridge, fitted on the windows not held out)")

    def __post_init__(self) -> None:
        if self.screen < 0:
            raise ComeError(f"--screen must be >= 0, got {self.screen}")
        if self.refit and self.decide_on != "held-out":
            raise ComeError("come-splice --refit decides on the windows the re-fit never sees: it needs "
                            "--decide-on held-out")


def move_of(step: dict) -> str:
    """"splice" (each half from one layer, one from each) or "concat" (a half holds pieces of both layers)."""
    halves = (step["attn_groups"], step["mlp_channels"])
    return "concat" if any(all(h) for h in halves) else "splice"


class Judge:
    """The cost of a suffix trial on the held-out windows: mean NLL, or mean KL from the dense model (its
    log-probs cached once, float16, from the calibration cache of the unpruned model)."""

    def __init__(self, ctx: PruneContext, criterion: str, windows: torch.Tensor):
        self.calib, self.windows, self.dense = ctx.calib, windows, None
        if criterion == "kl":
            self.dense = self._logprobs(ctx.calib.hidden[-1])
            size = sum(t.numel() * t.element_size() for t in self.dense)
            log.info("come-splice: dense log-probs of %d decision windows cached (float16, %.0f MB)",
                     int(windows.sum()), size / 2**20)

    @property
    def loss(self):
        """What `Calibration.forward_from` scores the final states with (None: its NLL)."""
        return None if self.dense is None else self._kl

    def __call__(self, start: int, layers: list) -> float:
        return self.calib.forward_from(start, layers, None, self.windows, self.loss)

    def _chunks(self, states, fn) -> None:
        """fn(chunk index, log-softmax of the logits) over 2 windows at a time of the kept windows' final states."""
        a, calib = self.calib.adapter, self.calib
        k = 0
        with _all_on_device([a.final_norm(), a.lm_head()], calib.device):
            for h in states:
                for hb in h.split(2):
                    fn(k, F.log_softmax(a.logits(hb[:, :-1].to(calib.device)).float(), dim=-1))
                    k += 1

    @torch.no_grad()
    def _logprobs(self, final_states) -> list[torch.Tensor]:
        keep, picked = held_batches(self.calib, self.windows)
        states = [final_states[b][keep[b].to(final_states[b].device)] for b in picked]
        out: list[torch.Tensor] = []
        self._chunks(states, lambda k, lp: out.append(lp.to(torch.float16).to(self.calib.store_device)))
        return out

    @torch.no_grad()
    def _kl(self, states, ids) -> float:
        acc = {"kl": 0.0, "n": 0}

        def add(k, logq):
            logp = self.dense[k].to(logq.device).float()
            acc["kl"] += float((logp.exp() * (logp - logq)).sum())
            acc["n"] += logq.shape[0] * logq.shape[1]

        self._chunks(states, add)
        return acc["kl"] / acc["n"]


def held_batches(calib, windows: torch.Tensor) -> tuple[list[torch.Tensor], list[int]]:
    """(per batch, the mask of its held-out windows; the batches holding one)."""
    keep = list(windows.split([b.shape[0] for b in calib.batches]))
    return keep, [b for b in range(len(keep)) if keep[b].any()]


class Screen:
    """The local screen of one step: a candidate merged layer's output error on the held-out windows of the cached
    boundary input, and the errors it is scaled by."""

    def __init__(self, ctx: PruneContext, windows: torch.Tensor):
        self.calib = ctx.calib
        self.keep, self.picked = held_batches(ctx.calib, windows)
        self.kwargs: dict = {}

    def states(self, i: int) -> list[torch.Tensor]:
        return [self.calib.hidden[i][b][self.keep[b].to(self.calib.hidden[i][b].device)] for b in self.picked]

    def kwargs_of(self, layer) -> list[dict]:
        t = self.calib.adapter.layer_type(layer)
        if t not in self.kwargs:
            per_batch = self.calib.type_kwargs[t]
            self.kwargs[t] = [select_windows(per_batch[b], self.keep[b]) for b in self.picked]
        return self.kwargs[t]

    @torch.no_grad()
    def pair(self, l: int) -> tuple[float, float]:
        """(||h_{l+2} - h_l||^2, the pair's update; ||h_{l+2} - h_{l+1}||^2, the local error of dropping l+1)."""
        update = drop = 0.0
        for h0, h1, h2 in zip(self.states(l), self.states(l + 1), self.states(l + 2)):
            h2 = h2.double()
            update += float(((h2 - h0.to(h2.device).double()) ** 2).sum())
            drop += float(((h2 - h1.to(h2.device).double()) ** 2).sum())
        return update, drop

    @torch.no_grad()
    def error(self, l: int, layer) -> float:
        """||M(h_l) - h_{l+2}||^2 of the candidate layer M."""
        out, _ = self.calib.run_layer(layer, self.states(l), kwargs=self.kwargs_of(layer))
        return sum(float(((y.double() - h2.to(y.device).double()) ** 2).sum())
                   for y, h2 in zip(out, self.states(l + 2)))


def pair_candidates(ctx: PruneContext, l: int) -> list[dict]:
    """The non-drop per-half merges of pair (l, l+1), one per distinct merged layer: ratios on {1, 0, r_BI} per
    half; a ratio whose budget gives one layer every piece of a half is that corner (the same layer, kept once);
    the corners that are drops are left out (every drop has its own trial)."""
    bi = ctx.calib.stats
    r = bi_ratio(bi[l].bi, bi[l + 1].bi)[0]
    grid = list(dict.fromkeys((1.0, 0.0, r)))
    out, seen = [], set()
    for ra in grid:
        for rm in grid:
            step = merge_step(ctx, l, (ra, 1 - ra), (rm, 1 - rm))
            groups, channels = step["attn_groups"], step["mlp_channels"]
            if not (groups[1] or channels[1]) or not (groups[0] or channels[0]):
                continue  # all pieces from one layer: a drop
            key = tuple(tuple(x) for x in (*groups, *channels))
            if key in seen:
                continue
            seen.add(key)
            step["move"] = move_of(step)
            out.append(step)
    return out


def label(c: dict) -> str:
    return f"{c['move']} of pair {c['layer']} at {c['attn_ratio']:.3f}/{c['mlp_ratio']:.3f}"


def splice_step(ctx: PruneContext, judge: Judge, windows: torch.Tensor) -> None:
    """One step: every drop's trial, the screen of every other candidate, the best `screen` of them trialled."""
    opts = ctx.options
    layers = list(ctx.adapter.layers)
    drops = removal_nll(ctx, windows=windows, loss=judge.loss)
    current = judge(len(layers), [])  # the current model's cost
    screen = Screen(ctx, windows)
    rows: list[dict] = []
    steps: list[dict] = []
    for l in ctx.trials(range(len(layers) - 1), f"screen at {len(layers)} layers"):
        update, drop_error = screen.pair(l)
        for step in pair_candidates(ctx, l):
            e = screen.error(l, merged_layer(ctx.adapter, step))
            # relative: the share of the pair's update missed; predicted: the cost of the drop of l+1, whose local
            # error lands on the same boundary, scaled by the candidate's local error over that drop's
            predicted = current + (drops[l + 1] - current) * (e / drop_error if drop_error > 0 else 1.0)
            rows.append({"layer": l, "attn_ratio": step["ratio"][0], "mlp_ratio": step["mlp_ratio"][0],
                         "move": step["move"], "local_error": e / update if update > 0 else e,
                         "predicted": predicted})
            steps.append(step)
    orders = {by: sorted(range(len(rows)), key=lambda k, c=c: (rows[k][c], k))
              for by, c in (("relative", "local_error"), ("predicted", "predicted"))}
    order = orders[opts.screen_by]
    for rank, k in enumerate(order):
        rows[k]["rank"] = rank
    sent = order if opts.screen == 0 else order[: opts.screen]
    refits: dict = {}  # candidate -> (weights, report) of its re-fit (--refit)
    for k in ctx.trials(sent, "merge trials"):
        l = steps[k]["layer"]
        merged = merged_layer(ctx.adapter, steps[k])
        if opts.refit:  # come-plus's re-fit: the two attention updates, then the pair's output
            targets = attention_updates(ctx.calib, ctx.adapter, l), ctx.calib.hidden[l + 2]
            refits[k] = refit_merged(RefitProblem(ctx.calib, ctx.adapter, merged, ctx.calib.hidden[l], *targets))
            rows[k]["refit"] = bool(refits[k][0])
        rows[k]["trial"] = judge(l, [merged, *layers[l + 2:]])
    d = min(range(len(drops)), key=lambda i: (drops[i], i))
    best = min(sent, key=lambda k: (rows[k]["trial"], rows[k]["rank"])) if sent else None
    scores: dict = {"criterion": opts.criterion, "scored_on": f"{opts.decide_on} windows", "current": current,
                    "drop": drops, "screen": opts.screen, "screen_by": opts.screen_by, "candidates": rows,
                    "bi": [s.bi for s in ctx.calib.stats]}
    if sent:
        first = order[0]
        scores["screen_first"] = label(rows[first])
        scores["screen_first_is_best_trial"] = first == best
    if opts.screen == 0:  # what a screen of each size would have chosen, from the same trials
        def choice(ks):
            b = min(ks, key=lambda k: (rows[k]["trial"], rows[k]["rank"])) if ks else None
            return f"drop {d}" if b is None or drops[d] <= rows[b]["trial"] else label(rows[b])

        scores["screen_would_choose"] = {by: {str(n): choice(o[:n]) for n in SCREEN_SIZES} for by, o in orders.items()}
        scores["best_rank"] = None if best is None else {by: o.index(best) for by, o in orders.items()}
    if best is None or drops[d] <= rows[best]["trial"]:
        scores["chosen"] = {"move": "drop", "layer": d, "cost": drops[d]}
        drop_layer(ctx, d, scores)
        return
    step = steps[best]
    l = step["layer"]
    # the original layers each half of the new layer comes from
    halves = {half: [i for side, block in enumerate(ctx.tree[l:l + 2]) if pieces[side] for i in block]
              for half, pieces in (("attn", step["attn_groups"]), ("mlp", step["mlp_channels"]))}
    scores["chosen"] = {"move": step["move"], "layer": l, "attn_ratio": step["ratio"], "mlp_ratio": step["mlp_ratio"],
                        "halves": halves, "cost": rows[best]["trial"]}
    apply_merge(ctx, step, scores, *refits.get(best, ({}, {})))


def decision_windows(n: int, decide_on: str) -> torch.Tensor:
    """The mask of the calibration windows a step decides on."""
    return held_out_windows(n) if decide_on == "held-out" else torch.ones(n, dtype=torch.bool)


def come_splice(ctx: PruneContext) -> None:
    windows = decision_windows(ctx.calib.input_ids.shape[0], ctx.options.decide_on)
    ctx.calib.run(0)
    judge = Judge(ctx, ctx.options.criterion, windows)
    while ctx.num_layers > ctx.target_layers:
        splice_step(ctx, judge, windows)


def passes(cfg, layers: int, target: int) -> tuple[float, str]:
    """A full pass, a re-run after each step, and per step on the decision windows: every layer's removal trial,
    one layer forward per screened candidate (at most 7 per pair) and `screen` merge trials (with --refit, each
    re-fitted first: two passes of its merged layer)."""
    k = layers - target
    screen = cfg.options.screen
    n = cfg.calib.samples
    share = int(decision_windows(n, cfg.options.decide_on).sum()) / n
    trials = screened = 0
    for depth in range(layers, target, -1):
        trials += depth + (7 * (depth - 1) if screen == 0 else min(int(screen), 7 * (depth - 1)))
        screened += 7 * (depth - 1)
    total = 1 + k + (trials + screened / layers) * share
    refits = ""
    if cfg.options.refit:  # each trialled candidate's re-fit runs its merged layer twice over every window
        merges = trials - sum(range(layers, target, -1))
        total += merges * 2 / layers
        refits = f" ({merges} of them re-fitted, 2 passes of the merged layer each)"
    return total, (f"1 full pass + {k} re-runs + {trials} removal and merge trials{refits} and {screened} screened "
                   f"layer forwards, on {cfg.options.decide_on} windows ({share:.0%}){windows_of(cfg)} (at most "
                   f"{math.ceil(total)} full-pass "
                   "equivalents)")


def min_calib_samples(cfg=None) -> int:
    """Decisions on the held-out windows: at least one of them."""
    return MIN_WINDOWS if cfg is None or cfg.options.decide_on == "held-out" else 1


def resumable(cfg=None) -> bool:
    """With nll a step depends only on the current model; kl reads the dense model's log-probs, which a resumed
    run (handed the replayed model) cannot recompute."""
    return cfg.options.criterion != "kl"


COME_SPLICE = register(Method("come-splice", come_splice, "ours", options=SpliceOptions, passes=passes,
                              min_calib_samples=min_calib_samples, resumable=resumable))
