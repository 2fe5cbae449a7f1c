"""The downhill walk of the grid searches (re-fit strength, CoMe-P ratio): the exhaustive choice on unimodal
curves, with fewer evaluations."""

import random

import pytest
from conftest import prune_config

from come.prune import prune
from come.search import downhill


def test_the_walk_finds_the_minimum_of_every_unimodal_sequence_with_few_evaluations():
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(1, 25)
        low = rng.randrange(n)
        # strictly falling to `low`, strictly rising after it
        steps = [rng.random() + 0.01 for _ in range(n)]
        values = [sum(steps[min(i, low) : max(i, low)]) for i in range(n)]
        start = rng.randrange(n)
        asked: set[int] = set()

        def key(i, values=values, asked=asked):
            asked.add(i)
            return values[i]

        assert downhill(n, start, key) == low
        assert len(asked) <= abs(low - start) + 3


def test_the_walk_can_stop_at_a_local_minimum_of_a_curve_with_two():
    values = [0.0, 5.0, 3.0, 4.0]  # the walk from index 2 never sees index 0
    assert downhill(len(values), 2, values.__getitem__) == 2


@pytest.mark.parametrize("windows", [4, 6])
def test_come_p_walk_takes_a_local_minimum_of_the_grid_with_fewer_trials(tiny_dir, windows):
    path, text = tiny_dir
    full = prune(prune_config(path, text, samples=windows, method="come-p", target_layers=4, grid=10))
    walk = prune(prune_config(path, text, samples=windows, method="come-p", target_layers=4, grid=10,
                              grid_search="walk"))
    assert walk.model.config.num_hidden_layers == 4
    for step_w, step_f in zip(walk.plan.steps, full.plan.steps):
        tried = {float(r): v for r, v in step_w["scores"]["ratio_grid_nll"].items()}
        every = {float(r): v for r, v in step_f["scores"]["ratio_grid_nll"].items()}
        assert len(every) == 11 and len(tried) < 11
        chosen = step_w["ratio"][0]
        grid = sorted(every)
        k = min(range(11), key=lambda i: abs(grid[i] - chosen))
        # the chosen ratio was tried, and so were its neighbours on the grid, none of them better
        assert all(grid[j] in tried and tried[grid[j]] >= tried[grid[k]] for j in (k - 1, k + 1) if 0 <= j < 11)
        if step_w["layer"] != step_f["layer"]:
            break  # the two runs merged different pairs: their later steps are not comparable
        # on the same model state a ratio's NLL is the same whether walked to or tried in the full grid
        assert all(tried[r] == every[r] for r in tried)
