"""Plans saved by an earlier version of come replay bit for bit today, and every method still makes them.

The fixtures (tests/data/replay/, written by its make_fixtures.py) hold each method's plan on a tiny random model
and a digest of the weights that plan produced. A refactor that changes a single weight of any replay, or a
single decision of any method, fails here.
"""

import json
import sys
from pathlib import Path

import pytest

from come.models import load_model
from come.plan import Plan, apply_plan

FIXTURES = Path(__file__).parent / "data" / "replay"
sys.path.insert(0, str(FIXTURES))
import make_fixtures  # noqa: E402

CASES = sorted(make_fixtures.CASES)


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
    folder, text = bases[expected["base"]]
    res = make_fixtures.prune_case(folder, text, dict(expected["fields"]))
    stored = json.loads((FIXTURES / case / "come_plan.json").read_text())
    assert make_fixtures.comparable(json.loads(res.plan.to_json())) == make_fixtures.comparable(stored)
    assert make_fixtures.weights_digest(res.model) == expected["weights_sha256"]
