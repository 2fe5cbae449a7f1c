"""Plans saved by an earlier version of come replay bit for bit today, and every method still makes them.

The fixtures (tests/data/replay/, written by its make_fixtures.py) hold each method's plan on a tiny random model
and a digest of the weights that plan produced. Two claims of different strength, both meant to hold on any CPU:

- Replaying a stored plan is bit for bit: the plan's indices, ratios and stored tensors applied to the same base
  model give the very same weights (the digest), on every CPU. The base models are drawn with NumPy's generator
  (`make_fixtures.portable_init`), so they too are the same everywhere.
- Re-running a method makes the same plan: every decision (op, layers, pairs, kept KV groups and channels, ratios
  picked from a grid, the merge tree) exactly; every recorded float (scores, computed ratios, re-fitted tensors)
  within `REL` of the stored one. A CPU with other vector kernels sums in another order, so the 7th significant
  digit of a score may differ; a decision may not. The weights follow: exactly the stored digest when the plan's
  weight-bearing content came out identical, else within the same tolerance of the stored plan's replay.
"""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from come.models import load_model
from come.plan import Plan, apply_plan

FIXTURES = Path(__file__).parent / "data" / "replay"
sys.path.insert(0, str(FIXTURES))
import make_fixtures  # noqa: E402

CASES = sorted(make_fixtures.CASES)

# Relative tolerance for a re-run's recorded floats and weights against the stored ones. Seen across the scalar,
# AVX2 and AVX-512 kernels of one machine: at most 1.7e-6 on scores and ratios, 4.2e-6 (of the tensor's largest
# entry) on re-fitted weights.
REL = 1e-4
ABS = 1e-7  # floor for scores that are zero up to rounding


def float_mismatches(now, stored, path: str = "") -> list[str]:
    """Where `now` and `stored` (JSON values) differ: anything but a float must be equal; floats within REL."""
    if isinstance(stored, dict):
        if not isinstance(now, dict) or now.keys() != stored.keys():
            return [f"{path}: keys {sorted(now) if isinstance(now, dict) else now} != {sorted(stored)}"]
        return [m for k in stored for m in float_mismatches(now[k], stored[k], f"{path}.{k}")]
    if isinstance(stored, list):
        if not isinstance(now, list) or len(now) != len(stored):
            return [f"{path}: {now} != {stored}"]
        return [m for i, (a, b) in enumerate(zip(now, stored)) for m in float_mismatches(a, b, f"{path}[{i}]")]
    if isinstance(stored, float) and isinstance(now, (int, float)) and not isinstance(now, bool):
        return [] if math.isclose(now, stored, rel_tol=REL, abs_tol=ABS) else [f"{path}: {now!r} != {stored!r}"]
    return [] if (type(now), now) == (type(stored), stored) else [f"{path}: {now!r} != {stored!r} (decision)"]


def without_scores(value):
    """The plan with every step's `scores` removed: what the weights are made from."""
    if isinstance(value, dict):
        return {k: without_scores(v) for k, v in value.items() if k != "scores"}
    if isinstance(value, list):
        return [without_scores(v) for v in value]
    return value


def tensors_close(now: torch.Tensor, stored: torch.Tensor) -> bool:
    """Same shape and dtype; every entry within REL of the stored tensor's largest magnitude."""
    if now.shape != stored.shape or now.dtype != stored.dtype:
        return False
    scale = stored.abs().max().item() if stored.numel() else 0.0
    return bool(((now - stored).abs() <= REL * scale + ABS).all())


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replay-bases")
    out = {}
    for name in make_fixtures.BASES:
        folder = tmp / f"tiny-{name}"
        out[name] = (folder, make_fixtures.make_base(folder, name))
    return out


def test_every_case_has_a_fixture():
    stored = {p.name for p in FIXTURES.iterdir() if p.is_dir() and (p / "expected.json").exists()}
    assert stored == set(CASES)


def test_float_comparison_tells_rounding_from_decisions():
    """The comparison itself: rounding in the 7th digit passes, a changed layer, ratio or grid pick does not."""
    stored = {"steps": [{"layer": 1, "ratio": [0.25, 0.75], "scores": {"bi": [3.128626585006714]}}]}
    rounded = {"steps": [{"layer": 1, "ratio": [0.25, 0.75], "scores": {"bi": [3.1286264657974243]}}]}
    assert float_mismatches(rounded, stored) == []
    for wrong in ({"layer": 2}, {"ratio": [0.3, 0.7]}, {"scores": {"bi": [3.2]}}, {"scores": {"bi": []}}):
        changed = {"steps": [{**rounded["steps"][0], **wrong}]}
        assert float_mismatches(changed, stored), wrong
    assert float_mismatches({"a": 1.0}, {"a": 1}), "an int decision stored must not match a float now"
    assert tensors_close(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0 + 1e-6]))
    assert not tensors_close(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.01]))


def test_base_models_are_the_same_on_every_cpu(bases):
    """The bases come from NumPy draws, not torch's vectorised random kernels: their digests are pinned."""
    pinned = json.loads((FIXTURES / "bases.json").read_text())
    for name, (folder, _) in bases.items():
        model, _, _ = load_model(str(folder), "float32", "cpu")
        assert make_fixtures.weights_digest(model) == pinned[name], name


@pytest.mark.parametrize("case", CASES)
def test_stored_plan_replays_bit_for_bit(bases, case):
    expected = json.loads((FIXTURES / case / "expected.json").read_text())
    folder, _ = bases[expected["base"]]
    model, _, _ = load_model(str(folder), "float32", "cpu")
    plan = Plan.load(FIXTURES / case / "come_plan.json")
    apply_plan(model, plan)
    assert model.config.num_hidden_layers == expected["num_layers"]
    assert make_fixtures.weights_digest(model) == expected["weights_sha256"]


@pytest.mark.parametrize("case", CASES)
def test_method_still_makes_the_stored_plan(bases, case):
    expected = json.loads((FIXTURES / case / "expected.json").read_text())
    base, fields = make_fixtures.CASES[case]  # how the case asks for its method today (expected.json: then)
    assert base == expected["base"]
    folder, text = bases[base]
    res = make_fixtures.prune_case(folder, text, dict(fields))
    now = make_fixtures.comparable(json.loads(res.plan.to_json()))
    stored_plan = Plan.load(FIXTURES / case / "come_plan.json")
    stored = make_fixtures.comparable(json.loads((FIXTURES / case / "come_plan.json").read_text()))
    assert float_mismatches(now, stored) == []
    assert res.plan.tensors.keys() == stored_plan.tensors.keys()
    bad = [k for k in stored_plan.tensors if not tensors_close(res.plan.tensors[k], stored_plan.tensors[k])]
    assert bad == [], f"re-fitted tensors beyond tolerance: {bad}"

    identical = without_scores(now) == without_scores(stored) and all(
        torch.equal(res.plan.tensors[k], stored_plan.tensors[k]) for k in stored_plan.tensors)
    if identical:  # the same plan makes the same weights, bit for bit
        assert make_fixtures.weights_digest(res.model) == expected["weights_sha256"]
    else:  # a ratio or a re-fit rounded differently: the weights within tolerance of the stored plan's replay
        replayed, _, _ = load_model(str(folder), "float32", "cpu")
        apply_plan(replayed, stored_plan)
        s_now, s_stored = res.model.state_dict(), replayed.state_dict()
        assert s_now.keys() == s_stored.keys()
        bad = [k for k in s_stored if not tensors_close(s_now[k].float(), s_stored[k].float())]
        assert bad == [], f"weights beyond tolerance: {bad}"
