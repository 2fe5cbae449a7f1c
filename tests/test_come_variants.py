"""The research variants of the CoMe family (experiments/come_variants.py): records that register on import, plans
that replay bit for bit, and the decisions each variant makes."""

import sys
from pathlib import Path

import pytest
from conftest import prune_config, replays_bit_for_bit

from come import prune

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import come_variants  # noqa: E402, F401  (registers the variants)


def test_variants_are_records_of_the_method_they_vary():
    from come.methods import METHODS

    variants = {n: m for n, m in METHODS.items() if m.variant_of is not None}
    assert {"come-plus:prior-zero", "come-plus:drop-candidates", "come:pair-loss", "come:refit-dense"} <= set(variants)
    assert all(n.partition(":")[0] == m.variant_of and m.variant_of in METHODS for n, m in variants.items())


@pytest.mark.parametrize("method,options", [("come:pair-loss", {"norm": "fold"}), ("come-plus:prior-zero", {}),
                                            ("come:refit-dense", {}), ("come-plus:down_proj-only", {})])
def test_a_variant_prunes_and_replays_bit_for_bit(tiny_dir, method, options):
    path, text = tiny_dir
    res = prune(prune_config(path, text, method=method, target_layers=4, method_options=options))
    assert [st["op"] for st in res.plan.steps if st["op"] != "refit"] == ["merge", "merge"]
    assert res.plan.method == method
    if method == "come:pair-loss":
        assert all("pair_loss" in st["scores"] for st in res.plan.steps)
    if method == "come-plus:down_proj-only":
        assert all(not st["report"]["o_proj"]["applied"] for st in res.plan.steps if st["op"] == "refit")
    assert replays_bit_for_bit(res, path)


def test_drop_candidates_take_the_lower_calibration_nll_and_replay(tiny_dir):
    path, text = tiny_dir
    res = prune(prune_config(path, text, method="come-plus:drop-candidates", target_layers=2))  # past L/2 merges
    assert res.model.config.num_hidden_layers == 2
    moves = [st for st in res.plan.steps if st["op"] != "refit"]
    for st in moves:
        sc = st["scores"]
        best_drop = min(sc["removal_nll"])
        if "merge_nll" not in sc:  # no fresh pair was left: a drop is the only move
            assert st["op"] == "drop"
        elif st["op"] == "drop":  # SLEB's choice of layer; merge and drop compared on the held-out windows
            assert sc["drop_nll"] < sc["merge_nll"] and st["layer"] == sc["removal_nll"].index(best_drop)
        else:
            assert st["op"] == "merge" and sc["merge_nll"] <= sc["drop_nll"]
            assert sc["scored_on"] == "held-out windows"
    assert replays_bit_for_bit(res, path)
