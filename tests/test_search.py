"""The downhill walk of the grid searches (re-fit strength, CoMe-P ratio): the exhaustive choice on unimodal
curves, with fewer evaluations."""

import random

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
