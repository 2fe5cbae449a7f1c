"""Zero-shot evaluation throughput per task, at several batch sizes side by side in one run, and what a full
evaluation of the seven tasks costs at the best of them.

lm-eval turns each item into one log-likelihood request per answer choice; the time goes into those requests,
whose length (a PIQA goal, a BoolQ passage, a HellaSwag context with its endings) differs by task. For each
task this runs the first `--limit` items at each batch size (interleaved rounds, so that a busy machine slows all
alike; the best round is kept) and times the requests alone (loading a task's data is a fixed cost on top),
then prints requests per second and the projected time of the requests of the full offline task sets at the
fastest batch size.

    HF_HUB_OFFLINE=1 python benchmarks/eval_throughput.py --model smollm2-135m --limit 100 --batch-sizes 8,32
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="all")
    ap.add_argument("--limit", type=int, default=100, help="items per task and measurement")
    ap.add_argument("--batch-sizes", default="8,32")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds; the fastest is kept")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    from lm_eval.api.model import TemplateLM

    from come.eval.harness import parse_tasks, run_tasks
    from come.models import load_model

    counted = {"requests": 0, "seconds": 0.0}
    original = TemplateLM.loglikelihood

    def counting(self, requests, *a, **k):  # the requests are the work: count and time them as lm-eval issues them
        counted["requests"] += len(requests)
        t0 = time.perf_counter()
        try:
            return original(self, requests, *a, **k)
        finally:
            counted["seconds"] += time.perf_counter() - t0

    TemplateLM.loglikelihood = counting
    tasks = parse_tasks(args.tasks, offline=True)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    model, tok, _ = load_model(args.model, args.dtype, args.device)
    best: dict[tuple[str, int], tuple[float, int, int, int]] = {}  # (task, batch) -> (seconds, requests, n, total)
    for _ in range(args.rounds):
        for task in tasks:
            for bs in sizes:
                counted.update(requests=0, seconds=0.0)
                t0 = time.perf_counter()
                out = run_tasks(model, tok, [task], limit=args.limit, batch_size=bs, offline=True)
                wall, dt = time.perf_counter() - t0, counted["seconds"]  # the rest: loading the task and its data
                r = out["tasks"][task]
                if (task, bs) not in best or dt < best[(task, bs)][0]:
                    best[(task, bs)] = (dt, counted["requests"], r["n"], r["n_total"])
                print(f"  {task} batch {bs}: {dt:.1f} s in {counted['requests']} requests, {wall:.1f} s in all",
                      file=sys.stderr, flush=True)
    print(f"\nmodel {args.model}, {args.dtype} on {args.device}, first {args.limit} items per task, "
          f"best of {args.rounds} round(s)\n")
    head = "| task | " + " | ".join(f"req/s (batch {b})" for b in sizes) + " | speed-up | items | full set at best |"
    print(head)
    print("|---|" + "---:|" * (len(sizes) + 3))
    total = 0.0
    for task in tasks:
        rates = [best[(task, b)][1] / best[(task, b)][0] for b in sizes]
        dt, req, n, n_total = best[(task, sizes[rates.index(max(rates))])]
        full = dt / n * n_total
        total += full
        print(f"| {task} | " + " | ".join(f"{r:.1f}" for r in rates) +
              f" | x{max(rates) / rates[0]:.2f} | {n_total:,} | {full / 60:.1f} min |")
    print(f"\nall {len(tasks)} tasks in full at the best batch size: {total / 60:.0f} min per model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
