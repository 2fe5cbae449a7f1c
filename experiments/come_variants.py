"""Research variants of the CoMe family: measured, not better than what the product offers (docs/results.md holds
their rows), kept so their rows can be made again. Importing this module registers each as a method record named
`BASE:VARIANT` (e.g. `come-plus:prior-zero`), a subclass of `come.methods.come.Family` that overrides one step:

    import come_variants  # experiments/ on sys.path
    come.prune(PruneConfig(model, target_layers=24, method="come-plus:prior-zero"))

Their plans replay with `come apply` like any other (a plan is data); making one again needs this module. Each
replaces a flag that come offered up to commit bcfc332:

    come:pair-loss, come-p:pair-loss, come-plus:pair-loss   --pair-score loss
    come-plus:drop-candidates, come:drop-candidates         --drop-candidates
    come:refit, come-p:refit                                --reconstruct on come / come-p
    come:refit-dense                                        --reconstruct --refit-target dense
    come-plus:prior-zero                                    --refit-prior zero
    come-plus:o_proj-only, come-plus:down_proj-only,        re-fit ablations that no flag offered
    come-plus:strong-pull

Retired without a record (their rows stay in docs/results.md): --cross-fit, --refit-anchor, --grid-search walk,
--ratio-power.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from come.methods import NO_LIMIT
from come.methods.come import (
    COME,
    COME_P,
    COME_PLUS,
    ComeOptions,
    ComePOptions,
    Family,
    apply_merge,
    candidates,
    drop_cost,
    merge_step,
    register_family,
)
from come.methods.registry import never
from come.scores import bi_ratio


@dataclass(frozen=True)
class PairByLoss(Family):
    """The pair whose merge at its BI ratio has the lowest calibration NLL (SLEB's criterion applied to merging),
    instead of the lowest angular score. Measured worse on SmolLM2 (come-plus, prior zero: 75.9 / 135.4 ppl at
    24 / 20 layers vs 49.0 / 106.0)."""

    def pick_pair(self, ctx, cands, sbi, windows, scores) -> int:
        bi = scores["bi"]
        loss = {i: self.trial(ctx, merge_step(ctx, i, bi_ratio(bi[i], bi[i + 1])), self.targets(ctx, i),
                              windows=windows)[1]
                for i in ctx.trials(cands, f"pairs at {ctx.num_layers} layers")}
        scores["pair_loss"] = {str(k): v for k, v in loss.items()}
        return min(cands, key=lambda i: (loss[i], i))

    def trials_per_step(self, cfg, layers: int) -> int:
        return super().trials_per_step(cfg, layers) + layers - 1


@dataclass(frozen=True)
class DropCandidates(Family):
    """Each step, SLEB's best single-layer drop competes with the chosen merge by calibration NLL (on the held-out
    windows when the family decides on them)."""

    def step(self, ctx, windows) -> None:
        from come.methods.sleb import cheapest_removal, drop_layer

        removal, d = cheapest_removal(ctx, ctx.loss_batches)  # a drop fits nothing: scored on the loss windows
        if not candidates(ctx):  # no fresh pair left: dropping is the only move
            drop_layer(ctx, d, {"removal_nll": removal})
            return
        drop_nll = drop_cost(ctx, removal, d, windows)
        (step, nll, weights, report), scores = self.choose_merge(ctx, windows, score=True)
        scores.update(removal_nll=removal, drop_nll=drop_nll, merge_nll=nll)
        if drop_nll < nll:
            drop_layer(ctx, d, scores)
        else:
            apply_merge(ctx, step, scores, weights, report)

    def trials_per_step(self, cfg, layers: int) -> int:
        return super().trials_per_step(cfg, layers) + layers


@dataclass(frozen=True)
class DenseTarget(Family):
    """The re-fit matches the unpruned model's state after the pair's last original layer instead of the current
    pair's output, so it also absorbs the error earlier merges left in the input. Keeps the dense states (a
    second cache) for the whole run; not resumable (a replayed model no longer has them)."""

    dense: list | None = None

    def run(self, ctx) -> None:
        Family.run(dataclasses.replace(self, dense=[]), ctx)  # the dense states of this run only

    def start(self, ctx) -> None:
        super().start(ctx)
        self.dense.extend(list(ctx.calib.hidden))

    def targets(self, ctx, i: int) -> tuple | None:
        updates, _ = super().targets(ctx, i)
        return updates, self.dense[ctx.tree[i + 1][-1] + 1]


@dataclass(frozen=True)
class Refit(Family):
    """come-plus with its re-fit problem changed: the ridge's prior, the projections fitted, the ridge strengths."""

    prior: str = "merged"
    fit: tuple[str, ...] = ("o_proj", "down_proj")
    lambdas: tuple[float, ...] | None = None

    def problem(self, ctx, merged, l: int, targets: tuple):
        return dataclasses.replace(super().problem(ctx, merged, l, targets), prior=self.prior, fit=self.fit,
                                   lambdas=self.lambdas)


PLUS = dict(refit=True, held_out=True)


def variant(base, name: str, family: Family, options: type, **record) -> None:
    register_family(f"{base.name}:{name}", family, options, base.paper, variant_of=base.name, **record)


variant(COME, "pair-loss", PairByLoss("bi"), ComeOptions)
variant(COME_P, "pair-loss", PairByLoss("grid"), ComePOptions)
variant(COME_PLUS, "pair-loss", PairByLoss("plus", **PLUS), ComeOptions)
variant(COME, "drop-candidates", DropCandidates("bi"), ComeOptions, limit=NO_LIMIT)
variant(COME_PLUS, "drop-candidates", DropCandidates("plus", **PLUS), ComeOptions, limit=NO_LIMIT)
variant(COME, "refit", Family("bi", refit=True), ComeOptions)
variant(COME_P, "refit", Family("grid", refit=True), ComePOptions)
variant(COME, "refit-dense", DenseTarget("bi", refit=True), ComeOptions, resumable=never)
variant(COME_PLUS, "prior-zero", Refit("plus", **PLUS, prior="zero"), ComeOptions)
variant(COME_PLUS, "o_proj-only", Refit("plus", **PLUS, fit=("o_proj",)), ComeOptions)
variant(COME_PLUS, "down_proj-only", Refit("plus", **PLUS, fit=("down_proj",)), ComeOptions)
variant(COME_PLUS, "strong-pull", Refit("plus", **PLUS, lambdas=(10.0, 100.0)), ComeOptions)
